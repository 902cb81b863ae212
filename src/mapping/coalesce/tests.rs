use super::*;
use serde_json::json;

const SEC: i64 = 1_000_000;

fn spec(window: i64, max_wait: i64, max_open: usize) -> Spec {
    Spec {
        rule: 0,
        window,
        max_wait,
        max_open,
    }
}

/// The event one update of product `id` makes: commit LSN `lsn`, `qty` from `old` to `new`.
fn update(id: i64, lsn: u64, old: i64, new: i64, changed: &[&str]) -> EventRef {
    let body = json!({
        "type": "product.changed",
        "timestamp": format!("t{lsn}"),
        "data": {
            "table": "public.products",
            "op": "update",
            "key": {"id": id},
            "new": {"id": id, "qty": new, "title": format!("v{lsn}")},
            "old": {"id": id, "qty": old, "title": "before"},
            "changed": changed,
            "source": {"lsn": crate::event::format_lsn(lsn), "xid": 1, "commit_time": format!("t{lsn}"), "seq": 0},
        }
    });
    Arc::new(Event {
        pos: Pos::new(lsn, 0, 0),
        id: format!("evt_{lsn:x}"),
        event_type: "product.changed".into(),
        key: format!("public.products|{{\"id\":{id}}}"),
        prev_key: None,
        body: serde_json::to_vec(&body).unwrap().into(),
    })
}

fn routes() -> Arc<[usize]> {
    Arc::from(vec![0usize])
}

fn body(c: &Closed) -> Value {
    serde_json::from_slice(&c.event.body).unwrap()
}

#[test]
fn changes_within_the_window_become_one_event_with_first_old_and_last_new() {
    let mut c = Coalescer::default();
    let s = spec(2 * SEC, 30 * SEC, 100);
    for (i, lsn) in (100..600u64).step_by(1).enumerate() {
        let t = i as i64 * 1000; // 1 ms apart
        c.advance(t);
        let changed: &[&str] = if i % 2 == 0 { &["qty"] } else { &["qty", "title"] };
        c.add(
            update(7, lsn, i as i64, i as i64 + 1, changed),
            routes(),
            Numbers::Exact,
            s,
            t,
        );
    }
    assert_eq!(c.low(), Some(100));
    c.advance(2 * SEC);
    assert!(
        c.take_closed(1000, 0).is_empty(),
        "the window is still open at its deadline"
    );
    c.advance(3 * SEC);
    let closed = c.take_closed(1000, 0);
    assert_eq!(closed.len(), 1);
    let e = &closed[0];
    assert_eq!(e.event.id, "evt_64", "the first change's id");
    assert_eq!(
        e.event.pos,
        Pos {
            lsn: 1000,
            seq: CLOSED
        }
    );
    assert_eq!((e.first_lsn, e.last_lsn, e.count), (100, 599, 500));
    let b = body(e);
    assert_eq!(b["data"]["coalesced"], 500);
    assert_eq!(b["data"]["old"]["qty"], 0);
    assert_eq!(b["data"]["new"]["qty"], 500);
    assert_eq!(b["data"]["new"]["title"], "v599");
    assert_eq!(b["data"]["changed"], json!(["qty", "title"]));
    assert_eq!(b["timestamp"], "t599");
    assert_eq!(b["data"]["source"]["lsn"], "0/257");
    assert!(c.is_idle());
    assert_eq!(c.low(), None);
}

#[test]
fn max_wait_closes_a_window_that_keeps_getting_changes() {
    let mut c = Coalescer::default();
    let s = spec(2 * SEC, 5 * SEC, 100);
    let mut closed = Vec::new();
    for i in 0..20u64 {
        let t = i as i64 * SEC; // one change a second: never 2 s quiet
        c.advance(t);
        c.add(update(1, 10 + i, 0, 1, &["qty"]), routes(), Numbers::Exact, s, t);
        closed.extend(c.take_closed(1000 + i, 0));
    }
    // Windows of changes at 0..=5 s, 6..=11 s, 12..=17 s; the last is still open.
    let counts: Vec<u64> = closed.iter().map(|e| e.count).collect();
    assert_eq!(counts, [6, 6, 6]);
    assert_eq!(c.open_windows(), 1);
}

