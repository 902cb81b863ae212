//! PostgreSQL connection settings shared by the source and the state database: URL
//! parsing with libpq's `sslmode` and `sslrootcert`, and TLS (rustls) for both the
//! replication connection and ordinary `tokio-postgres` connections.
//!
//! `sslmode` follows libpq: `disable`; `prefer` (default: TLS when the server offers it,
//! unverified); `require` (TLS, unverified); `verify-ca` (TLS, chain checked against the
//! root certificates); `verify-full` (chain and host name checked). Root certificates come
//! from `sslrootcert` (a PEM file, or `system` for the public web roots), else
//! `~/.postgresql/root.crt` when it exists, else the public web roots.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use tokio_postgres::{Client, NoTls};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SslMode {
    Disable,
    Prefer,
    Require,
    VerifyCa,
    VerifyFull,
}

/// A parsed connection target.
#[derive(Clone)]
pub struct PgTarget {
    /// Everything but TLS, for `tokio-postgres` and the replication connection.
    pub config: tokio_postgres::Config,
    pub ssl: SslMode,
    /// Present unless `sslmode=disable`.
    pub tls: Option<Arc<ClientConfig>>,
}

impl std::fmt::Debug for PgTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgTarget")
            .field("ssl", &self.ssl)
            .finish_non_exhaustive()
    }
}

impl PgTarget {
    pub fn parse(url: &str) -> Result<PgTarget, String> {
        let (rest, sslmode, rootcert) = take_tls_params(url);
        let ssl = match sslmode.as_deref().unwrap_or("prefer") {
            "disable" => SslMode::Disable,
            "allow" | "prefer" => SslMode::Prefer,
            "require" => SslMode::Require,
            "verify-ca" => SslMode::VerifyCa,
            "verify-full" => SslMode::VerifyFull,
            other => {
                return Err(format!(
                    "sslmode={other} is not one of disable, prefer, require, verify-ca, verify-full"
                ))
            }
        };
        let mut config: tokio_postgres::Config = rest
            .parse()
            .map_err(|e| format!("not a PostgreSQL connection URL: {e}"))?;
        tcp_defaults(&mut config, url);
        config.ssl_mode(match ssl {
            SslMode::Disable => tokio_postgres::config::SslMode::Disable,
            SslMode::Prefer => tokio_postgres::config::SslMode::Prefer,
            _ => tokio_postgres::config::SslMode::Require,
        });
        let tls = match ssl {
            SslMode::Disable => None,
            _ => Some(client_config(ssl, rootcert.as_deref())?),
        };
        Ok(PgTarget { config, ssl, tls })
    }

    /// An ordinary SQL connection; its driver task is spawned.
    pub async fn connect(&self, what: &'static str) -> Result<Client, tokio_postgres::Error> {
        // Like libpq, no TLS over Unix sockets, whatever sslmode says.
        let unix_only = self
            .config
            .get_hosts()
            .iter()
            .all(|h| !matches!(h, tokio_postgres::config::Host::Tcp(_)));
        match &self.tls {
            Some(tls) if !unix_only => {
                let make = tokio_postgres_rustls::MakeRustlsConnect::new((**tls).clone());
                let (client, conn) = self.config.connect(make).await?;
                Ok(drive(client, conn, what))
            }
            _ => {
                let mut config = self.config.clone();
                config.ssl_mode(tokio_postgres::config::SslMode::Disable);
                let (client, conn) = config.connect(NoTls).await?;
                Ok(drive(client, conn, what))
            }
        }
    }
}

/// A `tokio_postgres::Error` as an operator needs it: what the server said, with its
/// SQLSTATE, detail and hint (`cannot execute INSERT in a read-only transaction (SQLSTATE
/// 25006)`), or for a failure on the way (connecting, the network) the causes behind it.
/// The error's own Display is only its kind ("db error"), which names no problem.
#[derive(Debug)]
pub struct PgError(pub tokio_postgres::Error);

impl PgError {
    /// The SQLSTATE of a server error.
    pub fn code(&self) -> Option<&str> {
        self.0.code().map(tokio_postgres::error::SqlState::code)
    }
}

