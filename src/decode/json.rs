//! `json`/`jsonb` values: a JSON tree when shallow, their own text when deep, and which
//! of their numbers a double holds.
//!
//! PostgreSQL accepts json nested thousands of levels deep; serde_json parses at most
//! 128 levels, and every walk over a `Value` (serializing, comparing, dropping, the
//! `when` evaluator) recurses once per level. So a value serde_json parses becomes a
//! tree as usual, and a deeper one (still checked to be JSON, without recursion) is kept
//! as its text in a *deep value*: a `Value::Number` whose text is the whole JSON array or
//! object. serde_json writes a number's text as it is, so a body carries the deep value
//! verbatim, and nothing ever walks into it. Conditions see a deep value as a string of
//! its JSON text (see [`deep`]); templates see the body itself.
//!
//! `Number::from_string_unchecked` is how a number keeps arbitrary text: serde_json marks
//! it as not public API, so a test below pins that it still writes the text verbatim
//! (the version is pinned in Cargo.lock).

use serde_json::value::RawValue;
use serde_json::{Number, Value};

/// `text` (a json or jsonb value as the server prints it) as JSON: a tree, or a deep
/// value when it nests too deep for one. `None` when it is not JSON at all.
pub fn parse(text: &str) -> Option<Value> {
    match serde_json::from_str::<Value>(text) {
        Ok(v) => Some(v),
        Err(_) => {
            // serde_json's `RawValue` checks the syntax without recursing.
            let raw: &RawValue = serde_json::from_str(text).ok()?;
            let raw = raw.get().trim();
            matches!(raw.as_bytes().first(), Some(b'[' | b'{'))
                .then(|| Value::Number(Number::from_string_unchecked(raw.to_owned())))
        }
    }
}

/// A `jsonb` value's text at least this long is kept as its text (see [`large_jsonb`]).
pub const LARGE: usize = 1 << 20;

/// Nesting at which serde_json gives up parsing a tree (its recursion limit).
const TREE_DEPTH_LIMIT: usize = 128;

/// A large `jsonb` value, as the server prints it, as JSON: its own text without the
/// whitespace between tokens, held like a deep value (a `Value::Number` whose text is the
/// array or object), in the memory of `text` itself.
///
/// A tree of a large document costs several times its text (a 50 MiB array of small
/// records took 15 times its size), and serializing the tree writes exactly this text:
/// jsonb prints keys once each, in a fixed order, numbers as plain decimals that
/// serde_json keeps as written, and strings escaped the way serde_json escapes them
/// (`\"`, `\\`, `\b`, `\f`, `\n`, `\r`, `\t` and `\u00xx` for the other control
/// characters, everything else as it is). A `json` value keeps the input's own spelling
/// (escapes, duplicate keys), so only jsonb takes this way. Text that is not an array or
/// object, or nests too deep for a tree, is converted as by [`parse`]; the text is given
/// back (`Err`) when it is not JSON at all.
pub fn large_jsonb(text: String) -> Result<Value, String> {
    let structured = matches!(text.trim_start().as_bytes().first(), Some(b'[' | b'{'));
    if !structured || serde_json::from_str::<&RawValue>(&text).is_err() || nests(&text, TREE_DEPTH_LIMIT) {
        return parse(&text).ok_or(text);
    }
    let mut bytes = text.into_bytes();
    compact(&mut bytes);
    // Only ASCII whitespace was taken out, so this is still UTF-8.
    let text = String::from_utf8(bytes).map_err(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())?;
    Ok(Value::Number(Number::from_string_unchecked(text)))
}

/// Whether the JSON `text` nests `depth` arrays or objects deep anywhere.
fn nests(text: &str, depth: usize) -> bool {
    let b = text.as_bytes();
    let mut level = 0usize;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => i = string_end(b, i),
            b'[' | b'{' => {
                level += 1;
                if level >= depth {
                    return true;
                }
                i += 1;
            }
            b']' | b'}' => {
                level = level.saturating_sub(1);
                i += 1;
            }
            _ => i += 1,
        }
    }
    false
}

