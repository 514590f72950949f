//! The OTLP trace messages (`opentelemetry/proto/collector/trace/v1`, `trace/v1`, `common/v1`)
//! written straight into the export request's buffer: protobuf's wire format, the fields the
//! router sends, no message objects and no allocation per span or attribute (the reused buffers
//! grow to a batch's size once).
//!
//! Why by hand: building the SDK's `SpanData` and converting it with `opentelemetry-otlp`, or
//! building `opentelemetry-proto`'s message types, allocates every attribute's key and value
//! (twice for the SDK); with the SDK the router spent 32% more CPU per request, its export
//! thread a fifth of it (BENCHMARKS.md, "Tracing cost"). prost's encoding primitives are not
//! its public API, and a varint is a few lines. The tests decode what is written here with
//! `opentelemetry-proto`'s generated types, the reference.

use std::fmt::Write as _;

/// Wire types.
const VARINT: u32 = 0;
const FIXED64: u32 = 1;
const LEN: u32 = 2;
const FIXED32: u32 = 5;

/// `Span.SpanKind`.
pub(crate) const KIND_INTERNAL: u64 = 1;
pub(crate) const KIND_SERVER: u64 = 2;
/// `Status.StatusCode.STATUS_CODE_ERROR`.
const STATUS_ERROR: u64 = 2;
/// `SpanFlags`: the W3C trace flags (sampled), and whether the parent is remote.
const FLAGS_SAMPLED: u32 = 0x01;
const FLAGS_HAS_IS_REMOTE: u32 = 0x100;
const FLAGS_IS_REMOTE: u32 = 0x200;

/// A protobuf varint.
fn varint(mut v: u64, buf: &mut Vec<u8>) {
    while v >= 0x80 {
        buf.push((v as u8) | 0x80);
        v >>= 7;
    }
    buf.push(v as u8);
}

fn varint_len(v: u64) -> usize {
    // 7 bits a byte; 0 takes one.
    (64 - (v | 1).leading_zeros() as usize).div_ceil(7)
}

fn key(tag: u32, wire: u32, buf: &mut Vec<u8>) {
    varint(u64::from(tag << 3 | wire), buf);
}

fn key_len(tag: u32) -> usize {
    varint_len(u64::from(tag << 3))
}

/// A length-delimited field (string, bytes, message) of `n` bytes, in all.
fn len_field_len(tag: u32, n: usize) -> usize {
    key_len(tag) + varint_len(n as u64) + n
}

fn bytes_field(tag: u32, b: &[u8], buf: &mut Vec<u8>) {
    key(tag, LEN, buf);
    varint(b.len() as u64, buf);
    buf.extend_from_slice(b);
}

fn fixed64_field(tag: u32, v: u64, buf: &mut Vec<u8>) {
    key(tag, FIXED64, buf);
    buf.extend_from_slice(&v.to_le_bytes());
}

/// An attribute value (`AnyValue`).
#[derive(Debug, Clone, Copy)]
pub(crate) enum Val<'a> {
    Str(&'a str),
    Int(i64),
    Bool(bool),
}

impl Val<'_> {
    fn len(self) -> usize {
        match self {
            Val::Str(s) => len_field_len(1, s.len()),
            Val::Int(i) => key_len(3) + varint_len(i as u64),
            Val::Bool(_) => key_len(2) + 1,
        }
    }

    fn write(self, buf: &mut Vec<u8>) {
        match self {
            Val::Str(s) => bytes_field(1, s.as_bytes(), buf),
            Val::Int(i) => {
                key(3, VARINT, buf);
                varint(i as u64, buf);
            }
            Val::Bool(b) => {
                key(2, VARINT, buf);
                varint(u64::from(b), buf);
            }
        }
    }
}

