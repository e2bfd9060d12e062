//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the
//! `traceparent` and `tracestate` values `send` puts on a request's start
//! record, the portal on the API request and on the response's start record.
//!
//! Only version `00` is written. A value of a later version is read as the
//! specification asks (its first four fields, when they are well formed);
//! anything else is refused, never guessed at: a trace broken in two is
//! better than one joined to a stranger's.

use std::fmt;

use ulid::Ulid;

/// Kafka record header, and HTTP header, of the trace parent.
pub const TRACEPARENT: &str = "traceparent";

/// Kafka record header, and HTTP header, of the vendors' trace state.
pub const TRACESTATE: &str = "tracestate";

/// Most bytes of a `tracestate` carried on: the 512 the specification asks
/// every carrier to pass on. A longer list loses whole members, as its
/// truncation rule says (those over 128 bytes first, then from the end).
pub const MAX_TRACESTATE_BYTES: usize = 512;

/// Most list members of a `tracestate`; a list with more is dropped.
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// Members longer than this go first when a list is cut to size.
const LARGE_MEMBER: usize = 128;

/// The `sampled` bit of the trace flags.
const SAMPLED: u8 = 0x01;

/// A 16-byte trace id, never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct TraceId([u8; 16]);

/// An 8-byte span id, never all zeros.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct SpanId([u8; 8]);

/// Why a `traceparent` or `tracestate` value was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TraceError {
    /// Not `VERSION-TRACEID-PARENTID-FLAGS` in lower-case hex.
    #[error("traceparent is not VERSION-TRACEID-PARENTID-FLAGS in lower-case hex (e.g. 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01)")]
    Malformed,
    /// Version `ff` is forbidden by the specification.
    #[error("traceparent version ff is invalid")]
    BadVersion,
    /// The trace id is all zeros.
    #[error("traceparent trace id is all zeros")]
    ZeroTraceId,
    /// The parent id is all zeros.
    #[error("traceparent parent id is all zeros")]
    ZeroParentId,
    /// The tracestate is not a W3C list of `key=value` members.
    #[error("tracestate is not a valid list of key=value members: {0}")]
    BadState(&'static str),
}

impl TraceId {
    /// A fresh random trace id.
    pub fn random() -> Self {
        // 80 random bits of each of two ULIDs (ulid draws them from `rand`,
        // a cryptographic generator), so no second source is needed.
        let a = Ulid::new().random().to_be_bytes();
        let b = Ulid::new().random().to_be_bytes();
        let mut id = [0u8; 16];
        id[..8].copy_from_slice(&a[8..]);
        id[8..].copy_from_slice(&b[8..]);
        if id == [0; 16] {
            id[15] = 1;
        }
        Self(id)
    }

    /// The id's bytes, as OTLP carries them.
    pub fn bytes(&self) -> [u8; 16] {
        self.0
    }
}

impl SpanId {
    /// A fresh random span id.
    pub fn random() -> Self {
        let r = Ulid::new().random().to_be_bytes();
        let mut id = [0u8; 8];
        id.copy_from_slice(&r[8..]);
        if id == [0; 8] {
            id[7] = 1;
        }
        Self(id)
    }

    /// The id's bytes, as OTLP carries them.
    pub fn bytes(&self) -> [u8; 8] {
        self.0
    }
}

fn write_hex(f: &mut fmt::Formatter<'_>, bytes: &[u8]) -> fmt::Result {
    bytes.iter().try_for_each(|b| write!(f, "{b:02x}"))
}

impl fmt::Display for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for TraceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Display for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

impl fmt::Debug for SpanId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write_hex(f, &self.0)
    }
}

/// A parsed `traceparent`: the trace, the span that is the parent of what
/// comes next, and the flags.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace every span of a request shares.
    pub trace_id: TraceId,
    /// The span the next one hangs under.
    pub parent_id: SpanId,
    /// Trace flags; only `sampled` (bit 0) has a meaning in version 00.
    pub flags: u8,
}

impl TraceParent {
    /// A new trace, sampled, with `span` as its first span.
    pub fn start(span: SpanId) -> Self {
        Self {
            trace_id: TraceId::random(),
            parent_id: span,
            flags: SAMPLED,
        }
    }

