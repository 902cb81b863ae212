//! walhook: a sidecar daemon that tails a PostgreSQL database's logical replication
//! stream, turns committed row changes into named business events, and delivers them as
//! signed webhooks (Standard Webhooks) to every subscriber that wants them.
//!
//! ```text
//! Postgres ──pgoutput──▶ source ─▶ decode ─▶ mapping ─▶ lanes (one per subscriber) ─▶ HTTP
//!                                                       hot: in memory, per-key FIFO
//!                                                       spill: durable log in PostgreSQL
//!     ▲
//!     └── confirmed LSN = min over lanes of "everything before it delivered, dead or spilled"
//! ```
//!
//! Guarantees:
//! - **No loss**: the flush LSN confirmed to the slot never passes an event some lane has
//!   not delivered, dead-lettered or durably spilled (`pipeline`, `lanes`).
//! - **Stable ids**: an event's `webhook-id` and body derive from its position and rule,
//!   so a replay re-sends identical bytes (`mapping`).
//! - **Isolation**: each subscriber has its own lane; a failing one spills to the state
//!   database and never delays the others (`lanes`).
//! - **Bounded memory**: lanes hold at most `max_buffered` events before spilling.

#![forbid(unsafe_code)]

pub mod admin;
pub mod app;
pub mod backfill;
pub mod cli;
pub mod config;
pub mod decode;
pub mod documents;
pub mod error;
pub mod event;
pub mod lanes;
pub mod mapping;
pub mod metrics;
pub mod pg;
pub mod pipeline;
pub mod progress;
pub mod report;
pub mod source;
pub mod state;
pub mod telemetry;
