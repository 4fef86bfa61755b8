//! A Santa sync server for the tests, following the published protocol and Moroz's behaviour:
//! routes under `/v1/santa/`, zlib-compressed request bodies, rules from TOML (Moroz's
//! `[[rules]]`), uploaded events written to a directory as `<sha256>/<machine>/<n>.json`. It
//! serves HTTPS on 127.0.0.1 with mutual TLS (certificates made at test time), one request per
//! connection, and can be told to misbehave. [`Fleet`] puts one in a sandbox with a `blocker
//! sync` configuration for it.

use std::{
    fs,
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Output},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};
use rustls::{
    pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer},
    server::WebPkiClientVerifier,
    RootCertStore, ServerConfig, ServerConnection, StreamOwned,
};
use serde_json::{json, Value};

use crate::{blocker_bin, harmless_binary, sha256_of, Daemon, Sandbox, EVENT_TIMEOUT};

/// The largest request head and (decompressed) body the server reads.
const MAX_HEAD_BYTES: usize = 64 << 10;
const MAX_BODY_BYTES: usize = 64 << 20;
/// What the client reads at most (`sync::client::MAX_RESPONSE_BYTES`), and a bit.
const HUGE_BODY_BYTES: usize = (64 << 20) + 4096;
const IO_TIMEOUT: Duration = Duration::from_secs(30);

/// The certificates of one test: a CA, the server's (for 127.0.0.1) and a client's, the
/// client's files written for `blocker sync` to read.
pub struct Pki {
    pub ca_file: PathBuf,
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
    server_config: Arc<ServerConfig>,
}

impl Pki {
    /// Makes the certificates and writes the CA and client files into `dir`.
    pub fn new(dir: &Path) -> Result<Self> {
        let ca_key = KeyPair::generate()?;
        let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "blocker test CA");
        let ca_cert = ca_params.self_signed(&ca_key)?;
        let issuer = Issuer::new(ca_params, ca_key);

        let server_key = KeyPair::generate()?;
        let server_cert = CertificateParams::new(vec!["127.0.0.1".to_owned()])?
            .signed_by(&server_key, &issuer)?;
        let client_key = KeyPair::generate()?;
        let mut client_params = CertificateParams::new(Vec::<String>::new())?;
        client_params
            .distinguished_name
            .push(DnType::CommonName, "blocker test machine");
        let client_cert = client_params.signed_by(&client_key, &issuer)?;

        fs::create_dir_all(dir)?;
        let ca_file = dir.join("ca.pem");
        let client_cert_file = dir.join("client.pem");
        let client_key_file = dir.join("client-key.pem");
        fs::write(&ca_file, ca_cert.pem())?;
        fs::write(&client_cert_file, client_cert.pem())?;
        fs::write(&client_key_file, client_key.serialize_pem())?;

        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = RootCertStore::empty();
        roots.add(ca_cert.der().clone())?;
        let verifier =
            WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
                .build()?;
        let server_config = ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()?
            .with_client_cert_verifier(verifier)
            .with_single_cert(
                vec![CertificateDer::from(server_cert.der().to_vec())],
                PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
            )?;
        Ok(Self {
            ca_file,
            client_cert_file,
            client_key_file,
            server_config: Arc::new(server_config),
        })
    }
}

/// Ways the server breaks the protocol.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Misbehaviour {
    /// Closes every connection as it comes, before TLS.
    Down,
    /// Answers this page of a rule download (from 1) with JSON cut short.
    MalformedPage(usize),
    /// Answers rule downloads with a body larger than the client reads.
    HugeBody,
    /// Sends a rule of a type the protocol does not have.
    WrongRuleType,
}

/// One request the server answered: its stage, machine id and JSON body.
#[derive(Clone, Debug)]
pub struct Received {
    pub stage: String,
    pub machine_id: String,
    pub body: Value,
}

struct ServerState {
    client_mode: String,
    batch_size: u64,
    rules: Vec<Value>,
    page_size: Option<usize>,
    clean_sync: bool,
    misbehaviour: Option<Misbehaviour>,
    received: Vec<Received>,
    events_written: usize,
}

