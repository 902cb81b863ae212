//! Coalescing: the events of one coalescing rule and key that come within a window become
//! one event, carrying the first `old`, the last `new`, the union of `changed` and
//! `data.coalesced` (how many changes it stands for).
//!
//! Everything here is a function of the replication stream alone, so a replay after a
//! crash forms the same windows and renders the same ids, bodies and positions:
//! - time is the stream's: the commit time of each transaction, never this host's clock.
//!   While windows are open and no transaction comes, walhook commits tiny transactions
//!   holding one `walhook.tick` logical message (`pipeline::ticker`), so time moves on;
//! - a change joins its key's open window when its commit time is at most the window's
//!   deadline (`window` after the last change, and never more than `max_wait` after the
//!   first); a window closes at the first transaction whose commit time is past its
//!   deadline (decided on that transaction's time alone, not on anything before it), or
//!   early when its rule has `max_open` windows open and a new one opens (the oldest
//!   closes);
//! - a closed window's event takes the id of its first change and the position
//!   `(lsn, CLOSED | k)` of the transaction that closed it (its commit LSN), `k` counting
//!   the windows closed there in the order of their first change. That position is after
//!   every event of that transaction and before every event of a later one.
//!
//! The pipeline keeps the confirmed LSN at or below the first change of every open window
//! (`low`), and of every window closed with one whose event a lane still holds, so a
//! crash replays whole windows and the same group of windows closes at the same place.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::config::Numbers;
use crate::event::{Event, EventRef, Pos};

/// Levels of a body parsed into a tree; deeper maps and lists are kept as their text.
const BODY_DEPTH: usize = 64;

/// Positions of coalesced events have this bit set in `seq`: they sort after every event
/// of the transaction (or tick) that closed them.
pub const CLOSED: u64 = 1 << 62;

/// One rule's coalescing settings, in stream microseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spec {
    /// The rule's place in the config (`events[N]`).
    pub rule: usize,
    pub window: i64,
    pub max_wait: i64,
    pub max_open: usize,
}

/// Which window a change belongs to: rule, ordering key, and how its subscribers want
/// numbers written (the bodies differ there).
type WindowKey = (usize, String, Numbers);

struct Window {
    /// Position of the first change: the window's place in creation order, and where
    /// the confirmed LSN must stay.
    first_pos: Pos,
    /// The first change's event: its id and ordering key are the coalesced event's.
    first: EventRef,
    numbers: Numbers,
    /// Routes of the first and the last change (they differ when their operations have
    /// different event names): the coalesced event goes where its name is wanted.
    first_routes: Arc<[usize]>,
    last_routes: Arc<[usize]>,
    /// The first change's `data.op` and `data.old` (absent when the rule leaves it out).
    first_op: String,
    first_old: Option<Value>,
    last_body: Value,
    last_type: String,
    /// Every `new` image merged in order (a later image's columns win; a column a later
    /// image left out, an unchanged TOASTed value, keeps its earlier value).
    new: Option<Map<String, Value>>,
    /// Union of `changed`, in first-seen order; `None` once some update did not know.
    changed: Option<Vec<String>>,
    count: u64,
    first_time: i64,
    deadline: i64,
    spec: Spec,
}

/// What the pipeline hands to the lanes for a closed window.
#[derive(Debug)]
pub struct Closed {
    pub event: EventRef,
    pub routes: Arc<[usize]>,
    /// The commit LSN of the window's first and last change.
    pub first_lsn: u64,
    pub last_lsn: u64,
    /// How many changes it stands for.
    pub count: u64,
}

#[derive(Default)]
pub struct Coalescer {
    /// Open windows by creation order (which is first-change order).
    open: BTreeMap<u64, Window>,
    by_key: HashMap<WindowKey, u64>,
    /// Per rule and number format: its open windows, oldest first.
    per_rule: HashMap<(usize, Numbers), BTreeMap<u64, ()>>,
    /// Open windows by deadline.
    deadlines: BTreeMap<(i64, u64), ()>,
    next_id: u64,
    /// Closed, waiting for a position.
    closing: Vec<Window>,
    /// Windows closed early because their rule had `max_open` open, since the caller
    /// last took the count.
    pub closed_early: u64,
}

impl Coalescer {
    /// A transaction committed at `now` (PostgreSQL microseconds) is next: every window
    /// whose deadline is before it closes.
    pub fn advance(&mut self, now: i64) {
        while let Some((&(deadline, id), _)) = self.deadlines.first_key_value() {
            if deadline >= now {
                break;
            }
            self.close(id);
        }
    }

