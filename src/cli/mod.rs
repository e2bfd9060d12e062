//! The command line: the only module that knows clap, the TOML file and the
//! names of environment variables.
//!
//! Precedence is flag > environment > file > default. clap merges the first
//! two (each flag names its variable), and [`python`] fills what the
//! Python tool's variables set where neither did; [`file`] reads the TOML file, and
//! [`portal::resolve_portal`], [`send::resolve_send`] and
//! [`send::resolve_wait`] fill in the rest and check it, producing the plain
//! settings each role runs with. Invalid values fail at start with a message
//! naming the setting. Printing, signals and exit codes are decided here too.

pub mod args;
pub(crate) mod completions;
pub(crate) mod defaults;
pub(crate) mod file;
pub(crate) mod health;
pub(crate) mod kafka;
pub mod keygen;
pub(crate) mod otlp;
pub(crate) mod portal;
pub(crate) mod python;
pub mod python_cmd;
pub(crate) mod routes;
#[cfg(test)]
mod routes_tests;
pub mod send;
pub(crate) mod show;
#[cfg(test)]
mod tests;

use std::ffi::OsString;
use std::process::ExitCode;

use crate::cli::args::{Cli, Command};
use crate::cli::show::ConfigCommand;
use crate::logging;
use crate::send::ui::one_line;
use crate::util::runtime;

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

/// Parses the command line and runs the subcommand; every error becomes one
/// line on stderr and one exit code, decided here.
pub fn run() -> ExitCode {
    let argv: Vec<OsString> = std::env::args_os().collect();
    if let Some(header) = python::header_after_help_flag(&argv) {
        eprintln!(
            "kafkasend send: -h asks for help here and sends nothing; send the header with -H (as curl does): -H {}",
            one_line(&python::shell_quote(&python::shown_header(&header)))
        );
        return ExitCode::from(2);
    }
    let argv = match python_cmd::program(argv.first()) {
        python_cmd::Program::Kafkasend => argv,
        python_cmd::Program::Client => {
            return python_cmd::run_client(&argv).unwrap_or_else(usage_error);
        }
        python_cmd::Program::Portal => {
            let rest = argv.iter().skip(1).cloned();
            // `kafkasend-portal --version` asks what the program is.
            let version = argv.len() == 2 && (argv[1] == "--version" || argv[1] == "-V");
            let sub = if version { "--version" } else { "portal" };
            ["kafkasend", sub]
                .map(OsString::from)
                .into_iter()
                .chain(rest.filter(|_| !version))
                .collect()
        }
    };
    let cli = match args::command()
        .try_get_matches_from(&argv)
        .and_then(|m| <Cli as clap::FromArgMatches>::from_arg_matches(&m))
    {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match cli.command {
        Command::Portal(mut args) => {
            let resolved = python::fill_portal(&mut args, &python::process_env).and_then(|f| {
                let cfg = portal::resolve_portal(&args).map_err(|e| f.explain(e))?;
                Ok((cfg, f.notes))
            });
            let (cfg, notes) = match resolved {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("kafkasend portal: {e:#}");
                    return ExitCode::from(2);
                }
            };
            logging::init(&cfg.log_filter, cfg.log_format);
            for note in notes {
                if note.warn {
                    log::warn!("{}", note.text);
                } else {
                    log::info!("{}", note.text);
                }
            }
            let rt = match runtime() {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("kafkasend portal: cannot start the runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            let exporter = rt.block_on(async { otlp::from_env("kafkasend-portal") });
            let result = rt.block_on(crate::portal::run(cfg, shutdown_then_force()));
            if let Some(exporter) = exporter {
                rt.block_on(exporter.shutdown(otlp::EXIT_LIMIT));
            }
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
        Command::Send(args) => crate::cli::send::run_send(&args),
        Command::Wait(args) => crate::cli::send::run_wait(&args),
        Command::SendFile(args) => python_cmd::run_send_file(&args),
        Command::SendRequest(args) => python_cmd::run_send_request(&args),
        Command::Config(ConfigCommand::Show(args)) => match show::rows(&args) {
            Ok(sections) => {
                print!("{}", show::render(&sections));
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("kafkasend config show: {e:#}");
                ExitCode::from(2)
            }
        },
        Command::Completions(args) => {
            completions::write(
                args.shell,
                &mut args::command(),
                &mut std::io::stdout().lock(),
            );
            ExitCode::SUCCESS
        }
        Command::Keygen(args) => keygen::run(&args),
        Command::Health(args) => {
            let result = match runtime() {
                Ok(rt) => rt.block_on(health::probe(&args)),
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
        Some(sub)
            if ["send", "portal", "wait", "send-file", "send-request"].contains(&sub.as_str()) =>
        {
            format!("kafkasend {sub} --help")
        }
        _ => "kafkasend --help".into(),
    };
    eprintln!("kafkasend: {first}; see '{help}'");
    ExitCode::from(2)
}
