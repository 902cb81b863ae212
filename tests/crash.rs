//! Crash test: thousands of changes across products, prices and stock while walhook is
//! SIGKILLed at random moments and restarted. Afterwards every change was delivered at
//! least once, duplicates carry the same webhook-id and body, and per-key order held.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use rand::{Rng, SeedableRng};

const KEYS: i64 = 50;
const TARGET_CHANGES: usize = 10_500;
const KILLS: usize = 5;

fn config(url: &str, receiver: &str, extra: &str) -> String {
    format!(
        r#"
[source]
url = "{url}"
[[events]]
table = "products"
[[events]]
table = "prices"
[[events]]
table = "stock"
{sub}
"#,
        sub = subscriber("shop", receiver, "\"*\"", extra)
    )
}

/// (table, key as JSON text) -> the values written, in commit order.
type Written = BTreeMap<(String, String), Vec<String>>;

fn key_of(table: &str, id: i64) -> String {
    match table {
        "public.products" => format!("{{\"id\":{id}}}"),
        "public.prices" => format!("{{\"product_id\":{id},\"currency\":\"EUR\"}}"),
        _ => format!("{{\"product_id\":{id},\"warehouse\":\"berlin\"}}"),
    }
}

/// The value a change wrote, as the receiver sees it.
fn value_of(body: &serde_json::Value) -> String {
    let new = &body["data"]["new"];
    match body["data"]["table"].as_str().unwrap() {
        "public.products" => new["title"].as_str().unwrap().to_string(),
        "public.prices" => serde_json::to_string(&new["amount"]).unwrap(),
        _ => new["qty"].to_string(),
    }
}

