//! ISAPI documents: parsers for what devices send, builders for what they expect.
//!
//! Every parser matches elements by local name and ignores namespaces, treats every field it
//! can as optional (devices differ by model and firmware), and returns an [`Error::Protocol`]
//! instead of panicking on anything else.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::xml::{self, Element};
use crate::time::{DeviceDateTime, PosixTimeZone, parse_datetime, parse_posix_tz};
use crate::{DeviceError, Error, Lockout};

/// The namespace kept in request bodies (one device is reported to refuse bodies without it).
pub const ISAPI_NAMESPACE: &str = "http://www.isapi.org/ver20/XMLSchema";

fn root_named(text: &str, name: &str) -> Result<Element, Error> {
    let root = xml::parse(text)?;
    if root.name != name {
        return Err(Error::protocol(format!(
            "expected a <{name}> document, got <{}>",
            root.name
        )));
    }
    Ok(root)
}

/// `GET /ISAPI/System/deviceInfo`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// `deviceName`.
    pub device_name: Option<String>,
    /// `deviceID` ("255" on access terminals, a UUID on cameras and NVRs).
    pub device_id: Option<String>,
    /// `model` (required).
    pub model: String,
    /// `serialNumber`.
    pub serial_number: Option<String>,
    /// `macAddress`.
    pub mac_address: Option<String>,
    /// `firmwareVersion`.
    pub firmware_version: Option<String>,
    /// `firmwareReleasedDate` (`build 240102`).
    pub firmware_released_date: Option<String>,
    /// `deviceType` (`ACS`, `VIS`, `IPCamera`, `NVR`).
    pub device_type: Option<String>,
    /// `subDeviceType` (`accessControlTerminal`, `villaDoorStation`).
    pub sub_device_type: Option<String>,
    /// `manufacturer`.
    pub manufacturer: Option<String>,
    /// Every other non-empty leaf element, by local name (`electroLockNum`, `OEMCode`, ...).
    pub other: BTreeMap<String, String>,
}

impl DeviceInfo {
    /// The firmware with its build date, as one string (`V1.2.7 build 240102`).
    pub fn firmware(&self) -> String {
        match (&self.firmware_version, &self.firmware_released_date) {
            (Some(v), Some(d)) => format!("{v} {d}"),
            (Some(v), None) => v.clone(),
            (None, Some(d)) => d.clone(),
            (None, None) => String::new(),
        }
    }
}

/// Parse a `DeviceInfo` document.
pub fn parse_device_info(text: &str) -> Result<DeviceInfo, Error> {
    let root = root_named(text, "DeviceInfo")?;
    let get = |name: &str| root.child_text(name).map(str::to_string);
    let model = get("model").ok_or_else(|| Error::protocol("DeviceInfo has no <model>"))?;
    const KNOWN: &[&str] = &[
        "deviceName",
        "deviceID",
        "model",
        "serialNumber",
        "macAddress",
        "firmwareVersion",
        "firmwareReleasedDate",
        "deviceType",
        "subDeviceType",
        "manufacturer",
    ];
    let other = root
        .children
        .iter()
        .filter(|c| c.children.is_empty() && !KNOWN.contains(&c.name.as_str()))
        .filter_map(|c| {
            let text = c.text.trim();
            (!text.is_empty()).then(|| (c.name.clone(), text.to_string()))
        })
        .collect();
    Ok(DeviceInfo {
        device_name: get("deviceName"),
        device_id: get("deviceID"),
        model,
        serial_number: get("serialNumber"),
        mac_address: get("macAddress"),
        firmware_version: get("firmwareVersion"),
        firmware_released_date: get("firmwareReleasedDate"),
        device_type: get("deviceType"),
        sub_device_type: get("subDeviceType"),
        manufacturer: get("manufacturer"),
        other,
    })
}

/// `GET /ISAPI/System/time`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceTime {
    /// `timeMode` (`manual`, `NTP`).
    pub time_mode: Option<String>,
    /// `localTime` as sent (`2026-05-29T15:33:42+04:00`).
    pub local_time: String,
    /// `localTime` parsed, when it parses.
    pub parsed: Option<DeviceDateTime>,
    /// `timeZone` as sent (`CST-4:00:00`).
    pub time_zone: Option<String>,
    /// `timeZone` parsed; its offset has the POSIX sign inverted back (`CST-4:00:00` → +4 h).
    pub posix_time_zone: Option<PosixTimeZone>,
}

