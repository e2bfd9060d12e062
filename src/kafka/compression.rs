//! Which codec a job's records are produced with: the `--compression`
//! setting of `send` and of the portal, and the per-batch decision that
//! leaves incompressible data (random bytes, zip, jpeg, gzip) as it is.
//!
//! The decision probes a small sample of each batch's payload (at most
//! [`SAMPLE_BYTES`], taken from a few places spread over it) with LZ4's
//! fast block compressor and a byte histogram. Both run at gigabytes per
//! second on data that does not compress, so a chunk of random bytes costs
//! a few microseconds instead of a full pass of the codec. Each batch is
//! probed on its own: a body that turns from text to random bytes halfway
//! is compressed where it pays and only there, with no state to go stale.

use std::fmt;
use std::str::FromStr;

use crate::kafka::Compression;

/// The `--compression` setting: a codec, `auto` (the codec measured best
/// for KafkaSend's records), or `none`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Codec {
    /// [`AUTO_CODEC`], skipped for incompressible batches.
    #[default]
    Auto,
    /// Zstandard at its default level (rskafka's), skipped for incompressible batches.
    Zstd,
    /// LZ4 frames, skipped for incompressible batches.
    Lz4,
    /// Records go as they are.
    None,
}

/// What `auto` stands for, chosen by measurement (docs/configuration.md,
/// "Compression"): on JSON text LZ4 keeps 30% of the bytes and zstd 18%,
/// but zstd costs `send` twice LZ4's CPU (3.4 s more per GiB against 1.5)
/// and the portal twice as much to decode; where the broker shares the
/// machine's cores that costs more throughput than the bytes saved.
pub const AUTO_CODEC: Codec = Codec::Lz4;

/// The values `--compression` takes, as an error message lists them.
pub const CODEC_NAMES: &str = "auto, zstd, lz4 or none";

impl FromStr for Codec {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "auto" => Ok(Self::Auto),
            "zstd" => Ok(Self::Zstd),
            "lz4" => Ok(Self::Lz4),
            "none" => Ok(Self::None),
            _ => Err(format!("{s:?} is not a codec; use {CODEC_NAMES}")),
        }
    }
}

impl fmt::Display for Codec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Auto => "auto",
            Self::Zstd => "zstd",
            Self::Lz4 => "lz4",
            Self::None => "none",
        })
    }
}

impl Codec {
    /// The codec batches are compressed with when they compress; `None`
    /// for [`Codec::None`].
    fn target(self) -> Option<Compression> {
        match self {
            Self::Auto => AUTO_CODEC.target(),
            Self::Zstd => Some(Compression::Zstd),
            Self::Lz4 => Some(Compression::Lz4),
            Self::None => None,
        }
    }
}

/// Most payload bytes the probe reads per batch.
pub(crate) const SAMPLE_BYTES: usize = 32 * 1024;
/// Places the sample is taken from, spread over the payload.
const SAMPLE_PLACES: usize = 4;
/// Payloads smaller than this go as they are: the batch's own overhead
/// and the codec's frame would eat what compression saves.
pub(crate) const MIN_COMPRESSED: usize = 512;
/// A batch is compressed when the probe expects it to shrink to at most
/// this fraction; what saves less is not worth the CPU on both sides and
/// in the broker, which decompresses every batch to validate it.
const WORTH_IT: f64 = 0.9;

/// Decides, batch by batch, the codec of one job's (or one answer's)
/// records, and counts what it decided for the job's log line.
#[derive(Debug, Clone)]
pub(crate) struct Chooser {
    setting: Codec,
    /// Batches compressed, and all batches decided.
    compressed: u64,
    decided: u64,
}

impl Chooser {
    /// A chooser for the `setting`, with nothing decided yet.
    pub(crate) fn new(setting: Codec) -> Self {
        Self {
            setting,
            compressed: 0,
            decided: 0,
        }
    }

    /// The codec for a batch whose record values are `values`. Batches
    /// too small to gain go uncompressed and are not counted.
    pub(crate) fn pick<'a>(&mut self, values: impl IntoIterator<Item = &'a [u8]>) -> Compression {
        let Some(codec) = self.setting.target() else {
            return Compression::Uncompressed;
        };
        let values: Vec<&[u8]> = values.into_iter().filter(|v| !v.is_empty()).collect();
        let total: usize = values.iter().map(|v| v.len()).sum();
        if total < MIN_COMPRESSED {
            return Compression::Uncompressed;
        }
        self.decided += 1;
        if !worth_compressing(&values, total, codec) {
            return Compression::Uncompressed;
        }
        self.compressed += 1;
        codec
    }

    /// What was decided, for a log line: `compression zstd on 12 of 14
    /// batches` (those of at least [`MIN_COMPRESSED`] bytes), or
    /// `compression none`.
    pub(crate) fn summary(&self) -> String {
        match self.setting.target() {
            None => "compression none".into(),
            Some(codec) => format!(
                "compression {} on {} of {} batches",
                Codec::from(codec),
                self.compressed,
                self.decided
            ),
        }
    }
}

