//! Spill mode: writing buffered events to the spill log (rows or chunks), the server
//! that delivers the log's rows per key with the full retry schedule, turning chunks into
//! rows, replays of dead letters, taking a lane over after another process, and the way
//! back to hot mode once the log is drained.

use super::*;

/// How many of the first events waiting to be spilled (of these body sizes) one write
/// takes: at most `SPILL_BATCH` events and `SPILL_BATCH_BYTES` of bodies, but always the
/// first.
pub(super) fn spill_batch_len(bodies: impl Iterator<Item = usize>) -> usize {
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

impl Lane {
    /// Writes buffered events to the spill log in batches, oldest first. A write that
    /// would be less than half full waits `SPILL_GATHER` for more first: each write is a
    /// statement the state database (often the source) runs, and a failing lane beside a
    /// healthy one wrote chunks of 200 events at 35,000 events/s.
    pub(super) async fn spill_writer(self: Arc<Self>, cancel: CancellationToken) {
        let mut gathered = false;
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
                // Woken when events are buffered; the timeout is only a safety net.
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = woken => {}
                    _ = tokio::time::sleep(IDLE_NAP) => {}
                }
                continue;
            }
            let bytes: usize = batch.iter().map(|(e, ..)| e.body.len()).sum();
            if !gathered && batch.len() < SPILL_BATCH / 2 && bytes < SPILL_BATCH_BYTES / 2 {
                gathered = true;
                tokio::select! {
                    _ = cancel.cancelled() => {}
                    _ = tokio::time::sleep(SPILL_GATHER) => {}
                }
                continue;
            }
            gathered = false;
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
                        self.state.clone().note_spilled(batch.len());
                    }
                    let mut inner = self.lock();
                    for (event, ..) in &batch {
                        inner.done(event);
                    }
                    inner.spill_buf.drain(..batch.len());
                    inner.writing = false;
                    inner.writes += 1;
                    if let Some(chunk) = chunk {
                        // Served from memory while there is room and no older chunk
                        // waits in the log; loaded from the log later otherwise.
                        let stopped = self.is_stopped();
                        let m = &mut inner.mirror;
                        let size: usize = batch.iter().map(|(e, ..)| mirror::held_size(e)).sum();
                        // A stopped subscriber's events wait in the log, not in memory.
                        if !m.behind
                            && !stopped
                            && m.size() < self.cfg.max_buffered
                            && (m.held == 0 || (m.held + size <= MIRROR_BYTES && !m.over_budget()))
                        {
                            // A wait begun in hot mode (a Retry-After) is kept.
                            let now = Instant::now();
                            let held = batch
                                .into_iter()
                                .map(|(e, a, r, _)| (e, a as u32, (!r.is_zero()).then(|| now + r)));
                            m.add(chunk, held.collect());
                        } else {
                            m.behind = true;
                            // What failed before stays with the lane until the chunk is
                            // loaded or becomes rows.
                            let now = Instant::now();
                            for (e, attempts, after, history) in batch {
                                if attempts > 0 {
                                    let c = Carried {
                                        attempts: attempts as u32,
                                        due: now + after,
                                        history,
                                    };
                                    inner.chunk_carried.insert(e.pos, c);
                                }
                            }
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
    pub(super) fn leave_chunks(&self, inner: &mut Inner, why: &str) {
        let mut delivered = inner.mirror.delivered_positions();
        delivered.extend(inner.unexploded.take().unwrap_or_default());
        inner.unexploded = Some(delivered);
        inner.chunked = false;
        // What the held events failed so far goes onto their rows.
        let now = Instant::now();
        for (pos, attempts, not_before) in inner.mirror.attempted() {
            let due = not_before.unwrap_or(now);
            inner.chunk_carried.entry(pos).or_insert(Carried {
                attempts,
                due,
                history: Vec::new(),
            });
        }
        inner.mirror = inner.mirror.emptied();
        self.metrics.down.store(false, Ordering::Relaxed);
        tracing::warn!(subscriber = %self.name, reason = why, "spilled chunks become rows, served with retries");
    }

    /// Turns the chunks awaiting it into rows, a few chunks per statement so spill writes
    /// go on in between. Retries until done; false when cancelled first.
    pub(super) async fn explode_pending(&self, cancel: &CancellationToken) -> bool {
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
                    let carried: Vec<(Pos, Carried)> = self.lock().chunk_carried.drain().collect();
                    if !carried.is_empty() {
                        let now = Instant::now();
                        let rows: Vec<Restored> = carried
                            .into_iter()
                            .map(|(pos, c)| Restored {
                                pos,
                                attempts: c.attempts as i32,
                                retry_after: c.due.saturating_duration_since(now),
                                history: c.history,
                            })
                            .collect();
                        let restored = self
                            .retry_state(cancel, "keep the attempts of rows made from chunks", || {
                                self.state.restore(&self.name, &rows)
                            })
                            .await;
                        if restored.is_none() {
                            return false;
                        }
                    }
                    self.lock().unexploded = None;
                    return true;
                }
                Ok((rows, _)) => {
                    self.state.clone().note_spilled(rows as usize);
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
    pub(super) async fn spill_server(self: Arc<Self>, cancel: CancellationToken) {
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
            // A hot lane's log is empty; whatever spills wakes this server.
            let wait = if mode == Mode::Hot {
                IDLE_NAP
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
                    Err(e @ crate::state::StateError::Damaged { .. }) => {
                        tracing::error!(subscriber = %self.name, error = %e, "spill log cannot be read; retrying");
                        STATE_RETRY
                    }
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
    pub(super) async fn after_idle_round(&self, writes_before: u64) -> Duration {
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
                        inner.mirror = inner.mirror.emptied();
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
    pub(super) async fn serve_round(
        &self,
        cancel: &CancellationToken,
    ) -> Result<bool, crate::state::StateError> {
        if self.is_stopped() {
            return Ok(false);
        }
        // Enough to fill every request (of many events, with batches), within bounds.
        let limit = SPILL_ROUND.max(self.cfg.event_slots()).min(10 * SPILL_ROUND) as i64;
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
        // At most max_in_flight requests at once (of `batch.max_events` events each, with
        // batches); one statement records the whole round.
        let outcomes: Vec<(Pos, SpillOutcome)> = futures_util::stream::iter(attempts)
            .buffer_unordered(self.cfg.event_slots())
            .collect()
            .await;
        self.record_outcomes(&outcomes, cancel).await;
        Ok(true)
    }

    /// What a settled attempt of a spilled event means for its row; a dead one is
    /// counted here, as recording the outcome on its row makes its dead letter.
    pub(super) fn row_outcome(&self, id: &str, settled: Settled) -> SpillOutcome {
        if let Settled::Dead {
            attempts,
            why,
            failure,
            ..
        } = &settled
        {
            self.metrics.dead.add(1);
            log_dead(&self.name, id, *attempts, &failure.error, *why);
        }
        settled.for_row()
    }

    /// Records a round's outcomes on the spill log's rows, retrying until done or cancelled.
    pub(super) async fn record_outcomes(&self, outcomes: &[(Pos, SpillOutcome)], cancel: &CancellationToken) {
        self.retry_state(cancel, "record spill outcomes", || {
            self.state.complete(&self.name, outcomes)
        })
        .await;
    }

    /// One attempt of a spilled event, and what it means for its row.
    pub(super) async fn attempt_spilled(&self, h: crate::state::Spilled) -> (Pos, SpillOutcome) {
        let (result, took) = self.target.send(&h.id, &h.body).await;
        let settled = self.settle(&h.id, h.attempts as u32 + 1, result, took);
        (h.pos, self.row_outcome(&h.id, settled))
    }
}
