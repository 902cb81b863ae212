//! The config as the console shows it: everything as loaded, with secrets masked (the
//! admin token, signing secrets, header values, passwords in connection strings, and the
//! parts of a webhook URL that commonly carry a credential).

use serde_json::Value;

use crate::config::Config;

/// What a secret is shown as.
pub const MASK: &str = "••••";

/// `config` as JSON, secrets masked.
pub fn config(config: &Config) -> Value {
    let mut v = serde_json::to_value(config).unwrap_or(Value::Null);
    if let Some(url) = v.pointer_mut("/source/url") {
        *url = Value::String(connection(url.as_str().unwrap_or("")));
    }
    if let Some(url) = v.pointer_mut("/state/url").filter(|u| u.is_string()) {
        *url = Value::String(connection(url.as_str().unwrap_or("")));
    }
    if let Some(token) = v.pointer_mut("/admin/token").filter(|t| !t.is_null()) {
        *token = Value::String(MASK.into());
    }
    if let Some(Value::Array(subs)) = v.get_mut("subscribers") {
        for s in subs {
            if let Some(u) = s.get_mut("url") {
                *u = Value::String(url(u.as_str().unwrap_or("")));
            }
            if let Some(Value::Array(secrets)) = s.get_mut("secrets") {
                for secret in secrets {
                    match secret {
                        Value::Object(e) => {
                            e.insert("secret".into(), Value::String(MASK.into()));
                        }
                        other => *other = Value::String(MASK.into()),
                    }
                }
            }
            if let Some(Value::Object(headers)) = s.get_mut("headers") {
                for value in headers.values_mut() {
                    *value = Value::String(MASK.into());
                }
            }
        }
    }
    v
}

/// A PostgreSQL connection string (URL or `key=value` form) without its password.
pub fn connection(text: &str) -> String {
    if text.contains("://") {
        return url(text);
    }
    text.split_whitespace()
        .map(|pair| match pair.split_once('=') {
            Some((k, _)) if k.eq_ignore_ascii_case("password") => format!("{k}={MASK}"),
            _ => pair.to_string(),
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// A URL without its password, query values, or path segments long enough to be a token
/// (as in chat webhook URLs).
pub fn url(text: &str) -> String {
    let Ok(mut u) = url::Url::parse(text) else {
        return MASK.into();
    };
    if u.password().is_some() {
        let _ = u.set_password(Some(MASK));
    }
    let query: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| {
            let k = k.into_owned();
            let masked = if k.eq_ignore_ascii_case("sslmode") || k.eq_ignore_ascii_case("application_name") {
                v.into_owned()
            } else {
                MASK.to_string()
            };
            (k, masked)
        })
        .collect();
    if !query.is_empty() {
        u.query_pairs_mut().clear().extend_pairs(query);
    }
    if let Some(segments) = u.path_segments() {
        let path: Vec<String> = segments
            .map(|s| {
                if s.len() >= 20 {
                    MASK.to_string()
                } else {
                    s.to_string()
                }
            })
            .collect();
        u.set_path(&path.join("/"));
    }
    percent_encoding::percent_decode_str(u.as_str())
        .decode_utf8_lossy()
        .into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_do_not_show() {
        assert_eq!(
            url("https://user:hunter2@hooks.example.com/services/T0001/B0001/XyZabcdefghijklmnopqrstu?token=abc&x=1"),
            "https://user:••••@hooks.example.com/services/T0001/B0001/••••?token=••••&x=••••"
        );
        assert_eq!(url("http://127.0.0.1:8080/hook"), "http://127.0.0.1:8080/hook");
        assert_eq!(url("not a url"), MASK);
        assert_eq!(
            connection("postgres://walhook:s3cret@db:5432/shop?sslmode=require"),
            "postgres://walhook:••••@db:5432/shop?sslmode=require"
        );
        assert_eq!(
            connection("host=db user=walhook password=s3cret dbname=shop"),
            "host=db user=walhook password=•••• dbname=shop"
        );
    }

    #[test]
    fn the_config_shows_everything_but_its_secrets() {
        let text = r#"
            [source]
            url = "postgres://walhook:s3cret@db/shop"
            [admin]
            token = "admin-token-value"
            [[events]]
            table = "public.products"
            [[subscribers]]
            name = "shop"
            url = "https://shop.example.com/hooks"
            events = ["*"]
            secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw", { secret = "whsec_b2xkIHNlY3JldCBrZXkgZm9yIHRoZSB0ZXN0", expires = "2030-01-01T00:00:00Z" }]
            headers = { Authorization = "Bearer receiver-token" }
        "#;
        let parsed = crate::config::Config::parse(text, "test.toml", &|_| None).expect("a config");
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        let config = parsed.config;
        let shown = self::config(&config).to_string();
        for secret in ["s3cret", "admin-token-value", "whsec_", "receiver-token"] {
            assert!(!shown.contains(secret), "{secret} shows in {shown}");
        }
        for seen in [
            "public.products",
            "https://shop.example.com/hooks",
            "2030-01-01T00:00:00Z",
            "Authorization",
        ] {
            assert!(shown.contains(seen), "{seen} is missing from {shown}");
        }
    }
}
