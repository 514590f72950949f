//! The route table and request resolution: azureml-fe URL shapes, deployment pinning, weighted split. Pure: no I/O.
//!
//! A [`RouteTable`] maps endpoint names to [`Endpoint`]s, each holding [`Deployment`]s.
//! Every endpoint carries a payload `E` and every deployment a payload `B` (the proxy puts its
//! endpoint policy and its balancer there), so one snapshot load gives the caller everything it
//! needs for a request.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use http::{HeaderName, HeaderValue, Method};
use infergate_config::ResolvedSettings;

/// The request header that pins a deployment, and the response header naming the one that served.
pub const AZUREML_MODEL_DEPLOYMENT: HeaderName =
    HeaderName::from_static("azureml-model-deployment");

/// The gRPC metadata key (request header) that names a gRPC call's endpoint.
pub const AZUREML_ENDPOINT: HeaderName = HeaderName::from_static("azureml-endpoint");

/// What the request asks of the deployment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// `.../score`: forwarded to the deployment's scoring path.
    Score,
    /// `.../swagger.json`: forwarded to the deployment's swagger path.
    Swagger,
    /// `.../v2` and `.../v2/...`: the Open Inference Protocol (KServe v2) REST API, forwarded to
    /// the same `/v2/...` path on the pod (see [`model_path`]). Any method.
    Oip,
    /// A gRPC call (`/package.Service/Method`): forwarded with its own path, to a deployment
    /// whose pods speak HTTP/2.
    Grpc,
}

/// Why a request has no route. Each maps to one HTTP status in the proxy.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The path is not one of the URL shapes.
    #[error(
        "no route for this path; scoring URLs look like /api/v1/endpoint/<name>/score (or /api/v1/endpoint/<name>/v2/... for the Open Inference Protocol)"
    )]
    NoRoute,
    /// The URL shape is right but no endpoint has that name.
    #[error("no endpoint named '{0}'")]
    EndpointNotFound(String),
    /// The `azureml-model-deployment` header names no deployment of the endpoint.
    #[error("endpoint '{endpoint}' has no deployment named '{deployment}'")]
    DeploymentNotFound {
        /// The endpoint.
        endpoint: String,
        /// The deployment asked for.
        deployment: String,
    },
    /// Every traffic weight is 0 and the request pins no deployment.
    #[error(
        "endpoint '{0}' sends no traffic to any deployment; pin one with the azureml-model-deployment header"
    )]
    NoTrafficAllocated(String),
    /// The method is not allowed on this route (swagger is GET/HEAD only).
    #[error("method not allowed; swagger.json answers GET and HEAD")]
    MethodNotAllowed,
    /// A gRPC call that names no endpoint.
    #[error(
        "a gRPC call names its endpoint in the metadata key azureml-endpoint (or in :authority as <endpoint>.<grpc.hostSuffix>)"
    )]
    NoGrpcEndpoint,
    /// A gRPC call to an endpoint (or a pinned deployment) whose pods do not speak HTTP/2.
    #[error("{}", no_http2(.endpoint, .deployment.as_deref()))]
    NoHttp2Deployment {
        /// The endpoint.
        endpoint: String,
        /// The deployment pinned, if one was.
        deployment: Option<String>,
    },
}

fn no_http2(endpoint: &str, deployment: Option<&str>) -> String {
    match deployment {
        Some(d) => format!(
            "deployment '{d}' of endpoint '{endpoint}' speaks HTTP/1.1 (protocol http1); gRPC calls need protocol h2c or h2"
        ),
        None => format!(
            "endpoint '{endpoint}' has no deployment speaking HTTP/2 with traffic; gRPC calls go to deployments with protocol h2c or h2"
        ),
    }
}

/// One deployment: its pods, paths, settings and the caller's payload.
#[derive(Debug)]
pub struct Deployment<B> {
    /// Deployment name.
    pub name: Box<str>,
    /// `name` as a ready-made header value for `azureml-model-deployment` on responses.
    pub header_value: HeaderValue,
    /// Scoring path on the pod.
    pub scoring_path: Box<str>,
    /// Swagger path on the pod.
    pub swagger_path: Box<str>,
    /// `scoring_path` and `swagger_path` as ready-made origin-form URIs (None if they do not
    /// parse), so a request without a query string costs a reference count, not a parse.
    uris: [Option<http::Uri>; 2],
    /// Effective request settings.
    pub settings: ResolvedSettings,
    /// Pod addresses.
    pub pods: Box<[SocketAddr]>,
    /// Whether the pods speak HTTP/2 (`protocol: h2c` or `h2`): only those take gRPC calls.
    pub http2: bool,
    /// The caller's payload (the proxy's balancer for these pods).
    pub balancer: B,
}

