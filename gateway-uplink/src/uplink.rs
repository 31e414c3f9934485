//! The tokio driver: workers that lease batches from the buffer, post them, and ack, release
//! or dead-letter them, around the sans-IO [`Backoff`] and [`HealthTracker`].
//!
//! # What happens to a leased batch
//!
//! | answer | the records |
//! |---|---|
//! | 200 `BatchAck` | acked; the ones listed in `rejected` are dead-lettered with the server's code and message |
//! | 408, 429, 5xx, timeout, broken connection, an answer over 16 MiB | released; retried after the backoff (`Retry-After` wins on 429/503) |
//! | 401, 403, 404, 405, 407, 415, 3xx | released; the uplink is `down` and retries at the capped interval or on [`Uplink::wake`] |
//! | 413 | released and the batch size halved; a single record still too large is dead-lettered. After [`REGROW_AFTER_BATCHES`] acked batches in a row the size doubles again, up to the configured one |
//! | other 4xx | every record dead-lettered with the server's code and message |
//!
//! `in_flight` workers lease and send one batch at a time each. While the buffer holds a
//! backlog — a lease came back full without waiting, as after an outage — up to
//! `catch_up_in_flight` workers do, so the backlog drains faster without raising the
//! latency of steady traffic.
//!
//! Nothing is dropped silently and nothing is retried for ever as is: a record either reaches
//! the server, sits in the buffer (subject to the buffer's own retention), or lands in the
//! dead-letter store with a reason. A record whose answer was lost (timeout after the server
//! stored it) is sent again and counted by the server as a duplicate.

use std::future::Future;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use gateway_buffer::{Buffer, DeadLetter};
use gateway_proto::clock::{Clock, SystemClock};
use gateway_proto::{
    Batch, BatchAck, BatchId, Bytes, Encoding, ErrorCode, Record, UplinkHealth, WireMessage,
};
use rand::{RngCore, SeedableRng};
use serde::Serialize;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::error::BoxError;
use crate::health::{FailureKind, HealthStatus, HealthTracker};
use crate::retry::{Backoff, Failure, RetryDecision, StatusClass, classify_status};
use crate::source::{RecordSource, SourceLease};
use crate::transport::{Attempt, Transport};
use crate::{Error, UplinkConfig};

/// Totals since the uplink started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct UplinkCounters {
    /// Batches the server answered with a `BatchAck`.
    pub batches_acked: u64,
    /// Attempts that failed and were released for a retry.
    pub batches_retried: u64,
    /// Batches refused whole (a 4xx retrying cannot fix) and dead-lettered.
    pub batches_dead_lettered: u64,
    /// Records the server stored for the first time.
    pub records_accepted: u64,
    /// Records the server already had (re-sent after a lost answer).
    pub records_duplicate: u64,
    /// Records moved to the dead-letter store.
    pub records_dead_lettered: u64,
    /// Request body bytes sent (after gzip), including failed attempts.
    pub bytes_sent: u64,
}

/// Everything the uplink reports about itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct UplinkStatus {
    /// Health state, last error, consecutive failures, last success.
    #[serde(flatten)]
    pub health: HealthStatus,
    /// Time until the next attempt while backing off, ms.
    pub retry_in_ms: Option<u64>,
    /// True when retries gave up after `retry.max_elapsed_ms`; only [`Uplink::wake`] resumes.
    pub parked: bool,
    /// Batches posted and not yet settled (acked, released or dead-lettered).
    pub in_flight: usize,
    /// Current batch size limit in records (halved after a 413, doubled again after
    /// [`REGROW_AFTER_BATCHES`] acked batches).
    pub batch_max_records: usize,
    /// Totals.
    pub counters: UplinkCounters,
}

/// How [`Uplink::flush`] ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FlushOutcome {
    /// The buffer is empty: everything was delivered or dead-lettered.
    Flushed,
    /// The deadline passed with records still queued.
    DeadlineReached {
        /// Records still in the buffer.
        queued: u64,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Running,
    /// Stop leasing; finish batches in flight.
    Stopping,
    /// Drop batches in flight and release them.
    Abort,
}

