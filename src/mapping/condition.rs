//! Conditions: the `when` expression of a rule (CEL), compiled when the config loads and
//! evaluated per change over `op`, `table`, `old`, `new`, `changed` and `meta`, and the
//! `transition` short form.
//!
//! Values reach CEL by their JSON type: int8 and numeric columns are numbers (an int
//! when they fit one, else a double), so `new.amount > 10` compares as numbers whatever
//! the column's type. A row image is a map of column name to value; an unchanged TOAST
//! value the server did not send is left out of `new` (so `has(new.description)` is
//! false) unless the full old row supplies it.

use std::collections::HashMap;
use std::sync::Arc;

use cel::common::ast::{Expr, IdedExpr};
use cel::objects::{Key, Map};
use cel::{Context, Env, Program, Value};
use serde_json::Value as Json;

use super::{ColValue, Row};
use crate::config::Op;

mod arith;
mod bounds;

/// The variables an expression may use.
pub const VARIABLES: [&str; 6] = ["op", "table", "old", "new", "changed", "meta"];

/// A compiled `when` expression.
pub struct Condition {
    program: Program,
    env: Arc<Env>,
    uses: Uses,
    /// The only columns of `new`/`old` the expression reads (by name, as CEL keys), when
    /// it reads them by constant name only; `None` when it uses a row as a whole.
    reads: Option<Vec<(String, Key)>>,
    /// The same expression as a plan evaluated without CEL, when it is in the plan's
    /// subset (most are); CEL answers what the plan leaves open.
    plan: Option<super::plan::Plan>,
    /// The expression with its arithmetic rewritten (`arith`), when it has any.
    arith: Option<IdedExpr>,
}

/// Which variables an expression reads, so evaluation builds only those.
#[derive(Debug, Default, Clone, Copy)]
struct Uses {
    old: bool,
    new: bool,
    changed: bool,
    meta: bool,
}

/// The facts about one change that a condition sees.
pub struct Facts<'a> {
    pub op: Op,
    pub table: &'a str,
    pub new: Option<&'a Row>,
    /// The old row: full, or only the identity columns.
    pub old: Option<&'a Row>,
    /// The full old row, when the change carried one (fills unchanged TOAST values).
    pub full_old: Option<&'a Row>,
    /// Names of the changed columns: every column of an insert, those whose value
    /// differs in an update with a full old row; `None` when it cannot be known.
    pub changed: Option<&'a [&'a str]>,
    pub commit_time: &'a str,
    pub commit_lsn: u64,
    pub xid: u32,
}

/// A CEL parse error on one line, as a config problem is shown: each error's position
/// and message ("at 1:12: Syntax error: ..."), without the echo of the expression and
/// its caret that CEL draws below.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('|'))
        .map(|l| match l.strip_prefix("ERROR: <input>:") {
            Some(rest) => format!("at {rest}"),
            None => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" / ")
}

impl Condition {
    /// Compiles `source`; the error says what is wrong, where, and what may be used. An
    /// expression past the size limits (`bounds`) is refused before CEL parses it.
    pub fn compile(source: &str) -> Result<Condition, String> {
        bounds::check(source)?;
        on_parse_stack(|| Condition::compile_within_bounds(source))
    }