/// One endpoint: deployments and the cumulative traffic weights that split unpinned requests.
#[derive(Debug)]
pub struct Endpoint<B, E = ()> {
    /// Endpoint name, as in the URL.
    pub name: Box<str>,
    /// The caller's endpoint-wide payload (the proxy's auth and mirror policy).
    pub state: E,
    /// Deployments in configuration order.
    pub deployments: Box<[Deployment<B>]>,
    /// `cumulative[i]` = sum of weights of deployments `0..=i`.
    cumulative: Box<[u32]>,
    /// The same, counting only deployments whose pods speak HTTP/2 (gRPC calls).
    cumulative_http2: Box<[u32]>,
}

impl<B, E> Endpoint<B, E> {
    /// Builds an endpoint from its payload, deployments and their weights (same order).
    pub fn new(name: &str, state: E, deployments: Vec<(Deployment<B>, u32)>) -> Self {
        let (mut acc, mut acc_http2) = (0u32, 0u32);
        let mut cumulative = Vec::with_capacity(deployments.len());
        let mut cumulative_http2 = Vec::with_capacity(deployments.len());
        let mut deps = Vec::with_capacity(deployments.len());
        for (d, w) in deployments {
            acc = acc.saturating_add(w);
            if d.http2 {
                acc_http2 = acc_http2.saturating_add(w);
            }
            cumulative.push(acc);
            cumulative_http2.push(acc_http2);
            deps.push(d);
        }
        Endpoint {
            name: name.into(),
            state,
            deployments: deps.into(),
            cumulative: cumulative.into(),
            cumulative_http2: cumulative_http2.into(),
        }
    }

    /// Sum of the traffic weights (100, or 0 when only pinned requests are served).
    pub fn total_weight(&self) -> u32 {
        self.cumulative.last().copied().unwrap_or(0)
    }

    /// The deployment a gRPC call goes to: the pinned one, which must speak HTTP/2, else one of
    /// those speaking HTTP/2 by their traffic weights (deployments speaking HTTP/1.1 are left
    /// out of the split).
    pub fn select_grpc(
        &self,
        pinned: Option<&HeaderValue>,
        roll: u32,
    ) -> Result<&Deployment<B>, RouteError> {
        if pinned.is_some() {
            let d = self.select(pinned, roll)?;
            if !d.http2 {
                return Err(RouteError::NoHttp2Deployment {
                    endpoint: self.name.to_string(),
                    deployment: Some(d.name.to_string()),
                });
            }
            return Ok(d);
        }
        let total = self.cumulative_http2.last().copied().unwrap_or(0);
        if total == 0 {
            return Err(RouteError::NoHttp2Deployment {
                endpoint: self.name.to_string(),
                deployment: None,
            });
        }
        let r = roll % total;
        let i = self.cumulative_http2.partition_point(|&c| c <= r);
        self.deployments
            .get(i)
            .ok_or(RouteError::NoHttp2Deployment {
                endpoint: self.name.to_string(),
                deployment: None,
            })
    }

    /// The deployment named `name`.
    pub fn deployment(&self, name: &[u8]) -> Option<&Deployment<B>> {
        self.deployments.iter().find(|d| d.name.as_bytes() == name)
    }

    /// The deployment a request goes to: the pinned one (`azureml-model-deployment`), else one by weight.
    pub fn select(
        &self,
        pinned: Option<&HeaderValue>,
        roll: u32,
    ) -> Result<&Deployment<B>, RouteError> {
        match pinned {
            Some(h) => {
                self.deployment(h.as_bytes())
                    .ok_or_else(|| RouteError::DeploymentNotFound {
                        endpoint: self.name.to_string(),
                        deployment: clip_name(&String::from_utf8_lossy(h.as_bytes())),
                    })
            }
            None => self
                .pick(roll)
                .ok_or_else(|| RouteError::NoTrafficAllocated(self.name.to_string())),
        }
    }

    /// Picks a deployment by weight; `roll` is any random number (reduced modulo the total weight).
    pub fn pick(&self, roll: u32) -> Option<&Deployment<B>> {
        let total = self.total_weight();
        if total == 0 {
            return None;
        }
        let r = roll % total;
        let i = self.cumulative.partition_point(|&c| c <= r);
        self.deployments.get(i)
    }
}

fn origin_uri(path: &str) -> Option<http::Uri> {
    http::Uri::try_from(path).ok()
}

