//! Config reloads on SIGHUP. The file is read and checked as at start; a config that
//! fails is refused with its problems and the running one stays.
//! - Only `[[events]]` rules changed: the publication gets any new table, the rules are
//!   compiled against the catalog, and the pipeline takes them between two
//!   transactions (`pipeline::Swap`). No event is lost or sent twice.
//! - Anything else changed (subscribers, source, state, admin): the pipeline stops as at
//!   shutdown (in-flight deliveries finish, watermarks are saved) and starts again
//!   in-process with the new config, from the confirmed LSN.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::lanes::target;
use crate::mapping::Mapper;
use crate::pg::connect_message;
use crate::pg::PgTarget;
use crate::pipeline::Swap;

/// What a run needs to take reloads.
#[derive(Clone)]
pub struct Reloads {
    pub path: PathBuf,
    pub hangups: Arc<Notify>,
}

/// Set by `watch` when the run must stop and start again with this config.
pub type Restart = Arc<Mutex<Option<Config>>>;

/// Waits for SIGHUPs and applies each reload, until `cancel`.
pub async fn watch(
    reloads: Reloads,
    mut current: Config,
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
        let new = match crate::checks::load(&reloads.path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!(error = %e, "config reload refused; the running config stays");
                continue;
            }
        };
        if new == current {
            tracing::info!(path = %reloads.path.display(), "config reload: nothing changed");
            continue;
        }
        if current.differs_in_rules_only(&new) {
            match compile(&new).await {
                Ok(mapper) => {
                    let swap = Swap {
                        config: Arc::new(new.clone()),
                        mapper,
                    };
                    if swaps.send(swap).await.is_err() {
                        return;
                    }
                    current = new;
                }
                Err(e) => tracing::error!(error = %e, "config reload refused; the running config stays"),
            }
            continue;
        }
        let problems = target::check_targets(&new).await;
        if !problems.is_empty() {
            tracing::error!(error = %problems.join("; "), "config reload refused; the running config stays");
            continue;
        }
        tracing::info!(
            "config reload: subscribers or connection settings changed; restarting the pipeline in-process"
        );
        *restart.lock().unwrap_or_else(|p| p.into_inner()) = Some(new);
        run.cancel();
        return;
    }
}

/// Prepares the source for `config`'s rules (new tables join the publication) and
/// compiles them.
async fn compile(config: &Config) -> Result<Mapper, String> {
    let source = PgTarget::parse(&config.source.url).map_err(|e| format!("source.url: {e}"))?;
    let catalog = source
        .connect("reload")
        .await
        .map_err(|e| connect_message("source.url", &e))?;
    let info = crate::source::setup::prepare(&catalog, config)
        .await
        .map_err(|e| e.to_string())?;
    Mapper::new(config, &info.tables)
}
