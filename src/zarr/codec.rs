//! Decoding one stored chunk (or shard) into its elements.
//!
//! Pure functions over bytes: the caller fetched the value and knows its key
//! (used only for error messages).

use super::metadata::{ArrayToBytes, BytesCodec, CodecChain, Sharding};
use super::ZarrError;
use crate::pytree::num_elements;

/// Marks an inner chunk that was never written (offset and length both all ones).
pub const MISSING_INNER_CHUNK: u64 = u64::MAX;

/// Decodes a chunk value into `out` (sized for the full chunk shape),
/// filling missing inner chunks with `fill` (one element).
pub fn decode_chunk(
    key: &str,
    value: &[u8],
    chain: &CodecChain,
    chunk_shape: &[u64],
    item_size: usize,
    fill: &[u8],
    out: &mut [u8],
) -> Result<(), ZarrError> {
    let raw_len = out.len();
    let decoded = undo_bytes_codecs(
        key,
        value,
        &chain.bytes_to_bytes,
        match chain.array_to_bytes {
            ArrayToBytes::Bytes { .. } => Some(raw_len),
            ArrayToBytes::Sharding(_) => None,
        },
    )?;
    match &chain.array_to_bytes {
        ArrayToBytes::Bytes { big_endian } => {
            if decoded.len() != raw_len {
                return Err(ZarrError::ChunkSize {
                    key: key.to_string(),
                    expected: raw_len as u64,
                    found: decoded.len() as u64,
                });
            }
            out.copy_from_slice(&decoded);
            if *big_endian {
                swap_bytes(out, item_size);
            }
            Ok(())
        }
        ArrayToBytes::Sharding(sharding) => decode_shard(key, &decoded, sharding, chunk_shape, item_size, fill, out),
    }
}

fn swap_bytes(data: &mut [u8], item_size: usize) {
    if item_size > 1 {
        for element in data.chunks_exact_mut(item_size) {
            element.reverse();
        }
    }
}

/// Undoes the bytes→bytes codecs (in reverse order). `expected` is the
/// exact decoded length when known, which bounds decompression.
fn undo_bytes_codecs<'a>(
    key: &str,
    value: &'a [u8],
    codecs: &[BytesCodec],
    expected: Option<usize>,
) -> Result<std::borrow::Cow<'a, [u8]>, ZarrError> {
    let mut data = std::borrow::Cow::Borrowed(value);
    for (i, codec) in codecs.iter().enumerate().rev() {
        match codec {
            BytesCodec::Crc32c => {
                let split = data.len().checked_sub(4).ok_or_else(|| ZarrError::Corrupt {
                    key: key.to_string(),
                    what: "value shorter than its crc32c checksum".into(),
                })?;
                let stored = u32::from_le_bytes(data[split..].try_into().expect("4 bytes"));
                let computed = crc32c::crc32c(&data[..split]);
                if stored != computed {
                    return Err(ZarrError::Checksum {
                        key: key.to_string(),
                        what: "chunk crc32c".into(),
                        stored,
                        computed,
                    });
                }
                data = match data {
                    std::borrow::Cow::Borrowed(b) => std::borrow::Cow::Borrowed(&b[..split]),
                    std::borrow::Cow::Owned(mut v) => {
                        v.truncate(split);
                        std::borrow::Cow::Owned(v)
                    }
                };
            }
            compression => {
                // The last codec to undo knows the exact size; earlier ones get a generous cap.
                let cap = match expected {
                    Some(n) if codecs[..i].iter().all(|c| *c == BytesCodec::Crc32c) => n + 4 * codecs[..i].len(),
                    _ => data.len().saturating_mul(64).max(1 << 20),
                };
                let inflated = match compression {
                    BytesCodec::Zstd => zstd_decompress(key, &data, cap)?,
                    BytesCodec::Gzip => inflate(key, flate2::read::GzDecoder::new(&data[..]), cap)?,
                    BytesCodec::Zlib => inflate(key, flate2::read::ZlibDecoder::new(&data[..]), cap)?,
                    BytesCodec::Crc32c => unreachable!("handled above"),
                };
                data = std::borrow::Cow::Owned(inflated);
            }
        }
    }
    Ok(data)
}