    /// Compiles `source`, which `bounds` took.
    fn compile_within_bounds(source: &str) -> Result<Condition, String> {
        let env = Arc::new(Env::stdlib());
        let program = env
            .compile(source)
            .map_err(|e| format!("not a valid CEL expression: {}", one_line(&e.to_string())))?;
        let refs = program.references();
        let unknown: Vec<&str> = refs
            .variables()
            .into_iter()
            .filter(|v| !VARIABLES.contains(v))
            .collect();
        if !unknown.is_empty() {
            return Err(format!(
                "unknown name {} (a condition may use {}; quote text as 'text')",
                unknown.join(", "),
                VARIABLES.join(", ")
            ));
        }
        let uses = Uses {
            old: refs.has_variable("old"),
            new: refs.has_variable("new"),
            changed: refs.has_variable("changed"),
            meta: refs.has_variable("meta"),
        };
        let reads = (!whole_row(program.expression())).then(|| {
            let mut cols = Vec::new();
            collect_columns(program.expression(), &mut cols);
            cols.sort();
            cols.dedup();
            cols.into_iter()
                .map(|c| {
                    let key = Key::String(Arc::new(c.clone()));
                    (c, key)
                })
                .collect()
        });
        let plan = super::plan::Plan::compile(program.expression());
        let mut rewritten = program.expression().clone();
        let arith = arith::rewrite(&mut rewritten).then_some(rewritten);
        Ok(Condition {
            program,
            env,
            uses,
            reads,
            plan,
            arith,
        })
    }

    /// Whether the plan (no CEL) handles this expression.
    #[cfg(test)]
    pub(super) fn has_plan(&self) -> bool {
        self.plan.is_some()
    }

    /// The plan's answer alone (`None`: it leaves this change to CEL).
    #[cfg(test)]
    pub(super) fn eval_plan(&self, f: &Facts<'_>) -> Option<bool> {
        self.planned(f)
    }

    /// Whether the expression reads the old row or the changed columns, which an update
    /// carries only when its table has REPLICA IDENTITY FULL.
    pub fn needs_old(&self) -> bool {
        self.uses.old || self.uses.changed
    }

    /// Columns named as `new.<col>`, `old.<col>`, `new["<col>"]` or `old["<col>"]`.
    pub fn columns(&self) -> Vec<String> {
        let mut out = Vec::new();
        collect_columns(self.program.expression(), &mut out);
        out.sort();
        out.dedup();
        out
    }

    /// Evaluates the condition: Ok(true) fires, Ok(false) does not, Err says why the
    /// expression could not be evaluated for this change.
    pub fn eval(&self, f: &Facts<'_>) -> Result<bool, String> {
        match self.planned(f) {
            Some(known) => Ok(known),
            None => self.eval_cel(f),
        }
    }

    /// The plan's answer, when there is a plan and it is sure. An expression using
    /// `changed` fails as a whole when `changed` is unknown (CEL's context cannot be
    /// built), even where `&&` or `||` would skip the part that reads it.
    fn planned(&self, f: &Facts<'_>) -> Option<bool> {
        if self.uses.changed && f.changed.is_none() {
            return None;
        }
        self.plan.as_ref()?.eval(f)
    }