/// Parse a `Time` document.
pub fn parse_time(text: &str) -> Result<DeviceTime, Error> {
    let root = root_named(text, "Time")?;
    let local_time = root
        .child_text("localTime")
        .ok_or_else(|| Error::protocol("Time has no <localTime>"))?
        .to_string();
    let time_zone = root.child_text("timeZone").map(str::to_string);
    Ok(DeviceTime {
        time_mode: root.child_text("timeMode").map(str::to_string),
        parsed: parse_datetime(&local_time),
        posix_time_zone: time_zone.as_deref().and_then(parse_posix_tz),
        local_time,
        time_zone,
    })
}

/// A `ResponseStatus`, in XML or JSON.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResponseStatus {
    /// `requestURL`.
    pub request_url: Option<String>,
    /// `statusCode`: 1 OK, 2 Device Busy, 3 Device Error, 4 Invalid Operation, 5 Invalid XML
    /// Format, 6 Invalid XML Content, 7 Reboot Required.
    pub status_code: Option<i64>,
    /// `statusString` (`Invalid Operation`); absent on some success answers.
    pub status_string: Option<String>,
    /// `subStatusCode` (`invalidOperation`, `badJsonContent`, ...).
    pub sub_status_code: Option<String>,
    /// `errorCode` (JSON answers).
    pub error_code: Option<i64>,
    /// `errorMsg` (JSON answers; names the offending field).
    pub error_msg: Option<String>,
}

impl ResponseStatus {
    /// True for `statusCode` 1.
    pub fn is_ok(&self) -> bool {
        self.status_code == Some(1)
    }

    /// The device's error, in its own words.
    pub fn to_device_error(&self, http_status: u16) -> DeviceError {
        let message = self
            .error_msg
            .clone()
            .or_else(|| self.status_string.clone())
            .or_else(|| self.sub_status_code.clone())
            .unwrap_or_else(|| status_code_meaning(self.status_code).to_string());
        DeviceError {
            http_status: Some(http_status),
            code: self.status_code.map(|c| c.to_string()),
            sub_code: self.sub_status_code.clone(),
            message,
        }
    }
}

/// The documented meaning of an ISAPI `statusCode`.
pub fn status_code_meaning(code: Option<i64>) -> &'static str {
    match code {
        Some(1) => "OK",
        Some(2) => "Device Busy",
        Some(3) => "Device Error",
        Some(4) => "Invalid Operation",
        Some(5) => "Invalid XML Format",
        Some(6) => "Invalid Content",
        Some(7) => "Reboot Required",
        _ => "unknown status",
    }
}

/// Parse an XML `ResponseStatus` document.
pub fn parse_response_status_xml(text: &str) -> Result<ResponseStatus, Error> {
    let root = root_named(text, "ResponseStatus")?;
    let get = |name: &str| root.child_text(name).map(str::to_string);
    let number = |name: &str| root.child_text(name).and_then(|t| t.parse::<i64>().ok());
    let status = ResponseStatus {
        request_url: get("requestURL"),
        status_code: number("statusCode"),
        status_string: get("statusString"),
        sub_status_code: get("subStatusCode"),
        error_code: number("errorCode"),
        error_msg: get("errorMsg"),
    };
    if status.status_code.is_none() && status.sub_status_code.is_none() {
        return Err(Error::protocol(
            "ResponseStatus has neither statusCode nor subStatusCode",
        ));
    }
    Ok(status)
}

/// Parse a JSON `ResponseStatus` (`{"statusCode": 1, ...}`, also wrapped as
/// `{"ResponseStatus": {...}}`).
pub fn parse_response_status_json(bytes: &[u8]) -> Result<ResponseStatus, Error> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| Error::protocol(format!("malformed JSON: {e}")))?;
    let object = value
        .get("ResponseStatus")
        .unwrap_or(&value)
        .as_object()
        .ok_or_else(|| Error::protocol("a JSON ResponseStatus must be an object"))?;
    let text = |name: &str| {
        object
            .get(name)
            .and_then(Value::as_str)
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_string)
    };
    let status = ResponseStatus {
        request_url: text("requestURL"),
        status_code: object.get("statusCode").and_then(json_i64),
        status_string: text("statusString"),
        sub_status_code: text("subStatusCode"),
        error_code: object.get("errorCode").and_then(json_i64),
        error_msg: text("errorMsg"),
    };
    if status.status_code.is_none() && status.sub_status_code.is_none() {
        return Err(Error::protocol(
            "JSON answer has neither statusCode nor subStatusCode",
        ));
    }
    Ok(status)
}

