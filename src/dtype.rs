//! Element types, with their numpy, zarr v3 and zarr v2 names.
//!
//! The table is the set Orbax 0.12.8 + TensorStore 0.1.86 can store (see
//! `format-spec/05-dtypes.md`; `uint4`, `uint2`, `float8_e4m3` and the
//! float6 types are not in it because TensorStore rejects them). Sub-byte types (`int4`, `int2`,
//! `float4_e2m1fn`) take one byte per element on disk and in memory, as in
//! TensorStore and `ml_dtypes`. In an [`Array`](crate::Array) `int4`/`int2`
//! are sign-extended bytes and `float4_e2m1fn` keeps its bit pattern in the
//! low four bits.

use std::fmt;

/// Value of one element converted to a wide Rust type.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ScalarValue {
    /// A boolean.
    Bool(bool),
    /// A signed integer.
    Int(i64),
    /// An unsigned integer.
    UInt(u64),
    /// A real floating-point value (exactly representable in `f64` for every supported dtype).
    Float(f64),
    /// A complex value `(re, im)`.
    Complex(f64, f64),
}

impl ScalarValue {
    /// The value as `f64` (numpy's `astype(float64)`: `true` is 1, a complex
    /// value gives its real part; integers beyond 2^53 round).
    pub fn to_f64(self) -> f64 {
        match self {
            ScalarValue::Bool(b) => b as u8 as f64,
            ScalarValue::Int(i) => i as f64,
            ScalarValue::UInt(u) => u as f64,
            ScalarValue::Float(f) => f,
            ScalarValue::Complex(re, _) => re,
        }
    }
}

macro_rules! dtypes {
    ($( $variant:ident => $name:literal, $size:literal, $zarr2:literal, $doc:literal; )*) => {
        /// An element type of a stored array.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum DType {
            $( #[doc = $doc] $variant, )*
        }

        impl DType {
            /// Every supported dtype.
            pub const ALL: &'static [DType] = &[$(DType::$variant),*];

            /// The numpy / `ml_dtypes` name, which is also the zarr v3 `data_type`.
            pub fn name(self) -> &'static str {
                match self { $(DType::$variant => $name,)* }
            }

            /// Bytes per element on disk and in memory.
            pub fn size(self) -> usize {
                match self { $(DType::$variant => $size,)* }
            }

            /// The zarr v2 `dtype` string TensorStore writes.
            pub fn zarr2_name(self) -> &'static str {
                match self { $(DType::$variant => $zarr2,)* }
            }

            /// Parses a numpy name / zarr v3 `data_type`.
            pub fn from_name(name: &str) -> Option<DType> {
                match name { $($name => Some(DType::$variant),)* _ => None }
            }
        }
    };
}

