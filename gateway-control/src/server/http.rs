//! HTTP endpoints (axum): the WebSocket upgrade, the REST fallback, the operator API for
//! commands and presence, and the SSE event stream. Every error answer is an
//! [`ErrorBody`] with a stable code — including a query string, path or body the extractors
//! refuse (`?limit=abc` is 400 `invalid_request`, a body over the size limit 413
//! `payload_too_large`), never axum's plain-text rejections.
//!
//! Tenancy: an operator sees and acts on their own tenant's gateways, commands and events
//! only; a gateway or command of another tenant answers 404 `not_found`, exactly as one that
//! does not exist. A gateway's REST calls are refused (403 `forbidden`) when its token names
//! a tenant the server's gateway directory does not place it in.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use futures::Stream;
use gateway_proto::auth::{Authenticator, Principal, Role, bearer_token};
use gateway_proto::{
    CommandAck, CommandId, Encoding, ErrorBody, ErrorCode, Heartbeat, HeartbeatAck,
    SUBPROTOCOL_JSON, SUBPROTOCOL_PROTOBUF,
};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::json;

use super::events::{EventLog, LoggedEvent};
use super::hub::Hub;
use super::queue::{CommandFilter, NewCommand};
use crate::gateway::{AckReceipt, CommandList, RestHeartbeatAck};
use crate::{CommandState, Error};

/// An error answer: the status of its code and an [`ErrorBody`].
#[derive(Debug)]
pub struct ApiError(pub ErrorBody);

impl ApiError {
    /// An error answer with this code and message.
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError(ErrorBody::new(code, message))
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        if matches!(e, Error::Storage { .. } | Error::CorruptStore { .. }) {
            tracing::error!(error = %e, "storage failure answering a request");
        }
        ApiError(e.to_body())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0)).into_response()
    }
}

/// The principal behind the request's bearer token: 401 `unauthorized` without a token, 403
/// `forbidden` for a token the authenticator refuses.
pub fn authenticate(headers: &HeaderMap, auth: &dyn Authenticator) -> Result<Principal, ApiError> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::Unauthorized,
                "send Authorization: Bearer <token>",
            )
        })?;
    auth.authenticate(token)
        .ok_or_else(|| ApiError::new(ErrorCode::Forbidden, "the token is not valid"))
}

fn require_role(principal: &Principal, role: Role) -> Result<(), ApiError> {
    if principal.role == role {
        Ok(())
    } else {
        Err(ApiError::new(
            ErrorCode::Forbidden,
            format!(
                "this endpoint needs a {role} token, not a {} one",
                principal.role
            ),
        ))
    }
}

fn require_gateway(principal: &Principal, gateway_id: &str) -> Result<(), ApiError> {
    require_role(principal, Role::Gateway)?;
    if principal.subject != gateway_id {
        return Err(ApiError::new(
            ErrorCode::IdentityMismatch,
            format!(
                "the token belongs to gateway `{}`, not `{gateway_id}`",
                principal.subject
            ),
        ));
    }
    Ok(())
}

fn parse_command_id(text: &str) -> Result<CommandId, ApiError> {
    text.parse()
        .map_err(|e: gateway_proto::Error| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))
}

/// JSON body extraction answering with an [`ErrorBody`].
fn json_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorCode::MalformedBody, format!("malformed JSON: {e}")))
}

/// An axum extractor rejection as an [`ErrorBody`]: 413 stays `payload_too_large`, 415
/// `unsupported_media_type`, a server-side failure `internal`, anything else `fallback`.
fn rejection(status: StatusCode, text: String, what: &str, fallback: ErrorCode) -> ApiError {
    let code = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ErrorCode::PayloadTooLarge,
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ErrorCode::UnsupportedMediaType,
        s if s.is_server_error() => ErrorCode::Internal,
        _ => fallback,
    };
    ApiError::new(code, format!("{what}: {text}"))
}