#[test]
fn past_max_open_the_oldest_window_closes_early() {
    let mut c = Coalescer::default();
    let s = spec(10 * SEC, 30 * SEC, 2);
    for (id, lsn) in [(1, 10), (2, 11), (3, 12)] {
        c.add(update(id, lsn, 0, 1, &["qty"]), routes(), Numbers::Exact, s, 0);
    }
    assert_eq!(c.closed_early, 1);
    assert_eq!(c.open_windows(), 2);
    let closed = c.take_closed(50, 0);
    assert_eq!(closed.len(), 1);
    assert_eq!(closed[0].event.key, "public.products|{\"id\":1}");
    assert_eq!(c.low(), Some(11));
}

#[test]
fn windows_closed_together_are_numbered_in_first_change_order() {
    let mut c = Coalescer::default();
    let s = spec(SEC, 30 * SEC, 100);
    c.add(update(2, 20, 0, 1, &["qty"]), routes(), Numbers::Exact, s, 100);
    c.add(update(1, 21, 0, 1, &["qty"]), routes(), Numbers::Exact, s, 0);
    c.advance(5 * SEC);
    let closed = c.take_closed(99, 0);
    let order: Vec<(u64, Pos)> = closed.iter().map(|e| (e.first_lsn, e.event.pos)).collect();
    assert_eq!(
        order,
        [
            (20, Pos { lsn: 99, seq: CLOSED }),
            (
                21,
                Pos {
                    lsn: 99,
                    seq: CLOSED | 1
                }
            )
        ]
    );
}

#[test]
fn an_insert_and_its_updates_are_one_insert_and_a_late_change_opens_a_new_window() {
    let mut c = Coalescer::default();
    let s = spec(SEC, 30 * SEC, 100);
    let insert = {
        let body = json!({"type": "product.created", "timestamp": "t1", "data": {
            "table": "public.products", "op": "insert", "key": {"id": 5},
            "new": {"id": 5, "qty": 1, "title": "a"}, "old": null, "changed": null,
            "source": {"lsn": "0/1", "xid": 1, "commit_time": "t1", "seq": 0}}});
        Arc::new(Event {
            pos: Pos::new(1, 0, 0),
            id: "evt_ins".into(),
            event_type: "product.created".into(),
            key: "public.products|{\"id\":5}".into(),
            prev_key: None,
            body: serde_json::to_vec(&body).unwrap().into(),
        })
    };
    c.add(insert, routes(), Numbers::Exact, s, 0);
    c.add(update(5, 2, 1, 2, &["qty"]), routes(), Numbers::Exact, s, SEC / 2);
    // 1.6 s after the update: past its window, so this change starts a new one.
    c.advance(SEC / 2 + SEC + SEC / 10);
    c.add(
        update(5, 3, 2, 3, &["qty"]),
        routes(),
        Numbers::Exact,
        s,
        SEC / 2 + SEC + SEC / 10,
    );
    let closed = c.take_closed(3, 0);
    assert_eq!(closed.len(), 1);
    let b = body(&closed[0]);
    assert_eq!(b["type"], "product.created");
    assert_eq!(b["data"]["op"], "insert");
    assert_eq!(b["data"]["old"], Value::Null);
    assert_eq!(b["data"]["changed"], Value::Null);
    assert_eq!(b["data"]["new"]["qty"], 2);
    assert_eq!(b["data"]["coalesced"], 2);
    assert_eq!(closed[0].event.id, "evt_ins");
    assert_eq!(c.open_windows(), 1);
    assert_eq!(c.low(), Some(3));
}