async fn write_workload(db: tokio_postgres::Client, seed: u64) -> Written {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut written: Written = BTreeMap::new();
    let push = |w: &mut Written, table: &str, id: i64, v: String| {
        w.entry((table.to_string(), key_of(table, id)))
            .or_default()
            .push(v);
    };
    // Seed rows as captured inserts.
    let mut seed_sql = String::from("BEGIN;");
    for id in 1..=KEYS {
        seed_sql.push_str(&format!(
            "INSERT INTO products (id, sku, title) VALUES ({id}, 'SKU-{id}', 't0');
             INSERT INTO prices (product_id, currency, amount) VALUES ({id}, 'EUR', 0.00);
             INSERT INTO stock (product_id, warehouse, qty) VALUES ({id}, 'berlin', 0);"
        ));
        push(&mut written, "public.products", id, "t0".into());
        push(&mut written, "public.prices", id, "0.00".into());
        push(&mut written, "public.stock", id, "0".into());
    }
    seed_sql.push_str("COMMIT;");
    db.batch_execute(&seed_sql).await.unwrap();
    let mut counter = 0u64;
    let mut changes = 3 * KEYS as usize;
    while changes < TARGET_CHANGES {
        let mut sql = String::from("BEGIN;");
        let mut tx = Vec::new();
        for _ in 0..rng.gen_range(1..=6) {
            counter += 1;
            let id = rng.gen_range(1..=KEYS);
            match rng.gen_range(0..10) {
                0..=5 => {
                    sql.push_str(&format!(
                        "UPDATE stock SET qty = {counter} WHERE product_id = {id};"
                    ));
                    tx.push(("public.stock", id, counter.to_string()));
                }
                6..=8 => {
                    sql.push_str(&format!(
                        "UPDATE prices SET amount = {counter}.50 WHERE product_id = {id} AND currency = 'EUR';"
                    ));
                    tx.push(("public.prices", id, format!("{counter}.50")));
                }
                _ => {
                    sql.push_str(&format!(
                        "UPDATE products SET title = 't{counter}' WHERE id = {id};"
                    ));
                    tx.push(("public.products", id, format!("t{counter}")));
                }
            }
        }
        sql.push_str("COMMIT;");
        db.batch_execute(&sql).await.unwrap();
        for (t, id, v) in tx {
            push(&mut written, t, id, v);
            changes += 1;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    written
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_random_moments_loses_nothing() {
    crash_run(0.0, "").await;
}

/// The same with a flaky receiver (25% of requests fail) and a short spill_after, so the
/// lane keeps moving between hot, spill and draining while it is killed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_while_spilling_and_recovering_loses_nothing() {
    crash_run(
        0.25,
        "spill_after = \"300ms\"\nmax_attempts = 1000\nretry_initial = \"20ms\"\nretry_max = \"100ms\"\nmax_in_flight = 32",
    )
    .await;
}

async fn crash_run(failure_rate: f64, extra: &str) {
    let schema = PIM_SQL.split("INSERT INTO").next().unwrap();
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", schema).await;
    let rx = Receiver::start().await;
    rx.set_failure_rate(failure_rate);
    let mut walhook = Walhook::start(&config(&url, &rx.url(), extra));
    walhook.wait_ready().await;

    let done = Arc::new(AtomicBool::new(false));
    let writer = {
        let db = pg.client("shop").await;
        let done = done.clone();
        tokio::spawn(async move {
            let w = write_workload(db, 7).await;
            done.store(true, Ordering::SeqCst);
            w
        })
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(42);
    let mut kills = 0;
    while kills < KILLS || !done.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(rng.gen_range(300..1200))).await;
        if kills < KILLS {
            walhook.sigkill();
            kills += 1;
            tokio::time::sleep(Duration::from_millis(rng.gen_range(50..400))).await;
            walhook.restart();
        }
    }
    let written = writer.await.unwrap();
    let total: usize = written.values().map(Vec::len).sum();
    assert!(total >= 10_000, "{total} changes");

    rx.set_failure_rate(0.0);
    let started = Instant::now();
    let delivered = rx
        .wait_for(Duration::from_secs(180), "every change delivered", |got| {
            let ids: std::collections::HashSet<&str> = got.iter().map(|r| r.id.as_str()).collect();
            ids.len() >= total
        })
        .await;
    println!("caught up {:?} after the workload ended", started.elapsed());
    // A restart does not wait out the killed process's lease: that process is gone.
    let log = walhook.log();
    assert!(
        log.contains("is gone (its process has exited): taking over now"),
        "{log}"
    );

    // Same id => same body; every request is signed.
    let mut by_id: HashMap<&str, &[u8]> = HashMap::new();
    let mut duplicates = 0;
    for r in &delivered {
        assert!(r.verifies(SECRET), "bad signature on {}", r.id);
        if let Some(prev) = by_id.insert(&r.id, &r.body) {
            duplicates += 1;
            assert_eq!(prev, &r.body[..], "duplicate {} with a different body", r.id);
        }
    }
    assert_eq!(by_id.len(), total, "distinct events delivered vs changes made");

    // Per key: the values in order of first receipt are exactly the values written.
    let mut seen: Written = BTreeMap::new();
    let mut first: std::collections::HashSet<&str> = std::collections::HashSet::new();
    for r in &delivered {
        if !first.insert(&r.id) {
            continue;
        }
        let body = r.json();
        let table = body["data"]["table"].as_str().unwrap().to_string();
        let key = body["data"]["key"].to_string();
        seen.entry((table, key)).or_default().push(value_of(&body));
    }
    for (k, values) in &written {
        assert_eq!(
            seen.get(k),
            Some(values),
            "per-key order or content differs for {k:?}"
        );
    }
    assert_eq!(seen.len(), written.len());
    println!(
        "changes: {total}, deliveries: {}, duplicates: {duplicates}, kills: {kills}, spill rows written before the last kill or after: {}",
        delivered.len(),
        walhook.metric("walhook_spill_rows_written_total").await.unwrap_or(0.0)
    );
    let spilled = walhook.log().matches("lane switches to spill mode").count();
    println!("spill switches logged: {spilled}");
    if failure_rate > 0.0 {
        assert!(spilled > 0, "the flaky receiver should have made the lane spill");
    }
    walhook.stop();
}

/// Writes 600 changes/s until `done`: 6 stock updates (round robin over `KEYS` products)
/// every 10 ms. Returns how many it made.
fn steady_writer(db: tokio_postgres::Client, done: Arc<AtomicBool>) -> tokio::task::JoinHandle<u64> {
    tokio::spawn(async move {
        let mut counter = 0u64;
        let mut tick = tokio::time::interval(Duration::from_millis(10));
        while !done.load(Ordering::SeqCst) {
            tick.tick().await;
            let mut sql = String::from("BEGIN;");
            for _ in 0..6 {
                counter += 1;
                let id = counter as i64 % KEYS + 1;
                sql.push_str(&format!(
                    "UPDATE stock SET qty = {counter} WHERE product_id = {id};"
                ));
            }
            sql.push_str("COMMIT;");
            db.batch_execute(&sql).await.unwrap();
        }
        counter
    })
}

/// A crash re-sends only the last moments' events: at a steady 600 changes/s against a
/// healthy receiver, walhook is SIGKILLed 2 s into a run, twice (the second time 2 s
/// after its restart). What was delivered before each kill is re-sent only back to the
/// lane's saved watermark, which trails by about `watermark_interval` (250 ms).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_in_steady_flow_re_sends_only_the_last_moments() {
    const RATE: f64 = 600.0;
    let schema = PIM_SQL.split("INSERT INTO").next().unwrap();
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", schema).await;
    let rx = Receiver::start().await;
    let mut walhook = Walhook::start(&format!(
        "[source]\nurl = \"{url}\"\n[[events]]\ntable = \"stock\"\n{}",
        subscriber("shop", &rx.url(), "\"*\"", "")
    ));
    walhook.wait_ready().await;
    let db = pg.client("shop").await;
    seed_stock(&db).await;
    rx.wait_unique(Duration::from_secs(30), "the seed rows", KEYS as usize)
        .await;

    let done = Arc::new(AtomicBool::new(false));
    let writer = steady_writer(db, done.clone());
    let mut before_kills = Vec::new();
    for _ in 0..2 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        walhook.sigkill();
        let distinct: std::collections::HashSet<String> = rx.delivered().into_iter().map(|r| r.id).collect();
        before_kills.push(distinct.len());
        walhook.restart();
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    done.store(true, Ordering::SeqCst);
    let changes = writer.await.unwrap() as usize + KEYS as usize;
    let got = rx
        .wait_unique(Duration::from_secs(60), "every change", changes)
        .await;
    let duplicates = got.len() - changes;
    // 250 ms of events per kill, with 500 ms of slack for a loaded machine.
    let bound = (2.0 * RATE * 0.75) as usize;
    println!(
        "delivered before the kills: {before_kills:?}; duplicates after two kills at {RATE}/s: {duplicates} (bound {bound})"
    );
    assert!(
        duplicates <= bound,
        "{duplicates} events were delivered twice after two crashes in steady flow; about {} is expected",
        (2.0 * RATE * 0.25) as usize
    );
    walhook.stop();
}

