//! The router's own HTTP/1.1 client for pod connections: a codec without I/O (`codec.rs`) and a
//! connection driven by the task of the request that uses it (`conn.rs`). The client-facing side
//! stays on hyper's server (it parses untrusted input); the pod-facing side is simple enough to
//! own, and owning it saves hyper's per-message machinery (a dispatch channel, two body
//! channels, a header map kept per message) on every proxied request.

pub(crate) mod codec;
pub(crate) mod conn;

#[cfg(test)]
mod differential;
#[cfg(test)]
mod fuzz;

use crate::body::BoxError;
use codec::ParseError;

/// Why an exchange on a pod connection failed.
#[derive(Debug)]
pub struct Error {
    kind: Kind,
    cause: Option<BoxError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    /// The pod's response broke the protocol.
    Parse(ParseError),
    /// The connection closed before the response was complete (or, idle, before a request).
    Incomplete,
    /// Reading or writing the socket failed.
    Io,
    /// The request body failed: the client's side (too large, cut off by a stream timer, the
    /// client's own connection).
    RequestBody,
    /// An HTTP/2 pod's stream or connection broke the protocol (hyper's error is the cause).
    Http2Protocol,
}

impl Error {
    pub(crate) fn parse(e: ParseError) -> Self {
        let kind = match e {
            ParseError::Incomplete => Kind::Incomplete,
            e => Kind::Parse(e),
        };
        Error { kind, cause: None }
    }

    pub(crate) fn incomplete(cause: Option<std::io::Error>) -> Self {
        Error {
            kind: Kind::Incomplete,
            cause: cause.map(Into::into),
        }
    }

    pub(crate) fn io(e: std::io::Error) -> Self {
        Error {
            kind: Kind::Io,
            cause: Some(e.into()),
        }
    }

    pub(crate) fn request_body(e: BoxError) -> Self {
        Error {
            kind: Kind::RequestBody,
            cause: Some(e),
        }
    }

    /// An exchange with an HTTP/2 pod (through hyper's client) failed: the same kinds.
    pub(crate) fn http2(e: hyper::Error) -> Self {
        let kind = if e.is_user() {
            Kind::RequestBody
        } else if e.is_parse() || e.is_parse_status() {
            Kind::Http2Protocol
        } else if e.is_incomplete_message() || e.is_closed() || e.is_canceled() {
            Kind::Incomplete
        } else {
            Kind::Io
        };
        Error {
            kind,
            cause: Some(e.into()),
        }
    }

    /// The request body failed (the client's doing, not the pod's).
    pub fn is_user(&self) -> bool {
        self.kind == Kind::RequestBody
    }

    /// The pod's response was malformed.
    pub fn is_parse(&self) -> bool {
        matches!(self.kind, Kind::Parse(_) | Kind::Http2Protocol)
    }

    /// The connection ended before the response did.
    pub fn is_incomplete_message(&self) -> bool {
        self.kind == Kind::Incomplete
    }
}

impl std::fmt::Display for Error {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            Kind::Parse(p) => write!(f, "malformed response from the pod: {p}"),
            Kind::Incomplete => f.write_str("the pod connection closed before the response ended"),
            Kind::Io => f.write_str("pod connection error"),
            Kind::RequestBody => f.write_str("the request body failed"),
            Kind::Http2Protocol => f.write_str("HTTP/2 protocol error from the pod"),
        }?;
        match &self.cause {
            Some(c) => write!(f, ": {c}"),
            None => Ok(()),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|c| c as _)
    }
}
