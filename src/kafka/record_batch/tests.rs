//! Unit tests of the batch decoder: batches built with kafka-protocol's
//! encoder, every codec, transactions, damaged and hostile input.

use std::io::Write;

use bytes::{BufMut, BytesMut};
use kafka_protocol::indexmap::IndexMap;
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record as KRecord, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
};
use proptest::prelude::*;

use super::*;

const JOB: &str = "01JDXK5Q7V8Y0C4J6N2W3R9T1M";

/// Decodes as a reader that has already fetched any batch failing its
/// checksum often enough to skip it.
fn decode(data: Bytes, from: i64, aborted: &[AbortedTxn]) -> Result<Decoded, String> {
    super::decode(
        data,
        from,
        aborted,
        Reading {
            high_watermark: i64::MAX,
            skip_crc_failure: true,
        },
    )
}

/// Sets a batch's base offset.
fn rebase(batch: &mut [u8], base: i64) {
    batch[0..8].copy_from_slice(&base.to_be_bytes());
}

/// A plain record, written by a producer without transactions.
fn plain(offset: i64, key: &str, value: &[u8]) -> KRecord {
    KRecord {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: 0,
        producer_id: -1,
        producer_epoch: -1,
        timestamp_type: TimestampType::Creation,
        offset,
        sequence: offset as i32,
        timestamp: 1_700_000_000_000 + offset,
        key: Some(Bytes::copy_from_slice(key.as_bytes())),
        value: Some(Bytes::copy_from_slice(value)),
        headers: IndexMap::new(),
    }
}

/// A record of `producer`'s transaction.
fn txn(offset: i64, producer: i64, value: &str) -> KRecord {
    KRecord {
        transactional: true,
        producer_id: producer,
        producer_epoch: 0,
        ..plain(offset, "k", value.as_bytes())
    }
}

/// An idempotent producer's record outside any transaction.
fn idempotent(offset: i64, producer: i64, value: &str) -> KRecord {
    KRecord {
        transactional: false,
        ..txn(offset, producer, value)
    }
}

/// A transaction marker: key version 0, type 0 (abort) or 1 (commit).
fn marker(offset: i64, producer: i64, abort: bool) -> KRecord {
    KRecord {
        control: true,
        key: Some(Bytes::from_static(if abort {
            &[0, 0, 0, 0]
        } else {
            &[0, 0, 0, 1]
        })),
        value: Some(Bytes::from_static(&[0, 0, 0, 0, 0, 0])),
        ..txn(offset, producer, "")
    }
}

/// The xerial snappy stream Kafka's Java client writes.
fn xerial(data: &[u8]) -> Vec<u8> {
    let mut out = XERIAL_MAGIC.to_vec();
    out.extend_from_slice(&[0, 0, 0, 1, 0, 0, 0, 1]);
    for block in data.chunks(32 * 1024) {
        let packed = snap::raw::Encoder::new().compress_vec(block).unwrap();
        out.extend_from_slice(&(packed.len() as u32).to_be_bytes());
        out.extend_from_slice(&packed);
    }
    out
}

fn compress(codec: Compression, data: &[u8]) -> Vec<u8> {
    match codec {
        Compression::None => data.to_vec(),
        Compression::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(data).unwrap();
            e.finish().unwrap()
        }
        Compression::Snappy => xerial(data),
        Compression::Lz4 => {
            let mut e = lz4::EncoderBuilder::new().build(Vec::new()).unwrap();
            e.write_all(data).unwrap();
            let (out, r) = e.finish();
            r.unwrap();
            out
        }
        Compression::Zstd => zstd::bulk::compress(data, 3).unwrap(),
    }
}

/// One batch (the records must agree on producer and flags), its
/// records section compressed with `codec` by another encoder than ours.
fn batch(records: &[KRecord], codec: Compression) -> Vec<u8> {
    let mut buf = BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: codec,
    };
    RecordBatchEncoder::encode_with_custom_compression(
        &mut buf,
        records,
        &options,
        Some(|plain: &mut BytesMut, out: &mut BytesMut, c: Compression| {
            out.put_slice(&compress(c, plain));
            Ok(())
        }),
    )
    .unwrap();
    buf.to_vec()
}

