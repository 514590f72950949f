//! A minimal Open Inference Protocol (KServe v2) REST server: enough of the protocol to show
//! that a router passes its paths through, not a model server.
//!
//! | Route | Answer |
//! |---|---|
//! | `GET /v2` | server metadata: `{"name", "version", "extensions"}` |
//! | `GET /v2/health/live`, `GET /v2/health/ready` | 200, empty body |
//! | `GET /v2/models/{model}[/versions/{v}]` | model metadata (any model name is known) |
//! | `GET /v2/models/{model}[/versions/{v}]/ready` | 200, empty body |
//! | `POST /v2/models/{model}[/versions/{v}]/infer` | echoes each input as an output of the same name, shape, datatype and data |
//!
//! Anything else under `/v2` is 404 `{"error": ...}` (the protocol's error shape); a malformed
//! inference request is 400. `infer` honours `latencyMs=N` and counts in `/stats` as `/score`
//! does. Every JSON answer carries the pod's name (`parameters.pod` on inference answers).

use std::sync::Arc;

use bytes::Bytes;
use http::{Method, Request, Response, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use serde_json::{Value, json};

use super::{BoxError, MockBody, Params, Shared, json_response, method_not_allowed};

/// The largest inference request read (the mock keeps it to echo it).
const MAX_INFER_BYTES: usize = 16 << 20;

/// What a `/v2/...` path asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route<'a> {
    Server,
    Live,
    Ready,
    Model {
        name: &'a str,
        version: Option<&'a str>,
    },
    ModelReady {
        name: &'a str,
        version: Option<&'a str>,
    },
    Infer {
        name: &'a str,
        version: Option<&'a str>,
    },
}

fn route(path: &str) -> Option<Route<'_>> {
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Route::Server);
    }
    let seg: Vec<&str> = rest.strip_prefix('/')?.split('/').collect();
    let (name, version, tail) = match seg.as_slice() {
        ["health", "live"] => return Some(Route::Live),
        ["health", "ready"] => return Some(Route::Ready),
        ["models", name, "versions", v, tail @ ..] => (*name, Some(*v), tail),
        ["models", name, tail @ ..] => (*name, None, tail),
        _ => return None,
    };
    if name.is_empty() || version.is_some_and(str::is_empty) {
        return None;
    }
    match tail {
        [] => Some(Route::Model { name, version }),
        ["ready"] => Some(Route::ModelReady { name, version }),
        ["infer"] => Some(Route::Infer { name, version }),
        _ => None,
    }
}

/// Answers a `/v2/...` request.
pub(crate) async fn handle(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
) -> Result<Response<MockBody>, BoxError> {
    let path = req.uri().path().to_owned();
    let Some(r) = route(&path) else {
        return Ok(error(
            StatusCode::NOT_FOUND,
            &format!("no such Open Inference Protocol path: {path}"),
        ));
    };
    let get = req.method() == Method::GET || req.method() == Method::HEAD;
    match r {
        Route::Infer { name, version } => {
            if req.method() != Method::POST {
                return Ok(method_not_allowed(shared, "POST"));
            }
            infer(shared, req, name, version).await
        }
        _ if !get => Ok(method_not_allowed(shared, "GET, HEAD")),
        Route::Server => Ok(json_response(
            StatusCode::OK,
            &json!({
                "name": "mock-model",
                "version": env!("CARGO_PKG_VERSION"),
                "extensions": [],
                "pod": &*shared.name,
            }),
            None,
        )),
        Route::Live | Route::Ready | Route::ModelReady { .. } => {
            Ok(Response::new(MockBody::empty(None)))
        }
        Route::Model { name, version } => Ok(json_response(
            StatusCode::OK,
            &json!({
                "name": name,
                "versions": [version.unwrap_or("1")],
                "platform": "mock-model",
                "inputs": [{"name": "input0", "datatype": "FP32", "shape": [-1]}],
                "outputs": [{"name": "input0", "datatype": "FP32", "shape": [-1]}],
                "parameters": {"pod": &*shared.name},
            }),
            None,
        )),
    }
}

