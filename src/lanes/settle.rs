//! The one outcome step. Every attempt, whichever path made it (hot, a spilled row, an
//! event of a chunk in memory), is settled here: timed, counted by the circuit breaker,
//! judged by the retry policy (which honours `Retry-After` and `final_statuses`), and
//! counted in the lane's metrics and its `failing` flag. What the path then does with
//! the outcome (requeue, record on its row, write a dead letter) is the path's own.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::deliver::{Attempt, Failure};
use super::retry::{DeadWhy, Verdict};
use super::{attempt_log, Lane};
use crate::state::{AttemptLog, SpillOutcome};

/// What one attempt of an event comes to.
#[derive(Debug)]
pub(super) enum Settled {
    Delivered,
    /// Not delivered: try again after `after` (at least the answer's `Retry-After`).
    Retry {
        attempts: u32,
        after: Duration,
        failure: Failure,
        attempt: AttemptLog,
    },
    /// Given up: the event becomes a dead letter.
    Dead {
        attempts: u32,
        why: DeadWhy,
        failure: Failure,
        attempt: AttemptLog,
    },
}

impl Settled {
    /// Judges attempt number `attempts` of an event, which took `took`, by `verdict`.
    pub(super) fn judge(
        attempts: u32,
        result: Attempt,
        took: Duration,
        verdict: impl FnOnce(u32, &Failure) -> Verdict,
    ) -> Settled {
        let failure = match result {
            Attempt::Delivered => return Settled::Delivered,
            Attempt::Failed(f) => f,
        };
        let attempt = attempt_log(took, &failure);
        match verdict(attempts, &failure) {
            Verdict::Retry(after) => Settled::Retry {
                attempts,
                after,
                failure,
                attempt,
            },
            Verdict::Dead(why) => Settled::Dead {
                attempts,
                why,
                failure,
                attempt,
            },
        }
    }

    /// The failure, unless it was delivered.
    pub(super) fn failure(&self) -> Option<&Failure> {
        match self {
            Settled::Delivered => None,
            Settled::Retry { failure, .. } | Settled::Dead { failure, .. } => Some(failure),
        }
    }

    /// Whether it says the subscriber is failing (so the lane should spill rather than
    /// hold events in memory): a retry, or attempts run out. A final status is the
    /// subscriber refusing one event on purpose, which says nothing of the others.
    pub(super) fn says_failing(&self) -> Option<bool> {
        match self {
            Settled::Delivered => Some(false),
            Settled::Retry { .. } => Some(true),
            Settled::Dead { why, .. } => match why {
                DeadWhy::Exhausted => Some(true),
                DeadWhy::Final(_) => None,
            },
        }
    }

    /// As the spill log records it on the event's row.
    pub(super) fn for_row(self) -> SpillOutcome {
        match self {
            Settled::Delivered => SpillOutcome::Delivered,
            Settled::Retry {
                attempts,
                after,
                attempt,
                ..
            } => SpillOutcome::Retry {
                attempts: attempts as i32,
                after,
                attempt,
            },
            Settled::Dead {
                attempts, attempt, ..
            } => SpillOutcome::Dead {
                attempts: attempts as i32,
                attempt,
            },
        }
    }
}

impl Lane {
    /// Settles attempt number `attempts` of event `id`: its time and outcome go to the
    /// metrics, the circuit breaker and the `failing` flag, and the retry policy says
    /// what comes next.
    pub(super) fn settle(&self, id: &str, attempts: u32, result: Attempt, took: Duration) -> Settled {
        self.metrics.observe(took.as_secs_f64());
        self.count_outcome(result.failure());
        let settled = Settled::judge(attempts, result, took, |a, f| self.target.verdict(a, f));
        if let Some(failing) = settled.says_failing() {
            self.failing.store(failing, Ordering::Relaxed);
        }
        match &settled {
            Settled::Delivered => {
                self.metrics.delivered.add(1);
                self.metrics.note_delivered();
            }
            Settled::Retry { attempt, .. } | Settled::Dead { attempt, .. } => {
                self.metrics.note_failure(crate::metrics::LastFailure {
                    id: id.to_string(),
                    at: attempt.at.clone(),
                    status: attempt.status,
                    error: attempt.error.clone(),
                });
            }
        }
        match &settled {
            Settled::Delivered => {}
            Settled::Retry { failure, .. } => {
                self.metrics.retried.add(1);
                tracing::debug!(subscriber = %self.name, %id, attempts, error = %failure.error, "delivery failed");
            }
            // Counted when its dead letter is written.
            Settled::Dead { .. } => {}
        }
        settled
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn failed(status: Option<u16>) -> Attempt {
        Attempt::Failed(Failure {
            error: "no".into(),
            status,
            retry_after: None,
            unshapeable: false,
            echo: false,
        })
    }

    #[test]
    fn a_delivery_is_settled_without_asking_the_policy() {
        let s = Settled::judge(3, Attempt::Delivered, Duration::ZERO, |_, _| {
            panic!("the policy was asked about a delivery")
        });
        assert!(matches!(s, Settled::Delivered));
        assert_eq!(s.says_failing(), Some(false));
        assert!(matches!(s.for_row(), SpillOutcome::Delivered));
    }

    #[test]
    fn a_retry_keeps_its_wait_attempt_count_and_history_entry() {
        let s = Settled::judge(2, failed(Some(503)), Duration::from_millis(40), |attempts, f| {
            assert_eq!((attempts, f.status), (2, Some(503)));
            Verdict::Retry(Duration::from_secs(7))
        });
        assert_eq!(s.says_failing(), Some(true));
        assert_eq!(s.failure().and_then(|f| f.status), Some(503));
        match s.for_row() {
            SpillOutcome::Retry {
                attempts,
                after,
                attempt,
            } => {
                assert_eq!((attempts, after), (2, Duration::from_secs(7)));
                assert_eq!((attempt.status, attempt.ms), (Some(503), 40));
            }
            other => panic!("{other:?}"),
        }
    }

    /// The open finding of the last review: a final status (the subscriber refusing one
    /// event on purpose) marked the lane failing, which spilled a healthy lane.
    #[test]
    fn a_final_status_does_not_make_the_lane_failing_but_running_out_does() {
        let fin = Settled::judge(1, failed(Some(422)), Duration::ZERO, |_, _| {
            Verdict::Dead(DeadWhy::Final(422))
        });
        assert_eq!(fin.says_failing(), None);
        let out = Settled::judge(9, failed(None), Duration::ZERO, |_, _| {
            Verdict::Dead(DeadWhy::Exhausted)
        });
        assert_eq!(out.says_failing(), Some(true));
        assert!(matches!(out.for_row(), SpillOutcome::Dead { attempts: 9, .. }));
    }
}
