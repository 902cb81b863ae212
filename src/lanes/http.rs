//! A lean HTTP/1.1 client for webhook deliveries.
//!
//! Deliveries are many small POSTs to one origin per subscriber, so the client keeps a
//! small pool of keep-alive connections, writes each request in one piece (head bytes
//! built once per subscriber), parses the response head with `httparse` and reads the body
//! only as far as a bounded excerpt. It never follows redirects and speaks HTTP/1.1 only
//! (TLS with ALPN `http/1.1`). A request that fails on a pooled connection before any
//! response byte arrived (the server closed it while idle) goes once more on a new one.
//! Bytes from the network never panic this code: every malformed response is an error
//! value for the attempt.

use std::fmt;
use std::io::{self, Write as _};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;

pub mod egress;

/// Bytes of a response body kept (for logs) at most.
pub const EXCERPT: usize = 512;
/// Largest response head accepted.
const MAX_HEAD: usize = 64 * 1024;
/// Response body bytes read at most to keep a connection; a longer body closes it.
const MAX_DRAIN: u64 = 256 * 1024;
/// How long a body without Content-Length or chunked framing is read (for its excerpt).
const CLOSE_DELIMITED_WAIT: Duration = Duration::from_millis(100);
/// Response headers parsed at most.
const MAX_HEADERS: usize = 100;

/// What the subscriber answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    /// The first `EXCERPT` bytes of the body.
    pub excerpt: Vec<u8>,
    /// The `Retry-After` header as a delay from now, when it has a valid one.
    pub retry_after: Option<Duration>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Error {
    Timeout,
    Connect(String),
    Request(String),
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Timeout => write!(f, "timed out"),
            Error::Connect(e) => write!(f, "connect failed: {e}{}", egress::tls_hint(e)),
            Error::Request(e) => write!(f, "request failed: {e}{}", egress::tls_hint(e)),
        }
    }
}

/// Settings of one client.
pub struct Options {
    /// For the whole attempt: connect, send, and read the response.
    pub timeout: Duration,
    pub connect_timeout: Duration,
    /// Idle connections kept at most.
    pub max_idle: usize,
    /// An idle connection older than this is closed rather than used.
    pub idle_timeout: Duration,
    /// Trusted roots for https (the Mozilla set when None).
    pub roots: Option<rustls::RootCertStore>,
    /// A client certificate chain and key to present (mutual TLS).
    pub client_auth: Option<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>)>,
    /// The proxy requests go through, if any.
    pub proxy: Option<egress::Proxy>,
    /// Connect to the addresses `target::is_private` refuses. Checked on every
    /// connection, after resolving the host anew, so a name whose DNS answer changes to
    /// such an address (DNS rebinding) is not reached. Through a proxy, the proxy
    /// resolves names: only a target given as an address is checked.
    pub allow_private: bool,
}

/// One subscriber's client: a fixed origin and path, pooled connections.
pub struct Client {
    /// Host to resolve and port to connect to.
    host: String,
    port: u16,
    tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
    /// Path and query, for the request line (the whole URL through a proxy, for http).
    path: String,
    /// The fixed headers (Host first), each ending in CRLF.
    head: Vec<u8>,
    idle: Mutex<Vec<Conn>>,
    opts: Options,
}

