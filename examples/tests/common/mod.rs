//! Harness of the end-to-end tests: the real `server`, `gateway` and `agent-sim` binaries as
//! child processes on loopback (port 0, temporary data directories), killed with SIGKILL when
//! the test ends, and small helpers for the operator API.
//!
//! Each test binary uses a different part of it.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use gateway_proto::{Batch, Body, Encoding, Record, RecordId, WireMessage};
use serde_json::{Value, json};

pub(crate) const TENANT: &str = "e2e";
pub(crate) const ADMIN_TOKEN: &str = "e2e-admin-token";
pub(crate) const GATEWAY_ID: &str = "gw-e2e";
pub(crate) const GATEWAY_TOKEN: &str = "e2e-gateway-token";
pub(crate) const AGENT_TOKEN: &str = "e2e-agent-token";

/// How long a process may take to print its address.
const START_TIMEOUT: Duration = Duration::from_secs(30);

// ------------------------------------------------------------------ child processes

/// A child process. Dropping it kills it with SIGKILL and reaps it; when the test is failing
/// it first prints what the process wrote, so a failure can be read from the test output.
pub(crate) struct Proc {
    name: String,
    child: Child,
    stdout: Arc<Mutex<Vec<String>>>,
    log: PathBuf,
    exit: Option<ExitStatus>,
}

static SPAWNED: AtomicUsize = AtomicUsize::new(0);

impl Proc {
    /// Start `program` with `args`; stdout is collected line by line, stderr goes to a log
    /// file in `log_dir`.
    pub(crate) fn spawn(name: &str, program: &str, args: &[String], log_dir: &Path) -> Proc {
        let n = SPAWNED.fetch_add(1, Ordering::Relaxed);
        let log = log_dir.join(format!("{name}-{n}.log"));
        let stderr = File::create(&log).expect("creating a log file");
        let filter = if name == "agent-sim" { "warn" } else { "info" };
        let mut child = Command::new(program)
            .args(args)
            .env("RUST_LOG", filter)
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {program}: {e}"));
        let stdout = Arc::new(Mutex::new(Vec::new()));
        let pipe = child.stdout.take().expect("stdout is piped");
        let lines = stdout.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                match line {
                    Ok(line) => lines.lock().unwrap().push(line),
                    Err(_) => break,
                }
            }
        });
        Proc {
            name: name.to_string(),
            child,
            stdout,
            log,
            exit: None,
        }
    }

    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Lines written to stdout so far.
    pub(crate) fn stdout(&self) -> Vec<String> {
        self.stdout.lock().unwrap().clone()
    }

    /// The last `n` lines of stderr (the process's log).
    pub(crate) fn log_tail(&self, n: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// Whether the process still runs.
    pub(crate) fn running(&mut self) -> bool {
        self.poll_exit().is_none()
    }

    fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_none() {
            self.exit = self.child.try_wait().expect("polling a child");
        }
        self.exit
    }

    /// Wait for a stdout line starting with `prefix`; the rest of the line.
    pub(crate) async fn wait_for_line(&mut self, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.stdout().iter().find(|l| l.starts_with(prefix)) {
                return line[prefix.len()..].trim().to_string();
            }
            if let Some(status) = self.poll_exit() {
                // The reader thread may not have caught up with the last lines yet.
                tokio::time::sleep(Duration::from_millis(100)).await;
                if let Some(line) = self.stdout().iter().find(|l| l.starts_with(prefix)) {
                    return line[prefix.len()..].trim().to_string();
                }
                panic!(
                    "{} exited ({status}) before printing {prefix:?}; log:\n{}",
                    self.name,
                    self.log_tail(40)
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} did not print {prefix:?} within {limit:?}; log:\n{}",
                self.name,
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, and reap it.
    pub(crate) fn kill(&mut self) {
        if self.poll_exit().is_none() {
            let _ = self.child.kill();
            self.exit = Some(self.child.wait().expect("reaping a child"));
        }
    }

    /// SIGTERM (through `kill(1)`: the workspace forbids `unsafe`, so no `libc::kill`).
    pub(crate) fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .expect("running kill -TERM");
        assert!(status.success(), "kill -TERM {} failed", self.pid());
    }

    /// Wait for the process to exit by itself.
    pub(crate) async fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.poll_exit() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "{} did not exit within {limit:?}; log:\n{}",
                self.name,
                self.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- {} (pid {}) stdout:\n{}\n---- {} log (last lines):\n{}\n----",
                self.name,
                self.pid(),
                self.stdout().join("\n"),
                self.name,
                self.log_tail(60)
            );
        }
        self.kill();
    }
}

