//! Record batches as a fetch response carries them, read the way Kafka's own
//! consumer reads them with `isolation.level=read_committed`.
//!
//! Kafka's v2 batch format is decoded here, and every codec Kafka writes
//! (gzip, snappy, lz4, zstd) is undone, within [`MAX_BATCH_BYTES`] per batch.
//! Control batches (the commit and abort markers of transactions) are
//! dropped, and so are the records of aborted transactions: from the first
//! offset the broker lists for an aborted producer until that producer's
//! abort marker.
//!
//! A batch that cannot be read (an unknown codec or format, data its codec
//! rejects, too large once decompressed; a bad checksum once the caller
//! chooses to skip it, `Reading::skip_crc_failure`) does not stop the
//! reader. It comes out as an [`Unreadable`] item in its place, naming its
//! offsets, why, and the keys of whatever records could still be made out,
//! and reading goes on after it. No I/O here: `fetcher` hands in the bytes of
//! one fetch response.

use std::collections::{BTreeMap, HashSet};
use std::io::Read;

use crate::kafka::{Record, RecordAndOffset};
use bytes::Bytes;

/// Largest records section of one batch once decompressed. Our own batches
/// hold at most one chunk (under 8 MiB); a larger one is skipped as
/// [`SkipReason::TooLarge`] rather than held in memory.
pub(crate) const MAX_BATCH_BYTES: usize = 16 * 1024 * 1024;

/// Record bytes decoded from one fetch response before the rest is left for
/// the next fetch: with [`MAX_BATCH_BYTES`], bounds a reader's memory
/// whatever the compression ratio.
const DECODE_BUDGET: usize = 16 * 1024 * 1024;

/// Records taken from one fetch response before the rest is left for the
/// next fetch: tiny records cost more in bookkeeping than in bytes.
const MAX_RECORDS: usize = 65_536;

/// Keys an [`Unreadable`] lists at most, and the longest it keeps: a job id
/// is 26 bytes, so longer keys cannot name a job.
const MAX_KEYS: usize = 256;
const MAX_KEY_LEN: usize = 64;
/// Longest reply-to header value kept: a partition number, `/` and a
/// topic name of at most 249 bytes.
const MAX_REPLY_TO_LEN: usize = 261;

/// Base offset and batch length: what precedes every batch, whatever its format.
const LOG_OVERHEAD: usize = 12;
/// The v2 batch header, up to and including the record count.
const HEADER_V2: usize = 61;
/// Smallest v2 record: length, attributes, timestamp and offset deltas, key
/// and value lengths, header count, one byte each.
const MIN_RECORD: usize = 7;
/// Magic byte of the xerial framing Kafka's Java client wraps snappy data in.
const XERIAL_MAGIC: &[u8; 8] = b"\x82SNAPPY\x00";

/// A transaction the broker says was aborted: `producer_id`'s records from
/// `first_offset` on, until its abort marker, are not to be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct AbortedTxn {
    /// Producer that wrote the transaction.
    pub producer_id: i64,
    /// Offset of the transaction's first record.
    pub first_offset: i64,
}

/// Why a batch was skipped; the `reason` label of `kafkasend_records_skipped_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SkipReason {
    /// The checksum does not match, or the records inside do not parse.
    Corrupt,
    /// An unknown codec, or data the codec rejects.
    Codec,
    /// A message format other than v2 (Kafka before 0.11).
    Format,
    /// Larger than [`MAX_BATCH_BYTES`] once decompressed.
    TooLarge,
}

impl SkipReason {
    /// The metric label.
    pub(crate) fn label(self) -> &'static str {
        match self {
            Self::Corrupt => "corrupt",
            Self::Codec => "codec",
            Self::Format => "format",
            Self::TooLarge => "too_large",
        }
    }
}

