//! A fast path for the body templates most subscribers use: text around `{{ ... }}`
//! expressions made of body paths (`data.new.sku`, `data.changed[0]`), string and
//! integer literals, `~`, `or`, and the `join` and `tojson` filters. Such a template is
//! also compiled (from minijinja's own parse) to a small tree rendered straight from the
//! indexed body, with no minijinja values, state or filter calls per event.
//!
//! The tree renders only what it is sure of, the way minijinja would. For anything
//! else, such as an undefined value, a float, a map printed as text or a join over maps,
//! it answers "ask minijinja", and the caller renders the template with minijinja, so
//! the bytes and errors are minijinja's. A test checks both agree on generated
//! templates and bodies.

use std::borrow::Cow;

use minijinja::machinery::ast::{BinOpKind, CallArg, Expr, Stmt};
use minijinja::value::ValueKind;

use super::doc::Doc;

/// A compiled body template of the supported subset.
#[derive(Debug)]
pub(super) struct Fast {
    parts: Vec<Part>,
}

#[derive(Debug)]
enum Part {
    Raw(String),
    Emit(Node),
}

#[derive(Debug)]
enum Node {
    /// A top-level name (`id`, `type`, `timestamp`, `data`).
    Var(String),
    Attr(Box<Node>, String),
    Index(Box<Node>, usize),
    Str(String),
    Int(i64),
    EmptyList,
    Concat(Box<Node>, Box<Node>),
    Or(Box<Node>, Box<Node>),
    ToJson(Box<Node>),
    Join(Box<Node>, String),
}

/// A value during rendering, borrowed from the body or the template where it can be.
#[derive(Debug, Clone)]
enum V<'a> {
    Null,
    Bool(bool),
    Int(i64),
    Str(Cow<'a, str>),
    /// A map or list of the body (its entry in the index).
    Node(u32),
    EmptyList,
    /// A name or key the body does not have.
    Undefined,
}

impl Fast {
    /// The fast form of `source`, or `None` when it uses anything outside the subset.
    pub(super) fn compile(source: &str) -> Option<Fast> {
        let ast =
            minijinja::machinery::parse(source, "body", minijinja::syntax::SyntaxConfig::default()).ok()?;
        let Stmt::Template(t) = ast else { return None };
        let mut parts = Vec::new();
        for stmt in &t.children {
            parts.push(match stmt {
                Stmt::EmitRaw(r) => Part::Raw(r.raw.to_string()),
                Stmt::EmitExpr(e) => Part::Emit(node(&e.expr)?),
                _ => return None,
            });
        }
        Some(Fast { parts })
    }

    /// The body for the event `id` whose indexed standard body is `doc`, unless it
    /// would pass `cap` bytes (rendering stops there) or is left to minijinja.
    pub(super) fn render(&self, doc: &Doc, id: &str, cap: usize) -> Rendered {
        let mut out = String::with_capacity((doc.len() + 64).min(cap));
        let cx = Cx { doc, id, cap };
        for part in &self.parts {
            let piece = match part {
                Part::Raw(s) => Cow::Borrowed(s.as_str()),
                Part::Emit(n) => match eval(n, &cx).map(text) {
                    Ok(Some(t)) => t,
                    Ok(None) | Err(Stop::AskMinijinja) => return Rendered::AskMinijinja,
                    Err(Stop::TooLong) => return Rendered::TooLong,
                },
            };
            if out.len() + piece.len() > cap {
                return Rendered::TooLong;
            }
            out.push_str(&piece);
        }
        Rendered::Body(out)
    }
}

/// What the fast path made of a body.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Rendered {
    Body(String),
    /// The body would pass its limit.
    TooLong,
    /// Something outside what the fast path is sure of: minijinja renders it.
    AskMinijinja,
}

/// Why evaluation stopped.
#[derive(Debug)]
enum Stop {
    AskMinijinja,
    /// A value grew past the body's limit.
    TooLong,
}

