use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

use super::super::{doc, environment};
use super::*;

/// Bodies with every kind of value a template meets: strings with escapes and HTML
/// characters, integers, big integers, decimals, booleans, nulls, lists and maps.
const BODIES: [&str; 3] = [
    r#"{"id":"evt_1","type":"product.updated","timestamp":"2026-11-22T10:00:00.123456Z","data":{"table":"public.products","op":"update","key":{"id":7},"new":{"id":7,"sku":"SKU-7","title":"Chair \"Oslo\" <b>&'x'\n","price":19.90,"qty":3,"big":9223372036854775808,"flag":true,"nothing":null,"tags":["a","b\u00e9"],"nums":[1,-2],"attrs":{"color":"red"},"empty":""},"changed":["title","price"],"source":{"lsn":"0/16B3748","xid":731}}}"#,
    r#"{"id":"evt_2","type":"product.created","timestamp":"2026-11-22T10:00:01Z","data":{"table":"public.products","op":"insert","key":{"id":8},"new":{"id":8,"sku":"","title":"","price":0,"qty":0,"flag":false,"tags":[],"nums":[],"attrs":{}}}}"#,
    r#"{ "id" : "evt_3", "type":"stock.depleted","timestamp":"2026-11-22T10:00:02Z","data":{"table":"public.stock","op":"update","key":{"product_id":9,"warehouse":"w1"},"new":{"qty":-1,"tags":[{"a":1}],"nums":[1.5]},"changed":[]} }"#,
];

const PATHS: [&str; 27] = [
    "id",
    "type",
    "timestamp",
    "data",
    "data.table",
    "data.op",
    "data.key",
    "data.key.id",
    "data['table']",
    "data.new.sku",
    "data.new.title",
    "data.new.price",
    "data.new.qty",
    "data.new.big",
    "data.new.flag",
    "data.new.nothing",
    "data.new.tags",
    "data.new.tags[1]",
    "data.new.nums",
    "data.new.attrs",
    "data.new.empty",
    "data.changed",
    "data.changed[0]",
    "data.changed[5]",
    "data.missing",
    "nope",
    "range",
];

fn expr(rng: &mut StdRng, depth: u32) -> String {
    let pick = if depth == 0 {
        rng.gen_range(0..4)
    } else {
        rng.gen_range(0..10)
    };
    match pick {
        0 | 1 => PATHS[rng.gen_range(0..PATHS.len())].to_string(),
        2 => ["'x'", "': '", "''", "\"<&>\""][rng.gen_range(0..4)].to_string(),
        3 => ["42", "-1", "[]"][rng.gen_range(0..3)].to_string(),
        4 | 5 => format!("({} ~ {})", expr(rng, depth - 1), expr(rng, depth - 1)),
        6 => format!("({} or {})", expr(rng, depth - 1), expr(rng, depth - 1)),
        7 => format!("({})|tojson", expr(rng, depth - 1)),
        8 => format!("({})|join", expr(rng, depth - 1)),
        _ => format!("({})|join(', ')", expr(rng, depth - 1)),
    }
}

fn template(rng: &mut StdRng) -> String {
    let mut t = String::new();
    for _ in 0..rng.gen_range(1..4) {
        t.push_str(["", "{\"text\":", " - ", "\n", "é"][rng.gen_range(0..5)]);
        t.push_str(&format!("{{{{ {} }}}}", expr(rng, 3)));
    }
    t.push_str(["", "}", "\n", " \n"][rng.gen_range(0..4)]);
    t
}

#[test]
fn the_fast_path_renders_what_minijinja_renders() {
    let mut rng = StdRng::seed_from_u64(0xfa57);
    let (mut fast_ones, mut rendered, mut total) = (0, 0, 0);
    for _ in 0..3000 {
        let source = template(&mut rng);
        let Some(fast) = Fast::compile(&source) else {
            continue;
        };
        fast_ones += 1;
        let mut env = environment();
        env.add_template_owned("body", source.clone()).unwrap();
        let tmpl = env.get_template("body").unwrap();
        for body in BODIES {
            let d = doc::index(body.as_bytes()).unwrap();
            let id = "evt_x";
            total += 1;
            if let Rendered::Body(out) = fast.render(&d, id, usize::MAX) {
                rendered += 1;
                let want = tmpl.render(doc::context(id, d.clone()));
                assert_eq!(
                    Ok(out.clone()),
                    want.map_err(|e| e.to_string()),
                    "{source:?} on {body}"
                );
                // A limit of exactly its length lets it through; one byte less stops it.
                assert_eq!(fast.render(&d, id, out.len()), Rendered::Body(out.clone()));
                if !out.is_empty() {
                    assert_eq!(
                        fast.render(&d, id, out.len() - 1),
                        Rendered::TooLong,
                        "{source:?} on {body}"
                    );
                }
            }
        }
    }
    // The generator must exercise the fast path, not just minijinja.
    assert!(fast_ones > 2000, "only {fast_ones} templates had a fast form");
    assert!(
        rendered * 6 > total,
        "the fast path rendered only {rendered} of {total}"
    );
}

#[test]
fn common_templates_have_a_fast_form_others_do_not() {
    for t in [
        r#"{"text":{{ (data.table ~ ": " ~ (data.changed or [])|join(", ") ~ " changed")|tojson }},"timestamp":{{ timestamp|tojson }},"data":{{ data|tojson }}}"#,
        r#"{"text": {{ ("Price of " ~ data.new.sku ~ " changed")|tojson }}, "id": {{ id|tojson }}}"#,
        "{{ data['new']['sku'] }}\n",
    ] {
        assert!(Fast::compile(t).is_some(), "{t}");
    }
    for t in [
        "{% if data.new %}x{% endif %}",
        "{{ data.new.sku|upper }}",
        "{{ data.new.qty + 1 }}",
        "{{ data.new.title|truncate(10) }}",
        "{# comment #}{{ id }}",
    ] {
        let f = Fast::compile(t);
        // A comment leaves no statement: that template is still fully fast.
        assert_eq!(f.is_some(), t.starts_with("{#"), "{t}");
    }
}
