//! Benchmark receiver: answers every POST with 204 (or 500 with `--fail`, or 500 to a
//! share of requests with `--fail-rate 0.2`), counts
//! events (a batch's JSON array counts each of its events), records the arrival time of
//! the first and last, the commit-to-receipt latency of every event (from the body's
//! `timestamp`), and verifies the signature of one request in `--sample` (default 100).
//! `GET /stats` returns the counters as JSON, `GET /latency` the latencies' percentiles;
//! `POST /reset` clears them; `POST /fail` and `POST /heal` turn failing every request on
//! and off. `--delay-ms N` answers each webhook N ms after it arrived, as a receiver that
//! does some work per request (connections wait, not the receiver's one thread). Runs on
//! one thread so it takes at most one core.
//!
//! Usage: walhook-bench-receiver --listen 127.0.0.1:PORT --secret whsec_... [--fail]
//!        [--fail-rate R] [--sample N] [--delay-ms N]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use memchr::memmem::Finder;
use sha2::Sha256;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Request heads larger than this are refused.
const MAX_HEAD: usize = 64 * 1024;

#[derive(Default)]
struct Stats {
    /// Events received.
    count: AtomicU64,
    requests: AtomicU64,
    first_us: AtomicU64,
    last_us: AtomicU64,
    sampled: AtomicU64,
    bad_signatures: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

struct App {
    key: Vec<u8>,
    fail: AtomicBool,
    /// Out of 1,000 requests, how many get a 500 (spread evenly, not in runs).
    fail_per_mille: u64,
    sample: u64,
    /// Each webhook is answered this long after it arrived.
    delay: std::time::Duration,
    stats: Stats,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The body's first `"timestamp":"..."` (the commit time) in Unix microseconds. Looks at
/// the bytes of the timestamp alone: a batch's events are read one after another, and
/// validating the rest of the body for each would make a batch cost its square.
fn commit_time_us(body: &[u8]) -> Option<u64> {
    static FIELD: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"\"timestamp\":\""));
    let at = FIELD.find(body)? + FIELD.needle().len();
    let len = memchr::memchr(b'"', &body[at..])?;
    let text = std::str::from_utf8(&body[at..at + len]).ok()?;
    let t = humantime::parse_rfc3339(text).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_micros() as u64)
}

/// The events of a body: one, or each of a batch's (`[{"id":"evt_...", ...}, ...]`), with
/// their commit times.
fn events(body: &[u8]) -> (u64, Vec<u64>) {
    static ELEMENT: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(b"{\"id\":\"evt_"));
    if body.first() != Some(&b'[') {
        return (1, commit_time_us(body).into_iter().collect());
    }
    let (mut n, mut times) = (0, Vec::new());
    let mut at = 0;
    while let Some(i) = ELEMENT.find(&body[at..]) {
        n += 1;
        at += i + ELEMENT.needle().len();
        times.extend(commit_time_us(&body[at..]));
    }
    (n, times)
}

/// The Standard Webhooks headers of a request.
#[derive(Default)]
struct Signed {
    id: String,
    timestamp: String,
    signature: String,
}

fn verify(key: &[u8], signed: &Signed, body: &[u8]) -> bool {
    let get = |n: &str| match n {
        "webhook-id" => signed.id.as_str(),
        "webhook-timestamp" => signed.timestamp.as_str(),
        _ => signed.signature.as_str(),
    };
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(key) else {
        return false;
    };
    mac.update(get("webhook-id").as_bytes());
    mac.update(b".");
    mac.update(get("webhook-timestamp").as_bytes());
    mac.update(b".");
    mac.update(body);
    let expected = STANDARD.encode(mac.finalize().into_bytes());
    get("webhook-signature")
        .split(' ')
        .any(|s| s.strip_prefix("v1,") == Some(expected.as_str()))
}