/// A batch that could not be read, in the place of its records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unreadable {
    /// Its first offset.
    pub first_offset: i64,
    /// Its last offset.
    pub last_offset: i64,
    /// Why it was skipped.
    pub reason: SkipReason,
    /// What was wrong, for the log.
    pub detail: String,
    /// Keys of the records in it that could still be made out (only those
    /// short enough to be a job id): the jobs it may have held.
    pub keys: Vec<Vec<u8>>,
    /// Key and `kafkasend-reply-to` header value of each record whose
    /// header could still be made out: the start records it held, and
    /// where their answers go.
    pub reply_to: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Unreadable {
    /// How many offsets it covers.
    pub(crate) fn records(&self) -> u64 {
        u64::try_from(
            self.last_offset
                .saturating_sub(self.first_offset)
                .saturating_add(1),
        )
        .unwrap_or(1)
    }
}

/// One thing a fetch found, in offset order.
#[derive(Debug)]
pub enum Item {
    /// A record to read.
    Record(RecordAndOffset),
    /// A batch that was skipped.
    Unreadable(Unreadable),
}

/// What one fetch response held.
#[derive(Debug, Default)]
pub(crate) struct Decoded {
    /// Records and unreadable batches, in offset order.
    pub items: Vec<Item>,
    /// Where the next fetch starts: past every batch read, dropped or skipped here.
    pub next_offset: i64,
    /// Records dropped as Kafka's read_committed consumer drops them:
    /// transaction markers and records of aborted transactions.
    pub dropped: u64,
    /// Set when decoding stopped at a batch that fails its checksum, to be
    /// fetched again (see [`Reading::skip_crc_failure`]): `next_offset`.
    pub crc_failed_at: Option<i64>,
}

/// What `decode` is told beyond the response's record bytes.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Reading {
    /// The partition's high watermark: no batch skipped reaches past it.
    pub high_watermark: i64,
    /// Whether a batch that fails its checksum is skipped. If not, decoding
    /// stops before it: a checksum failure may be transient (Kafka's own
    /// consumer fails the fetch and fetches again), so the caller skips only
    /// once it has failed on a few fetches in a row.
    pub skip_crc_failure: bool,
}

/// A compression codec, from the low three bits of a batch's attributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Codec {
    None,
    Gzip,
    Snappy,
    Lz4,
    Zstd,
}

impl Codec {
    fn from_attributes(attributes: i16) -> Result<Self, i16> {
        match attributes & 0x7 {
            0 => Ok(Self::None),
            1 => Ok(Self::Gzip),
            2 => Ok(Self::Snappy),
            3 => Ok(Self::Lz4),
            4 => Ok(Self::Zstd),
            other => Err(other),
        }
    }

    fn name(self) -> &'static str {
        match self {
            Self::None => "uncompressed",
            Self::Gzip => "gzip",
            Self::Snappy => "snappy",
            Self::Lz4 => "lz4",
            Self::Zstd => "zstd",
        }
    }
}

/// Decodes the record bytes of one fetch response that asked for records
/// from offset `from`. Records below `from` (the start of the first batch)
/// are left out. The only error is a response that holds record bytes but
/// not one whole batch, or a batch whose length is negative: then nothing
/// can be read past `from`.
pub(crate) fn decode(
    data: Bytes,
    from: i64,
    aborted: &[AbortedTxn],
    reading: Reading,
) -> Result<Decoded, String> {
    let mut out = Decoded {
        next_offset: from,
        ..Decoded::default()
    };
    let mut txns = Transactions::new(aborted);
    let mut rest = data;
    let mut whole = 0usize;
    let mut budget = Budget::default();
    while rest.len() >= LOG_OVERHEAD {
        if budget.spent() {
            break;
        }
        let base = be_i64(&rest[0..8]);
        let len = be_i32(&rest[8..12]);
        let Ok(len) = usize::try_from(len) else {
            if whole == 0 {
                return Err(format!(
                    "the record batch at offset {base} has a negative length ({len})"
                ));
            }
            break;
        };
        if rest.len() - LOG_OVERHEAD < len {
            // The broker may cut the last batch short; it comes whole next time.
            break;
        }
        whole += 1;
        let batch = rest.split_to(LOG_OVERHEAD + len);
        let bounds = Bounds {
            next_base: next_whole_base(&rest),
            reading,
        };
        if !read_batch(&batch, base, bounds, &mut txns, &mut budget, &mut out) {
            break;
        }
    }
    if whole == 0 && !rest.is_empty() {
        return Err(format!(
            "the fetch response holds {} bytes but not one whole record batch at offset {from}",
            rest.len()
        ));
    }
    Ok(out)
}