/// Acked batches in a row after which a batch size halved by a 413 doubles again (up to the
/// configured size), so a server whose limit was lowered for a while gets full batches back.
pub const REGROW_AFTER_BATCHES: u32 = 32;

struct State {
    backoff: Backoff<Box<dyn RngCore + Send>>,
    health: HealthTracker,
    counters: UplinkCounters,
    in_flight: usize,
    batch_max_records: usize,
    batch_max_bytes: u64,
    /// Batches acked since the batch size was last halved or doubled.
    acked_since_resize: u32,
    flushing: usize,
}

struct Shared<S> {
    source: S,
    transport: Transport,
    config: UplinkConfig,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
    /// Bumped by `wake` and `flush`: workers waiting out a backoff or a linger go now.
    wake: watch::Sender<u64>,
    /// Bumped whenever a batch finishes, for `flush`.
    progress: watch::Sender<u64>,
    phase: watch::Sender<Phase>,
    health: watch::Sender<UplinkHealth>,
    /// Whether the last lease came back full without waiting: catch-up workers lease only
    /// while it is `true`.
    backlog: watch::Sender<bool>,
}

impl<S> Shared<S> {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn publish_health(&self, state: &State) {
        let health = state.health.health();
        self.health
            .send_if_modified(|h| std::mem::replace(h, health) != health);
        metrics::gauge!("gateway_uplink_health").set(match health {
            UplinkHealth::Healthy => 0.0,
            UplinkHealth::Degraded => 1.0,
            UplinkHealth::Down => 2.0,
        });
        metrics::gauge!("gateway_uplink_consecutive_failures")
            .set(f64::from(state.health.status().consecutive_failures));
    }
}

/// Configures and starts an [`Uplink`].
pub struct UplinkBuilder {
    config: UplinkConfig,
    clock: Arc<dyn Clock>,
    rng: Option<Box<dyn RngCore + Send>>,
}

impl UplinkBuilder {
    /// Use this wall clock for "last success" times (default: the system clock).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Use this RNG for the backoff jitter (default: a small RNG seeded from the OS).
    pub fn rng(mut self, rng: impl RngCore + Send + 'static) -> Self {
        self.rng = Some(Box::new(rng));
        self
    }

    /// Start draining the gateway's buffer. Must be called inside a tokio runtime.
    pub fn start(self, buffer: Buffer) -> Result<Uplink<Buffer>, Error> {
        self.start_with_source(buffer)
    }

    /// Start draining any [`RecordSource`]. Must be called inside a tokio runtime.
    pub fn start_with_source<S: RecordSource>(self, source: S) -> Result<Uplink<S>, Error> {
        self.config.validate()?;
        let transport = Transport::new(&self.config)?;
        let rng = self
            .rng
            .unwrap_or_else(|| Box::new(rand::rngs::SmallRng::from_os_rng()));
        let state = State {
            backoff: Backoff::new(self.config.retry.clone(), rng),
            health: HealthTracker::new(self.config.health.clone()),
            counters: UplinkCounters::default(),
            in_flight: 0,
            batch_max_records: self.config.batch.max_records,
            batch_max_bytes: self.config.batch.max_bytes,
            acked_since_resize: 0,
            flushing: 0,
        };
        let steady = self.config.in_flight;
        let workers = steady.max(self.config.catch_up_in_flight);
        let encoding = Encoding::from(self.config.encoding);
        let shared = Arc::new(Shared {
            source,
            transport,
            config: self.config,
            clock: self.clock,
            state: Mutex::new(state),
            wake: watch::Sender::new(0),
            progress: watch::Sender::new(0),
            phase: watch::Sender::new(Phase::Running),
            health: watch::Sender::new(UplinkHealth::Healthy),
            backlog: watch::Sender::new(false),
        });
        let handles = (0..workers)
            .map(|index| {
                let catch_up = index >= steady;
                match encoding {
                    // Stored protobuf records are framed into the batch as they are.
                    Encoding::Protobuf => {
                        tokio::spawn(worker::<S, Bytes>(shared.clone(), catch_up))
                    }
                    Encoding::Json => tokio::spawn(worker::<S, Record>(shared.clone(), catch_up)),
                }
            })
            .collect();
        Ok(Uplink {
            handle: UplinkHandle { shared },
            workers: Some(handles),
        })
    }
}

