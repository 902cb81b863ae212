//! Mapping: pure and synchronous. Rules compiled at startup turn one decoded row change
//! into zero or more events, each with a stable id, an ordering key and a rendered body,
//! and route each to the lanes of the subscribers whose patterns match its name.
//!
//! Nothing here does I/O or reads a clock: the body is a function of the change and the
//! rule only (its `timestamp` is the commit time), so a replay renders identical bytes.

mod pattern;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::{Map, Value};

use crate::config::{Config, Op, TableName};
use crate::event::{format_lsn, Event, EventRef, Pos};

pub use pattern::matches as pattern_matches;

/// Commit-level facts shared by every change of a transaction.
#[derive(Debug, Clone)]
pub struct TxMeta {
    pub commit_lsn: u64,
    pub xid: u32,
    /// RFC 3339 commit time.
    pub commit_time: String,
}

/// One column of a row image.
#[derive(Debug, Clone, PartialEq)]
pub enum ColValue {
    Value(Value),
    /// An unchanged TOASTed value the server did not send.
    Unchanged,
}

/// A row image in table column order.
pub type Row = Vec<(Arc<str>, ColValue)>;

/// A decoded row change.
#[derive(Debug)]
pub struct Change<'a> {
    pub table: &'a TableName,
    pub op: Op,
    pub new: Option<Row>,
    pub old: Option<Row>,
    /// The old image holds only the replica identity columns.
    pub old_is_key_only: bool,
    /// Index of this change within its transaction.
    pub index: u32,
}

/// What mapping needs to know about a captured table (read from the catalog at startup).
#[derive(Debug, Clone, Default)]
pub struct TableMeta {
    pub primary_key: Vec<String>,
}

struct Rule {
    index: u16,
    ops: Vec<Op>,
    key: Vec<String>,
    columns: Option<HashSet<String>>,
    changed: Option<Vec<String>>,
    /// Per op: event name, routes and id tag.
    names: HashMap<Op, (String, Arc<[usize]>, u32)>,
}

pub struct Mapper {
    by_table: HashMap<TableName, Vec<Rule>>,
}

impl Mapper {
    /// Compiles every rule. `tables` holds the catalog facts for each rule's table.
    pub fn new(config: &Config, tables: &HashMap<TableName, TableMeta>) -> Result<Mapper, String> {
        let mut by_table: HashMap<TableName, Vec<Rule>> = HashMap::new();
        for (i, r) in config.events.iter().enumerate() {
            let table = TableName::parse(&r.table).map_err(|e| format!("events[{i}].table: {e}"))?;
            let meta = tables.get(&table).cloned().unwrap_or_default();
            let key = match &r.key {
                Some(k) => k.clone(),
                None if !meta.primary_key.is_empty() => meta.primary_key.clone(),
                None => {
                    return Err(format!(
                        "events[{i}]: table {table} has no primary key; set events[{i}].key to the columns that identify a row"
                    ))
                }
            };
            let rules = by_table.entry(table.clone()).or_default();
            let index =
                u16::try_from(rules.len()).map_err(|_| format!("events[{i}]: too many rules for {table}"))?;
            let mut names = HashMap::new();
            for &op in &r.on {
                let name = match &r.name {
                    Some(n) => n.clone(),
                    None => format!("{}.{}", table.name, op.default_suffix()),
                };
                let routes: Arc<[usize]> = config
                    .subscribers
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| s.events.iter().any(|p| pattern::matches(p, &name)))
                    .map(|(j, _)| j)
                    .collect();
                // Rules with the same table, name and op get distinct ids by occurrence.
                let twins = rules
                    .iter()
                    .filter(|r| r.names.get(&op).is_some_and(|(n, _, _)| *n == name))
                    .count();
                let tag = fnv1a(format!("{table}\u{0}{name}\u{0}{}\u{0}{twins}", op.as_str()).as_bytes());
                names.insert(op, (name, routes, tag));
            }
            rules.push(Rule {
                index,
                ops: r.on.clone(),
                key,
                columns: r.columns.as_ref().map(|c| c.iter().cloned().collect()),
                changed: r.changed.clone(),
                names,
            });
        }
        Ok(Mapper { by_table })
    }

    /// True when some rule watches this table.
    pub fn watches(&self, table: &TableName) -> bool {
        self.by_table.contains_key(table)
    }

    /// Events for one change, each with the lanes it goes to. Events routed nowhere are
    /// still returned (with no routes) so callers can count them.
    pub fn map(&self, tx: &TxMeta, change: &Change<'_>) -> Vec<(EventRef, Arc<[usize]>)> {
        let Some(rules) = self.by_table.get(change.table) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for rule in rules {
            if !rule.ops.contains(&change.op) {
                continue;
            }
            let Some((name, routes, tag)) = rule.names.get(&change.op) else {
                continue;
            };
            if let Some(event) = render(rule, name, *tag, tx, change) {
                out.push((Arc::new(event), routes.clone()));
            }
        }
        out
    }
}

