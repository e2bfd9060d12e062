//! The `kafkasend` executable: tunes the allocator, then hands the process
//! to [`kafkasend::cli::run`], which parses the command line, runs the
//! subcommand and decides the exit code.

use std::process::ExitCode;

fn main() -> ExitCode {
    kafkasend::alloc::tune_allocator();
    kafkasend::cli::run()
}
