//! [`Hub`]: the tokio side of the server — which gateway is connected where, one task per
//! WebSocket connection driving a [`ServerSession`], and the timer task.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use axum::extract::ws::{CloseFrame, Message, WebSocket};
use gateway_proto::auth::{Authenticator, GatewayDirectory, Principal};
use gateway_proto::clock::Clock;
use gateway_proto::{
    Command, CommandId, ControlFrame, Encoding, Hello, Limits, SessionId, WireMessage, decode_frame,
};
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc::error::TrySendError;
use tokio::sync::{Notify, broadcast, mpsc};

use super::connection::{ConnectionEvent, ServerConnection};
use super::events::EventLog;
use super::plane::{ControlPlane, PlaneRequest, frame_len};
use super::presence::GatewayPresence;
use super::queue::{
    AckRecord, CommandFilter, CommandQueue, CommandRecord, NewCommand, StateChange,
};
use super::session::{ServerSession, ServerSessionConfig, ServerTransmit};
use crate::{CloseReason, Error};

/// Settings of a [`Hub`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct HubConfig {
    /// Per-connection session settings (heartbeat interval, silence rule, handshake timeout).
    pub session: ServerSessionConfig,
    /// Unfinished commands per gateway at once; further ones wait queued. Default 32.
    pub max_in_flight_per_gateway: usize,
    /// Size limits for frames from gateways; `limits.max_frame_bytes` also bounds the frames
    /// sent to them (a command whose frame would be larger is refused at enqueue, and failed
    /// as `rejected` rather than sent).
    pub limits: Limits,
    /// WebSocket read buffer per connection, bytes (allocated up front: it dominates the
    /// memory of an idle connection). Default 4,096.
    pub ws_read_buffer_bytes: usize,
    /// Hub events a slow [`Hub::subscribe`] receiver may fall behind before it lags.
    /// Default 16,384.
    pub hub_event_capacity: usize,
    /// Longest sleep of the timer task, ms (a safety net; it wakes for every due timer anyway).
    /// Default 1,000.
    pub max_timer_sleep_ms: u64,
    /// Messages (deliveries, frames, queue answers) that may wait for one connection. A
    /// gateway that stops reading stalls its connection; once this many wait, the connection
    /// is closed ([`CloseReason::Backlogged`]) and what it did not get is redelivered on its
    /// next session. Default 1,024.
    pub connection_queue_capacity: usize,
    /// Longest time writing one frame to a gateway may take, ms; a connection stuck longer
    /// (the gateway stopped reading) is closed ([`CloseReason::Backlogged`]). Default 60,000.
    pub write_timeout_ms: u64,
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            session: ServerSessionConfig::default(),
            max_in_flight_per_gateway: 32,
            limits: Limits::default(),
            ws_read_buffer_bytes: 4_096,
            hub_event_capacity: 16_384,
            max_timer_sleep_ms: 1_000,
            connection_queue_capacity: 1_024,
            write_timeout_ms: 60_000,
        }
    }
}

impl HubConfig {
    /// Check every value; the error names the parameter.
    pub fn validate(&self) -> Result<(), Error> {
        self.session.validate()?;
        for (param, value) in [
            (
                "max_in_flight_per_gateway",
                self.max_in_flight_per_gateway as u64,
            ),
            ("ws_read_buffer_bytes", self.ws_read_buffer_bytes as u64),
            ("hub_event_capacity", self.hub_event_capacity as u64),
            ("max_timer_sleep_ms", self.max_timer_sleep_ms),
            (
                "connection_queue_capacity",
                self.connection_queue_capacity as u64,
            ),
            ("write_timeout_ms", self.write_timeout_ms),
            ("limits.max_frame_bytes", self.limits.max_frame_bytes as u64),
        ] {
            if value == 0 {
                return Err(Error::InvalidConfig {
                    param,
                    reason: "must be at least 1".into(),
                });
            }
        }
        Ok(())
    }
}

