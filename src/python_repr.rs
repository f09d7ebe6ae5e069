//! Python `repr` of strings and tuples of strings, and the parsers for the
//! two places Orbax and JAX put such text: `_METADATA` keys
//! (`"('params', '0')"`) and JAX `keystr` paths (`['params'][0].x`).

use crate::pytree::{KeyEntry, KeyPath};

fn is_printable(c: char) -> bool {
    // Python's str.isprintable() for the characters that occur in practice:
    // control characters, the Latin-1 controls and NBSP, soft hyphen, zero-
    // width and bidi formatting marks, line/paragraph separators, BOM.
    let u = c as u32;
    !(u < 0x20
        || (0x7f..=0xa0).contains(&u)
        || u == 0xad
        || (0x2000..=0x200f).contains(&u)
        || (0x2028..=0x202f).contains(&u)
        || (0x2060..=0x206f).contains(&u)
        || u == 0x3000
        || u == 0xfeff
        || (0xd800..=0xdfff).contains(&u)
        || (0xe000..=0xf8ff).contains(&u))
}

/// Python's `repr(s)` for a `str`.
pub fn repr_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') { '"' } else { '\'' };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            ' ' => out.push(' '),
            c if is_printable(c) => out.push(c),
            c if (c as u32) < 0x100 => out.push_str(&format!("\\x{:02x}", c as u32)),
            c if (c as u32) < 0x10000 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push_str(&format!("\\U{:08x}", c as u32)),
        }
    }
    out.push(quote);
    out
}

/// Python's `repr(tuple(names))` for a tuple of strings.
pub fn repr_str_tuple<S: AsRef<str>>(names: &[S]) -> String {
    match names {
        [] => "()".to_string(),
        [one] => format!("({},)", repr_str(one.as_ref())),
        many => format!("({})", many.iter().map(|s| repr_str(s.as_ref())).collect::<Vec<_>>().join(", ")),
    }
}

struct Cursor<'a> {
    s: &'a str,
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn peek(&self) -> Option<char> {
        self.s[self.pos..].chars().next()
    }

    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        match self.bump() {
            Some(got) if got == c => Ok(()),
            got => Err(format!("expected {c:?} at byte {} of {:?}, found {got:?}", self.pos, self.s)),
        }
    }

    fn hex(&mut self, digits: usize) -> Result<char, String> {
        let start = self.pos;
        for _ in 0..digits {
            self.bump();
        }
        let text = self.s.get(start..self.pos).ok_or("truncated escape")?;
        let code = u32::from_str_radix(text, 16).map_err(|_| format!("bad escape \\{text}"))?;
        char::from_u32(code).ok_or_else(|| format!("escape {code:#x} is not a character"))
    }

    /// A Python string literal in single or double quotes.
    fn string(&mut self) -> Result<String, String> {
        let quote = match self.bump() {
            Some(q @ ('\'' | '"')) => q,
            other => return Err(format!("expected a quoted string in {:?}, found {other:?}", self.s)),
        };
        let mut out = String::new();
        loop {
            match self.bump().ok_or_else(|| format!("unterminated string in {:?}", self.s))? {
                c if c == quote => return Ok(out),
                '\\' => match self.bump().ok_or("dangling backslash")? {
                    'n' => out.push('\n'),
                    'r' => out.push('\r'),
                    't' => out.push('\t'),
                    '0' => out.push('\0'),
                    'x' => out.push(self.hex(2)?),
                    'u' => out.push(self.hex(4)?),
                    'U' => out.push(self.hex(8)?),
                    c @ ('\\' | '\'' | '"') => out.push(c),
                    c => return Err(format!("unknown escape \\{c}")),
                },
                c => out.push(c),
            }
        }
    }

    fn done(&self) -> bool {
        self.pos >= self.s.len()
    }
}

/// Parses Python's `repr` of a tuple of strings, e.g. `('a', "it's")`.
pub fn parse_str_tuple(s: &str) -> Result<Vec<String>, String> {
    let mut c = Cursor { s: s.trim(), pos: 0 };
    c.expect('(')?;
    let mut items = Vec::new();
    loop {
        while c.peek() == Some(' ') {
            c.bump();
        }
        if c.peek() == Some(')') {
            c.bump();
            break;
        }
        items.push(c.string()?);
        while c.peek() == Some(' ') {
            c.bump();
        }
        match c.bump() {
            Some(',') => {}
            Some(')') => break,
            other => return Err(format!("expected ',' or ')' in {s:?}, found {other:?}")),
        }
    }
    if !c.done() {
        return Err(format!("trailing text after tuple in {s:?}"));
    }
    Ok(items)
}

/// Parses a JAX `keystr`: `['a'][0].b`.
pub fn parse_keystr(s: &str) -> Result<KeyPath, String> {
    let mut c = Cursor { s, pos: 0 };
    let mut entries = Vec::new();
    while !c.done() {
        match c.bump() {
            Some('[') => {
                if matches!(c.peek(), Some('\'' | '"')) {
                    entries.push(KeyEntry::Key(c.string()?));
                } else {
                    let start = c.pos;
                    while c.peek().is_some_and(|ch| ch.is_ascii_digit()) {
                        c.bump();
                    }
                    let index = s[start..c.pos].parse().map_err(|_| format!("bad index in keystr {s:?}"))?;
                    entries.push(KeyEntry::Index(index));
                }
                c.expect(']')?;
            }
            Some('.') => {
                let start = c.pos;
                while c.peek().is_some_and(|ch| ch != '.' && ch != '[') {
                    c.bump();
                }
                if c.pos == start {
                    return Err(format!("empty attribute name in keystr {s:?}"));
                }
                entries.push(KeyEntry::Attr(s[start..c.pos].to_string()));
            }
            other => return Err(format!("unexpected {other:?} in keystr {s:?}")),
        }
    }
    Ok(KeyPath(entries))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repr_matches_python() {
        assert_eq!(repr_str("a"), "'a'");
        assert_eq!(repr_str("it's"), "\"it's\"");
        assert_eq!(repr_str("a\"b'c"), "'a\"b\\'c'");
        assert_eq!(repr_str("x\ny\\"), "'x\\ny\\\\'");
        assert_eq!(repr_str("ключ"), "'ключ'");
        assert_eq!(repr_str("\u{7f}"), "'\\x7f'");
        assert_eq!(repr_str_tuple(&["a"]), "('a',)");
        assert_eq!(repr_str_tuple(&["a", "0"]), "('a', '0')");
        assert_eq!(repr_str_tuple::<&str>(&[]), "()");
    }

    #[test]
    fn tuples_round_trip() {
        for names in [vec![], vec!["a"], vec!["it's", "a\"b'c", "", "..", "a//b", "ключ", "tab\there"]] {
            let text = repr_str_tuple(&names);
            assert_eq!(parse_str_tuple(&text).unwrap(), names, "{text}");
        }
        assert!(parse_str_tuple("('a'").is_err());
    }

    #[test]
    fn keystr_round_trips() {
        let p = parse_keystr("['params'][0].x[\"it's\"]").unwrap();
        assert_eq!(p.to_string(), "['params'][0].x[\"it's\"]");
        assert!(parse_keystr("['a'").is_err());
    }
}