/// The index after the JSON string that starts at `start` (its opening quote).
fn string_end(b: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while let Some(at) = memchr::memchr2(b'"', b'\\', &b[i.min(b.len())..]) {
        i += at;
        if b[i] == b'"' {
            return i + 1;
        }
        i += 2;
    }
    b.len()
}

/// Removes the whitespace between the tokens of the JSON text `b`, in place.
fn compact(b: &mut Vec<u8>) {
    let mut w = 0;
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let end = string_end(b, i);
                b.copy_within(i..end, w);
                w += end - i;
                i = end;
            }
            b' ' | b'\t' | b'\n' | b'\r' => i += 1,
            c => {
                b[w] = c;
                w += 1;
                i += 1;
            }
        }
    }
    b.truncate(w);
}

/// The JSON document `text` (walhook's own body, say) as a tree down to `max_depth`
/// levels, maps and lists below that as deep values, so that a document holding deep
/// values parses, and writes out again, without recursing past `max_depth`. `None` when
/// it is not JSON.
pub fn parse_bounded(text: &str, max_depth: usize) -> Option<Value> {
    let mut p = Bounded {
        s: text,
        i: 0,
        max_depth,
    };
    let v = p.value(0)?;
    p.ws();
    (p.i == text.len()).then_some(v)
}

struct Bounded<'a> {
    s: &'a str,
    i: usize,
    max_depth: usize,
}

impl Bounded<'_> {
    fn ws(&mut self) {
        let b = self.s.as_bytes();
        while b
            .get(self.i)
            .is_some_and(|c| matches!(c, b' ' | b'\t' | b'\n' | b'\r'))
        {
            self.i += 1;
        }
    }

    fn eat(&mut self, c: u8) -> Option<()> {
        self.ws();
        (self.s.as_bytes().get(self.i) == Some(&c)).then(|| self.i += 1)
    }

    fn value(&mut self, depth: usize) -> Option<Value> {
        self.ws();
        let b = self.s.as_bytes();
        let rest = self.s.get(self.i..)?;
        match *b.get(self.i)? {
            b'{' | b'[' if depth >= self.max_depth => {
                // checked and measured without recursion
                let mut de = serde_json::Deserializer::from_str(rest);
                let raw: &RawValue = serde::Deserialize::deserialize(&mut de).ok()?;
                self.i += raw.get().len();
                Some(Value::Number(Number::from_string_unchecked(raw.get().to_owned())))
            }
            b'{' => {
                self.i += 1;
                let mut map = serde_json::Map::new();
                if self.eat(b'}').is_some() {
                    return Some(Value::Object(map));
                }
                loop {
                    self.ws();
                    let Value::String(key) = self.value(depth + 1)? else {
                        return None;
                    };
                    self.eat(b':')?;
                    let v = self.value(depth + 1)?;
                    map.insert(key, v);
                    if self.eat(b',').is_none() {
                        self.eat(b'}')?;
                        return Some(Value::Object(map));
                    }
                }
            }
            b'[' => {
                self.i += 1;
                let mut items = Vec::new();
                if self.eat(b']').is_some() {
                    return Some(Value::Array(items));
                }
                loop {
                    items.push(self.value(depth + 1)?);
                    if self.eat(b',').is_none() {
                        self.eat(b']')?;
                        return Some(Value::Array(items));
                    }
                }
            }
            _ => {
                // a scalar: serde_json reads it and says where it ends
                let mut stream = serde_json::Deserializer::from_str(rest).into_iter::<Value>();
                let v = match stream.next()? {
                    Ok(v @ (Value::Null | Value::Bool(_) | Value::Number(_) | Value::String(_))) => v,
                    _ => return None,
                };
                self.i += stream.byte_offset();
                Some(v)
            }
        }
    }
}

/// The JSON text of a deep value, `None` for any other value.
pub fn deep(v: &Value) -> Option<&str> {
    match v {
        Value::Number(n) if matches!(n.as_str().as_bytes().first(), Some(b'[' | b'{')) => Some(n.as_str()),
        _ => None,
    }
}

