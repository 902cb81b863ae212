//! What a check found, as something an operator reads and a script runs: one line per
//! check (ok, warning or problem) with its fix, the fixes as one SQL script grouped by
//! who must run each statement, and the same as JSON for automation.
//!
//! Every stage that checks something (the config, the source's server and catalog, the
//! state database, the subscribers) reports `Finding`s; `walhook check`, a refused
//! `walhook run` and a refused reload print the same report. A leaf: it imports nothing
//! of walhook.

use std::fmt::Write as _;

use serde::Serialize;

/// How a finding weighs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    /// Worth fixing, but nothing stops a start.
    Warning,
    /// Stops a start.
    Problem,
}

/// Whose mistake a problem is, which decides the exit code.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Area {
    /// The config is wrong (exit code 2).
    Config,
    /// The config is right, but something it needs is missing (exit code 3).
    Prerequisite,
}

/// Who must run a fix's SQL.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(tag = "as", rename_all = "lowercase")]
pub enum Who {
    /// A superuser (server settings, role attributes).
    Superuser,
    /// The role that owns these tables (only it, or a superuser, may alter them or put
    /// them in a publication).
    Owner { role: String, tables: Vec<String> },
    /// walhook's own role (the one in `source.url`).
    Walhook { role: String },
}

/// What fixes a finding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Fix {
    /// Who runs `sql`.
    #[serde(flatten)]
    pub who: Who,
    /// Idempotent statements, each ending in `;` (empty when the fix is not SQL).
    pub sql: Vec<String>,
    /// What must be restarted or reloaded for the fix to take effect, if anything.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub then: Option<String>,
    /// It must run before the other fixes (and is not optional, even for a warning):
    /// another fix would do harm without it.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub first: bool,
}

/// One check and what it found.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    pub level: Level,
    pub area: Area,
    /// What was checked: "server", "role walhook", "table public.price", "publication
    /// walhook", "slot walhook", "state database", "subscriber shop", "config".
    pub subject: String,
    /// The config key it concerns, if one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// What is so, and for a problem or warning what to do.
    pub message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<Fix>,
}

impl Finding {
    pub fn ok(subject: impl Into<String>, message: impl Into<String>) -> Finding {
        Finding {
            level: Level::Ok,
            area: Area::Prerequisite,
            subject: subject.into(),
            path: None,
            message: message.into(),
            fix: None,
        }
    }

    /// A missing prerequisite.
    pub fn problem(subject: impl Into<String>, message: impl Into<String>) -> Finding {
        Finding {
            level: Level::Problem,
            ..Finding::ok(subject, message)
        }
    }

    pub fn warning(subject: impl Into<String>, message: impl Into<String>) -> Finding {
        Finding {
            level: Level::Warning,
            ..Finding::ok(subject, message)
        }
    }

    /// A mistake in the config at `path`.
    pub fn config(path: impl Into<String>, message: impl Into<String>) -> Finding {
        Finding {
            level: Level::Problem,
            area: Area::Config,
            path: Some(path.into()),
            ..Finding::ok("config", message)
        }
    }

    pub fn at(mut self, path: impl Into<String>) -> Finding {
        self.path = Some(path.into());
        self
    }

    pub fn with_fix(mut self, who: Who, sql: Vec<String>) -> Finding {
        self.fix = Some(Fix {
            who,
            sql,
            then: None,
            first: false,
        });
        self
    }

    /// Its fix runs before every other one (see `Fix::first`).
    pub fn first(mut self) -> Finding {
        if let Some(fix) = &mut self.fix {
            fix.first = true;
        }
        self
    }

    /// The fix also needs `then` (e.g. "restart PostgreSQL").
    pub fn then(mut self, then: impl Into<String>) -> Finding {
        if let Some(fix) = &mut self.fix {
            fix.then = Some(then.into());
        }
        self
    }

    pub fn is_problem(&self) -> bool {
        self.level == Level::Problem
    }

    /// The finding on one line: `level  subject: [path: ]message[ Fix: sql]`.
    pub fn line(&self) -> String {
        let level = match self.level {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Problem => "problem",
        };
        let mut line = format!("{level:<8}{}: ", self.subject);
        if let Some(path) = self.path.as_deref().filter(|p| !self.message.contains(p)) {
            let _ = write!(line, "{path}: ");
        }
        line.push_str(&self.message);
        if let Some(fix) = &self.fix {
            if !fix.sql.is_empty() && !self.message.contains(&fix.sql[0]) {
                let _ = write!(line, " Fix ({}): {}", fix.who.said(), fix.sql.join(" "));
            }
            if let Some(then) = &fix.then {
                let _ = write!(line, " Then {then}.");
            }
        }
        line
    }
}

impl Who {
    /// Who runs it, whatever it is for; superusers sort first, walhook's role last.
    fn runner(&self) -> (u8, &str) {
        match self {
            Who::Superuser => (0, ""),
            Who::Owner { role, .. } => (1, role),
            Who::Walhook { role } => (2, role),
        }
    }

