//! A full lane: while its subscriber keeps up, the reader waits for room instead of
//! writing the burst to the spill log; it spills once the reader lags its source by
//! `spill_after`, or when waiting would keep another lane idle.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::*;

/// A lane that spills in chunks soon: small memory, a receiver slower than a burst.
const CHUNKY: &str = "max_buffered = 100\nmax_in_flight = 4\nspill_after = \"300ms\"";

const SCHEMA: &str = "CREATE TABLE stock (product_id bigint PRIMARY KEY, qty integer NOT NULL);
    ALTER TABLE stock REPLICA IDENTITY FULL;";

fn config(url: &str, subscribers: &str) -> String {
    let slot = url.rsplit('/').next().unwrap();
    format!("[source]\nurl = \"{url}\"\nslot = \"{slot}\"\n[[events]]\ntable = \"stock\"\n{subscribers}")
}

/// `keys` inserts, then `rounds` updates of every key, each statement its own
/// transaction. Returns the value sequence per key.
async fn burst(db: &tokio_postgres::Client, keys: i64, rounds: i64) -> BTreeMap<i64, Vec<i64>> {
    db.batch_execute(&format!(
        "INSERT INTO stock SELECT g, 0 FROM generate_series(1, {keys}) g"
    ))
    .await
    .unwrap();
    for round in 1..=rounds {
        db.batch_execute(&format!("UPDATE stock SET qty = {round}"))
            .await
            .unwrap();
    }
    (1..=keys).map(|k| (k, (0..=rounds).collect())).collect()
}

async fn spill_rows(db: &tokio_postgres::Client) -> i64 {
    count(db, "SELECT count(*) FROM walhook.spill").await
}

async fn chunks(db: &tokio_postgres::Client) -> i64 {
    count(db, "SELECT count(*) FROM walhook.spill_chunks").await
}

/// Chunks are frames walhook compressed with lz4 itself, stored as they are: the state
/// database (often the source) neither parses nor compresses them, and receives a
/// fraction of the bytes.
async fn chunks_compressed(db: &tokio_postgres::Client) {
    let row = db
        .query_one(
            "SELECT count(*), count(frame), count(bodies),
                    count(*) FILTER (WHERE pg_column_compression(frame) IS NOT NULL),
                    coalesce(sum(octet_length(frame)), 0)::bigint, coalesce(sum(bytes), 0)::bigint,
                    coalesce(sum(events), 0)::bigint
             FROM walhook.spill_chunks",
            &[],
        )
        .await
        .unwrap();
    let (chunks, frames, arrays, recompressed) = (
        row.get::<_, i64>(0),
        row.get::<_, i64>(1),
        row.get::<_, i64>(2),
        row.get::<_, i64>(3),
    );
    let (stored, raw, events) = (row.get::<_, i64>(4), row.get::<_, i64>(5), row.get::<_, i64>(6));
    println!("{chunks} chunks of {events} events: {raw} bytes of bodies stored in {stored}");
    assert!(chunks > 0, "the burst was spilled in chunks");
    assert_eq!((frames, arrays), (chunks, 0), "every chunk is a frame");
    assert_eq!(recompressed, 0, "the server compresses no frame again");
    assert!(
        stored * 2 < raw,
        "lz4 at least halves the bodies: {raw} bytes stored in {stored}"
    );
}

/// Events received, duplicates counted once.
fn distinct(got: &[Received]) -> usize {
    got.iter()
        .map(|r| &r.id)
        .collect::<std::collections::HashSet<_>>()
        .len()
}

/// A database with the stock table, a receiver answering after `delay`, and walhook
/// with one subscriber "shop" (settings `extra`), ready.
struct Shop {
    pg: PgCluster,
    rx: Receiver,
    config: String,
    w: Walhook,
    db: tokio_postgres::Client,
}

async fn shop(name: &str, delay: Duration, extra: &str) -> Shop {
    let pg = PgCluster::start().await;
    let url = pg.create_db(name, SCHEMA).await;
    let rx = Receiver::start().await;
    rx.set_delay(delay);
    let config = config(&url, &subscriber("shop", &rx.url(), "\"*\"", extra));
    let w = Walhook::start(&config);
    w.wait_ready().await;
    let db = pg.client(name).await;
    Shop {
        pg,
        rx,
        config,
        w,
        db,
    }
}

