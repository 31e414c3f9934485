//! An in-memory pair — one [`GatewaySession`] and the server's [`ServerConnection`] over a
//! [`ControlPlane`] — on a virtual clock, with knobs for latency, loss, disconnects and
//! restarts (after quinn-proto's `tests/util.rs` `Pair`). Storage is real: the journal and the
//! queue are SQLite files in a temporary directory, reopened on restart.

#![allow(dead_code, unreachable_pub)]

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_control::gateway::{JournalConfig, Outcome, SqliteJournal};
use gateway_control::server::{
    CommandRecord, ConnectionEvent, ControlPlane, EventLog, EventLogConfig, NewCommand,
    QueueConfig, ServerConnection, ServerSession, ServerSessionConfig, ServerTransmit,
    SqliteCommandQueue,
};
use gateway_control::{GatewayEvent, GatewaySession, GatewaySessionConfig, Transmit};
use gateway_proto::auth::{GatewayDirectory, Principal, Role, StaticTokens};
use gateway_proto::clock::{Clock, ManualClock};
use gateway_proto::{Command, CommandId, ControlFrame, SessionId};

pub const GATEWAY: &str = "gw-1";
/// The tenant of [`GATEWAY`] in the server's gateway directory.
pub const TENANT: &str = "acme";
pub const START_MS: i64 = 1_750_000_000_000;

struct Link {
    server: ServerConnection,
    to_server: VecDeque<(Instant, ControlFrame)>,
    to_gateway: VecDeque<(Instant, ControlFrame)>,
}

pub struct Pair {
    pub dir: tempfile::TempDir,
    base: Instant,
    pub now: Instant,
    pub clock: ManualClock,
    pub gateway: GatewaySession,
    link: Option<Link>,
    pub plane: ControlPlane,
    pub events: EventLog,
    pub server_up: bool,
    pub latency: Duration,
    /// Frames from the server are dropped (the link looks alive but nothing comes back).
    pub drop_to_gateway: bool,
    /// Frames from the gateway are dropped.
    pub drop_to_server: bool,
    pub gateway_config: GatewaySessionConfig,
    pub server_config: ServerSessionConfig,
    pub queue_config: QueueConfig,
    pub max_in_flight: usize,
    /// Every gateway event with its time.
    pub gateway_events: Vec<(Instant, GatewayEvent)>,
    /// Every connection event for the server application.
    pub server_events: Vec<ConnectionEvent>,
    /// Frames the server received, in order.
    pub server_received: Vec<ControlFrame>,
    /// Commands the application is running (handed over, no outcome yet).
    pub running: Vec<Command>,
    /// How often the application was handed each command.
    pub executions: HashMap<CommandId, u32>,
    /// Complete every command at once with this outcome.
    pub auto_complete: Option<Outcome>,
    /// When the gateway asked for a connection.
    pub connect_attempts: Vec<Instant>,
    /// Whom the gateway's token stands for (default: [`GATEWAY`] of [`TENANT`]).
    pub principal: Principal,
    /// The server sends no `command` frame larger than this (`None`: unchecked).
    pub max_frame_bytes: Option<usize>,
}

/// The server's gateway directory: [`GATEWAY`] belongs to [`TENANT`], `gw-9` to `globex`.
pub fn directory() -> Arc<dyn GatewayDirectory> {
    Arc::new(
        StaticTokens::new()
            .with("gw-1-token", Principal::new(TENANT, GATEWAY, Role::Gateway))
            .with(
                "gw-9-token",
                Principal::new("globex", "gw-9", Role::Gateway),
            ),
    )
}

fn journal_path(dir: &tempfile::TempDir) -> PathBuf {
    dir.path().join("journal.db")
}