/// What evaluation reads: the body, the webhook id and the body's limit.
struct Cx<'a> {
    doc: &'a Doc,
    id: &'a str,
    cap: usize,
}

fn node(e: &Expr<'_>) -> Option<Node> {
    Some(match e {
        Expr::Var(v) => Node::Var(v.id.to_string()),
        Expr::GetAttr(a) => Node::Attr(Box::new(node(&a.expr)?), a.name.to_string()),
        Expr::GetItem(g) => {
            let base = Box::new(node(&g.expr)?);
            match node(&g.subscript_expr)? {
                Node::Str(k) => Node::Attr(base, k),
                Node::Int(i) => Node::Index(base, usize::try_from(i).ok()?),
                _ => return None,
            }
        }
        Expr::Const(c) => match c.value.kind() {
            ValueKind::String => Node::Str(c.value.as_str()?.to_string()),
            ValueKind::Number => {
                let i = c.value.as_i64()?;
                (c.value.to_string() == i.to_string()).then_some(Node::Int(i))?
            }
            ValueKind::Seq if c.value.len() == Some(0) => Node::EmptyList,
            _ => return None,
        },
        Expr::List(l) if l.items.is_empty() => Node::EmptyList,
        Expr::BinOp(b) => {
            let (l, r) = (Box::new(node(&b.left)?), Box::new(node(&b.right)?));
            match b.op {
                BinOpKind::Concat => Node::Concat(l, r),
                BinOpKind::ScOr => Node::Or(l, r),
                _ => return None,
            }
        }
        Expr::Filter(f) => {
            let arg = Box::new(node(f.expr.as_ref()?)?);
            match (f.name, f.args.as_slice()) {
                ("tojson", []) => Node::ToJson(arg),
                ("join", []) => Node::Join(arg, String::new()),
                ("join", [CallArg::Pos(sep)]) => match node(sep)? {
                    Node::Str(s) => Node::Join(arg, s),
                    _ => return None,
                },
                _ => return None,
            }
        }
        _ => return None,
    })
}

/// `Some` or "ask minijinja".
fn sure<T>(v: Option<T>) -> Result<T, Stop> {
    v.ok_or(Stop::AskMinijinja)
}

/// A string built during evaluation, or `TooLong` once it passes the body's limit (the
/// body holds at least all of it).
fn within(s: String, cx: &Cx<'_>) -> Result<String, Stop> {
    if s.len() > cx.cap {
        Err(Stop::TooLong)
    } else {
        Ok(s)
    }
}

