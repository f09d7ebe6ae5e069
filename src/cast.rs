//! dtype conversion with numpy `astype` semantics, used for on-disk
//! (storage) dtypes on save and for casting on load.
//!
//! * integer → integer wraps modulo 2^bits (C casts, as numpy does);
//! * float → integer truncates toward zero; NaN and out-of-range values,
//!   which numpy leaves platform-defined, saturate (NaN → 0) like Rust's `as`;
//! * → `bool`: non-zero (for complex: either part non-zero) is `true`;
//! * complex → real drops the imaginary part (numpy's `ComplexWarning` case);
//! * → `float16`, `float32`, `float64`: one IEEE round-to-nearest-even step
//!   from the source value;
//! * → `bfloat16`: via `float32`, then round-to-nearest-even (as `ml_dtypes`);
//! * → float8 / float4 types: round-to-nearest-even from the exact value;
//!   values beyond the largest finite become ±inf where the type has
//!   infinities and NaN where it does not (`ml_dtypes` without saturation);
//!   `float4_e2m1fn`, which has neither, saturates.

use crate::dtype::{DType, ScalarValue};
use crate::pytree::Array;

fn as_f32(v: ScalarValue) -> f32 {
    match v {
        ScalarValue::Int(i) => i as f32,
        ScalarValue::UInt(u) => u as f32,
        other => other.to_f64() as f32,
    }
}

/// The value as the 64 low bits of a two's-complement integer (for wrapping casts).
fn as_wrapping_i64(v: ScalarValue) -> i64 {
    match v {
        ScalarValue::Bool(b) => b as i64,
        ScalarValue::Int(i) => i,
        ScalarValue::UInt(u) => u as i64,
        ScalarValue::Float(f) | ScalarValue::Complex(f, _) => {
            if f.is_nan() {
                0
            } else if f >= 0.0 {
                (f as u64) as i64
            } else {
                f as i64
            }
        }
    }
}

/// Every code of a small float type with its value, and the facts about
/// its largest finite value that rounding needs; built once per type.
struct CodeTable {
    codes: Vec<(u8, f64)>,
    max_code: u8,
    max: f64,
    half_ulp: f64,
}

fn code_table(dtype: DType) -> &'static CodeTable {
    static TABLES: std::sync::OnceLock<Vec<(DType, CodeTable)>> = std::sync::OnceLock::new();
    let tables = TABLES.get_or_init(|| {
        DType::ALL
            .iter()
            .filter(|d| d.size() == 1 && matches!(d.scalar(&[0]), ScalarValue::Float(_)))
            .map(|&d| {
                let count: u16 = if d == DType::Float4E2M1FN { 16 } else { 256 };
                let codes: Vec<(u8, f64)> = (0..count)
                    .map(|c| match d.scalar(&[c as u8]) {
                        ScalarValue::Float(v) => (c as u8, v),
                        _ => unreachable!("small float types decode to floats"),
                    })
                    .collect();
                let finite = || codes.iter().filter(|(_, v)| v.is_finite());
                let (max_code, max) =
                    finite().fold((0u8, f64::MIN), |acc, &(c, v)| if v > acc.1 { (c, v) } else { acc });
                let below_max = finite().map(|(_, v)| *v).filter(|v| *v < max).fold(f64::MIN, f64::max);
                let table = CodeTable { max_code, max, half_ulp: (max - below_max) / 2.0, codes };
                (d, table)
            })
            .collect()
    });
    &tables.iter().find(|(d, _)| *d == dtype).expect("a small float type").1
}

