//! Files the buffer must not touch (foreign, newer format, corrupt), and files it must handle
//! (empty, a record that no longer decodes).

mod common;

use std::path::Path;

use common::*;
use gateway_buffer::{APPLICATION_ID, Buffer, BufferConfig, Error, FORMAT_VERSION};

fn snapshot(path: &Path) -> Vec<u8> {
    std::fs::read(path).unwrap()
}

/// Sidecar files SQLite would have created next to `path`.
fn sidecars(path: &Path) -> Vec<String> {
    ["-wal", "-shm", "-journal"]
        .iter()
        .map(|s| format!("{}{s}", path.display()))
        .filter(|p| Path::new(p).exists())
        .collect()
}

#[tokio::test]
async fn a_text_file_is_refused_and_left_untouched() {
    let (_dir, path) = temp_path();
    std::fs::write(&path, "important notes, not a database\n").unwrap();
    let before = snapshot(&path);
    match Buffer::open(&path, BufferConfig::default()).await {
        Err(e @ Error::NotABuffer { .. }) => {
            let text = e.to_string();
            assert!(text.contains("left untouched"), "{text}");
            assert!(text.contains(&path.display().to_string()), "{text}");
        }
        other => panic!("expected NotABuffer, got {other:?}"),
    }
    assert_eq!(snapshot(&path), before);
    assert!(sidecars(&path).is_empty(), "{:?}", sidecars(&path));
}

#[tokio::test]
async fn a_directory_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    assert!(matches!(
        Buffer::open(dir.path(), BufferConfig::default()).await,
        Err(Error::NotABuffer { .. })
    ));
}

#[tokio::test]
async fn another_applications_sqlite_database_is_refused_and_left_untouched() {
    let (_dir, path) = temp_path();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch(
            "CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT);
             INSERT INTO customers (name) VALUES ('ada'), ('grace');",
        )
        .unwrap();
    }
    let before = snapshot(&path);
    match Buffer::open(&path, BufferConfig::default()).await {
        Err(Error::NotABuffer { reason, .. }) => {
            assert!(reason.contains("another application"), "{reason}")
        }
        other => panic!("expected NotABuffer, got {other:?}"),
    }
    assert_eq!(snapshot(&path), before);
    let conn = rusqlite::Connection::open(&path).unwrap();
    let n: i64 = conn
        .query_row("SELECT count(*) FROM customers", [], |r| r.get(0))
        .unwrap();
    assert_eq!(n, 2);
}

#[tokio::test]
async fn a_newer_format_is_refused_with_advice_and_left_untouched() {
    let (_dir, path) = temp_path();
    let buffer = Buffer::open(&path, BufferConfig::default()).await.unwrap();
    buffer.append(vec![record(1)]).await.unwrap();
    buffer.close().await.unwrap();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute(
            "INSERT INTO buffer_schema (version, created_ms, created_by) VALUES (?1, 0, 'future')",
            [FORMAT_VERSION + 1],
        )
        .unwrap();
        conn.execute_batch("PRAGMA wal_checkpoint(TRUNCATE)")
            .unwrap();
    }
    let before = snapshot(&path);
    match Buffer::open(&path, BufferConfig::default()).await {
        Err(e @ Error::NewerFormat { .. }) => {
            let Error::NewerFormat {
                found, supported, ..
            } = &e
            else {
                unreachable!()
            };
            assert_eq!((*found, *supported), (FORMAT_VERSION + 1, FORMAT_VERSION));
            assert!(e.to_string().contains("newer release"), "{e}");
        }
        other => panic!("expected NewerFormat, got {other:?}"),
    }
    assert_eq!(snapshot(&path), before);
}