fn response(batches: &[Vec<u8>]) -> Bytes {
    Bytes::from(batches.concat())
}

/// Rewrites a batch's CRC after a test changed its bytes.
fn fix_crc(batch: &mut [u8]) {
    let crc = crc32c::crc32c(&batch[21..]);
    batch[17..21].copy_from_slice(&crc.to_be_bytes());
}

fn records(d: &Decoded) -> Vec<(i64, Vec<u8>)> {
    d.items
        .iter()
        .filter_map(|i| match i {
            Item::Record(r) => Some((r.offset, r.record.value.clone().unwrap_or_default())),
            Item::Unreadable(_) => None,
        })
        .collect()
}

fn unreadable(d: &Decoded) -> Vec<&Unreadable> {
    d.items
        .iter()
        .filter_map(|i| match i {
            Item::Unreadable(u) => Some(u),
            Item::Record(_) => None,
        })
        .collect()
}

fn values(d: &Decoded) -> Vec<String> {
    records(d)
        .into_iter()
        .map(|(o, v)| format!("{o}:{}", String::from_utf8_lossy(&v)))
        .collect()
}

#[test]
fn every_codec_reads_back_what_was_written() {
    for codec in [
        Compression::None,
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let mut first = plain(40, JOB, b"start");
        first.headers.insert(
            StrBytes::from_static_str("kafkasend-reply-to"),
            Some(Bytes::from_static(b"2/replies")),
        );
        first
            .headers
            .insert(StrBytes::from_static_str("empty"), None);
        // Larger than one snappy block, and not all alike.
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        let written = [first, plain(41, JOB, &big), plain(42, "other", b"end")];
        let d = decode(response(&[batch(&written, codec)]), 40, &[]).unwrap();
        assert_eq!(d.next_offset, 43, "{codec:?}");
        let got: Vec<&RecordAndOffset> = d
            .items
            .iter()
            .map(|i| match i {
                Item::Record(r) => r,
                Item::Unreadable(u) => panic!("{codec:?}: {u:?}"),
            })
            .collect();
        assert_eq!(got.len(), 3, "{codec:?}");
        assert_eq!(got[0].offset, 40);
        assert_eq!(got[0].record.key.as_deref(), Some(JOB.as_bytes()));
        assert_eq!(got[0].record.value.as_deref(), Some(&b"start"[..]));
        assert_eq!(
            got[0]
                .record
                .headers
                .get("kafkasend-reply-to")
                .map(Vec::as_slice),
            Some(&b"2/replies"[..])
        );
        assert_eq!(got[0].record.headers.get("empty"), Some(&Vec::new()));
        assert_eq!(got[0].record.timestamp_ms, 1_700_000_000_040);
        assert_eq!(got[1].record.value.as_deref(), Some(&big[..]), "{codec:?}");
        assert_eq!(got[2].offset, 42);
        assert_eq!(got[2].record.key.as_deref(), Some(&b"other"[..]));
    }
}

#[test]
fn records_before_the_offset_asked_for_are_left_out() {
    let written: Vec<KRecord> = (10..15).map(|o| plain(o, "k", b"v")).collect();
    let d = decode(response(&[batch(&written, Compression::Gzip)]), 12, &[]).unwrap();
    let offsets: Vec<i64> = records(&d).iter().map(|(o, _)| *o).collect();
    assert_eq!(offsets, [12, 13, 14]);
    assert_eq!(d.next_offset, 15);
}

#[test]
fn an_aborted_transaction_is_dropped_up_to_its_marker_and_its_neighbours_kept() {
    let data = response(&[
        batch(&[plain(0, "k", b"before")], Compression::None),
        batch(
            &[txn(1, 7, "aborted-1"), txn(2, 7, "aborted-2")],
            Compression::Lz4,
        ),
        batch(&[plain(3, "k", b"between")], Compression::None),
        batch(&[txn(4, 8, "committed")], Compression::Zstd),
        batch(&[marker(5, 7, true)], Compression::None),
        batch(&[marker(6, 8, false)], Compression::None),
        // The same producer's next transaction is not the aborted one.
        batch(&[txn(7, 7, "next-txn")], Compression::Gzip),
        batch(&[marker(8, 7, false)], Compression::None),
    ]);
    let aborted = [AbortedTxn {
        producer_id: 7,
        first_offset: 1,
    }];
    let d = decode(data, 0, &aborted).unwrap();
    assert_eq!(
        values(&d),
        ["0:before", "3:between", "4:committed", "7:next-txn"]
    );
    assert_eq!(d.next_offset, 9);
    assert_eq!(d.dropped, 2 + 3);
}

