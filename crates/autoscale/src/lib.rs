//! The model autoscaler: each deployment with `scaleSettings` is scaled on
//! (busy + queued) / (replicas x slots), like azureml-fe, by the one replica that holds the
//! `infergate-autoscaler` Lease.
//!
//! - [`decide`]: the decision, pure (observations and time in, desired replicas and why out).
//! - [`controller`]: the loop on the leading replica: decide, write the scale subresource,
//!   Events, metrics, status.
//! - [`lease`]: leader election on a `coordination.k8s.io/v1` Lease (compare-and-swap on its
//!   `resourceVersion`).

pub mod controller;
pub mod decide;
pub mod lease;