dtypes! {
    Bool => "bool", 1, "|b1", "Boolean, one byte (0 or 1).";
    Int8 => "int8", 1, "|i1", "8-bit signed integer.";
    Int16 => "int16", 2, "<i2", "16-bit signed integer.";
    Int32 => "int32", 4, "<i4", "32-bit signed integer.";
    Int64 => "int64", 8, "<i8", "64-bit signed integer.";
    UInt8 => "uint8", 1, "|u1", "8-bit unsigned integer.";
    UInt16 => "uint16", 2, "<u2", "16-bit unsigned integer.";
    UInt32 => "uint32", 4, "<u4", "32-bit unsigned integer.";
    UInt64 => "uint64", 8, "<u8", "64-bit unsigned integer.";
    Float16 => "float16", 2, "<f2", "IEEE 754 half precision.";
    BFloat16 => "bfloat16", 2, "bfloat16", "bfloat16 (8 exponent bits, 7 mantissa bits).";
    Float32 => "float32", 4, "<f4", "IEEE 754 single precision.";
    Float64 => "float64", 8, "<f8", "IEEE 754 double precision.";
    Complex64 => "complex64", 8, "<c8", "Two float32: real, imaginary.";
    Complex128 => "complex128", 16, "<c16", "Two float64: real, imaginary.";
    Float8E3M4 => "float8_e3m4", 1, "float8_e3m4", "8-bit float, 3 exponent / 4 mantissa bits, IEEE-like.";
    Float8E4M3FN => "float8_e4m3fn", 1, "float8_e4m3fn", "8-bit float e4m3, finite only (NaN = all ones).";
    Float8E4M3FNUZ => "float8_e4m3fnuz", 1, "float8_e4m3fnuz", "8-bit float e4m3, finite, unsigned zero (NaN = 0x80).";
    Float8E4M3B11FNUZ => "float8_e4m3b11fnuz", 1, "float8_e4m3b11fnuz", "8-bit float e4m3 with bias 11, finite, unsigned zero.";
    Float8E5M2 => "float8_e5m2", 1, "float8_e5m2", "8-bit float e5m2, IEEE-like.";
    Float8E5M2FNUZ => "float8_e5m2fnuz", 1, "float8_e5m2fnuz", "8-bit float e5m2, finite, unsigned zero (NaN = 0x80).";
    Float8E8M0FNU => "float8_e8m0fnu", 1, "float8_e8m0fnu", "8-bit power of two (scale type), NaN = 0xff.";
    Float4E2M1FN => "float4_e2m1fn", 1, "float4_e2m1fn", "4-bit float e2m1, finite only, one element per byte.";
    Int4 => "int4", 1, "int4", "4-bit signed integer, one element per byte.";
    Int2 => "int2", 1, "int2", "2-bit signed integer, one element per byte.";
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Layout of a small float type: bit widths, bias and how it encodes
/// infinities and NaN.
#[derive(Debug, Clone, Copy)]
struct MiniFloat {
    exp_bits: u32,
    man_bits: u32,
    bias: i32,
    special: Special,
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Special {
    /// All-ones exponent is inf (mantissa 0) or NaN.
    Ieee,
    /// Only all-ones exponent *and* mantissa is NaN; no infinity.
    FiniteNanAllOnes,
    /// Sign bit with zero magnitude is NaN; no infinity, no negative zero.
    Fnuz,
    /// No sign, no mantissa; 0xff is NaN.
    E8M0,
    /// Every pattern is finite.
    FiniteOnly,
}

impl DType {
    fn minifloat(self) -> Option<MiniFloat> {
        let m = |exp_bits, man_bits, bias, special| Some(MiniFloat { exp_bits, man_bits, bias, special });
        match self {
            DType::Float8E3M4 => m(3, 4, 3, Special::Ieee),
            DType::Float8E4M3FN => m(4, 3, 7, Special::FiniteNanAllOnes),
            DType::Float8E4M3FNUZ => m(4, 3, 8, Special::Fnuz),
            DType::Float8E4M3B11FNUZ => m(4, 3, 11, Special::Fnuz),
            DType::Float8E5M2 => m(5, 2, 15, Special::Ieee),
            DType::Float8E5M2FNUZ => m(5, 2, 16, Special::Fnuz),
            DType::Float8E8M0FNU => m(8, 0, 127, Special::E8M0),
            DType::Float4E2M1FN => m(2, 1, 1, Special::FiniteOnly),
            _ => None,
        }
    }

    /// True for sub-byte types stored one element per byte.
    pub fn is_sub_byte(self) -> bool {
        matches!(self, DType::Int4 | DType::Int2 | DType::Float4E2M1FN)
    }

    /// The numpy `descr` used when this dtype is written to a `.npy` file
    /// by `orbax cat --npy`: native numpy types keep theirs, `bfloat16`
    /// becomes `<u2` bit patterns, float8/float4 `|u1` bit patterns and
    /// `int4`/`int2` `|i1` values.
    pub fn npy_descr(self) -> &'static str {
        match self {
            DType::BFloat16 => "<u2",
            DType::Int4 | DType::Int2 => "|i1",
            d if d.minifloat().is_some() => "|u1",
            d => d.zarr2_name(),
        }
    }

    /// Converts on-disk element bytes (little-endian, one byte per element
    /// for sub-byte types) into the in-memory representation, in place:
    /// sign-extends `int4`/`int2` and masks unused high bits of the other
    /// sub-byte types. Other dtypes are already in memory form.
    pub fn normalize_stored(self, data: &mut [u8]) {
        let bits = match self {
            DType::Int4 | DType::Float4E2M1FN => 4,
            DType::Int2 => 2,
            _ => return,
        };
        let signed = matches!(self, DType::Int4 | DType::Int2);
        let shift = 8 - bits;
        for b in data {
            *b = if signed { (((*b << shift) as i8) >> shift) as u8 } else { *b & ((1u8 << bits) - 1) };
        }
    }

    /// Decodes one element (`bytes.len() == self.size()`, in memory form).
    pub fn scalar(self, b: &[u8]) -> ScalarValue {
        let le2 = || [b[0], b[1]];
        let le4 = || [b[0], b[1], b[2], b[3]];
        let le8 = || [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]];
        match self {
            DType::Bool => ScalarValue::Bool(b[0] != 0),
            DType::Int8 | DType::Int4 | DType::Int2 => ScalarValue::Int(b[0] as i8 as i64),
            DType::Int16 => ScalarValue::Int(i16::from_le_bytes(le2()) as i64),
            DType::Int32 => ScalarValue::Int(i32::from_le_bytes(le4()) as i64),
            DType::Int64 => ScalarValue::Int(i64::from_le_bytes(le8())),
            DType::UInt8 => ScalarValue::UInt(b[0] as u64),
            DType::UInt16 => ScalarValue::UInt(u16::from_le_bytes(le2()) as u64),
            DType::UInt32 => ScalarValue::UInt(u32::from_le_bytes(le4()) as u64),
            DType::UInt64 => ScalarValue::UInt(u64::from_le_bytes(le8())),
            DType::Float16 => ScalarValue::Float(half::f16::from_le_bytes(le2()).to_f64()),
            DType::BFloat16 => ScalarValue::Float(half::bf16::from_le_bytes(le2()).to_f64()),
            DType::Float32 => ScalarValue::Float(f32::from_le_bytes(le4()) as f64),
            DType::Float64 => ScalarValue::Float(f64::from_le_bytes(le8())),
            DType::Complex64 => ScalarValue::Complex(
                f32::from_le_bytes(le4()) as f64,
                f32::from_le_bytes([b[4], b[5], b[6], b[7]]) as f64,
            ),
            DType::Complex128 => ScalarValue::Complex(
                f64::from_le_bytes(le8()),
                f64::from_le_bytes([b[8], b[9], b[10], b[11], b[12], b[13], b[14], b[15]]),
            ),
            d => ScalarValue::Float(d.minifloat().expect("remaining dtypes are minifloats").decode(b[0])),
        }
    }

    /// Encodes a value of this dtype from a JSON-ish scalar (used for zarr
    /// fill values). Returns `None` if the value cannot be represented.
    pub fn encode_scalar(self, v: ScalarValue) -> Option<Vec<u8>> {
        let as_f64 = match v {
            ScalarValue::Bool(b) => b as u8 as f64,
            ScalarValue::Int(i) => i as f64,
            ScalarValue::UInt(u) => u as f64,
            ScalarValue::Float(f) => f,
            ScalarValue::Complex(re, _) => re,
        };
        let int = |lo: i128, hi: i128| -> Option<i128> {
            let i = match v {
                ScalarValue::Int(i) => i as i128,
                ScalarValue::UInt(u) => u as i128,
                ScalarValue::Bool(b) => b as i128,
                ScalarValue::Float(f) if f.fract() == 0.0 && f.is_finite() => f as i128,
                _ => return None,
            };
            (lo..=hi).contains(&i).then_some(i)
        };
        Some(match self {
            DType::Bool => vec![(as_f64 != 0.0) as u8],
            DType::Int8 => (int(-128, 127)? as i8).to_le_bytes().to_vec(),
            DType::Int16 => (int(i16::MIN as i128, i16::MAX as i128)? as i16).to_le_bytes().to_vec(),
            DType::Int32 => (int(i32::MIN as i128, i32::MAX as i128)? as i32).to_le_bytes().to_vec(),
            DType::Int64 => (int(i64::MIN as i128, i64::MAX as i128)? as i64).to_le_bytes().to_vec(),
            DType::UInt8 => (int(0, 255)? as u8).to_le_bytes().to_vec(),
            DType::UInt16 => (int(0, u16::MAX as i128)? as u16).to_le_bytes().to_vec(),
            DType::UInt32 => (int(0, u32::MAX as i128)? as u32).to_le_bytes().to_vec(),
            DType::UInt64 => (int(0, u64::MAX as i128)? as u64).to_le_bytes().to_vec(),
            DType::Int4 => vec![int(-8, 7)? as i8 as u8],
            DType::Int2 => vec![int(-2, 1)? as i8 as u8],
            DType::Float16 => half::f16::from_f64(as_f64).to_le_bytes().to_vec(),
            DType::BFloat16 => half::bf16::from_f64(as_f64).to_le_bytes().to_vec(),
            DType::Float32 => (as_f64 as f32).to_le_bytes().to_vec(),
            DType::Float64 => as_f64.to_le_bytes().to_vec(),
            DType::Complex64 => {
                let (re, im) = match v {
                    ScalarValue::Complex(re, im) => (re, im),
                    _ => (as_f64, 0.0),
                };
                [(re as f32).to_le_bytes(), (im as f32).to_le_bytes()].concat()
            }
            DType::Complex128 => {
                let (re, im) = match v {
                    ScalarValue::Complex(re, im) => (re, im),
                    _ => (as_f64, 0.0),
                };
                [re.to_le_bytes(), im.to_le_bytes()].concat()
            }
            // TensorStore writes a zero fill value for every small float type,
            // and fills with byte 0x00 — even for float8_e8m0fnu, which has no
            // zero (0x00 is 2^-127 there).
            _ if as_f64 == 0.0 && !as_f64.is_sign_negative() => vec![0],
            d => {
                // Small floats: only values whose encoding we can find exactly.
                let mf = d.minifloat().expect("remaining dtypes are minifloats");
                let bits = (0..=255u8).find(|&bits| {
                    let x = mf.decode(bits);
                    x == as_f64 && x.is_sign_negative() == as_f64.is_sign_negative() || (x.is_nan() && as_f64.is_nan())
                })?;
                vec![bits]
            }
        })
    }
}