/// Round-to-nearest-even encoding of `x` into a small float type.
fn encode_minifloat(dtype: DType, x: f64) -> u8 {
    let CodeTable { codes, max_code, max, half_ulp } = code_table(dtype);
    let (max_code, max, half_ulp) = (*max_code, *max, *half_ulp);
    // The NaN code with the input's sign bit if there is one (e4m3fn has
    // 0x7f and 0xff), otherwise the only one (0x80 of the fnuz types).
    let nan = codes
        .iter()
        .filter(|(_, v)| v.is_nan())
        .map(|(c, _)| *c)
        .min_by_key(|c| ((c & 0x80 != 0) != x.is_sign_negative(), *c));
    let infinity = |negative: bool| {
        codes.iter().find(|(_, v)| v.is_infinite() && v.is_sign_negative() == negative).map(|(c, _)| *c)
    };
    if x.is_nan() {
        return nan.unwrap_or(0);
    }
    if dtype == DType::Float8E8M0FNU {
        // Unsigned powers of two: no zero and no negatives (both NaN); ties
        // between neighbours round up.
        if x <= 0.0 || x.is_infinite() {
            return 0xff;
        }
        let (mut code, mut best) = (0xffu8, f64::INFINITY);
        for &(c, v) in codes.iter().filter(|(_, v)| v.is_finite()) {
            let d = (v - x).abs();
            if d < best || (d == best && v > codes[code as usize].1) {
                (code, best) = (c, d);
            }
        }
        return code;
    }
    let finite = || codes.iter().filter(|(_, v)| v.is_finite());
    let beyond = x.abs() - max;
    let overflows = x.is_infinite() || beyond > half_ulp || (beyond == half_ulp && max_code & 1 == 1);
    if overflows {
        let saturated = finite().find(|(_, v)| *v == if x < 0.0 { -max } else { max }).map(|(c, _)| *c);
        return infinity(x < 0.0).or(nan).or(saturated).unwrap_or(max_code);
    }
    let mut best: Option<(u8, f64)> = None;
    for &(c, v) in finite() {
        let d = (v - x).abs();
        best = match best {
            Some((bc, bd)) if d > bd || (d == bd && (c & 1 == 1 || bc & 1 == 0)) => Some((bc, bd)),
            _ => Some((c, d)),
        };
    }
    let (code, _) = best.expect("every type has finite codes");
    // Zero keeps the sign of the input where the type has a negative zero.
    if codes[code as usize].1 == 0.0 {
        if let Some((c, _)) = finite().find(|(_, v)| *v == 0.0 && v.is_sign_negative() == x.is_sign_negative()) {
            return *c;
        }
    }
    code
}

/// One element of `to` from a value.
pub fn cast_scalar(v: ScalarValue, to: DType) -> Vec<u8> {
    let mut out = Vec::with_capacity(to.size());
    cast_scalar_into(v, to, &mut out);
    out
}

/// Appends one element of `to` from a value to `out` (no allocation per element).
fn cast_scalar_into(v: ScalarValue, to: DType, out: &mut Vec<u8>) {
    // Only integer targets need the wrapped value.
    let wrap = || as_wrapping_i64(v);
    match to {
        DType::Bool => out.push(match v {
            ScalarValue::Complex(re, im) => (re != 0.0 || im != 0.0) as u8,
            other => (other.to_f64() != 0.0 || matches!(other, ScalarValue::Int(i) if i != 0)) as u8,
        }),
        DType::Int8 => out.extend_from_slice(&(wrap() as i8).to_le_bytes()),
        DType::Int16 => out.extend_from_slice(&(wrap() as i16).to_le_bytes()),
        DType::Int32 => out.extend_from_slice(&(wrap() as i32).to_le_bytes()),
        DType::Int64 => out.extend_from_slice(&wrap().to_le_bytes()),
        DType::UInt8 => out.extend_from_slice(&(wrap() as u8).to_le_bytes()),
        DType::UInt16 => out.extend_from_slice(&(wrap() as u16).to_le_bytes()),
        DType::UInt32 => out.extend_from_slice(&(wrap() as u32).to_le_bytes()),
        DType::UInt64 => out.extend_from_slice(&(wrap() as u64).to_le_bytes()),
        DType::Int4 => out.push((((wrap() as u8) << 4) as i8 >> 4) as u8),
        DType::Int2 => out.push((((wrap() as u8) << 6) as i8 >> 6) as u8),
        DType::Float16 => out.extend_from_slice(&half::f16::from_f64(v.to_f64()).to_le_bytes()),
        DType::BFloat16 => out.extend_from_slice(&half::bf16::from_f32(as_f32(v)).to_le_bytes()),
        DType::Float32 => out.extend_from_slice(&as_f32(v).to_le_bytes()),
        DType::Float64 => out.extend_from_slice(&v.to_f64().to_le_bytes()),
        DType::Complex64 => {
            let (re, im) = match v {
                ScalarValue::Complex(re, im) => (re as f32, im as f32),
                other => (as_f32(other), 0.0),
            };
            out.extend_from_slice(&re.to_le_bytes());
            out.extend_from_slice(&im.to_le_bytes());
        }
        DType::Complex128 => {
            let (re, im) = match v {
                ScalarValue::Complex(re, im) => (re, im),
                other => (other.to_f64(), 0.0),
            };
            out.extend_from_slice(&re.to_le_bytes());
            out.extend_from_slice(&im.to_le_bytes());
        }
        small => out.push(encode_minifloat(small, v.to_f64())),
    }
}

