//! `<checkpoint>/_CHECKPOINT_METADATA`: step-level metadata (Orbax ≥ 0.5.11;
//! see `format-spec/04-orbax-metadata.md` §1).

use serde_json::{Map, Value};

use super::json::{self, type_name};
use super::MetadataError;

/// Members Orbax reads itself; any other top-level member is moved into
/// [`CheckpointMetadata::custom_metadata`], as Orbax does on read.
const KNOWN_MEMBERS: &[&str] = &[
    "item_handlers",
    "metrics",
    "performance_metrics",
    "init_timestamp_nsecs",
    "commit_timestamp_nsecs",
    "custom_metadata",
    "custom",
];

/// The parsed `_CHECKPOINT_METADATA` file.
#[derive(Debug, Clone, PartialEq)]
pub struct CheckpointMetadata {
    /// Which handler wrote each item (hints only: never import anything from them).
    pub item_handlers: ItemHandlers,
    /// User metrics: an object, or `Null` when absent.
    pub metrics: Value,
    /// Save timing statistics: an object, or `Null` when absent.
    pub performance_metrics: Value,
    /// Nanoseconds since the epoch when the save started.
    pub init_timestamp_nsecs: Option<i64>,
    /// Nanoseconds since the epoch when the save was finalized.
    pub commit_timestamp_nsecs: Option<i64>,
    /// User metadata (`custom_metadata`, or `custom` in some 0.11 releases),
    /// plus every unknown top-level member.
    pub custom_metadata: Map<String, Value>,
}

/// The `item_handlers` member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ItemHandlers {
    /// Item name → handler type string, in file order.
    Map(Vec<(String, String)>),
    /// One handler type string: a single-item v0 checkpointer whose item is
    /// the checkpoint directory itself.
    Single(String),
    /// Absent or `null`.
    None,
}

