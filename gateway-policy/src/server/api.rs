//! The operator HTTP API (axum): publish, history, diff, rollback, assignments, gateway groups
//! and rollout status. Admin tokens only; every error is an [`ErrorBody`] with a stable code.
//! Routes, bodies and answers: `API.md` in this crate.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, PathRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post, put};
use axum::{Json, Router};
use gateway_proto::auth::{Authenticator, Principal, Role, bearer_token};
use gateway_proto::{ErrorBody, ErrorCode};
use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::driver::{AssignTarget, PolicyService, VersionOutcome};
use super::{PolicyStore, StagedRollout};
use crate::Error;

/// An error answer: the HTTP status of its code and an [`ErrorBody`].
#[derive(Debug)]
struct ApiError(ErrorBody);

impl ApiError {
    fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        ApiError(ErrorBody::new(code, message))
    }
}

impl From<Error> for ApiError {
    fn from(e: Error) -> Self {
        let code = e.code();
        if code == ErrorCode::Internal {
            tracing::error!(error = %e, "policy API request failed");
        }
        ApiError::new(code, e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status =
            StatusCode::from_u16(self.0.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (status, Json(self.0)).into_response()
    }
}

type ApiResult = Result<Response, ApiError>;

struct Api<S: PolicyStore + 'static> {
    service: PolicyService<S>,
    auth: Arc<dyn Authenticator>,
}

impl<S: PolicyStore + 'static> Clone for Api<S> {
    fn clone(&self) -> Self {
        Api {
            service: self.service.clone(),
            auth: self.auth.clone(),
        }
    }
}

impl<S: PolicyStore + 'static> Api<S> {
    /// 401 without a bearer token, 403 for a token the authenticator refuses or a non-admin one.
    fn admin(&self, headers: &HeaderMap) -> Result<Principal, ApiError> {
        let token = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(bearer_token)
            .ok_or_else(|| {
                ApiError::new(
                    ErrorCode::Unauthorized,
                    "send Authorization: Bearer <admin token>",
                )
            })?;
        let principal = self
            .auth
            .authenticate(token)
            .ok_or_else(|| ApiError::new(ErrorCode::Forbidden, "the token is not valid"))?;
        if principal.role != Role::Admin {
            return Err(ApiError::new(
                ErrorCode::Forbidden,
                format!(
                    "the policy API needs an admin token, not a {} one",
                    principal.role
                ),
            ));
        }
        Ok(principal)
    }
}

impl<S: PolicyStore + 'static> PolicyService<S> {
    /// The operator routes, for admin tokens of `auth` (401 without a token, 403 for an invalid
    /// or non-admin one). Merge them into the server's router:
    ///
    /// | method | path |
    /// |---|---|
    /// | `GET` | `/v1/policies` |
    /// | `GET`, `POST` | `/v1/policies/{name}` |
    /// | `GET` | `/v1/policies/{name}/versions`, `/v1/policies/{name}/versions/{version}` |
    /// | `GET` | `/v1/policies/{name}/diff?from=&to=` |
    /// | `POST` | `/v1/policies/{name}/rollback` |
    /// | `GET`, `POST` | `/v1/policies/{name}/assignments` |
    /// | `DELETE` | `/v1/policies/{name}/assignments/{kind}/{id}` |
    /// | `GET` | `/v1/policies/{name}/rollout` |
    /// | `GET` | `/v1/rollouts/{id}` |
    /// | `POST` | `/v1/rollouts/{id}/abort` |
    /// | `GET` | `/v1/gateways/{id}/policies` |
    /// | `PUT` | `/v1/gateways/{id}/groups` |
    ///
    /// Bodies, answers and error codes are documented in the crate's `API.md`.
    pub fn operator_router(&self, auth: Arc<dyn Authenticator>) -> Router {
        let api = Api {
            service: self.clone(),
            auth,
        };
        Router::new()
            .route("/v1/policies", get(list::<S>))
            .route("/v1/policies/{name}", post(publish::<S>).get(latest::<S>))
            .route("/v1/policies/{name}/versions", get(versions::<S>))
            .route("/v1/policies/{name}/versions/{version}", get(version::<S>))
            .route("/v1/policies/{name}/diff", get(diff::<S>))
            .route("/v1/policies/{name}/rollback", post(rollback::<S>))
            .route(
                "/v1/policies/{name}/assignments",
                post(assign::<S>).get(assignments::<S>),
            )
            .route(
                "/v1/policies/{name}/assignments/{kind}/{id}",
                delete(unassign::<S>),
            )
            .route("/v1/policies/{name}/rollout", get(policy_rollout::<S>))
            .route("/v1/rollouts/{id}", get(rollout::<S>))
            .route("/v1/rollouts/{id}/abort", post(abort::<S>))
            .route("/v1/gateways/{id}/policies", get(gateway_policies::<S>))
            .route("/v1/gateways/{id}/groups", put(set_groups::<S>))
            .with_state(api)
    }
}