impl Client {
    /// A client posting to `url` with these extra headers (validated by the config).
    pub fn new(url: &url::Url, headers: &[(String, String)], mut opts: Options) -> Result<Client, String> {
        let https = match url.scheme() {
            "https" => true,
            "http" => false,
            other => return Err(format!("scheme {other:?}: use http or https")),
        };
        let host = match url.host() {
            Some(url::Host::Domain(d)) => d.to_string(),
            Some(url::Host::Ipv4(a)) => a.to_string(),
            Some(url::Host::Ipv6(a)) => a.to_string(),
            None => return Err("the URL has no host".into()),
        };
        let port = url
            .port_or_known_default()
            .unwrap_or(if https { 443 } else { 80 });
        if opts.proxy.is_some() && !opts.allow_private {
            if let Ok(ip) = host.parse::<std::net::IpAddr>() {
                if super::target::is_private(ip) {
                    return Err(format!(
                        "{ip} is a loopback, private or link-local address: refused \
                         (set allow_private_targets = true if that is intended)"
                    ));
                }
            }
        }
        let tls = if https {
            let roots = opts.roots.clone().unwrap_or_else(|| rustls::RootCertStore {
                roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
            });
            let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .map_err(|e| format!("TLS setup: {e}"))?
            .with_root_certificates(roots);
            let mut config = match opts.client_auth.take() {
                Some((certs, key)) => builder
                    .with_client_auth_cert(certs, key)
                    .map_err(|e| format!("the client certificate and key do not go together: {e}"))?,
                None => builder.with_no_client_auth(),
            };
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            let name =
                ServerName::try_from(host.clone()).map_err(|e| format!("TLS server name {host:?}: {e}"))?;
            Some((tokio_rustls::TlsConnector::from(Arc::new(config)), name))
        } else {
            None
        };

        let mut path = url.path().to_string();
        if let Some(q) = url.query() {
            path.push('?');
            path.push_str(q);
        }
        let mut authority = url.host_str().unwrap_or_default().to_string();
        if let Some(p) = url.port() {
            authority.push_str(&format!(":{p}"));
        }
        // A proxy takes an http request in absolute form, with its own credentials.
        let via = opts.proxy.as_ref().filter(|_| !https);
        if via.is_some() {
            path = format!("http://{authority}{path}");
        }
        let has = |name: &str| headers.iter().any(|(k, _)| k.eq_ignore_ascii_case(name));
        let mut head = Vec::with_capacity(256);
        let _ = write!(head, "Host: {authority}\r\n");
        if !has("user-agent") {
            let _ = write!(head, "User-Agent: walhook/{}\r\n", env!("CARGO_PKG_VERSION"));
        }
        if let Some(auth) = egress::basic_auth(url).filter(|_| !has("authorization")) {
            let _ = write!(head, "Authorization: {auth}\r\n");
        }
        for (k, v) in headers {
            let _ = write!(head, "{k}: {v}\r\n");
        }
        if let Some(auth) = via.and_then(|p| p.authorization.as_ref()) {
            let _ = write!(head, "Proxy-Authorization: {auth}\r\n");
        }
        Ok(Client {
            host,
            port,
            tls,
            path,
            head,
            idle: Mutex::new(Vec::new()),
            opts,
        })
    }

    /// The proxy that takes this client's http requests (absolute form), by name; None
    /// without one, or for https (a tunnel: the proxy never answers for the receiver).
    pub fn proxied(&self) -> Option<String> {
        self.opts
            .proxy
            .as_ref()
            .filter(|_| self.tls.is_none())
            .map(egress::Proxy::name)
    }

    /// POSTs a JSON `body` with the fixed headers and `extra` ones; the whole attempt is
    /// bounded by the timeout.
    pub async fn post(&self, extra: &[(&str, &str)], body: &[u8]) -> Result<Response, Error> {
        self.send(&self.request("POST", "application/json", extra, body))
            .await
    }

    /// Sends a request made by `request`; the whole attempt is bounded by the timeout.
    pub async fn send(&self, req: &[u8]) -> Result<Response, Error> {
        self.send_parts(req, &[]).await
    }

    /// Sends a request in two parts, `head` (made by `request_head`) and then `body`, so
    /// that a large body is written from where it is rather than copied behind its head.
    pub async fn send_parts(&self, head: &[u8], body: &[u8]) -> Result<Response, Error> {
        match tokio::time::timeout(self.opts.timeout, self.exchange(head, body)).await {
            Ok(result) => result,
            Err(_) => Err(Error::Timeout),
        }
    }

    /// The bytes of one request: request line, the fixed headers, Content-Type, the
    /// `extra` headers, and the body. `method` must be a token (`valid_method`).
    pub fn request(&self, method: &str, content_type: &str, extra: &[(&str, &str)], body: &[u8]) -> Vec<u8> {
        let mut req = self.request_head(method, content_type, extra, body.len(), body.len());
        req.extend_from_slice(body);
        req
    }

    /// A request's head, up to the blank line, for a body of `body_len` bytes, in a
    /// buffer with room for `room` bytes more.
    pub fn request_head(
        &self,
        method: &str,
        content_type: &str,
        extra: &[(&str, &str)],
        body_len: usize,
        room: usize,
    ) -> Vec<u8> {
        let mut req = Vec::with_capacity(self.head.len() + 300 + room);
        let _ = write!(req, "{method} {} HTTP/1.1\r\n", self.path);
        req.extend_from_slice(&self.head);
        let _ = write!(req, "Content-Type: {content_type}\r\n");
        for (k, v) in extra {
            let _ = write!(req, "{k}: {v}\r\n");
        }
        let _ = write!(req, "Content-Length: {body_len}\r\n\r\n");
        req
    }