/// The base offset of the whole batch at the start of `rest`, if any.
fn next_whole_base(rest: &Bytes) -> Option<i64> {
    if rest.len() < LOG_OVERHEAD {
        return None;
    }
    let len = usize::try_from(be_i32(&rest[8..12])).ok()?;
    (rest.len() - LOG_OVERHEAD >= len).then(|| be_i64(&rest[0..8]))
}

/// What bounds the offsets of a batch whose own header cannot be trusted.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    /// Base offset of the whole batch after it in the response.
    next_base: Option<i64>,
    reading: Reading,
}

/// How much of one response has been decoded so far.
#[derive(Debug, Default)]
struct Budget {
    bytes: usize,
    records: usize,
}

impl Budget {
    fn spent(&self) -> bool {
        self.bytes >= DECODE_BUDGET || self.records >= MAX_RECORDS
    }
}

/// The fields of a v2 batch header this module uses.
#[derive(Debug)]
struct Header {
    base: i64,
    last: i64,
    attributes: i16,
    first_timestamp: i64,
    max_timestamp: i64,
    producer_id: i64,
    record_count: i32,
}

impl Header {
    fn transactional(&self) -> bool {
        self.attributes & (1 << 4) != 0
    }

    fn control(&self) -> bool {
        self.attributes & (1 << 5) != 0
    }

    fn log_append_time(&self) -> bool {
        self.attributes & (1 << 3) != 0
    }
}

