//! The Python KafkaSend's environment variables: the one table of the names
//! it read that this tool reads differently, and of those it ignores.
//!
//! clap reads only our own names, so a Python name is applied after parsing:
//! it fills a setting's field that neither a flag nor our own variable set.
//! It therefore beats the `--config` file, as any environment value does,
//! and loses to the Rust name. Variables with no meaning here are named in
//! one warning each, never passed over in silence.

use anyhow::bail;

use crate::cli::portal::{log_filter, PortalArgs};

/// Which command a Python variable is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// `kafkasend portal`.
    Portal,
    /// `send`, `wait` and the Python client's commands.
    Client,
    /// Both sides.
    Both,
}

impl Role {
    /// Whether a variable of this role concerns `command`.
    pub(crate) fn concerns(self, command: Role) -> bool {
        self == Role::Both || command == Role::Both || self == command
    }
}

/// How a Python value becomes the value of the Rust setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Read {
    /// Whole seconds, as both tools write them.
    Secs,
    /// Milliseconds, rounded up to whole seconds: a timeout a little longer
    /// than asked for never fails where the Python one worked.
    Millis,
    /// Kafka's `auto.offset.reset`: `earliest` or `latest`.
    OffsetReset,
    /// A log level name, as `PORTAL_LOG_LEVEL` takes them.
    Level,
}

/// A Python variable that sets one of our settings.
#[derive(Debug)]
pub(crate) struct Alias {
    /// The Python tool's name.
    pub python: &'static str,
    /// The environment variable of the setting it fills here.
    pub rust: &'static str,
    /// The command that reads it.
    pub role: Role,
    /// How its value is read.
    pub read: Read,
}

/// A Python variable that means nothing here, and what to use instead.
#[derive(Debug)]
pub(crate) struct Unused {
    /// The Python tool's name.
    pub python: &'static str,
    /// The command a user would expect to read it.
    pub role: Role,
    /// Why it is not needed, or what to set instead.
    pub instead: &'static str,
}

/// Python names read as one of our settings (docs/configuration.md lists
/// them; a unit test keeps the two alike).
pub(crate) const ALIASES: &[Alias] = &[
    Alias {
        python: "PORTAL_JOB_TIMEOUT_SECONDS",
        rust: "PORTAL_REQUEST_TIMEOUT_SECS",
        role: Role::Portal,
        read: Read::Secs,
    },
    Alias {
        python: "PORTAL_JOB_MAX_AGE_SECONDS",
        rust: "PORTAL_MAX_JOB_AGE_SECS",
        role: Role::Portal,
        read: Read::Secs,
    },
    Alias {
        python: "KAFKA_SESSION_TIMEOUT_MS",
        rust: "PORTAL_SESSION_TIMEOUT_SECS",
        role: Role::Portal,
        read: Read::Millis,
    },
    Alias {
        python: "KAFKA_AUTO_OFFSET_RESET",
        rust: "PORTAL_START_FROM",
        role: Role::Portal,
        read: Read::OffsetReset,
    },
    Alias {
        python: "KAFKA_REQUEST_TIMEOUT_MS",
        rust: "KAFKA_TIMEOUT_SECS",
        role: Role::Both,
        read: Read::Millis,
    },
    Alias {
        python: "CLIENT_LOG_LEVEL",
        rust: "KAFKASEND_LOG_LEVEL",
        role: Role::Client,
        read: Read::Level,
    },
];

/// Python names with no meaning here.
pub(crate) const UNUSED: &[Unused] = &[
    Unused {
        python: "KAFKA_MAX_POLL_INTERVAL_MS",
        role: Role::Portal,
        instead: "heartbeats here do not wait for API calls, so a slow call never costs the group membership; PORTAL_REQUEST_TIMEOUT_SECS bounds one call",
    },
    Unused {
        python: "KAFKA_MAX_POLL_RECORDS",
        role: Role::Portal,
        instead: "use PORTAL_MAX_CONCURRENT_JOBS to bound the jobs running at once",
    },
];

/// Looks an environment variable up; `None` when unset or empty (as clap
/// takes an empty variable).
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// The process environment, as [`Env`].
pub(crate) fn process_env(name: &str) -> Option<String> {
    std::env::var_os(name)
        .map(|v| v.to_string_lossy().into_owned())
        .filter(|v| !v.is_empty())
}

