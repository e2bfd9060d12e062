//! What of a job already sits in Kafka, for a resumed upload: its start
//! record, the chunks (each checked against the body as it is read, only
//! its place, length and CRC32C kept), whether its end record is there; and
//! whether the portal has answered it already.
//!
//! Both partitions are read from a given offset up to the end noted when
//! the reading began, so the scan ends however busy the partition is.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::time::Duration;

use crate::kafka::fetcher::Fetcher;
use crate::kafka::record_batch::Item;
use crate::kafka::{self, KafkaError, RecordAndOffset};
use crate::protocol::seal::{KeyId, RecordHeaders, RecordKey};
use crate::protocol::trace::{self, TraceContext};
use crate::protocol::wire::{self, Body, EndInfo, Frame, JobId, RequestStart};
use crate::protocol::Failure;
use crate::send::request::{read_at, Prepared};
use crate::send::sealed::Reading;
use crate::send::types::SendError;

/// Most chunks of one job kept track of: with 16 bytes a chunk in a
/// `BTreeMap`, a few MiB at most, within `send`'s memory bound.
pub(super) const MAX_CHUNKS: usize = 200_000;

/// Each fetch of a scan waits this long for the broker's answer.
const FETCH_LIMIT: Duration = Duration::from_secs(10);

/// A scan gives up after this many failed fetches in a row.
const FETCH_ATTEMPTS: u32 = 5;

/// One chunk found in the request topic, its bytes equal to the body's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Fact {
    /// Where the chunk starts in the body.
    pub offset: u64,
    /// Its length.
    pub len: u64,
    /// Its CRC32C, to check the body again as it is re-read.
    pub crc32c: u32,
}

/// What of one job's request the request topic holds.
#[derive(Debug, Default)]
pub(super) struct Landed {
    /// The start record and its offset, when found.
    pub start: Option<(RequestStart, i64)>,
    /// The trace the start record carries (a bad `tracestate` left out),
    /// which a resumed run continues so its spans join the portal's.
    pub trace: Option<TraceContext>,
    /// The chunks found, by sequence number.
    pub chunks: BTreeMap<u32, Fact>,
    /// The end record, when found.
    pub end: Option<EndInfo>,
    /// Whether the start found was sealed (and opened with the job's key).
    pub sealed: bool,
    /// Sealed records of the job that no key given opened.
    pub unopened: u32,
    /// The portal key the start found is sealed to.
    pub key_id: Option<KeyId>,
}

impl Landed {
    /// Body bytes found (each chunk once).
    pub fn bytes(&self) -> u64 {
        self.chunks.values().map(|f| f.len).sum()
    }

    /// The chunk size the chunks found were cut with; `None` when they do
    /// not tell (none found, or only a first chunk that is the whole body).
    /// Every chunk must sit where chunks of that size would.
    pub fn chunk_size(&self, job: JobId, body_len: u64) -> Result<Option<u64>, SendError> {
        let mut size = None;
        for (&seq, f) in &self.chunks {
            let candidate = if seq > 1 {
                Some(f.offset / u64::from(seq - 1))
            } else if f.offset + f.len < body_len {
                Some(f.len)
            } else {
                None
            };
            if size.is_none() {
                size = candidate.filter(|&n| n > 0);
            }
        }
        let Some(size) = size else {
            return Ok(None);
        };
        for (&seq, f) in &self.chunks {
            let at = u64::from(seq - 1).saturating_mul(size);
            let len = body_len.saturating_sub(at).min(size);
            if f.offset != at || f.len != len {
                return Err(SendError::Integrity(format!(
                    "job {job}: chunk {seq} in the request topic holds bytes {}..{}, where chunks of {size} bytes would hold {at}..{}; the job was not uploaded from this body",
                    f.offset,
                    f.offset + f.len,
                    at + len
                )));
            }
        }
        Ok(Some(size))
    }
}

/// Reads `partition` of `topic` from `from` up to `to` (exclusive),
/// passing on each record of `job`. Other jobs' records and unreadable
/// batches are passed over.
async fn scan(
    settings: &kafka::Config,
    topic: &str,
    partition: i32,
    job: JobId,
    from: i64,
    to: i64,
    mut each: impl AsyncFnMut(RecordAndOffset) -> Result<(), SendError>,
) -> Result<(), SendError> {
    let mut fetcher = Fetcher::new(settings, topic, partition);
    let mut at = from;
    let mut failures = 0;
    while at < to {
        let fetched = match fetcher.fetch(at, Duration::from_millis(100), FETCH_LIMIT).await {
            Ok(f) => f,
            Err(KafkaError::OffsetOutOfRange { offset }) => {
                return Err(SendError::Usage(format!(
                    "job {job}: offset {offset} of partition {partition} of topic {topic} is no longer kept (deleted by retention); what the job left there cannot be read"
                )))
            }
            Err(e) if failures + 1 < FETCH_ATTEMPTS => {
                failures += 1;
                log::debug!("job {job}: reading {topic} partition {partition}: {e}; retrying");
                tokio::time::sleep(Duration::from_millis(200 * u64::from(failures))).await;
                continue;
            }
            Err(e) => return Err(e.into()),
        };
        failures = 0;
        for item in fetched.items {
            match item {
                Item::Record(rec) if rec.offset < to && kafka::is_for_job(&rec.record, &job) => {
                    each(rec).await?
                }
                Item::Unreadable(batch) if batch.keys.contains(&job.key()) => log::warn!(
                    "job {job}: {topic} partition {partition} offsets {}..={} cannot be read ({}); what they held is sent again",
                    batch.first_offset,
                    batch.last_offset,
                    batch.detail
                ),
                _ => {}
            }
        }
        if fetched.next_offset <= at {
            // Nothing more below the high watermark: the end noted moved
            // back (a truncated log); what was read is all there is.
            break;
        }
        at = fetched.next_offset;
    }
    Ok(())
}

