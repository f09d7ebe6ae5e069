//! Reading a rectangular region of an array: only the chunks that intersect
//! it are fetched, and inside a `sharding_indexed` shard only the byte
//! ranges of the intersecting inner chunks (found through the shard index),
//! with nearby ranges coalesced into one read.

use std::ops::Range;

use futures::{StreamExt, TryStreamExt};

use super::codec::{decode_chunk, fill_with, unravel};
use super::metadata::{ArrayToBytes, Sharding};
use super::{copy_block, MissingChunks, Region, ShardIndex, ZarrArray, ZarrError};
use crate::kvstore::KvSource;
use crate::pytree::{num_elements, Array};

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

/// Merges byte ranges lying within [`COALESCE_GAP_BYTES`] of each other,
/// never into a range longer than `bound` (a range longer on its own stays whole).
fn coalesce_bounded(ranges: &[Range<u64>], bound: Option<u64>) -> Vec<Range<u64>> {
    let mut sorted = ranges.to_vec();
    sorted.sort_by_key(|r| r.start);
    let mut merged: Vec<Range<u64>> = Vec::with_capacity(sorted.len());
    for range in sorted {
        match merged.last_mut() {
            Some(last)
                if range.start <= last.end.saturating_add(COALESCE_GAP_BYTES)
                    && bound.is_none_or(|b| range.end.max(last.end) - last.start <= b) =>
            {
                last.end = last.end.max(range.end)
            }
            _ => merged.push(range),
        }
    }
    merged
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
                self.read_shards(kv, &chunks, s, region, options, &mut out, &mut stats).await?
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

    /// Reads the shards intersecting `region`: first every shard's index
    /// (concurrently), then only the byte ranges of the intersecting inner
    /// chunks, coalesced per shard and fetched concurrently in waves of at
    /// most `max_bytes_in_flight` bytes, each decoded before the next.
    #[allow(clippy::too_many_arguments)]
    async fn read_shards(
        &self,
        kv: &dyn KvSource,
        shards: &[Vec<u64>],
        s: &Sharding,
        region: &[Range<u64>],
        options: RegionRead,
        out: &mut [u8],
        stats: &mut RegionStats,
    ) -> Result<(), ZarrError> {
        let m = &self.metadata;
        let item = m.dtype.size();
        let inner = &s.inner_chunk_shape;
        let mut scratch = vec![0u8; num_elements(inner).expect("checked at parse") as usize * item];
        let indexed: Vec<ShardPlan> = futures::stream::iter(shards)
            .map(|index| self.plan_shard(kv, index, s, region, options.missing))
            .buffered(CONCURRENT_REQUESTS)
            .try_collect()
            .await?;
        // Inner chunks never written (or in shards never written) read as the fill value.
        fill_with(&mut scratch, &m.fill_value);
        for plan in &indexed {
            stats.bytes_fetched += plan.index_bytes;
            for (origin, entry) in &plan.wanted {
                if entry.is_none() {
                    copy_intersection(&scratch, origin, inner, region, out, item);
                    stats.chunks_decoded += 1;
                }
            }
        }
        let mut requests: Vec<(usize, Range<u64>)> = indexed
            .iter()
            .enumerate()
            .flat_map(|(p, plan)| {
                let ranges: Vec<Range<u64>> = plan.wanted.iter().filter_map(|(_, e)| e.clone()).collect();
                coalesce_bounded(&ranges, options.max_bytes_in_flight).into_iter().map(move |r| (p, r))
            })
            .collect();
        while !requests.is_empty() {
            let take = match options.max_bytes_in_flight {
                Some(bound) => requests
                    .iter()
                    .scan(0u64, |total, (_, r)| {
                        *total += r.end - r.start;
                        Some(*total)
                    })
                    .take_while(|total| *total <= bound)
                    .count()
                    .max(1),
                None => requests.len(),
            };
            let wave: Vec<(usize, Range<u64>)> = requests.drain(..take).collect();
            let fetched: Vec<bytes::Bytes> = futures::stream::iter(&wave)
                .map(|(p, range)| {
                    let plan = &indexed[*p];
                    async move {
                        let vanished = || ZarrError::Corrupt {
                            key: plan.described.clone(),
                            what: "the value vanished while being read".into(),
                        };
                        let bytes = kv.get_range(&plan.key, range.clone()).await?.ok_or_else(vanished)?;
                        if bytes.len() as u64 != range.end - range.start {
                            return Err(ZarrError::Corrupt {
                                key: plan.described.clone(),
                                what: format!("read {} bytes of the {range:?} its index names", bytes.len()),
                            });
                        }
                        Ok(bytes)
                    }
                })
                .buffered(CONCURRENT_REQUESTS)
                .try_collect()
                .await?;
            let held: u64 = fetched.iter().map(|b| b.len() as u64).sum();
            stats.bytes_fetched += held;
            stats.peak_bytes_in_flight = stats.peak_bytes_in_flight.max(held);
            for ((p, range), bytes) in wave.iter().zip(&fetched) {
                let plan = &indexed[*p];
                for (origin, entry) in &plan.wanted {
                    let Some(chunk) = entry.as_ref().filter(|c| range.start <= c.start && c.end <= range.end) else {
                        continue;
                    };
                    let at = (chunk.start - range.start) as usize..(chunk.end - range.start) as usize;
                    decode_chunk(&plan.described, &bytes[at], &s.inner, inner, item, &m.fill_value, &mut scratch)?;
                    copy_intersection(&scratch, origin, inner, region, out, item);
                    stats.chunks_decoded += 1;
                }
            }
        }
        Ok(())
    }

    /// Reads the index of shard `index` and lists its inner chunks that
    /// intersect `region`: each one's origin in the array and byte range in
    /// the shard (`None`: never written, or the whole shard is missing and
    /// `missing` allows it).
    async fn plan_shard(
        &self,
        kv: &dyn KvSource,
        index: &[u64],
        s: &Sharding,
        region: &[Range<u64>],
        missing: MissingChunks,
    ) -> Result<ShardPlan, ZarrError> {
        let m = &self.metadata;
        let key = self.chunk_key(index);
        let described = kv.describe(&key);
        let corrupt = |what: String| ZarrError::Corrupt { key: described.clone(), what };
        let shard_origin: Vec<u64> = index.iter().zip(&m.chunk_shape).map(|(i, c)| i * c).collect();
        let inner = &s.inner_chunk_shape;
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
                let origin = at.iter().zip(inner).zip(&shard_origin).map(|((a, i), o)| o + a * i).collect();
                (origin, flat)
            })
            .collect();
        let plan = |entries: Option<Vec<Option<(u64, u64)>>>, index_bytes| ShardPlan {
            wanted: wanted
                .iter()
                .map(|(origin, flat)| {
                    let range = entries.as_ref().and_then(|e| e[*flat]).map(|(o, l)| o..o + l);
                    (origin.clone(), range)
                })
                .collect(),
            key: key.clone(),
            described: described.clone(),
            index_bytes,
        };
        let Some(len) = kv.value_len(&key).await? else {
            return match missing {
                MissingChunks::Fill => Ok(plan(None, 0)),
                MissingChunks::Error => Err(ZarrError::MissingChunk { key: described.clone() }),
            };
        };
        let index_len = ShardIndex::encoded_len(n, s.index.crc32c) as u64;
        if len < index_len {
            return Err(corrupt(format!("shard of {len} bytes is shorter than its {index_len}-byte index")));
        }
        let (index_range, data) =
            if s.index_at_end { (len - index_len..len, 0..len - index_len) } else { (0..index_len, index_len..len) };
        let index_bytes = kv
            .get_range(&key, index_range)
            .await?
            .ok_or_else(|| corrupt("the value vanished while being read".into()))?;
        if index_bytes.len() as u64 != index_len {
            return Err(corrupt(format!("read {} bytes of its {index_len}-byte index", index_bytes.len())));
        }
        let entries = ShardIndex::parse_index(&described, &index_bytes, s, data)?.entries;
        Ok(plan(Some(entries), index_bytes.len() as u64))
    }
}