    /// The same trace and flags with `span` as the parent.
    pub fn child(&self, span: SpanId) -> Self {
        Self {
            parent_id: span,
            ..*self
        }
    }

    /// Whether the caller asked for this trace to be recorded.
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }

    /// Reads a `traceparent` value (bytes, as a Kafka header holds them).
    /// Surrounding spaces and tabs are allowed, as in an HTTP header.
    pub fn parse(value: &[u8]) -> Result<Self, TraceError> {
        let value = trim(value);
        // Version, ids and flags: 2 + 1 + 32 + 1 + 16 + 1 + 2.
        const LEN: usize = 55;
        if value.len() < LEN {
            return Err(TraceError::Malformed);
        }
        let version = hex_byte(&value[0..2]).ok_or(TraceError::Malformed)?;
        if version == 0xff {
            return Err(TraceError::BadVersion);
        }
        // Version 00 is exactly 55 bytes; a later one may add fields after
        // a dash, which are not read.
        if (version == 0 && value.len() != LEN)
            || (version != 0 && value.len() > LEN && value[LEN] != b'-')
        {
            return Err(TraceError::Malformed);
        }
        if value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
            return Err(TraceError::Malformed);
        }
        let mut trace = [0u8; 16];
        hex_into(&value[3..35], &mut trace)?;
        let mut parent = [0u8; 8];
        hex_into(&value[36..52], &mut parent)?;
        let flags = hex_byte(&value[53..55]).ok_or(TraceError::Malformed)?;
        if trace == [0; 16] {
            return Err(TraceError::ZeroTraceId);
        }
        if parent == [0; 8] {
            return Err(TraceError::ZeroParentId);
        }
        Ok(Self {
            trace_id: TraceId(trace),
            parent_id: SpanId(parent),
            // Version 00 defines only the sampled bit; the others are not
            // carried on, as the specification asks of a version 00 writer.
            flags: flags & SAMPLED,
        })
    }
}

impl fmt::Display for TraceParent {
    /// The version 00 form: `00-TRACEID-PARENTID-FLAGS`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "00-{}-{}-{:02x}",
            self.trace_id, self.parent_id, self.flags
        )
    }
}

/// Checks a `tracestate` value against the W3C list grammar (at most
/// [`MAX_TRACESTATE_MEMBERS`] `key=value` members, each key once, spaces and
/// tabs allowed around commas, empty members skipped) and gives it back
/// without that whitespace, cut to [`MAX_TRACESTATE_BYTES`] by dropping
/// whole members; `None` when no member is left. Members are never changed,
/// only kept or dropped, so each vendor reads what it wrote.
pub fn parse_tracestate(value: &[u8]) -> Result<Option<String>, TraceError> {
    let mut members: Vec<&[u8]> = Vec::new();
    for raw in value.split(|&b| b == b',') {
        let member = trim(raw);
        if member.is_empty() {
            continue;
        }
        if members.len() == MAX_TRACESTATE_MEMBERS {
            return Err(TraceError::BadState("more than 32 members"));
        }
        let Some(eq) = member.iter().position(|&b| b == b'=') else {
            return Err(TraceError::BadState("a member has no '='"));
        };
        let (key, val) = (&member[..eq], &member[eq + 1..]);
        if !state_key(key) {
            return Err(TraceError::BadState(
                "a key is not lcalpha/digit/_-*/ (tenant@system), at most 256 bytes",
            ));
        }
        if !state_value(val) {
            return Err(TraceError::BadState(
                "a value is empty, over 256 bytes, or holds ',', '=' or a non-printable byte",
            ));
        }
        if members
            .iter()
            .any(|m| m.starts_with(key) && m.get(key.len()) == Some(&b'='))
        {
            return Err(TraceError::BadState("a key appears twice"));
        }
        members.push(member);
    }
    let size = |ms: &[&[u8]]| {
        ms.iter()
            .map(|m| m.len() + 1)
            .sum::<usize>()
            .saturating_sub(1)
    };
    if size(&members) > MAX_TRACESTATE_BYTES {
        members.retain(|m| m.len() <= LARGE_MEMBER);
    }
    while size(&members) > MAX_TRACESTATE_BYTES {
        members.pop();
    }
    if members.is_empty() {
        return Ok(None);
    }
    // Every byte was checked to be printable ASCII, which is UTF-8.
    String::from_utf8(members.join(&b','))
        .map(Some)
        .map_err(|_| TraceError::BadState("not ASCII"))
}

