//! Crash safety of the applier's persistence, with real processes killed by SIGKILL.
//!
//! The parent test re-runs this test binary as a child (`--ignored --exact crash_child`) with
//! `GATEWAY_POLICY_CRASH_CHILD` naming what the child does. The child applies policies to a
//! `FileAppliedStore` and prints a line at the point the parent is waiting for; the parent kills
//! it there with SIGKILL (`Child::kill`), then opens the store as a restarted gateway would and
//! checks it runs the old or the new policy — whole, checksum verified — never a mix.

#![cfg(unix)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use gateway_policy::{
    AcceptAll, AppliedPolicyStore, ApplierConfig, FileAppliedStore, Policy, PolicyApplier,
    StoredPolicy,
};
use serde_json::{Value, json};

const MODE_ENV: &str = "GATEWAY_POLICY_CRASH_CHILD";
const DIR_ENV: &str = "GATEWAY_POLICY_CRASH_DIR";

/// The document of version `v`: large enough (about 400 KB) that writing it takes a while,
/// and derived from `v` so a reader can tell exactly which version a document belongs to.
fn document(v: u64) -> Value {
    let items: Vec<Value> = (0..4_000)
        .map(
            |i| json!({"id": i, "version": v, "rule": format!("allow-{v}-{i}-{}", "x".repeat(40))}),
        )
        .collect();
    json!({"version": v, "items": items})
}

fn policy(v: u64) -> Policy {
    Policy::new("fw", v, document(v), v as i64, "crash-test", "crash").unwrap()
}

/// A store that stops at a chosen point of a save and waits to be killed.
struct PausingStore {
    inner: FileAppliedStore,
    pause: Pause,
}

#[derive(Clone, Copy, PartialEq)]
enum Pause {
    /// After the temp file is written and flushed, before the rename.
    AfterStage,
    /// After the rename, before the applier switches to the new policy.
    AfterCommit,
}

impl AppliedPolicyStore for PausingStore {
    fn load_all(&self) -> gateway_policy::Result<Vec<gateway_policy::Result<StoredPolicy>>> {
        self.inner.load_all()
    }

    fn save(&mut self, policy: &StoredPolicy) -> gateway_policy::Result<()> {
        let staged = self.inner.stage(policy)?;
        if self.pause == Pause::AfterStage {
            wait_to_be_killed("STAGED");
        }
        staged.commit()?;
        if self.pause == Pause::AfterCommit {
            wait_to_be_killed("COMMITTED");
        }
        Ok(())
    }
}

fn wait_to_be_killed(marker: &str) -> ! {
    println!("{marker}");
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}

/// The child's body. Ignored in normal runs; the parent tests start it in a child process.
#[test]
#[ignore = "child process of the crash tests; runs only when they start it"]
fn crash_child() {
    let mode = std::env::var(MODE_ENV).expect("started by a crash test");
    let dir = std::env::var(DIR_ENV).expect("started by a crash test");
    let open = |pause: Option<Pause>| {
        let inner = FileAppliedStore::open(&dir).unwrap();
        match pause {
            Some(pause) => Box::new(PausingStore { inner, pause }) as Box<dyn AppliedPolicyStore>,
            None => Box::new(inner),
        }
    };
    match mode.as_str() {
        "pause-after-stage" | "pause-after-commit" => {
            let pause = if mode == "pause-after-stage" {
                Pause::AfterStage
            } else {
                Pause::AfterCommit
            };
            let (mut applier, report) = PolicyApplier::open(
                ApplierConfig::default(),
                BoxStore(open(Some(pause))),
                AcceptAll,
            )
            .unwrap();
            assert_eq!(report.loaded.len(), 1, "the parent stored version 1 first");
            applier.apply(&policy(2).full_update(None), 2);
            unreachable!("the store pauses inside apply");
        }
        "apply-forever" => {
            let (mut applier, report) =
                PolicyApplier::open(ApplierConfig::default(), BoxStore(open(None)), AcceptAll)
                    .unwrap();
            let mut v = report.loaded.first().map_or(0, |p| p.version);
            loop {
                v += 1;
                let status = applier.apply(&policy(v).full_update(None), v as i64);
                assert_eq!(status.state, gateway_proto::PolicyState::Applied);
                println!("APPLIED {v}");
            }
        }
        other => panic!("unknown child mode {other}"),
    }
}

struct BoxStore(Box<dyn AppliedPolicyStore>);

impl AppliedPolicyStore for BoxStore {
    fn load_all(&self) -> gateway_policy::Result<Vec<gateway_policy::Result<StoredPolicy>>> {
        self.0.load_all()
    }
    fn save(&mut self, policy: &StoredPolicy) -> gateway_policy::Result<()> {
        self.0.save(policy)
    }
}

