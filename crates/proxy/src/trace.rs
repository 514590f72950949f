//! W3C Trace Context (<https://www.w3.org/TR/trace-context/>): the client's `traceparent` and
//! `tracestate`, checked; the router's own span in the trace when `tracing` is configured.
//!
//! Without `tracing` the router is not a participant: a valid `traceparent` passes to the pod
//! unchanged (and its trace id goes into the access log), a malformed one is removed with its
//! `tracestate`. That is one header lookup and a 55-byte check per request, nothing more.
//!
//! With `tracing` every request gets a span of the router's: a new span id, the client's span as
//! its parent (or a new trace when the client sent none or a malformed one, sampled with
//! `samplingRatio`; an incoming trace keeps its sampled flag), forwarded to the pod as its
//! `traceparent` and returned to the client in the response's. IDs come from the thread's RNG
//! and are formatted on the stack; the header value is the only allocation.

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// The trace context header (`version-traceid-parentid-flags`).
pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
/// Vendor trace state; passed on only beside a valid `traceparent`.
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");
/// The longest `tracestate` passed on (the specification lets a vendor drop longer ones).
pub const MAX_TRACESTATE_BYTES: usize = 512;
/// The `sampled` bit of the trace flags.
const SAMPLED: u8 = 0x01;
const LEN_00: usize = 55;

/// A parsed `traceparent`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TraceParent {
    /// The trace id (never all zero).
    pub trace_id: [u8; 16],
    /// The sender's span id (never all zero).
    pub parent_id: [u8; 8],
    /// Trace flags (bit 0: sampled).
    pub flags: u8,
}

impl TraceParent {
    /// Whether the sender recorded (sampled) its span.
    pub fn sampled(&self) -> bool {
        self.flags & SAMPLED != 0
    }
}

fn nibble(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

/// Lowercase hex into `out` (twice the input's length).
fn decode_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        *o = nibble(pair[0])? << 4 | nibble(pair[1])?;
    }
    Some(out)
}

const HEX: &[u8; 16] = b"0123456789abcdef";

fn encode_hex(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

/// Parses a `traceparent` value: lowercase hex, version `00` exactly 55 bytes (a later version:
/// its first four fields, and a `-` after them when longer; `ff` is invalid), a trace id and a
/// parent id that are not all zero.
pub fn parse_traceparent(v: &[u8]) -> Option<TraceParent> {
    if v.len() < LEN_00 || v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return None;
    }
    let [version] = decode_hex::<1>(&v[..2])?;
    match version {
        0xff => return None,
        0 if v.len() != LEN_00 => return None,
        _ if v.len() > LEN_00 && v[LEN_00] != b'-' => return None,
        _ => {}
    }
    let trace_id = decode_hex::<16>(&v[3..35])?;
    let parent_id = decode_hex::<8>(&v[36..52])?;
    let [flags] = decode_hex::<1>(&v[53..55])?;
    if trace_id == [0; 16] || parent_id == [0; 8] {
        return None;
    }
    Some(TraceParent {
        trace_id,
        parent_id,
        flags,
    })
}

/// How the router takes part in traces (the `tracing` section).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TraceSettings {
    /// The share of new traces (those the router starts) that are sampled, 0 to 1.
    pub sampling_ratio: f64,
}

/// One request's place in its trace.
#[derive(Debug, Clone)]
pub struct RequestTrace {
    /// The trace id (the client's, or a new one).
    pub trace_id: [u8; 16],
    /// The router's span id; `None` when the router is not a participant (no `tracing`).
    pub span_id: Option<[u8; 8]>,
    /// The client's span id (the router span's parent), if it sent a valid `traceparent`.
    pub parent_id: Option<[u8; 8]>,
    /// Whether the trace is sampled (recorded and exported).
    pub sampled: bool,
    /// The router's `traceparent` (sent to the pod and returned to the client), with `tracing`.
    pub header: Option<HeaderValue>,
}

impl RequestTrace {
    /// The trace id as 32 lowercase hex digits, formatted into `buf`.
    pub fn trace_id_hex<'a>(&self, buf: &'a mut [u8; 32]) -> &'a str {
        encode_hex(&self.trace_id, buf);
        std::str::from_utf8(buf).expect("hex is ASCII")
    }

    /// The router's span id as 16 lowercase hex digits, formatted into `buf`.
    pub fn span_id_hex<'a>(&self, buf: &'a mut [u8; 16]) -> Option<&'a str> {
        encode_hex(&self.span_id?, buf);
        Some(std::str::from_utf8(buf).expect("hex is ASCII"))
    }
}

