//! blocker: refuses to run the binaries a policy bans. The command line; the rest is the
//! library.

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, SystemTime},
};

use clap::{Args, Parser, Subcommand};

use blocker::{
    control, daemon, escape, event_feed, event_log, inspect, kernel,
    kernel::BackendChoice,
    learn, log_lines, scan, sinks,
    sources::SourceRoots,
    status,
    sync::{config::SyncConfig, SyncCommand},
    unload,
};

/// Exit status for errors: bad policies, bad arguments, kernel refusals.
const EXIT_ERROR: u8 = 2;
/// Where the package installs the policies, and the service enforces them.
const INSTALLED_POLICY_DIR: &str = "/etc/blocker/policies";

#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
#[expect(
    clippy::large_enum_variant,
    reason = "parsed once per process; `run` takes most of the options"
)]
enum Command {
    /// Enforce the policies until SIGINT or SIGTERM; events go to the events file, stdout and
    /// the journal as they come.
    Run {
        /// Directory of policy files (*.toml).
        #[arg(long, default_value = INSTALLED_POLICY_DIR)]
        policy_dir: PathBuf,
        /// How denies are enforced: `lsm` refuses the exec with EPERM, `kill` kills the
        /// process before the new program runs, `auto` picks `lsm` where the kernel allows it.
        #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
        backend: BackendChoice,
        /// Seconds between lookups of what rules name (paths, prefixes, globs, packages, apps),
        /// so bans follow deleted, replaced and newly installed files.
        #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..))]
        refresh_interval: u64,
        /// Seconds between content scans of the scan roots, for `sha256` and `appimage` rules.
        #[arg(long, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..))]
        rescan_interval: u64,
        #[command(flatten)]
        scan: ScanArgs,
        /// Ban-map entries the files of one owner other than root, found by walking or
        /// scanning trees, may take; files beyond it are reported, not banned by identity.
        #[arg(long, default_value_t = blocker::budget::DEFAULT_PER_USER, value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..))]
        max_entries_per_user: usize,
        /// Bytes of kernel memory for events waiting to be read: a power of two, at least the
        /// page size. When it is full, events are counted as lost; execs are still enforced.
        #[arg(long, default_value_t = blocker_common::EVENTS_RING_BYTES, value_parser = parse_ring_size)]
        event_buffer_bytes: u32,
        /// Pin the programs and maps under --pin-dir, so they keep enforcing if the daemon stops
        /// or is killed; a daemon started with --pin adopts what an earlier one pinned.
        #[arg(long)]
        pin: bool,
        /// Where --pin pins (on a BPF filesystem).
        #[arg(long, default_value = kernel::pins::DEFAULT_PIN_ROOT)]
        pin_dir: PathBuf,
        /// Tamper protection (lsm backend): no other process may kill or trace the daemon,
        /// touch its maps, programs or pins, or change the policy directory or the blocker
        /// binary; `blocker stop`, `blocker policy` and the service manager still can.
        #[arg(long)]
        protect: bool,
        #[command(flatten)]
        sinks: SinkArgs,
        /// Sync with a Santa sync server as `blocker sync --config FILE` does, from a thread of
        /// the daemon, for setups without the blocker-sync service (the packaged daemon has
        /// no network).
        #[arg(long)]
        sync_config: Option<PathBuf>,
        /// Where the daemon keeps its status document for `blocker status`; its control socket
        /// for `blocker stop` and `blocker policy` is beside it, with the extension `.sock`.
        #[arg(long, default_value = status::DEFAULT_STATUS_FILE)]
        status_file: PathBuf,
        #[command(flatten)]
        metrics: MetricsArgs,
    },
    /// Fetch the fleet's rules from a Santa sync server and install them as the policy file
    /// santa-sync.toml (through the running daemon, as `blocker policy install`); every
    /// interval of the configuration, or once with --once.
    Sync {
        /// The sync configuration: server, TLS credentials, interval, machine id.
        #[arg(long, default_value = blocker::sync::config::DEFAULT_CONFIG_FILE)]
        config: PathBuf,
        /// Sync once, print what changed, and exit.
        #[arg(long)]
        once: bool,
        /// Ask the server for a clean sync: the rules it sends replace every synced rule.
        #[arg(long)]
        clean: bool,
        /// Say how the last sync went, and what it keeps; exit 1 if it failed or none ran.
        #[arg(long, conflicts_with_all = ["once", "clean"])]
        status: bool,
    },
    /// Show this user's refusals as desktop notifications: the per-user agent, started with the
    /// graphical session (blocker-notify.service, or XDG autostart). Runs until killed.
    Notify {
        /// The daemon's notification socket (`notify.sock` beside its status file).
        #[arg(long, default_value = blocker::notify::DEFAULT_SOCKET)]
        socket: PathBuf,
    },
    /// Stop the running daemon, asked over its control socket (a daemon without one: SIGTERM to
    /// every `blocker run`), and wait for it to exit. Exits 1 if none runs.
    Stop {
        /// The status document of the daemon to stop (`run --status-file`), which names its
        /// control socket.
        #[arg(long, default_value = status::DEFAULT_STATUS_FILE)]
        status_file: PathBuf,
    },
    /// Change the policy directory, checking the whole resulting policy before writing anything.
    Policy {
        #[command(subcommand)]
        change: PolicyChange,
    },
    /// Remove the pins `blocker run --pin` left, detaching its programs; says what it removed,
    /// and records it (`unloaded`) in the events file and the journal.
    Unload {
        #[arg(long, default_value = kernel::pins::DEFAULT_PIN_ROOT)]
        pin_dir: PathBuf,
        /// The events file that gets the `unloaded` record (the daemon's).
        #[arg(long, default_value = sinks::DEFAULT_EVENTS_FILE)]
        events_file: PathBuf,
        /// Write the `unloaded` record to no events file.
        #[arg(long)]
        no_events_file: bool,
        /// Write the `unloaded` record to no systemd journal (by default it goes there when
        /// journald runs).
        #[arg(long)]
        no_journald: bool,
        /// The format of the `unloaded` record in the events file: that of the daemon's
        /// (`run --events-format`).
        #[arg(long, value_enum, default_value_t)]
        events_format: sinks::EventsFormat,
    },
    /// Show recorded events: the events file and its rotated predecessors, oldest first, as a
    /// table, or as JSON lines with --json.
    Events {
        /// Keep showing new events as they are written, across rotations.
        #[arg(long, short)]
        follow: bool,
        /// Print the records as the JSON lines they are written as.
        #[arg(long)]
        json: bool,
        /// Only exec events of this rule.
        #[arg(long)]
        rule: Option<String>,
        /// Only events at or after this time: RFC 3339 (2026-11-28T08:00:00Z,
        /// 2026-11-28T10:00:00+02:00, 2026-11-28) or a duration before now (10m, 2h, 1day).
        #[arg(long, value_parser = parse_since)]
        since: Option<SystemTime>,
        /// The events file, as given to `blocker run --events-file`.
        #[arg(long, default_value = sinks::DEFAULT_EVENTS_FILE)]
        file: PathBuf,
    },
    /// Turn the executions lockdown and trusted-path execution audited (`default` and
    /// `untrusted_paths` = "audit") into a policy of allow rules, printed for review: packaged
    /// files by package, files only root can change by path, others by content.
    Learn {
        /// Only executions at or after this time: RFC 3339 or a duration before now (7d).
        #[arg(long, value_parser = parse_since)]
        since: Option<SystemTime>,
        /// The events file, as given to `blocker run --events-file`.
        #[arg(long, default_value = sinks::DEFAULT_EVENTS_FILE)]
        file: PathBuf,
    },
    /// Check policy files for errors; reads nothing else and loads nothing.
    Check {
        /// Default: the running daemon's policy directory, else /etc/blocker/policies.
        policy_dir: Option<PathBuf>,
    },
    /// Show what each rule names on this machine: files, identities, hashes.
    Resolve {
        /// Default: the running daemon's policy directory, else /etc/blocker/policies.
        policy_dir: Option<PathBuf>,
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        scan: ScanArgs,
    },
    /// Print each file's SHA-256 and identity, and with --policy-dir the rule that would match.
    Hash {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[arg(long)]
        policy_dir: Option<PathBuf>,
    },
    /// Say whether a file would be blocked, by which rule, and why not if not.
    /// Exits 0 if it is banned, 1 if it is not.
    Explain {
        file: PathBuf,
        /// Default: the running daemon's policy directory, else /etc/blocker/policies.
        #[arg(long)]
        policy_dir: Option<PathBuf>,
    },
    /// Say whether the daemon runs, what it enforces and how; exits 0 if it runs, 1 if not.
    Status {
        /// One JSON document instead of text.
        #[arg(long)]
        json: bool,
        /// The status document the daemon was told to write with `run --status-file`.
        #[arg(long, default_value = status::DEFAULT_STATUS_FILE)]
        status_file: PathBuf,
        /// The fleet sync's configuration: how its last sync went is shown, once one has run.
        #[arg(long, default_value = blocker::sync::config::DEFAULT_CONFIG_FILE)]
        sync_config: PathBuf,
    },
    /// For `cargo xtask bench`: feed COUNT synthetic denied-exec events, as the kernel reports
    /// them, through the daemon's per-event path to its sinks; loads nothing into the kernel
    /// and needs no privilege. Logs the wall and CPU time it took.
    #[command(hide = true)]
    FeedEvents {
        /// A policy banning at least one file by path, named by the events.
        #[arg(long)]
        policy_dir: PathBuf,
        #[arg(long)]
        count: u64,
        #[command(flatten)]
        sinks: SinkArgs,
    },
}

