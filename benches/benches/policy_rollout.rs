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
//! Target (issue 6): both under 1 s. Each iteration uses a fresh version; setup work that is not
//! part of the measured step (the publish before tracking) is excluded with `iter_custom`.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use gateway_policy::{
    Assignment, PolicyServer, PolicyServerConfig, SqlitePolicyStore, Target,
};
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
    server.publish("firewall", document(1), "bench", "v1", None, 0).unwrap();
    server
        .assign(
            Assignment {
                policy: "firewall".into(),
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
            server.handle_status(&id, &applied(&update.name, update.version), 2).unwrap();
        }
    }
    Setup { server, version: 1, now: 10, _dir: dir }
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
            .publish("firewall", document(self.version), "bench", "next", None, self.now)
            .unwrap();
        assert_eq!(change.updates.len(), GATEWAYS);
        change.updates
    }

    /// Report every update applied; returns the rollout's applied count.
    fn track(&mut self, updates: &[gateway_policy::Outgoing]) -> usize {
        for o in updates {
            let status = applied(&o.update.name, o.update.version);
            self.server.handle_status(&o.gateway_id, &status, self.now).unwrap();
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

criterion_group!(benches, policy_rollout);
criterion_main!(benches);
