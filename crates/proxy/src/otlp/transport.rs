//! Sending an export request to the collector: OTLP/HTTP (`POST {endpoint}/v1/traces`,
//! `application/x-protobuf`, HTTP/1.1 keep-alive) or OTLP/gRPC (`POST .../TraceService/Export`
//! over HTTP/2 without TLS, `grpc-status` in the trailers), on hyper's client connections. One
//! connection, reused; a broken one is replaced at the next attempt. Failures the OTLP
//! specification calls retryable (a connection error; HTTP 429, 502, 503, 504; gRPC
//! `UNAVAILABLE` and the like) are retried with exponential backoff (100 ms doubling to 1.6 s,
//! plus up to 100 ms of jitter) while the export's deadline allows.

use std::time::Duration;

use bytes::buf::Chain;
use bytes::{Buf as _, Bytes};
use http::{HeaderMap, HeaderName, HeaderValue, Method, Request, StatusCode, Uri, header};
use http_body_util::{BodyExt, Full, Limited};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use infergate_config::{OtlpConfig, OtlpProtocol};
use tokio::net::TcpStream;
use tokio::time::Instant;

/// The gRPC method of a trace export.
const GRPC_PATH: &str = "/opentelemetry.proto.collector.trace.v1.TraceService/Export";
/// The OTLP/HTTP path of trace exports, after the endpoint's own path.
const HTTP_PATH: &str = "/v1/traces";
/// The most of a collector's answer that is read.
const MAX_ANSWER_BYTES: usize = 64 * 1024;
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_millis(1600);

/// Why an export failed.
#[derive(Debug)]
pub(crate) struct Failure {
    /// Whether another attempt may succeed.
    retry: bool,
    /// Whether the connection is unusable after it.
    broken: bool,
    pub(crate) reason: String,
}

impl Failure {
    fn conn(reason: String) -> Self {
        Failure {
            retry: true,
            broken: true,
            reason,
        }
    }
}

/// An export request's body: the message's beginning, then its spans (written as they are).
type Body = Full<Chain<Bytes, Bytes>>;

enum Sender {
    H1(http1::SendRequest<Body>),
    H2(http2::SendRequest<Body>),
}

/// A connection: its request half, and the task that drives it (stopped when the connection is
/// given up, so that one to a collector that never answers does not linger).
struct Conn {
    sender: Sender,
    task: tokio::task::AbortHandle,
}

impl Drop for Conn {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The collector and the connection to it.
pub(crate) struct Transport {
    grpc: bool,
    /// `host:port` to connect to.
    addr: String,
    /// The request URI (absolute, for HTTP/2's `:authority`) and the `Host` of HTTP/1.1.
    uri: Uri,
    host: HeaderValue,
    headers: HeaderMap,
    conn: Option<Conn>,
}

impl std::fmt::Debug for Transport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Transport")
            .field("uri", &self.uri)
            .field("grpc", &self.grpc)
            .finish_non_exhaustive()
    }
}

