//! zarr v3 and v2 arrays, as TensorStore writes them for Orbax, read
//! through a [`KvSource`].
//!
//! This is a purpose-built subset rather than the `zarrs` crate (see
//! `docs/decisions.md`): TensorStore's Orbax output uses one codec chain
//! (`sharding_indexed` over `bytes` + optional `zstd`, index `bytes` +
//! `crc32c`) or zarr v2 with zstd, stored inside OCDBT rather than a
//! filesystem, with `ml_dtypes` names in v2 metadata that general zarr
//! readers reject. Owning the decoder lets chunks decompress straight into
//! the output buffer and lets byte-range reads target shard entries.

mod codec;
mod encode;
mod metadata;
mod region;

use bytes::Bytes;
use rayon::prelude::*;

use crate::kvstore::{KvError, KvSource};
use crate::pytree::{num_elements, Array};
use crate::ErrorKind;

pub use codec::{copy_block, fill_with, unravel, zstd_decompress, Region, ShardIndex, MISSING_INNER_CHUNK};
pub use encode::{ZARR2_ZSTD_LEVEL, ZARR3_ZSTD_LEVEL};
pub use metadata::{
    parse_v2_dtype, ArrayMetadata, ArrayToBytes, BytesCodec, ChunkKeyEncoding, CodecChain, ShardIndexCodecs, Sharding,
    MAX_RANK,
};
pub use region::{RegionRead, RegionStats, COALESCE_GAP_BYTES};

/// Errors of the zarr layer. Each names the metadata file or chunk key.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ZarrError {
    /// Reading a key failed.
    #[error(transparent)]
    Kv(#[from] KvError),
    /// Neither `zarr.json` nor `.zarray` exists for the array.
    #[error("{location}: not found (nor a zarr v2 .zarray)")]
    MissingMetadata {
        /// Where the array's `zarr.json` should be.
        location: String,
    },
    /// Invalid array metadata.
    #[error("{file}: {what}")]
    Metadata {
        /// The metadata file.
        file: String,
        /// What is wrong.
        what: String,
    },
    /// Valid zarr this reader does not implement.
    #[error("{file}: unsupported {what}")]
    Unsupported {
        /// The metadata file.
        file: String,
        /// The construct.
        what: String,
    },
    /// A size beyond what can be read.
    #[error("{file}: {what}")]
    Limit {
        /// The metadata file or chunk.
        file: String,
        /// What is too large.
        what: String,
    },
    /// A malformed chunk or shard.
    #[error("{key}: {what}")]
    Corrupt {
        /// The chunk.
        key: String,
        /// What is wrong.
        what: String,
    },
    /// A checksum mismatch.
    #[error("{key}: {what} mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// The chunk.
        key: String,
        /// Which checksum.
        what: String,
        /// The stored value.
        stored: u32,
        /// The value of the bytes.
        computed: u32,
    },
    /// A chunk decoded to the wrong number of bytes.
    #[error("{key}: decoded to {found} bytes, expected {expected}")]
    ChunkSize {
        /// The chunk.
        key: String,
        /// Bytes the chunk shape needs.
        expected: u64,
        /// Bytes found.
        found: u64,
    },
    /// A requested region that does not fit the array.
    #[error("{file}: {what}")]
    Region {
        /// The array's metadata file.
        file: String,
        /// What is wrong with the region.
        what: String,
    },
    /// A chunk that must exist is missing.
    #[error("{key}: chunk is missing, and the checkpoint says every chunk was stored")]
    MissingChunk {
        /// The chunk.
        key: String,
    },
}

impl ZarrError {
    /// The class of this failure.
    pub fn kind(&self) -> ErrorKind {
        match self {
            ZarrError::Kv(e) => e.kind(),
            ZarrError::MissingMetadata { .. } | ZarrError::MissingChunk { .. } => ErrorKind::NotFound,
            ZarrError::Metadata { .. } | ZarrError::Corrupt { .. } | ZarrError::ChunkSize { .. } => ErrorKind::Corrupt,
            ZarrError::Unsupported { .. } => ErrorKind::Unsupported,
            ZarrError::Limit { .. } => ErrorKind::Limit,
            ZarrError::Region { .. } => ErrorKind::InvalidArgument,
            ZarrError::Checksum { .. } => ErrorKind::Checksum,
        }
    }
}

