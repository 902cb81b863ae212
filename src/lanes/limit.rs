//! A subscriber's `rate_limit` (`"50/s"`, `"600/m"`, `"1000/h"`): a token bucket that
//! holds as many tokens as the limit allows in one second (at least one), refilled
//! continuously. Every request of the lane, first attempts, retries and probes alike,
//! takes a token first; a lane at its limit waits on its own bucket, so it never slows
//! another lane.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Parses a rate limit into requests per second; the error names the expected form.
pub fn parse(text: &str) -> Result<f64, String> {
    let bad = || {
        format!("{text:?} is not a rate: write requests per second, minute or hour, e.g. \"50/s\", \"600/m\"")
    };
    let (n, unit) = text.trim().split_once('/').ok_or_else(bad)?;
    let n: f64 = n.trim().parse().map_err(|_| bad())?;
    let per = match unit.trim() {
        "s" | "sec" | "second" => 1.0,
        "m" | "min" | "minute" => 60.0,
        "h" | "hour" => 3600.0,
        _ => return Err(bad()),
    };
    if !n.is_finite() || n <= 0.0 {
        return Err(format!("{text:?}: the number of requests must be above 0"));
    }
    Ok(n / per)
}

pub struct Limiter {
    /// Tokens per second.
    rate: f64,
    burst: f64,
    bucket: Mutex<Bucket>,
    /// Waiters take their turn in order, so a batch waiting for many tokens is not
    /// overtaken forever by smaller ones.
    turn: tokio::sync::Mutex<()>,
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

impl Limiter {
    /// The limiter of a subscriber's `rate_limit`, if it has one; the error names the
    /// expected form.
    pub fn of(sub: &crate::config::Subscriber) -> Result<Option<Limiter>, String> {
        Self::parsed(sub.rate_limit.as_deref())
    }

    /// The limiter of a subscriber's `rate_limit_events` (events of batches), if it has
    /// one.
    pub fn of_events(sub: &crate::config::Subscriber) -> Result<Option<Limiter>, String> {
        Self::parsed(sub.rate_limit_events.as_deref())
    }

    fn parsed(text: Option<&str>) -> Result<Option<Limiter>, String> {
        text.map(parse).transpose().map(|r| r.map(Limiter::new))
    }

    /// A limiter of `rate` requests per second, starting full.
    pub fn new(rate: f64) -> Limiter {
        let burst = rate.max(1.0);
        Limiter {
            rate,
            burst,
            bucket: Mutex::new(Bucket {
                tokens: burst,
                at: Instant::now(),
            }),
            turn: tokio::sync::Mutex::new(()),
        }
    }

    /// Takes `n` tokens now, or says how long until they are there. More than the bucket
    /// holds are taken once it is full, leaving it in debt: a batch of more events than
    /// the limit allows in a second goes out, and the next waits until it is paid off.
    fn try_take_n(&self, now: Instant, n: usize) -> Result<(), Duration> {
        let n = n as f64;
        let mut b = self.bucket.lock().unwrap_or_else(|p| p.into_inner());
        let refill = now.saturating_duration_since(b.at).as_secs_f64() * self.rate;
        b.tokens = (b.tokens + refill).min(self.burst);
        b.at = now;
        let needed = n.min(self.burst);
        if b.tokens >= needed {
            b.tokens -= n;
            Ok(())
        } else {
            Err(Duration::from_secs_f64((needed - b.tokens) / self.rate))
        }
    }

    /// Waits for a token.
    pub async fn acquire(&self) {
        self.acquire_n(1).await
    }

    /// Waits for `n` tokens (see `try_take_n`), after every earlier waiter.
    pub async fn acquire_n(&self, n: usize) {
        let _turn = self.turn.lock().await;
        while let Err(wait) = self.try_take_n(Instant::now(), n) {
            tokio::time::sleep(wait).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Asserts `wait` lies in (`above_ms`, `at_most_ms`].
    fn assert_wait(wait: Duration, above_ms: u64, at_most_ms: u64) {
        assert!(
            wait > Duration::from_millis(above_ms) && wait <= Duration::from_millis(at_most_ms),
            "{wait:?}"
        );
    }

    #[test]
    fn rates_parse_per_second_minute_and_hour() {
        assert_eq!(parse("50/s"), Ok(50.0));
        assert_eq!(parse(" 600 / m "), Ok(10.0));
        assert_eq!(parse("3600/h"), Ok(1.0));
        assert_eq!(parse("0.5/s"), Ok(0.5));
        for bad in ["50", "50/d", "x/s", "0/s", "-1/s", "inf/s", ""] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let l = Limiter::new(10.0);
        let t0 = Instant::now();
        for _ in 0..10 {
            assert_eq!(l.try_take_n(t0, 1), Ok(()));
        }
        let wait = l.try_take_n(t0, 1).unwrap_err();
        assert_wait(wait, 99, 100);
        // A second later ten more, never more than the burst.
        let t1 = t0 + Duration::from_secs(5);
        for _ in 0..10 {
            assert_eq!(l.try_take_n(t1, 1), Ok(()));
        }
        assert!(l.try_take_n(t1, 1).is_err());
        // Slow rates still let one request through at a time.
        let slow = Limiter::new(1.0 / 60.0);
        assert_eq!(slow.try_take_n(t0, 1), Ok(()));
        let wait = slow.try_take_n(t0, 1).unwrap_err();
        assert!(wait > Duration::from_secs(59), "{wait:?}");
    }

    #[test]
    fn a_batch_takes_a_token_per_event_and_a_big_one_leaves_a_debt() {
        let l = Limiter::new(100.0);
        let t0 = Instant::now();
        assert_eq!(l.try_take_n(t0, 60), Ok(()));
        // 40 left: a batch of 50 waits for 10 more, 0.1 s.
        let wait = l.try_take_n(t0, 50).unwrap_err();
        assert_wait(wait, 99, 100);
        // More than the bucket holds goes once it is full, and the next waits for the debt.
        let t1 = t0 + Duration::from_secs(10);
        assert_eq!(l.try_take_n(t1, 300), Ok(()));
        let wait = l.try_take_n(t1, 1).unwrap_err();
        assert_wait(wait, 2000, 2011);
    }
}