/// A `KeyValue` as field `tag` of the enclosing message.
pub(crate) fn attr(tag: u32, k: &str, v: Val<'_>, buf: &mut Vec<u8>) {
    let any = v.len();
    key(tag, LEN, buf);
    varint(
        (len_field_len(1, k.len()) + len_field_len(2, any)) as u64,
        buf,
    );
    bytes_field(1, k.as_bytes(), buf);
    key(2, LEN, buf);
    varint(any as u64, buf);
    v.write(buf);
}

/// One span's fields, in field order.
#[derive(Debug)]
pub(crate) struct SpanFields<'a> {
    pub(crate) trace_id: &'a [u8; 16],
    pub(crate) span_id: &'a [u8; 8],
    pub(crate) parent_id: Option<&'a [u8; 8]>,
    pub(crate) parent_is_remote: bool,
    /// The name, in one or two parts (joined by a space: `POST /api/v1/...`).
    pub(crate) name: (&'a str, Option<&'a str>),
    pub(crate) kind: u64,
    pub(crate) start_ns: u64,
    pub(crate) end_ns: u64,
    /// An error status with this message.
    pub(crate) error: Option<&'a str>,
}

/// Builds one export request: spans are appended, then [`Batch::finish`] wraps them in the
/// resource and scope.
#[derive(Debug, Default)]
pub(crate) struct Batch {
    /// `ScopeSpans.spans` (field 2) entries.
    spans: Vec<u8>,
    /// The span being written (its length goes before it).
    span: Vec<u8>,
    /// Attribute values formatted on the fly (addresses, numbers).
    text: String,
    count: u64,
}

impl Batch {
    /// Starts a span: its attributes follow ([`Batch::attr`]), then [`Batch::end_span`].
    pub(crate) fn begin_span(&mut self, f: &SpanFields<'_>) {
        let b = &mut self.span;
        b.clear();
        bytes_field(1, f.trace_id, b);
        bytes_field(2, f.span_id, b);
        if let Some(p) = f.parent_id {
            bytes_field(4, p, b);
        }
        match f.name {
            (name, None) => bytes_field(5, name.as_bytes(), b),
            (a, Some(z)) => {
                key(5, LEN, b);
                varint((a.len() + 1 + z.len()) as u64, b);
                b.extend_from_slice(a.as_bytes());
                b.push(b' ');
                b.extend_from_slice(z.as_bytes());
            }
        }
        key(6, VARINT, b);
        varint(f.kind, b);
        fixed64_field(7, f.start_ns, b);
        fixed64_field(8, f.end_ns, b);
    }

    /// An attribute of the span begun last.
    pub(crate) fn attr(&mut self, k: &str, v: Val<'_>) {
        attr(9, k, v, &mut self.span);
    }

    /// A string attribute written with `Display` (an address, a number as text), formatted
    /// into a reused buffer.
    pub(crate) fn attr_display(&mut self, k: &str, v: impl std::fmt::Display) {
        self.text.clear();
        let _ = write!(self.text, "{v}");
        attr(9, k, Val::Str(&self.text), &mut self.span);
    }

    /// Ends the span begun last: its status and flags, then it joins the batch.
    pub(crate) fn end_span(&mut self, f: &SpanFields<'_>) {
        let b = &mut self.span;
        if let Some(message) = f.error {
            key(15, LEN, b);
            varint(
                (len_field_len(2, message.len()) + key_len(3) + varint_len(STATUS_ERROR)) as u64,
                b,
            );
            bytes_field(2, message.as_bytes(), b);
            key(3, VARINT, b);
            varint(STATUS_ERROR, b);
        }
        let mut flags = FLAGS_SAMPLED | FLAGS_HAS_IS_REMOTE;
        if f.parent_is_remote {
            flags |= FLAGS_IS_REMOTE;
        }
        key(16, FIXED32, b);
        b.extend_from_slice(&flags.to_le_bytes());
        bytes_field(2, b, &mut self.spans);
        self.count += 1;
    }

