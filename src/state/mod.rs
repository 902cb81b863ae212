//! State: the spill log, dead letters and per-lane watermarks, in PostgreSQL (schema
//! `walhook`, in the source database unless `state.url` names another).
//!
//! The healthy path writes almost nothing here: one small upsert of every lane's
//! watermark every `state.watermark_interval`. Spill writes are batched (one `unnest`
//! insert per batch), and every multi-row change is one statement, so it is atomic even
//! though all callers share one pipelined connection. A dropped connection is reopened on
//! the next call; callers retry with backoff and never treat a failed write as done.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::RwLock;
use tokio_postgres::Client;

use crate::event::{Event, Mark, Pos};
use crate::pg::PgError;

pub mod backfills;
pub mod check;
mod chunks;
pub mod deliveries;
mod frame;
pub mod lease;
pub mod subscribers;

/// Migrations, applied in order at start; the version is the index + 1.
const MIGRATIONS: &[&str] = &[
    include_str!("../../sql/001_init.sql"),
    include_str!("../../sql/002_spill_chunks.sql"),
    include_str!("../../sql/003_subscribers.sql"),
    include_str!("../../sql/004_leases.sql"),
    include_str!("../../sql/005_attempt_history.sql"),
    include_str!("../../sql/006_prev_keys.sql"),
    include_str!("../../sql/007_lane_marks.sql"),
    include_str!("../../sql/008_backfills.sql"),
    include_str!("../../sql/009_backfill_documents.sql"),
    include_str!("../../sql/010_dead_letter_pages.sql"),
    include_str!("../../sql/011_chunk_compression.sql"),
    include_str!("../../sql/012_chunk_frames.sql"),
];

/// A state database error. Each keeps PostgreSQL's message, SQLSTATE and detail (see
/// `pg::PgError`): they reach logs and admin API answers, where "db error" named nothing.
#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot reach the state database: {0}")]
    Connect(#[source] PgError),
    #[error("state database query failed: {0}")]
    Query(#[source] PgError),
    #[error("state.url: {0}")]
    Url(String),
    #[error("this walhook lost the slot's lease and stopped; a standby takes over: list what is left and ask the one that leads")]
    Fenced,
    #[error("the state schema is at version {current}, newer than this walhook knows ({known}): a newer walhook ran on this state database; run that version (or newer) instead")]
    Newer { current: i32, known: i32 },
    #[error("cannot spill these events as a chunk: {0}")]
    Frame(String),
    #[error("chunk {chunk} of subscriber {subscriber:?} in walhook.spill_chunks cannot be read: {why}; its events wait until a walhook that can read it runs (the version that wrote it, or newer); deleting the row drops them")]
    Damaged {
        subscriber: String,
        chunk: i64,
        why: String,
    },
}

impl From<tokio_postgres::Error> for StateError {
    fn from(e: tokio_postgres::Error) -> Self {
        StateError::Query(PgError(e))
    }
}

/// A spilled event read back for delivery.
#[derive(Debug, Clone)]
pub struct Spilled {
    pub pos: Pos,
    pub id: String,
    pub event_type: String,
    pub key: String,
    /// The row's key before this change, when the change moved it (see `Event`).
    pub prev_key: Option<String>,
    pub body: bytes::Bytes,
    pub attempts: i32,
}

/// One failed delivery attempt, as kept in a spilled event's or a dead letter's history
/// (the last 20; the answer's excerpt is in `error`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AttemptLog {
    /// When it was sent (RFC 3339, UTC).
    pub at: String,
    /// The status answered; none when no answer came.
    pub status: Option<u16>,
    /// How long it took, in milliseconds.
    pub ms: u64,
    pub error: String,
}

/// A history as the JSON array stored.
pub fn history_json(history: &[AttemptLog]) -> String {
    serde_json::to_string(history).unwrap_or_else(|_| "[]".into())
}

/// The result of one delivery attempt of a spilled event.
#[derive(Debug, Clone)]
pub enum SpillOutcome {
    Delivered,
    Retry {
        attempts: i32,
        after: Duration,
        /// The failed attempt (its error is the row's last error), added to the history.
        attempt: AttemptLog,
    },
    Dead {
        attempts: i32,
        /// The attempt that ended it (its error is the reason), added to the history.
        attempt: AttemptLog,
    },
}

