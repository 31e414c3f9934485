//! The operator HTTP API over a real loopback socket: every route, admin-only auth (401/403),
//! error bodies and codes, answers, tenant isolation and the audit records, with real
//! `PolicyApplier`s applying what the service sends.

mod support;

use std::sync::Arc;

use gateway_policy::{AuditEvent, PolicyEvent, apply_patch};
use gateway_proto::auth::{Principal, Role, StaticTokens};
use gateway_proto::clock::ManualClock;
use reqwest::Method;
use serde_json::{Value, json};
use support::Fleet;

const ACME: &str = "acme-admin-token";
const GLOBEX: &str = "globex-admin-token";
const GATEWAY: &str = "gw-1-token";

struct Api {
    fleet: Fleet,
    base: String,
    client: reqwest::Client,
    server: tokio::task::JoinHandle<()>,
}

impl Drop for Api {
    fn drop(&mut self) {
        self.server.abort();
    }
}

struct Answer {
    status: u16,
    body: Value,
}

impl Answer {
    fn code(&self) -> &str {
        self.body["error"]["code"]
            .as_str()
            .unwrap_or("<no error body>")
    }
}

/// The service, with the tokens as both the authenticator and the gateway directory: gateways
/// `gw-1`, `gw-2`, `gw-new` of acme and `gx-1` of globex are provisioned.
async fn start() -> Api {
    let tokens = Arc::new(
        StaticTokens::new()
            .with(ACME, Principal::new("acme", "ann", Role::Admin))
            .with(GLOBEX, Principal::new("globex", "gus", Role::Admin))
            .with(GATEWAY, Principal::new("acme", "gw-1", Role::Gateway))
            .with("gw-2-token", Principal::new("acme", "gw-2", Role::Gateway))
            .with(
                "gw-new-token",
                Principal::new("acme", "gw-new", Role::Gateway),
            )
            .with(
                "gx-1-token",
                Principal::new("globex", "gx-1", Role::Gateway),
            ),
    );
    let fleet = Fleet::start_with_directory(
        Arc::new(ManualClock::new(1_700_000_000_000)),
        tokens.clone(),
    )
    .await;
    let app = fleet.service.operator_router(tokens);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let server = tokio::spawn(async move {
        axum::serve(listener, app).await.unwrap();
    });
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(rustls::RootCertStore::empty())
    .with_no_client_auth();
    let client = reqwest::Client::builder()
        .no_proxy()
        .tls_backend_preconfigured(tls)
        .build()
        .unwrap();
    Api {
        fleet,
        base,
        client,
        server,
    }
}

impl Api {
    async fn send(
        &self,
        method: Method,
        path: impl Into<String>,
        token: Option<&str>,
        body: Option<String>,
    ) -> Answer {
        let path = path.into();
        let mut request = self.client.request(method, format!("{}{path}", self.base));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request
                .header("content-type", "application/json")
                .body(body);
        }
        let response = request.send().await.unwrap();
        let status = response.status().as_u16();
        let text = response.text().await.unwrap();
        let body = if text.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("not JSON ({e}): {text}"))
        };
        Answer { status, body }
    }

    async fn get(&self, path: &str) -> Answer {
        self.send(Method::GET, path, Some(ACME), None).await
    }

    async fn as_admin(
        &self,
        token: &str,
        method: Method,
        path: impl Into<String>,
        body: Option<Value>,
    ) -> Answer {
        self.send(method, path, Some(token), body.map(|b| b.to_string()))
            .await
    }

    async fn post(&self, path: &str, body: Value) -> Answer {
        self.as_admin(ACME, Method::POST, path, Some(body)).await
    }
}

fn error(answer: &Answer, status: u16, code: &str) {
    assert_eq!(
        (answer.status, answer.code()),
        (status, code),
        "body: {}",
        answer.body
    );
    assert!(
        !answer.body["error"]["message"].as_str().unwrap().is_empty(),
        "an error body has a message"
    );
}

