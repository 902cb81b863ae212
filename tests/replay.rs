//! Dead letters listed, shown and replayed through `walhook deliveries` and through the
//! admin API: replayed deliveries go out with their original ids and bodies, each key in
//! order, and the API refuses requests without the token.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use common::*;

const SCHEMA: &str = "CREATE TABLE stock (product_id bigint PRIMARY KEY, qty integer NOT NULL);";
const TOKEN: &str = "replay-test-token-0123456789";
const POISON: i64 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_replay_with_their_ids_and_bodies() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", SCHEMA).await;
    let rx = Receiver::start().await;
    rx.set_poison(POISON);
    let config = format!(
        "[source]\nurl = \"{url}\"\nslot = \"shop\"\n[[events]]\ntable = \"stock\"\n{}",
        subscriber(
            "shop",
            &rx.url(),
            "\"*\"",
            "max_attempts = 2\nretry_initial = \"50ms\""
        )
    );
    let w = Walhook::start_with_admin(&config, &format!("token = \"{TOKEN}\""));
    w.wait_ready().await;
    let db = pg.client("shop").await;
    db.batch_execute("INSERT INTO stock SELECT g, 0 FROM generate_series(1, 5) g")
        .await
        .unwrap();
    for round in 1..=3 {
        db.batch_execute(&format!("UPDATE stock SET qty = {round}"))
            .await
            .unwrap();
    }
    // 16 of the 20 events arrive; the poisoned key's 4 die after 2 attempts each.
    rx.wait_for(Duration::from_secs(30), "the healthy keys", |g| g.len() >= 16)
        .await;
    eventually(Duration::from_secs(30), "four dead letters", || async {
        let (_, v) = w
            .api("GET", "/deliveries?subscriber=shop", Some(TOKEN), None)
            .await;
        v["deliveries"].as_array().is_some_and(|d| d.len() == 4)
    })
    .await;

    // The API wants the token.
    for token in [None, Some("wrong-token-wrong-token")] {
        let (status, v) = w.api("GET", "/deliveries", token, None).await;
        assert_eq!(status, 401, "{v}");
        let (status, _) = w
            .api(
                "POST",
                "/deliveries/replay",
                token,
                Some(serde_json::json!({"subscriber": "shop", "all": true})),
            )
            .await;
        assert_eq!(status, 401);
    }
    let (status, v) = w
        .api(
            "POST",
            "/deliveries/replay",
            Some(TOKEN),
            Some(serde_json::json!({"subscriber": "shop"})),
        )
        .await;
    assert_eq!(status, 400, "replay without a filter or all: {v}");
    let (status, v) = w
        .api("GET", "/deliveries?since=yesterday", Some(TOKEN), None)
        .await;
    assert_eq!(status, 400, "{v}");

    // What failed, by id: the body each failed attempt carried.
    let failed: BTreeMap<String, bytes::Bytes> = rx
        .all()
        .into_iter()
        .filter(|r| r.status == 500)
        .map(|r| (r.id.clone(), r.body.clone()))
        .collect();
    assert_eq!(failed.len(), 4);
    let cfg = w.config_path();
    let cfg = cfg.to_str().unwrap();

    // The CLI lists and shows them.
    let (code, out, err) = walhook_output(&["deliveries", "list", "--config", cfg, "--subscriber", "shop"]);
    assert_eq!(code, 0, "{err}");
    for id in failed.keys() {
        assert!(out.contains(id.as_str()), "{out}");
    }
    assert!(out.contains("4 deliveries"), "{out}");
    let first = failed.keys().next().unwrap().clone();
    let (code, out, err) = walhook_output(&[
        "deliveries",
        "show",
        "--config",
        cfg,
        "--subscriber",
        "shop",
        &first,
    ]);
    assert_eq!(code, 0, "{err}");
    let shown: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(shown["attempts"], 2);
    assert!(
        shown["error"].as_str().unwrap().starts_with("HTTP 500"),
        "{shown}"
    );
    let original: serde_json::Value = serde_json::from_slice(&failed[&first]).unwrap();
    assert_eq!(shown["body"], original);
    // Both attempts, each with its status, duration and the answer's excerpt.
    let history = shown["history"].as_array().expect("history shown");
    assert_eq!(history.len(), 2, "{shown}");
    for h in history {
        assert_eq!(h["status"], 500, "{h}");
        assert!(h["ms"].as_u64().is_some(), "{h}");
        assert!(h["error"].as_str().unwrap().starts_with("HTTP 500"), "{h}");
        assert!(humantime::parse_rfc3339(h["at"].as_str().unwrap()).is_ok(), "{h}");
    }

    // The receiver is fixed; the CLI replays one by id ...
    rx.set_poison(0);
    let (code, out, err) = walhook_output(&[
        "deliveries",
        "replay",
        "--config",
        cfg,
        "--subscriber",
        "shop",
        &first,
    ]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("replayed 1 deliveries: {first}")), "{out}");
    rx.wait_for(Duration::from_secs(30), "the replayed delivery", |g| {
        g.iter().any(|r| r.id == first)
    })
    .await;

    // ... and the API the rest.
    let (status, v) = w
        .api(
            "POST",
            "/deliveries/replay",
            Some(TOKEN),
            Some(serde_json::json!({"subscriber": "shop", "all": true})),
        )
        .await;
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["replayed"], 3);
    let got = rx
        .wait_for(Duration::from_secs(30), "every replayed delivery", |g| {
            g.len() >= 20
        })
        .await;

    // Same ids, same bytes, and the poisoned key's events in order.
    for (id, body) in &failed {
        let r = got.iter().find(|r| &r.id == id).expect("replayed");
        assert_eq!(&r.body, body, "{id}: the body changed");
        assert!(r.verifies(SECRET));
    }
    let qty: Vec<i64> = got
        .iter()
        .filter(|r| r.json()["data"]["key"]["product_id"] == POISON)
        .map(|r| r.json()["data"]["new"]["qty"].as_i64().unwrap())
        .collect();
    assert_eq!(qty, vec![0, 1, 2, 3]);
    let (_, v) = w
        .api("GET", "/deliveries?subscriber=shop", Some(TOKEN), None)
        .await;
    assert_eq!(v["deliveries"].as_array().map(Vec::len), Some(0), "{v}");
    // The lane is hot again, and new changes flow.
    eventually(Duration::from_secs(30), "the lane back to hot", || async {
        w.metric("walhook_lane_spilling{subscriber=\"shop\"}").await == Some(0.0)
    })
    .await;
    db.batch_execute("UPDATE stock SET qty = 4").await.unwrap();
    rx.wait_for(Duration::from_secs(30), "new changes after the replay", |g| {
        g.len() >= 25
    })
    .await;
    // Failures, dead letters, replays and API calls logged at debug: no secret, no token.
    assert_no_secrets(&w.log(), &[SECRET, TOKEN]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_past_their_retention_are_deleted() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", SCHEMA).await;
    let rx = Receiver::start().await;
    let config = format!(
        "[source]\nurl = \"{url}\"\nslot = \"shop\"\n[state]\ndead_letter_retention = \"30d\"\nprune_interval = \"1s\"\n\
         [[events]]\ntable = \"stock\"\n{}",
        subscriber("shop", &rx.url(), "\"*\"", "")
    );
    let w = Walhook::start(&config);
    w.wait_ready().await;
    let db = pg.client("shop").await;
    for (seq, age) in [(1, "40 days"), (2, "29 days"), (3, "1 minute")] {
        db.execute(
            &format!(
                "INSERT INTO walhook.dead_letters (slot, subscriber, lsn, seq, event_id, event_type, ordering_key, body, attempts, reason, died_at)
                 VALUES ('shop', 'shop', 1, {seq}, 'evt_{seq}', 'stock.updated', 'k', '{{}}', 10, 'HTTP 500', now() - interval '{age}')"
            ),
            &[],
        )
        .await
        .unwrap();
    }
    eventually(Duration::from_secs(10), "the old dead letter deleted", || async {
        let left: i64 = db
            .query_one("SELECT count(*) FROM walhook.dead_letters", &[])
            .await
            .unwrap()
            .get(0);
        left == 2
    })
    .await;
    let kept: Vec<String> = db
        .query("SELECT event_id FROM walhook.dead_letters ORDER BY seq", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(kept, ["evt_2", "evt_3"]);
    w.wait_log("old dead letters deleted", 1).await;
}
