//! The HTTP side of the ISAPI adapter: reqwest with a ring-backed rustls configuration, Digest
//! authentication, and the rules that keep a wrong password from locking the device.
//!
//! ## Authentication rules
//! 1. The first request goes out without credentials (or with the cached digest session); a 401
//!    with a `Digest` challenge starts a session and the request is sent again, once.
//! 2. A 401 with `stale=true` means the nonce expired but the credentials were right: take the
//!    new nonce and send again (at most twice per request).
//! 3. A 401 that answers credentials and is not stale means the credentials are wrong. The
//!    request fails with [`Error::Auth`], and the client sends **nothing** to the device until
//!    `auth_failure_backoff_ms` has passed (or the device's own `unlockTime`, if longer):
//!    devices lock accounts after a few wrong logins, and a gateway retrying in a loop would
//!    keep them locked. One exception: after credentials already worked, a 401 carrying a
//!    different nonce (the device rebooted and forgot ours) is answered once with the new one.
//! 4. A Basic-only challenge is answered only when `allow_basic_auth` is set.

use std::sync::Mutex;
use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use http::Method;
use tokio::time::Instant;
use tracing::{debug, warn};

use super::config::HikvisionConfig;
use super::isapi::parse_user_check;
use crate::digest::{DigestChallenge, DigestSession, new_cnonce, parse_challenges};
use crate::tls::client_config;
use crate::{Error, Lockout};

/// Largest answer body read from a device.
const MAX_BODY_BYTES: usize = 4 * 1024 * 1024;

/// An answer from the device, body read in full.
#[derive(Debug, Clone)]
pub(crate) struct IsapiResponse {
    pub(crate) status: u16,
    pub(crate) body: Bytes,
}

impl IsapiResponse {
    pub(crate) fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub(crate) fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

/// What credentials a request carried.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Sent {
    Nothing,
    Digest { nonce: String },
    Basic,
}

#[derive(Debug, Default)]
struct AuthState {
    session: Option<DigestSession>,
    use_basic: bool,
    /// The credentials worked at least once since the last refusal.
    verified: bool,
    blocked_until: Option<Instant>,
    last_refusal: Option<(String, Option<Lockout>)>,
}

/// HTTP client for one device.
pub(crate) struct IsapiClient {
    device_id: String,
    http: reqwest::Client,
    base: String,
    username: String,
    password: String,
    allow_basic: bool,
    auth_backoff: Duration,
    request_timeout: Duration,
    auth: Mutex<AuthState>,
}

impl IsapiClient {
    pub(crate) fn new(device_id: &str, config: &HikvisionConfig) -> Result<Self, Error> {
        let tls = client_config(&config.tls).map_err(|e| match e {
            Error::InvalidConfig { param, reason } => Error::InvalidConfig {
                param: format!("tls.{param}"),
                reason,
            },
            other => other,
        })?;
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .pool_idle_timeout(Duration::from_secs(30))
            .pool_max_idle_per_host(2)
            .http1_only()
            .user_agent(concat!("gateway-devices/", env!("CARGO_PKG_VERSION")));
        if !config.use_system_proxy {
            builder = builder.no_proxy();
        }
        let http = builder.build().map_err(|e| Error::Tls {
            reason: format!("cannot build the HTTP client: {e}"),
        })?;
        Ok(IsapiClient {
            device_id: device_id.to_string(),
            http,
            base: config.base().to_string(),
            username: config.username.clone(),
            password: config.password.clone(),
            allow_basic: config.allow_basic_auth,
            auth_backoff: Duration::from_millis(config.auth_failure_backoff_ms),
            request_timeout: config.request_timeout(),
            auth: Mutex::new(AuthState::default()),
        })
    }