const ROUTES: &[(&str, &str)] = &[
    ("GET", "/v1/policies"),
    ("GET", "/v1/policies/fw"),
    ("POST", "/v1/policies/fw"),
    ("GET", "/v1/policies/fw/versions"),
    ("GET", "/v1/policies/fw/versions/1"),
    ("GET", "/v1/policies/fw/diff?from=1&to=1"),
    ("POST", "/v1/policies/fw/rollback"),
    ("GET", "/v1/policies/fw/assignments"),
    ("POST", "/v1/policies/fw/assignments"),
    ("DELETE", "/v1/policies/fw/assignments/tenant/acme"),
    ("GET", "/v1/policies/fw/rollout"),
    ("GET", "/v1/rollouts/1"),
    ("POST", "/v1/rollouts/1/abort"),
    ("GET", "/v1/gateways/gw-1/policies"),
    ("PUT", "/v1/gateways/gw-1/groups"),
];

#[tokio::test]
async fn every_route_needs_an_admin_token() {
    let mut api = start().await;
    let body =
        json!({"document": {"a": 1}, "to_version": 1, "target": {"tenant": "acme"}, "groups": []});
    for &(method, path) in ROUTES {
        let method = Method::from_bytes(method.as_bytes()).unwrap();
        let none = api
            .send(method.clone(), path, None, Some(body.to_string()))
            .await;
        error(&none, 401, "unauthorized");
        let wrong = api
            .send(method.clone(), path, Some("guess"), Some(body.to_string()))
            .await;
        error(&wrong, 403, "forbidden");
        let gateway = api
            .send(method.clone(), path, Some(GATEWAY), Some(body.to_string()))
            .await;
        error(&gateway, 403, "forbidden");
        assert!(
            gateway.body["error"]["message"]
                .as_str()
                .unwrap()
                .contains("admin")
        );
    }
    // Nothing was changed or audited by the refused calls.
    let events = api.fleet.events();
    assert!(events.is_empty(), "{events:?}");
    assert_eq!(api.get("/v1/policies").await.body, json!({"policies": []}));
}

