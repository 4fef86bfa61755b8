//! The daemon's status document: `blocker run` publishes what it enforces and how (default
//! `/run/blocker/status.json`), and `blocker status` reads it, checks that the daemon that wrote
//! it is still the process it names, and reports.

mod process;
mod report;

use crate::escape::escaped;
use std::{
    fs, io,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::{
    atomic_file::Published,
    events,
    kernel::{coverage::Features, features, Enforcer, KernelCounters},
    policy::Policy,
    resolve::Resolution,
};

pub use report::command;

pub const DEFAULT_STATUS_FILE: &str = "/run/blocker/status.json";
/// Where the daemon pins its programs and maps so that they outlive it.
pub const PIN_DIR: &str = "/sys/fs/bpf/blocker";

/// Exit status of `blocker status` when no daemon is running (0: running, 2: an error).
pub const EXIT_NOT_RUNNING: u8 = 1;

/// What a daemon last said about itself.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StatusDocument {
    pub state: DaemonState,
    pub pid: u32,
    /// When the process started, in clock ticks after boot (`/proc/PID/stat`): a later process
    /// given the same pid has another.
    pub process_start_ticks: u64,
    pub executable: String,
    pub version: String,
    pub started: String,
    pub updated: String,
    /// When it stopped cleanly; absent while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stopped: Option<String>,
    pub backend: String,
    pub backend_reason: String,
    pub kernel: KernelFeatures,
    /// What the attached programs cover, and what is missing and why.
    pub features: Features,
    pub policy_dir: String,
    pub policies: Vec<PolicyStatus>,
    pub rules: usize,
    pub entries: MapEntries,
    pub events: EventCounts,
    /// Whether the programs are pinned under [`PIN_DIR`], so they keep enforcing without it.
    pub pinned: bool,
    /// Where the daemon listens for `blocker stop` and `blocker policy` (see
    /// [`crate::control_socket`]); absent from daemons older than the socket.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_socket: Option<String>,
    /// Where `GET /metrics` is served (`run --metrics-listen`), its port as bound; absent
    /// without an endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics_endpoint: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DaemonState {
    Running,
    Stopped,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelFeatures {
    /// The active LSMs, in order; the `lsm` backend needs `bpf` among them.
    pub lsms: Vec<String>,
    /// Whether `/sys/kernel/btf/vmlinux` exists; blocker reads its field offsets from it.
    pub btf: bool,
    /// Whether the kernel checks the content of exec'd files itself (IMA's hash).
    pub ima_content_checks: bool,
}

impl KernelFeatures {
    /// What the running kernel offers the loaded `enforcer`.
    pub fn detect(enforcer: &Enforcer) -> Self {
        let lsms = features::active_lsms().unwrap_or_else(|error| {
            log::warn!("status: {error:#}");
            Vec::new()
        });
        Self {
            lsms,
            btf: features::btf_available(),
            ima_content_checks: enforcer.content_checks(),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PolicyStatus {
    pub name: String,
    pub file: String,
    pub mode: String,
}

/// Entries in each kernel map.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapEntries {
    pub banned_files: usize,
    pub banned_contents: usize,
    /// Files rules name that the ban map's budget left out (see [`crate::budget`]).
    #[serde(default)]
    pub over_budget: usize,
    /// Identifiers whose lookups failed for a reason other than their files being gone (see
    /// [`crate::lookup`]); their rules' entries were kept.
    #[serde(default)]
    pub undecided: usize,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventCounts {
    /// Read from the kernel and written out.
    pub delivered: u64,
    /// Dropped by the kernel because the ring buffer was full (the execs were still enforced).
    pub lost: u64,
    /// Not sent by the kernel's record limiter: repeats of the same user, file and operation
    /// beyond its burst (the attempts were still enforced).
    #[serde(default)]
    pub suppressed: u64,
}

/// What does not change while a daemon runs.
pub struct Setup {
    pub path: PathBuf,
    pub policy_dir: PathBuf,
    pub kernel: KernelFeatures,
    pub features: Features,
    pub pinned: bool,
    pub control_socket: PathBuf,
    pub metrics_endpoint: Option<std::net::SocketAddr>,
}

/// What the daemon enforces at one moment.
pub struct Snapshot {
    pub backend: String,
    pub backend_reason: String,
    pub policies: Vec<PolicyStatus>,
    pub rules: usize,
    pub entries: MapEntries,
    pub events: EventCounts,
}

impl Snapshot {
    pub fn of(
        enforcer: &Enforcer,
        policy: &Policy,
        resolution: &Resolution,
        delivered: u64,
        counters: &KernelCounters,
    ) -> Self {
        Self {
            backend: enforcer.backend().name().to_owned(),
            backend_reason: enforcer.backend_reason().to_owned(),
            policies: policy
                .policies
                .iter()
                .map(|header| PolicyStatus {
                    name: header.name.clone(),
                    file: header.file.display().to_string(),
                    mode: header.mode.to_string(),
                })
                .collect(),
            rules: resolution.rules.len(),
            entries: MapEntries {
                banned_files: enforcer.installed_entries(),
                banned_contents: enforcer.installed_content_entries(),
                over_budget: resolution.overflow().total(),
                undecided: resolution.undecided.len(),
            },
            events: EventCounts {
                delivered,
                lost: counters.events_lost,
                suppressed: counters.records_suppressed,
            },
        }
    }
}

/// Keeps the daemon's status document up to date. Enforcement never depends on it: a document
/// that cannot be written is a warning.
pub struct Publisher {
    file: Published,
    document: StatusDocument,
}

impl Publisher {
    /// Publishes the first document.
    pub fn start(setup: Setup, first: Snapshot) -> Self {
        let started = events::now_rfc3339();
        let document = StatusDocument {
            state: DaemonState::Running,
            pid: std::process::id(),
            process_start_ticks: process::own_start_ticks(),
            executable: fs::read_link("/proc/self/exe")
                .map(|path| path.display().to_string())
                .unwrap_or_default(),
            version: env!("CARGO_PKG_VERSION").to_owned(),
            started: started.clone(),
            updated: started,
            stopped: None,
            backend: String::new(),
            backend_reason: String::new(),
            kernel: setup.kernel,
            features: setup.features,
            // Absolute, so that `blocker policy` run from anywhere finds the directory.
            policy_dir: std::path::absolute(&setup.policy_dir)
                .unwrap_or(setup.policy_dir)
                .display()
                .to_string(),
            policies: Vec::new(),
            rules: 0,
            entries: MapEntries {
                banned_files: 0,
                banned_contents: 0,
                over_budget: 0,
                undecided: 0,
            },
            events: EventCounts {
                delivered: 0,
                lost: 0,
                suppressed: 0,
            },
            pinned: setup.pinned,
            control_socket: Some(
                std::path::absolute(&setup.control_socket)
                    .unwrap_or(setup.control_socket)
                    .display()
                    .to_string(),
            ),
            metrics_endpoint: setup.metrics_endpoint.map(|address| address.to_string()),
        };
        let mut publisher = Self {
            file: Published::new(
                setup.path,
                "status",
                "; `blocker status` cannot see this daemon",
            ),
            document,
        };
        publisher.publish(first);
        publisher
    }

    pub fn publish(&mut self, snapshot: Snapshot) {
        let document = &mut self.document;
        document.updated = events::now_rfc3339();
        document.backend = snapshot.backend;
        document.backend_reason = snapshot.backend_reason;
        document.policies = snapshot.policies;
        document.rules = snapshot.rules;
        document.entries = snapshot.entries;
        document.events = snapshot.events;
        self.write();
    }

    /// Marks the document stopped, with the final event counts.
    pub fn stopped(&mut self, events: EventCounts) {
        let now = events::now_rfc3339();
        self.document.state = DaemonState::Stopped;
        self.document.updated = now.clone();
        self.document.stopped = Some(now);
        self.document.events = events;
        self.write();
    }

    fn write(&mut self) {
        self.file.replace(&serialized(&self.document));
    }
}

/// The document as it is written: pretty JSON, a line feed at the end.
fn serialized(document: &StatusDocument) -> Vec<u8> {
    let mut text = serde_json::to_vec_pretty(document).expect("status documents serialize");
    text.push(b'\n');
    text
}

/// What clients need of a running daemon.
#[derive(Debug, PartialEq, Eq)]
pub struct RunningDaemon {
    pub policy_dir: PathBuf,
    pub control_socket: Option<PathBuf>,
}

/// The daemon whose document is at `status_file`, if it runs.
pub fn running_daemon(status_file: &Path) -> Option<RunningDaemon> {
    let document = read(status_file).ok()??;
    let policy_dir = PathBuf::from(&document.policy_dir);
    let running = matches!(
        process::liveness(&document),
        process::Liveness::Running { .. }
    );
    (running && policy_dir.is_absolute()).then(|| RunningDaemon {
        policy_dir,
        control_socket: document.control_socket.map(PathBuf::from),
    })
}

/// The document at `path`; `None` if there is none.
pub fn read(path: &Path) -> Result<Option<StatusDocument>> {
    let text = match fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("reading {}", escaped(&path))),
    };
    parse(path, &text).map(Some)
}

/// The document in `text`, read from `path`.
pub fn parse(path: &Path, text: &str) -> Result<StatusDocument> {
    serde_json::from_str(text).map_err(|error| {
        anyhow::anyhow!(
            "{}:{}:{}: not a blocker status document: {error}",
            escaped(&path),
            error.line(),
            error.column()
        )
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    pub fn example_document() -> StatusDocument {
        StatusDocument {
            state: DaemonState::Running,
            pid: 4242,
            process_start_ticks: 1234,
            executable: "/usr/bin/blocker".to_owned(),
            version: "0.1.0".to_owned(),
            started: "2026-11-28T10:00:00Z".to_owned(),
            updated: "2026-11-28T10:05:00Z".to_owned(),
            stopped: None,
            backend: "lsm".to_owned(),
            backend_reason: "`bpf` is an active LSM (lockdown,capability,integrity,bpf) and the \
                             LSM program loaded"
                .to_owned(),
            kernel: KernelFeatures {
                lsms: vec![
                    "lockdown".to_owned(),
                    "capability".to_owned(),
                    "integrity".to_owned(),
                    "bpf".to_owned(),
                ],
                btf: true,
                ima_content_checks: true,
            },
            features: Features::lsm(
                |program| program != "protect_links",
                |_| "refused by the verifier".to_owned(),
            ),
            policy_dir: "/etc/blocker/policies".to_owned(),
            policies: vec![PolicyStatus {
                name: "government-devices".to_owned(),
                file: "/etc/blocker/policies/government-devices.toml".to_owned(),
                mode: "enforce".to_owned(),
            }],
            rules: 3,
            entries: MapEntries {
                banned_files: 12,
                banned_contents: 1,
                over_budget: 0,
                undecided: 0,
            },
            events: EventCounts {
                delivered: 5,
                lost: 0,
                suppressed: 0,
            },
            pinned: false,
            control_socket: Some("/run/blocker/status.sock".to_owned()),
            metrics_endpoint: Some("127.0.0.1:9851".to_owned()),
        }
    }

    fn snapshot(rules: usize, delivered: u64) -> Snapshot {
        let example = example_document();
        Snapshot {
            backend: example.backend,
            backend_reason: example.backend_reason,
            policies: example.policies,
            rules,
            entries: example.entries,
            events: EventCounts {
                delivered,
                lost: 2,
                suppressed: 0,
            },
        }
    }

    fn publisher(path: &Path) -> Publisher {
        Publisher::start(
            Setup {
                path: path.to_owned(),
                policy_dir: "/etc/blocker/policies".into(),
                kernel: example_document().kernel,
                features: example_document().features,
                pinned: true,
                control_socket: path.with_extension("sock"),
                metrics_endpoint: None,
            },
            snapshot(3, 0),
        )
    }

    #[test]
    fn commands_find_the_policy_directory_and_socket_of_a_running_daemon_only() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        assert_eq!(running_daemon(&path), None, "no document");

        let mut running = publisher(&path);
        assert_eq!(
            running_daemon(&path),
            Some(RunningDaemon {
                policy_dir: PathBuf::from("/etc/blocker/policies"),
                control_socket: Some(dir.path().join("status.sock")),
            })
        );
        running.stopped(EventCounts {
            delivered: 0,
            lost: 0,
            suppressed: 0,
        });
        assert_eq!(running_daemon(&path), None, "stopped");

        let relative = Publisher::start(
            Setup {
                path: path.clone(),
                policy_dir: "policies".into(),
                kernel: example_document().kernel,
                features: example_document().features,
                pinned: false,
                control_socket: "status.sock".into(),
                metrics_endpoint: None,
            },
            snapshot(3, 0),
        );
        let current = std::env::current_dir().unwrap();
        assert_eq!(
            running_daemon(&path),
            Some(RunningDaemon {
                policy_dir: current.join("policies"),
                control_socket: Some(current.join("status.sock")),
            }),
            "published as absolute paths"
        );
        drop(relative);
    }

    #[test]
    fn the_daemon_publishes_itself_and_every_update() {
        let dir = tempfile::tempdir().unwrap();
        // The directory is created if missing, as /run/blocker is after a reboot.
        let path = dir.path().join("run/status.json");
        let mut publisher = publisher(&path);

        let first = read(&path).unwrap().expect("written at start");
        assert_eq!(first.state, DaemonState::Running);
        assert_eq!(first.pid, std::process::id());
        assert_eq!(
            first.process_start_ticks,
            process::start_ticks(std::process::id()).unwrap()
        );
        assert_eq!(
            Path::new(&first.executable),
            std::env::current_exe().unwrap()
        );
        assert_eq!(first.version, env!("CARGO_PKG_VERSION"));
        assert_eq!((first.rules, first.pinned), (3, true));
        assert_eq!(first.policies, example_document().policies);

        publisher.publish(snapshot(4, 7));
        let second = read(&path).unwrap().unwrap();
        assert_eq!((second.rules, second.events.delivered), (4, 7));
        assert_eq!(second.started, first.started);

        publisher.stopped(EventCounts {
            delivered: 9,
            lost: 3,
            suppressed: 4,
        });
        let last = read(&path).unwrap().unwrap();
        assert_eq!(last.state, DaemonState::Stopped);
        assert_eq!(last.stopped.as_deref(), Some(last.updated.as_str()));
        assert_eq!(
            last.events,
            EventCounts {
                delivered: 9,
                lost: 3,
                suppressed: 4,
            }
        );

        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["status.json"], "no temporary file is left behind");
    }

    #[test]
    fn a_document_survives_the_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        let mut stopped = example_document();
        stopped.state = DaemonState::Stopped;
        stopped.stopped = Some("2026-11-28T11:00:00Z".to_owned());
        for document in [example_document(), stopped] {
            crate::atomic_file::replace_atomically(
                &path,
                &serialized(&document),
                crate::atomic_file::PUBLISHED_MODE,
            )
            .unwrap();
            assert_eq!(read(&path).unwrap(), Some(document));
        }
    }

    #[test]
    fn a_missing_document_is_none_and_a_damaged_one_an_error_naming_the_place() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("status.json");
        assert_eq!(read(&path).unwrap(), None);

        fs::write(&path, "{\n  \"state\": \"running\",\n  \"pid\": \"x\"\n}\n").unwrap();
        let error = read(&path).unwrap_err().to_string();
        assert!(
            error.starts_with(&format!("{}:3:", path.display())),
            "{error}"
        );
        assert!(error.contains("not a blocker status document"), "{error}");
    }

    #[test]
    fn an_unwritable_document_does_not_stop_the_daemon() {
        let dir = tempfile::tempdir().unwrap();
        let blocked = dir.path().join("file");
        fs::write(&blocked, "").unwrap();
        // Its directory is a file: every write fails, and publishing carries on.
        let mut publisher = publisher(&blocked.join("status.json"));
        assert!(publisher.file.failing());
        fs::remove_file(&blocked).unwrap();
        publisher.publish(snapshot(5, 1));
        assert!(!publisher.file.failing());
        assert_eq!(
            read(&blocked.join("status.json")).unwrap().unwrap().rules,
            5
        );
    }
}
