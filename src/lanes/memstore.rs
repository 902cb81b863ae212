//! For the lane's unit tests: a spill log in memory with the state database's rules (rows
//! per position, the oldest due row of each key served first, a row that moved its key
//! after every older row of both keys; chunks numbered in write order), and a scripted
//! subscriber that answers from a function of the request and the (paused) clock.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::time::Instant;

use super::deliver::{Attempt, Failure};
use super::retry::{Policy, Verdict};
use super::store::{Sender, SpillStore};
use crate::config::Subscriber;
use crate::event::{Event, Pos};
use crate::state::deliveries::Filter;
use crate::state::subscribers::Stop;
use crate::state::{AttemptLog, Restored, SpillOutcome, SpillRow, Spilled, StateError};

type Done<'a, T> = BoxFuture<'a, Result<T, StateError>>;

fn ready<'a, T: Send + 'a>(v: T) -> Done<'a, T> {
    Box::pin(async move { Ok(v) })
}

fn copy(e: &Event) -> Event {
    Event {
        pos: e.pos,
        id: e.id.clone(),
        event_type: e.event_type.clone(),
        key: e.key.clone(),
        prev_key: e.prev_key.clone(),
        body: e.body.clone(),
    }
}

pub struct Row {
    pub event: Event,
    pub attempts: i32,
    pub due: Instant,
    pub history: Vec<AttemptLog>,
}

/// What a lane keeps, for one subscriber.
#[derive(Default)]
pub struct Log {
    pub rows: BTreeMap<Pos, Row>,
    pub chunks: BTreeMap<i64, Vec<Event>>,
    last_chunk: i64,
    /// Dead letters: (event id, attempts, reason, history).
    pub dead: Vec<(String, i32, String, Vec<AttemptLog>)>,
    pub stop: Option<Stop>,
    /// Chunk writes still to fail (a state database that just went away).
    pub fail_chunk_writes: usize,
    /// Rows and chunk events ever written.
    pub rows_written: usize,
    pub chunk_events_written: usize,
}

#[derive(Default)]
pub struct MemStore {
    pub log: Mutex<Log>,
}

impl MemStore {
    pub fn log(&self) -> std::sync::MutexGuard<'_, Log> {
        self.log.lock().unwrap()
    }
}

impl Log {
    /// Whether the row at `pos` may be served: the oldest of its key, after every older
    /// row of the key it moved from, and after every older row that moved a row from or
    /// to one of its keys (the rule of `State::due_heads`).
    fn is_head(&self, pos: Pos) -> bool {
        let e = &self.rows[&pos].event;
        let mine = |k: &str| k == e.key || e.prev_key.as_deref() == Some(k);
        self.rows.range(..pos).all(|(_, older)| {
            let o = &older.event;
            !mine(&o.key) && !o.prev_key.as_deref().is_some_and(mine)
        })
    }
}

impl SpillStore for MemStore {
    fn spill<'a>(&'a self, _: &'a str, rows: &'a [SpillRow<'a>]) -> Done<'a, ()> {
        let mut log = self.log();
        let now = Instant::now();
        for r in rows {
            log.rows_written += 1;
            log.rows.entry(r.event.pos).or_insert_with(|| Row {
                event: copy(r.event),
                attempts: r.attempts,
                due: now + r.retry_after,
                history: r.history.to_vec(),
            });
        }
        ready(())
    }

    fn spill_chunk<'a>(&'a self, _: &'a str, events: &'a [&'a Event]) -> Done<'a, i64> {
        let mut log = self.log();
        if log.fail_chunk_writes > 0 {
            log.fail_chunk_writes -= 1;
            return Box::pin(async { Err(StateError::Url("(test) the chunk write was refused".into())) });
        }
        log.last_chunk += 1;
        let chunk = log.last_chunk;
        log.chunk_events_written += events.len();
        log.chunks.insert(chunk, events.iter().map(|e| copy(e)).collect());
        ready(chunk)
    }

    fn chunk_after<'a>(&'a self, _: &'a str, after: i64) -> Done<'a, Option<(i64, Vec<Event>)>> {
        let log = self.log();
        let next = log
            .chunks
            .range(after + 1..)
            .next()
            .map(|(c, events)| (*c, events.iter().map(copy).collect()));
        ready(next)
    }

    fn delete_chunks<'a>(&'a self, _: &'a str, chunks: &'a [i64]) -> Done<'a, ()> {
        let mut log = self.log();
        for c in chunks {
            log.chunks.remove(c);
        }
        ready(())
    }

