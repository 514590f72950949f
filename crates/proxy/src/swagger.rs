//! The swagger document, fetched through the router, names the router as its server: tools that
//! read it (Swagger UI, openapi-generator, schemathesis) then call the scoring URL without being
//! told a base URL. A pod documents itself (`/score` on its own host); the router rewrites the
//! document's server to `<scheme>://<host>/api/v1/{endpoint|service}/<name>`, taken from the
//! request (the listener's scheme, or `X-Forwarded-Proto` behind trusted proxies; the `Host` or
//! `:authority`; the URL shape the client used):
//!
//! - OpenAPI 3: `servers` becomes `[{"url": "<that>"}]`;
//! - Swagger 2.0: `host`, `basePath` and `schemes` are set.
//!
//! A deployment whose `scoringPath` is not `/score` has that path renamed `/score` under `paths`
//! (the router's URL for it). Everything else is kept as the pod wrote it: the top-level values
//! are copied byte for byte (only the whitespace between them may change), and `Content-Length`
//! is set to the new size. A document that is not JSON, not an OpenAPI/Swagger object, compressed,
//! or not a 200 passes unchanged; one over [`MAX_DOCUMENT_BYTES`] is refused (502).

use std::fmt;

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Response, StatusCode, Uri, header};
use http_body_util::BodyExt;
use serde::de::{Deserializer, MapAccess, Visitor};
use serde_json::value::RawValue;

use crate::error::ProxyError;
use crate::response::{ProxyBody, RequestCtx, rescue, respond, respond_full};
use crate::upstream::UpstreamBody;

/// The largest swagger document the router reads to rewrite.
pub const MAX_DOCUMENT_BYTES: usize = 8 << 20;

const X_FORWARDED_PROTO: &str = "x-forwarded-proto";

/// Where the router serves the endpoint, as the client reached it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Base {
    /// `https` or `http`.
    scheme: &'static str,
    /// The `Host` (or `:authority`) the client used.
    host: String,
    /// `/api/v1/endpoint/<name>` or `/api/v1/service/<name>`, as the client wrote it.
    prefix: String,
    /// The deployment's scoring path on the pod.
    scoring_path: Box<str>,
    /// The deployment's `requestTimeoutMs` (the document is read within it).
    timeout_ms: u64,
}

impl Base {
    /// The base of a swagger request: from its headers, its URI (path and authority), the
    /// listener's scheme, and whether proxies in front are trusted (`xffTrustedHops` > 0: their
    /// `X-Forwarded-Proto` names the scheme the client used). None when the request names no
    /// usable host.
    pub(crate) fn of(
        headers: &HeaderMap,
        uri: &Uri,
        (listener_scheme, trust_forwarded): (&'static str, bool),
        (scoring_path, timeout_ms): (&str, u64),
    ) -> Option<Base> {
        let host = match headers.get(header::HOST) {
            Some(h) => h.to_str().ok()?,
            None => uri.authority()?.as_str(),
        };
        // A plain authority (no user info), so that the document names a real URL.
        let authority = http::uri::Authority::try_from(host).ok()?;
        if authority.as_str().contains('@') || authority.host().is_empty() {
            return None;
        }
        let mut scheme = listener_scheme;
        if trust_forwarded
            && let Some(p) = headers.get(X_FORWARDED_PROTO).and_then(|v| v.to_str().ok())
        {
            // The first entry: the scheme of the hop nearest the client.
            match p.split(',').next().map(str::trim) {
                Some(s) if s.eq_ignore_ascii_case("https") => scheme = "https",
                Some(s) if s.eq_ignore_ascii_case("http") => scheme = "http",
                _ => {}
            }
        }
        let prefix = uri.path().strip_suffix("/swagger.json")?;
        Some(Base {
            scheme,
            host: authority.as_str().to_string(),
            prefix: prefix.to_string(),
            scoring_path: scoring_path.into(),
            timeout_ms,
        })
    }

    fn url(&self) -> String {
        format!("{}://{}{}", self.scheme, self.host, self.prefix)
    }
}

/// The client's answer to a swagger request: the pod's document, rewritten (see the module's doc).
pub(crate) async fn respond_rewritten(
    resp: Response<UpstreamBody>,
    ctx: RequestCtx,
    base: &Base,
    head_only: bool,
) -> Response<ProxyBody> {
    if !rewritable(resp.status(), resp.headers()) {
        return respond(resp, ctx);
    }
    if head_only {
        // The length announced is the pod's document's, not the rewritten one's.
        let (mut parts, body) = resp.into_parts();
        parts.headers.remove(header::CONTENT_LENGTH);
        return respond(Response::from_parts(parts, body), ctx);
    }
    let announced = resp
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    if announced.is_some_and(|n| n > MAX_DOCUMENT_BYTES as u64) {
        return rescue(&ProxyError::UpstreamFailed(TOO_LARGE), ctx);
    }
    let (mut parts, body) = resp.into_parts();
    let read = http_body_util::Limited::new(body, MAX_DOCUMENT_BYTES).collect();
    let read = match ctx.deadline {
        Some(d) => match tokio::time::timeout_at(d, read).await {
            Ok(r) => r,
            Err(_) => {
                let ms = base.timeout_ms;
                return rescue(&ProxyError::UpstreamTimeout { ms }, ctx);
            }
        },
        None => read.await,
    };
    let doc = match read {
        Ok(b) => b.to_bytes(),
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return rescue(&ProxyError::UpstreamFailed(TOO_LARGE), ctx);
        }
        Err(_) => {
            return rescue(
                &ProxyError::UpstreamFailed("the swagger document could not be read"),
                ctx,
            );
        }
    };
    let doc = match rewrite(&doc, base) {
        Some(new) => Bytes::from(new),
        None => doc,
    };
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(doc.len()));
    respond_full(parts, doc, ctx)
}

