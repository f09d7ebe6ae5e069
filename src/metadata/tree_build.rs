//! Rebuilding a nested [`PyTree`] from `(key path, leaf)` pairs, the inverse
//! of [`PyTree::leaves`] for the node kinds Orbax restores.

use std::collections::{BTreeMap, HashMap};

use crate::pytree::{KeyEntry, KeyPath, PyTree};

/// A tree under construction.
enum Node {
    /// Created by a path and not yet given a leaf or children.
    Vacant,
    Leaf(PyTree),
    Dict(Vec<(String, Node)>, HashMap<String, usize>),
    List(BTreeMap<usize, Node>),
}

fn describe(path: &[KeyEntry]) -> String {
    if path.is_empty() {
        "the root".to_string()
    } else {
        KeyPath(path.to_vec()).to_string()
    }
}

/// Rebuilds the tree from its leaves.
///
/// [`KeyEntry::Index`] levels make [`PyTree::List`]s (indices must be dense,
/// `0..n`), [`KeyEntry::Key`] and [`KeyEntry::Attr`] levels make
/// [`PyTree::Dict`]s with keys in first-seen order; a leaf at the empty path
/// is the whole tree, and no leaves at all give an empty dict. Conflicts —
/// a path that is both a leaf and a node, the same leaf twice, a node with
/// both index and key children, missing indices — are reported with the
/// JAX keystr of the offending node.
///
/// ```
/// use orbax::metadata::unflatten;
/// use orbax::{KeyEntry, KeyPath, PyTree};
/// let leaf = |p: Vec<KeyEntry>| (KeyPath(p), PyTree::None);
/// let tree = unflatten(vec![
///     leaf(vec![KeyEntry::Key("a".into()), KeyEntry::Index(0)]),
///     leaf(vec![KeyEntry::Key("a".into()), KeyEntry::Index(1)]),
/// ])
/// .unwrap();
/// assert_eq!(tree, PyTree::Dict(vec![("a".into(), PyTree::List(vec![PyTree::None, PyTree::None]))]));
/// ```
pub fn unflatten(leaves: Vec<(KeyPath, PyTree)>) -> Result<PyTree, String> {
    let mut root = Node::Vacant;
    for (path, value) in leaves {
        let entries = path.entries();
        let mut node = &mut root;
        for (depth, entry) in entries.iter().enumerate() {
            if matches!(node, Node::Vacant) {
                *node = match entry {
                    KeyEntry::Index(_) => Node::List(BTreeMap::new()),
                    KeyEntry::Key(_) | KeyEntry::Attr(_) => Node::Dict(Vec::new(), HashMap::new()),
                };
            }
            node = match (node, entry) {
                (Node::List(items), KeyEntry::Index(i)) => items.entry(*i).or_insert(Node::Vacant),
                (Node::Dict(items, index), KeyEntry::Key(k) | KeyEntry::Attr(k)) => {
                    let pos = *index.entry(k.clone()).or_insert_with(|| {
                        items.push((k.clone(), Node::Vacant));
                        items.len() - 1
                    });
                    &mut items[pos].1
                }
                (Node::Leaf(_), _) => {
                    return Err(format!(
                        "{} is both a leaf and a node (leaf {path} is under it)",
                        describe(&entries[..depth])
                    ))
                }
                _ => return Err(format!("{} has both index and key children", describe(&entries[..depth]))),
            };
        }
        match node {
            Node::Vacant => *node = Node::Leaf(value),
            Node::Leaf(_) => return Err(format!("{} appears twice", describe(entries))),
            _ => return Err(format!("{} is both a leaf and a node", describe(entries))),
        }
    }
    finish(root, &mut Vec::new())
}