    fn explode_chunks<'a>(&'a self, _: &'a str, delivered: &'a [Pos], chunks: i64) -> Done<'a, (u64, u64)> {
        let mut log = self.log();
        let taken: Vec<i64> = log.chunks.keys().take(chunks.max(0) as usize).copied().collect();
        let now = Instant::now();
        let mut rows = 0;
        for c in &taken {
            for e in log.chunks.remove(c).unwrap_or_default() {
                if delivered.contains(&e.pos) || log.rows.contains_key(&e.pos) {
                    continue;
                }
                rows += 1;
                log.rows.insert(
                    e.pos,
                    Row {
                        event: e,
                        attempts: 0,
                        due: now,
                        history: Vec::new(),
                    },
                );
            }
        }
        ready((rows, taken.len() as u64))
    }

    fn due_heads<'a>(&'a self, _: &'a str, limit: i64) -> Done<'a, Vec<Spilled>> {
        let log = self.log();
        let now = Instant::now();
        let heads = log
            .rows
            .iter()
            .filter(|(pos, r)| r.due <= now && log.is_head(**pos))
            .take(limit.max(0) as usize)
            .map(|(pos, r)| Spilled {
                pos: *pos,
                id: r.event.id.clone(),
                event_type: r.event.event_type.clone(),
                key: r.event.key.clone(),
                prev_key: r.event.prev_key.clone(),
                body: r.event.body.clone(),
                attempts: r.attempts,
            })
            .collect();
        ready(heads)
    }

    fn backlog<'a>(&'a self, _: &'a str) -> Done<'a, (bool, Option<Duration>)> {
        let log = self.log();
        if !log.chunks.is_empty() {
            return ready((true, Some(Duration::ZERO)));
        }
        let now = Instant::now();
        let wait = log
            .rows
            .values()
            .map(|r| r.due.saturating_duration_since(now))
            .min();
        ready((wait.is_some(), wait))
    }

    fn complete<'a>(&'a self, _: &'a str, outcomes: &'a [(Pos, SpillOutcome)]) -> Done<'a, ()> {
        let mut log = self.log();
        let now = Instant::now();
        for (pos, outcome) in outcomes {
            match outcome {
                SpillOutcome::Delivered => {
                    log.rows.remove(pos);
                }
                SpillOutcome::Retry {
                    attempts,
                    after,
                    attempt,
                } => {
                    if let Some(r) = log.rows.get_mut(pos) {
                        r.attempts = *attempts;
                        r.due = now + *after;
                        r.history.push(attempt.clone());
                    }
                }
                SpillOutcome::Dead { attempts, attempt } => {
                    if let Some(mut r) = log.rows.remove(pos) {
                        r.history.push(attempt.clone());
                        log.dead
                            .push((r.event.id, *attempts, attempt.error.clone(), r.history));
                    }
                }
            }
        }
        ready(())
    }

    fn restore<'a>(&'a self, _: &'a str, rows: &'a [Restored]) -> Done<'a, ()> {
        let mut log = self.log();
        let now = Instant::now();
        for r in rows {
            if let Some(row) = log.rows.get_mut(&r.pos) {
                row.attempts = r.attempts;
                row.due = now + r.retry_after;
                row.history.extend(r.history.iter().cloned());
            }
        }
        ready(())
    }

    fn dead_letter<'a>(
        &'a self,
        _: &'a str,
        event: &'a Event,
        attempts: i32,
        reason: &'a str,
        history: &'a [AttemptLog],
    ) -> Done<'a, ()> {
        self.log()
            .dead
            .push((event.id.clone(), attempts, reason.to_string(), history.to_vec()));
        ready(())
    }

    fn replay_dead<'a>(&'a self, _: &'a str, _: &'a Filter) -> Done<'a, Vec<String>> {
        ready(Vec::new())
    }

    fn set_stop<'a>(&'a self, _: &'a str, stop: &'a Stop) -> Done<'a, ()> {
        self.log().stop = Some(stop.clone());
        ready(())
    }

    fn clear_stop<'a>(&'a self, _: &'a str) -> Done<'a, ()> {
        self.log().stop = None;
        ready(())
    }

    fn note_spilled(self: Arc<Self>, _: usize) {}

    fn note_drained(&self) {}
}

/// How the scripted subscriber answers one request.
#[derive(Debug, Clone)]
pub enum Answer {
    Ok,
    /// A status, with a `Retry-After`.
    Status(u16, Option<Duration>),
    /// No answer (connection refused).
    Down,
}

/// A request the scripted subscriber got: the event id, when, and its answer.
#[derive(Debug, Clone)]
pub struct Request {
    pub id: String,
    pub at: Instant,
    pub answer: Answer,
}

type Script = Box<dyn Fn(&str, Instant) -> Answer + Send + Sync>;

/// A subscriber answering by `script` after `took`, under the real retry policy.
pub struct Scripted {
    script: Script,
    took: Duration,
    policy: Policy,
    pub requests: Mutex<Vec<Request>>,
}

impl Scripted {
    pub fn new(
        sub: &Subscriber,
        took: Duration,
        script: impl Fn(&str, Instant) -> Answer + Send + Sync + 'static,
    ) -> Self {
        Scripted {
            script: Box::new(script),
            took,
            policy: Policy::new(sub),
            requests: Mutex::new(Vec::new()),
        }
    }

    /// The ids answered 2xx, in the order the answers came.
    pub fn delivered(&self) -> Vec<String> {
        let requests = self.requests.lock().unwrap();
        requests
            .iter()
            .filter(|r| matches!(r.answer, Answer::Ok))
            .map(|r| r.id.clone())
            .collect()
    }

    /// When each request for `id` was made.
    pub fn attempts_of(&self, id: &str) -> Vec<Instant> {
        let requests = self.requests.lock().unwrap();
        requests.iter().filter(|r| r.id == id).map(|r| r.at).collect()
    }
}

impl Sender for Scripted {
    fn send<'a>(&'a self, id: &'a str, _: &'a [u8]) -> BoxFuture<'a, (Attempt, Duration)> {
        Box::pin(async move {
            let at = Instant::now();
            tokio::time::sleep(self.took).await;
            let answer = (self.script)(id, at);
            self.requests.lock().unwrap().push(Request {
                id: id.to_string(),
                at,
                answer: answer.clone(),
            });
            let attempt = match answer {
                Answer::Ok => Attempt::Delivered,
                Answer::Status(status, retry_after) => Attempt::Failed(Failure {
                    error: format!("answered {status}"),
                    status: Some(status),
                    retry_after,
                    unshapeable: false,
                    echo: false,
                }),
                Answer::Down => Attempt::Failed(Failure::unanswered("connection refused")),
            };
            (attempt, self.took)
        })
    }

    fn verdict(&self, attempts: u32, failure: &Failure) -> Verdict {
        self.policy
            .after_failure(attempts, failure.status, failure.retry_after)
    }

    fn probe_delay(&self, probes: u32) -> Duration {
        self.policy.probe_delay(probes)
    }
}
