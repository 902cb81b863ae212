//! A webhook receiver on loopback that records every request and answers a scripted
//! status (204 by default), optionally after a delay.

use std::sync::atomic::{AtomicI64, AtomicU16, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::routing::any;
use axum::Router;
use walhook::lanes::sign::{verify_header, Secret};

#[derive(Debug, Clone)]
pub struct Received {
    /// When the answer was sent.
    pub at: Instant,
    /// When the request arrived (before any delay).
    pub arrived: Instant,
    /// The sender's address.
    pub peer: std::net::SocketAddr,
    /// What the tagger (see `Receiver::set_tagger`) said of the sender; "" without one.
    pub tag: String,
    pub id: String,
    pub timestamp: i64,
    pub signature: String,
    pub body: Bytes,
    /// What the receiver answered.
    pub status: u16,
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: HeaderMap,
}

impl Received {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }

    /// The value of header `name`, "" when absent.
    pub fn header(&self, name: &str) -> &str {
        self.headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("")
    }

    pub fn verifies(&self, secret: &str) -> bool {
        let s = Secret::parse(secret).unwrap();
        verify_header(&[s], &self.id, self.timestamp, &self.body, &self.signature)
    }
}

/// A request as it arrived, before any answer (kept even when the sender gave up or
/// died before the answer).
#[derive(Debug, Clone)]
pub struct Arrival {
    pub arrived: Instant,
    pub id: String,
    pub tag: String,
}

struct Inner {
    log: Mutex<Vec<Received>>,
    arrivals: Mutex<Vec<Arrival>>,
    status: AtomicU16,
    delay_ms: AtomicU64,
    /// The next request waits this long before its answer (once), like a receiver's
    /// first request after a cold start; 0 for none.
    once_delay_ms: AtomicU64,
    /// Out of 1000 requests, how many get a 500 (on top of `status`).
    fail_per_mille: AtomicU64,
    /// Events of this `product_id` (in `data.key`) get a 500; 0 for none.
    poison: AtomicI64,
    tagger: Mutex<Option<Tagger>>,
    /// The receiver's own address.
    addr: std::net::SocketAddr,
}

/// Called with the request's peer address and the receiver's own.
type Tagger = Arc<dyn Fn(std::net::SocketAddr, std::net::SocketAddr) -> String + Send + Sync>;

