//! Arithmetic in `when` over numbers of any column type.
//!
//! A `numeric` value is an int in CEL when it is whole and a double when it is not, and
//! CEL refuses arithmetic that mixes the two (`new.stocked - new.reserved` failed for 2
//! and 0.5, and worked for 2 and 1). The operators of a condition are rewritten, when it
//! is compiled, into calls of functions that do what CEL does, except that an int or
//! uint beside a double is taken as a double: the result then depends on the values, not
//! on how they happen to be spelled. Everything else (strings, lists, overflow, division
//! by zero) is CEL's own operator.

use cel::common::ast::{EntryExpr, Expr, IdedExpr};
use cel::extractors::Arguments;
use cel::{Context, ExecutionError, ResolveResult, Value};

/// CEL's arithmetic operators and the functions that stand in for them.
const OPERATORS: [(&str, &str); 5] = [
    ("_+_", "walhook.add"),
    ("_-_", "walhook.sub"),
    ("_*_", "walhook.mul"),
    ("_/_", "walhook.div"),
    ("_%_", "walhook.rem"),
];

/// Rewrites every arithmetic operator in `e` into its stand-in; whether there was one.
pub fn rewrite(e: &mut IdedExpr) -> bool {
    match &mut e.expr {
        Expr::Call(c) => {
            let mut found = false;
            if c.target.is_none() && c.args.len() == 2 {
                if let Some((_, f)) = OPERATORS.iter().find(|(op, _)| *op == c.func_name) {
                    c.func_name = (*f).to_string();
                    found = true;
                }
            }
            if let Some(t) = &mut c.target {
                found |= rewrite(t);
            }
            for a in &mut c.args {
                found |= rewrite(a);
            }
            found
        }
        Expr::Comprehension(c) => [
            &mut c.iter_range,
            &mut c.accu_init,
            &mut c.loop_cond,
            &mut c.loop_step,
            &mut c.result,
        ]
        .into_iter()
        .fold(false, |found, x| rewrite(x) | found),
        Expr::Select(s) => rewrite(&mut s.operand),
        Expr::List(l) => l.elements.iter_mut().fold(false, |found, x| rewrite(x) | found),
        Expr::Map(m) => m
            .entries
            .iter_mut()
            .fold(false, |found, x| entry(&mut x.expr) | found),
        Expr::Struct(s) => s
            .entries
            .iter_mut()
            .fold(false, |found, x| entry(&mut x.expr) | found),
        Expr::Ident(_) | Expr::Literal(_) | Expr::Unspecified => false,
    }
}

fn entry(e: &mut EntryExpr) -> bool {
    match e {
        EntryExpr::StructField(f) => rewrite(&mut f.value),
        EntryExpr::MapEntry(m) => rewrite(&mut m.key) | rewrite(&mut m.value),
    }
}

/// Declares the stand-ins in `ctx`.
pub fn register(ctx: &mut Context) -> Result<(), String> {
    let declared = [
        ctx.add_function("walhook.add", |Arguments(a): Arguments| {
            apply(&a, |x, y| x + y, |x, y| x + y)
        }),
        ctx.add_function("walhook.sub", |Arguments(a): Arguments| {
            apply(&a, |x, y| x - y, |x, y| x - y)
        }),
        ctx.add_function("walhook.mul", |Arguments(a): Arguments| {
            apply(&a, |x, y| x * y, |x, y| x * y)
        }),
        ctx.add_function("walhook.div", |Arguments(a): Arguments| {
            apply(&a, |x, y| x / y, |x, y| x / y)
        }),
        ctx.add_function("walhook.rem", |Arguments(a): Arguments| {
            apply(&a, |x, y| x % y, |x, y| x % y)
        }),
    ];
    declared
        .into_iter()
        .try_for_each(|r| r.map_err(|e| e.to_string()))
}

/// `cel` on two values, or `float` on both as doubles when one is a double and the other
/// an int or uint.
fn apply(
    args: &[Value],
    cel: fn(Value, Value) -> ResolveResult,
    float: fn(f64, f64) -> f64,
) -> ResolveResult {
    let [a, b] = args else {
        return Err(ExecutionError::function_error("arithmetic", "takes two values"));
    };
    match (as_double(a, b), as_double(b, a)) {
        (Some(x), Some(y)) => Ok(Value::Float(float(x, y))),
        _ => cel(a.clone(), b.clone()),
    }
}

/// `v` as a double, when it or `other` is one and both are numbers.
fn as_double(v: &Value, other: &Value) -> Option<f64> {
    let number = |v: &Value| matches!(v, Value::Int(_) | Value::UInt(_) | Value::Float(_));
    let float = matches!(v, Value::Float(_)) || matches!(other, Value::Float(_));
    if !(float && number(v) && number(other)) {
        return None;
    }
    match v {
        Value::Int(i) => Some(*i as f64),
        Value::UInt(u) => Some(*u as f64),
        Value::Float(f) => Some(*f),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn eval(source: &str, vars: &[(&str, Value)]) -> ResolveResult {
        let env = std::sync::Arc::new(cel::Env::stdlib());
        let program = env.compile(source).unwrap();
        let mut expr = program.expression().clone();
        rewrite(&mut expr);
        let mut ctx = Context::with_env(env);
        register(&mut ctx).unwrap();
        for (name, v) in vars {
            ctx.add_variable_from_value(*name, v.clone());
        }
        Value::resolve(&expr, &ctx)
    }

    #[test]
    fn ints_beside_doubles_are_doubles() {
        let q = |a: Value, b: Value| eval("a - b <= 0.0", &[("a", a), ("b", b)]);
        assert_eq!(q(Value::Int(2), Value::Float(0.5)).unwrap(), Value::Bool(false));
        assert_eq!(q(Value::Float(0.5), Value::Int(2)).unwrap(), Value::Bool(true));
        assert_eq!(q(Value::UInt(1), Value::Float(1.0)).unwrap(), Value::Bool(true));
        assert_eq!(
            eval("a * 2 > 201.0", &[("a", Value::Float(100.5))]).unwrap(),
            Value::Bool(false)
        );
        assert_eq!(
            eval("a / 2", &[("a", Value::Float(5.0))]).unwrap(),
            Value::Float(2.5)
        );
        assert_eq!(
            eval("a % 2.0", &[("a", Value::Int(5))]).unwrap(),
            Value::Float(1.0)
        );
    }

    #[test]
    fn everything_else_is_cels_own() {
        // Ints stay ints (integer division, overflow is an error), strings and lists
        // concatenate, and macros that add inside keep working.
        assert_eq!(eval("7 / 2", &[]).unwrap(), Value::Int(3));
        assert!(eval("a + 1", &[("a", Value::Int(i64::MAX))]).is_err());
        assert!(eval("1 / 0", &[]).is_err());
        assert_eq!(eval("'a' + 'b' == 'ab'", &[]).unwrap(), Value::Bool(true));
        assert_eq!(eval("[1] + [2.5] == [1, 2.5]", &[]).unwrap(), Value::Bool(true));
        assert_eq!(
            eval("[1, 2].map(x, x * 1.5) == [1.5, 3.0]", &[]).unwrap(),
            Value::Bool(true)
        );
        assert!(eval("'a' - 1", &[]).is_err());
        assert!(eval("null + 1.0", &[]).is_err());
    }
}
