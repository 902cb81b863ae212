//! Command line: `walhook run`, `walhook check`, `walhook explain`, `walhook ping`,
//! `walhook receive`, and the admin clients `walhook deliveries` and `walhook subscribers`.

mod admin;
mod backfill;
pub mod commands;
pub mod explain;
pub mod receiver;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand, ValueEnum};

#[derive(Debug, Parser)]
#[command(
    name = "walhook",
    version,
    about = "PostgreSQL logical replication in, signed webhooks out"
)]
pub struct Cli {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text, global = true, env = "WALHOOK_LOG_FORMAT")]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Capture changes and deliver webhooks until SIGTERM or SIGINT.
    Run {
        #[command(flatten)]
        config: ConfigArg,
        /// Decode and map, but deliver nothing (for benchmarks and diagnosis): events are
        /// dropped after mapping and the slot advances as if they were delivered, so use a
        /// slot of its own (source.slot), never the one your subscribers depend on.
        #[arg(long)]
        no_delivery: bool,
    },
    /// Check a config and everything it needs, read-only, and print one line per check
    /// (ok, warning or problem) with its fix: the file itself, the source server
    /// (wal_level, slots, WAL senders), walhook's role and its privileges, the
    /// publication, the slot, every rule against its table, the state database, and the
    /// subscribers' addresses. Exit code 0 when nothing stops a start, 2 for a mistake in
    /// the config, 3 when something the config needs is missing.
    Check {
        #[command(flatten)]
        config: ConfigArg,
        /// Check the file alone: connect to no database and resolve no host name.
        #[arg(long)]
        offline: bool,
        /// Print one idempotent SQL script that fixes everything fixable, grouped by the
        /// role that must run each part, then what must be restarted.
        #[arg(long, conflicts_with = "json")]
        sql: bool,
        /// Print the findings as JSON (for automation).
        #[arg(long)]
        json: bool,
        /// Also send each subscriber a signed `walhook.ping` event and show its answer
        /// and latency.
        #[arg(long, conflicts_with = "offline")]
        ping: bool,
    },
    /// Dry run: print the events one row change would make and, for each subscriber that
    /// wants them, the exact request (method, headers, body). Sends nothing.
    Explain {
        #[command(flatten)]
        config: ConfigArg,
        /// The table, "schema.table" ("products" is "public.products").
        #[arg(long)]
        table: String,
        /// insert, update, delete or truncate.
        #[arg(long, default_value = "update")]
        op: String,
        /// The old row as a JSON object, e.g. '{"id": 1, "status": "draft"}'.
        #[arg(long)]
        old: Option<String>,
        /// The new row as a JSON object.
        #[arg(long)]
        new: Option<String>,
    },
    /// Send one signed `walhook.ping` event to a subscriber and print the outcome and
    /// latency (exit 0 on a 2xx answer, 1 otherwise).
    Ping {
        #[command(flatten)]
        config: ConfigArg,
        /// The subscriber's name.
        #[arg(long)]
        subscriber: String,
    },
    /// Dead and pending deliveries of a running walhook (through its admin API, with
    /// admin.token): list them, show one, replay dead ones.
    Deliveries {
        #[command(subcommand)]
        action: DeliveriesAction,
    },
    /// Subscribers of a running walhook (through its admin API, with admin.token): list
    /// them with their status, pause one, resume a paused or disabled one.
    Subscribers {
        #[command(subcommand)]
        action: SubscribersAction,
    },
    /// Backfills: send a subscriber the rows its rules cover, as they are now, in key
    /// order and in step with the live stream (through the state database; the leading
    /// walhook runs them).
    Backfill {
        #[command(subcommand)]
        action: BackfillAction,
    },
    /// Run a receiver that verifies signatures and prints every webhook (for trying walhook out).
    Receive {
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Signing secret(s), `whsec_...`.
        #[arg(long = "secret", env = "WALHOOK_RECEIVER_SECRET", required = true)]
        secrets: Vec<String>,
    },
}

