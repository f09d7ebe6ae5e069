//! Pure encoders, the inverses of the decoders: varints, the envelope, the
//! config, data file tables, B+tree leaf and interior nodes and manifests.
//!
//! Nothing here does I/O or decides the tree's shape; [`super::writer`]
//! chooses which entries go into which node and where nodes are stored. The
//! only fallible step is zstd compression, which reports an
//! [`std::io::Error`].

use std::cmp::Ordering;

use super::data_file_table::DataFile;
use super::manifest::{Compression, Config, ManifestKind};
use super::version_tree::{Statistics, VersionInfo};

/// Offset and length that mark a missing root (a generation without keys).
const MISSING: u64 = u64::MAX;

/// Appends the LEB128 encoding of `value` (the shortest form).
pub(crate) fn put_varint(out: &mut Vec<u8>, mut value: u64) {
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// Bytes taken by the LEB128 encoding of `value`.
pub(crate) fn varint_len(value: u64) -> u64 {
    u64::from((64 - (value | 1).leading_zeros()).div_ceil(7))
}

/// Frames `body` as TensorStore does: magic (big-endian), total length
/// (u64le), format version 0, compression format (0 raw, 1 zstd), the body
/// (raw, or one zstd frame that records the content size) and the CRC-32C
/// (u32le) of everything before it.
pub(crate) fn encode_envelope(magic: u32, body: &[u8], compression: Compression) -> std::io::Result<Vec<u8>> {
    let mut out = Vec::with_capacity(body.len() + 20);
    out.extend_from_slice(&magic.to_be_bytes());
    out.extend_from_slice(&[0; 8]);
    put_varint(&mut out, 0);
    match compression {
        Compression::None => {
            put_varint(&mut out, 0);
            out.extend_from_slice(body);
        }
        Compression::Zstd { level } => {
            put_varint(&mut out, 1);
            out.extend_from_slice(&zstd::bulk::compress(body, level)?);
        }
    }
    let length = out.len() as u64 + 4;
    out[4..12].copy_from_slice(&length.to_le_bytes());
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Appends the config fields of a manifest body.
pub(crate) fn encode_config(out: &mut Vec<u8>, config: &Config) {
    out.extend_from_slice(&config.uuid);
    out.push(match config.manifest_kind {
        ManifestKind::Single => 0,
        ManifestKind::Numbered => 1,
    });
    put_varint(out, config.max_inline_value_bytes.into());
    put_varint(out, config.max_decoded_node_bytes.into());
    out.push(config.version_tree_arity_log2);
    match config.compression {
        Compression::None => put_varint(out, 0),
        Compression::Zstd { level } => {
            put_varint(out, 1);
            out.extend_from_slice(&level.to_le_bytes());
        }
    }
}

fn common_prefix_len(a: &[u8], b: &[u8]) -> usize {
    a.iter().zip(b).take_while(|(x, y)| x == y).count()
}

fn file_order(a: &DataFile, b: &DataFile) -> Ordering {
    (a.base_path.as_slice(), a.relative_path.as_slice()).cmp(&(b.base_path.as_slice(), b.relative_path.as_slice()))
}

/// Appends the data file table of `files` the way TensorStore's
/// `DataFileTableBuilder` does (duplicates removed, sorted by
/// `(base_path, relative_path)`, a path shares its prefix with the previous
/// one only within identical base paths) and returns, for each of `files`,
/// its index in the table.
pub(crate) fn encode_data_file_table(out: &mut Vec<u8>, files: &[&DataFile]) -> Vec<usize> {
    let mut order: Vec<usize> = (0..files.len()).collect();
    order.sort_by(|&a, &b| file_order(files[a], files[b]));
    let mut table: Vec<&DataFile> = Vec::with_capacity(files.len());
    let mut index = vec![0; files.len()];
    for i in order {
        if table.last().is_none_or(|last| file_order(last, files[i]) != Ordering::Equal) {
            table.push(files[i]);
        }
        index[i] = table.len() - 1;
    }
    let prefixes: Vec<usize> = (0..table.len())
        .map(|i| {
            let Some(previous) = i.checked_sub(1).map(|p| table[p]) else { return 0 };
            let (a, b) = (&previous.base_path, &table[i].base_path);
            let shared = common_prefix_len(a, b);
            if shared == a.len() && shared == b.len() {
                shared + common_prefix_len(&previous.relative_path, &table[i].relative_path)
            } else {
                shared
            }
        })
        .collect();
    put_varint(out, table.len() as u64);
    for &prefix in prefixes.iter().skip(1) {
        put_varint(out, prefix as u64);
    }
    for (file, prefix) in table.iter().zip(&prefixes) {
        put_varint(out, (file.base_path.len() + file.relative_path.len() - prefix) as u64);
    }
    for file in &table {
        put_varint(out, file.base_path.len() as u64);
    }
    for (file, &prefix) in table.iter().zip(&prefixes) {
        let in_base = prefix.min(file.base_path.len());
        out.extend_from_slice(&file.base_path[in_base..]);
        out.extend_from_slice(&file.relative_path[prefix - in_base..]);
    }
    index
}

/// The value of a leaf entry to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LeafValueIn<'a> {
    /// Stored in the node.
    Inline(&'a [u8]),
    /// `length` bytes at `offset` of `file`.
    OutOfLine {
        /// The data file (base path relative to the node's own file).
        file: &'a DataFile,
        /// Offset of the value in the file.
        offset: u64,
        /// Length of the value.
        length: u64,
    },
}

/// A leaf entry to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct LeafEntryIn<'a> {
    /// The stored key: the full key without the node's implicit prefix.
    pub key: &'a [u8],
    /// The value.
    pub value: LeafValueIn<'a>,
}

/// A child reference of an interior node to encode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChildIn<'a> {
    /// The stored key (the child's lower bound without the node's implicit prefix).
    pub key: &'a [u8],
    /// How many bytes of `key` the child's keys share and leave out.
    pub subtree_common_prefix_length: usize,
    /// The file holding the child node.
    pub file: &'a DataFile,
    /// Offset of the child in the file.
    pub offset: u64,
    /// Encoded length of the child.
    pub length: u64,
    /// Statistics of the child's subtree.
    pub statistics: Statistics,
}

