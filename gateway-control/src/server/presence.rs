//! Presence: which gateways are online, since when, with what status.
//!
//! # Rules
//!
//! * A gateway is online from an accepted `hello` (or a REST heartbeat) until its session
//!   ends or it stays silent for `offline_after_intervals` (1.5) × its heartbeat interval —
//!   the MQTT keep-alive rule. [`Presence::sweep`] applies the silence rule;
//!   [`Presence::next_deadline_ms`] says when it must run next.
//! * Each session gets a new **epoch**. Every update names the epoch it comes from, and
//!   updates from an older epoch are ignored: the late disconnect of a replaced session never
//!   marks a reconnected gateway offline.
//! * Every online/offline change is returned as a [`PresenceChange`] for the event stream.
//! * **A gateway never changes tenant.** The first session (or REST heartbeat) of a gateway id
//!   records its tenant; a later one under another tenant is refused
//!   ([`Error::GatewayNotAdmitted`]) and changes nothing. With a gateway directory the
//!   handshake refuses such sessions before they reach presence; without one, this is what
//!   keeps the first tenant's gateway id its own until the server restarts.

use std::collections::HashMap;

use gateway_proto::{AppliedPolicy, Hello, SessionId, StatusSnapshot};
use serde::{Deserialize, Serialize};

use crate::Error;

/// How a gateway talks to the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Transport {
    /// The WebSocket control channel.
    WebSocket,
    /// The REST fallback (polling).
    Rest,
}

/// What the server knows about one gateway.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct GatewayPresence {
    /// The gateway's id.
    pub gateway_id: String,
    /// Its tenant (from its credentials).
    pub tenant: String,
    /// Online now.
    pub online: bool,
    /// Epoch of the current (or last) session.
    pub epoch: u64,
    /// Id of the current (or last) WebSocket session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub session_id: Option<SessionId>,
    /// How it talks to the server.
    pub transport: Transport,
    /// Start of the current (or last) session, ms since the epoch.
    pub connected_since_ms: i64,
    /// Last sign of life, ms since the epoch.
    pub last_seen_ms: i64,
    /// When it went offline, ms since the epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub offline_since_ms: Option<i64>,
    /// Its heartbeat interval, ms.
    pub heartbeat_interval_ms: u64,
    /// The last status snapshot it sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_status: Option<StatusSnapshot>,
    /// Software from its `hello`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub software: Option<String>,
    /// Capabilities from its `hello`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub capabilities: Vec<String>,
    /// Policies it ran at its last `hello`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub applied_policies: Vec<AppliedPolicy>,
}

/// An online/offline change.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PresenceChange {
    /// The gateway.
    pub gateway_id: String,
    /// Its tenant.
    pub tenant: String,
    /// Online after the change.
    pub online: bool,
    /// Epoch of the session concerned.
    pub epoch: u64,
    /// How it talks to the server.
    pub transport: Transport,
    /// When, ms since the epoch.
    pub at_ms: i64,
    /// Last sign of life, ms since the epoch.
    pub last_seen_ms: i64,
    /// Why (`session started`, `session ended: ...`, `silent for ...`).
    pub reason: String,
}

/// The registry; see the [module docs](self). Not synchronized: wrap it in a mutex.
#[derive(Debug)]
pub struct Presence {
    gateways: HashMap<String, GatewayPresence>,
    next_epoch: u64,
    offline_after_intervals: f64,
    online_now: usize,
}

impl Presence {
    /// An empty registry applying `offline_after_intervals` (1.5 by default in the configs).
    pub fn new(offline_after_intervals: f64) -> Self {
        Presence {
            gateways: HashMap::new(),
            next_epoch: 1,
            offline_after_intervals,
            online_now: 0,
        }
    }

    fn change(p: &GatewayPresence, at_ms: i64, reason: String) -> PresenceChange {
        PresenceChange {
            gateway_id: p.gateway_id.clone(),
            tenant: p.tenant.clone(),
            online: p.online,
            epoch: p.epoch,
            transport: p.transport,
            at_ms,
            last_seen_ms: p.last_seen_ms,
            reason,
        }
    }