/// The running server; stopped when dropped.
pub struct SantaServer {
    address: SocketAddr,
    state: Arc<Mutex<ServerState>>,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl SantaServer {
    /// Serves `rules` (Moroz's TOML) on 127.0.0.1, writing uploaded events below `events_dir`.
    pub fn start(pki: &Pki, rules: &str, events_dir: &Path) -> Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let address = listener.local_addr()?;
        let state = Arc::new(Mutex::new(ServerState {
            client_mode: "MONITOR".to_owned(),
            batch_size: 50,
            rules: Vec::new(),
            page_size: None,
            clean_sync: false,
            misbehaviour: None,
            received: Vec::new(),
            events_written: 0,
        }));
        let stopping = Arc::new(AtomicBool::new(false));
        let mut server = Self {
            address,
            state: state.clone(),
            stopping: stopping.clone(),
            thread: None,
        };
        server.set_rules_toml(rules)?;
        let config = pki.server_config.clone();
        let events_dir = events_dir.to_owned();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let down = lock(&state).misbehaviour == Some(Misbehaviour::Down);
                if down {
                    drop(stream);
                    continue;
                }
                // A failed connection (the client gave up, a bad certificate) is the client's
                // concern: the test sees it in the client's error.
                let _ = serve(stream, config.clone(), &state, &events_dir);
            }
        });
        server.thread = Some(thread);
        Ok(server)
    }

    /// The base URL to give `blocker sync`.
    pub fn url(&self) -> String {
        format!("https://{}/v1/santa", self.address)
    }

    /// Replaces the configuration: `client_mode`, `batch_size` and `[[rules]]`, as in Moroz.
    pub fn set_rules_toml(&self, text: &str) -> Result<()> {
        let table: toml::Table = toml::from_str(text).context("the test server's rules")?;
        let config = serde_json::to_value(&table)?;
        let mut state = lock(&self.state);
        if let Some(mode) = config["client_mode"].as_str() {
            state.client_mode = mode.to_owned();
        }
        if let Some(size) = config["batch_size"].as_u64() {
            state.batch_size = size;
        }
        state.rules = config["rules"].as_array().cloned().unwrap_or_default();
        Ok(())
    }

    /// Replaces the rules with these JSON rules.
    pub fn set_rules(&self, rules: Vec<Value>) {
        lock(&self.state).rules = rules;
    }

    /// Sends rule downloads in pages of `size` rules, with a cursor.
    pub fn set_page_size(&self, size: Option<usize>) {
        lock(&self.state).page_size = size;
    }

    /// Asks for a clean sync until a postflight reports one.
    pub fn set_clean_sync(&self, clean: bool) {
        lock(&self.state).clean_sync = clean;
    }

    pub fn misbehave(&self, misbehaviour: Option<Misbehaviour>) {
        lock(&self.state).misbehaviour = misbehaviour;
    }

    /// Every request answered so far, oldest first.
    pub fn received(&self) -> Vec<Received> {
        lock(&self.state).received.clone()
    }

    /// Events written to the events directory so far.
    pub fn events_written(&self) -> usize {
        lock(&self.state).events_written
    }
}

