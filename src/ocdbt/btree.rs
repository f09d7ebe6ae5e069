//! B+tree nodes: the keys of one generation and where their values are.
//!
//! A node stores its keys relative to an *implicit prefix* given by its
//! parent (empty for the root) with prefix compression against the previous
//! key. Leaves hold values inline or reference a byte range of a data file;
//! interior nodes reference child nodes, each with the length of the prefix
//! all keys of that child share (`subtree_common_prefix_length`), which the
//! child leaves out of its stored keys.

use bytes::Bytes;

use super::codec::{check_reference, decode_envelope, Origin, Reader, BTREE_NODE_MAGIC};
use super::data_file_table::{read_data_file_table, DataFile};
use super::OcdbtError;

/// Most entries in one node (TensorStore's limit).
pub(crate) const MAX_NODE_ENTRIES: u64 = 1 << 20;
/// Largest inline value (TensorStore's `kMaxInlineValueLength`).
pub(crate) const MAX_INLINE_VALUE_BYTES: u64 = 1 << 20;

/// Where a leaf entry's value is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum LeafValue {
    /// Stored in the node.
    Inline(Bytes),
    /// A byte range of file `file` of the node's data file table.
    OutOfLine {
        /// Index into the node's data file table.
        file: usize,
        /// Offset of the value in the file.
        offset: u64,
        /// Length of the value.
        length: u64,
    },
}

/// A key of a leaf node and its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LeafEntry {
    /// The stored key (relative to the node's implicit prefix).
    pub key: Vec<u8>,
    /// The value.
    pub value: LeafValue,
}

/// A child reference of an interior node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct InteriorEntry {
    /// The stored key: the inclusive lower bound of the child's keys.
    pub key: Vec<u8>,
    /// How many bytes of `key` every key of the child subtree shares (and the child omits).
    pub subtree_common_prefix_length: usize,
    /// Index into the node's data file table.
    pub file: usize,
    /// Offset of the child node in the file.
    pub offset: u64,
    /// Encoded length of the child node.
    pub length: u64,
}

/// The entries of a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum BtreeEntries {
    /// Height 0.
    Leaf(Vec<LeafEntry>),
    /// Height > 0.
    Interior(Vec<InteriorEntry>),
}

/// A decoded B+tree node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BtreeNode {
    /// 0 for leaves.
    pub height: u8,
    /// The files the entries refer to (base paths include the transitive path).
    pub files: Vec<DataFile>,
    /// The entries, in strictly increasing key order.
    pub entries: BtreeEntries,
}

fn read_keys(r: &mut Reader<'_>, n: usize, interior: bool) -> Result<(Vec<Vec<u8>>, Vec<usize>), OcdbtError> {
    let mut prefix_lengths = vec![0];
    prefix_lengths.extend(r.column(n - 1, |r| r.varint16("key_prefix_length"))?);
    let suffix_lengths = r.column(n, |r| r.varint16("key_suffix_length"))?;
    let subtree_prefixes =
        if interior { r.column(n, |r| r.varint16("subtree_common_prefix_length"))? } else { Vec::new() };
    let mut keys: Vec<Vec<u8>> = Vec::with_capacity(n);
    for i in 0..n {
        let prefix = prefix_lengths[i];
        let mut key = match keys.last() {
            Some(previous) if prefix <= previous.len() => previous[..prefix].to_vec(),
            Some(previous) => {
                return Err(r.origin().corrupt(format!(
                    "key {i}: key_prefix_length {prefix} exceeds the previous key's length {}",
                    previous.len()
                )))
            }
            None => Vec::new(),
        };
        if prefix + suffix_lengths[i] > u16::MAX as usize {
            return Err(r.origin().limit("key length", (prefix + suffix_lengths[i]) as u64, u16::MAX.into()));
        }
        key.extend_from_slice(&r.bytes(suffix_lengths[i], "key suffixes")?);
        if let Some(previous) = keys.last() {
            if key <= *previous {
                return Err(r
                    .origin()
                    .corrupt(format!("key {i} is not greater than key {}: invalid key order", i - 1)));
            }
        }
        if interior && subtree_prefixes[i] > key.len() {
            return Err(r.origin().corrupt(format!(
                "key {i}: subtree_common_prefix_length {} exceeds the key length {}",
                subtree_prefixes[i],
                key.len()
            )));
        }
        keys.push(key);
    }
    Ok((keys, subtree_prefixes))
}