/// A `tracestate` key: `simple-key` (lcalpha, then up to 255 of lcalpha,
/// digits, `_-*/`) or `tenant@system` (at most 241 and 14 bytes, the system
/// starting with lcalpha).
fn state_key(key: &[u8]) -> bool {
    let rest_ok = |r: &[u8]| {
        r.iter()
            .all(|&b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"_-*/".contains(&b))
    };
    match key.iter().position(|&b| b == b'@') {
        None => match key {
            [first, rest @ ..] => first.is_ascii_lowercase() && rest.len() <= 255 && rest_ok(rest),
            [] => false,
        },
        Some(at) => {
            let (tenant, system) = (&key[..at], &key[at + 1..]);
            let tenant_ok = match tenant {
                [first, rest @ ..] => {
                    (first.is_ascii_lowercase() || first.is_ascii_digit())
                        && rest.len() <= 240
                        && rest_ok(rest)
                }
                [] => false,
            };
            let system_ok = match system {
                [first, rest @ ..] => {
                    first.is_ascii_lowercase() && rest.len() <= 13 && rest_ok(rest)
                }
                [] => false,
            };
            tenant_ok && system_ok
        }
    }
}

/// A `tracestate` value: 1 to 256 printable ASCII bytes but ',' and '=',
/// spaces allowed except last.
fn state_value(value: &[u8]) -> bool {
    !value.is_empty()
        && value.len() <= 256
        && value.last() != Some(&b' ')
        && value
            .iter()
            .all(|&b| (0x20..0x7f).contains(&b) && b != b',' && b != b'=')
}

/// A trace as it is carried: the parent and the vendors' state.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceContext {
    /// The trace and the parent span.
    pub parent: TraceParent,
    /// The `tracestate`, carried on unchanged.
    pub state: Option<String>,
}

impl TraceContext {
    /// Reads a context from header values: `None` when there is no
    /// `traceparent`, an error when it is invalid. An invalid `tracestate`
    /// is dropped and the trace kept, as the specification allows; its error
    /// comes back beside the context so the caller can warn. A `tracestate`
    /// without a valid `traceparent` is meaningless and not read.
    pub fn from_values(
        traceparent: Option<&[u8]>,
        tracestate: Option<&[u8]>,
    ) -> Result<Option<(Self, Option<TraceError>)>, TraceError> {
        let Some(tp) = traceparent else {
            return Ok(None);
        };
        let parent = TraceParent::parse(tp)?;
        let (state, dropped) = match tracestate.map(parse_tracestate) {
            Some(Ok(state)) => (state, None),
            Some(Err(e)) => (None, Some(e)),
            None => (None, None),
        };
        Ok(Some((Self { parent, state }, dropped)))
    }

    /// The record (or HTTP) headers carrying this context.
    pub fn headers(&self) -> Vec<(&'static str, Vec<u8>)> {
        let mut out = vec![(TRACEPARENT, self.parent.to_string().into_bytes())];
        if let Some(state) = &self.state {
            out.push((TRACESTATE, state.clone().into_bytes()));
        }
        out
    }
}