// --- Request parsing -----------------------------------------------------------------------

fn path<T>(extracted: Result<Path<T>, PathRejection>) -> Result<T, ApiError> {
    extracted
        .map(|Path(p)| p)
        .map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("bad path: {e}")))
}

fn number(text: &str, what: &str) -> Result<u64, ApiError> {
    text.parse().map_err(|_| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("{what} must be a positive integer, got {text:?}"),
        )
    })
}

/// A JSON body: `malformed_body` when it is not JSON, `invalid_request` when it is JSON of the
/// wrong shape, `payload_too_large` past the router's body limit. An empty body reads as `{}`.
fn json_body<T: DeserializeOwned>(body: Result<Bytes, BytesRejection>) -> Result<T, ApiError> {
    let bytes = body.map_err(|e| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::new(ErrorCode::PayloadTooLarge, e.body_text())
        } else {
            ApiError::new(ErrorCode::MalformedBody, e.body_text())
        }
    })?;
    let value: Value = if bytes.iter().all(u8::is_ascii_whitespace) {
        Value::Object(Default::default())
    } else {
        serde_json::from_slice(&bytes).map_err(|e| {
            ApiError::new(
                ErrorCode::MalformedBody,
                format!("the body is not JSON: {e}"),
            )
        })?
    };
    serde_json::from_value(value).map_err(|e| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            format!("the body does not fit: {e}"),
        )
    })
}

fn ok<T: serde::Serialize>(status: StatusCode, body: T) -> ApiResult {
    Ok((status, Json(body)).into_response())
}

fn created_or_ok(created: bool) -> StatusCode {
    if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PublishBody {
    document: Option<Value>,
    #[serde(default)]
    message: String,
    #[serde(default)]
    staging: Option<StagedRollout>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RollbackBody {
    to_version: u64,
    #[serde(default)]
    message: String,
    #[serde(default)]
    staging: Option<StagedRollout>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AssignBody {
    target: AssignTarget,
    #[serde(default)]
    version: Option<u64>,
    #[serde(default)]
    staging: Option<StagedRollout>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AbortBody {
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct GroupsBody {
    groups: Vec<String>,
}

// --- Handlers ----------------------------------------------------------------------------

async fn list<S: PolicyStore + 'static>(
    State(api): State<Api<S>>,
    headers: HeaderMap,
) -> ApiResult {
    let p = api.admin(&headers)?;
    let policies = api.service.policies(&p.tenant).await?;
    ok(StatusCode::OK, serde_json::json!({ "policies": policies }))
}

async fn publish<S: PolicyStore + 'static>(
    State(api): State<Api<S>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let p = api.admin(&headers)?;
    let name = path(name)?;
    let body: PublishBody = json_body(body)?;
    let document = body.document.ok_or_else(|| {
        ApiError::new(
            ErrorCode::InvalidRequest,
            "`document` is required: the policy document (any JSON value but null)",
        )
    })?;
    let result = api
        .service
        .publish(&p, &name, document, &body.message, body.staging)
        .await?;
    ok(
        created_or_ok(result.outcome == VersionOutcome::Created),
        result,
    )
}

async fn latest<S: PolicyStore + 'static>(
    State(api): State<Api<S>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult {
    let p = api.admin(&headers)?;
    let name = path(name)?;
    ok(
        StatusCode::OK,
        api.service.policy(&p.tenant, &name, None).await?,
    )
}

async fn versions<S: PolicyStore + 'static>(
    State(api): State<Api<S>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult {
    let p = api.admin(&headers)?;
    let name = path(name)?;
    let versions = api.service.history(&p.tenant, &name).await?;
    ok(
        StatusCode::OK,
        serde_json::json!({ "name": name, "versions": versions }),
    )
}

async fn version<S: PolicyStore + 'static>(
    State(api): State<Api<S>>,
    params: Result<Path<(String, String)>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult {
    let p = api.admin(&headers)?;
    let (name, version) = path(params)?;
    let version = number(&version, "version")?;
    ok(
        StatusCode::OK,
        api.service.policy(&p.tenant, &name, Some(version)).await?,
    )
}

async fn diff<S: PolicyStore + 'static>(
    State(api): State<Api<S>>,
    name: Result<Path<String>, PathRejection>,
    query: Result<Query<HashMap<String, String>>, QueryRejection>,
    headers: HeaderMap,
) -> ApiResult {
    let p = api.admin(&headers)?;
    let name = path(name)?;
    let Query(query) =
        query.map_err(|e| ApiError::new(ErrorCode::InvalidRequest, format!("bad query: {e}")))?;
    let param = |key: &str| -> Result<u64, ApiError> {
        let text = query.get(key).ok_or_else(|| {
            ApiError::new(
                ErrorCode::InvalidRequest,
                format!("the query parameter `{key}` (a version number) is required"),
            )
        })?;
        number(text, key)
    };
    let (from, to) = (param("from")?, param("to")?);
    ok(
        StatusCode::OK,
        api.service.diff(&p.tenant, &name, from, to).await?,
    )
}

async fn rollback<S: PolicyStore + 'static>(
    State(api): State<Api<S>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let p = api.admin(&headers)?;
    let name = path(name)?;
    let body: RollbackBody = json_body(body)?;
    let result = api
        .service
        .rollback(&p, &name, body.to_version, &body.message, body.staging)
        .await?;
    ok(
        created_or_ok(result.outcome == VersionOutcome::Created),
        result,
    )
}

async fn assign<S: PolicyStore + 'static>(
    State(api): State<Api<S>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let p = api.admin(&headers)?;
    let name = path(name)?;
    let body: AssignBody = json_body(body)?;
    let result = api
        .service
        .assign(&p, &name, body.target, body.version, body.staging)
        .await?;
    ok(created_or_ok(result.created), result)
}

