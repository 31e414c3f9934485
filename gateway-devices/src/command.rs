//! The device command vocabulary: what the control channel can ask a device to do.
//!
//! A control-channel [`gateway_proto::Command`] carries a `kind`, an optional `target` and a JSON
//! `payload`. Every kind starting with `device.` belongs to this crate;
//! [`DeviceRequest::from_control`] turns one into a device id and a typed [`DeviceCommand`], or a
//! typed [`Error`] naming the offending field, before anything is sent.
//!
//! ## Kinds and payloads (stable)
//!
//! The device is named by the frame's `target` or by a `"device_id"` field in the payload (when
//! both are given they must agree). Payloads are JSON objects; unknown fields are refused, so a
//! typo never runs a different command than the one meant. `null` counts as `{}`.
//!
//! | kind | payload | command | idempotent |
//! |---|---|---|---|
//! | `device.info` | `{}` | [`DeviceCommand::Info`]: vendor, model, serial, firmware | yes |
//! | `device.time` | `{}` | [`DeviceCommand::Time`]: the device's clock and time zone | yes |
//! | `device.reboot` | `{}` | [`DeviceCommand::Reboot`] | no |
//! | `device.door` | `{"door": 1, "action": "open"}` | [`DeviceCommand::Door`] | per action |
//! | `device.door.open` | `{"door": 1}` | door `open` (a momentary unlock) | no |
//! | `device.door.close` | `{"door": 1}` | door `close` | yes |
//! | `device.door.always_open` | `{"door": 1}` | door `always_open` (stays unlocked) | yes |
//! | `device.door.always_close` | `{"door": 1}` | door `always_close` (stays locked) | yes |
//! | `device.command` | `{"command": "door", "door": 1, "action": "open"}` | the generic form of all of the above: `command` is `info`, `time`, `reboot`, `door`, or an adapter's custom command name | as named |
//! | `device.custom.<name>` | any JSON object | [`DeviceCommand::Custom`] for adapters that offer more | as the adapter declares |
//!
//! `door` is a door number from 1; `action` is `open`, `close`, `always_open` or `always_close`
//! (ISAPI's `alwaysOpen` / `alwaysClose` spellings are accepted too).
//!
//! Example, as the server sends it:
//!
//! ```json
//! {"type": "command", "id": "0190f5c2-...", "kind": "device.door.open",
//!  "target": "front-door", "payload": {"door": 1}}
//! ```
//!
//! or, equivalently, `"kind": "device.command"` with
//! `"payload": {"device_id": "front-door", "command": "door", "door": 1, "action": "open"}`.
//!
//! Whether a device offers a command is the adapter's answer ([`crate::DeviceAdapter::commands`]);
//! the registry refuses unsupported commands with [`Error::UnsupportedCommand`].

use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::Error;

/// Prefix of every control-channel kind this crate handles.
pub const KIND_PREFIX: &str = "device.";

/// Every fixed kind, in the order of the table above (`device.custom.<name>` comes on top).
pub const KINDS: &[&str] = &[
    "device.info",
    "device.time",
    "device.reboot",
    "device.door",
    "device.door.open",
    "device.door.close",
    "device.door.always_open",
    "device.door.always_close",
    "device.command",
];

/// What to do to a door.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DoorAction {
    /// Unlock once; the lock closes again by itself after the device's open duration.
    Open,
    /// Lock now.
    Close,
    /// Keep unlocked until told otherwise.
    AlwaysOpen,
    /// Keep locked until told otherwise (cards and faces no longer open it).
    AlwaysClose,
}

impl DoorAction {
    /// All actions.
    pub const ALL: [DoorAction; 4] = [
        DoorAction::Open,
        DoorAction::Close,
        DoorAction::AlwaysOpen,
        DoorAction::AlwaysClose,
    ];

    /// The snake_case name used in payloads.
    pub fn as_str(&self) -> &'static str {
        match self {
            DoorAction::Open => "open",
            DoorAction::Close => "close",
            DoorAction::AlwaysOpen => "always_open",
            DoorAction::AlwaysClose => "always_close",
        }
    }

    /// Parse a payload name: snake_case, or the ISAPI camelCase spelling.
    pub fn parse(text: &str) -> Option<DoorAction> {
        match text {
            "open" => Some(DoorAction::Open),
            "close" => Some(DoorAction::Close),
            "always_open" | "alwaysOpen" => Some(DoorAction::AlwaysOpen),
            "always_close" | "alwaysClose" => Some(DoorAction::AlwaysClose),
            _ => None,
        }
    }

    /// True when sending it twice has the same effect as once (everything but `open`, which
    /// unlocks the door once more).
    pub fn is_idempotent(&self) -> bool {
        !matches!(self, DoorAction::Open)
    }
}