#[test]
fn a_transaction_aborted_before_the_offset_asked_for_is_still_dropped() {
    let data = response(&[
        batch(
            &[txn(3, 7, "aborted-3"), txn(4, 7, "aborted-4")],
            Compression::Snappy,
        ),
        batch(&[plain(5, "k", b"kept")], Compression::None),
        batch(&[marker(6, 7, true)], Compression::None),
    ]);
    let aborted = [AbortedTxn {
        producer_id: 7,
        first_offset: 1,
    }];
    let d = decode(data, 3, &aborted).unwrap();
    assert_eq!(values(&d), ["5:kept"]);
    assert_eq!(d.next_offset, 7);
}

#[test]
fn an_aborted_producer_stays_dropped_until_its_marker_arrives() {
    let data = response(&[
        batch(&[txn(0, 7, "a"), txn(1, 7, "b")], Compression::None),
        batch(&[plain(2, "k", b"kept")], Compression::None),
        batch(&[txn(3, 7, "c")], Compression::None),
    ]);
    let aborted = [AbortedTxn {
        producer_id: 7,
        first_offset: 0,
    }];
    let d = decode(data, 0, &aborted).unwrap();
    assert_eq!(values(&d), ["2:kept"]);
    assert_eq!(d.next_offset, 4);
}

#[test]
fn a_producer_aborted_later_keeps_its_earlier_committed_transaction() {
    let data = response(&[
        batch(&[txn(0, 7, "committed")], Compression::None),
        batch(&[marker(1, 7, false)], Compression::None),
        batch(&[txn(2, 7, "aborted")], Compression::None),
        batch(&[marker(3, 7, true)], Compression::None),
        batch(&[txn(4, 9, "other producer")], Compression::None),
    ]);
    let aborted = [AbortedTxn {
        producer_id: 7,
        first_offset: 2,
    }];
    let d = decode(data, 0, &aborted).unwrap();
    assert_eq!(values(&d), ["0:committed", "4:other producer"]);
}

#[test]
fn an_aborted_producers_records_outside_transactions_are_kept() {
    let data = response(&[
        batch(&[txn(0, 7, "aborted")], Compression::None),
        batch(
            &[idempotent(1, 7, "not in a transaction")],
            Compression::None,
        ),
        batch(&[marker(2, 7, true)], Compression::None),
    ]);
    let aborted = [AbortedTxn {
        producer_id: 7,
        first_offset: 0,
    }];
    let d = decode(data, 0, &aborted).unwrap();
    assert_eq!(values(&d), ["1:not in a transaction"]);
}

#[test]
fn markers_alone_are_dropped_and_passed() {
    let data = response(&[
        batch(&[marker(5, 7, false)], Compression::None),
        batch(&[marker(6, 8, true)], Compression::None),
    ]);
    let d = decode(data, 5, &[]).unwrap();
    assert!(d.items.is_empty());
    assert_eq!(d.next_offset, 7);
    assert_eq!(d.dropped, 2);
}

#[test]
fn a_batch_too_large_once_decompressed_is_skipped_naming_its_job() {
    let zeros = vec![0u8; MAX_BATCH_BYTES + 1];
    for codec in [
        Compression::Gzip,
        Compression::Snappy,
        Compression::Lz4,
        Compression::Zstd,
    ] {
        let data = response(&[
            batch(&[plain(0, JOB, &zeros)], codec),
            batch(&[plain(1, "k", b"after")], codec),
        ]);
        let d = decode(data, 0, &[]).unwrap();
        let skipped = unreadable(&d);
        assert_eq!(skipped.len(), 1, "{codec:?}");
        assert_eq!(skipped[0].reason, SkipReason::TooLarge, "{codec:?}");
        assert_eq!((skipped[0].first_offset, skipped[0].last_offset), (0, 0));
        assert_eq!(skipped[0].keys, [JOB.as_bytes().to_vec()], "{codec:?}");
        assert!(
            skipped[0].detail.contains("more than 16 MiB"),
            "{}",
            skipped[0].detail
        );
        assert_eq!(values(&d), ["1:after"], "{codec:?}");
        assert_eq!(d.next_offset, 2);
    }
}