/// What happens on the hub, for the application (policy rollouts, audit, ...).
#[derive(Debug, Clone)]
#[non_exhaustive]
pub enum HubEvent {
    /// A gateway's session was established. `hello.applied_policies` tells which policy
    /// versions it runs.
    SessionEstablished {
        /// The gateway.
        gateway_id: String,
        /// Its tenant (from its token).
        tenant: String,
        /// The session.
        session_id: SessionId,
        /// The presence epoch of the session.
        epoch: u64,
        /// The gateway's `hello`.
        hello: Arc<Hello>,
    },
    /// A gateway → server frame the control channel does not consume (`policy_status`,
    /// `error`).
    Frame {
        /// The gateway.
        gateway_id: String,
        /// The session it came on.
        session_id: SessionId,
        /// The frame.
        frame: Arc<ControlFrame>,
    },
    /// A session ended.
    SessionClosed {
        /// The gateway.
        gateway_id: String,
        /// The session.
        session_id: SessionId,
        /// Its epoch.
        epoch: u64,
        /// Why.
        reason: CloseReason,
    },
}

enum ConnMsg {
    Deliver,
    Commands(Vec<Command>),
    Frame(Box<ControlFrame>),
    Close(CloseReason),
    Reply(Result<Vec<Command>, Error>),
}

/// The sending side of one connection's bounded queue.
#[derive(Clone)]
struct ConnTx {
    tx: mpsc::Sender<ConnMsg>,
    /// Told when the queue overflowed: the connection closes itself.
    backlogged: Arc<Notify>,
}

impl ConnTx {
    /// Queue `msg` for the connection. A full queue means the connection does not take its
    /// frames (the gateway stopped reading): it is told to close, and its commands wait in
    /// the queue for its next session. False when the message was not queued.
    fn send(&self, msg: ConnMsg) -> bool {
        match self.tx.try_send(msg) {
            Ok(()) => true,
            Err(TrySendError::Full(_)) => {
                metrics::counter!("gateway_control_connections_backlogged_total").increment(1);
                self.backlogged.notify_one();
                false
            }
            Err(TrySendError::Closed(_)) => false,
        }
    }
}

/// A connection's queue request, for the batching worker.
struct WorkItem {
    request: PlaneRequest,
    reply: ConnTx,
}

/// Most requests committed in one transaction.
const MAX_BATCH: usize = 1_024;

/// The group-commit worker: takes every request waiting, runs them in one transaction,
/// answers each connection in order. A thread of its own, since SQLite blocks.
fn run_worker(plane: Arc<ControlPlane>, mut work: mpsc::UnboundedReceiver<WorkItem>) {
    while let Some(first) = work.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match work.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let (requests, replies): (Vec<_>, Vec<_>) =
            batch.into_iter().map(|w| (w.request, w.reply)).unzip();
        for (reply, result) in replies.into_iter().zip(plane.apply(requests)) {
            reply.send(ConnMsg::Reply(result));
        }
    }
}

struct Conn {
    epoch: u64,
    session_id: SessionId,
    /// The tenant of the session's principal: only commands of this tenant go to it.
    tenant: String,
    tx: ConnTx,
}

struct Inner {
    plane: Arc<ControlPlane>,
    work: mpsc::UnboundedSender<WorkItem>,
    auth: Arc<dyn Authenticator>,
    config: HubConfig,
    clock: Arc<dyn Clock>,
    conns: Mutex<HashMap<String, Conn>>,
    hub_events: broadcast::Sender<HubEvent>,
    timers: Notify,
}

