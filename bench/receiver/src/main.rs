//! Benchmark receiver: answers every POST with 204 (or 500 with `--fail`), counts
//! requests, records the arrival time of the first and last, the commit-to-receipt
//! latency of every event (from the body's `timestamp`), and verifies the signature of one
//! request in `--sample` (default 100). `GET /stats` returns the figures as JSON;
//! `POST /reset` clears them. Runs on one thread so it takes at most one core.
//!
//! Usage: walhook-bench-receiver --listen 127.0.0.1:PORT --secret whsec_... [--fail] [--sample N]

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use hmac::{Hmac, Mac};
use sha2::Sha256;

#[derive(Default)]
struct Stats {
    count: AtomicU64,
    first_us: AtomicU64,
    last_us: AtomicU64,
    sampled: AtomicU64,
    bad_signatures: AtomicU64,
    latencies_us: Mutex<Vec<u64>>,
}

struct App {
    key: Vec<u8>,
    fail: AtomicBool,
    sample: u64,
    stats: Stats,
}

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// The body's `"timestamp":"..."` (the commit time) in Unix microseconds.
fn commit_time_us(body: &[u8]) -> Option<u64> {
    let text = std::str::from_utf8(body).ok()?;
    let at = text.find("\"timestamp\":\"")? + 13;
    let end = at + text[at..].find('"')?;
    let t = humantime::parse_rfc3339(&text[at..end]).ok()?;
    Some(t.duration_since(UNIX_EPOCH).ok()?.as_micros() as u64)
}

fn verify(key: &[u8], headers: &HeaderMap, body: &[u8]) -> bool {
    let get = |n: &str| headers.get(n).and_then(|v| v.to_str().ok()).unwrap_or("");
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

async fn hook(State(app): State<Arc<App>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let now = now_us();
    let s = &app.stats;
    let n = s.count.fetch_add(1, Ordering::Relaxed);
    let _ = s
        .first_us
        .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
    s.last_us.fetch_max(now, Ordering::Relaxed);
    if let Some(commit) = commit_time_us(&body) {
        s.latencies_us.lock().unwrap().push(now.saturating_sub(commit));
    }
    if n % app.sample == 0 {
        s.sampled.fetch_add(1, Ordering::Relaxed);
        if !verify(&app.key, &headers, &body) {
            s.bad_signatures.fetch_add(1, Ordering::Relaxed);
        }
    }
    if app.fail.load(Ordering::Relaxed) {
        StatusCode::INTERNAL_SERVER_ERROR
    } else {
        StatusCode::NO_CONTENT
    }
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

async fn stats(State(app): State<Arc<App>>) -> String {
    let s = &app.stats;
    let mut lat = s.latencies_us.lock().unwrap().clone();
    lat.sort_unstable();
    serde_json::json!({
        "count": s.count.load(Ordering::Relaxed),
        "first_us": s.first_us.load(Ordering::Relaxed),
        "last_us": s.last_us.load(Ordering::Relaxed),
        "sampled": s.sampled.load(Ordering::Relaxed),
        "bad_signatures": s.bad_signatures.load(Ordering::Relaxed),
        "latency_us": {
            "n": lat.len(),
            "p50": percentile(&lat, 0.50),
            "p99": percentile(&lat, 0.99),
            "max": lat.last().copied().unwrap_or(0),
        }
    })
    .to_string()
}

async fn reset(State(app): State<Arc<App>>) -> &'static str {
    let s = &app.stats;
    for c in [&s.count, &s.first_us, &s.last_us, &s.sampled, &s.bad_signatures] {
        c.store(0, Ordering::Relaxed);
    }
    s.latencies_us.lock().unwrap().clear();
    "ok\n"
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
        sample,
        stats: Stats::default(),
    });
    let router = Router::new()
        .route("/stats", get(stats))
        .route("/reset", post(reset))
        .route("/*path", post(hook))
        .with_state(app);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let listener = tokio::net::TcpListener::bind(&listen).await.expect("bind");
        axum::serve(listener, router).await.expect("serve");
    });
}
