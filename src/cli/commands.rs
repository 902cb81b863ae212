//! The commands besides the admin clients: check, run, explain, ping and receive, each
//! giving its exit code (0 ok, 1 runtime failure, 2 bad config or input, 3 missing
//! prerequisite).

use tokio_util::sync::CancellationToken;

use super::Command;
use crate::config::Config;

/// Loads a config file, or prints why not and gives the exit code (2).
pub(super) fn load(path: &std::path::Path) -> Result<Config, i32> {
    crate::checks::load(path).map_err(|e| {
        eprintln!("walhook: {e}");
        2
    })
}

/// Runs one command to its end; returns the process's exit code.
pub async fn run(command: Command) -> i32 {
    match command {
        Command::Check { config } => match load(&config) {
            Ok(_) => {
                println!("{}: ok", config.display());
                0
            }
            Err(code) => code,
        },
        Command::Run { config, no_delivery } => {
            let path = config;
            let config = match load(&path) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let cancel = CancellationToken::new();
            crate::shutdown::on_signals(cancel.clone());
            let reloads = crate::reload::Reloads {
                path,
                hangups: crate::shutdown::on_hangup(),
            };
            match crate::run::serve(config, no_delivery, cancel, Some(reloads)).await {
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
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            let question = crate::explain::Question {
                table: &table,
                op: &op,
                old: old.as_deref(),
                new: new.as_deref(),
            };
            match crate::explain::explain(&config, &question).await {
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
        Command::Ping { config, subscriber } => {
            let config = match load(&config) {
                Ok(c) => c,
                Err(code) => return code,
            };
            match crate::explain::ping(&config, &subscriber).await {
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
                Ok(s) => match crate::receiver::serve(listen, s).await {
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