/// A Python value read as the Rust setting's.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Value {
    /// Seconds.
    Secs(u64),
    /// Text, e.g. `earliest` or a level name.
    Text(String),
}

impl std::fmt::Display for Value {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Value::Secs(s) => write!(f, "{s}"),
            Value::Text(t) => f.write_str(t),
        }
    }
}

impl Alias {
    /// Reads `raw`, the Python variable's value; the error names both names.
    pub(crate) fn value(&self, raw: &str) -> anyhow::Result<Value> {
        let (python, rust) = (self.python, self.rust);
        let raw = raw.trim();
        match self.read {
            Read::Secs => match raw.parse::<u64>() {
                Ok(s) => Ok(Value::Secs(s)),
                Err(_) => bail!(
                    "{python} (read as {rust}): '{raw}' is not a whole number of seconds"
                ),
            },
            Read::Millis => match raw.parse::<u64>() {
                Ok(ms) => Ok(Value::Secs(ms.div_ceil(1000))),
                Err(_) => bail!(
                    "{python} (read as {rust}): '{raw}' is not a whole number of milliseconds"
                ),
            },
            Read::OffsetReset => match raw.to_ascii_lowercase().as_str() {
                v @ ("earliest" | "latest") => Ok(Value::Text(v.into())),
                _ => bail!(
                    "{python} (read as {rust}) must be earliest or latest, not '{raw}'; a group with no committed offset starts there"
                ),
            },
            Read::Level => match log_filter(python, raw) {
                Ok(_) => Ok(Value::Text(raw.to_ascii_uppercase())),
                Err(e) => Err(e.context(format!("{python} is read as {rust}"))),
            },
        }
    }
}

/// A start-up message about a Python variable.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Note {
    /// A warning (a variable with no meaning here); otherwise information
    /// (a Python name that lost to the Rust one).
    pub warn: bool,
    /// The message, naming the variable.
    pub text: String,
}

/// What [`fill`] did: the messages to show at start, and the Python
/// variables that set a value, to name them in an error about that value.
#[derive(Debug, Default)]
pub(crate) struct Filled {
    /// Start-up messages.
    pub notes: Vec<Note>,
    /// (Python name, its value, the Rust name it set).
    pub applied: Vec<(&'static str, String, &'static str)>,
}

impl Filled {
    /// `err`, with the Python variable named when the error is about the
    /// setting it filled: the user never wrote the Rust name.
    pub(crate) fn explain(&self, err: anyhow::Error) -> anyhow::Error {
        let text = format!("{err:#}");
        match self.applied.iter().find(|(_, _, rust)| text.contains(rust)) {
            Some((python, raw, rust)) => err.context(format!("{python}={raw} is read as {rust}")),
            None => err,
        }
    }
}

/// A setting's field that a Python variable may fill.
pub(crate) enum Slot<'a> {
    /// A number of seconds.
    Secs(&'a mut Option<u64>),
    /// Text.
    Text(&'a mut Option<String>),
}

impl Slot<'_> {
    fn is_set(&self) -> bool {
        match self {
            Slot::Secs(s) => s.is_some(),
            Slot::Text(t) => t.is_some(),
        }
    }

    fn set(self, v: Value) {
        match (self, v) {
            (Slot::Secs(s), Value::Secs(v)) => *s = Some(v),
            (Slot::Text(t), Value::Text(v)) => *t = Some(v),
            (Slot::Secs(s), Value::Text(v)) => *s = v.parse().ok(),
            (Slot::Text(t), Value::Secs(v)) => *t = Some(v.to_string()),
        }
    }
}

