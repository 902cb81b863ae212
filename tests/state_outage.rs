//! The state database (a cluster of its own) is unreachable for 30 s mid-workload while
//! one subscriber fails and spills: the slot is never confirmed past what is durable,
//! the healthy subscriber's deliveries go on, readiness says the state database is
//! down, and once it is back nothing is lost and every key arrives in order.
//!
//! "Durable" is exact here: the first transaction written during the outage cannot be
//! spilled, so the slot may be confirmed up to that transaction's commit LSN (the server
//! sends again every transaction whose commit LSN is not below the confirmed one) and no
//! further. That commit LSN is read from the event ids the healthy subscriber received.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::*;

const SCHEMA: &str = "CREATE TABLE stock (product_id bigint PRIMARY KEY, qty integer NOT NULL);";
const KEYS: i64 = 20;
const OUTAGE: Duration = Duration::from_secs(30);

async fn update(db: &tokio_postgres::Client, round: i64, written: &mut BTreeMap<i64, Vec<i64>>) {
    db.batch_execute(&format!("UPDATE stock SET qty = {round}"))
        .await
        .unwrap();
    for k in 1..=KEYS {
        written.entry(k).or_default().push(round);
    }
}

async fn lsn(db: &tokio_postgres::Client) -> u64 {
    let row = db
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::bigint", &[])
        .await
        .unwrap();
    row.get::<_, i64>(0) as u64
}

/// The commit LSN an event id (`evt_<commit lsn, 16 hex digits>_...`) carries.
fn commit_lsn(id: &str) -> u64 {
    id.strip_prefix("evt_")
        .and_then(|rest| rest.get(..16))
        .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        .unwrap_or_else(|| panic!("{id} is not an event id"))
}

