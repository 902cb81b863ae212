//! One HTTP delivery attempt with Standard Webhooks headers, and what a failure means
//! under the subscriber's retry policy.

use std::borrow::Cow;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use std::sync::Arc;

use super::batch::{self, Batcher};
use super::format::{Formatter, Request};
use super::http::{self, Client, Options};
use super::limit::Limiter;
use super::retry::{self, Policy, Verdict};
use super::sign::Signer;
use crate::config::{Problem, Subscriber};

/// Bodies up to this size are sent in one buffer with their head; larger ones are written
/// after it from where they are, not copied (a large row's body would be copied per
/// attempt and per subscriber).
const INLINE_BODY: usize = 64 * 1024;

/// The outcome of one attempt: a value, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    Failed(Failure),
}

impl Attempt {
    /// The failure, when it failed.
    pub fn failure(&self) -> Option<&Failure> {
        match self {
            Attempt::Delivered => None,
            Attempt::Failed(f) => Some(f),
        }
    }
}

/// A failed attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// What went wrong, for logs and dead letters.
    pub error: String,
    /// The status answered; `None` when no answer came (network error, timeout) or the
    /// request was never sent.
    pub status: Option<u16>,
    /// The answer's `Retry-After`, as a delay.
    pub retry_after: Option<Duration>,
    /// The event could not be shaped for this subscriber (a template failed on it).
    pub unshapeable: bool,
    /// The failure of a request of many events (a batch) as another of its events has
    /// it already: it counts once towards the subscriber being down, not per event.
    pub echo: bool,
}

impl Failure {
    /// A failure without an answer (network error, timeout).
    pub fn unanswered(error: impl Into<String>) -> Failure {
        Failure {
            error: error.into(),
            status: None,
            retry_after: None,
            unshapeable: false,
            echo: false,
        }
    }

    /// Whether it says the subscriber is unreachable or overloaded (network errors,
    /// timeouts, 5xx, 408, 429) rather than refusing this one event.
    pub fn suggests_down(&self) -> bool {
        !self.unshapeable && self.status.is_none_or(|s| s >= 500 || s == 408 || s == 429)
    }
}

/// What a subscriber's target is built with besides its own settings.
pub struct Context<'a> {
    /// The source database's name (CloudEvents `source`).
    pub database: &'a str,
    /// `[delivery]`: the egress proxy of every subscriber.
    pub delivery: &'a crate::config::DeliveryConfig,
    /// The environment (`HTTPS_PROXY`, `NO_PROXY`, ...).
    pub env: &'a dyn Fn(&str) -> Option<String>,
}

/// The process environment, for `Context::env`.
pub fn process_env(name: &str) -> Option<String> {
    std::env::var(name).ok()
}

/// The TLS material and proxy of a subscriber's client, from its `tls`, its `proxy`,
/// `[delivery]` and the environment; problems go to `problems`.
type Egress = (
    Option<http::egress::Proxy>,
    Option<rustls::RootCertStore>,
    Option<(
        Vec<rustls::pki_types::CertificateDer<'static>>,
        rustls::pki_types::PrivateKeyDer<'static>,
    )>,
);

fn egress(
    sub: &Subscriber,
    url: &url::Url,
    ctx: &Context<'_>,
    key: &dyn Fn(&str) -> String,
    problems: &mut Vec<Problem>,
) -> Egress {
    let https = url.scheme() == "https";
    let host = url.host_str().unwrap_or_default();
    let port = url.port_or_known_default().unwrap_or(443);
    let chosen = http::egress::choose(
        sub.proxy.as_deref(),
        ctx.delivery.proxy.as_deref(),
        ctx.env,
        https,
        host,
        port,
    );
    // A proxy of the config is checked with the config (once, at its key); one from the
    // environment is checked here.
    let configured = sub.proxy.is_some() || ctx.delivery.proxy.as_deref().is_some_and(|p| !p.is_empty());
    let proxy = chosen.and_then(|p| {
        if configured {
            return http::egress::Proxy::parse(&p).ok();
        }
        // The environment's proxy variables serve many programs: one walhook cannot use
        // (a SOCKS or https proxy) is ignored with a warning, not a refusal to start.
        http::egress::Proxy::from_env(&p)
            .map_err(|e| {
                tracing::warn!(subscriber = %sub.name, proxy = %p, error = %e, "the environment's proxy is not one walhook can use; sending direct");
            })
            .ok()
    });
    let tls = sub.tls.clone().unwrap_or_default();
    let roots = tls.ca.as_deref().and_then(|ca| {
        http::egress::ca_roots(ca)
            .map_err(|e| problems.push(Problem::new(key("tls.ca"), e)))
            .ok()
    });
    let client_auth = match (tls.cert.as_deref(), tls.key.as_deref()) {
        (Some(cert), Some(k)) => http::egress::client_auth(cert, k)
            .map_err(|(which, e)| problems.push(Problem::new(key(which), e)))
            .ok(),
        _ => None,
    };
    (proxy, roots, client_auth)
}

