//! The shape of each subscriber's requests: the standard body as mapping rendered it,
//! CloudEvents 1.0 structured JSON around its `data`, or a minijinja template over its
//! fields (`id`, `type`, `timestamp`, `data`). Method, Content-Type and, for templates,
//! header values are part of the shape.
//!
//! Formatting happens in the lane, at send time, from the stored standard body. It is a
//! pure function of the webhook id and that body, so a retry or a replay after a crash
//! sends the same bytes under the same signature.

use std::borrow::Cow;
use std::sync::Arc;

use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value as JValue};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::http::{reserved_header, valid_header_value, valid_method};
use crate::config::{BodyFormat, Subscriber};

const DEFAULT_METHOD: &str = "POST";
const JSON: &str = "application/json";
const CLOUDEVENTS_JSON: &str = "application/cloudevents+json";

/// One request's shape, ready to sign and send.
#[derive(Debug, PartialEq, Eq)]
pub struct Request<'a> {
    pub method: Cow<'a, str>,
    pub content_type: Cow<'a, str>,
    /// Headers rendered for this event (templated ones); the fixed ones live in the client.
    pub headers: Vec<(String, String)>,
    pub body: Cow<'a, [u8]>,
}

/// Turns standard bodies into one subscriber's requests.
pub struct Formatter {
    kind: Kind,
    method: Part,
    content_type: Part,
    /// Header values rendered per event (template format only), by name.
    headers: Vec<String>,
    /// `subscribers[N]`, for errors.
    label: String,
}

enum Kind {
    Standard,
    CloudEvents {
        /// `/walhook/<database>`.
        source: String,
        type_prefix: Option<String>,
    },
    Template(Box<Environment<'static>>),
}

/// A method or Content-Type: fixed, or a template (named in the environment).
enum Part {
    Fixed(String),
    Template(&'static str),
}

fn is_template(s: &str) -> bool {
    s.contains("{{") || s.contains("{%")
}

/// Problems in one subscriber's format settings, as (key, message) pairs.
pub fn check(sub: &Subscriber) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut bad = |k: &str, m: String| out.push((k.to_string(), m));
    let templating = sub.format == BodyFormat::Template;
    match (&sub.template, templating) {
        (None, true) => bad(
            "template",
            "format = \"template\" needs a template, e.g. template = '{\"text\": {{ type|tojson }}}'".into(),
        ),
        (Some(_), false) => bad(
            "template",
            "only used with format = \"template\": set format = \"template\" or remove template".into(),
        ),
        _ => {}
    }
    if let Some(prefix) = &sub.type_prefix {
        if sub.format != BodyFormat::CloudEvents {
            bad(
                "type_prefix",
                "only used with format = \"cloudevents\": set format = \"cloudevents\" or remove type_prefix"
                    .into(),
            );
        } else if prefix.is_empty() || !prefix.bytes().all(|b| b.is_ascii_graphic()) {
            bad(
                "type_prefix",
                format!("{prefix:?} must be non-empty, without spaces, e.g. \"com.example.pim\""),
            );
        }
    }
    for name in sub.headers.keys() {
        if name.eq_ignore_ascii_case("content-type") {
            bad(
                &format!("headers.{name}"),
                "set content_type = \"...\" instead of a Content-Type header".into(),
            );
        }
    }
    if let Some(m) = &sub.method {
        let templated = templating && is_template(m);
        if !(templated || valid_method(m)) {
            bad(
                "method",
                format!("{m:?} is not a method walhook can send: use POST, PUT, PATCH, DELETE or another token (not HEAD or CONNECT)"),
            );
        }
    }
    if let Some(ct) = &sub.content_type {
        if !(templating && is_template(ct)) && (ct.trim().is_empty() || !valid_header_value(ct)) {
            bad(
                "content_type",
                format!("{ct:?} is not a Content-Type, e.g. \"application/json\""),
            );
        }
    }
    if templating {
        for (key, source) in template_sources(sub) {
            if let Err(e) = environment().template_from_str(&source) {
                bad(&key, describe(&e));
            }
        }
    }
    out
}

/// The templates of a `format = "template"` subscriber: (key path, source).
fn template_sources(sub: &Subscriber) -> Vec<(String, String)> {
    let mut out = Vec::new();
    if let Some(t) = &sub.template {
        out.push(("template".to_string(), t.clone()));
    }
    for (k, v) in [("method", &sub.method), ("content_type", &sub.content_type)] {
        if let Some(v) = v.as_ref().filter(|v| is_template(v)) {
            out.push((k.to_string(), v.clone()));
        }
    }
    for (name, v) in &sub.headers {
        if is_template(v) {
            out.push((format!("headers.{name}"), v.clone()));
        }
    }
    out
}

/// A template error with its position, on one line.
fn describe(e: &minijinja::Error) -> String {
    let mut s = e.to_string();
    if let Some(line) = e.line() {
        if !s.contains("line") {
            s.push_str(&format!(" (line {line})"));
        }
    }
    s
}

fn environment() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::SemiStrict);
    env.set_auto_escape_callback(|_| AutoEscape::None);
    env.add_filter("truncate", truncate);
    env.add_filter("tojson", tojson);
    env
}

