//! Leadership. Several walhook processes may run on one config: the one holding the
//! slot's lease in the state database (`walhook.leases`, sql/004_leases.sql) leads, that
//! is streams the slot and delivers; the others stand by and poll the lease.
//!
//! Timing, with `state.lease` = L: the leader renews every L/3 on a connection of its
//! own. A renewal sets the lease to expire L after the database executed it, so a leader
//! that measures from the moment it *sent* its last confirmed renewal knows the lease is
//! still its own for L. It treats the lease as lapsed after L - L/3 (a margin for clock
//! rate and scheduling), well before a standby may take it.
//!
//! What a leader does when its lease lapses depends on whether a standby exists. Once a
//! renewal has seen a standby polling, the leader stops delivering at once when the
//! lease lapses: it aborts every delivery in flight and closes the slot, before the
//! standby may take the lease. A leader that never saw a standby keeps delivering
//! through a state database outage (a lone walhook's hot lanes go on). A standby that
//! shows up meanwhile and takes the expired lease cannot stream: the slot serves one
//! connection at a time, and the lapsed leader stops at once when it loses the slot's
//! connection, and stands by when it learns that another process holds the lease.
//!
//! A holder that is known to have exited (same host and pid namespace, pid gone) is
//! not waited out: a restarted walhook takes over at once.

use std::sync::atomic::Ordering;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use tokio::time::{timeout, Instant};
use tokio_postgres::Client;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;
use crate::progress::Progress;

/// How often a standby polls the lease (at most).
const POLL: Duration = Duration::from_secs(1);

/// This process's name in the lease table: host, boot id, pid namespace, pid and a random
/// tag (a pid is reused across restarts, containers all run as pid 1, and host names and
/// namespace ids repeat across machines; the boot id does not).
pub fn holder_id() -> &'static str {
    static ID: OnceLock<String> = OnceLock::new();
    ID.get_or_init(|| {
        let host = std::env::var("HOSTNAME")
            .ok()
            .filter(|h| !h.is_empty())
            .or_else(|| {
                std::fs::read_to_string("/proc/sys/kernel/hostname")
                    .ok()
                    .map(|h| h.trim().to_string())
            })
            .unwrap_or_else(|| "localhost".into());
        let pidns = std::fs::read_link("/proc/self/ns/pid")
            .map(|l| l.to_string_lossy().chars().filter(char::is_ascii_digit).collect())
            .unwrap_or_else(|_| String::from("0"));
        let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
            .map(|b| b.trim().to_string())
            .unwrap_or_default();
        format!(
            "{host}:{boot}:{pidns}:{}:{:08x}",
            std::process::id(),
            rand::random::<u32>()
        )
    })
}

/// True when `holder` was a process on this machine and boot (and pid namespace) that is
/// gone: its pid no longer runs, or is this process's own (a restart with the same pid).
/// Then its lease needs no waiting out. Never true without a boot id to compare.
fn is_gone(holder: &str) -> bool {
    fn split(id: &str) -> Option<(&str, &str)> {
        let mut parts = id.rsplitn(3, ':');
        let _tag = parts.next()?;
        let pid = parts.next()?;
        Some((parts.next()?, pid))
    }
    let (Some((place, pid)), Some((here, me))) = (split(holder), split(holder_id())) else {
        return false;
    };
    holder != holder_id()
        && place == here
        && !place.contains("::")
        && (pid == me || !std::path::Path::new(&format!("/proc/{pid}")).exists())
}

/// The slot's lease, held by this process.
pub struct Lease {
    url: String,
    slot: String,
    period: Duration,
    conn: Option<Client>,
    epoch: i64,
    /// When the poll that took the lease was sent: the lease is this process's from then.
    since: Instant,
}

/// What a standby learnt from one poll.
enum Poll {
    Acquired(i64),
    Held { holder: String, expires_in: f64 },
}