/// Fills what the Python variables of `role` set, through `slot`, which
/// gives the field of a Rust setting by its variable's name. (Each
/// command's module gives its own `slot`, so this one imports none.)
pub(crate) fn fill<A>(
    args: &mut A,
    role: Role,
    env: Env<'_>,
    slot: for<'a> fn(&'a mut A, &str) -> Option<Slot<'a>>,
) -> anyhow::Result<Filled> {
    let mut filled = Filled::default();
    for alias in ALIASES.iter().filter(|a| a.role.concerns(role)) {
        let Some(raw) = env(alias.python) else {
            continue;
        };
        let Some(field) = slot(args, alias.rust) else {
            bail!(
                "{} has no field for {} (a bug: the Python table and the flags differ)",
                alias.python,
                alias.rust
            );
        };
        // A bad value is an error even when the Rust name wins, as `config
        // show` finds it: a mistake in the environment is worth a word.
        let value = alias.value(&raw)?;
        if field.is_set() {
            filled.notes.push(Note {
                warn: false,
                text: format!(
                    "{} (the Python tool's name) is ignored: {} is set and wins",
                    alias.python, alias.rust
                ),
            });
            continue;
        }
        field.set(value);
        filled.applied.push((alias.python, raw, alias.rust));
    }
    filled.notes.extend(unused_notes(role, env));
    Ok(filled)
}

