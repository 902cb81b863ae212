//! Prometheus metrics: names as constants in one place, counters as atomics, rendered as
//! text exposition on `/metrics`. Per-lane figures are read from the lanes at scrape time.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};

pub const CHANGES_DECODED: &str = "walhook_changes_decoded_total";
pub const EVENTS_EMITTED: &str = "walhook_events_emitted_total";
pub const RULE_ERRORS: &str = "walhook_rule_errors_total";
pub const CHANGES_UNMATCHED: &str = "walhook_changes_unmatched_total";
pub const KEY_COLUMNS_MISSING: &str = "walhook_key_columns_missing_total";
pub const DELIVERIES: &str = "walhook_deliveries_total";
pub const DELIVERY_SECONDS: &str = "walhook_delivery_duration_seconds";
pub const LANE_SPILLING: &str = "walhook_lane_spilling";
pub const LANE_DOWN: &str = "walhook_lane_down";
pub const SUBSCRIBER_STOPPED: &str = "walhook_subscriber_stopped";
pub const LANE_BACKLOG: &str = "walhook_lane_backlog_events";
pub const SPILL_ROWS: &str = "walhook_spill_rows_written_total";
pub const LANE_HELD: &str = "walhook_lane_held_seconds_total";
pub const LANE_SPILL_HELD: &str = "walhook_lane_spill_held_seconds_total";
pub const REPLICATION_LAG: &str = "walhook_replication_lag_bytes";
pub const REPLICATION_LAG_SECONDS: &str = "walhook_replication_lag_seconds";
pub const RETAINED_WAL: &str = "walhook_slot_retained_wal_bytes";
pub const CONFIRMED_LSN: &str = "walhook_confirmed_flush_lsn";
pub const STREAMING: &str = "walhook_replication_streaming";
pub const LEADER: &str = "walhook_leader";
pub const COALESCE_OPEN: &str = "walhook_coalesce_open_windows";
pub const COALESCE_CLOSED_EARLY: &str = "walhook_coalesce_closed_early_total";
pub const CHANGES_COALESCED: &str = "walhook_changes_coalesced_total";
pub const BACKFILL_ROWS: &str = "walhook_backfill_rows_total";
pub const BACKFILL_REMAINING: &str = "walhook_backfill_remaining_rows";
pub const DOCUMENTS_MADE: &str = "walhook_documents_made_total";
pub const DOCUMENT_ERRORS: &str = "walhook_document_errors_total";
pub const DOCUMENT_KEYS_UNKNOWN: &str = "walhook_document_keys_unknown_total";

/// Upper bounds (seconds) of the delivery latency histogram.
pub const LATENCY_BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

#[derive(Default)]
pub struct Counter(AtomicU64);

impl Counter {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }
    pub fn set(&self, v: u64) {
        self.0.store(v, Ordering::Relaxed);
    }
    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// A lane's last failed attempt, as the console shows it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct LastFailure {
    /// The event's webhook id.
    pub id: String,
    /// When it was sent (RFC 3339, UTC).
    pub at: String,
    /// The status answered; none when no answer came.
    pub status: Option<u16>,
    /// What went wrong, with an excerpt of the answer.
    pub error: String,
}

/// Delivery outcomes and latency of one lane.
#[derive(Default)]
pub struct LaneMetrics {
    pub delivered: Counter,
    pub retried: Counter,
    pub dead: Counter,
    pub spill_rows: Counter,
    /// Time the reader waited for room in this (full, healthy) lane.
    pub held_micros: Counter,
    /// Time the reader waited for this spilling lane's writes to the state database.
    pub spill_held_micros: Counter,
    /// The subscriber seems down: probed one attempt at a time.
    pub down: std::sync::atomic::AtomicBool,
    /// The subscriber is paused or disabled: nothing is sent to it.
    pub stopped: std::sync::atomic::AtomicBool,
    buckets: [Counter; LATENCY_BUCKETS.len()],
    count: Counter,
    sum_micros: Counter,
    /// The last failed attempt, with its event's id (for the console).
    last_failure: std::sync::Mutex<Option<LastFailure>>,
    /// Since when (unix ms) attempts have failed without a delivery between; 0 when the
    /// last attempt delivered.
    failing_since_ms: AtomicU64,
}

