//! Sharding by publication: two walhook deployments on one database, each with its own
//! slot, publication and tables, sharing one state database (and even a subscriber name).
//! Each delivers exactly its own tables' events, each once; the state database keeps their
//! leases, marks and spill logs apart by slot.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

const SCHEMA: &str = "CREATE TABLE orders (id bigint PRIMARY KEY, total numeric NOT NULL);
                      CREATE TABLE stock (product_id bigint PRIMARY KEY, qty integer NOT NULL);";

fn deployment(url: &str, state: &str, shard: &str, table: &str, rx: &Receiver) -> String {
    format!(
        "[source]\nurl = \"{url}\"\nslot = \"{shard}\"\npublication = \"{shard}\"\n\
         [state]\nurl = \"{state}\"\n[[events]]\ntable = \"{table}\"\n{}",
        // The same subscriber name in both: the state keeps them apart by slot.
        subscriber("channel", &rx.url(), "\"*\"", ""),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_deployments_on_one_database_each_deliver_their_own_events() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", SCHEMA).await;
    let state = pg.create_db("walhook_state", "").await;
    let orders_rx = Receiver::start().await;
    let stock_rx = Receiver::start().await;
    let a = Walhook::start(&deployment(&url, &state, "orders_shard", "orders", &orders_rx));
    let b = Walhook::start(&deployment(&url, &state, "stock_shard", "stock", &stock_rx));
    a.wait_ready().await;
    b.wait_ready().await;
    let db = pg.client("shop").await;
    for round in 0..5 {
        db.batch_execute(&format!(
            "BEGIN;
             INSERT INTO orders SELECT {round} * 100 + g, g FROM generate_series(1, 20) g;
             INSERT INTO stock SELECT {round} * 100 + g, g FROM generate_series(1, 30) g;
             COMMIT;"
        ))
        .await
        .unwrap();
    }
    let orders = orders_rx
        .wait_unique(Duration::from_secs(30), "100 order events", 100)
        .await;
    let stock = stock_rx
        .wait_unique(Duration::from_secs(30), "150 stock events", 150)
        .await;
    // A moment for anything stray to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let tables = |got: &[Received]| -> BTreeSet<String> {
        got.iter()
            .map(|r| r.json()["data"]["table"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(tables(&orders), BTreeSet::from(["public.orders".to_string()]));
    assert_eq!(tables(&stock), BTreeSet::from(["public.stock".to_string()]));
    for (rx, n) in [(&orders_rx, 100), (&stock_rx, 150)] {
        let all = rx.all();
        let ids: BTreeSet<&str> = all.iter().map(|r| r.id.as_str()).collect();
        assert_eq!((all.len(), ids.len()), (n, n), "each event once");
    }

    // Each slot has its own publication with only its table, and its own lease.
    let rows = db
        .query(
            "SELECT pubname::text, tablename::text FROM pg_publication_tables
             WHERE pubname IN ('orders_shard', 'stock_shard') ORDER BY 1",
            &[],
        )
        .await
        .unwrap();
    let pubs: Vec<(String, String)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        pubs,
        vec![
            ("orders_shard".to_string(), "orders".to_string()),
            ("stock_shard".to_string(), "stock".to_string())
        ]
    );
    let st = pg.client("walhook_state").await;
    let leases: Vec<String> = st
        .query("SELECT slot FROM walhook.leases ORDER BY slot", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(leases, vec!["orders_shard", "stock_shard"]);
    let lanes: Vec<(String, String)> = st
        .query("SELECT slot, subscriber FROM walhook.lanes ORDER BY slot", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    assert_eq!(
        lanes,
        vec![
            ("orders_shard".to_string(), "channel".to_string()),
            ("stock_shard".to_string(), "channel".to_string())
        ]
    );
}
