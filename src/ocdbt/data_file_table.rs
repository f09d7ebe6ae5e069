//! The data file table: the list of files a manifest or node refers to.
//!
//! Paths are stored column-wise with prefix compression against the previous
//! path. Each entry is a `(base_path, relative_path)` pair; when a node is
//! read from a file, the base path of that file becomes the *transitive
//! path* prepended to every base path in the node's own table. Base paths
//! therefore accumulate down the tree (that is how Orbax's merged database
//! points into `ocdbt.process_<i>/d/...`), relative paths do not.
//!
//! Paths come from untrusted bytes, so they are only turned into storage
//! keys through [`DataFile::path`], which rejects anything that could name
//! a file outside the database directory.

use super::codec::{Origin, Reader};
use super::OcdbtError;
use crate::storage::validate_key;

/// Longest full data file path (transitive + base + relative), in bytes.
const MAX_PATH_BYTES: usize = 65535;

/// One entry of a data file table.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct DataFile {
    /// The transitive path of the table followed by the entry's own base path.
    pub base_path: Vec<u8>,
    /// The entry's relative path.
    pub relative_path: Vec<u8>,
}

impl DataFile {
    /// The path of this file relative to the database root, checked to be a
    /// safe relative key. `referrer` is the table's file, for the error.
    pub fn path(&self, referrer: &Origin<'_>) -> Result<String, OcdbtError> {
        let mut raw = self.base_path.clone();
        raw.extend_from_slice(&self.relative_path);
        let unsafe_path = |path: String, reason: &'static str| OcdbtError::UnsafePath {
            file: referrer.file.to_string(),
            path,
            reason,
        };
        let path = match String::from_utf8(raw) {
            Ok(path) => path,
            Err(e) => return Err(unsafe_path(String::from_utf8_lossy(e.as_bytes()).into_owned(), "not valid UTF-8")),
        };
        let reason = if path.len() > MAX_PATH_BYTES {
            Some("longer than 65535 bytes")
        } else if path.split('/').any(str::is_empty) {
            Some("empty path segment")
        } else if path.chars().any(|c| c.is_ascii_control() || c == ':') {
            Some("control character or ':'")
        } else {
            None
        };
        if let Some(reason) = reason {
            return Err(unsafe_path(path, reason));
        }
        validate_key(&path).map_err(|e| match e {
            crate::storage::StorageError::InvalidKey { reason, .. } => unsafe_path(path.clone(), reason),
            other => OcdbtError::Storage(other),
        })?;
        Ok(path)
    }
}