    async fn exchange(&self, head: &[u8], body: &[u8]) -> Result<Response, Error> {
        loop {
            let pooled = self.take_idle();
            let reused = pooled.is_some();
            let mut conn = match pooled {
                Some(c) => c,
                None => self.connect().await?,
            };
            match roundtrip(&mut conn, head, body).await {
                Ok((resp, keep)) => {
                    if keep {
                        self.put_idle(conn);
                    }
                    return Ok(resp);
                }
                // Closed while idle: the request goes again on another connection.
                Err(Failure::Unanswered(_)) if reused => continue,
                Err(Failure::Unanswered(e) | Failure::Broken(e)) => return Err(Error::Request(e)),
            }
        }
    }

    fn take_idle(&self) -> Option<Conn> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(conn) = idle.pop() {
            if conn.since.elapsed() < self.opts.idle_timeout {
                return Some(conn);
            }
        }
        None
    }

    fn put_idle(&self, mut conn: Conn) {
        conn.since = Instant::now();
        // A large answer grew the buffer: an idle connection keeps only the usual size
        // (a lane keeps up to `max_in_flight` of them, fifty lanes 800).
        conn.buf.shrink_to(CONN_BUF);
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.opts.max_idle {
            idle.push(conn);
        }
    }

    async fn connect(&self) -> Result<Conn, Error> {
        let connect = async {
            if let Some(proxy) = &self.opts.proxy {
                return self.connect_via(proxy).await;
            }
            let addrs = tokio::net::lookup_host((self.host.as_str(), self.port))
                .await
                .map_err(|e| format!("cannot resolve {}: {e}", self.host))?;
            let mut last = format!("{} resolves to no address", self.host);
            for addr in addrs {
                if !self.opts.allow_private && super::target::is_private(addr.ip()) {
                    last = format!(
                        "{} now resolves to {}, a loopback, private or link-local address: refused \
                         (set allow_private_targets = true if that is intended)",
                        self.host,
                        addr.ip()
                    );
                    continue;
                }
                match TcpStream::connect(addr).await {
                    Ok(tcp) => return self.over(tcp, &addr.to_string()).await,
                    Err(e) => last = format!("{addr}: {e}"),
                }
            }
            Err(last)
        };
        match tokio::time::timeout(self.opts.connect_timeout, connect).await {
            Ok(result) => result.map_err(Error::Connect),
            Err(_) => Err(Error::Connect(format!(
                "no connection to {}:{} within {:?}",
                self.host, self.port, self.opts.connect_timeout
            ))),
        }
    }
}

impl Client {
    /// A connection on `tcp` (to the receiver `peer`, or a tunnel to it): TLS for https.
    async fn over(&self, tcp: TcpStream, peer: &str) -> Result<Conn, String> {
        let _ = tcp.set_nodelay(true);
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some((connector, name)) => Stream::Tls(Box::new(
                connector
                    .connect(name.clone(), tcp)
                    .await
                    .map_err(|e| format!("TLS with {peer}: {e}"))?,
            )),
        };
        Ok(Conn {
            stream,
            buf: Vec::with_capacity(CONN_BUF),
            since: Instant::now(),
        })
    }

    /// A connection through `proxy`: a CONNECT tunnel for https, else the proxy itself.
    /// The proxy is the operator's own: its address is not checked like a receiver's.
    async fn connect_via(&self, proxy: &egress::Proxy) -> Result<Conn, String> {
        let mut tcp = TcpStream::connect((proxy.host.as_str(), proxy.port))
            .await
            .map_err(|e| format!("proxy {}: {e}", proxy.name()))?;
        if self.tls.is_some() {
            let authority = match self.host.contains(':') {
                true => format!("[{}]:{}", self.host, self.port),
                false => format!("{}:{}", self.host, self.port),
            };
            egress::tunnel(&mut tcp, proxy, &authority).await?;
            return self
                .over(tcp, &format!("{authority} through proxy {}", proxy.name()))
                .await;
        }
        self.over(tcp, &proxy.name()).await
    }
}

struct Conn {
    stream: Stream,
    /// Bytes read and not yet consumed.
    buf: Vec<u8>,
    /// When it was connected or last went idle.
    since: Instant,
}

/// A connection's read buffer, as made and as kept while idle.
const CONN_BUF: usize = 4096;

impl Conn {
    /// Reads more bytes into the buffer; 0 at the end of the stream.
    async fn fill(&mut self) -> io::Result<usize> {
        // Room for a usual answer's next read, not more: a fresh buffer's 4 KiB holds a
        // whole 204 or 200 with a short body.
        if self.buf.capacity() - self.buf.len() < CONN_BUF / 4 {
            self.buf.reserve(CONN_BUF);
        }
        self.stream.read_buf(&mut self.buf).await
    }
}

