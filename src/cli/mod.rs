//! The command line: the only module that knows clap, the TOML file and the
//! names of environment variables.
//!
//! Precedence is flag > environment > file > default. clap merges the first
//! two (each flag names its variable); [`file`] reads the TOML file, and
//! [`portal::resolve_portal`], [`send::resolve_send`] and
//! [`send::resolve_wait`] fill in the rest and check it, producing the plain
//! settings each role runs with. Invalid values fail at start with a message
//! naming the setting. Printing, signals and exit codes are decided here too.

pub mod completions;
pub mod file;
pub mod health;
pub mod kafka;
pub mod portal;
pub mod send;
pub mod show;
#[cfg(test)]
mod tests;

use std::process::ExitCode;

use anyhow::bail;
use clap::{Parser, Subcommand};

use crate::cli::portal::PortalArgs;
use crate::cli::send::{SendArgs, WaitArgs};
use crate::cli::show::ConfigCommand;
use crate::logging;
use crate::send::ui::one_line;

/// Longest wait any setting may ask for: a week.
pub const MAX_WAIT_SECS: u64 = 7 * 24 * 3600;

/// Largest spool threshold: bodies above it always go to disk.
pub const MAX_SPOOL_THRESHOLD: usize = 64 * 1024 * 1024;

const AFTER_HELP: &str = "\
Environment variables (each also a flag, and a key of the --config file):
  KAFKA_BOOTSTRAP_SERVERS, KAFKA_REQUEST_TOPIC, KAFKA_RESPONSE_TOPIC,
  PORTAL_TARGET_API_URL, PORTAL_USE_OAUTH, OAUTH2_TOKEN_URL, OAUTH2_CLIENT_ID, ...
See docs/configuration.md for the full table.";

/// Command line of `kafkasend`.
#[derive(Debug, Parser)]
#[command(
    name = "kafkasend",
    version,
    about = "Call a REST API across a network boundary that only Kafka crosses",
    after_help = AFTER_HELP
)]
pub struct Cli {
    /// What to run.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run next to the REST API: consume requests, call the API, stream responses back.
    #[command(
        after_help = "Example:\n  PORTAL_TARGET_API_URL=http://127.0.0.1:8080 PORTAL_USE_OAUTH=false \\\n    PORTAL_ALLOWED_ENDPOINTS='POST /api/upload, GET /api/items/*' kafkasend portal"
    )]
    Portal(Box<PortalArgs>),
    /// Send one HTTP request (and a file) through Kafka and print the response.
    #[command(
        after_help = "Examples:\n  kafkasend send report.pdf --endpoint /api/upload\n  kafkasend send --endpoint '/api/items?limit=5' -H 'Accept: application/json'\n  kafkasend send big.iso --endpoint /api/upload --multipart --field file -o reply.json"
    )]
    Send(Box<SendArgs>),
    /// Wait for the response to a job sent earlier with `send --no-wait`.
    #[command(
        after_help = "Examples:\n  JOB=$(kafkasend send big.iso --endpoint /api/upload --no-wait)\n  kafkasend wait \"$JOB\" -o reply.json"
    )]
    Wait(Box<WaitArgs>),
    /// Inspect settings.
    #[command(
        subcommand,
        after_help = "Example:\n  kafkasend config show portal --config portal.toml"
    )]
    Config(crate::cli::show::ConfigCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Examples:\n  kafkasend completions bash > /etc/bash_completion.d/kafkasend\n  kafkasend completions zsh > \"${fpath[1]}/_kafkasend\"\n  kafkasend completions fish > ~/.config/fish/completions/kafkasend.fish"
    )]
    Completions(crate::cli::completions::CompletionsArgs),
    /// GET a health URL and exit 0 on a 2xx answer, 1 otherwise (for container health checks).
    #[command(
        after_help = "Examples:\n  kafkasend health\n  kafkasend health --url http://127.0.0.1:9464/readyz --timeout 3"
    )]
    Health(crate::cli::health::HealthArgs),
}

fn pick<T: Clone>(flag_or_env: &Option<T>, file: &Option<T>) -> Option<T> {
    flag_or_env.clone().or_else(|| file.clone())
}

/// The URL of `setting`, refused when it holds credentials (`user@host`,
/// `instead` says what to do) before any message could quote them.
fn parse_url(setting: &str, url: &str, instead: &str) -> anyhow::Result<hyper::Uri> {
    let uri: hyper::Uri = url.parse().map_err(|e| {
        let shown = without_userinfo(url);
        anyhow::anyhow!("{setting}: '{shown}' is not a URL: {e}")
    })?;
    if uri.authority().is_some_and(|a| a.as_str().contains('@')) {
        bail!("{setting} must not hold credentials (user@host); {instead}");
    }
    Ok(uri)
}

/// `url` with any `user:password@` before its host replaced by `***@`, for
/// messages and `config show`; text without `://` is returned as is.
pub fn without_userinfo(url: &str) -> std::borrow::Cow<'_, str> {
    let Some(start) = url.find("://").map(|i| i + 3) else {
        return url.into();
    };
    let rest = &url[start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..authority_len].rfind('@') {
        Some(at) => format!("{}***{}", &url[..start], &url[start + at..]).into(),
        None => url.into(),
    }
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

/// Parses the command line and runs the subcommand; every error becomes one
/// line on stderr and one exit code, decided here.
pub fn run() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(e),
    };
    match cli.command {
        Command::Portal(args) => {
            let cfg = match portal::resolve_portal(&args) {
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
            let result = rt.block_on(crate::portal::run(cfg, shutdown_then_force()));
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
            completions::write(args.shell, &mut std::io::stdout().lock());
            ExitCode::SUCCESS
        }
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
        Some(sub) if ["send", "portal", "wait"].contains(&sub.as_str()) => {
            format!("kafkasend {sub} --help")
        }
        _ => "kafkasend --help".into(),
    };
    eprintln!("kafkasend: {first}; see '{help}'");
    ExitCode::from(2)
}