// ------------------------------------------------------------------ configuration files

/// The server's configuration: the test tenant and heartbeats every second, so presence and
/// reconnects move at test speed. `tables` is appended (TOML tables only).
pub(crate) fn server_config(tables: &str) -> String {
    format!(
        r#"tenant = "{TENANT}"

[hub.session]
heartbeat_interval_ms = 1000

{tables}
"#
    )
}

/// The gateway's configuration: a site-wide agent token, short retry and reconnect delays,
/// fast status updates. `tables` is appended (TOML tables only).
pub(crate) fn gateway_config(tables: &str) -> String {
    gateway_config_with("", tables)
}

/// [`gateway_config`] with more top-level settings (`top`, `key = value` lines).
pub(crate) fn gateway_config_with(top: &str, tables: &str) -> String {
    format!(
        r#"tenant = "{TENANT}"
status_interval_ms = 500
{top}

[[agent_tokens]]
token = "{AGENT_TOKEN}"
role = "agent"
subject = "*"

[uplink]
idle_poll_ms = 200

[uplink.retry]
base_ms = 100
cap_ms = 500

[control.session.backoff]
base_ms = 100
cap_ms = 500

{tables}
"#
    )
}

// ------------------------------------------------------------------ server and gateway

fn write_config(dir: &Path, name: &str, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).expect("creating a directory");
    let path = dir.join(name);
    std::fs::write(&path, text).expect("writing a config file");
    path
}

/// Read `http://ADDR` from a `listening on http://ADDR` line.
fn parse_url(url: &str) -> SocketAddr {
    url.strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("not an http://ADDR url: {url:?}"))
}

