//! Value fidelity against the server's own `to_jsonb`: deep json, types created while
//! walhook runs, BC dates, json numbers for `numbers = "string"` subscribers, and what
//! the state migrations log.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use serde_json::value::RawValue;
use serde_json::Value;

use common::*;

/// The columns of a body's `data.new`, each as its JSON text (so values deeper than
/// serde_json's recursion limit can be read).
fn new_columns(body: &[u8]) -> HashMap<String, String> {
    #[derive(serde::Deserialize)]
    struct Body<'a> {
        #[serde(borrow)]
        data: Data<'a>,
    }
    #[derive(serde::Deserialize)]
    struct Data<'a> {
        #[serde(borrow)]
        new: HashMap<String, &'a RawValue>,
    }
    let body: Body<'_> = serde_json::from_slice(body).expect("the body is JSON");
    body.data
        .new
        .into_iter()
        .map(|(k, v)| (k, v.get().to_string()))
        .collect()
}

/// Whether two JSON texts mean the same: as values when serde_json can hold them, else
/// (values nested past its limit, made here without spaces in strings) as text without
/// whitespace.
fn same_json(a: &str, b: &str) -> bool {
    match (serde_json::from_str::<Value>(a), serde_json::from_str::<Value>(b)) {
        (Ok(x), Ok(y)) => x == y,
        _ => {
            let strip = |s: &str| s.chars().filter(|c| !c.is_whitespace()).collect::<String>();
            strip(a) == strip(b)
        }
    }
}

fn config(url: &str, rx: &str, table: &str) -> String {
    format!(
        "[source]\nurl = \"{url}\"\n[[events]]\ntable = \"{table}\"\n{}",
        subscriber("s", rx, "\"*\"", "")
    )
}

/// The deepest json array the server accepts with its default `max_stack_depth`.
async fn deepest_the_server_accepts(db: &tokio_postgres::Client) -> usize {
    let (mut ok, mut bad) = (5_000usize, 400_000usize);
    let accepts = |n: usize| async move {
        db.query_one(
            "SELECT (repeat('[', $1) || '1' || repeat(']', $1))::jsonb IS NOT NULL",
            &[&(n as i32)],
        )
        .await
        .is_ok()
    };
    assert!(accepts(ok).await, "the server refuses 5,000 levels");
    assert!(!accepts(bad).await, "the server accepts 400,000 levels");
    while bad - ok > 1 {
        let mid = (ok + bad) / 2;
        if accepts(mid).await {
            ok = mid;
        } else {
            bad = mid;
        }
    }
    ok
}

/// json and jsonb nested 127, 128, 5,000 levels and as deep as the server accepts arrive
/// as the JSON to_jsonb makes of them, never as a string of their text.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deep_json_arrives_as_json_at_any_depth() {
    let pg = PgCluster::start().await;
    let url = pg
        .create_db(
            "deep",
            "CREATE TABLE deep (id int PRIMARY KEY, depth int, j json, jb jsonb, o jsonb, a jsonb[]);",
        )
        .await;
    let db = pg.client("deep").await;
    let max = deepest_the_server_accepts(&db).await;
    let rx = Receiver::start().await;
    let w = Walhook::start(&config(&url, &rx.url(), "deep"));
    w.wait_ready().await;
    let depths = [127usize, 128, 5_000, max];
    for (i, n) in depths.iter().enumerate() {
        // arrays for j/jb; objects with a big number for o; arrays in a jsonb[] for a
        let half = (*n / 2) as i32;
        db.execute(
            "INSERT INTO deep SELECT $1, $2, arr::json, arr::jsonb, obj::jsonb, ARRAY[nested::jsonb, '1']
             FROM (SELECT repeat('[', $2) || '1' || repeat(']', $2) AS arr,
                          repeat('{\"a\": ', $3) || '12345678901234567890' || repeat('}', $3) AS obj,
                          repeat('[', $3) || '2' || repeat(']', $3) AS nested) v",
            &[&(i as i32), &(*n as i32), &half.max(1)],
        )
        .await
        .unwrap_or_else(|e| panic!("insert at depth {n}: {e:?}"));
    }
    let got = rx
        .wait_for(Duration::from_secs(60), "the inserts", |g| {
            g.len() >= depths.len()
        })
        .await;
    for r in &got {
        let cols = new_columns(&r.body);
        let id: i32 = cols["id"].parse().unwrap();
        let n = depths[id as usize];
        let row = db
            .query_one(
                "SELECT to_jsonb(j)::text, to_jsonb(jb)::text, to_jsonb(o)::text, to_jsonb(a)::text
                 FROM deep WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        for (k, col) in ["j", "jb", "o", "a"].iter().enumerate() {
            let want: String = row.get(k);
            let have = &cols[*col];
            assert!(
                have.starts_with(['[', '{']),
                "{col} at depth {n} is not JSON but {}...",
                &have[..have.len().min(40)]
            );
            assert!(
                same_json(have, &want),
                "{col} at depth {n}: {}... is not {}...",
                &have[..have.len().min(60)],
                &want[..want.len().min(60)]
            );
        }
    }
    let _ = w;
}

