//! End to end, real processes: a policy published on the `server` and assigned to the tenant
//! rolls out to the `gateway` until the rollout reports it `applied`; the gateway serves it to
//! agents on `GET /v1/policy`, follows a second version (sent as a JSON Patch), keeps serving
//! it after a SIGKILL, and the operator's actions are in the audit log.

mod common;

use std::time::Duration;

use common::{
    ADMIN_TOKEN, AGENT_TOKEN, GATEWAY_ID, Gateway, Http, Server, TENANT, eventually,
    gateway_config, server_config, temp_dir,
};
use serde_json::{Value, json};

const POLICY: &str = "agents";

/// Poll the rollout until the gateway reports `version` applied; the rollout view.
async fn wait_applied(http: &Http, server_url: &str, version: u64) -> Value {
    let url = format!("{server_url}/v1/policies/{POLICY}/rollout");
    eventually(
        &format!("version {version} applied on {GATEWAY_ID}"),
        Duration::from_secs(20),
        || async {
            let rollout = http.admin_get(&url).await;
            let gateway = rollout["gateways"]
                .as_array()?
                .iter()
                .find(|g| g["gateway_id"] == GATEWAY_ID)?
                .clone();
            (gateway["state"] == "applied" && gateway["reported_version"] == version)
                .then_some(rollout)
        },
    )
    .await
}

/// `GET /v1/policy?name=` on the gateway: status, ETag, body.
async fn served(
    http: &Http,
    gateway_url: &str,
    token: Option<&str>,
    etag: Option<&str>,
) -> (u16, Option<String>, Value) {
    let mut request = http
        .client
        .get(format!("{gateway_url}/v1/policy?name={POLICY}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    if let Some(etag) = etag {
        request = request.header(reqwest::header::IF_NONE_MATCH, etag);
    }
    let response = request.send().await.expect("GET /v1/policy");
    let status = response.status().as_u16();
    let etag = response
        .headers()
        .get(reqwest::header::ETAG)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let bytes = response.bytes().await.expect("reading the policy");
    (
        status,
        etag,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_rollout_reaches_applied_and_the_gateway_serves_it() {
    let dir = temp_dir();
    let http = Http::new();
    let server = Server::start(dir.path(), &server_config("")).await;
    let mut gateway = Gateway::start(dir.path(), &server.url, &gateway_config("")).await;
    gateway.wait_connected(&http).await;
    let (status, _, body) = served(&http, &gateway.url, Some(AGENT_TOKEN), None).await;
    assert_eq!(status, 404, "a policy before any was published: {body}");

    // Publish version 1 and assign it to the whole tenant.
    let v1 = json!({"log_level": "info", "upload_interval_s": 10, "collect": ["logs", "metrics"]});
    let policy_url = format!("{}/v1/policies/{POLICY}", server.url);
    let (status, published) = http
        .admin_post(&policy_url, &json!({"document": v1, "message": "e2e v1"}))
        .await;
    assert_eq!(status, 201, "publish: {published}");
    assert_eq!(published["version"], 1);
    let checksum = published["checksum"]
        .as_str()
        .expect("a checksum")
        .to_string();
    let (status, assigned) = http
        .admin_post(
            &format!("{policy_url}/assignments"),
            &json!({"target": {"tenant": TENANT}}),
        )
        .await;
    assert_eq!(status, 201, "assign: {assigned}");

    let rollout = wait_applied(&http, &server.url, 1).await;
    assert_eq!(rollout["counts"]["applied"], 1, "{rollout}");
    assert_eq!(rollout["counts"]["total"], 1, "{rollout}");

    // The gateway serves the document to its agents, with its checksum as the ETag.
    let (status, etag, document) = served(&http, &gateway.url, Some(AGENT_TOKEN), None).await;
    assert_eq!(status, 200, "{document}");
    assert_eq!(document, v1);
    assert_eq!(etag.as_deref(), Some(format!("\"{checksum}\"").as_str()));
    let (status, _, _) = served(&http, &gateway.url, Some(AGENT_TOKEN), etag.as_deref()).await;
    assert_eq!(status, 304, "If-None-Match with the current ETag");
    let (status, _, body) = served(&http, &gateway.url, None, None).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (401, &json!("unauthorized")),
        "{body}"
    );
    let (status, _, body) = served(&http, &gateway.url, Some(ADMIN_TOKEN), None).await;
    assert_eq!(
        (status, &body["error"]["code"]),
        (403, &json!("forbidden")),
        "{body}"
    );

    // Version 2 follows the assignment and replaces what the gateway serves.
    let v2 = json!({"log_level": "debug", "upload_interval_s": 10, "collect": ["logs"]});
    let (status, published) = http
        .admin_post(&policy_url, &json!({"document": v2, "message": "e2e v2"}))
        .await;
    assert_eq!(status, 201, "publish v2: {published}");
    let checksum2 = published["checksum"]
        .as_str()
        .expect("a checksum")
        .to_string();
    wait_applied(&http, &server.url, 2).await;
    let (status, etag, document) = served(&http, &gateway.url, Some(AGENT_TOKEN), None).await;
    assert_eq!((status, &document), (200, &v2));
    assert_eq!(etag.as_deref(), Some(format!("\"{checksum2}\"").as_str()));
    let (status, _, _) = served(
        &http,
        &gateway.url,
        Some(AGENT_TOKEN),
        Some(&format!("\"{checksum}\"")),
    )
    .await;
    assert_eq!(status, 200, "the old ETag no longer matches");

    // The applied policy is on the gateway's disk: after a SIGKILL it is served at once.
    gateway.kill();
    gateway.restart().await;
    let (status, etag, document) = served(&http, &gateway.url, Some(AGENT_TOKEN), None).await;
    assert_eq!((status, &document), (200, &v2), "after a restart");
    assert_eq!(etag.as_deref(), Some(format!("\"{checksum2}\"").as_str()));
    gateway.wait_connected(&http).await;
    let rollout = wait_applied(&http, &server.url, 2).await;
    assert_eq!(rollout["latest_version"], 2, "{rollout}");

    // Who did it is in the audit log.
    let audit = http
        .admin_get(&format!("{}/v1/audit?limit=100", server.url))
        .await;
    let actions: Vec<(String, String)> = audit["entries"]
        .as_array()
        .expect("entries")
        .iter()
        .map(|e| {
            (
                e["entry"]["action"].as_str().unwrap_or("").to_string(),
                e["entry"]["actor"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    let publishes = actions
        .iter()
        .filter(|(action, actor)| action == "policy.publish" && actor == "admin")
        .count();
    let assigns = actions
        .iter()
        .filter(|(action, _)| action == "policy.assign")
        .count();
    assert_eq!((publishes, assigns), (2, 1), "audit log: {actions:?}");
}
