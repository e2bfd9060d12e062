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
            .cloned()
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
    /// flag, env, file or default.
    pub source: &'static str,
    /// The value, `(redacted)` for secrets, `(not set)` when absent.
    pub value: String,
}

/// Resolves what to show: sections of rows, in flag order. With a side, the
/// settings are first checked as that command checks them at start.
pub fn rows(args: &ShowArgs) -> anyhow::Result<Vec<(&'static str, Vec<Row>)>> {
    let m = &args.matches;
    let side = m.get_one::<Side>(SIDE).copied();
    let kafka_args = KafkaArgs::from_arg_matches(m)?;
    let file = load_file(kafka_args.config.as_deref())?;
    let file = serde_json::to_value(&file)?;
    match side {
        Some(Side::Portal) => {
            resolve_portal(&PortalArgs::from_arg_matches(m)?)?;
        }
        Some(Side::Send) => {
            let send = SendArgs {
                kafka: kafka_args,
                timeout: m.get_one::<u64>("timeout").copied(),
                signing_key: m.get_one::<PathBuf>("signing_key").cloned(),
                signature_ttl_secs: m.get_one::<u64>("signature_ttl_secs").copied(),
                ..SendArgs::default()
            };
            resolve_send(&send)?;
        }
        None => {}
    }

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
            .map(|a| row(a, m, &file))
            .collect();
        sections.push((title, rows));
    }
    Ok(sections)
}

/// A setting's value as `config show` prints it: secrets redacted, and
/// credentials inside URLs hidden.
fn shown(secret: bool, value: String) -> String {
    if secret {
        "(redacted)".into()
    } else {
        crate::cli::portal::without_userinfo(&value).into_owned()
    }
}

/// The row of one setting: flag or env as clap saw it, else the file's key
/// of the same name, else the default from the help text.
fn row(arg: &Arg, m: &ArgMatches, file: &serde_json::Value) -> Row {
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
            source,
            value: shown(secret, value),
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
            source: "file",
            value: shown(secret, value),
        };
    }
    Row {
        name,
        source: "default",
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
    let mut out = String::from(
        "# Effective settings; precedence: flag > env > file > default.\n\
         # Secrets are redacted; key files are shown by path, never read into this output.\n",
    );
    for (title, rows) in sections {
        out.push_str(&format!("\n[{title}]\n"));
        for r in rows {
            out.push_str(&format!(
                "{:<width$}  {:<7}  {}\n",
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
                source: "flag",
                value: "b:1".into()
            }
        );
        let secret = find(&s, "OAUTH2_CLIENT_SECRET");
        assert_eq!(
            (secret.source, secret.value.as_str()),
            ("flag", "(redacted)")
        );
        let timeout = find(&s, "KAFKA_TIMEOUT_SECS");
        assert_eq!((timeout.source, timeout.value.as_str()), ("default", "30"));
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
}