/// Finds what of `job` the request partition holds between `from` and
/// `to`, checking each chunk's bytes against the body as it is read. A
/// chunk that differs from the body is an error naming it. The start
/// record goes through `same` as soon as it is read (normally before any
/// chunk), so another request is named as such, not as a chunk that differs.
#[allow(clippy::too_many_arguments)]
pub(super) async fn find(
    settings: &kafka::Config,
    partition: i32,
    job: JobId,
    from: i64,
    to: i64,
    prepared: &Prepared,
    shown: &str,
    key: Option<&RecordKey>,
    same: impl Fn(&RequestStart) -> Result<(), SendError>,
) -> Result<Landed, SendError> {
    let mut landed = Landed::default();
    let body_len = prepared.body_len.unwrap_or(0);
    scan(
        settings,
        &settings.request_topic,
        partition,
        job,
        from,
        to,
        async |rec: RecordAndOffset| {
            let value = rec.record.value.as_deref().unwrap_or_default();
            let Ok((frame, payload)) = wire::decode(value) else {
                log::warn!(
                    "job {job}: request record at offset {} cannot be decoded; passed over",
                    rec.offset
                );
                return Ok(());
            };
            if frame.job != job {
                return Ok(());
            }
            // Only the sender writes a sealed job's request records, all
            // sealed: a clear one is someone else's. Taken as landed, a
            // clear End would stop the upload, and a clear chunk compared
            // with the body would tell its author whether a guess was right.
            if key.is_some() && !frame.body.is_sealed() {
                log::debug!(
                    "job {job}: clear request record at offset {} in a sealed job; not the sender's, passed over",
                    rec.offset
                );
                return Ok(());
            }
            let key_id = match &frame.body {
                Body::SealedStart(s) => Some(KeyId(s.key_id)),
                _ => None,
            };
            let Some((frame, payload, sealed_headers)) = open(key, value, frame, payload) else {
                landed.unopened += 1;
                return Ok(());
            };
            let payload = &payload[..];
            match frame.body {
                Body::RequestStart(start) if landed.start.is_none() => {
                    same(&start)?;
                    landed.start = Some((start, rec.offset));
                    landed.sealed = sealed_headers.is_some();
                    landed.key_id = key_id;
                    let header = |name: &str| match &sealed_headers {
                        Some(sealed) => sealed
                            .iter()
                            .find(|(n, _)| n.eq_ignore_ascii_case(name))
                            .map(|(_, v)| v.as_slice()),
                        None => rec.record.headers.get(name).map(|v| v.as_slice()),
                    };
                    landed.trace =
                        TraceContext::from_values(header(trace::TRACEPARENT), header(trace::TRACESTATE))
                            .ok()
                            .flatten()
                            .map(|(ctx, _)| ctx);
                }
                Body::Chunk(info) => {
                    let seq = frame.seq;
                    if seq == 0
                        || payload.is_empty()
                        || wire::checksum(payload) != info.crc32c
                    {
                        // The portal refuses such a chunk; it is sent again.
                        log::warn!("job {job}: chunk {seq} at offset {} is damaged; sending it again", rec.offset);
                        return Ok(());
                    }
                    let len = payload.len() as u64;
                    let end = info.offset.saturating_add(len);
                    let ours = if end <= body_len {
                        read_at(prepared, info.offset, payload.len()).await?
                    } else {
                        Vec::new()
                    };
                    if ours != payload {
                        return Err(SendError::Integrity(format!(
                            "job {job}: chunk {seq} (body bytes {}..{end}) in the request topic differs from {shown}; resume with the body the job was started with, or send it as a new job without --resume",
                            info.offset
                        )));
                    }
                    let fact = Fact {
                        offset: info.offset,
                        len,
                        crc32c: info.crc32c,
                    };
                    match landed.chunks.get(&seq) {
                        Some(known) if *known != fact => {
                            return Err(SendError::Integrity(format!(
                                "job {job}: chunk {seq} is in the request topic twice, at body bytes {} and {}",
                                known.offset, fact.offset
                            )))
                        }
                        Some(_) => {}
                        None if landed.chunks.len() >= MAX_CHUNKS => {
                            return Err(SendError::Usage(format!(
                                "job {job}: more than {MAX_CHUNKS} chunks in the request topic; it cannot be resumed"
                            )))
                        }
                        None => {
                            landed.chunks.insert(seq, fact);
                        }
                    }
                }
                Body::End(end) => landed.end = Some(end),
                _ => {}
            }
            Ok(())
        },
    )
    .await?;
    Ok(landed)
}