impl fmt::Display for DoorAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A command for one device, already checked for shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case")]
pub enum DeviceCommand {
    /// Read what the device is: vendor, model, serial, firmware.
    Info,
    /// Read the device's clock and time zone.
    Time,
    /// Restart the device. It drops off the network for a while afterwards.
    Reboot,
    /// Act on a door.
    Door {
        /// Door number, from 1.
        door: u32,
        /// What to do.
        action: DoorAction,
    },
    /// A command only some adapters offer; the adapter checks the payload.
    Custom {
        /// The command's name, as the adapter lists it in [`crate::DeviceAdapter::commands`].
        name: String,
        /// Its arguments (a JSON object).
        payload: Value,
    },
}

impl DeviceCommand {
    /// The command's name: `info`, `time`, `reboot`, `door` or the custom name. Adapters list
    /// the names they support in [`crate::DeviceAdapter::commands`].
    pub fn name(&self) -> &str {
        match self {
            DeviceCommand::Info => "info",
            DeviceCommand::Time => "time",
            DeviceCommand::Reboot => "reboot",
            DeviceCommand::Door { .. } => "door",
            DeviceCommand::Custom { name, .. } => name,
        }
    }

    /// Parse a control-channel `kind` and `payload` (see the module docs for the table). The
    /// payload's `device_id` field, if any, is allowed and ignored here; use
    /// [`DeviceRequest::from_control`] to get it.
    pub fn parse(kind: &str, payload: &Value) -> Result<DeviceCommand, Error> {
        let fields = PayloadFields::new(kind, payload)?;
        parse_with(kind, fields)
    }
}

fn parse_with(kind: &str, mut fields: PayloadFields) -> Result<DeviceCommand, Error> {
    let command = match kind {
        "device.info" => DeviceCommand::Info,
        "device.time" => DeviceCommand::Time,
        "device.reboot" => DeviceCommand::Reboot,
        "device.door" => door_command(&mut fields, None)?,
        "device.door.open" => door_command(&mut fields, Some(DoorAction::Open))?,
        "device.door.close" => door_command(&mut fields, Some(DoorAction::Close))?,
        "device.door.always_open" => door_command(&mut fields, Some(DoorAction::AlwaysOpen))?,
        "device.door.always_close" => door_command(&mut fields, Some(DoorAction::AlwaysClose))?,
        "device.command" => {
            let name = fields.take_string("command")?;
            match name.as_str() {
                "info" => DeviceCommand::Info,
                "time" => DeviceCommand::Time,
                "reboot" => DeviceCommand::Reboot,
                "door" => door_command(&mut fields, None)?,
                _ => custom_command(kind, name, fields.take_rest())?,
            }
        }
        _ => match kind.strip_prefix("device.custom.") {
            Some(name) => custom_command(kind, name.to_string(), fields.take_rest())?,
            None => {
                return Err(Error::UnknownCommandKind {
                    kind: kind.to_string(),
                    expected: format!("{}, device.custom.<name>", KINDS.join(", ")),
                });
            }
        },
    };
    fields.finish()?;
    Ok(command)
}

fn door_command(
    fields: &mut PayloadFields,
    fixed: Option<DoorAction>,
) -> Result<DeviceCommand, Error> {
    let door = fields.take_door()?;
    let action = match fixed {
        Some(action) => action,
        None => {
            let text = fields.take_string("action")?;
            DoorAction::parse(&text).ok_or_else(|| {
                Error::payload(
                    &fields.kind,
                    "action",
                    format!("`{text}` is not a door action; expected open, close, always_open or always_close"),
                )
            })?
        }
    };
    Ok(DeviceCommand::Door { door, action })
}

fn custom_command(kind: &str, name: String, payload: Value) -> Result<DeviceCommand, Error> {
    let valid = !name.is_empty()
        && name.len() <= 64
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
    if !valid {
        return Err(Error::payload(
            kind,
            "command",
            format!(
                "`{name}` is not a command name (1 to 64 characters of letters, digits, `_`, `-`, `.`)"
            ),
        ));
    }
    Ok(DeviceCommand::Custom { name, payload })
}

/// A device id and the command for it: what the registry executes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeviceRequest {
    /// The device's id in the registry.
    pub device_id: String,
    /// What to do.
    pub command: DeviceCommand,
}

impl DeviceRequest {
    /// A request.
    pub fn new(device_id: impl Into<String>, command: DeviceCommand) -> Self {
        DeviceRequest {
            device_id: device_id.into(),
            command,
        }
    }

