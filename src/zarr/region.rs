//! Reading a rectangular region of an array: only the chunks that intersect
//! it are fetched, and inside a `sharding_indexed` shard only the byte
//! ranges of the intersecting inner chunks (found through the shard index),
//! with nearby ranges coalesced into one read.

use std::ops::Range;

use super::codec::{decode_chunk, fill_with, unravel};
use super::metadata::{ArrayToBytes, Sharding};
use super::{copy_block, MissingChunks, Region, ShardIndex, ZarrArray, ZarrError};
use crate::kvstore::KvSource;
use crate::pytree::{num_elements, Array};
use crate::storage::coalesce_ranges;

/// Byte ranges inside one shard closer than this are read together.
pub const COALESCE_GAP_BYTES: u64 = 64 << 10;

/// How a region read fetches data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RegionRead {
    /// What a chunk that was never stored reads as.
    pub missing: MissingChunks,
    /// Upper bound on fetched-but-not-yet-decoded bytes held at once, like
    /// Orbax's `read_concurrent_bytes` (`None`: unbounded). A single chunk
    /// (or coalesced byte range) larger than the bound is still read, alone.
    pub max_bytes_in_flight: Option<u64>,
}

/// What a region read did, for tests and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RegionStats {
    /// Bytes fetched from the key-value source (values, index and ranges).
    pub bytes_fetched: u64,
    /// The most fetched bytes held at once before decoding.
    pub peak_bytes_in_flight: u64,
    /// Chunks (inner chunks, for a sharded array) decoded.
    pub chunks_decoded: u64,
}

/// The chunk-grid box `[first, last]` (inclusive) of chunks of `chunk` elements intersecting `region`.
fn chunk_box(region: &[Range<u64>], chunk: &[u64]) -> (Vec<u64>, Vec<u64>) {
    let first = region.iter().zip(chunk).map(|(r, c)| r.start / c).collect();
    let count = region.iter().zip(chunk).map(|(r, c)| (r.end - 1) / c - r.start / c + 1).collect();
    (first, count)
}

/// Copies the part of a decoded block (whose element `[0,…]` sits at
/// `origin` in the array and which has shape `block`) lying inside `region`
/// into `out`, the region's buffer.
fn copy_intersection(block: &[u8], origin: &[u64], shape: &[u64], region: &[Range<u64>], out: &mut [u8], item: usize) {
    let start: Vec<u64> = origin.iter().zip(region).map(|(o, r)| (*o).max(r.start)).collect();
    let end: Vec<u64> = origin.iter().zip(shape).zip(region).map(|((o, s), r)| (o + s).min(r.end)).collect();
    if start.iter().zip(&end).any(|(s, e)| s >= e) {
        return;
    }
    let extent: Vec<u64> = start.iter().zip(&end).map(|(s, e)| e - s).collect();
    let from_origin: Vec<u64> = start.iter().zip(origin).map(|(s, o)| s - o).collect();
    let to_origin: Vec<u64> = start.iter().zip(region).map(|(s, r)| s - r.start).collect();
    let region_shape: Vec<u64> = region.iter().map(|r| r.end - r.start).collect();
    copy_block(
        block,
        Region { shape, origin: &from_origin },
        out,
        Region { shape: &region_shape, origin: &to_origin },
        &extent,
        item,
    );
}

impl ZarrArray {
    /// Reads the elements of `region` (`start..end` per dimension) of the
    /// array, fetching only the chunks that intersect it (see the module
    /// docs). Returns the region as an array of its extent, and what was read.
    pub async fn read_region(
        &self,
        kv: &dyn KvSource,
        region: &[Range<u64>],
        options: RegionRead,
    ) -> Result<(Array, RegionStats), ZarrError> {
        let m = &self.metadata;
        let file = || kv.describe(&self.key("zarr.json"));
        let inside =
            region.len() == m.shape.len() && region.iter().zip(&m.shape).all(|(r, &n)| r.start <= r.end && r.end <= n);
        if !inside {
            return Err(ZarrError::Region {
                file: file(),
                what: format!("region {region:?} is not inside the array's shape {:?}", m.shape),
            });
        }
        let extent: Vec<u64> = region.iter().map(|r| r.end - r.start).collect();
        let item = m.dtype.size();
        let elements = num_elements(&extent).expect("inside a valid shape");
        let nbytes = usize::try_from(elements * item as u64).map_err(|_| ZarrError::Limit {
            file: file(),
            what: format!("region {region:?} does not fit in memory"),
        })?;
        let mut out = crate::buffer::zeroed(nbytes)
            .ok_or_else(|| ZarrError::Limit { file: file(), what: format!("cannot allocate {nbytes} bytes") })?;
        let mut stats = RegionStats::default();
        if elements == 0 {
            return Ok((Array::new(m.dtype, extent, out).expect("sized from the extent"), stats));
        }
        let (first, count) = chunk_box(region, &m.chunk_shape);
        let chunks: Vec<Vec<u64>> = (0..num_elements(&count).expect("bounded by the grid"))
            .map(|n| unravel(n, &count).iter().zip(&first).map(|(i, f)| i + f).collect())
            .collect();
        match &m.codecs.array_to_bytes {
            ArrayToBytes::Sharding(s) if m.codecs.bytes_to_bytes.is_empty() => {
                for index in &chunks {
                    self.read_shard_part(kv, index, s, region, options, &mut out, &mut stats).await?;
                }
            }
            _ => self.read_whole_chunks(kv, &chunks, region, options, &mut out, &mut stats).await?,
        }
        m.dtype.normalize_stored(&mut out);
        Ok((Array::new(m.dtype, extent, out).expect("sized from the extent"), stats))
    }

