//! The scaling decision (see the crate docs).
