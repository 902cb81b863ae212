//! The application: what `walhook run` is once its config is read. `check` asks each
//! stage to check its part of a config (every problem at once); `run` starts the stages
//! in order (state, lanes, admin server, lease, pipeline) and stops them in reverse;
//! `reload` takes a new config on SIGHUP; `shutdown` turns signals into one cancellation
//! and budgets the time a stop may take.

pub mod check;
pub mod reload;
pub mod run;
pub mod shutdown;
