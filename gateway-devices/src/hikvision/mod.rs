//! Hikvision devices over ISAPI (HTTP or HTTPS with Digest authentication).
//!
//! | command | request |
//! |---|---|
//! | `info` | `GET /ISAPI/System/deviceInfo` (XML `DeviceInfo`) |
//! | `time` | `GET /ISAPI/System/time` (XML `Time`; `timeZone` is POSIX, sign inverted) |
//! | `reboot` | `PUT /ISAPI/System/reboot` |
//! | `door` | `PUT /ISAPI/AccessControl/RemoteControl/door/{n}` with `<RemoteControlDoor><cmd>open</cmd></RemoteControlDoor>` (`close`, `alwaysOpen`, `alwaysClose`), after checking `door/capabilities` when the device has it |
//! | events | `POST /ISAPI/AccessControl/AcsEvent?format=json`, paged by `searchResultPosition` while the device answers `MORE` |
//!
//! Device errors keep the device's words: a `ResponseStatus` (XML or JSON) becomes an
//! [`crate::Error::Device`] with `statusCode`, `subStatusCode` and `errorMsg` (or
//! `statusString`). The `statusCode` decides, not the HTTP status: devices send statusCode 4
//! with HTTP 403 and `badJsonContent` with HTTP 400, but also errors with HTTP 200.
//!
//! The parsers in [`isapi`] and [`acs`] are public for integrators who need more endpoints.

pub mod acs;
mod adapter;
mod client;
mod config;
pub mod isapi;
pub mod xml;

pub use adapter::{HikvisionAdapter, HikvisionFactory, KIND, isapi_door_cmd, paths};
pub use config::{EventOptions, EventStart, HikvisionConfig};