#[tokio::test]
async fn a_damaged_file_is_reported_corrupt_and_left_in_place() {
    let (_dir, path) = temp_path();
    let buffer = Buffer::open(&path, BufferConfig::default()).await.unwrap();
    buffer
        .append((0..100).map(|_| raw_record(500)).collect())
        .await
        .unwrap();
    buffer.close().await.unwrap();
    // Keep the 100-byte header, wreck the schema page.
    let mut bytes = snapshot(&path);
    for b in &mut bytes[100..4096] {
        *b = 0xA5;
    }
    std::fs::write(&path, &bytes).unwrap();
    match Buffer::open(&path, BufferConfig::default()).await {
        Err(e @ Error::Corrupt { .. }) => assert!(e.to_string().contains(".recover"), "{e}"),
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(snapshot(&path), bytes);
}

#[tokio::test]
async fn a_truncated_file_is_reported_and_left_in_place() {
    let (_dir, path) = temp_path();
    Buffer::open(&path, BufferConfig::default())
        .await
        .unwrap()
        .close()
        .await
        .unwrap();
    let bytes = snapshot(&path);
    std::fs::write(&path, &bytes[..60]).unwrap();
    let result = Buffer::open(&path, BufferConfig::default()).await;
    assert!(
        matches!(
            result,
            Err(Error::Corrupt { .. } | Error::NotABuffer { .. })
        ),
        "{result:?}"
    );
    assert_eq!(snapshot(&path), &bytes[..60]);
}

#[tokio::test]
async fn a_buffer_without_its_schema_table_is_refused() {
    let (_dir, path) = temp_path();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        conn.execute_batch("CREATE TABLE t (x)").unwrap();
        conn.pragma_update(None, "application_id", APPLICATION_ID)
            .unwrap();
    }
    let before = snapshot(&path);
    assert!(matches!(
        Buffer::open(&path, BufferConfig::default()).await,
        Err(Error::Corrupt { .. })
    ));
    assert_eq!(snapshot(&path), before);
}

#[tokio::test]
async fn an_empty_file_becomes_a_buffer() {
    let (_dir, path) = temp_path();
    std::fs::write(&path, b"").unwrap();
    let buffer = Buffer::open(&path, BufferConfig::default()).await.unwrap();
    buffer.append(vec![record(1)]).await.unwrap();
    buffer.close().await.unwrap();
    let conn = rusqlite::Connection::open(&path).unwrap();
    let app: i32 = conn
        .pragma_query_value(None, "application_id", |r| r.get(0))
        .unwrap();
    assert_eq!(app, APPLICATION_ID);
    let version: i64 = conn
        .query_row("SELECT max(version) FROM buffer_schema", [], |r| r.get(0))
        .unwrap();
    assert_eq!(version, FORMAT_VERSION);
}

#[tokio::test]
async fn a_record_that_no_longer_decodes_moves_to_the_dead_letters() {
    let (_dir, path) = temp_path();
    let buffer = Buffer::open(&path, BufferConfig::default()).await.unwrap();
    let receipt = buffer.append((0..3).map(record).collect()).await.unwrap();
    buffer.close().await.unwrap();
    {
        let conn = rusqlite::Connection::open(&path).unwrap();
        let changed = conn
            .execute(
                "UPDATE records SET data = x'ffffffff' WHERE seq = (SELECT min(seq) + 1 FROM records)",
                [],
            )
            .unwrap();
        assert_eq!(changed, 1);
    }
    let buffer = Buffer::open(&path, BufferConfig::default()).await.unwrap();
    let lease = buffer.lease(10, u64::MAX).await.unwrap().unwrap();
    assert_eq!(ids(&lease.records), vec![receipt.ids[0], receipt.ids[2]]);
    buffer.ack(lease.id).await.unwrap();
    let stats = buffer.stats().await.unwrap();
    assert_eq!((stats.records, stats.bytes), (0, 0));
    assert_eq!((stats.undecodable_total, stats.dead_letters), (1, 1));
    // The undecodable bytes are kept in the table; reading them back skips what does not decode.
    assert!(buffer.dead_letters(10).await.unwrap().is_empty());
    buffer.close().await.unwrap();
}

#[tokio::test]
async fn records_written_by_this_release_read_back_through_the_protobuf_contract() {
    let (_dir, path) = temp_path();
    let buffer = Buffer::open(&path, BufferConfig::default()).await.unwrap();
    let original = record(42).with_attribute("host", "pc-12");
    let receipt = buffer.append(vec![original.clone()]).await.unwrap();
    buffer.close().await.unwrap();
    // Another release (or tool) reads the row with nothing but the .proto contract.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let data: Vec<u8> = conn
        .query_row("SELECT data FROM records", [], |r| r.get(0))
        .unwrap();
    let message = <gateway_proto::pb::Record as prost::Message>::decode(&data[..]).unwrap();
    let decoded = gateway_proto::Record::try_from(message).unwrap();
    assert_eq!(decoded, original.with_id(receipt.ids[0]));
}
