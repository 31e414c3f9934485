//! Helpers shared by the integration tests.
#![allow(dead_code, unreachable_pub)]

use std::path::PathBuf;

use gateway_devices::hikvision::{HikvisionAdapter, HikvisionConfig};
use gateway_devices::simulator::{Simulator, SimulatorConfig};

/// `../shared/isapi-samples`, read in place. Missing: a failure under `CI=true`, otherwise
/// `None` with a note (the caller skips).
pub fn samples_dir() -> Option<PathBuf> {
    let dir = PathBuf::from(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/isapi-samples"
    ));
    if dir.is_dir() {
        return Some(dir);
    }
    if std::env::var("CI").as_deref() == Ok("true") {
        panic!(
            "the ISAPI samples are missing at {} (CI=true requires them)",
            dir.display()
        );
    }
    eprintln!(
        "note: skipping: the ISAPI samples are not at {}",
        dir.display()
    );
    None
}

/// Read one sample file as text.
pub fn sample(dir: &std::path::Path, name: &str) -> String {
    std::fs::read_to_string(dir.join(name))
        .unwrap_or_else(|e| panic!("cannot read sample {name}: {e}"))
}

/// Every sample file name with this prefix and extension, sorted.
pub fn samples_with(dir: &std::path::Path, prefix: &str, ext: &str) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read samples dir")
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(prefix) && n.ends_with(ext))
        .collect();
    names.sort();
    names
}

/// Settings for an adapter talking to this simulator with the right credentials, and short
/// timeouts so failures show fast.
pub fn config_for(simulator: &Simulator) -> HikvisionConfig {
    let mut config = HikvisionConfig::new(
        simulator.base_url(),
        simulator.config().username.clone(),
        simulator.config().password.clone(),
    );
    config.request_timeout_ms = 5_000;
    config.connect_timeout_ms = 2_000;
    config
}

/// A simulator with these settings and an adapter for it.
pub async fn pair(config: SimulatorConfig) -> (Simulator, HikvisionAdapter) {
    let simulator = Simulator::start(config).await.expect("simulator starts");
    let adapter = HikvisionAdapter::new("sim-1", config_for(&simulator)).expect("adapter");
    (simulator, adapter)
}
