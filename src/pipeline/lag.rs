//! Replication lag as the server sees it, read every few seconds on a connection of its
//! own, so it shows even while the stream is down.

use super::*;

/// How often the slot's lag is read from the server.
pub(super) const LAG_EVERY: Duration = Duration::from_secs(5);

/// Keeps `walhook_replication_lag_bytes` at the bytes of WAL between the server's current
/// position and the slot's confirmed flush LSN, read from the server itself every
/// `LAG_EVERY`: the stream cannot say it (a keepalive carries only the walsender's decode
/// position, and none comes while the stream is down or cannot start). A read-only
/// query; on failure the last value stays and the next read opens a new connection.
pub async fn lag_watch(source: PgTarget, slot: String, metrics: Arc<Metrics>, cancel: CancellationToken) {
    const SQL: &str = "SELECT (pg_current_wal_lsn() - confirmed_flush_lsn)::bigint                        FROM pg_replication_slots WHERE slot_name = $1";
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
            Ok(Ok(row)) => {
                let lag: Option<i64> = row.and_then(|r| r.get(0));
                if let Some(lag) = lag {
                    metrics.lag_bytes.set(lag.max(0) as u64);
                }
            }
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
