//! Ordering keys: every operation of a row reaches a subscriber under one key, in commit
//! order, under each replica identity; and a rule's key that lost its column is said.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::*;

const ROWS: i64 = 40;

/// Per row id (the `id` of the new row, or of the old one for deletes): the ops in order
/// of first receipt, and the distinct `data.key`s they carried.
fn per_row(got: &[Received]) -> BTreeMap<(String, i64), (Vec<String>, HashSet<String>)> {
    let mut ids = HashSet::new();
    let mut out: BTreeMap<(String, i64), (Vec<String>, HashSet<String>)> = BTreeMap::new();
    for r in got.iter().filter(|r| ids.insert(r.id.clone())) {
        let b = r.json();
        let d = &b["data"];
        let row = if d["new"].is_null() { &d["old"] } else { &d["new"] };
        // A delete's old row holds only the identity: the id, or the sku under USING INDEX.
        let id = row["id"].as_i64().unwrap_or_else(|| {
            row["sku"]
                .as_str()
                .unwrap()
                .trim_start_matches("S-")
                .parse()
                .unwrap()
        });
        let e = out
            .entry((d["table"].as_str().unwrap().to_string(), id))
            .or_default();
        e.0.push(d["op"].as_str().unwrap().to_string());
        e.1.insert(d["key"].to_string());
    }
    out
}

/// Insert, update and delete of each of `ROWS` rows, under the default identity (the
/// primary key), FULL, USING INDEX on a unique column other than the primary key, and a
/// partitioned table whose partition logs such an index. A
/// slow receiver and parallel keys give a row's events every chance to overtake each
/// other if they were not on one key.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rows_events_share_one_key_under_every_replica_identity() {
    let mut schema = String::new();
    for t in ["t_default", "t_full", "t_index"] {
        schema.push_str(&format!(
            "CREATE TABLE {t} (id bigint PRIMARY KEY, sku text NOT NULL UNIQUE, title text);"
        ));
    }
    schema.push_str(
        "ALTER TABLE t_full REPLICA IDENTITY FULL;
         ALTER TABLE t_index REPLICA IDENTITY USING INDEX t_index_sku_key;
         CREATE TABLE t_part (id bigint, region text, sku text NOT NULL, title text,
                              PRIMARY KEY (id, region)) PARTITION BY LIST (region);
         CREATE TABLE t_part_eu PARTITION OF t_part FOR VALUES IN ('eu');
         CREATE UNIQUE INDEX t_part_eu_sku ON t_part_eu (sku, region);
         ALTER TABLE t_part_eu REPLICA IDENTITY USING INDEX t_part_eu_sku;",
    );
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", &schema).await;
    let rx = Receiver::start().await;
    rx.set_delay(Duration::from_millis(15));
    let w = Walhook::start(&format!(
        "[source]\nurl = \"{url}\"\n[[events]]\ntable = \"t_default\"\n[[events]]\ntable = \"t_full\"\n\
         [[events]]\ntable = \"t_index\"\n[[events]]\ntable = \"t_part\"\n{}",
        subscriber("shop", &rx.url(), "\"*\"", "max_in_flight = 32")
    ));
    w.wait_ready().await;
    let db = pg.client("shop").await;
    for t in ["t_default", "t_full", "t_index", "t_part"] {
        for id in 1..=ROWS {
            let values = match t {
                "t_part" => format!("({id}, 'eu', 'S-{id}', 'a')"),
                _ => format!("({id}, 'S-{id}', 'a')"),
            };
            db.batch_execute(&format!(
                "INSERT INTO {t} VALUES {values};
                 UPDATE {t} SET title = 'b' WHERE id = {id};
                 DELETE FROM {t} WHERE id = {id};"
            ))
            .await
            .unwrap();
        }
    }
    let got = rx
        .wait_unique(Duration::from_secs(60), "every change", 4 * 3 * ROWS as usize)
        .await;
    let rows = per_row(&got);
    assert_eq!(rows.len(), 4 * ROWS as usize);
    for ((table, id), (ops, keys)) in &rows {
        assert_eq!(ops, &["insert", "update", "delete"], "{table} row {id}: order");
        assert_eq!(
            keys.len(),
            1,
            "{table} row {id}: one key for all its events, got {keys:?}"
        );
        let key = keys.iter().next().unwrap();
        let expected = match table.as_str() {
            "public.t_index" => format!("{{\"sku\":\"S-{id}\"}}"),
            // A partition's own identity index (the partitioned table's is its key).
            "public.t_part" => format!("{{\"sku\":\"S-{id}\",\"region\":\"eu\"}}"),
            _ => format!("{{\"id\":{id}}}"),
        };
        assert_eq!(key, &expected, "{table} row {id}");
    }
}

