use super::*;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Plausible values for the variables the example configs use.
fn env(name: &str) -> Option<String> {
    Some(if name.contains("SECRET") {
        SECRET.into()
    } else if name.contains("DB") || name.contains("DATABASE") {
        "postgres://walhook@db.example.com/shop".into()
    } else {
        "https://hooks.example.com/walhook".into()
    })
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    crate::app::check::from_toml(text, "test.toml", &env)
}

fn problems(text: &str) -> Vec<Problem> {
    match parse(text) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        other => panic!("expected problems, got {other:?}"),
    }
}

const MINIMAL: &str = r#"
[source]
url = "postgres://localhost/shop"
[[events]]
table = "products"
[[subscribers]]
name = "shop"
url = "https://shop.example.com/hook"
events = ["*"]
secrets = ["${SECRET}"]
"#;

#[test]
fn every_example_config_parses() {
    let root = concat!(env!("CARGO_MANIFEST_DIR"), "/config");
    let mut n = 0;
    for dir in [root.to_string(), format!("{root}/examples")] {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") {
                let text = std::fs::read_to_string(&path).unwrap();
                if let Err(e) = parse(&text) {
                    panic!("{}: {e}", path.display());
                }
                n += 1;
            }
        }
    }
    assert!(n >= 9, "found {n} example configs");
}

#[test]
fn defaults_apply() {
    let c = parse(MINIMAL).unwrap();
    assert_eq!(c.source.slot, DEFAULT_SLOT);
    assert_eq!(c.source.publication, DEFAULT_PUBLICATION);
    assert!(c.source.create);
    assert_eq!(c.state_url(), "postgres://localhost/shop");
    assert_eq!(c.admin.listen, DEFAULT_ADMIN_LISTEN);
    // No [state] section: its field defaults hold all the same.
    assert_eq!(c.state.watermark_interval, DEFAULT_WATERMARK_INTERVAL);
    let s = &c.subscribers[0];
    assert_eq!(s.secrets, vec![SecretEntry::Plain(SECRET.to_string())]);
    assert_eq!(s.timeout, DEFAULT_TIMEOUT);
    assert_eq!(s.spill_after, DEFAULT_SPILL_AFTER);
    assert_eq!(s.max_in_flight, DEFAULT_MAX_IN_FLIGHT);
    assert!(!s.allow_private_targets);
    assert_eq!(c.events[0].on, vec![Op::Insert, Op::Update, Op::Delete]);
}

#[test]
fn durations_parse_and_bad_ones_name_the_key() {
    let c = parse(&MINIMAL.replace("events = [\"*\"]", "events = [\"*\"]\nspill_after = \"250ms\"")).unwrap();
    assert_eq!(c.subscribers[0].spill_after, Duration::from_millis(250));
    let p = problems(&MINIMAL.replace("events = [\"*\"]", "events = [\"*\"]\ntimeout = \"soon\""));
    assert_eq!(p[0].path, "subscribers[0].timeout", "{p:?}");
}

#[test]
fn unknown_keys_are_errors_with_their_path() {
    let p = problems(&MINIMAL.replace("[source]", "[source]\nslots = \"x\""));
    assert_eq!(p.len(), 1);
    assert_eq!(p[0].path, "source.slots");
    assert!(p[0].message.contains("unknown field"), "{p:?}");
    let p = problems(&format!("{MINIMAL}\n[extra]\nx = 1\n"));
    assert_eq!(p[0].path, "extra");
}

#[test]
fn missing_variables_are_named() {
    let p = match crate::app::check::from_toml(MINIMAL, "t", &|_| None) {
        Err(ConfigError::Invalid { problems, .. }) => problems,
        other => panic!("{other:?}"),
    };
    assert_eq!(p[0].path, "subscribers[0].secrets[0]");
    assert!(p[0].message.contains("SECRET is not set"), "{p:?}");
}

#[test]
fn validation_reports_every_problem() {
    let text = r#"
[source]
url = "postgres://localhost/shop"
slot = "Bad-Slot"
[[events]]
table = "a.b.c"
on = []
[[subscribers]]
name = "x"
url = "ftp://example.com"
events = []
secrets = ["nope"]
max_in_flight = 0
[[subscribers]]
name = "x"
url = "https://example.com"
events = ["*"]
secrets = ["whsec_YWJj"]
"#;
    let p = problems(text);
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    for want in [
        "source.slot",
        "events[0].table",
        "events[0].on",
        "subscribers[0].url",
        "subscribers[0].events",
        "subscribers[0].secrets[0]",
        "subscribers[0].max_in_flight",
        "subscribers[1].name",
        "subscribers[1].secrets[0]",
    ] {
        assert!(paths.contains(&want), "missing {want} in {paths:?}");
    }
    assert!(
        p.iter().any(|p| p.message.contains("whsec_")),
        "the secret problem names the format"
    );
}