/// A deep value's text with every number that a double does not hold (see
/// [`double_holds`]) written as a string of its digits, as a deep value again.
pub fn deep_with_inexact_as_strings(text: &str) -> Value {
    let b = text.as_bytes();
    let mut out = String::with_capacity(text.len() + 16);
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                // Copy the string whole; `text` is valid JSON, so it ends.
                let start = i;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                i = (i + 1).min(b.len());
                out.push_str(&text[start..i]);
            }
            b'-' | b'0'..=b'9' => {
                let start = i;
                while i < b.len() && matches!(b[i], b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9') {
                    i += 1;
                }
                let num = &text[start..i];
                if double_holds(num) {
                    out.push_str(num);
                } else {
                    out.push('"');
                    out.push_str(num);
                    out.push('"');
                }
            }
            _ => {
                // Up to the next string or number: structure, whitespace, literals.
                let start = i;
                while i < b.len() && !matches!(b[i], b'"' | b'-' | b'0'..=b'9') {
                    i += 1;
                }
                out.push_str(&text[start..i]);
            }
        }
    }
    Value::Number(Number::from_string_unchecked(out))
}

/// Whether a double holds the JSON number `text` as it is written: the double nearest to
/// it, written in its shortest form (as JavaScript writes it), is the same number.
/// `0.1` and `1.50` are held; `12345678901234567890` (beyond 2^53, a double rounds it),
/// `0.12345678901234567891` and `1e400` are not.
pub fn double_holds(text: &str) -> bool {
    let Ok(f) = text.parse::<f64>() else {
        return false;
    };
    if !f.is_finite() {
        return false;
    }
    let shortest = format!("{f:e}");
    match (Decimal::of(text), Decimal::of(&shortest)) {
        (Some(a), Some(b)) => a == b,
        _ => false,
    }
}

/// A decimal number normalized: `0.<digits> x 10^point`, digits without leading or
/// trailing zeros (none for zero, whose sign is dropped).
#[derive(Debug, PartialEq, Eq)]
struct Decimal {
    negative: bool,
    digits: Vec<u8>,
    point: i64,
}

