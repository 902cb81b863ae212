//! Two walhook processes on one slot: one leads, the other stands by. The standby takes
//! over within 10 s when the leader is SIGKILLed mid-workload, and when the leader loses
//! its state database (a frozen proxy); nothing is lost, every key arrives in order, and
//! no event is ever in flight from both: the receiver tells each request's sender by the
//! process that owns the connection.

mod common;

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::proxy::Proxy;
use common::*;

const SCHEMA: &str = "CREATE TABLE stock (product_id bigint PRIMARY KEY, qty integer NOT NULL);";
const KEYS: i64 = 20;
const TOKEN: &str = "standby-test-token-0123456789";
const TOKEN_LINE: &str = "token = \"standby-test-token-0123456789\"";
/// Each answer takes this long, so requests are in flight at any moment.
const ANSWER: Duration = Duration::from_millis(20);
/// The longest a takeover may take (the default `state.lease` is 6 s).
const TAKEOVER: Duration = Duration::from_secs(10);

fn config(url: &str, state_url: &str, rx: &str) -> String {
    format!(
        "[source]\nurl = \"{url}\"\nslot = \"shop\"\n[state]\nurl = \"{state_url}\"\n[[events]]\ntable = \"stock\"\n{}",
        subscriber("s", rx, "\"*\"", "")
    )
}