pub struct Receiver {
    inner: Arc<Inner>,
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Receiver {
    pub async fn start() -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            log: Mutex::new(Vec::new()),
            arrivals: Mutex::new(Vec::new()),
            status: AtomicU16::new(204),
            delay_ms: AtomicU64::new(0),
            once_delay_ms: AtomicU64::new(0),
            fail_per_mille: AtomicU64::new(0),
            poison: AtomicI64::new(0),
            tagger: Mutex::new(None),
            addr,
        });
        let app = Router::new()
            .route("/", any(handle))
            .route("/*path", any(handle))
            .layer(axum::extract::DefaultBodyLimit::disable())
            .with_state(inner.clone());
        let task = tokio::spawn(async move {
            let app = app.into_make_service_with_connect_info::<std::net::SocketAddr>();
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { inner, addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    pub fn set_status(&self, status: u16) {
        self.inner.status.store(status, Ordering::SeqCst);
    }

    /// Answers 500 to this fraction of requests, at random.
    pub fn set_failure_rate(&self, rate: f64) {
        self.inner
            .fail_per_mille
            .store((rate * 1000.0) as u64, Ordering::SeqCst);
    }

    /// Answers 500 to every event whose `data.key.product_id` is `key` (0: none).
    pub fn set_poison(&self, key: i64) {
        self.inner.poison.store(key, Ordering::SeqCst);
    }

    /// Names the sender of every request from here on, when it arrives (e.g. which
    /// process owns the connection), from its peer address and the receiver's own. It
    /// may block: it runs off the receiver's async threads.
    pub fn set_tagger(
        &self,
        tagger: impl Fn(std::net::SocketAddr, std::net::SocketAddr) -> String + Send + Sync + 'static,
    ) {
        *self.inner.tagger.lock().unwrap() = Some(Arc::new(tagger));
    }

    pub fn set_delay(&self, delay: Duration) {
        self.inner
            .delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// The next request (only that one) is answered `delay` after it arrived, as a
    /// receiver answers its first request after a cold start (a JIT, a connection pool,
    /// a serverless function starting).
    pub fn delay_next_once(&self, delay: Duration) {
        self.inner
            .once_delay_ms
            .store(delay.as_millis() as u64, Ordering::SeqCst);
    }

    /// Every request so far, in arrival order.
    pub fn all(&self) -> Vec<Received> {
        self.inner.log.lock().unwrap().clone()
    }

    /// Every request so far as it arrived, answered or not.
    pub fn arrivals(&self) -> Vec<Arrival> {
        self.inner.arrivals.lock().unwrap().clone()
    }

    /// Requests answered with 2xx.
    pub fn delivered(&self) -> Vec<Received> {
        self.all()
            .into_iter()
            .filter(|r| (200..300).contains(&r.status))
            .collect()
    }

    /// Waits for the first request, whatever it was answered, or panics after `timeout`.
    pub async fn wait_for_any(&self, timeout: Duration, what: &str) -> Received {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(first) = self.all().into_iter().next() {
                return first;
            }
            if Instant::now() > deadline {
                panic!("timed out after {timeout:?} waiting for {what}");
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Waits until `n` distinct events were delivered (retries and replays of one count
    /// once), or panics after `timeout`.
    pub async fn wait_unique(&self, timeout: Duration, what: &str, n: usize) -> Vec<Received> {
        self.wait_for(timeout, what, |g| {
            g.iter()
                .map(|r| &r.id)
                .collect::<std::collections::HashSet<_>>()
                .len()
                >= n
        })
        .await
    }

    /// Waits until `cond` holds on the delivered requests, or panics after `timeout`.
    pub async fn wait_for(
        &self,
        timeout: Duration,
        what: &str,
        cond: impl Fn(&[Received]) -> bool,
    ) -> Vec<Received> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.delivered();
            if cond(&got) {
                return got;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}; {} delivered so far",
                    got.len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(
    State(inner): State<Arc<Inner>>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> StatusCode {
    // Only walhook's requests count. The tests pick free ports by binding port 0, so a
    // port one test just released (a walhook's admin port, say) can be this receiver's
    // by the time that test polls it: its GET /readyz must not pass for a delivery.
    let agent = headers
        .get("user-agent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !agent.starts_with("walhook/") {
        eprintln!("receiver: refused a stray {method} {uri} (user agent {agent:?}), not from walhook");
        return StatusCode::MISDIRECTED_REQUEST;
    }
    let arrived = Instant::now();
    let tagger = inner.tagger.lock().unwrap().clone();
    let tag = match tagger {
        Some(t) => {
            let own = inner.addr;
            tokio::task::spawn_blocking(move || t(peer, own)).await.unwrap()
        }
        None => String::new(),
    };
    inner.arrivals.lock().unwrap().push(Arrival {
        arrived,
        id: headers
            .get("webhook-id")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string(),
        tag: tag.clone(),
    });
    let delay = inner.delay_ms.load(Ordering::SeqCst) + inner.once_delay_ms.swap(0, Ordering::SeqCst);
    if delay > 0 {
        tokio::time::sleep(Duration::from_millis(delay)).await;
    }
    let mut status = inner.status.load(Ordering::SeqCst);
    let fail = inner.fail_per_mille.load(Ordering::SeqCst);
    if fail > 0 && rand::Rng::gen_range(&mut rand::thread_rng(), 0..1000) < fail {
        status = 500;
    }
    let poison = inner.poison.load(Ordering::SeqCst);
    if poison != 0 {
        let json: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
        if json["data"]["key"]["product_id"].as_i64() == Some(poison) {
            status = 500;
        }
    }
    let get = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    };
    inner.log.lock().unwrap().push(Received {
        at: Instant::now(),
        arrived,
        peer,
        tag,
        id: get("webhook-id"),
        timestamp: get("webhook-timestamp").parse().unwrap_or(0),
        signature: get("webhook-signature"),
        body,
        status,
        method: method.to_string(),
        path: uri.path_and_query().map(|p| p.to_string()).unwrap_or_default(),
        headers,
    });
    StatusCode::from_u16(status).unwrap()
}
