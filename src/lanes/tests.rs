//! The lane's per-key decisions without I/O: which event may go next in memory, what
//! follows an in-flight delivery into the write buffer, and which spilled event a chunk
//! server attempts next, for events under one key and under two (a row whose key
//! changed); and what its saved mark says, and skips after a restart.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use super::*;

/// An event at position `n` under `key`, and the row's earlier key when it moved.
fn ev(n: u64, key: &str, prev: Option<&str>) -> EventRef {
    Arc::new(Event {
        pos: Pos { lsn: 100, seq: n },
        id: format!("evt_{n}"),
        event_type: "t".into(),
        key: key.into(),
        prev_key: prev.map(String::from),
        body: bytes::Bytes::new(),
    })
}

fn hot(events: &[&EventRef]) -> Inner {
    let mut inner = Inner::new(Mode::Hot, Mark::default(), &Progress::default());
    for e in events {
        inner.pending.insert(e.pos, Instant::now());
        inner.enqueue((*e).clone());
    }
    inner
}

fn seqs(events: &[EventRef]) -> Vec<u64> {
    events.iter().map(|e| e.pos.seq).collect()
}

/// Takes every event that may go now.
fn drain(inner: &mut Inner) -> Vec<EventRef> {
    std::iter::from_fn(|| next_hot(inner)).collect()
}

#[test]
fn a_key_change_waits_for_its_old_key_and_holds_its_new_one() {
    // 1: insert of row a; 2: its key moves from a to b; 3: update under b; 4: a new row a.
    let (e1, e2, e3, e4) = (
        ev(1, "a", None),
        ev(2, "b", Some("a")),
        ev(3, "b", None),
        ev(4, "a", None),
    );
    let mut inner = hot(&[&e1, &e2, &e3, &e4]);
    // Only the insert may go: the key change is behind it under a, the rest behind the
    // key change.
    assert_eq!(seqs(&drain(&mut inner)), [1]);
    assert_eq!(inner.finish_hot(&e1, HotOutcome::Done), 1);
    assert_eq!(seqs(&drain(&mut inner)), [2]);
    assert_eq!(inner.finish_hot(&e2, HotOutcome::Done), 2);
    let mut next = seqs(&drain(&mut inner));
    next.sort();
    assert_eq!(next, [3, 4], "both keys go on, in parallel");
    inner.finish_hot(&e3, HotOutcome::Done);
    inner.finish_hot(&e4, HotOutcome::Done);
    assert!(inner.queues.is_empty() && inner.pending.is_empty());
}

#[test]
fn a_key_change_waits_for_the_new_keys_earlier_events_too() {
    // 1: a row b is deleted; 2: row a takes key b; both keys have events before.
    let (e0, e1, e2) = (ev(0, "a", None), ev(1, "b", None), ev(2, "b", Some("a")));
    let mut inner = hot(&[&e0, &e1, &e2]);
    let mut first = seqs(&drain(&mut inner));
    first.sort();
    assert_eq!(first, [0, 1]);
    inner.finish_hot(&e1, HotOutcome::Done);
    assert!(drain(&mut inner).is_empty(), "a still busy");
    inner.finish_hot(&e0, HotOutcome::Done);
    assert_eq!(seqs(&drain(&mut inner)), [2]);
}

#[test]
fn a_failed_key_change_is_first_again_under_both_keys() {
    let (e1, e2) = (ev(1, "b", Some("a")), ev(2, "a", None));
    let mut inner = hot(&[&e1, &e2]);
    assert_eq!(seqs(&drain(&mut inner)), [1]);
    inner.finish_hot(&e1, HotOutcome::Again(1, Duration::ZERO, Vec::new()));
    assert_eq!(
        seqs(&drain(&mut inner)),
        [1],
        "attempted again before the new row a"
    );
}

