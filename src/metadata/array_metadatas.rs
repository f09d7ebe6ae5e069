//! `<item>/array_metadatas/process_<i>`: per-process write and chunk shapes
//! of `jax.Array` leaves (Orbax ≥ 0.11.1; see `format-spec/04-orbax-metadata.md` §7).

use serde_json::Value;

use super::json::{self, type_name};
use super::MetadataError;

/// One parsed `array_metadatas/process_<i>` file.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrayMetadatas {
    /// The entries, in file order.
    pub entries: Vec<ArrayMetadataEntry>,
}

/// What one process recorded about one array.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrayMetadataEntry {
    /// The leaf's param name.
    pub param_name: String,
    /// The shape of the shard this process wrote.
    pub write_shape: Vec<u64>,
    /// The zarr chunk shape.
    pub chunk_shape: Vec<u64>,
    /// Extra metadata, e.g. `{"random_key_impl": "threefry2x32"}` for PRNG
    /// keys; `Null` when absent.
    pub ext_metadata: Value,
}

impl ArrayMetadatas {
    /// Parses the bytes of an `array_metadatas/process_<i>` file; `file`
    /// names it in errors.
    ///
    /// ```
    /// use orbax::metadata::ArrayMetadatas;
    /// let m = ArrayMetadatas::parse(br#"{"array_metadatas": [{"array_metadata": {"param_name": "a", "write_shape": [4], "chunk_shape": [4], "ext_metadata": null}}]}"#, "process_0").unwrap();
    /// assert_eq!(m.entries[0].param_name, "a");
    /// ```
    pub fn parse(bytes: &[u8], file: &str) -> Result<ArrayMetadatas, MetadataError> {
        let top = json::parse_object(bytes, file)?;
        let list = match top.get("array_metadatas") {
            Some(Value::Array(list)) => list,
            Some(v) => {
                return Err(MetadataError::invalid(
                    file,
                    format!("array_metadatas is {}, expected a list", type_name(v)),
                ))
            }
            None => return Err(MetadataError::invalid(file, "no array_metadatas member")),
        };
        let entries = list.iter().enumerate().map(|(i, item)| parse_entry(i, item, file)).collect::<Result<_, _>>()?;
        Ok(ArrayMetadatas { entries })
    }
}

fn parse_entry(i: usize, item: &Value, file: &str) -> Result<ArrayMetadataEntry, MetadataError> {
    let ctx = format!("array_metadatas[{i}]");
    let invalid = |what: String| MetadataError::invalid(file, format!("{ctx}: {what}"));
    let entry = match item.get("array_metadata") {
        Some(Value::Object(entry)) => entry,
        Some(v) => return Err(invalid(format!("array_metadata is {}, expected an object", type_name(v)))),
        None => return Err(invalid("no array_metadata member".into())),
    };
    let shape = |key: &str| match entry.get(key) {
        Some(v) => json::u64_list(v, &format!("{ctx}.{key}"), file),
        None => Err(invalid(format!("no {key}"))),
    };
    Ok(ArrayMetadataEntry {
        param_name: json::opt_string(entry, "param_name", &format!("{ctx}."), file)?
            .ok_or_else(|| invalid("no param_name".into()))?,
        write_shape: shape("write_shape")?,
        chunk_shape: shape("chunk_shape")?,
        ext_metadata: entry.get("ext_metadata").cloned().unwrap_or(Value::Null),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn notes_example() {
        let m = ArrayMetadatas::parse(
            br#"{"array_metadatas": [
  {"array_metadata": {"param_name": "params.dense.kernel", "write_shape": [8, 4], "chunk_shape": [8, 4], "ext_metadata": null}},
  {"array_metadata": {"param_name": "rng", "write_shape": [2], "chunk_shape": [2], "ext_metadata": {"random_key_impl": "threefry2x32"}}}]}"#,
            "state/array_metadatas/process_0",
        )
        .unwrap();
        assert_eq!(m.entries.len(), 2);
        assert_eq!(
            m.entries[0],
            ArrayMetadataEntry {
                param_name: "params.dense.kernel".into(),
                write_shape: vec![8, 4],
                chunk_shape: vec![8, 4],
                ext_metadata: Value::Null,
            }
        );
        assert_eq!(m.entries[1].ext_metadata, json!({"random_key_impl": "threefry2x32"}));
    }

    #[test]
    fn malformed() {
        for (json, expected) in [
            ("{}", "no array_metadatas"),
            (r#"{"array_metadatas": {}}"#, "array_metadatas is an object"),
            (r#"{"array_metadatas": [1]}"#, "array_metadatas[0]: no array_metadata"),
            (r#"{"array_metadatas": [{"array_metadata": []}]}"#, "array_metadata is an array"),
            (r#"{"array_metadatas": [{"array_metadata": {"write_shape": [1], "chunk_shape": [1]}}]}"#, "no param_name"),
            (r#"{"array_metadatas": [{"array_metadata": {"param_name": "a", "chunk_shape": [1]}}]}"#, "no write_shape"),
            (
                r#"{"array_metadatas": [{"array_metadata": {"param_name": "a", "write_shape": [1], "chunk_shape": [1.5]}}]}"#,
                "chunk_shape contains 1.5",
            ),
            (
                r#"{"array_metadatas": [{"array_metadata": {"param_name": 7, "write_shape": [1], "chunk_shape": [1]}}]}"#,
                "param_name is a number",
            ),
        ] {
            let e = ArrayMetadatas::parse(json.as_bytes(), "p").unwrap_err();
            assert!(e.to_string().contains(expected), "{json}: {e}");
        }
    }
}
