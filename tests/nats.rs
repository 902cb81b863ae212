//! NATS JetStream subscribers against a real nats-server (Debian's `nats-server`, with
//! JetStream): a workload with a SIGKILL of walhook in the middle, and a reader of the
//! stream finds every event once per id (the stream drops what walhook sends again after
//! the restart, by `Nats-Msg-Id`), each key's in order, each signed as a webhook.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use walhook::lanes::sign::{verify_header, Secret};

const SCHEMA: &str = "CREATE TABLE stock (product_id bigint PRIMARY KEY, qty integer NOT NULL);";
const KEYS: i64 = 20;
const UPDATES: i64 = 300;

/// nats-server with JetStream on a free loopback port, stopped on drop.
struct NatsServer {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl NatsServer {
    async fn start() -> NatsServer {
        let nats_server = tool(
            "nats-server",
            "install Debian's package (apt-get install nats-server; scripts/test.sh does it)",
        );
        let dir = tempfile::tempdir().unwrap();
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let child = Command::new(nats_server)
            .args(["-js", "-a", "127.0.0.1", "-p", &port.to_string(), "-sd"])
            .arg(dir.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start nats-server");
        let server = NatsServer {
            child,
            port,
            _dir: dir,
        };
        eventually(Duration::from_secs(20), "nats-server listening", || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port)).await.is_ok()
        })
        .await;
        server
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_event_reaches_jetstream_once_in_key_order_across_a_sigkill() {
    let nats = NatsServer::start().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let mut stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "PIM".into(),
            subjects: vec!["pim.>".into()],
            duplicate_window: Duration::from_secs(120),
            ..Default::default()
        })
        .await
        .unwrap();

    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", SCHEMA).await;
    let slow = Receiver::start().await;
    slow.set_delay(Duration::from_millis(300));
    let config = format!(
        // Lane marks are not saved during the run, and a slow webhook subscriber holds the
        // LSN confirmed to the source back, so the restart surely sends again much of
        // what the stream stored: the stream must drop it.
        "[source]\nurl = \"{url}\"\nslot = \"nats\"\n[state]\nwatermark_interval = \"1h\"\n[[events]]\ntable = \"stock\"\n{}{}",
        subscriber(
            "bus",
            &nats.url(),
            "\"*\"",
            "kind = \"nats\"\nsubject = \"pim.{{ type }}.{{ data.key.product_id }}\""
        ),
        subscriber("slow", &slow.url(), "\"*\"", "max_in_flight = 1"),
    );
    let mut w = Walhook::start(&config);
    w.wait_ready().await;

    let db = pg.client("shop").await;
    db.batch_execute(&format!(
        "INSERT INTO stock SELECT g, 0 FROM generate_series(1, {KEYS}) g"
    ))
    .await
    .unwrap();
    let writer = tokio::spawn(async move {
        for i in 0..UPDATES {
            let k = i % KEYS + 1;
            db.batch_execute(&format!("UPDATE stock SET qty = qty + 1 WHERE product_id = {k}"))
                .await
                .unwrap();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    // SIGKILL walhook once part of the workload is in the stream, then start it again.
    eventually(Duration::from_secs(30), "a hundred messages stored", || {
        let mut s = stream.clone();
        async move { s.info().await.is_ok_and(|i| i.state.messages >= 100) }
    })
    .await;
    w.sigkill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    w.restart();
    w.wait_ready().await;
    writer.await.unwrap();

    let expected = (KEYS + UPDATES) as u64;
    eventually(Duration::from_secs(60), "every event stored", || {
        let mut s = stream.clone();
        async move { s.info().await.is_ok_and(|i| i.state.messages >= expected) }
    })
    .await;
    // A moment for anything sent twice to show (it must not).
    tokio::time::sleep(Duration::from_secs(1)).await;
    let info = stream.info().await.unwrap().clone();
    assert_eq!(info.state.messages, expected, "each event stored once");
    let resent = w.log().matches("JetStream had this message already").count();
    eprintln!("messages sent again after the SIGKILL and dropped by the stream: {resent}");
    // Nothing was confirmed to the server before the kill: what was stored went again.
    assert!(
        resent > 0,
        "the restart sent nothing again: the test did not exercise the dedup"
    );

    let secret = Secret::parse(SECRET).unwrap();
    let mut ids = HashSet::new();
    let mut per_key: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for seq in info.state.first_sequence..=info.state.last_sequence {
        let m = stream.get_raw_message(seq).await.unwrap();
        let header = |name: &str| {
            m.headers
                .get(name)
                .map(|v| v.as_str().to_string())
                .unwrap_or_default()
        };
        let id = header("Nats-Msg-Id");
        assert_eq!(header("webhook-id"), id);
        let ts: i64 = header("webhook-timestamp").parse().unwrap();
        assert!(
            verify_header(
                std::slice::from_ref(&secret),
                &id,
                ts,
                &m.payload,
                &header("webhook-signature")
            ),
            "message {seq} is signed"
        );
        assert!(ids.insert(id.clone()), "{id} stored twice");
        let body: serde_json::Value = serde_json::from_slice(&m.payload).unwrap();
        let key = body["data"]["new"]["product_id"].as_i64().unwrap();
        assert_eq!(
            m.subject.as_str(),
            format!("pim.{}.{key}", body["type"].as_str().unwrap())
        );
        per_key
            .entry(key)
            .or_default()
            .push(body["data"]["new"]["qty"].as_i64().unwrap());
    }
    assert_eq!(per_key.len(), KEYS as usize);
    for (key, qtys) in per_key {
        let want: Vec<i64> = (0..=UPDATES / KEYS).collect();
        assert_eq!(qtys, want, "key {key}: every qty, in order");
    }
}

/// `walhook check --ping` asks JetStream whether a stream captures the ping's subject and
/// publishes nothing (a check must not write into a production stream); `walhook ping`
/// publishes it, and the stream stores it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_ping_probes_the_stream_and_ping_publishes() {
    let nats = NatsServer::start().await;
    let client = async_nats::connect(nats.url()).await.unwrap();
    let js = async_nats::jetstream::new(client);
    let config = format!(
        "[source]\nurl = \"postgres://walhook@127.0.0.1:1/shop\"\n[[events]]\ntable = \"stock\"\nkey = [\"product_id\"]\n{}",
        subscriber(
            "bus",
            &nats.url(),
            "\"*\"",
            "kind = \"nats\"\nsubject = \"pim.{{ type }}\""
        )
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("walhook.toml");
    let path = path.to_str().unwrap();
    std::fs::write(path, config).unwrap();
    // What `check --ping` says of the subscriber.
    let check_ping = || {
        let (_, out, _) = walhook_output(&["check", "--ping", "--config", path]);
        out.lines()
            .find(|l| l.contains("subscriber bus"))
            .unwrap_or_else(|| panic!("{out}"))
            .to_string()
    };

    // No stream yet: a warning that says what to do.
    let line = check_ping();
    assert!(
        line.starts_with("warning") && line.contains("no JetStream stream captures pim.walhook.ping"),
        "{line}"
    );

    let mut stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: "PIM".into(),
            subjects: vec!["pim.>".into()],
            ..Default::default()
        })
        .await
        .unwrap();
    let line = check_ping();
    assert!(
        line.starts_with("ok")
            && line.contains("JetStream stream PIM captures pim.walhook.ping; nothing published"),
        "{line}"
    );
    assert_eq!(stream.info().await.unwrap().state.messages, 0, "check published");

    let (code, out, err) = walhook_output(&["ping", "--config", path, "--subscriber", "bus"]);
    assert_eq!(code, 0, "{out}{err}");
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        1,
        "ping did not publish"
    );
}
