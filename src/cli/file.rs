//! The optional `--config` TOML file: its keys, and messages that name the
//! line and the key of a mistake (with a "did you mean" for typos).

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Keys of the optional `--config` TOML file; every one optional.
/// Its `Debug` leaves out the secrets.
#[derive(Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub struct FileConfig {
    pub bootstrap_servers: Option<String>,
    pub request_topic: Option<String>,
    pub response_topic: Option<String>,
    pub kafka_timeout_secs: Option<u64>,
    pub chunk_size: Option<usize>,
    pub security_protocol: Option<String>,
    pub ssl_ca_file: Option<PathBuf>,
    pub sasl_mechanism: Option<String>,
    pub sasl_username: Option<String>,
    pub sasl_password: Option<String>,
    pub target_api_url: Option<String>,
    pub use_oauth: Option<bool>,
    pub log_level: Option<String>,
    pub log_format: Option<String>,
    pub admin_listen: Option<String>,
    pub max_concurrent_jobs: Option<usize>,
    pub request_timeout_secs: Option<u64>,
    pub allowed_headers: Option<String>,
    pub allowed_endpoints: Option<String>,
    pub strict_security: Option<bool>,
    pub max_header_count: Option<usize>,
    pub max_header_bytes: Option<usize>,
    pub max_chunks: Option<usize>,
    pub max_spool_bytes: Option<u64>,
    pub max_assembly_memory_bytes: Option<u64>,
    pub max_job_age_secs: Option<u64>,
    pub max_body_bytes: Option<u64>,
    pub spool_threshold_bytes: Option<usize>,
    pub spool_dir: Option<PathBuf>,
    pub pipeline: Option<bool>,
    pub max_assembling_jobs: Option<usize>,
    pub job_idle_timeout_secs: Option<u64>,
    pub topic_partitions: Option<i32>,
    pub replication_factor: Option<i16>,
    pub start_from: Option<String>,
    pub consumer_group: Option<String>,
    pub group_instance_id: Option<String>,
    pub group_protocol: Option<String>,
    pub session_timeout_secs: Option<u64>,
    pub shutdown_grace_secs: Option<u64>,
    pub idempotency_header: Option<String>,
    pub retry_max_attempts: Option<u32>,
    pub retry_max_delay_secs: Option<u64>,
    pub retry_conflict_secs: Option<u64>,
    pub oauth2_token_url: Option<String>,
    pub oauth2_client_id: Option<String>,
    pub oauth2_client_secret: Option<String>,
    pub oauth2_scope: Option<String>,
    pub oauth2_audience: Option<String>,
    pub oauth2_auth_method: Option<String>,
    pub oauth2_client_assertion_key_file: Option<PathBuf>,
    pub oauth2_client_assertion_alg: Option<String>,
    pub oauth2_client_assertion_kid: Option<String>,
    pub oauth2_client_assertion_audience: Option<String>,
    pub token_refresh_statuses: Option<String>,
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
    pub timeout: Option<u64>,
    pub trusted_keys: Option<String>,
    pub signature_max_ttl_secs: Option<u64>,
    pub sealing_key_file: Option<String>,
    pub require_sealed: Option<bool>,
    pub signing_key: Option<PathBuf>,
    pub signature_ttl_secs: Option<u64>,
    pub client_log_level: Option<String>,
    pub compression: Option<String>,
    pub client_compression: Option<String>,
    pub client_digest: Option<String>,
    pub seal_to: Option<PathBuf>,
    pub job_key_dir: Option<PathBuf>,
    /// The `[[routes]]` tables (docs/configuration.md, "Routes").
    pub routes: Option<Vec<RouteFile>>,
}

