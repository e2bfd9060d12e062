//! In-process round trips for `bench/run`: calls `kafkasend::send::run` in a
//! loop inside one process and prints one latency in microseconds per line.
//!
//! `bench_rtt COUNT SEND_ARGS...`, e.g.
//! `bench_rtt 1000 --endpoint /ping -o target/bench/rtt.out`, with the Kafka
//! settings in the environment as for `kafkasend send`.
//!
//! The process connects to Kafka once (`send::Link`) and sends every request
//! over that connection with `send::run_on`, as a program embedding the
//! client would; each call still notes the reply partition's end offset,
//! produces its request and reads its answer. Process start, runtime setup
//! and connecting are what it leaves out. The first call is a warm-up and
//! is not printed.

use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use kafkasend::cli::args::{Cli, Command};
use kafkasend::cli::send::{request, resolve_send, Interrupts};

fn main() -> ExitCode {
    kafkasend::alloc::tune_allocator();
    let mut argv = std::env::args().skip(1);
    let Some(count) = argv.next().and_then(|c| c.parse::<usize>().ok()) else {
        eprintln!("usage: bench_rtt COUNT SEND_ARGS...");
        return ExitCode::from(2);
    };
    let send_argv = ["kafkasend".to_string(), "send".to_string()]
        .into_iter()
        .chain(argv);
    let args = match Cli::try_parse_from(send_argv) {
        Ok(Cli {
            command: Command::Send(args),
            ..
        }) => args,
        Ok(_) => return ExitCode::from(2),
        Err(e) => {
            eprintln!("bench_rtt: {e}");
            return ExitCode::from(2);
        }
    };
    let mut cfg = match resolve_send(&args) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("bench_rtt: {e:#}");
            return ExitCode::from(2);
        }
    };
    // The brokers' logs tell the benchmark from the command line.
    cfg.kafka.client_id = "bench-rtt".into();
    let rt = match tokio::runtime::Runtime::new() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("bench_rtt: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let request = request(&args);
    let link = match rt.block_on(kafkasend::send::Link::open(&cfg.kafka)) {
        Ok(link) => link,
        Err(e) => {
            eprintln!("bench_rtt: {e}");
            return ExitCode::FAILURE;
        }
    };
    for i in 0..=count {
        let t0 = Instant::now();
        let mut report = kafkasend::send::ui::Report::default();
        // Ctrl-C stops the call under way cleanly, as it stops `send`.
        let result = rt.block_on(async {
            let interrupt = Interrupts::watch()?;
            kafkasend::send::run_on(&link, &request, &cfg, &mut report, interrupt.first()).await
        });
        match result {
            Ok(outcome) if outcome.exit_code() == 0 => {}
            Ok(outcome) => {
                eprintln!(
                    "bench_rtt: call {i} ended with exit code {}",
                    outcome.exit_code()
                );
                return ExitCode::FAILURE;
            }
            Err(e) => {
                eprintln!("bench_rtt: call {i} failed: {e}");
                return ExitCode::FAILURE;
            }
        }
        if i > 0 {
            println!("{}", t0.elapsed().as_micros());
        }
    }
    ExitCode::SUCCESS
}
