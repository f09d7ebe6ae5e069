//! `zarr.json` (v3) and `.zarray` (v2) as TensorStore writes them for Orbax.

use serde_json::Value;

use super::ZarrError;
use crate::dtype::{DType, ScalarValue};
use crate::pytree::num_elements;

/// Largest rank accepted (TensorStore's limit is 32).
pub const MAX_RANK: usize = 32;

/// A bytes→bytes codec.
#[derive(Debug, Clone, PartialEq)]
pub enum BytesCodec {
    /// zstd (one frame).
    Zstd,
    /// gzip (zarr v2 `gzip` compressor; Orbax before 0.2 used it for numpy leaves).
    Gzip,
    /// zlib (zarr v2 `zlib` compressor).
    Zlib,
    /// A CRC-32C of the preceding bytes, appended as 4 little-endian bytes.
    Crc32c,
}

/// How the shard index of `sharding_indexed` is encoded.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardIndexCodecs {
    /// `bytes` codec with big-endian configuration.
    pub big_endian: bool,
    /// A `crc32c` codec follows (TensorStore always writes one for Orbax).
    pub crc32c: bool,
}

/// The `sharding_indexed` codec.
#[derive(Debug, Clone, PartialEq)]
pub struct Sharding {
    /// Shape of the inner chunks.
    pub inner_chunk_shape: Vec<u64>,
    /// Codecs of each inner chunk.
    pub inner: Box<CodecChain>,
    /// Codecs of the index.
    pub index: ShardIndexCodecs,
    /// Index at the end of the shard (TensorStore's default) or the start.
    pub index_at_end: bool,
}

/// The array→bytes step of a codec chain.
#[derive(Debug, Clone, PartialEq)]
pub enum ArrayToBytes {
    /// Raw elements, C order.
    Bytes {
        /// Elements are big-endian on disk.
        big_endian: bool,
    },
    /// A shard of inner chunks with an index.
    Sharding(Sharding),
}

/// A zarr codec chain restricted to what TensorStore writes for Orbax.
#[derive(Debug, Clone, PartialEq)]
pub struct CodecChain {
    /// How elements become bytes.
    pub array_to_bytes: ArrayToBytes,
    /// Applied after, in order (decoded in reverse).
    pub bytes_to_bytes: Vec<BytesCodec>,
}

/// How chunk grid coordinates become keys.
#[derive(Debug, Clone, PartialEq)]
pub enum ChunkKeyEncoding {
    /// zarr v3 default: `c/0/1` with the separator, `c` for rank 0.
    Default(char),
    /// zarr v2 style: `0.1` with the separator, `0` for rank 0.
    V2(char),
}

impl ChunkKeyEncoding {
    /// The key of chunk `index`, relative to the array.
    pub fn key(&self, index: &[u64]) -> String {
        let join = |sep: char| index.iter().map(u64::to_string).collect::<Vec<_>>().join(&sep.to_string());
        match self {
            ChunkKeyEncoding::Default(sep) if index.is_empty() => "c".to_string(),
            ChunkKeyEncoding::Default(sep) => format!("c{sep}{}", join(*sep)),
            ChunkKeyEncoding::V2(_) if index.is_empty() => "0".to_string(),
            ChunkKeyEncoding::V2(sep) => join(*sep),
        }
    }
}

/// Everything needed to read an array's chunks.
#[derive(Debug, Clone, PartialEq)]
pub struct ArrayMetadata {
    /// 2 or 3.
    pub zarr_format: u8,
    /// The array's shape.
    pub shape: Vec<u64>,
    /// The chunk grid's chunk shape (for v3 sharded arrays: the shard shape).
    pub chunk_shape: Vec<u64>,
    /// Element type.
    pub dtype: DType,
    /// One element of fill value, in memory form.
    pub fill_value: Vec<u8>,
    /// The codecs.
    pub codecs: CodecChain,
    /// Chunk key naming.
    pub key_encoding: ChunkKeyEncoding,
}

impl ArrayMetadata {
    /// Number of chunks along each dimension.
    pub fn grid_shape(&self) -> Vec<u64> {
        self.shape.iter().zip(&self.chunk_shape).map(|(s, c)| s.div_ceil(*c)).collect()
    }

    /// The first element of chunk `index` and the extent of the chunk that
    /// lies inside the array (smaller than the chunk shape at the edges).
    pub fn chunk_region(&self, index: &[u64]) -> (Vec<u64>, Vec<u64>) {
        let origin: Vec<u64> = index.iter().zip(&self.chunk_shape).map(|(i, c)| i * c).collect();
        let extent = origin.iter().zip(&self.chunk_shape).zip(&self.shape).map(|((o, c), s)| (*c).min(s - o)).collect();
        (origin, extent)
    }