/// The server's control-channel hub. Cheap to clone (shared).
///
/// Build it over a [`CommandQueue`] and an [`EventLog`] — with [`Hub::builder`] and a
/// [`GatewayDirectory`] in production — start its timers with [`Hub::spawn_timers`], and
/// serve [`Hub::router`] (the WebSocket endpoint and the REST fallback) and, for operators,
/// [`Hub::operator_router`] and [`super::event_routes`].
///
/// # Tenants
///
/// Gateway ids are unique across the server; the directory says which tenant each belongs
/// to. The hub refuses a gateway whose token names another tenant (an `error` frame and a
/// close at the handshake, 403 on the REST fallback), refuses commands for a gateway outside
/// the caller's tenant as unknown, and hands a command only to a session of its own gateway
/// and tenant. Without a directory ([`Hub::new`]) it knows only the gateways that connected
/// since it started, each under the tenant it first connected with — see
/// [`ControlPlane`]'s tenant rules.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Hub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hub")
            .field("connected", &self.conns().len())
            .finish_non_exhaustive()
    }
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

/// Builds a [`Hub`]; from [`Hub::builder`].
pub struct HubBuilder {
    config: HubConfig,
    queue: Arc<dyn CommandQueue>,
    events: EventLog,
    auth: Arc<dyn Authenticator>,
    clock: Arc<dyn Clock>,
    directory: Option<Arc<dyn GatewayDirectory>>,
}

impl std::fmt::Debug for HubBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HubBuilder")
            .field("config", &self.config)
            .field("directory", &self.directory.is_some())
            .finish_non_exhaustive()
    }
}

impl HubBuilder {
    /// The server's gateway directory: which tenant each provisioned gateway belongs to
    /// ([`gateway_proto::auth::StaticTokens`] is one). Without it the hub falls back to the
    /// tenants gateways connected under since it started (see [`ControlPlane`]).
    pub fn directory(mut self, directory: Arc<dyn GatewayDirectory>) -> Self {
        self.directory = Some(directory);
        self
    }

    /// Validate the config, start the queue worker thread and build the hub.
    pub fn build(self) -> Result<Hub, Error> {
        let HubBuilder {
            config,
            queue,
            events,
            auth,
            clock,
            directory,
        } = self;
        config.validate()?;
        let mut plane = ControlPlane::new(
            queue,
            events,
            clock.clone(),
            config.max_in_flight_per_gateway,
            config.session.offline_after_intervals,
        )
        .with_max_frame_bytes(config.limits.max_frame_bytes);
        if let Some(directory) = directory {
            plane = plane.with_directory(directory);
        }
        let plane = Arc::new(plane);
        let (work, work_rx) = mpsc::unbounded_channel();
        let worker_plane = plane.clone();
        std::thread::Builder::new()
            .name("gateway-control-queue".into())
            .spawn(move || run_worker(worker_plane, work_rx))
            .map_err(|e| Error::InvalidConfig {
                param: "hub",
                reason: format!("could not start the queue worker thread: {e}"),
            })?;
        let (hub_events, _) = broadcast::channel(config.hub_event_capacity);
        Ok(Hub {
            inner: Arc::new(Inner {
                plane,
                work,
                auth,
                config,
                clock,
                conns: Mutex::new(HashMap::new()),
                hub_events,
                timers: Notify::new(),
            }),
        })
    }
}

impl Hub {
    /// A hub without a gateway directory: gateways are known only once they connected, under
    /// the tenant they first connected with (commands for others are refused as unknown; see
    /// [`ControlPlane`]). Production servers use [`Hub::builder`] with
    /// [`HubBuilder::directory`]. `auth` turns bearer tokens into principals: gateways connect
    /// with a [`gateway_proto::auth::Role::Gateway`] token, operators call the operator routes
    /// with an `Admin` one.
    pub fn new(
        config: HubConfig,
        queue: Arc<dyn CommandQueue>,
        events: EventLog,
        auth: Arc<dyn Authenticator>,
        clock: Arc<dyn Clock>,
    ) -> Result<Hub, Error> {
        Self::builder(config, queue, events, auth, clock).build()
    }