#[test]
fn a_damaged_batch_is_skipped_and_reading_goes_on() {
    let mut damaged = batch(
        &[plain(0, JOB, b"value"), plain(1, JOB, b"v2")],
        Compression::None,
    );
    let at = damaged.len() - 3;
    damaged[at] ^= 0xff;
    let data = response(&[
        damaged,
        batch(&[plain(2, "k", b"after")], Compression::None),
    ]);
    let d = decode(data, 0, &[]).unwrap();
    let skipped = unreadable(&d);
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].reason, SkipReason::Corrupt);
    assert!(
        skipped[0].detail.contains("CRC32C"),
        "{}",
        skipped[0].detail
    );
    assert_eq!(skipped[0].records(), 2);
    assert_eq!(values(&d), ["2:after"]);
    assert_eq!(d.next_offset, 3);
}

#[test]
fn a_batch_failing_its_checksum_stops_decoding_until_it_is_to_be_skipped() {
    let mut damaged = batch(&[plain(1, JOB, b"value")], Compression::None);
    rebase(&mut damaged, 1);
    let at = damaged.len() - 3;
    damaged[at] ^= 0xff;
    let mut after = batch(&[plain(0, "k", b"after")], Compression::None);
    rebase(&mut after, 2);
    let data = response(&[
        batch(&[plain(0, "k", b"before")], Compression::None),
        damaged,
        after,
    ]);
    let again = Reading {
        high_watermark: 3,
        skip_crc_failure: false,
    };
    let d = super::decode(data.clone(), 0, &[], again).unwrap();
    assert_eq!(values(&d), ["0:before"]);
    assert!(unreadable(&d).is_empty());
    assert_eq!((d.next_offset, d.crc_failed_at), (1, Some(1)));
    // Fetched again from there, it still fails at once.
    let d = super::decode(data.clone(), 1, &[], again).unwrap();
    assert!(d.items.is_empty());
    assert_eq!((d.next_offset, d.crc_failed_at), (1, Some(1)));
    let skip = Reading {
        skip_crc_failure: true,
        ..again
    };
    let d = super::decode(data, 1, &[], skip).unwrap();
    assert_eq!(unreadable(&d).len(), 1);
    assert_eq!(values(&d), ["2:after"]);
    assert_eq!((d.next_offset, d.crc_failed_at), (3, None));
}

#[test]
fn a_damaged_last_offset_delta_does_not_pass_over_later_batches() {
    let mut damaged = batch(&[plain(0, JOB, b"value")], Compression::None);
    // lastOffsetDelta, covered by the failed checksum, now says 2^30.
    damaged[23..27].copy_from_slice(&(1i32 << 30).to_be_bytes());
    let mut after = batch(&[plain(0, "k", b"after")], Compression::None);
    rebase(&mut after, 5);
    let skip = Reading {
        high_watermark: 6,
        skip_crc_failure: true,
    };
    let d = super::decode(response(&[damaged.clone(), after]), 0, &[], skip).unwrap();
    let skipped = unreadable(&d);
    assert_eq!((skipped[0].first_offset, skipped[0].last_offset), (0, 4));
    assert_eq!(skipped[0].keys, [JOB.as_bytes().to_vec()]);
    assert_eq!(values(&d), ["5:after"]);
    assert_eq!(d.next_offset, 6);
    // Alone in the response, it ends before the high watermark.
    let d = super::decode(response(&[damaged]), 0, &[], skip).unwrap();
    let skipped = unreadable(&d);
    assert_eq!((skipped[0].first_offset, skipped[0].last_offset), (0, 5));
    assert_eq!(d.next_offset, 6);
}

