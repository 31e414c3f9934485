//! The agent routes (axum, feature `agent-api`): `POST /v1/agents/register` and
//! `POST /v1/agents/heartbeat`.
//!
//! # What a request goes through, in order
//!
//! 1. **Authentication** (`Authorization: Bearer <token>` through the [`Authenticator`]):
//!    no token → 401 `unauthorized`; a token the authenticator refuses, or one whose role is
//!    not `agent` → 403 `forbidden`.
//! 2. **Content negotiation**: `Content-Type` JSON or protobuf, `Content-Encoding` gzip or
//!    identity; anything else → 415 `unsupported_media_type`.
//! 3. **Size**: the body (and the body after gunzip) at most `max_request_bytes` → else 413
//!    `payload_too_large`.
//! 4. **Decoding and rules**: 400 `malformed_body` (does not decode) or `invalid_request`
//!    (breaks a size rule, names the field).
//! 5. **Identity**: the principal must be allowed to act as the agent named in the body
//!    (see [`may_act_as`](super::may_act_as)) → else 403 `forbidden`; an agent id registered by another tenant
//!    → 403 `forbidden`.
//! 6. **Registry**: 200 with the answer; a heartbeat from an agent that is not registered →
//!    404 `not_found`; a new agent beyond `max_agents` → 409 `conflict`.
//!
//! Answers — errors included — are encoded like the request (JSON when its `Content-Type`
//! is missing or unknown), with the matching `Content-Type`.

use std::io::Read as _;
use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use bytes::Bytes;
use futures::StreamExt as _;
use gateway_proto::auth::{Authenticator, Principal, Role, bearer_token};
use gateway_proto::{
    AgentHeartbeatRequest, Encoding, ErrorBody, ErrorCode, RegisterAgentRequest, WireMessage,
};

use super::access::may_act_as;
use super::service::AgentService;
use crate::Error;

/// The routes `POST /v1/agents/register` and `POST /v1/agents/heartbeat`, answering for
/// `service` and authenticating callers with `auth`. Merge them into the gateway's router.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), gateway_control::Error> {
/// use std::sync::Arc;
/// use gateway_control::gateway::agents::{AgentService, AgentServiceConfig, agent_routes};
/// use gateway_proto::auth::{Principal, Role, StaticTokens};
///
/// let agents = AgentService::spawn("gw-1", AgentServiceConfig::default())?;
/// let tokens = StaticTokens::new().with("site-agents", Principal::new("acme", "*", Role::Agent));
/// let app: axum::Router = agent_routes(agents.clone(), Arc::new(tokens));
/// // axum::serve(listener, app).await;
/// # Ok(()) }
/// ```
pub fn agent_routes(service: AgentService, auth: Arc<dyn Authenticator>) -> Router {
    Router::new()
        .route("/v1/agents/register", post(register))
        .route("/v1/agents/heartbeat", post(heartbeat))
        // The handlers read the body themselves, with the service's own limit and error body.
        .layer(DefaultBodyLimit::disable())
        .with_state(AgentApi { service, auth })
}

#[derive(Clone)]
struct AgentApi {
    service: AgentService,
    auth: Arc<dyn Authenticator>,
}

/// An error answer, in the request's encoding.
struct Refusal {
    body: ErrorBody,
    encoding: Encoding,
}

impl Refusal {
    fn new(encoding: Encoding, code: ErrorCode, message: impl Into<String>) -> Self {
        Refusal {
            body: ErrorBody::new(code, message),
            encoding,
        }
    }

    fn from_error(encoding: Encoding, error: &Error) -> Self {
        if matches!(
            error,
            Error::Storage { .. } | Error::CorruptStore { .. } | Error::DriverStopped
        ) {
            tracing::error!(error = %error, "agent API could not answer");
        }
        Refusal {
            body: error.to_body(),
            encoding,
        }
    }
}

impl IntoResponse for Refusal {
    fn into_response(self) -> Response {
        let status = StatusCode::from_u16(self.body.http_status())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        encoded(status, self.encoding, self.body.encode(self.encoding))
    }
}

fn encoded(status: StatusCode, encoding: Encoding, body: Vec<u8>) -> Response {
    (
        status,
        [(
            header::CONTENT_TYPE,
            HeaderValue::from_static(encoding.content_type()),
        )],
        body,
    )
        .into_response()
}

