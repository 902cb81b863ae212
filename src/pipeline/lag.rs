//! Replication lag as the server sees it, read every few seconds on a connection of its
//! own, so it shows even while the stream is down.

use super::*;

/// How often the slot's lag is read from the server.
pub(super) const LAG_EVERY: Duration = Duration::from_secs(5);

/// Keeps `walhook_replication_lag_bytes` at the bytes of WAL between the server's current
/// position and the slot's confirmed flush LSN, `walhook_slot_retained_wal_bytes` at the
/// WAL the server keeps for the slot (from its restart LSN), and
/// `walhook_replication_lag_seconds` at the server's `flush_lag` of walhook's connection
/// (how long after a commit was flushed walhook confirmed it; 0 when caught up, and for
/// a role that may not read it), read from the server itself every `LAG_EVERY`: the
/// stream cannot say it (a keepalive carries only the walsender's decode position, and
/// none comes while the stream is down or cannot start). A read-only query; on failure
/// the last values stay and the next read opens a new connection.
pub async fn lag_watch(source: PgTarget, slot: String, metrics: Arc<Metrics>, cancel: CancellationToken) {
    const SQL: &str = "SELECT (pg_current_wal_lsn() - s.confirmed_flush_lsn)::bigint,
                              (pg_current_wal_lsn() - s.restart_lsn)::bigint,
                              coalesce(extract(epoch FROM r.flush_lag), 0)::float8
                       FROM pg_replication_slots s LEFT JOIN pg_stat_replication r ON r.pid = s.active_pid
                       WHERE s.slot_name = $1";
    let mut client: Option<Client> = None;
    loop {
        let read = tokio::time::timeout(CATALOG_TIMEOUT, async {
            let c = match client.take().filter(|c| !c.is_closed()) {
                Some(c) => c,
                None => source.connect("lag").await?,
            };
            let c = client.insert(c);
            c.query_opt(SQL, &[&slot]).await
        })
        .await;
        match read {
            Ok(Ok(Some(row))) => {
                if let Some(lag) = row.get::<_, Option<i64>>(0) {
                    metrics.lag_bytes.set(lag.max(0) as u64);
                }
                if let Some(kept) = row.get::<_, Option<i64>>(1) {
                    metrics.retained_wal_bytes.set(kept.max(0) as u64);
                }
                let seconds: f64 = row.get(2);
                metrics.lag_millis.set((seconds.max(0.0) * 1000.0) as u64);
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) => {
                client = None;
                tracing::debug!(error = %crate::pg::describe(&e), "cannot read the slot's lag");
            }
            Err(_) => {
                client = None;
                tracing::debug!("cannot read the slot's lag: no answer in time");
            }
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(LAG_EVERY) => {}
        }
    }
}
