//! Header rules: hop-by-hop removal, forwarding headers, request ids, header names with `_`.

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
const X_REAL_IP: HeaderName = HeaderName::from_static("x-real-ip");
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

/// The first header name that holds `_`, if any (`headersWithUnderscores`).
pub fn underscore_header(h: &HeaderMap) -> Option<&HeaderName> {
    h.keys().find(|k| k.as_str().contains('_'))
}

/// Removes every header whose name holds `_` (`headersWithUnderscores: drop`).
pub fn drop_underscore_headers(h: &mut HeaderMap) {
    let names: Vec<HeaderName> = h
        .keys()
        .filter(|k| k.as_str().contains('_'))
        .cloned()
        .collect();
    for n in names {
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

/// A new request id (UUID v4, lowercase hyphenated). One allocation, shared by every copy (the
/// request's header, the response's, the log): a value made from a `Vec` would allocate again
/// at its first clone.
pub fn new_request_id() -> HeaderValue {
    let mut buf = [0u8; uuid::fmt::Hyphenated::LENGTH];
    uuid::Uuid::new_v4().hyphenated().encode_lower(&mut buf);
    HeaderValue::from_maybe_shared(bytes::Bytes::from_owner(buf))
        .expect("a UUID is a valid header value")
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

/// How a request's forwarding headers are written: the router's `xffTrustedHops` and the
/// endpoint's `passAuthorization`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Forwarding {
    /// Proxies in front of the router whose `X-Forwarded-For` entries are kept (the last this
    /// many of the client's); 0: the header the pod sees is the peer address alone.
    pub xff_trusted_hops: u32,
    /// Whether the client's `Authorization` reaches the pod.
    pub pass_authorization: bool,
}

/// The `X-Forwarded-For` the pod gets: the last `hops` entries of the client's header (those
/// the trusted proxies in front appended), then the peer address. With `hops` 0 the client's
/// header is ignored, so a client cannot make the pod believe it comes from elsewhere.
fn forwarded_for(h: &HeaderMap, hops: u32, peer: IpAddr) -> Option<HeaderValue> {
    if hops == 0 || !h.contains_key(X_FORWARDED_FOR) {
        return ip_header_value(peer);
    }
    let entries: Vec<&str> = h
        .get_all(X_FORWARDED_FOR)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .collect();
    let kept = &entries[entries.len().saturating_sub(hops as usize)..];
    if kept.is_empty() {
        return ip_header_value(peer);
    }
    HeaderValue::try_from(format!("{}, {peer}", kept.join(", "))).ok()
}

/// Rewrites the client's request headers for the pod.
///
/// Removes hop-by-hop headers, `Host` (the client sets the pod's), the client's `Forwarded`
/// and `X-Real-IP` (never trusted), and `Authorization` unless `fwd.pass_authorization`; sets
/// the request id, drops a malformed `x-ms-client-request-id`, and sets `x-forwarded-for` (see
/// [`Forwarding::xff_trusted_hops`]), `x-forwarded-proto` and `x-forwarded-host`.
pub fn rewrite_request(
    h: &mut HeaderMap,
    request_id: &HeaderValue,
    client_ip: IpAddr,
    proto: &'static str,
    authority: Option<&str>,
    fwd: Forwarding,
) {
    strip_hop_by_hop(h);
    let host = h.remove(header::HOST);
    h.remove(header::FORWARDED);
    h.remove(X_REAL_IP);
    if !fwd.pass_authorization {
        h.remove(header::AUTHORIZATION);
    }
    h.insert(X_REQUEST_ID, request_id.clone());
    if h.get(X_MS_CLIENT_REQUEST_ID)
        .is_some_and(|v| !valid_client_request_id(v))
    {
        h.remove(X_MS_CLIENT_REQUEST_ID);
    }
    match forwarded_for(h, fwd.xff_trusted_hops, client_ip) {
        Some(v) => {
            h.insert(X_FORWARDED_FOR, v);
        }
        None => {
            h.remove(X_FORWARDED_FOR);
        }
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
mod fuzz;

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
        let one_hop = Forwarding {
            xff_trusted_hops: 1,
            pass_authorization: false,
        };
        let ip = "192.0.2.7".parse().unwrap();
        rewrite_request(&mut h, &id, ip, "https", None, one_hop);
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
        rewrite_request(
            &mut h,
            &id,
            v6,
            "http",
            Some("a.example:8443"),
            Forwarding::default(),
        );
        assert_eq!(h[X_FORWARDED_FOR], v6.to_string().as_str());
        assert_eq!(h[X_FORWARDED_HOST], "a.example:8443");
        assert_ne!(id, new_request_id());
    }

    fn xff(values: &[&str], hops: u32) -> String {
        let mut h = HeaderMap::new();
        for v in values {
            h.append(X_FORWARDED_FOR, HeaderValue::from_str(v).unwrap());
        }
        let fwd = Forwarding {
            xff_trusted_hops: hops,
            pass_authorization: false,
        };
        rewrite_request(
            &mut h,
            &new_request_id(),
            [198, 51, 100, 1].into(),
            "https",
            None,
            fwd,
        );
        h.get_all(X_FORWARDED_FOR)
            .iter()
            .map(|v| v.to_str().unwrap())
            .collect::<Vec<_>>()
            .join(" | ")
    }

    #[test]
    fn x_forwarded_for_keeps_only_the_trusted_hops() {
        // 0 (the default): the peer alone, whatever the client wrote.
        assert_eq!(xff(&["1.2.3.4"], 0), "198.51.100.1");
        assert_eq!(xff(&[], 0), "198.51.100.1");
        // 1: the entry the proxy in front appended (the last one), then the peer.
        assert_eq!(
            xff(&["6.6.6.6, 203.0.113.5"], 1),
            "203.0.113.5, 198.51.100.1"
        );
        // Several header lines count as one list.
        assert_eq!(
            xff(&["6.6.6.6", "203.0.113.5,203.0.113.6"], 2),
            "203.0.113.5, 203.0.113.6, 198.51.100.1"
        );
        // Fewer entries than hops: all kept; none: the peer.
        assert_eq!(xff(&["203.0.113.5"], 3), "203.0.113.5, 198.51.100.1");
        assert_eq!(xff(&[" , "], 2), "198.51.100.1");
        assert_eq!(xff(&[], 2), "198.51.100.1");
    }

    #[test]
    fn forwarded_real_ip_and_authorization_do_not_reach_the_pod() {
        let mut h = HeaderMap::new();
        h.insert(header::FORWARDED, HeaderValue::from_static("for=6.6.6.6"));
        h.insert(X_REAL_IP, HeaderValue::from_static("6.6.6.6"));
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer k"));
        let ip = [192, 0, 2, 1].into();
        let mut kept = h.clone();
        rewrite_request(
            &mut h,
            &new_request_id(),
            ip,
            "https",
            None,
            Forwarding::default(),
        );
        for gone in [header::FORWARDED, X_REAL_IP, header::AUTHORIZATION] {
            assert!(!h.contains_key(&gone), "{gone}");
        }
        let pass = Forwarding {
            xff_trusted_hops: 0,
            pass_authorization: true,
        };
        rewrite_request(&mut kept, &new_request_id(), ip, "https", None, pass);
        assert_eq!(kept[header::AUTHORIZATION], "Bearer k");
        assert!(!kept.contains_key(header::FORWARDED));
    }

    #[test]
    fn underscore_headers_are_found_and_dropped() {
        let mut h = HeaderMap::new();
        h.insert("x-api-key", HeaderValue::from_static("a"));
        assert!(underscore_header(&h).is_none());
        h.insert("x_api_key", HeaderValue::from_static("b"));
        h.insert("other_one", HeaderValue::from_static("c"));
        assert!(underscore_header(&h).unwrap().as_str().contains('_'));
        drop_underscore_headers(&mut h);
        assert_eq!(h.len(), 1);
        assert_eq!(h["x-api-key"], "a");
    }
}
