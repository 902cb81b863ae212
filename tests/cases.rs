//! The mapping cases users attach walhook for, each run from its example config in
//! `config/examples/` against `sql/examples/pim.sql`: real SQL, a real receiver per
//! subscriber, and what each receiver got. Where a rule must not fire, the test also
//! checks that nothing else was emitted: the last statement of each test is a change that
//! does fire, and once it arrived every earlier transaction has been mapped, so
//! `walhook_events_emitted_total` is final for them.

mod common;

use std::time::Duration;

use common::*;
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(30);

/// An example config with its `${VAR}`s filled in, and every subscriber allowed to
/// reach the loopback receivers.
fn example(name: &str, vars: &[(&str, &str)]) -> String {
    let path = format!("{}/config/examples/{name}.toml", env!("CARGO_MANIFEST_DIR"));
    let mut text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    for (var, value) in vars {
        text = text.replace(&format!("${{{var}}}"), value);
    }
    assert!(!text.contains("${"), "{name}: a variable is not filled in");
    text.replace("[[subscribers]]", "[[subscribers]]\nallow_private_targets = true")
}

/// Starts PostgreSQL with the PIM schema and walhook with an example config whose
/// subscribers are `subs` (each `NAME` fills `${NAME_URL}` and `${NAME_SECRET}`).
async fn start(name: &str, subs: &[&str]) -> (PgCluster, Walhook, Vec<Receiver>, tokio_postgres::Client) {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", PIM_SQL).await;
    let mut receivers = Vec::new();
    let mut vars: Vec<(String, String)> = vec![("DATABASE_URL".into(), url)];
    for sub in subs {
        let rx = Receiver::start().await;
        vars.push((format!("{sub}_URL"), rx.url()));
        vars.push((format!("{sub}_SECRET"), SECRET.into()));
        receivers.push(rx);
    }
    let vars: Vec<(&str, &str)> = vars.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    let walhook = Walhook::start(&example(name, &vars));
    walhook.wait_ready().await;
    let db = pg.client("shop").await;
    (pg, walhook, receivers, db)
}

/// Runs each statement in its own transaction.
async fn run(db: &tokio_postgres::Client, statements: &[&str]) {
    for sql in statements {
        db.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
    }
}

