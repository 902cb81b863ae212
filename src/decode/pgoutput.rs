//! Parser for pgoutput logical replication messages (protocol version 1).
//!
//! One call to [`parse`] decodes exactly one message (the payload of one
//! `XLogData` frame). Column values must be in text format; binary values
//! are rejected. The parser never panics and never allocates more than the
//! input bytes can justify.

use thiserror::Error;

/// One decoded pgoutput message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LogicalMessage {
    Begin {
        final_lsn: u64,
        /// Microseconds since 2000-01-01 00:00:00 UTC.
        commit_time: i64,
        xid: u32,
    },
    Commit {
        flags: u8,
        commit_lsn: u64,
        end_lsn: u64,
        /// Microseconds since 2000-01-01 00:00:00 UTC.
        commit_time: i64,
    },
    Origin {
        commit_lsn: u64,
        name: String,
    },
    Relation(Relation),
    Type {
        oid: u32,
        namespace: String,
        name: String,
    },
    Insert {
        rel_id: u32,
        new: Vec<Cell>,
    },
    /// `old` is `Some` when the server sent a 'K' (key only) or 'O' (full old
    /// row) tuple.
    Update {
        rel_id: u32,
        old: Option<Vec<Cell>>,
        old_is_key_only: bool,
        new: Vec<Cell>,
    },
    Delete {
        rel_id: u32,
        old: Vec<Cell>,
        old_is_key_only: bool,
    },
    Truncate {
        options: u8,
        rel_ids: Vec<u32>,
    },
    Message {
        transactional: bool,
        lsn: u64,
        prefix: String,
        content: Vec<u8>,
    },
}

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    /// SQL NULL ('n').
    Null,
    /// Unchanged TOASTed value ('u'): the server did not send it.
    Unchanged,
    /// Text-format value ('t').
    Text(String),
}

/// A relation ('R') message: the schema of a table as sent by the server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub id: u32,
    pub namespace: String,
    pub name: String,
    /// `relreplident`: b'd' default, b'n' nothing, b'f' full, b'i' index.
    pub replica_identity: u8,
    pub columns: Vec<Column>,
}

/// One column of a [`Relation`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Column {
    /// 1 = part of the key.
    pub flags: u8,
    pub name: String,
    pub type_oid: u32,
    pub type_modifier: i32,
}

