use super::*;
use serde_json::json;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn config(rules: &str) -> Config {
    // The second subscriber wants price.*: some rule must make such events.
    let price_rule = if rules.contains("price.") {
        ""
    } else {
        "[[events]]\ntable = \"prices\"\nname = \"price.changed\"\n"
    };
    let rules = format!("{rules}\n{price_rule}");
    let text = format!(
        r#"
[source]
url = "postgres://localhost/shop"
{rules}
[[subscribers]]
name = "all"
url = "https://a.example.com/"
events = ["*"]
secrets = ["{SECRET}"]
[[subscribers]]
name = "prices"
url = "https://b.example.com/"
events = ["price.*"]
secrets = ["{SECRET}"]
"#
    );
    crate::app::check::from_toml(&text, "t", &|_| None).unwrap()
}

fn mapper(rules: &str) -> Mapper {
    let mut tables = HashMap::new();
    for t in ["public.prices", "public.products"] {
        let pk = if t == "public.prices" {
            vec!["product_id", "currency"]
        } else {
            vec!["id"]
        };
        tables.insert(
            TableName::parse(t).unwrap(),
            TableMeta {
                default_key: pk.into_iter().map(String::from).collect(),
                ..TableMeta::default()
            },
        );
    }
    Mapper::new(&config(rules), &tables).unwrap()
}

fn row(cols: &[(&str, ColValue)]) -> Row {
    cols.iter().map(|(c, v)| (Arc::from(*c), v.clone())).collect()
}

fn v(x: serde_json::Value) -> ColValue {
    ColValue::Value(x)
}

fn tx() -> TxMeta {
    TxMeta {
        commit_lsn: 0x16B3748,
        xid: 731,
        commit_time: "2026-11-22T10:00:00.123456Z".into(),
        backfill: 0,
    }
}

const PRICE_RULE: &str = r#"
[[events]]
table = "prices"
name = "price.changed"
on = ["update"]
changed = ["amount"]
"#;

