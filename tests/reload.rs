//! Config reloads on SIGHUP: new rules apply from the next transaction, a broken config
//! is refused while the running one goes on, a subscriber change restarts the pipeline
//! in-process, and no event is lost or sent twice across any of them.

mod common;

use std::time::Duration;

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(30);
const UPDATES: i64 = 300;

fn config(db: &str, rules: &str, subscribers: &[(&str, &str)]) -> String {
    let mut text = format!(
        "[source]\nurl = \"{db}\"\n\n[[events]]\ntable = \"prices\"\nname = \"price.changed\"\non = [\"update\"]\n{rules}\n"
    );
    for (name, url) in subscribers {
        text.push_str(&format!(
            "[[subscribers]]\nname = \"{name}\"\nurl = \"{url}\"\nevents = [\"*\"]\nsecrets = [\"{SECRET}\"]\nallow_private_targets = true\n"
        ));
    }
    text
}

const STOCK_RULE: &str = "[[events]]\ntable = \"stock\"\nname = \"stock.changed\"\non = [\"update\"]\n";

/// Updates product 1's EUR price to 1, 2, .., UPDATES, one transaction each, a few ms apart.
async fn price_writer(pg: &PgCluster) -> tokio::task::JoinHandle<()> {
    let db = pg.client("shop").await;
    tokio::spawn(async move {
        for i in 1..=UPDATES {
            db.batch_execute(&format!(
                "UPDATE prices SET amount = {i} WHERE product_id = 1 AND currency = 'EUR'"
            ))
            .await
            .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
}

/// The amounts of the price events `rx` got, in arrival order; every id once.
fn amounts(rx: &Receiver) -> Vec<i64> {
    let got: Vec<Value> = rx
        .delivered()
        .iter()
        .map(Received::json)
        .filter(|b| b["type"] == "price.changed")
        .collect();
    got.iter()
        .map(|b| b["data"]["new"]["amount"].to_string().parse::<f64>().unwrap() as i64)
        .collect()
}

fn assert_every_update_once(rx: &Receiver) {
    let ids: Vec<String> = rx.delivered().iter().map(|r| r.id.clone()).collect();
    let unique: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(unique.len(), ids.len(), "an event was sent twice");
    assert_eq!(
        amounts(rx),
        (1..=UPDATES).collect::<Vec<_>>(),
        "lost or out of order"
    );
}

async fn stock_events(rx: &Receiver) -> Vec<i64> {
    rx.delivered()
        .iter()
        .map(Received::json)
        .filter(|b| b["type"] == "stock.changed")
        .map(|b| b["data"]["new"]["qty"].as_i64().unwrap())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_rule_applies_from_the_next_change_and_a_broken_config_is_refused() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", PIM_SQL).await;
    let rx = Receiver::start().await;
    let shop = rx.url();
    let walhook = Walhook::start(&config(&url, "", &[("shop", &shop)]));
    walhook.wait_ready().await;
    let db = pg.client("shop").await;
    let writer = price_writer(&pg).await;

    db.batch_execute("UPDATE stock SET qty = 77 WHERE product_id = 1 AND warehouse = 'berlin'")
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    // stock is not yet in the publication; the reload adds it.
    walhook.reload(&config(&url, STOCK_RULE, &[("shop", &shop)]));
    walhook.wait_log("config reloaded", 1).await;
    db.batch_execute("UPDATE stock SET qty = 78 WHERE product_id = 1 AND warehouse = 'berlin'")
        .await
        .unwrap();
    rx.wait_for(WAIT, "the new rule's event", |r| {
        r.iter().any(|r| r.json()["type"] == "stock.changed")
    })
    .await;

    // A broken config: refused with its key path, and the running rules go on.
    let broken = config(
        &url,
        &format!("{STOCK_RULE}when = \"new.qty >\"\n"),
        &[("shop", &shop)],
    );
    walhook.reload(&broken);
    let log = walhook.wait_log("config reload refused", 1).await;
    assert!(log.contains("events[1].when"), "{log}");
    db.batch_execute("UPDATE stock SET qty = 79 WHERE product_id = 1 AND warehouse = 'berlin'")
        .await
        .unwrap();
    writer.await.unwrap();
    rx.wait_for(WAIT, "every price and stock event", |r| {
        r.len() as i64 >= UPDATES + 2
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(stock_events(&rx).await, [78, 79], "only changes after the reload");
    assert_every_update_once(&rx);
    assert!(walhook.log().contains("SIGHUP received"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_subscriber_restarts_the_pipeline_in_process_and_loses_nothing() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", PIM_SQL).await;
    let a = Receiver::start().await;
    let b = Receiver::start().await;
    let walhook = Walhook::start(&config(&url, "", &[("a", &a.url())]));
    walhook.wait_ready().await;
    let pid = walhook.pid();
    let writer = price_writer(&pg).await;
    tokio::time::sleep(Duration::from_millis(400)).await;
    walhook.reload(&config(&url, "", &[("a", &a.url()), ("b", &b.url())]));
    walhook.wait_log("restarting the pipeline in-process", 1).await;
    writer.await.unwrap();
    a.wait_for(WAIT, "every price event at a", |r| r.len() as i64 >= UPDATES)
        .await;
    b.wait_for(WAIT, "the last price event at b", |r| {
        r.iter().any(|r| {
            r.json()["data"]["new"]["amount"]
                .to_string()
                .starts_with(&UPDATES.to_string())
        })
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_every_update_once(&a);
    // b gets every change from some point on, in order, each once.
    let got = amounts(&b);
    let first = got[0];
    assert!(first > 1, "b existed only after the reload");
    assert_eq!(got, (first..=UPDATES).collect::<Vec<_>>());
    assert_eq!(walhook.pid(), pid, "the same process");
}

/// A `when` past the expression limits (5,000 `+` terms: 50,000 characters; 3,000 terms
/// in 6,000 characters; brackets 100 deep) is refused by `walhook check` with the limit
/// named (exit 2), and by a SIGHUP reload, while the daemon goes on delivering. One at
/// the limit is taken and evaluated (by CEL, on the daemon's own threads).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_when_past_the_expression_limits_is_refused_at_check_and_reload() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", PIM_SQL).await;
    let rx = Receiver::start().await;
    let shop = rx.url();
    let with_when = |when: &str| {
        config(
            &url,
            &format!("{STOCK_RULE}when = \"{when}\"\n"),
            &[("shop", &shop)],
        )
    };
    let long = format!("{} > 0", vec!["new.qty"; 5000].join(" + "));
    let deep = format!("new.qty{} > 0", "+1".repeat(2999));
    let nested = format!("{}new.qty > 0{}", "(".repeat(100), ")".repeat(100));
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhook.toml");
    for (when, want) in [
        (
            &long,
            "events[1].when: the expression is 50001 characters long; the limit is 10000",
        ),
        (
            &deep,
            "events[1].when: the expression nests 3002 deep; the limit is 64",
        ),
        (
            &nested,
            "events[1].when: the expression nests 103 deep; the limit is 64",
        ),
    ] {
        std::fs::write(&path, with_when(when)).unwrap();
        let (code, out, err) = walhook_output(&["check", "--config", path.to_str().unwrap()]);
        let err = format!("{out}{err}");
        assert_eq!(code, 2, "{want}: {err}");
        assert!(err.contains(want), "{want}: {err}");
    }

    // At the limit: 60 terms (62 deep) are taken; qty 1 makes 60.
    let at_limit = format!("{} == 60", vec!["new.qty"; 60].join(" + "));
    let walhook = Walhook::start(&with_when(&at_limit));
    walhook.wait_ready().await;
    let db = pg.client("shop").await;
    for qty in [2, 1] {
        db.batch_execute(&format!(
            "UPDATE stock SET qty = {qty} WHERE product_id = 1 AND warehouse = 'berlin'"
        ))
        .await
        .unwrap();
    }
    rx.wait_for(WAIT, "the stock event of qty 1", |r| !r.is_empty())
        .await;

    // A reload with a deep expression is refused; the running rules go on.
    walhook.reload(&with_when(&deep));
    let log = walhook.wait_log("config reload refused", 1).await;
    assert!(log.contains("the limit is 64"), "{log}");
    for qty in [3, 1] {
        db.batch_execute(&format!(
            "UPDATE stock SET qty = {qty} WHERE product_id = 1 AND warehouse = 'berlin'"
        ))
        .await
        .unwrap();
    }
    rx.wait_for(WAIT, "a second stock event of qty 1", |r| r.len() >= 2)
        .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(stock_events(&rx).await, [1, 1], "only qty 1 makes 60");
}
