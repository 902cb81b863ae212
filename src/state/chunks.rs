//! Chunk mode's part of the spill log: chunks written, loaded and deleted in write
//! order, turned into rows when chunk mode ends, and the attempts their events had
//! failed restored onto those rows. A chunk is one frame (`frame.rs`), or seven arrays:
//! chunks written by walhook before state schema version 12, and chunks of one event of
//! more than `LARGE_IO`.

use std::collections::HashSet;

use tokio_postgres::types::ToSql;

use super::{frame, history_json, Columns, Restored, State, StateError};
use crate::event::{Event, Pos};

/// The chunk columns a read takes: the frame, or the arrays of an older chunk.
const CHUNK_COLUMNS: &str = "chunk, frame, lsns, seqs, ids, types, keys, bodies, prev_keys";

impl State {
    /// Writes events as one chunk; returns its number (chunks are numbered in the order
    /// they are written). A chunk too large for a frame (one event of more than 16 MiB)
    /// is written as arrays, as before frames: a frame would be one more copy of it in
    /// memory beside the statement the driver builds twice.
    pub async fn spill_chunk(&self, subscriber: &str, events: &[&Event]) -> Result<i64, StateError> {
        let bytes: usize = events.iter().map(|e| e.body.len()).sum();
        let _io = self.io_permit(bytes).await;
        if frame::payload_len(events) > frame::MAX_RAW {
            return self.spill_chunk_arrays(subscriber, events).await;
        }
        let frame = frame::encode(events).map_err(|e| StateError::Frame(e.to_string()))?;
        // lsns = '{NULL}': see sql/012_chunk_frames.sql.
        let row = self
            .client()
            .await?
            .query_one(
                "INSERT INTO walhook.spill_chunks (slot, subscriber, lsns, frame, events, bytes)
                 VALUES ($1, $2, '{NULL}', $3, $4, $5) RETURNING chunk",
                &[
                    &self.slot,
                    &subscriber,
                    &frame,
                    &(events.len() as i32),
                    &(bytes as i64),
                ],
            )
            .await?;
        Ok(row.get(0))
    }

    /// `spill_chunk` as one array per field, compressed by the server.
    async fn spill_chunk_arrays(&self, subscriber: &str, events: &[&Event]) -> Result<i64, StateError> {
        let c = Columns::of(events.iter().copied());
        let row = self
            .client_for(c.bytes)
            .await?
            .query_one(
                "INSERT INTO walhook.spill_chunks
                   (slot, subscriber, lsns, seqs, ids, types, keys, bodies, prev_keys, events, bytes)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING chunk",
                &[
                    &[&self.slot as &(dyn ToSql + Sync), &subscriber][..],
                    &c.params(),
                    &[&(events.len() as i32), &(c.bytes as i64)],
                ]
                .concat(),
            )
            .await?;
        Ok(row.get(0))
    }

    /// The first chunk written after chunk `after`, with its events in write order.
    pub async fn chunk_after(
        &self,
        subscriber: &str,
        after: i64,
    ) -> Result<Option<(i64, Vec<Event>)>, StateError> {
        let read = self.read_chunks(subscriber, after, 1, 0).await?;
        Ok(read.and_then(|(mut chunks, _io)| chunks.pop()))
    }

