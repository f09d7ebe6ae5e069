//! Writing arrays exactly as TensorStore does for Orbax: `zarr.json` /
//! `.zarray` text and encoded chunks.

use super::codec::{copy_block, fill_with, Region, ShardIndex};
use super::metadata::{
    ArrayMetadata, ArrayToBytes, BytesCodec, ChunkKeyEncoding, CodecChain, ShardIndexCodecs, Sharding,
};
use crate::dtype::DType;
use crate::pyjson::{to_string, JsonStyle};
use crate::pytree::num_elements;
use serde_json::{json, Value};

/// zstd level TensorStore uses for Orbax's zarr3 arrays.
pub const ZARR3_ZSTD_LEVEL: i32 = 3;
/// zstd level TensorStore fills in for zarr2's `{"id": "zstd"}`.
pub const ZARR2_ZSTD_LEVEL: i32 = 1;

fn zero_fill_json(dtype: DType) -> Value {
    match dtype {
        DType::Bool => json!(false),
        DType::Complex64 | DType::Complex128 => json!([0.0, 0.0]),
        d if d.name().starts_with("int") || d.name().starts_with("uint") => json!(0),
        _ => json!(0.0),
    }
}

impl ArrayMetadata {
    /// The metadata Orbax 0.12 asks TensorStore to create for an array:
    /// zarr3 with one `sharding_indexed` shard per chunk holding one inner
    /// chunk, or zarr2 with `.`-separated keys; zstd unless `compression` is
    /// off; zero fill value.
    pub fn orbax(dtype: DType, shape: Vec<u64>, chunk_shape: Vec<u64>, zarr3: bool, compression: bool) -> Self {
        let compress = if compression { vec![BytesCodec::Zstd] } else { vec![] };
        let (codecs, key_encoding) = if zarr3 {
            let inner =
                CodecChain { array_to_bytes: ArrayToBytes::Bytes { big_endian: false }, bytes_to_bytes: compress };
            let sharding = Sharding {
                inner_chunk_shape: chunk_shape.clone(),
                inner: Box::new(inner),
                index: ShardIndexCodecs { big_endian: false, crc32c: true },
                index_at_end: true,
            };
            (
                CodecChain { array_to_bytes: ArrayToBytes::Sharding(sharding), bytes_to_bytes: vec![] },
                ChunkKeyEncoding::Default('/'),
            )
        } else {
            (
                CodecChain { array_to_bytes: ArrayToBytes::Bytes { big_endian: false }, bytes_to_bytes: compress },
                ChunkKeyEncoding::V2('.'),
            )
        };
        ArrayMetadata {
            zarr_format: if zarr3 { 3 } else { 2 },
            shape,
            chunk_shape,
            dtype,
            fill_value: vec![0; dtype.size()],
            codecs,
            key_encoding,
        }
    }

    fn compressed(chain: &CodecChain) -> bool {
        chain.bytes_to_bytes.contains(&BytesCodec::Zstd)
    }

