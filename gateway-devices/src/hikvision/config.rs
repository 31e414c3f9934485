//! Settings of one Hikvision ISAPI device (the `settings` object of its registry entry).

use std::fmt;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::Error;
use crate::tls::TlsOptions;

/// Connection, credentials and event options for one device.
///
/// ```json
/// {"base_url": "https://192.0.2.10", "username": "admin", "password": "...",
///  "tls": {"ca_cert_file": "/etc/gateway/door-ca.pem"},
///  "events": {"start": "now", "page_size": 30}}
/// ```
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct HikvisionConfig {
    /// `http://host[:port]` or `https://host[:port]`, without a path.
    pub base_url: String,
    /// Device user name.
    pub username: String,
    /// Device password.
    pub password: String,
    /// Limit for one HTTP request, in ms. Default 8000.
    pub request_timeout_ms: u64,
    /// Limit for connecting, in ms. Default 3000.
    pub connect_timeout_ms: u64,
    /// Certificate checks for `https` devices.
    pub tls: TlsOptions,
    /// Answer a Basic-only challenge (old cameras). Default false: Basic sends the password
    /// readable by anyone on the path unless the device is reached over https.
    pub allow_basic_auth: bool,
    /// After the device refuses the credentials, send it nothing for this long, in ms, so a
    /// wrong password cannot lock the account out. Default 60 000. When the device says it is
    /// locked for longer, the adapter waits for that instead.
    pub auth_failure_backoff_ms: u64,
    /// Use the system's HTTP proxy settings (`HTTP_PROXY`, ...). Default false: devices are on
    /// the local network.
    pub use_system_proxy: bool,
    /// Access-control events.
    pub events: EventOptions,
}

impl Default for HikvisionConfig {
    fn default() -> Self {
        HikvisionConfig {
            base_url: String::new(),
            username: String::new(),
            password: String::new(),
            request_timeout_ms: 8_000,
            connect_timeout_ms: 3_000,
            tls: TlsOptions::default(),
            allow_basic_auth: false,
            auth_failure_backoff_ms: 60_000,
            use_system_proxy: false,
            events: EventOptions::default(),
        }
    }
}

impl fmt::Debug for HikvisionConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HikvisionConfig")
            .field("base_url", &self.base_url)
            .field("username", &self.username)
            .field("password", &"<redacted>")
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("tls", &self.tls)
            .field("allow_basic_auth", &self.allow_basic_auth)
            .field("auth_failure_backoff_ms", &self.auth_failure_backoff_ms)
            .field("use_system_proxy", &self.use_system_proxy)
            .field("events", &self.events)
            .finish()
    }
}

impl HikvisionConfig {
    /// Settings for a device at `base_url` with these credentials; everything else default.
    pub fn new(
        base_url: impl Into<String>,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        HikvisionConfig {
            base_url: base_url.into(),
            username: username.into(),
            password: password.into(),
            ..HikvisionConfig::default()
        }
    }

    /// Check every field; errors name the parameter (relative to the settings object).
    pub fn validate(&self) -> Result<(), Error> {
        let url = self.base_url.trim_end_matches('/');
        let rest = url
            .strip_prefix("http://")
            .or_else(|| url.strip_prefix("https://"))
            .ok_or_else(|| {
                Error::config(
                    "base_url",
                    format!("`{}` must start with http:// or https://", self.base_url),
                )
            })?;
        if rest.is_empty() || rest.contains(['/', '?', '#', ' ']) {
            return Err(Error::config(
                "base_url",
                format!(
                    "`{}` must be scheme://host[:port] with no path",
                    self.base_url
                ),
            ));
        }
        reqwest::Url::parse(url)
            .map_err(|e| Error::config("base_url", format!("`{}`: {e}", self.base_url)))?;
        if self.username.is_empty() {
            return Err(Error::config("username", "must not be empty"));
        }
        if self.password.is_empty() {
            return Err(Error::config("password", "must not be empty"));
        }
        for (param, value) in [
            ("request_timeout_ms", self.request_timeout_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
        ] {
            if value == 0 || value > 600_000 {
                return Err(Error::config(
                    param,
                    format!("must be 1 to 600000, got {value}"),
                ));
            }
        }
        if self.auth_failure_backoff_ms > 86_400_000 {
            return Err(Error::config(
                "auth_failure_backoff_ms",
                "must be at most 86400000 (one day)",
            ));
        }
        self.events.validate()
    }

    /// The base URL without a trailing slash.
    pub(crate) fn base(&self) -> &str {
        self.base_url.trim_end_matches('/')
    }

    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
}

/// Options of the access-control event source.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EventOptions {
    /// Offer the event source. Default true; turn off for cameras and NVRs, which have no
    /// access-control log.
    pub enabled: bool,
    /// The record stream events go to. Default `devices`.
    pub stream: String,
    /// `maxResults` per page. Default 30, as common clients use; devices may return fewer.
    pub page_size: u32,
    /// Most pages read in one poll. Default 20.
    pub max_pages_per_poll: u32,
    /// Where a device without a stored cursor starts: `earliest` (default: the whole log
    /// the device keeps), `now`, or an RFC 3339 time with offset.
    pub start: EventStart,
}