/// Why a message could not be decoded. Every variant names what was being
/// read and the byte offset (from the start of the message) where it began.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("empty message: no tag byte at byte offset 0")]
    Empty,
    #[error("truncated message: {what} at byte offset {offset} needs {needed} bytes, only {remaining} left")]
    Truncated {
        what: &'static str,
        offset: usize,
        needed: usize,
        remaining: usize,
    },
    #[error("unknown message tag {tag:#04x} at byte offset 0")]
    UnknownTag { tag: u8 },
    #[error("bad tuple marker {found:#04x} at byte offset {offset}: expected {expected}")]
    BadTupleMarker {
        found: u8,
        expected: &'static str,
        offset: usize,
    },
    #[error(
        "bad tuple column tag {tag:#04x} for column {column} at byte offset {offset}: expected 'n', 'u' or 't'"
    )]
    BadColumnTag { tag: u8, column: usize, offset: usize },
    #[error("binary format not requested: column {column} at byte offset {offset} is binary ('b')")]
    BinaryValue { column: usize, offset: usize },
    #[error("negative {what} {value} at byte offset {offset}")]
    Negative {
        what: &'static str,
        value: i32,
        offset: usize,
    },
    #[error("unterminated string: {what} at byte offset {offset} has no NUL terminator")]
    UnterminatedString { what: &'static str, offset: usize },
    #[error("invalid UTF-8 in {what} at byte offset {offset}")]
    InvalidUtf8 { what: &'static str, offset: usize },
    #[error("{count} trailing bytes at byte offset {offset} after message {tag:#04x}")]
    TrailingBytes { tag: u8, offset: usize, count: usize },
}

type Result<T> = std::result::Result<T, DecodeError>;

/// Bounds-checked big-endian cursor over one message.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn remaining(&self) -> usize {
        self.buf.len().saturating_sub(self.pos)
    }

    fn rest(&self) -> &'a [u8] {
        self.buf.get(self.pos..).unwrap_or(&[])
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8]> {
        let rest = self.rest();
        match rest.get(..n) {
            Some(head) => {
                self.pos += n;
                Ok(head)
            }
            None => Err(DecodeError::Truncated {
                what,
                offset: self.pos,
                needed: n,
                remaining: rest.len(),
            }),
        }
    }

    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N]> {
        let offset = self.pos;
        let bytes = self.take(N, what)?;
        <[u8; N]>::try_from(bytes).map_err(|_| DecodeError::Truncated {
            what,
            offset,
            needed: N,
            remaining: bytes.len(),
        })
    }

    fn u8(&mut self, what: &'static str) -> Result<u8> {
        Ok(self.array::<1>(what)?[0])
    }

    fn u16(&mut self, what: &'static str) -> Result<u16> {
        Ok(u16::from_be_bytes(self.array(what)?))
    }

    fn u32(&mut self, what: &'static str) -> Result<u32> {
        Ok(u32::from_be_bytes(self.array(what)?))
    }

    fn i32(&mut self, what: &'static str) -> Result<i32> {
        Ok(i32::from_be_bytes(self.array(what)?))
    }

    fn u64(&mut self, what: &'static str) -> Result<u64> {
        Ok(u64::from_be_bytes(self.array(what)?))
    }

    fn i64(&mut self, what: &'static str) -> Result<i64> {
        Ok(i64::from_be_bytes(self.array(what)?))
    }

    /// Int32 that must be >= 0, as a usize.
    fn len32(&mut self, what: &'static str) -> Result<usize> {
        let offset = self.pos;
        let value = self.i32(what)?;
        usize::try_from(value).map_err(|_| DecodeError::Negative { what, value, offset })
    }

    /// NUL-terminated UTF-8 string.
    fn cstring(&mut self, what: &'static str) -> Result<String> {
        let offset = self.pos;
        let rest = self.rest();
        let Some(nul) = rest.iter().position(|&b| b == 0) else {
            return Err(DecodeError::UnterminatedString { what, offset });
        };
        let bytes = self.take(nul, what)?;
        self.take(1, what)?;
        utf8(bytes, what, offset)
    }

    fn finish(&self, tag: u8) -> Result<()> {
        match self.remaining() {
            0 => Ok(()),
            count => Err(DecodeError::TrailingBytes {
                tag,
                offset: self.pos,
                count,
            }),
        }
    }
}

fn utf8(bytes: &[u8], what: &'static str, offset: usize) -> Result<String> {
    std::str::from_utf8(bytes)
        .map(str::to_owned)
        .map_err(|_| DecodeError::InvalidUtf8 { what, offset })
}

/// Capacity to reserve for `count` items of at least `min_size` bytes each:
/// never more than the remaining bytes could hold.
fn bounded_capacity(count: usize, remaining: usize, min_size: usize) -> usize {
    count.min(remaining / min_size.max(1))
}

