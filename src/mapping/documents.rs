//! Documents, the pure part: which documents a change makes due (`Mapper::dues`), their
//! windows per key on commit time (`Windows`), and the event a made document becomes
//! (`render`). Making one (running its query) is `crate::documents`' I/O.
//!
//! Windows follow the rules of coalescing (`coalesce`), so a replay after a crash forms
//! the same windows and positions: time is the stream's commit time; a change joins its
//! key's open window when it commits at most `window` after the window's last change (and
//! at most `max_wait` after its first); a window closes at the first transaction committed
//! past its deadline, or early when its document has `max_open` windows open. A closed
//! window's event takes the position `(lsn, CLOSED | DOCUMENT | k)` of the transaction
//! that closed it: after that transaction's coalesced events, and numbered among
//! documents only, so its position does not depend on the rules (a reload or restart
//! with other coalescing rules must not move a pending document below a lane's mark).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::Value;

use super::render::{value_at, Body, Num};
use super::{fnv1a, fnv1a64, Change, Mapper};
use crate::config::{Config, Numbers, Op, TableName, MAX_SOURCES};
use crate::event::{format_lsn, Event, EventRef, Pos};

use super::coalesce::CLOSED;

/// Set, with `CLOSED`, in the sequence of a document's position.
pub const DOCUMENT: u64 = 1 << 60;

/// Transaction ids a window keeps to check its document's read sees them (the latest).
const WINDOW_XIDS: usize = 16;

