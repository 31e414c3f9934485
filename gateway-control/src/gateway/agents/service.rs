//! The tokio layer around the registry: [`AgentService`] owns an [`AgentRegistry`] behind a
//! mutex, runs its offline timer, persists registrations, fans events out and bridges
//! `agent.*` control-channel commands to agents.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use gateway_proto::clock::{Clock, SystemClock};
use gateway_proto::{
    AgentCommand, AgentHeartbeatRequest, AgentHeartbeatResponse, Command, CommandId,
    RegisterAgentRequest, RegisterAgentResponse,
};
use tokio::sync::{Notify, broadcast, mpsc, watch};

use super::config::AgentServiceConfig;
use super::registry::{AgentEvent, AgentInfo, AgentRegistry};
use super::store::AgentStore;
use crate::Error;
use crate::gateway::{GatewayHandle, Outcome, OutcomeState};

/// Prefix of control-channel command kinds meant for an agent: `agent.restart` reaches the
/// agent named by the command's `target` as a command of kind `restart`.
pub const AGENT_COMMAND_PREFIX: &str = "agent.";

/// Detail of the `succeeded` outcome reported when an agent acknowledges a command that came
/// through the control channel.
pub const DELIVERED_TO_AGENT: &str = "delivered to agent";

/// The longest the offline timer sleeps without looking again (guards against wall-clock
/// jumps).
const MAX_TIMER_SLEEP_MS: i64 = 60_000;

/// Where the service reads the checksum of the policy the gateway serves (the ETag of
/// `GET /v1/policy`), for the `policy_checksum` of every answer. `None` while there is none.
pub type PolicyChecksumFn = Arc<dyn Fn() -> Option<String> + Send + Sync>;

/// The outcome of an `agent.*` control-channel command, to report to the server with
/// [`GatewayHandle::report_outcome`].
#[derive(Debug, Clone, PartialEq)]
pub struct ControlOutcome {
    /// The control-channel command (and agent command) id.
    pub command_id: CommandId,
    /// The agent it was for.
    pub agent_id: String,
    /// `succeeded` with detail [`DELIVERED_TO_AGENT`] once the agent acknowledged it;
    /// `failed` when it expired or the agent was removed first.
    pub outcome: Outcome,
}

/// The gateway's agent service: a cheap handle (clone it freely) on one registry.
///
/// * [`AgentService::register`] / [`AgentService::heartbeat`] serve the agent API
///   ([`agent_routes`](super::agent_routes) calls them);
/// * a background task applies the offline rule and command expiries on time;
/// * [`AgentService::subscribe`] hands out every [`AgentEvent`];
/// * [`AgentService::enqueue_command`] queues a command for an agent, and
///   [`AgentService::deliver_control_command`] does the same for an `agent.*` command from
///   the control channel, whose outcome comes back through
///   [`AgentService::spawn_control_reporter`];
/// * [`AgentService::online_count`] is the `connected_agents` of the gateway's status.
///
/// The background task ends when the last handle is dropped.
#[derive(Clone, Debug)]
pub struct AgentService {
    inner: Arc<Inner>,
}

struct Inner {
    /// This very value, for work handed to other threads.
    me: Weak<Inner>,
    config: AgentServiceConfig,
    registry: Mutex<AgentRegistry>,
    store: Option<Mutex<Box<dyn AgentStore>>>,
    events: broadcast::Sender<AgentEvent>,
    timer: Arc<Notify>,
    clock: Arc<dyn Clock>,
    policy_checksum: PolicyChecksumFn,
    control: Mutex<ControlBridge>,
}

#[derive(Default)]
struct ControlBridge {
    /// `agent.*` commands handed to an agent and not finished yet → their agent.
    pending: HashMap<CommandId, String>,
    outcomes: Option<mpsc::UnboundedSender<ControlOutcome>>,
    receiver: Option<mpsc::UnboundedReceiver<ControlOutcome>>,
}

impl std::fmt::Debug for Inner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentService")
            .field("config", &self.config)
            .field("persistent", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Wake the timer task so it sees the service is gone and ends.
        self.timer.notify_one();
    }
}

/// Builds an [`AgentService`]; from [`AgentService::builder`].
pub struct AgentServiceBuilder {
    gateway_id: String,
    config: AgentServiceConfig,
    clock: Arc<dyn Clock>,
    store: Option<Box<dyn AgentStore>>,
    policy_checksum: PolicyChecksumFn,
}