/// `tojson`, which writes a map or list of the body as it is stored (compact JSON with
/// every digit) without decoding it; anything else as minijinja's own `tojson` does.
fn tojson(
    value: &JValue,
    indent: Option<JValue>,
    args: minijinja::value::Kwargs,
) -> Result<JValue, minijinja::Error> {
    if indent.is_none() && args.args().next().is_none() {
        if let Some(raw) = value.downcast_object_ref::<JsonNode>().and_then(JsonNode::raw) {
            return Ok(JValue::from_safe_string(raw.to_string()));
        }
    }
    minijinja::filters::tojson(value, indent, args)
}

/// `truncate(length=255, end="...")`: at most `length` characters, the last ones
/// replaced by `end` when cut.
fn truncate(value: String, length: Option<usize>, end: Option<String>) -> String {
    let length = length.unwrap_or(255);
    if value.chars().count() <= length {
        return value;
    }
    let end = end.unwrap_or_else(|| "...".to_string());
    let keep = length.saturating_sub(end.chars().count());
    let mut out: String = value.chars().take(keep).collect();
    out.push_str(&end);
    out
}

impl Formatter {
    /// The formatter of subscriber `index`; `database` names the source in CloudEvents.
    /// Settings are checked by `check` when the config loads; errors name their key
    /// within the subscriber.
    pub fn new(sub: &Subscriber, index: usize, database: &str) -> Result<Formatter, String> {
        let label = format!("subscribers[{index}]");
        if let Some((key, message)) = check(sub).into_iter().next() {
            return Err(format!("{key}: {message}"));
        }
        let default_type = match sub.format {
            BodyFormat::CloudEvents => CLOUDEVENTS_JSON,
            _ => JSON,
        };
        let mut method = Part::Fixed(sub.method.clone().unwrap_or_else(|| DEFAULT_METHOD.into()));
        let mut content_type = Part::Fixed(sub.content_type.clone().unwrap_or_else(|| default_type.into()));
        let mut headers = Vec::new();
        let kind = match sub.format {
            BodyFormat::Standard => Kind::Standard,
            BodyFormat::CloudEvents => Kind::CloudEvents {
                source: format!("/walhook/{}", encode_segment(database)),
                type_prefix: sub.type_prefix.clone(),
            },
            BodyFormat::Template => {
                let mut env = environment();
                for (key, source) in template_sources(sub) {
                    let name = match key.as_str() {
                        "template" => "body".to_string(),
                        "method" => {
                            method = Part::Template("method");
                            "method".to_string()
                        }
                        "content_type" => {
                            content_type = Part::Template("content_type");
                            "content_type".to_string()
                        }
                        header => {
                            let name = header.trim_start_matches("headers.").to_string();
                            headers.push(name.clone());
                            format!("header:{name}")
                        }
                    };
                    env.add_template_owned(name, source)
                        .map_err(|e| format!("{key}: {}", describe(&e)))?;
                }
                Kind::Template(Box::new(env))
            }
        };
        Ok(Formatter {
            kind,
            method,
            content_type,
            headers,
            label,
        })
    }

