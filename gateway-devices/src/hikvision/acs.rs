//! Access-control events: `POST /ISAPI/AccessControl/AcsEvent?format=json`, the search
//! envelope it shares with other ISAPI searches, and the mapping of events to records.
//!
//! Facts from real devices this code relies on:
//! * The answer is `{"AcsEvent": {searchID, responseStatusStrg, numOfMatches, totalMatches,
//!   InfoList}}` with keys in any order; `responseStatusStrg` is `OK`, `MORE` or `NO MATCH`,
//!   and with `NO MATCH` the list is absent, not empty.
//! * A page may hold fewer items than asked for; the next page starts at
//!   `searchResultPosition + numOfMatches`.
//! * Only `major`, `minor`, `time` and `serialNo` are on every item; door and system events
//!   have no person fields.

use std::collections::BTreeMap;

use gateway_proto::{Body, JsonText, Record, RecordId};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use sha2::{Digest as _, Sha256};

use super::isapi::{json_i64, trim_ascii_start};
use crate::time::{DeviceDateTime, parse_datetime};
use crate::{Error, EventCursor};

/// `responseStatusStrg` of a search page.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum SearchStatus {
    /// `OK`: this is the last page.
    Ok,
    /// `MORE`: more pages follow.
    More,
    /// `NO MATCH`: nothing matched.
    NoMatch,
    /// Anything else, as sent.
    Other(String),
}

impl SearchStatus {
    fn parse(text: &str) -> SearchStatus {
        match text.trim() {
            t if t.eq_ignore_ascii_case("OK") => SearchStatus::Ok,
            t if t.eq_ignore_ascii_case("MORE") => SearchStatus::More,
            t if t.eq_ignore_ascii_case("NO MATCH") || t.eq_ignore_ascii_case("NOMATCH") => {
                SearchStatus::NoMatch
            }
            other => SearchStatus::Other(other.to_string()),
        }
    }
}

/// One page of an ISAPI JSON search (`AcsEvent`, `CardInfoSearch`, `UserInfoSearch`, ...).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SearchPage {
    /// `searchID`, echoed back.
    pub search_id: Option<String>,
    /// `responseStatusStrg`.
    pub status: SearchStatus,
    /// `numOfMatches`: items on this page (the item count when absent).
    pub num_of_matches: u64,
    /// `totalMatches`.
    pub total_matches: Option<u64>,
    /// The list's items as sent (empty when the list is absent).
    pub items: Vec<Value>,
}

/// Parse a search page: `envelope` is the top-level key (`AcsEvent`), `list` the item array's
/// key (`InfoList`).
pub fn parse_search_page(bytes: &[u8], envelope: &str, list: &str) -> Result<SearchPage, Error> {
    let value: Value = serde_json::from_slice(trim_ascii_start(bytes))
        .map_err(|e| Error::protocol(format!("malformed JSON search answer: {e}")))?;
    let body = value
        .get(envelope)
        .and_then(Value::as_object)
        .ok_or_else(|| Error::protocol(format!("the answer has no `{envelope}` object")))?;
    let status = body
        .get("responseStatusStrg")
        .and_then(Value::as_str)
        .map(SearchStatus::parse)
        .ok_or_else(|| Error::protocol(format!("`{envelope}` has no responseStatusStrg")))?;
    let items = match body.get(list) {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Array(items)) => items.clone(),
        Some(_) => {
            return Err(Error::protocol(format!(
                "`{envelope}.{list}` is not an array"
            )));
        }
    };
    let num_of_matches = body
        .get("numOfMatches")
        .and_then(json_i64)
        .and_then(|n| u64::try_from(n).ok())
        .unwrap_or(items.len() as u64);
    Ok(SearchPage {
        search_id: body
            .get("searchID")
            .and_then(Value::as_str)
            .map(str::to_string),
        status,
        num_of_matches,
        total_matches: body
            .get("totalMatches")
            .and_then(json_i64)
            .and_then(|n| u64::try_from(n).ok()),
        items,
    })
}

/// The request body of one AcsEvent page.
pub fn acs_event_request(
    search_id: &str,
    position: u64,
    max_results: u32,
    start_time: &str,
    end_time: &str,
) -> Value {
    json!({
        "AcsEventCond": {
            "searchID": search_id,
            "searchResultPosition": position,
            "maxResults": max_results,
            "major": 0,
            "minor": 0,
            "startTime": start_time,
            "endTime": end_time,
        }
    })
}