impl std::fmt::Debug for AgentServiceBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AgentServiceBuilder")
            .field("gateway_id", &self.gateway_id)
            .field("config", &self.config)
            .field("persistent", &self.store.is_some())
            .finish_non_exhaustive()
    }
}

impl AgentServiceBuilder {
    /// Settings (default [`AgentServiceConfig::default`]).
    pub fn config(mut self, config: AgentServiceConfig) -> Self {
        self.config = config;
        self
    }

    /// The wall clock (default [`SystemClock`]).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Keep registrations in `store` (e.g. a [`SqliteAgentStore`](super::SqliteAgentStore)),
    /// so a restarted gateway still knows its agents. Without a store the registry lives in
    /// memory and agents answered 404 after a restart must register again.
    pub fn store(mut self, store: impl AgentStore) -> Self {
        self.store = Some(Box::new(store));
        self
    }

    /// Where `policy_checksum` comes from (default: always `None`). Called once per answer;
    /// keep it cheap.
    pub fn policy_checksum(
        mut self,
        provider: impl Fn() -> Option<String> + Send + Sync + 'static,
    ) -> Self {
        self.policy_checksum = Arc::new(provider);
        self
    }

    /// Read `policy_checksum` from a watch channel the policy applier updates.
    pub fn policy_checksum_watch(self, checksum: watch::Receiver<Option<String>>) -> Self {
        self.policy_checksum(move || checksum.borrow().clone())
    }

    /// Check the settings, load the store, and start the background timer on the current
    /// tokio runtime.
    ///
    /// # Panics
    ///
    /// Outside a tokio runtime, like `tokio::spawn`.
    pub fn spawn(self) -> Result<AgentService, Error> {
        self.config.validate()?;
        let mut registry = AgentRegistry::new(self.gateway_id, self.config.registry.clone())?;
        let mut store = self.store;
        if let Some(store) = store.as_mut() {
            let restored = store.load()?;
            let count = restored.len();
            for registration in restored {
                registry.restore(registration);
            }
            tracing::info!(agents = count, "agent registrations restored");
        }
        let (events, _) = broadcast::channel(self.config.event_capacity);
        let (outcomes, receiver) = mpsc::unbounded_channel();
        let timer = Arc::new(Notify::new());
        let inner = Arc::new_cyclic(|me| Inner {
            me: me.clone(),
            config: self.config,
            registry: Mutex::new(registry),
            store: store.map(Mutex::new),
            events,
            timer: timer.clone(),
            clock: self.clock,
            policy_checksum: self.policy_checksum,
            control: Mutex::new(ControlBridge {
                pending: HashMap::new(),
                outcomes: Some(outcomes),
                receiver: Some(receiver),
            }),
        });
        tokio::spawn(run_timer(Arc::downgrade(&inner), timer));
        Ok(AgentService { inner })
    }
}

impl AgentService {
    /// A builder for the gateway `gateway_id`.
    pub fn builder(gateway_id: impl Into<String>) -> AgentServiceBuilder {
        AgentServiceBuilder {
            gateway_id: gateway_id.into(),
            config: AgentServiceConfig::default(),
            clock: Arc::new(SystemClock),
            store: None,
            policy_checksum: Arc::new(|| None),
        }
    }

    /// An in-memory service with the system clock and no policy; see
    /// [`AgentService::builder`] for the rest. Must be called inside a tokio runtime.
    pub fn spawn(gateway_id: impl Into<String>, config: AgentServiceConfig) -> Result<Self, Error> {
        Self::builder(gateway_id).config(config).spawn()
    }

    /// The settings in use.
    pub fn config(&self) -> &AgentServiceConfig {
        &self.inner.config
    }

    /// The checksum the next answers carry.
    pub fn policy_checksum(&self) -> Option<String> {
        (self.inner.policy_checksum)()
    }

    // ------------------------------------------------------------------ agent API

