//! Backfills: the rows a subscriber's rules cover, as they are now, sent to that
//! subscriber alone, in key order and in step with the live stream.
//!
//! A backfill reads each table in key order, a chunk at a time (one short statement per
//! chunk, no long transaction). Around each read it commits a logical message into the
//! WAL, a low and a high watermark. The pipeline reads them in stream order (see
//! `board`): a row whose key a live change touched between the two is left out (the live
//! event carries a newer row), and the rest go to the subscriber's lane at the high
//! watermark's place in the stream. So no read of a key arrives after a later live change
//! of it, and the last event of every key carries its current row.
//!
//! Progress (the last key done per table) is saved once the chunk's events are settled in
//! the lane (delivered, dead or spilled), which is also what lets the slot's confirmed LSN
//! pass them: a crash, a restart or a standby that takes over reads that chunk again.

pub mod board;
mod catalog;
mod read;

pub use read::{check_where, where_problem};
use read::{consistent_read, read_error, transient, Queries, REREAD_KEYS};

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

pub use board::Board;
use board::Pin;

use crate::config::{Config, TableName};
use crate::lanes::Lane;
use crate::metrics::Metrics;
use crate::pg::PgTarget;
use crate::progress::Progress;
use crate::state::backfills::{Backfill, Status, TableProgress};
use crate::state::State;

/// The prefix of walhook's watermark messages in the WAL.
pub const PREFIX: &str = "walhook.backfill";

/// How often the state database is asked for a backfill to run while none runs.
const POLL: Duration = Duration::from_secs(1);
/// Retries of a failed read or watermark start here and double up to `RETRY_MAX`.
const RETRY_MIN: Duration = Duration::from_millis(500);
const RETRY_MAX: Duration = Duration::from_secs(30);

/// The tables a backfill of `subscriber` reads: `tables` (as "schema.table" or "table")
/// when given, each captured by a rule that takes reads and routes to it, else every
/// such table. An error names what is wrong and how to say it right.
pub fn tables(config: &Config, subscriber: &str, tables: &[String]) -> Result<Vec<String>, String> {
    if !config.subscribers.iter().any(|s| s.name == subscriber) {
        let names: Vec<&str> = config.subscribers.iter().map(|s| s.name.as_str()).collect();
        return Err(format!(
            "no subscriber {subscriber:?} in the config (it has: {})",
            names.join(", ")
        ));
    }
    let routed = crate::mapping::tables_for(config, subscriber);
    if tables.is_empty() {
        if routed.is_empty() {
            return Err(format!(
                "no rule routes events to {subscriber:?} (or every such rule says backfill = false): nothing to backfill"
            ));
        }
        return Ok(routed);
    }
    let mut out = Vec::new();
    for t in tables {
        let name = TableName::parse(t)?.to_string();
        if !routed.contains(&name) {
            return Err(format!(
                "--table {t}: no rule of {name} that takes reads routes to {subscriber:?}; the tables that do: {}",
                if routed.is_empty() { "none".to_string() } else { routed.join(", ") }
            ));
        }
        if !out.contains(&name) {
            out.push(name);
        }
    }
    Ok(out)
}

/// The table a backfill of document `document` for `subscriber` reads (its first source,
/// whose key column's values are the documents' keys), or why it cannot be asked for.
pub fn document_tables(config: &Config, subscriber: &str, document: &str) -> Result<Vec<String>, String> {
    let Some(sub) = config.subscribers.iter().find(|s| s.name == subscriber) else {
        let names: Vec<&str> = config.subscribers.iter().map(|s| s.name.as_str()).collect();
        return Err(format!(
            "no subscriber {subscriber:?} in the config (it has: {})",
            names.join(", ")
        ));
    };
    let Some(doc) = config.documents.iter().find(|d| d.name == document) else {
        let names: Vec<&str> = config.documents.iter().map(|d| d.name.as_str()).collect();
        return Err(format!(
            "--document {document}: no such [[documents]] in the config (it has: {})",
            if names.is_empty() {
                "none".to_string()
            } else {
                names.join(", ")
            }
        ));
    };
    if !sub
        .events
        .iter()
        .any(|p| crate::mapping::pattern_matches(p, &doc.name))
    {
        return Err(format!(
            "--document {document}: subscriber {subscriber:?} does not receive it; add \"{document}\" to its events"
        ));
    }
    let first = doc.sources.first().ok_or("the document has no sources")?;
    Ok(vec![TableName::parse(&first.table)?.to_string()])
}

