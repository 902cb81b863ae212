//! The lane's two seams: where it keeps what it spills (`SpillStore`: the state
//! database, see `state`) and how it makes one attempt (`Sender`: a signed HTTP request,
//! see `deliver`). The lane's decisions (modes, per-key order, retries, stops) only see
//! these, so its unit tests drive a real lane with an in-memory log and a scripted
//! subscriber under paused time (`core_tests`).

use std::sync::Arc;
use std::time::Duration;

use futures_util::future::BoxFuture;

use super::deliver::{Attempt, Failure, Target};
use super::retry::Verdict;
use crate::event::{Event, Pos};
use crate::state::deliveries::Filter;
use crate::state::subscribers::Stop;
use crate::state::{AttemptLog, Restored, SpillOutcome, SpillRow, Spilled, State, StateError};

type Done<'a, T> = BoxFuture<'a, Result<T, StateError>>;

/// A lane's spill log, chunks, dead letters and stop, per subscriber (see the methods of
/// the same names on `State`, which say what each guarantees).
pub trait SpillStore: Send + Sync {
    fn spill<'a>(&'a self, subscriber: &'a str, rows: &'a [SpillRow<'a>]) -> Done<'a, ()>;
    fn spill_chunk<'a>(&'a self, subscriber: &'a str, events: &'a [&'a Event]) -> Done<'a, i64>;
    fn chunk_after<'a>(&'a self, subscriber: &'a str, after: i64) -> Done<'a, Option<(i64, Vec<Event>)>>;
    fn delete_chunks<'a>(&'a self, subscriber: &'a str, chunks: &'a [i64]) -> Done<'a, ()>;
    fn explode_chunks<'a>(
        &'a self,
        subscriber: &'a str,
        delivered: &'a [Pos],
        chunks: i64,
    ) -> Done<'a, (u64, u64)>;
    fn due_heads<'a>(&'a self, subscriber: &'a str, limit: i64) -> Done<'a, Vec<Spilled>>;
    fn backlog<'a>(&'a self, subscriber: &'a str) -> Done<'a, (bool, Option<Duration>)>;
    fn complete<'a>(&'a self, subscriber: &'a str, outcomes: &'a [(Pos, SpillOutcome)]) -> Done<'a, ()>;
    fn restore<'a>(&'a self, subscriber: &'a str, rows: &'a [Restored]) -> Done<'a, ()>;
    fn dead_letter<'a>(
        &'a self,
        subscriber: &'a str,
        event: &'a Event,
        attempts: i32,
        reason: &'a str,
        history: &'a [AttemptLog],
    ) -> Done<'a, ()>;
    fn replay_dead<'a>(&'a self, subscriber: &'a str, filter: &'a Filter) -> Done<'a, Vec<String>>;
    fn set_stop<'a>(&'a self, subscriber: &'a str, stop: &'a Stop) -> Done<'a, ()>;
    fn clear_stop<'a>(&'a self, subscriber: &'a str) -> Done<'a, ()>;
    /// Rows were written to the log (the store may tend its tables).
    fn note_spilled(self: Arc<Self>, rows: usize);
    /// A lane's log drained.
    fn note_drained(&self);
}

impl SpillStore for State {
    fn spill<'a>(&'a self, subscriber: &'a str, rows: &'a [SpillRow<'a>]) -> Done<'a, ()> {
        Box::pin(State::spill(self, subscriber, rows))
    }
    fn spill_chunk<'a>(&'a self, subscriber: &'a str, events: &'a [&'a Event]) -> Done<'a, i64> {
        Box::pin(State::spill_chunk(self, subscriber, events))
    }
    fn chunk_after<'a>(&'a self, subscriber: &'a str, after: i64) -> Done<'a, Option<(i64, Vec<Event>)>> {
        Box::pin(State::chunk_after(self, subscriber, after))
    }
    fn delete_chunks<'a>(&'a self, subscriber: &'a str, chunks: &'a [i64]) -> Done<'a, ()> {
        Box::pin(State::delete_chunks(self, subscriber, chunks))
    }
    fn explode_chunks<'a>(
        &'a self,
        subscriber: &'a str,
        delivered: &'a [Pos],
        chunks: i64,
    ) -> Done<'a, (u64, u64)> {
        Box::pin(State::explode_chunks(self, subscriber, delivered, chunks))
    }
    fn due_heads<'a>(&'a self, subscriber: &'a str, limit: i64) -> Done<'a, Vec<Spilled>> {
        Box::pin(State::due_heads(self, subscriber, limit))
    }
    fn backlog<'a>(&'a self, subscriber: &'a str) -> Done<'a, (bool, Option<Duration>)> {
        Box::pin(State::backlog(self, subscriber))
    }
    fn complete<'a>(&'a self, subscriber: &'a str, outcomes: &'a [(Pos, SpillOutcome)]) -> Done<'a, ()> {
        Box::pin(State::complete(self, subscriber, outcomes))
    }
    fn restore<'a>(&'a self, subscriber: &'a str, rows: &'a [Restored]) -> Done<'a, ()> {
        Box::pin(State::restore(self, subscriber, rows))
    }
    fn dead_letter<'a>(
        &'a self,
        subscriber: &'a str,
        event: &'a Event,
        attempts: i32,
        reason: &'a str,
        history: &'a [AttemptLog],
    ) -> Done<'a, ()> {
        Box::pin(State::dead_letter(
            self, subscriber, event, attempts, reason, history,
        ))
    }
    fn replay_dead<'a>(&'a self, subscriber: &'a str, filter: &'a Filter) -> Done<'a, Vec<String>> {
        Box::pin(State::replay_dead(self, subscriber, filter))
    }
    fn set_stop<'a>(&'a self, subscriber: &'a str, stop: &'a Stop) -> Done<'a, ()> {
        Box::pin(State::set_stop(self, subscriber, stop))
    }
    fn clear_stop<'a>(&'a self, subscriber: &'a str) -> Done<'a, ()> {
        Box::pin(State::clear_stop(self, subscriber))
    }
    fn note_spilled(self: Arc<Self>, rows: usize) {
        State::note_spilled(&self, rows)
    }
    fn note_drained(&self) {
        State::note_drained(self)
    }
}

/// How a lane makes one attempt of an event, and what its subscriber's retry policy says
/// of a failure.
pub trait Sender: Send + Sync {
    /// Sends event `id` with standard body `body` once: the outcome and the time taken.
    fn send<'a>(&'a self, id: &'a str, body: &'a [u8]) -> BoxFuture<'a, (Attempt, Duration)>;
    /// What follows failed attempt number `attempts` (1 for the first).
    fn verdict(&self, attempts: u32, failure: &Failure) -> Verdict;
    /// The wait before probe number `probes + 1` of a subscriber that seems down.
    fn probe_delay(&self, probes: u32) -> Duration;
}

impl Sender for Target {
    fn send<'a>(&'a self, id: &'a str, body: &'a [u8]) -> BoxFuture<'a, (Attempt, Duration)> {
        Box::pin(Target::send(self, id, body))
    }
    fn verdict(&self, attempts: u32, failure: &Failure) -> Verdict {
        Target::verdict(self, attempts, failure)
    }
    fn probe_delay(&self, probes: u32) -> Duration {
        Target::probe_delay(self, probes)
    }
}
