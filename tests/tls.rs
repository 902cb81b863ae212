//! TLS to PostgreSQL: `sslmode=require` encrypts the replication stream and the SQL
//! connections; `verify-full` checks the server against `sslrootcert`; a certificate
//! from another CA is refused with a clear message.

mod common;

use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};

struct Pki {
    ca_pem: String,
    server_pem: String,
    server_key: String,
}

fn pki() -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "walhook test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = KeyPair::generate().unwrap();
    let mut server = CertificateParams::new(vec!["localhost".to_string()]).unwrap();
    server.distinguished_name.push(DnType::CommonName, "localhost");
    let server_cert = server.signed_by(&key, &ca_cert, &ca_key).unwrap();
    Pki {
        ca_pem: ca_cert.pem(),
        server_pem: server_cert.pem(),
        server_key: key.serialize_pem(),
    }
}

async fn tls_cluster(p: &Pki) -> PgCluster {
    PgCluster::start_full(
        &[
            ("ssl", "on"),
            ("ssl_cert_file", "'server.crt'"),
            ("ssl_key_file", "'server.key'"),
        ],
        &[("server.crt", &p.server_pem), ("server.key", &p.server_key)],
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_and_verify_full_stream_over_tls() {
    let p = pki();
    let pg = tls_cluster(&p).await;
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, &p.ca_pem).unwrap();
    let cases = [
        (
            "tls_req",
            format!(
                "postgres://postgres@127.0.0.1:{}/tls_req?sslmode=require",
                pg.port()
            ),
        ),
        (
            "tls_full",
            format!(
                "postgres://postgres@localhost:{}/tls_full?sslmode=verify-full&sslrootcert={}",
                pg.port(),
                ca.display()
            ),
        ),
    ];
    for (name, url) in cases {
        pg.create_db(name, "CREATE TABLE products (id int PRIMARY KEY, title text)")
            .await;
        let rx = Receiver::start().await;
        let config = format!(
            "[source]\nurl = \"{url}\"\nslot = \"{name}\"\n[[events]]\ntable = \"products\"\n{}",
            subscriber("s", &rx.url(), "\"*\"", "")
        );
        let mut w = Walhook::start(&config);
        w.wait_ready().await;
        let db = pg.client(name).await;
        db.batch_execute("INSERT INTO products VALUES (1, 'x')")
            .await
            .unwrap();
        rx.wait_for(Duration::from_secs(20), "an event over TLS", |g| !g.is_empty())
            .await;
        let row = db
            .query_one(
                "SELECT s.ssl FROM pg_stat_replication r JOIN pg_stat_ssl s USING (pid)
                 JOIN pg_replication_slots l ON l.active_pid = r.pid WHERE l.slot_name = $1",
                &[&name],
            )
            .await
            .unwrap();
        assert!(
            row.get::<_, bool>(0),
            "{name}: the walsender connection is encrypted"
        );
        assert_eq!(w.stop(), Some(0));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_certificate_from_another_ca_is_refused() {
    let pg = tls_cluster(&pki()).await;
    pg.create_db("shop", "CREATE TABLE products (id int PRIMARY KEY)")
        .await;
    let other = pki();
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("other-ca.pem");
    std::fs::write(&ca, &other.ca_pem).unwrap();
    let url = format!(
        "postgres://postgres@localhost:{}/shop?sslmode=verify-full&sslrootcert={}",
        pg.port(),
        ca.display()
    );
    let config = format!(
        "[source]\nurl = \"{url}\"\n[[events]]\ntable = \"products\"\n\
         [[subscribers]]\nname = \"s\"\nurl = \"http://127.0.0.1:9/\"\nevents = [\"*\"]\nsecrets = [\"{SECRET}\"]\n\
         allow_private_targets = true\n"
    );
    let (code, err) = run_config(&config);
    assert_eq!(code, 3, "{err}");
    let line = err
        .lines()
        .find(|l| l.starts_with("walhook:"))
        .unwrap_or_default();
    println!("{line}");
    assert!(line.contains("certificate"), "{line}");
}
