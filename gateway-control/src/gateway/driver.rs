//! The tokio driver of [`GatewaySession`]: a WebSocket client (tokio-tungstenite, rustls with
//! the ring provider) that feeds the session and carries out what it asks.

use std::sync::Arc;
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use gateway_proto::{
    AppliedPolicy, CommandId, ControlFrame, Encoding, Limits, StatusSnapshot, WireMessage,
    decode_frame,
};
use http::HeaderValue;
use http::header::{AUTHORIZATION, SEC_WEBSOCKET_PROTOCOL};
use serde::{Deserialize, Serialize};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{Connector, MaybeTlsStream, WebSocketStream};

use super::journal::{CommandJournal, Outcome};
use super::session::{
    ConnectionState, GatewayEvent, GatewaySession, GatewaySessionConfig, Transmit,
};
use crate::Error;

/// The encoding of control frames, chosen with the WebSocket subprotocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireEncoding {
    /// JSON text frames, subprotocol `gateway.v1.json` (the default).
    #[default]
    Json,
    /// Protobuf binary frames, subprotocol `gateway.v1.proto`.
    Protobuf,
}

impl From<WireEncoding> for Encoding {
    fn from(e: WireEncoding) -> Self {
        match e {
            WireEncoding::Json => Encoding::Json,
            WireEncoding::Protobuf => Encoding::Protobuf,
        }
    }
}

/// Settings of the gateway's control-channel client.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct GatewayClientConfig {
    /// The server's control endpoint, `wss://host/v1/control` (or `ws://` on a trusted
    /// network).
    pub url: String,
    /// Bearer token sent in the upgrade request; it decides the gateway's identity.
    pub token: String,
    /// JSON or protobuf frames. Default JSON.
    pub encoding: WireEncoding,
    /// The session's settings (gateway id, backoff, outbox, ...).
    pub session: GatewaySessionConfig,
    /// How long opening a connection (TCP, TLS, upgrade) may take, ms. Default 10,000.
    pub connect_timeout_ms: u64,
    /// Size limits applied to frames from the server.
    pub limits: Limits,
}

impl Default for GatewayClientConfig {
    fn default() -> Self {
        GatewayClientConfig {
            url: String::new(),
            token: String::new(),
            encoding: WireEncoding::Json,
            session: GatewaySessionConfig::default(),
            connect_timeout_ms: 10_000,
            limits: Limits::default(),
        }
    }
}

impl GatewayClientConfig {
    /// Check every value; the error names the parameter.
    pub fn validate(&self) -> Result<(), Error> {
        self.session.validate()?;
        if !(self.url.starts_with("ws://") || self.url.starts_with("wss://")) {
            return Err(Error::InvalidConfig {
                param: "url",
                reason: format!("`{}` is not a ws:// or wss:// URL", self.url),
            });
        }
        if self.token.is_empty() || HeaderValue::from_str(&self.token).is_err() {
            return Err(Error::InvalidConfig {
                param: "token",
                reason: "must be non-empty visible ASCII".into(),
            });
        }
        if self.connect_timeout_ms == 0 {
            return Err(Error::InvalidConfig {
                param: "connect_timeout_ms",
                reason: "must be at least 1".into(),
            });
        }
        Ok(())
    }
}

/// A rustls client config with the ring provider and the Mozilla root certificates
/// (webpki-roots). No process-wide provider is installed.
pub fn default_tls_config() -> Result<Arc<rustls::ClientConfig>, Error> {
    let roots = rustls::RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| Error::InvalidConfig {
        param: "tls",
        reason: e.to_string(),
    })?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(Arc::new(config))
}

enum Request {
    Outcome(CommandId, Outcome, oneshot::Sender<Result<(), Error>>),
    Progress(
        CommandId,
        Option<String>,
        oneshot::Sender<Result<(), Error>>,
    ),
    Send(Box<ControlFrame>, oneshot::Sender<Result<(), Error>>),
    Status(Box<StatusSnapshot>),
    Policies(Vec<AppliedPolicy>),
    Close,
}

/// The application's handle on a running client. Cheap to clone.
#[derive(Clone, Debug)]
pub struct GatewayHandle {
    requests: mpsc::UnboundedSender<Request>,
    state: watch::Receiver<ConnectionState>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Request")
    }
}

