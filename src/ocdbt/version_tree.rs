//! The version tree: which B+tree root belongs to which generation.
//!
//! The newest generations (one aligned block of `2^version_tree_arity_log2`)
//! are listed inline in the manifest; older ones hang off version-tree nodes
//! that the manifest references, at most one per height. A reader that only
//! wants the latest generation never reads a version-tree node.

use bytes::Bytes;

use super::codec::{check_reference, decode_envelope, Origin, Reader, VERSION_NODE_MAGIC};
use super::data_file_table::{read_data_file_table, DataFile};
use super::OcdbtError;

/// Statistics of a B+tree (sub)tree, as recorded by the writer. They are
/// informational: readers do not validate them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Statistics {
    /// Number of keys.
    pub num_keys: u64,
    /// Total encoded size of the B+tree nodes, in bytes.
    pub num_tree_bytes: u64,
    /// Total size of the out-of-line values, in bytes.
    pub num_indirect_value_bytes: u64,
}

/// A byte range of a data file holding an encoded node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct NodeRef {
    /// The file.
    pub file: DataFile,
    /// Offset of the node in the file.
    pub offset: u64,
    /// Encoded length of the node.
    pub length: u64,
}

/// One generation (version) of the database.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VersionInfo {
    /// The generation number (1 for the first commit, +1 per commit).
    pub generation: u64,
    /// Commit time in nanoseconds since the Unix epoch.
    pub commit_time_ns: u64,
    /// Height of the B+tree root (0: the root is a leaf).
    pub root_height: u8,
    /// Statistics of the whole B+tree, as recorded by the writer.
    pub statistics: Statistics,
    /// The root node; `None` for a generation without keys.
    pub(crate) root: Option<NodeRef>,
}

impl VersionInfo {
    /// True if this generation has no keys (its root is the "missing" sentinel).
    pub fn is_empty(&self) -> bool {
        self.root.is_none()
    }
}

/// A reference to a version-tree node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct VersionNodeRef {
    /// The latest generation in the referenced subtree.
    pub generation: u64,
    /// Where the node is.
    pub node: NodeRef,
    /// Height of the referenced node.
    pub height: u8,
}

/// A decoded version-tree node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum VersionTreeNode {
    /// Height 0: generations.
    Leaf(Vec<VersionInfo>),
    /// Height > 0: references to nodes of height − 1.
    Interior(Vec<VersionNodeRef>),
}

impl VersionTreeNode {
    /// The latest generation in this node.
    pub fn latest_generation(&self) -> u64 {
        match self {
            VersionTreeNode::Leaf(v) => v.last().map_or(0, |v| v.generation),
            VersionTreeNode::Interior(v) => v.last().map_or(0, |v| v.generation),
        }
    }
}

/// Maximum version-tree height for an arity of `2^arity_log2`.
pub(crate) fn max_version_tree_height(arity_log2: u8) -> u8 {
    (63 / arity_log2).saturating_sub(1)
}

/// The id, offset and length columns of `n` references.
fn read_refs(r: &mut Reader<'_>, files: &[DataFile], n: usize) -> Result<Vec<(usize, u64, u64)>, OcdbtError> {
    let ids = r.column(n, |r| r.varint("data_file_id"))?;
    let offsets = r.column(n, |r| r.varint("offset"))?;
    let lengths = r.column(n, |r| r.varint("length"))?;
    let mut out = Vec::with_capacity(n);
    for ((id, offset), length) in ids.into_iter().zip(offsets).zip(lengths) {
        if id >= files.len() as u64 {
            return Err(r.origin().corrupt(format!("data file id {id} out of range ({} files)", files.len())));
        }
        out.push((id as usize, offset, length));
    }
    Ok(out)
}

