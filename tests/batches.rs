//! Batches (`batch = { max_events, max_wait, max_bytes }`): many events per request,
//! every request verified with the Standard Webhooks library, each key in order inside
//! and across requests, through an outage of the receiver; a final status makes each
//! event of a batch a dead letter of its own, and a replay sends one alone. CloudEvents
//! batches and templates over `events` have their own shape.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use common::*;
use serde_json::Value;

const SCHEMA: &str = "CREATE TABLE stock (product_id bigint PRIMARY KEY, qty integer NOT NULL);";
const TOKEN: &str = "batches-test-token-0123456789";
const WAIT: Duration = Duration::from_secs(60);
const PRODUCTS: i64 = 200;

fn config(url: &str, subscribers: &str) -> String {
    format!("[source]\nurl = \"{url}\"\nslot = \"batches\"\n[[events]]\ntable = \"stock\"\n{subscribers}")
}

/// Checks every request at `rx` with the Standard Webhooks library and returns the
/// events of the delivered ones, in the order their requests arrived: (event id, body).
fn events(rx: &Receiver) -> Vec<(String, Value)> {
    let hook = standardwebhooks::Webhook::new(SECRET).unwrap();
    let mut out = Vec::new();
    for r in rx.delivered() {
        hook.verify(&r.body, &r.headers)
            .unwrap_or_else(|e| panic!("request {} does not verify: {e}", r.id));
        assert!(r.id.starts_with("batch_"), "a batch's webhook-id: {}", r.id);
        let batch = r.json();
        let items = batch.as_array().expect("a batch is a JSON array");
        assert!(
            !items.is_empty() && items.len() <= 50,
            "{} events in one request",
            items.len()
        );
        for item in items {
            let id = item["id"].as_str().expect("each event has its id").to_string();
            out.push((id, item.clone()));
        }
    }
    out
}

fn unique(events: &[(String, Value)]) -> usize {
    events.iter().map(|(id, _)| id).collect::<HashSet<_>>().len()
}

