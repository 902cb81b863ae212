//! A webhook receiver on loopback that misbehaves on cue: each request takes the next
//! reply of a script (then the default reply): a status with headers, a slow answer, no
//! answer at all, or a connection reset. It speaks just enough HTTP/1.1 (Content-Length
//! bodies, keep-alive) for walhook's client, and records every request it read.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// What the receiver does with one request.
#[derive(Debug, Clone)]
pub enum Reply {
    /// Answers this status with these headers.
    Status(u16, Vec<(&'static str, String)>),
    /// Answers this status after a delay.
    Slow(Duration, u16),
    /// Never answers (the connection stays open until the client gives up).
    Hang,
    /// Closes the connection with a TCP reset instead of answering.
    Reset,
}

impl Reply {
    pub fn status(code: u16) -> Reply {
        Reply::Status(code, Vec::new())
    }
}

/// One request as read.
#[derive(Debug, Clone)]
pub struct Hit {
    pub at: Instant,
    pub id: String,
    pub body: Vec<u8>,
    pub reply: Reply,
}

impl Hit {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("body is JSON")
    }

    /// Whether the reply was a 2xx answer.
    pub fn delivered(&self) -> bool {
        matches!(self.reply, Reply::Status(s, _) | Reply::Slow(_, s) if (200..300).contains(&s))
    }
}

struct Inner {
    script: Mutex<VecDeque<Reply>>,
    default: Reply,
    hits: Mutex<Vec<Hit>>,
}

pub struct Scripted {
    inner: Arc<Inner>,
    addr: std::net::SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Scripted {
    /// A receiver that replies `script` in order, then 204 to everything.
    pub async fn start(script: Vec<Reply>) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let inner = Arc::new(Inner {
            script: Mutex::new(script.into()),
            default: Reply::status(204),
            hits: Mutex::new(Vec::new()),
        });
        let shared = inner.clone();
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(serve(stream, shared.clone()));
            }
        });
        Scripted { inner, addr, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Every request read so far, in arrival order.
    pub fn hits(&self) -> Vec<Hit> {
        self.inner.hits.lock().unwrap().clone()
    }

    /// Requests answered with 2xx.
    pub fn delivered(&self) -> Vec<Hit> {
        self.hits().into_iter().filter(Hit::delivered).collect()
    }

    /// Waits until `n` requests were answered with 2xx, or panics after `timeout`.
    pub async fn wait_delivered(&self, n: usize, timeout: Duration, what: &str) -> Vec<Hit> {
        let deadline = Instant::now() + timeout;
        loop {
            let got = self.delivered();
            if got.len() >= n {
                return got;
            }
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}: {} of {n} delivered, {} requests",
                    got.len(),
                    self.hits().len()
                );
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Scripted {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut stream: TcpStream, inner: Arc<Inner>) {
    let mut buf: Vec<u8> = Vec::new();
    loop {
        // Read one request: head, then a Content-Length body.
        let (head_len, body_len, id) = loop {
            let mut headers = [httparse::EMPTY_HEADER; 64];
            let mut req = httparse::Request::new(&mut headers);
            if let Ok(httparse::Status::Complete(n)) = req.parse(&buf) {
                let header = |name: &str| {
                    req.headers
                        .iter()
                        .find(|h| h.name.eq_ignore_ascii_case(name))
                        .map(|h| String::from_utf8_lossy(h.value).to_string())
                        .unwrap_or_default()
                };
                let len: usize = header("content-length").trim().parse().unwrap_or(0);
                break (n, len, header("webhook-id"));
            }
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        while buf.len() < head_len + body_len {
            let mut chunk = [0u8; 8192];
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        let body = buf[head_len..head_len + body_len].to_vec();
        buf.drain(..head_len + body_len);
        let reply = inner
            .script
            .lock()
            .unwrap()
            .pop_front()
            .unwrap_or_else(|| inner.default.clone());
        inner.hits.lock().unwrap().push(Hit {
            at: Instant::now(),
            id,
            body,
            reply: reply.clone(),
        });
        let (status, headers) = match reply {
            Reply::Status(s, h) => (s, h),
            Reply::Slow(d, s) => {
                tokio::time::sleep(d).await;
                (s, Vec::new())
            }
            Reply::Hang => {
                // Hold the connection until the client closes it.
                let mut sink = [0u8; 1024];
                while matches!(stream.read(&mut sink).await, Ok(n) if n > 0) {}
                return;
            }
            Reply::Reset => {
                // A zero linger makes the close a reset.
                let _ = stream.set_zero_linger();
                drop(stream);
                return;
            }
        };
        let mut out = format!("HTTP/1.1 {status} Scripted\r\ncontent-length: 0\r\n");
        for (k, v) in headers {
            out.push_str(&format!("{k}: {v}\r\n"));
        }
        out.push_str("\r\n");
        if stream.write_all(out.as_bytes()).await.is_err() {
            return;
        }
    }
}
