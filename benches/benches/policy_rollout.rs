#![allow(missing_docs)] // criterion_group! generates an undocumented pub fn.

//! Policy distribution at fleet scale: 10,000 gateways on one `PolicyServer` (SQLite file store,
//! Ed25519 signing on).
//!
//! `cargo bench -p gateway-benches --bench policy_rollout`
//!
//! * `publish_and_plan_10k`: publish a new version (one SQLite transaction) and compute the
//!   signed `policy_update` for each of 10,000 connected gateways that follow the latest version
//!   (a patch against the version each runs).
//! * `track_10k_applied`: feed the 10,000 `applied` statuses of such a rollout into the tracker
//!   and read the rollout summary.
//!
//! * `service_publish_and_plan_10k` / `service_track_10k_applied`: the same two steps through
//!   `PolicyService` (the tokio driver a server binary runs) on a 2-worker runtime: the publish
//!   as an operator (tenancy, events, the 10,000 frames handed to a channel sink), and each
//!   status as its own awaited `policy_status` call (one `spawn_blocking` each), as a binary's
//!   hub bridge sends them. The direct benchmarks above are the baseline in the same run.
//!
//! Target (issue 6): both under 1 s. Each iteration uses a fresh version; setup work that is not
//! part of the measured step (the publish before tracking) is excluded with `iter_custom`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use gateway_policy::{
    Assignment, Outgoing, PolicyServer, PolicyServerConfig, PolicyService, SqlitePolicyStore,
    Target,
};
use gateway_proto::auth::{Principal, Role};
use gateway_proto::{PolicyState, PolicyStatus};
use serde_json::{Value, json};

const GATEWAYS: usize = 10_000;

/// A firewall-like document of about 20 KB: 200 rules.
fn document(version: u64) -> Value {
    let rules: Vec<Value> = (0..200)
        .map(|i| {
            json!({
                "id": format!("rule-{i:03}"),
                "action": if i % 7 == 0 { "deny" } else { "allow" },
                "ports": [22 + i, 443, 8000 + i],
                "comment": format!("managed rule {i} for site group {}", i % 13),
            })
        })
        .collect();
    json!({"mode": "enforce", "revision": version, "rules": rules})
}

struct Setup {
    server: PolicyServer<SqlitePolicyStore>,
    version: u64,
    now: i64,
    _dir: tempfile::TempDir,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let store = SqlitePolicyStore::open(dir.path().join("policies.db")).unwrap();
    let config = PolicyServerConfig {
        signing_key: Some("5a".repeat(32)),
        ..Default::default()
    };
    let mut server = PolicyServer::new(store, config).unwrap();
    server
        .publish("firewall", document(1), "bench", "v1", None, 0)
        .unwrap();
    server
        .assign(
            Assignment {
                policy: "firewall".into(),
                tenant: "acme".into(),
                target: Target::Tenant("acme".into()),
                version: None,
                assigned_at: 0,
                author: "bench".into(),
            },
            None,
            0,
        )
        .unwrap();
    // Every gateway connects and applies version 1.
    for i in 0..GATEWAYS {
        let id = format!("gw-{i:05}");
        for update in server.connect(&id, "acme", &[], 1).unwrap() {
            server
                .handle_status(&id, &applied(&update.name, update.version), 2)
                .unwrap();
        }
    }
    Setup {
        server,
        version: 1,
        now: 10,
        _dir: dir,
    }
}

fn applied(name: &str, version: u64) -> PolicyStatus {
    PolicyStatus {
        name: name.to_owned(),
        version,
        state: PolicyState::Applied,
        reason: None,
        code: None,
        running_version: Some(version),
    }
}

impl Setup {
    /// Publish the next version; returns the updates the server computed.
    fn publish(&mut self) -> Vec<gateway_policy::Outgoing> {
        self.version += 1;
        self.now += 1;
        let change = self
            .server
            .publish(
                "firewall",
                document(self.version),
                "bench",
                "next",
                None,
                self.now,
            )
            .unwrap();
        assert_eq!(change.updates.len(), GATEWAYS);
        change.updates
    }