/// One `[[routes]]` table of the config file.
#[derive(Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RouteFile {
    pub name: String,
    #[serde(rename = "match")]
    pub path_match: String,
    #[serde(default)]
    pub methods: Vec<String>,
    pub target: String,
    pub strip_prefix: Option<String>,
    pub allowed_headers: Option<String>,
    pub timeout_secs: Option<u64>,
    pub max_body_bytes: Option<u64>,
    pub max_concurrent_jobs: Option<usize>,
    pub oauth2: Option<RouteOAuth2>,
    pub tls: Option<RouteTls>,
    pub header: Option<RouteHeader>,
    /// Line of the table's `[[routes]]` header, filled in after parsing.
    #[serde(skip)]
    pub line: Option<usize>,
}

/// `[routes.oauth2]`: the `OAUTH2_*` settings, lower-cased without the prefix.
#[derive(Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RouteOAuth2 {
    pub token_url: Option<String>,
    pub client_id: Option<String>,
    pub client_secret: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    pub scope: Option<String>,
    pub audience: Option<String>,
    pub auth_method: Option<String>,
    pub client_assertion_key_file: Option<PathBuf>,
    pub client_assertion_alg: Option<String>,
    pub client_assertion_kid: Option<String>,
    pub client_assertion_audience: Option<String>,
}

/// `[routes.tls]`: `PORTAL_CA_FILE`, `PORTAL_CLIENT_CERT_FILE` and
/// `PORTAL_CLIENT_KEY_FILE` for this route alone.
#[derive(Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RouteTls {
    pub ca_file: Option<PathBuf>,
    pub client_cert_file: Option<PathBuf>,
    pub client_key_file: Option<PathBuf>,
}

/// `[routes.header]`: a static header whose value is read from a file.
#[derive(Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct RouteHeader {
    pub name: String,
    pub value_file: PathBuf,
}

impl std::fmt::Debug for FileConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FileConfig")
            .field("bootstrap_servers", &self.bootstrap_servers)
            .field("security_protocol", &self.security_protocol)
            .field("sasl_username", &self.sasl_username)
            .field("target_api_url", &self.target_api_url)
            .finish_non_exhaustive()
    }
}

/// The setting that names the config file, as its errors say.
const CONFIG_SETTING: &str = "--config (KAFKASEND_CONFIG)";

/// Reads the `--config` file. A file that is missing, is not a regular file
/// or is too large, a TOML syntax error, an unknown key or a bad value is an
/// error of one line naming the file (and the line and the key).
pub fn load_file(path: Option<&Path>) -> anyhow::Result<FileConfig> {
    let Some(path) = path else {
        return Ok(FileConfig::default());
    };
    // Not confy::load_path: it reads whatever the path holds, without a cap,
    // and writes a default file where none exists.
    let bytes =
        crate::util::file_read::read(CONFIG_SETTING, path, crate::util::file_read::Kind::Config)?;
    let text = String::from_utf8(bytes).map_err(|e| {
        anyhow::anyhow!(
            "{CONFIG_SETTING}: {} is not UTF-8 text (byte {} is not), so it is not a TOML file",
            path.display(),
            e.utf8_error().valid_up_to()
        )
    })?;
    let mut config: FileConfig = toml::from_str(&text).map_err(|e| {
        anyhow::anyhow!(
            "{}: {}",
            path.display(),
            describe_toml_error(&text, e.message(), e.span())
        )
    })?;
    if let Some(routes) = &mut config.routes {
        number_lines(routes, &text);
    }
    Ok(config)
}

/// Fills in each route's line: the n-th `[[routes]]` header of `text`
/// belongs to the n-th route (routes written inline get none).
fn number_lines(routes: &mut [RouteFile], text: &str) {
    let headers = text.lines().enumerate().filter(|(_, l)| {
        let l = l.trim_start();
        l.strip_prefix("[[")
            .and_then(|r| r.split_once("]]"))
            .is_some_and(|(name, _)| name.trim() == "routes")
    });
    for (route, (i, _)) in routes.iter_mut().zip(headers) {
        route.line = Some(i + 1);
    }
}