/// The fields every access-control event has.
#[derive(Debug, Clone, PartialEq)]
pub struct AcsEventItem {
    /// `major` (5 = event, 3 = operation, 2 = exception, 1 = alarm).
    pub major: i64,
    /// `minor` (with major 5: 1 card OK, 21 door unlocked, 22 door locked, 75 face OK, ...).
    pub minor: i64,
    /// `time` as sent.
    pub time: String,
    /// `time` parsed.
    pub parsed_time: DeviceDateTime,
    /// `serialNo`, increasing on the device.
    pub serial_no: u64,
    /// The whole item as sent.
    pub raw: Value,
}

impl AcsEventItem {
    /// The ordering key used by cursors: time, then serial number.
    pub fn key(&self) -> (i64, u64) {
        (self.parsed_time.unix_ms, self.serial_no)
    }
}

/// Read the required fields of one `InfoList` item.
pub fn parse_acs_event_item(item: &Value) -> Result<AcsEventItem, Error> {
    let object = item
        .as_object()
        .ok_or_else(|| Error::protocol("an InfoList item is not an object"))?;
    let number = |name: &str| {
        object
            .get(name)
            .and_then(json_i64)
            .ok_or_else(|| Error::protocol(format!("an InfoList item has no numeric `{name}`")))
    };
    let time = object
        .get("time")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::protocol("an InfoList item has no `time`"))?;
    let parsed_time = parse_datetime(time).ok_or_else(|| {
        Error::protocol(format!("an InfoList item has an unreadable time `{time}`"))
    })?;
    let serial_no = u64::try_from(number("serialNo")?)
        .map_err(|_| Error::protocol("an InfoList item has a negative serialNo"))?;
    Ok(AcsEventItem {
        major: number("major")?,
        minor: number("minor")?,
        time: time.to_string(),
        parsed_time,
        serial_no,
        raw: item.clone(),
    })
}

/// A short name for well-known (major, minor) pairs.
pub fn event_name(major: i64, minor: i64) -> Option<&'static str> {
    Some(match (major, minor) {
        (5, 1) => "card_authenticated",
        (5, 8) => "card_no_permission",
        (5, 9) => "card_not_found",
        (5, 21) => "door_unlocked",
        (5, 22) => "door_locked",
        (5, 23) => "door_open_normal",
        (5, 24) => "door_closed_normal",
        (5, 38) => "fingerprint_authenticated",
        (5, 75) => "face_authenticated",
        (5, 76) => "face_authentication_failed",
        (3, 1024) => "remote_open_door",
        (3, 1025) => "remote_close_door",
        (3, 1026) => "remote_always_open",
        (3, 1027) => "remote_always_close",
        _ => return None,
    })
}

/// Where the Hikvision event source stopped: the time and serial number of the last event
/// delivered. Stored as JSON text inside an [`EventCursor`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcsCursor {
    /// Format version (1).
    pub v: u32,
    /// The last event's `time` as the device wrote it; the next search starts there.
    pub time: String,
    /// The last event's time in ms since the epoch.
    pub time_ms: i64,
    /// The last event's `serialNo`.
    pub serial: u64,
}

impl AcsCursor {
    /// The cursor just after this event.
    pub fn after(item: &AcsEventItem) -> Self {
        AcsCursor {
            v: 1,
            time: item.time.clone(),
            time_ms: item.parsed_time.unix_ms,
            serial: item.serial_no,
        }
    }

    /// True when `item` comes after this cursor.
    pub fn precedes(&self, item: &AcsEventItem) -> bool {
        item.key() > (self.time_ms, self.serial)
    }

    /// Wrap as an opaque cursor.
    pub fn to_cursor(&self) -> EventCursor {
        EventCursor::new(serde_json::to_string(self).unwrap_or_default())
    }

    /// Read an opaque cursor.
    pub fn from_cursor(cursor: &EventCursor) -> Result<AcsCursor, Error> {
        let parsed: AcsCursor =
            serde_json::from_str(cursor.as_str()).map_err(|e| Error::InvalidCursor {
                reason: format!("not a Hikvision event cursor: {e}"),
            })?;
        if parsed.v != 1 {
            return Err(Error::InvalidCursor {
                reason: format!("unknown Hikvision cursor version {}", parsed.v),
            });
        }
        if parse_datetime(&parsed.time).is_none() {
            return Err(Error::InvalidCursor {
                reason: format!("unreadable time `{}` in the cursor", parsed.time),
            });
        }
        Ok(parsed)
    }
}

