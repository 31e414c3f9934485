//! The registry: devices by id, built from configuration through adapter factories, and the
//! one place commands are executed, with per-device limits.
//!
//! ## Guarantees
//! * A command for an unknown device, a command the device does not offer, or a payload that does
//!   not fit is refused with a typed [`Error`] before anything is sent, and never gets a
//!   lifecycle.
//! * At most [`DeviceLimits::max_in_flight`] commands (default 1) are sent to one device at a
//!   time; others wait in `pending`, first come first served, up to
//!   [`DeviceLimits::max_queued`].
//! * Each attempt is bounded by the command timeout; so is the wait for a slot.
//! * Only idempotent commands ([`CommandSpec::idempotent`], and never door `open`) are retried,
//!   and only after a retryable error ([`Error::is_retryable`]).
//! * Every transition is published to [`DeviceRegistry::subscribe`] with its timestamp.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use gateway_proto::clock::{Clock, SystemClock};
use gateway_proto::{Command, CommandAck, CommandId};
use serde_json::Value;
use tokio::sync::{Semaphore, broadcast};
use tracing::{debug, info, warn};

use crate::config::validate_device_id;
use crate::lifecycle::rejection_ack;
use crate::{
    CommandReport, CommandSpec, DeviceAdapter, DeviceCommand, DeviceDescription, DeviceLimits,
    DeviceRequest, Error, EventBatch, EventCursor, Health, RegistryConfig,
};

/// Builds adapters of one kind from a device's `settings`.
pub trait AdapterFactory: Send + Sync + 'static {
    /// The kind name used in configuration (`hikvision-isapi`).
    fn kind(&self) -> &str;

    /// Build the adapter for one device. Errors about `settings` should be
    /// [`Error::InvalidConfig`] with `param` relative to the settings object (`base_url`), or
    /// empty for the object as a whole; the registry prefixes `devices.<id>.settings`.
    fn build(
        &self,
        context: &AdapterContext,
        settings: &Value,
    ) -> Result<Arc<dyn DeviceAdapter>, Error>;
}

/// What a factory gets besides the settings.
#[derive(Debug, Clone)]
pub struct AdapterContext {
    /// The device's id in the registry (adapters use it as the `source` of their records).
    pub device_id: String,
    /// Wall-clock time, shared with the registry (fake it in tests).
    pub clock: Arc<dyn Clock>,
}

/// Options for one execution.
#[derive(Debug, Clone, Default)]
pub struct ExecuteOptions {
    /// The command's id; a fresh UUIDv7 when `None`.
    pub id: Option<CommandId>,
    /// Overrides the device's `command_timeout_ms` for this command.
    pub timeout: Option<Duration>,
}

struct DeviceSlot {
    kind: String,
    adapter: Arc<dyn DeviceAdapter>,
    limits: DeviceLimits,
    slots: Arc<Semaphore>,
    waiting: Arc<AtomicUsize>,
}

/// Builder for a [`DeviceRegistry`].
pub struct RegistryBuilder {
    factories: BTreeMap<String, Arc<dyn AdapterFactory>>,
    adapters: Vec<(String, String, Arc<dyn DeviceAdapter>, DeviceLimits)>,
    clock: Arc<dyn Clock>,
}

impl Default for RegistryBuilder {
    fn default() -> Self {
        RegistryBuilder {
            factories: BTreeMap::new(),
            adapters: Vec::new(),
            clock: Arc::new(SystemClock),
        }
    }
}

impl RegistryBuilder {
    /// Register a factory for its [`AdapterFactory::kind`] (a later one of the same kind wins).
    pub fn with_factory(mut self, factory: impl AdapterFactory) -> Self {
        self.factories
            .insert(factory.kind().to_string(), Arc::new(factory));
        self
    }

    /// Use this clock for lifecycle timestamps and adapters (default: the system clock).
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Add a device with an adapter built in code (tests, adapters without configuration).
    pub fn with_adapter(
        mut self,
        device_id: impl Into<String>,
        kind: impl Into<String>,
        adapter: Arc<dyn DeviceAdapter>,
        limits: DeviceLimits,
    ) -> Self {
        self.adapters
            .push((device_id.into(), kind.into(), adapter, limits));
        self
    }

