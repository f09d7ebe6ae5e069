//! Orbax's choice of chunk shape for an array being saved.
//!
//! Orbax stores each array with one zarr chunk per write shape (the shape
//! each process writes, the full shape for host arrays) unless a byte limit
//! applies: the caller's `chunk_byte_size`, or the OCDBT target data-file
//! size when the write shape exceeds it. Under a limit it shrinks the chunk
//! greedily, always to a divisor of the write shape: requested `shard_axes`
//! dimensions go down to 1 first, then the largest dimension that is already
//! split (dimensions where the write shape differs from the global shape
//! count as split) shrinks to its next smaller divisor, falling back to all
//! dimensions when no split dimension can shrink further. This
//! mirrors `choose_chunk_shape` of Orbax 0.12.8 (`_src/arrays/subchunking.py`),
//! checked against that function on 400 cases; matching it is what makes our
//! `zarr.json` identical to Orbax's.

/// Divisors of `n` in increasing order (`[1]` for 0, which Orbax clamps to 1).
fn divisors(n: u64) -> Vec<u64> {
    let n = n.max(1);
    let mut small = Vec::new();
    let mut large = Vec::new();
    let mut i = 1;
    while i * i <= n {
        if n % i == 0 {
            small.push(i);
            if i != n / i {
                large.push(n / i);
            }
        }
        i += 1;
    }
    small.extend(large.into_iter().rev());
    small
}

/// The chunk shape for an array of `global_shape` written in pieces of
/// `write_shape`, elements of `item_size` bytes, under an optional byte
/// limit, with `shard_axes` split all the way to 1 (Orbax 0.12.8 behaviour).
///
/// Errors, as Orbax's do, when a shard axis is out of range or the byte
/// limit is smaller than one element.
pub fn choose_chunk_shape(
    global_shape: &[u64],
    write_shape: &[u64],
    item_size: usize,
    target_bytes: Option<u64>,
    shard_axes: &[usize],
) -> Result<Vec<u64>, String> {
    let write: Vec<u64> = write_shape.iter().map(|&d| d.max(1)).collect();
    if target_bytes.is_none() && shard_axes.is_empty() {
        return Ok(write);
    }
    let rank = write.len();
    if let Some(axis) = shard_axes.iter().find(|&&a| a >= rank) {
        return Err(format!("shard axis {axis} is not less than the rank {rank}"));
    }
    let mut split: Vec<bool> = global_shape.iter().zip(&write).map(|(g, w)| g != w).collect();
    // factors[i]: remaining divisors of write[i]; the chunk dimension is the last one.
    let mut factors: Vec<Vec<u64>> = write.iter().map(|&d| divisors(d)).collect();
    let mut total: u64 = write.iter().product();
    let reduce = |i: usize, factors: &mut Vec<Vec<u64>>, total: &mut u64, split: &mut Vec<bool>| {
        let current = factors[i].pop().expect("a dimension with more than one divisor");
        let next = *factors[i].last().expect("1 is always a divisor");
        *total = *total / current * next;
        split[i] = true;
    };
    for &axis in shard_axes {
        while factors[axis].len() > 1 {
            reduce(axis, &mut factors, &mut total, &mut split);
        }
    }
    let current = |factors: &Vec<Vec<u64>>| factors.iter().map(|f| *f.last().expect("non-empty")).collect::<Vec<u64>>();
    let Some(target_bytes) = target_bytes else {
        return Ok(current(&factors));
    };
    if target_bytes < item_size as u64 {
        return Err(format!("chunk_byte_size {target_bytes} is smaller than one {item_size}-byte element"));
    }
    let target_elements = target_bytes / item_size as u64;
    while total > target_elements {
        // Shrink the largest dimension that is already split; once none can
        // shrink, every dimension becomes a candidate.
        let mut best: Option<usize> = None;
        let mut best_size = 1;
        for i in 0..rank {
            let size = *factors[i].last().expect("non-empty");
            if split[i] && size > best_size {
                best_size = size;
                best = Some(i);
            }
        }
        match best {
            Some(i) => reduce(i, &mut factors, &mut total, &mut split),
            None => split.iter_mut().for_each(|s| *s = true),
        }
    }
    Ok(current(&factors))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_limit_keeps_the_write_shape() {
        assert_eq!(choose_chunk_shape(&[8, 4], &[8, 4], 4, None, &[]).unwrap(), vec![8, 4]);
        assert_eq!(choose_chunk_shape(&[8, 0], &[8, 0], 4, None, &[]).unwrap(), vec![8, 1]);
        assert_eq!(choose_chunk_shape(&[], &[], 4, None, &[]).unwrap(), Vec::<u64>::new());
    }

    #[test]
    fn matches_orbax_examples() {
        // float32 (64, 256) with chunk_byte_size 4096 → (32, 32) (format-spec/03-zarr.md).
        assert_eq!(choose_chunk_shape(&[64, 256], &[64, 256], 4, Some(4096), &[]).unwrap(), vec![32, 32]);
        // Already-sharded dimension 0 is split first.
        assert_eq!(choose_chunk_shape(&[16, 8], &[4, 8], 4, Some(32), &[]).unwrap(), vec![1, 8]);
        // A byte limit below one element is an error, as in Orbax.
        assert!(choose_chunk_shape(&[3, 5], &[3, 5], 8, Some(1), &[]).is_err());
    }

    #[test]
    fn shard_axes_are_split_first() {
        assert_eq!(choose_chunk_shape(&[64, 64], &[64, 64], 1, Some(2048), &[1]).unwrap(), vec![64, 1]);
        assert!(choose_chunk_shape(&[4], &[4], 1, None, &[1]).is_err());
    }

    #[test]
    fn divisors_are_sorted() {
        assert_eq!(divisors(12), vec![1, 2, 3, 4, 6, 12]);
        assert_eq!(divisors(1), vec![1]);
        assert_eq!(divisors(0), vec![1]);
    }
}

#[cfg(test)]
mod orbax_cases {
    use super::choose_chunk_shape;

    /// `tests/data/chunk_shapes.json` holds Orbax 0.12.8's own answers
    /// (generated by `conformance/generate/make_chunk_cases.py`).
    #[test]
    fn agrees_with_orbax_on_400_cases() {
        let text = include_str!("../tests/data/chunk_shapes.json");
        let cases: Vec<serde_json::Value> = serde_json::from_str(text).unwrap();
        let u64s =
            |v: &serde_json::Value| v.as_array().unwrap().iter().map(|x| x.as_u64().unwrap()).collect::<Vec<_>>();
        for case in &cases {
            let axes: Vec<usize> = u64s(&case["shard_axes"]).into_iter().map(|a| a as usize).collect();
            let got = choose_chunk_shape(
                &u64s(&case["global_shape"]),
                &u64s(&case["write_shape"]),
                case["itemsize"].as_u64().unwrap() as usize,
                Some(case["target_bytes"].as_u64().unwrap()),
                &axes,
            )
            .unwrap();
            assert_eq!(got, u64s(&case["chunk_shape"]), "{case}");
        }
        assert_eq!(cases.len(), 400);
    }
}
