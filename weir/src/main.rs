//! The `weir` binary: the hub (`serve`) and the tools around it.

mod api;
mod cli;
mod client;
mod config;
mod device_cmd;
mod http_server;
mod hub;
mod reload;
mod rules_cmd;
mod serve;
mod simulate;
mod tls_setup;

use clap::Parser;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    match cli::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}
