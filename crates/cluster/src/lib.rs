//! Router replicas acting as one: each deployment has an owner replica that admits for it, the
//! others lease slots from it over authenticated peer connections, and a new owner rebuilds the
//! busy slots from the live replicas' reports before admitting anything.
//!
//! [`core`] is the protocol without I/O (model-tested with delays, losses, duplicates, crashes
//! and partitions); [`runtime`] runs it over TCP; [`wire`] is the frame format.

pub mod core;
pub mod runtime;
pub mod wire;

pub use runtime::{Cluster, ClusterError, ClusterLease, DepHandle, Deployments, Options};
