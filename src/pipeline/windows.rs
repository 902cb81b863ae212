//! Windows in the stream: stream time closes coalescing and document windows, a reload
//! closes every one, and closed windows go to the lanes at the transaction that closed
//! them (see `mapping::coalesce` and `mapping::documents`).

use super::*;

impl Pipeline {
    /// A transaction committed at `now` (PostgreSQL microseconds) begins: windows whose
    /// deadline is before it close (and go out at its commit).
    pub(super) fn stream_time_moved(&mut self, now: i64) {
        self.progress
            .stream_time_moved_ms
            .store(monotonic_ms(), Ordering::Relaxed);
        self.coalescer.advance(now);
        self.windows.advance(now);
    }

    /// Applies reloaded rules between two transactions: open coalescing windows close
    /// (their events go out now, under the old rules), and every later change is mapped
    /// by the new rules. Returns false when cancelled.
    pub(super) async fn apply(&mut self, swap: Swap, cancel: &CancellationToken) -> bool {
        // Document windows stay open: documents change only with a restart, so their
        // windows form as a replay forms them.
        self.coalescer.advance(i64::MAX);
        // After everything handed over so far and before the next transaction: its commit
        // LSN may equal the frontier when that came from a keepalive, never less.
        let lsn = self.frontier.saturating_sub(1).max(self.last_closed.lsn);
        let first_k = if lsn == self.last_closed.lsn && self.last_closed.seq & CLOSED != 0 {
            (self.last_closed.seq & !CLOSED) + 1
        } else {
            0
        };
        if !self.hand_over_closed(lsn, first_k, None, cancel).await {
            return false;
        }
        self.coalescer = Coalescer::default();
        self.mapper = swap.mapper;
        self.config = swap.config;
        let mut rels = std::mem::take(&mut self.rels);
        for (oid, rel) in rels.iter_mut() {
            self.map_relation(*oid, rel).await;
        }
        self.rels = rels;
        tracing::info!(
            rules = self.config.events.len(),
            "config reloaded: new rules apply from the next transaction"
        );
        true
    }

    /// Hands the windows closed since the last call to their lanes, at positions
    /// `(lsn, CLOSED | k)` from `first_k` on. Returns false when cancelled.
    ///
    /// Windows closed together are numbered in the order of their first change, so a
    /// replay numbers them alike only if it forms all of them again: each one's event
    /// holds the confirmed LSN at the first change of the whole group while some lane may
    /// still hold it.
    pub(super) async fn hand_over_closed(
        &mut self,
        lsn: u64,
        first_k: u64,
        conn: Option<&mut ReplConn>,
        cancel: &CancellationToken,
    ) -> bool {
        let closed = self.coalescer.take_closed(lsn, first_k);
        // Documents are numbered apart from coalesced events (`DOCUMENT`): their
        // positions do not depend on the rules.
        let docs = self.windows.take_closed(lsn);
        self.metrics
            .coalesce_closed_early
            .add(std::mem::take(&mut self.coalescer.closed_early));
        self.count_open_windows();
        let group_low = (closed.iter().map(|c| c.first_lsn))
            .chain(docs.iter().map(|d| d.first.lsn))
            .min();
        let Some(group_low) = group_low else {
            return true;
        };
        for Closed {
            event,
            routes,
            first_lsn,
            last_lsn,
            ..
        } in closed
        {
            self.metrics.events_emitted.add(1);
            self.last_closed = event.pos;
            self.spans.insert((first_lsn, last_lsn));
            if !routes.is_empty() && !self.lanes.is_empty() {
                self.held.insert(event.pos, (group_low, routes.clone()));
            }
            if !self.push(event, &routes, cancel).await {
                return false;
            }
        }
        self.hand_over_documents(docs, group_low, conn, cancel).await
    }

    /// Publishes how many coalescing windows are open (metric, and the ticker's cue).
    pub(super) fn count_open_windows(&self) {
        let open = self.coalescer.open_windows() + self.windows.open_windows();
        self.metrics.coalesce_open.set(open as u64);
        self.progress.open_windows.store(open, Ordering::Relaxed);
    }
}