/// Casts between bfloat16, float16, float32 and float64 a block at a time
/// (the dtype dispatch outside the element loops); the same results as
/// [`cast_scalar`] per element. `None` for other pairs.
fn cast_wide_floats(data: &[u8], from: DType, to: DType) -> Option<Vec<u8>> {
    const BLOCK: usize = 1024;
    let wide = |d| matches!(d, DType::BFloat16 | DType::Float16 | DType::Float32 | DType::Float64);
    if !wide(from) || !wide(to) {
        return None;
    }
    let (n, m) = (from.size(), to.size());
    let mut out = Vec::with_capacity(data.len() / n * m);
    let mut values = [0f64; BLOCK];
    for block in data.chunks(BLOCK * n) {
        let values = &mut values[..block.len() / n];
        let elements = block.chunks_exact(n);
        match from {
            DType::BFloat16 => values.iter_mut().zip(elements).for_each(|(v, e)| {
                *v = half::bf16::from_le_bytes([e[0], e[1]]).to_f64();
            }),
            DType::Float16 => values.iter_mut().zip(elements).for_each(|(v, e)| {
                *v = half::f16::from_le_bytes([e[0], e[1]]).to_f64();
            }),
            DType::Float32 => values.iter_mut().zip(elements).for_each(|(v, e)| {
                *v = f32::from_le_bytes([e[0], e[1], e[2], e[3]]) as f64;
            }),
            _ => values.iter_mut().zip(elements).for_each(|(v, e)| {
                *v = f64::from_le_bytes(e.try_into().expect("8-byte element"));
            }),
        }
        match to {
            DType::BFloat16 => {
                values.iter().for_each(|&v| out.extend_from_slice(&half::bf16::from_f32(v as f32).to_le_bytes()))
            }
            DType::Float16 => values.iter().for_each(|&v| out.extend_from_slice(&half::f16::from_f64(v).to_le_bytes())),
            DType::Float32 => values.iter().for_each(|&v| out.extend_from_slice(&(v as f32).to_le_bytes())),
            _ => values.iter().for_each(|&v| out.extend_from_slice(&v.to_le_bytes())),
        }
    }
    Some(out)
}

