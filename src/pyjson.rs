//! JSON text byte-identical to what Python's `json.dumps(value)` writes with
//! its defaults (`ensure_ascii=True`, separators `", "` and `": "`, floats
//! as `repr`), and to TensorStore's compact form (nlohmann `dump()`:
//! separators `,` and `:`, UTF-8 kept). Orbax writes its metadata files one
//! of these two ways; matching them byte for byte is part of conformance.

use serde_json::Value;

/// Which writer's text to reproduce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JsonStyle {
    /// Python `json.dumps(v)` defaults.
    Python,
    /// nlohmann::json `dump()` (TensorStore's `json` kvstore driver, `zarr.json`).
    Compact,
}

/// Python's `repr(float)`: the shortest round-trip digits, in fixed notation
/// for decimal exponents -4..16 and scientific (`1e-05`, `1e+16`) otherwise.
pub fn python_float_repr(x: f64) -> String {
    if x.is_nan() {
        return "NaN".into();
    }
    if x.is_infinite() {
        return if x > 0.0 { "Infinity".into() } else { "-Infinity".into() };
    }
    if x == 0.0 {
        return if x.is_sign_negative() { "-0.0".into() } else { "0.0".into() };
    }
    let sci = format!("{x:e}"); // e.g. "-1.2345e-7": shortest round-trip digits
    let (mantissa, exp) = sci.split_once('e').expect("LowerExp has an exponent");
    let exp: i32 = exp.parse().expect("integer exponent");
    let (sign, mantissa) = mantissa.strip_prefix('-').map_or(("", mantissa), |m| ("-", m));
    let digits: String = mantissa.chars().filter(|c| *c != '.').collect();
    if !(-5 < exp && exp < 16) {
        let frac = &digits[1..];
        let mant = if frac.is_empty() { digits[..1].to_string() } else { format!("{}.{frac}", &digits[..1]) };
        return format!("{sign}{mant}e{}{:02}", if exp < 0 { '-' } else { '+' }, exp.abs());
    }
    let point = exp + 1; // digits before the decimal point
    let body = if point <= 0 {
        format!("0.{}{digits}", "0".repeat((-point) as usize))
    } else if point as usize >= digits.len() {
        format!("{digits}{}.0", "0".repeat(point as usize - digits.len()))
    } else {
        format!("{}.{}", &digits[..point as usize], &digits[point as usize..])
    };
    format!("{sign}{body}")
}

fn write_string(out: &mut String, s: &str, style: JsonStyle) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if style == JsonStyle::Python && (c as u32) > 0x7e => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

fn write_value(out: &mut String, v: &Value, style: JsonStyle) {
    let (item_sep, key_sep) = match style {
        JsonStyle::Python => (", ", ": "),
        JsonStyle::Compact => (",", ":"),
    };
    match v {
        Value::Null => out.push_str("null"),
        Value::Bool(b) => out.push_str(if *b { "true" } else { "false" }),
        Value::Number(n) => match (n.as_i64(), n.as_u64(), n.as_f64()) {
            (Some(i), _, _) => out.push_str(&i.to_string()),
            (_, Some(u), _) => out.push_str(&u.to_string()),
            (_, _, Some(f)) => out.push_str(&python_float_repr(f)),
            _ => out.push_str(&n.to_string()),
        },
        Value::String(s) => write_string(out, s, style),
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                write_value(out, item, style);
            }
            out.push(']');
        }
        Value::Object(map) => {
            out.push('{');
            for (i, (k, item)) in map.iter().enumerate() {
                if i > 0 {
                    out.push_str(item_sep);
                }
                write_string(out, k, style);
                out.push_str(key_sep);
                write_value(out, item, style);
            }
            out.push('}');
        }
    }
}

/// Serializes `v` (object keys in their insertion order) in `style`.
pub fn to_string(v: &Value, style: JsonStyle) -> String {
    let mut out = String::new();
    write_value(&mut out, v, style);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn floats_match_python_repr() {
        let cases = [
            (1.0, "1.0"),
            (0.1, "0.1"),
            (1e-5, "1e-05"),
            (0.0001, "0.0001"),
            (1e16, "1e+16"),
            (1e15, "1000000000000000.0"),
            (123.456, "123.456"),
            (-2.5e-7, "-2.5e-07"),
            (1.5e300, "1.5e+300"),
            (0.10000000149011612, "0.10000000149011612"),
            (f64::NAN, "NaN"),
            (-0.0, "-0.0"),
        ];
        for (x, want) in cases {
            assert_eq!(python_float_repr(x), want, "{x}");
        }
    }

    #[test]
    fn dumps_matches_python_defaults() {
        let v = json!({"a": [1, 2.5, null, true], "ключ": "it's \"q\"\n😀", "e": {}});
        assert_eq!(
            to_string(&v, JsonStyle::Python),
            r#"{"a": [1, 2.5, null, true], "\u043a\u043b\u044e\u0447": "it's \"q\"\n\ud83d\ude00", "e": {}}"#
        );
        assert_eq!(to_string(&json!({"a": [1, "é"]}), JsonStyle::Compact), r#"{"a":[1,"é"]}"#);
    }
}