impl Lease {
    /// Waits as a standby until this process holds the lease. None when cancelled first.
    pub async fn acquire(
        url: &str,
        slot: &str,
        period: Duration,
        cancel: &CancellationToken,
    ) -> Option<Lease> {
        let mut lease = Lease {
            url: url.to_string(),
            slot: slot.to_string(),
            period,
            conn: None,
            epoch: 0,
            since: Instant::now(),
        };
        let poll = POLL.min(period / 3);
        let mut shown: Option<String> = None;
        let mut unreachable = false;
        let mut gone = String::new();
        loop {
            if cancel.is_cancelled() {
                return None;
            }
            lease.since = Instant::now();
            match timeout(period / 3, lease.poll(&gone)).await {
                Ok(Ok(Poll::Acquired(epoch))) => {
                    lease.epoch = epoch;
                    tracing::info!(slot = %slot, holder = holder_id(), epoch,
                        "leading: this walhook holds the slot's lease");
                    return Some(lease);
                }
                Ok(Ok(Poll::Held { holder, expires_in })) => {
                    unreachable = false;
                    if is_gone(&holder) && gone != holder {
                        tracing::info!(slot = %slot, leader = %holder,
                            "the walhook holding the slot's lease is gone (its process has exited): taking over now");
                        gone = holder;
                        continue;
                    }
                    if shown.as_deref() != Some(holder.as_str()) {
                        tracing::info!(slot = %slot, leader = %holder,
                            lease_expires_in = format!("{expires_in:.1}s"),
                            "standing by: another walhook leads this slot; taking over when its lease expires");
                        shown = Some(holder);
                    }
                }
                failed => {
                    lease.conn = None;
                    if !unreachable {
                        let error = match failed {
                            Ok(Err(e)) => e.to_string(),
                            _ => "no answer in time".into(),
                        };
                        tracing::warn!(error = %error,
                            "standing by: cannot read the slot's lease from the state database; will retry");
                        unreachable = true;
                    }
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => return None,
                _ = tokio::time::sleep(poll) => {}
            }
        }
    }

    async fn client(&mut self) -> Result<&Client, String> {
        if self.conn.as_ref().is_none_or(Client::is_closed) {
            let target = crate::pg::PgTarget::parse(&self.url)?;
            let client = target
                .connect("state database (lease)")
                .await
                .map_err(|e| crate::pg::describe(&e))?;
            self.conn = Some(client);
        }
        Ok(self.conn.as_ref().expect("just connected"))
    }

    fn secs(&self) -> f64 {
        self.period.as_secs_f64()
    }

    /// Takes the lease when it is free, expired, this process's, or held by `gone` (a
    /// holder known to have exited).
    async fn poll(&mut self, gone: &str) -> Result<Poll, String> {
        let (slot, secs) = (self.slot.clone(), self.secs());
        let c = self.client().await?;
        let won = c
            .query_opt(
                "INSERT INTO walhook.leases AS l (slot, holder, epoch, expires_at)
                 VALUES ($1, $2, 1, now() + make_interval(secs => $3))
                 ON CONFLICT (slot) DO UPDATE
                   SET holder = excluded.holder, epoch = l.epoch + 1,
                       expires_at = excluded.expires_at, fences = false,
                       standby_seen_at = NULL, acquired_at = now()
                   WHERE l.holder = excluded.holder OR l.holder = $4 OR l.expires_at < now()
                 RETURNING epoch",
                &[&slot, &holder_id(), &secs, &gone],
            )
            .await
            .map_err(|e| crate::pg::describe(&e))?;
        if let Some(row) = won {
            return Ok(Poll::Acquired(row.get(0)));
        }
        let row = c
            .query_one(
                "UPDATE walhook.leases SET standby_seen_at = now() WHERE slot = $1
                 RETURNING holder, extract(epoch FROM expires_at - now())::float8",
                &[&slot],
            )
            .await
            .map_err(|e| crate::pg::describe(&e))?;
        Ok(Poll::Held {
            holder: row.get(0),
            expires_in: row.get(1),
        })
    }

    /// Renews; Some(whether a standby was seen) while the lease is still ours, None once
    /// another process took it.
    async fn renew(&mut self) -> Result<Option<bool>, String> {
        let (slot, secs, epoch) = (self.slot.clone(), self.secs(), self.epoch);
        let c = self.client().await?;
        let row = c
            .query_opt(
                "UPDATE walhook.leases
                 SET expires_at = now() + make_interval(secs => $3),
                     fences = coalesce(standby_seen_at > now() - make_interval(secs => $3), false)
                 WHERE slot = $1 AND holder = $2 AND epoch = $4
                 RETURNING fences",
                &[&slot, &holder_id(), &secs, &epoch],
            )
            .await
            .map_err(|e| crate::pg::describe(&e))?;
        Ok(row.map(|r| r.get(0)))
    }

    /// Gives the lease up (at shutdown, after the last delivery), so a standby takes
    /// over at its next poll.
    async fn release(&mut self) {
        let (slot, epoch) = (self.slot.clone(), self.epoch);
        let done = timeout(self.period / 3, async {
            let c = self.client().await?;
            c.execute(
                "UPDATE walhook.leases SET expires_at = now(), fences = true
                 WHERE slot = $1 AND holder = $2 AND epoch = $3",
                &[&slot, &holder_id(), &epoch],
            )
            .await
            .map_err(|e| crate::pg::describe(&e))
        })
        .await;
        match done {
            Ok(Ok(_)) => tracing::info!(slot = %slot, "lease released: a standby may take over"),
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot release the lease; a standby takes over when it expires")
            }
            Err(_) => {
                tracing::warn!("cannot release the lease in time; a standby takes over when it expires")
            }
        }
    }