fn check_file_id(r: &Reader<'_>, id: u64, files: &[DataFile]) -> Result<usize, OcdbtError> {
    if id >= files.len() as u64 {
        return Err(r.origin().corrupt(format!("data file id {id} out of range ({} files)", files.len())));
    }
    Ok(id as usize)
}

fn read_leaf(r: &mut Reader<'_>, keys: Vec<Vec<u8>>, files: &[DataFile]) -> Result<Vec<LeafEntry>, OcdbtError> {
    let n = keys.len();
    let lengths = r.column(n, |r| r.varint("value_length"))?;
    let kinds = r.column(n, |r| r.u8("value_kind"))?;
    if let Some(i) = kinds.iter().position(|k| *k > 1) {
        return Err(r.origin().corrupt(format!("value_kind[{i}] is {}, expected 0 or 1", kinds[i])));
    }
    let out_of_line = kinds.iter().filter(|k| **k == 1).count();
    let ids = r.column(out_of_line, |r| r.varint("data_file_id"))?;
    let offsets = r.column(out_of_line, |r| r.varint("data_file_offset"))?;
    let mut references = ids.into_iter().zip(offsets);
    let mut entries = Vec::with_capacity(n);
    for (i, key) in keys.into_iter().enumerate() {
        let length = lengths[i];
        let value = if kinds[i] == 0 {
            if length > MAX_INLINE_VALUE_BYTES {
                return Err(r.origin().limit("inline value length", length, MAX_INLINE_VALUE_BYTES));
            }
            // Lossless: length ≤ 1 MiB.
            LeafValue::Inline(r.bytes(length as usize, "inline values")?)
        } else {
            // One reference was read per out-of-line entry.
            let Some((id, offset)) = references.next() else {
                return Err(r.origin().corrupt("fewer value references than out-of-line entries"));
            };
            check_reference(r.origin(), offset, length)?;
            LeafValue::OutOfLine { file: check_file_id(r, id, files)?, offset, length }
        };
        entries.push(LeafEntry { key, value });
    }
    Ok(entries)
}

fn read_interior(
    r: &mut Reader<'_>,
    keys: Vec<Vec<u8>>,
    subtree_prefixes: Vec<usize>,
    files: &[DataFile],
) -> Result<Vec<InteriorEntry>, OcdbtError> {
    let n = keys.len();
    let ids = r.column(n, |r| r.varint("data_file_id"))?;
    let offsets = r.column(n, |r| r.varint("data_file_offset"))?;
    let lengths = r.column(n, |r| r.varint("data_file_length"))?;
    // Statistics of the children: informational, not used for reading.
    for field in ["num_keys", "num_tree_bytes", "num_indirect_value_bytes"] {
        r.column(n, |r| r.varint(field))?;
    }
    let mut entries = Vec::with_capacity(n);
    for (i, key) in keys.into_iter().enumerate() {
        check_reference(r.origin(), offsets[i], lengths[i])?;
        entries.push(InteriorEntry {
            key,
            subtree_common_prefix_length: subtree_prefixes[i],
            file: check_file_id(r, ids[i], files)?,
            offset: offsets[i],
            length: lengths[i],
        });
    }
    Ok(entries)
}