fn unique(got: &[Received]) -> usize {
    got.iter().map(|r| &r.id).collect::<HashSet<_>>().len()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_state_database_holds_the_slot_and_loses_nothing() {
    let pg = PgCluster::start().await;
    let state = PgCluster::start().await;
    let url = pg.create_db("shop", SCHEMA).await;
    let state_url = state.create_db("walhook_state", "").await;
    let healthy = Receiver::start().await;
    let flaky = Receiver::start().await;
    flaky.set_status(500);
    let failing =
        "spill_after = \"1s\"\nretry_initial = \"100ms\"\nretry_max = \"300ms\"\nmax_attempts = 100000";
    let config = format!(
        "[source]\nurl = \"{url}\"\nslot = \"shop\"\n[state]\nurl = \"{state_url}\"\n[[events]]\ntable = \"stock\"\n{}{}",
        subscriber("healthy", &healthy.url(), "\"*\"", ""),
        subscriber("flaky", &flaky.url(), "\"*\"", failing)
    );
    let w = Walhook::start(&config);
    w.wait_ready().await;
    let db = pg.client("shop").await;
    db.batch_execute(&format!(
        "INSERT INTO stock SELECT g, 0 FROM generate_series(1, {KEYS}) g"
    ))
    .await
    .unwrap();
    let mut written: BTreeMap<i64, Vec<i64>> = (1..=KEYS).map(|k| (k, vec![0])).collect();
    for round in 1..10 {
        update(&db, round, &mut written).await;
    }
    eventually(Duration::from_secs(20), "the failing lane spills", || async {
        w.metric("walhook_lane_spilling{subscriber=\"flaky\"}").await == Some(1.0)
    })
    .await;
    healthy
        .wait_for(Duration::from_secs(20), "the first rounds", |g| {
            g.len() >= 10 * KEYS as usize
        })
        .await;

    // The state database goes away for OUTAGE while rounds go on, one a second.
    state.stop();
    let down_at = lsn(&db).await;
    let outage_start = Instant::now();
    let first_outage_round = 10;
    let mut round = first_outage_round;
    let mut not_ready_seen = false;
    let mut confirmed_during = Vec::new();
    while outage_start.elapsed() < OUTAGE {
        update(&db, round, &mut written).await;
        round += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
        confirmed_during.push(confirmed_flush(&db, "shop").await);
        if let Ok(r) = reqwest::get(format!("http://{}/readyz", w.admin)).await {
            not_ready_seen |= r.status().as_u16() == 503;
        }
    }
    assert!(not_ready_seen, "/readyz says the state database is down");
    // The healthy lane went on meanwhile: every round but the last one or two arrived.
    let during: usize = written.values().map(Vec::len).sum::<usize>() - 2 * KEYS as usize;
    let delivered = healthy.delivered();
    let got = unique(&delivered);
    println!("during the outage the healthy subscriber had {got} of {during} events");
    assert!(got >= during, "the healthy lane stalled: {got} of {during}");
    // The slot never passed the first transaction the failing lane could not spill.
    let undurable = delivered
        .iter()
        .filter(|r| r.json()["data"]["new"]["qty"].as_i64() >= Some(first_outage_round))
        .map(|r| commit_lsn(&r.id))
        .min()
        .expect("the healthy subscriber has the outage's rounds");
    assert!(undurable > down_at, "{undurable:X} is an outage round's commit");
    let most = confirmed_during.iter().copied().max().unwrap_or(0);
    println!(
        "during the outage the slot was confirmed up to {most:X}; the first commit that could not be spilled is {undurable:X}"
    );
    assert!(
        most <= undurable,
        "the slot was confirmed to {most:X}, past {undurable:X}, the commit of the first transaction written while the state database was down (confirmed each second: {confirmed_during:X?})"
    );

    // Back: the failing subscriber recovers too, and everything arrives in order.
    state.start_again().await;
    flaky.set_status(204);
    for r in round..round + 5 {
        update(&db, r, &mut written).await;
    }
    let total: usize = written.values().map(Vec::len).sum();
    for (name, rx) in [("healthy", &healthy), ("flaky", &flaky)] {
        let got = rx.wait_unique(Duration::from_secs(90), name, total).await;
        assert_eq!(qty_sequences(&got), written, "{name}: per-key order and content");
    }
    w.wait_ready().await;
    let end = lsn(&db).await;
    eventually(Duration::from_secs(30), "the slot catches up", || async {
        confirmed_flush(&db, "shop").await >= end
    })
    .await;
    assert!(
        w.log().contains("reconnected to the state database"),
        "{}",
        w.log()
    );
}

/// A state database that refuses writes (here: read-only) is diagnosable: the log and
/// the admin API carry PostgreSQL's own message and SQLSTATE, not just "db error".
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_state_database_is_named_in_the_log_and_the_api() {
    const TOKEN: &str = "state-errors-token-0123456789";
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", SCHEMA).await;
    let state_url = pg.create_db("walhook_state", "").await;
    let rx = Receiver::start().await;
    let config = format!(
        "[source]\nurl = \"{url}\"\nslot = \"shop\"\n[state]\nurl = \"{state_url}\"\n[[events]]\ntable = \"stock\"\n{}",
        subscriber("s", &rx.url(), "\"*\"", "")
    );
    let w = Walhook::start_with_admin(&config, &format!("token = \"{TOKEN}\""));
    w.wait_ready().await;

    // Read-only for new sessions; walhook's sessions are ended, so it opens new ones.
    let admin = pg.client("postgres").await;
    admin
        .batch_execute(
            "ALTER DATABASE walhook_state SET default_transaction_read_only = on;
             SELECT pg_terminate_backend(pid) FROM pg_stat_activity
             WHERE datname = 'walhook_state' AND pid <> pg_backend_pid();",
        )
        .await
        .unwrap();
    let db = pg.client("shop").await;
    db.batch_execute("INSERT INTO stock VALUES (1, 1)").await.unwrap();
    rx.wait_for_any(Duration::from_secs(20), "the change").await;

    // An API answer: a pause must be recorded in the state database first.
    let deadline = Instant::now() + Duration::from_secs(20);
    let answer = loop {
        let (code, v) = w.api("POST", "/subscribers/s/pause", Some(TOKEN), None).await;
        if code == 503 && v["error"].as_str().is_some_and(|e| e.contains("SQLSTATE")) {
            break v;
        }
        assert!(
            Instant::now() < deadline,
            "no pause refused with the server's reason: {code} {v}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let error = answer["error"].as_str().unwrap();
    assert!(
        error.contains("cannot execute INSERT in a read-only transaction (SQLSTATE 25006)"),
        "{error}"
    );

    // The log: the failed watermark saves say what the server said.
    w.wait_log("cannot save lane watermarks", 1).await;
    let log = w
        .wait_log(
            "cannot execute INSERT in a read-only transaction (SQLSTATE 25006)",
            1,
        )
        .await;
    let saves: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("cannot save lane watermarks"))
        .collect();
    assert!(
        saves
            .iter()
            .any(|l| l.contains("cannot execute INSERT in a read-only transaction (SQLSTATE 25006)")),
        "{saves:?}"
    );
    assert!(!log.contains("db error"), "{log}");
}