async fn register(State(api): State<AgentApi>, headers: HeaderMap, body: Body) -> Response {
    let answer = async {
        let (principal, encoding, bytes) = api.admit(&headers, body).await?;
        let request = RegisterAgentRequest::decode(&bytes, encoding)
            .map_err(|e| Refusal::from_error(encoding, &Error::Proto(e)))?;
        check_identity(&principal, &request.agent_id, encoding)?;
        let answer = api
            .service
            .register(&principal.tenant, &request)
            .await
            .map_err(|e| Refusal::from_error(encoding, &e))?;
        Ok::<_, Refusal>(encoded(StatusCode::OK, encoding, answer.encode(encoding)))
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

async fn heartbeat(State(api): State<AgentApi>, headers: HeaderMap, body: Body) -> Response {
    let answer = async {
        let (principal, encoding, bytes) = api.admit(&headers, body).await?;
        let request = AgentHeartbeatRequest::decode(&bytes, encoding)
            .map_err(|e| Refusal::from_error(encoding, &Error::Proto(e)))?;
        check_identity(&principal, &request.agent_id, encoding)?;
        let answer = api
            .service
            .heartbeat(&principal.tenant, &request)
            .map_err(|e| Refusal::from_error(encoding, &e))?;
        Ok::<_, Refusal>(encoded(StatusCode::OK, encoding, answer.encode(encoding)))
    };
    answer.await.unwrap_or_else(IntoResponse::into_response)
}

impl AgentApi {
    /// Steps 1–3: who calls, in which encoding, and the body within the limit.
    async fn admit(
        &self,
        headers: &HeaderMap,
        body: Body,
    ) -> Result<(Principal, Encoding, Bytes), Refusal> {
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok());
        // Errors before the Content-Type is checked still answer in the caller's encoding.
        let hinted = content_type
            .and_then(|v| Encoding::from_content_type(v).ok())
            .unwrap_or_default();

        let principal = authenticate(headers, self.auth.as_ref(), hinted)?;
        if principal.role != Role::Agent {
            return Err(Refusal::new(
                hinted,
                ErrorCode::Forbidden,
                format!(
                    "the agent API needs an agent token, not a {} one",
                    principal.role
                ),
            ));
        }

        let encoding = match content_type {
            None => {
                return Err(Refusal::new(
                    hinted,
                    ErrorCode::UnsupportedMediaType,
                    "send a Content-Type: application/json or application/x-protobuf",
                ));
            }
            Some(value) => Encoding::from_content_type(value)
                .map_err(|e| Refusal::from_error(hinted, &Error::Proto(e)))?,
        };
        let gzip = is_gzip(headers, encoding)?;
        let limit = self.service.config().max_request_bytes;
        let raw = read_limited(body, limit, encoding).await?;
        let bytes = if gzip {
            gunzip_limited(&raw, limit, encoding)?
        } else {
            raw
        };
        Ok((principal, encoding, bytes))
    }
}

fn authenticate(
    headers: &HeaderMap,
    auth: &dyn Authenticator,
    encoding: Encoding,
) -> Result<Principal, Refusal> {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(bearer_token)
        .ok_or_else(|| {
            Refusal::new(
                encoding,
                ErrorCode::Unauthorized,
                "send Authorization: Bearer <agent token>",
            )
        })?;
    auth.authenticate(token)
        .ok_or_else(|| Refusal::new(encoding, ErrorCode::Forbidden, "the token is not valid"))
}

fn check_identity(
    principal: &Principal,
    agent_id: &str,
    encoding: Encoding,
) -> Result<(), Refusal> {
    if may_act_as(principal, agent_id) {
        Ok(())
    } else {
        Err(Refusal::new(
            encoding,
            ErrorCode::Forbidden,
            format!(
                "the token belongs to agent `{}` and may not act as agent `{agent_id}`",
                principal.subject
            ),
        ))
    }
}

fn is_gzip(headers: &HeaderMap, encoding: Encoding) -> Result<bool, Refusal> {
    let Some(value) = headers.get(header::CONTENT_ENCODING) else {
        return Ok(false);
    };
    match value.to_str().map(str::trim) {
        Ok(v) if v.eq_ignore_ascii_case("gzip") => Ok(true),
        Ok(v) if v.eq_ignore_ascii_case("identity") || v.is_empty() => Ok(false),
        _ => Err(Refusal::new(
            encoding,
            ErrorCode::UnsupportedMediaType,
            format!(
                "Content-Encoding {value:?} is not supported: send gzip or an uncompressed body"
            ),
        )),
    }
}

fn too_large(limit: usize, encoding: Encoding) -> Refusal {
    Refusal::new(
        encoding,
        ErrorCode::PayloadTooLarge,
        format!("the request body is larger than the limit of {limit} bytes"),
    )
}

async fn read_limited(body: Body, limit: usize, encoding: Encoding) -> Result<Bytes, Refusal> {
    let mut stream = body.into_data_stream();
    let mut collected = Vec::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            Refusal::new(
                encoding,
                ErrorCode::MalformedBody,
                format!("the request body could not be read: {e}"),
            )
        })?;
        if collected.len() + chunk.len() > limit {
            return Err(too_large(limit, encoding));
        }
        collected.extend_from_slice(&chunk);
    }
    Ok(Bytes::from(collected))
}

fn gunzip_limited(raw: &[u8], limit: usize, encoding: Encoding) -> Result<Bytes, Refusal> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(raw)
        .take(limit as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| {
            Refusal::new(
                encoding,
                ErrorCode::MalformedBody,
                format!("the gzip body does not decompress: {e}"),
            )
        })?;
    if out.len() > limit {
        return Err(too_large(limit, encoding));
    }
    Ok(Bytes::from(out))
}
