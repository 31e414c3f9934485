//! The simulator's HTTP surface: ISAPI routes behind Digest authentication, with fault
//! injection in front.

use std::sync::Arc;

use axum::Router;
use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use serde_json::{Map, Value, json};

use super::Reply;
use super::server::ConnectionKill;
use super::state::{AuthDecision, RequestRecord, SimState};
use crate::hikvision::isapi::{ISAPI_NAMESPACE, parse_remote_control_door, response_status_xml};
use crate::hikvision::paths;
use crate::hikvision::xml::escape;
use crate::time::parse_datetime;

type Shared = Arc<SimState>;

const XML: &str = "application/xml; charset=\"UTF-8\"";

pub(crate) fn router(state: Shared) -> Router {
    let door_path = format!("{}{{door}}", paths::DOOR_PREFIX);
    Router::new()
        .route(
            paths::DEVICE_INFO,
            get(device_info).fallback(method_not_allowed),
        )
        .route(paths::TIME, get(time).fallback(method_not_allowed))
        .route(paths::REBOOT, put(reboot).fallback(method_not_allowed))
        .route(
            paths::DOOR_CAPABILITIES,
            get(door_capabilities).fallback(method_not_allowed),
        )
        .route(&door_path, put(door).fallback(method_not_allowed))
        .route(
            "/ISAPI/AccessControl/AcsEvent",
            post(acs_event).fallback(method_not_allowed),
        )
        // Authentication only for known paths: unknown ones get 404 first, as on devices.
        .route_layer(middleware::from_fn_with_state(state.clone(), authenticate))
        .fallback(not_found)
        .layer(middleware::from_fn_with_state(state.clone(), front))
        .with_state(state)
}

/// Stats, request log, offline state, latency, dropped connections and raw answers.
async fn front(State(state): State<Shared>, request: Request, next: Next) -> Response {
    state.request_started();
    let mut record = Finish {
        state: state.clone(),
        record: RequestRecord {
            method: request.method().to_string(),
            path: target(&request),
            authorization: request.headers().contains_key(header::AUTHORIZATION),
            status: 0,
        },
    };
    let kill = request.extensions().get::<ConnectionKill>().cloned();
    if state.is_offline() {
        return hang_up(kill).await;
    }
    let latency = state.faults().latency;
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let (drop_it, raw) = {
        let mut faults = state.faults();
        if faults.drop_next > 0 {
            faults.drop_next -= 1;
            (true, None)
        } else {
            (false, faults.raw_next.pop_front())
        }
    };
    if drop_it {
        return hang_up(kill).await;
    }
    let mut response = match raw {
        Some(reply) => reply_response(&reply),
        None => next.run(request).await,
    };
    response
        .headers_mut()
        .insert(header::SERVER, HeaderValue::from_static("webs"));
    record.record.status = response.status().as_u16();
    response
}

/// Close the connection without an answer.
async fn hang_up(kill: Option<ConnectionKill>) -> Response {
    if let Some(kill) = kill {
        kill.0.notify_one();
        std::future::pending::<()>().await;
    }
    // Without a connection handle (not served by our loop) the best we can do is a 503.
    StatusCode::SERVICE_UNAVAILABLE.into_response()
}

/// Logs the request when the response is done, or when the connection was dropped.
struct Finish {
    state: Shared,
    record: RequestRecord,
}

impl Drop for Finish {
    fn drop(&mut self) {
        self.state.request_finished(self.record.clone());
    }
}

fn target(request: &Request) -> String {
    request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str().to_string())
        .unwrap_or_else(|| request.uri().path().to_string())
}

async fn authenticate(State(state): State<Shared>, request: Request, next: Next) -> Response {
    let uri = target(&request);
    let authorization = request
        .headers()
        .get(header::AUTHORIZATION)
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    match state.check_auth(request.method().as_str(), &uri, authorization.as_deref()) {
        AuthDecision::Allowed => {
            let fault = state.faults().fail_next.pop_front();
            match fault {
                Some(reply) => reply_response(&reply),
                None => next.run(request).await,
            }
        }
        AuthDecision::Challenge {
            header: challenge,
            body,
        } => {
            let mut headers = HeaderMap::new();
            headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(XML));
            if let Ok(value) = HeaderValue::from_str(&challenge) {
                headers.insert(header::WWW_AUTHENTICATE, value);
            }
            (StatusCode::UNAUTHORIZED, headers, body).into_response()
        }
        AuthDecision::BadRequest(reason) => xml(
            StatusCode::BAD_REQUEST,
            response_status_xml(&uri, 5, &reason, "badXmlFormat"),
        ),
    }
}