/// Turn an event into a record. The record id is derived from the device id, serial number
/// and time, so a re-read event gets the same id and the store deduplicates it.
pub fn event_record(stream: &str, device_id: &str, item: &AcsEventItem) -> Record {
    let mut attributes = BTreeMap::new();
    attributes.insert("vendor".to_string(), "hikvision".to_string());
    attributes.insert("device_id".to_string(), device_id.to_string());
    attributes.insert("event_type".to_string(), "access_control".to_string());
    attributes.insert("major".to_string(), item.major.to_string());
    attributes.insert("minor".to_string(), item.minor.to_string());
    attributes.insert("serial_no".to_string(), item.serial_no.to_string());
    if let Some(name) = event_name(item.major, item.minor) {
        attributes.insert("event".to_string(), name.to_string());
    }
    if let Some(door) = item.raw.get("doorNo").and_then(json_i64) {
        attributes.insert("door".to_string(), door.to_string());
    }
    if let Some(employee) = item.raw.get("employeeNoString").and_then(Value::as_str) {
        attributes.insert("employee_no".to_string(), employee.to_string());
    }
    let mut record = Record::new(
        stream,
        device_id,
        item.parsed_time.unix_ms,
        Body::Json(JsonText::from_value(&item.raw)),
    );
    record.attributes = attributes;
    record.id = Some(event_record_id(device_id, item));
    record
}

fn event_record_id(device_id: &str, item: &AcsEventItem) -> RecordId {
    let mut hasher = Sha256::new();
    hasher.update(b"hikvision-acs-event\0");
    hasher.update(device_id.as_bytes());
    hasher.update(b"\0");
    hasher.update(item.serial_no.to_be_bytes());
    hasher.update(item.parsed_time.unix_ms.to_be_bytes());
    let digest = hasher.finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    let uuid = uuid::Builder::from_custom_bytes(bytes).into_uuid();
    // A version-8 UUID always has non-zero version bits, so it is never nil.
    RecordId::from_uuid(uuid).unwrap_or_else(RecordId::new_v7)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(serial: u64, time: &str) -> AcsEventItem {
        parse_acs_event_item(
            &json!({"major": 5, "minor": 21, "time": time, "serialNo": serial, "doorNo": 1}),
        )
        .unwrap()
    }

    #[test]
    fn no_match_pages_have_no_list() {
        let page = parse_search_page(
            br#"{"AcsEvent": {"searchID": "x", "responseStatusStrg": "NO MATCH", "numOfMatches": 0, "totalMatches": 0}}"#,
            "AcsEvent",
            "InfoList",
        )
        .unwrap();
        assert_eq!(page.status, SearchStatus::NoMatch);
        assert!(page.items.is_empty());
        assert!(parse_search_page(b"{}", "AcsEvent", "InfoList").is_err());
        assert!(
            parse_search_page(
                br#"{"AcsEvent": {"responseStatusStrg": "OK", "InfoList": 3}}"#,
                "AcsEvent",
                "InfoList"
            )
            .is_err()
        );
    }

    #[test]
    fn cursor_orders_by_time_then_serial() {
        let a = item(10, "2024-01-01T00:00:00+02:00");
        let b = item(11, "2024-01-01T00:00:00+02:00");
        let c = item(3, "2024-01-01T00:00:01+02:00");
        let cursor = AcsCursor::after(&a);
        assert!(!cursor.precedes(&a));
        assert!(cursor.precedes(&b));
        assert!(
            cursor.precedes(&c),
            "a serial reset with a later time still counts"
        );
        let stored = cursor.to_cursor();
        assert_eq!(AcsCursor::from_cursor(&stored).unwrap(), cursor);
        assert!(AcsCursor::from_cursor(&EventCursor::new("garbage")).is_err());
    }

    #[test]
    fn records_have_stable_ids_and_attributes() {
        let a = item(10, "2024-01-01T00:00:00+02:00");
        let r1 = event_record("devices", "gate", &a);
        let r2 = event_record("devices", "gate", &a);
        assert_eq!(r1.id, r2.id);
        assert_ne!(r1.id, event_record("devices", "other", &a).id);
        assert_eq!(r1.attributes["event"], "door_unlocked");
        assert_eq!(r1.attributes["door"], "1");
        assert_eq!(r1.timestamp_ms, 1_704_060_000_000);
    }
}
