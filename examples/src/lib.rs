//! The example binaries' wiring, shared so the `demo` can run the `server`, the `gateway` and
//! simulated agents in one process exactly as the separate binaries run them.
//!
//! * [`server`] — `server`: ingest, control hub, commands, policies, events, audit.
//! * [`gateway`] — `gateway`: collector API, buffer, uplink, control client, policy applier,
//!   devices.
//! * [`agent_sim`] — `agent-sim`: simulated agents posting records.
//! * [`config`], [`telemetry`] — configuration files and process-wide logging/metrics.
//!
//! Everything an integrator would reuse lives in the library crates; this crate only connects
//! them.

#![forbid(unsafe_code)]

pub mod agent_sim;
pub mod audit;
pub mod config;
pub mod gateway;
mod policy_bridge;
pub mod server;
pub mod telemetry;

/// Resolve on Ctrl-C or SIGTERM.
pub async fn wait_for_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(_) => {
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// Answers for requests no route takes, with the workspace's error body: 404 `not_found` for an
/// unknown path, 405 `method_not_allowed` for a known path with another method.
pub fn with_error_fallbacks(router: axum::Router) -> axum::Router {
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use gateway_proto::{ErrorBody, ErrorCode};

    fn answer(code: ErrorCode, message: String) -> axum::response::Response {
        let body = ErrorBody::new(code, message);
        let status = StatusCode::from_u16(body.http_status()).unwrap_or(StatusCode::NOT_FOUND);
        (status, axum::Json(body)).into_response()
    }
    router
        .method_not_allowed_fallback(
            |method: axum::http::Method, uri: axum::http::Uri| async move {
                answer(
                    ErrorCode::MethodNotAllowed,
                    format!("{} does not accept {method}", uri.path()),
                )
            },
        )
        .fallback(|uri: axum::http::Uri| async move {
            answer(ErrorCode::NotFound, format!("no route for {}", uri.path()))
        })
}

/// Create `dir` if needed and take an exclusive lock on `dir/LOCK` for the life of the
/// returned file, so two processes never run on the same data (a record store written by two
/// processes would keep two copies of a record; a buffer, two owners).
pub fn lock_data_dir(dir: &std::path::Path) -> anyhow::Result<std::fs::File> {
    use anyhow::Context;
    std::fs::create_dir_all(dir)
        .with_context(|| format!("creating the data directory {}", dir.display()))?;
    let path = dir.join("LOCK");
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .with_context(|| format!("opening {}", path.display()))?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(std::fs::TryLockError::WouldBlock) => anyhow::bail!(
            "another process is using the data directory {} (it holds {})",
            dir.display(),
            path.display()
        ),
        Err(std::fs::TryLockError::Error(e)) => {
            Err(e).with_context(|| format!("locking {}", path.display()))
        }
    }
}