/// The uplink: drains a buffer to `POST /v1/records` until shut down.
///
/// ```no_run
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use std::time::Duration;
/// use gateway_buffer::{Buffer, BufferConfig};
/// use gateway_uplink::{Uplink, UplinkConfig};
///
/// let buffer = Buffer::open("/var/lib/gateway/buffer.db", BufferConfig::default()).await?;
/// let uplink = Uplink::builder(UplinkConfig::new("https://ingest.example.com", "token", "gw-1"))
///     .start(buffer.clone())?;
/// let handle = uplink.handle(); // clone it into the control channel: handle.wake() on reconnect
/// println!("{:?}", handle.status().health.health);
/// let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
/// uplink.shutdown(deadline).await?;
/// # Ok(()) }
/// ```
///
/// Dropping an `Uplink` without [`Uplink::shutdown`] aborts its batches in flight; their
/// records are released back to the buffer.
pub struct Uplink<S: RecordSource = Buffer> {
    handle: UplinkHandle<S>,
    workers: Option<Vec<JoinHandle<()>>>,
}

/// A cheap, cloneable handle to a running [`Uplink`]: status, wake, flush.
pub struct UplinkHandle<S: RecordSource = Buffer> {
    shared: Arc<Shared<S>>,
}

impl<S: RecordSource> Clone for UplinkHandle<S> {
    fn clone(&self) -> Self {
        UplinkHandle {
            shared: self.shared.clone(),
        }
    }
}

impl Uplink<Buffer> {
    /// A builder for an uplink with `config`.
    pub fn builder(config: UplinkConfig) -> UplinkBuilder {
        UplinkBuilder {
            config,
            clock: Arc::new(SystemClock),
            rng: None,
        }
    }

    /// Start draining `buffer` with `config` and the defaults. Inside a tokio runtime.
    pub fn start(buffer: Buffer, config: UplinkConfig) -> Result<Self, Error> {
        Self::builder(config).start(buffer)
    }
}

impl<S: RecordSource> Uplink<S> {
    /// A handle to clone into other tasks (the control channel calls [`UplinkHandle::wake`]).
    pub fn handle(&self) -> UplinkHandle<S> {
        self.handle.clone()
    }

    /// See [`UplinkHandle::wake`].
    pub fn wake(&self) {
        self.handle.wake();
    }

    /// See [`UplinkHandle::status`].
    pub fn status(&self) -> UplinkStatus {
        self.handle.status()
    }

    /// See [`UplinkHandle::health`].
    pub fn health(&self) -> UplinkHealth {
        self.handle.health()
    }

    /// See [`UplinkHandle::flush`].
    pub async fn flush(&self, deadline: Instant) -> Result<FlushOutcome, Error> {
        self.handle.flush(deadline).await
    }

    /// Stop leasing, let batches in flight finish until `deadline`, then abort the rest and
    /// release their records to the buffer. Returns the final status.
    pub async fn shutdown(mut self, deadline: Instant) -> Result<UplinkStatus, Error> {
        let shared = self.handle.shared.clone();
        shared.phase.send_replace(Phase::Stopping);
        let handles = self.workers.take().unwrap_or_default();
        let mut join = Box::pin(join_all(handles));
        let result = tokio::select! {
            r = &mut join => r,
            () = tokio::time::sleep_until(deadline) => {
                shared.phase.send_replace(Phase::Abort);
                join.await
            }
        };
        result?;
        Ok(self.handle.status())
    }
}

async fn join_all(handles: Vec<JoinHandle<()>>) -> Result<(), Error> {
    for handle in handles {
        handle.await.map_err(|e| Error::Task(e.to_string()))?;
    }
    Ok(())
}

impl<S: RecordSource> Drop for Uplink<S> {
    fn drop(&mut self) {
        if self.workers.is_some() {
            self.handle.shared.phase.send_replace(Phase::Abort);
        }
    }
}

