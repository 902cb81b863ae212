//! Admin HTTP server: `/healthz` (the process runs), `/readyz` (replication streaming and
//! the state database reachable; with `?role=any`, also a standby whose state database is
//! reachable, ready to take over), `/metrics` (Prometheus text), and with `admin.token`
//! the console at `/` (`console.rs`), the deliveries API (`deliveries.rs`), the
//! subscribers API (`subscribers.rs`) and the backfills API (`backfills.rs`), all behind
//! the token or a console session (`session.rs`).

mod backfills;
pub mod client;
mod console;
mod deliveries;
mod history;
mod masked;
mod session;
mod subscribers;

use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};

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
    /// The config running now (backfill requests are checked against it).
    pub config: LiveConfig,
    /// The last config reload, when this process takes reloads.
    pub reloads: Option<ReloadLog>,
    /// Samples of the counters for the console.
    pub history: history::History,
}

/// The config running now: the one the run started with, or the rules of a reload since.
#[derive(Clone)]
pub struct LiveConfig(Arc<Mutex<Arc<crate::config::Config>>>);

impl LiveConfig {
    pub fn new(config: Arc<crate::config::Config>) -> LiveConfig {
        LiveConfig(Arc::new(Mutex::new(config)))
    }
    pub fn get(&self) -> Arc<crate::config::Config> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
    pub fn set(&self, config: Arc<crate::config::Config>) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = config;
    }
}

/// A config reload and how it ended.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Reloaded {
    /// RFC 3339, UTC.
    pub at: String,
    /// Applied (or nothing to apply), or refused.
    pub ok: bool,
    pub message: String,
}

/// The last reload of this process (kept across in-process restarts).
#[derive(Clone, Default)]
pub struct ReloadLog(Arc<Mutex<Option<Reloaded>>>);

impl ReloadLog {
    pub fn record(&self, ok: bool, message: impl Into<String>) {
        let at = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(Reloaded {
            at,
            ok,
            message: message.into(),
        });
    }
    pub fn last(&self) -> Option<Reloaded> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

impl Admin {
    /// The lanes; none while this process stands by.
    pub fn lanes(&self) -> &[Arc<Lane>] {
        self.lanes.get().map_or(&[], Vec::as_slice)
    }
}

pub fn router(admin: Admin) -> Router {
    let api = Router::new()
        .merge(deliveries::routes())
        .merge(subscribers::routes())
        .merge(backfills::routes())
        .merge(console::api())
        .route_layer(axum::middleware::from_fn_with_state(
            admin.clone(),
            session::guard,
        ));
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics_text))
        .merge(api)
        .merge(console::pages())
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
    tokio::spawn(history::run(
        admin.history.clone(),
        admin.metrics.clone(),
        admin.lanes.clone(),
        cancel.clone(),
    ));
    let app = router(admin);
    if let Err(e) = axum::serve(listener, app)
        .with_graceful_shutdown(async move { cancel.cancelled().await })
        .await
    {
        tracing::error!(error = %e, "admin server stopped");
    }
}
