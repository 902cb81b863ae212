//! Lanes: one per subscriber, so no subscriber ever waits for another.
//!
//! **Hot mode** (the normal case): events wait in memory in a FIFO per ordering key; keys
//! are delivered in parallel up to `max_in_flight`, one event per key at a time, with
//! quick retries in memory. Nothing is written per event.
//!
//! **Full**: when `max_buffered` events wait in memory and the subscriber keeps up, the
//! reader waits for room (a burst stays in the WAL) as long as it reads transactions
//! committed less than `spill_after` ago and no other lane would sit idle meanwhile.
//!
//! **Spill mode**: when the oldest undelivered event is older than `spill_after`, or the
//! lane is full and may not hold the reader, the lane moves what it holds to the spill
//! log in the state database and appends every new event there (batched). A server task
//! delivers the oldest due event of each key, one attempt at a time on the full retry
//! schedule, and after `max_attempts` moves it to the dead letters so its key goes on.
//!
//! **Draining**: once the log is empty, new events wait in memory (not yet sent) while
//! the last buffered ones are written and served; when both are done the lane is hot
//! again. At that moment every earlier event is done, so no key is reordered.
//!
//! **Events under two keys.** An event whose change moved its row to another key (an
//! update of key columns) is queued under both its key and the row's key before
//! (`Event::prev_key`): it goes out only when it is first under both, nothing of either
//! is in flight, and neither key goes on before it is done. So it follows every earlier
//! event of its old key and precedes every later event of its new key, in memory, in
//! chunks and in rows alike.
//!
//! **Per-key order in the log.** For every key, the log only ever holds the oldest
//! pending events of that key: while a key has a hot delivery in flight at the switch to
//! spill mode, its later events are parked behind it in memory and follow it into the
//! write buffer when it returns. So serving the oldest row of each key is always right,
//! also after a crash.
//!
//! **Progress**: an event is *pending* from the moment the pipeline hands it over until
//! it is delivered, dead-lettered, or durably written to the spill log. The lowest
//! pending position bounds the LSN confirmed to the source (see `pipeline`). The lane's
//! saved mark (`Mark`) holds that position too, and beyond it which events are still
//! pending (up to `MARK_PENDING_MAX`): after a restart, replayed events are skipped when
//! the mark says they were done, so one slow or retried event does not make every event
//! delivered after it go out again.

pub mod deliver;
pub mod format;
pub mod http;
pub mod limit;
pub mod retry;
pub mod sign;
mod stop;
pub mod target;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{EventOrder, Subscriber};
use crate::event::{Event, EventRef, Mark, Pos};
use crate::metrics::LaneMetrics;
use crate::progress::Progress;
use crate::state::{AttemptLog, SpillOutcome, SpillRow, State};
use deliver::{Attempt, Target};
use retry::{DeadWhy, Verdict};

/// Events written to the spill log in one statement at most.
const SPILL_BATCH: usize = 2_000;
/// Bytes of bodies written to the spill log in one statement at most (a larger body is
/// written alone): PostgreSQL takes at most 1 GB in one message and in one array value,
/// and the driver builds the statement in memory, twice, while it is sent.
const SPILL_BATCH_BYTES: usize = 64 << 20;
/// Bytes of bodies a chunk-mode lane holds in memory at most (beside `max_buffered`); past
/// them, written chunks wait in the log and are loaded when there is room again.
const MIRROR_BYTES: usize = 64 << 20;
/// Spilled events fetched and attempted per round (each the oldest of its key).
const SPILL_ROUND: usize = 1_000;
/// How often a lane checks the age of its oldest event, and the longest a task sleeps
/// when a wakeup was missed.
const TICK: Duration = Duration::from_millis(100);
/// Longest sleep of an idle spill server before it looks at the log again.
const SPILL_POLL: Duration = Duration::from_secs(1);
/// Chunks turned into rows per statement.
const EXPLODE_CHUNKS: i64 = 8;
/// How long a full mirror may stay short of ready keys before its chunks become rows.
const STARVED_FOR: Duration = Duration::from_secs(2);
/// Deletes of delivered chunks are batched for at most this long.
const DELETE_EVERY: Duration = Duration::from_millis(100);
/// Failed attempts in a row (over all keys) after which a chunk-mode lane treats its
/// subscriber as down and probes it one attempt at a time.
const OUTAGE_AFTER: u32 = 10;
/// Longest wait of an idle hot dispatcher before it looks for work again, in case a
/// wakeup was missed.
const IDLE_WORKER_CHECK: Duration = Duration::from_secs(1);
/// Backoff between attempts to reach the state database.
const STATE_RETRY: Duration = Duration::from_millis(500);
/// Pending events a lane's saved mark lists at most (16 bytes each in `walhook.lanes`);
/// past them, the mark's high end comes down to the first one left out, and a restart
/// re-sends what was delivered after it.
pub const MARK_PENDING_MAX: usize = 1_000;

