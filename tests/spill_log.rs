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