    /// Renews the lease until `stop`, then releases it. When the lease is lost, or lapses
    /// after a standby was seen, cancels `progress.fence` (everything that delivers stops
    /// at once) and returns; a lapse without a standby sets `progress.lapsed` instead.
    pub async fn keep(mut self, progress: Arc<Progress>, metrics: Arc<Metrics>, stop: CancellationToken) {
        let every = self.period / 3;
        let hold = self.period - every;
        metrics.leader.set(1);
        let mut confirmed = self.since;
        let mut next = confirmed + every;
        let mut fences = false;
        let mut failing = false;
        loop {
            let deadline = confirmed + hold;
            let lapsed = progress.lapsed.load(Ordering::Relaxed);
            let wake = if lapsed { next } else { next.min(deadline) };
            tokio::select! {
                _ = stop.cancelled() => {
                    self.release().await;
                    metrics.leader.set(0);
                    return;
                }
                _ = progress.fence.cancelled() => {
                    metrics.leader.set(0);
                    return;
                }
                _ = tokio::time::sleep_until(wake) => {}
            }
            let now = Instant::now();
            if now >= deadline && !lapsed {
                if fences {
                    tracing::error!(lease = ?self.period,
                        "lease lapsed (the state database did not answer): a standby may take over, so this walhook stops delivering at once and stands by");
                    metrics.leader.set(0);
                    progress.fence.cancel();
                    return;
                }
                progress.lapsed.store(true, Ordering::SeqCst);
                if !progress.streaming.load(Ordering::SeqCst) {
                    tracing::error!(
                        "lease lapsed (the state database did not answer) while the slot's connection is down: this walhook stops delivering at once and stands by"
                    );
                    metrics.leader.set(0);
                    progress.fence.cancel();
                    return;
                }
                tracing::warn!(
                    "lease lapsed (the state database did not answer); no standby was seen, so delivery goes on until the slot's connection is lost"
                );
            }
            if now < next {
                continue;
            }
            next = now + every;
            let budget = if progress.lapsed.load(Ordering::Relaxed) {
                every
            } else {
                deadline.saturating_duration_since(now).min(every)
            };
            match timeout(budget, self.renew()).await {
                Ok(Ok(Some(seen))) => {
                    confirmed = now;
                    if seen && !fences {
                        tracing::info!(
                            "a standby is waiting: should this walhook lose the state database, it stops delivering and the standby takes over"
                        );
                    }
                    fences = seen;
                    if failing || progress.lapsed.swap(false, Ordering::Relaxed) {
                        tracing::info!("lease renewed");
                    }
                    failing = false;
                }
                Ok(Ok(None)) => {
                    tracing::error!(
                        "another walhook took over the slot's lease: this one stops delivering at once and stands by"
                    );
                    metrics.leader.set(0);
                    progress.fence.cancel();
                    return;
                }
                failed => {
                    self.conn = None;
                    if !failing {
                        let error = match failed {
                            Ok(Err(e)) => e,
                            _ => "no answer in time".into(),
                        };
                        tracing::warn!(error = %error, "cannot renew the lease; will retry");
                        failing = true;
                    }
                }
            }
        }
    }
}