fn open_plane(
    dir: &tempfile::TempDir,
    clock: &ManualClock,
    queue_config: &QueueConfig,
    server_config: &ServerSessionConfig,
    max_in_flight: usize,
) -> (ControlPlane, EventLog) {
    let clock: Arc<dyn Clock> = Arc::new(clock.clone());
    let queue = SqliteCommandQueue::open(dir.path().join("queue.db"), queue_config.clone())
        .expect("open queue");
    let events = EventLog::open(
        dir.path().join("events.db"),
        EventLogConfig {
            history: 100_000,
            channel_capacity: 1_024,
        },
        clock.clone(),
    )
    .expect("open event log");
    let plane = ControlPlane::new(
        Arc::new(queue),
        events.clone(),
        clock,
        max_in_flight,
        server_config.offline_after_intervals,
    )
    .with_directory(directory());
    (plane, events)
}

impl Pair {
    pub fn new(
        gateway_config: GatewaySessionConfig,
        server_config: ServerSessionConfig,
        queue_config: QueueConfig,
    ) -> Pair {
        let dir = tempfile::tempdir().expect("tempdir");
        let clock = ManualClock::new(START_MS);
        let max_in_flight = 32;
        let (plane, events) =
            open_plane(&dir, &clock, &queue_config, &server_config, max_in_flight);
        let journal = SqliteJournal::open(journal_path(&dir), journal_config()).unwrap();
        let gateway = GatewaySession::new(gateway_config.clone(), journal).unwrap();
        let base = Instant::now();
        Pair {
            dir,
            base,
            now: base,
            clock,
            gateway,
            link: None,
            plane,
            events,
            server_up: true,
            latency: Duration::from_millis(10),
            drop_to_gateway: false,
            drop_to_server: false,
            gateway_config,
            server_config,
            queue_config,
            max_in_flight,
            gateway_events: Vec::new(),
            server_events: Vec::new(),
            server_received: Vec::new(),
            running: Vec::new(),
            executions: HashMap::new(),
            auto_complete: None,
            connect_attempts: Vec::new(),
            principal: Principal::new(TENANT, GATEWAY, Role::Gateway),
            max_frame_bytes: None,
        }
    }

    /// Defaults: heartbeats every second, seeded backoff (base 100 ms, cap 2 s).
    pub fn default_pair() -> Pair {
        let mut gateway = GatewaySessionConfig::new(GATEWAY);
        gateway.backoff.base_ms = 100;
        gateway.backoff.cap_ms = 2_000;
        gateway.backoff.seed = Some(42);
        gateway.handshake_timeout_ms = 1_000;
        let server = ServerSessionConfig {
            heartbeat_interval_ms: 1_000,
            offline_after_intervals: 1.5,
            handshake_timeout_ms: 1_000,
        };
        Pair::new(gateway, server, QueueConfig::default())
    }

    pub fn wall_ms(&self) -> i64 {
        self.clock.now_ms()
    }

    fn set_time(&mut self, t: Instant) {
        if t > self.now {
            self.now = t;
        }
        let ms = START_MS + self.now.duration_since(self.base).as_millis() as i64;
        self.clock.set_ms(ms);
    }

    pub fn is_connected(&self) -> bool {
        self.link.is_some()
    }

    pub fn epoch(&self) -> Option<u64> {
        self.link.as_ref().and_then(|l| l.server.epoch())
    }

    /// Process everything due now until nothing moves.
    pub fn pump(&mut self) {
        for _ in 0..10_000 {
            if !self.step() {
                return;
            }
        }
        panic!("the pair did not settle");
    }

