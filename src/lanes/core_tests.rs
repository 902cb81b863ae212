//! The lane as a whole, without PostgreSQL or sockets: a real lane (its hot dispatcher,
//! age watch, spill writer and server) over the in-memory log and a scripted subscriber
//! (`memstore`), under paused time, so minutes of retries run in milliseconds and every
//! wait is exact. Each test asserts what a subscriber would see: which requests came,
//! in which order, and when.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::memstore::{Answer, MemStore, Scripted};
use super::{Lane, Mode};
use crate::config::{Config, Subscriber};
use crate::event::{Event, Mark, Pos};
use crate::progress::Progress;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

fn subscriber(extra: &str) -> Subscriber {
    let text = format!(
        "[source]\nurl = \"postgres://localhost/x\"\n[[events]]\ntable = \"t\"\n\
         [[subscribers]]\nname = \"s\"\nurl = \"https://example.com/hook\"\nevents = [\"*\"]\n\
         secrets = [\"{SECRET}\"]\n{extra}\n"
    );
    let parsed = Config::parse(&text, "t", &|_| None).unwrap();
    assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
    parsed.config.subscribers[0].clone()
}

struct Rig {
    lane: Arc<Lane>,
    store: Arc<MemStore>,
    sub: Arc<Scripted>,
    tracker: TaskTracker,
    cancel: CancellationToken,
    /// Every mode the lane was seen in, in order (looked at every 10 ms).
    modes: Arc<std::sync::Mutex<Vec<Mode>>>,
}

