//! Log output: env_logger's text lines, or one JSON object per line
//! (`PORTAL_LOG_FORMAT=json`).
//!
//! Lines about a job start with `job <ULID>: `; in JSON the id also gets a
//! field of its own, `job`, so a log pipeline can follow one job.

use std::io::Write;

use crate::protocol::wire::JobId;

/// How the portal writes log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    /// env_logger's text lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// Installs the global logger with an env_logger `filter` (`RUST_LOG` wins).
pub fn init(default_filter: &str, format: LogFormat) {
    let env = env_logger::Env::default().filter_or("RUST_LOG", default_filter);
    let mut builder = env_logger::Builder::from_env(env);
    match format {
        LogFormat::Text => {
            builder.format_target(false).format_timestamp_millis();
        }
        LogFormat::Json => {
            builder.format(|buf, record| {
                let ts = buf.timestamp_millis().to_string();
                let line = json_line(
                    &ts,
                    record.level(),
                    record.target(),
                    &record.args().to_string(),
                );
                writeln!(buf, "{line}")
            });
        }
    }
    builder.init();
}

/// One log record as a JSON object (no newline).
pub fn json_line(ts: &str, level: log::Level, target: &str, msg: &str) -> String {
    let mut obj = serde_json::Map::new();
    obj.insert("ts".into(), ts.into());
    obj.insert("level".into(), level.as_str().into());
    obj.insert("target".into(), target.into());
    obj.insert("msg".into(), msg.into());
    if let Some(job) = job_of(msg) {
        obj.insert("job".into(), job.to_string().into());
    }
    if let Some(trace) = trace_of(msg) {
        obj.insert("trace_id".into(), trace.into());
    }
    serde_json::Value::Object(obj).to_string()
}

/// The trace a message names: the 32 hex digits after its last
/// `trace_id=`, so a log search can join the tracing tool's view.
pub fn trace_of(msg: &str) -> Option<&str> {
    let (_, rest) = msg.rsplit_once("trace_id=")?;
    let id = rest.get(..32)?;
    id.bytes()
        .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        .then_some(id)
}

/// The job a message is about: the id in its `job <ULID>: ` prefix.
pub fn job_of(msg: &str) -> Option<JobId> {
    let rest = msg.strip_prefix("job ")?;
    let (id, _) = rest.split_once(':')?;
    id.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn job_lines_carry_the_job_field() {
        let id = JobId::new();
        let msg = format!("job {id}: POST /api/upload -> 200, 5 bytes back in 0.01 s");
        let line = json_line(
            "2026-01-01T00:00:00.000Z",
            log::Level::Info,
            "kafkasend::portal",
            &msg,
        );
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["job"], id.to_string());
        assert_eq!(v["msg"], msg);
        assert!(v.get("trace_id").is_none());
        let traced = format!("{msg} trace_id=0af7651916cd43dd8448eb211c80319c");
        let traced_line = json_line("t", log::Level::Info, "k", &traced);
        let t: serde_json::Value = serde_json::from_str(&traced_line).unwrap();
        assert_eq!(t["trace_id"], "0af7651916cd43dd8448eb211c80319c");
        for bad in [
            "trace_id=0af76519",
            "trace_id=0AF7651916CD43DD8448EB211C80319C",
        ] {
            assert_eq!(trace_of(bad), None, "{bad}");
        }
        assert_eq!(v["level"], "INFO");
        assert_eq!(v["target"], "kafkasend::portal");
        assert_eq!(v["ts"], "2026-01-01T00:00:00.000Z");
    }

    #[test]
    fn other_lines_have_no_job_and_stay_one_line() {
        for msg in [
            "portal ready: group g reads [0] of t",
            "job : empty",
            "job not-a-ulid: x",
            "a \"quoted\"\nsecond line\tand a tab",
        ] {
            let line = json_line("t", log::Level::Warn, "kafkasend::portal", msg);
            assert_eq!(line.lines().count(), 1, "{line}");
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            assert!(v.get("job").is_none(), "{line}");
            assert_eq!(v["msg"], msg);
        }
    }
}
