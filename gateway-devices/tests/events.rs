//! The access-control event source: paging, resume after a restart with a persisted cursor,
//! and the edge cases devices produce.
#![cfg(feature = "simulator")]

mod common;

use std::collections::BTreeSet;
use std::sync::Arc;

use common::config_for;
use gateway_devices::hikvision::{EventStart, HikvisionAdapter, HikvisionConfig};
use gateway_devices::simulator::{Reply, Simulator, SimulatorConfig};
use gateway_devices::{Error, EventCursor, EventSource};
use gateway_proto::Record;
use gateway_proto::clock::ManualClock;
use serde_json::json;

const T0: i64 = 1_780_000_000_000;

async fn simulator_at(clock: &ManualClock) -> Simulator {
    Simulator::bind(
        "127.0.0.1:0".parse().unwrap(),
        SimulatorConfig::default(),
        Arc::new(clock.clone()),
    )
    .await
    .unwrap()
}

fn adapter(
    simulator: &Simulator,
    clock: &ManualClock,
    tune: impl FnOnce(&mut HikvisionConfig),
) -> HikvisionAdapter {
    let mut config = config_for(simulator);
    tune(&mut config);
    HikvisionAdapter::with_clock("gate", config, Arc::new(clock.clone())).unwrap()
}

fn serials(records: &[Record]) -> Vec<u64> {
    records
        .iter()
        .map(|r| r.attributes["serial_no"].parse().unwrap())
        .collect()
}

fn acs_searches(simulator: &Simulator) -> usize {
    simulator
        .requests()
        .iter()
        .filter(|r| r.path.starts_with("/ISAPI/AccessControl/AcsEvent") && r.status == 200)
        .count()
}

#[tokio::test]
async fn pages_are_followed_while_the_device_says_more() {
    let clock = ManualClock::new(T0);
    let simulator = simulator_at(&clock).await;
    for i in 0..75 {
        clock.advance_ms(1_000);
        simulator.push_card_event(&format!("{i}"), "Someone", &format!("card-{i}"));
    }
    // The device caps pages at 30 even when asked for 100.
    let adapter = adapter(&simulator, &clock, |c| c.events.page_size = 100);
    let batch = adapter.poll_events(None, 1_000).await.unwrap();
    assert_eq!(serials(&batch.records), (1..=75).collect::<Vec<_>>());
    assert!(!batch.more);
    assert_eq!(acs_searches(&simulator), 3, "positions 0, 30 and 60");
    // Records are ordered, stamped with the event time, and go to the `devices` stream.
    assert_eq!(batch.records[0].timestamp_ms, T0 + 1_000);
    assert!(
        batch
            .records
            .iter()
            .all(|r| r.stream == "devices" && r.source == "gate")
    );
    let ids: BTreeSet<_> = batch.records.iter().map(|r| r.id.unwrap()).collect();
    assert_eq!(ids.len(), 75);
    simulator.shutdown().await;
}

#[tokio::test]
async fn a_restart_with_the_persisted_cursor_neither_repeats_nor_skips() {
    let clock = ManualClock::new(T0);
    let simulator = simulator_at(&clock).await;
    // Many events in the same second: only the serial number tells them apart.
    for i in 0..50 {
        simulator.push_card_event(&format!("{i}"), "Same Second", "c");
    }
    clock.advance_ms(1_000);
    for i in 50..70 {
        simulator.push_event(5, 22, json!({"doorNo": 1, "note": i}));
    }
    let dir = tempfile::tempdir().unwrap();
    let cursor_file = dir.path().join("gate.cursor");
    let mut delivered = Vec::new();

    // First run: stop after two polls of 20, persisting the cursor after each batch.
    {
        let adapter = adapter(&simulator, &clock, |_| {});
        let mut cursor: Option<EventCursor> = None;
        for _ in 0..2 {
            let batch = adapter.poll_events(cursor.as_ref(), 20).await.unwrap();
            assert_eq!(batch.records.len(), 20);
            assert!(batch.more);
            delivered.extend(batch.records);
            cursor = batch.cursor;
            std::fs::write(&cursor_file, serde_json::to_string(&cursor).unwrap()).unwrap();
        }
    }
    // "Restart": a new adapter, the cursor read back from disk.
    let adapter = adapter(&simulator, &clock, |_| {});
    let mut cursor: Option<EventCursor> =
        serde_json::from_str(&std::fs::read_to_string(&cursor_file).unwrap()).unwrap();
    loop {
        let batch = adapter.poll_events(cursor.as_ref(), 20).await.unwrap();
        delivered.extend(batch.records);
        cursor = batch.cursor;
        if !batch.more {
            break;
        }
    }
    assert_eq!(serials(&delivered), (1..=70).collect::<Vec<_>>());

    // Nothing new: an empty batch, the cursor unchanged.
    let again = adapter.poll_events(cursor.as_ref(), 20).await.unwrap();
    assert!(again.records.is_empty());
    assert_eq!(again.cursor, cursor);

    // New events arrive, in the same second as the last one and later.
    simulator.push_event(5, 21, json!({"doorNo": 2}));
    clock.advance_ms(3_000);
    simulator.push_event(5, 22, json!({"doorNo": 2}));
    let fresh = adapter.poll_events(cursor.as_ref(), 20).await.unwrap();
    assert_eq!(serials(&fresh.records), [71, 72]);
    simulator.shutdown().await;
}