impl Drop for SantaServer {
    fn drop(&mut self) {
        self.stopping.store(true, Ordering::SeqCst);
        // Wakes the accept loop.
        let _ = TcpStream::connect(self.address);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn lock(state: &Mutex<ServerState>) -> MutexGuard<'_, ServerState> {
    state
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn serve(
    stream: TcpStream,
    config: Arc<ServerConfig>,
    state: &Mutex<ServerState>,
    events_dir: &Path,
) -> Result<()> {
    stream.set_read_timeout(Some(IO_TIMEOUT))?;
    stream.set_write_timeout(Some(IO_TIMEOUT))?;
    let mut tls = StreamOwned::new(ServerConnection::new(config)?, stream);
    let (path, headers, body) = read_request(&mut tls)?;
    let (status, response) = match route(&path, &headers, &body, state, events_dir) {
        Ok(response) => (200, response),
        Err(error) => (400, format!("{error:#}").into_bytes()),
    };
    write!(
        tls,
        "HTTP/1.1 {status} {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n",
        if status == 200 { "OK" } else { "Bad Request" },
        response.len()
    )?;
    tls.write_all(&response)?;
    tls.conn.send_close_notify();
    tls.flush()?;
    Ok(())
}

/// The request's path, lowercase header lines, and decompressed body.
fn read_request(tls: &mut impl Read) -> Result<(String, Vec<String>, Vec<u8>)> {
    let mut reader = BufReader::new(tls);
    let mut lines = Vec::new();
    let mut head_bytes = 0;
    loop {
        let mut line = String::new();
        let read = (&mut reader)
            .take((MAX_HEAD_BYTES - head_bytes) as u64)
            .read_line(&mut line)?;
        ensure!(read > 0, "the request head ended early or is too large");
        head_bytes += read;
        let line = line.trim_end().to_owned();
        if line.is_empty() {
            break;
        }
        lines.push(line);
    }
    let request_line = lines.first().context("no request line")?.clone();
    let mut parts = request_line.split(' ');
    ensure!(parts.next() == Some("POST"), "not a POST: {request_line}");
    let path = parts.next().context("no path")?.to_owned();
    let headers: Vec<String> = lines[1..].iter().map(|line| line.to_lowercase()).collect();
    let length: usize = headers
        .iter()
        .find_map(|line| line.strip_prefix("content-length:"))
        .context("no content-length")?
        .trim()
        .parse()?;
    ensure!(length <= MAX_BODY_BYTES, "a body of {length} bytes");
    let mut body = vec![0; length];
    reader.read_exact(&mut body)?;
    Ok((path, headers, body))
}

fn route(
    path: &str,
    headers: &[String],
    body: &[u8],
    state: &Mutex<ServerState>,
    events_dir: &Path,
) -> Result<Vec<u8>> {
    let Some(rest) = path.strip_prefix("/v1/santa/") else {
        bail!("no route {path}");
    };
    let (stage, machine_id) = rest.split_once('/').context("no machine id")?;
    ensure!(
        headers
            .iter()
            .any(|line| line == "content-encoding: deflate"),
        "Moroz takes only zlib-compressed bodies"
    );
    // Moroz runs every body through zlib.
    let mut json = Vec::new();
    flate2::read::ZlibDecoder::new(body)
        .take(MAX_BODY_BYTES as u64)
        .read_to_end(&mut json)
        .context("the body is not a zlib stream")?;
    let request: Value = serde_json::from_slice(&json).context("the body is not JSON")?;
    let mut state = lock(state);
    state.received.push(Received {
        stage: stage.to_owned(),
        machine_id: machine_id.to_owned(),
        body: request.clone(),
    });
    let response = match stage {
        "preflight" => {
            let clean = state.clean_sync || request["request_clean_sync"] == true;
            json!({
                "client_mode": state.client_mode,
                "batch_size": state.batch_size,
                "sync_type": if clean { "CLEAN" } else { "NORMAL" },
            })
        }
        "eventupload" => {
            let events = request["events"].as_array().cloned().unwrap_or_default();
            for event in events {
                let hash = event["file_sha256"]
                    .as_str()
                    .filter(|hash| hash.bytes().all(|byte| byte.is_ascii_hexdigit()))
                    .filter(|hash| !hash.is_empty())
                    .unwrap_or("unknown")
                    .to_owned();
                let dir = events_dir.join(hash).join(machine_id);
                fs::create_dir_all(&dir)?;
                state.events_written += 1;
                fs::write(
                    dir.join(format!("{}.json", state.events_written)),
                    serde_json::to_vec(&event)?,
                )?;
            }
            json!({})
        }
        "ruledownload" => return rule_page(&state, &request),
        "postflight" => {
            if request["sync_type"] == "CLEAN" || request["sync_type"] == "CLEAN_ALL" {
                state.clean_sync = false;
            }
            json!({})
        }
        other => bail!("no stage {other}"),
    };
    Ok(serde_json::to_vec(&response)?)
}

fn rule_page(state: &ServerState, request: &Value) -> Result<Vec<u8>> {
    let start: usize = match request["cursor"].as_str() {
        Some(cursor) => cursor.parse()?,
        None => 0,
    };
    let size = state.page_size.unwrap_or(usize::MAX).max(1);
    let page_number = start / size + 1;
    match state.misbehaviour {
        Some(Misbehaviour::MalformedPage(page)) if page == page_number => {
            return Ok(br#"{"rules":[{"identifier":"#.to_vec())
        }
        Some(Misbehaviour::HugeBody) => {
            let mut body = br#"{"rules":[],"padding":""#.to_vec();
            body.resize(HUGE_BODY_BYTES, b'x');
            body.extend_from_slice(br#""}"#);
            return Ok(body);
        }
        _ => {}
    }
    let end = start.saturating_add(size).min(state.rules.len());
    let mut rules: Vec<Value> = state.rules.get(start..end).unwrap_or_default().to_vec();
    if state.misbehaviour == Some(Misbehaviour::WrongRuleType) {
        rules.push(json!({
            "identifier": "/usr/bin/true",
            "policy": "BLOCKLIST",
            "rule_type": "PATH",
        }));
    }
    let mut page = json!({ "rules": rules });
    if end < state.rules.len() {
        page["cursor"] = json!(end.to_string());
    }
    Ok(serde_json::to_vec(&page)?)
}

/// The machine id the fleet's configuration gives `blocker sync`.
pub const MACHINE_ID: &str = "test-machine-1";
/// The policy file `blocker sync` installs.
pub const SYNCED_POLICY: &str = "santa-sync.toml";

/// A sandbox with a sync server, its certificates and a `blocker sync` configuration.
/// Its daemon's status document and events file, and the binaries it makes, are in the sandbox.
/// The sync's metrics textfile, in the sandbox: never node_exporter's directory.
pub const SYNC_METRICS_FILE: &str = "blocker-sync.prom";

pub struct Fleet {
    pub sandbox: Sandbox,
    pub server: SantaServer,
    pub config: PathBuf,
    pub status_file: PathBuf,
    /// Where the test's binaries go: the daemon's scan root.
    pub binaries: PathBuf,
}

impl Fleet {
    pub fn new(sandbox: Sandbox, rules: &str) -> Result<Self> {
        let pki = Pki::new(&sandbox.path("pki"))?;
        let server = SantaServer::start(&pki, rules, &sandbox.path("uploaded"))?;
        let binaries = sandbox.path("binaries");
        fs::create_dir_all(&binaries)?;
        let status_file = sandbox.path("run/status.json");
        let config = sandbox.path("sync.toml");
        let quoted = |path: &Path| format!("{:?}", path.display().to_string());
        fs::write(
            &config,
            format!(
                "server_url = {:?}\nca_file = {}\nclient_cert_file = {}\nclient_key_file = {}\n\
                 machine_id = {MACHINE_ID:?}\nattempts = 1\ninterval_seconds = 1\nstate_dir = {}\npolicy_dir = {}\n\
                 status_file = {}\nevents_file = {}\nmetrics_file = {}\n",
                server.url(),
                quoted(&pki.ca_file),
                quoted(&pki.client_cert_file),
                quoted(&pki.client_key_file),
                quoted(&sandbox.path("sync-state")),
                quoted(&sandbox.policy_dir()),
                quoted(&status_file),
                quoted(&sandbox.path("events.jsonl")),
                quoted(&sandbox.path(SYNC_METRICS_FILE)),
            ),
        )?;
        Ok(Self {
            sandbox,
            server,
            config,
            status_file,
            binaries,
        })
    }

    /// A fleet whose policy directory holds, besides what the sync installs, a local policy
    /// that bans nothing.
    pub fn with_empty_local_policy(test_name: &str) -> Result<Self> {
        let sandbox = Sandbox::new(test_name)?;
        sandbox.write_policy("local.toml", "name = \"local\"\n")?;
        Self::new(sandbox, "")
    }

    /// A copy of the harmless binary with contents of its own, in the scanned directory.
    pub fn unique_binary(&self, name: &str) -> Result<(PathBuf, String)> {
        let path = self.binaries.join(name);
        let mut contents = fs::read(harmless_binary())?;
        contents.extend_from_slice(format!("\nsync test binary {name}\n").as_bytes());
        fs::write(&path, contents)?;
        fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
        let hash = sha256_of(&path)?;
        Ok((path, hash))
    }

    /// Starts a daemon with `backend` on the sandbox's policy, scanning the binaries, with
    /// `extra` arguments.
    pub fn start_daemon(&self, backend: &str, extra: &[&str]) -> Result<Daemon> {
        let scan_root = self.binaries.to_str().context("utf-8 path")?;
        let status_file = self.status_file.to_str().context("utf-8 path")?;
        let (daemon, _) = Daemon::start(
            &self.sandbox.policy_dir(),
            &[
                "--backend",
                backend,
                "--no-hash-cache",
                "--scan-root",
                scan_root,
                "--status-file",
                status_file,
            ]
            .iter()
            .chain(extra)
            .copied()
            .collect::<Vec<_>>(),
        )?;
        wait_until(|| Ok(self.status_file.exists()), "the status document")?;
        Ok(daemon)
    }

    /// `blocker sync --once` with `extra` arguments.
    pub fn sync(&self, extra: &[&str]) -> Result<Output> {
        Command::new(blocker_bin())
            .args(["sync", "--once", "--config"])
            .arg(&self.config)
            .args(extra)
            .output()
            .context("running blocker sync")
    }

    /// `blocker sync --status`: its exit code and output.
    pub fn status(&self) -> Result<(Option<i32>, String)> {
        let output = Command::new(blocker_bin())
            .args(["sync", "--status", "--config"])
            .arg(&self.config)
            .output()
            .context("running blocker sync --status")?;
        Ok((
            output.status.code(),
            String::from_utf8_lossy(&output.stdout).into_owned(),
        ))
    }

    /// `blocker sync --once`, which must succeed; its output.
    pub fn synced(&self, extra: &[&str]) -> Result<String> {
        let output = self.sync(extra)?;
        let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
        ensure!(
            output.status.success(),
            "sync failed: {}\n{stdout}{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(stdout)
    }

    /// `blocker sync --once`, which must fail; its error message.
    pub fn failed_sync(&self) -> Result<String> {
        let output = self.sync(&[])?;
        ensure!(
            output.status.code() == Some(2),
            "the sync should have failed: {}\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        Ok(String::from_utf8_lossy(&output.stderr).into_owned())
    }

    pub fn synced_policy(&self) -> Option<String> {
        fs::read_to_string(self.sandbox.policy_dir().join(SYNCED_POLICY)).ok()
    }

    pub fn requests(&self, stage: &str) -> Vec<Value> {
        self.server
            .received()
            .into_iter()
            .filter(|received| received.stage == stage)
            .inspect(|received| assert_eq!(received.machine_id, MACHINE_ID))
            .map(|received| received.body)
            .collect()
    }
}

/// A Moroz rule of type BINARY.
pub fn binary_rule(hash: &str, policy: &str) -> String {
    format!("[[rules]]\nrule_type = \"BINARY\"\npolicy = \"{policy}\"\nidentifier = \"{hash}\"\n")
}

/// Polls `done` until it holds, for up to [`EVENT_TIMEOUT`].
pub fn wait_until(mut done: impl FnMut() -> Result<bool>, what: &str) -> Result<()> {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !done()? {
        if Instant::now() > deadline {
            bail!("gave up waiting for {what}");
        }
        thread::sleep(Duration::from_millis(100));
    }
    Ok(())
}

/// The denials of the daemon's events file (the fleet's sandbox's), once `count` are there.
pub fn wait_for_denials(fleet: &Fleet, count: usize) -> Result<Vec<Value>> {
    let events = fleet.sandbox.path("events.jsonl");
    let denials = || -> Result<Vec<Value>> {
        Ok(crate::events_in(&events)?
            .into_iter()
            .filter(|record| record["kind"] == "exec" && record["action"] == "deny")
            .collect())
    };
    wait_until(
        || Ok(denials()?.len() >= count),
        "denials in the events file",
    )?;
    denials()
}

/// The events the server wrote, each file one.
pub fn uploaded_events(fleet: &Fleet) -> Result<Vec<Value>> {
    let mut events = Vec::new();
    let root = fleet.sandbox.path("uploaded");
    for hash in fs::read_dir(&root)? {
        for machine in fs::read_dir(hash?.path())? {
            let machine = machine?;
            ensure!(machine.file_name() == MACHINE_ID, "{:?}", machine.path());
            for event in fs::read_dir(machine.path())? {
                events.push(serde_json::from_slice(&fs::read(event?.path())?)?);
            }
        }
    }
    Ok(events)
}