/// Schema drift while walhook runs: a rule's key column dropped, and a captured table
/// renamed. Each is said once at warn with the fix, and counted, never silent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_key_column_and_a_renamed_table_are_said_and_counted() {
    let pg = PgCluster::start().await;
    let url = pg
        .create_db(
            "shop",
            "CREATE TABLE products (id bigint PRIMARY KEY, code text, title text);
             CREATE TABLE stock (id bigint PRIMARY KEY, qty int);",
        )
        .await;
    let rx = Receiver::start().await;
    let w = Walhook::start(&format!(
        "[source]\nurl = \"{url}\"\n[[events]]\ntable = \"products\"\nkey = [\"code\"]\non = [\"insert\", \"update\"]\n\
         [[events]]\ntable = \"stock\"\n{}",
        subscriber("shop", &rx.url(), "\"*\"", "")
    ));
    w.wait_ready().await;
    let db = pg.client("shop").await;
    db.batch_execute(
        "INSERT INTO products VALUES (1, 'A', 'a');
         INSERT INTO stock VALUES (1, 5);",
    )
    .await
    .unwrap();
    rx.wait_unique(Duration::from_secs(30), "the first changes", 2)
        .await;

    db.batch_execute(
        "ALTER TABLE products DROP COLUMN code;
         INSERT INTO products VALUES (2, 'b'), (3, 'c');
         ALTER TABLE stock RENAME TO stock_old;
         INSERT INTO stock_old VALUES (2, 7), (3, 9);
         INSERT INTO products VALUES (4, 'd');",
    )
    .await
    .unwrap();
    rx.wait_unique(Duration::from_secs(30), "the products inserts", 5)
        .await;
    eventually(Duration::from_secs(10), "the drift counted", || async {
        w.metric("walhook_key_columns_missing_total{rule=\"events[0]\"}")
            .await
            == Some(3.0)
            && w.metric("walhook_changes_unmatched_total{table=\"public.stock_old\"}")
                .await
                == Some(2.0)
    })
    .await;
    let log = w.log();
    // `code` is not in the replica identity: said at start.
    assert!(
        log.contains("the rule's key column is not part of the table's replica identity"),
        "{log}"
    );
    let dropped = "the rule's ordering key names a column the table no longer has";
    assert_eq!(log.matches(dropped).count(), 1, "{log}");
    let renamed = "a captured table was renamed: its changes are skipped";
    assert_eq!(log.matches(renamed).count(), 1, "{log}");
    assert!(log.contains("now=public.stock_old"), "{log}");
}

const MOVED: i64 = 300;

/// Each of `MOVED` rows is inserted under id 10000+i, its id updated to 20000+i, then
/// its value updated. For every row the receiver must see, in this order: the insert,
/// the key change (old key 10000+i), the value update; a channel that upserts by id
/// otherwise keeps a ghost row.
async fn key_changes_keep_their_place(extra: &str, rx: &Receiver) -> Walhook {
    let pg = PgCluster::start().await;
    let url = pg
        .create_db(
            "shop",
            "CREATE TABLE items (id bigint PRIMARY KEY, v int NOT NULL);",
        )
        .await;
    let w = Walhook::start(&format!(
        "[source]\nurl = \"{url}\"\n[[events]]\ntable = \"items\"\n{}",
        subscriber("shop", &rx.url(), "\"*\"", extra)
    ));
    w.wait_ready().await;
    let db = pg.client("shop").await;
    for i in 0..MOVED {
        db.batch_execute(&format!(
            "INSERT INTO items VALUES ({a}, 0);
             UPDATE items SET id = {b} WHERE id = {a};
             UPDATE items SET v = 1 WHERE id = {b};",
            a = 10_000 + i,
            b = 20_000 + i
        ))
        .await
        .unwrap();
    }
    let got = rx
        .wait_unique(Duration::from_secs(120), "every change", 3 * MOVED as usize)
        .await;
    let mut ids = HashSet::new();
    let mut per_row: BTreeMap<i64, Vec<String>> = BTreeMap::new();
    for r in got.iter().filter(|r| ids.insert(r.id.clone())) {
        let b = r.json();
        let d = &b["data"];
        let id = d["key"]["id"].as_i64().unwrap();
        let old = d["old"]["id"].as_i64();
        let what = match old {
            Some(old) => format!("{} {id} (old {old})", d["op"].as_str().unwrap()),
            None => format!("{} {id} v={}", d["op"].as_str().unwrap(), d["new"]["v"]),
        };
        per_row.entry(id % 10_000).or_default().push(what);
    }
    for i in 0..MOVED {
        let (a, b) = (10_000 + i, 20_000 + i);
        assert_eq!(
            per_row[&i],
            [
                format!("insert {a} v=0"),
                format!("update {b} (old {a})"),
                format!("update {b} v=1"),
            ],
            "row {i}"
        );
    }
    w
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_change_goes_out_between_its_rows_events() {
    let rx = Receiver::start().await;
    // The first attempts of the inserts are slow, so a key change queued under its new key
    // alone would overtake them.
    rx.set_delay(Duration::from_millis(20));
    key_changes_keep_their_place("max_in_flight = 64", &rx).await;
}

/// Through the spill log's rows: a flaky receiver makes the lane spill (rows, served
/// with retries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_change_keeps_its_place_through_spilled_rows() {
    let rx = Receiver::start().await;
    // Down at first, long enough past spill_after that the lane spills whatever the
    // timing; then flaky, so the rows are served with retries.
    rx.set_status(500);
    let flaky = async {
        rx.wait_for_any(Duration::from_secs(60), "a first attempt").await;
        tokio::time::sleep(Duration::from_millis(600)).await;
        rx.set_failure_rate(0.3);
        rx.set_status(204);
    };
    let (w, ()) = tokio::join!(
        key_changes_keep_their_place(
            "spill_after = \"200ms\"\nmax_in_flight = 32\nretry_initial = \"10ms\"\nretry_max = \"50ms\"\nmax_attempts = 1000",
            &rx,
        ),
        flaky
    );
    assert!(w.log().contains("lane switches to spill mode"), "{}", w.log());
}

/// Through spill chunks: a healthy but slow receiver behind a full lane.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_change_keeps_its_place_through_spilled_chunks() {
    let rx = Receiver::start().await;
    rx.set_delay(Duration::from_millis(5));
    let w = key_changes_keep_their_place(
        "spill_after = \"100ms\"\nmax_buffered = 20\nmax_in_flight = 16",
        &rx,
    )
    .await;
    let log = w.log();
    assert!(log.contains("chunked=true"), "{log}");
}