#[derive(Subcommand)]
enum PolicyChange {
    /// Copy policy files into the directory, replacing files of the same name.
    Install {
        #[arg(required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        target: PolicyTarget,
    },
    /// Remove policy files (by file name) from the directory.
    Remove {
        #[arg(required = true)]
        names: Vec<String>,
        #[command(flatten)]
        target: PolicyTarget,
    },
}

/// The policy directory `blocker policy` changes, and the daemon that does it if it enforces
/// that directory.
#[derive(Args)]
struct PolicyTarget {
    /// Default: the running daemon's policy directory, else /etc/blocker/policies.
    #[arg(long)]
    policy_dir: Option<PathBuf>,
    /// The status document of the daemon to ask (`run --status-file`), which names its control
    /// socket.
    #[arg(long, default_value = status::DEFAULT_STATUS_FILE)]
    status_file: PathBuf,
}

impl PolicyTarget {
    fn change(self, change: control::PolicyChange) -> anyhow::Result<ExitCode> {
        let policy_dir = policy_dir_or_default(self.policy_dir, &self.status_file);
        control::change(change, &policy_dir, &self.status_file)
    }
}

#[derive(Args)]
struct ScanArgs {
    /// A directory to search for files with banned contents (repeatable). Default: /usr, /opt,
    /// /home, /root, /srv, /var/lib/flatpak, /snap, /tmp.
    #[arg(long = "scan-root")]
    scan_roots: Vec<PathBuf>,
    /// Where hashes are kept between scans, keyed by device, inode, size, mtime and ctime.
    #[arg(long, default_value = scan::DEFAULT_CACHE_FILE)]
    hash_cache: PathBuf,
    /// Hash every file again instead of trusting the cache.
    #[arg(long)]
    no_hash_cache: bool,
}

