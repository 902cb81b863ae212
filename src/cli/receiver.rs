//! `walhook receive`: a small webhook receiver for trying walhook out. It verifies the
//! Standard Webhooks signature of every request, prints the event, and answers 204
//! (401 when the signature does not verify).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::Router;

use crate::lanes::sign::{verify_header, Secret};

struct Receiver {
    secrets: Vec<Secret>,
}

pub async fn serve(listen: SocketAddr, secrets: Vec<Secret>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(listen).await?;
    eprintln!("walhook receive: listening on http://{listen}/ (any path)");
    let app = Router::new()
        .route("/", post(handle))
        .route("/*path", post(handle))
        .layer(axum::extract::DefaultBodyLimit::max(64 << 20))
        .with_state(Arc::new(Receiver { secrets }));
    axum::serve(listener, app).await
}

async fn handle(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> StatusCode {
    let get = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).unwrap_or("");
    let id = get("webhook-id");
    let ts: i64 = get("webhook-timestamp").parse().unwrap_or(0);
    let ok = verify_header(&r.secrets, id, ts, &body, get("webhook-signature"));
    // Bodies may hold json nested past serde_json's limit: parsed to 64 levels, the rest
    // written as received.
    let parsed = std::str::from_utf8(&body)
        .ok()
        .and_then(|text| crate::decode::json::parse_bounded(text, 64));
    let pretty = parsed
        .as_ref()
        .and_then(|v| serde_json::to_string_pretty(v).ok())
        .unwrap_or_else(|| String::from_utf8_lossy(&body).into_owned());
    let kind = parsed
        .as_ref()
        .and_then(|v| v.get("type").and_then(|t| t.as_str()).map(str::to_string))
        .unwrap_or_default();
    if ok {
        println!("[signature ok] {kind} webhook-id={id}\n{pretty}");
        StatusCode::NO_CONTENT
    } else {
        println!("[SIGNATURE INVALID] webhook-id={id}: refused with 401");
        StatusCode::UNAUTHORIZED
    }
}
