//! Mapping: pure and synchronous. Rules compiled at startup turn one decoded row change
//! into zero or more events, each with a stable id, an ordering key and a rendered body,
//! and route each to the lanes of the subscribers whose patterns match its name.
//!
//! Nothing here does I/O or reads a clock: the body is a function of the change and the
//! rule only (its `timestamp` is the commit time), so a replay renders identical bytes.

pub mod coalesce;
mod condition;
pub mod documents;
mod pattern;
mod plan;
mod render;
mod soft;

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use serde_json::Value;

use crate::config::{Config, Numbers, Op, Problem, TableName};
use crate::event::EventRef;

pub use condition::Condition;
use condition::Transition;
pub use pattern::matches as pattern_matches;

/// Commit-level facts shared by every change of a transaction.
#[derive(Debug, Clone)]
pub struct TxMeta {
    pub commit_lsn: u64,
    pub xid: u32,
    /// RFC 3339 commit time.
    pub commit_time: String,
    /// For rows a backfill read: its id (part of their ids, so a second backfill is not
    /// taken for a repeat of the first); 0 otherwise.
    pub backfill: i64,
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
    /// Columns of int8 or numeric type (or arrays or domains of them): written as
    /// strings for subscribers with `numbers = "string"`.
    pub exact: &'a [Arc<str>],
    /// Columns of json or jsonb type (or arrays or domains of them): their numbers that a
    /// double does not hold are written as strings for subscribers with
    /// `numbers = "string"`.
    pub json: &'a [Arc<str>],
}

/// What mapping needs to know about a captured table (read from the catalog at startup).
#[derive(Debug, Clone, Default)]
pub struct TableMeta {
    /// The ordering key of a rule without `key`: the primary key, or the replica identity
    /// index's columns when the table logs those (`REPLICA IDENTITY USING INDEX`), so that
    /// every operation of a row, its delete included, carries the same key.
    pub default_key: Vec<String>,
    /// The table's oid (0 when not known): a relation that arrives under another name
    /// with this oid was renamed.
    pub oid: u32,
}

struct Rule {
    /// `events[N]` in the config, for errors and metrics.
    label: String,
    index: u16,
    ops: Vec<Op>,
    key: Vec<String>,
    projection: Projection,
    include_old: bool,
    changed: Option<Vec<String>>,
    ignore_changes: Option<Vec<String>>,
    transition: Option<Transition>,
    when: Option<Condition>,
    coalesce: Option<crate::mapping::coalesce::Spec>,
    /// The column whose setting marks a row deleted (`soft_delete`).
    soft_delete: Option<String>,
    /// Changes of soft-deleted rows make events (`soft_deleted = "include"`).
    include_soft_deleted: bool,
    /// `schema.table` as written in bodies.
    table: String,
    /// Per op: event name, routes and id tag.
    names: HashMap<Op, Named>,
}

struct Named {
    name: String,
    /// The subscribers it goes to, by how they want numbers; at least one group (with
    /// no subscribers when none wants it).
    routes: Vec<(Numbers, Arc<[usize]>)>,
    tag: u32,
}

/// Which columns a rule's row images carry.
enum Projection {
    All,
    Only(HashSet<String>),
    Except(HashSet<String>),
}

impl Rule {
    fn carries(&self, col: &str) -> bool {
        match &self.projection {
            Projection::All => true,
            Projection::Only(cols) => cols.contains(col),
            Projection::Except(cols) => !cols.contains(col),
        }
    }
}

/// A rule that could not be evaluated for one change (a condition failed at run time):
/// the change makes no event for that rule, and the caller logs and counts it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleFailure {
    /// `events[N]`.
    pub rule: String,
    pub table: String,
    /// The row's ordering key as JSON.
    pub key: String,
    pub error: String,
}

pub struct Mapper {
    by_table: HashMap<TableName, Vec<Rule>>,
    /// Captured tables by oid, as named in the rules.
    oids: HashMap<u32, TableName>,
    documents: documents::Documents,
}