pub struct State {
    url: String,
    slot: String,
    client: RwLock<Arc<Client>>,
    /// Rows spilled since the spill log's statistics were last refreshed.
    unanalyzed: AtomicU64,
    /// Refresh them once this many new rows arrived; doubles after every refresh.
    analyze_after: AtomicU64,
    analyzing: AtomicBool,
    /// Bytes of bodies moving to or from the state database now, as permits (`IO_BUDGET`).
    io: tokio::sync::Semaphore,
}

/// Refresh the spill log's planner statistics after this many new rows, so a log that
/// grows from empty within seconds is not planned as if it were empty. The threshold
/// doubles after each refresh (a growing log needs fewer of them) up to the maximum, and
/// starts over when a lane's log drains.
const ANALYZE_AFTER_ROWS: u64 = 5_000;
const ANALYZE_AFTER_ROWS_MAX: u64 = 1_000_000;

/// Bodies of more than this many bytes in one statement are written on a connection of
/// their own, closed after it, and reading more than this renews the shared connection:
/// the driver keeps its buffers as large as the largest message it ever moved (the
/// statement is encoded into one, then copied into another to be sent), for as long as
/// its connection lives.
const LARGE_IO: usize = 16 << 20;

/// Bodies read in one round of `due_heads` at most (one larger head is read alone), and
/// at least when the I/O budget is short (a round then waits for that much).
const ROUND_BYTES: usize = 16 << 20;
const ROUND_BYTES_LEAST: usize = 1 << 20;

/// Bytes of bodies moving to or from the state database at once, over every lane: a
/// statement is encoded whole, then copied to be sent, and lanes spilling at once queue
/// theirs on one connection, so fifty lanes fanning out a burst wrote 50 chunks of up to
/// 8 MiB at a time. A statement waits for its bodies' share (all of it, when larger).
const IO_BUDGET: usize = 32 << 20;
/// Bytes of bodies a chunk holds at most, unless one event is larger: the lanes write
/// their spill log in statements of this size, and turning chunks into rows takes this
/// much at a time. PostgreSQL takes at most 1 GB in one message and in one array value,
/// and the driver builds a statement in memory, twice, while it is sent, so this is what
/// a spilling lane's memory grows by (8 MiB: a few hundred events of 8 kB a write).
pub const CHUNK_BYTES: usize = 8 << 20;

impl State {
    /// Connects, creates the schema and runs migrations.
    pub async fn connect(url: &str, slot: &str) -> Result<State, StateError> {
        let client = Arc::new(open(url).await?);
        migrate(&client).await?;
        Ok(State {
            url: url.to_string(),
            slot: slot.to_string(),
            client: RwLock::new(client),
            unanalyzed: AtomicU64::new(0),
            analyze_after: AtomicU64::new(ANALYZE_AFTER_ROWS),
            analyzing: AtomicBool::new(false),
            io: tokio::sync::Semaphore::new(IO_BUDGET),
        })
    }

    async fn client(&self) -> Result<Arc<Client>, StateError> {
        let c = self.client.read().await.clone();
        if !c.is_closed() {
            return Ok(c);
        }
        let mut w = self.client.write().await;
        if w.is_closed() {
            *w = Arc::new(open(&self.url).await?);
            tracing::info!("reconnected to the state database");
        }
        Ok(w.clone())
    }

