//! A replication-mode connection spoken directly over the wire protocol: startup with
//! `replication=database` and pinned session settings, authentication (trust, cleartext,
//! MD5, SCRAM-SHA-256), simple queries, and the CopyBoth stream of `START_REPLICATION`.
//!
//! Every read is cancel-safe (partial frames stay buffered), so callers may race
//! [`ReplConn::recv`] against timers in `tokio::select!`.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::{Buf, BufMut, BytesMut};
use fallible_iterator::FallibleIterator;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::{backend, frontend};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_postgres::config::Host;

use std::sync::Arc;

use rustls::pki_types::ServerName;

use super::SourceError;
use crate::pg::{PgTarget, SslMode};

/// Session settings pinned at startup so values render the same on every server.
pub const PINNED_SETTINGS: &[(&str, &str)] = &[
    ("DateStyle", "ISO"),
    ("TimeZone", "UTC"),
    ("IntervalStyle", "iso_8601"),
    ("extra_float_digits", "3"),
    ("bytea_output", "hex"),
    ("client_encoding", "UTF8"),
];

/// Microseconds between the Unix epoch and PostgreSQL's (2000-01-01).
const PG_EPOCH_OFFSET_US: i64 = 946_684_800_000_000;

const MAX_FRAME: usize = 1 << 30;

/// Capacity of the read buffer. A larger message is read into a buffer of its own size,
/// handed on whole with the message (its payload is a slice of it, not a copy), and not
/// kept afterwards: a large row's bytes are freed once it is decoded.
const READ_BUFFER: usize = 64 * 1024;

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

/// One message of the replication stream.
#[derive(Debug)]
pub enum ReplMessage {
    XLogData {
        wal_start: u64,
        wal_end: u64,
        /// The server's clock when it sent this, in microseconds since 2000-01-01.
        send_time: i64,
        data: bytes::Bytes,
    },
    Keepalive {
        wal_end: u64,
        send_time: i64,
        reply_requested: bool,
    },
}

pub struct ReplConn {
    stream: Box<dyn Stream>,
    rbuf: BytesMut,
    wbuf: BytesMut,
}

/// A server error (an ErrorResponse) with its SQLSTATE.
#[derive(Debug, Clone, Default)]
pub struct ServerError {
    pub code: String,
    pub message: String,
    pub detail: Option<String>,
    pub hint: Option<String>,
    /// Where it happened (e.g. `slot "walhook", output plugin "pgoutput", in the change
    /// callback, associated LSN 0/1925728`).
    pub context: Option<String>,
}

impl std::fmt::Display for ServerError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} (SQLSTATE {})", self.message, self.code)?;
        if let Some(d) = &self.detail {
            write!(f, "; {d}")?;
        }
        if let Some(h) = &self.hint {
            write!(f, "; hint: {h}")?;
        }
        if let Some(c) = &self.context {
            write!(f, "; context: {c}")?;
        }
        Ok(())
    }
}

enum Frame {
    Message(backend::Message),
    CopyBothResponse,
}

impl ReplConn {
    /// Connects to the first reachable host of `config` in replication mode.
    pub async fn connect(target: &PgTarget) -> Result<ReplConn, SourceError> {
        let config = &target.config;
        let timeout = config
            .get_connect_timeout()
            .copied()
            .unwrap_or(Duration::from_secs(10));
        let ports = config.get_ports();
        let mut last_err = None;
        // Like libpq: each host in turn, the whole exchange (TCP, TLS, startup and
        // authentication) within the connect timeout, the next host on any failure.
        for (i, host) in config.get_hosts().iter().enumerate() {
            let port = ports.get(i).or(ports.first()).copied().unwrap_or(5432);
            match tokio::time::timeout(timeout, Self::connect_one(target, host, port)).await {
                Ok(Ok(conn)) => return Ok(conn),
                Ok(Err(e)) => last_err = Some(e),
                Err(_) => {
                    last_err = Some(SourceError::Connect {
                        target: describe(host, port),
                        source: std::io::Error::new(std::io::ErrorKind::TimedOut, "connect timed out"),
                    })
                }
            }
        }
        Err(last_err.unwrap_or(SourceError::Protocol("source.url names no host".into())))
    }