/// A `traceparent` (version 00) for this trace and span, formatted on the stack.
pub fn traceparent_value(trace_id: &[u8; 16], span_id: &[u8; 8], sampled: bool) -> HeaderValue {
    let mut buf = *b"00-00000000000000000000000000000000-0000000000000000-00";
    encode_hex(trace_id, &mut buf[3..35]);
    encode_hex(span_id, &mut buf[36..52]);
    if sampled {
        buf[54] = b'1';
    }
    HeaderValue::from_bytes(&buf).expect("hex and dashes are a valid header value")
}

/// Whether a new trace with this id is sampled at `ratio`: the id's last 8 bytes against the
/// ratio (as OpenTelemetry's `TraceIdRatioBased`), so every router decides alike.
fn sample(trace_id: &[u8; 16], ratio: f64) -> bool {
    if ratio >= 1.0 {
        return true;
    }
    let low = u64::from_be_bytes(trace_id[8..].try_into().expect("8 bytes")) >> 1;
    (low as f64) < ratio * (1u64 << 63) as f64
}

fn nonzero<const N: usize>(mut f: impl FnMut() -> [u8; N]) -> [u8; N] {
    loop {
        let id = f();
        if id != [0; N] {
            return id;
        }
    }
}

/// The tracestate to pass on: one or more headers, together at most
/// [`MAX_TRACESTATE_BYTES`]; otherwise none.
fn keep_tracestate(h: &mut HeaderMap) {
    let mut values = h.get_all(TRACESTATE).iter();
    let Some(first) = values.next() else {
        return;
    };
    if values.next().is_none() {
        if first.len() > MAX_TRACESTATE_BYTES {
            h.remove(TRACESTATE);
        }
        return;
    }
    // Several headers: one list (the rare case, the only one that allocates).
    let joined: Vec<u8> = h
        .get_all(TRACESTATE)
        .iter()
        .map(HeaderValue::as_bytes)
        .collect::<Vec<_>>()
        .join(&b","[..]);
    h.remove(TRACESTATE);
    if joined.len() <= MAX_TRACESTATE_BYTES
        && let Ok(v) = HeaderValue::from_bytes(&joined)
    {
        h.insert(TRACESTATE, v);
    }
}