#[test]
fn a_price_update_renders_the_documented_body_and_routes_by_pattern() {
    let m = mapper(PRICE_RULE);
    let table = TableName::parse("prices").unwrap();
    let old = row(&[
        ("product_id", v(json!(42))),
        ("currency", v(json!("EUR"))),
        ("amount", v(json!(10))),
        ("note", v(json!("x"))),
    ]);
    let new = row(&[
        ("product_id", v(json!(42))),
        ("currency", v(json!("EUR"))),
        ("amount", v(json!(12))),
        ("note", v(json!("x"))),
    ]);
    let change = Change {
        table: &table,
        op: Op::Update,
        new: Some(new),
        old: Some(old),
        old_is_key_only: false,
        index: 3,
        exact: &[],
        json: &[],
    };
    let out = m.map(&tx(), &change, &mut Vec::new());
    assert_eq!(out.len(), 1);
    let Routed { event, routes, .. } = &out[0];
    assert_eq!(&routes[..], &[0, 1], "both `*` and `price.*` match");
    assert_eq!(event.event_type, "price.changed");
    assert_eq!(event.pos, crate::event::Pos::new(0x16B3748, 3, 0));
    assert_eq!(event.key, r#"public.prices|{"product_id":42,"currency":"EUR"}"#);
    assert_eq!(
        std::str::from_utf8(&event.body).unwrap(),
        r#"{"type":"price.changed","timestamp":"2026-11-22T10:00:00.123456Z","data":{"table":"public.prices","op":"update","key":{"product_id":42,"currency":"EUR"},"new":{"product_id":42,"currency":"EUR","amount":12,"note":"x"},"old":{"product_id":42,"currency":"EUR","amount":10,"note":"x"},"changed":["amount"],"source":{"lsn":"0/16B3748","xid":731,"commit_time":"2026-11-22T10:00:00.123456Z","seq":3}}}"#
    );
    // Stable: mapping the same change again gives the same id and bytes.
    let again = m.map(&tx(), &change, &mut Vec::new());
    assert_eq!(again[0].event.id, event.id);
    assert_eq!(again[0].event.body, event.body);
}

#[test]
fn changed_filter_skips_updates_of_other_columns() {
    let m = mapper(PRICE_RULE);
    let table = TableName::parse("prices").unwrap();
    let old = row(&[
        ("product_id", v(json!(1))),
        ("currency", v(json!("EUR"))),
        ("amount", v(json!(10))),
        ("note", v(json!("a"))),
    ]);
    let new = row(&[
        ("product_id", v(json!(1))),
        ("currency", v(json!("EUR"))),
        ("amount", v(json!(10))),
        ("note", v(json!("b"))),
    ]);
    let change = Change {
        table: &table,
        op: Op::Update,
        new: Some(new),
        old: Some(old),
        old_is_key_only: false,
        index: 0,
        exact: &[],
        json: &[],
    };
    assert!(m.map(&tx(), &change, &mut Vec::new()).is_empty());
    let insert = Change {
        table: &table,
        op: Op::Insert,
        new: Some(row(&[])),
        old: None,
        old_is_key_only: false,
        index: 0,
        exact: &[],
        json: &[],
    };
    assert!(
        m.map(&tx(), &insert, &mut Vec::new()).is_empty(),
        "the rule is for updates only"
    );
}

#[test]
fn default_names_columns_and_unchanged_toast() {
    let m = mapper("[[events]]\ntable = \"products\"\ncolumns = [\"id\", \"title\", \"body\"]\n");
    let table = TableName::parse("products").unwrap();
    let new = row(&[
        ("id", v(json!(7))),
        ("title", v(json!("t"))),
        ("body", ColValue::Unchanged),
        ("secret", v(json!("s"))),
    ]);
    let change = Change {
        table: &table,
        op: Op::Update,
        new: Some(new.clone()),
        old: None,
        old_is_key_only: false,
        index: 0,
        exact: &[],
        json: &[],
    };
    let out = m.map(&tx(), &change, &mut Vec::new());
    let body: serde_json::Value = serde_json::from_slice(&out[0].event.body).unwrap();
    assert_eq!(out[0].event.event_type, "products.updated");
    assert_eq!(
        &out[0].routes[..],
        &[0],
        "price.* does not match products.updated"
    );
    assert_eq!(
        body["data"]["new"],
        json!({"id": 7, "title": "t"}),
        "projection; no null for the TOAST value"
    );
    assert_eq!(body["data"]["unchanged"], json!(["body"]));
    assert_eq!(body["data"]["old"], serde_json::Value::Null);
    assert_eq!(
        body["data"]["changed"],
        serde_json::Value::Null,
        "unknown without old values"
    );

    // With a full old row the unchanged value is taken from it.
    let old = row(&[
        ("id", v(json!(7))),
        ("title", v(json!("s"))),
        ("body", v(json!("long"))),
        ("secret", v(json!("s"))),
    ]);
    let change = Change {
        table: &table,
        op: Op::Update,
        new: Some(new),
        old: Some(old),
        old_is_key_only: false,
        index: 0,
        exact: &[],
        json: &[],
    };
    let body: serde_json::Value =
        serde_json::from_slice(&m.map(&tx(), &change, &mut Vec::new())[0].event.body).unwrap();
    assert_eq!(body["data"]["new"]["body"], "long");
    assert_eq!(body["data"]["changed"], json!(["title"]));
    assert!(body["data"].get("unchanged").is_none());

    // A changed column the rule does not carry is not named in the body.
    let old = row(&[
        ("id", v(json!(7))),
        ("title", v(json!("t"))),
        ("body", v(json!("long"))),
        ("secret", v(json!("old"))),
    ]);
    let new = row(&[
        ("id", v(json!(7))),
        ("title", v(json!("t"))),
        ("body", ColValue::Unchanged),
        ("secret", v(json!("new"))),
    ]);
    let change = Change {
        table: &table,
        op: Op::Update,
        new: Some(new),
        old: Some(old),
        old_is_key_only: false,
        index: 0,
        exact: &[],
        json: &[],
    };
    let body: serde_json::Value =
        serde_json::from_slice(&m.map(&tx(), &change, &mut Vec::new())[0].event.body).unwrap();
    assert_eq!(body["data"]["changed"], json!([]));

    // A delete takes its key from the old (key-only) row.
    let old = row(&[
        ("id", v(json!(7))),
        ("title", v(json!(null))),
        ("body", v(json!(null))),
        ("secret", v(json!(null))),
    ]);
    let del = Change {
        table: &table,
        op: Op::Delete,
        new: None,
        old: Some(old),
        old_is_key_only: true,
        index: 1,
        exact: &[],
        json: &[],
    };
    let out = m.map(&tx(), &del, &mut Vec::new());
    assert_eq!(out[0].event.event_type, "products.deleted");
    assert_eq!(out[0].event.key, r#"public.products|{"id":7}"#);
}

#[test]
fn twin_rules_get_distinct_ids() {
    let m = mapper(
        "[[events]]\ntable = \"products\"\nname = \"p\"\n[[events]]\ntable = \"products\"\nname = \"p\"\n",
    );
    let table = TableName::parse("products").unwrap();
    let change = Change {
        table: &table,
        op: Op::Insert,
        new: Some(row(&[("id", v(json!(1)))])),
        old: None,
        old_is_key_only: false,
        index: 0,
        exact: &[],
        json: &[],
    };
    let out = m.map(&tx(), &change, &mut Vec::new());
    assert_eq!(out.len(), 2);
    assert_ne!(out[0].event.id, out[1].event.id);
    assert!(out[0].event.pos < out[1].event.pos);
}

#[test]
fn a_table_without_primary_key_needs_a_key() {
    let err = Mapper::new(&config("[[events]]\ntable = \"logs\"\n"), &HashMap::new())
        .err()
        .unwrap();
    let err = crate::config::fmt_problems(&err);
    assert!(err.contains("events[0].key"), "{err}");
}

#[test]
fn subscribers_wanting_numbers_as_strings_get_their_own_body_with_the_same_id() {
    let rules = format!(
        r#"
[source]
url = "postgres://localhost/shop"
[[events]]
table = "prices"
name = "price.changed"
on = ["update"]
[[subscribers]]
name = "exact"
url = "https://a.example.com/"
events = ["*"]
secrets = ["{SECRET}"]
[[subscribers]]
name = "js"
url = "https://b.example.com/"
events = ["price.*"]
secrets = ["{SECRET}"]
numbers = "string"
"#
    );
    let config = crate::app::check::from_toml(&rules, "t", &|_| None).unwrap();
    let mut tables = HashMap::new();
    tables.insert(
        TableName::parse("prices").unwrap(),
        TableMeta {
            default_key: vec!["product_id".into()],
            ..TableMeta::default()
        },
    );
    let m = Mapper::new(&config, &tables).unwrap();
    let table = TableName::parse("prices").unwrap();
    let big = serde_json::from_str::<serde_json::Value>("9007199254740993").unwrap();
    let amount = serde_json::from_str::<serde_json::Value>("19.90").unwrap();
    let image = |amount: serde_json::Value| {
        row(&[
            ("product_id", v(big.clone())),
            ("amount", v(amount)),
            ("history", v(json!([1, 2]))),
            ("qty", v(json!(3))),
        ])
    };
    let exact: Vec<Arc<str>> = vec![Arc::from("product_id"), Arc::from("amount"), Arc::from("history")];
    let change = Change {
        table: &table,
        op: Op::Update,
        new: Some(image(amount)),
        old: Some(image(json!(10))),
        old_is_key_only: false,
        index: 0,
        exact: &exact,
        json: &[],
    };
    let out = m.map(&tx(), &change, &mut Vec::new());
    assert_eq!(out.len(), 2, "one body per way of writing numbers");
    let (a, b) = (&out[0], &out[1]);
    assert_eq!(
        (a.event.id.as_str(), a.event.pos, &a.event.key),
        (b.event.id.as_str(), b.event.pos, &b.event.key)
    );
    assert_eq!(&*a.routes, &[0]);
    assert_eq!(&*b.routes, &[1]);
    let text = |e: &EventRef| String::from_utf8(e.body.to_vec()).unwrap();
    let exact_body = text(&a.event);
    assert!(
        exact_body.contains(r#""key":{"product_id":9007199254740993}"#),
        "{exact_body}"
    );
    assert!(exact_body.contains(r#""amount":19.90"#), "{exact_body}");
    let strings = text(&b.event);
    assert!(
        strings.contains(r#""key":{"product_id":"9007199254740993"}"#),
        "{strings}"
    );
    assert!(
        strings.contains(
            r#""new":{"product_id":"9007199254740993","amount":"19.90","history":["1","2"],"qty":3}"#
        ),
        "{strings}"
    );
    assert!(
        strings.contains(r#""old":{"product_id":"9007199254740993","amount":"10""#),
        "{strings}"
    );
}

/// With `numbers = "string"`, the numbers of json/jsonb columns (in `new`, `old` and
/// `data.key`, at any depth, also in deep values) that a double does not hold become
/// strings; the others stay numbers. Subscribers with exact numbers get every digit.
#[test]
fn json_numbers_a_double_does_not_hold_are_strings_for_string_subscribers() {
    let m = docs_mapper(None, &["id", "tag"]);
    let table = TableName::parse("docs").unwrap();
    let reg = crate::decode::TypeRegistry::with_builtins();
    let meta = r#"{"id": 12345678901234567890, "price": 19.90, "n": 3, "tiny": 1e-400, "list": [0.1, 9007199254740993]}"#;
    let deep = format!("{}12345678901234567890, 2.5{}", "[".repeat(200), "]".repeat(200));
    let new = row(&[
        ("id", v(reg.to_json(20, "9007199254740993"))),
        ("tag", v(reg.to_json(3802, "[12345678901234567890, 1]"))),
        ("meta", v(reg.to_json(3802, meta))),
        (
            "metas",
            v(reg.to_json(3807, r#"{"{\"a\": 12345678901234567891}"}"#)),
        ),
        ("deep", v(reg.to_json(114, &deep))),
        ("qty", v(json!(3))),
    ]);
    let exact: Vec<Arc<str>> = vec![Arc::from("id")];
    let jsons: Vec<Arc<str>> = ["tag", "meta", "metas", "deep"].map(Arc::from).to_vec();
    let change = Change {
        table: &table,
        op: Op::Insert,
        new: Some(new),
        old: None,
        old_is_key_only: false,
        index: 0,
        exact: &exact,
        json: &jsons,
    };
    let out = m.map(&tx(), &change, &mut Vec::new());
    assert_eq!(out.len(), 2, "one body per way of writing numbers");
    let text = |e: &EventRef| String::from_utf8(e.body.to_vec()).unwrap();
    let exact_body = text(&out[0].event);
    assert!(
        exact_body.contains(&format!(
            r#""key":{{"id":9007199254740993,"tag":[12345678901234567890,1]}},"new":{{"id":9007199254740993,"tag":[12345678901234567890,1],"meta":{{"id":12345678901234567890,"price":19.90,"n":3,"tiny":1e-400,"list":[0.1,9007199254740993]}},"metas":[{{"a":12345678901234567891}}],"deep":{deep},"qty":3}}"#
        )),
        "{exact_body}"
    );
    let strings = text(&out[1].event);
    let deep_strings = deep.replace("12345678901234567890", "\"12345678901234567890\"");
    assert!(
        strings.contains(&format!(
            r#""key":{{"id":"9007199254740993","tag":["12345678901234567890",1]}},"new":{{"id":"9007199254740993","tag":["12345678901234567890",1],"meta":{{"id":"12345678901234567890","price":19.90,"n":3,"tiny":"1e-400","list":[0.1,"9007199254740993"]}},"metas":[{{"a":"12345678901234567891"}}],"deep":{deep_strings},"qty":3}}"#
        )),
        "{strings}"
    );
}

/// A large jsonb value, kept as its text rather than as a tree (see
/// `decode::json::large_jsonb`), makes the same bodies as its tree for both ways of
/// writing numbers, the same `changed`, and conditions see into it as into the tree.
#[test]
fn large_jsonb_values_make_the_bodies_and_decisions_of_their_trees() {
    let m = docs_mapper(
        Some("new.doc[1].color == 'red' && (op == 'insert' || 'doc' in changed)"),
        &["id"],
    );
    let table = TableName::parse("docs").unwrap();
    let reg = crate::decode::TypeRegistry::with_builtins();
    // What the server prints for a jsonb array of records, over 1 MiB.
    let doc = |color: &str, n: usize| {
        let items: Vec<String> = (0..n)
            .map(|i| {
                let c = if i == 1 { color } else { "blue" };
                format!(r#"{{"id": {i}, "big": 12345678901234567890, "color": "{c}", "price": 19.90, "t": "a\"b"}}"#)
            })
            .collect();
        format!("[{}]", items.join(", "))
    };
    let red = doc("red", 13_000);
    assert!(red.len() >= crate::decode::json::LARGE);
    let green = doc("green", 13_000);
    let jsons: Vec<Arc<str>> = vec![Arc::from("doc")];
    let bodies = |large: bool, op: Op, new_doc: &str, old_doc: Option<&str>| {
        let value = |text: &str| {
            let v = if large {
                reg.owned_to_json(3802, text.to_string())
            } else {
                reg.to_json(3802, text)
            };
            assert_eq!(crate::decode::json::deep(&v).is_some(), large);
            v
        };
        let new = row(&[("id", v(json!(7))), ("doc", v(value(new_doc)))]);
        let old = old_doc.map(|d| row(&[("id", v(json!(7))), ("doc", v(value(d)))]));
        let change = Change {
            table: &table,
            op,
            new: Some(new),
            old,
            old_is_key_only: false,
            index: 0,
            exact: &[],
            json: &jsons,
        };
        let mut failures = Vec::new();
        let out = m.map(&tx(), &change, &mut failures);
        assert!(failures.is_empty(), "{failures:?}");
        out.iter().map(|r| r.event.body.clone()).collect::<Vec<_>>()
    };
    let cases = [
        (Op::Insert, &red, None, 2),
        (Op::Insert, &green, None, 0),
        (Op::Update, &red, Some(&green), 2),
        (Op::Update, &red, Some(&red), 0),
    ];
    for (op, new_doc, old_doc, events) in cases {
        let tree = bodies(false, op, new_doc, old_doc.map(|d| d.as_str()));
        let kept = bodies(true, op, new_doc, old_doc.map(|d| d.as_str()));
        assert_eq!(tree.len(), events, "{op:?}");
        assert!(tree == kept, "{op:?}: the bodies differ");
    }
    let strings = bodies(true, Op::Insert, &red, None).pop().unwrap();
    let text = std::str::from_utf8(&strings).unwrap();
    assert!(text.contains(r#"{"id":1,"big":"12345678901234567890","color":"red","price":19.90,"t":"a\"b"}"#));
}

/// A mapper for table `docs` (keyed by `key`, with `when` when given) and two
/// subscribers of every event: `exact`, and `js` with `numbers = "string"`.
fn docs_mapper(when: Option<&str>, key: &[&str]) -> Mapper {
    let when = when.map_or(String::new(), |w| format!("when = \"{w}\"\n"));
    let rules = format!(
        r#"
[source]
url = "postgres://localhost/shop"
[[events]]
table = "docs"
{when}
[[subscribers]]
name = "exact"
url = "https://a.example.com/"
events = ["*"]
secrets = ["{SECRET}"]
[[subscribers]]
name = "js"
url = "https://b.example.com/"
events = ["*"]
secrets = ["{SECRET}"]
numbers = "string"
"#
    );
    let config = crate::app::check::from_toml(&rules, "t", &|_| None).unwrap();
    let mut tables = HashMap::new();
    tables.insert(
        TableName::parse("docs").unwrap(),
        TableMeta {
            default_key: key.iter().map(|k| k.to_string()).collect(),
            ..TableMeta::default()
        },
    );
    Mapper::new(&config, &tables).unwrap()
}

const SOFT_RULE: &str = r#"
[[events]]
table = "products"
on = ["insert", "update", "delete", "restore"]
soft_delete = "deleted_at"
when = "op != 'restore' || new.title != 'hidden'"
"#;

/// A product row with `deleted_at` (null or a time).
fn product(title: &str, deleted_at: serde_json::Value) -> Row {
    row(&[
        ("id", v(json!(7))),
        ("title", v(json!(title))),
        ("deleted_at", v(deleted_at)),
    ])
}

/// What `m` reports of one change of product 7: (event type, op) of each event.
fn soft(m: &Mapper, op: Op, old: Option<Row>, new: Option<Row>) -> Vec<(String, String)> {
    let table = TableName::parse("products").unwrap();
    let change = Change {
        table: &table,
        op,
        new,
        old,
        old_is_key_only: false,
        index: 0,
        exact: &[],
        json: &[],
    };
    let mut failures = Vec::new();
    let out = m.map(&tx(), &change, &mut failures);
    assert!(
        failures.is_empty(),
        "{:?}",
        failures.iter().map(|f| &f.error).collect::<Vec<_>>()
    );
    out.iter()
        .map(|r| {
            let body: serde_json::Value = serde_json::from_slice(&r.event.body).unwrap();
            (
                r.event.event_type.clone(),
                body["data"]["op"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn soft_deletes_are_reported_as_deletes_and_restores() {
    let m = mapper(SOFT_RULE);
    let at = json!("2026-12-04T10:00:00Z");
    let live = || Some(product("desk", json!(null)));
    let gone = || Some(product("desk", at.clone()));
    let ev = |t: &str, op: &str| vec![(t.to_string(), op.to_string())];

    assert_eq!(
        soft(&m, Op::Update, live(), gone()),
        ev("products.deleted", "delete")
    );
    assert_eq!(
        soft(&m, Op::Update, gone(), live()),
        ev("products.restored", "restore")
    );
    assert_eq!(
        soft(&m, Op::Update, live(), Some(product("lamp", json!(null)))),
        ev("products.updated", "update")
    );
    // A soft-deleted row: its updates and its hard delete make nothing.
    assert_eq!(
        soft(&m, Op::Update, gone(), Some(product("lamp", at.clone()))),
        vec![]
    );
    assert_eq!(soft(&m, Op::Delete, gone(), None), vec![]);
    assert_eq!(
        soft(&m, Op::Insert, None, gone()),
        vec![],
        "inserted deleted already"
    );
    // A row never soft-deleted is deleted as usual.
    assert_eq!(
        soft(&m, Op::Delete, live(), None),
        ev("products.deleted", "delete")
    );
    // `when` sees the reported op.
    assert_eq!(
        soft(
            &m,
            Op::Update,
            Some(product("hidden", at.clone())),
            Some(product("hidden", json!(null)))
        ),
        vec![]
    );

    // With soft_deleted = "include", a soft-deleted row's updates make events.
    let m = mapper(&format!("{SOFT_RULE}soft_deleted = \"include\"\n"));
    assert_eq!(
        soft(&m, Op::Update, gone(), Some(product("lamp", at.clone()))),
        ev("products.updated", "update")
    );
    assert_eq!(
        soft(&m, Op::Delete, gone(), None),
        vec![],
        "still one delete per row"
    );
}

#[test]
fn a_soft_delete_without_the_old_row_is_a_rule_failure_not_a_guess() {
    let m = mapper(SOFT_RULE);
    let table = TableName::parse("products").unwrap();
    let change = Change {
        table: &table,
        op: Op::Update,
        new: Some(product("desk", json!("2026-12-04T10:00:00Z"))),
        old: None,
        old_is_key_only: false,
        index: 0,
        exact: &[],
        json: &[],
    };
    let mut failures = Vec::new();
    assert!(m.map(&tx(), &change, &mut failures).is_empty());
    assert_eq!(failures.len(), 1);
    assert!(
        failures[0].error.contains("REPLICA IDENTITY FULL"),
        "{}",
        failures[0].error
    );
}

#[test]
fn restore_needs_soft_delete() {
    let text = "[source]\nurl = \"postgres://localhost/shop\"\n[[events]]\ntable = \"products\"\non = [\"restore\"]\n\
                [[subscribers]]\nname = \"a\"\nurl = \"https://a.example.com/\"\nevents = [\"*\"]\n\
                secrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n";
    let err = crate::app::check::from_toml(text, "t", &|_| None)
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("events[0].on") && err.contains("soft_delete = \"deleted_at\""),
        "{err}"
    );
}