    /// Headers whose values are rendered per event; the client sends the others as fixed.
    pub fn templated_headers(&self) -> &[String] {
        &self.headers
    }

    /// The request for the event `id` whose standard body is `body`. An error means this
    /// event cannot be shaped for this subscriber (a template failed on its values).
    pub fn format<'a>(&'a self, id: &str, body: &'a [u8]) -> Result<Request<'a>, String> {
        match &self.kind {
            Kind::Standard => Ok(Request {
                method: self.fixed(&self.method),
                content_type: self.fixed(&self.content_type),
                headers: Vec::new(),
                body: Cow::Borrowed(body),
            }),
            Kind::CloudEvents { source, type_prefix } => Ok(Request {
                method: self.fixed(&self.method),
                content_type: self.fixed(&self.content_type),
                headers: Vec::new(),
                body: Cow::Owned(cloud_event(id, body, source, type_prefix.as_deref())?),
            }),
            Kind::Template(env) => self.render(env, id, body),
        }
    }

    fn fixed<'a>(&'a self, part: &'a Part) -> Cow<'a, str> {
        match part {
            Part::Fixed(s) => Cow::Borrowed(s),
            Part::Template(_) => Cow::Borrowed(""),
        }
    }

    fn render<'a>(
        &'a self,
        env: &Environment<'static>,
        id: &str,
        body: &'a [u8],
    ) -> Result<Request<'a>, String> {
        let ctx = context(id, body)?;
        let render = |name: &str, key: &str| -> Result<String, String> {
            env.get_template(name)
                .and_then(|t| t.render(&ctx))
                .map_err(|e| format!("{}.{key} failed: {}", self.label, describe(&e)))
        };
        let method = match &self.method {
            Part::Fixed(m) => Cow::Borrowed(m.as_str()),
            Part::Template(name) => {
                let m = render(name, "method")?.trim().to_string();
                if !valid_method(&m) {
                    return Err(format!(
                        "{}.method rendered {m:?}, which is not a method walhook can send",
                        self.label
                    ));
                }
                Cow::Owned(m)
            }
        };
        let content_type = match &self.content_type {
            Part::Fixed(c) => Cow::Borrowed(c.as_str()),
            Part::Template(name) => {
                let c = render(name, "content_type")?.trim().to_string();
                if c.is_empty() || !valid_header_value(&c) {
                    return Err(format!(
                        "{}.content_type rendered {c:?}, which is not a Content-Type",
                        self.label
                    ));
                }
                Cow::Owned(c)
            }
        };
        let mut headers = Vec::with_capacity(self.headers.len());
        for name in &self.headers {
            let v = render(&format!("header:{name}"), &format!("headers.{name}"))?;
            let v = v.trim().to_string();
            if !valid_header_value(&v) || reserved_header(name) {
                return Err(format!(
                    "{}.headers.{name} rendered a value with a line break or control character",
                    self.label
                ));
            }
            headers.push((name.clone(), v));
        }
        let body = render("body", "template")?;
        Ok(Request {
            method,
            content_type,
            headers,
            body: Cow::Owned(body.into_bytes()),
        })
    }
}

/// The fields of a standard body that the other formats use.
#[derive(Deserialize)]
struct Standard<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(borrow)]
    timestamp: Cow<'a, str>,
    #[serde(borrow)]
    data: &'a RawValue,
}

#[derive(Deserialize)]
struct DataHead<'a> {
    #[serde(borrow, default)]
    table: Option<Cow<'a, str>>,
    #[serde(borrow, default)]
    key: Option<&'a RawValue>,
}

#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: &'a str,
    source: String,
    #[serde(rename = "type")]
    kind: Cow<'a, str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    subject: Option<String>,
    time: &'a str,
    datacontenttype: &'static str,
    data: &'a RawValue,
}

fn parse_standard(body: &[u8]) -> Result<Standard<'_>, String> {
    serde_json::from_slice(body).map_err(|e| format!("the stored body is not a walhook event: {e}"))
}