impl<B> Deployment<B> {
    /// The origin-form URI for `action` on a pod: the deployment's path (for
    /// [`Action::Oip`], the `/v2/...` part of `client_path`, the client's own path) plus the
    /// client's query. None when the result is not a valid URI.
    pub fn upstream_uri(
        &self,
        action: Action,
        client_path: &str,
        query: Option<&str>,
    ) -> Option<http::Uri> {
        let (cached, path) = match action {
            Action::Score => (&self.uris[0], &*self.scoring_path),
            Action::Swagger => (&self.uris[1], &*self.swagger_path),
            Action::Oip => (&None, model_path(client_path)?),
            // A gRPC call keeps its own path (the caller passes it on).
            Action::Grpc => return None,
        };
        let Some(q) = query else {
            return match cached {
                Some(u) => Some(u.clone()),
                None => http::Uri::try_from(path).ok(),
            };
        };
        let mut s = String::with_capacity(path.len() + 1 + q.len());
        s.push_str(path);
        s.push('?');
        s.push_str(q);
        http::Uri::try_from(s).ok()
    }

    /// Builds a deployment; an invalid header-value name becomes `invalid` (names are validated upstream).
    pub fn new(
        name: &str,
        scoring_path: &str,
        swagger_path: &str,
        settings: ResolvedSettings,
        pods: Vec<SocketAddr>,
        balancer: B,
    ) -> Self {
        Deployment {
            header_value: HeaderValue::from_str(name)
                .unwrap_or_else(|_| HeaderValue::from_static("invalid")),
            name: name.into(),
            uris: [origin_uri(scoring_path), origin_uri(swagger_path)],
            scoring_path: scoring_path.into(),
            swagger_path: swagger_path.into(),
            settings,
            pods: pods.into(),
            http2: false,
            balancer,
        }
    }

    /// Marks whether the pods speak HTTP/2 (and so take gRPC calls).
    pub fn with_http2(mut self, http2: bool) -> Self {
        self.http2 = http2;
        self
    }
}

/// The route table: one immutable snapshot, replaced whole on change.
#[derive(Debug)]
pub struct RouteTable<B, E = ()> {
    /// Shared, so a new table can reuse the endpoints that did not change.
    endpoints: HashMap<Box<str>, Arc<Endpoint<B, E>>>,
}

impl<B, E> Default for RouteTable<B, E> {
    fn default() -> Self {
        RouteTable {
            endpoints: HashMap::new(),
        }
    }
}

impl<B, E> RouteTable<B, E> {
    /// A table of these endpoints (a later one with the same name replaces an earlier one).
    pub fn new(endpoints: impl IntoIterator<Item = Endpoint<B, E>>) -> Self {
        Self::from_shared(endpoints.into_iter().map(Arc::new))
    }

    /// A table of shared endpoints, some possibly taken from an older table: building a new
    /// table after one change costs a pointer copy per unchanged endpoint.
    pub fn from_shared(endpoints: impl IntoIterator<Item = Arc<Endpoint<B, E>>>) -> Self {
        RouteTable {
            endpoints: endpoints.into_iter().map(|e| (e.name.clone(), e)).collect(),
        }
    }

    /// The shared endpoint named `name` (to reuse it in a newer table).
    pub fn endpoint_shared(&self, name: &str) -> Option<&Arc<Endpoint<B, E>>> {
        self.endpoints.get(name)
    }

    /// The endpoint named `name`.
    pub fn endpoint(&self, name: &str) -> Option<&Endpoint<B, E>> {
        self.endpoints.get(name).map(|e| &**e)
    }

    /// All endpoints, in no particular order.
    pub fn endpoints(&self) -> impl Iterator<Item = &Endpoint<B, E>> {
        self.endpoints.values().map(|e| &**e)
    }

    /// Number of endpoints.
    pub fn len(&self) -> usize {
        self.endpoints.len()
    }

    /// Whether the table has no endpoint.
    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    /// The endpoint and action a request path names (deployment not chosen yet).
    pub fn lookup(
        &self,
        method: &Method,
        path: &str,
    ) -> Result<(&Endpoint<B, E>, Action), RouteError> {
        let (raw_name, action) = parse_path(path).ok_or(RouteError::NoRoute)?;
        if action == Action::Swagger && method != Method::GET && method != Method::HEAD {
            return Err(RouteError::MethodNotAllowed);
        }
        Ok((self.find(raw_name)?, action))
    }

    /// The endpoint a gRPC call names: the `azureml-endpoint` metadata value, else (with a
    /// `host_suffix`) the `authority` `<endpoint>.<host_suffix>` (any port, any case).
    pub fn lookup_grpc(
        &self,
        metadata: Option<&HeaderValue>,
        authority: Option<&str>,
        host_suffix: Option<&str>,
    ) -> Result<&Endpoint<B, E>, RouteError> {
        let name = grpc_endpoint_name(metadata, authority, host_suffix)
            .ok_or(RouteError::NoGrpcEndpoint)?;
        self.endpoint(name)
            .ok_or_else(|| RouteError::EndpointNotFound(clip_name(name)))
    }