impl Mapper {
    /// Compiles every rule. `tables` holds the catalog facts for each rule's table. An
    /// error lists every rule that cannot be compiled, with its key path.
    pub fn new(config: &Config, tables: &HashMap<TableName, TableMeta>) -> Result<Mapper, Vec<Problem>> {
        let mut by_table: HashMap<TableName, Vec<Rule>> = HashMap::new();
        let mut problems = Vec::new();
        for (i, r) in config.events.iter().enumerate() {
            let table = match TableName::parse(&r.table) {
                Ok(t) => t,
                Err(e) => {
                    problems.push(Problem::new(format!("events[{i}].table"), e));
                    continue;
                }
            };
            let meta = tables.get(&table).cloned().unwrap_or_default();
            let key = match &r.key {
                Some(k) => k.clone(),
                None if !meta.default_key.is_empty() => meta.default_key.clone(),
                None => {
                    problems.push(Problem::new(
                        format!("events[{i}].key"),
                        format!("table {table} has no primary key; set events[{i}].key to the columns that identify a row"),
                    ));
                    continue;
                }
            };
            let rules = by_table.entry(table.clone()).or_default();
            let Ok(index) = u16::try_from(rules.len()) else {
                problems.push(Problem::new(
                    format!("events[{i}]"),
                    format!("too many rules for {table}"),
                ));
                continue;
            };
            let mut names = HashMap::new();
            let name_of = |op: Op| match &r.name {
                Some(n) => n.clone(),
                None => format!("{}.{}", table.name, op.default_suffix()),
            };
            // Reads reach the subscribers that want any event of the rule (a backfill
            // then picks its own among them).
            let all_names: Vec<String> =
                r.on.iter()
                    .map(|&op| name_of(op))
                    .chain([name_of(Op::Read)])
                    .collect();
            let read = r.backfill.then_some(Op::Read);
            for op in r.on.iter().copied().chain(read) {
                let name = name_of(op);
                let wanting: Vec<usize> = config
                    .subscribers
                    .iter()
                    .enumerate()
                    .filter(|(_, s)| {
                        s.events.iter().any(|p| match op {
                            Op::Read => all_names.iter().any(|n| pattern::matches(p, n)),
                            _ => pattern::matches(p, &name),
                        })
                    })
                    .map(|(j, _)| j)
                    .collect();
                let mut routes = Vec::new();
                for numbers in [Numbers::Exact, Numbers::String] {
                    let group: Arc<[usize]> = wanting
                        .iter()
                        .copied()
                        .filter(|&j| config.subscribers[j].numbers == numbers)
                        .collect();
                    if !group.is_empty() || (numbers == Numbers::Exact && wanting.is_empty()) {
                        routes.push((numbers, group));
                    }
                }
                // Rules with the same table, name and op get distinct ids by occurrence.
                let twins = rules
                    .iter()
                    .filter(|r| r.names.get(&op).is_some_and(|n| n.name == name))
                    .count();
                let tag = fnv1a(format!("{table}\u{0}{name}\u{0}{}\u{0}{twins}", op.as_str()).as_bytes());
                names.insert(op, Named { name, routes, tag });
            }
            let projection = match (&r.columns, &r.exclude) {
                (Some(c), _) => Projection::Only(c.iter().cloned().collect()),
                (None, Some(x)) => Projection::Except(x.iter().cloned().collect()),
                (None, None) => Projection::All,
            };
            let when = match r.when.as_deref().map(Condition::compile) {
                Some(Ok(c)) => Some(c),
                Some(Err(e)) => {
                    problems.push(Problem::new(format!("events[{i}].when"), e));
                    continue;
                }
                None => None,
            };
            rules.push(Rule {
                label: format!("events[{i}]"),
                table: table.to_string(),
                index,
                ops: r.on.clone(),
                key,
                projection,
                include_old: r.include_old,
                changed: r.changed.clone(),
                ignore_changes: r.ignore_changes.clone(),
                transition: r
                    .transition
                    .as_ref()
                    .map(|t| Transition::new(&t.column, &t.to, t.from.as_ref())),
                when,
                coalesce: r.coalesce.as_ref().map(|c| crate::mapping::coalesce::Spec {
                    rule: i,
                    window: micros(c.window),
                    max_wait: micros(c.max_wait),
                    max_open: c.max_open,
                }),
                soft_delete: r.soft_delete.clone(),
                include_soft_deleted: r.soft_deleted == crate::config::SoftDeleted::Include,
                names,
            });
        }
        let documents = documents::Documents::new(config);
        let oids = tables
            .iter()
            .filter(|(t, m)| m.oid != 0 && (by_table.contains_key(*t) || documents.feeds(t)))
            .map(|(t, m)| (m.oid, t.clone()))
            .collect();
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Mapper {
            by_table,
            oids,
            documents,
        })
    }

    /// True when some rule watches this table, or it feeds a document.
    pub fn watches(&self, table: &TableName) -> bool {
        self.by_table.contains_key(table) || self.documents.feeds(table)
    }

    /// The name rules know the table with this oid by, when they capture it.
    pub fn captured_as(&self, oid: u32) -> Option<&TableName> {
        self.oids.get(&oid)
    }

    /// The rules of `table` whose ordering key names a column that is not in `columns`
    /// (dropped or renamed since the rule was loaded), with that column.
    pub fn missing_key_columns(&self, table: &TableName, columns: &[&str]) -> Vec<(String, String)> {
        self.by_table
            .get(table)
            .into_iter()
            .flatten()
            .filter_map(|r| {
                let col = r.key.iter().find(|k| !columns.contains(&k.as_str()))?;
                Some((r.label.clone(), col.clone()))
            })
            .collect()
    }

    /// Events for one change, each with the lanes it goes to. Events routed nowhere are
    /// still returned (with no routes) so callers can count them. An event whose
    /// subscribers want numbers written differently comes once per way, with the same
    /// id and position and the bodies that differ only there. Rules that cannot be
    /// evaluated for this change are added to `failures`; the other rules go on.
    pub fn map(&self, tx: &TxMeta, change: &Change<'_>, failures: &mut Vec<RuleFailure>) -> Vec<Routed> {
        let Some(rules) = self.by_table.get(change.table) else {
            return Vec::new();
        };
        let mut out = Vec::new();
        for rule in rules {
            let failed = |error: String| RuleFailure {
                rule: rule.label.clone(),
                table: rule.table.clone(),
                key: render::key_json(rule, change, Numbers::Exact),
                error,
            };
            let op = match soft::reported(rule, change) {
                Ok(Some(op)) => op,
                Ok(None) => continue,
                Err(error) => {
                    failures.push(failed(error));
                    continue;
                }
            };
            if op != Op::Read && !rule.ops.contains(&op) {
                continue;
            }
            let Some(named) = rule.names.get(&op) else {
                continue;
            };
            match render::render(rule, named, tx, change, op) {
                Ok(events) => out.extend(events),
                Err(error) => failures.push(failed(error)),
            }
        }
        out
    }
}

