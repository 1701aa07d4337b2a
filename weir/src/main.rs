//! The `weir` binary: the hub (`serve`) and the tools around it.

mod api;
mod ca_cmd;
mod cli;
mod client;
mod cluster;
mod config;
mod device_cmd;
mod dps;
mod dps_cmd;
mod edge;
mod engine_run;
mod fdlimit;
mod http_server;
mod memory;
mod reload;
mod rules_cmd;
mod serve;
mod simulate;
mod sinks;
mod tls_setup;

use clap::Parser;

/// Events are decoded on one thread and freed on another (a sink's file holds them), a
/// pattern where glibc's allocator spent a fifth of the engine's time; see
/// docs/decisions/010-allocator-and-blocking-pool.md.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    memory::configure();
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