    /// Looks an endpoint up by the raw (still percent-encoded) URL segment.
    fn find(&self, raw: &str) -> Result<&Endpoint<B, E>, RouteError> {
        let not_found = || {
            RouteError::EndpointNotFound(clip_name(
                &percent_encoding::percent_decode_str(raw).decode_utf8_lossy(),
            ))
        };
        if !raw.contains('%') {
            return self.endpoint(raw).ok_or_else(not_found);
        }
        let decoded = percent_encoding::percent_decode_str(raw)
            .decode_utf8()
            .map_err(|_| not_found())?;
        // A decoded name that holds a slash, or is a dot segment, can never be an endpoint.
        if decoded.contains('/') || decoded == "." || decoded == ".." {
            return Err(not_found());
        }
        self.endpoint(decoded.as_ref()).ok_or_else(not_found)
    }
}

/// The longest name a [`RouteError`] repeats (in characters): a client's 64 KiB "name" is not
/// echoed back whole. Real names are at most 63.
pub const MAX_NAME_IN_ERROR: usize = 128;

/// `name` cut to [`MAX_NAME_IN_ERROR`] characters, with `…` when it was longer.
fn clip_name(name: &str) -> String {
    match name.char_indices().nth(MAX_NAME_IN_ERROR) {
        None => name.to_string(),
        Some((end, _)) => format!("{}…", &name[..end]),
    }
}

/// The endpoint name a gRPC call carries: the `azureml-endpoint` metadata value (when it is
/// text), else the label(s) of `authority` before `.<host_suffix>` (port ignored, case folded
/// for the suffix only).
pub fn grpc_endpoint_name<'a>(
    metadata: Option<&'a HeaderValue>,
    authority: Option<&'a str>,
    host_suffix: Option<&str>,
) -> Option<&'a str> {
    if let Some(v) = metadata {
        return v.to_str().ok().filter(|s| !s.is_empty());
    }
    let (authority, suffix) = (authority?, host_suffix?);
    let host = match authority.rsplit_once(':') {
        Some((h, port)) if port.bytes().all(|b| b.is_ascii_digit()) => h,
        _ => authority,
    };
    let cut = host.len().checked_sub(suffix.len() + 1)?;
    let (name, rest) = host.split_at_checked(cut)?;
    let matches = rest.as_bytes()[0] == b'.' && rest[1..].eq_ignore_ascii_case(suffix);
    (matches && !name.is_empty()).then_some(name)
}

/// Splits `/api/v1/{service|endpoint}/{name}/{score|swagger.json|v2[/...]}` into the raw name
/// and the action.
pub fn parse_path(path: &str) -> Option<(&str, Action)> {
    let (name, tail) = split_path(path)?;
    let action = match tail {
        "score" => Action::Score,
        "swagger.json" => Action::Swagger,
        _ if is_model_path(tail) => Action::Oip,
        _ => return None,
    };
    Some((name, action))
}

/// `/api/v1/{service|endpoint}/{name}/{tail}` as the raw name and the tail.
fn split_path(path: &str) -> Option<(&str, &str)> {
    let rest = path.strip_prefix("/api/v1/")?;
    let rest = rest
        .strip_prefix("endpoint/")
        .or_else(|| rest.strip_prefix("service/"))?;
    let (name, tail) = rest.split_once('/')?;
    if name.is_empty() {
        return None;
    }
    Some((name, tail))
}

/// The pod path of an [`Action::Oip`] request: `/v2/...` as the client wrote it after the
/// endpoint's name (`/api/v1/endpoint/demo/v2/models/m/infer` -> `/v2/models/m/infer`).
pub fn model_path(path: &str) -> Option<&str> {
    let (_, tail) = split_path(path)?;
    if !is_model_path(tail) {
        return None;
    }
    // The tail's leading `/` is the one before it in `path`.
    Some(&path[path.len() - tail.len() - 1..])
}

/// Whether a tail is an Open Inference Protocol path: `v2`, or `v2/` and segments none of which
/// is a dot segment or holds a slash or backslash, percent-encoded or not (the pod would
/// resolve those to a path outside `/v2/`).
fn is_model_path(tail: &str) -> bool {
    let Some(rest) = tail.strip_prefix("v2") else {
        return false;
    };
    if rest.is_empty() {
        return true;
    }
    let Some(rest) = rest.strip_prefix('/') else {
        return false;
    };
    rest.split('/').all(|seg| {
        if !seg.contains(['%', '.', '\\']) {
            return true;
        }
        let decoded = percent_encoding::percent_decode_str(seg).collect::<Vec<u8>>();
        decoded != b"." && decoded != b".." && !decoded.contains(&b'/') && !decoded.contains(&b'\\')
    })
}

#[cfg(test)]
mod tests;