/// A request record of the job as its clear counterpart: sealed ones
/// opened with `key` (and the start's sealed record headers); `None` for
/// a sealed record without a key that opens it.
fn open<'a>(
    key: Option<&RecordKey>,
    value: &[u8],
    frame: Frame,
    payload: &'a [u8],
) -> Option<(Frame, Cow<'a, [u8]>, Option<RecordHeaders>)> {
    if !frame.body.is_sealed() {
        return Some((frame, Cow::Borrowed(payload), None));
    }
    let key = key?;
    let seq = frame.seq;
    let opened = match &frame.body {
        Body::SealedStart(_) => {
            key.open_own_start(value, &frame, payload)
                .map(|(start, headers)| {
                    let frame = Frame {
                        job: frame.job,
                        seq,
                        body: Body::RequestStart(start),
                    };
                    (frame, Cow::Borrowed(&[][..]), Some(headers))
                })
        }
        _ => key
            .open_frame(value, frame, payload, &[])
            .map(|o| (o.frame, Cow::Owned(o.payload), None)),
    };
    match opened {
        Ok(opened) => Some(opened),
        Err(e) => {
            log::warn!("job {}: sealed request record {seq}: {e}", key.job());
            None
        }
    }
}

/// What the portal already answered to `job`, read from `from` up to `to`
/// of its reply partition: the Error record it sent, if any, and whether an
/// answer (its start) is there.
pub(super) async fn answered(
    settings: &kafka::Config,
    partition: i32,
    job: JobId,
    from: i64,
    to: i64,
    reading: &Reading,
) -> Result<Answered, SendError> {
    let mut found = Answered::default();
    scan(
        settings,
        &settings.response_topic,
        partition,
        job,
        from,
        to,
        async |rec: RecordAndOffset| {
            let attempt = rec.record.headers.get(wire::ATTEMPT_HEADER);
            let value = rec.record.value.as_deref().unwrap_or_default();
            match reading.read(value, attempt.map(Vec::as_slice)) {
                Ok(read) if read.frame.job == job => match read.frame.body {
                    Body::Error(e) if found.error.is_none() => found.error = Some(e),
                    Body::ResponseStart(_) => found.response = true,
                    _ => {}
                },
                _ => {}
            }
            Ok(())
        },
    )
    .await?;
    Ok(found)
}

/// An answer to a job found in its reply partition.
#[derive(Debug, Default)]
pub(super) struct Answered {
    /// The portal's Error record: the job failed (an idle partial upload
    /// dropped, say).
    pub error: Option<Failure>,
    /// Whether a response's start record is there.
    pub response: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn landed(facts: &[(u32, u64, u64)]) -> Landed {
        Landed {
            chunks: facts
                .iter()
                .map(|&(seq, offset, len)| {
                    (
                        seq,
                        Fact {
                            offset,
                            len,
                            crc32c: 0,
                        },
                    )
                })
                .collect(),
            ..Landed::default()
        }
    }

    #[test]
    fn the_chunk_size_is_read_from_the_chunks_found() {
        let job = JobId::new();
        assert_eq!(landed(&[]).chunk_size(job, 100).unwrap(), None);
        assert_eq!(landed(&[(1, 0, 100)]).chunk_size(job, 100).unwrap(), None);
        assert_eq!(
            landed(&[(1, 0, 40)]).chunk_size(job, 100).unwrap(),
            Some(40)
        );
        assert_eq!(
            landed(&[(3, 80, 20)]).chunk_size(job, 100).unwrap(),
            Some(40)
        );
        assert_eq!(
            landed(&[(1, 0, 40), (2, 40, 40), (3, 80, 20)])
                .chunk_size(job, 100)
                .unwrap(),
            Some(40)
        );
        assert_eq!(
            landed(&[(2, 30, 30), (4, 90, 10)])
                .chunk_size(job, 100)
                .unwrap(),
            Some(30)
        );
    }

    #[test]
    fn chunks_out_of_place_are_refused_naming_one() {
        let job = JobId::new();
        let err = landed(&[(1, 0, 40), (3, 70, 30)])
            .chunk_size(job, 100)
            .unwrap_err()
            .to_string();
        assert!(err.contains("chunk 3"), "{err}");
        let err = landed(&[(2, 40, 30)]).chunk_size(job, 100).unwrap_err();
        assert!(err.to_string().contains("chunk 2"), "{err}");
    }
}
