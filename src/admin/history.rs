//! What the console shows over time: every `EVERY` the counters are sampled, so that the
//! overview can draw events decoded and delivered per second over the last 15 minutes,
//! and each subscriber shows its delivery rate and latency over the last minute.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::lanes::Lane;
use crate::metrics::{Metrics, LATENCY_BUCKETS};

/// How often the counters are sampled.
pub const EVERY: Duration = Duration::from_secs(5);
/// How far back the overview's chart goes.
const CHART: Duration = Duration::from_secs(15 * 60);
/// How far back a subscriber's rate and latency look.
const RECENT: Duration = Duration::from_secs(60);
/// How long counts read from the state database are used again.
const COUNTS_FOR: Duration = Duration::from_secs(10);
/// How long a count may take before the console goes on without it.
const COUNTS_TIMEOUT: Duration = Duration::from_secs(3);

/// The pipeline's counters at one time.
#[derive(Debug, Clone, Copy)]
struct Point {
    unix_ms: u64,
    decoded: u64,
    delivered: u64,
}

/// A lane's counters at one time.
#[derive(Debug, Clone, Copy)]
pub struct LaneSnap {
    at: Instant,
    delivered: u64,
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
}

impl LaneSnap {
    pub fn of(lane: &Lane, at: Instant) -> LaneSnap {
        let (buckets, count) = lane.metrics.latency_counts();
        LaneSnap {
            at,
            delivered: lane.metrics.delivered.get(),
            buckets,
            count,
        }
    }
}

/// A subscriber's recent figures.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Recent {
    pub delivered_per_second: f64,
    /// Delivery latency percentiles in milliseconds; none without deliveries.
    pub p50_ms: Option<f64>,
    pub p99_ms: Option<f64>,
}

/// One point of the chart: rates over the interval that ends at `t` (unix ms).
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Rate {
    pub t: u64,
    pub decoded: f64,
    pub delivered: f64,
}

/// Per subscriber: events in its spill log, and its dead letters.
pub type Counts = Arc<HashMap<String, (i64, i64)>>;

#[derive(Default)]
struct Inner {
    /// Held while the counts are read, so that many consoles refreshing at once cost
    /// the state database one query.
    reading: Arc<tokio::sync::Mutex<()>>,
    points: VecDeque<Point>,
    lanes: HashMap<String, VecDeque<LaneSnap>>,
    /// Spill log and dead letter counts per subscriber, and when they were read.
    counts: Option<(Instant, Counts)>,
}

/// Samples kept for the console (shared by the admin server's handlers).
#[derive(Clone, Default)]
pub struct History(Arc<Mutex<Inner>>);

impl History {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Takes one sample of `metrics` and `lanes` now.
    pub fn sample(&self, metrics: &Metrics, lanes: &[Arc<Lane>]) {
        let now = Instant::now();
        let point = Point {
            unix_ms: unix_ms(),
            decoded: metrics.changes_decoded.get(),
            delivered: lanes.iter().map(|l| l.metrics.delivered.get()).sum(),
        };
        let mut inner = self.lock();
        inner.points.push_back(point);
        let keep = (CHART.as_secs() / EVERY.as_secs()) as usize + 1;
        while inner.points.len() > keep {
            inner.points.pop_front();
        }
        for lane in lanes {
            let snaps = inner.lanes.entry(lane.name.clone()).or_default();
            snaps.push_back(LaneSnap::of(lane, now));
            while snaps.front().is_some_and(|s| now.duration_since(s.at) > RECENT) {
                snaps.pop_front();
            }
        }
        inner
            .lanes
            .retain(|name, _| lanes.iter().any(|l| &l.name == name));
    }

    /// Events decoded and delivered per second over the last 15 minutes, oldest first.
    pub fn rates(&self) -> Vec<Rate> {
        let inner = self.lock();
        rates(inner.points.iter().copied())
    }

    /// `lane`'s delivery rate and latency since its oldest sample of the last minute.
    pub fn recent(&self, lane: &Lane) -> Recent {
        let now = LaneSnap::of(lane, Instant::now());
        let then = self.lock().lanes.get(&lane.name).and_then(|s| s.front().copied());
        recent(then, now)
    }

    /// Spill log and dead letter counts per subscriber, read again when older than
    /// `COUNTS_FOR` by one request at a time; None when the state database does not
    /// answer within `COUNTS_TIMEOUT`.
    pub async fn counts(&self, state: &crate::state::State) -> Option<Counts> {
        let fresh = |inner: &Inner| {
            inner
                .counts
                .as_ref()
                .filter(|(at, _)| at.elapsed() < COUNTS_FOR)
                .map(|(_, c)| c.clone())
        };
        let reading = {
            let inner = self.lock();
            if let Some(c) = fresh(&inner) {
                return Some(c);
            }
            inner.reading.clone()
        };
        let _one = tokio::time::timeout(COUNTS_TIMEOUT, reading.lock()).await.ok()?;
        if let Some(c) = fresh(&self.lock()) {
            return Some(c);
        }
        let counts = tokio::time::timeout(COUNTS_TIMEOUT, state.backlogs())
            .await
            .ok()?
            .ok()?;
        let counts = Arc::new(counts);
        self.lock().counts = Some((Instant::now(), counts.clone()));
        Some(counts)
    }
}

