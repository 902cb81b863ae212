//! The backfills API, behind the same bearer token as the deliveries API:
//! - `GET /backfills` lists every backfill, newest first, with its progress;
//! - `POST /backfills` with `{"subscriber": ..., "tables": [...], "where": ...}` (tables and
//!   where optional) asks for one, checked as `walhook backfill start` checks it;
//! - `POST /backfills/{id}/pause|resume|cancel` steers one.
//!
//! Requests go to the state database, which every walhook on the slot shares: a standby
//! answers them too, and the leader takes a new backfill up within a second.

use axum::extract::{Path, State as AxumState};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::deliveries::error;
use super::Admin;
use crate::state::backfills::{Request, Status};

pub fn routes() -> Router<Admin> {
    Router::new()
        .route("/backfills", get(list).post(start))
        .route("/backfills/:id/:action", post(steer))
}

async fn list(AxumState(a): AxumState<Admin>) -> Response {
    match a.state.backfills().await {
        Ok(list) => Json(json!({ "backfills": list })).into_response(),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct StartRequest {
    subscriber: String,
    #[serde(default)]
    tables: Vec<String>,
    #[serde(rename = "where")]
    where_sql: Option<String>,
    /// A document to send (instead of the rows of tables).
    document: Option<String>,
}

async fn start(AxumState(a): AxumState<Admin>, body: axum::body::Bytes) -> Response {
    let req: StartRequest = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                format!(
                "not a backfill request ({{\"subscriber\": ..., \"tables\": [...] or \"document\": ..., \"where\": ...}}): {e}"
            ),
            )
        }
    };
    let config = a.config.get();
    let tables = match &req.document {
        Some(_) if !req.tables.is_empty() => Err("give \"tables\" or \"document\", not both".to_string()),
        Some(d) => crate::backfill::document_tables(&config, &req.subscriber, d),
        None => crate::backfill::tables(&config, &req.subscriber, &req.tables),
    };
    let tables = match tables {
        Ok(t) => t,
        Err(e) => return error(StatusCode::BAD_REQUEST, e),
    };
    if let Some(w) = req.where_sql.as_deref().filter(|w| !w.trim().is_empty()) {
        let checked = async {
            let source = crate::pg::PgTarget::parse(&config.source.url)?;
            let client = source
                .connect("backfill check")
                .await
                .map_err(|e| crate::pg::connect_message("source.url", &e))?;
            crate::backfill::check_where(&client, &tables, w).await
        };
        if let Err(e) = checked.await {
            return error(StatusCode::BAD_REQUEST, e);
        }
    }
    let asked = Request {
        subscriber: &req.subscriber,
        tables: &tables,
        where_sql: req.where_sql.as_deref().filter(|w| !w.trim().is_empty()),
        initial: false,
        document: req.document.as_deref(),
    };
    let created = async {
        let id = a.state.create_backfill(&asked).await?;
        a.state.backfill(id).await
    };
    match created.await {
        Ok(Some(b)) => (StatusCode::CREATED, Json(json!(b))).into_response(),
        Ok(None) => error(StatusCode::INTERNAL_SERVER_ERROR, "the backfill was not stored"),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}

async fn steer(AxumState(a): AxumState<Admin>, Path((id, action)): Path<(String, String)>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return error(
            StatusCode::NOT_FOUND,
            format!("no backfill {id:?}: ids are numbers"),
        );
    };
    let (from, to): (&[Status], Status) = match action.as_str() {
        "pause" => (&[Status::Pending, Status::Running], Status::Paused),
        "resume" => (&[Status::Paused, Status::Failed], Status::Pending),
        "cancel" => (
            &[Status::Pending, Status::Running, Status::Paused],
            Status::Cancelled,
        ),
        _ => {
            return error(
                StatusCode::NOT_FOUND,
                format!("no action {action:?}: use pause, resume or cancel"),
            )
        }
    };
    match a.state.set_backfill_status(id, from, to).await {
        Ok((None, _)) => error(StatusCode::NOT_FOUND, format!("no backfill {id}")),
        Ok((Some(b), true)) => Json(json!(b)).into_response(),
        Ok((Some(b), false)) => error(
            StatusCode::CONFLICT,
            format!(
                "backfill {id} is {}, so it cannot become {}",
                b.status.as_str(),
                to.as_str()
            ),
        ),
        Err(e) => error(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
    }
}
