//! The `.npy` format (version 1.0), written exactly as `numpy.save` writes it.
//!
//! Dtypes numpy has no native code for are written as same-width bit
//! patterns (see [`DType::npy_descr`]); this is the `orbax cat --npy`
//! convention of the conformance protocol.

use crate::dtype::DType;

const MAGIC: &[u8] = b"\x93NUMPY";

/// The header numpy writes for an array of `descr` and `shape`, padded with
/// spaces and a newline so the data starts at a multiple of 64 bytes.
pub fn header(descr: &str, shape: &[u64]) -> Vec<u8> {
    let shape = match shape {
        [] => "()".to_string(),
        [one] => format!("({one},)"),
        many => format!("({})", many.iter().map(u64::to_string).collect::<Vec<_>>().join(", ")),
    };
    let mut dict = format!("{{'descr': '{descr}', 'fortran_order': False, 'shape': {shape}, }}");
    let unpadded = MAGIC.len() + 2 + 2 + dict.len() + 1;
    dict.push_str(&" ".repeat(unpadded.next_multiple_of(64) - unpadded));
    dict.push('\n');
    let mut out = Vec::with_capacity(MAGIC.len() + 4 + dict.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&[1, 0]);
    out.extend_from_slice(&(dict.len() as u16).to_le_bytes());
    out.extend_from_slice(dict.as_bytes());
    out
}

/// A complete `.npy` file for elements of `dtype` in memory form.
pub fn encode(dtype: DType, shape: &[u64], data: &[u8]) -> Vec<u8> {
    let mut out = header(dtype.npy_descr(), shape);
    out.extend_from_slice(data);
    out
}

/// A `.npy` file holding a 0-d numpy unicode string (`<U{n}`, UTF-32LE).
pub fn encode_str(s: &str) -> Vec<u8> {
    let chars: Vec<char> = s.chars().collect();
    let mut out = header(&format!("<U{}", chars.len().max(1)), &[]);
    for c in &chars {
        out.extend_from_slice(&(*c as u32).to_le_bytes());
    }
    if chars.is_empty() {
        out.extend_from_slice(&[0; 4]);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_matches_numpy() {
        // numpy.save(f, np.zeros(3, np.float32)) starts with this 128-byte header.
        let h = header("<f4", &[3]);
        assert_eq!(h.len() % 64, 0);
        let text = std::str::from_utf8(&h[10..]).unwrap();
        assert!(text.starts_with("{'descr': '<f4', 'fortran_order': False, 'shape': (3,), }"));
        assert!(text.ends_with(" \n"));
        assert_eq!(u16::from_le_bytes([h[8], h[9]]) as usize, h.len() - 10);
        assert!(std::str::from_utf8(&header("|b1", &[])[10..]).unwrap().contains("'shape': ()"));
        assert!(std::str::from_utf8(&header("<u2", &[2, 3])[10..]).unwrap().contains("'shape': (2, 3)"));
    }
}

/// A `.npy` file's header: element type and shape, and where the data starts.
#[derive(Debug, Clone, PartialEq)]
pub struct NpyHeader {
    /// The numpy `descr`, e.g. `<f4`.
    pub descr: String,
    /// The shape.
    pub shape: Vec<u64>,
    /// Byte offset of the first element.
    pub data_offset: usize,
}

/// Parses the header of a `.npy` file (format versions 1–3, C order only).
pub fn parse_header(bytes: &[u8]) -> Result<NpyHeader, String> {
    if bytes.len() < 10 || &bytes[..6] != MAGIC {
        return Err("not a .npy file (bad magic)".into());
    }
    let (len, start) = match bytes[6] {
        1 => (u16::from_le_bytes([bytes[8], bytes[9]]) as usize, 10),
        2 | 3 if bytes.len() >= 12 => (u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]) as usize, 12),
        v => return Err(format!("unsupported .npy version {v}")),
    };
    let text = bytes.get(start..start + len).ok_or("truncated .npy header")?;
    let text = std::str::from_utf8(text).map_err(|_| "non-UTF-8 .npy header")?;
    let field = |name: &str| -> Result<&str, String> {
        let at = text.find(&format!("'{name}':")).ok_or_else(|| format!(".npy header lacks '{name}'"))?;
        Ok(text[at + name.len() + 3..].trim_start())
    };
    let descr = field("descr")?;
    let descr = descr.strip_prefix('\'').and_then(|d| d.split('\'').next()).ok_or("bad 'descr' in .npy header")?;
    if field("fortran_order")?.starts_with("True") {
        return Err("Fortran-order .npy arrays are not supported".into());
    }
    let shape = field("shape")?;
    let shape = shape.strip_prefix('(').and_then(|s| s.split(')').next()).ok_or("bad 'shape' in .npy header")?;
    let shape = shape
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|d| d.trim_end_matches('L').parse::<u64>().map_err(|_| format!("bad dimension {d:?} in .npy header")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(NpyHeader { descr: descr.to_string(), shape, data_offset: start + len })
}

#[cfg(test)]
mod parse_tests {
    use super::*;

    #[test]
    fn header_round_trips() {
        let file = encode(DType::Float32, &[2, 3], &[0u8; 24]);
        let h = parse_header(&file).unwrap();
        assert_eq!(h, NpyHeader { descr: "<f4".into(), shape: vec![2, 3], data_offset: 128 });
        assert_eq!(parse_header(&encode(DType::Bool, &[], &[1])).unwrap().shape, Vec::<u64>::new());
        assert!(parse_header(b"garbage").is_err());
    }
}