fn reply_response(reply: &Reply) -> Response {
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(&reply.content_type) {
        headers.insert(header::CONTENT_TYPE, value);
    }
    for (name, value) in &reply.headers {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(value),
        ) {
            headers.append(name, value);
        }
    }
    let status = StatusCode::from_u16(reply.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (status, headers, Body::from(reply.body.clone())).into_response()
}

fn xml(status: StatusCode, body: String) -> Response {
    (status, [(header::CONTENT_TYPE, XML)], body).into_response()
}

fn json_response(status: StatusCode, body: Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.to_string(),
    )
        .into_response()
}

async fn not_found() -> Response {
    (
        StatusCode::NOT_FOUND,
        [(header::CONTENT_TYPE, "text/html")],
        "Document Error: Not Found",
    )
        .into_response()
}

async fn method_not_allowed(request: Request) -> Response {
    // Real devices answer a wrong method with statusCode 4 and HTTP 403.
    xml(
        StatusCode::FORBIDDEN,
        response_status_xml(
            &target(&request),
            4,
            "Invalid Operation",
            "methodNotAllowed",
        ),
    )
}

async fn device_info(State(state): State<Shared>) -> Response {
    let c = &state.config;
    if let Some(body) = &c.device_info_xml {
        return xml(StatusCode::OK, body.clone());
    }
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<DeviceInfo version=\"2.0\" xmlns=\"{ISAPI_NAMESPACE}\">\n<deviceName>{}</deviceName>\n<deviceID>255</deviceID>\n<model>{}</model>\n<serialNumber>{}</serialNumber>\n<macAddress>00:00:5e:00:53:01</macAddress>\n<firmwareVersion>{}</firmwareVersion>\n<firmwareReleasedDate>{}</firmwareReleasedDate>\n<deviceType>{}</deviceType>\n<electroLockNum>{}</electroLockNum>\n<manufacturer>hikvision</manufacturer>\n</DeviceInfo>\n",
        escape(&c.device_name),
        escape(&c.model),
        escape(&c.serial_number),
        escape(&c.firmware_version),
        escape(&c.firmware_released_date),
        escape(&c.device_type),
        c.doors,
    );
    xml(StatusCode::OK, body)
}

async fn time(State(state): State<Shared>) -> Response {
    let c = &state.config;
    if let Some(body) = &c.time_xml {
        return xml(StatusCode::OK, body.clone());
    }
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\" ?>\n<Time version=\"2.0\" xmlns=\"{ISAPI_NAMESPACE}\">\n<timeMode>{}</timeMode>\n<localTime>{}</localTime>\n<timeZone>{}</timeZone>\n</Time>\n",
        escape(&c.time_mode),
        state.now_text(),
        escape(&c.time_zone),
    );
    xml(StatusCode::OK, body)
}

async fn reboot(State(state): State<Shared>) -> Response {
    state.reboot();
    xml(
        StatusCode::OK,
        response_status_xml(paths::REBOOT, 1, "OK", "ok"),
    )
}

async fn door_capabilities(State(state): State<Shared>) -> Response {
    let c = &state.config;
    if !c.door_capabilities {
        return not_found().await;
    }
    if let Some(body) = &c.door_capabilities_xml {
        return xml(StatusCode::OK, body.clone());
    }
    let body = format!(
        "<RemoteControlDoor version=\"2.0\" xmlns=\"{ISAPI_NAMESPACE}\">\n  <doorNo min=\"1\" max=\"{}\"></doorNo>\n  <cmd opt=\"{}\"></cmd>\n</RemoteControlDoor>\n",
        c.doors,
        escape(&c.door_commands.join(",")),
    );
    xml(StatusCode::OK, body)
}

