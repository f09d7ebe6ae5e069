//! `<item>/_METADATA`: the PyTree's structure and the type of every leaf
//! (Orbax ≥ 0.4.3; see `format-spec/04-orbax-metadata.md` §4).

use serde_json::{Map, Value};

use super::json::{self, type_name};
use super::MetadataError;
use crate::python_repr::parse_str_tuple;
use crate::pytree::{KeyEntry, KeyPath};

/// Most `key_metadata` levels accepted for one leaf (`07-reader-safety.md` §2.4).
pub const MAX_KEY_LEVELS: usize = 1024;

/// The parsed `_METADATA` file of a PyTree item.
#[derive(Debug, Clone, PartialEq)]
pub struct TreeMetadata {
    /// One entry per leaf (empty containers and `None` included), in file
    /// order, which is `jax.tree_util` flatten order for Orbax-written files.
    pub entries: Vec<LeafMetadata>,
    /// `use_ocdbt` (since 0.11.31); `None` when absent: detect OCDBT by the
    /// presence of `manifest.ocdbt`, as Orbax does.
    pub use_ocdbt: Option<bool>,
    /// `use_zarr3`; absent means zarr v2.
    pub use_zarr3: bool,
    /// `store_array_data_equal_to_fill_value`; when false, missing chunks
    /// read as the fill value.
    pub store_array_data_equal_to_fill_value: bool,
    /// PyTree-level `custom_metadata` (v0 `PyTreeSaveArgs`), `Null` when absent.
    pub custom_metadata: Value,
    /// `value_metadata_tree`, the JSON string Orbax writes with rich types on.
    pub value_metadata_tree: Option<String>,
}

/// One leaf of [`TreeMetadata`].
#[derive(Debug, Clone, PartialEq)]
pub struct LeafMetadata {
    /// The path from the item's root (`key_type` 1 → index, 2 → dict key).
    pub key_path: KeyPath,
    /// The raw `key` strings of every level.
    pub key_names: Vec<String>,
    /// What kind of value the leaf is.
    pub value_type: ValueType,
    /// True when no data is stored for the leaf (empty values).
    pub skip_deserialize: bool,
    /// The per-process write shape of a `jax.Array` leaf (since 0.11.1).
    pub write_shape: Option<Vec<u64>>,
}

impl LeafMetadata {
    /// Orbax's parameter name: the key names joined with `.`; it names the
    /// leaf's array in the store and its entry in `_sharding`/`_strings.json`.
    pub fn param_name(&self) -> String {
        self.key_names.join(".")
    }
}

/// The `value_type` of a leaf.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ValueType {
    /// `"jax.Array"`: a zarr array, with its sharding in `_sharding`.
    JaxArray,
    /// `"np.ndarray"`: a zarr array.
    NdArray,
    /// `"scalar"`: a Python `int`/`float`/`bool`, stored as a rank-0 array.
    Scalar,
    /// `"string"`: a value in `_strings.json`.
    String,
    /// `"None"`.
    None,
    /// `"Dict"`: an empty dict.
    EmptyDict,
    /// `"List"`: an empty list.
    EmptyList,
    /// `"Tuple"`: an empty tuple.
    EmptyTuple,
    /// `"NamedTuple"`: an empty named tuple (read as `None` without rich types).
    EmptyNamedTuple,
    /// `"placeholder"`: a `...` leaf of a partial save.
    Placeholder,
    /// A type string registered by a custom `TypeHandler`.
    Other(String),
}

impl ValueType {
    /// Parses a `value_type` string (never fails: unknown strings are [`ValueType::Other`]).
    pub fn parse(s: &str) -> ValueType {
        match s {
            "jax.Array" => ValueType::JaxArray,
            "np.ndarray" => ValueType::NdArray,
            "scalar" => ValueType::Scalar,
            "string" => ValueType::String,
            "None" => ValueType::None,
            "Dict" => ValueType::EmptyDict,
            "List" => ValueType::EmptyList,
            "Tuple" => ValueType::EmptyTuple,
            "NamedTuple" => ValueType::EmptyNamedTuple,
            "placeholder" => ValueType::Placeholder,
            other => ValueType::Other(other.to_string()),
        }
    }

    /// The exact string Orbax writes.
    pub fn as_str(&self) -> &str {
        match self {
            ValueType::JaxArray => "jax.Array",
            ValueType::NdArray => "np.ndarray",
            ValueType::Scalar => "scalar",
            ValueType::String => "string",
            ValueType::None => "None",
            ValueType::EmptyDict => "Dict",
            ValueType::EmptyList => "List",
            ValueType::EmptyTuple => "Tuple",
            ValueType::EmptyNamedTuple => "NamedTuple",
            ValueType::Placeholder => "placeholder",
            ValueType::Other(s) => s,
        }
    }
}