/// Whether an HTTP header name is one of the trace context's.
pub fn is_trace_header(name: &str) -> bool {
    name.eq_ignore_ascii_case(TRACEPARENT) || name.eq_ignore_ascii_case(TRACESTATE)
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// One lower-case hex digit's value; upper case is refused, as the
/// specification asks.
fn hex_digit(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn hex_byte(two: &[u8]) -> Option<u8> {
    match two {
        [h, l] => Some(hex_digit(*h)? << 4 | hex_digit(*l)?),
        _ => None,
    }
}

fn hex_into(text: &[u8], out: &mut [u8]) -> Result<(), TraceError> {
    if text.len() != out.len() * 2 {
        return Err(TraceError::Malformed);
    }
    for (o, pair) in out.iter_mut().zip(text.chunks_exact(2)) {
        *o = hex_byte(pair).ok_or(TraceError::Malformed)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EXAMPLE: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specification_example_reads_and_writes_back() {
        let tp = TraceParent::parse(EXAMPLE.as_bytes()).unwrap();
        assert_eq!(tp.trace_id.to_string(), "4bf92f3577b34da6a3ce929d0e0e4736");
        assert_eq!(tp.parent_id.to_string(), "00f067aa0ba902b7");
        assert!(tp.sampled());
        assert_eq!(tp.to_string(), EXAMPLE);
        let padded = format!(" \t{EXAMPLE} ");
        assert_eq!(TraceParent::parse(padded.as_bytes()), Ok(tp));
    }

    #[test]
    fn hostile_and_invalid_values_are_refused() {
        let cases: &[(&str, TraceError)] = &[
            ("", TraceError::Malformed),
            ("00", TraceError::Malformed),
            (
                "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
                TraceError::ZeroTraceId,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
                TraceError::ZeroParentId,
            ),
            (
                "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceError::BadVersion,
            ),
            // Upper case, a missing dash, a short id, trailing data on 00.
            (
                "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
                TraceError::Malformed,
            ),
            (
                "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceError::Malformed,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01a",
                TraceError::Malformed,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
                TraceError::Malformed,
            ),
            (
                "0g-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                TraceError::Malformed,
            ),
            (
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0\u{e9}",
                TraceError::Malformed,
            ),
            (
                "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
                TraceError::Malformed,
            ),
        ];
        for (value, want) in cases {
            assert_eq!(
                TraceParent::parse(value.as_bytes()),
                Err(want.clone()),
                "{value:?}"
            );
        }
    }

    #[test]
    fn a_later_version_is_read_by_its_first_fields() {
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-03-what-else";
        let tp = TraceParent::parse(later.as_bytes()).unwrap();
        // Written back as version 00, unknown flag bits dropped.
        assert_eq!(tp.to_string(), EXAMPLE);
    }

    #[test]
    fn tracestate_members_are_carried_unchanged_without_list_whitespace() {
        assert_eq!(
            parse_tracestate(b"rojo=00f067aa0ba902b7,congo=t61rcWkgMzE"),
            Ok(Some("rojo=00f067aa0ba902b7,congo=t61rcWkgMzE".into()))
        );
        assert_eq!(
            parse_tracestate(b" a=1 ,\t, t3n@sys-1=x y\t,"),
            Ok(Some("a=1,t3n@sys-1=x y".into()))
        );
        assert_eq!(parse_tracestate(b"  "), Ok(None));
        assert_eq!(parse_tracestate(b" , ,"), Ok(None));
    }

    #[test]
    fn hostile_tracestate_members_drop_the_whole_list() {
        let hostile: &[&[u8]] = &[
            b"a=1\r\nx: y",
            b"a=1,x-injected: y",
            &[b'a', b'=', 0xff],
            b"A=1",
            b"1a=1",
            b"a=",
            b"=1",
            b"a=1=2",
            b"a=1,a=2",
            b"a=b ,c=d\x00",
            b"t@=1",
            b"@s=1",
            b"t@1s=1",
            b"t@abcdefghijklmno=1",
            b"a=\x7f",
        ];
        for value in hostile {
            assert!(
                matches!(parse_tracestate(value), Err(TraceError::BadState(_))),
                "{:?}",
                String::from_utf8_lossy(value)
            );
        }
        let many: Vec<String> = (0..33).map(|n| format!("k{n}=v")).collect();
        assert!(parse_tracestate(many.join(",").as_bytes()).is_err());
        let long_key = format!("{}=v", "k".repeat(257));
        assert!(parse_tracestate(long_key.as_bytes()).is_err());
        let long_value = format!("k={}", "v".repeat(257));
        assert!(parse_tracestate(long_value.as_bytes()).is_err());
        // An 8 KiB single value is no member at all.
        let huge = format!("k={}", "v".repeat(8192));
        assert!(parse_tracestate(huge.as_bytes()).is_err());
    }

    #[test]
    fn a_long_tracestate_loses_whole_members_large_first_then_from_the_end() {
        // 32 members of 256 bytes: 8 KiB, valid, cut to the first one.
        let big: Vec<String> = (0..32)
            .map(|n| format!("k{n:02}={}", "v".repeat(252)))
            .collect();
        let value = big.join(",");
        assert!(value.len() > 8000);
        // Every member is over 128 bytes, so all go.
        assert_eq!(parse_tracestate(value.as_bytes()), Ok(None));
        // Small members are kept from the front, large ones dropped first.
        let mut mixed: Vec<String> = (0..20)
            .map(|n| format!("s{n:02}={}", "x".repeat(40)))
            .collect();
        mixed.insert(1, format!("big={}", "y".repeat(200)));
        let kept = parse_tracestate(mixed.join(",").as_bytes())
            .unwrap()
            .unwrap();
        assert!(kept.len() <= MAX_TRACESTATE_BYTES);
        assert!(!kept.contains("big="));
        let members: Vec<&str> = kept.split(',').collect();
        assert_eq!(members.len(), 11, "11 members of 44 bytes fit in 512");
        assert!(members
            .iter()
            .enumerate()
            .all(|(n, m)| m.starts_with(&format!("s{n:02}="))));
        // At the limit exactly, nothing goes; one more member, and it goes.
        let member = |k: char, len: usize| format!("{k}={}", "v".repeat(len - 2));
        let exact = [
            member('a', 128),
            member('b', 128),
            member('c', 128),
            member('d', 125),
        ]
        .join(",");
        assert_eq!(exact.len(), MAX_TRACESTATE_BYTES);
        assert_eq!(parse_tracestate(exact.as_bytes()), Ok(Some(exact.clone())));
        let over = format!("{exact},z=1");
        assert_eq!(parse_tracestate(over.as_bytes()), Ok(Some(exact)));
    }

    #[test]
    fn a_context_needs_a_parent_and_a_bad_state_costs_only_the_state() {
        assert_eq!(TraceContext::from_values(None, Some(b"a=1")), Ok(None));
        let (ctx, dropped) = TraceContext::from_values(Some(EXAMPLE.as_bytes()), Some(b"a=1"))
            .unwrap()
            .unwrap();
        assert_eq!(dropped, None);
        let headers = ctx.headers();
        assert_eq!(headers[0], (TRACEPARENT, EXAMPLE.as_bytes().to_vec()));
        assert_eq!(headers[1], (TRACESTATE, b"a=1".to_vec()));
        let (ctx, dropped) = TraceContext::from_values(Some(EXAMPLE.as_bytes()), Some(b"a=1,a=2"))
            .unwrap()
            .unwrap();
        assert_eq!(ctx.parent.to_string(), EXAMPLE);
        assert_eq!(ctx.state, None);
        assert!(matches!(dropped, Some(TraceError::BadState(_))));
        assert!(TraceContext::from_values(Some(b"junk"), None).is_err());
    }

    #[test]
    fn fresh_ids_are_distinct_non_zero_and_children_keep_the_trace() {
        let span = SpanId::random();
        let tp = TraceParent::start(span);
        assert!(tp.sampled());
        assert_ne!(tp.trace_id.bytes(), [0; 16]);
        assert_ne!(TraceId::random(), TraceId::random());
        assert_ne!(SpanId::random(), SpanId::random());
        let next = SpanId::random();
        let child = tp.child(next);
        assert_eq!(child.trace_id, tp.trace_id);
        assert_eq!(child.parent_id, next);
        assert_eq!(TraceParent::parse(child.to_string().as_bytes()), Ok(child));
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = TraceParent::parse(&bytes);
            let _ = parse_tracestate(&bytes);
        }

        #[test]
        fn every_valid_parent_round_trips(t in any::<[u8; 16]>(), p in any::<[u8; 8]>(), sampled in any::<bool>()) {
            prop_assume!(t != [0; 16] && p != [0; 8]);
            let tp = TraceParent { trace_id: TraceId(t), parent_id: SpanId(p), flags: u8::from(sampled) };
            prop_assert_eq!(TraceParent::parse(tp.to_string().as_bytes()), Ok(tp));
        }
    }
}
