//! The REST fallback for sites where WebSockets are blocked: the same heartbeats, commands
//! and acknowledgements over plain HTTPS requests.
//!
//! * `POST /v1/gateways/{id}/heartbeat` — body [`Heartbeat`] (JSON); answer [`RestHeartbeatAck`].
//! * `GET /v1/gateways/{id}/commands` — answer `{"commands": [Command, ...]}`: queued and
//!   unconfirmed commands in delivery order (priority, then age).
//! * `POST /v1/commands/{id}/ack` — body [`CommandAck`]; answer [`AckReceipt`].
//!
//! Every request carries `Authorization: Bearer <token>`; errors come back as
//! `{"error": {"code", "message"}}`. [`RestPoller`] drives these calls with the same command
//! journal as the WebSocket session, so the at-most-once and no-lost-outcome guarantees hold
//! on this path too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use gateway_proto::{
    Command, CommandAck, CommandAckState, CommandId, ErrorBody, ErrorCode, Heartbeat,
    StatusSnapshot,
};
use serde::{Deserialize, Serialize};

use super::journal::{CommandJournal, Outcome};
use super::ledger::{Incoming, Ledger};
use super::session::empty_status;
use crate::{CommandState, Error};

/// Answer to a REST heartbeat.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RestHeartbeatAck {
    /// The `seq` of the heartbeat.
    pub seq: u64,
    /// Server wall-clock time, ms since the epoch.
    pub server_time_ms: i64,
    /// How often the server expects heartbeats, ms; silence for 1.5 × this means offline.
    pub heartbeat_interval_ms: u64,
}

/// Answer to a command acknowledgement.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AckReceipt {
    /// The command.
    pub id: CommandId,
    /// Its state after the acknowledgement.
    pub state: CommandState,
    /// False when the acknowledgement was stale (recorded, but it did not move the state).
    pub applied: bool,
}

/// Body of `GET /v1/gateways/{id}/commands`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandList {
    /// Commands to take, in delivery order.
    pub commands: Vec<Command>,
}

/// HTTP client for the REST fallback endpoints.
#[derive(Debug, Clone)]
pub struct RestFallbackClient {
    http: reqwest::Client,
    base_url: String,
    gateway_id: String,
    token: String,
}

impl RestFallbackClient {
    /// A client for the server at `base_url` (e.g. `https://server.example`), with the ring
    /// provider and the webpki roots.
    pub fn new(
        base_url: impl Into<String>,
        gateway_id: impl Into<String>,
        token: impl Into<String>,
    ) -> Result<Self, Error> {
        Self::with_tls(base_url, gateway_id, token, super::default_tls_config()?)
    }

    /// A client with this TLS config.
    pub fn with_tls(
        base_url: impl Into<String>,
        gateway_id: impl Into<String>,
        token: impl Into<String>,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<Self, Error> {
        let base_url: String = base_url.into();
        let http = reqwest::Client::builder()
            .tls_backend_preconfigured((*tls).clone())
            .timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| Error::Http {
                url: base_url.clone(),
                reason: e.to_string(),
            })?;
        Ok(RestFallbackClient {
            http,
            base_url: base_url.trim_end_matches('/').to_owned(),
            gateway_id: gateway_id.into(),
            token: token.into(),
        })
    }

