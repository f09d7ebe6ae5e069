//! numpy-style basic slices of an array's index domain (`"0:8,:"`), as the
//! CLI's `cat --slice` takes them.

use std::ops::Range;

/// A parsed slice: the region it selects and the shape of the result
/// (dimensions indexed by a single integer are dropped, as in numpy).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Slice {
    /// `start..end` per dimension of the array.
    pub region: Vec<Range<u64>>,
    /// The shape of the selected elements.
    pub shape: Vec<u64>,
}

/// Parses `spec`, comma-separated per dimension `a:b`, `a:`, `:b`, `:` or a
/// single index `a` (negative values count from the end, out-of-range
/// bounds of `a:b` are clipped, as numpy does; steps are not supported), for
/// an array of `shape`. Dimensions left out are taken whole.
///
/// ```
/// let s = orbax::slice::parse_slice("0:8, -1", &[10, 4]).unwrap();
/// assert_eq!((s.region, s.shape), (vec![0..8, 3..4], vec![8]));
/// ```
pub fn parse_slice(spec: &str, shape: &[u64]) -> Result<Slice, String> {
    let parts: Vec<&str> = if spec.trim().is_empty() { vec![] } else { spec.split(',').map(str::trim).collect() };
    if parts.len() > shape.len() {
        return Err(format!("slice {spec:?} has {} entries for an array of rank {}", parts.len(), shape.len()));
    }
    let (mut region, mut out) = (Vec::with_capacity(shape.len()), Vec::with_capacity(shape.len()));
    for (d, &n) in shape.iter().enumerate() {
        let part = parts.get(d).copied().unwrap_or(":");
        let bad = |what: &str| format!("slice {spec:?}, dimension {d} ({part:?}): {what}");
        let number = |s: &str| -> Result<Option<i64>, String> {
            if s.is_empty() {
                return Ok(None);
            }
            s.parse::<i64>().map(Some).map_err(|_| bad("expected an integer, `a:b` or `:`"))
        };
        let resolve = |i: i64| if i < 0 { i + n as i64 } else { i };
        match part.split_once(':') {
            Some((a, b)) => {
                if b.contains(':') {
                    return Err(bad("steps are not supported"));
                }
                let clip = |i: i64| resolve(i).clamp(0, n as i64) as u64;
                let start = number(a)?.map_or(0, clip);
                let end = number(b)?.map_or(n, clip).max(start);
                region.push(start..end);
                out.push(end - start);
            }
            None => {
                let i = number(part)?.ok_or_else(|| bad("empty index"))?;
                let at = resolve(i);
                if at < 0 || at >= n as i64 {
                    return Err(bad(&format!("index {i} is out of bounds for size {n}")));
                }
                region.push(at as u64..at as u64 + 1);
            }
        }
    }
    Ok(Slice { region, shape: out })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_basic_slices() {
        let s = parse_slice("0:8,:", &[16, 4]).unwrap();
        assert_eq!((s.region, s.shape), (vec![0..8, 0..4], vec![8, 4]));
        let s = parse_slice("-3:, 1", &[16, 4]).unwrap();
        assert_eq!((s.region, s.shape), (vec![13..16, 1..2], vec![3]));
        let s = parse_slice("5:100", &[16, 4]).unwrap();
        assert_eq!((s.region, s.shape), (vec![5..16, 0..4], vec![11, 4]));
        let s = parse_slice("9:2", &[16]).unwrap();
        assert_eq!((s.region[0].clone(), s.shape), (9..9, vec![0]));
        let s = parse_slice("", &[2, 3]).unwrap();
        assert_eq!(s.shape, [2, 3]);
        assert_eq!(
            parse_slice(":, :, :", &[2, 3]).unwrap_err(),
            "slice \":, :, :\" has 3 entries for an array of rank 2"
        );
        assert!(parse_slice("16", &[16]).unwrap_err().contains("index 16 is out of bounds for size 16"));
        assert!(parse_slice("0:4:2", &[16]).unwrap_err().contains("steps are not supported"));
        assert!(parse_slice("a:", &[16]).unwrap_err().contains("expected an integer"));
    }
}
