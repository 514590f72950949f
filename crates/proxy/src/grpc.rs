//! gRPC at the edge: which requests are gRPC calls, their `grpc-timeout`, and the router's own
//! answers to them as gRPC statuses. The calls themselves pass through as HTTP/2 frames: the
//! router needs no protobuf.
//!
//! A router-made answer to a gRPC call is a "Trailers-Only" response (gRPC over HTTP/2): HTTP
//! 200, `content-type: application/grpc`, and `grpc-status` / `grpc-message` in the one HEADERS
//! frame that ends the stream, with the request id in `x-request-id`. gRPC clients read that as
//! the call's status, where a JSON body would be a protocol error to them.

use std::time::Duration;

use http::{HeaderMap, HeaderName, HeaderValue, Response, StatusCode, header};
use percent_encoding::{AsciiSet, CONTROLS, utf8_percent_encode};

use crate::error::ProxyError;
use crate::headers::X_REQUEST_ID;
use crate::response::ProxyBody;

/// The call's deadline, as the client sends it (and the router passes on, shortened).
pub const GRPC_TIMEOUT: HeaderName = HeaderName::from_static("grpc-timeout");
/// The call's status code (trailers, or the headers of a Trailers-Only response).
pub const GRPC_STATUS: HeaderName = HeaderName::from_static("grpc-status");
/// The status message, percent-encoded.
pub const GRPC_MESSAGE: HeaderName = HeaderName::from_static("grpc-message");

/// gRPC status codes the router answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Code {
    /// The call's deadline passed.
    DeadlineExceeded = 4,
    /// No such endpoint or deployment.
    NotFound = 5,
    /// Over a limit (body size, queue length, header size).
    ResourceExhausted = 8,
    /// A malformed request (bad `grpc-timeout`, a header name with `_`, no endpoint named).
    InvalidArgument = 3,
    /// The endpoint has no deployment that speaks HTTP/2.
    Unimplemented = 12,
    /// Try again later: no slot in time, no pod, the pod failed or could not be reached.
    Unavailable = 14,
    /// The endpoint's key or token refused the call.
    Unauthenticated = 16,
}

impl Code {
    fn value(self) -> HeaderValue {
        HeaderValue::from(u16::from(self as u8))
    }
}

/// Whether the request is a gRPC call: `content-type: application/grpc`, or with a subtype or
/// parameters (`application/grpc+proto`, `application/grpc+json`, `application/grpc;...`).
/// gRPC-Web (`application/grpc-web...`) is another protocol (trailers inside the body, HTTP/1.1
/// too) and is treated as plain HTTP.
pub fn is_grpc(headers: &HeaderMap) -> bool {
    headers.get(header::CONTENT_TYPE).is_some_and(|v| {
        let rest = v.as_bytes().strip_prefix(b"application/grpc");
        rest.is_some_and(|r| r.is_empty() || r[0] == b'+' || r[0] == b';')
    })
}

/// The longest `grpc-timeout` value (8 digits of hours) as a duration is about 11,400 years; the
/// router caps deadlines at this (a year is as good as forever for a request).
const MAX_TIMEOUT: Duration = Duration::from_secs(366 * 86_400);

/// Parses a `grpc-timeout` value: 1 to 8 ASCII digits and a unit (`H` hours, `M` minutes, `S`
/// seconds, `m` milliseconds, `u` microseconds, `n` nanoseconds). `None` when malformed.
/// Values beyond a year are read as a year.
pub fn parse_timeout(v: &[u8]) -> Option<Duration> {
    let (&unit, digits) = v.split_last()?;
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |acc, d| acc * 10 + u64::from(d - b'0'));
    let d = match unit {
        b'H' => Duration::from_secs(n.saturating_mul(3600)),
        b'M' => Duration::from_secs(n.saturating_mul(60)),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    };
    Some(d.min(MAX_TIMEOUT))
}

/// A `grpc-timeout` value for `d`: the finest unit whose count fits 8 digits, rounded down
/// (the pod must not wait longer than the router will), so at most one unit of that size short.
pub fn encode_timeout(d: Duration) -> HeaderValue {
    const MAX: u128 = 99_999_999;
    let nanos = d.as_nanos();
    let units: [(u128, u8); 6] = [
        (1, b'n'),
        (1_000, b'u'),
        (1_000_000, b'm'),
        (1_000_000_000, b'S'),
        (60_000_000_000, b'M'),
        (3_600_000_000_000, b'H'),
    ];
    let (n, unit) = units
        .iter()
        .map(|&(per, unit)| (nanos / per, unit))
        .find(|&(n, _)| n <= MAX)
        .unwrap_or((MAX, b'H'));
    let mut buf = itoa_buf(n as u64);
    buf.push(unit);
    HeaderValue::from_bytes(&buf).expect("digits and a letter are a valid header value")
}

fn itoa_buf(mut n: u64) -> Vec<u8> {
    let mut digits = Vec::with_capacity(9);
    loop {
        digits.push(b'0' + (n % 10) as u8);
        n /= 10;
        if n == 0 {
            break;
        }
    }
    digits.reverse();
    digits
}

/// Characters `grpc-message` carries percent-encoded: anything outside printable ASCII, and `%`.
const MESSAGE_ESCAPES: &AsciiSet = &CONTROLS.add(b'%');

fn message_value(msg: &str) -> HeaderValue {
    let encoded: std::borrow::Cow<'_, str> = utf8_percent_encode(msg, MESSAGE_ESCAPES).into();
    HeaderValue::from_str(&encoded).unwrap_or_else(|_| HeaderValue::from_static("error"))
}

