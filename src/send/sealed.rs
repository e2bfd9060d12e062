//! How the records of an answer are read before anything else looks at
//! them: as they are (a clear job), or opened with the job's response key
//! (a sealed job, PROTOCOL.md section 11.5 "Reading an answer").

use std::sync::Arc;

use crate::protocol::seal::JobKeys;
use crate::protocol::wire::{self, Body, Frame};

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
    /// are, and a sealed one fails its attempt with this message.
    NoSecret(String),
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
            Self::Sealed(_) if matches!(frame.body, Body::Error(_)) => {
                let Frame { job, seq, body } = frame;
                let Body::Error(mut failure) = body else {
                    unreachable!("matched as an Error just above")
                };
                failure.message = format!(
                    "the portal could not open the sealed request: {}",
                    failure.message
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
    use crate::protocol::seal::{seal_start, SecretKey};
    use crate::protocol::wire::{ChunkInfo, JobId, RequestStart, ResponseStart};
    use crate::protocol::{ErrorCategory, Failure};

    fn sealed_job() -> (JobId, Arc<JobKeys>) {
        let portal = SecretKey::generate();
        let job = JobId::new();
        let start = RequestStart {
            method: "GET".into(),
            path: "/x".into(),
            headers: vec![],
            body_len: Some(0),
            has_body: false,
            reply_topic: "replies".into(),
            reply_partition: 0,
            digest: DigestKind::Blake3,
        };
        let (_, _, keys) = seal_start(portal.public(), job, &start, vec![], "requests", 0).unwrap();
        (job, Arc::new(keys))
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
                assert_eq!(
                    f.message,
                    "the portal could not open the sealed request: no such key"
                );
            }
            other => panic!("{other:?}"),
        }
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
        assert_eq!(
            Reading::NoSecret(why).read(&clear, None).unwrap().payload,
            b"body"
        );
    }
}
