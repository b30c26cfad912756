//! The `shenguan` command line as a library: parse the command line, run it, print any error as
//! one line. The binary (`main.rs`) only chooses the allocator and calls [`main`].
//!
//! A library, so that cargo compiles it beside the engine (it needs only the engine's metadata
//! to start) rather than after it: the release build's last minute was the engine and then
//! this, one after the other (BENCHMARKS.md, "Build and CI times").
//!
//! The user interface lives here, not in the engine: [`cli`] (the commands and `serve`),
//! [`client`] (the gRPC-client commands and their tables), [`config`] (serve's configuration
//! file), [`traces`] (logs, and spans over OTLP), [`security`] (keys, TLS, dev mode, tokens)
//! and [`demo`] (the guided tour).

mod archive;
mod catalog;
mod cli;
mod client;
mod config;
mod demo;
mod inbox;
mod security;
mod traces;

use std::process::ExitCode;

/// Runs the command line of this process and answers its exit code.
pub fn main() -> ExitCode {
    match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime.block_on(run()),
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run() -> ExitCode {
    let cli = match crate::config::parse(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    match crate::cli::run(cli).await {
        Ok(code) => code,
        // A closed pipe (`shenguan … | head`) is the reader's choice, not an error.
        Err(e)
            if e.chain().any(|c| {
                c.downcast_ref::<std::io::Error>().is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            }) =>
        {
            ExitCode::SUCCESS
        }
        Err(e) => {
            // One line a person can act on: the error and its causes, outermost first.
            // A gRPC status is already a whole sentence; its source would only repeat it.
            let mut chain: Vec<String> = Vec::new();
            for cause in e.chain() {
                let text = cause.to_string();
                // Transport errors repeat their source in their own text; say each thing once.
                if chain.last().is_some_and(|last| last.contains(&text)) {
                    continue;
                }
                chain.push(text);
                if cause.downcast_ref::<crate::client::CallError>().is_some() {
                    break;
                }
            }
            eprintln!("error: {}", chain.join(": "));
            ExitCode::from(crate::client::exit_code(&e))
        }
    }
}
