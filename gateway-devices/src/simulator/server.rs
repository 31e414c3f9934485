//! The accept loop: hyper HTTP/1 per connection (optionally under TLS), with a handle that
//! lets a handler close its own connection without answering.

use std::sync::Arc;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio::sync::{Notify, watch};
use tokio_rustls::TlsAcceptor;
use tracing::debug;

use super::SimulatorTls;
use super::state::SimState;
use crate::Error;

/// Set on every request; notifying it closes the request's connection at once.
#[derive(Clone)]
pub(crate) struct ConnectionKill(pub(crate) Arc<Notify>);

pub(crate) fn tls_acceptor(tls: &SimulatorTls) -> Result<TlsAcceptor, Error> {
    let certs: Vec<CertificateDer<'static>> =
        CertificateDer::pem_slice_iter(tls.cert_pem.as_bytes())
            .collect::<Result<_, _>>()
            .map_err(|e| Error::config("tls.cert_pem", format!("not PEM: {e}")))?;
    if certs.is_empty() {
        return Err(Error::config("tls.cert_pem", "holds no certificate"));
    }
    let key = PrivateKeyDer::from_pem_slice(tls.key_pem.as_bytes())
        .map_err(|e| Error::config("tls.key_pem", format!("no private key: {e}")))?;
    let config = rustls::ServerConfig::builder_with_provider(crate::tls::ring_provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Tls {
            reason: e.to_string(),
        })?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .map_err(|e| Error::config("tls", format!("certificate and key do not fit: {e}")))?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}

pub(crate) async fn serve(
    listener: TcpListener,
    router: Router,
    state: Arc<SimState>,
    tls: Option<TlsAcceptor>,
    mut shutdown: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = shutdown.changed() => break,
            accepted = listener.accept() => accepted,
        };
        let Ok((stream, peer)) = accepted else {
            continue;
        };
        if state.is_offline() {
            // Rebooting: the port refuses service.
            drop(stream);
            continue;
        }
        let router = router.clone();
        let tls = tls.clone();
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            match tls {
                Some(acceptor) => match acceptor.accept(stream).await {
                    Ok(stream) => connection(stream, router, shutdown).await,
                    Err(e) => debug!(%peer, error = %e, "simulator TLS handshake failed"),
                },
                None => connection(stream, router, shutdown).await,
            }
        });
    }
}

async fn connection<S>(stream: S, router: Router, mut shutdown: watch::Receiver<bool>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let kill = Arc::new(Notify::new());
    let service =
        TowerToHyperService::new(router.layer(axum::Extension(ConnectionKill(kill.clone()))));
    let conn =
        hyper::server::conn::http1::Builder::new().serve_connection(TokioIo::new(stream), service);
    tokio::select! {
        _ = conn => {}
        _ = kill.notified() => {}
        _ = shutdown.changed() => {}
    }
}
