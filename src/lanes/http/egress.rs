//! How a subscriber's connections leave walhook: straight to the receiver, or through an
//! HTTP proxy (a CONNECT tunnel for https targets, so TLS still runs end to end with the
//! receiver; absolute-form requests for http targets); and the TLS material of mutual
//! TLS and a private CA, read from PEM files.

use std::net::IpAddr;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Largest CONNECT answer head accepted.
const MAX_CONNECT_HEAD: usize = 16 * 1024;

/// An HTTP proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proxy {
    pub host: String,
    pub port: u16,
    /// `Proxy-Authorization` value, from the URL's user and password.
    pub authorization: Option<String>,
}

impl Proxy {
    /// A proxy from its URL (`http://user:pass@host:port`, port 80 by default).
    pub fn parse(text: &str) -> Result<Proxy, String> {
        if let Some(e) = crate::config::proxy_problem(text) {
            return Err(e);
        }
        let url = url::Url::parse(text).map_err(|e| e.to_string())?;
        let host = url
            .host_str()
            .unwrap_or_default()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let authorization = basic_auth(&url);
        Ok(Proxy {
            host,
            port: url.port_or_known_default().unwrap_or(80),
            authorization,
        })
    }

    /// A proxy from an environment variable: `host:port` without a scheme is taken as
    /// `http://host:port`, as curl and Go take it.
    pub fn from_env(text: &str) -> Result<Proxy, String> {
        let text = text.trim();
        match text.contains("://") {
            true => Proxy::parse(text),
            false => Proxy::parse(&format!("http://{text}")),
        }
    }

