//! [`UplinkConfig`]: plain data with a `Default`, serde support and a `validate` that names
//! the offending parameter.

use std::fmt;
use std::path::PathBuf;

use gateway_proto::Encoding;
use serde::{Deserialize, Serialize};

use crate::{Error, HealthConfig, RetryPolicy};

/// The body encoding the uplink sends.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WireEncoding {
    /// `application/x-protobuf`. Default: smaller and faster to encode.
    #[default]
    Protobuf,
    /// `application/json`.
    Json,
}

impl From<WireEncoding> for Encoding {
    fn from(e: WireEncoding) -> Self {
        match e {
            WireEncoding::Protobuf => Encoding::Protobuf,
            WireEncoding::Json => Encoding::Json,
        }
    }
}

/// When a batch is complete enough to send.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct BatchConfig {
    /// Most records in one batch. Default 2,000.
    pub max_records: usize,
    /// Most encoded record bytes in one batch (as the buffer counts them). Default 4 MiB.
    pub max_bytes: u64,
    /// How long to wait for a partial batch to fill before sending it, ms. 0 sends whatever
    /// is there at once. Default 100.
    pub linger_ms: u64,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_records: 2_000,
            max_bytes: 4 * 1024 * 1024,
            linger_ms: 100,
        }
    }
}

/// TLS settings. The crypto provider is always ring, passed to rustls explicitly (no
/// process-wide default is installed).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct TlsConfig {
    /// PEM file of CA certificates to trust (a private PKI).
    pub ca_file: Option<PathBuf>,
    /// Also trust the operating system's roots. Default true; false trusts only `ca_file`.
    pub system_roots: bool,
    /// PEM certificate chain to present to the server (mutual TLS). Needs `client_key_file`.
    pub client_cert_file: Option<PathBuf>,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1) of `client_cert_file`.
    pub client_key_file: Option<PathBuf>,
}

impl Default for TlsConfig {
    fn default() -> Self {
        TlsConfig {
            ca_file: None,
            system_roots: true,
            client_cert_file: None,
            client_key_file: None,
        }
    }
}

/// HTTP(S) proxy settings.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct ProxyConfig {
    /// Read `HTTPS_PROXY`, `HTTP_PROXY`, `ALL_PROXY` and `NO_PROXY` (either case) from the
    /// environment. Default true.
    pub from_env: bool,
    /// A proxy for every request (`http://user:pass@proxy:3128`); wins over the environment.
    pub url: Option<String>,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        ProxyConfig {
            from_env: true,
            url: None,
        }
    }
}

/// Everything an [`Uplink`](crate::Uplink) needs.
///
/// ```
/// use gateway_uplink::UplinkConfig;
/// let config: UplinkConfig = serde_json::from_str(r#"{
///     "server_url": "https://ingest.example.com",
///     "token": "s3cret",
///     "gateway_id": "gw-1",
///     "batch": {"max_records": 500, "linger_ms": 250},
///     "retry": {"cap_ms": 30000}
/// }"#).unwrap();
/// config.validate().unwrap();
/// assert_eq!(config.in_flight, 2);
/// ```
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default)]
pub struct UplinkConfig {
    /// Base URL of the server; batches go to `{server_url}/v1/records`. `https://` in
    /// production; `http://` is accepted for tests and trusted networks.
    pub server_url: String,
    /// Bearer token sent as `Authorization: Bearer <token>`.
    pub token: String,
    /// This gateway's id, sent in every batch (the server checks it against the token).
    pub gateway_id: String,
    /// Body encoding. Default protobuf.
    pub encoding: WireEncoding,
    /// Batch sizing.
    pub batch: BatchConfig,
    /// Gzip bodies at least this large, bytes; `None` never compresses. Default 1,024.
    pub gzip_min_bytes: Option<usize>,
    /// Batches in flight at once. Default 2.
    pub in_flight: usize,
    /// Batches in flight while the buffer holds a backlog — a lease came back full without
    /// waiting, as after an outage. The workers beyond `in_flight` lease only then, so a
    /// backlog drains faster while steady traffic keeps `in_flight` batches and their latency.
    /// Default 4; a value not above `in_flight` adds none.
    pub catch_up_in_flight: usize,
    /// Timeout for opening a connection (TCP + TLS), ms. Default 5,000.
    pub connect_timeout_ms: u64,
    /// Timeout for a whole request, from sending to the last byte of the answer, ms. Keep it
    /// below the buffer's `lease_timeout` (30 s by default). Default 15,000.
    pub request_timeout_ms: u64,
    /// Retry schedule.
    pub retry: RetryPolicy,
    /// Health thresholds.
    pub health: HealthConfig,
    /// TLS.
    pub tls: TlsConfig,
    /// Proxy.
    pub proxy: ProxyConfig,
    /// How often an idle uplink looks at the buffer even without an append notification,
    /// ms. Default 1,000.
    pub idle_poll_ms: u64,
}

impl Default for UplinkConfig {
    fn default() -> Self {
        UplinkConfig {
            server_url: String::new(),
            token: String::new(),
            gateway_id: String::new(),
            encoding: WireEncoding::Protobuf,
            batch: BatchConfig::default(),
            gzip_min_bytes: Some(1_024),
            in_flight: 2,
            catch_up_in_flight: 4,
            connect_timeout_ms: 5_000,
            request_timeout_ms: 15_000,
            retry: RetryPolicy::default(),
            health: HealthConfig::default(),
            tls: TlsConfig::default(),
            proxy: ProxyConfig::default(),
            idle_poll_ms: 1_000,
        }
    }
}