/// The HTTP side of a lane: client with keep-alive, target, format, headers and secrets,
/// and with `batch` the batcher that gathers attempts into requests.
pub struct Target {
    core: Arc<Core>,
    policy: Policy,
    batcher: Option<Batcher>,
}

/// What makes and sends requests.
struct Core {
    client: Client,
    format: Formatter,
    signer: Signer,
    limiter: Option<Limiter>,
    /// `rate_limit_events`: events of batches.
    event_limiter: Option<Limiter>,
}

/// What a failed attempt's error starts with when the event could not be shaped for the
/// subscriber (a template failed on its values): the event's fault, not the subscriber's.
const UNSHAPEABLE: &str = "cannot shape the request: ";

impl Target {
    /// The target of subscriber `index`, compiled from its config; `database` names the
    /// source in CloudEvents. This is the check of the subscriber's delivery settings
    /// too (`lanes::check` calls it): every problem is returned at once, with its key
    /// path, so a target that passed the check cannot fail to build when a run starts.
    pub fn new(sub: &Subscriber, index: usize, ctx: &Context<'_>) -> Result<Target, Vec<Problem>> {
        let database = ctx.database;
        let key = |k: &str| format!("subscribers[{index}].{k}");
        let mut problems = Vec::new();
        let url = url::Url::parse(&sub.url)
            .map_err(|e| problems.push(Problem::new(key("url"), format!("not a URL: {e}"))))
            .ok();
        let format = Formatter::new(sub, index, database)
            .map_err(|(k, message)| problems.push(Problem::new(key(&k), message)))
            .ok();
        let signer = Signer::new(sub, index).map_err(|p| problems.extend(p)).ok();
        let limiter = Limiter::of(sub)
            .map_err(|e| problems.push(Problem::new(key("rate_limit"), e)))
            .ok()
            .flatten();
        let event_limiter = Limiter::of_events(sub)
            .map_err(|e| problems.push(Problem::new(key("rate_limit_events"), e)))
            .ok()
            .flatten();
        for (name, value) in &sub.headers {
            let message = if !http::valid_header_name(name) {
                "not a valid HTTP header name: use letters, digits and - _ ."
            } else if http::reserved_header(name) {
                "set by walhook itself: remove it from headers"
            } else if !http::valid_header_value(value) {
                "the value holds a line break or control character: remove it"
            } else {
                continue;
            };
            problems.push(Problem::new(key(&format!("headers.{name}")), message));
        }
        for (k, message) in retry::check(sub) {
            problems.push(Problem::new(key(&k), message));
        }
        let egress = url.as_ref().map(|u| egress(sub, u, ctx, &key, &mut problems));
        let (Some(url), Some(format), Some((proxy, roots, client_auth)), Some(signer), true) =
            (url, format, egress, signer, problems.is_empty())
        else {
            return Err(problems);
        };
        let templated = format.templated_headers();
        let headers: Vec<(String, String)> = sub
            .headers
            .iter()
            .filter(|(k, _)| !templated.contains(k))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let client = Client::new(
            &url,
            &headers,
            Options {
                timeout: sub.timeout,
                connect_timeout: sub.timeout.min(Duration::from_secs(10)),
                max_idle: sub.max_in_flight,
                idle_timeout: Duration::from_secs(60),
                roots,
                client_auth,
                proxy,
                allow_private: sub.allow_private_targets,
            },
        )
        .map_err(|e| vec![Problem::new(key("url"), e)])?;
        let core = Arc::new(Core {
            client,
            format,
            signer,
            limiter,
            event_limiter,
        });
        let batcher = batch::Limits::of(sub).map(|limits| {
            let core = core.clone();
            let flush: batch::Flush = Arc::new(move |events| {
                let core = core.clone();
                Box::pin(async move { core.send_batch(events).await })
            });
            Batcher::new(limits, flush)
        });
        Ok(Target {
            core,
            policy: Policy::new(sub),
            batcher,
        })
    }