/// Waits for `n` webhooks at `rx`, checks each is signed, and returns their bodies in
/// commit order (events of different keys may arrive in any order).
async fn bodies(rx: &Receiver, n: usize) -> Vec<Value> {
    let got = rx
        .wait_for(WAIT, &format!("{n} webhooks"), |r| r.len() >= n)
        .await;
    for r in &got {
        assert!(r.verifies(SECRET), "signature of {} does not verify", r.id);
    }
    let mut bodies: Vec<Value> = got.iter().map(Received::json).collect();
    bodies.sort_by_key(|b| {
        let source = &b["data"]["source"];
        let (hi, lo) = source["lsn"].as_str().unwrap().split_once('/').unwrap();
        let lsn = (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap();
        (lsn, source["seq"].as_u64().unwrap())
    });
    bodies
}

/// Asserts mapping made exactly `n` events so far (see the module doc).
async fn emitted(walhook: &Walhook, n: usize) {
    let m = walhook
        .metric("walhook_events_emitted_total")
        .await
        .unwrap_or(-1.0);
    assert_eq!(m, n as f64, "events emitted; log:\n{}", walhook.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_01_a_price_update_reaches_the_webshop_with_old_and_new_amount() {
    let (_pg, walhook, rx, db) = start("01-price-to-webshop", &["WEBSHOP"]).await;
    run(
        &db,
        &[
            "UPDATE prices SET amount = 659.00 WHERE product_id = 1 AND currency = 'EUR'",
            "UPDATE prices SET valid_from = '2031-01-01' WHERE product_id = 2",
            "UPDATE prices SET amount = 42.50 WHERE product_id = 2",
        ],
    )
    .await;
    let got = bodies(&rx[0], 2).await;
    emitted(&walhook, 2).await;
    assert_eq!(got[0]["type"], "price.changed");
    assert_eq!(got[0]["data"]["key"], json!({"product_id": 1, "currency": "EUR"}));
    assert_eq!(got[0]["data"]["old"]["amount"].to_string(), "649.00");
    assert_eq!(got[0]["data"]["new"]["amount"].to_string(), "659.00");
    assert_eq!(got[0]["data"]["changed"], json!(["amount"]));
    assert_eq!(got[1]["data"]["new"]["amount"].to_string(), "42.50");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_02_stock_reaches_every_channel_in_per_product_order() {
    let (_pg, walhook, rx, db) = start("02-stock-to-channels", &["WEBSHOP", "MARKETPLACE", "POS"]).await;
    // Product 1 and product 3 interleaved, each update its own transaction.
    let mut statements = Vec::new();
    for q in 1..=15 {
        statements.push(format!(
            "UPDATE stock SET qty = {q} WHERE product_id = 1 AND warehouse = 'berlin'"
        ));
        statements.push(format!(
            "UPDATE stock SET qty = {} WHERE product_id = 3 AND warehouse = 'lyon'",
            100 + q
        ));
    }
    let refs: Vec<&str> = statements.iter().map(String::as_str).collect();
    run(&db, &refs).await;
    for channel in &rx {
        bodies(channel, 30).await;
        let seqs = qty_sequences(&channel.delivered());
        assert_eq!(seqs[&1], (1..=15).collect::<Vec<_>>());
        assert_eq!(seqs[&3], (101..=115).collect::<Vec<_>>());
        let one = channel.delivered()[0].json();
        assert_eq!(one["type"], "stock.changed");
        let new = one["data"]["new"].as_object().unwrap();
        assert_eq!(new.keys().collect::<Vec<_>>(), ["product_id", "warehouse", "qty"]);
    }
    emitted(&walhook, 30).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_03_product_approved_fires_only_on_the_transition() {
    let (_pg, walhook, rx, db) = start("03-product-approved", &["MARKETPLACE"]).await;
    run(
        &db,
        &[
            "UPDATE products SET status = 'review' WHERE id = 3",
            "UPDATE products SET status = 'approved', description = 'Mesh back, approved text.' WHERE id = 3",
            // Later edits of an approved product, and of one approved long ago: nothing.
            "UPDATE products SET title = 'Office chair Pro' WHERE id = 3",
            "UPDATE products SET status = 'approved', title = 'Walnut desk XL' WHERE id = 1",
            "UPDATE products SET status = 'draft' WHERE id = 2",
            // Back into approved: fires again.
            "UPDATE products SET status = 'approved' WHERE id = 2",
        ],
    )
    .await;
    let got = bodies(&rx[0], 2).await;
    emitted(&walhook, 2).await;
    assert_eq!(got.len(), 2);
    assert_eq!(got[0]["type"], "product.approved");
    assert_eq!(
        got[0]["data"]["new"],
        json!({"id": 3, "sku": "SKU-3", "title": "Office chair", "description": "Mesh back, approved text.", "brand": "Sitwell"})
    );
    assert!(
        got[0]["data"].get("old").is_none(),
        "include_old = false: {}",
        got[0]
    );
    assert_eq!(got[1]["data"]["key"], json!({"id": 2}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_05_an_uploaded_image_goes_to_the_optimizer() {
    let (_pg, walhook, rx, db) = start("05-image-uploaded", &["OPTIMIZER"]).await;
    run(
        &db,
        &[
            "INSERT INTO images (product_id, url, alt) VALUES (1, 'https://cdn.example.com/p/1/front.jpg', 'Front')",
            "UPDATE images SET alt = 'Front view' WHERE product_id = 1",
            "DELETE FROM images WHERE product_id = 1",
            "INSERT INTO images (product_id, url) VALUES (2, 'https://cdn.example.com/p/2/lamp.png')",
        ],
    )
    .await;
    let got = bodies(&rx[0], 2).await;
    emitted(&walhook, 2).await;
    assert_eq!(got[0]["type"], "image.uploaded");
    assert_eq!(got[0]["data"]["op"], "insert");
    assert_eq!(
        got[0]["data"]["new"],
        json!({"id": 1, "product_id": 1, "url": "https://cdn.example.com/p/1/front.jpg"})
    );
    assert_eq!(
        got[1]["data"]["new"]["url"],
        "https://cdn.example.com/p/2/lamp.png"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_06_a_status_change_carries_old_and_new_status_as_cloudevents() {
    let (_pg, walhook, rx, db) = start("06-status-changed", &["TRANSLATIONS"]).await;
    run(
        &db,
        &[
            "UPDATE products SET status = 'review' WHERE id = 3",
            "UPDATE products SET title = 'Office chair 2' WHERE id = 3",
            "UPDATE products SET status = 'review' WHERE id = 3",
            "UPDATE products SET status = 'approved' WHERE id = 3",
        ],
    )
    .await;
    let got = bodies(&rx[0], 2).await;
    emitted(&walhook, 2).await;
    for (r, body) in rx[0].delivered().iter().zip(&got) {
        assert_eq!(r.header("content-type"), "application/cloudevents+json");
        assert_cloudevent(body);
    }
    assert_eq!(got[0]["specversion"], "1.0");
    assert_eq!(got[0]["type"], "com.example.pim.product.status_changed");
    assert_eq!(got[0]["source"], "/walhook/shop/public.products");
    assert_eq!(got[0]["subject"], "3");
    assert_eq!(got[0]["datacontenttype"], "application/json");
    assert_eq!(got[0]["time"], got[0]["data"]["source"]["commit_time"]);
    let ids: Vec<String> = rx[0].delivered().iter().map(|r| r.id.clone()).collect();
    assert!(
        ids.contains(&got[0]["id"].as_str().unwrap().to_string()),
        "id is the webhook-id"
    );
    assert_eq!(
        got[0]["data"]["old"],
        json!({"id": 3, "sku": "SKU-3", "status": "draft"})
    );
    assert_eq!(
        got[0]["data"]["new"],
        json!({"id": 3, "sku": "SKU-3", "status": "review"})
    );
    assert_eq!(got[0]["data"]["changed"], json!(["status"]));
    assert_eq!(got[1]["data"]["old"]["status"], "review");
    assert_eq!(got[1]["data"]["new"]["status"], "approved");
}

/// Validates a body against the CloudEvents 1.0 JSON Schema vendored in tests/schemas,
/// with its formats (date-time, uri-reference) asserted.
fn assert_cloudevent(body: &Value) {
    let schema: Value = serde_json::from_str(include_str!("schemas/cloudevents-1.0.json")).unwrap();
    let mut compiler = boon::Compiler::new();
    compiler.enable_format_assertions();
    let loc = "https://cloudevents.io/schemas/cloudevents-1.0.json";
    compiler.add_resource(loc, schema).unwrap();
    let mut schemas = boon::Schemas::new();
    let index = compiler.compile(loc, &mut schemas).unwrap();
    if let Err(e) = schemas.validate(body, index) {
        panic!("not a valid CloudEvent: {e:#}\n{body}");
    }
    // The schema leaves these open; the spec does not.
    assert_eq!(body["specversion"], "1.0");
    for attr in ["id", "source", "type", "subject", "time"] {
        assert!(
            body[attr].as_str().is_some_and(|s| !s.is_empty()),
            "{attr} in {body}"
        );
    }
}

#[test]
fn the_schema_check_refuses_what_is_not_a_cloudevent() {
    let bad = [
        json!({"specversion": "1.0", "id": "1", "type": "t"}),
        json!({"specversion": "1.0", "id": "1", "type": "t", "source": "/x", "subject": "s", "time": "yesterday"}),
    ];
    for body in bad {
        let refused = std::panic::catch_unwind(|| assert_cloudevent(&body)).is_err();
        assert!(refused, "{body}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_04_the_chat_gets_its_own_shape_only_for_important_details() {
    let (_pg, walhook, rx, db) = start("04-detail-changed-to-chat", &["CHAT"]).await;
    run(
        &db,
        &[
            "UPDATE products SET updated_at = now() + interval '1 day' WHERE id = 1",
            "UPDATE products SET status = 'review' WHERE id = 1",
            "UPDATE products SET title = 'Walnut desk XL', brand = 'Oakline Pro', updated_at = now() WHERE id = 1",
            "UPDATE products SET attributes = '{\"color\": \"oak\"}' WHERE id = 1",
            "UPDATE products SET description = 'Solid walnut, 180 x 80 cm.' WHERE id = 1",
        ],
    )
    .await;
    let got = rx[0].wait_for(WAIT, "2 chat messages", |r| r.len() >= 2).await;
    emitted(&walhook, 2).await;
    let texts: Vec<String> = got
        .iter()
        .map(|r| String::from_utf8(r.body.to_vec()).unwrap())
        .collect();
    assert_eq!(
        texts,
        [
            r#"{"text": "SKU-1: title, brand changed"}"#,
            r#"{"text": "SKU-1: description changed"}"#
        ]
    );
    for r in &got {
        assert_eq!(r.method, "POST");
        assert_eq!(r.header("content-type"), "application/json");
        assert!(r.verifies(SECRET), "the template's body is what is signed");
        assert!(r.id.starts_with("evt_"), "{}", r.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_08_publishing_content_sends_the_cdn_its_purge_request() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", PIM_SQL).await;
    let cdn = Receiver::start().await;
    let config = example(
        "08-content-published-cdn-purge",
        &[
            ("DATABASE_URL", &url),
            ("CDN_URL", &cdn.url()),
            ("CDN_SECRET", SECRET),
            ("CDN_TOKEN", "tok-123"),
        ],
    );
    let walhook = Walhook::start(&config);
    walhook.wait_ready().await;
    let db = pg.client("shop").await;
    run(
        &db,
        &[
            "INSERT INTO content (id, slug, title, published) VALUES (3, 'winter sale', 'Winter sale', false)",
            "UPDATE content SET published = true WHERE id = 3",
            "UPDATE content SET title = 'Winter sale!' WHERE id = 3",
            "UPDATE content SET body = 'Now.' WHERE id = 1",
            "INSERT INTO content (id, slug, title, published) VALUES (4, 'new-arrivals', 'New', true)",
        ],
    )
    .await;
    let mut got = cdn.wait_for(WAIT, "2 purge requests", |r| r.len() >= 2).await;
    emitted(&walhook, 2).await;
    got.sort_by_key(|r| r.header("surrogate-key").to_string());
    let expected = [
        (
            "content-3",
            r#"{"files": ["https://shop.example.com/winter%20sale", "https://shop.example.com/amp/winter%20sale"]}"#,
        ),
        (
            "content-4",
            r#"{"files": ["https://shop.example.com/new-arrivals", "https://shop.example.com/amp/new-arrivals"]}"#,
        ),
    ];
    for (r, (key, body)) in got.iter().zip(expected) {
        assert_eq!(r.method, "POST");
        assert_eq!(r.path, "/hook");
        assert_eq!(r.header("content-type"), "application/json");
        assert_eq!(r.header("authorization"), "Bearer tok-123");
        assert_eq!(r.header("surrogate-key"), key);
        assert_eq!(String::from_utf8(r.body.to_vec()).unwrap(), body);
        assert!(r.verifies(SECRET));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn numbers_as_strings_keep_every_digit_for_javascript_receivers() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", PIM_SQL).await;
    let exact = Receiver::start().await;
    let js = Receiver::start().await;
    let mut config = example(
        "01-price-to-webshop",
        &[
            ("DATABASE_URL", &url),
            ("WEBSHOP_URL", &exact.url()),
            ("WEBSHOP_SECRET", SECRET),
        ],
    );
    config.push_str(&format!(
        "\n[[subscribers]]\nname = \"js\"\nurl = \"{}\"\nevents = [\"price.*\"]\nsecrets = [\"{SECRET}\"]\n\
         allow_private_targets = true\nnumbers = \"string\"\n",
        js.url()
    ));
    let walhook = Walhook::start(&config);
    walhook.wait_ready().await;
    let db = pg.client("shop").await;
    run(
        &db,
        &["UPDATE prices SET amount = 1234567890.12 WHERE product_id = 1 AND currency = 'EUR'"],
    )
    .await;
    let a = &bodies(&exact, 1).await[0];
    let b = &bodies(&js, 1).await[0];
    emitted(&walhook, 1).await;
    assert_eq!(
        exact.delivered()[0].id,
        js.delivered()[0].id,
        "one event, two shapes"
    );
    assert_eq!(a["data"]["new"]["amount"].to_string(), "1234567890.12");
    assert_eq!(a["data"]["key"], json!({"product_id": 1, "currency": "EUR"}));
    assert_eq!(b["data"]["new"]["amount"], "1234567890.12");
    assert_eq!(b["data"]["old"]["amount"], "649.00");
    assert_eq!(b["data"]["key"], json!({"product_id": "1", "currency": "EUR"}));
    assert_eq!(b["data"]["new"]["product_id"], "1");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_07_a_completed_order_goes_to_the_shipping_partner_once() {
    let (_pg, walhook, rx, db) = start("07-order-completed", &["SHIPPING"]).await;
    run(
        &db,
        &[
            "UPDATE orders SET status = 'completed' WHERE id = 1001",
            "UPDATE orders SET total = 690.00 WHERE id = 1001",
            "UPDATE orders SET status = 'paid' WHERE id = 1002",
            "UPDATE orders SET status = 'completed' WHERE id = 1002",
        ],
    )
    .await;
    let got = bodies(&rx[0], 2).await;
    emitted(&walhook, 2).await;
    assert_eq!(got[0]["type"], "order.completed");
    let new = &got[0]["data"]["new"];
    let cols: Vec<&String> = new.as_object().unwrap().keys().collect();
    assert_eq!(cols, ["id", "customer", "total", "currency", "ship_to"]);
    assert_eq!(new["id"], 1001);
    assert_eq!(new["customer"], "ada@example.com");
    assert_eq!(new["total"].to_string(), "688.90", "numeric keeps its digits");
    assert_eq!(new["ship_to"], json!({"city": "Berlin", "zip": "10115"}));
    assert!(got[0]["data"].get("old").is_none());
    assert_eq!(got[1]["data"]["key"], json!({"id": 1002}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_09_stock_depleted_and_replenished_fire_only_on_the_crossing() {
    let (_pg, walhook, rx, db) = start("09-stock-depleted", &["WEBSHOP"]).await;
    run(
        &db,
        &[
            "UPDATE stock SET qty = 5 WHERE product_id = 1",
            "UPDATE stock SET qty = 0 WHERE product_id = 1",
            "UPDATE stock SET qty = 0 WHERE product_id = 1",
            "UPDATE stock SET qty = -2 WHERE product_id = 1",
            "UPDATE stock SET qty = 3 WHERE product_id = 1",
            "UPDATE stock SET qty = 1 WHERE product_id = 1",
            "INSERT INTO stock (product_id, warehouse, qty) VALUES (2, 'lyon', 0)",
            "INSERT INTO stock (product_id, warehouse, qty) VALUES (2, 'madrid', 4)",
            "UPDATE stock SET qty = 0 WHERE product_id = 2 AND warehouse = 'madrid'",
        ],
    )
    .await;
    let got = bodies(&rx[0], 4).await;
    emitted(&walhook, 4).await;
    let seen: Vec<(String, Value, Value)> = got
        .iter()
        .map(|b| {
            (
                b["type"].as_str().unwrap().to_string(),
                b["data"]["key"].clone(),
                b["data"]["new"]["qty"].clone(),
            )
        })
        .collect();
    let key = |p: i64, w: &str| json!({"product_id": p, "warehouse": w});
    let want = [
        ("stock.depleted", key(1, "berlin"), json!(0)),
        ("stock.replenished", key(1, "berlin"), json!(3)),
        ("stock.depleted", key(2, "lyon"), json!(0)),
        ("stock.depleted", key(2, "madrid"), json!(0)),
    ];
    for w in &want {
        let w = (w.0.to_string(), w.1.clone(), w.2.clone());
        assert!(seen.contains(&w), "missing {w:?} in {seen:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rule_that_fails_on_a_row_skips_it_and_the_others_go_on() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", PIM_SQL).await;
    let rx = Receiver::start().await;
    // events[0] compares a text column with a number: it fails on every row it sees.
    let config = format!(
        r#"
[source]
url = "{url}"

[[events]]
table = "public.products"
name = "product.bad"
when = "new.title > 5"

[[events]]
table = "public.products"
name = "product.touched"

{sub}
"#,
        sub = subscriber("s", &rx.url(), "\"*\"", "")
    );
    let walhook = Walhook::start(&config);
    walhook.wait_ready().await;
    let db = pg.client("shop").await;
    run(
        &db,
        &[
            "UPDATE products SET title = 'A' WHERE id = 1",
            "UPDATE products SET title = 'B' WHERE id = 2",
            "UPDATE products SET title = 'C' WHERE id = 3",
        ],
    )
    .await;
    let got = bodies(&rx, 3).await;
    assert!(got.iter().all(|b| b["type"] == "product.touched"), "{got:?}");
    emitted(&walhook, 3).await;
    let errors = walhook
        .metric("walhook_rule_errors_total{rule=\"events[0]\"}")
        .await;
    assert_eq!(errors, Some(3.0));
    let log = walhook.log();
    assert!(
        log.contains("rule skipped for this change") && log.contains("events[0]"),
        "{log}"
    );
    assert_eq!(
        walhook.admin_get("/healthz").await.as_deref().map(str::trim),
        Some("ok")
    );
}

/// The example config of case 3 with its variables filled in, written to a file.
fn example_file(dir: &std::path::Path, db: &str, receiver: &str) -> String {
    let text = example(
        "03-product-approved",
        &[
            ("DATABASE_URL", db),
            ("MARKETPLACE_URL", receiver),
            ("MARKETPLACE_SECRET", SECRET),
        ],
    );
    let path = dir.join("walhook.toml");
    std::fs::write(&path, text).unwrap();
    path.to_str().unwrap().to_string()
}

/// `walhook explain` of an update of a product: (exit code, stdout, stderr).
fn explain_update(config: &str, old: &str, new: &str) -> (i32, String, String) {
    walhook_output(&[
        "explain", "--config", config, "--table", "products", "--op", "update", "--old", old, "--new", new,
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explain_prints_the_exact_signed_request_and_sends_nothing() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", PIM_SQL).await;
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    let config = example_file(dir.path(), &url, &rx.url());
    let draft = r#"{"id": 3, "sku": "SKU-3", "title": "Office chair", "description": "Mesh back.", "brand": "Sitwell", "status": "draft"}"#;
    let approved = draft.replace("draft", "approved");

    let (code, out, err) = explain_update(&config, draft, &approved);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("event product.approved"), "{out}");
    assert!(out.contains("--> subscriber \"marketplace\""), "{out}");
    // The request as sent: its signature verifies over the printed id, timestamp and body.
    let request = out.split("--> subscriber").nth(1).unwrap();
    let lines: Vec<&str> = request.lines().skip(1).collect();
    assert_eq!(lines[0], "POST /hook HTTP/1.1", "{out}");
    let header = |name: &str| {
        lines
            .iter()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in {out}"))
    };
    let body = lines[lines.iter().position(|l| l.is_empty()).unwrap() + 1];
    assert_eq!(header("Content-Length"), body.len().to_string());
    let secret = walhook::lanes::sign::Secret::parse(SECRET).unwrap();
    assert!(walhook::lanes::sign::verify_header(
        &[secret],
        header("webhook-id"),
        header("webhook-timestamp").parse().unwrap(),
        body.as_bytes(),
        header("webhook-signature"),
    ));
    let json: Value = serde_json::from_str(body).unwrap();
    assert_eq!(json["type"], "product.approved");
    assert_eq!(
        json["data"]["key"],
        json!({"id": 3}),
        "the primary key comes from the catalog"
    );
    assert!(json["data"].get("old").is_none());

    // A change that does not fire says so.
    let (code, out, _) = explain_update(&config, &approved, &approved.replace("Office chair", "Chair"));
    assert_eq!(code, 0);
    assert!(
        out.contains("0 event(s)") && out.contains("No rule fires"),
        "{out}"
    );

    // A column the rules name that a row leaves out counts as null, and the report says so.
    let (code, out, err) = explain_update(&config, r#"{"id": 3}"#, r#"{"id": 3, "status": "approved"}"#);
    assert_eq!(code, 0, "{err}");
    let note = out
        .lines()
        .find(|l| l.contains("count as null"))
        .unwrap_or_else(|| panic!("no note on the columns left out:\n{out}"));
    let old = note.split("--old ").nth(1).unwrap_or_default();
    assert!(old.contains("status"), "{note}");

    // Bad input names the fix.
    let (code, _, err) =
        walhook_output(&["explain", "--config", &config, "--table", "prices", "--new", "{}"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no [[events]] rule names table public.prices"),
        "{err}"
    );
    let (code, _, err) = walhook_output(&[
        "explain", "--config", &config, "--table", "products", "--new", "[1]",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("--new must be a JSON object"), "{err}");
    assert!(rx.all().is_empty(), "explain sent something");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_sends_one_signed_event_and_reports_the_answer() {
    let rx = Receiver::start().await;
    let dir = tempfile::tempdir().unwrap();
    // No database is needed: ping only talks to the subscriber.
    let config = example_file(dir.path(), "postgres://nobody@127.0.0.1:9/none", &rx.url());

    let (code, out, err) = walhook_output(&["ping", "--config", &config, "--subscriber", "marketplace"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(
        out.contains("marketplace") && out.contains("delivered ping_") && out.contains(" ms"),
        "{out}"
    );
    let got = rx.all();
    assert_eq!(got.len(), 1);
    assert!(got[0].verifies(SECRET));
    assert_eq!(got[0].json()["type"], "walhook.ping");
    assert_eq!(got[0].json()["data"]["subscriber"], "marketplace");

    rx.set_status(500);
    let (code, out, _) = walhook_output(&["ping", "--config", &config, "--subscriber", "marketplace"]);
    assert_eq!(code, 1, "{out}");
    assert!(out.contains("not delivered") && out.contains("HTTP 500"), "{out}");

    let (code, _, err) = walhook_output(&["ping", "--config", &config, "--subscriber", "nobody"]);
    assert_eq!(code, 2);
    assert!(
        err.contains("no such subscriber (the config has: marketplace)"),
        "{err}"
    );
}

/// 500 updates of product 1, each its own transaction, the title running through
/// `Import 1` .. `Import 500`. Returns an LSN right after the first one's commit.
async fn bulk_import(db: &tokio_postgres::Client) -> u64 {
    let mut after_first = 0;
    for i in 1..=500 {
        db.batch_execute(&format!(
            "UPDATE products SET title = 'Import {i}', brand = 'Brand {}', updated_at = now() WHERE id = 1",
            i % 2
        ))
        .await
        .unwrap();
        if i == 1 {
            let row = db
                .query_one("SELECT (pg_current_wal_insert_lsn() - '0/0')::text", &[])
                .await
                .unwrap();
            after_first = row.get::<_, String>(0).parse().unwrap();
        }
    }
    after_first
}

fn assert_coalesced_import(body: &Value) {
    assert_eq!(body["type"], "product.changed");
    assert_eq!(body["data"]["coalesced"], 500);
    assert_eq!(body["data"]["op"], "update");
    assert_eq!(body["data"]["old"]["title"], "Walnut desk", "the first old");
    assert_eq!(body["data"]["old"]["brand"], "Oakline");
    assert_eq!(body["data"]["new"]["title"], "Import 500", "the last new");
    assert_eq!(body["data"]["new"]["brand"], "Brand 0");
    assert_eq!(body["data"]["changed"], json!(["title", "brand"]));
    assert_eq!(body["data"]["key"], json!({"id": 1}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_10_a_bulk_import_is_one_event_per_subscriber() {
    let (_pg, walhook, rx, db) = start("10-bulk-import-coalesced", &["WEBSHOP", "SEARCH"]).await;
    bulk_import(&db).await;
    // A different product in the same burst gets its own window.
    run(&db, &["UPDATE products SET status = 'review' WHERE id = 2"]).await;
    for channel in &rx {
        let got = bodies(channel, 2).await;
        let import = got.iter().find(|b| b["data"]["key"]["id"] == 1).unwrap();
        assert_coalesced_import(import);
        let other = got.iter().find(|b| b["data"]["key"]["id"] == 2).unwrap();
        assert_eq!(other["data"]["coalesced"], 1);
        assert_eq!(other["data"]["changed"], json!(["status"]));
    }
    // Nothing else comes: past another window, still two events each.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for channel in &rx {
        assert_eq!(
            channel.all().len(),
            2,
            "{:?}",
            channel.all().iter().map(|r| r.json()).collect::<Vec<_>>()
        );
    }
    emitted(&walhook, 2).await;
    assert_eq!(
        walhook.metric("walhook_changes_coalesced_total").await,
        Some(501.0)
    );
    assert_eq!(walhook.metric("walhook_coalesce_open_windows").await, Some(0.0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_10_sigkill_inside_the_window_delivers_the_same_id_and_body() {
    let (pg, mut walhook, rx, db) = start("10-bulk-import-coalesced", &["WEBSHOP", "SEARCH"]).await;
    let search = &rx[1];
    search.set_status(500);
    let after_first = bulk_import(&db).await;
    eventually(WAIT, "500 changes in a window", || async {
        walhook.metric("walhook_changes_coalesced_total").await == Some(500.0)
    })
    .await;
    // Inside the window: nothing has gone out yet.
    walhook.sigkill();
    assert!(
        rx[0].all().is_empty() && search.all().is_empty(),
        "sent before the window closed"
    );
    let confirmed = || async { confirmed_flush(&pg.client("shop").await, "walhook").await };
    assert!(confirmed().await < after_first, "confirmed past an open window");

    // The window is formed again from the WAL; search refuses the event once.
    walhook.restart();
    let first_try = search.wait_for_any(WAIT, "an attempt at search").await;
    // Time for a few confirmations (every 250 ms) while search keeps refusing it.
    tokio::time::sleep(Duration::from_secs(1)).await;
    walhook.sigkill();
    assert!(
        confirmed().await < after_first,
        "confirmed past the window while search had not got its event"
    );
    search.set_status(204);
    walhook.restart();
    let delivered = search
        .wait_for(WAIT, "the event at search", |r| !r.is_empty())
        .await;
    let webshop = rx[0]
        .wait_for(WAIT, "the event at the webshop", |r| !r.is_empty())
        .await;
    assert_coalesced_import(&delivered[0].json());
    assert_eq!(delivered[0].id, first_try.id, "same id after the crash");
    assert_eq!(delivered[0].body, first_try.body, "same body after the crash");
    assert!(delivered[0].verifies(SECRET));
    // The webshop got it before the second kill; a re-send is the same event.
    for r in &webshop {
        assert_eq!((&r.id, &r.body), (&first_try.id, &first_try.body));
    }
    drop(db);
}

/// Windows that close together are numbered by their first change; a replay must form
/// all of them again to number them alike. Here one of two such events is delivered and
/// the other refused when walhook is killed: after the restart the refused one arrives,
/// with the id and body it had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn coalesced_events_closed_together_survive_a_crash_while_one_is_pending() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", PIM_SQL).await;
    let rx = Receiver::start().await;
    rx.set_poison(2);
    let config = format!(
        "[source]\nurl = \"{url}\"\n[[events]]\ntable = \"stock\"\nname = \"stock.changed\"\non = [\"update\"]\n\
         coalesce = {{ window = \"1s\" }}\n{}",
        subscriber("shop", &rx.url(), "\"*\"", "retry_initial = \"100ms\"\nretry_max = \"200ms\"\nmax_attempts = 1000")
    );
    let mut walhook = Walhook::start(&config);
    walhook.wait_ready().await;
    let db = pg.client("shop").await;
    // Product 1's window, then product 2's a moment later: their deadlines are a few ms
    // apart, so they close together at the first transaction (a tick) after both. The
    // confirmed LSN must stay at product 1's change while product 2's event is pending.
    for (product, qty) in [(1, 1), (2, 2)] {
        db.batch_execute(&format!(
            "UPDATE stock SET qty = qty + {qty} WHERE product_id = {product} AND warehouse = 'berlin'"
        ))
        .await
        .unwrap();
    }
    let one = rx.wait_for(WAIT, "product 1's event", |r| !r.is_empty()).await;
    let refused = rx.wait_for_any(WAIT, "an attempt of product 2's event").await;
    eventually(WAIT, "product 2 refused a few times", || async {
        rx.all().iter().filter(|r| r.status == 500).count() >= 3
    })
    .await;
    // Watermarks and confirmations (every 250 ms) have had their chance to move.
    tokio::time::sleep(Duration::from_secs(1)).await;
    walhook.sigkill();
    rx.set_poison(0);
    walhook.restart();
    let got = rx
        .wait_for(WAIT, "product 2's event after the restart", |r| {
            r.iter().any(|r| r.json()["data"]["key"]["product_id"] == 2)
        })
        .await;
    let two = got
        .iter()
        .find(|r| r.json()["data"]["key"]["product_id"] == 2)
        .unwrap();
    let first_refused = rx.all().into_iter().find(|r| r.status == 500).unwrap_or(refused);
    assert_eq!((&two.id, &two.body), (&first_refused.id, &first_refused.body));
    assert_eq!(two.json()["data"]["coalesced"], 1);
    assert_eq!(two.json()["data"]["new"]["qty"], 142);
    assert_eq!(one[0].json()["data"]["new"]["qty"], 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_12_a_new_channel_gets_the_catalog_then_every_change() {
    let (_pg, mut walhook, rx, db) = start("12-new-channel-backfill", &["MARKETPLACE"]).await;
    let counts = db
        .query_one(
            "SELECT (SELECT count(*) FROM products), (SELECT count(*) FROM prices), (SELECT count(*) FROM stock)",
            &[],
        )
        .await
        .unwrap();
    let rows: i64 = counts.get::<_, i64>(0) + counts.get::<_, i64>(1) + counts.get::<_, i64>(2);
    // The initial backfill: every row, as reads.
    let got = rx[0]
        .wait_for(WAIT, "the catalog", |r| r.len() >= rows as usize)
        .await;
    let mut types: Vec<(String, String)> = got
        .iter()
        .map(|r| {
            let b = r.json();
            (
                b["type"].as_str().unwrap().to_string(),
                b["data"]["op"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    types.sort();
    types.dedup();
    assert_eq!(
        types,
        [
            ("price.changed".to_string(), "read".to_string()),
            ("products.read".to_string(), "read".to_string()),
            ("stock.changed".to_string(), "read".to_string())
        ]
    );
    // Then the changes.
    run(
        &db,
        &["UPDATE prices SET amount = amount + 1 WHERE product_id = 1 AND currency = 'EUR'"],
    )
    .await;
    let got = rx[0]
        .wait_for(WAIT, "the change after the catalog", |r| r.len() > rows as usize)
        .await;
    let last = got.last().unwrap().json();
    assert_eq!(
        (last["type"].as_str(), last["data"]["op"].as_str()),
        (Some("price.changed"), Some("update"))
    );
    // Asked once: a restart asks for no second backfill.
    assert!(walhook.log().contains("new subscriber with initial_backfill"));
    walhook.stop();
    walhook.restart();
    walhook.wait_ready().await;
    let asked: i64 = db
        .query_one("SELECT count(*) FROM walhook.backfills", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(asked, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn case_13_a_bulk_import_makes_one_product_document_per_product() {
    let (_pg, walhook, rx, db) = start("13-product-documents", &["MARKETPLACE", "SEARCH"]).await;
    // A bulk import within the window: products, their prices and stock, then a second
    // pass over the products, each statement its own transaction.
    run(
        &db,
        &[
            "INSERT INTO products (id, sku, title, brand, status)
             SELECT g, 'IMP-' || g, 'Imported ' || g, 'Acme', 'draft' FROM generate_series(1001, 2000) g",
            "INSERT INTO prices (product_id, currency, amount)
             SELECT g, c, g / 10.0 FROM generate_series(1001, 2000) g, (VALUES ('EUR'), ('USD')) v(c)",
            "INSERT INTO stock (product_id, warehouse, qty) SELECT g, 'berlin', g % 7 FROM generate_series(1001, 2000) g",
            "UPDATE products SET status = 'approved' WHERE id BETWEEN 1001 AND 2000",
        ],
    )
    .await;
    for (i, r) in rx.iter().enumerate() {
        r.wait_for(WAIT, "a document per product", |r| r.len() >= 1000)
            .await;
        // The window is over: nothing more comes for the import.
        tokio::time::sleep(Duration::from_secs(2)).await;
        let got = r.delivered();
        assert_eq!(got.len(), 1000, "one event per product, at subscriber {i}");
        let mut ids = std::collections::BTreeSet::new();
        for r in &got {
            assert!(r.verifies(SECRET));
            let b = r.json();
            assert_eq!(b["type"], "product.updated");
            let d = &b["data"];
            assert_eq!(d["op"], "update");
            assert_eq!(d["coalesced"], 5, "{b}");
            let mut sources: Vec<String> = d["sources"]
                .as_array()
                .unwrap()
                .iter()
                .map(|s| format!("{} {}", s["table"].as_str().unwrap(), s["op"].as_str().unwrap()))
                .collect();
            sources.sort();
            assert_eq!(
                sources,
                [
                    "public.prices insert",
                    "public.products insert",
                    "public.products update",
                    "public.stock insert"
                ]
            );
            // The document as it is after the import.
            let doc = &d["document"];
            let id: i64 = match i {
                0 => doc["id"].as_i64().unwrap(),
                _ => doc["id"].as_str().unwrap().parse().unwrap(),
            };
            assert!(ids.insert(id));
            assert_eq!(d["key"]["product_id"].to_string(), doc["id"].to_string());
            assert_eq!(doc["status"], "approved");
            assert_eq!(doc["title"], format!("Imported {id}"));
            let stock = (id % 7).to_string();
            match i {
                0 => assert_eq!(doc["stock"].to_string(), stock),
                _ => assert_eq!(doc["stock"], json!(stock)),
            }
            let prices: Vec<&str> = doc["prices"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["currency"].as_str().unwrap())
                .collect();
            assert_eq!(prices, ["EUR", "USD"]);
        }
        assert_eq!(ids.len(), 1000);
    }
    // A deleted product (its prices and stock go with it) makes one delete.
    run(&db, &["DELETE FROM products WHERE id = 1500"]).await;
    let got = rx[0].wait_for(WAIT, "the delete", |r| r.len() > 1000).await;
    let last = got.last().unwrap().json();
    assert_eq!(last["data"]["op"], "delete", "{last}");
    assert_eq!(last["data"]["key"], json!({"product_id": 1500}));
    assert_eq!(last["data"]["document"], Value::Null);
    assert!(walhook.metric("walhook_documents_made_total").await.is_some());
}