    /// An address attribute (`IP`, or `IP:PORT` with a port), written without `fmt` for IPv4.
    pub(crate) fn attr_addr(&mut self, k: &str, ip: std::net::IpAddr, port: Option<u16>) {
        let t = &mut self.text;
        t.clear();
        match ip {
            std::net::IpAddr::V4(v4) => {
                for (i, o) in v4.octets().into_iter().enumerate() {
                    if i > 0 {
                        t.push('.');
                    }
                    push_decimal(t, u16::from(o));
                }
            }
            std::net::IpAddr::V6(v6) if port.is_some() => {
                let _ = write!(t, "[{v6}]");
            }
            std::net::IpAddr::V6(v6) => {
                let _ = write!(t, "{v6}");
            }
        }
        if let Some(p) = port {
            t.push(':');
            push_decimal(t, p);
        }
        attr(9, k, Val::Str(&self.text), &mut self.span);
    }

    /// Spans in the batch.
    pub(crate) fn len(&self) -> u64 {
        self.count
    }

    /// The `ExportTraceServiceRequest` of the spans so far, under `resource` (a `Resource`
    /// message) and `scope` (an `InstrumentationScope` message); with `grpc`, behind the
    /// 5-byte gRPC message prefix. In two pieces, to be sent one after the other: the message's
    /// beginning, and the spans (not copied again). The batch is empty afterwards.
    pub(crate) fn finish(
        &mut self,
        resource: &[u8],
        scope: &[u8],
        grpc: bool,
    ) -> (Vec<u8>, Vec<u8>) {
        let scope_spans = len_field_len(1, scope.len()) + self.spans.len();
        let resource_spans = len_field_len(1, resource.len()) + len_field_len(2, scope_spans);
        let request = len_field_len(1, resource_spans);
        let mut out = Vec::with_capacity(32 + resource.len() + scope.len());
        if grpc {
            out.push(0); // not compressed
            out.extend_from_slice(&(request as u32).to_be_bytes());
        }
        key(1, LEN, &mut out);
        varint(resource_spans as u64, &mut out);
        bytes_field(1, resource, &mut out);
        key(2, LEN, &mut out);
        varint(scope_spans as u64, &mut out);
        bytes_field(1, scope, &mut out);
        let capacity = self.spans.capacity();
        let spans = std::mem::replace(&mut self.spans, Vec::with_capacity(capacity));
        self.count = 0;
        (out, spans)
    }
}

/// `v` in decimal.
fn push_decimal(out: &mut String, mut v: u16) {
    let mut digits = [0u8; 5];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    out.push_str(std::str::from_utf8(&digits[i..]).expect("ASCII digits"));
}

/// A `Resource` message with these string attributes.
pub(crate) fn resource(attrs: &[(&str, &str)]) -> Vec<u8> {
    let mut b = Vec::new();
    for (k, v) in attrs {
        attr(1, k, Val::Str(v), &mut b);
    }
    b
}