/// [`Query`] answering a bad query string with 400 `invalid_request` in an [`ErrorBody`].
struct ApiQuery<T>(T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for ApiQuery<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Query::<T>::from_request_parts(parts, state)
            .await
            .map(|Query(value)| ApiQuery(value))
            .map_err(|e| {
                rejection(
                    e.status(),
                    e.body_text(),
                    "bad query string",
                    ErrorCode::InvalidRequest,
                )
            })
    }
}

/// [`Path`] answering an undecodable path segment with 400 `invalid_request`.
struct ApiPath<T>(T);

impl<S: Send + Sync, T: DeserializeOwned + Send> FromRequestParts<S> for ApiPath<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Path::<T>::from_request_parts(parts, state)
            .await
            .map(|Path(value)| ApiPath(value))
            .map_err(|e| {
                rejection(
                    e.status(),
                    e.body_text(),
                    "bad path",
                    ErrorCode::InvalidRequest,
                )
            })
    }
}

/// The raw body, answering one over the body limit with 413 `payload_too_large`.
struct ApiBody(axum::body::Bytes);

impl<S: Send + Sync> FromRequest<S> for ApiBody {
    type Rejection = ApiError;

    async fn from_request(request: Request, state: &S) -> Result<Self, ApiError> {
        axum::body::Bytes::from_request(request, state)
            .await
            .map(ApiBody)
            .map_err(|e| {
                rejection(
                    e.status(),
                    e.body_text(),
                    "could not read the body",
                    ErrorCode::MalformedBody,
                )
            })
    }
}

impl Hub {
    /// The gateway-facing routes: `GET /v1/control` (WebSocket) and the REST fallback
    /// (`POST /v1/gateways/{id}/heartbeat`, `GET /v1/gateways/{id}/commands`,
    /// `POST /v1/commands/{id}/ack`), each for a gateway token naming `{id}` (403
    /// `identity_mismatch` otherwise). A gateway whose token's tenant is not the one the
    /// gateway directory places it in is refused: `error` frame (`forbidden`) and close at
    /// the WebSocket handshake, 403 `forbidden` on the REST routes. A gateway fetches only the
    /// commands of its own id and tenant; acknowledging another tenant's command is 404
    /// `not_found` (nothing is recorded), another gateway's of the same tenant 403.
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/control", get(control_upgrade))
            .route("/v1/gateways/{id}/heartbeat", post(rest_heartbeat))
            .route("/v1/gateways/{id}/commands", get(rest_commands))
            .route("/v1/commands/{id}/ack", post(rest_ack))
            .with_state(self.clone())
    }

    /// The operator routes (admin token), each scoped to the caller's tenant:
    ///
    /// * `POST /v1/gateways/{id}/commands` — enqueue; body `{"kind", "payload", "priority",
    ///   "target", "delivery_deadline_ms", "execution_timeout_ms"}` (only `kind` required).
    ///   201 with the stored command. 404 `not_found` when `{id}` is not a gateway of the
    ///   caller's tenant (the same answer whether another tenant has it or nobody does; see
    ///   [`Hub`] for how gateways are known); 413 `payload_too_large` when the `command` frame
    ///   would exceed `limits.max_frame_bytes`; 400 for a bad body or timer.
    /// * `GET /v1/commands/{id}` — `{"command", "acks"}` (state and acknowledgement history).
    /// * `POST /v1/commands/{id}/cancel?force=` — a `queued` or `sent` command cancels
    ///   plainly; a `received` or `in_progress` one needs `force=true`. Either way the gateway
    ///   may already hold it and run it (its later acknowledgements are recorded, never applied);
    ///   409 `conflict` for a finished command or one that needs force.
    /// * `GET /v1/commands?gateway_id=&state=&limit=` — the caller's tenant's commands,
    ///   newest first (`limit` default 100, at most 1,000).
    /// * `GET /v1/gateways` and `GET /v1/gateways/{id}` — presence of the caller's tenant's
    ///   gateways.
    ///
    /// Another tenant's command is 404 `not_found` on every route. Bad query strings are 400
    /// `invalid_request`, bodies over axum's body limit 413 — all as [`ErrorBody`] JSON.
    pub fn operator_router(&self) -> Router {
        Router::new()
            .route("/v1/gateways/{id}/commands", post(op_enqueue))
            .route("/v1/commands", get(op_list))
            .route("/v1/commands/{id}", get(op_command))
            .route("/v1/commands/{id}/cancel", post(op_cancel))
            .route("/v1/gateways", get(op_gateways))
            .route("/v1/gateways/{id}", get(op_gateway))
            .with_state(self.clone())
    }
}

