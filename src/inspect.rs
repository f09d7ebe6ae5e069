//! The `orbax inspect --json` document: the conformance protocol's view of
//! a checkpoint (see `conformance/README.md`).
//!
//! It is built here, in the library, so that tests, the CLI and other
//! tools produce byte-for-byte the same document.

use serde_json::{json, Map, Value};

use crate::api::Checkpoint;
use crate::dtype::ScalarValue;
use crate::error::Result;
use crate::item::LeafKind;
use crate::layout::ItemKind;
use crate::pytree::{KeyEntry, KeyPath, PyTree};

/// A float as the protocol writes it: a JSON number, or `"nan"`, `"inf"`, `"-inf"`.
pub fn float_json(x: f64) -> Value {
    if x.is_nan() {
        json!("nan")
    } else if x.is_infinite() {
        json!(if x > 0.0 { "inf" } else { "-inf" })
    } else {
        json!(x)
    }
}

/// A scalar as the protocol writes it (complex as `[re, im]`).
pub fn scalar_json(v: ScalarValue) -> Value {
    match v {
        ScalarValue::Bool(b) => json!(b),
        ScalarValue::Int(i) => json!(i),
        ScalarValue::UInt(u) => json!(u),
        ScalarValue::Float(f) => float_json(f),
        ScalarValue::Complex(re, im) => json!([float_json(re), float_json(im)]),
    }
}

/// A key path as the protocol writes it: dict keys and attribute names as
/// strings, sequence indices as integers.
pub fn keypath_json(path: &KeyPath) -> Value {
    Value::Array(
        path.entries()
            .iter()
            .map(|e| match e {
                KeyEntry::Key(k) | KeyEntry::Attr(k) => json!(k),
                KeyEntry::Index(i) => json!(i),
            })
            .collect(),
    )
}

/// Parses a key path given as a JSON list (`["params", 0]`) or as a JAX
/// keystr (`['params'][0]`).
pub fn parse_keypath(text: &str) -> std::result::Result<KeyPath, String> {
    if let Ok(Value::Array(items)) = serde_json::from_str::<Value>(text) {
        return items
            .iter()
            .map(|v| match v {
                Value::String(s) => Ok(KeyEntry::Key(s.clone())),
                Value::Number(n) => {
                    n.as_u64().map(|i| KeyEntry::Index(i as usize)).ok_or_else(|| format!("bad index {n}"))
                }
                other => Err(format!("key path entries must be strings or integers, not {other}")),
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map(KeyPath);
    }
    KeyPath::parse_keystr(text)
}

/// Compares key paths the way the protocol does: attribute names and dict
/// keys are both names (Orbax stores them alike).
pub fn same_keypath(a: &KeyPath, b: &KeyPath) -> bool {
    let norm = |e: &KeyEntry| match e {
        KeyEntry::Attr(s) | KeyEntry::Key(s) => (Some(s.clone()), None),
        KeyEntry::Index(i) => (None, Some(*i)),
    };
    a.entries().len() == b.entries().len() && a.entries().iter().zip(b.entries()).all(|(x, y)| norm(x) == norm(y))
}

fn leaf_json(keypath: &KeyPath, kind: &str, dtype: Option<&str>, shape: Option<&[u64]>, value: Option<Value>) -> Value {
    let mut leaf = Map::new();
    leaf.insert("keypath".into(), keypath_json(keypath));
    leaf.insert("kind".into(), json!(kind));
    leaf.insert("dtype".into(), dtype.map_or(Value::Null, |d| json!(d)));
    leaf.insert("shape".into(), shape.map_or(Value::Null, |s| json!(s)));
    if let Some(value) = value {
        leaf.insert("value".into(), value);
    }
    Value::Object(leaf)
}

/// The leaves of a JSON item: objects are dicts (keys sorted), arrays lists,
/// numbers `int64` / `float64` scalars, booleans `bool` scalars.
pub fn json_item_leaves(value: &Value) -> Vec<Value> {
    fn walk(v: &Value, path: KeyPath, out: &mut Vec<Value>) {
        match v {
            Value::Object(m) if !m.is_empty() => {
                let mut keys: Vec<&String> = m.keys().collect();
                keys.sort();
                for k in keys {
                    walk(&m[k], path.child(KeyEntry::Key(k.clone())), out);
                }
            }
            Value::Array(a) if !a.is_empty() => {
                for (i, x) in a.iter().enumerate() {
                    walk(x, path.child(KeyEntry::Index(i)), out);
                }
            }
            Value::Object(_) => out.push(leaf_json(&path, "empty_dict", None, None, None)),
            Value::Array(_) => out.push(leaf_json(&path, "empty_list", None, None, None)),
            Value::Null => out.push(leaf_json(&path, "none", None, None, None)),
            Value::String(s) => out.push(leaf_json(&path, "string", None, None, Some(json!(s)))),
            Value::Bool(b) => out.push(leaf_json(&path, "scalar", Some("bool"), Some(&[]), Some(json!(b)))),
            Value::Number(n) => {
                let dtype = if n.is_f64() { "float64" } else { "int64" };
                out.push(leaf_json(&path, "scalar", Some(dtype), Some(&[]), Some(Value::Number(n.clone()))));
            }
        }
    }
    let mut out = Vec::new();
    walk(value, KeyPath::root(), &mut out);
    out
}

/// Builds the `inspect --json` document for `checkpoint`, for every item or
/// only `item`.
pub async fn inspect_document(checkpoint: &Checkpoint, item: Option<&str>) -> Result<Value> {
    let selected = checkpoint.select_items(item)?;
    let mut items = Vec::new();
    for location in &selected {
        let (kind, leaves) = match &location.kind {
            ItemKind::Json { .. } => {
                let value = checkpoint.json(location.name.as_deref().unwrap_or_default()).await?;
                ("json", json_item_leaves(&value))
            }
            ItemKind::PyTree => {
                let pytree = crate::item::PyTreeItem::open(checkpoint.store(), &location.path).await?;
                let metadata = pytree.metadata().await?;
                let mut leaves = Vec::with_capacity(metadata.leaves.len());
                for info in &metadata.leaves {
                    let dtype = info.dtype.map(|d| d.name());
                    let shape = info.shape.as_deref();
                    let value = match info.kind {
                        LeafKind::Scalar | LeafKind::String => match pytree.load_leaf_at(&info.keypath).await? {
                            PyTree::Scalar(s) => Some(scalar_json(s.value())),
                            PyTree::String(s) => Some(json!(s)),
                            PyTree::Array(a) if a.shape().is_empty() => a.get(0).map(scalar_json),
                            _ => None,
                        },
                        _ => None,
                    };
                    let (dtype, shape) = match info.kind {
                        LeafKind::Array | LeafKind::Scalar => (dtype, shape),
                        _ => (None, None),
                    };
                    leaves.push(leaf_json(&info.keypath, info.kind.name(), dtype, shape, value));
                }
                ("pytree", leaves)
            }
        };
        items.push(json!({"name": location.name, "kind": kind, "leaves": leaves}));
    }
    Ok(json!({ "items": items }))
}