const TOO_LARGE: &str = "the swagger document is larger than 8 MiB";

/// Whether an answer may be a document to rewrite: a 200, uncompressed, JSON (or untyped).
fn rewritable(status: StatusCode, h: &HeaderMap) -> bool {
    let identity = h
        .get(header::CONTENT_ENCODING)
        .is_none_or(|v| v.as_bytes().eq_ignore_ascii_case(b"identity"));
    let json = h.get(header::CONTENT_TYPE).is_none_or(|v| {
        v.to_str()
            .is_ok_and(|t| t.to_ascii_lowercase().contains("json"))
    });
    status == StatusCode::OK && identity && json
}

/// The document with the router as its server, or None when it is not an OpenAPI 3 or Swagger
/// 2.0 JSON object (then it passes unchanged).
pub(crate) fn rewrite(doc: &[u8], base: &Base) -> Option<Vec<u8>> {
    let mut top = Object::parse(doc)?;
    let str_of = |o: &Object, k: &str| -> Option<String> {
        serde_json::from_str::<String>(o.get(k)?.get()).ok()
    };
    let url = base.url();
    if str_of(&top, "openapi").is_some_and(|v| v.starts_with('3')) {
        let servers = serde_json::json!([{"url": url}]);
        top.set("servers", &servers, &["info", "openapi"]);
    } else if str_of(&top, "swagger").is_some_and(|v| v.starts_with('2')) {
        top.set("host", &serde_json::json!(base.host), &["info", "swagger"]);
        top.set("basePath", &serde_json::json!(base.prefix), &["host"]);
        top.set("schemes", &serde_json::json!([base.scheme]), &["basePath"]);
    } else {
        return None;
    }
    if &*base.scoring_path != "/score"
        && let Some(paths) = top.get("paths")
        && let Some(mut paths) = Object::parse(paths.get().as_bytes())
        && paths.get("/score").is_none()
        && paths.rename(&base.scoring_path, "/score")
    {
        let raw = RawValue::from_string(paths.to_json()).ok()?;
        top.set_raw("paths", raw, &[]);
    }
    Some(top.to_json().into_bytes())
}

// === impl Object ===

/// A JSON object as its members in document order, each value kept as its original text.
#[derive(Debug)]
struct Object(Vec<(String, Box<RawValue>)>);

impl Object {
    fn parse(json: &[u8]) -> Option<Object> {
        let mut de = serde_json::Deserializer::from_slice(json);
        let o = (&mut de).deserialize_map(ObjectVisitor).ok()?;
        de.end().ok()?;
        Some(o)
    }

