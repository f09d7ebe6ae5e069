//! Reading safetensors and `.npz` files into a [`PyTree`], for
//! `orbax import`: tensor names are split on a separator into nested dicts.

use std::io::Read;

use crate::dtype::DType;
use crate::npy;
use crate::pytree::{num_elements, Array, PyTree};
use crate::zarr::parse_v2_dtype;

/// Errors of import.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ImportError {
    /// The file is not valid safetensors / npz / npy.
    #[error("{file}: {what}")]
    Format {
        /// The file or archive member.
        file: String,
        /// What is wrong.
        what: String,
    },
    /// Two tensor names conflict once split into a tree.
    #[error("tensor {name:?}: {what}")]
    Structure {
        /// The tensor name.
        name: String,
        /// The conflict.
        what: String,
    },
}

fn insert(tree: &mut Vec<(String, PyTree)>, parts: &[&str], name: &str, leaf: PyTree) -> Result<(), ImportError> {
    let conflict = |what: &str| ImportError::Structure { name: name.to_string(), what: what.to_string() };
    let (head, rest) = parts.split_first().ok_or_else(|| conflict("empty name"))?;
    let position = tree.iter().position(|(k, _)| k == head);
    if rest.is_empty() {
        return match position {
            Some(_) => Err(conflict("is both a tensor and a prefix of another tensor's name, or repeated")),
            None => {
                tree.push((head.to_string(), leaf));
                Ok(())
            }
        };
    }
    let index = match position {
        Some(i) => i,
        None => {
            tree.push((head.to_string(), PyTree::Dict(Vec::new())));
            tree.len() - 1
        }
    };
    match &mut tree[index].1 {
        PyTree::Dict(children) => insert(children, rest, name, leaf),
        _ => Err(conflict("is nested below another tensor")),
    }
}

/// Builds a tree from named leaves; an empty separator keeps names flat.
pub fn tree_from_named(leaves: Vec<(String, PyTree)>, separator: &str) -> Result<PyTree, ImportError> {
    let mut root = Vec::new();
    for (name, leaf) in leaves {
        let parts: Vec<&str> = if separator.is_empty() { vec![&name] } else { name.split(separator).collect() };
        insert(&mut root, &parts, &name, leaf)?;
    }
    Ok(PyTree::Dict(root))
}

fn dtype_of_safetensors(d: safetensors::Dtype) -> Option<DType> {
    use safetensors::Dtype as S;
    Some(match d {
        S::BOOL => DType::Bool,
        S::U8 => DType::UInt8,
        S::I8 => DType::Int8,
        S::I16 => DType::Int16,
        S::U16 => DType::UInt16,
        S::F16 => DType::Float16,
        S::BF16 => DType::BFloat16,
        S::I32 => DType::Int32,
        S::U32 => DType::UInt32,
        S::F32 => DType::Float32,
        S::F64 => DType::Float64,
        S::I64 => DType::Int64,
        S::U64 => DType::UInt64,
        S::C64 => DType::Complex64,
        S::F8_E5M2 => DType::Float8E5M2,
        S::F8_E4M3 => DType::Float8E4M3FN,
        S::F8_E8M0 => DType::Float8E8M0FNU,
        _ => return None,
    })
}

/// Reads every tensor of a safetensors file, in file order, as array leaves.
pub fn read_safetensors(bytes: &[u8], file: &str) -> Result<Vec<(String, PyTree)>, ImportError> {
    let format = |what: String| ImportError::Format { file: file.to_string(), what };
    let st = safetensors::SafeTensors::deserialize(bytes).map_err(|e| format(e.to_string()))?;
    let mut tensors: Vec<(String, safetensors::tensor::TensorView)> = st.tensors();
    tensors.sort_by_key(|(_, t)| t.data().as_ptr() as usize);
    tensors
        .into_iter()
        .map(|(name, t)| {
            let dtype = dtype_of_safetensors(t.dtype())
                .ok_or_else(|| format(format!("tensor {name}: unsupported dtype {:?}", t.dtype())))?;
            let shape = t.shape().iter().map(|&d| d as u64).collect();
            let array =
                Array::new(dtype, shape, t.data().to_vec()).map_err(|e| format(format!("tensor {name}: {e}")))?;
            Ok((name, PyTree::Array(array)))
        })
        .collect()
}

