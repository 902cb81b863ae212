//! A fast path for the `when` expressions most rules use: comparisons of columns, `op`,
//! `table`, `meta.commit_time` and `meta.xid` with literals or with each other, `has(...)`,
//! `'col' in changed`, and `&&`, `||`, `!` over them. Such an expression is also
//! compiled to a small tree evaluated straight over the decoded row, with no CEL
//! context, maps or allocations per change.
//!
//! The tree only answers what it is sure of, with CEL's own semantics (numbers of any
//! kind compare by value; strings, booleans and nulls compare with their own kind). For
//! anything else, such as a missing column, a null row, a list value, mixed kinds or
//! NaN, it answers "ask CEL", and the caller evaluates the compiled CEL program, so
//! results and error messages are CEL's. A test checks both agree on generated
//! expressions and rows.

use cel::common::ast::{operators, Expr, IdedExpr, LiteralValue};
use serde_json::Value as Json;

use super::condition::Facts;
use super::{ColValue, Row};

/// A compiled expression of the supported subset.
#[derive(Debug)]
pub(super) enum Plan {
    Lit(Lit),
    Op,
    Table,
    Meta(MetaField),
    /// `new.col`, `new["col"]` (new = true) or the same of `old`.
    Col {
        new: bool,
        name: String,
    },
    /// `has(new.col)`, `has(old.col)`.
    Has {
        new: bool,
        name: String,
    },
    /// `'col' in changed`.
    InChanged(String),
    Not(Box<Plan>),
    And(Box<Plan>, Box<Plan>),
    Or(Box<Plan>, Box<Plan>),
    Cmp(Cmp, Box<Plan>, Box<Plan>),
}

#[derive(Debug)]
pub(super) enum Lit {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(String),
}

#[derive(Debug, Clone, Copy)]
pub(super) enum MetaField {
    CommitTime,
    Xid,
}

#[derive(Debug, Clone, Copy)]
pub(super) enum Cmp {
    Eq,
    Ne,
    Lt,
    Le,
    Gt,
    Ge,
}

/// A value during evaluation, borrowed from the change or the plan.
#[derive(Debug, Clone, Copy)]
enum V<'a> {
    Null,
    Bool(bool),
    Int(i64),
    UInt(u64),
    Float(f64),
    Str(&'a str),
}

impl Plan {
    /// The plan of `e`, or `None` when it uses something outside the subset.
    pub(super) fn compile(e: &IdedExpr) -> Option<Plan> {
        let row = |x: &IdedExpr| match &x.expr {
            Expr::Ident(r) if r == "new" => Some(true),
            Expr::Ident(r) if r == "old" => Some(false),
            _ => None,
        };
        Some(match &e.expr {
            Expr::Literal(l) => Plan::Lit(match l {
                LiteralValue::Null => Lit::Null,
                LiteralValue::Boolean(b) => Lit::Bool(*b.inner()),
                LiteralValue::Int(i) => Lit::Int(*i.inner()),
                LiteralValue::UInt(u) => Lit::UInt(*u.inner()),
                LiteralValue::Double(d) => Lit::Float(*d.inner()),
                LiteralValue::String(s) => Lit::Str(s.inner().to_string()),
                LiteralValue::Bytes(_) => return None,
            }),
            Expr::Ident(name) => match name.as_str() {
                "op" => Plan::Op,
                "table" => Plan::Table,
                _ => return None,
            },
            Expr::Select(s) => {
                if let Some(new) = row(&s.operand) {
                    let name = s.field.clone();
                    if s.test {
                        Plan::Has { new, name }
                    } else {
                        Plan::Col { new, name }
                    }
                } else if matches!(&s.operand.expr, Expr::Ident(m) if m == "meta") && !s.test {
                    Plan::Meta(match s.field.as_str() {
                        "commit_time" => MetaField::CommitTime,
                        "xid" => MetaField::Xid,
                        _ => return None,
                    })
                } else {
                    return None;
                }
            }
            Expr::Call(c) if c.target.is_none() => {
                let arg = |i: usize| c.args.get(i).and_then(Plan::compile).map(Box::new);
                match (c.func_name.as_str(), c.args.as_slice()) {
                    (operators::INDEX, [base, key]) => match (row(base), &key.expr) {
                        (Some(new), Expr::Literal(LiteralValue::String(s))) => Plan::Col {
                            new,
                            name: s.inner().to_string(),
                        },
                        _ => return None,
                    },
                    (operators::IN, [col, list]) => match (&col.expr, &list.expr) {
                        (Expr::Literal(LiteralValue::String(s)), Expr::Ident(l)) if l == "changed" => {
                            Plan::InChanged(s.inner().to_string())
                        }
                        _ => return None,
                    },
                    (operators::LOGICAL_NOT, [_]) => Plan::Not(arg(0)?),
                    (operators::LOGICAL_AND, [_, _]) => Plan::And(arg(0)?, arg(1)?),
                    (operators::LOGICAL_OR, [_, _]) => Plan::Or(arg(0)?, arg(1)?),
                    (name, [_, _]) => {
                        let cmp = match name {
                            operators::EQUALS => Cmp::Eq,
                            operators::NOT_EQUALS => Cmp::Ne,
                            operators::LESS => Cmp::Lt,
                            operators::LESS_EQUALS => Cmp::Le,
                            operators::GREATER => Cmp::Gt,
                            operators::GREATER_EQUALS => Cmp::Ge,
                            _ => return None,
                        };
                        Plan::Cmp(cmp, arg(0)?, arg(1)?)
                    }
                    _ => return None,
                }
            }
            _ => return None,
        })
    }