/// Why a round trip failed.
enum Failure {
    /// Nothing came back (the request may not have reached the server).
    Unanswered(String),
    /// The response was cut short or malformed.
    Broken(String),
}

/// The parts of a response head that matter here.
struct Head {
    status: u16,
    /// Bytes of the head, to consume.
    len: usize,
    content_length: Option<u64>,
    chunked: bool,
    keep_alive: bool,
    retry_after: Option<Duration>,
}

/// A `Retry-After` value as a delay from `now`: delay-seconds or an HTTP date (a date in
/// the past is no delay). `None` when it is neither.
pub fn parse_retry_after(value: &str, now: std::time::SystemTime) -> Option<Duration> {
    let value = value.trim();
    if !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit()) {
        // Past u64 seconds it is "very long"; the caller clamps it anyway.
        return Some(Duration::from_secs(value.parse().unwrap_or(u64::MAX)));
    }
    let at = httpdate::parse_http_date(value).ok()?;
    Some(at.duration_since(now).unwrap_or_default())
}

fn parse_head(buf: &[u8]) -> Result<Option<Head>, String> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut resp = httparse::Response::new(&mut headers);
    let len = match resp.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) if buf.len() > MAX_HEAD => {
            return Err(format!("response head longer than {MAX_HEAD} bytes"))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(format!("malformed response: {e}")),
    };
    let mut head = Head {
        status: resp.code.unwrap_or(0),
        len,
        content_length: None,
        chunked: false,
        keep_alive: resp.version == Some(1),
        retry_after: None,
    };
    for h in resp.headers.iter() {
        let value = String::from_utf8_lossy(h.value);
        if h.name.eq_ignore_ascii_case("content-length") {
            let n = value
                .trim()
                .parse::<u64>()
                .map_err(|_| format!("bad Content-Length {value:?}"))?;
            if head.content_length.is_some_and(|m| m != n) {
                return Err("conflicting Content-Length headers".into());
            }
            head.content_length = Some(n);
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            head.chunked = value
                .split(',')
                .next_back()
                .is_some_and(|t| t.trim().eq_ignore_ascii_case("chunked"));
        } else if h.name.eq_ignore_ascii_case("retry-after") {
            head.retry_after = parse_retry_after(&value, std::time::SystemTime::now());
        } else if h.name.eq_ignore_ascii_case("connection")
            && value.split(',').any(|t| t.trim().eq_ignore_ascii_case("close"))
        {
            head.keep_alive = false;
        }
    }
    Ok(Some(head))
}

/// Sends `head` and `body` (which may be empty: in `head`) and reads the response.
/// Returns it and whether the connection may be used again.
async fn roundtrip(conn: &mut Conn, head: &[u8], body: &[u8]) -> Result<(Response, bool), Failure> {
    if !conn.buf.is_empty() {
        return Err(Failure::Unanswered(
            "unexpected bytes on an idle connection".into(),
        ));
    }
    for part in [head, body] {
        if !part.is_empty() {
            conn.stream
                .write_all(part)
                .await
                .map_err(|e| Failure::Unanswered(e.to_string()))?;
        }
    }
    conn.stream
        .flush()
        .await
        .map_err(|e| Failure::Unanswered(e.to_string()))?;
    let head = loop {
        match parse_head(&conn.buf) {
            Err(e) => return Err(Failure::Broken(e)),
            Ok(Some(head)) if (100..200).contains(&head.status) && head.status != 101 => {
                // Interim response (100 Continue, 103 Early Hints): the final one follows.
                conn.buf.drain(..head.len);
                continue;
            }
            Ok(Some(head)) => break head,
            Ok(None) => {}
        }
        let got_some = !conn.buf.is_empty();
        match conn.fill().await {
            Ok(0) | Err(_) if got_some => {
                return Err(Failure::Broken(
                    "connection closed in the middle of the response".into(),
                ))
            }
            Ok(0) => return Err(Failure::Unanswered("connection closed before a response".into())),
            Err(e) => return Err(Failure::Unanswered(e.to_string())),
            Ok(_) => {}
        }
    };
    conn.buf.drain(..head.len);
    let mut excerpt = Vec::new();
    // The status is what counts; a body cut short only costs the connection.
    let complete = if head.status == 101 {
        false
    } else if head.status == 204 || head.status == 304 {
        true
    } else if head.chunked {
        read_chunked(conn, &mut excerpt).await.unwrap_or(false)
    } else if let Some(n) = head.content_length {
        read_exact_body(conn, n, &mut excerpt).await.unwrap_or(false)
    } else {
        // Delimited by the end of the connection: take what comes within a moment for the
        // excerpt, and close the connection rather than wait for a server that keeps it.
        let _ = tokio::time::timeout(
            CLOSE_DELIMITED_WAIT,
            read_exact_body(conn, MAX_DRAIN, &mut excerpt),
        )
        .await;
        false
    };
    let keep = complete && head.keep_alive && conn.buf.is_empty();
    Ok((
        Response {
            status: head.status,
            excerpt,
            retry_after: head.retry_after,
        },
        keep,
    ))
}