    /// "as a superuser", "as role medusa, the owner of public.price".
    pub fn said(&self) -> String {
        match self {
            Who::Superuser => "as a superuser".into(),
            Who::Owner { role, tables } => format!("as role {role}, the owner of {}", tables.join(", ")),
            Who::Walhook { role } => format!("as walhook's role {role}"),
        }
    }
}

/// Everything a check found, in the order found.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Report {
    pub findings: Vec<Finding>,
}

impl Report {
    pub fn push(&mut self, f: Finding) {
        self.findings.push(f);
    }

    pub fn extend(&mut self, f: impl IntoIterator<Item = Finding>) {
        self.findings.extend(f);
    }

    pub fn problems(&self) -> impl Iterator<Item = &Finding> {
        self.findings.iter().filter(|f| f.is_problem())
    }

    /// The exit code a check gives: 2 when the config is wrong, 3 when a prerequisite
    /// is missing, 0 otherwise (warnings included).
    pub fn exit_code(&self) -> i32 {
        if self.problems().any(|f| f.area == Area::Config) {
            2
        } else if self.problems().next().is_some() {
            3
        } else {
            0
        }
    }

    /// One line per finding; with `all`, the ok ones too.
    pub fn text(&self, all: bool) -> String {
        let mut out = String::new();
        for f in self.findings.iter().filter(|f| all || f.level != Level::Ok) {
            out.push_str(&f.line());
            out.push('\n');
        }
        out
    }

    /// Every fix's SQL as one script, grouped by who must run it (superuser first, then
    /// each table owner, then walhook's role), each statement once however many findings
    /// need it, then what must be restarted. The fixes of warnings are optional and come
    /// commented out.
    pub fn sql(&self, header: &str) -> String {
        // By runner; a table owner's group names every table it is for.
        // Fixes that must come first form sections of their own, before the rest.
        let mut groups: Vec<(bool, Who, Vec<String>)> = Vec::new();
        let mut then: Vec<&str> = Vec::new();
        for f in self.findings.iter().filter(|f| f.level != Level::Ok) {
            let Some(fix) = &f.fix else { continue };
            let at = match groups
                .iter()
                .position(|(first, who, _)| *first == fix.first && who.runner() == fix.who.runner())
            {
                Some(at) => at,
                None => {
                    groups.push((fix.first, fix.who.clone(), Vec::new()));
                    groups.len() - 1
                }
            };
            let (_, who, statements) = &mut groups[at];
            if let (Who::Owner { tables, .. }, Who::Owner { tables: more, .. }) = (who, &fix.who) {
                for t in more {
                    if !tables.contains(t) {
                        tables.push(t.clone());
                    }
                }
                tables.sort();
            }
            for s in &fix.sql {
                let line = match f.level {
                    Level::Warning if !fix.first => format!("-- optional: {s}"),
                    _ => s.clone(),
                };
                if !statements.contains(&line) {
                    statements.push(line);
                }
            }
            if let Some(t) = fix
                .then
                .as_deref()
                .filter(|t| f.level == Level::Problem && !then.contains(t))
            {
                then.push(t);
            }
        }
        groups.sort_by(|a, b| (!a.0, a.1.runner()).cmp(&(!b.0, b.1.runner())));
        let mut out = String::new();
        for line in header.lines() {
            let _ = writeln!(out, "-- {line}");
        }
        // Problems no statement here fixes (a server that refused the connection, a
        // config mistake): the script must not read as "all is well".
        let unfixed: Vec<&Finding> = self
            .findings
            .iter()
            .filter(|f| f.is_problem() && f.fix.as_ref().is_none_or(|x| x.sql.is_empty()))
            .collect();
        if groups.iter().all(|(_, _, s)| s.is_empty()) && unfixed.is_empty() {
            out.push_str("-- nothing to fix in the database\n");
        }
        if !unfixed.is_empty() {
            out.push_str("\n-- not fixed by this script (walhook check says more once they are):\n");
            for f in unfixed {
                let _ = writeln!(out, "--   {}", f.line().replace('\n', " "));
            }
        }
        for (_, who, statements) in groups.iter().filter(|(_, _, s)| !s.is_empty()) {
            let _ = writeln!(out, "\n-- {}", who.said());
            // A section for another role switches to it, so that a superuser may run the
            // whole script at once; that role itself may run its section alone.
            let role = match who {
                Who::Superuser => None,
                Who::Owner { role, .. } | Who::Walhook { role } => Some(role),
            };
            if let Some(role) = role {
                let _ = writeln!(out, "SET ROLE {};", ident(role));
            }
            for s in statements {
                let _ = writeln!(out, "{s}");
            }
            if role.is_some() {
                out.push_str("RESET ROLE;\n");
            }
        }
        if !then.is_empty() {
            out.push_str("\n-- then:\n");
            for t in then {
                let _ = writeln!(out, "--   {t}");
            }
        }
        out
    }
}

