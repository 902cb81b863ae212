//! Wiring: checks, state, lanes, admin server and pipeline, started in order and shut
//! down in reverse on cancellation.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::check::{self, Reach, Refusal};
use super::reload::{Reloads, Restart};
use super::shutdown::{StopBudget, StopClock};
use crate::admin::{self, Admin};
use crate::config::Config;
pub use crate::error::RunError;
use crate::event::{Mark, Pos};
use crate::lanes::{fenced, Lane};
use crate::mapping::Mapper;
use crate::metrics::Metrics;
use crate::pg::PgTarget;
use crate::pipeline::Pipeline;
use crate::progress::{frontier_pos, Progress};
use crate::state::lease::Lease;
use crate::state::State;

impl From<Refusal> for RunError {
    fn from(refusal: Refusal) -> Self {
        let message = refusal.message(None);
        match refusal.exit_code() {
            2 => RunError::Config(message),
            _ => RunError::Prerequisite(message),
        }
    }
}

/// Runs until `cancel`, taking config reloads on SIGHUP when `reloads` is given (see
/// `reload`): a reload that changes more than rules stops the run and starts it again.
pub async fn serve(
    mut config: Config,
    no_delivery: bool,
    cancel: CancellationToken,
    reloads: Option<Reloads>,
) -> Result<(), RunError> {
    // Set once this process lost its lease: from then on, what stops a start (the state
    // database or the source not answering yet) is waited out, so that it stands by
    // again instead of exiting.
    let mut fenced = false;
    let mut backoff = RESTANDBY_MIN;
    loop {
        let restart: Restart = Default::default();
        let result = run(
            config.clone(),
            no_delivery,
            cancel.clone(),
            reloads.clone(),
            restart.clone(),
        )
        .await;
        if cancel.is_cancelled() {
            return result.or_else(fenced_ok);
        }
        let next = restart.lock().unwrap_or_else(|p| p.into_inner()).take();
        match result {
            Ok(()) => match next {
                Some(new) => config = new,
                None => return Ok(()),
            },
            // Stand by again, so that this process can take over once more.
            Err(RunError::Fenced) => {
                fenced = true;
                backoff = RESTANDBY_MIN;
                if let Some(new) = next {
                    config = new;
                }
            }
            Err(e) if fenced && e.class().waited_out_after_fencing() => {
                tracing::warn!(error = %e, retry_in = ?backoff, "cannot stand by again yet; retrying");
                tokio::select! {
                    _ = cancel.cancelled() => return Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
            Err(e) => return Err(e),
        }
    }
}

/// The first wait before standing by again after a failed start.
const RESTANDBY_MIN: Duration = Duration::from_secs(1);

/// Runs until `cancel` or a reload that needs a restart (then `restart` holds its config).
/// With `no_delivery`, events are mapped and dropped (no lanes).
pub async fn run(
    config: Config,
    no_delivery: bool,
    cancel: CancellationToken,
    reloads: Option<Reloads>,
    restart: Restart,
) -> Result<(), RunError> {
    let cancel = cancel.child_token();
    let config = Arc::new(config);
    let source =
        PgTarget::parse(&config.source.url).map_err(|e| RunError::Config(format!("source.url: {e}")))?;
    // Everything wrong at once, before anything is set up (`app::check`).
    let findings = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        f = check::look(&config, Reach::Run) => f,
    };
    if let Some(refusal) = findings.refusal(&[]) {
        findings.warn_unchecked();
        return Err(refusal.into());
    }
    let prelude = async {
        if let Some(why) = findings.unreachable {
            return Err(RunError::Prerequisite(why));
        }
        let catalog = source.connect("catalog").await.map_err(|e| RunError::Connect {
            what: "source.url",
            source: e.into(),
        })?;
        let info = crate::source::setup::prepare(&catalog, &config).await?;
        let state = State::connect(config.state_url(), &config.source.slot)
            .await
            .map_err(RunError::StateStart)?;
        Ok::<_, RunError>((catalog, info, state))
    };
    // Connecting waits as long as the network does; a stop must not.
    let (catalog, info, state) = tokio::select! {
        _ = cancel.cancelled() => return Ok(()),
        r = prelude => r?,
    };
    let mapper = Mapper::new(&config, &info.tables).map_err(RunError::Compile)?;
    let state = Arc::new(state);
    let metrics = Arc::new(Metrics::default());
    let progress = Arc::new(Progress::default());
    let tracker = TaskTracker::new();
    // Tells the run's tasks to stop; `abandon` drops them where they wait (when the
    // lease is lost, or a stop ran out of its grace).
    let lanes_cancel = CancellationToken::new();
    let abandon = progress.fence.child_token();
    let clock = Arc::new(StopClock::new(config.shutdown_grace));
    let lane_list = Arc::new(std::sync::OnceLock::new());
    let live = crate::admin::LiveConfig::new(config.clone());
    if !config.admin.listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(&config.admin.listen)
            .await
            .map_err(|e| {
                RunError::Config(format!(
                    "admin.listen: cannot listen on {}: {e}",
                    config.admin.listen
                ))
            })?;
        tracing::info!(listen = %config.admin.listen, "admin server up");
        let admin = Admin {
            metrics: metrics.clone(),
            lanes: lane_list.clone(),
            state: state.clone(),
            progress: progress.clone(),
            token: config.admin.token.clone(),
            config: live.clone(),
            reloads: reloads.as_ref().map(|r| r.log.clone()),
            history: Default::default(),
        };
        tracker.spawn(fenced(
            &abandon,
            admin::serve(listener, admin, lanes_cancel.clone()),
        ));
    }

    // Only the holder of the slot's lease goes on; others stand by here.
    let lease = Lease::acquire(
        config.state_url(),
        &config.source.slot,
        config.state.lease,
        &cancel,
    )
    .await;
    let Some(lease) = lease else {
        stop_tasks(&tracker, &lanes_cancel, &abandon, clock.begin()).await;
        return Ok(());
    };
    let lease_stop = CancellationToken::new();
    // The one task outside `tracker`: it holds the lease while the tracker's tasks stop
    // (a lane still delivering must not outlive its lease), so it ends after them, by
    // its own token, and is awaited (or aborted) below.
    let keeper = tokio::spawn(lease.keep(progress.clone(), metrics.clone(), lease_stop.clone()));
    let result = lead(LeadArgs {
        config,
        no_delivery,
        cancel,
        reloads,
        restart,
        source,
        catalog,
        mapper,
        types: info.types,
        state,
        metrics,
        progress: progress.clone(),
        tracker: tracker.clone(),
        lanes_cancel: lanes_cancel.clone(),
        abandon: abandon.clone(),
        clock: clock.clone(),
        lane_list,
        live,
    })
    .await;
    // Whichever way `lead` ended (a failed start included), nothing of it runs on.
    let budget = clock.begin();
    stop_tasks(&tracker, &lanes_cancel, &abandon, budget).await;
    if progress.fence.is_cancelled() {
        keeper.abort();
        return Err(RunError::Fenced);
    }
    // The lease is given up within the grace too; else a standby takes over when it
    // expires.
    lease_stop.cancel();
    let mut keeper = keeper;
    if tokio::time::timeout_at(budget.end(), &mut keeper).await.is_err() {
        keeper.abort();
        tracing::warn!(
            "the lease was not released within shutdown_grace; a standby takes over when it expires"
        );
    }
    result
}