/// Records one webhook; returns the status to answer.
fn hook(app: &App, signed: &Signed, body: &[u8]) -> u16 {
    let now = now_us();
    let s = &app.stats;
    let n = s.requests.fetch_add(1, Ordering::Relaxed);
    let (count, commits) = events(body);
    let _ = s
        .first_us
        .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    s.last_us.fetch_max(now, Ordering::Relaxed);
    s.latencies_us
        .lock()
        .unwrap()
        .extend(commits.iter().map(|c| now.saturating_sub(*c)));
    // Counted last: a reader that sees the count sees the arrival time too.
    s.count.fetch_add(count, Ordering::Relaxed);
    if n.is_multiple_of(app.sample) {
        s.sampled.fetch_add(1, Ordering::Relaxed);
        if !verify(&app.key, signed, body) {
            s.bad_signatures.fetch_add(1, Ordering::Relaxed);
        }
    }
    // A multiplicative hash of the request number: failures spread without a random
    // number generator, the same in every run.
    let spread = (n.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 32) % 1000;
    if app.fail.load(Ordering::Relaxed) || spread < app.fail_per_mille {
        500
    } else {
        204
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// The counters. Benchmarks poll this every 20 ms while they wait, so it costs nothing
/// that grows with the events received (the latencies are sorted only by `/latency`).
fn stats(app: &App) -> String {
    let s = &app.stats;
    serde_json::json!({
        "count": s.count.load(Ordering::Relaxed),
        "requests": s.requests.load(Ordering::Relaxed),
        "first_us": s.first_us.load(Ordering::Relaxed),
        "last_us": s.last_us.load(Ordering::Relaxed),
        "sampled": s.sampled.load(Ordering::Relaxed),
        "bad_signatures": s.bad_signatures.load(Ordering::Relaxed),
    })
    .to_string()
}

/// The commit-to-receipt latencies: how many, median, 99th percentile and the largest.
fn latency(app: &App) -> String {
    let mut lat = app.stats.latencies_us.lock().unwrap().clone();
    lat.sort_unstable();
    serde_json::json!({
        "n": lat.len(),
        "p50": percentile(&lat, 0.50),
        "p99": percentile(&lat, 0.99),
        "max": lat.last().copied().unwrap_or(0),
    })
    .to_string()
}

fn reset(app: &App) {
    let s = &app.stats;
    for c in [
        &s.count,
        &s.requests,
        &s.first_us,
        &s.last_us,
        &s.sampled,
        &s.bad_signatures,
    ] {
        c.store(0, Ordering::Relaxed);
    }
    s.latencies_us.lock().unwrap().clear();
}

/// Serves one keep-alive connection: a minimal HTTP/1.1 server (requests with
/// Content-Length bodies, no pipelining needed), so the receiver spends as little CPU
/// per request as it can on a machine it shares with what it measures.
async fn serve(app: Arc<App>, mut stream: TcpStream) {
    let _ = stream.set_nodelay(true);
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);
    loop {
        // Read until a whole head is buffered.
        let (head_len, method_get, path, content_length, signed, close) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 32];
            let mut req = httparse::Request::new(&mut headers);
            match req.parse(&buf) {
                Ok(httparse::Status::Complete(len)) => {
                    let mut content_length = 0usize;
                    let mut signed = Signed::default();
                    let mut close = false;
                    for h in req.headers.iter() {
                        let value = std::str::from_utf8(h.value).unwrap_or("");
                        if h.name.eq_ignore_ascii_case("content-length") {
                            content_length = value.trim().parse().unwrap_or(0);
                        } else if h.name.eq_ignore_ascii_case("webhook-id") {
                            signed.id = value.to_string();
                        } else if h.name.eq_ignore_ascii_case("webhook-timestamp") {
                            signed.timestamp = value.to_string();
                        } else if h.name.eq_ignore_ascii_case("webhook-signature") {
                            signed.signature = value.to_string();
                        } else if h.name.eq_ignore_ascii_case("connection") {
                            close = value.eq_ignore_ascii_case("close");
                        }
                    }
                    let get = req.method == Some("GET");
                    let path = req.path.unwrap_or("/").to_string();
                    break (len, get, path, content_length, signed, close);
                }
                Ok(httparse::Status::Partial) if buf.len() < MAX_HEAD => {}
                _ => return,
            }
            if !read_more(&mut stream, &mut buf).await {
                return;
            }
        };
        while buf.len() < head_len + content_length {
            if !read_more(&mut stream, &mut buf).await {
                return;
            }
        }
        let report = match (method_get, path.as_str()) {
            (true, "/stats") => Some(stats(&app)),
            (true, "/latency") => Some(latency(&app)),
            _ => None,
        };
        let response = if let Some(body) = report {
            format!(
                "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
        } else if !method_get && path == "/reset" {
            reset(&app);
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n".to_string()
        } else if !method_get && (path == "/fail" || path == "/heal") {
            app.fail.store(path == "/fail", Ordering::Relaxed);
            "HTTP/1.1 200 OK\r\ncontent-length: 3\r\n\r\nok\n".to_string()
        } else if !method_get {
            if !app.delay.is_zero() {
                tokio::time::sleep(app.delay).await;
            }
            match hook(&app, &signed, &buf[head_len..head_len + content_length]) {
                204 => "HTTP/1.1 204 No Content\r\n\r\n".to_string(),
                _ => "HTTP/1.1 500 Internal Server Error\r\ncontent-length: 0\r\n\r\n".to_string(),
            }
        } else {
            "HTTP/1.1 404 Not Found\r\ncontent-length: 0\r\n\r\n".to_string()
        };
        buf.drain(..head_len + content_length);
        if stream.write_all(response.as_bytes()).await.is_err() || close {
            return;
        }
    }
}

/// Reads more bytes into `buf`; false at end of stream or on an error.
async fn read_more(stream: &mut TcpStream, buf: &mut Vec<u8>) -> bool {
    buf.reserve(16 * 1024);
    matches!(stream.read_buf(buf).await, Ok(n) if n > 0)
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let arg = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let listen = arg("--listen").unwrap_or_else(|| "127.0.0.1:18080".into());
    let secret = arg("--secret").expect("--secret whsec_... is required");
    let key = STANDARD
        .decode(
            secret
                .strip_prefix("whsec_")
                .expect("secret must start with whsec_"),
        )
        .expect("secret must be base64");
    let sample = arg("--sample")
        .and_then(|s| s.parse().ok())
        .unwrap_or(100u64)
        .max(1);
    let app = Arc::new(App {
        key,
        fail: AtomicBool::new(args.iter().any(|a| a == "--fail")),
        fail_per_mille: arg("--fail-rate")
            .and_then(|r| r.parse::<f64>().ok())
            .map_or(0, |r| (r.clamp(0.0, 1.0) * 1000.0) as u64),
        sample,
        delay: std::time::Duration::from_millis(arg("--delay-ms").and_then(|d| d.parse().ok()).unwrap_or(0)),
        stats: Stats::default(),
    });
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
        loop {
            if let Ok((stream, _)) = listener.accept().await {
                tokio::spawn(serve(app.clone(), stream));
            }
        }
    });
}
