//! The board between a backfill's runner and the pipeline: the chunk being read, and the
//! keys live changes touched between its watermarks.
//!
//! The runner pins a chunk here, writes the low watermark into the WAL, reads the rows,
//! puts them here and writes the high watermark. The pipeline, reading the stream in
//! order, opens the chunk at the low watermark, notes the key of every live change of its
//! table from then on (a truncate touches every row), and at the high watermark takes the
//! rows whose keys no live change touched and hands them to the lanes at that place in
//! the stream. The rows it left out are the runner's to read again between new
//! watermarks: the live change may have made no event for the backfill's subscriber (a
//! rule's condition), so it cannot stand in for the read. Pure bookkeeping: no I/O, no
//! clock.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use serde_json::Value;
use tokio::sync::Notify;

use crate::config::TableName;
use crate::mapping::{ColValue, Row};

/// A row as the chunk's query returned it: each column's text, or null.
pub type TextRow = Vec<Option<String>>;

/// What the runner pins before the low watermark.
#[derive(Debug, Clone)]
pub struct Pin {
    pub backfill: i64,
    pub table: TableName,
    /// The columns the rows carry (name, type oid), in order.
    pub columns: Vec<(Arc<str>, u32)>,
    /// The key columns (a subset of `columns`): what a live change is matched by.
    pub key: Vec<Arc<str>>,
    /// The lanes (subscriber indexes) the rows go to.
    pub lanes: Arc<[usize]>,
    /// For a backfill of a document: the document (its place in the config) and the
    /// column of the rows holding its keys; the pipeline sends the documents of the rows'
    /// keys, read as it hands them over, instead of the rows.
    pub document: Option<(usize, Arc<str>)>,
}

/// The rows the pipeline hands over at the high watermark, with what they go out as.
#[derive(Debug)]
pub struct Taken {
    pub pin: Pin,
    pub rows: Vec<Row>,
    /// RFC 3339: when they were read (the events' `timestamp`).
    pub read_at: String,
}

#[derive(Debug)]
enum Phase {
    /// Pinned; the low watermark is not seen yet.
    Pinned,
    /// Between the watermarks: the keys live changes touched, or every key (a truncate).
    Open(HashSet<String>, bool),
}

#[derive(Debug)]
struct Chunk {
    pin: Pin,
    phase: Phase,
    /// Filled by the runner before it writes the high watermark.
    rows: Option<(Vec<TextRow>, String)>,
}

/// A chunk taken at its high watermark: the keys left out, and the LSN once handed over.
type Handed = (Vec<TextRow>, Option<u64>);

/// Shared by the runner and the pipeline.
#[derive(Debug, Default)]
pub struct Board {
    /// This process's run: its watermarks carry it, and the pipeline takes only those
    /// (chunk ids are per process; a replay may bring an earlier process's).
    pub run: String,
    chunks: Mutex<HashMap<u64, Chunk>>,
    /// Chunks between their watermarks: the pipeline notes keys only while some are.
    open: AtomicUsize,
    /// Chunks taken at their high watermark, by id: the keys left out (their key
    /// columns' text), and once handed over, the watermark's LSN.
    handed: Mutex<HashMap<u64, Handed>>,
    pub wake: Notify,
}