impl Decimal {
    fn of(text: &str) -> Option<Decimal> {
        let (negative, rest) = match text.strip_prefix('-') {
            Some(r) => (true, r),
            None => (false, text),
        };
        let (mantissa, exponent) = match rest.find(['e', 'E']) {
            Some(at) => (&rest[..at], Some(&rest[at + 1..])),
            None => (rest, None),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        if int.is_empty() || !int.bytes().chain(frac.bytes()).all(|c| c.is_ascii_digit()) {
            return None;
        }
        let mut digits: Vec<u8> = int.bytes().chain(frac.bytes()).collect();
        let mut point = int.len() as i64;
        let leading = digits.iter().take_while(|&&d| d == b'0').count();
        digits.drain(..leading);
        point -= leading as i64;
        while digits.last() == Some(&b'0') {
            digits.pop();
        }
        if digits.is_empty() {
            return Some(Decimal {
                negative: false,
                digits,
                point: 0,
            });
        }
        if let Some(e) = exponent {
            let (sign, e) = match e.as_bytes().first() {
                Some(b'-') => (-1, &e[1..]),
                Some(b'+') => (1, &e[1..]),
                _ => (1, e),
            };
            if e.is_empty() || !e.bytes().all(|c| c.is_ascii_digit()) {
                return None;
            }
            // Past i64 the number is far outside a double's range either way.
            let e: i64 = e.parse().unwrap_or(i64::MAX / 2);
            point = point.saturating_add(sign * e);
        }
        Some(Decimal {
            negative,
            digits,
            point,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shallow_values_are_trees_and_deep_ones_their_text() {
        assert_eq!(
            parse(r#"{"a": [1, 2.50]}"#).unwrap().to_string(),
            r#"{"a":[1,2.50]}"#
        );
        assert_eq!(parse("{bad"), None);
        assert_eq!(parse(""), None);
        let at = |n: usize| format!("{}1{}", "[".repeat(n), "]".repeat(n));
        let v = parse(&at(127)).unwrap();
        assert!(v.is_array(), "127 levels are a tree");
        assert_eq!(deep(&v), None);
        for n in [128, 5_000] {
            let text = format!("  {} ", at(n));
            let v = parse(&text).unwrap();
            assert_eq!(deep(&v), Some(text.trim()));
            // serde_json writes it verbatim, and a deep value equals only its own text
            assert_eq!(v.to_string(), text.trim());
            assert_eq!(serde_json::to_vec(&v).unwrap(), text.trim().as_bytes());
            assert_eq!(v, parse(&at(n)).unwrap());
            assert_ne!(v, parse(&at(n + 1)).unwrap());
        }
        // deep but not JSON
        assert_eq!(parse(&format!("{}1{}", "[".repeat(200), "]".repeat(199))), None);
        // numbers and strings never count as deep
        assert_eq!(deep(&serde_json::json!(12)), None);
        assert_eq!(deep(&serde_json::json!("[1]")), None);
    }

    /// A value deeper than any stack could recurse through is decoded, serialized and
    /// dropped on a 2 MiB thread.
    #[test]
    fn deep_values_never_recurse() {
        let handle = std::thread::Builder::new()
            .stack_size(2 << 20)
            .spawn(|| {
                let n = 100_000;
                let arrays = format!("{}1{}", "[".repeat(n), "]".repeat(n));
                let objects = format!("{}1{}", r#"{"a":"#.repeat(n), "}".repeat(n));
                let reg = crate::decode::TypeRegistry::with_builtins();
                for (oid, text) in [(3802, &arrays), (114, &objects), (3802, &objects)] {
                    let v = reg.to_json(oid, text);
                    assert_eq!(v.to_string().len(), text.len());
                    let strings = deep_with_inexact_as_strings(deep(&v).unwrap());
                    assert_eq!(strings.to_string().len(), text.len());
                    drop(v);
                }
                // in an array of jsonb
                let array = format!("{{\"{}\"}}", arrays.replace('"', "\\\""));
                let v = reg.to_json(3807, &array);
                assert_eq!(v.to_string(), format!("[{arrays}]"));
            })
            .unwrap();
        handle.join().expect("no stack overflow");
    }

    /// What the server prints for jsonb values (`jsonb_out`: `", "` and `": "` between
    /// tokens, keys in its own order, escapes for `"`, `\\` and control characters only).
    const JSONB_TEXTS: &[&str] = &[
        r#"[{"id": 1, "sku": "SKU-1", "price": 1.50, "title": "c4ca4238"}, {"id": 2, "sku": "SKU-2", "price": -0.001, "title": "x"}]"#,
        r#"{"a": "tab\there \"quoted\" back\\slash \u0001 \u001f \b\f\n\r", "b": [], "c": {}, "d": [true, false, null], "é": "snow ☃ 😀", "n": 12345678901234567890123456789.5}"#,
        r#"{"nested": {"list": [[1, [2, [3]]], {"k": "v, with: spaces [and] {braces}"}]}, "s": "\\\""}"#,
        r#"[1, "2", [3, 4], {"5": 6}]"#,
        "[]",
        "{}",
    ];

    /// A large jsonb value kept as its text is written as its tree would be, also for
    /// subscribers that want inexact numbers as strings, and compares like its tree.
    #[test]
    fn large_jsonb_is_its_trees_text() {
        for text in JSONB_TEXTS {
            let tree = parse(text).unwrap();
            let kept = large_jsonb(text.to_string()).unwrap();
            let kept_text = deep(&kept).unwrap_or_else(|| panic!("{text} is not kept as text"));
            assert_eq!(kept.to_string(), tree.to_string(), "{text}");
            assert_eq!(kept_text, tree.to_string());
            assert_eq!(large_jsonb(text.to_string()).unwrap(), kept);
            // numbers a double does not hold, as strings, as the tree's writer makes them
            let strings = deep_with_inexact_as_strings(kept_text).to_string();
            let from_tree = deep_with_inexact_as_strings(&tree.to_string()).to_string();
            assert_eq!(strings, from_tree);
        }
        // as parse for scalars, for values too deep for a tree, and for text that is not JSON
        for text in [r#""a big string""#, "12.50", "true"] {
            assert_eq!(
                large_jsonb(text.to_string()).unwrap(),
                parse(text).unwrap(),
                "{text}"
            );
        }
        let at = |n: usize| format!("{}1{}", "[ ".repeat(n), " ]".repeat(n));
        assert!(deep(&large_jsonb(at(127)).unwrap()).is_some());
        assert_eq!(
            large_jsonb(at(127)).unwrap().to_string(),
            parse(&at(127)).unwrap().to_string()
        );
        for n in [128, 5_000] {
            assert_eq!(large_jsonb(at(n)).unwrap(), parse(&at(n)).unwrap(), "{n}");
        }
        assert_eq!(large_jsonb("{bad".into()), Err("{bad".to_string()));
        assert_eq!(large_jsonb("[1, 2".into()), Err("[1, 2".to_string()));
        assert_eq!(
            large_jsonb(r#"["unterminated]"#.into()),
            Err(r#"["unterminated]"#.to_string())
        );
    }

    #[test]
    fn bounded_parses_keep_deeper_maps_and_lists_as_deep_values() {
        let text = r#" {"a": [1, {"b": [2, [3]]}], "s": "x\"y", "n": null, "t": true, "big": 1.50e+400, "e": {}, "l": []} "#;
        let full = parse_bounded(text, 100).unwrap();
        assert_eq!(full, serde_json::from_str::<Value>(text).unwrap());
        assert_eq!(
            full.to_string(),
            serde_json::from_str::<Value>(text).unwrap().to_string()
        );
        let cut = parse_bounded(text, 3).unwrap();
        assert_eq!(deep(&cut["a"][1]["b"]), Some("[2, [3]]"));
        assert_eq!(
            cut.to_string(),
            r#"{"a":[1,{"b":[2, [3]]}],"s":"x\"y","n":null,"t":true,"big":1.50e+400,"e":{},"l":[]}"#
        );
        let deep_text = format!(r#"{{"d": {}1{}}}"#, "[".repeat(10_000), "]".repeat(10_000));
        let v = parse_bounded(&deep_text, 64).unwrap();
        assert_eq!(v.to_string(), deep_text.replace(' ', ""));
        for bad in [
            "",
            "{",
            "[1,]",
            "{\"a\" 1}",
            "{1: 2}",
            "[1] x",
            "tru",
            "[01]",
            "\"x",
            "{\"a\":1,}",
        ] {
            assert_eq!(parse_bounded(bad, 64), None, "{bad}");
            assert_eq!(parse_bounded(bad, 0), None, "{bad}");
        }
    }

    #[test]
    fn which_numbers_a_double_holds() {
        for held in [
            "0",
            "-0",
            "0.0",
            "1",
            "-1",
            "0.1",
            "1.50",
            "19.90",
            "9007199254740992",
            "-9007199254740991",
            "1e20",
            "1E+20",
            "100000000000000000000",
            "1.5e-7",
            "123.456",
            "2.5e-320",
            "0e-99999999999999999999",
            "1.7976931348623157e308",
        ] {
            assert!(double_holds(held), "{held}");
        }
        for not_held in [
            "12345678901234567890",
            "9007199254740993",
            "-9007199254740993",
            "0.12345678901234567891",
            "3.141592653589793238",
            "1e400",
            "-1e400",
            "1e-400",
            "1e-99999999999999999999",
            "123456789012345678901234567890.123",
        ] {
            assert!(!double_holds(not_held), "{not_held}");
        }
    }

    #[test]
    fn deep_values_rewrite_only_numbers_a_double_does_not_hold() {
        let text = r#"[{"a":12345678901234567890,"b":"x\"1\\","c":[1.50,-3,1e400,true,null]}]"#;
        let v = deep_with_inexact_as_strings(text);
        assert_eq!(
            deep(&v),
            Some(r#"[{"a":"12345678901234567890","b":"x\"1\\","c":[1.50,-3,"1e400",true,null]}]"#)
        );
    }
}
