//! The Hikvision ISAPI adapter: commands, health and the access-control event source.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use bytes::Bytes;
use gateway_proto::clock::{Clock, SystemClock};
use http::Method;
use serde_json::{Value, json};
use tracing::{debug, warn};

use super::acs::{
    AcsCursor, SearchPage, SearchStatus, acs_event_request, event_record, parse_acs_event_item,
    parse_search_page,
};
use super::client::{IsapiClient, IsapiResponse};
use super::config::{EventStart, HikvisionConfig};
use super::isapi::{
    DeviceInfo, DeviceTime, DoorCapabilities, ResponseStatus, parse_device_info,
    parse_door_capabilities, parse_response_status, parse_time, remote_control_door_body,
};
use crate::time::format_datetime;
use crate::{
    AdapterContext, AdapterFactory, CommandSpec, DeviceAdapter, DeviceCommand, DeviceDescription,
    DeviceError, DeviceOutcome, DoorAction, Error, EventBatch, EventCursor, EventSource, Health,
};

/// ISAPI paths used by the adapter (and served by the simulator).
pub mod paths {
    /// `GET`: what the device is.
    pub const DEVICE_INFO: &str = "/ISAPI/System/deviceInfo";
    /// `GET`: the device's clock.
    pub const TIME: &str = "/ISAPI/System/time";
    /// `PUT`: restart.
    pub const REBOOT: &str = "/ISAPI/System/reboot";
    /// `GET`: door numbers and commands the device accepts.
    pub const DOOR_CAPABILITIES: &str = "/ISAPI/AccessControl/RemoteControl/door/capabilities";
    /// Prefix of `PUT .../door/{n}`.
    pub const DOOR_PREFIX: &str = "/ISAPI/AccessControl/RemoteControl/door/";
    /// `POST`: search the access-control event log.
    pub const ACS_EVENT: &str = "/ISAPI/AccessControl/AcsEvent?format=json";
}

/// The registry kind of this adapter.
pub const KIND: &str = "hikvision-isapi";

/// The ISAPI spelling of a door action.
pub fn isapi_door_cmd(action: DoorAction) -> &'static str {
    match action {
        DoorAction::Open => "open",
        DoorAction::Close => "close",
        DoorAction::AlwaysOpen => "alwaysOpen",
        DoorAction::AlwaysClose => "alwaysClose",
    }
}

/// Builds [`HikvisionAdapter`]s for the registry, kind `hikvision-isapi`; settings are a
/// [`HikvisionConfig`].
#[derive(Debug, Clone, Copy, Default)]
pub struct HikvisionFactory;

impl AdapterFactory for HikvisionFactory {
    fn kind(&self) -> &str {
        KIND
    }

    fn build(
        &self,
        context: &AdapterContext,
        settings: &Value,
    ) -> Result<Arc<dyn DeviceAdapter>, Error> {
        let config: HikvisionConfig = serde_json::from_value(settings.clone())
            .map_err(|e| Error::config("", e.to_string()))?;
        Ok(Arc::new(HikvisionAdapter::with_clock(
            &context.device_id,
            config,
            context.clock.clone(),
        )?))
    }
}

/// A Hikvision device over ISAPI.
pub struct HikvisionAdapter {
    device_id: String,
    config: HikvisionConfig,
    client: IsapiClient,
    clock: Arc<dyn Clock>,
    /// `None`: not read yet. `Some(None)`: the device has no capabilities endpoint.
    door_capabilities: Mutex<Option<Option<DoorCapabilities>>>,
}

impl std::fmt::Debug for HikvisionAdapter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HikvisionAdapter")
            .field("device_id", &self.device_id)
            .field("config", &self.config)
            .finish()
    }
}

impl HikvisionAdapter {
    /// An adapter for the device `device_id` (used as the `source` of its event records).
    pub fn new(device_id: &str, config: HikvisionConfig) -> Result<Self, Error> {
        Self::with_clock(device_id, config, Arc::new(SystemClock))
    }

