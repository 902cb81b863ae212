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

mod batch;
mod chunks;
pub mod deliver;
pub mod format;
mod hot;
pub mod http;
pub mod limit;
mod mirror;
pub mod nats;
mod queues;
pub mod retry;
mod settle;
pub mod sign;
mod spill;
mod stop;
pub mod store;
pub mod target;

use queues::next_hot;
use settle::Settled;

use std::collections::{BTreeMap, VecDeque};
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{Notify, OwnedSemaphorePermit, Semaphore};
// The lane's clock: tokio's, so its unit tests run under paused time.
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The lanes' maps by event key and position: looked up several times per event, so with
/// a fast hash (seeded per process) rather than SipHash.
type HashMap<K, V> = foldhash::HashMap<K, V>;

use crate::config::{EventOrder, Subscriber, SubscriberKind};
use crate::event::{Event, EventRef, Mark, Pos};
use crate::metrics::LaneMetrics;
use crate::progress::Progress;
use crate::state::{AttemptLog, Restored, SpillOutcome, SpillRow, State};
use deliver::{Attempt, Target};
use retry::DeadWhy;
use store::{Sender, SpillStore};

/// Events written to the spill log in one statement at most.
const SPILL_BATCH: usize = 2_000;
/// Bytes of bodies written to the spill log in one statement at most (a larger body is
/// written alone): a chunk's size, which chunk reads count on.
const SPILL_BATCH_BYTES: usize = crate::state::CHUNK_BYTES;
/// Bytes a chunk-mode lane's mirror holds at most, bodies and bookkeeping (`held_size`),
/// beside `max_buffered`; past them, written chunks wait in the log and are loaded when
/// there is room again.
const MIRROR_BYTES: usize = 32 << 20;
/// What all lanes' chunk mirrors hold at most, in bytes of bodies and bookkeeping
/// (`held_size`), so many spilling lanes do not each hold their own `MIRROR_BYTES`: past
/// it, a lane that holds something loads no more until others have delivered theirs.
const MIRRORS_HELD: usize = 64 << 20;
/// Events pending in all lanes together past which a lane holding `CROWDED_SHARE` or
/// more is full: fifty lanes fanning one burst out hold 50,000 events between them, not
/// 50 x `max_buffered` (each lane's queues and positions are its own, about 400 bytes an
/// event). A few lanes never reach it.
const PENDING_TOTAL: usize = 50_000;
/// What a lane may always hold, however full the others are.
const CROWDED_SHARE: usize = 1_000;
/// Bytes of bodies of the events a lane holds pending in memory at most, beside
/// `max_buffered` events: past them the lane is full (one larger event is still taken).
/// An event bound for many lanes is held once but counts in each.
const PENDING_BYTES: usize = 16 << 20;
/// How long a spill write that would be less than half full waits for more events.
const SPILL_GATHER: Duration = Duration::from_millis(20);
/// Spilled events fetched and attempted per round (each the oldest of its key).
const SPILL_ROUND: usize = 1_000;
/// How often a lane checks the age of its oldest event, and the longest a task sleeps
/// when a wakeup was missed.
const TICK: Duration = Duration::from_millis(100);
/// Longest sleep of an idle spill server before it looks at the log again.
const SPILL_POLL: Duration = Duration::from_secs(1);
/// The longest an idle task (nothing pending, nothing buffered) sleeps without being
/// woken: a safety net only, since what gives it work also wakes it.
const IDLE_NAP: Duration = Duration::from_secs(5);
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
const IDLE_WORKER_CHECK: Duration = IDLE_NAP;
/// Backoff between attempts to reach the state database.
const STATE_RETRY: Duration = Duration::from_millis(500);
/// Pending events a lane's saved mark lists at most (16 bytes each in `walhook.lanes`);
/// past them, the mark's high end comes down to the first one left out, and a restart
/// re-sends what was delivered after it.
pub const MARK_PENDING_MAX: usize = 1_000;

