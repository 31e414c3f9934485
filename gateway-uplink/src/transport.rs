//! The HTTP side of the uplink: reqwest on hyper with rustls (ring provider, passed in), one
//! `POST /v1/records` per attempt.

use std::io::Write as _;
use std::sync::Arc;
use std::time::Duration;

use gateway_proto::{
    BatchAck, BatchId, Encoding, ErrorBody, ErrorCode, HEADER_IDEMPOTENCY_KEY, WireMessage,
};
use reqwest::header::{self, HeaderValue};
use rustls::pki_types::pem::PemObject as _;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{TlsConfig, UplinkConfig};
use crate::{Error, Failure};

/// What became of one attempt.
#[derive(Debug)]
pub(crate) enum Attempt {
    /// 2xx with a readable `BatchAck`.
    Answered(BatchAck),
    /// Anything else.
    Failed {
        failure: Failure,
        /// The server's error code, when it sent an error body.
        code: Option<ErrorCode>,
        /// A sentence for logs, health and dead letters.
        message: String,
    },
}

/// A configured HTTP client for one server.
#[derive(Debug, Clone)]
pub(crate) struct Transport {
    client: reqwest::Client,
    url: reqwest::Url,
    authorization: HeaderValue,
    encoding: Encoding,
    gzip_min_bytes: Option<usize>,
}

/// An encoded, possibly compressed batch body.
pub(crate) struct Body {
    pub(crate) bytes: Vec<u8>,
    pub(crate) gzipped: bool,
}

impl Transport {
    pub(crate) fn new(config: &UplinkConfig) -> Result<Self, Error> {
        let url = config.records_url()?;
        let tls = rustls_config(&config.tls, url.scheme() == "https")?;
        let mut builder = reqwest::Client::builder()
            .tls_backend_preconfigured(tls)
            .connect_timeout(Duration::from_millis(config.connect_timeout_ms))
            .timeout(Duration::from_millis(config.request_timeout_ms))
            .redirect(reqwest::redirect::Policy::none())
            .user_agent(concat!("gateway-uplink/", env!("CARGO_PKG_VERSION")))
            .pool_max_idle_per_host(config.in_flight.max(1));
        if !config.proxy.from_env {
            builder = builder.no_proxy();
        }
        if let Some(proxy) = &config.proxy.url {
            let proxy = reqwest::Proxy::all(proxy.as_str())
                .map_err(|e| Error::invalid("proxy.url", e.to_string()))?;
            builder = builder.proxy(proxy);
        }
        let client = builder.build().map_err(Error::HttpClient)?;
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", config.token))
            .map_err(|_| Error::invalid("token", "must be printable ASCII"))?;
        authorization.set_sensitive(true);
        Ok(Transport {
            client,
            url,
            authorization,
            encoding: config.encoding.into(),
            gzip_min_bytes: config.gzip_min_bytes,
        })
    }

    /// The request body for an encoded batch, gzipped when it is large enough.
    pub(crate) fn body(&self, plain: Vec<u8>) -> Body {
        match self.gzip_min_bytes {
            Some(min) if plain.len() >= min => {
                let mut encoder = flate2::write::GzEncoder::new(
                    Vec::with_capacity(plain.len() / 3),
                    flate2::Compression::fast(),
                );
                // Writing into a Vec cannot fail.
                if encoder.write_all(&plain).is_ok()
                    && let Ok(bytes) = encoder.finish()
                {
                    return Body {
                        bytes,
                        gzipped: true,
                    };
                }
                Body {
                    bytes: plain,
                    gzipped: false,
                }
            }
            _ => Body {
                bytes: plain,
                gzipped: false,
            },
        }
    }

    /// Post one encoded batch.
    pub(crate) async fn post(&self, batch_id: BatchId, body: Body) -> Attempt {
        let mut request = self
            .client
            .post(self.url.clone())
            .header(header::AUTHORIZATION, self.authorization.clone())
            .header(header::CONTENT_TYPE, self.encoding.content_type())
            .header(header::ACCEPT, self.encoding.content_type())
            .header(HEADER_IDEMPOTENCY_KEY, batch_id.to_string());
        if body.gzipped {
            request = request.header(header::CONTENT_ENCODING, "gzip");
        }
        let response = match request.body(body.bytes).send().await {
            Ok(r) => r,
            Err(e) => return transport_failure(&e),
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(parse_retry_after);
        let content_type = response
            .headers()
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Encoding::from_content_type(v).ok());
        let bytes = match read_answer(response).await {
            Ok(Some(b)) => b,
            Ok(None) => {
                // The server may have stored the batch; retrying is safe (dedup by record id).
                return Attempt::Failed {
                    failure: Failure::Connection,
                    code: None,
                    message: format!(
                        "the server answered {status} with a body over {MAX_ANSWER_BYTES} bytes"
                    ),
                };
            }
            Err(e) => return transport_failure(&e),
        };
        if status.is_success() {
            let encoding = content_type.unwrap_or(self.encoding);
            return match BatchAck::decode(&bytes, encoding) {
                Ok(ack) => Attempt::Answered(ack),
                // The server may have stored the batch; retrying is safe (dedup by record id).
                Err(e) => Attempt::Failed {
                    failure: Failure::Connection,
                    code: None,
                    message: format!(
                        "the server answered {status} with an unreadable BatchAck: {e}"
                    ),
                },
            };
        }
        let error = content_type
            .and_then(|enc| ErrorBody::decode(&bytes, enc).ok())
            .or_else(|| ErrorBody::from_json(&bytes).ok());
        let (code, message) = match error {
            Some(body) => (
                Some(body.error.code.clone()),
                format!(
                    "the server answered {status} ({}): {}",
                    body.error.code, body.error.message
                ),
            ),
            None => (None, format!("the server answered {status}")),
        };
        Attempt::Failed {
            failure: Failure::Status {
                status: status.as_u16(),
                retry_after,
            },
            code,
            message,
        }
    }
}

