//! The legacy msgpack `<item>/checkpoint` file of Orbax ≤ 0.5.20 (see
//! `format-spec/04-orbax-metadata.md` §8).
//!
//! The file is the whole PyTree as one msgpack value: dicts are maps,
//! lists are arrays, and every leaf is either a placeholder string naming
//! where the value is stored, or — for `SaveArgs(aggregate=True)` leaves —
//! the value itself, using Flax's ext types for numpy values.
//!
//! Every length comes from untrusted bytes: `rmpv` never preallocates more
//! than the remaining input, nesting is bounded by [`MAX_DEPTH`], and each
//! ndarray's byte count must equal its shape × dtype size before anything is
//! copied.

use rmpv::decode::{read_value_ref_with_max_depth, Error as DecodeError};
use rmpv::ValueRef;

use super::MetadataError;
use crate::dtype::DType;
use crate::pytree::{num_elements, Array, KeyEntry, KeyPath, PyTree, Scalar};

/// Largest `checkpoint` file accepted (`07-reader-safety.md` §2.4).
pub const MAX_MSGPACK_BYTES: u64 = 4 << 30;

/// Deepest nesting of maps, arrays and ext payloads accepted.
pub const MAX_DEPTH: usize = 128;

/// Prefix of a leaf whose value is stored outside the msgpack file.
const PLACEHOLDER_PREFIX: &str = "PLACEHOLDER://";
/// The older prefix with the same meaning: Orbax's `name_from_leaf_placeholder`
/// strips either one to get the param name. Despite the name, the value is
/// *not* in the msgpack file.
const AGGREGATED_PREFIX: &str = "AGGREGATED://";

/// Key marking a `{"__msgpack_chunked_array__": true, "shape": …, "chunks": …}`
/// map: an array over 2^30 bytes split into 1-D pieces.
const CHUNKED_ARRAY_KEY: &str = "__msgpack_chunked_array__";

/// Flax's msgpack ext type codes (`msgpack_utils._MsgpackExtType`).
const EXT_NDARRAY: i8 = 1;
const EXT_COMPLEX: i8 = 2;
const EXT_NPSCALAR: i8 = 3;
const EXT_TUPLE: i8 = 4;

/// The parsed msgpack `checkpoint` file, flattened.
#[derive(Debug, Clone, PartialEq)]
pub struct LegacyCheckpoint {
    /// Every leaf with its path, in file order (maps → [`KeyEntry::Key`],
    /// arrays → [`KeyEntry::Index`]).
    pub leaves: Vec<(KeyPath, LegacyLeaf)>,
}

/// One leaf of a [`LegacyCheckpoint`].
#[derive(Debug, Clone, PartialEq)]
pub enum LegacyLeaf {
    /// `"PLACEHOLDER://<param name>"` (or the older `"AGGREGATED://<param name>"`):
    /// the value is in the array store, in `_strings.json`, or — for empty
    /// values in 0.5.x files — nowhere (then `_METADATA` says which).
    Placeholder(String),
    /// A value stored in the file itself (an aggregated leaf).
    Value(PyTree),
    /// msgpack nil: `None` (0.4.x files store it literally).
    None,
    /// An empty map: `{}`.
    EmptyDict,
    /// An empty array: `[]`.
    EmptyList,
}

impl LegacyCheckpoint {
    /// Parses the bytes of a msgpack `checkpoint` file; `file` names it in errors.
    ///
    /// ```
    /// use orbax::metadata::{LegacyCheckpoint, LegacyLeaf};
    /// // {"w": "PLACEHOLDER://w", "n": nil}
    /// let bytes = b"\x82\xa1w\xafPLACEHOLDER://w\xa1n\xc0";
    /// let ckpt = LegacyCheckpoint::parse(bytes, "checkpoint").unwrap();
    /// assert_eq!(ckpt.leaves[0].1, LegacyLeaf::Placeholder("w".into()));
    /// assert_eq!(ckpt.leaves[1].1, LegacyLeaf::None);
    /// ```
    pub fn parse(bytes: &[u8], file: &str) -> Result<LegacyCheckpoint, MetadataError> {
        if bytes.len() as u64 > MAX_MSGPACK_BYTES {
            return Err(MetadataError::limit(
                file,
                format!(
                    "{} bytes is more than the {MAX_MSGPACK_BYTES}-byte limit for the msgpack checkpoint file",
                    bytes.len()
                ),
            ));
        }
        let reader = Reader { file };
        let root = reader.decode(bytes, 0)?;
        let mut leaves = Vec::new();
        reader.walk(root, &mut Vec::new(), &mut leaves)?;
        Ok(LegacyCheckpoint { leaves })
    }
}

