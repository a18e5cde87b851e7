//! Criterion benchmarks of edadm: the bench targets live in `benches/`.
