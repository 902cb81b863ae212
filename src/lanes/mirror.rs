//! Chunk mode's memory: the spilled events of a lane held for delivery, per key in
//! write order, with their chunks, backoffs and the keys in flight. Pure bookkeeping,
//! unit-tested in `tests.rs`.

use super::*;

/// What an event held in a mirror costs, in bytes: its body, its strings and about what
/// the mirror's bookkeeping takes per event.
pub(super) fn held_size(e: &Event) -> usize {
    e.body.len() + e.id.len() + e.key.len() + e.event_type.len() + 200
}

impl Drop for Mirror {
    fn drop(&mut self) {
        self.shared.fetch_sub(self.held, Ordering::Relaxed);
    }
}

impl Mirror {
    /// An empty mirror in the same budget (what this one held is given back when it is
    /// dropped).
    pub(super) fn emptied(&self) -> Mirror {
        let mut m = Mirror::default();
        m.shared = self.shared.clone();
        m
    }

    /// Whether all lanes' mirrors together hold `MIRRORS_HELD` or more.
    pub(super) fn over_budget(&self) -> bool {
        self.shared.load(Ordering::Relaxed) >= MIRRORS_HELD
    }

    /// Takes in a written chunk: its events with the attempts they already had and when
    /// the next may start (a backoff or a Retry-After begun in hot mode).
    pub(super) fn add(&mut self, chunk: i64, events: Vec<(EventRef, u32, Option<Instant>)>) {
        self.open.insert(chunk, (events.len(), Vec::new()));
        self.loaded = chunk;
        self.events += events.len();
        let held: usize = events.iter().map(|(e, ..)| held_size(e)).sum();
        self.held += held;
        self.shared.fetch_add(held, Ordering::Relaxed);
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
    pub(super) fn next_ready(&mut self) -> Option<(EventRef, u32)> {
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
    pub(super) fn rebuild_ready(&mut self) {
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
    pub(super) fn promote(&mut self, now: Instant) -> Option<Instant> {
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

    /// The subscriber answers again after an outage: the keys waiting out a backoff (their
    /// attempts failed while it was down) are due now, so the backlog drains at once
    /// rather than over the retry schedule's minutes and hours.
    pub(super) fn resume_all(&mut self) {
        while let Some((_, key)) = self.waiting.pop_first() {
            if let Some(h) = self.keys.get_mut(&key).and_then(|q| q.front_mut()) {
                h.not_before = None;
                self.ready.push_back(key);
            }
        }
    }

    /// The first event of `key` failed for the `attempts`-th time: it is attempted again
    /// at `at`.
    pub(super) fn failed(&mut self, key: &str, attempts: u32, at: Instant) {
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
    pub(super) fn delivered(&mut self, key: &str) -> Option<i64> {
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
        let size = held_size(&held.event);
        self.held -= size;
        self.shared.fetch_sub(size, Ordering::Relaxed);
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
    pub(super) fn forget(&mut self, chunks: &[i64]) {
        for chunk in chunks {
            if let Some(done) = self.done.remove(chunk) {
                self.delivered -= done.len();
            }
        }
    }

    /// What the mirror holds, against `max_buffered`.
    pub(super) fn size(&self) -> usize {
        self.events + self.delivered
    }

    /// The events held that failed before (under their own key): their positions,
    /// attempts and when the next may start.
    pub(super) fn attempted(&self) -> Vec<(Pos, u32, Option<Instant>)> {
        self.keys
            .iter()
            .flat_map(|(key, q)| q.iter().filter(move |h| h.event.key == *key))
            .filter(|h| h.attempts > 0)
            .map(|h| (h.event.pos, h.attempts, h.not_before))
            .collect()
    }

    /// Positions delivered from chunks that may still exist.
    pub(super) fn delivered_positions(&self) -> Vec<Pos> {
        self.open
            .values()
            .map(|(_, d)| d)
            .chain(self.done.values())
            .flat_map(|d| d.iter().copied())
            .collect()
    }
}
