//! The Python client's command lines, kept for old scripts:
//! `kafkasend send-file` and `kafkasend send-request`, and the program
//! names `kafkasend-client` and `kafkasend-portal` (a link to this binary
//! under either name acts as that program).
//!
//! Each command is a translation into `kafkasend send`'s flags, run by
//! [`run_send`]; there is no second send path. What differs is what the
//! Python client did differently: `-h` is a header, entries without `:`
//! are dropped (with a warning, where Python was silent), a later header
//! replaces an earlier one of the same name, the endpoint's leading `/` is
//! optional, a file always goes as a multipart form, and an HTTP error
//! status exits 0.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::builder::PossibleValuesParser;
use clap::parser::ValueSource;
use clap::{ArgAction, Args, FromArgMatches as _, Parser, Subcommand};

use crate::cli::kafka::KafkaArgs;
use crate::cli::python::shell_quote;
use crate::cli::send::{run_send, SendArgs};

/// Flags the Python commands share besides their own: the log level,
/// `send`'s wait and signing settings (by their variables) and the Kafka
/// options.
#[derive(Debug, Args, Clone, Default)]
pub struct PythonCommon {
    /// Log level: DEBUG, INFO, WARNING, ERROR; RUST_LOG overrides it
    #[arg(long = "log-level", env = "KAFKASEND_LOG_LEVEL", value_name = "LEVEL")]
    pub client_log_level: Option<String>,
    /// Seconds to wait for the response, counted from the last record received
    #[arg(long, env = "KAFKASEND_TIMEOUT_SECS", value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Sign the request with this PEM private key (Ed25519 or EC P-256)
    #[arg(long, env = "KAFKASEND_SIGNING_KEY_FILE", value_name = "FILE")]
    pub signing_key: Option<PathBuf>,
    /// Seconds a request signature stays valid
    #[arg(long, env = "KAFKASEND_SIGNATURE_TTL_SECS", value_name = "SECS")]
    pub signature_ttl_secs: Option<u64>,
    /// Print help (-h is a header here, as in the Python client)
    #[arg(long, action = ArgAction::HelpLong)]
    pub help: Option<bool>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub kafka: KafkaArgs,
}

/// `--wait` / `--no-wait`, the last one given winning.
#[derive(Debug, Args, Clone, Default)]
pub struct WaitChoice {
    /// Wait for the response and print it (the default)
    #[arg(long, overrides_with = "no_wait")]
    pub wait: bool,
    /// Print the job id and exit once the broker has the request
    #[arg(long, overrides_with = "wait")]
    pub no_wait: bool,
}

/// Flags of `kafkasend send-file`, as the Python client took them.
#[derive(Debug, Args, Clone, Default)]
pub struct SendFileArgs {
    /// The file, sent as the multipart/form-data field `file`
    #[arg(value_name = "FILE_PATH")]
    pub file: PathBuf,
    /// Path on the target API; the leading '/' is optional
    #[arg(short = 'e', long, value_name = "PATH")]
    pub endpoint: String,
    /// POST, PUT or PATCH
    #[arg(short = 'm', long, value_name = "METHOD", default_value = "POST", ignore_case = true,
          value_parser = PossibleValuesParser::new(["POST", "PUT", "PATCH"]))]
    pub method: String,
    /// Request header 'Name: value' (repeatable; a later one of the same name replaces an earlier one)
    #[arg(short = 'h', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,
    /// Content type of the file's part [default: guessed from its extension]
    #[arg(short = 't', long, value_name = "TYPE")]
    pub content_type: Option<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub wait: WaitChoice,
    /// Write the response body to this file
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<PathBuf>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: PythonCommon,
}

/// Flags of `kafkasend send-request`, as the Python client took them.
#[derive(Debug, Args, Clone, Default)]
pub struct SendRequestArgs {
    /// Path on the target API; the leading '/' is optional
    #[arg(short = 'e', long, value_name = "PATH")]
    pub endpoint: String,
    /// GET, POST, PUT, DELETE or PATCH
    #[arg(short = 'm', long, value_name = "METHOD", default_value = "GET", ignore_case = true,
          value_parser = PossibleValuesParser::new(["GET", "POST", "PUT", "DELETE", "PATCH"]))]
    pub method: String,
    /// Request header 'Name: value' (repeatable; a later one of the same name replaces an earlier one)
    #[arg(short = 'h', long = "header", value_name = "HEADER")]
    pub headers: Vec<String>,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub wait: WaitChoice,
    #[command(flatten)]
    #[allow(missing_docs)]
    pub common: PythonCommon,
}

/// Command line of `kafkasend-client`: the Python client's program name.
#[derive(Debug, Parser)]
#[command(
    name = "kafkasend-client",
    version,
    about = "The Python KafkaSend client's commands, run by kafkasend send (deprecated: use kafkasend send)"
)]
pub struct ClientCli {
    /// Log level for the command that follows: DEBUG, INFO, WARNING, ERROR
    #[arg(long = "log-level", value_name = "LEVEL")]
    pub log_level: Option<String>,
    #[allow(missing_docs)]
    #[command(subcommand)]
    pub command: ClientCommand,
}

