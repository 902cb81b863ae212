//! Documents, the pure part: which documents a change makes due (`Mapper::dues`), their
//! windows per key on commit time (`Windows`), and the event a made document becomes
//! (`render`). Making one (running its query) is `crate::documents`' I/O.
//!
//! Windows follow the rules of coalescing (`coalesce`), so a replay after a crash forms
//! the same windows and positions: time is the stream's commit time; a change joins its
//! key's open window when it commits at most `window` after the window's last change (and
//! at most `max_wait` after its first); a window closes at the first transaction committed
//! past its deadline, or early when its document has `max_open` windows open. A closed
//! window's event takes the position `(lsn, CLOSED | k)` of the transaction that closed
//! it, numbered after that transaction's coalesced events.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use super::render::{value_at, Num};
use super::{fnv1a, fnv1a64, Change, Mapper};
use crate::config::{Config, Numbers, Op, TableName};
use crate::event::{format_lsn, Event, EventRef, Pos};

use super::coalesce::CLOSED;

/// Transaction ids a window keeps to check its document's read sees them (the latest).
const WINDOW_XIDS: usize = 16;

/// One `[[documents]]` entry, compiled.
#[derive(Debug)]
pub struct DocSpec {
    pub name: String,
    /// The document key's name in `data.key`.
    pub key: String,
    pub query: String,
    /// The subscribers it goes to, by how they want numbers (as rules route).
    pub routes: Vec<(Numbers, Arc<[usize]>)>,
    window: i64,
    max_wait: i64,
    max_open: usize,
    tag: u32,
}

/// Documents and the source tables that make them due.
#[derive(Debug, Default)]
pub struct Documents {
    pub specs: Vec<DocSpec>,
    /// Per source table: the documents it feeds and the column holding their key.
    by_table: HashMap<TableName, Vec<(usize, String)>>,
}

impl Documents {
    pub fn new(config: &Config) -> Documents {
        let mut out = Documents::default();
        for (i, d) in config.documents.iter().enumerate() {
            let wanting: Vec<usize> = (config.subscribers.iter().enumerate())
                .filter(|(_, s)| s.events.iter().any(|p| super::pattern::matches(p, &d.name)))
                .map(|(j, _)| j)
                .collect();
            let mut routes = Vec::new();
            for numbers in [Numbers::Exact, Numbers::String] {
                let group: Arc<[usize]> = (wanting.iter().copied())
                    .filter(|&j| config.subscribers[j].numbers == numbers)
                    .collect();
                if !group.is_empty() {
                    routes.push((numbers, group));
                }
            }
            out.specs.push(DocSpec {
                name: d.name.clone(),
                key: d.key.clone(),
                query: d.query.clone(),
                routes,
                window: super::micros(d.window),
                max_wait: super::micros(d.max_wait),
                max_open: d.max_open,
                tag: fnv1a(format!("document\u{0}{}", d.name).as_bytes()),
            });
            for s in &d.sources {
                if let Ok(t) = TableName::parse(&s.table) {
                    out.by_table.entry(t).or_default().push((i, s.key.clone()));
                }
            }
        }
        out
    }

    pub fn feeds(&self, table: &TableName) -> bool {
        self.by_table.contains_key(table)
    }
}

/// What one change makes due.
#[derive(Debug, Default, PartialEq)]
pub struct Dues {
    /// Documents and keys (a change that moved a row to another key makes both due).
    pub keys: Vec<(usize, Value)>,
    /// Documents whose key this change does not carry (a delete whose old row lacks the
    /// key column, a truncate), with that column.
    pub unknown: Vec<(usize, String)>,
}

impl Mapper {
    pub fn documents(&self) -> &[DocSpec] {
        &self.documents.specs
    }

    /// The documents `change` makes due, with their keys. A null key makes none.
    pub fn dues(&self, change: &Change<'_>) -> Dues {
        let mut out = Dues::default();
        let Some(feeds) = self.documents.by_table.get(change.table) else {
            return out;
        };
        for (doc, col) in feeds {
            if change.op == Op::Truncate {
                out.unknown.push((*doc, col.clone()));
                continue;
            }
            let new = value_at(change.new.as_ref(), usize::MAX, col);
            let old = value_at(change.old.as_ref(), usize::MAX, col);
            let mut found = false;
            for v in [new, old].into_iter().flatten() {
                found = true;
                if !v.is_null() && !out.keys.iter().any(|(d, k)| d == doc && k == v) {
                    out.keys.push((*doc, v.clone()));
                }
            }
            if !found {
                out.unknown.push((*doc, col.clone()));
            }
        }
        out
    }
}