/// Where `blocker run` writes its events.
#[derive(Args)]
struct SinkArgs {
    /// The events file: JSON lines, created readable by root only.
    #[arg(long, default_value = sinks::DEFAULT_EVENTS_FILE)]
    events_file: PathBuf,
    /// The records' format in the events file and on stdout: blocker's own JSON records, or
    /// Elastic Common Schema 8.x documents for a SIEM (the journal keeps its own fields).
    #[arg(long, value_enum, default_value_t)]
    events_format: sinks::EventsFormat,
    /// Write no events file.
    #[arg(long, conflicts_with = "events_file")]
    no_events_file: bool,
    /// Start a new events file when a line would take it past this many bytes.
    #[arg(long, default_value_t = sinks::DEFAULT_MAX_BYTES, value_parser = clap::value_parser!(u64).range(1..))]
    events_file_max_bytes: u64,
    /// Rotated events files kept (FILE.1 the newest); older ones are deleted, unless they
    /// hold denials.
    #[arg(long, default_value_t = sinks::DEFAULT_KEEP)]
    events_file_keep: u32,
    /// Rotated events files holding denials kept beyond --events-file-keep, so a flood of
    /// other records never deletes the only copy of a denial; the oldest go first.
    #[arg(long, default_value_t = sinks::DEFAULT_KEEP_DENIALS)]
    events_file_keep_denials: u32,
    /// Write no events to stdout (for a service, whose stdout goes to the journal anyway).
    #[arg(long)]
    no_stdout: bool,
    /// Write no events to the systemd journal (by default they go there when journald runs).
    #[arg(long)]
    no_journald: bool,
    /// Tell nobody refused: no notification socket for `blocker notify` agents
    /// (/run/blocker/notify.sock, or beside another --status-file as FILE.notify.sock) and no
    /// lines on terminals.
    #[arg(long)]
    no_notify: bool,
}

