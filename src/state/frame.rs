//! A chunk's events as one value (`walhook.spill_chunks.frame`): encoded and
//! lz4-compressed by walhook, stored by the state database as it is.
//!
//! Seven arrays per chunk made the state database (often the source) parse and check
//! every element, compress each column, and receive the whole uncompressed chunk: the
//! cost a failing subscriber put on the source. A frame is one `bytea` the server copies.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! frame   = version:u8 (1)  codec:u8 (1: an lz4 frame)  raw_len:u32  payload
//! payload = an lz4 frame (linked 64 KiB blocks, a content checksum) of raw_len bytes:
//!           count:u32  event{count}
//! event   = lsn:u64  seq:u64  id:str  type:str  key:str  prev_key:opt  body:bytes
//! str, bytes = len:u32 data;   opt = len:u32 (0xFFFF_FFFF: none) data
//! ```
//!
//! The lz4 frame is written as the events are encoded, 64 KiB at a time: a chunk of 8 MiB
//! is never held uncompressed beside its events. An incompressible block is stored as it
//! is, so a frame is at most a little larger than its events.
//!
//! A frame is read back from the database, so decoding trusts nothing: a damaged or
//! foreign value is an error, never a panic, and allocates at most what its own bytes can
//! expand to. The content checksum (lz4's xxh32 of the payload) makes damage to the bytes
//! of an event's body an error too, where it would otherwise decode into a wrong body and
//! be delivered; it costs about 0.1 s per million events. Frames written without one (the
//! first walhook with frames) read alike.

use std::io::{Read, Write};

use lz4_flex::frame::{BlockMode, BlockSize, FrameDecoder, FrameEncoder, FrameInfo};

use crate::event::{Event, Pos};

const VERSION: u8 = 1;
const LZ4_FRAME: u8 = 1;
const HEADER: usize = 6;
const NONE: u32 = u32::MAX;
/// The fewest bytes an event takes in a payload: positions and five lengths.
const MIN_EVENT: usize = 8 + 8 + 5 * 4;
/// lz4 expands a block at most this many times (a run of one byte).
const LZ4_MAX_RATIO: usize = 255;

/// Why a stored frame cannot be read.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    #[error("it is {0} bytes, shorter than a frame's header")]
    Short(usize),
    #[error("it is frame version {0}, which this walhook does not know (a newer walhook wrote it)")]
    Version(u8),
    #[error("unknown compression {0}")]
    Codec(u8),
    #[error("it claims {claimed} bytes uncompressed, more than {stored} compressed bytes can hold")]
    Size { claimed: usize, stored: usize },
    #[error("lz4: {0}")]
    Lz4(String),
    #[error("its events end early, at byte {0}")]
    Truncated(usize),
    #[error("{0} bytes follow its last event")]
    Trailing(usize),
    #[error("an event's {0} is not UTF-8")]
    Utf8(&'static str),
    #[error("{0} bytes of events are too many for a frame")]
    TooLarge(usize),
}

/// The largest payload a frame holds: chunks of more (one large event) are written as
/// arrays (`State::spill_chunk`), and a frame that claims more is damaged, so decoding
/// never allocates more than this.
pub const MAX_RAW: usize = 16 << 20;

/// The bytes of the payload a frame of these events holds, uncompressed.
pub fn payload_len(events: &[&Event]) -> usize {
    events
        .iter()
        .map(|e| {
            MIN_EVENT
                + e.id.len()
                + e.event_type.len()
                + e.key.len()
                + e.prev_key.as_ref().map_or(0, String::len)
                + e.body.len()
        })
        .sum::<usize>()
        + 4
}