    /// Takes one change's event (of a coalescing rule) committed at `time`; `routes` are
    /// the subscribers its name goes to among those wanting `numbers`.
    pub fn add(&mut self, event: EventRef, routes: Arc<[usize]>, numbers: Numbers, spec: Spec, time: i64) {
        // A json value nested deeper than a tree holds stays as its text (bodies carry
        // such values verbatim); `BODY_DEPTH` is far below serde_json's limit of 128.
        let body: Value = std::str::from_utf8(&event.body)
            .ok()
            .and_then(|text| crate::decode::json::parse_bounded(text, BODY_DEPTH))
            .unwrap_or(Value::Null);
        let key: WindowKey = (spec.rule, event.key.clone(), numbers);
        // A change that moved its row to another key is never held: the windows of both
        // keys close, and it goes out right after them as a window of its own, in the same
        // group (ordered by first change), so it follows the old key's events and precedes
        // any later window of either key.
        let moved = event.prev_key.as_ref().filter(|p| **p != event.key).cloned();
        if let Some(prev) = &moved {
            for k in [prev.clone(), event.key.clone()] {
                if let Some(&id) = self.by_key.get(&(spec.rule, k, numbers)) {
                    self.close(id);
                }
            }
        }
        if let Some(&id) = self.by_key.get(&key) {
            let joins = self.open.get(&id).is_some_and(|w| time <= w.deadline);
            if joins {
                let w = self.open.get_mut(&id).expect("window is open");
                let old_deadline = w.deadline;
                w.merge(&event, &routes, body, time);
                let new_deadline = w.deadline;
                self.deadlines.remove(&(old_deadline, id));
                self.deadlines.insert((new_deadline, id), ());
                return;
            }
            self.close(id);
        }
        let group = (spec.rule, numbers);
        let oldest = self
            .per_rule
            .get(&group)
            .filter(|m| m.len() >= spec.max_open)
            .and_then(|m| m.first_key_value().map(|(id, _)| *id));
        if let Some(oldest) = oldest {
            self.closed_early += 1;
            self.close(oldest);
        }
        let id = self.next_id;
        self.next_id += 1;
        let mut w = Window {
            first_pos: event.pos,
            first: event.clone(),
            numbers,
            first_routes: routes.clone(),
            last_routes: routes.clone(),
            first_op: body["data"]["op"].as_str().unwrap_or_default().to_string(),
            first_old: body["data"].get("old").cloned(),
            last_body: Value::Null,
            last_type: String::new(),
            new: None,
            changed: Some(Vec::new()),
            count: 0,
            first_time: time,
            deadline: time,
            spec,
        };
        w.merge(&event, &routes, body, time);
        self.deadlines.insert((w.deadline, id), ());
        self.per_rule.entry(group).or_default().insert(id, ());
        self.by_key.insert(key, id);
        self.open.insert(id, w);
        if moved.is_some() {
            self.close(id);
        }
    }

    fn close(&mut self, id: u64) {
        let Some(w) = self.open.remove(&id) else {
            return;
        };
        self.deadlines.remove(&(w.deadline, id));
        if let Some(m) = self.per_rule.get_mut(&(w.spec.rule, w.numbers)) {
            m.remove(&id);
        }
        let key: WindowKey = (w.spec.rule, w.first.key.clone(), w.numbers);
        if self.by_key.get(&key) == Some(&id) {
            self.by_key.remove(&key);
        }
        self.closing.push(w);
    }

    /// The windows closed since the last call, as events at positions
    /// `(lsn, CLOSED | k)` from `k = first_k` on, in the order of their first change.
    pub fn take_closed(&mut self, lsn: u64, first_k: u64) -> Vec<Closed> {
        let mut closing = std::mem::take(&mut self.closing);
        closing.sort_by_key(|w| (w.first_pos, w.numbers == Numbers::String));
        closing
            .into_iter()
            .enumerate()
            .map(|(k, w)| {
                w.into_closed(Pos {
                    lsn,
                    seq: CLOSED | (first_k + k as u64),
                })
            })
            .collect()
    }

    /// Whether windows are open or wait for a position.
    pub fn is_idle(&self) -> bool {
        self.open.is_empty() && self.closing.is_empty()
    }

    pub fn open_windows(&self) -> usize {
        self.open.len()
    }