    /// The same, with a clock for event search windows and clock-skew reports.
    pub fn with_clock(
        device_id: &str,
        config: HikvisionConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Self, Error> {
        config.validate()?;
        let client = IsapiClient::new(device_id, &config)?;
        Ok(HikvisionAdapter {
            device_id: device_id.to_string(),
            config,
            client,
            clock,
            door_capabilities: Mutex::new(None),
        })
    }

    /// The settings.
    pub fn config(&self) -> &HikvisionConfig {
        &self.config
    }

    /// `GET /ISAPI/System/deviceInfo`.
    pub async fn device_info(&self) -> Result<DeviceInfo, Error> {
        let response = self
            .client
            .send(Method::GET, paths::DEVICE_INFO, None)
            .await?;
        document(&response, parse_device_info)
    }

    /// `GET /ISAPI/System/time`.
    pub async fn device_time(&self) -> Result<DeviceTime, Error> {
        let response = self.client.send(Method::GET, paths::TIME, None).await?;
        document(&response, parse_time)
    }

    /// `GET .../RemoteControl/door/capabilities`, cached after the first answer. `None` when the
    /// device does not offer it (then door numbers and commands are not checked in advance).
    pub async fn door_capabilities(&self) -> Result<Option<DoorCapabilities>, Error> {
        if let Some(cached) = self.lock_caps().clone() {
            return Ok(cached);
        }
        let response = self
            .client
            .send(Method::GET, paths::DOOR_CAPABILITIES, None)
            .await?;
        let capabilities = match document(&response, parse_door_capabilities) {
            Ok(caps) => Some(caps),
            Err(Error::Device(e)) if matches!(e.http_status, Some(403 | 404 | 405 | 501)) => {
                debug!(device = %self.device_id, error = %e, "no door capabilities; door commands are not checked in advance");
                None
            }
            Err(Error::Device(e)) if e.sub_code.as_deref() == Some("notSupport") => None,
            Err(e) => return Err(e),
        };
        *self.lock_caps() = Some(capabilities.clone());
        Ok(capabilities)
    }

    /// `PUT .../RemoteControl/door/{door}` with a `RemoteControlDoor` body.
    pub async fn control_door(
        &self,
        door: u32,
        action: DoorAction,
    ) -> Result<ResponseStatus, Error> {
        let body = remote_control_door_body(isapi_door_cmd(action));
        let path = format!("{}{door}", paths::DOOR_PREFIX);
        let response = self
            .client
            .send(
                Method::PUT,
                &path,
                Some(("application/xml", Bytes::from(body))),
            )
            .await?;
        status_of(&response)
    }

    /// `PUT /ISAPI/System/reboot`. The device drops off the network afterwards.
    pub async fn reboot(&self) -> Result<ResponseStatus, Error> {
        let response = self.client.send(Method::PUT, paths::REBOOT, None).await?;
        let status = status_of(&response)?;
        *self.lock_caps() = None;
        Ok(status)
    }

    /// One page of the access-control event log.
    pub async fn search_events(
        &self,
        search_id: &str,
        position: u64,
        max_results: u32,
        start_time: &str,
        end_time: &str,
    ) -> Result<SearchPage, Error> {
        let request = acs_event_request(search_id, position, max_results, start_time, end_time);
        let body = serde_json::to_vec(&request).unwrap_or_default();
        let response = self
            .client
            .send(
                Method::POST,
                paths::ACS_EVENT,
                Some(("application/json", Bytes::from(body))),
            )
            .await?;
        if !response.is_success() {
            return Err(error_of(&response));
        }
        parse_search_page(&response.body, "AcsEvent", "InfoList").map_err(|e| {
            // A 200 carrying an error status instead of a page.
            match parse_response_status(&response.body) {
                Ok(status) if !status.is_ok() => {
                    Error::Device(status.to_device_error(response.status))
                }
                _ => e,
            }
        })
    }

    fn lock_caps(&self) -> std::sync::MutexGuard<'_, Option<Option<DoorCapabilities>>> {
        self.door_capabilities
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    fn description(&self, info: &DeviceInfo) -> DeviceDescription {
        let mut description = DeviceDescription::new(
            "hikvision",
            info.model.clone(),
            info.serial_number.clone().unwrap_or_default(),
            info.firmware(),
        );
        description.capabilities = vec!["info".into(), "time".into(), "reboot".into()];
        let is_access = matches!(info.device_type.as_deref(), Some("ACS" | "VIS"))
            || matches!(self.lock_caps().as_ref(), Some(Some(_)));
        if is_access {
            description.capabilities.push("door".into());
        }
        if self.config.events.enabled {
            description.capabilities.push("events".into());
        }
        let details = &mut description.details;
        let mut put = |key: &str, value: &Option<String>| {
            if let Some(v) = value {
                details.insert(key.to_string(), Value::String(v.clone()));
            }
        };
        put("device_name", &info.device_name);
        put("device_id", &info.device_id);
        put("device_type", &info.device_type);
        put("sub_device_type", &info.sub_device_type);
        put("mac_address", &info.mac_address);
        put("manufacturer", &info.manufacturer);
        for (key, value) in &info.other {
            details.insert(key.clone(), Value::String(value.clone()));
        }
        description
    }

    fn time_outcome(&self, time: &DeviceTime) -> DeviceOutcome {
        let now = self.clock.now_ms();
        let mut data = serde_json::Map::new();
        data.insert("local_time".into(), json!(time.local_time));
        if let Some(mode) = &time.time_mode {
            data.insert("time_mode".into(), json!(mode));
        }
        if let Some(zone) = &time.time_zone {
            data.insert("time_zone".into(), json!(zone));
        }
        if let Some(tz) = &time.posix_time_zone {
            data.insert(
                "time_zone_utc_offset_secs".into(),
                json!(tz.utc_offset_secs),
            );
        }
        if let Some(parsed) = time.parsed {
            data.insert("unix_ms".into(), json!(parsed.unix_ms));
            if let Some(offset) = parsed.utc_offset_secs {
                data.insert("utc_offset_secs".into(), json!(offset));
            }
            data.insert("clock_skew_ms".into(), json!(parsed.unix_ms - now));
        }
        DeviceOutcome::new(
            format!("device time {}", time.local_time),
            Value::Object(data),
        )
    }

    fn initial_start(&self) -> (String, Option<AcsCursor>) {
        match &self.config.events.start {
            EventStart::Earliest => ("1970-01-01T00:00:00+00:00".to_string(), None),
            EventStart::At(text) => (text.clone(), None),
            EventStart::Now => {
                let now = self.clock.now_ms();
                let text = format_datetime(now, 0);
                // Everything from this second on counts (serial 0 precedes every event).
                let cursor = AcsCursor {
                    v: 1,
                    time: text.clone(),
                    time_ms: now - now.rem_euclid(1000),
                    serial: 0,
                };
                (text, Some(cursor))
            }
        }
    }
}

#[async_trait]
impl DeviceAdapter for HikvisionAdapter {
    async fn describe(&self) -> Result<DeviceDescription, Error> {
        let info = self.device_info().await?;
        Ok(self.description(&info))
    }

