//! Slot progress and schema changes: writes only to unpublished tables still advance the
//! slot (keepalives drive progress), lane watermarks are written at most every
//! `watermark_interval` under a steady load, and ALTER TABLE mid-stream is followed.

mod common;

use std::time::Duration;

use common::*;

/// A database "shop" with `schema`, a receiver, and walhook delivering `products` events
/// to it, ready.
struct Shop {
    pg: PgCluster,
    rx: Receiver,
    w: Walhook,
    db: tokio_postgres::Client,
}

async fn shop(schema: &str) -> Shop {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", schema).await;
    let rx = Receiver::start().await;
    let cfg = format!(
        "[source]\nurl = \"{url}\"\n[[events]]\ntable = \"products\"\n{}",
        subscriber("s", &rx.url(), "\"*\"", "")
    );
    let w = Walhook::start(&cfg);
    w.wait_ready().await;
    let db = pg.client("shop").await;
    Shop { pg, rx, w, db }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_only_to_unpublished_tables_advance_the_slot() {
    let Shop {
        pg: _pg,
        rx,
        w: _w,
        db,
    } = shop(
        "CREATE TABLE products (id bigint PRIMARY KEY, title text);
             CREATE TABLE audit_log (id bigserial PRIMARY KEY, line text);",
    )
    .await;
    let before = confirmed_flush(&db, "walhook").await;
    for i in 0..200 {
        db.execute(
            "INSERT INTO audit_log (line) VALUES ($1)",
            &[&format!("line {i}")],
        )
        .await
        .unwrap();
    }
    let end: i64 = db
        .query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint", &[])
        .await
        .unwrap()
        .get(0);
    assert!(end as u64 > before);
    eventually(
        Duration::from_secs(30),
        "confirmed_flush_lsn to pass the unpublished writes",
        || async { confirmed_flush(&db, "walhook").await >= end as u64 },
    )
    .await;
    println!(
        "slot moved from {before} to {} with no published change",
        confirmed_flush(&db, "walhook").await
    );
    assert!(rx.all().is_empty(), "nothing is delivered for unpublished tables");
}

/// With no `[state]` section (the default 250 ms interval), a steady stream of changes
/// costs the state database a handful of watermark writes per second, not one per loop,
/// and an idle one next to none.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watermarks_are_written_at_most_every_interval() {
    let Shop { pg: _pg, rx, w, db } =
        shop("CREATE TABLE products (id bigint PRIMARY KEY, title text);").await;
    let writes = || async {
        let n: i64 = db
            .query_one(
                "SELECT coalesce(sum(n_tup_ins + n_tup_upd), 0)::bigint FROM pg_stat_user_tables
                 WHERE schemaname = 'walhook' AND relname = 'lanes'",
                &[],
            )
            .await
            .unwrap()
            .get(0);
        n
    };
    // Statistics reach pg_stat_user_tables within a second or so of each write.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let before = writes().await;
    let started = std::time::Instant::now();
    let mut i: i64 = 0;
    while started.elapsed() < Duration::from_secs(3) {
        i += 1;
        db.execute("INSERT INTO products VALUES ($1, 'x')", &[&i])
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    rx.wait_for(Duration::from_secs(10), "every change delivered", |g| {
        g.len() >= i as usize
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let written = writes().await - before;
    println!("{written} watermark writes for {i} changes over about 4 s");
    assert!(written >= 1, "watermarks are written");
    // 250 ms apart: about 16 in 4 s; the tight loop of the old bug made 70 here.
    assert!(written <= 40, "{written} watermark writes in about 4 s");

    // Idle: a save is WAL in this very database, which moves the stream's frontier; those
    // moves alone are saved only now and then, so the saves do not feed themselves.
    let before = writes().await;
    tokio::time::sleep(Duration::from_secs(6)).await;
    let idle = writes().await - before;
    println!("{idle} watermark writes in 6 s idle");
    assert!(
        idle <= 2,
        "{idle} watermark writes in 6 s with nothing to deliver"
    );
    drop(w);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn alter_table_mid_stream_is_followed() {
    let Shop { pg: _pg, rx, w, db } =
        shop("CREATE TABLE products (id bigint PRIMARY KEY, title text, weight int)").await;
    db.batch_execute("INSERT INTO products VALUES (1, 'desk', 30)")
        .await
        .unwrap();
    rx.wait_for(Duration::from_secs(20), "the first insert", |g| !g.is_empty())
        .await;

    db.batch_execute(
        "ALTER TABLE products ADD COLUMN color text NOT NULL DEFAULT 'red';
         UPDATE products SET title = 'desk 2' WHERE id = 1;
         ALTER TABLE products DROP COLUMN weight;
         ALTER TABLE products ALTER COLUMN id TYPE numeric;
         INSERT INTO products (id, title, color) VALUES (123456789012345678901234567890, 'lamp', 'blue');",
    )
    .await
    .unwrap();
    let got = rx
        .wait_for(Duration::from_secs(20), "three events", |g| g.len() >= 3)
        .await;
    let mut bodies: Vec<serde_json::Value> = got.iter().map(Received::json).collect();
    bodies.sort_by_key(|b| {
        let source = &b["data"]["source"];
        (
            walhook::event::parse_lsn(source["lsn"].as_str().unwrap()),
            source["seq"].as_u64(),
        )
    });
    assert_eq!(
        bodies[0]["data"]["new"],
        serde_json::json!({"id": 1, "title": "desk", "weight": 30})
    );
    assert_eq!(
        bodies[1]["data"]["new"],
        serde_json::json!({"id": 1, "title": "desk 2", "weight": 30, "color": "red"}),
        "the added column is carried"
    );
    assert_eq!(
        serde_json::to_string(&bodies[2]["data"]["new"]).unwrap(),
        r#"{"id":123456789012345678901234567890,"title":"lamp","color":"blue"}"#,
        "the dropped column is gone and the retyped key keeps every digit"
    );
    let _ = w;
}
