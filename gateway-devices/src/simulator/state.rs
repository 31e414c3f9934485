//! The simulated device's state: nonces and logins, doors, the event log, fault knobs, stats.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use gateway_proto::clock::Clock;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};
use tokio::time::Instant;

use super::{ChallengeStyle, Reply, SimulatorConfig};
use crate::Error;
use crate::digest::{DigestAuthorization, parse_challenges};
use crate::hikvision::acs::parse_search_page;
use crate::time::{format_datetime, parse_datetime};

const MAX_NONCES: usize = 1024;
const MAX_LOG: usize = 10_000;

/// A door's state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DoorState {
    /// Locked (the normal state).
    Closed,
    /// Unlocked by `open`, for the configured open time.
    Open,
    /// Kept unlocked by `alwaysOpen`.
    AlwaysOpen,
    /// Kept locked by `alwaysClose`.
    AlwaysClosed,
}

/// Counters since the simulator started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SimulatorStats {
    /// Requests received (including dropped and refused ones).
    pub requests: u64,
    /// 401 answers sent.
    pub unauthorized: u64,
    /// Answers with wrong credentials (what a lockout counts).
    pub failed_logins: u64,
    /// Requests that passed authentication.
    pub authenticated: u64,
    /// Answers with a stale nonce that got `stale="TRUE"`.
    pub stale_nonces: u64,
    /// Answers that reused a nonce count (replays), refused.
    pub replays: u64,
    /// Connections closed without an answer.
    pub dropped: u64,
    /// Most requests handled at the same time.
    pub max_concurrent: u64,
    /// Reboots.
    pub reboots: u64,
}

/// One request as the simulator saw it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestRecord {
    /// Method.
    pub method: String,
    /// Path and query.
    pub path: String,
    /// Whether it carried an `Authorization` header.
    pub authorization: bool,
    /// The status answered (0 when the connection was dropped).
    pub status: u16,
}

struct NonceInfo {
    issued: Instant,
    forced_stale: bool,
    used_nc: HashSet<u32>,
}

struct DoorSim {
    state: DoorState,
    opened_at: Option<Instant>,
}

pub(crate) struct Faults {
    pub(crate) latency: Duration,
    pub(crate) fail_next: VecDeque<Reply>,
    pub(crate) raw_next: VecDeque<Reply>,
    pub(crate) drop_next: u32,
}

struct Auth {
    nonces: HashMap<String, NonceInfo>,
    nonce_order: VecDeque<String>,
    failed_in_a_row: u32,
    locked_until: Option<Instant>,
}

struct StoredEvent {
    time_ms: i64,
    item: Value,
}

struct Log {
    events: Vec<StoredEvent>,
    next_serial: u64,
}

/// What the auth check decided.
pub(crate) enum AuthDecision {
    /// Go on.
    Allowed,
    /// Answer 401 with this challenge and body.
    Challenge { header: String, body: String },
    /// Answer 400 (malformed or mismatched authorization).
    BadRequest(String),
}

pub(crate) struct SimState {
    pub(crate) config: SimulatorConfig,
    clock: Arc<dyn Clock>,
    auth: Mutex<Auth>,
    doors: Mutex<Vec<DoorSim>>,
    log: Mutex<Log>,
    faults: Mutex<Faults>,
    requests: Mutex<VecDeque<RequestRecord>>,
    offline_until: Mutex<Option<Instant>>,
    counters: Counters,
}