#[test]
fn in_spill_mode_events_parked_behind_a_delivery_follow_it_in_key_order() {
    // 1 is in flight under a when the lane spills; 2 moves a row from a to b; 3 is under
    // b; 4 under c has nothing in flight.
    let e1 = ev(1, "a", None);
    let mut inner = hot(&[&e1]);
    assert_eq!(seqs(&drain(&mut inner)), [1]);
    inner.mode = Mode::Spill;
    let (e2, e3, e4) = (ev(2, "b", Some("a")), ev(3, "b", None), ev(4, "c", None));
    assert_eq!(inner.enqueue(e2.clone()), Enqueued::Parked);
    assert_eq!(
        inner.enqueue(e3.clone()),
        Enqueued::Parked,
        "behind the key change"
    );
    assert_eq!(inner.enqueue(e4.clone()), Enqueued::Buffered);
    inner.finish_hot(&e1, HotOutcome::Done);
    let buffered: Vec<u64> = inner.spill_buf.iter().map(|b| b.event.pos.seq).collect();
    assert_eq!(buffered, [4, 2, 3]);
    assert!(inner.queues.is_empty());
}

#[test]
fn entering_spill_mode_keeps_a_key_change_behind_its_busy_key() {
    let (e1, e2, e3, e4) = (
        ev(1, "a", None),
        ev(2, "b", Some("a")),
        ev(3, "b", None),
        ev(4, "c", None),
    );
    let mut inner = hot(&[&e1, &e2, &e3, &e4]);
    let mut going = seqs(&drain(&mut inner));
    going.sort();
    assert_eq!(going, [1, 4]);
    inner.finish_hot(&e4, HotOutcome::Done);
    // The lane spills while 1 is in flight: 2 and 3 stay parked (2 waits for a).
    inner.mode = Mode::Spill;
    inner.release_idle();
    assert!(inner.spill_buf.is_empty());
    inner.finish_hot(&e1, HotOutcome::Again(3, Duration::from_secs(1), Vec::new()));
    let buffered: Vec<(u64, i32)> = inner
        .spill_buf
        .iter()
        .map(|b| (b.event.pos.seq, b.attempts))
        .collect();
    assert_eq!(buffered, [(1, 3), (2, 0), (3, 0)]);
}

/// The open finding of the last review: a hot event that failed while its lane was
/// stopping went back to its queue as if never attempted, losing its attempt count, its
/// Retry-After and its history. It keeps all three, first in its queue, and takes them
/// to the write buffer when the lane spills.
#[test]
fn a_hot_event_stopped_between_attempts_keeps_its_attempts_and_wait() {
    let (e1, e2) = (ev(1, "a", None), ev(2, "a", None));
    let mut inner = hot(&[&e1, &e2]);
    assert_eq!(seqs(&drain(&mut inner)), [1]);
    let history = vec![AttemptLog {
        at: "2026-12-04T00:00:00Z".into(),
        status: Some(429),
        ms: 3,
        error: "429 Too Many Requests".into(),
    }];
    // Stopped (paused) while waiting out a 60 s Retry-After, still in hot mode.
    inner.finish_hot(&e1, HotOutcome::Again(4, Duration::from_secs(60), history));
    assert!(inner.pending.contains_key(&e1.pos), "it is still pending");
    let c = inner.carried.get(&e1.pos).expect("its attempts are kept");
    assert_eq!((c.attempts, c.history.len()), (4, 1));
    assert!(c.due > Instant::now() + Duration::from_secs(59));
    // First in its queue again, ahead of 2.
    assert_eq!(seqs(&drain(&mut inner)), [1]);
    inner.finish_hot(&e1, HotOutcome::Again(4, Duration::from_secs(60), Vec::new()));

    // The lane spills: the write buffer gets it with what it carried, 2 fresh behind it.
    inner.mode = Mode::Spill;
    inner.release_idle();
    let buffered: Vec<(u64, i32, bool)> = inner
        .spill_buf
        .iter()
        .map(|b| {
            (
                b.event.pos.seq,
                b.attempts,
                b.retry_after > Duration::from_secs(59),
            )
        })
        .collect();
    assert_eq!(buffered, [(1, 4, true), (2, 0, false)]);
    assert!(inner.carried.is_empty());
}