async fn drained(db: &tokio_postgres::Client) {
    eventually(Duration::from_secs(20), "spill log drained", || async {
        spill_rows(db).await == 0 && chunks(db).await == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lane_that_keeps_up_holds_the_reader_instead_of_spilling() {
    // About 1,000 events/s: far slower than the burst is read.
    let Shop {
        pg: _pg, rx, w, db, ..
    } = shop(
        "held",
        Duration::from_millis(4),
        "max_buffered = 50\nmax_in_flight = 4",
    )
    .await;

    let written = burst(&db, 1000, 2).await;
    let got = rx
        .wait_for(Duration::from_secs(60), "every event", |g| g.len() >= 3000)
        .await;
    assert_eq!(qty_sequences(&got), written, "per-key order and content");

    let held = w
        .metric("walhook_lane_held_seconds_total{subscriber=\"shop\"}")
        .await
        .expect("held metric");
    println!("3,000 events through a 50-event lane; the reader waited {held:.2}s for room");
    assert!(held > 0.5, "the reader waited for room: {held}s");
    assert_eq!(
        w.metric("walhook_spill_rows_written_total{subscriber=\"shop\"}")
            .await,
        Some(0.0),
        "nothing spilled"
    );
    assert_eq!(spill_rows(&db).await, 0);
    assert!(!w.log().contains("switches to spill mode"), "{}", w.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_lane_spills_once_the_reader_lags_spill_after() {
    // About 200 events/s: 2,000 events take ten times spill_after.
    let extra = "max_buffered = 50\nmax_in_flight = 2\nspill_after = \"1s\"";
    let Shop {
        pg: _pg, rx, w, db, ..
    } = shop("lagging", Duration::from_millis(10), extra).await;

    let written = burst(&db, 1000, 1).await;
    // The slot passes the burst long before the subscriber has it: it is spilled.
    let end: i64 = db
        .query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::bigint", &[])
        .await
        .unwrap()
        .get(0);
    let t = Instant::now();
    eventually(
        Duration::from_secs(15),
        "the slot confirmed past the burst",
        || async { confirmed_flush(&db, "lagging").await >= end as u64 },
    )
    .await;
    let delivered = rx.delivered().len();
    println!(
        "slot past the burst after {:?}, with {delivered} of 2,000 delivered",
        t.elapsed()
    );
    assert!(
        delivered < 2000,
        "the slot moved before the subscriber had everything"
    );
    assert!(
        w.log().contains("the source is spill_after ahead"),
        "spill reason logged: {}",
        w.log()
    );

    let got = rx
        .wait_for(Duration::from_secs(60), "every event", |g| g.len() >= 2000)
        .await;
    assert_eq!(qty_sequences(&got), written, "per-key order and content");
    eventually(Duration::from_secs(10), "spill log drained", || async {
        spill_rows(&db).await == 0
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_lane_spills_rather_than_keep_a_fast_one_waiting() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("pair", SCHEMA).await;
    let slow = Receiver::start().await;
    slow.set_delay(Duration::from_millis(10));
    let fast = Receiver::start().await;
    let subs = subscriber(
        "slow",
        &slow.url(),
        "\"*\"",
        "max_buffered = 50\nmax_in_flight = 2",
    ) + &subscriber("fast", &fast.url(), "\"*\"", "");
    let w = Walhook::start(&config(&url, &subs));
    w.wait_ready().await;
    let db = pg.client("pair").await;

    let t = Instant::now();
    let written = burst(&db, 1000, 2).await;
    let got = fast
        .wait_for(Duration::from_secs(20), "the fast subscriber's events", |g| {
            g.len() >= 3000
        })
        .await;
    let took = t.elapsed();
    let slow_had = slow.delivered().len();
    println!("fast subscriber had 3,000 events after {took:?}; the slow one had {slow_had}");
    assert_eq!(qty_sequences(&got), written, "fast: per-key order and content");
    // The slow one needs 15 s for 3,000 events; holding the reader for it would have
    // paced the fast one the same way.
    assert!(slow_had < 2000, "the slow subscriber had {slow_had} already");
    assert!(
        w.log().contains("other lanes wait for events"),
        "spill reason logged: {}",
        w.log()
    );
    let got = slow
        .wait_for(Duration::from_secs(60), "the slow subscriber's events", |g| {
            g.len() >= 3000
        })
        .await;
    assert_eq!(qty_sequences(&got), written, "slow: per-key order and content");
}

async fn count(db: &tokio_postgres::Client, sql: &str) -> i64 {
    db.query_one(sql, &[]).await.unwrap().get(0)
}

/// A lane that keeps up but lags spills in chunks; SIGKILLs while chunks are being
/// served lose nothing, and per key the first receipts follow commit order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_lose_nothing_across_sigkill() {
    let Shop {
        pg: _pg,
        rx,
        mut w,
        db,
        ..
    } = shop("chunks", Duration::from_millis(4), CHUNKY).await;

    let written = burst(&db, 1000, 3).await;
    eventually(Duration::from_secs(20), "chunks in the spill log", || async {
        chunks(&db).await > 0
    })
    .await;
    let mut kills = 0;
    for _ in 0..3 {
        let have = rx.delivered().len();
        tokio::time::sleep(Duration::from_millis(300 + 400 * kills)).await;
        if rx.delivered().len() >= 4000 || rx.delivered().len() == have {
            continue;
        }
        w.sigkill();
        kills += 1;
        w.restart();
        w.wait_ready().await;
    }
    let got = rx
        .wait_for(Duration::from_secs(90), "every event", |g| distinct(g) >= 4000)
        .await;
    let dupes = got.len() - 4000;
    println!("{kills} SIGKILLs while serving chunks; {dupes} duplicates");
    assert!(kills > 0, "walhook was killed while delivering");
    assert_eq!(qty_sequences(&got), written, "per-key order and content");
    let log = w.log();
    assert!(log.contains("chunked=true"), "the lane spilled in chunks: {log}");
    drained(&db).await;
}

/// A subscriber that goes down while its lane serves chunks: the backlog stays in
/// chunks, the subscriber is probed one attempt at a time, and once it is back it gets
/// everything, in per-key order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_down_subscriber_keeps_its_backlog_in_chunks_and_is_probed() {
    let extra = format!("{CHUNKY}\nmax_attempts = 1000\nretry_initial = \"100ms\"\nretry_max = \"300ms\"");
    let Shop {
        pg: _pg, rx, w, db, ..
    } = shop("down", Duration::from_millis(4), &extra).await;

    let written = burst(&db, 1000, 2).await;
    eventually(Duration::from_secs(20), "chunks in the spill log", || async {
        chunks(&db).await > 0
    })
    .await;
    rx.set_status(500);
    eventually(
        Duration::from_secs(20),
        "the lane to treat the subscriber as down",
        || async { w.log().contains("subscriber seems down") },
    )
    .await;
    // Probes 100 ms, 200 ms, then 300 ms apart (±25%): a handful in 2 s, where retrying
    // every key would make hundreds.
    let before = rx.all().len();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let probes = rx.all().len() - before;
    println!("{probes} attempts in 2 s while the subscriber was down");
    assert!(
        (3..=12).contains(&probes),
        "{probes} attempts in 2 s while the subscriber was down"
    );
    assert!(chunks(&db).await > 0, "the backlog stays in chunks");
    assert_eq!(spill_rows(&db).await, 0, "no chunk became rows");
    chunks_compressed(&db).await;
    // With room for 100 events, the reader waited for the lane's chunk writes.
    let waited = w
        .metric("walhook_lane_spill_held_seconds_total{subscriber=\"shop\"}")
        .await
        .expect("the spill wait is exported");
    assert!(waited > 0.0, "the reader waited {waited} s for chunk writes");
    assert_eq!(
        w.metric("walhook_lane_down{subscriber=\"shop\"}").await,
        Some(1.0)
    );

    // A probe answered with a refusal of that one event (a 4xx other than 408 and 429)
    // shows the subscriber is up: the lane leaves the outage and tries every key again.
    rx.set_status(422);
    eventually(
        Duration::from_secs(5),
        "a refused probe to end the outage",
        || async { w.metric("walhook_lane_down{subscriber=\"shop\"}").await == Some(0.0) },
    )
    .await;
    assert!(w.log().contains("subscriber answers again (refusing one event)"));

    // Down again, then back: a delivered probe ends the outage.
    rx.set_status(500);
    w.wait_log("subscriber seems down", 2).await;
    rx.set_status(204);
    let got = rx
        .wait_for(Duration::from_secs(90), "every event", |g| distinct(g) >= 3000)
        .await;
    assert_eq!(qty_sequences(&got), written, "per-key order and content");
    let log = w.log();
    assert!(
        log.contains("subscriber answers again; delivery resumes"),
        "{log}"
    );
    assert!(!log.contains("become rows"), "{log}");
    assert_eq!(
        w.metric("walhook_lane_down{subscriber=\"shop\"}").await,
        Some(0.0)
    );
    drained(&db).await;
    assert_eq!(count(&db, "SELECT count(*) FROM walhook.dead_letters").await, 0);
    eventually(Duration::from_secs(10), "lane back in hot mode", || async {
        w.metric("walhook_lane_spilling{subscriber=\"shop\"}").await == Some(0.0)
    })
    .await;
}

/// An event its subscriber always refuses, among chunks: it is dead-lettered after
/// `max_attempts`, each attempt in order, and every other key goes on meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_event_in_chunks_is_dead_lettered_and_its_key_moves_on() {
    let extra = format!("{CHUNKY}\nmax_attempts = 3\nretry_initial = \"50ms\"\nretry_max = \"100ms\"");
    let Shop {
        pg: _pg, rx, w, db, ..
    } = shop("refused", Duration::from_millis(4), &extra).await;
    rx.set_poison(1000);

    let mut written = burst(&db, 1000, 2).await;
    let refused = written.remove(&1000).unwrap();
    let got = rx
        .wait_for(Duration::from_secs(60), "every other event", |g| {
            distinct(g) >= 2997
        })
        .await;
    assert_eq!(qty_sequences(&got), written, "per-key order and content");
    eventually(
        Duration::from_secs(20),
        "the refused key's events dead",
        || async { count(&db, "SELECT count(*) FROM walhook.dead_letters").await == 3 },
    )
    .await;
    assert_eq!(
        count(
            &db,
            "SELECT count(*) FROM walhook.dead_letters WHERE attempts <> 3"
        )
        .await,
        0,
        "each dead after max_attempts"
    );
    // Its attempts, in order: three of each value.
    let tried: Vec<i64> = rx
        .all()
        .iter()
        .map(|r| r.json())
        .filter(|b| b["data"]["key"]["product_id"] == 1000)
        .map(|b| b["data"]["new"]["qty"].as_i64().unwrap())
        .collect();
    let expected: Vec<i64> = refused.iter().flat_map(|q| [*q; 3]).collect();
    assert_eq!(tried, expected);
    let log = w.log();
    assert!(log.contains("chunked=true"), "{log}");
    assert!(!log.contains("become rows"), "{log}");
    drained(&db).await;
    eventually(Duration::from_secs(10), "lane back in hot mode", || async {
        w.metric("walhook_lane_spilling{subscriber=\"shop\"}").await == Some(0.0)
    })
    .await;
}

/// A standby that waited for the slot while the leader spilled in chunks serves those
/// chunks before any newer event once the leader is SIGKILLed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_serves_a_killed_leaders_chunks_first() {
    let Shop {
        pg: _pg,
        rx,
        config,
        w: mut leader,
        db,
    } = shop("standby", Duration::from_millis(4), CHUNKY).await;
    let standby = Walhook::start(&config);
    eventually(
        Duration::from_secs(20),
        "the standby to wait for the lease",
        || async { standby.log().contains("standing by: another walhook leads") },
    )
    .await;

    let mut written = burst(&db, 1000, 2).await;
    eventually(Duration::from_secs(20), "chunks in the spill log", || async {
        chunks(&db).await > 0
    })
    .await;
    leader.sigkill();
    db.batch_execute("UPDATE stock SET qty = 10").await.unwrap();
    for v in written.values_mut() {
        v.push(10);
    }
    let got = rx
        .wait_for(Duration::from_secs(90), "every event", |g| distinct(g) >= 4000)
        .await;
    assert_eq!(qty_sequences(&got), written, "per-key order and content");
    assert!(
        standby
            .log()
            .contains("spill log has events: lane resumes in spill mode"),
        "{}",
        standby.log()
    );
    drained(&db).await;
}

/// A new key goes out at once while other keys wait for a slow answer: an idle worker
/// takes it. (A worker busy delivering once kept its wakeup registration and swallowed
/// the wakeup meant for an idle one, so a new key waited for the idle workers' own
/// once-a-second look for work.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_goes_out_at_once_while_other_keys_wait_for_a_slow_answer() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("fresh", SCHEMA).await;
    let rx = Receiver::start().await;
    let sub = subscriber("s", &rx.url(), "\"*\"", "timeout = \"30s\"");
    let walhook = Walhook::start(&config(&url, &sub));
    walhook.wait_ready().await;
    let db = pg.client("fresh").await;

    rx.set_delay(Duration::from_secs(6));
    db.batch_execute("INSERT INTO stock SELECT g, 1 FROM generate_series(1, 4) g")
        .await
        .unwrap();
    // Past the idle workers' own look for work, so only a wakeup starts key 5 at once.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    rx.set_delay(Duration::ZERO);
    let sent = Instant::now();
    db.batch_execute("INSERT INTO stock VALUES (5, 1)").await.unwrap();
    let is_five = |r: &Received| r.json()["data"]["key"]["product_id"] == 5;
    let got = rx
        .wait_for(Duration::from_secs(10), "key 5", |r| r.iter().any(is_five))
        .await;
    let took = got.iter().find(|r| is_five(r)).unwrap().at.duration_since(sent);
    assert!(
        took < Duration::from_millis(300),
        "key 5 took {took:?} while keys 1-4 waited for their answers"
    );
    assert!(
        got.iter().filter(|r| !is_five(r)).count() == 0,
        "keys 1-4 answered early"
    );
}