/// What `lead` runs with.
struct LeadArgs {
    config: Arc<Config>,
    no_delivery: bool,
    cancel: CancellationToken,
    reloads: Option<Reloads>,
    restart: Restart,
    source: PgTarget,
    catalog: tokio_postgres::Client,
    mapper: Mapper,
    types: crate::decode::TypeRegistry,
    state: Arc<State>,
    metrics: Arc<Metrics>,
    progress: Arc<Progress>,
    tracker: TaskTracker,
    lanes_cancel: CancellationToken,
    abandon: CancellationToken,
    clock: Arc<StopClock>,
    lane_list: Arc<std::sync::OnceLock<Vec<Arc<Lane>>>>,
    live: admin::LiveConfig,
}

/// Runs as the leader: lanes, pipeline, and at the end the shutdown (unless fenced:
/// then everything stops at once and nothing more is written).
async fn lead(args: LeadArgs) -> Result<(), RunError> {
    let LeadArgs {
        config,
        no_delivery,
        cancel,
        reloads,
        restart,
        source,
        catalog,
        mapper,
        types,
        state,
        metrics,
        progress,
        tracker,
        lanes_cancel,
        abandon,
        clock,
        lane_list,
        live,
    } = args;
    let fence = progress.fence.clone();
    let marks = state.load_watermarks().await?;
    let mut lanes = Vec::new();
    if no_delivery {
        tracing::warn!("--no-delivery: events are decoded and mapped, then dropped; nothing is sent");
    }
    let database = crate::pg::database_name(&config.source.url);
    let ctx = crate::lanes::deliver::Context {
        database: &database,
        delivery: &config.delivery,
        env: &crate::lanes::deliver::process_env,
    };
    let stops = state.stops().await?;
    let names: Vec<&str> = config.subscribers.iter().map(|s| s.name.as_str()).collect();
    let spilled = match no_delivery {
        true => Default::default(),
        false => state.spilled_lanes(&names).await?,
    };
    for (i, sub) in config.subscribers.iter().enumerate().filter(|_| !no_delivery) {
        let backlog = spilled.contains(&sub.name);
        let mark = marks.get(&sub.name).cloned().unwrap_or_default();
        let lane = Lane::new(sub, i, &ctx, state.clone(), progress.clone(), mark, backlog)
            .map_err(RunError::Compile)?;
        if backlog {
            tracing::info!(subscriber = %sub.name, "spill log has events: lane resumes in spill mode");
        }
        if let Some(stop) = stops.get(&sub.name) {
            lane.restore_stop(stop.clone());
        }
        lane.spawn(&tracker, &lanes_cancel, &abandon);
        lanes.push(lane);
    }

    let _ = lane_list.set(lanes.clone());
    tracker.spawn(fenced(
        &abandon,
        prune(
            state.clone(),
            config.state.dead_letter_retention,
            config.state.prune_interval,
            lanes_cancel.clone(),
        ),
    ));
    tracker.spawn(fenced(
        &abandon,
        watermarks(
            lanes.clone(),
            state.clone(),
            progress.clone(),
            config.state.watermark_interval,
            lanes_cancel.clone(),
        ),
    ));

    tracker.spawn(fenced(
        &abandon,
        crate::pipeline::lag_watch(
            source.clone(),
            config.source.slot.clone(),
            metrics.clone(),
            lanes_cancel.clone(),
        ),
    ));
    if let Some(every) = crate::pipeline::tick_interval(&config) {
        tracker.spawn(fenced(
            &abandon,
            crate::pipeline::ticker(source.clone(), progress.clone(), every, lanes_cancel.clone()),
        ));
    }
    let (swap_tx, swap_rx) = tokio::sync::mpsc::channel(1);
    if let Some(reloads) = reloads {
        tracker.spawn(fenced(
            &abandon,
            crate::app::reload::watch(
                reloads,
                (*config).clone(),
                live,
                swap_tx,
                restart,
                cancel.clone(),
                lanes_cancel.clone(),
            ),
        ));
    }
    let board = Arc::new(crate::backfill::Board::new());
    if !no_delivery {
        initial_backfills(&config, &state, &marks).await;
        tracker.spawn(fenced(
            &abandon,
            crate::backfill::Runner {
                config: config.clone(),
                source: source.clone(),
                state: state.clone(),
                board: board.clone(),
                lanes: lanes.clone(),
                progress: progress.clone(),
                metrics: metrics.clone(),
            }
            .run(lanes_cancel.clone()),
        ));
    }
    let pipeline = Pipeline::new(
        config.clone(),
        source,
        catalog,
        mapper,
        lanes.clone(),
        types,
        metrics,
        progress.clone(),
    )
    .with_swaps(swap_rx)
    .with_board(board);
    let streaming = pipeline.run(cancel.clone());
    tokio::pin!(streaming);
    let result = tokio::select! {
        r = &mut streaming => r,
        _ = fence.cancelled() => Ok(()),
        _ = cancel.cancelled() => {
            // The stop begins: from here on everything fits in shutdown_grace. The
            // stream closes first (a last status update and a goodbye).
            let budget = clock.begin();
            tokio::select! {
                r = tokio::time::timeout_at(budget.deliveries(), &mut streaming) => r.unwrap_or(Ok(())),
                _ = fence.cancelled() => Ok(()),
            }
        }
    };
    let budget = clock.begin();
    if fence.is_cancelled() {
        // Lanes, watermarks and pruning have stopped where they were; the slot's
        // connection is closed. Nothing more is written: the next leader resumes from
        // the slot's confirmed LSN and the spill log.
        return Err(RunError::Fenced);
    }

    if progress.lapsed.load(std::sync::atomic::Ordering::SeqCst) {
        // The slot is closed and the lease is not known to be ours: a standby may take
        // over at any moment, so nothing more goes out.
        tracing::warn!("shutting down with the lease lapsed: in-flight deliveries are abandoned");
        abandon.cancel();
    } else {
        let left = budget
            .deliveries()
            .saturating_duration_since(tokio::time::Instant::now());
        tracing::info!(for_at_most = ?left, "shutting down: letting in-flight deliveries finish");
        tokio::select! {
            _ = tokio::time::sleep_until(budget.deliveries()) => {}
            _ = wait_idle(&lanes) => {}
            _ = fence.cancelled() => {}
        }
    }
    stop_tasks(&tracker, &lanes_cancel, &abandon, budget).await;
    if fence.is_cancelled() || progress.lapsed.load(std::sync::atomic::Ordering::SeqCst) {
        return Err(RunError::Fenced);
    }
    if tokio::time::timeout_at(budget.save(), save_marks(&lanes, &state, &progress))
        .await
        .is_err()
    {
        tracing::warn!("cannot save lane watermarks in time; the next start re-sends a little more");
    }
    Ok(result?)
}

