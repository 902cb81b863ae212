//! Parser for PostgreSQL's array text output (`array_out`).
//!
//! Accepts `{}`, `{1,2,NULL}`, quoted elements with backslash escapes,
//! nested `{{1,2},{3,4}}`, whitespace around elements and braces, and the
//! optional dimension prefix `[0:1]={...}` (bounds are checked for shape and
//! then dropped: the JSON is just the nested arrays). Any malformed input
//! yields `None`; nesting deeper than [`MAX_DEPTH`] is malformed.

use serde_json::Value;

/// Deepest nesting accepted (PostgreSQL itself allows 6 dimensions).
const MAX_DEPTH: usize = 64;

/// Parse `text` as an array literal whose elements are separated by `delim`,
/// converting each non-NULL element with `convert`.
pub(crate) fn parse_array(text: &str, delim: u8, convert: &mut dyn FnMut(&str) -> Value) -> Option<Value> {
    if !delim.is_ascii() || is_space(delim) || b"{}\"\\".contains(&delim) {
        return None;
    }
    let mut p = Parser {
        s: text.as_bytes(),
        pos: 0,
        delim,
    };
    p.skip_space();
    p.dimensions()?;
    let value = p.level(1, convert)?;
    p.skip_space();
    (p.pos == p.s.len()).then_some(value)
}

/// The characters `array_in` treats as whitespace.
fn is_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c)
}

struct Parser<'a> {
    s: &'a [u8],
    pos: usize,
    delim: u8,
}