impl From<tokio_postgres::Error> for PgError {
    fn from(e: tokio_postgres::Error) -> Self {
        PgError(e)
    }
}

impl std::fmt::Display for PgError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&describe(&self.0))
    }
}

// The Display above already shows the whole chain (the server's fields or every cause),
// so no source is reported again; the error itself stays reachable as `.0`.
impl std::error::Error for PgError {}

/// `e` with what the server said (see [`PgError`]).
pub fn describe(e: &tokio_postgres::Error) -> String {
    use std::error::Error;
    if let Some(db) = e.as_db_error() {
        let mut text = format!("{} (SQLSTATE {})", db.message(), db.code().code());
        if let Some(detail) = db.detail() {
            text.push_str(&format!("; {detail}"));
        }
        if let Some(hint) = db.hint() {
            text.push_str(&format!("; hint: {hint}"));
        }
        return text;
    }
    let mut text = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        text.push_str(&format!(": {c}"));
        cause = c.source();
    }
    text
}

/// TCP keepalive probes after 15 s idle, 5 s apart, 3 of them.
const KEEPALIVE: (Duration, Duration, u32) = (Duration::from_secs(15), Duration::from_secs(5), 3);
/// How long sent data may stay unacknowledged before the connection counts as dead.
const TCP_USER_TIMEOUT: Duration = Duration::from_secs(30);

/// A path that dies without a word (a partition, a vanished host) would otherwise go
/// unnoticed for hours on an idle connection and for about 15 minutes on a busy one:
/// keepalives and a TCP user timeout find it within about 30 s. Settings the URL names
/// (`keepalives_idle`, `keepalives_interval`, `keepalives_retries`, `tcp_user_timeout`)
/// stay as given.
fn tcp_defaults(config: &mut tokio_postgres::Config, url: &str) {
    let given = |key: &str| url.contains(key);
    if !given("keepalives_idle") {
        config.keepalives_idle(KEEPALIVE.0);
    }
    if !given("keepalives_interval") {
        config.keepalives_interval(KEEPALIVE.1);
    }
    if !given("keepalives_retries") {
        config.keepalives_retries(KEEPALIVE.2);
    }
    if !given("tcp_user_timeout") {
        config.tcp_user_timeout(TCP_USER_TIMEOUT);
    }
}

/// Spawns a connection's driver task, logging how it ended.
fn drive<C>(client: Client, conn: C, what: &'static str) -> Client
where
    C: std::future::Future<Output = Result<(), tokio_postgres::Error>> + Send + 'static,
{
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %describe(&e), "{what} connection ended");
        }
    });
    client
}

/// Removes `sslmode` and `sslrootcert` from a URL or key=value string (tokio-postgres
/// knows neither `verify-*` nor `sslrootcert`) and returns them.
fn take_tls_params(url: &str) -> (String, Option<String>, Option<String>) {
    let mut sslmode = None;
    let mut rootcert = None;
    let mut keep = |k: &str, v: &str| match k {
        "sslmode" => {
            sslmode = Some(v.to_string());
            false
        }
        "sslrootcert" => {
            rootcert = Some(v.to_string());
            false
        }
        _ => true,
    };
    let rest = if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        match url.split_once('?') {
            None => url.to_string(),
            Some((base, query)) => {
                let kept: Vec<&str> = query
                    .split('&')
                    .filter(|p| {
                        let (k, v) = p.split_once('=').unwrap_or((p, ""));
                        keep(k, &percent_decode(v))
                    })
                    .collect();
                if kept.is_empty() {
                    base.to_string()
                } else {
                    format!("{base}?{}", kept.join("&"))
                }
            }
        }
    } else {
        // Cut the taken pairs out of the original text; every other pair stays verbatim.
        let mut rest = String::with_capacity(url.len());
        let mut from = 0;
        for (key, value, range) in conninfo_pairs(url) {
            if !keep(&key, &value) {
                rest.push_str(&url[from..range.start]);
                from = range.end;
            }
        }
        rest.push_str(&url[from..]);
        rest.trim().to_string()
    };
    (rest, sslmode, rootcert)
}