/// A watermark as written into the WAL: which slot's process wrote it, and for which
/// chunk.
#[derive(Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Watermark {
    pub slot: String,
    /// The writing process's run (chunk ids are its own).
    pub run: String,
    pub chunk: u64,
    /// "low" or "high".
    pub mark: String,
}

impl Watermark {
    /// The watermark in a message's content, when it is this process's.
    pub fn parse(content: &[u8], slot: &str, run: &str) -> Option<Watermark> {
        let w: Watermark = serde_json::from_slice(content).ok()?;
        (w.slot == slot && w.run == run).then_some(w)
    }
}

/// Why a backfill stopped short.
enum Stop {
    /// The process stops (a shutdown or a lost lease); the backfill resumes later.
    Cancelled,
    /// An operator paused or cancelled it.
    Operator(Status),
    /// It cannot go on: it fails with this message.
    Failed(String),
    /// The source or the state database failed for a while: it resumes from its last
    /// saved chunk after a pause.
    Transient(String),
}

/// A chunk handed to the lane, its progress not saved yet.
struct Unsaved {
    lsn: u64,
    table: String,
    progress: TableProgress,
    rows: i64,
}

pub struct Runner {
    pub config: Arc<Config>,
    pub source: PgTarget,
    pub state: Arc<State>,
    pub board: Arc<Board>,
    pub lanes: Vec<Arc<Lane>>,
    pub progress: Arc<Progress>,
    pub metrics: Arc<Metrics>,
}

/// A process-wide counter of chunk ids.
static CHUNKS: AtomicU64 = AtomicU64::new(1);

