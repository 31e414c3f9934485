//! Simulated agents: they register with a gateway, send heartbeats, and post records at a fixed
//! total rate, retrying refused batches the way a real agent must (same batch id, same record
//! ids), and count what happened.
//!
//! Used by the `agent-sim` binary and by the `demo`.

use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::{Context, bail};
use gateway_proto::{
    AgentHeartbeatRequest, AgentHeartbeatResponse, Batch, BatchAck, Body, Encoding, ErrorBody,
    RecordId, RegisterAgentRequest, RegisterAgentResponse, WireMessage, clock::unix_ms,
};
use serde_json::json;
use tokio::time::Instant;

/// What to simulate.
#[derive(Debug, Clone)]
pub struct AgentSimConfig {
    /// Base URL of the gateway, e.g. `http://127.0.0.1:7070`.
    pub gateway: String,
    /// Bearer token the agents present.
    pub token: String,
    /// Number of agents.
    pub agents: usize,
    /// Records per second, all agents together.
    pub rate: f64,
    /// How long to produce records.
    pub duration: Duration,
    /// Records per request, at most.
    pub batch_size: usize,
    /// Encoding of request bodies.
    pub encoding: Encoding,
    /// How long to keep retrying unacknowledged batches after `duration` ends.
    pub drain_timeout: Duration,
    /// Prefix of the agent ids (`<prefix>-<n>`).
    pub agent_prefix: String,
}

impl Default for AgentSimConfig {
    fn default() -> Self {
        AgentSimConfig {
            gateway: "http://127.0.0.1:7070".into(),
            token: "agent-token".into(),
            agents: 4,
            rate: 1000.0,
            duration: Duration::from_secs(10),
            batch_size: 500,
            encoding: Encoding::Json,
            drain_timeout: Duration::from_secs(60),
            agent_prefix: "sim-agent".into(),
        }
    }
}

/// Live counters, readable while the simulation runs (for a progress bar).
#[derive(Debug, Default)]
pub struct Counters {
    /// Records produced and posted at least once.
    pub sent: AtomicU64,
    /// Records the gateway acknowledged as stored (accepted or duplicate).
    pub acknowledged: AtomicU64,
    /// Records the gateway refused for good (per-record rejections, 4xx).
    pub refused: AtomicU64,
    /// Answers that asked to retry later (429, 503, network errors).
    pub retries: AtomicU64,
    /// Heartbeats answered.
    pub heartbeats: AtomicU64,
    /// Commands received in heartbeat answers.
    pub commands: AtomicU64,
}

/// The outcome of a simulation.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Records produced and posted.
    pub sent: u64,
    /// Records the gateway acknowledged.
    pub acknowledged: u64,
    /// Records refused for good.
    pub refused: u64,
    /// Records still unacknowledged when the drain timeout ran out.
    pub unacknowledged: u64,
    /// Retry-later answers seen.
    pub retries: u64,
    /// Ids of every acknowledged record.
    pub acknowledged_ids: Vec<RecordId>,
}

impl std::fmt::Display for Summary {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "sent {}, acknowledged {}, refused {}, unacknowledged {}, retries {}",
            self.sent, self.acknowledged, self.refused, self.unacknowledged, self.retries
        )
    }
}

