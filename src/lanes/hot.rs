//! Hot mode: delivery from memory. One dispatcher per lane starts a worker per ready
//! key, up to `max_in_flight` at once; a worker delivers with quick retries while the
//! lane stays hot, and hands a failing event to the spill log when it spills.

use super::*;

impl Lane {
    /// Hot mode: takes one of the lane's `max_in_flight` slots, waits for the first event
    /// of a ready key, and starts a hot worker with both; then the next. Workers exist
    /// only while there is work, so an idle lane costs this one task, whatever
    /// `max_in_flight` is.
    pub(super) async fn hot_dispatch(
        self: Arc<Self>,
        tracker: TaskTracker,
        cancel: CancellationToken,
        abandon: CancellationToken,
    ) {
        // With `batch`, `max_in_flight` counts requests of many events (see `batch`).
        let slots = Arc::new(Semaphore::new(self.cfg.event_slots()));
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
            let (event, carried) = loop {
                let mut woken = pin!(self.wake_workers.notified());
                woken.as_mut().enable();
                if let Some(next) = self.take_hot() {
                    break next;
                }
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = woken => {}
                    _ = tokio::time::sleep(IDLE_WORKER_CHECK) => {}
                }
            };
            let worker = self.clone().hot_worker(event, carried, slot, cancel.clone());
            tracker.spawn(fenced(&abandon, worker));
        }
    }

    /// In hot mode and not stopped, the first event of the next ready key (see `next_hot`),
    /// with the attempts it made before it went back to its queue, if it did. One lock
    /// for both: this runs once per event.
    pub(super) fn take_hot(&self) -> Option<(EventRef, Option<Carried>)> {
        if self.is_stopped() {
            return None;
        }
        let mut inner = self.lock();
        let event = next_hot(&mut inner)?;
        let carried = match inner.carried.is_empty() {
            true => None,
            false => inner.carried.remove(&event.pos),
        };
        Some((event, carried))
    }

    /// A hot worker, holding one of the lane's `max_in_flight` slots: delivers `event`,
    /// then the first event of the next ready key for as long as there is one, so at most
    /// `max_in_flight` keys are in flight and each key has one event in flight. It ends
    /// when no key is ready, giving its slot back to the dispatcher.
    pub(super) async fn hot_worker(
        self: Arc<Self>,
        mut event: EventRef,
        mut carried: Option<Carried>,
        _slot: OwnedSemaphorePermit,
        cancel: CancellationToken,
    ) {
        loop {
            self.deliver_hot(event, carried, &cancel).await;
            if cancel.is_cancelled() {
                return;
            }
            match self.take_hot() {
                Some(next) => (event, carried) = next,
                None => return,
            }
        }
    }

    /// Sleeps until `until` before a hot event's next attempt; false, at once, when the
    /// lane spills or stops or the run ends meanwhile (the event then goes to the spill
    /// log, or back to its queue, with the rest of its wait).
    async fn wait_hot(&self, until: Instant, cancel: &CancellationToken) -> bool {
        let interrupted = || self.mode() == Mode::Spill || self.is_stopped() || cancel.is_cancelled();
        loop {
            if interrupted() {
                return false;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return true;
            }
            tokio::time::sleep(TICK.min(left)).await;
        }
    }

    /// Delivers one event from memory, retrying quickly while the lane stays hot. An event
    /// back in its queue after failed attempts (`carried`) goes on where it stopped.
    pub(super) async fn deliver_hot(
        &self,
        event: EventRef,
        carried: Option<Carried>,
        cancel: &CancellationToken,
    ) {
        let (mut attempts, mut history, mut until) = match carried {
            Some(c) => (c.attempts, c.history, Some(c.due)),
            None => (0, Vec::new(), None),
        };
        let outcome = loop {
            if let Some(until) = until {
                if !self.wait_hot(until, cancel).await {
                    let left = until.saturating_duration_since(Instant::now());
                    break HotOutcome::Again(attempts, left, history);
                }
            }
            attempts += 1;
            let (result, took) = self.target.send(&event.id, &event.body).await;
            match self.settle(&event.id, attempts, result, took) {
                Settled::Delivered => break HotOutcome::Done,
                Settled::Retry { after, attempt, .. } => {
                    history.push(attempt);
                    until = Some(Instant::now() + after);
                }
                Settled::Dead { why, attempt, .. } => {
                    history.push(attempt);
                    if self.record_dead(&event, attempts, why, &history, cancel).await {
                        break HotOutcome::Done;
                    }
                    break HotOutcome::Again(attempts, Duration::ZERO, history);
                }
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
}