/// The problems of the subscribers' parts lanes compile: secrets, rate limits, headers,
/// body formats and retry policies.
pub fn check(config: &crate::config::Config) -> Vec<crate::config::Problem> {
    let mut out = Vec::new();
    for (i, sub) in config.subscribers.iter().enumerate() {
        let mut bad = |key: String, message: String| out.push(crate::config::Problem { path: key, message });
        let p = |k: &str| format!("subscribers[{i}].{k}");
        for (j, secret) in sub.secrets.iter().enumerate() {
            if let Err(e) = sign::Secret::parse(secret.secret()) {
                bad(secret.path(i, j), e.to_string());
            }
        }
        if let Some(Err(e)) = sub.rate_limit.as_deref().map(limit::parse) {
            bad(p("rate_limit"), e);
        }
        for (name, value) in &sub.headers {
            let key = p(&format!("headers.{name}"));
            if !http::valid_header_name(name) {
                bad(
                    key,
                    "not a valid HTTP header name: use letters, digits and - _ .".into(),
                );
            } else if http::reserved_header(name) {
                bad(key, "set by walhook itself: remove it from headers".into());
            } else if !http::valid_header_value(value) {
                bad(
                    key,
                    "the value holds a line break or control character: remove it".into(),
                );
            }
        }
        for (key, message) in format::check(sub).into_iter().chain(retry::check(sub)) {
            bad(p(&key), message);
        }
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Hot,
    Spill,
    Draining,
}

struct Buffered {
    event: EventRef,
    attempts: i32,
    retry_after: Duration,
    /// Its failed attempts so far.
    history: Vec<AttemptLog>,
}

impl Buffered {
    /// An event not attempted yet.
    fn fresh(event: EventRef) -> Buffered {
        Buffered {
            event,
            attempts: 0,
            retry_after: Duration::ZERO,
            history: Vec::new(),
        }
    }
}

/// The history entry of a failed attempt that took `took` and ended just now.
fn attempt_log(took: Duration, failure: &deliver::Failure) -> AttemptLog {
    let at = std::time::SystemTime::now()
        .checked_sub(took)
        .unwrap_or(std::time::UNIX_EPOCH);
    AttemptLog {
        at: humantime::format_rfc3339_millis(at).to_string(),
        status: failure.status,
        ms: took.as_millis() as u64,
        error: failure.error.clone(),
    }
}

#[derive(Default)]
struct KeyQueue {
    events: VecDeque<EventRef>,
    /// A hot delivery of this key is in flight.
    busy: bool,
}

struct Inner {
    mode: Mode,
    /// Events below this position were already accepted (or done before a restart).
    next_expected: Pos,
    /// The mark the lane started from: replayed events it says were done are skipped.
    /// Only its part at or after `next_expected` still matters.
    restored: Mark,
    /// Accepted events not yet delivered, dead or durably spilled, with arrival time.
    pending: BTreeMap<Pos, Instant>,
    /// Per-key FIFOs: the hot queues, and in spill mode the events parked behind a key's
    /// in-flight hot delivery.
    queues: HashMap<String, KeyQueue>,
    ready: VecDeque<String>,
    hot_in_flight: usize,
    /// Events waiting to be written to the spill log; per key in position order.
    spill_buf: VecDeque<Buffered>,
    writing: bool,
    /// Counts completed spill writes, so a drained-log check can tell it is stale.
    writes: u64,
    /// This spill episode writes chunks and serves them from memory (it began while the
    /// subscriber kept up); otherwise it writes rows, served with retries.
    chunked: bool,
    mirror: Mirror,
    /// Chunks still to be turned into rows (after a failure, a failed chunk write, or a
    /// takeover), and the positions among them already delivered. Rows are served only
    /// once this is done, so no spilled event of a key is overtaken.
    unexploded: Option<Vec<Pos>>,
}

/// A spilled event held in memory in chunk mode.
struct Held {
    event: EventRef,
    chunk: i64,
    /// Failed attempts so far (in this process).
    attempts: u32,
    /// Not attempted again before this time.
    not_before: Option<Instant>,
}

/// Chunk mode: spilled events held in memory for delivery, per key in write order, each
/// with its chunk. Every chunk up to `loaded` is in memory or deleted (all delivered).
#[derive(Default)]
struct Mirror {
    keys: HashMap<String, VecDeque<Held>>,
    /// Keys whose first event waits for an attempt (none in flight) and is due.
    ready: VecDeque<String>,
    /// Keys whose first event failed and waits for its next attempt, by due time.
    waiting: BTreeMap<(Instant, u64), String>,
    waiting_seq: u64,
    /// Per chunk in memory: events not yet delivered, and the positions delivered.
    open: BTreeMap<i64, (usize, Vec<Pos>)>,
    loaded: i64,
    /// A chunk was written that is not in memory yet.
    behind: bool,
    events: usize,
    /// Bytes of the bodies of `events`.
    bytes: usize,
    /// Chunks all delivered whose delete has not committed yet, with their positions (so
    /// a switch to rows meanwhile still leaves them out).
    done: BTreeMap<i64, Vec<Pos>>,
    /// Positions held in `open` and `done` (they count against the memory bound too).
    delivered: usize,
    /// Since when a full mirror has had fewer ready keys than `max_in_flight` while
    /// chunks waited in the log.
    starved_since: Option<Instant>,
    /// Failed attempts in a row, over all keys.
    failures_in_row: u32,
    /// The subscriber seems down: probes made so far, and when the next may start. Only
    /// one attempt is in flight at a time until one succeeds.
    outage: Option<(u32, Instant)>,
    /// Keys whose first event is in flight (both keys of an event under two).
    in_flight: std::collections::HashSet<String>,
}

impl Mirror {
    /// Takes in a written chunk: its events with the attempts they already had and when
    /// the next may start (a backoff or a Retry-After begun in hot mode).
    fn add(&mut self, chunk: i64, events: Vec<(EventRef, u32, Option<Instant>)>) {
        self.open.insert(chunk, (events.len(), Vec::new()));
        self.loaded = chunk;
        self.events += events.len();
        self.bytes += events.iter().map(|(e, ..)| e.body.len()).sum::<usize>();
        for (event, attempts, not_before) in events {
            // An event under two keys is held under both: its own entry holds its attempts
            // and wait, the other only holds that key back.
            let keys: Vec<String> = event.keys().map(String::from).collect();
            for key in keys {
                let own = key == event.key;
                let q = self.keys.entry(key.clone()).or_default();
                q.push_back(Held {
                    event: event.clone(),
                    chunk,
                    attempts,
                    not_before,
                });
                if q.len() == 1 {
                    match not_before.filter(|_| own) {
                        Some(at) => {
                            self.waiting_seq += 1;
                            self.waiting.insert((at, self.waiting_seq), key);
                        }
                        None => self.ready.push_back(key),
                    }
                }
            }
        }
    }

    /// Takes the next event that may be attempted now: first under each of its keys, none
    /// of them in flight, and not waiting out a backoff. Marks its keys in flight and
    /// returns it with the attempts it had.
    fn next_ready(&mut self) -> Option<(EventRef, u32)> {
        while let Some(key) = self.ready.pop_front() {
            if self.in_flight.contains(&key) {
                continue;
            }
            let Some(event) = self
                .keys
                .get(&key)
                .and_then(|q| q.front())
                .map(|h| h.event.clone())
            else {
                continue;
            };
            let first_everywhere = event.keys().all(|k| {
                !self.in_flight.contains(k)
                    && self
                        .keys
                        .get(k)
                        .and_then(|q| q.front())
                        .is_some_and(|h| h.event.pos == event.pos)
            });
            let Some(own) = self.keys.get(&event.key).and_then(|q| q.front()) else {
                continue;
            };
            // Not yet: a key whose earlier event finishes, or whose wait ends, comes back
            // to `ready` and tries again.
            if !first_everywhere || own.not_before.is_some() {
                continue;
            }
            let attempts = own.attempts;
            self.in_flight.extend(event.keys().map(String::from));
            return Some((event, attempts));
        }
        None
    }

    /// Sorts every key into `ready` or `waiting` (when nothing is in flight).
    fn rebuild_ready(&mut self) {
        self.ready.clear();
        self.waiting.clear();
        self.in_flight.clear();
        for (key, q) in &self.keys {
            match q
                .front()
                .filter(|h| h.event.key == *key)
                .and_then(|h| h.not_before)
            {
                Some(at) => {
                    self.waiting_seq += 1;
                    self.waiting.insert((at, self.waiting_seq), key.clone());
                }
                None => self.ready.push_back(key.clone()),
            }
        }
    }

    /// Moves the keys whose wait is over to `ready`; returns when the next one is due.
    fn promote(&mut self, now: Instant) -> Option<Instant> {
        while let Some(entry) = self.waiting.first_entry() {
            if entry.key().0 > now {
                return Some(entry.key().0);
            }
            let key = entry.remove();
            if let Some(h) = self.keys.get_mut(&key).and_then(|q| q.front_mut()) {
                h.not_before = None;
                self.ready.push_back(key);
            }
        }
        None
    }

    /// The first event of `key` failed for the `attempts`-th time: it is attempted again
    /// at `at`.
    fn failed(&mut self, key: &str, attempts: u32, at: Instant) {
        if let Some(h) = self.keys.get_mut(key).and_then(|q| q.front_mut()) {
            h.attempts = attempts;
            h.not_before = Some(at);
            self.waiting_seq += 1;
            self.waiting.insert((at, self.waiting_seq), key.to_string());
            for k in h.event.keys() {
                self.in_flight.remove(k);
            }
        }
    }

    /// Marks the first event of `key` done (delivered or dead); returns its chunk when
    /// that chunk is now all done.
    fn delivered(&mut self, key: &str) -> Option<i64> {
        let q = self.keys.get_mut(key)?;
        let held = q.pop_front()?;
        if q.is_empty() {
            self.keys.remove(key);
        } else {
            self.ready.push_back(key.to_string());
        }
        // Under its other key it was first too: that key goes on now.
        for other in held.event.other_keys(key) {
            if let Some(q) = self.keys.get_mut(other) {
                if q.front().is_some_and(|h| h.event.pos == held.event.pos) {
                    q.pop_front();
                }
                if q.is_empty() {
                    self.keys.remove(other);
                } else {
                    self.ready.push_back(other.to_string());
                }
            }
        }
        for k in held.event.keys() {
            self.in_flight.remove(k);
        }
        self.events -= 1;
        self.bytes -= held.event.body.len();
        let open = self.open.get_mut(&held.chunk)?;
        open.0 -= 1;
        open.1.push(held.event.pos);
        self.delivered += 1;
        if open.0 == 0 {
            let (_, done) = self.open.remove(&held.chunk)?;
            self.done.insert(held.chunk, done);
            return Some(held.chunk);
        }
        None
    }

    /// The delete of these chunks committed.
    fn forget(&mut self, chunks: &[i64]) {
        for chunk in chunks {
            if let Some(done) = self.done.remove(chunk) {
                self.delivered -= done.len();
            }
        }
    }

    /// What the mirror holds, against `max_buffered`.
    fn size(&self) -> usize {
        self.events + self.delivered
    }

    /// Positions delivered from chunks that may still exist.
    fn delivered_positions(&self) -> Vec<Pos> {
        self.open
            .values()
            .map(|(_, d)| d)
            .chain(self.done.values())
            .flat_map(|d| d.iter().copied())
            .collect()
    }
}

/// How many of the first events waiting to be spilled (of these body sizes) one write
/// takes: at most `SPILL_BATCH` events and `SPILL_BATCH_BYTES` of bodies, but always the
/// first.
fn spill_batch_len(bodies: impl Iterator<Item = usize>) -> usize {
    let mut bytes = 0;
    bodies
        .take(SPILL_BATCH)
        .take_while(|len| {
            let fits = bytes == 0 || bytes + len <= SPILL_BATCH_BYTES;
            bytes += len;
            fits
        })
        .count()
}

/// What an attempt of a chunk-mode event leads to.
enum ChunkOutcome {
    /// Delivered, or waiting for its next attempt.
    Done,
    /// The chunks became rows meanwhile: the outcome for its row.
    AsRow(SpillOutcome),
    /// Given up after this many attempts, why, and the last attempt.
    Dead(u32, DeadWhy, AttemptLog),
}

/// In hot mode, takes the first event of the next ready key and marks its keys busy. An
/// event under two keys goes only once it is first under both and neither is busy; until
/// then the key that is not ready yet brings it back to `ready` when it is.
fn next_hot(inner: &mut Inner) -> Option<EventRef> {
    while inner.mode == Mode::Hot {
        let key = inner.ready.pop_front()?;
        let Some(event) = inner
            .queues
            .get(&key)
            .filter(|q| !q.busy)
            .and_then(|q| q.events.front())
            .cloned()
        else {
            continue;
        };
        if !inner.may_go(&event) {
            continue;
        }
        for k in event.keys() {
            if let Some(q) = inner.queues.get_mut(k) {
                q.events.pop_front();
                q.busy = true;
            }
        }
        inner.hot_in_flight += 1;
        return Some(event);
    }
    None
}

/// Where `Inner::enqueue` put an event.
#[derive(Debug, PartialEq, Eq)]
enum Enqueued {
    /// Into the write buffer (spill mode).
    Buffered,
    /// Parked behind an in-flight delivery of one of its keys (spill mode).
    Parked,
    /// Into the hot queues, where a key became ready.
    Ready,
    /// Into the hot queues, behind earlier events of its keys.
    Queued,
}

impl Inner {
    fn new(mode: Mode, mark: Mark) -> Inner {
        Inner {
            mode,
            next_expected: mark.low,
            restored: mark,
            pending: BTreeMap::new(),
            queues: HashMap::new(),
            ready: VecDeque::new(),
            hot_in_flight: 0,
            spill_buf: VecDeque::new(),
            writing: false,
            writes: 0,
            chunked: false,
            mirror: Mirror::default(),
            unexploded: None,
        }
    }

    /// Whether a replayed event is to be skipped: accepted already, or done before the
    /// restart. Passing a done one moves `next_expected` past it, as accepting it would.
    fn skips(&mut self, pos: Pos) -> bool {
        if pos < self.next_expected {
            return true;
        }
        if !self.restored.done(pos) {
            return false;
        }
        self.next_expected = pos.next();
        if self.next_expected >= self.restored.high {
            self.restored = Mark::default();
        }
        true
    }

    /// What the lane has done (see `Mark`), with `frontier` the pipeline's: every
    /// transaction before it was handed over. Events accepted and not done are pending;
    /// so are those the restored mark listed that the replay has not reached yet.
    fn mark(&self, frontier: Pos) -> Mark {
        let high = self.next_expected.max(frontier).max(self.restored.high);
        // Accepted events are all before `next_expected`, the restored ones not yet
        // reached at or after it: in order.
        let pending = self
            .pending
            .keys()
            .copied()
            .chain(
                self.restored
                    .pending
                    .iter()
                    .copied()
                    .filter(|p| *p >= self.next_expected),
            )
            .take(MARK_PENDING_MAX + 1)
            .collect();
        Mark::bounded(pending, high, MARK_PENDING_MAX)
    }

    /// Queues an accepted event by mode: in hot and draining mode under each of its keys;
    /// in spill mode into the write buffer, unless one of its keys has a delivery in
    /// flight (or an event parked behind one): then it is parked behind that.
    fn enqueue(&mut self, event: EventRef) -> Enqueued {
        let keys: Vec<String> = event.keys().map(String::from).collect();
        match self.mode {
            Mode::Spill if keys.iter().any(|k| self.queues.contains_key(k)) => {
                for key in keys {
                    self.queues
                        .entry(key)
                        .or_default()
                        .events
                        .push_back(event.clone());
                }
                Enqueued::Parked
            }
            Mode::Spill => {
                self.spill_buf.push_back(Buffered::fresh(event));
                Enqueued::Buffered
            }
            Mode::Hot | Mode::Draining => {
                let mut ready = Enqueued::Queued;
                for key in keys {
                    let q = self.queues.entry(key.clone()).or_default();
                    q.events.push_back(event.clone());
                    if !q.busy && q.events.len() == 1 {
                        self.ready.push_back(key);
                        ready = Enqueued::Ready;
                    }
                }
                ready
            }
        }
    }

    /// A hot delivery of `event` ended: done, or to be attempted again (from memory,
    /// or in spill mode from the log). Its keys are free again; in spill mode what was
    /// parked behind it follows into the write buffer. Returns how many keys became
    /// ready.
    fn finish_hot(&mut self, event: &EventRef, outcome: HotOutcome) -> usize {
        self.hot_in_flight -= 1;
        let keys: Vec<String> = event.keys().map(String::from).collect();
        for key in &keys {
            self.queues.entry(key.clone()).or_default().busy = false;
        }
        match outcome {
            HotOutcome::Done => {
                self.pending.remove(&event.pos);
            }
            // Cancelled while hot: it stays pending, so it is replayed after a restart.
            HotOutcome::Again(..) if self.mode != Mode::Spill => {
                for key in &keys {
                    self.queues
                        .entry(key.clone())
                        .or_default()
                        .events
                        .push_front(event.clone());
                }
            }
            HotOutcome::Again(attempts, retry_after, history) => self.spill_buf.push_back(Buffered {
                event: event.clone(),
                attempts: attempts as i32,
                retry_after,
                history,
            }),
        }
        if self.mode == Mode::Spill {
            // The events parked behind this one follow it, in order.
            self.release(&keys);
            return 0;
        }
        let mut ready = 0;
        for key in &keys {
            if self.queues.get(key).is_some_and(|q| q.events.is_empty()) {
                self.queues.remove(key);
            } else {
                self.ready.push_back(key.clone());
                ready += 1;
            }
        }
        ready
    }

    /// Spill mode: `release` for every key with nothing in flight.
    fn release_idle(&mut self) {
        let idle: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, q)| !q.busy)
            .map(|(k, _)| k.clone())
            .collect();
        self.release(&idle);
    }

    /// Whether `event` is first in the queue of each of its keys, none of them busy.
    fn may_go(&self, event: &Event) -> bool {
        event.keys().all(|k| {
            self.queues
                .get(k)
                .is_some_and(|q| !q.busy && q.events.front().is_some_and(|e| e.pos == event.pos))
        })
    }

    /// Spill mode: moves the events parked in the queues of `keys` that may go now (first
    /// under each of their keys, none busy) to the write buffer, and so on for the keys
    /// that frees, in each key's order; drops queues left empty and idle.
    fn release(&mut self, keys: &[String]) {
        let mut work = keys.to_vec();
        while let Some(key) = work.pop() {
            while let Some(q) = self.queues.get(&key) {
                if q.busy {
                    break;
                }
                let Some(first) = q.events.front().cloned() else {
                    self.queues.remove(&key);
                    break;
                };
                if !self.may_go(&first) {
                    break;
                }
                for k in first.keys() {
                    if let Some(q) = self.queues.get_mut(k) {
                        q.events.pop_front();
                    }
                    if k != key {
                        work.push(k.to_string());
                    }
                }
                self.spill_buf.push_back(Buffered::fresh(first));
            }
        }
    }
}

