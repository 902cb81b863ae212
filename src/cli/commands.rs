//! The commands besides the admin clients: check, run, explain, ping and receive, each
//! giving its exit code (0 ok, 1 runtime failure, 2 bad config or input, 3 missing
//! prerequisite).

use tokio_util::sync::CancellationToken;

use std::path::Path;

use super::Command;
use crate::app::check::{self, Findings, Reach, Refusal};
use crate::config::Config;
use crate::report::{Finding, Level};

/// Loads a config file, or prints why not and gives the exit code (2).
pub(super) fn load(path: &std::path::Path) -> Result<Config, i32> {
    crate::app::check::load(path).map_err(|e| {
        eprintln!("walhook: {e}");
        2
    })
}

/// How `walhook check` looks and prints.
pub(super) struct CheckOpts {
    pub offline: bool,
    pub sql: bool,
    pub json: bool,
    pub ping: bool,
}

/// `walhook check`: the file, then (unless `offline`) everything it names beyond itself;
/// prints every finding (or the fixes as SQL, or JSON) and gives the exit code.
async fn check(path: &Path, opts: CheckOpts) -> i32 {
    let checked = match check::read(path) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("walhook: {e}");
            return 2;
        }
    };
    let findings = if opts.offline {
        Findings::default()
    } else {
        check::look(&checked.config, Reach::Check).await
    };
    let mut report = findings.report(&checked.problems);
    if opts.ping {
        for sub in &checked.config.subscribers {
            let subject = format!("subscriber {}", sub.name);
            report.push(
                match super::explain::ping(&checked.config, &sub.name, false).await {
                    Ok((said, true)) => Finding::ok(subject, format!("walhook.ping {said}")),
                    Ok((said, false)) => Finding::warning(subject, format!("walhook.ping {said}")),
                    Err(e) => Finding::warning(subject, format!("walhook.ping not sent: {e}")),
                },
            );
        }
    }
    let code = report.exit_code();
    let origin = path.display().to_string();
    if opts.json {
        let json = serde_json::json!({
            "config": origin,
            "exit_code": code,
            "findings": report.findings,
            "sql": report.sql(""),
        });
        println!("{json:#}");
        return code;
    }
    if opts.sql {
        let header = format!(
            "walhook check --sql --config {origin}\n\
             Idempotent: run each part as the role it names (psql -v ON_ERROR_STOP=1 -f FILE),\n\
             then what it says to restart, then walhook check again."
        );
        print!("{}", report.sql(&header));
        return code;
    }
    print!("{}", report.text(true));
    let counted = check::counts(&report);
    match code {
        0 if report.findings.iter().any(|f| f.level == Level::Warning) => {
            let warnings = counted.split(", ").last().unwrap_or_default();
            println!("{origin}: ok ({warnings})")
        }
        0 => println!("{origin}: ok"),
        2 => eprintln!("walhook: invalid config {origin}: {counted}"),
        // Point at the script only when it has something to run.
        _ if report
            .problems()
            .any(|f| f.fix.as_ref().is_some_and(|x| !x.sql.is_empty())) =>
        {
            eprintln!(
                "walhook: {origin}: the source is not ready for this config: {counted} \
                 (walhook check --sql prints the fixes as one script)"
            )
        }
        _ => eprintln!("walhook: {origin}: the source is not ready for this config: {counted}"),
    }
    code
}

/// The config `walhook run` starts with. A file with problems is also looked at online,
/// so that one try reports every problem (a config without any is looked at by
/// `app::run` before it sets anything up).
async fn read_for_run(path: &Path) -> Result<Config, i32> {
    let checked = check::read(path).map_err(|e| {
        eprintln!("walhook: {e}");
        2
    })?;
    if checked.problems.is_empty() {
        return Ok(checked.config);
    }
    // With problems of its own, the file is always refused.
    let refusal = check::whole(&checked, Reach::Run)
        .await
        .unwrap_or_else(|| Refusal {
            report: Findings::default().report(&checked.problems),
        });
    eprintln!("walhook: {}", refusal.message(Some(&path.display().to_string())));
    Err(refusal.exit_code())
}

/// Runs one command to its end; returns the process's exit code.
pub async fn run(command: Command) -> i32 {
    match command {
        Command::Check {
            config,
            offline,
            sql,
            json,
            ping,
        } => {
            let opts = CheckOpts {
                offline,
                sql,
                json,
                ping,
            };
            check(&config.config, opts).await
        }
        Command::Run { config, no_delivery } => {
            let path = config.config;
            let config = match read_for_run(&path).await {
                Ok(c) => c,
                Err(code) => return code,
            };
            let cancel = CancellationToken::new();
            crate::app::shutdown::on_signals(cancel.clone());
            let reloads = crate::app::reload::Reloads {
                path,
                hangups: crate::app::shutdown::on_hangup(),
                log: Default::default(),
            };
            match crate::app::run::serve(config, no_delivery, cancel, Some(reloads)).await {
                Ok(()) => 0,
                Err(e) => {
                    eprintln!("walhook: {e}");
                    e.exit_code()
                }
            }
        }
        Command::Explain {
            config,
            table,
            op,
            old,
            new,
        } => {
            let config = match load(&config.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let question = super::explain::Question {
                table: &table,
                op: &op,
                old: old.as_deref(),
                new: new.as_deref(),
            };
            match super::explain::explain(&config, &question).await {
                Ok(report) => {
                    print!("{report}");
                    0
                }
                Err(e) => {
                    eprintln!("walhook: {e}");
                    e.exit_code()
                }
            }
        }
        Command::Deliveries { action } => super::admin::deliveries(action).await,
        Command::Subscribers { action } => super::admin::subscribers(action).await,
        Command::Backfill { action } => super::backfill::backfill(action).await,
        Command::Ping { config, subscriber } => {
            let config = match load(&config.config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match super::explain::ping(&config, &subscriber, true).await {
                Ok((report, delivered)) => {
                    println!("{report}");
                    if delivered {
                        0
                    } else {
                        1
                    }
                }
                Err(e) => {
                    eprintln!("walhook: {e}");
                    e.exit_code()
                }
            }
        }
        Command::Receive { listen, secrets } => {
            let parsed: Result<Vec<_>, _> = secrets
                .iter()
                .map(|s| crate::lanes::sign::Secret::parse(s))
                .collect();
            match parsed {
                Ok(s) => match super::receiver::serve(listen, s).await {
                    Ok(()) => 0,
                    Err(e) => {
                        eprintln!("walhook receive: {e}");
                        1
                    }
                },
                Err(e) => {
                    eprintln!("walhook receive: --secret: {e}");
                    2
                }
            }
        }
    }
}
