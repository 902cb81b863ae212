//! Isolation and spill: a subscriber answering 500 forever does not delay a healthy one,
//! spills within spill_after, does not hold the slot back, is probed rather than
//! hammered, and gets everything once it is back. A receiver that is down for a while gets
//! everything, in per-key order, once it is back (even across a SIGKILL while spilled),
//! and its lane returns to hot.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::*;

const STOCK_SCHEMA: &str = "CREATE TABLE stock (product_id bigint PRIMARY KEY, qty integer NOT NULL);
    ALTER TABLE stock REPLICA IDENTITY FULL;";
const KEYS: i64 = 100;

fn config(url: &str, subscribers: &str) -> String {
    let slot = url.rsplit('/').next().unwrap();
    format!("[source]\nurl = \"{url}\"\nslot = \"{slot}\"\n[[events]]\ntable = \"stock\"\n{subscribers}")
}

/// Seeds KEYS rows (inserts) then `rounds` updates of every key, one transaction per
/// round. Returns the value sequence per key.
async fn workload(
    db: &tokio_postgres::Client,
    from_round: i64,
    rounds: i64,
    seed: bool,
) -> BTreeMap<i64, Vec<i64>> {
    let mut written: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    if seed {
        db.batch_execute(&format!(
            "INSERT INTO stock SELECT g, 0 FROM generate_series(1, {KEYS}) g"
        ))
        .await
        .unwrap();
        for k in 1..=KEYS {
            written.entry(k).or_default().push(0);
        }
    }
    for round in from_round..from_round + rounds {
        db.batch_execute(&format!("UPDATE stock SET qty = {round}"))
            .await
            .unwrap();
        for k in 1..=KEYS {
            written.entry(k).or_default().push(round);
        }
    }
    written
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

/// Time from the start of the workload until the receiver has `n` events.
async fn timed_burst(
    pg: &PgCluster,
    db_name: &str,
    rx: &Receiver,
    n: usize,
) -> (Duration, BTreeMap<i64, Vec<i64>>) {
    let db = pg.client(db_name).await;
    let start = Instant::now();
    let written = workload(&db, 1, 10, true).await;
    rx.wait_for(Duration::from_secs(60), "the healthy subscriber's events", |g| {
        g.len() >= n
    })
    .await;
    (start.elapsed(), written)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_subscriber_does_not_delay_a_healthy_one() {
    let pg = PgCluster::start().await;
    let n = (KEYS * 11) as usize;

    // Alone.
    let url = pg.create_db("alone", STOCK_SCHEMA).await;
    let rx_alone = Receiver::start().await;
    let mut w = Walhook::start(&config(
        &url,
        &subscriber("healthy", &rx_alone.url(), "\"*\"", ""),
    ));
    w.wait_ready().await;
    let (alone, _) = timed_burst(&pg, "alone", &rx_alone, n).await;
    w.stop();

    // Beside a subscriber that answers 500 forever.
    let url = pg.create_db("beside", STOCK_SCHEMA).await;
    let rx_ok = Receiver::start().await;
    let rx_bad = Receiver::start().await;
    rx_bad.set_status(500);
    let broken = "spill_after = \"1s\"\nmax_attempts = 1000\nretry_initial = \"100ms\"\nretry_max = \"200ms\"\nmax_in_flight = 100";
    let subs = subscriber("healthy", &rx_ok.url(), "\"*\"", "")
        + &subscriber("broken", &rx_bad.url(), "\"*\"", broken);
    let w = Walhook::start(&config(&url, &subs));
    w.wait_ready().await;
    let db = pg.client("beside").await;
    let before = confirmed_flush(&db, "beside").await;
    // Watch for the broken lane's switch to spill mode while the burst runs.
    let admin = w.admin.clone();
    let watcher = tokio::spawn(async move {
        let url = format!("http://{admin}/metrics");
        loop {
            if let Ok(r) = reqwest::get(&url).await {
                let text = r.text().await.unwrap_or_default();
                if text.contains("walhook_lane_spilling{subscriber=\"broken\"} 1") {
                    return Instant::now();
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    });
    let (beside, written) = timed_burst(&pg, "beside", &rx_ok, n).await;
    println!("healthy subscriber, {n} events: alone {alone:?}, beside a failing one {beside:?}");
    assert!(
        beside <= alone * 2 + Duration::from_secs(1),
        "healthy lane slowed down: alone {alone:?}, beside a failing one {beside:?}"
    );
    assert_eq!(
        qty_sequences(&rx_ok.delivered()),
        written,
        "healthy subscriber: per-key order and content"
    );

    // The broken lane spills within spill_after (plus a tick and scheduling slack).
    let spilled_at = tokio::time::timeout(Duration::from_secs(10), watcher)
        .await
        .expect("the broken lane goes to spill mode")
        .unwrap();
    let first_failure = rx_bad.all().first().expect("the broken receiver was called").at;
    let took = spilled_at.saturating_duration_since(first_failure);
    println!("broken lane spilled {took:?} after its first failed attempt (spill_after = 1s)");
    // spill_after, plus the lane's 100 ms check and this test's 20 ms polling.
    assert!(took <= Duration::from_millis(1500), "spilled late: {took:?}");

    // The slot moves past everything although the broken subscriber has delivered nothing.
    let end: i64 = count(&db, "SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint").await;
    eventually(
        Duration::from_secs(20),
        "confirmed_flush_lsn to pass the workload",
        || async { confirmed_flush(&db, "beside").await >= end as u64 },
    )
    .await;
    assert!(confirmed_flush(&db, "beside").await > before);

    // Its backlog waits in the spill log (in chunks), and the subscriber is probed one
    // attempt at a time (200 ms apart here) instead of once per event.
    eventually(Duration::from_secs(20), "the broken lane to probe", || async {
        w.log().contains("subscriber seems down")
    })
    .await;
    // (Attempts that started before the lane judged it down finish first.)
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rx_bad.all().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let probes = rx_bad.all().len() - before;
    println!("{probes} attempts at the broken receiver in 2 s");
    assert!(
        (2..=20).contains(&probes),
        "{probes} attempts in 2 s at a receiver that is down"
    );
    assert!(
        count(
            &db,
            "SELECT count(*) FROM walhook.spill_chunks WHERE subscriber = 'broken'"
        )
        .await
            > 0,
        "the broken lane's backlog is in the spill log"
    );
    assert_eq!(count(&db, "SELECT count(*) FROM walhook.dead_letters").await, 0);

    // Back up, it gets every event in per-key order.
    rx_bad.set_status(204);
    let got = rx_bad
        .wait_for(Duration::from_secs(60), "the broken subscriber's events", |g| {
            g.iter().map(|r| &r.id).collect::<HashSet<_>>().len() >= n
        })
        .await;
    assert_eq!(
        qty_sequences(&got),
        written,
        "recovered subscriber: per-key order and content"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receiver_down_for_a_while_gets_everything_in_order_even_across_sigkill() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", STOCK_SCHEMA).await;
    let rx = Receiver::start().await;
    rx.set_status(503);
    let extra = "spill_after = \"1s\"\nmax_attempts = 1000\nretry_initial = \"100ms\"\nretry_max = \"300ms\"";
    let mut w = Walhook::start(&config(&url, &subscriber("shop", &rx.url(), "\"*\"", extra)));
    w.wait_ready().await;
    let db = pg.client("shop").await;

    let mut written = workload(&db, 1, 10, true).await;
    eventually(Duration::from_secs(10), "lane in spill mode", || async {
        w.metric("walhook_lane_spilling{subscriber=\"shop\"}").await == Some(1.0)
    })
    .await;
    let end: i64 = count(&db, "SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint").await;
    eventually(
        Duration::from_secs(20),
        "slot confirmed past the spilled events",
        || async { confirmed_flush(&db, "shop").await >= end as u64 },
    )
    .await;
    let spilled = count(&db, "SELECT count(*) FROM walhook.spill").await
        + count(&db, "SELECT count(*) FROM walhook.spill_chunks").await;
    assert!(spilled > 0, "events are in the spill log");

    // SIGKILL while spilled, more changes while it is down, then restart.
    w.sigkill();
    for (k, v) in workload(&db, 11, 5, false).await {
        written.entry(k).or_default().extend(v);
    }
    w.restart();
    w.wait_ready().await;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // The receiver comes back.
    rx.set_status(204);
    let total: usize = written.values().map(Vec::len).sum();
    let got = rx
        .wait_for(
            Duration::from_secs(120),
            "every event after the receiver is back",
            |g| g.iter().map(|r| &r.id).collect::<HashSet<_>>().len() >= total,
        )
        .await;
    assert_eq!(
        qty_sequences(&got),
        written,
        "per-key order and content after spill + SIGKILL"
    );
    eventually(Duration::from_secs(10), "lane back in hot mode", || async {
        w.metric("walhook_lane_spilling{subscriber=\"shop\"}").await == Some(0.0)
    })
    .await;
    assert_eq!(count(&db, "SELECT count(*) FROM walhook.spill").await, 0);
    assert_eq!(count(&db, "SELECT count(*) FROM walhook.spill_chunks").await, 0);

    // Back in hot mode, new changes arrive at once.
    let db2 = pg.client("shop").await;
    db2.batch_execute("UPDATE stock SET qty = 999 WHERE product_id = 1")
        .await
        .unwrap();
    let t = Instant::now();
    rx.wait_for(Duration::from_secs(5), "a change after recovery", |g| {
        g.iter().any(|r| r.json()["data"]["new"]["qty"] == 999)
    })
    .await;
    println!("hot again: a new change arrived in {:?}", t.elapsed());
    assert!(w.stop() == Some(0), "clean exit on SIGTERM");
}