    /// `host:port`, for messages.
    pub fn name(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// The `Basic` credentials of a URL's user and password, if it has a user.
pub fn basic_auth(url: &url::Url) -> Option<String> {
    use base64::Engine as _;
    if url.username().is_empty() {
        return None;
    }
    let decode = |s: &str| {
        percent_encoding::percent_decode_str(s)
            .decode_utf8_lossy()
            .into_owned()
    };
    let pair = format!(
        "{}:{}",
        decode(url.username()),
        decode(url.password().unwrap_or(""))
    );
    Some(format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(pair)
    ))
}

/// The proxy URL for requests to `host:port` (`https` or not): the subscriber's own
/// (`""` means none), else `[delivery] proxy`, else the environment's `HTTPS_PROXY` (https)
/// or `HTTP_PROXY` (http), lowercase names too, then `ALL_PROXY`. `NO_PROXY` exempts hosts
/// from `[delivery] proxy` and the environment's, never from the subscriber's own.
pub fn choose(
    subscriber: Option<&str>,
    delivery: Option<&str>,
    env: &dyn Fn(&str) -> Option<String>,
    https: bool,
    host: &str,
    port: u16,
) -> Option<String> {
    if let Some(own) = subscriber {
        return Some(own.to_string()).filter(|p| !p.is_empty());
    }
    // `[delivery] proxy = ""`: direct, whatever the environment says.
    if delivery == Some("") {
        return None;
    }
    let var = |names: &[&str]| names.iter().find_map(|n| env(n).filter(|v| !v.trim().is_empty()));
    let general = match delivery.filter(|p| !p.is_empty()) {
        Some(p) => Some(p.to_string()),
        None if https => var(&["HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy"]),
        None => var(&["HTTP_PROXY", "http_proxy", "ALL_PROXY", "all_proxy"]),
    }?;
    let exempt = var(&["NO_PROXY", "no_proxy"]).is_some_and(|list| no_proxy_matches(&list, host, port));
    (!exempt).then_some(general)
}

/// Whether `NO_PROXY`'s comma-separated `list` names `host:port`: `*` (every host), a
/// domain (itself and its subdomains; a leading `.` or `*.` means the same), an IP address,
/// a CIDR block (`10.0.0.0/8`), each with an optional `:port`.
pub fn no_proxy_matches(list: &str, host: &str, port: u16) -> bool {
    let host = host
        .trim_start_matches('[')
        .trim_end_matches(']')
        .to_ascii_lowercase();
    let host_ip = host.parse::<IpAddr>().ok();
    list.split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .any(|entry| {
            if entry == "*" {
                return true;
            }
            let entry = entry.to_ascii_lowercase();
            // An optional :port (not inside a bare IPv6 address).
            let (name, want_port) = match entry.rsplit_once(':') {
                Some((n, p)) if !n.contains(':') || n.ends_with(']') => match p.parse::<u16>() {
                    Ok(p) => (n.to_string(), Some(p)),
                    Err(_) => (entry.clone(), None),
                },
                _ => (entry.clone(), None),
            };
            if want_port.is_some_and(|p| p != port) {
                return false;
            }
            let name = name.trim_start_matches('[').trim_end_matches(']');
            if let Some((net, bits)) = name.split_once('/') {
                return match (net.parse::<IpAddr>(), bits.parse::<u32>(), host_ip) {
                    (Ok(net), Ok(bits), Some(ip)) => in_cidr(ip, net, bits),
                    _ => false,
                };
            }
            if let (Ok(ip), Some(h)) = (name.parse::<IpAddr>(), host_ip) {
                return ip == h;
            }
            let domain = name.trim_start_matches("*.").trim_start_matches('.');
            !domain.is_empty() && (host == domain || host.ends_with(&format!(".{domain}")))
        })
}

fn in_cidr(ip: IpAddr, net: IpAddr, bits: u32) -> bool {
    match (ip, net) {
        (IpAddr::V4(a), IpAddr::V4(n)) if bits <= 32 => {
            let mask = u32::MAX.checked_shl(32 - bits).unwrap_or(0);
            u32::from(a) & mask == u32::from(n) & mask
        }
        (IpAddr::V6(a), IpAddr::V6(n)) if bits <= 128 => {
            let mask = u128::MAX.checked_shl(128 - bits).unwrap_or(0);
            u128::from(a) & mask == u128::from(n) & mask
        }
        _ => false,
    }
}

/// Asks `proxy`, on `tcp`, for a tunnel to `authority` (`host:port`).
pub async fn tunnel(tcp: &mut TcpStream, proxy: &Proxy, authority: &str) -> Result<(), String> {
    let mut req = format!("CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n");
    if let Some(auth) = &proxy.authorization {
        req.push_str(&format!("Proxy-Authorization: {auth}\r\n"));
    }
    req.push_str("\r\n");
    tcp.write_all(req.as_bytes())
        .await
        .map_err(|e| format!("proxy {}: {e}", proxy.name()))?;
    let mut buf = Vec::with_capacity(1024);
    loop {
        if buf.len() >= MAX_CONNECT_HEAD {
            return Err(format!(
                "proxy {} answered CONNECT with a head over {MAX_CONNECT_HEAD} bytes",
                proxy.name()
            ));
        }
        let n = tcp
            .read_buf(&mut buf)
            .await
            .map_err(|e| format!("proxy {}: {e}", proxy.name()))?;
        if n == 0 {
            return Err(format!(
                "proxy {} closed the connection instead of answering CONNECT {authority}",
                proxy.name()
            ));
        }
        let mut headers = [httparse::EMPTY_HEADER; 64];
        let mut resp = httparse::Response::new(&mut headers);
        match resp.parse(&buf) {
            Ok(httparse::Status::Partial) => continue,
            Ok(httparse::Status::Complete(len)) => {
                let code = resp.code.unwrap_or(0);
                if !(200..300).contains(&code) {
                    let reason = resp.reason.unwrap_or("");
                    let hint = if code == 407 {
                        ": give the proxy's user and password in its URL (http://user:pass@host:port)"
                    } else {
                        ""
                    };
                    return Err(format!(
                        "proxy {} refused CONNECT {authority}: HTTP {code} {reason}{hint}",
                        proxy.name()
                    ));
                }
                if len != buf.len() {
                    return Err(format!(
                        "proxy {} sent bytes after its CONNECT answer",
                        proxy.name()
                    ));
                }
                return Ok(());
            }
            Err(e) => {
                return Err(format!(
                    "proxy {} answered CONNECT with no HTTP answer: {e}",
                    proxy.name()
                ))
            }
        }
    }
}

/// What to do about a TLS failure that `error` names, as a sentence to append ("" for
/// other errors).
pub fn tls_hint(error: &str) -> &'static str {
    if error.contains("CertificateRequired") {
        " (the receiver wants a client certificate: set tls = { cert = ..., key = ... } on this subscriber)"
    } else if error.contains("alert: UnknownCA") || error.contains("alert: BadCertificate") {
        " (the receiver does not accept walhook's client certificate: check tls.cert against the CA it trusts)"
    } else if error.contains("UnknownIssuer") {
        " (the receiver's certificate is not signed by a CA walhook trusts: set tls.ca to its CA's PEM file)"
    } else {
        ""
    }
}

/// A client certificate chain and its key, from PEM files; or which of `tls.cert` and
/// `tls.key` cannot be used, and why.
pub fn client_auth(
    cert: &str,
    key: &str,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), (&'static str, String)> {
    let certs = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ("tls.cert", format!("cannot read the certificate {cert}: {e}")))?;
    if certs.is_empty() {
        return Err(("tls.cert", format!("{cert} holds no PEM certificate")));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| {
        (
            "tls.key",
            format!("cannot read the private key {key} (PEM, PKCS#8, PKCS#1 or SEC1): {e}"),
        )
    })?;
    Ok((certs, key))
}