async fn assignments<S: PolicyStore + 'static>(
    State(api): State<Api<S>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult {
    let p = api.admin(&headers)?;
    let name = path(name)?;
    let assignments = api.service.assignments(&p.tenant, &name).await?;
    ok(
        StatusCode::OK,
        serde_json::json!({ "policy": name, "assignments": assignments }),
    )
}

async fn unassign<S: PolicyStore + 'static>(
    State(api): State<Api<S>>,
    params: Result<Path<(String, String, String)>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult {
    let p = api.admin(&headers)?;
    let (name, kind, id) = path(params)?;
    let target = AssignTarget::from_parts(&kind, id)?;
    ok(
        StatusCode::OK,
        api.service.unassign(&p, &name, target).await?,
    )
}

async fn policy_rollout<S: PolicyStore + 'static>(
    State(api): State<Api<S>>,
    name: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult {
    let p = api.admin(&headers)?;
    let name = path(name)?;
    ok(
        StatusCode::OK,
        api.service.rollout_status(&p.tenant, &name).await?,
    )
}

async fn rollout<S: PolicyStore + 'static>(
    State(api): State<Api<S>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult {
    let p = api.admin(&headers)?;
    let id = number(&path(id)?, "rollout id")?;
    ok(StatusCode::OK, api.service.rollout(&p.tenant, id).await?)
}

async fn abort<S: PolicyStore + 'static>(
    State(api): State<Api<S>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let p = api.admin(&headers)?;
    let id = number(&path(id)?, "rollout id")?;
    let body: AbortBody = json_body(body)?;
    ok(
        StatusCode::OK,
        api.service.abort_rollout(&p, id, body.reason).await?,
    )
}

async fn gateway_policies<S: PolicyStore + 'static>(
    State(api): State<Api<S>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
) -> ApiResult {
    let p = api.admin(&headers)?;
    let id = path(id)?;
    ok(
        StatusCode::OK,
        api.service.gateway_policies(&p.tenant, &id).await?,
    )
}

async fn set_groups<S: PolicyStore + 'static>(
    State(api): State<Api<S>>,
    id: Result<Path<String>, PathRejection>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> ApiResult {
    let p = api.admin(&headers)?;
    let id = path(id)?;
    let body: GroupsBody = json_body(body)?;
    ok(
        StatusCode::OK,
        api.service.set_gateway_groups(&p, &id, body.groups).await?,
    )
}
