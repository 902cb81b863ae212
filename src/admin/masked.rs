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
    if let Some(proxy) = v.pointer_mut("/delivery/proxy").filter(|p| p.is_string()) {
        *proxy = Value::String(webhook_url(proxy.as_str().unwrap_or("")));
    }
    if let Some(token) = v.pointer_mut("/admin/token").filter(|t| !t.is_null()) {
        *token = Value::String(MASK.into());
    }
    if let Some(Value::Array(subs)) = v.get_mut("subscribers") {
        for s in subs {
            if let Some(u) = s.get_mut("url") {
                *u = Value::String(webhook_url(u.as_str().unwrap_or("")));
            }
            if let Some(p) = s
                .get_mut("proxy")
                .filter(|p| p.as_str().is_some_and(|p| !p.is_empty()))
            {
                *p = Value::String(webhook_url(p.as_str().unwrap_or("")));
            }
            // A body template may carry a credential for the receiver: its size only.
            if let Some(t) = s.get_mut("template").filter(|t| t.is_string()) {
                let n = t.as_str().unwrap_or("").chars().count();
                *t = Value::String(format!("{MASK} (a template of {n} characters)"));
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

/// Connection parameters shown as they are; every other value is masked.
const SHOWN_PARAMS: &[&str] = &[
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "sslmode",
    "application_name",
    "connect_timeout",
    "target_session_attrs",
    "channel_binding",
];

/// A PostgreSQL connection string (URL or `key=value` form) with only its harmless
/// parameters shown (host, port, database, user, sslmode, ...).
pub fn connection(text: &str) -> String {
    if text.contains("://") {
        return url(text, true);
    }
    let mut out = Vec::new();
    for (key, value) in key_values(text) {
        let shown = SHOWN_PARAMS.iter().any(|k| k.eq_ignore_ascii_case(&key));
        out.push(format!("{key}={}", if shown { value } else { MASK.into() }));
    }
    out.join(" ")
}

/// The pairs of a libpq `key=value` string: spaces around `=` allowed, values in single
/// quotes with `\'` and `\\` escapes.
fn key_values(text: &str) -> Vec<(String, String)> {
    let mut pairs = Vec::new();
    let mut chars = text.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut key = String::new();
        while let Some(c) = chars.next_if(|c| !c.is_whitespace() && *c != '=') {
            key.push(c);
        }
        if key.is_empty() {
            return pairs;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.next_if_eq(&'=').is_none() {
            // Not a pair: the rest is not shown.
            pairs.push((key, String::new()));
            return pairs;
        }
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        let mut value = String::new();
        if chars.next_if_eq(&'\'').is_some() {
            while let Some(c) = chars.next() {
                match c {
                    '\\' => value.extend(chars.next()),
                    '\'' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(c) = chars.next_if(|c| !c.is_whitespace()) {
                value.push(c);
            }
        }
        pairs.push((key, value));
    }
}

/// A webhook URL as the console shows it (see `url`).
pub fn webhook_url(text: &str) -> String {
    url(text, false)
}

/// A URL without its password, query values, fragment, or path segments long enough to
/// be a token (as in chat webhook URLs); its user name only when `keep_user` (a database
/// role), since in a webhook URL it is often a key.
fn url(text: &str, keep_user: bool) -> String {
    let Ok(mut u) = url::Url::parse(text) else {
        return MASK.into();
    };
    if u.password().is_some() {
        let _ = u.set_password(Some(MASK));
    }
    if !keep_user && !u.username().is_empty() {
        let _ = u.set_username(MASK);
    }
    if u.fragment().is_some() {
        u.set_fragment(Some(MASK));
    }
    let query: Vec<(String, String)> = u
        .query_pairs()
        .map(|(k, v)| {
            let k = k.into_owned();
            let shown = SHOWN_PARAMS.iter().any(|p| p.eq_ignore_ascii_case(&k));
            (k, if shown { v.into_owned() } else { MASK.to_string() })
        })
        .collect();
    if !query.is_empty() {
        u.query_pairs_mut().clear().extend_pairs(query);
    }
    if let Some(segments) = u.path_segments() {
        let path: Vec<String> = segments
            .map(|s| {
                if s.len() >= 16 {
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
            webhook_url("https://user:hunter2@hooks.example.com/services/T0001/B0001/XyZabcdefghijklmnopqrstu?token=abc&x=1#k"),
            "https://••••:••••@hooks.example.com/services/T0001/B0001/••••?token=••••&x=••••#••••"
        );
        assert_eq!(
            webhook_url("https://sk_live_key@api.example.com/hook"),
            "https://••••@api.example.com/hook"
        );
        assert_eq!(
            webhook_url("http://127.0.0.1:8080/hook"),
            "http://127.0.0.1:8080/hook"
        );
        assert_eq!(webhook_url("not a url"), MASK);
        assert_eq!(
            connection("postgres://walhook:s3cret@db:5432/shop?sslmode=require"),
            "postgres://walhook:••••@db:5432/shop?sslmode=require"
        );
        assert_eq!(
            connection("host=db user=walhook password=s3cret dbname=shop"),
            "host=db user=walhook password=•••• dbname=shop"
        );
        // Quoted values with spaces and escapes, spaces around `=`, unknown keys.
        assert_eq!(
            connection("host = db password = 'it\\'s a s3cret' sslpassword=x sslmode='require'"),
            "host=db password=•••• sslpassword=•••• sslmode=require"
        );
        assert_eq!(connection("host=db password"), "host=db password=••••");
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
            proxy = "http://egress:proxy-pass@proxy.internal:3128"
        "#;
        let parsed = crate::config::Config::parse(text, "test.toml", &|_| None).expect("a config");
        assert!(parsed.problems.is_empty(), "{:?}", parsed.problems);
        let config = parsed.config;
        let shown = self::config(&config).to_string();
        for secret in [
            "s3cret",
            "admin-token-value",
            "whsec_",
            "receiver-token",
            "proxy-pass",
        ] {
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
