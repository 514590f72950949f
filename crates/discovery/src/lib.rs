//! Kubernetes discovery for infergate: InferenceEndpoints and EndpointSlices, watched live, become the route table.
//!
//! - [`crd`]: the `InferenceEndpoint` custom resource (`infergate.io/v1`) and its status;
//!   [`crd_yaml`] is its CustomResourceDefinition (`infergate crd`).
//! - [`index`]: the pure index: apply/delete/reset of watch events in, endpoint specs (for
//!   [`PublishSpecs::publish_specs`](infergate_spec::PublishSpecs::publish_specs): the proxy's
//!   router), statuses and reports out. Discovery depends on the spec contract only; the binary
//!   hands it the router and readiness.
//! - [`Discovery`]: the glue from watch-event streams ([`Feed`]) to the index and one
//!   route-table swap per batch; readiness after the first full sync.
//! - [`spawn`]: the real thing: kube watches (InferenceEndpoints, EndpointSlices, Secrets) of
//!   the configured namespaces and the status writer.
//! - [`watch_peers`]: HA peers (`cluster.kube`): the ready endpoints of a headless Service's
//!   EndpointSlices on a watch channel; [`peer_namespace`] finds its namespace.

pub mod crd;
pub mod index;
pub mod metrics;

mod cluster;
mod peers;
pub mod scale_board;
mod status;
mod watch;

pub use cluster::{
    Backoff, DiscoveryError, client_from_env, client_if_configured, feeds, spawn, start,
};
pub use crd::{InferenceEndpoint, InferenceEndpointSpec, InferenceEndpointStatus, crd_yaml};
pub use index::{
    AUTH_SECRET_LABEL, AUTH_SECRET_LABEL_VALUE, AUTH_SECRET_SELECTOR, ENDPOINTS_TRUSTED, Index,
    MANAGED_BY_LABEL, ObjectKey, SERVICE_NAME_LABEL, StatusUpdate,
};
pub use peers::{
    PEER_PORT_NAME, PEERS_KIND, SERVICE_ACCOUNT_NAMESPACE_FILE, peer_namespace, slice_peers,
    watch_peers, watch_peers_with,
};
pub use scale_board::{EndpointScale, ScaleBoard};
pub use status::{with_times, write_statuses};
pub use watch::{Discovery, Feed, FeedKind};