/// What to do with a chunk that was never stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MissingChunks {
    /// It is an error (Orbax writes every chunk when
    /// `store_array_data_equal_to_fill_value` is true).
    Error,
    /// It reads as the fill value.
    Fill,
}

/// Decoded chunks are copied into the output in batches of at most this
/// many bytes, which bounds the extra memory of a multi-chunk read.
const DECODE_BATCH_BYTES: u64 = 64 << 20;

/// A zarr array stored under a key prefix (an Orbax parameter name).
#[derive(Debug, Clone)]
pub struct ZarrArray {
    name: String,
    metadata: ArrayMetadata,
}

impl ZarrArray {
    fn key(&self, rel: &str) -> String {
        array_key(&self.name, rel)
    }

    /// Opens the array named `name` (`""` for a tree that is a single leaf),
    /// reading `zarr.json` or, failing that, `.zarray`.
    pub async fn open(kv: &dyn KvSource, name: &str) -> Result<ZarrArray, ZarrError> {
        Self::open_cached(kv, name, &MetadataCache::default()).await
    }

    /// Like [`ZarrArray::open`], reusing metadata already parsed from the
    /// same bytes: the arrays of a model share a handful of distinct
    /// `zarr.json` documents, so a checkpoint of thousands of leaves parses
    /// only those few.
    pub async fn open_cached(kv: &dyn KvSource, name: &str, cache: &MetadataCache) -> Result<ZarrArray, ZarrError> {
        let v3 = array_key(name, "zarr.json");
        if let Some(bytes) = kv.get(&v3).await? {
            let metadata = cache.parse(bytes, || kv.describe(&v3), ArrayMetadata::parse_v3)?;
            return Ok(ZarrArray { name: name.to_string(), metadata });
        }
        let v2 = array_key(name, ".zarray");
        if let Some(bytes) = kv.get(&v2).await? {
            let metadata = cache.parse(bytes, || kv.describe(&v2), ArrayMetadata::parse_v2)?;
            return Ok(ZarrArray { name: name.to_string(), metadata });
        }
        Err(ZarrError::MissingMetadata { location: kv.describe(&v3) })
    }

    /// The parsed metadata.
    pub fn metadata(&self) -> &ArrayMetadata {
        &self.metadata
    }

    /// The key (relative to the key-value source) of chunk `index`.
    pub fn chunk_key(&self, index: &[u64]) -> String {
        self.key(&self.metadata.key_encoding.key(index))
    }

    /// Reads the whole array.
    pub async fn read(&self, kv: &dyn KvSource, missing: MissingChunks) -> Result<Array, ZarrError> {
        let m = &self.metadata;
        let limit = |what: String| ZarrError::Limit { file: kv.describe(&self.key("")), what };
        let nbytes = m.nbytes().ok_or_else(|| limit(format!("shape {:?} overflows", m.shape)))?;
        let nbytes = usize::try_from(nbytes).map_err(|_| limit(format!("{nbytes} bytes do not fit in memory")))?;
        let mut out = crate::buffer::zeroed(nbytes)
            .ok_or_else(|| limit(format!("cannot allocate {nbytes} bytes for shape {:?}", m.shape)))?;
        let item = m.dtype.size();
        let chunk_elements = num_elements(&m.chunk_shape).expect("checked at parse");
        let chunk_bytes = chunk_elements * item as u64;
        let grid = m.grid_shape();
        let num_chunks = num_elements(&grid).expect("bounded by the shape");
        if num_chunks == 0 {
            return Ok(Array::new(m.dtype, m.shape.clone(), out).expect("sized from the shape"));
        }
        if num_chunks == 1 && m.chunk_shape == m.shape && nbytes >= STREAM_THRESHOLD {
            match self.read_streaming(kv, missing, out).await? {
                Streamed::Done(done) => {
                    return Ok(Array::new(m.dtype, m.shape.clone(), done).expect("sized from the shape"));
                }
                Streamed::NotApplicable(back) => out = back,
            }
        }
        let batch = (DECODE_BATCH_BYTES / chunk_bytes.max(1)).clamp(1, num_chunks);
        let mut first = 0;
        while first < num_chunks {
            let indices: Vec<Vec<u64>> = (first..(first + batch).min(num_chunks)).map(|n| unravel(n, &grid)).collect();
            let keys: Vec<String> = indices.iter().map(|i| self.chunk_key(i)).collect();
            let values = kv.get_many(&keys).await?;
            // Decoding runs on the CPU pool, not on this task's thread, so
            // several arrays decode at once while others are being fetched.
            let described: Vec<String> = keys.iter().map(|k| kv.describe(k)).collect();
            out = if nbytes < INLINE_DECODE_BYTES {
                // Small arrays decode faster than a hand-off to the pool.
                self.decode_batch(&indices, &described, &values, missing, out)?
            } else {
                let this = self.clone();
                on_cpu_pool(move || this.decode_batch(&indices, &described, &values, missing, out)).await?
            };
            first += batch;
        }
        m.dtype.normalize_stored(&mut out);
        Ok(Array::new(m.dtype, m.shape.clone(), out).expect("sized from the shape"))
    }

