//! Config reloads on SIGHUP. The file is read and checked as at start; a config that
//! fails is refused with its problems and the running one stays.
//! - Only `[[events]]` rules changed: the publication gets any new table, the rules are
//!   compiled against the catalog, and the pipeline takes them between two
//!   transactions (`pipeline::Swap`). No event is lost or sent twice.
//! - Anything else changed (subscribers, source, state, admin): the pipeline stops as at
//!   shutdown (in-flight deliveries finish, watermarks are saved) and starts again
//!   in-process with the new config, from the confirmed LSN.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::check::{self, Reach};
use crate::admin::{LiveConfig, ReloadLog};
use crate::config::{fmt_problems, Config};
use crate::error::RunError;
use crate::lanes::target;
use crate::mapping::Mapper;
use crate::pg::PgTarget;
use crate::pipeline::Swap;

/// What a run needs to take reloads.
#[derive(Clone)]
pub struct Reloads {
    pub path: PathBuf,
    pub hangups: Arc<Notify>,
    /// The last reload and how it ended (the console shows it), kept across restarts.
    pub log: ReloadLog,
}

/// Set by `watch` when the run must stop and start again with this config.
pub type Restart = Arc<Mutex<Option<Config>>>;

/// Waits for SIGHUPs and applies each reload, until `cancel`.
pub async fn watch(
    reloads: Reloads,
    mut current: Config,
    live: LiveConfig,
    swaps: mpsc::Sender<Swap>,
    restart: Restart,
    run: CancellationToken,
    cancel: CancellationToken,
) {
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = reloads.hangups.notified() => {}
        }
        let log = &reloads.log;
        let Some(new) = read(&reloads.path, log).await else {
            continue;
        };
        if new == current {
            tracing::info!(path = %reloads.path.display(), "config reload: nothing changed");
            log.record(true, "nothing changed");
            continue;
        }
        if current.differs_in_rules_only(&new) {
            match compile(&new).await {
                Ok(mapper) => {
                    let config = Arc::new(new.clone());
                    let swap = Swap {
                        config: config.clone(),
                        mapper,
                    };
                    if swaps.send(swap).await.is_err() {
                        return;
                    }
                    live.set(config);
                    log.record(true, format!("rules changed: {} rules now", new.events.len()));
                    current = new;
                }
                Err(e) => refuse(log, &e.to_string()),
            }
            continue;
        }
        let problems = target::check_targets(&new).await.all();
        if !problems.is_empty() {
            refuse(log, &fmt_problems(&problems));
            continue;
        }
        tracing::info!(
            "config reload: subscribers or connection settings changed; restarting the pipeline in-process"
        );
        log.record(
            true,
            "subscribers or connection settings changed: the pipeline restarted in-process",
        );
        *restart.lock().unwrap_or_else(|p| p.into_inner()) = Some(new);
        run.cancel();
        return;
    }
}

fn refuse(log: &ReloadLog, why: &str) {
    tracing::error!(error = %why, "config reload refused; the running config stays");
    log.record(false, format!("refused, the running config stays: {why}"));
}

/// Reads the file and checks it; a file with problems is looked at online too (see
/// `app::check`), and every problem is logged.
async fn read(path: &Path, log: &ReloadLog) -> Option<Config> {
    let checked = match check::read(path) {
        Ok(c) => c,
        Err(e) => {
            refuse(log, &e.to_string());
            return None;
        }
    };
    if checked.problems.is_empty() {
        return Some(checked.config);
    }
    if let Some(refusal) = check::whole(&checked, Reach::Run).await {
        refuse(log, &refusal.one_line(Some(&path.display().to_string())));
    }
    None
}

/// Prepares the source for `config`'s rules (new tables join the publication) and
/// compiles them.
async fn compile(config: &Config) -> Result<Mapper, RunError> {
    let source =
        PgTarget::parse(&config.source.url).map_err(|e| RunError::Config(format!("source.url: {e}")))?;
    let catalog = source.connect("reload").await.map_err(|e| RunError::Connect {
        what: "source.url",
        source: e.into(),
    })?;
    let info = crate::source::setup::prepare(&catalog, config).await?;
    Mapper::new(config, &info.tables).map_err(RunError::Compile)
}
