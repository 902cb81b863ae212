//! Partitioned tables: a rule on a partitioned table takes the changes of all its
//! partitions (publication `publish_via_partition_root`), including a row moving between
//! partitions and partitions attached while walhook runs; a publication made by hand
//! without that option still maps partitions' changes to the partitioned table's rules;
//! and a change of a published table that no rule takes is counted and logged.

mod common;

use std::time::Duration;

use common::*;

const SCHEMA: &str = "
CREATE TABLE prices (
    product_id bigint NOT NULL, region text NOT NULL, amount numeric(12,2) NOT NULL,
    PRIMARY KEY (product_id, region)) PARTITION BY LIST (region);
CREATE TABLE prices_eu PARTITION OF prices FOR VALUES IN ('eu');
CREATE TABLE prices_us PARTITION OF prices FOR VALUES IN ('us');
CREATE TABLE audit (id bigserial PRIMARY KEY, line text);";

fn config(url: &str, receiver: &str, source_extra: &str) -> String {
    format!(
        "[source]\nurl = \"{url}\"\n{source_extra}\n[[events]]\ntable = \"prices\"\n{}",
        subscriber("shop", receiver, "\"*\"", "")
    )
}

/// (type, op, key, amount of new or old) of each distinct event, in order of arrival.
fn seen(got: &[Received]) -> Vec<(String, String, String, String)> {
    let mut ids = std::collections::HashSet::new();
    got.iter()
        .filter(|r| ids.insert(r.id.clone()))
        .map(|r| {
            let b = r.json();
            let d = &b["data"];
            let row = if d["new"].is_null() { &d["old"] } else { &d["new"] };
            assert_eq!(d["table"], "public.prices", "{b}");
            (
                b["type"].as_str().unwrap().to_string(),
                d["op"].as_str().unwrap().to_string(),
                d["key"].to_string(),
                row["region"].as_str().unwrap_or("?").to_string(),
            )
        })
        .collect()
}

async fn exercise(pg: &PgCluster, rx: &Receiver) {
    let db = pg.client("shop").await;
    db.batch_execute(
        "INSERT INTO prices VALUES (1, 'eu', 10.00);
         UPDATE prices SET amount = 11.00 WHERE product_id = 1;
         UPDATE prices SET region = 'us' WHERE product_id = 1;
         DELETE FROM prices WHERE product_id = 1;
         INSERT INTO audit (line) VALUES ('not captured');",
    )
    .await
    .unwrap();
    let got = rx
        .wait_unique(Duration::from_secs(30), "the price changes", 5)
        .await;
    // Per key, in order of arrival (keys are delivered in parallel).
    let mut by_key: std::collections::BTreeMap<String, Vec<String>> = Default::default();
    for (kind, op, key, region) in seen(&got) {
        by_key
            .entry(key)
            .or_default()
            .push(format!("{kind} {op} {region}"));
    }
    let k = |r: &str| format!("{{\"product_id\":1,\"region\":\"{r}\"}}");
    assert_eq!(
        by_key,
        [
            (
                k("eu"),
                vec![
                    "prices.created insert eu".to_string(),
                    "prices.updated update eu".to_string(),
                    // A row moving between partitions: deleted from one, inserted into
                    // the other.
                    "prices.deleted delete eu".to_string(),
                ]
            ),
            (
                k("us"),
                vec![
                    "prices.created insert us".to_string(),
                    "prices.deleted delete us".to_string(),
                ]
            ),
        ]
        .into_iter()
        .collect()
    );

    // Partitions made while walhook runs: created as a partition, and attached.
    db.batch_execute(
        "CREATE TABLE prices_asia PARTITION OF prices FOR VALUES IN ('asia');
         CREATE TABLE prices_latam (LIKE prices INCLUDING ALL);
         ALTER TABLE prices ATTACH PARTITION prices_latam FOR VALUES IN ('latam');
         INSERT INTO prices VALUES (2, 'asia', 20.00), (3, 'latam', 30.00);",
    )
    .await
    .unwrap();
    let got = rx
        .wait_unique(Duration::from_secs(30), "the new partitions' rows", 7)
        .await;
    let mut tail: Vec<String> = seen(&got)[5..].iter().map(|e| e.3.clone()).collect();
    tail.sort();
    assert_eq!(tail, vec!["asia", "latam"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_on_a_partitioned_table_takes_every_partitions_changes() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", SCHEMA).await;
    let rx = Receiver::start().await;
    let w = Walhook::start(&config(&url, &rx.url(), ""));
    w.wait_ready().await;
    let db = pg.client("shop").await;
    let via_root: bool = db
        .query_one(
            "SELECT pubviaroot FROM pg_publication WHERE pubname = 'walhook'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        via_root,
        "walhook's publication publishes partitions via their root"
    );
    exercise(&pg, &rx).await;
    assert_eq!(w.metric("walhook_changes_unmatched_total").await, None);
}

/// A publication made by hand without `publish_via_partition_root`: the partitions'
/// changes arrive under their own names and still reach the partitioned table's rule. A
/// table in the publication that no rule names is counted and logged, not dropped
/// silently.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitions_changes_under_their_own_names_reach_the_rule() {
    let pg = PgCluster::start().await;
    let url = pg
        .create_db(
            "shop",
            &format!("{SCHEMA}\nCREATE PUBLICATION walhook FOR TABLE prices, audit;"),
        )
        .await;
    pg.client("shop")
        .await
        .batch_execute("SELECT pg_create_logical_replication_slot('walhook', 'pgoutput')")
        .await
        .unwrap();
    let rx = Receiver::start().await;
    let w = Walhook::start(&config(&url, &rx.url(), "create = false"));
    w.wait_ready().await;
    exercise(&pg, &rx).await;
    eventually(Duration::from_secs(10), "the audit insert counted", || async {
        w.metric("walhook_changes_unmatched_total{table=\"public.audit\"}")
            .await
            == Some(1.0)
    })
    .await;
    let log = w.log();
    assert!(
        log.contains("changes of this table reach walhook but no rule takes them"),
        "{log}"
    );
    assert!(log.contains("publish_via_partition_root"), "{log}");
}