impl<S: RecordSource> UplinkHandle<S> {
    /// Try again now: drop the current backoff delay (and leave the parked state after
    /// `max_elapsed_ms`). Call it when there is a sign the server is back — the gateway calls
    /// it when its control channel reconnects — so a backlog drains at once instead of waiting
    /// out a long backoff.
    pub fn wake(&self) {
        let shared = &self.shared;
        shared.state().backoff.wake();
        shared.wake.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// The current health state.
    pub fn health(&self) -> UplinkHealth {
        self.shared.state().health.health()
    }

    /// A channel that changes with the health state.
    pub fn subscribe_health(&self) -> watch::Receiver<UplinkHealth> {
        self.shared.health.subscribe()
    }

    /// Health, backoff and totals.
    pub fn status(&self) -> UplinkStatus {
        let state = self.shared.state();
        let now = Instant::now();
        UplinkStatus {
            health: state.health.status().clone(),
            retry_in_ms: state
                .backoff
                .poll_timeout()
                .filter(|at| *at > now)
                .map(|at| (at - now).as_millis() as u64),
            parked: state.backoff.is_parked(),
            in_flight: state.in_flight,
            batch_max_records: state.batch_max_records,
            counters: state.counters,
        }
    }

    /// Push everything now (no linger, backoff woken once) and return when the buffer is
    /// empty — every record delivered or dead-lettered — or when `deadline` passes.
    pub async fn flush(&self, deadline: Instant) -> Result<FlushOutcome, Error> {
        let shared = &self.shared;
        if *shared.phase.borrow() != Phase::Running {
            return Err(Error::ShutDown);
        }
        let _flushing = FlushGuard::new(shared);
        self.wake();
        let mut progress = shared.progress.subscribe();
        loop {
            progress.borrow_and_update();
            let queued = shared
                .source
                .queued_records()
                .await
                .map_err(|e| Error::source("counting queued records", e))?;
            let in_flight = shared.state().in_flight;
            if queued == 0 && in_flight == 0 {
                return Ok(FlushOutcome::Flushed);
            }
            let now = Instant::now();
            if now >= deadline {
                return Ok(FlushOutcome::DeadlineReached { queued });
            }
            let poll = (now + Duration::from_millis(50)).min(deadline);
            tokio::select! {
                _ = progress.changed() => {}
                () = tokio::time::sleep_until(poll) => {}
            }
        }
    }
}

struct FlushGuard<'a, S> {
    shared: &'a Shared<S>,
}

impl<'a, S> FlushGuard<'a, S> {
    fn new(shared: &'a Shared<S>) -> Self {
        shared.state().flushing += 1;
        FlushGuard { shared }
    }
}

impl<S> Drop for FlushGuard<'_, S> {
    fn drop(&mut self) {
        self.shared.state().flushing -= 1;
    }
}

/// Waits until the phase leaves `Running` (or, with `abort_only`, reaches `Abort`).
async fn phase_at_least(phase: &mut watch::Receiver<Phase>, abort_only: bool) {
    loop {
        let p = *phase.borrow_and_update();
        if (abort_only && p == Phase::Abort) || (!abort_only && p != Phase::Running) {
            return;
        }
        if phase.changed().await.is_err() {
            return;
        }
    }
}

/// What a worker leases and how it turns a group of leases into a request body: decoded
/// records for the JSON encoding, stored protobuf records (framed without decoding) for
/// protobuf.
trait Payload: Send + Sync + Sized + 'static {
    fn lease<S: RecordSource>(
        source: &S,
        max_records: usize,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Option<SourceLease<S::LeaseId, Self>>, BoxError>> + Send;

    /// The request body before compression.
    fn encode(batch_id: BatchId, gateway_id: &str, records: Vec<Self>) -> Vec<u8>;
}

impl Payload for Record {
    fn lease<S: RecordSource>(
        source: &S,
        max_records: usize,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Option<SourceLease<S::LeaseId, Self>>, BoxError>> + Send {
        source.lease(max_records, max_bytes)
    }

    fn encode(batch_id: BatchId, gateway_id: &str, records: Vec<Self>) -> Vec<u8> {
        Batch {
            batch_id,
            gateway_id: gateway_id.to_owned(),
            records,
        }
        .to_json()
    }
}

impl Payload for Bytes {
    fn lease<S: RecordSource>(
        source: &S,
        max_records: usize,
        max_bytes: u64,
    ) -> impl Future<Output = Result<Option<SourceLease<S::LeaseId, Self>>, BoxError>> + Send {
        source.lease_encoded(max_records, max_bytes)
    }

