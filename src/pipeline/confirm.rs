//! What is confirmed to the slot (see the module doc of `pipeline`): the lowest of the
//! frontier, the open transaction, every lane's lowest pending event and the coalesced
//! events not yet settled, never inside a coalesced span; the clock offset used for lags;
//! and how long the stream may stay silent.

use super::*;

impl Pipeline {
    pub(super) fn publish_frontier(&self) {
        self.progress.frontier.store(self.frontier, Ordering::Relaxed);
    }

    /// The LSN it is safe to confirm now (see the module doc).
    pub(super) fn confirm_lsn(&self) -> u64 {
        let mut lsn = self.frontier;
        if let Some((tx, _)) = &self.tx {
            lsn = lsn.min(tx.commit_lsn);
        }
        for lane in &self.lanes {
            if let Some(low) = lane.low() {
                lsn = lsn.min(low.lsn);
            }
        }
        if let Some(low) = self.coalescer.low() {
            lsn = lsn.min(low);
        }
        if let Some(low) = self.windows.low() {
            lsn = lsn.min(low);
        }
        for (first, _) in self.held.values() {
            lsn = lsn.min(*first);
        }
        outside_spans(lsn, &self.spans)
    }

    /// Forgets coalesced events no lane can still hold, and spans wholly confirmed.
    pub(super) fn prune_held(&mut self) {
        let lanes = &self.lanes;
        self.held.retain(|pos, (_, routes)| {
            routes
                .iter()
                .filter_map(|&i| lanes.get(i))
                .any(|lane| lane.low().is_some_and(|low| low <= *pos))
        });
        if !self.spans.is_empty() {
            let confirmed = self.confirm_lsn();
            self.spans.retain(|(_, last)| *last >= confirmed);
        }
    }
}

/// This host's clock minus the server's, from the send times of its messages: the least
/// difference seen in the last 10 to 20 seconds, so time a message spent waiting in
/// buffers (while the reader was held) does not count as clock difference.
pub(super) struct ClockOffset {
    current: i64,
    previous: i64,
    since: Instant,
}

impl ClockOffset {
    const WINDOW: Duration = Duration::from_secs(10);

    pub(super) fn new() -> ClockOffset {
        ClockOffset {
            current: i64::MAX,
            previous: i64::MAX,
            since: Instant::now(),
        }
    }

    /// Notes a message the server sent at `send_time` (its clock, PostgreSQL epoch).
    pub(super) fn observe(&mut self, send_time: i64) {
        let offset = unix_micros() - (send_time + PG_EPOCH_UNIX_MICROS);
        if self.since.elapsed() >= Self::WINDOW {
            self.previous = self.current;
            self.current = offset;
            self.since = Instant::now();
        } else {
            self.current = self.current.min(offset);
        }
    }

    pub(super) fn get(&self) -> i64 {
        match self.current.min(self.previous) {
            i64::MAX => 0,
            offset => offset,
        }
    }
}

/// The highest LSN at or below `lsn` that is inside no span (first, last] of coalesced
/// changes, so a replay from it forms every window whole. One pass from the latest first
/// change down is enough: lowering to a span's first change can only put spans that
/// start earlier around the new value.
pub(crate) fn outside_spans(mut lsn: u64, spans: &std::collections::BTreeSet<(u64, u64)>) -> u64 {
    for (first, last) in spans.iter().rev() {
        if *first < lsn && *last >= lsn {
            lsn = *first;
        }
    }
    lsn
}

/// How long the replication connection may stay silent before it counts as dead:
/// `receive_timeout`, but at least 1.5 times the server's `wal_sender_timeout` (the
/// answer to `SHOW wal_sender_timeout`; 60 s when it cannot be read). While the server
/// decodes a long transaction that sends nothing (changes of unpublished tables), it
/// reads our messages, and so answers a request for a reply, only every half of its
/// timeout: we ask at half of the limit and must wait past that.
pub(super) fn silence_limit(receive_timeout: Duration, show: Vec<Vec<Option<String>>>) -> Duration {
    let server = show
        .first()
        .and_then(|row| row.first().cloned().flatten())
        .and_then(|text| match text.trim() {
            "0" => Some(Duration::ZERO),
            t => humantime::parse_duration(t).ok(),
        })
        .unwrap_or(Duration::from_secs(60));
    receive_timeout.max(server * 3 / 2)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_confirmed_lsn_never_falls_inside_a_coalesced_span() {
        let spans: std::collections::BTreeSet<(u64, u64)> = [(10, 20), (5, 12), (1, 3), (30, 40)].into();
        assert_eq!(outside_spans(50, &spans), 50);
        assert_eq!(outside_spans(40, &spans), 30);
        assert_eq!(outside_spans(25, &spans), 25);
        // 15 is inside (10, 20], 10 inside (5, 12]: a chain down to 5.
        assert_eq!(outside_spans(15, &spans), 5);
        assert_eq!(outside_spans(10, &spans), 5);
        assert_eq!(outside_spans(5, &spans), 5);
        assert_eq!(outside_spans(2, &spans), 1);
        assert_eq!(outside_spans(1, &spans), 1);
    }

    #[test]
    fn the_silence_limit_outlasts_the_servers_reply_cycle() {
        let show = |v: &str| vec![vec![Some(v.to_string())]];
        let secs = Duration::from_secs;
        assert_eq!(silence_limit(secs(30), show("1min")), secs(90));
        assert_eq!(silence_limit(secs(30), show("10s")), secs(30));
        assert_eq!(silence_limit(secs(2), show("6s")), secs(9));
        assert_eq!(silence_limit(secs(30), show("500ms")), secs(30));
        assert_eq!(silence_limit(secs(30), show("0")), secs(30));
        // Not readable: the server's default is assumed.
        assert_eq!(silence_limit(secs(30), Vec::new()), secs(90));
        assert_eq!(silence_limit(secs(30), show("soon")), secs(90));
    }
}
