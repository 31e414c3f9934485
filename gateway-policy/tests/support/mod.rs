//! A fleet for the service tests: a `PolicyService` on a real SQLite file whose update sink is a
//! channel, and real `PolicyApplier`s that apply what arrives and answer with their status.

#![allow(dead_code, unreachable_pub)]

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use gateway_policy::{
    AcceptAll, ApplierConfig, MemoryAppliedStore, Outgoing, PolicyApplier, PolicyEvent,
    PolicyServer, PolicyServerConfig, PolicyService, PolicyServiceConfig, PolicySigner,
    PolicyValidator, SqlitePolicyStore,
};
use gateway_proto::auth::{GatewayDirectory, Principal, Role};
use gateway_proto::clock::Clock;
use tokio::sync::mpsc::{UnboundedReceiver, unbounded_channel};

pub const SECRET: [u8; 32] = [7; 32];

/// Wall-clock time that follows tokio's (pausable) clock, from a fixed epoch offset.
#[derive(Debug)]
pub struct TokioClock {
    base_ms: i64,
    start: tokio::time::Instant,
}

impl TokioClock {
    pub fn new(base_ms: i64) -> Arc<TokioClock> {
        Arc::new(TokioClock {
            base_ms,
            start: tokio::time::Instant::now(),
        })
    }
}

impl Clock for TokioClock {
    fn now_ms(&self) -> i64 {
        self.base_ms + self.start.elapsed().as_millis() as i64
    }
}

pub fn admin(tenant: &str, subject: &str) -> Principal {
    Principal::new(tenant, subject, Role::Admin)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub struct Fleet {
    pub service: PolicyService,
    pub updates: UnboundedReceiver<Outgoing>,
    pub events: UnboundedReceiver<PolicyEvent>,
    pub gateways: BTreeMap<String, PolicyApplier<MemoryAppliedStore>>,
    /// Every frame delivered, in order.
    pub delivered: Vec<Outgoing>,
    pub db: PathBuf,
    clock: Arc<dyn Clock>,
    directory: Option<Arc<dyn GatewayDirectory>>,
    _dir: Option<tempfile::TempDir>,
}

impl Fleet {
    pub async fn start(clock: Arc<dyn Clock>) -> Fleet {
        Self::start_with(clock, PolicyServiceConfig::default()).await
    }

    pub async fn start_with(clock: Arc<dyn Clock>, config: PolicyServiceConfig) -> Fleet {
        Self::start_full(clock, config, PolicyServerConfig::default(), None).await
    }

    /// A service that knows the provisioned gateways from `directory`.
    pub async fn start_with_directory(
        clock: Arc<dyn Clock>,
        directory: Arc<dyn GatewayDirectory>,
    ) -> Fleet {
        Self::start_full(
            clock,
            PolicyServiceConfig::default(),
            PolicyServerConfig::default(),
            Some(directory),
        )
        .await
    }

    /// Every knob: the server's configuration (the signing key is always set) and a directory.
    pub async fn start_full(
        clock: Arc<dyn Clock>,
        config: PolicyServiceConfig,
        server_config: PolicyServerConfig,
        directory: Option<Arc<dyn GatewayDirectory>>,
    ) -> Fleet {
        let dir = tempfile::tempdir().unwrap();
        let db = dir.path().join("policies.db");
        let mut fleet = Self::open(&db, clock, config, server_config, directory).await;
        fleet._dir = Some(dir);
        fleet
    }

    /// A service on an existing database (a restart), with no gateways.
    pub async fn open(
        db: &std::path::Path,
        clock: Arc<dyn Clock>,
        config: PolicyServiceConfig,
        server_config: PolicyServerConfig,
        directory: Option<Arc<dyn GatewayDirectory>>,
    ) -> Fleet {
        let store = SqlitePolicyStore::open(db).unwrap();
        let server_config = PolicyServerConfig {
            signing_key: Some(hex(&SECRET)),
            ..server_config
        };
        let server = PolicyServer::new(store, server_config).unwrap();
        let (update_tx, updates) = unbounded_channel();
        let (event_tx, events) = unbounded_channel();
        let mut builder = PolicyService::builder(server, update_tx)
            .clock(clock.clone())
            .events(event_tx)
            .config(config);
        if let Some(directory) = &directory {
            builder = builder.directory_arc(directory.clone());
        }
        let service = builder.start().await.unwrap();
        Fleet {
            service,
            updates,
            events,
            gateways: BTreeMap::new(),
            delivered: Vec::new(),
            db: db.to_owned(),
            clock,
            directory,
            _dir: None,
        }
    }

    /// Stop the service and start a new one on the same database; gateways keep what they run
    /// and are disconnected.
    pub async fn restart(self) -> Fleet {
        let Fleet {
            service,
            gateways,
            db,
            clock,
            directory,
            _dir,
            ..
        } = self;
        drop(service);
        let mut fleet = Self::open(
            &db,
            clock,
            PolicyServiceConfig::default(),
            PolicyServerConfig::default(),
            directory,
        )
        .await;
        fleet.gateways = gateways;
        fleet._dir = _dir;
        fleet
    }

    pub fn add_gateway(&mut self, id: &str, validator: impl PolicyValidator + 'static) {
        let config = ApplierConfig {
            public_key: Some(PolicySigner::from_bytes(&SECRET).verifier().to_hex()),
            ..Default::default()
        };
        let (applier, _) =
            PolicyApplier::open(config, MemoryAppliedStore::new(), validator).unwrap();
        self.gateways.insert(id.to_owned(), applier);
    }

    pub fn add_gateways(&mut self, ids: &[&str]) {
        for id in ids {
            self.add_gateway(id, AcceptAll);
        }
    }

    /// The gateway's session starts: its `hello` lists what its applier runs.
    pub async fn connect(&mut self, id: &str, tenant: &str) {
        let applied = self.gateways[id].applied_policies();
        self.service
            .gateway_connected(id, tenant, &applied)
            .await
            .unwrap();
    }

    /// Deliver one frame to its applier and hand the status back.
    pub async fn deliver(&mut self, outgoing: Outgoing) {
        let applier = self
            .gateways
            .get_mut(&outgoing.gateway_id)
            .unwrap_or_else(|| panic!("a frame for unknown gateway {}", outgoing.gateway_id));
        let status = applier.apply(&outgoing.update, self.clock.now_ms());
        self.delivered.push(outgoing.clone());
        self.service
            .policy_status(&outgoing.gateway_id, status)
            .await
            .unwrap();
    }

    /// Deliver every frame sent so far to its applier and hand the statuses back, until quiet.
    /// Returns how many frames were delivered.
    pub async fn pump(&mut self) -> usize {
        let mut n = 0;
        while let Ok(outgoing) = self.updates.try_recv() {
            n += 1;
            self.deliver(outgoing).await;
        }
        n
    }

    /// The frames sent so far, without delivering them.
    pub fn take_sent(&mut self) -> Vec<Outgoing> {
        let mut out = Vec::new();
        while let Ok(o) = self.updates.try_recv() {
            out.push(o);
        }
        out
    }

    pub fn events(&mut self) -> Vec<PolicyEvent> {
        let mut out = Vec::new();
        while let Ok(e) = self.events.try_recv() {
            out.push(e);
        }
        out
    }

    pub fn running_version(&self, gateway: &str, policy: &str) -> Option<u64> {
        self.gateways[gateway].running(policy).map(|p| p.version)
    }
}

pub fn kinds(events: &[PolicyEvent]) -> Vec<&str> {
    events.iter().map(|e| e.kind.as_str()).collect()
}
