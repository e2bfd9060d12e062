//! The `kafkasend` executable: parses flags and runs a subcommand; every
//! error becomes one line on stderr and one exit code, decided here.

use std::process::ExitCode;

use clap::Parser;
use kafkasend::config::{Cli, Command, PortalConfig, SendConfig};
use kafkasend::config_show::ConfigCommand;

fn init_logging(default_filter: &str) {
    let env = env_logger::Env::default().filter_or("RUST_LOG", default_filter);
    env_logger::Builder::from_env(env)
        .format_target(false)
        .format_timestamp_millis()
        .init();
}

fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
}

/// Resolves at the first SIGINT or SIGTERM; a second one exits at once.
async fn shutdown_then_force() {
    shutdown_signal().await;
    tokio::spawn(async {
        shutdown_signal().await;
        eprintln!("kafkasend portal: second signal; exiting now without waiting for jobs");
        std::process::exit(130);
    });
}

/// Resolves when SIGINT or SIGTERM arrives.
async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Portal(args) => {
            let cfg = match PortalConfig::resolve(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("kafkasend portal: {e:#}");
                    return ExitCode::from(2);
                }
            };
            init_logging(&cfg.log_filter);
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("kafkasend portal: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = rt.block_on(kafkasend::portal::run(cfg, shutdown_then_force()));
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            match result {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    log::error!("{e:#}");
                    eprintln!("kafkasend portal: {e:#}");
                    ExitCode::FAILURE
                }
            }
        }
        Command::Send(args) => {
            init_logging("warn");
            let cfg = match SendConfig::resolve(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("kafkasend send: {e:#}");
                    return ExitCode::from(2);
                }
            };
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("kafkasend send: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let result = rt.block_on(kafkasend::send::run(&args, &cfg));
            // Background retries of the Kafka client must not hold the exit.
            rt.shutdown_timeout(std::time::Duration::from_secs(1));
            match result {
                Ok(outcome) => ExitCode::from(outcome.exit_code()),
                Err(e) => {
                    eprintln!("kafkasend send: {e}");
                    ExitCode::from(e.exit_code())
                }
            }
        }
        Command::Config(ConfigCommand::Show(args)) => match kafkasend::config_show::rows(&args) {
            Ok(sections) => {
                print!("{}", kafkasend::config_show::render(&sections));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kafkasend config show: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Completions(args) => {
            kafkasend::completions::write(args.shell, &mut std::io::stdout().lock());
            ExitCode::SUCCESS
        }
        Command::Health(args) => {
            let result = match runtime() {
                Ok(rt) => rt.block_on(kafkasend::health_check::probe(&args)),
                Err(e) => {
                    eprintln!("kafkasend health: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match result {
                Ok(status) => {
                    println!("healthy: {} answered {status}", args.url);
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("kafkasend health: {e}");
                    ExitCode::FAILURE
                }
            }
        }
    }
}