/// One `[[documents]]` entry, compiled.
#[derive(Debug)]
pub struct DocSpec {
    pub name: String,
    /// The document key's name in `data.key`.
    pub key: String,
    pub query: String,
    /// Its source tables, as written in `data.sources`.
    sources: Vec<String>,
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
    /// Per source table: the documents it feeds, the column holding their key, and its
    /// place among the document's sources.
    by_table: HashMap<TableName, Vec<(usize, String, u8)>>,
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
                sources: (d.sources.iter())
                    .map(|s| TableName::parse(&s.table).map_or_else(|_| s.table.clone(), |t| t.to_string()))
                    .collect(),
                routes,
                window: super::micros(d.window),
                max_wait: super::micros(d.max_wait),
                max_open: d.max_open,
                tag: fnv1a(format!("document\u{0}{}", d.name).as_bytes()),
            });
            for (j, s) in d.sources.iter().enumerate().take(MAX_SOURCES) {
                if let Ok(t) = TableName::parse(&s.table) {
                    out.by_table
                        .entry(t)
                        .or_default()
                        .push((i, s.key.clone(), j as u8));
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
    /// Documents, keys and the source's place among the document's sources (a change
    /// that moved a row to another key makes both keys due).
    pub keys: Vec<(usize, Value, u8)>,
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
        for (doc, col, source) in feeds {
            if change.op == Op::Truncate {
                out.unknown.push((*doc, col.clone()));
                continue;
            }
            let new = value_at(change.new.as_ref(), usize::MAX, col);
            let old = value_at(change.old.as_ref(), usize::MAX, col);
            let mut found = false;
            for v in [new, old].into_iter().flatten() {
                found = true;
                if !v.is_null() && !out.keys.iter().any(|(d, k, _)| d == doc && k == v) {
                    out.keys.push((*doc, v.clone(), *source));
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
/// Kept small: a bulk import closes (early) tens of thousands that wait for its commit.
#[derive(Debug)]
struct Window {
    doc: usize,
    key: Value,
    first: Pos,
    last_lsn: u64,
    /// Sources and operations that made it due (`source_bit`).
    sources: u64,
    xids: Vec<u32>,
    count: u64,
    first_time: i64,
    deadline: i64,
    /// The last change's commit time (PostgreSQL microseconds).
    last_time: i64,
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
    /// Sources and operations that made it due (`source_bit`).
    pub sources: u64,
    /// Transactions of its changes (the latest ones): its read must see them.
    pub xids: Vec<u32>,
    pub count: u64,
    /// The last change's commit time (PostgreSQL microseconds); for a read, when it is
    /// read.
    pub last_time: i64,
    /// Set for a document a backfill sends (`op = "read"`): the backfill's id.
    pub read: Option<i64>,
}

impl Closed {
    /// A document backfill `backfill` sends for `key`, at `pos` (its chunk's high
    /// watermark), read at `now` (PostgreSQL microseconds).
    pub fn read(doc: usize, key: Value, pos: Pos, backfill: i64, now: i64) -> Closed {
        Closed {
            doc,
            pos,
            key,
            first: pos,
            last_lsn: pos.lsn,
            sources: 0,
            xids: Vec::new(),
            count: 0,
            last_time: now,
            read: Some(backfill),
        }
    }
}

/// The operations that make a document due, in the order `data.sources` lists them.
const OPS: [Op; 3] = [Op::Insert, Op::Update, Op::Delete];

/// The bit of `source` (its place among the document's sources) and `op`.
fn source_bit(source: u8, op: Op) -> u64 {
    let op = OPS.iter().position(|o| *o == op).unwrap_or(1) as u64;
    1 << ((u64::from(source) % MAX_SOURCES as u64) * 4 + op)
}

/// A change that makes a document due.
pub struct Touch {
    pub doc: usize,
    pub key: Value,
    /// Its table's place among the document's sources.
    pub source: u8,
    pub op: Op,
    pub pos: Pos,
    /// Commit time, PostgreSQL microseconds.
    pub time: i64,
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
    pub fn add(&mut self, spec: &DocSpec, t: Touch) {
        let wk = (t.doc, t.key.to_string());
        let bit = source_bit(t.source, t.op);
        if let Some(&id) = self.by_key.get(&wk) {
            if self.open.get(&id).is_some_and(|w| t.time <= w.deadline) {
                let w = self.open.get_mut(&id).expect("window is open");
                let old = w.deadline;
                w.count += 1;
                w.deadline =
                    (t.time.saturating_add(spec.window)).min(w.first_time.saturating_add(spec.max_wait));
                w.last_lsn = t.pos.lsn;
                w.last_time = t.time;
                w.sources |= bit;
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
            first: t.pos,
            last_lsn: t.pos.lsn,
            sources: bit,
            xids: vec![t.xid],
            count: 1,
            first_time: t.time,
            deadline: t.time.saturating_add(spec.window.min(spec.max_wait)),
            last_time: t.time,
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
        let wk = (w.doc, w.key.to_string());
        if self.by_key.get(&wk) == Some(&id) {
            self.by_key.remove(&wk);
        }
        self.closing.push(w);
    }

    /// Closes every open window (a reload, a stop).
    pub fn close_all(&mut self) {
        self.advance(i64::MAX);
    }

    /// The windows closed since the last call, at positions `(lsn, CLOSED | DOCUMENT | k)`,
    /// in the order of their first change (then document and key).
    pub fn take_closed(&mut self, lsn: u64) -> Vec<Closed> {
        let mut closing = std::mem::take(&mut self.closing);
        // A change makes at most one window of a document and key due, so first change,
        // document and key order them (the key by its text only when the rest is equal).
        closing.sort_by(|a, b| {
            (a.first, a.doc)
                .cmp(&(b.first, b.doc))
                .then_with(|| a.key.to_string().cmp(&b.key.to_string()))
        });
        (closing.into_iter().enumerate())
            .map(|(k, w)| Closed {
                doc: w.doc,
                pos: Pos {
                    lsn,
                    seq: CLOSED | DOCUMENT | k as u64,
                },
                key: w.key,
                first: w.first,
                last_lsn: w.last_lsn,
                sources: w.sources,
                xids: w.xids,
                count: w.count,
                last_time: w.last_time,
                read: None,
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
    sources: &'a [SourceJson<'a>],
    coalesced: u64,
    source: Position<'a>,
}

#[derive(serde::Serialize)]
struct Position<'a> {
    lsn: &'a str,
    commit_time: &'a str,
}

/// The events of a made document (`row`: its columns, None when the query found no row),
/// once per way its subscribers want numbers written, with their routes. Ids derive from
/// the window's first change, document and key; the body from the row: a replay of the
/// same window with the same row renders the same bytes. A read (`Closed::read`) is
/// `op = "read"`, its id derives from the backfill, the key and the document (a document
/// sent again after a resume keeps its id when it did not change); a read of a key with no
/// document makes nothing.
pub fn render(spec: &DocSpec, c: &Closed, row: Option<&[Column]>) -> Vec<(EventRef, Arc<[usize]>)> {
    let key_exact = serde_json::to_string(&BTreeMap::from([(spec.key.as_str(), &c.key)])).unwrap_or_default();
    let (id, op) = match (c.read, row) {
        (Some(_), None) => return Vec::new(),
        (Some(backfill), Some(cols)) => {
            let doc = serde_json::to_string(&DocJson { cols, strings: false }).unwrap_or_default();
            let hash = fnv1a64(format!("{backfill}\u{0}{key_exact}\u{0}{doc}").as_bytes());
            (format!("evt_r{hash:016x}_{:08x}", spec.tag), "read")
        }
        (None, _) => {
            let hash = fnv1a64(format!("{}\u{0}{}\u{0}{key_exact}", c.first.lsn, c.first.seq).as_bytes());
            let op = if row.is_some() { "update" } else { "delete" };
            (format!("evt_d{hash:016x}_{:08x}", spec.tag), op)
        }
    };
    let ordering = format!("{}|{key_exact}", spec.name);
    let lsn = format_lsn(c.last_lsn);
    let commit_time = crate::decode::time::pg_micros_to_rfc3339(c.last_time);
    let sources: Vec<SourceJson<'_>> = (spec.sources.iter().enumerate())
        .flat_map(|(j, table)| {
            (OPS.iter())
                .filter(move |op| c.sources & source_bit(j as u8, **op) != 0)
                .map(move |op| SourceJson {
                    table,
                    op: op.as_str(),
                })
        })
        .collect();
    let mut out = Vec::with_capacity(spec.routes.len());
    for (numbers, routes) in &spec.routes {
        let strings = *numbers == Numbers::String;
        let body = Body {
            kind: &spec.name,
            timestamp: &commit_time,
            data: Data {
                key: BTreeMap::from([(spec.key.as_str(), Num::of(&c.key, strings))]),
                op,
                document: row.map(|cols| DocJson { cols, strings }),
                sources: &sources,
                coalesced: c.count,
                source: Position {
                    lsn: &lsn,
                    commit_time: &commit_time,
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
