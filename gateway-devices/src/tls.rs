//! rustls client configuration for device connections, with the ring provider passed in
//! explicitly: no process-global crypto provider is installed.
//!
//! Devices on site usually present self-signed certificates. Trust them by giving their CA
//! (or the certificate itself) as a PEM file; [`TlsOptions::dangerous_accept_invalid_certs`]
//! turns verification off entirely and is meant for bench tests only.

use std::path::PathBuf;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{CryptoProvider, WebPkiSupportedAlgorithms};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, RootCertStore, SignatureScheme};
use serde::{Deserialize, Serialize};

use crate::Error;

/// How to verify a device's certificate.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TlsOptions {
    /// A PEM file with extra trusted CA certificates (or the device's self-signed certificate),
    /// added to the public web roots.
    pub ca_cert_file: Option<PathBuf>,
    /// The same as PEM text, for configuration that carries it inline.
    pub ca_cert_pem: Option<String>,
    /// Accept any certificate, valid or not, for any name. Only for bench tests: anyone on the
    /// path can read and change the traffic, credentials included.
    pub dangerous_accept_invalid_certs: bool,
}

/// The ring crypto provider, built for this configuration only.
pub fn ring_provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Build a rustls client configuration from the options.
pub fn client_config(options: &TlsOptions) -> Result<ClientConfig, Error> {
    let provider = ring_provider();
    let builder = ClientConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls {
            reason: e.to_string(),
        })?;
    if options.dangerous_accept_invalid_certs {
        return Ok(builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(AcceptAnyCertificate {
                algorithms: provider.signature_verification_algorithms,
            }))
            .with_no_client_auth());
    }
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    let mut pems: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(path) = &options.ca_cert_file {
        let bytes = std::fs::read(path).map_err(|e| {
            Error::config(
                "ca_cert_file",
                format!("cannot read {}: {e}", path.display()),
            )
        })?;
        pems.push(("ca_cert_file".to_string(), bytes));
    }
    if let Some(pem) = &options.ca_cert_pem {
        pems.push(("ca_cert_pem".to_string(), pem.as_bytes().to_vec()));
    }
    for (param, pem) in pems {
        let mut added = 0;
        for cert in CertificateDer::pem_slice_iter(&pem) {
            let cert = cert.map_err(|e| Error::config(&param, format!("not PEM: {e}")))?;
            roots
                .add(cert)
                .map_err(|e| Error::config(&param, format!("not a usable CA certificate: {e}")))?;
            added += 1;
        }
        if added == 0 {
            return Err(Error::config(param, "holds no `BEGIN CERTIFICATE` block"));
        }
    }
    Ok(builder.with_root_certificates(roots).with_no_client_auth())
}

/// Verifies handshake signatures (so the connection is still a real TLS session) but accepts
/// any certificate chain and name.
#[derive(Debug)]
struct AcceptAnyCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_ca_pem_names_the_parameter() {
        let err = client_config(&TlsOptions {
            ca_cert_pem: Some("not a certificate".into()),
            ..TlsOptions::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("ca_cert_pem"), "{err}");
        let err = client_config(&TlsOptions {
            ca_cert_file: Some("/nonexistent/ca.pem".into()),
            ..TlsOptions::default()
        })
        .unwrap_err();
        assert!(err.to_string().contains("ca_cert_file"), "{err}");
        assert!(client_config(&TlsOptions::default()).is_ok());
        assert!(
            client_config(&TlsOptions {
                dangerous_accept_invalid_certs: true,
                ..TlsOptions::default()
            })
            .is_ok()
        );
    }
}