/// Shard indices, and byte ranges, requested at once.
const CONCURRENT_REQUESTS: usize = 32;

/// The inner chunks of one shard that a region read needs.
struct ShardPlan {
    /// Each chunk's origin in the array and byte range in the shard (`None`: fill).
    wanted: Vec<(Vec<u64>, Option<Range<u64>>)>,
    key: String,
    described: String,
    index_bytes: u64,
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use async_trait::async_trait;
    use bytes::Bytes;

    use super::*;
    use crate::kvstore::{DirectoryKv, KvError};
    use crate::storage::{InMemory, PutMode, Storage};

    /// A key-value source recording every ranged read.
    #[derive(Debug)]
    struct Recording {
        inner: DirectoryKv,
        ranges: Mutex<Vec<(String, Range<u64>)>>,
    }

    #[async_trait]
    impl KvSource for Recording {
        async fn get(&self, key: &str) -> Result<Option<Bytes>, KvError> {
            self.inner.get(key).await
        }
        async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Option<Bytes>, KvError> {
            self.ranges.lock().unwrap().push((key.to_string(), range.clone()));
            self.inner.get_range(key, range).await
        }
        async fn value_len(&self, key: &str) -> Result<Option<u64>, KvError> {
            self.inner.value_len(key).await
        }
        async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>, KvError> {
            self.inner.get_many(keys).await
        }
        async fn list(&self, prefix: &str) -> Result<Vec<String>, KvError> {
            self.inner.list(prefix).await
        }
        fn describe(&self, key: &str) -> String {
            self.inner.describe(key)
        }
    }