/// Reads and validates a version leaf-entry array (manifest `inline_versions`
/// or a height-0 version-tree node).
pub(crate) fn read_leaf_entries(
    r: &mut Reader<'_>,
    files: &[DataFile],
    arity_log2: u8,
) -> Result<Vec<VersionInfo>, OcdbtError> {
    let arity = 1u64 << arity_log2;
    // generation, height, id, offset, length, 3 statistics, 8-byte time.
    let n = r.count("number of versions", arity, 16)?;
    if n == 0 {
        return Err(r.origin().corrupt("empty version list"));
    }
    let generations = r.column(n, |r| r.varint("generation_number"))?;
    let heights = r.column(n, |r| r.u8("root_height"))?;
    let refs = read_refs(r, files, n)?;
    let num_keys = r.column(n, |r| r.varint("num_keys"))?;
    let num_tree_bytes = r.column(n, |r| r.varint("num_tree_bytes"))?;
    let num_indirect = r.column(n, |r| r.varint("num_indirect_value_bytes"))?;
    let times = r.column(n, |r| r.u64_le("commit_time"))?;
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let generation = generations[i];
        let (id, offset, length) = refs[i];
        let statistics = Statistics {
            num_keys: num_keys[i],
            num_tree_bytes: num_tree_bytes[i],
            num_indirect_value_bytes: num_indirect[i],
        };
        if generation == 0 {
            return Err(r.origin().corrupt(format!("generation_number[{i}] is 0")));
        }
        if i > 0 && generation <= generations[i - 1] {
            return Err(r.origin().corrupt(format!(
                "generation_number[{i}] = {generation} is not greater than generation_number[{}] = {}",
                i - 1,
                generations[i - 1]
            )));
        }
        let root = if offset == u64::MAX && length == u64::MAX {
            if heights[i] != 0 || statistics != Statistics::default() {
                return Err(r
                    .origin()
                    .corrupt(format!("empty generation {generation} has a non-zero root height or statistics")));
            }
            None
        } else {
            check_reference(r.origin(), offset, length)?;
            Some(NodeRef { file: files[id].clone(), offset, length })
        };
        out.push(VersionInfo { generation, commit_time_ns: times[i], root_height: heights[i], statistics, root });
    }
    let (first, last) = (generations[0], generations[n - 1]);
    let block_start = last - (last - 1) % arity;
    if first < block_start {
        return Err(r
            .origin()
            .corrupt(format!("generations {first}..={last} span more than one aligned block of {arity}")));
    }
    Ok(out)
}

/// Reads a version interior-entry array; `node_height` is `Some(h)` inside a
/// version-tree node of height `h` (children have height `h − 1`, no height
/// column) and `None` in the manifest (explicit height column).
pub(crate) fn read_interior_entries(
    r: &mut Reader<'_>,
    files: &[DataFile],
    arity_log2: u8,
    node_height: Option<u8>,
) -> Result<Vec<VersionNodeRef>, OcdbtError> {
    let max_height = max_version_tree_height(arity_log2);
    let max_count = match node_height {
        Some(_) => 1u64 << arity_log2,
        None => u64::from(max_height),
    };
    // generation, id, offset, length, num_generations, 8-byte time.
    let n = r.count("number of version-tree node references", max_count, 13)?;
    let generations = r.column(n, |r| r.varint("generation_number"))?;
    let refs = read_refs(r, files, n)?;
    let num_generations = r.column(n, |r| r.varint("num_generations"))?;
    r.column(n, |r| r.u64_le("commit_time"))?;
    let heights = match node_height {
        Some(h) => vec![h - 1; n],
        None => r.column(n, |r| r.u8("entry_height"))?,
    };
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let (id, offset, length) = refs[i];
        check_reference(r.origin(), offset, length)?;
        out.push(VersionNodeRef {
            generation: generations[i],
            node: NodeRef { file: files[id].clone(), offset, length },
            height: heights[i],
        });
    }
    match node_height {
        Some(h) => validate_node_entries(r.origin(), &out, &num_generations, arity_log2, h)?,
        None => {
            for (i, e) in out.iter().enumerate() {
                if e.generation == 0 {
                    return Err(r.origin().corrupt(format!("version node generation_number[{i}] is 0")));
                }
                if e.height == 0 || e.height > max_height {
                    return Err(r
                        .origin()
                        .corrupt(format!("version node height[{i}] = {} outside 1..={max_height}", e.height)));
                }
                if i > 0 && (e.generation <= out[i - 1].generation || e.height >= out[i - 1].height) {
                    return Err(r.origin().corrupt(format!(
                        "version node references {} and {i} are not in increasing generation and decreasing height order",
                        i - 1
                    )));
                }
            }
        }
    }
    Ok(out)
}

