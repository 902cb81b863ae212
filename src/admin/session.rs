//! Who may use the admin API: a caller with `Authorization: Bearer <admin.token>`, or a
//! browser logged in to the console.
//!
//! The console's login (`POST /login`, form field `token`) sets a session cookie,
//! HttpOnly and SameSite=Strict, that holds its issue time and a random nonce signed
//! with HMAC-SHA256 under the admin token. Nothing is kept on the server, so a session
//! outlives a reload that restarts the pipeline, and ends when the token changes or after
//! `LIFETIME`. Every change (a POST) made with the cookie must also carry the header
//! `x-walhook-csrf` with the session's CSRF token (`GET /session` tells it to the
//! console's own script): another site can make a browser send the cookie, never the
//! header.

use std::time::{SystemTime, UNIX_EPOCH};

use axum::extract::{Request, State as AxumState};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use hmac::{Hmac, Mac};
use sha2::Sha256;

use super::deliveries::error;
use super::Admin;

/// The session cookie's name.
pub const COOKIE: &str = "walhook_session";
/// The header that carries the CSRF token on changes made with the cookie.
pub const CSRF_HEADER: &str = "x-walhook-csrf";
/// How long a login lasts, in seconds.
pub const LIFETIME: u64 = 12 * 3600;

fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn mac(token: &str, what: &str) -> String {
    // HMAC takes keys of any length.
    let mut m = Hmac::<Sha256>::new_from_slice(token.as_bytes()).expect("any key length");
    m.update(what.as_bytes());
    hex(&m.finalize().into_bytes())
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new session issued at `at` (unix seconds): `<at>.<nonce>.<mac>`.
pub fn issue(token: &str, at: u64) -> String {
    let nonce = hex(&rand::random::<[u8; 16]>());
    let signed = format!("{at}.{nonce}");
    let m = mac(token, &format!("session:{signed}"));
    format!("{signed}.{m}")
}

/// Whether `session` was issued under `token` and is still good at `at`.
pub fn valid(token: &str, session: &str, at: u64) -> bool {
    let Some((signed, given)) = session.rsplit_once('.') else {
        return false;
    };
    let Some(issued) = signed.split_once('.').and_then(|(t, _)| t.parse::<u64>().ok()) else {
        return false;
    };
    // Issued in the future (beyond clock steps) or too long ago.
    if issued > at + 60 || at.saturating_sub(issued) > LIFETIME {
        return false;
    }
    constant_time_eq(
        mac(token, &format!("session:{signed}")).as_bytes(),
        given.as_bytes(),
    )
}

/// The CSRF token of `session`.
pub fn csrf(token: &str, session: &str) -> String {
    mac(token, &format!("csrf:{session}"))
}

pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The session cookie's value in `headers`, if one is sent.
pub fn cookie(headers: &HeaderMap) -> Option<&str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(name, _)| *name == COOKIE)
        .map(|(_, value)| value)
}

/// The valid session `headers` carry, if any.
pub fn logged_in<'h>(a: &Admin, headers: &'h HeaderMap) -> Option<&'h str> {
    let token = a.token.as_deref()?;
    cookie(headers).filter(|s| valid(token, s, now()))
}

/// The `Set-Cookie` value of a new session.
pub fn new_cookie(token: &str) -> HeaderValue {
    let session = issue(token, now());
    HeaderValue::from_str(&format!(
        "{COOKIE}={session}; Path=/; HttpOnly; SameSite=Strict; Max-Age={LIFETIME}"
    ))
    .expect("hex and digits only")
}

/// The `Set-Cookie` value that ends a session.
pub fn gone_cookie() -> HeaderValue {
    HeaderValue::from_static("walhook_session=; Path=/; HttpOnly; SameSite=Strict; Max-Age=0")
}

/// Lets a request through to the API when it carries the token or a session (and, for a
/// change made with a session, its CSRF token); else answers it.
/// Every answer says this process's role in `x-walhook-role` (the console follows a
/// takeover with it).
pub async fn guard(AxumState(a): AxumState<Admin>, request: Request, next: Next) -> Response {
    let mut r = match refusal(&a, request.method(), request.headers()) {
        None => next.run(request).await,
        Some(r) => r,
    };
    let role = if a.metrics.leader.get() == 1 {
        "leader"
    } else {
        "standby"
    };
    r.headers_mut()
        .insert("x-walhook-role", HeaderValue::from_static(role));
    r
}

/// None when the request may go on; else the answer to give.
fn refusal(a: &Admin, method: &Method, headers: &HeaderMap) -> Option<Response> {
    let Some(token) = &a.token else {
        return Some(error(
            StatusCode::NOT_FOUND,
            "the admin API is off: set admin.token in the config",
        ));
    };
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if let Some(given) = bearer {
        if constant_time_eq(given.as_bytes(), token.as_bytes()) {
            return None;
        }
    } else if let Some(session) = logged_in(a, headers) {
        if matches!(*method, Method::GET | Method::HEAD) {
            return None;
        }
        let sent = headers
            .get(CSRF_HEADER)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if constant_time_eq(sent.as_bytes(), csrf(token, session).as_bytes()) {
            return None;
        }
        return Some(error(
            StatusCode::FORBIDDEN,
            format!(
                "a change made with the console's session needs the {CSRF_HEADER} header: reload the console"
            ),
        ));
    }
    let mut r = error(
        StatusCode::UNAUTHORIZED,
        "send the admin token as `Authorization: Bearer <admin.token>`, or log in to the console at /login",
    );
    r.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    Some(r)
}

/// `GET /session`: the console's CSRF token, for the session the request carries.
pub async fn session(AxumState(a): AxumState<Admin>, headers: HeaderMap) -> Response {
    match (a.token.as_deref(), logged_in(&a, &headers)) {
        (Some(token), Some(s)) => axum::Json(serde_json::json!({ "csrf": csrf(token, s) })).into_response(),
        _ => error(StatusCode::UNAUTHORIZED, "log in at /login"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sessions_hold_only_under_their_token_and_for_their_lifetime() {
        let s = issue("secret-token", 1_000_000);
        assert!(valid("secret-token", &s, 1_000_000));
        assert!(valid("secret-token", &s, 1_000_000 + LIFETIME));
        assert!(!valid("secret-token", &s, 1_000_000 + LIFETIME + 1), "expired");
        assert!(!valid("secret-token", &s, 1_000_000 - 61), "from the future");
        assert!(!valid("another-token", &s, 1_000_000), "the token changed");
        // A session made longer-lived by hand is refused: its time is signed.
        let (_, rest) = s.split_once('.').unwrap();
        assert!(!valid("secret-token", &format!("2000000.{rest}"), 2_000_000));
        for bad in ["", ".", "..", "1.2", "x.y.z", &s[..s.len() - 1]] {
            assert!(!valid("secret-token", bad, 1_000_000), "{bad:?}");
        }
        assert_ne!(
            issue("secret-token", 1),
            issue("secret-token", 1),
            "nonces differ"
        );
        assert_ne!(
            csrf("secret-token", &s),
            csrf("secret-token", &issue("secret-token", 1))
        );
    }

    #[test]
    fn the_session_cookie_is_found_among_others() {
        let mut h = HeaderMap::new();
        h.insert(
            header::COOKIE,
            HeaderValue::from_static("a=1; walhook_session=v.w.x; b=2"),
        );
        assert_eq!(cookie(&h), Some("v.w.x"));
        h.insert(header::COOKIE, HeaderValue::from_static("walhook_sessionx=1"));
        assert_eq!(cookie(&h), None);
    }
}
