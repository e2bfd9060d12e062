//! What `send` and `wait` show a person at a terminal: progress bars on
//! stderr, the one-line JSON summary for scripts, and [`one_line`], which
//! every text from the network goes through before it is shown.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant, SystemTime};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::protocol::wire::JobId;

/// A progress bar on stderr, or nothing when stderr is not a terminal or
/// the user asked for quiet or JSON output.
#[derive(Debug)]
pub(crate) struct Progress(Option<ProgressBar>);

impl Progress {
    /// A bar for `what` ("upload", "download") of `total` bytes, or a
    /// spinner with a byte count when the total is unknown.
    pub(crate) fn new(what: &str, total: Option<u64>, shown: bool) -> Self {
        if !shown || !std::io::stderr().is_terminal() {
            return Self(None);
        }
        let bar = match total {
            Some(n) => ProgressBar::new(n).with_style(
                ProgressStyle::with_template(
                    "{msg:>8} [{bar:30}] {bytes}/{total_bytes} {binary_bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            ),
            None => ProgressBar::new_spinner().with_style(
                ProgressStyle::with_template("{msg:>8} {spinner} {bytes} {binary_bytes_per_sec}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            ),
        };
        bar.set_draw_target(ProgressDrawTarget::stderr_with_hz(4));
        bar.set_message(what.to_string());
        Self(Some(bar))
    }

    /// Counts `n` more bytes done.
    pub(crate) fn add(&self, n: u64) {
        if let Some(b) = &self.0 {
            b.inc(n);
        }
    }

    /// Starts the count again (a second answer replaced the first).
    pub(crate) fn reset(&self) {
        if let Some(b) = &self.0 {
            b.reset();
        }
    }

    /// Removes the bar from the terminal.
    pub(crate) fn finish(&self) {
        if let Some(b) = &self.0 {
            b.finish_and_clear();
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.finish();
    }
}

/// What one `send` or `wait` did, for `--json`.
#[derive(Debug, Clone)]
pub struct Report {
    /// The job, once it has an id.
    pub job: Option<JobId>,
    /// HTTP status of the response, when one arrived.
    pub status: Option<u16>,
    /// The response's headers, in the order the API sent them, repeats
    /// included, when one arrived.
    pub headers: Option<Vec<(String, String)>>,
    /// Names of request headers the portal said it did not forward, as it
    /// sent them (`A, B`, capped by the portal).
    pub dropped_headers: Option<String>,
    /// Request body bytes produced by this run.
    pub bytes_sent: u64,
    /// Request body bytes found already in the request topic (a resumed
    /// upload), checked against the body and not produced again.
    pub bytes_found: u64,
    /// Times this run resumed the upload: `--resume`, and each automatic
    /// resume after a lost connection.
    pub resumed: u32,
    /// Response body bytes received and verified.
    pub bytes_received: u64,
    /// Whether the request was wholly produced and acknowledged (its start
    /// record, and its end record when it has a body): only then can the
    /// portal answer it.
    pub request_sent: bool,
    /// Whether the response's digest was checked and matched.
    pub digest_verified: bool,
    /// The algorithm of that digest, once verified.
    pub digest: Option<crate::protocol::digest::DigestKind>,
    /// When the command started.
    pub started: Instant,
    /// The trace id: the one `send` started or continued, or the one the
    /// portal's answer names.
    pub trace_id: Option<String>,
    /// The id of the portal key the job is sealed to; `None` for a clear job.
    pub sealed: Option<String>,
    /// When each step began, for the exported spans.
    pub(crate) marks: Marks,
    /// The trace of a resumed job's start record, found in Kafka, which
    /// this run continues instead of its own.
    pub(crate) continued: Option<crate::send::types::SendTrace>,
}

impl Default for Report {
    fn default() -> Self {
        Self {
            job: None,
            status: None,
            headers: None,
            dropped_headers: None,
            bytes_sent: 0,
            bytes_found: 0,
            resumed: 0,
            bytes_received: 0,
            request_sent: false,
            digest_verified: false,
            digest: None,
            started: Instant::now(),
            trace_id: None,
            sealed: None,
            marks: Marks::default(),
            continued: None,
        }
    }
}

/// When the steps of one send began (wall clock, as spans carry it).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Marks {
    /// The upload began (the start record about to be produced).
    pub(crate) upload: Option<SystemTime>,
    /// The whole request was acknowledged.
    pub(crate) sent: Option<SystemTime>,
    /// The answer's start record arrived.
    pub(crate) answered: Option<SystemTime>,
}

impl Report {
    /// The one-line JSON summary: the fields above, the duration, the exit
    /// code and, on failure, the error. Headers are an array of `[name,
    /// value]` pairs, not an object: a name may repeat (`Set-Cookie`,
    /// `Link`), and the order can matter.
    pub(crate) fn to_json(&self, exit_code: u8, error: Option<&str>) -> String {
        serde_json::json!({
            "job": self.job.map(|j| j.to_string()),
            "status": self.status,
            "headers": self.headers,
            "dropped_headers": self.dropped_headers,
            "bytes_sent": self.bytes_sent,
            "bytes_found": self.bytes_found,
            "resumed": self.resumed,
            "bytes_received": self.bytes_received,
            "digest_verified": self.digest_verified,
            "digest": self.digest.map(|d| d.name()),
            "duration_secs": round_ms(self.started.elapsed()),
            "trace_id": self.trace_id,
            "sealed": self.sealed,
            "exit_code": exit_code,
            "error": error,
        })
        .to_string()
    }
}

fn round_ms(d: Duration) -> f64 {
    (d.as_secs_f64() * 1000.0).round() / 1000.0
}

/// Text from the network made safe for a terminal: one line, with control
/// characters (C0, DEL, C1), line and paragraph separators and bidi
/// controls shown as visible escapes (`\n`, `\r`, `\t`, `\u{1b}`).
///
/// Error messages come from Error records anyone who can write the response
/// topic can forge; raw, an `ESC]0;…` would retitle the window, an `ESC[2J`
/// clear it, and a newline fake a second line of output.
pub(crate) fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_SHOWN_CHARS + 64));
    for (i, (at, c)) in text.char_indices().enumerate() {
        if i == MAX_SHOWN_CHARS {
            out.push_str(&format!(" … ({} more bytes not shown)", text.len() - at));
            break;
        }
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() || is_invisible_format(c) => {
                out.push_str(&format!("\\u{{{:x}}}", u32::from(c)));
            }
            c => out.push(c),
        }
    }
    out
}

