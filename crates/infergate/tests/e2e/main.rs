//! End-to-end tests of the real `infergate` binary over real sockets on 127.0.0.1, in front of
//! mock model pods. Proxy behaviour that needs no binary: `crates/proxy/tests/behaviour`.

mod auth;
mod autoscale;
mod binary;
mod check;
mod discovery;
mod edge;
mod ha;
mod reload;
mod runner;
// Shared with the proxy's behaviour tests, where every helper is used; these tests use a part.
#[allow(dead_code)]
#[path = "../../../proxy/tests/behaviour/support.rs"]
mod support;