    /// The metadata document, byte-identical to TensorStore's (keys sorted,
    /// compact). Only layouts made by [`ArrayMetadata::orbax`] are supported.
    pub fn to_json_bytes(&self) -> Vec<u8> {
        let bytes_codec = |dtype: DType| {
            if dtype.size() > 1 {
                json!({"configuration": {"endian": "little"}, "name": "bytes"})
            } else {
                json!({"name": "bytes"})
            }
        };
        let doc = match &self.codecs.array_to_bytes {
            ArrayToBytes::Sharding(s) => {
                let mut inner = vec![bytes_codec(self.dtype)];
                if Self::compressed(&s.inner) {
                    inner
                        .push(json!({"configuration": {"checksum": false, "level": ZARR3_ZSTD_LEVEL}, "name": "zstd"}));
                }
                json!({
                    "chunk_grid": {"configuration": {"chunk_shape": self.chunk_shape}, "name": "regular"},
                    "chunk_key_encoding": {"name": "default"},
                    "codecs": [{"configuration": {
                        "chunk_shape": s.inner_chunk_shape,
                        "codecs": inner,
                        "index_codecs": [{"configuration": {"endian": "little"}, "name": "bytes"}, {"name": "crc32c"}]},
                        "name": "sharding_indexed"}],
                    "data_type": self.dtype.name(),
                    "fill_value": zero_fill_json(self.dtype),
                    "node_type": "array",
                    "shape": self.shape,
                    "zarr_format": 3
                })
            }
            ArrayToBytes::Bytes { .. } => {
                let compressor = if Self::compressed(&self.codecs) {
                    json!({"id": "zstd", "level": ZARR2_ZSTD_LEVEL})
                } else {
                    Value::Null
                };
                json!({
                    "chunks": self.chunk_shape,
                    "compressor": compressor,
                    "dimension_separator": ".",
                    "dtype": self.dtype.zarr2_name(),
                    "fill_value": null,
                    "filters": null,
                    "order": "C",
                    "shape": self.shape,
                    "zarr_format": 2
                })
            }
        };
        to_string(&doc, JsonStyle::Compact).into_bytes()
    }

    /// The name of the metadata file: `zarr.json` or `.zarray`.
    pub fn file_name(&self) -> &'static str {
        if self.zarr_format == 3 {
            "zarr.json"
        } else {
            ".zarray"
        }
    }

    /// Copies chunk `index` out of the whole array's data (C order, memory
    /// form), padding past the array's edge with the fill value.
    pub fn extract_chunk<'d>(&self, data: &'d [u8], index: &[u64]) -> std::borrow::Cow<'d, [u8]> {
        self.extract_chunk_from(data, &self.shape, &vec![0; self.shape.len()], index)
    }

    /// [`extract_chunk`](Self::extract_chunk) from a block of the array:
    /// `data` holds the elements (C order) of the block of shape `block_shape`
    /// whose first element is at `block_origin`; the block must contain the
    /// chunk's part inside the array (as a shard of a sharded array contains
    /// its chunks when chunks divide the shards).
    pub fn extract_chunk_from<'d>(
        &self,
        data: &'d [u8],
        block_shape: &[u64],
        block_origin: &[u64],
        index: &[u64],
    ) -> std::borrow::Cow<'d, [u8]> {
        let item = self.dtype.size();
        let (origin, extent) = self.chunk_region(index);
        if extent == self.chunk_shape && block_shape == self.chunk_shape && block_origin == origin {
            return std::borrow::Cow::Borrowed(data);
        }
        let chunk_elements = num_elements(&self.chunk_shape).expect("valid chunk shape") as usize;
        let mut out = vec![0u8; chunk_elements * item];
        if extent != self.chunk_shape {
            fill_with(&mut out, &self.fill_value);
        }
        let zero = vec![0; self.shape.len()];
        let within: Vec<u64> = origin.iter().zip(block_origin).map(|(o, b)| o - b).collect();
        let from = Region { shape: block_shape, origin: &within };
        copy_block(data, from, &mut out, Region { shape: &self.chunk_shape, origin: &zero }, &extent, item);
        std::borrow::Cow::Owned(out)
    }

    /// Encodes one chunk (full chunk shape, memory form) as TensorStore
    /// stores it: a one-inner-chunk shard for zarr3, the (compressed) bytes
    /// for zarr2. Sub-byte types are masked to their stored bits.
    pub fn encode_chunk(&self, chunk: &[u8]) -> Vec<u8> {
        let masked;
        let chunk = if self.dtype.is_sub_byte() {
            let bits = if self.dtype == DType::Int2 { 2 } else { 4 };
            masked = chunk.iter().map(|b| b & ((1u8 << bits) - 1)).collect::<Vec<u8>>();
            &masked[..]
        } else {
            chunk
        };
        match &self.codecs.array_to_bytes {
            ArrayToBytes::Sharding(s) => {
                let index_len = ShardIndex::encoded_len(1, true);
                let mut shard = if Self::compressed(&s.inner) {
                    compress(chunk, ZARR3_ZSTD_LEVEL, index_len)
                } else {
                    let mut out = Vec::with_capacity(chunk.len() + index_len);
                    out.extend_from_slice(chunk);
                    out
                };
                let len = shard.len() as u64;
                let mut index = [0u8; 16];
                index[8..].copy_from_slice(&len.to_le_bytes());
                shard.extend_from_slice(&index);
                shard.extend_from_slice(&crc32c::crc32c(&index).to_le_bytes());
                shard
            }
            ArrayToBytes::Bytes { .. } => {
                if Self::compressed(&self.codecs) {
                    compress(chunk, ZARR2_ZSTD_LEVEL, 0)
                } else {
                    chunk.to_vec()
                }
            }
        }
    }
}

