//! When a failed delivery is tried again, and when it is given up.
//!
//! By default the delays follow the Standard Webhooks schedule (the first attempt at
//! once, then 5 s, 5 min, 30 min, 2 h, 5 h, 10 h, 14 h, 20 h and 24 h later: ten
//! attempts over about three and a half days). A subscriber may list its own delays
//! (`retry_schedule`) or ask for exponential ones (`retry_initial` doubling up to
//! `retry_max`, `max_attempts` in all). Every delay gets ±25% jitter, so retries of
//! many events do not arrive together. A `Retry-After` on a 429 or 503 answer is
//! honoured (never retried sooner), clamped to `retry_after_max`. Statuses listed in
//! `final_statuses` end an event at once. (410 Gone is not final: it disables the whole
//! subscriber, and the event waits with the others until it is resumed.)

use std::time::Duration;

use rand::Rng;

use crate::config::Subscriber;

/// The Standard Webhooks schedule: delays before the 2nd to 10th attempt.
pub const DEFAULT_SCHEDULE: [&str; 9] = ["5s", "5m", "30m", "2h", "5h", "10h", "14h", "20h", "24h"];
const DEFAULT_INITIAL: Duration = Duration::from_secs(1);
const DEFAULT_MAX: Duration = Duration::from_secs(300);
const DEFAULT_ATTEMPTS: u32 = 10;
/// The longest delay of a listed schedule (and of `retry_max`, `retry_after_max`).
const LONGEST: Duration = Duration::from_secs(7 * 24 * 3600);

/// What comes after a failed attempt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Try again after this long.
    Retry(Duration),
    /// Give the event up: it becomes a dead letter.
    Dead(DeadWhy),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadWhy {
    /// Every attempt the policy allows failed.
    Exhausted,
    /// The subscriber answered a status that ends the event (`final_statuses`).
    Final(u16),
}

/// A subscriber's retry policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    schedule: Schedule,
    retry_after_max: Duration,
    final_statuses: Vec<u16>,
}

#[derive(Debug, Clone, PartialEq)]
enum Schedule {
    /// Delays before the 2nd, 3rd, ... attempt.
    Listed(Vec<Duration>),
    Exponential {
        initial: Duration,
        max: Duration,
        attempts: u32,
    },
}

/// Problems in one subscriber's retry settings, as (key, message) pairs.
pub fn check(sub: &Subscriber) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let exponential = sub.retry_initial.is_some() || sub.retry_max.is_some() || sub.max_attempts.is_some();
    if let Some(list) = &sub.retry_schedule {
        if exponential {
            out.push((
                "retry_schedule".to_string(),
                "set either retry_schedule or retry_initial/retry_max/max_attempts, not both".to_string(),
            ));
        }
        if list.is_empty() {
            out.push((
                "retry_schedule".to_string(),
                "list at least one delay, e.g. [\"5s\", \"5m\"] (or set max_attempts = 1 for no retries)"
                    .to_string(),
            ));
        }
        for (i, text) in list.iter().enumerate() {
            match humantime::parse_duration(text) {
                Ok(d) if d > LONGEST => out.push((
                    format!("retry_schedule[{i}]"),
                    format!("{text:?} is longer than 7 days"),
                )),
                Ok(_) => {}
                Err(e) => out.push((
                    format!("retry_schedule[{i}]"),
                    format!("{text:?} is not a duration ({e}), e.g. \"30s\", \"5m\", \"2h\""),
                )),
            }
        }
    }
    if sub.retry_initial.is_some_and(|d| d.is_zero()) {
        out.push(("retry_initial".into(), "must be above 0".into()));
    }
    let initial = sub.retry_initial.unwrap_or(DEFAULT_INITIAL);
    if sub.retry_max.is_some_and(|m| m < initial) {
        out.push(("retry_max".into(), "must not be below retry_initial".into()));
    }
    if sub.retry_max.is_some_and(|m| m > LONGEST) {
        out.push(("retry_max".into(), "must not be longer than 7 days".into()));
    }
    if sub.max_attempts == Some(0) {
        out.push(("max_attempts".into(), "must be at least 1".into()));
    }
    if sub.retry_after_max > LONGEST {
        out.push(("retry_after_max".into(), "must not be longer than 7 days".into()));
    }
    for (i, s) in sub.final_statuses.iter().enumerate() {
        if !(400..500).contains(s) || *s == 408 || *s == 429 || *s == 410 {
            out.push((
                format!("final_statuses[{i}]"),
                format!(
                    "{s} cannot be final: list 4xx statuses other than 408, 429 and 410 (410 Gone disables the subscriber)"
                ),
            ));
        }
    }
    out
}