impl fmt::Debug for UplinkConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UplinkConfig")
            .field("server_url", &self.server_url)
            .field("token", &"<redacted>")
            .field("gateway_id", &self.gateway_id)
            .field("encoding", &self.encoding)
            .field("batch", &self.batch)
            .field("gzip_min_bytes", &self.gzip_min_bytes)
            .field("in_flight", &self.in_flight)
            .field("catch_up_in_flight", &self.catch_up_in_flight)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("request_timeout_ms", &self.request_timeout_ms)
            .field("retry", &self.retry)
            .field("health", &self.health)
            .field("tls", &self.tls)
            .field("proxy", &self.proxy)
            .field("idle_poll_ms", &self.idle_poll_ms)
            .finish()
    }
}

impl UplinkConfig {
    /// A config for `server_url` with `token` and `gateway_id`, defaults elsewhere.
    pub fn new(
        server_url: impl Into<String>,
        token: impl Into<String>,
        gateway_id: impl Into<String>,
    ) -> Self {
        UplinkConfig {
            server_url: server_url.into(),
            token: token.into(),
            gateway_id: gateway_id.into(),
            ..UplinkConfig::default()
        }
    }

    /// Check every parameter; the error names the first one out of range.
    pub fn validate(&self) -> Result<(), Error> {
        let url = reqwest::Url::parse(&self.server_url)
            .map_err(|e| Error::invalid("server_url", format!("not a URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(Error::invalid(
                "server_url",
                "must start with https:// or http://",
            ));
        }
        if self.token.is_empty() || self.token.chars().any(|c| c.is_control() || c == ' ') {
            return Err(Error::invalid(
                "token",
                "must be non-empty, without spaces or control characters",
            ));
        }
        if self.gateway_id.is_empty() {
            return Err(Error::invalid("gateway_id", "must not be empty"));
        }
        if self.batch.max_records == 0 {
            return Err(Error::invalid("batch.max_records", "must be at least 1"));
        }
        if self.batch.max_bytes == 0 {
            return Err(Error::invalid("batch.max_bytes", "must be at least 1"));
        }
        if self.in_flight == 0 {
            return Err(Error::invalid("in_flight", "must be at least 1"));
        }
        if self.connect_timeout_ms == 0 {
            return Err(Error::invalid("connect_timeout_ms", "must be at least 1"));
        }
        if self.request_timeout_ms == 0 {
            return Err(Error::invalid("request_timeout_ms", "must be at least 1"));
        }
        if self.idle_poll_ms == 0 {
            return Err(Error::invalid("idle_poll_ms", "must be at least 1"));
        }
        if self.tls.client_cert_file.is_some() != self.tls.client_key_file.is_some() {
            return Err(Error::invalid(
                "tls.client_key_file",
                "client_cert_file and client_key_file go together",
            ));
        }
        if !self.tls.system_roots && self.tls.ca_file.is_none() && url.scheme() == "https" {
            return Err(Error::invalid(
                "tls.ca_file",
                "with system_roots = false a CA file is needed to trust the server",
            ));
        }
        self.retry.validate()?;
        self.health.validate()
    }

    /// The URL batches are posted to.
    pub fn records_url(&self) -> Result<reqwest::Url, Error> {
        let base = self.server_url.trim_end_matches('/');
        reqwest::Url::parse(&format!("{base}/v1/records"))
            .map_err(|e| Error::invalid("server_url", format!("not a URL: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid() -> UplinkConfig {
        UplinkConfig::new("https://server.example", "tok", "gw-1")
    }

    #[test]
    fn defaults_follow_the_issue() {
        let c = UplinkConfig::default();
        assert_eq!(c.in_flight, 2);
        assert_eq!(c.encoding, WireEncoding::Protobuf);
        assert_eq!(c.retry.base_ms, 1_000);
        assert_eq!(c.retry.cap_ms, 60_000);
        valid().validate().unwrap();
    }

    #[test]
    fn errors_name_the_parameter() {
        let cases: Vec<(UplinkConfig, &str)> = vec![
            (
                UplinkConfig {
                    server_url: "ftp://x".into(),
                    ..valid()
                },
                "server_url",
            ),
            (
                UplinkConfig {
                    token: String::new(),
                    ..valid()
                },
                "token",
            ),
            (
                UplinkConfig {
                    gateway_id: String::new(),
                    ..valid()
                },
                "gateway_id",
            ),
            (
                UplinkConfig {
                    in_flight: 0,
                    ..valid()
                },
                "in_flight",
            ),
            (
                UplinkConfig {
                    batch: BatchConfig {
                        max_records: 0,
                        ..BatchConfig::default()
                    },
                    ..valid()
                },
                "batch.max_records",
            ),
            (
                UplinkConfig {
                    tls: TlsConfig {
                        client_cert_file: Some("c.pem".into()),
                        ..TlsConfig::default()
                    },
                    ..valid()
                },
                "tls.client_key_file",
            ),
        ];
        for (config, param) in cases {
            let err = config.validate().unwrap_err().to_string();
            assert!(err.contains(param), "{err} should name {param}");
        }
    }

    #[test]
    fn debug_never_shows_the_token() {
        let shown = format!("{:?}", UplinkConfig::new("https://x", "top-secret", "gw"));
        assert!(!shown.contains("top-secret"));
    }

    #[test]
    fn records_url_joins_the_path() {
        let c = UplinkConfig::new("http://127.0.0.1:8080/", "t", "g");
        assert_eq!(
            c.records_url().unwrap().as_str(),
            "http://127.0.0.1:8080/v1/records"
        );
    }
}