fn finish(node: Node, path: &mut Vec<KeyEntry>) -> Result<PyTree, String> {
    match node {
        Node::Vacant => Ok(PyTree::Dict(Vec::new())),
        Node::Leaf(value) => Ok(value),
        Node::Dict(items, _) => {
            let mut out = Vec::with_capacity(items.len());
            for (key, child) in items {
                path.push(KeyEntry::Key(key.clone()));
                let value = finish(child, path)?;
                path.pop();
                out.push((key, value));
            }
            Ok(PyTree::Dict(out))
        }
        Node::List(items) => {
            let n = items.len();
            let mut out = Vec::with_capacity(n);
            for (expected, (i, child)) in items.into_iter().enumerate() {
                if i != expected {
                    return Err(format!(
                        "{} has list indices with gaps: index {expected} is missing ({n} items)",
                        describe(path)
                    ));
                }
                path.push(KeyEntry::Index(i));
                out.push(finish(child, path)?);
                path.pop();
            }
            Ok(PyTree::List(out))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(k: &str) -> KeyEntry {
        KeyEntry::Key(k.into())
    }

    fn leaf(path: Vec<KeyEntry>, v: i64) -> (KeyPath, PyTree) {
        (KeyPath(path), PyTree::Scalar(v.into()))
    }

    fn s(v: i64) -> PyTree {
        PyTree::Scalar(v.into())
    }

    #[test]
    fn nested_dicts_and_lists() {
        let tree = unflatten(vec![
            leaf(vec![key("b"), KeyEntry::Index(1), key("x")], 1),
            leaf(vec![key("b"), KeyEntry::Index(0)], 0),
            leaf(vec![key("a")], 2),
            leaf(vec![KeyEntry::Attr("c".into()), key("d")], 3),
        ])
        .unwrap();
        assert_eq!(
            tree,
            PyTree::Dict(vec![
                ("b".into(), PyTree::List(vec![s(0), PyTree::Dict(vec![("x".into(), s(1))])])),
                ("a".into(), s(2)),
                ("c".into(), PyTree::Dict(vec![("d".into(), s(3))])),
            ])
        );
    }

    #[test]
    fn root_leaf_and_empty() {
        assert_eq!(unflatten(vec![leaf(vec![], 7)]).unwrap(), s(7));
        assert_eq!(unflatten(vec![]).unwrap(), PyTree::Dict(vec![]));
        let err = unflatten(vec![leaf(vec![], 7), leaf(vec![key("a")], 1)]).unwrap_err();
        assert!(err.contains("the root is both a leaf and a node"), "{err}");
        let err = unflatten(vec![leaf(vec![key("a")], 1), leaf(vec![], 7)]).unwrap_err();
        assert!(err.contains("the root is both a leaf and a node"), "{err}");
    }

    #[test]
    fn conflicts_name_the_keypath() {
        let err = unflatten(vec![leaf(vec![key("a")], 1), leaf(vec![key("a"), key("b")], 2)]).unwrap_err();
        assert!(err.starts_with("['a'] is both a leaf and a node"), "{err}");
        let err = unflatten(vec![leaf(vec![key("a"), key("b")], 2), leaf(vec![key("a")], 1)]).unwrap_err();
        assert!(err.starts_with("['a'] is both a leaf and a node"), "{err}");
        let err = unflatten(vec![leaf(vec![key("a"), KeyEntry::Index(0)], 1), leaf(vec![key("a"), key("x")], 2)])
            .unwrap_err();
        assert_eq!(err, "['a'] has both index and key children");
        let err = unflatten(vec![leaf(vec![key("a"), key("x")], 1), leaf(vec![key("a"), KeyEntry::Index(0)], 2)])
            .unwrap_err();
        assert_eq!(err, "['a'] has both index and key children");
        let err = unflatten(vec![leaf(vec![key("a")], 1), leaf(vec![key("a")], 2)]).unwrap_err();
        assert_eq!(err, "['a'] appears twice");
    }

    #[test]
    fn list_indices_must_be_dense() {
        let err =
            unflatten(vec![leaf(vec![key("l"), KeyEntry::Index(0)], 0), leaf(vec![key("l"), KeyEntry::Index(2)], 2)])
                .unwrap_err();
        assert_eq!(err, "['l'] has list indices with gaps: index 1 is missing (2 items)");
        // Out-of-order indices are sorted.
        let tree = unflatten(vec![leaf(vec![KeyEntry::Index(1)], 1), leaf(vec![KeyEntry::Index(0)], 0)]).unwrap();
        assert_eq!(tree, PyTree::List(vec![s(0), s(1)]));
    }
}
