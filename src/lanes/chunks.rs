//! Chunk mode: spilled chunks served from memory (`Mirror`) while the subscriber keeps
//! up, with backoffs per key, outage probing when it seems down, and deletes of chunks
//! once all their events are done.

use super::*;

impl Lane {
    /// Chunk mode: keeps up to `max_in_flight` attempts going, the first event of each
    /// key at a time, loading written chunks into memory while there is room and deleting
    /// chunks once all their events are done. A failed event waits out its backoff while
    /// other keys go on; after `max_attempts` it is dead-lettered and its key moves on.
    /// After `OUTAGE_AFTER` failures in a row the subscriber seems down: one probe at a
    /// time, each further apart, until one succeeds; the backlog stays in chunks
    /// meanwhile. Returns whether anything was attempted.
    pub(super) async fn serve_chunks(
        &self,
        cancel: &CancellationToken,
    ) -> Result<bool, crate::state::StateError> {
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
                let full = m.behind && (m.size() >= self.cfg.max_buffered || m.held >= MIRROR_BYTES);
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
                    None => (self.cfg.event_slots(), None),
                };
                let probe = m.outage.is_some();
                while !stop && inflight.len() < limit {
                    let Some((event, before)) = m.next_ready() else {
                        break;
                    };
                    inflight.push(async move {
                        let (result, took) = self.target.send(&event.id, &event.body).await;
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
    pub(super) fn chunk_outcome(
        &self,
        event: &EventRef,
        before: u32,
        probe: bool,
        result: Attempt,
        took: Duration,
        to_delete: &mut Vec<i64>,
    ) -> ChunkOutcome {
        let settled = self.settle(&event.id, before + 1, result, took);
        let mut inner = self.lock();
        if !inner.chunked {
            drop(inner);
            return ChunkOutcome::AsRow(self.row_outcome(&event.id, settled));
        }
        let m = &mut inner.mirror;
        let Some(failure) = settled.failure() else {
            m.failures_in_row = 0;
            if m.outage.take().is_some() {
                self.metrics.down.store(false, Ordering::Relaxed);
                m.resume_all();
                tracing::info!(subscriber = %self.name, "subscriber answers again; delivery resumes");
            }
            if let Some(chunk) = m.delivered(&event.key) {
                to_delete.push(chunk);
            }
            return ChunkOutcome::Done;
        };
        let now = Instant::now();
        // Only failures that say the subscriber is unreachable or overloaded count
        // towards an outage; refusals of particular events (most 4xx) do not.
        if failure.suggests_down() {
            // A batch's failed request counts once, not once per event.
            m.failures_in_row += u32::from(!failure.echo);
        } else {
            m.failures_in_row = 0;
        }
        match m.outage {
            // The subscriber answered, refusing this one event: it is up again. (A
            // request that could not be made at all says nothing of the subscriber.)
            Some(_) if probe && failure.status.is_some() && !failure.suggests_down() => {
                m.outage = None;
                self.metrics.down.store(false, Ordering::Relaxed);
                m.resume_all();
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
        match settled {
            Settled::Retry { attempts, after, .. } => {
                m.failed(&event.key, attempts, now + after);
                ChunkOutcome::Done
            }
            Settled::Dead {
                attempts,
                why,
                attempt,
                ..
            } => ChunkOutcome::Dead(attempts, why, attempt),
            Settled::Delivered => ChunkOutcome::Done,
        }
    }

    /// Why no chunk is to be loaded now, if none is: Some(true) when chunk mode has
    /// ended, Some(false) when the mirror holds everything written or has no room.
    pub(super) fn no_refill(&self, inner: &Inner) -> Option<bool> {
        let m = &inner.mirror;
        if !inner.chunked {
            Some(true)
        } else if !m.behind
            || m.size() >= self.cfg.max_buffered
            || m.held >= MIRROR_BYTES
            || (m.held > 0 && m.over_budget())
            || self.is_stopped()
        {
            Some(false)
        } else {
            None
        }
    }

    /// Loads written chunks into the mirror while it has room. Returns true when chunk
    /// mode has ended.
    pub(super) async fn refill_mirror(&self) -> Result<bool, crate::state::StateError> {
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
            Some((chunk, events)) => {
                // Events that failed before they were written keep their attempts and wait.
                let held = events
                    .into_iter()
                    .map(|e| match inner.chunk_carried.remove(&e.pos) {
                        Some(c) => (Arc::new(e), c.attempts, Some(c.due)),
                        None => (Arc::new(e), 0, None),
                    })
                    .collect();
                inner.mirror.add(chunk, held);
            }
            None => inner.mirror.behind = false,
        }
        Ok(false)
    }

    /// Deletes chunks all of whose events were delivered (retrying until done or
    /// cancelled), then lets the mirror forget them.
    pub(super) async fn delete_delivered(&self, chunks: &mut Vec<i64>, cancel: &CancellationToken) {
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
}
