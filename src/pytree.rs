//! The PyTree data model: nested dicts, lists, tuples and attribute nodes
//! whose leaves are arrays, scalars, strings and `None`.
//!
//! This mirrors what `jax.tree_util` sees. Empty containers are kept as
//! nodes with no children; like Orbax, [`PyTree::leaves`] reports them as
//! leaves, because that is how they are stored.

use std::fmt;

use crate::dtype::{DType, ScalarValue};
use crate::sharded::ShardedArray;

/// An n-dimensional array: dtype, shape and little-endian C-order bytes.
#[derive(Clone, PartialEq)]
pub struct Array {
    dtype: DType,
    shape: Vec<u64>,
    data: Vec<u8>,
}

impl fmt::Debug for Array {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Array({}{:?}, {} bytes)", self.dtype, self.shape, self.data.len())
    }
}

/// Number of elements of a shape, or `None` on overflow.
pub fn num_elements(shape: &[u64]) -> Option<u64> {
    shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d))
}

impl Array {
    /// Wraps bytes in memory form (see [`DType`]); `data.len()` must equal
    /// the element count times the dtype size.
    pub fn new(dtype: DType, shape: Vec<u64>, data: Vec<u8>) -> Result<Self, String> {
        let expected = num_elements(&shape).and_then(|n| n.checked_mul(dtype.size() as u64));
        if expected != Some(data.len() as u64) {
            return Err(format!("{} array of shape {:?} needs {:?} bytes, got {}", dtype, shape, expected, data.len()));
        }
        Ok(Array { dtype, shape, data })
    }

    /// The element type.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The shape (empty for a 0-d array).
    pub fn shape(&self) -> &[u64] {
        &self.shape
    }

    /// The element bytes, little-endian, C order.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Takes the element bytes.
    pub fn into_data(self) -> Vec<u8> {
        self.data
    }

    /// Number of elements.
    pub fn len(&self) -> u64 {
        num_elements(&self.shape).unwrap_or(0)
    }

    /// True if the array has no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Element `i` (flat C-order index) as a wide value.
    pub fn get(&self, i: usize) -> Option<ScalarValue> {
        let size = self.dtype.size();
        self.data.get(i * size..(i + 1) * size).map(|b| self.dtype.scalar(b))
    }
}

/// A scalar leaf: a Python `int`/`float`/`bool`/`complex` or a numpy scalar.
/// Stored as a 0-d array of its dtype (Python `int` → `int64`, `float` →
/// `float64`, `bool` → `bool`).
#[derive(Debug, Clone, PartialEq)]
pub struct Scalar {
    dtype: DType,
    bytes: Vec<u8>,
}

impl Scalar {
    /// A scalar from one element in memory form.
    pub fn from_bytes(dtype: DType, bytes: Vec<u8>) -> Result<Self, String> {
        if bytes.len() != dtype.size() {
            return Err(format!("a {dtype} scalar needs {} bytes, got {}", dtype.size(), bytes.len()));
        }
        Ok(Scalar { dtype, bytes })
    }

    /// The dtype it is stored as.
    pub fn dtype(&self) -> DType {
        self.dtype
    }

    /// The element bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }

    /// The value.
    pub fn value(&self) -> ScalarValue {
        self.dtype.scalar(&self.bytes)
    }
}

impl From<i64> for Scalar {
    fn from(v: i64) -> Self {
        Scalar { dtype: DType::Int64, bytes: v.to_le_bytes().to_vec() }
    }
}

impl From<f64> for Scalar {
    fn from(v: f64) -> Self {
        Scalar { dtype: DType::Float64, bytes: v.to_le_bytes().to_vec() }
    }
}

impl From<bool> for Scalar {
    fn from(v: bool) -> Self {
        Scalar { dtype: DType::Bool, bytes: vec![v as u8] }
    }
}

/// A PyTree node or leaf.
#[derive(Debug, Clone, PartialEq)]
pub enum PyTree {
    /// A dict with string keys, in insertion order (trees read from a
    /// checkpoint have their keys in JAX's sorted flatten order).
    Dict(Vec<(String, PyTree)>),
    /// A list.
    List(Vec<PyTree>),
    /// A tuple.
    Tuple(Vec<PyTree>),
    /// A node with named attributes (named tuple, dataclass, flax struct).
    /// Orbax stores attribute names like dict keys, so trees read back
    /// contain [`PyTree::Dict`] in its place.
    Attrs(Vec<(String, PyTree)>),
    /// `None`.
    None,
    /// An array leaf (`jax.Array` or `np.ndarray`).
    Array(Array),
    /// A scalar leaf.
    Scalar(Scalar),
    /// An array leaf of which this process holds only some shards (a
    /// multi-device `jax.Array`).
    Sharded(ShardedArray),
    /// A string leaf.
    String(String),
}

/// One step of a [`KeyPath`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum KeyEntry {
    /// A dict key (`DictKey`).
    Key(String),
    /// A list or tuple index (`SequenceKey`).
    Index(usize),
    /// An attribute name (`GetAttrKey`).
    Attr(String),
}

/// The path from the root of a tree to one of its nodes.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default, PartialOrd, Ord)]
pub struct KeyPath(pub Vec<KeyEntry>);

impl KeyPath {
    /// The root path.
    pub fn root() -> Self {
        KeyPath(Vec::new())
    }

