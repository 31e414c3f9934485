//! Example binaries assembling the agent gateway crates. (The `server`, `gateway`,
//! `agent-sim` and `demo` binaries are being written: this package has none yet.)

#![forbid(unsafe_code)]
