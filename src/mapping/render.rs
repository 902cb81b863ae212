//! Renders one event's body straight from the row images: no intermediate JSON tree, one
//! buffer per event. The field order and bytes are part of the contract (a replay must
//! produce identical bodies), and `mapping::tests` pins them.

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::value::RawValue;
use serde_json::Value;

use std::sync::Arc;

use super::condition::Facts;
use super::{Change, ColValue, Named, Routed, Row, Rule, TxMeta};
use crate::config::{Numbers, Op};
use crate::decode::json;
use crate::event::{format_lsn, Event, Pos, READ};

/// A row image as a JSON object: projected to the rule's columns, unchanged TOAST values
/// taken from `fallback` (a full old row) or left out.
struct RowJson<'a> {
    row: &'a Row,
    rule: &'a Rule,
    fallback: Option<&'a Row>,
    /// Columns whose numbers are written as strings (`numbers = "string"`).
    stringify: &'a [Arc<str>],
    /// json/jsonb columns whose numbers a double does not hold are written as strings
    /// (`numbers = "string"`).
    inexact: &'a [Arc<str>],
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
            let strings = if self.stringify.iter().any(|c| &**c == k) {
                Strings::All
            } else if self.inexact.iter().any(|c| &**c == k) {
                Strings::Inexact
            } else {
                Strings::None
            };
            map.serialize_entry(k, &Num { v, strings })?;
        }
        map.end()
    }
}

/// Which numbers of a value are written as strings.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Strings {
    None,
    /// Every number (int8 and numeric columns, also in arrays).
    All,
    /// The numbers a double does not hold (json and jsonb columns, at any depth).
    Inexact,
}

/// A column value, its numbers written as strings as `strings` says.
pub(super) struct Num<'a> {
    v: &'a Value,
    strings: Strings,
}

impl Num<'_> {
    pub(super) fn of(v: &Value, strings: bool) -> Num<'_> {
        Num {
            v,
            strings: if strings { Strings::All } else { Strings::None },
        }
    }

    /// A value of a json or jsonb column.
    pub(super) fn json(v: &Value, inexact: bool) -> Num<'_> {
        Num {
            v,
            strings: if inexact { Strings::Inexact } else { Strings::None },
        }
    }
}

impl Serialize for Num<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeSeq;
        match (self.v, self.strings) {
            (_, Strings::None) => self.v.serialize(s),
            (Value::Number(n), Strings::All) => s.serialize_str(n.as_str()),
            (Value::Number(n), Strings::Inexact) => match json::deep(self.v) {
                Some(text) => json::deep_with_inexact_as_strings(text).serialize(s),
                None if json::double_holds(n.as_str()) => n.serialize(s),
                None => s.serialize_str(n.as_str()),
            },
            (Value::Array(items), strings) => {
                let mut seq = s.serialize_seq(Some(items.len()))?;
                for item in items {
                    seq.serialize_element(&Num { v: item, strings })?;
                }
                seq.end()
            }
            (Value::Object(entries), Strings::Inexact) => {
                let mut map = s.serialize_map(Some(entries.len()))?;
                for (k, v) in entries {
                    map.serialize_entry(
                        k,
                        &Num {
                            v,
                            strings: self.strings,
                        },
                    )?;
                }
                map.end()
            }
            (v, _) => v.serialize(s),
        }
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
    stringify: &'a [Arc<str>],
    /// As in `RowJson`.
    inexact: &'a [Arc<str>],
}

impl Serialize for KeyJson<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut map = s.serialize_map(Some(self.rule.key.len()))?;
        for col in &self.rule.key {
            let v = value_at(self.new, usize::MAX, col).or_else(|| value_at(self.old, usize::MAX, col));
            let strings = self.stringify.iter().any(|c| &**c == col);
            let v = v.unwrap_or(&Value::Null);
            let num = match self.inexact.iter().any(|c| &**c == col) {
                true => Num::json(v, true),
                false => Num::of(v, strings),
            };
            map.serialize_entry(col, &num)?;
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

/// A standard body: the event type, the commit time, and what `data` the event carries
/// (a row change's, or a document's).
#[derive(serde::Serialize)]
pub(super) struct Body<'a, D> {
    #[serde(rename = "type")]
    pub(super) kind: &'a str,
    pub(super) timestamp: &'a str,
    pub(super) data: D,
}

/// The row's ordering key as JSON, as in `data.key`.
pub(super) fn key_json(rule: &Rule, c: &Change<'_>, numbers: Numbers) -> String {
    serde_json::to_string(&KeyJson {
        rule,
        new: c.new.as_ref(),
        old: c.old.as_ref(),
        stringify: stringified(c, numbers),
        inexact: inexact_json(c, numbers),
    })
    .unwrap_or_default()
}

