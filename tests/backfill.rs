//! Backfills: a new sales channel gets the whole catalog, then every change, in order,
//! while the shop keeps writing. Every row carries a `version` the writer bumps, so the
//! order a channel sees a key's events in can be checked against the database.

mod common;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use serde_json::Value;

const PRODUCTS: i64 = 50_000;

/// Products, prices and stock, `n` rows each.
fn schema(n: i64) -> String {
    format!(
        "CREATE TABLE products (id bigint PRIMARY KEY, sku text NOT NULL, title text NOT NULL,
                                status text NOT NULL DEFAULT 'active', version int NOT NULL DEFAULT 1);
         CREATE TABLE prices (product_id bigint NOT NULL, currency text NOT NULL, amount numeric(12,2) NOT NULL,
                              version int NOT NULL DEFAULT 1, PRIMARY KEY (product_id, currency));
         CREATE TABLE stock (product_id bigint NOT NULL, warehouse text NOT NULL, qty int NOT NULL,
                             version int NOT NULL DEFAULT 1, PRIMARY KEY (product_id, warehouse));
         INSERT INTO products (id, sku, title) SELECT i, 'SKU-' || i, 'Product ' || i FROM generate_series(1, {n}) i;
         INSERT INTO prices (product_id, currency, amount) SELECT i, 'EUR', 10 + i % 90 FROM generate_series(1, {n}) i;
         INSERT INTO stock (product_id, warehouse, qty) SELECT i, 'main', i % 17 FROM generate_series(1, {n}) i;"
    )
}

fn config(url: &str, live: &str, channel: &str, extra: &str) -> String {
    format!(
        "[source]\nurl = \"{url}\"\n{extra}\n\
         [[events]]\ntable = \"products\"\n\
         [[events]]\ntable = \"prices\"\nname = \"price.changed\"\n\
         [[events]]\ntable = \"stock\"\nname = \"stock.changed\"\n\
         {}{}",
        subscriber("live", live, "\"*\"", ""),
        subscriber("channel", channel, "\"*\"", "")
    )
}

/// The ordering key of an event: its table and its key object (its fields sorted).
fn key_of(body: &Value) -> String {
    format!("{}|{}", body["data"]["table"], canonical(&body["data"]["key"]))
}

fn canonical(key: &Value) -> String {
    let fields: BTreeMap<&String, &Value> = key.as_object().map(|o| o.iter().collect()).unwrap_or_default();
    serde_json::to_string(&fields).unwrap()
}

/// Updates products, prices and stock rows (each a transaction bumping `version`) until
/// `stop`; counts the transactions. Every other one updates a row just past where the
/// running backfill has got to, in the table it reads, so live changes keep landing in
/// the chunks being read; the others pick any row.
fn writer(
    db: tokio_postgres::Client,
    rows: i64,
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut seed: u64 = 0x9E37_79B9_7F4A_7C15;
        while !stop.load(Ordering::SeqCst) {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let mut id = ((seed >> 33) % rows as u64) as i64 + 1;
            let mut table = ["products", "prices", "stock"][((seed >> 20) % 3) as usize].to_string();
            if seed & 1 == 1 {
                let at = db
                    .query_opt(
                        "SELECT p.key, ((p.value->'after')->>0)::bigint FROM walhook.backfills b, jsonb_each(b.progress) p
                         WHERE b.status = 'running' AND NOT (p.value->>'done')::boolean AND p.value ? 'after'
                         ORDER BY b.id DESC LIMIT 1",
                        &[],
                    )
                    .await
                    .ok()
                    .flatten();
                if let Some(at) = at {
                    table = at.get::<_, String>(0).trim_start_matches("public.").to_string();
                    id = (at.get::<_, i64>(1) + 1 + ((seed >> 40) % 15_000) as i64).min(rows);
                }
            }
            let sql = match table.as_str() {
                "products" => format!("UPDATE products SET version = version + 1, title = 'Product {id} v' || (version + 1) WHERE id = {id}"),
                "prices" => format!("UPDATE prices SET version = version + 1, amount = amount + 0.01 WHERE product_id = {id}"),
                _ => format!("UPDATE stock SET version = version + 1, qty = qty + 1 WHERE product_id = {id}"),
            };
            db.batch_execute(&sql).await.unwrap();
            count.fetch_add(1, Ordering::SeqCst);
            // About 200 a second: busy, and the test's receivers keep up in a debug build.
            tokio::time::sleep(Duration::from_millis(3)).await;
        }
    })
}

