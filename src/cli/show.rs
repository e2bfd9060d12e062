//! `kafkasend config show`: the effective settings and where each came from.
//!
//! The command accepts every setting flag of `kafkasend portal` and
//! `kafkasend send` (and reads the same environment variables and
//! `--config` file), so what it prints is what those commands would use.
//! Nothing here restates a setting: the flags are taken from
//! [`PortalArgs`] and [`SendArgs`] themselves, the source of a flag or
//! environment value from clap's [`ArgMatches::value_source`], file values
//! from [`load_file`] under the same key as the flag's id, and defaults
//! from the `[default: ...]` at the end of each flag's help.
//!
//! Secrets (flags declared with `hide_env_values`) are printed as
//! `(redacted)`; key files are settings by path, and their contents are
//! never read into the output.

use std::ffi::OsStr;
use std::path::PathBuf;

use clap::parser::ValueSource;
use clap::{Arg, ArgMatches, Args, Command, FromArgMatches, Subcommand, ValueEnum};

use crate::cli::file::load_file;
use crate::cli::kafka::KafkaArgs;
use crate::cli::portal::{resolve_portal, PortalArgs};
use crate::cli::python::{self, process_env, Env, Role};
use crate::cli::send::{resolve_send, SendArgs};

/// Id of the positional that picks a side.
const SIDE: &str = "side";

/// Which command's settings to show (and check).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Side {
    /// `kafkasend portal`
    Portal,
    /// `kafkasend send`
    Send,
}

/// Subcommands of `kafkasend config`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective settings and where each came from (flag, env, file, default); secrets redacted.
    #[command(after_help = "\
Examples:
  kafkasend config show
  kafkasend config show portal --config portal.toml
  KAFKA_BOOTSTRAP_SERVERS=kafka:9092 kafkasend config show send

With a side (portal or send), the settings are also checked as that command
checks them at start; a bad value is an error naming the setting.")]
    Show(ShowArgs),
}

/// Flags of `kafkasend config show`: a side, then every setting flag of
/// `portal` and `send`. Keeps the parsed matches, since the source of each
/// value is what this command is about.
#[derive(Debug, Clone)]
pub struct ShowArgs {
    matches: ArgMatches,
}

impl FromArgMatches for ShowArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(Self {
            matches: matches.clone(),
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.matches = matches.clone();
        Ok(())
    }
}

impl Args for ShowArgs {
    fn augment_args(cmd: Command) -> Command {
        let cmd = cmd.arg(
            Arg::new(SIDE)
                .value_name("SIDE")
                .value_parser(clap::builder::EnumValueParser::<Side>::new())
                .help("Show (and check) only this command's settings: portal or send [default: both, unchecked]"),
        );
        let cmd = PortalArgs::augment_args(cmd);
        let have: Vec<clap::Id> = cmd.get_arguments().map(|a| a.get_id().clone()).collect();
        // The send-only settings: those with an environment variable, which
        // are the ones a file or the environment can set.
        let send_only: Vec<Arg> = send_command()
            .get_arguments()
            .filter(|a| a.get_env().is_some() && !have.contains(a.get_id()))
            .map(|a| match a.get_id().as_str() {
                // send's --log-level is also the portal's flag; here it
                // goes by its file key.
                "client_log_level" => a.clone().long("client-log-level"),
                "client_compression" => a.clone().long("client-compression"),
                _ => a.clone(),
            })
            .collect();
        crate::cli::defaults::annotate(cmd.args(send_only))
    }

    fn augment_args_for_update(cmd: Command) -> Command {
        Self::augment_args(cmd)
    }
}

fn send_command() -> Command {
    SendArgs::augment_args(Command::new("send"))
}

/// Arg ids of the given flags.
pub(crate) fn ids(cmd: &Command) -> Vec<clap::Id> {
    cmd.get_arguments().map(|a| a.get_id().clone()).collect()
}

/// One setting as shown.
#[derive(Debug, PartialEq, Eq)]
pub struct Row {
    /// Environment variable (or flag, for the few without one).
    pub name: String,
    /// flag, env, file or default; `env NAME` for a Python tool's variable.
    pub source: String,
    /// The value, `(redacted)` for secrets, `(not set)` when absent.
    pub value: String,
}

/// Resolves what to show: sections of rows, in flag order. With a side, the
/// settings are first checked as that command checks them at start.
pub fn rows(args: &ShowArgs) -> anyhow::Result<Vec<(&'static str, Vec<Row>)>> {
    rows_with(args, &process_env)
}