/// Subcommands of `kafkasend-client`.
#[derive(Debug, Subcommand)]
pub enum ClientCommand {
    /// Upload a file as a multipart form (deprecated: kafkasend send FILE --multipart)
    #[command(disable_help_flag = true)]
    SendFile(Box<SendFileArgs>),
    /// Send a request without a body (deprecated: kafkasend send)
    #[command(disable_help_flag = true)]
    SendRequest(Box<SendRequestArgs>),
}

/// The headers as the Python client kept them: entries without `:` left
/// out (returned second, to be named), a later name replacing the value
/// of an earlier one (in its place; names compared without case).
pub(crate) fn python_headers(given: &[String]) -> (Vec<String>, Vec<String>) {
    let mut kept: Vec<(String, String)> = Vec::new();
    let mut dropped = Vec::new();
    for h in given {
        let Some((name, value)) = h.split_once(':') else {
            dropped.push(h.clone());
            continue;
        };
        let (name, value) = (name.trim().to_string(), value.trim().to_string());
        match kept.iter_mut().find(|(n, _)| n.eq_ignore_ascii_case(&name)) {
            Some(slot) => slot.1 = value,
            None => kept.push((name, value)),
        }
    }
    let kept = kept.into_iter().map(|(n, v)| format!("{n}: {v}")).collect();
    (kept, dropped)
}

/// The endpoint with the leading `/` the Python portal added itself.
fn with_slash(endpoint: &str) -> String {
    if endpoint.starts_with('/') {
        endpoint.to_string()
    } else {
        format!("/{endpoint}")
    }
}

/// `send`'s flags for a Python request without a body, and the headers
/// it dropped.
fn to_send(
    endpoint: &str,
    method: &str,
    headers: &[String],
    wait: &WaitChoice,
    common: &PythonCommon,
) -> (SendArgs, Vec<String>) {
    let (headers, dropped) = python_headers(headers);
    let args = SendArgs {
        endpoint: with_slash(endpoint),
        method: Some(method.to_ascii_uppercase()),
        headers,
        field: "file".into(),
        no_wait: wait.no_wait,
        timeout: common.timeout,
        signing_key: common.signing_key.clone(),
        signature_ttl_secs: common.signature_ttl_secs,
        client_log_level: common.client_log_level.clone(),
        kafka: common.kafka.clone(),
        ..SendArgs::default()
    };
    (args, dropped)
}

impl SendFileArgs {
    /// `send`'s flags for this upload, and the headers dropped.
    pub(crate) fn to_send(&self) -> (SendArgs, Vec<String>) {
        let (base, dropped) = to_send(
            &self.endpoint,
            &self.method,
            &self.headers,
            &self.wait,
            &self.common,
        );
        let args = SendArgs {
            file: Some(self.file.clone()),
            multipart: true,
            content_type: self.content_type.clone(),
            output: self.output.clone(),
            ..base
        };
        (args, dropped)
    }
}

impl SendRequestArgs {
    /// `send`'s flags for this request, and the headers dropped.
    pub(crate) fn to_send(&self) -> (SendArgs, Vec<String>) {
        to_send(
            &self.endpoint,
            &self.method,
            &self.headers,
            &self.wait,
            &self.common,
        )
    }
}

/// The `kafkasend send` line that does what `args` do (Kafka options and
/// settings by variable carry over as they are, so they are not repeated).
pub(crate) fn equivalent(args: &SendArgs) -> String {
    let mut words: Vec<String> = vec!["kafkasend".into(), "send".into()];
    if let Some(file) = &args.file {
        words.push(file.to_string_lossy().into_owned());
    }
    words.extend(["--endpoint".into(), args.endpoint.clone()]);
    if let Some(m) = &args.method {
        words.extend(["-X".into(), m.clone()]);
    }
    if args.multipart {
        words.push("--multipart".into());
    }
    if let Some(t) = &args.content_type {
        words.extend(["--content-type".into(), t.clone()]);
    }
    for h in &args.headers {
        words.extend(["-H".into(), crate::cli::python::shown_header(h)]);
    }
    if args.no_wait {
        words.push("--no-wait".into());
    }
    if let Some(o) = &args.output {
        words.extend(["-o".into(), o.to_string_lossy().into_owned()]);
    }
    if let Some(l) = &args.client_log_level {
        words.extend(["--log-level".into(), l.clone()]);
    }
    let quoted: Vec<String> = words.iter().map(|w| shell_quote(w)).collect();
    quoted.join(" ")
}