    fn step(&mut self) -> bool {
        let now = self.now;
        let mut moved = false;
        // Gateway → wire.
        while let Some(transmit) = self.gateway.poll_transmit() {
            moved = true;
            match transmit {
                Transmit::Connect => {
                    self.connect_attempts.push(now);
                    if self.server_up && self.link.is_none() {
                        let session = ServerSession::new(
                            self.server_config.clone(),
                            self.principal.clone(),
                            SessionId::new_v7(),
                            Arc::new(self.clock.clone()),
                            now,
                        );
                        let mut server = ServerConnection::new(session);
                        if let Some(limit) = self.max_frame_bytes {
                            server = server.with_max_frame_bytes(limit);
                        }
                        server.check_admission(&self.plane);
                        self.link = Some(Link {
                            server,
                            to_server: VecDeque::new(),
                            to_gateway: VecDeque::new(),
                        });
                        self.gateway.connected(now);
                    } else {
                        self.gateway.disconnected(now);
                    }
                }
                Transmit::Frame(frame) => {
                    if let Some(link) = &mut self.link
                        && !self.drop_to_server
                    {
                        link.to_server.push_back((now + self.latency, frame));
                    }
                }
                Transmit::Close(_) => {
                    if let Some(mut link) = self.link.take() {
                        link.server.disconnected(now);
                        let interval = self.server_config.heartbeat_interval_ms;
                        self.server_events
                            .extend(link.server.drive(&self.plane, interval));
                    }
                }
            }
        }
        // Server → wire.
        let mut closed = false;
        if let Some(link) = &mut self.link {
            while let Some(transmit) = link.server.session_mut().poll_transmit() {
                moved = true;
                match transmit {
                    ServerTransmit::Frame(frame) => {
                        if !self.drop_to_gateway {
                            link.to_gateway.push_back((now + self.latency, frame));
                        }
                    }
                    ServerTransmit::Close(_) => closed = true,
                }
            }
        }
        if closed {
            // Frames sent before the close still arrive (TCP delivers them before the FIN).
            let link = self.link.take().expect("link");
            for (_, frame) in link.to_gateway {
                let _ = self.gateway.handle_frame(now, frame);
            }
            self.gateway.disconnected(now);
            return true;
        }
        // Deliveries.
        if let Some(link) = &mut self.link {
            while link.to_server.front().is_some_and(|(at, _)| *at <= now) {
                let (_, frame) = link.to_server.pop_front().expect("front");
                self.server_received.push(frame.clone());
                link.server.session_mut().handle_frame(now, frame);
                moved = true;
            }
            let mut arrived = Vec::new();
            while link.to_gateway.front().is_some_and(|(at, _)| *at <= now) {
                arrived.push(link.to_gateway.pop_front().expect("front").1);
            }
            for frame in arrived {
                moved = true;
                self.gateway.handle_frame(now, frame).expect("journal");
            }
        }
        // Timers.
        if self.gateway.poll_timeout().is_some_and(|t| t <= now) {
            self.gateway.handle_timeout(now);
            moved = true;
        }
        if let Some(link) = &mut self.link
            && link
                .server
                .session()
                .poll_timeout()
                .is_some_and(|t| t <= now)
        {
            link.server.session_mut().handle_timeout(now);
            moved = true;
        }
        if self
            .plane
            .next_timer_ms()
            .unwrap()
            .is_some_and(|t| t <= self.wall_ms())
        {
            let redeliver = self.plane.tick().unwrap();
            if let Some(link) = &mut self.link {
                // Only to a session of the command's gateway and tenant, as the hub does.
                let principal = link.server.session().principal().clone();
                let mine: Vec<Command> = redeliver
                    .into_iter()
                    .filter(|r| {
                        r.gateway_id == principal.subject
                            && r.tenant.as_deref() == Some(principal.tenant.as_str())
                    })
                    .map(|r| r.to_command())
                    .collect();
                link.server.send_commands(mine);
            }
            moved = true;
        }
        // Server application side.
        if let Some(link) = &mut self.link {
            let interval = self.server_config.heartbeat_interval_ms;
            let events = link.server.drive(&self.plane, interval);
            moved |= !events.is_empty();
            self.server_events.extend(events);
            while let Some(request) = link.server.poll_request() {
                moved = true;
                let reply = self.plane.apply(vec![request]).pop().expect("one reply");
                link.server.handle_reply(reply);
            }
        }
        // Gateway application side.
        while let Some(event) = self.gateway.poll_event() {
            moved = true;
            if let GatewayEvent::Command(command) = &event {
                *self.executions.entry(command.id).or_default() += 1;
                match self.auto_complete.clone() {
                    Some(outcome) => self.gateway.report_outcome(command.id, outcome).unwrap(),
                    None => self.running.push(command.clone()),
                }
            }
            self.gateway_events.push((now, event));
        }
        moved
    }

