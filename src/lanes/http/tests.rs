//! The client against scripted HTTP servers on loopback: framing, keep-alive, stale
//! connections, timeouts, malformed answers and TLS.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;

/// What the server does with one request.
#[derive(Clone)]
enum Answer {
    /// Writes these bytes and keeps the connection.
    Keep(&'static [u8]),
    /// Writes these bytes and closes the connection.
    Close(&'static [u8]),
    /// Never answers.
    Hang,
}

/// A server that answers the n-th request (over all connections) with `answers[n]`
/// (the last one repeats), and records every request.
struct Scripted {
    addr: std::net::SocketAddr,
    accepted: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Vec<u8>>>>,
}

impl Scripted {
    async fn start(answers: Vec<Answer>, tls: Option<tokio_rustls::TlsAcceptor>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let accepted = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let answers = Arc::new(answers);
        let (acc, reqs) = (accepted.clone(), requests.clone());
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                acc.fetch_add(1, Ordering::SeqCst);
                let (answers, reqs) = (answers.clone(), reqs.clone());
                let tls = tls.clone();
                tokio::spawn(async move {
                    match tls {
                        Some(acceptor) => {
                            if let Ok(s) = acceptor.accept(tcp).await {
                                serve(s, answers, reqs).await
                            }
                        }
                        None => serve(tcp, answers, reqs).await,
                    }
                });
            }
        });
        Scripted {
            addr,
            accepted,
            requests,
        }
    }

    fn url(&self, scheme: &str, host: &str) -> url::Url {
        url::Url::parse(&format!("{scheme}://{host}:{}/hook", self.addr.port())).unwrap()
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }

    fn request(&self, n: usize) -> String {
        String::from_utf8_lossy(&self.requests.lock().unwrap()[n]).into_owned()
    }
}

async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    mut s: S,
    answers: Arc<Vec<Answer>>,
    reqs: Arc<Mutex<Vec<Vec<u8>>>>,
) {
    let mut buf = Vec::new();
    loop {
        // One request: the head, then Content-Length bytes.
        let (head_len, body_len) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let len = req
                    .headers
                    .iter()
                    .find(|h| h.name.eq_ignore_ascii_case("content-length"))
                    .map(|h| std::str::from_utf8(h.value).unwrap().parse::<usize>().unwrap())
                    .unwrap_or(0);
                break (n, len);
            }
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < head_len + body_len {
            let mut chunk = [0u8; 4096];
            match s.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let request: Vec<u8> = buf.drain(..head_len + body_len).collect();
        let n = {
            let mut reqs = reqs.lock().unwrap();
            reqs.push(request);
            reqs.len() - 1
        };
        match answers[n.min(answers.len() - 1)] {
            Answer::Keep(bytes) => {
                if s.write_all(bytes).await.is_err() {
                    return;
                }
            }
            Answer::Close(bytes) => {
                let _ = s.write_all(bytes).await;
                let _ = s.shutdown().await;
                return;
            }
            Answer::Hang => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
            }
        }
    }
}

fn opts(timeout: Duration) -> Options {
    Options {
        timeout,
        connect_timeout: Duration::from_secs(2),
        max_idle: 4,
        idle_timeout: Duration::from_secs(60),
        roots: None,
        client_auth: None,
        proxy: None,
        allow_private: true,
    }
}

fn client(url: &url::Url) -> Client {
    Client::new(
        url,
        &[("X-Shop".to_string(), "eu".to_string())],
        opts(Duration::from_secs(2)),
    )
    .unwrap()
}

const OK_HELLO: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello";

#[tokio::test]
async fn sends_one_request_per_post_and_reuses_the_connection() {
    let server = Scripted::start(vec![Answer::Keep(OK_HELLO)], None).await;
    let c = client(&server.url("http", "127.0.0.1"));
    for i in 0..3 {
        let resp = c
            .post(&[("webhook-id", &format!("evt_{i}"))], b"{\"a\":1}")
            .await
            .unwrap();
        assert_eq!(resp.status, 200);
        assert_eq!(resp.excerpt, b"hello");
    }
    assert_eq!(server.accepted(), 1, "one keep-alive connection");
    let req = server.request(2);
    assert!(req.starts_with("POST /hook HTTP/1.1\r\n"), "{req}");
    for line in [
        &format!("Host: 127.0.0.1:{}\r\n", server.addr.port()),
        "Content-Type: application/json\r\n",
        "X-Shop: eu\r\n",
        "webhook-id: evt_2\r\n",
        "Content-Length: 7\r\n",
    ] {
        assert!(req.contains(line), "{line:?} missing from {req}");
    }
    assert!(req.ends_with("\r\n\r\n{\"a\":1}"), "{req}");
}

