//! Leader election on a Lease (see the crate docs).