    /// Fetches whole chunks, in batches bounded by `max_bytes_in_flight`.
    async fn read_whole_chunks(
        &self,
        kv: &dyn KvSource,
        chunks: &[Vec<u64>],
        region: &[Range<u64>],
        options: RegionRead,
        out: &mut [u8],
        stats: &mut RegionStats,
    ) -> Result<(), ZarrError> {
        let m = &self.metadata;
        let item = m.dtype.size();
        let chunk_len = num_elements(&m.chunk_shape).expect("checked at parse") as usize * item;
        let mut scratch = vec![0u8; chunk_len];
        let mut rest = chunks;
        while !rest.is_empty() {
            // Stored sizes are unknown before fetching; a chunk's decoded size bounds the raw layouts.
            let batch = match options.max_bytes_in_flight {
                Some(bound) => ((bound / chunk_len.max(1) as u64) as usize).clamp(1, rest.len()),
                None => rest.len(),
            };
            let (now, later) = rest.split_at(batch);
            rest = later;
            let keys: Vec<String> = now.iter().map(|i| self.chunk_key(i)).collect();
            let values = kv.get_many(&keys).await?;
            let held: u64 = values.iter().flatten().map(|v| v.len() as u64).sum();
            stats.bytes_fetched += held;
            stats.peak_bytes_in_flight = stats.peak_bytes_in_flight.max(held);
            for ((index, key), value) in now.iter().zip(&keys).zip(values) {
                let described = kv.describe(key);
                match (value, options.missing) {
                    (Some(bytes), _) => {
                        decode_chunk(&described, &bytes, &m.codecs, &m.chunk_shape, item, &m.fill_value, &mut scratch)?
                    }
                    (None, MissingChunks::Fill) => fill_with(&mut scratch, &m.fill_value),
                    (None, MissingChunks::Error) => return Err(ZarrError::MissingChunk { key: described }),
                }
                stats.chunks_decoded += 1;
                let origin: Vec<u64> = index.iter().zip(&m.chunk_shape).map(|(i, c)| i * c).collect();
                copy_intersection(&scratch, &origin, &m.chunk_shape, region, out, item);
            }
        }
        Ok(())
    }

