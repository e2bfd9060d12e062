//! The OTLP/HTTP protobuf body of a batch of spans: an
//! `ExportTraceServiceRequest` (opentelemetry-proto,
//! `collector/trace/v1/trace_service.proto`) with one resource and one
//! scope, written by hand. The handful of messages and fields used here are
//! all this needs of protobuf, which spares the crate a code generator and
//! its dependencies.

use std::time::{SystemTime, UNIX_EPOCH};

use super::{Kind, Span, Value};

/// The instrumentation scope's name in every batch.
const SCOPE: &str = "kafkasend";

/// Protobuf wire types.
const VARINT: u8 = 0;
const FIXED64: u8 = 1;
const LEN: u8 = 2;

fn varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn bytes_field(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    tag(out, field, LEN);
    varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A nested message: written into a buffer of its own, then length-prefixed.
fn message(out: &mut Vec<u8>, field: u32, write: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    write(&mut inner);
    bytes_field(out, field, &inner);
}

fn unix_nanos(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_nanos()).unwrap_or(u64::MAX))
}

/// `KeyValue { key = 1; AnyValue value = 2 }`, `AnyValue { string_value =
/// 1; int_value = 3 }`.
fn key_value(out: &mut Vec<u8>, field: u32, key: &str, value: &Value) {
    message(out, field, |kv| {
        bytes_field(kv, 1, key.as_bytes());
        message(kv, 2, |any| match value {
            Value::Str(s) => bytes_field(any, 1, s.as_bytes()),
            Value::Int(n) => {
                tag(any, 3, VARINT);
                // int64 is written as its two's complement bits.
                varint(any, *n as u64);
            }
        });
    });
}

fn kind_number(kind: Kind) -> u64 {
    match kind {
        Kind::Internal => 1,
        Kind::Client => 3,
        Kind::Producer => 4,
        Kind::Consumer => 5,
    }
}

/// `Span`'s fields 1 to 9 and 15 (status).
fn span(out: &mut Vec<u8>, s: &Span) {
    bytes_field(out, 1, &s.trace_id.bytes());
    bytes_field(out, 2, &s.span_id.bytes());
    if let Some(state) = &s.trace_state {
        bytes_field(out, 3, state.as_bytes());
    }
    if let Some(parent) = s.parent {
        bytes_field(out, 4, &parent.bytes());
    }
    bytes_field(out, 5, s.name.as_bytes());
    tag(out, 6, VARINT);
    varint(out, kind_number(s.kind));
    tag(out, 7, FIXED64);
    out.extend_from_slice(&unix_nanos(s.start).to_le_bytes());
    tag(out, 8, FIXED64);
    out.extend_from_slice(&unix_nanos(s.end.max(s.start)).to_le_bytes());
    for (k, v) in &s.attributes {
        key_value(out, 9, k, v);
    }
    if let Some(message_text) = &s.error {
        // Status { message = 2; code = 3 (STATUS_CODE_ERROR = 2) }.
        message(out, 15, |st| {
            bytes_field(st, 2, message_text.as_bytes());
            tag(st, 3, VARINT);
            varint(st, 2);
        });
    }
}

/// The body of one export: `spans` under a resource named `service`.
pub fn encode(service: &str, spans: &[Span]) -> Vec<u8> {
    let mut out = Vec::new();
    // ExportTraceServiceRequest.resource_spans = 1
    message(&mut out, 1, |rs| {
        // ResourceSpans.resource = 1: Resource.attributes = 1
        message(rs, 1, |res| {
            key_value(res, 1, "service.name", &Value::Str(service.into()));
        });
        // ResourceSpans.scope_spans = 2
        message(rs, 2, |ss| {
            // ScopeSpans.scope = 1: InstrumentationScope { name = 1; version = 2 }
            message(ss, 1, |scope| {
                bytes_field(scope, 1, SCOPE.as_bytes());
                bytes_field(scope, 2, env!("CARGO_PKG_VERSION").as_bytes());
            });
            for s in spans {
                message(ss, 2, |out| span(out, s));
            }
        });
    });
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::trace::{SpanId, TraceId};
    use std::time::Duration;

    #[test]
    fn varints_are_base_128_little_endian() {
        for (n, want) in [
            (0u64, vec![0u8]),
            (1, vec![1]),
            (127, vec![0x7f]),
            (128, vec![0x80, 0x01]),
            (300, vec![0xac, 0x02]),
            (
                u64::MAX,
                vec![0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x01],
            ),
        ] {
            let mut out = Vec::new();
            varint(&mut out, n);
            assert_eq!(out, want, "{n}");
        }
    }

    /// Reads one length-delimited field's bytes at `at`, for the checks below.
    fn read_len(buf: &[u8], at: &mut usize) -> (u64, Vec<u8>) {
        let read_varint = |at: &mut usize| {
            let (mut v, mut shift) = (0u64, 0);
            loop {
                let b = buf[*at];
                *at += 1;
                v |= u64::from(b & 0x7f) << shift;
                if b < 0x80 {
                    return v;
                }
                shift += 7;
            }
        };
        let key = read_varint(at);
        assert_eq!(key & 7, u64::from(LEN));
        let len = read_varint(at) as usize;
        let out = buf[*at..*at + len].to_vec();
        *at += len;
        (key >> 3, out)
    }

    #[test]
    fn a_span_is_nested_where_otlp_expects_it() {
        let t0 = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let s = Span::new(
            TraceId::random(),
            SpanId::random(),
            Some(SpanId::random()),
            "call",
            t0,
            t0 + Duration::from_millis(5),
        )
        .kind(Kind::Client)
        .attr("http.response.status_code", 200u16)
        .attr("kafkasend.job_id", "01ABC");
        let body = encode("svc", std::slice::from_ref(&s));
        let mut at = 0;
        let (field, resource_spans) = read_len(&body, &mut at);
        assert_eq!((field, at), (1, body.len()));
        let mut at = 0;
        let (field, resource) = read_len(&resource_spans, &mut at);
        assert_eq!(field, 1);
        assert!(resource.windows(3).any(|w| w == b"svc"));
        let (field, scope_spans) = read_len(&resource_spans, &mut at);
        assert_eq!((field, at), (2, resource_spans.len()));
        let mut at = 0;
        let (field, _scope) = read_len(&scope_spans, &mut at);
        assert_eq!(field, 1);
        let (field, span_bytes) = read_len(&scope_spans, &mut at);
        assert_eq!((field, at), (2, scope_spans.len()));
        let mut at = 0;
        assert_eq!(
            read_len(&span_bytes, &mut at),
            (1, s.trace_id.bytes().to_vec())
        );
        assert_eq!(
            read_len(&span_bytes, &mut at),
            (2, s.span_id.bytes().to_vec())
        );
        assert_eq!(
            read_len(&span_bytes, &mut at),
            (4, s.parent.unwrap().bytes().to_vec())
        );
        assert_eq!(read_len(&span_bytes, &mut at), (5, b"call".to_vec()));
        // kind = CLIENT (3), then the start time as fixed64.
        assert_eq!(&span_bytes[at..at + 3], &[6 << 3, 3, (7 << 3) | 1]);
        let start = u64::from_le_bytes(span_bytes[at + 3..at + 11].try_into().unwrap());
        assert_eq!(start, 1_700_000_000 * 1_000_000_000);
    }
}
