//! Property tests of the request head's header handling (fuzzing; more cases:
//! `PROPTEST_CASES=100000 cargo test -p infergate-proxy --lib fuzz`).

use std::collections::HashSet;
use std::net::IpAddr;

use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

use super::*;

/// Header names clients send, the ones the rules are about, and random ones.
fn names() -> impl Strategy<Value = String> {
    prop_oneof![
        prop::sample::select(vec![
            "connection",
            "keep-alive",
            "proxy-connection",
            "proxy-authorization",
            "proxy-authenticate",
            "te",
            "trailer",
            "transfer-encoding",
            "upgrade",
            "authorization",
            "host",
            "forwarded",
            "x-real-ip",
            "x-forwarded-for",
            "x-forwarded-host",
            "x-forwarded-proto",
            "x-request-id",
            "x-ms-client-request-id",
            "x_api_key",
            "x-api-key",
            "content-type",
            "azureml-model-deployment",
        ])
        .prop_map(String::from),
        "[a-z][a-z0-9_-]{0,15}",
    ]
}

/// Values, including `Connection` lists naming other headers and address lists.
fn values() -> impl Strategy<Value = String> {
    prop_oneof![
        "[ -~]{0,40}",
        "(keep-alive|x-[a-z]{1,5}|authorization|x-forwarded-for|upgrade)(, ?(keep-alive|x-[a-z]{1,5}|te|x_api_key)){0,3}",
        "([0-9]{1,3}\\.){3}[0-9]{1,3}(, ?([0-9]{1,3}\\.){3}[0-9]{1,3}){0,4}",
        "Bearer [A-Za-z0-9._-]{1,30}",
    ]
}

fn head() -> impl Strategy<Value = HeaderMap> {
    proptest::collection::vec((names(), values()), 0..24).prop_map(|pairs| {
        let mut h = HeaderMap::new();
        for (n, v) in pairs {
            if let (Ok(n), Ok(v)) = (
                HeaderName::from_bytes(n.as_bytes()),
                HeaderValue::from_str(&v),
            ) {
                h.append(n, v);
            }
        }
        h
    })
}

fn ips() -> impl Strategy<Value = IpAddr> {
    prop_oneof![
        any::<[u8; 4]>().prop_map(IpAddr::from),
        any::<[u8; 16]>().prop_map(IpAddr::from),
    ]
}

/// What the client's `Connection` headers name (those must not reach the pod).
fn connection_named(h: &HeaderMap) -> HashSet<String> {
    h.get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|n| n.trim().to_ascii_lowercase())
        .collect()
}

/// Headers the router itself writes (they may be named in `Connection` and still be sent).
const SET_BY_ROUTER: [&str; 4] = [
    "x-request-id",
    "x-forwarded-for",
    "x-forwarded-proto",
    "x-forwarded-host",
];

proptest! {
    // 256 cases by default (as `./test.sh` runs them); PROPTEST_CASES sets more.
    #[test]
    fn rewritten_headers_hold_no_hop_by_hop_and_no_credentials_unless_opted_in(
        h in head(),
        peer in ips(),
        hops in 0u32..4,
        pass in any::<bool>(),
        authority in proptest::option::of("[a-z.]{1,12}(:[0-9]{1,5})?"),
    ) {
        let before = h.clone();
        let mut h = h;
        let id = new_request_id();
        let fwd = Forwarding { xff_trusted_hops: hops, pass_authorization: pass };
        rewrite_request(&mut h, &id, peer, "https", authority.as_deref(), fwd);

        for n in HOP_BY_HOP.iter() {
            prop_assert!(!h.contains_key(n), "{n} forwarded");
        }
        for n in connection_named(&before) {
            if !SET_BY_ROUTER.contains(&n.as_str()) {
                prop_assert!(!h.contains_key(n.as_str()), "{n} (named in Connection) forwarded");
            }
        }
        for n in ["host", "forwarded", "x-real-ip"] {
            prop_assert!(!h.contains_key(n), "{n} forwarded");
        }
        let auth_before: Vec<_> = before.get_all(header::AUTHORIZATION).iter().collect();
        let auth_after: Vec<_> = h.get_all(header::AUTHORIZATION).iter().collect();
        let auth_named = connection_named(&before).contains("authorization");
        if pass && !auth_named {
            prop_assert_eq!(auth_after, auth_before);
        } else {
            prop_assert!(auth_after.is_empty(), "authorization forwarded");
        }
        prop_assert_eq!(h.get_all(X_REQUEST_ID).iter().collect::<Vec<_>>(), vec![&id]);
        // X-Forwarded-For: one line, ends with the peer, at most `hops` entries before it.
        let xff: Vec<_> = h.get_all(X_FORWARDED_FOR).iter().collect();
        prop_assert_eq!(xff.len(), 1);
        let xff = xff[0].to_str().unwrap();
        let entries: Vec<&str> = xff.split(", ").collect();
        prop_assert_eq!(*entries.last().unwrap(), peer.to_string());
        prop_assert!(entries.len() <= hops as usize + 1, "{xff}");
        if let Some(v) = h.get(X_MS_CLIENT_REQUEST_ID) {
            prop_assert!(valid_client_request_id(v));
        }
    }

    #[test]
    fn underscore_names_are_found_exactly_and_dropped_entirely(h in head()) {
        let has = h.keys().any(|k| k.as_str().contains('_'));
        prop_assert_eq!(underscore_header(&h).is_some(), has);
        let mut d = h.clone();
        drop_underscore_headers(&mut d);
        prop_assert!(underscore_header(&d).is_none());
        for (k, v) in h.iter().filter(|(k, _)| !k.as_str().contains('_')) {
            prop_assert!(d.get_all(k).iter().any(|x| x == v));
        }
    }

    #[test]
    fn response_headers_lose_every_hop_by_hop_header(h in head()) {
        let named = connection_named(&h);
        let mut h = h;
        strip_hop_by_hop(&mut h);
        for n in HOP_BY_HOP.iter() {
            prop_assert!(!h.contains_key(n));
        }
        for n in named {
            prop_assert!(!h.contains_key(n.as_str()), "{n}");
        }
    }
}