#[tokio::test]
async fn publish_read_diff_and_rollback() {
    let api = start().await;
    let v1 = json!({"mode": "audit", "allow": [80, 443]});
    let v2 = json!({"mode": "enforce", "allow": [443]});

    let a = api
        .post(
            "/v1/policies/fw",
            json!({"document": v1, "message": "first"}),
        )
        .await;
    assert_eq!(a.status, 201);
    assert_eq!(a.body["name"], "fw");
    assert_eq!(a.body["version"], 1);
    assert_eq!(a.body["outcome"], "created");
    assert_eq!(a.body["rollouts"], json!([]));
    let checksum_v1 = a.body["checksum"].as_str().unwrap().to_owned();
    assert_eq!(checksum_v1, gateway_policy::checksum(&v1).unwrap());

    // The same document in another key order: unchanged, version 1, 200.
    let same: Value = serde_json::from_str(r#"{"allow": [80, 443], "mode": "audit"}"#).unwrap();
    let a = api.post("/v1/policies/fw", json!({"document": same})).await;
    assert_eq!(
        (a.status, &a.body["outcome"], &a.body["version"]),
        (200, &json!("unchanged"), &json!(1))
    );

    let a = api
        .post(
            "/v1/policies/fw",
            json!({"document": v2, "message": "enforce"}),
        )
        .await;
    assert_eq!((a.status, &a.body["version"]), (201, &json!(2)));

    let a = api.get("/v1/policies").await;
    assert_eq!(a.status, 200);
    let listed = &a.body["policies"][0];
    assert_eq!(
        (
            &listed["name"],
            &listed["version"],
            &listed["owner"],
            &listed["author"],
            &listed["message"]
        ),
        (
            &json!("fw"),
            &json!(2),
            &json!("acme"),
            &json!("ann"),
            &json!("enforce")
        )
    );
    assert!(listed.get("document").is_none());

    let a = api.get("/v1/policies/fw").await;
    assert_eq!(
        (a.status, &a.body["version"], &a.body["document"]),
        (200, &json!(2), &v2)
    );
    assert_eq!(a.body["author"], "ann");

    let a = api.get("/v1/policies/fw/versions").await;
    assert_eq!(a.status, 200);
    let versions = a.body["versions"].as_array().unwrap();
    assert_eq!(versions.len(), 2);
    assert_eq!(versions[0]["checksum"], json!(checksum_v1));
    assert_eq!(versions[1]["message"], "enforce");
    assert!(versions.iter().all(|v| v.get("document").is_none()));

    let a = api.get("/v1/policies/fw/versions/1").await;
    assert_eq!((a.status, &a.body["document"]), (200, &v1));
    error(
        &api.get("/v1/policies/fw/versions/9").await,
        404,
        "not_found",
    );
    error(
        &api.get("/v1/policies/fw/versions/latest").await,
        400,
        "invalid_request",
    );
    error(&api.get("/v1/policies/nope").await, 404, "not_found");
    error(
        &api.get("/v1/policies/nope/versions").await,
        404,
        "not_found",
    );

    let a = api.get("/v1/policies/fw/diff?from=1&to=2").await;
    assert_eq!(
        (a.status, &a.body["from"], &a.body["to"]),
        (200, &json!(1), &json!(2))
    );
    assert!(
        a.body["patch"]
            .as_array()
            .is_some_and(|ops| !ops.is_empty())
    );
    assert_eq!(apply_patch(&v1, &a.body["patch"]).unwrap(), v2);
    let back = api.get("/v1/policies/fw/diff?from=2&to=1").await;
    assert_eq!(apply_patch(&v2, &back.body["patch"]).unwrap(), v1);
    error(
        &api.get("/v1/policies/fw/diff?from=1").await,
        400,
        "invalid_request",
    );
    error(
        &api.get("/v1/policies/fw/diff?from=1&to=two").await,
        400,
        "invalid_request",
    );
    error(
        &api.get("/v1/policies/fw/diff?from=1&to=7").await,
        404,
        "not_found",
    );

    let a = api
        .post(
            "/v1/policies/fw/rollback",
            json!({"to_version": 1, "message": "undo"}),
        )
        .await;
    assert_eq!(
        (a.status, &a.body["version"], &a.body["outcome"]),
        (201, &json!(3), &json!("created"))
    );
    assert_eq!(a.body["checksum"], json!(checksum_v1));
    let latest = api.get("/v1/policies/fw").await;
    assert_eq!(
        (&latest.body["document"], &latest.body["message"]),
        (&v1, &json!("undo"))
    );
    let a = api
        .post("/v1/policies/fw/rollback", json!({"to_version": 1}))
        .await;
    assert_eq!(
        (a.status, &a.body["outcome"], &a.body["version"]),
        (200, &json!("unchanged"), &json!(3))
    );
    error(
        &api.post("/v1/policies/fw/rollback", json!({"to_version": 99}))
            .await,
        404,
        "not_found",
    );
    error(
        &api.post("/v1/policies/fw/rollback", json!({})).await,
        400,
        "invalid_request",
    );
    error(
        &api.post("/v1/policies/nope/rollback", json!({"to_version": 1}))
            .await,
        404,
        "not_found",
    );
}

#[tokio::test]
async fn bad_requests_get_the_documented_errors() {
    let api = start().await;
    let raw = |body: &str| {
        api.send(
            Method::POST,
            "/v1/policies/fw",
            Some(ACME),
            Some(body.to_owned()),
        )
    };
    error(&raw("{not json").await, 400, "malformed_body");
    error(
        &raw(r#"{"message": "no document"}"#).await,
        400,
        "invalid_request",
    );
    error(&raw(r#"{"document": null}"#).await, 400, "invalid_request");
    error(
        &raw(r#"{"document": {}, "colour": "red"}"#).await,
        400,
        "invalid_request",
    );
    error(&raw(r#"[1, 2]"#).await, 400, "invalid_request");
    let a = raw(r#"{"document": {}, "staging": {"max_per_minute": 0}}"#).await;
    error(&a, 400, "invalid_request");
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("max_per_minute")
    );
    let a = api.post("/v1/policies/-bad", json!({"document": {}})).await;
    error(&a, 400, "invalid_request");
    assert!(
        a.body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("letter or a digit")
    );
    // Past the router's body limit (axum's default, 2 MB).
    let huge = json!({"document": {"blob": "x".repeat(3 * 1024 * 1024)}});
    error(
        &api.post("/v1/policies/fw", huge).await,
        413,
        "payload_too_large",
    );
    error(&api.get("/v1/rollouts/abc").await, 400, "invalid_request");
    error(&api.get("/v1/rollouts/999").await, 404, "not_found");
    error(
        &api.as_admin(ACME, Method::POST, "/v1/rollouts/999/abort", None)
            .await,
        404,
        "not_found",
    );
    // Nothing was published by any of them.
    assert_eq!(api.get("/v1/policies").await.body, json!({"policies": []}));
}

#[tokio::test]
async fn assignments_groups_and_rollout_status() {
    let mut api = start().await;
    api.fleet.add_gateways(&["gw-1", "gw-2", "gx-1"]);
    api.fleet.connect("gw-1", "acme").await;
    api.fleet.connect("gw-2", "acme").await;
    api.fleet.connect("gx-1", "globex").await;
    api.post("/v1/policies/fw", json!({"document": {"v": 1}}))
        .await;

    // Groups.
    let put = |token, id: &str, body: Value| {
        api.as_admin(
            token,
            Method::PUT,
            format!("/v1/gateways/{id}/groups"),
            Some(body),
        )
    };
    let a = put(ACME, "gw-1", json!({"groups": ["eu", "lab", "eu"]})).await;
    assert_eq!(a.status, 200);
    assert_eq!(
        a.body,
        json!({"gateway_id": "gw-1", "tenant": "acme", "groups": ["eu", "lab"], "connected": true})
    );
    let a = put(ACME, "gw-new", json!({"groups": []})).await;
    assert_eq!(
        a.body,
        json!({"gateway_id": "gw-new", "tenant": "acme", "groups": [], "connected": false})
    );
    error(
        &put(ACME, "gw-1", json!({"groups": ["a/b"]})).await,
        400,
        "invalid_request",
    );
    error(&put(ACME, "gw-1", json!({})).await, 400, "invalid_request");
    error(
        &put(GLOBEX, "gw-1", json!({"groups": ["x"]})).await,
        404,
        "not_found",
    );

    // Assignments.
    let a = api
        .post(
            "/v1/policies/fw/assignments",
            json!({"target": {"group": "eu"}}),
        )
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
    assert_eq!(a.body["created"], true);
    assert_eq!(a.body["assignment"]["target"], json!({"group": "eu"}));
    assert_eq!(a.body["assignment"]["author"], "ann");
    assert_eq!(a.body["assignment"]["version"], Value::Null);
    assert_eq!(
        (
            &a.body["rollouts"][0]["total"],
            &a.body["rollouts"][0]["delivered"]
        ),
        (&json!(1), &json!(1))
    );
    assert_eq!(api.fleet.pump().await, 1);
    assert_eq!(api.fleet.running_version("gw-1", "fw"), Some(1));

    let a = api
        .post(
            "/v1/policies/fw/assignments",
            json!({"target": {"tenant": "acme"}, "version": 1}),
        )
        .await;
    assert_eq!((a.status, &a.body["created"]), (201, &json!(true)));
    assert_eq!(
        a.body["rollouts"][0]["total"], 2,
        "gw-2 and gw-new; gw-1 follows its group"
    );
    assert_eq!(api.fleet.pump().await, 1, "gw-new is not connected");
    let a = api
        .post(
            "/v1/policies/fw/assignments",
            json!({"target": {"tenant": "acme"}, "version": 1}),
        )
        .await;
    assert_eq!((a.status, &a.body["created"]), (200, &json!(false)));
    let assign = |body: Value| api.post("/v1/policies/fw/assignments", body);
    error(
        &assign(json!({"target": {"tenant": "globex"}})).await,
        403,
        "forbidden",
    );
    error(
        &assign(json!({"target": {"gateway": "gx-1"}})).await,
        404,
        "not_found",
    );
    error(
        &assign(json!({"target": {"gateway": "nowhere"}})).await,
        404,
        "not_found",
    );
    error(
        &assign(json!({"target": {"planet": "x"}})).await,
        400,
        "invalid_request",
    );
    error(
        &assign(json!({"target": {"tenant": "acme"}, "version": 9})).await,
        404,
        "not_found",
    );
    error(&assign(json!({"version": 1})).await, 400, "invalid_request");
    error(
        &api.post(
            "/v1/policies/nope/assignments",
            json!({"target": {"tenant": "acme"}}),
        )
        .await,
        404,
        "not_found",
    );

    let a = api.get("/v1/policies/fw/assignments").await;
    assert_eq!(a.status, 200);
    let targets: Vec<&Value> = a.body["assignments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| &x["target"])
        .collect();
    assert_eq!(
        targets,
        vec![&json!({"group": "eu"}), &json!({"tenant": "acme"})]
    );
    assert_eq!(a.body["assignments"][1]["version"], 1);

    // Rollout status: two applied, gw-new pending until it connects.
    let a = api.get("/v1/policies/fw/rollout").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["latest_version"], 1);
    assert_eq!(
        a.body["counts"],
        json!({"total": 3, "pending": 1, "delivered": 0, "applied": 2, "rejected": 0})
    );
    let gateways = a.body["gateways"].as_array().unwrap();
    let ids: Vec<&str> = gateways
        .iter()
        .map(|g| g["gateway_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec!["gw-1", "gw-2", "gw-new"]);
    assert_eq!(gateways[0]["state"], "applied");
    assert_eq!(gateways[0]["reported_version"], 1);
    assert!(gateways[0]["last_attempt_ms"].is_i64() && gateways[0]["last_success_ms"].is_i64());
    assert_eq!(
        (&gateways[2]["state"], &gateways[2]["connected"]),
        (&json!("pending"), &json!(false))
    );
    let rollouts = a.body["rollouts"].as_array().unwrap();
    assert_eq!(rollouts.len(), 2, "one per assignment");
    let newest = rollouts[0]["id"].as_u64().unwrap();
    assert_eq!(
        (&rollouts[0]["state"], &rollouts[0]["pending"]),
        (&json!("in_progress"), &json!(1))
    );

    let a = api.get(&format!("/v1/rollouts/{newest}")).await;
    assert_eq!(
        (a.status, &a.body["policy"], &a.body["applied"]),
        (200, &json!("fw"), &json!(1))
    );

    let a = api.get("/v1/gateways/gw-1/policies").await;
    assert_eq!(a.status, 200);
    assert_eq!(
        (&a.body["gateway_id"], &a.body["groups"]),
        (&json!("gw-1"), &json!(["eu", "lab"]))
    );
    assert_eq!(a.body["policies"][0]["policy"], "fw");
    assert_eq!(a.body["policies"][0]["desired_version"], 1);
    assert_eq!(a.body["policies"][0]["state"], "applied");
    error(
        &api.get("/v1/gateways/gx-1/policies").await,
        404,
        "not_found",
    );
    error(
        &api.get("/v1/gateways/nowhere/policies").await,
        404,
        "not_found",
    );

    // Removing assignments.
    let delete = |path: &str| api.as_admin(ACME, Method::DELETE, path.to_owned(), None);
    let a = delete("/v1/policies/fw/assignments/group/eu").await;
    assert_eq!(a.status, 200);
    assert_eq!(a.body["removed"]["target"], json!({"group": "eu"}));
    error(
        &delete("/v1/policies/fw/assignments/group/eu").await,
        404,
        "not_found",
    );
    error(
        &delete("/v1/policies/fw/assignments/planet/x").await,
        400,
        "invalid_request",
    );
    error(
        &delete("/v1/policies/fw/assignments/tenant/globex").await,
        403,
        "forbidden",
    );
    let a = delete("/v1/policies/fw/assignments/tenant/acme").await;
    assert_eq!(a.status, 200);
    let a = api.get("/v1/policies/fw/assignments").await;
    assert_eq!(a.body["assignments"], json!([]));
}

#[tokio::test]
async fn aborting_a_staged_rollout() {
    let mut api = start().await;
    let ids = ["gw-1", "gw-2", "gw-3", "gw-4"];
    api.fleet.add_gateways(&ids);
    for id in ids {
        api.fleet.connect(id, "acme").await;
    }
    api.post("/v1/policies/fw", json!({"document": {"v": 1}}))
        .await;
    let a = api
        .post(
            "/v1/policies/fw/assignments",
            json!({"target": {"tenant": "acme"}}),
        )
        .await;
    let first = a.body["rollouts"][0]["id"].as_u64().unwrap();
    api.fleet.pump().await;

    let a = api
        .post(
            "/v1/policies/fw",
            json!({"document": {"v": 2}, "staging": {"max_per_minute": 1}, "message": "slowly"}),
        )
        .await;
    assert_eq!(a.status, 201);
    let rollout = &a.body["rollouts"][0];
    assert_eq!(
        (&rollout["total"], &rollout["released"]),
        (&json!(4), &json!(1))
    );
    let id = rollout["id"].as_u64().unwrap();
    assert_eq!(api.fleet.pump().await, 1);

    let abort = |token, id: u64, body: Option<Value>| {
        api.as_admin(
            token,
            Method::POST,
            format!("/v1/rollouts/{id}/abort"),
            body,
        )
    };
    let a = abort(ACME, id, Some(json!({"reason": "bad change"}))).await;
    assert_eq!(a.status, 200, "{}", a.body);
    assert_eq!(
        (&a.body["state"], &a.body["abort_reason"]),
        (&json!("aborted"), &json!("bad change"))
    );
    assert_eq!(
        (&a.body["applied"], &a.body["pending"]),
        (&json!(1), &json!(3))
    );
    // Aborting again is harmless and keeps the first reason; a completed one is a conflict.
    let a = abort(ACME, id, None).await;
    assert_eq!(
        (a.status, &a.body["abort_reason"]),
        (200, &json!("bad change"))
    );
    error(&abort(ACME, first, None).await, 409, "conflict");
    error(&abort(GLOBEX, id, None).await, 404, "not_found");
    error(
        &abort(ACME, id, Some(json!({"reason": 5}))).await,
        400,
        "invalid_request",
    );
    assert_eq!(api.fleet.pump().await, 0, "nothing more is released");
    let status = api.get("/v1/policies/fw/rollout").await;
    assert_eq!(status.body["rollouts"][0]["state"], "aborted");
}

#[tokio::test]
async fn tenants_are_isolated_over_http() {
    let api = start().await;
    api.post("/v1/policies/fw", json!({"document": {"v": 1}}))
        .await;
    let globex = |method: Method, path: &str, body: Option<Value>| {
        api.as_admin(GLOBEX, method, path.to_owned(), body)
    };
    assert_eq!(
        globex(Method::GET, "/v1/policies", None).await.body,
        json!({"policies": []})
    );
    for path in [
        "/v1/policies/fw",
        "/v1/policies/fw/versions",
        "/v1/policies/fw/versions/1",
        "/v1/policies/fw/diff?from=1&to=1",
        "/v1/policies/fw/assignments",
        "/v1/policies/fw/rollout",
    ] {
        error(&globex(Method::GET, path, None).await, 404, "not_found");
    }
    let a = globex(
        Method::POST,
        "/v1/policies/fw",
        Some(json!({"document": {"v": 666}})),
    )
    .await;
    error(&a, 409, "conflict");
    error(
        &globex(
            Method::POST,
            "/v1/policies/fw/rollback",
            Some(json!({"to_version": 1})),
        )
        .await,
        409,
        "conflict",
    );
    error(
        &globex(
            Method::POST,
            "/v1/policies/fw/assignments",
            Some(json!({"target": {"tenant": "globex"}})),
        )
        .await,
        409,
        "conflict",
    );
    let a = globex(
        Method::POST,
        "/v1/policies/dns",
        Some(json!({"document": {"servers": []}})),
    )
    .await;
    assert_eq!(a.status, 201);
    let listed = api.get("/v1/policies").await.body;
    let names: Vec<&str> = listed["policies"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, vec!["fw"]);
    assert_eq!(
        api.get("/v1/policies/fw").await.body["document"],
        json!({"v": 1})
    );
}

#[tokio::test]
async fn operator_actions_are_audited() {
    let mut api = start().await;
    api.post(
        "/v1/policies/fw",
        json!({"document": {"v": 1}, "message": "first"}),
    )
    .await;
    api.as_admin(
        GLOBEX,
        Method::POST,
        "/v1/policies/fw",
        Some(json!({"document": {}})),
    )
    .await;
    api.post("/v1/policies/fw/rollback", json!({"to_version": 1}))
        .await;
    api.post(
        "/v1/policies/fw/assignments",
        json!({"target": {"group": "eu"}}),
    )
    .await;
    api.as_admin(
        ACME,
        Method::DELETE,
        "/v1/policies/fw/assignments/group/eu",
        None,
    )
    .await;
    // A malformed request never reaches the service, so it is not an action.
    api.send(
        Method::POST,
        "/v1/policies/fw",
        Some(ACME),
        Some("{".into()),
    )
    .await;

    let audits: Vec<AuditEvent> = api
        .fleet
        .events()
        .into_iter()
        .filter(|e| e.kind == PolicyEvent::AUDIT)
        .map(|e| {
            assert_eq!(e.tenant, e.data["tenant"]);
            serde_json::from_value(e.data).unwrap()
        })
        .collect();
    let summary: Vec<(&str, &str, &str, &str)> = audits
        .iter()
        .map(|a| {
            (
                a.actor.as_str(),
                a.tenant.as_str(),
                a.action.as_str(),
                a.result.as_str(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            ("ann", "acme", "policy.publish", "ok"),
            ("gus", "globex", "policy.publish", "conflict"),
            ("ann", "acme", "policy.rollback", "ok"),
            ("ann", "acme", "policy.assign", "ok"),
            ("ann", "acme", "policy.unassign", "ok"),
        ]
    );
    assert_eq!(audits[0].target, json!({"policy": "fw"}));
    assert_eq!(audits[0].detail["version"], 1);
    assert_eq!(audits[0].detail["outcome"], "created");
    assert!(
        audits[1].detail["message"]
            .as_str()
            .unwrap()
            .contains("another tenant")
    );
    assert_eq!(
        audits[2].detail["outcome"], "unchanged",
        "v1 is already the latest document"
    );
    assert_eq!(
        audits[3].target,
        json!({"policy": "fw", "assignment": {"group": "eu"}})
    );
}

/// The review's reproduction over HTTP: acme names globex's provisioned gateway `gx-1` before
/// and after it connects (groups, a gateway assignment, a read) and keeps publishing; every
/// request is `404 not_found` and `gx-1` receives nothing.
#[tokio::test]
async fn another_tenants_gateway_cannot_be_named_over_http() {
    let mut api = start().await;
    api.fleet.add_gateways(&["gx-1"]);
    api.post("/v1/policies/acme-evil", json!({"document": {"v": 1}}))
        .await;
    let name_gx1 = async |api: &Api| {
        let put = api
            .as_admin(
                ACME,
                Method::PUT,
                "/v1/gateways/gx-1/groups",
                Some(json!({"groups": ["evil"]})),
            )
            .await;
        error(&put, 404, "not_found");
        let assign = api
            .post(
                "/v1/policies/acme-evil/assignments",
                json!({"target": {"gateway": "gx-1"}}),
            )
            .await;
        error(&assign, 404, "not_found");
        error(
            &api.get("/v1/gateways/gx-1/policies").await,
            404,
            "not_found",
        );
    };
    name_gx1(&api).await;
    api.fleet.connect("gx-1", "globex").await;
    name_gx1(&api).await;
    api.post("/v1/policies/acme-evil", json!({"document": {"v": 2}}))
        .await;
    assert!(api.fleet.take_sent().is_empty());
    assert_eq!(api.fleet.running_version("gx-1", "acme-evil"), None);
    let own = api
        .as_admin(GLOBEX, Method::GET, "/v1/gateways/gx-1/policies", None)
        .await;
    assert_eq!(own.status, 200, "{}", own.body);
    assert_eq!(own.body["policies"], json!([]));
}

/// With the default limit (1 MiB frames): a document whose `policy_update` frame would not fit
/// is refused with `413 payload_too_large` although the HTTP body limit (2 MB) lets it in.
#[tokio::test]
async fn a_document_too_large_for_a_frame_is_413() {
    let api = start().await;
    let document = json!({"pad": "x".repeat(1024 * 1024)});
    let a = api
        .post("/v1/policies/big", json!({"document": document}))
        .await;
    error(&a, 413, "payload_too_large");
    let message = a.body["error"]["message"].as_str().unwrap();
    assert!(message.contains("1048576"), "{message}");
    error(&api.get("/v1/policies/big").await, 404, "not_found");
    let fits = json!({"pad": "x".repeat(1000 * 1024)});
    let a = api
        .post("/v1/policies/big", json!({"document": fits}))
        .await;
    assert_eq!(a.status, 201, "{}", a.body);
}