    /// Build the registry: every configured device through its kind's factory, plus the
    /// adapters added in code. Errors name the parameter (`devices.<id>.kind`, ...).
    pub fn build(self, config: &RegistryConfig) -> Result<DeviceRegistry, Error> {
        let mut devices = HashMap::new();
        for (device_id, device) in &config.devices {
            validate_device_id(device_id)?;
            let prefix = format!("devices.{device_id}");
            device.limits.validate(&format!("{prefix}.limits."))?;
            let factory = self.factories.get(&device.kind).ok_or_else(|| {
                let known: Vec<&str> = self.factories.keys().map(String::as_str).collect();
                Error::config(
                    format!("{prefix}.kind"),
                    format!(
                        "no adapter factory for kind `{}`; registered kinds: {}",
                        device.kind,
                        if known.is_empty() {
                            "none".to_string()
                        } else {
                            known.join(", ")
                        }
                    ),
                )
            })?;
            let context = AdapterContext {
                device_id: device_id.clone(),
                clock: self.clock.clone(),
            };
            let adapter = factory
                .build(&context, &device.settings)
                .map_err(|e| match e {
                    Error::InvalidConfig { param, reason } => Error::InvalidConfig {
                        param: if param.is_empty() {
                            format!("{prefix}.settings")
                        } else {
                            format!("{prefix}.settings.{param}")
                        },
                        reason,
                    },
                    other => Error::config(format!("{prefix}.settings"), other.to_string()),
                })?;
            devices.insert(
                device_id.clone(),
                DeviceSlot::new(device.kind.clone(), adapter, device.limits.clone()),
            );
        }
        for (device_id, kind, adapter, limits) in self.adapters {
            validate_device_id(&device_id)?;
            limits.validate(&format!("devices.{device_id}.limits."))?;
            if devices.contains_key(&device_id) {
                return Err(Error::config(
                    format!("devices.{device_id}"),
                    "this id is used twice (once in configuration and once in code)",
                ));
            }
            devices.insert(device_id, DeviceSlot::new(kind, adapter, limits));
        }
        let (reports, _) = broadcast::channel(256);
        info!(devices = devices.len(), "device registry built");
        Ok(DeviceRegistry {
            devices,
            clock: self.clock,
            reports,
        })
    }
}

impl DeviceSlot {
    fn new(kind: String, adapter: Arc<dyn DeviceAdapter>, limits: DeviceLimits) -> Self {
        DeviceSlot {
            kind,
            adapter,
            slots: Arc::new(Semaphore::new(limits.max_in_flight as usize)),
            waiting: Arc::new(AtomicUsize::new(0)),
            limits,
        }
    }
}

/// Devices by id, and the one place their commands run.
///
/// ```no_run
/// # async fn run() -> Result<(), gateway_devices::Error> {
/// use gateway_devices::hikvision::HikvisionFactory;
/// use gateway_devices::{DeviceRegistry, RegistryConfig};
///
/// let config = RegistryConfig::from_json(r#"{"devices": {"front-door": {
///     "kind": "hikvision-isapi",
///     "settings": {"base_url": "http://192.0.2.10", "username": "admin", "password": "secret"}
/// }}}"#)?;
/// let registry = DeviceRegistry::builder()
///     .with_factory(HikvisionFactory)
///     .build(&config)?;
/// let report = registry
///     .execute("front-door", gateway_devices::DeviceCommand::Door {
///         door: 1,
///         action: gateway_devices::DoorAction::Open,
///     })
///     .await?;
/// println!("{}: {:?}", report.state, report.failure);
/// # Ok(()) }
/// ```
pub struct DeviceRegistry {
    devices: HashMap<String, DeviceSlot>,
    clock: Arc<dyn Clock>,
    reports: broadcast::Sender<CommandReport>,
}

impl std::fmt::Debug for DeviceRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DeviceRegistry")
            .field("devices", &self.device_ids())
            .finish()
    }
}

impl DeviceRegistry {
    /// A builder.
    pub fn builder() -> RegistryBuilder {
        RegistryBuilder::default()
    }