#[test]
fn offsets_near_the_largest_do_not_overflow() {
    for base in [i64::MAX, i64::MAX - 1] {
        let mut b = batch(&[plain(0, "k", b"v")], Compression::None);
        rebase(&mut b, base);
        let d = decode(response(&[b.clone()]), base, &[]).unwrap();
        assert_eq!(d.next_offset, i64::MAX);
        // A damaged one, and a control batch, too.
        let mut damaged = b.clone();
        let at = damaged.len() - 3;
        damaged[at] ^= 0xff;
        let d = decode(response(&[damaged]), base, &[]).unwrap();
        assert_eq!(d.next_offset, i64::MAX);
        assert_eq!(unreadable(&d)[0].records(), 1);
        let mut marker = batch(&[marker(0, 7, false)], Compression::None);
        rebase(&mut marker, base);
        let d = decode(response(&[marker]), base, &[]).unwrap();
        assert_eq!(d.next_offset, i64::MAX);
    }
}

#[test]
fn an_unreadable_batch_names_where_its_start_records_are_answered() {
    let mut start = plain(0, JOB, b"start");
    start.headers.insert(
        StrBytes::from_static_str("other"),
        Some(Bytes::from_static(b"x")),
    );
    start.headers.insert(
        StrBytes::from_static_str(crate::protocol::wire::REPLY_TO_HEADER),
        Some(Bytes::from_static(b"2/api-responses")),
    );
    let zeros = vec![0u8; MAX_BATCH_BYTES / 2 + 1];
    for codec in [Compression::Gzip, Compression::Zstd] {
        let data = response(&[batch(
            &[start.clone(), plain(1, "k", &zeros), plain(2, "k", &zeros)],
            codec,
        )]);
        let d = decode(data, 0, &[]).unwrap();
        let skipped = unreadable(&d);
        assert_eq!(skipped[0].reason, SkipReason::TooLarge, "{codec:?}");
        assert_eq!(
            skipped[0].reply_to,
            [(JOB.as_bytes().to_vec(), b"2/api-responses".to_vec())],
            "{codec:?}"
        );
    }
    // A record damaged before its headers names its job, not where to answer.
    let mut b = batch(&[start], Compression::None);
    // As in the test below, with a record length of two bytes.
    let value_len_at = HEADER_V2 + 5 + 1 + JOB.len();
    assert_eq!(b[value_len_at], 10, "zigzag 5");
    b[value_len_at] = 100;
    fix_crc(&mut b);
    let d = decode(response(&[b]), 0, &[]).unwrap();
    let skipped = unreadable(&d);
    assert_eq!(skipped[0].keys, [JOB.as_bytes().to_vec()]);
    assert!(skipped[0].reply_to.is_empty());
}

#[test]
fn a_record_damaged_after_its_key_still_names_its_job() {
    let mut b = batch(&[plain(0, JOB, b"value")], Compression::None);
    // The record is: length, attributes, timestamp delta, offset delta,
    // key length, key, value length, value, header count. Claim a value
    // longer than what is left.
    let value_len_at = HEADER_V2 + 4 + 1 + JOB.len();
    assert_eq!(b[value_len_at], 10, "zigzag 5");
    b[value_len_at] = 100;
    fix_crc(&mut b);
    let d = decode(response(&[b]), 0, &[]).unwrap();
    let skipped = unreadable(&d);
    assert_eq!(skipped.len(), 1);
    assert_eq!(skipped[0].reason, SkipReason::Corrupt);
    assert_eq!(skipped[0].keys, [JOB.as_bytes().to_vec()]);
    assert_eq!(d.next_offset, 1);
}