    fn encode(batch_id: BatchId, gateway_id: &str, records: Vec<Self>) -> Vec<u8> {
        gateway_proto::frame_protobuf_batch(&batch_id, gateway_id, &records)
    }
}

struct Signals {
    wake: watch::Receiver<u64>,
    phase: watch::Receiver<Phase>,
    appended: watch::Receiver<u64>,
}

/// One batch at a time: lease, linger, send, settle. A `catch_up` worker (beyond
/// `in_flight`) waits while there is no backlog.
async fn worker<S: RecordSource, P: Payload>(shared: Arc<Shared<S>>, catch_up: bool) {
    let mut signals = Signals {
        wake: shared.wake.subscribe(),
        phase: shared.phase.subscribe(),
        appended: shared.source.subscribe_available(),
    };
    let mut backlog = shared.backlog.subscribe();
    let idle_poll = Duration::from_millis(shared.config.idle_poll_ms);
    loop {
        if *signals.phase.borrow() != Phase::Running {
            return;
        }
        if catch_up && !*backlog.borrow_and_update() {
            tokio::select! {
                _ = backlog.wait_for(|b| *b) => {}
                () = phase_at_least(&mut signals.phase, false) => {}
            }
            continue;
        }
        // The backoff gate: wait out a delay, or (parked) for a wake. Mark wakes seen before
        // reading the backoff, so a wake between the two is not lost.
        signals.wake.borrow_and_update();
        let gate = {
            let state = shared.state();
            if state.backoff.is_parked() {
                Some(None)
            } else {
                state
                    .backoff
                    .poll_timeout()
                    .filter(|at| *at > Instant::now())
                    .map(Some)
            }
        };
        if let Some(until) = gate {
            tokio::select! {
                () = async {
                    match until {
                        Some(at) => tokio::time::sleep_until(at).await,
                        None => std::future::pending().await,
                    }
                } => {}
                _ = signals.wake.changed() => {}
                () = phase_at_least(&mut signals.phase, false) => {}
            }
            continue;
        }
        signals.appended.borrow_and_update();
        let (max_records, max_bytes) = {
            let state = shared.state();
            (state.batch_max_records, state.batch_max_bytes)
        };
        let first = match P::lease(&shared.source, max_records, max_bytes).await {
            Ok(Some(lease)) => {
                // Full: at the record limit, or no room for another record of average size.
                let records = lease.records.len();
                let full = records >= max_records
                    || lease
                        .bytes
                        .saturating_add(lease.bytes / records.max(1) as u64)
                        > max_bytes;
                shared
                    .backlog
                    .send_if_modified(|b| std::mem::replace(b, full) != full);
                lease
            }
            Ok(None) => {
                shared
                    .backlog
                    .send_if_modified(|b| std::mem::replace(b, false));
                tokio::select! {
                    _ = signals.appended.changed() => {}
                    _ = signals.wake.changed() => {}
                    () = tokio::time::sleep(idle_poll) => {}
                    () = phase_at_least(&mut signals.phase, false) => {}
                }
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "the uplink could not lease a batch from the buffer");
                tokio::select! {
                    () = tokio::time::sleep(idle_poll) => {}
                    () = phase_at_least(&mut signals.phase, false) => {}
                }
                continue;
            }
        };
        let mut group = vec![first];
        linger(&shared, &mut group, &mut signals, max_records, max_bytes).await;
        if *signals.phase.borrow() != Phase::Running {
            release_all(&shared, group).await;
            return;
        }
        send_group(&shared, group, &mut signals.phase).await;
        shared.progress.send_modify(|n| *n = n.wrapping_add(1));
    }
}

fn group_size<L, P>(group: &[SourceLease<L, P>]) -> (usize, u64) {
    group
        .iter()
        .fold((0, 0), |(r, b), l| (r + l.records.len(), b + l.bytes))
}

