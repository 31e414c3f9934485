//! An ISAPI device simulator: a real HTTP(S) server on a real socket, for tests, demos and
//! integrators' own test suites.
//!
//! It speaks the endpoints the [`crate::hikvision`] adapter uses, behind Digest authentication,
//! keeps door state and an access-control event log, and has fault knobs: latency, error
//! answers, raw answers, dropped connections, nonce expiry, wrong-credential lockout, and the
//! reboot outage.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), gateway_devices::Error> {
//! use gateway_devices::hikvision::{HikvisionAdapter, HikvisionConfig};
//! use gateway_devices::simulator::{DoorState, Simulator, SimulatorConfig};
//! use gateway_devices::{DeviceAdapter, DeviceCommand, DoorAction};
//!
//! let simulator = Simulator::start(SimulatorConfig::default()).await?;
//! let adapter = HikvisionAdapter::new(
//!     "front-door",
//!     HikvisionConfig::new(simulator.base_url(), "admin", SimulatorConfig::DEFAULT_PASSWORD),
//! )?;
//! adapter.execute(&DeviceCommand::Door { door: 1, action: DoorAction::AlwaysOpen }).await?;
//! assert_eq!(simulator.door_state(1), Some(DoorState::AlwaysOpen));
//! simulator.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Real-device facts it reproduces: namespaces on documents, a `ResponseStatus` without
//! `statusString` on door success, statusCode 4 with HTTP 403 for a wrong method, `userCheck`
//! bodies on 401 (with `lockStatus`/`unlockTime`/`retryLoginTime`), lockout that stays 401,
//! 404 for unknown paths before authentication, `NO MATCH` searches without a list, pages
//! capped below `maxResults`, and a `Server: webs` header. Any body can be replaced by a
//! captured one ([`SimulatorConfig::device_info_xml`], [`Simulator::load_acs_events_json`],
//! [`Reply::raw`]...).

mod routes;
mod server;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use gateway_proto::clock::{Clock, SystemClock};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::Error;
use crate::hikvision::isapi::response_status_xml;

pub use state::{DoorState, RequestRecord, SimulatorStats};

/// How the simulator words its 401 challenge (real devices differ).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChallengeStyle {
    /// A newer NVR: `realm, domain="::", qop="auth", nonce, opaque="", algorithm="MD5",
    /// stale="FALSE"`.
    Nvr,
    /// An IP camera: `qop="auth", realm, nonce, stale="FALSE"` (qop first, no opaque, no
    /// algorithm).
    Camera,
    /// An IP camera offering Digest and Basic in one header line.
    CameraWithBasic,
    /// An old camera offering Basic only.
    BasicOnly,
    /// This exact header value (from a capture). Its realm and nonce are accepted; every 401
    /// repeats it unchanged.
    Verbatim(String),
}

/// TLS for the simulator: a certificate chain and its key, PEM.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimulatorTls {
    /// Certificate chain, PEM.
    pub cert_pem: String,
    /// Private key, PEM (PKCS#8, PKCS#1 or SEC1).
    pub key_pem: String,
}

impl std::fmt::Debug for SimulatorTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SimulatorTls").finish_non_exhaustive()
    }
}

/// What the simulated device is and how it behaves.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SimulatorConfig {
    /// Accepted user name. Default `admin`.
    pub username: String,
    /// Accepted password. Default [`SimulatorConfig::DEFAULT_PASSWORD`].
    pub password: String,
    /// Digest realm. Default `Access Controller(SIM01)` (parentheses, as cameras send).
    pub realm: String,
    /// How the challenge is worded. Default [`ChallengeStyle::Nvr`].
    pub challenge_style: ChallengeStyle,
    /// `deviceName`.
    pub device_name: String,
    /// `model`.
    pub model: String,
    /// `serialNumber`.
    pub serial_number: String,
    /// `firmwareVersion`.
    pub firmware_version: String,
    /// `firmwareReleasedDate`.
    pub firmware_released_date: String,
    /// `deviceType` (`ACS`).
    pub device_type: String,
    /// Serve this body for deviceInfo instead of one built from the fields above.
    pub device_info_xml: Option<String>,
    /// Number of doors (`doorNo` 1..=doors). Default 2.
    pub doors: u32,
    /// Accepted `cmd` values. Default `open, close, alwaysOpen, alwaysClose`.
    pub door_commands: Vec<String>,
    /// Serve `door/capabilities` (404 when false, as devices without it do). Default true.
    pub door_capabilities: bool,
    /// Serve this body for `door/capabilities` instead of one built from the fields above.
    pub door_capabilities_xml: Option<String>,
    /// How long a door `open` keeps it open, in ms. Default 5000.
    pub door_open_ms: u64,
    /// The device's UTC offset in seconds. Default 14 400 (UTC+4).
    pub utc_offset_secs: i32,
    /// `timeZone` text. Default `CST-4:00:00` (POSIX: sign inverted).
    pub time_zone: String,
    /// `timeMode`. Default `manual`.
    pub time_mode: String,
    /// Serve this body for `/ISAPI/System/time` instead of one built from the clock.
    pub time_xml: Option<String>,
    /// How long a nonce is accepted before answers get `stale="TRUE"`, in ms. Default 300 000.
    pub nonce_ttl_ms: u64,
    /// Wrong logins in a row before the account locks; 0 never locks. Default 5.
    pub lockout_after: u32,
    /// How long the lock lasts, in ms. Default 1 800 000 (30 min, as reported for devices).
    pub lockout_ms: u64,
    /// Body of 401 answers instead of the built `userCheck` (e.g. a captured one).
    pub unauthorized_body: Option<String>,
    /// Most events per AcsEvent page, whatever `maxResults` asks. Default 30.
    pub max_page_size: u32,
    /// How long the device is off the network after a reboot, in ms. Default 500.
    pub reboot_downtime_ms: u64,
    /// Serve HTTPS with this certificate instead of HTTP.
    pub tls: Option<SimulatorTls>,
}