impl MiniFloat {
    fn decode(self, bits: u8) -> f64 {
        let MiniFloat { exp_bits, man_bits, bias, special } = self;
        if special == Special::E8M0 {
            return if bits == 0xff { f64::NAN } else { 2f64.powi(bits as i32 - bias) };
        }
        let width = 1 + exp_bits + man_bits;
        let bits = bits as u32 & ((1u32 << width) - 1);
        let sign_bit = 1u32 << (width - 1);
        let exp_mask = (1u32 << exp_bits) - 1;
        let man_mask = (1u32 << man_bits) - 1;
        let negative = bits & sign_bit != 0;
        let exp = (bits >> man_bits) & exp_mask;
        let man = bits & man_mask;
        match special {
            Special::Fnuz if bits == sign_bit => return f64::NAN,
            Special::FiniteNanAllOnes if exp == exp_mask && man == man_mask => return f64::NAN,
            Special::Ieee if exp == exp_mask => {
                return if man != 0 {
                    f64::NAN
                } else if negative {
                    f64::NEG_INFINITY
                } else {
                    f64::INFINITY
                };
            }
            _ => {}
        }
        let magnitude = if exp == 0 {
            man as f64 * 2f64.powi(1 - bias - man_bits as i32)
        } else {
            (1.0 + man as f64 / (1u32 << man_bits) as f64) * 2f64.powi(exp as i32 - bias)
        };
        if negative {
            -magnitude
        } else {
            magnitude
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for &d in DType::ALL {
            assert_eq!(DType::from_name(d.name()), Some(d));
        }
        assert_eq!(DType::from_name("float128"), None);
    }

    #[test]
    fn minifloats_decode_like_ml_dtypes() {
        let f = |d: DType, b: u8| match d.scalar(&[b]) {
            ScalarValue::Float(x) => x,
            other => panic!("{other:?}"),
        };
        assert_eq!(f(DType::Float8E4M3FN, 0x38), 1.0);
        assert_eq!(f(DType::Float8E4M3FN, 0x7e), 448.0);
        assert!(f(DType::Float8E4M3FN, 0x7f).is_nan());
        assert_eq!(f(DType::Float8E5M2, 0x3c), 1.0);
        assert_eq!(f(DType::Float8E5M2, 0x7c), f64::INFINITY);
        assert_eq!(f(DType::Float8E4M3FNUZ, 0x40), 1.0);
        assert!(f(DType::Float8E4M3FNUZ, 0x80).is_nan());
        assert_eq!(f(DType::Float8E5M2FNUZ, 0x40), 1.0);
        assert_eq!(f(DType::Float8E4M3B11FNUZ, 0x58), 1.0);
        assert_eq!(f(DType::Float8E8M0FNU, 127), 1.0);
        assert_eq!(f(DType::Float8E8M0FNU, 0), 2f64.powi(-127));
        assert_eq!(f(DType::Float4E2M1FN, 0x2), 1.0);
        assert_eq!(f(DType::Float4E2M1FN, 0x7), 6.0);
        assert_eq!(f(DType::Float4E2M1FN, 0xf), -6.0);
        assert_eq!(f(DType::Float4E2M1FN, 0x1), 0.5);
        assert_eq!(f(DType::Float8E3M4, 0x30), 1.0);
    }

    #[test]
    fn sub_byte_integers_are_sign_extended() {
        let mut data = [0x0e, 0x07, 0x08, 0xf3];
        DType::Int4.normalize_stored(&mut data);
        assert_eq!(data.map(|b| b as i8), [-2, 7, -8, 3]);
        let mut data = [0x03, 0x01];
        DType::Int2.normalize_stored(&mut data);
        assert_eq!(data.map(|b| b as i8), [-1, 1]);
    }

    #[test]
    fn fill_values_encode() {
        assert_eq!(DType::Int32.encode_scalar(ScalarValue::Int(0)), Some(vec![0; 4]));
        assert_eq!(DType::Float8E4M3FN.encode_scalar(ScalarValue::Float(1.0)), Some(vec![0x38]));
        assert_eq!(DType::Int8.encode_scalar(ScalarValue::Int(300)), None);
    }
}