    /// Waits until `bytes` of bodies may move to or from the state database (see
    /// `IO_BUDGET`); they may for as long as the permit is held.
    async fn io_permit(&self, bytes: usize) -> tokio::sync::SemaphorePermit<'_> {
        let n = bytes.clamp(1, IO_BUDGET) as u32;
        // The semaphore is never closed.
        self.io
            .acquire_many(n)
            .await
            .expect("the state I/O budget is never closed")
    }

    /// A share of the I/O budget for a read that can be made smaller: up to `most` bytes,
    /// or what is free now when that is less, but at least `least` (waiting for that).
    /// Returns the permit and its bytes, which the read must stay within.
    async fn io_share(&self, most: usize, least: usize) -> (tokio::sync::SemaphorePermit<'_>, usize) {
        let bytes = self.io.available_permits().clamp(least, most);
        (self.io_permit(bytes).await, bytes)
    }

    /// The shared connection, or for a statement carrying `bytes` bytes of bodies past
    /// `LARGE_IO`, a connection of its own, closed when the statement is done.
    async fn client_for(&self, bytes: usize) -> Result<Arc<Client>, StateError> {
        if bytes > LARGE_IO {
            return Ok(Arc::new(open(&self.url).await?));
        }
        self.client().await
    }

    /// After `client` read `bytes` bytes of bodies: past `LARGE_IO`, the shared connection
    /// is replaced by a new one (the old one closes once its last user is done with it).
    async fn after_read(&self, client: &Arc<Client>, bytes: usize) {
        if bytes <= LARGE_IO {
            return;
        }
        let mut shared = self.client.write().await;
        if Arc::ptr_eq(&shared, client) {
            match open(&self.url).await {
                Ok(c) => *shared = Arc::new(c),
                Err(e) => tracing::debug!(error = %e, "cannot renew the state connection after a large read"),
            }
        }
    }

    /// True when the state database answers.
    pub async fn ping(&self) -> bool {
        match self.client().await {
            Ok(c) => c.simple_query("SELECT 1").await.is_ok(),
            Err(_) => false,
        }
    }

    /// Every lane's saved mark (see `Mark`), by subscriber.
    pub async fn load_watermarks(&self) -> Result<HashMap<String, Mark>, StateError> {
        let c = self.client().await?;
        let rows = c
            .query(
                "SELECT subscriber, watermark_lsn, watermark_seq, high_lsn, high_seq, pending
                 FROM walhook.lanes WHERE slot = $1",
                &[&self.slot],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| {
                let pos = |lsn: i64, seq: i64| Pos {
                    lsn: lsn as u64,
                    seq: seq as u64,
                };
                let low = pos(r.get(1), r.get(2));
                let high = match (r.get::<_, Option<i64>>(3), r.get::<_, Option<i64>>(4)) {
                    (Some(lsn), Some(seq)) => Some(pos(lsn, seq)),
                    _ => None,
                };
                let mark = high
                    .and_then(|high| {
                        let pending = decode_positions(r.get::<_, Option<&[u8]>>(5).unwrap_or_default())?;
                        mark_from_parts(low, high, pending)
                    })
                    // Nothing (or nothing readable) past the watermark: it alone.
                    .unwrap_or_else(|| Mark::at(low));
                (r.get::<_, String>(0), mark)
            })
            .collect())
    }

    /// Upserts every lane's mark in one statement. A row only moves forward (its
    /// watermark, then its high end), so a late write of an older mark changes nothing.
    pub async fn save_watermarks(&self, marks: &[(String, Mark)]) -> Result<(), StateError> {
        if marks.is_empty() {
            return Ok(());
        }
        let subs: Vec<&str> = marks.iter().map(|(s, _)| s.as_str()).collect();
        let lsns: Vec<i64> = marks.iter().map(|(_, m)| m.low.lsn as i64).collect();
        let seqs: Vec<i64> = marks.iter().map(|(_, m)| m.low.seq as i64).collect();
        let high_lsns: Vec<i64> = marks.iter().map(|(_, m)| m.high.lsn as i64).collect();
        let high_seqs: Vec<i64> = marks.iter().map(|(_, m)| m.high.seq as i64).collect();
        let pending: Vec<Vec<u8>> = marks.iter().map(|(_, m)| encode_positions(&m.pending)).collect();
        self.client()
            .await?
            .execute(
                "INSERT INTO walhook.lanes AS l (slot, subscriber, watermark_lsn, watermark_seq, high_lsn, high_seq, pending)
                 SELECT $1, s, wl, ws, hl, hs, p
                 FROM unnest($2::text[], $3::bigint[], $4::bigint[], $5::bigint[], $6::bigint[], $7::bytea[])
                   AS u(s, wl, ws, hl, hs, p)
                 ON CONFLICT (slot, subscriber) DO UPDATE
                 SET watermark_lsn = EXCLUDED.watermark_lsn, watermark_seq = EXCLUDED.watermark_seq,
                     high_lsn = EXCLUDED.high_lsn, high_seq = EXCLUDED.high_seq, pending = EXCLUDED.pending,
                     updated_at = now()
                 WHERE (l.watermark_lsn, l.watermark_seq,
                        coalesce(l.high_lsn, l.watermark_lsn), coalesce(l.high_seq, l.watermark_seq))
                     < (EXCLUDED.watermark_lsn, EXCLUDED.watermark_seq, EXCLUDED.high_lsn, EXCLUDED.high_seq)",
                &[&self.slot, &subs, &lsns, &seqs, &high_lsns, &high_seqs, &pending],
            )
            .await?;
        Ok(())
    }

    /// Appends events to a lane's spill log in one statement. Rows already there (a replay
    /// after a crash) are left as they are.
    pub async fn spill(&self, subscriber: &str, events: &[SpillRow<'_>]) -> Result<(), StateError> {
        if events.is_empty() {
            return Ok(());
        }
        let c = Columns::of(events.iter().map(|e| e.event));
        let attempts: Vec<i32> = events.iter().map(|e| e.attempts).collect();
        let delays: Vec<i64> = events.iter().map(|e| e.retry_after.as_millis() as i64).collect();
        let histories: Vec<String> = events.iter().map(|e| history_json(e.history)).collect();
        let bytes = c.bytes;
        let _io = self.io_permit(bytes).await;
        self.client_for(bytes)
            .await?
            .execute(
                "INSERT INTO walhook.spill
                   (slot, subscriber, lsn, seq, event_id, event_type, ordering_key, body, attempts, next_attempt_at,
                    history, prev_key)
                 SELECT $1, $2, l, q, i, t, k, b, a, now() + d * interval '1 millisecond', h::jsonb, p
                 FROM unnest($3::bigint[], $4::bigint[], $5::text[], $6::text[], $7::text[], $8::bytea[],
                             $9::int[], $10::bigint[], $11::text[], $12::text[]) AS u(l, q, i, t, k, b, a, d, h, p)
                 ON CONFLICT DO NOTHING",
                &[
                    &self.slot, &subscriber, &c.lsns, &c.seqs, &c.ids, &c.types, &c.keys, &c.bodies, &attempts,
                    &delays, &histories, &c.prev_keys,
                ],
            )
            .await?;
        Ok(())
    }

    /// Counts newly spilled rows and refreshes the log's statistics once enough arrived,
    /// in the background and on a connection of its own, so spill traffic never queues
    /// behind an ANALYZE.
    pub fn note_spilled(self: &Arc<Self>, rows: usize) {
        let total = self.unanalyzed.fetch_add(rows as u64, Ordering::Relaxed) + rows as u64;
        let after = self.analyze_after.load(Ordering::Relaxed);
        if total < after || self.analyzing.swap(true, Ordering::AcqRel) {
            return;
        }
        self.unanalyzed.store(0, Ordering::Relaxed);
        self.analyze_after
            .store((after * 2).min(ANALYZE_AFTER_ROWS_MAX), Ordering::Relaxed);
        let state = self.clone();
        tokio::spawn(async move {
            match open(&state.url).await {
                Ok(c) => {
                    if let Err(e) = c.batch_execute("ANALYZE walhook.spill").await {
                        tracing::debug!(error = %PgError(e), "ANALYZE walhook.spill failed");
                    }
                }
                Err(e) => tracing::debug!(error = %e, "cannot connect to ANALYZE walhook.spill"),
            }
            state.analyzing.store(false, Ordering::Release);
        });
    }

    /// A lane's log drained: the next spill starts from an empty log again.
    pub fn note_drained(&self) {
        self.analyze_after.store(ANALYZE_AFTER_ROWS, Ordering::Relaxed);
    }

    /// Up to `limit` spilled events that are due now and are the oldest of their key, in
    /// position order, with at most `ROUND_BYTES` of bodies, fewer when other reads and
    /// writes hold the I/O budget (but at least one event).
    pub async fn due_heads(&self, subscriber: &str, limit: i64) -> Result<Vec<Spilled>, StateError> {
        let (_io, round) = self.io_share(ROUND_BYTES, ROUND_BYTES_LEAST).await;
        let round = i64::try_from(round).unwrap_or(i64::MAX);
        let client = self.client().await?;
        let rows = client
            .query(
                // The oldest row of its key; for a row that moved its row to another key
                // (`prev_key`), also of that key; and no older row that moved a row
                // from or to one of its keys. At most `round` bytes of bodies (and the
                // first head whatever its size).
                "SELECT lsn, seq, event_id, event_type, ordering_key, body, attempts, prev_key FROM (
                   SELECT h.*, sum(octet_length(h.body)) OVER (ORDER BY h.lsn, h.seq) - octet_length(h.body) AS before
                   FROM (
                     SELECT s.lsn, s.seq, s.event_id, s.event_type, s.ordering_key, s.body, s.attempts, s.prev_key
                     FROM walhook.spill s
                     WHERE s.slot = $1 AND s.subscriber = $2 AND s.next_attempt_at <= now()
                       AND (s.lsn, s.seq) = (
                         SELECT p.lsn, p.seq FROM walhook.spill p
                         WHERE p.slot = s.slot AND p.subscriber = s.subscriber AND p.ordering_key = s.ordering_key
                         ORDER BY p.lsn, p.seq LIMIT 1)
                       AND (s.prev_key IS NULL OR NOT EXISTS (
                         SELECT 1 FROM walhook.spill p
                         WHERE p.slot = s.slot AND p.subscriber = s.subscriber AND p.ordering_key = s.prev_key
                           AND (p.lsn, p.seq) < (s.lsn, s.seq)))
                       AND NOT EXISTS (
                         SELECT 1 FROM walhook.spill p
                         WHERE p.slot = s.slot AND p.subscriber = s.subscriber AND p.prev_key IS NOT NULL
                           AND p.prev_key IN (s.ordering_key, s.prev_key) AND (p.lsn, p.seq) < (s.lsn, s.seq))
                     ORDER BY s.lsn, s.seq
                     LIMIT $3) h) w
                 WHERE before < $4
                 ORDER BY lsn, seq",
                &[&self.slot, &subscriber, &limit, &round],
            )
            .await?;
        let heads: Vec<Spilled> = rows
            .iter()
            .map(|r| Spilled {
                pos: Pos {
                    lsn: r.get::<_, i64>(0) as u64,
                    seq: r.get::<_, i64>(1) as u64,
                },
                id: r.get(2),
                event_type: r.get(3),
                key: r.get(4),
                prev_key: r.get(7),
                body: bytes::Bytes::from(r.get::<_, Vec<u8>>(5)),
                attempts: r.get(6),
            })
            .collect();
        drop(rows);
        self.after_read(&client, heads.iter().map(|h| h.body.len()).sum())
            .await;
        Ok(heads)
    }

    /// Which of `subscribers` have events in their spill log (rows or chunks), in one
    /// round trip (an index probe each): a start with 1,000 subscribers asked 1,000 times.
    pub async fn spilled_lanes(
        &self,
        subscribers: &[&str],
    ) -> Result<std::collections::HashSet<String>, StateError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT s FROM unnest($2::text[]) AS s
                 WHERE EXISTS (SELECT 1 FROM walhook.spill WHERE slot = $1 AND subscriber = s)
                    OR EXISTS (SELECT 1 FROM walhook.spill_chunks WHERE slot = $1 AND subscriber = s)",
                &[&self.slot, &subscribers],
            )
            .await?;
        Ok(rows.into_iter().map(|r| r.get(0)).collect())
    }

    /// Whether a lane's spill log has rows or chunks, and the time until the earliest is
    /// due. Both are index lookups (`spill_due`, the chunks' key), however long the log.
    pub async fn backlog(&self, subscriber: &str) -> Result<(bool, Option<Duration>), StateError> {
        let row = self
            .client()
            .await?
            .query_one(
                "SELECT EXTRACT(EPOCH FROM (min(next_attempt_at) - now()))::float8,
                   EXISTS (SELECT 1 FROM walhook.spill_chunks WHERE slot = $1 AND subscriber = $2)
                 FROM walhook.spill WHERE slot = $1 AND subscriber = $2",
                &[&self.slot, &subscriber],
            )
            .await?;
        let wait: Option<f64> = row.get(0);
        if row.get::<_, bool>(1) {
            return Ok((true, Some(Duration::ZERO)));
        }
        Ok((wait.is_some(), wait.map(|s| Duration::from_secs_f64(s.max(0.0)))))
    }

    /// Applies the outcomes of a round of spilled deliveries in one statement: delivered
    /// rows are deleted, retried rows rescheduled, dead rows moved to `dead_letters`.
    pub async fn complete(
        &self,
        subscriber: &str,
        outcomes: &[(Pos, SpillOutcome)],
    ) -> Result<(), StateError> {
        let mut done = (Vec::new(), Vec::new());
        let mut retry = (
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
            Vec::new(),
        );
        let mut dead = (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (pos, outcome) in outcomes {
            let (l, q) = (pos.lsn as i64, pos.seq as i64);
            match outcome {
                SpillOutcome::Delivered => {
                    done.0.push(l);
                    done.1.push(q);
                }
                SpillOutcome::Retry {
                    attempts,
                    after,
                    attempt,
                } => {
                    retry.0.push(l);
                    retry.1.push(q);
                    retry.2.push(*attempts);
                    retry.3.push(after.as_millis() as i64);
                    retry.4.push(attempt.error.as_str());
                    retry.5.push(history_json(std::slice::from_ref(attempt)));
                }
                SpillOutcome::Dead { attempts, attempt } => {
                    dead.0.push(l);
                    dead.1.push(q);
                    dead.2.push(*attempts);
                    dead.3.push(attempt.error.as_str());
                    dead.4.push(history_json(std::slice::from_ref(attempt)));
                }
            }
        }
        self.client()
            .await?
            .execute(
                "WITH done AS (
                   DELETE FROM walhook.spill s USING unnest($3::bigint[], $4::bigint[]) AS u(l, q)
                   WHERE s.slot = $1 AND s.subscriber = $2 AND s.lsn = u.l AND s.seq = u.q),
                 retry AS (
                   UPDATE walhook.spill s
                   SET attempts = u.a, next_attempt_at = now() + u.d * interval '1 millisecond', last_error = u.e,
                       history = walhook.last_attempts(s.history || u.h::jsonb)
                   FROM unnest($5::bigint[], $6::bigint[], $7::int[], $8::bigint[], $9::text[], $10::text[])
                     AS u(l, q, a, d, e, h)
                   WHERE s.slot = $1 AND s.subscriber = $2 AND s.lsn = u.l AND s.seq = u.q),
                 gone AS (
                   DELETE FROM walhook.spill s USING unnest($11::bigint[], $12::bigint[]) AS u(l, q)
                   WHERE s.slot = $1 AND s.subscriber = $2 AND s.lsn = u.l AND s.seq = u.q
                   RETURNING s.*)
                 INSERT INTO walhook.dead_letters
                   (slot, subscriber, lsn, seq, event_id, event_type, ordering_key, body, attempts, reason, history,
                    prev_key)
                 SELECT g.slot, g.subscriber, g.lsn, g.seq, g.event_id, g.event_type, g.ordering_key, g.body, u.a, u.r,
                        walhook.last_attempts(g.history || u.h::jsonb), g.prev_key
                 FROM gone g JOIN unnest($11::bigint[], $12::bigint[], $13::int[], $14::text[], $15::text[])
                   AS u(l, q, a, r, h) ON g.lsn = u.l AND g.seq = u.q
                 ON CONFLICT DO NOTHING",
                &[
                    &self.slot, &subscriber, &done.0, &done.1, &retry.0, &retry.1, &retry.2, &retry.3, &retry.4,
                    &retry.5, &dead.0, &dead.1, &dead.2, &dead.3, &dead.4,
                ],
            )
            .await?;
        Ok(())
    }

    /// Records an event that died in hot mode.
    pub async fn dead_letter(
        &self,
        subscriber: &str,
        event: &Event,
        attempts: i32,
        reason: &str,
        history: &[AttemptLog],
    ) -> Result<(), StateError> {
        self.client_for(event.body.len())
            .await?
            .execute(
                "INSERT INTO walhook.dead_letters
                   (slot, subscriber, lsn, seq, event_id, event_type, ordering_key, body, attempts, reason, history,
                    prev_key)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, walhook.last_attempts($11::text::jsonb), $12)
                 ON CONFLICT DO NOTHING",
                &[
                    &self.slot,
                    &subscriber,
                    &(event.pos.lsn as i64),
                    &(event.pos.seq as i64),
                    &event.id,
                    &event.event_type,
                    &event.key,
                    &&event.body[..],
                    &attempts,
                    &reason,
                    &history_json(history),
                    &event.prev_key,
                ],
            )
            .await?;
        Ok(())
    }
}