/// A domain over a domain over numeric, an array of it, and `line` and `point` columns
/// added while walhook runs decode as to_jsonb has them, before and after a restart.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn types_created_while_running_decode_as_after_a_restart() {
    let pg = PgCluster::start().await;
    let url = pg
        .create_db("late", "CREATE TABLE late (id int PRIMARY KEY);")
        .await;
    let db = pg.client("late").await;
    let rx = Receiver::start().await;
    let mut w = Walhook::start(&config(&url, &rx.url(), "late"));
    w.wait_ready().await;
    db.batch_execute(
        "CREATE DOMAIN amount AS numeric(30, 2);
         CREATE DOMAIN price AS amount CHECK (VALUE >= 0);
         CREATE TYPE mood AS ENUM ('happy', 'sad');
         CREATE DOMAIN big_mood AS mood;
         ALTER TABLE late ADD COLUMN p price, ADD COLUMN ps price[], ADD COLUMN m big_mood[],
             ADD COLUMN ln line, ADD COLUMN pt point, ADD COLUMN bx box;
         INSERT INTO late VALUES (1, 12.30, '{1.50,NULL,99999999999999.99}', '{happy,sad}',
             '{1,2,3}', '(1,2)', '(1,1),(0,0)');",
    )
    .await
    .unwrap();
    rx.wait_for(Duration::from_secs(30), "the first insert", |g| !g.is_empty())
        .await;
    w.stop();
    w.restart();
    w.wait_ready().await;
    db.batch_execute(
        "INSERT INTO late VALUES (2, 12.30, '{1.50,NULL,99999999999999.99}', '{happy,sad}',
             '{1,2,3}', '(1,2)', '(1,1),(0,0)');",
    )
    .await
    .unwrap();
    let got = rx
        .wait_for(Duration::from_secs(30), "the second insert", |g| g.len() >= 2)
        .await;
    let mut bodies = Vec::new();
    for id in [1, 2] {
        let r = got
            .iter()
            .find(|r| r.json()["data"]["new"]["id"] == id)
            .unwrap_or_else(|| panic!("no event for row {id}"));
        let new = r.json()["data"]["new"].clone();
        let want: Value = db
            .query_one("SELECT to_jsonb(late)::text FROM late WHERE id = $1", &[&id])
            .await
            .map(|row| serde_json::from_str(row.get::<_, &str>(0)).unwrap())
            .unwrap();
        for col in ["p", "ps", "m", "ln", "pt", "bx"] {
            assert_eq!(
                new[col],
                want[col],
                "row {id} ({}), column {col}",
                ["before", "after"][id as usize - 1]
            );
        }
        bodies.push(new);
    }
    bodies[1]["id"] = bodies[0]["id"].clone();
    assert_eq!(bodies[0], bodies[1], "a restart changed how the row is sent");
    let _ = w;
}

/// to_jsonb's text of a date or time with its BC years as ISO 8601 astronomical years
/// and a zero offset as `Z`, the form walhook documents.
fn documented_form(to_jsonb: &str) -> String {
    let text = to_jsonb.replace("+00:00", "Z");
    let Some(text) = text.strip_suffix(" BC") else {
        return text;
    };
    let (year, rest) = text.split_once('-').unwrap();
    let year: i64 = year.parse().unwrap();
    match 1 - year {
        0 => format!("0000-{rest}"),
        y => format!("-{:04}-{rest}", -y),
    }
}