    /// The inner chunk shape (the chunk shape when not sharded).
    pub fn read_chunk_shape(&self) -> &[u64] {
        match &self.codecs.array_to_bytes {
            ArrayToBytes::Sharding(s) => &s.inner_chunk_shape,
            ArrayToBytes::Bytes { .. } => &self.chunk_shape,
        }
    }

    /// Bytes of the whole array in memory.
    pub fn nbytes(&self) -> Option<u64> {
        num_elements(&self.shape)?.checked_mul(self.dtype.size() as u64)
    }

    /// Parses `zarr.json`.
    pub fn parse_v3(bytes: &[u8], file: &str) -> Result<Self, ZarrError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| invalid(file, format!("invalid JSON: {e}")))?;
        let p = Parser { file };
        if v.get("zarr_format").and_then(Value::as_u64) != Some(3) {
            return Err(invalid(file, "zarr_format is not 3".into()));
        }
        if let Some(node_type) = v.get("node_type").and_then(Value::as_str) {
            if node_type != "array" {
                return Err(invalid(file, format!("node_type is {node_type:?}, not \"array\"")));
            }
        }
        let shape = p.shape(&v, "shape")?;
        let dtype_name = p.str(&v, "data_type")?;
        let dtype = DType::from_name(dtype_name).ok_or_else(|| match dtype_name {
            // Valid zarr v3 data types TensorStore 0.1.86 cannot store for Orbax.
            "uint4" | "uint2" | "float8_e4m3" | "float6_e2m3fn" | "float6_e3m2fn" | "string" | "bytes" => {
                unsupported(file, format!("data_type {dtype_name:?}"))
            }
            other => invalid(file, format!("unknown data_type {other:?}")),
        })?;
        let grid = p.field(&v, "chunk_grid")?;
        if grid.get("name").and_then(Value::as_str) != Some("regular") {
            return Err(unsupported(file, format!("chunk_grid {grid}")));
        }
        let chunk_shape = p.shape(p.field(grid, "configuration")?, "chunk_shape")?;
        p.check_chunk_shape(&shape, &chunk_shape)?;
        let key_encoding = match v.get("chunk_key_encoding") {
            None => ChunkKeyEncoding::Default('/'),
            Some(enc) => {
                let sep = enc.get("configuration").and_then(|c| c.get("separator")).and_then(Value::as_str);
                let sep = match sep {
                    None => None,
                    Some("/") => Some('/'),
                    Some(".") => Some('.'),
                    Some(other) => return Err(invalid(file, format!("chunk key separator {other:?}"))),
                };
                match enc.get("name").and_then(Value::as_str) {
                    Some("default") => ChunkKeyEncoding::Default(sep.unwrap_or('/')),
                    Some("v2") => ChunkKeyEncoding::V2(sep.unwrap_or('.')),
                    _ => return Err(unsupported(file, format!("chunk_key_encoding {enc}"))),
                }
            }
        };
        let codecs = p.codec_chain(p.field(&v, "codecs")?, &chunk_shape)?;
        let fill_value = p.fill_value(v.get("fill_value").unwrap_or(&Value::Null), dtype)?;
        Ok(ArrayMetadata { zarr_format: 3, shape, chunk_shape, dtype, fill_value, codecs, key_encoding })
    }

    /// Parses `.zarray`.
    pub fn parse_v2(bytes: &[u8], file: &str) -> Result<Self, ZarrError> {
        let v: Value = serde_json::from_slice(bytes).map_err(|e| invalid(file, format!("invalid JSON: {e}")))?;
        let p = Parser { file };
        if v.get("zarr_format").and_then(Value::as_u64) != Some(2) {
            return Err(invalid(file, "zarr_format is not 2".into()));
        }
        let shape = p.shape(&v, "shape")?;
        let chunk_shape = p.shape(&v, "chunks")?;
        p.check_chunk_shape(&shape, &chunk_shape)?;
        let dtype_str = p.str(&v, "dtype")?;
        let (dtype, big_endian) =
            parse_v2_dtype(dtype_str).ok_or_else(|| unsupported(file, format!("dtype {dtype_str:?}")))?;
        if v.get("order").and_then(Value::as_str).unwrap_or("C") != "C" {
            return Err(unsupported(file, "Fortran order".into()));
        }
        if !matches!(v.get("filters"), None | Some(Value::Null)) {
            return Err(unsupported(file, format!("filters {}", v["filters"])));
        }
        let bytes_to_bytes = match v.get("compressor") {
            None | Some(Value::Null) => vec![],
            Some(c) => match c.get("id").and_then(Value::as_str) {
                Some("zstd") => vec![BytesCodec::Zstd],
                Some("gzip") => vec![BytesCodec::Gzip],
                Some("zlib") => vec![BytesCodec::Zlib],
                _ => return Err(unsupported(file, format!("compressor {c}"))),
            },
        };
        let sep = match v.get("dimension_separator").and_then(Value::as_str) {
            None | Some(".") => '.',
            Some("/") => '/',
            Some(other) => return Err(invalid(file, format!("dimension_separator {other:?}"))),
        };
        let fill_value = p.fill_value(v.get("fill_value").unwrap_or(&Value::Null), dtype)?;
        Ok(ArrayMetadata {
            zarr_format: 2,
            shape,
            chunk_shape,
            dtype,
            fill_value,
            codecs: CodecChain { array_to_bytes: ArrayToBytes::Bytes { big_endian }, bytes_to_bytes },
            key_encoding: ChunkKeyEncoding::V2(sep),
        })
    }
}