    fn commands(&self) -> Vec<CommandSpec> {
        vec![
            CommandSpec::new("info", true),
            CommandSpec::new("time", true),
            CommandSpec::new("reboot", false),
            // `open` is never retried (see DoorAction::is_idempotent); the others are.
            CommandSpec::new("door", true),
        ]
    }

    async fn validate(&self, command: &DeviceCommand) -> Result<(), Error> {
        let DeviceCommand::Door { door, action } = command else {
            return Ok(());
        };
        let Some(capabilities) = self.door_capabilities().await? else {
            return Ok(());
        };
        let min = capabilities.door_min.unwrap_or(1);
        if let Some(max) = capabilities.door_max
            && (*door < min || *door > max)
        {
            return Err(Error::payload(
                "door",
                "door",
                format!(
                    "device `{}` has doors {min} to {max}, not {door}",
                    self.device_id
                ),
            ));
        }
        if let Some(commands) = &capabilities.commands {
            let cmd = isapi_door_cmd(*action);
            if !commands.iter().any(|c| c == cmd) {
                return Err(Error::payload(
                    "door",
                    "action",
                    format!(
                        "device `{}` does not accept `{}` (it accepts: {})",
                        self.device_id,
                        action,
                        commands.join(", ")
                    ),
                ));
            }
        }
        Ok(())
    }

    async fn execute(&self, command: &DeviceCommand) -> Result<DeviceOutcome, Error> {
        match command {
            DeviceCommand::Info => {
                let info = self.device_info().await?;
                Ok(DeviceOutcome::from_description(&self.description(&info)))
            }
            DeviceCommand::Time => Ok(self.time_outcome(&self.device_time().await?)),
            DeviceCommand::Reboot => {
                let status = self.reboot().await?;
                Ok(DeviceOutcome::new(
                    "reboot accepted; the device is restarting",
                    json!({"status": status}),
                ))
            }
            DeviceCommand::Door { door, action } => {
                let status = self.control_door(*door, *action).await?;
                Ok(DeviceOutcome::new(
                    format!("door {door}: {action}"),
                    json!({"door": door, "action": action, "status": status}),
                ))
            }
            DeviceCommand::Custom { name, .. } => Err(Error::UnsupportedCommand {
                device_id: self.device_id.clone(),
                command: name.clone(),
                supported: "info, time, reboot, door".to_string(),
            }),
        }
    }