/// Casts every element of `array` to `to`.
pub fn cast_array(array: &Array, to: DType) -> Array {
    if array.dtype() == to {
        return array.clone();
    }
    let from = array.dtype();
    if let Some(out) = cast_wide_floats(array.data(), from, to) {
        return Array::new(to, array.shape().to_vec(), out).expect("one output element per input element");
    }
    let mut out = Vec::with_capacity(array.len() as usize * to.size());
    for element in array.data().chunks_exact(from.size()) {
        cast_scalar_into(from.scalar(element), to, &mut out);
    }
    Array::new(to, array.shape().to_vec(), out).expect("one output element per input element")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f32s(v: &[f32]) -> Array {
        Array::new(DType::Float32, vec![v.len() as u64], v.iter().flat_map(|x| x.to_le_bytes()).collect()).unwrap()
    }

    #[test]
    fn wide_float_fast_path_matches_the_per_element_cast() {
        let wide = [DType::BFloat16, DType::Float16, DType::Float32, DType::Float64];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut random = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for from in wide {
            // Random bit patterns (NaNs, infinities, subnormals included) plus a ragged last block.
            let count = 2500;
            let data: Vec<u8> = (0..count).flat_map(|_| random().to_le_bytes()[..from.size()].to_vec()).collect();
            let array = Array::new(from, vec![count], data).unwrap();
            for to in wide {
                let fast = cast_wide_floats(array.data(), from, to).unwrap();
                let slow: Vec<u8> =
                    array.data().chunks_exact(from.size()).flat_map(|e| cast_scalar(from.scalar(e), to)).collect();
                assert!(fast == slow, "{from} -> {to}");
            }
        }
        assert!(cast_wide_floats(&[0; 4], DType::Int32, DType::Float32).is_none());
    }

    #[test]
    fn float_to_int_truncates_and_ints_wrap() {
        let a = cast_array(&f32s(&[1.9, -1.9, 300.0]), DType::Int16);
        assert_eq!(a.data(), [1i16, -1, 300].iter().flat_map(|x| x.to_le_bytes()).collect::<Vec<_>>());
        let i = Array::new(DType::Int32, vec![2], [300i32, -1].iter().flat_map(|x| x.to_le_bytes()).collect()).unwrap();
        assert_eq!(cast_array(&i, DType::UInt8).data(), &[44, 255]);
    }

    #[test]
    fn bfloat16_rounds_to_nearest_even() {
        // 1 + 2^-8 is exactly between two bfloat16 values: ties to even (1.0).
        let a = cast_array(&f32s(&[1.0 + 1.0 / 256.0, 1.0 + 3.0 / 256.0]), DType::BFloat16);
        assert_eq!(a.data(), &[0x80, 0x3f, 0x82, 0x3f]);
    }

    #[test]
    fn float8_rounding_and_overflow() {
        let enc = |d, x| cast_scalar(ScalarValue::Float(x), d)[0];
        assert_eq!(enc(DType::Float8E4M3FN, 1.0), 0x38);
        assert_eq!(enc(DType::Float8E4M3FN, 448.0), 0x7e);
        assert_eq!(enc(DType::Float8E4M3FN, 1000.0), 0x7f); // NaN: no infinity
        assert_eq!(enc(DType::Float8E5M2, 1e6), 0x7c); // +inf
        assert_eq!(enc(DType::Float8E4M3FN, 1.0625), 0x38); // tie between 1.0 and 1.125 → even
        assert_eq!(enc(DType::Float4E2M1FN, 100.0), 0x7); // saturates at 6
        assert_eq!(enc(DType::Float4E2M1FN, -0.75), 0xa); // tie 0.5/1.0 → even (1.0)
    }
}

#[cfg(test)]
mod ml_dtypes_cases {
    use super::cast_scalar;
    use crate::dtype::{DType, ScalarValue};

    /// `tests/data/cast_cases.json`: numpy + ml_dtypes `astype` from float64
    /// (generated by `conformance/generate/make_cast_cases.py`).
    #[test]
    fn float64_casts_agree_with_ml_dtypes() {
        let doc: serde_json::Value = serde_json::from_str(include_str!("../tests/data/cast_cases.json")).unwrap();
        let values: Vec<f64> = doc["values"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap()).collect();
        let mut mismatches = Vec::new();
        for (name, bits) in doc["bits"].as_object().unwrap() {
            let dtype = DType::from_name(name).unwrap();
            for (x, want) in values.iter().zip(bits.as_array().unwrap()) {
                let got = cast_scalar(ScalarValue::Float(*x), dtype);
                let got = if got.len() == 2 { u16::from_le_bytes([got[0], got[1]]) as u64 } else { got[0] as u64 };
                if got != want.as_u64().unwrap() {
                    mismatches.push(format!("{name}({x}) = {got:#x}, ml_dtypes {want}"));
                }
            }
        }
        assert!(
            mismatches.is_empty(),
            "{} mismatches:\n{}",
            mismatches.len(),
            mismatches[..mismatches.len().min(30)].join("\n")
        );
    }
}