impl LaneMetrics {
    pub fn observe(&self, seconds: f64) {
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.buckets[i].add(1);
            }
        }
        self.count.add(1);
        self.sum_micros.add((seconds * 1e6) as u64);
    }

    /// Keeps a failed attempt as the lane's last.
    pub fn note_failure(&self, failure: LastFailure) {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        let _ = self
            .failing_since_ms
            .compare_exchange(0, now, Ordering::Relaxed, Ordering::Relaxed);
        *self.last_failure.lock().unwrap_or_else(|p| p.into_inner()) = Some(failure);
    }

    /// An attempt delivered: the lane is no longer failing.
    pub fn note_delivered(&self) {
        if self.failing_since_ms.load(Ordering::Relaxed) != 0 {
            self.failing_since_ms.store(0, Ordering::Relaxed);
        }
    }

    /// Since when (unix ms) attempts have failed with none delivered, if they have.
    pub fn failing_since_ms(&self) -> Option<u64> {
        Some(self.failing_since_ms.load(Ordering::Relaxed)).filter(|&t| t != 0)
    }

    /// The last failed attempt, if any failed.
    pub fn last_failure(&self) -> Option<LastFailure> {
        self.last_failure
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The latency histogram as counted so far: per bucket of `LATENCY_BUCKETS`
    /// (cumulative, as Prometheus has them) and in all.
    pub fn latency_counts(&self) -> ([u64; LATENCY_BUCKETS.len()], u64) {
        (std::array::from_fn(|i| self.buckets[i].get()), self.count.get())
    }
}

/// Pipeline-wide figures.
#[derive(Default)]
pub struct Metrics {
    pub changes_decoded: Counter,
    pub events_emitted: Counter,
    /// Per rule (`events[N]`): changes it could not be evaluated for.
    pub rule_errors: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Per table (as the stream names it): changes of a published table no rule takes.
    pub unmatched: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Per rule: changes whose ordering key names a column the table no longer has.
    pub key_columns_missing: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    pub lag_bytes: Counter,
    /// The server's flush_lag of walhook's connection, in milliseconds.
    pub lag_millis: Counter,
    /// WAL the server keeps for the slot (from its restart LSN), in bytes.
    pub retained_wal_bytes: Counter,
    pub confirmed_lsn: Counter,
    pub streaming: Counter,
    /// 1 while this process holds the slot's lease, 0 while it stands by.
    pub leader: Counter,
    /// Coalescing windows open now.
    pub coalesce_open: Counter,
    /// Windows closed early because their rule had `max_open` open.
    pub coalesce_closed_early: Counter,
    /// Changes taken into coalescing windows.
    pub changes_coalesced: Counter,
    /// Per subscriber: rows backfills read for it.
    pub backfill_rows: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Per subscriber: rows its running backfill has left, as estimated.
    pub backfill_remaining: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Per document: documents read (one per event, whatever the routes).
    pub documents_made: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Per document: failed tries to read documents (each is tried again).
    pub document_errors: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
    /// Per document: source changes that did not carry the document key.
    pub document_keys_unknown: std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
}

/// One lane's figures as rendered.
pub struct LaneSample<'a> {
    pub name: &'a str,
    pub metrics: &'a LaneMetrics,
    pub spilling: bool,
    pub backlog: usize,
}

/// A label value with `\\`, `"` and newlines escaped, as the text format wants.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

/// Adds one to `key`'s count in a labelled counter.
pub fn bump(counts: &std::sync::Mutex<std::collections::BTreeMap<String, u64>>, key: &str, n: u64) {
    let mut counts = counts.lock().unwrap_or_else(|p| p.into_inner());
    match counts.get_mut(key) {
        Some(c) => *c += n,
        None => {
            counts.insert(key.to_string(), n);
        }
    }
}

/// A metric with one label: its head, then one line per label value.
fn labelled(
    out: &mut String,
    (name, kind): (&str, &str),
    help: &str,
    key: &str,
    counts: &std::sync::Mutex<std::collections::BTreeMap<String, u64>>,
) {
    head(out, name, kind, help);
    for (value, n) in counts.lock().unwrap_or_else(|p| p.into_inner()).iter() {
        let _ = writeln!(out, "{name}{{{key}=\"{}\"}} {n}", label(value));
    }
}