/// Reads a deflate stream to its end, refusing to produce more than `cap` bytes.
fn inflate(key: &str, reader: impl std::io::Read, cap: usize) -> Result<Vec<u8>, ZarrError> {
    use std::io::Read;
    let mut out = Vec::new();
    reader
        .take(cap as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| ZarrError::Corrupt { key: key.to_string(), what: format!("deflate: {e}") })?;
    if out.len() > cap {
        return Err(ZarrError::Corrupt {
            key: key.to_string(),
            what: format!("inflates to more than the {cap} bytes expected"),
        });
    }
    Ok(out)
}

/// Decompresses one zstd frame, refusing to produce more than `cap` bytes.
pub fn zstd_decompress(key: &str, data: &[u8], cap: usize) -> Result<Vec<u8>, ZarrError> {
    let corrupt = |what: String| ZarrError::Corrupt { key: key.to_string(), what };
    if let Ok(Some(size)) = zstd::zstd_safe::get_frame_content_size(data) {
        if size > cap as u64 {
            return Err(corrupt(format!("zstd frame declares {size} bytes, more than the {cap} expected")));
        }
    }
    let mut out = Vec::new();
    out.try_reserve_exact(cap)
        .map_err(|_| ZarrError::Limit { file: key.to_string(), what: format!("cannot allocate {cap} bytes") })?;
    let mut decompressor = zstd::bulk::Decompressor::new().map_err(|e| corrupt(format!("zstd: {e}")))?;
    let n = decompressor.decompress_to_buffer(data, &mut out).map_err(|e| corrupt(format!("zstd: {e}")))?;
    out.truncate(n);
    Ok(out)
}

fn decode_shard(
    key: &str,
    shard: &[u8],
    sharding: &Sharding,
    shard_shape: &[u64],
    item_size: usize,
    fill: &[u8],
    out: &mut [u8],
) -> Result<(), ZarrError> {
    let index = ShardIndex::parse(key, shard, sharding, shard_shape)?;
    let inner_shape = &sharding.inner_chunk_shape;
    let inner_elements = num_elements(inner_shape).expect("checked at parse") as usize;
    let inner_len = inner_elements * item_size;
    let grid: Vec<u64> = shard_shape.iter().zip(inner_shape).map(|(s, i)| s / i).collect();
    let single = index.entries.len() == 1;
    let mut scratch = if single { Vec::new() } else { vec![0u8; inner_len] };
    for (n, entry) in index.entries.iter().enumerate() {
        let target: &mut [u8] = if single { &mut *out } else { &mut scratch };
        match entry {
            None => fill_with(target, fill),
            Some((offset, len)) => {
                let bytes = &shard[*offset as usize..(*offset + *len) as usize];
                decode_chunk(key, bytes, &sharding.inner, inner_shape, item_size, fill, target)?;
            }
        }
        if !single {
            let position = unravel(n as u64, &grid);
            let origin: Vec<u64> = position.iter().zip(inner_shape).map(|(p, i)| p * i).collect();
            let zero = vec![0; inner_shape.len()];
            let from = Region { shape: inner_shape, origin: &zero };
            copy_block(&scratch, from, out, Region { shape: shard_shape, origin: &origin }, inner_shape, item_size);
        }
    }
    Ok(())
}

/// The index of a `sharding_indexed` shard: one `(offset, length)` per inner
/// chunk in C order, `None` for chunks never written.
#[derive(Debug, PartialEq)]
pub struct ShardIndex {
    /// Entries in C order over the grid of inner chunks.
    pub entries: Vec<Option<(u64, u64)>>,
}

impl ShardIndex {
    /// Number of bytes the index occupies for `n` inner chunks.
    pub fn encoded_len(n: usize, crc32c: bool) -> usize {
        16 * n + if crc32c { 4 } else { 0 }
    }

    /// Reads and checks the index of `shard`.
    pub fn parse(key: &str, shard: &[u8], sharding: &Sharding, shard_shape: &[u64]) -> Result<Self, ZarrError> {
        let n = shard_shape.iter().zip(&sharding.inner_chunk_shape).map(|(s, i)| s / i).product::<u64>() as usize;
        let index_len = Self::encoded_len(n, sharding.index.crc32c);
        if shard.len() < index_len {
            return Err(ZarrError::Corrupt {
                key: key.to_string(),
                what: format!("shard of {} bytes is shorter than its {index_len}-byte index", shard.len()),
            });
        }
        let (index, data) = if sharding.index_at_end {
            (&shard[shard.len() - index_len..], 0..(shard.len() - index_len) as u64)
        } else {
            (&shard[..index_len], index_len as u64..shard.len() as u64)
        };
        Self::parse_index(key, index, sharding, data)
    }