impl Policy {
    /// The policy of a subscriber whose settings passed `check`.
    pub fn new(sub: &Subscriber) -> Policy {
        let exponential =
            sub.retry_initial.is_some() || sub.retry_max.is_some() || sub.max_attempts.is_some();
        let schedule = match &sub.retry_schedule {
            Some(list) if !exponential => Schedule::Listed(
                list.iter()
                    .filter_map(|t| humantime::parse_duration(t).ok())
                    .collect(),
            ),
            _ if exponential => {
                let initial = sub.retry_initial.unwrap_or(DEFAULT_INITIAL);
                Schedule::Exponential {
                    initial,
                    max: sub.retry_max.unwrap_or(DEFAULT_MAX.max(initial)),
                    attempts: sub.max_attempts.unwrap_or(DEFAULT_ATTEMPTS),
                }
            }
            _ => Schedule::Listed(
                DEFAULT_SCHEDULE
                    .iter()
                    .filter_map(|t| humantime::parse_duration(t).ok())
                    .collect(),
            ),
        };
        Policy {
            schedule,
            retry_after_max: sub.retry_after_max,
            final_statuses: sub.final_statuses.clone(),
        }
    }

    /// Attempts an event gets at most.
    pub fn max_attempts(&self) -> u32 {
        match &self.schedule {
            Schedule::Listed(delays) => u32::try_from(delays.len()).unwrap_or(u32::MAX).saturating_add(1),
            Schedule::Exponential { attempts, .. } => *attempts,
        }
    }

    /// What follows the failed attempt number `attempts` (1 for the first), which was
    /// answered `status` (None: no answer) with `retry_after` (a 429's or 503's).
    pub fn after_failure(
        &self,
        attempts: u32,
        status: Option<u16>,
        retry_after: Option<Duration>,
    ) -> Verdict {
        if let Some(s) = status.filter(|s| self.final_statuses.contains(s)) {
            return Verdict::Dead(DeadWhy::Final(s));
        }
        if attempts >= self.max_attempts() {
            return Verdict::Dead(DeadWhy::Exhausted);
        }
        let delay = match &self.schedule {
            // retry_max is the longest delay, jitter included.
            Schedule::Exponential { max, .. } => jitter(self.delay(attempts)).min(*max),
            Schedule::Listed(_) => jitter(self.delay(attempts)),
        };
        let told = match status {
            Some(429 | 503) => retry_after.map(|d| d.min(self.retry_after_max)),
            _ => None,
        };
        Verdict::Retry(told.map_or(delay, |t| t.max(delay)))
    }

    /// The delay after `attempts` failed attempts, without jitter.
    fn delay(&self, attempts: u32) -> Duration {
        match &self.schedule {
            Schedule::Listed(delays) => {
                let i = attempts.saturating_sub(1) as usize;
                delays.get(i).or(delays.last()).copied().unwrap_or_default()
            }
            Schedule::Exponential { initial, max, .. } => exponential(*initial, *max, attempts),
        }
    }

    /// The wait before probe number `probes + 1` of a subscriber that seems down:
    /// exponential from the retry policy's first delay (1 s at least), up to 5 minutes
    /// (or `retry_max`), so a subscriber that comes back is found soon.
    pub fn probe_delay(&self, probes: u32) -> Duration {
        let (initial, max) = match &self.schedule {
            Schedule::Exponential { initial, max, .. } => (*initial, *max),
            Schedule::Listed(delays) => {
                let first = delays.first().copied().unwrap_or(DEFAULT_INITIAL);
                (first.clamp(DEFAULT_INITIAL, DEFAULT_MAX), DEFAULT_MAX)
            }
        };
        jitter(exponential(initial, max, probes))
    }
}

/// `initial` doubled per attempt after the first, capped at `max`.
fn exponential(initial: Duration, max: Duration, attempts: u32) -> Duration {
    let exp = attempts.saturating_sub(1).min(20);
    initial.saturating_mul(1u32 << exp).min(max)
}