#[test]
fn the_same_stream_renders_the_same_bytes() {
    let run = || {
        let mut c = Coalescer::default();
        let s = spec(SEC, 30 * SEC, 100);
        for i in 0..50u64 {
            let t = i as i64 * 10_000;
            c.advance(t);
            c.add(
                update((i % 3) as i64, 100 + i, 0, i as i64, &["qty"]),
                routes(),
                Numbers::Exact,
                s,
                t,
            );
        }
        c.advance(10 * SEC);
        c.take_closed(500, 0)
            .into_iter()
            .map(|e| (e.event.id.clone(), e.event.pos, e.event.body.clone()))
            .collect::<Vec<_>>()
    };
    let a = run();
    assert_eq!(a.len(), 3);
    assert_eq!(a, run());
}

fn event_with(id: &str, kind: &str, op: &str, lsn: u64) -> EventRef {
    let body = json!({"type": kind, "timestamp": "t", "data": {
        "table": "public.products", "op": op, "key": {"id": 9},
        "new": if op == "delete" { Value::Null } else { json!({"id": 9, "qty": lsn}) },
        "old": if op == "insert" { Value::Null } else { json!({"id": 9, "qty": 0}) },
        "changed": Value::Null,
        "source": {"lsn": crate::event::format_lsn(lsn), "xid": 1, "commit_time": "t", "seq": 0}}});
    Arc::new(Event {
        pos: Pos::new(lsn, 0, 0),
        id: id.into(),
        event_type: kind.into(),
        key: "public.products|{\"id\":9}".into(),
        prev_key: None,
        body: serde_json::to_vec(&body).unwrap().into(),
    })
}

#[test]
fn the_coalesced_event_goes_where_its_name_is_wanted() {
    // Subscriber 0 wants products.*, subscriber 1 only products.deleted.
    let mut c = Coalescer::default();
    let s = spec(SEC, 30 * SEC, 100);
    let updates: Arc<[usize]> = Arc::from(vec![0usize]);
    let deletes: Arc<[usize]> = Arc::from(vec![0usize, 1]);
    c.add(
        event_with("a", "products.updated", "update", 1),
        updates.clone(),
        Numbers::Exact,
        s,
        0,
    );
    c.add(
        event_with("b", "products.deleted", "delete", 2),
        deletes.clone(),
        Numbers::Exact,
        s,
        1,
    );
    assert_eq!(c.open_windows(), 1, "one window per rule and key");
    c.advance(5 * SEC);
    let closed = c.take_closed(3, 0);
    assert_eq!(closed[0].event.event_type, "products.deleted");
    assert_eq!(&*closed[0].routes, &[0, 1]);
    let b = body(&closed[0]);
    assert_eq!(b["data"]["op"], "delete");
    assert_eq!(b["data"]["new"], Value::Null);
    assert_eq!(b["data"]["old"]["qty"], 0);

    // A delete and a new insert of the key: an insert, named and routed as one.
    c.add(
        event_with("c", "products.deleted", "delete", 4),
        deletes,
        Numbers::Exact,
        s,
        10 * SEC,
    );
    c.add(
        event_with("d", "products.created", "insert", 5),
        updates,
        Numbers::Exact,
        s,
        10 * SEC + 1,
    );
    c.advance(20 * SEC);
    let closed = c.take_closed(6, 0);
    assert_eq!(closed[0].event.event_type, "products.created");
    assert_eq!(&*closed[0].routes, &[0]);
    assert_eq!(body(&closed[0])["data"]["op"], "insert");
    assert_eq!(closed[0].event.id, "c", "the first change's id");
}

#[test]
fn each_number_format_has_its_own_window_and_budget() {
    let mut c = Coalescer::default();
    let s = spec(SEC, 30 * SEC, 1);
    for lsn in 1..=4u64 {
        c.add(update(1, lsn, 0, 1, &["qty"]), routes(), Numbers::Exact, s, 0);
        c.add(
            update(1, lsn, 0, 1, &["qty"]),
            Arc::from(vec![1usize]),
            Numbers::String,
            s,
            0,
        );
    }
    assert_eq!(c.open_windows(), 2);
    assert_eq!(c.closed_early, 0, "max_open counts per rule and number format");
    c.advance(2 * SEC);
    let closed = c.take_closed(9, 5);
    let seqs: Vec<u64> = closed.iter().map(|e| e.event.pos.seq & !CLOSED).collect();
    assert_eq!(seqs, [5, 6]);
    assert!(closed.iter().all(|e| e.count == 4));
}