fn eval<'a>(n: &'a Node, cx: &Cx<'a>) -> Result<V<'a>, Stop> {
    let doc = cx.doc;
    Ok(match n {
        Node::Var(name) if name == "id" => V::Str(Cow::Borrowed(cx.id)),
        // A name the body lacks may be one of minijinja's globals (`range`, `dict`):
        // minijinja's to resolve.
        Node::Var(name) => sure(value(doc, sure(doc.child(0, name))?))?,
        Node::Attr(base, key) => match eval(base, cx)? {
            V::Node(at) if doc.is_map(at) => sure(lookup(doc, at, key))?,
            _ => return Err(Stop::AskMinijinja),
        },
        Node::Index(base, i) => match eval(base, cx)? {
            V::Node(at) if !doc.is_map(at) => match doc.nth(at, *i) {
                Some(item) => sure(value(doc, item))?,
                None => V::Undefined,
            },
            _ => return Err(Stop::AskMinijinja),
        },
        Node::Str(s) => V::Str(Cow::Borrowed(s)),
        Node::Int(i) => V::Int(*i),
        Node::EmptyList => V::EmptyList,
        Node::Concat(a, b) => {
            let a = sure(text(eval(a, cx)?))?;
            let b = sure(text(eval(b, cx)?))?;
            if a.len().saturating_add(b.len()) > cx.cap {
                return Err(Stop::TooLong);
            }
            let mut s = a.into_owned();
            s.push_str(&b);
            V::Str(Cow::Owned(s))
        }
        Node::Or(a, b) => {
            let a = eval(a, cx)?;
            let truthy = match &a {
                V::Null => false,
                V::Bool(b) => *b,
                V::Int(i) => *i != 0,
                V::Str(s) => !s.is_empty(),
                V::Node(at) => doc.len_of(*at) > 0,
                V::EmptyList | V::Undefined => false,
            };
            if truthy {
                a
            } else {
                eval(b, cx)?
            }
        }
        Node::ToJson(x) => V::Str(Cow::Owned(within(
            match eval(x, cx)? {
                V::Null => "null".to_string(),
                V::Bool(b) => b.to_string(),
                V::Int(i) => i.to_string(),
                V::Str(s) => json_string(&s),
                // As the `tojson` filter does: a map or list of the body as stored.
                V::Node(at) => doc.raw_of(at).to_string(),
                V::EmptyList => "[]".to_string(),
                V::Undefined => return Err(Stop::AskMinijinja),
            },
            cx,
        )?)),
        Node::Join(x, sep) => {
            let mut out = String::new();
            match eval(x, cx)? {
                V::EmptyList => {}
                V::Node(at) if !doc.is_map(at) => {
                    for (k, item) in doc.children(at).enumerate() {
                        if k > 0 {
                            out.push_str(sep);
                        }
                        out.push_str(&sure(text(sure(value(doc, item))?))?);
                        if out.len() > cx.cap {
                            return Err(Stop::TooLong);
                        }
                    }
                }
                _ => return Err(Stop::AskMinijinja),
            }
            V::Str(Cow::Owned(out))
        }
    })
}

/// The entry `key` of the map at `at`, or Undefined.
fn lookup<'a>(doc: &'a Doc, at: u32, key: &str) -> Option<V<'a>> {
    match doc.child(at, key) {
        Some(c) => value(doc, c),
        None => Some(V::Undefined),
    }
}

/// The value of entry `at`: scalars decoded, maps and lists as nodes; `None` for
/// numbers other than integers that fit 64 bits (minijinja's handling of them is left
/// to minijinja).
fn value(doc: &Doc, at: u32) -> Option<V<'_>> {
    let raw = doc.raw_of(at);
    Some(match raw.as_bytes().first()? {
        b'{' | b'[' if doc.is_opaque(at) => V::Str(Cow::Borrowed(raw)),
        b'{' | b'[' => V::Node(at),
        b'"' => {
            let inner = raw.get(1..raw.len() - 1)?;
            if inner.contains('\\') {
                V::Str(Cow::Owned(serde_json::from_str::<String>(raw).ok()?))
            } else {
                V::Str(Cow::Borrowed(inner))
            }
        }
        b't' if raw == "true" => V::Bool(true),
        b'f' if raw == "false" => V::Bool(false),
        b'n' if raw == "null" => V::Null,
        _ => V::Int(raw.parse::<i64>().ok()?),
    })
}

/// A string or integer as `~` and `{{ }}` write it; other values (whose text minijinja
/// spells its own way) are left to minijinja.
fn text(v: V<'_>) -> Option<Cow<'_, str>> {
    Some(match v {
        V::Str(s) => s,
        V::Int(i) => Cow::Owned(i.to_string()),
        _ => return None,
    })
}

/// A JSON string the way minijinja's `tojson` writes one: safe for HTML too, so `<`,
/// `>`, `&` and `'` are escaped as well.
fn json_string(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if (c as u32) < 0x20 || matches!(c, '<' | '>' | '&' | '\'') => {
                let b = c as u8;
                out.push_str("\\u00");
                out.push(HEX[(b >> 4) as usize] as char);
                out.push(HEX[(b & 0xf) as usize] as char);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

#[cfg(test)]
mod tests;