/// Reads one whole batch (`base` offset, length and the rest) into `out`;
/// false when decoding is to stop before it.
fn read_batch(
    batch: &Bytes,
    base: i64,
    bounds: Bounds,
    txns: &mut Transactions,
    budget: &mut Budget,
    out: &mut Decoded,
) -> bool {
    let skip = |out: &mut Decoded, last: i64, reason, detail: String, legible: Legible| {
        out.items.push(Item::Unreadable(Unreadable {
            first_offset: base,
            last_offset: last,
            reason,
            detail,
            keys: legible.keys,
            reply_to: legible.reply_to,
        }));
        out.next_offset = out.next_offset.max(last.saturating_add(1));
    };
    // Magic byte: after base offset, length and partition leader epoch.
    let Some(&magic) = batch.get(16) else {
        skip(
            out,
            base,
            SkipReason::Corrupt,
            format!("the record batch at offset {base} is too short to read"),
            Legible::default(),
        );
        return true;
    };
    if magic != 2 {
        // The offset of a v0/v1 entry is its last record's.
        skip(
            out,
            base,
            SkipReason::Format,
            format!("a message set in format v{magic} (Kafka before 0.11) cannot be read; only v2 record batches can"),
            Legible::default(),
        );
        return true;
    }
    if batch.len() < HEADER_V2 {
        skip(
            out,
            base,
            SkipReason::Corrupt,
            format!("the record batch at offset {base} is too short to read"),
            Legible::default(),
        );
        return true;
    }
    let last_delta = be_i32(&batch[23..27]);
    let header = Header {
        base,
        last: base.saturating_add(i64::from(last_delta.max(0))),
        attributes: be_i16(&batch[21..23]),
        first_timestamp: be_i64(&batch[27..35]),
        max_timestamp: be_i64(&batch[35..43]),
        producer_id: be_i64(&batch[43..51]),
        record_count: be_i32(&batch[57..61]),
    };
    let last = header.last;
    if last < out.next_offset {
        // Wholly before the offset asked for: nothing in it is wanted.
        return true;
    }
    let crc = be_u32(&batch[17..21]);
    if crc32c::crc32c(&batch[21..]) != crc {
        if !bounds.reading.skip_crc_failure {
            out.crc_failed_at = Some(out.next_offset);
            return false;
        }
        // The checksum covers the last offset delta too: a damaged one must
        // not pass over batches that are fine. It ends before the next
        // batch, and before the high watermark.
        let mut last = last.min(bounds.reading.high_watermark.saturating_sub(1));
        if let Some(next) = bounds.next_base.filter(|&n| n > base) {
            last = last.min(next - 1);
        }
        let last = last.max(base);
        let keys = match Codec::from_attributes(header.attributes) {
            Ok(Codec::None) => legible_in(&batch[HEADER_V2..]),
            _ => Legible::default(),
        };
        skip(
            out,
            last,
            SkipReason::Corrupt,
            format!("the record batch at offsets {base}..={last} fails its CRC32C check"),
            keys,
        );
        return true;
    }
    if header.producer_id >= 0 {
        txns.reach(last);
        if header.control() {
            if is_abort_marker(&batch.slice(HEADER_V2..), &header) {
                txns.ended(header.producer_id);
            }
        } else if header.transactional() && txns.is_aborted(header.producer_id) {
            out.dropped += u64::try_from(header.record_count).unwrap_or(0);
            out.next_offset = out.next_offset.max(last.saturating_add(1));
            return true;
        }
    }
    if header.control() {
        out.dropped += u64::try_from(header.record_count).unwrap_or(0);
        out.next_offset = out.next_offset.max(last.saturating_add(1));
        return true;
    }
    let codec = match Codec::from_attributes(header.attributes) {
        Ok(c) => c,
        Err(n) => {
            skip(
                out,
                last,
                SkipReason::Codec,
                format!(
                    "the record batch at offsets {base}..={last} uses compression codec {n}, which Kafka does not define"
                ),
                Legible::default(),
            );
            return true;
        }
    };
    let section = batch.slice(HEADER_V2..);
    let records = match decompress(codec, &section, MAX_BATCH_BYTES) {
        Ok(r) => r,
        Err(failed) => {
            let detail = format!(
                "the {} record batch at offsets {base}..={last} {}",
                codec.name(),
                failed.detail
            );
            let keys = legible_in(&failed.prefix);
            skip(out, last, failed.reason, detail, keys);
            return true;
        }
    };
    budget.bytes += records.len();
    let from = out.next_offset;
    match parse_records(&records, &header, from, budget) {
        Ok((parsed, stopped_at)) => {
            out.items.extend(parsed.into_iter().map(Item::Record));
            out.next_offset = match stopped_at {
                Some(offset) => offset,
                None => out.next_offset.max(last.saturating_add(1)),
            };
        }
        Err(detail) => {
            let keys = legible_in(&records);
            skip(
                out,
                last,
                SkipReason::Corrupt,
                format!(
                    "the {} record batch at offsets {base}..={last} is damaged: {detail}",
                    codec.name()
                ),
                keys,
            );
        }
    }
    true
}

/// Kafka's read_committed filter over one fetch response, as its consumer
/// applies it: an aborted transaction starts to count once a batch reaches
/// its first offset, and ends at its producer's abort marker. The broker
/// lists every aborted transaction overlapping the fetched range, so no
/// state carries over from one response to the next.
#[derive(Debug)]
struct Transactions {
    /// Aborted transactions not yet reached, the lowest first offset last.
    ahead: Vec<AbortedTxn>,
    /// Producers inside an aborted transaction: their transactional
    /// batches are dropped until their abort marker.
    open: HashSet<i64>,
}

impl Transactions {
    fn new(aborted: &[AbortedTxn]) -> Self {
        let mut ahead = aborted.to_vec();
        ahead.sort_by_key(|t| std::cmp::Reverse(t.first_offset));
        Self {
            ahead,
            open: HashSet::new(),
        }
    }

