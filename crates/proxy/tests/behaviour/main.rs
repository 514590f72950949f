//! Proxy behaviour over real sockets on 127.0.0.1: the router in process (`Server::bind`, its own
//! metrics registry) in front of mock model pods. What needs the real binary lives in the e2e tests
//! of the `infergate` crate.

mod admin;
mod admission;
mod auth;
mod cancel;
mod edge;
mod edge_conn;
mod errors;
mod exposition;
mod grpc;
mod headers;
mod oip;
mod otlp;
mod routing;
mod slow_clients;
mod sse;
mod stream_timers;
mod streaming;
mod support;
mod swagger;
mod tls;
mod trace;
mod upstream;
mod upstream_h2;
