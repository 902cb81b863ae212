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

/// A subscriber's `batch`: events go out many to a request, as a JSON array (standard),
/// a CloudEvents batch, or one rendering of the template over `events`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BatchConfig {
    /// Events per request at most.
    #[serde(default = "default_batch_events")]
    pub max_events: usize,
    /// How long a request waits for more events after its first one.
    #[serde(default = "default_batch_wait", with = "humantime_serde")]
    pub max_wait: Duration,
    /// Bytes of event bodies per request at most ("1MB", "512KiB"); a larger event goes
    /// alone.
    #[serde(default = "default_batch_bytes")]
    pub max_bytes: bytesize::ByteSize,
}

/// The most events one request may carry.
pub const MAX_BATCH_EVENTS: usize = 10_000;
/// The most events of one subscriber in flight at once (`max_in_flight` requests of
/// `batch.max_events` each).
pub const MAX_EVENTS_IN_FLIGHT: usize = 100_000;

fn default_batch_events() -> usize {
    100
}

fn default_batch_wait() -> Duration {
    Duration::from_millis(50)
}

fn default_batch_bytes() -> bytesize::ByteSize {
    bytesize::ByteSize::mb(1)
}

impl Subscriber {
    /// Events of this subscriber that may be in flight at once: one per request, or with
    /// `batch` as many as `max_in_flight` full requests hold.
    pub fn event_slots(&self) -> usize {
        let per_request = self.batch.as_ref().map_or(1, |b| b.max_events.max(1));
        self.max_in_flight.saturating_mul(per_request).max(1)
    }
}

/// The problems of a subscriber's `batch` and `rate_limit_events`, through `bad(key,
/// message)`.
pub(super) fn batch_problems(sub: &Subscriber, bad: &mut dyn FnMut(&str, String)) {
    let Some(b) = &sub.batch else {
        if sub.rate_limit_events.is_some() {
            bad(
                "rate_limit_events",
                "only used with batch (without it, rate_limit counts events): set batch or remove rate_limit_events".into(),
            );
        }
        return;
    };
    if sub.kind == SubscriberKind::Nats {
        bad(
            "batch",
            "batches are for webhooks: JetStream takes one message per event; remove batch".into(),
        );
    }
    if b.max_events == 0 || b.max_events > MAX_BATCH_EVENTS {
        bad(
            "batch.max_events",
            format!("{} is outside 1..{MAX_BATCH_EVENTS}", b.max_events),
        );
    } else if sub.event_slots() > MAX_EVENTS_IN_FLIGHT {
        bad(
            "batch.max_events",
            format!(
                "max_in_flight ({}) requests of {} events are {} events in flight, above the limit of {MAX_EVENTS_IN_FLIGHT}: lower one of them",
                sub.max_in_flight,
                b.max_events,
                sub.event_slots()
            ),
        );
    }
    if b.max_wait.is_zero() || b.max_wait > Duration::from_secs(10) {
        bad(
            "batch.max_wait",
            "must be above 0 and at most 10s, e.g. \"50ms\"".into(),
        );
    }
    let bytes = b.max_bytes.as_u64();
    if !(1024..=64 << 20).contains(&bytes) {
        bad(
            "batch.max_bytes",
            format!("{} is outside 1KiB..64MiB, e.g. \"1MB\"", b.max_bytes),
        );
    }
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