impl Board {
    pub fn new() -> Board {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        Board {
            run: format!("{:x}-{:x}", std::process::id(), nanos),
            ..Board::default()
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Chunk>> {
        self.chunks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Pins chunk `id` before its low watermark is written.
    pub fn pin(&self, id: u64, pin: Pin) {
        self.lock().insert(
            id,
            Chunk {
                pin,
                phase: Phase::Pinned,
                rows: None,
            },
        );
    }

    /// Forgets chunk `id` (read nothing, or given up).
    pub fn unpin(&self, id: u64) {
        if let Some(c) = self.lock().remove(&id) {
            if matches!(c.phase, Phase::Open(..)) {
                self.open.fetch_sub(1, Ordering::SeqCst);
            }
        }
    }

    /// The rows of chunk `id`, read at `read_at`, before its high watermark is written.
    pub fn fill(&self, id: u64, rows: Vec<TextRow>, read_at: String) {
        if let Some(c) = self.lock().get_mut(&id) {
            c.rows = Some((rows, read_at));
        }
    }

    /// The low watermark of chunk `id` is seen in the stream (again, after a reconnect:
    /// the keys noted so far stay).
    pub fn low(&self, id: u64) {
        if let Some(c) = self.lock().get_mut(&id) {
            if matches!(c.phase, Phase::Pinned) {
                c.phase = Phase::Open(HashSet::new(), false);
                self.open.fetch_add(1, Ordering::SeqCst);
            }
        }
    }

    /// The type oids of chunk `id`'s columns.
    pub fn columns(&self, id: u64) -> Option<Vec<u32>> {
        Some(
            self.lock()
                .get(&id)?
                .pin
                .columns
                .iter()
                .map(|(_, oid)| *oid)
                .collect(),
        )
    }

    /// Whether any chunk is between its watermarks (cheap: the pipeline asks per change).
    pub fn any_open(&self) -> bool {
        self.open.load(Ordering::Relaxed) > 0
    }

    /// A live change of `table` touched the row with these column values (its new row,
    /// and its old one when it carried the key). Noted for every open chunk of the table.
    pub fn touched(&self, table: &TableName, images: &[&Row]) {
        let mut chunks = self.lock();
        for c in chunks.values_mut().filter(|c| &c.pin.table == table) {
            let Phase::Open(seen, _) = &mut c.phase else {
                continue;
            };
            for image in images {
                if let Some(key) = key_of(&c.pin.key, image) {
                    seen.insert(key);
                }
            }
        }
    }

    /// `table` was truncated: every row of its open chunks is touched.
    pub fn truncated(&self, table: &TableName) {
        for c in self.lock().values_mut().filter(|c| &c.pin.table == table) {
            if let Phase::Open(_, all) = &mut c.phase {
                *all = true;
            }
        }
    }

    /// The high watermark of chunk `id` is seen: its rows whose keys no live
    /// change touched, once (None when the chunk is not this process's, or was taken).
    /// `to_value` turns a column's text into the value its events carry.
    pub fn high(&self, id: u64, to_value: impl Fn(u32, String) -> Value) -> Option<Taken> {
        let mut chunks = self.lock();
        // The runner fills a chunk before it writes its high watermark: unfilled, it is
        // not this chunk.
        chunks.get(&id)?.rows.as_ref()?;
        let chunk = chunks.remove(&id)?;
        drop(chunks);
        let (seen, all) = match chunk.phase {
            Phase::Open(seen, all) => {
                self.open.fetch_sub(1, Ordering::SeqCst);
                (seen, all)
            }
            // A high watermark without its low one cannot come (it is written after);
            // if it did, no live change is known and every row goes.
            Phase::Pinned => (HashSet::new(), false),
        };
        let (rows, read_at) = chunk.rows.unwrap_or_default();
        let key_at: Vec<usize> = (chunk.pin.key.iter())
            .filter_map(|k| chunk.pin.columns.iter().position(|(c, _)| c == k))
            .collect();
        let mut kept = Vec::with_capacity(rows.len());
        let mut left_out = Vec::new();
        for row in rows {
            let key_text: TextRow = key_at.iter().map(|&i| row.get(i).cloned().flatten()).collect();
            let image: Row = chunk
                .pin
                .columns
                .iter()
                .zip(row)
                .map(|((name, oid), text)| {
                    let v = text.map_or(Value::Null, |t| to_value(*oid, t));
                    (name.clone(), ColValue::Value(v))
                })
                .collect();
            match key_of(&chunk.pin.key, &image) {
                // A document is read as it is handed over, so after every live change
                // before it: no key is left out.
                _ if chunk.pin.document.is_some() => kept.push(image),
                _ if all => left_out.push(key_text),
                Some(k) if seen.contains(&k) => left_out.push(key_text),
                _ => kept.push(image),
            }
        }
        self.handed
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, (left_out, None));
        Some(Taken {
            pin: chunk.pin,
            rows: kept,
            read_at,
        })
    }

    /// The pipeline handed chunk `id`'s events to the lanes at `lsn`.
    pub fn hand(&self, id: u64, lsn: u64) {
        if let Some(h) = self.handed.lock().unwrap_or_else(|p| p.into_inner()).get_mut(&id) {
            h.1 = Some(lsn);
        }
        self.wake.notify_waiters();
    }

    /// Once chunk `id` was handed over (forgotten then): the LSN, and the keys of the rows
    /// left out, to be read again.
    pub fn handed(&self, id: u64) -> Option<(u64, Vec<TextRow>)> {
        let mut handed = self.handed.lock().unwrap_or_else(|p| p.into_inner());
        let lsn = handed.get(&id)?.1?;
        handed.remove(&id).map(|(keys, _)| (lsn, keys))
    }
}

/// The key of a row image as one string: the key columns' values in order. None when the
/// image lacks one of them (an old image that carried other columns).
fn key_of(key: &[Arc<str>], image: &Row) -> Option<String> {
    let mut values = Vec::with_capacity(key.len());
    for col in key {
        match image.iter().find(|(c, _)| c == col)? {
            (_, ColValue::Value(v)) => values.push(v),
            (_, ColValue::Unchanged) => return None,
        }
    }
    serde_json::to_string(&values).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pin() -> Pin {
        Pin {
            backfill: 1,
            table: TableName {
                schema: "public".into(),
                name: "products".into(),
            },
            columns: vec![(Arc::from("id"), 20), (Arc::from("title"), 25)],
            key: vec![Arc::from("id")],
            lanes: Arc::from(vec![0usize]),
            document: None,
        }
    }

    fn to_value(oid: u32, text: String) -> Value {
        match oid {
            20 => Value::Number(text.parse::<i64>().unwrap().into()),
            _ => Value::String(text),
        }
    }

    fn row(id: i64, title: &str) -> TextRow {
        vec![Some(id.to_string()), Some(title.to_string())]
    }

    fn image(id: i64) -> Row {
        vec![
            (Arc::from("id"), ColValue::Value(Value::from(id))),
            (Arc::from("title"), ColValue::Value(Value::from("live"))),
        ]
    }

    #[test]
    fn a_key_changed_between_the_watermarks_is_left_to_its_live_event() {
        let board = Board::default();
        board.pin(7, pin());
        let products = pin().table;
        // Before the low watermark: the read is newer, the row stays.
        board.touched(&products, &[&image(1)]);
        board.low(7);
        assert!(board.any_open());
        board.touched(&products, &[&image(2)]);
        // Another table's change of the same key does not count.
        let other = TableName {
            schema: "public".into(),
            name: "prices".into(),
        };
        board.touched(&other, &[&image(3)]);
        board.fill(7, vec![row(1, "a"), row(2, "b"), row(3, "c")], "t".into());
        let taken = board.high(7, to_value).unwrap();
        let ids: Vec<_> = taken.rows.iter().map(|r| r[0].1.clone()).collect();
        assert_eq!(
            ids,
            vec![ColValue::Value(Value::from(1)), ColValue::Value(Value::from(3))]
        );
        assert!(!board.any_open());
        assert_eq!(board.handed(7), None);
        board.hand(7, 100);
        // The row left out is to be read again, by its key.
        assert_eq!(board.handed(7), Some((100, vec![vec![Some("2".to_string())]])));
        assert_eq!(board.handed(7), None);
        // Seen again after a reconnect: nothing more to hand over.
        assert!(board.high(7, to_value).is_none());
    }

    #[test]
    fn watermarks_of_unknown_chunks_are_ignored_and_a_second_low_keeps_the_keys() {
        let board = Board::default();
        board.low(9);
        assert!(board.high(9, to_value).is_none());
        board.pin(1, pin());
        board.low(1);
        board.touched(&pin().table, &[&image(5)]);
        board.low(1);
        board.fill(1, vec![row(5, "x"), row(6, "y")], "t".into());
        let taken = board.high(1, to_value).unwrap();
        assert_eq!(taken.rows.len(), 1);
        board.hand(1, 10);
        assert_eq!(board.handed(1), Some((10, vec![vec![Some("5".to_string())]])));
    }

    #[test]
    fn an_old_image_without_the_key_touches_nothing_and_unpin_closes() {
        let board = Board::default();
        board.pin(2, pin());
        board.low(2);
        let partial: Row = vec![(Arc::from("title"), ColValue::Value(Value::from("x")))];
        board.touched(&pin().table, &[&partial]);
        board.unpin(2);
        assert!(!board.any_open());
        // Rows not filled yet: a high watermark hands nothing over.
        board.pin(3, pin());
        assert!(board.high(3, to_value).is_none());
    }

    #[test]
    fn a_truncate_between_the_watermarks_leaves_every_row_to_be_read_again() {
        let board = Board::default();
        board.pin(4, pin());
        board.low(4);
        board.truncated(&pin().table);
        board.fill(4, vec![row(1, "a"), row(2, "b")], "t".into());
        let taken = board.high(4, to_value).unwrap();
        assert_eq!(taken.rows.len(), 0);
        board.hand(4, 9);
        assert_eq!(board.handed(4).unwrap().1.len(), 2);
    }
}
