//! `--compressed`: the response body decoded by its `Content-Encoding` while
//! it streams.
//!
//! Decoding comes after the checks: the CRC32C, length and digest cover
//! the bytes the API sent (and the portal relayed), so a body is verified
//! whether or not it can be decoded, and `bytes_received` counts those bytes.
//! Each [`Decoder::step`] gives at most about [`PIECE`] bytes, so a small body
//! that expands a thousandfold is written out piece by piece, never held
//! whole; brotli's window is kept to the standard 16 MiB (no large-window
//! streams), gzip's and deflate's is 32 KiB.

use std::io::Write;

use brotli_decompressor::{BrotliDecompressStream, BrotliResult, BrotliState, StandardAlloc};
use flate2::write::{DeflateDecoder, GzDecoder, ZlibDecoder};

use crate::send::types::SendError;

/// About the most bytes one step writes out.
const PIECE: usize = 64 * 1024;

/// What `--compressed` asks the API for.
pub(crate) const ACCEPT_ENCODING: &str = "gzip, deflate, br";

/// The codings of a response, from its `Content-Encoding` headers: `None`
/// when there is nothing to decode (no header, or `identity`).
pub(crate) fn decoder_for(headers: &[(String, String)]) -> Result<Option<Decoder>, SendError> {
    let codings: Vec<String> = headers
        .iter()
        .filter(|(name, _)| name.eq_ignore_ascii_case("content-encoding"))
        .flat_map(|(_, value)| value.split(','))
        .map(|c| c.trim().to_ascii_lowercase())
        .filter(|c| !c.is_empty() && c != "identity")
        .collect();
    let coding = match codings.as_slice() {
        [] => return Ok(None),
        [one] => one.as_str(),
        several => {
            return Err(SendError::Decoding(format!(
                "the response body has several content codings ({}); --compressed decodes one of gzip, deflate and br; run without --compressed to keep the body as sent",
                several.join(", ")
            )))
        }
    };
    let state = match coding {
        "gzip" | "x-gzip" => State::Gzip(Box::new(GzDecoder::new(Vec::new()))),
        "deflate" => State::Deflate(Deflate::Sniffing(Vec::new())),
        "br" => {
            let mut state =
                BrotliState::new(StandardAlloc::default(), StandardAlloc::default(), StandardAlloc::default());
            // A large-window stream may ask for a 1 GiB window; HTTP's br
            // is the standard format, whose window is at most 16 MiB.
            state.large_window = false;
            State::Brotli(Box::new(state), false)
        }
        other => {
            return Err(SendError::Decoding(format!(
                "the response body is {}-encoded, which --compressed does not decode (it decodes gzip, deflate and br); run without --compressed to keep the body as sent",
                crate::send::ui::one_line(other)
            )))
        }
    };
    Ok(Some(Decoder {
        coding: if coding == "x-gzip" { "gzip" } else { coding }.to_string(),
        state,
        fed: false,
    }))
}

/// Decodes one response body, one piece at a time.
pub(crate) struct Decoder {
    /// The coding, as `Content-Encoding` names it, for messages.
    coding: String,
    state: State,
    /// Whether any body byte reached the decoder: an empty body (a 204, a
    /// HEAD, a 304) is empty whatever its `Content-Encoding` says.
    fed: bool,
}

enum State {
    Gzip(Box<GzDecoder<Vec<u8>>>),
    Deflate(Deflate),
    /// The decoder, and whether its stream has ended.
    Brotli(
        Box<BrotliState<StandardAlloc, StandardAlloc, StandardAlloc>>,
        bool,
    ),
}

/// HTTP's `deflate` is meant to be zlib-wrapped, but some servers send the
/// raw format; the first two bytes tell which, as browsers and curl do.
enum Deflate {
    Sniffing(Vec<u8>),
    Zlib(Box<ZlibDecoder<Vec<u8>>>),
    Raw(Box<DeflateDecoder<Vec<u8>>>),
}

impl Deflate {
    /// The decoder, once the first two bytes chose it.
    fn writer(&mut self) -> Option<&mut dyn FinishInto> {
        match self {
            Self::Zlib(d) => Some(d.as_mut()),
            Self::Raw(d) => Some(d.as_mut()),
            Self::Sniffing(_) => None,
        }
    }
}

impl Decoder {
    /// The coding being decoded, e.g. `gzip`.
    pub(crate) fn coding(&self) -> &str {
        &self.coding
    }