/// Parse a `ResponseStatus` in whichever form the body is (JSON when it starts with `{`).
pub fn parse_response_status(bytes: &[u8]) -> Result<ResponseStatus, Error> {
    let trimmed = trim_ascii_start(bytes);
    if trimmed.first() == Some(&b'{') {
        parse_response_status_json(trimmed)
    } else {
        parse_response_status_xml(&String::from_utf8_lossy(bytes))
    }
}

/// An integer that may come as a JSON number or a numeric string.
pub(crate) fn json_i64(value: &Value) -> Option<i64> {
    match value {
        Value::Number(n) => n.as_i64(),
        Value::String(s) => s.trim().parse().ok(),
        _ => None,
    }
}

pub(crate) fn trim_ascii_start(bytes: &[u8]) -> &[u8] {
    let start = bytes
        .iter()
        .position(|b| !b.is_ascii_whitespace())
        .unwrap_or(bytes.len());
    // A UTF-8 byte order mark before JSON.
    bytes[start..]
        .strip_prefix(b"\xEF\xBB\xBF")
        .unwrap_or(&bytes[start..])
}

/// `GET /ISAPI/AccessControl/RemoteControl/door/capabilities`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DoorCapabilities {
    /// Lowest door number (`doorNo min`).
    pub door_min: Option<u32>,
    /// Highest door number (`doorNo max`).
    pub door_max: Option<u32>,
    /// Accepted `cmd` values (`cmd opt`), as the device spells them.
    pub commands: Option<Vec<String>>,
}

/// Parse a `RemoteControlDoor` capabilities document.
pub fn parse_door_capabilities(text: &str) -> Result<DoorCapabilities, Error> {
    let root = root_named(text, "RemoteControlDoor")?;
    let door = root.child("doorNo");
    let bound = |name: &str| {
        door.and_then(|d| d.attribute(name))
            .and_then(|v| v.trim().parse::<u32>().ok())
    };
    let commands = root
        .child("cmd")
        .and_then(|c| c.attribute("opt"))
        .map(|opt| {
            opt.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
                .collect()
        });
    Ok(DoorCapabilities {
        door_min: bound("min"),
        door_max: bound("max"),
        commands,
    })
}

/// The `RemoteControlDoor` body for `PUT /ISAPI/AccessControl/RemoteControl/door/{n}`, with the
/// ISAPI namespace kept. `cmd` is the ISAPI spelling (`open`, `close`, `alwaysOpen`,
/// `alwaysClose`).
pub fn remote_control_door_body(cmd: &str) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<RemoteControlDoor version=\"2.0\" xmlns=\"{ISAPI_NAMESPACE}\"><cmd>{}</cmd></RemoteControlDoor>",
        xml::escape(cmd)
    )
}

/// Read the `cmd` of a `RemoteControlDoor` body (the simulator's side).
pub fn parse_remote_control_door(text: &str) -> Result<String, Error> {
    let root = root_named(text, "RemoteControlDoor")?;
    root.child_text("cmd")
        .map(str::to_string)
        .ok_or_else(|| Error::protocol("RemoteControlDoor has no <cmd>"))
}

/// The body of a 401 answer: `<userCheck>`, with lockout fields on newer firmware.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UserCheck {
    /// `statusValue` (401).
    pub status_value: Option<i64>,
    /// `statusString` (`Unauthorized`).
    pub status_string: Option<String>,
    /// `lockStatus` (`lock` / `unlock`).
    pub lock_status: Option<String>,
    /// `unlockTime`: seconds until the lock ends.
    pub unlock_time: Option<u64>,
    /// `retryLoginTime`: wrong logins left.
    pub retry_login_time: Option<u64>,
    /// `isIllegalLogin`.
    pub is_illegal_login: Option<bool>,
}

