//! The `shenguan` binary: the allocator, then the command line ([`shenguan_cli::main`]).

use std::process::ExitCode;

/// glibc's malloc was a fifth of the server's CPU under load (perf, W1–W3); mimalloc is faster
/// for the many small, short-lived allocations of the command path.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    shenguan_cli::main()
}