impl TreeMetadata {
    /// Parses the bytes of a `_METADATA` file; `file` names it in errors.
    ///
    /// ```
    /// use orbax::metadata::{TreeMetadata, ValueType};
    /// let json = br#"{"tree_metadata": {"('a', '0')": {
    ///     "key_metadata": [{"key": "a", "key_type": 2}, {"key": "0", "key_type": 1}],
    ///     "value_metadata": {"value_type": "np.ndarray", "skip_deserialize": false}}},
    ///   "use_zarr3": true}"#;
    /// let tree = TreeMetadata::parse(json, "state/_METADATA").unwrap();
    /// assert_eq!(tree.entries[0].param_name(), "a.0");
    /// assert_eq!(tree.entries[0].key_path.to_string(), "['a'][0]");
    /// assert_eq!(tree.entries[0].value_type, ValueType::NdArray);
    /// ```
    pub fn parse(bytes: &[u8], file: &str) -> Result<TreeMetadata, MetadataError> {
        // Well-formed files take the typed path; anything unusual (and every
        // error) goes through the general parser, which owns the messages.
        if let Some(tree) = super::tree_typed::parse(bytes) {
            return Ok(tree);
        }
        let top = json::parse_object(bytes, file)?;
        let tree = match top.get("tree_metadata") {
            Some(Value::Object(tree)) => tree,
            Some(v) => {
                return Err(MetadataError::invalid(
                    file,
                    format!("tree_metadata is {}, expected an object", type_name(v)),
                ))
            }
            None => return Err(MetadataError::invalid(file, "no tree_metadata member")),
        };
        let entries = tree
            .iter()
            .map(|(keystr, entry)| parse_entry(keystr, entry, tree.len(), file))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(TreeMetadata {
            entries,
            use_ocdbt: json::opt_bool(&top, "use_ocdbt", "", file)?,
            use_zarr3: json::opt_bool(&top, "use_zarr3", "", file)?.unwrap_or(false),
            store_array_data_equal_to_fill_value: json::opt_bool(
                &top,
                "store_array_data_equal_to_fill_value",
                "",
                file,
            )?
            .unwrap_or(false),
            custom_metadata: top.get("custom_metadata").cloned().unwrap_or(Value::Null),
            value_metadata_tree: json::opt_string(&top, "value_metadata_tree", "", file)?,
        })
    }
}

fn parse_entry(keystr: &str, entry: &Value, num_leaves: usize, file: &str) -> Result<LeafMetadata, MetadataError> {
    let ctx = format!("tree_metadata entry {keystr}: ");
    let invalid = |what: String| MetadataError::invalid(file, format!("{ctx}{what}"));
    let entry = entry.as_object().ok_or_else(|| invalid(format!("is {}, expected an object", type_name(entry))))?;
    let (key_path, key_names) = match entry.get("key_metadata") {
        None | Some(Value::Null) => {
            // Files that predate `key_metadata`: every level of the tuple repr is a dict key.
            let names = parse_str_tuple(keystr)
                .map_err(|e| invalid(format!("no key_metadata and the key is not a tuple repr: {e}")))?;
            check_levels(names.len(), &ctx, file)?;
            (KeyPath(names.iter().cloned().map(KeyEntry::Key).collect()), names)
        }
        Some(Value::Array(levels)) => {
            check_levels(levels.len(), &ctx, file)?;
            let mut path = Vec::with_capacity(levels.len());
            let mut names = Vec::with_capacity(levels.len());
            for level in levels {
                let (entry, name) = parse_level(level, num_leaves).map_err(&invalid)?;
                path.push(entry);
                names.push(name);
            }
            (KeyPath(path), names)
        }
        Some(v) => return Err(invalid(format!("key_metadata is {}, expected a list", type_name(v)))),
    };
    let value = match entry.get("value_metadata") {
        Some(Value::Object(v)) => v,
        Some(v) => return Err(invalid(format!("value_metadata is {}, expected an object", type_name(v)))),
        None => return Err(invalid("no value_metadata".into())),
    };
    Ok(LeafMetadata {
        key_path,
        key_names,
        value_type: match value.get("value_type") {
            Some(Value::String(s)) => ValueType::parse(s),
            Some(v) => return Err(invalid(format!("value_type is {}, expected a string", type_name(v)))),
            None => return Err(invalid("no value_type".into())),
        },
        skip_deserialize: json::opt_bool(value, "skip_deserialize", &ctx, file)?
            .ok_or_else(|| invalid("no skip_deserialize".into()))?,
        write_shape: write_shape(value, &ctx, file)?,
    })
}

