//! Soft deletes, run from `config/examples/11-soft-deletes.toml` against a table that
//! deletes the way ORM schemas do (`deleted_at`): a soft delete, a restore, an update of
//! a soft-deleted row, and a hard delete after a soft one, each make what the README
//! says, in order.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const SCHEMA: &str = "
    CREATE TABLE product (id text PRIMARY KEY, title text NOT NULL, deleted_at timestamptz);
    ALTER TABLE product REPLICA IDENTITY FULL;
    INSERT INTO product VALUES ('prod_1', 'Oak desk', NULL), ('prod_2', 'Lamp', NULL);
";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soft_deletes_make_the_specified_events() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", SCHEMA).await;
    let rx = Receiver::start().await;
    let path = format!(
        "{}/config/examples/11-soft-deletes.toml",
        env!("CARGO_MANIFEST_DIR")
    );
    let config = std::fs::read_to_string(&path)
        .unwrap()
        .replace("${DATABASE_URL}", &url)
        .replace("${CHANNEL_URL}", &rx.url())
        .replace("${CHANNEL_SECRET}", SECRET)
        .replace("[[subscribers]]", "[[subscribers]]\nallow_private_targets = true");
    let walhook = Walhook::start(&config);
    walhook.wait_ready().await;
    let db = pg.client("shop").await;
    for sql in [
        // A soft delete, then an update of the deleted row (ignored), then a restore.
        "UPDATE product SET deleted_at = '2026-12-04 10:00:00+00' WHERE id = 'prod_1'",
        "UPDATE product SET title = 'Oak desk (old)' WHERE id = 'prod_1'",
        "UPDATE product SET deleted_at = NULL WHERE id = 'prod_1'",
        // A soft delete, then the hard delete of the same row (no second event).
        "UPDATE product SET deleted_at = now() WHERE id = 'prod_2'",
        "DELETE FROM product WHERE id = 'prod_2'",
        // An ordinary update, then a hard delete of a row never soft-deleted.
        "UPDATE product SET title = 'Oak desk II' WHERE id = 'prod_1'",
        "DELETE FROM product WHERE id = 'prod_1'",
    ] {
        db.batch_execute(sql).await.unwrap();
    }
    let got = rx
        .wait_for(Duration::from_secs(30), "the last delete", |r| {
            r.iter().any(|e| {
                e.json()["data"]["op"] == "delete"
                    && e.json()["data"]["key"] == json!({"id": "prod_1"})
                    && e.json()["data"]["new"].is_null()
            })
        })
        .await;
    // Every transaction before the last one has been mapped by now.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let got = if rx.delivered().len() > got.len() {
        rx.delivered()
    } else {
        got
    };
    let seen: Vec<(String, String, String, Value)> = got
        .iter()
        .map(|r| {
            let b = r.json();
            assert!(r.verifies(SECRET));
            (
                b["type"].as_str().unwrap().to_string(),
                b["data"]["op"].as_str().unwrap().to_string(),
                b["data"]["key"]["id"].as_str().unwrap().to_string(),
                b["data"]["new"]["deleted_at"].clone(),
            )
        })
        .collect();
    let kinds: Vec<(&str, &str, &str)> = seen
        .iter()
        .map(|(t, o, k, _)| (t.as_str(), o.as_str(), k.as_str()))
        .collect();
    // Per key, in commit order (keys may interleave).
    let of = |key: &str| {
        kinds
            .iter()
            .filter(|(_, _, k)| *k == key)
            .map(|(t, o, _)| (*t, *o))
            .collect::<Vec<_>>()
    };
    assert_eq!(
        of("prod_1"),
        [
            ("product.deleted", "delete"),
            ("product.restored", "restore"),
            ("product.updated", "update"),
            ("product.deleted", "delete"),
        ],
        "{seen:#?}"
    );
    assert_eq!(of("prod_2"), [("product.deleted", "delete")], "{seen:#?}");
    // The soft delete carries the row as it is now, deleted_at set.
    let soft = seen
        .iter()
        .find(|(_, o, k, _)| o == "delete" && k == "prod_2")
        .unwrap();
    assert!(soft.3.is_string(), "the soft-deleted row's deleted_at: {seen:#?}");
}
