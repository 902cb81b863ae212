//! The standard body as templates see it. The body is indexed in one pass: every map
//! entry and list item is noted with where its key and value lie and where the next
//! one of the same parent is, and nothing is decoded. A template's lookups then walk
//! that index; a value is decoded only when read, and a map or list handed to `tojson`
//! is copied as stored.
//!
//! Bodies are walhook's own JSON. On anything malformed the index is refused (the event
//! cannot be shaped), never a panic.

use std::sync::Arc;

use minijinja::value::{Enumerator, Object, ObjectRepr};
use minijinja::Value as JValue;

/// How deep maps and lists are indexed (walhook's bodies nest a few levels; jsonb values
/// may nest thousands). A map or list deeper than this is one opaque entry: templates see
/// it as a string of its JSON text, and `tojson` of a map or list around it writes it as
/// stored.
const MAX_DEPTH: usize = 512;
/// No next sibling.
const NONE: u32 = u32::MAX;

/// The standard body `body` indexed, checked to be a JSON object.
pub(super) fn index(body: &[u8]) -> Result<Arc<Doc>, String> {
    let doc = Doc::index(body).ok_or("the stored body is not a walhook event: not well-formed JSON")?;
    if !doc.is_map(0) {
        return Err("the stored body is not a walhook event: not an object".into());
    }
    Ok(Arc::new(doc))
}

/// The template context of the event `id` whose indexed standard body is `doc`.
pub(super) fn context(id: &str, doc: Arc<Doc>) -> JValue {
    JValue::from_object(Context {
        id: JValue::from(id),
        body: JsonNode { doc, at: 0 },
    })
}

/// The context object: `id`, then the body's fields.
#[derive(Debug)]
struct Context {
    id: JValue,
    body: JsonNode,
}

impl Object for Context {
    fn get_value(self: &Arc<Self>, key: &JValue) -> Option<JValue> {
        match key.as_str()? {
            "id" => Some(self.id.clone()),
            k => self.body.get(k),
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        let mut keys = vec![JValue::from("id")];
        keys.extend(self.body.keys());
        Enumerator::Iter(Box::new(keys.into_iter()))
    }
}

/// A body and its index.
#[derive(Debug)]
pub(super) struct Doc {
    text: Box<str>,
    /// The root value first; a map's or list's entries follow it, each followed by its
    /// own entries (depth first).
    entries: Vec<Entry>,
}

#[derive(Debug, Clone, Copy)]
struct Entry {
    /// The key's text between its quotes (empty for list items and the root).
    key: (u32, u32),
    /// The key has escapes and must be decoded to compare.
    key_escaped: bool,
    /// The value's bytes.
    start: u32,
    end: u32,
    /// The next entry of the same map or list, or NONE.
    next: u32,
    /// How many entries a map or list has (its first is the next index).
    len: u32,
    /// A map or list nested past `MAX_DEPTH`, not indexed.
    opaque: bool,
}

impl Doc {
    fn index(body: &[u8]) -> Option<Doc> {
        // Positions are u32: bodies are far smaller (a row is at most 1 GB in PostgreSQL
        // and walhook refuses bigger bodies long before).
        u32::try_from(body.len()).ok()?;
        let text = std::str::from_utf8(body).ok()?;
        let mut b = Builder {
            b: body,
            entries: Vec::with_capacity(64),
        };
        let start = skip_ws(body, 0);
        let end = b.value(start, (0, 0), false, 0)?;
        (skip_ws(body, end) == body.len()).then(|| Doc {
            text: text.into(),
            entries: b.entries,
        })
    }

    /// The body's length in bytes.
    pub(super) fn len(&self) -> usize {
        self.text.len()
    }

    /// Whether entry `at` is a map.
    pub(super) fn is_map(&self, at: u32) -> bool {
        let start = self
            .entries
            .get(at as usize)
            .map_or(usize::MAX, |e| e.start as usize);
        self.text.as_bytes().get(start) == Some(&b'{')
    }

    /// How many entries the map or list at `at` has.
    pub(super) fn len_of(&self, at: u32) -> u32 {
        self.entries.get(at as usize).map_or(0, |e| e.len)
    }

    /// Whether entry `at` is a map or list nested too deep to be indexed: it is read as a
    /// string of its JSON text.
    pub(super) fn is_opaque(&self, at: u32) -> bool {
        self.entries.get(at as usize).is_some_and(|e| e.opaque)
    }

