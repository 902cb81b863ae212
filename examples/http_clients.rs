//! CPU per webhook request of walhook's own HTTP/1.1 client (`walhook::lanes::http`)
//! against hyper 1.x's connection-level client (`hyper::client::conn::http1`) with a small
//! keep-alive pool of our own: the measurement behind the choice of moving deliveries to
//! hyper. It writes its table to bench/results/http_clients.md.
//!
//! Both clients post the same requests to the bench receiver (bench/receiver, started here
//! as a child process) from a tokio runtime with one worker thread, C requests at a time,
//! each on its own keep-alive connection. A round sends N requests and measures this
//! process's CPU time (user + system, from /proc/self/stat) and wall time. The clients take
//! turns round by round (ours first, then hyper first, and so on), so both see the same
//! machine.
//!
//! Build the receiver into the same target directory first:
//!
//! ```sh
//! cargo build --release --manifest-path bench/receiver/Cargo.toml
//! cargo run --release --example http_clients -- [--requests N] [--body-bytes B] [--concurrency C]
//! ```

use std::future::Future;
use std::io::{Read as _, Write as _};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{bail, Context as _};
use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::http1::{self, SendRequest};
use hyper::header::{HeaderName, HeaderValue, CONTENT_TYPE, HOST, RETRY_AFTER, USER_AGENT};
use hyper::{Method, Request, Uri};
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;
use walhook::lanes::http::{parse_retry_after, Client, Options, Response, EXCERPT};

/// The allocator walhook itself runs with (src/main.rs).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The receiver's signing secret (it checks one request in 100; the signature sent here is
/// a fixed stand-in, so those checks fail, which does not matter here).
const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
/// A Standard Webhooks signature header's shape, for the request's bytes.
const SIGNATURE: &str = "v1,K5oZfzN95Z9UVu1EsfQmfVNQhnkZ2pj9o9NDN/H/pI4=";
const TIMESTAMP: i64 = 1_796_378_400;
/// Each attempt's bound, as a subscriber's `timeout`.
const TIMEOUT: Duration = Duration::from_secs(30);
/// Clock ticks per second of the CPU times in /proc: USER_HZ, 100 on Linux whatever the
/// kernel's own HZ.
const CLOCK_TICKS: u64 = 100;

const WEBHOOK_ID: HeaderName = HeaderName::from_static("webhook-id");
const WEBHOOK_TIMESTAMP: HeaderName = HeaderName::from_static("webhook-timestamp");
const WEBHOOK_SIGNATURE: HeaderName = HeaderName::from_static("webhook-signature");

#[derive(Parser)]
struct Args {
    /// Requests per round.
    #[arg(long, default_value_t = 200_000)]
    requests: u64,
    /// Bytes of each request's JSON body.
    #[arg(long, default_value_t = 600)]
    body_bytes: usize,
    /// Requests in flight, each on its own keep-alive connection.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Measured rounds per client.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// The receiver binary (default: release/walhook-bench-receiver in $CARGO_TARGET_DIR,
    /// else in ./target).
    #[arg(long)]
    receiver: Option<PathBuf>,
    /// Where the markdown table goes (default: bench/results/http_clients.md).
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if args.requests == 0 || args.concurrency == 0 || args.rounds == 0 {
        bail!("--requests, --concurrency and --rounds must be at least 1");
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let receiver_path = args.receiver.clone().unwrap_or_else(|| {
        let target = std::env::var_os("CARGO_TARGET_DIR").map_or_else(|| root.join("target"), PathBuf::from);
        target.join("release/walhook-bench-receiver")
    });
    if !receiver_path.exists() {
        bail!(
            "no receiver at {}: build it with `cargo build --release --manifest-path \
             bench/receiver/Cargo.toml` (same CARGO_TARGET_DIR) or pass --receiver PATH",
            receiver_path.display()
        );
    }
    let receiver = Receiver::start(&receiver_path)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()?;
    let bench = Bench {
        rt,
        addr: receiver.addr,
        body: event_body(args.body_bytes),
        concurrency: args.concurrency,
    };
    eprintln!(
        "{} rounds of {} requests per client, {}-byte bodies, {} connections",
        args.rounds,
        args.requests,
        bench.body.len(),
        args.concurrency
    );

    // A short unrecorded round each: connections, allocator and caches warm up.
    let warm_up = (args.requests / 10).max(1);
    bench.run(Which::Ours, warm_up)?;
    bench.run(Which::Hyper, warm_up)?;
    let (mut ours, mut hyper) = (Vec::new(), Vec::new());
    for r in 0..args.rounds {
        let order = match r % 2 {
            0 => [Which::Ours, Which::Hyper],
            _ => [Which::Hyper, Which::Ours],
        };
        for which in order {
            let figures = bench.run(which, args.requests)?;
            eprintln!(
                "round {}: {:<5} {:6.2} CPU us/request {:9.0} requests/s",
                r + 1,
                which.name(),
                figures.cpu_us,
                figures.per_s
            );
            match which {
                Which::Ours => ours.push(figures),
                Which::Hyper => hyper.push(figures),
            }
        }
    }

    let report = report(&args, bench.body.len(), &ours, &hyper);
    println!("{report}");
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| root.join("bench/results/http_clients.md"));
    std::fs::write(&out, report).with_context(|| format!("writing {}", out.display()))?;
    eprintln!("written to {}", out.display());
    Ok(())
}