#[tokio::test]
async fn query_and_credentials_of_the_url_are_sent() {
    let server = Scripted::start(vec![Answer::Keep(b"HTTP/1.1 204 No Content\r\n\r\n")], None).await;
    let url = url::Url::parse(&format!(
        "http://shop:p%40ss@127.0.0.1:{}/in/hook?src=walhook",
        server.addr.port()
    ))
    .unwrap();
    let c = client(&url);
    assert_eq!(c.post(&[], b"{}").await.unwrap().status, 204);
    let req = server.request(0);
    assert!(req.starts_with("POST /in/hook?src=walhook HTTP/1.1\r\n"), "{req}");
    // base64("shop:p@ss")
    assert!(req.contains("Authorization: Basic c2hvcDpwQHNz\r\n"), "{req}");
}

#[tokio::test]
async fn chunked_bodies_are_read_and_the_connection_kept() {
    let server = Scripted::start(
        vec![Answer::Keep(
            b"HTTP/1.1 500 Internal Server Error\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
        )],
        None,
    )
    .await;
    let c = client(&server.url("http", "127.0.0.1"));
    for _ in 0..2 {
        let resp = c.post(&[], b"{}").await.unwrap();
        assert_eq!(resp.status, 500);
        assert_eq!(resp.excerpt, b"hello world");
    }
    assert_eq!(server.accepted(), 1);
}

#[tokio::test]
async fn a_body_until_close_and_connection_close_are_not_reused() {
    let server = Scripted::start(
        vec![
            Answer::Close(b"HTTP/1.1 503 Busy\r\n\r\ntry later"),
            Answer::Keep(b"HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 0\r\n\r\n"),
            Answer::Keep(OK_HELLO),
        ],
        None,
    )
    .await;
    let c = client(&server.url("http", "127.0.0.1"));
    let resp = c.post(&[], b"{}").await.unwrap();
    assert_eq!((resp.status, resp.excerpt.as_slice()), (503, &b"try later"[..]));
    assert_eq!(c.post(&[], b"{}").await.unwrap().status, 200);
    assert_eq!(c.post(&[], b"{}").await.unwrap().status, 200);
    assert_eq!(server.accepted(), 3);
}

#[tokio::test]
async fn an_unframed_body_on_a_kept_connection_does_not_hold_the_answer() {
    // No Content-Length, not chunked, and the server keeps the connection: the status
    // counts at once; the connection is not used again.
    let server = Scripted::start(vec![Answer::Keep(b"HTTP/1.1 200 OK\r\n\r\nok")], None).await;
    let c = Client::new(
        &server.url("http", "127.0.0.1"),
        &[],
        opts(Duration::from_secs(5)),
    )
    .unwrap();
    let started = Instant::now();
    for _ in 0..2 {
        let resp = c.post(&[], b"{}").await.unwrap();
        assert_eq!((resp.status, resp.excerpt.as_slice()), (200, &b"ok"[..]));
    }
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "{:?}",
        started.elapsed()
    );
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn interim_responses_are_skipped() {
    let server = Scripted::start(
        vec![Answer::Keep(
            b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 204 No Content\r\n\r\n",
        )],
        None,
    )
    .await;
    let c = client(&server.url("http", "127.0.0.1"));
    assert_eq!(c.post(&[], b"{}").await.unwrap().status, 204);
}

#[tokio::test]
async fn a_connection_the_server_closed_while_idle_is_replaced() {
    // The server answers without announcing the close: the client pools the connection,
    // finds it closed on the next request and sends it again on a new one.
    let server = Scripted::start(vec![Answer::Close(OK_HELLO)], None).await;
    let c = client(&server.url("http", "127.0.0.1"));
    for _ in 0..3 {
        assert_eq!(c.post(&[], b"{}").await.unwrap().status, 200);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.accepted(), 3);
    assert_eq!(
        server.requests.lock().unwrap().len(),
        3,
        "no request answered twice"
    );
}