impl UserCheck {
    /// The lockout facts, when the body had any.
    pub fn lockout(&self) -> Option<Lockout> {
        if self.lock_status.is_none()
            && self.unlock_time.is_none()
            && self.retry_login_time.is_none()
        {
            return None;
        }
        Some(Lockout {
            locked: self
                .lock_status
                .as_deref()
                .is_some_and(|s| s.eq_ignore_ascii_case("lock")),
            unlock_in_secs: self.unlock_time,
            retries_left: self.retry_login_time,
        })
    }
}

/// Parse a `userCheck` document.
pub fn parse_user_check(text: &str) -> Result<UserCheck, Error> {
    let root = root_named(text, "userCheck")?;
    let number = |name: &str| root.child_text(name).and_then(|t| t.parse::<u64>().ok());
    Ok(UserCheck {
        status_value: root.child_text("statusValue").and_then(|t| t.parse().ok()),
        status_string: root.child_text("statusString").map(str::to_string),
        lock_status: root.child_text("lockStatus").map(str::to_string),
        unlock_time: number("unlockTime"),
        retry_login_time: number("retryLoginTime"),
        is_illegal_login: root
            .child_text("isIllegalLogin")
            .map(|t| t.eq_ignore_ascii_case("true")),
    })
}

/// The `userCheck` body the simulator sends with a 401.
pub fn user_check_body(lock: Option<&Lockout>) -> String {
    let mut body = String::from(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\n<userCheck>\n<statusValue>401</statusValue>\n<statusString>Unauthorized</statusString>\n",
    );
    if let Some(lock) = lock {
        body.push_str(&format!(
            "<lockStatus>{}</lockStatus>\n<unlockTime>{}</unlockTime>\n<retryLoginTime>{}</retryLoginTime>\n",
            if lock.locked { "lock" } else { "unlock" },
            lock.unlock_in_secs.unwrap_or(0),
            lock.retries_left.unwrap_or(0)
        ));
    }
    body.push_str("</userCheck>\n");
    body
}

/// An XML `ResponseStatus` body (the simulator's answers).
pub fn response_status_xml(
    request_url: &str,
    status_code: i64,
    status_string: &str,
    sub_status_code: &str,
) -> String {
    format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<ResponseStatus version=\"2.0\" xmlns=\"{ISAPI_NAMESPACE}\">\n<requestURL>{}</requestURL>\n<statusCode>{status_code}</statusCode>\n<statusString>{}</statusString>\n<subStatusCode>{}</subStatusCode>\n</ResponseStatus>\n",
        xml::escape(request_url),
        xml::escape(status_string),
        xml::escape(sub_status_code)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn door_body_keeps_the_namespace_and_round_trips() {
        let body = remote_control_door_body("alwaysOpen");
        assert!(body.contains(r#"xmlns="http://www.isapi.org/ver20/XMLSchema""#));
        assert_eq!(parse_remote_control_door(&body).unwrap(), "alwaysOpen");
    }

    #[test]
    fn response_status_in_both_forms() {
        let xml = response_status_xml(
            "/ISAPI/System/reboot",
            4,
            "Invalid Operation",
            "invalidOperation",
        );
        let status = parse_response_status(xml.as_bytes()).unwrap();
        assert_eq!(status.status_code, Some(4));
        let error = status.to_device_error(403);
        assert_eq!(error.message, "Invalid Operation");
        let json = br#" {"statusCode":"6","statusString":"Invalid Content","subStatusCode":"badJsonContent","errorCode":1610612737,"errorMsg":"startTime"}"#;
        let status = parse_response_status(json).unwrap();
        assert_eq!(status.status_code, Some(6));
        assert_eq!(status.to_device_error(400).message, "startTime");
        assert!(parse_response_status(b"{}").is_err());
        assert!(parse_response_status(b"<DeviceInfo/>").is_err());
    }

    #[test]
    fn user_check_lockout_round_trips() {
        let lock = Lockout {
            locked: true,
            unlock_in_secs: Some(1800),
            retries_left: Some(0),
        };
        let parsed = parse_user_check(&user_check_body(Some(&lock))).unwrap();
        assert_eq!(parsed.lockout(), Some(lock));
        assert_eq!(
            parse_user_check(&user_check_body(None)).unwrap().lockout(),
            None
        );
    }
}