    /// The oldest chunks written after chunk `after`, at most `limit` of them and `cap`
    /// bytes of bodies, but at least one, read whole; none when there are none. Returns
    /// them with the share of the I/O budget taken for what they hold.
    async fn read_chunks(
        &self,
        subscriber: &str,
        after: i64,
        limit: i64,
        cap: usize,
    ) -> Result<Option<(Vec<(i64, Vec<Event>)>, tokio::sync::SemaphorePermit<'_>)>, StateError> {
        let client = self.client().await?;
        // Chunks written before state schema 12 say nothing of their size: their bodies
        // are measured (only while such chunks are left).
        let sizes = client
            .query(
                "SELECT chunk, b FROM (
                   SELECT chunk, b, sum(b) OVER (ORDER BY chunk) AS upto, row_number() OVER (ORDER BY chunk) AS n
                   FROM (SELECT chunk,
                                coalesce(bytes, (SELECT sum(octet_length(x)) FROM unnest(bodies) x), 0) AS b
                         FROM walhook.spill_chunks WHERE slot = $1 AND subscriber = $2 AND chunk > $3
                         ORDER BY chunk LIMIT $4) c) s
                 WHERE upto <= $5::bigint OR n = 1
                 ORDER BY chunk",
                &[&self.slot, &subscriber, &after, &limit, &(cap as i64)],
            )
            .await?;
        if sizes.is_empty() {
            return Ok(None);
        }
        let numbers: Vec<i64> = sizes.iter().map(|r| r.get(0)).collect();
        let bytes: i64 = sizes.iter().map(|r| r.get::<_, i64>(1)).sum();
        drop(sizes);
        let io = self.io_permit(bytes as usize).await;
        let rows = client
            .query(
                &format!(
                    "SELECT {CHUNK_COLUMNS} FROM walhook.spill_chunks
                     WHERE slot = $1 AND subscriber = $2 AND chunk = ANY($3) ORDER BY chunk"
                ),
                &[&self.slot, &subscriber, &numbers],
            )
            .await?;
        let mut read = Vec::with_capacity(rows.len());
        let mut stored = 0;
        for row in &rows {
            let (chunk, events, size) = read_chunk(subscriber, row)?;
            read.push((chunk, events));
            stored += size;
        }
        drop(rows);
        self.after_read(&client, stored).await;
        Ok(Some((read, io)))
    }

    /// Deletes chunks whose events are all delivered.
    pub async fn delete_chunks(&self, subscriber: &str, chunks: &[i64]) -> Result<(), StateError> {
        if chunks.is_empty() {
            return Ok(());
        }
        self.client()
            .await?
            .execute(
                "DELETE FROM walhook.spill_chunks WHERE slot = $1 AND subscriber = $2 AND chunk = ANY($3)",
                &[&self.slot, &subscriber, &chunks],
            )
            .await?;
        Ok(())
    }

    /// Turns the oldest chunks of a lane (at most `chunks`, and about `CHUNK_BYTES` of
    /// bodies, but always one) into rows of the spill log, leaving out the events in
    /// `delivered`. The rows are written by the statement that deletes their chunks, and
    /// only for the chunks it deleted. Returns the rows written and the chunks turned (0:
    /// none left).
    pub async fn explode_chunks(
        &self,
        subscriber: &str,
        delivered: &[Pos],
        chunks: i64,
    ) -> Result<(u64, u64), StateError> {
        let Some((read, _io)) = self
            .read_chunks(subscriber, 0, chunks, super::CHUNK_BYTES)
            .await?
        else {
            return Ok((0, 0));
        };
        let done: HashSet<Pos> = delivered.iter().copied().collect();
        let numbers: Vec<i64> = read.iter().map(|(chunk, _)| *chunk).collect();
        let rows: Vec<(i64, Event)> = read
            .into_iter()
            .flat_map(|(chunk, events)| events.into_iter().map(move |e| (chunk, e)))
            .filter(|(_, e)| !done.contains(&e.pos))
            .collect();
        let of: Vec<i64> = rows.iter().map(|(chunk, _)| *chunk).collect();
        let c = Columns::of(rows.iter().map(|(_, e)| e));
        let row = self
            .client_for(c.bytes)
            .await?
            .query_one(
                "WITH gone AS (
                   DELETE FROM walhook.spill_chunks WHERE slot = $1 AND subscriber = $2 AND chunk = ANY($3)
                   RETURNING chunk),
                 rows AS (
                   INSERT INTO walhook.spill
                     (slot, subscriber, lsn, seq, event_id, event_type, ordering_key, body, prev_key)
                   SELECT $1, $2, u.l, u.q, u.i, u.t, u.k, u.b, u.p
                   FROM unnest($4::bigint[], $5::bigint[], $6::bigint[], $7::text[], $8::text[], $9::text[],
                               $10::bytea[], $11::text[]) AS u(c, l, q, i, t, k, b, p)
                   WHERE u.c IN (SELECT chunk FROM gone)
                   ON CONFLICT DO NOTHING
                   RETURNING 1)
                 SELECT (SELECT count(*) FROM rows), (SELECT count(*) FROM gone)",
                &[
                    &[&self.slot as &(dyn ToSql + Sync), &subscriber, &numbers, &of][..],
                    &c.params(),
                ]
                .concat(),
            )
            .await?;
        Ok((row.get::<_, i64>(0) as u64, row.get::<_, i64>(1) as u64))
    }

    /// Gives rows made from chunks the attempts their events had failed before (in hot
    /// mode, or in memory): the count, when the next may start, and their history.
    pub async fn restore(&self, subscriber: &str, rows: &[Restored]) -> Result<(), StateError> {
        let lsns: Vec<i64> = rows.iter().map(|r| r.pos.lsn as i64).collect();
        let seqs: Vec<i64> = rows.iter().map(|r| r.pos.seq as i64).collect();
        let attempts: Vec<i32> = rows.iter().map(|r| r.attempts).collect();
        let waits: Vec<i64> = rows.iter().map(|r| r.retry_after.as_millis() as i64).collect();
        let errors: Vec<Option<&str>> = rows
            .iter()
            .map(|r| r.history.last().map(|a| a.error.as_str()))
            .collect();
        let histories: Vec<String> = rows.iter().map(|r| history_json(&r.history)).collect();
        self.client()
            .await?
            .execute(
                "UPDATE walhook.spill s
                 SET attempts = u.a, next_attempt_at = now() + u.d * interval '1 millisecond',
                     last_error = coalesce(u.e, s.last_error), history = walhook.last_attempts(s.history || u.h::jsonb)
                 FROM unnest($3::bigint[], $4::bigint[], $5::int[], $6::bigint[], $7::text[], $8::text[])
                   AS u(l, q, a, d, e, h)
                 WHERE s.slot = $1 AND s.subscriber = $2 AND s.lsn = u.l AND s.seq = u.q",
                &[&self.slot, &subscriber, &lsns, &seqs, &attempts, &waits, &errors, &histories],
            )
            .await?;
        Ok(())
    }
}