    fn next_due(&self) -> Option<Instant> {
        let mut due = Vec::new();
        due.extend(self.gateway.poll_timeout());
        if let Some(link) = &self.link {
            due.extend(link.server.session().poll_timeout());
            due.extend(link.to_server.front().map(|(t, _)| *t));
            due.extend(link.to_gateway.front().map(|(t, _)| *t));
        }
        if let Some(ms) = self.plane.next_timer_ms().unwrap() {
            let offset = (ms - self.wall_ms()).max(0) as u64;
            due.push(self.now + Duration::from_millis(offset));
        }
        due.into_iter().min()
    }

    /// Let `d` of virtual time pass, handling everything on time.
    pub fn advance(&mut self, d: Duration) {
        let target = self.now + d;
        loop {
            self.pump();
            match self.next_due() {
                Some(t) if t <= target => self.set_time(t.max(self.now)),
                _ => {
                    self.set_time(target);
                    self.pump();
                    return;
                }
            }
        }
    }

    /// Drop the connection (both ends see it go; frames in flight are lost).
    pub fn disconnect(&mut self) {
        if let Some(mut link) = self.link.take() {
            link.server.disconnected(self.now);
            let interval = self.server_config.heartbeat_interval_ms;
            self.server_events
                .extend(link.server.drive(&self.plane, interval));
            self.gateway.disconnected(self.now);
        }
        self.pump();
    }

    /// Crash and restart the gateway process: the session and the application's running
    /// commands are gone; the journal is reopened.
    pub fn restart_gateway(&mut self) {
        if let Some(mut link) = self.link.take() {
            link.server.disconnected(self.now);
            let interval = self.server_config.heartbeat_interval_ms;
            self.server_events
                .extend(link.server.drive(&self.plane, interval));
        }
        self.running.clear();
        let journal = SqliteJournal::open(journal_path(&self.dir), journal_config()).unwrap();
        self.gateway = GatewaySession::new(self.gateway_config.clone(), journal).unwrap();
        self.pump();
    }

    /// Crash and restart the server process: connections drop; queue and event log are
    /// reopened from their files; presence starts empty.
    pub fn restart_server(&mut self) {
        if self.link.take().is_some() {
            self.gateway.disconnected(self.now);
        }
        let (plane, events) = open_plane(
            &self.dir,
            &self.clock,
            &self.queue_config,
            &self.server_config,
            self.max_in_flight,
        );
        self.plane = plane;
        self.events = events;
        self.pump();
    }

    /// Take the server down (connections drop, connects fail) or bring it back.
    pub fn set_server_up(&mut self, up: bool) {
        self.server_up = up;
        if !up && self.link.take().is_some() {
            self.gateway.disconnected(self.now);
        }
        self.pump();
    }

    pub fn enqueue(&mut self, command: NewCommand) -> CommandRecord {
        let record = self.plane.enqueue(command).unwrap();
        if let Some(link) = &mut self.link {
            link.server.request_delivery();
        }
        self.pump();
        record
    }

    pub fn complete(&mut self, id: CommandId, outcome: Outcome) {
        self.running.retain(|c| c.id != id);
        self.gateway.report_outcome(id, outcome).unwrap();
        self.pump();
    }

    pub fn command(&self, id: &CommandId) -> CommandRecord {
        self.plane.command(id).unwrap().expect("command exists")
    }

    /// Events of `kind` in the log, as JSON.
    pub fn logged(&self, kind: &str) -> Vec<serde_json::Value> {
        self.events
            .since(0, usize::MAX)
            .into_iter()
            .filter(|e| e.kind == kind)
            .map(|e| e.data.clone())
            .collect()
    }
}

/// The journal without fsync: these tests kill the "process", not the machine, and WAL with
/// `synchronous=NORMAL` survives that.
fn journal_config() -> JournalConfig {
    JournalConfig {
        fsync_every_write: false,
        ..JournalConfig::default()
    }
}
