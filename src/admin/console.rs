//! The operator console, served by the admin server at `/`: one page of HTML, a script
//! and a style sheet built into the binary (no CDN, nothing fetched at run time), that
//! read the admin API with the session of `/login` (see `session.rs`). Its own API
//! endpoints: `GET /overview` (role, slot, lag, rates over 15 minutes, the last reload)
//! and `GET /config` (the config as loaded, secrets masked).

use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::extract::State as AxumState;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use super::session;
use super::Admin;

const INDEX: &str = include_str!("assets/index.html");
const LOGIN: &str = include_str!("assets/login.html");
const OFF: &str = include_str!("assets/off.html");
const SCRIPT: &str = include_str!("assets/console.js");
const STYLE: &str = include_str!("assets/console.css");

/// The pages, open to everyone (each says what it needs).
pub fn pages() -> Router<Admin> {
    Router::new()
        .route("/", get(index))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route(
            "/console.js",
            get(|| async { asset("text/javascript; charset=utf-8", SCRIPT) }),
        )
        .route(
            "/console.css",
            get(|| async { asset("text/css; charset=utf-8", STYLE) }),
        )
        .route("/session", get(session::session))
}

/// The console's own endpoints (behind the token or a session).
pub fn api() -> Router<Admin> {
    Router::new()
        .route("/overview", get(overview))
        .route("/config", get(config))
}

fn asset(content_type: &'static str, body: &'static str) -> Response {
    (
        [
            (header::CONTENT_TYPE, content_type),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response()
}

/// An HTML page with headers that keep it from being framed or running foreign scripts.
fn html(code: StatusCode, body: String) -> Response {
    let mut r = (code, body).into_response();
    let h = r.headers_mut();
    for (name, value) in [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'self'; img-src 'self' data:; frame-ancestors 'none'; form-action 'self'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::REFERRER_POLICY, "no-referrer"),
        (HeaderName::from_static("x-content-type-options"), "nosniff"),
    ] {
        h.insert(name, HeaderValue::from_static(value));
    }
    r
}

fn see_other(to: &'static str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, to)]).into_response()
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// Without `admin.token` the console shows only how to turn it on.
fn off() -> Response {
    html(StatusCode::NOT_FOUND, OFF.to_string())
}

fn login_form(code: StatusCode, message: &str) -> Response {
    let note = match message {
        "" => String::new(),
        m => format!("<p class=\"error\" role=\"alert\">{}</p>", escape(m)),
    };
    html(code, LOGIN.replace("{{message}}", &note))
}

async fn index(AxumState(a): AxumState<Admin>, headers: HeaderMap) -> Response {
    if a.token.is_none() {
        return off();
    }
    if session::logged_in(&a, &headers).is_none() {
        return see_other("/login");
    }
    html(StatusCode::OK, INDEX.to_string())
}

async fn login_page(AxumState(a): AxumState<Admin>, headers: HeaderMap) -> Response {
    if a.token.is_none() {
        return off();
    }
    if session::logged_in(&a, &headers).is_some() {
        return see_other("/");
    }
    login_form(StatusCode::OK, "")
}

async fn login(AxumState(a): AxumState<Admin>, body: axum::body::Bytes) -> Response {
    let Some(token) = &a.token else {
        return off();
    };
    let given = url::form_urlencoded::parse(&body)
        .find(|(k, _)| k == "token")
        .map(|(_, v)| v.into_owned())
        .unwrap_or_default();
    if !session::constant_time_eq(given.trim().as_bytes(), token.as_bytes()) {
        // Slows down guessing; the token itself should be long and random.
        tokio::time::sleep(Duration::from_millis(500)).await;
        tracing::warn!("console login refused: wrong admin token");
        return login_form(
            StatusCode::UNAUTHORIZED,
            "That is not the admin token. Use the value of admin.token in walhook's config.",
        );
    }
    let mut r = see_other("/");
    r.headers_mut()
        .insert(header::SET_COOKIE, session::new_cookie(token));
    r
}

async fn logout() -> Response {
    let mut r = see_other("/login");
    r.headers_mut().insert(header::SET_COOKIE, session::gone_cookie());
    r
}

/// `0/16B3748`, as PostgreSQL writes an LSN.
fn lsn(v: u64) -> String {
    format!("{:X}/{:X}", v >> 32, v & 0xFFFF_FFFF)
}

async fn overview(AxumState(a): AxumState<Admin>) -> Response {
    let m = &a.metrics;
    let config = a.config.get();
    let leader = m.leader.get() == 1;
    let reachable = tokio::time::timeout(Duration::from_secs(2), a.state.ping())
        .await
        .unwrap_or(false);
    let mut modes = std::collections::BTreeMap::<&str, usize>::new();
    for l in a.lanes() {
        *modes.entry(super::subscribers::mode(l)).or_default() += 1;
    }
    let confirmed = m.confirmed_lsn.get();
    Json(json!({
        "role": if leader { "leader" } else { "standby" },
        "version": env!("CARGO_PKG_VERSION"),
        "slot": config.source.slot,
        "publication": config.source.publication,
        "streaming": a.progress.streaming.load(Ordering::Relaxed),
        "confirmed_lsn": (confirmed != 0).then(|| lsn(confirmed)),
        "retained_wal_bytes": m.retained_wal_bytes.get(),
        "lag_bytes": m.lag_bytes.get(),
        "lag_seconds": m.lag_millis.get() as f64 / 1000.0,
        "state_reachable": reachable,
        "changes_decoded": m.changes_decoded.get(),
        "events_emitted": m.events_emitted.get(),
        "subscribers": config.subscribers.len(),
        "modes": modes,
        "reloads_watched": a.reloads.is_some(),
        "last_reload": a.reloads.as_ref().and_then(|r| r.last()),
        "rates": a.history.rates(),
        "sample_seconds": super::history::EVERY.as_secs(),
    }))
    .into_response()
}

async fn config(AxumState(a): AxumState<Admin>) -> Response {
    Json(super::masked::config(&a.config.get())).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lsns_read_as_postgres_writes_them() {
        assert_eq!(lsn(0x16B3748), "0/16B3748");
        assert_eq!(lsn((3 << 32) | 0xA0), "3/A0");
    }

    #[test]
    fn messages_cannot_inject_markup() {
        assert_eq!(
            escape("<b a=\"1\">&</b>"),
            "&lt;b a=&quot;1&quot;&gt;&amp;&lt;/b&gt;"
        );
    }
}