#[test]
fn the_chunk_server_takes_a_key_change_only_when_first_under_both_keys() {
    let (e1, e2, e3, e4) = (
        ev(1, "a", None),
        ev(2, "b", Some("a")),
        ev(3, "b", None),
        ev(4, "a", None),
    );
    let mut m = Mirror::default();
    m.add(
        7,
        [&e1, &e2, &e3, &e4]
            .iter()
            .map(|e| ((*e).clone(), 0, None))
            .collect(),
    );
    assert_eq!(m.events, 4, "an event under two keys counts once");
    let take =
        |m: &mut Mirror| std::iter::from_fn(|| m.next_ready().map(|(e, _)| e.pos.seq)).collect::<Vec<_>>();
    assert_eq!(take(&mut m), [1]);
    assert_eq!(m.delivered("a"), None);
    assert_eq!(take(&mut m), [2]);
    // It fails: both keys wait with it.
    m.failed("b", 1, Instant::now() + Duration::from_secs(60));
    assert!(take(&mut m).is_empty());
    m.promote(Instant::now() + Duration::from_secs(61));
    assert_eq!(take(&mut m), [2]);
    assert_eq!(m.delivered("b"), None);
    let mut rest = take(&mut m);
    rest.sort();
    assert_eq!(rest, [3, 4]);
    m.delivered("b");
    assert_eq!(m.delivered("a"), Some(7), "the chunk is all done");
    assert!(m.keys.is_empty());
}

#[test]
fn after_a_restart_of_serving_a_key_change_is_found_from_either_key() {
    let (e1, e2) = (ev(1, "a", None), ev(2, "b", Some("a")));
    let mut m = Mirror::default();
    m.add(1, vec![(e1.clone(), 0, None), (e2.clone(), 0, None)]);
    assert_eq!(m.next_ready().map(|(e, _)| e.pos.seq), Some(1));
    m.delivered("a");
    m.rebuild_ready();
    assert_eq!(m.next_ready().map(|(e, _)| e.pos.seq), Some(2));
    assert!(m.next_ready().is_none());
}

/// Accepts `e` as `Lane::accept` does (position bookkeeping and queues).
fn take_in(inner: &mut Inner, e: &EventRef) {
    assert!(!inner.skips(e.pos), "{} was skipped", e.pos);
    inner.next_expected = e.pos.next();
    inner.pending.insert(e.pos, Instant::now());
    inner.enqueue(e.clone());
}

/// The event at `n` is done (as `finish_hot` does for a delivery).
fn done(inner: &mut Inner, n: u64) {
    inner.pending.remove(&Pos { lsn: 100, seq: n });
}

fn at(n: u64) -> Pos {
    Pos { lsn: 100, seq: n }
}

#[test]
fn a_slow_event_holds_the_marks_low_end_but_not_what_is_known_done() {
    let mut inner = Inner::new(Mode::Hot, Mark::default(), &Progress::default());
    let events: Vec<EventRef> = (0..10).map(|n| ev(n, &format!("k{}", n % 5), None)).collect();
    for e in &events {
        take_in(&mut inner, e);
    }
    // Event 2 is slow; 7, behind it under k2, waits. Everything else was delivered.
    for n in [0, 1, 3, 4, 5, 6, 8, 9] {
        done(&mut inner, n);
    }
    let mark = inner.mark(Pos::ZERO);
    assert_eq!(
        mark.low,
        at(2),
        "nothing at or after a pending event is claimed done below it"
    );
    assert_eq!(mark.high, at(10));
    assert_eq!(mark.pending, vec![at(2), at(7)]);
    // The stream's frontier moves the high end on.
    assert_eq!(
        inner.mark(Pos { lsn: 200, seq: 0 }).high,
        Pos { lsn: 200, seq: 0 }
    );
    // Nothing pending: the mark is the position reached, as a watermark.
    done(&mut inner, 2);
    done(&mut inner, 7);
    assert_eq!(inner.mark(Pos::ZERO), Mark::at(at(10)));
}