/// Decodes a B+tree node read from a file whose base path is `transitive_path`.
pub(crate) fn decode_btree_node(
    encoded: &Bytes,
    origin: Origin<'_>,
    transitive_path: &[u8],
    max_decoded: u64,
) -> Result<BtreeNode, OcdbtError> {
    let body = decode_envelope(encoded, BTREE_NODE_MAGIC, origin, max_decoded)?;
    let mut r = Reader::new(&body, origin);
    let height = r.u8("height")?;
    let files = read_data_file_table(&mut r, transitive_path)?;
    // Each entry needs at least a key suffix length and (leaf) a value length and kind.
    let n = r.count("num_entries", MAX_NODE_ENTRIES, 2)?;
    if n == 0 {
        return Err(origin.corrupt("empty B+tree node"));
    }
    let (keys, subtree_prefixes) = read_keys(&mut r, n, height > 0)?;
    let entries = if height == 0 {
        BtreeEntries::Leaf(read_leaf(&mut r, keys, &files)?)
    } else {
        BtreeEntries::Interior(read_interior(&mut r, keys, subtree_prefixes, &files)?)
    };
    r.finish()?;
    Ok(BtreeNode { height, files, entries })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::ocdbt::codec::tests::{envelope, varint};
    use crate::ErrorKind;

    const ORIGIN: Origin<'static> =
        Origin { file: "ckpt/state/d/00000000000000000000000000000001", object: "B+tree node", offset: 2048 };

    /// The 74-byte leaf of `format-spec/02-ocdbt.md` §7.4.
    fn demo_leaf() -> Vec<u8> {
        let mut n = vec![0x0c, 0xdb, 0x20, 0xde, 0x4a, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1, 0x22, 0];
        n.extend(b"d/00000000000000000000000000000001");
        n.extend([2, 0, 1, 1, b'a', b'b', 5, 0x80, 0x10, 0, 1, 0, 0]);
        n.extend(b"hello");
        n.extend([0xe3, 0x3e, 0xaf, 0x32]);
        n
    }

    fn decode(bytes: &[u8]) -> Result<BtreeNode, OcdbtError> {
        decode_btree_node(&Bytes::copy_from_slice(bytes), ORIGIN, b"", 1 << 20)
    }

    #[test]
    fn worked_leaf_example() {
        let bytes = demo_leaf();
        assert_eq!(bytes.len(), 74);
        let node = decode(&bytes).unwrap();
        assert_eq!(node.height, 0);
        assert_eq!(node.files[0].relative_path, b"d/00000000000000000000000000000001");
        let BtreeEntries::Leaf(entries) = node.entries else { panic!("not a leaf") };
        assert_eq!(entries.len(), 2);
        assert_eq!(
            entries[0],
            LeafEntry { key: b"a".to_vec(), value: LeafValue::Inline(Bytes::from_static(b"hello")) }
        );
        assert_eq!(
            entries[1],
            LeafEntry { key: b"b".to_vec(), value: LeafValue::OutOfLine { file: 0, offset: 0, length: 2048 } }
        );
    }

    #[test]
    fn damaged_leaf_is_rejected_without_panicking() {
        let good = demo_leaf();
        for i in 0..good.len() {
            let mut bad = good.clone();
            bad[i] ^= 0x40;
            assert!(decode(&bad).is_err(), "byte {i}");
        }
        for cut in 0..good.len() {
            assert!(decode(&good[..cut]).is_err(), "cut {cut}");
        }
        let mut bad = good.clone();
        bad[30] ^= 1;
        let err = decode(&bad).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Checksum);
        assert!(
            err.to_string().contains("ckpt/state/d/00000000000000000000000000000001: B+tree node at offset 2048"),
            "{err}"
        );
    }

    /// The body of the interior example of `format-spec/02-ocdbt.md` §7.5.
    pub(crate) fn interior_body() -> Vec<u8> {
        let mut b = vec![3, 1, 0x22, 0];
        b.extend(b"d/9df7d1e8a3319b4f170e5da0c0993c3f");
        b.extend([2, 1, 0x0e, 0x0d, 7, 7]);
        b.extend(b"p0/arr0000/c/01/arr0000/c/0");
        b.extend([0, 0, 0xd5, 0x2d, 0xd1, 0x2e, 0x7c, 0x7c, 0x96, 0x01, 0x96, 0x01]);
        b.extend([0xec, 0x17, 0xe1, 0x17, 0x81, 0x0a, 0x81, 0x0a]);
        b
    }

    #[test]
    fn worked_interior_example() {
        for zstd in [false, true] {
            let encoded = envelope(BTREE_NODE_MAGIC, &interior_body(), zstd);
            let node = decode_btree_node(&encoded, ORIGIN, b"ocdbt.process_0/", 1 << 20).unwrap();
            assert_eq!(node.height, 3);
            assert_eq!(node.files[0].base_path, b"ocdbt.process_0/");
            let BtreeEntries::Interior(entries) = node.entries else { panic!("not interior") };
            assert_eq!(entries[0].key, b"p0/arr0000/c/0");
            assert_eq!(entries[1].key, b"p1/arr0000/c/0");
            assert_eq!(entries[1].subtree_common_prefix_length, 7);
            assert_eq!((entries[0].offset, entries[0].length), (5845, 124));
            assert_eq!((entries[1].offset, entries[1].length), (5969, 124));
        }
    }

    fn leaf_body(keys: &[&[u8]], prefix_lengths: &[u64], values: &[&[u8]]) -> Vec<u8> {
        let mut b = vec![0, 0];
        b.extend(varint(keys.len() as u64));
        prefix_lengths.iter().for_each(|p| b.extend(varint(*p)));
        keys.iter().zip([0].iter().chain(prefix_lengths)).for_each(|(k, p)| b.extend(varint(k.len() as u64 - p)));
        keys.iter().zip([0].iter().chain(prefix_lengths)).for_each(|(k, p)| b.extend(&k[*p as usize..]));
        values.iter().for_each(|v| b.extend(varint(v.len() as u64)));
        b.extend(vec![0u8; values.len()]);
        values.iter().for_each(|v| b.extend(*v));
        b
    }

    fn decode_body(body: &[u8]) -> Result<BtreeNode, OcdbtError> {
        decode_btree_node(&envelope(BTREE_NODE_MAGIC, body, false), ORIGIN, b"", 1 << 24)
    }

    #[test]
    fn structural_errors() {
        decode_body(&leaf_body(&[b"ab", b"ac"], &[1], &[b"1", b"2"])).unwrap();
        let cases: Vec<(Vec<u8>, ErrorKind)> = vec![
            // duplicate and decreasing keys
            (leaf_body(&[b"ab", b"ab"], &[2], &[b"1", b"2"]), ErrorKind::Corrupt),
            (leaf_body(&[b"b", b"a"], &[0], &[b"1", b"2"]), ErrorKind::Corrupt),
            // prefix longer than the previous key
            (vec![0, 0, 2, 5, 1, 1, b'a', b'b', 0, 0, 0, 0], ErrorKind::Corrupt),
            // empty node
            (vec![0, 0, 0], ErrorKind::Corrupt),
            // too many entries
            ([vec![0, 0], varint((1 << 20) + 1)].concat(), ErrorKind::Limit),
            // value_kind 2
            (vec![0, 0, 1, 1, b'a', 0, 2], ErrorKind::Corrupt),
            // out-of-line value with a file id out of range
            (vec![0, 0, 1, 1, b'a', 5, 1, 0, 0], ErrorKind::Corrupt),
            // trailing bytes
            ([leaf_body(&[b"a"], &[], &[b"1"]), vec![0]].concat(), ErrorKind::Corrupt),
            // inline value larger than 1 MiB
            ([vec![0, 0, 1, 1, b'a'], varint((1 << 20) + 1), vec![0]].concat(), ErrorKind::Limit),
            // subtree common prefix longer than the key
            (vec![1, 1, 1, 0, b'f', 1, 1, 2, b'a', 0, 0, 1, 0, 0, 0], ErrorKind::Corrupt),
        ];
        for (body, kind) in cases {
            let err = decode_body(&body).unwrap_err();
            assert_eq!(err.kind(), kind, "{body:?}: {err}");
        }
        // An out-of-line reference overflowing 2^63 - 1.
        let mut body = vec![0, 1, 1, 0, b'f', 1, 1, b'a'];
        body.extend(varint(10));
        body.extend([1, 0]);
        body.extend(varint(u64::MAX - 5));
        assert_eq!(decode_body(&body).unwrap_err().kind(), ErrorKind::Corrupt);
    }
}