/// Reads a data file table whose base paths are relative to `transitive_path`.
pub(crate) fn read_data_file_table(r: &mut Reader<'_>, transitive_path: &[u8]) -> Result<Vec<DataFile>, OcdbtError> {
    // Each file needs at least a suffix length and a base length byte.
    let n = r.count("number of data files", u64::MAX, 2)?;
    let mut prefix_lengths = vec![0];
    prefix_lengths.extend(r.column(n.saturating_sub(1), |r| r.varint16("data file path_prefix_length"))?);
    let suffix_lengths = r.column(n, |r| r.varint16("data file path_suffix_length"))?;
    let base_lengths = r.column(n, |r| r.varint16("data file base_path_length"))?;
    let max_path = MAX_PATH_BYTES.saturating_sub(transitive_path.len());
    let mut files: Vec<DataFile> = Vec::with_capacity(n);
    let mut previous: Vec<u8> = Vec::new();
    for i in 0..n {
        let (prefix, suffix, base) = (prefix_lengths[i], suffix_lengths[i], base_lengths[i]);
        if prefix > previous.len() {
            return Err(r.origin().corrupt(format!(
                "data file {i}: path_prefix_length {prefix} exceeds the previous path's length {}",
                previous.len()
            )));
        }
        if prefix + suffix > max_path {
            return Err(r.origin().limit(
                "data file path length",
                (prefix + suffix + transitive_path.len()) as u64,
                65535,
            ));
        }
        if base > prefix + suffix {
            return Err(r.origin().corrupt(format!(
                "data file {i}: base_path_length {base} exceeds the path length {}",
                prefix + suffix
            )));
        }
        if i > 0 && prefix > base.min(base_lengths[i - 1]) && base != base_lengths[i - 1] {
            return Err(r.origin().corrupt(format!(
                "data file {i}: path prefix of {prefix} bytes is shared with a different base path"
            )));
        }
        let mut path = previous[..prefix].to_vec();
        path.extend_from_slice(&r.bytes(suffix, "data file path suffixes")?);
        let mut base_path = transitive_path.to_vec();
        base_path.extend_from_slice(&path[..base]);
        files.push(DataFile { base_path, relative_path: path[base..].to_vec() });
        previous = path;
    }
    Ok(files)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ocdbt::codec::tests::ORIGIN;
    use crate::ErrorKind;
    use bytes::Bytes;

    fn decode(bytes: &[u8], transitive: &[u8]) -> Result<Vec<DataFile>, OcdbtError> {
        let data = Bytes::copy_from_slice(bytes);
        let mut r = Reader::new(&data, ORIGIN);
        let files = read_data_file_table(&mut r, transitive)?;
        r.finish()?;
        Ok(files)
    }

    fn file(base: &str, rel: &str) -> DataFile {
        DataFile { base_path: base.as_bytes().to_vec(), relative_path: rel.as_bytes().to_vec() }
    }

    #[test]
    fn empty_and_single_tables() {
        assert!(decode(&[0], b"").unwrap().is_empty());
        let mut bytes = vec![1, 34, 0];
        bytes.extend(b"d/00c3a0f5c0f6a767cc908d480f302ebb");
        assert_eq!(decode(&bytes, b"").unwrap(), vec![file("", "d/00c3a0f5c0f6a767cc908d480f302ebb")]);
    }

    #[test]
    fn three_file_example_with_base_paths() {
        // format-notes §2.5: prefixes 18 and 14, suffixes 50/32/36, bases 16/16/16.
        let a = "a".repeat(32);
        let b = "b".repeat(32);
        let mut bytes = vec![3, 18, 14, 50, 32, 36, 16, 16, 16];
        bytes.extend(format!("ocdbt.process_0/d/{a}").as_bytes());
        bytes.extend(b.as_bytes());
        bytes.extend(format!("1/d/{a}").as_bytes());
        let files = decode(&bytes, b"").unwrap();
        assert_eq!(
            files,
            vec![
                file("ocdbt.process_0/", &format!("d/{a}")),
                file("ocdbt.process_0/", &format!("d/{b}")),
                file("ocdbt.process_1/", &format!("d/{a}")),
            ]
        );
        // With a transitive path, base paths accumulate and relative paths do not.
        let files = decode(&bytes, b"sub/").unwrap();
        assert_eq!(files[2], file("sub/ocdbt.process_1/", &format!("d/{a}")));
        assert_eq!(files[2].path(&ORIGIN).unwrap(), format!("sub/ocdbt.process_1/d/{a}"));
    }

    #[test]
    fn shorter_shared_base_path_is_legal() {
        // ("ab/", "x") then ("a", "q/y"): prefix 1 = the second base path's length.
        let bytes = [2, 1, 4, 3, 3, 1, b'a', b'b', b'/', b'x', b'q', b'/', b'y'];
        assert_eq!(decode(&bytes, b"").unwrap(), vec![file("ab/", "x"), file("a", "q/y")]);
    }

    #[test]
    fn malformed_tables_are_rejected() {
        // prefix longer than the previous path
        let err = decode(&[2, 5, 1, 1, 0, 0, b'a', b'b'], b"").unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Corrupt);
        // base path longer than the path
        assert_eq!(decode(&[1, 1, 2, b'a'], b"").unwrap_err().kind(), ErrorKind::Corrupt);
        // prefix runs past different base paths
        assert_eq!(decode(&[2, 2, 2, 1, 1, 2, b'a', b'b', b'c'], b"").unwrap_err().kind(), ErrorKind::Corrupt);
        // truncated suffix bytes
        assert_eq!(decode(&[1, 3, 0, b'a'], b"").unwrap_err().kind(), ErrorKind::Truncated);
        // huge count
        let mut huge = vec![0xff; 9];
        huge.push(0x01);
        assert_eq!(decode(&huge, b"").unwrap_err().kind(), ErrorKind::Truncated);
        // path longer than 65535 with the transitive part
        let err = decode(&[1, 4, 0, b'a', b'b', b'c', b'd'], &[b'x'; 65533]).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Limit);
    }

    #[test]
    fn unsafe_paths_are_rejected_when_used() {
        for (base, rel) in [
            ("", "../escape"),
            ("../", "d/x"),
            ("", "/etc/passwd"),
            ("", ""),
            ("a//", "b"),
            ("", "c:/x"),
            ("", "a\\b"),
            ("", "a/./b"),
        ] {
            let err = file(base, rel).path(&ORIGIN).unwrap_err();
            assert_eq!(err.kind(), ErrorKind::UnsafePath, "{base:?} {rel:?}");
            assert!(err.to_string().starts_with("db/d/file: data file path"), "{err}");
        }
        let bad_utf8 = DataFile { base_path: vec![], relative_path: vec![0xff] };
        assert_eq!(bad_utf8.path(&ORIGIN).unwrap_err().kind(), ErrorKind::UnsafePath);
    }
}
