//! Stopped subscribers: 410 Gone disables a subscriber, and so does the circuit breaker;
//! an operator pauses and resumes one. A stopped subscriber gets nothing, its events are
//! kept (the slot moves on), the stop survives a SIGKILL, and after a resume everything
//! arrives, each key in order.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

const SCHEMA: &str = "CREATE TABLE stock (product_id bigint PRIMARY KEY, qty integer NOT NULL);";
const TOKEN: &str = "lifecycle-test-token-0123456789";
const KEYS: i64 = 5;

/// The status and reason the API gives for `name`.
async fn status(w: &Walhook, name: &str) -> (String, String) {
    let (_, v) = w.api("GET", "/subscribers", Some(TOKEN), None).await;
    let s = v["subscribers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["name"] == name)
        .unwrap()
        .clone();
    (
        s["status"].as_str().unwrap().to_string(),
        s["reason"].as_str().unwrap_or("").to_string(),
    )
}

async fn rounds(
    db: &tokio_postgres::Client,
    range: std::ops::Range<i64>,
    written: &mut BTreeMap<i64, Vec<i64>>,
) {
    for round in range {
        db.batch_execute(&format!("UPDATE stock SET qty = {round}"))
            .await
            .unwrap();
        for k in 1..=KEYS {
            written.entry(k).or_default().push(round);
        }
    }
}

async fn setup(
    extra: &str,
) -> (
    PgCluster,
    Receiver,
    Walhook,
    tokio_postgres::Client,
    BTreeMap<i64, Vec<i64>>,
) {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", SCHEMA).await;
    let rx = Receiver::start().await;
    let config = format!(
        "[source]\nurl = \"{url}\"\nslot = \"shop\"\n[[events]]\ntable = \"stock\"\n{}",
        subscriber(
            "s",
            &rx.url(),
            "\"*\"",
            &format!("retry_initial = \"50ms\"\nretry_max = \"100ms\"\n{extra}")
        )
    );
    let w = Walhook::start_with_admin(&config, &format!("token = \"{TOKEN}\""));
    w.wait_ready().await;
    let db = pg.client("shop").await;
    db.batch_execute(&format!(
        "INSERT INTO stock SELECT g, 0 FROM generate_series(1, {KEYS}) g"
    ))
    .await
    .unwrap();
    let written = (1..=KEYS).map(|k| (k, vec![0])).collect();
    (pg, rx, w, db, written)
}

async fn stopped(w: &Walhook) {
    eventually(Duration::from_secs(20), "the subscriber stopped", || async {
        w.metric("walhook_subscriber_stopped{subscriber=\"s\"}").await == Some(1.0)
    })
    .await;
}

/// Asserts the receiver gets no request for `quiet`.
async fn nothing_sent(rx: &Receiver, quiet: Duration, what: &str) {
    let before = rx.all().len();
    tokio::time::sleep(quiet).await;
    assert_eq!(
        rx.all().len(),
        before,
        "{what}: requests were sent to a stopped subscriber"
    );
}

/// The slot reaches the current WAL position: what waits for the subscriber is durable.
async fn slot_moves_on(db: &tokio_postgres::Client) {
    let row = db
        .query_one("SELECT (pg_current_wal_lsn() - '0/0')::bigint", &[])
        .await
        .unwrap();
    let end = row.get::<_, i64>(0) as u64;
    eventually(
        Duration::from_secs(20),
        "the slot past the stopped subscriber's events",
        || async { confirmed_flush(db, "shop").await >= end },
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_subscriber_across_a_restart_until_it_is_resumed() {
    let (_pg, rx, mut w, db, mut written) = setup("").await;
    rx.set_status(410);
    rounds(&db, 1..3, &mut written).await;
    stopped(&w).await;
    let (st, reason) = status(&w, "s").await;
    assert_eq!(st, "disabled");
    assert!(reason.contains("410 Gone"), "{reason}");
    nothing_sent(&rx, Duration::from_millis(1500), "disabled").await;
    rounds(&db, 3..5, &mut written).await;
    slot_moves_on(&db).await;
    assert!(w.log().contains("subscriber disabled"), "{}", w.log());

    // The stop holds across a SIGKILL.
    w.sigkill();
    w.restart();
    w.wait_ready().await;
    stopped(&w).await;
    assert_eq!(status(&w, "s").await.0, "disabled");
    nothing_sent(&rx, Duration::from_millis(1500), "disabled after a restart").await;

    // Resumed with the CLI: everything arrives, each key in order.
    rx.set_status(204);
    let cfg = w.config_path();
    let (code, out, err) = walhook_output(&["subscribers", "resume", "--config", cfg.to_str().unwrap(), "s"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("s: active"), "{out}");
    let total: usize = written.values().map(Vec::len).sum();
    let got = rx
        .wait_unique(Duration::from_secs(30), "everything after the resume", total)
        .await;
    assert_eq!(qty_sequences(&got), written, "per-key order and content");
    assert_eq!(
        w.metric("walhook_subscriber_stopped{subscriber=\"s\"}").await,
        Some(0.0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_circuit_breaker_disables_and_an_operator_pauses_and_resumes() {
    let (_pg, rx, w, db, mut written) = setup("disable_after_attempts = 5").await;
    rx.set_status(500);
    rounds(&db, 1..3, &mut written).await;
    stopped(&w).await;
    let (st, reason) = status(&w, "s").await;
    assert_eq!(st, "disabled");
    assert!(reason.contains("attempts in a row"), "{reason}");
    let failed = rx.all().len();
    // Five failures trip it; attempts already in flight may add a few.
    assert!((5..=5 + 16).contains(&failed), "{failed} requests");
    nothing_sent(&rx, Duration::from_millis(1500), "disabled").await;

    // The receiver is fixed and the subscriber resumed through the API.
    rx.set_status(204);
    let (code, v) = w.api("POST", "/subscribers/s/resume", Some(TOKEN), None).await;
    assert_eq!((code, v["status"].as_str()), (200, Some("active")), "{v}");
    let n: usize = written.values().map(Vec::len).sum();
    rx.wait_for(Duration::from_secs(30), "the backlog", |g| g.len() >= n)
        .await;

    // Paused by an operator: nothing is sent, the slot moves on; resumed, all arrives.
    let (code, v) = w
        .api(
            "POST",
            "/subscribers/s/pause",
            Some(TOKEN),
            Some(serde_json::json!({"reason": "receiver maintenance"})),
        )
        .await;
    assert_eq!((code, v["status"].as_str()), (200, Some("paused")), "{v}");
    assert_eq!(
        status(&w, "s").await,
        ("paused".to_string(), "receiver maintenance".to_string())
    );
    let before = rx.delivered().len();
    rounds(&db, 3..6, &mut written).await;
    slot_moves_on(&db).await;
    nothing_sent(&rx, Duration::from_millis(1000), "paused").await;
    assert_eq!(rx.delivered().len(), before);
    let (code, _) = w.api("POST", "/subscribers/s/resume", Some(TOKEN), None).await;
    assert_eq!(code, 200);
    let total: usize = written.values().map(Vec::len).sum();
    let got = rx
        .wait_unique(Duration::from_secs(30), "everything after the pause", total)
        .await;
    assert_eq!(qty_sequences(&got), written, "per-key order and content");
    let (code, _) = w.api("POST", "/subscribers/nope/pause", Some(TOKEN), None).await;
    assert_eq!(code, 404);
}

/// Admin input that cannot be stored or searched for (a NUL byte, a control character in
/// a reason, a reason past its length limit) is refused with 400 and why, and changes
/// nothing; the state database is not blamed (503).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_admin_input_is_refused_with_400_and_the_reason() {
    let (_pg, _rx, w, _db, _) = setup("").await;
    let pause = |reason: String| {
        let w = &w;
        async move {
            w.api(
                "POST",
                "/subscribers/s/pause",
                Some(TOKEN),
                Some(serde_json::json!({ "reason": reason })),
            )
            .await
        }
    };
    for (reason, want) in [
        ("receiver\u{0} maintenance".to_string(), "NUL"),
        ("line one\nline two".to_string(), "control character"),
        ("x".repeat(1001), "1000 characters"),
    ] {
        let (code, v) = pause(reason.clone()).await;
        let error = v["error"].as_str().unwrap_or_default();
        assert_eq!(code, 400, "{reason:?}: {v}");
        assert!(
            error.contains("reason") && error.contains(want),
            "{reason:?}: {error}"
        );
        assert_eq!(status(&w, "s").await.0, "active", "{reason:?} paused it");
    }
    for (method, path, body) in [
        ("GET", "/deliveries?key=a%00b", None),
        ("GET", "/deliveries?status=pending&type=price%00changed", None),
        ("GET", "/deliveries?subscriber=s%00", None),
        ("GET", "/deliveries/s/evt_1%00", None),
        (
            "POST",
            "/deliveries/replay",
            Some(serde_json::json!({"subscriber": "s", "key": "k\u{0}"})),
        ),
    ] {
        let (code, v) = w.api(method, path, Some(TOKEN), body).await;
        let error = v["error"].as_str().unwrap_or_default();
        assert_eq!(code, 400, "{method} {path}: {v}");
        assert!(error.contains("NUL"), "{method} {path}: {error}");
    }
    let long_key = format!("/deliveries?key={}", "k".repeat(10_000));
    let (code, v) = w.api("GET", &long_key, Some(TOKEN), None).await;
    assert_eq!(code, 400, "{v}");
    assert!(v["error"].as_str().unwrap_or_default().contains("key"), "{v}");

    // Good input still works.
    let (code, v) = pause("receiver maintenance (ticket #42)".into()).await;
    assert_eq!((code, v["status"].as_str()), (200, Some("paused")), "{v}");
    let (code, v) = w.api("GET", "/deliveries?key=a", Some(TOKEN), None).await;
    assert_eq!(code, 200, "{v}");
}