/// CloudEvents 1.0 structured JSON around the standard body's `data`.
fn cloud_event(id: &str, body: &[u8], source: &str, type_prefix: Option<&str>) -> Result<Vec<u8>, String> {
    let std = parse_standard(body)?;
    let head: DataHead<'_> = serde_json::from_str(std.data.get()).unwrap_or(DataHead {
        table: None,
        key: None,
    });
    let source = match &head.table {
        Some(t) => format!("{source}/{}", encode_segment(t)),
        None => source.to_string(),
    };
    let kind = match type_prefix {
        Some(p) if p.ends_with('.') => Cow::Owned(format!("{p}{}", std.kind)),
        Some(p) => Cow::Owned(format!("{p}.{}", std.kind)),
        None => std.kind,
    };
    let event = CloudEvent {
        specversion: "1.0",
        id,
        source,
        kind,
        subject: head.key.and_then(subject),
        time: &std.timestamp,
        datacontenttype: JSON,
        data: std.data,
    };
    serde_json::to_vec(&event).map_err(|e| format!("cloudevents body: {e}"))
}

/// The CloudEvents `subject` of a key: its one value as text, or the key's JSON when
/// it has several columns.
fn subject(key: &RawValue) -> Option<String> {
    let map: serde_json::Map<String, Value> = serde_json::from_str(key.get()).ok()?;
    match map.len() {
        0 => None,
        1 => match map.values().next()? {
            Value::String(s) if !s.is_empty() => Some(s.clone()),
            Value::String(_) | Value::Null => None,
            v => Some(v.to_string()),
        },
        _ => Some(key.get().to_string()),
    }
}

/// A path segment with everything but unreserved characters percent-encoded.
fn encode_segment(s: &str) -> String {
    use percent_encoding::{utf8_percent_encode, NON_ALPHANUMERIC};
    const SET: &percent_encoding::AsciiSet = &NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    utf8_percent_encode(s, SET).to_string()
}

/// The template context: `id` and the standard body's `type`, `timestamp` and `data`.
/// Nothing is parsed up front beyond checking the body is a JSON object; each map or list
/// the template reads is split into its entries once (`JsonNode`), and values it never
/// reads (a long description in `data.new`, say) are never decoded.
fn context(id: &str, body: &[u8]) -> Result<JValue, String> {
    let start = skip_ws(body, 0);
    let root = JsonNode::new(Arc::from(body), start, body.len());
    if !root.is_map() {
        return Err("the stored body is not a walhook event: not an object".into());
    }

    Ok(JValue::from_object(Context {
        id: JValue::from(id),
        body: Arc::new(root),
    }))
}

/// The context object: `id`, then the body's fields.
#[derive(Debug)]
struct Context {
    id: JValue,
    body: Arc<JsonNode>,
}

impl minijinja::value::Object for Context {
    fn get_value(self: &Arc<Self>, key: &JValue) -> Option<JValue> {
        match key.as_str()? {
            "id" => Some(self.id.clone()),
            _ => self.body.get_value(key),
        }
    }

    fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
        let mut keys = vec![JValue::from("id")];
        keys.extend(self.body.keys());
        minijinja::value::Enumerator::Iter(Box::new(keys.into_iter()))
    }
}

/// A map or list inside a body, read as far as a template asks: looking up a key scans
/// the entries up to it and no further, values are decoded when read (once), and what
/// a template never reads (a long description in `data.new`, say) is skipped unread.
#[derive(Debug)]
struct JsonNode {
    body: Arc<[u8]>,
    /// Where the value starts (`{` or `[`).
    start: usize,
    /// A bound on where it ends (its parent's end).
    end: usize,
    scan: std::sync::Mutex<Scan>,
}

#[derive(Debug, Default)]
struct Scan {
    /// Map entries (with keys) or list items (keys empty) found so far.
    entries: Vec<(String, Item)>,
    /// Where scanning goes on: just inside the opening bracket, or just after an entry
    /// whose value has not been skipped yet; `None` once the closing bracket was seen.
    next: Option<Next>,
    /// The value is not a well-formed map or list.
    broken: bool,
}

#[derive(Debug, Clone, Copy)]
enum Next {
    /// At the first entry (after the opening bracket).
    First(usize),
    /// The last entry's value starts here; skip it, then `,` or the closing bracket.
    After(usize),
}