/// Longest message shown, in characters: a forged Error record can hold
/// hundreds of kilobytes, more than anyone reads on a terminal.
const MAX_SHOWN_CHARS: usize = 2000;

/// Characters that reorder or split what a terminal shows without being
/// control characters: bidi marks, embeddings, overrides and isolates, and
/// the Unicode line and paragraph separators.
fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{061C}' | '\u{200E}' | '\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2066}'..='\u{2069}'
            | '\u{2028}' | '\u{2029}'
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_text_becomes_one_visible_line() {
        let hostile =
            "bad\u{1b}]0;owned\u{7}\u{1b}[2J\r\nsecond line\u{9b}31m\u{202e}txt.exe\u{2028}end";
        let shown = one_line(hostile);
        assert_eq!(
            shown,
            "bad\\u{1b}]0;owned\\u{7}\\u{1b}[2J\\r\\nsecond line\\u{9b}31m\\u{202e}txt.exe\\u{2028}end"
        );
        assert!(!shown.chars().any(|c| c.is_control()));
        assert_eq!(one_line("café: 'a' \\ b ✓"), "café: 'a' \\ b ✓");
        let long = format!("{}é{}", "a".repeat(MAX_SHOWN_CHARS), "b".repeat(5000));
        let shown = one_line(&long);
        assert!(shown.ends_with(" … (5002 more bytes not shown)"), "{shown}");
        assert!(shown.starts_with(&"a".repeat(MAX_SHOWN_CHARS)));
    }

    #[test]
    fn json_summary_has_every_field() {
        let job = JobId::new();
        let r = Report {
            job: Some(job),
            status: Some(201),
            bytes_sent: 10,
            bytes_received: 20,
            digest_verified: true,
            digest: Some(crate::protocol::digest::DigestKind::Blake3),
            ..Report::default()
        };
        let v: serde_json::Value = serde_json::from_str(&r.to_json(0, None)).unwrap();
        assert_eq!(v["job"], job.to_string());
        assert_eq!(v["status"], 201);
        assert_eq!(v["bytes_sent"], 10);
        assert_eq!(v["bytes_received"], 20);
        assert_eq!(v["digest_verified"], true);
        assert_eq!(v["digest"], "blake3");
        assert_eq!(v["exit_code"], 0);
        assert!(v["error"].is_null());
        assert!(v["duration_secs"].as_f64().unwrap() >= 0.0);
        assert!(v["headers"].is_null());
        let with_headers = Report {
            headers: Some(vec![
                ("set-cookie".into(), "a=1".into()),
                ("content-type".into(), "text/plain".into()),
                ("set-cookie".into(), "b=2".into()),
            ]),
            ..Report::default()
        };
        let v: serde_json::Value = serde_json::from_str(&with_headers.to_json(0, None)).unwrap();
        assert_eq!(
            v["headers"],
            serde_json::json!([
                ["set-cookie", "a=1"],
                ["content-type", "text/plain"],
                ["set-cookie", "b=2"]
            ])
        );
        let failed: serde_json::Value =
            serde_json::from_str(&Report::default().to_json(7, Some("broker gone"))).unwrap();
        assert!(failed["job"].is_null());
        assert_eq!(failed["error"], "broker gone");
    }
}
