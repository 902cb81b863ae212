//! Column text values -> faithful JSON.
//!
//! Input is the text the server prints with `DateStyle=ISO`, `TimeZone=UTC`,
//! `IntervalStyle=iso_8601`, `extra_float_digits=3` and `bytea_output=hex`.
//! Conversion never fails: text that does not parse as its type, and values
//! of unknown types, become JSON strings holding the text unchanged.

use std::collections::HashMap;

use base64::Engine as _;
use serde_json::{Number, Value};

use super::{array, json};

/// How the text of one type becomes JSON.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TypeKind {
    /// `t`/`f` -> `true`/`false`.
    Bool,
    /// int2, int4, oid, xid: JSON number from the exact text.
    Int,
    /// int8, numeric: JSON number carrying the exact text digits (never via
    /// `f64`); `NaN`/`Infinity`/`-Infinity` as strings.
    Exact,
    /// float4, float8: number; `NaN`/`Infinity`/`-Infinity` as strings.
    Float,
    Text,
    /// `2026-11-22 10:00:00.5+00` -> `"2026-11-22T10:00:00.5Z"`.
    Timestamptz,
    /// `2026-11-22 10:00:00` -> `"2026-11-22T10:00:00"`.
    Timestamp,
    Date,
    /// time and timetz, as printed.
    Time,
    /// json, jsonb: embedded; big numbers keep their digits.
    Json,
    /// hex bytea -> standard base64 with padding.
    Bytea,
    Uuid,
    /// Array of `elem`, elements separated by `delim` (`,` except for box).
    Array {
        elem: u32,
        delim: u8,
    },
    /// Enum label string.
    Enum,
    /// Domain: converted as its base type.
    Domain {
        base: u32,
    },
    /// Anything else: the text as a string.
    Other,
}

/// The OID of `jsonb`.
const JSONB: u32 = 3802;

/// Deepest chain of domain (and array element) hops followed.
const MAX_HOPS: u32 = 16;

/// Built-in scalar types: (oid, array oid, kind).
const BUILTINS: &[(u32, u32, TypeKind)] = &[
    (16, 1000, TypeKind::Bool),          // bool
    (17, 1001, TypeKind::Bytea),         // bytea
    (18, 1002, TypeKind::Text),          // "char"
    (19, 1003, TypeKind::Text),          // name
    (20, 1016, TypeKind::Exact),         // int8
    (21, 1005, TypeKind::Int),           // int2
    (23, 1007, TypeKind::Int),           // int4
    (25, 1009, TypeKind::Text),          // text
    (26, 1028, TypeKind::Int),           // oid
    (28, 1011, TypeKind::Int),           // xid
    (114, 199, TypeKind::Json),          // json
    (142, 143, TypeKind::Other),         // xml
    (700, 1021, TypeKind::Float),        // float4
    (701, 1022, TypeKind::Float),        // float8
    (790, 791, TypeKind::Other),         // money
    (1042, 1014, TypeKind::Text),        // bpchar
    (1043, 1015, TypeKind::Text),        // varchar
    (1082, 1182, TypeKind::Date),        // date
    (1083, 1183, TypeKind::Time),        // time
    (1114, 1115, TypeKind::Timestamp),   // timestamp
    (1184, 1185, TypeKind::Timestamptz), // timestamptz
    (1186, 1187, TypeKind::Other),       // interval (iso_8601 text)
    (1266, 1270, TypeKind::Time),        // timetz
    (1700, 1231, TypeKind::Exact),       // numeric
    (2950, 2951, TypeKind::Uuid),        // uuid
    (3802, 3807, TypeKind::Json),        // jsonb
];

/// Maps type OIDs to how their values become JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TypeRegistry {
    types: HashMap<u32, TypeKind>,
}

impl TypeRegistry {
    /// A registry that knows every built-in type walhook maps and the array
    /// type of each (see `BUILTINS` in the source for the exact OIDs).
    pub fn with_builtins() -> Self {
        let mut reg = TypeRegistry::default();
        for (oid, array_oid, kind) in BUILTINS {
            reg.insert(*oid, kind.clone());
            reg.insert(
                *array_oid,
                TypeKind::Array {
                    elem: *oid,
                    delim: b',',
                },
            );
        }
        reg
    }