fn write_shape(value: &Map<String, Value>, ctx: &str, file: &str) -> Result<Option<Vec<u64>>, MetadataError> {
    match value.get("write_shape") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => json::u64_list(v, &format!("{ctx}write_shape"), file).map(Some),
    }
}

pub(super) fn check_levels(n: usize, ctx: &str, file: &str) -> Result<(), MetadataError> {
    if n > MAX_KEY_LEVELS {
        return Err(MetadataError::limit(
            file,
            format!("{ctx}{n} key levels, more than the limit of {MAX_KEY_LEVELS}"),
        ));
    }
    Ok(())
}

/// One `{"key": ..., "key_type": ...}` level.
fn parse_level(level: &Value, num_leaves: usize) -> Result<(KeyEntry, String), String> {
    let level =
        level.as_object().ok_or_else(|| format!("key_metadata level is {}, expected an object", type_name(level)))?;
    let key = match level.get("key") {
        Some(Value::String(k)) => k.clone(),
        Some(v) => return Err(format!("key {v} is not a string")),
        None => return Err("key_metadata level has no key".into()),
    };
    match level.get("key_type") {
        Some(t) => match t.as_u64() {
            Some(key_type) => key_level(key, key_type, num_leaves),
            None => Err(format!("key_type {t} is not 1 (sequence) or 2 (dict)")),
        },
        None => Err(format!("key {key:?} has no key_type")),
    }
}