impl SinkArgs {
    /// The sinks; refused people are told only by a daemon, whose status file is given.
    fn options(self, daemon_status_file: Option<&Path>) -> sinks::SinkOptions {
        sinks::SinkOptions {
            file: (!self.no_events_file).then_some(sinks::FileOptions {
                path: self.events_file,
                max_bytes: self.events_file_max_bytes,
                keep: self.events_file_keep,
                keep_denials: self.events_file_keep_denials,
            }),
            stdout: !self.no_stdout,
            journald_socket: (!self.no_journald).then(|| PathBuf::from(sinks::JOURNALD_SOCKET)),
            // The daemon's log has a line for every event, like every log of a blocker.
            log_lines: true,
            format: self.events_format,
            notify_socket: daemon_status_file
                .filter(|_| !self.no_notify)
                .map(blocker::notify::socket_for),
        }
    }
}

/// Where `blocker run` publishes its metrics for Prometheus.
#[derive(Args)]
struct MetricsArgs {
    /// Write metrics (Prometheus text format) to this node_exporter textfile, replaced at
    /// most once a second when they change; by default /var/lib/prometheus/node-exporter/
    /// blocker.prom if that directory exists.
    #[arg(long)]
    metrics_file: Option<PathBuf>,
    /// Write no metrics file.
    #[arg(long, conflicts_with = "metrics_file")]
    no_metrics_file: bool,
    /// Serve the metrics at http://ADDR/metrics; a loopback address only (port 0: any free
    /// port, logged and named in the status document).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<std::net::SocketAddr>,
}

impl MetricsArgs {
    fn options(self) -> blocker::metrics::MetricsOptions {
        blocker::metrics::MetricsOptions {
            file: if self.no_metrics_file {
                None
            } else {
                self.metrics_file
                    .or_else(blocker::metrics::default_textfile)
            },
            listen: self.metrics_listen,
        }
    }
}