/// The CA certificates of a PEM file, as trusted roots.
pub fn ca_roots(ca: &str) -> Result<rustls::RootCertStore, String> {
    let certs = CertificateDer::pem_file_iter(ca)
        .and_then(|it| it.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read the CA file {ca}: {e}"))?;
    let mut roots = rustls::RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(certs);
    if added == 0 {
        return Err(format!("{ca} holds no usable CA certificate (PEM)"));
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_proxy_names_hosts_domains_addresses_and_blocks() {
        let list = "localhost, .corp.example, *.svc.cluster.local,10.0.0.0/8, 192.168.1.5, [::1], api.example:8443, fd00::/8";
        for (host, port) in [
            ("localhost", 80),
            ("corp.example", 443),
            ("hooks.corp.example", 443),
            ("shop.default.svc.cluster.local", 80),
            ("10.20.30.40", 443),
            ("192.168.1.5", 80),
            ("::1", 80),
            ("[::1]", 80),
            ("api.example", 8443),
            ("fd12::5", 443),
        ] {
            assert!(no_proxy_matches(list, host, port), "{host}:{port}");
        }
        for (host, port) in [
            ("example.com", 443),
            ("notcorp.example", 443),
            ("11.0.0.1", 443),
            ("192.168.1.6", 80),
            ("api.example", 443),
            ("2001:db8::1", 443),
        ] {
            assert!(!no_proxy_matches(list, host, port), "{host}:{port}");
        }
        assert!(no_proxy_matches("*", "anything.example", 1));
        assert!(!no_proxy_matches("", "anything.example", 1));
    }

    #[test]
    fn the_subscribers_proxy_then_the_delivery_section_then_the_environment() {
        let env = |name: &str| match name {
            "HTTPS_PROXY" => Some("http://secure-proxy:3128".to_string()),
            "http_proxy" => Some("http://plain-proxy:3128".to_string()),
            "NO_PROXY" => Some("internal.example".to_string()),
            _ => None,
        };
        let pick = |own, delivery, https, host: &str| choose(own, delivery, &env, https, host, 443);
        assert_eq!(
            pick(None, None, true, "shop.example").as_deref(),
            Some("http://secure-proxy:3128")
        );
        assert_eq!(
            pick(None, None, false, "shop.example").as_deref(),
            Some("http://plain-proxy:3128")
        );
        assert_eq!(pick(None, None, true, "hooks.internal.example"), None, "NO_PROXY");
        assert_eq!(
            pick(None, Some("http://egress:8080"), true, "shop.example").as_deref(),
            Some("http://egress:8080")
        );
        assert_eq!(
            pick(None, Some("http://egress:8080"), true, "internal.example"),
            None
        );
        assert_eq!(
            pick(
                Some("http://own:1"),
                Some("http://egress:8080"),
                true,
                "internal.example"
            )
            .as_deref(),
            Some("http://own:1"),
            "a subscriber's own proxy is not exempted"
        );
        assert_eq!(
            pick(Some(""), Some("http://egress:8080"), true, "shop.example"),
            None
        );
        assert_eq!(choose(None, None, &|_| None, true, "shop.example", 443), None);
        assert_eq!(
            pick(None, Some(""), true, "shop.example"),
            None,
            "[delivery] proxy = \"\" ignores the environment"
        );
    }

    #[test]
    fn proxy_urls_carry_their_credentials() {
        let p = Proxy::parse("http://us%40er:p%3Ass@proxy.internal:3128").unwrap();
        assert_eq!((p.host.as_str(), p.port), ("proxy.internal", 3128));
        use base64::Engine as _;
        let want = base64::engine::general_purpose::STANDARD.encode("us@er:p:ss");
        assert_eq!(p.authorization, Some(format!("Basic {want}")));
        assert_eq!(Proxy::parse("http://proxy").unwrap().port, 80);
        // Environment values without a scheme are http, as curl and Go take them.
        assert_eq!(
            Proxy::from_env("proxy.internal:3128").unwrap().name(),
            "proxy.internal:3128"
        );
        assert!(Proxy::from_env("socks5h://proxy:1080").is_err());
        for bad in [
            "https://proxy:3128",
            "socks5://proxy:1080",
            "proxy:3128",
            "http://proxy:3128/path",
        ] {
            assert!(Proxy::parse(bad).is_err(), "{bad}");
        }
    }
}