/// The config file (TOML), of every command that reads one.
#[derive(Debug, clap::Args)]
pub struct ConfigArg {
    /// Config file (TOML).
    #[arg(
        long,
        short,
        env = "WALHOOK_CONFIG",
        default_value = "/etc/walhook/walhook.toml"
    )]
    pub config: PathBuf,
}

/// Which deliveries: every flag narrows the selection.
#[derive(Debug, Default, clap::Args)]
pub struct DeliveryFilter {
    /// The subscriber's name.
    #[arg(long)]
    pub subscriber: Option<String>,
    /// The event type, e.g. price.changed.
    #[arg(long = "type")]
    pub event_type: Option<String>,
    /// The ordering key, e.g. 'public.prices|{"product_id":7,"currency":"EUR"}'.
    #[arg(long)]
    pub key: Option<String>,
    /// Died (or, pending, spilled) at or after this time (RFC 3339).
    #[arg(long)]
    pub since: Option<String>,
    /// ... and before this time.
    #[arg(long)]
    pub until: Option<String>,
}

#[derive(Debug, Subcommand)]
pub enum DeliveriesAction {
    /// List deliveries, newest first.
    List {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        filter: DeliveryFilter,
        /// dead (gave up) or pending (in the spill log).
        #[arg(long, default_value = "dead")]
        status: String,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        /// Print the API's JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Show one delivery: attempts, last error and body.
    Show {
        #[command(flatten)]
        config: ConfigArg,
        #[arg(long)]
        subscriber: String,
        /// The event id (webhook-id).
        id: String,
    },
    /// Replay dead deliveries of one subscriber: one by id, those a filter selects, or
    /// with --all every one. They go out again with their ids and bodies.
    Replay {
        #[command(flatten)]
        config: ConfigArg,
        #[command(flatten)]
        filter: DeliveryFilter,
        /// The event id (webhook-id) of one delivery.
        id: Option<String>,
        /// Every dead delivery of the subscriber.
        #[arg(long)]
        all: bool,
    },
}

#[derive(Debug, Subcommand)]
pub enum SubscribersAction {
    /// Every subscriber with its status (active, paused, disabled) and why.
    List {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Stop sending to a subscriber; its events wait in the spill log.
    Pause {
        #[command(flatten)]
        config: ConfigArg,
        /// The subscriber's name.
        name: String,
        /// Why (shown by list).
        #[arg(long)]
        reason: Option<String>,
    },
    /// Send again to a paused or disabled subscriber, from where it stopped, in order.
    Resume {
        #[command(flatten)]
        config: ConfigArg,
        /// The subscriber's name.
        name: String,
    },
}

#[derive(Debug, Subcommand)]
pub enum BackfillAction {
    /// Ask for a backfill of one subscriber: every table its rules cover, or those named.
    Start {
        #[command(flatten)]
        config: ConfigArg,
        /// The subscriber's name: only it receives the rows.
        #[arg(long)]
        subscriber: String,
        /// A table to read ("schema.table"; repeat for more); default every table whose
        /// rules route to the subscriber.
        #[arg(long = "table")]
        tables: Vec<String>,
        /// Only rows for which this SQL condition holds, e.g. "status = 'active'".
        #[arg(long = "where")]
        where_sql: Option<String>,
        /// A [[documents]] name: send each document (op "read"), walking the keys of its
        /// first source table (instead of the rows of tables).
        #[arg(long, conflicts_with = "tables")]
        document: Option<String>,
        /// Show its progress until it ends (exit 0 when done, 1 when it failed or was
        /// cancelled).
        #[arg(long)]
        wait: bool,
    },
    /// Every backfill, newest first, with its progress, rate and ETA.
    List {
        #[command(flatten)]
        config: ConfigArg,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop a backfill after its current chunk; resume goes on from there.
    Pause {
        #[command(flatten)]
        config: ConfigArg,
        id: i64,
    },
    /// Go on with a paused backfill, or a failed one once its cause is fixed, from where
    /// it stopped.
    Resume {
        #[command(flatten)]
        config: ConfigArg,
        id: i64,
    },
    /// Stop a backfill for good (rows sent stay sent).
    Cancel {
        #[command(flatten)]
        config: ConfigArg,
        id: i64,
    },
}