/// The problems of the rules' parts mapping compiles: `when` conditions, and subscriber
/// patterns that match no event the rules make (a typo would deliver nothing).
pub fn check(config: &Config) -> Vec<crate::config::Problem> {
    use crate::config::Problem;
    let mut out = Vec::new();
    for (i, rule) in config.events.iter().enumerate() {
        if let Some(Err(e)) = rule.when.as_deref().map(Condition::compile) {
            out.push(Problem {
                path: format!("events[{i}].when"),
                message: e,
            });
        }
    }
    // Every event name the rules can make.
    let names: std::collections::BTreeSet<String> = config
        .events
        .iter()
        .filter_map(|r| {
            let table = TableName::parse(&r.table).ok()?;
            let read = r.backfill.then_some(Op::Read);
            Some(r.on.iter().copied().chain(read).map(move |op| match &r.name {
                Some(n) => n.clone(),
                None => format!("{}.{}", table.name, op.default_suffix()),
            }))
        })
        .flatten()
        .chain(config.documents.iter().map(|d| d.name.clone()))
        .collect();
    if names.is_empty() {
        return out;
    }
    for (i, sub) in config.subscribers.iter().enumerate() {
        for (j, pattern) in sub.events.iter().enumerate() {
            // A malformed pattern is the config's to name.
            let well_formed = crate::config::valid_event_name(&pattern.replace('*', "x"));
            if well_formed && !names.iter().any(|n| pattern::matches(pattern, n)) {
                out.push(Problem {
                    path: format!("subscribers[{i}].events[{j}]"),
                    message: format!(
                        "{pattern:?} matches no event the rules make ({}): check the spelling",
                        names.iter().cloned().collect::<Vec<_>>().join(", ")
                    ),
                });
            }
        }
    }
    out
}

/// The tables whose rules route to subscriber `name` (any of a rule's events, its reads
/// included, matches one of its patterns), as the rules name them, in rule order: what a
/// backfill of that subscriber reads when no table is named.
pub fn tables_for(config: &Config, name: &str) -> Vec<String> {
    let Some(sub) = config.subscribers.iter().find(|s| s.name == name) else {
        return Vec::new();
    };
    let mut out: Vec<String> = Vec::new();
    for r in config.events.iter().filter(|r| r.backfill) {
        let Ok(table) = TableName::parse(&r.table) else {
            continue;
        };
        let wants = r.on.iter().copied().chain([Op::Read]).any(|op| {
            let event = match &r.name {
                Some(n) => n.clone(),
                None => format!("{}.{}", table.name, op.default_suffix()),
            };
            sub.events.iter().any(|p| pattern::matches(p, &event))
        });
        let table = table.to_string();
        if wants && !out.contains(&table) {
            out.push(table);
        }
    }
    out
}

/// An event and the lanes (subscriber indexes) it goes to.
#[derive(Debug)]
pub struct Routed {
    pub event: EventRef,
    pub routes: Arc<[usize]>,
    /// How the routed subscribers want numbers written (the body is rendered so).
    pub numbers: Numbers,
    /// Set when the rule coalesces: the event goes into a window, not to the lanes.
    pub coalesce: Option<crate::mapping::coalesce::Spec>,
}

fn micros(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_micros()).unwrap_or(i64::MAX)
}

/// A stable 64-bit hash (FNV-1a), for the ids of rows a backfill read.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
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
