//! Criterion benches of infergate hot functions live in `benches/`.