    /// Serve `POST /v1/agents/register` for a principal of `tenant` (see
    /// [`AgentRegistry::register`]). With a store, the registration is saved before this
    /// returns.
    pub async fn register(
        &self,
        tenant: &str,
        request: &RegisterAgentRequest,
    ) -> Result<RegisterAgentResponse, Error> {
        let now = self.inner.clock.now_ms();
        let mut answer = self.inner.update(|r| r.register(tenant, request, now))?;
        metrics::counter!("gateway_control_agent_registrations_total").increment(1);
        self.persist(request.agent_id.clone()).await?;
        answer.policy_checksum = self.policy_checksum();
        Ok(answer)
    }

    /// Serve `POST /v1/agents/heartbeat` for a principal of `tenant` (see
    /// [`AgentRegistry::heartbeat`]): [`Error::UnknownAgent`] means 404, register first.
    pub fn heartbeat(
        &self,
        tenant: &str,
        request: &AgentHeartbeatRequest,
    ) -> Result<AgentHeartbeatResponse, Error> {
        let now = self.inner.clock.now_ms();
        let mut answer = self.inner.update(|r| r.heartbeat(tenant, request, now))?;
        metrics::counter!("gateway_control_agent_heartbeats_total").increment(1);
        answer.policy_checksum = self.policy_checksum();
        Ok(answer)
    }

    // ------------------------------------------------------------------ commands

    /// Queue a command for an agent; it is repeated in every heartbeat answer until the agent
    /// acknowledges it ([`AgentEvent::CommandAcknowledged`]). Errors:
    /// [`Error::UnknownAgent`], [`Error::AgentQueueFull`].
    pub fn enqueue_command(&self, agent_id: &str, command: AgentCommand) -> Result<(), Error> {
        self.enqueue_command_expiring(agent_id, command, None)
    }

    /// As [`AgentService::enqueue_command`], dropped unacknowledged at `expires_at_ms` (ms
    /// since the epoch) with an [`AgentEvent::CommandExpired`].
    pub fn enqueue_command_expiring(
        &self,
        agent_id: &str,
        command: AgentCommand,
        expires_at_ms: Option<i64>,
    ) -> Result<(), Error> {
        let now = self.inner.clock.now_ms();
        self.inner
            .update(|r| r.enqueue_command_expiring(agent_id, command, now, expires_at_ms))?;
        if expires_at_ms.is_some() {
            self.inner.timer.notify_one();
        }
        Ok(())
    }

    /// Hand an `agent.<kind>` command from the control channel to the agent named by its
    /// `target`, as an agent command of kind `<kind>` with the same id and payload. It expires
    /// after the command's `execution_timeout_ms`, when set. Its outcome — `succeeded` with
    /// detail [`DELIVERED_TO_AGENT`] once the agent acknowledges it, `failed` if it expires —
    /// comes out of [`AgentService::take_control_outcomes`] /
    /// [`AgentService::spawn_control_reporter`].
    ///
    /// An error means the command could not be queued: report it `rejected` at once
    /// (`Outcome::rejected(error.to_string())`). [`Error::UnknownAgent`] for an agent that
    /// never registered, [`Error::InvalidRequest`] for a kind without the
    /// [`AGENT_COMMAND_PREFIX`] or a missing target, [`Error::AgentQueueFull`].
    pub fn deliver_control_command(&self, command: &Command) -> Result<(), Error> {
        let kind = command
            .kind
            .strip_prefix(AGENT_COMMAND_PREFIX)
            .filter(|k| !k.is_empty())
            .ok_or_else(|| Error::InvalidRequest {
                reason: format!(
                    "`{}` is not an agent command (expected `{AGENT_COMMAND_PREFIX}<kind>`)",
                    command.kind
                ),
            })?;
        let agent_id = command
            .target
            .as_deref()
            .filter(|t| !t.is_empty())
            .ok_or_else(|| Error::InvalidRequest {
                reason: format!("`{}` needs a target: the agent id", command.kind),
            })?;
        let expires_at_ms = command.execution_timeout_ms.map(|timeout| {
            self.inner
                .clock
                .now_ms()
                .saturating_add(i64::try_from(timeout).unwrap_or(i64::MAX))
        });
        let agent_command = AgentCommand {
            id: command.id,
            kind: kind.to_owned(),
            payload: command.payload.clone(),
        };
        // Registered before queueing, so an acknowledgement can never beat the bookkeeping.
        self.inner
            .control()
            .pending
            .insert(command.id, agent_id.to_owned());
        let queued = self.enqueue_command_expiring(agent_id, agent_command, expires_at_ms);
        if queued.is_err() {
            self.inner.control().pending.remove(&command.id);
        }
        queued
    }