    /// Reads and checks the index bytes of a shard (exactly
    /// [`ShardIndex::encoded_len`] of them) whose inner chunks must lie in
    /// the byte range `data` of the shard.
    pub fn parse_index(
        key: &str,
        index: &[u8],
        sharding: &Sharding,
        data: std::ops::Range<u64>,
    ) -> Result<Self, ZarrError> {
        let n = (index.len() - if sharding.index.crc32c { 4 } else { 0 }) / 16;
        let (data_start, data_end) = (data.start, data.end);
        let table = if sharding.index.crc32c {
            let (table, crc) = index.split_at(16 * n);
            let stored = u32::from_le_bytes(crc.try_into().expect("4 bytes"));
            let computed = crc32c::crc32c(table);
            if stored != computed {
                return Err(ZarrError::Checksum {
                    key: key.to_string(),
                    what: "shard index crc32c".into(),
                    stored,
                    computed,
                });
            }
            table
        } else {
            index
        };
        let word = |b: &[u8]| {
            let a: [u8; 8] = b.try_into().expect("8 bytes");
            if sharding.index.big_endian {
                u64::from_be_bytes(a)
            } else {
                u64::from_le_bytes(a)
            }
        };
        let mut entries = Vec::with_capacity(n);
        for (i, pair) in table.chunks_exact(16).enumerate() {
            let (offset, len) = (word(&pair[..8]), word(&pair[8..]));
            if offset == MISSING_INNER_CHUNK && len == MISSING_INNER_CHUNK {
                entries.push(None);
                continue;
            }
            let end = offset.checked_add(len);
            if offset < data_start || end.is_none_or(|e| e > data_end) {
                return Err(ZarrError::Corrupt {
                    key: key.to_string(),
                    what: format!("shard index entry {i} ({offset}, {len}) lies outside the shard's data (bytes {data_start}..{data_end})"),
                });
            }
            entries.push(Some((offset, len)));
        }
        Ok(ShardIndex { entries })
    }
}

/// Fills `out` with repeated copies of one element.
pub fn fill_with(out: &mut [u8], fill: &[u8]) {
    if fill.iter().all(|&b| b == 0) {
        out.fill(0);
    } else {
        for element in out.chunks_exact_mut(fill.len()) {
            element.copy_from_slice(fill);
        }
    }
}

/// The C-order coordinates of flat index `n` in `grid`.
pub fn unravel(mut n: u64, grid: &[u64]) -> Vec<u64> {
    let mut position = vec![0; grid.len()];
    for (p, g) in position.iter_mut().zip(grid).rev() {
        *p = n % g;
        n /= g;
    }
    position
}

/// Where a block sits inside a C-order array: the array's shape and the
/// block's first element.
#[derive(Debug, Clone, Copy)]
pub struct Region<'a> {
    /// Shape of the whole array.
    pub shape: &'a [u64],
    /// Coordinates of the block's first element.
    pub origin: &'a [u64],
}

/// Copies a block of `extent` elements from `src` (at `from`) into `dst` (at
/// `to`), both C-order arrays of `item_size`-byte elements.
pub fn copy_block(src: &[u8], from: Region, dst: &mut [u8], to: Region, extent: &[u64], item_size: usize) {
    let rank = extent.len();
    if rank == 0 {
        dst[..item_size].copy_from_slice(&src[..item_size]);
        return;
    }
    if extent.contains(&0) {
        return;
    }
    let strides = |shape: &[u64]| {
        let mut s = vec![item_size as u64; shape.len()];
        for d in (0..shape.len().saturating_sub(1)).rev() {
            s[d] = s[d + 1] * shape[d + 1];
        }
        s
    };
    let (src_strides, dst_strides) = (strides(from.shape), strides(to.shape));
    let row = (extent[rank - 1] as usize) * item_size;
    let outer: Vec<u64> = extent[..rank - 1].to_vec();
    let rows = outer.iter().product::<u64>();
    let base = |origin: &[u64], strides: &[u64]| -> u64 { origin.iter().zip(strides).map(|(o, s)| o * s).sum() };
    let (src_base, dst_base) = (base(from.origin, &src_strides), base(to.origin, &dst_strides));
    for r in 0..rows {
        let position = unravel(r, &outer);
        let src_off: u64 = src_base + position.iter().zip(&src_strides).map(|(p, s)| p * s).sum::<u64>();
        let dst_off: u64 = dst_base + position.iter().zip(&dst_strides).map(|(p, s)| p * s).sum::<u64>();
        dst[dst_off as usize..dst_off as usize + row].copy_from_slice(&src[src_off as usize..src_off as usize + row]);
    }
}