    fn take_epoch(&mut self) -> u64 {
        let epoch = self.next_epoch;
        self.next_epoch += 1;
        epoch
    }

    /// Refuse a gateway id known under another tenant.
    fn check_tenant(&self, tenant: &str, gateway_id: &str) -> Result<(), Error> {
        match self.gateways.get(gateway_id) {
            Some(p) if p.tenant != tenant => Err(Error::GatewayNotAdmitted {
                gateway_id: gateway_id.to_owned(),
                tenant: tenant.to_owned(),
            }),
            _ => Ok(()),
        }
    }

    /// The tenant a gateway id is registered under, if it was ever seen.
    pub fn tenant_of(&self, gateway_id: &str) -> Option<&str> {
        self.gateways.get(gateway_id).map(|p| p.tenant.as_str())
    }

    /// A WebSocket session was established. Returns its epoch, and the change if the gateway
    /// was not online before; [`Error::GatewayNotAdmitted`] (nothing changed) when the gateway
    /// id is registered under another tenant.
    pub fn session_started(
        &mut self,
        tenant: &str,
        hello: &Hello,
        session_id: SessionId,
        heartbeat_interval_ms: u64,
        now_ms: i64,
    ) -> Result<(u64, Option<PresenceChange>), Error> {
        self.check_tenant(tenant, &hello.gateway_id)?;
        let epoch = self.take_epoch();
        let entry = self
            .gateways
            .entry(hello.gateway_id.clone())
            .or_insert_with(|| GatewayPresence {
                gateway_id: hello.gateway_id.clone(),
                tenant: tenant.to_owned(),
                online: false,
                epoch,
                session_id: None,
                transport: Transport::WebSocket,
                connected_since_ms: now_ms,
                last_seen_ms: now_ms,
                offline_since_ms: Some(now_ms),
                heartbeat_interval_ms,
                last_status: None,
                software: None,
                capabilities: Vec::new(),
                applied_policies: Vec::new(),
            });
        let was_online = entry.online;
        entry.online = true;
        entry.epoch = epoch;
        entry.session_id = Some(session_id);
        entry.transport = Transport::WebSocket;
        entry.connected_since_ms = now_ms;
        entry.last_seen_ms = now_ms;
        entry.offline_since_ms = None;
        entry.heartbeat_interval_ms = heartbeat_interval_ms;
        entry.software = Some(hello.software.clone());
        entry.capabilities = hello.capabilities.clone();
        entry.applied_policies = hello.applied_policies.clone();
        let change = (!was_online).then(|| Self::change(entry, now_ms, "session started".into()));
        if !was_online {
            self.online_now += 1;
        }
        Ok((epoch, change))
    }

    /// A sign of life from session `epoch` (any frame), with a status snapshot if it was a
    /// heartbeat. Returns false (and changes nothing) for a stale epoch.
    pub fn seen(
        &mut self,
        gateway_id: &str,
        epoch: u64,
        status: Option<StatusSnapshot>,
        now_ms: i64,
    ) -> bool {
        match self.gateways.get_mut(gateway_id) {
            Some(p) if p.epoch == epoch && p.online => {
                p.last_seen_ms = p.last_seen_ms.max(now_ms);
                if status.is_some() {
                    p.last_status = status;
                }
                true
            }
            _ => false,
        }
    }