/// One event to append to a spill log, with what is known of its attempts so far.
/// What a row made from a chunk had failed before (see `State::restore`).
#[derive(Debug, Clone)]
pub struct Restored {
    pub pos: Pos,
    pub attempts: i32,
    pub retry_after: Duration,
    pub history: Vec<AttemptLog>,
}

/// Events as one array per field, the parameters of statements that write many events
/// at once (`unnest` on the server), and the bytes of their bodies.
struct Columns<'a> {
    lsns: Vec<i64>,
    seqs: Vec<i64>,
    ids: Vec<&'a str>,
    types: Vec<&'a str>,
    keys: Vec<&'a str>,
    prev_keys: Vec<Option<&'a str>>,
    bodies: Vec<&'a [u8]>,
    bytes: usize,
}

impl<'a> Columns<'a> {
    /// lsns, seqs, ids, types, keys, bodies and prev_keys, in that order: the arrays a
    /// chunk's row holds, as its statements take them.
    fn params(&self) -> [&(dyn tokio_postgres::types::ToSql + Sync); 7] {
        [
            &self.lsns,
            &self.seqs,
            &self.ids,
            &self.types,
            &self.keys,
            &self.bodies,
            &self.prev_keys,
        ]
    }

    fn of(events: impl ExactSizeIterator<Item = &'a Event>) -> Self {
        let n = events.len();
        let mut c = Columns {
            lsns: Vec::with_capacity(n),
            seqs: Vec::with_capacity(n),
            ids: Vec::with_capacity(n),
            types: Vec::with_capacity(n),
            keys: Vec::with_capacity(n),
            prev_keys: Vec::with_capacity(n),
            bodies: Vec::with_capacity(n),
            bytes: 0,
        };
        for e in events {
            c.lsns.push(e.pos.lsn as i64);
            c.seqs.push(e.pos.seq as i64);
            c.ids.push(&e.id);
            c.types.push(&e.event_type);
            c.keys.push(&e.key);
            c.prev_keys.push(e.prev_key.as_deref());
            c.bodies.push(&e.body);
            c.bytes += e.body.len();
        }
        c
    }
}