/// BC dates, years past 9999 and infinities in timestamp, timestamptz and date columns
/// and arrays: one ISO form, the server's values exactly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bc_and_far_dates_in_one_iso_form() {
    let pg = PgCluster::start().await;
    let url = pg
        .create_db(
            "dates",
            "CREATE TABLE dates (id int PRIMARY KEY, ts timestamp, tstz timestamptz, d date,
                 ats timestamp[], atstz timestamptz[], ad date[]);",
        )
        .await;
    let db = pg.client("dates").await;
    db.batch_execute("SET TimeZone = 'UTC'").await.unwrap();
    let rx = Receiver::start().await;
    let w = Walhook::start(&config(&url, &rx.url(), "dates"));
    w.wait_ready().await;
    let values = [
        "4714-11-24 00:00:00 BC",
        "0001-12-31 23:59:59.5 BC",
        "0002-01-01 12:00:00 BC",
        "0044-03-15 12:30:00.123456 BC",
        "0001-01-01 00:00:00",
        "2026-11-22 10:00:00.5",
        "12026-11-22 10:00:00",
        "294276-12-31 23:59:59.999999",
        "infinity",
        "-infinity",
    ];
    for (i, v) in values.iter().enumerate() {
        db.execute(
            "INSERT INTO dates SELECT $1, v::timestamp, z::timestamptz, v::timestamp::date,
                 ARRAY[v::timestamp, NULL], ARRAY[z::timestamptz], ARRAY[v::timestamp::date]
             FROM (SELECT $2::text AS v,
                          CASE WHEN $2 LIKE '%infinity' THEN $2 ELSE $2 || '+00' END AS z) s",
            &[&(i as i32), v],
        )
        .await
        .unwrap_or_else(|e| panic!("{v}: {e}"));
    }
    let got = rx
        .wait_for(Duration::from_secs(30), "the inserts", |g| {
            g.len() >= values.len()
        })
        .await;
    let mut wrong = Vec::new();
    for r in &got {
        let new = r.json()["data"]["new"].clone();
        let id = new["id"].as_i64().unwrap() as i32;
        let want: Value = db
            .query_one(
                "SELECT to_jsonb(r)::text FROM (SELECT ts, tstz, d, ats, atstz, ad FROM dates WHERE id = $1) r",
                &[&id],
            )
            .await
            .map(|row| serde_json::from_str(row.get::<_, &str>(0)).unwrap())
            .unwrap();
        let documented = |v: &Value| match v {
            Value::String(s) => Value::String(documented_form(s)),
            Value::Array(items) => Value::Array(
                items
                    .iter()
                    .map(|i| {
                        i.as_str()
                            .map_or(Value::Null, |s| Value::String(documented_form(s)))
                    })
                    .collect(),
            ),
            other => other.clone(),
        };
        for col in ["ts", "tstz", "d", "ats", "atstz", "ad"] {
            if new[col] != documented(&want[col]) {
                wrong.push(format!(
                    "{}: {col} is {}, want {}",
                    values[id as usize],
                    new[col],
                    documented(&want[col])
                ));
            }
        }
        if id == 0 {
            assert_eq!(new["tstz"], "-4713-11-24T00:00:00Z");
            assert_eq!(new["d"], "-4713-11-24");
            assert_eq!(new["ats"][0], "-4713-11-24T00:00:00");
        }
    }
    assert!(wrong.is_empty(), "wrong values:\n{}", wrong.join("\n"));
    let _ = w;
}