#[test]
fn bad_rules_are_named_with_their_key_paths() {
    let text = r#"
[source]
url = "postgres://localhost/shop"
[[events]]
table = "products"
when = "new.qty <="
[[events]]
table = "products"
when = "nwe.qty > 0"
[[events]]
table = "products"
on = ["insert", "delete"]
columns = ["id"]
exclude = ["title"]
ignore_changes = ["updated_at"]
transition = { column = "status", to = ["a"] }
[[events]]
table = "products"
on = ["delete"]
transition = { column = "", to = "x" }
[[subscribers]]
name = "x"
url = "https://example.com"
events = ["*"]
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
"#;
    let p = problems(text);
    let find = |path: &str| {
        p.iter()
            .find(|p| p.path == path)
            .unwrap_or_else(|| panic!("no problem at {path} in {p:?}"))
            .message
            .clone()
    };
    assert!(find("events[0].when").contains("not a valid CEL expression"));
    assert!(find("events[1].when").contains("unknown name nwe"));
    assert!(find("events[2].exclude").contains("not both"));
    assert!(find("events[2].ignore_changes").contains("only applies to updates"));
    assert!(find("events[2].transition.to").contains("single value"));
    assert!(find("events[3].transition.column").contains("empty"));
    assert!(find("events[3].transition").contains("neither"));
}

#[test]
fn env_overrides_apply() {
    // WALHOOK_ variables are read from the process environment; use a name no other test sets.
    std::env::set_var("WALHOOK_STATE__WATERMARK_INTERVAL", "1s");
    let c = parse(MINIMAL).unwrap();
    std::env::remove_var("WALHOOK_STATE__WATERMARK_INTERVAL");
    assert_eq!(c.state.watermark_interval, Duration::from_secs(1));
}

/// Environment variables as `Config::from_parts` takes them.
fn vars(pairs: &[(&str, &str)]) -> Vec<(std::ffi::OsString, std::ffi::OsString)> {
    pairs.iter().map(|(k, v)| (k.into(), v.into())).collect()
}

#[test]
fn only_section_key_variables_override_and_near_misses_warn_unless_used() {
    let text = MINIMAL.replace(
        "[source]\n",
        "[admin]\ntoken = \"${WALHOOK_ADMIN_TOKEN}\"\n[source]\n",
    );
    let env = |name: &str| (name == "WALHOOK_ADMIN_TOKEN").then(|| "0123456789abcdef".to_string());
    let Parsed {
        config: c,
        problems,
        warnings,
    } = Config::from_parts(
        &text,
        "t",
        &|n| env(n).or_else(|| super::tests::env(n)),
        vars(&[
            ("WALHOOK_ADMIN_TOKEN", "0123456789abcdef"),
            ("WALHOOK_LOG_FORMAT", "json"),
            ("WALHOOK_CONFIG", "/etc/walhook/walhook.toml"),
            ("WALHOOK_PORT_9187_TCP_ADDR", "10.0.0.1"),
            ("WALHOOK_STATE_LEASE", "10s"),
            ("WALHOOK_SOURCE__SLOT", "other"),
        ]),
    )
    .unwrap();
    assert_eq!(problems, []);
    assert_eq!(c.admin.token.as_deref(), Some("0123456789abcdef"));
    assert_eq!(c.source.slot, "other");
    assert_eq!(c.state.lease, DEFAULT_LEASE);
    assert_eq!(warnings.len(), 1, "{warnings:?}");
    assert!(warnings[0].contains("WALHOOK_STATE__LEASE"), "{warnings:?}");
}

#[test]
fn bad_urls_and_ssl_settings_are_named() {
    let p = problems(&MINIMAL.replace(
        "postgres://localhost/shop",
        "postgres://localhost/shop?sslmode=sometimes",
    ));
    assert_eq!(p[0].path, "source.url");
    assert!(p[0].message.contains("sslmode=sometimes"), "{p:?}");
    let c = parse(&MINIMAL.replace(
        "postgres://localhost/shop",
        "postgres://localhost/shop?sslmode=verify-full",
    ))
    .unwrap();
    assert!(c.source.url.contains("verify-full"));
}