impl Default for EventOptions {
    fn default() -> Self {
        EventOptions {
            enabled: true,
            stream: "devices".to_string(),
            page_size: 30,
            max_pages_per_poll: 20,
            start: EventStart::Earliest,
        }
    }
}

impl EventOptions {
    fn validate(&self) -> Result<(), Error> {
        if self.page_size == 0 || self.page_size > 1000 {
            return Err(Error::config(
                "events.page_size",
                format!("must be 1 to 1000, got {}", self.page_size),
            ));
        }
        if self.max_pages_per_poll == 0 || self.max_pages_per_poll > 1000 {
            return Err(Error::config(
                "events.max_pages_per_poll",
                format!("must be 1 to 1000, got {}", self.max_pages_per_poll),
            ));
        }
        let stream_ok = !self.stream.is_empty()
            && self.stream.len() <= 64
            && self
                .stream
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if !stream_ok {
            return Err(Error::config(
                "events.stream",
                "must be 1 to 64 characters of letters, digits, `_`, `-`, `.`",
            ));
        }
        Ok(())
    }
}

/// Where events start for a device without a stored cursor.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum EventStart {
    /// Everything the device still has.
    Earliest,
    /// Only events from the first poll on.
    Now,
    /// Events from this time on (RFC 3339 with offset, as sent to the device).
    At(String),
}

impl TryFrom<String> for EventStart {
    type Error = String;

    fn try_from(text: String) -> Result<Self, Self::Error> {
        match text.as_str() {
            "earliest" => Ok(EventStart::Earliest),
            "now" => Ok(EventStart::Now),
            other => match crate::time::parse_datetime(other) {
                Some(t) if t.utc_offset_secs.is_some() => Ok(EventStart::At(text)),
                _ => Err(format!(
                    "`{other}` is not `earliest`, `now` or an RFC 3339 time with a UTC offset"
                )),
            },
        }
    }
}

impl From<EventStart> for String {
    fn from(start: EventStart) -> String {
        match start {
            EventStart::Earliest => "earliest".to_string(),
            EventStart::Now => "now".to_string(),
            EventStart::At(text) => text,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn validation_names_the_parameter() {
        let good = HikvisionConfig::new("http://127.0.0.1:8080/", "admin", "pw");
        assert!(good.validate().is_ok());
        assert_eq!(good.base(), "http://127.0.0.1:8080");
        let cases = [
            (HikvisionConfig::new("ftp://x", "a", "b"), "base_url"),
            (HikvisionConfig::new("http://x/ISAPI", "a", "b"), "base_url"),
            (HikvisionConfig::new("http://", "a", "b"), "base_url"),
            (HikvisionConfig::new("http://x", "", "b"), "username"),
            (HikvisionConfig::new("http://x", "a", ""), "password"),
        ];
        for (config, param) in cases {
            match config.validate() {
                Err(Error::InvalidConfig { param: p, .. }) => assert_eq!(p, param),
                other => panic!("{config:?}: {other:?}"),
            }
        }
        let mut bad_page = HikvisionConfig::new("http://x", "a", "b");
        bad_page.events.page_size = 0;
        assert!(
            bad_page
                .validate()
                .unwrap_err()
                .to_string()
                .contains("events.page_size")
        );
    }

    #[test]
    fn debug_hides_the_password() {
        let config = HikvisionConfig::new("http://x", "admin", "hunter2");
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn event_start_reads_three_forms() {
        let options: EventOptions = serde_json::from_value(json!({"start": "now"})).unwrap();
        assert_eq!(options.start, EventStart::Now);
        let options: EventOptions =
            serde_json::from_value(json!({"start": "2024-01-01T00:00:00+02:00"})).unwrap();
        assert!(matches!(options.start, EventStart::At(_)));
        assert!(serde_json::from_value::<EventOptions>(json!({"start": "yesterday"})).is_err());
        assert!(
            serde_json::from_value::<EventOptions>(json!({"start": "2024-01-01T00:00:00"}))
                .is_err()
        );
    }
}