    /// The outcomes of [`AgentService::deliver_control_command`]s, in the order they
    /// happened. There is one receiver: the first call gets it, later calls get `None`.
    pub fn take_control_outcomes(&self) -> Option<mpsc::UnboundedReceiver<ControlOutcome>> {
        self.inner.control().receiver.take()
    }

    /// Report every control outcome to the server through `handle` (journaled there, so none
    /// is lost to a disconnect). Takes the receiver of
    /// [`AgentService::take_control_outcomes`]; `None` if it was taken already. The task ends
    /// when the service is dropped or the control-channel driver stops.
    pub fn spawn_control_reporter(
        &self,
        handle: GatewayHandle,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let mut outcomes = self.take_control_outcomes()?;
        Some(tokio::spawn(async move {
            while let Some(done) = outcomes.recv().await {
                match handle.report_outcome(done.command_id, done.outcome).await {
                    Ok(()) => {}
                    Err(Error::DriverStopped) => return,
                    Err(e) => tracing::warn!(
                        command = %done.command_id, agent = %done.agent_id, error = %e,
                        "could not report an agent command outcome"
                    ),
                }
            }
        }))
    }

    /// Stop delivering a pending command. Returns false when it was not pending. A control
    /// command canceled this way gets no outcome from the service.
    pub fn cancel_command(&self, agent_id: &str, command_id: CommandId) -> bool {
        let canceled = self
            .inner
            .update(|r| r.cancel_command(agent_id, command_id));
        if canceled {
            self.inner.control().pending.remove(&command_id);
        }
        canceled
    }

    /// Forget an agent (and its stored registration); its pending control commands are
    /// reported `failed`. Returns what was known of it.
    pub async fn remove(&self, agent_id: &str) -> Result<Option<AgentInfo>, Error> {
        let removed = self.inner.update(|r| r.remove(agent_id));
        if let Some(agent) = &removed {
            for pending in &agent.pending_commands {
                self.inner.finish_control(
                    pending.command.id,
                    Outcome::failed(format!(
                        "agent `{agent_id}` was removed before it took the command"
                    )),
                );
            }
            self.persist(agent_id.to_owned()).await?;
        }
        Ok(removed)
    }

    // ------------------------------------------------------------------ presence

    /// Every event from now on. A receiver more than `event_capacity` events behind loses
    /// the oldest (`RecvError::Lagged`).
    pub fn subscribe(&self) -> broadcast::Receiver<AgentEvent> {
        self.inner.events.subscribe()
    }

    /// Every known agent, sorted by id.
    pub fn agents(&self) -> Vec<AgentInfo> {
        self.inner.registry().agents()
    }

    /// One agent.
    pub fn agent(&self, agent_id: &str) -> Option<AgentInfo> {
        self.inner.registry().agent(agent_id).cloned()
    }

    /// Agents online now: the `connected_agents` of the gateway's status.
    pub fn online_count(&self) -> usize {
        self.inner.registry().online_count()
    }

    /// Apply the timers due now (offline rule, command expiries). The background task does
    /// this on time by itself; call it after moving a manual clock in tests.
    pub fn check_timers(&self) {
        let now = self.inner.clock.now_ms();
        self.inner.update(|r| r.handle_timeout(now));
    }

    /// Save (or delete) the registration of `agent_id` as the registry has it now.
    async fn persist(&self, agent_id: String) -> Result<(), Error> {
        if self.inner.store.is_none() {
            return Ok(());
        }
        let inner = self.inner.clone();
        match tokio::task::spawn_blocking(move || inner.persist_now(&agent_id)).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(Error::DriverStopped),
        }
    }
}

impl Inner {
    fn registry(&self) -> MutexGuard<'_, AgentRegistry> {
        // A panic while holding the lock cannot leave the registry half-updated in a way
        // that matters more than stopping the gateway would: keep serving.
        self.registry.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn control(&self) -> MutexGuard<'_, ControlBridge> {
        self.control.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Run `f` on the registry, then hand out the events it produced — under the lock, so
    /// subscribers see them in the order they happened.
    fn update<T>(&self, f: impl FnOnce(&mut AgentRegistry) -> T) -> T {
        let mut registry = self.registry();
        let result = f(&mut registry);
        while let Some(event) = registry.poll_event() {
            self.dispatch(&event);
            let _ = self.events.send(event);
        }
        metrics::gauge!("gateway_control_agents_online").set(registry.online_count() as f64);
        metrics::gauge!("gateway_control_agents_known").set(registry.len() as f64);
        result
    }

