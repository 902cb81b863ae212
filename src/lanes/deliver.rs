//! One HTTP delivery attempt with Standard Webhooks headers, and the retry schedule.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use rand::Rng;

use super::format::Formatter;
use super::http::{Client, Options};
use super::sign::{signature_header, Secret};
use crate::config::Subscriber;

/// The outcome of one attempt: a value, not an error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    Delivered,
    /// Worth retrying: network error, timeout, 5xx, 429, other 4xx.
    Failed(String),
}

/// The HTTP side of a lane: client with keep-alive, target, format, headers and secrets.
pub struct Target {
    client: Client,
    format: Formatter,
    secrets: Vec<Secret>,
    retry_initial: Duration,
    retry_max: Duration,
}

/// What a failed attempt's error starts with when the event could not be shaped for the
/// subscriber (a template failed on its values): the event's fault, not the subscriber's.
const UNSHAPEABLE: &str = "cannot shape the request: ";

impl Target {
    /// The target of subscriber `index`; `database` names the source in CloudEvents.
    pub fn new(sub: &Subscriber, index: usize, database: &str) -> Result<Target, String> {
        let url = url::Url::parse(&sub.url).map_err(|e| format!("url: {e}"))?;
        let format = Formatter::new(sub, index, database)?;
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
                roots: None,
            },
        )?;
        let secrets = sub
            .secrets
            .iter()
            .map(|s| Secret::parse(s).map_err(|e| e.to_string()))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Target {
            client,
            format,
            secrets,
            retry_initial: sub.retry_initial,
            retry_max: sub.retry_max,
        })
    }

    /// Sends one signed request for the event `id` with standard body `body`. Returns
    /// the outcome and the time it took.
    pub async fn send(&self, id: &str, body: &[u8]) -> (Attempt, Duration) {
        let started = Instant::now();
        let request = match self.request(id, body, unix_now()) {
            Ok(r) => r,
            Err(e) => return (Attempt::Failed(e), started.elapsed()),
        };
        let outcome = match self.client.send(&request).await {
            Ok(resp) if (200..300).contains(&resp.status) => Attempt::Delivered,
            Ok(resp) => Attempt::Failed(format!(
                "HTTP {}: {}",
                resp.status,
                String::from_utf8_lossy(&resp.excerpt).trim()
            )),
            Err(e) => Attempt::Failed(e.to_string()),
        };
        (outcome, started.elapsed())
    }

    /// The exact request `send` would make at Unix time `ts`: request line, headers
    /// (signed) and body in the subscriber's format. An error when the event cannot be
    /// shaped for this subscriber.
    pub fn request(&self, id: &str, body: &[u8], ts: i64) -> Result<Vec<u8>, String> {
        let req = self
            .format
            .format(id, body)
            .map_err(|e| format!("{UNSHAPEABLE}{e}"))?;
        let signature = signature_header(&self.secrets, id, ts, &req.body);
        let ts = ts.to_string();
        let mut headers: Vec<(&str, &str)> = vec![
            ("webhook-id", id),
            ("webhook-timestamp", ts.as_str()),
            ("webhook-signature", signature.as_str()),
        ];
        headers.extend(req.headers.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        Ok(self
            .client
            .request(&req.method, &req.content_type, &headers, &req.body))
    }

    /// Delay before the attempt after `attempts` failed ones: exponential from
    /// `retry_initial`, capped at `retry_max`, with ±25% jitter.
    pub fn backoff(&self, attempts: u32) -> Duration {
        backoff(self.retry_initial, self.retry_max, attempts)
    }
}

/// Whether a failed attempt's error says the subscriber is unreachable or overloaded
/// (network errors, timeouts, 5xx, 408, 429) rather than refusing this one event.
pub fn suggests_down(error: &str) -> bool {
    if error.starts_with(UNSHAPEABLE) {
        return false;
    }
    match error.strip_prefix("HTTP ") {
        Some(rest) => rest.starts_with('5') || rest.starts_with("408") || rest.starts_with("429"),
        None => true,
    }
}

/// Seconds since the Unix epoch (the `webhook-timestamp` header).
pub fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

pub fn backoff(initial: Duration, max: Duration, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(30);
    let base = initial.saturating_mul(1u32 << exp.min(20)).min(max);
    let jitter = rand::thread_rng().gen_range(0.75..=1.25);
    base.mul_f64(jitter).min(max)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_failures_suggest_the_subscriber_is_down() {
        for down in [
            "timed out",
            "connect failed: refused",
            "request failed: reset",
            "HTTP 503: busy",
            "HTTP 429: slow down",
        ] {
            assert!(suggests_down(down), "{down}");
        }
        for refused in [
            "HTTP 400: bad",
            "HTTP 404: ",
            "HTTP 422: no",
            "cannot shape the request: subscribers[0].template failed: undefined value",
        ] {
            assert!(!suggests_down(refused), "{refused}");
        }
    }

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