pub struct SpillRow<'a> {
    pub event: &'a Event,
    pub attempts: i32,
    pub retry_after: Duration,
    /// Its failed attempts so far.
    pub history: &'a [AttemptLog],
}

async fn open(url: &str) -> Result<Client, StateError> {
    let target = crate::pg::PgTarget::parse(url).map_err(StateError::Url)?;
    target
        .connect("state database")
        .await
        .map_err(|e| StateError::Connect(PgError(e)))
}

/// Positions as stored in `walhook.lanes.pending`: 16 bytes each, LSN then sequence,
/// big-endian.
fn encode_positions(positions: &[Pos]) -> Vec<u8> {
    let mut out = Vec::with_capacity(positions.len() * 16);
    for p in positions {
        out.extend_from_slice(&p.lsn.to_be_bytes());
        out.extend_from_slice(&p.seq.to_be_bytes());
    }
    out
}

/// Reads `encode_positions`' bytes back; None when they are not whole positions.
fn decode_positions(bytes: &[u8]) -> Option<Vec<Pos>> {
    if bytes.len() % 16 != 0 {
        return None;
    }
    Some(
        bytes
            .chunks_exact(16)
            .map(|c| {
                let (lsn, seq) = c.split_at(8);
                Pos {
                    lsn: u64::from_be_bytes(lsn.try_into().unwrap_or_default()),
                    seq: u64::from_be_bytes(seq.try_into().unwrap_or_default()),
                }
            })
            .collect(),
    )
}