    /// The device ids, sorted.
    pub fn device_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self.devices.keys().cloned().collect();
        ids.sort();
        ids
    }

    /// A device's adapter.
    pub fn adapter(&self, device_id: &str) -> Result<Arc<dyn DeviceAdapter>, Error> {
        Ok(self.slot(device_id)?.adapter.clone())
    }

    /// A device's adapter kind.
    pub fn kind(&self, device_id: &str) -> Result<&str, Error> {
        Ok(&self.slot(device_id)?.kind)
    }

    /// A device's limits.
    pub fn limits(&self, device_id: &str) -> Result<&DeviceLimits, Error> {
        Ok(&self.slot(device_id)?.limits)
    }

    /// Lifecycle reports of every command, one per transition (`pending`, each `sent`, the
    /// terminal state). A slow receiver loses the oldest reports (see
    /// [`broadcast::Receiver::recv`]); the final report is always returned by `execute`.
    pub fn subscribe(&self) -> broadcast::Receiver<CommandReport> {
        self.reports.subscribe()
    }

    /// Ask a device what it is.
    pub async fn describe(&self, device_id: &str) -> Result<DeviceDescription, Error> {
        self.slot(device_id)?.adapter.describe().await
    }

    /// A device's health.
    pub async fn health(&self, device_id: &str) -> Result<Health, Error> {
        Ok(self.slot(device_id)?.adapter.health().await)
    }

    /// Every device's health, by id.
    pub async fn health_all(&self) -> BTreeMap<String, Health> {
        let mut all = BTreeMap::new();
        for id in self.device_ids() {
            if let Ok(slot) = self.slot(&id) {
                all.insert(id, slot.adapter.health().await);
            }
        }
        all
    }

    /// The ids of devices that have an event source, sorted.
    pub fn event_device_ids(&self) -> Vec<String> {
        let mut ids: Vec<String> = self
            .devices
            .iter()
            .filter(|(_, slot)| slot.adapter.events().is_some())
            .map(|(id, _)| id.clone())
            .collect();
        ids.sort();
        ids
    }

    /// Read up to `max` events of a device after `cursor` (see [`crate::EventSource`]). Persist
    /// the returned cursor only after the records are stored.
    pub async fn poll_events(
        &self,
        device_id: &str,
        cursor: Option<&EventCursor>,
        max: usize,
    ) -> Result<EventBatch, Error> {
        let slot = self.slot(device_id)?;
        let source = slot.adapter.events().ok_or_else(|| Error::NoEventSource {
            device_id: device_id.to_string(),
        })?;
        let result = source.poll_events(cursor, max).await;
        match &result {
            Ok(batch) => {
                metrics::counter!("gateway_devices_event_polls_total", "device" => device_id.to_string(), "result" => "ok").increment(1);
                metrics::counter!("gateway_devices_events_total", "device" => device_id.to_string())
                    .increment(batch.records.len() as u64);
            }
            Err(e) => {
                metrics::counter!("gateway_devices_event_polls_total", "device" => device_id.to_string(), "result" => "error").increment(1);
                warn!(device = device_id, error = %e, "event poll failed");
            }
        }
        result
    }

    /// Execute a command on a device with the device's limits. Shorthand for
    /// [`DeviceRegistry::execute_with`] with default options.
    pub async fn execute(
        &self,
        device_id: &str,
        command: DeviceCommand,
    ) -> Result<CommandReport, Error> {
        self.execute_with(
            DeviceRequest::new(device_id, command),
            ExecuteOptions::default(),
        )
        .await
    }

    /// Execute a command. Returns `Err` only when the command is refused before it is pending
    /// (unknown device, unsupported command, invalid payload, full queue); otherwise the final
    /// report, whose state is `succeeded`, `failed` or `timed_out`.
    pub async fn execute_with(
        &self,
        request: DeviceRequest,
        options: ExecuteOptions,
    ) -> Result<CommandReport, Error> {
        let DeviceRequest { device_id, command } = request;
        let slot = match self.admit(&device_id, &command).await {
            Ok(slot) => slot,
            Err(error) => {
                metrics::counter!("gateway_devices_commands_rejected_total", "reason" => rejection_reason(&error)).increment(1);
                debug!(device = %device_id, command = command.name(), error = %error, "command refused");
                return Err(error);
            }
        };
        let spec = slot
            .adapter
            .commands()
            .into_iter()
            .find(|spec| spec.name == command.name())
            .unwrap_or_else(|| CommandSpec::new(command.name(), false));
        let retry_allowed = spec.idempotent
            && match &command {
                DeviceCommand::Door { action, .. } => action.is_idempotent(),
                _ => true,
            };
        let slot_free = slot.slots.available_permits() > 0;
        let waiting =
            WaitingGuard::enter(&slot.waiting, slot.limits.max_queued as usize, slot_free)
                .ok_or_else(|| Error::Busy {
                    device_id: device_id.clone(),
                    queued: slot.waiting.load(Ordering::SeqCst),
                })
                .inspect_err(|_| {
                    metrics::counter!("gateway_devices_commands_rejected_total", "reason" => "busy")
                    .increment(1);
                })?;

        let id = options.id.unwrap_or_else(CommandId::new_v7);
        let timeout = options
            .timeout
            .unwrap_or_else(|| slot.limits.command_timeout());
        let started = tokio::time::Instant::now();
        let mut report = CommandReport::pending(id, &device_id, command, self.clock.now_ms());
        self.publish(&report);

        let permit = match tokio::time::timeout(timeout, slot.slots.clone().acquire_owned()).await {
            Ok(Ok(permit)) => permit,
            Ok(Err(_closed)) => {
                report.finish(
                    Err(Error::protocol("the device's command slots were closed")),
                    self.clock.now_ms(),
                );
                return Ok(self.conclude(report, started));
            }
            Err(_) => {
                drop(waiting);
                warn!(device = %device_id, %id, "no command slot freed up in time; command not sent");
                report.finish(Err(Error::Timeout { after: timeout }), self.clock.now_ms());
                if let Some(failure) = report.failure.as_mut() {
                    failure.message = format!(
                        "waited {} ms for the device's in-flight slot; the command was not sent",
                        timeout.as_millis()
                    );
                }
                return Ok(self.conclude(report, started));
            }
        };
        drop(waiting);
        let in_flight = InFlightGauge::enter(&device_id);

        let mut backoff = Duration::from_millis(slot.limits.retry_backoff_ms);
        loop {
            report.mark_sent(self.clock.now_ms());
            self.publish(&report);
            debug!(device = %device_id, %id, command = report.command.name(), attempt = report.attempts, "command sent");
            let result =
                match tokio::time::timeout(timeout, slot.adapter.execute(&report.command)).await {
                    Ok(result) => result,
                    Err(_) => Err(Error::Timeout { after: timeout }),
                };
            match result {
                Err(error)
                    if retry_allowed
                        && error.is_retryable()
                        && report.attempts <= slot.limits.max_retries =>
                {
                    warn!(device = %device_id, %id, attempt = report.attempts, error = %error, "idempotent command failed; retrying");
                    metrics::counter!("gateway_devices_command_retries_total", "device" => device_id.clone()).increment(1);
                    tokio::time::sleep(backoff).await;
                    backoff = backoff.saturating_mul(2);
                }
                result => {
                    report.finish(result, self.clock.now_ms());
                    break;
                }
            }
        }
        drop(in_flight);
        drop(permit);
        Ok(self.conclude(report, started))
    }

    /// Run a control-channel command end to end and return the acknowledgement to send back:
    /// `rejected` when it is refused (bad kind or payload, unknown device, deadline passed),
    /// otherwise `succeeded` or `failed` with the device's own words in `detail`.
    pub async fn execute_control(&self, command: &Command) -> CommandAck {
        if let Some(deadline) = command.delivery_deadline_ms
            && self.clock.now_ms() > deadline
        {
            let error = Error::payload(
                &command.kind,
                "delivery_deadline_ms",
                "the delivery deadline has passed; the command was not started",
            );
            return rejection_ack(command.id, &error);
        }
        let request = match DeviceRequest::from_control(
            &command.kind,
            command.target.as_deref(),
            &command.payload,
        ) {
            Ok(request) => request,
            Err(error) => return rejection_ack(command.id, &error),
        };
        let options = ExecuteOptions {
            id: Some(command.id),
            timeout: command.execution_timeout_ms.map(Duration::from_millis),
        };
        match self.execute_with(request, options).await {
            Ok(report) => report.to_ack(),
            Err(error) => rejection_ack(command.id, &error),
        }
    }

    /// The checks before a command is accepted.
    async fn admit(&self, device_id: &str, command: &DeviceCommand) -> Result<&DeviceSlot, Error> {
        let slot = self.slot(device_id)?;
        let specs = slot.adapter.commands();
        if !specs.iter().any(|spec| spec.name == command.name()) {
            let supported: Vec<&str> = specs.iter().map(|s| s.name.as_str()).collect();
            return Err(Error::UnsupportedCommand {
                device_id: device_id.to_string(),
                command: command.name().to_string(),
                supported: supported.join(", "),
            });
        }
        match slot.adapter.validate(command).await {
            Ok(()) => Ok(slot),
            Err(error) if error.is_rejection() => Err(error),
            Err(error) => {
                // A validation that could not reach the device does not block the command:
                // sending it will report the real problem.
                debug!(device = device_id, error = %error, "validation skipped");
                Ok(slot)
            }
        }
    }

    fn conclude(&self, report: CommandReport, started: tokio::time::Instant) -> CommandReport {
        let elapsed = started.elapsed();
        metrics::counter!(
            "gateway_devices_commands_total",
            "device" => report.device_id.clone(),
            "command" => report.command.name().to_string(),
            "state" => report.state.as_str()
        )
        .increment(1);
        metrics::histogram!(
            "gateway_devices_command_duration_seconds",
            "device" => report.device_id.clone(),
            "command" => report.command.name().to_string()
        )
        .record(elapsed.as_secs_f64());
        match &report.failure {
            None => {
                info!(device = %report.device_id, id = %report.id, command = report.command.name(), state = %report.state, attempts = report.attempts, "command finished")
            }
            Some(failure) => {
                warn!(device = %report.device_id, id = %report.id, command = report.command.name(), state = %report.state, attempts = report.attempts, error = %failure.message, "command finished")
            }
        }
        self.publish(&report);
        report
    }

    fn publish(&self, report: &CommandReport) {
        // No receiver is not an error: nobody is watching.
        let _ = self.reports.send(report.clone());
    }

    fn slot(&self, device_id: &str) -> Result<&DeviceSlot, Error> {
        self.devices
            .get(device_id)
            .ok_or_else(|| Error::UnknownDevice {
                device_id: device_id.to_string(),
            })
    }
}

