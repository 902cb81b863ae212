//! Faithful values: every supported type becomes the exact JSON expected, and an
//! unchanged TOASTed value is never sent as null.

mod common;

use std::time::Duration;

use common::*;

const SCHEMA: &str = r#"
CREATE TYPE mood AS ENUM ('happy', 'sad');
CREATE DOMAIN price AS numeric(12, 2) CHECK (VALUE >= 0);
CREATE DOMAIN big_id AS int8;
CREATE TABLE everything (
    id int PRIMARY KEY,
    i2 int2, i4 int4, i8 int8, n numeric, n_nan numeric, n_inf numeric,
    f4 float4, f8 float8, f_nan float8, f_inf float8,
    b bool, t text, vc varchar(10), c char(3),
    ts timestamp, tstz timestamptz, ts_inf timestamptz, d date, tm time,
    j json, jb jsonb, ba bytea, u uuid,
    a_int int4[], a_text text[], a_num numeric[], a_nested int[][], a_empty int[],
    dom price, dom8 big_id, e mood, a_enum mood[], iv interval, pt point, nul text
);
"#;

const INSERT: &str = r#"
INSERT INTO everything VALUES (
    1,
    -32768, 2147483647, 9007199254740993, 123456789012345678901234567890.123, 'NaN', 'Infinity',
    1.5, 0.1, 'NaN', '-Infinity',
    true, 'héllo "quoted" \ back', 'short', 'ab',
    '2026-11-22 10:00:00.123456', '2026-11-22 10:00:00.5+02', 'infinity', '2026-11-22', '13:45:10',
    '{"a": 12345678901234567890123, "b": [1, 2.50]}', '{"a": 12345678901234567890123, "b": [1, 2.50]}',
    '\x00ff', 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11',
    '{1,2,NULL}', ARRAY['a "b"', 'c,d', NULL, 'NULL', 'x\y'], '{1.10,99999999999999999999.5}', '{{1,2},{3,4}}', '{}',
    12.30, 9223372036854775807, 'happy', '{happy,sad}', '1 day 2 hours', '(1,2)', NULL
)"#;

fn config(url: &str, rx: &str, table: &str) -> String {
    format!(
        "[source]\nurl = \"{url}\"\n[[events]]\ntable = \"{table}\"\n{}",
        subscriber("s", rx, "\"*\"", "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_type_becomes_exact_json() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("types", SCHEMA).await;
    let rx = Receiver::start().await;
    let w = Walhook::start(&config(&url, &rx.url(), "everything"));
    w.wait_ready().await;
    pg.client("types").await.batch_execute(INSERT).await.unwrap();
    let got = rx
        .wait_for(Duration::from_secs(20), "the insert", |g| !g.is_empty())
        .await;
    let body: serde_json::Value = got[0].json();
    let new = &body["data"]["new"];
    let expect = [
        ("i2", "-32768"),
        ("i4", "2147483647"),
        ("i8", "9007199254740993"),
        ("n", "123456789012345678901234567890.123"),
        ("n_nan", "\"NaN\""),
        ("n_inf", "\"Infinity\""),
        ("f4", "1.5"),
        ("f8", "0.1"),
        ("f_nan", "\"NaN\""),
        ("f_inf", "\"-Infinity\""),
        ("b", "true"),
        ("t", r#""héllo \"quoted\" \\ back""#),
        ("vc", "\"short\""),
        ("c", "\"ab \""),
        ("ts", "\"2026-11-22T10:00:00.123456\""),
        ("tstz", "\"2026-11-22T08:00:00.5Z\""),
        ("ts_inf", "\"infinity\""),
        ("d", "\"2026-11-22\""),
        ("tm", "\"13:45:10\""),
        ("j", r#"{"a":12345678901234567890123,"b":[1,2.50]}"#),
        ("jb", r#"{"a":12345678901234567890123,"b":[1,2.50]}"#),
        ("ba", "\"AP8=\""),
        ("u", "\"a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11\""),
        ("a_int", "[1,2,null]"),
        ("a_text", r#"["a \"b\"","c,d",null,"NULL","x\\y"]"#),
        ("a_num", "[1.10,99999999999999999999.5]"),
        ("a_nested", "[[1,2],[3,4]]"),
        ("a_empty", "[]"),
        ("dom", "12.30"),
        ("dom8", "9223372036854775807"),
        ("e", "\"happy\""),
        ("a_enum", r#"["happy","sad"]"#),
        ("iv", "\"P1DT2H\""),
        ("pt", "\"(1,2)\""),
        ("nul", "null"),
    ];
    let mut wrong = Vec::new();
    for (col, want) in expect {
        let have = serde_json::to_string(&new[col]).unwrap();
        if have != want {
            wrong.push(format!("{col}: want {want}, have {have}"));
        }
    }
    assert!(wrong.is_empty(), "wrong values:\n{}", wrong.join("\n"));
    // The raw body carries the digits too, not only the parsed value.
    let raw = String::from_utf8(got[0].body.to_vec()).unwrap();
    assert!(raw.contains("\"i8\":9007199254740993"), "{raw}");
    assert!(raw.contains("\"n\":123456789012345678901234567890.123"), "{raw}");
    let _ = w;
}

const TOAST_SCHEMA: &str = "
CREATE TABLE docs (id int PRIMARY KEY, body text, n int);
CREATE TABLE docs_full (id int PRIMARY KEY, body text, n int);
ALTER TABLE docs_full REPLICA IDENTITY FULL;
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unchanged_toast_values_are_never_null() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("toast", TOAST_SCHEMA).await;
    let rx = Receiver::start().await;
    let cfg = config(&url, &rx.url(), "docs") + "[[events]]\ntable = \"docs_full\"\n";
    let w = Walhook::start(&cfg);
    w.wait_ready().await;
    let db = pg.client("toast").await;
    // 1 MiB of hex: stored out of line (TOAST), barely compressible.
    db.batch_execute(
        "INSERT INTO docs SELECT 1, string_agg(md5(i::text), ''), 1 FROM generate_series(1, 32768) i;
         INSERT INTO docs_full SELECT * FROM docs;",
    )
    .await
    .unwrap();
    let big: String = db.query_one("SELECT body FROM docs", &[]).await.unwrap().get(0);
    assert_eq!(big.len(), 1 << 20);
    db.batch_execute("UPDATE docs SET n = 2; UPDATE docs_full SET n = 2;")
        .await
        .unwrap();

    let got = rx
        .wait_for(Duration::from_secs(30), "4 events", |g| g.len() >= 4)
        .await;
    let updates: Vec<serde_json::Value> = got
        .iter()
        .map(Received::json)
        .filter(|b| b["data"]["op"] == "update")
        .collect();
    assert_eq!(updates.len(), 2);
    for u in &updates {
        let new = &u["data"]["new"];
        assert_eq!(new["n"], 2);
        assert_ne!(
            new.get("body"),
            Some(&serde_json::Value::Null),
            "a TOASTed value was sent as null: {}",
            u["data"]["table"]
        );
        match u["data"]["table"].as_str().unwrap() {
            // Default identity: the value is not in the stream; it is left out and named.
            "public.docs" => {
                assert!(new.get("body").is_none());
                assert_eq!(u["data"]["unchanged"], serde_json::json!(["body"]));
            }
            // FULL identity: the old row carries it, so the new row has it in full.
            "public.docs_full" => {
                assert_eq!(new["body"].as_str().unwrap(), big);
                assert!(u["data"].get("unchanged").is_none());
                assert_eq!(u["data"]["changed"], serde_json::json!(["n"]));
            }
            other => panic!("unexpected table {other}"),
        }
    }
    let _ = w;
}
