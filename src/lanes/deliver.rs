//! One HTTP delivery attempt with Standard Webhooks headers, and the retry schedule.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;
use reqwest::header::{HeaderMap, HeaderName, HeaderValue, CONTENT_TYPE};

use super::sign::{signature_header, Secret};
use crate::config::Subscriber;

/// Bytes of a response body read (and kept for logs) at most.
const RESPONSE_EXCERPT: usize = 512;

/// The outcome of one attempt: a value, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    /// Worth retrying: network error, timeout, 5xx, 429, other 4xx.
    Failed(String),
}

/// The HTTP side of a lane: client with keep-alive, target, headers and secrets.
pub struct Target {
    client: reqwest::Client,
    url: reqwest::Url,
    headers: HeaderMap,
    secrets: Vec<Secret>,
    retry_initial: Duration,
    retry_max: Duration,
}

impl Target {
    pub fn new(sub: &Subscriber) -> Result<Target, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(sub.timeout)
            .connect_timeout(sub.timeout.min(Duration::from_secs(10)))
            .pool_max_idle_per_host(sub.max_in_flight)
            .pool_idle_timeout(Duration::from_secs(60))
            .tcp_nodelay(true)
            .user_agent(concat!("walhook/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| format!("HTTP client: {e}"))?;
        let url = reqwest::Url::parse(&sub.url).map_err(|e| format!("url: {e}"))?;
        let mut headers = HeaderMap::new();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
        for (k, v) in &sub.headers {
            let name = HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("header {k}: {e}"))?;
            let value = HeaderValue::from_str(v).map_err(|e| format!("header {k}: {e}"))?;
            headers.insert(name, value);
        }
        let secrets = sub
            .secrets
            .iter()
            .map(|s| Secret::parse(s).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Target {
            client,
            url,
            headers,
            secrets,
            retry_initial: sub.retry_initial,
            retry_max: sub.retry_max,
        })
    }

    /// Sends one signed request. Returns the outcome and the time it took.
    pub async fn send(&self, id: &str, body: &bytes::Bytes) -> (Attempt, Duration) {
        let started = Instant::now();
        let ts = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0);
        let signature = signature_header(&self.secrets, id, ts, body);
        let request = self
            .client
            .post(self.url.clone())
            .headers(self.headers.clone())
            .header("webhook-id", id)
            .header("webhook-timestamp", ts.to_string())
            .header("webhook-signature", signature)
            .body(body.clone());
        let outcome = match request.send().await {
            Ok(mut resp) => {
                let status = resp.status();
                let mut excerpt = Vec::new();
                // Read a little of the body (for logs) and let the rest go.
                while excerpt.len() < RESPONSE_EXCERPT {
                    match resp.chunk().await {
                        Ok(Some(chunk)) => {
                            excerpt.extend_from_slice(&chunk[..chunk.len().min(RESPONSE_EXCERPT)])
                        }
                        _ => break,
                    }
                }
                if status.is_success() {
                    Attempt::Delivered
                } else {
                    excerpt.truncate(RESPONSE_EXCERPT);
                    Attempt::Failed(format!(
                        "HTTP {}: {}",
                        status.as_u16(),
                        String::from_utf8_lossy(&excerpt).trim()
                    ))
                }
            }
            Err(e) if e.is_timeout() => Attempt::Failed("timed out".into()),
            Err(e) if e.is_connect() => Attempt::Failed(format!("connect failed: {}", root_cause(&e))),
            Err(e) => Attempt::Failed(format!("request failed: {}", root_cause(&e))),
        };
        (outcome, started.elapsed())
    }

    /// Delay before the attempt after `attempts` failed ones: exponential from
    /// `retry_initial`, capped at `retry_max`, with ±25% jitter.
    pub fn backoff(&self, attempts: u32) -> Duration {
        backoff(self.retry_initial, self.retry_max, attempts)
    }
}

pub fn backoff(initial: Duration, max: Duration, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let base = initial.saturating_mul(1u32 << exp.min(20)).min(max);
    let jitter = rand::thread_rng().gen_range(0.75..=1.25);
    base.mul_f64(jitter).min(max)
}

fn root_cause(e: &(dyn std::error::Error + 'static)) -> String {
    let mut cur = e;
    while let Some(next) = cur.source() {
        cur = next;
    }
    cur.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_caps() {
        let (i, m) = (Duration::from_millis(100), Duration::from_secs(2));
        let first = backoff(i, m, 1);
        assert!(
            first >= Duration::from_millis(75) && first <= Duration::from_millis(125),
            "{first:?}"
        );
        let third = backoff(i, m, 3);
        assert!(
            third >= Duration::from_millis(300) && third <= Duration::from_millis(500),
            "{third:?}"
        );
        assert!(backoff(i, m, 40) <= m);
    }
}