/// The `key = value` pairs of a libpq key=value connection string, with the byte range
/// of each pair: spaces around `=` allowed, values single-quoted or bare, `\` escaping
/// the next character. Stops at the first malformed pair (the full parser reports it).
fn conninfo_pairs(s: &str) -> Vec<(String, String, std::ops::Range<usize>)> {
    let mut out = Vec::new();
    let mut chars = s.char_indices().peekable();
    let skip_space = |chars: &mut std::iter::Peekable<std::str::CharIndices<'_>>| {
        while chars.next_if(|(_, c)| c.is_whitespace()).is_some() {}
    };
    loop {
        skip_space(&mut chars);
        let Some(&(start, _)) = chars.peek() else { break };
        let mut key = String::new();
        while let Some((_, c)) = chars.next_if(|(_, c)| *c != '=' && !c.is_whitespace()) {
            key.push(c);
        }
        skip_space(&mut chars);
        if chars.next_if(|(_, c)| *c == '=').is_none() {
            break;
        }
        skip_space(&mut chars);
        let mut value = String::new();
        let quoted = chars.next_if(|(_, c)| *c == '\'').is_some();
        let mut end = s.len();
        while let Some((i, c)) = chars.next() {
            match c {
                '\\' => {
                    if let Some((_, next)) = chars.next() {
                        value.push(next);
                    }
                }
                '\'' if quoted => {
                    end = i + 1;
                    break;
                }
                c if !quoted && c.is_whitespace() => {
                    end = i;
                    break;
                }
                c => value.push(c),
            }
        }
        out.push((key, value, start..end));
    }
    out
}

/// URI percent-decoding (a `+` stays a `+`, unlike form encoding).
fn percent_decode(s: &str) -> String {
    percent_encoding::percent_decode_str(s)
        .decode_utf8_lossy()
        .into_owned()
}

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn client_config(ssl: SslMode, rootcert: Option<&str>) -> Result<Arc<ClientConfig>, String> {
    let provider = provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup: {e}"))?;
    let verifier: Arc<dyn ServerCertVerifier> = match ssl {
        SslMode::Disable | SslMode::Prefer | SslMode::Require => Arc::new(NoVerify(provider)),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let roots = Arc::new(roots(rootcert)?);
            let webpki = WebPkiServerVerifier::builder_with_provider(roots, provider)
                .build()
                .map_err(|e| format!("TLS setup: {e}"))?;
            if ssl == SslMode::VerifyCa {
                Arc::new(ChainOnly(webpki))
            } else {
                webpki
            }
        }
    };
    let config = builder
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

fn roots(rootcert: Option<&str>) -> Result<RootCertStore, String> {
    let mut store = RootCertStore::empty();
    let path = match rootcert {
        Some("system") => None,
        Some(p) => Some(PathBuf::from(p)),
        None => std::env::var_os("HOME")
            .map(|h| PathBuf::from(h).join(".postgresql/root.crt"))
            .filter(|p| p.exists()),
    };
    match path {
        None => store.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned()),
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(&path)
                .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            for cert in certs {
                let cert = cert.map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
                store
                    .add(cert)
                    .map_err(|e| format!("sslrootcert {}: {e}", path.display()))?;
            }
            if store.is_empty() {
                return Err(format!("sslrootcert {} holds no certificate", path.display()));
            }
        }
    }
    Ok(store)
}

/// `require` and `prefer`: encrypt, but do not check who answers (libpq's behaviour).
#[derive(Debug)]
struct NoVerify(Arc<CryptoProvider>);