/// What a finished hot delivery hands back.
enum HotOutcome {
    Done,
    /// Not delivered yet: attempts made, the delay before the next, and their history.
    Again(u32, Duration, Vec<AttemptLog>),
}

pub struct Lane {
    pub name: String,
    cfg: Subscriber,
    target: Target,
    state: Arc<State>,
    progress: Arc<Progress>,
    inner: Mutex<Inner>,
    /// Wakes the hot dispatcher: a key became ready, or the lane is hot again.
    wake_workers: Notify,
    wake_writer: Notify,
    wake_server: Notify,
    /// Wakes a pipeline waiting for room in a full lane.
    room: Notify,
    /// The last hot delivery attempt failed.
    failing: AtomicBool,
    /// Held across a spill write and the bookkeeping after it, a chunk load, and a switch
    /// from chunks to rows, so each sees the log and the mirror agree.
    log_io: tokio::sync::Mutex<()>,
    pub metrics: LaneMetrics,
    /// Paused or disabled (see `stop.rs`), and a flag mirroring it for quick checks.
    stop: Mutex<Option<crate::state::subscribers::Stop>>,
    stopped: AtomicBool,
    /// A disable not yet recorded in the state database.
    stop_dirty: AtomicBool,
    breaker: Mutex<stop::Breaker>,
}

