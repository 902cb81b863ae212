//! Soft deletes: most ORM schemas delete a row by setting a nullable column
//! (`deleted_at`). A rule with `soft_delete` reports the update that sets it as a delete,
//! the one that clears it as a restore, and keeps quiet about a soft-deleted row
//! otherwise: its other updates (unless `soft_deleted = "include"`), an insert of a row
//! that is deleted already, and its later hard delete (its subscribers were told once).

use serde_json::Value;

use super::{Change, ColValue, Row, Rule};
use crate::config::Op;

/// The operation `rule` reports `c` as: none when it reports nothing of it, an error when
/// it cannot tell (an update that did not carry its old row).
pub(super) fn reported(rule: &Rule, c: &Change<'_>) -> Result<Option<Op>, String> {
    let Some(col) = rule.soft_delete.as_deref() else {
        return Ok(Some(c.op));
    };
    let full_old = if c.old_is_key_only { None } else { c.old.as_ref() };
    let include = rule.include_soft_deleted;
    Ok(match c.op {
        Op::Insert | Op::Read => match marked(c.new.as_ref(), col) {
            Some(true) if !include => None,
            _ => Some(c.op),
        },
        Op::Update => {
            let now = marked(c.new.as_ref(), col);
            let Some(before) = marked(full_old, col) else {
                return Err(format!(
                    "soft_delete on {col:?} needs the old row (REPLICA IDENTITY FULL), which this update did not carry"
                ));
            };
            // An unchanged TOAST value cannot be a timestamp or flag; if it is one,
            // it did not change.
            match (before, now.unwrap_or(before)) {
                (false, true) => Some(Op::Delete),
                (true, false) => Some(Op::Restore),
                (true, true) => include.then_some(Op::Update),
                (false, false) => Some(Op::Update),
            }
        }
        // Deleted already, and said so: one event per delete.
        Op::Delete if marked(full_old, col) == Some(true) => None,
        op => Some(op),
    })
}

/// Whether `row` marks itself deleted (its `col` holds a value); None when the row or the
/// value is not there.
fn marked(row: Option<&Row>, col: &str) -> Option<bool> {
    let (_, v) = row?.iter().find(|(c, _)| &**c == col)?;
    match v {
        ColValue::Value(Value::Null) => Some(false),
        ColValue::Value(_) => Some(true),
        ColValue::Unchanged => None,
    }
}
