//! A config with several independent mistakes gets every one reported at once, each with
//! its key path, by `walhook check`, by `walhook run` and by a SIGHUP reload: a `when`
//! that is not CEL (the file), a column the table lacks (the source's catalog) and a
//! subscriber on a private address (its URL). Nothing is set up for a refused config.

mod common;

use std::time::Duration;

use common::*;

const WAIT: Duration = Duration::from_secs(30);

/// A good config: one rule on `products`, one subscriber (the receiver, on loopback).
fn good(db: &str, receiver: &str) -> String {
    format!(
        "[source]\nurl = \"{db}\"\nslot = \"checks\"\npublication = \"checks\"\n\n\
         [[events]]\ntable = \"products\"\nname = \"product.changed\"\non = [\"update\"]\n\n{}",
        subscriber("shop", receiver, "\"*\"", "")
    )
}

/// `good` with three independent mistakes.
fn three_mistakes(db: &str, receiver: &str) -> String {
    format!(
        "{}\n[[events]]\ntable = \"products\"\nname = \"product.coloured\"\nwhen = \"new.price >\"\n\n\
         [[events]]\ntable = \"products\"\nname = \"product.painted\"\ncolumns = [\"id\", \"colour\"]\n\n\
         [[subscribers]]\nname = \"intranet\"\nurl = \"http://10.1.2.3/hooks\"\nevents = [\"*\"]\n\
         secrets = [\"{SECRET}\"]\n",
        good(db, receiver)
    )
}

/// The three, each named with its key path and what is wrong.
fn assert_all_three(said: &str) {
    for (path, what) in [
        ("events[1].when", "not a valid CEL expression"),
        ("events[2].columns", "has no column \"colour\""),
        ("subscribers[1].url", "10.1.2.3"),
    ] {
        let line = said
            .lines()
            .find(|l| l.contains(path))
            .unwrap_or_else(|| panic!("{path} is not reported:\n{said}"));
        assert!(line.contains(what), "{path} without {what:?}:\n{line}");
    }
    assert!(
        said.contains("subscribers[1].allow_private_targets = true"),
        "the private address's fix is not named:\n{said}"
    );
}

async fn shop(pg: &PgCluster) -> String {
    pg.create_db(
        "shop",
        "CREATE TABLE products (id int PRIMARY KEY, title text, price numeric);
         INSERT INTO products VALUES (1, 'mug', 5)",
    )
    .await
}

/// `walhook check` and `walhook run` both report all three on one line, exit with code 2,
/// and `run` creates no replication slot and no publication.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_and_run_report_every_mistake() {
    let pg = PgCluster::start().await;
    let url = shop(&pg).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhook.toml");
    std::fs::write(
        &path,
        format!(
            "{}\n[admin]\nlisten = \"\"\n",
            three_mistakes(&url, "http://127.0.0.1:9/hook")
        ),
    )
    .unwrap();
    let path = path.to_str().unwrap();

    // `check` prints its report on stdout and its verdict on stderr; `run` both on
    // stderr: one "walhook:" line, then a line per problem.
    for command in ["check", "run"] {
        let (code, out, err) = walhook_output(&[command, "--config", path]);
        assert_eq!(code, 2, "{command}: {err}");
        let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("walhook:")).collect();
        assert_eq!(lines.len(), 1, "{command}: one error line, got:\n{err}");
        assert_all_three(&format!("{out}{err}"));
    }

    let db = pg.client("shop").await;
    let slots: i64 = db
        .query_one("SELECT count(*) FROM pg_replication_slots", &[])
        .await
        .unwrap()
        .get(0);
    let publications: i64 = db
        .query_one("SELECT count(*) FROM pg_publication", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!((slots, publications), (0, 0), "a refused config set something up");

    // The file alone: the mistakes it holds by itself (a private address needs no
    // lookup), not what only the catalog knows.
    let (code, out, err) = walhook_output(&["check", "--offline", "--config", path]);
    let err = format!("{out}{err}");
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("events[1].when"), "{err}");
    assert!(
        err.contains("subscribers[1].allow_private_targets = true"),
        "{err}"
    );
    assert!(
        !err.contains("events[2].columns"),
        "--offline looked beyond the file: {err}"
    );
    // A name that does not resolve is named even where private targets are allowed.
    let text = std::fs::read_to_string(path).unwrap().replace(
        "url = \"http://10.1.2.3/hooks\"",
        "url = \"http://no-such-host.invalid/hooks\"\nallow_private_targets = true",
    );
    std::fs::write(path, text).unwrap();
    let (_, out, err) = walhook_output(&["check", "--config", path]);
    let unresolved = format!("{out}{err}");
    let line = unresolved
        .lines()
        .find(|l| l.contains("subscribers[1].url"))
        .unwrap_or_else(|| panic!("{unresolved}"));
    assert!(line.contains("cannot resolve no-such-host.invalid"), "{line}");
}

/// Only the catalog's mistake: `walhook check` names it and exits with code 3 (the source
/// is not ready for the config), as `walhook run` does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_finds_what_only_the_catalog_knows() {
    let pg = PgCluster::start().await;
    let url = shop(&pg).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhook.toml");
    let text = format!(
        "{}\n[[events]]\ntable = \"products\"\nname = \"product.painted\"\ncolumns = [\"colour\"]\n\
         [admin]\nlisten = \"\"\n",
        good(&url, "http://127.0.0.1:9/hook")
    );
    std::fs::write(&path, text).unwrap();
    let path = path.to_str().unwrap();
    for command in ["check", "run"] {
        let (code, out, err) = walhook_output(&[command, "--config", path]);
        let err = format!("{out}{err}");
        assert_eq!(code, 3, "{command}: {err}");
        assert!(
            err.contains("events[1].columns: table \"public\".\"products\" has no column \"colour\""),
            "{command}: {err}"
        );
    }
    let (code, out, err) = walhook_output(&["check", "--offline", "--config", path]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": ok"), "{out}");
}

/// A SIGHUP with the three mistakes logs all three and keeps the running config: the
/// next change is still delivered, and the process still runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reload_reports_every_mistake_and_keeps_running() {
    let pg = PgCluster::start().await;
    let url = shop(&pg).await;
    let rx = Receiver::start().await;
    let mut walhook = Walhook::start(&good(&url, &rx.url()));
    walhook.wait_ready().await;

    walhook.reload(&three_mistakes(&url, &rx.url()));
    let log = walhook.wait_log("config reload refused", 1).await;
    let refused = log.lines().find(|l| l.contains("config reload refused")).unwrap();
    assert_all_three(&refused.replace("; ", "\n"));

    let db = pg.client("shop").await;
    db.batch_execute("UPDATE products SET price = 6 WHERE id = 1")
        .await
        .unwrap();
    rx.wait_for(WAIT, "the update after the refused reload", |r| {
        r.iter().any(|e| {
            e.json()["type"] == "product.changed" && e.json()["data"]["new"]["price"].as_f64() == Some(6.0)
        })
    })
    .await;
    assert_eq!(walhook.exited(), None, "walhook stopped");
}
