//! Per-subscriber limits and secrets: a rate-limited subscriber gets its events no
//! faster than its limit while an unlimited one beside it is not held back, and during a
//! secret rotation every unexpired secret signs and the expired one no longer does.

mod common;

use std::time::{Duration, Instant};

use common::*;

const SCHEMA: &str = "CREATE TABLE stock (product_id bigint PRIMARY KEY, qty integer NOT NULL);";
const EVENTS: i64 = 100;
const OLD: &str = "whsec_d2FsaG9vayByb3RhdGlvbiB0ZXN0IG9sZC4uLi4uLi4=";
const CURRENT: &str = "whsec_d2FsaG9vayByb3RhdGlvbiB0ZXN0IGN1cnJlbnQuLi4=";
const NEXT: &str = "whsec_d2FsaG9vayByb3RhdGlvbiB0ZXN0IG5leHQuLi4uLi4=";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limit_paces_one_subscriber_only_and_rotating_secrets_all_sign() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", SCHEMA).await;
    let limited = Receiver::start().await;
    let free = Receiver::start().await;
    let rotating = format!(
        "[[subscribers]]\nname = \"limited\"\nurl = \"{}\"\nevents = [\"*\"]\nallow_private_targets = true\n\
         rate_limit = \"20/s\"\nsecrets = [{{ secret = \"{OLD}\", expires = \"2020-01-01T00:00:00Z\" }}, \"{CURRENT}\", \
         {{ secret = \"{NEXT}\", expires = \"2999-01-01T00:00:00Z\" }}]\n",
        limited.url()
    );
    let config = format!(
        "[source]\nurl = \"{url}\"\nslot = \"shop\"\n[[events]]\ntable = \"stock\"\n{rotating}{}",
        subscriber("free", &free.url(), "\"*\"", "")
    );
    let w = Walhook::start(&config);
    w.wait_ready().await;
    let db = pg.client("shop").await;
    let start = Instant::now();
    db.batch_execute(&format!(
        "INSERT INTO stock SELECT g, 0 FROM generate_series(1, {EVENTS}) g"
    ))
    .await
    .unwrap();
    let n = EVENTS as usize;
    free.wait_for(Duration::from_secs(30), "the free subscriber's events", |g| {
        g.len() >= n
    })
    .await;
    let free_took = start.elapsed();
    let got = limited
        .wait_for(Duration::from_secs(30), "the limited subscriber's events", |g| {
            g.len() >= n
        })
        .await;
    let limited_took = start.elapsed();
    println!("{n} events: unlimited subscriber {free_took:?}, limited to 20/s {limited_took:?}");
    // 20 at once (the bucket starts full), then 20 a second: 4 s for the other 80.
    let first = got.first().unwrap().at;
    let last = got.last().unwrap().at;
    assert!(
        last - first >= Duration::from_millis(3800),
        "too fast: {:?}",
        last - first
    );
    // In no second did more than the burst and the rate get through.
    for r in &got {
        let within = got
            .iter()
            .filter(|x| x.at >= r.at && x.at < r.at + Duration::from_secs(1))
            .count();
        assert!(within <= 40, "{within} requests within a second");
    }
    assert!(
        free_took * 2 < limited_took,
        "the unlimited subscriber was held back: {free_took:?}"
    );

    // Every request carries two signatures, by the current and the next secret.
    for r in &got {
        assert_eq!(r.signature.split(' ').count(), 2, "{}", r.signature);
        assert!(r.verifies(CURRENT) && r.verifies(NEXT), "{}", r.signature);
        assert!(!r.verifies(OLD), "the expired secret still signs");
    }
    assert_no_secrets(&w.log(), &[OLD, CURRENT, NEXT, SECRET]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_ordering_one_keys_events_go_out_in_parallel() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", SCHEMA).await;
    let ordered = Receiver::start().await;
    let unordered = Receiver::start().await;
    for rx in [&ordered, &unordered] {
        rx.set_delay(Duration::from_millis(300));
    }
    let config = format!(
        "[source]\nurl = \"{url}\"\nslot = \"shop\"\n[[events]]\ntable = \"stock\"\n{}{}",
        subscriber("ordered", &ordered.url(), "\"*\"", ""),
        subscriber("unordered", &unordered.url(), "\"*\"", "ordering = \"none\"")
    );
    let w = Walhook::start(&config);
    w.wait_ready().await;
    let db = pg.client("shop").await;
    db.batch_execute("INSERT INTO stock VALUES (1, 0)").await.unwrap();
    for qty in 1..20 {
        db.batch_execute(&format!("UPDATE stock SET qty = {qty}"))
            .await
            .unwrap();
    }
    let start = Instant::now();
    let got = unordered
        .wait_for(
            Duration::from_secs(30),
            "the unordered subscriber's events",
            |g| g.len() >= 20,
        )
        .await;
    let unordered_took = start.elapsed();
    let in_order = ordered
        .wait_for(Duration::from_secs(30), "the ordered subscriber's events", |g| {
            g.len() >= 20
        })
        .await;
    let ordered_took = start.elapsed();
    println!("20 events of one key, 300 ms each: in order {ordered_took:?}, unordered {unordered_took:?}");
    // One at a time takes 20 x 300 ms; in parallel (16 at once) two rounds.
    assert!(ordered_took >= Duration::from_millis(5500), "{ordered_took:?}");
    assert!(unordered_took < Duration::from_millis(2500), "{unordered_took:?}");
    let qty = |r: &Received| r.json()["data"]["new"]["qty"].as_i64().unwrap();
    assert_eq!(
        in_order.iter().map(qty).collect::<Vec<_>>(),
        (0..20).collect::<Vec<_>>()
    );
    let mut all: Vec<i64> = got.iter().map(qty).collect();
    all.sort();
    assert_eq!(all, (0..20).collect::<Vec<_>>(), "every event once");
}

