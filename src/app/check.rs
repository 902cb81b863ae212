//! Checks a config as a whole, every problem at once with its key path.
//!
//! Offline (`read`, `load`): the config's own rules (`Config::validate`), and each
//! stage's part of it, compiled as that stage compiles it (database URLs, mapping's
//! conditions and patterns, the lanes' targets).
//!
//! Online (`look`): the rules against the source's catalog, read-only (tables, columns,
//! replica identity: `source::inspect`), and every subscriber URL resolved (private
//! addresses: `lanes::target`). `walhook check` looks online unless told `--offline`;
//! `walhook run` and a reload look whenever the file is wrong, so that one try shows
//! everything to fix, and `run` looks again before it sets anything up.

use std::path::Path;
use std::time::Duration;

use crate::config::{Config, ConfigError, Parsed, Problem};
use crate::lanes::target;
use crate::pg::PgTarget;
use crate::report::{Finding, Level, Report};

/// A config read and checked offline, with every problem found so far.
pub struct Checked {
    pub config: Config,
    pub problems: Vec<Problem>,
}

/// Reads the config file and checks all of it offline; logs its warnings. Only a file
/// that cannot be read or parsed is an error here.
pub fn read(path: &Path) -> Result<Checked, ConfigError> {
    let parsed = Config::read(path)?;
    for warning in &parsed.warnings {
        tracing::warn!("{warning}");
    }
    Ok(checked(parsed))
}

/// Reads the config file and checks all of it offline; logs its warnings.
pub fn load(path: &Path) -> Result<Config, ConfigError> {
    settle(read(path)?, &path.display().to_string())
}

/// Parses config text (see `Config::parse`) and checks all of it offline.
pub fn from_toml(
    text: &str,
    origin: &str,
    env: &dyn Fn(&str) -> Option<String>,
) -> Result<Config, ConfigError> {
    settle(checked(Config::parse(text, origin, env)?), origin)
}

/// Every offline problem of a config: its own, then each stage's, in key-path order.
pub fn problems(config: &Config) -> Vec<Problem> {
    let mut out = config.validate();
    add_stage_problems(&mut out, config);
    sort(&mut out);
    out
}

/// Adds each stage's problems to the config's own, leaving out a key the config already
/// reported (a stage compiles what the config checked too, such as a subscriber's URL).
fn add_stage_problems(out: &mut Vec<Problem>, config: &Config) {
    let reported: std::collections::HashSet<String> = out.iter().map(|p| p.path.clone()).collect();
    out.extend(
        stage_problems(config)
            .into_iter()
            .filter(|p| !reported.contains(&p.path)),
    );
}

fn stage_problems(config: &Config) -> Vec<Problem> {
    let mut out = crate::pg::check(config);
    out.extend(crate::mapping::check(config));
    out.extend(crate::lanes::check(config));
    out
}

fn checked(parsed: Parsed) -> Checked {
    let Parsed {
        config, mut problems, ..
    } = parsed;
    add_stage_problems(&mut problems, &config);
    sort(&mut problems);
    Checked { config, problems }
}

fn settle(checked: Checked, origin: &str) -> Result<Config, ConfigError> {
    if checked.problems.is_empty() {
        Ok(checked.config)
    } else {
        Err(ConfigError::invalid(origin, checked.problems))
    }
}

/// Who looks online, which decides what cannot be reached means.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reach {
    /// `walhook check`, perhaps far from production: a host that does not resolve and a
    /// source that does not answer are warnings.
    Check,
    /// `walhook run` and a reload: a host that does not resolve is refused (the source
    /// not answering is the caller's to judge, see `Findings::unreachable`).
    Run,
}

/// What looking beyond the file found.
#[derive(Debug, Default)]
pub struct Findings {
    /// Mistakes of the config: subscriber URLs refused (exit code 2).
    pub config: Vec<Problem>,
    /// Every check of the source's server, catalog, publication and slot, and of the
    /// state database: ok, warnings and problems, with their fixes.
    pub source: Vec<Finding>,
    /// Why the source's catalog was not looked at: it did not answer.
    pub unreachable: Option<String>,
    /// What could not be checked from here (`Reach::Check`), as warnings.
    pub unchecked: Vec<Problem>,
}

/// Why a config is refused: a report with at least one problem.
#[derive(Debug)]
pub struct Refusal {
    pub report: Report,
}

impl Refusal {
    /// 2 when the config itself is wrong (with whatever else was found), 3 when it is
    /// right but the source is not ready for it.
    pub fn exit_code(&self) -> i32 {
        self.report.exit_code()
    }

    /// A first line that says what is refused (`origin` names the file), then one line
    /// per problem and warning with its fix.
    pub fn message(&self, origin: Option<&str>) -> String {
        format!("{}\n{}", self.head(origin), self.report.text(false).trim_end())
    }

    /// The same on one line, for a log: every problem, then every warning, after `; `.
    pub fn one_line(&self, origin: Option<&str>) -> String {
        let mut parts = vec![self.head(origin)];
        parts.extend(
            self.report
                .findings
                .iter()
                .filter(|f| f.level != Level::Ok)
                .map(|f| f.line().split_whitespace().collect::<Vec<_>>().join(" ")),
        );
        parts.join("; ")
    }

    fn head(&self, origin: Option<&str>) -> String {
        let count = counts(&self.report);
        match (self.exit_code(), origin) {
            (2, Some(origin)) => format!("invalid config {origin}: {count}"),
            (2, None) => format!("invalid config: {count}"),
            (_, Some(origin)) => format!("{origin}: the source is not ready for this config: {count}"),
            (_, None) => format!("the source is not ready for this config: {count}"),
        }
    }
}

