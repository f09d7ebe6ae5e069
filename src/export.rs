//! Writing a loaded PyTree to the interchange formats other stacks read:
//! safetensors and numpy `.npz`.
//!
//! Tensor names are the leaves' Orbax parameter names (keys joined by `.`).

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use crate::dtype::DType;
use crate::npy;
use crate::pytree::PyTree;

/// Errors of export.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ExportError {
    /// A dtype the target format cannot hold.
    #[error("leaf {name:?}: safetensors has no {dtype} dtype (pass the `cast_unsupported` option to store it as a documented stand-in)")]
    UnsupportedDType {
        /// The tensor name.
        name: String,
        /// The dtype.
        dtype: DType,
    },
    /// Two leaves map to the same tensor name.
    #[error("two leaves are both named {0:?} once their keys are joined with '.'")]
    NameCollision(String),
    /// A leaf holds only some shards of its array.
    #[error("leaf {0:?} is a sharded array; assemble it (`ShardedArray::assemble`) before exporting")]
    Sharded(String),
    /// Writing failed.
    #[error("{0}")]
    Write(String),
}

/// How unsupported dtypes are treated by [`to_safetensors`].
#[derive(Debug, Clone, Copy, Default)]
pub struct SafetensorsOptions {
    /// Store dtypes safetensors lacks as stand-ins instead of failing:
    /// `int4`/`int2` as `I8` values,
    /// `complex128` as `F64` with a trailing dimension of 2, the other small
    /// float types as `U8` bit patterns. The original dtype of every such
    /// tensor is recorded in `__metadata__` under `orbax.dtype.<name>`.
    pub cast_unsupported: bool,
}

fn safetensors_dtype(dtype: DType) -> Option<safetensors::Dtype> {
    use safetensors::Dtype as S;
    Some(match dtype {
        DType::Bool => S::BOOL,
        DType::Int8 => S::I8,
        DType::Int16 => S::I16,
        DType::Int32 => S::I32,
        DType::Int64 => S::I64,
        DType::UInt8 => S::U8,
        DType::UInt16 => S::U16,
        DType::UInt32 => S::U32,
        DType::UInt64 => S::U64,
        DType::Float16 => S::F16,
        DType::BFloat16 => S::BF16,
        DType::Float32 => S::F32,
        DType::Float64 => S::F64,
        DType::Complex64 => S::C64,
        DType::Float8E5M2 => S::F8_E5M2,
        DType::Float8E4M3FN => S::F8_E4M3,
        DType::Float8E8M0FNU => S::F8_E8M0,
        _ => return None,
    })
}

fn stand_in(dtype: DType, shape: &[u64]) -> (safetensors::Dtype, Vec<u64>) {
    use safetensors::Dtype as S;
    match dtype {
        DType::Int4 | DType::Int2 => (S::I8, shape.to_vec()),
        DType::Complex128 => (S::F64, shape.iter().copied().chain([2]).collect()),
        _ => (S::U8, shape.to_vec()),
    }
}

struct Tensor<'a> {
    dtype: safetensors::Dtype,
    shape: Vec<usize>,
    data: &'a [u8],
}

impl safetensors::View for &Tensor<'_> {
    fn dtype(&self) -> safetensors::Dtype {
        self.dtype
    }
    fn shape(&self) -> &[usize] {
        &self.shape
    }
    fn data(&self) -> std::borrow::Cow<'_, [u8]> {
        std::borrow::Cow::Borrowed(self.data)
    }
    fn data_len(&self) -> usize {
        self.data.len()
    }
}

/// The tensor leaves (arrays and scalars) and string leaves of a tree, by
/// parameter name; `None` and empty containers carry no data and are skipped.
fn named_leaves(tree: &PyTree) -> Result<Vec<(String, &PyTree)>, ExportError> {
    let mut seen = HashMap::new();
    let mut out = Vec::new();
    for (path, leaf) in tree.leaves() {
        if let PyTree::Sharded(_) = leaf {
            return Err(ExportError::Sharded(path.param_name()));
        }
        if !matches!(leaf, PyTree::Array(_) | PyTree::Scalar(_) | PyTree::String(_)) {
            continue;
        }
        let name = path.param_name();
        if seen.insert(name.clone(), ()).is_some() {
            return Err(ExportError::NameCollision(name));
        }
        out.push((name, leaf));
    }
    Ok(out)
}

fn tensor_parts(leaf: &PyTree) -> Option<(DType, &[u64], &[u8])> {
    match leaf {
        PyTree::Array(a) => Some((a.dtype(), a.shape(), a.data())),
        PyTree::Scalar(s) => Some((s.dtype(), &[], s.bytes())),
        _ => None,
    }
}

/// Serializes the tree as a safetensors file. String leaves go into
/// `__metadata__` under their names.
pub fn to_safetensors(tree: &PyTree, options: SafetensorsOptions) -> Result<Vec<u8>, ExportError> {
    let mut tensors = Vec::new();
    let mut metadata = HashMap::new();
    for (name, leaf) in named_leaves(tree)? {
        if let PyTree::String(s) = leaf {
            metadata.insert(name, s.clone());
            continue;
        }
        let (dtype, shape, data) = tensor_parts(leaf).expect("named_leaves keeps tensors and strings");
        let (st_dtype, shape) = match safetensors_dtype(dtype) {
            Some(d) => (d, shape.to_vec()),
            None if options.cast_unsupported => {
                metadata.insert(format!("orbax.dtype.{name}"), dtype.name().to_string());
                stand_in(dtype, shape)
            }
            None => return Err(ExportError::UnsupportedDType { name, dtype }),
        };
        let shape = shape.iter().map(|&d| d as usize).collect();
        tensors.push((name, Tensor { dtype: st_dtype, shape, data }));
    }
    let views: Vec<(String, &Tensor)> = tensors.iter().map(|(n, t)| (n.clone(), t)).collect();
    let metadata = (!metadata.is_empty()).then_some(metadata);
    safetensors::serialize(views, metadata).map_err(|e| ExportError::Write(e.to_string()))
}

/// Serializes the tree as an uncompressed `.npz` archive (what `numpy.savez`
/// writes): one `<name>.npy` per tensor, in the `orbax cat --npy` dtype
/// convention, and string leaves as 0-d unicode arrays.
pub fn to_npz(tree: &PyTree) -> Result<Vec<u8>, ExportError> {
    let mut files: BTreeMap<String, Vec<u8>> = BTreeMap::new();
    for (name, leaf) in named_leaves(tree)? {
        let bytes = match leaf {
            PyTree::String(s) => npy::encode_str(s),
            leaf => {
                let (dtype, shape, data) = tensor_parts(leaf).expect("tensor leaf");
                npy::encode(dtype, shape, data)
            }
        };
        files.insert(format!("{name}.npy"), bytes);
    }
    let mut zip = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Stored)
        .large_file(files.values().any(|f| f.len() as u64 >= u32::MAX as u64));
    for (name, bytes) in files {
        zip.start_file(name, options).map_err(|e| ExportError::Write(e.to_string()))?;
        zip.write_all(&bytes).map_err(|e| ExportError::Write(e.to_string()))?;
    }
    let cursor = zip.finish().map_err(|e| ExportError::Write(e.to_string()))?;
    Ok(cursor.into_inner())
}