    /// Decodes from the front of `input`, advancing it past what was used,
    /// into `out` (emptied first), at most about [`PIECE`] bytes. Returns
    /// `true` when more output may wait without more input: call again
    /// until it returns `false` and `input` is empty.
    pub(crate) fn step(&mut self, input: &mut &[u8], out: &mut Vec<u8>) -> Result<bool, SendError> {
        out.clear();
        self.fed |= !input.is_empty();
        let coding = self.coding.clone();
        let fail = |e: &dyn std::fmt::Display| invalid(&coding, e);
        match &mut self.state {
            State::Gzip(dec) => {
                flate_step(dec.as_mut(), input, out, &coding)?;
                Ok(false)
            }
            State::Deflate(deflate) => {
                if let Deflate::Sniffing(head) = deflate {
                    let take = (2 - head.len()).min(input.len());
                    head.extend_from_slice(&input[..take]);
                    *input = &input[take..];
                    if head.len() < 2 {
                        return Ok(false);
                    }
                    let head = std::mem::take(head);
                    *deflate = if is_zlib_header(head[0], head[1]) {
                        Deflate::Zlib(Box::new(ZlibDecoder::new(Vec::new())))
                    } else {
                        Deflate::Raw(Box::new(DeflateDecoder::new(Vec::new())))
                    };
                    let mut first = head.as_slice();
                    if let Some(dec) = deflate.writer() {
                        while !first.is_empty() {
                            flate_step(dec, &mut first, out, &coding)?;
                        }
                    }
                    // The caller comes back for the rest of the input.
                    return Ok(false);
                }
                if let Some(dec) = deflate.writer() {
                    flate_step(dec, input, out, &coding)?;
                }
                Ok(false)
            }
            State::Brotli(state, ended) => {
                if *ended {
                    return match input.is_empty() {
                        true => Ok(false),
                        false => Err(trailing(&coding)),
                    };
                }
                out.resize(PIECE, 0);
                let (mut avail_in, mut in_at) = (input.len(), 0);
                let (mut avail_out, mut out_at, mut total) = (PIECE, 0, 0);
                let result = BrotliDecompressStream(
                    &mut avail_in,
                    &mut in_at,
                    input,
                    &mut avail_out,
                    &mut out_at,
                    out,
                    &mut total,
                    state,
                );
                out.truncate(out_at);
                *input = &input[in_at..];
                match result {
                    BrotliResult::ResultSuccess => {
                        *ended = true;
                        if !input.is_empty() {
                            return Err(trailing(&coding));
                        }
                        Ok(false)
                    }
                    BrotliResult::NeedsMoreInput => Ok(false),
                    BrotliResult::NeedsMoreOutput => Ok(true),
                    BrotliResult::ResultFailure => Err(fail(&"the br stream is corrupt")),
                }
            }
        }
    }

    /// After the last input: checks that the stream ended where the body
    /// did, and puts what output was still held in `out`.
    pub(crate) fn finish(&mut self, out: &mut Vec<u8>) -> Result<(), SendError> {
        out.clear();
        if !self.fed {
            return Ok(());
        }
        let coding = self.coding.clone();
        let finish = |dec: &mut dyn FinishInto, out: &mut Vec<u8>| {
            dec.finish_into(out).map_err(|e| {
                if e.kind() == std::io::ErrorKind::UnexpectedEof {
                    truncated(&coding)
                } else {
                    invalid(&coding, &e)
                }
            })
        };
        match &mut self.state {
            State::Gzip(dec) => finish(dec.as_mut(), out),
            State::Deflate(deflate) => match deflate.writer() {
                Some(dec) => finish(dec, out),
                None => Err(truncated(&coding)),
            },
            State::Brotli(_, true) => Ok(()),
            State::Brotli(_, false) => Err(truncated(&coding)),
        }
    }
}

/// The flate2 writers, which decode into the `Vec` they own.
trait FinishInto: Write {
    /// The output so far, taken out.
    fn take_output(&mut self) -> Vec<u8>;
    /// Ends the stream (failing if it is incomplete) into `out`.
    fn finish_into(&mut self, out: &mut Vec<u8>) -> std::io::Result<()>;
}

macro_rules! finish_into {
    ($t:ident) => {
        impl FinishInto for $t<Vec<u8>> {
            fn take_output(&mut self) -> Vec<u8> {
                std::mem::take(self.get_mut())
            }
            fn finish_into(&mut self, out: &mut Vec<u8>) -> std::io::Result<()> {
                self.try_finish()?;
                out.append(self.get_mut());
                Ok(())
            }
        }
    };
}
finish_into!(GzDecoder);
finish_into!(ZlibDecoder);
finish_into!(DeflateDecoder);