/// Per key, the qty values in order of first receipt.
fn sequences(events: &[(String, Value)]) -> BTreeMap<i64, Vec<i64>> {
    let mut seen = HashSet::new();
    let mut out: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (id, e) in events {
        if seen.insert(id.clone()) {
            let k = e["data"]["key"]["product_id"].as_i64().unwrap();
            out.entry(k)
                .or_default()
                .push(e["data"]["new"]["qty"].as_i64().unwrap());
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batches_verify_keep_each_key_in_order_and_survive_an_outage() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", SCHEMA).await;
    let (rx, cloud, tmpl) = (
        Receiver::start().await,
        Receiver::start().await,
        Receiver::start().await,
    );
    let batch = "max_in_flight = 4\nretry_initial = \"100ms\"\nretry_max = \"500ms\"\n\
                 batch = { max_events = 50, max_wait = \"20ms\" }";
    let subs = [
        // A failed request counts once towards disabling, not once per event in it: the
        // outage below fails a few dozen requests of up to 50 events each.
        subscriber("shop", &rx.url(), "\"*\"", &format!("{batch}\ndisable_after_attempts = 200")),
        subscriber("cloud", &cloud.url(), "\"*\"", &format!("{batch}\nformat = \"cloudevents\"")),
        subscriber(
            "chat",
            &tmpl.url(),
            "\"*\"",
            &format!(
                "{batch}\nformat = \"template\"\n\
                 template = '{{\"batch\": {{{{ id|tojson }}}}, \"ids\": [{{% for e in events %}}{{{{ e.id|tojson }}}}{{{{ \",\" if not loop.last }}}}{{% endfor %}}]}}'"
            ),
        ),
    ];
    let w = Walhook::start_with_admin(&config(&url, &subs.concat()), &format!("token = \"{TOKEN}\""));
    w.wait_ready().await;
    let db = pg.client("shop").await;
    db.batch_execute(&format!(
        "INSERT INTO stock SELECT g, 0 FROM generate_series(1, {PRODUCTS}) g"
    ))
    .await
    .unwrap();
    for round in 1..=5 {
        db.batch_execute(&format!("UPDATE stock SET qty = {round}"))
            .await
            .unwrap();
    }
    let first = PRODUCTS as usize * 6;
    rx.wait_for(WAIT, "every event of the first rounds", |_| {
        unique(&events(&rx)) >= first
    })
    .await;
    let got = events(&rx);
    let requests = rx.delivered().len();
    assert!(
        requests * 5 <= first,
        "{first} events took {requests} requests: they were not batched"
    );
    assert!(
        rx.delivered()
            .iter()
            .any(|r| r.json().as_array().unwrap().len() == 50),
        "no request was full"
    );
    for (k, seq) in sequences(&got) {
        assert_eq!(seq, [0, 1, 2, 3, 4, 5], "product {k} out of order");
    }

    // CloudEvents: a batch of structured events, its own content type.
    let c = cloud
        .wait_for(WAIT, "the CloudEvents batches", |g| {
            g.iter()
                .map(|r| r.json().as_array().unwrap().len())
                .sum::<usize>()
                >= first
        })
        .await;
    for r in &c {
        assert_eq!(r.header("content-type"), "application/cloudevents-batch+json");
        for e in r.json().as_array().unwrap() {
            assert_eq!(e["specversion"], "1.0", "{e}");
            assert!(e["id"]
                .as_str()
                .is_some_and(|id| id.starts_with("evt_") || !id.is_empty()));
        }
    }
    // The template: one body per request, made from `events` and the batch's id.
    let t = tmpl
        .wait_for(WAIT, "the template's batches", |g| {
            g.iter()
                .map(|r| r.json()["ids"].as_array().unwrap().len())
                .sum::<usize>()
                >= first
        })
        .await;
    for r in &t {
        assert_eq!(
            r.json()["batch"],
            r.id.as_str(),
            "the template sees the batch's id"
        );
    }

    // The receiver fails for a while: retries (and perhaps spill) until it recovers, then
    // everything arrives, each key still in order.
    rx.set_status(503);
    for round in 6..=8 {
        db.batch_execute(&format!("UPDATE stock SET qty = {round}"))
            .await
            .unwrap();
    }
    rx.wait_for_any(WAIT, "a failed batch").await;
    eventually(WAIT, "failed attempts", || async {
        rx.all().iter().filter(|r| r.status == 503).count() >= 3
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    rx.set_status(204);
    let all = PRODUCTS as usize * 9;
    rx.wait_for(WAIT, "every event after the outage", |_| {
        unique(&events(&rx)) >= all
    })
    .await;
    for (k, seq) in sequences(&events(&rx)) {
        assert_eq!(
            seq,
            (0..=8).collect::<Vec<_>>(),
            "product {k} out of order after the outage"
        );
    }
    let _ = w;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_final_status_makes_each_event_a_dead_letter_and_one_replays_alone() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", SCHEMA).await;
    let rx = Receiver::start().await;
    rx.set_status(422);
    let sub = subscriber(
        "shop",
        &rx.url(),
        "\"*\"",
        "final_statuses = [422]\nbatch = { max_events = 50, max_wait = \"200ms\" }",
    );
    let w = Walhook::start_with_admin(&config(&url, &sub), &format!("token = \"{TOKEN}\""));
    w.wait_ready().await;
    let db = pg.client("shop").await;
    db.batch_execute("INSERT INTO stock SELECT g, g * 10 FROM generate_series(1, 10) g")
        .await
        .unwrap();
    let dead = || async {
        let (_, v) = w
            .api(
                "GET",
                "/deliveries?subscriber=shop&status=dead",
                Some(TOKEN),
                None,
            )
            .await;
        v["deliveries"].as_array().cloned().unwrap_or_default()
    };
    eventually(WAIT, "ten dead letters", || async { dead().await.len() == 10 }).await;
    // One request carried them all, refused once: each is a dead letter of its own.
    let refused = rx.all();
    assert_eq!(refused.len(), 1, "a final status is not retried");
    let carried: HashSet<String> = refused[0]
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap().to_string())
        .collect();
    let letters: HashSet<String> = dead()
        .await
        .iter()
        .map(|d| d["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        letters, carried,
        "the dead letters are the batch's events, by their own ids"
    );

    // Fixed; one of them is replayed: it goes alone, as a batch of one.
    rx.set_status(204);
    let one = letters.iter().next().unwrap().clone();
    let cfg = w.config_path();
    let (code, out, err) = walhook_output(&[
        "deliveries",
        "replay",
        "--config",
        cfg.to_str().unwrap(),
        "--subscriber",
        "shop",
        &one,
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let got = rx.wait_for(WAIT, "the replayed event", |g| !g.is_empty()).await;
    let items = got[0].json();
    let items = items.as_array().unwrap();
    assert_eq!(items.len(), 1);
    assert_eq!(items[0]["id"], one.as_str());
    standardwebhooks::Webhook::new(SECRET)
        .unwrap()
        .verify(&got[0].body, &got[0].headers)
        .expect("the replay verifies");
    eventually(WAIT, "nine dead letters left", || async {
        dead().await.len() == 9
    })
    .await;
}