#[derive(Debug)]
struct Item {
    start: usize,
    value: Option<JValue>,
}

impl JsonNode {
    fn new(body: Arc<[u8]>, start: usize, end: usize) -> JsonNode {
        let open = body.get(start).copied();
        let scan = Scan {
            entries: Vec::new(),
            next: matches!(open, Some(b'{') | Some(b'[')).then_some(Next::First(start + 1)),
            broken: !matches!(open, Some(b'{') | Some(b'[')),
        };
        JsonNode {
            body,
            start,
            end,
            scan: std::sync::Mutex::new(scan),
        }
    }

    fn is_map(&self) -> bool {
        self.body.get(self.start) == Some(&b'{')
    }

    fn bytes(&self) -> &[u8] {
        self.body.get(..self.end).unwrap_or_default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Scan> {
        self.scan.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Scans one more entry; false when there are no more (or the JSON is broken).
    fn step(&self, scan: &mut Scan) -> bool {
        let b = self.bytes();
        let close = if self.is_map() { b'}' } else { b']' };
        let Some(next) = scan.next else { return false };
        let mut i = match next {
            Next::First(i) => skip_ws(b, i),
            Next::After(value) => match skip_value(b, value).map(|e| skip_ws(b, e)) {
                Some(i) if b.get(i) == Some(&b',') => skip_ws(b, i + 1),
                Some(i) if b.get(i) == Some(&close) => {
                    scan.next = None;
                    return false;
                }
                _ => return self.broken(scan),
            },
        };
        if matches!(next, Next::First(_)) && b.get(i) == Some(&close) {
            scan.next = None;
            return false;
        }
        let key = if self.is_map() {
            let Some(key_end) = (b.get(i) == Some(&b'"')).then(|| skip_string(b, i)).flatten() else {
                return self.broken(scan);
            };
            let Some(key) = b.get(i..key_end).and_then(decode_key) else {
                return self.broken(scan);
            };
            i = skip_ws(b, key_end);
            if b.get(i) != Some(&b':') {
                return self.broken(scan);
            }
            i = skip_ws(b, i + 1);
            key
        } else {
            String::new()
        };
        if i >= b.len() {
            return self.broken(scan);
        }
        scan.entries.push((
            key,
            Item {
                start: i,
                value: None,
            },
        ));
        scan.next = Some(Next::After(i));
        true
    }

    fn broken(&self, scan: &mut Scan) -> bool {
        scan.broken = true;
        scan.next = None;
        false
    }

    /// The template value of entry `n`: decoded once; maps and lists become nodes.
    fn value_of(&self, scan: &mut Scan, n: usize) -> Option<JValue> {
        let (_, item) = scan.entries.get_mut(n)?;
        if let Some(v) = &item.value {
            return Some(v.clone());
        }
        let b = self.bytes();
        let v = match b.get(item.start)? {
            b'{' | b'[' => JValue::from_object(JsonNode::new(self.body.clone(), item.start, self.end)),
            _ => {
                let end = skip_value(b, item.start)?;
                scalar_value(b.get(item.start..end)?)
            }
        };
        item.value = Some(v.clone());
        Some(v)
    }

    /// The map or list as stored: its JSON text.
    fn raw(&self) -> Option<&str> {
        let b = self.bytes();
        let end = skip_value(b, self.start)?;
        std::str::from_utf8(b.get(self.start..end)?).ok()
    }

    fn keys(&self) -> Vec<JValue> {
        let mut scan = self.lock();
        while self.step(&mut scan) {}
        scan.entries
            .iter()
            .map(|(k, _)| JValue::from(k.as_str()))
            .collect()
    }
}

/// A key's text (with its quotes) as a string.
fn decode_key(raw: &[u8]) -> Option<String> {
    if raw.contains(&b'\\') {
        serde_json::from_slice::<String>(raw).ok()
    } else {
        std::str::from_utf8(raw.get(1..raw.len().checked_sub(1)?)?)
            .ok()
            .map(str::to_string)
    }
}

impl minijinja::value::Object for JsonNode {
    fn repr(self: &Arc<Self>) -> minijinja::value::ObjectRepr {
        if self.is_map() {
            minijinja::value::ObjectRepr::Map
        } else {
            minijinja::value::ObjectRepr::Seq
        }
    }

    fn get_value(self: &Arc<Self>, key: &JValue) -> Option<JValue> {
        let mut scan = self.lock();
        if self.is_map() {
            let k = key.as_str()?;
            let n = match scan.entries.iter().position(|(name, _)| name == k) {
                Some(n) => n,
                None => loop {
                    if !self.step(&mut scan) {
                        return None;
                    }
                    if scan.entries.last().is_some_and(|(name, _)| name == k) {
                        break scan.entries.len() - 1;
                    }
                },
            };
            self.value_of(&mut scan, n)
        } else {
            let n = key.as_usize()?;
            while scan.entries.len() <= n {
                if !self.step(&mut scan) {
                    return None;
                }
            }
            self.value_of(&mut scan, n)
        }
    }

    fn enumerate(self: &Arc<Self>) -> minijinja::value::Enumerator {
        if self.is_map() {
            minijinja::value::Enumerator::Iter(Box::new(self.keys().into_iter()))
        } else {
            let mut scan = self.lock();
            while self.step(&mut scan) {}
            minijinja::value::Enumerator::Seq(scan.entries.len())
        }
    }
}

// A small JSON scanner for the bodies templates read: it finds where each entry of a map
// or list starts and ends without decoding anything, jumping over strings with memchr.
// Bodies are walhook's own JSON; on anything malformed it gives None, never panics.

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while b.get(i).is_some_and(|c| c.is_ascii_whitespace()) {
        i += 1;
    }
    i
}

/// Just past the string starting at `i` (at its opening quote).
fn skip_string(b: &[u8], i: usize) -> Option<usize> {
    let mut j = i + 1;
    loop {
        j += memchr::memchr2(b'"', b'\\', b.get(j..)?)?;
        if b.get(j) == Some(&b'\\') {
            j += 2;
        } else {
            return Some(j + 1);
        }
    }
}

/// Just past the value starting at `i` (after whitespace).
fn skip_value(b: &[u8], i: usize) -> Option<usize> {
    let mut i = skip_ws(b, i);
    match b.get(i)? {
        b'"' => skip_string(b, i),
        &open @ (b'{' | b'[') => {
            // In balanced JSON only this kind of bracket needs counting.
            let close = if open == b'{' { b'}' } else { b']' };
            let mut depth = 0usize;
            loop {
                i += memchr::memchr3(b'"', open, close, b.get(i..)?)?;
                match b.get(i)? {
                    b'"' => {
                        i = skip_string(b, i)?;
                        continue;
                    }
                    c if *c == open => depth += 1,
                    _ => {
                        depth = depth.checked_sub(1)?;
                        if depth == 0 {
                            return Some(i + 1);
                        }
                    }
                }
                i += 1;
            }
        }
        _ => {
            let rest = b.get(i..)?;
            let len = rest
                .iter()
                .position(|c| matches!(c, b',' | b'}' | b']') || c.is_ascii_whitespace())
                .unwrap_or(rest.len());
            (len > 0).then_some(i + len)
        }
    }
}

/// A JSON scalar (its text) as a template value. Integers stay integers; other numbers
/// become floats when a float prints them with the same digits, else strings of their
/// exact digits (so `19.90` is never shown as `19.9`).
fn scalar_value(raw: &[u8]) -> JValue {
    match raw.first() {
        Some(b'"') => serde_json::from_slice::<String>(raw).map_or(JValue::from(()), JValue::from),
        Some(b't') => JValue::from(true),
        Some(b'f') => JValue::from(false),
        Some(b'n') | None => JValue::from(()),
        Some(_) => {
            let Ok(text) = std::str::from_utf8(raw) else {
                return JValue::from(());
            };
            if let Ok(i) = text.parse::<i64>() {
                JValue::from(i)
            } else if let Ok(i) = text.parse::<i128>() {
                JValue::from(i)
            } else {
                match text.parse::<f64>() {
                    Ok(f) if f.is_finite() && JValue::from(f).to_string() == text => JValue::from(f),
                    _ => JValue::from(text),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests;