impl Parser<'_> {
    fn peek(&self) -> Option<u8> {
        self.s.get(self.pos).copied()
    }

    fn bump(&mut self) -> Option<u8> {
        let b = self.peek()?;
        self.pos += 1;
        Some(b)
    }

    fn eat(&mut self, want: u8) -> Option<()> {
        (self.bump()? == want).then_some(())
    }

    fn skip_space(&mut self) {
        while self.peek().is_some_and(is_space) {
            self.pos += 1;
        }
    }

    /// Optional `[lb:ub][lb:ub]...=` prefix.
    fn dimensions(&mut self) -> Option<()> {
        if self.peek() != Some(b'[') {
            return Some(());
        }
        while self.peek() == Some(b'[') {
            self.pos += 1;
            self.integer()?;
            if self.peek() == Some(b':') {
                self.pos += 1;
                self.integer()?;
            }
            self.eat(b']')?;
        }
        self.skip_space();
        self.eat(b'=')?;
        self.skip_space();
        Some(())
    }

    fn integer(&mut self) -> Option<()> {
        self.skip_space();
        if matches!(self.peek(), Some(b'-' | b'+')) {
            self.pos += 1;
        }
        let start = self.pos;
        while self.peek().is_some_and(|b| b.is_ascii_digit()) {
            self.pos += 1;
        }
        self.skip_space();
        (self.pos > start).then_some(())
    }

    /// One `{...}` level; `self.pos` is at its `{`.
    fn level(&mut self, depth: usize, convert: &mut dyn FnMut(&str) -> Value) -> Option<Value> {
        if depth > MAX_DEPTH {
            return None;
        }
        self.eat(b'{')?;
        self.skip_space();
        let mut items = Vec::new();
        if self.peek() == Some(b'}') {
            self.pos += 1;
            return Some(Value::Array(items));
        }
        let mut nested: Option<bool> = None;
        loop {
            self.skip_space();
            let is_sub = self.peek() == Some(b'{');
            if *nested.get_or_insert(is_sub) != is_sub {
                // sub-arrays and scalars mixed at one level
                return None;
            }
            let item = if is_sub {
                self.level(depth + 1, convert)?
            } else {
                match self.element()? {
                    Some(text) => convert(&text),
                    None => Value::Null,
                }
            };
            items.push(item);
            self.skip_space();
            match self.bump()? {
                b'}' => return Some(Value::Array(items)),
                b if b == self.delim => continue,
                _ => return None,
            }
        }
    }

    /// One scalar element: `Some(None)` for an unquoted NULL.
    fn element(&mut self) -> Option<Option<String>> {
        let mut out = Vec::new();
        if self.peek() == Some(b'"') {
            self.pos += 1;
            loop {
                match self.bump()? {
                    b'"' => break,
                    b'\\' => out.push(self.bump()?),
                    b => out.push(b),
                }
            }
            return String::from_utf8(out).ok().map(Some);
        }
        // unquoted: up to the delimiter or '}', trailing unescaped space trimmed
        let mut escaped = false;
        let mut keep = 0; // length of `out` up to the last significant byte
        loop {
            match self.peek()? {
                b'}' => break,
                b if b == self.delim => break,
                b'{' | b'"' => return None,
                b'\\' => {
                    self.pos += 1;
                    out.push(self.bump()?);
                    escaped = true;
                    keep = out.len();
                }
                b => {
                    self.pos += 1;
                    out.push(b);
                    if !is_space(b) {
                        keep = out.len();
                    }
                }
            }
        }
        out.truncate(keep);
        if out.is_empty() {
            return None;
        }
        if !escaped && out.eq_ignore_ascii_case(b"NULL") {
            return Some(None);
        }
        String::from_utf8(out).ok().map(Some)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(text: &str) -> Option<String> {
        parse_array(text, b',', &mut |s| Value::String(s.to_owned())).map(|v| v.to_string())
    }

    #[test]
    fn shapes() {
        assert_eq!(strings("{}").as_deref(), Some("[]"));
        assert_eq!(strings(" { } ").as_deref(), Some("[]"));
        assert_eq!(
            strings("{a,b,NULL,null}").as_deref(),
            Some(r#"["a","b",null,null]"#)
        );
        assert_eq!(
            strings(r#"{"a \"b\"","c,d",NULL,"NULL",\N\ULL}"#).as_deref(),
            Some(r#"["a \"b\"","c,d",null,"NULL","NULL"]"#)
        );
        assert_eq!(
            strings("{{1,2},{3,4}}").as_deref(),
            Some(r#"[["1","2"],["3","4"]]"#)
        );
        assert_eq!(
            strings("{ a b , c\\  ,\"\" }").as_deref(),
            Some(r#"["a b","c ",""]"#)
        );
        assert_eq!(strings("[0:1]={1,2}").as_deref(), Some(r#"["1","2"]"#));
        assert_eq!(strings("[1:1][-2:-1]={{x,y}}").as_deref(), Some(r#"[["x","y"]]"#));
        assert_eq!(strings(r#"{"é\\ü"}"#).as_deref(), Some(r#"["é\\ü"]"#));
    }

    #[test]
    fn other_delimiter() {
        let v = parse_array("{(1,1),(0,0);(2,2),(1,1)}", b';', &mut |s| {
            Value::String(s.to_owned())
        });
        assert_eq!(
            v.map(|v| v.to_string()).as_deref(),
            Some(r#"["(1,1),(0,0)","(2,2),(1,1)"]"#)
        );
        assert_eq!(parse_array("{a}", b'{', &mut |_| Value::Null), None);
        assert_eq!(parse_array("{a}", 0xff, &mut |_| Value::Null), None);
    }

    #[test]
    fn malformed() {
        for bad in [
            "", "{", "{1,2", "{1,2}}", "{1,,2}", "{,}", "{1,}", "{{1},2}", "{1,{2}}", "1,2", "{\"abc}",
            "{a\"b}", "{a\\", "[0:1]{1}", "[x]={1}", "[0:1={1}", "{1} x", "{1}{2}", "{a{b}",
        ] {
            assert_eq!(strings(bad), None, "{bad:?}");
        }
        let deep = format!("{}{}", "{".repeat(65), "}".repeat(65));
        assert_eq!(strings(&deep), None);
        let ok = format!("{}{}", "{".repeat(64), "}".repeat(64));
        assert!(strings(&ok).is_some());
        let huge = "{".repeat(100_000);
        assert_eq!(strings(&huge), None);
    }

    #[test]
    fn fuzz_never_panics() {
        let reg = super::super::value::TypeRegistry::with_builtins();
        let alphabet: &[&str] = &[
            "{",
            "}",
            "\"",
            "\\",
            ",",
            ";",
            " ",
            "NULL",
            "[",
            "]",
            ":",
            "=",
            "-",
            "1",
            "9",
            "a",
            "é",
            "\\x",
            "+00",
            "2026-11-22 10:00:00",
            ".",
            "e",
            "t",
        ];
        let oids = [
            1007, 1009, 1016, 1231, 1000, 1001, 1185, 3807, 1700, 1184, 17, 16, 23,
        ];
        let mut state: u64 = 0x2545_F491_4F6C_DD1D;
        for _ in 0..5_000 {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            let mut r = state;
            let len = (r % 24) as usize;
            let mut text = String::new();
            for _ in 0..len {
                r = r.rotate_left(5) ^ 0x9E37_79B9;
                text.push_str(alphabet[(r % alphabet.len() as u64) as usize]);
            }
            let oid = oids[(state >> 40) as usize % oids.len()];
            // must not panic; whatever comes out must serialize
            let _ = reg.to_json(oid, &text).to_string();
        }
    }
}