/// `ValidateVersionTreeInteriorNodeEntries`: children are full, distinct,
/// aligned subtrees of one parent block.
fn validate_node_entries(
    origin: &Origin<'_>,
    entries: &[VersionNodeRef],
    num_generations: &[u64],
    arity_log2: u8,
    height: u8,
) -> Result<(), OcdbtError> {
    if entries.is_empty() {
        return Err(origin.corrupt("version-tree node without entries"));
    }
    // height ≤ 63 / arity_log2 − 1, so the shift is < 64.
    let stride = 1u64 << (u32::from(arity_log2) * u32::from(height));
    for (i, e) in entries.iter().enumerate() {
        let g = e.generation;
        if g == 0 || g % stride != 0 {
            return Err(origin.corrupt(format!("generation_number[{i}] = {g} is not a non-zero multiple of {stride}")));
        }
        if i > 0 {
            let p = entries[i - 1].generation;
            if g <= p || (g - 1) / stride == (p - 1) / stride {
                return Err(
                    origin.corrupt(format!("generation_number[{i}] = {g} does not start a new child block after {p}"))
                );
            }
        }
        if num_generations[i] > stride {
            return Err(origin
                .corrupt(format!("num_generations[{i}] = {} exceeds the subtree size {stride}", num_generations[i])));
        }
    }
    let parent_block = |g: u64| ((g - 1) / stride) >> arity_log2;
    if parent_block(entries[0].generation) != parent_block(entries[entries.len() - 1].generation) {
        return Err(origin.corrupt("entries span more than one parent block"));
    }
    Ok(())
}

/// `ValidateManifestVersionTreeNodes`: each manifest reference lies in the
/// generation range TensorStore keeps for its height, given the latest
/// inline generation.
pub(crate) fn validate_manifest_version_nodes(
    origin: &Origin<'_>,
    nodes: &[VersionNodeRef],
    arity_log2: u8,
    latest: u64,
) -> Result<(), OcdbtError> {
    let shift = u32::from(arity_log2);
    let max_height = max_version_tree_height(arity_log2);
    let mut g = ((latest - 1) >> shift) << shift;
    let mut remaining = nodes.len();
    let mut height = 1u8;
    while g > 0 && height <= max_height {
        let level_shift = (u32::from(height) + 1) * shift;
        let next = if level_shift >= 64 { 0 } else { ((g - 1) >> level_shift) << level_shift };
        if remaining > 0 && nodes[remaining - 1].height == height {
            let e = &nodes[remaining - 1];
            if e.generation <= next || e.generation > g {
                return Err(origin.corrupt(format!(
                    "version node of height {height} has generation {}, outside {}..={g}",
                    e.generation,
                    next + 1
                )));
            }
            remaining -= 1;
        }
        g = next;
        height += 1;
    }
    if remaining > 0 {
        let e = &nodes[remaining - 1];
        return Err(origin.corrupt(format!(
            "unexpected version node of height {} (generation {}) for latest generation {latest}",
            e.height, e.generation
        )));
    }
    Ok(())
}

