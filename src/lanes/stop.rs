//! Stopped subscribers: paused by an operator, or disabled by walhook when the
//! subscriber answers 410 Gone or fails past the circuit breaker's limits
//! (`disable_after`, `disable_after_attempts`). A stopped lane sends nothing: it spills
//! (its events are durable in the spill log, so the slot moves on) and its server makes
//! no attempts until the subscriber is resumed, when the log is served per key in order
//! and the lane returns to hot as after any spill. Stops are kept in
//! `walhook.subscribers`, so they survive restarts.

use std::sync::atomic::Ordering;
use std::time::SystemTime;

use tokio::time::Instant;

use tokio_util::sync::CancellationToken;

use super::deliver::Failure;
use super::Lane;
use crate::state::subscribers::{Stop, StopKind};
use crate::state::StateError;

/// Failures in a row that say the subscriber is unreachable or overloaded.
#[derive(Debug, Default)]
pub(super) struct Breaker {
    failing_since: Option<Instant>,
    in_row: u32,
}

impl Lane {
    /// Whether the subscriber is paused or disabled.
    pub fn is_stopped(&self) -> bool {
        self.stopped.load(Ordering::Relaxed)
    }

    /// Why and since when it is stopped.
    pub fn stop_info(&self) -> Option<Stop> {
        self.stop.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Stops delivery now (the age watch moves a hot lane to spill mode within a tick).
    /// A stopped subscriber stays stopped as it is (attempts in flight that fail too do
    /// not restate it); `pause` clears a disable first. Returns whether it stopped now.
    fn halt(&self, stop: Stop) -> bool {
        let mut current = self.stop.lock().unwrap_or_else(|p| p.into_inner());
        if current.is_some() {
            return false;
        }
        match stop.status {
            StopKind::Disabled => {
                tracing::warn!(subscriber = %self.name, reason = %stop.reason,
                    "subscriber disabled: its events wait in the spill log until it is resumed")
            }
            StopKind::Paused => {
                tracing::info!(subscriber = %self.name, reason = %stop.reason,
                    "subscriber paused: its events wait in the spill log until it is resumed")
            }
        }
        *current = Some(stop);
        drop(current);
        self.stopped.store(true, Ordering::Relaxed);
        self.metrics.stopped.store(true, Ordering::Relaxed);
        self.wake_age.notify_one();
        self.wake_server.notify_one();
        true
    }

    /// Sets the stop a restart found in the state database.
    pub fn restore_stop(&self, stop: Stop) {
        self.halt(stop);
    }

    /// Pauses the subscriber (recorded first, so it holds across a restart).
    pub async fn pause(&self, reason: &str) -> Result<Stop, StateError> {
        let stop = Stop {
            status: StopKind::Paused,
            reason: reason.to_string(),
            since: now(),
        };
        self.state.set_stop(&self.name, &stop).await?;
        // A pause replaces a disable.
        *self.stop.lock().unwrap_or_else(|p| p.into_inner()) = None;
        self.halt(stop.clone());
        Ok(stop)
    }

    /// Resumes a paused or disabled subscriber: its spill log is served in order, then
    /// the lane is hot again. Returns the stop it ended, if any.
    pub async fn resume(&self) -> Result<Option<Stop>, StateError> {
        self.state.clear_stop(&self.name).await?;
        let ended = self.stop.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.stop_dirty.store(false, Ordering::Relaxed);
        *self.breaker.lock().unwrap_or_else(|p| p.into_inner()) = Breaker::default();
        self.stopped.store(false, Ordering::Relaxed);
        self.metrics.stopped.store(false, Ordering::Relaxed);
        if let Some(s) = &ended {
            tracing::info!(subscriber = %self.name, was = s.status.as_str(), "subscriber resumed: its spill log is served in order");
        }
        self.wake_server.notify_one();
        self.wake_workers.notify_waiters();
        Ok(ended)
    }

    /// Counts an attempt's outcome (None: delivered) for the circuit breaker. A 410
    /// Gone, or failing past the limits, disables the subscriber; the stop is recorded
    /// in the state database by the spill server (`persist_stop`).
    pub(super) fn count_outcome(&self, failure: Option<&Failure>) {
        let mut b = self.breaker.lock().unwrap_or_else(|p| p.into_inner());
        let Some(f) = failure else {
            *b = Breaker::default();
            return;
        };
        if f.echo {
            // Its request was counted with another of its events.
            return;
        }
        let reason = if f.status == Some(410) {
            Some(format!("the subscriber answered 410 Gone: {}", f.error))
        } else if f.suggests_down() {
            b.in_row += 1;
            let since = *b.failing_since.get_or_insert_with(Instant::now);
            if since.elapsed() >= self.cfg.disable_after {
                Some(format!(
                    "failing for {} without a success ({} attempts in a row, disable_after = {}); last error: {}",
                    humantime::format_duration(std::time::Duration::from_secs(since.elapsed().as_secs())),
                    b.in_row,
                    humantime::format_duration(self.cfg.disable_after),
                    f.error
                ))
            } else if self.cfg.disable_after_attempts.is_some_and(|n| b.in_row >= n) {
                Some(format!(
                    "{} attempts in a row failed (disable_after_attempts); last error: {}",
                    b.in_row, f.error
                ))
            } else {
                None
            }
        } else {
            None
        };
        drop(b);
        if let Some(reason) = reason {
            let stop = Stop {
                status: StopKind::Disabled,
                reason,
                since: now(),
            };
            if self.halt(stop) {
                self.stop_dirty.store(true, Ordering::Relaxed);
            }
        }
    }

    /// Records a stop the lane decided itself (a disable) in the state database.
    pub(super) async fn persist_stop(&self, cancel: &CancellationToken) {
        if !self.stop_dirty.swap(false, Ordering::Relaxed) {
            return;
        }
        let Some(stop) = self.stop_info() else { return };
        let written = self
            .retry_state(cancel, "record the subscriber's stop", || {
                self.state.set_stop(&self.name, &stop)
            })
            .await;
        if written.is_none() {
            self.stop_dirty.store(true, Ordering::Relaxed);
            return;
        }
        // Resumed while the stop was being written: the record must not outlive it.
        if self.stop_info().is_none() {
            self.retry_state(cancel, "record the subscriber's resume", || {
                self.state.clear_stop(&self.name)
            })
            .await;
        }
    }
}

fn now() -> String {
    humantime::format_rfc3339_seconds(SystemTime::now()).to_string()
}
