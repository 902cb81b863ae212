//! walhook binary: cli -> config -> telemetry -> command -> exit code.

use clap::Parser;
use walhook::cli::{Cli, LogFormat};

// `--features sysalloc` keeps the system allocator, for heap profilers that hook malloc
// (heaptrack, valgrind); see bench/README.md.
#[cfg(not(feature = "sysalloc"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = Cli::parse();
    walhook::telemetry::init(cli.log_format == LogFormat::Json);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("walhook: cannot start the runtime: {e}");
            std::process::exit(1);
        }
    };
    let code = runtime.block_on(walhook::cli::commands::run(cli.command));
    std::process::exit(code);
}