#[derive(Clone, Copy)]
enum Which {
    Ours,
    Hyper,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::Ours => "ours",
            Which::Hyper => "hyper",
        }
    }
}

/// One round's figures.
struct Figures {
    /// CPU microseconds (user + system) per request.
    cpu_us: f64,
    requests: u64,
    wall: Duration,
    per_s: f64,
}

struct Bench {
    rt: tokio::runtime::Runtime,
    addr: SocketAddr,
    body: Vec<u8>,
    concurrency: usize,
}

impl Bench {
    /// Sends `n` requests with a new client of kind `which` and measures the round.
    fn run(&self, which: Which, n: u64) -> anyhow::Result<Figures> {
        control(self.addr, "POST", "/reset")?;
        let cpu = cpu_time()?;
        let start = Instant::now();
        match which {
            Which::Ours => self.rt.block_on(round(Ours::new(self)?, n, self.concurrency)),
            Which::Hyper => self.rt.block_on(round(Hyper::new(self), n, self.concurrency)),
        }
        .map_err(|e| anyhow::anyhow!("{}: {e}", which.name()))?;
        let wall = start.elapsed();
        let cpu = cpu_time()? - cpu;
        let stats: serde_json::Value = serde_json::from_str(&control(self.addr, "GET", "/stats")?)?;
        let received = stats["count"].as_u64().unwrap_or(0);
        if received != n {
            bail!(
                "{}: the receiver counted {received} requests of {n}",
                which.name()
            );
        }
        Ok(Figures {
            cpu_us: cpu.as_secs_f64() * 1e6 / n as f64,
            requests: n,
            wall,
            per_s: n as f64 / wall.as_secs_f64(),
        })
    }
}

/// A client under test: makes request `n` (fresh headers, as a delivery makes them per
/// event), sends it, reads the answer, and returns its status.
trait Poster: Send + Sync + 'static {
    fn post(&self, n: u64) -> impl Future<Output = Result<u16, String>> + Send;
}

/// Sends requests 0..n through `client`, `concurrency` at a time, as a lane's in-flight
/// deliveries do; stops at the first failure.
async fn round<P: Poster>(client: P, n: u64, concurrency: usize) -> Result<(), String> {
    let client = Arc::new(client);
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..concurrency {
        let (client, next) = (client.clone(), next.clone());
        tasks.spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    return Ok(());
                }
                match client.post(i).await {
                    Ok(status) if (200..300).contains(&status) => {}
                    Ok(status) => return Err(format!("request {i}: HTTP {status}")),
                    Err(e) => return Err(format!("request {i}: {e}")),
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.map_err(|e| e.to_string())??;
    }
    Ok(())
}

/// The varying Standard Webhooks header values of request `n`: id, timestamp, signature.
fn webhook_headers(n: u64) -> [String; 3] {
    [
        format!("msg_{n:020}"),
        TIMESTAMP.to_string(),
        SIGNATURE.to_string(),
    ]
}

/// walhook's client, used as src/lanes/deliver.rs uses it: one head per request from
/// `request_head`, with a small body inline, sent with `send_parts`.
struct Ours {
    client: Client,
    body: Vec<u8>,
}

impl Ours {
    fn new(bench: &Bench) -> anyhow::Result<Ours> {
        let url = url::Url::parse(&format!("http://{}/hook", bench.addr))?;
        let options = Options {
            timeout: TIMEOUT,
            connect_timeout: Duration::from_secs(10),
            max_idle: bench.concurrency,
            idle_timeout: Duration::from_secs(60),
            roots: None,
            client_auth: None,
            proxy: None,
            allow_private: true,
        };
        let client = Client::new(&url, &[], options).map_err(anyhow::Error::msg)?;
        Ok(Ours {
            client,
            body: bench.body.clone(),
        })
    }
}

