//! # gateway-uplink
//!
//! The retrying HTTPS uplink (buffer → server) and the idempotent ingest receiver for
//! `POST /v1/records`. (Implementation in progress: this crate has no public API yet.)

#![forbid(unsafe_code)]