/// The dead letters of `subscriber`, from the API: (key, error) pairs.
async fn dead_letters(w: &Walhook, token: &str, subscriber: &str) -> Vec<(String, String)> {
    let (code, v) = w
        .api(
            "GET",
            &format!("/deliveries?status=dead&subscriber={subscriber}"),
            Some(token),
            None,
        )
        .await;
    assert_eq!(code, 200, "{v}");
    v["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| {
            (
                d["key"].as_str().unwrap_or("").to_string(),
                d["error"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect()
}

/// A template whose body passes `max_body_bytes` (1 MiB by default) fails its attempts
/// with an error naming the limit and ends as a dead letter after its retries, whether
/// minijinja renders it (a loop: 25 MB unbounded) or the fast path does; the
/// subscriber's other events, and other subscribers, go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_template_body_past_max_body_bytes_ends_as_a_dead_letter() {
    const TOKEN: &str = "limits-test-token-0123456789";
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", SCHEMA).await;
    let looped = Receiver::start().await;
    let fast = Receiver::start().await;
    let retries = "retry_schedule = [\"50ms\", \"50ms\"]\nformat = \"template\"\n";
    let config = format!(
        "[source]\nurl = \"{url}\"\nslot = \"shop\"\n[[events]]\ntable = \"stock\"\n{}{}",
        subscriber(
            "looped",
            &looped.url(),
            "\"*\"",
            &format!(
                "{retries}template = '{{% if data.new.qty < 0 %}}{{% for i in range(100000) %}}{{{{ data|tojson }}}}{{% endfor %}}{{% else %}}{{\"qty\": {{{{ data.new.qty }}}}}}{{% endif %}}'"
            )
        ),
        subscriber(
            "fast",
            &fast.url(),
            "\"*\"",
            &format!("{retries}max_body_bytes = 16\ntemplate = '{{\"qty\": {{{{ data.new.qty }}}}}}'")
        ),
    );
    let w = Walhook::start_with_admin(&config, &format!("token = \"{TOKEN}\""));
    w.wait_ready().await;
    let db = pg.client("shop").await;
    // 1: fits both; 2: the loop runs; 3: the fast path's 19 bytes pass its 16.
    for (key, qty) in [(1, 5), (2, -1), (3, 1234567890)] {
        db.batch_execute(&format!("INSERT INTO stock VALUES ({key}, {qty})"))
            .await
            .unwrap();
    }
    let mut deads = Vec::new();
    for name in ["looped", "fast"] {
        eventually(
            Duration::from_secs(30),
            &format!("a dead letter of {name}"),
            || async { !dead_letters(&w, TOKEN, name).await.is_empty() },
        )
        .await;
        deads.push(dead_letters(&w, TOKEN, name).await);
    }
    looped
        .wait_for(Duration::from_secs(20), "two events", |g| g.len() >= 2)
        .await;
    fast.wait_for(Duration::from_secs(20), "two events", |g| g.len() >= 2)
        .await;
    // Different keys go out in parallel: in any order.
    let bodies = |rx: &Receiver| -> Vec<String> {
        let mut b: Vec<String> = rx
            .all()
            .iter()
            .map(|r| String::from_utf8_lossy(&r.body).into_owned())
            .collect();
        b.sort();
        b
    };
    assert_eq!(bodies(&looped), ["{\"qty\": 1234567890}", "{\"qty\": 5}"]);
    assert_eq!(bodies(&fast), ["{\"qty\": -1}", "{\"qty\": 5}"]);
    for (name, dead, key, limit) in [
        ("looped", &deads[0], "\"product_id\":2", "1048576"),
        ("fast", &deads[1], "\"product_id\":3", "16"),
    ] {
        assert_eq!(dead.len(), 1, "{name}: {dead:?}");
        let (k, error) = &dead[0];
        assert!(k.contains(key), "{name}: {k}");
        assert!(
            error.contains(&format!("max_body_bytes ({limit} bytes)")) && error.contains("template"),
            "{name}: {error}"
        );
    }
    let log = w.log();
    assert!(log.contains("attempts=3"), "three attempts each:\n{log}");
}

/// The resident memory of a process, in KiB.
fn rss_kib(pid: nix::unistd::Pid) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS in /proc/PID/status")
}

/// Idle delivery workers cost nothing: eight subscribers allowed 1,000 requests in flight
/// each (the limit) take no more memory at start than with one each, and still deliver.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_delivery_workers_cost_nothing() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", SCHEMA).await;
    let rx = Receiver::start().await;
    let db = pg.client("shop").await;
    let mut rss = Vec::new();
    for (round, n) in [1, 1000].into_iter().enumerate() {
        let mut config =
            format!("[source]\nurl = \"{url}\"\nslot = \"shop\"\n[[events]]\ntable = \"stock\"\n");
        for s in 0..8 {
            config.push_str(&subscriber(
                &format!("s{s}"),
                &rx.url(),
                "\"*\"",
                &format!("max_in_flight = {n}\nordering = \"none\""),
            ));
        }
        let mut w = Walhook::start(&config);
        w.wait_ready().await;
        let key = round as i64 + 1;
        db.batch_execute(&format!("INSERT INTO stock VALUES ({key}, {n})"))
            .await
            .unwrap();
        rx.wait_for(Duration::from_secs(20), "an event at each subscriber", |g| {
            g.len() >= 8 * (round + 1)
        })
        .await;
        // Let start-up settle, then take the lowest of a few samples.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut low = u64::MAX;
        for _ in 0..5 {
            low = low.min(rss_kib(w.pid()));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        rss.push(low);
        assert_eq!(w.stop(), Some(0));
    }
    let extra = rss[1].saturating_sub(rss[0]);
    eprintln!(
        "RSS at start: {} KiB with max_in_flight = 1, {} KiB with 1000",
        rss[0], rss[1]
    );
    assert!(
        extra < 8 * 1024,
        "8 x 1000 idle workers cost {extra} KiB (RSS {} KiB with 1 each, {} KiB with 1000 each)",
        rss[0],
        rss[1]
    );
}
