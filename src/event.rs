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
    format!("{:X}/{:X}", lsn >> 32, lsn & 0xFFFF_FFFF)
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
}