/// One write into a flate2 decoder: it takes input only while its 32 KiB
/// buffer has room, so what comes out of one write, and of the flush after
/// it (output the input already taken holds), stays near a piece.
fn flate_step(
    dec: &mut dyn FinishInto,
    input: &mut &[u8],
    out: &mut Vec<u8>,
    coding: &str,
) -> Result<(), SendError> {
    if input.is_empty() {
        return Ok(());
    }
    let used = dec.write(input).map_err(|e| invalid(coding, &e))?;
    if used == 0 {
        // A finished stream takes nothing more.
        return Err(trailing(coding));
    }
    *input = &input[used..];
    // Written out now, not at the next write: a body that trickles in
    // shows as it arrives.
    dec.flush().map_err(|e| invalid(coding, &e))?;
    out.append(&mut dec.take_output());
    Ok(())
}

/// Whether two bytes open a zlib stream (RFC 1950): deflate, a window of at
/// most 32 KiB, and the header's check bits.
fn is_zlib_header(cmf: u8, flg: u8) -> bool {
    cmf & 0x0f == 8 && cmf >> 4 <= 7 && (u16::from(cmf) << 8 | u16::from(flg)) % 31 == 0
}

fn invalid(coding: &str, e: &dyn std::fmt::Display) -> SendError {
    SendError::Decoding(format!(
        "cannot decode the response body as {coding}, its Content-Encoding: {e}; run without --compressed to keep the body as sent"
    ))
}

fn truncated(coding: &str) -> SendError {
    SendError::Decoding(format!(
        "the response body ends before its {coding} stream does (its Content-Encoding); the API sent an incomplete body"
    ))
}

