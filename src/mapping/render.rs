//! Renders one event's body straight from the row images: no intermediate JSON tree, one
//! buffer per event. The field order and bytes are part of the contract (a replay must
//! produce identical bodies), and `mapping::tests` pins them.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

use super::condition::Facts;
use super::{Change, ColValue, Row, Rule, TxMeta};
use crate::config::Op;
use crate::event::{format_lsn, Event, Pos};

/// A row image as a JSON object: projected to the rule's columns, unchanged TOAST values
/// taken from `fallback` (a full old row) or left out.
struct RowJson<'a> {
    row: &'a Row,
    rule: &'a Rule,
    fallback: Option<&'a Row>,
}

impl RowJson<'_> {
    fn entries(&self) -> impl Iterator<Item = (&str, &Value)> {
        self.row.iter().enumerate().filter_map(move |(i, (col, v))| {
            if !self.rule.carries(col) {
                return None;
            }
            let v = match v {
                ColValue::Value(v) => v,
                ColValue::Unchanged => value_at(self.fallback, i, col)?,
            };
            Some((&**col, v))
        })
    }
}

impl Serialize for RowJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(None)?;
        for (k, v) in self.entries() {
            map.serialize_entry(k, v)?;
        }
        map.end()
    }
}

/// The value of column `col` in `row`, found at `index` when the images line up (they
/// come from one relation), else by name. `None` for a missing or unchanged value.
pub(super) fn value_at<'a>(row: Option<&'a Row>, index: usize, col: &str) -> Option<&'a Value> {
    let row = row?;
    let (c, v) = match row.get(index) {
        Some(entry) if &*entry.0 == col => entry,
        _ => row.iter().find(|(c, _)| &**c == col)?,
    };
    debug_assert_eq!(&**c, col);
    match v {
        ColValue::Value(v) => Some(v),
        ColValue::Unchanged => None,
    }
}

struct KeyJson<'a> {
    rule: &'a Rule,
    new: Option<&'a Row>,
    old: Option<&'a Row>,
}

impl Serialize for KeyJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.rule.key.len()))?;
        for col in &self.rule.key {
            let v = value_at(self.new, usize::MAX, col).or_else(|| value_at(self.old, usize::MAX, col));
            map.serialize_entry(col, v.unwrap_or(&Value::Null))?;
        }
        map.end()
    }
}

#[derive(serde::Serialize)]
struct Source<'a> {
    lsn: &'a str,
    xid: u32,
    commit_time: &'a str,
    seq: u32,
}

#[derive(serde::Serialize)]
struct Data<'a> {
    table: &'a str,
    op: &'static str,
    key: &'a RawValue,
    new: Option<RowJson<'a>>,
    /// Left out (outer `None`) when the rule says `include_old = false`.
    #[serde(skip_serializing_if = "Option::is_none")]
    old: Option<Option<RowJson<'a>>>,
    changed: Option<Vec<&'a str>>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    unchanged: Vec<&'a str>,
    source: Source<'a>,
}

#[derive(serde::Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    timestamp: &'a str,
    data: Data<'a>,
}

/// The row's ordering key as JSON, as in `data.key`.
pub(super) fn key_json(rule: &Rule, c: &Change<'_>) -> String {
    serde_json::to_string(&KeyJson {
        rule,
        new: c.new.as_ref(),
        old: c.old.as_ref(),
    })
    .unwrap_or_default()
}