    /// A batch ending at `last` is next: every aborted transaction that
    /// starts at or before it is now open.
    fn reach(&mut self, last: i64) {
        while self.ahead.last().is_some_and(|t| t.first_offset <= last) {
            if let Some(t) = self.ahead.pop() {
                self.open.insert(t.producer_id);
            }
        }
    }

    fn is_aborted(&self, producer_id: i64) -> bool {
        self.open.contains(&producer_id)
    }

    /// The abort marker of `producer_id`'s transaction.
    fn ended(&mut self, producer_id: i64) {
        self.open.remove(&producer_id);
    }
}

/// Whether a control batch is an abort marker: its first record's key is
/// a version (i16) and a type (i16), and type 0 is ABORT (1 is COMMIT).
fn is_abort_marker(section: &Bytes, header: &Header) -> bool {
    let mut cur = Cursor::new(section);
    match parse_record(&mut cur, header) {
        Ok(rec) => rec
            .record
            .key
            .as_deref()
            .is_some_and(|k| k.len() >= 4 && k[2..4] == [0, 0]),
        Err(_) => false,
    }
}

/// Parses a batch's records; those below `from` are left out. Stops early,
/// returning the offset to go on from, when `budget` runs out part-way.
fn parse_records(
    section: &[u8],
    header: &Header,
    from: i64,
    budget: &mut Budget,
) -> Result<(Vec<RecordAndOffset>, Option<i64>), String> {
    let count = usize::try_from(header.record_count)
        .map_err(|_| format!("negative record count {}", header.record_count))?;
    if count > section.len() / MIN_RECORD {
        return Err(format!(
            "{count} records cannot fit in {} bytes",
            section.len()
        ));
    }
    let mut cur = Cursor::new(section);
    let mut out = Vec::with_capacity(count.min(1024));
    for _ in 0..count {
        let rec = parse_record(&mut cur, header)?;
        if rec.offset < from {
            continue;
        }
        if budget.records >= MAX_RECORDS {
            // The rest of this batch comes again with the next fetch.
            return Ok((out, Some(rec.offset)));
        }
        budget.records += 1;
        out.push(rec);
    }
    if cur.remaining() > 0 {
        return Err(format!(
            "{} bytes follow the {count} records the header announces",
            cur.remaining()
        ));
    }
    Ok((out, None))
}

/// Parses one record.
fn parse_record(cur: &mut Cursor<'_>, header: &Header) -> Result<RecordAndOffset, String> {
    let len = usize::try_from(cur.varint()?).map_err(|_| "negative record length".to_string())?;
    let mut rec = Cursor::new(cur.take(len)?);
    let _attributes = rec.take(1)?;
    let timestamp_delta = rec.varlong()?;
    let offset_delta = rec.varint()?;
    let key = rec.nullable()?.map(<[u8]>::to_vec);
    let value = rec.nullable()?.map(<[u8]>::to_vec);
    let header_count =
        usize::try_from(rec.varint()?).map_err(|_| "negative header count".to_string())?;
    if header_count > rec.remaining() / 2 {
        return Err(format!(
            "{header_count} headers cannot fit in {} bytes",
            rec.remaining()
        ));
    }
    let mut headers = BTreeMap::new();
    for _ in 0..header_count {
        let name = rec
            .nullable()?
            .ok_or_else(|| "a header without a name".to_string())?;
        let value = rec.nullable()?.map(<[u8]>::to_vec).unwrap_or_default();
        headers.insert(String::from_utf8_lossy(name).into_owned(), value);
    }
    if rec.remaining() > 0 {
        return Err(format!(
            "{} bytes follow a record's headers",
            rec.remaining()
        ));
    }
    let millis = if header.log_append_time() {
        header.max_timestamp
    } else {
        header.first_timestamp.saturating_add(timestamp_delta)
    };
    Ok(RecordAndOffset {
        record: Record {
            key,
            value,
            headers,
            timestamp_ms: millis,
        },
        offset: header.base.saturating_add(i64::from(offset_delta)),
    })
}

