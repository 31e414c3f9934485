//! # gateway-policy
//!
//! Versioned, checksummed policies from publish to applied. (Implementation in progress: this
//! crate has no public API yet.)

#![forbid(unsafe_code)]