/// Tells the tasks of a run to stop and waits for them until `budget.abandon()`; the
/// ones still busy then (a delivery waiting for an answer) are dropped where they wait.
async fn stop_tasks(
    tracker: &TaskTracker,
    cancel: &CancellationToken,
    abandon: &CancellationToken,
    budget: StopBudget,
) {
    cancel.cancel();
    tracker.close();
    if tokio::time::timeout_at(budget.abandon(), tracker.wait())
        .await
        .is_ok()
    {
        return;
    }
    tracing::warn!("some tasks did not stop within shutdown_grace; abandoning them (deliveries in flight are sent again after the next start)");
    abandon.cancel();
    // Dropping them takes no time; only a task that does not yield could hold on.
    if tokio::time::timeout_at(budget.save(), tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!("some tasks did not stop after they were abandoned");
    }
}

async fn wait_idle(lanes: &[Arc<Lane>]) {
    while lanes.iter().any(|l| l.backlog() > 0) {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn save_marks(lanes: &[Arc<Lane>], state: &State, progress: &Progress) {
    let frontier = frontier_pos(progress);
    let marks: Vec<_> = lanes.iter().map(|l| (l.name.clone(), l.mark(frontier))).collect();
    if let Err(e) = state.save_watermarks(&marks).await {
        tracing::warn!(error = %e, "cannot save lane watermarks");
    }
}

/// Persists every lane's mark (its watermark, and which later events are done) when it
/// moved, at most every `interval`.
async fn watermarks(
    lanes: Vec<Arc<Lane>>,
    state: Arc<State>,
    progress: Arc<Progress>,
    interval: Duration,
    cancel: CancellationToken,
) {
    let mut last = Vec::new();
    let mut last_own = Vec::new();
    let mut saved_at = Instant::now();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(interval) => {}
        }
        let frontier = frontier_pos(&progress);
        let marks: Vec<_> = lanes.iter().map(|l| (l.name.clone(), l.mark(frontier))).collect();
        // What the lanes' own events say, without the stream's frontier.
        let own: Vec<Mark> = lanes.iter().map(|l| l.mark(Pos::ZERO)).collect();
        if marks == last {
            continue;
        }
        // A mark moved only by the frontier (WAL without events for the lane) is saved
        // now and then: each save is WAL too, and when the state database is the source
        // database, saving every move would keep an idle database writing forever.
        if own == last_own && saved_at.elapsed() < FRONTIER_SAVE_EVERY {
            continue;
        }
        match state.save_watermarks(&marks).await {
            Ok(()) => {
                last = marks;
                last_own = own;
                saved_at = Instant::now();
            }
            Err(e) => tracing::warn!(error = %e, "cannot save lane watermarks; will retry"),
        }
    }
}

