//! # gateway-buffer
//!
//! A durable SQLite store-and-forward queue of records for edge gateways. (Implementation in
//! progress: this crate has no public API yet.)

#![forbid(unsafe_code)]