impl From<Compression> for Codec {
    fn from(c: Compression) -> Self {
        match c {
            Compression::Zstd => Self::Zstd,
            Compression::Lz4 => Self::Lz4,
            _ => Self::None,
        }
    }
}

/// Whether `values`, produced together, are expected to shrink by `codec`
/// to at most [`WORTH_IT`] of their size.
fn worth_compressing(values: &[&[u8]], total: usize, codec: Compression) -> bool {
    let sample = sample(values, total);
    let matches = lz4_ratio(&sample);
    let expected = match codec {
        // zstd codes literals by their frequency too: data with few
        // distinct bytes (hex, base64, digits) shrinks without repeats.
        Compression::Zstd => matches.min(entropy_bits(&sample) / 8.0),
        _ => matches,
    };
    expected <= WORTH_IT
}

/// Up to [`SAMPLE_BYTES`] of the values taken as one run of bytes: all of
/// it when it is short, else [`SAMPLE_PLACES`] slices from evenly spread
/// places (a slice stops at the end of the value it starts in).
fn sample(values: &[&[u8]], total: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(total.min(SAMPLE_BYTES));
    if total <= SAMPLE_BYTES {
        values.iter().for_each(|v| out.extend_from_slice(v));
        return out;
    }
    let slice = SAMPLE_BYTES / SAMPLE_PLACES;
    let step = (total - slice) / (SAMPLE_PLACES - 1);
    for place in 0..SAMPLE_PLACES {
        let mut at = place * step;
        for v in values {
            if at < v.len() {
                out.extend_from_slice(&v[at..v.len().min(at + slice)]);
                break;
            }
            at -= v.len();
        }
    }
    out
}

/// The size LZ4's fast mode brings `data` to, as a fraction of its size;
/// 1.0 when it cannot say.
fn lz4_ratio(data: &[u8]) -> f64 {
    if data.is_empty() {
        return 1.0;
    }
    match lz4::block::compress(data, Some(lz4::block::CompressionMode::FAST(1)), false) {
        Ok(packed) => packed.len() as f64 / data.len() as f64,
        Err(_) => 1.0,
    }
}