impl Transport {
    /// The collector of `o` (checked by the configuration's validation; what still fails here
    /// is reported).
    pub(crate) fn new(o: &OtlpConfig) -> Result<Transport, String> {
        let base: Uri = o.endpoint.parse().map_err(|e| format!("not a URL: {e}"))?;
        let authority = base.authority().ok_or("no host")?.clone();
        let grpc = o.protocol == OtlpProtocol::Grpc;
        let prefix = base.path().trim_end_matches('/');
        let path = if grpc { GRPC_PATH } else { HTTP_PATH };
        let uri = Uri::builder()
            .scheme("http")
            .authority(authority.clone())
            .path_and_query(format!("{prefix}{path}"))
            .build()
            .map_err(|e| format!("not a URL: {e}"))?;
        let port = authority.port_u16().unwrap_or(80);
        let host = authority.host();
        let mut headers = HeaderMap::new();
        for (k, v) in &o.headers {
            let name =
                HeaderName::from_bytes(k.as_bytes()).map_err(|e| format!("header {k}: {e}"))?;
            let value = HeaderValue::from_str(v).map_err(|e| format!("header {k}: {e}"))?;
            headers.insert(name, value);
        }
        let ctype = if grpc {
            "application/grpc"
        } else {
            "application/x-protobuf"
        };
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(ctype));
        if grpc {
            headers.insert(header::TE, HeaderValue::from_static("trailers"));
        }
        headers.insert(
            header::USER_AGENT,
            HeaderValue::from_static(concat!("infergate/", env!("CARGO_PKG_VERSION"))),
        );
        Ok(Transport {
            grpc,
            addr: format!("{host}:{port}"),
            host: HeaderValue::from_str(authority.as_str()).map_err(|e| e.to_string())?,
            uri,
            headers,
            conn: None,
        })
    }

    /// Sends `body` (an encoded `ExportTraceServiceRequest`, framed for gRPC) until the
    /// collector accepts it, a failure is not retryable, or `deadline` passes.
    pub(crate) async fn export(
        &mut self,
        body: (Bytes, Bytes),
        deadline: Instant,
    ) -> Result<(), Failure> {
        let mut backoff = FIRST_BACKOFF;
        loop {
            let attempt = tokio::time::timeout_at(deadline, self.send(body.clone())).await;
            let failure = match attempt {
                Ok(Ok(())) => return Ok(()),
                Ok(Err(f)) => f,
                Err(_) => {
                    // The request may still be in flight on this connection: not reusable.
                    self.conn = None;
                    return Err(Failure {
                        retry: false,
                        broken: true,
                        reason: "no answer before the export timeout".into(),
                    });
                }
            };
            if failure.broken {
                self.conn = None;
            }
            let pause = backoff + Duration::from_millis(rand::random::<u64>() % 100);
            if !failure.retry || Instant::now() + pause >= deadline {
                return Err(failure);
            }
            tokio::time::sleep(pause).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }

    async fn send(&mut self, (head, spans): (Bytes, Bytes)) -> Result<(), Failure> {
        let mut req = Request::new(Full::new(head.chain(spans)));
        *req.method_mut() = Method::POST;
        *req.headers_mut() = self.headers.clone();
        if self.grpc {
            *req.uri_mut() = self.uri.clone();
        } else {
            if let Some(p) = self.uri.path_and_query() {
                *req.uri_mut() = Uri::from(p.clone());
            }
            req.headers_mut().insert(header::HOST, self.host.clone());
        }
        let resp = match &mut self.ready().await?.sender {
            Sender::H1(s) => s.send_request(req).await,
            Sender::H2(s) => s.send_request(req).await,
        }
        .map_err(|e| Failure::conn(format!("request failed: {e}")))?;
        let status = resp.status();
        let grpc_in_head = grpc_status(resp.headers());
        let answer = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
            .collect()
            .await
            .map_err(|e| Failure::conn(format!("reading the answer: {e}")))?;
        if !self.grpc {
            return match status {
                s if s.is_success() => Ok(()),
                s => Err(Failure {
                    retry: matches!(
                        s,
                        StatusCode::TOO_MANY_REQUESTS
                            | StatusCode::BAD_GATEWAY
                            | StatusCode::SERVICE_UNAVAILABLE
                            | StatusCode::GATEWAY_TIMEOUT
                    ),
                    broken: false,
                    reason: format!("the collector answered {s}"),
                }),
            };
        }
        let code = answer
            .trailers()
            .and_then(grpc_status)
            .or(grpc_in_head)
            .unwrap_or(if status.is_success() { 2 } else { 14 });
        match code {
            0 => Ok(()),
            c => Err(Failure {
                // CANCELLED, DEADLINE_EXCEEDED, RESOURCE_EXHAUSTED, ABORTED, OUT_OF_RANGE,
                // UNAVAILABLE, DATA_LOSS.
                retry: matches!(c, 1 | 4 | 8 | 10 | 11 | 14 | 15),
                broken: false,
                reason: format!("the collector answered grpc-status {c} (HTTP {status})"),
            }),
        }
    }

    /// The connection, opened when there is none (or the last one closed).
    async fn ready(&mut self) -> Result<&mut Conn, Failure> {
        let alive = match &mut self.conn {
            Some(Conn {
                sender: Sender::H1(s),
                ..
            }) => s.ready().await.is_ok(),
            Some(Conn {
                sender: Sender::H2(s),
                ..
            }) => s.ready().await.is_ok(),
            None => false,
        };
        if !alive {
            self.conn = Some(self.connect().await?);
        }
        Ok(self.conn.as_mut().expect("connected above"))
    }

    async fn connect(&self) -> Result<Conn, Failure> {
        let tcp = TcpStream::connect(&self.addr)
            .await
            .map_err(|e| Failure::conn(format!("cannot connect to {}: {e}", self.addr)))?;
        let _ = tcp.set_nodelay(true);
        let io = TokioIo::new(tcp);
        let handshake =
            |e: hyper::Error| Failure::conn(format!("handshake with {}: {e}", self.addr));
        if self.grpc {
            let (s, c) = http2::handshake(TokioExecutor::new(), io)
                .await
                .map_err(handshake)?;
            Ok(Conn {
                sender: Sender::H2(s),
                task: tokio::spawn(c).abort_handle(),
            })
        } else {
            let (s, c) = http1::handshake(io).await.map_err(handshake)?;
            Ok(Conn {
                sender: Sender::H1(s),
                task: tokio::spawn(c).abort_handle(),
            })
        }
    }
}

fn grpc_status(h: &HeaderMap) -> Option<u32> {
    h.get("grpc-status")?.to_str().ok()?.parse().ok()
}
