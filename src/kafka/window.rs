//! The two ways a job's frames are produced to one partition, both bounded
//! and each call within the deadline the [`Partition`] carries.
//!
//! - [`ProduceWindow`], for `send`'s upload: chunks are large and come from
//!   a file as fast as it can be read, so each goes in a produce call of
//!   its own and a few calls stay in flight while the next chunk is read.
//! - [`ReplyWriter`], for the portal's answers: frames come as the API
//!   streams its response, often a start, a short body and an end within
//!   milliseconds, so they are held and produced together, one batch of at
//!   most one chunk size at a time; a small answer leaves in one request
//!   and reaches the client in one fetch.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use crate::kafka::compression::{Chooser, Codec};
use crate::kafka::{record_in, record_of_value, KafkaError, Partition, Record};
use crate::protocol::digest::DigestKind;
use crate::protocol::wire::{Frame, JobId};

/// A produce call in flight: boxed so a window can hold several.
type Producing<'a> = Pin<Box<dyn Future<Output = Result<i64, KafkaError>> + Send + 'a>>;

/// `send`'s upload: one record per produce call, up to `capacity` calls in
/// flight at once, their acknowledgements taken oldest first.
///
/// The calls are not spawned: the window polls them in the order they were
/// pushed, so each reaches rskafka's (first come, first served) connection
/// lock, and the broker, in that order. Normally the records land in the
/// partition in the order they were produced, which keeps the portal's
/// digest running without a second pass. When the connection breaks or
/// the leader moves, each call is tried again on its own (rskafka's
/// retries, then `retry::Retry`'s, after a fresh look at the metadata), so
/// records can then land out of order or twice; the portal accepts both
/// (it places chunks by offset and hashes the spool at the end). Each call's timeout
/// runs from its first poll, so it covers the calls queued ahead of it.
/// Dropping the window abandons the calls.
pub(crate) struct ProduceWindow<'a> {
    partition: &'a Partition,
    capacity: usize,
    calls: VecDeque<Slot<'a>>,
    /// Each record's codec, decided from its payload.
    chooser: Chooser,
}

enum Slot<'a> {
    Pending(Producing<'a>),
    Done(Result<i64, KafkaError>),
}

impl<'a> ProduceWindow<'a> {
    /// An empty window onto `partition`; each call is bounded by its deadline.
    pub(crate) fn new(partition: &'a Partition, capacity: usize) -> Self {
        Self {
            partition,
            capacity: capacity.max(1),
            calls: VecDeque::with_capacity(capacity.max(1)),
            chooser: Chooser::new(Codec::None),
        }
    }

    /// The window with each record compressed as `codec` says.
    pub(crate) fn compressing(mut self, codec: Codec) -> Self {
        self.chooser = Chooser::new(codec);
        self
    }

    /// Which codec the records pushed so far went with, for a log line.
    pub(crate) fn compression(&self) -> String {
        self.chooser.summary()
    }

    /// Whether another frame may be pushed without waiting.
    pub(crate) fn has_room(&self) -> bool {
        self.calls.len() < self.capacity
    }

    /// Starts producing a record of `job` whose value is laid out already
    /// (`wire::ChunkValue`), after every one pushed before it; compressed
    /// as the window's codec and the value's bytes decide.
    pub(crate) fn push_value(&mut self, job: JobId, value: Vec<u8>) {
        let compression = self.chooser.pick([value.as_slice()]);
        let record = record_of_value(job, value, &[]);
        self.calls.push_back(Slot::Pending(Box::pin(
            self.partition.produce_with(vec![record], compression),
        )));
    }

    /// Polls every unfinished call, in push order.
    fn poll_pending(&mut self, cx: &mut Context<'_>) {
        for slot in &mut self.calls {
            if let Slot::Pending(call) = slot {
                if let Poll::Ready(r) = call.as_mut().poll(cx) {
                    *slot = Slot::Done(r);
                }
            }
        }
    }