fn keep_excerpt(excerpt: &mut Vec<u8>, bytes: &[u8]) {
    let room = EXCERPT.saturating_sub(excerpt.len());
    excerpt.extend_from_slice(&bytes[..bytes.len().min(room)]);
}

/// Reads a body of `n` bytes. Ok(false) when it is longer than worth reading: then only
/// what already arrived goes into the excerpt.
async fn read_exact_body(conn: &mut Conn, n: u64, excerpt: &mut Vec<u8>) -> io::Result<bool> {
    if n > MAX_DRAIN {
        keep_excerpt(excerpt, &conn.buf);
        return Ok(false);
    }
    let mut left = n;
    while left > 0 {
        if conn.buf.is_empty() && conn.fill().await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
        let take = (conn.buf.len() as u64).min(left) as usize;
        keep_excerpt(excerpt, &conn.buf[..take]);
        conn.buf.drain(..take);
        left -= take as u64;
    }
    Ok(true)
}

/// Position of the first CRLF in the buffer, reading more as needed (lines are short).
async fn line(conn: &mut Conn) -> io::Result<usize> {
    loop {
        if let Some(i) = conn.buf.windows(2).position(|w| w == b"\r\n") {
            return Ok(i);
        }
        if conn.buf.len() > 4096 {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "chunk line too long"));
        }
        if conn.fill().await? == 0 {
            return Err(io::ErrorKind::UnexpectedEof.into());
        }
    }
}

/// Reads a chunked body. Ok(false) when it is longer than worth reading.
async fn read_chunked(conn: &mut Conn, excerpt: &mut Vec<u8>) -> io::Result<bool> {
    let bad = |what: &str| io::Error::new(io::ErrorKind::InvalidData, what.to_string());
    let mut total: u64 = 0;
    loop {
        let end = line(conn).await?;
        let size_text = String::from_utf8_lossy(&conn.buf[..end]);
        let size_text = size_text.split(';').next().unwrap_or("").trim();
        let size = u64::from_str_radix(size_text, 16).map_err(|_| bad("bad chunk size"))?;
        conn.buf.drain(..end + 2);
        if size == 0 {
            // Trailers, up to an empty line.
            loop {
                let end = line(conn).await?;
                conn.buf.drain(..end + 2);
                if end == 0 {
                    return Ok(true);
                }
            }
        }
        total = total.saturating_add(size);
        if total > MAX_DRAIN {
            return Ok(false);
        }
        read_exact_body(conn, size, excerpt).await?;
        while conn.buf.len() < 2 {
            if conn.fill().await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
        if &conn.buf[..2] != b"\r\n" {
            return Err(bad("chunk not followed by CRLF"));
        }
        conn.buf.drain(..2);
    }
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Stream::Tls(s) => Pin::new(s).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_flush(cx),
            Stream::Tls(s) => Pin::new(s).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Stream::Tls(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

/// Whether `name` may be sent as a header name (an HTTP token).
pub fn valid_header_name(name: &str) -> bool {
    !name.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
}

/// Whether `value` may be sent as a header value (no control characters but tab).
pub fn valid_header_value(value: &str) -> bool {
    value.bytes().all(|b| b == b'\t' || (b >= 0x20 && b != 0x7f))
}

/// Methods a webhook may use: any token but those whose answer has no body framing
/// (HEAD) or that open a tunnel (CONNECT).
pub fn valid_method(method: &str) -> bool {
    valid_header_name(method)
        && !method.contains('.')
        && !method.eq_ignore_ascii_case("HEAD")
        && !method.eq_ignore_ascii_case("CONNECT")
}

/// Headers the client sets itself, which a subscriber's `headers` may not replace.
pub fn reserved_header(name: &str) -> bool {
    ["host", "content-length", "transfer-encoding", "connection"]
        .iter()
        .any(|r| name.eq_ignore_ascii_case(r))
        || name.to_ascii_lowercase().starts_with("webhook-")
}

#[cfg(test)]
mod tests;