    /// Entry `at`'s value as stored.
    pub(super) fn raw_of(&self, at: u32) -> &str {
        self.entries.get(at as usize).map_or("", |e| self.raw(e))
    }

    /// The entry `key` of the map at `at`.
    pub(super) fn child(&self, at: u32, key: &str) -> Option<u32> {
        self.children(at)
            .find(|&c| self.key_is(&self.entries[c as usize], key))
    }

    /// Item `n` of the list at `at`.
    pub(super) fn nth(&self, at: u32, n: usize) -> Option<u32> {
        self.children(at).nth(n)
    }

    fn raw(&self, e: &Entry) -> &str {
        self.text
            .get(e.start as usize..e.end as usize)
            .unwrap_or_default()
    }

    fn key(&self, e: &Entry) -> &str {
        self.text
            .get(e.key.0 as usize..e.key.1 as usize)
            .unwrap_or_default()
    }

    /// The entries of the map or list at `at`, as indexes.
    pub(super) fn children(&self, at: u32) -> impl Iterator<Item = u32> + '_ {
        let first = match self.entries.get(at as usize) {
            Some(e) if e.len > 0 => at + 1,
            _ => NONE,
        };
        std::iter::successors((first != NONE).then_some(first), move |&i| {
            let next = self.entries.get(i as usize)?.next;
            (next != NONE).then_some(next)
        })
    }

    /// Entry `e`'s key with its quotes.
    fn quoted_key(&self, e: &Entry) -> Option<&str> {
        self.text
            .get((e.key.0 as usize).checked_sub(1)?..e.key.1 as usize + 1)
    }

    /// Whether entry `e`'s key is `k`.
    fn key_is(&self, e: &Entry, k: &str) -> bool {
        if e.key_escaped {
            self.quoted_key(e).and_then(decode_string).is_some_and(|s| s == k)
        } else {
            self.key(e) == k
        }
    }

    fn key_value(&self, e: &Entry) -> JValue {
        if e.key_escaped {
            self.quoted_key(e)
                .and_then(decode_string)
                .map_or(JValue::from(()), JValue::from)
        } else {
            JValue::from(self.key(e))
        }
    }
}

struct Builder<'a> {
    b: &'a [u8],
    entries: Vec<Entry>,
}

impl Builder<'_> {
    /// Indexes the value at `i` (after whitespace) as a new entry; returns its end.
    fn value(&mut self, i: usize, key: (u32, u32), key_escaped: bool, depth: usize) -> Option<usize> {
        let me = self.entries.len();
        self.entries.push(Entry {
            key,
            key_escaped,
            start: i as u32,
            end: i as u32,
            next: NONE,
            len: 0,
            opaque: false,
        });
        let end = match *self.b.get(i)? {
            open @ (b'{' | b'[') if depth < MAX_DEPTH => self.container(me, i, open, depth)?,
            b'{' | b'[' => {
                self.entries[me].opaque = true;
                skip_container(self.b, i)?
            }
            b'"' => skip_string(self.b, i)?.0,
            _ => {
                let rest = self.b.get(i..)?;
                let len = rest
                    .iter()
                    .position(|c| matches!(c, b',' | b'}' | b']' | b':' | b'"') || c.is_ascii_whitespace())
                    .unwrap_or(rest.len());
                if len == 0 {
                    return None;
                }
                i + len
            }
        };
        self.entries[me].end = end as u32;
        Some(end)
    }

    /// Indexes the entries of the map or list (entry `me`) opening at `i`; returns its end.
    fn container(&mut self, me: usize, i: usize, open: u8, depth: usize) -> Option<usize> {
        let close = if open == b'{' { b'}' } else { b']' };
        let mut j = skip_ws(self.b, i + 1);
        if self.b.get(j) == Some(&close) {
            return Some(j + 1);
        }
        let mut prev: Option<usize> = None;
        loop {
            let (key, escaped) = if open == b'{' {
                let (key_end, escaped) = skip_string(self.b, j)?;
                let key = (j as u32 + 1, key_end as u32 - 1);
                j = skip_ws(self.b, key_end);
                if self.b.get(j) != Some(&b':') {
                    return None;
                }
                j = skip_ws(self.b, j + 1);
                (key, escaped)
            } else {
                ((0, 0), false)
            };
            let child = self.entries.len();
            if let Some(p) = prev {
                self.entries[p].next = child as u32;
            }
            prev = Some(child);
            let value_end = self.value(j, key, escaped, depth + 1)?;
            self.entries[me].len += 1;
            j = skip_ws(self.b, value_end);
            match *self.b.get(j)? {
                b',' => j = skip_ws(self.b, j + 1),
                c if c == close => return Some(j + 1),
                _ => return None,
            }
        }
    }
}