    /// Polls the calls; takes the oldest call's result when it has finished.
    fn poll_calls(&mut self, cx: &mut Context<'_>) -> Option<Result<i64, KafkaError>> {
        self.poll_pending(cx);
        match self.calls.pop_front()? {
            Slot::Done(r) => Some(r),
            pending => {
                self.calls.push_front(pending);
                None
            }
        }
    }

    /// Waits for the oldest call; its offset, or None when nothing is in flight.
    pub(crate) async fn next(&mut self) -> Option<Result<i64, KafkaError>> {
        if self.calls.is_empty() {
            return None;
        }
        std::future::poll_fn(|cx| match self.poll_calls(cx) {
            Some(r) => Poll::Ready(Some(r)),
            None => Poll::Pending,
        })
        .await
    }

    /// Runs `work` (reading the next chunk, say) while the calls in flight
    /// keep moving.
    pub(crate) async fn alongside<T>(&mut self, work: impl Future<Output = T>) -> T {
        let mut work = std::pin::pin!(work);
        std::future::poll_fn(|cx| {
            self.poll_pending(cx);
            work.as_mut().poll(cx)
        })
        .await
    }
}

/// A frame the partition did not take: the first of the batch whose
/// produce call failed (later frames went with it, or were never tried),
/// so an error record can take its sequence number.
#[derive(Debug)]
pub(crate) struct Unsent {
    /// Sequence number of the first frame not produced.
    pub seq: u32,
    /// Why the produce call failed.
    pub error: KafkaError,
}

/// The portal's answer to one job on its way to the reply partition.
///
/// Frames are held while they fit one batch of `batch_max` bytes together,
/// and produced when the next would not fit or the caller flushes (the
/// portal flushes on a timer too, so a slow API's bytes still reach the
/// client). One produce call at a time: the calls of one answer reach the
/// partition in order.
pub(crate) struct ReplyWriter<'a> {
    partition: &'a Partition,
    /// Most bytes one batch may carry.
    batch_max: usize,
    /// Record headers every record of the answer carries (its attempt).
    every: Vec<(&'a str, Vec<u8>)>,
    held: Held,
    /// Each batch's codec, decided from its records' values.
    chooser: Chooser,
    /// The digest of the job's bodies, whose frame version the answer is in.
    digest: DigestKind,
    /// For a sealed job: its keys, and the attempt value each record's
    /// seal binds (section 11.4 of PROTOCOL.md).
    sealing: Option<(std::sync::Arc<crate::protocol::seal::JobKeys>, Vec<u8>)>,
}

