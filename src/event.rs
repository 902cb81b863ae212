//! The unit that flows from mapping to the lanes: one event, its position in the WAL and
//! its rendered body, shared (`Arc`) by every lane it is routed to.

use std::fmt;
use std::sync::Arc;

/// Position of an event in the change stream: the commit LSN of its transaction and a
/// sequence within it (`change index << 16 | rule index`). Totally ordered, stable across
/// replays, and the basis of event ids and watermarks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Pos {
    pub lsn: u64,
    pub seq: u64,
}

impl Pos {
    pub const ZERO: Pos = Pos { lsn: 0, seq: 0 };

    pub fn new(lsn: u64, change: u32, rule: u16) -> Pos {
        Pos {
            lsn,
            seq: (u64::from(change) << 16) | u64::from(rule),
        }
    }

    /// The position right after this one.
    pub fn next(self) -> Pos {
        Pos {
            lsn: self.lsn,
            seq: self.seq + 1,
        }
    }
}

impl fmt::Display for Pos {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}#{}", format_lsn(self.lsn), self.seq)
    }
}

/// What a lane has done, as it saves it in the state database (`walhook.lanes`): every
/// event of the lane before `low` is done (delivered, dead or durably spilled), and so is
/// every event before `high` that is not in `pending`. `pending` lists the events in
/// `[low, high)` still to do, ascending; `low` is its first, or `high` when it is empty.
///
/// One slow or retried event keeps `low` where it is (and with it the slot's confirmed
/// LSN) while later events go out; `high` and `pending` say which of those are done, so a
/// restart skips them instead of sending them again.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Mark {
    pub low: Pos,
    pub high: Pos,
    pub pending: Vec<Pos>,
}

impl Mark {
    /// Everything before `pos` done, nothing known after it.
    pub fn at(pos: Pos) -> Mark {
        Mark {
            low: pos,
            high: pos,
            pending: Vec::new(),
        }
    }

    /// The mark of events `pending` (ascending) not done and everything else before `high`
    /// done, keeping at most `max` of them: past that, `high` comes down to the first one
    /// left out (what is before it stays exact).
    pub fn bounded(mut pending: Vec<Pos>, mut high: Pos, max: usize) -> Mark {
        pending.retain(|p| *p < high);
        if pending.len() > max {
            high = pending[max];
            pending.truncate(max);
        }
        Mark {
            low: pending.first().copied().unwrap_or(high),
            high,
            pending,
        }
    }

    /// Whether the event at `pos` is known to be done.
    pub fn done(&self, pos: Pos) -> bool {
        pos < self.low || (pos < self.high && self.pending.binary_search(&pos).is_err())
    }
}

/// Set in the sequence of a row read by a backfill: it goes out at its chunk's high
/// watermark (a logical message, its `lsn`), numbered by row and rule within the chunk.
pub const READ: u64 = 1 << 61;

#[derive(Debug)]
pub struct Event {
    pub pos: Pos,
    /// `webhook-id`: derived from (commit LSN, change index, rule), so a replay of the same
    /// change produces the same id.
    pub id: String,
    pub event_type: String,
    /// Ordering key: table and key values; events of one key reach a subscriber in order.
    pub key: String,
    /// The row's ordering key before this change, when the change moved the row to
    /// another key (an update of key columns). The event is ordered under both keys: it
    /// goes out after every earlier event of either, and before every later one.
    pub prev_key: Option<String>,
    pub body: bytes::Bytes,
}

impl Event {
    /// The ordering keys the event is queued under: its key, and the key its row had
    /// before when that differs.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        std::iter::once(self.key.as_str()).chain(self.prev_key.as_deref().filter(|p| *p != self.key))
    }

    /// Its ordering keys other than `key`.
    pub fn other_keys<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> {
        self.keys().filter(move |k| *k != key)
    }
}

pub type EventRef = Arc<Event>;

/// `0/16B3748` notation.
pub fn format_lsn(lsn: u64) -> String {
    let mut out = String::with_capacity(17);
    push_hex(&mut out, lsn >> 32, 1, HEX_UPPER);
    out.push('/');
    push_hex(&mut out, lsn & 0xFFFF_FFFF, 1, HEX_UPPER);
    out
}

pub const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";
pub const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";