    /// Add or replace the kind of `oid`.
    pub fn insert(&mut self, oid: u32, kind: TypeKind) {
        self.types.insert(oid, kind);
    }

    /// The kind registered for `oid`, if any.
    pub fn get(&self, oid: u32) -> Option<&TypeKind> {
        self.types.get(&oid)
    }

    /// Whether `oid` has a registered kind.
    pub fn contains(&self, oid: u32) -> bool {
        self.types.contains_key(&oid)
    }

    /// Whether values of `oid` are int8 or numeric (also through domains and arrays):
    /// the types whose JSON numbers can hold more digits than a double.
    pub fn is_exact(&self, oid: u32) -> bool {
        self.base_kind(oid) == Some(&TypeKind::Exact)
    }

    /// Whether values of `oid` are json or jsonb (also through domains and arrays).
    pub fn is_json(&self, oid: u32) -> bool {
        self.base_kind(oid) == Some(&TypeKind::Json)
    }

    /// The kind of `oid`'s values past its domains and array element types.
    fn base_kind(&self, mut oid: u32) -> Option<&TypeKind> {
        for _ in 0..=MAX_HOPS {
            match self.types.get(&oid)? {
                TypeKind::Domain { base } => oid = *base,
                TypeKind::Array { elem, .. } => oid = *elem,
                kind => return Some(kind),
            }
        }
        None
    }

    /// Never fails: text that does not parse as its type becomes a JSON
    /// string of the text. Unknown OID -> string. Domains resolve to their
    /// base (cycles and chains longer than 16 give a string).
    pub fn to_json(&self, oid: u32, text: &str) -> Value {
        self.convert(oid, text, 0)
    }

    /// As [`to_json`](Self::to_json), taking the text by value so that a large value is
    /// never copied: a value that becomes a JSON string of its text (text, varchar, enum
    /// labels, uuid, ...) keeps `text`'s memory, and a `jsonb` value of
    /// [`json::LARGE`] bytes or more becomes its own text, compacted in place (see
    /// [`json::large_jsonb`]), rather than a tree several times its size. Anything else
    /// is converted from the borrowed text, with the same result as `to_json`.
    pub fn owned_to_json(&self, mut oid: u32, text: String) -> Value {
        let mut hops = 0;
        loop {
            match self.types.get(&oid) {
                None => return Value::String(text),
                Some(TypeKind::Domain { base }) => {
                    hops += 1;
                    if hops > MAX_HOPS {
                        return Value::String(text);
                    }
                    oid = *base;
                }
                Some(TypeKind::Text | TypeKind::Enum | TypeKind::Uuid | TypeKind::Time | TypeKind::Other) => {
                    return Value::String(text)
                }
                Some(TypeKind::Json) if oid == JSONB && text.len() >= json::LARGE => {
                    return json::large_jsonb(text).unwrap_or_else(Value::String)
                }
                Some(_) => return self.convert(oid, &text, hops),
            }
        }
    }

    fn convert(&self, mut oid: u32, text: &str, mut hops: u32) -> Value {
        loop {
            let Some(kind) = self.types.get(&oid) else {
                return string(text);
            };
            match kind {
                TypeKind::Domain { base } => {
                    hops += 1;
                    if hops > MAX_HOPS {
                        return string(text);
                    }
                    oid = *base;
                }
                TypeKind::Array { elem, delim } => {
                    if hops >= MAX_HOPS {
                        return string(text);
                    }
                    let elem = *elem;
                    let mut each = |s: &str| self.convert(elem, s, hops + 1);
                    return array::parse_array(text, *delim, &mut each).unwrap_or_else(|| string(text));
                }
                scalar => return scalar_to_json(scalar, text),
            }
        }
    }
}

fn string(text: &str) -> Value {
    Value::String(text.to_owned())
}

fn scalar_to_json(kind: &TypeKind, text: &str) -> Value {
    let converted = match kind {
        TypeKind::Bool => match text {
            "t" => Some(Value::Bool(true)),
            "f" => Some(Value::Bool(false)),
            _ => None,
        },
        TypeKind::Int => is_json_integer(text).then(|| exact_number(text)).flatten(),
        TypeKind::Exact | TypeKind::Float => exact_number(text),
        TypeKind::Timestamptz => iso_timestamp(text, true).map(Value::String),
        TypeKind::Timestamp => iso_timestamp(text, false).map(Value::String),
        TypeKind::Date => iso_date(text).map(Value::String),
        TypeKind::Json => json::parse(text),
        TypeKind::Bytea => hex_bytea(text)
            .map(|bytes| Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))),
        _ => None,
    };
    converted.unwrap_or_else(|| string(text))
}

