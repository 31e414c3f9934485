//! The glue between the control hub and the policy service: gateway-control and
//! gateway-policy do not depend on each other, so the server binary connects them.
//!
//! * policy updates the service produces go out through the hub (dropped for gateways that are
//!   not connected: the service sends them again when the gateway's `hello` arrives);
//! * the hub's session and `policy_status` events go into the service;
//! * the service's rollout, status and audit events go into the server's event log.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;
use gateway_control::server::{EventLog, Hub, HubEvent};
use gateway_policy::{
    AuditEvent, PolicyEvent, PolicyServer, PolicyServerConfig, PolicyService, SqlitePolicyStore,
};
use gateway_proto::auth::{Authenticator, GatewayDirectory};
use gateway_proto::clock::Clock;
use gateway_proto::{ControlFrame, PolicyUpdate};
use serde_json::Value;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;

use crate::audit::{AuditEntry, AuditLog};

/// What the bridge needs.
pub(crate) struct PolicyWiring {
    pub(crate) db_path: PathBuf,
    pub(crate) config: PolicyServerConfig,
    pub(crate) hub: Hub,
    pub(crate) events: EventLog,
    pub(crate) auth: Arc<dyn Authenticator>,
    pub(crate) directory: Arc<dyn GatewayDirectory>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) audit: AuditLog,
}

/// What the server mounts and keeps running.
pub(crate) struct PolicyParts {
    /// The service, for the `policy.apply` command.
    pub(crate) service: PolicyService,
    /// The operator API for policies.
    pub(crate) router: axum::Router,
    /// The task forwarding hub events.
    pub(crate) tasks: Vec<JoinHandle<()>>,
}

pub(crate) async fn start(wiring: PolicyWiring) -> anyhow::Result<PolicyParts> {
    let PolicyWiring {
        db_path,
        config,
        hub,
        events,
        auth,
        directory,
        clock,
        audit,
    } = wiring;
    // Opening and loading SQLite blocks: keep it off the async workers.
    let server = tokio::task::spawn_blocking(move || -> anyhow::Result<_> {
        let store = SqlitePolicyStore::open(&db_path)
            .with_context(|| format!("opening the policy store {}", db_path.display()))?;
        PolicyServer::new(store, config).context("configuring the policy server")
    })
    .await
    .context("the policy store task panicked")??;
    let sender = hub.clone();
    let service = PolicyService::builder(server, move |gateway_id: &str, update: PolicyUpdate| {
        // Not connected: dropped; the service resends on the gateway's next hello.
        let _ = sender.send_frame(gateway_id, ControlFrame::PolicyUpdate(update));
    })
    .clock(clock.clone())
    .events(move |kind: &str, tenant: &str, data: Value| {
        if kind == PolicyEvent::AUDIT {
            // Operator actions also go to the permanent audit log (the event stream prunes).
            if let Ok(event) = serde_json::from_value::<AuditEvent>(data.clone()) {
                let entry = AuditEntry {
                    actor: event.actor,
                    tenant: event.tenant,
                    action: event.action,
                    target: event.target,
                    result: event.result,
                    detail: event.detail,
                };
                if let Err(e) = audit.record_blocking(clock.now_ms(), &entry) {
                    tracing::error!(error = %e, "could not write a policy audit entry");
                }
            }
        }
        events.publish(kind, Some(tenant), data);
    })
    .directory_arc(directory)
    .start()
    .await
    .context("starting the policy service")?;

    let router = service.operator_router(auth);
    let forward = tokio::spawn(forward_hub_events(hub, service.clone()));
    Ok(PolicyParts {
        service,
        router,
        tasks: vec![forward],
    })
}

async fn forward_hub_events(hub: Hub, service: PolicyService) {
    let mut events = hub.subscribe();
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            Err(RecvError::Lagged(missed)) => {
                // Missed sessions settle on the gateways' next hello.
                tracing::warn!(missed, "the policy bridge fell behind the hub's events");
                continue;
            }
            Err(RecvError::Closed) => return,
        };
        let result = match event {
            HubEvent::SessionEstablished {
                gateway_id,
                tenant,
                hello,
                ..
            } => {
                service
                    .gateway_connected(&gateway_id, &tenant, &hello.applied_policies)
                    .await
            }
            HubEvent::Frame {
                gateway_id, frame, ..
            } => match frame.as_ref() {
                ControlFrame::PolicyStatus(status) => {
                    service.policy_status(&gateway_id, status.clone()).await
                }
                _ => Ok(()),
            },
            HubEvent::SessionClosed {
                gateway_id,
                session_id,
                ..
            } => {
                // A late close of an old session must not mark a reconnected gateway gone.
                let current = hub.session_of(&gateway_id).map(|(id, _)| id);
                if current.is_none() || current == Some(session_id) {
                    service.gateway_disconnected(&gateway_id).await
                } else {
                    Ok(())
                }
            }
            _ => Ok(()),
        };
        if let Err(e) = result {
            tracing::warn!(error = %e, "the policy service refused a hub event");
        }
    }
}