    /// Reads a single-chunk array by streaming its value in pieces through
    /// the decoder straight into `out`: no buffer holds the whole compressed
    /// chunk, and reading the next piece overlaps decoding this one. Applies
    /// to the layouts TensorStore writes for Orbax (raw or zstd bytes, bare
    /// or as the only inner chunk of a shard); returns the buffer unused
    /// otherwise.
    async fn read_streaming(
        &self,
        kv: &dyn KvSource,
        missing: MissingChunks,
        out: Vec<u8>,
    ) -> Result<Streamed, ZarrError> {
        let m = &self.metadata;
        let plain = |chain: &CodecChain| match (&chain.array_to_bytes, chain.bytes_to_bytes.as_slice()) {
            (ArrayToBytes::Bytes { big_endian: false }, []) => Some(false),
            (ArrayToBytes::Bytes { big_endian: false }, [BytesCodec::Zstd]) => Some(true),
            _ => None,
        };
        let (shard, compressed) = match &m.codecs.array_to_bytes {
            ArrayToBytes::Sharding(s)
                if m.codecs.bytes_to_bytes.is_empty()
                    && s.index_at_end
                    && !s.index.big_endian
                    && s.inner_chunk_shape == m.chunk_shape =>
            {
                match plain(&s.inner) {
                    Some(compressed) => (Some(s), compressed),
                    None => return Ok(Streamed::NotApplicable(out)),
                }
            }
            ArrayToBytes::Bytes { .. } => match plain(&m.codecs) {
                Some(compressed) => (None, compressed),
                None => return Ok(Streamed::NotApplicable(out)),
            },
            ArrayToBytes::Sharding(_) => return Ok(Streamed::NotApplicable(out)),
        };
        let key = self.chunk_key(&vec![0; m.shape.len()]);
        let described = kv.describe(&key);
        let corrupt = |what: String| ZarrError::Corrupt { key: described.clone(), what };
        let fill_or_fail = |mut out: Vec<u8>| match missing {
            MissingChunks::Fill => {
                fill_with(&mut out, &m.fill_value);
                Ok(Streamed::Done(out))
            }
            MissingChunks::Error => Err(ZarrError::MissingChunk { key: described.clone() }),
        };
        let Some(len) = kv.value_len(&key).await? else { return fill_or_fail(out) };
        let range = match shard {
            None => 0..len,
            Some(s) => {
                let index_len = ShardIndex::encoded_len(1, s.index.crc32c) as u64;
                if len < index_len {
                    return Err(corrupt(format!("shard of {len} bytes is shorter than its {index_len}-byte index")));
                }
                let index =
                    kv.get_range(&key, len - index_len..len).await?.ok_or_else(|| corrupt("vanished".into()))?;
                match ShardIndex::parse_index(&described, &index, s, 0..len - index_len)?.entries[..] {
                    [Some((offset, nbytes))] => offset..offset + nbytes,
                    _ => return fill_or_fail(out),
                }
            }
        };
        if !compressed && range.end - range.start != out.len() as u64 {
            let (expected, found) = (out.len() as u64, range.end - range.start);
            return Err(ZarrError::ChunkSize { key: described, expected, found });
        }
        let piece = |start: u64| start..(start + STREAM_PIECE_BYTES).min(range.end);
        let mut decoder = StreamDecoder { compressed, zstd: None, written: 0, out, frame_done: false };
        let vanished = || corrupt("the value vanished while being read".into());
        let mut bytes = kv.get_range(&key, piece(range.start)).await?.ok_or_else(vanished)?;
        let mut position = range.start + bytes.len() as u64;
        loop {
            // Decode this piece on the CPU pool while the next one is read.
            let next = (position < range.end).then(|| kv.get_range(&key, piece(position)));
            let name = described.clone();
            let step = on_cpu_pool(move || {
                let result = decoder.feed(&bytes, &name);
                (decoder, result)
            });
            let read = async {
                match next {
                    Some(read) => read.await.map(Some),
                    None => Ok(None),
                }
            };
            let (read, (returned, result)) = futures::join!(read, step);
            decoder = returned;
            result?;
            match read? {
                Some(next_bytes) => {
                    let next_bytes = next_bytes.ok_or_else(vanished)?;
                    position += next_bytes.len() as u64;
                    bytes = next_bytes;
                }
                None if position < range.end => return Err(vanished()),
                None => break,
            }
        }
        decoder.finish(&described).map(Streamed::Done)
    }