/// The request's trace from the client's headers, which are rewritten for the pod: a malformed
/// `traceparent` (and any `tracestate` without a valid one) never passes; with `settings` the
/// router's own `traceparent` replaces the client's.
pub fn start(h: &mut HeaderMap, settings: Option<&TraceSettings>) -> Option<RequestTrace> {
    let incoming = match h.get(TRACEPARENT) {
        None => None,
        Some(v) => {
            // More than one traceparent is malformed too.
            let one = h.get_all(TRACEPARENT).iter().nth(1).is_none();
            one.then(|| parse_traceparent(v.as_bytes())).flatten()
        }
    };
    match incoming {
        Some(_) => keep_tracestate(h),
        None => {
            if h.contains_key(TRACEPARENT) {
                h.remove(TRACEPARENT);
            }
            if h.contains_key(TRACESTATE) {
                h.remove(TRACESTATE);
            }
        }
    }
    let Some(settings) = settings else {
        // Not a participant: the client's valid context passes unchanged.
        return incoming.map(|p| RequestTrace {
            trace_id: p.trace_id,
            span_id: None,
            parent_id: Some(p.parent_id),
            sampled: p.sampled(),
            header: None,
        });
    };
    let span_id = nonzero(rand::random::<[u8; 8]>);
    let (trace_id, parent_id, sampled) = match incoming {
        Some(p) => (p.trace_id, Some(p.parent_id), p.sampled()),
        None => {
            let t = nonzero(rand::random::<[u8; 16]>);
            (t, None, sample(&t, settings.sampling_ratio))
        }
    };
    let header = traceparent_value(&trace_id, &span_id, sampled);
    h.insert(TRACEPARENT, header.clone());
    Some(RequestTrace {
        trace_id,
        span_id: Some(span_id),
        parent_id,
        sampled,
        header: Some(header),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    #[test]
    fn the_specifications_example_parses() {
        let p = parse_traceparent(VALID.as_bytes()).unwrap();
        assert_eq!(p.trace_id[0], 0x4b);
        assert_eq!(p.parent_id[7], 0xb7);
        assert!(p.sampled());
        let v = traceparent_value(&p.trace_id, &p.parent_id, true);
        assert_eq!(v, VALID);
    }

    #[test]
    fn malformed_traceparents_are_refused() {
        let bad = [
            "",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0",
            // uppercase hex
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            // all-zero trace id / parent id
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            // version ff, version 00 with more after it, a later version without a dash after
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-x",
            "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01x",
            // wrong separators, non-hex
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0z",
        ];
        for b in bad {
            assert_eq!(parse_traceparent(b.as_bytes()), None, "{b}");
        }
        // A later version: its first four fields count.
        let later = "cc-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-what-the-future-holds";
        assert!(parse_traceparent(later.as_bytes()).is_some());
    }

    fn headers(tp: Option<&str>, ts: &[&str]) -> HeaderMap {
        let mut h = HeaderMap::new();
        if let Some(tp) = tp {
            h.insert(TRACEPARENT, HeaderValue::from_str(tp).unwrap());
        }
        for s in ts {
            h.append(TRACESTATE, HeaderValue::from_str(s).unwrap());
        }
        h
    }

    const ON: TraceSettings = TraceSettings {
        sampling_ratio: 1.0,
    };

    #[test]
    fn without_tracing_a_valid_context_passes_and_a_malformed_one_goes() {
        let mut h = headers(Some(VALID), &["a=1"]);
        let t = start(&mut h, None).unwrap();
        assert_eq!(h[TRACEPARENT], VALID);
        assert_eq!(h[TRACESTATE], "a=1");
        assert_eq!(t.span_id, None);
        assert!(t.header.is_none());
        let mut buf = [0; 32];
        assert_eq!(t.trace_id_hex(&mut buf), "4bf92f3577b34da6a3ce929d0e0e4736");

        let mut h = headers(Some("00-zz"), &["a=1"]);
        assert!(start(&mut h, None).is_none());
        assert!(h.is_empty(), "{h:?}");
    }

    #[test]
    fn with_tracing_the_router_is_the_pods_parent() {
        let mut h = headers(Some(VALID), &["a=1", "b=2"]);
        let t = start(&mut h, Some(&ON)).unwrap();
        let fwd = parse_traceparent(h[TRACEPARENT].as_bytes()).unwrap();
        assert_eq!(fwd.trace_id, t.trace_id);
        assert_eq!(Some(fwd.parent_id), t.span_id);
        assert_ne!(fwd.parent_id, t.parent_id.unwrap());
        assert_eq!(h[TRACESTATE], "a=1,b=2");
        assert_eq!(t.header.as_ref(), Some(&h[TRACEPARENT]));

        // An unsampled incoming trace stays unsampled.
        let unsampled = VALID.replace("-01", "-00");
        let t = start(&mut headers(Some(&unsampled), &[]), Some(&ON)).unwrap();
        assert!(!t.sampled);

        // Malformed: a new trace, and the tracestate goes with the bad parent.
        let mut h = headers(Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f0"), &["a=1"]);
        let t = start(&mut h, Some(&ON)).unwrap();
        assert!(t.parent_id.is_none() && t.sampled);
        assert_ne!(
            t.trace_id,
            parse_traceparent(VALID.as_bytes()).unwrap().trace_id
        );
        assert!(h.get(TRACESTATE).is_none());
        assert!(parse_traceparent(h[TRACEPARENT].as_bytes()).is_some());

        // Two traceparents are malformed; an oversized tracestate is dropped.
        let mut h = headers(Some(VALID), &[&"k=v,".repeat(200)]);
        h.append(TRACEPARENT, HeaderValue::from_static(VALID));
        let t = start(&mut h, Some(&ON)).unwrap();
        assert!(t.parent_id.is_none());
        assert_eq!(h.get_all(TRACEPARENT).iter().count(), 1);
        let mut h = headers(Some(VALID), &[&"k=v,".repeat(200)]);
        start(&mut h, Some(&ON)).unwrap();
        assert!(h.get(TRACESTATE).is_none());
    }

    #[test]
    fn the_sampling_ratio_applies_to_new_traces() {
        let off = TraceSettings {
            sampling_ratio: 0.0,
        };
        let half = TraceSettings {
            sampling_ratio: 0.5,
        };
        let mut sampled = 0;
        for _ in 0..2000 {
            assert!(!start(&mut HeaderMap::new(), Some(&off)).unwrap().sampled);
            sampled += usize::from(start(&mut HeaderMap::new(), Some(&half)).unwrap().sampled);
        }
        assert!((800..1200).contains(&sampled), "{sampled} of 2000 at 0.5");
        // An incoming sampled trace is recorded whatever the ratio.
        assert!(
            start(&mut headers(Some(VALID), &[]), Some(&off))
                .unwrap()
                .sampled
        );
    }
}