impl ScanArgs {
    fn options(self) -> scan::ScanOptions {
        let cache = (!self.no_hash_cache).then_some(self.hash_cache);
        inspect::scan_options(self.scan_roots, cache)
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    log_lines::init();
    let default_status = Path::new(status::DEFAULT_STATUS_FILE);
    let result = match cli.command {
        Command::Run {
            policy_dir,
            backend,
            refresh_interval,
            rescan_interval,
            scan,
            max_entries_per_user,
            event_buffer_bytes,
            pin,
            pin_dir,
            protect,
            sinks,
            sync_config,
            status_file,
            metrics,
        } => sync_config
            .as_deref()
            .map(SyncConfig::read)
            .transpose()
            .and_then(|sync| {
                daemon::run(
                    daemon::RunOptions {
                        policy_dir,
                        backend,
                        refresh_interval: Duration::from_secs(refresh_interval),
                        rescan_interval: Duration::from_secs(rescan_interval),
                        scan: scan.options(),
                        budget: blocker::budget::Budget::with_per_user(max_entries_per_user),
                        event_buffer_bytes,
                        pin_root: pin.then_some(pin_dir),
                        protect,
                        sinks: sinks.options(Some(&status_file)),
                        status_file,
                        metrics: metrics.options(),
                        sync: None,
                    }
                    .syncing(sync),
                )
            })
            .map(|()| ExitCode::SUCCESS),
        Command::Unload {
            pin_dir,
            events_file,
            no_events_file,
            no_journald,
            events_format,
        } => unload::unload(
            &pin_dir,
            &sinks::SinkOptions {
                file: (!no_events_file).then(|| sinks::FileOptions::defaults(events_file)),
                stdout: false,
                journald_socket: (!no_journald).then(|| PathBuf::from(sinks::JOURNALD_SOCKET)),
                log_lines: false,
                format: events_format,
                notify_socket: None,
            },
        ),
        Command::Sync {
            config,
            once,
            clean,
            status,
        } => {
            let command = match (status, once) {
                (true, _) => SyncCommand::Status,
                (false, true) => SyncCommand::Once,
                (false, false) => SyncCommand::Forever,
            };
            blocker::sync::command(&config, command, clean)
        }
        Command::Stop { status_file } => control::stop(&status_file),
        Command::Notify { socket } => {
            blocker::notify::agent::run(&socket).map(|()| ExitCode::SUCCESS)
        }
        Command::Policy {
            change: PolicyChange::Install { files, target },
        } => control::PolicyChange::install(&files).and_then(|change| target.change(change)),
        Command::Policy {
            change: PolicyChange::Remove { names, target },
        } => target.change(control::PolicyChange::Remove(names)),
        Command::Events {
            follow,
            json,
            rule,
            since,
            file,
        } => event_log::events(&event_log::EventsOptions {
            file,
            follow,
            json,
            rule,
            since,
        }),
        Command::Check { policy_dir } => {
            inspect::check(&policy_dir_or_default(policy_dir, default_status))
        }
        Command::Resolve {
            policy_dir,
            json,
            scan,
        } => inspect::resolve(
            &policy_dir_or_default(policy_dir, default_status),
            &scan.options(),
            json,
        ),
        Command::Hash { files, policy_dir } => inspect::hash(&files, policy_dir.as_deref()),
        Command::Learn { since, file } => learn::learn(&learn::LearnOptions {
            events_file: file,
            since,
            roots: SourceRoots::default(),
        }),
        Command::Explain { file, policy_dir } => {
            inspect::explain(&file, &policy_dir_or_default(policy_dir, default_status))
        }
        Command::Status {
            json,
            status_file,
            sync_config,
        } => status::command(&status_file, &sync_config, json),
        Command::FeedEvents {
            policy_dir,
            count,
            sinks,
        } => event_feed::run(&event_feed::FeedOptions {
            policy_dir,
            events: count,
            sinks: sinks.options(None),
        })
        .map(|()| ExitCode::SUCCESS),
    };
    // What the daemon's log thread still holds (see log_lines::write_behind).
    log::logger().flush();
    result.unwrap_or_else(|error| {
        // Messages may span lines (every problem of a policy, one a line); within a line,
        // nothing may act on the terminal.
        let message = format!("{error:#}");
        let lines: Vec<String> = message.split('\n').map(escape::controls_escaped).collect();
        eprintln!("blocker: {}", lines.join("\n"));
        ExitCode::from(EXIT_ERROR)
    })
}

/// The policy directory commands work on when not told: the one the running daemon enforces (from
/// its status document, `status_file`), else the installed one; never one relative to where
/// they run.
fn policy_dir_or_default(given: Option<PathBuf>, status_file: &Path) -> PathBuf {
    given
        .or_else(|| status::running_daemon(status_file).map(|daemon| daemon.policy_dir))
        .unwrap_or_else(|| PathBuf::from(INSTALLED_POLICY_DIR))
}

fn parse_ring_size(text: &str) -> Result<u32, String> {
    let bytes: u32 = text.parse().map_err(|error| format!("{error}"))?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u32;
    if bytes.is_power_of_two() && bytes >= page {
        Ok(bytes)
    } else {
        Err(format!(
            "must be a power of two of at least {page} (the page size)"
        ))
    }
}

fn parse_since(text: &str) -> Result<SystemTime, String> {
    event_log::parse_since(text, SystemTime::now())
}
