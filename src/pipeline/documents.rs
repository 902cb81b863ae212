//! Documents in the stream: the changes that make documents due go into their windows,
//! and closed windows are made (their queries run, concurrently) and handed to the lanes
//! in position order, held like coalesced events until no lane holds them pending.

use super::*;
use crate::documents::{Made, Maker};
use crate::mapping::documents::{self, Closed, Touch, Windows};

/// Documents made and handed over in one go at most (a bulk import closes thousands).
const MAKE_BATCH: usize = 2_000;

impl Pipeline {
    /// Notes the documents `change` (of transaction `tx`, committed at `time`) makes due
    /// in `windows`. (Of the pipeline's fields, as the change borrows its relation.)
    pub(super) fn documents_due(
        (mapper, windows, metrics): (&Mapper, &mut Windows, &Metrics),
        told: &mut bool,
        (tx, time): (&TxMeta, i64),
        change: &Change<'_>,
    ) {
        let dues = mapper.dues(change);
        for (doc, col) in &dues.unknown {
            let name = &mapper.documents()[*doc].name;
            crate::metrics::bump(&metrics.document_keys_unknown, name, 1);
            if !std::mem::replace(told, true) {
                tracing::warn!(document = %name, table = %change.table, column = %col, op = change.op.as_str(),
                    "a change of a document's source does not carry its key column, so it makes no document due \
                     (counted in walhook_document_keys_unknown_total). For deletes: set REPLICA IDENTITY FULL on the \
                     table, or key the source on its replica identity; for a truncate, run a document backfill");
            }
        }
        for (doc, key, source) in dues.keys {
            let spec = &mapper.documents()[doc];
            // No subscriber wants it: nothing to read.
            if spec.routes.is_empty() {
                continue;
            }
            windows.add(
                spec,
                Touch {
                    doc,
                    key,
                    source,
                    op: change.op,
                    pos: Pos::new(tx.commit_lsn, change.index, 0),
                    time,
                    xid: tx.xid,
                },
            );
        }
        if windows.closed_early > 0 {
            metrics
                .coalesce_closed_early
                .add(std::mem::take(&mut windows.closed_early));
        }
    }

    /// Makes the documents of `batch` with `maker`, telling the server walhook is alive
    /// every `status_interval` (at most 10 s) on `conn` meanwhile, confirming nothing at
    /// or after `low`, so a long read does not end the replication connection. None when
    /// cancelled.
    async fn make(
        &self,
        maker: &mut Maker,
        batch: &[Closed],
        low: u64,
        conn: &mut Option<&mut ReplConn>,
        cancel: &CancellationToken,
    ) -> Option<Vec<Made>> {
        let every = self.config.source.status_interval.min(Duration::from_secs(10));
        let mut making = std::pin::pin!(maker.make(batch, cancel));
        loop {
            tokio::select! {
                made = &mut making => return made,
                _ = tokio::time::sleep(every) => {
                    if let Some(conn) = conn.as_deref_mut() {
                        let flush = confirm::outside_spans(self.confirm_lsn().min(low), &self.spans);
                        // A failure shows on the next read of the stream.
                        let _ = conn.send_status(self.received.max(flush), flush, false).await;
                    }
                }
            }
        }
    }

    /// Makes the documents of `closed` and hands them to their lanes, in order, each
    /// held (with `group_low`, the first change of its group) while a lane may hold it
    /// pending. Returns false when cancelled.
    pub(super) async fn hand_over_documents(
        &mut self,
        closed: Vec<Closed>,
        group_low: u64,
        mut conn: Option<&mut ReplConn>,
        cancel: &CancellationToken,
    ) -> bool {
        let Some(mut maker) = self.maker.take() else {
            return closed.is_empty();
        };
        for batch in closed.chunks(MAKE_BATCH) {
            let Some(made) = self.make(&mut maker, batch, group_low, &mut conn, cancel).await else {
                self.maker = Some(maker);
                return false;
            };
            for (c, row) in batch.iter().zip(made) {
                let spec = &self.mapper.documents()[c.doc];
                let events = documents::render(spec, c, row.as_deref());
                self.metrics.events_emitted.add(1);
                self.spans.insert((c.first.lsn, c.last_lsn));
                let routes: Arc<[usize]> = {
                    let mut all: Vec<usize> = events.iter().flat_map(|(_, r)| r.iter().copied()).collect();
                    all.sort_unstable();
                    all.into()
                };
                if !routes.is_empty() && !self.lanes.is_empty() {
                    self.held.insert(c.pos, (group_low, routes));
                }
                for (event, routes) in events {
                    if !self.push(event, &routes, cancel).await {
                        self.maker = Some(maker);
                        return false;
                    }
                }
            }
        }
        self.maker = Some(maker);
        true
    }

    /// Makes the documents a backfill reads (`closed`, at its chunk's high watermark, in
    /// the watermark's transaction) and hands them to `lanes` only. Returns false when
    /// cancelled.
    pub(super) async fn hand_over_reads(
        &mut self,
        closed: Vec<Closed>,
        lanes: &[usize],
        mut conn: Option<&mut ReplConn>,
        cancel: &CancellationToken,
    ) -> bool {
        let Some(mut maker) = self.maker.take() else {
            // No documents in the config: the runner refuses such a backfill first.
            return true;
        };
        for batch in closed.chunks(MAKE_BATCH) {
            let low = batch.first().map_or(u64::MAX, |c| c.pos.lsn);
            let Some(made) = self.make(&mut maker, batch, low, &mut conn, cancel).await else {
                self.maker = Some(maker);
                return false;
            };
            for (c, row) in batch.iter().zip(made) {
                let spec = &self.mapper.documents()[c.doc];
                for (event, routes) in documents::render(spec, c, row.as_deref()) {
                    let routes: Vec<usize> = routes.iter().copied().filter(|r| lanes.contains(r)).collect();
                    if routes.is_empty() {
                        continue;
                    }
                    self.metrics.events_emitted.add(1);
                    if !self.push(event, &routes, cancel).await {
                        self.maker = Some(maker);
                        return false;
                    }
                }
            }
        }
        self.maker = Some(maker);
        true
    }
}