    /// A hub builder; add the gateway directory with [`HubBuilder::directory`], then
    /// [`HubBuilder::build`]:
    ///
    /// ```no_run
    /// # fn main() -> Result<(), gateway_control::Error> {
    /// use std::sync::Arc;
    /// use gateway_control::server::{EventLog, EventLogConfig, Hub, HubConfig, QueueConfig, SqliteCommandQueue};
    /// use gateway_proto::auth::{Principal, Role, StaticTokens};
    /// use gateway_proto::clock::{Clock, SystemClock};
    ///
    /// let tokens = Arc::new(
    ///     StaticTokens::new()
    ///         .with("gw-1-token", Principal::new("acme", "gw-1", Role::Gateway))
    ///         .with("ops-token", Principal::new("acme", "ops", Role::Admin)),
    /// );
    /// let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    /// let queue = SqliteCommandQueue::open("commands.db", QueueConfig::default())?;
    /// let events = EventLog::open("events.db", EventLogConfig::default(), clock.clone())?;
    /// // The same table authenticates tokens and says which tenant each gateway belongs to.
    /// let hub = Hub::builder(HubConfig::default(), Arc::new(queue), events, tokens.clone(), clock)
    ///     .directory(tokens)
    ///     .build()?;
    /// # let _ = hub;
    /// # Ok(())
    /// # }
    /// ```
    pub fn builder(
        config: HubConfig,
        queue: Arc<dyn CommandQueue>,
        events: EventLog,
        auth: Arc<dyn Authenticator>,
        clock: Arc<dyn Clock>,
    ) -> HubBuilder {
        HubBuilder {
            config,
            queue,
            events,
            auth,
            clock,
            directory: None,
        }
    }

    fn conns(&self) -> MutexGuard<'_, HashMap<String, Conn>> {
        self.inner.conns.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The control plane (queue, presence, events) under the hub.
    pub fn plane(&self) -> &ControlPlane {
        &self.inner.plane
    }

    /// The event log.
    pub fn events(&self) -> &EventLog {
        self.inner.plane.events()
    }

    /// The authenticator.
    pub fn authenticator(&self) -> &Arc<dyn Authenticator> {
        &self.inner.auth
    }

    /// The config.
    pub fn config(&self) -> &HubConfig {
        &self.inner.config
    }

    /// Hub events: sessions established and closed, frames for the application. A receiver
    /// that falls more than `hub_event_capacity` behind gets `Lagged` and skips ahead.
    pub fn subscribe(&self) -> broadcast::Receiver<HubEvent> {
        self.inner.hub_events.subscribe()
    }

    /// True when the gateway has a live WebSocket session here.
    pub fn is_connected(&self, gateway_id: &str) -> bool {
        self.conns().contains_key(gateway_id)
    }

    /// The live session of a gateway here: its id and presence epoch.
    pub fn session_of(&self, gateway_id: &str) -> Option<(SessionId, u64)> {
        self.conns()
            .get(gateway_id)
            .map(|c| (c.session_id, c.epoch))
    }

    /// Gateways with a live WebSocket session here.
    pub fn connected(&self) -> Vec<String> {
        self.conns().keys().cloned().collect()
    }

    /// The tenant of a gateway (the directory's answer; without one, the tenant it connected
    /// under). `None`: not provisioned.
    pub fn tenant_of(&self, gateway_id: &str) -> Option<String> {
        self.inner.plane.tenant_of(gateway_id)
    }

    /// Send a server → gateway frame (`policy_update`, `error`, or a `command` that bypasses
    /// the queue) to a connected gateway. It is sent after frames already queued for it.
    /// Trusted server code: it names the gateway only (its session was admitted under the
    /// gateway's tenant). A frame larger than `limits.max_frame_bytes` is refused
    /// (`payload_too_large`): the gateway could not take it.
    pub fn send_frame(&self, gateway_id: &str, frame: ControlFrame) -> Result<(), Error> {
        match &frame {
            ControlFrame::Command(_) | ControlFrame::PolicyUpdate(_) | ControlFrame::Error(_) => {}
            other => {
                return Err(Error::FrameNotAllowed {
                    frame_type: other.frame_type(),
                    reason: "only command, policy_update and error go from server to gateway outside the session's own frames",
                });
            }
        }
        self.inner
            .config
            .limits
            .check_frame_size(frame_len(&frame))?;
        let conns = self.conns();
        let conn = conns.get(gateway_id).ok_or_else(|| Error::NotConnected {
            gateway_id: gateway_id.to_owned(),
        })?;
        if conn.tx.send(ConnMsg::Frame(Box::new(frame))) {
            Ok(())
        } else {
            Err(Error::NotConnected {
                gateway_id: gateway_id.to_owned(),
            })
        }
    }