fn trailing(coding: &str) -> SendError {
    SendError::Decoding(format!(
        "the response body goes on after the end of its {coding} stream (its Content-Encoding); run without --compressed to keep the body as sent"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use flate2::write::{DeflateEncoder, GzEncoder, ZlibEncoder};
    use flate2::Compression;

    fn text(n: usize) -> Vec<u8> {
        (0..n)
            .map(|i| b"the quick brown fox jumps over the lazy dog\n"[i % 44] ^ (i / 997) as u8)
            .collect()
    }

    fn encode(coding: &str, data: &[u8]) -> Vec<u8> {
        match coding {
            "gzip" => {
                let mut e = GzEncoder::new(Vec::new(), Compression::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            "zlib" => {
                let mut e = ZlibEncoder::new(Vec::new(), Compression::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            "raw" => {
                let mut e = DeflateEncoder::new(Vec::new(), Compression::default());
                e.write_all(data).unwrap();
                e.finish().unwrap()
            }
            "br" => {
                let mut out = Vec::new();
                let params = brotli::enc::BrotliEncoderParams::default();
                brotli::BrotliCompress(&mut &data[..], &mut out, &params).unwrap();
                out
            }
            _ => unreachable!(),
        }
    }

    fn header(coding: &str) -> Vec<(String, String)> {
        let name = match coding {
            "zlib" | "raw" => "deflate",
            c => c,
        };
        vec![
            ("Content-Type".into(), "text/plain".into()),
            ("Content-Encoding".into(), name.into()),
        ]
    }

    /// Decodes `body` fed in pieces of `piece` bytes; fails if a step gives
    /// more than a piece and a half.
    fn decode(
        coding_headers: &[(String, String)],
        body: &[u8],
        piece: usize,
    ) -> Result<Vec<u8>, SendError> {
        let mut dec = decoder_for(coding_headers)?.expect("a coding");
        let mut out = Vec::new();
        let mut buf = Vec::new();
        for mut input in body.chunks(piece) {
            loop {
                let more = dec.step(&mut input, &mut buf)?;
                assert!(
                    buf.len() <= PIECE * 3 / 2,
                    "a step gave {} bytes",
                    buf.len()
                );
                out.extend_from_slice(&buf);
                if input.is_empty() && !more {
                    break;
                }
            }
        }
        dec.finish(&mut buf)?;
        out.extend_from_slice(&buf);
        Ok(out)
    }

    #[test]
    fn every_coding_decodes_whole_or_byte_by_byte() {
        let data = text(300_000);
        for coding in ["gzip", "zlib", "raw", "br"] {
            let body = encode(coding, &data);
            for piece in [1, 7, 4096, body.len()] {
                let got = decode(&header(coding), &body, piece).unwrap();
                assert!(got == data, "{coding} in pieces of {piece}");
            }
        }
        let empty = encode("gzip", b"");
        assert_eq!(decode(&header("gzip"), &empty, 1).unwrap(), b"");
        // No body at all (a 204, a HEAD, a 304) is no stream to end.
        for coding in ["gzip", "zlib", "raw", "br"] {
            assert_eq!(decode(&header(coding), b"", 1).unwrap(), b"", "{coding}");
        }
        // One byte is a stream begun, and cut short.
        let cut = encode("gzip", &data);
        assert!(decode(&header("gzip"), &cut[..1], 1).is_err());
    }

    #[test]
    fn the_coding_is_read_from_the_headers() {
        assert!(decoder_for(&[]).unwrap().is_none());
        let identity = [("content-encoding".to_string(), "Identity".to_string())];
        assert!(decoder_for(&identity).unwrap().is_none());
        let upper = [("CONTENT-ENCODING".to_string(), " GZIP ".to_string())];
        assert_eq!(decoder_for(&upper).unwrap().unwrap().coding(), "gzip");
        let x = [("Content-Encoding".to_string(), "x-gzip".to_string())];
        assert_eq!(decoder_for(&x).unwrap().unwrap().coding(), "gzip");

        let Err(zstd) = decoder_for(&[("Content-Encoding".into(), "zstd".into())]) else {
            panic!("zstd accepted");
        };
        assert_eq!(zstd.exit_code(), 61);
        assert!(zstd.to_string().contains("zstd-encoded"), "{zstd}");
        let two = [
            ("Content-Encoding".to_string(), "gzip".to_string()),
            ("Content-Encoding".to_string(), "br".to_string()),
        ];
        let Err(e) = decoder_for(&two) else {
            panic!("two codings accepted");
        };
        assert!(
            e.to_string().contains("several content codings (gzip, br)"),
            "{e}"
        );
        let hostile = [("Content-Encoding".to_string(), "a\u{1b}[2Jb".to_string())];
        let Err(e) = decoder_for(&hostile) else {
            panic!("accepted");
        };
        assert!(!e.to_string().contains('\u{1b}'), "{e}");
    }

    #[test]
    fn a_bomb_comes_out_in_pieces() {
        // 64 MiB of zeros: a few tens of KiB compressed.
        let zeros = vec![0u8; 64 << 20];
        for coding in ["gzip", "br"] {
            let body = encode(coding, &zeros);
            assert!(body.len() < 1 << 20, "{coding}: {}", body.len());
            let mut dec = decoder_for(&header(coding)).unwrap().unwrap();
            let (mut total, mut steps) = (0usize, 0usize);
            let mut buf = Vec::new();
            let mut input = body.as_slice();
            loop {
                let more = dec.step(&mut input, &mut buf).unwrap();
                assert!(
                    buf.len() <= PIECE * 3 / 2,
                    "{coding}: a step gave {}",
                    buf.len()
                );
                total += buf.len();
                steps += 1;
                if input.is_empty() && !more {
                    break;
                }
            }
            dec.finish(&mut buf).unwrap();
            total += buf.len();
            assert_eq!(total, zeros.len(), "{coding}");
            assert!(steps > 500, "{coding}: {steps} steps");
        }
    }

    #[test]
    fn broken_streams_fail_with_exit_61_and_say_why() {
        let data = text(50_000);
        for coding in ["gzip", "zlib", "raw", "br"] {
            let body = encode(coding, &data);
            let cut = decode(&header(coding), &body[..body.len() / 2], 1000).unwrap_err();
            assert_eq!(cut.exit_code(), 61, "{coding}: {cut}");
            assert!(cut.to_string().contains("ends before"), "{coding}: {cut}");

            let mut extra = body.clone();
            extra.extend_from_slice(b"garbage after the end");
            let e = decode(&header(coding), &extra, 1000).unwrap_err();
            assert_eq!(e.exit_code(), 61, "{coding}: {e}");
            assert!(
                e.to_string().contains("goes on after the end"),
                "{coding}: {e}"
            );
        }
        for coding in ["gzip", "br", "zlib"] {
            let e = decode(&header(coding), &[0xff; 4000], 100).unwrap_err();
            assert_eq!(e.exit_code(), 61, "{coding}: {e}");
            assert!(
                e.to_string().contains("cannot decode the response body as"),
                "{coding}: {e}"
            );
        }
        // A damaged gzip body fails its own CRC at the end at the latest.
        let mut body = encode("gzip", &data);
        let middle = body.len() / 2;
        body[middle] ^= 0x10;
        assert_eq!(
            decode(&header("gzip"), &body, 1000)
                .unwrap_err()
                .exit_code(),
            61
        );
        assert!(decode(&header("deflate"), b"x", 1).is_err());
    }

    #[test]
    fn zlib_headers_are_told_from_raw_deflate() {
        assert!(is_zlib_header(0x78, 0x9c));
        assert!(is_zlib_header(0x78, 0x01));
        assert!(is_zlib_header(0x78, 0xda));
        assert!(!is_zlib_header(0x78, 0x9d));
        assert!(!is_zlib_header(0xed, 0x9c));
    }
}
