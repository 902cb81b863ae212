//! The pipeline: reads the replication stream, decodes, maps, hands events to the lanes,
//! and confirms progress to the slot.
//!
//! **What is confirmed.** pgoutput (protocol 1) sends each transaction whole, at commit,
//! opened by a Begin that carries its commit LSN `C`. After a restart the server skips a
//! transaction only when `C` is below the slot's confirmed flush LSN. So the LSN
//! confirmed here is the minimum of:
//! - the lowest commit LSN of any event some lane still holds pending (not delivered,
//!   dead, or durably spilled), so that transaction is sent again;
//! - the commit LSN of the transaction being received, if one is open;
//! - the *frontier*: the end LSN of the last fully handled transaction, or the LSN of a
//!   keepalive received while no transaction was open (PG15 sends it only after every
//!   earlier transaction). Keepalives are what move an idle or filtered slot forward.
//!
//! Events are handed to the lanes synchronously, in stream order, so when a message is
//! processed every earlier one is accounted for in some lane.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::backfill::{self, Board};
use crate::config::{quote_ident, Config, Op, TableName};
use crate::decode::{self, Cell, LogicalMessage, TypeRegistry};
use crate::event::{format_lsn, EventRef, Pos};
use crate::lanes::Lane;
use crate::mapping::coalesce::{Closed, Coalescer, CLOSED};
use crate::mapping::{Change, ColValue, Mapper, Routed, Row, RuleFailure, TxMeta};
use crate::metrics::Metrics;
use crate::pg::PgTarget;
use crate::progress::{monotonic_ms, unix_micros, Progress, PG_EPOCH_UNIX_MICROS};
use crate::source::{refusal, setup, ReplConn, ReplMessage, SourceError};

mod confirm;
mod documents;
mod lag;
mod reads;
mod relations;
mod ticker;
mod windows;

use confirm::{silence_limit, ClockOffset};
pub use lag::lag_watch;
use relations::tell_unmatched;
pub use ticker::{tick_interval, ticker};

const RECONNECT_MIN: Duration = Duration::from_millis(500);
const RECONNECT_MAX: Duration = Duration::from_secs(30);
/// Retry interval while the slot is still held by another process.
const SLOT_BUSY_RETRY: Duration = Duration::from_millis(500);
/// The longest a lookup of column types may take.
const CATALOG_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the confirmed LSN is recomputed and sent when it moved.
const CONFIRM_TICK: Duration = Duration::from_millis(250);

struct Rel {
    /// The table whose rules take its changes: the relation itself, or the partitioned
    /// table it is a partition of (when its changes are published under its own name).
    table: TableName,
    /// The relation as the stream names it, and its partitioned ancestors (nearest first)
    /// once looked up.
    own: TableName,
    ancestors: Option<Vec<TableName>>,
    /// Name, type OID, and whether the column is part of the replica identity.
    columns: Vec<(Arc<str>, u32, bool)>,
    /// Columns of int8 or numeric type (`Change::exact`).
    exact: Vec<Arc<str>>,
    /// Columns of json or jsonb type (`Change::json`).
    json: Vec<Arc<str>>,
    watched: bool,
    /// Rules of `table` whose key names a column this relation lacks.
    keyless_rules: Vec<String>,
    /// A change no rule takes was logged for this relation.
    unmatched_told: bool,
}

pub struct Pipeline {
    config: Arc<Config>,
    source: PgTarget,
    /// For type lookups; None after one failed (the next opens a new connection).
    catalog: Option<Client>,
    mapper: Mapper,
    lanes: Vec<Arc<Lane>>,
    types: TypeRegistry,
    metrics: Arc<Metrics>,
    progress: Arc<Progress>,
    rels: HashMap<u32, Rel>,
    tx: Option<(TxMeta, u32)>,
    frontier: u64,
    received: u64,
    /// The last LSN confirmed to the slot (for the message when the slot is gone).
    last_confirmed: u64,
    /// This host's clock minus the server's, so lags are measured on one clock.
    clock: ClockOffset,
    /// Per rule: when its last failure was logged, and failures since then unlogged.
    failure_log: HashMap<String, (Instant, u64)>,
    coalescer: Coalescer,
    /// Commit time of the open transaction (PostgreSQL microseconds).
    tx_time: i64,
    /// Coalesced events handed to lanes that may still be pending there, by position:
    /// the commit LSN of their window's first change (nothing at or after it may be
    /// confirmed while one is pending: their changes are not in any lane), and routes.
    held: BTreeMap<Pos, (u64, Arc<[usize]>)>,
    /// Commit LSNs of the first and last change of coalesced events handed over: the
    /// confirmed LSN never falls inside one, so a replay forms the whole window again
    /// (the same id, body and position) rather than a part of it.
    spans: std::collections::BTreeSet<(u64, u64)>,
    /// New rules from a config reload, applied between transactions.
    swaps: Option<tokio::sync::mpsc::Receiver<Swap>>,
    /// The position of the last coalesced event handed over.
    last_closed: Pos,
    /// Backfill chunks between their watermarks (see `backfill::board`).
    board: Option<Arc<Board>>,
    /// Open document windows, and what reads their documents (None without documents).
    windows: crate::mapping::documents::Windows,
    maker: Option<crate::documents::Maker>,
    /// A change without its document's key was logged.
    keys_unknown_told: bool,
}

