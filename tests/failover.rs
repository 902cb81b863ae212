//! A primary failover with slot synchronisation (PostgreSQL 17+): walhook's slot is a
//! failover slot, a physical standby with `sync_replication_slots = on` keeps a copy in
//! step, the primary crashes mid-workload, the standby is promoted and walhook is pointed
//! at it. Every row the promoted server holds has reached the subscriber: nothing is
//! lost (a change may come twice, with the same webhook-id).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::pg::connect;
use common::*;

const WAIT: Duration = Duration::from_secs(60);

fn config(url: &str, rx: &str) -> String {
    format!(
        "[source]\nurl = \"{url}\"\n\n[state]\nlease = \"3s\"\n\n\
         [[events]]\ntable = \"stock\"\non = [\"insert\"]\n\n{}",
        subscriber("shop", rx, "\"*\"", "")
    )
}

/// The ids of the `stock.created` events `rx` got.
fn delivered(rx: &Receiver) -> BTreeSet<i64> {
    rx.delivered()
        .iter()
        .map(|r| r.json()["data"]["key"]["id"].as_i64().unwrap())
        .collect()
}

async fn insert(db: &tokio_postgres::Client, ids: std::ops::RangeInclusive<i64>) {
    for id in ids {
        db.execute("INSERT INTO stock VALUES ($1, 1)", &[&id])
            .await
            .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_standby_with_synced_slots_loses_nothing() {
    let primary = PgCluster::start_major(17, &[]).await;
    let url = primary
        .create_db(
            "shop",
            "CREATE TABLE stock (id bigint PRIMARY KEY, qty int NOT NULL);
             SELECT pg_create_physical_replication_slot('sb1');",
        )
        .await;
    let standby = primary
        .standby(
            "sb1",
            &[("sync_replication_slots", "on"), ("hot_standby_feedback", "on")],
        )
        .await;
    // On the primary only: changes reach walhook once the standby has them too.
    let admin = primary.client("postgres").await;
    admin
        .batch_execute("ALTER SYSTEM SET synchronized_standby_slots = 'sb1'")
        .await
        .unwrap();
    admin.batch_execute("SELECT pg_reload_conf()").await.unwrap();
    eventually(WAIT, "the standby streams", || {
        let admin = &admin;
        async move {
            admin
                .query_one("SELECT count(*) FROM pg_stat_replication", &[])
                .await
                .unwrap()
                .get::<_, i64>(0)
                == 1
        }
    })
    .await;

    let rx = Receiver::start().await;
    let mut walhook = Walhook::start(&config(&url, &rx.url()));
    walhook.wait_ready().await;
    let db = primary.client("shop").await;
    let failover: bool = db
        .query_one(
            "SELECT failover FROM pg_replication_slots WHERE slot_name = 'walhook'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(failover, "walhook's slot is not a failover slot on PostgreSQL 17");

    insert(&db, 1..=100).await;
    rx.wait_for(WAIT, "the first hundred", |r| r.len() >= 100).await;
    let standby_db = standby.client("shop").await;
    eventually(WAIT, "the standby holds a synced copy of walhook's slot", || {
        let standby_db = &standby_db;
        async move {
            standby_db
                .query_opt(
                    "SELECT 1 FROM pg_replication_slots WHERE slot_name = 'walhook' AND synced \
                     AND confirmed_flush_lsn IS NOT NULL",
                    &[],
                )
                .await
                .unwrap()
                .is_some()
        }
    })
    .await;

    // More changes, then the primary crashes while walhook is still delivering them.
    insert(&db, 101..=300).await;
    primary.crash();
    standby_db.batch_execute("SELECT pg_promote()").await.unwrap();
    eventually(WAIT, "the standby is promoted", || {
        let standby_db = &standby_db;
        async move {
            !standby_db
                .query_one("SELECT pg_is_in_recovery()", &[])
                .await
                .unwrap()
                .get::<_, bool>(0)
        }
    })
    .await;

    // walhook is pointed at the promoted server, which writes on.
    walhook.stop();
    let promoted = standby.url("shop");
    let _walhook = Walhook::start(&config(&promoted, &rx.url()));
    let db = connect(&promoted).await;
    insert(&db, 301..=400).await;

    let held: BTreeSet<i64> = db
        .query("SELECT id FROM stock", &[])
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(held.contains(&400));
    let want = held.len();
    rx.wait_for(WAIT, "every row the promoted server holds", |_| {
        delivered(&rx).is_superset(&held)
    })
    .await;
    let got = delivered(&rx);
    let missing: Vec<&i64> = held.difference(&got).collect();
    assert!(missing.is_empty(), "lost in the failover: {missing:?}");
    println!(
        "failover: {want} rows on the promoted server, {} deliveries ({} repeats)",
        rx.delivered().len(),
        rx.delivered().len() - delivered(&rx).len()
    );
}
