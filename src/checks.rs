//! Checks a config as a whole, every problem at once with its key path: the config's
//! own rules (`Config::validate`), and each stage's part of it, compiled as that stage
//! compiles it (database URLs, mapping's conditions and patterns, the lanes' targets).
//! `walhook run`, `walhook check` and a reload all load a config through here.

use std::path::Path;

use crate::config::{Config, ConfigError, Parsed, Problem};

/// Reads the config file and checks all of it; logs its warnings.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    let parsed = Config::read(path)?;
    for warning in &parsed.warnings {
        tracing::warn!("{warning}");
    }
    settle(parsed, &path.display().to_string())
}

/// Parses config text (see `Config::parse`) and checks all of it.
pub fn from_toml(
    text: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    settle(Config::parse(text, origin, env)?, origin)
}

/// Every problem of a config: its own, then each stage's, in key-path order.
pub fn problems(config: &Config) -> Vec<Problem> {
    let mut out = config.validate();
    out.extend(stage_problems(config));
    sort(&mut out);
    out
}

fn stage_problems(config: &Config) -> Vec<Problem> {
    let mut out = crate::pg::check(config);
    out.extend(crate::mapping::check(config));
    out.extend(crate::lanes::check(config));
    out
}

fn settle(parsed: Parsed, origin: &str) -> Result<Config, ConfigError> {
    let Parsed {
        config, mut problems, ..
    } = parsed;
    problems.extend(stage_problems(&config));
    if problems.is_empty() {
        return Ok(config);
    }
    sort(&mut problems);
    Err(ConfigError::invalid(origin, problems))
}

/// Orders problems as the file reads: by section (top-level keys, `[source]`, `[state]`,
/// `[admin]`, `[[events]]`, `[[subscribers]]`), item (`subscribers[2]` before
/// `subscribers[10]`) and entry of a list within it, keeping the order they were found in
/// otherwise.
fn sort(problems: &mut [Problem]) {
    const SECTIONS: [&str; 5] = ["source", "state", "admin", "events", "subscribers"];
    problems.sort_by_cached_key(|p| {
        let mut parts = p.path.split(['.', '[', ']']).filter(|s| !s.is_empty());
        let section = parts.next().unwrap_or_default();
        let rank = SECTIONS.iter().position(|s| *s == section).map_or(0, |i| i + 1);
        let item = parts.next().and_then(|n| n.parse::<u64>().ok()).unwrap_or(0);
        // A list inside the item (`events[2]`) in its own order; other keys as found.
        let list = match (parts.next(), parts.next().and_then(|n| n.parse::<u64>().ok())) {
            (Some(name), Some(index)) => (name.to_string(), index),
            _ => (String::new(), 0),
        };
        (rank, item, list)
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn problems_come_in_key_path_order() {
        let mut p: Vec<Problem> = [
            "subscribers[10].url",
            "events[0].when",
            "subscribers[2].url",
            "subscribers[2].events[0]",
            "admin.token",
            "shutdown_grace",
        ]
        .iter()
        .map(|path| Problem {
            path: path.to_string(),
            message: String::new(),
        })
        .collect();
        sort(&mut p);
        let paths: Vec<&str> = p.iter().map(|p| p.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "shutdown_grace",
                "admin.token",
                "events[0].when",
                "subscribers[2].url",
                "subscribers[2].events[0]",
                "subscribers[10].url"
            ]
        );
    }
}
