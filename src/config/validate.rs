//! The config's own rules: every problem it can tell without asking a stage (values in
//! range, names well formed, keys that go together), each with its key path. The stages
//! check their parts (see the `checks` module).

use super::*;

/// The most rows a backfill chunk may hold.
pub const MAX_CHUNK_ROWS: usize = 100_000;

impl Config {
    /// Every problem in the config, with its key path.
    pub fn validate(&self) -> Vec<Problem> {
        let mut out = Vec::new();
        let mut bad = |path: String, message: String| out.push(Problem { path, message });
        for (key, value) in [
            ("source.slot", &self.source.slot),
            ("source.publication", &self.source.publication),
        ] {
            if !valid_identifier(value) {
                bad(
                    key.into(),
                    format!("{value:?} must be 1-63 characters of a-z, 0-9 and _"),
                );
            }
        }
        if self.shutdown_grace < Duration::from_secs(1) {
            bad(
                "shutdown_grace".into(),
                "must be at least 1s (deliveries in flight, the last watermark save and the lease release share it)"
                    .into(),
            );
        }
        if !(1..=MAX_CHUNK_ROWS).contains(&self.backfill.chunk_rows) {
            bad(
                "backfill.chunk_rows".into(),
                format!("must be from 1 to {MAX_CHUNK_ROWS} (one chunk is held in memory while it is read)"),
            );
        }
        if self.source.status_interval.is_zero() {
            bad("source.status_interval".into(), "must be above 0".into());
        }
        if self.source.receive_timeout < Duration::from_secs(2) {
            bad(
                "source.receive_timeout".into(),
                "must be at least 2s (the server needs time to answer a request for a reply)".into(),
            );
        }
        for (key, d) in [
            ("state.watermark_interval", self.state.watermark_interval),
            ("state.dead_letter_retention", self.state.dead_letter_retention),
            ("state.prune_interval", self.state.prune_interval),
        ] {
            if d.is_zero() {
                bad(key.into(), "must be above 0".into());
            }
        }
        if self.state.lease < Duration::from_secs(3) || self.state.lease > Duration::from_secs(300) {
            bad(
                "state.lease".into(),
                format!(
                    "{} is outside 3s..5m (a standby takes over this long after the leader died)",
                    humantime::format_duration(self.state.lease)
                ),
            );
        }
        if !self.admin.listen.is_empty() && self.admin.listen.parse::<std::net::SocketAddr>().is_err() {
            bad(
                "admin.listen".into(),
                format!(
                    "{:?} is not an address such as \"127.0.0.1:9187\" (\"\" disables the admin server)",
                    self.admin.listen
                ),
            );
        }
        if let Some(token) = &self.admin.token {
            if token.len() < 16 || !token.bytes().all(|b| b.is_ascii_graphic()) {
                bad(
                    "admin.token".into(),
                    "use at least 16 visible characters, e.g. the output of `openssl rand -hex 32` (usually \"${WALHOOK_ADMIN_TOKEN}\")".into(),
                );
            }
        }
        if self.events.is_empty() && self.documents.is_empty() {
            bad(
                "events".into(),
                "no [[events]] rules: add at least one, e.g. [[events]] table = \"public.products\"".into(),
            );
        }
        self.document_problems(&mut bad);
        self.delivery_problems(&mut bad);
        for (i, rule) in self.events.iter().enumerate() {
            let p = |k: &str| format!("events[{i}].{k}");
            if let Err(e) = TableName::parse(&rule.table) {
                bad(p("table"), e);
            }
            if let Some(name) = &rule.name {
                if !valid_event_name(name) {
                    bad(
                        p("name"),
                        format!("{name:?} must be letters, digits, '.', '_' or '-'"),
                    );
                }
            }
            if rule.on.is_empty() {
                bad(
                    p("on"),
                    "empty: list one or more of insert, update, delete, truncate (and restore, with soft_delete)"
                        .into(),
                );
            }
            if rule.on.contains(&Op::Read) {
                bad(
                    p("on"),
                    "\"read\" is not an operation to listen to: a backfill's rows reach every rule of their table \
                     unless it says backfill = false"
                        .into(),
                );
            }
            match &rule.soft_delete {
                None if rule.on.contains(&Op::Restore) => bad(
                    p("on"),
                    "\"restore\" needs soft_delete: name the column that marks a row deleted, e.g. soft_delete = \"deleted_at\""
                        .into(),
                ),
                None if rule.soft_deleted == SoftDeleted::Include => bad(
                    p("soft_deleted"),
                    "applies with soft_delete only: name the column that marks a row deleted".into(),
                ),
                Some(col) if col.is_empty() => bad(
                    p("soft_delete"),
                    "empty: name the nullable column that marks a row deleted, e.g. \"deleted_at\"".into(),
                ),
                // A window would merge a soft delete or a restore into the updates around
                // it, and subscribers would miss it.
                Some(_) if rule.coalesce.is_some() => bad(
                    p("coalesce"),
                    "cannot be combined with soft_delete yet: put the soft deletes in a rule of their own \
                     (on = [\"delete\", \"restore\"]) without coalesce"
                        .into(),
                ),
                _ => {}
            }
            for (k, list) in [
                ("key", &rule.key),
                ("columns", &rule.columns),
                ("exclude", &rule.exclude),
            ] {
                if list.as_ref().is_some_and(|l| l.is_empty()) {
                    bad(p(k), "empty list: leave the key out to use the default".into());
                }
            }
            if rule.columns.is_some() && rule.exclude.is_some() {
                bad(
                    p("exclude"),
                    "set either columns (what to carry) or exclude (what to leave out), not both".into(),
                );
            }
            for k in ["changed", "ignore_changes"] {
                let list = if k == "changed" {
                    &rule.changed
                } else {
                    &rule.ignore_changes
                };
                if list.as_ref().is_some_and(|l| l.is_empty()) {
                    bad(
                        p(k),
                        "empty list: leave the key out to fire on every update".into(),
                    );
                }
                if list.is_some() && !rule.on.contains(&Op::Update) {
                    bad(p(k), "only applies to updates, but `on` has no \"update\"".into());
                }
            }
            if let Some(t) = &rule.transition {
                if t.column.is_empty() {
                    bad(
                        p("transition.column"),
                        "empty: name the column whose value moves".into(),
                    );
                }
                for (k, v) in [("to", Some(&t.to)), ("from", t.from.as_ref())] {
                    if v.is_some_and(|v| v.is_array() || v.is_object()) {
                        bad(
                            p(&format!("transition.{k}")),
                            "must be a single value (text, number, true/false)".into(),
                        );
                    }
                }
                if !rule.on.iter().any(|o| matches!(o, Op::Insert | Op::Update)) {
                    bad(
                        p("transition"),
                        "only insert and update can move a column into a value, but `on` has neither".into(),
                    );
                }
            }
            if let Some(c) = &rule.coalesce {
                window_problems(
                    &mut bad,
                    &|k| p(&format!("coalesce.{k}")),
                    (c.window, c.max_wait, c.max_open),
                );
            }
        }
        let mut sub_names = std::collections::HashSet::new();
        if self.subscribers.is_empty() {
            bad(
                "subscribers".into(),
                "no [[subscribers]]: add at least one with name, url, events and secrets".into(),
            );
        }
        for (i, sub) in self.subscribers.iter().enumerate() {
            let p = |k: &str| format!("subscribers[{i}].{k}");
            if !valid_event_name(&sub.name) {
                bad(
                    p("name"),
                    format!("{:?} must be letters, digits, '.', '_' or '-'", sub.name),
                );
            } else if !sub_names.insert(sub.name.as_str()) {
                bad(p("name"), format!("{:?} is used by two subscribers", sub.name));
            }
            let (schemes, use_) = match sub.kind {
                SubscriberKind::Http => (["http", "https"], "use http or https"),
                SubscriberKind::Nats => (["nats", "tls"], "use nats://host:4222 (or tls://host:4222)"),
            };
            match url::Url::parse(&sub.url) {
                Ok(u) if schemes.contains(&u.scheme()) => {
                    if u.host().is_none() {
                        bad(p("url"), format!("{:?} has no host", sub.url));
                    }
                }
                Ok(u) => bad(
                    p("url"),
                    format!("scheme {:?} is not supported: {use_}", u.scheme()),
                ),
                Err(e) => bad(p("url"), format!("{:?} is not a URL: {e}", sub.url)),
            }
            if sub.events.is_empty() {
                bad(
                    p("events"),
                    "empty: list event patterns such as \"price.*\" or \"*\"".into(),
                );
            }
            for (j, pattern) in sub.events.iter().enumerate() {
                let key = format!("subscribers[{i}].events[{j}]");
                if !valid_event_name(&pattern.replace('*', "x")) {
                    bad(
                        key,
                        format!("{pattern:?} must be an event name, with * for any run of characters (\"price.*\")"),
                    );
                }
            }
            if sub.secrets.is_empty() {
                bad(
                    p("secrets"),
                    "empty: give at least one \"whsec_<base64>\" secret, e.g. \"${WEBSHOP_SECRET}\"".into(),
                );
            }
            let now = std::time::SystemTime::now();
            let mut unexpired = 0;
            for (j, secret) in sub.secrets.iter().enumerate() {
                match secret.expires() {
                    Ok(Some(at)) if at <= now => {}
                    Ok(_) => unexpired += 1,
                    Err(e) => bad(format!("subscribers[{i}].secrets[{j}].expires"), e),
                }
            }
            if !sub.secrets.is_empty() && unexpired == 0 {
                bad(
                    p("secrets"),
                    "every secret has expired: add a new \"whsec_<base64>\" secret".into(),
                );
            }
            if sub.disable_after_attempts == Some(0) {
                bad(
                    p("disable_after_attempts"),
                    "must be at least 1 (leave it out for no limit)".into(),
                );
            }
            for (k, d) in [
                ("timeout", sub.timeout),
                ("spill_after", sub.spill_after),
                ("disable_after", sub.disable_after),
            ] {
                if d.is_zero() {
                    bad(p(k), "must be above 0".into());
                }
            }
            for (k, v) in [
                ("max_in_flight", sub.max_in_flight),
                ("max_buffered", sub.max_buffered),
            ] {
                if v == 0 {
                    bad(p(k), "must be at least 1".into());
                }
            }
            delivery::batch_problems(sub, &mut |k, m| bad(p(k), m));
            if sub.max_in_flight > MAX_MAX_IN_FLIGHT {
                bad(
                    p("max_in_flight"),
                    format!(
                        "{} is above the limit of {MAX_MAX_IN_FLIGHT} requests in flight per subscriber",
                        sub.max_in_flight
                    ),
                );
            }
        }
        out
    }
}

/// The problems of a window's settings (coalescing, documents): `path` gives each key's
/// path.
pub(super) fn window_problems(
    bad: &mut dyn FnMut(String, String),
    path: &dyn Fn(&str) -> String,
    (window, max_wait, max_open): (Duration, Duration, usize),
) {
    if window.is_zero() {
        bad(path("window"), "must be above 0, e.g. \"2s\"".into());
    }
    if max_wait < window {
        bad(
            path("max_wait"),
            format!(
                "must not be below window ({})",
                humantime::format_duration(window)
            ),
        );
    }
    for (k, d) in [("window", window), ("max_wait", max_wait)] {
        if d > Duration::from_secs(24 * 3600) {
            bad(
                path(k),
                "must not be above 24h (the confirmed LSN waits for a window's first change)".into(),
            );
        }
    }
    if max_open == 0 {
        bad(path("max_open"), "must be at least 1".into());
    }
}