/// A child process that is killed if the test fails before killing it itself.
struct Guard(Option<std::process::Child>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(mut child) = self.0.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// The marker a line carries. The test harness prints `test crash_child ... ` without a newline
/// before the test body runs, so a marker may follow other text on its line.
fn marker<'a>(line: &'a str, prefix: &str) -> Option<&'a str> {
    line.find(prefix).map(|at| &line[at + prefix.len()..])
}

/// Start the child; return it with a channel of its stdout lines.
fn spawn_child(mode: &str, dir: &Path) -> (Guard, mpsc::Receiver<String>) {
    let exe = std::env::current_exe().unwrap();
    let mut child = Command::new(exe)
        .args([
            "--ignored",
            "--exact",
            "crash_child",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(MODE_ENV, mode)
        .env(DIR_ENV, dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (Guard(Some(child)), rx)
}

/// Wait for a line carrying `prefix`; return what follows it.
fn wait_for(rx: &mpsc::Receiver<String>, prefix: &str) -> String {
    loop {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) if marker(&line, prefix).is_some() => {
                return marker(&line, prefix).unwrap_or_default().to_owned();
            }
            Ok(_) => continue,
            Err(e) => panic!("the child never printed {prefix:?}: {e}"),
        }
    }
}

fn kill(mut guard: Guard) {
    let mut child = guard.0.take().expect("alive");
    child.kill().unwrap(); // SIGKILL on Unix
    let status = child.wait().unwrap();
    assert!(!status.success(), "the child must have died by the signal");
}

/// Open the store as a restarted gateway would and return the running version; the applier
/// has verified the checksum, and the document must be exactly that version's.
fn restart(dir: &Path) -> u64 {
    let (applier, report) = PolicyApplier::open(
        ApplierConfig::default(),
        FileAppliedStore::open(dir).unwrap(),
        AcceptAll,
    )
    .unwrap();
    assert!(
        report.problems.is_empty(),
        "a crash left a damaged policy: {:?}",
        report.problems
    );
    let running = applier
        .running("fw")
        .expect("a policy must survive the crash");
    assert_eq!(
        running.document,
        document(running.version),
        "a mix of two versions"
    );
    let leftovers: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "open must remove temp files: {leftovers:?}"
    );
    running.version
}

fn store_version_1(dir: &Path) {
    let (mut applier, _) = PolicyApplier::open(
        ApplierConfig::default(),
        FileAppliedStore::open(dir).unwrap(),
        AcceptAll,
    )
    .unwrap();
    applier.apply(&policy(1).full_update(None), 1);
}

#[test]
fn killed_after_writing_the_new_file_but_before_the_rename_keeps_the_old_policy() {
    let dir = tempfile::tempdir().unwrap();
    store_version_1(dir.path());
    let (child, rx) = spawn_child("pause-after-stage", dir.path());
    wait_for(&rx, "STAGED");
    assert!(
        dir.path().join("fw.policy.json.tmp").exists(),
        "the new version is on disk, unswitched"
    );
    kill(child);
    assert_eq!(restart(dir.path()), 1);
}

#[test]
fn killed_between_the_durable_write_and_the_switch_runs_the_new_policy_after_restart() {
    let dir = tempfile::tempdir().unwrap();
    store_version_1(dir.path());
    let (child, rx) = spawn_child("pause-after-commit", dir.path());
    wait_for(&rx, "COMMITTED");
    kill(child);
    assert_eq!(restart(dir.path()), 2);
}

#[test]
fn killed_at_arbitrary_moments_while_applying_leaves_old_or_new_never_a_mix() {
    let dir = tempfile::tempdir().unwrap();
    // Kill at a spread of delays after an apply was reported, so kills land before, inside and
    // after writes and renames.
    for round in 0..8u64 {
        let (child, rx) = spawn_child("apply-forever", dir.path());
        let line = wait_for(&rx, "APPLIED ");
        let acknowledged: u64 = line.trim().parse().unwrap();
        std::thread::sleep(Duration::from_millis(3 + round * 7));
        // Drain what the child reported before the kill.
        let mut last_reported = acknowledged;
        while let Ok(l) = rx.try_recv() {
            if let Some(v) = marker(&l, "APPLIED ") {
                last_reported = v.trim().parse().unwrap();
            }
        }
        kill(child);
        for l in rx.try_iter() {
            if let Some(v) = marker(&l, "APPLIED ") {
                last_reported = v.trim().parse().unwrap();
            }
        }
        let version = restart(dir.path());
        // Everything the child reported applied is durable; at most the one in flight is newer.
        assert!(
            version == last_reported || version == last_reported + 1,
            "round {round}: restarted on {version}, the child last reported {last_reported}"
        );
    }
}
