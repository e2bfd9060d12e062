//! How the records of an answer are read before anything else looks at
//! them: as they are (a clear job), or opened with the job's response key
//! (a sealed job, PROTOCOL.md section 11.5 "Reading an answer").

use std::sync::Arc;

use crate::protocol::seal::JobKeys;
use crate::protocol::wire::{self, Body, Frame, JobId};
use crate::send::types::SendError;

/// How a job's answer is read.
#[derive(Debug, Clone)]
pub(crate) enum Reading {
    /// A clear job: its records are taken as they are; a sealed one is a
    /// record that does not decode.
    Clear,
    /// A sealed job: only records that open with its response key, and
    /// clear `Error`s (a portal that could not open the request).
    Sealed(Arc<JobKeys>),
    /// `wait` without the job's secret: clear records are taken as they
    /// are, and the first sealed one fails the whole wait with this message
    /// ([`Reading::without_secret`]): else a clear answer forged under
    /// another attempt would be taken for the job's.
    NoSecret(String),
}

/// What ends the message of a clear `Error` in a sealed job: anyone who
/// can write the response topic can forge one, so the job's secret stays
/// for an answer that opens.
fn unauthenticated_note(job: JobId) -> String {
    format!(" (a clear Error, which anyone who can write the response topic can forge: the job's secret is kept, and `kafkasend wait {job}` can still take a sealed answer that comes later)")
}

/// Whether `e` is a clear `Error` of a sealed job (one that proves nothing
/// of its author), which must leave the job's secret in place.
pub(crate) fn is_unauthenticated(e: &SendError, job: JobId) -> bool {
    match e {
        SendError::Refused { message, .. }
        | SendError::Upstream { message, .. }
        | SendError::Integrity(message) => message.contains(&unauthenticated_note(job)),
        _ => false,
    }
}

/// A reply record as the rest of `send` sees it: the clear frame, its
/// payload, and the record headers it carries (a sealed start's are those
/// sealed in it).
#[derive(Debug)]
pub(crate) struct Read {
    /// The clear frame.
    pub frame: Frame,
    /// The chunk's bytes.
    pub payload: Vec<u8>,
    /// The headers to read `kafkasend-dropped-headers` and `traceparent`
    /// from: `None` for the Kafka record's own.
    pub sealed_headers: Option<Vec<(String, Vec<u8>)>>,
}

impl Reading {
    /// Why the wait ends at once: `value` is a sealed record of `job` and
    /// there is no secret to open it with.
    pub(crate) fn without_secret(&self, value: &[u8], job: JobId) -> Option<&str> {
        let Self::NoSecret(why) = self else {
            return None;
        };
        let (frame, _) = wire::decode(value).ok()?;
        (frame.job == job && frame.body.is_sealed()).then_some(why.as_str())
    }