impl<'a> ReplyWriter<'a> {
    /// A writer onto `partition` that batches up to `batch_max` bytes and
    /// puts the record headers `every` on each record.
    pub(crate) fn new(
        partition: &'a Partition,
        batch_max: usize,
        every: Vec<(&'a str, Vec<u8>)>,
    ) -> Self {
        Self {
            partition,
            batch_max,
            every,
            held: Held::default(),
            chooser: Chooser::new(Codec::None),
            digest: DigestKind::Sha256,
            sealing: None,
        }
    }

    /// The writer sealing every record with `keys`' response key, binding
    /// `attempt` (the value of the attempt header the records carry); the
    /// record headers given to [`ReplyWriter::push_with_headers`] then go
    /// sealed inside the record instead of on it.
    pub(crate) fn sealing(
        mut self,
        keys: Option<std::sync::Arc<crate::protocol::seal::JobKeys>>,
        attempt: &[u8],
    ) -> Self {
        self.sealing = keys.map(|k| (k, attempt.to_vec()));
        self
    }

    /// The writer writing frames in the version of `digest`: the request's.
    pub(crate) fn digesting(mut self, digest: DigestKind) -> Self {
        self.digest = digest;
        self
    }

    /// The writer with each batch compressed as `codec` says.
    pub(crate) fn compressing(mut self, codec: Codec) -> Self {
        self.chooser = Chooser::new(codec);
        self
    }

    /// Which codec the batches produced so far went with, for a log line.
    pub(crate) fn compression(&self) -> String {
        self.chooser.summary()
    }

    /// Holds a frame, producing what is held first if both would not fit
    /// one batch.
    pub(crate) async fn push(&mut self, frame: &Frame, payload: &[u8]) -> Result<(), Unsent> {
        self.push_with_headers(frame, payload, &[]).await
    }

    /// Like [`ReplyWriter::push`], with more Kafka record headers on the
    /// record besides those every record carries.
    pub(crate) async fn push_with_headers(
        &mut self,
        frame: &Frame,
        payload: &[u8],
        headers: &[(&str, Vec<u8>)],
    ) -> Result<(), Unsent> {
        let record = answer_record(
            self.digest,
            self.sealing.as_ref(),
            &self.every,
            frame,
            payload,
            headers,
        );
        if self.held.would_overflow(record.value_len(), self.batch_max) {
            self.flush().await?;
        }
        self.held.add(frame.seq, record);
        Ok(())
    }

    /// Produces what is held, in one request.
    pub(crate) async fn flush(&mut self) -> Result<(), Unsent> {
        let Some((seq, records)) = self.held.take() else {
            return Ok(());
        };
        let compression = self
            .chooser
            .pick(records.iter().filter_map(|r| r.value.as_deref()));
        self.partition
            .produce_with(records, compression)
            .await
            .map(drop)
            .map_err(|error| Unsent { seq, error })
    }
}

/// The record of one answer frame: in the frame version of `digest`, with
/// the record headers `every` and `headers`; or, for a sealed job, sealed
/// with its response key binding the attempt, `headers` sealed inside and
/// only `every` (the attempt) on the record.
fn answer_record(
    digest: DigestKind,
    sealing: Option<&(std::sync::Arc<crate::protocol::seal::JobKeys>, Vec<u8>)>,
    every: &[(&str, Vec<u8>)],
    frame: &Frame,
    payload: &[u8],
    headers: &[(&str, Vec<u8>)],
) -> Record {
    match (sealing, headers.is_empty()) {
        (Some((keys, attempt)), _) => {
            let sealed_headers = headers
                .iter()
                .map(|(n, v)| (n.to_string(), v.clone()))
                .collect();
            let value = keys
                .response
                .seal_clear(frame, payload, sealed_headers, attempt);
            crate::kafka::record_of_value(frame.job, value, every)
        }
        (None, true) => record_in(digest, frame, payload, every),
        (None, false) => record_in(digest, frame, payload, &[every, headers].concat()),
    }
}

/// The records a [`ReplyWriter`] holds: no I/O, so its rule can be tested
/// without a broker.
#[derive(Debug, Default)]
struct Held {
    records: Vec<Record>,
    bytes: usize,
    /// Sequence number of the first held record.
    first_seq: u32,
}

impl Held {
    /// Whether a record of `size` bytes must wait for what is held to go
    /// first. A record larger than a batch alone still goes, by itself.
    fn would_overflow(&self, size: usize, batch_max: usize) -> bool {
        !self.records.is_empty() && self.bytes.saturating_add(size) > batch_max
    }

    fn add(&mut self, seq: u32, record: Record) {
        if self.records.is_empty() {
            self.first_seq = seq;
        }
        self.bytes = self.bytes.saturating_add(record.value_len());
        self.records.push(record);
    }