    /// Evaluates the condition with CEL only.
    pub(super) fn eval_cel(&self, f: &Facts<'_>) -> Result<bool, String> {
        let mut ctx = Context::with_env(self.env.clone());
        ctx.add_variable_from_value("op", f.op.as_str());
        ctx.add_variable_from_value("table", f.table);
        let reads = self.reads.as_deref();
        if self.uses.new {
            ctx.add_variable_from_value("new", row_value(f.new, f.full_old, reads));
        }
        if self.uses.old {
            ctx.add_variable_from_value("old", row_value(f.old, None, reads));
        }
        if self.uses.changed {
            let list = match f.changed {
                Some(cols) => Value::List(Arc::new(cols.iter().map(|c| Value::from(*c)).collect())),
                None => return Err("`changed` is unknown: the old row was not sent".into()),
            };
            ctx.add_variable_from_value("changed", list);
        }
        if self.uses.meta {
            let mut meta: HashMap<Key, Value> = HashMap::with_capacity(3);
            // RFC 3339 in UTC with fixed digits: compares in time order as text.
            meta.insert(Key::from("commit_time"), Value::from(f.commit_time));
            meta.insert(
                Key::from("lsn"),
                Value::from(crate::event::format_lsn(f.commit_lsn)),
            );
            meta.insert(Key::from("xid"), Value::Int(i64::from(f.xid)));
            ctx.add_variable_from_value("meta", Value::Map(Map { map: Arc::new(meta) }));
        }
        let result = match &self.arith {
            Some(expr) => {
                arith::register(&mut ctx)?;
                Value::resolve(expr, &ctx)
            }
            None => self.program.execute(&ctx),
        };
        match result {
            Ok(Value::Bool(b)) => Ok(b),
            Ok(other) => Err(format!(
                "the expression gave {} instead of true or false",
                describe(&other)
            )),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// The stack a condition is compiled on: CEL's parser recurses several frames per
/// bracket, and a debug build's frames are large (a dozen brackets overflow 2 MiB).
/// Within `bounds`, a release build needs a small part of it.
const PARSE_STACK: usize = 64 * 1024 * 1024;

/// Runs `compile` on a thread of its own with `PARSE_STACK` of stack, so that the
/// caller's stack (a tokio worker's, at a reload) does not matter. Conditions are
/// compiled when a config loads, never per change.
fn on_parse_stack<T: Send>(compile: impl FnOnce() -> Result<T, String> + Send) -> Result<T, String> {
    std::thread::scope(|scope| {
        std::thread::Builder::new()
            .name("walhook-cel".into())
            .stack_size(PARSE_STACK)
            .spawn_scoped(scope, compile)
            .map_err(|e| format!("cannot start a thread to compile it: {e}"))?
            .join()
            .unwrap_or_else(|_| Err("compiling it failed".into()))
    })
}

/// Whether `new` or `old` is used other than by a constant column name (`new.qty`,
/// `new["qty"]`, `has(new.qty)`): then the whole row must be built.
fn whole_row(e: &IdedExpr) -> bool {
    let is_row = |x: &IdedExpr| matches!(&x.expr, Expr::Ident(r) if r == "new" || r == "old");
    match &e.expr {
        Expr::Ident(r) => r == "new" || r == "old",
        Expr::Select(s) => !is_row(&s.operand) && whole_row(&s.operand),
        Expr::Call(c) => {
            if c.func_name == "_[_]" {
                if let [base, key] = c.args.as_slice() {
                    if is_row(base)
                        && matches!(
                            &key.expr,
                            Expr::Literal(cel::common::ast::LiteralValue::String(_))
                        )
                    {
                        return false;
                    }
                }
            }
            c.target.as_deref().is_some_and(whole_row) || c.args.iter().any(whole_row)
        }
        Expr::Comprehension(c) => [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result]
            .into_iter()
            .any(whole_row),
        Expr::List(l) => l.elements.iter().any(whole_row),
        Expr::Map(m) => m.entries.iter().any(|x| entry_whole_row(&x.expr)),
        Expr::Struct(s) => s.entries.iter().any(|x| entry_whole_row(&x.expr)),
        Expr::Literal(_) | Expr::Unspecified => false,
    }
}

fn collect_columns(e: &IdedExpr, out: &mut Vec<String>) {
    match &e.expr {
        Expr::Select(s) => {
            if let Expr::Ident(root) = &s.operand.expr {
                if root == "new" || root == "old" {
                    out.push(s.field.clone());
                }
            }
            collect_columns(&s.operand, out);
        }
        Expr::Call(c) => {
            if c.func_name == "_[_]" {
                if let [base, key] = c.args.as_slice() {
                    if let (Expr::Ident(root), Expr::Literal(lit)) = (&base.expr, &key.expr) {
                        if root == "new" || root == "old" {
                            if let cel::common::ast::LiteralValue::String(s) = lit {
                                out.push(s.inner().to_string());
                            }
                        }
                    }
                }
            }
            if let Some(t) = &c.target {
                collect_columns(t, out);
            }
            for a in &c.args {
                collect_columns(a, out);
            }
        }
        Expr::Comprehension(c) => {
            for x in [&c.iter_range, &c.accu_init, &c.loop_cond, &c.loop_step, &c.result] {
                collect_columns(x, out);
            }
        }
        Expr::List(l) => l.elements.iter().for_each(|x| collect_columns(x, out)),
        Expr::Map(m) => m.entries.iter().for_each(|x| entry_columns(&x.expr, out)),
        Expr::Struct(s) => s.entries.iter().for_each(|x| entry_columns(&x.expr, out)),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => {}
    }
}

fn entry_columns(e: &cel::common::ast::EntryExpr, out: &mut Vec<String>) {
    match e {
        cel::common::ast::EntryExpr::StructField(f) => collect_columns(&f.value, out),
        cel::common::ast::EntryExpr::MapEntry(m) => {
            collect_columns(&m.key, out);
            collect_columns(&m.value, out);
        }
    }
}

fn entry_whole_row(e: &cel::common::ast::EntryExpr) -> bool {
    match e {
        cel::common::ast::EntryExpr::StructField(f) => whole_row(&f.value),
        cel::common::ast::EntryExpr::MapEntry(m) => whole_row(&m.key) || whole_row(&m.value),
    }
}

/// A short name of a CEL value's type for error messages.
fn describe(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Int(_) | Value::UInt(_) | Value::Float(_) => "a number",
        Value::String(_) => "a string",
        Value::List(_) => "a list",
        Value::Map(_) => "a map",
        _ => "a value",
    }
}

/// A row image as a CEL map; `None` is null. Unchanged TOAST values come from
/// `fallback` or are left out. With `only`, just those columns (what the expression reads).
fn row_value(row: Option<&Row>, fallback: Option<&Row>, only: Option<&[(String, Key)]>) -> Value {
    let Some(row) = row else { return Value::Null };
    if let Some(only) = only {
        let mut map: HashMap<Key, Value> = HashMap::with_capacity(only.len());
        for (col, key) in only {
            let v = super::render::value_at(Some(row), usize::MAX, col)
                .or_else(|| super::render::value_at(fallback, usize::MAX, col));
            let present = row.iter().any(|(c, _)| &**c == col.as_str());
            if let (Some(v), true) = (v, present) {
                map.insert(key.clone(), json_value(v));
            }
        }
        return Value::Map(Map { map: Arc::new(map) });
    }
    let mut map: HashMap<Key, Value> = HashMap::with_capacity(row.len());
    for (i, (col, v)) in row.iter().enumerate() {
        let v = match v {
            ColValue::Value(v) => v,
            ColValue::Unchanged => match super::render::value_at(fallback, i, col) {
                Some(v) => v,
                None => continue,
            },
        };
        map.insert(Key::String(Arc::new(col.to_string())), json_value(v));
    }
    Value::Map(Map { map: Arc::new(map) })
}

/// A JSON value as CEL sees it: numbers as int, uint or double; a json value kept as its
/// text (`decode::json::deep`) as its tree when it has one (a large jsonb value), else
/// (nested too deep for a tree) as a string of its JSON text.
pub fn json_value(v: &Json) -> Value {
    match v {
        Json::Null => Value::Null,
        Json::Bool(b) => Value::Bool(*b),
        Json::Number(n) => {
            if let Some(text) = crate::decode::json::deep(v) {
                match serde_json::from_str::<Json>(text) {
                    Ok(tree) => json_value(&tree),
                    Err(_) => Value::String(Arc::new(text.to_owned())),
                }
            } else if let Some(i) = n.as_i64() {
                Value::Int(i)
            } else if let Some(u) = n.as_u64() {
                Value::UInt(u)
            } else {
                // Decimals (numeric) and numbers past 64 bits compare as doubles.
                Value::Float(n.as_f64().unwrap_or(f64::NAN))
            }
        }
        Json::String(s) => Value::String(Arc::new(s.clone())),
        Json::Array(a) => Value::List(Arc::new(a.iter().map(json_value).collect())),
        Json::Object(o) => {
            let map: HashMap<Key, Value> = o
                .iter()
                .map(|(k, v)| (Key::String(Arc::new(k.clone())), json_value(v)))
                .collect();
            Value::Map(Map { map: Arc::new(map) })
        }
    }
}

/// `transition = { column, to, from }`: fires when `column` moves into `to` (from
/// `from`, when given). An insert counts as a transition when `from` is not given.
pub struct Transition {
    pub column: String,
    to: Value,
    from: Option<Value>,
}

impl Transition {
    pub fn new(column: &str, to: &Json, from: Option<&Json>) -> Transition {
        Transition {
            column: column.to_string(),
            to: json_value(to),
            from: from.map(json_value),
        }
    }

    /// Whether the change is such a transition. An update needs its full old row;
    /// without one the result is an error.
    pub fn holds(&self, op: Op, new: Option<&Row>, full_old: Option<&Row>) -> Result<bool, String> {
        let col = &self.column;
        let new_v = new.and_then(|r| column_value(r, col));
        match op {
            // A row read by a backfill holds `to` already: it is there, as an insert is.
            Op::Insert | Op::Read => Ok(self.from.is_none() && new_v.as_ref() == Some(&self.to)),
            Op::Update | Op::Restore => {
                let Some(old) = full_old else {
                    return Err(format!(
                        "transition on {col:?} needs the old row, which was not sent"
                    ));
                };
                let old_v = column_value(old, col);
                let Some(new_v) = new_v.or_else(|| old_v.clone()) else {
                    return Err(format!("column {col:?} is not in the row"));
                };
                let moved = old_v.as_ref() != Some(&new_v) && new_v == self.to;
                Ok(moved && self.from.as_ref().is_none_or(|f| old_v.as_ref() == Some(f)))
            }
            Op::Delete | Op::Truncate => Ok(false),
        }
    }
}

/// The CEL value of one column; `None` when missing or an unchanged TOAST value.
fn column_value(row: &Row, col: &str) -> Option<Value> {
    super::render::value_at(Some(row), usize::MAX, col).map(json_value)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(pairs: &[(&str, Json)]) -> Row {
        pairs
            .iter()
            .map(|(k, v)| (Arc::from(*k), ColValue::Value(v.clone())))
            .collect()
    }

    fn facts<'a>(
        op: Op,
        new: Option<&'a Row>,
        old: Option<&'a Row>,
        changed: Option<&'a [&'a str]>,
    ) -> Facts<'a> {
        Facts {
            op,
            table: "public.stock",
            new,
            old,
            full_old: old,
            changed,
            commit_time: "2026-11-22T10:00:00.123456Z",
            commit_lsn: 0x16B3748,
            xid: 731,
        }
    }

    /// Numeric columns are ints when whole and doubles when not: arithmetic over them
    /// gives the same answer either way.
    #[test]
    fn arithmetic_over_whole_and_fractional_numbers_works() {
        let c = Condition::compile(
            "new.stocked - new.reserved <= 0 && (op == 'insert' || old.stocked - old.reserved > 0)",
        )
        .unwrap();
        let num = |s: &str| serde_json::from_str::<Json>(s).unwrap();
        let two = row(&[("stocked", num("2")), ("reserved", num("0.5"))]);
        let half = row(&[("stocked", num("0.5")), ("reserved", num("0.5"))]);
        assert!(c.eval(&facts(Op::Update, Some(&half), Some(&two), None)).unwrap());
        assert!(!c.eval(&facts(Op::Update, Some(&two), Some(&half), None)).unwrap());
        let c = Condition::compile("new.amount * 2 > 201").unwrap();
        let amount = |v: &str| row(&[("amount", num(v))]);
        for (v, fires) in [("100.5", false), ("100.75", true), ("101", true), ("100", false)] {
            let r = amount(v);
            assert_eq!(c.eval(&facts(Op::Insert, Some(&r), None, None)), Ok(fires), "{v}");
        }
    }

    #[test]
    fn the_issue_example_fires_only_on_the_crossing() {
        let c = Condition::compile("new.qty <= 0 && (op == 'insert' || old.qty > 0)").unwrap();
        let zero = row(&[("qty", Json::from(0))]);
        let five = row(&[("qty", Json::from(5))]);
        let minus = row(&[("qty", Json::from(-1))]);
        assert!(c
            .eval(&facts(Op::Update, Some(&zero), Some(&five), None))
            .unwrap());
        assert!(!c
            .eval(&facts(Op::Update, Some(&minus), Some(&zero), None))
            .unwrap());
        assert!(!c
            .eval(&facts(Op::Update, Some(&five), Some(&zero), None))
            .unwrap());
        assert!(c.eval(&facts(Op::Insert, Some(&zero), None, None)).unwrap());
        assert!(c.needs_old());
        assert_eq!(c.columns(), vec!["qty".to_string()]);
    }

    #[test]
    fn only_the_columns_read_are_built_unless_a_row_is_used_whole() {
        let static_reads = [
            "new.qty > 1",
            "new['qty'] > 1 && has(new.sku)",
            "old.qty < new.qty",
        ];
        for e in static_reads {
            let c = Condition::compile(e).unwrap();
            assert!(c.reads.is_some(), "{e}");
        }
        for e in ["'qty' in new", "size(new) > 1", "new == old", "[new][0].qty > 1"] {
            let c = Condition::compile(e).unwrap();
            assert!(c.reads.is_none(), "{e}");
        }
        let new = row(&[
            ("sku", Json::from("A")),
            ("qty", Json::from(5)),
            ("note", Json::from("x")),
        ]);
        let old = row(&[
            ("sku", Json::from("A")),
            ("qty", Json::from(2)),
            ("note", Json::from("y")),
        ]);
        for (e, want) in [
            ("new.qty > old.qty && has(new.sku)", true),
            ("has(new.missing)", false),
            ("'note' in new && size(new) == 3", true),
            ("new['qty'] == 5 && !has(old.missing)", true),
        ] {
            let c = Condition::compile(e).unwrap();
            assert_eq!(
                c.eval(&facts(Op::Update, Some(&new), Some(&old), None)).unwrap(),
                want,
                "{e}"
            );
        }
    }

    #[test]
    fn decimals_compare_as_numbers() {
        let amount: Json = serde_json::from_str("19.990").unwrap();
        let big: Json = serde_json::from_str("123456789012345678901234567890").unwrap();
        let r = row(&[("amount", amount), ("big", big)]);
        for (expr, want) in [
            ("new.amount > 10", true),
            ("new.amount == 19.99", true),
            ("new.amount < 19", false),
            ("new.big > 1000000", true),
        ] {
            let c = Condition::compile(expr).unwrap();
            assert_eq!(
                c.eval(&facts(Op::Insert, Some(&r), None, None)),
                Ok(want),
                "{expr}"
            );
        }
    }

    #[test]
    fn changed_meta_and_table_are_there() {
        let r = row(&[("title", Json::from("A"))]);
        let cols = ["title", "brand"];
        let c = Condition::compile(
            "'brand' in changed && table == 'public.stock' && meta.lsn == '0/16B3748' && meta.xid == 731 \
             && meta.commit_time > '2026-01-01T00:00:00Z' && new.title.matches('^[A-Z]$')",
        )
        .unwrap();
        assert_eq!(
            c.eval(&facts(Op::Update, Some(&r), Some(&r), Some(&cols))),
            Ok(true)
        );
        let err = c.eval(&facts(Op::Update, Some(&r), Some(&r), None)).unwrap_err();
        assert!(err.contains("changed"), "{err}");
    }

    #[test]
    fn runtime_failures_are_errors_not_panics() {
        let r = row(&[("qty", Json::from(1))]);
        for expr in ["new.missing > 0", "new.qty + 'x' == 1", "new.qty"] {
            let c = Condition::compile(expr).unwrap();
            assert!(
                c.eval(&facts(Op::Insert, Some(&r), None, None)).is_err(),
                "{expr}"
            );
        }
    }

    /// Expressions at the limits compile whatever the caller's stack (a reload compiles on
    /// a tokio worker), and evaluate within the stack of the thread the pipeline runs on
    /// (the main thread: 8 MiB); a debug build's frames are the largest.
    #[test]
    fn expressions_at_the_limits_compile_on_a_small_stack_and_evaluate() {
        let nested = format!("{}new.qty > 0{}", "(".repeat(60), ")".repeat(60));
        let sum = format!("{} == 60", vec!["new.qty"; 60].join(" + "));
        let calls = format!("{}new.qty{} == 1", "int(".repeat(30), ")".repeat(30));
        let compiled = std::thread::Builder::new()
            .stack_size(256 * 1024)
            .spawn(move || {
                [nested, sum, calls]
                    .iter()
                    .map(|e| Condition::compile(e).map(|_| ()))
                    .collect::<Result<Vec<()>, String>>()
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(compiled.map(|c| c.len()), Ok(3));
        let r = row(&[("qty", Json::from(1))]);
        let results = std::thread::Builder::new()
            .stack_size(8 * 1024 * 1024)
            .spawn(move || {
                let sum = format!("{} == 60", vec!["new.qty"; 60].join(" + "));
                let nested = format!("{}new.qty + 1 == 2{}", "(".repeat(60), ")".repeat(60));
                [sum, nested]
                    .iter()
                    .map(|e| {
                        Condition::compile(e)
                            .unwrap()
                            .eval(&facts(Op::Insert, Some(&r), None, None))
                    })
                    .collect::<Vec<_>>()
            })
            .unwrap()
            .join()
            .unwrap();
        assert_eq!(results, [Ok(true), Ok(true)]);
    }

    #[test]
    fn compile_errors_say_what_is_wrong() {
        let e = Condition::compile("new.qty <=").err().unwrap();
        assert!(e.starts_with("not a valid CEL expression"), "{e}");
        let e = Condition::compile("nwe.qty > 0").err().unwrap();
        assert!(
            e.contains("unknown name nwe") && e.contains("op, table, old, new, changed, meta"),
            "{e}"
        );
        let c = Condition::compile("new['title'] != old.brand || has(new.sku)").unwrap();
        assert_eq!(c.columns(), vec!["brand", "sku", "title"]);
    }

    #[test]
    fn transitions_fire_on_the_move_only() {
        let t = Transition::new("status", &Json::from("approved"), None);
        let draft = row(&[("status", Json::from("draft"))]);
        let approved = row(&[("status", Json::from("approved"))]);
        assert_eq!(t.holds(Op::Update, Some(&approved), Some(&draft)), Ok(true));
        assert_eq!(t.holds(Op::Update, Some(&approved), Some(&approved)), Ok(false));
        assert_eq!(t.holds(Op::Update, Some(&draft), Some(&approved)), Ok(false));
        assert_eq!(t.holds(Op::Insert, Some(&approved), None), Ok(true));
        assert!(t.holds(Op::Update, Some(&approved), None).is_err());
        let from = Transition::new("status", &Json::from("approved"), Some(&Json::from("review")));
        assert_eq!(from.holds(Op::Update, Some(&approved), Some(&draft)), Ok(false));
        assert_eq!(from.holds(Op::Insert, Some(&approved), None), Ok(false));
        let qty = Transition::new("qty", &Json::from(0), None);
        let zero: Json = serde_json::from_str("0.0").unwrap();
        assert_eq!(
            qty.holds(
                Op::Update,
                Some(&row(&[("qty", zero)])),
                Some(&row(&[("qty", Json::from(3))]))
            ),
            Ok(true)
        );
    }
}
