//! Admin HTTP server: `/healthz` (the process runs), `/readyz` (replication streaming and
//! the state database reachable; with `?role=any`, also a standby whose state database is
//! reachable, ready to take over), `/metrics` (Prometheus text), and with `admin.token`
//! the deliveries API (`deliveries.rs`) and the backfills API (`backfills.rs`).

mod backfills;
pub mod client;
mod deliveries;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::extract::State as AxumState;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use tokio_util::sync::CancellationToken;

use crate::lanes::{Lane, Mode};
use crate::metrics::{self, LaneSample, Metrics};
use crate::progress::Progress;
use crate::state::State;

#[derive(Clone)]
pub struct Admin {
    pub metrics: Arc<Metrics>,
    /// Set once this process leads (a standby has no lanes).
    pub lanes: Arc<std::sync::OnceLock<Vec<Arc<Lane>>>>,
    pub state: Arc<State>,
    pub progress: Arc<Progress>,
    /// The deliveries API's bearer token; None turns that API off.
    pub token: Option<String>,
    /// The config this process started with (backfill requests are checked against it).
    pub config: Arc<crate::config::Config>,
}

impl Admin {
    /// The lanes; none while this process stands by.
    pub fn lanes(&self) -> &[Arc<Lane>] {
        self.lanes.get().map_or(&[], Vec::as_slice)
    }
}

pub fn router(admin: Admin) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(deliveries::routes())
        .merge(backfills::routes())
        .with_state(admin)
}

/// `/readyz`'s query: `role=any` counts a healthy standby as ready (for orchestrators that
/// roll replicas one at a time, such as a Kubernetes Deployment of leader and standby).
#[derive(Debug, Default, serde::Deserialize)]
struct ReadyQuery {
    role: Option<String>,
}

async fn readyz(
    AxumState(a): AxumState<Admin>,
    query: Option<axum::extract::Query<ReadyQuery>>,
) -> impl IntoResponse {
    let any = query.is_some_and(|q| q.role.as_deref() == Some("any"));
    let streaming = a.progress.streaming.load(Ordering::Relaxed);
    // A state database that does not answer in time is as good as down.
    let state = tokio::time::timeout(std::time::Duration::from_secs(2), a.state.ping())
        .await
        .unwrap_or(false);
    let role = if a.metrics.leader.get() == 1 {
        "leader"
    } else {
        "standby"
    };
    let body = format!("role={role}\nreplication_streaming={streaming}\nstate_reachable={state}\n");
    let standing_by = any && role == "standby";
    let code = if (streaming || standing_by) && state {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, body)
}

async fn metrics_text(AxumState(a): AxumState<Admin>) -> impl IntoResponse {
    let samples: Vec<LaneSample<'_>> = a
        .lanes()
        .iter()
        .map(|l| LaneSample {
            name: &l.name,
            metrics: &l.metrics,
            spilling: l.mode() == Mode::Spill,
            backlog: l.backlog(),
        })
        .collect();
    let text = metrics::render(&a.metrics, &samples);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], text)
}

/// Serves until cancelled.
pub async fn serve(listener: tokio::net::TcpListener, admin: Admin, cancel: CancellationToken) {
    let app = router(admin);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
    {
        tracing::error!(error = %e, "admin server stopped");
    }
}
