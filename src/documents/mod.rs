//! Documents, the I/O part: making the documents whose windows closed (see
//! `mapping::documents`) by running their queries on the source.
//!
//! Queries run on their own small pool (`POOL` connections), many in flight on each
//! (pipelined), so a bulk import's thousands of due documents are read at the speed of
//! the server, not of round trips. Each share runs in one read-only REPEATABLE READ
//! transaction whose snapshot must see every transaction the documents' changes came
//! in: one that committed but is not yet visible (waiting for a synchronous standby)
//! would make a document older than its changes, so the read is taken again.
//!
//! The pipeline waits for the documents it hands over (they go to the lanes in stream
//! order, so per-key order and the confirmed LSN hold as for every other event). A query
//! that fails is tried again with backoff and logged; the event is never dropped.

pub mod query;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::join_all;
use tokio_postgres::types::ToSql;
use tokio_postgres::{Client, Statement};
use tokio_util::sync::CancellationToken;

use crate::decode::TypeRegistry;
use crate::mapping::documents::{Closed, Column, DocSpec};
use crate::metrics::Metrics;
use crate::pg::PgTarget;
use query::{shape, KeyArg, Shape};

/// Connections documents are read on at most.
pub const POOL: usize = 4;
/// Documents read in one transaction at most (all of them in flight at once).
const SHARE: usize = 500;
/// Documents per connection before a second one is worth opening.
const PER_CONNECTION: usize = 64;
const RETRY_MIN: Duration = Duration::from_millis(100);
const RETRY_MAX: Duration = Duration::from_secs(30);
/// A snapshot that misses a committed transaction is taken again this often at most,
/// 1 ms apart, before it counts as a failed try.
const SNAPSHOT_TRIES: u32 = 1_000;

/// How many of a batch's transactions (32-bit ids, all committed in the WAL) the
/// snapshot does not see yet. Each id is made whole (xid8) as the one nearest the
/// snapshot's xmax (wrap-aware); one at or past xmax (newer than every transaction
/// finished when the snapshot was taken) or in its running list is not seen.
const UNSEEN: &str = "WITH s AS (SELECT pg_current_snapshot() AS snap),
                           m AS (SELECT snap, pg_snapshot_xmax(snap)::text::bigint AS xmax FROM s)
                      SELECT count(*) FROM m, unnest($1::bigint[]) AS x
                      WHERE NOT pg_visible_in_snapshot(
                          (m.xmax + ((x - m.xmax % 4294967296 + 6442450944) % 4294967296 - 2147483648))::text::xid8,
                          m.snap)";

/// A made document: its columns, or None when its query found no row.
pub type Made = Option<Vec<Column>>;

struct Conn {
    client: Client,
    /// Per document, its wrapped query.
    stmts: Vec<Statement>,
}

/// Reads documents for the pipeline.
pub struct Maker {
    source: PgTarget,
    names: Vec<String>,
    queries: Vec<String>,
    shapes: Option<Vec<Shape>>,
    conns: Vec<Conn>,
    types: TypeRegistry,
    metrics: Arc<Metrics>,
}

/// Why a share was not read.
enum Failed {
    /// The server or connection refused: the document it was about (its place in the
    /// batch), and what it said.
    Query(Option<usize>, String),
    /// The snapshot kept missing a committed transaction.
    NotVisible,
}

impl Maker {
    pub fn new(source: PgTarget, specs: &[DocSpec], types: TypeRegistry, metrics: Arc<Metrics>) -> Maker {
        Maker {
            source,
            names: specs.iter().map(|s| s.name.clone()).collect(),
            queries: specs.iter().map(|s| s.query.clone()).collect(),
            shapes: None,
            conns: Vec::new(),
            types,
            metrics,
        }
    }

