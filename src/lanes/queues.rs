//! The lane's in-memory state and its per-key decisions: where an accepted event goes
//! (hot queues, parked behind an in-flight delivery, the write buffer), which event of
//! which key goes next, what follows a finished delivery, and what a restarted lane
//! skips. Pure bookkeeping under the lane's lock, unit-tested in `tests.rs`.

use super::*;

/// In hot mode, takes the first event of the next ready key and marks its keys busy. An
/// event under two keys goes only once it is first under both and neither is busy; until
/// then the key that is not ready yet brings it back to `ready` when it is.
pub(super) fn next_hot(inner: &mut Inner) -> Option<EventRef> {
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

impl Inner {
    pub(super) fn new(mode: Mode, mark: Mark, progress: &Progress) -> Inner {
        let mut mirror = Mirror::default();
        mirror.shared = progress.mirrors_held.clone();
        Inner {
            mode,
            next_expected: mark.low,
            restored: mark,
            pending: BTreeMap::new(),
            pending_bytes: 0,
            pending_total: progress.pending_total.clone(),
            queues: HashMap::default(),
            carried: HashMap::default(),
            chunk_carried: HashMap::default(),
            ready: VecDeque::new(),
            hot_in_flight: 0,
            spill_buf: VecDeque::new(),
            writing: false,
            writes: 0,
            chunked: false,
            mirror,
            unexploded: None,
        }
    }

    /// `event` is pending from now on (counted in the lane's and all lanes' budgets).
    pub(super) fn admit(&mut self, event: &Event) {
        if self.pending.insert(event.pos, Instant::now()).is_none() {
            self.pending_bytes += event.body.len();
            self.pending_total.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Whether the lane holds all it may: `max_buffered` events, `PENDING_BYTES` of
    /// bodies (one larger event is still taken), or its share once all lanes together
    /// hold `PENDING_TOTAL`.
    pub(super) fn full(&self, max_buffered: usize) -> bool {
        let n = self.pending.len();
        n >= max_buffered
            || (self.pending_bytes >= PENDING_BYTES && n > 0)
            || (n >= CROWDED_SHARE && self.pending_total.load(Ordering::Relaxed) >= PENDING_TOTAL)
    }

    /// `event` is no longer pending: delivered, dead or durably spilled.
    pub(super) fn done(&mut self, event: &Event) {
        if self.pending.remove(&event.pos).is_some() {
            self.pending_bytes = self.pending_bytes.saturating_sub(event.body.len());
            self.pending_total.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Whether a replayed event is to be skipped: accepted already, or done before the
    /// restart. Passing a done one moves `next_expected` past it, as accepting it would.
    pub(super) fn skips(&mut self, pos: Pos) -> bool {
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
    pub(super) fn mark(&self, frontier: Pos) -> Mark {
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
    pub(super) fn enqueue(&mut self, event: EventRef) -> Enqueued {
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
    pub(super) fn finish_hot(&mut self, event: &EventRef, outcome: HotOutcome) -> usize {
        self.hot_in_flight -= 1;
        let keys: Vec<String> = event.keys().map(String::from).collect();
        for key in &keys {
            self.queues.entry(key.clone()).or_default().busy = false;
        }
        match outcome {
            HotOutcome::Done => self.done(event),
            // Stopped or cancelled while hot: it waits first in its queues again, with
            // its attempts, the rest of its wait and its history (and stays pending, so
            // it is replayed after a restart).
            HotOutcome::Again(attempts, retry_after, history) if self.mode != Mode::Spill => {
                let due = Instant::now() + retry_after;
                self.carried.insert(
                    event.pos,
                    Carried {
                        attempts,
                        due,
                        history,
                    },
                );
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
    pub(super) fn release_idle(&mut self) {
        let idle: Vec<String> = self
            .queues
            .iter()
            .filter(|(_, q)| !q.busy)
            .map(|(k, _)| k.clone())
            .collect();
        self.release(&idle);
    }

    /// Whether `event` is first in the queue of each of its keys, none of them busy.
    pub(super) fn may_go(&self, event: &Event) -> bool {
        event.keys().all(|k| {
            self.queues
                .get(k)
                .is_some_and(|q| !q.busy && q.events.front().is_some_and(|e| e.pos == event.pos))
        })
    }

    /// Spill mode: moves the events parked in the queues of `keys` that may go now (first
    /// under each of their keys, none busy) to the write buffer, and so on for the keys
    /// that frees, in each key's order; drops queues left empty and idle.
    pub(super) fn release(&mut self, keys: &[String]) {
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
                let buffered = self.buffered(first);
                self.spill_buf.push_back(buffered);
            }
        }
    }

    /// `event` as the write buffer takes it from its queue: with what its hot attempts
    /// carried, if it failed before.
    fn buffered(&mut self, event: EventRef) -> Buffered {
        match self.carried.remove(&event.pos) {
            Some(c) => Buffered {
                event,
                attempts: c.attempts as i32,
                retry_after: c.due.saturating_duration_since(Instant::now()),
                history: c.history,
            },
            None => Buffered::fresh(event),
        }
    }
}

impl Drop for Inner {
    /// A lane that ends (a restart in-process) gives its pending events back to the
    /// budget all lanes share.
    fn drop(&mut self) {
        self.pending_total
            .fetch_sub(self.pending.len(), Ordering::Relaxed);
    }
}