    /// Everything held and the first one's sequence number; `None` when
    /// nothing is.
    fn take(&mut self) -> Option<(u32, Vec<Record>)> {
        if self.records.is_empty() {
            return None;
        }
        self.bytes = 0;
        Some((self.first_seq, std::mem::take(&mut self.records)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kafka::record;
    use crate::protocol::wire::{Body, ChunkInfo, JobId};

    fn chunk(job: JobId, seq: u32, len: usize) -> (u32, Record) {
        let frame = Frame {
            job,
            seq,
            body: Body::Chunk(ChunkInfo {
                offset: 0,
                crc32c: 0,
            }),
        };
        (seq, record(&frame, &vec![7; len], &[]))
    }

    #[test]
    fn held_frames_go_together_while_they_fit_one_batch() {
        let job = JobId::new();
        let mut held = Held::default();
        assert!(held.take().is_none());
        let (seq, first) = chunk(job, 3, 100);
        let size = first.value_len();
        // Nothing held: even a record past the limit is not held back.
        assert!(!held.would_overflow(10 * size, size));
        held.add(seq, first);
        let (seq, second) = chunk(job, 4, 100);
        assert!(!held.would_overflow(second.value_len(), 2 * size));
        assert!(held.would_overflow(second.value_len(), 2 * size - 1));
        held.add(seq, second);
        let (first_seq, records) = held.take().unwrap_or_default();
        assert_eq!(first_seq, 3, "an error record takes the first one's place");
        assert_eq!(records.len(), 2);
        assert!(held.take().is_none());
        // After a take the count starts again, from the next record's seq.
        let (seq, third) = chunk(job, 5, 100);
        assert!(!held.would_overflow(third.value_len(), size));
        held.add(seq, third);
        assert_eq!(held.take().map(|(s, r)| (s, r.len())), Some((5, 1)));
    }

    #[test]
    fn sizes_near_the_largest_do_not_overflow_the_count() {
        let mut held = Held {
            bytes: usize::MAX - 1,
            ..Held::default()
        };
        let (seq, r) = chunk(JobId::new(), 0, 10);
        held.add(seq, r);
        assert_eq!(held.bytes, usize::MAX);
        assert!(held.would_overflow(usize::MAX, usize::MAX - 1));
    }

    #[test]
    fn a_sealed_answer_carries_only_its_attempt_and_seals_the_rest() {
        use crate::protocol::seal::JobKeys;
        use crate::protocol::wire::{decode, ResponseStart, ATTEMPT_HEADER};
        let job = JobId::new();
        let keys = std::sync::Arc::new(JobKeys::random(job));
        let attempt = b"01J0ATTEMPT".to_vec();
        let sealing = (std::sync::Arc::clone(&keys), attempt.clone());
        let every = [(ATTEMPT_HEADER, attempt.clone())];
        let head = Frame {
            job,
            seq: 0,
            body: Body::ResponseStart(ResponseStart {
                status: 201,
                headers: vec![("x-answer".into(), "quiet-b41d".into())],
                body_len: Some(5),
                digest: DigestKind::Blake3,
            }),
        };
        let traceparent = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_vec();
        let extra = [("traceparent", traceparent.clone())];
        let rec = answer_record(
            DigestKind::Blake3,
            Some(&sealing),
            &every,
            &head,
            &[],
            &extra,
        );
        assert_eq!(rec.headers.keys().collect::<Vec<_>>(), vec![ATTEMPT_HEADER]);
        let value = rec.value.unwrap_or_default();
        assert!(!value.windows(10).any(|w| w == b"quiet-b41d"));
        let (frame, payload) = decode(&value).unwrap();
        assert!(matches!(frame.body, Body::SealedResponseStart(_)));
        let opened = keys
            .response
            .open_frame(&value, frame, payload, &attempt)
            .unwrap();
        assert_eq!(opened.frame.body, head.body);
        assert_eq!(
            opened.record_headers,
            vec![("traceparent".to_string(), traceparent)]
        );
        // A chunk: its bytes sealed, its place in clear.
        let chunk = Frame {
            job,
            seq: 1,
            body: Body::Chunk(ChunkInfo {
                offset: 0,
                crc32c: crate::protocol::wire::checksum(b"hello"),
            }),
        };
        let rec = answer_record(
            DigestKind::Blake3,
            Some(&sealing),
            &every,
            &chunk,
            b"hello",
            &[],
        );
        let value = rec.value.unwrap_or_default();
        assert!(!value.windows(5).any(|w| w == b"hello"));
        let (frame, payload) = decode(&value).unwrap();
        let opened = keys
            .response
            .open_frame(&value, frame, payload, &attempt)
            .unwrap();
        assert_eq!(opened.payload, b"hello");
        // Not sealed: the headers ride on the record, as before.
        let rec = answer_record(DigestKind::Blake3, None, &every, &head, &[], &extra);
        assert_eq!(rec.headers.len(), 2);
    }
}