/// One zstd frame of `data` (with its content size), in a buffer with
/// `spare` more bytes of capacity for what the caller appends. The buffer
/// comes from [`crate::buffer::zeroed`], so large ones use huge pages.
fn compress(data: &[u8], level: i32, spare: usize) -> Vec<u8> {
    let bound = zstd::zstd_safe::compress_bound(data.len()) + spare;
    let mut out = crate::buffer::zeroed(bound).unwrap_or_else(|| panic!("cannot allocate {bound} bytes"));
    let n = zstd::bulk::Compressor::new(level)
        .and_then(|mut c| c.compress_to_buffer(data, &mut out[..]))
        .expect("a buffer of compress_bound bytes holds any frame");
    out.truncate(n);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::zarr::codec;

    #[test]
    fn zarr_json_matches_tensorstore() {
        let m = ArrayMetadata::orbax(DType::Int32, vec![16], vec![16], true, true);
        let text = String::from_utf8(m.to_json_bytes()).unwrap();
        assert_eq!(
            text,
            r#"{"chunk_grid":{"configuration":{"chunk_shape":[16]},"name":"regular"},"chunk_key_encoding":{"name":"default"},"codecs":[{"configuration":{"chunk_shape":[16],"codecs":[{"configuration":{"endian":"little"},"name":"bytes"},{"configuration":{"checksum":false,"level":3},"name":"zstd"}],"index_codecs":[{"configuration":{"endian":"little"},"name":"bytes"},{"name":"crc32c"}]},"name":"sharding_indexed"}],"data_type":"int32","fill_value":0,"node_type":"array","shape":[16],"zarr_format":3}"#
        );
        let m2 = ArrayMetadata::orbax(DType::Float32, vec![16, 8], vec![4, 4], false, true);
        assert_eq!(
            String::from_utf8(m2.to_json_bytes()).unwrap(),
            r#"{"chunks":[4,4],"compressor":{"id":"zstd","level":1},"dimension_separator":".","dtype":"<f4","fill_value":null,"filters":null,"order":"C","shape":[16,8],"zarr_format":2}"#
        );
        // Parsing our output gives the same metadata back.
        assert_eq!(ArrayMetadata::parse_v3(&m.to_json_bytes(), "x").unwrap(), m);
        assert_eq!(ArrayMetadata::parse_v2(&m2.to_json_bytes(), "x").unwrap(), m2);
    }

    #[test]
    fn chunks_round_trip_through_the_decoder() {
        for zarr3 in [true, false] {
            for compression in [true, false] {
                let m = ArrayMetadata::orbax(DType::UInt8, vec![5, 3], vec![2, 2], zarr3, compression);
                let data: Vec<u8> = (0..15).collect();
                let chunk = m.extract_chunk(&data, &[2, 1]);
                assert_eq!(&chunk[..], &[14, 0, 0, 0]);
                let encoded = m.encode_chunk(&chunk);
                let mut out = vec![0u8; 4];
                codec::decode_chunk("k", &encoded, &m.codecs, &m.chunk_shape, 1, &[0], &mut out).unwrap();
                assert_eq!(&out[..], &chunk[..]);
            }
        }
    }
}