    /// Sends one signed request for the event `id` with standard body `body` (with
    /// `batch`, in a request of many). Returns the outcome and the time it took.
    pub async fn send(&self, id: &str, body: &[u8]) -> (Attempt, Duration) {
        match &self.batcher {
            Some(batcher) => batcher.send(id, body).await,
            None => self.core.send(id, body).await,
        }
    }

    /// The exact request `send` would make at Unix time `ts` for one event (with `batch`,
    /// a batch of it alone): request line, headers (signed) and body in the subscriber's
    /// format. An error when the event cannot be shaped for this subscriber.
    pub fn request(&self, id: &str, body: &[u8], ts: i64) -> Result<Vec<u8>, String> {
        let (mut head, body) = match &self.batcher {
            None => self.core.request_parts(id, body, ts)?,
            Some(_) => {
                let batch = self.core.format.format_batch(&[(id, body)], &batch_id);
                let (id, req) = match (batch.request, batch.refused.into_iter().next()) {
                    (Some(r), _) => r,
                    (None, Some((_, e))) => return Err(format!("{UNSHAPEABLE}{e}")),
                    (None, None) => return Err(format!("{UNSHAPEABLE}the batch made no request")),
                };
                self.core.signed(&id, req, ts)
            }
        };
        head.extend_from_slice(&body);
        Ok(head)
    }
}

/// A failed attempt of an event that cannot be shaped for the subscriber.
fn unshapeable(error: String) -> Attempt {
    Attempt::Failed(Failure {
        unshapeable: true,
        ..Failure::unanswered(error)
    })
}

/// The webhook id of a batch: made from the ids of its events, so a retry of the same
/// events carries the same one.
pub fn batch_id(ids: &[&str]) -> String {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    for id in ids {
        h.update(id.as_bytes());
        h.update(b"\n");
    }
    let digest = h.finalize();
    let hex: String = digest[..16].iter().map(|b| format!("{b:02x}")).collect();
    format!("batch_{hex}")
}

impl Core {
    /// Sends one signed request for the event `id` with standard body `body`.
    async fn send(&self, id: &str, body: &[u8]) -> (Attempt, Duration) {
        if let Some(limiter) = &self.limiter {
            limiter.acquire().await;
        }
        let started = Instant::now();
        let (head, body) = match self.request_parts(id, body, unix_now()) {
            Ok(r) => r,
            Err(error) => return (unshapeable(error), started.elapsed()),
        };
        let outcome = self.exchange(&head, &body).await;
        (outcome, started.elapsed())
    }

    /// Sends the events `(id, standard body)` in one signed request: an outcome per event.
    /// An event that cannot be shaped fails on its own; the others go without it. When a
    /// template makes too big a body of them all, they go in halves.
    async fn send_batch(&self, events: Vec<(String, Vec<u8>)>) -> Vec<(Attempt, Duration)> {
        if let Some(limiter) = &self.event_limiter {
            limiter.acquire_n(events.len()).await;
        }
        let started = Instant::now();
        let refs: Vec<(&str, &[u8])> = events.iter().map(|(id, b)| (id.as_str(), b.as_slice())).collect();
        let mut outcomes: Vec<Option<Attempt>> = vec![None; events.len()];
        self.send_part(&refs, (0..refs.len()).collect(), &mut outcomes)
            .await;
        let took = started.elapsed();
        let unsent = || Attempt::Failed(Failure::unanswered("not sent: left out of its batch"));
        outcomes
            .into_iter()
            .map(|o| (o.unwrap_or_else(unsent), took))
            .collect()
    }