/// Run the simulation to the end: produce for `duration`, then retry what is left for up to
/// `drain_timeout`. `counters` is updated as it goes.
pub async fn run(config: AgentSimConfig, counters: Arc<Counters>) -> anyhow::Result<Summary> {
    if config.agents == 0
        || !config.rate.is_finite()
        || config.rate <= 0.0
        || config.batch_size == 0
    {
        bail!("agents, rate and batch size must be greater than zero");
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .context("building the HTTP client")?;
    let per_agent_rate = config.rate / config.agents as f64;
    let mut tasks = Vec::new();
    for n in 0..config.agents {
        let agent = Agent {
            id: format!("{}-{n}", config.agent_prefix),
            client: client.clone(),
            config: config.clone(),
            counters: counters.clone(),
            rate: per_agent_rate,
        };
        tasks.push(tokio::spawn(agent.run()));
    }
    let mut summary = Summary::default();
    for task in tasks {
        let one = task.await.context("agent task panicked")??;
        summary.unacknowledged += one.unacknowledged;
        summary.acknowledged_ids.extend(one.acknowledged_ids);
    }
    summary.sent = counters.sent.load(Ordering::Relaxed);
    summary.acknowledged = counters.acknowledged.load(Ordering::Relaxed);
    summary.refused = counters.refused.load(Ordering::Relaxed);
    summary.retries = counters.retries.load(Ordering::Relaxed);
    Ok(summary)
}

struct Agent {
    id: String,
    client: reqwest::Client,
    config: AgentSimConfig,
    counters: Arc<Counters>,
    rate: f64,
}

/// The answer to one post, from the agent's point of view.
enum Posted {
    Stored(BatchAck),
    RetryAfter(Duration),
    Refused(String),
}

impl Agent {
    async fn run(self) -> anyhow::Result<Summary> {
        let identity = Arc::new(AgentIdentity {
            id: self.id.clone(),
            client: self.client.clone(),
            gateway: self.config.gateway.clone(),
            token: self.config.token.clone(),
            encoding: self.config.encoding,
            counters: self.counters.clone(),
        });
        let registration = identity.register().await?;
        let heartbeat_every = Duration::from_millis(registration.heartbeat_interval_ms.max(100));
        let heartbeats = tokio::spawn(heartbeat_loop(identity.clone(), heartbeat_every));
        let records_url = identity.url("/v1/records");

        let start = Instant::now();
        let produce_until = start + self.config.duration;
        let give_up_at = produce_until + self.config.drain_timeout;
        let tick = Duration::from_millis(50);
        let mut produced = 0u64;
        let mut pending: VecDeque<Batch> = VecDeque::new();
        let mut retry_at = Instant::now();
        let mut summary = Summary::default();

        loop {
            let now = Instant::now();
            if now < produce_until {
                // Produce what the rate allows up to now, in batches of at most batch_size.
                let due = (now.duration_since(start).as_secs_f64() * self.rate) as u64;
                while produced < due {
                    let n = (due - produced).min(self.config.batch_size as u64);
                    pending.push_back(self.make_batch(produced, n));
                    produced += n;
                    self.counters.sent.fetch_add(n, Ordering::Relaxed);
                }
            } else if pending.is_empty() || now >= give_up_at {
                break;
            }
            if now >= retry_at {
                while let Some(batch) = pending.front() {
                    match self.post(&records_url, batch).await {
                        Posted::Stored(ack) => {
                            let batch = pending.pop_front().expect("front exists");
                            self.count_ack(&batch, &ack, &mut summary);
                        }
                        Posted::RetryAfter(wait) => {
                            self.counters.retries.fetch_add(1, Ordering::Relaxed);
                            retry_at = Instant::now() + wait;
                            break;
                        }
                        Posted::Refused(why) => {
                            let batch = pending.pop_front().expect("front exists");
                            tracing::warn!(agent = %self.id, "batch refused: {why}");
                            self.counters
                                .refused
                                .fetch_add(batch.records.len() as u64, Ordering::Relaxed);
                        }
                    }
                }
            }
            tokio::time::sleep(tick).await;
        }
        heartbeats.abort();
        summary.unacknowledged = pending.iter().map(|b| b.records.len() as u64).sum();
        Ok(summary)
    }

    /// `n` records, numbered from `first`; ids are fixed now so a retry resends the same ids.
    fn make_batch(&self, first: u64, n: u64) -> Batch {
        let records = (first..first + n)
            .map(|i| {
                gateway_proto::Record::new(
                    "logs",
                    self.id.clone(),
                    unix_ms(std::time::SystemTime::now()),
                    Body::from(json!({
                        "seq": i,
                        "level": if i % 10 == 0 { "warn" } else { "info" },
                        "msg": "simulated agent activity: user session refreshed",
                    })),
                )
                .with_id(RecordId::new_v7())
            })
            .collect();
        Batch::new("", records)
    }

    async fn post(&self, url: &str, batch: &Batch) -> Posted {
        let answer = send_with_key(
            &self.client,
            url,
            &self.config.token,
            self.config.encoding,
            batch.encode(self.config.encoding),
            Some(batch.batch_id.to_string()),
        )
        .await;
        match answer {
            Ok(Answer {
                status: 200, body, ..
            }) => match BatchAck::decode(&body, self.config.encoding) {
                Ok(ack) => Posted::Stored(ack),
                Err(e) => Posted::Refused(format!("undecodable acknowledgement: {e}")),
            },
            Ok(Answer {
                status: 408 | 429 | 500..=599,
                retry_after,
                ..
            }) => Posted::RetryAfter(retry_after.unwrap_or(Duration::from_millis(500))),
            Ok(Answer { status, body, .. }) => {
                Posted::Refused(format!("{status}: {}", error_text(&body)))
            }
            Err(_) => Posted::RetryAfter(Duration::from_millis(500)),
        }
    }

    fn count_ack(&self, batch: &Batch, ack: &BatchAck, summary: &mut Summary) {
        let stored = u64::from(ack.accepted) + u64::from(ack.duplicates);
        self.counters
            .acknowledged
            .fetch_add(stored, Ordering::Relaxed);
        self.counters
            .refused
            .fetch_add(ack.rejected.len() as u64, Ordering::Relaxed);
        let rejected: std::collections::HashSet<u32> =
            ack.rejected.iter().map(|r| r.index).collect();
        summary.acknowledged_ids.extend(
            batch
                .records
                .iter()
                .enumerate()
                .filter(|(i, _)| !rejected.contains(&(*i as u32)))
                .filter_map(|(_, r)| r.id),
        );
    }
}

/// Heartbeats until aborted. Commands in the answers are acknowledged in the next heartbeat
/// (each id counted once); a 404 means the gateway forgot the agent, so it registers again.
async fn heartbeat_loop(agent: Arc<AgentIdentity>, mut every: Duration) {
    let mut seq = 0;
    let mut seen = std::collections::HashSet::new();
    let mut to_ack = Vec::new();
    loop {
        tokio::time::sleep(every).await;
        seq += 1;
        let request = AgentHeartbeatRequest {
            agent_id: agent.id.clone(),
            seq,
            queued_records: 0,
            status: Default::default(),
            acked_commands: to_ack.clone(),
        };
        let url = agent.url("/v1/agents/heartbeat");
        let encoding = agent.encoding;
        match send(
            &agent.client,
            &url,
            &agent.token,
            encoding,
            request.encode(encoding),
        )
        .await
        {
            Ok((200, body)) => {
                let Ok(answer) = AgentHeartbeatResponse::decode(&body, encoding) else {
                    continue;
                };
                to_ack.clear();
                agent.counters.heartbeats.fetch_add(1, Ordering::Relaxed);
                for command in &answer.commands {
                    if seen.insert(command.id) {
                        agent.counters.commands.fetch_add(1, Ordering::Relaxed);
                        tracing::info!(agent = %agent.id, id = %command.id, kind = %command.kind, "command received");
                    }
                    to_ack.push(command.id);
                }
                every = Duration::from_millis(answer.heartbeat_interval_ms.max(100));
            }
            Ok((404, _)) => {
                if let Err(e) = agent.register().await {
                    tracing::warn!(agent = %agent.id, error = %e, "could not register again");
                }
            }
            _ => {}
        }
    }
}

/// What an agent needs to talk to its gateway.
struct AgentIdentity {
    id: String,
    client: reqwest::Client,
    gateway: String,
    token: String,
    encoding: Encoding,
    counters: Arc<Counters>,
}

impl AgentIdentity {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.gateway.trim_end_matches('/'))
    }

    async fn register(&self) -> anyhow::Result<RegisterAgentResponse> {
        let request = RegisterAgentRequest {
            agent_id: self.id.clone(),
            kind: "simulated".into(),
            version: env!("CARGO_PKG_VERSION").into(),
            hostname: "agent-sim".into(),
            capabilities: vec!["restart".into()],
            attributes: Default::default(),
        };
        // The gateway may still be starting: try for a while.
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = send(
                &self.client,
                &self.url("/v1/agents/register"),
                &self.token,
                self.encoding,
                request.encode(self.encoding),
            )
            .await;
            match answer {
                Ok((200, body)) => {
                    return RegisterAgentResponse::decode(&body, self.encoding)
                        .context("decoding the registration answer");
                }
                Ok((status, body)) if status < 500 && status != 429 => {
                    bail!("registration refused with {status}: {}", error_text(&body))
                }
                _ if Instant::now() < deadline => {
                    tokio::time::sleep(Duration::from_millis(250)).await
                }
                Ok((status, body)) => {
                    bail!("registration failed with {status}: {}", error_text(&body))
                }
                Err(e) => return Err(e).context("registering with the gateway"),
            }
        }
    }
}