    /// Reads the documents of `batch` (in its order); None when cancelled first.
    pub async fn make(&mut self, batch: &[Closed], cancel: &CancellationToken) -> Option<Vec<Made>> {
        let mut made: Vec<Option<Made>> = vec![None; batch.len()];
        let mut backoff = RETRY_MIN;
        let mut tries = 0u32;
        loop {
            let left: Vec<usize> = (0..batch.len()).filter(|&i| made[i].is_none()).collect();
            if left.is_empty() {
                break;
            }
            let wanted = left.len().div_ceil(PER_CONNECTION).clamp(1, POOL);
            let failure = match self.connect(wanted).await {
                Err(e) => Some((None, e)),
                Ok(()) => {
                    let failure = self.read(batch, &left, &mut made).await;
                    failure.map(|f| match f {
                        Failed::Query(doc, e) => (doc, e),
                        Failed::NotVisible => (
                            None,
                            "the read's snapshot keeps missing a transaction the stream saw committed \
                             (a synchronous standby not answering?)"
                                .to_string(),
                        ),
                    })
                }
            };
            let Some((at, error)) = failure else {
                continue;
            };
            tries += 1;
            let name = at.map(|i| self.names[batch[i].doc].clone()).unwrap_or_default();
            let key = at.map(|i| batch[i].key.to_string());
            crate::metrics::bump(&self.metrics.document_errors, &name, 1);
            tracing::warn!(document = %name, key = key.as_deref().unwrap_or(""), %error, tries, retry_in = ?backoff,
                "cannot read documents; trying again (the stream waits: nothing is dropped). \
                 Fix the query or the database, or check with `walhook check`");
            // A connection that failed may be broken: the next try opens new ones.
            self.conns.retain(|c| !c.client.is_closed());
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = tokio::time::sleep(backoff) => {}
            }
            backoff = (backoff * 2).min(RETRY_MAX);
        }
        Some(made.into_iter().map(|m| m.flatten()).collect())
    }

    /// Opens connections up to `wanted`, preparing every document's query on each.
    async fn connect(&mut self, wanted: usize) -> Result<(), String> {
        while self.conns.len() < wanted {
            let client = self
                .source
                .connect("documents")
                .await
                .map_err(|e| crate::pg::connect_message("source.url", &e))?;
            let pinned: Vec<String> = (crate::source::PINNED_SETTINGS.iter())
                .map(|(k, v)| format!("SET {k} = '{v}'"))
                .collect();
            client
                .batch_execute(&format!(
                    "{}; SET default_transaction_read_only = on; SET statement_timeout = '60s'",
                    pinned.join("; ")
                ))
                .await
                .map_err(|e| crate::pg::describe(&e))?;
            if self.shapes.is_none() {
                let mut shapes = Vec::new();
                for (i, q) in self.queries.iter().enumerate() {
                    let s = shape(&client, q)
                        .await
                        .map_err(|e| format!("documents[{i}].query: {e}"))?;
                    shapes.push(s);
                }
                let unknown: Vec<u32> = (shapes.iter())
                    .flat_map(|s| s.columns.iter().map(|(_, oid)| *oid))
                    .filter(|oid| !self.types.contains(*oid))
                    .collect();
                if !unknown.is_empty() {
                    crate::source::setup::load_types(&client, &mut self.types, Some(&unknown))
                        .await
                        .map_err(|e| e.to_string())?;
                }
                self.shapes = Some(shapes);
            }
            let mut stmts = Vec::new();
            for (i, s) in self.shapes.iter().flatten().enumerate() {
                let stmt = client
                    .prepare_typed(&s.sql, std::slice::from_ref(&s.key_type))
                    .await
                    .map_err(|e| format!("documents[{i}].query: {}", crate::pg::describe(&e)))?;
                stmts.push(stmt);
            }
            self.conns.push(Conn { client, stmts });
        }
        Ok(())
    }

    /// Reads the documents `left` of `batch` into `made`, spread over the connections;
    /// what one connection read stays read when another fails.
    async fn read(&self, batch: &[Closed], left: &[usize], made: &mut [Option<Made>]) -> Option<Failed> {
        let per = left.len().div_ceil(self.conns.len().max(1));
        let parts = left.chunks(per.max(1)).zip(self.conns.iter());
        let results = join_all(parts.map(|(part, conn)| async move {
            let mut got = Vec::new();
            for share in part.chunks(SHARE) {
                match read_share(conn, batch, share).await {
                    Ok(rows) => got.extend(share.iter().copied().zip(rows)),
                    Err(f) => return (got, Some(f)),
                }
            }
            (got, None)
        }))
        .await;
        let shapes = self.shapes.as_deref().unwrap_or_default();
        let mut failure = None;
        for (got, failed) in results {
            for (i, row) in got {
                let doc = batch[i].doc;
                let cols = row.map(|cells| {
                    (shapes[doc].columns.iter().zip(cells))
                        .map(|((name, oid), text)| Column {
                            name: name.clone(),
                            value: match text {
                                Some(t) => self.types.owned_to_json(*oid, t),
                                None => serde_json::Value::Null,
                            },
                            exact: self.types.is_exact(*oid),
                            json: self.types.is_json(*oid),
                        })
                        .collect()
                });
                crate::metrics::bump(&self.metrics.documents_made, &self.names[doc], 1);
                made[i] = Some(cols);
            }
            failure = failure.or(failed);
        }
        failure
    }
}