    /// A heartbeat over the REST fallback: online (a new epoch if it was offline), last seen
    /// now, with its status. Returns the change if it was offline;
    /// [`Error::GatewayNotAdmitted`] (nothing changed) when the gateway id is registered
    /// under another tenant.
    pub fn rest_heartbeat(
        &mut self,
        tenant: &str,
        gateway_id: &str,
        status: StatusSnapshot,
        heartbeat_interval_ms: u64,
        now_ms: i64,
    ) -> Result<Option<PresenceChange>, Error> {
        self.check_tenant(tenant, gateway_id)?;
        if let Some(p) = self.gateways.get_mut(gateway_id)
            && p.online
        {
            p.last_seen_ms = p.last_seen_ms.max(now_ms);
            p.last_status = Some(status);
            return Ok(None);
        }
        let epoch = self.take_epoch();
        let p = self
            .gateways
            .entry(gateway_id.to_owned())
            .or_insert_with(|| GatewayPresence {
                gateway_id: gateway_id.to_owned(),
                tenant: tenant.to_owned(),
                online: false,
                epoch,
                session_id: None,
                transport: Transport::Rest,
                connected_since_ms: now_ms,
                last_seen_ms: now_ms,
                offline_since_ms: None,
                heartbeat_interval_ms,
                last_status: None,
                software: None,
                capabilities: Vec::new(),
                applied_policies: Vec::new(),
            });
        p.online = true;
        p.epoch = epoch;
        p.session_id = None;
        p.transport = Transport::Rest;
        p.connected_since_ms = now_ms;
        p.last_seen_ms = now_ms;
        p.offline_since_ms = None;
        p.heartbeat_interval_ms = heartbeat_interval_ms;
        p.last_status = Some(status);
        let change = Self::change(p, now_ms, "REST heartbeat".into());
        self.online_now += 1;
        Ok(Some(change))
    }

    /// Session `epoch` ended. Marks the gateway offline only if `epoch` is its current one.
    pub fn session_ended(
        &mut self,
        gateway_id: &str,
        epoch: u64,
        reason: &str,
        now_ms: i64,
    ) -> Option<PresenceChange> {
        let p = self.gateways.get_mut(gateway_id)?;
        if p.epoch != epoch || !p.online {
            return None;
        }
        p.online = false;
        p.offline_since_ms = Some(now_ms);
        let change = Self::change(p, now_ms, format!("session ended: {reason}"));
        self.online_now -= 1;
        Some(change)
    }

    fn silence_limit_ms(&self, p: &GatewayPresence) -> i64 {
        (p.heartbeat_interval_ms as f64 * self.offline_after_intervals).ceil() as i64
    }

    /// Mark offline every gateway silent for longer than its limit.
    pub fn sweep(&mut self, now_ms: i64) -> Vec<PresenceChange> {
        let factor = self.offline_after_intervals;
        let mut changes = Vec::new();
        for p in self.gateways.values_mut().filter(|p| p.online) {
            let limit = (p.heartbeat_interval_ms as f64 * factor).ceil() as i64;
            if now_ms.saturating_sub(p.last_seen_ms) > limit {
                p.online = false;
                p.offline_since_ms = Some(now_ms);
                changes.push(Self::change(
                    p,
                    now_ms,
                    format!("silent for more than {limit} ms"),
                ));
            }
        }
        self.online_now -= changes.len();
        changes
    }

    /// When the next gateway would go silent, ms since the epoch.
    pub fn next_deadline_ms(&self) -> Option<i64> {
        self.gateways
            .values()
            .filter(|p| p.online)
            .map(|p| {
                p.last_seen_ms
                    .saturating_add(self.silence_limit_ms(p))
                    .saturating_add(1)
            })
            .min()
    }

    /// One gateway.
    pub fn get(&self, gateway_id: &str) -> Option<&GatewayPresence> {
        self.gateways.get(gateway_id)
    }

    /// Every known gateway, sorted by id.
    pub fn list(&self) -> Vec<GatewayPresence> {
        let mut all: Vec<_> = self.gateways.values().cloned().collect();
        all.sort_by(|a, b| a.gateway_id.cmp(&b.gateway_id));
        all
    }

