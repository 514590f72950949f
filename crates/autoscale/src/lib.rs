//! The model autoscaler: each deployment with `scaleSettings` is scaled on
//! (busy + queued) / (replicas x slots), like azureml-fe, by the one replica that holds the
//! `infergate-autoscaler` Lease.
//!
//! - [`decide`]: the decision, pure (observations and time in, desired replicas and why out).
//! - [`lease`]: leader election on a `coordination.k8s.io/v1` Lease (compare-and-swap on its
//!   `resourceVersion`).

pub mod decide;
pub mod lease;