/// Runs a Python command: the deprecation hint and the dropped headers on
/// stderr, then `send`; an answer with any HTTP status exits 0, as the
/// Python client did, so scripts that took 0 as "got an answer" still work.
fn run_python(name: &str, args: SendArgs, dropped: &[String]) -> ExitCode {
    let hint = crate::send::ui::one_line(&equivalent(&args));
    eprintln!(
        "kafkasend {name}: deprecated (the Python client's command); the same with send: {hint}"
    );
    if !dropped.is_empty() {
        let shown: Vec<String> = dropped.iter().map(|d| shell_quote(d)).collect();
        eprintln!(
            "kafkasend {name}: warning: not sending {}: a header must look like 'Name: value' (the Python client dropped such entries without a word)",
            crate::send::ui::one_line(&shown.join(", "))
        );
    }
    match run_send(&args) {
        code if code == ExitCode::from(crate::send::EXIT_HTTP_ERROR) => ExitCode::SUCCESS,
        code => code,
    }
}

/// `kafkasend send-file`.
pub(crate) fn run_send_file(a: &SendFileArgs) -> ExitCode {
    let (args, dropped) = a.to_send();
    run_python("send-file", args, &dropped)
}

/// `kafkasend send-request`.
pub(crate) fn run_send_request(a: &SendRequestArgs) -> ExitCode {
    let (args, dropped) = a.to_send();
    run_python("send-request", args, &dropped)
}

/// The program this binary runs as, by the base name it was started under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Program {
    /// `kafkasend`.
    Kafkasend,
    /// `kafkasend-client`: the Python client's commands.
    Client,
    /// `kafkasend-portal`: `kafkasend portal`.
    Portal,
}

/// Which program `argv0` names (a path's base name; `.exe` ignored).
pub(crate) fn program(argv0: Option<&OsString>) -> Program {
    let base = argv0
        .map(std::path::Path::new)
        .and_then(|p| p.file_stem())
        .and_then(|s| s.to_str())
        .unwrap_or("kafkasend");
    match base {
        "kafkasend-client" => Program::Client,
        "kafkasend-portal" => Program::Portal,
        _ => Program::Kafkasend,
    }
}

/// The command line of `kafkasend-client`, each setting's default in its
/// flag's help.
pub(crate) fn client_command() -> clap::Command {
    use clap::CommandFactory as _;
    ["send-file", "send-request"]
        .into_iter()
        .fold(ClientCli::command(), |cmd, name| {
            cmd.mut_subcommand(name, crate::cli::defaults::annotate)
        })
}

/// Runs `kafkasend-client ARGS`: `--log-level` before the command applies
/// to it unless the command's own `--log-level` is given.
pub(crate) fn run_client(argv: &[OsString]) -> Result<ExitCode, clap::Error> {
    let m = client_command().try_get_matches_from(argv)?;
    let cli = ClientCli::from_arg_matches(&m)?;
    let own_flag = m.subcommand().is_some_and(|(_, sub)| {
        sub.value_source("client_log_level") == Some(ValueSource::CommandLine)
    });
    let outer = cli.log_level.filter(|_| !own_flag);
    Ok(match cli.command {
        ClientCommand::SendFile(mut a) => {
            if outer.is_some() {
                a.common.client_log_level = outer;
            }
            run_send_file(&a)
        }
        ClientCommand::SendRequest(mut a) => {
            if outer.is_some() {
                a.common.client_log_level = outer;
            }
            run_send_request(&a)
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(a: &[&str]) -> Vec<String> {
        a.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn headers_as_the_python_client_kept_them() {
        let (kept, dropped) = python_headers(&strings(&[
            "X-Trace: 1",
            "NoColon",
            "Accept:text/plain",
            "x-trace:  2 ",
            "Empty:",
            "",
        ]));
        assert_eq!(kept, ["X-Trace: 2", "Accept: text/plain", "Empty: "]);
        assert_eq!(dropped, ["NoColon", ""]);
    }

    #[test]
    fn send_file_becomes_a_multipart_send() {
        let a = SendFileArgs {
            file: "dir/hello world.txt".into(),
            endpoint: "api/upload".into(),
            method: "put".into(),
            headers: strings(&["X-A: 1", "junk"]),
            content_type: Some("text/plain".into()),
            wait: WaitChoice {
                wait: false,
                no_wait: true,
            },
            ..SendFileArgs::default()
        };
        let (s, dropped) = a.to_send();
        assert_eq!(dropped, ["junk"]);
        assert!(s.multipart && s.no_wait);
        assert_eq!(s.field, "file");
        assert_eq!(s.endpoint, "/api/upload");
        assert_eq!(s.method.as_deref(), Some("PUT"));
        assert_eq!(
            equivalent(&s),
            "kafkasend send 'dir/hello world.txt' --endpoint /api/upload -X PUT --multipart --content-type text/plain -H 'X-A: 1' --no-wait"
        );
    }

    #[test]
    fn program_names() {
        let name = |s: &str| program(Some(&OsString::from(s)));
        assert_eq!(name("/usr/local/bin/kafkasend-client"), Program::Client);
        assert_eq!(name("kafkasend-portal"), Program::Portal);
        assert_eq!(name("./target/debug/kafkasend"), Program::Kafkasend);
        assert_eq!(name("kafkasend-clientx"), Program::Kafkasend);
        assert_eq!(program(None), Program::Kafkasend);
    }
}