impl Poster for Ours {
    async fn post(&self, n: u64) -> Result<u16, String> {
        let [id, ts, signature] = webhook_headers(n);
        let headers = [
            ("webhook-id", id.as_str()),
            ("webhook-timestamp", ts.as_str()),
            ("webhook-signature", signature.as_str()),
        ];
        let len = self.body.len();
        let mut head = self
            .client
            .request_head("POST", "application/json", &headers, len, len);
        head.extend_from_slice(&self.body);
        let response = self
            .client
            .send_parts(&head, &[])
            .await
            .map_err(|e| e.to_string())?;
        Ok(response.status)
    }
}

/// hyper's connection-level HTTP/1.1 client with a pool of idle connections, each driven
/// by a task of its own; answers become walhook's `Response` (status, body excerpt,
/// Retry-After), as a delivery would need them.
struct Hyper {
    addr: SocketAddr,
    idle: Mutex<Vec<SendRequest<Full<Bytes>>>>,
    max_idle: usize,
    uri: Uri,
    host: HeaderValue,
    user_agent: HeaderValue,
    body: Vec<u8>,
}

impl Hyper {
    fn new(bench: &Bench) -> Hyper {
        Hyper {
            addr: bench.addr,
            idle: Mutex::new(Vec::new()),
            max_idle: bench.concurrency,
            uri: Uri::from_static("/hook"),
            host: HeaderValue::try_from(bench.addr.to_string()).expect("an address is a header value"),
            user_agent: HeaderValue::from_static(concat!("walhook/", env!("CARGO_PKG_VERSION"))),
            body: bench.body.clone(),
        }
    }

    /// A connection ready for a request: an idle one that still is, else a new one.
    async fn ready(&self) -> Result<SendRequest<Full<Bytes>>, String> {
        loop {
            let Some(mut sender) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() else {
                break;
            };
            if sender.ready().await.is_ok() {
                return Ok(sender);
            }
        }
        let tcp = TcpStream::connect(self.addr)
            .await
            .map_err(|e| format!("connect: {e}"))?;
        let _ = tcp.set_nodelay(true);
        let (sender, conn) = http1::handshake(TokioIo::new(tcp))
            .await
            .map_err(|e| format!("handshake: {e}"))?;
        // The connection's own task reads and writes; it ends when the sender is dropped.
        tokio::spawn(async move {
            let _ = conn.await;
        });
        Ok(sender)
    }

    async fn exchange(&self, req: Request<Full<Bytes>>) -> Result<Response, String> {
        let mut sender = self.ready().await?;
        let response = sender.send_request(req).await.map_err(|e| e.to_string())?;
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_retry_after(v, SystemTime::now()));
        let body = response
            .into_body()
            .collect()
            .await
            .map_err(|e| e.to_string())?
            .to_bytes();
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(sender);
        }
        Ok(Response {
            status,
            excerpt: body[..body.len().min(EXCERPT)].to_vec(),
            retry_after,
        })
    }
}

impl Poster for Hyper {
    async fn post(&self, n: u64) -> Result<u16, String> {
        let [id, ts, signature] = webhook_headers(n);
        let req = Request::builder()
            .method(Method::POST)
            .uri(self.uri.clone())
            .header(HOST, self.host.clone())
            .header(USER_AGENT, self.user_agent.clone())
            .header(CONTENT_TYPE, HeaderValue::from_static("application/json"))
            .header(WEBHOOK_ID, id)
            .header(WEBHOOK_TIMESTAMP, ts)
            .header(WEBHOOK_SIGNATURE, signature)
            .body(Full::new(Bytes::copy_from_slice(&self.body)))
            .map_err(|e| e.to_string())?;
        match tokio::time::timeout(TIMEOUT, self.exchange(req)).await {
            Ok(response) => Ok(response?.status),
            Err(_) => Err("timed out".into()),
        }
    }
}

/// The bench receiver as a child process, stopped when dropped.
struct Receiver {
    child: Child,
    addr: SocketAddr,
}