/// A `Number` whose serialization is exactly `text`, if `text` is a JSON
/// number literal. NaN/Infinity and anything else give `None`.
fn exact_number(text: &str) -> Option<Value> {
    if !is_json_number(text) {
        return None;
    }
    let number: Number = serde_json::from_str(text).ok()?;
    Some(Value::Number(number))
}

fn skip_digits(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(u8::is_ascii_digit) {
        i += 1;
    }
    i
}

/// `-?(0|[1-9][0-9]*)`, returning the index after it.
fn json_int_part(b: &[u8]) -> Option<usize> {
    let i = usize::from(b.first() == Some(&b'-'));
    match b.get(i) {
        Some(b'0') => Some(i + 1),
        Some(b'1'..=b'9') => Some(skip_digits(b, i + 1)),
        _ => None,
    }
}

fn is_json_integer(text: &str) -> bool {
    json_int_part(text.as_bytes()) == Some(text.len())
}

/// The JSON number grammar, exactly.
fn is_json_number(text: &str) -> bool {
    let b = text.as_bytes();
    let Some(mut i) = json_int_part(b) else {
        return false;
    };
    if b.get(i) == Some(&b'.') {
        let end = skip_digits(b, i + 1);
        if end == i + 1 {
            return false;
        }
        i = end;
    }
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let end = skip_digits(b, i);
        if end == i {
            return false;
        }
        i = end;
    }
    i == b.len()
}

/// ISO `YYYY-MM-DD HH:MM:SS[.ffffff][+HH[:MM]][ BC]` -> RFC 3339 style with a `T`, `Z`
/// for a zero offset and `+HH:MM` otherwise, BC years as ISO 8601 astronomical years
/// (see [`astronomical`]). `None` (keep the original text) for infinities,
/// second-precision offsets and anything unexpected.
fn iso_timestamp(text: &str, with_zone: bool) -> Option<String> {
    let (text, bc) = split_bc(text);
    let (date, rest) = text.split_once(' ')?;
    let date = astronomical(date, bc)?;
    let b = rest.as_bytes();
    let digits2 = |at: usize| {
        b.get(at..at + 2)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    if !(digits2(0) && b.get(2) == Some(&b':') && digits2(3) && b.get(5) == Some(&b':') && digits2(6)) {
        return None;
    }
    let mut end = 8;
    if b.get(end) == Some(&b'.') {
        let frac_end = skip_digits(b, end + 1);
        if frac_end == end + 1 {
            return None;
        }
        end = frac_end;
    }
    let time = rest.get(..end)?;
    let zone = rest.get(end..)?;
    if !with_zone {
        return zone.is_empty().then(|| format!("{date}T{time}"));
    }
    let zb = zone.as_bytes();
    let sign = *zb.first()?;
    if !(sign == b'+' || sign == b'-') || !zb.get(1..3)?.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let hours = zone.get(1..3)?;
    let minutes = match zb.len() {
        3 => "00",
        6 if zb[3] == b':' && zb[4..].iter().all(u8::is_ascii_digit) => zone.get(4..)?,
        _ => return None,
    };
    if hours == "00" && minutes == "00" {
        Some(format!("{date}T{time}Z"))
    } else {
        Some(format!("{date}T{time}{}{hours}:{minutes}", sign as char))
    }
}

/// A `date`: `YYYY-MM-DD` as printed, a BC one (`YYYY-MM-DD BC`) with its astronomical
/// year; `None` (keep the text) for infinities and anything unexpected.
fn iso_date(text: &str) -> Option<String> {
    let (date, bc) = split_bc(text);
    bc.then(|| astronomical(date, true).map(String::from)).flatten()
}

/// `text` without a trailing ` BC`, and whether it had one.
fn split_bc(text: &str) -> (&str, bool) {
    match text.strip_suffix(" BC") {
        Some(t) => (t, true),
        None => (text, false),
    }
}

/// The ISO date `date` (`Y{4,}-MM-DD`, a year of the common era as PostgreSQL prints it)
/// with ISO 8601's astronomical year when it is BC: 1 BC is year `0000`, 2 BC `-0001`,
/// 4714 BC `-4713` (a sign and at least four digits). `None` when it is not such a date.
fn astronomical(date: &str, bc: bool) -> Option<std::borrow::Cow<'_, str>> {
    if !is_iso_date(date) {
        return None;
    }
    if !bc {
        return Some(std::borrow::Cow::Borrowed(date));
    }
    let (year, month_day) = date.split_once('-')?;
    let year: u64 = year.parse().ok()?;
    Some(std::borrow::Cow::Owned(match year {
        0 => return None,
        1 => format!("0000-{month_day}"),
        y => format!("-{:04}-{month_day}", y - 1),
    }))
}

