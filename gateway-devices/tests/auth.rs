//! Digest authentication end to end: adapter ↔ simulator over loopback.
#![cfg(feature = "simulator")]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{config_for, pair};
use gateway_devices::hikvision::{HikvisionAdapter, HikvisionConfig};
use gateway_devices::simulator::{ChallengeStyle, Simulator, SimulatorConfig};
use gateway_devices::{
    DeviceAdapter, DeviceCommand, DeviceLimits, DeviceRegistry, Error, HealthState, RegistryConfig,
};

fn wrong_password(simulator: &Simulator) -> HikvisionConfig {
    let mut config = config_for(simulator);
    config.password = "not-the-password".into();
    config
}

#[tokio::test]
async fn one_challenge_then_the_nonce_is_counted_for_every_request() {
    for style in [
        ChallengeStyle::Nvr,
        ChallengeStyle::Camera,
        ChallengeStyle::CameraWithBasic,
    ] {
        let (simulator, adapter) = pair(SimulatorConfig {
            challenge_style: style.clone(),
            ..SimulatorConfig::default()
        })
        .await;
        for _ in 0..5 {
            adapter.execute(&DeviceCommand::Info).await.unwrap();
        }
        let stats = simulator.stats();
        assert_eq!(
            stats.unauthorized, 1,
            "{style:?}: one challenge for five requests"
        );
        assert_eq!(stats.authenticated, 5, "{style:?}");
        assert_eq!(stats.replays, 0, "{style:?}: every nc is new");
        assert_eq!(stats.failed_logins, 0, "{style:?}");
        assert_eq!(stats.requests, 6);
        simulator.shutdown().await;
    }
}

#[tokio::test]
async fn concurrent_requests_share_the_nonce_without_replays() {
    let (simulator, adapter) = pair(SimulatorConfig::default()).await;
    adapter.execute(&DeviceCommand::Info).await.unwrap();
    let adapter = Arc::new(adapter);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let adapter = adapter.clone();
        tasks.push(tokio::spawn(async move {
            adapter.execute(&DeviceCommand::Time).await
        }));
    }
    for task in tasks {
        task.await.unwrap().unwrap();
    }
    let stats = simulator.stats();
    assert_eq!(stats.replays, 0);
    assert_eq!(stats.unauthorized, 1);
    assert_eq!(stats.authenticated, 9);
    simulator.shutdown().await;
}

#[tokio::test]
async fn a_stale_nonce_gets_a_new_challenge_without_failing() {
    let (simulator, adapter) = pair(SimulatorConfig::default()).await;
    adapter.execute(&DeviceCommand::Info).await.unwrap();
    simulator.expire_nonces();
    adapter.execute(&DeviceCommand::Info).await.unwrap();
    let stats = simulator.stats();
    assert_eq!(stats.stale_nonces, 1);
    assert_eq!(stats.unauthorized, 2);
    assert_eq!(stats.failed_logins, 0);
    assert_eq!(stats.authenticated, 2);
    // The adapter keeps working with the new nonce.
    adapter.execute(&DeviceCommand::Time).await.unwrap();
    assert_eq!(simulator.stats().unauthorized, 2);
    simulator.shutdown().await;
}

#[tokio::test]
async fn nonces_that_are_always_stale_end_in_a_bounded_protocol_error() {
    let (simulator, adapter) = pair(SimulatorConfig {
        nonce_ttl_ms: 0,
        ..SimulatorConfig::default()
    })
    .await;
    // A nonce of age 0 ms is not older than 0 ms: let one millisecond pass between requests.
    simulator.set_latency(Duration::from_millis(2));
    let err = adapter.execute(&DeviceCommand::Info).await.unwrap_err();
    assert!(matches!(err, Error::Protocol { .. }), "{err}");
    let stats = simulator.stats();
    assert!(stats.requests <= 4, "bounded: {stats:?}");
    assert_eq!(stats.failed_logins, 0, "stale is not a wrong password");
    simulator.shutdown().await;
}

#[tokio::test]
async fn a_wrong_password_is_tried_once_and_then_not_again() {
    let simulator = Simulator::start(SimulatorConfig::default()).await.unwrap();
    let adapter = HikvisionAdapter::new("door", wrong_password(&simulator)).unwrap();
    let err = adapter.execute(&DeviceCommand::Info).await.unwrap_err();
    let Error::Auth { lockout, reason } = &err else {
        panic!("{err:?}")
    };
    assert!(reason.contains("admin"), "{reason}");
    let lockout = lockout.clone().expect("the simulator reports tries left");
    assert!(!lockout.locked);
    assert_eq!(lockout.retries_left, Some(4));
    let stats = simulator.stats();
    assert_eq!(stats.requests, 2, "one bare request, one with credentials");
    assert_eq!(stats.failed_logins, 1);

    // Through the registry, with retries allowed for `info`: still no further request.
    let registry = DeviceRegistry::builder()
        .with_adapter(
            "door",
            "hikvision-isapi",
            Arc::new(adapter),
            DeviceLimits::default(),
        )
        .build(&RegistryConfig::default())
        .unwrap();
    for _ in 0..10 {
        let report = registry.execute("door", DeviceCommand::Info).await.unwrap();
        assert_eq!(report.state, gateway_devices::CommandState::Failed);
        assert_eq!(
            report.attempts, 1,
            "authentication failures are not retried"
        );
        let failure = report.failure.unwrap();
        assert!(
            failure.message.contains("not contacting"),
            "{}",
            failure.message
        );
    }
    let health = registry.health("door").await.unwrap();
    assert_eq!(health.state, HealthState::AuthFailed);
    assert_eq!(simulator.stats().requests, 2, "no retry storm");
    assert_eq!(simulator.stats().failed_logins, 1);
    simulator.shutdown().await;
}

