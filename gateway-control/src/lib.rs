//! # gateway-control
//!
//! The control channel between gateways and the server. (Implementation in progress: this crate
//! has no public API yet.)

#![forbid(unsafe_code)]
