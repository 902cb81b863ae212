//! How requests leave walhook: mutual TLS to a receiver that demands a client certificate
//! (certificates made here), and an HTTP proxy started here: https targets go through a
//! CONNECT tunnel (TLS end to end with the receiver), http targets as absolute-form
//! requests, a target in NO_PROXY goes direct, and `proxy = ""` opts a subscriber out.

mod common;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::*;
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SCHEMA: &str = "CREATE TABLE stock (product_id bigint PRIMARY KEY, qty integer NOT NULL);";

/// A CA, a server certificate for localhost, and a client certificate, as PEM files.
struct Pki {
    ca: String,
    server_cert: String,
    server_key: String,
    client_cert: String,
    client_key: String,
}

fn pki(dir: &Path) -> Pki {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name.push(DnType::CommonName, "egress test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let server_key = KeyPair::generate().unwrap();
    let server = CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&server_key, &ca_cert, &ca_key)
        .unwrap();
    let client_key = KeyPair::generate().unwrap();
    let mut client = CertificateParams::new(Vec::<String>::new()).unwrap();
    client.distinguished_name.push(DnType::CommonName, "walhook");
    let client = client.signed_by(&client_key, &ca_cert, &ca_key).unwrap();
    let write = |name: &str, pem: String| {
        let path = dir.join(name);
        std::fs::write(&path, pem).unwrap();
        path.to_str().unwrap().to_string()
    };
    Pki {
        ca: write("ca.pem", ca_cert.pem()),
        server_cert: write("server.pem", server.pem()),
        server_key: write("server.key", server_key.serialize_pem()),
        client_cert: write("client.pem", client.pem()),
        client_key: write("client.key", client_key.serialize_pem()),
    }
}

/// An https receiver on localhost that demands a client certificate signed by the CA:
/// it counts the requests it answered (with the peer of each) and the handshakes it
/// refused.
#[derive(Clone, Default)]
struct MtlsReceiver {
    requests: Arc<Mutex<Vec<SocketAddr>>>,
    refused: Arc<Mutex<Vec<String>>>,
}

