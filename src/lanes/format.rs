//! The shape of each subscriber's requests: the standard body as mapping rendered it,
//! CloudEvents 1.0 structured JSON around its `data`, or a minijinja template over its
//! fields (`id`, `type`, `timestamp`, `data`). Method, Content-Type and, for templates,
//! header values are part of the shape.
//!
//! Formatting happens in the lane, at send time, from the stored standard body. It is a
//! pure function of the webhook id and that body, so a retry or a replay after a crash
//! sends the same bytes under the same signature.

use std::borrow::Cow;

use minijinja::{AutoEscape, Environment, UndefinedBehavior, Value as JValue};
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use serde_json::Value;

use super::http::{reserved_header, valid_header_value, valid_method};
use crate::config::{BodyFormat, Subscriber, DEFAULT_MAX_BODY_BYTES, MAX_MAX_BODY_BYTES};

const DEFAULT_METHOD: &str = "POST";
/// A rendered method, Content-Type or header value at most, in bytes (servers refuse
/// longer header lines anyway).
const MAX_HEADER_BYTES: usize = 8 * 1024;
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
    /// The rendered body's limit (`max_body_bytes`; templates only).
    max_body: usize,
}

enum Kind {
    Standard,
    CloudEvents {
        /// `/walhook/<database>`.
        source: String,
        type_prefix: Option<String>,
    },
    Template {
        env: Box<Environment<'static>>,
        /// The body template's fast form, when it has one (see `fast`).
        fast: Option<fast::Fast>,
    },
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
/// The standard body `body` of event `id` as a template sees it (`id`, `type`, `data`,
/// ...); an error when the body is not walhook's JSON.
pub fn template_context(id: &str, body: &[u8]) -> Result<JValue, String> {
    Ok(doc::context(id, doc::index(body)?))
}

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
    match sub.max_body_bytes {
        Some(_) if !templating => bad(
            "max_body_bytes",
            "only used with format = \"template\": set format = \"template\" or remove max_body_bytes".into(),
        ),
        Some(n) if n == 0 || n > MAX_MAX_BODY_BYTES => bad(
            "max_body_bytes",
            format!("{n} is outside 1..{MAX_MAX_BODY_BYTES} (64 MiB)"),
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
        let env = environment();
        for (key, source) in template_sources(sub) {
            match env.template_from_str(&source) {
                Err(e) => bad(&key, describe(&e)),
                Ok(t) if sub.batch.is_some() => {
                    let names = t.undeclared_variables(false);
                    let example = "e.g. '[{% for e in events %}{{ e.data|tojson }}{{ \",\" if not loop.last }}{% endfor %}]'";
                    let mut other: Vec<&String> = names
                        .iter()
                        .filter(|n| {
                            !["id", "events"].contains(&n.as_str()) && !BUILTINS.contains(&n.as_str())
                        })
                        .collect();
                    other.sort();
                    if let Some(name) = other.first() {
                        bad(&key, format!("with batch, templates render once per request: they see `events` (the list of its events, each with id, type, timestamp, data) and `id` (the batch's id), not `{name}`; {example}"));
                    } else if key == "template" && !names.contains("events") {
                        bad(&key, format!("with batch, the template makes one body per request from `events`, the list of its events (each with id, type, timestamp, data): {example}"));
                    }
                }
                Ok(_) => {}
            }
        }
    }
    out
}

/// Names a template may use that minijinja provides.
const BUILTINS: &[&str] = &[
    "range",
    "dict",
    "namespace",
    "debug",
    "loop",
    "self",
    "super",
    "caller",
    "varargs",
    "kwargs",
];

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
        if let Some(raw) = value
            .downcast_object_ref::<doc::JsonNode>()
            .and_then(doc::JsonNode::raw)
        {
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
    /// An error is the first problem found, as its key within the subscriber and its
    /// message.
    pub fn new(sub: &Subscriber, index: usize, database: &str) -> Result<Formatter, (String, String)> {
        let label = format!("subscribers[{index}]");
        if let Some(first) = check(sub).into_iter().next() {
            return Err(first);
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
                let fast = sub.template.as_deref().and_then(fast::Fast::compile);
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
                        .map_err(|e| (key.clone(), describe(&e)))?;
                }
                Kind::Template {
                    env: Box::new(env),
                    fast,
                }
            }
        };
        Ok(Formatter {
            kind,
            method,
            content_type,
            headers,
            label,
            max_body: sub.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES),
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
            Kind::Template { env, fast } => {
                let doc = doc::index(body)?;
                // The minijinja context, made only when some template is rendered by
                // minijinja.
                let ctx = std::cell::OnceCell::new();
                let ctx = || ctx.get_or_init(|| doc::context(id, doc.clone())).clone();
                self.render(env, fast.as_ref().map(|f| (f, &*doc, id)), &ctx)
            }
        }
    }

    fn fixed<'a>(&'a self, part: &'a Part) -> Cow<'a, str> {
        match part {
            Part::Fixed(s) => Cow::Borrowed(s),
            Part::Template(_) => Cow::Borrowed(""),
        }
    }

    /// The request of a template subscriber: its templates rendered over `ctx`, the body
    /// by its fast form over a standard body (`fast`: the form, the indexed body and the
    /// event's id) when it has one.
    fn render<'a>(
        &'a self,
        env: &Environment<'static>,
        fast: Option<(&fast::Fast, &doc::Doc, &str)>,
        ctx: &dyn Fn() -> JValue,
    ) -> Result<Request<'a>, String> {
        // Renders into a buffer that refuses to grow past `cap`, so rendering stops there.
        let render = |name: &str, key: &str| -> Result<String, String> {
            let (cap, limit) = if key == "template" {
                (self.max_body, "max_body_bytes")
            } else {
                (MAX_HEADER_BYTES, "the limit of a rendered method or header")
            };
            let mut out = Capped::new(cap);
            let rendered = env
                .get_template(name)
                .and_then(|t| t.render_captured_to(ctx(), &mut out).map(drop));
            match rendered {
                Ok(()) => String::from_utf8(out.buf)
                    .map_err(|e| format!("{}.{key} rendered text that is not UTF-8: {e}", self.label)),
                Err(_) if out.over => Err(over_limit(&self.label, key, limit, cap)),
                Err(e) => Err(format!("{}.{key} failed: {}", self.label, describe(&e))),
            }
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
        let body = match fast.map(|(f, doc, id)| f.render(doc, id, self.max_body)) {
            Some(fast::Rendered::Body(body)) => body,
            Some(fast::Rendered::TooLong) => {
                return Err(over_limit(
                    &self.label,
                    "template",
                    "max_body_bytes",
                    self.max_body,
                ))
            }
            Some(fast::Rendered::AskMinijinja) | None => render("body", "template")?,
        };
        Ok(Request {
            method,
            content_type,
            headers,
            body: Cow::Owned(body.into_bytes()),
        })
    }
}

/// The error of a template whose output passed its limit.
fn over_limit(label: &str, key: &str, limit: &str, cap: usize) -> String {
    let fix = if key == "template" {
        format!(" (raise {label}.max_body_bytes, or make the template write less)")
    } else {
        String::new()
    };
    format!("{label}.{key} rendered more than {limit} ({cap} bytes): rendering stopped there{fix}")
}

/// Whether `error` is `over_limit`'s for a body template.
fn over_body_limit(error: &str) -> bool {
    error.contains(".template rendered more than max_body_bytes")
}

/// A buffer that takes at most `cap` bytes: a write past it fails (and sets `over`), which
/// stops minijinja's rendering at once.
struct Capped {
    buf: Vec<u8>,
    cap: usize,
    over: bool,
}

impl Capped {
    fn new(cap: usize) -> Capped {
        Capped {
            buf: Vec::new(),
            cap,
            over: false,
        }
    }
}

impl std::io::Write for Capped {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        if self.buf.len().saturating_add(bytes.len()) > self.cap {
            self.over = true;
            return Err(std::io::Error::other("the rendered output passed its limit"));
        }
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
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

mod batch;
mod doc;
mod fast;

pub use batch::Batch;

#[cfg(test)]
mod tests;