/// One line for a TOML/serde error in the config file: the line, the key
/// and what is wrong with it. `message` is the toml crate's, which for an
/// unknown key is serde's "unknown field `k`, expected one of `a`, `b`...".
fn describe_toml_error(text: &str, message: &str, span: Option<std::ops::Range<usize>>) -> String {
    let line_no = span.map(|s| {
        let start = s.start.min(text.len());
        text.as_bytes()[..start]
            .iter()
            .filter(|&&b| b == b'\n')
            .count()
            + 1
    });
    let at = line_no.map(|n| format!("line {n}: ")).unwrap_or_default();
    let one_line = message.split_whitespace().collect::<Vec<_>>().join(" ");
    if message.starts_with("unknown field `") {
        let mut quoted = message.split('`').skip(1).step_by(2);
        let unknown = quoted.next().unwrap_or_default();
        // Only the top level has a `routes` key; the tables of a route do not.
        let in_a_route = !message.contains("`routes`");
        let hint = match closest_key(unknown, quoted) {
            Some(k) => format!("did you mean `{k}`?"),
            None if in_a_route => {
                "see the keys of a route in docs/configuration.md, \"Routes\"".to_string()
            }
            None => "the keys are the flag names with `_` for `-` (see docs/configuration.md)"
                .to_string(),
        };
        return format!("{at}unknown key `{unknown}`; {hint}");
    }
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|m| m.split('`').next())
    {
        return format!("{at}key `{field}` is missing");
    }
    let key = line_no
        .and_then(|n| text.lines().nth(n - 1))
        .and_then(|l| l.split_once('='))
        .map(|(k, _)| k.trim().trim_matches(|c| c == '"' || c == '\''))
        .filter(|k| !k.is_empty());
    // serde's own wording; anything else comes from the TOML parser.
    let serde_value_error = ["invalid type:", "invalid value:", "invalid length"]
        .iter()
        .any(|p| message.starts_with(p));
    match key {
        Some(key) if serde_value_error => {
            format!("{at}bad value for `{key}`: {}", plain_types(&one_line))
        }
        Some(key) if one_line == "duplicate key" => format!("{at}duplicate key `{key}`"),
        _ => format!("{at}not valid TOML: {one_line}"),
    }
}

/// Says serde's Rust type names in words.
fn plain_types(message: &str) -> String {
    let mut out = message.to_string();
    for (rust, words) in [
        ("expected u64", "expected a whole number, 0 or more"),
        ("expected usize", "expected a whole number, 0 or more"),
        ("expected i32", "expected a whole number"),
        ("expected i16", "expected a whole number up to 32767"),
    ] {
        if out.ends_with(rust) {
            out.truncate(out.len() - rust.len());
            out.push_str(words);
        }
    }
    out
}

/// The known key most like `unknown`, if one is close enough to be a typo.
pub(crate) fn closest_key<'a>(
    unknown: &str,
    known: impl Iterator<Item = &'a str>,
) -> Option<&'a str> {
    let limit = (unknown.len() / 3).max(2);
    known
        .map(|k| (edit_distance(unknown, k), k))
        .filter(|&(d, _)| d <= limit)
        .min_by_key(|&(d, _)| d)
        .map(|(_, k)| k)
}

/// Levenshtein distance over bytes (keys are ASCII).
pub(crate) fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, &cb) in b.iter().enumerate() {
            let substitute = diagonal + usize::from(ca != cb);
            diagonal = row[j + 1];
            row[j + 1] = substitute.min(row[j] + 1).min(diagonal + 1);
        }
    }
    row[b.len()]
}

/// Longest wait any setting may ask for: a week.
pub const MAX_WAIT_SECS: u64 = 7 * 24 * 3600;

/// Largest spool threshold: bodies above it always go to disk.
pub const MAX_SPOOL_THRESHOLD: usize = 64 * 1024 * 1024;

/// A flag or environment value, else the file's.
pub(crate) fn pick<T: Clone>(flag_or_env: &Option<T>, file: &Option<T>) -> Option<T> {
    flag_or_env.clone().or_else(|| file.clone())
}