#[test]
fn unknown_codecs_and_data_a_codec_rejects_are_skipped() {
    let mut unknown = batch(&[plain(0, JOB, b"v")], Compression::None);
    unknown[22] |= 0x5;
    fix_crc(&mut unknown);
    let mut garbage = batch(&[plain(1, JOB, b"v")], Compression::None);
    // Uncompressed bytes under a gzip, lz4, zstd or snappy flag.
    for bits in [1u8, 2, 3, 4] {
        let mut g = garbage.clone();
        g[22] = (g[22] & !0x7) | bits;
        fix_crc(&mut g);
        let d = decode(response(&[g]), 1, &[]).unwrap();
        let skipped = unreadable(&d);
        assert_eq!(skipped.len(), 1, "codec {bits}");
        assert_eq!(skipped[0].reason, SkipReason::Codec, "codec {bits}");
        assert_eq!(d.next_offset, 2);
    }
    garbage.clear();
    let d = decode(response(&[unknown]), 0, &[]).unwrap();
    let skipped = unreadable(&d);
    assert_eq!(skipped[0].reason, SkipReason::Codec);
    assert!(
        skipped[0].detail.contains("codec 5"),
        "{}",
        skipped[0].detail
    );
}

#[test]
fn message_sets_of_old_formats_are_skipped() {
    let mut old = batch(&[plain(4, "k", b"v")], Compression::None);
    old[16] = 1;
    let d = decode(
        response(&[old, batch(&[plain(5, "k", b"new")], Compression::None)]),
        4,
        &[],
    )
    .unwrap();
    let skipped = unreadable(&d);
    assert_eq!(skipped[0].reason, SkipReason::Format);
    assert_eq!(values(&d), ["5:new"]);
}

#[test]
fn a_last_batch_cut_short_waits_for_the_next_fetch() {
    let first = batch(
        &[plain(0, "k", b"a"), plain(1, "k", b"b")],
        Compression::None,
    );
    let second = batch(&[plain(2, "k", b"c")], Compression::None);
    let cut = &second[..second.len() - 1];
    let d = decode(response(&[first, cut.to_vec()]), 0, &[]).unwrap();
    assert_eq!(values(&d), ["0:a", "1:b"]);
    assert_eq!(d.next_offset, 2);
    // Nothing whole at all: nothing can be read past the offset.
    assert!(decode(Bytes::copy_from_slice(cut), 2, &[]).is_err());
    assert!(decode(Bytes::new(), 2, &[]).unwrap().items.is_empty());
}

#[test]
fn a_large_response_is_read_in_parts() {
    let six_mib = vec![0u8; 6 * 1024 * 1024];
    let data = response(
        &(0..4)
            .map(|o| batch(&[plain(o, "k", &six_mib)], Compression::Zstd))
            .collect::<Vec<_>>(),
    );
    let d = decode(data.clone(), 0, &[]).unwrap();
    assert_eq!(records(&d).len(), 3);
    assert_eq!(d.next_offset, 3);
    let d = decode(data.slice(data.len() / 4 * 3..), 3, &[]).unwrap();
    assert_eq!(records(&d).len(), 1);
    assert_eq!(d.next_offset, 4);

    let tiny: Vec<KRecord> = (0..MAX_RECORDS as i64 + 10)
        .map(|o| plain(o, "", b""))
        .collect();
    let data = response(&[batch(&tiny, Compression::Lz4)]);
    let d = decode(data.clone(), 0, &[]).unwrap();
    assert_eq!(records(&d).len(), MAX_RECORDS);
    assert_eq!(d.next_offset, MAX_RECORDS as i64);
    let d = decode(data, d.next_offset, &[]).unwrap();
    assert_eq!(records(&d).len(), 10);
    assert_eq!(d.next_offset, MAX_RECORDS as i64 + 10);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_bytes_never_panic(data in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode(Bytes::from(data), 0, &[]);
    }

    #[test]
    fn damaged_batches_never_panic(
        codec in 0usize..5,
        flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
        crc in any::<bool>(),
    ) {
        let codec = [
            Compression::None,
            Compression::Gzip,
            Compression::Snappy,
            Compression::Lz4,
            Compression::Zstd,
        ][codec];
        let mut b = batch(
            &[plain(0, JOB, b"some value"), plain(1, "k", &[7; 300])],
            codec,
        );
        for (at, byte) in flips {
            let i = at.index(b.len());
            b[i] ^= byte;
        }
        if crc && b.len() > HEADER_V2 {
            fix_crc(&mut b);
        }
        let _ = decode(Bytes::from(b), 0, &[]);
    }
}
