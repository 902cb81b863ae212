//! Configuration: a TOML file, `WALHOOK_<SECTION>__<KEY>` environment overrides (see
//! `env.rs`) and `${VAR}` expansion in string values, deserialized into typed structs with
//! unknown keys refused.
//!
//! Loading never stops at the first problem: [`Config::validate`] returns every problem
//! with its key path (`subscribers[1].url`), so an operator fixes a file in one pass.
//! Every default is a named constant below and documented in `config/walhook.toml`.

mod delivery;
mod documents;
mod env;
mod expand;
mod table;
mod validate;

use std::collections::BTreeMap;
use std::fmt;
use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use delivery::{
    proxy_problem, BatchConfig, DeliveryConfig, SubscriberKind, SubscriberTls, MAX_BATCH_EVENTS,
};
pub use documents::{Document, DocumentSource, DEFAULT_DOCUMENT_WINDOW, MAX_SOURCES};
pub use expand::expand_vars;
pub use table::{quote_ident, TableName};

pub const DEFAULT_SLOT: &str = "walhook";
pub const DEFAULT_PUBLICATION: &str = "walhook";
pub const DEFAULT_ADMIN_LISTEN: &str = "127.0.0.1:9187";
pub const DEFAULT_STATUS_INTERVAL: Duration = Duration::from_secs(10);
pub const DEFAULT_RECEIVE_TIMEOUT: Duration = Duration::from_secs(30);
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;
/// The highest `max_in_flight` taken: each request in flight holds a connection (a file
/// descriptor; many systems allow a process 1,024), and a receiver that needs more in
/// parallel is better served by batching or a queue in front of it.
pub const MAX_MAX_IN_FLIGHT: usize = 1_000;
pub const DEFAULT_SPILL_AFTER: Duration = Duration::from_secs(10);
pub const DEFAULT_MAX_BUFFERED: usize = 10_000;
/// A template's rendered body at most: far above what templates make (chat messages, CDN
/// purges, API calls), and it bounds what a runaway template costs per request in flight.
pub const DEFAULT_MAX_BODY_BYTES: usize = 1024 * 1024;
/// The highest `max_body_bytes` taken.
pub const MAX_MAX_BODY_BYTES: usize = 64 * 1024 * 1024;
pub const DEFAULT_RETRY_AFTER_MAX: Duration = Duration::from_secs(3600);
pub const DEFAULT_DISABLE_AFTER: Duration = Duration::from_secs(5 * 24 * 3600);
pub const DEFAULT_DEAD_LETTER_RETENTION: Duration = Duration::from_secs(30 * 24 * 3600);
pub const DEFAULT_PRUNE_INTERVAL: Duration = Duration::from_secs(3600);
pub const DEFAULT_LEASE: Duration = Duration::from_secs(6);
pub const DEFAULT_WATERMARK_INTERVAL: Duration = Duration::from_millis(250);
pub const DEFAULT_SHUTDOWN_GRACE: Duration = Duration::from_secs(10);

/// One problem in a configuration, with the key path it concerns.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

