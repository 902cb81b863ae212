use super::*;
use crate::mapping::{ColValue, Row, TableMeta};
use serde_json::json;

const SEC: i64 = 1_000_000;

fn config(extra: &str) -> Config {
    let text = format!(
        r#"
[source]
url = "postgres://localhost/shop"

[[documents]]
name = "product.updated"
key = "product_id"
query = "select * from products where id = $1"
sources = [{{ table = "products", key = "id" }}, {{ table = "prices", key = "product_id" }}]
window = "1s"
max_wait = "3s"
max_open = 2

[[subscribers]]
name = "shop"
url = "http://127.0.0.1:9/"
events = ["product.*"]
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
{extra}
"#
    );
    let parsed = Config::parse(&text, "test", &|_| None).unwrap();
    assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
    parsed.config
}

fn mapper(config: &Config) -> Mapper {
    Mapper::new(config, &HashMap::<TableName, TableMeta>::new()).unwrap()
}

fn row(cols: &[(&str, Value)]) -> Row {
    cols.iter()
        .map(|(c, v)| (Arc::from(*c), ColValue::Value(v.clone())))
        .collect()
}

fn change<'a>(table: &'a TableName, op: Op, new: Option<Row>, old: Option<Row>) -> Change<'a> {
    Change {
        table,
        op,
        new,
        old,
        old_is_key_only: false,
        index: 0,
        exact: &[],
        json: &[],
    }
}

#[test]
fn a_change_of_a_source_makes_its_key_due_and_a_moved_row_both_keys() {
    let m = mapper(&config(""));
    let prices = TableName::parse("prices").unwrap();
    let c = change(&prices, Op::Insert, Some(row(&[("product_id", json!(7))])), None);
    assert_eq!(m.dues(&c).keys, vec![(0, json!(7), 1)]);
    // A price moved from product 7 to 8: both documents change.
    let c = change(
        &prices,
        Op::Update,
        Some(row(&[("product_id", json!(8))])),
        Some(row(&[("product_id", json!(7))])),
    );
    assert_eq!(m.dues(&c).keys, vec![(0, json!(8), 1), (0, json!(7), 1)]);
    // Unmoved: once.
    let c = change(
        &prices,
        Op::Update,
        Some(row(&[("product_id", json!(8))])),
        Some(row(&[("product_id", json!(8))])),
    );
    assert_eq!(m.dues(&c).keys, vec![(0, json!(8), 1)]);
    // A null key makes nothing due; a delete whose old row lacks the key is told.
    let c = change(
        &prices,
        Op::Insert,
        Some(row(&[("product_id", Value::Null)])),
        None,
    );
    assert_eq!(m.dues(&c), Dues::default());
    let c = change(&prices, Op::Delete, None, Some(row(&[("id", json!(1))])));
    assert_eq!(m.dues(&c).unknown, vec![(0, "product_id".to_string())]);
    let c = change(&prices, Op::Truncate, None, None);
    assert_eq!(m.dues(&c).unknown.len(), 1);
    // Other tables make nothing due.
    let other = TableName::parse("stock").unwrap();
    let c = change(&other, Op::Insert, Some(row(&[("product_id", json!(7))])), None);
    assert_eq!(m.dues(&c), Dues::default());
    assert!(m.watches(&prices) && !m.watches(&other));
}

/// A change of source `source` (0: products, 1: prices) at `time` after the epoch below.
fn touch(source: u8, key: i64, lsn: u64, time: i64, xid: u32) -> Touch {
    Touch {
        doc: 0,
        key: json!(key),
        source,
        op: Op::Update,
        pos: Pos::new(lsn, 0, 0),
        // 2026-12-04T10:00:00Z in PostgreSQL microseconds.
        time: T0 + time,
        xid,
    }
}

const T0: i64 = 849_693_600 * SEC;

