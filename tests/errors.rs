//! Clear failure: each misconfiguration or missing prerequisite ends in one message that
//! names the fix, with a distinct exit code (2: config, 3: prerequisite). And the
//! authentication methods and transports that must work do.

mod common;

use std::time::Duration;

use common::*;

/// The one `walhook:` error line.
/// The one "walhook:" line of `stderr`, with the report's lines after it (a problem or
/// a warning each), on one line.
fn error_line(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.lines().filter(|l| l.starts_with("walhook:")).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{stderr}");
    let report = stderr
        .lines()
        .skip_while(|l| !l.starts_with("walhook:"))
        .skip(1)
        .take_while(|l| l.starts_with("problem ") || l.starts_with("warning "));
    std::iter::once(lines[0])
        .chain(report)
        .collect::<Vec<_>>()
        .join(" ")
}

fn cfg(url: &str, table: &str, extra_rule: &str, sub_extra: &str) -> String {
    format!(
        "[source]\nurl = \"{url}\"\n[[events]]\ntable = \"{table}\"\n{extra_rule}\n\
         [[subscribers]]\nname = \"s\"\nurl = \"http://127.0.0.1:9/hook\"\nevents = [\"*\"]\n\
         secrets = [\"{SECRET}\"]\n{sub_extra}\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wal_level_replica_names_the_fix() {
    let pg = PgCluster::start_with(&[("wal_level", "replica")]).await;
    let url = pg
        .create_db("shop", "CREATE TABLE products (id int PRIMARY KEY)")
        .await;
    let (code, err) = run_config(&cfg(&url, "products", "", "allow_private_targets = true"));
    let line = error_line(&err);
    assert_eq!(code, 3, "{err}");
    assert!(line.contains("wal_level is 'replica'"), "{line}");
    assert!(line.contains("ALTER SYSTEM SET wal_level = logical"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_prerequisites_name_their_fixes() {
    let pg = PgCluster::start().await;
    pg.create_db(
        "shop",
        "CREATE TABLE products (id int PRIMARY KEY, title text);
         CREATE TABLE logs (line text);
         CREATE ROLE app LOGIN;
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO app;",
    )
    .await;
    let url = pg.url("shop");
    let private = "allow_private_targets = true";

    // A role without REPLICATION.
    let app_url = url.replace("postgres@", "app@");
    let (code, err) = run_config(&cfg(&app_url, "products", "", private));
    let line = error_line(&err);
    assert_eq!(code, 3, "{err}");
    assert!(line.contains("ALTER ROLE \"app\" WITH REPLICATION"), "{line}");

    // A table that does not exist.
    let (code, err) = run_config(&cfg(&url, "catalog.Product", "", private));
    let line = error_line(&err);
    assert_eq!(code, 3, "{err}");
    assert!(
        line.contains("\"catalog\".\"Product\"") && line.contains("does not exist"),
        "{line}"
    );

    // A table without replica identity, for updates (a rule with a key of its own: without
    // one, the missing key is a config mistake of its own).
    let (code, err) = run_config(&cfg(&url, "logs", "key = [\"line\"]", private));
    let line = error_line(&err);
    assert_eq!(code, 3, "{err}");
    assert!(
        line.contains("ALTER TABLE \"public\".\"logs\" REPLICA IDENTITY FULL"),
        "{line}"
    );

    // `changed` without old values.
    let (code, err) = run_config(&cfg(
        &url,
        "products",
        "changed = [\"title\"]\non = [\"update\"]",
        private,
    ));
    let line = error_line(&err);
    assert_eq!(code, 3, "{err}");
    assert!(
        line.contains("events[0].changed") && line.contains("REPLICA IDENTITY FULL"),
        "{line}"
    );

    // A key outside the replica identity, on a rule that sees deletes.
    let (code, err) = run_config(&cfg(&url, "products", "key = [\"title\"]", private));
    let line = error_line(&err);
    assert_eq!(code, 3, "{err}");
    assert!(
        line.contains("events[0].key") && line.contains("replica identity"),
        "{line}"
    );

    // A publication that is missing while source.create = false.
    let no_create = cfg(&url, "products", "", private).replace("[source]\n", "[source]\ncreate = false\n");
    let (code, err) = run_config(&no_create);
    let line = error_line(&err);
    assert_eq!(code, 3, "{err}");
    assert!(
        line.contains("CREATE PUBLICATION \"walhook\" FOR TABLE \"public\".\"products\""),
        "{line}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rules_that_need_old_rows_or_name_unknown_columns_name_the_fix() {
    let pg = PgCluster::start().await;
    let url = pg
        .create_db(
            "shop",
            "CREATE TABLE products (id int PRIMARY KEY, title text, status text);",
        )
        .await;
    let private = "allow_private_targets = true";
    for (rule, want) in [
        (
            "on = [\"update\"]\ntransition = { column = \"status\", to = \"approved\" }",
            "events[0].transition needs the old values",
        ),
        (
            "when = \"old.status != new.status\"",
            "events[0].when needs the old values",
        ),
        (
            "on = [\"update\"]\nignore_changes = [\"title\"]",
            "events[0].ignore_changes needs",
        ),
        ("when = \"new.colour == 'red'\"", "events[0].when: table"),
        ("exclude = [\"price\"]", "events[0].exclude: table"),
    ] {
        let (code, err) = run_config(&cfg(&url, "products", rule, private));
        let line = error_line(&err);
        assert_eq!(code, 3, "{rule}: {err}");
        assert!(line.contains(want), "{rule}: {line}");
        if want.contains("needs") {
            assert!(
                line.contains("ALTER TABLE \"public\".\"products\" REPLICA IDENTITY FULL"),
                "{line}"
            );
        } else {
            assert!(
                line.contains("has no column") && line.contains("(it has: "),
                "{line}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_target_is_refused_unless_allowed() {
    // No database is needed: the target is checked before connecting.
    let (code, err) = run_config(&cfg("postgres://postgres@127.0.0.1:1/x", "products", "", ""));
    let line = error_line(&err);
    assert_eq!(code, 2, "{err}");
    assert!(
        line.contains("127.0.0.1") && line.contains("subscribers[0].allow_private_targets = true"),
        "{line}"
    );
}

/// IPv6 forms of private IPv4 addresses, and the benchmarking range, are refused too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_addresses_inside_ipv6_and_benchmarking_ones_are_refused() {
    for target in [
        "http://[::127.0.0.1]:9/hook",
        "http://[64:ff9b::10.0.0.1]/hook",
        "http://[2002:c0a8:101::1]/hook",
        "http://198.18.0.1/hook",
    ] {
        let config = cfg("postgres://postgres@127.0.0.1:1/x", "products", "", "")
            .replace("http://127.0.0.1:9/hook", target);
        let (code, err) = run_config(&config);
        let line = error_line(&err);
        assert_eq!(code, 2, "{target}: {err}");
        assert!(
            line.contains("subscribers[0].allow_private_targets = true"),
            "{target}: {line}"
        );
    }
}

#[test]
fn a_config_with_an_unknown_key_names_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let text = cfg("postgres://localhost/x", "products", "", "retries = 5");
    std::fs::write(&path, text).unwrap();
    let (code, err) = walhook_cmd(&["check", "--config", path.to_str().unwrap()]);
    let line = error_line(&err);
    assert_eq!(code, 2, "{err}");
    assert!(
        line.contains("subscribers[0].retries") && line.contains("unknown field"),
        "{line}"
    );
}

/// SCRAM-SHA-256, MD5 and cleartext password over TCP, and trust over a Unix socket: each
/// streams and delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_methods_and_unix_sockets_work() {
    let pg = PgCluster::start().await;
    let admin = pg.client("postgres").await;
    admin
        .batch_execute(
            "SET password_encryption = 'scram-sha-256';
             CREATE ROLE scram_user LOGIN REPLICATION PASSWORD 's3cret';
             SET password_encryption = 'md5';
             CREATE ROLE md5_user LOGIN REPLICATION PASSWORD 'm5pw';
             CREATE ROLE password_user LOGIN REPLICATION PASSWORD 'plain';",
        )
        .await
        .unwrap();
    let socket = pg.socket_dir().display().to_string();
    let cases = [
        (
            "scram",
            format!("postgres://scram_user:s3cret@127.0.0.1:{}/scram", pg.port()),
        ),
        (
            "md5",
            format!("postgres://md5_user:m5pw@127.0.0.1:{}/md5", pg.port()),
        ),
        (
            "plain",
            format!("postgres://password_user:plain@127.0.0.1:{}/plain", pg.port()),
        ),
        (
            "unix",
            format!("host={socket} port={} user=postgres dbname=unix", pg.port()),
        ),
    ];
    for (name, url) in cases {
        let owner = url
            .split("://")
            .nth(1)
            .and_then(|r| r.split(':').next())
            .filter(|u| !u.contains(' '))
            .unwrap_or("postgres")
            .to_string();
        admin
            .batch_execute(&format!("CREATE DATABASE {name} OWNER {owner}"))
            .await
            .unwrap();
        let db = pg.client(name).await;
        db.batch_execute(&format!(
            "SET ROLE {owner}; CREATE TABLE products (id int PRIMARY KEY, title text);"
        ))
        .await
        .unwrap();
        let rx = Receiver::start().await;
        let config = format!(
            "[source]\nurl = \"{url}\"\nslot = \"{name}\"\n[[events]]\ntable = \"products\"\n{}",
            subscriber("s", &rx.url(), "\"*\"", "")
        );
        let mut w = Walhook::start(&config);
        w.wait_ready().await;
        db.batch_execute("INSERT INTO products VALUES (1, 'x')")
            .await
            .unwrap();
        rx.wait_for(Duration::from_secs(20), &format!("an event over {name}"), |g| {
            !g.is_empty()
        })
        .await;
        assert_eq!(w.stop(), Some(0));
    }
}

/// The `ENV` settings of the shipped Dockerfile, as (name, value).
fn dockerfile_env() -> Vec<(String, String)> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/Dockerfile")).unwrap();
    let mut out = Vec::new();
    let mut in_env = false;
    for line in text.lines() {
        let line = line.trim();
        let rest = match line.strip_prefix("ENV ") {
            Some(r) => r,
            None if in_env => line,
            None => continue,
        };
        in_env = rest.ends_with('\\');
        for pair in rest.trim_end_matches('\\').split_whitespace() {
            let (k, v) = pair.split_once('=').expect("ENV NAME=value");
            out.push((k.to_string(), v.to_string()));
        }
    }
    assert!(out.iter().any(|(k, _)| k == "WALHOOK_LOG_FORMAT"), "{out:?}");
    out
}

/// What Kubernetes puts in every pod of a namespace with a Service named `walhook`.
const KUBERNETES_ENV: [(&str, &str); 7] = [
    ("WALHOOK_SERVICE_HOST", "10.96.0.12"),
    ("WALHOOK_SERVICE_PORT", "9187"),
    ("WALHOOK_SERVICE_PORT_ADMIN", "9187"),
    ("WALHOOK_PORT", "tcp://10.96.0.12:9187"),
    ("WALHOOK_PORT_9187_TCP", "tcp://10.96.0.12:9187"),
    ("WALHOOK_PORT_9187_TCP_PROTO", "tcp"),
    ("WALHOOK_PORT_9187_TCP_ADDR", "10.96.0.12"),
];

/// The shipped reference config (as the Docker image holds it) with the Dockerfile's
/// environment, `WALHOOK_CONFIG` naming the file, an admin token the file reads as
/// `${WALHOOK_ADMIN_TOKEN}` and a Kubernetes Service's variables: the config is valid,
/// and nothing warns about a variable it reads.
#[test]
fn stray_walhook_variables_leave_the_config_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhook.toml");
    let shipped =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/config/walhook.toml")).unwrap();
    let text = shipped.replace(
        "# token = \"${WALHOOK_ADMIN_TOKEN}\"",
        "token = \"${WALHOOK_ADMIN_TOKEN}\"",
    );
    assert_ne!(
        text, shipped,
        "the reference config no longer shows the admin token line"
    );
    std::fs::write(&path, text).unwrap();
    let docker = dockerfile_env();
    let mut env: Vec<(&str, &str)> = docker.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    env.extend(KUBERNETES_ENV);
    env.extend([
        ("WALHOOK_CONFIG", path.to_str().unwrap()),
        ("WALHOOK_ADMIN_TOKEN", "0123456789abcdef0123456789abcdef"),
        ("DATABASE_URL", "postgres://walhook@db.example.com/shop"),
        ("WEBSHOP_WEBHOOK_URL", "https://shop.example.com/hooks/walhook"),
        ("WEBSHOP_SECRET", SECRET),
    ]);
    let (code, out, err) = walhook_output_env(&["check"], &env);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&format!("{}: ok", path.display())), "{out}");
    assert!(!err.contains("WALHOOK_"), "a warning about a variable: {err}");

    // A real override still applies and is checked.
    env.push(("WALHOOK_ADMIN__LISTEN", "not an address"));
    let (code, out, err) = walhook_output_env(&["check"], &env);
    let err = format!("{out}{err}");
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("admin.listen") && err.contains("not an address"),
        "{err}"
    );
}