/// A name as an SQL identifier: `"medusa"`, `"a""b"`.
pub fn ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// A string as an SQL literal: `'it''s'`.
pub fn literal(s: &str) -> String {
    format!("'{}'", s.replace('\'', "''"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(role: &str, table: &str) -> Who {
        Who::Owner {
            role: role.into(),
            tables: vec![table.into()],
        }
    }

    #[test]
    fn exit_codes_follow_the_worst_finding() {
        let mut r = Report::default();
        r.push(Finding::ok("server", "wal_level = logical"));
        r.push(Finding::warning("server", "max_slot_wal_keep_size is unlimited"));
        assert_eq!(r.exit_code(), 0, "warnings do not stop a start");
        r.push(Finding::problem("role walhook", "may not replicate"));
        assert_eq!(r.exit_code(), 3);
        r.push(Finding::config("events[0].when", "not CEL"));
        assert_eq!(r.exit_code(), 2, "a config mistake is named first");
    }

    #[test]
    fn the_script_groups_fixes_by_who_runs_them_once_each() {
        let mut r = Report::default();
        r.push(
            Finding::problem("server", "wal_level is 'replica'")
                .with_fix(
                    Who::Superuser,
                    vec!["ALTER SYSTEM SET wal_level = logical;".into()],
                )
                .then("restart PostgreSQL (wal_level)"),
        );
        r.push(
            Finding::problem("table public.price", "no replica identity").with_fix(
                owner("medusa", "public.price"),
                vec!["ALTER TABLE public.price REPLICA IDENTITY FULL;".into()],
            ),
        );
        r.push(Finding::problem("role walhook", "may not replicate").with_fix(
            Who::Superuser,
            vec!["ALTER ROLE walhook WITH REPLICATION;".into()],
        ));
        r.push(Finding::warning("table public.product", "not readable").with_fix(
            owner("medusa", "public.product"),
            vec!["GRANT SELECT ON public.product TO walhook;".into()],
        ));
        r.push(
            Finding::problem("table public.price", "only logs its key").with_fix(
                owner("medusa", "public.price"),
                vec!["ALTER TABLE public.price REPLICA IDENTITY FULL;".into()],
            ),
        );
        r.push(
            Finding::ok("slot walhook", "exists")
                .with_fix(Who::Superuser, vec!["SELECT 'not a fix';".into()]),
        );
        let sql = r.sql("walhook check --sql");
        assert_eq!(
            sql,
            "-- walhook check --sql\n\
             \n-- as a superuser\nALTER SYSTEM SET wal_level = logical;\nALTER ROLE walhook WITH REPLICATION;\n\
             \n-- as role medusa, the owner of public.price, public.product\nSET ROLE \"medusa\";\n\
             ALTER TABLE public.price REPLICA IDENTITY FULL;\n\
             -- optional: GRANT SELECT ON public.product TO walhook;\nRESET ROLE;\n\
             \n-- then:\n--   restart PostgreSQL (wal_level)\n"
        );
    }

    #[test]
    fn a_fix_that_must_come_first_does_even_from_a_warning() {
        let mut r = Report::default();
        r.push(
            Finding::problem("table public.product", "only logs its key").with_fix(
                owner("medusa", "public.product"),
                vec!["ALTER TABLE p REPLICA IDENTITY FULL;".into()],
            ),
        );
        r.push(
            Finding::warning("publication walhook", "does not publish generated columns")
                .with_fix(
                    Who::Superuser,
                    vec!["ALTER PUBLICATION w SET (publish_generated_columns = stored);".into()],
                )
                .first(),
        );
        let sql = r.sql("h");
        let first = sql.find("ALTER PUBLICATION").expect("the publication's fix");
        let full = sql.find("ALTER TABLE").expect("the table's fix");
        assert!(first < full, "{sql}");
        assert!(!sql.contains("-- optional: ALTER PUBLICATION"), "{sql}");
    }

    #[test]
    fn a_line_names_the_path_once_and_the_fix() {
        let f = Finding::problem("table public.price", "has no column \"colour\"")
            .at("events[2].columns")
            .with_fix(owner("medusa", "public.price"), vec!["ALTER TABLE x;".into()]);
        assert_eq!(
            f.line(),
            "problem table public.price: events[2].columns: has no column \"colour\" \
             Fix (as role medusa, the owner of public.price): ALTER TABLE x;"
        );
        let f = Finding::config("events[1].when", "events[1].when is not CEL");
        assert_eq!(f.line(), "problem config: events[1].when is not CEL");
    }

    #[test]
    fn json_names_level_area_and_who() {
        let f = Finding::problem("server", "x").with_fix(Who::Superuser, vec!["S;".into()]);
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["level"], "problem");
        assert_eq!(v["area"], "prerequisite");
        assert_eq!(v["fix"]["as"], "superuser");
        assert_eq!(v["fix"]["sql"][0], "S;");
        assert_eq!(literal("it's"), "'it''s'");
    }
}