/// One open window: a document of one key made due by changes committed close together.
#[derive(Debug)]
struct Window {
    doc: usize,
    key: Value,
    key_text: String,
    first: Pos,
    last_lsn: u64,
    /// Tables and operations that made it due, in first-seen order.
    sources: Vec<(String, &'static str)>,
    xids: Vec<u32>,
    count: u64,
    first_time: i64,
    deadline: i64,
    /// The last change's commit time (RFC 3339).
    commit_time: String,
}

/// A closed window: the document to make, at its position.
#[derive(Debug, Clone, PartialEq)]
pub struct Closed {
    pub doc: usize,
    pub pos: Pos,
    pub key: Value,
    /// The position of its first change.
    pub first: Pos,
    pub last_lsn: u64,
    pub sources: Vec<(String, &'static str)>,
    /// Transactions of its changes (the latest ones): its read must see them.
    pub xids: Vec<u32>,
    pub count: u64,
    pub commit_time: String,
}

/// A change that makes a document due.
pub struct Touch<'a> {
    pub doc: usize,
    pub key: Value,
    pub table: &'a TableName,
    pub op: Op,
    pub pos: Pos,
    /// Commit time, PostgreSQL microseconds and RFC 3339.
    pub time: i64,
    pub commit_time: &'a str,
    pub xid: u32,
}

/// The open windows of every document (see the module doc).
#[derive(Debug, Default)]
pub struct Windows {
    open: BTreeMap<u64, Window>,
    by_key: HashMap<(usize, String), u64>,
    per_doc: HashMap<usize, BTreeMap<u64, ()>>,
    deadlines: BTreeMap<(i64, u64), ()>,
    next_id: u64,
    closing: Vec<Window>,
    /// Windows closed early (`max_open`) since the caller last took the count.
    pub closed_early: u64,
}

impl Windows {
    /// A transaction committed at `now` is next: every window whose deadline is before it
    /// closes.
    pub fn advance(&mut self, now: i64) {
        while let Some((&(deadline, id), _)) = self.deadlines.first_key_value() {
            if deadline >= now {
                break;
            }
            self.close(id);
        }
    }

    /// Takes one change that makes document `t.doc` of `t.key` due.
    pub fn add(&mut self, spec: &DocSpec, t: Touch<'_>) {
        let key_text = t.key.to_string();
        let wk = (t.doc, key_text);
        let source = (t.table.to_string(), t.op.as_str());
        if let Some(&id) = self.by_key.get(&wk) {
            if self.open.get(&id).is_some_and(|w| t.time <= w.deadline) {
                let w = self.open.get_mut(&id).expect("window is open");
                let old = w.deadline;
                w.count += 1;
                w.deadline =
                    (t.time.saturating_add(spec.window)).min(w.first_time.saturating_add(spec.max_wait));
                w.last_lsn = t.pos.lsn;
                w.commit_time = t.commit_time.to_string();
                if !w.sources.contains(&source) {
                    w.sources.push(source);
                }
                if w.xids.last() != Some(&t.xid) {
                    w.xids.retain(|x| *x != t.xid);
                    if w.xids.len() == WINDOW_XIDS {
                        w.xids.remove(0);
                    }
                    w.xids.push(t.xid);
                }
                let new = w.deadline;
                self.deadlines.remove(&(old, id));
                self.deadlines.insert((new, id), ());
                return;
            }
            self.close(id);
        }
        let oldest = (self.per_doc.get(&t.doc))
            .filter(|m| m.len() >= spec.max_open)
            .and_then(|m| m.first_key_value().map(|(id, _)| *id));
        if let Some(oldest) = oldest {
            self.closed_early += 1;
            self.close(oldest);
        }
        let id = self.next_id;
        self.next_id += 1;
        let w = Window {
            doc: t.doc,
            key: t.key,
            key_text: wk.1.clone(),
            first: t.pos,
            last_lsn: t.pos.lsn,
            sources: vec![source],
            xids: vec![t.xid],
            count: 1,
            first_time: t.time,
            deadline: t.time.saturating_add(spec.window.min(spec.max_wait)),
            commit_time: t.commit_time.to_string(),
        };
        self.deadlines.insert((w.deadline, id), ());
        self.per_doc.entry(t.doc).or_default().insert(id, ());
        self.by_key.insert(wk, id);
        self.open.insert(id, w);
    }

    fn close(&mut self, id: u64) {
        let Some(w) = self.open.remove(&id) else {
            return;
        };
        self.deadlines.remove(&(w.deadline, id));
        if let Some(m) = self.per_doc.get_mut(&w.doc) {
            m.remove(&id);
        }
        let wk = (w.doc, w.key_text.clone());
        if self.by_key.get(&wk) == Some(&id) {
            self.by_key.remove(&wk);
        }
        self.closing.push(w);
    }