    async fn connect_one(target: &PgTarget, host: &Host, port: u16) -> Result<ReplConn, SourceError> {
        let stream = open(host, port, &target.config)
            .await
            .map_err(|source| SourceError::Connect {
                target: describe(host, port),
                source,
            })?;
        let stream = match (host, &target.tls) {
            (Host::Tcp(name), Some(tls)) => negotiate_tls(stream, name, tls.clone(), target.ssl).await?,
            _ => stream,
        };
        let mut conn = ReplConn {
            stream,
            rbuf: BytesMut::with_capacity(READ_BUFFER),
            wbuf: BytesMut::with_capacity(1024),
        };
        conn.startup(&target.config).await?;
        Ok(conn)
    }

    async fn startup(&mut self, config: &tokio_postgres::Config) -> Result<(), SourceError> {
        let user = config
            .get_user()
            .map(str::to_string)
            .or_else(|| std::env::var("USER").ok())
            .unwrap_or_else(|| "postgres".into());
        let dbname = config.get_dbname().unwrap_or(&user).to_string();
        let app = config.get_application_name().unwrap_or("walhook").to_string();
        let mut params: Vec<(&str, &str)> = vec![
            ("user", &user),
            ("database", &dbname),
            ("replication", "database"),
            ("application_name", &app),
        ];
        params.extend_from_slice(PINNED_SETTINGS);
        frontend::startup_message(params.iter().copied(), &mut self.wbuf).map_err(SourceError::Io)?;
        self.flush().await?;
        let password = config.get_password().map(<[u8]>::to_vec);
        let need_password = || {
            password.clone().ok_or_else(|| {
                SourceError::Auth(format!(
                    "the server asks a password for role {user:?}; put it in source.url (postgres://{user}:PASSWORD@host/db) or use ${{VAR}} expansion"
                ))
            })
        };
        loop {
            match self.read_message().await? {
                backend::Message::AuthenticationOk => break,
                backend::Message::AuthenticationCleartextPassword => {
                    let pw = need_password()?;
                    frontend::password_message(&pw, &mut self.wbuf).map_err(SourceError::Io)?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationMd5Password(body) => {
                    let pw = need_password()?;
                    let hash = postgres_protocol::authentication::md5_hash(user.as_bytes(), &pw, body.salt());
                    frontend::password_message(hash.as_bytes(), &mut self.wbuf).map_err(SourceError::Io)?;
                    self.flush().await?;
                }
                backend::Message::AuthenticationSasl(body) => {
                    let mut mechs = body.mechanisms();
                    let mut scram = false;
                    while let Some(m) = mechs.next().map_err(SourceError::Io)? {
                        scram |= m == SCRAM_SHA_256;
                    }
                    if !scram {
                        return Err(SourceError::Auth("the server offers no SASL mechanism walhook supports (SCRAM-SHA-256)".into()));
                    }
                    let pw = need_password()?;
                    let mut sasl = ScramSha256::new(&pw, ChannelBinding::unsupported());
                    frontend::sasl_initial_response(SCRAM_SHA_256, sasl.message(), &mut self.wbuf).map_err(SourceError::Io)?;
                    self.flush().await?;
                    match self.read_message().await? {
                        backend::Message::AuthenticationSaslContinue(b) => {
                            sasl.update(b.data()).map_err(|e| SourceError::Auth(format!("SCRAM: {e}")))?
                        }
                        _ => return Err(SourceError::Protocol("expected SASL continue".into())),
                    }
                    frontend::sasl_response(sasl.message(), &mut self.wbuf).map_err(SourceError::Io)?;
                    self.flush().await?;
                    match self.read_message().await? {
                        backend::Message::AuthenticationSaslFinal(b) => {
                            sasl.finish(b.data()).map_err(|e| SourceError::Auth(format!("SCRAM: {e}")))?
                        }
                        _ => return Err(SourceError::Protocol("expected SASL final".into())),
                    }
                }
                _ => {
                    return Err(SourceError::Auth(
                        "the server asks for an authentication method walhook does not support (use trust, password, md5 or scram-sha-256 in pg_hba.conf)".into(),
                    ))
                }
            }
        }
        loop {
            match self.read_message().await? {
                backend::Message::ReadyForQuery(_) => return Ok(()),
                backend::Message::ParameterStatus(_)
                | backend::Message::BackendKeyData(_)
                | backend::Message::NoticeResponse(_) => {}
                _ => return Err(SourceError::Protocol("unexpected message during startup".into())),
            }
        }
    }

    /// Runs one simple query and returns its rows as text.
    pub async fn simple_query(&mut self, sql: &str) -> Result<Vec<Vec<Option<String>>>, SourceError> {
        frontend::query(sql, &mut self.wbuf).map_err(SourceError::Io)?;
        self.flush().await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            match self.read_message().await {
                Ok(backend::Message::DataRow(body)) => {
                    let buf = body.buffer();
                    let mut row = Vec::new();
                    let mut ranges = body.ranges();
                    while let Some(r) = ranges.next().map_err(SourceError::Io)? {
                        row.push(r.map(|r| String::from_utf8_lossy(&buf[r]).into_owned()));
                    }
                    rows.push(row);
                }
                Ok(backend::Message::ReadyForQuery(_)) => break,
                Ok(_) => {}
                Err(SourceError::Server(e)) => error = Some(e),
                Err(e) => return Err(e),
            }
        }
        match error {
            Some(e) => Err(SourceError::Server(e)),
            None => Ok(rows),
        }
    }