/// Appends `v` in hexadecimal with `digits` (`HEX_LOWER` or `HEX_UPPER`), zero-padded to
/// `width`: what `{:0width$x}` writes, without the formatting machinery (ids and LSNs are
/// written several times per change, and `format!` was 5% of a delivery's CPU).
pub fn push_hex(out: &mut String, v: u64, width: usize, digits: &[u8; 16]) {
    let len = (64 - v.leading_zeros() as usize).div_ceil(4).max(width).max(1);
    out.reserve(len);
    for i in (0..len).rev() {
        let nibble = if i < 16 { (v >> (i * 4)) & 0xF } else { 0 };
        out.push(char::from(digits[nibble as usize]));
    }
}

pub fn parse_lsn(s: &str) -> Option<u64> {
    let (hi, lo) = s.split_once('/')?;
    let hi = u64::from_str_radix(hi, 16).ok()?;
    let lo = u64::from_str_radix(lo, 16).ok()?;
    if hi > u64::from(u32::MAX) || lo > u64::from(u32::MAX) {
        return None;
    }
    Some((hi << 32) | lo)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_is_written_as_format_writes_it() {
        let values = [
            0u64,
            1,
            9,
            10,
            15,
            16,
            255,
            0x16B3748,
            u64::from(u32::MAX),
            1 << 40,
            u64::MAX,
        ];
        for v in values {
            for width in [0, 1, 8, 16, 20] {
                let mut lower = String::new();
                push_hex(&mut lower, v, width, HEX_LOWER);
                assert_eq!(lower, format!("{v:0width$x}"), "{v} at width {width}");
                let mut upper = String::from("x");
                push_hex(&mut upper, v, width, HEX_UPPER);
                assert_eq!(upper, format!("x{v:0width$X}"), "{v} at width {width}");
            }
        }
        assert_eq!(format_lsn(u64::MAX), "FFFFFFFF/FFFFFFFF");
        assert_eq!(format_lsn(0), "0/0");
    }

    #[test]
    fn lsn_round_trips_and_positions_order() {
        assert_eq!(format_lsn(0x16B3748), "0/16B3748");
        assert_eq!(parse_lsn("1/A"), Some((1 << 32) | 10));
        assert_eq!(parse_lsn(&format_lsn(0xABCD_0000_1234)), Some(0xABCD_0000_1234));
        assert_eq!(parse_lsn("x/1"), None);
        assert!(Pos::new(5, 1, 0) < Pos::new(5, 1, 1));
        assert!(Pos::new(5, 1, 9) < Pos::new(5, 2, 0));
        assert!(Pos::new(5, 9, 0) < Pos::new(6, 0, 0));
        assert_eq!(Pos::new(5, 1, 0).next(), Pos::new(5, 1, 1));
    }

    #[test]
    fn a_mark_knows_what_is_done_around_the_events_still_pending() {
        let p = |lsn| Pos::new(lsn, 0, 0);
        let m = Mark::bounded(vec![p(10), p(14)], p(20), 100);
        assert_eq!((m.low, m.high), (p(10), p(20)));
        assert!(m.done(p(9)));
        assert!(!m.done(p(10)));
        assert!(m.done(p(11)) && m.done(p(13)));
        assert!(!m.done(p(14)));
        assert!(m.done(p(19)));
        assert!(!m.done(p(20)) && !m.done(p(25)));
        // Nothing pending: everything before high is done.
        assert_eq!(Mark::bounded(Vec::new(), p(20), 100), Mark::at(p(20)));
        assert!(Mark::at(p(20)).done(p(19)) && !Mark::at(p(20)).done(p(20)));
        // Past the bound, high comes down to the first one left out: exact below it.
        let m = Mark::bounded(vec![p(10), p(12), p(14), p(16)], p(20), 2);
        assert_eq!(
            (m.low, m.high, m.pending.clone()),
            (p(10), p(14), vec![p(10), p(12)])
        );
        assert!(m.done(p(13)) && !m.done(p(14)) && !m.done(p(15)) && !m.done(p(16)));
        // A bound of none is the low watermark alone.
        assert_eq!(Mark::bounded(vec![p(10), p(12)], p(20), 0), Mark::at(p(10)));
        // Pending events at or past high are not listed.
        assert_eq!(Mark::bounded(vec![p(20)], p(20), 10), Mark::at(p(20)));
    }
}