    /// Report every update applied; returns the rollout's applied count.
    fn track(&mut self, updates: &[gateway_policy::Outgoing]) -> usize {
        for o in updates {
            let status = applied(&o.update.name, o.update.version);
            self.server
                .handle_status(&o.gateway_id, &status, self.now)
                .unwrap();
        }
        let rollout = self.server.tracker().rollouts().last().unwrap().id;
        self.server.rollout_summary(rollout).unwrap().applied
    }
}

fn policy_rollout(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy_rollout");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));

    let mut s = setup();
    group.bench_function("publish_and_plan_10k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let updates = black_box(s.publish());
                total += start.elapsed();
                // Untimed: the gateways apply it, so the next publish patches against it.
                s.track(&updates);
            }
            total
        })
    });

    let mut s = setup();
    group.bench_function("track_10k_applied", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let updates = s.publish(); // untimed
                let start = Instant::now();
                let applied = black_box(s.track(&updates));
                total += start.elapsed();
                assert_eq!(applied, GATEWAYS);
            }
            total
        })
    });
    group.finish();
}

/// [`Setup`] wrapped in a running `PolicyService`, frames going to a channel.
struct ServiceSetup {
    runtime: tokio::runtime::Runtime,
    service: PolicyService,
    sent: tokio::sync::mpsc::UnboundedReceiver<Outgoing>,
    operator: Principal,
    version: u64,
    _dir: tempfile::TempDir,
}

impl ServiceSetup {
    fn new() -> ServiceSetup {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let Setup {
            server,
            version,
            _dir,
            ..
        } = setup();
        let (sink, sent) = tokio::sync::mpsc::unbounded_channel::<Outgoing>();
        let service = runtime
            .block_on(
                PolicyService::builder(server, sink)
                    .events(|_: &str, _: &str, _: Value| {})
                    .start(),
            )
            .unwrap();
        ServiceSetup {
            runtime,
            service,
            sent,
            operator: Principal::new("acme", "bench", Role::Admin),
            version,
            _dir,
        }
    }

    /// Publish the next version as an operator; returns the rollout and the frames sent.
    fn publish(&mut self) -> (u64, Vec<Outgoing>) {
        self.version += 1;
        let result = self
            .runtime
            .block_on(self.service.publish(
                &self.operator,
                "firewall",
                document(self.version),
                "next",
                None,
            ))
            .unwrap();
        let mut updates = Vec::with_capacity(GATEWAYS);
        while let Ok(o) = self.sent.try_recv() {
            updates.push(o);
        }
        assert_eq!(updates.len(), GATEWAYS);
        (result.rollouts[0].id, updates)
    }

    /// Every gateway reports applied, one awaited call each; returns the rollout's applied count.
    fn track(&self, rollout: u64, updates: &[Outgoing]) -> usize {
        self.runtime.block_on(async {
            for o in updates {
                let status = applied(&o.update.name, o.update.version);
                self.service
                    .policy_status(&o.gateway_id, status)
                    .await
                    .unwrap();
            }
            self.service.rollout("acme", rollout).await.unwrap().applied
        })
    }
}

/// The same two steps through `PolicyService`.
fn service_rollout(c: &mut Criterion) {
    let mut group = c.benchmark_group("policy_rollout");
    group.sample_size(10);
    group.measurement_time(Duration::from_secs(20));

    let mut s = ServiceSetup::new();
    group.bench_function("service_publish_and_plan_10k", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let start = Instant::now();
                let (rollout, updates) = black_box(s.publish());
                total += start.elapsed();
                s.track(rollout, &updates); // untimed
            }
            total
        })
    });

    let mut s = ServiceSetup::new();
    group.bench_function("service_track_10k_applied", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                let (rollout, updates) = s.publish(); // untimed
                let start = Instant::now();
                let applied = black_box(s.track(rollout, &updates));
                total += start.elapsed();
                assert_eq!(applied, GATEWAYS);
            }
            total
        })
    });
    group.finish();
}

criterion_group!(benches, policy_rollout, service_rollout);
criterion_main!(benches);