    /// Parse a control-channel command: `kind`, `target` (the frame's target, if any) and
    /// `payload`. The device id comes from `target` or from the payload's `device_id` field.
    ///
    /// ```
    /// use gateway_devices::{DeviceCommand, DeviceRequest, DoorAction};
    /// use serde_json::json;
    ///
    /// let request = DeviceRequest::from_control(
    ///     "device.command",
    ///     None,
    ///     &json!({"device_id": "front-door", "command": "door", "door": 1, "action": "open"}),
    /// ).unwrap();
    /// assert_eq!(request.device_id, "front-door");
    /// assert_eq!(request.command, DeviceCommand::Door { door: 1, action: DoorAction::Open });
    ///
    /// // Typos are refused before anything is sent.
    /// let err = DeviceRequest::from_control("device.door.open", Some("front-door"), &json!({"dor": 1}));
    /// assert!(err.unwrap_err().to_string().contains("dor"));
    /// ```
    pub fn from_control(
        kind: &str,
        target: Option<&str>,
        payload: &Value,
    ) -> Result<DeviceRequest, Error> {
        let mut fields = PayloadFields::new(kind, payload)?;
        let from_payload = fields.take_optional_string("device_id")?;
        let device_id = match (target, from_payload) {
            (Some(t), Some(p)) if t != p => {
                return Err(Error::payload(
                    kind,
                    "device_id",
                    format!("`{p}` differs from the command's target `{t}`"),
                ));
            }
            (Some(t), _) => t.to_string(),
            (None, Some(p)) => p,
            (None, None) => {
                return Err(Error::payload(
                    kind,
                    "device_id",
                    "missing: name the device in the command's target or in the payload",
                ));
            }
        };
        if device_id.is_empty() {
            return Err(Error::payload(kind, "device_id", "must not be empty"));
        }
        let command = parse_with(kind, fields)?;
        Ok(DeviceRequest { device_id, command })
    }
}

/// True when a control-channel kind belongs to this crate (starts with `device.`).
pub fn is_device_kind(kind: &str) -> bool {
    kind.starts_with(KIND_PREFIX)
}

/// A payload object being taken apart field by field; what is left over is an error.
struct PayloadFields {
    kind: String,
    map: Map<String, Value>,
}

impl PayloadFields {
    fn new(kind: &str, payload: &Value) -> Result<Self, Error> {
        let map = match payload {
            Value::Null => Map::new(),
            Value::Object(map) => map.clone(),
            other => {
                return Err(Error::payload(
                    kind,
                    "payload",
                    format!("must be a JSON object, got {}", json_type(other)),
                ));
            }
        };
        Ok(PayloadFields {
            kind: kind.to_string(),
            map,
        })
    }

    fn take_optional_string(&mut self, field: &str) -> Result<Option<String>, Error> {
        match self.map.remove(field) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(other) => Err(Error::payload(
                &self.kind,
                field,
                format!("must be a string, got {}", json_type(&other)),
            )),
        }
    }

    fn take_string(&mut self, field: &str) -> Result<String, Error> {
        match self.take_optional_string(field)? {
            Some(value) => Ok(value),
            None => Err(self.missing(field, "missing")),
        }
    }

    /// A missing-field error that also names the fields given instead (typos).
    fn missing(&self, field: &str, reason: &str) -> Error {
        let others: Vec<&str> = self.map.keys().map(String::as_str).collect();
        let reason = if others.is_empty() {
            reason.to_string()
        } else {
            format!(
                "{reason}; the payload has unknown field(s) `{}`",
                others.join("`, `")
            )
        };
        Error::payload(&self.kind, field, reason)
    }

    fn take_door(&mut self) -> Result<u32, Error> {
        let Some(value) = self.map.remove("door") else {
            return Err(self.missing("door", "missing: give a door number from 1"));
        };
        value
            .as_u64()
            .and_then(|n| u32::try_from(n).ok())
            .filter(|n| *n >= 1)
            .ok_or_else(|| {
                Error::payload(
                    &self.kind,
                    "door",
                    format!("must be a door number from 1, got {value}"),
                )
            })
    }

    /// Everything not taken yet, as the payload of a custom command.
    fn take_rest(&mut self) -> Value {
        Value::Object(std::mem::take(&mut self.map))
    }

    fn finish(self) -> Result<(), Error> {
        match self.map.keys().next() {
            None => Ok(()),
            Some(field) => Err(Error::payload(
                &self.kind,
                field.as_str(),
                "unknown field for this command",
            )),
        }
    }
}