impl Runner {
    /// Runs backfills one at a time while this process leads, until cancelled.
    pub async fn run(self, cancel: CancellationToken) {
        let mut backoff = RETRY_MIN;
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(POLL) => {}
            }
            if !self.progress.streaming.load(Ordering::Relaxed) {
                continue;
            }
            let next = match self.state.next_backfill().await {
                Ok(next) => next,
                Err(e) => {
                    tracing::warn!(error = %e, "cannot read the backfills from the state database; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                    continue;
                }
            };
            backoff = RETRY_MIN;
            let Some(b) = next else { continue };
            let id = b.id;
            let subscriber = b.subscriber.clone();
            let stop = self.backfill(b, &cancel).await;
            self.set_remaining(&subscriber, 0);
            let ended = match stop {
                Ok(()) => self.state.end_backfill(id, None).await,
                Err(Stop::Failed(why)) => {
                    tracing::error!(backfill = id, %subscriber, error = %why, "backfill failed");
                    self.state.end_backfill(id, Some(&why)).await
                }
                Err(Stop::Operator(status)) => {
                    tracing::info!(backfill = id, %subscriber, status = status.as_str(), "backfill stopped by an operator");
                    Ok(())
                }
                Err(Stop::Transient(why)) => {
                    tracing::warn!(backfill = id, %subscriber, error = %why, retry_in = ?backoff,
                        "backfill interrupted; it resumes from its last saved chunk");
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                    continue;
                }
                Err(Stop::Cancelled) => return,
            };
            if let Err(e) = ended {
                tracing::warn!(backfill = id, error = %e, "cannot record the backfill's end; it resumes from its last saved chunk");
            }
        }
    }

    async fn backfill(&self, b: Backfill, cancel: &CancellationToken) -> Result<(), Stop> {
        let Some(lane) = self
            .config
            .subscribers
            .iter()
            .position(|s| s.name == b.subscriber)
        else {
            return Err(Stop::Failed(format!(
                "subscriber {:?} is not in the config: add it back, or cancel the backfill",
                b.subscriber
            )));
        };
        if let Some(why) = b.where_sql.as_deref().and_then(where_problem) {
            return Err(Stop::Failed(format!(
                "its condition {:?}: {why}",
                b.where_sql.unwrap_or_default()
            )));
        }
        let document = match &b.document {
            None => None,
            Some(name) => {
                let found = (self.config.documents.iter().enumerate())
                    .find(|(_, d)| d.name == *name)
                    .and_then(|(i, d)| Some((i, Arc::<str>::from(d.sources.first()?.key.as_str()))));
                Some(found.ok_or_else(|| {
                    Stop::Failed(format!(
                        "document {name:?} is not in the config: add it back, or cancel the backfill"
                    ))
                })?)
            }
        };
        let conn = self.connect(cancel).await?;
        let mut tables = Vec::new();
        for name in &b.tables {
            let table = TableName::parse(name).map_err(Stop::Failed)?;
            tables.push(catalog::table(&conn.reader, &table, &self.config.source.publication).await?);
        }
        let mut estimate = 0i64;
        for t in &tables {
            if !b.progress.get(&t.name.to_string()).is_some_and(|p| p.done) {
                estimate += catalog::estimate_rows(&conn.reader, &t.name).await;
            }
        }
        let estimate = estimate + b.rows_done;
        if let Err(e) = self.state.start_backfill(b.id, Some(estimate)).await {
            tracing::warn!(backfill = b.id, error = %e, "cannot mark the backfill running");
        }
        tracing::info!(backfill = b.id, subscriber = %b.subscriber, tables = %b.tables.join(", "),
            rows_estimated = estimate, resumed_at = b.rows_done, "backfill started");
        let mut run = Run {
            id: b.id,
            subscriber: b.subscriber.clone(),
            lane,
            done: b.rows_done,
            estimate,
            next_log: next_tenth(b.rows_done, estimate),
            unsaved: VecDeque::new(),
            started: Instant::now(),
            rows_this_run: 0,
            document,
        };
        for t in &tables {
            let key = t.name.to_string();
            let mut progress = b.progress.get(&key).cloned().unwrap_or_default();
            if progress.done {
                continue;
            }
            self.table_chunks(&conn, t, b.where_sql.as_deref(), &mut progress, &mut run, cancel)
                .await?;
            // Every chunk settled: the table is done.
            self.settle(&mut run, true, cancel).await?;
            progress.done = true;
            self.save(&mut run, &key, &progress, 0, cancel).await?;
        }
        tracing::info!(backfill = b.id, subscriber = %b.subscriber, rows = run.done,
            seconds = run.started.elapsed().as_secs_f64().round(), "backfill done");
        Ok(())
    }

    /// Reads `t` chunk by chunk after `progress.after`, each between its watermarks; rows
    /// a live change touched meanwhile are read again (by key) until none is left.
    async fn table_chunks(
        &self,
        conn: &Conns,
        t: &catalog::Table,
        where_sql: Option<&str>,
        progress: &mut TableProgress,
        run: &mut Run,
        cancel: &CancellationToken,
    ) -> Result<(), Stop> {
        let limit = self.config.backfill.chunk_rows;
        let q = Queries::new(t, where_sql, limit);
        let key_at: Vec<usize> = t
            .key
            .iter()
            .filter_map(|(k, _)| t.columns.iter().position(|(c, _)| c == k))
            .collect();
        let table_key = t.name.to_string();
        loop {
            let (sql, args) = match &progress.after {
                None => (q.first.clone(), Vec::new()),
                Some(after) => (q.next.clone(), after.clone()),
            };
            let Some((n, last, mut lsn, mut again)) =
                self.chunk(conn, t, run, &sql, &args, &key_at, cancel).await?
            else {
                return Ok(());
            };
            // Rows left out for a live change: read again, between new watermarks, before
            // the chunk counts as done (a crash reads the whole chunk again).
            let mut round = 0u32;
            while !again.is_empty() {
                round += 1;
                if round > 1 {
                    let pause = Duration::from_millis(10 * u64::from(round.min(100)));
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(Stop::Cancelled),
                        _ = tokio::time::sleep(pause) => {}
                    }
                }
                let mut left = Vec::new();
                for keys in again.chunks(REREAD_KEYS) {
                    let (sql, args) = q.by_keys(keys);
                    if let Some((_, _, at, more)) =
                        self.chunk(conn, t, run, &sql, &args, &key_at, cancel).await?
                    {
                        lsn = at;
                        left.extend(more);
                    }
                }
                again = left;
            }
            progress.after = last;
            progress.rows += n as i64;
            run.unsaved.push_back(Unsaved {
                lsn,
                table: table_key.clone(),
                progress: progress.clone(),
                rows: n as i64,
            });
            run.rows_this_run += n as u64;
            crate::metrics::bump(&self.metrics.backfill_rows, &run.subscriber, n as u64);
            self.settle(run, false, cancel).await?;
            self.pace(run, cancel).await?;
            if n < limit {
                return Ok(());
            }
        }
    }

    /// One chunk: pinned, the low watermark, the rows `sql` reads with `args`, the high
    /// watermark, handed over by the pipeline. None when it read no row; else the rows
    /// read, the last one's key, the LSN it went out at and the keys left out.
    #[allow(clippy::too_many_arguments)]
    async fn chunk(
        &self,
        conn: &Conns,
        t: &catalog::Table,
        run: &Run,
        sql: &str,
        args: &[Option<String>],
        key_at: &[usize],
        cancel: &CancellationToken,
    ) -> Result<Option<(usize, Option<board::TextRow>, u64, Vec<board::TextRow>)>, Stop> {
        let chunk = CHUNKS.fetch_add(1, Ordering::Relaxed);
        self.board.pin(
            chunk,
            Pin {
                backfill: run.id,
                table: t.name.clone(),
                columns: t.columns.clone(),
                key: t.key.iter().map(|(k, _)| k.clone()).collect(),
                lanes: Arc::from(vec![run.lane]),
                document: run.document.clone(),
            },
        );
        let read = async {
            self.mark(&conn.marks, chunk, "low").await?;
            consistent_read(&conn.reader, sql, args, t.columns.len()).await
        };
        let rows = tokio::select! {
            _ = cancel.cancelled() => {
                self.board.unpin(chunk);
                return Err(Stop::Cancelled);
            }
            r = read => r,
        };
        let rows = match rows {
            Ok(Some(rows)) => rows,
            Ok(None) => {
                self.board.unpin(chunk);
                return Err(Stop::Transient(
                    "a transaction committed in the WAL stayed invisible to reads for 2 s \
                     (a commit waiting for a synchronous standby that does not answer?)"
                        .into(),
                ));
            }
            Err(e) => {
                self.board.unpin(chunk);
                let why = read_error(&e, &t.name, conn.role.as_str());
                return Err(if transient(&e) {
                    Stop::Transient(why)
                } else {
                    Stop::Failed(why)
                });
            }
        };
        if rows.is_empty() {
            self.board.unpin(chunk);
            return Ok(None);
        }
        let n = rows.len();
        let last = rows
            .last()
            .map(|r| key_at.iter().map(|&i| r[i].clone()).collect());
        let read_at = crate::decode::time::pg_micros_to_rfc3339(
            crate::progress::unix_micros() - crate::progress::PG_EPOCH_UNIX_MICROS,
        );
        self.board.fill(chunk, rows, read_at);
        if let Err(e) = self.mark(&conn.marks, chunk, "high").await {
            self.board.unpin(chunk);
            let why = format!(
                "cannot write a watermark into the WAL: {}",
                crate::pg::describe(&e)
            );
            return Err(if transient(&e) {
                Stop::Transient(why)
            } else {
                Stop::Failed(why)
            });
        }
        let (lsn, again) = self.handed(chunk, cancel).await?;
        tracing::debug!(backfill = run.id, table = %t.name, chunk, rows = n, after = ?last,
            left_out = again.len(), lsn = %crate::event::format_lsn(lsn), "backfill chunk handed over");
        Ok(Some((n, last, lsn, again)))
    }

    /// Waits until the pipeline handed chunk `id` over: its LSN and the keys left out.
    async fn handed(&self, id: u64, cancel: &CancellationToken) -> Result<(u64, Vec<board::TextRow>), Stop> {
        loop {
            let woken = self.board.wake.notified();
            if let Some(h) = self.board.handed(id) {
                return Ok(h);
            }
            tokio::select! {
                _ = cancel.cancelled() => {
                    self.board.unpin(id);
                    return Err(Stop::Cancelled);
                }
                _ = woken => {}
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
    }

    /// Saves the progress of every chunk whose events the lane settled; with `all`,
    /// waits until every one did.
    async fn settle(&self, run: &mut Run, all: bool, cancel: &CancellationToken) -> Result<(), Stop> {
        loop {
            while let Some(u) = run.unsaved.front() {
                let settled = self
                    .lanes
                    .get(run.lane)
                    .is_none_or(|lane| lane.low().is_none_or(|low| low.lsn > u.lsn));
                if !settled {
                    break;
                }
                let u = run.unsaved.pop_front().expect("front");
                self.save(run, &u.table, &u.progress, u.rows, cancel).await?;
            }
            if !all || run.unsaved.is_empty() {
                return Ok(());
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(Stop::Cancelled),
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
            }
        }
    }

    /// Saves one table's progress and `rows` more done; stops when an operator paused or
    /// cancelled the backfill meanwhile.
    async fn save(
        &self,
        run: &mut Run,
        table: &str,
        progress: &TableProgress,
        rows: i64,
        cancel: &CancellationToken,
    ) -> Result<(), Stop> {
        let mut backoff = RETRY_MIN;
        let status = loop {
            match self
                .state
                .save_backfill_progress(run.id, table, progress, rows)
                .await
            {
                Ok(status) => break status,
                Err(e) => {
                    tracing::warn!(backfill = run.id, error = %e, "cannot save the backfill's progress; retrying");
                    tokio::select! {
                        _ = cancel.cancelled() => return Err(Stop::Cancelled),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RETRY_MAX);
                }
            }
        };
        run.done += rows;
        self.set_remaining(&run.subscriber, (run.estimate - run.done).max(0) as u64);
        if run.estimate > 0 && run.done >= run.next_log {
            let rate = run.rows_this_run as f64 / run.started.elapsed().as_secs_f64().max(0.001);
            tracing::info!(backfill = run.id, subscriber = %run.subscriber, rows = run.done, of = run.estimate,
                percent = (run.done * 100 / run.estimate.max(1)).min(100), rows_per_second = rate.round(),
                "backfill progress");
            run.next_log = next_tenth(run.done, run.estimate);
        }
        match status {
            Status::Paused | Status::Cancelled => Err(Stop::Operator(status)),
            _ => Ok(()),
        }
    }

    /// Keeps to `backfill.rows_per_second`.
    async fn pace(&self, run: &Run, cancel: &CancellationToken) -> Result<(), Stop> {
        let rate = self.config.backfill.rows_per_second;
        if rate == 0 {
            return Ok(());
        }
        let due = run.started + Duration::from_secs_f64(run.rows_this_run as f64 / rate as f64);
        tokio::select! {
            _ = cancel.cancelled() => Err(Stop::Cancelled),
            _ = tokio::time::sleep_until(due.into()) => Ok(()),
        }
    }

    fn set_remaining(&self, subscriber: &str, n: u64) {
        self.metrics
            .backfill_remaining
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(subscriber.to_string(), n);
    }

    /// Commits a watermark into the WAL, flushed at once (the stream sees it without
    /// waiting for the WAL writer).
    async fn mark(&self, marks: &Client, chunk: u64, mark: &str) -> Result<(), tokio_postgres::Error> {
        let content = serde_json::to_string(&Watermark {
            slot: self.config.source.slot.clone(),
            run: self.board.run.clone(),
            chunk,
            mark: mark.to_string(),
        })
        .unwrap_or_default();
        marks
            .batch_execute(&format!(
                "BEGIN; SET LOCAL synchronous_commit = local; \
                 SELECT pg_logical_emit_message(true, '{PREFIX}', '{}'); COMMIT",
                content.replace('\'', "''")
            ))
            .await
    }

    async fn connect(&self, cancel: &CancellationToken) -> Result<Conns, Stop> {
        let mut backoff = RETRY_MIN;
        loop {
            let open = async {
                let reader = self.source.connect("backfill").await?;
                // A backfill only reads: its filters cannot write, whatever they say.
                // Values as the stream prints them (the session settings walhook pins).
                let pinned: Vec<String> = crate::source::PINNED_SETTINGS
                    .iter()
                    .map(|(k, v)| format!("SET {k} = '{v}'"))
                    .collect();
                reader
                    .batch_execute(&format!(
                        "{}; SET default_transaction_read_only = on; SET statement_timeout = '10min'",
                        pinned.join("; ")
                    ))
                    .await?;
                let role: String = reader.query_one("SELECT current_user::text", &[]).await?.get(0);
                let marks = self.source.connect("backfill watermarks").await?;
                Ok::<_, tokio_postgres::Error>(Conns { reader, marks, role })
            };
            tokio::select! {
                _ = cancel.cancelled() => return Err(Stop::Cancelled),
                r = open => match r {
                    Ok(c) => return Ok(c),
                    Err(e) => {
                        tracing::warn!(error = %crate::pg::describe(&e), retry_in = ?backoff,
                            "backfill cannot connect to the source; retrying");
                    }
                },
            }
            tokio::select! {
                _ = cancel.cancelled() => return Err(Stop::Cancelled),
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RETRY_MAX);
        }
    }
}

/// A running backfill's figures.
struct Run {
    id: i64,
    subscriber: String,
    lane: usize,
    done: i64,
    estimate: i64,
    next_log: i64,
    unsaved: VecDeque<Unsaved>,
    started: Instant,
    rows_this_run: u64,
    /// For a backfill of a document: the document and its first source's key column.
    document: Option<(usize, Arc<str>)>,
}

struct Conns {
    /// Reads the chunks (read-only).
    reader: Client,
    /// Writes the watermarks.
    marks: Client,
    /// walhook's role on the source, for fixes.
    role: String,
}

/// The next multiple of a tenth of `estimate` past `done`.
fn next_tenth(done: i64, estimate: i64) -> i64 {
    let tenth = (estimate / 10).max(1);
    (done / tenth + 1) * tenth
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_watermark_is_this_processs_only() {
        let w = Watermark {
            slot: "walhook".into(),
            run: "r1".into(),
            chunk: 4,
            mark: "low".into(),
        };
        let bytes = serde_json::to_vec(&w).unwrap();
        assert_eq!(Watermark::parse(&bytes, "walhook", "r1"), Some(w));
        assert_eq!(Watermark::parse(&bytes, "walhook", "r2"), None);
        assert_eq!(Watermark::parse(&bytes, "other", "r1"), None);
        assert_eq!(Watermark::parse(b"not json", "walhook", "r1"), None);
    }

    #[test]
    fn a_condition_stays_one_condition() {
        assert_eq!(
            where_problem("status = 'active' AND (price > 10 OR stock < 5)"),
            None
        );
        assert_eq!(
            where_problem("title = 'it''s; -- (fine)' AND \"odd)name\" > 1"),
            None
        );
        for bad in [
            "true) --",
            "1=1) OR (1=1",
            "true; DROP TABLE x",
            "a /* b */",
            "(a",
            "'open",
            "$1 > 0",
        ] {
            assert!(where_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn progress_is_logged_every_tenth() {
        assert_eq!(next_tenth(0, 1000), 100);
        assert_eq!(next_tenth(150, 1000), 200);
        assert_eq!(next_tenth(0, 5), 1);
        assert_eq!(read::where_clause(&[]), "");
        assert_eq!(
            read::where_clause(&["(a)".into(), "(b)".into()]),
            "WHERE (a) AND (b)"
        );
    }
}
