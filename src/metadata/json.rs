//! Shared JSON reading: size limit, top-level object, typed member access
//! with errors that name the file and the member.

use serde_json::{Map, Value};

use super::MetadataError;

/// Largest JSON metadata file accepted (`format-spec/07-reader-safety.md` §2.4).
pub const MAX_JSON_BYTES: usize = 256 << 20;

/// Parses `bytes` as JSON, within the size and nesting limits.
pub(crate) fn parse_value(bytes: &[u8], file: &str) -> Result<Value, MetadataError> {
    if bytes.len() > MAX_JSON_BYTES {
        return Err(MetadataError::limit(
            file,
            format!("{} bytes is more than the {MAX_JSON_BYTES}-byte limit for JSON metadata", bytes.len()),
        ));
    }
    serde_json::from_slice(bytes).map_err(|source| {
        // serde_json stops at 128 nested arrays/objects, the spec's limit.
        if source.to_string().starts_with("recursion limit exceeded") {
            MetadataError::limit(file, format!("JSON nested deeper than 128 levels ({source})"))
        } else {
            MetadataError::Json { file: file.to_string(), source }
        }
    })
}

/// Parses `bytes` as a JSON object.
pub(crate) fn parse_object(bytes: &[u8], file: &str) -> Result<Map<String, Value>, MetadataError> {
    match parse_value(bytes, file)? {
        Value::Object(map) => Ok(map),
        other => Err(MetadataError::invalid(file, format!("expected a JSON object, found {}", type_name(&other)))),
    }
}

/// A short name of a JSON value's type, for error messages.
pub(crate) fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// A member that must be a boolean if present; absent or `null` → `None`.
pub(crate) fn opt_bool(
    map: &Map<String, Value>,
    key: &str,
    ctx: &str,
    file: &str,
) -> Result<Option<bool>, MetadataError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Bool(b)) => Ok(Some(*b)),
        Some(v) => Err(MetadataError::invalid(file, format!("{ctx}{key} is {}, expected a boolean", type_name(v)))),
    }
}

/// A member that must be a string if present; absent or `null` → `None`.
pub(crate) fn opt_string(
    map: &Map<String, Value>,
    key: &str,
    ctx: &str,
    file: &str,
) -> Result<Option<String>, MetadataError> {
    match map.get(key) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(v) => Err(MetadataError::invalid(file, format!("{ctx}{key} is {}, expected a string", type_name(v)))),
    }
}

/// A value that must be an array of non-negative integers (a shape).
pub(crate) fn u64_list(v: &Value, what: &str, file: &str) -> Result<Vec<u64>, MetadataError> {
    let items = v.as_array().ok_or_else(|| {
        MetadataError::invalid(file, format!("{what} is {}, expected a list of integers", type_name(v)))
    })?;
    items
        .iter()
        .map(|d| {
            d.as_u64().ok_or_else(|| {
                MetadataError::invalid(file, format!("{what} contains {d}, expected a non-negative integer"))
            })
        })
        .collect()
}

/// A value that must be an array of strings.
pub(crate) fn string_list(v: &Value, what: &str, file: &str) -> Result<Vec<String>, MetadataError> {
    let items = v.as_array().ok_or_else(|| {
        MetadataError::invalid(file, format!("{what} is {}, expected a list of strings", type_name(v)))
    })?;
    items
        .iter()
        .map(|s| {
            s.as_str()
                .map(str::to_string)
                .ok_or_else(|| MetadataError::invalid(file, format!("{what} contains {s}, expected a string")))
        })
        .collect()
}
