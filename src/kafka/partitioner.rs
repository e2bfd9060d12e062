//! Kafka's default partitioner for keyed records, as the Java client computes it.
//!
//! Every record of a job carries the job id as its key, so choosing the
//! partition exactly as the Java client would keeps a job's records together
//! and in order, and lets any other Kafka producer agree with us.

/// Kafka's 32-bit murmur2 hash (seed `0x9747b28c`), as in the Java client.
pub(crate) fn murmur2(data: &[u8]) -> i32 {
    const SEED: u32 = 0x9747_b28c;
    const M: u32 = 0x5bd1_e995;
    const R: u32 = 24;

    let len = data.len();
    let mut h: u32 = SEED ^ (len as u32);
    let mut blocks = data.chunks_exact(4);
    for block in &mut blocks {
        let mut k = u32::from_le_bytes([block[0], block[1], block[2], block[3]]);
        k = k.wrapping_mul(M);
        k ^= k >> R;
        k = k.wrapping_mul(M);
        h = h.wrapping_mul(M);
        h ^= k;
    }
    let tail = blocks.remainder();
    if tail.len() >= 3 {
        h ^= u32::from(tail[2]) << 16;
    }
    if tail.len() >= 2 {
        h ^= u32::from(tail[1]) << 8;
    }
    if !tail.is_empty() {
        h ^= u32::from(tail[0]);
        h = h.wrapping_mul(M);
    }
    h ^= h >> 13;
    h = h.wrapping_mul(M);
    h ^= h >> 15;
    h as i32
}

/// The partition the Java client's default partitioner picks for `key`
/// among `partitions` partitions (`partitions` must be positive).
pub fn partition_for_key(key: &[u8], partitions: i32) -> i32 {
    debug_assert!(partitions > 0);
    let positive = murmur2(key) & 0x7fff_ffff;
    positive % partitions.max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Values printed by `org.apache.kafka.common.utils.Utils.murmur2` of
    /// Kafka 4.1.2 for the UTF-8 bytes of each string, with the partition
    /// the default partitioner picks among 3 and among 7 partitions.
    #[test]
    fn matches_the_java_client() {
        let cases: &[(&str, i32, i32, i32)] = &[
            ("", 275_646_681, 0, 2),
            ("a", -1_563_381_124, 1, 5),
            ("21", -973_932_308, 0, 3),
            ("foobar", -790_332_482, 0, 0),
            ("a-little-bit-long-string", -985_981_536, 2, 1),
            ("a-little-bit-longer-string", -1_486_304_829, 2, 0),
            (
                "lkjh234lh9fiuh90y23oiuhsafujhadof229phr9h19h89h8",
                -58_897_971,
                2,
                3,
            ),
            ("01JDXK5Q7V8Y0C4J6N2W3R9T1M", -1_448_717_009, 0, 4),
            ("abc", 479_470_107, 0, 4),
        ];
        for (input, hash, p3, p7) in cases {
            assert_eq!(murmur2(input.as_bytes()), *hash, "murmur2({input:?})");
            assert_eq!(
                partition_for_key(input.as_bytes(), 3),
                *p3,
                "{input:?} of 3"
            );
            assert_eq!(
                partition_for_key(input.as_bytes(), 7),
                *p7,
                "{input:?} of 7"
            );
        }
    }

    #[test]
    fn partition_is_in_range_and_stable() {
        for n in 1..20 {
            for i in 0..200 {
                let key = format!("job-{i}");
                let p = partition_for_key(key.as_bytes(), n);
                assert!((0..n).contains(&p));
                assert_eq!(p, partition_for_key(key.as_bytes(), n));
            }
        }
    }
}