impl Receiver {
    fn start(path: &Path) -> anyhow::Result<Receiver> {
        // A free port: bound, noted, let go.
        let addr = std::net::TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let child = Command::new(path)
            .args(["--listen", &addr.to_string(), "--secret", SECRET])
            .stdout(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {}", path.display()))?;
        let receiver = Receiver { child, addr };
        for _ in 0..100 {
            if std::net::TcpStream::connect(addr).is_ok() {
                return Ok(receiver);
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("the receiver did not listen on {addr} within 5 s")
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Sends `method path` to the receiver on a connection of its own (neither client under
/// test) and returns the response body.
fn control(addr: SocketAddr, method: &str, path: &str) -> anyhow::Result<String> {
    let mut stream = std::net::TcpStream::connect(addr)?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    stream.read_to_string(&mut text)?;
    match text.split_once("\r\n\r\n") {
        Some((head, body)) if head.starts_with("HTTP/1.1 200") => Ok(body.to_string()),
        _ => bail!("{method} {path}: unexpected answer {text:?}"),
    }
}

/// CPU time this process has used so far, user and system, from /proc/self/stat.
fn cpu_time() -> anyhow::Result<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat")?;
    // After the command name (in parentheses, may hold spaces) come the fields from the
    // third on: utime is the 14th, stime the 15th, in clock ticks.
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .context("/proc/self/stat without a command name")?
        .1
        .split_whitespace()
        .collect();
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .context("/proc/self/stat without utime and stime")
    };
    let ticks = ticks(11)? + ticks(12)?;
    Ok(Duration::from_micros(ticks * 1_000_000 / CLOCK_TICKS))
}

/// A JSON event of about `size` bytes, shaped like walhook's standard body.
fn event_body(size: usize) -> Vec<u8> {
    let mut body = String::from(
        r#"{"id":"evt_01JEQ4Z8K3M5N7P9R1S3T5V7X9","type":"stock.changed","timestamp":"2026-12-04T10:00:00.000000Z","source":{"schema":"public","table":"stock","lsn":"0/1A2B3C4D"},"data":{"product_id":48213,"warehouse":"north","quantity":17,"note":""#,
    );
    let end = "\"}}";
    let pad = size.saturating_sub(body.len() + end.len());
    body.extend(std::iter::repeat_n('x', pad));
    body.push_str(end);
    body.into_bytes()
}

fn median(values: impl Iterator<Item = f64>) -> f64 {
    let mut v: Vec<f64> = values.collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

/// "median (min-max)" of some figures.
fn spread(values: &[f64], digits: usize) -> String {
    let min = values.iter().copied().fold(f64::INFINITY, f64::min);
    let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let m = median(values.iter().copied());
    format!("{m:.digits$} ({min:.digits$}-{max:.digits$})")
}

/// The results as markdown.
fn report(args: &Args, body_len: usize, ours: &[Figures], hyper: &[Figures]) -> String {
    let cpu = |f: &[Figures]| f.iter().map(|f| f.cpu_us).collect::<Vec<_>>();
    let per_s = |f: &[Figures]| f.iter().map(|f| f.per_s).collect::<Vec<_>>();
    let ratio = median(hyper.iter().map(|f| f.cpu_us)) / median(ours.iter().map(|f| f.cpu_us));
    let pairs: Vec<f64> = ours.iter().zip(hyper).map(|(o, h)| h.cpu_us / o.cpu_us).collect();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mut command = String::from("cargo run --release --example http_clients");
    let given: Vec<String> = std::env::args().skip(1).collect();
    if !given.is_empty() {
        command = format!("{command} -- {}", given.join(" "));
    }
    let mut md = String::new();
    md.push_str("# HTTP clients: CPU per webhook request\n\n");
    md.push_str(&format!(
        "Run {} with `{command}` on {cores} cores: \
         {} rounds per client (alternating, after one unrecorded warm-up round each) of \
         {} POSTs with {body_len}-byte JSON bodies and Standard Webhooks headers, \
         {} at a time on as many keep-alive connections, from a tokio runtime with one \
         worker thread, to bench/receiver (a child process on loopback, answering 204 on \
         one thread of its own). CPU is this process's user + system time; the \
         receiver's is not counted.\n\n",
        humantime::format_rfc3339_seconds(SystemTime::now()),
        args.rounds,
        args.requests,
        args.concurrency,
    ));
    md.push_str("| client | CPU us/request, median (min-max) | requests/s, median (min-max) |\n");
    md.push_str("|---|---|---|\n");
    md.push_str(&format!(
        "| walhook::lanes::http::Client | {} | {} |\n",
        spread(&cpu(ours), 2),
        spread(&per_s(ours), 0)
    ));
    md.push_str(&format!(
        "| hyper::client::conn::http1 + pool | {} | {} |\n\n",
        spread(&cpu(hyper), 2),
        spread(&per_s(hyper), 0)
    ));
    md.push_str(&format!(
        "CPU per request, hyper / ours: **{ratio:.2}x** (ratio of the medians); the rounds \
         paired in order: {}. Within 10% of ours: {}.\n\n",
        spread(&pairs, 2),
        if ratio <= 1.10 { "yes" } else { "no" }
    ));
    md.push_str("| round | client | requests | wall s | CPU us/request | requests/s |\n");
    md.push_str("|---|---|---|---|---|---|\n");
    for (i, (o, h)) in ours.iter().zip(hyper).enumerate() {
        for (name, f) in [("ours", o), ("hyper", h)] {
            md.push_str(&format!(
                "| {} | {name} | {} | {:.2} | {:.2} | {:.0} |\n",
                i + 1,
                f.requests,
                f.wall.as_secs_f64(),
                f.cpu_us,
                f.per_s
            ));
        }
    }
    md
}