impl Rig {
    /// A lane for a subscriber with `extra` settings, answering by `script` after `took`.
    fn start(
        extra: &str,
        took: Duration,
        script: impl Fn(&str, Instant) -> Answer + Send + Sync + 'static,
    ) -> Rig {
        let cfg = subscriber(extra);
        let sub = Arc::new(Scripted::new(&cfg, took, script));
        let store = Arc::new(MemStore::default());
        // This process streams the slot, so its lanes serve their logs.
        let progress = Arc::new(Progress::default());
        progress.leading.store(true, std::sync::atomic::Ordering::Relaxed);
        let lane = Lane::assemble(&cfg, sub.clone(), store.clone(), progress, Mark::default(), false);
        let (tracker, cancel) = (TaskTracker::new(), CancellationToken::new());
        lane.spawn(&tracker, &cancel, &CancellationToken::new());
        let modes = Arc::new(std::sync::Mutex::new(vec![Mode::Hot]));
        let (watched, seen, stop) = (lane.clone(), modes.clone(), cancel.clone());
        tracker.spawn(async move {
            while !stop.is_cancelled() {
                let mode = watched.mode();
                {
                    let mut seen = seen.lock().unwrap();
                    if seen.last() != Some(&mode) {
                        seen.push(mode);
                    }
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        });
        Rig {
            lane,
            store,
            sub,
            tracker,
            cancel,
            modes,
        }
    }

    /// Hands over event `n` of row `key` (id `key-n`).
    async fn push(&self, n: u64, key: &str) {
        self.push_body(n, key, bytes::Bytes::from_static(b"{}")).await
    }

    /// Hands over event `n` of row `key` with this body.
    async fn push_body(&self, n: u64, key: &str, body: bytes::Bytes) {
        let event = Arc::new(Event {
            pos: Pos { lsn: 100, seq: n },
            id: format!("{key}-{n}"),
            event_type: "t".into(),
            key: key.into(),
            prev_key: None,
            body,
        });
        assert!(self.lane.push(event, &self.cancel, &|| true).await);
    }

    /// Waits (in paused time) until nothing is pending and the log is empty.
    async fn until_done(&self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let empty = {
                let log = self.store.log();
                log.rows.is_empty() && log.chunks.is_empty()
            };
            if self.lane.low().is_none() && empty && self.lane.mode() == Mode::Hot {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "not done within {within:?}: mode {:?}, pending {}, requests {:?}",
                self.lane.mode(),
                self.lane.backlog(),
                self.sub.requests.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The events each key's subscriber got, in the order delivered (first delivery of
    /// each id).
    fn delivered_per_key(&self) -> HashMap<String, Vec<u64>> {
        let mut out: HashMap<String, Vec<u64>> = HashMap::new();
        for id in self.sub.delivered() {
            let (key, n) = id.split_once('-').unwrap();
            let seen = out.entry(key.to_string()).or_default();
            let n: u64 = n.parse().unwrap();
            if !seen.contains(&n) {
                seen.push(n);
            }
        }
        out
    }

    async fn stop(self) {
        self.cancel.cancel();
        self.tracker.close();
        self.tracker.wait().await;
    }
}

fn sorted(v: &[u64]) -> bool {
    v.windows(2).all(|w| w[0] < w[1])
}

#[tokio::test(start_paused = true)]
async fn a_healthy_subscriber_gets_each_key_in_order_from_memory() {
    let rig = Rig::start("", Duration::from_millis(5), |_, _| Answer::Ok);
    for n in 1..=30 {
        rig.push(n, ["a", "b", "c"][n as usize % 3]).await;
    }
    rig.until_done(Duration::from_secs(10)).await;
    let got = rig.delivered_per_key();
    for key in ["a", "b", "c"] {
        assert_eq!(got[key].len(), 10, "{key}: {got:?}");
        assert!(sorted(&got[key]), "{key} out of order: {:?}", got[key]);
    }
    assert_eq!(rig.sub.delivered().len(), 30, "an event was sent twice");
    {
        let log = rig.store.log();
        assert_eq!((log.rows_written, log.chunk_events_written), (0, 0));
    }
    assert_eq!(*rig.modes.lock().unwrap(), [Mode::Hot]);
    rig.stop().await;
}

/// A subscriber unreachable for 10 s, then answering 503 for 10 s: the lane spills once its oldest event is `spill_after`
/// old, keeps every key's order across the switch and while it serves the log, and is
/// hot again once the log is drained; events handed over meanwhile come after.
#[tokio::test(start_paused = true)]
async fn a_failing_subscriber_spills_keeps_order_and_comes_back_hot() {
    let start = Instant::now();
    let rig = Rig::start(
        "spill_after = \"2s\"\nretry_initial = \"1s\"\nretry_max = \"4s\"\nmax_attempts = 100",
        Duration::from_millis(5),
        move |_, at| {
            if at < start + Duration::from_secs(10) {
                Answer::Down
            } else if at < start + Duration::from_secs(20) {
                Answer::Status(503, None)
            } else {
                Answer::Ok
            }
        },
    );
    for n in 1..=10 {
        rig.push(n, ["a", "b"][n as usize % 2]).await;
    }
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(rig.lane.mode(), Mode::Spill, "the lane did not spill");
    for n in 11..=20 {
        rig.push(n, ["a", "b"][n as usize % 2]).await;
    }
    rig.until_done(Duration::from_secs(300)).await;
    let got = rig.delivered_per_key();
    for key in ["a", "b"] {
        assert_eq!(got[key].len(), 10, "{key}: {got:?}");
        assert!(sorted(&got[key]), "{key} out of order: {:?}", got[key]);
    }
    {
        let log = rig.store.log();
        assert!(log.dead.is_empty(), "{:?}", log.dead);
        assert!(log.chunk_events_written + log.rows_written >= 10);
    }
    let modes = rig.modes.lock().unwrap().clone();
    assert_eq!(modes.first(), Some(&Mode::Hot));
    assert!(modes.contains(&Mode::Spill), "{modes:?}");
    assert_eq!(rig.lane.mode(), Mode::Hot, "not hot again: {modes:?}");
    rig.stop().await;
}

/// A lane whose subscriber answers `a-1`'s first attempt with 429 and `Retry-After: 30`
/// and delivers everything else; it spills after 2 s.
fn one_retry_after() -> Rig {
    let first = std::sync::atomic::AtomicBool::new(true);
    Rig::start(
        "spill_after = \"2s\"\nretry_initial = \"1s\"",
        Duration::from_millis(5),
        move |id, _| {
            if id == "a-1" && first.swap(false, std::sync::atomic::Ordering::Relaxed) {
                Answer::Status(429, Some(Duration::from_secs(30)))
            } else {
                Answer::Ok
            }
        },
    )
}

/// `a-1` was attempted twice, the second time after its 30 s; returns the ids delivered,
/// in order.
fn assert_retry_after_kept(rig: &Rig) -> Vec<String> {
    let tries = rig.sub.attempts_of("a-1");
    assert_eq!(tries.len(), 2, "{tries:?}");
    let waited = tries[1] - tries[0];
    assert!(
        waited >= Duration::from_secs(30),
        "the second attempt came after {waited:?}, before the Retry-After"
    );
    rig.sub.delivered()
}

/// A 429 with `Retry-After: 30` in hot mode, then the lane spills (the event is older
/// than `spill_after`): the next attempt still waits out the 30 s, and the key's next
/// event follows it, while other keys go on.
#[tokio::test(start_paused = true)]
async fn a_retry_after_holds_across_a_spill() {
    let rig = one_retry_after();
    rig.push(1, "a").await;
    rig.push(2, "a").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(rig.lane.mode(), Mode::Spill, "the lane did not spill");
    rig.push(3, "b").await;
    rig.until_done(Duration::from_secs(120)).await;
    let order = assert_retry_after_kept(&rig);
    let at = |id: &str| order.iter().position(|d| d == id).unwrap();
    assert!(at("b-3") < at("a-1"), "another key waited: {order:?}");
    assert!(at("a-1") < at("a-2"), "{order:?}");
    rig.stop().await;
}

/// A final status (the subscriber refusing one event on purpose) dead-letters the event
/// and leaves the lane healthy: when it is full later, it holds the reader back rather
/// than spilling (it spilled: the refusal had marked it failing).
#[tokio::test(start_paused = true)]
async fn a_final_status_leaves_a_full_lane_holding_not_spilling() {
    let rig = Rig::start(
        "final_statuses = [422]\nmax_buffered = 2\nmax_in_flight = 2",
        Duration::from_millis(50),
        |id, _| {
            if id == "a-1" {
                Answer::Status(422, None)
            } else {
                Answer::Ok
            }
        },
    );
    rig.push(1, "a").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    for n in 2..=12 {
        rig.push(n, &format!("k{n}")).await;
    }
    rig.until_done(Duration::from_secs(10)).await;
    {
        let log = rig.store.log();
        assert_eq!(log.dead.len(), 1, "{:?}", log.dead);
        assert_eq!(log.dead[0].0, "a-1");
        assert_eq!(
            (log.rows_written, log.chunk_events_written),
            (0, 0),
            "the lane spilled"
        );
    }
    assert_eq!(*rig.modes.lock().unwrap(), [Mode::Hot]);
    assert_eq!(rig.sub.delivered().len(), 11);
    rig.stop().await;
}

/// An operator pauses the subscriber while a hot event waits for its third attempt: after
/// the resume the event has only the attempts its policy has left (4 in all), not a
/// fresh 4.
#[tokio::test(start_paused = true)]
async fn a_pause_between_hot_attempts_keeps_the_attempt_count() {
    let rig = Rig::start(
        "max_attempts = 4\nretry_initial = \"2s\"\nretry_max = \"2s\"\nspill_after = \"1h\"",
        Duration::from_millis(5),
        |_, _| Answer::Status(503, None),
    );
    rig.push(1, "a").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(rig.sub.attempts_of("a-1").len(), 2);
    rig.lane.pause("test").await.unwrap();
    tokio::time::sleep(Duration::from_secs(10)).await;
    assert_eq!(rig.sub.attempts_of("a-1").len(), 2, "attempted while paused");
    rig.lane.resume().await.unwrap();
    tokio::time::sleep(Duration::from_secs(60)).await;
    {
        let log = rig.store.log();
        assert_eq!(log.dead.len(), 1, "{:?}", log.dead);
        assert_eq!(log.dead[0].1, 4, "dead after {} attempts", log.dead[0].1);
    }
    assert_eq!(rig.sub.attempts_of("a-1").len(), 4);
    rig.stop().await;
}

/// The open finding of the last review: rows made from chunks lost a Retry-After begun in
/// hot mode. A 429 with `Retry-After: 30` in hot mode, the lane spills into chunks, then a
/// chunk write fails (the chunks become rows): the row still waits out the 30 s.
#[tokio::test(start_paused = true)]
async fn rows_made_from_chunks_keep_a_hot_retry_after() {
    let rig = one_retry_after();
    rig.push(1, "a").await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(rig.lane.mode(), Mode::Spill, "the lane did not spill");
    rig.store.log().fail_chunk_writes = 1;
    rig.push(2, "a").await;
    rig.push(3, "b").await;
    rig.until_done(Duration::from_secs(120)).await;
    assert!(rig.store.log().rows_written > 0, "no rows were written");
    let order = assert_retry_after_kept(&rig);
    let at = |id: &str| order.iter().position(|d| d == id).unwrap();
    assert!(at("a-1") < at("a-2"), "{order:?}");
    rig.stop().await;
}

/// A subscriber down for a minute, on the default (Standard Webhooks) schedule: keys that
/// failed during the outage wait out backoffs of minutes. When a probe finds the
/// subscriber up again, every key is due at once: the backlog drains in seconds, not
/// over the schedule's 5 and 30 minute waits.
#[tokio::test(start_paused = true)]
async fn after_an_outage_the_backlog_goes_at_once() {
    let start = Instant::now();
    let rig = Rig::start("spill_after = \"1s\"", Duration::from_millis(5), move |_, at| {
        if at < start + Duration::from_secs(60) {
            Answer::Down
        } else {
            Answer::Ok
        }
    });
    for n in 1..=40 {
        rig.push(n, &format!("k{n}")).await;
    }
    // Up from 60 s; the probes' doubling waits find it by about 90 s (jitter included,
    // under 130 s). Without the reset, keys that failed twice would wait 5 minutes.
    rig.until_done(Duration::from_secs(200)).await;
    assert_eq!(rig.delivered_per_key().len(), 40);
    assert!(rig.store.log().dead.is_empty());
    rig.stop().await;
}

/// A lane holds at most `PENDING_BYTES` (16 MiB) of bodies in memory beside its
/// `max_buffered` events: three events of 6 MiB fill it, and the reader waits for room
/// (the subscriber keeps up) until one is delivered.
#[tokio::test(start_paused = true)]
async fn a_lane_is_full_by_bytes_too() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let rig = Rig::start("max_in_flight = 1", Duration::from_secs(1), |_, _| Answer::Ok);
    let big = bytes::Bytes::from(vec![b' '; 6 << 20]);
    for n in 1..=3 {
        rig.push_body(n, &format!("k{n}"), big.clone()).await;
    }
    let taken = AtomicBool::new(false);
    let fourth = async {
        rig.push_body(4, "k4", big.clone()).await;
        taken.store(true, Ordering::SeqCst);
    };
    let check = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!taken.load(Ordering::SeqCst), "a fourth 6 MiB event was taken");
        assert_eq!(rig.lane.backlog(), 3);
        // The first delivery (1 s) makes room.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(taken.load(Ordering::SeqCst), "no room after a delivery");
    };
    tokio::join!(fourth, check);
    rig.until_done(Duration::from_secs(10)).await;
    assert_eq!(
        *rig.modes.lock().unwrap(),
        [Mode::Hot],
        "the lane spilled instead of holding"
    );
    assert_eq!(rig.sub.delivered().len(), 4);
    rig.stop().await;
}

/// When all lanes together hold `PENDING_TOTAL` events, a lane that holds
/// `CROWDED_SHARE` of them is full (however far below `max_buffered`): fifty lanes fanning
/// out one burst do not hold fifty times `max_buffered`.
#[tokio::test(start_paused = true)]
async fn a_lane_is_full_when_all_lanes_hold_their_budget() {
    use std::sync::atomic::{AtomicBool, Ordering};
    let rig = Rig::start("max_in_flight = 1", Duration::from_secs(1), |_, _| Answer::Ok);
    // The other lanes of the process hold the rest of the budget.
    let others = super::PENDING_TOTAL - super::CROWDED_SHARE;
    rig.lane
        .progress
        .pending_total
        .fetch_add(others, Ordering::SeqCst);
    for n in 1..=super::CROWDED_SHARE as u64 {
        rig.push(n, &format!("k{n}")).await;
    }
    let taken = AtomicBool::new(false);
    let next = async {
        rig.push(5_000, "k5000").await;
        taken.store(true, Ordering::SeqCst);
    };
    let check = async {
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!taken.load(Ordering::SeqCst), "a crowded lane took another event");
        // A delivery (1 s) makes room.
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert!(taken.load(Ordering::SeqCst), "no room after a delivery");
    };
    tokio::join!(next, check);
    rig.lane
        .progress
        .pending_total
        .fetch_sub(others, Ordering::SeqCst);
    rig.stop().await;
}