    /// The lowest commit LSN of a change in a window not yet handed over: nothing at or
    /// after it may be confirmed.
    pub fn low(&self) -> Option<u64> {
        let open = self.open.values().next().map(|w| w.first_pos.lsn);
        let closing = self.closing.iter().map(|w| w.first_pos.lsn).min();
        match (open, closing) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }
}

impl Window {
    fn merge(&mut self, event: &Event, routes: &Arc<[usize]>, body: Value, time: i64) {
        self.count += 1;
        self.deadline = time
            .saturating_add(self.spec.window)
            .min(self.first_time.saturating_add(self.spec.max_wait));
        self.last_routes = routes.clone();
        let data = &body["data"];
        if let Some(new) = data.get("new").and_then(Value::as_object) {
            let merged = self.new.get_or_insert_with(Map::new);
            for (k, v) in new {
                merged.insert(k.clone(), v.clone());
            }
        }
        match (
            &mut self.changed,
            data.get("op").and_then(Value::as_str),
            data.get("changed"),
        ) {
            (Some(all), Some("update"), Some(Value::Array(cols))) => {
                for c in cols.iter().filter_map(Value::as_str) {
                    if !all.iter().any(|a| a == c) {
                        all.push(c.to_string());
                    }
                }
            }
            (Some(_), Some("update"), _) => self.changed = None,
            _ => {}
        }
        self.last_type = event.event_type.clone();
        self.last_body = body;
    }

    /// The coalesced event: the last change's body with the first `old`, the merged
    /// `new`, the union of `changed`, and `coalesced`.
    fn into_closed(self, pos: Pos) -> Closed {
        let last_data = &self.last_body["data"];
        let last_op = last_data["op"].as_str().unwrap_or("");
        // An insert and the updates after it are an insert of the last row, named (and so
        // routed) as the insert; any other window is named as its last change.
        let (op, kind, routes) = if self.first_op == "insert" && last_op != "delete" {
            ("insert", self.first.event_type.clone(), self.first_routes.clone())
        } else {
            (last_op, self.last_type.clone(), self.last_routes.clone())
        };
        let mut data = Map::new();
        if let Some(src) = last_data.as_object() {
            for (k, v) in src {
                let v = match k.as_str() {
                    "op" => Value::from(op),
                    "new" if last_op == "delete" => Value::Null,
                    "new" => self.new.clone().map_or(Value::Null, Value::Object),
                    "old" => self.first_old.clone().unwrap_or(Value::Null),
                    "changed" => match (&self.changed, op) {
                        (Some(cols), "update") => Value::from(cols.clone()),
                        _ => Value::Null,
                    },
                    "unchanged" => {
                        // Still unknown: not in any `new` image of the window.
                        let missing: Vec<Value> = v
                            .as_array()
                            .into_iter()
                            .flatten()
                            .filter(|c| {
                                c.as_str()
                                    .is_some_and(|c| !self.new.as_ref().is_some_and(|n| n.contains_key(c)))
                            })
                            .cloned()
                            .collect();
                        if missing.is_empty() {
                            continue;
                        }
                        Value::Array(missing)
                    }
                    _ => v.clone(),
                };
                data.insert(k.clone(), v);
            }
            // A window whose first change carried `old` but whose last (an insert) did not.
            if let Some(old) = self.first_old.as_ref().filter(|_| !src.contains_key("old")) {
                data.insert("old".into(), old.clone());
            }
        }
        data.insert("coalesced".into(), Value::from(self.count));
        let mut body = Map::new();
        body.insert("type".into(), Value::from(kind.clone()));
        body.insert(
            "timestamp".into(),
            self.last_body.get("timestamp").cloned().unwrap_or(Value::Null),
        );
        body.insert("data".into(), Value::Object(data));
        let bytes = serde_json::to_vec(&Value::Object(body)).unwrap_or_default();
        let last_lsn = last_data["source"]["lsn"]
            .as_str()
            .and_then(crate::event::parse_lsn)
            .unwrap_or(self.first_pos.lsn);
        Closed {
            event: Arc::new(Event {
                pos,
                id: self.first.id.clone(),
                event_type: kind,
                key: self.first.key.clone(),
                prev_key: self.first.prev_key.clone(),
                body: bytes.into(),
            }),
            routes,
            first_lsn: self.first_pos.lsn,
            last_lsn,
            count: self.count,
        }
    }
}

#[cfg(test)]
mod tests;