async fn control_upgrade(
    State(hub): State<Hub>,
    headers: HeaderMap,
    upgrade: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let principal = authenticate(&headers, hub.authenticator().as_ref())?;
    require_role(&principal, Role::Gateway)?;
    let upgrade = upgrade.map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("GET /v1/control needs a WebSocket upgrade: {e}"),
        )
    })?;
    let upgrade = upgrade.protocols([SUBPROTOCOL_JSON, SUBPROTOCOL_PROTOBUF]);
    let requested = upgrade.requested_protocols().next().is_some();
    let encoding = match upgrade.selected_protocol() {
        Some(p) => Encoding::from_subprotocol(p.to_str().unwrap_or(""))?,
        None if !requested => Encoding::Json,
        None => {
            return Err(ApiError::new(
                ErrorCode::UnsupportedMediaType,
                format!("request subprotocol {SUBPROTOCOL_JSON} or {SUBPROTOCOL_PROTOBUF}"),
            ));
        }
    };
    let config = hub.config();
    let max = config.limits.max_frame_bytes;
    let upgrade = upgrade
        .read_buffer_size(config.ws_read_buffer_bytes)
        .write_buffer_size(0)
        .max_message_size(max)
        .max_frame_size(max);
    Ok(upgrade
        .on_upgrade(move |socket| hub.run_connection(socket, principal, encoding))
        .into_response())
}

impl From<gateway_proto::Error> for ApiError {
    fn from(e: gateway_proto::Error) -> Self {
        ApiError(ErrorBody::from(&e))
    }
}

async fn rest_heartbeat(
    State(hub): State<Hub>,
    ApiPath(gateway_id): ApiPath<String>,
    headers: HeaderMap,
    ApiBody(body): ApiBody,
) -> Result<Json<RestHeartbeatAck>, ApiError> {
    let principal = authenticate(&headers, hub.authenticator().as_ref())?;
    require_gateway(&principal, &gateway_id)?;
    let heartbeat: Heartbeat = json_body(&body)?;
    let interval = hub.config().session.heartbeat_interval_ms;
    hub.plane()
        .rest_heartbeat(&principal, heartbeat.status, interval)?;
    let ack = HeartbeatAck {
        seq: heartbeat.seq,
        server_time_ms: hub.plane().now_ms(),
    };
    Ok(Json(RestHeartbeatAck {
        seq: ack.seq,
        server_time_ms: ack.server_time_ms,
        heartbeat_interval_ms: interval,
    }))
}

async fn rest_commands(
    State(hub): State<Hub>,
    ApiPath(gateway_id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Json<CommandList>, ApiError> {
    let principal = authenticate(&headers, hub.authenticator().as_ref())?;
    require_gateway(&principal, &gateway_id)?;
    hub.plane().admit(&principal)?;
    let commands = hub.plane().rest_fetch(&principal)?;
    Ok(Json(CommandList { commands }))
}

async fn rest_ack(
    State(hub): State<Hub>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
    ApiBody(body): ApiBody,
) -> Result<Json<AckReceipt>, ApiError> {
    let principal = authenticate(&headers, hub.authenticator().as_ref())?;
    require_role(&principal, Role::Gateway)?;
    hub.plane().admit(&principal)?;
    let id = parse_command_id(&id)?;
    let ack: CommandAck = json_body(&body)?;
    if ack.id != id {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the body acknowledges {}, the path names {id}", ack.id),
        ));
    }
    // Only the gateway's own commands, of its own tenant: another tenant's is `not_found`.
    let (outcome, _) = hub.plane().command_ack(&principal, &ack)?;
    Ok(Json(AckReceipt {
        id,
        state: outcome.state,
        applied: outcome.applied,
    }))
}

// ----- operator API -----