/// Wait up to `linger_ms` for a partial batch to fill, leasing more as appends arrive.
async fn linger<S: RecordSource, P: Payload>(
    shared: &Shared<S>,
    group: &mut Vec<SourceLease<S::LeaseId, P>>,
    signals: &mut Signals,
    max_records: usize,
    max_bytes: u64,
) {
    let linger = Duration::from_millis(shared.config.batch.linger_ms);
    let full = |group: &[SourceLease<S::LeaseId, P>]| {
        let (records, bytes) = group_size(group);
        records >= max_records || bytes >= max_bytes
    };
    // Mark wakes seen first: a flush that starts after the check below still ends the wait.
    signals.wake.borrow_and_update();
    if linger.is_zero() || full(group) || shared.state().flushing > 0 {
        return;
    }
    let deadline = Instant::now() + linger;
    loop {
        tokio::select! {
            changed = signals.appended.changed() => {
                if changed.is_err() {
                    return;
                }
            }
            () = tokio::time::sleep_until(deadline) => return,
            _ = signals.wake.changed() => return,
            () = phase_at_least(&mut signals.phase, false) => return,
        }
        let (records, bytes) = group_size(group);
        match P::lease(
            &shared.source,
            max_records - records,
            max_bytes.saturating_sub(bytes).max(1),
        )
        .await
        {
            Ok(Some(more)) => group.push(more),
            Ok(None) => {}
            Err(e) => {
                tracing::warn!(error = %e, "the uplink could not lease more records");
                return;
            }
        }
        if full(group) {
            return;
        }
    }
}

async fn release_all<S: RecordSource, P>(
    shared: &Shared<S>,
    group: Vec<SourceLease<S::LeaseId, P>>,
) {
    for lease in group {
        if let Err(e) = shared.source.release(lease.id).await {
            // The lease will expire and its records return to the queue by themselves.
            tracing::warn!(lease = ?lease.id, error = %e, "releasing a lease failed");
        }
    }
}

/// The lease ids of a group and the number of records each contributed, in order.
type Layout<L> = Vec<(L, usize)>;

async fn send_group<S: RecordSource, P: Payload>(
    shared: &Shared<S>,
    group: Vec<SourceLease<S::LeaseId, P>>,
    phase: &mut watch::Receiver<Phase>,
) {
    let layout: Layout<S::LeaseId> = group.iter().map(|l| (l.id, l.records.len())).collect();
    let bytes: u64 = group.iter().map(|l| l.bytes).sum();
    let records: Vec<P> = group.into_iter().flat_map(|l| l.records).collect();
    let count = records.len();
    let batch_id = BatchId::new_v7();
    let plain = P::encode(batch_id, &shared.config.gateway_id, records);
    let body = shared.transport.body(plain);
    let body_len = body.bytes.len() as u64;
    let epoch = {
        let mut state = shared.state();
        state.in_flight += 1;
        state.counters.bytes_sent += body_len;
        state.backoff.epoch()
    };
    metrics::gauge!("gateway_uplink_in_flight").increment(1.0);
    metrics::counter!("gateway_uplink_bytes_total").increment(body_len);
    let started = Instant::now();
    let attempt = tokio::select! {
        a = shared.transport.post(batch_id, body) => Some(a),
        () = phase_at_least(phase, true) => None,
    };
    let elapsed = started.elapsed();
    settle(
        shared,
        &layout,
        (count, bytes),
        epoch,
        batch_id,
        attempt,
        elapsed,
    )
    .await;
    // Counted in flight until its leases are settled, so `flush` never sees an empty buffer
    // before the counters and health reflect the last batch.
    shared.state().in_flight -= 1;
    metrics::gauge!("gateway_uplink_in_flight").decrement(1.0);
}