fn render(rule: &Rule, name: &str, tag: u32, tx: &TxMeta, c: &Change<'_>) -> Option<Event> {
    let full_old = if c.old_is_key_only { None } else { c.old.as_ref() };
    let mut unchanged = Vec::new();
    let new = c.new.as_ref().map(|row| {
        let mut m = Map::new();
        for (col, v) in row {
            match v {
                ColValue::Value(v) => {
                    m.insert(col.to_string(), v.clone());
                }
                ColValue::Unchanged => match lookup(full_old, col) {
                    Some(v) => {
                        m.insert(col.to_string(), v.clone());
                    }
                    None => unchanged.push(col.to_string()),
                },
            }
        }
        m
    });
    let old = c.old.as_ref().map(|row| {
        row.iter()
            .filter_map(|(col, v)| match v {
                ColValue::Value(v) => Some((col.to_string(), v.clone())),
                ColValue::Unchanged => None,
            })
            .collect::<Map<String, Value>>()
    });
    let changed: Option<Vec<String>> = match (c.op, &new, full_old.and(old.as_ref())) {
        (Op::Update, Some(new), Some(old)) => Some(
            new.iter()
                .filter(|(k, v)| old.get(k.as_str()) != Some(v))
                .map(|(k, _)| k.clone())
                .collect(),
        ),
        _ => None,
    };
    if let (Op::Update, Some(wanted)) = (c.op, &rule.changed) {
        match &changed {
            Some(ch) if ch.iter().any(|col| wanted.contains(col)) => {}
            _ => return None,
        }
    }
    let key_source = new.as_ref().or(old.as_ref());
    let mut key = Map::new();
    for col in &rule.key {
        let v = key_source
            .and_then(|m| m.get(col))
            .cloned()
            .unwrap_or(Value::Null);
        key.insert(col.clone(), v);
    }
    let project = |m: Map<String, Value>| -> Value {
        match &rule.columns {
            None => Value::Object(m),
            Some(cols) => Value::Object(m.into_iter().filter(|(k, _)| cols.contains(k)).collect()),
        }
    };
    let key_value = Value::Object(key);
    let ordering_key = format!("{}|{}", c.table, key_value);
    let mut data = Map::new();
    data.insert("table".into(), Value::String(c.table.to_string()));
    data.insert("op".into(), Value::String(c.op.as_str().into()));
    data.insert("key".into(), key_value);
    data.insert("new".into(), new.map(project).unwrap_or(Value::Null));
    data.insert("old".into(), old.map(project).unwrap_or(Value::Null));
    data.insert(
        "changed".into(),
        changed
            .map(|v| Value::Array(v.into_iter().map(Value::String).collect()))
            .unwrap_or(Value::Null),
    );
    if !unchanged.is_empty() {
        data.insert(
            "unchanged".into(),
            Value::Array(unchanged.into_iter().map(Value::String).collect()),
        );
    }
    let mut source = Map::new();
    source.insert("lsn".into(), Value::String(format_lsn(tx.commit_lsn)));
    source.insert("xid".into(), Value::from(tx.xid));
    source.insert("commit_time".into(), Value::String(tx.commit_time.clone()));
    source.insert("seq".into(), Value::from(c.index));
    data.insert("source".into(), Value::Object(source));
    let mut body = Map::new();
    body.insert("type".into(), Value::String(name.to_string()));
    body.insert("timestamp".into(), Value::String(tx.commit_time.clone()));
    body.insert("data".into(), Value::Object(data));
    let body = serde_json::to_vec(&Value::Object(body)).ok()?;
    Some(Event {
        pos: Pos::new(tx.commit_lsn, c.index, rule.index),
        id: format!("evt_{:016x}_{:x}_{:08x}", tx.commit_lsn, c.index, tag),
        event_type: name.to_string(),
        key: ordering_key,
        body: body.into(),
    })
}

fn lookup<'a>(row: Option<&'a Row>, col: &str) -> Option<&'a Value> {
    row?.iter().find(|(c, _)| &**c == col).and_then(|(_, v)| match v {
        ColValue::Value(v) => Some(v),
        ColValue::Unchanged => None,
    })
}

/// A stable 32-bit hash (FNV-1a): event ids must not depend on the process.
fn fnv1a(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for b in bytes {
        h ^= u32::from(*b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests;