/// Samples every `EVERY` until `cancel`.
pub async fn run(
    history: History,
    metrics: Arc<Metrics>,
    lanes: Arc<std::sync::OnceLock<Vec<Arc<Lane>>>>,
    cancel: tokio_util::sync::CancellationToken,
) {
    let mut tick = tokio::time::interval(EVERY);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tick.tick() => {}
        }
        history.sample(&metrics, lanes.get().map_or(&[], Vec::as_slice));
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Rates between consecutive points (a counter that went back, as after an in-process
/// restart, counts from zero).
fn rates(points: impl Iterator<Item = Point>) -> Vec<Rate> {
    let mut out = Vec::new();
    let mut prev: Option<Point> = None;
    for p in points {
        if let Some(q) = prev {
            let secs = p.unix_ms.saturating_sub(q.unix_ms) as f64 / 1000.0;
            if secs > 0.0 {
                let per = |now: u64, then: u64| {
                    let n = if now >= then { now - then } else { now };
                    n as f64 / secs
                };
                out.push(Rate {
                    t: p.unix_ms,
                    decoded: per(p.decoded, q.decoded),
                    delivered: per(p.delivered, q.delivered),
                });
            }
        }
        prev = Some(p);
    }
    out
}

fn recent(then: Option<LaneSnap>, now: LaneSnap) -> Recent {
    let Some(then) = then.filter(|t| t.count <= now.count && t.delivered <= now.delivered) else {
        return Recent {
            delivered_per_second: 0.0,
            p50_ms: None,
            p99_ms: None,
        };
    };
    let secs = now.at.duration_since(then.at).as_secs_f64();
    let buckets: [u64; LATENCY_BUCKETS.len()] =
        std::array::from_fn(|i| now.buckets[i].saturating_sub(then.buckets[i]));
    let count = now.count - then.count;
    Recent {
        delivered_per_second: if secs > 0.0 {
            (now.delivered - then.delivered) as f64 / secs
        } else {
            0.0
        },
        p50_ms: quantile(0.5, &buckets, count).map(|s| s * 1000.0),
        p99_ms: quantile(0.99, &buckets, count).map(|s| s * 1000.0),
    }
}

/// The `q` quantile (seconds) of `count` observations in cumulative `buckets` with upper
/// bounds `LATENCY_BUCKETS`, interpolated within its bucket as Prometheus'
/// `histogram_quantile` does; beyond the last bound it is that bound.
pub fn quantile(q: f64, buckets: &[u64; LATENCY_BUCKETS.len()], count: u64) -> Option<f64> {
    if count == 0 {
        return None;
    }
    let rank = q * count as f64;
    let mut below = 0u64;
    let mut lower = 0.0;
    for (i, &bound) in LATENCY_BUCKETS.iter().enumerate() {
        let cum = buckets[i];
        if cum as f64 >= rank && cum > below {
            let share = (rank - below as f64) / (cum - below) as f64;
            return Some(lower + (bound - lower) * share.clamp(0.0, 1.0));
        }
        below = cum.max(below);
        lower = bound;
    }
    Some(*LATENCY_BUCKETS.last().expect("buckets"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cumulative(per_bucket: [u64; LATENCY_BUCKETS.len()]) -> [u64; LATENCY_BUCKETS.len()] {
        let mut sum = 0;
        std::array::from_fn(|i| {
            sum += per_bucket[i];
            sum
        })
    }

    #[test]
    fn quantiles_interpolate_within_their_bucket() {
        // 100 deliveries: 50 in (1 ms, 2.5 ms], 49 in (2.5, 5], one in (0.5 s, 1 s].
        let mut per = [0; LATENCY_BUCKETS.len()];
        per[1] = 50;
        per[2] = 49;
        per[9] = 1;
        let b = cumulative(per);
        assert_eq!(quantile(0.5, &b, 100), Some(0.0025));
        let p99 = quantile(0.99, &b, 100).unwrap();
        assert!((p99 - 0.005).abs() < 1e-12, "{p99}");
        let p995 = quantile(0.995, &b, 100).unwrap();
        assert!((0.5..=1.0).contains(&p995), "{p995}");
        assert_eq!(quantile(0.5, &b, 0), None);
        // All beyond the last bound: the last bound.
        assert_eq!(quantile(0.5, &[0; LATENCY_BUCKETS.len()], 3), Some(10.0));
    }

    #[test]
    fn rates_come_from_counter_deltas_and_survive_a_reset() {
        let p = |s: u64, decoded, delivered| Point {
            unix_ms: s * 1000,
            decoded,
            delivered,
        };
        let r = rates([p(0, 0, 0), p(5, 500, 250), p(10, 40, 20)].into_iter());
        assert_eq!(
            r,
            vec![
                Rate {
                    t: 5000,
                    decoded: 100.0,
                    delivered: 50.0
                },
                Rate {
                    t: 10000,
                    decoded: 8.0,
                    delivered: 4.0
                },
            ]
        );
    }

    #[test]
    fn recent_figures_need_an_earlier_sample() {
        let t0 = Instant::now();
        let snap = |secs: u64, delivered, count| LaneSnap {
            at: t0 + Duration::from_secs(secs),
            delivered,
            buckets: [count; LATENCY_BUCKETS.len()],
            count,
        };
        let r = recent(Some(snap(0, 100, 100)), snap(10, 600, 600));
        assert_eq!(r.delivered_per_second, 50.0);
        assert!(r.p50_ms.unwrap() <= 1.0);
        let none = recent(None, snap(10, 600, 600));
        assert_eq!((none.delivered_per_second, none.p50_ms), (0.0, None));
    }
}