/// The JSON of the ordering key the row had before an update, when the old image carries
/// every key column (an update that changed key columns always carries them: the replica
/// identity, or the whole old row).
fn prev_key_json(rule: &Rule, c: &Change<'_>) -> Option<String> {
    if c.op != Op::Update {
        return None;
    }
    let old = c.old.as_ref()?;
    if rule
        .key
        .iter()
        .any(|col| value_at(Some(old), usize::MAX, col).is_none())
    {
        return None;
    }
    let key = KeyJson {
        rule,
        new: None,
        old: Some(old),
        stringify: &[],
        inexact: &[],
    };
    serde_json::to_string(&key).ok()
}

/// An ordering key: the rule's table and the key's JSON, `table|json`.
fn table_key(table: &str, json: &str) -> String {
    let mut out = String::with_capacity(table.len() + 1 + json.len());
    out.push_str(table);
    out.push('|');
    out.push_str(json);
    out
}

/// The id of a change's event: `evt_{commit LSN:016x}_{change index:x}_{rule tag:08x}`.
fn change_id(lsn: u64, index: u32, tag: u32) -> String {
    use crate::event::{push_hex, HEX_LOWER};
    let mut id = String::with_capacity(4 + 16 + 1 + 8 + 1 + 8);
    id.push_str("evt_");
    push_hex(&mut id, lsn, 16, HEX_LOWER);
    id.push('_');
    push_hex(&mut id, u64::from(index), 1, HEX_LOWER);
    id.push('_');
    push_hex(&mut id, u64::from(tag), 8, HEX_LOWER);
    id
}

/// The columns whose numbers are written as strings for subscribers wanting `numbers`.
fn stringified<'a>(c: &Change<'a>, numbers: Numbers) -> &'a [Arc<str>] {
    match numbers {
        Numbers::Exact => &[],
        Numbers::String => c.exact,
    }
}

/// The json and jsonb columns whose numbers a double does not hold are written as strings
/// for subscribers wanting `numbers`.
fn inexact_json<'a>(c: &Change<'a>, numbers: Numbers) -> &'a [Arc<str>] {
    match numbers {
        Numbers::Exact => &[],
        Numbers::String => c.json,
    }
}

/// Whether the rule's conditions let this change through: `changed`, `ignore_changes`,
/// `transition` and `when`, all of which must hold. `changed` holds the changed columns
/// of an update with a full old row. An error says why a condition could not be decided.
fn fires(
    rule: &Rule,
    tx: &TxMeta,
    c: &Change<'_>,
    op: Op,
    full_old: Option<&Row>,
    changed: Option<&[&str]>,
) -> Result<bool, String> {
    if op == Op::Update {
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
        if !t.holds(op, c.new.as_ref(), full_old)? {
            return Ok(false);
        }
    }
    if let Some(when) = &rule.when {
        // An insert changes every column it sets; a delete changes none.
        let all: Vec<&str>;
        // An update reported as a delete or a restore (`soft_delete`) changed what it did.
        let changed = match c.op {
            Op::Insert | Op::Read => {
                all = c.new.iter().flatten().map(|(col, _)| &**col).collect();
                Some(all.as_slice())
            }
            Op::Delete | Op::Truncate => Some(&[][..]),
            Op::Update | Op::Restore => changed,
        };
        let facts = Facts {
            op,
            table: &rule.table,
            new: c.new.as_ref(),
            old: c.old.as_ref(),
            full_old,
            changed,
            commit_time: &tx.commit_time,
            commit_lsn: tx.commit_lsn,
            xid: tx.xid,
        };
        return when.eval(&facts);
    }
    Ok(true)
}

/// About the bytes a body of this change takes: 512 and its values' text, with room for
/// some escaping. The body's buffer starts this big, so a large row's body is written
/// once rather than grown and copied again at every doubling (which also ends with up to
/// twice the memory it needs).
fn body_size_hint(rule: &Rule, c: &Change<'_>, full_old: Option<&Row>) -> usize {
    let size = |v: &Value| match v {
        Value::String(s) => s.len(),
        Value::Number(n) => n.as_str().len(),
        _ => 8,
    };
    let row = |row: &Row, fallback: Option<&Row>| -> usize {
        row.iter()
            .enumerate()
            .map(|(i, (col, v))| {
                let v = match v {
                    ColValue::Value(v) => Some(v),
                    ColValue::Unchanged => value_at(fallback, i, col),
                };
                col.len() + 4 + v.map_or(0, size)
            })
            .sum()
    };
    let new = c.new.as_ref().map_or(0, |r| row(r, full_old));
    let old = match (&c.old, rule.include_old) {
        (Some(r), true) => row(r, None),
        _ => 0,
    };
    let values = new + old;
    512 + values + values / 16
}