struct Reader<'f> {
    file: &'f str,
}

impl Reader<'_> {
    fn invalid(&self, path: &[KeyEntry], what: impl std::fmt::Display) -> MetadataError {
        MetadataError::invalid(self.file, format!("at {}: {what}", describe_path(path)))
    }

    fn unsupported(&self, path: &[KeyEntry], what: impl std::fmt::Display) -> MetadataError {
        MetadataError::Unsupported { file: self.file.to_string(), what: format!("at {}: {what}", describe_path(path)) }
    }

    fn check_depth(&self, depth: usize) -> Result<(), MetadataError> {
        if depth > MAX_DEPTH {
            return Err(MetadataError::limit(self.file, format!("msgpack nesting deeper than {MAX_DEPTH} levels")));
        }
        Ok(())
    }

    /// Decodes exactly one msgpack value filling `bytes` (the file or an ext
    /// payload found at nesting `depth`).
    fn decode<'a>(&self, bytes: &'a [u8], depth: usize) -> Result<ValueRef<'a>, MetadataError> {
        self.check_depth(depth)?;
        let mut rest = bytes;
        // rmpv counts more than one step per container level, so its budget
        // is only a backstop that keeps recursion shallow on hostile input;
        // `walk` and `value` enforce the exact per-level limit.
        let budget = 4 * (MAX_DEPTH - depth) + 8;
        let value = read_value_ref_with_max_depth(&mut rest, budget).map_err(|e| match e {
            DecodeError::DepthLimitExceeded => {
                MetadataError::limit(self.file, format!("msgpack nesting deeper than {MAX_DEPTH} levels"))
            }
            e => MetadataError::Msgpack { file: self.file.to_string(), what: e.to_string() },
        })?;
        if !rest.is_empty() {
            return Err(MetadataError::Msgpack {
                file: self.file.to_string(),
                what: format!("{} trailing bytes after the value", rest.len()),
            });
        }
        Ok(value)
    }

    /// Flattens the tree part of the file into leaves.
    fn walk(
        &self,
        value: ValueRef<'_>,
        path: &mut Vec<KeyEntry>,
        out: &mut Vec<(KeyPath, LegacyLeaf)>,
    ) -> Result<(), MetadataError> {
        self.check_depth(path.len())?;
        let leaf = match value {
            ValueRef::Map(entries) if entries.is_empty() => LegacyLeaf::EmptyDict,
            ValueRef::Map(entries) if is_chunked_array(&entries) => {
                LegacyLeaf::Value(PyTree::Array(self.unchunk(entries, path)?))
            }
            ValueRef::Map(entries) => {
                for (key, child) in entries {
                    path.push(KeyEntry::Key(self.map_key(&key, path)?));
                    self.walk(child, path, out)?;
                    path.pop();
                }
                return Ok(());
            }
            ValueRef::Array(items) if items.is_empty() => LegacyLeaf::EmptyList,
            ValueRef::Array(items) => {
                for (i, child) in items.into_iter().enumerate() {
                    path.push(KeyEntry::Index(i));
                    self.walk(child, path, out)?;
                    path.pop();
                }
                return Ok(());
            }
            ValueRef::Nil => LegacyLeaf::None,
            ValueRef::String(s) => {
                let s = s.into_str().ok_or_else(|| self.invalid(path, "string is not valid UTF-8"))?;
                match s.strip_prefix(PLACEHOLDER_PREFIX).or_else(|| s.strip_prefix(AGGREGATED_PREFIX)) {
                    Some(name) => LegacyLeaf::Placeholder(name.to_string()),
                    None => LegacyLeaf::Value(PyTree::String(s.to_string())),
                }
            }
            other => LegacyLeaf::Value(self.value(other, path, path.len())?),
        };
        out.push((KeyPath(path.clone()), leaf));
        Ok(())
    }

    fn map_key(&self, key: &ValueRef<'_>, path: &[KeyEntry]) -> Result<String, MetadataError> {
        match key {
            ValueRef::String(s) => {
                s.as_str().map(str::to_string).ok_or_else(|| self.invalid(path, "map key is not valid UTF-8"))
            }
            ValueRef::Integer(i) => Ok(i.to_string()),
            other => Err(self.invalid(path, format!("map key {} is not a string", kind(other)))),
        }
    }

    /// An aggregated value (and, inside tuples, containers of them).
    fn value(&self, value: ValueRef<'_>, path: &[KeyEntry], depth: usize) -> Result<PyTree, MetadataError> {
        self.check_depth(depth)?;
        Ok(match value {
            ValueRef::Nil => PyTree::None,
            ValueRef::Boolean(b) => PyTree::Scalar(b.into()),
            ValueRef::Integer(i) => match i.as_i64() {
                Some(v) => PyTree::Scalar(v.into()),
                None => return Err(self.unsupported(path, format!("integer {i} does not fit in int64"))),
            },
            ValueRef::F32(f) => PyTree::Scalar(f64::from(f).into()),
            ValueRef::F64(f) => PyTree::Scalar(f.into()),
            ValueRef::String(s) => {
                PyTree::String(s.into_str().ok_or_else(|| self.invalid(path, "string is not valid UTF-8"))?.to_string())
            }
            ValueRef::Binary(b) => return Err(self.unsupported(path, format!("a {}-byte bytes value", b.len()))),
            ValueRef::Array(items) => {
                PyTree::List(items.into_iter().map(|v| self.value(v, path, depth + 1)).collect::<Result<_, _>>()?)
            }
            ValueRef::Map(entries) => PyTree::Dict(
                entries
                    .into_iter()
                    .map(|(k, v)| Ok((self.map_key(&k, path)?, self.value(v, path, depth + 1)?)))
                    .collect::<Result<_, MetadataError>>()?,
            ),
            ValueRef::Ext(code, data) => self.ext(code, data, path, depth)?,
        })
    }

    fn ext(&self, code: i8, data: &[u8], path: &[KeyEntry], depth: usize) -> Result<PyTree, MetadataError> {
        match code {
            EXT_NDARRAY => Ok(PyTree::Array(self.ndarray(data, path, depth)?)),
            EXT_NPSCALAR => {
                let array = self.ndarray(data, path, depth)?;
                if !array.shape().is_empty() {
                    return Err(self.invalid(path, format!("numpy scalar with shape {:?}", array.shape())));
                }
                let dtype = array.dtype();
                let scalar = Scalar::from_bytes(dtype, array.into_data()).map_err(|e| self.invalid(path, e))?;
                Ok(PyTree::Scalar(scalar))
            }
            EXT_COMPLEX => {
                let parts = match self.decode(data, depth + 1)? {
                    ValueRef::Array(parts) if parts.len() == 2 => parts,
                    other => {
                        return Err(self.invalid(path, format!("complex payload {} is not [real, imag]", kind(&other))))
                    }
                };
                let mut bytes = Vec::with_capacity(16);
                for part in &parts {
                    let v = match part {
                        ValueRef::F64(f) => *f,
                        ValueRef::F32(f) => f64::from(*f),
                        ValueRef::Integer(i) => match i.as_f64() {
                            Some(f) => f,
                            None => return Err(self.invalid(path, format!("complex part {i} is not a number"))),
                        },
                        other => {
                            return Err(self.invalid(path, format!("complex part {} is not a number", kind(other))))
                        }
                    };
                    bytes.extend_from_slice(&v.to_le_bytes());
                }
                let scalar = Scalar::from_bytes(DType::Complex128, bytes).map_err(|e| self.invalid(path, e))?;
                Ok(PyTree::Scalar(scalar))
            }
            EXT_TUPLE => match self.decode(data, depth + 1)? {
                ValueRef::Array(items) => Ok(PyTree::Tuple(
                    items.into_iter().map(|v| self.value(v, path, depth + 1)).collect::<Result<_, _>>()?,
                )),
                other => Err(self.invalid(path, format!("tuple payload {} is not an array", kind(&other)))),
            },
            other => Err(self.invalid(path, format!("unknown msgpack ext type {other}"))),
        }
    }

    /// An ext-1 payload: `[shape, dtype name, C-order bytes]`.
    fn ndarray(&self, data: &[u8], path: &[KeyEntry], depth: usize) -> Result<Array, MetadataError> {
        let (shape, dtype, bytes) = self.ndarray_parts(data, path, depth)?;
        let mut bytes = bytes.to_vec();
        dtype.normalize_stored(&mut bytes);
        Array::new(dtype, shape, bytes).map_err(|e| self.invalid(path, e))
    }

    /// Validates an ext-1 payload without copying its data.
    fn ndarray_parts<'a>(
        &self,
        data: &'a [u8],
        path: &[KeyEntry],
        depth: usize,
    ) -> Result<(Vec<u64>, DType, &'a [u8]), MetadataError> {
        let parts = match self.decode(data, depth + 1)? {
            ValueRef::Array(parts) if parts.len() == 3 => parts,
            other => {
                return Err(self.invalid(path, format!("ndarray payload {} is not [shape, dtype, data]", kind(&other))))
            }
        };
        let shape = match &parts[0] {
            ValueRef::Array(dims) => dims
                .iter()
                .map(|d| match d {
                    ValueRef::Integer(i) => {
                        i.as_u64().ok_or_else(|| self.invalid(path, format!("ndarray dimension {i}")))
                    }
                    other => Err(self.invalid(path, format!("ndarray dimension {} is not an integer", kind(other)))),
                })
                .collect::<Result<Vec<u64>, _>>()?,
            other => return Err(self.invalid(path, format!("ndarray shape {} is not an array", kind(other)))),
        };
        let name = match &parts[1] {
            ValueRef::String(s) => s.as_str(),
            ValueRef::Binary(b) => std::str::from_utf8(b).ok(),
            _ => None,
        }
        .ok_or_else(|| self.invalid(path, format!("ndarray dtype {} is not a name", kind(&parts[1]))))?;
        let dtype = DType::from_name(name).ok_or_else(|| self.unsupported(path, format!("ndarray dtype {name:?}")))?;
        let bytes = match parts[2] {
            ValueRef::Binary(b) => b,
            ref other => return Err(self.invalid(path, format!("ndarray data {} is not binary", kind(other)))),
        };
        let expected = num_elements(&shape).and_then(|n| n.checked_mul(dtype.size() as u64));
        if expected != Some(bytes.len() as u64) {
            return Err(self.invalid(
                path,
                format!("{dtype} ndarray of shape {shape:?} needs {expected:?} bytes, the payload has {}", bytes.len()),
            ));
        }
        Ok((shape, dtype, bytes))
    }

    /// Reassembles `{"__msgpack_chunked_array__": true, "shape": {"0": d0, …}, "chunks": {"0": ext1, …}}`.
    fn unchunk(&self, entries: Vec<(ValueRef<'_>, ValueRef<'_>)>, path: &[KeyEntry]) -> Result<Array, MetadataError> {
        let member = |name: &str| {
            entries
                .iter()
                .find(|(k, _)| str_of(k) == Some(name))
                .map(|(_, v)| v)
                .ok_or_else(|| self.invalid(path, format!("chunked array has no {name:?}")))
        };
        let shape = self
            .indexed(member("shape")?, "shape", path)?
            .into_iter()
            .map(|d| match d {
                ValueRef::Integer(i) => {
                    i.as_u64().ok_or_else(|| self.invalid(path, format!("chunked array dimension {i}")))
                }
                other => Err(self.invalid(path, format!("chunked array dimension {} is not an integer", kind(other)))),
            })
            .collect::<Result<Vec<u64>, _>>()?;
        let mut dtype = None;
        let mut data = Vec::new();
        for chunk in self.indexed(member("chunks")?, "chunks", path)? {
            let ValueRef::Ext(EXT_NDARRAY, payload) = chunk else {
                return Err(self.invalid(path, format!("chunked array chunk {} is not an ndarray", kind(chunk))));
            };
            let (chunk_shape, chunk_dtype, bytes) = self.ndarray_parts(payload, path, path.len() + 1)?;
            if chunk_shape.len() != 1 || dtype.is_some_and(|d| d != chunk_dtype) {
                return Err(
                    self.invalid(path, format!("chunked array chunk of {chunk_dtype}{chunk_shape:?} does not fit"))
                );
            }
            dtype = Some(chunk_dtype);
            data.extend_from_slice(bytes);
        }
        let dtype = dtype.ok_or_else(|| self.invalid(path, "chunked array has no chunks"))?;
        dtype.normalize_stored(&mut data);
        Array::new(dtype, shape, data).map_err(|e| self.invalid(path, format!("chunked array: {e}")))
    }

    /// The values of a `{"0": v0, "1": v1, …}` map (Flax's tuple-as-dict), in index order.
    fn indexed<'v, 'a>(
        &self,
        map: &'v ValueRef<'a>,
        what: &str,
        path: &[KeyEntry],
    ) -> Result<Vec<&'v ValueRef<'a>>, MetadataError> {
        let ValueRef::Map(entries) = map else {
            return Err(self.invalid(path, format!("chunked array {what} is not a map")));
        };
        (0..entries.len())
            .map(|i| {
                let key = i.to_string();
                entries
                    .iter()
                    .find(|(k, _)| str_of(k) == Some(key.as_str()))
                    .map(|(_, v)| v)
                    .ok_or_else(|| self.invalid(path, format!("chunked array {what} has no entry {key:?}")))
            })
            .collect()
    }
}