/// Parses a zarr v2 dtype string (`<f4`, `|b1`, `bfloat16`, ...): the dtype and whether it is big-endian.
pub fn parse_v2_dtype(s: &str) -> Option<(DType, bool)> {
    if let Some(d) = DType::ALL.iter().find(|d| d.zarr2_name() == s) {
        return Some((*d, false));
    }
    let (order, rest) = s.split_at_checked(1)?;
    let big = match order {
        ">" => true,
        "<" | "|" | "=" => false,
        _ => return DType::from_name(s).map(|d| (d, false)),
    };
    let d = DType::ALL.iter().find(|d| d.zarr2_name().get(1..) == Some(rest) && d.zarr2_name().len() == s.len())?;
    Some((*d, big && d.size() > 1))
}

fn invalid(file: &str, what: String) -> ZarrError {
    ZarrError::Metadata { file: file.to_string(), what }
}

fn unsupported(file: &str, what: String) -> ZarrError {
    ZarrError::Unsupported { file: file.to_string(), what }
}

struct Parser<'a> {
    file: &'a str,
}

impl Parser<'_> {
    fn field<'v>(&self, v: &'v Value, name: &str) -> Result<&'v Value, ZarrError> {
        v.get(name).ok_or_else(|| invalid(self.file, format!("missing \"{name}\"")))
    }

    fn str<'v>(&self, v: &'v Value, name: &str) -> Result<&'v str, ZarrError> {
        self.field(v, name)?.as_str().ok_or_else(|| invalid(self.file, format!("\"{name}\" is not a string")))
    }

    fn shape(&self, v: &Value, name: &str) -> Result<Vec<u64>, ZarrError> {
        let items =
            self.field(v, name)?.as_array().ok_or_else(|| invalid(self.file, format!("\"{name}\" is not a list")))?;
        if items.len() > MAX_RANK {
            return Err(ZarrError::Limit {
                file: self.file.to_string(),
                what: format!("rank {} > {MAX_RANK}", items.len()),
            });
        }
        items
            .iter()
            .map(|d| {
                d.as_u64()
                    .ok_or_else(|| invalid(self.file, format!("\"{name}\" has a non-integer or negative entry {d}")))
            })
            .collect()
    }

    fn check_chunk_shape(&self, shape: &[u64], chunk: &[u64]) -> Result<(), ZarrError> {
        if shape.len() != chunk.len() {
            return Err(invalid(self.file, format!("chunk shape {chunk:?} has a different rank than shape {shape:?}")));
        }
        if chunk.contains(&0) {
            return Err(invalid(self.file, format!("chunk shape {chunk:?} has a zero dimension")));
        }
        if num_elements(shape).is_none() || num_elements(chunk).and_then(|n| n.checked_mul(16)).is_none() {
            return Err(ZarrError::Limit {
                file: self.file.to_string(),
                what: format!("shape {shape:?} / chunk shape {chunk:?} overflow"),
            });
        }
        Ok(())
    }

    fn codec_chain(&self, codecs: &Value, chunk_shape: &[u64]) -> Result<CodecChain, ZarrError> {
        let list = codecs.as_array().ok_or_else(|| invalid(self.file, "\"codecs\" is not a list".into()))?;
        let mut array_to_bytes = None;
        let mut bytes_to_bytes = Vec::new();
        for codec in list {
            let name = self.str(codec, "name")?;
            let config = codec.get("configuration");
            let stage_error = || invalid(self.file, format!("codec {name:?} out of order"));
            match name {
                "bytes" => {
                    if array_to_bytes.is_some() {
                        return Err(stage_error());
                    }
                    let endian = config.and_then(|c| c.get("endian")).and_then(Value::as_str).unwrap_or("little");
                    array_to_bytes = Some(ArrayToBytes::Bytes { big_endian: endian == "big" });
                }
                "sharding_indexed" => {
                    if array_to_bytes.is_some() {
                        return Err(stage_error());
                    }
                    let config =
                        config.ok_or_else(|| invalid(self.file, "sharding_indexed without configuration".into()))?;
                    let inner_chunk_shape = self.shape(config, "chunk_shape")?;
                    if inner_chunk_shape.len() != chunk_shape.len()
                        || inner_chunk_shape.iter().zip(chunk_shape).any(|(i, c)| *i == 0 || c % i != 0)
                    {
                        return Err(invalid(
                            self.file,
                            format!("inner chunk shape {inner_chunk_shape:?} does not divide {chunk_shape:?}"),
                        ));
                    }
                    let inner = self.codec_chain(self.field(config, "codecs")?, &inner_chunk_shape)?;
                    let index = self.index_codecs(self.field(config, "index_codecs")?)?;
                    let index_at_end = match config.get("index_location").and_then(Value::as_str) {
                        None | Some("end") => true,
                        Some("start") => false,
                        Some(other) => return Err(invalid(self.file, format!("index_location {other:?}"))),
                    };
                    array_to_bytes = Some(ArrayToBytes::Sharding(Sharding {
                        inner_chunk_shape,
                        inner: Box::new(inner),
                        index,
                        index_at_end,
                    }));
                }
                "zstd" | "crc32c" | "gzip" => {
                    if array_to_bytes.is_none() {
                        return Err(stage_error());
                    }
                    bytes_to_bytes.push(match name {
                        "zstd" => BytesCodec::Zstd,
                        "gzip" => BytesCodec::Gzip,
                        _ => BytesCodec::Crc32c,
                    });
                }
                "transpose" | "blosc" | "bitround" | "packbits" | "vlen-utf8" | "vlen-bytes" | "zfp" | "pcodec"
                | "adler32" | "fletcher32" | "bz2" | "zlib" | "lz4" => {
                    return Err(unsupported(self.file, format!("codec {name:?}")))
                }
                other => return Err(invalid(self.file, format!("unknown codec {other:?}"))),
            }
        }
        let array_to_bytes = array_to_bytes.ok_or_else(|| invalid(self.file, "no array-to-bytes codec".into()))?;
        Ok(CodecChain { array_to_bytes, bytes_to_bytes })
    }

    fn index_codecs(&self, v: &Value) -> Result<ShardIndexCodecs, ZarrError> {
        let chain = self.codec_chain(v, &[])?;
        let big_endian = match chain.array_to_bytes {
            ArrayToBytes::Bytes { big_endian } => big_endian,
            ArrayToBytes::Sharding(_) => return Err(unsupported(self.file, "sharded shard index".into())),
        };
        match chain.bytes_to_bytes.as_slice() {
            [] => Ok(ShardIndexCodecs { big_endian, crc32c: false }),
            [BytesCodec::Crc32c] => Ok(ShardIndexCodecs { big_endian, crc32c: true }),
            other => Err(unsupported(self.file, format!("index codecs {other:?}"))),
        }
    }

    fn fill_value(&self, v: &Value, dtype: DType) -> Result<Vec<u8>, ZarrError> {
        let scalar = |v: &Value| -> Option<ScalarValue> {
            match v {
                Value::Bool(b) => Some(ScalarValue::Bool(*b)),
                Value::Number(n) => n
                    .as_i64()
                    .map(ScalarValue::Int)
                    .or_else(|| n.as_u64().map(ScalarValue::UInt))
                    .or_else(|| n.as_f64().map(ScalarValue::Float)),
                Value::String(s) => match s.as_str() {
                    "NaN" => Some(ScalarValue::Float(f64::NAN)),
                    "Infinity" => Some(ScalarValue::Float(f64::INFINITY)),
                    "-Infinity" => Some(ScalarValue::Float(f64::NEG_INFINITY)),
                    _ => None,
                },
                _ => None,
            }
        };
        let value = match v {
            Value::Null => return Ok(vec![0; dtype.size()]),
            Value::String(s) if s.starts_with("0x") => {
                let bits =
                    u64::from_str_radix(&s[2..], 16).map_err(|_| invalid(self.file, format!("fill_value {s:?}")))?;
                let bytes = bits.to_le_bytes()[..dtype.size().min(8)].to_vec();
                return if bytes.len() == dtype.size() {
                    Ok(bytes)
                } else {
                    Err(invalid(self.file, format!("fill_value {s:?} for {dtype}")))
                };
            }
            Value::Array(pair) if pair.len() == 2 => match (scalar(&pair[0]), scalar(&pair[1])) {
                (Some(ScalarValue::Float(re)), Some(ScalarValue::Float(im))) => Some(ScalarValue::Complex(re, im)),
                (Some(re), Some(im)) => {
                    let f = |s: ScalarValue| match s {
                        ScalarValue::Int(i) => i as f64,
                        ScalarValue::UInt(u) => u as f64,
                        ScalarValue::Float(f) => f,
                        _ => f64::NAN,
                    };
                    Some(ScalarValue::Complex(f(re), f(im)))
                }
                _ => None,
            },
            other => scalar(other),
        };
        value
            .and_then(|s| dtype.encode_scalar(s))
            .map(|mut bytes| {
                dtype.normalize_stored(&mut bytes);
                bytes
            })
            .ok_or_else(|| invalid(self.file, format!("fill_value {v} is not a valid {dtype}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ORBAX_INT32: &str = r#"{"chunk_grid":{"configuration":{"chunk_shape":[16]},"name":"regular"},"chunk_key_encoding":{"name":"default"},"codecs":[{"configuration":{"chunk_shape":[16],"codecs":[{"configuration":{"endian":"little"},"name":"bytes"},{"configuration":{"checksum":false,"level":3},"name":"zstd"}],"index_codecs":[{"configuration":{"endian":"little"},"name":"bytes"},{"name":"crc32c"}]},"name":"sharding_indexed"}],"data_type":"int32","fill_value":0,"node_type":"array","shape":[16],"zarr_format":3}"#;

    #[test]
    fn parses_orbax_zarr3() {
        let m = ArrayMetadata::parse_v3(ORBAX_INT32.as_bytes(), "a/zarr.json").unwrap();
        assert_eq!(m.shape, vec![16]);
        assert_eq!(m.dtype, DType::Int32);
        assert_eq!(m.fill_value, vec![0; 4]);
        let ArrayToBytes::Sharding(s) = &m.codecs.array_to_bytes else { panic!() };
        assert_eq!(s.inner_chunk_shape, vec![16]);
        assert_eq!(s.inner.bytes_to_bytes, vec![BytesCodec::Zstd]);
        assert!(s.index.crc32c && s.index_at_end);
        assert_eq!(m.key_encoding.key(&[3]), "c/3");
        assert_eq!(m.key_encoding.key(&[]), "c");
    }

    #[test]
    fn parses_orbax_zarr2() {
        let text = r#"{"chunks":[4,4],"compressor":{"id":"zstd","level":1},"dimension_separator":".","dtype":"<f4","fill_value":null,"filters":null,"order":"C","shape":[16,8],"zarr_format":2}"#;
        let m = ArrayMetadata::parse_v2(text.as_bytes(), "x/.zarray").unwrap();
        assert_eq!(m.dtype, DType::Float32);
        assert_eq!(m.grid_shape(), vec![4, 2]);
        assert_eq!(m.key_encoding.key(&[1, 0]), "1.0");
        assert_eq!(parse_v2_dtype("bfloat16"), Some((DType::BFloat16, false)));
        assert_eq!(parse_v2_dtype(">i4"), Some((DType::Int32, true)));
        assert_eq!(parse_v2_dtype("|b1"), Some((DType::Bool, false)));
    }

    #[test]
    fn rejects_absurd_and_unknown() {
        let huge = ORBAX_INT32.replace("\"shape\":[16]", "\"shape\":[1000000000000,1000000000000]");
        assert!(matches!(
            ArrayMetadata::parse_v3(huge.as_bytes(), "f"),
            Err(ZarrError::Limit { .. } | ZarrError::Metadata { .. })
        ));
        let blosc = ORBAX_INT32.replace("\"zstd\"", "\"blosc\"");
        assert!(matches!(ArrayMetadata::parse_v3(blosc.as_bytes(), "f"), Err(ZarrError::Unsupported { .. })));
        assert!(ArrayMetadata::parse_v3(b"{not json", "f").is_err());
    }
}
