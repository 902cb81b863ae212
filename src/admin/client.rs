//! `walhook deliveries ...`: the deliveries API of a running walhook, called at its
//! `admin.listen` address with its `admin.token`, and the answers printed for people.

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::config::Config;

/// Answers are read up to this size.
const MAX_ANSWER: usize = 64 * 1024 * 1024;

/// One call: `method` on `path` (with its query) and an optional JSON body. Returns the
/// status and the JSON answer, or why the call could not be made.
pub async fn call(
    config: &Config,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<(u16, Value), String> {
    let listen = &config.admin.listen;
    if listen.is_empty() {
        return Err("admin.listen is \"\": the deliveries API needs the admin server".into());
    }
    let token = config
        .admin
        .token
        .as_deref()
        .ok_or("admin.token is not set: the deliveries API is off without it")?;
    let mut stream = tokio::net::TcpStream::connect(listen)
        .await
        .map_err(|e| format!("cannot reach walhook's admin server at {listen} ({e}): is `walhook run` running with this config?"))?;
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {listen}\r\nAuthorization: Bearer {token}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .map_err(|e| format!("admin server at {listen}: {e}"))?;
    let mut answer = Vec::new();
    (&mut stream)
        .take(MAX_ANSWER as u64)
        .read_to_end(&mut answer)
        .await
        .map_err(|e| format!("admin server at {listen}: {e}"))?;
    parse_answer(&answer).ok_or_else(|| format!("admin server at {listen}: not an answer walhook gives"))
}

/// An HTTP/1.1 answer (Content-Length or close-delimited) with a JSON body.
fn parse_answer(bytes: &[u8]) -> Option<(u16, Value)> {
    let mut headers = [httparse::EMPTY_HEADER; 32];
    let mut resp = httparse::Response::new(&mut headers);
    let httparse::Status::Complete(len) = resp.parse(bytes).ok()? else {
        return None;
    };
    let status = resp.code?;
    let mut body = bytes.get(len..)?;
    if let Some(h) = resp
        .headers
        .iter()
        .find(|h| h.name.eq_ignore_ascii_case("content-length"))
    {
        let n: usize = std::str::from_utf8(h.value).ok()?.trim().parse().ok()?;
        body = body.get(..n)?;
    }
    let json = if body.is_empty() {
        Value::Null
    } else {
        // A delivery's body may hold json nested past serde_json's limit.
        crate::decode::json::parse_bounded(std::str::from_utf8(body).ok()?, 64)?
    };
    Some((status, json))
}

/// The message of an error answer.
pub fn error_of(status: u16, answer: &Value) -> String {
    match answer["error"].as_str() {
        Some(e) => format!("{e} (HTTP {status})"),
        None => format!("HTTP {status}: {answer}"),
    }
}

/// Deliveries as a table for a terminal.
pub fn table(deliveries: &[Value]) -> String {
    let mut out = format!(
        "{:<27}  {:<12}  {:<36}  {:<24}  {:>8}  {}\n",
        "AT (UTC)", "SUBSCRIBER", "ID", "TYPE", "ATTEMPTS", "KEY / LAST ERROR"
    );
    for d in deliveries {
        let s = |k: &str| d[k].as_str().unwrap_or("").to_string();
        let error: String = s("error").chars().take(80).collect();
        out.push_str(&format!(
            "{:<27}  {:<12}  {:<36}  {:<24}  {:>8}  {}\n{:>117}{}\n",
            s("at"),
            s("subscriber"),
            s("id"),
            s("type"),
            d["attempts"].as_i64().unwrap_or(0),
            s("key"),
            "",
            error
        ));
    }
    out.push_str(&format!("{} deliveries\n", deliveries.len()));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_parse_with_or_without_a_length_and_never_panic() {
        let (s, v) = parse_answer(b"HTTP/1.1 200 OK\r\ncontent-length: 8\r\n\r\n{\"a\": 1}\r\nxx").unwrap();
        assert_eq!((s, v), (200, serde_json::json!({"a": 1})));
        let (s, v) = parse_answer(b"HTTP/1.1 401 Unauthorized\r\n\r\n{\"error\":\"no\"}").unwrap();
        assert_eq!(error_of(s, &v), "no (HTTP 401)");
        for bad in [
            &b""[..],
            b"HTTP/1.1 200",
            b"junk\r\n\r\n",
            b"HTTP/1.1 200 OK\r\ncontent-length: 99\r\n\r\n{}",
        ] {
            assert!(parse_answer(bad).is_none());
        }
    }
}