    /// The gateway id used in the paths.
    pub fn gateway_id(&self) -> &str {
        &self.gateway_id
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        request: reqwest::RequestBuilder,
        url: &str,
    ) -> Result<T, Error> {
        let http_error = |e: reqwest::Error| Error::Http {
            url: url.to_owned(),
            reason: e.to_string(),
        };
        let response = request
            .bearer_auth(&self.token)
            .send()
            .await
            .map_err(http_error)?;
        let status = response.status();
        let bytes = response.bytes().await.map_err(http_error)?;
        if !status.is_success() {
            let body = serde_json::from_slice::<ErrorBody>(&bytes).unwrap_or_else(|_| {
                ErrorBody::new(
                    ErrorCode::Other(format!("http_{}", status.as_u16())),
                    String::from_utf8_lossy(&bytes).into_owned(),
                )
            });
            return Err(Error::Rejected {
                status: status.as_u16(),
                body,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| Error::Http {
            url: url.to_owned(),
            reason: format!("unreadable answer: {e}"),
        })
    }

    /// `POST /v1/gateways/{id}/heartbeat`.
    pub async fn heartbeat(&self, heartbeat: &Heartbeat) -> Result<RestHeartbeatAck, Error> {
        let url = format!(
            "{}/v1/gateways/{}/heartbeat",
            self.base_url, self.gateway_id
        );
        self.call(self.http.post(&url).json(heartbeat), &url).await
    }

    /// `GET /v1/gateways/{id}/commands`.
    pub async fn fetch_commands(&self) -> Result<Vec<Command>, Error> {
        let url = format!("{}/v1/gateways/{}/commands", self.base_url, self.gateway_id);
        let list: CommandList = self.call(self.http.get(&url), &url).await?;
        Ok(list.commands)
    }

    /// `POST /v1/commands/{id}/ack`.
    pub async fn ack(&self, ack: &CommandAck) -> Result<AckReceipt, Error> {
        let url = format!("{}/v1/commands/{}/ack", self.base_url, ack.id);
        self.call(self.http.post(&url).json(ack), &url).await
    }
}

/// Drives the REST fallback with a command journal: call [`RestPoller::poll`] every heartbeat
/// interval, run the commands it returns, report each with [`RestPoller::report_outcome`].
pub struct RestPoller {
    client: RestFallbackClient,
    ledger: Ledger,
    status: StatusSnapshot,
    seq: u64,
    server_clock: Option<(Instant, i64)>,
    interval: Duration,
}

impl std::fmt::Debug for RestPoller {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RestPoller")
            .field("gateway_id", &self.client.gateway_id)
            .field("seq", &self.seq)
            .finish_non_exhaustive()
    }
}

impl RestPoller {
    /// A poller over `journal`; commands left running by a previous process are finished as
    /// `failed` and reported on the first poll.
    pub fn new(client: RestFallbackClient, journal: impl CommandJournal) -> Result<Self, Error> {
        let mut ledger = Ledger::new(Box::new(journal));
        ledger.recover()?;
        Ok(RestPoller {
            client,
            ledger,
            status: empty_status(),
            seq: 0,
            server_clock: None,
            interval: Duration::from_secs(30),
        })
    }

    /// The status the next heartbeat carries.
    pub fn set_status(&mut self, status: StatusSnapshot) {
        self.status = status;
    }

    /// The heartbeat interval the server asked for in its last answer (30 s before the first).
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// One round: heartbeat, re-send pending outcomes, fetch commands. Returns the new
    /// commands to run (`received` already acknowledged); redeliveries are answered from the
    /// journal and not returned.
    pub async fn poll(&mut self) -> Result<Vec<Command>, Error> {
        self.seq += 1;
        let heartbeat = Heartbeat {
            seq: self.seq,
            status: self.status.clone(),
        };
        let answer = self.client.heartbeat(&heartbeat).await?;
        self.server_clock = Some((Instant::now(), answer.server_time_ms));
        self.interval = Duration::from_millis(answer.heartbeat_interval_ms.max(1));
        for ack in self.ledger.pending()? {
            self.client.ack(&ack).await?;
            self.ledger.ack_sent(&ack.id)?;
        }
        let mut new = Vec::new();
        for command in self.client.fetch_commands().await? {
            let server_now = self.server_clock.map(|(at, ms)| {
                ms.saturating_add(i64::try_from(at.elapsed().as_millis()).unwrap_or(i64::MAX))
            });
            match self.ledger.on_command(command, server_now)? {
                Incoming::New(command) => {
                    let received = CommandAck {
                        id: command.id,
                        state: CommandAckState::Received,
                        detail: None,
                        result: None,
                    };
                    self.client.ack(&received).await?;
                    new.push(*command);
                }
                Incoming::Known(answer) => {
                    self.client.ack(&answer).await?;
                    if answer.state.is_terminal() {
                        self.ledger.ack_sent(&answer.id)?;
                    }
                }
            }
        }
        Ok(new)
    }

    /// Report progress of a running command.
    pub async fn report_progress(
        &mut self,
        id: CommandId,
        detail: Option<String>,
    ) -> Result<(), Error> {
        let ack = self.ledger.progress(id, detail)?;
        self.client.ack(&ack).await.map(|_| ())
    }

    /// Journal the outcome, then send it. If sending fails the outcome stays pending and
    /// goes out with the next [`RestPoller::poll`]; the error is returned for logging.
    pub async fn report_outcome(&mut self, id: CommandId, outcome: Outcome) -> Result<(), Error> {
        let ack = self.ledger.outcome(id, &outcome)?;
        self.client.ack(&ack).await?;
        self.ledger.ack_sent(&id)
    }
}
