//! Shared test helpers: a hyper-util client and a streaming upload body.
#![allow(dead_code)]

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// Request body type used by the tests.
pub type ReqBody = BoxBody<Bytes, Infallible>;
/// The test client.
pub type TestClient = Client<HttpConnector, ReqBody>;

/// An HTTP/1.1 client.
pub fn client() -> TestClient {
    Client::builder(TokioExecutor::new()).build_http()
}

/// An HTTP/2 prior-knowledge (h2c) client.
pub fn h2_client() -> TestClient {
    Client::builder(TokioExecutor::new())
        .http2_only(true)
        .build_http()
}

/// An empty request body.
pub fn empty() -> ReqBody {
    Empty::new().boxed()
}

/// A complete request body.
pub fn full(data: impl Into<Bytes>) -> ReqBody {
    Full::new(data.into()).boxed()
}

/// A streaming body of `n` bytes sent in 64 KiB chunks, never allocated in full.
pub fn repeat(n: u64) -> ReqBody {
    RepeatBody {
        chunk: Bytes::from(vec![b'u'; 64 * 1024]),
        remaining: n,
    }
    .boxed()
}

struct RepeatBody {
    chunk: Bytes,
    remaining: u64,
}

impl Body for RepeatBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        if self.remaining == 0 {
            return Poll::Ready(None);
        }
        let n = self.remaining.min(self.chunk.len() as u64);
        self.remaining -= n;
        Poll::Ready(Some(Ok(Frame::data(self.chunk.slice(..n as usize)))))
    }

    fn is_end_stream(&self) -> bool {
        self.remaining == 0
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// Sends a request and collects the answer as (status, headers, body).
pub async fn send(
    client: &TestClient,
    method: &str,
    url: &str,
    body: ReqBody,
) -> (http::StatusCode, http::HeaderMap, Bytes) {
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .body(body)
        .unwrap();
    let resp = client.request(req).await.expect("request failed");
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.expect("body failed").to_bytes();
    (parts.status, parts.headers, body)
}

/// Parses a JSON body.
pub fn json(body: &[u8]) -> serde_json::Value {
    serde_json::from_slice(body)
        .unwrap_or_else(|e| panic!("invalid JSON ({e}): {}", String::from_utf8_lossy(body)))
}