/// The problems of the subscribers' delivery settings (URL, secrets, rate limits,
/// headers, body formats and retry policies): each subscriber's target is compiled as a
/// run compiles it (`Target::new`), and everything it finds is returned.
pub fn check(config: &crate::config::Config) -> Vec<crate::config::Problem> {
    config
        .subscribers
        .iter()
        .enumerate()
        .flat_map(|(i, sub)| {
            let ctx = deliver::Context {
                database: "",
                delivery: &config.delivery,
                env: &deliver::process_env,
            };
            let mut problems = match sub.kind {
                SubscriberKind::Http => Target::new(sub, i, &ctx).err().unwrap_or_default(),
                SubscriberKind::Nats => nats::NatsTarget::new(sub, i).err().unwrap_or_default(),
            };
            problems.extend(target::private_address(sub, i));
            problems
        })
        .collect()
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

/// A hot event's failed attempts, kept while it waits in its queue again.
#[derive(Debug, Clone)]
struct Carried {
    attempts: u32,
    due: Instant,
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
    /// Bytes of the bodies of `pending` (see `Inner::done`).
    pending_bytes: usize,
    /// Events pending in every lane (`Progress::pending_total`), this one's included.
    pending_total: Arc<std::sync::atomic::AtomicUsize>,
    /// Per-key FIFOs: the hot queues, and in spill mode the events parked behind a key's
    /// in-flight hot delivery.
    queues: HashMap<String, KeyQueue>,
    /// Events back in their queues after failed hot attempts (the lane stopped, or a
    /// stop began, before their next one): the attempts so far, the time before which
    /// the next may not start (a backoff, a `Retry-After`) and their history. Taken up
    /// again by the next hot attempt, or by the write buffer if the lane spills.
    carried: HashMap<Pos, Carried>,
    /// The same for events in chunks not held in memory (written while the mirror had no
    /// room or the subscriber was stopped, or held when chunk mode ended): taken up when
    /// their chunk is loaded, or written onto the rows the chunks become.
    chunk_carried: HashMap<Pos, Carried>,
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
    /// What every lane's mirror holds (`Progress::mirrors_held`), and this one's share.
    shared: Arc<std::sync::atomic::AtomicUsize>,
    held: usize,
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

/// What an attempt of a chunk-mode event leads to.
enum ChunkOutcome {
    /// Delivered, or waiting for its next attempt.
    Done,
    /// The chunks became rows meanwhile: the outcome for its row.
    AsRow(SpillOutcome),
    /// Given up after this many attempts, why, and the last attempt.
    Dead(u32, DeadWhy, AttemptLog),
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

/// What a finished hot delivery hands back.
enum HotOutcome {
    Done,
    /// Not delivered yet: attempts made, the delay before the next, and their history.
    Again(u32, Duration, Vec<AttemptLog>),
}

pub struct Lane {
    pub name: String,
    cfg: Subscriber,
    target: Arc<dyn Sender>,
    state: Arc<dyn SpillStore>,
    progress: Arc<Progress>,
    inner: Mutex<Inner>,
    /// Wakes the hot dispatcher: a key became ready, or the lane is hot again.
    wake_workers: Notify,
    wake_writer: Notify,
    wake_server: Notify,
    /// Wakes the age watch: an event is pending again, or the subscriber stopped.
    wake_age: Notify,
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
    /// `index` is the subscriber's place in the config; `ctx` names the source and holds
    /// the settings of every subscriber's requests.
    pub fn new(
        cfg: &Subscriber,
        index: usize,
        ctx: &deliver::Context<'_>,
        state: Arc<State>,
        progress: Arc<Progress>,
        mark: Mark,
        spilled: bool,
    ) -> Result<Arc<Lane>, Vec<crate::config::Problem>> {
        let target: Arc<dyn Sender> = match cfg.kind {
            SubscriberKind::Http => Arc::new(Target::new(cfg, index, ctx)?),
            SubscriberKind::Nats => Arc::new(nats::NatsTarget::new(cfg, index)?),
        };
        Ok(Lane::assemble(cfg, target, state, progress, mark, spilled))
    }

    /// A lane over any store and sender (`store`): the state database and HTTP in
    /// production, an in-memory log and a scripted subscriber in the lane's unit tests.
    pub fn assemble(
        cfg: &Subscriber,
        target: Arc<dyn Sender>,
        state: Arc<dyn SpillStore>,
        progress: Arc<Progress>,
        mark: Mark,
        spilled: bool,
    ) -> Arc<Lane> {
        let inner = Inner::new(if spilled { Mode::Spill } else { Mode::Hot }, mark, &progress);
        Arc::new(Lane {
            name: cfg.name.clone(),
            cfg: cfg.clone(),
            target,
            state,
            progress,
            inner: Mutex::new(inner),
            wake_workers: Notify::new(),
            wake_writer: Notify::new(),
            wake_server: Notify::new(),
            wake_age: Notify::new(),
            room: Notify::new(),
            failing: AtomicBool::new(false),
            log_io: tokio::sync::Mutex::new(()),
            metrics: LaneMetrics::default(),
            stop: Mutex::new(None),
            stopped: AtomicBool::new(false),
            stop_dirty: AtomicBool::new(false),
            breaker: Mutex::new(stop::Breaker::default()),
        })
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
        // Since when the reader waits, and whether for a spill write (else for room in
        // a full, healthy lane).
        let mut held: Option<(Instant, bool)> = None;
        loop {
            let mut room = pin!(self.room.notified());
            room.as_mut().enable();
            let hold = {
                let mut inner = self.lock();
                if inner.skips(event.pos) {
                    return true;
                }
                let full = inner.full(self.cfg.max_buffered);
                if !full {
                    self.accept(inner, event);
                    if let Some((since, spilling)) = held {
                        let waited = since.elapsed().as_micros() as u64;
                        match spilling {
                            true => self.metrics.spill_held_micros.add(waited),
                            false => self.metrics.held_micros.add(waited),
                        }
                    }
                    return true;
                }
                inner.mode == Mode::Hot
            };
            if hold {
                match self.spill_reason(others_busy) {
                    None => {
                        held.get_or_insert_with(|| (Instant::now(), false));
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
                held.get_or_insert_with(|| (Instant::now(), true));
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
        if inner.pending.is_empty() {
            // The age watch sleeps while nothing is pending.
            self.wake_age.notify_one();
        }
        inner.admit(&event);
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
            inner.mirror = inner.mirror.emptied();
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
        self.wake_server.notify_one();
    }

    /// Hot and draining: spills a lane whose oldest undelivered event is older than
    /// `spill_after`. Looks every `TICK` while events are pending; otherwise it sleeps
    /// until one is (an idle lane costs no wake-ups: a thousand of them cost nothing).
    async fn age_watch(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let idle = {
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
                inner.mode == Mode::Hot && inner.pending.is_empty()
            };
            if idle {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.wake_age.notified() => {}
                    _ = tokio::time::sleep(IDLE_NAP) => {}
                }
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
            }
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
}

#[cfg(test)]
mod core_tests;
#[cfg(test)]
mod memstore;
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