/// Decode one pgoutput (protocol version 1) message.
pub fn parse(data: &[u8]) -> std::result::Result<LogicalMessage, DecodeError> {
    let mut r = Reader { buf: data, pos: 0 };
    let tag = r.u8("message tag").map_err(|_| DecodeError::Empty)?;
    let msg = match tag {
        b'B' => LogicalMessage::Begin {
            final_lsn: r.u64("final LSN")?,
            commit_time: r.i64("commit timestamp")?,
            xid: r.u32("xid")?,
        },
        b'C' => LogicalMessage::Commit {
            flags: r.u8("commit flags")?,
            commit_lsn: r.u64("commit LSN")?,
            end_lsn: r.u64("end LSN")?,
            commit_time: r.i64("commit timestamp")?,
        },
        b'O' => LogicalMessage::Origin {
            commit_lsn: r.u64("origin commit LSN")?,
            name: r.cstring("origin name")?,
        },
        b'R' => LogicalMessage::Relation(relation(&mut r)?),
        b'Y' => LogicalMessage::Type {
            oid: r.u32("type oid")?,
            namespace: r.cstring("type namespace")?,
            name: r.cstring("type name")?,
        },
        b'I' => {
            let rel_id = r.u32("relation id")?;
            expect_marker(&mut r, b"N", "'N'")?;
            LogicalMessage::Insert {
                rel_id,
                new: tuple(&mut r)?,
            }
        }
        b'U' => {
            let rel_id = r.u32("relation id")?;
            let marker = expect_marker(&mut r, b"KON", "'K', 'O' or 'N'")?;
            let (old, old_is_key_only) = if marker == b'N' {
                (None, false)
            } else {
                let old = tuple(&mut r)?;
                expect_marker(&mut r, b"N", "'N'")?;
                (Some(old), marker == b'K')
            };
            LogicalMessage::Update {
                rel_id,
                old,
                old_is_key_only,
                new: tuple(&mut r)?,
            }
        }
        b'D' => {
            let rel_id = r.u32("relation id")?;
            let marker = expect_marker(&mut r, b"KO", "'K' or 'O'")?;
            LogicalMessage::Delete {
                rel_id,
                old: tuple(&mut r)?,
                old_is_key_only: marker == b'K',
            }
        }
        b'T' => {
            let count = r.len32("relation count")?;
            let options = r.u8("truncate options")?;
            let mut rel_ids = Vec::with_capacity(bounded_capacity(count, r.remaining(), 4));
            for _ in 0..count {
                rel_ids.push(r.u32("truncated relation id")?);
            }
            LogicalMessage::Truncate { options, rel_ids }
        }
        b'M' => {
            let flags = r.u8("message flags")?;
            let lsn = r.u64("message LSN")?;
            let prefix = r.cstring("message prefix")?;
            let len = r.len32("message content length")?;
            let content = r.take(len, "message content")?.to_vec();
            LogicalMessage::Message {
                transactional: flags & 1 != 0,
                lsn,
                prefix,
                content,
            }
        }
        _ => return Err(DecodeError::UnknownTag { tag }),
    };
    r.finish(tag)?;
    Ok(msg)
}

fn relation(r: &mut Reader<'_>) -> Result<Relation> {
    let id = r.u32("relation id")?;
    let namespace = r.cstring("relation namespace")?;
    let name = r.cstring("relation name")?;
    let replica_identity = r.u8("replica identity")?;
    let count = usize::from(r.u16("relation column count")?);
    // flags(1) + empty name(1) + type oid(4) + typmod(4)
    let mut columns = Vec::with_capacity(bounded_capacity(count, r.remaining(), 10));
    for _ in 0..count {
        columns.push(Column {
            flags: r.u8("column flags")?,
            name: r.cstring("column name")?,
            type_oid: r.u32("column type oid")?,
            type_modifier: r.i32("column type modifier")?,
        });
    }
    Ok(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    })
}

/// Read one marker byte that must be one of `allowed`.
fn expect_marker(r: &mut Reader<'_>, allowed: &[u8], expected: &'static str) -> Result<u8> {
    let offset = r.pos;
    let found = r.u8("tuple marker")?;
    if allowed.contains(&found) {
        Ok(found)
    } else {
        Err(DecodeError::BadTupleMarker {
            found,
            expected,
            offset,
        })
    }
}

fn tuple(r: &mut Reader<'_>) -> Result<Vec<Cell>> {
    let count = usize::from(r.u16("tuple column count")?);
    let mut cells = Vec::with_capacity(bounded_capacity(count, r.remaining(), 1));
    for column in 0..count {
        let offset = r.pos;
        let cell = match r.u8("tuple column tag")? {
            b'n' => Cell::Null,
            b'u' => Cell::Unchanged,
            b't' => {
                let len = r.len32("text value length")?;
                let start = r.pos;
                let bytes = r.take(len, "text value")?;
                Cell::Text(utf8(bytes, "text value", start)?)
            }
            b'b' => return Err(DecodeError::BinaryValue { column, offset }),
            tag => return Err(DecodeError::BadColumnTag { tag, column, offset }),
        };
        cells.push(cell);
    }
    Ok(cells)
}

#[cfg(test)]
mod tests;