#[cfg(test)]
mod tests {
    use super::super::metadata::ShardIndexCodecs;
    use super::*;

    fn sharding(inner: &[u64]) -> Sharding {
        Sharding {
            inner_chunk_shape: inner.to_vec(),
            inner: Box::new(CodecChain {
                array_to_bytes: ArrayToBytes::Bytes { big_endian: false },
                bytes_to_bytes: vec![],
            }),
            index: ShardIndexCodecs { big_endian: false, crc32c: true },
            index_at_end: true,
        }
    }

    fn shard(chunks: &[Option<&[u8]>]) -> Vec<u8> {
        let mut data = Vec::new();
        let mut index = Vec::new();
        for c in chunks {
            match c {
                Some(bytes) => {
                    index.extend((data.len() as u64).to_le_bytes());
                    index.extend((bytes.len() as u64).to_le_bytes());
                    data.extend_from_slice(bytes);
                }
                None => index.extend([0xff; 16]),
            }
        }
        let crc = crc32c::crc32c(&index);
        data.extend(index);
        data.extend(crc.to_le_bytes());
        data
    }

    #[test]
    fn shard_with_four_inner_chunks_and_a_missing_one() {
        // 4x4 shard of u8 made of 2x2 chunks (0,0) (0,1) (1,0) missing (1,1).
        let value = shard(&[Some(&[1, 2, 5, 6]), Some(&[3, 4, 7, 8]), None, Some(&[11, 12, 15, 16])]);
        let chain = CodecChain { array_to_bytes: ArrayToBytes::Sharding(sharding(&[2, 2])), bytes_to_bytes: vec![] };
        let mut out = vec![0u8; 16];
        decode_chunk("k", &value, &chain, &[4, 4], 1, &[99], &mut out).unwrap();
        assert_eq!(out, vec![1, 2, 3, 4, 5, 6, 7, 8, 99, 99, 11, 12, 99, 99, 15, 16]);
    }

    #[test]
    fn corrupt_index_is_detected() {
        let mut value = shard(&[Some(&[1, 2, 3, 4])]);
        let n = value.len();
        value[n - 10] ^= 1;
        let chain = CodecChain { array_to_bytes: ArrayToBytes::Sharding(sharding(&[4])), bytes_to_bytes: vec![] };
        let err = decode_chunk("a/c/0", &value, &chain, &[4], 1, &[0], &mut [0u8; 4]).unwrap_err();
        assert!(matches!(err, ZarrError::Checksum { .. }), "{err}");
        let err = decode_chunk("a/c/0", &value[..10], &chain, &[4], 1, &[0], &mut [0u8; 4]).unwrap_err();
        assert!(matches!(err, ZarrError::Corrupt { .. }), "{err}");
    }

    #[test]
    fn zstd_output_is_bounded() {
        let frame = zstd::bulk::compress(&[7u8; 1000], 3).unwrap();
        assert_eq!(zstd_decompress("k", &frame, 1000).unwrap(), vec![7u8; 1000]);
        assert!(zstd_decompress("k", &frame, 999).is_err());
        assert!(zstd_decompress("k", b"garbage", 10).is_err());
    }

    #[test]
    fn copy_block_places_edge_chunk() {
        let src = [1u8, 2, 3, 4];
        let mut dst = [0u8; 9];
        let from = Region { shape: &[2, 2], origin: &[0, 0] };
        copy_block(&src, from, &mut dst, Region { shape: &[3, 3], origin: &[2, 2] }, &[1, 1], 1);
        assert_eq!(dst, [0, 0, 0, 0, 0, 0, 0, 0, 1]);
    }
}
