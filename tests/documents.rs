//! Documents against a real PostgreSQL and a real receiver: a SIGKILL while documents are
//! due loses none (the confirmed LSN waits for them), a query that fails is tried again
//! until it works (nothing dropped), events of one key come in order with the newest
//! document last, and `walhook check` names what is wrong with a document and its fix.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use common::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(60);

/// The PIM schema, a gate table (documents fail while it is empty, in `GATED`), and
/// prices keyed by their own id (its deletes carry only that id).
const SCHEMA: &str = "
    CREATE TABLE doc_gate (open int);
    CREATE TABLE offers (id bigint PRIMARY KEY, product_id bigint NOT NULL, amount numeric NOT NULL);
";

fn config(url: &str, rx: &Receiver, query: &str, sources: &str) -> String {
    format!(
        r#"
[source]
url = "{url}"

[[documents]]
name = "product.updated"
key = "product_id"
query = """{query}"""
sources = [{sources}]
window = "300ms"

{}"#,
        subscriber("shop", &rx.url(), "\"product.updated\"", "")
    )
}

const QUERY: &str =
    "select p.id, p.title, (select coalesce(sum(qty), 0) from stock where product_id = p.id) as stock
                     from products p where p.id = $1";
const SOURCES: &str =
    r#"{ table = "public.products", key = "id" }, { table = "public.stock", key = "product_id" }"#;

/// Products `from..=to`, each with one stock row of 1, in one transaction.
async fn add_products(db: &tokio_postgres::Client, from: i64, to: i64) {
    db.batch_execute(&format!(
        "BEGIN;
         INSERT INTO products (id, sku, title) SELECT g, 'P-' || g, 'Product ' || g FROM generate_series({from}, {to}) g;
         INSERT INTO stock (product_id, warehouse, qty) SELECT g, 'berlin', 1 FROM generate_series({from}, {to}) g;
         COMMIT;"
    ))
    .await
    .unwrap();
}

/// `walhook backfill start` of `document` for subscriber shop with config `path`:
/// (exit code, stdout, stderr).
fn backfill_start(path: &str, document: &str, extra: &[&str]) -> (i32, String, String) {
    let mut args = vec![
        "backfill",
        "start",
        "--config",
        path,
        "--subscriber",
        "shop",
        "--document",
        document,
    ];
    args.extend_from_slice(extra);
    walhook_output(&args)
}