/// Reads one `.npy` file: an array leaf, or a string leaf for a 0-d numpy
/// unicode array (what [`crate::export::to_npz`] writes for strings).
pub fn read_npy(bytes: &[u8], file: &str) -> Result<PyTree, ImportError> {
    let format = |what: String| ImportError::Format { file: file.to_string(), what };
    let header = npy::parse_header(bytes).map_err(format)?;
    if let Some(width) = header.descr.strip_prefix("<U").and_then(|w| w.parse::<usize>().ok()) {
        let data = bytes.get(header.data_offset..).unwrap_or_default();
        if !header.shape.is_empty() || data.len() != width.saturating_mul(4) {
            return Err(format(format!("only 0-d unicode arrays are read, not shape {:?}", header.shape)));
        }
        let text: String = data
            .chunks_exact(4)
            .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .take_while(|&c| c != 0)
            .map(|c| char::from_u32(c).ok_or_else(|| format(format!("invalid character {c:#x}"))))
            .collect::<Result<_, _>>()?;
        return Ok(PyTree::String(text));
    }
    let (dtype, big_endian) =
        parse_v2_dtype(&header.descr).ok_or_else(|| format(format!("unsupported dtype {:?}", header.descr)))?;
    let n = num_elements(&header.shape).ok_or_else(|| format("shape overflows".into()))?;
    let len = n.checked_mul(dtype.size() as u64).ok_or_else(|| format("shape overflows".into()))?;
    let data = bytes
        .get(header.data_offset..)
        .filter(|d| d.len() as u64 == len)
        .ok_or_else(|| format(format!("expected {len} bytes of data for shape {:?}", header.shape)))?;
    let mut data = data.to_vec();
    if big_endian {
        for element in data.chunks_exact_mut(dtype.size()) {
            element.reverse();
        }
    }
    Array::new(dtype, header.shape, data).map(PyTree::Array).map_err(format)
}

/// Reads every member of an `.npz` archive (stored or deflated), in archive order.
pub fn read_npz(bytes: &[u8], file: &str) -> Result<Vec<(String, PyTree)>, ImportError> {
    let format = |what: String| ImportError::Format { file: file.to_string(), what };
    let mut archive = zip::ZipArchive::new(std::io::Cursor::new(bytes)).map_err(|e| format(e.to_string()))?;
    let mut out = Vec::new();
    for i in 0..archive.len() {
        let mut member = archive.by_index(i).map_err(|e| format(e.to_string()))?;
        let name = member.name().trim_end_matches(".npy").to_string();
        // The declared size is untrusted; read with a cap of the archive's
        // size times the maximum deflate ratio.
        let cap = (bytes.len() as u64).saturating_mul(1032);
        let mut data = Vec::new();
        (&mut member).take(cap).read_to_end(&mut data).map_err(|e| format(format!("{name}: {e}")))?;
        out.push((name.clone(), read_npy(&data, &format!("{file}:{name}.npy"))?));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_into_nested_dicts() {
        let a = |v: u8| PyTree::Array(Array::new(DType::UInt8, vec![1], vec![v]).unwrap());
        let tree =
            tree_from_named(vec![("layer.0.w".into(), a(1)), ("layer.0.b".into(), a(2)), ("head".into(), a(3))], ".")
                .unwrap();
        let leaves: Vec<String> = tree.leaves().iter().map(|(p, _)| p.to_string()).collect();
        assert_eq!(leaves, ["['layer']['0']['w']", "['layer']['0']['b']", "['head']"]);
        assert!(tree_from_named(vec![("a.b".into(), a(1)), ("a".into(), a(2))], ".").is_err());
        assert!(tree_from_named(vec![("a".into(), a(1)), ("a.b".into(), a(2))], ".").is_err());
    }

    #[test]
    fn export_and_import_round_trip() {
        let a = Array::new(DType::BFloat16, vec![2], vec![0x80, 0x3f, 0, 0x40]).unwrap();
        let tree = PyTree::Dict(vec![("x".into(), PyTree::Dict(vec![("w".into(), PyTree::Array(a.clone()))]))]);
        let st = crate::export::to_safetensors(&tree, Default::default()).unwrap();
        assert_eq!(tree_from_named(read_safetensors(&st, "t").unwrap(), ".").unwrap(), tree);
        let b = Array::new(DType::Float32, vec![2], vec![0, 0, 0x80, 0x3f, 0, 0, 0, 0x40]).unwrap();
        let tree = PyTree::Dict(vec![("s".into(), PyTree::String("ключ ✓".into())), ("x".into(), PyTree::Array(b))]);
        let npz = crate::export::to_npz(&tree).unwrap();
        assert_eq!(tree_from_named(read_npz(&npz, "t").unwrap(), ".").unwrap(), tree);
    }
}