impl CheckpointMetadata {
    /// Parses the bytes of a `_CHECKPOINT_METADATA` file; `file` names it in
    /// errors. Any JSON object is accepted, `{}` included.
    ///
    /// ```
    /// use orbax::metadata::{CheckpointMetadata, ItemHandlers};
    /// let m = CheckpointMetadata::parse(br#"{"item_handlers": "a.b.StandardCheckpointHandler", "step_note": 1}"#, "_CHECKPOINT_METADATA").unwrap();
    /// assert_eq!(m.item_handlers, ItemHandlers::Single("a.b.StandardCheckpointHandler".into()));
    /// assert_eq!(m.custom_metadata["step_note"], 1);
    /// ```
    pub fn parse(bytes: &[u8], file: &str) -> Result<CheckpointMetadata, MetadataError> {
        let top = json::parse_object(bytes, file)?;
        let invalid = |key: &str, v: &Value, expected: &str| {
            MetadataError::invalid(file, format!("{key} is {}, expected {expected}", type_name(v)))
        };
        let item_handlers = match top.get("item_handlers") {
            None | Some(Value::Null) => ItemHandlers::None,
            Some(Value::String(s)) => ItemHandlers::Single(s.clone()),
            Some(Value::Object(map)) => ItemHandlers::Map(
                map.iter()
                    .map(|(item, handler)| match handler {
                        Value::String(h) => Ok((item.clone(), h.clone())),
                        v => Err(invalid(&format!("item_handlers[{item:?}]"), v, "a handler type string")),
                    })
                    .collect::<Result<_, _>>()?,
            ),
            Some(v) => return Err(invalid("item_handlers", v, "an object, a string or null")),
        };
        let object_or_null = |key: &str| match top.get(key) {
            None => Ok(Value::Null),
            Some(v @ (Value::Null | Value::Object(_))) => Ok(v.clone()),
            Some(v) => Err(invalid(key, v, "an object")),
        };
        let timestamp = |key: &str| match top.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(v) => v.as_i64().map(Some).ok_or_else(|| invalid(key, v, "an integer (nanoseconds)")),
        };
        let mut custom_metadata = Map::new();
        for key in ["custom", "custom_metadata"] {
            match top.get(key) {
                None | Some(Value::Null) => {}
                Some(Value::Object(map)) => custom_metadata.extend(map.clone()),
                Some(v) => return Err(invalid(key, v, "an object")),
            }
        }
        for (key, value) in &top {
            if !KNOWN_MEMBERS.contains(&key.as_str()) {
                custom_metadata.insert(key.clone(), value.clone());
            }
        }
        Ok(CheckpointMetadata {
            item_handlers,
            metrics: object_or_null("metrics")?,
            performance_metrics: object_or_null("performance_metrics")?,
            init_timestamp_nsecs: timestamp("init_timestamp_nsecs")?,
            commit_timestamp_nsecs: timestamp("commit_timestamp_nsecs")?,
            custom_metadata,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use serde_json::json;

    fn parse(s: &str) -> Result<CheckpointMetadata, MetadataError> {
        CheckpointMetadata::parse(s.as_bytes(), "ckpt/_CHECKPOINT_METADATA")
    }

    #[test]
    fn v1_example() {
        let m = parse(
            r#"{"item_handlers": {"state": "orbax.checkpoint.experimental.v1._src.handlers.pytree_handler.PyTreeHandler"},
 "metrics": {}, "performance_metrics": {},
 "init_timestamp_nsecs": 1795858886880529408, "commit_timestamp_nsecs": 1795858886928990366,
 "custom_metadata": {}}"#,
        )
        .unwrap();
        assert_eq!(
            m.item_handlers,
            ItemHandlers::Map(vec![(
                "state".into(),
                "orbax.checkpoint.experimental.v1._src.handlers.pytree_handler.PyTreeHandler".into()
            )])
        );
        assert_eq!(m.metrics, json!({}));
        assert_eq!(m.performance_metrics, json!({}));
        assert_eq!(m.init_timestamp_nsecs, Some(1795858886880529408));
        assert_eq!(m.commit_timestamp_nsecs, Some(1795858886928990366));
        assert!(m.custom_metadata.is_empty());
    }

    #[test]
    fn v0_single_string_handler() {
        let m = parse(
            r#"{"item_handlers": "orbax.checkpoint._src.handlers.standard_checkpoint_handler.StandardCheckpointHandler", "metrics": {"loss": 0.5}, "performance_metrics": {}, "init_timestamp_nsecs": 1, "commit_timestamp_nsecs": null, "custom_metadata": {"run": "x"}}"#,
        )
        .unwrap();
        assert_eq!(
            m.item_handlers,
            ItemHandlers::Single(
                "orbax.checkpoint._src.handlers.standard_checkpoint_handler.StandardCheckpointHandler".into()
            )
        );
        assert_eq!(m.metrics, json!({"loss": 0.5}));
        assert_eq!(m.commit_timestamp_nsecs, None);
        assert_eq!(m.custom_metadata["run"], "x");
    }

    #[test]
    fn empty_object_and_unknown_members() {
        let m = parse("{}").unwrap();
        assert_eq!(m.item_handlers, ItemHandlers::None);
        assert_eq!(m.metrics, Value::Null);
        assert_eq!(m.init_timestamp_nsecs, None);
        assert!(m.custom_metadata.is_empty());
        let m =
            parse(r#"{"custom": {"a": 1}, "custom_metadata": {"b": 2}, "future_field": [1], "item_handlers": null}"#)
                .unwrap();
        assert_eq!(Value::Object(m.custom_metadata), json!({"a": 1, "b": 2, "future_field": [1]}));
    }

    #[test]
    fn malformed() {
        for (json, expected) in [
            ("not json", "invalid JSON"),
            ("[1]", "expected a JSON object"),
            (r#"{"item_handlers": 3}"#, "item_handlers is a number"),
            (r#"{"item_handlers": {"state": 1}}"#, "item_handlers[\"state\"] is a number"),
            (r#"{"metrics": [1]}"#, "metrics is an array"),
            (r#"{"performance_metrics": "x"}"#, "performance_metrics is a string"),
            (r#"{"init_timestamp_nsecs": 1.5}"#, "init_timestamp_nsecs is a number, expected an integer"),
            (r#"{"commit_timestamp_nsecs": "1"}"#, "commit_timestamp_nsecs is a string"),
            (r#"{"custom_metadata": 1}"#, "custom_metadata is a number"),
        ] {
            let e = parse(json).unwrap_err();
            assert!(e.to_string().starts_with("ckpt/_CHECKPOINT_METADATA: "), "{e}");
            assert!(e.to_string().contains(expected), "{json}: {e}");
            assert_eq!(e.kind(), ErrorKind::Corrupt);
        }
    }
}