/// JAX keystr of a path, or "the root".
fn describe_path(path: &[KeyEntry]) -> String {
    if path.is_empty() {
        "the root".to_string()
    } else {
        KeyPath(path.to_vec()).to_string()
    }
}

fn str_of<'v>(v: &'v ValueRef<'_>) -> Option<&'v str> {
    match v {
        ValueRef::String(s) => s.as_str(),
        _ => None,
    }
}

fn is_chunked_array(entries: &[(ValueRef<'_>, ValueRef<'_>)]) -> bool {
    entries.iter().any(|(k, _)| str_of(k) == Some(CHUNKED_ARRAY_KEY))
}

/// A short name of a msgpack value's type (payloads can be large; never print them).
fn kind(v: &ValueRef<'_>) -> &'static str {
    match v {
        ValueRef::Nil => "nil",
        ValueRef::Boolean(_) => "a boolean",
        ValueRef::Integer(_) => "an integer",
        ValueRef::F32(_) | ValueRef::F64(_) => "a float",
        ValueRef::String(_) => "a string",
        ValueRef::Binary(_) => "binary",
        ValueRef::Array(_) => "an array",
        ValueRef::Map(_) => "a map",
        ValueRef::Ext(..) => "an ext value",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use rmpv::Value;

    fn pack(v: &Value) -> Vec<u8> {
        let mut buf = Vec::new();
        rmpv::encode::write_value(&mut buf, v).unwrap();
        buf
    }

    fn ndarray_payload(shape: &[u64], dtype: &str, data: &[u8]) -> Vec<u8> {
        pack(&Value::Array(vec![
            Value::Array(shape.iter().map(|&d| Value::from(d)).collect()),
            Value::from(dtype),
            Value::Binary(data.to_vec()),
        ]))
    }

    fn ndarray(shape: &[u64], dtype: &str, data: &[u8]) -> Value {
        Value::Ext(EXT_NDARRAY, ndarray_payload(shape, dtype, data))
    }

    fn map(entries: Vec<(&str, Value)>) -> Value {
        Value::Map(entries.into_iter().map(|(k, v)| (Value::from(k), v)).collect())
    }

    fn parse(v: &Value) -> Result<LegacyCheckpoint, MetadataError> {
        LegacyCheckpoint::parse(&pack(v), "item/checkpoint")
    }

    fn path(entries: &[&str]) -> KeyPath {
        KeyPath(
            entries.iter().map(|e| e.parse().map(KeyEntry::Index).unwrap_or(KeyEntry::Key(e.to_string()))).collect(),
        )
    }

    fn i32s(v: &[i32]) -> Vec<u8> {
        v.iter().flat_map(|x| x.to_le_bytes()).collect()
    }

    #[test]
    fn tree_placeholders_and_empty_values() {
        let ckpt = parse(&map(vec![
            ("arr", Value::from("PLACEHOLDER://arr")),
            ("ed", Value::Map(vec![])),
            ("el", Value::Array(vec![])),
            (
                "nested",
                map(vec![(
                    "l",
                    Value::Array(vec![Value::from("PLACEHOLDER://nested.l.0"), Value::from("AGGREGATED://old")]),
                )]),
            ),
            ("none", Value::Nil),
            ("s", Value::from("just a string")),
        ]))
        .unwrap();
        assert_eq!(
            ckpt.leaves,
            vec![
                (path(&["arr"]), LegacyLeaf::Placeholder("arr".into())),
                (path(&["ed"]), LegacyLeaf::EmptyDict),
                (path(&["el"]), LegacyLeaf::EmptyList),
                (path(&["nested", "l", "0"]), LegacyLeaf::Placeholder("nested.l.0".into())),
                (path(&["nested", "l", "1"]), LegacyLeaf::Placeholder("old".into())),
                (path(&["none"]), LegacyLeaf::None),
                (path(&["s"]), LegacyLeaf::Value(PyTree::String("just a string".into()))),
            ]
        );
    }

    #[test]
    fn integer_map_keys_and_root_leaf() {
        let v = Value::Map(vec![(Value::from(3), Value::from("PLACEHOLDER://3"))]);
        let key3 = KeyPath(vec![KeyEntry::Key("3".into())]);
        assert_eq!(parse(&v).unwrap().leaves, vec![(key3, LegacyLeaf::Placeholder("3".into()))]);
        let root = parse(&Value::from("PLACEHOLDER://")).unwrap();
        assert_eq!(root.leaves, vec![(KeyPath::root(), LegacyLeaf::Placeholder(String::new()))]);
    }

    #[test]
    fn aggregated_values() {
        let ckpt = parse(&map(vec![
            ("agg_arr", ndarray(&[3, 2], "int32", &i32s(&[0, 1, 2, 3, 4, 5]))),
            ("agg_f", Value::F64(0.5)),
            ("agg_i", Value::from(11)),
            ("agg_b", Value::Boolean(true)),
            ("agg_np", Value::Ext(EXT_NPSCALAR, ndarray_payload(&[], "float32", &3.5f32.to_le_bytes()))),
            ("agg_c", Value::Ext(EXT_COMPLEX, pack(&Value::Array(vec![Value::F64(1.0), Value::F64(-2.0)])))),
            (
                "agg_t",
                Value::Ext(
                    EXT_TUPLE,
                    pack(&Value::Array(vec![Value::from(1), ndarray(&[1], "bfloat16", &[0x80, 0x3f])])),
                ),
            ),
        ]))
        .unwrap();
        let values: Vec<&PyTree> = ckpt
            .leaves
            .iter()
            .map(|(_, l)| match l {
                LegacyLeaf::Value(v) => v,
                other => panic!("{other:?}"),
            })
            .collect();
        let PyTree::Array(a) = values[0] else { panic!("{:?}", values[0]) };
        assert_eq!((a.dtype(), a.shape(), a.data()), (DType::Int32, &[3u64, 2][..], &i32s(&[0, 1, 2, 3, 4, 5])[..]));
        assert_eq!(values[1], &PyTree::Scalar(0.5f64.into()));
        assert_eq!(values[2], &PyTree::Scalar(11i64.into()));
        assert_eq!(values[3], &PyTree::Scalar(true.into()));
        assert_eq!(
            values[4],
            &PyTree::Scalar(Scalar::from_bytes(DType::Float32, 3.5f32.to_le_bytes().to_vec()).unwrap())
        );
        let PyTree::Scalar(c) = values[5] else { panic!() };
        assert_eq!(c.value(), crate::ScalarValue::Complex(1.0, -2.0));
        let PyTree::Tuple(t) = values[6] else { panic!("{:?}", values[6]) };
        assert_eq!(t[0], PyTree::Scalar(1i64.into()));
        assert!(matches!(&t[1], PyTree::Array(a) if a.dtype() == DType::BFloat16 && a.shape() == [1]));
    }

    #[test]
    fn chunked_arrays_are_reassembled() {
        let chunked = map(vec![
            (CHUNKED_ARRAY_KEY, Value::Boolean(true)),
            ("shape", map(vec![("0", Value::from(2)), ("1", Value::from(3))])),
            (
                "chunks",
                map(vec![
                    ("1", ndarray(&[2], "int32", &i32s(&[4, 5]))),
                    ("0", ndarray(&[4], "int32", &i32s(&[0, 1, 2, 3]))),
                ]),
            ),
        ]);
        let ckpt = parse(&map(vec![("big", chunked.clone())])).unwrap();
        let LegacyLeaf::Value(PyTree::Array(a)) = &ckpt.leaves[0].1 else { panic!("{:?}", ckpt.leaves) };
        assert_eq!(a.shape(), [2, 3]);
        assert_eq!(a.data(), i32s(&[0, 1, 2, 3, 4, 5]));
        // At the root too.
        assert!(matches!(parse(&chunked).unwrap().leaves[0].1, LegacyLeaf::Value(PyTree::Array(_))));
        // A chunk of another dtype, a missing chunk, a wrong total.
        let bad = |chunks: Value, shape: Value| {
            parse(&map(vec![(CHUNKED_ARRAY_KEY, Value::Boolean(true)), ("shape", shape), ("chunks", chunks)]))
                .unwrap_err()
        };
        let shape = || map(vec![("0", Value::from(3))]);
        let e =
            bad(map(vec![("0", ndarray(&[1], "int32", &i32s(&[1]))), ("1", ndarray(&[2], "int16", &[0; 4]))]), shape());
        assert!(e.to_string().contains("does not fit"), "{e}");
        let e =
            bad(map(vec![("0", ndarray(&[1], "int32", &i32s(&[1]))), ("2", ndarray(&[2], "int32", &[0; 8]))]), shape());
        assert!(e.to_string().contains("chunks has no entry \"1\""), "{e}");
        let e = bad(map(vec![("0", ndarray(&[2], "int32", &[0; 8]))]), shape());
        assert!(e.to_string().contains("chunked array:"), "{e}");
        let e = bad(map(vec![]), shape());
        assert!(e.to_string().contains("no chunks"), "{e}");
        let e = bad(map(vec![("0", Value::from(1))]), shape());
        assert!(e.to_string().contains("is not an ndarray"), "{e}");
    }

    #[test]
    fn malformed_ndarrays() {
        let cases: Vec<(Value, &str, ErrorKind)> = vec![
            (ndarray(&[3], "int32", &[0; 8]), "needs Some(12) bytes, the payload has 8", ErrorKind::Corrupt),
            (ndarray(&[u64::MAX, 2], "int32", &[]), "needs None bytes", ErrorKind::Corrupt),
            (ndarray(&[1], "object", &[0; 8]), "ndarray dtype \"object\"", ErrorKind::Unsupported),
            (
                Value::Ext(EXT_NDARRAY, pack(&Value::Array(vec![Value::Array(vec![]), Value::from("int8")]))),
                "not [shape, dtype, data]",
                ErrorKind::Corrupt,
            ),
            (Value::Ext(EXT_NDARRAY, vec![0x93, 0x91]), "invalid msgpack", ErrorKind::Corrupt),
            (
                Value::Ext(EXT_NDARRAY, [ndarray_payload(&[], "int8", &[1]), vec![0]].concat()),
                "trailing bytes",
                ErrorKind::Corrupt,
            ),
            (
                Value::Ext(
                    EXT_NDARRAY,
                    pack(&Value::Array(vec![Value::from(3), Value::from("int8"), Value::Binary(vec![])])),
                ),
                "shape an integer is not an array",
                ErrorKind::Corrupt,
            ),
            (
                Value::Ext(
                    EXT_NDARRAY,
                    pack(&Value::Array(vec![
                        Value::Array(vec![Value::from(-1)]),
                        Value::from("int8"),
                        Value::Binary(vec![]),
                    ])),
                ),
                "ndarray dimension -1",
                ErrorKind::Corrupt,
            ),
            (
                Value::Ext(
                    EXT_NDARRAY,
                    pack(&Value::Array(vec![Value::Array(vec![]), Value::from(1), Value::Binary(vec![1])])),
                ),
                "is not a name",
                ErrorKind::Corrupt,
            ),
            (
                Value::Ext(
                    EXT_NDARRAY,
                    pack(&Value::Array(vec![Value::Array(vec![]), Value::from("int8"), Value::from("x")])),
                ),
                "data a string is not binary",
                ErrorKind::Corrupt,
            ),
            (
                Value::Ext(EXT_NPSCALAR, ndarray_payload(&[1], "int8", &[1])),
                "numpy scalar with shape [1]",
                ErrorKind::Corrupt,
            ),
            (
                Value::Ext(EXT_COMPLEX, pack(&Value::Array(vec![Value::F64(1.0)]))),
                "complex payload",
                ErrorKind::Corrupt,
            ),
            (
                Value::Ext(EXT_COMPLEX, pack(&Value::Array(vec![Value::F64(1.0), Value::from("i")]))),
                "complex part a string",
                ErrorKind::Corrupt,
            ),
            (Value::Ext(EXT_TUPLE, pack(&Value::from(1))), "tuple payload an integer", ErrorKind::Corrupt),
            (Value::Ext(9, vec![]), "unknown msgpack ext type 9", ErrorKind::Corrupt),
            (Value::Binary(vec![1, 2]), "a 2-byte bytes value", ErrorKind::Unsupported),
            (Value::from(u64::MAX), "does not fit in int64", ErrorKind::Unsupported),
        ];
        for (leaf, expected, kind) in cases {
            let e = parse(&map(vec![("x", leaf.clone())])).unwrap_err();
            assert!(e.to_string().contains(expected), "{leaf:?}: {e}");
            assert!(
                e.to_string().contains("['x']") || matches!(e, MetadataError::Msgpack { .. }),
                "names the leaf: {e}"
            );
            assert_eq!(e.kind(), kind, "{e}");
        }
    }

    #[test]
    fn malformed_files() {
        let bad_key = Value::Map(vec![(Value::Nil, Value::Nil)]);
        assert!(parse(&bad_key).unwrap_err().to_string().contains("map key nil is not a string"));
        let e = LegacyCheckpoint::parse(&[0x82, 0xa1, b'a'], "c").unwrap_err();
        assert!(matches!(e, MetadataError::Msgpack { .. }), "{e}");
        let e = LegacyCheckpoint::parse(&[], "c").unwrap_err();
        assert!(matches!(e, MetadataError::Msgpack { .. }), "{e}");
        let e = LegacyCheckpoint::parse(&[0xc0, 0xc0], "c").unwrap_err();
        assert!(e.to_string().contains("1 trailing bytes"), "{e}");
        // An array32 header claiming 4 billion elements: no preallocation, just EOF.
        let e = LegacyCheckpoint::parse(&[0xdd, 0xff, 0xff, 0xff, 0xff, 0xc0], "c").unwrap_err();
        assert!(matches!(e, MetadataError::Msgpack { .. }), "{e}");
        // bin32 claiming 4 GiB.
        let e = LegacyCheckpoint::parse(&[0xc6, 0xff, 0xff, 0xff, 0xff], "c").unwrap_err();
        assert!(matches!(e, MetadataError::Msgpack { .. }), "{e}");
        // Invalid UTF-8.
        let e = LegacyCheckpoint::parse(&[0xa2, 0xff, 0xfe], "c").unwrap_err();
        assert!(e.to_string().contains("not valid UTF-8"), "{e}");
    }

    #[test]
    fn nesting_is_bounded() {
        let mut deep = Value::from("PLACEHOLDER://x");
        for _ in 0..MAX_DEPTH {
            deep = Value::Array(vec![deep]);
        }
        assert_eq!(parse(&deep).unwrap().leaves[0].0.entries().len(), MAX_DEPTH);
        for extra in [1, 1000] {
            let mut deeper = deep.clone();
            for _ in 0..extra {
                deeper = Value::Array(vec![deeper]);
            }
            let e = parse(&deeper).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Limit, "{e}");
        }
        // Tuples nested in tuples through ext payloads.
        let mut t = Value::from(1);
        for _ in 0..MAX_DEPTH + 1 {
            t = Value::Ext(EXT_TUPLE, pack(&Value::Array(vec![t])));
        }
        let e = parse(&map(vec![("t", t)])).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::Limit, "{e}");
    }
}