    fn dispatch(&self, event: &AgentEvent) {
        match event {
            AgentEvent::Online { .. } => {
                // A new deadline, possibly the earliest: let the timer look again.
                self.timer.notify_one();
            }
            AgentEvent::Offline { agent_id, .. } => {
                tracing::info!(agent = %agent_id, "agent offline");
                self.persist_in_background(agent_id.clone());
            }
            AgentEvent::CommandAcknowledged {
                command_id,
                agent_id,
            } => {
                metrics::counter!("gateway_control_agent_commands_acknowledged_total").increment(1);
                tracing::debug!(agent = %agent_id, command = %command_id, "agent took a command");
                self.finish_control(
                    *command_id,
                    Outcome {
                        state: OutcomeState::Succeeded,
                        detail: Some(DELIVERED_TO_AGENT.into()),
                        result: None,
                    },
                );
            }
            AgentEvent::CommandExpired {
                command_id,
                agent_id,
            } => self.finish_control(
                *command_id,
                Outcome::failed(format!(
                    "agent `{agent_id}` did not take the command before its execution timeout"
                )),
            ),
            AgentEvent::Registered { .. } => {}
        }
    }

    /// Queue the outcome of a control command, if `command_id` is one.
    fn finish_control(&self, command_id: CommandId, outcome: Outcome) {
        let mut control = self.control();
        if let Some(agent_id) = control.pending.remove(&command_id)
            && let Some(outcomes) = &control.outcomes
        {
            let _ = outcomes.send(ControlOutcome {
                command_id,
                agent_id,
                outcome,
            });
        }
    }

    /// Called with the store lock taken first, then the registry's: whichever write runs
    /// last writes the newest state.
    fn persist_now(&self, agent_id: &str) -> Result<(), Error> {
        let Some(store) = &self.store else {
            return Ok(());
        };
        let mut store = store.lock().unwrap_or_else(|e| e.into_inner());
        let registration = self.registry().registration(agent_id);
        match registration {
            Some(registration) => store.save(&registration),
            None => store.delete(agent_id),
        }
    }

