//! The `kafkasend` executable: parses flags and runs a subcommand; every
//! error becomes one line on stderr and one exit code, decided here.

use std::process::ExitCode;

use clap::Parser;
use kafkasend::cli::portal::resolve_portal;
use kafkasend::cli::send::{resolve_send, resolve_wait};
use kafkasend::cli::show::ConfigCommand;
use kafkasend::cli::{Cli, Command};
use kafkasend::logging;
use kafkasend::logging::LogFormat;
use kafkasend::send::ui::{one_line, Report};
use kafkasend::send::Settings as SendConfig;
use kafkasend::send::{Outcome, SendError};

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
    kafkasend::alloc::tune_allocator();
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match cli.command {
        Command::Portal(args) => {
            let cfg = match resolve_portal(&args) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("kafkasend portal: {e:#}");
                    return ExitCode::from(2);
                }
            };
            logging::init(&cfg.log_filter, cfg.log_format);
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
            logging::init("warn", LogFormat::Text);
            let cfg = resolve_send(&args);
            run_client("send", args.json, cfg, async |cfg, report| {
                kafkasend::send::run(&args, cfg, report).await
            })
        }
        Command::Wait(args) => {
            logging::init("warn", LogFormat::Text);
            let cfg = resolve_wait(&args);
            run_client("wait", args.json, cfg, async |cfg, report| {
                kafkasend::send::wait(&args, cfg, report).await
            })
        }
        Command::Config(ConfigCommand::Show(args)) => match kafkasend::cli::show::rows(&args) {
            Ok(sections) => {
                print!("{}", kafkasend::cli::show::render(&sections));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kafkasend config show: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Completions(args) => {
            kafkasend::cli::completions::write(args.shell, &mut std::io::stdout().lock());
            ExitCode::SUCCESS
        }
        Command::Health(args) => {
            let result = match runtime() {
                Ok(rt) => rt.block_on(kafkasend::cli::health::probe(&args)),
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
                    eprintln!("kafkasend health: {}", one_line(&e.to_string()));
                    ExitCode::FAILURE
                }
            }
        }
    }
}

/// Runs `send` or `wait`: one line on stderr for an error, the JSON summary
/// on stdout when asked for, and the exit code of the outcome.
fn run_client(
    name: &str,
    json: bool,
    cfg: anyhow::Result<SendConfig>,
    run: impl AsyncFnOnce(&SendConfig, &mut Report) -> Result<Outcome, SendError>,
) -> ExitCode {
    let mut report = Report::default();
    let cfg = match cfg {
        Ok(c) => c,
        Err(e) => {
            let shown = one_line(&format!("{e:#}"));
            eprintln!("kafkasend {name}: {shown}");
            if json {
                println!("{}", report.to_json(2, Some(&shown)));
            }
            return ExitCode::from(2);
        }
    };
    let rt = match runtime() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("kafkasend {name}: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(run(&cfg, &mut report));
    // Background retries of the Kafka client must not hold the exit.
    rt.shutdown_timeout(std::time::Duration::from_secs(1));
    let (code, error) = match result {
        Ok(outcome) => (outcome.exit_code(), None),
        Err(e) => {
            // Portal messages, and Kafka's, arrive over the network.
            let shown = one_line(&e.to_string());
            eprintln!("kafkasend {name}: {shown}");
            (e.exit_code(), Some(shown))
        }
    };
    if json {
        println!("{}", report.to_json(code, error.as_deref()));
    }
    ExitCode::from(code)
}

/// Help and version print as clap renders them; a bad command line gets one
/// line saying what is wrong and where the help is, and exit code 2.
fn usage_error(e: clap::Error) -> ExitCode {
    use clap::error::ErrorKind;
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        let _ = e.print();
        return ExitCode::from(if e.use_stderr() { 2 } else { 0 });
    }
    let rendered = e.render().to_string();
    // The message is the first paragraph; the rest is usage and tips.
    let first: Vec<&str> = rendered
        .lines()
        .take_while(|l| !l.trim().is_empty())
        .map(|l| l.trim().trim_start_matches("error: "))
        .collect();
    let first = match first.join(" ") {
        m if m.is_empty() => "invalid command line".to_string(),
        m => m,
    };
    let command: Vec<String> = std::env::args()
        .skip(1)
        .take_while(|a| !a.starts_with('-'))
        .take(1)
        .collect();
    let help = match command.first() {
        Some(sub) if ["send", "portal", "wait"].contains(&sub.as_str()) => {
            format!("kafkasend {sub} --help")
        }
        _ => "kafkasend --help".into(),
    };
    eprintln!("kafkasend: {first}; see '{help}'");
    ExitCode::from(2)
}