impl Lane {
    /// A lane starting from `mark` (what it had done before a restart); it starts in spill
    /// mode when its log has rows.
    /// `index` is the subscriber's place in the config; `database` names the source.
    pub fn new(
        cfg: &Subscriber,
        index: usize,
        database: &str,
        state: Arc<State>,
        progress: Arc<Progress>,
        mark: Mark,
        spilled: bool,
    ) -> Result<Arc<Lane>, String> {
        let target = Target::new(cfg, index, database)?;
        Ok(Arc::new(Lane {
            name: cfg.name.clone(),
            cfg: cfg.clone(),
            target,
            state,
            progress,
            inner: Mutex::new(Inner::new(if spilled { Mode::Spill } else { Mode::Hot }, mark)),
            wake_workers: Notify::new(),
            wake_writer: Notify::new(),
            wake_server: Notify::new(),
            room: Notify::new(),
            failing: AtomicBool::new(false),
            log_io: tokio::sync::Mutex::new(()),
            metrics: LaneMetrics::default(),
            stop: Mutex::new(None),
            stopped: AtomicBool::new(false),
            stop_dirty: AtomicBool::new(false),
            breaker: Mutex::new(stop::Breaker::default()),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the lane's tasks: the hot dispatcher (which starts a hot worker per ready
    /// key, up to `max_in_flight` at once), the age watch, the spill writer and the spill
    /// server. They stop when `cancel` is cancelled, and end at once, mid-delivery or
    /// mid-write, when `abandon` is (this process lost its lease, or a stop ran out of its
    /// grace); what was in flight then stays pending.
    pub fn spawn(
        self: &Arc<Self>,
        tracker: &TaskTracker,
        cancel: &CancellationToken,
        abandon: &CancellationToken,
    ) {
        let fence = abandon;
        tracker.spawn(fenced(
            fence,
            self.clone()
                .hot_dispatch(tracker.clone(), cancel.clone(), abandon.clone()),
        ));
        tracker.spawn(fenced(fence, self.clone().age_watch(cancel.clone())));
        tracker.spawn(fenced(fence, self.clone().spill_writer(cancel.clone())));
        tracker.spawn(fenced(fence, self.clone().spill_server(cancel.clone())));
    }

    /// Hands an event to the lane. Events it already accepted (a replay after a
    /// reconnect), or that its mark says were done before a restart, are skipped. Returns
    /// false when cancelled before the event was taken.
    ///
    /// When `max_buffered` events already wait in memory, the reader waits for room
    /// (backpressure) only while the lane is healthy, the reader lags its source by less
    /// than `spill_after`, and `others_busy` says no other lane would be kept waiting for
    /// events; otherwise the lane spills. A spilling lane makes the reader wait only while
    /// its spill write is in flight.
    pub async fn push(
        &self,
        event: EventRef,
        cancel: &CancellationToken,
        others_busy: &dyn Fn() -> bool,
    ) -> bool {
        let event = match self.cfg.ordering {
            EventOrder::PerKey => event,
            // Each event its own key: nothing waits for another.
            EventOrder::None => Arc::new(Event {
                pos: event.pos,
                id: event.id.clone(),
                event_type: event.event_type.clone(),
                key: event.id.clone(),
                prev_key: None,
                body: event.body.clone(),
            }),
        };
        let mut held: Option<Instant> = None;
        loop {
            let mut room = pin!(self.room.notified());
            room.as_mut().enable();
            let hold = {
                let mut inner = self.lock();
                if inner.skips(event.pos) {
                    return true;
                }
                let full = inner.pending.len() >= self.cfg.max_buffered;
                if !full {
                    self.accept(inner, event);
                    if let Some(since) = held {
                        self.metrics.held_micros.add(since.elapsed().as_micros() as u64);
                    }
                    return true;
                }
                inner.mode == Mode::Hot
            };
            if hold {
                match self.spill_reason(others_busy) {
                    None => {
                        held.get_or_insert_with(Instant::now);
                    }
                    Some(why) => {
                        let mut inner = self.lock();
                        if inner.mode != Mode::Spill {
                            self.enter_spill(&mut inner, why);
                        }
                        continue;
                    }
                }
            } else {
                let mut inner = self.lock();
                if inner.mode == Mode::Draining {
                    self.enter_spill(&mut inner, "more than max_buffered events wait in memory");
                    continue;
                }
                drop(inner);
                self.wake_writer.notify_one();
            }
            tokio::select! {
                _ = cancel.cancelled() => return false,
                _ = room => {}
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Why a full hot lane must spill rather than hold the reader back, if it must.
    fn spill_reason(&self, others_busy: &dyn Fn() -> bool) -> Option<&'static str> {
        if self.failing.load(Ordering::Relaxed) {
            Some("more than max_buffered events wait in memory and deliveries fail")
        } else if self.progress.reader_lag() >= self.cfg.spill_after {
            Some("more than max_buffered events wait in memory and the source is spill_after ahead")
        } else if !others_busy() {
            Some("more than max_buffered events wait in memory and other lanes wait for events")
        } else {
            None
        }
    }

    /// Takes an event in: to the write buffer, behind a key's in-flight delivery, or into
    /// the hot queues.
    fn accept(&self, mut inner: MutexGuard<'_, Inner>, event: EventRef) {
        inner.next_expected = event.pos.next();
        inner.pending.insert(event.pos, Instant::now());
        match inner.enqueue(event) {
            Enqueued::Buffered => {
                drop(inner);
                self.wake_writer.notify_one();
            }
            Enqueued::Ready if inner.mode == Mode::Hot => {
                drop(inner);
                self.wake_workers.notify_one();
            }
            _ => {}
        }
    }

    /// Whether this lane has work enough that a reader waiting for another lane does not
    /// keep it idle: it spills (it is behind anyway) or holds at least `max_in_flight`
    /// events.
    pub fn busy(&self) -> bool {
        let inner = self.lock();
        inner.mode != Mode::Hot || inner.pending.len() >= self.cfg.max_in_flight
    }

    /// The lowest pending position, if any: nothing at or after it may be confirmed.
    pub fn low(&self) -> Option<Pos> {
        self.lock().pending.keys().next().copied()
    }

    /// What this lane has done, to be saved (see `Mark`). `frontier` is the pipeline's:
    /// every transaction before it was fully handed over.
    pub fn mark(&self, frontier: Pos) -> Mark {
        self.lock().mark(frontier)
    }

    pub fn mode(&self) -> Mode {
        self.lock().mode
    }

    /// Events held in memory and not yet done.
    pub fn backlog(&self) -> usize {
        self.lock().pending.len()
    }

    fn enter_spill(&self, inner: &mut Inner, why: &str) {
        if inner.mode == Mode::Hot {
            // The log is empty in hot mode: this episode writes chunks.
            inner.chunked = true;
            inner.mirror = Mirror::default();
        }
        inner.mode = Mode::Spill;
        // Queued events of idle keys go to the write buffer in position order; those of
        // keys with a delivery in flight (and events under two keys, one of them such a
        // key) stay parked behind it.
        let before = inner.spill_buf.len();
        inner.release_idle();
        let mut moved: Vec<Buffered> = inner.spill_buf.drain(before..).collect();
        moved.sort_by_key(|b| b.event.pos);
        let count = moved.len();
        inner.spill_buf.extend(moved);
        inner.ready.clear();
        tracing::warn!(subscriber = %self.name, reason = why, moved = count, in_flight = inner.hot_in_flight,
            chunked = inner.chunked, "lane switches to spill mode");
        self.wake_writer.notify_one();
    }

    /// Hot and draining: spills a lane whose oldest undelivered event is older than
    /// `spill_after`. Looks every `TICK`.
    async fn age_watch(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            {
                let mut inner = self.lock();
                if inner.mode != Mode::Spill && self.is_stopped() {
                    self.enter_spill(&mut inner, "the subscriber is paused or disabled");
                }
                if inner.mode != Mode::Spill {
                    if let Some(arrived) = inner.pending.values().next() {
                        if arrived.elapsed() > self.cfg.spill_after {
                            self.enter_spill(
                                &mut inner,
                                "oldest undelivered event is older than spill_after",
                            );
                        }
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Hot mode: takes one of the lane's `max_in_flight` slots, waits for the first event
    /// of a ready key, and starts a hot worker with both; then the next. Workers exist
    /// only while there is work, so an idle lane costs this one task, whatever
    /// `max_in_flight` is.
    async fn hot_dispatch(
        self: Arc<Self>,
        tracker: TaskTracker,
        cancel: CancellationToken,
        abandon: CancellationToken,
    ) {
        let slots = Arc::new(Semaphore::new(self.cfg.max_in_flight));
        loop {
            let slot = tokio::select! {
                _ = cancel.cancelled() => return,
                slot = slots.clone().acquire_owned() => match slot {
                    Ok(slot) => slot,
                    Err(_) => return,
                },
            };
            // The wakeup registration lives only while looking and waiting for work; it
            // is the only one, so every `notify_one` of an event reaches it.
            let event = loop {
                let mut woken = pin!(self.wake_workers.notified());
                woken.as_mut().enable();
                if let Some(event) = self.take_hot() {
                    break event;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = woken => {}
                    _ = tokio::time::sleep(IDLE_WORKER_CHECK) => {}
                }
            };
            let worker = self.clone().hot_worker(event, slot, cancel.clone());
            tracker.spawn(fenced(&abandon, worker));
        }
    }

    /// In hot mode and not stopped, the first event of the next ready key (see `next_hot`).
    fn take_hot(&self) -> Option<EventRef> {
        if self.is_stopped() {
            return None;
        }
        let mut inner = self.lock();
        next_hot(&mut inner)
    }

    /// A hot worker, holding one of the lane's `max_in_flight` slots: delivers `event`,
    /// then the first event of the next ready key for as long as there is one, so at most
    /// `max_in_flight` keys are in flight and each key has one event in flight. It ends
    /// when no key is ready, giving its slot back to the dispatcher.
    async fn hot_worker(
        self: Arc<Self>,
        mut event: EventRef,
        _slot: OwnedSemaphorePermit,
        cancel: CancellationToken,
    ) {
        loop {
            self.deliver_hot(event, &cancel).await;
            if cancel.is_cancelled() {
                return;
            }
            match self.take_hot() {
                Some(next) => event = next,
                None => return,
            }
        }
    }

    /// Delivers one event from memory, retrying quickly while the lane stays hot.
    async fn deliver_hot(&self, event: EventRef, cancel: &CancellationToken) {
        let mut attempts: u32 = 0;
        let mut history = Vec::new();
        let outcome = loop {
            attempts += 1;
            let (result, took) = self.target.send(&event.id, &event.body).await;
            self.metrics.observe(took.as_secs_f64());
            self.count_outcome(result.failure());
            let failure = match result {
                Attempt::Delivered => {
                    self.failing.store(false, Ordering::Relaxed);
                    self.metrics.delivered.add(1);
                    break HotOutcome::Done;
                }
                Attempt::Failed(failure) => failure,
            };
            self.failing.store(true, Ordering::Relaxed);
            history.push(attempt_log(took, &failure));
            let wait = match self.target.verdict(attempts, &failure) {
                Verdict::Retry(wait) => wait,
                Verdict::Dead(why) => {
                    if self.record_dead(&event, attempts, why, &history, cancel).await {
                        break HotOutcome::Done;
                    }
                    break HotOutcome::Again(attempts, Duration::ZERO, history);
                }
            };
            self.metrics.retried.add(1);
            tracing::debug!(subscriber = %self.name, id = %event.id, attempts, error = %failure.error, "delivery failed");
            // Sleep before the next attempt, but hand the event to the spill log as soon
            // as the lane spills.
            let until = Instant::now() + wait;
            loop {
                if self.mode() == Mode::Spill || self.is_stopped() || cancel.is_cancelled() {
                    break;
                }
                let left = until.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                tokio::time::sleep(TICK.min(left)).await;
            }
            if self.mode() == Mode::Spill || self.is_stopped() || cancel.is_cancelled() {
                break HotOutcome::Again(attempts, until.saturating_duration_since(Instant::now()), history);
            }
        };
        let done = matches!(outcome, HotOutcome::Done);
        let mut inner = self.lock();
        let mode = inner.mode;
        let ready = inner.finish_hot(&event, outcome);
        drop(inner);
        if done {
            self.room.notify_waiters();
        }
        // The worker that finishes here looks for work next; a second key made ready
        // wakes another.
        if ready > 1 && mode == Mode::Hot {
            self.wake_workers.notify_one();
        }
        if mode != Mode::Hot {
            // The writer takes what followed this event to the log; the server may be
            // waiting for the lane to settle.
            self.wake_writer.notify_one();
            self.wake_server.notify_one();
        }
    }

    /// Runs a state-database operation until it succeeds, waiting `STATE_RETRY` after
    /// each failure (logged with `what`). None when cancelled first.
    async fn retry_state<T, F, Fut>(&self, cancel: &CancellationToken, what: &str, mut op: F) -> Option<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, crate::state::StateError>>,
    {
        loop {
            match op().await {
                Ok(v) => return Some(v),
                Err(e) => {
                    tracing::warn!(subscriber = %self.name, error = %e, "cannot {what}; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return None,
                        _ = tokio::time::sleep(STATE_RETRY) => {}
                    }
                }
            }
        }
    }

    /// Writes a dead letter, retrying until it is written. `history` ends with the attempt
    /// that ended it, whose error is the reason. False when cancelled first.
    async fn record_dead(
        &self,
        event: &EventRef,
        attempts: u32,
        why: DeadWhy,
        history: &[AttemptLog],
        cancel: &CancellationToken,
    ) -> bool {
        let error = history.last().map_or("", |a| a.error.as_str());
        log_dead(&self.name, &event.id, attempts, error, why);
        let written = self
            .retry_state(cancel, "record a dead letter", || {
                self.state
                    .dead_letter(&self.name, event, attempts as i32, error, history)
            })
            .await;
        if written.is_some() {
            self.metrics.dead.add(1);
        }
        written.is_some()
    }

    /// Writes buffered events to the spill log in batches, oldest first.
    async fn spill_writer(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let mut woken = pin!(self.wake_writer.notified());
            woken.as_mut().enable();
            let batch: Vec<(EventRef, i32, Duration, Vec<AttemptLog>)> = {
                let mut inner = self.lock();
                inner.writing = !inner.spill_buf.is_empty();
                let n = spill_batch_len(inner.spill_buf.iter().map(|b| b.event.body.len()));
                inner
                    .spill_buf
                    .iter()
                    .take(n)
                    .map(|b| (b.event.clone(), b.attempts, b.retry_after, b.history.clone()))
                    .collect()
            };
            if batch.is_empty() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = woken => {}
                    _ = tokio::time::sleep(TICK) => {}
                }
                continue;
            }
            let io = self.log_io.lock().await;
            let chunked = self.lock().chunked;
            let written = if chunked {
                let events: Vec<&crate::event::Event> = batch.iter().map(|(e, ..)| &**e).collect();
                self.state.spill_chunk(&self.name, &events).await.map(Some)
            } else {
                let rows: Vec<SpillRow<'_>> = batch
                    .iter()
                    .map(|(e, a, r, h)| SpillRow {
                        event: e,
                        attempts: *a,
                        retry_after: *r,
                        history: h,
                    })
                    .collect();
                self.state.spill(&self.name, &rows).await.map(|()| None)
            };
            match written {
                Ok(chunk) => {
                    self.metrics.spill_rows.add(batch.len() as u64);
                    if chunk.is_none() {
                        self.state.note_spilled(batch.len());
                    }
                    let mut inner = self.lock();
                    for (event, ..) in &batch {
                        inner.pending.remove(&event.pos);
                    }
                    inner.spill_buf.drain(..batch.len());
                    inner.writing = false;
                    inner.writes += 1;
                    if let Some(chunk) = chunk {
                        // Served from memory while there is room and no older chunk
                        // waits in the log; loaded from the log later otherwise.
                        let stopped = self.is_stopped();
                        let m = &mut inner.mirror;
                        let bytes: usize = batch.iter().map(|(e, ..)| e.body.len()).sum();
                        // A stopped subscriber's events wait in the log, not in memory.
                        if !m.behind
                            && !stopped
                            && m.size() < self.cfg.max_buffered
                            && (m.bytes == 0 || m.bytes + bytes <= MIRROR_BYTES)
                        {
                            // A wait begun in hot mode (a Retry-After) is kept.
                            let now = Instant::now();
                            let held = batch
                                .into_iter()
                                .map(|(e, a, r, _)| (e, a as u32, (!r.is_zero()).then(|| now + r)));
                            m.add(chunk, held.collect());
                        } else {
                            m.behind = true;
                        }
                    }
                    drop(inner);
                    drop(io);
                    self.room.notify_waiters();
                    self.wake_server.notify_one();
                }
                Err(e) => {
                    {
                        let mut inner = self.lock();
                        inner.writing = false;
                        if inner.chunked {
                            // The chunk may have been written all the same: as rows, its
                            // events and those written again are one and the same.
                            self.leave_chunks(&mut inner, "a chunk write failed");
                        }
                    }
                    drop(io);
                    tracing::warn!(subscriber = %self.name, error = %e, "spill write failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(STATE_RETRY) => {}
                    }
                }
            }
        }
    }

    /// Ends chunk mode: new spills are rows, and the chunks are turned into rows (leaving
    /// out what was delivered from them) before any row is served. The caller holds
    /// `log_io`.
    fn leave_chunks(&self, inner: &mut Inner, why: &str) {
        let mut delivered = inner.mirror.delivered_positions();
        delivered.extend(inner.unexploded.take().unwrap_or_default());
        inner.unexploded = Some(delivered);
        inner.chunked = false;
        inner.mirror = Mirror::default();
        self.metrics.down.store(false, Ordering::Relaxed);
        tracing::warn!(subscriber = %self.name, reason = why, "spilled chunks become rows, served with retries");
    }

    /// Turns the chunks awaiting it into rows, a few chunks per statement so spill writes
    /// go on in between. Retries until done; false when cancelled first.
    async fn explode_pending(&self, cancel: &CancellationToken) -> bool {
        loop {
            let io = self.log_io.lock().await;
            let Some(delivered) = self.lock().unexploded.clone() else {
                return true;
            };
            match self
                .state
                .explode_chunks(&self.name, &delivered, EXPLODE_CHUNKS)
                .await
            {
                Ok((_, 0)) => {
                    self.lock().unexploded = None;
                    return true;
                }
                Ok((rows, _)) => {
                    self.state.note_spilled(rows as usize);
                    drop(io);
                }
                Err(e) => {
                    drop(io);
                    tracing::warn!(subscriber = %self.name, error = %e, "cannot turn spilled chunks into rows; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return false,
                        _ = tokio::time::sleep(STATE_RETRY) => {}
                    }
                }
            }
        }
    }

    /// Moves this subscriber's dead letters matching `filter` back into its spill log and
    /// has the lane serve them: a hot or draining lane spills (its queued events follow
    /// the replayed ones into the log), a lane spilling in chunks turns them into rows,
    /// and the rows are served per key, oldest first, on the full retry schedule. Returns
    /// the ids replayed.
    pub async fn replay(
        &self,
        filter: &crate::state::deliveries::Filter,
    ) -> Result<Vec<String>, crate::state::StateError> {
        let _io = self.log_io.lock().await;
        let moved = self.state.replay_dead(&self.name, filter).await;
        // On an error the statement may still have committed: the lane must look at
        // its log either way.
        if moved.as_ref().is_ok_and(Vec::is_empty) {
            return moved;
        }
        let why = "dead letters replayed";
        let mut inner = self.lock();
        if inner.mode != Mode::Spill {
            self.enter_spill(&mut inner, why);
        }
        if inner.chunked {
            self.leave_chunks(&mut inner, why);
        }
        drop(inner);
        if let Ok(ids) = &moved {
            tracing::info!(subscriber = %self.name, events = ids.len(), "dead letters replayed: served from the spill log");
        }
        self.wake_writer.notify_one();
        self.wake_server.notify_one();
        moved
    }

    /// Called when this process starts streaming the slot, before any event is handed
    /// over: from now on it owns the lane's log, which another process (one that held the
    /// slot while this one waited) may have filled. Chunks become rows, and a hot lane
    /// whose log has rows starts spilling, so no newer event of a key overtakes the
    /// spilled ones. False when cancelled first.
    pub async fn take_over(&self, cancel: &CancellationToken) -> bool {
        {
            let _io = self.log_io.lock().await;
            let mut inner = self.lock();
            if !inner.chunked && inner.unexploded.is_none() {
                inner.unexploded = Some(Vec::new());
            }
        }
        if !self.explode_pending(cancel).await {
            return false;
        }
        let Some((has, _)) = self
            .retry_state(cancel, "read the spill log", || self.state.backlog(&self.name))
            .await
        else {
            return false;
        };
        let mut inner = self.lock();
        if has && inner.mode == Mode::Hot {
            inner.mode = Mode::Spill;
            inner.chunked = false;
            tracing::info!(subscriber = %self.name, "spill log has events: lane serves them first");
        }
        true
    }

    /// Delivers the oldest due event of each key from the spill log, and returns the lane
    /// to hot mode once the log is empty.
    async fn spill_server(self: Arc<Self>, cancel: CancellationToken) {
        // Serve only once this process streams the slot: a second instance waiting for
        // the slot must not serve the same log.
        while !self.progress.leading.load(Ordering::Relaxed) {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
        }
        loop {
            self.persist_stop(&cancel).await;
            let mut woken = pin!(self.wake_server.notified());
            woken.as_mut().enable();
            let (mode, writes, chunked) = {
                let inner = self.lock();
                (inner.mode, inner.writes, inner.chunked)
            };
            let wait = if mode == Mode::Hot {
                SPILL_POLL
            } else {
                let exploding = self.lock().unexploded.is_some();
                let served = if exploding {
                    if !self.explode_pending(&cancel).await {
                        return;
                    }
                    Ok(true)
                } else if chunked {
                    self.serve_chunks(&cancel).await
                } else {
                    self.serve_round(&cancel).await
                };
                match served {
                    Ok(true) => continue,
                    Ok(false) => self.after_idle_round(writes).await,
                    Err(e) => {
                        tracing::warn!(subscriber = %self.name, error = %e, "spill log unreachable; retrying");
                        STATE_RETRY
                    }
                }
            };
            if wait.is_zero() {
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = woken => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// Nothing was due: moves towards hot mode when the log is empty. Returns how long to
    /// wait before looking again.
    async fn after_idle_round(&self, writes_before: u64) -> Duration {
        if self.is_stopped() {
            // Stays spilled: nothing is served, so the log does not drain.
            return SPILL_POLL;
        }
        match self.state.backlog(&self.name).await {
            Ok((false, _)) => {
                let mut inner = self.lock();
                let settled = inner.writes == writes_before && !inner.writing && inner.hot_in_flight == 0;
                match inner.mode {
                    Mode::Spill if settled && inner.queues.is_empty() => {
                        // New events now wait in memory while the buffer is written out.
                        inner.mode = Mode::Draining;
                        Duration::ZERO
                    }
                    Mode::Draining if settled && inner.spill_buf.is_empty() => {
                        inner.mode = Mode::Hot;
                        inner.chunked = false;
                        inner.mirror = Mirror::default();
                        self.metrics.down.store(false, Ordering::Relaxed);
                        drop(inner);
                        self.state.note_drained();
                        tracing::info!(subscriber = %self.name, "spill log drained; lane back in hot mode");
                        self.wake_workers.notify_waiters();
                        Duration::ZERO
                    }
                    _ => TICK,
                }
            }
            Ok((true, due)) => due
                .unwrap_or(SPILL_POLL)
                .clamp(Duration::from_millis(10), SPILL_POLL),
            Err(e) => {
                tracing::warn!(subscriber = %self.name, error = %e, "spill log unreachable; retrying");
                STATE_RETRY
            }
        }
    }

    /// One round: fetch up to `SPILL_ROUND` due heads, attempt each once (at most
    /// `max_in_flight` at a time), record the outcomes in one statement. Returns whether
    /// anything was attempted.
    async fn serve_round(&self, cancel: &CancellationToken) -> Result<bool, crate::state::StateError> {
        if self.is_stopped() {
            return Ok(false);
        }
        let limit = SPILL_ROUND.max(self.cfg.max_in_flight) as i64;
        let mut heads = self.state.due_heads(&self.name, limit).await?;
        {
            // A key with a hot delivery still in flight waits for it (only a replay puts
            // rows of such a key in the log): one event per key at a time.
            let inner = self.lock();
            let busy = |k: &str| inner.queues.get(k).is_some_and(|q| q.busy);
            heads.retain(|h| !busy(&h.key) && !h.prev_key.as_deref().is_some_and(busy));
        }
        if heads.is_empty() {
            return Ok(false);
        }
        let attempts = heads.into_iter().map(|h| self.attempt_spilled(h));
        // At most max_in_flight requests at once; one statement records the whole round.
        let outcomes: Vec<(Pos, SpillOutcome)> = futures_util::stream::iter(attempts)
            .buffer_unordered(self.cfg.max_in_flight)
            .collect()
            .await;
        self.record_outcomes(&outcomes, cancel).await;
        Ok(true)
    }

    /// Chunk mode: keeps up to `max_in_flight` attempts going, the first event of each
    /// key at a time, loading written chunks into memory while there is room and deleting
    /// chunks once all their events are done. A failed event waits out its backoff while
    /// other keys go on; after `max_attempts` it is dead-lettered and its key moves on.
    /// After `OUTAGE_AFTER` failures in a row the subscriber seems down: one probe at a
    /// time, each further apart, until one succeeds; the backlog stays in chunks
    /// meanwhile. Returns whether anything was attempted.
    async fn serve_chunks(&self, cancel: &CancellationToken) -> Result<bool, crate::state::StateError> {
        let mut inflight = futures_util::stream::FuturesUnordered::new();
        // Outcomes that arrived after chunk mode ended under them: rows now.
        let mut as_rows: Vec<(Pos, SpillOutcome)> = Vec::new();
        let mut to_delete: Vec<i64> = Vec::new();
        let mut last_delete = Instant::now();
        let mut attempted = false;
        let mut error = None;
        let mut ended = false;
        let mut starved_out = false;
        // Nothing is in flight now: every key with events is ready or waits out a backoff.
        self.lock().mirror.rebuild_ready();
        loop {
            if error.is_none() && !ended {
                match self.refill_mirror().await {
                    Ok(true) => ended = true,
                    Ok(false) => {}
                    Err(e) => error = Some(e),
                }
            }
            // Start attempts, unless something calls for stopping: then the ones in
            // flight finish first. `wake`: when an attempt is due that may not start yet.
            let wake = {
                let mut inner = self.lock();
                let chunked = inner.chunked;
                let m = &mut inner.mirror;
                let now = Instant::now();
                let next_due = m.promote(now);
                let full = m.behind && (m.size() >= self.cfg.max_buffered || m.bytes >= MIRROR_BYTES);
                if chunked
                    && full
                    && m.outage.is_none()
                    && m.ready.len() + inflight.len() < self.cfg.max_in_flight
                {
                    let since = *m.starved_since.get_or_insert_with(Instant::now);
                    starved_out |= since.elapsed() >= STARVED_FOR;
                } else {
                    m.starved_since = None;
                }
                let stop = !chunked || ended || starved_out || error.is_some() || cancel.is_cancelled();
                let (limit, probe_at) = match m.outage {
                    _ if self.is_stopped() => (0, None),
                    Some((_, at)) if at > now => (0, Some(at)),
                    Some(_) => (1, None),
                    None => (self.cfg.max_in_flight, None),
                };
                let probe = m.outage.is_some();
                while !stop && inflight.len() < limit {
                    let Some((event, before)) = m.next_ready() else {
                        break;
                    };
                    inflight.push(async move {
                        let (result, took) = self.target.send(&event.id, &event.body).await;
                        self.count_outcome(result.failure());
                        (event, before, probe, result, took)
                    });
                }
                match probe_at {
                    _ if stop => None,
                    Some(at) if !m.ready.is_empty() => Some(at),
                    Some(at) => next_due.map(|due| due.max(at)),
                    None => next_due,
                }
            };
            if !to_delete.is_empty() && (inflight.is_empty() || last_delete.elapsed() >= DELETE_EVERY) {
                self.delete_delivered(&mut to_delete, cancel).await;
                last_delete = Instant::now();
            }
            let nap = wake.map_or(TICK, |at| at.saturating_duration_since(Instant::now()).min(TICK));
            let mut woken = pin!(self.wake_server.notified());
            woken.as_mut().enable();
            if inflight.is_empty() {
                if wake.is_none() {
                    break;
                }
                // Everything left waits out a backoff: sleep until the first is due.
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = woken => {}
                    _ = tokio::time::sleep(nap) => {}
                }
                continue;
            }
            let (event, before, probe, result, took) = tokio::select! {
                done = inflight.next() => match done {
                    Some(done) => done,
                    None => continue,
                },
                // New chunks or keys: start them without waiting for a completion.
                _ = woken => continue,
                _ = tokio::time::sleep(nap) => continue,
            };
            attempted = true;
            self.metrics.observe(took.as_secs_f64());
            let dead = match self.chunk_outcome(&event, before, probe, result, took, &mut to_delete) {
                ChunkOutcome::Done => continue,
                ChunkOutcome::AsRow(outcome) => {
                    as_rows.push((event.pos, outcome));
                    continue;
                }
                ChunkOutcome::Dead(attempts, why, attempt) => (attempts, why, attempt),
            };
            let history = std::slice::from_ref(&dead.2);
            if self.record_dead(&event, dead.0, dead.1, history, cancel).await {
                let mut inner = self.lock();
                if inner.chunked {
                    if let Some(chunk) = inner.mirror.delivered(&event.key) {
                        to_delete.push(chunk);
                    }
                } else if let Some(left_out) = inner.unexploded.as_mut() {
                    // Chunk mode ended under it, so its chunks are still to become rows
                    // (`leave_chunks` set `unexploded`; only this task turns them, after
                    // this loop): it gets no row. A row would be recorded dead again
                    // later, undoing a replay of the dead letter written just now.
                    left_out.push(event.pos);
                }
            }
        }
        self.delete_delivered(&mut to_delete, cancel).await;
        if starved_out {
            let _io = self.log_io.lock().await;
            let mut inner = self.lock();
            if inner.chunked {
                self.leave_chunks(&mut inner, "a few keys hold the lane's memory");
            }
        }
        // The rows must exist before attempts are recorded on them.
        if !as_rows.is_empty() {
            if !self.explode_pending(cancel).await {
                return Ok(true);
            }
            self.record_outcomes(&as_rows, cancel).await;
        }
        match error {
            Some(e) => Err(e),
            None => Ok(attempted || starved_out),
        }
    }

    /// What an attempt of a chunk-mode event means: done (delivered, or retried later),
    /// an outcome for its row (the chunks became rows meanwhile), or dead. `probe`: the
    /// attempt started while the subscriber seemed down.
    fn chunk_outcome(
        &self,
        event: &EventRef,
        before: u32,
        probe: bool,
        result: Attempt,
        took: Duration,
        to_delete: &mut Vec<i64>,
    ) -> ChunkOutcome {
        let mut inner = self.lock();
        if !inner.chunked {
            drop(inner);
            return ChunkOutcome::AsRow(self.spill_outcome(&event.id, before as i32, result, took));
        }
        let m = &mut inner.mirror;
        let failure = match result {
            Attempt::Delivered => {
                self.failing.store(false, Ordering::Relaxed);
                self.metrics.delivered.add(1);
                m.failures_in_row = 0;
                if m.outage.take().is_some() {
                    self.metrics.down.store(false, Ordering::Relaxed);
                    tracing::info!(subscriber = %self.name, "subscriber answers again; delivery resumes");
                }
                if let Some(chunk) = m.delivered(&event.key) {
                    to_delete.push(chunk);
                }
                return ChunkOutcome::Done;
            }
            Attempt::Failed(failure) => failure,
        };
        self.failing.store(true, Ordering::Relaxed);
        let attempts = before + 1;
        let now = Instant::now();
        // Only failures that say the subscriber is unreachable or overloaded count
        // towards an outage; refusals of particular events (most 4xx) do not.
        if failure.suggests_down() {
            m.failures_in_row += 1;
        } else {
            m.failures_in_row = 0;
        }
        match m.outage {
            // The subscriber answered, refusing this one event: it is up again. (A
            // request that could not be made at all says nothing of the subscriber.)
            Some(_) if probe && failure.status.is_some() && !failure.suggests_down() => {
                m.outage = None;
                self.metrics.down.store(false, Ordering::Relaxed);
                tracing::info!(subscriber = %self.name, status = failure.status,
                    "subscriber answers again (refusing one event); delivery resumes");
            }
            // Each failed probe doubles the wait before the next.
            Some((probes, _)) if probe => {
                m.outage = Some((probes + 1, now + self.target.probe_delay(probes + 1)))
            }
            // An attempt that started before: it says nothing new.
            Some(_) => {}
            None if m.failures_in_row >= OUTAGE_AFTER => {
                tracing::warn!(subscriber = %self.name, failures = m.failures_in_row, error = %failure.error,
                    "subscriber seems down: its backlog stays in the spill log, probed one attempt at a time");
                self.metrics.down.store(true, Ordering::Relaxed);
                m.outage = Some((1, now + self.target.probe_delay(1)));
            }
            None => {}
        }
        let wait = match self.target.verdict(attempts, &failure) {
            Verdict::Retry(wait) => wait,
            Verdict::Dead(why) => return ChunkOutcome::Dead(attempts, why, attempt_log(took, &failure)),
        };
        self.metrics.retried.add(1);
        tracing::debug!(subscriber = %self.name, id = %event.id, attempts, error = %failure.error, "delivery failed");
        m.failed(&event.key, attempts, now + wait);
        ChunkOutcome::Done
    }

    /// Why no chunk is to be loaded now, if none is: Some(true) when chunk mode has
    /// ended, Some(false) when the mirror holds everything written or has no room.
    fn no_refill(&self, inner: &Inner) -> Option<bool> {
        let m = &inner.mirror;
        if !inner.chunked {
            Some(true)
        } else if !m.behind
            || m.size() >= self.cfg.max_buffered
            || m.bytes >= MIRROR_BYTES
            || self.is_stopped()
        {
            Some(false)
        } else {
            None
        }
    }

    /// Loads written chunks into the mirror while it has room. Returns true when chunk
    /// mode has ended.
    async fn refill_mirror(&self) -> Result<bool, crate::state::StateError> {
        // Checked before taking the log lock (the usual case: nothing to load) and again
        // under it.
        if let Some(ended) = self.no_refill(&self.lock()) {
            return Ok(ended);
        }
        let _io = self.log_io.lock().await;
        let loaded = {
            let inner = self.lock();
            if let Some(ended) = self.no_refill(&inner) {
                return Ok(ended);
            }
            inner.mirror.loaded
        };
        let next = self.state.chunk_after(&self.name, loaded).await?;
        let mut inner = self.lock();
        match next {
            Some((chunk, events)) => inner.mirror.add(
                chunk,
                events.into_iter().map(|e| (Arc::new(e), 0, None)).collect(),
            ),
            None => inner.mirror.behind = false,
        }
        Ok(false)
    }

    /// Deletes chunks all of whose events were delivered (retrying until done or
    /// cancelled), then lets the mirror forget them.
    async fn delete_delivered(&self, chunks: &mut Vec<i64>, cancel: &CancellationToken) {
        if chunks.is_empty() {
            return;
        }
        let deleted = self
            .retry_state(cancel, "delete delivered chunks", || {
                self.state.delete_chunks(&self.name, chunks)
            })
            .await;
        if deleted.is_none() {
            return;
        }
        self.lock().mirror.forget(chunks);
        chunks.clear();
    }

    /// What one attempt of a spilled event means for its row, counted in the metrics.
    fn spill_outcome(&self, id: &str, attempts_before: i32, result: Attempt, took: Duration) -> SpillOutcome {
        let attempts = attempts_before + 1;
        match result {
            Attempt::Delivered => {
                self.failing.store(false, Ordering::Relaxed);
                self.metrics.delivered.add(1);
                SpillOutcome::Delivered
            }
            Attempt::Failed(failure) => {
                self.failing.store(true, Ordering::Relaxed);
                let attempt = attempt_log(took, &failure);
                match self.target.verdict(attempts as u32, &failure) {
                    Verdict::Dead(why) => {
                        self.metrics.dead.add(1);
                        log_dead(&self.name, id, attempts as u32, &failure.error, why);
                        SpillOutcome::Dead { attempts, attempt }
                    }
                    Verdict::Retry(after) => {
                        self.metrics.retried.add(1);
                        SpillOutcome::Retry {
                            attempts,
                            after,
                            attempt,
                        }
                    }
                }
            }
        }
    }

    /// Records a round's outcomes on the spill log's rows, retrying until done or cancelled.
    async fn record_outcomes(&self, outcomes: &[(Pos, SpillOutcome)], cancel: &CancellationToken) {
        self.retry_state(cancel, "record spill outcomes", || {
            self.state.complete(&self.name, outcomes)
        })
        .await;
    }

    /// One attempt of a spilled event, and what it means for its row.
    async fn attempt_spilled(&self, h: crate::state::Spilled) -> (Pos, SpillOutcome) {
        let (result, took) = self.target.send(&h.id, &h.body).await;
        self.count_outcome(result.failure());
        self.metrics.observe(took.as_secs_f64());
        (h.pos, self.spill_outcome(&h.id, h.attempts, result, took))
    }
}

#[cfg(test)]
mod tests;

/// The log line of an event given up.
fn log_dead(subscriber: &str, id: &str, attempts: u32, error: &str, why: DeadWhy) {
    match why {
        DeadWhy::Exhausted => {
            tracing::warn!(%subscriber, %id, attempts, %error, "event is dead: every attempt the retry policy allows failed")
        }
        DeadWhy::Final(status) => {
            tracing::warn!(%subscriber, %id, attempts, %error, status, "event is dead: the subscriber answered a final status")
        }
    }
}

/// Runs `task` until it ends or `fence` is cancelled, whichever comes first (then the
/// task is dropped where it waits: a request in flight is abandoned, its connection
/// closed).
pub fn fenced<F>(fence: &CancellationToken, task: F) -> impl std::future::Future<Output = ()>
where
    F: std::future::Future<Output = ()>,
{
    let fence = fence.clone();
    async move {
        tokio::select! {
            biased;
            _ = fence.cancelled() => {}
            _ = task => {}
        }
    }
}