    fn get(&self, key: &str) -> Option<&RawValue> {
        self.0.iter().find(|(k, _)| k == key).map(|(_, v)| &**v)
    }

    /// Sets `key` to `value`: in place when present, else after the first of `after` present,
    /// else at the end.
    fn set(&mut self, key: &str, value: &serde_json::Value, after: &[&str]) {
        let raw = serde_json::value::to_raw_value(value).expect("a JSON value serializes");
        self.set_raw(key, raw, after);
    }

    fn set_raw(&mut self, key: &str, raw: Box<RawValue>, after: &[&str]) {
        if let Some(slot) = self.0.iter_mut().find(|(k, _)| k == key) {
            slot.1 = raw;
            return;
        }
        let at = after
            .iter()
            .find_map(|a| self.0.iter().position(|(k, _)| k == a))
            .map_or(self.0.len(), |i| i + 1);
        self.0.insert(at, (key.to_string(), raw));
    }

    /// Renames the member `from` to `to`, in place; false when there is no `from`.
    fn rename(&mut self, from: &str, to: &str) -> bool {
        match self.0.iter_mut().find(|(k, _)| k == from) {
            Some(m) => {
                m.0 = to.to_string();
                true
            }
            None => false,
        }
    }

    fn to_json(&self) -> String {
        let len: usize = self
            .0
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum();
        let mut out = String::with_capacity(len + 2);
        out.push('{');
        for (i, (k, v)) in self.0.iter().enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(&serde_json::to_string(k).expect("a string serializes"));
            out.push(':');
            out.push_str(v.get());
        }
        out.push('}');
        out
    }
}

struct ObjectVisitor;

