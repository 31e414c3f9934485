//! A crash test that really crashes: a child process (this test binary, re-invoked with an
//! environment variable) appends in a loop from several tasks and prints each id once `append`
//! returned; the parent kills it with SIGKILL at a random moment, several rounds, reopens the
//! file and checks that every printed id is present exactly once.

mod common;

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use common::*;
use gateway_buffer::{Buffer, BufferConfig, Durability};
use gateway_proto::RecordId;
use rand::Rng;

const CHILD_PATH: &str = "GATEWAY_BUFFER_CRASH_CHILD_PATH";
const CHILD_DURABILITY: &str = "GATEWAY_BUFFER_CRASH_CHILD_DURABILITY";
const TEST_NAME: &str = "sigkill_never_loses_or_duplicates_an_acknowledged_append";
const ROUNDS: usize = 6;

#[test]
fn sigkill_never_loses_or_duplicates_an_acknowledged_append() {
    if let Ok(path) = std::env::var(CHILD_PATH) {
        let durability = match std::env::var(CHILD_DURABILITY).as_deref() {
            Ok("full") => Durability::Full,
            _ => Durability::Normal,
        };
        run_child(Path::new(&path), durability);
        return;
    }

    let (_dir, path) = temp_path();
    let mut printed: Vec<RecordId> = Vec::new();
    let mut rng = rand::rng();
    for round in 0..ROUNDS {
        let durability = if round % 2 == 0 { "normal" } else { "full" };
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", TEST_NAME, "--nocapture", "--test-threads", "1"])
            .env(CHILD_PATH, &path)
            .env(CHILD_DURABILITY, durability)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("re-invoke the test binary as the child");
        let stdout = child.stdout.take().unwrap();
        let seen = Arc::new(AtomicUsize::new(0));
        let reader_seen = seen.clone();
        let reader = std::thread::spawn(move || read_ids(stdout, &reader_seen));

        // Let the child get going, then kill it at a random moment.
        let started = Instant::now();
        while seen.load(Ordering::SeqCst) == 0 {
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "child printed no id within 30 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        std::thread::sleep(Duration::from_millis(rng.random_range(0..400)));
        child.kill().expect("SIGKILL the child");
        let status = child.wait().unwrap();
        assert!(!status.success(), "the child must die by the signal");
        let ids = reader.join().unwrap();
        assert!(!ids.is_empty());
        printed.extend(ids);

        let counts = stored_ids(&path);
        for id in &printed {
            assert_eq!(
                counts.get(id).copied(),
                Some(1),
                "round {round}: acknowledged id {id} stored {:?} times",
                counts.get(id)
            );
        }
        assert!(
            counts.values().all(|&n| n == 1),
            "round {round}: a record is stored twice"
        );
        assert!(counts.len() >= printed.len());
        eprintln!(
            "round {round} ({durability}): {} acknowledged ids, {} stored, all present once",
            printed.len(),
            counts.len()
        );
    }
}

/// Complete `ID <uuid>\n` lines from the child; a line cut by the kill is ignored.
fn read_ids(stdout: std::process::ChildStdout, seen: &AtomicUsize) -> Vec<RecordId> {
    let mut reader = BufReader::new(stdout);
    let mut ids = Vec::new();
    let mut line = Vec::new();
    loop {
        line.clear();
        match reader.read_until(b'\n', &mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
        if line.last() != Some(&b'\n') {
            break;
        }
        let text = String::from_utf8_lossy(&line);
        if let Some(id) = text.strip_prefix("ID ") {
            ids.push(id.trim().parse().expect("the child prints valid ids"));
            seen.fetch_add(1, Ordering::SeqCst);
        }
    }
    ids
}

/// Open the file after the crash and count every stored id.
fn stored_ids(path: &Path) -> HashMap<RecordId, usize> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let buffer = Buffer::open(path, BufferConfig::default()).await.unwrap();
        let mut counts = HashMap::new();
        if let Some(lease) = buffer.lease(usize::MAX, u64::MAX).await.unwrap() {
            for id in ids(&lease.records) {
                *counts.entry(id).or_insert(0) += 1;
            }
        }
        let stats = buffer.stats().await.unwrap();
        assert_eq!(stats.records as usize, counts.values().sum::<usize>());
        buffer.close().await.unwrap();
        counts
    })
}

/// The child: append forever from several tasks (single records and batches), with a consumer
/// leasing and releasing alongside, printing each id after its append returned.
fn run_child(path: &Path, durability: Durability) {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let config = BufferConfig {
            durability,
            ..Default::default()
        };
        let buffer = Buffer::open(path, config).await.unwrap();
        let mut tasks = Vec::new();
        for task in 0..8u64 {
            let buffer = buffer.clone();
            tasks.push(tokio::spawn(async move {
                let mut n = 0u64;
                loop {
                    let batch = if task % 2 == 0 { 1 } else { 1 + n % 50 };
                    let records = (0..batch)
                        .map(|i| record(task << 40 | n << 8 | i))
                        .collect();
                    let receipt = buffer.append(records).await.unwrap();
                    let mut out = String::new();
                    for id in receipt.ids {
                        out.push_str(&format!("ID {id}\n"));
                    }
                    print!("{out}");
                    n += 1;
                }
            }));
        }
        let consumer = buffer.clone();
        tasks.push(tokio::spawn(async move {
            loop {
                if let Some(lease) = consumer.lease(100, u64::MAX).await.unwrap() {
                    consumer.release(lease.id).await.unwrap();
                }
                tokio::task::yield_now().await;
            }
        }));
        // Never finishes on its own: the parent kills it. Bail out if the parent is gone.
        tokio::time::sleep(Duration::from_secs(60)).await;
        std::process::exit(3);
    });
}