    /// Close a gateway's session (it will reconnect on its own).
    pub fn disconnect(&self, gateway_id: &str) -> bool {
        self.conns()
            .get(gateway_id)
            .is_some_and(|c| c.tx.send(ConnMsg::Close(CloseReason::Requested)))
    }

    /// Tell the session of `gateway_id` to fetch deliverable commands, if it is one of
    /// `tenant`.
    fn nudge(conns: &HashMap<String, Conn>, gateway_id: &str, tenant: Option<&str>) {
        if let Some(conn) = conns.get(gateway_id)
            && tenant == Some(conn.tenant.as_str())
        {
            conn.tx.send(ConnMsg::Deliver);
        }
    }

    /// Store a command and deliver it at once if its gateway is connected. Returns once the
    /// command is stored. Its tenant is the gateway's: `command.tenant` may be left `None`
    /// (filled in), and a tenant the gateway is not provisioned in, or a gateway nobody
    /// provisioned, is [`Error::UnknownGateway`]. A command whose frame would exceed
    /// `limits.max_frame_bytes` is [`Error::CommandTooLarge`].
    pub fn enqueue(&self, command: NewCommand) -> Result<CommandRecord, Error> {
        let record = self.inner.plane.enqueue(command)?;
        Self::nudge(&self.conns(), &record.gateway_id, record.tenant.as_deref());
        self.inner.timers.notify_one();
        Ok(record)
    }

    /// Store many commands in one transaction (a fleet-wide fan-out; all or none, with the
    /// checks of [`enqueue`](Self::enqueue)), then deliver.
    pub fn enqueue_many(&self, commands: Vec<NewCommand>) -> Result<Vec<CommandRecord>, Error> {
        let records = self.inner.plane.enqueue_many(commands)?;
        let mut gateways: Vec<(&str, Option<&str>)> = records
            .iter()
            .map(|r| (r.gateway_id.as_str(), r.tenant.as_deref()))
            .collect();
        gateways.sort_unstable();
        gateways.dedup();
        {
            let conns = self.conns();
            for (gateway, tenant) in gateways {
                Self::nudge(&conns, gateway, tenant);
            }
        }
        self.inner.timers.notify_one();
        Ok(records)
    }

    /// Cancel a command: `queued` and `sent` ones plainly, `received` and `in_progress` ones
    /// only with `force` (see [`CommandQueue::cancel`]; the gateway may still run it).
    pub fn cancel(&self, id: &CommandId, force: bool) -> Result<StateChange, Error> {
        self.inner.plane.cancel(id, force)
    }

    /// One command.
    pub fn command(&self, id: &CommandId) -> Result<Option<CommandRecord>, Error> {
        self.inner.plane.command(id)
    }

    /// Commands matching `filter`.
    pub fn commands(&self, filter: &CommandFilter) -> Result<Vec<CommandRecord>, Error> {
        self.inner.plane.commands(filter)
    }

    /// The acknowledgement history of a command (stale ones included).
    pub fn acks(&self, id: &CommandId) -> Result<Vec<AckRecord>, Error> {
        self.inner.plane.queue().acks(id)
    }

    /// One gateway's presence.
    pub fn presence(&self, gateway_id: &str) -> Option<GatewayPresence> {
        self.inner.plane.presence(gateway_id)
    }

    /// Every known gateway's presence.
    pub fn gateways(&self) -> Vec<GatewayPresence> {
        self.inner.plane.gateways()
    }

    /// Start the timer task: expiry, step timeouts, redeliveries and offline detection fire
    /// on time, for connected gateways and for ones that never come back. Run exactly one per
    /// queue.
    pub fn spawn_timers(&self) -> tokio::task::JoinHandle<()> {
        let hub = self.clone();
        tokio::spawn(async move { hub.run_timers().await })
    }

