//! The manifest: the database configuration and the version tree's top.

use bytes::Bytes;

use super::codec::{decode_envelope, Origin, Reader, MANIFEST_MAGIC};
use super::data_file_table::{read_data_file_table, DataFile};
use super::version_tree::{
    read_interior_entries, read_leaf_entries, validate_manifest_version_nodes, VersionInfo, VersionNodeRef,
};
use super::OcdbtError;

/// Smallest and largest zstd level libzstd accepts (`ZSTD_minCLevel()`, `ZSTD_maxCLevel()`).
pub(crate) const ZSTD_LEVELS: std::ops::RangeInclusive<i32> = -131072..=22;

/// How the manifest is stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManifestKind {
    /// `manifest.ocdbt` is the whole manifest, rewritten on every commit (what Orbax uses).
    Single,
    /// `manifest.ocdbt` holds only the configuration; each commit writes a
    /// new `manifest.<16 hex digits>` named after its generation.
    Numbered,
}

/// How the writer compresses manifests and nodes. Readers honour each
/// object's own compression flag instead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// No compression.
    None,
    /// Zstandard at this level.
    Zstd {
        /// The zstd compression level.
        level: i32,
    },
}

/// The configuration of a database, fixed when it is created.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// Random identity of the database.
    pub uuid: [u8; 16],
    /// How the manifest is stored.
    pub manifest_kind: ManifestKind,
    /// Values up to this size are stored inside B+tree leaves (writer setting).
    pub max_inline_value_bytes: u32,
    /// Target maximum decoded node size (writer setting).
    pub max_decoded_node_bytes: u32,
    /// Version-tree nodes have `2^version_tree_arity_log2` entries.
    pub version_tree_arity_log2: u8,
    /// How the writer compresses manifests and nodes.
    pub compression: Compression,
}

/// A decoded manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Manifest {
    /// The configuration.
    pub config: Config,
    /// The newest generations, oldest first; empty for the config-only
    /// `manifest.ocdbt` of a numbered database.
    pub versions: Vec<VersionInfo>,
    /// References to version-tree nodes holding older generations, highest first.
    pub version_nodes: Vec<VersionNodeRef>,
}

fn read_config(r: &mut Reader<'_>) -> Result<Config, OcdbtError> {
    let mut uuid = [0u8; 16];
    uuid.copy_from_slice(&r.bytes(16, "uuid")?);
    let manifest_kind = match r.u8("manifest_kind")? {
        0 => ManifestKind::Single,
        1 => ManifestKind::Numbered,
        other => return Err(r.origin().corrupt(format!("invalid manifest_kind {other}"))),
    };
    let max_inline_value_bytes = r.varint32("max_inline_value_bytes")?;
    let max_decoded_node_bytes = r.varint32("max_decoded_node_bytes")?;
    let version_tree_arity_log2 = r.u8("version_tree_arity_log2")?;
    if !(1..=16).contains(&version_tree_arity_log2) {
        return Err(r.origin().corrupt(format!("version_tree_arity_log2 {version_tree_arity_log2} outside 1..=16")));
    }
    let compression = match r.varint32("compression_method")? {
        0 => Compression::None,
        1 => {
            let level = r.i32_le("zstd_level")?;
            if !ZSTD_LEVELS.contains(&level) {
                return Err(r.origin().corrupt(format!("zstd level {level} outside {ZSTD_LEVELS:?}")));
            }
            Compression::Zstd { level }
        }
        other => return Err(r.origin().corrupt(format!("invalid compression_method {other}"))),
    };
    Ok(Config {
        uuid,
        manifest_kind,
        max_inline_value_bytes,
        max_decoded_node_bytes,
        version_tree_arity_log2,
        compression,
    })
}