async fn door(State(state): State<Shared>, Path(door): Path<String>, body: Bytes) -> Response {
    let uri = format!("{}{door}", paths::DOOR_PREFIX);
    let bad = |code: i64, text: &str, sub: &str| {
        xml(
            StatusCode::BAD_REQUEST,
            response_status_xml(&uri, code, text, sub),
        )
    };
    let Ok(door) = door.parse::<u32>() else {
        return bad(6, "Invalid XML Content", "badParameters");
    };
    let Ok(cmd) = parse_remote_control_door(&String::from_utf8_lossy(&body)) else {
        return bad(5, "Invalid XML Format", "badXmlFormat");
    };
    match state.control_door(door, &cmd) {
        // The success form seen on a DS-K1T673DX-BR: no statusString, no requestURL.
        Ok(()) => xml(
            StatusCode::OK,
            format!(
                "<ResponseStatus version=\"2.0\" xmlns=\"{ISAPI_NAMESPACE}\">\n  <statusCode>1</statusCode>\n  <subStatusCode>ok</subStatusCode>\n</ResponseStatus>\n"
            ),
        ),
        Err(_) => bad(6, "Invalid XML Content", "badParameters"),
    }
}

fn bad_json(field: &str) -> Response {
    json_response(
        StatusCode::BAD_REQUEST,
        json!({
            "statusCode": 6,
            "statusString": "Invalid Content",
            "subStatusCode": "badJsonContent",
            "errorCode": 1_610_612_737u64,
            "errorMsg": field,
        }),
    )
}

async fn acs_event(State(state): State<Shared>, body: Bytes) -> Response {
    let Ok(value) = serde_json::from_slice::<Value>(&body) else {
        return bad_json("AcsEventCond");
    };
    let Some(cond) = value.get("AcsEventCond").and_then(Value::as_object) else {
        return bad_json("AcsEventCond");
    };
    let Some(search_id) = cond.get("searchID").and_then(Value::as_str) else {
        return bad_json("searchID");
    };
    let position = cond
        .get("searchResultPosition")
        .and_then(Value::as_u64)
        .unwrap_or(0);
    let Some(max_results) = cond
        .get("maxResults")
        .and_then(Value::as_u64)
        .filter(|m| *m > 0)
    else {
        return bad_json("maxResults");
    };
    // Times need a UTC offset, as on real devices.
    let mut bounds = [None, None];
    for (slot, field) in bounds.iter_mut().zip(["startTime", "endTime"]) {
        if let Some(v) = cond.get(field) {
            match v.as_str().and_then(parse_datetime) {
                Some(t) if t.utc_offset_secs.is_some() => *slot = Some(t.unix_ms),
                _ => return bad_json(field),
            }
        }
    }
    if cond.contains_key("beginSerialNo") && !cond.contains_key("endSerialNo") {
        return bad_json("endSerialNo");
    }
    let major = cond.get("major").and_then(Value::as_i64).unwrap_or(0);
    let minor = cond.get("minor").and_then(Value::as_i64).unwrap_or(0);
    let reverse = cond
        .get("timeReverseOrder")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let matches = state.search_events(bounds[0], bounds[1], major, minor, reverse);
    let total = matches.len() as u64;
    let page_size = max_results.min(u64::from(state.config.max_page_size.max(1)));
    let page: Vec<Value> = matches
        .into_iter()
        .skip(usize::try_from(position).unwrap_or(usize::MAX))
        .take(usize::try_from(page_size).unwrap_or(usize::MAX))
        .collect();
    let returned = page.len() as u64;
    let status = if total == 0 {
        "NO MATCH"
    } else if position.saturating_add(returned) < total {
        "MORE"
    } else {
        "OK"
    };
    let mut body = Map::new();
    body.insert("searchID".into(), json!(search_id));
    body.insert("totalMatches".into(), json!(total));
    body.insert("responseStatusStrg".into(), json!(status));
    body.insert("numOfMatches".into(), json!(returned));
    if !page.is_empty() {
        body.insert("InfoList".into(), Value::Array(page));
    }
    json_response(StatusCode::OK, json!({ "AcsEvent": body }))
}