    async fn run_timers(self) {
        let max_sleep = self.inner.config.max_timer_sleep_ms as i64;
        loop {
            match self.inner.plane.tick() {
                Ok(redeliver) => {
                    let mut per_gateway: HashMap<String, Vec<CommandRecord>> = HashMap::new();
                    for record in redeliver {
                        per_gateway
                            .entry(record.gateway_id.clone())
                            .or_default()
                            .push(record);
                    }
                    let conns = self.conns();
                    for (gateway, records) in per_gateway {
                        let Some(conn) = conns.get(&gateway) else {
                            continue;
                        };
                        // Only to a session of the command's tenant.
                        let commands: Vec<Command> = records
                            .iter()
                            .filter(|r| r.tenant.as_deref() == Some(conn.tenant.as_str()))
                            .map(CommandRecord::to_command)
                            .collect();
                        if !commands.is_empty() {
                            conn.tx.send(ConnMsg::Commands(commands));
                        }
                    }
                }
                Err(e) => tracing::error!(error = %e, "command timers could not run"),
            }
            let next = self.inner.plane.next_timer_ms().unwrap_or_else(|e| {
                tracing::error!(error = %e, "could not read the next timer");
                None
            });
            let wait_ms = next
                .map(|at| at.saturating_sub(self.inner.clock.now_ms()))
                .unwrap_or(max_sleep)
                .clamp(0, max_sleep);
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => {}
                () = self.inner.timers.notified() => {}
            }
        }
    }

    /// Serve one upgraded WebSocket of an authenticated gateway until it closes.
    pub(crate) async fn run_connection(
        self,
        socket: WebSocket,
        principal: Principal,
        encoding: Encoding,
    ) {
        Connection::new(self, socket, principal, encoding)
            .run()
            .await;
    }

    fn register(&self, gateway_id: &str, conn: Conn) {
        let old = self.conns().insert(gateway_id.to_owned(), conn);
        if let Some(old) = old {
            old.tx.send(ConnMsg::Close(CloseReason::Superseded));
        }
        metrics::gauge!("gateway_control_sessions").set(self.conns().len() as f64);
    }

    fn unregister(&self, gateway_id: &str, epoch: u64) {
        let mut conns = self.conns();
        if conns.get(gateway_id).is_some_and(|c| c.epoch == epoch) {
            conns.remove(gateway_id);
        }
        metrics::gauge!("gateway_control_sessions").set(conns.len() as f64);
    }
}

/// One WebSocket connection: a [`ServerConnection`] and the socket.
struct Connection {
    hub: Hub,
    socket: WebSocket,
    conn: ServerConnection,
    encoding: Encoding,
    tx: ConnTx,
    rx: mpsc::Receiver<ConnMsg>,
    backlogged: Arc<Notify>,
    write_timeout: Duration,
    /// The socket could not take a frame: nothing more is written to it.
    stuck: bool,
}

/// How writing one message went.
enum Written {
    Ok,
    /// The connection broke.
    Failed,
    /// Not written within the write timeout, or the queue overflowed meanwhile.
    Stuck,
}

impl Connection {
    fn new(hub: Hub, socket: WebSocket, principal: Principal, encoding: Encoding) -> Self {
        let config = &hub.inner.config;
        let session = ServerSession::new(
            config.session.clone(),
            principal,
            SessionId::new_v7(),
            hub.inner.clock.clone(),
            now(),
        );
        let mut conn =
            ServerConnection::new(session).with_max_frame_bytes(config.limits.max_frame_bytes);
        conn.check_admission(hub.plane());
        let (tx, rx) = mpsc::channel(config.connection_queue_capacity);
        let backlogged = Arc::new(Notify::new());
        let write_timeout = Duration::from_millis(config.write_timeout_ms);
        Connection {
            tx: ConnTx {
                tx,
                backlogged: backlogged.clone(),
            },
            hub,
            socket,
            conn,
            encoding,
            rx,
            backlogged,
            write_timeout,
            stuck: false,
        }
    }