/// The router's answer to a gRPC call that failed here (see the module's doc).
pub fn error_response(err: &ProxyError, request_id: &HeaderValue) -> Response<ProxyBody> {
    let mut resp = Response::new(ProxyBody::Full(None));
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/grpc"),
    );
    h.insert(GRPC_STATUS, err.grpc_code().value());
    h.insert(GRPC_MESSAGE, message_value(&err.to_string()));
    h.insert(X_REQUEST_ID, request_id.clone());
    if let ProxyError::Unauthorized { reason } = err {
        h.insert(
            header::WWW_AUTHENTICATE,
            HeaderValue::from_static(reason.www_authenticate()),
        );
    }
    *resp.status_mut() = StatusCode::OK;
    resp
}

/// The trailers that end a call whose deadline passed while the pod's answer streamed.
pub fn deadline_trailers(ms: u64) -> HeaderMap {
    let mut t = HeaderMap::with_capacity(2);
    t.insert(GRPC_STATUS, Code::DeadlineExceeded.value());
    t.insert(
        GRPC_MESSAGE,
        message_value(&format!(
            "the call's deadline ({ms} ms, grpc-timeout or maxStreamDurationMs) passed"
        )),
    );
    t
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn timeouts_parse_by_unit() {
        let p = |s: &str| parse_timeout(s.as_bytes());
        assert_eq!(p("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(p("2M"), Some(Duration::from_secs(120)));
        assert_eq!(p("30S"), Some(Duration::from_secs(30)));
        assert_eq!(p("250m"), Some(Duration::from_millis(250)));
        assert_eq!(p("7u"), Some(Duration::from_micros(7)));
        assert_eq!(p("99999999n"), Some(Duration::from_nanos(99_999_999)));
        assert_eq!(p("00000005S"), Some(Duration::from_secs(5)));
        assert_eq!(p("99999999H"), Some(MAX_TIMEOUT));
        for bad in [
            "",
            "S",
            "5",
            "123456789S",
            "5s",
            "-5S",
            " 5S",
            "5 S",
            "1.5S",
            "5SS",
            "五S",
        ] {
            assert_eq!(p(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn timeouts_encode_in_the_finest_unit_that_fits() {
        let e = |d: Duration| encode_timeout(d).to_str().unwrap().to_string();
        assert_eq!(e(Duration::from_nanos(5)), "5n");
        assert_eq!(e(Duration::from_millis(250)), "250000u");
        assert_eq!(e(Duration::from_secs(5)), "5000000u");
        assert_eq!(e(Duration::from_secs(3600)), "3600000m");
        assert_eq!(e(Duration::from_secs(200_000)), "200000S");
        assert_eq!(e(Duration::ZERO), "0n");
        assert_eq!(e(Duration::from_secs(u64::MAX)), "99999999H");
    }

    #[test]
    fn grpc_content_types() {
        let h = |ct: &'static str| {
            let mut m = HeaderMap::new();
            m.insert(header::CONTENT_TYPE, HeaderValue::from_static(ct));
            m
        };
        assert!(is_grpc(&h("application/grpc")));
        assert!(is_grpc(&h("application/grpc+proto")));
        assert!(is_grpc(&h("application/grpc;charset=utf-8")));
        assert!(!is_grpc(&h("application/grpc-web+proto")));
        assert!(!is_grpc(&h("application/grpcx")));
        assert!(!is_grpc(&h("application/json")));
        assert!(!is_grpc(&HeaderMap::new()));
    }

    #[test]
    fn messages_are_percent_encoded() {
        assert_eq!(message_value("queue full"), "queue full");
        assert_eq!(message_value("100% é\n"), "100%25 %C3%A9%0A");
    }

    proptest! {
        /// Any byte string: no panic; a value that parses has at most 8 digits and a unit.
        #[test]
        fn parse_never_panics(v in proptest::collection::vec(any::<u8>(), 0..12)) {
            if parse_timeout(&v).is_some() {
                prop_assert!(v.len() >= 2 && v.len() <= 9);
            }
        }

        /// What the router sends parses back to at most the duration, short by less than one
        /// unit of the encoding: less than 1/100,000 of it (a unit is at most 1,000 times the
        /// finer one, which did not fit 8 digits).
        #[test]
        fn encode_then_parse_rounds_down_by_less_than_a_unit(nanos in 0u64..(366 * 86_400 * 1_000_000_000)) {
            let d = Duration::from_nanos(nanos);
            let back = parse_timeout(encode_timeout(d).as_bytes()).unwrap();
            prop_assert!(back <= d);
            prop_assert!(d - back < d / 99_999 + Duration::from_nanos(1));
        }

        /// Every well-formed value parses to its count times its unit.
        #[test]
        fn well_formed_values_parse(n in 0u64..100_000_000, unit in proptest::sample::select(vec![b'H', b'M', b'S', b'm', b'u', b'n'])) {
            let mut v = n.to_string().into_bytes();
            v.push(unit);
            let per = match unit {
                b'H' => Duration::from_secs(3600),
                b'M' => Duration::from_secs(60),
                b'S' => Duration::from_secs(1),
                b'm' => Duration::from_millis(1),
                b'u' => Duration::from_micros(1),
                _ => Duration::from_nanos(1),
            };
            let want = per.checked_mul(n as u32).map_or(MAX_TIMEOUT, |d| d.min(MAX_TIMEOUT));
            prop_assert_eq!(parse_timeout(&v), Some(want));
        }
    }
}
