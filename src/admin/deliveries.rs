//! The deliveries API, behind the admin token (see `session.rs`):
//! - `GET /deliveries?status=dead|pending&subscriber=&type=&key=&id=&since=&until=&limit=&offset=&count=true`
//!   lists deliveries, newest first (dead ones by default, at most 100 unless `limit`;
//!   `offset` pages on, `count` adds the number of all that match as `total`);
//! - `GET /deliveries/{subscriber}/{id}` shows one, with its standard body;
//! - `POST /deliveries/replay` with `{"subscriber": ..., "id"|"type"|"key"|"since"|"until": ...}`
//!   (or `"all": true`) replays that subscriber's matching dead letters with their ids and
//!   bodies;

use axum::extract::{Path, Query, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::Admin;
use crate::state::deliveries::{Filter, Page, Status};

const DEFAULT_LIMIT: i64 = 100;
const MAX_LIMIT: i64 = 10_000;

pub fn routes() -> Router<Admin> {
    Router::new()
        .route("/deliveries", get(list))
        .route("/deliveries/replay", post(replay))
        .route("/deliveries/:subscriber/:id", get(show))
}

/// Runs a change `op` of the leader (the caller found the subscriber's lane, which only
/// a process holding the lease has) in a task of its own, so a request dropped half-way
/// does not leave it half done, and gives it up at once when this process loses its
/// lease (nothing more may be written then). A failure becomes the answer to give.
pub(super) async fn as_leader<T, F>(a: &Admin, op: F) -> Result<T, Response>
where
    T: Send + 'static,
    F: std::future::Future<Output = Result<T, crate::state::StateError>> + Send + 'static,
{
    let fence = a.progress.fence.clone();
    let done = tokio::spawn(async move {
        tokio::select! {
            biased;
            _ = fence.cancelled() => Err(crate::state::StateError::Fenced),
            r = op => r,
        }
    })
    .await;
    match done {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(error(StatusCode::SERVICE_UNAVAILABLE, e.to_string())),
        Err(e) => Err(error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

pub(super) fn error(code: StatusCode, message: impl Into<String>) -> Response {
    (code, Json(json!({ "error": message.into() }))).into_response()
}

/// The lane of subscriber `name`.
pub(super) fn lane_named(a: &Admin, name: &str) -> Option<std::sync::Arc<crate::lanes::Lane>> {
    a.lanes().iter().find(|l| l.name == name).cloned()
}

/// The 404 for a subscriber there is not, with the names there are.
pub(super) fn no_subscriber(a: &Admin, name: &str) -> Response {
    if a.lanes.get().is_none() {
        return standby();
    }
    let names: Vec<&str> = a.lanes().iter().map(|l| l.name.as_str()).collect();
    error(
        StatusCode::NOT_FOUND,
        format!("no subscriber {name:?} (there are: {})", names.join(", ")),
    )
}

/// The 503 for what only the leader does.
fn standby() -> Response {
    error(
        StatusCode::SERVICE_UNAVAILABLE,
        "this walhook is a standby (another one holds the slot's lease): ask the one that leads",
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    status: Option<Status>,
    subscriber: Option<String>,
    #[serde(rename = "type")]
    event_type: Option<String>,
    key: Option<String>,
    id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    limit: Option<i64>,
    /// Rows to skip (the console's pages).
    offset: Option<i64>,
    /// Also count every match (`"total"` in the answer).
    #[serde(default)]
    count: bool,
}

async fn list(
    AxumState(a): AxumState<Admin>,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Response {
    let Query(q) = match query {
        Ok(q) => q,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let filter = Filter {
        subscriber: q.subscriber,
        event_type: q.event_type,
        key: q.key,
        id: q.id,
        since: q.since,
        until: q.until,
    };
    if let Err(e) = filter.check() {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let page = Page {
        limit: q.limit.unwrap_or(DEFAULT_LIMIT).clamp(1, MAX_LIMIT),
        offset: q.offset.unwrap_or(0).max(0),
    };
    let status = q.status.unwrap_or_default();
    let total = match q.count {
        true => match a.state.count_deliveries(status, &filter).await {
            Ok(n) => Some(n),
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        },
        false => None,
    };
    match a.state.deliveries(status, &filter, page, false).await {
        Ok(d) => {
            let mut answer = json!({ "deliveries": d });
            if let Some(n) = total {
                answer["total"] = n.into();
            }
            Json(answer).into_response()
        }
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn show(AxumState(a): AxumState<Admin>, Path((subscriber, id)): Path<(String, String)>) -> Response {
    let filter = Filter {
        subscriber: Some(subscriber.clone()),
        id: Some(id.clone()),
        ..Filter::default()
    };
    if let Err(e) = filter.check() {
        return error(StatusCode::BAD_REQUEST, e);
    }
    for status in [Status::Dead, Status::Pending] {
        match a
            .state
            .deliveries(status, &filter, Page { limit: 1, offset: 0 }, true)
            .await
        {
            Ok(mut d) if !d.is_empty() => {
                let d = d.remove(0);
                // The body as text too, every digit kept (a browser's JSON.parse rounds
                // numbers past double precision).
                let text = d.body.as_ref().and_then(|b| serde_json::to_string_pretty(b).ok());
                let mut shown = serde_json::to_value(d).unwrap_or_default();
                shown["body_text"] = text.into();
                return Json(shown).into_response();
            }
            Ok(_) => {}
            Err(e) => return error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        }
    }
    error(
        StatusCode::NOT_FOUND,
        format!("no dead or pending delivery {id} for subscriber {subscriber:?}"),
    )
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ReplayRequest {
    subscriber: String,
    #[serde(rename = "type")]
    event_type: Option<String>,
    key: Option<String>,
    id: Option<String>,
    since: Option<String>,
    until: Option<String>,
    /// Every dead letter of the subscriber (required when no other filter is given).
    #[serde(default)]
    all: bool,
}

async fn replay(
    AxumState(a): AxumState<Admin>,
    body: Result<Json<ReplayRequest>, axum::extract::rejection::JsonRejection>,
) -> Response {
    let Json(req) = match body {
        Ok(b) => b,
        Err(e) => return error(StatusCode::BAD_REQUEST, e.body_text()),
    };
    let Some(lane) = lane_named(&a, &req.subscriber) else {
        return no_subscriber(&a, &req.subscriber);
    };
    let filter = Filter {
        subscriber: Some(req.subscriber.clone()),
        event_type: req.event_type,
        key: req.key,
        id: req.id,
        since: req.since,
        until: req.until,
    };
    if let Err(e) = filter.check() {
        return error(StatusCode::BAD_REQUEST, e);
    }
    let narrowed = filter.event_type.is_some()
        || filter.key.is_some()
        || filter.id.is_some()
        || filter.since.is_some()
        || filter.until.is_some();
    if !narrowed && !req.all {
        return error(
            StatusCode::BAD_REQUEST,
            "name what to replay (id, type, key, since, until) or send \"all\": true for every dead letter of the subscriber",
        );
    }
    if !a.progress.leading.load(std::sync::atomic::Ordering::Relaxed) {
        // The lanes take over the spill log when the stream starts; a replay waits for it.
        return error(
            StatusCode::SERVICE_UNAVAILABLE,
            "this walhook leads but has not started streaming the slot yet: try again in a moment",
        );
    }
    // A request dropped half-way must not leave the moved rows unserved.
    match as_leader(&a, async move { lane.replay(&filter).await }).await {
        Ok(ids) => Json(json!({ "replayed": ids.len(), "ids": ids })).into_response(),
        Err(r) => r,
    }
}

#[cfg(test)]
mod tests {
    use super::super::subscribers::{check_reason, MAX_REASON_CHARS};
    use super::*;
    use crate::state::deliveries::MAX_FILTER_BYTES;

    #[test]
    fn reasons_and_filters_that_cannot_be_stored_are_refused() {
        assert!(check_reason("receiver maintenance (ticket #42), back at 14:00 — ok").is_ok());
        assert!(check_reason(&"é".repeat(MAX_REASON_CHARS)).is_ok());
        for (bad, want) in [
            ("a\0b".to_string(), "NUL"),
            ("a\nb".to_string(), "control character"),
            ("a\tb".to_string(), "control character"),
            ("x".repeat(MAX_REASON_CHARS + 1), "1001 characters"),
        ] {
            let e = check_reason(&bad).unwrap_err();
            assert!(e.starts_with("reason ") && e.contains(want), "{bad:?}: {e}");
        }
        let ok = Filter {
            subscriber: Some("s".into()),
            key: Some(format!("public.t|{{\"id\":\"{}\"}}", "k".repeat(1000))),
            since: Some("2026-11-23T10:00:00Z".into()),
            ..Filter::default()
        };
        assert_eq!(ok.check(), Ok(()));
        for (filter, want) in [
            (
                Filter {
                    id: Some("evt\0".into()),
                    ..ok.clone()
                },
                "id holds a NUL byte",
            ),
            (
                Filter {
                    event_type: Some("t\0".into()),
                    ..ok.clone()
                },
                "type holds a NUL byte",
            ),
            (
                Filter {
                    since: Some("2026-11-23T10:00:00Z\0".into()),
                    ..ok.clone()
                },
                "since holds a NUL byte",
            ),
            (
                Filter {
                    key: Some("k".repeat(MAX_FILTER_BYTES + 1)),
                    ..ok.clone()
                },
                "key is 8193 bytes long; at most 8192",
            ),
        ] {
            let e = filter.check().unwrap_err();
            assert!(e.contains(want), "{filter:?}: {e}");
        }
    }
}