async fn infer(
    shared: &Arc<Shared>,
    req: Request<Incoming>,
    name: &str,
    version: Option<&str>,
) -> Result<Response<MockBody>, BoxError> {
    let guard = shared.stats.enter();
    let params = Params::parse(req.uri().query().unwrap_or(""));
    let body = http_body_util::Limited::new(req.into_body(), MAX_INFER_BYTES)
        .collect()
        .await
        .map(|b| b.to_bytes());
    let body: Bytes = match body {
        Ok(b) => b,
        Err(e) if e.is::<http_body_util::LengthLimitError>() => {
            return Ok(error(
                StatusCode::PAYLOAD_TOO_LARGE,
                &format!("the inference request is over {MAX_INFER_BYTES} bytes"),
            ));
        }
        Err(e) => return Err(e),
    };
    let request: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => {
            return Ok(error(
                StatusCode::BAD_REQUEST,
                &format!("the inference request is not JSON: {e}"),
            ));
        }
    };
    let outputs = match echo_outputs(&request) {
        Ok(o) => o,
        Err(msg) => return Ok(error(StatusCode::BAD_REQUEST, msg)),
    };
    let latency = params.latency(&shared.config);
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    shared
        .stats
        .served
        .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let mut answer = json!({
        "model_name": name,
        "outputs": outputs,
        "parameters": {"pod": &*shared.name},
    });
    if let Some(v) = version {
        answer["model_version"] = json!(v);
    }
    if let Some(id) = request.get("id") {
        answer["id"] = id.clone();
    }
    Ok(json_response(StatusCode::OK, &answer, Some(guard)))
}

/// The inputs of an inference request as outputs (the protocol's required fields checked).
fn echo_outputs(request: &Value) -> Result<Vec<Value>, &'static str> {
    let inputs = request
        .get("inputs")
        .and_then(Value::as_array)
        .ok_or("the inference request needs an `inputs` array")?;
    inputs
        .iter()
        .map(|i| {
            let name = i.get("name").and_then(Value::as_str);
            let shape = i.get("shape").and_then(Value::as_array);
            let datatype = i.get("datatype").and_then(Value::as_str);
            let data = i.get("data");
            match (name, shape, datatype, data) {
                (Some(n), Some(s), Some(t), Some(d)) if s.iter().all(Value::is_u64) => Ok(json!({
                    "name": n, "shape": s, "datatype": t, "data": d,
                })),
                _ => Err("each input needs `name`, `shape` (non-negative integers), `datatype` and `data`"),
            }
        })
        .collect()
}

/// The protocol's error answer: `{"error": "<message>"}`.
fn error(status: StatusCode, msg: &str) -> Response<MockBody> {
    json_response(status, &json!({"error": msg}), None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let m = |name, version| Route::Model { name, version };
        assert_eq!(route("/v2"), Some(Route::Server));
        assert_eq!(route("/v2/health/live"), Some(Route::Live));
        assert_eq!(route("/v2/health/ready"), Some(Route::Ready));
        assert_eq!(route("/v2/models/iris"), Some(m("iris", None)));
        assert_eq!(
            route("/v2/models/iris/versions/3"),
            Some(m("iris", Some("3")))
        );
        assert_eq!(
            route("/v2/models/iris/versions/3/infer"),
            Some(Route::Infer {
                name: "iris",
                version: Some("3")
            })
        );
        assert_eq!(
            route("/v2/models/iris/ready"),
            Some(Route::ModelReady {
                name: "iris",
                version: None
            })
        );
        for bad in [
            "/v2/health",
            "/v2/models",
            "/v2/models//infer",
            "/v2/models/a/b",
            "/v2x",
            "/v2/models/a/versions//infer",
        ] {
            assert_eq!(route(bad), None, "{bad}");
        }
    }

    #[test]
    fn infer_echoes_inputs_and_checks_them() {
        let req = json!({"id": "7", "inputs": [
            {"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, 2.5]}
        ]});
        let out = echo_outputs(&req).unwrap();
        assert_eq!(
            out,
            vec![json!({"name": "x", "shape": [1, 2], "datatype": "FP32", "data": [1.5, 2.5]})]
        );
        assert!(echo_outputs(&json!({})).is_err());
        assert!(
            echo_outputs(
                &json!({"inputs": [{"name": "x", "shape": [-1], "datatype": "FP32", "data": []}]})
            )
            .is_err()
        );
        assert!(echo_outputs(&json!({"inputs": [{"name": "x"}]})).is_err());
    }
}
