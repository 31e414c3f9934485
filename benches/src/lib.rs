//! Criterion benchmarks for the agent gateway crates; run with `cargo bench -p gateway-benches`.

#![forbid(unsafe_code)]