    /// Save an agent's last sign of life when it goes offline, without waiting.
    fn persist_in_background(&self, agent_id: String) {
        if self.store.is_none() {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        // The registry lock is held by the caller: the write runs on another thread and waits.
        let Some(inner) = self.me.upgrade() else {
            return;
        };
        runtime.spawn_blocking(move || {
            if let Err(e) = inner.persist_now(&agent_id) {
                tracing::warn!(agent = %agent_id, error = %e, "could not save the agent's last sign of life");
            }
        });
    }
}

async fn run_timer(inner: Weak<Inner>, wake: Arc<Notify>) {
    loop {
        let wait_ms = {
            let Some(inner) = inner.upgrade() else {
                return;
            };
            let now = inner.clock.now_ms();
            let next = inner.update(|r| {
                r.handle_timeout(now);
                r.poll_timeout()
            });
            next.map_or(MAX_TIMER_SLEEP_MS, |at| at.saturating_sub(now))
                .clamp(0, MAX_TIMER_SLEEP_MS)
        };
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(wait_ms as u64)) => {}
            () = wake.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use gateway_proto::clock::ManualClock;

    use super::*;
    use crate::gateway::agents::{AgentRegistryConfig, SqliteAgentStore};

    const T0: i64 = 1_750_000_000_000;

    /// Wall-clock time that follows tokio's (paused) clock.
    #[derive(Debug)]
    struct TokioClock {
        start: tokio::time::Instant,
    }

    impl Clock for TokioClock {
        fn now_ms(&self) -> i64 {
            T0 + self.start.elapsed().as_millis() as i64
        }
    }

    fn config(heartbeat_interval_ms: u64) -> AgentServiceConfig {
        AgentServiceConfig {
            registry: AgentRegistryConfig {
                heartbeat_interval_ms,
                ..Default::default()
            },
            ..Default::default()
        }
    }

    fn registration(id: &str) -> RegisterAgentRequest {
        RegisterAgentRequest {
            agent_id: id.into(),
            kind: "endpoint".into(),
            version: "1.0".into(),
            hostname: "pc".into(),
            capabilities: vec![],
            attributes: BTreeMap::new(),
        }
    }

    fn beat(id: &str, seq: u64, acked: &[CommandId]) -> AgentHeartbeatRequest {
        AgentHeartbeatRequest {
            agent_id: id.into(),
            seq,
            queued_records: 0,
            status: BTreeMap::new(),
            acked_commands: acked.to_vec(),
        }
    }

    fn agent_command(kind: &str, target: Option<&str>, timeout_ms: Option<u64>) -> Command {
        Command {
            id: CommandId::new_v7(),
            kind: kind.into(),
            payload: serde_json::json!({"reason": "test"}),
            priority: 0,
            delivery_deadline_ms: None,
            execution_timeout_ms: timeout_ms,
            target: target.map(str::to_owned),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn the_timer_marks_a_silent_agent_offline_within_the_bound() {
        let clock = Arc::new(TokioClock {
            start: tokio::time::Instant::now(),
        });
        let service = AgentService::builder("gw-1")
            .config(config(1_000))
            .clock(clock.clone())
            .spawn()
            .unwrap();
        let mut events = service.subscribe();
        service.register("acme", &registration("a1")).await.unwrap();
        assert!(matches!(
            events.recv().await.unwrap(),
            AgentEvent::Registered { .. }
        ));
        assert!(matches!(
            events.recv().await.unwrap(),
            AgentEvent::Online { .. }
        ));

        // Heartbeats every interval keep it online for a while.
        for seq in 1..=5 {
            tokio::time::sleep(Duration::from_millis(1_000)).await;
            service.heartbeat("acme", &beat("a1", seq, &[])).unwrap();
        }
        assert!(events.try_recv().is_err(), "no event while it heartbeats");
        assert_eq!(service.online_count(), 1);
        let last_beat = clock.now_ms();

        // Then silence: the timer alone reports it offline, not before 1.5 intervals.
        let event = tokio::time::timeout(Duration::from_secs(60), events.recv())
            .await
            .expect("offline event in time")
            .unwrap();
        let AgentEvent::Offline {
            agent_id,
            at_ms,
            last_seen_ms,
        } = event
        else {
            panic!("expected offline, got {event:?}");
        };
        assert_eq!((agent_id.as_str(), last_seen_ms), ("a1", last_beat));
        assert!(
            (last_beat + 1_501..=last_beat + 1_510).contains(&at_ms),
            "offline at +{} ms",
            at_ms - last_beat
        );
        assert_eq!(service.online_count(), 0);
        assert!(!service.agent("a1").unwrap().online);
    }

    #[tokio::test]
    async fn control_commands_report_their_outcome_once_the_agent_acknowledges() {
        let clock = Arc::new(ManualClock::new(T0));
        let service = AgentService::builder("gw-1")
            .clock(clock.clone())
            .spawn()
            .unwrap();
        let mut outcomes = service.take_control_outcomes().unwrap();
        assert!(service.take_control_outcomes().is_none(), "one receiver");
        service.register("acme", &registration("a1")).await.unwrap();

        let restart = agent_command("agent.restart", Some("a1"), Some(60_000));
        service.deliver_control_command(&restart).unwrap();
        let expected = AgentCommand {
            id: restart.id,
            kind: "restart".into(),
            payload: restart.payload.clone(),
        };
        assert_eq!(
            service
                .heartbeat("acme", &beat("a1", 1, &[]))
                .unwrap()
                .commands,
            std::slice::from_ref(&expected)
        );
        assert_eq!(
            service
                .heartbeat("acme", &beat("a1", 2, &[]))
                .unwrap()
                .commands,
            [expected]
        );
        assert!(outcomes.try_recv().is_err(), "not acknowledged yet");

        let answer = service
            .heartbeat("acme", &beat("a1", 3, &[restart.id]))
            .unwrap();
        assert!(answer.commands.is_empty());
        assert_eq!(
            outcomes.try_recv().unwrap(),
            ControlOutcome {
                command_id: restart.id,
                agent_id: "a1".into(),
                outcome: Outcome {
                    state: OutcomeState::Succeeded,
                    detail: Some(DELIVERED_TO_AGENT.into()),
                    result: None,
                },
            }
        );

        // A command queued locally (not from the control channel) has no control outcome.
        let local = AgentCommand {
            id: CommandId::new_v7(),
            kind: "restart".into(),
            payload: serde_json::Value::Null,
        };
        service.enqueue_command("a1", local.clone()).unwrap();
        service
            .heartbeat("acme", &beat("a1", 4, &[local.id]))
            .unwrap();
        assert!(outcomes.try_recv().is_err());

        // Not acknowledged within the execution timeout: failed.
        let slow = agent_command("agent.restart", Some("a1"), Some(1_000));
        service.deliver_control_command(&slow).unwrap();
        clock.advance_ms(999);
        service.check_timers();
        assert!(outcomes.try_recv().is_err());
        clock.advance_ms(1);
        service.check_timers();
        let done = outcomes.try_recv().unwrap();
        assert_eq!(done.command_id, slow.id);
        assert_eq!(done.outcome.state, OutcomeState::Failed);

        // Removing the agent fails what it had not taken.
        let orphan = agent_command("agent.restart", Some("a1"), None);
        service.deliver_control_command(&orphan).unwrap();
        service.remove("a1").await.unwrap().unwrap();
        let done = outcomes.try_recv().unwrap();
        assert_eq!(
            (done.command_id, done.outcome.state),
            (orphan.id, OutcomeState::Failed)
        );
    }

    #[tokio::test]
    async fn control_commands_that_cannot_reach_an_agent_are_refused_at_once() {
        let service = AgentService::spawn("gw-1", AgentServiceConfig::default()).unwrap();
        let err = service
            .deliver_control_command(&agent_command("agent.restart", Some("ghost"), None))
            .unwrap_err();
        assert!(matches!(err, Error::UnknownAgent { .. }), "{err}");
        for command in [
            agent_command("flush", Some("a1"), None),
            agent_command("agent.", Some("a1"), None),
            agent_command("agent.restart", None, None),
            agent_command("agent.restart", Some(""), None),
        ] {
            let err = service.deliver_control_command(&command).unwrap_err();
            assert!(matches!(err, Error::InvalidRequest { .. }), "{err}");
        }
        assert!(service.inner.control().pending.is_empty());
    }

    #[tokio::test]
    async fn registrations_survive_a_restart_with_a_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("agents.db");
        let clock = Arc::new(ManualClock::new(T0));
        let open = |clock: Arc<ManualClock>| {
            AgentService::builder("gw-1")
                .store(SqliteAgentStore::open(&path).unwrap())
                .clock(clock)
                .spawn()
                .unwrap()
        };

        let service = open(clock.clone());
        service.register("acme", &registration("a1")).await.unwrap();
        service.register("acme", &registration("a2")).await.unwrap();
        drop(service);

        clock.advance_ms(60_000);
        let service = open(clock.clone());
        let restored = service.agent("a1").unwrap();
        assert!(!restored.online, "offline until heard from");
        assert_eq!(restored.registered_at_ms, T0);
        assert_eq!(service.online_count(), 0);
        // It may heartbeat without registering again.
        service.heartbeat("acme", &beat("a1", 9, &[])).unwrap();
        assert_eq!(service.online_count(), 1);
        // Another tenant still may not take it over.
        assert!(matches!(
            service.register("globex", &registration("a1")).await,
            Err(Error::AgentOfOtherTenant { .. })
        ));
        service.remove("a2").await.unwrap();
        drop(service);

        let service = open(clock);
        let ids: Vec<String> = service.agents().into_iter().map(|a| a.agent_id).collect();
        assert_eq!(ids, ["a1"]);
    }

    #[tokio::test]
    async fn answers_carry_the_current_policy_checksum() {
        let (checksum, rx) = watch::channel(None);
        let service = AgentService::builder("gw-1")
            .policy_checksum_watch(rx)
            .spawn()
            .unwrap();
        let answer = service.register("acme", &registration("a1")).await.unwrap();
        assert_eq!(answer.policy_checksum, None);
        checksum.send_replace(Some("ab".repeat(32)));
        let answer = service.heartbeat("acme", &beat("a1", 1, &[])).unwrap();
        assert_eq!(answer.policy_checksum, Some("ab".repeat(32)));
        assert_eq!(answer.heartbeat_interval_ms, 10_000);
    }
}
