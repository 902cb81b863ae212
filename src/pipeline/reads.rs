//! Backfill chunks at their watermarks (see `backfill`): the low one opens a chunk, and
//! at the high one its rows that no live change touched go to the backfill's lanes,
//! there in the stream (the runner reads the others again).

use super::*;

impl Pipeline {
    /// Handles a backfill watermark. Returns false when cancelled while handing over.
    pub(super) async fn watermark(
        &mut self,
        content: &[u8],
        conn: &mut ReplConn,
        cancel: &CancellationToken,
    ) -> Result<bool, SourceError> {
        let Some(board) = self.board.clone() else {
            return Ok(true);
        };
        let Some(mark) = backfill::Watermark::parse(content, &self.config.source.slot, &board.run) else {
            return Ok(true);
        };
        if mark.mark == "low" {
            board.low(mark.chunk);
            return Ok(true);
        }
        // Each watermark is a transaction of its own: the rows go out at its commit.
        let Some(lsn) = self.tx.as_ref().map(|(tx, _)| tx.commit_lsn) else {
            return Ok(true);
        };
        let unknown: Vec<u32> = board
            .columns(mark.chunk)
            .into_iter()
            .flatten()
            .filter(|oid| !self.types.contains(*oid))
            .collect();
        if !unknown.is_empty() {
            self.resolve_types(&unknown).await;
        }
        let types = &self.types;
        let Some(taken) = board.high(mark.chunk, |oid, text| types.owned_to_json(oid, text)) else {
            return Ok(true);
        };
        if let Some((doc, col)) = taken.pin.document.clone() {
            // A backfill of a document: the documents of the rows' keys, read now.
            let now = crate::progress::unix_micros() - PG_EPOCH_UNIX_MICROS;
            let mut keys: Vec<serde_json::Value> = Vec::new();
            for row in &taken.rows {
                let key = row.iter().find(|(c, _)| **c == *col).and_then(|(_, v)| match v {
                    ColValue::Value(v) if !v.is_null() => Some(v.clone()),
                    _ => None,
                });
                if let Some(key) = key.filter(|k| !keys.contains(k)) {
                    keys.push(key);
                }
            }
            let closed = (keys.into_iter().enumerate())
                .map(|(i, key)| {
                    let pos = Pos {
                        lsn,
                        seq: crate::event::READ | i as u64,
                    };
                    crate::mapping::documents::Closed::read(doc, key, pos, taken.pin.backfill, now)
                })
                .collect();
            if !self
                .hand_over_reads(closed, &taken.pin.lanes, Some(conn), cancel)
                .await
            {
                return Ok(false);
            }
            board.hand(mark.chunk, lsn);
            return Ok(true);
        }
        let of_kind = |is: &dyn Fn(u32) -> bool| -> Vec<Arc<str>> {
            taken
                .pin
                .columns
                .iter()
                .filter(|(_, oid)| is(*oid))
                .map(|(name, _)| name.clone())
                .collect()
        };
        let exact = of_kind(&|oid| self.types.is_exact(oid));
        let json = of_kind(&|oid| self.types.is_json(oid));
        let tx = TxMeta {
            commit_lsn: lsn,
            xid: 0,
            commit_time: taken.read_at.clone(),
            backfill: taken.pin.backfill,
        };
        let mut failures = Vec::new();
        for (i, row) in taken.rows.into_iter().enumerate() {
            let change = Change {
                table: &taken.pin.table,
                op: Op::Read,
                new: Some(row),
                old: None,
                old_is_key_only: false,
                index: i as u32,
                exact: &exact,
                json: &json,
            };
            for Routed { event, routes, .. } in self.mapper.map(&tx, &change, &mut failures) {
                // Only the backfill's subscribers get its rows.
                let routes: Vec<usize> = routes
                    .iter()
                    .copied()
                    .filter(|r| taken.pin.lanes.contains(r))
                    .collect();
                if routes.is_empty() {
                    continue;
                }
                self.metrics.events_emitted.add(1);
                if !self.push(event, &routes, cancel).await {
                    return Ok(false);
                }
            }
        }
        for f in failures {
            self.rule_failed(f);
        }
        board.hand(mark.chunk, lsn);
        Ok(true)
    }
}
