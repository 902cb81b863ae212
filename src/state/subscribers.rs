//! Subscribers stopped by an operator (paused) or by walhook (disabled), kept across
//! restarts in `walhook.subscribers`.

use std::collections::HashMap;

use serde::Serialize;

use super::{State, StateError};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StopKind {
    /// By an operator.
    Paused,
    /// By walhook: 410 Gone, or failing past the circuit breaker's limits.
    Disabled,
}

impl StopKind {
    pub fn as_str(self) -> &'static str {
        match self {
            StopKind::Paused => "paused",
            StopKind::Disabled => "disabled",
        }
    }
}

/// Why and since when a subscriber is stopped.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Stop {
    pub status: StopKind,
    pub reason: String,
    /// RFC 3339, UTC.
    pub since: String,
}

impl State {
    /// Every stopped subscriber of this slot, by name.
    pub async fn stops(&self) -> Result<HashMap<String, Stop>, StateError> {
        let rows = self
            .client()
            .await?
            .query(
                "SELECT subscriber, status, reason,
                        to_char(since AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')
                 FROM walhook.subscribers WHERE slot = $1",
                &[&self.slot],
            )
            .await?;
        Ok(rows
            .into_iter()
            .map(|r| {
                let status = if r.get::<_, String>(1) == "paused" {
                    StopKind::Paused
                } else {
                    StopKind::Disabled
                };
                (
                    r.get(0),
                    Stop {
                        status,
                        reason: r.get(2),
                        since: r.get(3),
                    },
                )
            })
            .collect())
    }

    /// Records that `subscriber` is stopped (replacing an earlier record).
    pub async fn set_stop(&self, subscriber: &str, stop: &Stop) -> Result<(), StateError> {
        self.client()
            .await?
            .execute(
                "INSERT INTO walhook.subscribers (slot, subscriber, status, reason)
                 VALUES ($1, $2, $3, $4)
                 ON CONFLICT (slot, subscriber) DO UPDATE SET status = $3, reason = $4, since = now()",
                &[&self.slot, &subscriber, &stop.status.as_str(), &stop.reason],
            )
            .await?;
        Ok(())
    }

    /// Records that `subscriber` is active again.
    pub async fn clear_stop(&self, subscriber: &str) -> Result<(), StateError> {
        self.client()
            .await?
            .execute(
                "DELETE FROM walhook.subscribers WHERE slot = $1 AND subscriber = $2",
                &[&self.slot, &subscriber],
            )
            .await?;
        Ok(())
    }
}