/// The writer running in the background.
struct Writing {
    stop: Arc<AtomicBool>,
    count: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl Writing {
    /// Starts `writer` on the shop database of `pg` (`rows` per table).
    async fn start(pg: &PgCluster, rows: i64) -> Writing {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicU64::new(0));
        let task = writer(pg.client("shop").await, rows, stop.clone(), count.clone());
        Writing { stop, count, task }
    }

    /// Stops it; the transactions it made.
    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap();
        self.count.load(Ordering::SeqCst)
    }
}

/// Waits until the newest backfill saved at least `rows` rows.
async fn wait_rows(db: &tokio_postgres::Client, rows: i64) {
    eventually(
        Duration::from_secs(60),
        &format!("{rows} rows backfilled"),
        || async { progress(db).await.1 >= rows },
    )
    .await;
}

/// Waits until the newest backfill is done.
async fn wait_done(db: &tokio_postgres::Client) {
    eventually(Duration::from_secs(120), "the backfill to finish", || async {
        progress(db).await.0 == "done"
    })
    .await;
}

/// Every row's key (as events carry it) and version, as the database holds them now.
async fn versions(db: &tokio_postgres::Client) -> HashMap<String, i64> {
    let mut out = HashMap::new();
    for (table, key) in [
        ("products", "jsonb_build_object('id', id)"),
        (
            "prices",
            "jsonb_build_object('product_id', product_id, 'currency', currency)",
        ),
        (
            "stock",
            "jsonb_build_object('product_id', product_id, 'warehouse', warehouse)",
        ),
    ] {
        for r in db
            .query(&format!("SELECT {key}::text, version FROM {table}"), &[])
            .await
            .unwrap()
        {
            let k: Value = serde_json::from_str(r.get::<_, &str>(0)).unwrap();
            out.insert(
                format!("\"public.{table}\"|{}", canonical(&k)),
                i64::from(r.get::<_, i32>(1)),
            );
        }
    }
    out
}

/// A key's events at the channel in arrival order: (version, webhook-id, is a read).
type Seq = Vec<(i64, String, bool)>;