impl GatewayHandle {
    async fn ask(
        &self,
        make: impl FnOnce(oneshot::Sender<Result<(), Error>>) -> Request,
    ) -> Result<(), Error> {
        let (tx, rx) = oneshot::channel();
        self.requests
            .send(make(tx))
            .map_err(|_| Error::DriverStopped)?;
        rx.await.map_err(|_| Error::DriverStopped)?
    }

    /// Report the outcome of a command (journaled, then sent or queued).
    pub async fn report_outcome(&self, id: CommandId, outcome: Outcome) -> Result<(), Error> {
        self.ask(|tx| Request::Outcome(id, outcome, tx)).await
    }

    /// Report progress of a running command.
    pub async fn report_progress(
        &self,
        id: CommandId,
        detail: Option<String>,
    ) -> Result<(), Error> {
        self.ask(|tx| Request::Progress(id, detail, tx)).await
    }

    /// Send a gateway → server frame such as `policy_status` (see [`GatewaySession::send`]).
    pub async fn send(&self, frame: ControlFrame) -> Result<(), Error> {
        self.ask(|tx| Request::Send(Box::new(frame), tx)).await
    }

    /// The status the next heartbeats carry.
    pub fn set_status(&self, status: StatusSnapshot) -> Result<(), Error> {
        self.requests
            .send(Request::Status(Box::new(status)))
            .map_err(|_| Error::DriverStopped)
    }

    /// The policies announced in the next `hello`.
    pub fn set_applied_policies(&self, policies: Vec<AppliedPolicy>) -> Result<(), Error> {
        self.requests
            .send(Request::Policies(policies))
            .map_err(|_| Error::DriverStopped)
    }

    /// The connection state now.
    pub fn state(&self) -> ConnectionState {
        *self.state.borrow()
    }

    /// A receiver of the connection state: `changed().await` wakes on every change, e.g. to
    /// wake the uplink as soon as the control channel is back.
    pub fn watch_state(&self) -> watch::Receiver<ConnectionState> {
        self.state.clone()
    }

    /// Wait until the session is established (welcomed).
    pub async fn wait_established(&self) -> Result<(), Error> {
        let mut state = self.state.clone();
        state
            .wait_for(|s| matches!(s, ConnectionState::Established { .. }))
            .await
            .map(|_| ())
            .map_err(|_| Error::DriverStopped)
    }

    /// Close the connection and stop the driver.
    pub fn close(&self) {
        let _ = self.requests.send(Request::Close);
    }
}

/// Events of a running client: everything [`GatewayEvent`] carries, in order.
#[derive(Debug)]
pub struct GatewayEvents {
    rx: mpsc::UnboundedReceiver<GatewayEvent>,
}

impl GatewayEvents {
    /// The next event; `None` once the driver stopped.
    pub async fn recv(&mut self) -> Option<GatewayEvent> {
        self.rx.recv().await
    }
}

/// The gateway's control-channel client: spawns a task that drives a [`GatewaySession`]
/// over tokio-tungstenite.
#[derive(Debug)]
pub struct GatewayClient;

impl GatewayClient {
    /// Start the client on the current tokio runtime with [`default_tls_config`].
    pub fn spawn(
        config: GatewayClientConfig,
        journal: impl CommandJournal,
    ) -> Result<(GatewayHandle, GatewayEvents), Error> {
        GatewayClientBuilder::new(config, journal).spawn()
    }

    /// Start the client with this TLS config (e.g. a private CA for the server).
    pub fn spawn_with_tls(
        config: GatewayClientConfig,
        journal: impl CommandJournal,
        tls: Arc<rustls::ClientConfig>,
    ) -> Result<(GatewayHandle, GatewayEvents), Error> {
        GatewayClientBuilder::new(config, journal).tls(tls).spawn()
    }

    /// A builder, to set the state the first `hello` and heartbeat carry before starting.
    pub fn builder(
        config: GatewayClientConfig,
        journal: impl CommandJournal,
    ) -> GatewayClientBuilder {
        GatewayClientBuilder::new(config, journal)
    }
}

/// Builds a [`GatewayClient`]: the applied policies and status for the first `hello` and
/// heartbeat, the TLS config. Then [`spawn`](Self::spawn).
pub struct GatewayClientBuilder {
    config: GatewayClientConfig,
    journal: Box<dyn CommandJournal>,
    tls: Option<Arc<rustls::ClientConfig>>,
    applied_policies: Vec<AppliedPolicy>,
    status: Option<StatusSnapshot>,
}

impl std::fmt::Debug for GatewayClientBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GatewayClientBuilder")
            .field("url", &self.config.url)
            .finish_non_exhaustive()
    }
}