impl SimulatorConfig {
    /// The default password.
    pub const DEFAULT_PASSWORD: &'static str = "Sim-Passw0rd";
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            username: "admin".to_string(),
            password: Self::DEFAULT_PASSWORD.to_string(),
            realm: "Access Controller(SIM01)".to_string(),
            challenge_style: ChallengeStyle::Nvr,
            device_name: "Simulated Access Controller".to_string(),
            model: "DS-K1T341AM-SIM".to_string(),
            serial_number: "DS-K1T341AM-SIM0000000000000001".to_string(),
            firmware_version: "V3.2.30".to_string(),
            firmware_released_date: "build 220210".to_string(),
            device_type: "ACS".to_string(),
            device_info_xml: None,
            doors: 2,
            door_commands: ["open", "close", "alwaysOpen", "alwaysClose"]
                .into_iter()
                .map(String::from)
                .collect(),
            door_capabilities: true,
            door_capabilities_xml: None,
            door_open_ms: 5_000,
            utc_offset_secs: 4 * 3600,
            time_zone: "CST-4:00:00".to_string(),
            time_mode: "manual".to_string(),
            time_xml: None,
            nonce_ttl_ms: 300_000,
            lockout_after: 5,
            lockout_ms: 1_800_000,
            unauthorized_body: None,
            max_page_size: 30,
            reboot_downtime_ms: 500,
            tls: None,
        }
    }
}