/// How often lane watermarks moved only by the stream's frontier are saved.
const FRONTIER_SAVE_EVERY: Duration = Duration::from_secs(30);

/// Deletes dead letters older than `retention`, at start and every `every`.
async fn prune(state: Arc<State>, retention: Duration, every: Duration, cancel: CancellationToken) {
    loop {
        match state.prune_dead(retention).await {
            Ok(0) => {}
            Ok(n) => tracing::info!(deleted = n, retention = %humantime::format_duration(retention),
                "old dead letters deleted (state.dead_letter_retention)"),
            Err(e) => tracing::warn!(error = %e, "cannot delete old dead letters; will retry"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

/// A run that was fenced and then cancelled ends well.
fn fenced_ok(e: RunError) -> Result<(), RunError> {
    match e {
        RunError::Fenced => Ok(()),
        e => Err(e),
    }
}

/// Asks for the backfill of every subscriber with `initial_backfill` that the state
/// database has not seen (no saved mark, and no initial backfill before): the rows of
/// every table its rules cover, then every document it receives.
async fn initial_backfills(
    config: &Config,
    state: &State,
    marks: &std::collections::HashMap<String, crate::event::Mark>,
) {
    for sub in config.subscribers.iter().filter(|s| s.initial_backfill) {
        if marks.contains_key(&sub.name) {
            continue;
        }
        let asked = async {
            if state.had_initial_backfill(&sub.name).await? {
                return Ok(Vec::new());
            }
            let mut asked = Vec::new();
            let tables = crate::mapping::tables_for(config, &sub.name);
            let documents = (config.documents.iter()).filter(|d| {
                sub.events
                    .iter()
                    .any(|p| crate::mapping::pattern_matches(p, &d.name))
            });
            let mut requests: Vec<(Vec<String>, Option<&str>)> = Vec::new();
            if !tables.is_empty() {
                requests.push((tables, None));
            }
            for d in documents {
                if let Ok(tables) = crate::backfill::document_tables(config, &sub.name, &d.name) {
                    requests.push((tables, Some(d.name.as_str())));
                }
            }
            for (tables, document) in &requests {
                let req = crate::state::backfills::Request {
                    subscriber: &sub.name,
                    tables,
                    where_sql: None,
                    initial: true,
                    document: *document,
                };
                asked.push(state.create_backfill(&req).await?);
            }
            Ok::<_, crate::state::StateError>(asked)
        };
        match asked.await {
            Ok(ids) if !ids.is_empty() => tracing::info!(subscriber = %sub.name, backfills = ?ids,
                "new subscriber with initial_backfill: its backfill is asked for"),
            Ok(_) => {}
            Err(e) => tracing::warn!(subscriber = %sub.name, error = %e,
                "cannot ask for the initial backfill; it is asked for at the next start"),
        }
    }
}