    async fn run(mut self) {
        metrics::counter!("gateway_control_connections_total").increment(1);
        loop {
            // Events first: a session is registered with the hub before its welcome leaves.
            self.handle_events();
            self.submit_requests();
            self.flush().await;
            if self.conn.session().is_closed() {
                self.flush().await;
                break;
            }
            let deadline = self.conn.session().poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            let backlogged = self.backlogged.clone();
            tokio::select! {
                message = self.socket.recv() => self.on_message(message),
                Some(msg) = self.rx.recv() => self.on_hub_message(msg),
                () = sleep => self.conn.session_mut().handle_timeout(now()),
                () = backlogged.notified() => self.give_up(),
            }
        }
        self.handle_events();
    }

    /// The gateway does not take its frames: close the session without writing anything
    /// more. Its unfinished commands are redelivered on its next session.
    fn give_up(&mut self) {
        tracing::warn!(
            gateway = self.conn.session().gateway_id(),
            "the gateway does not take its frames; closing its connection"
        );
        self.stuck = true;
        self.conn.session_mut().close(CloseReason::Backlogged);
    }

    /// Write one message within the write timeout, unless the queue overflows meanwhile.
    async fn write(&mut self, message: Message) -> Written {
        let backlogged = self.backlogged.clone();
        tokio::select! {
            sent = self.socket.send(message) => if sent.is_ok() { Written::Ok } else { Written::Failed },
            () = tokio::time::sleep(self.write_timeout) => Written::Stuck,
            () = backlogged.notified() => Written::Stuck,
        }
    }

    async fn flush(&mut self) {
        while let Some(transmit) = self.conn.session_mut().poll_transmit() {
            if self.stuck {
                continue; // nothing more goes to a socket that does not drain
            }
            let message = match transmit {
                ServerTransmit::Frame(frame) => encode(&frame, self.encoding),
                ServerTransmit::Close(reason) => {
                    let code = match reason {
                        CloseReason::IdentityMismatch | CloseReason::NotProvisioned => 1008, // policy violation
                        CloseReason::UnsupportedVersion => 1002, // protocol error
                        _ => 1000,
                    };
                    let frame = CloseFrame {
                        code,
                        reason: reason
                            .to_string()
                            .chars()
                            .take(100)
                            .collect::<String>()
                            .into(),
                    };
                    let _ = self.write(Message::Close(Some(frame))).await;
                    continue;
                }
            };
            match self.write(message).await {
                Written::Ok => {
                    metrics::counter!("gateway_control_server_frames_sent_total").increment(1);
                }
                Written::Failed => self.conn.disconnected(now()),
                Written::Stuck => self.give_up(),
            }
        }
    }

    fn submit_requests(&mut self) {
        while let Some(request) = self.conn.poll_request() {
            let item = WorkItem {
                request,
                reply: self.tx.clone(),
            };
            if self.hub.inner.work.send(item).is_err() {
                tracing::error!("the queue worker stopped");
            }
        }
    }

    fn handle_events(&mut self) {
        let hub = self.hub.clone();
        let interval = hub.inner.config.session.heartbeat_interval_ms;
        let gateway_id = self.conn.session().gateway_id().to_owned();
        let tenant = self.conn.session().principal().tenant.clone();
        let session_id = self.conn.session().session_id();
        for event in self.conn.drive(hub.plane(), interval) {
            let hub_event = match event {
                ConnectionEvent::Established {
                    session_id,
                    epoch,
                    hello,
                } => {
                    hub.register(
                        &gateway_id,
                        Conn {
                            epoch,
                            session_id,
                            tenant: tenant.clone(),
                            tx: self.tx.clone(),
                        },
                    );
                    HubEvent::SessionEstablished {
                        gateway_id: gateway_id.clone(),
                        tenant: tenant.clone(),
                        session_id,
                        epoch,
                        hello,
                    }
                }
                ConnectionEvent::Frame(frame) => HubEvent::Frame {
                    gateway_id: gateway_id.clone(),
                    session_id,
                    frame: Arc::new(frame),
                },
                ConnectionEvent::Closed { epoch, reason } => {
                    let Some(epoch) = epoch else { continue };
                    hub.unregister(&gateway_id, epoch);
                    HubEvent::SessionClosed {
                        gateway_id: gateway_id.clone(),
                        session_id,
                        epoch,
                        reason,
                    }
                }
            };
            let _ = hub.inner.hub_events.send(hub_event);
        }
    }

