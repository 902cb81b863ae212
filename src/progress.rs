//! What the running pipeline shares with the stages beside and below it: how far the
//! stream is handed over (the frontier), whether this process streams and leads the
//! slot, the fence that stops delivery at once when the lease is lost, and how far the
//! reader lags. Written by the pipeline and the lease, read by lanes, the watermark
//! writer and the admin server. It imports no stage.

use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::event::Pos;

/// Progress shared with the watermark writer and the admin server.
#[derive(Default)]
pub struct Progress {
    /// Every transaction before this LSN is fully handed to the lanes.
    pub frontier: AtomicU64,
    pub streaming: AtomicBool,
    /// Set once this process has started streaming the slot (so it owns the lanes' logs).
    pub leading: AtomicBool,
    /// Cancelled when this process must stop delivering at once: its lease was lost, or
    /// lapsed while a standby waits (see `state::lease`).
    pub fence: tokio_util::sync::CancellationToken,
    /// The lease lapsed but no standby was seen: delivery goes on, but losing the slot's
    /// connection now fences.
    pub lapsed: AtomicBool,
    /// Commit time of the transaction being handed over, on this host's clock (unix
    /// microseconds; 0 between transactions).
    pub reading_commit_us: AtomicI64,
    /// Coalescing windows open (the ticker writes ticks into the WAL while there are).
    pub open_windows: AtomicUsize,
    /// When stream time last moved (a transaction or a tick arrived), on this host's
    /// monotonic clock: milliseconds since the process started.
    pub stream_time_moved_ms: AtomicU64,
    /// What the lanes' chunk mirrors hold, in bytes (bodies and bookkeeping), over all
    /// lanes: a budget they share (see `lanes::MIRRORS_HELD`).
    pub mirrors_held: std::sync::Arc<AtomicUsize>,
    /// Events pending in all lanes together (an event bound for many lanes counts in
    /// each): a budget they share (see `lanes::PENDING_TOTAL`).
    pub pending_total: std::sync::Arc<AtomicUsize>,
}

impl Progress {
    /// How far the reader is behind its source: the age of the transaction it hands over.
    pub fn reader_lag(&self) -> Duration {
        let commit = self.reading_commit_us.load(Ordering::Relaxed);
        if commit == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(unix_micros().saturating_sub(commit).max(0) as u64)
    }
}

/// Microseconds between 1970-01-01 and PostgreSQL's epoch, 2000-01-01.
pub const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

pub fn unix_micros() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_micros() as i64)
        .unwrap_or(0)
}

/// Milliseconds on this host's monotonic clock since the first call.
pub fn monotonic_ms() -> u64 {
    static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// The current frontier as a position: every event before it was handed over.
pub fn frontier_pos(progress: &Progress) -> Pos {
    Pos {
        lsn: progress.frontier.load(Ordering::Relaxed),
        seq: 0,
    }
}
