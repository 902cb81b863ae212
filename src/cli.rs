//! Command line: `walhook run`, `walhook check`, `walhook explain`, `walhook ping`,
//! `walhook receive`.

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
        /// Config file (TOML).
        #[arg(
            long,
            short,
            env = "WALHOOK_CONFIG",
            default_value = "/etc/walhook/walhook.toml"
        )]
        config: PathBuf,
        /// Decode and map, but deliver nothing (for benchmarks and diagnosis): events are
        /// dropped after mapping and the slot advances as if they were delivered, so use a
        /// slot of its own (source.slot), never the one your subscribers depend on.
        #[arg(long)]
        no_delivery: bool,
    },
    /// Parse and validate a config file, print every problem, and exit.
    Check {
        #[arg(
            long,
            short,
            env = "WALHOOK_CONFIG",
            default_value = "/etc/walhook/walhook.toml"
        )]
        config: PathBuf,
    },
    /// Dry run: print the events one row change would make and, for each subscriber that
    /// wants them, the exact request (method, headers, body). Sends nothing.
    Explain {
        #[arg(
            long,
            short,
            env = "WALHOOK_CONFIG",
            default_value = "/etc/walhook/walhook.toml"
        )]
        config: PathBuf,
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
        #[arg(
            long,
            short,
            env = "WALHOOK_CONFIG",
            default_value = "/etc/walhook/walhook.toml"
        )]
        config: PathBuf,
        /// The subscriber's name.
        #[arg(long)]
        subscriber: String,
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