/// A body carrying a json value nested thousands of levels deep (which mapping embeds
/// verbatim) coalesces like any other, the value intact.
#[test]
fn bodies_with_deep_json_values_coalesce() {
    let deep = format!("{}1{}", "[".repeat(5_000), "]".repeat(5_000));
    let mut c = Coalescer::default();
    let s = spec(2 * SEC, 30 * SEC, 100);
    for (i, lsn) in [100u64, 101].into_iter().enumerate() {
        let e = update(7, lsn, i as i64, i as i64 + 1, &["qty"]);
        let text = String::from_utf8(e.body.to_vec()).unwrap();
        let text = text.replace(r#""qty":"#, &format!(r#""doc":{deep},"qty":"#));
        let e = Arc::new(Event {
            pos: e.pos,
            id: e.id.clone(),
            event_type: e.event_type.clone(),
            key: e.key.clone(),
            prev_key: None,
            body: text.into_bytes().into(),
        });
        c.add(e, routes(), Numbers::Exact, s, i as i64 * 1000);
    }
    c.advance(3 * SEC);
    let closed = c.take_closed(1000, 0);
    assert_eq!(closed.len(), 1);
    let text = String::from_utf8(closed[0].event.body.to_vec()).unwrap();
    assert!(
        text.contains(r#""coalesced":2"#),
        "{}",
        &text[..text.len().min(100)]
    );
    assert!(
        text.contains(r#""op":"update""#),
        "{}",
        &text[..text.len().min(100)]
    );
    assert!(
        text.contains(&format!(r#""new":{{"id":7,"doc":{deep},"qty":2"#)),
        "{}",
        &text[..text.len().min(100)]
    );
    assert!(
        text.contains(&format!(r#""old":{{"id":7,"doc":{deep},"qty":0"#)),
        "{}",
        &text[..text.len().min(100)]
    );
}

/// A change that moved its row from key 1 to key 2 is never held in a window: both keys'
/// windows close with it, and it comes right after them in the same group, so it follows
/// the old key's events and precedes every later window of either key (the reviewer's
/// case: a new row 1 inserted while the old key's window is open, and key 2 updated on).
#[test]
fn a_key_change_closes_both_keys_windows_and_goes_out_after_them() {
    let mut c = Coalescer::default();
    let s = spec(SEC, 30 * SEC, 100);
    c.add(update(1, 10, 0, 1, &["qty"]), routes(), Numbers::Exact, s, 0);
    c.add(
        update(2, 11, 0, 1, &["qty"]),
        routes(),
        Numbers::Exact,
        s,
        SEC / 10,
    );
    let moved = {
        let e = update(2, 12, 1, 2, &["id"]);
        Arc::new(Event {
            pos: e.pos,
            id: e.id.clone(),
            event_type: e.event_type.clone(),
            key: e.key.clone(),
            prev_key: Some("public.products|{\"id\":1}".into()),
            body: e.body.clone(),
        })
    };
    c.add(moved, routes(), Numbers::Exact, s, SEC / 5);
    let closed = c.take_closed(12, 0);
    let order: Vec<(u64, Option<&str>)> = closed
        .iter()
        .map(|e| (e.first_lsn, e.event.prev_key.as_deref()))
        .collect();
    assert_eq!(
        order,
        [(10, None), (11, None), (12, Some("public.products|{\"id\":1}"))]
    );
    assert_eq!(body(&closed[2])["data"]["coalesced"], 1);
    // Later changes of either key open new windows, handed over after it.
    c.add(
        update(1, 13, 0, 5, &["qty"]),
        routes(),
        Numbers::Exact,
        s,
        SEC / 4,
    );
    c.add(
        update(2, 14, 2, 3, &["qty"]),
        routes(),
        Numbers::Exact,
        s,
        SEC / 3,
    );
    assert_eq!(c.open_windows(), 2);
}
