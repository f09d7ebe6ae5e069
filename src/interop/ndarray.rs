//! [`Array`] to [`ndarray`] (cargo feature `ndarray`).
//!
//! [`Array::as_ndarray`] borrows the array's bytes as an
//! `ArrayViewD<T>` without copying when they are suitably aligned for `T`
//! (the usual case: allocations are at least 8-byte aligned) and copies
//! otherwise; [`Array::to_ndarray`] always returns an owned `ArrayD<T>`.
//! The element type must match the array's dtype; cast first with
//! [`crate::cast::cast_array`] (e.g. bfloat16 or float8 to `f32`).

use ndarray::{ArrayD, ArrayViewD, CowArray, IxDyn};

use crate::dtype::DType;
use crate::pytree::Array;

mod sealed {
    pub trait Sealed {}
}

/// A Rust element type with the same in-memory layout as one [`DType`].
pub trait Element: sealed::Sealed + Copy + 'static {
    /// The dtype whose elements this type holds.
    const DTYPE: DType;
    /// Reads one element from its little-endian bytes.
    fn from_le(bytes: &[u8]) -> Self;
}

macro_rules! elements {
    ($($t:ty => $d:ident),* $(,)?) => {$(
        impl sealed::Sealed for $t {}
        impl Element for $t {
            const DTYPE: DType = DType::$d;
            fn from_le(bytes: &[u8]) -> Self {
                <$t>::from_le_bytes(bytes.try_into().expect("one element"))
            }
        }
    )*};
}

elements!(
    i8 => Int8, i16 => Int16, i32 => Int32, i64 => Int64,
    u8 => UInt8, u16 => UInt16, u32 => UInt32, u64 => UInt64,
    f32 => Float32, f64 => Float64,
);

fn shape_of(array: &Array) -> Result<IxDyn, String> {
    let dims = array
        .shape()
        .iter()
        .map(|&n| usize::try_from(n).map_err(|_| format!("dimension {n} does not fit in usize")))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(IxDyn(&dims))
}

fn check<T: Element>(array: &Array) -> Result<IxDyn, String> {
    if array.dtype() != T::DTYPE {
        return Err(format!("array is {}, not {}; cast it first (orbax::cast::cast_array)", array.dtype(), T::DTYPE));
    }
    shape_of(array)
}

/// Borrows `bytes` (C-order little-endian elements) as a view when aligned
/// for `T` on a little-endian target, else copies.
fn cow_from_bytes<T: Element>(bytes: &[u8], shape: IxDyn) -> CowArray<'_, T, IxDyn> {
    let aligned = (bytes.as_ptr() as usize) % std::mem::align_of::<T>() == 0;
    if aligned && cfg!(target_endian = "little") {
        // SAFETY: `bytes` holds exactly `shape.size()` elements of `T` (checked by
        // the caller via the dtype and `Array`'s invariant), is aligned for `T`,
        // every bit pattern is a valid `T` (plain integers and floats), and the
        // view borrows `bytes` for its lifetime.
        let slice = unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), bytes.len() / size_of::<T>()) };
        CowArray::from(ArrayViewD::from_shape(shape, slice).expect("length matches the shape"))
    } else {
        let values = bytes.chunks_exact(size_of::<T>()).map(T::from_le).collect();
        CowArray::from(ArrayD::from_shape_vec(shape, values).expect("length matches the shape"))
    }
}

impl Array {
    /// The array as an `ndarray` of `T` (which must match its dtype),
    /// borrowing its bytes without a copy when alignment allows.
    pub fn as_ndarray<T: Element>(&self) -> Result<CowArray<'_, T, IxDyn>, String> {
        let shape = check::<T>(self)?;
        Ok(cow_from_bytes(self.data(), shape))
    }

    /// The array as an owned `ndarray` of `T` (which must match its dtype).
    pub fn to_ndarray<T: Element>(&self) -> Result<ArrayD<T>, String> {
        Ok(self.as_ndarray::<T>()?.into_owned())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(values: &[f32], shape: Vec<u64>) -> Array {
        Array::new(DType::Float32, shape, values.iter().flat_map(|v| v.to_le_bytes()).collect()).unwrap()
    }

    #[test]
    fn converts_with_shape_and_dtype() {
        let a = f32s(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0], vec![2, 3]);
        let n = a.to_ndarray::<f32>().unwrap();
        assert_eq!(n.shape(), [2, 3]);
        assert_eq!(n[[1, 2]], 6.0);
        assert_eq!(a.as_ndarray::<f32>().unwrap()[[0, 1]], 2.0);
        let err = a.to_ndarray::<f64>().unwrap_err();
        assert_eq!(err, "array is float32, not float64; cast it first (orbax::cast::cast_array)");
        let scalar = Array::new(DType::Int64, vec![], 7i64.to_le_bytes().to_vec()).unwrap();
        assert_eq!(scalar.to_ndarray::<i64>().unwrap().into_raw_vec_and_offset().0, [7]);
    }

    #[test]
    fn borrows_when_aligned_and_copies_when_not() {
        let words: Vec<u32> = vec![0x0403_0201, 0x0807_0605, 0];
        // SAFETY: u32 to bytes is always valid; the slice borrows `words`.
        let bytes = unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), 12) };
        let aligned = cow_from_bytes::<u32>(&bytes[..8], IxDyn(&[2]));
        assert!(aligned.is_view());
        assert_eq!(aligned.as_slice().unwrap().as_ptr().cast::<u8>(), bytes.as_ptr());
        let shifted = cow_from_bytes::<u32>(&bytes[1..9], IxDyn(&[2]));
        assert!(shifted.is_owned());
        assert_eq!(shifted.as_slice().unwrap(), [0x0504_0302, 0x0008_0706u32]);
    }
}