impl ServerCertVerifier for NoVerify {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.0.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// `verify-ca`: the chain must lead to a trusted root; the host name is not checked.
#[derive(Debug)]
struct ChainOnly(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for ChainOnly {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp, now)
        {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// The problems of the database URLs in `config` (`source.url`, `state.url`).
pub fn check(config: &crate::config::Config) -> Vec<crate::config::Problem> {
    let urls = [
        ("source.url", Some(&config.source.url)),
        ("state.url", config.state.url.as_ref()),
    ];
    urls.into_iter()
        .filter_map(|(key, url)| {
            let message = PgTarget::parse(url?).err()?;
            Some(crate::config::Problem {
                path: key.into(),
                message,
            })
        })
        .collect()
}

/// The source database's name (as CloudEvents `source` names it): the URL's dbname,
/// else its user, as PostgreSQL defaults it.
pub fn database_name(url: &str) -> String {
    let parsed = PgTarget::parse(url).ok();
    let config = parsed.as_ref().map(|t| &t.config);
    config
        .and_then(|c| c.get_dbname().map(str::to_string))
        .or_else(|| config.and_then(|c| c.get_user().map(str::to_string)))
        .unwrap_or_else(|| "postgres".to_string())
}

/// A failed connection to the database named by config key `key`, with the cause and
/// what to check.
pub fn connect_message(key: &str, e: &tokio_postgres::Error) -> String {
    let detail = match e.as_db_error() {
        Some(_) => crate::pg::describe(e),
        None => {
            let mut cur: &dyn std::error::Error = e;
            while let Some(next) = cur.source() {
                cur = next;
            }
            cur.to_string()
        }
    };
    let hint = if detail.contains("certificate") {
        "the server's TLS certificate was not accepted: set sslrootcert to the CA that signed it \
         (verify-full also checks that the host name matches the certificate)"
    } else {
        "check host, port, user, password and pg_hba.conf"
    };
    format!("cannot connect to the database in {key}: {detail} ({hint})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_params_are_taken_out_of_both_url_forms() {
        let (rest, mode, root) = take_tls_params(
            "postgres://u@h/db?sslmode=verify-full&application_name=x&sslrootcert=%2Ftmp%2Fca+pg.pem",
        );
        assert_eq!(rest, "postgres://u@h/db?application_name=x");
        assert_eq!(mode.as_deref(), Some("verify-full"));
        assert_eq!(root.as_deref(), Some("/tmp/ca+pg.pem"));
        let (rest, mode, root) = take_tls_params("host=h dbname=db sslmode=require");
        assert_eq!(rest, "host=h dbname=db");
        assert_eq!(mode.as_deref(), Some("require"));
        assert_eq!(root, None);
        assert_eq!(
            take_tls_params("postgres://h/db?sslmode=disable").0,
            "postgres://h/db"
        );
    }

    #[test]
    fn modes_parse_and_bad_ones_are_named() {
        assert_eq!(PgTarget::parse("postgres://h/db").unwrap().ssl, SslMode::Prefer);
        let plain = PgTarget::parse("postgres://h/db").unwrap().config;
        assert_eq!(plain.get_keepalives_idle(), KEEPALIVE.0);
        assert_eq!(plain.get_keepalives_interval(), Some(KEEPALIVE.1));
        assert_eq!(plain.get_keepalives_retries(), Some(KEEPALIVE.2));
        assert_eq!(plain.get_tcp_user_timeout(), Some(&TCP_USER_TIMEOUT));
        let given = PgTarget::parse("postgres://h/db?keepalives_idle=60&tcp_user_timeout=90")
            .unwrap()
            .config;
        assert_eq!(given.get_keepalives_idle(), Duration::from_secs(60));
        assert_eq!(given.get_tcp_user_timeout(), Some(&Duration::from_secs(90)));
        assert!(PgTarget::parse("postgres://h/db?sslmode=disable")
            .unwrap()
            .tls
            .is_none());
        assert_eq!(
            PgTarget::parse("host=h sslmode=verify-ca sslrootcert=system")
                .unwrap()
                .ssl,
            SslMode::VerifyCa
        );
        let err = PgTarget::parse("postgres://h/db?sslmode=always").unwrap_err();
        assert!(err.contains("sslmode=always"), "{err}");
        let err =
            PgTarget::parse("postgres://h/db?sslmode=verify-full&sslrootcert=/nonexistent.pem").unwrap_err();
        assert!(err.contains("/nonexistent.pem"), "{err}");
    }
}
