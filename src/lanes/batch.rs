//! Batches (`batch = { max_events, max_wait, max_bytes }`): the attempts a lane makes at
//! once, each of one event, are gathered into requests of many.
//!
//! The lane does not change: its workers still attempt one event each, at most one per
//! key, so per-key order across requests holds as it does across single requests (a
//! key's next event waits for the outcome of the request that carried the one before).
//! It lets `max_in_flight` times `max_events` events be in flight (`event_slots`); here
//! they wait in an open batch until it holds `max_events` events or `max_bytes` of bodies,
//! or its first event has waited `max_wait`; then the batch goes as one request, at most
//! `max_in_flight` at once, and each event's attempt gets the request's outcome. So
//! retries, `Retry-After`, spill, dead letters and replays stay per event.
//!
//! A batch takes events until it is full or its first event has waited `max_wait`, and
//! then on until one of the `max_in_flight` requests is free, so a slow receiver gets
//! full requests rather than a queue of small ones.
//!
//! A batch whose every waiting attempt was given up (the lane stopped or lost its lease)
//! is abandoned with its request.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::future::BoxFuture;
use tokio::sync::{oneshot, Notify, Semaphore};

use super::deliver::{Attempt, Failure};

/// A batch's limits (from the subscriber's `batch`).
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub max_events: usize,
    pub max_wait: Duration,
    pub max_bytes: usize,
    /// Requests in flight at most (`max_in_flight`).
    pub requests: usize,
}

impl Limits {
    pub fn of(sub: &crate::config::Subscriber) -> Option<Limits> {
        sub.batch.as_ref().map(|b| Limits {
            max_events: b.max_events.max(1),
            max_wait: b.max_wait,
            max_bytes: usize::try_from(b.max_bytes.as_u64()).unwrap_or(usize::MAX),
            requests: sub.max_in_flight.max(1),
        })
    }
}

/// An attempt's outcome and the time it took.
pub type Outcome = (Attempt, Duration);

/// Sends the events `(id, standard body)` of one batch as one request: an outcome per
/// event, in order.
pub type Flush = Arc<dyn Fn(Vec<(String, Vec<u8>)>) -> BoxFuture<'static, Vec<Outcome>> + Send + Sync>;

struct Item {
    id: String,
    body: Vec<u8>,
    reply: oneshot::Sender<Outcome>,
}

#[derive(Default)]
struct Pending {
    items: Vec<Item>,
    bytes: usize,
    /// Taken by its sender (or abandoned): nothing more may join.
    closed: bool,
    /// Aborts the batch's task when the last waiting attempt is given up.
    guard: Weak<Guard>,
}

struct Cell {
    pending: Mutex<Pending>,
    /// The batch is full: go now.
    full: Notify,
}

struct Guard(tokio::task::AbortHandle);

impl Drop for Guard {
    fn drop(&mut self) {
        self.0.abort();
    }
}

struct Shared {
    limits: Limits,
    open: Mutex<Option<Arc<Cell>>>,
    requests: Semaphore,
    flush: Flush,
}

/// Gathers one subscriber's attempts into batches.
#[derive(Clone)]
pub struct Batcher(Arc<Shared>);

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Batcher {
    pub fn new(limits: Limits, flush: Flush) -> Batcher {
        Batcher(Arc::new(Shared {
            limits,
            open: Mutex::new(None),
            requests: Semaphore::new(limits.requests),
            flush,
        }))
    }

    /// One attempt of event `id` with standard body `body`, in the next batch.
    pub async fn send(&self, id: &str, body: &[u8]) -> Outcome {
        let (reply, outcome) = oneshot::channel();
        let item = Item {
            id: id.to_string(),
            body: body.to_vec(),
            reply,
        };
        // Held while the outcome is awaited: the batch goes on while someone waits.
        let _guard = self.join(item);
        match outcome.await {
            Ok(outcome) => outcome,
            // Its task ended without an outcome for it (the runtime shuts down).
            Err(_) => (
                Attempt::Failed(Failure::unanswered("the batch was abandoned before it was sent")),
                Duration::ZERO,
            ),
        }
    }

    /// Puts `item` into the open batch, or into a new one when the open one is closed
    /// or has no room for it. Returns the batch's guard.
    fn join(&self, item: Item) -> Arc<Guard> {
        let limits = self.0.limits;
        let len = item.body.len();
        let mut open = lock(&self.0.open);
        let mut item = Some(item);
        if let Some(cell) = open.as_ref() {
            let mut p = lock(&cell.pending);
            let guard = p.guard.upgrade();
            let fits = p.bytes.saturating_add(len) <= limits.max_bytes;
            match guard {
                Some(guard) if !p.closed && fits => {
                    p.items.push(item.take().expect("one item"));
                    p.bytes += len;
                    if p.items.len() >= limits.max_events || p.bytes >= limits.max_bytes {
                        p.closed = true;
                        cell.full.notify_one();
                        drop(p);
                        *open = None;
                    }
                    return guard;
                }
                _ => {
                    // Full for this one, or abandoned: it goes now, and a new one opens.
                    p.closed = true;
                    cell.full.notify_one();
                }
            }
        }
        let cell = Arc::new(Cell {
            pending: Mutex::new(Pending::default()),
            full: Notify::new(),
        });
        let task = tokio::spawn(run(self.0.clone(), cell.clone()));
        let guard = Arc::new(Guard(task.abort_handle()));
        let mut p = lock(&cell.pending);
        p.items.push(item.take().expect("one item"));
        p.bytes = len;
        p.guard = Arc::downgrade(&guard);
        if limits.max_events <= 1 || len >= limits.max_bytes {
            p.closed = true;
            cell.full.notify_one();
            *open = None;
        } else {
            drop(p);
            *open = Some(cell);
        }
        guard
    }
}

