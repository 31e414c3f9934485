//! RFC 8785 (JCS) vectors from the RFC's reference implementation (cyberphone/json-canonicalization),
//! read in place from `../shared/conformance/jcs/`: canonicalising each input must give the output
//! file's bytes exactly, and the checksum is SHA-256 over exactly those bytes.

use std::fs;
use std::path::{Path, PathBuf};

fn suite_dir() -> Option<PathBuf> {
    let dir = Path::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/conformance/jcs"
    ));
    if dir.is_dir() {
        return Some(dir.to_path_buf());
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!("the JCS conformance suite is missing at {}", dir.display());
    }
    eprintln!(
        "note: {} is missing; skipping the JCS conformance suite",
        dir.display()
    );
    None
}

#[test]
fn every_jcs_vector_canonicalises_byte_for_byte() {
    let Some(dir) = suite_dir() else { return };
    let mut names: Vec<_> = fs::read_dir(dir.join("input"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    names.sort();
    assert!(!names.is_empty(), "no JCS input vectors found");
    let mut failures = Vec::new();
    for name in &names {
        let input = fs::read_to_string(dir.join("input").join(name)).unwrap();
        let expected = fs::read(dir.join("output").join(name)).unwrap();
        let actual = gateway_policy::canonicalize_text(&input).unwrap();
        if actual != expected {
            failures.push(format!(
                "{name:?}:\n  expected {}\n  actual   {}",
                String::from_utf8_lossy(&expected),
                String::from_utf8_lossy(&actual)
            ));
            continue;
        }
        // The checksum is SHA-256 over exactly these bytes.
        let doc: serde_json::Value = serde_json::from_str(&input).unwrap();
        assert_eq!(
            gateway_policy::checksum(&doc).unwrap(),
            gateway_policy::checksum_of_canonical(&expected)
        );
    }
    println!(
        "JCS vectors: {} passed, {} failed",
        names.len() - failures.len(),
        failures.len()
    );
    assert!(
        failures.is_empty(),
        "JCS vectors failed:\n{}",
        failures.join("\n")
    );
}