/// Order-0 entropy of `data` in bits per byte: 8 for uniformly random
/// bytes, what an ideal code of single bytes needs.
fn entropy_bits(data: &[u8]) -> f64 {
    if data.is_empty() {
        return 8.0;
    }
    let mut counts = [0u32; 256];
    for &b in data {
        counts[usize::from(b)] += 1;
    }
    let n = data.len() as f64;
    counts
        .iter()
        .filter(|&&c| c > 0)
        .map(|&c| {
            let p = f64::from(c) / n;
            -p * p.log2()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Random bytes from a fixed seed, as an encrypted or compressed file has.
    fn random(len: usize) -> Vec<u8> {
        let mut rng = fastrand::Rng::with_seed(15);
        (0..len).map(|_| rng.u8(..)).collect()
    }

    /// JSON lines with varying numbers, as a log export or an API's list has.
    fn json_lines(len: usize) -> Vec<u8> {
        let mut out = Vec::with_capacity(len + 128);
        let mut i = 0u64;
        while out.len() < len {
            let line = format!(
                "{{\"id\":{i},\"name\":\"item-{}\",\"price\":{}.{:02},\"tags\":[\"a\",\"b{}\"]}}\n",
                i * 7919 % 10007,
                i * 31 % 1000,
                i % 100,
                i % 13
            );
            out.extend_from_slice(line.as_bytes());
            i += 1;
        }
        out.truncate(len);
        out
    }

    fn gzipped(data: &[u8]) -> Vec<u8> {
        use std::io::Write as _;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn pick(setting: Codec, values: &[&[u8]]) -> Compression {
        Chooser::new(setting).pick(values.iter().copied())
    }

    #[test]
    fn text_is_compressed_with_the_chosen_codec() {
        let text = json_lines(900 * 1024);
        assert_eq!(pick(Codec::Zstd, &[&text]), Compression::Zstd);
        assert_eq!(pick(Codec::Lz4, &[&text]), Compression::Lz4);
        assert_eq!(pick(Codec::Auto, &[&text]), AUTO_CODEC.target().unwrap());
        assert_eq!(pick(Codec::None, &[&text]), Compression::Uncompressed);
    }

    #[test]
    fn random_and_already_compressed_data_go_as_they_are() {
        let noise = random(900 * 1024);
        let gz = gzipped(&json_lines(4 * 1024 * 1024));
        assert!(gz.len() > 100 * 1024, "a sample of several places");
        for setting in [Codec::Auto, Codec::Zstd, Codec::Lz4] {
            assert_eq!(pick(setting, &[&noise]), Compression::Uncompressed);
            assert_eq!(pick(setting, &[&gz]), Compression::Uncompressed);
        }
    }

    #[test]
    fn few_distinct_bytes_without_repeats_compress_with_zstd_only() {
        // Hex of random bytes: no repeats for LZ4 to find, but 4 bits of
        // information in each 8-bit byte, which zstd's literal coding takes.
        let hex: Vec<u8> = random(300 * 1024)
            .iter()
            .flat_map(|b| format!("{b:02x}").into_bytes())
            .collect();
        assert_eq!(pick(Codec::Zstd, &[&hex]), Compression::Zstd);
        assert_eq!(pick(Codec::Lz4, &[&hex]), Compression::Uncompressed);
    }

    #[test]
    fn tiny_and_empty_batches_go_as_they_are() {
        let text = json_lines(MIN_COMPRESSED - 1);
        assert_eq!(pick(Codec::Zstd, &[&text]), Compression::Uncompressed);
        assert_eq!(pick(Codec::Zstd, &[]), Compression::Uncompressed);
        assert_eq!(pick(Codec::Zstd, &[&[], &[]]), Compression::Uncompressed);
        // Small values that add up count together (a short answer's
        // start, body and end in one batch).
        let half = json_lines(MIN_COMPRESSED);
        assert_eq!(pick(Codec::Zstd, &[&[], &half]), Compression::Zstd);
    }

    #[test]
    fn the_sample_spans_the_batch_and_its_values() {
        // Random first, text after: the places spread over both halves
        // find the text; so a mostly-text batch is compressed.
        let mixed = [random(100 * 1024), json_lines(800 * 1024)].concat();
        assert_eq!(pick(Codec::Lz4, &[&mixed]), Compression::Lz4);
        // The same bytes as records of their own.
        let parts: Vec<&[u8]> = mixed.chunks(64 * 1024).collect();
        assert_eq!(pick(Codec::Lz4, &parts), Compression::Lz4);
        // Random after a short text head (a zip's directory, say): not worth it.
        let noisy = [json_lines(2 * 1024), random(800 * 1024)].concat();
        assert_eq!(pick(Codec::Zstd, &[&noisy]), Compression::Uncompressed);

        let values: Vec<Vec<u8>> = (0..10).map(|i| vec![i as u8; 10_000]).collect();
        let refs: Vec<&[u8]> = values.iter().map(Vec::as_slice).collect();
        let s = sample(&refs, 100_000);
        assert_eq!(s.len(), SAMPLE_BYTES);
        assert_eq!(
            (s[0], s[s.len() - 1]),
            (0, 9),
            "from the first value to the last"
        );
        // A slice stops at the end of the value it starts in.
        let short: Vec<Vec<u8>> = (0..50).map(|i| vec![i as u8; 1000]).collect();
        let refs: Vec<&[u8]> = short.iter().map(Vec::as_slice).collect();
        let s = sample(&refs, 50_000);
        assert!(
            !s.is_empty() && s.len() <= SAMPLE_PLACES * 1000,
            "{}",
            s.len()
        );
    }

    #[test]
    fn the_count_and_the_log_summary() {
        let text = json_lines(64 * 1024);
        let noise = random(64 * 1024);
        let mut c = Chooser::new(Codec::Auto);
        c.pick([text.as_slice()]);
        c.pick([noise.as_slice()]);
        c.pick([text.as_slice(), &[][..]]);
        // A start record alone: too small to count.
        c.pick([&b"start"[..]]);
        assert_eq!(c.summary(), "compression lz4 on 2 of 3 batches");
        let mut none = Chooser::new(Codec::None);
        none.pick([text.as_slice()]);
        assert_eq!(none.summary(), "compression none");
    }

    #[test]
    fn settings_parse_and_show_by_name() {
        for (text, codec) in [
            ("auto", Codec::Auto),
            ("ZSTD", Codec::Zstd),
            (" lz4 ", Codec::Lz4),
            ("none", Codec::None),
        ] {
            assert_eq!(text.parse::<Codec>(), Ok(codec));
            assert_eq!(codec.to_string().parse::<Codec>(), Ok(codec));
        }
        for bad in ["", "gzip", "snappy", "zstd,lz4", "off"] {
            let err = bad.parse::<Codec>().unwrap_err();
            assert!(
                err.ends_with("is not a codec; use auto, zstd, lz4 or none"),
                "{err}"
            );
        }
        assert_eq!(Codec::default(), Codec::Auto);
    }

    #[test]
    fn the_probe_reads_few_bytes() {
        let noise = random(8 * 1024 * 1024);
        let s = sample(&[&noise], noise.len());
        assert_eq!(s.len(), SAMPLE_BYTES);
        assert!(entropy_bits(&s) > 7.9);
        assert!(lz4_ratio(&s) > 0.99);
        assert!(entropy_bits(&[]) == 8.0 && lz4_ratio(&[]) == 1.0);
        assert!(entropy_bits(&[7; 100]) == 0.0);
    }
}