    /// Gateways online now.
    pub fn online_count(&self) -> usize {
        self.online_now
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gateway_proto::PROTOCOL_VERSION;

    fn hello(id: &str) -> Hello {
        Hello {
            gateway_id: id.into(),
            protocol_version: PROTOCOL_VERSION,
            min_protocol_version: 1,
            capabilities: vec![],
            applied_policies: vec![],
            last_command_id: None,
            software: "t".into(),
        }
    }

    #[test]
    fn a_late_disconnect_of_an_old_session_does_not_mark_a_reconnected_gateway_offline() {
        let mut presence = Presence::new(1.5);
        let (old, change) = presence
            .session_started("t", &hello("gw"), SessionId::new_v7(), 1_000, 0)
            .unwrap();
        assert!(change.unwrap().online);
        let (new, change) = presence
            .session_started("t", &hello("gw"), SessionId::new_v7(), 1_000, 100)
            .unwrap();
        assert!(change.is_none(), "online → online is no change");
        assert!(new > old);
        assert_eq!(presence.session_ended("gw", old, "transport", 200), None);
        assert!(presence.get("gw").unwrap().online);
        assert!(!presence.seen("gw", old, None, 300), "stale epoch ignored");
        let change = presence.session_ended("gw", new, "transport", 400).unwrap();
        assert!(!change.online);
        assert_eq!(change.epoch, new);
    }

    #[test]
    fn silence_beyond_one_and_a_half_intervals_goes_offline_not_before() {
        let mut presence = Presence::new(1.5);
        let (epoch, _) = presence
            .session_started("t", &hello("gw"), SessionId::new_v7(), 1_000, 0)
            .unwrap();
        assert!(presence.seen("gw", epoch, None, 1_000));
        assert_eq!(presence.next_deadline_ms(), Some(2_501));
        assert!(
            presence.sweep(2_500).is_empty(),
            "exactly 1.5 intervals is still online"
        );
        let changes = presence.sweep(2_501);
        assert_eq!(changes.len(), 1);
        assert!(!changes[0].online);
        assert_eq!(presence.online_count(), 0);
        assert_eq!(presence.next_deadline_ms(), None);
    }

    #[test]
    fn rest_heartbeats_bring_a_gateway_online_with_a_new_epoch() {
        let mut presence = Presence::new(1.5);
        let status = crate::gateway::empty_status();
        let change = presence
            .rest_heartbeat("t", "gw", status.clone(), 1_000, 0)
            .unwrap()
            .unwrap();
        assert_eq!(change.transport, Transport::Rest);
        assert!(
            presence
                .rest_heartbeat("t", "gw", status, 1_000, 500)
                .unwrap()
                .is_none()
        );
        assert_eq!(presence.get("gw").unwrap().last_seen_ms, 500);
    }

    #[test]
    fn a_gateway_never_changes_tenant() {
        let mut presence = Presence::new(1.5);
        let status = crate::gateway::empty_status();
        let (epoch, _) = presence
            .session_started("acme", &hello("gw"), SessionId::new_v7(), 1_000, 0)
            .unwrap();
        let refused = presence
            .session_started("globex", &hello("gw"), SessionId::new_v7(), 1_000, 10)
            .unwrap_err();
        assert!(
            matches!(refused, Error::GatewayNotAdmitted { .. }),
            "{refused}"
        );
        assert!(matches!(
            presence.rest_heartbeat("globex", "gw", status.clone(), 1_000, 20),
            Err(Error::GatewayNotAdmitted { .. })
        ));
        let p = presence.get("gw").unwrap();
        assert_eq!(
            (p.tenant.as_str(), p.epoch, p.online),
            ("acme", epoch, true)
        );
        // Offline, it still belongs to acme.
        presence
            .session_ended("gw", epoch, "transport", 30)
            .unwrap();
        assert!(
            presence
                .rest_heartbeat("globex", "gw", status.clone(), 1_000, 40)
                .is_err()
        );
        assert_eq!(presence.tenant_of("gw"), Some("acme"));
        assert!(
            presence
                .rest_heartbeat("acme", "gw", status, 1_000, 50)
                .unwrap()
                .is_some()
        );
        assert_eq!(presence.online_count(), 1);
    }
}