impl MtlsReceiver {
    async fn start(p: &Pki) -> (MtlsReceiver, u16) {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(&p.ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let verifier =
            rustls::server::WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()
                .unwrap();
        let certs: Vec<_> = CertificateDer::pem_file_iter(&p.server_cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let key = PrivateKeyDer::from_pem_file(&p.server_key).unwrap();
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_client_cert_verifier(verifier)
            .with_single_cert(certs, key)
            .unwrap();
        let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let rx = MtlsReceiver::default();
        let seen = rx.clone();
        tokio::spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    return;
                };
                let acceptor = acceptor.clone();
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut tls = match acceptor.accept(tcp).await {
                        Ok(t) => t,
                        Err(e) => {
                            seen.refused.lock().unwrap().push(e.to_string());
                            return;
                        }
                    };
                    // Requests on the connection: a head, then Content-Length bytes.
                    let mut buf = Vec::new();
                    loop {
                        let Some(end) = find(&buf, b"\r\n\r\n") else {
                            let mut chunk = [0u8; 8192];
                            match tls.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        while buf.len() < end + 4 + len {
                            let mut chunk = [0u8; 8192];
                            match tls.read(&mut chunk).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => buf.extend_from_slice(&chunk[..n]),
                            }
                        }
                        buf.drain(..end + 4 + len);
                        seen.requests.lock().unwrap().push(peer);
                        let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n";
                        if tls.write_all(ok).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (rx, port)
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// An HTTP proxy: CONNECT tunnels, and absolute-form requests forwarded to their origin.
/// It keeps what it was asked (the request line and Proxy-Authorization) and the local
/// address of every connection it opened, which is the peer its targets see.
#[derive(Clone, Default)]
struct Proxy {
    asked: Arc<Mutex<Vec<(String, String)>>>,
    outbound: Arc<Mutex<HashSet<SocketAddr>>>,
}

impl Proxy {
    async fn start() -> (Proxy, u16) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let proxy = Proxy::default();
        let seen = proxy.clone();
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let seen = seen.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    let end = loop {
                        if let Some(end) = find(&buf, b"\r\n\r\n") {
                            break end;
                        }
                        let mut chunk = [0u8; 4096];
                        match client.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let head = String::from_utf8_lossy(&buf[..end]).to_string();
                    let line = head.lines().next().unwrap_or("").to_string();
                    let auth = head
                        .lines()
                        .find_map(|l| l.strip_prefix("Proxy-Authorization: "))
                        .unwrap_or("")
                        .to_string();
                    seen.asked.lock().unwrap().push((line.clone(), auth));
                    let mut parts = line.split(' ');
                    let (method, target) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                    let authority = match method {
                        "CONNECT" => target.to_string(),
                        _ => {
                            let u = url::Url::parse(target).unwrap();
                            format!("{}:{}", u.host_str().unwrap(), u.port_or_known_default().unwrap())
                        }
                    };
                    let mut upstream = TcpStream::connect(&authority).await.unwrap();
                    seen.outbound
                        .lock()
                        .unwrap()
                        .insert(upstream.local_addr().unwrap());
                    if method == "CONNECT" {
                        let ok = b"HTTP/1.1 200 Connection Established\r\n\r\n";
                        client.write_all(ok).await.unwrap();
                    } else {
                        // Forwarded as it came (the receiver takes absolute form).
                        upstream.write_all(&buf).await.unwrap();
                    }
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                });
            }
        });
        (proxy, port)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_and_requests_through_a_proxy() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let (mtls, mtls_port) = MtlsReceiver::start(&p).await;
    let (nocert, nocert_port) = MtlsReceiver::start(&p).await;
    let (proxy, proxy_port) = Proxy::start().await;
    let direct = Receiver::start().await;
    let absolute = Receiver::start().await;
    let pg = PgCluster::start().await;
    let url = pg.create_db("shop", SCHEMA).await;
    let tls = format!(
        "tls = {{ cert = \"{}\", key = \"{}\", ca = \"{}\" }}",
        p.client_cert, p.client_key, p.ca
    );
    let config = format!(
        "[source]\nurl = \"{url}\"\nslot = \"egress\"\n[[events]]\ntable = \"stock\"\n{}{}{}{}",
        // mTLS, through the environment's HTTPS_PROXY (a CONNECT tunnel).
        subscriber(
            "mtls",
            &format!("https://localhost:{mtls_port}/hook"),
            "\"*\"",
            &tls
        ),
        // The CA but no client certificate, direct (`proxy = ""`): refused by the receiver.
        subscriber(
            "nocert",
            &format!("https://localhost:{nocert_port}/hook"),
            "\"*\"",
            &format!(
                "tls = {{ ca = \"{}\" }}\nproxy = \"\"\nmax_attempts = 2\nretry_initial = \"50ms\"",
                p.ca
            )
        ),
        // In NO_PROXY: direct.
        subscriber("direct", &direct.url(), "\"*\"", ""),
        // Its own proxy (NO_PROXY does not apply to it): absolute-form requests.
        subscriber(
            "absolute",
            &absolute.url(),
            "\"*\"",
            &format!("proxy = \"http://hook%40ops:s3cret@127.0.0.1:{proxy_port}\"")
        ),
    );
    let proxy_url = format!("http://walhook:proxy-pass@127.0.0.1:{proxy_port}");
    let w = Walhook::start_with_env(
        &config,
        "",
        &[
            ("HTTPS_PROXY", proxy_url.as_str()),
            ("HTTP_PROXY", proxy_url.as_str()),
            ("NO_PROXY", "127.0.0.1"),
        ],
    );
    w.wait_ready().await;
    let db = pg.client("shop").await;
    db.batch_execute("INSERT INTO stock SELECT g, g FROM generate_series(1, 10) g")
        .await
        .unwrap();