/// An `InstrumentationScope` message.
pub(crate) fn scope(name: &str, version: &str) -> Vec<u8> {
    let mut b = Vec::new();
    bytes_field(1, name.as_bytes(), &mut b);
    bytes_field(2, version.as_bytes(), &mut b);
    b
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    use prost::Message;

    #[test]
    fn varints_match_the_wire_format() {
        for (v, want) in [
            (0u64, &[0u8][..]),
            (1, &[1]),
            (127, &[127]),
            (128, &[0x80, 1]),
            (300, &[0xac, 2]),
            (
                u64::MAX,
                &[0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 1],
            ),
        ] {
            let mut b = Vec::new();
            varint(v, &mut b);
            assert_eq!(b, want, "{v}");
            assert_eq!(varint_len(v), want.len(), "{v}");
        }
    }

    #[test]
    fn a_batch_decodes_as_the_reference_types_read_it() {
        let mut batch = Batch::default();
        let (trace, span, parent) = ([7u8; 16], [8u8; 8], [9u8; 8]);
        for error in [None, Some("QueueTimeout")] {
            let f = SpanFields {
                trace_id: &trace,
                span_id: &span,
                parent_id: Some(&parent),
                parent_is_remote: true,
                name: ("POST", Some("/x")),
                kind: KIND_SERVER,
                start_ns: 1_700_000_000_000_000_000,
                end_ns: 1_700_000_000_000_000_123,
                error,
            };
            batch.begin_span(&f);
            batch.attr("s", Val::Str("ü-value"));
            batch.attr("i", Val::Int(-5));
            batch.attr("big", Val::Int(i64::MAX));
            batch.attr("b", Val::Bool(true));
            let long = "x".repeat(300);
            batch.attr("long", Val::Str(&long));
            batch.attr_addr("addr", [10, 0, 0, 1].into(), Some(80));
            batch.attr_addr("ip", [0, 255, 9, 10].into(), None);
            batch.attr_addr("v6", "::1".parse().unwrap(), Some(65535));
            batch.end_span(&f);
        }
        assert_eq!(batch.len(), 2);
        let resource = resource(&[("service.name", "infergate")]);
        let scope = scope("infergate", "0.1.0");
        let (head, spans) = batch.finish(&resource, &scope, false);
        let body = [head, spans].concat();
        let req = ExportTraceServiceRequest::decode(&body[..]).unwrap();
        let rs = &req.resource_spans[0];
        let res = rs.resource.as_ref().unwrap();
        assert_eq!(res.attributes[0].key, "service.name");
        let ss = &rs.scope_spans[0];
        let sc = ss.scope.as_ref().unwrap();
        assert_eq!((&*sc.name, &*sc.version), ("infergate", "0.1.0"));
        assert_eq!(ss.spans.len(), 2);
        let s = &ss.spans[0];
        assert_eq!(s.trace_id, trace);
        assert_eq!(s.span_id, span);
        assert_eq!(s.parent_span_id, parent);
        assert_eq!(s.name, "POST /x");
        assert_eq!(s.kind, 2);
        assert_eq!(s.end_time_unix_nano - s.start_time_unix_nano, 123);
        assert_eq!(s.flags, 0x301);
        assert!(s.status.is_none());
        let v = |i: usize| {
            s.attributes[i]
                .value
                .as_ref()
                .unwrap()
                .value
                .clone()
                .unwrap()
        };
        assert_eq!(v(0), Value::StringValue("ü-value".into()));
        assert_eq!(v(1), Value::IntValue(-5));
        assert_eq!(v(2), Value::IntValue(i64::MAX));
        assert_eq!(v(3), Value::BoolValue(true));
        assert_eq!(v(4), Value::StringValue("x".repeat(300)));
        assert_eq!(v(5), Value::StringValue("10.0.0.1:80".into()));
        assert_eq!(v(6), Value::StringValue("0.255.9.10".into()));
        assert_eq!(v(7), Value::StringValue("[::1]:65535".into()));
        let status = ss.spans[1].status.as_ref().unwrap();
        assert_eq!((status.code, &*status.message), (2, "QueueTimeout"));
        // gRPC: the same message behind its 5-byte prefix; the batch starts empty again.
        assert_eq!(batch.len(), 0);
        let f = SpanFields {
            trace_id: &trace,
            span_id: &span,
            parent_id: None,
            parent_is_remote: false,
            name: ("queue", None),
            kind: KIND_INTERNAL,
            start_ns: 1,
            end_ns: 2,
            error: None,
        };
        batch.begin_span(&f);
        batch.end_span(&f);
        let framed = batch.finish(&resource, &scope, true);
        let framed = [framed.0, framed.1].concat();
        assert_eq!(framed[0], 0);
        let n = u32::from_be_bytes(framed[1..5].try_into().unwrap()) as usize;
        assert_eq!(n, framed.len() - 5);
        let req = ExportTraceServiceRequest::decode(&framed[5..]).unwrap();
        let s = &req.resource_spans[0].scope_spans[0].spans[0];
        assert!(s.parent_span_id.is_empty());
        assert_eq!((s.kind, s.flags), (1, 0x101));
    }
}
