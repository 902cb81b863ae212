//! How requests leave walhook: `[delivery]` (settings for every subscriber: an egress
//! proxy), and a subscriber's `tls` (client certificate, private CA) and `proxy`.

use super::*;

/// Where a subscriber's events go.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SubscriberKind {
    /// Webhooks: an HTTP request per event.
    #[default]
    Http,
    /// NATS JetStream: a message per event on `subject`, acknowledged by a stream.
    Nats,
}

/// `[delivery]`: settings of every subscriber's requests.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct DeliveryConfig {
    /// An HTTP proxy for every subscriber (`http://user:pass@proxy:3128`), unless the
    /// subscriber names its own; without one, `HTTPS_PROXY`/`HTTP_PROXY` and `NO_PROXY`
    /// are honoured.
    pub proxy: Option<String>,
}

/// A subscriber's `tls`: PEM files for mutual TLS and a private CA.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriberTls {
    /// The client certificate (chain) walhook presents, with `key`.
    pub cert: Option<String>,
    /// The client certificate's private key (PKCS#8, PKCS#1 or SEC1).
    pub key: Option<String>,
    /// CA certificates that verify the receiver's server certificate, instead of the
    /// public roots.
    pub ca: Option<String>,
}

/// The problems of a proxy URL, if any.
pub fn proxy_problem(proxy: &str) -> Option<String> {
    let url = match url::Url::parse(proxy) {
        Ok(u) => u,
        Err(e) => {
            return Some(format!(
                "{e}: write the proxy as a URL, e.g. \"http://proxy.internal:3128\" or \"http://user:pass@proxy:3128\""
            ))
        }
    };
    if url.scheme() != "http" {
        return Some(format!(
            "scheme {:?}: walhook speaks to proxies in plain HTTP (\"http://...\"); https targets still get TLS end to end through CONNECT",
            url.scheme()
        ));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Some("the proxy URL has no host".into());
    }
    if url.path() != "/" && !url.path().is_empty() {
        return Some(format!("a proxy URL has no path (remove {:?})", url.path()));
    }
    None
}

impl Config {
    /// The problems of `[delivery]` and the subscribers' `tls` and `proxy` the config can
    /// tell alone (the files are read by the lanes' checks).
    pub(super) fn delivery_problems(&self, bad: &mut dyn FnMut(String, String)) {
        if let Some(p) = self.delivery.proxy.as_deref().filter(|p| !p.is_empty()) {
            if let Some(e) = proxy_problem(p) {
                bad("delivery.proxy".into(), e);
            }
        }
        for (i, s) in self.subscribers.iter().enumerate() {
            self.kind_problems(i, s, bad);
            if let Some(p) = s.proxy.as_deref().filter(|p| !p.is_empty()) {
                if let Some(e) = proxy_problem(p) {
                    bad(format!("subscribers[{i}].proxy"), e);
                }
            }
            if let Some(tls) = &s.tls {
                if tls.cert.is_some() != tls.key.is_some() {
                    bad(
                        format!("subscribers[{i}].tls"),
                        "give cert and key together (the client certificate and its private key)".into(),
                    );
                }
                let https = s.url.starts_with("https://") || s.url.starts_with("tls://");
                if !https {
                    bad(
                        format!("subscribers[{i}].tls"),
                        "tls applies to https (or NATS tls://) URLs only: use an https:// url, or remove tls"
                            .into(),
                    );
                }
            }
        }
    }
}

impl Config {
    /// The settings a subscriber of its kind may not have, or must.
    fn kind_problems(&self, i: usize, s: &Subscriber, bad: &mut dyn FnMut(String, String)) {
        let p = |k: &str| format!("subscribers[{i}].{k}");
        match s.kind {
            SubscriberKind::Http => {
                for (key, set) in [
                    ("subject", s.subject.is_some()),
                    ("credentials", s.credentials.is_some()),
                ] {
                    if set {
                        bad(
                            p(key),
                            format!(
                                "{key} is for kind = \"nats\" subscribers: remove it, or set kind = \"nats\""
                            ),
                        );
                    }
                }
            }
            SubscriberKind::Nats => {
                match s.subject.as_deref() {
                    None | Some("") => bad(
                        p("subject"),
                        "required with kind = \"nats\": the subject to publish to, a template such as \"pim.{{ type }}\"".into(),
                    ),
                    Some(_) => {}
                }
                for (key, set) in [
                    ("headers", !s.headers.is_empty()),
                    ("template", s.template.is_some()),
                    ("method", s.method.is_some()),
                    ("content_type", s.content_type.is_some()),
                    ("proxy", s.proxy.is_some()),
                    ("format", s.format != BodyFormat::Standard),
                    ("type_prefix", s.type_prefix.is_some()),
                    ("max_body_bytes", s.max_body_bytes.is_some()),
                    ("final_statuses", !s.final_statuses.is_empty()),
                ] {
                    if set {
                        bad(
                            p(key),
                            format!("{key} is for webhooks; a NATS subscriber publishes the standard body: remove it"),
                        );
                    }
                }
            }
        }
    }
}