    // mTLS: every event, each request through the proxy's tunnel.
    eventually(Duration::from_secs(30), "10 events over mutual TLS", || async {
        mtls.requests.lock().unwrap().len() >= 10
    })
    .await;
    let outbound = proxy.outbound.lock().unwrap().clone();
    for peer in mtls.requests.lock().unwrap().iter() {
        assert!(outbound.contains(peer), "{peer} did not come through the proxy");
    }
    assert!(mtls.refused.lock().unwrap().is_empty());
    let asked = proxy.asked.lock().unwrap().clone();
    use base64::Engine as _;
    let basic = |pair: &str| format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair));
    assert!(
        asked.contains(&(
            format!("CONNECT localhost:{mtls_port} HTTP/1.1"),
            basic("walhook:proxy-pass")
        )),
        "{asked:?}"
    );

    // Without a client certificate the receiver refuses the handshake: no request.
    eventually(
        Duration::from_secs(30),
        "the handshake without a certificate refused",
        || async { !nocert.refused.lock().unwrap().is_empty() },
    )
    .await;
    assert!(nocert.requests.lock().unwrap().is_empty());
    assert!(
        !asked
            .iter()
            .any(|(line, _)| line.contains(&nocert_port.to_string())),
        "proxy = \"\" goes direct: {asked:?}"
    );
    let log = w.wait_log("subscriber=nocert", 1).await;
    assert!(log.contains("the receiver wants a client certificate"), "{log}");

    // NO_PROXY: direct; its own proxy: absolute form with its credentials.
    let got = direct
        .wait_for(Duration::from_secs(30), "10 direct events", |g| g.len() >= 10)
        .await;
    assert!(got
        .iter()
        .all(|r| !outbound.contains(&r.peer) && !proxy.outbound.lock().unwrap().contains(&r.peer)));
    let direct_port = direct
        .url()
        .split(':')
        .nth(2)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let asked = proxy.asked.lock().unwrap().clone();
    assert!(
        !asked.iter().any(|(line, _)| line.contains(&direct_port)),
        "{asked:?}"
    );
    let got = absolute
        .wait_for(Duration::from_secs(30), "10 events through the proxy", |g| {
            g.len() >= 10
        })
        .await;
    let outbound = proxy.outbound.lock().unwrap().clone();
    assert!(
        got.iter().all(|r| outbound.contains(&r.peer)),
        "every request through the proxy"
    );
    let absolute_url = absolute.url();
    assert!(
        asked.contains(&(format!("POST {absolute_url} HTTP/1.1"), basic("hook@ops:s3cret"))),
        "{asked:?}"
    );
    assert_eq!(got.len(), 10, "once each");
}

#[test]
fn check_names_the_tls_files_and_proxies_that_cannot_work() {
    let dir = tempfile::tempdir().unwrap();
    let p = pki(dir.path());
    let config = format!(
        "[source]\nurl = \"postgres://localhost/shop\"\n[delivery]\nproxy = \"socks5://proxy:1080\"\n\
         [[events]]\ntable = \"stock\"\n{}{}{}",
        subscriber(
            "a",
            "https://hooks.example.com/a",
            "\"*\"",
            &format!(
                "tls = {{ cert = \"{}\", key = \"/nonexistent/client.key\" }}",
                p.client_cert
            )
        ),
        subscriber(
            "b",
            "https://hooks.example.com/b",
            "\"*\"",
            "tls = { ca = \"/nonexistent/ca.pem\" }"
        ),
        subscriber(
            "c",
            "http://hooks.example.com/c",
            "\"*\"",
            &format!("tls = {{ ca = \"{}\" }}", p.ca)
        ),
    );
    let path = dir.path().join("walhook.toml");
    std::fs::write(&path, config).unwrap();
    let (code, out, err) = walhook_output(&["check", "--offline", "--config", path.to_str().unwrap()]);
    let all = format!("{out}{err}");
    assert_ne!(code, 0, "{all}");
    for want in [
        "delivery.proxy",
        "walhook speaks to proxies in plain HTTP",
        "subscribers[0].tls.key",
        "/nonexistent/client.key",
        "subscribers[1].tls.ca",
        "/nonexistent/ca.pem",
        "subscribers[2].tls",
        "tls applies to https",
    ] {
        assert!(all.contains(want), "{want} missing from:\n{all}");
    }
}