impl GatewayClientBuilder {
    /// A builder with no policies, an empty status and [`default_tls_config`].
    pub fn new(config: GatewayClientConfig, journal: impl CommandJournal) -> Self {
        GatewayClientBuilder {
            config,
            journal: Box::new(journal),
            tls: None,
            applied_policies: Vec::new(),
            status: None,
        }
    }

    /// Use this TLS config.
    pub fn tls(mut self, tls: Arc<rustls::ClientConfig>) -> Self {
        self.tls = Some(tls);
        self
    }

    /// The policies the gateway runs, for the first `hello`.
    pub fn applied_policies(mut self, policies: Vec<AppliedPolicy>) -> Self {
        self.applied_policies = policies;
        self
    }

    /// The status for the first heartbeat.
    pub fn status(mut self, status: StatusSnapshot) -> Self {
        self.status = Some(status);
        self
    }

    /// Start the client on the current tokio runtime.
    pub fn spawn(self) -> Result<(GatewayHandle, GatewayEvents), Error> {
        self.config.validate()?;
        let tls = match self.tls {
            Some(tls) => tls,
            None => default_tls_config()?,
        };
        let mut session = GatewaySession::new(self.config.session.clone(), self.journal)?;
        session.set_applied_policies(self.applied_policies);
        if let Some(status) = self.status {
            session.set_status(status);
        }
        let (requests_tx, requests) = mpsc::unbounded_channel();
        let (events_tx, events) = mpsc::unbounded_channel();
        let (state_tx, state) = watch::channel(session.state());
        let driver = Driver {
            session,
            config: self.config,
            tls,
            ws: None,
            requests,
            events: events_tx,
            state: state_tx,
        };
        tokio::spawn(driver.run());
        Ok((
            GatewayHandle {
                requests: requests_tx,
                state,
            },
            GatewayEvents { rx: events },
        ))
    }
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

struct Driver {
    session: GatewaySession,
    config: GatewayClientConfig,
    tls: Arc<rustls::ClientConfig>,
    ws: Option<Ws>,
    requests: mpsc::UnboundedReceiver<Request>,
    events: mpsc::UnboundedSender<GatewayEvent>,
    state: watch::Sender<ConnectionState>,
}

fn now() -> std::time::Instant {
    tokio::time::Instant::now().into_std()
}

impl Driver {
    async fn run(mut self) {
        loop {
            self.flush_outputs().await;
            if matches!(self.session.state(), ConnectionState::Stopped) && self.ws.is_none() {
                break;
            }
            let deadline = self.session.poll_timeout();
            let sleep = async {
                match deadline {
                    Some(at) => tokio::time::sleep_until(at.into()).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                message = next_message(&mut self.ws) => self.on_message(message),
                request = self.requests.recv() => match request {
                    Some(request) => self.on_request(request),
                    None => self.session.close(),
                },
                () = sleep => self.session.handle_timeout(now()),
            }
        }
        let _ = self.state.send(ConnectionState::Stopped);
    }

    async fn flush_outputs(&mut self) {
        while let Some(transmit) = self.session.poll_transmit() {
            match transmit {
                Transmit::Connect => self.connect().await,
                Transmit::Frame(frame) => self.send_frame(&frame).await,
                Transmit::Close(reason) => {
                    if let Some(mut ws) = self.ws.take() {
                        tracing::info!(%reason, "closing the control channel");
                        let _ = ws.close(None).await;
                    }
                }
            }
        }
        while let Some(event) = self.session.poll_event() {
            let _ = self.events.send(event);
        }
        let state = self.session.state();
        self.state.send_if_modified(|current| {
            let changed = *current != state;
            *current = state;
            changed
        });
    }

    async fn connect(&mut self) {
        let timeout = Duration::from_millis(self.config.connect_timeout_ms);
        match tokio::time::timeout(timeout, open(&self.config, self.tls.clone())).await {
            Ok(Ok(ws)) => {
                self.ws = Some(ws);
                self.session.connected(now());
            }
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "control channel connect failed");
                let _ = self.events.send(GatewayEvent::ConnectFailed {
                    reason: e.to_string(),
                });
                self.session.disconnected(now());
            }
            Err(_) => {
                let _ = self.events.send(GatewayEvent::ConnectFailed {
                    reason: format!("no connection within {} ms", timeout.as_millis()),
                });
                self.session.disconnected(now());
            }
        }
    }