/// Writes one round (every key) every 50 ms until `stop`; returns the values per key.
fn writer(
    db: tokio_postgres::Client,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<BTreeMap<i64, Vec<i64>>> {
    tokio::spawn(async move {
        let mut written: BTreeMap<i64, Vec<i64>> = (1..=KEYS).map(|k| (k, vec![0])).collect();
        let mut round = 1;
        while !stop.load(Ordering::SeqCst) {
            db.batch_execute(&format!("UPDATE stock SET qty = {round}"))
                .await
                .unwrap();
            for k in 1..=KEYS {
                written.entry(k).or_default().push(round);
            }
            round += 1;
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        written
    })
}

/// Tags each request "a" or "b" by the walhook process that sent it ("?" for neither).
fn tag_senders(rx: &Receiver, a: &Walhook, b: &Walhook) {
    let (pa, pb) = (a.pid().as_raw() as u32, b.pid().as_raw() as u32);
    rx.set_tagger(
        move |peer, own| match procnet::socket_owner(peer, own, &[pa, pb]) {
            Some(p) if p == pa => "a".into(),
            Some(_) => "b".into(),
            None => "?".into(),
        },
    );
}

/// Checks the handover in what the receiver saw arrive (answered or not): every request
/// of the old leader "a" arrived before `a_stopped`, and before b's first one by more
/// than an answer takes; and "b" started within TAKEOVER of `since`. Returns b's
/// takeover time.
fn handover(rx: &Receiver, a_stopped: Instant, since: Instant) -> Duration {
    let all = rx.arrivals();
    let from = |t: &'static str| all.iter().filter(move |r| r.tag == t);
    let a_last = from("a").map(|r| r.arrived).max().expect("a delivered");
    let b_first = from("b").map(|r| r.arrived).min().expect("b delivered");
    assert!(
        a_last < a_stopped,
        "the old leader sent after it should have stopped"
    );
    assert!(
        b_first > a_last + ANSWER,
        "the standby sent while the leader's requests could still be in flight"
    );
    // A request of unknown sender ("?") came on a connection its sender had closed
    // before the receiver looked: the killed or fenced leader's, sent before it stopped
    // (under load the receiver may handle it late). A standby waiting for its answer
    // keeps its connection open, so its requests are always named.
    let unknown = from("?").count();
    if unknown > 0 {
        println!("{unknown} request(s) came on connections their sender had closed");
    }
    let took = b_first - since;
    assert!(took <= TAKEOVER, "the standby took {took:?} to take over");
    took
}

async fn start_pair(
    pg: &PgCluster,
    a_state: &str,
    b_state: &str,
    rx: &Receiver,
) -> (Walhook, Walhook, tokio_postgres::Client) {
    let url = pg.url("shop");
    let a = Walhook::start_with_admin(&config(&url, a_state, &rx.url()), TOKEN_LINE);
    a.wait_ready().await;
    // As if on another host: the standby cannot see that the leader's process is gone,
    // and waits for its lease to expire.
    let b = Walhook::start_with_env(
        &config(&url, b_state, &rx.url()),
        TOKEN_LINE,
        &[("HOSTNAME", "standby-host")],
    );
    b.wait_log("standing by: another walhook leads", 1).await;
    // The leader has seen the standby, so it fences itself should its lease lapse.
    a.wait_log("a standby is waiting", 1).await;
    assert_eq!(a.metric("walhook_leader").await, Some(1.0));
    assert_eq!(b.metric("walhook_leader").await, Some(0.0));
    let ready = reqwest::get(format!("http://{}/readyz", b.admin)).await.unwrap();
    assert_eq!(ready.status().as_u16(), 503);
    assert!(ready.text().await.unwrap().contains("role=standby"));
    // Ready to take over, for orchestrators that roll replicas (deploy/kubernetes).
    let any = reqwest::get(format!("http://{}/readyz?role=any", b.admin))
        .await
        .unwrap();
    assert_eq!(any.status().as_u16(), 200);
    assert!(any.text().await.unwrap().contains("role=standby"));
    // Changes go to the leader; the standby says so.
    for (path, body) in [
        ("/subscribers/s/pause", serde_json::json!({ "reason": "test" })),
        ("/subscribers/s/resume", serde_json::json!({})),
        (
            "/deliveries/replay",
            serde_json::json!({ "subscriber": "s", "all": true }),
        ),
    ] {
        let (status, answer) = b.api("POST", path, Some(TOKEN), Some(body)).await;
        assert_eq!(status, 503, "{path} on the standby: {answer}");
        assert!(answer["error"].as_str().unwrap().contains("standby"), "{answer}");
    }
    tag_senders(rx, &a, &b);
    let db = pg.client("shop").await;
    db.batch_execute(&format!(
        "INSERT INTO stock SELECT g, 0 FROM generate_series(1, {KEYS}) g"
    ))
    .await
    .unwrap();
    (a, b, db)
}

/// Writes on while the leader delivers, strikes it with `fault`, and waits for the
/// standby to deliver; writes go on a little longer, then stop, and every event must
/// arrive, each key in order. Returns when the fault struck.
async fn fault_mid_workload(rx: &Receiver, db: tokio_postgres::Client, fault: impl FnOnce()) -> Instant {
    let stop = Arc::new(AtomicBool::new(false));
    let writing = writer(db, stop.clone());
    rx.wait_for(Duration::from_secs(20), "the leader delivering", |g| {
        g.len() > 100
    })
    .await;
    fault();
    let struck = Instant::now();
    rx.wait_for(Duration::from_secs(30), "the standby delivering", |_| {
        rx.arrivals().iter().any(|r| r.tag == "b")
    })
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop.store(true, Ordering::SeqCst);
    let written = writing.await.unwrap();
    let total: usize = written.values().map(Vec::len).sum();
    let got = rx
        .wait_unique(Duration::from_secs(60), "every event", total)
        .await;
    assert_eq!(qty_sequences(&got), written, "per-key order and content");
    struck
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_standby_takes_over_a_killed_leader_within_10s() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", SCHEMA).await;
    let rx = Receiver::start().await;
    rx.set_delay(ANSWER);
    let (mut a, b, db) = start_pair(&pg, &url, &url, &rx).await;

    let killed = fault_mid_workload(&rx, db, || a.sigkill()).await;
    let took = handover(&rx, killed, killed);
    println!("standby took over {took:?} after the leader was killed");
    assert!(b.log().contains("leading: this walhook holds the slot's lease"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_the_state_database_stops_before_the_standby_starts() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", SCHEMA).await;
    // The leader reaches the state database (here the source database) through a proxy
    // that freezes; the standby reaches it directly.
    let proxy = Proxy::start(format!("127.0.0.1:{}", pg.port()).parse().unwrap()).await;
    let a_state = format!("postgres://postgres@{}/shop", proxy.addr);
    let rx = Receiver::start().await;
    rx.set_delay(ANSWER);
    let (a, b, db) = start_pair(&pg, &a_state, &url, &rx).await;

    let cut = fault_mid_workload(&rx, db, || proxy.freeze()).await;

    // The leader stopped within the lease (6 s) of losing the state database, before
    // the lease could expire for the standby.
    let log = a.log();
    assert!(
        log.contains("a standby may take over, so this walhook stops delivering at once"),
        "{log}"
    );
    let took = handover(&rx, cut + Duration::from_secs(6), cut);
    let a_last = rx
        .arrivals()
        .iter()
        .filter(|r| r.tag == "a")
        .map(|r| r.arrived)
        .max()
        .unwrap();
    println!(
        "the leader sent its last request {:?} after it was cut off; the standby took over after {took:?}",
        a_last.saturating_duration_since(cut)
    );
    assert!(b.log().contains("leading: this walhook holds the slot's lease"));

    // Once it reaches the state database again, the old leader stands by.
    proxy.thaw();
    a.wait_log("standing by: another walhook leads", 1).await;
    assert_eq!(a.metric("walhook_leader").await, Some(0.0));
}

/// Waits until `n` sessions wait for a lock on `relation`, while neither walhook exited.
async fn waiting_on(watcher: &tokio_postgres::Client, relation: &str, n: i64, ws: &mut [&mut Walhook]) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let row = watcher
            .query_one(
                "SELECT count(*) FROM pg_locks WHERE NOT granted AND relation = $1::text::regclass",
                &[&relation],
            )
            .await
            .unwrap();
        if row.get::<_, i64>(0) >= n {
            return;
        }
        for w in ws.iter_mut() {
            if let Some(code) = w.exited() {
                panic!(
                    "a walhook exited with {code} before both waited on {relation}; its log:\n{}",
                    w.log()
                );
            }
        }
        assert!(
            Instant::now() < deadline,
            "{n} sessions never waited on {relation}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two walhook processes started at the same instant on a fresh database (the first
/// deploy of "run two or more with the same config") both come up: one leads, the other
/// stands by, and neither exits. The first rounds force the races: the test lets both
/// look for the publication but holds their CREATE PUBLICATION until both wait, so both
/// create it; then it holds both before they look for the slot and lets them go at
/// once, so both usually find it missing and create it. The last rounds just start both
/// at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_walhooks_started_at_once_on_a_fresh_database_both_come_up() {
    let pg = PgCluster::start().await;
    let mut slot_races = 0;
    for round in 0..5 {
        let forced = round < 2;
        let name = format!("fresh{round}");
        let url = pg.create_db(&name, SCHEMA).await;
        let rx = Receiver::start().await;
        let config = format!(
            "[source]\nurl = \"{url}\"\nslot = \"{name}\"\n[[events]]\ntable = \"stock\"\n{}",
            subscriber("s", &rx.url(), "\"*\"", "")
        );
        let publications = pg.client(&name).await;
        let slots = pg.client(&name).await;
        let watcher = pg.client(&name).await;
        if forced {
            // Reading pg_publication goes on; adding a row to it waits.
            publications
                .batch_execute("BEGIN; LOCK pg_catalog.pg_publication IN SHARE MODE")
                .await
                .unwrap();
        }
        let mut a = Walhook::start(&config);
        let mut b = Walhook::start(&config);
        if forced {
            waiting_on(&watcher, "pg_catalog.pg_publication", 2, &mut [&mut a, &mut b]).await;
            // The view's lock also locks pg_database: taken once both are connected.
            slots
                .batch_execute("BEGIN; LOCK pg_catalog.pg_replication_slots IN ACCESS EXCLUSIVE MODE")
                .await
                .unwrap();
            publications.batch_execute("COMMIT").await.unwrap();
            waiting_on(
                &watcher,
                "pg_catalog.pg_replication_slots",
                2,
                &mut [&mut a, &mut b],
            )
            .await;
            slots.batch_execute("COMMIT").await.unwrap();
        }
        eventually(
            Duration::from_secs(30),
            "one leading and one standing by",
            || async {
                let led = a.log().contains("leading: this walhook holds") as u8
                    + b.log().contains("leading: this walhook holds") as u8;
                let stood = a.log().contains("standing by: another walhook leads") as u8
                    + b.log().contains("standing by: another walhook leads") as u8;
                led == 1 && stood == 1
            },
        )
        .await;
        let (leader, standby) = if a.log().contains("leading: this walhook holds") {
            (&mut a, &mut b)
        } else {
            (&mut b, &mut a)
        };
        leader.wait_ready().await;
        let db = pg.client(&name).await;
        db.batch_execute("INSERT INTO stock VALUES (1, 1)").await.unwrap();
        rx.wait_for_any(Duration::from_secs(20), "the change").await;
        if forced {
            // Both created the publication: one found it made under it, and looked again.
            let logs = leader.log() + &standby.log();
            let lost = "another walhook set the publication up at the same time";
            assert!(logs.contains(lost), "round {round}: {lost:?} not logged:\n{logs}");
            slot_races += logs.contains("another walhook created the slot at the same time") as usize;
        }
        for w in [leader, standby] {
            assert_eq!(
                w.exited(),
                None,
                "round {round}: a walhook exited; its log:\n{}",
                w.log()
            );
            assert!(!w.log().lines().any(|l| l.starts_with("walhook:")), "{}", w.log());
        }
        println!(
            "round {round} ({}): one leads, one stands by",
            if forced { "forced race" } else { "at once" }
        );
    }
    println!("both created the slot in {slot_races} of the 2 forced rounds");
}