/// The events one rule makes of one change, reported as `op` (the change's own, or what
/// `soft_delete` makes of it), one per way its subscribers want numbers written (none
/// when the rule does not fire), or an error when one of its conditions cannot be
/// evaluated for this change.
pub(super) fn render(
    rule: &Rule,
    named: &Named,
    tx: &TxMeta,
    c: &Change<'_>,
    op: Op,
) -> Result<Vec<Routed>, String> {
    let full_old = if c.old_is_key_only { None } else { c.old.as_ref() };
    // Columns whose value changed: only knowable with the whole old row.
    let changed: Option<Vec<&str>> = match (c.op, c.new.as_ref(), full_old) {
        // A row a backfill read: every column is news to its subscriber.
        (Op::Read, Some(new), _) => Some(new.iter().map(|(col, _)| &**col).collect()),
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
    if !fires(rule, tx, c, op, full_old, changed.as_deref())? {
        return Ok(Vec::new());
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
    let lsn = format_lsn(tx.commit_lsn);
    // The ordering key is the same whatever the format, so a lane's order never depends on it.
    let exact_key = key_json(rule, c, Numbers::Exact);
    let key = table_key(&rule.table, &exact_key);
    let (pos, id) = match c.op {
        // A read goes out at its chunk's high watermark, and its id is a function of the
        // row: a row read again (after a resume) and not changed meanwhile keeps its id.
        Op::Read => {
            let row = c.new.as_ref().map(|row| RowJson {
                row,
                rule,
                fallback: None,
                stringify: &[],
                inexact: &[],
            });
            let text = serde_json::to_string(&row).map_err(|e| format!("row: {e}"))?;
            let hash = super::fnv1a64(format!("{}\u{0}{key}\u{0}{text}", tx.backfill).as_bytes());
            let pos = Pos {
                lsn: tx.commit_lsn,
                seq: READ | (u64::from(c.index) << 16) | u64::from(rule.index),
            };
            (pos, format!("evt_r{hash:016x}_{:08x}", named.tag))
        }
        _ => (
            Pos::new(tx.commit_lsn, c.index, rule.index),
            change_id(tx.commit_lsn, c.index, named.tag),
        ),
    };
    // Formed only when it differs (a table with full replica identity has the old key in
    // every update).
    let prev_key = prev_key_json(rule, c)
        .filter(|p| *p != exact_key)
        .map(|p| table_key(&rule.table, &p));
    let size_hint = body_size_hint(rule, c, full_old);
    let mut out = Vec::with_capacity(named.routes.len());
    for (numbers, routes) in &named.routes {
        let stringify = stringified(c, *numbers);
        let inexact = inexact_json(c, *numbers);
        let json = match numbers {
            Numbers::Exact => exact_key.clone(),
            _ => key_json(rule, c, *numbers),
        };
        let key_raw = RawValue::from_string(json).map_err(|e| format!("key: {e}"))?;
        let body = Body {
            kind: &named.name,
            timestamp: &tx.commit_time,
            data: Data {
                table: &rule.table,
                op: op.as_str(),
                key: &key_raw,
                new: c.new.as_ref().map(|row| RowJson {
                    row,
                    rule,
                    fallback: full_old,
                    stringify,
                    inexact,
                }),
                old: rule.include_old.then(|| {
                    c.old.as_ref().map(|row| RowJson {
                        row,
                        rule,
                        fallback: None,
                        stringify,
                        inexact,
                    })
                }),
                changed: changed.clone(),
                unchanged: unchanged.clone(),
                source: Source {
                    lsn: &lsn,
                    xid: tx.xid,
                    commit_time: &tx.commit_time,
                    seq: c.index,
                },
            },
        };
        let mut buf = Vec::with_capacity(size_hint);
        serde_json::to_writer(&mut buf, &body).map_err(|e| format!("body: {e}"))?;
        let event = Event {
            pos,
            id: id.clone(),
            event_type: named.name.clone(),
            key: key.clone(),
            prev_key: prev_key.clone(),
            body: buf.into(),
        };
        out.push(Routed {
            event: Arc::new(event),
            routes: routes.clone(),
            numbers: *numbers,
            coalesce: rule.coalesce,
        });
    }
    Ok(out)
}