/// Every delivered event by id: each id's bodies must be identical.
fn by_id(got: &[Received]) -> HashMap<String, Value> {
    let mut out: HashMap<String, Value> = HashMap::new();
    for r in got {
        let body = r.json();
        if let Some(earlier) = out.insert(r.id.clone(), body.clone()) {
            assert_eq!(earlier, body, "a re-sent event must carry the same body");
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigkill_while_documents_are_due_loses_none() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", &format!("{PIM_SQL}{SCHEMA}")).await;
    let rx = Receiver::start().await;
    let mut walhook = Walhook::start(&config(&url, &rx, QUERY, SOURCES));
    walhook.wait_ready().await;
    let db = pg.client("shop").await;
    add_products(&db, 100, 399).await;
    // Killed inside the window: nothing was made yet, and the slot must not have moved
    // past the import.
    walhook.sigkill();
    db.batch_execute("UPDATE stock SET qty = 5 WHERE product_id BETWEEN 100 AND 149")
        .await
        .unwrap();
    walhook.restart();
    walhook.wait_ready().await;
    let got = rx
        .wait_for(WAIT, "a document per product", |r| {
            let last: BTreeMap<i64, i64> = r
                .iter()
                .map(|e| {
                    let d = e.json()["data"]["document"].clone();
                    (d["id"].as_i64().unwrap(), d["stock"].as_i64().unwrap())
                })
                .collect();
            last.len() == 300 && (100..150).all(|id| last[&id] == 5)
        })
        .await;
    let events = by_id(&got);
    // Per product, in order: the last event carries the stock as it is now.
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    for r in &got {
        let d = &r.json()["data"]["document"];
        last.insert(d["id"].as_i64().unwrap(), d["stock"].as_i64().unwrap());
    }
    for id in 100..400 {
        assert_eq!(last[&id], if id < 150 { 5 } else { 1 }, "product {id}");
    }
    assert!(events.len() >= 300);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_query_is_tried_again_until_it_works() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", &format!("{PIM_SQL}{SCHEMA}")).await;
    let rx = Receiver::start().await;
    // Division by zero while the gate is empty.
    let query =
        "select p.id, p.title, 1 / (select count(*) from doc_gate) as gate from products p where p.id = $1";
    let walhook = Walhook::start(&config(&url, &rx, query, SOURCES));
    walhook.wait_ready().await;
    let db = pg.client("shop").await;
    db.batch_execute("UPDATE products SET title = 'Gated' WHERE id = 1")
        .await
        .unwrap();
    walhook.wait_log("cannot read documents; trying again", 2).await;
    assert!(rx.delivered().is_empty());
    assert!(walhook.log().contains("division by zero"), "{}", walhook.log());
    assert!(
        walhook
            .metric("walhook_document_errors_total")
            .await
            .unwrap_or(0.0)
            >= 2.0
    );
    db.batch_execute("INSERT INTO doc_gate VALUES (1)").await.unwrap();
    let got = rx
        .wait_for(WAIT, "the document once the query works", |r| !r.is_empty())
        .await;
    let d = &got[0].json()["data"];
    assert_eq!(d["document"]["title"], "Gated");
    assert_eq!(d["op"], "update");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_one_document_come_in_order_with_the_newest_last() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", &format!("{PIM_SQL}{SCHEMA}")).await;
    let rx = Receiver::start().await;
    let walhook = Walhook::start(&config(&url, &rx, QUERY, SOURCES));
    walhook.wait_ready().await;
    let db = pg.client("shop").await;
    // Ten bursts, each past the window of the one before.
    for n in 1..=10 {
        db.batch_execute(&format!("UPDATE products SET title = 'Round {n}' WHERE id = 2"))
            .await
            .unwrap();
        tokio::time::sleep(Duration::from_millis(450)).await;
    }
    let got = rx
        .wait_for(WAIT, "the last round", |r| {
            r.last()
                .is_some_and(|e| e.json()["data"]["document"]["title"] == "Round 10")
        })
        .await;
    let titles: Vec<String> = got
        .iter()
        .map(|e| {
            e.json()["data"]["document"]["title"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    let rounds: Vec<u32> = titles.iter().map(|t| t[6..].parse().unwrap()).collect();
    // A document is read when its window closes, which may be after the next change
    // committed: never older than an earlier event's.
    assert!(rounds.windows(2).all(|w| w[0] <= w[1]), "{titles:?}");
    assert!(
        rounds.len() >= 5,
        "bursts past the window make their own events: {titles:?}"
    );
    drop(walhook);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_names_a_broken_query_and_a_source_whose_deletes_lack_the_key() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", &format!("{PIM_SQL}{SCHEMA}")).await;
    let rx = Receiver::start().await;
    // offers logs only its id: a delete would not say which product it was of.
    let sources = format!(r#"{SOURCES}, {{ table = "public.offers", key = "product_id" }}"#);
    let (code, err) = run_config(&config(
        &url,
        &rx,
        "select p.id, p.nope from products p where p.id = $1",
        &sources,
    ));
    assert_ne!(code, 0);
    assert!(err.contains("documents[0].query"), "{err}");
    assert!(err.contains("nope"), "{err}");
    assert!(err.contains("documents[0].sources[2].key"), "{err}");
    assert!(err.contains("REPLICA IDENTITY FULL"), "{err}");
    // Fixed, the same config starts.
    let db = pg.client("shop").await;
    db.batch_execute("ALTER TABLE offers REPLICA IDENTITY FULL")
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhook.toml");
    std::fs::write(&path, config(&url, &rx, QUERY, &sources)).unwrap();
    let (code, out, err) = walhook_output(&["check", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("document product.updated"), "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_of_a_document_sends_every_product_as_it_is_to_its_subscriber_only() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", &format!("{PIM_SQL}{SCHEMA}")).await;
    let db = pg.client("shop").await;
    add_products(&db, 100, 2099).await;
    let (rx, other) = (Receiver::start().await, Receiver::start().await);
    let config = format!(
        "{}\n[backfill]\nchunk_rows = 300\n{}",
        config(&url, &rx, QUERY, SOURCES),
        subscriber("other", &other.url(), "\"product.updated\"", "")
    );
    let walhook = Walhook::start(&config);
    walhook.wait_ready().await;
    let path = walhook.config_path();
    let path = path.to_str().unwrap();
    // Refusals name the fix.
    let (code, _, err) = backfill_start(path, "product.nope", &[]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("no such [[documents]]") && err.contains("product.updated"),
        "{err}"
    );
    // Live changes all along: the last event of each product carries its stock as it is.
    let writer = {
        let db = pg.client("shop").await;
        tokio::spawn(async move {
            for n in 0..40 {
                db.batch_execute(&format!(
                    "UPDATE stock SET qty = {} WHERE product_id IN ({}, {}, 1)",
                    n + 2,
                    100 + n * 50,
                    2099 - n * 13
                ))
                .await
                .unwrap();
                tokio::time::sleep(Duration::from_millis(40)).await;
            }
        })
    };
    let (code, out, err) = backfill_start(path, "product.updated", &["--wait"]);
    assert_eq!(code, 0, "{out}{err}\n{}", walhook.log());
    writer.await.unwrap();
    let stock: HashMap<i64, i64> = db
        .query(
            "SELECT product_id, sum(qty)::bigint FROM stock GROUP BY product_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let products = 2003; // 3 of the PIM schema and 2,000 more
    let got = rx
        .wait_for(WAIT, "every product's last event current", |r| {
            let mut last: HashMap<i64, i64> = HashMap::new();
            for e in r {
                let d = e.json()["data"]["document"].clone();
                last.insert(d["id"].as_i64().unwrap(), d["stock"].as_i64().unwrap());
            }
            last.len() == products
                && last
                    .iter()
                    .all(|(id, s)| stock.get(id).copied().unwrap_or(0) == *s)
        })
        .await;
    let reads: Vec<Value> = got
        .iter()
        .map(Received::json)
        .filter(|b| b["data"]["op"] == "read")
        .collect();
    let read_ids: std::collections::HashSet<i64> = reads
        .iter()
        .map(|b| b["data"]["document"]["id"].as_i64().unwrap())
        .collect();
    assert_eq!(read_ids.len(), products, "every product is read");
    assert!(reads.iter().all(|b| b["type"] == "product.updated"));
    // The other subscriber got live documents only.
    assert!(other.delivered().iter().all(|e| e.json()["data"]["op"] != "read"));
    by_id(&got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_subscriber_with_initial_backfill_gets_every_document() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", &format!("{PIM_SQL}{SCHEMA}")).await;
    let db = pg.client("shop").await;
    add_products(&db, 100, 599).await;
    let rx = Receiver::start().await;
    let config = config(&url, &rx, QUERY, SOURCES).replace(
        "allow_private_targets = true",
        "allow_private_targets = true\ninitial_backfill = true",
    );
    let walhook = Walhook::start(&config);
    walhook.wait_ready().await;
    let got = rx.wait_for(WAIT, "every product read", |r| r.len() >= 503).await;
    let ids: std::collections::HashSet<i64> = got
        .iter()
        .map(|e| {
            let b = e.json();
            assert_eq!(b["data"]["op"], "read", "{b}");
            b["data"]["document"]["id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(ids.len(), 503);
    assert!(walhook.log().contains("new subscriber with initial_backfill"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_asks_for_a_document_backfill_and_refuses_a_wrong_one() {
    const TOKEN: &str = "documents-test-token-0123456789";
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", &format!("{PIM_SQL}{SCHEMA}")).await;
    let rx = Receiver::start().await;
    let walhook = Walhook::start_with_admin(
        &config(&url, &rx, QUERY, SOURCES),
        &format!("token = \"{TOKEN}\""),
    );
    walhook.wait_ready().await;
    let ask = |body: serde_json::Value| walhook.api("POST", "/backfills", Some(TOKEN), Some(body));
    let (status, answer) = ask(serde_json::json!({"subscriber": "shop", "document": "product.nope"})).await;
    assert_eq!(status, 400, "{answer}");
    assert!(answer.to_string().contains("product.updated"), "{answer}");
    let (status, answer) = ask(serde_json::json!({
        "subscriber": "shop", "document": "product.updated", "tables": ["public.products"]
    }))
    .await;
    assert_eq!(status, 400, "{answer}");
    let (status, answer) =
        ask(serde_json::json!({"subscriber": "shop", "document": "product.updated"})).await;
    assert_eq!(status, 201, "{answer}");
    assert_eq!(answer["document"], "product.updated");
    assert_eq!(answer["tables"], serde_json::json!(["public.products"]));
    let got = rx
        .wait_for(WAIT, "the three products read", |r| r.len() >= 3)
        .await;
    assert!(got.iter().all(|e| e.json()["data"]["op"] == "read"));
}