/// The key-path entry of one level: `key_type` 1 is a sequence index
/// (canonical decimal, below the number of leaves), 2 a dict key.
pub(super) fn key_level(key: String, key_type: u64, num_leaves: usize) -> Result<(KeyEntry, String), String> {
    match key_type {
        1 => {
            let canonical =
                !key.is_empty() && key.bytes().all(|b| b.is_ascii_digit()) && (key == "0" || !key.starts_with('0'));
            match key.parse::<usize>() {
                Ok(i) if canonical && i < num_leaves => Ok((KeyEntry::Index(i), key)),
                _ if canonical => {
                    Err(format!("sequence index {key} is not less than the number of leaves ({num_leaves})"))
                }
                _ => Err(format!("sequence key {key:?} is not a decimal index")),
            }
        }
        2 => Ok((KeyEntry::Key(key.clone()), key)),
        t => Err(format!("key_type {t} is not 1 (sequence) or 2 (dict)")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    /// The `_METADATA` example of format-notes §4.4 (Orbax 0.12.8).
    const NOTES_EXAMPLE: &str = r#"{"tree_metadata": {
   "('params', 'layer1', 'bias')": {
      "key_metadata": [{"key": "params", "key_type": 2}, {"key": "layer1", "key_type": 2}, {"key": "bias", "key_type": 2}],
      "value_metadata": {"value_type": "np.ndarray", "skip_deserialize": false}},
   "('a',)": {"key_metadata": [{"key": "a", "key_type": 2}],
      "value_metadata": {"value_type": "jax.Array", "skip_deserialize": false, "write_shape": [16]}}},
 "use_ocdbt": true, "use_zarr3": true,
 "store_array_data_equal_to_fill_value": true,
 "custom_metadata": null}"#;

    fn err(json: &str) -> MetadataError {
        TreeMetadata::parse(json.as_bytes(), "item/_METADATA").unwrap_err()
    }

    fn one_leaf(key_metadata: &str, value_metadata: &str) -> String {
        format!(
            r#"{{"tree_metadata": {{"('a',)": {{"key_metadata": {key_metadata}, "value_metadata": {value_metadata}}}}}}}"#
        )
    }

    const NDARRAY: &str = r#"{"value_type": "np.ndarray", "skip_deserialize": false}"#;

    #[test]
    fn notes_example() {
        let t = TreeMetadata::parse(NOTES_EXAMPLE.as_bytes(), "state/_METADATA").unwrap();
        assert_eq!(t.entries.len(), 2);
        let first = &t.entries[0];
        assert_eq!(first.param_name(), "params.layer1.bias", "file order is kept");
        assert_eq!(first.key_path.to_string(), "['params']['layer1']['bias']");
        assert_eq!(first.value_type, ValueType::NdArray);
        assert!(!first.skip_deserialize);
        assert_eq!(first.write_shape, None);
        let second = &t.entries[1];
        assert_eq!(second.key_names, ["a"]);
        assert_eq!(second.value_type, ValueType::JaxArray);
        assert_eq!(second.write_shape, Some(vec![16]));
        assert_eq!(t.use_ocdbt, Some(true));
        assert!(t.use_zarr3);
        assert!(t.store_array_data_equal_to_fill_value);
        assert_eq!(t.custom_metadata, Value::Null);
        assert_eq!(t.value_metadata_tree, None);
    }

    #[test]
    fn sequence_keys_and_empty_values() {
        let json = r#"{"tree_metadata": {
           "('opt_state', '0', 'count')": {
              "key_metadata": [{"key": "opt_state", "key_type": 2}, {"key": "0", "key_type": 1}, {"key": "count", "key_type": 2}],
              "value_metadata": {"value_type": "np.ndarray", "skip_deserialize": false}},
           "('extra',)": {"key_metadata": [{"key": "extra", "key_type": 2}],
              "value_metadata": {"value_type": "Dict", "skip_deserialize": true}},
           "()": {"key_metadata": [], "value_metadata": {"value_type": "my.Custom", "skip_deserialize": false}}},
         "use_zarr3": false}"#;
        let t = TreeMetadata::parse(json.as_bytes(), "f").unwrap();
        assert_eq!(
            t.entries[0].key_path,
            KeyPath(vec![KeyEntry::Key("opt_state".into()), KeyEntry::Index(0), KeyEntry::Key("count".into())])
        );
        assert_eq!(t.entries[0].param_name(), "opt_state.0.count");
        assert_eq!(t.entries[1].value_type, ValueType::EmptyDict);
        assert!(t.entries[1].skip_deserialize);
        assert_eq!(t.entries[2].key_path, KeyPath::root());
        assert_eq!(t.entries[2].param_name(), "");
        assert_eq!(t.entries[2].value_type, ValueType::Other("my.Custom".into()));
        // Absent flags take their documented defaults.
        assert_eq!(t.use_ocdbt, None);
        assert!(!t.store_array_data_equal_to_fill_value);
    }

    #[test]
    fn value_type_strings_round_trip() {
        for s in [
            "jax.Array",
            "np.ndarray",
            "scalar",
            "string",
            "None",
            "Dict",
            "List",
            "Tuple",
            "NamedTuple",
            "placeholder",
            "x.Y",
        ] {
            assert_eq!(ValueType::parse(s).as_str(), s);
        }
        assert_eq!(ValueType::parse("NamedTuple"), ValueType::EmptyNamedTuple);
    }

    #[test]
    fn falls_back_to_the_tuple_repr_without_key_metadata() {
        let json = r#"{"tree_metadata": {"('a', \"it's\")": {"value_metadata": {"value_type": "scalar", "skip_deserialize": false}}}}"#;
        let t = TreeMetadata::parse(json.as_bytes(), "f").unwrap();
        assert_eq!(t.entries[0].key_path, KeyPath(vec![KeyEntry::Key("a".into()), KeyEntry::Key("it's".into())]));
        assert_eq!(t.entries[0].param_name(), "a.it's");
        let e = err(
            r#"{"tree_metadata": {"not a tuple": {"value_metadata": {"value_type": "scalar", "skip_deserialize": false}}}}"#,
        );
        assert!(e.to_string().contains("not a tuple repr"), "{e}");
    }

    #[test]
    fn rich_types_and_custom_metadata() {
        let json = r#"{"tree_metadata": {}, "custom_metadata": {"k": [1, 2]}, "value_metadata_tree": "{\"a\": 1}"}"#;
        let t = TreeMetadata::parse(json.as_bytes(), "f").unwrap();
        assert!(t.entries.is_empty());
        assert_eq!(t.custom_metadata, serde_json::json!({"k": [1, 2]}));
        assert_eq!(t.value_metadata_tree.as_deref(), Some(r#"{"a": 1}"#));
    }

    #[test]
    fn bad_key_type_is_named() {
        let e = err(&one_leaf(r#"[{"key": "a", "key_type": 7}]"#, NDARRAY));
        assert_eq!(
            e.to_string(),
            "item/_METADATA: tree_metadata entry ('a',): key_type 7 is not 1 (sequence) or 2 (dict)"
        );
        assert_eq!(e.kind(), ErrorKind::Corrupt);
    }

    #[test]
    fn sequence_indices_must_be_canonical_and_small() {
        for key in ["01", "-1", "x", "", "1"] {
            let e = err(&one_leaf(&format!(r#"[{{"key": "{key}", "key_type": 1}}]"#), NDARRAY));
            assert!(matches!(e, MetadataError::Invalid { .. }), "{key}: {e}");
        }
        let e = err(&one_leaf(r#"[{"key": "99999999999999999999999", "key_type": 1}]"#, NDARRAY));
        assert!(e.to_string().contains("not less than the number of leaves"), "{e}");
        let t = TreeMetadata::parse(one_leaf(r#"[{"key": "0", "key_type": 1}]"#, NDARRAY).as_bytes(), "f").unwrap();
        assert_eq!(t.entries[0].key_path, KeyPath(vec![KeyEntry::Index(0)]));
    }

    #[test]
    fn malformed_files() {
        let cases: &[(&str, &str)] = &[
            ("{", "invalid JSON"),
            ("[]", "expected a JSON object"),
            ("{}", "no tree_metadata"),
            (r#"{"tree_metadata": []}"#, "tree_metadata is an array"),
            (r#"{"tree_metadata": {"('a',)": 1}}"#, "is a number, expected an object"),
            (r#"{"tree_metadata": {"('a',)": {"key_metadata": []}}}"#, "no value_metadata"),
            (r#"{"tree_metadata": {}, "use_zarr3": "yes"}"#, "use_zarr3 is a string"),
            (r#"{"tree_metadata": {}, "use_ocdbt": 1}"#, "use_ocdbt is a number"),
            (r#"{"tree_metadata": {}, "value_metadata_tree": {}}"#, "value_metadata_tree is an object"),
        ];
        for (json, expected) in cases {
            let e = err(json);
            assert!(e.to_string().contains(expected), "{json}: {e}");
            assert_eq!(e.kind(), ErrorKind::Corrupt);
        }
        let leaf_cases: &[(&str, &str, &str)] = &[
            (r#"{"k": 1}"#, NDARRAY, "key_metadata is an object"),
            (r#"[1]"#, NDARRAY, "key_metadata level is a number"),
            (r#"[{"key": 1, "key_type": 2}]"#, NDARRAY, "key 1 is not a string"),
            (r#"[{"key_type": 2}]"#, NDARRAY, "has no key"),
            (r#"[{"key": "a"}]"#, NDARRAY, "has no key_type"),
            (r#"[{"key": "a", "key_type": "2"}]"#, NDARRAY, "key_type \"2\" is not 1"),
            ("[]", "[]", "value_metadata is an array"),
            ("[]", r#"{"skip_deserialize": false}"#, "no value_type"),
            ("[]", r#"{"value_type": 3, "skip_deserialize": false}"#, "value_type is a number"),
            ("[]", r#"{"value_type": "scalar"}"#, "no skip_deserialize"),
            ("[]", r#"{"value_type": "scalar", "skip_deserialize": 0}"#, "skip_deserialize is a number"),
            (
                "[]",
                r#"{"value_type": "jax.Array", "skip_deserialize": false, "write_shape": [-1]}"#,
                "write_shape contains -1",
            ),
            (
                "[]",
                r#"{"value_type": "jax.Array", "skip_deserialize": false, "write_shape": 4}"#,
                "write_shape is a number",
            ),
        ];
        for (km, vm, expected) in leaf_cases {
            let e = err(&one_leaf(km, vm));
            assert!(e.to_string().contains(expected), "{km} {vm}: {e}");
            assert!(e.to_string().contains("('a',)"), "names the entry: {e}");
        }
    }

    #[test]
    fn too_many_key_levels_is_a_limit() {
        let levels = vec![r#"{"key": "k", "key_type": 2}"#; MAX_KEY_LEVELS + 1].join(",");
        let e = err(&one_leaf(&format!("[{levels}]"), NDARRAY));
        assert_eq!(e.kind(), ErrorKind::Limit, "{e}");
        let deep = format!("{}{}", "[".repeat(200), "]".repeat(200));
        let e = err(&format!(r#"{{"tree_metadata": {{}}, "custom_metadata": {deep}}}"#));
        assert_eq!(e.kind(), ErrorKind::Limit, "{e}");
        let ok = format!("{}{}", "[".repeat(100), "]".repeat(100));
        assert!(TreeMetadata::parse(format!(r#"{{"tree_metadata": {{}}, "custom_metadata": {ok}}}"#).as_bytes(), "f")
            .is_ok());
    }
}