    /// This path extended by one entry.
    pub fn child(&self, entry: KeyEntry) -> Self {
        let mut v = self.0.clone();
        v.push(entry);
        KeyPath(v)
    }

    /// The entries.
    pub fn entries(&self) -> &[KeyEntry] {
        &self.0
    }

    /// Orbax's parameter name: the entries joined with `.` (indices in
    /// decimal). Used to name arrays inside the checkpoint.
    pub fn param_name(&self) -> String {
        self.0
            .iter()
            .map(|e| match e {
                KeyEntry::Key(k) | KeyEntry::Attr(k) => k.clone(),
                KeyEntry::Index(i) => i.to_string(),
            })
            .collect::<Vec<_>>()
            .join(".")
    }

    /// Parses a JAX `keystr` such as `['params'][0].x` (the inverse of `Display`).
    pub fn parse_keystr(s: &str) -> Result<KeyPath, String> {
        crate::python_repr::parse_keystr(s)
    }
}

impl fmt::Display for KeyPath {
    /// JAX `keystr` form: `['params'][0].x`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for e in &self.0 {
            match e {
                KeyEntry::Key(k) => write!(f, "[{}]", crate::python_repr::repr_str(k))?,
                KeyEntry::Index(i) => write!(f, "[{i}]")?,
                KeyEntry::Attr(a) => write!(f, ".{a}")?,
            }
        }
        Ok(())
    }
}

impl PyTree {
    /// Visits every leaf in flatten order, including empty containers and
    /// `None`, which Orbax stores as leaves.
    pub fn leaves(&self) -> Vec<(KeyPath, &PyTree)> {
        let mut out = Vec::new();
        self.collect_leaves(KeyPath::root(), &mut out);
        out
    }

    fn collect_leaves<'a>(&'a self, path: KeyPath, out: &mut Vec<(KeyPath, &'a PyTree)>) {
        match self {
            PyTree::Dict(entries) if !entries.is_empty() => {
                for (k, v) in entries {
                    v.collect_leaves(path.child(KeyEntry::Key(k.clone())), out);
                }
            }
            PyTree::Attrs(entries) if !entries.is_empty() => {
                for (k, v) in entries {
                    v.collect_leaves(path.child(KeyEntry::Attr(k.clone())), out);
                }
            }
            PyTree::List(items) | PyTree::Tuple(items) if !items.is_empty() => {
                for (i, v) in items.iter().enumerate() {
                    v.collect_leaves(path.child(KeyEntry::Index(i)), out);
                }
            }
            leaf => out.push((path, leaf)),
        }
    }

    /// The node at `path`, if any.
    pub fn get(&self, path: &KeyPath) -> Option<&PyTree> {
        path.0.iter().try_fold(self, |node, entry| match (node, entry) {
            (PyTree::Dict(entries), KeyEntry::Key(k)) | (PyTree::Attrs(entries), KeyEntry::Attr(k)) => {
                entries.iter().find(|(key, _)| key == k).map(|(_, v)| v)
            }
            (PyTree::Dict(entries), KeyEntry::Attr(k)) | (PyTree::Attrs(entries), KeyEntry::Key(k)) => {
                entries.iter().find(|(key, _)| key == k).map(|(_, v)| v)
            }
            (PyTree::List(items) | PyTree::Tuple(items), KeyEntry::Index(i)) => items.get(*i),
            _ => None,
        })
    }

    /// Short name of the node's kind, as in the CLI protocol: `dict`, `list`,
    /// `tuple`, `attrs`, `none`, `array`, `scalar`, `string`; empty containers
    /// are `empty_dict`, `empty_list`, `empty_tuple`.
    pub fn kind_name(&self) -> &'static str {
        match self {
            PyTree::Dict(e) if e.is_empty() => "empty_dict",
            PyTree::Attrs(e) if e.is_empty() => "empty_dict",
            PyTree::List(e) if e.is_empty() => "empty_list",
            PyTree::Tuple(e) if e.is_empty() => "empty_tuple",
            PyTree::Dict(_) => "dict",
            PyTree::Attrs(_) => "attrs",
            PyTree::List(_) => "list",
            PyTree::Tuple(_) => "tuple",
            PyTree::None => "none",
            PyTree::Array(_) => "array",
            PyTree::Sharded(_) => "sharded_array",
            PyTree::Scalar(_) => "scalar",
            PyTree::String(_) => "string",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keystr_matches_jax() {
        let p = KeyPath(vec![
            KeyEntry::Key("params".into()),
            KeyEntry::Index(0),
            KeyEntry::Attr("x".into()),
            KeyEntry::Key("it's".into()),
        ]);
        assert_eq!(p.to_string(), r#"['params'][0].x["it's"]"#);
        assert_eq!(p.param_name(), "params.0.x.it's");
    }

    #[test]
    fn leaves_include_empty_containers() {
        let tree = PyTree::Dict(vec![
            ("a".into(), PyTree::List(vec![])),
            ("b".into(), PyTree::Tuple(vec![PyTree::None, PyTree::Scalar(3i64.into())])),
        ]);
        let leaves: Vec<String> = tree.leaves().iter().map(|(p, l)| format!("{p}={}", l.kind_name())).collect();
        assert_eq!(leaves, ["['a']=empty_list", "['b'][0]=none", "['b'][1]=scalar"]);
    }
}
