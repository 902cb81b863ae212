//! The subscribers API, behind the admin token (see `session.rs`):
//! - `GET /subscribers` lists the subscribers with their status (active, paused,
//!   disabled) and reason, their mode (hot, spilling, down, paused, disabled), their
//!   backlog in memory and in the spill log, their dead letters, delivered per second and
//!   latency p50/p99 over the last minute, and their last failed attempt;
//! - `POST /subscribers/{name}/pause` (optional `{"reason": ...}`) and
//!   `POST /subscribers/{name}/resume` stop and restart a subscriber's deliveries.

use std::sync::atomic::Ordering;

use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::deliveries::{as_leader, error, lane_named, no_subscriber};
use super::Admin;
use crate::lanes::{Lane, Mode};
use crate::state::deliveries::check_text;

pub fn routes() -> Router<Admin> {
    Router::new()
        .route("/subscribers", get(subscribers))
        .route("/subscribers/:name/:action", post(pause_or_resume))
}

/// What a lane is doing, in one word: paused or disabled (by an operator or its circuit
/// breaker), down (probed one attempt at a time), spilling (its events go through the
/// spill log), or hot.
pub fn mode(lane: &Lane) -> &'static str {
    if let Some(stop) = lane.stop_info() {
        return stop.status.as_str();
    }
    if lane.metrics.down.load(Ordering::Relaxed) {
        return "down";
    }
    match lane.mode() {
        Mode::Hot => "hot",
        Mode::Spill | Mode::Draining => "spilling",
    }
}

async fn subscribers(AxumState(a): AxumState<Admin>) -> Response {
    // The spill log's counts come from the state database; a standby has no lanes to
    // count for, and a state database that does not answer leaves them out.
    let counts = match a.lanes().is_empty() {
        true => None,
        false => a.history.counts(&a.state).await,
    };
    let config = a.config.get();
    let list: Vec<serde_json::Value> = a
        .lanes()
        .iter()
        .map(|l| {
            let stop = l.stop_info();
            let recent = a.history.recent(l);
            let (spilled, dead) = counts
                .as_ref()
                .map(|c| c.get(&l.name).copied().unwrap_or((0, 0)))
                .map_or((None, None), |(s, d)| (Some(s), Some(d)));
            let url = config
                .subscribers
                .iter()
                .find(|s| s.name == l.name)
                .map(|s| super::masked::webhook_url(&s.url));
            json!({
                "name": l.name,
                "url": url,
                "status": stop.as_ref().map_or("active", |s| s.status.as_str()),
                "reason": stop.as_ref().map(|s| s.reason.clone()),
                "since": stop.as_ref().map(|s| s.since.clone()),
                "mode": mode(l),
                "backlog_in_memory": l.backlog(),
                "backlog_in_log": spilled,
                "dead_letters": dead,
                "delivered_total": l.metrics.delivered.get(),
                "delivered_per_second": recent.delivered_per_second,
                "p50_ms": recent.p50_ms,
                "p99_ms": recent.p99_ms,
                "failing_since": l.metrics.failing_since_ms().map(rfc3339_ms),
                "last_failure": l.metrics.last_failure(),
            })
        })
        .collect();
    Json(json!({ "subscribers": list })).into_response()
}

fn rfc3339_ms(unix_ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(unix_ms);
    humantime::format_rfc3339_millis(t).to_string()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PauseRequest {
    reason: Option<String>,
}

async fn pause_or_resume(
    AxumState(a): AxumState<Admin>,
    Path((name, action)): Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let Some(lane) = lane_named(&a, &name) else {
        return no_subscriber(&a, &name);
    };
    let result = match action.as_str() {
        "pause" => {
            let req: PauseRequest = if body.is_empty() {
                PauseRequest::default()
            } else {
                match serde_json::from_slice(&body) {
                    Ok(r) => r,
                    Err(e) => return error(StatusCode::BAD_REQUEST, format!("not a pause request: {e}")),
                }
            };
            let reason = req
                .reason
                .unwrap_or_else(|| "paused through the admin API".into());
            if let Err(e) = check_reason(&reason) {
                return error(StatusCode::BAD_REQUEST, e);
            }
            let l = lane.clone();
            as_leader(&a, async move { l.pause(&reason).await.map(|_| ()) }).await
        }
        "resume" => {
            let l = lane.clone();
            as_leader(&a, async move { l.resume().await.map(|_| ()) }).await
        }
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no action {action:?}: use pause or resume"),
            )
        }
    };
    match result {
        Ok(()) => {
            let status = lane.stop_info().map_or("active", |s| s.status.as_str());
            Json(json!({ "name": name, "status": status })).into_response()
        }
        Err(r) => r,
    }
}

/// A pause reason's length limit, in characters: a sentence or a ticket reference.
pub(super) const MAX_REASON_CHARS: usize = 1000;

/// Why a pause reason is refused, if it is: it is stored, listed on one line by
/// `walhook subscribers list` and logged, so it is one line of text of moderate length.
pub(super) fn check_reason(reason: &str) -> Result<(), String> {
    check_text("reason", reason, usize::MAX)?;
    if reason.chars().any(char::is_control) {
        return Err("reason holds a control character (a line break, tab, ...): write it on one line".into());
    }
    let n = reason.chars().count();
    if n > MAX_REASON_CHARS {
        return Err(format!(
            "reason is {n} characters long; at most {MAX_REASON_CHARS} characters are taken"
        ));
    }
    Ok(())
}
