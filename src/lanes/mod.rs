//! Lanes: one per subscriber, so no subscriber ever waits for another.
//!
//! **Hot mode** (the normal case): events wait in memory in a FIFO per ordering key; keys
//! are delivered in parallel up to `max_in_flight`, one event per key at a time, with
//! quick retries in memory. Nothing is written per event.
//!
//! **Spill mode**: when the oldest undelivered event is older than `spill_after`, or more
//! than `max_buffered` events wait in memory, the lane moves what it holds to the spill
//! log in the state database and appends every new event there (batched). A server task
//! delivers the oldest due event of each key, one attempt at a time on the full retry
//! schedule, and after `max_attempts` moves it to the dead letters so its key goes on.
//! When the spill log is empty and nothing waits to be written, the lane returns to hot
//! mode; at that moment every earlier event is done, so no key is reordered.
//!
//! **Progress**: an event is *pending* from the moment the pipeline hands it over until
//! it is delivered, dead-lettered, or durably written to the spill log. The lowest
//! pending position bounds both the LSN confirmed to the source (see `pipeline`) and the
//! lane's watermark, below which replayed events are skipped after a restart.

pub mod deliver;
pub mod sign;
pub mod target;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::Subscriber;
use crate::event::{EventRef, Pos};
use crate::metrics::LaneMetrics;
use crate::state::{SpillOutcome, SpillRow, State};
use deliver::{Attempt, Target};

/// Events written to the spill log in one statement at most.
const SPILL_BATCH: usize = 2_000;
/// How often a hot lane checks the age of its oldest event.
const TICK: Duration = Duration::from_millis(100);
/// Longest sleep of an idle spill server before it looks at the log again.
const SPILL_POLL: Duration = Duration::from_secs(1);
/// Backoff between attempts to reach the state database.
const STATE_RETRY: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Hot,
    Spill,
}

struct Buffered {
    event: EventRef,
    attempts: i32,
    retry_after: Duration,
}

#[derive(Default)]
struct KeyQueue {
    events: VecDeque<EventRef>,
    busy: bool,
}

struct Inner {
    mode: Mode,
    /// Events below this position were already accepted (or done before a restart).
    next_expected: Pos,
    /// Accepted events not yet delivered, dead or durably spilled, with arrival time.
    pending: BTreeMap<Pos, Instant>,
    queues: HashMap<String, KeyQueue>,
    ready: VecDeque<String>,
    hot_in_flight: usize,
    /// Events waiting to be written to the spill log, oldest first.
    spill_buf: VecDeque<Buffered>,
    writing: bool,
    buffered_total: u64,
    flushed_total: u64,
    /// The spill server starts only once this many buffered events are written (so events
    /// handed back by hot deliveries are in the log before their keys are served).
    serve_after: u64,
}

pub struct Lane {
    pub name: String,
    cfg: Subscriber,
    target: Target,
    state: Arc<State>,
    inner: Mutex<Inner>,
    /// Wakes the dispatcher, the spill writer and the spill server.
    wake: Notify,
    /// Wakes a pipeline waiting for room in a full spill buffer.
    room: Notify,
    pub metrics: LaneMetrics,
}

