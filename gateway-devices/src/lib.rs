//! # gateway-devices
//!
//! Device adapters, the device command lifecycle and the Hikvision ISAPI adapter.
//! (Implementation in progress: this crate has no public API yet.)

#![forbid(unsafe_code)]
