//! HTTP endpoints (axum): the WebSocket upgrade, the REST fallback, the operator API for
//! commands and presence, and the SSE event stream. Every error answer is an
//! [`ErrorBody`] with a stable code.

use std::convert::Infallible;
use std::sync::Arc;

use axum::extract::ws::WebSocketUpgrade;
use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::{Path, Query, State};
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
fn json_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body)
        .map_err(|e| ApiError::new(ErrorCode::MalformedBody, format!("malformed JSON: {e}")))
}

impl Hub {
    /// The gateway-facing routes: `GET /v1/control` (WebSocket) and the REST fallback
    /// (`POST /v1/gateways/{id}/heartbeat`, `GET /v1/gateways/{id}/commands`,
    /// `POST /v1/commands/{id}/ack`).
    pub fn router(&self) -> Router {
        Router::new()
            .route("/v1/control", get(control_upgrade))
            .route("/v1/gateways/{id}/heartbeat", post(rest_heartbeat))
            .route("/v1/gateways/{id}/commands", get(rest_commands))
            .route("/v1/commands/{id}/ack", post(rest_ack))
            .with_state(self.clone())
    }

    /// The operator routes (admin token): `POST /v1/gateways/{id}/commands` (enqueue),
    /// `GET /v1/commands/{id}` (state and acknowledgement history),
    /// `POST /v1/commands/{id}/cancel?force=`, `GET /v1/commands?gateway_id=&state=&limit=`,
    /// `GET /v1/gateways` and `GET /v1/gateways/{id}` (presence).
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
    Path(gateway_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<RestHeartbeatAck>, ApiError> {
    let principal = authenticate(&headers, hub.authenticator().as_ref())?;
    require_gateway(&principal, &gateway_id)?;
    let heartbeat: Heartbeat = json_body(&body)?;
    let interval = hub.config().session.heartbeat_interval_ms;
    hub.plane()
        .rest_heartbeat(&principal, heartbeat.status, interval);
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
    Path(gateway_id): Path<String>,
    headers: HeaderMap,
) -> Result<Json<CommandList>, ApiError> {
    let principal = authenticate(&headers, hub.authenticator().as_ref())?;
    require_gateway(&principal, &gateway_id)?;
    let commands = hub.plane().rest_fetch(&gateway_id)?;
    Ok(Json(CommandList { commands }))
}

async fn rest_ack(
    State(hub): State<Hub>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Json<AckReceipt>, ApiError> {
    let principal = authenticate(&headers, hub.authenticator().as_ref())?;
    require_role(&principal, Role::Gateway)?;
    let id = parse_command_id(&id)?;
    let ack: CommandAck = json_body(&body)?;
    if ack.id != id {
        return Err(ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the body acknowledges {}, the path names {id}", ack.id),
        ));
    }
    let (outcome, _) = hub.plane().command_ack(&principal.subject, &ack)?;
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
    Path(gateway_id): Path<String>,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Result<Response, ApiError> {
    let principal = admin(&hub, &headers)?;
    let body: EnqueueBody = json_body(&body)?;
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

fn visible(principal: &Principal, tenant: Option<&str>) -> bool {
    tenant.is_none_or(|t| t == principal.tenant)
}

async fn op_command(
    State(hub): State<Hub>,
    Path(id): Path<String>,
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
    Path(id): Path<String>,
    Query(query): Query<CancelQuery>,
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
    Query(query): Query<ListQuery>,
    headers: HeaderMap,
) -> Result<Json<serde_json::Value>, ApiError> {
    let principal = admin(&hub, &headers)?;
    let state = query
        .state
        .map(|s| s.parse::<CommandState>())
        .transpose()
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, e.to_string()))?;
    let filter = CommandFilter {
        gateway_id: query.gateway_id,
        state,
        limit: query.limit.unwrap_or(100).min(1_000),
    };
    let commands: Vec<_> = hub
        .commands(&filter)?
        .into_iter()
        .filter(|r| visible(&principal, r.tenant.as_deref()))
        .collect();
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
    Path(gateway_id): Path<String>,
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
/// `id:` (its id), `event:` (its kind) and `data:` (its JSON payload); an operator sees the
/// events of their tenant and those without one. Resume with the `Last-Event-ID` header (or
/// `?after=`): retained events after it are replayed first. A subscriber that falls too far
/// behind is disconnected and resumes the same way.
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
    Query(query): Query<EventsQuery>,
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

/// The SSE stream of `log` after `after`, filtered to `tenant`. Ends when the subscriber lags.
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
    let visible = move |e: &LoggedEvent| e.tenant.as_deref().is_none_or(|t| t == tenant);
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