    fn on_message(&mut self, message: Option<Result<Message, axum::Error>>) {
        let at = now();
        let bytes = match message {
            Some(Ok(Message::Text(text))) => bytes::Bytes::from(text),
            Some(Ok(Message::Binary(bytes))) => bytes,
            Some(Ok(Message::Ping(_) | Message::Pong(_))) => return,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                self.conn.disconnected(at);
                return;
            }
        };
        metrics::counter!("gateway_control_server_frames_received_total").increment(1);
        let session = self.conn.session_mut();
        match decode_frame(&bytes, self.encoding, &self.hub.inner.config.limits) {
            Ok(frame) => session.handle_frame(at, frame),
            Err(e) => {
                metrics::counter!("gateway_control_server_bad_frames_total").increment(1);
                session.handle_decode_error(at, &e);
            }
        }
    }

    fn on_hub_message(&mut self, msg: ConnMsg) {
        match msg {
            ConnMsg::Deliver => self.conn.request_delivery(),
            ConnMsg::Commands(commands) => self.conn.send_commands(commands),
            ConnMsg::Reply(reply) => self.conn.handle_reply(reply),
            ConnMsg::Frame(frame) => {
                if let Err(e) = self.conn.session_mut().send(*frame) {
                    tracing::debug!(error = %e, "frame for a closing session dropped");
                }
            }
            ConnMsg::Close(reason) => self.conn.session_mut().close(reason),
        }
    }
}

fn encode(frame: &ControlFrame, encoding: Encoding) -> Message {
    match encoding {
        Encoding::Json => match String::from_utf8(frame.to_json()) {
            Ok(text) => Message::Text(text.into()),
            Err(e) => Message::Binary(e.into_bytes().into()),
        },
        Encoding::Protobuf => Message::Binary(frame.to_protobuf().into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[test]
    fn a_full_connection_queue_refuses_the_message_and_tells_the_connection_to_close() {
        let (tx, mut rx) = mpsc::channel(2);
        let tx = ConnTx {
            tx,
            backlogged: Arc::new(Notify::new()),
        };
        assert!(tx.send(ConnMsg::Deliver));
        assert!(tx.send(ConnMsg::Deliver));
        assert!(
            tx.backlogged.notified().now_or_never().is_none(),
            "not told while there is room"
        );
        assert!(!tx.send(ConnMsg::Deliver), "full: not queued");
        assert!(
            tx.backlogged.notified().now_or_never().is_some(),
            "the connection is told to close"
        );
        // Once the connection is gone, sending fails quietly.
        rx.close();
        while rx.try_recv().is_ok() {}
        assert!(!tx.send(ConnMsg::Deliver));
        assert!(tx.backlogged.notified().now_or_never().is_none());
    }

    #[test]
    fn config_validation_names_the_new_parameters() {
        for (config, param) in [
            (
                HubConfig {
                    connection_queue_capacity: 0,
                    ..HubConfig::default()
                },
                "connection_queue_capacity",
            ),
            (
                HubConfig {
                    write_timeout_ms: 0,
                    ..HubConfig::default()
                },
                "write_timeout_ms",
            ),
        ] {
            match config.validate() {
                Err(Error::InvalidConfig { param: got, .. }) => assert_eq!(got, param),
                other => panic!("{param}: {other:?}"),
            }
        }
        assert!(HubConfig::default().validate().is_ok());
    }
}
