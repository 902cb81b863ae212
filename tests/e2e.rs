//! End to end: inserts, updates and deletes on products, prices and stock reach a real
//! receiver with the right type, key, new, old, changed and source, correctly signed.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

fn pim_config(url: &str, receiver: &str) -> String {
    format!(
        r#"
[source]
url = "{url}"

[[events]]
table = "public.products"

[[events]]
table = "prices"
name = "price.changed"
on = ["update"]
changed = ["amount"]

[[events]]
table = "stock"

{sub}
"#,
        sub = subscriber("shop", receiver, "\"*\"", "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_arrive_signed_with_the_right_payload() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", PIM_SQL).await;
    let db = pg.client("shop").await;
    // Updates of a table that logs only its key carry no old row (checked below).
    db.batch_execute("ALTER TABLE products REPLICA IDENTITY DEFAULT")
        .await
        .unwrap();
    let rx = Receiver::start().await;
    let walhook = Walhook::start(&pim_config(&url, &rx.url()));
    walhook.wait_ready().await;

    db.batch_execute(
        "INSERT INTO products (id, sku, title, brand, attributes) VALUES (10, 'SKU-10', 'Bookshelf', 'Oakline', '{\"shelves\": 5}');
         UPDATE prices SET amount = 659.00 WHERE product_id = 1 AND currency = 'EUR';
         UPDATE prices SET valid_from = '2030-01-01' WHERE product_id = 2;
         UPDATE stock SET qty = 0 WHERE product_id = 3 AND warehouse = 'lyon';
         DELETE FROM stock WHERE product_id = 2 AND warehouse = 'berlin';
         UPDATE products SET title = 'Desk lamp II' WHERE id = 2;
         INSERT INTO products (id, sku, title) VALUES (11, 'SKU-11', 'Stool');
         DELETE FROM products WHERE id = 11;",
    )
    .await
    .unwrap();

    let got = rx
        .wait_for(Duration::from_secs(30), "7 webhooks", |r| r.len() >= 7)
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let got_all = rx.delivered();
    assert_eq!(
        got_all.len(),
        7,
        "the valid_from-only price update must not fire; got {:?}",
        got_all
            .iter()
            .map(|r| r.json()["type"].clone())
            .collect::<Vec<_>>()
    );

    for r in &got {
        assert!(r.verifies(SECRET), "signature of {} does not verify", r.id);
        assert!(r.id.starts_with("evt_"), "{}", r.id);
    }
    let bodies: Vec<serde_json::Value> = got.iter().map(Received::json).collect();
    let find = |ty: &str, key: serde_json::Value| {
        bodies
            .iter()
            .find(|b| b["type"] == ty && b["data"]["key"] == key)
            .unwrap_or_else(|| panic!("no {ty} for {key} in {bodies:#?}"))
            .clone()
    };

    let created = find("products.created", json!({"id": 10}));
    assert_eq!(created["data"]["op"], "insert");
    assert_eq!(created["data"]["table"], "public.products");
    assert_eq!(created["data"]["new"]["sku"], "SKU-10");
    assert_eq!(created["data"]["new"]["attributes"], json!({"shelves": 5}));
    assert_eq!(created["data"]["new"]["description"], serde_json::Value::Null);
    assert_eq!(created["data"]["old"], serde_json::Value::Null);
    assert_eq!(created["data"]["changed"], serde_json::Value::Null);

    let price = find("price.changed", json!({"product_id": 1, "currency": "EUR"}));
    assert_eq!(price["data"]["op"], "update");
    assert_eq!(
        serde_json::to_string(&price["data"]["new"]["amount"]).unwrap(),
        "659.00"
    );
    assert_eq!(
        serde_json::to_string(&price["data"]["old"]["amount"]).unwrap(),
        "649.00"
    );
    assert_eq!(price["data"]["changed"], json!(["amount"]));

    let stock = find("stock.updated", json!({"product_id": 3, "warehouse": "lyon"}));
    assert_eq!(stock["data"]["new"]["qty"], 0);
    assert_eq!(stock["data"]["old"]["qty"], 7);
    assert_eq!(stock["data"]["changed"], json!(["qty"]));

    let deleted = find("stock.deleted", json!({"product_id": 2, "warehouse": "berlin"}));
    assert_eq!(deleted["data"]["new"], serde_json::Value::Null);
    assert_eq!(
        deleted["data"]["old"],
        json!({"product_id": 2, "warehouse": "berlin", "qty": 140})
    );

    // products has REPLICA IDENTITY DEFAULT: no old row, so changed is unknown (null).
    let updated = find("products.updated", json!({"id": 2}));
    assert_eq!(updated["data"]["new"]["title"], "Desk lamp II");
    assert_eq!(updated["data"]["old"], serde_json::Value::Null);

    // All six statements ran in one transaction: one commit LSN, xid and time, and the
    // change index orders them.
    let lsns: Vec<_> = bodies
        .iter()
        .map(|b| b["data"]["source"]["lsn"].clone())
        .collect();
    assert!(lsns.iter().all(|l| *l == lsns[0]), "{lsns:?}");
    let slsn = lsns[0].as_str().unwrap();
    assert!(slsn.contains('/'), "{slsn}");
    assert!(bodies.iter().all(|b| b["data"]["source"]["xid"].is_u64()));
    let commit_time = bodies[0]["data"]["source"]["commit_time"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(
        commit_time.ends_with('Z') && commit_time.contains('T'),
        "{commit_time}"
    );
    assert!(bodies.iter().all(|b| b["timestamp"] == commit_time.as_str()));
    let mut seqs: Vec<u64> = bodies
        .iter()
        .map(|b| b["data"]["source"]["seq"].as_u64().unwrap())
        .collect();
    seqs.sort();
    assert_eq!(
        seqs,
        vec![0, 1, 3, 4, 5, 6, 7],
        "index 2 is the price update that did not fire"
    );

    // A delete on a table with the default identity: `old` holds the key columns only,
    // never made-up nulls for the columns the server did not send.
    let gone = find("products.deleted", json!({"id": 11}));
    assert_eq!(gone["data"]["old"], json!({"id": 11}));
    assert_eq!(gone["data"]["new"], serde_json::Value::Null);
    let _ = walhook;
}