#[test]
fn after_a_restart_only_events_the_mark_lists_or_never_reached_are_taken_again() {
    let mark = Mark {
        low: at(2),
        high: at(10),
        pending: vec![at(2), at(7)],
    };
    let mut inner = Inner::new(Mode::Hot, mark.clone(), &Progress::default());
    // Before the replay reaches them, the listed events are still pending in the mark.
    assert_eq!(inner.mark(Pos::ZERO), mark);
    // The replay starts at the slot's confirmed LSN, at or before the low end.
    let events: Vec<EventRef> = (0..12).map(|n| ev(n, &format!("k{}", n % 5), None)).collect();
    let mut taken = Vec::new();
    for e in &events {
        if !inner.skips(e.pos) {
            take_in(&mut inner, e);
            taken.push(e.pos.seq);
        }
    }
    assert_eq!(taken, vec![2, 7, 10, 11]);
    // Half-way through the replay, the mark still holds what the earlier one said.
    let mut inner = Inner::new(Mode::Hot, mark.clone(), &Progress::default());
    for e in &events[..5] {
        if !inner.skips(e.pos) {
            take_in(&mut inner, e);
        }
    }
    assert_eq!(inner.mark(Pos::ZERO), mark, "2 taken again, 7 not reached yet");
    done(&mut inner, 2);
    let now = inner.mark(Pos::ZERO);
    assert_eq!((now.low, now.high, now.pending), (at(7), at(10), vec![at(7)]));
    // A replay that passes a listed event without bringing it (its rule is gone) lets
    // it go: only events the lane takes are pending.
    let mut inner = Inner::new(Mode::Hot, mark, &Progress::default());
    take_in(&mut inner, &events[2]);
    assert!(inner.skips(at(8)));
    assert_eq!(inner.mark(Pos::ZERO).pending, vec![at(2)]);
    // A reconnect replays what was taken: skipped, pending or not.
    assert!(inner.skips(at(2)));
}

#[test]
fn a_mark_lists_at_most_its_bound_of_pending_events() {
    let mut inner = Inner::new(Mode::Hot, Mark::default(), &Progress::default());
    let n = MARK_PENDING_MAX as u64 + 500;
    for i in 0..n {
        take_in(&mut inner, &ev(i, "k", None));
    }
    done(&mut inner, 0);
    let mark = inner.mark(Pos::ZERO);
    assert_eq!(mark.pending.len(), MARK_PENDING_MAX);
    assert_eq!(mark.low, at(1));
    // The first one left out bounds what the mark claims.
    assert_eq!(mark.high, at(MARK_PENDING_MAX as u64 + 1));
    assert!((1..n).all(|i| !mark.done(at(i))));
}

/// A spill write takes up to 2,000 events and 8 MiB of bodies, and a larger body
/// alone: PostgreSQL refuses a statement over 1 GB (five 250 MB rows made one), and the
/// write's size is what a spilling lane's memory grows by.
#[test]
fn spill_writes_are_bounded_in_events_and_bytes() {
    const MIB: usize = 1 << 20;
    let len = |sizes: &[usize]| super::spill::spill_batch_len(sizes.iter().copied());
    assert_eq!(len(&[]), 0);
    assert_eq!(len(&[600; 5_000]), SPILL_BATCH);
    assert_eq!(len(&[600; 10]), 10);
    assert_eq!(len(&[250 * MIB; 5]), 1);
    assert_eq!(len(&[1, 250 * MIB, 1]), 1);
    assert_eq!(len(&[3 * MIB, 3 * MIB, 3 * MIB]), 2);
    assert_eq!(len(&[4 * MIB, 4 * MIB, 1]), 2);
    // 8 kB events: 1,024 to a write.
    assert_eq!(len(&[8 << 10; 5_000]), 1_024);
    assert_eq!(len(&[2 * SPILL_BATCH_BYTES]), 1);
}

/// Chunk mirrors count what they hold in one budget shared by every lane, and give it
/// back when an event is delivered or a mirror is emptied (chunk mode ends).
#[test]
fn mirrors_share_one_budget_and_give_back_what_they_held() {
    let progress = Progress::default();
    let mirror = || {
        let mut m = Mirror::default();
        m.shared = progress.mirrors_held.clone();
        m
    };
    let (mut a, mut b) = (mirror(), mirror());
    let held = || progress.mirrors_held.load(std::sync::atomic::Ordering::Relaxed);
    a.add(1, vec![(ev(1, "a", None), 0, None), (ev(2, "b", None), 0, None)]);
    b.add(1, vec![(ev(3, "c", None), 0, None)]);
    let one = held() / 3;
    assert!(one > 200, "{one}");
    assert_eq!(held(), 3 * one);
    assert!(!a.over_budget());
    // Delivered: given back.
    a.next_ready();
    a.delivered("a");
    assert_eq!(held(), 2 * one);
    // Emptied (and the old mirror dropped): given back, and the new one shares the budget.
    a = a.emptied();
    assert_eq!(held(), one);
    a.add(2, vec![(ev(4, "d", None), 0, None)]);
    assert_eq!(held(), 2 * one);
    drop((a, b));
    assert_eq!(held(), 0);
}