/// "2 problems, 1 warning".
pub fn counts(report: &Report) -> String {
    let n = |level: Level| report.findings.iter().filter(|f| f.level == level).count();
    let plural = |n: usize, what: &str| format!("{n} {what}{}", if n == 1 { "" } else { "s" });
    match n(Level::Warning) {
        0 => plural(n(Level::Problem), "problem"),
        w => format!(
            "{}, {}",
            plural(n(Level::Problem), "problem"),
            plural(w, "warning")
        ),
    }
}

impl Findings {
    /// Everything found, with the offline problems, in the order of the checks: the
    /// config's mistakes (in key-path order), then the source's checks, then what could
    /// not be checked.
    pub fn report(&self, offline: &[Problem]) -> Report {
        let mut config: Vec<Problem> = offline.iter().chain(&self.config).cloned().collect();
        sort(&mut config);
        let mut report = Report::default();
        report.extend(config.into_iter().map(|p| Finding::config(p.path, p.message)));
        report.extend(self.source.iter().cloned());
        if let Some(why) = &self.unreachable {
            report.push(Finding::warning("source", format!("not checked: {why}")));
        }
        report.extend(
            self.unchecked.iter().map(|p| {
                Finding::warning("config", format!("not checked: {}", p.message)).at(p.path.clone())
            }),
        );
        report
    }

    /// Refuses when the offline problems, or anything found here, say so.
    pub fn refusal(&self, offline: &[Problem]) -> Option<Refusal> {
        let report = self.report(offline);
        (report.exit_code() != 0).then_some(Refusal { report })
    }

    /// Logs what was not checked, as warnings.
    pub fn warn_unchecked(&self) {
        if let Some(why) = &self.unreachable {
            tracing::warn!(reason = %why, "the rules were not checked against the source database");
        }
        for p in &self.unchecked {
            tracing::warn!(problem = %p, "not checked");
        }
    }
}

/// Looks online (see `look`) at a config read with `read`, logs what could not be
/// checked, and refuses it when anything is wrong.
pub async fn whole(checked: &Checked, reach: Reach) -> Option<Refusal> {
    let findings = look(&checked.config, reach).await;
    findings.warn_unchecked();
    findings.refusal(&checked.problems)
}

/// The longest `walhook check` waits for the source to answer.
const CHECK_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Looks at what the config names beyond itself: every subscriber URL resolved, and the
/// rules against the source's catalog. Changes nothing anywhere.
pub async fn look(config: &Config, reach: Reach) -> Findings {
    let targets = target::check_targets(config).await;
    let mut found = Findings {
        config: targets.refused,
        ..Default::default()
    };
    match reach {
        Reach::Check => found.unchecked = targets.unresolved,
        Reach::Run => found.config.extend(targets.unresolved),
    }
    // A URL that does not parse is the file's own problem (`pg::check`).
    let Ok(source) = PgTarget::parse(&config.source.url) else {
        found.unreachable = Some("source.url is not a valid connection URL".into());
        return found;
    };
    let connect = source.connect("check");
    let catalog = match reach {
        Reach::Check => match tokio::time::timeout(CHECK_CONNECT_TIMEOUT, connect).await {
            // A server that answered and refused (a password, a certificate, a database
            // that does not exist) is a problem, as it is for `run`; one that did not
            // answer may be out of reach from here only.
            Ok(Err(e)) if !no_answer(&e) => {
                found.source.push(
                    Finding::problem("source", crate::pg::connect_message("source.url", &e)).at("source.url"),
                );
                return found;
            }
            Ok(r) => r.map_err(|e| crate::pg::connect_message("source.url", &e)),
            Err(_) => Err(format!(
                "source.url: no answer within {}s",
                CHECK_CONNECT_TIMEOUT.as_secs()
            )),
        },
        Reach::Run => connect
            .await
            .map_err(|e| crate::pg::connect_message("source.url", &e)),
    };
    let catalog = match catalog {
        Ok(c) => c,
        Err(why) => {
            found.unreachable = Some(why);
            return found;
        }
    };
    match crate::source::inspect::inspect(&catalog, config).await {
        Ok(inspection) => found.source = inspection.findings,
        Err(e) => found.source.push(Finding::problem("source", e.to_string())),
    }
    // Each document's query, prepared (never run) as walhook prepares it.
    for (i, message) in crate::documents::check(&catalog, config).await {
        let subject = format!("document {}", config.documents[i].name);
        found
            .source
            .push(Finding::problem(subject, message).at(format!("documents[{i}].query")));
    }
    // The state database: the source's own unless state.url names another.
    let same = config.state.url.as_deref().is_none_or(|u| u == config.source.url);
    let state = crate::state::check::inspect(config.state_url(), same.then_some(&catalog));
    match reach {
        Reach::Check => match tokio::time::timeout(CHECK_CONNECT_TIMEOUT, state).await {
            Ok(f) => found.source.extend(f),
            Err(_) => found.source.push(Finding::warning(
                "state database",
                format!(
                    "not checked: no answer within {}s",
                    CHECK_CONNECT_TIMEOUT.as_secs()
                ),
            )),
        },
        Reach::Run => found.source.extend(state.await),
    }
    found
}

/// Whether a failed connection got no answer at all: refused, unreachable, timed out or
/// a name that does not resolve (rather than a server that said no).
fn no_answer(e: &tokio_postgres::Error) -> bool {
    use std::io::ErrorKind::*;
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            return matches!(
                io.kind(),
                ConnectionRefused
                    | TimedOut
                    | HostUnreachable
                    | NetworkUnreachable
                    | AddrNotAvailable
                    | NotFound
            ) || io.to_string().contains("failed to lookup address");
        }
        cur = err.source();
    }
    e.as_db_error().is_none() && e.to_string().contains("timeout")
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