/// What could still be made out of the records of an unreadable batch.
#[derive(Debug, Default)]
struct Legible {
    keys: Vec<Vec<u8>>,
    reply_to: Vec<(Vec<u8>, Vec<u8>)>,
}

/// The keys of the records in `section` up to the first that cannot be
/// made out, each once, and the reply-to headers among them: the jobs an
/// unreadable batch may have held. A record cut short or damaged past its
/// key still gives its key; one damaged before its reply-to header gives
/// no header.
fn legible_in(section: &[u8]) -> Legible {
    let mut cur = Cursor::new(section);
    let mut out = Legible::default();
    while cur.remaining() > 0 && out.keys.len() < MAX_KEYS {
        let Some(len) = cur.varint().ok().and_then(|n| usize::try_from(n).ok()) else {
            break;
        };
        let whole = len <= cur.remaining();
        let Ok(body) = cur.take(len.min(cur.remaining())) else {
            break;
        };
        let mut rec = Cursor::new(body);
        let key = rec
            .take(1)
            .and_then(|_| rec.varlong())
            .and_then(|_| rec.varint())
            .and_then(|_| rec.nullable());
        if let Ok(Some(k)) = key {
            if k.len() <= MAX_KEY_LEN {
                if !out.keys.iter().any(|seen| seen == k) {
                    out.keys.push(k.to_vec());
                }
                if let Some(to) = reply_to_in(&mut rec) {
                    if out.reply_to.len() < MAX_KEYS {
                        out.reply_to.push((k.to_vec(), to.to_vec()));
                    }
                }
            }
        }
        if !whole {
            break;
        }
    }
    out
}

/// The reply-to header of a record read up to its key, if it can be made out.
fn reply_to_in<'a>(rec: &mut Cursor<'a>) -> Option<&'a [u8]> {
    rec.nullable().ok()?;
    let count = usize::try_from(rec.varint().ok()?).ok()?;
    for _ in 0..count {
        let name = rec.nullable().ok()??;
        let value = rec.nullable().ok()?;
        if name == crate::protocol::wire::REPLY_TO_HEADER.as_bytes() {
            return value.filter(|v| v.len() <= MAX_REPLY_TO_LEN);
        }
    }
    None
}

/// Why decompression failed, and what came out before it did.
#[derive(Debug)]
struct Failed {
    reason: SkipReason,
    detail: String,
    prefix: Vec<u8>,
}

/// Undoes `codec` on a batch's records section, giving up past `limit`
/// bytes of output.
fn decompress(codec: Codec, input: &Bytes, limit: usize) -> Result<Bytes, Failed> {
    let out = match codec {
        Codec::None => {
            if input.len() > limit {
                return Err(too_large(limit, input[..limit].to_vec()));
            }
            return Ok(input.clone());
        }
        Codec::Gzip => read_limited(flate2::read::MultiGzDecoder::new(&input[..]), limit),
        Codec::Lz4 => match lz4::Decoder::new(&input[..]) {
            Ok(d) => read_limited(d, limit),
            Err(e) => Err(damaged(e, Vec::new())),
        },
        Codec::Zstd => match zstd::stream::read::Decoder::with_buffer(&input[..]) {
            Ok(d) => read_limited(d, limit),
            Err(e) => Err(damaged(e, Vec::new())),
        },
        Codec::Snappy => unsnappy(input, limit),
    }?;
    Ok(Bytes::from(out))
}

fn too_large(limit: usize, prefix: Vec<u8>) -> Failed {
    Failed {
        reason: SkipReason::TooLarge,
        detail: format!(
            "holds more than {} MiB once decompressed",
            limit / (1024 * 1024)
        ),
        prefix,
    }
}

fn damaged(e: impl std::fmt::Display, prefix: Vec<u8>) -> Failed {
    Failed {
        reason: SkipReason::Codec,
        detail: format!("cannot be decompressed: {e}"),
        prefix,
    }
}