/// A batch's task: waits until it is full or its first event waited `max_wait`, then for
/// one of the `max_in_flight` requests (taking events meanwhile), takes it, sends it and
/// hands each event its outcome.
async fn run(shared: Arc<Shared>, cell: Arc<Cell>) {
    tokio::select! {
        _ = cell.full.notified() => {}
        _ = tokio::time::sleep(shared.limits.max_wait) => {}
    }
    let Ok(_request) = shared.requests.acquire().await else {
        return;
    };
    let items = {
        let mut open = lock(&shared.open);
        if open.as_ref().is_some_and(|c| Arc::ptr_eq(c, &cell)) {
            *open = None;
        }
        let mut p = lock(&cell.pending);
        p.closed = true;
        std::mem::take(&mut p.items)
    };
    // Attempts given up while they waited (their lane stopped) are left out.
    let items: Vec<Item> = items.into_iter().filter(|i| !i.reply.is_closed()).collect();
    if items.is_empty() {
        return;
    }
    let (events, replies): (Vec<_>, Vec<_>) = items.into_iter().map(|i| ((i.id, i.body), i.reply)).unzip();
    let outcomes = (shared.flush)(events).await;
    for (reply, outcome) in replies.into_iter().zip(outcomes) {
        let _ = reply.send(outcome);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tokio::time::Instant;

    /// The requests sent: when, and the ids of their events.
    type Sent = Arc<Mutex<Vec<(Instant, Vec<String>)>>>;

    /// A batcher whose requests are recorded (the ids of each) and answered by `answer`
    /// after `took`.
    fn batcher(
        limits: Limits,
        took: Duration,
        answer: fn(&str) -> Attempt,
    ) -> (Batcher, Sent, Arc<AtomicUsize>) {
        let sent = Arc::new(Mutex::new(Vec::new()));
        let peak = Arc::new(AtomicUsize::new(0));
        let now = Arc::new(AtomicUsize::new(0));
        let (log, top) = (sent.clone(), peak.clone());
        let flush: Flush = Arc::new(move |events: Vec<(String, Vec<u8>)>| {
            let (log, top, now) = (log.clone(), top.clone(), now.clone());
            Box::pin(async move {
                let ids: Vec<String> = events.iter().map(|(id, _)| id.clone()).collect();
                log.lock().unwrap().push((Instant::now(), ids.clone()));
                let n = now.fetch_add(1, Ordering::SeqCst) + 1;
                top.fetch_max(n, Ordering::SeqCst);
                tokio::time::sleep(took).await;
                now.fetch_sub(1, Ordering::SeqCst);
                ids.iter().map(|id| (answer(id), took)).collect()
            })
        });
        (Batcher::new(limits, flush), sent, peak)
    }

    fn limits(max_events: usize, max_bytes: usize, requests: usize) -> Limits {
        Limits {
            max_events,
            max_wait: Duration::from_millis(50),
            max_bytes,
            requests,
        }
    }

    fn ok(_: &str) -> Attempt {
        Attempt::Delivered
    }

    async fn send_all(b: &Batcher, n: usize, size: usize) -> Vec<Outcome> {
        let body = vec![b'x'; size];
        let sends = (0..n).map(|i| {
            let (b, body) = (b.clone(), body.clone());
            async move { b.send(&format!("e{i}"), &body).await }
        });
        futures_util::future::join_all(sends).await
    }

    #[tokio::test(start_paused = true)]
    async fn a_full_batch_goes_at_once_and_the_rest_after_max_wait() {
        let (b, sent, _) = batcher(limits(10, 1 << 20, 4), Duration::from_millis(5), ok);
        let t0 = Instant::now();
        let outcomes = send_all(&b, 25, 10).await;
        assert!(outcomes.iter().all(|(a, _)| *a == Attempt::Delivered));
        let sent = sent.lock().unwrap().clone();
        let sizes: Vec<usize> = sent.iter().map(|(_, ids)| ids.len()).collect();
        assert_eq!(sizes, [10, 10, 5]);
        // The two full ones at once, the last one after max_wait.
        assert_eq!(sent[0].0, t0);
        assert_eq!(sent[1].0, t0);
        assert_eq!(sent[2].0, t0 + Duration::from_millis(50));
        let ids: Vec<String> = sent.iter().flat_map(|(_, ids)| ids.clone()).collect();
        assert_eq!(ids, (0..25).map(|i| format!("e{i}")).collect::<Vec<_>>());
    }

    #[tokio::test(start_paused = true)]
    async fn max_bytes_closes_a_batch_and_a_big_event_goes_alone() {
        let (b, sent, _) = batcher(limits(100, 100, 4), Duration::from_millis(5), ok);
        send_all(&b, 7, 30).await;
        let sizes: Vec<usize> = sent.lock().unwrap().iter().map(|(_, ids)| ids.len()).collect();
        assert_eq!(sizes, [3, 3, 1]);
        let (b, sent, _) = batcher(limits(100, 100, 4), Duration::from_millis(5), ok);
        send_all(&b, 2, 500).await;
        let sizes: Vec<usize> = sent.lock().unwrap().iter().map(|(_, ids)| ids.len()).collect();
        assert_eq!(sizes, [1, 1]);
    }

    #[tokio::test(start_paused = true)]
    async fn at_most_max_in_flight_requests_go_at_once() {
        let (b, sent, peak) = batcher(limits(5, 1 << 20, 2), Duration::from_millis(100), ok);
        let t0 = Instant::now();
        send_all(&b, 50, 10).await;
        assert_eq!(sent.lock().unwrap().len(), 10);
        assert_eq!(peak.load(Ordering::SeqCst), 2);
        // Ten requests, two at a time, 100 ms each.
        assert_eq!(Instant::now() - t0, Duration::from_millis(500));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_takes_events_until_a_request_is_free() {
        // One request at a time, 200 ms each: events that come while one is in flight
        // wait in one batch, not in several small ones.
        let (b, sent, _) = batcher(limits(100, 1 << 20, 1), Duration::from_millis(200), ok);
        let mut sends = Vec::new();
        for (i, at) in [0u64, 100, 120, 140, 160, 180].into_iter().enumerate() {
            let b = b.clone();
            sends.push(tokio::spawn(async move {
                tokio::time::sleep(Duration::from_millis(at)).await;
                b.send(&format!("e{i}"), b"x").await
            }));
        }
        for s in sends {
            assert_eq!(s.await.unwrap().0, Attempt::Delivered);
        }
        let sizes: Vec<usize> = sent.lock().unwrap().iter().map(|(_, ids)| ids.len()).collect();
        assert_eq!(sizes, [1, 5]);
    }

    #[tokio::test(start_paused = true)]
    async fn each_event_gets_the_outcome_of_its_request() {
        fn answer(id: &str) -> Attempt {
            if id == "e1" {
                Attempt::Failed(Failure::unanswered("refused"))
            } else {
                Attempt::Delivered
            }
        }
        let (b, _, _) = batcher(limits(10, 1 << 20, 1), Duration::from_millis(5), answer);
        let outcomes = send_all(&b, 3, 10).await;
        let failed: Vec<bool> = outcomes.iter().map(|(a, _)| a.failure().is_some()).collect();
        assert_eq!(failed, [false, true, false]);
    }

    #[tokio::test(start_paused = true)]
    async fn attempts_given_up_are_left_out_and_a_batch_nobody_waits_for_is_abandoned() {
        let (b, sent, _) = batcher(limits(10, 1 << 20, 1), Duration::from_millis(5), ok);
        // Three attempts, one given up before the batch goes.
        let keep = {
            let b = b.clone();
            tokio::spawn(async move { b.send("kept", b"x").await })
        };
        let gone = {
            let b = b.clone();
            tokio::spawn(async move { b.send("gone", b"x").await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        gone.abort();
        assert_eq!(keep.await.unwrap().0, Attempt::Delivered);
        assert_eq!(sent.lock().unwrap().last().unwrap().1, ["kept"]);
        // Every attempt of a batch given up: nothing is sent.
        let before = sent.lock().unwrap().len();
        let all_gone = {
            let b = b.clone();
            tokio::spawn(async move { b.send("alone", b"x").await })
        };
        tokio::time::sleep(Duration::from_millis(10)).await;
        all_gone.abort();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert_eq!(sent.lock().unwrap().len(), before);
        // The next attempt opens a new batch and goes.
        assert_eq!(b.send("next", b"x").await.0, Attempt::Delivered);
        assert_eq!(sent.lock().unwrap().last().unwrap().1, ["next"]);
    }
}
