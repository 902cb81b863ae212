//! Shutdown is bounded by one grace (`shutdown_grace`, 10 s by default): a SIGTERM while
//! a receiver hangs on a request makes walhook exit 0 within the grace plus a small
//! margin, and the hanging event is not lost: the next start sends it again, with the
//! same id and body.

mod common;

use std::time::{Duration, Instant};

use common::scripted::{Reply, Scripted};
use common::*;

const SCHEMA: &str = "CREATE TABLE stock (product_id bigint PRIMARY KEY, qty integer NOT NULL);";
/// What walhook may take past its grace to exit (the process itself ending, a loaded box).
const MARGIN: Duration = Duration::from_millis(1500);

/// A receiver that hangs on the first request (walhook would wait a minute for it) and
/// answers 204 after that; walhook is stopped while that request hangs. Returns how long
/// the stop took, and checks the event arrives after a restart.
async fn stop_while_a_request_hangs(grace: Option<&str>) -> Duration {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", SCHEMA).await;
    let rx = Scripted::start(vec![Reply::Hang]).await;
    let top = grace.map_or(String::new(), |g| format!("shutdown_grace = \"{g}\"\n"));
    let config = format!(
        "{top}[source]\nurl = \"{url}\"\n[[events]]\ntable = \"stock\"\n{}",
        subscriber("s", &rx.url(), "\"*\"", "timeout = \"60s\"")
    );
    let mut w = Walhook::start(&config);
    w.wait_ready().await;
    let db = pg.client("shop").await;
    db.batch_execute("INSERT INTO stock VALUES (1, 7)").await.unwrap();
    eventually(Duration::from_secs(20), "the request that hangs", || async {
        !rx.hits().is_empty()
    })
    .await;
    let hung = rx.hits()[0].clone();

    let asked = Instant::now();
    let code = w.stop();
    let took = asked.elapsed();
    let log = w.log();
    assert_eq!(code, Some(0), "walhook did not exit 0 in {took:?}; log:\n{log}");

    // Nothing lost: the next start sends the hanging event again, same id and body.
    w.restart();
    w.wait_ready().await;
    let got = rx
        .wait_delivered(1, Duration::from_secs(30), "the event that hung, sent again")
        .await;
    assert_eq!(got[0].id, hung.id);
    assert_eq!(got[0].body, hung.body);
    assert_eq!(w.stop(), Some(0));
    took
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_takes_at_most_the_default_grace_and_loses_nothing() {
    let took = stop_while_a_request_hangs(None).await;
    println!("stopped in {took:?} with the default grace of 10s");
    assert!(
        took <= Duration::from_secs(10) + MARGIN,
        "the stop took {took:?}, more than the 10s grace"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stop_takes_at_most_the_configured_grace_and_loses_nothing() {
    let took = stop_while_a_request_hangs(Some("2s")).await;
    println!("stopped in {took:?} with a grace of 2s");
    assert!(
        took <= Duration::from_secs(2) + MARGIN,
        "the stop took {took:?}, more than the 2s grace"
    );
}