/// `Y{4,}-MM-DD`, all ASCII digits.
fn is_iso_date(date: &str) -> bool {
    let parts: Vec<&str> = date.split('-').collect();
    let all_digits = |s: &str| s.bytes().all(|c| c.is_ascii_digit());
    matches!(parts.as_slice(), [y, m, d]
        if y.len() >= 4 && m.len() == 2 && d.len() == 2
            && all_digits(y) && all_digits(m) && all_digits(d))
}

/// `\x` followed by an even number of hex digits.
fn hex_bytea(text: &str) -> Option<Vec<u8>> {
    let hex = text.strip_prefix("\\x")?.as_bytes();
    if hex.len() % 2 != 0 {
        return None;
    }
    let nibble = |c: u8| char::from(c).to_digit(16).map(|d| d as u8);
    hex.chunks_exact(2)
        .map(|pair| Some(nibble(pair[0])? << 4 | nibble(pair[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn j(oid: u32, text: &str) -> String {
        TypeRegistry::with_builtins().to_json(oid, text).to_string()
    }

    #[test]
    fn number_round_trip_is_exact() {
        let text = "12345678901234567890123456789.123";
        let n: Number = serde_json::from_str(text).unwrap();
        assert_eq!(serde_json::to_string(&n).unwrap(), text);
        for t in ["-0.00100", "1.5e+20", "-1.2345678e-07", "1e+400", "-0", "0.0"] {
            assert_eq!(j(1700, t), t);
        }
        // serde_json writes the exponent as `e+`/`e-`; PostgreSQL always does
        assert_eq!(j(701, "1E5"), "1e+5");
    }

    #[test]
    fn integers_and_exact() {
        assert_eq!(j(20, "9007199254740993"), "9007199254740993");
        assert_eq!(j(20, "-9223372036854775808"), "-9223372036854775808");
        assert_eq!(j(23, "-42"), "-42");
        assert_eq!(j(21, "0"), "0");
        assert_eq!(j(26, "4294967295"), "4294967295");
        assert_eq!(j(28, "123"), "123");
        assert_eq!(j(23, "1.5"), r#""1.5""#);
        assert_eq!(j(23, "007"), r#""007""#);
        assert_eq!(j(23, " 7"), r#"" 7""#);
        assert_eq!(
            j(1700, "123456789012345678901234567890"),
            "123456789012345678901234567890"
        );
        assert_eq!(j(1700, "-0.00100"), "-0.00100");
        assert_eq!(j(1700, "NaN"), r#""NaN""#);
        assert_eq!(j(1700, "Infinity"), r#""Infinity""#);
        assert_eq!(j(1700, "-Infinity"), r#""-Infinity""#);
        assert_eq!(j(1700, ".5"), r#"".5""#);
        assert_eq!(j(1700, "1."), r#""1.""#);
        assert_eq!(j(1700, "1e"), r#""1e""#);
        assert_eq!(j(1700, "12 "), r#""12 ""#);
    }

    #[test]
    fn floats() {
        assert_eq!(j(701, "1.5e+20"), "1.5e+20");
        assert_eq!(j(700, "-1.2345678e-07"), "-1.2345678e-07");
        assert_eq!(j(701, "0.1"), "0.1");
        assert_eq!(j(701, "NaN"), r#""NaN""#);
        assert_eq!(j(700, "Infinity"), r#""Infinity""#);
        assert_eq!(j(701, "-Infinity"), r#""-Infinity""#);
    }

    #[test]
    fn bools_and_strings() {
        assert_eq!(j(16, "t"), "true");
        assert_eq!(j(16, "f"), "false");
        assert_eq!(j(16, "maybe"), r#""maybe""#);
        assert_eq!(j(25, "héllo \"wörld\" ☃"), r#""héllo \"wörld\" ☃""#);
        assert_eq!(j(1043, ""), r#""""#);
        assert_eq!(
            j(2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            r#""a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11""#
        );
        assert_eq!(j(790, "$1,234.56"), r#""$1,234.56""#);
        assert_eq!(j(1186, "P1Y2M3DT4H5M6S"), r#""P1Y2M3DT4H5M6S""#);
        assert_eq!(j(999_999, "whatever"), r#""whatever""#);
    }

    #[test]
    fn timestamps() {
        assert_eq!(
            j(1184, "2026-11-22 10:00:00.123456+00"),
            r#""2026-11-22T10:00:00.123456Z""#
        );
        assert_eq!(j(1184, "2026-11-22 10:00:00+00"), r#""2026-11-22T10:00:00Z""#);
        assert_eq!(
            j(1184, "2026-11-22 10:00:00.5+05:30"),
            r#""2026-11-22T10:00:00.5+05:30""#
        );
        assert_eq!(
            j(1184, "2026-11-22 10:00:00+05"),
            r#""2026-11-22T10:00:00+05:00""#
        );
        assert_eq!(
            j(1184, "2026-11-22 10:00:00-08"),
            r#""2026-11-22T10:00:00-08:00""#
        );
        assert_eq!(j(1184, "infinity"), r#""infinity""#);
        assert_eq!(j(1184, "-infinity"), r#""-infinity""#);
        assert_eq!(j(1184, "0044-03-15 12:00:00+00 BC"), r#""-0043-03-15T12:00:00Z""#);
        assert_eq!(
            j(1184, "1890-01-01 00:00:00+00:19:32"),
            r#""1890-01-01 00:00:00+00:19:32""#
        );
        assert_eq!(j(1184, "2026-11-22 10:00:00"), r#""2026-11-22 10:00:00""#);
        assert_eq!(j(1184, "2026-11-22T10:00:00Z"), r#""2026-11-22T10:00:00Z""#);
        assert_eq!(j(1184, "12026-11-22 10:00:00+00"), r#""12026-11-22T10:00:00Z""#);
        assert_eq!(j(1114, "2026-11-22 10:00:00.25"), r#""2026-11-22T10:00:00.25""#);
        assert_eq!(j(1114, "2026-11-22 10:00:00"), r#""2026-11-22T10:00:00""#);
        assert_eq!(j(1114, "infinity"), r#""infinity""#);
        assert_eq!(j(1114, "2026-11-22 10:00:00 BC"), r#""-2025-11-22T10:00:00""#);
        assert_eq!(j(1114, "2026-11-22 10:00:00+00"), r#""2026-11-22 10:00:00+00""#);
        assert_eq!(j(1114, "2026-11-22 1:00:00"), r#""2026-11-22 1:00:00""#);
        assert_eq!(j(1082, "2026-11-22"), r#""2026-11-22""#);
        assert_eq!(j(1082, "infinity"), r#""infinity""#);
        assert_eq!(j(1082, "12026-11-22"), r#""12026-11-22""#);
        assert_eq!(j(1083, "10:00:00.5"), r#""10:00:00.5""#);
        assert_eq!(j(1266, "10:00:00+05:30"), r#""10:00:00+05:30""#);
    }

    /// BC years (PostgreSQL prints `4714-11-24 BC`) as ISO 8601 astronomical years, in
    /// every date and time type and in arrays; years after 9999 keep their digits.
    #[test]
    fn bc_dates_are_astronomical_years() {
        assert_eq!(j(1184, "4714-11-24 00:00:00+00 BC"), r#""-4713-11-24T00:00:00Z""#);
        assert_eq!(
            j(1184, "0001-12-31 23:59:59.999999+00 BC"),
            r#""0000-12-31T23:59:59.999999Z""#
        );
        assert_eq!(j(1184, "0002-01-01 00:00:00+00 BC"), r#""-0001-01-01T00:00:00Z""#);
        assert_eq!(j(1114, "0100-01-01 12:00:00.5 BC"), r#""-0099-01-01T12:00:00.5""#);
        assert_eq!(j(1082, "4714-11-24 BC"), r#""-4713-11-24""#);
        assert_eq!(j(1082, "0001-01-01 BC"), r#""0000-01-01""#);
        assert_eq!(j(1082, "10000-01-01 BC"), r#""-9999-01-01""#);
        assert_eq!(
            j(1182, r#"{"4714-11-24 BC",2026-11-22,NULL}"#),
            r#"["-4713-11-24","2026-11-22",null]"#
        );
        assert_eq!(
            j(1185, r#"{"0044-03-15 12:00:00+00 BC","12026-11-22 10:00:00+00"}"#),
            r#"["-0043-03-15T12:00:00Z","12026-11-22T10:00:00Z"]"#
        );
        assert_eq!(
            j(1115, r#"{"0044-03-15 12:00:00 BC",infinity}"#),
            r#"["-0043-03-15T12:00:00","infinity"]"#
        );
        // not dates: kept as printed
        for text in ["0000-01-01 BC", "44-03-15 BC", "BC", " BC", "2026-11-22 BC BC"] {
            assert_eq!(j(1082, text), serde_json::to_string(text).unwrap(), "{text}");
        }
    }

    #[test]
    fn json_and_bytea() {
        assert_eq!(
            j(3802, r#"{"a": 12345678901234567890123}"#),
            r#"{"a":12345678901234567890123}"#
        );
        assert_eq!(j(114, r#"[1.50, "x", null]"#), r#"[1.50,"x",null]"#);
        assert_eq!(j(114, "{bad"), r#""{bad""#);
        assert_eq!(j(17, "\\x00ff"), r#""AP8=""#);
        assert_eq!(j(17, "\\x"), r#""""#);
        assert_eq!(j(17, "\\x0a0B0c"), r#""CgsM""#);
        assert_eq!(j(17, "\\x0"), r#""\\x0""#);
        assert_eq!(j(17, "\\xzz"), r#""\\xzz""#);
        assert_eq!(j(17, "abc"), r#""abc""#);
    }

    #[test]
    fn arrays() {
        assert_eq!(j(1007, "{1,2,NULL}"), "[1,2,null]");
        assert_eq!(
            j(1009, r#"{"a \"b\"","c,d",NULL,"NULL"}"#),
            r#"["a \"b\"","c,d",null,"NULL"]"#
        );
        assert_eq!(j(1007, "{{1,2},{3,4}}"), "[[1,2],[3,4]]");
        assert_eq!(j(1007, "{}"), "[]");
        assert_eq!(j(1007, "[0:1]={1,2}"), "[1,2]");
        assert_eq!(
            j(1231, "{123456789012345678901234567890.5,-0.00100,NaN}"),
            r#"[123456789012345678901234567890.5,-0.00100,"NaN"]"#
        );
        assert_eq!(j(1016, "{9007199254740993}"), "[9007199254740993]");
        assert_eq!(j(1000, "{t,f}"), "[true,false]");
        assert_eq!(
            j(1185, r#"{"2026-11-22 10:00:00+00",NULL}"#),
            r#"["2026-11-22T10:00:00Z",null]"#
        );
        assert_eq!(j(1001, r#"{"\\x00ff"}"#), r#"["AP8="]"#);
        assert_eq!(j(3807, r#"{"{\"a\": 1}"}"#), r#"[{"a":1}]"#);
        assert_eq!(j(1007, "{1,2"), r#""{1,2""#);
        assert_eq!(j(1007, "{1,x}"), r#"[1,"x"]"#);
    }

    #[test]
    fn user_types() {
        let mut reg = TypeRegistry::with_builtins();
        reg.insert(70_000, TypeKind::Domain { base: 20 });
        reg.insert(70_001, TypeKind::Domain { base: 1700 });
        reg.insert(70_002, TypeKind::Enum);
        reg.insert(
            70_003,
            TypeKind::Array {
                elem: 70_002,
                delim: b',',
            },
        );
        reg.insert(70_004, TypeKind::Domain { base: 70_001 });
        reg.insert(70_010, TypeKind::Domain { base: 70_011 });
        reg.insert(70_011, TypeKind::Domain { base: 70_010 });
        reg.insert(
            70_020,
            TypeKind::Array {
                elem: 70_020,
                delim: b',',
            },
        );
        reg.insert(
            70_030,
            TypeKind::Array {
                elem: 603,
                delim: b';',
            },
        );
        let s = |oid, text| reg.to_json(oid, text).to_string();
        assert_eq!(s(70_000, "9007199254740993"), "9007199254740993");
        assert_eq!(s(70_001, "-0.00100"), "-0.00100");
        assert_eq!(s(70_004, "1.10"), "1.10");
        assert_eq!(s(70_002, "happy"), r#""happy""#);
        assert_eq!(s(70_003, "{happy,sad}"), r#"["happy","sad"]"#);
        assert_eq!(s(70_010, "12"), r#""12""#);
        assert_eq!(s(70_020, r#"{"{\"{}\"}"}"#), "[[[]]]");
        assert_eq!(
            s(70_030, "{(1,1),(0,0);(2,2),(1,1)}"),
            r#"["(1,1),(0,0)","(2,2),(1,1)"]"#
        );
        assert!(reg.contains(70_000));
        assert_eq!(reg.get(70_002), Some(&TypeKind::Enum));
        assert_eq!(reg.get(1), None);
    }

    /// Converting an owned text gives what converting the borrowed one does; a large
    /// jsonb value (also through a domain) is kept as its text, written the same.
    #[test]
    fn owned_conversion_is_the_same() {
        let mut reg = TypeRegistry::with_builtins();
        reg.insert(70_000, TypeKind::Domain { base: 3802 });
        reg.insert(70_001, TypeKind::Enum);
        reg.insert(70_002, TypeKind::Domain { base: 25 });
        for (oid, text) in [
            (25, "héllo \"wörld\""),
            (1043, ""),
            (70_001, "happy"),
            (70_002, "in a domain"),
            (2950, "a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11"),
            (1083, "10:00:00.5"),
            (1186, "P1D"),
            (999_999, "whatever"),
            (20, "9007199254740993"),
            (1700, "NaN"),
            (1184, "2026-11-22 10:00:00+00"),
            (1082, "4714-11-24 BC"),
            (3802, r#"{"a": 1, "b": [1.50]}"#),
            (114, r#"{"a":  1, "a": 2}"#),
            (1007, "{1,2,NULL}"),
            (16, "t"),
            (17, "\\x00ff"),
        ] {
            assert_eq!(
                reg.owned_to_json(oid, text.into()),
                reg.to_json(oid, text),
                "{oid} {text}"
            );
        }
        let record = r#"{"id": 1, "sku": "SKU-1", "t": "a\"b\\c\n"}"#;
        let big = format!("[{}]", vec![record; 30_000].join(", "));
        assert!(big.len() >= json::LARGE);
        for oid in [3802, 70_000] {
            let v = reg.owned_to_json(oid, big.clone());
            assert!(json::deep(&v).is_some(), "kept as its text");
            assert_eq!(v.to_string(), reg.to_json(oid, &big).to_string());
        }
        // json (not jsonb) keeps the input's spelling: a tree as before
        assert!(reg.owned_to_json(114, big.clone()).is_array());
        // not JSON: its text
        let bad = format!("{big}x");
        assert_eq!(reg.owned_to_json(3802, bad.clone()), Value::String(bad));
    }

    #[test]
    fn builtin_oids() {
        let reg = TypeRegistry::with_builtins();
        assert_eq!(reg.get(20), Some(&TypeKind::Exact));
        assert_eq!(
            reg.get(1016),
            Some(&TypeKind::Array {
                elem: 20,
                delim: b','
            })
        );
        assert_eq!(
            reg.get(199),
            Some(&TypeKind::Array {
                elem: 114,
                delim: b','
            })
        );
        assert_eq!(
            reg.get(1270),
            Some(&TypeKind::Array {
                elem: 1266,
                delim: b','
            })
        );
        assert_eq!(reg.get(1266), Some(&TypeKind::Time));
        assert_eq!(reg.get(1186), Some(&TypeKind::Other));
        for oid in [
            16, 17, 18, 19, 20, 21, 23, 25, 26, 114, 142, 700, 701, 790, 1042, 1043, 1082, 1083, 1114, 1184,
            1186, 1266, 1700, 2950, 3802, 1000, 1001, 1002, 1003, 1005, 1007, 1009, 1014, 1015, 1016, 1021,
            1022, 1028, 1115, 1182, 1183, 1185, 1187, 1231, 1270, 2951, 199, 3807, 791, 143,
        ] {
            assert!(reg.contains(oid), "{oid}");
        }
    }
}