fn json_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn every_fixed_kind_parses() {
        let cases = [
            ("device.info", json!({}), DeviceCommand::Info),
            ("device.time", Value::Null, DeviceCommand::Time),
            ("device.reboot", json!({}), DeviceCommand::Reboot),
            (
                "device.door",
                json!({"door": 2, "action": "alwaysOpen"}),
                DeviceCommand::Door {
                    door: 2,
                    action: DoorAction::AlwaysOpen,
                },
            ),
            (
                "device.door.open",
                json!({"door": 1}),
                DeviceCommand::Door {
                    door: 1,
                    action: DoorAction::Open,
                },
            ),
            (
                "device.door.close",
                json!({"door": 1}),
                DeviceCommand::Door {
                    door: 1,
                    action: DoorAction::Close,
                },
            ),
            (
                "device.door.always_open",
                json!({"door": 3}),
                DeviceCommand::Door {
                    door: 3,
                    action: DoorAction::AlwaysOpen,
                },
            ),
            (
                "device.door.always_close",
                json!({"door": 3}),
                DeviceCommand::Door {
                    door: 3,
                    action: DoorAction::AlwaysClose,
                },
            ),
            (
                "device.command",
                json!({"command": "door", "door": 1, "action": "always_close"}),
                DeviceCommand::Door {
                    door: 1,
                    action: DoorAction::AlwaysClose,
                },
            ),
            (
                "device.command",
                json!({"command": "info"}),
                DeviceCommand::Info,
            ),
            (
                "device.custom.snapshot",
                json!({"channel": 101}),
                DeviceCommand::Custom {
                    name: "snapshot".into(),
                    payload: json!({"channel": 101}),
                },
            ),
            (
                "device.command",
                json!({"command": "snapshot", "channel": 101}),
                DeviceCommand::Custom {
                    name: "snapshot".into(),
                    payload: json!({"channel": 101}),
                },
            ),
        ];
        for (kind, payload, expected) in cases {
            assert_eq!(
                DeviceCommand::parse(kind, &payload).unwrap(),
                expected,
                "{kind}"
            );
        }
        for kind in KINDS {
            assert!(is_device_kind(kind));
        }
    }

    #[test]
    fn bad_payloads_name_the_field() {
        let cases = [
            ("device.door.open", json!({}), "door"),
            ("device.door.open", json!({"door": 0}), "door"),
            ("device.door.open", json!({"door": "1"}), "door"),
            ("device.door.open", json!({"door": 1.5}), "door"),
            (
                "device.door.open",
                json!({"door": 1, "extra": true}),
                "extra",
            ),
            ("device.door", json!({"door": 1}), "action"),
            (
                "device.door",
                json!({"door": 1, "action": "explode"}),
                "action",
            ),
            ("device.reboot", json!({"force": true}), "force"),
            ("device.info", json!([1]), "payload"),
            ("device.command", json!({}), "command"),
            ("device.command", json!({"command": "bad name!"}), "command"),
        ];
        for (kind, payload, field) in cases {
            match DeviceCommand::parse(kind, &payload) {
                Err(Error::InvalidPayload { field: f, .. }) => {
                    assert_eq!(f, field, "{kind} {payload}")
                }
                other => panic!("{kind} {payload}: expected InvalidPayload, got {other:?}"),
            }
        }
        assert!(matches!(
            DeviceCommand::parse("device.explode", &json!({})),
            Err(Error::UnknownCommandKind { .. })
        ));
    }

    #[test]
    fn device_id_comes_from_target_or_payload() {
        let r = DeviceRequest::from_control("device.info", Some("a"), &json!({})).unwrap();
        assert_eq!(r.device_id, "a");
        let r =
            DeviceRequest::from_control("device.info", None, &json!({"device_id": "b"})).unwrap();
        assert_eq!(r.device_id, "b");
        let r = DeviceRequest::from_control("device.info", Some("a"), &json!({"device_id": "a"}))
            .unwrap();
        assert_eq!(r.device_id, "a");
        for (target, payload) in [
            (Some("a"), json!({"device_id": "b"})),
            (None, json!({})),
            (None, json!({"device_id": ""})),
            (None, json!({"device_id": 7})),
        ] {
            assert!(matches!(
                DeviceRequest::from_control("device.info", target, &payload),
                Err(Error::InvalidPayload { ref field, .. }) if field == "device_id"
            ));
        }
    }

    #[test]
    fn commands_serialize_with_their_name() {
        let door = DeviceCommand::Door {
            door: 1,
            action: DoorAction::Open,
        };
        assert_eq!(
            serde_json::to_value(&door).unwrap(),
            json!({"command": "door", "door": 1, "action": "open"})
        );
        assert_eq!(door.name(), "door");
        assert!(!DoorAction::Open.is_idempotent());
        assert!(DoorAction::AlwaysClose.is_idempotent());
    }
}