    /// Closes every open window (a reload, a stop).
    pub fn close_all(&mut self) {
        self.advance(i64::MAX);
    }

    /// The windows closed since the last call, at positions `(lsn, CLOSED | k)` from
    /// `k = first_k` on, in the order of their first change (then document and key).
    pub fn take_closed(&mut self, lsn: u64, first_k: u64) -> Vec<Closed> {
        let mut closing = std::mem::take(&mut self.closing);
        closing.sort_by(|a, b| (a.first, a.doc, &a.key_text).cmp(&(b.first, b.doc, &b.key_text)));
        (closing.into_iter().enumerate())
            .map(|(k, w)| Closed {
                doc: w.doc,
                pos: Pos {
                    lsn,
                    seq: CLOSED | (first_k + k as u64),
                },
                key: w.key,
                first: w.first,
                last_lsn: w.last_lsn,
                sources: w.sources,
                xids: w.xids,
                count: w.count,
                commit_time: w.commit_time,
            })
            .collect()
    }

    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    /// The lowest commit LSN of a change in a window not yet taken: nothing at or after
    /// it may be confirmed.
    pub fn low(&self) -> Option<u64> {
        let open = self.open.values().next().map(|w| w.first.lsn);
        let closing = self.closing.iter().map(|w| w.first.lsn).min();
        match (open, closing) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

/// One column of a made document: its value as every other value is typed, and whether
/// its numbers are written as strings for `numbers = "string"` (int8 and numeric: all;
/// json and jsonb: those a double does not hold).
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub value: Value,
    pub exact: bool,
    pub json: bool,
}

struct DocJson<'a> {
    cols: &'a [Column],
    strings: bool,
}

impl Serialize for DocJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.cols.len()))?;
        for c in self.cols {
            let num = match c.json {
                true => Num::json(&c.value, self.strings),
                false => Num::of(&c.value, self.strings && c.exact),
            };
            map.serialize_entry(&c.name, &num)?;
        }
        map.end()
    }
}

#[derive(serde::Serialize)]
struct SourceJson<'a> {
    table: &'a str,
    op: &'a str,
}

#[derive(serde::Serialize)]
struct Data<'a> {
    key: BTreeMap<&'a str, Num<'a>>,
    op: &'a str,
    document: Option<DocJson<'a>>,
    sources: Vec<SourceJson<'a>>,
    coalesced: u64,
    source: Position<'a>,
}

#[derive(serde::Serialize)]
struct Position<'a> {
    lsn: &'a str,
    commit_time: &'a str,
}

#[derive(serde::Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: &'a str,
    data: Data<'a>,
}

/// The events of a made document (`row`: its columns, None when the query found no row),
/// once per way its subscribers want numbers written, with their routes. Ids derive from
/// the window's first change, document and key; the body from the row: a replay of the
/// same window with the same row renders the same bytes.
pub fn render(spec: &DocSpec, c: &Closed, row: Option<&[Column]>) -> Vec<(EventRef, Arc<[usize]>)> {
    let key_exact = serde_json::to_string(&BTreeMap::from([(spec.key.as_str(), &c.key)])).unwrap_or_default();
    let hash = fnv1a64(format!("{}\u{0}{}\u{0}{key_exact}", c.first.lsn, c.first.seq).as_bytes());
    let id = format!("evt_d{hash:016x}_{:08x}", spec.tag);
    let ordering = format!("{}|{key_exact}", spec.name);
    let lsn = format_lsn(c.last_lsn);
    let mut out = Vec::with_capacity(spec.routes.len());
    for (numbers, routes) in &spec.routes {
        let strings = *numbers == Numbers::String;
        let body = Body {
            kind: &spec.name,
            timestamp: &c.commit_time,
            data: Data {
                key: BTreeMap::from([(spec.key.as_str(), Num::of(&c.key, strings))]),
                op: if row.is_some() { "update" } else { "delete" },
                document: row.map(|cols| DocJson { cols, strings }),
                sources: (c.sources.iter())
                    .map(|(table, op)| SourceJson { table, op })
                    .collect(),
                coalesced: c.count,
                source: Position {
                    lsn: &lsn,
                    commit_time: &c.commit_time,
                },
            },
        };
        let bytes = serde_json::to_vec(&body).unwrap_or_default();
        let event = Event {
            pos: c.pos,
            id: id.clone(),
            event_type: spec.name.clone(),
            key: ordering.clone(),
            prev_key: None,
            body: bytes.into(),
        };
        out.push((Arc::new(event), routes.clone()));
    }
    out
}

#[cfg(test)]
mod tests;