    async fn send_frame(&mut self, frame: &ControlFrame) {
        let Some(ws) = self.ws.as_mut() else {
            return;
        };
        let message = encode(frame, self.config.encoding.into());
        if let Err(e) = ws.send(message).await {
            tracing::warn!(error = %e, "control channel write failed");
            self.ws = None;
            self.session.disconnected(now());
        } else {
            metrics::counter!("gateway_control_gateway_frames_sent_total").increment(1);
        }
    }

    fn on_message(
        &mut self,
        message: Option<Result<Message, tokio_tungstenite::tungstenite::Error>>,
    ) {
        let bytes = match message {
            Some(Ok(Message::Text(text))) => text.as_bytes().to_vec(),
            Some(Ok(Message::Binary(bytes))) => bytes.to_vec(),
            Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_))) => return,
            Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                self.ws = None;
                self.session.disconnected(now());
                return;
            }
        };
        metrics::counter!("gateway_control_gateway_frames_received_total").increment(1);
        match decode_frame(&bytes, self.config.encoding.into(), &self.config.limits) {
            Ok(frame) => {
                if let Err(e) = self.session.handle_frame(now(), frame) {
                    tracing::error!(error = %e, "could not take a command; the server will redeliver it");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "undecodable frame from the server");
                self.session.handle_decode_error(&e);
            }
        }
    }

    fn on_request(&mut self, request: Request) {
        match request {
            Request::Outcome(id, outcome, reply) => {
                let _ = reply.send(self.session.report_outcome(id, outcome));
            }
            Request::Progress(id, detail, reply) => {
                let _ = reply.send(self.session.report_progress(id, detail));
            }
            Request::Send(frame, reply) => {
                let _ = reply.send(self.session.send(*frame));
            }
            Request::Status(status) => self.session.set_status(*status),
            Request::Policies(policies) => self.session.set_applied_policies(policies),
            Request::Close => self.session.close(),
        }
    }
}

async fn next_message(
    ws: &mut Option<Ws>,
) -> Option<Result<Message, tokio_tungstenite::tungstenite::Error>> {
    match ws {
        Some(ws) => ws.next().await,
        None => std::future::pending().await,
    }
}

pub(crate) fn encode(frame: &ControlFrame, encoding: Encoding) -> Message {
    match encoding {
        Encoding::Json => match String::from_utf8(frame.to_json()) {
            Ok(text) => Message::text(text),
            Err(e) => Message::binary(e.into_bytes()),
        },
        Encoding::Protobuf => Message::binary(frame.to_protobuf()),
    }
}

async fn open(config: &GatewayClientConfig, tls: Arc<rustls::ClientConfig>) -> Result<Ws, Error> {
    let connect_error = |reason: String| Error::Connect {
        url: config.url.clone(),
        reason,
    };
    let mut request = config
        .url
        .as_str()
        .into_client_request()
        .map_err(|e| connect_error(e.to_string()))?;
    let bearer = HeaderValue::from_str(&format!("Bearer {}", config.token))
        .map_err(|e| connect_error(format!("token is not a valid header value: {e}")))?;
    let encoding: Encoding = config.encoding.into();
    request.headers_mut().insert(AUTHORIZATION, bearer);
    request.headers_mut().insert(
        SEC_WEBSOCKET_PROTOCOL,
        HeaderValue::from_static(encoding.subprotocol()),
    );
    let ws_config = WebSocketConfig::default()
        .read_buffer_size(16 * 1024)
        .max_message_size(Some(config.limits.max_frame_bytes))
        .max_frame_size(Some(config.limits.max_frame_bytes));
    let (ws, response) = tokio_tungstenite::connect_async_tls_with_config(
        request,
        Some(ws_config),
        true,
        Some(Connector::Rustls(tls)),
    )
    .await
    .map_err(|e| match e {
        tokio_tungstenite::tungstenite::Error::Http(response) => connect_error(format!(
            "the server refused the upgrade with HTTP {}{}",
            response.status(),
            response
                .body()
                .as_ref()
                .map(|b| format!(": {}", String::from_utf8_lossy(b)))
                .unwrap_or_default()
        )),
        other => connect_error(other.to_string()),
    })?;
    let chosen = response
        .headers()
        .get(SEC_WEBSOCKET_PROTOCOL)
        .and_then(|v| v.to_str().ok());
    if chosen != Some(encoding.subprotocol()) {
        return Err(connect_error(format!(
            "the server chose subprotocol {chosen:?}, expected {}",
            encoding.subprotocol()
        )));
    }
    Ok(ws)
}