/// A saved mark from its parts, when they make one: the pending events ascending, each in
/// `[low, high)`, `low` the first of them (or `high` when there are none). Anything else
/// (a row written by hand, or damaged) is not trusted past the watermark.
fn mark_from_parts(low: Pos, high: Pos, pending: Vec<Pos>) -> Option<Mark> {
    let ascending = pending.windows(2).all(|w| w[0] < w[1]);
    let inside = pending.iter().all(|p| low <= *p && *p < high);
    let starts = pending.first().map_or(low == high, |first| *first == low);
    (ascending && inside && starts).then_some(Mark { low, high, pending })
}

/// Creates the schema and applies the migrations it lacks. The server's notices about
/// what already exists (`schema "walhook" already exists, skipping`, on every start but
/// the first) are not asked for: they are expected, and would be logged at info.
async fn migrate(client: &Client) -> Result<(), StateError> {
    client
        .batch_execute(
            "SET client_min_messages = warning;
             SELECT pg_advisory_lock(7262917370);
             -- CREATE SCHEMA IF NOT EXISTS would need CREATE on the database even when
             -- the schema is there (a DBA may have made it for walhook's role).
             DO $$ BEGIN IF to_regnamespace('walhook') IS NULL THEN CREATE SCHEMA walhook; END IF; END $$;
             CREATE TABLE IF NOT EXISTS walhook.schema_migrations (
               version integer PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now());",
        )
        .await?;
    let result = async {
        let row = client
            .query_one("SELECT coalesce(max(version), 0) FROM walhook.schema_migrations", &[])
            .await?;
        let current: i32 = row.get(0);
        let known = MIGRATIONS.len() as i32;
        if current > known {
            // Its chunks, marks or columns may be in forms this walhook would misread.
            return Err(StateError::Newer { current, known });
        }
        for (i, sql) in MIGRATIONS.iter().enumerate() {
            let version = i as i32 + 1;
            if version <= current {
                continue;
            }
            client
                .batch_execute(&format!(
                    "BEGIN; {sql}; INSERT INTO walhook.schema_migrations (version) VALUES ({version}); COMMIT;"
                ))
                .await?;
            tracing::info!(version, "applied state migration");
        }
        Ok::<_, StateError>(())
    }
    .await;
    let _ = client
        .batch_execute("SELECT pg_advisory_unlock(7262917370); RESET client_min_messages;")
        .await;
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_pending_positions_read_back_and_bad_ones_are_not_trusted() {
        let p = |lsn, seq| Pos { lsn, seq };
        let list = vec![p(10, 0), p(10, 1 << 16), p(u64::MAX, u64::MAX - 1)];
        let bytes = encode_positions(&list);
        assert_eq!(bytes.len(), 48);
        assert_eq!(decode_positions(&bytes), Some(list));
        assert_eq!(decode_positions(&[]), Some(Vec::new()));
        assert_eq!(decode_positions(&bytes[..47]), None);

        let good = Mark {
            low: p(10, 0),
            high: p(20, 0),
            pending: vec![p(10, 0), p(12, 0)],
        };
        assert_eq!(
            mark_from_parts(good.low, good.high, good.pending.clone()),
            Some(good)
        );
        assert_eq!(
            mark_from_parts(p(20, 0), p(20, 0), vec![]),
            Some(Mark::at(p(20, 0)))
        );
        // Out of order, outside [low, high), or not starting at low: only the watermark.
        for (low, high, pending) in [
            (p(10, 0), p(20, 0), vec![p(12, 0), p(10, 0)]),
            (p(10, 0), p(20, 0), vec![p(10, 0), p(20, 0)]),
            (p(10, 0), p(20, 0), vec![p(11, 0)]),
            (p(10, 0), p(20, 0), vec![]),
            (p(20, 0), p(10, 0), vec![]),
        ] {
            assert_eq!(mark_from_parts(low, high, pending), None);
        }
    }
}