    /// Decodes fetched chunks (`described` names them in errors) into the
    /// whole array's buffer `out`, which it returns.
    fn decode_batch(
        &self,
        indices: &[Vec<u64>],
        described: &[String],
        values: &[Option<Bytes>],
        missing: MissingChunks,
        mut out: Vec<u8>,
    ) -> Result<Vec<u8>, ZarrError> {
        let m = &self.metadata;
        let item = m.dtype.size();
        if m.chunk_shape == m.shape && indices.len() == 1 {
            // One chunk covers the array exactly: decode in place.
            self.decode_into(&described[0], values[0].as_deref(), missing, &mut out)?;
            return Ok(out);
        }
        let chunk_bytes = num_elements(&m.chunk_shape).expect("checked at parse") as usize * item;
        let decoded: Vec<Vec<u8>> = described
            .par_iter()
            .zip(values.par_iter())
            .map(|(key, value)| {
                let mut buf = vec![0u8; chunk_bytes];
                self.decode_into(key, value.as_deref(), missing, &mut buf)?;
                Ok(buf)
            })
            .collect::<Result<_, ZarrError>>()?;
        let zero = vec![0; m.shape.len()];
        for (index, buf) in indices.iter().zip(&decoded) {
            let (origin, extent) = m.chunk_region(index);
            let from = Region { shape: &m.chunk_shape, origin: &zero };
            copy_block(buf, from, &mut out, Region { shape: &m.shape, origin: &origin }, &extent, item);
        }
        Ok(out)
    }

    fn decode_into(
        &self,
        key: &str,
        value: Option<&[u8]>,
        missing: MissingChunks,
        out: &mut [u8],
    ) -> Result<(), ZarrError> {
        let m = &self.metadata;
        match (value, missing) {
            (Some(bytes), _) => {
                codec::decode_chunk(key, bytes, &m.codecs, &m.chunk_shape, m.dtype.size(), &m.fill_value, out)
            }
            (None, MissingChunks::Fill) => {
                fill_with(out, &m.fill_value);
                Ok(())
            }
            (None, MissingChunks::Error) => Err(ZarrError::MissingChunk { key: key.to_string() }),
        }
    }
}

/// Runs CPU-heavy work on rayon's pool and awaits its result, so the
/// calling task (and the futures it polls) keep going meanwhile. A panic in
/// `f` resumes in the caller.
pub async fn on_cpu_pool<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = tokio::sync::oneshot::channel();
    rayon::spawn(move || {
        let _ = tx.send(std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)));
    });
    match rx.await.expect("the pool runs every spawned job") {
        Ok(value) => value,
        Err(panic) => std::panic::resume_unwind(panic),
    }
}

