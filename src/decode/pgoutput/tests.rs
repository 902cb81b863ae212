//! Unit tests for the pgoutput parser, including truncation and fuzz loops.

use super::*;

/// Tiny big-endian message builder for tests.
#[derive(Default, Clone)]
struct B(Vec<u8>);

impl B {
    fn tag(t: u8) -> Self {
        B(vec![t])
    }
    fn u8(mut self, v: u8) -> Self {
        self.0.push(v);
        self
    }
    fn u16(mut self, v: u16) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u32(mut self, v: u32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i32(mut self, v: i32) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn u64(mut self, v: u64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn i64(mut self, v: i64) -> Self {
        self.0.extend_from_slice(&v.to_be_bytes());
        self
    }
    fn s(mut self, v: &str) -> Self {
        self.0.extend_from_slice(v.as_bytes());
        self.0.push(0);
        self
    }
    fn raw(mut self, v: &[u8]) -> Self {
        self.0.extend_from_slice(v);
        self
    }
    /// TupleData: (None = 'n', Some(None) = 'u', Some(Some(t)) = 't').
    fn tuple(mut self, cells: &[Option<Option<&str>>]) -> Self {
        self = self.u16(cells.len() as u16);
        for c in cells {
            self = match c {
                None => self.u8(b'n'),
                Some(None) => self.u8(b'u'),
                Some(Some(t)) => self.u8(b't').i32(t.len() as i32).raw(t.as_bytes()),
            };
        }
        self
    }
}

fn txt(s: &str) -> Cell {
    Cell::Text(s.to_owned())
}

fn insert_msg() -> Vec<u8> {
    B::tag(b'I')
        .u32(16384)
        .u8(b'N')
        .tuple(&[Some(Some("42")), None, Some(None), Some(Some("héllo"))])
        .0
}

fn relation_msg() -> Vec<u8> {
    B::tag(b'R')
        .u32(16384)
        .s("public")
        .s("orders")
        .u8(b'd')
        .u16(2)
        .u8(1)
        .s("id")
        .u32(20)
        .i32(-1)
        .u8(0)
        .s("note")
        .u32(1043)
        .i32(104)
        .0
}

fn update_msg() -> Vec<u8> {
    B::tag(b'U')
        .u32(7)
        .u8(b'O')
        .tuple(&[Some(Some("1")), Some(Some("old"))])
        .u8(b'N')
        .tuple(&[Some(Some("1")), Some(None)])
        .0
}

#[test]
fn begin_commit_origin_type() {
    let m = B::tag(b'B').u64(0x1_0000_0010).i64(-5).u32(77).0;
    assert_eq!(
        parse(&m).unwrap(),
        LogicalMessage::Begin {
            final_lsn: 0x1_0000_0010,
            commit_time: -5,
            xid: 77
        }
    );
    let m = B::tag(b'C').u8(0).u64(10).u64(20).i64(817_000_000_123_456).0;
    assert_eq!(
        parse(&m).unwrap(),
        LogicalMessage::Commit {
            flags: 0,
            commit_lsn: 10,
            end_lsn: 20,
            commit_time: 817_000_000_123_456
        }
    );
    let m = B::tag(b'O').u64(99).s("node_a").0;
    assert_eq!(
        parse(&m).unwrap(),
        LogicalMessage::Origin {
            commit_lsn: 99,
            name: "node_a".into()
        }
    );
    let m = B::tag(b'Y').u32(50000).s("public").s("mood").0;
    assert_eq!(
        parse(&m).unwrap(),
        LogicalMessage::Type {
            oid: 50000,
            namespace: "public".into(),
            name: "mood".into()
        }
    );
}

#[test]
fn relation() {
    let expected = LogicalMessage::Relation(Relation {
        id: 16384,
        namespace: "public".into(),
        name: "orders".into(),
        replica_identity: b'd',
        columns: vec![
            Column {
                flags: 1,
                name: "id".into(),
                type_oid: 20,
                type_modifier: -1,
            },
            Column {
                flags: 0,
                name: "note".into(),
                type_oid: 1043,
                type_modifier: 104,
            },
        ],
    });
    assert_eq!(parse(&relation_msg()).unwrap(), expected);
}

#[test]
fn insert_with_all_cell_kinds() {
    assert_eq!(
        parse(&insert_msg()).unwrap(),
        LogicalMessage::Insert {
            rel_id: 16384,
            new: vec![txt("42"), Cell::Null, Cell::Unchanged, txt("héllo")],
        }
    );
    let empty = B::tag(b'I').u32(1).u8(b'N').tuple(&[Some(Some(""))]).0;
    assert_eq!(
        parse(&empty).unwrap(),
        LogicalMessage::Insert {
            rel_id: 1,
            new: vec![txt("")]
        }
    );
}

#[test]
fn update_variants() {
    assert_eq!(
        parse(&update_msg()).unwrap(),
        LogicalMessage::Update {
            rel_id: 7,
            old: Some(vec![txt("1"), txt("old")]),
            old_is_key_only: false,
            new: vec![txt("1"), Cell::Unchanged],
        }
    );
    let k = B::tag(b'U')
        .u32(7)
        .u8(b'K')
        .tuple(&[Some(Some("1")), None])
        .u8(b'N')
        .tuple(&[Some(Some("2")), None])
        .0;
    assert_eq!(
        parse(&k).unwrap(),
        LogicalMessage::Update {
            rel_id: 7,
            old: Some(vec![txt("1"), Cell::Null]),
            old_is_key_only: true,
            new: vec![txt("2"), Cell::Null],
        }
    );
    let n = B::tag(b'U').u32(7).u8(b'N').tuple(&[Some(Some("x"))]).0;
    assert_eq!(
        parse(&n).unwrap(),
        LogicalMessage::Update {
            rel_id: 7,
            old: None,
            old_is_key_only: false,
            new: vec![txt("x")]
        }
    );
    // old tuple followed by something other than 'N'
    let bad = B::tag(b'U')
        .u32(7)
        .u8(b'K')
        .tuple(&[None])
        .u8(b'K')
        .tuple(&[None])
        .0;
    assert_eq!(
        parse(&bad).unwrap_err(),
        DecodeError::BadTupleMarker {
            found: b'K',
            expected: "'N'",
            offset: 9
        }
    );
}

#[test]
fn delete_variants() {
    let k = B::tag(b'D').u32(3).u8(b'K').tuple(&[Some(Some("9")), None]).0;
    assert_eq!(
        parse(&k).unwrap(),
        LogicalMessage::Delete {
            rel_id: 3,
            old: vec![txt("9"), Cell::Null],
            old_is_key_only: true
        }
    );
    let o = B::tag(b'D')
        .u32(3)
        .u8(b'O')
        .tuple(&[Some(Some("9")), Some(Some("z"))])
        .0;
    assert_eq!(
        parse(&o).unwrap(),
        LogicalMessage::Delete {
            rel_id: 3,
            old: vec![txt("9"), txt("z")],
            old_is_key_only: false
        }
    );
    let n = B::tag(b'D').u32(3).u8(b'N').tuple(&[None]).0;
    assert_eq!(
        parse(&n).unwrap_err(),
        DecodeError::BadTupleMarker {
            found: b'N',
            expected: "'K' or 'O'",
            offset: 5
        }
    );
}

#[test]
fn truncate_and_message() {
    let t = B::tag(b'T').i32(2).u8(1).u32(10).u32(11).0;
    assert_eq!(
        parse(&t).unwrap(),
        LogicalMessage::Truncate {
            options: 1,
            rel_ids: vec![10, 11]
        }
    );
    let m = B::tag(b'M')
        .u8(1)
        .u64(55)
        .s("walhook")
        .i32(3)
        .raw(&[0, 0xff, b'a'])
        .0;
    assert_eq!(
        parse(&m).unwrap(),
        LogicalMessage::Message {
            transactional: true,
            lsn: 55,
            prefix: "walhook".into(),
            content: vec![0, 0xff, b'a']
        }
    );
    let m = B::tag(b'M').u8(0).u64(56).s("p").i32(0).0;
    assert_eq!(
        parse(&m).unwrap(),
        LogicalMessage::Message {
            transactional: false,
            lsn: 56,
            prefix: "p".into(),
            content: vec![]
        }
    );
}

#[test]
fn every_truncation_errors() {
    let mut k_update = B::tag(b'U').u32(7).u8(b'K').tuple(&[Some(Some("1"))]).u8(b'N');
    k_update = k_update.tuple(&[Some(Some("abc")), None, Some(None)]);
    let samples = [insert_msg(), relation_msg(), update_msg(), k_update.0];
    for full in &samples {
        assert!(parse(full).is_ok());
        for len in 0..full.len() {
            assert!(parse(&full[..len]).is_err(), "prefix {len} of {full:?} parsed");
        }
    }
    assert_eq!(parse(&[]).unwrap_err(), DecodeError::Empty);
    assert_eq!(
        parse(&insert_msg()[..3]).unwrap_err(),
        DecodeError::Truncated {
            what: "relation id",
            offset: 1,
            needed: 4,
            remaining: 2
        }
    );
}

#[test]
fn huge_declared_counts() {
    let m = B::tag(b'I').u32(1).u8(b'N').u16(65535).raw(b"nnn").0;
    assert_eq!(
        parse(&m).unwrap_err(),
        DecodeError::Truncated {
            what: "tuple column tag",
            offset: 11,
            needed: 1,
            remaining: 0
        }
    );
    let m = B::tag(b'R').u32(1).s("a").s("b").u8(b'f').u16(65535).u8(0).0;
    assert!(matches!(parse(&m), Err(DecodeError::UnterminatedString { .. })));
    let m = B::tag(b'T').i32(i32::MAX).u8(0).u32(1).0;
    assert!(matches!(parse(&m), Err(DecodeError::Truncated { .. })));
    let m = B::tag(b'T').i32(-1).u8(0).0;
    assert_eq!(
        parse(&m).unwrap_err(),
        DecodeError::Negative {
            what: "relation count",
            value: -1,
            offset: 1
        }
    );
    let m = B::tag(b'I')
        .u32(1)
        .u8(b'N')
        .u16(1)
        .u8(b't')
        .i32(i32::MAX)
        .raw(b"ab")
        .0;
    assert_eq!(
        parse(&m).unwrap_err(),
        DecodeError::Truncated {
            what: "text value",
            offset: 13,
            needed: i32::MAX as usize,
            remaining: 2
        }
    );
    let m = B::tag(b'I').u32(1).u8(b'N').u16(1).u8(b't').i32(-4).0;
    assert!(matches!(parse(&m), Err(DecodeError::Negative { offset: 9, .. })));
    let m = B::tag(b'M').u8(0).u64(1).s("p").i32(1 << 30).0;
    assert!(matches!(parse(&m), Err(DecodeError::Truncated { .. })));
}

#[test]
fn bad_bytes() {
    assert_eq!(parse(b"Zabc").unwrap_err(), DecodeError::UnknownTag { tag: b'Z' });
    let m = B::tag(b'I').u32(1).u8(b'N').u16(2).u8(b'n').u8(b'x').0;
    assert_eq!(
        parse(&m).unwrap_err(),
        DecodeError::BadColumnTag {
            tag: b'x',
            column: 1,
            offset: 9
        }
    );
    let m = B::tag(b'I').u32(1).u8(b'N').u16(1).u8(b'b').i32(1).u8(0).0;
    assert_eq!(
        parse(&m).unwrap_err(),
        DecodeError::BinaryValue { column: 0, offset: 8 }
    );
    let m = B::tag(b'I').u32(1).u8(b'X').u16(0).0;
    assert_eq!(
        parse(&m).unwrap_err(),
        DecodeError::BadTupleMarker {
            found: b'X',
            expected: "'N'",
            offset: 5
        }
    );
    let mut m = insert_msg();
    m.push(0);
    assert_eq!(
        parse(&m).unwrap_err(),
        DecodeError::TrailingBytes {
            tag: b'I',
            offset: m.len() - 1,
            count: 1
        }
    );
    let m = B::tag(b'I').u32(1).u8(b'N').tuple(&[]).raw(&[0xc3]).0;
    assert!(matches!(
        parse(&m),
        Err(DecodeError::TrailingBytes { count: 1, .. })
    ));
    let m = B::tag(b'I')
        .u32(1)
        .u8(b'N')
        .u16(1)
        .u8(b't')
        .i32(2)
        .raw(&[0xc3, 0x28])
        .0;
    assert_eq!(
        parse(&m).unwrap_err(),
        DecodeError::InvalidUtf8 {
            what: "text value",
            offset: 13
        }
    );
    let m = B::tag(b'O').u64(1).raw(&[0xff, 0]).0;
    assert_eq!(
        parse(&m).unwrap_err(),
        DecodeError::InvalidUtf8 {
            what: "origin name",
            offset: 9
        }
    );
    let msg = parse(b"Q").unwrap_err().to_string();
    assert_eq!(msg, "unknown message tag 0x51 at byte offset 0");
}

#[test]
fn fuzz_never_panics() {
    let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        state
    };
    let k_update = B::tag(b'U')
        .u32(7)
        .u8(b'K')
        .tuple(&[Some(Some("1"))])
        .u8(b'N')
        .tuple(&[None])
        .0;
    let seeds = [
        insert_msg(),
        relation_msg(),
        update_msg(),
        k_update,
        B::tag(b'D').u32(3).u8(b'O').tuple(&[Some(Some("9")), None]).0,
        B::tag(b'T').i32(2).u8(1).u32(10).u32(11).0,
        B::tag(b'M').u8(1).u64(55).s("walhook").i32(2).raw(b"hi").0,
        B::tag(b'B').u64(1).i64(2).u32(3).0,
        B::tag(b'Y').u32(1).s("a").s("b").0,
    ];
    let tags = b"BCORYIUDTMKNntub\0\xff";
    let mut ok = 0usize;
    for i in 0..20_000u32 {
        let r = next();
        let buf: Vec<u8> = if i % 2 == 0 {
            // pure random bytes, usually starting with a real tag
            let len = (r % 64) as usize;
            let mut v: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            if let Some(first) = v.first_mut() {
                *first = tags[(r >> 8) as usize % tags.len()];
            }
            v
        } else {
            let mut v = seeds[(r >> 8) as usize % seeds.len()].clone();
            let edits = 1 + (r >> 16) % 4;
            for _ in 0..edits {
                let e = next();
                let pos = if v.is_empty() {
                    0
                } else {
                    (e >> 8) as usize % v.len()
                };
                match e % 5 {
                    0 if !v.is_empty() => v[pos] = (e >> 32) as u8,
                    1 if !v.is_empty() => v[pos] = tags[(e >> 32) as usize % tags.len()],
                    2 => v.truncate(pos),
                    3 => v.insert(pos, (e >> 32) as u8),
                    _ if !v.is_empty() => v[pos] = 0xff,
                    _ => {}
                }
            }
            v
        };
        if parse(&buf).is_ok() {
            ok += 1;
        }
    }
    // some mutations leave valid messages; the point is no panic
    assert!(ok > 0);
}