#[tokio::test]
async fn a_silent_server_times_out() {
    let server = Scripted::start(vec![Answer::Hang], None).await;
    let c = Client::new(
        &server.url("http", "127.0.0.1"),
        &[],
        opts(Duration::from_millis(300)),
    )
    .unwrap();
    let started = Instant::now();
    assert_eq!(c.post(&[], b"{}").await, Err(Error::Timeout));
    assert!(started.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn malformed_and_truncated_answers_are_errors_not_panics() {
    for bytes in [
        &b"garbage\r\n\r\n"[..],
        b"HTTP/1.1 200 OK\r\nContent-Length: nope\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n",
        b"HTTP/1.1 20",
    ] {
        let server = Scripted::start(vec![Answer::Close(bytes)], None).await;
        let c = client(&server.url("http", "127.0.0.1"));
        match c.post(&[], b"{}").await {
            Err(Error::Request(e)) => println!("{:?}: {e}", String::from_utf8_lossy(bytes)),
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(bytes)),
        }
    }
    // A success whose body is cut short still counts; the connection is dropped.
    let server = Scripted::start(
        vec![
            Answer::Close(b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort"),
            Answer::Keep(OK_HELLO),
        ],
        None,
    )
    .await;
    let c = client(&server.url("http", "127.0.0.1"));
    let resp = c.post(&[], b"{}").await.unwrap();
    assert_eq!((resp.status, resp.excerpt.as_slice()), (200, &b"short"[..]));
    assert_eq!(c.post(&[], b"{}").await.unwrap().status, 200);
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn a_huge_body_is_not_read() {
    let server = Scripted::start(
        vec![
            Answer::Keep(b"HTTP/1.1 200 OK\r\nContent-Length: 1000000000\r\n\r\nxxxxxxxxxx"),
            Answer::Keep(OK_HELLO),
        ],
        None,
    )
    .await;
    let c = client(&server.url("http", "127.0.0.1"));
    let resp = tokio::time::timeout(Duration::from_secs(1), c.post(&[], b"{}"))
        .await
        .expect("does not wait for a gigabyte")
        .unwrap();
    assert_eq!((resp.status, resp.excerpt.as_slice()), (200, &b"xxxxxxxxxx"[..]));
    // The connection is not pooled with a body still coming.
    assert_eq!(c.post(&[], b"{}").await.unwrap().status, 200);
    assert_eq!(server.accepted(), 2);
}

#[tokio::test]
async fn refused_connections_are_connect_errors() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = url::Url::parse(&format!("http://127.0.0.1:{port}/")).unwrap();
    match client(&url).post(&[], b"{}").await {
        Err(Error::Connect(e)) => assert!(e.contains(&port.to_string()), "{e}"),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn https_with_a_trusted_root() {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    let ca = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["localhost".to_string()])
        .unwrap()
        .signed_by(&key, &ca, &ca_key)
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let server_config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(
            vec![cert.der().clone()],
            rustls::pki_types::PrivatePkcs8KeyDer::from(key.serialize_der()).into(),
        )
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server_config));
    let server = Scripted::start(vec![Answer::Keep(OK_HELLO)], Some(acceptor)).await;
    let url = server.url("https", "localhost");

    // Not trusted by the Mozilla roots.
    match client(&url).post(&[], b"{}").await {
        Err(Error::Connect(e)) => assert!(e.contains("TLS"), "{e}"),
        other => panic!("{other:?}"),
    }
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let c = Client::new(
        &url,
        &[],
        Options {
            roots: Some(roots),
            ..opts(Duration::from_secs(2))
        },
    )
    .unwrap();
    for _ in 0..2 {
        let resp = c.post(&[], b"{}").await.unwrap();
        assert_eq!((resp.status, resp.excerpt.as_slice()), (200, &b"hello"[..]));
    }
    assert_eq!(
        server.accepted(),
        2,
        "one refused handshake, then one kept connection"
    );
}

#[test]
fn header_checks() {
    assert!(valid_header_name("X-Shop_1"));
    assert!(!valid_header_name("X Shop") && !valid_header_name("") && !valid_header_name("a:b"));
    assert!(valid_header_value("Bearer abc\tdef"));
    assert!(!valid_header_value("a\r\nInjected: 1"));
    assert!(reserved_header("Content-Length") && reserved_header("webhook-id") && !reserved_header("X-Id"));
}

#[test]
fn retry_after_is_seconds_or_an_http_date() {
    let now = std::time::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
    assert_eq!(parse_retry_after("120", now), Some(Duration::from_secs(120)));
    assert_eq!(parse_retry_after(" 0 ", now), Some(Duration::ZERO));
    // 2023-11-14T22:13:20Z is `now`; ten seconds later:
    assert_eq!(
        parse_retry_after("Tue, 14 Nov 2023 22:13:30 GMT", now),
        Some(Duration::from_secs(10))
    );
    // A date in the past is no delay.
    assert_eq!(
        parse_retry_after("Tue, 14 Nov 2023 22:00:00 GMT", now),
        Some(Duration::ZERO)
    );
    for bad in ["", "soon", "-5", "1.5", "Tue, 99 Nov 2023 22:13:30 GMT"] {
        assert_eq!(parse_retry_after(bad, now), None, "{bad}");
    }
    assert!(parse_retry_after("99999999999999999999999", now).is_some());
}

#[tokio::test]
async fn private_addresses_are_refused_at_every_connection_unless_allowed() {
    let server = Scripted::start(vec![Answer::Keep(OK_HELLO)], None).await;
    // "localhost" resolves to loopback now, whatever it resolved to when walhook started.
    for host in ["localhost", "127.0.0.1"] {
        let url = server.url("http", host);
        let strict = Client::new(
            &url,
            &[],
            Options {
                allow_private: false,
                ..opts(Duration::from_secs(2))
            },
        )
        .unwrap();
        match strict.post(&[], b"{}").await {
            Err(Error::Connect(e)) => assert!(e.contains("private") && e.contains("refused"), "{e}"),
            other => panic!("{host}: {other:?}"),
        }
    }
    assert_eq!(server.accepted(), 0, "no connection was made");
    let resp = client(&server.url("http", "localhost"))
        .post(&[], b"{}")
        .await
        .unwrap();
    assert_eq!(resp.status, 200);
}