/// Ack, release or dead-letter a batch's leases by the attempt's outcome.
async fn settle<S: RecordSource>(
    shared: &Shared<S>,
    layout: &Layout<S::LeaseId>,
    (count, bytes): (usize, u64),
    epoch: u64,
    batch_id: BatchId,
    attempt: Option<Attempt>,
    elapsed: Duration,
) {
    match attempt {
        None => {
            tracing::info!(batch = %batch_id, "shutdown deadline passed; releasing a batch in flight");
            release_all_ids(shared, layout).await;
        }
        Some(Attempt::Answered(ack)) if ack_adds_up(&ack, count) => {
            metrics::histogram!("gateway_uplink_request_seconds", "outcome" => "ok")
                .record(elapsed.as_secs_f64());
            on_ack(shared, layout, ack).await;
        }
        Some(Attempt::Answered(ack)) => {
            // Something between us and the receiver mangled the answer. Acking could lose
            // records; re-sending is safe (the server dedups), so treat it as a failure.
            let message = format!(
                "the server's BatchAck does not add up: {count} records sent, {} accepted + {} \
                 duplicates + {} rejected answered",
                ack.accepted,
                ack.duplicates,
                ack.rejected.len()
            );
            on_failure(
                shared,
                layout,
                (count, bytes),
                epoch,
                Failure::Connection,
                None,
                message,
            )
            .await;
        }
        Some(Attempt::Failed {
            failure,
            code,
            message,
        }) => {
            metrics::histogram!("gateway_uplink_request_seconds", "outcome" => "failed")
                .record(elapsed.as_secs_f64());
            on_failure(
                shared,
                layout,
                (count, bytes),
                epoch,
                failure,
                code,
                message,
            )
            .await;
        }
    }
}

async fn release_all_ids<S: RecordSource>(shared: &Shared<S>, layout: &Layout<S::LeaseId>) {
    for (id, _) in layout {
        if let Err(e) = shared.source.release(*id).await {
            tracing::warn!(lease = ?id, error = %e, "releasing a lease failed");
        }
    }
}

/// Ack each lease, or dead-letter the records the server rejected (indexes are into the
/// whole batch; each lease gets its own slice).
fn ack_adds_up(ack: &BatchAck, count: usize) -> bool {
    let answered = ack.accepted as usize + ack.duplicates as usize + ack.rejected.len();
    answered == count && ack.rejected.iter().all(|r| (r.index as usize) < count)
}

async fn on_ack<S: RecordSource>(shared: &Shared<S>, layout: &Layout<S::LeaseId>, ack: BatchAck) {
    let mut rejected = 0u64;
    let mut offset = 0usize;
    for (id, len) in layout {
        let letters: Vec<DeadLetter> = ack
            .rejected
            .iter()
            .filter(|r| (offset..offset + len).contains(&(r.index as usize)))
            .map(|r| DeadLetter {
                index: r.index as usize - offset,
                code: r.code.as_str().to_owned(),
                reason: r.message.clone(),
            })
            .collect();
        offset += len;
        rejected += letters.len() as u64;
        let result = if letters.is_empty() {
            shared.source.ack(*id).await
        } else {
            for letter in &letters {
                tracing::warn!(code = %letter.code, reason = %letter.reason, "the server rejected a record; dead-lettered");
            }
            shared.source.dead_letter(*id, letters).await
        };
        if let Err(e) = result {
            // Typically an expired lease: the records are queued again and the server will
            // count them as duplicates.
            tracing::warn!(lease = ?id, error = %e, "settling a delivered lease failed");
        }
    }
    let now_ms = shared.clock.now_ms();
    let mut state = shared.state();
    state.backoff.on_success();
    state.health.on_success(now_ms);
    let c = &mut state.counters;
    c.batches_acked += 1;
    c.records_accepted += u64::from(ack.accepted);
    c.records_duplicate += u64::from(ack.duplicates);
    c.records_dead_lettered += rejected;
    regrow_batch_size(&mut state, &shared.config);
    shared.publish_health(&state);
    drop(state);
    metrics::counter!("gateway_uplink_batches_total", "outcome" => "acked").increment(1);
    metrics::counter!("gateway_uplink_records_total", "outcome" => "accepted")
        .increment(u64::from(ack.accepted));
    metrics::counter!("gateway_uplink_records_total", "outcome" => "duplicate")
        .increment(u64::from(ack.duplicates));
    metrics::counter!("gateway_uplink_records_total", "outcome" => "dead_lettered")
        .increment(rejected);
}