#[derive(Default)]
struct Counters {
    requests: AtomicU64,
    unauthorized: AtomicU64,
    failed_logins: AtomicU64,
    authenticated: AtomicU64,
    stale_nonces: AtomicU64,
    replays: AtomicU64,
    dropped: AtomicU64,
    concurrent: AtomicU64,
    max_concurrent: AtomicU64,
    reboots: AtomicU64,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

impl SimState {
    pub(crate) fn new(config: SimulatorConfig, clock: Arc<dyn Clock>) -> Self {
        let doors = (0..config.doors)
            .map(|_| DoorSim {
                state: DoorState::Closed,
                opened_at: None,
            })
            .collect();
        let mut auth = Auth {
            nonces: HashMap::new(),
            nonce_order: VecDeque::new(),
            failed_in_a_row: 0,
            locked_until: None,
        };
        if let ChallengeStyle::Verbatim(header) = &config.challenge_style {
            for challenge in parse_challenges(header) {
                if let Some(nonce) = challenge.param("nonce") {
                    remember_nonce(&mut auth, nonce.to_string());
                }
            }
        }
        SimState {
            config,
            clock,
            auth: Mutex::new(auth),
            doors: Mutex::new(doors),
            log: Mutex::new(Log {
                events: Vec::new(),
                next_serial: 1,
            }),
            faults: Mutex::new(Faults {
                latency: Duration::ZERO,
                fail_next: VecDeque::new(),
                raw_next: VecDeque::new(),
                drop_next: 0,
            }),
            requests: Mutex::new(VecDeque::new()),
            offline_until: Mutex::new(None),
            counters: Counters::default(),
        }
    }

    pub(crate) fn faults(&self) -> MutexGuard<'_, Faults> {
        lock(&self.faults)
    }

    // ----- stats -----

    pub(crate) fn request_started(&self) {
        self.counters.requests.fetch_add(1, Ordering::SeqCst);
        let now = self.counters.concurrent.fetch_add(1, Ordering::SeqCst) + 1;
        self.counters
            .max_concurrent
            .fetch_max(now, Ordering::SeqCst);
    }

    pub(crate) fn request_finished(&self, record: RequestRecord) {
        self.counters.concurrent.fetch_sub(1, Ordering::SeqCst);
        if record.status == 0 {
            self.counters.dropped.fetch_add(1, Ordering::SeqCst);
        }
        let mut requests = lock(&self.requests);
        if requests.len() >= MAX_LOG {
            requests.pop_front();
        }
        requests.push_back(record);
    }

    pub(crate) fn stats(&self) -> SimulatorStats {
        let c = &self.counters;
        SimulatorStats {
            requests: c.requests.load(Ordering::SeqCst),
            unauthorized: c.unauthorized.load(Ordering::SeqCst),
            failed_logins: c.failed_logins.load(Ordering::SeqCst),
            authenticated: c.authenticated.load(Ordering::SeqCst),
            stale_nonces: c.stale_nonces.load(Ordering::SeqCst),
            replays: c.replays.load(Ordering::SeqCst),
            dropped: c.dropped.load(Ordering::SeqCst),
            max_concurrent: c.max_concurrent.load(Ordering::SeqCst),
            reboots: c.reboots.load(Ordering::SeqCst),
        }
    }

