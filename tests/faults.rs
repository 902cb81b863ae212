//! Delivery faults against scripted receivers: 500s, timeouts, connection resets, 429
//! and 503 with Retry-After, 410 Gone, and answers slower than the timeout. Each ends as
//! the retry policy says, and a healthy subscriber beside them is as fast as beside
//! healthy ones.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::{Duration, Instant};

use common::scripted::{Hit, Reply, Scripted};
use common::*;

const SCHEMA: &str = "CREATE TABLE stock (product_id bigint PRIMARY KEY, qty integer NOT NULL);
    ALTER TABLE stock REPLICA IDENTITY FULL;";
const KEYS: i64 = 20;
const ROUNDS: i64 = 10;
/// Quick retries and a short timeout, so the faults play out in seconds.
const FAST: &str =
    "retry_schedule = [\"200ms\", \"200ms\", \"200ms\", \"200ms\", \"200ms\"]\ntimeout = \"500ms\"";

fn config(url: &str, subscribers: &str) -> String {
    let slot = url.rsplit('/').next().unwrap();
    format!("[source]\nurl = \"{url}\"\nslot = \"{slot}\"\n[[events]]\ntable = \"stock\"\n{subscribers}")
}

/// KEYS inserts, then ROUNDS updates of every key, a transaction each: the qty values
/// per key, in order.
async fn workload(db: &tokio_postgres::Client) -> BTreeMap<i64, Vec<i64>> {
    let mut written: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    db.batch_execute(&format!(
        "INSERT INTO stock SELECT g, 0 FROM generate_series(1, {KEYS}) g"
    ))
    .await
    .unwrap();
    for k in 1..=KEYS {
        written.entry(k).or_default().push(0);
    }
    for round in 1..=ROUNDS {
        db.batch_execute(&format!("UPDATE stock SET qty = {round}"))
            .await
            .unwrap();
        for k in 1..=KEYS {
            written.entry(k).or_default().push(round);
        }
    }
    written
}

/// Per key, the qty values of the first delivery of each event, in arrival order.
fn sequences(hits: &[Hit]) -> BTreeMap<i64, Vec<i64>> {
    let mut seen = HashSet::new();
    let mut out: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for h in hits.iter().filter(|h| h.delivered()) {
        if seen.insert(h.id.clone()) {
            let j = h.json();
            let key = j["data"]["key"]["product_id"].as_i64().unwrap();
            out.entry(key)
                .or_default()
                .push(j["data"]["new"]["qty"].as_i64().unwrap());
        }
    }
    out
}

/// The faulty subscribers: name and script (after which each answers 204).
fn faults() -> Vec<(&'static str, Vec<Reply>)> {
    let after = |secs: &str| vec![("Retry-After", secs.to_string())];
    vec![
        ("e500", vec![Reply::status(500); 6]),
        ("timeout", vec![Reply::Hang; 3]),
        ("reset", vec![Reply::Reset; 3]),
        (
            "throttled",
            vec![Reply::Status(429, after("2")), Reply::Status(503, after("1"))],
        ),
        // Its Retry-After outlasts spill_after (see `extra`): the lane spills while the
        // event waits, and the wait still holds.
        ("spilled_throttled", vec![Reply::Status(429, after("3"))]),
        ("gone", vec![Reply::status(410)]),
        ("slow", vec![Reply::Slow(Duration::from_secs(1), 204); 3]),
    ]
}

/// A subscriber's settings beyond `FAST`.
fn extra(name: &str) -> &'static str {
    match name {
        "spilled_throttled" => "\nspill_after = \"1s\"",
        _ => "",
    }
}

/// The Retry-After waits a subscriber was told, by the index of the answer that told it.
fn told_waits(name: &str) -> &'static [(usize, u64)] {
    match name {
        "throttled" => &[(0, 2), (1, 1)],
        "spilled_throttled" => &[(0, 3)],
        _ => &[],
    }
}