/// A name one underscore short of an override is ignored with a warning that spells it
/// right; a `__` name that overrides nothing is an error naming the variable. (The file
/// alone is checked; its subscriber on loopback is allowed, else the file is refused.)
#[test]
fn a_mistyped_override_is_named_with_its_right_spelling() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhook.toml");
    let allowed = "allow_private_targets = true";
    std::fs::write(&path, cfg("postgres://localhost/x", "products", "", allowed)).unwrap();
    let config = path.to_str().unwrap();
    let (code, out, err) = walhook_output_env(
        &["check", "--offline", "--config", config],
        &[("WALHOOK_SOURCE_URL", "postgres://elsewhere/y")],
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(": ok"), "{out}");
    assert!(
        err.contains("WALHOOK_SOURCE_URL is ignored") && err.contains("WALHOOK_SOURCE__URL"),
        "{err}"
    );

    let (code, _, err) = walhook_output_env(
        &["check", "--offline", "--config", config],
        &[("WALHOOK_SOURCE__URLS", "postgres://elsewhere/y")],
    );
    let line = error_line(&err);
    assert_eq!(code, 2, "{err}");
    assert!(
        line.contains("WALHOOK_SOURCE__URLS: [source] has no key \"urls\""),
        "{line}"
    );
}

/// `walhook run` with the Dockerfile's log format, an admin token variable and a
/// Kubernetes Service's variables starts and delivers, logging JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_starts_with_the_images_environment() {
    let pg = PgCluster::start().await;
    let url = pg
        .create_db("shop", "CREATE TABLE products (id int PRIMARY KEY, title text)")
        .await;
    let rx = Receiver::start().await;
    let config = format!(
        "[source]\nurl = \"{url}\"\n[[events]]\ntable = \"products\"\n{}",
        subscriber("s", &rx.url(), "\"*\"", "")
    );
    let mut env: Vec<(&str, &str)> = KUBERNETES_ENV.to_vec();
    env.extend([
        ("WALHOOK_LOG_FORMAT", "json"),
        ("WALHOOK_ADMIN_TOKEN", "0123456789abcdef0123456789abcdef"),
    ]);
    let mut w = Walhook::start_with_env(&config, "token = \"${WALHOOK_ADMIN_TOKEN}\"", &env);
    w.wait_ready().await;
    let db = pg.client("shop").await;
    db.batch_execute("INSERT INTO products VALUES (1, 'x')")
        .await
        .unwrap();
    rx.wait_for(Duration::from_secs(20), "an event", |g| !g.is_empty())
        .await;
    let (status, _) = w
        .api(
            "GET",
            "/subscribers",
            Some("0123456789abcdef0123456789abcdef"),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(w.stop(), Some(0));
    let log = w.log();
    assert!(
        log.lines()
            .filter(|l| !l.trim().is_empty())
            .all(|l| l.starts_with('{')),
        "not JSON logs:\n{log}"
    );
}