fn read_limited(reader: impl Read, limit: usize) -> Result<Vec<u8>, Failed> {
    let mut out = Vec::new();
    let cap = u64::try_from(limit).unwrap_or(u64::MAX).saturating_add(1);
    match reader.take(cap).read_to_end(&mut out) {
        Ok(_) if out.len() > limit => {
            out.truncate(limit);
            Err(too_large(limit, out))
        }
        Ok(_) => Ok(out),
        Err(e) => Err(damaged(e, out)),
    }
}

/// Snappy as Kafka's Java client writes it: the xerial stream (a 16-byte
/// header, then blocks each preceded by its length as a big-endian u32), or,
/// as the Java client also accepts, one raw snappy block.
fn unsnappy(input: &[u8], limit: usize) -> Result<Vec<u8>, Failed> {
    let mut decoder = snap::raw::Decoder::new();
    let mut out = Vec::new();
    let mut block = |data: &[u8], out: &mut Vec<u8>| -> Result<(), Failed> {
        let n = snap::raw::decompress_len(data).map_err(|e| damaged(e, Vec::new()))?;
        if out.len().saturating_add(n) > limit {
            return Err(too_large(limit, std::mem::take(out)));
        }
        let at = out.len();
        out.resize(at + n, 0);
        match decoder.decompress(data, &mut out[at..]) {
            Ok(written) => {
                out.truncate(at + written);
                Ok(())
            }
            Err(e) => {
                out.truncate(at);
                Err(damaged(e, std::mem::take(out)))
            }
        }
    };
    if input.len() < 16 || !input.starts_with(XERIAL_MAGIC) {
        block(input, &mut out)?;
        return Ok(out);
    }
    let mut rest = &input[16..];
    while !rest.is_empty() {
        let Some((len, tail)) = rest.split_first_chunk::<4>() else {
            return Err(damaged("a block length is cut short", out));
        };
        let len = usize::try_from(u32::from_be_bytes(*len)).unwrap_or(usize::MAX);
        if len > tail.len() {
            return Err(damaged("a block is cut short", out));
        }
        let (data, next) = tail.split_at(len);
        block(data, &mut out)?;
        rest = next;
    }
    Ok(out)
}

/// Reads Kafka's big-endian integers and zigzag varints from a byte slice.
struct Cursor<'a> {
    buf: &'a [u8],
}

impl<'a> Cursor<'a> {
    fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        if n > self.buf.len() {
            return Err(format!("{n} bytes announced, {} left", self.buf.len()));
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// An unsigned LEB128 value of at most `max_bytes` bytes.
    fn unsigned(&mut self, max_bytes: u32) -> Result<u64, String> {
        let mut value = 0u64;
        for i in 0..max_bytes {
            let b = self.take(1)?[0];
            value |= u64::from(b & 0x7f) << (7 * i);
            if b & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("a varint is too long".into())
    }

    fn varint(&mut self) -> Result<i32, String> {
        let v = self.unsigned(5)?;
        let v = u32::try_from(v).map_err(|_| "a varint is too large".to_string())?;
        Ok(((v >> 1) as i32) ^ -((v & 1) as i32))
    }

    fn varlong(&mut self) -> Result<i64, String> {
        let v = self.unsigned(10)?;
        Ok(((v >> 1) as i64) ^ -((v & 1) as i64))
    }

    /// A length-prefixed field; length -1 means null.
    fn nullable(&mut self) -> Result<Option<&'a [u8]>, String> {
        match self.varint()? {
            -1 => Ok(None),
            n => match usize::try_from(n) {
                Ok(n) => self.take(n).map(Some),
                Err(_) => Err(format!("negative length {n}")),
            },
        }
    }
}

fn be_i64(b: &[u8]) -> i64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    i64::from_be_bytes(a)
}

fn be_i32(b: &[u8]) -> i32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    i32::from_be_bytes(a)
}

fn be_u32(b: &[u8]) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[..4]);
    u32::from_be_bytes(a)
}

fn be_i16(b: &[u8]) -> i16 {
    i16::from_be_bytes([b[0], b[1]])
}

#[cfg(test)]
mod tests;