impl Lane {
    /// A lane starting after `watermark`; it starts in spill mode when its log has rows.
    pub fn new(
        cfg: &Subscriber,
        state: Arc<State>,
        watermark: Pos,
        spilled: bool,
    ) -> Result<Arc<Lane>, String> {
        let target = Target::new(cfg)?;
        Ok(Arc::new(Lane {
            name: cfg.name.clone(),
            cfg: cfg.clone(),
            target,
            state,
            inner: Mutex::new(Inner {
                mode: if spilled { Mode::Spill } else { Mode::Hot },
                next_expected: watermark,
                pending: BTreeMap::new(),
                queues: HashMap::new(),
                ready: VecDeque::new(),
                hot_in_flight: 0,
                spill_buf: VecDeque::new(),
                writing: false,
                buffered_total: 0,
                flushed_total: 0,
                serve_after: 0,
            }),
            wake: Notify::new(),
            room: Notify::new(),
            metrics: LaneMetrics::default(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the lane's tasks.
    pub fn spawn(self: &Arc<Self>, tracker: &TaskTracker, cancel: &CancellationToken) {
        tracker.spawn(self.clone().dispatcher(tracker.clone(), cancel.clone()));
        tracker.spawn(self.clone().spill_writer(cancel.clone()));
        tracker.spawn(self.clone().spill_server(cancel.clone()));
    }

    /// Hands an event to the lane. Events at or below what the lane already accepted (a
    /// replay after reconnect or restart) are skipped. Waits only while the lane is in
    /// spill mode and its write buffer is full, i.e. while a spill write is in flight.
    pub async fn push(&self, event: EventRef) {
        loop {
            let notified = self.room.notified();
            {
                let mut inner = self.lock();
                if event.pos < inner.next_expected {
                    return;
                }
                if inner.mode == Mode::Hot && inner.pending.len() >= self.cfg.max_buffered {
                    self.enter_spill(&mut inner, "more than max_buffered events wait in memory");
                }
                if inner.mode == Mode::Hot || inner.spill_buf.len() < self.cfg.max_buffered {
                    inner.next_expected = event.pos.next();
                    inner.pending.insert(event.pos, Instant::now());
                    match inner.mode {
                        Mode::Hot => {
                            let key = event.key.clone();
                            let q = inner.queues.entry(key.clone()).or_default();
                            q.events.push_back(event);
                            if !q.busy && q.events.len() == 1 {
                                inner.ready.push_back(key);
                            }
                        }
                        Mode::Spill => {
                            inner.spill_buf.push_back(Buffered {
                                event,
                                attempts: 0,
                                retry_after: Duration::ZERO,
                            });
                            inner.buffered_total += 1;
                        }
                    }
                    drop(inner);
                    self.wake.notify_waiters();
                    return;
                }
            }
            self.wake.notify_waiters();
            notified.await;
        }
    }

    /// The lowest pending position, if any: nothing at or after it may be confirmed.
    pub fn low(&self) -> Option<Pos> {
        self.lock().pending.keys().next().copied()
    }

    /// Everything of this lane before the returned position is done. `frontier` is the
    /// pipeline's: every transaction before it was fully handed over.
    pub fn watermark(&self, frontier: Pos) -> Pos {
        let inner = self.lock();
        match inner.pending.keys().next() {
            Some(p) => *p,
            None => inner.next_expected.max(frontier),
        }
    }

    pub fn mode(&self) -> Mode {
        self.lock().mode
    }

    /// Events held in memory and not yet done.
    pub fn backlog(&self) -> usize {
        self.lock().pending.len()
    }

    fn enter_spill(&self, inner: &mut Inner, why: &str) {
        inner.mode = Mode::Spill;
        let mut moved = 0usize;
        // Queued (not in-flight) events, in position order.
        let mut queued: Vec<EventRef> = inner
            .queues
            .values_mut()
            .flat_map(|q| q.events.drain(..))
            .collect();
        queued.sort_by_key(|e| e.pos);
        for event in queued {
            inner.spill_buf.push_back(Buffered {
                event,
                attempts: 0,
                retry_after: Duration::ZERO,
            });
            inner.buffered_total += 1;
            moved += 1;
        }
        inner.queues.retain(|_, q| q.busy);
        inner.ready.clear();
        inner.serve_after = inner.buffered_total;
        tracing::warn!(subscriber = %self.name, reason = why, moved, in_flight = inner.hot_in_flight, "lane switches to spill mode");
    }

    /// Hot mode: starts deliveries of ready keys and spills a lane that lags.
    async fn dispatcher(self: Arc<Self>, tracker: TaskTracker, cancel: CancellationToken) {
        loop {
            {
                let mut inner = self.lock();
                if inner.mode == Mode::Hot {
                    if let Some(arrived) = inner.pending.values().next() {
                        if arrived.elapsed() > self.cfg.spill_after {
                            self.enter_spill(
                                &mut inner,
                                "oldest undelivered event is older than spill_after",
                            );
                            drop(inner);
                            self.wake.notify_waiters();
                            continue;
                        }
                    }
                    while inner.hot_in_flight < self.cfg.max_in_flight {
                        let Some(key) = inner.ready.pop_front() else { break };
                        let Some(q) = inner.queues.get_mut(&key) else {
                            continue;
                        };
                        let Some(event) = q.events.pop_front() else {
                            continue;
                        };
                        q.busy = true;
                        inner.hot_in_flight += 1;
                        tracker.spawn(self.clone().deliver_hot(event, cancel.clone()));
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(TICK) => {}
            }
        }
    }

    /// Delivers one event from memory, retrying quickly while the lane stays hot.
    async fn deliver_hot(self: Arc<Self>, event: EventRef, cancel: CancellationToken) {
        let mut attempts: u32 = 0;
        let outcome = loop {
            attempts += 1;
            let (result, took) = self.target.send(&event.id, &event.body).await;
            self.metrics.observe(took.as_secs_f64());
            match result {
                Attempt::Delivered => {
                    self.metrics.delivered.add(1);
                    break None;
                }
                Attempt::Failed(error) => {
                    self.metrics.retried.add(1);
                    tracing::debug!(subscriber = %self.name, id = %event.id, attempts, %error, "delivery failed");
                    if attempts >= self.cfg.max_attempts {
                        self.record_dead(&event, attempts, &error, &cancel).await;
                        break None;
                    }
                    let delay = self.target.backoff(attempts);
                    if self.mode() == Mode::Spill || cancel.is_cancelled() {
                        break Some((attempts, delay));
                    }
                    // Sleep, but hand the event to the spill log as soon as the lane spills.
                    let until = Instant::now() + delay;
                    while Instant::now() < until {
                        if self.mode() == Mode::Spill || cancel.is_cancelled() {
                            break;
                        }
                        tokio::time::sleep(TICK.min(until.saturating_duration_since(Instant::now()))).await;
                    }
                    if self.mode() == Mode::Spill || cancel.is_cancelled() {
                        break Some((attempts, until.saturating_duration_since(Instant::now())));
                    }
                }
            }
        };
        let mut inner = self.lock();
        inner.hot_in_flight -= 1;
        match outcome {
            None => {
                inner.pending.remove(&event.pos);
            }
            Some((attempts, retry_after)) if inner.mode == Mode::Spill => {
                inner.spill_buf.push_back(Buffered {
                    event: event.clone(),
                    attempts: attempts as i32,
                    retry_after,
                });
                inner.buffered_total += 1;
                inner.serve_after = inner.buffered_total;
            }
            Some(_) => {
                // Cancelled while hot: stays pending, so it is replayed after restart.
            }
        }
        let mode = inner.mode;
        if let Some(q) = inner.queues.get_mut(&event.key) {
            q.busy = false;
            if q.events.is_empty() {
                inner.queues.remove(&event.key);
            } else if mode == Mode::Hot {
                inner.ready.push_back(event.key.clone());
            }
        }
        drop(inner);
        self.wake.notify_waiters();
    }

    async fn record_dead(&self, event: &EventRef, attempts: u32, error: &str, cancel: &CancellationToken) {
        tracing::warn!(subscriber = %self.name, id = %event.id, attempts, %error, "event is dead after max_attempts");
        loop {
            match self
                .state
                .dead_letter(&self.name, event, attempts as i32, error)
                .await
            {
                Ok(()) => {
                    self.metrics.dead.add(1);
                    return;
                }
                Err(e) => {
                    tracing::warn!(subscriber = %self.name, error = %e, "cannot record a dead letter; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(STATE_RETRY) => {}
                    }
                }
            }
        }
    }

    /// Spill mode: writes buffered events to the spill log in batches, oldest first.
    async fn spill_writer(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let batch: Vec<(EventRef, i32, Duration)> = {
                let mut inner = self.lock();
                if inner.spill_buf.is_empty() {
                    None
                } else {
                    inner.writing = true;
                    Some(
                        inner
                            .spill_buf
                            .iter()
                            .take(SPILL_BATCH)
                            .map(|b| (b.event.clone(), b.attempts, b.retry_after))
                            .collect(),
                    )
                }
            }
            .unwrap_or_default();
            if batch.is_empty() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(TICK) => {}
                }
                continue;
            }
            let rows: Vec<SpillRow<'_>> = batch
                .iter()
                .map(|(e, a, r)| SpillRow {
                    event: e,
                    attempts: *a,
                    retry_after: *r,
                })
                .collect();
            match self.state.spill(&self.name, &rows).await {
                Ok(()) => {
                    self.metrics.spill_rows.add(batch.len() as u64);
                    let mut inner = self.lock();
                    for (event, _, _) in &batch {
                        inner.pending.remove(&event.pos);
                    }
                    inner.spill_buf.drain(..batch.len());
                    inner.flushed_total += batch.len() as u64;
                    inner.writing = false;
                    drop(inner);
                    self.room.notify_waiters();
                    self.wake.notify_waiters();
                }
                Err(e) => {
                    self.lock().writing = false;
                    tracing::warn!(subscriber = %self.name, error = %e, "spill write failed; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(STATE_RETRY) => {}
                    }
                }
            }
        }
    }

    /// Spill mode: delivers the oldest due event of each key from the spill log, and
    /// returns the lane to hot mode once the log is empty.
    async fn spill_server(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let (ready, flushed) = {
                let inner = self.lock();
                let ready = inner.mode == Mode::Spill
                    && inner.hot_in_flight == 0
                    && inner.flushed_total >= inner.serve_after;
                (ready, inner.flushed_total)
            };
            if !ready {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = self.wake.notified() => {}
                    _ = tokio::time::sleep(TICK) => {}
                }
                continue;
            }
            match self.serve_round(&cancel).await {
                Ok(true) => continue,
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(subscriber = %self.name, error = %e, "spill log unreachable; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(STATE_RETRY) => {}
                    }
                    continue;
                }
            }
            // Nothing due: is the log empty?
            let wait = match self.state.backlog(&self.name).await {
                Ok((0, _)) => {
                    let mut inner = self.lock();
                    if inner.spill_buf.is_empty()
                        && !inner.writing
                        && inner.flushed_total == flushed
                        && inner.hot_in_flight == 0
                        && inner.mode == Mode::Spill
                    {
                        inner.mode = Mode::Hot;
                        tracing::info!(subscriber = %self.name, "spill log drained; lane back in hot mode");
                        continue;
                    }
                    Duration::ZERO
                }
                Ok((_, due)) => due.unwrap_or(SPILL_POLL).min(SPILL_POLL),
                Err(e) => {
                    tracing::warn!(subscriber = %self.name, error = %e, "spill log unreachable; retrying");
                    STATE_RETRY
                }
            };
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(wait) => {}
            }
        }
    }