/// Appends the key columns: prefix lengths, suffix lengths, the subtree
/// common prefix lengths of interior nodes, then the suffixes.
fn encode_keys(out: &mut Vec<u8>, keys: &[&[u8]], subtree_prefixes: Option<&[usize]>) {
    put_varint(out, keys.len() as u64);
    let prefixes: Vec<usize> =
        (0..keys.len()).map(|i| if i == 0 { 0 } else { common_prefix_len(keys[i - 1], keys[i]) }).collect();
    for &prefix in prefixes.iter().skip(1) {
        put_varint(out, prefix as u64);
    }
    for (key, prefix) in keys.iter().zip(&prefixes) {
        put_varint(out, (key.len() - prefix) as u64);
    }
    for &s in subtree_prefixes.unwrap_or_default() {
        put_varint(out, s as u64);
    }
    for (key, &prefix) in keys.iter().zip(&prefixes) {
        out.extend_from_slice(&key[prefix..]);
    }
}

/// The body of a leaf node (height 0) holding `entries`, whose stored keys
/// must be strictly increasing.
pub(crate) fn encode_leaf_body(entries: &[LeafEntryIn<'_>]) -> Vec<u8> {
    let mut out = vec![0u8];
    let files: Vec<&DataFile> = entries
        .iter()
        .filter_map(|e| match e.value {
            LeafValueIn::OutOfLine { file, .. } => Some(file),
            LeafValueIn::Inline(_) => None,
        })
        .collect();
    let ids = encode_data_file_table(&mut out, &files);
    let keys: Vec<&[u8]> = entries.iter().map(|e| e.key).collect();
    encode_keys(&mut out, &keys, None);
    for entry in entries {
        let length = match entry.value {
            LeafValueIn::Inline(bytes) => bytes.len() as u64,
            LeafValueIn::OutOfLine { length, .. } => length,
        };
        put_varint(&mut out, length);
    }
    for entry in entries {
        out.push(u8::from(matches!(entry.value, LeafValueIn::OutOfLine { .. })));
    }
    for id in &ids {
        put_varint(&mut out, *id as u64);
    }
    for entry in entries {
        if let LeafValueIn::OutOfLine { offset, .. } = entry.value {
            put_varint(&mut out, offset);
        }
    }
    for entry in entries {
        if let LeafValueIn::Inline(bytes) = entry.value {
            out.extend_from_slice(bytes);
        }
    }
    out
}

/// The body of an interior node of `height` (≥ 1) referencing `children`,
/// whose stored keys must be strictly increasing.
pub(crate) fn encode_interior_body(height: u8, children: &[ChildIn<'_>]) -> Vec<u8> {
    let mut out = vec![height];
    let files: Vec<&DataFile> = children.iter().map(|c| c.file).collect();
    let ids = encode_data_file_table(&mut out, &files);
    let keys: Vec<&[u8]> = children.iter().map(|c| c.key).collect();
    let subtree_prefixes: Vec<usize> = children.iter().map(|c| c.subtree_common_prefix_length).collect();
    encode_keys(&mut out, &keys, Some(&subtree_prefixes));
    for id in ids {
        put_varint(&mut out, id as u64);
    }
    let columns: [fn(&ChildIn<'_>) -> u64; 5] = [
        |c| c.offset,
        |c| c.length,
        |c| c.statistics.num_keys,
        |c| c.statistics.num_tree_bytes,
        |c| c.statistics.num_indirect_value_bytes,
    ];
    for column in columns {
        for child in children {
            put_varint(&mut out, column(child));
        }
    }
    out
}

/// The body of a single-kind manifest listing `versions` inline (oldest
/// first, all in one aligned block of the version tree) and no version-tree
/// nodes. A version without a root gets the missing-root sentinel.
pub(crate) fn encode_manifest_body(config: &Config, versions: &[VersionInfo]) -> Vec<u8> {
    let mut out = Vec::new();
    encode_config(&mut out, config);
    let empty = DataFile { base_path: Vec::new(), relative_path: Vec::new() };
    let files: Vec<&DataFile> = versions.iter().map(|v| v.root.as_ref().map_or(&empty, |r| &r.file)).collect();
    let ids = encode_data_file_table(&mut out, &files);
    put_varint(&mut out, versions.len() as u64);
    for v in versions {
        put_varint(&mut out, v.generation);
    }
    for v in versions {
        out.push(v.root_height);
    }
    for id in ids {
        put_varint(&mut out, id as u64);
    }
    for v in versions {
        put_varint(&mut out, v.root.as_ref().map_or(MISSING, |r| r.offset));
    }
    for v in versions {
        put_varint(&mut out, v.root.as_ref().map_or(MISSING, |r| r.length));
    }
    for v in versions {
        put_varint(&mut out, v.statistics.num_keys);
    }
    for v in versions {
        put_varint(&mut out, v.statistics.num_tree_bytes);
    }
    for v in versions {
        put_varint(&mut out, v.statistics.num_indirect_value_bytes);
    }
    for v in versions {
        out.extend_from_slice(&v.commit_time_ns.to_le_bytes());
    }
    // No version-tree nodes.
    put_varint(&mut out, 0);
    out
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::ocdbt::btree::{decode_btree_node, BtreeEntries, LeafEntry, LeafValue};
    use crate::ocdbt::codec::tests::varint;
    use crate::ocdbt::codec::{decode_envelope, Origin, Reader, BTREE_NODE_MAGIC, MANIFEST_MAGIC};
    use crate::ocdbt::data_file_table::read_data_file_table;
    use crate::ocdbt::manifest::decode_manifest;
    use crate::ocdbt::manifest::tests::demo_manifest;
    use crate::ocdbt::version_tree::NodeRef;

    const ORIGIN: Origin<'static> = Origin { file: "db/d/file", object: "test object", offset: 0 };

    fn file(base: &str, rel: &str) -> DataFile {
        DataFile { base_path: base.as_bytes().to_vec(), relative_path: rel.as_bytes().to_vec() }
    }

    fn demo_file() -> DataFile {
        file("", "d/00000000000000000000000000000001")
    }

    #[test]
    fn varints_are_shortest_leb128() {
        let cases: [(u64, &[u8]); 7] = [
            (0, &[0x00]),
            (127, &[0x7f]),
            (128, &[0x80, 0x01]),
            (1024, &[0x80, 0x08]),
            (2048, &[0x80, 0x10]),
            (100_000_000, &[0x80, 0xc2, 0xd7, 0x2f]),
            (u64::MAX, &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01]),
        ];
        for (value, expected) in cases {
            let mut out = Vec::new();
            put_varint(&mut out, value);
            assert_eq!(out, expected, "{value}");
        }
        for shift in 0..64 {
            for value in [(1u64 << shift) - 1, 1 << shift, (1 << shift) + 1] {
                let mut out = Vec::new();
                put_varint(&mut out, value);
                assert_eq!(out.len() as u64, varint_len(value), "{value}");
                assert_eq!(out, varint(value));
                let data = Bytes::from(out);
                assert_eq!(Reader::new(&data, ORIGIN).varint("v").unwrap(), value);
            }
        }
    }

    #[test]
    fn envelopes_verify_raw_and_zstd() {
        let body = b"some body bytes, some body bytes, some body bytes".repeat(20);
        for compression in [Compression::None, Compression::Zstd { level: 0 }, Compression::Zstd { level: 19 }] {
            let encoded = encode_envelope(BTREE_NODE_MAGIC, &body, compression).unwrap();
            let n = encoded.len();
            assert_eq!(&encoded[..4], &[0x0c, 0xdb, 0x20, 0xde]);
            assert_eq!(u64::from_le_bytes(encoded[4..12].try_into().unwrap()), n as u64);
            assert_eq!(encoded[12], 0, "format version");
            assert_eq!(encoded[13], u8::from(compression != Compression::None));
            assert_eq!(u32::from_le_bytes(encoded[n - 4..].try_into().unwrap()), crc32c::crc32c(&encoded[..n - 4]));
            if compression != Compression::None {
                // One frame that records the content size, as TensorStore writes.
                let frame = &encoded[14..n - 4];
                assert_eq!(zstd::zstd_safe::get_frame_content_size(frame).ok(), Some(Some(body.len() as u64)));
                assert!(n < body.len());
            }
            let decoded = decode_envelope(&Bytes::from(encoded), BTREE_NODE_MAGIC, ORIGIN, 1 << 20).unwrap();
            assert_eq!(decoded, body);
        }
        // An empty raw body: magic, length, version, compression and CRC.
        assert_eq!(encode_envelope(MANIFEST_MAGIC, b"", Compression::None).unwrap().len(), 18);
    }

    /// The config of `format-spec/02-ocdbt.md` §4.4.
    fn demo_config() -> Config {
        Config {
            uuid: core::array::from_fn(|i| i as u8),
            manifest_kind: ManifestKind::Single,
            max_inline_value_bytes: 100,
            max_decoded_node_bytes: 8_388_608,
            version_tree_arity_log2: 4,
            compression: Compression::None,
        }
    }

    #[test]
    fn worked_manifest_example_is_reproduced() {
        let version = VersionInfo {
            generation: 1,
            commit_time_ns: 1_700_000_000_000_000_000,
            root_height: 0,
            statistics: Statistics { num_keys: 2, num_tree_bytes: 74, num_indirect_value_bytes: 2048 },
            root: Some(NodeRef { file: demo_file(), offset: 2048, length: 74 }),
        };
        let body = encode_manifest_body(&demo_config(), std::slice::from_ref(&version));
        let encoded = encode_envelope(MANIFEST_MAGIC, &body, Compression::None).unwrap();
        assert_eq!(encoded, demo_manifest());
    }

    #[test]
    fn orbax_config_bytes() {
        let config = Config {
            uuid: [7; 16],
            max_inline_value_bytes: 1024,
            max_decoded_node_bytes: 100_000_000,
            compression: Compression::Zstd { level: 0 },
            ..demo_config()
        };
        let mut out = Vec::new();
        encode_config(&mut out, &config);
        let mut expected = vec![7u8; 16];
        expected.extend([0x00, 0x80, 0x08, 0x80, 0xc2, 0xd7, 0x2f, 0x04, 0x01, 0, 0, 0, 0]);
        assert_eq!(out, expected);
        out.clear();
        encode_config(&mut out, &Config { manifest_kind: ManifestKind::Numbered, ..config.clone() });
        assert_eq!(out[16], 1);
        out.clear();
        encode_config(&mut out, &Config { compression: Compression::Zstd { level: -5 }, ..config });
        assert_eq!(&out[out.len() - 5..], &[0x01, 0xfb, 0xff, 0xff, 0xff]);
    }

    #[test]
    fn empty_database_manifest_has_the_missing_root_sentinel() {
        let version = VersionInfo {
            generation: 1,
            commit_time_ns: 5,
            root_height: 0,
            statistics: Statistics::default(),
            root: None,
        };
        let body = encode_manifest_body(&demo_config(), &[version]);
        let mut tail = vec![1, 0, 0]; // one file with an empty path
        tail.extend([1, 1, 0, 0]); // one version: generation 1, height 0, file 0
        tail.extend(varint(u64::MAX));
        tail.extend(varint(u64::MAX));
        tail.extend([0, 0, 0]);
        tail.extend(5u64.to_le_bytes());
        tail.push(0);
        assert!(body.ends_with(&tail), "{body:?}");
        for compression in [Compression::None, Compression::Zstd { level: 3 }] {
            let encoded = encode_envelope(MANIFEST_MAGIC, &body, compression).unwrap();
            let manifest = decode_manifest(&Bytes::from(encoded), ORIGIN, 1 << 20).unwrap();
            assert!(manifest.versions[0].is_empty());
            assert!(manifest.version_nodes.is_empty());
        }
    }

    fn decode_table(bytes: &[u8]) -> Vec<DataFile> {
        let data = Bytes::copy_from_slice(bytes);
        let mut r = Reader::new(&data, ORIGIN);
        let files = read_data_file_table(&mut r, b"").unwrap();
        r.finish().unwrap();
        files
    }

    #[test]
    fn data_file_table_three_file_example() {
        let (a, b) = ("a".repeat(32), "b".repeat(32));
        let files = [
            file("ocdbt.process_1/", &format!("d/{a}")),
            file("ocdbt.process_0/", &format!("d/{b}")),
            file("ocdbt.process_0/", &format!("d/{a}")),
            file("ocdbt.process_0/", &format!("d/{b}")),
        ];
        let refs: Vec<&DataFile> = files.iter().collect();
        let mut out = Vec::new();
        let ids = encode_data_file_table(&mut out, &refs);
        assert_eq!(ids, vec![2, 1, 0, 1]);
        let mut expected = vec![3, 18, 14, 50, 32, 36, 16, 16, 16];
        expected.extend(format!("ocdbt.process_0/d/{a}").as_bytes());
        expected.extend(b.as_bytes());
        expected.extend(format!("1/d/{a}").as_bytes());
        assert_eq!(out, expected);
        let decoded = decode_table(&out);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(decoded[*id], files[i]);
        }
    }

    #[test]
    fn data_file_table_prefixes_stay_within_identical_base_paths() {
        let files = [file("ab/", "x"), file("a", "q/y"), file("", "d/1"), file("", "d/2"), file("a", "q/z")];
        let refs: Vec<&DataFile> = files.iter().collect();
        let mut out = Vec::new();
        let ids = encode_data_file_table(&mut out, &refs);
        // Sorted: ("", d/1), ("", d/2), (a, q/y), (a, q/z), (ab/, x).
        assert_eq!(ids, vec![4, 2, 0, 1, 3]);
        // Prefixes: 2 (same empty base), 0, 3 (same base "a"), 1 (bases differ: only "a").
        assert_eq!(&out[..5], &[5, 2, 0, 3, 1]);
        let decoded = decode_table(&out);
        for (i, id) in ids.iter().enumerate() {
            assert_eq!(decoded[*id], files[i]);
        }
        // No files: the single byte 0.
        let mut out = Vec::new();
        assert!(encode_data_file_table(&mut out, &[]).is_empty());
        assert_eq!(out, [0]);
    }

    #[test]
    fn worked_leaf_example_is_reproduced() {
        let f = demo_file();
        let entries = [
            LeafEntryIn { key: b"a", value: LeafValueIn::Inline(b"hello") },
            LeafEntryIn { key: b"b", value: LeafValueIn::OutOfLine { file: &f, offset: 0, length: 2048 } },
        ];
        let encoded = encode_envelope(BTREE_NODE_MAGIC, &encode_leaf_body(&entries), Compression::None).unwrap();
        // format-spec/02-ocdbt.md §7.4
        let mut expected = vec![0x0c, 0xdb, 0x20, 0xde, 0x4a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x22, 0];
        expected.extend(b"d/00000000000000000000000000000001");
        expected.extend([2, 0, 1, 1, b'a', b'b', 5, 0x80, 0x10, 0, 1, 0, 0]);
        expected.extend(b"hello");
        expected.extend([0xe3, 0x3e, 0xaf, 0x32]);
        assert_eq!(encoded, expected);
    }

    #[test]
    fn leaf_round_trips_through_the_decoder() {
        let (f1, f2) = (file("", "d/2"), file("", "d/1"));
        let keys: [&[u8]; 5] = [b"", b"a/b", b"a/c", b"a/c\xff\x00", "ключ".as_bytes()];
        let entries = [
            LeafEntryIn { key: keys[0], value: LeafValueIn::Inline(b"") },
            LeafEntryIn { key: keys[1], value: LeafValueIn::OutOfLine { file: &f1, offset: 7, length: 9000 } },
            LeafEntryIn { key: keys[2], value: LeafValueIn::Inline(b"xyz") },
            LeafEntryIn { key: keys[3], value: LeafValueIn::OutOfLine { file: &f2, offset: 1 << 40, length: 1 } },
            LeafEntryIn { key: keys[4], value: LeafValueIn::OutOfLine { file: &f1, offset: 0, length: 5 } },
        ];
        let body = encode_leaf_body(&entries);
        for compression in [Compression::None, Compression::Zstd { level: 0 }] {
            let encoded = Bytes::from(encode_envelope(BTREE_NODE_MAGIC, &body, compression).unwrap());
            let node = decode_btree_node(&encoded, ORIGIN, b"", 1 << 20).unwrap();
            assert_eq!(node.height, 0);
            assert_eq!(node.files, vec![f2.clone(), f1.clone()]);
            let BtreeEntries::Leaf(decoded) = node.entries else { panic!("not a leaf") };
            let expected = [
                LeafValue::Inline(Bytes::new()),
                LeafValue::OutOfLine { file: 1, offset: 7, length: 9000 },
                LeafValue::Inline(Bytes::from_static(b"xyz")),
                LeafValue::OutOfLine { file: 0, offset: 1 << 40, length: 1 },
                LeafValue::OutOfLine { file: 1, offset: 0, length: 5 },
            ];
            let expected: Vec<LeafEntry> =
                keys.iter().zip(expected).map(|(k, value)| LeafEntry { key: k.to_vec(), value }).collect();
            assert_eq!(decoded, expected);
        }
    }

    #[test]
    fn worked_interior_example_is_reproduced() {
        // format-spec/02-ocdbt.md §7.5
        let f = file("", "d/9df7d1e8a3319b4f170e5da0c0993c3f");
        let child = |key: &'static [u8], offset, num_tree_bytes| ChildIn {
            key,
            subtree_common_prefix_length: 7,
            file: &f,
            offset,
            length: 124,
            statistics: Statistics { num_keys: 150, num_tree_bytes, num_indirect_value_bytes: 1281 },
        };
        let children = [child(b"p0/arr0000/c/0", 5845, 3052), child(b"p1/arr0000/c/0", 5969, 3041)];
        let body = encode_interior_body(3, &children);
        assert_eq!(body, crate::ocdbt::btree::tests::interior_body(), "the spec's worked example, byte for byte");
        let encoded = Bytes::from(encode_envelope(BTREE_NODE_MAGIC, &body, Compression::Zstd { level: 0 }).unwrap());
        let node = decode_btree_node(&encoded, ORIGIN, b"", 1 << 20).unwrap();
        let BtreeEntries::Interior(entries) = node.entries else { panic!("not interior") };
        assert_eq!(entries[1].key, b"p1/arr0000/c/0");
        assert_eq!((entries[1].subtree_common_prefix_length, entries[1].offset), (7, 5969));
    }
}