/// One slow answer does not make a crash re-send everything after it: the receiver takes
/// 5 s over its first request (a cold start), while the other keys' events flow at a
/// steady 600 changes/s and are answered at once. walhook is SIGKILLed 2 s after the flow
/// began, with that request still unanswered. The slot's confirmed LSN stays before the
/// slow event, as it must; but the lane's saved mark knows which later events were
/// delivered, so the restart sends the slow one again, and its key's events queued behind
/// it, and re-sends only about `watermark_interval` of the others (before: the whole 2 s,
/// ~1,100 events).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_one_answer_is_slow_re_sends_only_the_last_moments() {
    one_event_held(|rx| rx.delay_next_once(Duration::from_secs(5)), |_| {}).await;
}

/// The same with an event waiting for its retry: the receiver answers 500 to every event
/// of one product until the kill, so its first event waits 5 s (the first delay of the
/// default schedule) while the other products' events flow.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crash_while_one_event_waits_for_its_retry_re_sends_only_the_last_moments() {
    one_event_held(|rx| rx.set_poison(2), |rx| rx.set_poison(0)).await;
}

/// Runs the steady flow with `hold` making the receiver hold back the first event, kills
/// walhook 2 s in, calls `release`, restarts and counts the events delivered twice.
async fn one_event_held(hold: impl FnOnce(&Receiver), release: impl FnOnce(&Receiver)) {
    const RATE: f64 = 600.0;
    let schema = PIM_SQL.split("INSERT INTO").next().unwrap();
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", schema).await;
    let db = pg.client("shop").await;
    // The rows exist before walhook first starts (its slot begins after them): the first
    // request walhook makes is the flow's first event, of product 2.
    seed_stock(&db).await;
    let rx = Receiver::start().await;
    hold(&rx);
    let mut walhook = Walhook::start(&format!(
        "[source]\nurl = \"{url}\"\n[[events]]\ntable = \"stock\"\n{}",
        subscriber("shop", &rx.url(), "\"*\"", "")
    ));
    walhook.wait_ready().await;

    let done = Arc::new(AtomicBool::new(false));
    let writer = steady_writer(db, done.clone());
    tokio::time::sleep(Duration::from_secs(2)).await;
    walhook.sigkill();
    let before: std::collections::HashSet<String> = rx.delivered().into_iter().map(|r| r.id).collect();
    assert!(
        rx.arrivals().iter().any(|a| !before.contains(&a.id)),
        "an event was held back at the kill"
    );
    release(&rx);
    walhook.restart();
    tokio::time::sleep(Duration::from_secs(2)).await;
    done.store(true, Ordering::SeqCst);
    let changes = writer.await.unwrap() as usize;
    let got = rx
        .wait_unique(Duration::from_secs(60), "every change", changes)
        .await;
    let duplicates = got.len() - changes;
    // 250 ms of events, with 500 ms of slack for a loaded machine.
    let bound = (RATE * 0.75) as usize;
    println!(
        "delivered before the kill: {}; duplicates after the kill at {RATE}/s: {duplicates} (bound {bound})",
        before.len()
    );
    assert!(
        before.len() > 2 * bound,
        "too few events ({}) went out before the kill to tell",
        before.len()
    );
    assert!(
        duplicates <= bound,
        "{duplicates} of the {} events delivered before the crash were delivered again; about {} is expected",
        before.len(),
        (RATE * 0.25) as usize
    );
    walhook.stop();
}

/// `KEYS` products with a stock row each, in one transaction.
async fn seed_stock(db: &tokio_postgres::Client) {
    let mut seed = String::from("BEGIN;");
    for id in 1..=KEYS {
        seed.push_str(&format!(
            "INSERT INTO products (id, sku, title) VALUES ({id}, 'SKU-{id}', 't0');
             INSERT INTO stock (product_id, warehouse, qty) VALUES ({id}, 'berlin', 0);"
        ));
    }
    seed.push_str("COMMIT;");
    db.batch_execute(&seed).await.unwrap();
}