#[test]
fn changes_of_one_key_within_the_window_make_one_document() {
    let m = mapper(&config(""));
    let spec = &m.documents()[0];
    let (products, prices) = (0, 1);
    let mut w = Windows::default();
    w.add(spec, touch(products, 1, 100, 0, 10));
    w.add(spec, touch(prices, 1, 110, SEC / 2, 11));
    w.add(spec, touch(prices, 2, 120, SEC / 2, 11));
    assert_eq!(w.open_windows(), 2);
    assert_eq!(w.low(), Some(100));
    // Not yet past the deadline (1.5 s for key 1).
    w.advance(T0 + SEC + SEC / 2);
    assert!(w.take_closed(200).is_empty());
    w.advance(T0 + SEC + SEC / 2 + 1);
    let closed = w.take_closed(200);
    assert_eq!(closed.len(), 2);
    assert_eq!(closed[0].key, json!(1));
    assert_eq!(closed[0].count, 2);
    assert_eq!(closed[0].first, Pos::new(100, 0, 0));
    assert_eq!(closed[0].last_lsn, 110);
    assert_eq!(closed[0].xids, vec![10, 11]);
    assert_eq!(
        closed[0].sources,
        source_bit(0, Op::Update) | source_bit(1, Op::Update)
    );
    // After the coalesced events closed there (whatever their number), in first-change
    // order.
    let at = |k: u64| Pos {
        lsn: 200,
        seq: CLOSED | DOCUMENT | k,
    };
    assert_eq!((closed[0].pos, closed[1].pos), (at(0), at(1)));
    assert!(
        closed[0].pos
            > Pos {
                lsn: 200,
                seq: CLOSED | 9999
            }
    );
    assert_eq!(w.low(), None);
}

#[test]
fn a_window_closes_at_max_wait_and_the_oldest_early_past_max_open() {
    let m = mapper(&config(""));
    let spec = &m.documents()[0];
    let products = 0;
    let mut w = Windows::default();
    // A change every 0.9 s keeps the window open until max_wait (3 s) after the first.
    for i in 0..4 {
        w.add(spec, touch(products, 1, 100 + i, i as i64 * SEC * 9 / 10, 1));
    }
    w.advance(T0 + 3 * SEC + 1);
    let closed = w.take_closed(300);
    assert_eq!((closed.len(), closed[0].count), (1, 4));
    // A change after it opens a new window.
    w.add(spec, touch(products, 1, 400, 3 * SEC + 2, 1));
    w.add(spec, touch(products, 2, 401, 3 * SEC + 2, 1));
    assert_eq!(w.open_windows(), 2);
    // max_open = 2: a third key closes the oldest window at once.
    w.add(spec, touch(products, 3, 402, 3 * SEC + 3, 1));
    assert_eq!((w.open_windows(), w.closed_early), (2, 1));
    let closed = w.take_closed(402);
    assert_eq!(closed[0].key, json!(1));
    assert_eq!(w.low(), Some(401));
}

#[test]
fn a_document_renders_its_key_row_sources_and_count_for_each_way_of_writing_numbers() {
    let c = config(
        r#"
[[subscribers]]
name = "search"
url = "http://127.0.0.1:9/"
events = ["product.updated"]
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
numbers = "string"
"#,
    );
    let m = mapper(&c);
    let spec = &m.documents()[0];
    let products = 0;
    let mut w = Windows::default();
    w.add(spec, touch(products, 42, 0x100, 0, 1));
    w.close_all();
    let closed = w.take_closed(0x200);
    let cols = vec![
        Column {
            name: "id".into(),
            value: json!(42),
            exact: true,
            json: false,
        },
        Column {
            name: "title".into(),
            value: json!("Desk"),
            exact: false,
            json: false,
        },
    ];
    let events = render(spec, &closed[0], Some(&cols));
    assert_eq!(events.len(), 2);
    let (exact, routes) = &events[0];
    assert_eq!(&routes[..], &[0]);
    assert_eq!(
        std::str::from_utf8(&exact.body).unwrap(),
        r#"{"type":"product.updated","timestamp":"2026-12-04T10:00:00.000000Z","data":{"key":{"product_id":42},"op":"update","document":{"id":42,"title":"Desk"},"sources":[{"table":"public.products","op":"update"}],"coalesced":1,"source":{"lsn":"0/100","commit_time":"2026-12-04T10:00:00.000000Z"}}}"#
    );
    let (strings, routes) = &events[1];
    assert_eq!(&routes[..], &[1]);
    let body: Value = serde_json::from_slice(&strings.body).unwrap();
    assert_eq!(body["data"]["key"], json!({"product_id": "42"}));
    assert_eq!(body["data"]["document"], json!({"id": "42", "title": "Desk"}));
    // One id and position for both, stable for the same window.
    assert_eq!((exact.id.as_str(), exact.pos), (strings.id.as_str(), strings.pos));
    assert!(exact.id.starts_with("evt_d"));
    assert_eq!(exact.key, r#"product.updated|{"product_id":42}"#);
    assert_eq!(render(spec, &closed[0], Some(&cols))[0].0.id, exact.id);
    // No row: a delete.
    let deleted = render(spec, &closed[0], None);
    let body: Value = serde_json::from_slice(&deleted[0].0.body).unwrap();
    assert_eq!(
        (body["data"]["op"].as_str(), &body["data"]["document"]),
        (Some("delete"), &Value::Null)
    );
}