    /// One round: fetch due heads, attempt each once in parallel, record the outcomes in
    /// one statement. Returns whether anything was attempted.
    async fn serve_round(&self, cancel: &CancellationToken) -> Result<bool, crate::state::StateError> {
        let heads = self
            .state
            .due_heads(&self.name, self.cfg.max_in_flight as i64)
            .await?;
        if heads.is_empty() {
            return Ok(false);
        }
        let attempts = heads.iter().map(|h| async move {
            let (result, took) = self.target.send(&h.id, &h.body).await;
            self.metrics.observe(took.as_secs_f64());
            let attempts = h.attempts + 1;
            let outcome = match result {
                Attempt::Delivered => {
                    self.metrics.delivered.add(1);
                    SpillOutcome::Delivered
                }
                Attempt::Failed(error) if attempts as u32 >= self.cfg.max_attempts => {
                    self.metrics.dead.add(1);
                    tracing::warn!(subscriber = %self.name, id = %h.id, attempts, %error, "event is dead after max_attempts");
                    SpillOutcome::Dead { attempts, reason: error }
                }
                Attempt::Failed(error) => {
                    self.metrics.retried.add(1);
                    SpillOutcome::Retry {
                        attempts,
                        after: self.target.backoff(attempts as u32),
                        error,
                    }
                }
            };
            (h.pos, outcome)
        });
        let outcomes: Vec<(Pos, SpillOutcome)> = futures_util::future::join_all(attempts).await;
        loop {
            match self.state.complete(&self.name, &outcomes).await {
                Ok(()) => return Ok(true),
                Err(e) => {
                    tracing::warn!(subscriber = %self.name, error = %e, "cannot record spill outcomes; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(true),
                        _ = tokio::time::sleep(STATE_RETRY) => {}
                    }
                }
            }
        }
    }
}