/// Largest answer body read from the server: a `BatchAck` rejecting every record of the
/// largest batch with a long message fits many times over. A larger answer is not read.
pub(crate) const MAX_ANSWER_BYTES: usize = 16 * 1024 * 1024;

/// The answer's body, or `None` when it is longer than [`MAX_ANSWER_BYTES`].
async fn read_answer(mut response: reqwest::Response) -> Result<Option<Vec<u8>>, reqwest::Error> {
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_ANSWER_BYTES {
            return Ok(None);
        }
        body.extend_from_slice(&chunk);
    }
    Ok(Some(body))
}

fn transport_failure(e: &reqwest::Error) -> Attempt {
    let failure = if e.is_timeout() {
        Failure::Timeout
    } else {
        Failure::Connection
    };
    // reqwest's Display is terse; the source chain says what really happened.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    Attempt::Failed {
        failure,
        code: None,
        message,
    }
}

/// `Retry-After` as delay-seconds. (The HTTP-date form is not used by our receivers and is
/// ignored: the backoff schedule applies instead.)
fn parse_retry_after(value: &str) -> Option<Duration> {
    value.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// The rustls client config: ring provider, system and/or configured roots, optional client
/// certificate, ALPN h2 and http/1.1.
pub(crate) fn rustls_config(tls: &TlsConfig, https: bool) -> Result<rustls::ClientConfig, Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls {
            reason: format!("ring provider: {e}"),
        })?;
    let extra_roots = match &tls.ca_file {
        Some(path) => {
            let certs = read_certs(path, "CA file")?;
            if certs.is_empty() {
                return Err(Error::Tls {
                    reason: format!("{} holds no PEM certificate", path.display()),
                });
            }
            certs
        }
        None => Vec::new(),
    };
    let platform = if tls.system_roots {
        match rustls_platform_verifier::Verifier::new_with_extra_roots(
            extra_roots.clone(),
            provider.clone(),
        ) {
            Ok(v) => Some(v),
            // No system roots at all and nothing configured: fine for plain-HTTP servers,
            // a clear error for HTTPS ones.
            Err(e) if !https => {
                tracing::debug!("no system roots ({e}); the uplink talks plain HTTP");
                None
            }
            Err(e) => {
                return Err(Error::Tls {
                    reason: format!(
                        "cannot load the system's CA roots ({e}); install them or set tls.ca_file"
                    ),
                });
            }
        }
    } else {
        None
    };
    let builder = match platform {
        Some(verifier) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(verifier)),
        None => {
            let mut roots = rustls::RootCertStore::empty();
            for cert in extra_roots {
                roots.add(cert).map_err(|e| Error::Tls {
                    reason: format!("tls.ca_file holds an unusable certificate: {e}"),
                })?;
            }
            builder.with_root_certificates(roots)
        }
    };
    let mut config = match (&tls.client_cert_file, &tls.client_key_file) {
        (Some(cert_path), Some(key_path)) => {
            let chain = read_certs(cert_path, "client certificate")?;
            if chain.is_empty() {
                return Err(Error::Tls {
                    reason: format!("{} holds no PEM certificate", cert_path.display()),
                });
            }
            let pem = read_file(key_path, "client key")?;
            let key = PrivateKeyDer::from_pem_slice(&pem).map_err(|e| Error::Tls {
                reason: format!("{} holds no usable private key: {e}", key_path.display()),
            })?;
            builder
                .with_client_auth_cert(chain, key)
                .map_err(|e| Error::Tls {
                    reason: format!("client certificate and key do not fit together: {e}"),
                })?
        }
        _ => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}

fn read_file(path: &std::path::Path, what: &'static str) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::ReadFile {
        what,
        path: path.to_path_buf(),
        source,
    })
}

fn read_certs(
    path: &std::path::Path,
    what: &'static str,
) -> Result<Vec<CertificateDer<'static>>, Error> {
    let pem = read_file(path, what)?;
    CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Error::Tls {
            reason: format!("{} is not valid PEM: {e}", path.display()),
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_proto::Batch;

    #[test]
    fn retry_after_seconds_parse_and_dates_are_ignored() {
        assert_eq!(parse_retry_after(" 7 "), Some(Duration::from_secs(7)));
        assert_eq!(parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"), None);
    }

    #[test]
    fn missing_tls_files_are_named() {
        let tls = TlsConfig {
            ca_file: Some("/nonexistent/ca.pem".into()),
            ..TlsConfig::default()
        };
        let err = rustls_config(&tls, true).unwrap_err().to_string();
        assert!(err.contains("/nonexistent/ca.pem"), "{err}");
    }

    #[test]
    fn large_bodies_are_gzipped_small_ones_not() {
        let config = UplinkConfig {
            gzip_min_bytes: Some(200),
            ..UplinkConfig::new("http://127.0.0.1:1", "t", "gw")
        };
        let transport = Transport::new(&config).unwrap();
        let record = |i: i64| {
            gateway_proto::Record::new(
                "logs",
                "a",
                1_700_000_000_000 + i,
                gateway_proto::Body::from(serde_json::json!({"msg": "hello hello hello"})),
            )
            .with_id(gateway_proto::RecordId::new_v7())
        };
        let small = Batch::new("gw", vec![record(0)]);
        assert!(!transport.body(small.to_protobuf()).gzipped);
        let big = Batch::new("gw", (0..50).map(record).collect());
        let body = transport.body(big.to_protobuf());
        assert!(body.gzipped);
        assert!(body.bytes.len() < big.to_protobuf().len());
    }
}
