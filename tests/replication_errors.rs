//! The server refuses to go on streaming the slot: the publication was dropped (and maybe
//! created again), the slot was invalidated, or the slot was dropped. Each ends walhook
//! with exit code 3 and one message that carries the server's own error (its SQLSTATE
//! and text) and names the fix with what it loses; following the fix makes walhook
//! stream again. Meanwhile the lag metric reads the server's WAL position, even while
//! the stream cannot start.

mod common;

use std::time::Duration;

use common::*;

const SCHEMA: &str = "CREATE TABLE stock (product_id bigint PRIMARY KEY, qty integer NOT NULL);";
/// How long walhook may take to give up once the server refused.
const GIVE_UP: Duration = Duration::from_secs(30);

fn config(url: &str, rx: &str, extra_source: &str) -> String {
    format!(
        "[source]\nurl = \"{url}\"\n{extra_source}\n[[events]]\ntable = \"stock\"\n{}",
        subscriber("s", rx, "\"*\"", "")
    )
}

/// The one `walhook:` line of the log: the exit message.
fn exit_message(log: &str) -> String {
    let lines: Vec<&str> = log.lines().filter(|l| l.starts_with("walhook:")).collect();
    assert_eq!(lines.len(), 1, "expected one exit message, got:\n{log}");
    lines[0].to_string()
}

/// Waits for walhook to exit on its own with code 3; its exit message.
async fn gives_up(w: &mut Walhook, what: &str) -> String {
    let code = w.wait_exit(GIVE_UP).await;
    assert_eq!(code, Some(3), "{what}: walhook did not exit 3; log:\n{}", w.log());
    let message = exit_message(&w.run_log());
    println!("{what}: {message}");
    message
}

