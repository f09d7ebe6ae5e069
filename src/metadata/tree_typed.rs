//! The fast path for `_METADATA`: the file deserialized straight into typed
//! fields, borrowing strings from the input, instead of through a
//! `serde_json::Value` tree (most of the cost of `pytree_metadata` on
//! trees with thousands of leaves).
//!
//! It accepts only what the general parser in `tree.rs` accepts with the
//! same result; whenever anything is unusual — a type mismatch, a
//! duplicate member, a missing field, a limit, an invalid key — it gives
//! up and the general parser produces the result or the precise error.

use std::borrow::Cow;
use std::collections::HashSet;
use std::fmt;

use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;

use super::json::MAX_JSON_BYTES;
use super::tree::{key_level, LeafMetadata, TreeMetadata, ValueType, MAX_KEY_LEVELS};
use crate::python_repr::parse_str_tuple;
use crate::pytree::{KeyEntry, KeyPath};

#[derive(Deserialize)]
struct File<'a> {
    #[serde(borrow)]
    tree_metadata: Entries<'a>,
    #[serde(default)]
    use_ocdbt: Option<bool>,
    #[serde(default)]
    use_zarr3: Option<bool>,
    #[serde(default)]
    store_array_data_equal_to_fill_value: Option<bool>,
    #[serde(default)]
    custom_metadata: Option<Value>,
    #[serde(default)]
    value_metadata_tree: Option<String>,
}

#[derive(Deserialize)]
struct Entry<'a> {
    #[serde(borrow, default)]
    key_metadata: Option<Vec<Level<'a>>>,
    #[serde(borrow)]
    value_metadata: ValueMetadata<'a>,
}

#[derive(Deserialize)]
struct Level<'a> {
    #[serde(borrow)]
    key: Cow<'a, str>,
    key_type: u64,
}

#[derive(Deserialize)]
struct ValueMetadata<'a> {
    #[serde(borrow)]
    value_type: Cow<'a, str>,
    skip_deserialize: bool,
    #[serde(default)]
    write_shape: Option<Vec<u64>>,
}

/// The `tree_metadata` object in file order.
struct Entries<'a>(Vec<(Cow<'a, str>, Entry<'a>)>);

impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for EntriesVisitor<'a> {
            type Value = Entries<'a>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object of tree entries")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Entries<'a>, M::Error> {
                let mut entries = Vec::with_capacity(map.size_hint().unwrap_or(0));
                while let Some(key) = map.next_key::<Cow<'a, str>>()? {
                    entries.push((key, map.next_value()?));
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor(std::marker::PhantomData))
    }
}

/// Parses a well-formed `_METADATA`; `None` means "use the general parser".
pub(super) fn parse(bytes: &[u8]) -> Option<TreeMetadata> {
    if bytes.len() > MAX_JSON_BYTES {
        return None;
    }
    let file: File = serde_json::from_slice(bytes).ok()?;
    let entries = file.tree_metadata.0;
    let mut seen = HashSet::with_capacity(entries.len());
    if !entries.iter().all(|(k, _)| seen.insert(k.as_ref())) {
        return None; // duplicate keys: the general parser keeps the last one
    }
    let num_leaves = entries.len();
    let leaves = entries.into_iter().map(|(keystr, entry)| leaf(&keystr, entry, num_leaves)).collect::<Option<_>>()?;
    Some(TreeMetadata {
        entries: leaves,
        use_ocdbt: file.use_ocdbt,
        use_zarr3: file.use_zarr3.unwrap_or(false),
        store_array_data_equal_to_fill_value: file.store_array_data_equal_to_fill_value.unwrap_or(false),
        custom_metadata: file.custom_metadata.unwrap_or(Value::Null),
        value_metadata_tree: file.value_metadata_tree,
    })
}

fn leaf(keystr: &str, entry: Entry, num_leaves: usize) -> Option<LeafMetadata> {
    let (key_path, key_names) = match entry.key_metadata {
        None => {
            let names = parse_str_tuple(keystr).ok()?;
            (KeyPath(names.iter().cloned().map(KeyEntry::Key).collect()), names)
        }
        Some(levels) => {
            let mut path = Vec::with_capacity(levels.len());
            let mut names = Vec::with_capacity(levels.len());
            for level in levels {
                let (entry, name) = key_level(level.key.into_owned(), level.key_type, num_leaves).ok()?;
                path.push(entry);
                names.push(name);
            }
            (KeyPath(path), names)
        }
    };
    if key_names.len() > MAX_KEY_LEVELS {
        return None;
    }
    let value = entry.value_metadata;
    Some(LeafMetadata {
        key_path,
        key_names,
        value_type: ValueType::parse(&value.value_type),
        skip_deserialize: value.skip_deserialize,
        write_shape: value.write_shape,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every document of the general parser's tests gives the same result
    /// (or declines); the unusual ones decline.
    #[test]
    fn agrees_with_the_general_parser_or_declines() {
        let ok = r#"{"tree_metadata": {"('a', '0')": {
            "key_metadata": [{"key": "a", "key_type": 2}, {"key": "0", "key_type": 1}],
            "value_metadata": {"value_type": "jax.Array", "skip_deserialize": false, "write_shape": [2, 3]}},
          "('b',)": {"value_metadata": {"value_type": "None", "skip_deserialize": true}}},
          "use_zarr3": true, "use_ocdbt": null, "custom_metadata": {"x": [1]}}"#;
        let typed = parse(ok.as_bytes()).expect("typed path");
        assert_eq!(Some(typed), super::super::tree::TreeMetadata::parse(ok.as_bytes(), "f").ok());
        for unusual in [
            // duplicate entry key, duplicate member, wrong types, missing fields, bad index
            r#"{"tree_metadata": {"a": {"value_metadata": {"value_type": "None", "skip_deserialize": true}},
                "a": {"value_metadata": {"value_type": "None", "skip_deserialize": true}}}}"#,
            r#"{"tree_metadata": {}, "use_zarr3": true, "use_zarr3": false}"#,
            r#"{"tree_metadata": {}, "use_zarr3": "yes"}"#,
            r#"{"tree_metadata": {"('a',)": {"value_metadata": {"value_type": "None"}}}}"#,
            r#"{"tree_metadata": {"x": {"key_metadata": [{"key": "7", "key_type": 1}],
                "value_metadata": {"value_type": "None", "skip_deserialize": true}}}}"#,
            r#"{"tree_metadata": {"x": {"key_metadata": [{"key": "a", "key_type": 1.0}],
                "value_metadata": {"value_type": "None", "skip_deserialize": true}}}}"#,
        ] {
            assert!(parse(unusual.as_bytes()).is_none(), "{unusual}");
        }
    }
}