    async fn health(&self) -> Health {
        if let Some(error) = self.client.blocked() {
            return Health::from_error(&error);
        }
        let started = tokio::time::Instant::now();
        match self.device_info().await {
            Ok(info) => Health::healthy(format!(
                "{} answers in {} ms",
                info.model,
                started.elapsed().as_millis()
            )),
            Err(error) => Health::from_error(&error),
        }
    }

    fn events(&self) -> Option<&dyn EventSource> {
        self.config
            .events
            .enabled
            .then_some(self as &dyn EventSource)
    }
}

#[async_trait]
impl EventSource for HikvisionAdapter {
    async fn poll_events(
        &self,
        cursor: Option<&EventCursor>,
        max: usize,
    ) -> Result<EventBatch, Error> {
        let (start_time, mut after) = match cursor {
            Some(cursor) => {
                let parsed = AcsCursor::from_cursor(cursor)?;
                (parsed.time.clone(), Some(parsed))
            }
            None => self.initial_start(),
        };
        // Up to a day ahead of our clock, so a device clock slightly ahead loses nothing.
        let end_time = format_datetime(self.clock.now_ms() + 86_400_000, 0);
        let search_id = uuid::Uuid::new_v4().to_string();
        let options = &self.config.events;
        let mut records = Vec::new();
        let mut position = 0u64;
        let mut more = false;
        for page_number in 0..options.max_pages_per_poll {
            let page = self
                .search_events(
                    &search_id,
                    position,
                    options.page_size,
                    &start_time,
                    &end_time,
                )
                .await?;
            let mut items = Vec::with_capacity(page.items.len());
            for raw in &page.items {
                match parse_acs_event_item(raw) {
                    Ok(item) => items.push(item),
                    Err(e) => {
                        metrics::counter!("gateway_devices_event_items_skipped_total", "device" => self.device_id.clone()).increment(1);
                        warn!(device = %self.device_id, error = %e, "skipping an unreadable event");
                    }
                }
            }
            items.sort_by_key(|item| item.key());
            for item in items {
                if after.as_ref().is_some_and(|c| !c.precedes(&item)) {
                    continue;
                }
                if records.len() >= max {
                    more = true;
                    break;
                }
                records.push(event_record(&options.stream, &self.device_id, &item));
                after = Some(AcsCursor::after(&item));
            }
            if more || page.status != SearchStatus::More {
                break;
            }
            let advance = page.num_of_matches.max(page.items.len() as u64);
            if advance == 0 {
                return Err(Error::protocol(
                    "the device answered MORE with an empty page; stopping this poll",
                ));
            }
            position += advance;
            if page_number + 1 == options.max_pages_per_poll {
                more = true;
            }
        }
        Ok(EventBatch {
            records,
            cursor: after.map(|c| c.to_cursor()),
            more,
        })
    }
}

/// Read a document from a successful answer, or the device's error from any other.
fn document<T>(response: &IsapiResponse, parse: fn(&str) -> Result<T, Error>) -> Result<T, Error> {
    if !response.is_success() {
        return Err(error_of(response));
    }
    let text = response.text();
    parse(&text).map_err(|e| match parse_response_status(&response.body) {
        // A 200 carrying an error status instead of the document.
        Ok(status) if !status.is_ok() => Error::Device(status.to_device_error(response.status)),
        _ => e,
    })
}

/// The outcome of a command answered with a `ResponseStatus`. `statusCode` decides, whatever
/// the HTTP status; an unreadable body falls back on the HTTP status.
fn status_of(response: &IsapiResponse) -> Result<ResponseStatus, Error> {
    match parse_response_status(&response.body) {
        Ok(status) if status.is_ok() => Ok(status),
        Ok(status) => Err(Error::Device(status.to_device_error(response.status))),
        Err(_) if response.is_success() => Ok(ResponseStatus::default()),
        Err(_) => Err(error_of(response)),
    }
}

/// The device's error from an answer that is not a success.
fn error_of(response: &IsapiResponse) -> Error {
    if let Ok(status) = parse_response_status(&response.body)
        && !status.is_ok()
    {
        return Error::Device(status.to_device_error(response.status));
    }
    let text = response.text();
    let snippet: String = text.trim().chars().take(200).collect();
    let reason = http::StatusCode::from_u16(response.status)
        .ok()
        .and_then(|s| s.canonical_reason())
        .unwrap_or("unexpected status");
    Error::Device(DeviceError {
        http_status: Some(response.status),
        code: None,
        sub_code: None,
        message: if snippet.is_empty() {
            reason.to_string()
        } else {
            format!("{reason}: {snippet}")
        },
    })
}
