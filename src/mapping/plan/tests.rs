use std::sync::Arc;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::super::condition::Condition;
use super::*;
use crate::config::Op;

/// Literals and variables of every kind a plan meets, including the awkward ones: big
/// unsigned numbers, decimals kept as text, NaN-free floats, nulls, lists.
const ATOMS: [&str; 20] = [
    "0",
    "1",
    "-1",
    "10",
    "0.0",
    "19.99",
    "1e20",
    "18446744073709551615u",
    "'a'",
    "'approved'",
    "''",
    "true",
    "false",
    "null",
    "op",
    "table",
    "meta.xid",
    "meta.commit_time",
    "meta.lsn",
    "[1]",
];
const COLUMNS: [&str; 6] = ["qty", "amount", "status", "flag", "big", "missing"];
const CMPS: [&str; 6] = ["==", "!=", "<", "<=", ">", ">="];

fn atom(rng: &mut StdRng) -> String {
    if rng.gen_bool(0.5) {
        ATOMS[rng.gen_range(0..ATOMS.len())].to_string()
    } else {
        let row = if rng.gen_bool(0.5) { "new" } else { "old" };
        let col = COLUMNS[rng.gen_range(0..COLUMNS.len())];
        if rng.gen_bool(0.8) {
            format!("{row}.{col}")
        } else {
            format!("{row}['{col}']")
        }
    }
}

fn boolean(rng: &mut StdRng, depth: u32) -> String {
    let pick = if depth == 0 {
        rng.gen_range(0..3)
    } else {
        rng.gen_range(0..7)
    };
    match pick {
        0 => format!("{} {} {}", atom(rng), CMPS[rng.gen_range(0..6)], atom(rng)),
        1 => format!(
            "has({}.{})",
            if rng.gen_bool(0.5) { "new" } else { "old" },
            COLUMNS[rng.gen_range(0..COLUMNS.len())]
        ),
        2 => format!("'{}' in changed", COLUMNS[rng.gen_range(0..COLUMNS.len())]),
        3 => format!("!({})", boolean(rng, depth - 1)),
        4 | 5 => format!("({}) && ({})", boolean(rng, depth - 1), boolean(rng, depth - 1)),
        _ => format!("({}) || ({})", boolean(rng, depth - 1), boolean(rng, depth - 1)),
    }
}

fn json(text: &str) -> Json {
    serde_json::from_str(text).unwrap()
}

/// A column value of any kind, or an unchanged TOAST value; `None` leaves it out.
fn column_value(rng: &mut StdRng) -> Option<ColValue> {
    let v = match rng.gen_range(0..12) {
        0 => json("0"),
        1 => json("5"),
        2 => json("-3"),
        3 => json("19.990"),
        4 => json("0.5"),
        5 => json("18446744073709551615"),
        6 => json("123456789012345678901234567890"),
        7 => json("\"approved\""),
        8 => json("true"),
        9 => Json::Null,
        10 => json("[1]"),
        _ => return Some(ColValue::Unchanged).filter(|_| rng.gen_bool(0.5)),
    };
    Some(ColValue::Value(v))
}

fn row(rng: &mut StdRng) -> Row {
    COLUMNS
        .iter()
        .filter_map(|c| column_value(rng).map(|v| (Arc::from(*c), v)))
        .collect()
}

#[test]
fn plans_agree_with_cel_on_generated_expressions_and_rows() {
    let mut rng = StdRng::seed_from_u64(0x5eed);
    let (mut answered, mut total, mut planned) = (0, 0, 0);
    for _ in 0..1500 {
        let source = boolean(&mut rng, 3);
        let c = Condition::compile(&source).unwrap_or_else(|e| panic!("{source}: {e}"));
        if !c.has_plan() {
            continue;
        }
        planned += 1;
        for _ in 0..20 {
            let op = [Op::Insert, Op::Update, Op::Delete][rng.gen_range(0..3)];
            let new = (op != Op::Delete).then(|| row(&mut rng));
            let old = (op != Op::Insert && rng.gen_bool(0.8)).then(|| row(&mut rng));
            let changed: Vec<&str> = COLUMNS.iter().copied().filter(|_| rng.gen_bool(0.3)).collect();
            let facts = Facts {
                op,
                table: "public.stock",
                new: new.as_ref(),
                old: old.as_ref(),
                full_old: old.as_ref().filter(|_| rng.gen_bool(0.7)),
                changed: rng.gen_bool(0.8).then_some(changed.as_slice()),
                commit_time: "2026-11-22T10:00:00.123456Z",
                commit_lsn: 0x16B3748,
                xid: 731,
            };
            total += 1;
            if let Some(known) = c.eval_plan(&facts) {
                answered += 1;
                assert_eq!(
                    c.eval_cel(&facts),
                    Ok(known),
                    "{source} on {op:?} new={new:?} old={old:?} changed={:?}",
                    facts.changed
                );
            }
        }
    }
    // The generator must exercise the plan, not just CEL.
    assert!(planned > 500, "only {planned} expressions were planned");
    assert!(
        answered * 3 > total,
        "the plan answered only {answered} of {total}"
    );
}

#[test]
fn common_rule_forms_are_planned_and_answered_without_cel() {
    let new: Row = vec![
        (Arc::from("status"), ColValue::Value(json("\"approved\""))),
        (Arc::from("amount"), ColValue::Value(json("12.35"))),
        (Arc::from("qty"), ColValue::Value(json("11"))),
    ];
    let old: Row = vec![
        (Arc::from("status"), ColValue::Value(json("\"draft\""))),
        (Arc::from("amount"), ColValue::Value(json("12.34"))),
        (Arc::from("qty"), ColValue::Value(json("10"))),
    ];
    let changed = ["status", "amount", "qty"];
    let facts = Facts {
        op: Op::Update,
        table: "public.prices",
        new: Some(&new),
        old: Some(&old),
        full_old: Some(&old),
        changed: Some(&changed),
        commit_time: "2026-11-22T10:00:00.123456Z",
        commit_lsn: 0x16B3748,
        xid: 731,
    };
    for (source, want) in [
        ("op == 'update' && new.status == 'approved'", true),
        (
            "new.amount > 0.0 && (op == 'insert' || new.amount != old.amount)",
            true,
        ),
        ("new.qty > old.qty || new.qty <= 0", true),
        ("new.qty <= 0 && (op == 'insert' || old.qty > 0)", false),
        (
            "'status' in changed && old.status != 'approved' && has(new.status)",
            true,
        ),
        (
            "!(new.amount >= 100) && table == 'public.prices' && meta.xid > 700",
            true,
        ),
    ] {
        let c = Condition::compile(source).unwrap();
        assert!(c.has_plan(), "{source}");
        assert_eq!(c.eval_plan(&facts), Some(want), "{source}");
        assert_eq!(c.eval(&facts), Ok(want), "{source}");
    }
    // Outside the subset: CEL alone, same answers.
    for source in ["size(new) > 1", "new.status.startsWith('app')", "meta.lsn != ''"] {
        let c = Condition::compile(source).unwrap();
        assert!(!c.has_plan(), "{source}");
        assert_eq!(c.eval(&facts), Ok(true), "{source}");
    }
}