/// Encodes events as a frame; at most `MAX_RAW` bytes of payload.
pub fn encode(events: &[&Event]) -> Result<Vec<u8>, FrameError> {
    let raw = payload_len(events);
    if raw > MAX_RAW {
        return Err(FrameError::TooLarge(raw));
    }
    // Every length is below MAX_RAW, so none is taken for NONE.
    let raw_len = raw as u32;
    // Room for incompressible events (blocks stored as they are, 4 bytes each more);
    // what is not written is never touched.
    let mut out = Vec::with_capacity(HEADER + 32 + raw + raw / (64 << 10) * 4 + 4);
    out.extend_from_slice(&[VERSION, LZ4_FRAME]);
    out.extend_from_slice(&raw_len.to_le_bytes());
    let info = FrameInfo::new()
        .block_size(BlockSize::Max64KB)
        .block_mode(BlockMode::Linked)
        .content_size(Some(raw as u64))
        .content_checksum(true);
    let mut z = FrameEncoder::with_frame_info(info, out);
    let mut put = |parts: &[&[u8]]| {
        parts
            .iter()
            .try_for_each(|p| z.write_all(p))
            .map_err(|e| FrameError::Lz4(e.to_string()))
    };
    put(&[&(events.len() as u32).to_le_bytes()])?;
    for e in events {
        let len = |s: &str| (s.len() as u32).to_le_bytes();
        put(&[&e.pos.lsn.to_le_bytes(), &e.pos.seq.to_le_bytes()])?;
        put(&[&len(&e.id), e.id.as_bytes()])?;
        put(&[&len(&e.event_type), e.event_type.as_bytes()])?;
        put(&[&len(&e.key), e.key.as_bytes()])?;
        match &e.prev_key {
            Some(p) => put(&[&len(p), p.as_bytes()])?,
            None => put(&[&NONE.to_le_bytes()])?,
        }
        put(&[&(e.body.len() as u32).to_le_bytes(), &e.body])?;
    }
    z.finish().map_err(|e| FrameError::Lz4(e.to_string()))
}

/// Decodes a frame into its events, in the order they were encoded.
pub fn decode(frame: &[u8]) -> Result<Vec<Event>, FrameError> {
    if frame.len() < HEADER {
        return Err(FrameError::Short(frame.len()));
    }
    if frame[0] != VERSION {
        return Err(FrameError::Version(frame[0]));
    }
    if frame[1] != LZ4_FRAME {
        return Err(FrameError::Codec(frame[1]));
    }
    let claimed = u32::from_le_bytes([frame[2], frame[3], frame[4], frame[5]]) as usize;
    let stored = &frame[HEADER..];
    if claimed > MAX_RAW || claimed > stored.len().saturating_mul(LZ4_MAX_RATIO) {
        return Err(FrameError::Size {
            claimed,
            stored: stored.len(),
        });
    }
    let mut raw = Vec::with_capacity(claimed);
    // One byte more than claimed tells a longer frame from an exact one.
    FrameDecoder::new(stored)
        .take(claimed as u64 + 1)
        .read_to_end(&mut raw)
        .map_err(|e| FrameError::Lz4(e.to_string()))?;
    if raw.len() != claimed {
        return Err(FrameError::Lz4(format!(
            "{} bytes decompressed, {claimed} claimed",
            raw.len()
        )));
    }
    let mut r = Reader { buf: &raw, at: 0 };
    let count = r.u32()? as usize;
    // Every event takes at least MIN_EVENT bytes: a count the payload cannot hold
    // allocates nothing.
    if count > (raw.len() - r.at) / MIN_EVENT {
        return Err(FrameError::Truncated(raw.len()));
    }
    let mut events = Vec::with_capacity(count);
    for _ in 0..count {
        let pos = Pos {
            lsn: r.u64()?,
            seq: r.u64()?,
        };
        let id = r.string("id")?;
        let event_type = r.string("type")?;
        let key = r.string("key")?;
        let prev_key = match r.u32()? {
            NONE => None,
            len => Some(utf8(r.take(len as usize)?, "previous key")?),
        };
        let body = bytes::Bytes::copy_from_slice(r.bytes()?);
        events.push(Event {
            pos,
            id,
            event_type,
            key,
            prev_key,
            body,
        });
    }
    match raw.len() - r.at {
        0 => Ok(events),
        left => Err(FrameError::Trailing(left)),
    }
}

fn utf8(data: &[u8], what: &'static str) -> Result<String, FrameError> {
    String::from_utf8(data.to_vec()).map_err(|_| FrameError::Utf8(what))
}

struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], FrameError> {
        let end = self
            .at
            .checked_add(n)
            .filter(|end| *end <= self.buf.len())
            .ok_or(FrameError::Truncated(self.at))?;
        let data = &self.buf[self.at..end];
        self.at = end;
        Ok(data)
    }

    fn u32(&mut self) -> Result<u32, FrameError> {
        let b = self.take(4)?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }

    fn u64(&mut self) -> Result<u64, FrameError> {
        let mut b = [0; 8];
        b.copy_from_slice(self.take(8)?);
        Ok(u64::from_le_bytes(b))
    }

    fn bytes(&mut self) -> Result<&'a [u8], FrameError> {
        let len = self.u32()? as usize;
        self.take(len)
    }

    fn string(&mut self, what: &'static str) -> Result<String, FrameError> {
        utf8(self.bytes()?, what)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(lsn: u64, seq: u64, key: &str, prev_key: Option<&str>, body: &[u8]) -> Event {
        Event {
            pos: Pos { lsn, seq },
            id: format!("evt_{lsn:x}_{seq}"),
            event_type: "price.changed".into(),
            key: key.into(),
            prev_key: prev_key.map(Into::into),
            body: bytes::Bytes::copy_from_slice(body),
        }
    }

    fn same(a: &[Event], b: &[Event]) {
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(b) {
            assert_eq!(
                (a.pos, &a.id, &a.event_type, &a.key, &a.prev_key, &a.body),
                (b.pos, &b.id, &b.event_type, &b.key, &b.prev_key, &b.body)
            );
        }
    }

    fn sample() -> Vec<Event> {
        let json = br#"{"type":"price.changed","data":{"sku":"A-1","price":"19.90"}}"#;
        vec![
            event(0x16B_3740, 0, "products:1", None, json),
            event(0x16B_3740, 1 << 16, "products:2", Some("products:9"), json),
            event(u64::MAX, u64::MAX, "", Some(""), b""),
            event(7, 1, "k\u{e9}y", None, &[0, 255, 1, 254]),
        ]
    }

    /// A frame around any payload, as `encode` would wrap its events (without a content
    /// checksum, as the first walhook with frames wrote them).
    fn frame_of(payload: &[u8]) -> Vec<u8> {
        let mut out = vec![VERSION, LZ4_FRAME];
        out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
        let mut z = FrameEncoder::new(out);
        z.write_all(payload).unwrap();
        z.finish().unwrap()
    }

    fn noise(n: usize) -> Vec<u8> {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        (0..n)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                seed as u8
            })
            .collect()
    }

    #[test]
    fn events_read_back_as_written() {
        let events = sample();
        let refs: Vec<&Event> = events.iter().collect();
        let frame = encode(&refs).unwrap();
        same(&decode(&frame).unwrap(), &events);

        // Spans many 64 KiB blocks, linked: repetitive bodies shrink, incompressible ones
        // grow by a few bytes a block.
        let big: Vec<Event> = (0..2_000).map(|i| event(i, 0, "k", None, &[b'x'; 600])).collect();
        let frame = encode(&big.iter().collect::<Vec<_>>()).unwrap();
        let bodies = 2_000 * 600;
        assert!(frame.len() < bodies / 10, "{} bytes for {bodies}", frame.len());
        same(&decode(&frame).unwrap(), &big);
        let random: Vec<Event> = (0..40)
            .map(|i| event(i, 0, "k", None, &noise(20_000 + i as usize)))
            .collect();
        let frame = encode(&random.iter().collect::<Vec<_>>()).unwrap();
        let bodies: usize = random.iter().map(|e| e.body.len()).sum();
        assert!(
            frame.len() < bodies + bodies / 100,
            "{} bytes for {bodies}",
            frame.len()
        );
        same(&decode(&frame).unwrap(), &random);

        let frame = encode(&[]).unwrap();
        assert!(decode(&frame).unwrap().is_empty());
    }

    #[test]
    fn damaged_frames_are_errors_not_panics() {
        let mut events = sample();
        events.push(event(9, 9, "k", None, &noise(70_000)));
        let refs: Vec<&Event> = events.iter().collect();
        let frame = encode(&refs).unwrap();
        same(&decode(&frame).unwrap(), &events);
        // Cut anywhere before the end mark and checksum (8 bytes: without them every event
        // is still whole, and lz4_flex reads it): the header, the first events, a spread
        // of the rest, the end.
        let end = frame.len() - 8;
        let spread = || (0..400).chain((400..end).step_by(241)).chain(end - 8..end);
        for cut in spread() {
            assert!(decode(&frame[..cut]).is_err(), "cut at {cut}");
        }
        // Any byte changed, a body's bytes too (the content checksum).
        let body = find(&frame, &events[4].body[..64]);
        for at in spread().chain(body..body + 64) {
            for flip in [0x01, 0x80, 0xFF] {
                let mut bad = frame.clone();
                bad[at] ^= flip;
                assert!(decode(&bad).is_err(), "byte {at} ^ {flip:#x}");
            }
        }
        // A frame without a content checksum, as the first walhook with frames wrote.
        same(&decode(&frame_of(&frame_payload(&events))).unwrap(), &events);
        assert_eq!(decode(&[2, 1, 0, 0, 0, 0]).unwrap_err(), FrameError::Version(2));
        assert_eq!(decode(&[1, 9, 0, 0, 0, 0]).unwrap_err(), FrameError::Codec(9));
        assert_eq!(decode(&[1]).unwrap_err(), FrameError::Short(1));
        // The payload's own checks: what follows the last event, and text that is not UTF-8.
        let mut payload = frame_payload(&events[..1]);
        same(&decode(&frame_of(&payload)).unwrap(), &events[..1]);
        payload.push(0);
        assert_eq!(decode(&frame_of(&payload)).unwrap_err(), FrameError::Trailing(1));
        payload.pop();
        let at = find(&payload, b"products:1");
        payload[at] = 0xFF;
        assert_eq!(decode(&frame_of(&payload)).unwrap_err(), FrameError::Utf8("key"));
        // A frame shorter or longer than its header says.
        let mut short = frame_of(&frame_payload(&events[..1]));
        short[2] += 1;
        assert!(matches!(decode(&short), Err(FrameError::Lz4(_))));
        short[2] -= 2;
        assert!(matches!(decode(&short), Err(FrameError::Lz4(_))));
    }

    #[test]
    fn sizes_a_frame_cannot_hold_allocate_nothing() {
        // 4 GiB claimed by a 10-byte payload.
        let mut huge = vec![VERSION, LZ4_FRAME];
        huge.extend_from_slice(&u32::MAX.to_le_bytes());
        huge.extend_from_slice(&[0; 10]);
        assert!(matches!(decode(&huge), Err(FrameError::Size { .. })));
        // More than a frame ever holds, however long the frame.
        let mut over = vec![VERSION, LZ4_FRAME];
        over.extend_from_slice(&(MAX_RAW as u32 + 1).to_le_bytes());
        over.extend_from_slice(&vec![0; 1 << 20]);
        assert!(matches!(decode(&over), Err(FrameError::Size { .. })));
        let large = event(1, 0, "k", None, &vec![b'x'; MAX_RAW]);
        assert!(matches!(encode(&[&large]), Err(FrameError::TooLarge(_))));
        // Four billion events in 4 bytes.
        let many = frame_of(&(u32::MAX - 1).to_le_bytes());
        assert_eq!(decode(&many).unwrap_err(), FrameError::Truncated(4));
        // A string longer than the payload.
        let mut payload = 1u32.to_le_bytes().to_vec();
        payload.extend_from_slice(&[0; 16]);
        payload.extend_from_slice(&(u32::MAX - 1).to_le_bytes());
        payload.extend_from_slice(&[0; 16]);
        assert_eq!(
            decode(&frame_of(&payload)).unwrap_err(),
            FrameError::Truncated(24)
        );
    }

    /// The uncompressed payload `encode` writes for these events.
    fn frame_payload(events: &[Event]) -> Vec<u8> {
        let frame = encode(&events.iter().collect::<Vec<_>>()).unwrap();
        let mut raw = Vec::new();
        FrameDecoder::new(&frame[HEADER..]).read_to_end(&mut raw).unwrap();
        raw
    }

    fn find(hay: &[u8], needle: &[u8]) -> usize {
        hay.windows(needle.len()).position(|w| w == needle).unwrap()
    }
}