/// One more acked batch: after [`REGROW_AFTER_BATCHES`] of them, double a batch size that a
/// 413 reduced, up to the configured one.
fn regrow_batch_size(state: &mut State, config: &UplinkConfig) {
    let (max_records, max_bytes) = (config.batch.max_records, config.batch.max_bytes);
    if state.batch_max_records >= max_records && state.batch_max_bytes >= max_bytes {
        return;
    }
    state.acked_since_resize += 1;
    if state.acked_since_resize < REGROW_AFTER_BATCHES {
        return;
    }
    state.acked_since_resize = 0;
    state.batch_max_records = state.batch_max_records.saturating_mul(2).min(max_records);
    state.batch_max_bytes = state.batch_max_bytes.saturating_mul(2).min(max_bytes);
    tracing::info!(
        new_max_records = state.batch_max_records,
        new_max_bytes = state.batch_max_bytes,
        "batches were accepted again; sending larger ones"
    );
}

async fn on_failure<S: RecordSource>(
    shared: &Shared<S>,
    layout: &Layout<S::LeaseId>,
    (count, bytes): (usize, u64),
    epoch: u64,
    failure: Failure,
    code: Option<ErrorCode>,
    message: String,
) {
    let class = match &failure {
        Failure::Status { status, .. } => classify_status(*status),
        Failure::Timeout | Failure::Connection => StatusClass::Retry,
    };
    match class {
        StatusClass::TooLarge if count > 1 => {
            release_all_ids(shared, layout).await;
            let mut state = shared.state();
            state.batch_max_records = (count / 2).max(1);
            state.batch_max_bytes = (bytes / 2).max(1);
            state.acked_since_resize = 0;
            tracing::warn!(
                records = count,
                new_max_records = state.batch_max_records,
                "the server refused a batch as too large; sending smaller batches"
            );
            metrics::counter!("gateway_uplink_batches_total", "outcome" => "split").increment(1);
        }
        StatusClass::TooLarge | StatusClass::DeadLetter => {
            let code = code.map_or_else(
                || match &failure {
                    Failure::Status { status, .. } => format!("http_{status}"),
                    _ => "refused".to_owned(),
                },
                |c| c.as_str().to_owned(),
            );
            tracing::warn!(records = count, %code, %message, "the server refused a batch for good; dead-lettering it");
            for (id, len) in layout {
                let letters = (0..*len)
                    .map(|index| DeadLetter {
                        index,
                        code: code.clone(),
                        reason: message.clone(),
                    })
                    .collect();
                if let Err(e) = shared.source.dead_letter(*id, letters).await {
                    tracing::warn!(lease = ?id, error = %e, "dead-lettering a lease failed; its records will be sent again");
                }
            }
            let mut state = shared.state();
            state.counters.batches_dead_lettered += 1;
            state.counters.records_dead_lettered += count as u64;
            drop(state);
            metrics::counter!("gateway_uplink_batches_total", "outcome" => "dead_lettered")
                .increment(1);
            metrics::counter!("gateway_uplink_records_total", "outcome" => "dead_lettered")
                .increment(count as u64);
        }
        StatusClass::Retry | StatusClass::Blocked | StatusClass::Success => {
            release_all_ids(shared, layout).await;
            let now_ms = shared.clock.now_ms();
            let mut state = shared.state();
            let decision = state.backoff.on_failure(Instant::now(), epoch, &failure);
            let (kind, message) = match decision {
                RetryDecision::GiveUp => (
                    FailureKind::Fatal,
                    format!(
                        "gave up retrying after {} ms of failures (waiting for a wake): {message}",
                        shared.config.retry.max_elapsed_ms.unwrap_or_default()
                    ),
                ),
                RetryDecision::RetryAt(_) if class == StatusClass::Blocked => {
                    (FailureKind::Fatal, message)
                }
                RetryDecision::RetryAt(_) => (FailureKind::Transient, message),
            };
            tracing::warn!(records = count, error = %message, "upload failed; the batch stays in the buffer");
            state.health.on_failure(now_ms, kind, message);
            state.counters.batches_retried += 1;
            shared.publish_health(&state);
            drop(state);
            metrics::counter!("gateway_uplink_batches_total", "outcome" => "retried").increment(1);
        }
    }
}
