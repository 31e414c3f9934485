//! The JSON Patch (RFC 6902) suite of json-patch/json-patch-tests, read in place from
//! `../shared/conformance/json-patch/` (`tests.json` and `spec_tests.json`).
//!
//! Each record has `doc`, `patch` and either `expected` (the result) or `error` (the patch must be
//! refused). Records marked `disabled` are skipped by the suite's convention and records without a
//! `patch` are comments. For every passing `expected` record the test also checks that [`diff`]
//! of `doc` and `expected` is a patch that this apply turns into `expected`, with its checksum.

use std::path::{Path, PathBuf};

use gateway_policy::{apply_patch, apply_patch_verified, checksum, diff};
use serde_json::Value;

fn suite_dir() -> Option<PathBuf> {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/conformance/json-patch"
    ));
    if dir.is_dir() {
        return Some(dir.to_path_buf());
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "the JSON Patch conformance suite is missing at {}",
            dir.display()
        );
    }
    eprintln!(
        "note: {} is missing; skipping the JSON Patch conformance suite",
        dir.display()
    );
    None
}

#[derive(Default, Debug)]
struct Counts {
    passed: usize,
    skipped_disabled: usize,
    skipped_comment: usize,
    diffs_checked: usize,
    failures: Vec<String>,
}

fn run_file(dir: &Path, file: &str) -> Counts {
    let text = std::fs::read_to_string(dir.join(file)).unwrap();
    let records: Vec<Value> = serde_json::from_str(&text).unwrap();
    assert!(!records.is_empty(), "{file} holds no records");
    let mut counts = Counts::default();
    for (index, record) in records.iter().enumerate() {
        let label = format!(
            "{file}[{index}] {}",
            record.get("comment").and_then(Value::as_str).unwrap_or("")
        );
        if record.get("disabled").and_then(Value::as_bool) == Some(true) {
            counts.skipped_disabled += 1;
            continue;
        }
        let Some(patch) = record.get("patch") else {
            counts.skipped_comment += 1;
            continue;
        };
        let doc = record.get("doc").cloned().unwrap_or(Value::Null);
        let outcome = apply_patch(&doc, patch);
        match (record.get("expected"), record.get("error"), outcome) {
            (Some(expected), _, Ok(actual)) if &actual == expected => {
                counts.passed += 1;
                let round_trip = diff(&doc, expected);
                let sum = checksum(expected).unwrap();
                match apply_patch_verified(&doc, &round_trip, &sum) {
                    Ok(result) if &result == expected => counts.diffs_checked += 1,
                    other => counts
                        .failures
                        .push(format!("{label}: diff did not round-trip: {other:?}")),
                }
            }
            (Some(expected), _, Ok(actual)) => counts
                .failures
                .push(format!("{label}: expected {expected}, got {actual}")),
            (Some(_), _, Err(e)) => counts
                .failures
                .push(format!("{label}: expected success, got error {e}")),
            (None, Some(_), Err(_)) => counts.passed += 1,
            (None, Some(error), Ok(actual)) => counts
                .failures
                .push(format!("{label}: expected error {error}, got {actual}")),
            // A record with neither `expected` nor `error` only has to apply.
            (None, None, Ok(_)) => counts.passed += 1,
            (None, None, Err(e)) => counts
                .failures
                .push(format!("{label}: expected success, got error {e}")),
        }
    }
    counts
}

fn check(file: &str) {
    let Some(dir) = suite_dir() else { return };
    let counts = run_file(&dir, file);
    println!(
        "{file}: {} passed, {} failed, {} skipped (disabled), {} comments; diff round-trips: {}",
        counts.passed,
        counts.failures.len(),
        counts.skipped_disabled,
        counts.skipped_comment,
        counts.diffs_checked
    );
    assert!(counts.passed > 0);
    assert!(
        counts.failures.is_empty(),
        "{} cases failed:\n{}",
        counts.failures.len(),
        counts.failures.join("\n")
    );
}

#[test]
fn tests_json_passes_whole() {
    check("tests.json");
}

#[test]
fn spec_tests_json_passes_whole() {
    check("spec_tests.json");
}