/// Parsed array metadata by the exact bytes it was parsed from.
#[derive(Debug, Default)]
pub struct MetadataCache {
    parsed: std::sync::Mutex<std::collections::HashMap<Bytes, ArrayMetadata>>,
}

impl MetadataCache {
    fn parse(
        &self,
        bytes: Bytes,
        file: impl FnOnce() -> String,
        parse: fn(&[u8], &str) -> Result<ArrayMetadata, ZarrError>,
    ) -> Result<ArrayMetadata, ZarrError> {
        if let Some(found) = self.parsed.lock().expect("cache lock").get(&bytes) {
            return Ok(found.clone());
        }
        let metadata = parse(&bytes, &file())?;
        self.parsed.lock().expect("cache lock").insert(bytes, metadata.clone());
        Ok(metadata)
    }
}

/// Arrays smaller than this are decoded on the calling task.
const INLINE_DECODE_BYTES: usize = 64 << 10;
/// Arrays at least this large, stored as one chunk, are read by streaming.
const STREAM_THRESHOLD: usize = 8 << 20;
/// Bytes of a streamed value read at a time.
const STREAM_PIECE_BYTES: u64 = 4 << 20;

/// Outcome of [`ZarrArray::read_streaming`].
enum Streamed {
    /// The array was read into the buffer.
    Done(Vec<u8>),
    /// The layout needs the general path; the buffer is handed back.
    NotApplicable(Vec<u8>),
}

/// Decodes a raw or zstd-compressed chunk fed in pieces into its output buffer.
struct StreamDecoder {
    compressed: bool,
    zstd: Option<zstd::stream::raw::Decoder<'static>>,
    written: usize,
    out: Vec<u8>,
    frame_done: bool,
}

impl StreamDecoder {
    fn feed(&mut self, piece: &[u8], key: &str) -> Result<(), ZarrError> {
        use zstd::stream::raw::{InBuffer, Operation, OutBuffer};
        let corrupt = |what: String| ZarrError::Corrupt { key: key.to_string(), what };
        if !self.compressed {
            let end = self.written + piece.len();
            self.out
                .get_mut(self.written..end)
                .ok_or_else(|| corrupt("chunk longer than expected".into()))?
                .copy_from_slice(piece);
            self.written = end;
            return Ok(());
        }
        if self.frame_done && !piece.is_empty() {
            return Err(corrupt("data after the end of the zstd frame".into()));
        }
        let decoder = match &mut self.zstd {
            Some(d) => d,
            None => self.zstd.insert(zstd::stream::raw::Decoder::new().map_err(|e| corrupt(format!("zstd: {e}")))?),
        };
        let mut input = InBuffer::around(piece);
        let mut output = OutBuffer::around_pos(&mut self.out[..], self.written);
        while input.pos() < piece.len() {
            let before = (input.pos(), output.pos());
            let hint = decoder.run(&mut input, &mut output).map_err(|e| corrupt(format!("zstd: {e}")))?;
            if hint == 0 {
                self.frame_done = true;
                if input.pos() < piece.len() {
                    return Err(corrupt("data after the end of the zstd frame".into()));
                }
            }
            if (input.pos(), output.pos()) == before {
                return Err(corrupt(format!("zstd frame decodes to more than the {} bytes expected", self.out.len())));
            }
        }
        self.written = output.pos();
        Ok(())
    }

    fn finish(self, key: &str) -> Result<Vec<u8>, ZarrError> {
        if self.written != self.out.len() || (self.compressed && !self.frame_done) {
            return Err(ZarrError::ChunkSize {
                key: key.to_string(),
                expected: self.out.len() as u64,
                found: self.written as u64,
            });
        }
        Ok(self.out)
    }
}

/// `name/rel`, or just `rel` for the root array `""`.
pub fn array_key(name: &str, rel: &str) -> String {
    match (name.is_empty(), rel.is_empty()) {
        (true, _) => rel.to_string(),
        (false, true) => name.to_string(),
        (false, false) => format!("{name}/{rel}"),
    }
}