    /// Sends `START_REPLICATION` and waits for the CopyBoth response.
    pub async fn start_replication(&mut self, sql: &str) -> Result<(), SourceError> {
        frontend::query(sql, &mut self.wbuf).map_err(SourceError::Io)?;
        self.flush().await?;
        loop {
            match self.read_frame().await? {
                Frame::CopyBothResponse => return Ok(()),
                Frame::Message(backend::Message::ErrorResponse(body)) => {
                    let err = server_error(&body)?;
                    // drain to ReadyForQuery so the error is complete
                    return Err(SourceError::Server(err));
                }
                Frame::Message(backend::Message::NoticeResponse(_)) => {}
                Frame::Message(_) => {
                    return Err(SourceError::Protocol(
                        "unexpected reply to START_REPLICATION".into(),
                    ))
                }
            }
        }
    }

    /// Next replication message. Cancel-safe.
    pub async fn recv(&mut self) -> Result<ReplMessage, SourceError> {
        loop {
            match self.read_frame().await? {
                Frame::Message(backend::Message::CopyData(body)) => {
                    let data = body.into_bytes();
                    match data.first() {
                        Some(b'w') if data.len() >= 25 => {
                            let mut d = &data[1..25];
                            let wal_start = d.get_u64();
                            let wal_end = d.get_u64();
                            let send_time = d.get_i64();
                            return Ok(ReplMessage::XLogData {
                                wal_start,
                                wal_end,
                                send_time,
                                data: data.slice(25..),
                            });
                        }
                        Some(b'k') if data.len() >= 18 => {
                            let mut d = &data[1..];
                            let wal_end = d.get_u64();
                            let send_time = d.get_i64();
                            let reply_requested = d.get_u8() == 1;
                            return Ok(ReplMessage::Keepalive {
                                wal_end,
                                send_time,
                                reply_requested,
                            });
                        }
                        _ => {
                            return Err(SourceError::Protocol(
                                "malformed CopyData in replication stream".into(),
                            ))
                        }
                    }
                }
                Frame::Message(backend::Message::CopyDone) => return Err(SourceError::StreamEnded),
                Frame::Message(backend::Message::NoticeResponse(_)) => {}
                // The walsender stopped with an error (a dropped publication, an
                // invalidated slot, a terminated backend): its SQLSTATE and text are the
                // diagnosis, so they travel up whole.
                Frame::Message(backend::Message::ErrorResponse(body)) => {
                    return Err(SourceError::Server(server_error(&body)?))
                }
                Frame::Message(_) | Frame::CopyBothResponse => {
                    return Err(SourceError::Protocol(
                        "unexpected message in replication stream".into(),
                    ))
                }
            }
        }
    }

    /// Standby status update: written, flushed (the LSN confirmed to the slot) and applied.
    pub async fn send_status(&mut self, write: u64, flush: u64, reply: bool) -> Result<(), SourceError> {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            .as_micros() as i64;
        let mut payload = BytesMut::with_capacity(34);
        payload.put_u8(b'r');
        payload.put_u64(write);
        payload.put_u64(flush);
        payload.put_u64(flush);
        payload.put_i64(now - PG_EPOCH_OFFSET_US);
        payload.put_u8(u8::from(reply));
        frontend::CopyData::new(payload.freeze())
            .map_err(SourceError::Io)?
            .write(&mut self.wbuf);
        self.flush().await
    }