impl Problem {
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Problem {
        Problem {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// `path: message`, or the message alone when it names its key path itself ("table x
/// named in events[0].table does not exist").
impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.message.contains(self.path.as_str()) {
            f.write_str(&self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid TOML or an override is malformed: {source}")]
    Syntax {
        path: String,
        #[source]
        source: config::ConfigError,
    },
    #[error("invalid config {path}: {}", fmt_problems(.problems))]
    Invalid { path: String, problems: Vec<Problem> },
}

/// Problems on one line, separated by "; ".
pub fn fmt_problems(problems: &[Problem]) -> String {
    problems
        .iter()
        .map(Problem::to_string)
        .collect::<Vec<_>>()
        .join("; ")
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// The longest a stop takes, from SIGTERM (or a reload that restarts the pipeline)
    /// to the exit: deliveries in flight, stopping tasks, the last watermark save and
    /// the lease release all fit in it (`shutdown::StopBudget`).
    #[serde(default = "default_shutdown_grace", with = "humantime_serde")]
    pub shutdown_grace: Duration,
    pub source: SourceConfig,
    #[serde(default)]
    pub state: StateConfig,
    #[serde(default)]
    pub admin: AdminConfig,
    #[serde(default)]
    pub backfill: BackfillConfig,
    /// Settings of every subscriber's requests (an egress proxy).
    #[serde(default)]
    pub delivery: DeliveryConfig,
    #[serde(default)]
    pub events: Vec<EventRule>,
    #[serde(default)]
    pub subscribers: Vec<Subscriber>,
    /// Queries keyed by an aggregate id, made due by changes of their source tables.
    #[serde(default)]
    pub documents: Vec<Document>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct SourceConfig {
    /// libpq-style URL or key=value string of the database to capture.
    pub url: String,
    #[serde(default = "default_slot")]
    pub slot: String,
    #[serde(default = "default_publication")]
    pub publication: String,
    /// Create the publication and slot when they are missing.
    #[serde(default = "default_true")]
    pub create: bool,
    /// How often a standby status update is sent even when nothing changed.
    #[serde(default = "default_status_interval", with = "humantime_serde")]
    pub status_interval: Duration,
    /// How long the replication connection may stay silent: after half of it walhook asks
    /// the server for a reply, after all of it the connection counts as dead and walhook
    /// reconnects. At least 1.5 times the server's `wal_sender_timeout` is used (see
    /// `pipeline::silence_limit`).
    #[serde(default = "default_receive_timeout", with = "humantime_serde")]
    pub receive_timeout: Duration,
    /// Create the slot as a failover slot (PostgreSQL 17 and later), so that a standby
    /// with `sync_replication_slots = on` keeps it through a failover. Default: on where
    /// the server supports it.
    pub failover_slot: Option<bool>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct StateConfig {
    /// Database holding the `walhook` schema; defaults to the source database.
    pub url: Option<String>,
    /// How often lane watermarks are persisted.
    #[serde(default = "default_watermark_interval", with = "humantime_serde")]
    pub watermark_interval: Duration,
    /// Dead letters older than this are deleted.
    #[serde(default = "default_dead_letter_retention", with = "humantime_serde")]
    pub dead_letter_retention: Duration,
    /// How often old dead letters are looked for (and once at start).
    #[serde(default = "default_prune_interval", with = "humantime_serde")]
    pub prune_interval: Duration,
    /// How long the leader's lease in the state database lasts without renewal: a
    /// standby takes over this long after the leader died.
    #[serde(default = "default_lease", with = "humantime_serde")]
    pub lease: Duration,
}

/// How backfills read the source (see `backfill`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct BackfillConfig {
    /// Rows per chunk: each chunk is one short statement, in key order.
    #[serde(default = "default_chunk_rows")]
    pub chunk_rows: usize,
    /// The most rows read per second; 0 for no limit.
    #[serde(default)]
    pub rows_per_second: u64,
}

impl Default for BackfillConfig {
    fn default() -> Self {
        Self {
            chunk_rows: default_chunk_rows(),
            rows_per_second: 0,
        }
    }
}

fn default_chunk_rows() -> usize {
    5_000
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// Address of the admin server (`/healthz`, `/readyz`, `/metrics`); "" disables it.
    #[serde(default = "default_admin_listen")]
    pub listen: String,
    /// Bearer token of the `/deliveries` API (and of `walhook deliveries`); without one
    /// that API is off.
    pub token: Option<String>,
}

// Not derived: without a [state] section the field defaults must hold too (a derived
// Default made watermark_interval 0, and watermarks were written in a tight loop).
impl Default for StateConfig {
    fn default() -> Self {
        Self {
            url: None,
            watermark_interval: default_watermark_interval(),
            dead_letter_retention: default_dead_letter_retention(),
            prune_interval: default_prune_interval(),
            lease: default_lease(),
        }
    }
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: default_admin_listen(),
            token: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Op {
    Insert,
    Update,
    Delete,
    Truncate,
    /// An update that clears a rule's `soft_delete` column: the row is back.
    Restore,
    /// A row as a backfill read it (never in `on`: a rule takes reads unless it says
    /// `backfill = false`).
    Read,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Insert => "insert",
            Op::Update => "update",
            Op::Delete => "delete",
            Op::Truncate => "truncate",
            Op::Restore => "restore",
            Op::Read => "read",
        }
    }

    /// Suffix of the default event name (`products.updated`).
    pub fn default_suffix(self) -> &'static str {
        match self {
            Op::Insert => "created",
            Op::Update => "updated",
            Op::Delete => "deleted",
            Op::Truncate => "truncated",
            Op::Restore => "restored",
            Op::Read => "read",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventRule {
    /// `schema.table`, exact and case-sensitive; schema defaults to `public`.
    pub table: String,
    /// Event type; default `<table>.created|updated|deleted|truncated`.
    pub name: Option<String>,
    /// Operations that fire this rule; default insert, update, delete.
    #[serde(default = "default_ops")]
    pub on: Vec<Op>,
    /// Ordering key columns; default the primary key.
    pub key: Option<Vec<String>>,
    /// Columns the payload carries; default all.
    pub columns: Option<Vec<String>>,
    /// Columns the payload leaves out (instead of `columns`).
    pub exclude: Option<Vec<String>>,
    /// Whether `data.old` is carried.
    #[serde(default = "default_true")]
    pub include_old: bool,
    /// Updates fire only when one of these columns changed (needs REPLICA IDENTITY FULL).
    pub changed: Option<Vec<String>>,
    /// Updates that change only these columns never fire (needs REPLICA IDENTITY FULL).
    pub ignore_changes: Option<Vec<String>>,
    /// Fires only when a column moves into a value (from a value, when given).
    pub transition: Option<TransitionRule>,
    /// A CEL expression over op, table, old, new, changed and meta; fires when true.
    pub when: Option<String>,
    /// Changes of one key within a window become one event.
    pub coalesce: Option<CoalesceRule>,
    /// A nullable column whose setting marks a row deleted (`deleted_at`): an update
    /// that sets it is reported as a delete, one that clears it as a restore.
    pub soft_delete: Option<String>,
    /// What becomes of other updates (and inserts) of a soft-deleted row.
    #[serde(default)]
    pub soft_deleted: SoftDeleted,
    /// Whether a backfill's rows make events of this rule (`op = "read"`).
    #[serde(default = "default_true")]
    pub backfill: bool,
}

/// Changes of a row whose `soft_delete` column is set, other than the one that set it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SoftDeleted {
    /// They make no event (the row is deleted, as far as subscribers know).
    #[default]
    Ignore,
    /// They make events as usual.
    Include,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CoalesceRule {
    /// The event goes out once no further change of its key came for this long.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// ... and at the latest this long after the window's first change.
    #[serde(default = "default_max_wait", with = "humantime_serde")]
    pub max_wait: Duration,
    /// Open windows of this rule at most; past it the oldest closes early.
    #[serde(default = "default_max_open")]
    pub max_open: usize,
}

fn default_max_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_max_open() -> usize {
    10_000
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TransitionRule {
    pub column: String,
    pub to: serde_json::Value,
    pub from: Option<serde_json::Value>,
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Subscriber {
    pub name: String,
    /// Webhooks (`http`, the default) or NATS JetStream (`nats`).
    #[serde(default)]
    pub kind: SubscriberKind,
    pub url: String,
    /// `kind = "nats"`: the subject each event is published to (a template).
    pub subject: Option<String>,
    /// `kind = "nats"`: a NATS credentials (.creds) file.
    pub credentials: Option<String>,
    /// Event type patterns: exact names, `price.*`, `*`.
    pub events: Vec<String>,
    /// One or more `whsec_<base64>` secrets, each optionally with an expiry; every
    /// unexpired one signs each request.
    pub secrets: Vec<SecretEntry>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_max_in_flight")]
    pub max_in_flight: usize,
    /// Attempts at most, with exponential retries (see `lanes::retry`).
    pub max_attempts: Option<u32>,
    #[serde(default)]
    pub allow_private_targets: bool,
    /// Mutual TLS to the receiver and a private CA for its certificate (PEM files).
    pub tls: Option<SubscriberTls>,
    /// An HTTP proxy for this subscriber's requests; "" sends them direct, whatever
    /// `[delivery] proxy` and the environment say.
    pub proxy: Option<String>,
    /// A lane whose oldest undelivered event is older than this spills to the state database.
    #[serde(default = "default_spill_after", with = "humantime_serde")]
    pub spill_after: Duration,
    /// A lane holding more undelivered events than this in memory spills.
    #[serde(default = "default_max_buffered")]
    pub max_buffered: usize,
    /// Exponential retries: the first delay, doubling per attempt up to `retry_max`.
    #[serde(default, with = "humantime_serde::option")]
    pub retry_initial: Option<Duration>,
    #[serde(default, with = "humantime_serde::option")]
    pub retry_max: Option<Duration>,
    /// Listed retries: the delays before the 2nd, 3rd, ... attempt (default: the
    /// Standard Webhooks schedule).
    pub retry_schedule: Option<Vec<String>>,
    /// The longest `Retry-After` honoured.
    #[serde(default = "default_retry_after_max", with = "humantime_serde")]
    pub retry_after_max: Duration,
    /// 4xx statuses that end an event at once (410 always does).
    #[serde(default)]
    pub final_statuses: Vec<u16>,
    /// The shape of each request body.
    #[serde(default)]
    pub format: BodyFormat,
    /// The body template (minijinja) when `format = "template"`.
    pub template: Option<String>,
    /// `format = "template"`: the rendered body's size limit in bytes (default
    /// `DEFAULT_MAX_BODY_BYTES`); past it the attempt fails.
    pub max_body_bytes: Option<usize>,
    /// Prefix of the CloudEvents `type` (`format = "cloudevents"`), e.g. `com.example.pim`.
    pub type_prefix: Option<String>,
    /// The request's Content-Type; default by format. A template with `format = "template"`.
    pub content_type: Option<String>,
    /// The HTTP method; default POST. A template with `format = "template"`.
    pub method: Option<String>,
    /// How int8 and numeric values are written.
    #[serde(default)]
    pub numbers: Numbers,
    /// Requests per second, minute or hour at most (`"50/s"`), over all of this
    /// subscriber's deliveries.
    pub rate_limit: Option<String>,
    /// With `batch`: events per second, minute or hour at most, counted over the
    /// events of every request.
    pub rate_limit_events: Option<String>,
    /// Many events per request (off by default): see `BatchConfig`.
    pub batch: Option<BatchConfig>,
    /// Whether events of one key reach this subscriber in order.
    #[serde(default)]
    pub ordering: EventOrder,
    /// Circuit breaker: a subscriber failing this long without a success is disabled.
    #[serde(default = "default_disable_after", with = "humantime_serde")]
    pub disable_after: Duration,
    /// ... or after this many failed attempts in a row (none: no such limit).
    pub disable_after_attempts: Option<u32>,
    /// A subscriber the state database has not seen before gets a backfill of every
    /// table its rules cover, while its live events flow.
    #[serde(default)]
    pub initial_backfill: bool,
}

/// How a subscriber's events are ordered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventOrder {
    /// Events of one ordering key are delivered one at a time, in commit order.
    #[default]
    PerKey,
    /// Every event on its own: in parallel up to `max_in_flight`, in any order.
    None,
}

/// A signing secret: `"whsec_..."`, or `{ secret = "whsec_...", expires = "2026-12-01T00:00:00Z" }`
/// for one being rotated out.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum SecretEntry {
    Plain(String),
    Expiring(ExpiringSecret),
}

#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ExpiringSecret {
    pub secret: String,
    /// RFC 3339 time after which it no longer signs.
    pub expires: String,
}

impl SecretEntry {
    /// The key path of its secret text in subscriber `i`'s entry `j`.
    pub fn path(&self, i: usize, j: usize) -> String {
        match self {
            SecretEntry::Plain(_) => format!("subscribers[{i}].secrets[{j}]"),
            SecretEntry::Expiring(_) => format!("subscribers[{i}].secrets[{j}].secret"),
        }
    }

    pub fn secret(&self) -> &str {
        match self {
            SecretEntry::Plain(s) => s,
            SecretEntry::Expiring(e) => &e.secret,
        }
    }

    /// When it stops signing; `Err` names what is wrong with the time given.
    pub fn expires(&self) -> Result<Option<std::time::SystemTime>, String> {
        match self {
            SecretEntry::Plain(_) => Ok(None),
            SecretEntry::Expiring(e) => humantime::parse_rfc3339_weak(&e.expires)
                .map(Some)
                .map_err(|err| {
                    format!(
                        "{:?} is not a time ({err}): write it like \"2026-12-01T00:00:00Z\" (UTC)",
                        e.expires
                    )
                }),
        }
    }
}

/// A subscriber's body format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    /// The walhook body (README "Event body").
    #[default]
    Standard,
    /// CloudEvents 1.0, structured JSON.
    CloudEvents,
    /// A minijinja template renders the body from the standard body's fields.
    Template,
}

/// How int8 and numeric column values are written in bodies.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Numbers {
    /// JSON numbers carrying every digit.
    #[default]
    Exact,
    /// JSON strings of the digits, for receivers whose JSON numbers are doubles.
    String,
}

fn default_slot() -> String {
    DEFAULT_SLOT.into()
}
fn default_publication() -> String {
    DEFAULT_PUBLICATION.into()
}
fn default_true() -> bool {
    true
}
fn default_status_interval() -> Duration {
    DEFAULT_STATUS_INTERVAL
}
fn default_receive_timeout() -> Duration {
    DEFAULT_RECEIVE_TIMEOUT
}
fn default_watermark_interval() -> Duration {
    DEFAULT_WATERMARK_INTERVAL
}
fn default_admin_listen() -> String {
    DEFAULT_ADMIN_LISTEN.into()
}
fn default_ops() -> Vec<Op> {
    vec![Op::Insert, Op::Update, Op::Delete]
}
fn default_timeout() -> Duration {
    DEFAULT_TIMEOUT
}
fn default_max_in_flight() -> usize {
    DEFAULT_MAX_IN_FLIGHT
}
fn default_spill_after() -> Duration {
    DEFAULT_SPILL_AFTER
}
fn default_max_buffered() -> usize {
    DEFAULT_MAX_BUFFERED
}
fn default_dead_letter_retention() -> Duration {
    DEFAULT_DEAD_LETTER_RETENTION
}
fn default_prune_interval() -> Duration {
    DEFAULT_PRUNE_INTERVAL
}
fn default_lease() -> Duration {
    DEFAULT_LEASE
}
fn default_shutdown_grace() -> Duration {
    DEFAULT_SHUTDOWN_GRACE
}
fn default_disable_after() -> Duration {
    DEFAULT_DISABLE_AFTER
}
fn default_retry_after_max() -> Duration {
    DEFAULT_RETRY_AFTER_MAX
}

/// A config as read: the typed config, the problems of its own rules (`Config::validate`),
/// and warnings about environment variables that look like mistyped overrides. The
/// stages' checks of their parts come on top (see `crate::app::check`).
#[derive(Debug)]
pub struct Parsed {
    pub config: Config,
    pub problems: Vec<Problem>,
    pub warnings: Vec<String>,
}

impl ConfigError {
    /// The problems of config `origin`, as one error.
    pub fn invalid(origin: &str, problems: Vec<Problem>) -> ConfigError {
        ConfigError::Invalid {
            path: origin.to_string(),
            problems,
        }
    }
}

impl Config {
    /// Reads, expands, overrides from the environment, deserializes and validates the
    /// config's own rules. Errors only when there is no typed config to check further.
    pub fn read(path: &Path) -> Result<Parsed, ConfigError> {
        let display = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: display.clone(),
            source,
        })?;
        Self::from_parts(
            &text,
            &display,
            &|name| std::env::var(name).ok(),
            std::env::vars_os(),
        )
    }

    /// Parses config text. `env` resolves `${VAR}` references and `WALHOOK_` overrides
    /// are read from the process environment.
    pub fn parse(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Parsed, ConfigError> {
        Self::from_parts(text, origin, env, std::env::vars_os())
    }

    /// Parses config text with the environment `vars` (for `WALHOOK_<SECTION>__<KEY>`
    /// overrides); `env` resolves `${VAR}` references. Also returns the warnings about
    /// variables that look like mistyped overrides and that the text does not reference.
    fn from_parts<I>(
        text: &str,
        origin: &str,
        env: &dyn Fn(&str) -> Option<String>,
        vars: I,
    ) -> Result<Parsed, ConfigError>
    where
        I: IntoIterator<Item = (std::ffi::OsString, std::ffi::OsString)>,
    {
        let syntax = |source| ConfigError::Syntax {
            path: origin.to_string(),
            source,
        };
        let overrides = env::Overrides::from_vars(vars);
        if !overrides.problems.is_empty() {
            return Err(ConfigError::invalid(origin, overrides.problems));
        }
        let values: config::Map<String, String> = overrides.values.into_iter().collect();
        let raw = config::Config::builder()
            .add_source(config::File::from_str(text, config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("WALHOOK")
                    .prefix_separator("_")
                    .separator("__")
                    .try_parsing(true)
                    .source(Some(values)),
            )
            .build()
            .map_err(syntax)?;
        let mut tree: serde_json::Value = raw.try_deserialize().map_err(syntax)?;
        let mut problems = Vec::new();
        // The variables the text reads as ${VAR}: those are used, not mistyped.
        let referenced = std::cell::RefCell::new(std::collections::HashSet::new());
        let recording = |name: &str| {
            referenced.borrow_mut().insert(name.to_string());
            env(name)
        };
        expand::expand_tree(&mut tree, "", &recording, &mut problems);
        let referenced = referenced.into_inner();
        let warnings = overrides
            .near_misses
            .into_iter()
            .filter(|(name, _)| !referenced.contains(name))
            .map(|(_, warning)| warning)
            .collect();
        let config: Config = match serde_path_to_error::deserialize(tree) {
            Ok(c) => c,
            Err(e) => {
                let path = e.path().to_string();
                problems.push(Problem {
                    path: if path == "." { "(top)".into() } else { path },
                    message: e.into_inner().to_string(),
                });
                return Err(ConfigError::invalid(origin, problems));
            }
        };
        problems.extend(config.validate());
        Ok(Parsed {
            config,
            problems,
            warnings,
        })
    }

    /// Whether `other` differs from this config in its `[[events]]` rules only (what a
    /// reload applies without restarting the pipeline).
    pub fn differs_in_rules_only(&self, other: &Config) -> bool {
        let mut same_rules = other.clone();
        same_rules.events = self.events.clone();
        same_rules == *self
    }

    /// The state database URL (the source when not set).
    pub fn state_url(&self) -> &str {
        self.state.url.as_deref().unwrap_or(&self.source.url)
    }
}

fn valid_identifier(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
}

/// Whether `s` is a valid event or subscriber name: letters, digits, '.', '_' or '-'.
pub fn valid_event_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 200
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

#[cfg(test)]
mod tests;
