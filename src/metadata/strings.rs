//! `<item>/_strings.json`: the values of `str` leaves (see
//! `format-spec/04-orbax-metadata.md` §6).

use std::collections::HashMap;

use serde_json::Value;

use super::json::{self, type_name};
use super::MetadataError;

/// The parsed `_strings.json` file: param name → string value.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct StringsFile {
    values: HashMap<String, String>,
}

impl StringsFile {
    /// Parses the bytes of a `_strings.json` file; `file` names it in errors.
    /// Every member must be a string.
    ///
    /// ```
    /// use orbax::metadata::StringsFile;
    /// let s = StringsFile::parse(br#"{"s":"hello","t":""}"#, "state/_strings.json").unwrap();
    /// assert_eq!(s.get("s"), Some("hello"));
    /// assert_eq!(s.get("missing"), None);
    /// ```
    pub fn parse(bytes: &[u8], file: &str) -> Result<StringsFile, MetadataError> {
        let top = json::parse_object(bytes, file)?;
        let values = top
            .into_iter()
            .map(|(name, value)| match value {
                Value::String(s) => Ok((name, s)),
                v => Err(MetadataError::invalid(
                    file,
                    format!("value of {name:?} is {}, expected a string", type_name(&v)),
                )),
            })
            .collect::<Result<_, _>>()?;
        Ok(StringsFile { values })
    }

    /// The value of the string leaf with this param name.
    pub fn get(&self, param_name: &str) -> Option<&str> {
        self.values.get(param_name).map(String::as_str)
    }

    /// Number of string values.
    pub fn len(&self) -> usize {
        self.values.len()
    }

    /// True if the file holds no values.
    pub fn is_empty(&self) -> bool {
        self.values.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;

    #[test]
    fn parses_values() {
        let s = StringsFile::parse(r#"{"s":"hello world","s_empty":"","s_unicode":"ключ ✓"}"#.as_bytes(), "f").unwrap();
        assert_eq!(s.len(), 3);
        assert!(!s.is_empty());
        assert_eq!(s.get("s_empty"), Some(""));
        assert_eq!(s.get("s_unicode"), Some("ключ ✓"));
        assert!(StringsFile::parse(b"{}", "f").unwrap().is_empty());
    }

    #[test]
    fn rejects_non_strings() {
        let e = StringsFile::parse(br#"{"a": "x", "n": 3}"#, "item/_strings.json").unwrap_err();
        assert_eq!(e.to_string(), "item/_strings.json: value of \"n\" is a number, expected a string");
        assert_eq!(e.kind(), ErrorKind::Corrupt);
        assert!(matches!(StringsFile::parse(b"[\"a\"]", "f"), Err(MetadataError::Invalid { .. })));
        assert!(matches!(StringsFile::parse(b"{\"a\":", "f"), Err(MetadataError::Json { .. })));
    }
}