fn rejection_reason(error: &Error) -> &'static str {
    match error {
        Error::UnknownDevice { .. } => "unknown_device",
        Error::UnsupportedCommand { .. } => "unsupported_command",
        Error::InvalidPayload { .. } => "invalid_payload",
        Error::Busy { .. } => "busy",
        _ => "other",
    }
}

/// Counts a command waiting for a slot; leaves on drop, also when the caller gives up.
struct WaitingGuard<'a>(&'a AtomicUsize);

impl<'a> WaitingGuard<'a> {
    /// Enter unless `max` commands already wait and no slot is free.
    fn enter(counter: &'a AtomicUsize, max: usize, slot_free: bool) -> Option<Self> {
        counter
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| {
                (n < max || slot_free).then_some(n + 1)
            })
            .ok()
            .map(|_| WaitingGuard(counter))
    }
}

impl Drop for WaitingGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

struct InFlightGauge(String);

impl InFlightGauge {
    fn enter(device_id: &str) -> Self {
        metrics::gauge!("gateway_devices_commands_in_flight", "device" => device_id.to_string())
            .increment(1.0);
        InFlightGauge(device_id.to_string())
    }
}

impl Drop for InFlightGauge {
    fn drop(&mut self) {
        metrics::gauge!("gateway_devices_commands_in_flight", "device" => self.0.clone())
            .decrement(1.0);
    }
}