/// Decodes an encoded manifest (`manifest.ocdbt` or `manifest.<16 hex>`).
pub(crate) fn decode_manifest(encoded: &Bytes, origin: Origin<'_>, max_decoded: u64) -> Result<Manifest, OcdbtError> {
    let body = decode_envelope(encoded, MANIFEST_MAGIC, origin, max_decoded)?;
    let mut r = Reader::new(&body, origin);
    let config = read_config(&mut r)?;
    let (versions, version_nodes) = match config.manifest_kind {
        ManifestKind::Numbered => (Vec::new(), Vec::new()),
        ManifestKind::Single => {
            let files: Vec<DataFile> = read_data_file_table(&mut r, b"")?;
            let arity_log2 = config.version_tree_arity_log2;
            let versions = read_leaf_entries(&mut r, &files, arity_log2)?;
            let nodes = read_interior_entries(&mut r, &files, arity_log2, None)?;
            let latest = versions.last().map_or(0, |v| v.generation);
            validate_manifest_version_nodes(&origin, &nodes, arity_log2, latest)?;
            (versions, nodes)
        }
    };
    r.finish()?;
    Ok(Manifest { config, versions, version_nodes })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ocdbt::codec::tests::envelope;
    use crate::ErrorKind;

    const ORIGIN: Origin<'static> = Origin { file: "ckpt/state/manifest.ocdbt", object: "manifest", offset: 0 };

    /// The 99-byte manifest of `format-spec/02-ocdbt.md` §4.4 (write-demo --raw).
    pub(crate) fn demo_manifest() -> Vec<u8> {
        let mut m = vec![0x0c, 0xdb, 0x3a, 0x2a, 0x63, 0, 0, 0, 0, 0, 0, 0, 0, 0];
        m.extend(0u8..16);
        m.extend([0x00, 0x64, 0x80, 0x80, 0x80, 0x04, 0x04, 0x00, 0x01, 0x22, 0x00]);
        m.extend(b"d/00000000000000000000000000000001");
        m.extend([0x01, 0x01, 0x00, 0x00, 0x80, 0x10, 0x4a, 0x02, 0x4a, 0x80, 0x10]);
        m.extend([0x00, 0x00, 0x2a, 0x36, 0xfe, 0x9c, 0x97, 0x17, 0x00]);
        m.extend([0xa6, 0x26, 0xea, 0x23]);
        m
    }

    #[test]
    fn worked_example_decodes() {
        let bytes = demo_manifest();
        assert_eq!(bytes.len(), 99);
        let m = decode_manifest(&Bytes::from(bytes), ORIGIN, 1 << 20).unwrap();
        assert_eq!(m.config.uuid, core::array::from_fn(|i| i as u8));
        assert_eq!(m.config.manifest_kind, ManifestKind::Single);
        assert_eq!(m.config.max_inline_value_bytes, 100);
        assert_eq!(m.config.max_decoded_node_bytes, 8388608);
        assert_eq!(m.config.version_tree_arity_log2, 4);
        assert_eq!(m.config.compression, Compression::None);
        assert_eq!(m.versions.len(), 1);
        let v = &m.versions[0];
        assert_eq!((v.generation, v.root_height, v.commit_time_ns), (1, 0, 1_700_000_000_000_000_000));
        assert_eq!(v.statistics.num_keys, 2);
        assert_eq!(v.statistics.num_tree_bytes, 74);
        assert_eq!(v.statistics.num_indirect_value_bytes, 2048);
        let root = v.root.as_ref().unwrap();
        assert_eq!((root.offset, root.length), (2048, 74));
        assert_eq!(root.file.relative_path, b"d/00000000000000000000000000000001");
        assert!(m.version_nodes.is_empty());
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_an_error() {
        let good = demo_manifest();
        for i in 0..good.len() {
            for bit in 0..8 {
                let mut bad = good.clone();
                bad[i] ^= 1 << bit;
                assert!(decode_manifest(&Bytes::from(bad), ORIGIN, 1 << 20).is_err(), "byte {i} bit {bit}");
            }
        }
        for cut in 0..good.len() {
            let err = decode_manifest(&Bytes::copy_from_slice(&good[..cut]), ORIGIN, 1 << 20).unwrap_err();
            assert!(matches!(err.kind(), ErrorKind::Truncated | ErrorKind::Unsupported), "cut {cut}: {err}");
        }
        let mut bad = good.clone();
        bad[50] ^= 0xff;
        let err = decode_manifest(&Bytes::from(bad), ORIGIN, 1 << 20).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Checksum);
        assert!(err.to_string().starts_with("ckpt/state/manifest.ocdbt: manifest"), "{err}");
    }

    fn config_body(kind: u8, arity: u8, compression: &[u8]) -> Vec<u8> {
        let mut body = vec![0u8; 16];
        body.extend([kind, 0x64, 0x64, arity]);
        body.extend(compression);
        body
    }

    #[test]
    fn config_only_numbered_manifest() {
        let body = config_body(1, 4, &[1, 0, 0, 0, 0]);
        let m = decode_manifest(&envelope(MANIFEST_MAGIC, &body, true), ORIGIN, 1 << 20).unwrap();
        assert_eq!(m.config.manifest_kind, ManifestKind::Numbered);
        assert_eq!(m.config.compression, Compression::Zstd { level: 0 });
        assert!(m.versions.is_empty());
        // Anything after the config is an error.
        let mut long = body.clone();
        long.push(0);
        assert!(decode_manifest(&envelope(MANIFEST_MAGIC, &long, false), ORIGIN, 1 << 20).is_err());
    }

    #[test]
    fn invalid_config_fields() {
        let level_too_high = 23i32.to_le_bytes();
        let mut zstd_23 = vec![1u8];
        zstd_23.extend(level_too_high);
        for body in [
            config_body(2, 4, &[0]),
            config_body(1, 0, &[0]),
            config_body(1, 17, &[0]),
            config_body(1, 4, &[2]),
            config_body(1, 4, &zstd_23),
        ] {
            let err = decode_manifest(&envelope(MANIFEST_MAGIC, &body, false), ORIGIN, 1 << 20).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Corrupt, "{body:?}");
        }
        // A B+tree node where a manifest is expected.
        let node = envelope(crate::ocdbt::codec::BTREE_NODE_MAGIC, &config_body(1, 4, &[0]), false);
        assert_eq!(decode_manifest(&node, ORIGIN, 1 << 20).unwrap_err().kind(), ErrorKind::Corrupt);
    }
}