/// Whether the rule's conditions let this change through: `changed`, `ignore_changes`,
/// `transition` and `when`, all of which must hold. `changed` holds the changed columns
/// of an update with a full old row. An error says why a condition could not be decided.
fn fires(
    rule: &Rule,
    tx: &TxMeta,
    c: &Change<'_>,
    full_old: Option<&Row>,
    changed: Option<&[&str]>,
) -> Result<bool, String> {
    if c.op == Op::Update {
        if let Some(wanted) = &rule.changed {
            match changed {
                Some(ch) if ch.iter().any(|col| wanted.iter().any(|w| w == col)) => {}
                _ => return Ok(false),
            }
        }
        if let Some(ignored) = &rule.ignore_changes {
            let Some(ch) = changed else {
                return Err("ignore_changes needs the old row, which this update did not carry".into());
            };
            if ch.iter().all(|col| ignored.iter().any(|i| i == col)) {
                return Ok(false);
            }
        }
    }
    if let Some(t) = &rule.transition {
        if !t.holds(c.op, c.new.as_ref(), full_old)? {
            return Ok(false);
        }
    }
    if let Some(when) = &rule.when {
        // An insert changes every column it sets; a delete changes none.
        let all: Vec<&str>;
        let changed = match c.op {
            Op::Insert => {
                all = c.new.iter().flatten().map(|(col, _)| &**col).collect();
                Some(all.as_slice())
            }
            Op::Delete | Op::Truncate => Some(&[][..]),
            Op::Update => changed,
        };
        let lsn = format_lsn(tx.commit_lsn);
        let facts = Facts {
            op: c.op,
            table: &rule.table,
            new: c.new.as_ref(),
            old: c.old.as_ref(),
            full_old,
            changed,
            commit_time: &tx.commit_time,
            lsn: &lsn,
            xid: tx.xid,
        };
        return when.eval(&facts);
    }
    Ok(true)
}

/// The event one rule makes of one change, `None` when the rule does not fire, or an
/// error when one of its conditions cannot be evaluated for this change.
pub(super) fn render(
    rule: &Rule,
    name: &str,
    tag: u32,
    tx: &TxMeta,
    c: &Change<'_>,
) -> Result<Option<Event>, String> {
    let full_old = if c.old_is_key_only { None } else { c.old.as_ref() };
    // Columns whose value changed: only knowable with the whole old row.
    let changed: Option<Vec<&str>> = match (c.op, c.new.as_ref(), full_old) {
        (Op::Update, Some(new), Some(old)) => Some(
            new.iter()
                .enumerate()
                .filter(|(i, (col, v))| match v {
                    ColValue::Unchanged => false,
                    ColValue::Value(v) => value_at(Some(old), *i, col) != Some(v),
                })
                .map(|(_, (col, _))| &**col)
                .collect(),
        ),
        _ => None,
    };
    if !fires(rule, tx, c, full_old, changed.as_deref())? {
        return Ok(None);
    }
    let in_columns = |col: &str| rule.carries(col);
    // The body names only columns the rule carries.
    let changed = changed.map(|cols| cols.into_iter().filter(|col| in_columns(col)).collect::<Vec<_>>());
    let unchanged: Vec<&str> = c
        .new
        .iter()
        .flatten()
        .enumerate()
        .filter(|(i, (col, v))| {
            *v == ColValue::Unchanged && in_columns(col) && value_at(full_old, *i, col).is_none()
        })
        .map(|(_, (col, _))| &**col)
        .collect();
    let key_raw = RawValue::from_string(key_json(rule, c)).map_err(|e| format!("key: {e}"))?;
    let lsn = format_lsn(tx.commit_lsn);
    let body = Body {
        kind: name,
        timestamp: &tx.commit_time,
        data: Data {
            table: &rule.table,
            op: c.op.as_str(),
            key: &key_raw,
            new: c.new.as_ref().map(|row| RowJson {
                row,
                rule,
                fallback: full_old,
            }),
            old: rule.include_old.then(|| {
                c.old.as_ref().map(|row| RowJson {
                    row,
                    rule,
                    fallback: None,
                })
            }),
            changed,
            unchanged,
            source: Source {
                lsn: &lsn,
                xid: tx.xid,
                commit_time: &tx.commit_time,
                seq: c.index,
            },
        },
    };
    let mut buf = Vec::with_capacity(512);
    serde_json::to_writer(&mut buf, &body).map_err(|e| format!("body: {e}"))?;
    Ok(Some(Event {
        pos: Pos::new(tx.commit_lsn, c.index, rule.index),
        id: format!("evt_{:016x}_{:x}_{:08x}", tx.commit_lsn, c.index, tag),
        event_type: name.to_string(),
        key: format!("{}|{}", rule.table, key_raw.get()),
        body: buf.into(),
    }))
}
