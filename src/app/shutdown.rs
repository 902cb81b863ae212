//! Turns SIGTERM and SIGINT into a cancelled token, and bounds the stop that follows by
//! one grace period (`shutdown_grace`).

use std::sync::OnceLock;
use std::time::Duration;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

pub fn on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    tracing::error!(error = %e, "cannot listen for SIGTERM");
                    let _ = ctrl_c.await;
                    token.cancel();
                    return;
                }
            };
            tokio::select! {
                _ = ctrl_c => tracing::info!("SIGINT received"),
                _ = term.recv() => tracing::info!("SIGTERM received"),
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        token.cancel();
    });
}

/// SIGHUP, as a permit on the returned `Notify` (kept when nobody waits). Installed at
/// start, so a SIGHUP never terminates the process.
pub fn on_hangup() -> std::sync::Arc<tokio::sync::Notify> {
    let notify = std::sync::Arc::new(tokio::sync::Notify::new());
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(mut hup) => {
                let n = notify.clone();
                tokio::spawn(async move {
                    while hup.recv().await.is_some() {
                        tracing::info!("SIGHUP received: reloading the config");
                        n.notify_one();
                    }
                });
            }
            Err(e) => tracing::error!(error = %e, "cannot listen for SIGHUP; config reloads are off"),
        }
    }
    notify
}

/// When a run's stop began, so that every step of it shares one grace period
/// (`shutdown_grace`). The first [`StopClock::begin`] starts the clock; later calls get
/// the same budget.
pub struct StopClock {
    grace: Duration,
    began: OnceLock<Instant>,
}

impl StopClock {
    pub fn new(grace: Duration) -> StopClock {
        StopClock {
            grace,
            began: OnceLock::new(),
        }
    }

    /// The stop's budget, from now unless it began before.
    pub fn begin(&self) -> StopBudget {
        StopBudget {
            began: *self.began.get_or_init(Instant::now),
            grace: self.grace,
        }
    }
}

/// One stop's time budget: everything from the stop signal (or the end of streaming) to
/// the exit fits in `grace`, so a supervisor can be told how long to wait (Kubernetes'
/// `terminationGracePeriodSeconds`). In-flight deliveries may finish until
/// [`deliveries`](Self::deliveries); then every task is told to stop, and at
/// [`abandon`](Self::abandon) the ones still busy are dropped where they wait (an
/// unanswered request is abandoned: its event is still pending, so the slot and the
/// lane's watermark stay before it and the next start sends it again); the last
/// watermark save ends by [`save`](Self::save) and the lease release by
/// [`end`](Self::end).
#[derive(Debug, Clone, Copy)]
pub struct StopBudget {
    began: Instant,
    grace: Duration,
}

impl StopBudget {
    /// What is kept after the deliveries for the rest of the stop: a fifth of the grace,
    /// at most 2 s (stopping tasks, one small statement, the lease release).
    fn reserve(&self) -> Duration {
        (self.grace / 5).min(Duration::from_secs(2))
    }

    pub fn deliveries(&self) -> Instant {
        self.end() - self.reserve()
    }

    pub fn abandon(&self) -> Instant {
        self.end() - self.reserve() * 3 / 4
    }

    pub fn save(&self) -> Instant {
        self.end() - self.reserve() / 4
    }

    pub fn end(&self) -> Instant {
        self.began + self.grace
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_step_of_a_stop_fits_in_the_grace_in_order() {
        for grace in [1, 2, 10, 30, 600].map(Duration::from_secs) {
            let clock = StopClock::new(grace);
            let b = clock.begin();
            let began = b.began;
            assert!(began < b.deliveries(), "{grace:?}");
            assert!(b.deliveries() < b.abandon(), "{grace:?}");
            assert!(b.abandon() < b.save(), "{grace:?}");
            assert!(b.save() < b.end(), "{grace:?}");
            assert_eq!(b.end() - began, grace);
            // Deliveries get most of it: all but 2 s, or four fifths of a short grace.
            let rest = b.end() - b.deliveries();
            assert_eq!(rest, (grace / 5).min(Duration::from_secs(2)), "{grace:?}");
        }
    }

    #[test]
    fn a_stop_has_one_clock() {
        let clock = StopClock::new(Duration::from_secs(10));
        let first = clock.begin();
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(clock.begin().end(), first.end());
    }
}
