//! The spill log's statements on a real PostgreSQL, where the lane's unit tests use an
//! in-memory log (`src/lanes/memstore.rs`): rows made from chunks get back the attempts,
//! wait and history their events had (`State::restore`), and are not served before.

mod common;

use std::time::Duration;

use common::*;
use walhook::event::{Event, Pos};
use walhook::state::{AttemptLog, Restored, State};

fn event(seq: u64, key: &str) -> Event {
    Event {
        pos: Pos { lsn: 7, seq },
        id: format!("evt_{seq}"),
        event_type: "t".into(),
        key: key.into(),
        prev_key: None,
        body: bytes::Bytes::from_static(b"{}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_made_from_chunks_get_their_attempts_back() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("state", "SELECT 1").await;
    let state = State::connect(&url, "s").await.unwrap();
    let (a, b) = (event(1, "a"), event(2, "b"));
    state.spill_chunk("sub", &[&a, &b]).await.unwrap();
    assert_eq!(state.explode_chunks("sub", &[], 10).await.unwrap(), (2, 1));

    let failed = AttemptLog {
        at: "2026-12-04T00:00:00Z".into(),
        status: Some(429),
        ms: 12,
        error: "429 Too Many Requests".into(),
    };
    let restored = Restored {
        pos: a.pos,
        attempts: 3,
        retry_after: Duration::from_secs(3600),
        history: vec![failed],
    };
    state.restore("sub", &[restored]).await.unwrap();

    let db = pg.client("state").await;
    let row = db
        .query_one(
            "SELECT attempts, next_attempt_at > now() + interval '59 minutes', last_error, history::text
             FROM walhook.spill WHERE seq = 1",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, i32>(0), 3);
    assert!(row.get::<_, bool>(1), "the wait was not kept");
    assert_eq!(row.get::<_, String>(2), "429 Too Many Requests");
    assert!(
        row.get::<_, String>(3).contains("\"status\": 429"),
        "{}",
        row.get::<_, String>(3)
    );

    // Only the other key's row is due.
    let heads = state.due_heads("sub", 10).await.unwrap();
    let ids: Vec<&str> = heads.iter().map(|h| h.id.as_str()).collect();
    assert_eq!(ids, ["evt_2"]);
}

/// The statement walhook ran to turn chunks into rows before state schema 12.
const OLD_EXPLODE: &str = "WITH gone AS (
   DELETE FROM walhook.spill_chunks WHERE slot = $1 AND subscriber = $2 AND chunk IN (
     SELECT chunk FROM walhook.spill_chunks WHERE slot = $1 AND subscriber = $2
     ORDER BY chunk LIMIT $5)
   RETURNING *),
 done AS (SELECT * FROM unnest($3::bigint[], $4::bigint[]) AS d(l, q)),
 rows AS (
   INSERT INTO walhook.spill
     (slot, subscriber, lsn, seq, event_id, event_type, ordering_key, body, prev_key)
   SELECT g.slot, g.subscriber, u.l, u.q, u.i, u.t, u.k, u.b, u.p
   FROM gone g,
        unnest(g.lsns, g.seqs, g.ids, g.types, g.keys, g.bodies, g.prev_keys) AS u(l, q, i, t, k, b, p)
   WHERE NOT EXISTS (SELECT 1 FROM done WHERE done.l = u.l AND done.q = u.q)
   ON CONFLICT DO NOTHING
   RETURNING 1)
 SELECT (SELECT count(*) FROM rows), (SELECT count(*) FROM gone)";

/// Chunks written by walhook before state schema 12 (seven arrays) and frames read back
/// alike, are counted alike, and become rows alike, leaving out what was delivered; a
/// damaged frame is an error that names the chunk, never a panic or a loss.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chunks_of_both_forms_read_back_and_become_rows() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("state", "SELECT 1").await;
    let state = State::connect(&url, "s").await.unwrap();
    let db = pg.client("state").await;
    // As walhook wrote a chunk before: one array per field.
    db.execute(
        "INSERT INTO walhook.spill_chunks (slot, subscriber, lsns, seqs, ids, types, keys, bodies, prev_keys)
         VALUES ('s', 'sub', '{5,5}', '{1,2}', '{old_1,old_2}', '{t,t}', '{a,b}',
                 ARRAY['\\x7b7d'::bytea, '\\x00ff'::bytea], '{NULL,z}')",
        &[],
    )
    .await
    .unwrap();
    let mut moved = event(3, "c");
    moved.prev_key = Some("d".into());
    moved.body = bytes::Bytes::from(vec![0u8, 159, 146, 150]);
    let plain = event(4, "c");
    let framed = state.spill_chunk("sub", &[&moved, &plain]).await.unwrap();

    // A walhook of an earlier version fails on a frame instead of deleting it as a chunk
    // of no events: its statement that turned chunks into rows, and its read of `lsns`.
    let err = db
        .execute(
            OLD_EXPLODE,
            &[&"s", &"sub", &Vec::<i64>::new(), &Vec::<i64>::new(), &10i64],
        )
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("not-null"), "{err:?}");
    let old_read = db
        .query_one(
            "SELECT lsns FROM walhook.spill_chunks WHERE chunk = $1",
            &[&framed],
        )
        .await
        .unwrap();
    assert!(old_read.try_get::<_, Vec<i64>>(0).is_err());
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM walhook.spill_chunks WHERE subscriber = 'sub'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 2, "no chunk was deleted");

    let (old, events) = state.chunk_after("sub", 0).await.unwrap().unwrap();
    let seen: Vec<(&str, &str, Option<&str>, &[u8])> = events
        .iter()
        .map(|e| (e.id.as_str(), e.key.as_str(), e.prev_key.as_deref(), &e.body[..]))
        .collect();
    assert_eq!(
        seen,
        [
            ("old_1", "a", None, &b"{}"[..]),
            ("old_2", "b", Some("z"), &[0, 255][..])
        ]
    );
    let (next, events) = state.chunk_after("sub", old).await.unwrap().unwrap();
    assert_eq!(next, framed);
    let seen: Vec<(Pos, &str, Option<&str>, &[u8])> = events
        .iter()
        .map(|e| (e.pos, e.id.as_str(), e.prev_key.as_deref(), &e.body[..]))
        .collect();
    assert_eq!(
        seen,
        [
            (moved.pos, "evt_3", Some("d"), &moved.body[..]),
            (plain.pos, "evt_4", None, &b"{}"[..])
        ]
    );
    assert!(state.chunk_after("sub", framed).await.unwrap().is_none());
    assert_eq!(state.backlogs().await.unwrap()["sub"], (4, 0));

    // Both become rows in one call, without the event delivered from memory.
    let delivered = [Pos { lsn: 5, seq: 2 }];
    assert_eq!(state.explode_chunks("sub", &delivered, 10).await.unwrap(), (3, 2));
    assert_eq!(state.explode_chunks("sub", &[], 10).await.unwrap(), (0, 0));
    let rows: Vec<(String, String, Option<String>, Vec<u8>)> = db
        .query(
            "SELECT event_id, ordering_key, prev_key, body FROM walhook.spill ORDER BY lsn, seq",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let ids: Vec<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(ids, ["old_1", "evt_3", "evt_4"]);
    assert_eq!(rows[1].2.as_deref(), Some("d"));
    assert_eq!(rows[1].3, moved.body.to_vec());
    assert_eq!(state.backlogs().await.unwrap()["sub"], (3, 0));

    // One statement takes about a chunk's worth of bodies: three chunks of 5 MiB go one
    // at a time.
    let big: Vec<Event> = (0..3)
        .map(|i| {
            let mut e = event(100 + i, "big");
            e.body = bytes::Bytes::from(vec![b'x'; 5 << 20]);
            e
        })
        .collect();
    for e in &big {
        state.spill_chunk("big", &[e]).await.unwrap();
    }
    for _ in 0..3 {
        assert_eq!(state.explode_chunks("big", &[], 10).await.unwrap(), (1, 1));
    }
    assert_eq!(state.explode_chunks("big", &[], 10).await.unwrap(), (0, 0));

    // A chunk of one event over 16 MiB is written as arrays (a frame would be one more
    // copy of it in memory), and reads back the same.
    let mut huge = event(200, "huge");
    huge.body = bytes::Bytes::from(vec![b'y'; 17 << 20]);
    let chunk = state.spill_chunk("huge", &[&huge]).await.unwrap();
    let arrays: bool = db
        .query_one(
            "SELECT frame IS NULL AND lsns IS NOT NULL FROM walhook.spill_chunks WHERE chunk = $1",
            &[&chunk],
        )
        .await
        .unwrap()
        .get(0);
    assert!(arrays, "the large chunk is stored as arrays");
    let (_, events) = state.chunk_after("huge", 0).await.unwrap().unwrap();
    assert_eq!((events.len(), &events[0].body), (1, &huge.body));
    assert_eq!(state.backlogs().await.unwrap()["huge"], (1, 0));
    assert_eq!(state.explode_chunks("huge", &[], 10).await.unwrap(), (1, 1));

    // A row is a frame or arrays, never both.
    let err = db
        .execute(
            "INSERT INTO walhook.spill_chunks (slot, subscriber, lsns, frame) VALUES ('s', 'x', '{1}', '\\x00')",
            &[],
        )
        .await
        .unwrap_err();
    assert!(format!("{err:?}").contains("spill_chunks_one_form"), "{err:?}");

    // A damaged frame: an error naming the chunk, and the chunk stays.
    let bad: i64 = db
        .query_one(
            "INSERT INTO walhook.spill_chunks (slot, subscriber, lsns, frame, events, bytes)
             VALUES ('s', 'bad', '{NULL}', '\\x01010a000000ffff', 1, 10) RETURNING chunk",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let err = state.chunk_after("bad", 0).await.unwrap_err().to_string();
    assert!(
        err.contains(&format!("chunk {bad} of subscriber \"bad\"")),
        "{err}"
    );
    assert!(err.contains("deleting the row drops them"), "{err}");
    let err = state
        .explode_chunks("bad", &[], 10)
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains(&format!("chunk {bad}")), "{err}");
    let left: i64 = db
        .query_one(
            "SELECT count(*) FROM walhook.spill_chunks WHERE subscriber = 'bad'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(left, 1);
}

/// A state database a newer walhook migrated is refused with the fix, not misread.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_state_schema_is_refused() {
    let pg = PgCluster::start().await;
    let url = pg.create_db("state", "SELECT 1").await;
    drop(State::connect(&url, "s").await.unwrap());
    let db = pg.client("state").await;
    db.execute(
        "INSERT INTO walhook.schema_migrations (version) VALUES (999)",
        &[],
    )
    .await
    .unwrap();
    let err = State::connect(&url, "s")
        .await
        .err()
        .expect("refused")
        .to_string();
    assert!(
        err.contains("version 999, newer than this walhook knows"),
        "{err}"
    );
    assert!(err.contains("run that version (or newer)"), "{err}");
}