/// Just past the map or list starting at `i`, found without recursion (its strings
/// skipped whole, its brackets counted).
fn skip_container(b: &[u8], i: usize) -> Option<usize> {
    let mut open = 0usize;
    let mut j = i;
    loop {
        match *b.get(j)? {
            b'"' => {
                j = skip_string(b, j)?.0;
                continue;
            }
            b'{' | b'[' => open += 1,
            b'}' | b']' => {
                open -= 1;
                if open == 0 {
                    return Some(j + 1);
                }
            }
            _ => {}
        }
        j += 1;
    }
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// Just past the string starting at `i` (at its opening quote), and whether it has escapes.
fn skip_string(b: &[u8], i: usize) -> Option<(usize, bool)> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let mut j = i + 1;
    let mut escaped = false;
    loop {
        j += memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
        if b.get(j) == Some(&b'\\') {
            escaped = true;
            j += 2;
        } else {
            return Some((j + 1, escaped));
        }
    }
}

/// A JSON string (with its quotes) decoded.
fn decode_string(quoted: &str) -> Option<String> {
    serde_json::from_str::<String>(quoted).ok()
}

/// A map or list of the body, as a template value.
#[derive(Debug, Clone)]
pub(super) struct JsonNode {
    doc: Arc<Doc>,
    at: u32,
}

impl JsonNode {
    fn entry(&self) -> &Entry {
        &self.doc.entries[self.at as usize]
    }

    fn is_map(&self) -> bool {
        self.doc.is_map(self.at)
    }

    /// The map or list as stored: its JSON text.
    pub(super) fn raw(&self) -> Option<&str> {
        Some(self.doc.raw(self.entry()))
    }

    fn get(&self, key: &str) -> Option<JValue> {
        Some(self.value_of(self.doc.child(self.at, key)?))
    }

    fn value_of(&self, at: u32) -> JValue {
        let e = &self.doc.entries[at as usize];
        if e.opaque {
            JValue::from(self.doc.raw(e))
        } else if matches!(self.doc.text.as_bytes().get(e.start as usize), Some(b'{' | b'[')) {
            JValue::from_object(JsonNode {
                doc: self.doc.clone(),
                at,
            })
        } else {
            scalar_value(self.doc.raw(e))
        }
    }

    fn keys(&self) -> Vec<JValue> {
        let doc = &self.doc;
        doc.children(self.at)
            .map(|c| doc.key_value(&doc.entries[c as usize]))
            .collect()
    }
}

impl Object for JsonNode {
    fn repr(self: &Arc<Self>) -> ObjectRepr {
        if self.is_map() {
            ObjectRepr::Map
        } else {
            ObjectRepr::Seq
        }
    }

    fn get_value(self: &Arc<Self>, key: &JValue) -> Option<JValue> {
        if self.is_map() {
            self.get(key.as_str()?)
        } else {
            let n = key.as_usize()?;
            let at = self.doc.nth(self.at, n)?;
            Some(self.value_of(at))
        }
    }

    fn enumerate(self: &Arc<Self>) -> Enumerator {
        if self.is_map() {
            Enumerator::Iter(Box::new(self.keys().into_iter()))
        } else {
            Enumerator::Seq(self.entry().len as usize)
        }
    }
}

/// A JSON scalar (its text) as a template value. Integers stay integers; other numbers
/// become floats when a float prints them with the same digits, else strings of their
/// exact digits (so `19.90` is never shown as `19.9`).
fn scalar_value(raw: &str) -> JValue {
    match raw.as_bytes().first() {
        Some(b'"') => {
            let inner = &raw[1..raw.len().saturating_sub(1).max(1)];
            if inner.contains('\\') {
                decode_string(raw).map_or(JValue::from(()), JValue::from)
            } else {
                JValue::from(inner)
            }
        }
        Some(b't') => JValue::from(true),
        Some(b'f') => JValue::from(false),
        Some(b'n') | None => JValue::from(()),
        Some(_) => {
            if let Ok(i) = raw.parse::<i64>() {
                JValue::from(i)
            } else if let Ok(i) = raw.parse::<i128>() {
                JValue::from(i)
            } else {
                match raw.parse::<f64>() {
                    Ok(f) if f.is_finite() && JValue::from(f).to_string() == raw => JValue::from(f),
                    _ => JValue::from(raw),
                }
            }
        }
    }
}