    pub(crate) fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.requests).iter().cloned().collect()
    }

    // ----- reboot -----

    pub(crate) fn is_offline(&self) -> bool {
        lock(&self.offline_until).is_some_and(|until| Instant::now() < until)
    }

    pub(crate) fn reboot(&self) {
        self.counters.reboots.fetch_add(1, Ordering::SeqCst);
        *lock(&self.offline_until) =
            Some(Instant::now() + Duration::from_millis(self.config.reboot_downtime_ms));
        for door in lock(&self.doors).iter_mut() {
            door.state = DoorState::Closed;
            door.opened_at = None;
        }
        let mut auth = lock(&self.auth);
        // A rebooted device forgets its nonces (a verbatim challenge's nonce stays valid).
        auth.nonces.clear();
        auth.nonce_order.clear();
        if let ChallengeStyle::Verbatim(header) = &self.config.challenge_style {
            for challenge in parse_challenges(header) {
                if let Some(nonce) = challenge.param("nonce") {
                    remember_nonce(&mut auth, nonce.to_string());
                }
            }
        }
    }

    // ----- authentication -----

    pub(crate) fn expire_nonces(&self) {
        for info in lock(&self.auth).nonces.values_mut() {
            info.forced_stale = true;
        }
    }

    pub(crate) fn unlock(&self) {
        let mut auth = lock(&self.auth);
        auth.locked_until = None;
        auth.failed_in_a_row = 0;
    }

    /// Decide on a request's `Authorization` header. `uri` is the request target.
    pub(crate) fn check_auth(&self, method: &str, uri: &str, header: Option<&str>) -> AuthDecision {
        let mut auth = lock(&self.auth);
        let now = Instant::now();
        if let Some(until) = auth.locked_until {
            if now < until {
                let remaining = (until - now).as_secs().max(1);
                return self.challenge(&mut auth, false, Some((true, remaining, 0)));
            }
            auth.locked_until = None;
            auth.failed_in_a_row = 0;
        }
        let Some(header) = header else {
            return self.challenge(&mut auth, false, None);
        };
        let config = &self.config;
        if let Some(token) = header.strip_prefix("Basic ") {
            let accepts_basic = matches!(
                config.challenge_style,
                ChallengeStyle::BasicOnly | ChallengeStyle::CameraWithBasic
            );
            let expected = base64::Engine::encode(
                &base64::engine::general_purpose::STANDARD,
                format!("{}:{}", config.username, config.password),
            );
            if accepts_basic && token.trim() == expected {
                return self.allowed(&mut auth);
            }
            return self.wrong_login(&mut auth);
        }
        let Some(answer) = DigestAuthorization::parse(header) else {
            return AuthDecision::BadRequest("malformed Authorization header".to_string());
        };
        if answer.uri != uri {
            return AuthDecision::BadRequest(format!(
                "the digest uri `{}` is not the request target `{uri}`",
                answer.uri
            ));
        }
        let realm_ok = match &config.challenge_style {
            ChallengeStyle::Verbatim(h) => parse_challenges(h)
                .iter()
                .any(|c| c.param("realm") == Some(answer.realm.as_str())),
            _ => answer.realm == config.realm,
        };
        if answer.username != config.username
            || !realm_ok
            || !answer.verify(method, &config.password)
        {
            return self.wrong_login(&mut auth);
        }
        let ttl = Duration::from_millis(config.nonce_ttl_ms);
        let verbatim = matches!(config.challenge_style, ChallengeStyle::Verbatim(_));
        let Some(info) = auth.nonces.get_mut(&answer.nonce) else {
            // Not a nonce we issued (or we rebooted since): a fresh challenge.
            return self.challenge(&mut auth, false, None);
        };
        if !verbatim && (info.forced_stale || now.duration_since(info.issued) > ttl) {
            self.counters.stale_nonces.fetch_add(1, Ordering::SeqCst);
            return self.challenge(&mut auth, true, None);
        }
        if answer.qop.is_some() {
            let Some(nc) = answer.nc else {
                return AuthDecision::BadRequest("qop without a valid nc".to_string());
            };
            if !info.used_nc.insert(nc) {
                self.counters.replays.fetch_add(1, Ordering::SeqCst);
                return self.challenge(&mut auth, false, None);
            }
        }
        self.allowed(&mut auth)
    }

    fn allowed(&self, auth: &mut Auth) -> AuthDecision {
        auth.failed_in_a_row = 0;
        self.counters.authenticated.fetch_add(1, Ordering::SeqCst);
        AuthDecision::Allowed
    }

    fn wrong_login(&self, auth: &mut Auth) -> AuthDecision {
        self.counters.failed_logins.fetch_add(1, Ordering::SeqCst);
        auth.failed_in_a_row += 1;
        let limit = self.config.lockout_after;
        if limit > 0 && auth.failed_in_a_row >= limit {
            auth.locked_until =
                Some(Instant::now() + Duration::from_millis(self.config.lockout_ms));
            let secs = self.config.lockout_ms / 1000;
            return self.challenge(auth, false, Some((true, secs, 0)));
        }
        let left = if limit > 0 {
            u64::from(limit - auth.failed_in_a_row)
        } else {
            0
        };
        self.challenge(auth, false, Some((false, 0, left)))
    }

    /// A 401 with a new nonce. `lock` = (locked, unlock secs, retries left) for the body.
    fn challenge(
        &self,
        auth: &mut Auth,
        stale: bool,
        lock: Option<(bool, u64, u64)>,
    ) -> AuthDecision {
        self.counters.unauthorized.fetch_add(1, Ordering::SeqCst);
        let config = &self.config;
        let body = match &config.unauthorized_body {
            Some(body) => body.clone(),
            None => crate::hikvision::isapi::user_check_body(
                lock.map(|(locked, unlock, left)| crate::Lockout {
                    locked,
                    unlock_in_secs: Some(unlock),
                    retries_left: Some(left),
                })
                .as_ref(),
            ),
        };
        let stale_text = if stale { "TRUE" } else { "FALSE" };
        let realm = &config.realm;
        let header = match &config.challenge_style {
            ChallengeStyle::Verbatim(header) => header.clone(),
            ChallengeStyle::BasicOnly => format!("Basic realm=\"{realm}\""),
            ChallengeStyle::Nvr => {
                let nonce = format!(
                    "{}:{}",
                    hex::encode(rand::random::<[u8; 16]>()),
                    self.clock.now_ms()
                );
                remember_nonce(auth, nonce.clone());
                format!(
                    "Digest realm=\"{realm}\", domain=\"::\", qop=\"auth\", nonce=\"{nonce}\", opaque=\"\", algorithm=\"MD5\", stale=\"{stale_text}\""
                )
            }
            ChallengeStyle::Camera | ChallengeStyle::CameraWithBasic => {
                // Cameras send base64 text, hex-encoded.
                let b64 = base64::Engine::encode(
                    &base64::engine::general_purpose::STANDARD,
                    hex::encode(rand::random::<[u8; 8]>()),
                );
                let nonce = hex::encode(b64);
                remember_nonce(auth, nonce.clone());
                let mut header = format!(
                    "Digest qop=\"auth\", realm=\"{realm}\", nonce=\"{nonce}\", stale=\"{stale_text}\""
                );
                if config.challenge_style == ChallengeStyle::CameraWithBasic {
                    header.push_str(&format!(", Basic realm=\"{realm}\""));
                }
                header
            }
        };
        AuthDecision::Challenge { header, body }
    }

    // ----- doors -----

    pub(crate) fn door_state(&self, door: u32) -> Option<DoorState> {
        let mut doors = lock(&self.doors);
        let index = usize::try_from(door.checked_sub(1)?).ok()?;
        let sim = doors.get_mut(index)?;
        self.settle(sim);
        Some(sim.state)
    }

    fn settle(&self, door: &mut DoorSim) {
        if door.state == DoorState::Open
            && door
                .opened_at
                .is_some_and(|at| at.elapsed() >= Duration::from_millis(self.config.door_open_ms))
        {
            door.state = DoorState::Closed;
            door.opened_at = None;
        }
    }

    /// Apply a door `cmd`; `Err` with a reason when the door or cmd is not accepted.
    pub(crate) fn control_door(&self, door: u32, cmd: &str) -> Result<(), String> {
        if !self.config.door_commands.iter().any(|c| c == cmd) {
            return Err(format!("cmd `{cmd}` is not accepted"));
        }
        let (state, minor) = match cmd {
            "open" => (DoorState::Open, 1024),
            "close" => (DoorState::Closed, 1025),
            "alwaysOpen" => (DoorState::AlwaysOpen, 1026),
            "alwaysClose" => (DoorState::AlwaysClosed, 1027),
            other => return Err(format!("cmd `{other}` has no effect here")),
        };
        {
            let mut doors = lock(&self.doors);
            let index = door
                .checked_sub(1)
                .and_then(|i| usize::try_from(i).ok())
                .filter(|i| *i < doors.len())
                .ok_or_else(|| format!("door {door} does not exist"))?;
            let sim = &mut doors[index];
            sim.state = state;
            sim.opened_at = (state == DoorState::Open).then(Instant::now);
        }
        self.push_event(
            3,
            minor,
            json!({"doorNo": door, "netUser": self.config.username}),
        );
        Ok(())
    }

    // ----- events -----

    pub(crate) fn now_text(&self) -> String {
        format_datetime(self.clock.now_ms(), self.config.utc_offset_secs)
    }

    pub(crate) fn push_event(&self, major: i64, minor: i64, fields: Value) -> u64 {
        // Device times have whole seconds.
        let now = self.clock.now_ms();
        let now = now - now.rem_euclid(1000);
        let mut log = lock(&self.log);
        let serial = log.next_serial;
        log.next_serial += 1;
        let mut item = Map::new();
        item.insert("major".into(), json!(major));
        item.insert("minor".into(), json!(minor));
        item.insert(
            "time".into(),
            json!(format_datetime(now, self.config.utc_offset_secs)),
        );
        if let Value::Object(extra) = fields {
            item.extend(extra);
        }
        item.insert("serialNo".into(), json!(serial));
        log.events.push(StoredEvent {
            time_ms: now,
            item: Value::Object(item),
        });
        serial
    }

    pub(crate) fn load_events(&self, json_text: &str) -> Result<usize, Error> {
        let page = parse_search_page(json_text.as_bytes(), "AcsEvent", "InfoList")?;
        let mut log = lock(&self.log);
        let mut added = 0;
        for item in page.items {
            let time_ms = item
                .get("time")
                .and_then(Value::as_str)
                .and_then(parse_datetime)
                .map(|t| t.unix_ms)
                .ok_or_else(|| Error::protocol("an InfoList item has no readable `time`"))?;
            if let Some(serial) = item.get("serialNo").and_then(Value::as_u64) {
                log.next_serial = log.next_serial.max(serial + 1);
            }
            log.events.push(StoredEvent { time_ms, item });
            added += 1;
        }
        log.events.sort_by_key(|e| {
            (
                e.time_ms,
                e.item.get("serialNo").and_then(Value::as_u64).unwrap_or(0),
            )
        });
        Ok(added)
    }

    pub(crate) fn events(&self) -> Vec<Value> {
        lock(&self.log)
            .events
            .iter()
            .map(|e| e.item.clone())
            .collect()
    }

    /// Events matching a search, oldest first (or newest first).
    pub(crate) fn search_events(
        &self,
        start_ms: Option<i64>,
        end_ms: Option<i64>,
        major: i64,
        minor: i64,
        reverse: bool,
    ) -> Vec<Value> {
        let log = lock(&self.log);
        let mut matches: Vec<Value> = log
            .events
            .iter()
            .filter(|e| start_ms.is_none_or(|s| e.time_ms >= s))
            .filter(|e| end_ms.is_none_or(|end| e.time_ms <= end))
            .filter(|e| major == 0 || e.item.get("major").and_then(Value::as_i64) == Some(major))
            .filter(|e| minor == 0 || e.item.get("minor").and_then(Value::as_i64) == Some(minor))
            .map(|e| e.item.clone())
            .collect();
        if reverse {
            matches.reverse();
        }
        matches
    }
}

fn remember_nonce(auth: &mut Auth, nonce: String) {
    if auth.nonce_order.len() >= MAX_NONCES
        && let Some(oldest) = auth.nonce_order.pop_front()
    {
        auth.nonces.remove(&oldest);
    }
    auth.nonce_order.push_back(nonce.clone());
    auth.nonces.insert(
        nonce,
        NonceInfo {
            issued: Instant::now(),
            forced_stale: false,
            used_nc: HashSet::new(),
        },
    );
}