/// Waits (up to 120 s) until the channel's last event of every key carries the row as
/// the database holds it now, then checks that every event verifies and that per key the
/// versions of the events sent never go back (no read arrives after a later live change
/// of its key). The events delivered, and each key's sequence.
async fn caught_up(
    db: &tokio_postgres::Client,
    channel: &Receiver,
    walhook: &Walhook,
) -> (Vec<Received>, BTreeMap<String, Seq>) {
    let want = versions(db).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(120);
    let got = loop {
        let got = channel.delivered();
        let mut last: HashMap<String, i64> = HashMap::new();
        for r in &got {
            let b = r.json();
            last.insert(key_of(&b), b["data"]["new"]["version"].as_i64().unwrap_or(-1));
        }
        let behind: Vec<_> = want.iter().filter(|(k, v)| last.get(*k) != Some(v)).collect();
        if behind.is_empty() {
            break got;
        }
        if std::time::Instant::now() > deadline {
            let show: Vec<String> = behind
                .iter()
                .take(5)
                .map(|(k, v)| {
                    let seq: Vec<String> = got
                        .iter()
                        .map(|r| r.json())
                        .filter(|b| &key_of(b) == *k)
                        .map(|b| format!("{} v{}", b["data"]["op"], b["data"]["new"]["version"]))
                        .collect();
                    format!("{k} is at v{v} in the database; the channel got {seq:?}")
                })
                .collect();
            panic!(
                "after 120 s, {} keys' last event at the channel is not their row as it is now:\n{}\n{}",
                behind.len(),
                show.join("\n"),
                walhook.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    let mut seqs: BTreeMap<String, Seq> = BTreeMap::new();
    for r in &got {
        assert!(r.verifies(SECRET));
        let b = r.json();
        let read = b["data"]["op"] == "read";
        seqs.entry(key_of(&b)).or_default().push((
            b["data"]["new"]["version"].as_i64().unwrap(),
            r.id.clone(),
            read,
        ));
    }
    assert_eq!(
        seqs.len(),
        want.len(),
        "keys at the channel vs rows in the database"
    );
    // An event sent again (a crash or a takeover re-sends what was not confirmed yet)
    // carries the id it had: only first sendings are in order.
    for (key, seq) in &seqs {
        let mut seen = std::collections::HashSet::new();
        let first: Vec<i64> = seq
            .iter()
            .filter(|(_, id, _)| seen.insert(id.clone()))
            .map(|(v, _, _)| *v)
            .collect();
        assert!(
            first.windows(2).all(|w| w[0] <= w[1]),
            "{key}: versions in arrival order (version, id, is_read): {seq:?}"
        );
    }
    (got, seqs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_beside_a_busy_writer_sends_every_row_in_order_with_the_stream() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", &schema(PRODUCTS)).await;
    let live = Receiver::start().await;
    let channel = Receiver::start().await;
    let walhook = Walhook::start(&config(&url, &live.url(), &channel.url(), ""));
    walhook.wait_ready().await;
    let db = pg.client("shop").await;

    let writing = Writing::start(&pg, PRODUCTS).await;
    tokio::time::sleep(Duration::from_millis(500)).await;

    let path = walhook.config_path();
    let path = path.to_str().unwrap().to_string();
    let started = std::time::Instant::now();
    let (code, out, err) = tokio::task::spawn_blocking(move || {
        walhook_output(&[
            "backfill",
            "start",
            "--config",
            &path,
            "--subscriber",
            "channel",
            "--wait",
        ])
    })
    .await
    .unwrap();
    let took = started.elapsed();
    assert_eq!(code, 0, "backfill start --wait:\n{out}\n{err}\n{}", walhook.log());
    assert!(
        out.contains("public.products, public.prices, public.stock to channel"),
        "{out}"
    );
    // The progress lines (not a terminal: one per tenth) end with the backfill done.
    assert!(err.trim_end().ends_with("done"), "{err}");
    assert!(err.contains("[####################] 100%"), "{err}");
    let during = writing.finish().await;
    assert!(
        during > 100,
        "the writer made only {during} changes during the backfill"
    );

    let (got, seqs) = caught_up(&db, &channel, &walhook).await;
    // Every row came as a read, once: a row a live change touched while its chunk was
    // read was read again (the writer aims just past the backfill, so some were).
    let mut reads = 0;
    for (key, seq) in &seqs {
        let n = seq.iter().filter(|(_, _, read)| *read).count();
        assert_eq!(n, 1, "{key} was read {n} times: {seq:?}");
        reads += n;
    }
    assert_eq!(reads as i64, 3 * PRODUCTS);
    let log = walhook.log();
    let again: usize = log
        .lines()
        .filter(|l| l.contains("backfill chunk handed over"))
        .filter_map(|l| {
            l.split("left_out=")
                .nth(1)?
                .split(' ')
                .next()?
                .parse::<usize>()
                .ok()
        })
        .sum();
    assert!(again > 0, "no live change landed in a chunk being read");

    // A read looks like the README says.
    let read = got
        .iter()
        .map(|r| r.json())
        .find(|b| b["type"] == "products.read")
        .expect("a products.read event");
    assert_eq!(read["data"]["op"], "read");
    assert!(read["data"]["old"].is_null());
    let changed: Vec<&str> = read["data"]["changed"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap())
        .collect();
    assert_eq!(changed, ["id", "sku", "title", "status", "version"]);
    assert!(got
        .iter()
        .any(|r| r.json()["type"] == "price.changed" && r.json()["data"]["op"] == "read"));

    // The live subscriber got the live changes only.
    let live_got = live.delivered();
    assert!(!live_got.is_empty());
    assert!(
        live_got.iter().all(|r| r.json()["data"]["op"] != "read"),
        "the other subscriber got reads"
    );

    // The list says it is done, with every row counted.
    let path = walhook.config_path();
    let (code, out, err) = walhook_output(&["backfill", "list", "--config", path.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let line = out.lines().nth(1).unwrap_or_default();
    assert!(line.contains("done") && line.contains("channel"), "{out}");
    let metric = walhook
        .metric("walhook_backfill_rows_total{subscriber=\"channel\"}")
        .await;
    assert_eq!(metric, Some((3 * PRODUCTS) as f64));
    eprintln!(
        "backfill of {} rows beside {during} live changes took {took:?}; {reads} went as reads",
        3 * PRODUCTS
    );
}

/// The newest backfill's status and rows done, as the state database holds them.
async fn progress(db: &tokio_postgres::Client) -> (String, i64) {
    db.query_opt(
        "SELECT status, rows_done FROM walhook.backfills ORDER BY id DESC LIMIT 1",
        &[],
    )
    .await
    .unwrap()
    .map_or((String::new(), 0), |r| (r.get(0), r.get(1)))
}

/// Asks for a backfill of "channel" with the CLI (it returns at once).
fn start_backfill(walhook: &Walhook) {
    let path = walhook.config_path();
    let (code, out, err) = walhook_output(&[
        "backfill",
        "start",
        "--config",
        path.to_str().unwrap(),
        "--subscriber",
        "channel",
    ]);
    assert_eq!(code, 0, "{out}{err}");
}

/// Per key, a row read twice (its chunk read again after the crash) and not changed in
/// between went out under the same id. How many keys were read twice.
fn same_ids_for_rows_read_again(seqs: &BTreeMap<String, Seq>) -> usize {
    let mut twice = 0;
    for (key, seq) in seqs {
        let reads: Vec<_> = seq.iter().filter(|(_, _, read)| *read).collect();
        if reads.len() > 1 {
            twice += 1;
        }
        for pair in reads.windows(2) {
            if pair[0].0 == pair[1].0 {
                assert_eq!(
                    pair[0].1, pair[1].1,
                    "{key}: one row read twice, two ids: {seq:?}"
                );
            }
        }
        assert!(reads.len() <= 2, "{key} read {} times: {seq:?}", reads.len());
    }
    twice
}

const CRASH_ROWS: i64 = 20_000;
/// Small chunks at a gentle pace, so the crash lands in the middle.
const CRASH_EXTRA: &str = "[backfill]\nchunk_rows = 1000\nrows_per_second = 4000\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_killed_midway_resumes_and_misses_nothing() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", &schema(CRASH_ROWS)).await;
    let live = Receiver::start().await;
    let channel = Receiver::start().await;
    let mut walhook = Walhook::start(&config(&url, &live.url(), &channel.url(), CRASH_EXTRA));
    walhook.wait_ready().await;
    let db = pg.client("shop").await;
    let writing = Writing::start(&pg, CRASH_ROWS).await;
    start_backfill(&walhook);
    wait_rows(&db, 15_000).await;
    walhook.sigkill();
    let (status, done) = progress(&db).await;
    assert_eq!(status, "running");
    walhook.restart();
    walhook.wait_ready().await;
    wait_done(&db).await;
    writing.finish().await;
    let (_, seqs) = caught_up(&db, &channel, &walhook).await;
    let twice = same_ids_for_rows_read_again(&seqs);
    let log = walhook.log();
    assert!(
        log.contains(&format!("resumed_at={done}")),
        "the restarted walhook resumes after the {done} rows saved:\n{log}"
    );
    assert_eq!(progress(&db).await.1, 3 * CRASH_ROWS);
    assert!(live.delivered().iter().all(|r| r.json()["data"]["op"] != "read"));
    eprintln!("killed at {done} rows; {twice} rows were read twice (same ids)");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_that_takes_over_finishes_the_backfill() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", &schema(CRASH_ROWS)).await;
    let live = Receiver::start().await;
    let channel = Receiver::start().await;
    let text = config(&url, &live.url(), &channel.url(), CRASH_EXTRA);
    let mut a = Walhook::start(&text);
    a.wait_ready().await;
    // As if on another host: it waits for the leader's lease to expire.
    let b = Walhook::start_with_env(&text, "", &[("HOSTNAME", "standby-host")]);
    b.wait_log("standing by: another walhook leads", 1).await;
    let db = pg.client("shop").await;
    let writing = Writing::start(&pg, CRASH_ROWS).await;
    start_backfill(&a);
    wait_rows(&db, 15_000).await;
    a.sigkill();
    let (_, done) = progress(&db).await;
    b.wait_log("leading: this walhook holds the slot's lease", 1)
        .await;
    wait_done(&db).await;
    writing.finish().await;
    let (_, seqs) = caught_up(&db, &channel, &b).await;
    let twice = same_ids_for_rows_read_again(&seqs);
    assert!(b.log().contains(&format!("resumed_at={done}")), "{}", b.log());
    assert!(live.delivered().iter().all(|r| r.json()["data"]["op"] != "read"));
    eprintln!("the leader died at {done} rows; {twice} rows were read twice (same ids)");
}

const TOKEN: &str = "backfill-test-token-0123456789";

/// `POST /backfills` with this body: the status and the answer.
async fn ask(walhook: &Walhook, body: Value) -> (u16, Value) {
    walhook.api("POST", "/backfills", Some(TOKEN), Some(body)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_api_and_the_cli_ask_for_pause_resume_and_refuse_backfills() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", &schema(1000)).await;
    let live = Receiver::start().await;
    let channel = Receiver::start().await;
    let extra = "[backfill]\nchunk_rows = 20\nrows_per_second = 100\n";
    let walhook = Walhook::start_with_admin(
        &config(&url, &live.url(), &channel.url(), extra),
        &format!("token = \"{TOKEN}\""),
    );
    walhook.wait_ready().await;
    let path = walhook.config_path();
    let path = path.to_str().unwrap();

    // Mistakes are refused with what to do instead.
    let (status, answer) = ask(&walhook, serde_json::json!({"subscriber": "chanel"})).await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("it has: live, channel"),
        "{answer}"
    );
    let (status, answer) = ask(
        &walhook,
        serde_json::json!({"subscriber": "channel", "tables": ["products"], "where": "colour = 'red'"}),
    )
    .await;
    assert_eq!(status, 400, "{answer}");
    assert!(
        answer["error"]
            .as_str()
            .unwrap()
            .contains("column \"colour\" does not exist"),
        "{answer}"
    );
    let (code, _, err) = walhook_output(&[
        "backfill",
        "start",
        "--config",
        path,
        "--subscriber",
        "channel",
        "--table",
        "orders",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("the tables that do: public.products, public.prices, public.stock"),
        "{err}"
    );
    let (status, _) = walhook.api("GET", "/backfills", None, None).await;
    assert_eq!(status, 401);

    // Ask, pause, resume.
    let (status, answer) = ask(
        &walhook,
        serde_json::json!({"subscriber": "channel", "tables": ["products"], "where": "id <= 300"}),
    )
    .await;
    assert_eq!(status, 201, "{answer}");
    let id = answer["id"].as_i64().unwrap();
    assert_eq!(answer["status"], "pending");
    assert_eq!(answer["where"], "id <= 300");
    let db = pg.client("shop").await;
    wait_rows(&db, 40).await;
    let (status, answer) = walhook
        .api("POST", &format!("/backfills/{id}/pause"), Some(TOKEN), None)
        .await;
    assert_eq!(
        (status, answer["status"].as_str()),
        (200, Some("paused")),
        "{answer}"
    );
    // It stops after the chunk it is in.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let paused_at = progress(&db).await.1;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(progress(&db).await, ("paused".to_string(), paused_at));
    assert!(paused_at < 300, "paused at {paused_at}");
    let (code, out, err) = walhook_output(&["backfill", "resume", "--config", path, &id.to_string()]);
    assert_eq!(code, 0, "{err}");
    assert_eq!(out.trim(), format!("backfill {id}: pending"));
    wait_done(&db).await;

    // The channel got products 1 to 300 as reads, nothing else read.
    let reads: std::collections::BTreeSet<i64> = channel
        .delivered()
        .iter()
        .map(|r| r.json())
        .filter(|b| b["data"]["op"] == "read")
        .map(|b| {
            assert_eq!(b["type"], "products.read");
            b["data"]["key"]["id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(reads, (1..=300).collect());
    assert!(live.delivered().is_empty());

    // Over: it can be listed, not cancelled.
    let (status, answer) = walhook
        .api("POST", &format!("/backfills/{id}/cancel"), Some(TOKEN), None)
        .await;
    assert_eq!(status, 409, "{answer}");
    assert!(answer["error"].as_str().unwrap().contains("is done"), "{answer}");
    let (status, answer) = walhook.api("GET", "/backfills", Some(TOKEN), None).await;
    assert_eq!(status, 200);
    let b = &answer["backfills"][0];
    assert_eq!(
        (b["id"].as_i64(), b["rows_done"].as_i64()),
        (Some(id), Some(300)),
        "{answer}"
    );
    assert_eq!(b["progress"]["public.products"]["done"], true, "{answer}");
    let (code, out, _) = walhook_output(&["backfill", "list", "--config", path]);
    assert_eq!(code, 0);
    assert!(
        out.contains("public.products where id <= 300") && out.contains("done"),
        "{out}"
    );
}