/// A reloaded config whose rules (only) changed, with its compiled mapper.
pub struct Swap {
    pub config: Arc<Config>,
    pub mapper: Mapper,
}

/// A rule's run-time failures are logged at most this often (each one is counted).
const FAILURE_LOG_EVERY: Duration = Duration::from_secs(10);

impl Pipeline {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        config: Arc<Config>,
        source: PgTarget,
        catalog: Client,
        mapper: Mapper,
        lanes: Vec<Arc<Lane>>,
        types: TypeRegistry,
        metrics: Arc<Metrics>,
        progress: Arc<Progress>,
    ) -> Pipeline {
        let maker = (!mapper.documents().is_empty()).then(|| {
            crate::documents::Maker::new(source.clone(), mapper.documents(), types.clone(), metrics.clone())
        });
        Pipeline {
            windows: Default::default(),
            maker,
            keys_unknown_told: false,
            config,
            source,
            catalog: Some(catalog),
            mapper,
            lanes,
            types,
            metrics,
            progress,
            rels: HashMap::new(),
            failure_log: HashMap::new(),
            coalescer: Coalescer::default(),
            tx_time: 0,
            held: BTreeMap::new(),
            spans: Default::default(),
            swaps: None,
            last_closed: Pos::ZERO,
            board: None,
            tx: None,
            frontier: 0,
            received: 0,
            last_confirmed: 0,
            clock: ClockOffset::new(),
        }
    }

    /// Takes backfill chunks from `board` at their watermarks.
    pub fn with_board(mut self, board: Arc<Board>) -> Pipeline {
        self.board = Some(board);
        self
    }

    /// Takes new rules from `swaps` (config reloads) between transactions.
    pub fn with_swaps(mut self, swaps: tokio::sync::mpsc::Receiver<Swap>) -> Pipeline {
        self.swaps = Some(swaps);
        self
    }

    /// Streams until cancelled, reconnecting with capped backoff. Returns an error only
    /// for problems reconnecting cannot fix.
    pub async fn run(mut self, cancel: CancellationToken) -> Result<(), SourceError> {
        let mut backoff = RECONNECT_MIN;
        let mut slot_busy = false;
        loop {
            let started = Instant::now();
            let result = self.stream(&cancel).await;
            self.progress.streaming.store(false, Ordering::SeqCst);
            self.metrics.streaming.set(0);
            self.tx = None;
            // The stream restarts at the confirmed LSN, at or before the first change of
            // every window, so windows are formed again from it.
            self.coalescer = Coalescer::default();
            self.windows = Default::default();
            self.progress.open_windows.store(0, Ordering::Relaxed);
            let result = match result {
                Err(e) => Err(self.explain(e).await),
                ok => ok,
            };
            match result {
                Ok(()) => return Ok(()),
                Err(e) if e.is_fatal() => return Err(e),
                Err(e) if self.progress.lapsed.load(Ordering::SeqCst) => {
                    // Without a lease and without the slot, a standby may be taking
                    // over: stop delivering now.
                    tracing::error!(error = %e,
                        "replication stream lost while the lease is lapsed: this walhook stops delivering at once and stands by");
                    self.progress.fence.cancel();
                    return Ok(());
                }
                Err(e) => {
                    if started.elapsed() > Duration::from_secs(30) {
                        backoff = RECONNECT_MIN;
                    }
                    if e.code() == Some("55006") {
                        // This process holds the lease: the slot's last user is gone or
                        // about to be (its server process notices the closed connection).
                        backoff = SLOT_BUSY_RETRY;
                        if !slot_busy {
                            tracing::warn!(slot = %self.config.source.slot, error = %e,
                                "replication slot is still in use by another process (the previous leader?); waiting for it to be released");
                        }
                        slot_busy = true;
                    } else {
                        slot_busy = false;
                        tracing::warn!(error = %e, retry_in = ?backoff, "replication stream lost; reconnecting");
                    }
                    tokio::select! {
                        _ = cancel.cancelled() => return Ok(()),
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(RECONNECT_MAX);
                }
            }
        }
    }

    /// A refusal to stream that reconnecting cannot fix (the slot dropped or invalidated,
    /// the publication dropped), explained with its fix from what the catalog says now
    /// (`source::refusal`); any other error as it is.
    async fn explain(&mut self, e: SourceError) -> SourceError {
        let server = match &e {
            SourceError::Server(s) if s.code == "42704" || s.code == "55000" => Some(s.clone()),
            // Seen on the replication connection itself: no catalog needed.
            SourceError::SlotMissing(_) => None,
            _ => return e,
        };
        let facts = match &server {
            None => refusal::Facts {
                slot: None,
                publication_exists: true,
            },
            Some(_) => match self.refusal_facts().await {
                Ok(facts) => facts,
                Err(why) => {
                    tracing::warn!(error = %e, %why, "cannot read the slot's and the publication's state to explain the server's refusal");
                    return e;
                }
            },
        };
        match refusal::explain(server.as_ref(), &facts, &self.config, self.last_confirmed) {
            Some(message) => {
                tracing::error!(slot = %self.config.source.slot, "{message}");
                SourceError::Refused(message)
            }
            None => e,
        }
    }

    /// The catalog's facts about the slot and the publication, on the catalog
    /// connection (opened again when it closed), within `CATALOG_TIMEOUT`.
    async fn refusal_facts(&mut self) -> Result<refusal::Facts, String> {
        let read = tokio::time::timeout(CATALOG_TIMEOUT, async {
            let catalog = match self.catalog.take().filter(|c| !c.is_closed()) {
                Some(c) => c,
                None => self.source.connect("catalog").await?,
            };
            let catalog = self.catalog.insert(catalog);
            refusal::facts(catalog, &self.config).await
        })
        .await;
        match read {
            Ok(Ok(facts)) => Ok(facts),
            Ok(Err(e)) => {
                self.catalog = None;
                Err(crate::pg::describe(&e))
            }
            Err(_) => {
                self.catalog = None;
                Err(format!("no answer within {CATALOG_TIMEOUT:?}"))
            }
        }
    }

    async fn stream(&mut self, cancel: &CancellationToken) -> Result<(), SourceError> {
        let mut conn = ReplConn::connect(&self.source).await?;
        let ident = conn.simple_query("IDENTIFY_SYSTEM").await?;
        let silence = silence_limit(
            self.config.source.receive_timeout,
            conn.simple_query("SHOW wal_sender_timeout")
                .await
                .unwrap_or_default(),
        );
        let slot = &self.config.source.slot;
        let rows = conn
            .simple_query(&format!(
                "SELECT confirmed_flush_lsn::text FROM pg_replication_slots WHERE slot_name = '{}'",
                slot.replace('\'', "''")
            ))
            .await?;
        let row = rows
            .first()
            .ok_or_else(|| SourceError::SlotMissing(slot.clone()))?;
        let confirmed = row
            .first()
            .cloned()
            .flatten()
            .and_then(|s| crate::event::parse_lsn(&s))
            .ok_or_else(|| {
                SourceError::Protocol(format!("replication slot {slot:?} has no confirmed position yet"))
            })?;
        self.frontier = self.frontier.max(confirmed);
        self.last_confirmed = confirmed;
        let sql = format!(
            "START_REPLICATION SLOT {} LOGICAL 0/0 (proto_version '1', publication_names '{}', messages 'true')",
            quote_ident(slot),
            quote_ident(&self.config.source.publication).replace('\'', "''")
        );
        conn.start_replication(&sql).await?;
        let system = ident
            .first()
            .and_then(|r| r.first().cloned().flatten())
            .unwrap_or_default();
        tracing::info!(slot = %slot, from = %format_lsn(confirmed), system = %system, "replication streaming");
        if !self.progress.leading.load(Ordering::Relaxed) {
            // The lanes' logs are this process's from now on; settle them before any
            // event is handed over.
            for lane in &self.lanes {
                if !lane.take_over(cancel).await {
                    conn.close().await;
                    return Ok(());
                }
            }
        }
        self.progress.streaming.store(true, Ordering::Relaxed);
        self.progress.leading.store(true, Ordering::Relaxed);
        self.metrics.streaming.set(1);
        self.publish_frontier();

        let mut tick = tokio::time::interval(CONFIRM_TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sent = (0u64, Instant::now());
        // When the server was last heard from, and whether a reply was asked for since.
        let mut heard = (Instant::now(), false);
        loop {
            tokio::select! {
                biased;
                _ = cancel.cancelled() => {
                    let flush = self.confirm_lsn();
                    let _ = conn.send_status(self.received.max(flush), flush, false).await;
                    conn.close().await;
                    return Ok(());
                }
                Some(swap) = next_swap(&mut self.swaps), if self.tx.is_none() => {
                    if !self.apply(swap, cancel).await {
                        conn.close().await;
                        return Ok(());
                    }
                    heard.0 = Instant::now();
                }
                msg = conn.recv() => match msg.inspect(|_| heard = (Instant::now(), false))? {
                    ReplMessage::XLogData { wal_start, wal_end, send_time, data } => {
                        self.received = self.received.max(wal_end);
                        self.clock.observe(send_time);
                        if !self.handle(wal_start, data, &mut conn, cancel).await? {
                            conn.close().await;
                            return Ok(());
                        }
                        // Time spent handing events over (a full lane holds the reader)
                        // is not silence.
                        heard.0 = Instant::now();
                    }
                    ReplMessage::Keepalive { wal_end, send_time, reply_requested } => {
                        self.received = self.received.max(wal_end);
                        self.clock.observe(send_time);
                        if self.tx.is_none() && wal_end > self.frontier {
                            self.frontier = wal_end;
                            self.publish_frontier();
                        }
                        if reply_requested {
                            let flush = self.confirm_lsn();
                            conn.send_status(self.received.max(flush), flush, false).await?;
                            last_sent = (flush, Instant::now());
                            self.last_confirmed = self.last_confirmed.max(flush);
                        }
                    }
                },
                _ = tick.tick() => {
                    self.prune_held();
                    let flush = self.confirm_lsn();
                    // A connection the network dropped without a word stays open here
                    // forever: ask for a reply halfway, give up at the end.
                    let quiet = heard.0.elapsed();
                    if quiet >= silence {
                        return Err(SourceError::Silent(silence));
                    }
                    let ask = quiet >= silence / 2 && !heard.1;
                    if ask || flush != last_sent.0 || last_sent.1.elapsed() >= self.config.source.status_interval {
                        conn.send_status(self.received.max(flush), flush, ask).await?;
                        heard.1 |= ask;
                        last_sent = (flush, Instant::now());
                        self.last_confirmed = self.last_confirmed.max(flush);
                        self.metrics.confirmed_lsn.set(flush);
                    }
                }
            }
        }
    }

    /// Handles one message. Returns false when cancelled while handing over events.
    async fn handle(
        &mut self,
        wal_start: u64,
        data: bytes::Bytes,
        conn: &mut ReplConn,
        cancel: &CancellationToken,
    ) -> Result<bool, SourceError> {
        let msg = decode::parse(&data).map_err(|source| SourceError::Decode {
            lsn: format_lsn(wal_start),
            source,
        })?;
        // The message's bytes (all of a large row's) are freed before its events are made.
        drop(data);
        match msg {
            LogicalMessage::Begin {
                final_lsn,
                commit_time,
                xid,
            } => {
                let meta = TxMeta {
                    commit_lsn: final_lsn,
                    xid,
                    commit_time: decode::time::pg_micros_to_rfc3339(commit_time),
                    backfill: 0,
                };
                self.tx = Some((meta, 0));
                self.tx_time = commit_time;
                self.stream_time_moved(commit_time);
                self.progress.reading_commit_us.store(
                    (commit_time + PG_EPOCH_UNIX_MICROS + self.clock.get()).max(1),
                    Ordering::Relaxed,
                );
            }
            LogicalMessage::Commit { end_lsn, .. } => {
                // Windows closed in this transaction go out at its commit LSN, after its
                // own events and before the frontier passes it.
                if let Some(lsn) = self.tx.as_ref().map(|(tx, _)| tx.commit_lsn) {
                    if !self.hand_over_closed(lsn, 0, Some(conn), cancel).await {
                        return Ok(false);
                    }
                }
                self.tx = None;
                self.progress.reading_commit_us.store(0, Ordering::Relaxed);
                if end_lsn > self.frontier {
                    self.frontier = end_lsn;
                    self.publish_frontier();
                }
            }
            LogicalMessage::Relation(r) => {
                let unknown: Vec<u32> = r
                    .columns
                    .iter()
                    .map(|c| c.type_oid)
                    .filter(|oid| !self.types.contains(*oid))
                    .collect();
                if !unknown.is_empty() {
                    self.resolve_types(&unknown).await;
                }
                let own = TableName {
                    schema: r.namespace,
                    name: r.name,
                };
                let columns: Vec<(Arc<str>, u32, bool)> = r
                    .columns
                    .into_iter()
                    .map(|c| (Arc::from(c.name.as_str()), c.type_oid, c.flags & 1 == 1))
                    .collect();
                let exact = columns
                    .iter()
                    .filter(|(_, oid, _)| self.types.is_exact(*oid))
                    .map(|(name, _, _)| name.clone())
                    .collect();
                let json = columns
                    .iter()
                    .filter(|(_, oid, _)| self.types.is_json(*oid))
                    .map(|(name, _, _)| name.clone())
                    .collect();
                let mut rel = Rel {
                    table: own.clone(),
                    own,
                    ancestors: None,
                    columns,
                    exact,
                    json,
                    watched: false,
                    keyless_rules: Vec::new(),
                    unmatched_told: false,
                };
                self.map_relation(r.id, &mut rel).await;
                self.rels.insert(r.id, rel);
            }
            LogicalMessage::Type { oid, .. } => {
                if !self.types.contains(oid) {
                    self.resolve_types(&[oid]).await;
                }
            }
            LogicalMessage::Insert { rel_id, new } => {
                return self
                    .change(rel_id, Op::Insert, Some(new), None, false, cancel)
                    .await;
            }
            LogicalMessage::Update {
                rel_id,
                old,
                old_is_key_only,
                new,
            } => {
                return self
                    .change(rel_id, Op::Update, Some(new), old, old_is_key_only, cancel)
                    .await;
            }
            LogicalMessage::Delete {
                rel_id,
                old,
                old_is_key_only,
            } => {
                return self
                    .change(rel_id, Op::Delete, None, Some(old), old_is_key_only, cancel)
                    .await;
            }
            LogicalMessage::Truncate { rel_ids, .. } => {
                for rel_id in rel_ids {
                    if !self
                        .change(rel_id, Op::Truncate, None, None, false, cancel)
                        .await?
                    {
                        return Ok(false);
                    }
                }
            }
            LogicalMessage::Message { prefix, content, .. } if prefix == backfill::PREFIX => {
                return self.watermark(&content, conn, cancel).await;
            }
            LogicalMessage::Origin { .. } | LogicalMessage::Message { .. } => {}
        }
        Ok(true)
    }

    /// Hands one event to the lanes of `routes`, in stream order. Returns false when
    /// cancelled.
    async fn push(&self, event: EventRef, routes: &[usize], cancel: &CancellationToken) -> bool {
        // No lanes at all with --no-delivery.
        for (i, lane) in routes.iter().filter_map(|&i| Some((i, self.lanes.get(i)?))) {
            let lanes = &self.lanes;
            let others_busy = || lanes.iter().enumerate().all(|(j, l)| j == i || l.busy());
            if !lane.push(event.clone(), cancel, &others_busy).await {
                return false;
            }
        }
        true
    }

    /// Counts a rule that could not be evaluated for one change, and logs it (at most
    /// every `FAILURE_LOG_EVERY` per rule, with how many were not logged meanwhile).
    fn rule_failed(&mut self, f: RuleFailure) {
        *self
            .metrics
            .rule_errors
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(f.rule.clone())
            .or_default() += 1;
        let now = Instant::now();
        match self.failure_log.get_mut(&f.rule) {
            Some((last, skipped)) if now.duration_since(*last) < FAILURE_LOG_EVERY => *skipped += 1,
            entry => {
                let skipped = entry.map_or(0, |(_, n)| *n);
                tracing::warn!(rule = %f.rule, table = %f.table, key = %f.key, error = %f.error, not_logged_since = skipped,
                    "rule skipped for this change: its condition could not be evaluated");
                self.failure_log.insert(f.rule, (now, 0));
            }
        }
    }

    async fn change(
        &mut self,
        rel_id: u32,
        op: Op,
        new: Option<Vec<Cell>>,
        old: Option<Vec<Cell>>,
        old_is_key_only: bool,
        cancel: &CancellationToken,
    ) -> Result<bool, SourceError> {
        let Some((tx, index)) = self.tx.as_mut() else {
            return Err(SourceError::Protocol("row change outside a transaction".into()));
        };
        let this = *index;
        *index += 1;
        let rel = self
            .rels
            .get_mut(&rel_id)
            .ok_or_else(|| SourceError::Protocol(format!("change for unknown relation {rel_id}")))?;
        if !rel.watched {
            crate::metrics::bump(&self.metrics.unmatched, &rel.own.to_string(), 1);
            if !std::mem::replace(&mut rel.unmatched_told, true) {
                tell_unmatched(rel_id, rel, &self.mapper);
            }
            return Ok(true);
        }
        let rel = &*rel;
        for rule in &rel.keyless_rules {
            crate::metrics::bump(&self.metrics.key_columns_missing, rule, 1);
        }
        self.metrics.changes_decoded.add(1);
        // A key-only old image carries every column, the non-key ones as nulls that
        // mean "not sent": keep only the others. (Not by the relation's key flags: a
        // partition published as its partitioned table logs its own identity, which may
        // be other columns than the partitioned table's; identity columns are never null.)
        let row = |cells: Vec<Cell>, key_only: bool| -> Result<Row, SourceError> {
            if cells.len() != rel.columns.len() {
                return Err(SourceError::Protocol(format!(
                    "{} has {} columns but a change carried {}",
                    rel.table,
                    rel.columns.len(),
                    cells.len()
                )));
            }
            Ok(rel
                .columns
                .iter()
                .zip(cells)
                .filter(|(_, cell)| !key_only || !matches!(cell, Cell::Null))
                .map(|((name, oid, _), cell)| {
                    let v = match cell {
                        Cell::Null => ColValue::Value(serde_json::Value::Null),
                        Cell::Unchanged => ColValue::Unchanged,
                        Cell::Text(t) => ColValue::Value(self.types.owned_to_json(*oid, t)),
                    };
                    (name.clone(), v)
                })
                .collect())
        };
        let change = Change {
            table: &rel.table,
            op,
            new: new.map(|c| row(c, false)).transpose()?,
            old: old.map(|c| row(c, old_is_key_only)).transpose()?,
            old_is_key_only,
            index: this,
            exact: &rel.exact,
            json: &rel.json,
        };
        if let Some(board) = self.board.as_ref().filter(|b| b.any_open()) {
            if op == Op::Truncate {
                board.truncated(change.table);
            } else {
                let images: Vec<&Row> = change.new.iter().chain(change.old.iter()).collect();
                board.touched(change.table, &images);
            }
        }
        let tx = tx.clone();
        let documents = self.maker.is_some();
        if documents {
            Self::documents_due(
                (&self.mapper, &mut self.windows, &self.metrics),
                &mut self.keys_unknown_told,
                (&tx, self.tx_time),
                &change,
            );
        }
        let mut failures = Vec::new();
        let events = self.mapper.map(&tx, &change, &mut failures);
        if documents {
            self.count_open_windows();
        }
        for f in failures {
            self.rule_failed(f);
        }
        let mut last = None;
        for Routed {
            event,
            routes,
            numbers,
            coalesce,
        } in events
        {
            // Events no subscriber wants are only counted, never held in a window.
            if let Some(spec) = coalesce.filter(|_| !routes.is_empty()) {
                self.coalescer.add(event, routes, numbers, spec, self.tx_time);
                self.metrics.changes_coalesced.add(1);
                self.count_open_windows();
                continue;
            }
            // An event rendered twice (for both ways of writing numbers) counts once.
            if last != Some(event.pos) {
                self.metrics.events_emitted.add(1);
                last = Some(event.pos);
            }
            if !self.push(event, &routes, cancel).await {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

/// The next swap, or never when there is no channel (or it closed).
async fn next_swap(swaps: &mut Option<tokio::sync::mpsc::Receiver<Swap>>) -> Option<Swap> {
    match swaps {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}