    /// A 16x16 uint16 array (element = row * 16 + column) stored as one zarr3
    /// shard of 4x4 inner chunks (raw bytes, index at the end with crc32c),
    /// each inner chunk padded by `gap` junk bytes; inner chunk 5 is missing.
    async fn sharded_array(gap: usize) -> (Recording, ZarrArray, Arc<dyn Storage>) {
        let store: Arc<dyn Storage> = Arc::new(InMemory::new());
        let zarr_json = r#"{"zarr_format":3,"node_type":"array","shape":[16,16],"data_type":"uint16",
            "chunk_grid":{"name":"regular","configuration":{"chunk_shape":[16,16]}},
            "chunk_key_encoding":{"name":"default"},"fill_value":7,
            "codecs":[{"name":"sharding_indexed","configuration":{"chunk_shape":[4,4],
              "codecs":[{"name":"bytes","configuration":{"endian":"little"}}],
              "index_codecs":[{"name":"bytes","configuration":{"endian":"little"}},{"name":"crc32c"}],
              "index_location":"end"}}]}"#;
        store.put("a/x/zarr.json", Bytes::from(zarr_json), PutMode::Overwrite).await.unwrap();
        let (mut data, mut index) = (Vec::new(), Vec::new());
        for n in 0..16u64 {
            if n == 5 {
                index.extend([0xff; 16]);
                continue;
            }
            let (r0, c0) = (n / 4 * 4, n % 4 * 4);
            index.extend((data.len() as u64).to_le_bytes());
            index.extend(32u64.to_le_bytes());
            for r in r0..r0 + 4 {
                for c in c0..c0 + 4 {
                    data.extend(((r * 16 + c) as u16).to_le_bytes());
                }
            }
            data.extend(std::iter::repeat_n(0xee, gap));
        }
        let crc = crc32c::crc32c(&index);
        data.extend(index);
        data.extend(crc.to_le_bytes());
        store.put("a/x/c/0/0", Bytes::from(data), PutMode::Overwrite).await.unwrap();
        let kv = Recording { inner: DirectoryKv::new(store.clone(), "a"), ranges: Mutex::new(Vec::new()) };
        let array = ZarrArray::open(&kv, "x").await.unwrap();
        (kv, array, store)
    }

    fn expected(region: &[Range<u64>]) -> Vec<u16> {
        let mut out = Vec::new();
        for r in region[0].clone() {
            for c in region[1].clone() {
                out.push(if (4..8).contains(&r) && (4..8).contains(&c) { 7 } else { (r * 16 + c) as u16 });
            }
        }
        out
    }

    fn elements(array: &Array) -> Vec<u16> {
        array.data().chunks_exact(2).map(|b| u16::from_le_bytes([b[0], b[1]])).collect()
    }

    fn read(missing: MissingChunks, max_bytes_in_flight: Option<u64>) -> RegionRead {
        RegionRead { missing, max_bytes_in_flight }
    }

    #[tokio::test]
    async fn reads_only_the_intersecting_inner_chunks_of_a_shard() {
        let (kv, array, _) = sharded_array(1 << 20).await;
        let region = [1..3, 9..14];
        let (got, stats) = array.read_region(&kv, &region, read(MissingChunks::Error, None)).await.unwrap();
        assert_eq!(got.shape(), [2, 5]);
        assert_eq!(elements(&got), expected(&region));
        // Inner chunks (0, 2) and (0, 3): the index, then two ranges too far apart to merge.
        let ranges = kv.ranges.lock().unwrap().clone();
        assert_eq!(ranges.len(), 3, "{ranges:?}");
        let stride = 32 + (1 << 20);
        assert_eq!(ranges[1].1, 2 * stride..2 * stride + 32);
        assert_eq!(ranges[2].1, 3 * stride..3 * stride + 32);
        assert_eq!(stats, RegionStats { bytes_fetched: 16 * 16 + 4 + 64, peak_bytes_in_flight: 64, chunks_decoded: 2 });
    }

    #[tokio::test]
    async fn coalesces_near_ranges_and_bounds_bytes_in_flight() {
        let (kv, array, _) = sharded_array(8).await;
        // Rows 0..8 touch inner chunks 0..8 (5 missing: fill); their data is adjacent up to 8-byte gaps.
        let region = [2..8, 0..16];
        let (got, stats) = array.read_region(&kv, &region, read(MissingChunks::Error, None)).await.unwrap();
        assert_eq!(elements(&got), expected(&region));
        assert_eq!(kv.ranges.lock().unwrap().len(), 2, "index + one coalesced range");
        assert_eq!(stats.chunks_decoded, 8);
        // A bound of one inner chunk: one range at a time, same result.
        kv.ranges.lock().unwrap().clear();
        let (bounded, stats) = array.read_region(&kv, &region, read(MissingChunks::Error, Some(40))).await.unwrap();
        assert_eq!(bounded, got);
        assert!(stats.peak_bytes_in_flight <= 40, "{stats:?}");
        assert_eq!(kv.ranges.lock().unwrap().len(), 1 + 7);
    }

    #[tokio::test]
    async fn bad_regions_and_missing_shards_are_reported() {
        let (kv, array, _) = sharded_array(0).await;
        let err = array.read_region(&kv, &[0..17, 0..1], read(MissingChunks::Error, None)).await.unwrap_err();
        assert_eq!(err.to_string(), "a/x/zarr.json: region [0..17, 0..1] is not inside the array's shape [16, 16]");
        let err = array
            .read_region(&kv, &std::iter::once(0..1).collect::<Vec<_>>(), read(MissingChunks::Error, None))
            .await
            .unwrap_err();
        assert!(err.to_string().contains("not inside"), "{err}");
        let (empty, _) = array.read_region(&kv, &[3..3, 0..16], read(MissingChunks::Error, None)).await.unwrap();
        assert_eq!(empty.shape(), [0, 16]);
        let store: Arc<dyn Storage> = Arc::new(InMemory::new());
        let zarr_json = kv.inner.get("x/zarr.json").await.unwrap().unwrap();
        store.put("b/x/zarr.json", zarr_json, PutMode::Overwrite).await.unwrap();
        let kv = DirectoryKv::new(store, "b");
        let err = array.read_region(&kv, &[0..1, 0..1], read(MissingChunks::Error, None)).await.unwrap_err();
        assert!(matches!(err, ZarrError::MissingChunk { .. }), "{err}");
        let (filled, _) = array.read_region(&kv, &[0..2, 0..2], read(MissingChunks::Fill, None)).await.unwrap();
        assert_eq!(elements(&filled), [7; 4]);
    }

    #[tokio::test]
    async fn corrupt_shards_are_errors_not_panics() {
        let (kv, array, store) = sharded_array(0).await;
        let good = store.get("a/x/c/0/0").await.unwrap();
        let all = [0..16, 0..16];
        let whole = |missing| read(missing, None);
        // A flipped index byte fails the crc32c.
        let mut bad = good.to_vec();
        let at = bad.len() - 10;
        bad[at] ^= 1;
        store.put("a/x/c/0/0", Bytes::from(bad), PutMode::Overwrite).await.unwrap();
        let err = array.read_region(&kv, &all, whole(MissingChunks::Error)).await.unwrap_err();
        assert!(matches!(err, ZarrError::Checksum { .. }), "{err}");
        // A shard shorter than its index.
        store.put("a/x/c/0/0", good.slice(..100), PutMode::Overwrite).await.unwrap();
        let err = array.read_region(&kv, &all, whole(MissingChunks::Error)).await.unwrap_err();
        assert!(err.to_string().contains("shorter than its 260-byte index"), "{err}");
        // Index entries pointing past the data.
        let mut bad = good.to_vec();
        let index_at = bad.len() - 260;
        bad[index_at..index_at + 8].copy_from_slice(&10_000u64.to_le_bytes());
        let crc = crc32c::crc32c(&bad[index_at..bad.len() - 4]);
        let n = bad.len();
        bad[n - 4..].copy_from_slice(&crc.to_le_bytes());
        store.put("a/x/c/0/0", Bytes::from(bad), PutMode::Overwrite).await.unwrap();
        let err = array.read_region(&kv, &all, whole(MissingChunks::Error)).await.unwrap_err();
        assert!(err.to_string().contains("lies outside the shard's data"), "{err}");
    }
}