    /// Ends the copy stream and the session politely.
    pub async fn close(mut self) {
        frontend::copy_done(&mut self.wbuf);
        frontend::terminate(&mut self.wbuf);
        let _ = tokio::time::timeout(Duration::from_secs(2), self.flush()).await;
    }

    async fn flush(&mut self) -> Result<(), SourceError> {
        self.stream.write_all(&self.wbuf).await.map_err(SourceError::Io)?;
        self.wbuf.clear();
        self.stream.flush().await.map_err(SourceError::Io)
    }

    async fn read_message(&mut self) -> Result<backend::Message, SourceError> {
        match self.read_frame().await? {
            Frame::Message(backend::Message::ErrorResponse(body)) => {
                Err(SourceError::Server(server_error(&body)?))
            }
            Frame::Message(m) => Ok(m),
            Frame::CopyBothResponse => Err(SourceError::Protocol("unexpected CopyBothResponse".into())),
        }
    }

    /// Moves what is left of the read buffer (the start of the next messages) into a new
    /// one of the usual size. After a large message the old buffer is shared with that
    /// message (`Message::parse` splits it off without copying), and the buffer would
    /// otherwise hold all of its memory for as long as the connection lives.
    fn detach_read_buffer(&mut self) {
        let rest = std::mem::replace(&mut self.rbuf, BytesMut::new());
        self.rbuf.reserve(READ_BUFFER.max(rest.len()));
        self.rbuf.extend_from_slice(&rest);
    }

    async fn read_frame(&mut self) -> Result<Frame, SourceError> {
        loop {
            if let Some(header) = backend::Header::parse(&self.rbuf).map_err(SourceError::Io)? {
                let total = header.len() as usize + 1;
                if total > MAX_FRAME {
                    return Err(SourceError::Protocol(format!(
                        "server sent a {total}-byte message"
                    )));
                }
                if header.tag() == b'W' {
                    if self.rbuf.len() >= total {
                        self.rbuf.advance(total);
                        return Ok(Frame::CopyBothResponse);
                    }
                } else if let Some(m) = backend::Message::parse(&mut self.rbuf).map_err(SourceError::Io)? {
                    if total > READ_BUFFER {
                        self.detach_read_buffer();
                    }
                    return Ok(Frame::Message(m));
                }
                self.rbuf.reserve(total.saturating_sub(self.rbuf.len()));
            }
            let n = self
                .stream
                .read_buf(&mut self.rbuf)
                .await
                .map_err(SourceError::Io)?;
            if n == 0 {
                return Err(SourceError::Io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "server closed the connection",
                )));
            }
        }
    }
}

/// SSLRequest, then a rustls handshake when the server agrees. A server that refuses
/// TLS is fine only for `sslmode=prefer`.
async fn negotiate_tls(
    mut stream: Box<dyn Stream>,
    host: &str,
    tls: Arc<rustls::ClientConfig>,
    mode: SslMode,
) -> Result<Box<dyn Stream>, SourceError> {
    let mut buf = BytesMut::new();
    frontend::ssl_request(&mut buf);
    stream.write_all(&buf).await.map_err(SourceError::Io)?;
    stream.flush().await.map_err(SourceError::Io)?;
    let answer = stream.read_u8().await.map_err(SourceError::Io)?;
    match answer {
        b'S' => {
            let name = ServerName::try_from(host.to_string())
                .map_err(|e| SourceError::Tls(format!("{host} is not a valid TLS server name: {e}")))?;
            let tls = tokio_rustls::TlsConnector::from(tls)
                .connect(name, stream)
                .await
                .map_err(|e| SourceError::Tls(format!("TLS handshake with {host} failed: {e}")))?;
            Ok(Box::new(tls))
        }
        b'N' if mode == SslMode::Prefer => Ok(stream),
        b'N' => Err(SourceError::Tls(format!(
            "the server at {host} does not accept TLS but sslmode asks for it; enable ssl on the server or use sslmode=prefer"
        ))),
        other => Err(SourceError::Protocol(format!("unexpected answer {other:#x} to SSLRequest"))),
    }
}