#[tokio::test]
async fn a_re_read_event_keeps_its_record_id() {
    let clock = ManualClock::new(T0);
    let simulator = simulator_at(&clock).await;
    simulator.push_event(5, 21, json!({"doorNo": 1}));
    let adapter = adapter(&simulator, &clock, |_| {});
    let first = adapter.poll_events(None, 10).await.unwrap();
    let second = adapter.poll_events(None, 10).await.unwrap();
    assert_eq!(
        first.records, second.records,
        "same events, same record ids"
    );
    assert_eq!(first.records[0].attributes["event"], "door_unlocked");
    simulator.shutdown().await;
}

#[tokio::test]
async fn an_empty_log_is_no_match() {
    let clock = ManualClock::new(T0);
    let simulator = simulator_at(&clock).await;
    let adapter = adapter(&simulator, &clock, |_| {});
    let batch = adapter.poll_events(None, 10).await.unwrap();
    assert!(batch.records.is_empty());
    assert!(!batch.more);
    assert_eq!(
        batch.cursor, None,
        "nothing delivered yet: start from the beginning again"
    );
    simulator.shutdown().await;
}

#[tokio::test]
async fn starting_now_skips_the_history_but_not_what_follows() {
    let clock = ManualClock::new(T0);
    let simulator = simulator_at(&clock).await;
    simulator.push_card_event("1", "Old", "c");
    clock.advance_ms(10_000);
    let adapter = adapter(&simulator, &clock, |c| c.events.start = EventStart::Now);
    let batch = adapter.poll_events(None, 10).await.unwrap();
    assert!(batch.records.is_empty());
    let cursor = batch
        .cursor
        .expect("a cursor at the start time, to persist");
    clock.advance_ms(2_000);
    simulator.push_card_event("2", "New", "c");
    let batch = adapter.poll_events(Some(&cursor), 10).await.unwrap();
    assert_eq!(serials(&batch.records), [2]);
    simulator.shutdown().await;
}

#[tokio::test]
async fn starting_at_a_given_time() {
    let clock = ManualClock::new(T0);
    let simulator = simulator_at(&clock).await;
    simulator.push_card_event("1", "Old", "c");
    clock.advance_ms(60_000);
    simulator.push_card_event("2", "New", "c");
    let start = gateway_devices::time::format_datetime(T0 + 30_000, 3_600);
    let adapter = adapter(&simulator, &clock, |c| {
        c.events.start = EventStart::At(start)
    });
    let batch = adapter.poll_events(None, 10).await.unwrap();
    assert_eq!(serials(&batch.records), [2]);
    simulator.shutdown().await;
}

#[tokio::test]
async fn unreadable_cursors_and_items_and_device_errors() {
    let clock = ManualClock::new(T0);
    let simulator = simulator_at(&clock).await;
    let adapter = adapter(&simulator, &clock, |_| {});
    let err = adapter
        .poll_events(Some(&EventCursor::new("{\"v\":9}")), 10)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::InvalidCursor { .. }), "{err}");

    // An item without a serial number is skipped; the readable ones come through.
    let page = json!({"AcsEvent": {"searchID": "x", "responseStatusStrg": "OK", "numOfMatches": 2,
    "totalMatches": 2, "InfoList": [
        {"major": 5, "minor": 1, "time": "2026-01-01T00:00:00+04:00"},
        {"major": 5, "minor": 1, "time": "2026-01-01T00:00:01+04:00", "serialNo": 9}
    ]}});
    simulator.answer_raw_next(1, Reply::raw(200, "application/json", page.to_string()));
    let batch = adapter.poll_events(None, 10).await.unwrap();
    assert_eq!(serials(&batch.records), [9]);

    // MORE with an empty page would loop forever: it is an error instead.
    let page = json!({"AcsEvent": {"searchID": "x", "responseStatusStrg": "MORE", "numOfMatches": 0, "totalMatches": 5}});
    simulator.answer_raw_next(1, Reply::raw(200, "application/json", page.to_string()));
    let err = adapter.poll_events(None, 10).await.unwrap_err();
    assert!(matches!(err, Error::Protocol { .. }), "{err}");

    // The device's JSON error keeps its errorMsg.
    simulator.fail_next(1, Reply::bad_json_content("startTime"));
    let err = adapter.poll_events(None, 10).await.unwrap_err();
    let device = err.device_error().unwrap();
    assert_eq!(device.http_status, Some(400));
    assert_eq!(device.message, "startTime");
    simulator.shutdown().await;
}

#[tokio::test]
async fn the_registry_polls_and_the_events_can_be_turned_off() {
    let clock = ManualClock::new(T0);
    let simulator = simulator_at(&clock).await;
    simulator.push_card_event("1", "A", "c");
    let config = gateway_devices::RegistryConfig::from_json(
        &json!({"devices": {
            "gate": {"kind": "hikvision-isapi", "settings": {
                "base_url": simulator.base_url(), "username": "admin",
                "password": SimulatorConfig::DEFAULT_PASSWORD,
                "events": {"stream": "access"}}},
            "camera": {"kind": "hikvision-isapi", "settings": {
                "base_url": simulator.base_url(), "username": "admin",
                "password": SimulatorConfig::DEFAULT_PASSWORD,
                "events": {"enabled": false}}}
        }})
        .to_string(),
    )
    .unwrap();
    let registry = gateway_devices::DeviceRegistry::builder()
        .with_factory(gateway_devices::hikvision::HikvisionFactory)
        .with_clock(Arc::new(clock.clone()))
        .build(&config)
        .unwrap();
    assert_eq!(registry.event_device_ids(), ["gate"]);
    let batch = registry.poll_events("gate", None, 10).await.unwrap();
    assert_eq!(batch.records.len(), 1);
    assert_eq!(batch.records[0].stream, "access");
    assert!(matches!(
        registry.poll_events("camera", None, 10).await,
        Err(Error::NoEventSource { .. })
    ));
    simulator.shutdown().await;
}