fn admin(hub: &Hub, headers: &HeaderMap) -> Result<Principal, ApiError> {
    let principal = authenticate(headers, hub.authenticator().as_ref())?;
    require_role(&principal, Role::Admin)?;
    Ok(principal)
}

/// Body of `POST /v1/gateways/{id}/commands`.
#[derive(Debug, Deserialize)]
struct EnqueueBody {
    kind: String,
    #[serde(default)]
    payload: serde_json::Value,
    #[serde(default)]
    priority: i32,
    #[serde(default)]
    target: Option<String>,
    #[serde(default)]
    delivery_deadline_ms: Option<i64>,
    #[serde(default)]
    execution_timeout_ms: Option<u64>,
}

async fn op_enqueue(
    State(hub): State<Hub>,
    ApiPath(gateway_id): ApiPath<String>,
    headers: HeaderMap,
    ApiBody(body): ApiBody,
) -> Result<Response, ApiError> {
    let principal = admin(&hub, &headers)?;
    let body: EnqueueBody = json_body(&body)?;
    // The command's tenant is the caller's; the plane refuses it (404, as for a gateway that
    // does not exist) unless the gateway is provisioned in that tenant.
    let command = NewCommand {
        gateway_id,
        kind: body.kind,
        payload: body.payload,
        priority: body.priority,
        target: body.target,
        delivery_deadline_ms: body.delivery_deadline_ms,
        execution_timeout_ms: body.execution_timeout_ms,
        tenant: Some(principal.tenant),
    };
    let record = hub.enqueue(command)?;
    Ok((StatusCode::CREATED, Json(record)).into_response())
}

/// A command is visible to the operators of its own tenant only (one stored without a tenant,
/// by an older version, to nobody).
fn visible(principal: &Principal, tenant: Option<&str>) -> bool {
    tenant == Some(principal.tenant.as_str())
}