    /// Sends the events `events[i]` for each `i` in `which` in one request (or, when a
    /// template makes too big a body of them, in halves), writing their outcomes.
    fn send_part<'a>(
        &'a self,
        events: &'a [(&'a str, &'a [u8])],
        which: Vec<usize>,
        outcomes: &'a mut [Option<Attempt>],
    ) -> futures_util::future::BoxFuture<'a, ()> {
        Box::pin(async move {
            let part: Vec<(&str, &[u8])> = which.iter().map(|&i| events[i]).collect();
            let batch = self.format.format_batch(&part, &batch_id);
            if batch.too_big {
                let (a, b) = which.split_at(which.len() / 2);
                let (a, b) = (a.to_vec(), b.to_vec());
                self.send_part(events, a, outcomes).await;
                self.send_part(events, b, outcomes).await;
                return;
            }
            for (j, error) in batch.refused {
                outcomes[which[j]] = Some(unshapeable(format!("{UNSHAPEABLE}{error}")));
            }
            let Some((id, req)) = batch.request else {
                return;
            };
            if let Some(limiter) = &self.limiter {
                limiter.acquire().await;
            }
            let (head, body) = self.signed(&id, req, unix_now());
            let outcome = self.exchange(&head, &body).await;
            for (n, j) in batch.sent.into_iter().enumerate() {
                outcomes[which[j]] = Some(match &outcome {
                    // One failed request: it counts once towards the subscriber being down.
                    Attempt::Failed(f) if n > 0 => Attempt::Failed(Failure {
                        echo: true,
                        ..f.clone()
                    }),
                    o => o.clone(),
                });
            }
        })
    }

    /// Sends a request and says what its answer means.
    async fn exchange(&self, head: &[u8], body: &[u8]) -> Attempt {
        match self.client.send_parts(head, body).await {
            Ok(resp) if (200..300).contains(&resp.status) => Attempt::Delivered,
            // The proxy's own refusal, not the receiver's answer: no answer from it.
            Ok(resp) if resp.status == 407 && self.client.proxied().is_some() => {
                Attempt::Failed(Failure::unanswered(format!(
                    "the proxy {} refused the request: HTTP 407 (give its user and password in its URL, http://user:pass@host:port)",
                    self.client.proxied().unwrap_or_default()
                )))
            }
            Ok(resp) => Attempt::Failed(Failure {
                error: format!(
                    "HTTP {}: {}",
                    resp.status,
                    String::from_utf8_lossy(&resp.excerpt).trim()
                ),
                status: Some(resp.status),
                retry_after: resp.retry_after,
                unshapeable: false,
                echo: false,
            }),
            Err(e) => Attempt::Failed(Failure::unanswered(e.to_string())),
        }
    }

    /// The request `request` makes, as its head and its body. A body up to `INLINE_BODY`
    /// bytes is in the head's buffer already (one write); a larger one is the body as
    /// formatted, not copied (for the standard format, the event's own body).
    fn request_parts<'a>(
        &'a self,
        id: &str,
        body: &'a [u8],
        ts: i64,
    ) -> Result<(Vec<u8>, Cow<'a, [u8]>), String> {
        let req = self
            .format
            .format(id, body)
            .map_err(|e| format!("{UNSHAPEABLE}{e}"))?;
        Ok(self.signed(id, req, ts))
    }

    /// A request's head, signed as webhook `id` at Unix time `ts`, and its body. A body up
    /// to `INLINE_BODY` bytes is in the head's buffer already.
    fn signed<'a>(&self, id: &str, req: Request<'a>, ts: i64) -> (Vec<u8>, Cow<'a, [u8]>) {
        let signature = self.signer.header(id, ts, &req.body);
        let ts = ts.to_string();
        let mut headers: Vec<(&str, &str)> = vec![
            ("webhook-id", id),
            ("webhook-timestamp", ts.as_str()),
            ("webhook-signature", signature.as_str()),
        ];
        headers.extend(req.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let len = req.body.len();
        let inline = len <= INLINE_BODY;
        let mut head = self.client.request_head(
            &req.method,
            &req.content_type,
            &headers,
            len,
            if inline { len } else { 0 },
        );
        if inline {
            head.extend_from_slice(&req.body);
            return (head, Cow::Borrowed(&[]));
        }
        (head, req.body)
    }
}

impl Target {
    /// What follows failed attempt number `attempts` (1 for the first) of an event.
    pub fn verdict(&self, attempts: u32, failure: &Failure) -> Verdict {
        self.policy
            .after_failure(attempts, failure.status, failure.retry_after)
    }

    /// The wait before probe number `probes + 1` of a subscriber that seems down.
    pub fn probe_delay(&self, probes: u32) -> Duration {
        self.policy.probe_delay(probes)
    }
}

/// Seconds since the Unix epoch (the `webhook-timestamp` header).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_failures_suggest_the_subscriber_is_down() {
        let status = |s: u16| Failure {
            status: Some(s),
            ..Failure::unanswered(format!("HTTP {s}"))
        };
        for down in [
            Failure::unanswered("timed out"),
            Failure::unanswered("connect failed: refused"),
            status(503),
            status(500),
            status(429),
            status(408),
        ] {
            assert!(down.suggests_down(), "{down:?}");
        }
        let unshapeable = Failure {
            unshapeable: true,
            ..Failure::unanswered("cannot shape the request: template failed")
        };
        for refused in [status(400), status(404), status(422), status(410), unshapeable] {
            assert!(!refused.suggests_down(), "{refused:?}");
        }
    }
}