    /// The result when the plan is sure of it; `None` means "evaluate with CEL".
    pub(super) fn eval(&self, f: &Facts<'_>) -> Option<bool> {
        match self.value(f)? {
            V::Bool(b) => Some(b),
            _ => None,
        }
    }

    fn value<'a>(&'a self, f: &Facts<'a>) -> Option<V<'a>> {
        Some(match self {
            Plan::Lit(l) => match l {
                Lit::Null => V::Null,
                Lit::Bool(b) => V::Bool(*b),
                Lit::Int(i) => V::Int(*i),
                Lit::UInt(u) => V::UInt(*u),
                Lit::Float(x) => V::Float(*x),
                Lit::Str(s) => V::Str(s),
            },
            Plan::Op => V::Str(f.op.as_str()),
            Plan::Table => V::Str(f.table),
            Plan::Meta(MetaField::CommitTime) => V::Str(f.commit_time),
            Plan::Meta(MetaField::Xid) => V::Int(i64::from(f.xid)),
            Plan::Col { new, name } => {
                let (row, fallback) = if *new { (f.new, f.full_old) } else { (f.old, None) };
                scalar(column(row?, fallback, name)?)?
            }
            Plan::Has { new, name } => {
                let (row, fallback) = if *new { (f.new, f.full_old) } else { (f.old, None) };
                V::Bool(column(row?, fallback, name).is_some())
            }
            Plan::InChanged(col) => V::Bool(f.changed?.contains(&col.as_str())),
            Plan::Not(x) => match x.value(f)? {
                V::Bool(b) => V::Bool(!b),
                _ => return None,
            },
            Plan::And(a, b) => match a.value(f)? {
                V::Bool(false) => V::Bool(false),
                V::Bool(true) => match b.value(f)? {
                    V::Bool(b) => V::Bool(b),
                    _ => return None,
                },
                _ => return None,
            },
            Plan::Or(a, b) => match a.value(f)? {
                V::Bool(true) => V::Bool(true),
                V::Bool(false) => match b.value(f)? {
                    V::Bool(b) => V::Bool(b),
                    _ => return None,
                },
                _ => return None,
            },
            Plan::Cmp(op, a, b) => V::Bool(compare(*op, a.value(f)?, b.value(f)?)?),
        })
    }
}

/// A column as the CEL row map holds it: the row's value, or the fallback row's for an
/// unchanged TOAST value; `None` when the row has no such column or neither has a value.
fn column<'a>(row: &'a Row, fallback: Option<&'a Row>, name: &str) -> Option<&'a Json> {
    let (_, v) = row.iter().find(|(c, _)| &**c == name)?;
    match v {
        ColValue::Value(v) => Some(v),
        ColValue::Unchanged => super::render::value_at(fallback, usize::MAX, name),
    }
}

/// A JSON scalar as CEL sees it (see `condition::json_value`); lists and maps, also those
/// kept as their text, are left to CEL.
fn scalar(v: &Json) -> Option<V<'_>> {
    Some(match v {
        Json::Null => V::Null,
        Json::Bool(b) => V::Bool(*b),
        Json::Number(n) => {
            if crate::decode::json::deep(v).is_some() {
                return None;
            } else if let Some(i) = n.as_i64() {
                V::Int(i)
            } else if let Some(u) = n.as_u64() {
                V::UInt(u)
            } else {
                V::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => V::Str(s),
        Json::Array(_) | Json::Object(_) => return None,
    })
}

/// Two numbers as CEL compares them, or `None` when either is not a number.
fn numeric_order(a: V<'_>, b: V<'_>) -> Option<Option<std::cmp::Ordering>> {
    use std::cmp::Ordering;
    Some(match (a, b) {
        (V::Int(x), V::Int(y)) => Some(x.cmp(&y)),
        (V::UInt(x), V::UInt(y)) => Some(x.cmp(&y)),
        (V::Float(x), V::Float(y)) => x.partial_cmp(&y),
        (V::Int(x), V::UInt(y)) => Some(u64::try_from(x).map_or(Ordering::Less, |x| x.cmp(&y))),
        (V::UInt(x), V::Int(y)) => Some(i64::try_from(x).map_or(Ordering::Greater, |x| x.cmp(&y))),
        (V::Int(x), V::Float(y)) => (x as f64).partial_cmp(&y),
        (V::UInt(x), V::Float(y)) => (x as f64).partial_cmp(&y),
        (V::Float(x), V::Int(y)) => x.partial_cmp(&(y as f64)),
        (V::Float(x), V::UInt(y)) => x.partial_cmp(&(y as f64)),
        _ => return None,
    })
}

/// `a op b` when both are of a kind the plan compares like CEL; `None` otherwise
/// (mixed kinds, NaN), which leaves the expression to CEL.
fn compare(op: Cmp, a: V<'_>, b: V<'_>) -> Option<bool> {
    use std::cmp::Ordering;
    let order = match numeric_order(a, b) {
        Some(o) => o?,
        None => match (a, b) {
            (V::Str(x), V::Str(y)) => x.cmp(y),
            (V::Bool(x), V::Bool(y)) if matches!(op, Cmp::Eq | Cmp::Ne) => x.cmp(&y),
            (V::Null, V::Null) if matches!(op, Cmp::Eq | Cmp::Ne) => Ordering::Equal,
            _ => return None,
        },
    };
    Some(match op {
        Cmp::Eq => order == Ordering::Equal,
        Cmp::Ne => order != Ordering::Equal,
        Cmp::Lt => order == Ordering::Less,
        Cmp::Le => order != Ordering::Greater,
        Cmp::Gt => order == Ordering::Greater,
        Cmp::Ge => order != Ordering::Less,
    })
}

#[cfg(test)]
mod tests;