    /// The refusal that blocks requests now, if any.
    pub(crate) fn blocked(&self) -> Option<Error> {
        let state = self.lock();
        let until = state.blocked_until?;
        let now = Instant::now();
        if now >= until {
            return None;
        }
        let (reason, lockout) = state
            .last_refusal
            .clone()
            .unwrap_or_else(|| ("the credentials were refused".to_string(), None));
        Some(Error::Auth {
            reason: format!(
                "{reason}; not contacting the device for another {} s so the account is not locked",
                (until - now).as_secs().max(1)
            ),
            lockout,
        })
    }

    /// Send one request and return the answer, whatever its status (except 401, which is
    /// handled here). `path` includes the query.
    pub(crate) async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Bytes)>,
    ) -> Result<IsapiResponse, Error> {
        if let Some(error) = self.blocked() {
            return Err(error);
        }
        let (mut header, mut sent) = self.authorization(method.as_str(), path);
        let mut fresh = false;
        let mut stale_retries = 0;
        loop {
            let response = self
                .send_once(method.clone(), path, body.clone(), header.as_deref())
                .await?;
            if response.status != 401 {
                if sent != Sent::Nothing {
                    self.lock().verified = true;
                }
                return Ok(response.into_isapi());
            }
            let challenges: Vec<_> = response
                .challenges
                .iter()
                .flat_map(|h| parse_challenges(h))
                .collect();
            let digest = DigestChallenge::first_in(&challenges);
            let offers_basic = challenges.iter().any(|c| c.is("Basic"));
            let verified = self.lock().verified;
            match (&sent, digest) {
                (Sent::Nothing, Some(challenge)) => {
                    debug!(device = %self.device_id, realm = %challenge.realm, "digest challenge received");
                    fresh = true;
                }
                (Sent::Digest { .. }, Some(challenge)) if challenge.stale && stale_retries < 2 => {
                    debug!(device = %self.device_id, "nonce is stale; answering the new challenge");
                    stale_retries += 1;
                }
                (Sent::Digest { .. }, Some(challenge)) if challenge.stale => {
                    // Credentials are right (stale), but fresh nonces keep expiring.
                    return Err(Error::protocol(format!(
                        "the device declared {} fresh nonces stale in a row; check its clock",
                        stale_retries + 1
                    )));
                }
                (Sent::Digest { nonce }, Some(challenge))
                    if !fresh && verified && challenge.nonce != *nonce =>
                {
                    debug!(device = %self.device_id, "the device forgot our nonce; answering its new challenge once");
                    fresh = true;
                }
                (Sent::Nothing, None) if offers_basic && self.allow_basic => {
                    self.lock().use_basic = true;
                    fresh = true;
                }
                (Sent::Nothing, None) if offers_basic => {
                    return Err(Error::Auth {
                        reason: "the device offers only Basic authentication; set \
                                 `allow_basic_auth` to use it (prefer https then)"
                            .to_string(),
                        lockout: None,
                    });
                }
                (Sent::Nothing, None) => {
                    return Err(Error::Auth {
                        reason: "the device answered 401 without a usable Digest challenge"
                            .to_string(),
                        lockout: None,
                    });
                }
                (_, _) => return Err(self.refused(&response)),
            }
            if let Some(challenge) = DigestChallenge::first_in(&challenges) {
                let mut state = self.lock();
                state.session = Some(DigestSession::new(challenge));
                state.use_basic = false;
            }
            (header, sent) = self.authorization(method.as_str(), path);
        }
    }

    /// The device refused our credentials: block further requests and describe why.
    fn refused(&self, response: &RawResponse) -> Error {
        let lockout = parse_user_check(&String::from_utf8_lossy(&response.body))
            .ok()
            .and_then(|check| check.lockout());
        let mut reason = format!(
            "the device refused the credentials of user `{}` (HTTP 401)",
            self.username
        );
        if let Some(lock) = &lockout {
            if lock.locked {
                reason.push_str(&format!(
                    "; the device says the account is locked for {} s",
                    lock.unlock_in_secs.unwrap_or(0)
                ));
            } else if let Some(left) = lock.retries_left {
                reason.push_str(&format!("; {left} tries left before the device locks it"));
            }
        }
        let lock_wait = lockout
            .as_ref()
            .filter(|l| l.locked)
            .and_then(|l| l.unlock_in_secs)
            .map(Duration::from_secs)
            .unwrap_or_default();
        let wait = self.auth_backoff.max(lock_wait);
        {
            let mut state = self.lock();
            state.verified = false;
            state.blocked_until = Some(Instant::now() + wait);
            state.last_refusal = Some((reason.clone(), lockout.clone()));
        }
        metrics::counter!("gateway_devices_auth_failures_total", "device" => self.device_id.clone())
            .increment(1);
        warn!(device = %self.device_id, wait_s = wait.as_secs(), "{reason}");
        Error::Auth { reason, lockout }
    }

    fn authorization(&self, method: &str, path: &str) -> (Option<String>, Sent) {
        let mut state = self.lock();
        if state.use_basic {
            let token = base64::engine::general_purpose::STANDARD
                .encode(format!("{}:{}", self.username, self.password));
            return (Some(format!("Basic {token}")), Sent::Basic);
        }
        match state.session.as_mut() {
            Some(session) => {
                let nonce = session.challenge().nonce.clone();
                let header =
                    session.authorize(method, path, &self.username, &self.password, &new_cnonce());
                (Some(header), Sent::Digest { nonce })
            }
            None => (None, Sent::Nothing),
        }
    }

    async fn send_once(
        &self,
        method: Method,
        path: &str,
        body: Option<(&'static str, Bytes)>,
        authorization: Option<&str>,
    ) -> Result<RawResponse, Error> {
        let url = format!("{}{}", self.base, path);
        let mut request = self
            .http
            .request(method.clone(), &url)
            .timeout(self.request_timeout);
        if let Some(value) = authorization {
            request = request.header(http::header::AUTHORIZATION, value);
        }
        if let Some((content_type, bytes)) = body {
            request = request
                .header(http::header::CONTENT_TYPE, content_type)
                .body(bytes);
        }
        let started = Instant::now();
        let result = self.read(request).await;
        let status_label = match &result {
            Ok(r) => r.status.to_string(),
            Err(Error::Timeout { .. }) => "timeout".to_string(),
            Err(_) => "error".to_string(),
        };
        metrics::counter!("gateway_devices_http_requests_total", "device" => self.device_id.clone(), "status" => status_label).increment(1);
        metrics::histogram!("gateway_devices_http_request_duration_seconds", "device" => self.device_id.clone())
            .record(started.elapsed().as_secs_f64());
        debug!(device = %self.device_id, %method, path, status = ?result.as_ref().map(|r| r.status).ok(), "ISAPI request");
        result
    }

    async fn read(&self, request: reqwest::RequestBuilder) -> Result<RawResponse, Error> {
        let mut response = request.send().await.map_err(|e| self.transport_error(&e))?;
        let status = response.status().as_u16();
        let challenges = response
            .headers()
            .get_all(http::header::WWW_AUTHENTICATE)
            .iter()
            .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| self.transport_error(&e))?
        {
            if body.len() + chunk.len() > MAX_BODY_BYTES {
                return Err(Error::protocol(format!(
                    "the answer is larger than {MAX_BODY_BYTES} bytes"
                )));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(RawResponse {
            status,
            challenges,
            body: Bytes::from(body),
        })
    }

    fn transport_error(&self, error: &reqwest::Error) -> Error {
        if error.is_timeout() {
            return Error::Timeout {
                after: self.request_timeout,
            };
        }
        let mut message = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        Error::Transport { message }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, AuthState> {
        // A poisoned lock only means another request panicked mid-update; the state is
        // still usable.
        self.auth.lock().unwrap_or_else(|e| e.into_inner())
    }
}

struct RawResponse {
    status: u16,
    challenges: Vec<String>,
    body: Bytes,
}

impl RawResponse {
    fn into_isapi(self) -> IsapiResponse {
        IsapiResponse {
            status: self.status,
            body: self.body,
        }
    }
}