#[test]
fn subscriber_patterns_that_are_malformed_or_match_nothing_are_named() {
    let text = r#"
[source]
url = "postgres://localhost/shop"
[[events]]
table = "prices"
name = "price.changed"
[[events]]
table = "catalog.products"
on = ["delete"]
coalesce = { window = "0s", max_wait = "48h" }
[[subscribers]]
name = "x"
url = "https://example.com"
events = ["price.*", "prcie.*", "price changed", "products.deleted", "*.deleted"]
secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
"#;
    let p = problems(text);
    let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "events[1].coalesce.window",
            "events[1].coalesce.max_wait",
            "subscribers[0].events[1]",
            "subscribers[0].events[2]"
        ],
        "{p:?}"
    );
    assert!(p[2]
        .message
        .contains("matches no event the rules make (price.changed, products.deleted, products.read)"));
    assert!(p[3].message.contains("must be an event name"));
}

#[test]
fn secrets_may_expire_and_rate_limits_are_checked() {
    let with = |secrets: &str, extra: &str| {
        MINIMAL.replace(
            "secrets = [\"${SECRET}\"]",
            &format!("secrets = {secrets}\n{extra}"),
        )
    };
    let rotating = format!(
        "[{{ secret = \"{SECRET}\", expires = \"2020-01-01T00:00:00Z\" }}, \"{SECRET}\", {{ secret = \"{SECRET}\", expires = \"2999-01-01T00:00:00Z\" }}]"
    );
    let c = parse(&with(&rotating, "rate_limit = \"50/s\"")).unwrap();
    let s = &c.subscribers[0];
    assert_eq!(s.secrets.len(), 3);
    assert!(s.secrets[0].expires().unwrap().is_some());
    assert_eq!(s.secrets[1].expires(), Ok(None));
    assert_eq!(s.rate_limit.as_deref(), Some("50/s"));

    let paths = |text: String| problems(&text).into_iter().map(|p| p.path).collect::<Vec<_>>();
    assert_eq!(
        paths(with(
            &format!("[{{ secret = \"{SECRET}\", expires = \"next week\" }}, \"{SECRET}\"]"),
            ""
        )),
        ["subscribers[0].secrets[0].expires"]
    );
    assert_eq!(
        paths(with(
            "[{ secret = \"nope\", expires = \"2999-01-01T00:00:00Z\" }]",
            ""
        )),
        ["subscribers[0].secrets[0].secret"]
    );
    assert_eq!(
        paths(with(
            &format!("[{{ secret = \"{SECRET}\", expires = \"2020-01-01T00:00:00Z\" }}]"),
            ""
        )),
        ["subscribers[0].secrets"]
    );
    assert_eq!(
        paths(with(&format!("[\"{SECRET}\"]"), "rate_limit = \"fast\"")),
        ["subscribers[0].rate_limit"]
    );
}

#[test]
fn max_in_flight_has_a_documented_limit() {
    let with = |n: usize| {
        MINIMAL.replace(
            "events = [\"*\"]",
            &format!("events = [\"*\"]\nmax_in_flight = {n}"),
        )
    };
    assert_eq!(
        parse(&with(MAX_MAX_IN_FLIGHT)).unwrap().subscribers[0].max_in_flight,
        1000
    );
    for n in [MAX_MAX_IN_FLIGHT + 1, 100_000, 1_000_000] {
        let p = problems(&with(n));
        assert_eq!(p.len(), 1, "{p:?}");
        assert_eq!(p[0].path, "subscribers[0].max_in_flight");
        assert!(
            p[0].message == format!("{n} is above the limit of 1000 requests in flight per subscriber"),
            "{p:?}"
        );
    }
}

#[test]
fn the_shutdown_grace_defaults_to_10s_and_is_checked() {
    assert_eq!(parse(MINIMAL).unwrap().shutdown_grace, DEFAULT_SHUTDOWN_GRACE);
    assert_eq!(DEFAULT_SHUTDOWN_GRACE, Duration::from_secs(10));
    let c = parse(&format!("shutdown_grace = \"25s\"\n{MINIMAL}")).unwrap();
    assert_eq!(c.shutdown_grace, Duration::from_secs(25));
    let p = problems(&format!("shutdown_grace = \"500ms\"\n{MINIMAL}"));
    assert_eq!(p.len(), 1, "{p:?}");
    assert_eq!(p[0].path, "shutdown_grace");
    assert!(p[0].message.contains("at least 1s"), "{p:?}");
}