/// Reads one share of documents in one transaction whose snapshot sees their changes:
/// each one's first row as text (None when it has none).
async fn read_share(
    conn: &Conn,
    batch: &[Closed],
    share: &[usize],
) -> Result<Vec<Option<Vec<Option<String>>>>, Failed> {
    let c = &conn.client;
    let query_failed =
        |doc: Option<usize>| move |e: tokio_postgres::Error| Failed::Query(doc, crate::pg::describe(&e));
    let mut xids: Vec<i64> = share
        .iter()
        .flat_map(|&i| batch[i].xids.iter().map(|x| i64::from(*x)))
        .collect();
    xids.sort_unstable();
    xids.dedup();
    let mut tries = 0;
    loop {
        c.batch_execute("START TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            .await
            .map_err(query_failed(None))?;
        let unseen: i64 = match c.query_one(UNSEEN, &[&xids]).await {
            Ok(row) => row.get(0),
            Err(e) => {
                let _ = c.batch_execute("ROLLBACK").await;
                return Err(query_failed(None)(e));
            }
        };
        if unseen == 0 {
            break;
        }
        let _ = c.batch_execute("ROLLBACK").await;
        tries += 1;
        if tries >= SNAPSHOT_TRIES {
            return Err(Failed::NotVisible);
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let started = Instant::now();
    let keys: Vec<KeyArg<'_>> = share.iter().map(|&i| KeyArg(&batch[i].key)).collect();
    // All in flight at once: the client pipelines them on its connection.
    let reads = join_all(share.iter().zip(&keys).map(|(&i, key)| {
        let params: [&(dyn ToSql + Sync); 1] = [key];
        async move { c.query(&conn.stmts[batch[i].doc], &params).await }
    }))
    .await;
    let _ = c.batch_execute("COMMIT").await;
    let mut out = Vec::with_capacity(share.len());
    // The first failure is the one to tell (the others say the transaction is aborted).
    for (&i, read) in share.iter().zip(reads) {
        match read {
            Ok(rows) => out.push(
                rows.first()
                    .map(|r| (0..r.len()).map(|k| r.get::<_, Option<String>>(k)).collect()),
            ),
            Err(e) => return Err(query_failed(Some(i))(e)),
        }
    }
    tracing::trace!(documents = share.len(), took = ?started.elapsed(), "documents read");
    Ok(out)
}

/// The problems of the documents' queries as the source's server sees them (each one
/// prepared, never run), as (document index, message).
pub async fn check(client: &Client, config: &crate::config::Config) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    for (i, d) in config.documents.iter().enumerate() {
        if let Err(e) = shape(client, &d.query).await {
            out.push((i, format!("documents[{i}].query: {e}")));
        }
    }
    out
}