/// An answer the simulator sends instead of the normal one (a fault).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// HTTP status.
    pub status: u16,
    /// `Content-Type`.
    pub content_type: String,
    /// Extra headers (e.g. `WWW-Authenticate`).
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl Reply {
    /// Any status, content type and body.
    pub fn raw(status: u16, content_type: impl Into<String>, body: impl Into<Vec<u8>>) -> Self {
        Reply {
            status,
            content_type: content_type.into(),
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Add a header (builder style).
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// An XML `ResponseStatus`.
    pub fn response_status(
        status: u16,
        status_code: i64,
        status_string: &str,
        sub_status_code: &str,
    ) -> Self {
        Reply::raw(
            status,
            "application/xml; charset=\"UTF-8\"",
            response_status_xml("", status_code, status_string, sub_status_code),
        )
    }

    /// A JSON `ResponseStatus` with `errorCode`/`errorMsg`.
    pub fn json_status(
        status: u16,
        status_code: i64,
        status_string: &str,
        sub_status_code: &str,
        error_msg: &str,
    ) -> Self {
        let body = serde_json::json!({
            "statusCode": status_code,
            "statusString": status_string,
            "subStatusCode": sub_status_code,
            "errorCode": 1_610_612_737u64,
            "errorMsg": error_msg,
        });
        Reply::raw(status, "application/json", body.to_string())
    }

    /// statusCode 2 `deviceBusy` (HTTP 503): retryable.
    pub fn device_busy() -> Self {
        Reply::response_status(503, 2, "Device Busy", "deviceBusy")
    }

    /// statusCode 3 `deviceError` (HTTP 500).
    pub fn device_error() -> Self {
        Reply::response_status(500, 3, "Device Error", "deviceError")
    }

    /// statusCode 4 `invalidOperation` with HTTP 403, as real devices send it.
    pub fn invalid_operation() -> Self {
        Reply::response_status(403, 4, "Invalid Operation", "invalidOperation")
    }

    /// statusCode 6 `badJsonContent` with HTTP 400, `errorMsg` naming `field`.
    pub fn bad_json_content(field: &str) -> Self {
        Reply::json_status(400, 6, "Invalid Content", "badJsonContent", field)
    }
}

/// A running simulator. Dropping it stops the server.
pub struct Simulator {
    addr: SocketAddr,
    https: bool,
    state: Arc<state::SimState>,
    shutdown: watch::Sender<bool>,
    task: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator")
            .field("base_url", &self.base_url())
            .finish()
    }
}

impl Simulator {
    /// Start on `127.0.0.1` with a free port, using the system clock.
    pub async fn start(config: SimulatorConfig) -> Result<Simulator, Error> {
        Self::bind(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            config,
            Arc::new(SystemClock),
        )
        .await
    }

    /// Start on `addr` with a clock for device time and event timestamps.
    pub async fn bind(
        addr: SocketAddr,
        config: SimulatorConfig,
        clock: Arc<dyn Clock>,
    ) -> Result<Simulator, Error> {
        let tls = match &config.tls {
            Some(tls) => Some(server::tls_acceptor(tls)?),
            None => None,
        };
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let https = tls.is_some();
        let state = Arc::new(state::SimState::new(config, clock));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let router = routes::router(state.clone());
        let task = tokio::spawn(server::serve(
            listener,
            router,
            state.clone(),
            tls,
            shutdown_rx,
        ));
        tracing::info!(%addr, https, "ISAPI simulator listening");
        Ok(Simulator {
            addr,
            https,
            state,
            shutdown,
            task: Some(task),
        })
    }

    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:<port>` (or `https://localhost:<port>` with TLS, so certificates for
    /// `localhost` verify).
    pub fn base_url(&self) -> String {
        if self.https {
            format!("https://localhost:{}", self.addr.port())
        } else {
            format!("http://{}", self.addr)
        }
    }

    /// The configuration it runs with.
    pub fn config(&self) -> &SimulatorConfig {
        &self.state.config
    }

    /// A door's state (doors count from 1).
    pub fn door_state(&self, door: u32) -> Option<DoorState> {
        self.state.door_state(door)
    }

    /// Counters since start.
    pub fn stats(&self) -> SimulatorStats {
        self.state.stats()
    }

    /// Every request received, in order (up to the last 10 000).
    pub fn requests(&self) -> Vec<RequestRecord> {
        self.state.requests()
    }

    /// Add an event to the log at the current device time; returns its `serialNo`.
    /// `fields` (an object) adds or overrides item fields such as `doorNo` or `employeeNoString`.
    pub fn push_event(&self, major: i64, minor: i64, fields: Value) -> u64 {
        self.state.push_event(major, minor, fields)
    }

    /// Add a card event (major 5, minor 1) like the ones real terminals log.
    pub fn push_card_event(&self, employee_no: &str, name: &str, card_no: &str) -> u64 {
        self.push_event(
            5,
            1,
            serde_json::json!({
                "cardNo": card_no,
                "cardType": 1,
                "name": name,
                "cardReaderNo": 1,
                "doorNo": 1,
                "employeeNoString": employee_no,
                "type": 0,
                "userType": "normal",
                "currentVerifyMode": "cardOrFaceOrFp",
            }),
        )
    }

    /// Load the `InfoList` of a captured AcsEvent answer into the log, items unchanged;
    /// returns how many were added.
    pub fn load_acs_events_json(&self, json: &str) -> Result<usize, Error> {
        self.state.load_events(json)
    }

    /// The event log's items, oldest first.
    pub fn events(&self) -> Vec<Value> {
        self.state.events()
    }

    /// Delay every answer by this much (0 to stop).
    pub fn set_latency(&self, latency: Duration) {
        self.state.faults().latency = latency;
    }

    /// Answer the next `count` authenticated requests with `reply` instead of the normal answer.
    pub fn fail_next(&self, count: u32, reply: Reply) {
        let mut faults = self.state.faults();
        for _ in 0..count {
            faults.fail_next.push_back(reply.clone());
        }
    }

    /// Answer the next `count` requests with `reply` before authentication (for raw or fuzzed
    /// answers, including 401s with odd challenges).
    pub fn answer_raw_next(&self, count: u32, reply: Reply) {
        let mut faults = self.state.faults();
        for _ in 0..count {
            faults.raw_next.push_back(reply.clone());
        }
    }

    /// Close the connection of the next `count` requests without answering.
    pub fn drop_next(&self, count: u32) {
        self.state.faults().drop_next += count;
    }

    /// Forget every queued fault (error answers, raw answers, drops) and the latency.
    pub fn clear_faults(&self) {
        let mut faults = self.state.faults();
        faults.latency = Duration::ZERO;
        faults.fail_next.clear();
        faults.raw_next.clear();
        faults.drop_next = 0;
    }

    /// Make every nonce issued so far stale: the next answer to each gets `stale="TRUE"`.
    pub fn expire_nonces(&self) {
        self.state.expire_nonces();
    }

    /// Lift a lockout and reset the wrong-login count.
    pub fn unlock(&self) {
        self.state.unlock();
    }

    /// Stop the server and wait for it.
    pub async fn shutdown(mut self) {
        let _ = self.shutdown.send(true);
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = self.shutdown.send(true);
    }
}