struct Answer {
    status: u16,
    body: Vec<u8>,
    retry_after: Option<Duration>,
}

async fn send(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    encoding: Encoding,
    body: Vec<u8>,
) -> anyhow::Result<(u16, Vec<u8>)> {
    let answer = send_with_key(client, url, token, encoding, body, None).await?;
    Ok((answer.status, answer.body))
}

async fn send_with_key(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    encoding: Encoding,
    body: Vec<u8>,
    idempotency_key: Option<String>,
) -> anyhow::Result<Answer> {
    let mut request = client
        .post(url)
        .bearer_auth(token)
        .header(reqwest::header::CONTENT_TYPE, encoding.content_type())
        .header(reqwest::header::ACCEPT, encoding.content_type())
        .body(body);
    if let Some(key) = idempotency_key {
        request = request.header(gateway_proto::HEADER_IDEMPOTENCY_KEY, key);
    }
    let response = request.send().await?;
    let status = response.status().as_u16();
    let retry_after = response
        .headers()
        .get(reqwest::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let body = response.bytes().await?.to_vec();
    Ok(Answer {
        status,
        body,
        retry_after,
    })
}

fn error_text(body: &[u8]) -> String {
    ErrorBody::from_json(body)
        .or_else(|_| ErrorBody::from_protobuf(body))
        .map(|e| format!("{} ({})", e.error.message, e.error.code))
        .unwrap_or_else(|_| String::from_utf8_lossy(body).into_owned())
}
