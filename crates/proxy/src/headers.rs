//! Header rules: hop-by-hop removal, forwarding headers, request ids.

use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The router-owned request id, sent upstream and back.
pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
/// The client's own request id, passed through when well formed.
pub const X_MS_CLIENT_REQUEST_ID: HeaderName = HeaderName::from_static("x-ms-client-request-id");
/// The deployment pin (request) and the deployment that served (response); routing owns it.
pub use infergate_routing::AZUREML_MODEL_DEPLOYMENT;
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FORWARDED_HOST: HeaderName = HeaderName::from_static("x-forwarded-host");
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");

/// Hop-by-hop headers (RFC 9110 section 7.6.1 and the usual legacy ones): never forwarded.
const HOP_BY_HOP: [HeaderName; 9] = [
    header::CONNECTION,
    KEEP_ALIVE,
    PROXY_CONNECTION,
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, including any named in `Connection`.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // Most messages carry none: one pass over the names present costs less than nine lookups.
    if !h.keys().any(|k| HOP_BY_HOP.contains(k)) {
        return;
    }
    if h.contains_key(header::CONNECTION) {
        let named: Vec<HeaderName> = h
            .get_all(header::CONNECTION)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
}

/// Whether a client request id may pass: 1 to 40 of `[A-Za-z0-9_-]`.
pub fn valid_client_request_id(v: &HeaderValue) -> bool {
    let b = v.as_bytes();
    !b.is_empty()
        && b.len() <= 40
        && b.iter()
            .all(|c| c.is_ascii_alphanumeric() || *c == b'_' || *c == b'-')
}

/// A new request id (UUID v4, lowercase hyphenated).
pub fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    let s = uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_str(s).expect("a UUID is a valid header value")
}

/// An address as a header value, formatted on the stack (one allocation, not two).
fn ip_header_value(ip: IpAddr) -> Option<HeaderValue> {
    use std::io::Write;
    let mut buf = [0u8; 48]; // the longest IPv6 text form is 45 bytes
    let mut w = &mut buf[..];
    write!(w, "{ip}").ok()?;
    let n = 48 - w.len();
    HeaderValue::from_bytes(&buf[..n]).ok()
}

/// Rewrites the client's request headers for the pod.
///
/// Removes hop-by-hop headers and `Host` (the client sets the pod's), sets the request id,
/// drops a malformed `x-ms-client-request-id`, and sets `x-forwarded-for` (appended),
/// `x-forwarded-proto` and `x-forwarded-host`.
pub fn rewrite_request(
    h: &mut HeaderMap,
    request_id: &HeaderValue,
    client_ip: IpAddr,
    proto: &'static str,
    authority: Option<&str>,
) {
    strip_hop_by_hop(h);
    let host = h.remove(header::HOST);
    h.insert(X_REQUEST_ID, request_id.clone());
    if h.get(X_MS_CLIENT_REQUEST_ID)
        .is_some_and(|v| !valid_client_request_id(v))
    {
        h.remove(X_MS_CLIENT_REQUEST_ID);
    }
    let xff = match h.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.trim().is_empty() => {
            HeaderValue::try_from(format!("{prev}, {client_ip}")).ok()
        }
        _ => ip_header_value(client_ip),
    };
    if let Some(v) = xff {
        h.insert(X_FORWARDED_FOR, v);
    }
    h.insert(X_FORWARDED_PROTO, HeaderValue::from_static(proto));
    let fwd_host = host.or_else(|| authority.and_then(|a| HeaderValue::from_str(a).ok()));
    match fwd_host {
        Some(v) => {
            h.insert(X_FORWARDED_HOST, v);
        }
        None => {
            h.remove(X_FORWARDED_HOST);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_named_headers_go() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, x-secret-hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
        h.insert("x-kept", HeaderValue::from_static("yes"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1, "{h:?}");
        assert_eq!(h["x-kept"], "yes");
    }

    #[test]
    fn client_request_id_rules() {
        let ok = |s: &str| valid_client_request_id(&HeaderValue::from_str(s).unwrap());
        assert!(ok("abc-DEF_123"));
        assert!(ok(&"a".repeat(40)));
        assert!(!ok(&"a".repeat(41)));
        assert!(!ok("has space"));
        assert!(!ok("semi;colon"));
        assert!(!ok(""));
    }

    #[test]
    fn rewrite_sets_forwarding_headers() {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("api.example.com"));
        h.insert(X_FORWARDED_FOR, HeaderValue::from_static("10.1.1.1"));
        h.insert(X_REQUEST_ID, HeaderValue::from_static("client-chosen"));
        h.insert(X_MS_CLIENT_REQUEST_ID, HeaderValue::from_static("bad id!"));
        let id = new_request_id();
        rewrite_request(&mut h, &id, "192.0.2.7".parse().unwrap(), "https", None);
        assert_eq!(h[X_FORWARDED_FOR], "10.1.1.1, 192.0.2.7");
        assert_eq!(h[X_FORWARDED_PROTO], "https");
        assert_eq!(h[X_FORWARDED_HOST], "api.example.com");
        assert_eq!(h[X_REQUEST_ID], id);
        assert!(h.get(header::HOST).is_none());
        assert!(h.get(X_MS_CLIENT_REQUEST_ID).is_none());
        assert_eq!(id.len(), 36);

        let mut h = HeaderMap::new();
        let v6: IpAddr = "ffff:ffff:ffff:ffff:ffff:ffff:255.255.255.255"
            .parse()
            .unwrap();
        rewrite_request(&mut h, &id, v6, "http", Some("a.example:8443"));
        assert_eq!(h[X_FORWARDED_FOR], v6.to_string().as_str());
        assert_eq!(h[X_FORWARDED_HOST], "a.example:8443");
        assert_ne!(id, new_request_id());
    }
}
