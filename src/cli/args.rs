//! The clap tree: every subcommand and its flags, as `kafkasend --help` shows them.

use clap::{Parser, Subcommand};

use crate::cli::portal::PortalArgs;
use crate::cli::python_cmd::{SendFileArgs, SendRequestArgs};
use crate::cli::send::{SendArgs, WaitArgs};

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
        args_override_self = true,
        after_help = "Examples:\n  kafkasend send report.pdf --endpoint /api/upload\n  kafkasend send --endpoint '/api/items?limit=5' -H 'Accept: application/json'\n  kafkasend send big.iso --endpoint /api/upload --multipart --field file -o reply.json\n  kafkasend send --endpoint /api/login -d user=ann -d lang=en\n  kafkasend send --endpoint /api/docs -F title=Report -F file=@report.pdf -F 'scan=@page1.png;type=image/png'\n  kafkasend send big.iso --endpoint /api/upload --resume JOB_ID   # finish a killed upload\n\nUnlike curl: -e is --endpoint (not --referer), -q is --quiet (not 'skip .curlrc'), --json prints a summary (it does not send JSON), -u is refused (the portal authenticates to the API itself)."
    )]
    Send(Box<SendArgs>),
    /// Wait for the response to a job sent earlier with `send --no-wait`.
    #[command(
        args_override_self = true,
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
    /// The Python client's file upload, as a multipart form (deprecated: kafkasend send FILE --multipart)
    #[command(
        disable_help_flag = true,
        after_help = "Example:\n  kafkasend send-file hello.txt --endpoint /api/upload -h 'X-Request-ID: 42' -t text/plain"
    )]
    SendFile(Box<SendFileArgs>),
    /// The Python client's request without a body (deprecated: kafkasend send)
    #[command(
        disable_help_flag = true,
        after_help = "Example:\n  kafkasend send-request --endpoint /api/items -m GET --no-wait"
    )]
    SendRequest(Box<SendRequestArgs>),
    /// GET a health URL and exit 0 on a 2xx answer, 1 otherwise (for container health checks).
    #[command(
        after_help = "Examples:\n  kafkasend health\n  kafkasend health --url http://127.0.0.1:9464/readyz --timeout 3"
    )]
    Health(crate::cli::health::HealthArgs),
    /// Make a portal's sealing key pair: PREFIX.key for PORTAL_SEALING_KEY_FILE, PREFIX.pub for send --seal-to.
    #[command(
        after_help = "Example:\n  kafkasend keygen --out /etc/kafkasend/portal-2026\n  kafkasend send report.pdf --endpoint /api/upload --seal-to portal-2026.pub"
    )]
    Keygen(crate::cli::keygen::KeygenArgs),
}

/// The command line as `kafkasend` parses it and `--help` and completions
/// show it: the clap tree with each setting's default in its flag's help
/// (`config show` adds them to its own flags).
pub fn command() -> clap::Command {
    let cmd = <Cli as clap::CommandFactory>::command();
    ["portal", "send", "wait", "send-file", "send-request"]
        .into_iter()
        .fold(cmd, |cmd, name| {
            cmd.mut_subcommand(name, crate::cli::defaults::annotate)
        })
}