/// The Python variables set in `env` that mean nothing to `role`.
pub(crate) fn unused_set(role: Role, env: Env<'_>) -> Vec<&'static Unused> {
    UNUSED
        .iter()
        .filter(|u| u.role.concerns(role) && env(u.python).is_some())
        .collect()
}

/// One warning for each Python variable set that means nothing to `role`.
fn unused_notes(role: Role, env: Env<'_>) -> Vec<Note> {
    unused_set(role, env)
        .into_iter()
        .map(|u| Note {
            warn: true,
            text: format!(
                "{} (a Python KafkaSend setting) has no meaning here and is ignored: {}",
                u.python, u.instead
            ),
        })
        .collect()
}

/// Python variables that set a value for `role`, as `config show` lists
/// them: (Rust name, Python name, value), or an error for a bad value.
pub(crate) fn applied_values(
    role: Role,
    env: Env<'_>,
) -> anyhow::Result<Vec<(&'static str, &'static str, Value)>> {
    ALIASES
        .iter()
        .filter(|a| a.role.concerns(role))
        .filter_map(|a| env(a.python).map(|raw| (a, raw)))
        .map(|(a, raw)| Ok((a.rust, a.python, a.value(&raw)?)))
        .collect()
}

/// Fills `kafkasend portal`'s settings from the Python names.
pub(crate) fn fill_portal(a: &mut PortalArgs, env: Env<'_>) -> anyhow::Result<Filled> {
    fill(a, Role::Portal, env, |a, rust| {
        Some(match rust {
            "PORTAL_REQUEST_TIMEOUT_SECS" => Slot::Secs(&mut a.request_timeout_secs),
            "PORTAL_MAX_JOB_AGE_SECS" => Slot::Secs(&mut a.max_job_age_secs),
            "PORTAL_SESSION_TIMEOUT_SECS" => Slot::Secs(&mut a.session_timeout_secs),
            "PORTAL_START_FROM" => Slot::Text(&mut a.start_from),
            "KAFKA_TIMEOUT_SECS" => Slot::Secs(&mut a.kafka.kafka_timeout_secs),
            _ => return None,
        })
    })
}

/// The header that follows a `-h` in `kafkasend send`'s arguments, if one
/// does: the Python client's `-h 'Name: value'` habit, which clap would take
/// as a request for help, exiting 0 without sending anything.
pub(crate) fn header_after_help_flag(argv: &[std::ffi::OsString]) -> Option<String> {
    if argv.get(1).is_none_or(|a| a != "send") {
        return None;
    }
    let args = argv.get(2..)?;
    let before_end = args.iter().take_while(|a| *a != "--");
    let mut pairs = before_end.zip(args.iter().skip(1));
    pairs.find_map(|(flag, next)| {
        let next = next.to_str()?;
        (asks_for_help(flag.to_str()?) && looks_like_header(next)).then(|| next.to_string())
    })
}

/// `-h`, or a cluster of send's flags without values that ends in it
/// (`-vh`, `-iqh`), which clap also reads as a request for help.
fn asks_for_help(flag: &str) -> bool {
    flag.strip_prefix('-')
        .and_then(|f| f.strip_suffix('h'))
        .is_some_and(|before| {
            !before.starts_with('-') && before.bytes().all(|b| b"viqs".contains(&b))
        })
}

/// A header as shown back to the user: the value of one no portal forwards
/// (a credential, most likely) replaced, so a hint never copies it into a log.
pub(crate) fn shown_header(header: &str) -> String {
    match header.split_once(':') {
        Some((name, _)) if crate::protocol::request::never_forwarded(name.trim()) => {
            format!("{}: (hidden)", name.trim())
        }
        _ => header.to_string(),
    }
}

/// `Name: value`, `Name:value` or `Name:`, with a valid header name.
fn looks_like_header(s: &str) -> bool {
    s.split_once(':').is_some_and(|(name, _)| {
        !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
    })
}

/// `arg` as a POSIX shell reads it back: as it is when it holds only safe
/// characters, else in single quotes.
pub(crate) fn shell_quote(arg: &str) -> String {
    let safe = !arg.is_empty()
        && arg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"@%+=:,./_-".contains(&b));
    if safe {
        arg.to_string()
    } else {
        format!("'{}'", arg.replace('\'', "'\\''"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(n, _)| *n == k)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn every_portal_alias_has_a_field() {
        for alias in ALIASES {
            let value = match alias.read {
                Read::Secs => "7",
                Read::Millis => "7000",
                Read::OffsetReset => "earliest",
                Read::Level => "DEBUG",
            };
            let env = |k: &str| (k == alias.python).then(|| value.to_string());
            if alias.role.concerns(Role::Portal) {
                let filled = fill_portal(&mut PortalArgs::default(), &env).unwrap();
                assert_eq!(filled.applied.len(), 1, "{}", alias.python);
            }
        }
    }

    #[test]
    fn python_names_fill_unset_fields_only() {
        let env = env_of(&[
            ("PORTAL_JOB_TIMEOUT_SECONDS", "5"),
            ("PORTAL_JOB_MAX_AGE_SECONDS", "900"),
            ("KAFKA_SESSION_TIMEOUT_MS", "30000"),
            ("KAFKA_AUTO_OFFSET_RESET", "Earliest"),
            ("KAFKA_REQUEST_TIMEOUT_MS", "120001"),
            ("CLIENT_LOG_LEVEL", "debug"),
        ]);
        let mut a = PortalArgs::default();
        let filled = fill_portal(&mut a, &env).unwrap();
        assert_eq!(a.request_timeout_secs, Some(5));
        assert_eq!(a.max_job_age_secs, Some(900));
        assert_eq!(a.session_timeout_secs, Some(30));
        assert_eq!(a.start_from.as_deref(), Some("earliest"));
        // Rounded up: 120.001 s.
        assert_eq!(a.kafka.kafka_timeout_secs, Some(121));
        assert!(filled.notes.is_empty(), "{:?}", filled.notes);

        // The Rust name wins, and one line says so.
        let mut a = PortalArgs {
            request_timeout_secs: Some(60),
            ..PortalArgs::default()
        };
        let filled = fill_portal(&mut a, &env).unwrap();
        assert_eq!(a.request_timeout_secs, Some(60));
        assert_eq!(filled.notes.len(), 1, "{:?}", filled.notes);
        assert!(!filled.notes[0].warn);
        assert!(filled.notes[0].text.contains("PORTAL_JOB_TIMEOUT_SECONDS"));
        assert!(filled.notes[0].text.contains("PORTAL_REQUEST_TIMEOUT_SECS"));
        // A bad Python value is an error even then, as `config show` says.
        let bad = env_of(&[("PORTAL_JOB_TIMEOUT_SECONDS", "abc")]);
        let mut a = PortalArgs {
            request_timeout_secs: Some(60),
            ..PortalArgs::default()
        };
        let e = fill_portal(&mut a, &bad).unwrap_err().to_string();
        assert!(e.contains("PORTAL_JOB_TIMEOUT_SECONDS"), "{e}");
    }

    #[test]
    fn bad_python_values_name_the_python_variable() {
        let cases: &[(&'static [(&'static str, &'static str)], &str)] = &[
            (
                &[("KAFKA_AUTO_OFFSET_RESET", "none")],
                "KAFKA_AUTO_OFFSET_RESET (read as PORTAL_START_FROM) must be earliest or latest, not 'none'; a group with no committed offset starts there",
            ),
            (
                &[("KAFKA_SESSION_TIMEOUT_MS", "30s")],
                "KAFKA_SESSION_TIMEOUT_MS (read as PORTAL_SESSION_TIMEOUT_SECS): '30s' is not a whole number of milliseconds",
            ),
            (
                &[("PORTAL_JOB_TIMEOUT_SECONDS", "-1")],
                "PORTAL_JOB_TIMEOUT_SECONDS (read as PORTAL_REQUEST_TIMEOUT_SECS): '-1' is not a whole number of seconds",
            ),
        ];
        for (pairs, want) in cases {
            let err = fill_portal(&mut PortalArgs::default(), &env_of(pairs)).unwrap_err();
            assert_eq!(format!("{err:#}"), *want);
        }
    }

    #[test]
    fn unused_variables_warn_once_each() {
        let env = env_of(&[
            ("KAFKA_MAX_POLL_RECORDS", "10"),
            ("KAFKA_MAX_POLL_INTERVAL_MS", "300000"),
        ]);
        let filled = fill_portal(&mut PortalArgs::default(), &env).unwrap();
        assert_eq!(filled.notes.len(), 2);
        assert!(filled.notes.iter().all(|n| n.warn));
        assert!(filled.notes[0]
            .text
            .starts_with("KAFKA_MAX_POLL_INTERVAL_MS"));
        assert!(filled.notes[1].text.contains("PORTAL_MAX_CONCURRENT_JOBS"));
    }

    #[test]
    fn an_error_about_a_filled_setting_names_the_python_variable() {
        let env = env_of(&[("KAFKA_SESSION_TIMEOUT_MS", "3000")]);
        let filled = fill_portal(&mut PortalArgs::default(), &env).unwrap();
        let err = filled.explain(anyhow::anyhow!(
            "PORTAL_SESSION_TIMEOUT_SECS must be between 6 and 1800, not 3"
        ));
        assert_eq!(
            format!("{err:#}"),
            "KAFKA_SESSION_TIMEOUT_MS=3000 is read as PORTAL_SESSION_TIMEOUT_SECS: PORTAL_SESSION_TIMEOUT_SECS must be between 6 and 1800, not 3"
        );
        let other = filled.explain(anyhow::anyhow!("KAFKA_REQUEST_TOPIC is bad"));
        assert_eq!(format!("{other:#}"), "KAFKA_REQUEST_TOPIC is bad");
    }

    #[test]
    fn h_before_a_header_in_send_is_caught() {
        let argv = |a: &[&str]| -> Vec<std::ffi::OsString> {
            std::iter::once("kafkasend")
                .chain(a.iter().copied())
                .map(Into::into)
                .collect()
        };
        let caught = [
            &["send", "-e", "/x", "-h", "X-Trace: 1"][..],
            &["send", "f.txt", "-h", "Accept:text/plain", "-e", "/x"],
            &["send", "-h", "X-Empty:"],
            &["send", "-e", "/x", "-vh", "X-A: 1"],
            &["send", "-iqh", "X-A: 1"],
        ];
        for a in caught {
            assert!(header_after_help_flag(&argv(a)).is_some(), "{a:?}");
        }
        let help = [
            &["send", "-h"][..],
            &["send", "-e", "/x", "-h"],
            &["send", "-h", "--endpoint"],
            &["send", "-h", "no colon here"],
            &["send", "-h", "two words: x"],
            &["send", "-e", "/x", "--", "-h", "X: 1"],
            &["portal", "-h", "X: 1"],
            &["send-file", "f", "-h", "X: 1"],
            &["send", "-Xh", "X: 1"],
            &["send", "--h", "X: 1"],
        ];
        for a in help {
            assert_eq!(header_after_help_flag(&argv(a)), None, "{a:?}");
        }
    }

    #[test]
    fn hints_never_repeat_a_credential() {
        assert_eq!(
            shown_header("Authorization: Bearer SECRET"),
            "Authorization: (hidden)"
        );
        assert_eq!(shown_header("cookie:a=b"), "cookie: (hidden)");
        assert_eq!(shown_header("X-Trace: 1"), "X-Trace: 1");
    }

    #[test]
    fn shell_quoting_round_trips() {
        assert_eq!(shell_quote("/api/upload"), "/api/upload");
        assert_eq!(shell_quote("X-Trace: 1"), "'X-Trace: 1'");
        assert_eq!(shell_quote("it's"), "'it'\\''s'");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a$b"), "'a$b'");
    }
}
