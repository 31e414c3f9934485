//! Feature `http`: an axum router serving the running policies to the gateway's agents.
//!
//! * `GET /v1/policy/{name}` — the document of the running policy `name`.
//! * `GET /v1/policy?name={name}` — the same; without `name`, the one policy the gateway runs
//!   (400 `invalid_request` naming the choices when it runs several).
//!
//! A `200` carries the document as JSON with `ETag: "<checksum>"`, `X-Policy-Name` and
//! `X-Policy-Version`; a request whose `If-None-Match` names the current checksum gets
//! `304 Not Modified` with the same `ETag`; an unknown name gets `404 not_found`. Errors use the
//! workspace's error body `{"error": {"code", "message"}}`. Authentication is the mounting
//! application's business (wrap the router in its auth layer).

use axum::Router;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use gateway_proto::{ErrorBody, ErrorCode};
use serde::Deserialize;

use crate::{PolicyLookup, PolicyReader};

/// Header carrying the policy name in answers.
pub const HEADER_POLICY_NAME: &str = "x-policy-name";
/// Header carrying the policy version in answers.
pub const HEADER_POLICY_VERSION: &str = "x-policy-version";

/// The agent-facing routes, reading through `reader`.
///
/// ```
/// # let (applier, _) = gateway_policy::PolicyApplier::open(
/// #     Default::default(), gateway_policy::MemoryAppliedStore::new(), gateway_policy::AcceptAll).unwrap();
/// let app: axum::Router = gateway_policy::policy_router(applier.reader());
/// ```
pub fn policy_router(reader: PolicyReader) -> Router {
    Router::new()
        .route("/v1/policy", get(by_query))
        .route("/v1/policy/{name}", get(by_path))
        .with_state(reader)
}

#[derive(Debug, Deserialize)]
struct NameQuery {
    name: Option<String>,
}

async fn by_path(
    State(reader): State<PolicyReader>,
    Path(name): Path<String>,
    headers: HeaderMap,
) -> Response {
    answer(&reader, &name, &headers)
}

async fn by_query(
    State(reader): State<PolicyReader>,
    Query(query): Query<NameQuery>,
    headers: HeaderMap,
) -> Response {
    if let Some(name) = query.name {
        return answer(&reader, &name, &headers);
    }
    let all = reader.all();
    match all.as_slice() {
        [] => error(
            ErrorCode::NotFound,
            "this gateway runs no policy yet".into(),
        ),
        [only] => answer(&reader, &only.name, &headers),
        several => {
            let names: Vec<&str> = several.iter().map(|p| p.name.as_str()).collect();
            error(
                ErrorCode::InvalidRequest,
                format!(
                    "this gateway runs several policies; ask for one with ?name= (one of: {})",
                    names.join(", ")
                ),
            )
        }
    }
}

fn answer(reader: &PolicyReader, name: &str, headers: &HeaderMap) -> Response {
    let if_none_match = headers
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok());
    match reader.lookup(name, if_none_match) {
        PolicyLookup::NotFound => error(
            ErrorCode::NotFound,
            format!("no policy named {name:?} runs on this gateway"),
        ),
        PolicyLookup::NotModified { etag } => {
            let mut response = StatusCode::NOT_MODIFIED.into_response();
            insert(&mut response, header::ETAG.as_str(), &etag);
            response
        }
        PolicyLookup::Current { etag, policy } => {
            let mut response = axum::Json(&policy.document).into_response();
            insert(&mut response, header::ETAG.as_str(), &etag);
            insert(&mut response, HEADER_POLICY_NAME, &policy.name);
            insert(
                &mut response,
                HEADER_POLICY_VERSION,
                &policy.version.to_string(),
            );
            response
        }
    }
}

fn insert(response: &mut Response, name: &'static str, value: &str) {
    // Names and checksums are validated ASCII; a value that is not a valid header is left out.
    if let Ok(value) = HeaderValue::from_str(value) {
        response.headers_mut().insert(name, value);
    }
}

fn error(code: ErrorCode, message: String) -> Response {
    let status =
        StatusCode::from_u16(code.http_status()).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, axum::Json(ErrorBody::new(code, message))).into_response()
}