/// A metric with a line per lane: its head, then `value` of each lane.
fn per_lane(
    out: &mut String,
    lanes: &[LaneSample<'_>],
    (name, kind): (&str, &str),
    help: &str,
    value: impl Fn(&LaneSample<'_>) -> String,
) {
    head(out, name, kind, help);
    for l in lanes {
        let _ = writeln!(out, "{name}{{subscriber=\"{}\"}} {}", l.name, value(l));
    }
}

/// A counter of microseconds, in seconds.
fn seconds(micros: &Counter) -> String {
    format!("{:.6}", micros.get() as f64 / 1e6)
}

/// A metric's `# HELP` and `# TYPE` lines.
fn head(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

pub fn render(m: &Metrics, lanes: &[LaneSample<'_>]) -> String {
    let mut out = String::new();
    head(
        &mut out,
        CHANGES_DECODED,
        "counter",
        "Row changes decoded from the replication stream.",
    );
    let _ = writeln!(out, "{CHANGES_DECODED} {}", m.changes_decoded.get());
    head(
        &mut out,
        EVENTS_EMITTED,
        "counter",
        "Events produced by mapping rules.",
    );
    let _ = writeln!(out, "{EVENTS_EMITTED} {}", m.events_emitted.get());
    labelled(
        &mut out,
        (RULE_ERRORS, "counter"),
        "Changes a rule could not be evaluated for (its condition failed at run time); they made no event for that rule.",
        "rule",
        &m.rule_errors,
    );
    labelled(
        &mut out,
        (CHANGES_UNMATCHED, "counter"),
        "Changes of a published table that no rule takes (a table renamed since the rules were loaded, a partition of an uncaptured table, or a table left in the publication).",
        "table",
        &m.unmatched,
    );
    labelled(
        &mut out,
        (KEY_COLUMNS_MISSING, "counter"),
        "Changes whose rule orders by a column the table no longer has (its events share one null key).",
        "rule",
        &m.key_columns_missing,
    );
    head(
        &mut out,
        CHANGES_COALESCED,
        "counter",
        "Changes taken into coalescing windows (each window makes one event).",
    );
    let _ = writeln!(out, "{CHANGES_COALESCED} {}", m.changes_coalesced.get());
    labelled(
        &mut out,
        (BACKFILL_ROWS, "counter"),
        "Rows backfills read for a subscriber (a row read again because a live change touched it counts once).",
        "subscriber",
        &m.backfill_rows,
    );
    labelled(
        &mut out,
        (BACKFILL_REMAINING, "gauge"),
        "Rows the subscriber's running backfill has left to read, from the planner's estimate (0 when none runs).",
        "subscriber",
        &m.backfill_remaining,
    );
    labelled(
        &mut out,
        (DOCUMENTS_MADE, "counter"),
        "Documents read by their query, one per event (a document with no row makes a delete).",
        "document",
        &m.documents_made,
    );
    labelled(
        &mut out,
        (DOCUMENT_ERRORS, "counter"),
        "Failed tries to read documents; each is tried again with backoff, and the stream waits for it.",
        "document",
        &m.document_errors,
    );
    labelled(
        &mut out,
        (DOCUMENT_KEYS_UNKNOWN, "counter"),
        "Changes of a document's source that did not carry its key column (a delete under a replica identity without it, a truncate): they made no document due.",
        "document",
        &m.document_keys_unknown,
    );
    head(&mut out, COALESCE_OPEN, "gauge", "Coalescing windows open now.");
    let _ = writeln!(out, "{COALESCE_OPEN} {}", m.coalesce_open.get());
    head(
        &mut out,
        COALESCE_CLOSED_EARLY,
        "counter",
        "Coalescing windows closed before their deadline because their rule had max_open windows open.",
    );
    let _ = writeln!(out, "{COALESCE_CLOSED_EARLY} {}", m.coalesce_closed_early.get());
    head(
        &mut out,
        REPLICATION_LAG,
        "gauge",
        "Bytes of WAL between the server's current position and the slot's confirmed flush LSN, read from the server every 5 s.",
    );
    let _ = writeln!(out, "{REPLICATION_LAG} {}", m.lag_bytes.get());
    head(
        &mut out,
        REPLICATION_LAG_SECONDS,
        "gauge",
        "How long after the server flushed a commit walhook confirmed it (the server's flush_lag for walhook's connection; 0 when caught up, or when walhook's role may not read it), read every 5 s.",
    );
    let _ = writeln!(
        out,
        "{REPLICATION_LAG_SECONDS} {}",
        m.lag_millis.get() as f64 / 1000.0
    );
    head(
        &mut out,
        RETAINED_WAL,
        "gauge",
        "Bytes of WAL the server keeps for the slot (from its restart LSN), read every 5 s.",
    );
    let _ = writeln!(out, "{RETAINED_WAL} {}", m.retained_wal_bytes.get());
    head(
        &mut out,
        CONFIRMED_LSN,
        "gauge",
        "Flush LSN last confirmed to the slot.",
    );
    let _ = writeln!(out, "{CONFIRMED_LSN} {}", m.confirmed_lsn.get());
    head(
        &mut out,
        STREAMING,
        "gauge",
        "1 while the replication stream is up.",
    );
    let _ = writeln!(out, "{STREAMING} {}", m.streaming.get());
    head(
        &mut out,
        LEADER,
        "gauge",
        "1 while this walhook holds the slot's lease (leads), 0 while it stands by.",
    );
    let _ = writeln!(out, "{LEADER} {}", m.leader.get());
    head(
        &mut out,
        DELIVERIES,
        "counter",
        "Delivery attempts by subscriber and outcome.",
    );
    for l in lanes {
        for (outcome, c) in [
            ("delivered", &l.metrics.delivered),
            ("retry", &l.metrics.retried),
            ("dead", &l.metrics.dead),
        ] {
            let _ = writeln!(
                out,
                "{DELIVERIES}{{subscriber=\"{}\",outcome=\"{outcome}\"}} {}",
                l.name,
                c.get()
            );
        }
    }
    head(
        &mut out,
        DELIVERY_SECONDS,
        "histogram",
        "Duration of delivery requests.",
    );
    for l in lanes {
        for (i, bound) in LATENCY_BUCKETS.iter().enumerate() {
            let _ = writeln!(
                out,
                "{DELIVERY_SECONDS}_bucket{{subscriber=\"{}\",le=\"{bound}\"}} {}",
                l.name,
                l.metrics.buckets[i].get()
            );
        }
        let count = l.metrics.count.get();
        let _ = writeln!(
            out,
            "{DELIVERY_SECONDS}_bucket{{subscriber=\"{}\",le=\"+Inf\"}} {count}",
            l.name
        );
        let _ = writeln!(
            out,
            "{DELIVERY_SECONDS}_count{{subscriber=\"{}\"}} {count}",
            l.name
        );
        let _ = writeln!(
            out,
            "{DELIVERY_SECONDS}_sum{{subscriber=\"{}\"}} {}",
            l.name,
            l.metrics.sum_micros.get() as f64 / 1e6
        );
    }
    per_lane(
        &mut out,
        lanes,
        (LANE_SPILLING, "gauge"),
        "1 while the lane serves from the spill log.",
        |l| u8::from(l.spilling).to_string(),
    );
    per_lane(
        &mut out,
        lanes,
        (LANE_DOWN, "gauge"),
        "1 while the subscriber seems down: its backlog stays spilled and one attempt at a time probes it.",
        |l| u8::from(l.metrics.down.load(Ordering::Relaxed)).to_string(),
    );
    per_lane(
        &mut out,
        lanes,
        (SUBSCRIBER_STOPPED, "gauge"),
        "1 while the subscriber is paused or disabled: its events wait in the spill log.",
        |l| u8::from(l.metrics.stopped.load(Ordering::Relaxed)).to_string(),
    );
    per_lane(
        &mut out,
        lanes,
        (LANE_BACKLOG, "gauge"),
        "Events of the lane held in memory, not yet delivered or spilled.",
        |l| l.backlog.to_string(),
    );
    per_lane(
        &mut out,
        lanes,
        (SPILL_ROWS, "counter"),
        "Events written to the spill log.",
        |l| l.metrics.spill_rows.get().to_string(),
    );
    per_lane(
        &mut out,
        lanes,
        (LANE_HELD, "counter"),
        "Time the reader waited for room in the lane while it was full but keeping up.",
        |l| seconds(&l.metrics.held_micros),
    );
    per_lane(
        &mut out,
        lanes,
        (LANE_SPILL_HELD, "counter"),
        "Time the reader waited for the lane's writes to the spill log (every other lane waited too).",
        |l| seconds(&l.metrics.spill_held_micros),
    );
    out
}
