//! Chunk mode's part of the spill log: chunks written, loaded and deleted in write
//! order, turned into rows when chunk mode ends, and the attempts their events had
//! failed restored onto those rows.

use super::{history_json, Restored, State, StateError};
use crate::event::{Event, Pos};

impl State {
    /// Writes events as one chunk; returns its number (chunks are numbered in the order
    /// they are written).
    pub async fn spill_chunk(&self, subscriber: &str, events: &[&Event]) -> Result<i64, StateError> {
        let lsns: Vec<i64> = events.iter().map(|e| e.pos.lsn as i64).collect();
        let seqs: Vec<i64> = events.iter().map(|e| e.pos.seq as i64).collect();
        let ids: Vec<&str> = events.iter().map(|e| e.id.as_str()).collect();
        let types: Vec<&str> = events.iter().map(|e| e.event_type.as_str()).collect();
        let keys: Vec<&str> = events.iter().map(|e| e.key.as_str()).collect();
        // NULL unless some event of the chunk moved its row to another key.
        let prev_keys: Option<Vec<Option<&str>>> = events
            .iter()
            .any(|e| e.prev_key.is_some())
            .then(|| events.iter().map(|e| e.prev_key.as_deref()).collect());
        let bodies: Vec<&[u8]> = events.iter().map(|e| &e.body[..]).collect();
        let bytes = bodies.iter().map(|b| b.len()).sum();
        let _io = self.io_permit(bytes).await;
        let row = self
            .client_for(bytes)
            .await?
            .query_one(
                "INSERT INTO walhook.spill_chunks (slot, subscriber, lsns, seqs, ids, types, keys, bodies, prev_keys)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING chunk",
                &[
                    &self.slot,
                    &subscriber,
                    &lsns,
                    &seqs,
                    &ids,
                    &types,
                    &keys,
                    &bodies,
                    &prev_keys,
                ],
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
        let _io = self.io_permit(super::CHUNK_BYTES).await;
        let client = self.client().await?;
        let rows = client
            .query(
                "SELECT chunk, lsns, seqs, ids, types, keys, bodies, prev_keys FROM walhook.spill_chunks
                 WHERE slot = $1 AND subscriber = $2 AND chunk > $3 ORDER BY chunk LIMIT 1",
                &[&self.slot, &subscriber, &after],
            )
            .await?;
        let Some(r) = rows.first() else {
            return Ok(None);
        };
        let lsns: Vec<i64> = r.get(1);
        let seqs: Vec<i64> = r.get(2);
        let ids: Vec<String> = r.get(3);
        let types: Vec<String> = r.get(4);
        let keys: Vec<String> = r.get(5);
        let bodies: Vec<Vec<u8>> = r.get(6);
        let mut prev_keys = r
            .get::<_, Option<Vec<Option<String>>>>(7)
            .unwrap_or_default()
            .into_iter();
        let chunk = r.get(0);
        drop(rows);
        self.after_read(&client, bodies.iter().map(Vec::len).sum()).await;
        let events = lsns
            .into_iter()
            .zip(seqs)
            .zip(ids)
            .zip(types)
            .zip(keys)
            .zip(bodies)
            .map(|(((((lsn, seq), id), event_type), key), body)| Event {
                pos: Pos {
                    lsn: lsn as u64,
                    seq: seq as u64,
                },
                id,
                event_type,
                key,
                prev_key: prev_keys.next().flatten(),
                body: bytes::Bytes::from(body),
            })
            .collect();
        Ok(Some((chunk, events)))
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

    /// Turns the oldest `chunks` chunks of a lane into rows of the spill log, leaving out
    /// the events in `delivered`, in one statement. Returns the rows written and the
    /// chunks turned (0: none left).
    pub async fn explode_chunks(
        &self,
        subscriber: &str,
        delivered: &[Pos],
        chunks: i64,
    ) -> Result<(u64, u64), StateError> {
        let lsns: Vec<i64> = delivered.iter().map(|p| p.lsn as i64).collect();
        let seqs: Vec<i64> = delivered.iter().map(|p| p.seq as i64).collect();
        let row = self
            .client()
            .await?
            .query_one(
                "WITH gone AS (
                   DELETE FROM walhook.spill_chunks WHERE slot = $1 AND subscriber = $2 AND chunk IN (
                     SELECT chunk FROM walhook.spill_chunks WHERE slot = $1 AND subscriber = $2
                     ORDER BY chunk LIMIT $5)
                   RETURNING *),
                 done AS (SELECT * FROM unnest($3::bigint[], $4::bigint[]) AS d(l, q)),
                 rows AS (
                   INSERT INTO walhook.spill
                     (slot, subscriber, lsn, seq, event_id, event_type, ordering_key, body, prev_key)
                   SELECT g.slot, g.subscriber, u.l, u.q, u.i, u.t, u.k, u.b, u.p
                   FROM gone g,
                        unnest(g.lsns, g.seqs, g.ids, g.types, g.keys, g.bodies, g.prev_keys) AS u(l, q, i, t, k, b, p)
                   WHERE NOT EXISTS (SELECT 1 FROM done WHERE done.l = u.l AND done.q = u.q)
                   ON CONFLICT DO NOTHING
                   RETURNING 1)
                 SELECT (SELECT count(*) FROM rows), (SELECT count(*) FROM gone)",
                &[&self.slot, &subscriber, &lsns, &seqs, &chunks],
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
