//! Reconnects: the walsender terminated mid-workload (57P01), the server restarted
//! mid-workload, the path to the server dead without a word, and a second instance that
//! stands by until the first is killed.
//! Nothing is lost, and the admin server shows the stream and metrics.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::proxy::Proxy;
use common::*;

const SCHEMA: &str = "CREATE TABLE stock (product_id bigint PRIMARY KEY, qty integer NOT NULL);";
const KEYS: i64 = 20;

fn config(url: &str, rx: &str) -> String {
    format!(
        "[source]\nurl = \"{url}\"\n[[events]]\ntable = \"stock\"\n{}",
        subscriber("s", rx, "\"*\"", "")
    )
}

/// Runs `rounds` updates of every key, one transaction each, retrying a round whose
/// connection broke (a server restart). Returns the values written per key.
async fn workload(pg: &PgCluster, rounds: std::ops::Range<i64>, written: &mut BTreeMap<i64, Vec<i64>>) {
    let mut db = pg.client("shop").await;
    for round in rounds {
        loop {
            match db.batch_execute(&format!("UPDATE stock SET qty = {round}")).await {
                Ok(()) => break,
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    if let Ok((c, conn)) =
                        tokio_postgres::connect(&pg.url("shop"), tokio_postgres::NoTls).await
                    {
                        tokio::spawn(conn);
                        db = c;
                    }
                }
            }
        }
        for k in 1..=KEYS {
            written.entry(k).or_default().push(round);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn setup() -> (PgCluster, Receiver, Walhook, BTreeMap<i64, Vec<i64>>) {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", SCHEMA).await;
    let rx = Receiver::start().await;
    let w = Walhook::start(&config(&url, &rx.url()));
    w.wait_ready().await;
    let written = seed(&pg).await;
    (pg, rx, w, written)
}

/// Inserts every key with qty 0: the values written so far.
async fn seed(pg: &PgCluster) -> BTreeMap<i64, Vec<i64>> {
    let db = pg.client("shop").await;
    db.batch_execute(&format!(
        "INSERT INTO stock SELECT g, 0 FROM generate_series(1, {KEYS}) g"
    ))
    .await
    .unwrap();
    (1..=KEYS).map(|k| (k, vec![0])).collect()
}

async fn all_arrive(rx: &Receiver, written: &BTreeMap<i64, Vec<i64>>) {
    let total: usize = written.values().map(Vec::len).sum();
    let got = rx
        .wait_for(Duration::from_secs(90), "every change", |g| {
            g.iter().map(|r| &r.id).collect::<HashSet<_>>().len() >= total
        })
        .await;
    assert_eq!(&qty_sequences(&got), written, "per-key order and content");
    println!("{total} changes, {} deliveries", got.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn walsender_terminated_mid_workload_loses_nothing() {
    let (pg, rx, w, mut written) = setup().await;
    let admin = pg.client("postgres").await;
    let killer = tokio::spawn(async move {
        for _ in 0..3 {
            tokio::time::sleep(Duration::from_millis(400)).await;
            admin
                .batch_execute(
                    "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE active_pid IS NOT NULL",
                )
                .await
                .unwrap();
        }
    });
    workload(&pg, 1..200, &mut written).await;
    killer.await.unwrap();
    all_arrive(&rx, &written).await;
    let log = w.log();
    assert!(
        log.contains("replication stream lost; reconnecting"),
        "the reconnect is logged"
    );
    assert!(log.matches("replication streaming").count() >= 2, "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_restart_mid_workload_loses_nothing() {
    let (pg, rx, w, mut written) = setup().await;
    workload(&pg, 1..50, &mut written).await;
    pg.restart().await;
    workload(&pg, 50..100, &mut written).await;
    all_arrive(&rx, &written).await;
    w.wait_ready().await;
    assert!(w.log().contains("reconnecting"));

    // A type created after the restart is looked up on a new catalog connection: a
    // domain over integer arrives as a number, not as text.
    let db = pg.client("shop").await;
    db.batch_execute(
        "CREATE DOMAIN units AS integer; ALTER TABLE stock ADD COLUMN units units;
         UPDATE stock SET units = 7 WHERE product_id = 1",
    )
    .await
    .unwrap();
    let got = rx
        .wait_for(Duration::from_secs(20), "the change with units", |g| {
            g.iter().any(|r| !r.json()["data"]["new"]["units"].is_null())
        })
        .await;
    let units = got
        .iter()
        .map(|r| r.json()["data"]["new"]["units"].clone())
        .find(|u| !u.is_null())
        .unwrap();
    assert_eq!(units, serde_json::json!(7), "{}", w.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_instance_waits_for_the_slot_and_takes_over() {
    let (pg, rx, mut first, mut written) = setup().await;
    let url = pg.url("shop");
    let second = Walhook::start(&config(&url, &rx.url()));
    eventually(
        Duration::from_secs(20),
        "the second instance to stand by",
        || async { second.log().contains("standing by: another walhook leads") },
    )
    .await;
    workload(&pg, 1..20, &mut written).await;
    first.sigkill();
    workload(&pg, 20..40, &mut written).await;
    all_arrive(&rx, &written).await;
    second.wait_ready().await;

    // The admin server tells what happened.
    assert_eq!(second.admin_get("/healthz").await.as_deref(), Some("ok\n"));
    let metrics = second.admin_get("/metrics").await.unwrap();
    for name in [
        "walhook_changes_decoded_total",
        "walhook_events_emitted_total",
        "walhook_deliveries_total{subscriber=\"s\",outcome=\"delivered\"}",
        "walhook_delivery_duration_seconds_bucket{subscriber=\"s\",le=\"+Inf\"}",
        "walhook_lane_spilling{subscriber=\"s\"} 0",
        "walhook_lane_backlog_events{subscriber=\"s\"}",
        "walhook_replication_lag_bytes",
        "walhook_replication_streaming 1",
    ] {
        assert!(metrics.contains(name), "{name} missing from /metrics:\n{metrics}");
    }
    assert!(
        second
            .metric("walhook_deliveries_total{subscriber=\"s\",outcome=\"delivered\"}")
            .await
            .unwrap()
            > 0.0
    );
}

/// The path to the source dies without a word mid-workload: the replication connection
/// stays open and silent. Walhook asks for a reply halfway through its silence limit
/// (here 9 s: 1.5 times the server's `wal_sender_timeout` of 6 s, above
/// `receive_timeout`), drops the connection at the limit, and streams again on a new
/// one; nothing is lost. Before that, an idle stream, on which the server sends nothing
/// unasked (walhook reports every second), is not taken for a dead one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replication_connection_gone_silent_is_replaced() {
    let pg = PgCluster::start().await;
    pg.create_db("shop", SCHEMA).await;
    // The state database is a cluster of its own: its writes (lease, watermarks) would
    // be WAL of the source, which the server reports unasked.
    let state = PgCluster::start().await;
    let state_url = state.create_db("walhook_state", "").await;
    let admin = pg.client("postgres").await;
    for sql in [
        "ALTER SYSTEM SET wal_sender_timeout = '6s'",
        "SELECT pg_reload_conf()",
    ] {
        admin.batch_execute(sql).await.unwrap();
    }
    let proxy = Proxy::start(format!("127.0.0.1:{}", pg.port()).parse().unwrap()).await;
    let url = format!("postgres://postgres@{}/shop", proxy.addr);
    let rx = Receiver::start().await;
    let config = format!(
        "[source]\nurl = \"{url}\"\nreceive_timeout = \"2s\"\nstatus_interval = \"1s\"\n[state]\nurl = \"{state_url}\"\n[[events]]\ntable = \"stock\"\n{}",
        subscriber("s", &rx.url(), "\"*\"", "")
    );
    let w = Walhook::start(&config);
    w.wait_ready().await;
    let mut written = seed(&pg).await;
    workload(&pg, 1..20, &mut written).await;
    all_arrive(&rx, &written).await;

    // Idle for longer than the limit: the requests for a reply keep it alive.
    tokio::time::sleep(Duration::from_secs(12)).await;
    let log = w.log();
    assert!(
        !log.contains("not even when asked for a reply") && !log.contains("reconnecting"),
        "an idle stream was taken for a dead one: {log}"
    );

    assert_eq!(w.metric("walhook_replication_streaming").await, Some(1.0));
    proxy.cut();
    let cut = std::time::Instant::now();
    workload(&pg, 20..40, &mut written).await;
    all_arrive(&rx, &written).await;
    println!(
        "every change arrived {:?} after the connection was cut",
        cut.elapsed()
    );
    let log = w.log();
    assert!(
        log.contains("the server sent nothing for 9s, not even when asked for a reply"),
        "{log}"
    );
    w.wait_ready().await;
}