    /// Reads the index of shard `index`, then only the byte ranges of its
    /// inner chunks that intersect `region`.
    #[allow(clippy::too_many_arguments)]
    async fn read_shard_part(
        &self,
        kv: &dyn KvSource,
        index: &[u64],
        s: &Sharding,
        region: &[Range<u64>],
        options: RegionRead,
        out: &mut [u8],
        stats: &mut RegionStats,
    ) -> Result<(), ZarrError> {
        let m = &self.metadata;
        let item = m.dtype.size();
        let key = self.chunk_key(index);
        let described = kv.describe(&key);
        let corrupt = |what: String| ZarrError::Corrupt { key: described.clone(), what };
        let shard_origin: Vec<u64> = index.iter().zip(&m.chunk_shape).map(|(i, c)| i * c).collect();
        let inner = &s.inner_chunk_shape;
        let inner_len = num_elements(inner).expect("checked at parse") as usize * item;
        let mut scratch = vec![0u8; inner_len];
        let grid: Vec<u64> = m.chunk_shape.iter().zip(inner).map(|(c, i)| c / i).collect();
        let n = num_elements(&grid).expect("checked at parse") as usize;
        // Inner chunks intersecting the region, in shard-local coordinates.
        let local: Vec<Range<u64>> = region
            .iter()
            .zip(&shard_origin)
            .zip(&m.chunk_shape)
            .map(|((r, o), c)| r.start.max(*o) - o..r.end.min(o + c) - o)
            .collect();
        let (first, count) = chunk_box(&local, inner);
        let wanted: Vec<(Vec<u64>, usize)> = (0..num_elements(&count).expect("bounded by the shard grid"))
            .map(|k| {
                let at: Vec<u64> = unravel(k, &count).iter().zip(&first).map(|(i, f)| i + f).collect();
                let flat = at.iter().zip(&grid).fold(0u64, |acc, (a, g)| acc * g + a) as usize;
                (at, flat)
            })
            .collect();
        let fill_all = |out: &mut [u8], scratch: &mut [u8], stats: &mut RegionStats| {
            fill_with(scratch, &m.fill_value);
            for (at, _) in &wanted {
                let origin: Vec<u64> = at.iter().zip(inner).zip(&shard_origin).map(|((a, i), o)| o + a * i).collect();
                copy_intersection(scratch, &origin, inner, region, out, item);
                stats.chunks_decoded += 1;
            }
        };
        let Some(len) = kv.value_len(&key).await? else {
            return match options.missing {
                MissingChunks::Fill => {
                    fill_all(out, &mut scratch, stats);
                    Ok(())
                }
                MissingChunks::Error => Err(ZarrError::MissingChunk { key: described }),
            };
        };
        let index_len = ShardIndex::encoded_len(n, s.index.crc32c) as u64;
        if len < index_len {
            return Err(corrupt(format!("shard of {len} bytes is shorter than its {index_len}-byte index")));
        }
        let (index_range, data) =
            if s.index_at_end { (len - index_len..len, 0..len - index_len) } else { (0..index_len, index_len..len) };
        let vanished = || corrupt("the value vanished while being read".into());
        let index_bytes = kv.get_range(&key, index_range).await?.ok_or_else(vanished)?;
        stats.bytes_fetched += index_bytes.len() as u64;
        let entries = ShardIndex::parse_index(&described, &index_bytes, s, data)?.entries;
        let ranges: Vec<Range<u64>> =
            wanted.iter().filter_map(|(_, flat)| entries[*flat].map(|(o, l)| o..o + l)).collect();
        let mut groups = coalesce_ranges(&ranges, COALESCE_GAP_BYTES);
        let place = |scratch: &[u8], at: &[u64], out: &mut [u8]| {
            let origin: Vec<u64> = at.iter().zip(inner).zip(&shard_origin).map(|((a, i), o)| o + a * i).collect();
            copy_intersection(scratch, &origin, inner, region, out, item);
        };
        while !groups.is_empty() {
            let take = match options.max_bytes_in_flight {
                Some(bound) => groups
                    .iter()
                    .scan(0u64, |total, g| {
                        *total += g.end - g.start;
                        Some(*total)
                    })
                    .take_while(|total| *total <= bound)
                    .count()
                    .max(1),
                None => groups.len(),
            };
            let now: Vec<Range<u64>> = groups.drain(..take).collect();
            let fetched = futures::future::try_join_all(now.iter().map(|g| kv.get_range(&key, g.clone()))).await?;
            let fetched: Vec<bytes::Bytes> =
                fetched.into_iter().map(|b| b.ok_or_else(vanished)).collect::<Result<_, _>>()?;
            let held: u64 = fetched.iter().map(|b| b.len() as u64).sum();
            stats.bytes_fetched += held;
            stats.peak_bytes_in_flight = stats.peak_bytes_in_flight.max(held);
            for (at, flat) in &wanted {
                let Some((offset, length)) = entries[*flat] else { continue };
                let Some(g) = now.iter().position(|g| g.start <= offset && offset + length <= g.end) else { continue };
                let start = (offset - now[g].start) as usize;
                let bytes = &fetched[g][start..start + length as usize];
                decode_chunk(&described, bytes, &s.inner, inner, item, &m.fill_value, &mut scratch)?;
                place(&scratch, at, out);
                stats.chunks_decoded += 1;
            }
        }
        // Inner chunks never written read as the fill value.
        fill_with(&mut scratch, &m.fill_value);
        for (at, flat) in &wanted {
            if entries[*flat].is_none() {
                place(&scratch, at, out);
                stats.chunks_decoded += 1;
            }
        }
        Ok(())
    }
}