async fn op_command(
    State(hub): State<Hub>,
    ApiPath(id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let principal = admin(&hub, &headers)?;
    let id = parse_command_id(&id)?;
    let record = hub
        .command(&id)?
        .filter(|r| visible(&principal, r.tenant.as_deref()))
        .ok_or_else(|| ApiError::from(Error::UnknownCommand { id }))?;
    let acks = hub.acks(&id)?;
    Ok(Json(json!({"command": record, "acks": acks})))
}

#[derive(Debug, Deserialize)]
struct CancelQuery {
    #[serde(default)]
    force: bool,
}

async fn op_cancel(
    State(hub): State<Hub>,
    ApiPath(id): ApiPath<String>,
    ApiQuery(query): ApiQuery<CancelQuery>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let principal = admin(&hub, &headers)?;
    let id = parse_command_id(&id)?;
    let visible_here = hub
        .command(&id)?
        .is_some_and(|r| visible(&principal, r.tenant.as_deref()));
    if !visible_here {
        return Err(Error::UnknownCommand { id }.into());
    }
    let change = hub.cancel(&id, query.force)?;
    Ok(Json(json!({"change": change})))
}

#[derive(Debug, Deserialize)]
struct ListQuery {
    gateway_id: Option<String>,
    state: Option<String>,
    limit: Option<usize>,
}

async fn op_list(
    State(hub): State<Hub>,
    ApiQuery(query): ApiQuery<ListQuery>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let principal = admin(&hub, &headers)?;
    let state = query
        .state
        .map(|s| s.parse::<CommandState>())
        .transpose()
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
    // The tenant filter runs in the store, before the limit.
    let filter = CommandFilter {
        tenant: Some(principal.tenant),
        gateway_id: query.gateway_id,
        state,
        limit: query.limit.unwrap_or(100).min(1_000),
    };
    let commands = hub.commands(&filter)?;
    Ok(Json(json!({"commands": commands})))
}

async fn op_gateways(
    State(hub): State<Hub>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let principal = admin(&hub, &headers)?;
    let gateways: Vec<_> = hub
        .gateways()
        .into_iter()
        .filter(|g| g.tenant == principal.tenant)
        .collect();
    Ok(Json(json!({"gateways": gateways})))
}

async fn op_gateway(
    State(hub): State<Hub>,
    ApiPath(gateway_id): ApiPath<String>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let principal = admin(&hub, &headers)?;
    let presence = hub
        .presence(&gateway_id)
        .filter(|g| g.tenant == principal.tenant)
        .ok_or_else(|| {
            ApiError::new(
                ErrorCode::NotFound,
                format!("gateway `{gateway_id}` is not known"),
            )
        })?;
    Ok(Json(json!({"gateway": presence})))
}

// ----- SSE -----

#[derive(Clone)]
struct EventsState {
    log: EventLog,
    auth: Arc<dyn Authenticator>,
}

/// `GET /v1/events`: the event log as Server-Sent Events (admin token). Each event has
/// `id:` (its id), `event:` (its kind) and `data:` (its JSON payload). An operator sees the
/// events of their own tenant only: events published without a tenant (`None`) are for
/// in-process subscribers ([`EventLog::subscribe`]) and reach no operator, so nothing
/// published without a tenant can leak one tenant's data to another. Resume with the
/// `Last-Event-ID` header (or `?after=`): retained events after it are replayed first. A
/// subscriber that falls too far behind is disconnected and resumes the same way. A bad
/// `Last-Event-ID` or `?after=` is 400 `invalid_request` ([`ErrorBody`] JSON).
pub fn event_routes(log: EventLog, auth: Arc<dyn Authenticator>) -> Router {
    Router::new()
        .route("/v1/events", get(sse_events))
        .with_state(EventsState { log, auth })
}

#[derive(Debug, Deserialize)]
struct EventsQuery {
    after: Option<u64>,
}

async fn sse_events(
    State(state): State<EventsState>,
    ApiQuery(query): ApiQuery<EventsQuery>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let principal = authenticate(&headers, state.auth.as_ref())?;
    require_role(&principal, Role::Admin)?;
    let last_event_id = match headers.get("last-event-id") {
        Some(value) => Some(
            value
                .to_str()
                .ok()
                .and_then(|v| v.trim().parse::<u64>().ok())
                .ok_or_else(|| {
                    ApiError::new(
                        ErrorCode::InvalidRequest,
                        "Last-Event-ID must be an event id",
                    )
                })?,
        ),
        None => query.after,
    };
    let stream = event_stream(&state.log, last_event_id, principal.tenant);
    Ok(Sse::new(stream)
        .keep_alive(KeepAlive::default())
        .into_response())
}

fn to_sse(event: &LoggedEvent) -> Event {
    Event::default()
        .id(event.id.to_string())
        .event(event.kind.as_str())
        .data(event.data.to_string())
}

/// The SSE stream of `log` after `after`, filtered to the events of `tenant` (events without
/// a tenant are left out). Ends when the subscriber lags.
pub fn event_stream(
    log: &EventLog,
    after: Option<u64>,
    tenant: String,
) -> impl Stream<Item = Result<Event, Infallible>> + Send + 'static {
    let subscription = log.subscribe(after);
    let backlog = subscription.backlog;
    let truncated = subscription.truncated;
    let live = subscription.live;
    let last_backlog_id = backlog.last().map(|e| e.id).or(after).unwrap_or(0);
    let head = truncated.then(|| {
        Ok(Event::default()
            .event("stream.truncated")
            .data(json!({"after": after}).to_string()))
    });
    let visible = move |e: &LoggedEvent| e.tenant.as_deref() == Some(tenant.as_str());
    let visible_backlog = visible.clone();
    let replay = futures::stream::iter(
        head.into_iter().chain(
            backlog
                .into_iter()
                .filter(move |e| visible_backlog(e))
                .map(|e| Ok(to_sse(&e))),
        ),
    );
    let live = futures::stream::unfold(live, move |mut live| {
        let visible = visible.clone();
        async move {
            loop {
                match live.recv().await {
                    Ok(event) if event.id <= last_backlog_id => continue,
                    Ok(event) if visible(&event) => return Some((Ok(to_sse(&event)), live)),
                    Ok(_) => continue,
                    Err(_) => return None,
                }
            }
        }
    });
    futures::StreamExt::chain(replay, live)
}