/// With `numbers = "string"`, numbers inside json/jsonb that a double cannot hold arrive
/// as strings of their digits (a JavaScript receiver would round them); the others stay
/// numbers. A subscriber with exact numbers gets to_jsonb's values.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_numbers_a_double_cannot_hold_are_strings_for_string_subscribers() {
    let pg = PgCluster::start().await;
    let url = pg
        .create_db(
            "meta",
            "CREATE TABLE items (id int8 PRIMARY KEY, metadata jsonb, raw json, tags jsonb[]);",
        )
        .await;
    let db = pg.client("meta").await;
    let exact = Receiver::start().await;
    let strings = Receiver::start().await;
    let cfg = format!(
        "[source]\nurl = \"{url}\"\n[[events]]\ntable = \"items\"\n{}{}",
        subscriber("exact", &exact.url(), "\"*\"", ""),
        subscriber("js", &strings.url(), "\"*\"", "numbers = \"string\"")
    );
    let w = Walhook::start(&cfg);
    w.wait_ready().await;
    let deep = format!("{}12345678901234567890{}", "[".repeat(300), "]".repeat(300));
    db.execute(
        "INSERT INTO items VALUES (9007199254740993,
             '{\"order\": 12345678901234567890, \"price\": 19.90, \"qty\": 3, \"ratio\": 0.1,
               \"pi\": 3.14159265358979323846, \"list\": [1, 9007199254740993, -2.5e-3]}',
             $1::text::json, ARRAY['{\"a\": 123456789012345678901}'::jsonb, '7'])",
        &[&deep],
    )
    .await
    .unwrap();
    let e = exact
        .wait_for_any(Duration::from_secs(30), "the exact body")
        .await;
    let s = strings
        .wait_for_any(Duration::from_secs(30), "the string body")
        .await;
    let want: Value = db
        .query_one(
            "SELECT to_jsonb(r)::text FROM (SELECT id, metadata, tags FROM items) r",
            &[],
        )
        .await
        .map(|row| serde_json::from_str(row.get::<_, &str>(0)).unwrap_or(Value::Null))
        .unwrap();
    let exact_cols = new_columns(&e.body);
    let string_cols = new_columns(&s.body);
    // exact: every digit, as to_jsonb has it
    let exact_meta: Value = serde_json::from_str(&exact_cols["metadata"]).unwrap();
    assert_eq!(exact_meta, want["metadata"]);
    let exact_tags: Value = serde_json::from_str(&exact_cols["tags"]).unwrap();
    assert_eq!(exact_tags, want["tags"]);
    // strings: the numbers a double cannot hold are strings of their digits
    let meta: Value = serde_json::from_str(&string_cols["metadata"]).unwrap();
    assert_eq!(meta["order"], "12345678901234567890");
    assert_eq!(meta["pi"], "3.14159265358979323846");
    assert_eq!(meta["list"][1], "9007199254740993");
    assert_eq!(meta["price"].to_string(), "19.90");
    assert_eq!(meta["qty"], 3);
    assert_eq!(meta["ratio"].to_string(), "0.1");
    assert_eq!(meta["list"][0], 1);
    assert_eq!(meta["list"][2].to_string(), "-0.0025");
    // and a deep json value is embedded too, its digits intact for exact numbers
    assert_eq!(exact_cols["raw"], deep);
    let tags: Value = serde_json::from_str(&string_cols["tags"]).unwrap();
    assert_eq!(tags, serde_json::json!([{"a": "123456789012345678901"}, 7]));
    assert_eq!(
        string_cols["raw"],
        deep.replace("12345678901234567890", "\"12345678901234567890\"")
    );
    // int8 columns as before: every number a string
    assert_eq!(string_cols["id"], "\"9007199254740993\"");
    let text = String::from_utf8(s.body.to_vec()).unwrap();
    assert!(
        text.contains(r#""key":{"id":"9007199254740993"}"#),
        "{}",
        &text[..200]
    );
    let _ = w;
}

/// The state migrations' server notices (`schema "walhook" already exists, skipping` on
/// every start after the first) are not logged at info.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_notices_are_not_logged_at_info() {
    let pg = PgCluster::start().await;
    let url = pg
        .create_db("quiet", "CREATE TABLE t (id int PRIMARY KEY);")
        .await;
    let rx = Receiver::start().await;
    let mut w = Walhook::start(&config(&url, &rx.url(), "t"));
    w.wait_ready().await;
    w.stop();
    w.restart();
    w.wait_ready().await;
    let log = w.log();
    // Each migration is applied once, at the first start.
    let migrations = std::fs::read_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/sql"))
        .unwrap()
        .filter(|e| {
            let name = e.as_ref().unwrap().file_name();
            let name = name.to_string_lossy();
            name.ends_with(".sql") && name[..3].bytes().all(|b| b.is_ascii_digit())
        })
        .count();
    assert!(migrations >= 6);
    assert_eq!(
        log.matches("applied state migration").count(),
        migrations,
        "{log}"
    );
    let noisy: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("NOTICE") || l.contains("already exists"))
        .collect();
    assert!(
        noisy.is_empty(),
        "server notices in the log:\n{}",
        noisy.join("\n")
    );
    let _ = w;
}