/// Start a binary that prints `listening on http://ADDR`; when `listen` is a fixed address
/// (a restart), retry while the port is still being released.
async fn start_listening(
    name: &str,
    program: &str,
    args: Vec<String>,
    logs: &Path,
) -> (Proc, String) {
    let deadline = Instant::now() + START_TIMEOUT;
    loop {
        let mut proc = Proc::spawn(name, program, &args, logs);
        let started = Instant::now();
        loop {
            if let Some(line) = proc
                .stdout()
                .iter()
                .find(|l| l.starts_with("listening on "))
            {
                let url = line["listening on ".len()..].trim().to_string();
                return (proc, url);
            }
            if !proc.running() {
                break;
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "{name} did not print its address within {START_TIMEOUT:?}; log:\n{}",
                proc.log_tail(40)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let log = proc.log_tail(40);
        assert!(
            log.contains("binding") && Instant::now() < deadline,
            "{name} exited before listening; log:\n{log}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The `server` binary.
pub(crate) struct Server {
    pub(crate) proc: Proc,
    pub(crate) url: String,
    addr: SocketAddr,
    args: Vec<String>,
    logs: PathBuf,
}

impl Server {
    /// Start a server with `config` on a free port, its data in `dir/server`. The admin and
    /// gateway tokens come from the command line, as an operator would pass them.
    pub(crate) async fn start(dir: &Path, config: &str) -> Server {
        let config = write_config(dir, "server.toml", config);
        let args = vec![
            "--data-dir".into(),
            dir.join("server").display().to_string(),
            "--config".into(),
            config.display().to_string(),
            "--admin-token".into(),
            ADMIN_TOKEN.into(),
            "--gateway-token".into(),
            format!("{GATEWAY_ID}={GATEWAY_TOKEN}"),
        ];
        Server::launch(dir, args, "127.0.0.1:0".parse().unwrap()).await
    }

    async fn launch(dir: &Path, args: Vec<String>, listen: SocketAddr) -> Server {
        let mut full = vec!["--listen".to_string(), listen.to_string()];
        full.extend(args.iter().cloned());
        let (proc, url) = start_listening("server", env!("CARGO_BIN_EXE_server"), full, dir).await;
        Server {
            proc,
            addr: parse_url(&url),
            url,
            args,
            logs: dir.to_path_buf(),
        }
    }

    /// SIGKILL.
    pub(crate) fn kill(&mut self) {
        self.proc.kill();
    }

    /// Start it again on the same address with the same data (after [`Server::kill`]).
    pub(crate) async fn restart(&mut self) {
        self.proc.kill();
        let again = Server::launch(&self.logs, self.args.clone(), self.addr).await;
        assert_eq!(
            again.url, self.url,
            "the server came back on another address"
        );
        *self = again;
    }
}

/// The `gateway` binary.
pub(crate) struct Gateway {
    pub(crate) proc: Proc,
    pub(crate) url: String,
    addr: SocketAddr,
    args: Vec<String>,
    logs: PathBuf,
}

impl Gateway {
    /// Start gateway [`GATEWAY_ID`] with `config` on a free port, its data in `dir/gateway`.
    pub(crate) async fn start(dir: &Path, server_url: &str, config: &str) -> Gateway {
        let config = write_config(dir, "gateway.toml", config);
        let args = vec![
            "--id".into(),
            GATEWAY_ID.into(),
            "--token".into(),
            GATEWAY_TOKEN.into(),
            "--server".into(),
            server_url.into(),
            "--data-dir".into(),
            dir.join("gateway").display().to_string(),
            "--config".into(),
            config.display().to_string(),
        ];
        Gateway::launch(dir, args, "127.0.0.1:0".parse().unwrap()).await
    }

    async fn launch(dir: &Path, args: Vec<String>, listen: SocketAddr) -> Gateway {
        let mut full = vec!["--listen".to_string(), listen.to_string()];
        full.extend(args.iter().cloned());
        let (proc, url) =
            start_listening("gateway", env!("CARGO_BIN_EXE_gateway"), full, dir).await;
        Gateway {
            proc,
            addr: parse_url(&url),
            url,
            args,
            logs: dir.to_path_buf(),
        }
    }

    /// SIGKILL.
    pub(crate) fn kill(&mut self) {
        self.proc.kill();
    }

    /// Start it again on the same address with the same data (after a kill or an exit).
    pub(crate) async fn restart(&mut self) {
        self.proc.kill();
        let again = Gateway::launch(&self.logs, self.args.clone(), self.addr).await;
        assert_eq!(
            again.url, self.url,
            "the gateway came back on another address"
        );
        *self = again;
    }

    /// Wait until its control channel is connected to the server.
    pub(crate) async fn wait_connected(&self, http: &Http) {
        let url = format!("{}/v1/status", self.url);
        eventually(
            "the gateway's control channel to connect",
            Duration::from_secs(20),
            || async {
                let status = http.get_json(&url, None).await.ok()?;
                (status.1["control"] == "connected").then_some(())
            },
        )
        .await;
    }

    /// Its `GET /v1/status`.
    pub(crate) async fn status(&self, http: &Http) -> Value {
        let (code, body) = http
            .get_json(&format!("{}/v1/status", self.url), None)
            .await
            .expect("GET /v1/status");
        assert_eq!(code, 200, "GET /v1/status: {body}");
        body
    }
}

// ------------------------------------------------------------------ agent-sim

/// What `agent-sim` printed and wrote.
pub(crate) struct SimOutcome {
    pub(crate) status: ExitStatus,
    pub(crate) sent: u64,
    pub(crate) acknowledged: u64,
    pub(crate) refused: u64,
    pub(crate) unacknowledged: u64,
    pub(crate) retries: u64,
    /// Every id from `--ids-out`, in file order.
    pub(crate) ids: Vec<String>,
}

impl std::fmt::Debug for SimOutcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "agent-sim {}: sent {}, acknowledged {}, refused {}, unacknowledged {}, retries {}, {} ids",
            self.status,
            self.sent,
            self.acknowledged,
            self.refused,
            self.unacknowledged,
            self.retries,
            self.ids.len()
        )
    }
}

/// A running `agent-sim`.
pub(crate) struct AgentSim {
    proc: Proc,
    ids_out: PathBuf,
}

impl AgentSim {
    /// `agent-sim` with `agents` agents posting `rate` records/s for `duration_s` seconds,
    /// retrying for up to `drain_s` seconds, acknowledged ids written to a file in `dir`.
    pub(crate) fn start(
        dir: &Path,
        gateway_url: &str,
        agents: usize,
        rate: u32,
        duration_s: f64,
        drain_s: f64,
    ) -> AgentSim {
        let n = SPAWNED.load(Ordering::Relaxed);
        let ids_out = dir.join(format!("acknowledged-ids-{n}.txt"));
        let args = vec![
            "--gateway".into(),
            gateway_url.into(),
            "--agents".into(),
            agents.to_string(),
            "--rate".into(),
            rate.to_string(),
            "--duration".into(),
            duration_s.to_string(),
            "--drain-timeout".into(),
            drain_s.to_string(),
            "--token".into(),
            AGENT_TOKEN.into(),
            "--batch-size".into(),
            "200".into(),
            "--ids-out".into(),
            ids_out.display().to_string(),
            "--quiet".into(),
        ];
        let proc = Proc::spawn("agent-sim", env!("CARGO_BIN_EXE_agent-sim"), &args, dir);
        AgentSim { proc, ids_out }
    }

    /// Wait for it to end and read its summary and ids.
    pub(crate) async fn finish(mut self, limit: Duration) -> SimOutcome {
        let status = self.proc.wait_exit(limit).await;
        let line = self
            .proc
            .wait_for_line("sent ", Duration::from_secs(5))
            .await;
        let numbers = parse_summary(&format!("sent {line}"));
        let text = std::fs::read_to_string(&self.ids_out).unwrap_or_default();
        let outcome = SimOutcome {
            status,
            sent: numbers["sent"],
            acknowledged: numbers["acknowledged"],
            refused: numbers["refused"],
            unacknowledged: numbers["unacknowledged"],
            retries: numbers["retries"],
            ids: text.lines().map(str::to_string).collect(),
        };
        eprintln!("{outcome:?}");
        outcome
    }
}

/// `sent 1, acknowledged 1, refused 0, unacknowledged 0, retries 0` → name → number.
fn parse_summary(line: &str) -> HashMap<String, u64> {
    let numbers: HashMap<String, u64> = line
        .split(',')
        .filter_map(|part| {
            let (name, value) = part.trim().split_once(' ')?;
            Some((name.to_string(), value.trim().parse().ok()?))
        })
        .collect();
    for name in [
        "sent",
        "acknowledged",
        "refused",
        "unacknowledged",
        "retries",
    ] {
        assert!(
            numbers.contains_key(name),
            "no `{name}` in the summary {line:?}"
        );
    }
    numbers
}

// ------------------------------------------------------------------ HTTP

/// A small HTTP client for the tests.
#[derive(Clone)]
pub(crate) struct Http {
    pub(crate) client: reqwest::Client,
}

impl Http {
    pub(crate) fn new() -> Http {
        // The binaries' own setup: ring as the process's rustls provider.
        gateway_examples::telemetry::install_crypto_provider();
        Http {
            client: reqwest::Client::builder()
                .timeout(Duration::from_secs(30))
                .build()
                .expect("building an HTTP client"),
        }
    }

    /// GET with an optional bearer token: status and JSON body (`Null` when not JSON).
    pub(crate) async fn get_json(
        &self,
        url: &str,
        token: Option<&str>,
    ) -> Result<(u16, Value), reqwest::Error> {
        let mut request = self.client.get(url);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request.send().await?;
        let status = response.status().as_u16();
        let bytes = response.bytes().await?;
        Ok((
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        ))
    }

    /// POST a JSON value as an admin: status and JSON body.
    pub(crate) async fn admin_post(&self, url: &str, body: &Value) -> (u16, Value) {
        let response = self
            .client
            .post(url)
            .bearer_auth(ADMIN_TOKEN)
            .json(body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e:?}"));
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("reading an answer");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }

    /// GET as an admin, expecting 200.
    pub(crate) async fn admin_get(&self, url: &str) -> Value {
        let (status, body) = self
            .get_json(url, Some(ADMIN_TOKEN))
            .await
            .unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(status, 200, "GET {url}: {body}");
        body
    }

    /// POST raw bytes to `/v1/records`-like endpoints: status, headers' `Retry-After`, body.
    pub(crate) async fn post_bytes(
        &self,
        url: &str,
        token: Option<&str>,
        content_type: &str,
        body: Vec<u8>,
    ) -> (u16, Value) {
        let mut request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, content_type)
            .body(body);
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        let response = request
            .send()
            .await
            .unwrap_or_else(|e| panic!("POST {url}: {e:?}"));
        let status = response.status().as_u16();
        let bytes = response.bytes().await.expect("reading an answer");
        (
            status,
            serde_json::from_slice(&bytes).unwrap_or(Value::Null),
        )
    }
}

/// Every record id stored at the server for the test tenant, with how many times it is stored
/// (read page by page from the start).
pub(crate) async fn stored_ids(http: &Http, server_url: &str) -> HashMap<String, u64> {
    let mut ids = HashMap::new();
    let mut after = 0u64;
    loop {
        let page = http
            .admin_get(&format!("{server_url}/v1/records?after={after}&limit=1000"))
            .await;
        let records = page["records"].as_array().expect("a records array");
        if records.is_empty() {
            return ids;
        }
        for r in records {
            let id = r["record"]["id"]
                .as_str()
                .expect("a stored record has an id");
            *ids.entry(id.to_string()).or_insert(0) += 1;
        }
        let next = page["next_after"].as_u64().expect("next_after");
        assert!(next > after, "next_after did not move: {after} → {next}");
        after = next;
    }
}

/// Wait until the server holds at least `n` records.
pub(crate) async fn wait_stored_at_least(http: &Http, server_url: &str, n: usize, limit: Duration) {
    eventually(&format!("{n} records at the server"), limit, || async {
        (stored_ids(http, server_url).await.len() >= n).then_some(())
    })
    .await;
}

/// The exactly-once check: every acknowledged id is stored exactly once, and the server holds
/// nothing else. Waits (up to `limit`) for the gateway to deliver what it buffered.
pub(crate) async fn assert_exactly_once(
    http: &Http,
    server_url: &str,
    acknowledged: &[String],
    limit: Duration,
) {
    let unique: std::collections::HashSet<&String> = acknowledged.iter().collect();
    assert_eq!(
        unique.len(),
        acknowledged.len(),
        "agent-sim listed an acknowledged id twice"
    );
    let deadline = Instant::now() + limit;
    let stored = loop {
        let stored = stored_ids(http, server_url).await;
        let missing = acknowledged
            .iter()
            .filter(|id| !stored.contains_key(*id))
            .count();
        if missing == 0 {
            break stored;
        }
        assert!(
            Instant::now() < deadline,
            "{missing} of {} acknowledged records are not at the server after {limit:?}",
            acknowledged.len()
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    let duplicated: Vec<_> = stored.iter().filter(|(_, n)| **n > 1).collect();
    assert!(
        duplicated.is_empty(),
        "stored more than once: {duplicated:?}"
    );
    let extra: Vec<_> = stored.keys().filter(|id| !unique.contains(id)).collect();
    assert!(
        extra.is_empty(),
        "{} records at the server were never acknowledged to an agent, e.g. {:?}",
        extra.len(),
        extra.first()
    );
    assert_eq!(stored.len(), acknowledged.len());
}

// ------------------------------------------------------------------ helpers

/// Poll `check` every 100 ms until it gives `Some`, or panic naming `what` after `limit`.
pub(crate) async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "gave up waiting for {what} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A JSON batch of `n` small valid records with fresh ids: the encoded body and the ids.
pub(crate) fn json_batch(n: usize, source: &str) -> (Vec<u8>, Vec<String>) {
    let now = gateway_proto::clock::unix_ms(std::time::SystemTime::now());
    let records: Vec<Record> = (0..n)
        .map(|i| {
            Record::new("logs", source, now, Body::Json(json!({"n": i}).into()))
                .with_id(RecordId::new_v7())
        })
        .collect();
    let ids = records
        .iter()
        .map(|r| r.id.expect("set above").to_string())
        .collect();
    let batch = Batch::new("", records);
    (batch.encode(Encoding::Json), ids)
}

/// A temporary directory for one test's data and the processes' logs. Set
/// `GATEWAY_E2E_KEEP=1` to keep it (its path is printed) for a look at the logs and databases.
pub(crate) fn temp_dir() -> tempfile::TempDir {
    let keep = std::env::var_os("GATEWAY_E2E_KEEP").is_some();
    let dir = tempfile::Builder::new()
        .prefix("gateway-e2e-")
        .disable_cleanup(keep)
        .tempdir()
        .expect("creating a temporary directory");
    if keep {
        eprintln!("keeping {}", dir.path().display());
    }
    dir
}