/// A chunk row (`CHUNK_COLUMNS`) as its number, its events in write order, and the bytes
/// it took to read.
fn read_chunk(subscriber: &str, row: &tokio_postgres::Row) -> Result<(i64, Vec<Event>, usize), StateError> {
    let chunk: i64 = row.try_get(0)?;
    let damaged = |why: String| StateError::Damaged {
        subscriber: subscriber.to_string(),
        chunk,
        why,
    };
    if let Some(frame) = row.try_get::<_, Option<&[u8]>>(1)? {
        let events = frame::decode(frame).map_err(|e| damaged(e.to_string()))?;
        return Ok((chunk, events, frame.len()));
    }
    let lsns: Option<Vec<i64>> = row.try_get(2)?;
    let seqs: Option<Vec<i64>> = row.try_get(3)?;
    let ids: Option<Vec<String>> = row.try_get(4)?;
    let types: Option<Vec<String>> = row.try_get(5)?;
    let keys: Option<Vec<String>> = row.try_get(6)?;
    let bodies: Option<Vec<Vec<u8>>> = row.try_get(7)?;
    let prev_keys: Option<Vec<Option<String>>> = row.try_get(8)?;
    let (Some(lsns), Some(seqs), Some(ids), Some(types), Some(keys), Some(bodies)) =
        (lsns, seqs, ids, types, keys, bodies)
    else {
        return Err(damaged("it has neither a frame nor all of its arrays".into()));
    };
    let n = lsns.len();
    let prev_keys = prev_keys.unwrap_or_else(|| vec![None; n]);
    if [
        seqs.len(),
        ids.len(),
        types.len(),
        keys.len(),
        bodies.len(),
        prev_keys.len(),
    ] != [n; 6]
    {
        return Err(damaged("its arrays differ in length".into()));
    }
    let stored = bodies.iter().map(Vec::len).sum();
    let events = lsns
        .into_iter()
        .zip(seqs)
        .zip(ids)
        .zip(types)
        .zip(keys)
        .zip(bodies)
        .zip(prev_keys)
        .map(
            |((((((lsn, seq), id), event_type), key), body), prev_key)| Event {
                pos: Pos {
                    lsn: lsn as u64,
                    seq: seq as u64,
                },
                id,
                event_type,
                key,
                prev_key,
                body: bytes::Bytes::from(body),
            },
        )
        .collect();
    Ok((chunk, events, stored))
}