/// [`rows`], with the Python tool's variables looked up in `env`.
pub(crate) fn rows_with(
    args: &ShowArgs,
    env: Env<'_>,
) -> anyhow::Result<Vec<(&'static str, Vec<Row>)>> {
    let m = &args.matches;
    let side = m.get_one::<Side>(SIDE).copied();
    // The start-up warnings of the portal's endpoint patterns, when checked.
    let mut pattern_notes: Vec<Row> = Vec::new();
    // The route table, in the order routes are tried, when checked.
    let mut route_rows: Vec<Row> = Vec::new();
    // The portal's sealing key ids and their files, when checked.
    let mut sealing_rows: Vec<Row> = Vec::new();
    let kafka_args = KafkaArgs::from_arg_matches(m)?;
    let file = load_file(kafka_args.config.as_deref())?;
    // Without the portal's side the routes are listed as written, unchecked.
    if side.is_none() {
        route_rows = file
            .routes
            .iter()
            .flatten()
            .map(|r| Row {
                name: format!("route {}", r.name),
                source: r
                    .line
                    .map_or_else(|| "file".into(), |n| format!("line {n}")),
                value: format!(
                    "{}{} -> {} (unchecked: add `portal` to check)",
                    if r.methods.is_empty() {
                        String::new()
                    } else {
                        format!("{} ", r.methods.join(","))
                    },
                    r.path_match,
                    crate::cli::routes::without_userinfo(&r.target)
                ),
            })
            .collect();
    }
    let file = serde_json::to_value(&file)?;
    match side {
        Some(Side::Portal) => {
            let mut portal = PortalArgs::from_arg_matches(m)?;
            let filled = python::fill_portal(&mut portal, env)?;
            let settings = resolve_portal(&portal).map_err(|e| filled.explain(e))?;
            route_rows = settings
                .routes
                .iter()
                .map(|r| Row {
                    name: format!("route {}", r.name),
                    // The default route is PORTAL_TARGET_API_URL's, shown above.
                    source: r
                        .line
                        .map_or_else(|| "portal".into(), |n| format!("line {n}")),
                    value: r.summary(),
                })
                .collect();
            sealing_rows = settings
                .sealing
                .iter()
                .map(|s| Row {
                    name: "PORTAL_SEALING_KEY_FILE".into(),
                    source: "portal".into(),
                    value: s.describe(),
                })
                .collect();
            pattern_notes = settings
                .policy
                .endpoints
                .iter()
                .filter_map(|rule| rule.python_difference())
                .map(|note| Row {
                    name: "PORTAL_ALLOWED_ENDPOINTS".into(),
                    source: "note".into(),
                    value: note,
                })
                .collect();
        }
        Some(Side::Send) => {
            let mut send = SendArgs {
                kafka: kafka_args,
                timeout: m.get_one::<u64>("timeout").copied(),
                signing_key: m.get_one::<PathBuf>("signing_key").cloned(),
                signature_ttl_secs: m.get_one::<u64>("signature_ttl_secs").copied(),
                client_log_level: m.get_one::<String>("client_log_level").cloned(),
                client_compression: m.get_one::<String>("client_compression").cloned(),
                client_digest: m.get_one::<String>("client_digest").cloned(),
                seal_to: m.get_one::<PathBuf>("seal_to").cloned(),
                job_key_dir: m.get_one::<PathBuf>("job_key_dir").cloned(),
                ..SendArgs::default()
            };
            let filled = crate::cli::send::fill_send(&mut send, env)?;
            resolve_send(&send).map_err(|e| filled.explain(e))?;
        }
        None => {}
    }
    let role = match side {
        Some(Side::Portal) => Role::Portal,
        Some(Side::Send) => Role::Client,
        None => Role::Both,
    };
    let python_values = python::applied_values(role, env)?;

    let all = ShowArgs::augment_args(Command::new("show"));
    let kafka_ids = ids(&KafkaArgs::augment_args(Command::new("kafka")));
    let send_ids = ids(&send_command());
    let mut sections: Vec<(&'static str, Vec<Row>)> = Vec::new();
    let wanted = [
        ("kafka (portal and send)", None),
        ("portal", Some(Side::Portal)),
        ("send", Some(Side::Send)),
    ];
    for (title, only) in wanted {
        if only.is_some() && side.is_some() && only != side {
            continue;
        }
        let rows: Vec<Row> = all
            .get_arguments()
            .filter(|a| a.get_id() != SIDE)
            .filter(|a| {
                let id = a.get_id();
                match only {
                    None => kafka_ids.contains(id),
                    Some(Side::Portal) => !kafka_ids.contains(id) && !send_ids.contains(id),
                    Some(Side::Send) => !kafka_ids.contains(id) && send_ids.contains(id),
                }
            })
            .map(|a| row(a, m, &file, &python_values))
            .collect();
        sections.push((title, rows));
    }
    if !route_rows.is_empty() {
        sections.push(("routes (tried in this order)", route_rows));
    }
    if !sealing_rows.is_empty() {
        sections.push(("sealing keys (ids only)", sealing_rows));
    }
    if !pattern_notes.is_empty() {
        sections.push((
            "notes (read differently than in the Python tool)",
            pattern_notes,
        ));
    }
    let ignored = ignored_rows(role, env, &python_values, &sections);
    if !ignored.is_empty() {
        sections.push(("ignored (Python KafkaSend variables)", ignored));
    }
    Ok(sections)
}

/// The Python variables set that give no value: those with no meaning
/// here, and those whose Rust name a flag or variable set too.
fn ignored_rows(
    role: Role,
    env: Env<'_>,
    python_values: &[(&'static str, &'static str, python::Value)],
    sections: &[(&'static str, Vec<Row>)],
) -> Vec<Row> {
    let shown = |name: &str| {
        sections
            .iter()
            .flat_map(|(_, rows)| rows)
            .find(|r| r.name == name)
    };
    let mut rows: Vec<Row> = python_values
        .iter()
        .filter_map(|(rust, python, _)| {
            let winner = shown(rust).filter(|r| r.source == "flag" || r.source == "env")?;
            Some(Row {
                name: python.to_string(),
                source: "env".into(),
                value: format!("ignored: {} is set ({}) and wins", rust, winner.source),
            })
        })
        .collect();
    rows.extend(python::unused_set(role, env).into_iter().map(|u| Row {
        name: u.python.into(),
        source: "env".into(),
        value: format!("ignored: {}", u.instead),
    }));
    rows
}

/// A setting's value as `config show` prints it: secrets redacted, and
/// credentials inside URLs hidden.
fn shown(secret: bool, value: String) -> String {
    if secret {
        "(redacted)".into()
    } else {
        crate::cli::routes::without_userinfo(&value).into_owned()
    }
}

/// The row of one setting: flag or env as clap saw it, else a Python
/// variable that sets it, else the file's key of the same name, else the
/// default from the help text.
fn row(
    arg: &Arg,
    m: &ArgMatches,
    file: &serde_json::Value,
    python_values: &[(&'static str, &'static str, python::Value)],
) -> Row {
    let id = arg.get_id().as_str();
    let name = match (arg.get_env(), arg.get_long()) {
        (Some(env), _) => env.to_string_lossy().into_owned(),
        (None, Some(long)) => format!("--{long}"),
        (None, None) => id.to_string(),
    };
    let secret = arg.is_hide_env_values_set();
    let given = match m.value_source(id) {
        Some(ValueSource::CommandLine) => Some("flag"),
        Some(ValueSource::EnvVariable) => Some("env"),
        _ => None,
    };
    if let Some(source) = given {
        let value = m
            .get_raw(id)
            .map(|vals| {
                vals.map(OsStr::to_string_lossy)
                    .collect::<Vec<_>>()
                    .join(",")
            })
            .unwrap_or_default();
        return Row {
            name,
            source: source.into(),
            value: shown(secret, value),
        };
    }
    if let Some((_, python, value)) = python_values.iter().find(|(rust, _, _)| *rust == name) {
        return Row {
            name,
            source: format!("env {python}"),
            value: shown(secret, value.to_string()),
        };
    }
    let from_file = file.get(id).filter(|v| !v.is_null());
    if let Some(v) = from_file {
        let value = match v {
            serde_json::Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        return Row {
            name,
            source: "file".into(),
            value: shown(secret, value),
        };
    }
    Row {
        name,
        source: "default".into(),
        value: default_from_help(arg).unwrap_or_else(|| "(not set)".into()),
    }
}

/// The `[default: ...]` a flag's help ends with, if any.
fn default_from_help(arg: &Arg) -> Option<String> {
    let help = arg.get_help()?.to_string();
    let start = help.rfind("[default: ")? + "[default: ".len();
    let rest = help[start..].trim_end();
    Some(rest.strip_suffix(']').unwrap_or(rest).to_string())
}

/// The text `kafkasend config show` prints.
pub fn render(sections: &[(&'static str, Vec<Row>)]) -> String {
    let width = sections
        .iter()
        .flat_map(|(_, rows)| rows.iter().map(|r| r.name.len()))
        .max()
        .unwrap_or(0);
    let source_width = sections
        .iter()
        .flat_map(|(_, rows)| rows.iter().map(|r| r.source.len()))
        .max()
        .unwrap_or(0)
        .max(7);
    let mut out = String::from(
        "# Effective settings; precedence: flag > env > file > default.\n\
         # Secrets are redacted; key files are shown by path, never read into this output.\n",
    );
    for (title, rows) in sections {
        out.push_str(&format!("\n[{title}]\n"));
        for r in rows {
            out.push_str(&format!(
                "{:<width$}  {:<source_width$}  {}\n",
                r.name, r.source, r.value
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn show(args: &[&str]) -> ShowArgs {
        let cmd = ShowArgs::augment_args(Command::new("show").no_binary_name(true));
        ShowArgs::from_arg_matches(&cmd.try_get_matches_from(args).unwrap()).unwrap()
    }

    fn find<'a>(sections: &'a [(&'static str, Vec<Row>)], name: &str) -> &'a Row {
        sections
            .iter()
            .flat_map(|(_, r)| r)
            .find(|r| r.name == name)
            .unwrap_or_else(|| panic!("{name} not shown"))
    }

    #[test]
    fn every_setting_with_a_variable_is_a_file_key() {
        let keys = serde_json::to_value(crate::cli::file::FileConfig::default()).unwrap();
        let cmd = ShowArgs::augment_args(Command::new("show"));
        for a in cmd.get_arguments() {
            let id = a.get_id().as_str();
            if id == SIDE || id == "config" {
                continue;
            }
            assert!(
                keys.get(id).is_some(),
                "config show cannot find the file key of '{id}': name the FileConfig field like the flag"
            );
        }
    }

    #[test]
    fn flags_defaults_and_secrets() {
        let s = rows(&show(&[
            "--bootstrap-servers",
            "b:1",
            "--oauth2-client-secret",
            "hunter2",
            "--target-api-url",
            "https://api:hunter3@api.example/v1",
        ]))
        .unwrap();
        assert_eq!(
            find(&s, "KAFKA_BOOTSTRAP_SERVERS"),
            &Row {
                name: "KAFKA_BOOTSTRAP_SERVERS".into(),
                source: "flag".into(),
                value: "b:1".into()
            }
        );
        let secret = find(&s, "OAUTH2_CLIENT_SECRET");
        assert_eq!(
            (secret.source.as_str(), secret.value.as_str()),
            ("flag", "(redacted)")
        );
        let timeout = find(&s, "KAFKA_TIMEOUT_SECS");
        assert_eq!(
            (timeout.source.as_str(), timeout.value.as_str()),
            ("default", "30")
        );
        let url = find(&s, "OAUTH2_TOKEN_URL");
        assert_eq!(url.value, "(not set)");
        assert!(!render(&s).contains("hunter2"));
        let target = find(&s, "PORTAL_TARGET_API_URL");
        assert_eq!(target.value, "https://***@api.example/v1");
        assert!(!render(&s).contains("hunter3"));
    }

    #[test]
    fn a_side_limits_and_checks() {
        let s = rows(&show(&["send"])).unwrap();
        assert_eq!(
            s.iter().map(|(t, _)| *t).collect::<Vec<_>>(),
            ["kafka (portal and send)", "send"]
        );
        let err = rows(&show(&["portal"])).unwrap_err();
        assert!(
            format!("{err:#}").contains("PORTAL_TARGET_API_URL"),
            "{err:#}"
        );
    }

    #[test]
    fn portal_patterns_read_differently_are_noted() {
        let s = rows(&show(&[
            "portal",
            "--target-api-url",
            "http://127.0.0.1:1",
            "--use-oauth",
            "false",
            "--allowed-endpoints",
            "GET /api/*, POST /up",
        ]))
        .unwrap();
        let (_, notes) = s
            .iter()
            .find(|(t, _)| t.starts_with("notes"))
            .expect("a notes section");
        assert_eq!(notes.len(), 1);
        assert!(
            notes[0].value.contains("write 'GET /api/*/**'"),
            "{:?}",
            notes[0]
        );
    }

    #[test]
    fn portal_sealing_keys_show_by_file_and_id_never_by_bytes() {
        let dir = tempfile::tempdir().unwrap();
        let key = crate::protocol::seal::SecretKey::generate();
        let pem = key.to_pem().to_string();
        let path = dir.path().join("portal.key");
        std::fs::write(&path, &pem).unwrap();
        let file = path.to_string_lossy().into_owned();
        let s = rows(&show(&[
            "portal",
            "--target-api-url",
            "http://127.0.0.1:1",
            "--use-oauth",
            "false",
            "--sealing-key-file",
            &file,
        ]))
        .unwrap();
        let (_, keys) = s
            .iter()
            .find(|(t, _)| t.starts_with("sealing keys"))
            .expect("a sealing keys section");
        let id = key.public().id().to_string();
        assert!(keys[0].value.contains(&id), "{:?}", keys[0]);
        assert!(keys[0].value.contains("portal.key"), "{:?}", keys[0]);
        let text = render(&s);
        for line in pem.lines().filter(|l| !l.starts_with("-----")) {
            assert!(!text.contains(line), "{text}");
        }
    }

    #[test]
    fn python_variables_show_under_their_own_name() {
        let env = |k: &str| {
            [
                ("PORTAL_JOB_TIMEOUT_SECONDS", "5"),
                ("KAFKA_REQUEST_TIMEOUT_MS", "2500"),
                ("KAFKA_MAX_POLL_RECORDS", "10"),
                ("PORTAL_JOB_MAX_AGE_SECONDS", "900"),
                ("CLIENT_LOG_LEVEL", "info"),
            ]
            .iter()
            .find(|(n, _)| *n == k)
            .map(|(_, v)| v.to_string())
        };
        let args = show(&[
            "portal",
            "--target-api-url",
            "http://127.0.0.1:1",
            "--use-oauth",
            "false",
            "--max-job-age-secs",
            "60",
        ]);
        let s = rows_with(&args, &env).unwrap();
        let timeout = find(&s, "PORTAL_REQUEST_TIMEOUT_SECS");
        assert_eq!(
            (timeout.source.as_str(), timeout.value.as_str()),
            ("env PORTAL_JOB_TIMEOUT_SECONDS", "5")
        );
        let kafka = find(&s, "KAFKA_TIMEOUT_SECS");
        assert_eq!(
            (kafka.source.as_str(), kafka.value.as_str()),
            ("env KAFKA_REQUEST_TIMEOUT_MS", "3")
        );
        let age = find(&s, "PORTAL_MAX_JOB_AGE_SECS");
        assert_eq!((age.source.as_str(), age.value.as_str()), ("flag", "60"));
        let lost = find(&s, "PORTAL_JOB_MAX_AGE_SECONDS");
        assert!(
            lost.value.contains("PORTAL_MAX_JOB_AGE_SECS is set"),
            "{lost:?}"
        );
        let unused = find(&s, "KAFKA_MAX_POLL_RECORDS");
        assert!(unused.value.starts_with("ignored: "), "{unused:?}");
        assert!(unused.value.contains("PORTAL_MAX_CONCURRENT_JOBS"));
        // The client's variable is not the portal's business.
        assert!(!render(&s).contains("CLIENT_LOG_LEVEL"), "{}", render(&s));

        let s = rows_with(&show(&["send"]), &env).unwrap();
        let level = find(&s, "KAFKASEND_LOG_LEVEL");
        assert_eq!(
            (level.source.as_str(), level.value.as_str()),
            ("env CLIENT_LOG_LEVEL", "INFO")
        );
        assert!(!render(&s).contains("KAFKA_MAX_POLL_RECORDS"));
    }

    #[test]
    fn a_bad_python_value_fails_the_side_check_by_its_name() {
        let env = |k: &str| (k == "KAFKA_SESSION_TIMEOUT_MS").then(|| "2000".to_string());
        let args = show(&[
            "portal",
            "--target-api-url",
            "http://127.0.0.1:1",
            "--use-oauth",
            "false",
        ]);
        let err = format!("{:#}", rows_with(&args, &env).unwrap_err());
        assert!(
            err.starts_with("KAFKA_SESSION_TIMEOUT_MS=2000 is read as PORTAL_SESSION_TIMEOUT_SECS: PORTAL_SESSION_TIMEOUT_SECS must be between 6 and 1800"),
            "{err}"
        );
    }
}