impl<'de> Visitor<'de> for ObjectVisitor {
    type Value = Object;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Object, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
            members.push((k, v));
        }
        Ok(Object(members))
    }
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;

    fn base(scheme: &'static str, prefix: &str, scoring_path: &str) -> Base {
        Base {
            scheme,
            host: "infer.example.com:8443".into(),
            prefix: prefix.into(),
            scoring_path: scoring_path.into(),
            timeout_ms: 5_000,
        }
    }

    fn parse(b: &[u8]) -> Value {
        serde_json::from_slice(b).unwrap()
    }

    #[test]
    fn openapi_3_gets_the_router_as_its_only_server_and_keeps_the_rest() {
        let doc = br#"{"openapi": "3.0.1", "info": {"title": "m", "version": "1"},
            "servers": [{"url": "http://10.0.0.12:5001/"}],
            "paths": {"/score": {"post": {"responses": {"200": {"description": "ok"}}}}},
            "x-order": [3, 1, 2], "components": {"schemas": {"Z": {}, "A": {}}}}"#;
        let b = base("https", "/api/v1/endpoint/demo", "/score");
        let out = rewrite(doc, &b).unwrap();
        let (old, new) = (parse(doc), parse(&out));
        assert_eq!(
            new["servers"],
            json!([{"url": "https://infer.example.com:8443/api/v1/endpoint/demo"}])
        );
        for k in ["openapi", "info", "paths", "x-order", "components"] {
            assert_eq!(old[k], new[k], "{k}");
        }
        // Members keep their order, values their text (here: the schemas' order Z, A).
        let text = String::from_utf8(out).unwrap();
        let pos = |s: &str| text.find(s).unwrap();
        assert!(pos("\"openapi\"") < pos("\"info\"") && pos("\"info\"") < pos("\"servers\""));
        assert!(pos("\"paths\"") < pos("\"x-order\"") && pos("\"Z\"") < pos("\"A\""));
    }

    #[test]
    fn openapi_3_without_servers_gets_them_after_info() {
        let doc = br#"{"openapi":"3.1.0","info":{"title":"m"},"paths":{}}"#;
        let out = rewrite(doc, &base("http", "/api/v1/service/demo", "/score")).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"openapi":"3.1.0","info":{"title":"m"},"servers":[{"url":"http://infer.example.com:8443/api/v1/service/demo"}],"paths":{}}"#
        );
    }

    #[test]
    fn swagger_2_gets_host_base_path_and_schemes() {
        let doc = br#"{"swagger": "2.0", "info": {"title": "m"}, "host": "10.0.0.12:5001", "basePath": "/", "schemes": ["http"], "paths": {"/score": {}}}"#;
        let out = rewrite(doc, &base("https", "/api/v1/endpoint/demo", "/score")).unwrap();
        let new = parse(&out);
        assert_eq!(new["host"], "infer.example.com:8443");
        assert_eq!(new["basePath"], "/api/v1/endpoint/demo");
        assert_eq!(new["schemes"], json!(["https"]));
        assert_eq!(new["paths"], json!({"/score": {}}));
        assert!(new.get("servers").is_none());

        let doc = br#"{"swagger":"2.0","info":{},"paths":{}}"#;
        let out = rewrite(doc, &base("http", "/api/v1/endpoint/demo", "/score")).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            r#"{"swagger":"2.0","info":{},"host":"infer.example.com:8443","basePath":"/api/v1/endpoint/demo","schemes":["http"],"paths":{}}"#
        );
    }

    #[test]
    fn a_scoring_path_other_than_score_is_renamed_to_the_routers_score() {
        let doc = br#"{"openapi":"3.0.0","paths":{"/":{"get":{}},"/v1/predict":{"post":{"x":1}}}}"#;
        let out = rewrite(doc, &base("http", "/api/v1/endpoint/demo", "/v1/predict")).unwrap();
        let new = parse(&out);
        assert_eq!(
            new["paths"],
            json!({"/": {"get": {}}, "/score": {"post": {"x": 1}}})
        );
        // Not when the document already has a /score.
        let doc = br#"{"openapi":"3.0.0","paths":{"/score":{},"/v1/predict":{}}}"#;
        let out = rewrite(doc, &base("http", "/p", "/v1/predict")).unwrap();
        assert_eq!(
            parse(&out)["paths"],
            json!({"/score": {}, "/v1/predict": {}})
        );
    }

    #[test]
    fn what_is_not_an_openapi_object_passes_unchanged() {
        let b = base("http", "/p", "/score");
        for doc in [
            &b"not json"[..],
            b"[1, 2]",
            b"{\"title\": \"no version key\"}",
            b"{\"openapi\": \"3.0.0\"} trailing",
            b"{\"openapi\": 3}",
        ] {
            assert_eq!(rewrite(doc, &b), None, "{}", String::from_utf8_lossy(doc));
        }
    }

    #[test]
    fn the_base_comes_from_the_request_and_forwarded_proto_only_when_trusted() {
        let uri: Uri = "/api/v1/endpoint/de%6Do/swagger.json".parse().unwrap();
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_static("router.test:8080"));
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("https, http"));
        let b = Base::of(&h, &uri, ("http", false), ("/score", 1)).unwrap();
        assert_eq!(b.url(), "http://router.test:8080/api/v1/endpoint/de%6Do");
        let b = Base::of(&h, &uri, ("http", true), ("/score", 1)).unwrap();
        assert_eq!(b.url(), "https://router.test:8080/api/v1/endpoint/de%6Do");
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("gopher"));
        assert_eq!(
            Base::of(&h, &uri, ("https", true), ("/score", 1))
                .unwrap()
                .scheme,
            "https"
        );

        // HTTP/2: the authority; no usable host: no rewrite.
        let h2: Uri = "https://infer.example.com/api/v1/service/d/swagger.json"
            .parse()
            .unwrap();
        let b = Base::of(&HeaderMap::new(), &h2, ("https", false), ("/score", 1)).unwrap();
        assert_eq!(b.url(), "https://infer.example.com/api/v1/service/d");
        assert_eq!(
            Base::of(&HeaderMap::new(), &uri, ("http", false), ("/score", 1)),
            None
        );
        for bad in ["user@evil.test", "a b", ""] {
            let mut h = HeaderMap::new();
            h.insert(header::HOST, HeaderValue::from_str(bad).unwrap());
            assert_eq!(
                Base::of(&h, &uri, ("http", false), ("/score", 1)),
                None,
                "{bad}"
            );
        }
    }
}
