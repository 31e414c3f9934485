//! HTTPS with a private CA and mutual TLS: the uplink's rustls (ring) config built from
//! `TlsConfig` files, against a real TLS server on loopback that requires a client
//! certificate.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::*;
use gateway_buffer::{Buffer, BufferConfig};
use gateway_proto::UplinkHealth;
use gateway_uplink::{FlushOutcome, TlsConfig, Uplink, UplinkConfig};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

struct Pki {
    dir: tempfile::TempDir,
    server_chain: Vec<CertificateDer<'static>>,
    server_key: PrivateKeyDer<'static>,
    ca: CertificateDer<'static>,
}

/// A CA, a server certificate for localhost and a client certificate, as PEM files.
fn pki() -> Pki {
    let dir = tempfile::tempdir().unwrap();
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
    let issue = |names: Vec<String>| {
        let key = KeyPair::generate().unwrap();
        let cert = CertificateParams::new(names)
            .unwrap()
            .signed_by(&key, &ca)
            .unwrap();
        (cert, key)
    };
    let (server_cert, server_key) = issue(vec!["localhost".into()]);
    let (client_cert, client_key) = issue(vec!["gw-1".into()]);
    std::fs::write(dir.path().join("ca.pem"), ca.pem()).unwrap();
    std::fs::write(dir.path().join("client.pem"), client_cert.pem()).unwrap();
    std::fs::write(dir.path().join("client.key"), client_key.serialize_pem()).unwrap();
    Pki {
        server_chain: vec![server_cert.der().clone()],
        server_key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        ca: ca.der().clone(),
        dir,
    }
}

/// Accepts TCP connections and completes the TLS handshake; failed handshakes are skipped.
struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            let Ok((stream, addr)) = self.tcp.accept().await else {
                continue;
            };
            if let Ok(tls) = self.acceptor.accept(stream).await {
                return (tls, addr);
            }
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// The receiver over HTTPS, requiring a client certificate from `pki`'s CA.
async fn https_server(pki: &Pki, store: &gateway_uplink::server::SqliteRecordStore) -> u16 {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = rustls::RootCertStore::empty();
    roots.add(pki.ca.clone()).unwrap();
    let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
        Arc::new(roots),
        provider.clone(),
    )
    .build()
    .unwrap();
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(pki.server_chain.clone(), pki.server_key.clone_key())
        .unwrap();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    let tcp = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = tcp.local_addr().unwrap().port();
    let listener = TlsListener {
        tcp,
        acceptor: TlsAcceptor::from(Arc::new(config)),
    };
    let app = receiver_router(store);
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    port
}

fn tls_config(pki: &Pki, with_client_cert: bool) -> TlsConfig {
    let path = |name: &str| Some(pki.dir.path().join(name));
    TlsConfig {
        ca_file: path("ca.pem"),
        system_roots: false,
        client_cert_file: if with_client_cert {
            path("client.pem")
        } else {
            None
        },
        client_key_file: if with_client_cert {
            path("client.key")
        } else {
            None
        },
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_tls_with_a_private_ca_delivers() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let port = https_server(&pki, &store).await;
    let buffer = Buffer::open(dir.path().join("buffer.db"), BufferConfig::default())
        .await
        .unwrap();
    let ids = buffer
        .append((0..50).map(record).collect())
        .await
        .unwrap()
        .ids;
    let config = UplinkConfig {
        tls: tls_config(&pki, true),
        request_timeout_ms: 5_000,
        ..UplinkConfig::new(format!("https://localhost:{port}"), GATEWAY_TOKEN, "gw-1")
    };
    let uplink = Uplink::start(buffer.clone(), config).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    assert_eq!(uplink.flush(deadline).await.unwrap(), FlushOutcome::Flushed);
    let stored: Vec<_> = stored_records(&store, TENANT)
        .iter()
        .map(|r| r.id.unwrap())
        .collect();
    assert_eq!(stored, ids);
    uplink.shutdown(deadline).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_client_certificate_the_handshake_fails_and_records_stay() {
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let port = https_server(&pki, &store).await;
    let buffer = Buffer::open(dir.path().join("buffer.db"), BufferConfig::default())
        .await
        .unwrap();
    buffer.append((0..5).map(record).collect()).await.unwrap();
    let config = UplinkConfig {
        tls: tls_config(&pki, false),
        request_timeout_ms: 2_000,
        ..UplinkConfig::new(format!("https://localhost:{port}"), GATEWAY_TOKEN, "gw-1")
    };
    let uplink = Uplink::start(buffer.clone(), config).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while uplink.status().health.consecutive_failures == 0 {
        assert!(Instant::now() < deadline, "no failure reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let status = uplink.status();
    assert_eq!(status.health.health, UplinkHealth::Degraded);
    assert!(stored_records(&store, TENANT).is_empty());
    uplink.shutdown(deadline).await.unwrap();
    assert_eq!(buffer.stats().await.unwrap().records, 5);
}

#[tokio::test]
async fn a_server_certificate_from_another_ca_is_refused() {
    let other = pki();
    let pki = pki();
    let dir = tempfile::tempdir().unwrap();
    let store = open_store(dir.path());
    let port = https_server(&pki, &store).await;
    let buffer = Buffer::open(dir.path().join("buffer.db"), BufferConfig::default())
        .await
        .unwrap();
    buffer.append(vec![record(0)]).await.unwrap();
    let config = UplinkConfig {
        tls: tls_config(&other, true),
        request_timeout_ms: 2_000,
        ..UplinkConfig::new(format!("https://localhost:{port}"), GATEWAY_TOKEN, "gw-1")
    };
    let uplink = Uplink::start(buffer.clone(), config).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while uplink.status().health.last_error.is_none() {
        assert!(Instant::now() < deadline, "no failure reported");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let error = uplink.status().health.last_error.unwrap();
    assert!(error.to_lowercase().contains("certificate"), "{error}");
    uplink.shutdown(deadline).await.unwrap();
}
