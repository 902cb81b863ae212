//! Stream time for coalescing windows: a tiny transaction with a logical message written
//! into the WAL while windows are open and no transaction moves time on.

use super::*;

/// How often stream time is written into the WAL while coalescing or document windows
/// are open and no transaction moved it: a quarter of the shortest window, within 50 ms
/// and 1 s.
pub fn tick_interval(config: &Config) -> Option<Duration> {
    let coalescing = config
        .events
        .iter()
        .filter_map(|r| r.coalesce.as_ref())
        .map(|c| c.window);
    let documents = config.documents.iter().map(|d| d.window);
    coalescing
        .chain(documents)
        .map(|w| (w / 4).clamp(Duration::from_millis(50), Duration::from_secs(1)))
        .min()
}

/// Commits a tiny transaction holding one `walhook.tick` logical message while coalescing
/// windows are open and the stream was quiet for `every`: its commit time moves stream
/// time on, so windows close when no other transaction comes (and a replay reads the same
/// ticks at the same places). It is flushed at commit (`synchronous_commit = local`);
/// nothing is written while no window is open.
pub async fn ticker(source: PgTarget, progress: Arc<Progress>, every: Duration, cancel: CancellationToken) {
    const SQL: &str = "BEGIN; SET LOCAL synchronous_commit = local; \
                       SELECT pg_logical_emit_message(true, 'walhook.tick', ''); COMMIT";
    let mut client: Option<Client> = None;
    let mut last_warning: Option<Instant> = None;
    let every_ms = every.as_millis() as u64;
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
        let quiet = monotonic_ms().saturating_sub(progress.stream_time_moved_ms.load(Ordering::Relaxed));
        if progress.open_windows.load(Ordering::Relaxed) == 0
            || !progress.streaming.load(Ordering::Relaxed)
            || quiet < every_ms
        {
            continue;
        }
        let result = match &client {
            Some(c) => c.batch_execute(SQL).await,
            None => match source.connect("tick").await {
                Ok(c) => {
                    let r = c.batch_execute(SQL).await;
                    client = Some(c);
                    r
                }
                Err(e) => Err(e),
            },
        };
        if let Err(e) = result {
            client = None;
            if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(10)) {
                tracing::warn!(error = %crate::pg::describe(&e), "cannot write a coalescing tick into the WAL; \
                    open windows close only when transactions come");
                last_warning = Some(Instant::now());
            }
        }
    }
}