#[tokio::test]
async fn after_the_backoff_one_more_try_is_made() {
    let simulator = Simulator::start(SimulatorConfig::default()).await.unwrap();
    let mut config = wrong_password(&simulator);
    config.auth_failure_backoff_ms = 500;
    let adapter = HikvisionAdapter::new("door", config).unwrap();
    adapter.execute(&DeviceCommand::Info).await.unwrap_err();
    adapter.execute(&DeviceCommand::Info).await.unwrap_err();
    assert_eq!(simulator.stats().failed_logins, 1);
    tokio::time::sleep(Duration::from_millis(600)).await;
    adapter.execute(&DeviceCommand::Info).await.unwrap_err();
    let stats = simulator.stats();
    assert_eq!(
        stats.failed_logins, 2,
        "exactly one more wrong login after the backoff"
    );
    assert_eq!(
        stats.requests, 3,
        "the cached nonce is reused: no extra bare request"
    );
    simulator.shutdown().await;
}

#[tokio::test]
async fn a_locked_device_stays_401_and_the_adapter_waits_for_the_unlock() {
    let simulator = Simulator::start(SimulatorConfig {
        lockout_after: 2,
        ..SimulatorConfig::default()
    })
    .await
    .unwrap();
    // An adapter without backoff, to reach the lock.
    let mut config = wrong_password(&simulator);
    config.auth_failure_backoff_ms = 0;
    let careless = HikvisionAdapter::new("door", config).unwrap();
    careless.execute(&DeviceCommand::Info).await.unwrap_err();
    let err = careless.execute(&DeviceCommand::Info).await.unwrap_err();
    let Error::Auth {
        lockout: Some(lockout),
        ..
    } = err
    else {
        panic!("{err:?}")
    };
    assert!(lockout.locked);
    assert_eq!(lockout.unlock_in_secs, Some(1800));

    // Now even the right password is refused with 401 while locked; the adapter reads the
    // lock and stays away for its duration.
    let adapter = HikvisionAdapter::new("door", config_for(&simulator)).unwrap();
    let err = adapter.execute(&DeviceCommand::Info).await.unwrap_err();
    let Error::Auth {
        lockout: Some(lockout),
        reason,
    } = err
    else {
        panic!()
    };
    assert!(lockout.locked, "{reason}");
    assert!(reason.contains("locked"), "{reason}");
    let before = simulator.stats().requests;
    let err = adapter.execute(&DeviceCommand::Info).await.unwrap_err();
    assert!(err.to_string().contains("not contacting"), "{err}");
    assert_eq!(simulator.stats().requests, before);
    assert!(
        simulator
            .requests()
            .iter()
            .all(|r| r.status == 401 || r.status == 0)
    );

    // Once the device unlocks (and the adapter's wait is over), the right password works.
    simulator.unlock();
    let fresh = HikvisionAdapter::new("door", config_for(&simulator)).unwrap();
    fresh.execute(&DeviceCommand::Info).await.unwrap();
    simulator.shutdown().await;
}

#[tokio::test]
async fn after_a_device_reboot_the_new_nonce_is_answered() {
    let (simulator, adapter) = pair(SimulatorConfig {
        reboot_downtime_ms: 0,
        ..SimulatorConfig::default()
    })
    .await;
    adapter.execute(&DeviceCommand::Info).await.unwrap();
    adapter.execute(&DeviceCommand::Reboot).await.unwrap();
    assert_eq!(simulator.stats().reboots, 1);
    // The device forgot our nonce; its 401 is not stale, but the credentials worked before.
    adapter.execute(&DeviceCommand::Info).await.unwrap();
    let stats = simulator.stats();
    assert_eq!(stats.failed_logins, 0);
    assert_eq!(stats.unauthorized, 2);
    simulator.shutdown().await;
}

#[tokio::test]
async fn basic_only_devices_need_an_explicit_opt_in() {
    let simulator = Simulator::start(SimulatorConfig {
        challenge_style: ChallengeStyle::BasicOnly,
        ..SimulatorConfig::default()
    })
    .await
    .unwrap();
    let adapter = HikvisionAdapter::new("cam", config_for(&simulator)).unwrap();
    let err = adapter.execute(&DeviceCommand::Info).await.unwrap_err();
    assert!(err.to_string().contains("allow_basic_auth"), "{err}");
    assert_eq!(simulator.stats().requests, 1);
    let mut config = config_for(&simulator);
    config.allow_basic_auth = true;
    let adapter = HikvisionAdapter::new("cam", config).unwrap();
    adapter.execute(&DeviceCommand::Info).await.unwrap();
    adapter.execute(&DeviceCommand::Info).await.unwrap();
    let stats = simulator.stats();
    assert_eq!(stats.authenticated, 2);
    assert_eq!(stats.failed_logins, 0);
    simulator.shutdown().await;
}

#[tokio::test]
async fn a_401_without_a_challenge_is_an_auth_error() {
    let (simulator, adapter) = pair(SimulatorConfig::default()).await;
    simulator.answer_raw_next(
        1,
        gateway_devices::simulator::Reply::raw(401, "text/html", "Document Error: Unauthorized"),
    );
    let err = adapter.execute(&DeviceCommand::Info).await.unwrap_err();
    assert!(matches!(err, Error::Auth { .. }), "{err}");
    simulator.shutdown().await;
}