/// ±25%.
fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.75..=1.25))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub(extra: &str) -> Subscriber {
        let text = format!(
            "[source]\nurl = \"postgres://localhost/shop\"\n[[events]]\ntable = \"t\"\n[[subscribers]]\nname = \"s\"\nurl = \"https://a.example.com/\"\nevents = [\"*\"]\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n{extra}\n"
        );
        crate::app::check::from_toml(&text, "t", &|_| None)
            .unwrap_or_else(|e| panic!("{extra}: {e}"))
            .subscribers
            .remove(0)
    }

    fn within(d: Duration, nominal: Duration) -> bool {
        d >= nominal.mul_f64(0.75) && d <= nominal.mul_f64(1.25)
    }

    #[test]
    fn the_default_is_the_standard_webhooks_schedule() {
        let p = Policy::new(&sub(""));
        assert_eq!(p.max_attempts(), 10);
        let nominal = [5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400];
        for (i, secs) in nominal.iter().enumerate() {
            match p.after_failure(i as u32 + 1, Some(500), None) {
                Verdict::Retry(d) => assert!(within(d, Duration::from_secs(*secs)), "{i}: {d:?}"),
                v => panic!("{i}: {v:?}"),
            }
        }
        assert_eq!(
            p.after_failure(10, Some(500), None),
            Verdict::Dead(DeadWhy::Exhausted)
        );
        assert!(p.after_failure(1, None, None).is_retry());
    }

    #[test]
    fn listed_and_exponential_schedules() {
        let p = Policy::new(&sub("retry_schedule = [\"1s\", \"10s\"]"));
        assert_eq!(p.max_attempts(), 3);
        assert!(
            matches!(p.after_failure(2, None, None), Verdict::Retry(d) if within(d, Duration::from_secs(10)))
        );
        assert_eq!(p.after_failure(3, None, None), Verdict::Dead(DeadWhy::Exhausted));
        let p = Policy::new(&sub(
            "retry_initial = \"100ms\"\nretry_max = \"1s\"\nmax_attempts = 5",
        ));
        assert_eq!(p.max_attempts(), 5);
        assert!(
            matches!(p.after_failure(3, None, None), Verdict::Retry(d) if within(d, Duration::from_millis(400)))
        );
        assert!(
            matches!(p.after_failure(4, None, None), Verdict::Retry(d) if within(d, Duration::from_millis(800)) && d <= Duration::from_secs(1))
        );
        let capped = Policy::new(&sub("retry_initial = \"1s\"\nretry_max = \"2s\""));
        for _ in 0..50 {
            assert!(
                matches!(capped.after_failure(5, None, None), Verdict::Retry(d) if d <= Duration::from_secs(2) && d >= Duration::from_millis(1500))
            );
        }
        assert_eq!(p.after_failure(5, None, None), Verdict::Dead(DeadWhy::Exhausted));
        // Any exponential key alone selects exponential retries with the other defaults.
        assert_eq!(Policy::new(&sub("max_attempts = 3")).max_attempts(), 3);
    }

    #[test]
    fn retry_after_is_honoured_on_429_and_503_and_clamped() {
        let p = Policy::new(&sub("retry_initial = \"100ms\"\nretry_after_max = \"30s\""));
        let told = Some(Duration::from_secs(7));
        assert_eq!(
            p.after_failure(1, Some(429), told),
            Verdict::Retry(Duration::from_secs(7))
        );
        assert_eq!(
            p.after_failure(1, Some(503), told),
            Verdict::Retry(Duration::from_secs(7))
        );
        // Not on other statuses; never longer than retry_after_max; never shorter than
        // the schedule.
        assert!(
            matches!(p.after_failure(1, Some(500), told), Verdict::Retry(d) if d < Duration::from_secs(1))
        );
        assert_eq!(
            p.after_failure(1, Some(429), Some(Duration::from_secs(3600))),
            Verdict::Retry(Duration::from_secs(30))
        );
        let slow = Policy::new(&sub(""));
        assert!(
            matches!(slow.after_failure(2, Some(429), Some(Duration::from_secs(1))), Verdict::Retry(d) if d >= Duration::from_secs(225))
        );
    }

    #[test]
    fn final_statuses_end_an_event() {
        let p = Policy::new(&sub("final_statuses = [400, 422]"));
        for s in [400, 422] {
            assert_eq!(
                p.after_failure(1, Some(s), None),
                Verdict::Dead(DeadWhy::Final(s))
            );
        }
        // 410 disables the subscriber (the lane's business): the event itself waits.
        for s in [401, 404, 410, 500] {
            assert!(p.after_failure(1, Some(s), None).is_retry(), "{s}");
        }
    }

    #[test]
    fn bad_settings_are_named_with_their_keys() {
        let keys = |extra: &str| -> Vec<String> {
            let text = format!(
                "[source]\nurl = \"postgres://localhost/shop\"\n[[events]]\ntable = \"t\"\n[[subscribers]]\nname = \"s\"\nurl = \"https://a.example.com/\"\nevents = [\"*\"]\nsecrets = [\"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\"]\n{extra}\n"
            );
            match crate::app::check::from_toml(&text, "t", &|_| None) {
                Ok(_) => Vec::new(),
                Err(crate::config::ConfigError::Invalid { problems, .. }) => problems
                    .into_iter()
                    .map(|p| p.path.trim_start_matches("subscribers[0].").to_string())
                    .collect(),
                Err(e) => panic!("{extra}: {e}"),
            }
        };
        assert_eq!(keys("retry_schedule = [\"5s\", \"soon\"]"), ["retry_schedule[1]"]);
        assert_eq!(keys("retry_schedule = []"), ["retry_schedule"]);
        assert_eq!(
            keys("retry_schedule = [\"5s\"]\nmax_attempts = 3"),
            ["retry_schedule"]
        );
        assert_eq!(keys("retry_schedule = [\"8d\"]"), ["retry_schedule[0]"]);
        assert_eq!(
            keys("final_statuses = [500, 404, 429, 410]"),
            ["final_statuses[0]", "final_statuses[2]", "final_statuses[3]"]
        );
        assert_eq!(keys("retry_initial = \"10s\"\nretry_max = \"1s\""), ["retry_max"]);
        assert_eq!(keys("max_attempts = 0"), ["max_attempts"]);
        assert!(keys("retry_schedule = [\"0s\", \"1m\"]\nfinal_statuses = [400]").is_empty());
    }

    impl Verdict {
        fn is_retry(&self) -> bool {
            matches!(self, Verdict::Retry(_))
        }
    }
}