async fn open(host: &Host, port: u16, config: &tokio_postgres::Config) -> std::io::Result<Box<dyn Stream>> {
    match host {
        Host::Tcp(name) => {
            let s = tokio::net::TcpStream::connect((name.as_str(), port)).await?;
            s.set_nodelay(true)?;
            keep_alive(&s, config)?;
            Ok(Box::new(s))
        }
        #[cfg(unix)]
        Host::Unix(dir) => {
            let path = dir.join(format!(".s.PGSQL.{port}"));
            Ok(Box::new(tokio::net::UnixStream::connect(path).await?))
        }
    }
}

/// The keepalive and TCP user timeout settings of the URL (see `pg::tcp_defaults`), as
/// libpq applies them, so a dead path fails the connection rather than leaving it open.
fn keep_alive(s: &tokio::net::TcpStream, config: &tokio_postgres::Config) -> std::io::Result<()> {
    let sock = socket2::SockRef::from(s);
    if config.get_keepalives() {
        let mut keepalive = socket2::TcpKeepalive::new().with_time(config.get_keepalives_idle());
        if let Some(interval) = config.get_keepalives_interval() {
            keepalive = keepalive.with_interval(interval);
        }
        if let Some(retries) = config.get_keepalives_retries() {
            keepalive = keepalive.with_retries(retries);
        }
        sock.set_tcp_keepalive(&keepalive)?;
    }
    #[cfg(target_os = "linux")]
    if let Some(timeout) = config.get_tcp_user_timeout() {
        sock.set_tcp_user_timeout(Some(*timeout))?;
    }
    Ok(())
}

fn describe(host: &Host, port: u16) -> String {
    match host {
        Host::Tcp(name) => format!("{name}:{port}"),
        #[cfg(unix)]
        Host::Unix(dir) => format!("{}/.s.PGSQL.{port}", dir.display()),
    }
}

fn server_error(body: &backend::ErrorResponseBody) -> Result<ServerError, SourceError> {
    let mut err = ServerError::default();
    let mut fields = body.fields();
    while let Some(f) = fields.next().map_err(SourceError::Io)? {
        let v = String::from_utf8_lossy(f.value_bytes()).into_owned();
        match f.type_() {
            b'C' => err.code = v,
            b'M' => err.message = v,
            b'D' => err.detail = Some(v),
            b'H' => err.hint = Some(v),
            b'W' => err.context = Some(v),
            _ => {}
        }
    }
    Ok(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection reading `bytes` from the server.
    fn conn_reading(bytes: Vec<u8>) -> ReplConn {
        let (client, mut server) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move {
            server.write_all(&bytes).await.unwrap();
            // Keep the server end open until the client is done.
            let mut sink = Vec::new();
            let _ = server.read_to_end(&mut sink).await;
        });
        ReplConn {
            stream: Box::new(client),
            rbuf: BytesMut::new(),
            wbuf: BytesMut::new(),
        }
    }

    /// An ErrorResponse with these (field type, value) pairs.
    fn error_response(fields: &[(u8, &str)]) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, v) in fields {
            body.push(*t);
            body.extend_from_slice(v.as_bytes());
            body.push(0);
        }
        body.push(0);
        let mut out = vec![b'E'];
        out.extend_from_slice(&(body.len() as u32 + 4).to_be_bytes());
        out.extend_from_slice(&body);
        out
    }

    #[tokio::test]
    async fn an_error_inside_the_stream_comes_up_with_its_sqlstate_and_text() {
        let mut conn = conn_reading(error_response(&[
            (b'S', "ERROR"),
            (b'C', "42704"),
            (b'M', "publication \"walhook\" does not exist"),
            (b'W', "slot \"walhook\", output plugin \"pgoutput\", in the change callback, associated LSN 0/1925728"),
        ]));
        let err = conn.recv().await.unwrap_err();
        assert_eq!(err.code(), Some("42704"));
        assert_eq!(
            err.to_string(),
            "server error: publication \"walhook\" does not exist (SQLSTATE 42704); context: slot \"walhook\", \
             output plugin \"pgoutput\", in the change callback, associated LSN 0/1925728"
        );
    }

    #[tokio::test]
    async fn a_malformed_error_in_the_stream_is_an_error_not_a_panic() {
        // Fields without their terminating zero.
        let mut bytes = vec![b'E'];
        bytes.extend_from_slice(&9u32.to_be_bytes());
        bytes.extend_from_slice(b"C42704");
        let mut conn = conn_reading(bytes);
        assert!(conn.recv().await.is_err());
    }
}