    /// Reads the record `value` of the job: `attempt` is its
    /// `kafkasend-attempt` header value, bound into a sealed record. The
    /// error says why the record counts as one that does not decode.
    pub(crate) fn read(&self, value: &[u8], attempt: Option<&[u8]>) -> Result<Read, String> {
        let (frame, payload) =
            wire::decode(value).map_err(|e| format!("a reply record is unreadable: {e}"))?;
        let sealed = frame.body.is_sealed();
        match self {
            Self::Clear if sealed => Err(format!(
                "reply record {} is sealed, but the request was not",
                frame.seq
            )),
            Self::NoSecret(why) if sealed => Err(why.clone()),
            Self::Clear | Self::NoSecret(_) => Ok(Read {
                frame,
                payload: payload.to_vec(),
                sealed_headers: None,
            }),
            // Only a portal that cannot open the start answers in clear,
            // and it answers at once (seq 0); one later is this attempt's
            // broken record. A clear Error proves nothing of its author.
            Self::Sealed(_) if matches!(frame.body, Body::Error(_)) && frame.seq != 0 => {
                Err(format!(
                    "reply record {} is a clear Error after the start of a sealed answer; only the first record may be one",
                    frame.seq
                ))
            }
            Self::Sealed(_) if matches!(frame.body, Body::Error(_)) => {
                let Frame { job, seq, body } = frame;
                let Body::Error(mut failure) = body else {
                    unreachable!("matched as an Error just above")
                };
                failure.message = format!(
                    "the portal could not open the sealed request: {}{}",
                    failure.message,
                    unauthenticated_note(job)
                );
                Ok(Read {
                    frame: Frame {
                        job,
                        seq,
                        body: Body::Error(failure),
                    },
                    payload: Vec::new(),
                    sealed_headers: Some(Vec::new()),
                })
            }
            Self::Sealed(_) if !sealed => Err(format!(
                "reply record {} is in clear, but the request was sealed: only its portal can have answered it, and it seals every record but an Error",
                frame.seq
            )),
            Self::Sealed(keys) => {
                let seq = frame.seq;
                let opened = keys
                    .response
                    .open_frame(value, frame, payload, attempt.unwrap_or_default())
                    .map_err(|e| format!("sealed reply record {seq} does not open: {e}"))?;
                Ok(Read {
                    frame: opened.frame,
                    payload: opened.payload,
                    sealed_headers: Some(opened.record_headers),
                })
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::digest::DigestKind;
    use crate::protocol::wire::{ChunkInfo, ResponseStart};
    use crate::protocol::{ErrorCategory, Failure};

    fn sealed_job() -> (JobId, Arc<JobKeys>) {
        let job = JobId::new();
        (job, Arc::new(JobKeys::random(job)))
    }

    fn chunk(job: JobId) -> Frame {
        Frame {
            job,
            seq: 1,
            body: Body::Chunk(ChunkInfo {
                offset: 0,
                crc32c: wire::checksum(b"body"),
            }),
        }
    }

    #[test]
    fn a_sealed_answer_opens_with_its_attempt_and_headers() {
        let (job, keys) = sealed_job();
        let reading = Reading::Sealed(keys.clone());
        let start = Frame {
            job,
            seq: 0,
            body: Body::ResponseStart(ResponseStart {
                status: 201,
                headers: vec![("content-type".into(), "text/plain".into())],
                body_len: Some(4),
                digest: DigestKind::Blake3,
            }),
        };
        let headers = vec![("traceparent".to_string(), b"00-x".to_vec())];
        let value = keys
            .response
            .seal_clear(&start, &[], headers.clone(), b"a1");
        let read = reading.read(&value, Some(b"a1")).unwrap();
        assert_eq!(read.frame, start);
        assert_eq!(read.sealed_headers, Some(headers));

        let value = keys.response.seal_clear(&chunk(job), b"body", vec![], b"");
        let read = reading.read(&value, None).unwrap();
        assert_eq!(read.frame, chunk(job));
        assert_eq!(read.payload, b"body");
        // Moved to another attempt, it does not open.
        let e = reading.read(&value, Some(b"other")).unwrap_err();
        assert!(e.contains("does not open"), "{e}");
    }

    #[test]
    fn clear_records_in_a_sealed_answer_fail_but_a_clear_error_is_shown() {
        let (job, keys) = sealed_job();
        let reading = Reading::Sealed(keys.clone());
        let clear = wire::encode_in(DigestKind::Blake3, &chunk(job), b"body");
        let e = reading.read(&clear, None).unwrap_err();
        assert!(e.contains("in clear, but the request was sealed"), "{e}");

        let error = Frame {
            job,
            seq: 0,
            body: Body::Error(Failure {
                category: ErrorCategory::Rejected,
                message: "no such key".into(),
            }),
        };
        let read = reading.read(&wire::encode(&error, &[]), None).unwrap();
        match read.frame.body {
            Body::Error(f) => {
                assert_eq!(f.category, ErrorCategory::Rejected);
                assert!(
                    f.message
                        .starts_with("the portal could not open the sealed request: no such key"),
                    "{}",
                    f.message
                );
                assert!(
                    f.message.contains(&format!(
                        "`kafkasend wait {job}` can still take a sealed answer"
                    )),
                    "{}",
                    f.message
                );
                let e = SendError::Refused {
                    category: f.category,
                    message: f.message,
                };
                assert!(is_unauthenticated(&e, job));
                assert!(!is_unauthenticated(&e, JobId::new()));
            }
            other => panic!("{other:?}"),
        }
        // After the start, a clear Error is a broken record of its attempt.
        let late = Frame {
            job,
            seq: 2,
            body: Body::Error(Failure {
                category: ErrorCategory::Rejected,
                message: "forged".into(),
            }),
        };
        let e = reading.read(&wire::encode(&late, &[]), None).unwrap_err();
        assert!(e.contains("clear Error after the start"), "{e}");
        // A sealed Error is the portal's own word.
        let sealed_error = keys.response.seal_clear(&late, &[], vec![], b"");
        let read = reading.read(&sealed_error, None).unwrap();
        let Body::Error(f) = read.frame.body else {
            panic!("{:?}", read.frame)
        };
        let e = SendError::Refused {
            category: f.category,
            message: f.message,
        };
        assert!(!is_unauthenticated(&e, job));
    }

    #[test]
    fn a_forged_or_foreign_sealed_record_fails() {
        let (job, keys) = sealed_job();
        let reading = Reading::Sealed(keys.clone());
        let mut value = keys.response.seal_clear(&chunk(job), b"body", vec![], b"");
        let last = value.len() - 1;
        value[last] ^= 1;
        assert!(reading
            .read(&value, None)
            .unwrap_err()
            .contains("does not open"));
        // Sealed with another job's key (same job id): does not open.
        let (_, other) = sealed_job();
        let value = other.response.seal_clear(&chunk(job), b"body", vec![], b"");
        assert!(reading.read(&value, None).is_err());
        // A request record (the other direction) does not open either.
        let value = keys.request.seal_clear(&chunk(job), b"body", vec![], b"");
        assert!(reading.read(&value, None).is_err());
    }

    #[test]
    fn a_clear_job_refuses_sealed_records_and_wait_without_a_secret_says_why() {
        let (job, keys) = sealed_job();
        let value = keys.response.seal_clear(&chunk(job), b"body", vec![], b"");
        let e = Reading::Clear.read(&value, None).unwrap_err();
        assert!(e.contains("sealed, but the request was not"), "{e}");
        let why = "the answer is sealed and its secret is not in /x".to_string();
        assert_eq!(
            Reading::NoSecret(why.clone())
                .read(&value, None)
                .unwrap_err(),
            why
        );
        let clear = wire::encode_in(DigestKind::Blake3, &chunk(job), b"body");
        let no_secret = Reading::NoSecret(why.clone());
        assert_eq!(no_secret.read(&clear, None).unwrap().payload, b"body");
        // A sealed record ends the wait; a clear one, or another job's, does not.
        assert_eq!(no_secret.without_secret(&value, job), Some(why.as_str()));
        assert_eq!(no_secret.without_secret(&clear, job), None);
        assert_eq!(no_secret.without_secret(&value, JobId::new()), None);
        assert_eq!(Reading::Sealed(keys).without_secret(&value, job), None);
    }
}