/// Decodes a version-tree node read from a file whose base path is `transitive_path`.
pub(crate) fn decode_version_tree_node(
    encoded: &Bytes,
    origin: Origin<'_>,
    transitive_path: &[u8],
    arity_log2: u8,
    max_decoded: u64,
) -> Result<(u8, VersionTreeNode), OcdbtError> {
    let body = decode_envelope(encoded, VERSION_NODE_MAGIC, origin, max_decoded)?;
    let mut r = Reader::new(&body, origin);
    let node_arity = r.u8("version_tree_arity_log2")?;
    if node_arity != arity_log2 {
        return Err(origin.corrupt(format!("version_tree_arity_log2 is {node_arity}, the manifest's is {arity_log2}")));
    }
    let height = r.u8("height")?;
    let max_height = max_version_tree_height(arity_log2);
    if height > max_height {
        return Err(origin.corrupt(format!("height {height} exceeds the maximum {max_height}")));
    }
    let files = read_data_file_table(&mut r, transitive_path)?;
    let node = if height == 0 {
        VersionTreeNode::Leaf(read_leaf_entries(&mut r, &files, arity_log2)?)
    } else {
        VersionTreeNode::Interior(read_interior_entries(&mut r, &files, arity_log2, Some(height))?)
    };
    r.finish()?;
    Ok((height, node))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ocdbt::codec::tests::{envelope, varint, ORIGIN};
    use crate::ErrorKind;

    /// A leaf-entry array for `generations`, all with root (file 0, 100, 50).
    pub(crate) fn leaf_array(generations: &[u64]) -> Vec<u8> {
        let n = generations.len();
        let mut out = varint(n as u64);
        generations.iter().for_each(|g| out.extend(varint(*g)));
        out.extend(vec![0u8; n]); // heights
        out.extend(vec![0u8; n]); // file ids
        (0..n).for_each(|_| out.extend(varint(100)));
        (0..n).for_each(|_| out.extend(varint(50)));
        out.extend(vec![1u8; 3 * n]); // statistics
        (0..n).for_each(|i| out.extend((i as u64 + 10).to_le_bytes()));
        out
    }

    fn read_leaf(bytes: &[u8], arity_log2: u8) -> Result<Vec<VersionInfo>, OcdbtError> {
        let data = Bytes::copy_from_slice(bytes);
        let mut r = Reader::new(&data, ORIGIN);
        let files = vec![DataFile { base_path: vec![], relative_path: b"d/x".to_vec() }];
        let out = read_leaf_entries(&mut r, &files, arity_log2)?;
        r.finish()?;
        Ok(out)
    }

    #[test]
    fn leaf_entries_decode() {
        let v = read_leaf(&leaf_array(&[17, 18]), 4).unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].generation, 18);
        assert_eq!(v[1].commit_time_ns, 11);
        assert_eq!(v[0].statistics, Statistics { num_keys: 1, num_tree_bytes: 1, num_indirect_value_bytes: 1 });
        assert_eq!(v[0].root.as_ref().unwrap().offset, 100);
    }

    #[test]
    fn leaf_entry_rules() {
        for bad in [&[16u64, 17][..], &[0], &[3, 3], &[4, 2]] {
            assert_eq!(read_leaf(&leaf_array(bad), 4).unwrap_err().kind(), ErrorKind::Corrupt, "{bad:?}");
        }
        // More versions than the arity allows: rejected on the count.
        let err = read_leaf(&leaf_array(&[1, 2, 3]), 1).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Limit);
        // Empty list.
        assert_eq!(read_leaf(&[0], 4).unwrap_err().kind(), ErrorKind::Corrupt);
        // File id out of range.
        let mut bytes = leaf_array(&[1]);
        bytes[3] = 1;
        assert_eq!(read_leaf(&bytes, 4).unwrap_err().kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn missing_root_sentinel() {
        let mut bytes = vec![1, 5, 0, 0];
        bytes.extend(varint(u64::MAX));
        bytes.extend(varint(u64::MAX));
        bytes.extend([0, 0, 0]);
        bytes.extend(0u64.to_le_bytes());
        let v = read_leaf(&bytes, 4).unwrap();
        assert!(v[0].is_empty());
        // Non-zero statistics with a missing root are corrupt.
        let mut bad = bytes.clone();
        let stats = bad.len() - 11;
        bad[stats] = 1;
        assert_eq!(read_leaf(&bad, 4).unwrap_err().kind(), ErrorKind::Corrupt);
        // Overflowing references are corrupt.
        let mut bad = vec![1, 5, 0, 0];
        bad.extend(varint(u64::MAX));
        bad.extend(varint(1));
        bad.extend([0, 0, 0]);
        bad.extend(0u64.to_le_bytes());
        assert_eq!(read_leaf(&bad, 4).unwrap_err().kind(), ErrorKind::Corrupt);
    }

    fn manifest_ref(generation: u64, height: u8) -> VersionNodeRef {
        VersionNodeRef {
            generation,
            node: NodeRef { file: DataFile { base_path: vec![], relative_path: vec![] }, offset: 0, length: 0 },
            height,
        }
    }

    #[test]
    fn manifest_version_node_ranges() {
        // format-notes example: arity_log2 2, latest 41: [{32, h2}, {40, h1}].
        let ok = [manifest_ref(32, 2), manifest_ref(40, 1)];
        validate_manifest_version_nodes(&ORIGIN, &ok, 2, 41).unwrap();
        validate_manifest_version_nodes(&ORIGIN, &ok[1..], 2, 41).unwrap();
        validate_manifest_version_nodes(&ORIGIN, &[], 2, 41).unwrap();
        for bad in [[manifest_ref(36, 2), manifest_ref(40, 1)], [manifest_ref(32, 2), manifest_ref(41, 1)]] {
            assert!(validate_manifest_version_nodes(&ORIGIN, &bad, 2, 41).is_err());
        }
        assert!(validate_manifest_version_nodes(&ORIGIN, &[manifest_ref(32, 3)], 2, 41).is_err());
    }

    fn interior_node(arity_log2: u8, height: u8, generations: &[u64], num_generations: u64) -> Bytes {
        let n = generations.len();
        let mut body = vec![arity_log2, height, 1, 3, 0, b'd', b'/', b'v'];
        body.extend(varint(n as u64));
        generations.iter().for_each(|g| body.extend(varint(*g)));
        body.extend(vec![0u8; n]);
        (0..n).for_each(|i| body.extend(varint(i as u64 * 100)));
        (0..n).for_each(|_| body.extend(varint(100)));
        (0..n).for_each(|_| body.extend(varint(num_generations)));
        (0..n).for_each(|_| body.extend(7u64.to_le_bytes()));
        envelope(VERSION_NODE_MAGIC, &body, false)
    }

    #[test]
    fn version_tree_nodes() {
        // arity 4, height 1: children are leaf nodes of 4 generations each.
        let (height, node) =
            decode_version_tree_node(&interior_node(2, 1, &[4, 8], 4), ORIGIN, b"p/", 2, 1 << 20).unwrap();
        assert_eq!(height, 1);
        assert_eq!(node.latest_generation(), 8);
        let VersionTreeNode::Interior(entries) = node else { panic!("not interior") };
        assert_eq!(entries[1].node.file.base_path, b"p/");
        assert_eq!(entries[1].node.offset, 100);
        assert_eq!(entries[0].height, 0);

        for (gens, num) in [(&[4u64, 6][..], 4), (&[4, 4][..], 4), (&[4, 8][..], 5), (&[4, 20][..], 4)] {
            let err = decode_version_tree_node(&interior_node(2, 1, gens, num), ORIGIN, b"", 2, 1 << 20).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::Corrupt, "{gens:?} {num}");
        }
        // Arity mismatch with the manifest, and a height beyond the maximum.
        assert!(decode_version_tree_node(&interior_node(2, 1, &[4], 4), ORIGIN, b"", 3, 1 << 20).is_err());
        assert!(decode_version_tree_node(&interior_node(16, 3, &[4], 4), ORIGIN, b"", 16, 1 << 20).is_err());

        // A leaf node.
        let mut body = vec![2, 0, 1, 3, 0, b'd', b'/', b'v'];
        body.extend(leaf_array(&[5, 6, 7]));
        let (height, node) =
            decode_version_tree_node(&envelope(VERSION_NODE_MAGIC, &body, true), ORIGIN, b"", 2, 1 << 20).unwrap();
        assert_eq!((height, node.latest_generation()), (0, 7));
    }
}