/// Runs the workload against a healthy receiver and the scripted ones (all healthy when
/// `faulty` is false). Returns how long the healthy one took to get every event, its
/// receiver, the scripted ones, what was written, and the walhook.
async fn run(
    pg: &PgCluster,
    db_name: &str,
    faulty: bool,
) -> (
    Duration,
    Receiver,
    Vec<(&'static str, Scripted)>,
    BTreeMap<i64, Vec<i64>>,
    Walhook,
) {
    let url = pg.create_db(db_name, SCHEMA).await;
    let healthy = Receiver::start().await;
    let mut scripted = Vec::new();
    let mut subs = subscriber("healthy", &healthy.url(), "\"*\"", FAST);
    for (name, script) in faults() {
        let rx = Scripted::start(if faulty { script } else { Vec::new() }).await;
        subs += &subscriber(name, &rx.url(), "\"*\"", &format!("{FAST}{}", extra(name)));
        scripted.push((name, rx));
    }
    let w = Walhook::start(&config(&url, &subs));
    w.wait_ready().await;
    let db = pg.client(db_name).await;
    let n = (KEYS * (ROUNDS + 1)) as usize;
    let start = Instant::now();
    let written = workload(&db).await;
    healthy
        .wait_for(Duration::from_secs(60), "the healthy subscriber's events", |g| {
            g.len() >= n
        })
        .await;
    (start.elapsed(), healthy, scripted, written, w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_ends_as_specified_and_a_healthy_subscriber_loses_no_time() {
    let pg = PgCluster::start().await;
    let n = (KEYS * (ROUNDS + 1)) as usize;

    // Baseline: the same subscribers, all healthy.
    let (calm, _, calm_rx, _, mut w) = run(&pg, "calm", false).await;
    for (name, rx) in &calm_rx {
        rx.wait_delivered(n, Duration::from_secs(30), name).await;
    }
    w.stop();

    let (stormy, healthy, scripted, written, mut w) = run(&pg, "stormy", true).await;
    println!(
        "healthy subscriber, {n} events: beside healthy ones {calm:?}, beside seven failing ones {stormy:?}"
    );
    assert!(
        stormy <= calm * 2 + Duration::from_secs(1),
        "the healthy subscriber lost time: {calm:?} beside healthy ones, {stormy:?} beside failing ones"
    );
    assert_eq!(
        qty_sequences(&healthy.delivered()),
        written,
        "healthy: order and content"
    );

    let db = pg.client("stormy").await;
    for (name, rx) in &scripted {
        let script_len = faults().into_iter().find(|(f, _)| f == name).unwrap().1.len();
        let first = rx.hits().first().cloned().expect("the receiver was called");
        if *name == "gone" {
            assert!(matches!(first.reply, Reply::Status(410, _)), "{first:?}");
            // 410: the subscriber is disabled at once; nothing more is sent to it, and
            // nothing is given up (its events wait for a resume, see tests/lifecycle.rs).
            eventually(Duration::from_secs(10), "gone disabled", || async {
                w.metric("walhook_subscriber_stopped{subscriber=\"gone\"}").await == Some(1.0)
            })
            .await;
            let sent = rx.hits().len();
            tokio::time::sleep(Duration::from_millis(1000)).await;
            assert_eq!(rx.hits().len(), sent, "requests after the 410");
            // The first answer was the 410; attempts already in flight, or started before
            // walhook read that answer, finish (how many depends on the machine's speed).
            assert!(rx.delivered().len() < n, "a disabled subscriber got everything");
            let dead: i64 = db
                .query_one(
                    "SELECT count(*) FROM walhook.dead_letters WHERE subscriber = 'gone'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            assert_eq!(dead, 0, "a 410 gives nothing up");
            println!("gone: disabled after {sent} requests (the first answered 410)");
            continue;
        }
        // Everything else arrives, each key in order, after its failed attempts.
        rx.wait_delivered(n, Duration::from_secs(30), name).await;
        let hits = rx.hits();
        assert_eq!(sequences(&hits), written, "{name}: order and content");
        let failed = hits.iter().filter(|h| !h.delivered()).count();
        let extra = hits.len() - n;
        println!("{name}: {} requests for {n} events ({failed} failed)", hits.len());
        match *name {
            // A slow answer counts as delivered by the receiver but timed out for
            // walhook, which sends that event again.
            "slow" => assert!(extra >= script_len, "slow answers are retried: {extra}"),
            _ => assert_eq!(
                failed, script_len,
                "{name}: each scripted failure was one attempt"
            ),
        }
        // Every failed event was retried (same id) and then delivered.
        for h in hits.iter().take(script_len) {
            let retried = hits.iter().filter(|x| x.id == h.id).count();
            assert!(retried >= 2, "{name}: {} was not retried", h.id);
        }
        if *name == "spilled_throttled" {
            assert!(
                w.log()
                    .contains("lane switches to spill mode subscriber=spilled_throttled"),
                "the lane spilled while its event waited out the Retry-After"
            );
        }
        {
            // A 429 or 503 said when to come back: not a moment sooner.
            for &(i, wait) in told_waits(name) {
                let told = &hits[i];
                let next = hits
                    .iter()
                    .find(|h| h.id == told.id && h.at > told.at)
                    .expect("retried");
                let gap = next.at - told.at;
                println!("{name}: retried {gap:?} after a Retry-After of {wait} s");
                assert!(
                    gap >= Duration::from_secs(wait),
                    "retried after {gap:?}, told {wait} s"
                );
                assert!(
                    gap < Duration::from_secs(wait + 2),
                    "retried after {gap:?}, told {wait} s"
                );
            }
        }
    }
    w.stop();
}