async fn stream_again(pg: &PgCluster, w: &mut Walhook, rx: &Receiver, qty: i64) {
    w.restart();
    w.wait_ready().await;
    let db = pg.client("shop").await;
    db.batch_execute(&format!("UPDATE stock SET qty = {qty} WHERE product_id = 1"))
        .await
        .unwrap();
    rx.wait_for(Duration::from_secs(20), "a change after the fix", |g| {
        g.iter().any(|r| r.json()["data"]["new"]["qty"] == qty)
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_publication_stops_walhook_with_the_fix() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", SCHEMA).await;
    let rx = Receiver::start().await;
    let mut w = Walhook::start(&config(&url, &rx.url(), ""));
    w.wait_ready().await;
    let db = pg.client("shop").await;
    db.batch_execute("INSERT INTO stock VALUES (1, 1)").await.unwrap();
    rx.wait_for_any(Duration::from_secs(20), "the first change").await;

    db.batch_execute("DROP PUBLICATION walhook").await.unwrap();
    db.batch_execute("UPDATE stock SET qty = 2").await.unwrap();
    let message = gives_up(&mut w, "publication dropped").await;
    for want in [
        "publication \"walhook\" does not exist (SQLSTATE 42704",
        "was dropped",
        "CREATE PUBLICATION \"walhook\" FOR TABLE \"public\".\"stock\"",
        "SELECT pg_replication_slot_advance('walhook', pg_current_wal_lsn())",
        "SELECT pg_drop_replication_slot('walhook')",
        "never sent",
    ] {
        assert!(message.contains(want), "{want:?} missing from: {message}");
    }
    let log = w.log();
    assert!(!log.contains("unexpected message"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("ERROR") && l.contains("SQLSTATE 42704") && !l.starts_with("walhook:")),
        "the server's error is logged: {log}"
    );

    // A restart creates the publication again (source.create), yet the slot cannot
    // decode the change written while it was missing: walhook says so, and why.
    w.restart();
    let message = gives_up(&mut w, "publication created again").await;
    for want in [
        "(SQLSTATE 42704",
        "created again",
        "SELECT pg_replication_slot_advance('walhook', pg_current_wal_lsn())",
        "SELECT pg_drop_replication_slot('walhook')",
        "never sent",
    ] {
        assert!(message.contains(want), "{want:?} missing from: {message}");
    }
    assert!(!message.contains("CREATE PUBLICATION"), "it exists: {message}");

    // The fix it names works: advance the slot past the gap. (The server advances a
    // slot only as far as WAL is written and flushed; this cluster commits
    // asynchronously, so wait for that as an operator's typing would.)
    let written: String = db
        .query_one("SELECT pg_current_wal_insert_lsn()::text", &[])
        .await
        .unwrap()
        .get(0);
    eventually(Duration::from_secs(10), "the WAL flushed", || async {
        db.query_one(
            "SELECT pg_current_wal_flush_lsn() >= $1::text::pg_lsn",
            &[&written],
        )
        .await
        .unwrap()
        .get::<_, bool>(0)
    })
    .await;
    db.batch_execute("SELECT pg_replication_slot_advance('walhook', pg_current_wal_lsn())")
        .await
        .unwrap();
    stream_again(&pg, &mut w, &rx, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_invalidated_mid_stream_stops_walhook_with_the_fix() {
    let pg = PgCluster::start_with(&[("max_slot_wal_keep_size", "1MB")]).await;
    let url = pg.create_db("shop", SCHEMA).await;
    let rx = Receiver::start().await;
    // A long lease: the process is held below for longer than the default's renewal.
    let mut w = Walhook::start(&format!(
        "{}\n[state]\nlease = \"60s\"\n",
        config(&url, &rx.url(), "")
    ));
    w.wait_ready().await;
    let db = pg.client("shop").await;
    db.batch_execute("INSERT INTO stock VALUES (1, 1)").await.unwrap();
    rx.wait_for_any(Duration::from_secs(20), "the first change").await;

    // walhook is held while the server writes and recycles more WAL than the slot may
    // keep: the checkpoint invalidates the slot and ends its walsender.
    w.pause(true);
    for i in 0..3 {
        db.batch_execute(&format!(
            "CREATE TABLE filler{i} AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g;
             SELECT pg_switch_wal();"
        ))
        .await
        .unwrap();
    }
    db.batch_execute("CHECKPOINT").await.unwrap();
    let row = db
        .query_one(
            "SELECT wal_status FROM pg_replication_slots WHERE slot_name = 'walhook'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, Option<String>>(0).as_deref(), Some("lost"));
    w.pause(false);

    let message = gives_up(&mut w, "slot invalidated").await;
    for want in [
        "(SQLSTATE 55000",
        "invalidated",
        "max_slot_wal_keep_size",
        "SELECT pg_drop_replication_slot('walhook')",
        "never sent",
    ] {
        assert!(message.contains(want), "{want:?} missing from: {message}");
    }
    // `walhook check` refuses it too, with the same fix.
    let (code, out, err) = walhook_output(&["check", "--config", w.config_path().to_str().unwrap()]);
    assert_eq!(code, 3, "{out}{err}");
    let line = out
        .lines()
        .find(|l| l.starts_with("problem slot walhook"))
        .unwrap_or_else(|| panic!("{out}"));
    assert!(
        line.contains("invalidated") && line.contains("SELECT pg_drop_replication_slot('walhook');"),
        "{line}"
    );
    db.batch_execute("SELECT pg_drop_replication_slot('walhook')")
        .await
        .unwrap();
    stream_again(&pg, &mut w, &rx, 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_slot_stops_walhook_with_the_fix() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", SCHEMA).await;
    let rx = Receiver::start().await;
    let mut w = Walhook::start(&config(&url, &rx.url(), ""));
    w.wait_ready().await;
    let db = pg.client("shop").await;
    db.batch_execute("INSERT INTO stock VALUES (1, 1)").await.unwrap();
    rx.wait_for_any(Duration::from_secs(20), "the first change").await;

    // The walsender is ended and the slot dropped before walhook takes it again.
    let mut dropped = false;
    for _ in 0..100 {
        db.batch_execute(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots
             WHERE slot_name = 'walhook' AND active_pid IS NOT NULL",
        )
        .await
        .unwrap();
        if db
            .batch_execute("SELECT pg_drop_replication_slot('walhook')")
            .await
            .is_ok()
        {
            dropped = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(dropped, "the slot could not be dropped");
    let message = gives_up(&mut w, "slot dropped").await;
    for want in [
        "replication slot \"walhook\"",
        "dropped",
        "start walhook again: it creates a new slot (source.create = true)",
        "never sent",
    ] {
        assert!(message.contains(want), "{want:?} missing from: {message}");
    }
    // The terminated walsender's own error reached the log before.
    let log = w.log();
    assert!(
        log.contains("terminating connection due to administrator command (SQLSTATE 57P01)"),
        "{log}"
    );
    stream_again(&pg, &mut w, &rx, 2).await;
}

/// Another process holds the slot (a leftover consumer): walhook waits for it, and the
/// lag metric shows the WAL the server wrote meanwhile, read from the server itself.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_lag_metric_reads_the_servers_wal_position_while_the_slot_is_busy() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", SCHEMA).await;
    let db = pg.client("shop").await;
    db.batch_execute("CREATE PUBLICATION walhook FOR TABLE stock")
        .await
        .unwrap();
    db.batch_execute("SELECT pg_create_logical_replication_slot('walhook', 'pgoutput')")
        .await
        .unwrap();
    let mut other = pg
        .tool("pg_recvlogical")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &pg.port().to_string(),
            "-U",
            "postgres",
            "-d",
            "shop",
        ])
        .args(["-S", "walhook", "--start", "-f", "/dev/null"])
        .args(["-o", "proto_version=1", "-o", "publication_names=walhook"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start pg_recvlogical");
    eventually(
        Duration::from_secs(20),
        "the other consumer on the slot",
        || async {
            db.query_one(
                "SELECT active FROM pg_replication_slots WHERE slot_name = 'walhook'",
                &[],
            )
            .await
            .unwrap()
            .get::<_, bool>(0)
        },
    )
    .await;
    // It confirms nothing from now on.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(other.id() as i32),
        nix::sys::signal::Signal::SIGSTOP,
    )
    .unwrap();

    let rx = Receiver::start().await;
    let w = Walhook::start(&config(&url, &rx.url(), ""));
    w.wait_log("replication slot is still in use by another process", 1)
        .await;
    db.batch_execute(
        "CREATE TABLE filler AS SELECT g, repeat('x', 200) AS pad FROM generate_series(1, 20000) g",
    )
    .await
    .unwrap();
    let row = db
        .query_one(
            "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint FROM pg_replication_slots
             WHERE slot_name = 'walhook'",
            &[],
        )
        .await
        .unwrap();
    let behind = row.get::<_, i64>(0) as f64;
    assert!(behind > 1_000_000.0, "the filler wrote {behind} bytes");
    eventually(
        Duration::from_secs(20),
        "the lag metric at the server's position",
        || async {
            w.metric("walhook_replication_lag_bytes ")
                .await
                .is_some_and(|lag| lag >= behind)
        },
    )
    .await;
    // The server keeps at least that much WAL for the slot.
    assert!(w
        .metric("walhook_slot_retained_wal_bytes ")
        .await
        .is_some_and(|kept| kept >= behind));
    assert_eq!(w.metric("walhook_replication_streaming ").await, Some(0.0));
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(other.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    );
    let _ = other.wait();
}
