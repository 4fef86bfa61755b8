//! `blocker run`: policy files → parsed policy → resolved entries → kernel maps, then kernel
//! events → ring buffer → sinks, until SIGINT or SIGTERM.

use crate::escape::escaped;
use std::{
    borrow::Cow,
    collections::{BTreeMap, BTreeSet},
    ops::ControlFlow,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        Arc,
    },
    time::Duration,
};

use anyhow::{bail, Context, Result};
use aya::maps::{MapData, RingBuf};
use blocker_common::{heartbeat, FileKey, Heartbeat};
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, Signal, SignalKind},
    sync::mpsc,
    time::{sleep_until, Instant, Interval, MissedTickBehavior},
};

use crate::{
    background::{self, Done, Work},
    budget::Budget,
    control::PolicyChange,
    control_socket::{
        self,
        server::{ControlSocket, Notice, Peer},
    },
    events::{self, BootClock, ExecRecord, LostDaemon, Record, TamperRecord},
    identity,
    jobs::Jobs,
    kernel::{
        coverage::{Features, State as FeatureState},
        BackendChoice, Enforcer, KernelCounters, KernelPolicy,
    },
    listed::{log_listed, Tally, LISTED_LINES},
    log_lines,
    metrics::{
        self, endpoint::Endpoint, Activity, DecisionCounts, Exporter, Metrics, MetricsOptions,
    },
    pidfd,
    policy::{Action, Policy},
    prepare::{prepare, Contents, Prepared},
    reload::{DirectoryWatcher, QUIET_BEFORE_RELOAD},
    resolve::{self, Resolution, RuleInfo, Via},
    scan::{HashedFile, ScanOptions, ScanReport},
    sinks::{Batch, SinkOptions, Sinks},
    sources::SourceRoots,
    status::{self, EventCounts, KernelFeatures, Publisher, Snapshot},
    sync::{self, config::SyncConfig},
    systemd, watch,
};

/// Events handled before the loop turns to signals, reloads and timers: an exec storm must not
/// keep the daemon from reloading or stopping.
pub(crate) const EVENTS_PER_TURN: usize = 256;

/// How often the kernel's lost-event counter is checked.
const COUNTER_CHECK_INTERVAL: Duration = Duration::from_secs(2);

/// How often the metrics are exported, if they changed: never per event.
const METRICS_EXPORT_INTERVAL: Duration = Duration::from_secs(1);

pub struct RunOptions {
    pub policy_dir: PathBuf,
    pub backend: BackendChoice,
    /// How often rules are resolved again, so bans follow deleted, replaced and new files.
    pub refresh_interval: Duration,
    /// How often the scan roots are scanned again for banned contents.
    pub rescan_interval: Duration,
    pub scan: ScanOptions,
    /// How the ban map's capacity is shared; see [`crate::budget`].
    pub budget: Budget,
    /// Size of the kernel's event ring buffer.
    pub event_buffer_bytes: u32,
    /// Where programs and maps are pinned to outlive the daemon; `None` leaves nothing behind.
    pub pin_root: Option<PathBuf>,
    /// Tamper protection: see [`Enforcer::protect`].
    pub protect: bool,
    pub sinks: SinkOptions,
    /// Where `blocker status` finds what this daemon enforces.
    pub status_file: PathBuf,
    pub metrics: MetricsOptions,
    /// Syncs with a Santa sync server from a thread of the daemon (`--sync-config`).
    pub sync: Option<SyncConfig>,
}

impl RunOptions {
    /// These options syncing with `sync` (if any) into this daemon's own policy directory,
    /// and uploading its own events.
    pub fn syncing(self, sync: Option<SyncConfig>) -> Self {
        let sync = sync.map(|config| {
            config.for_daemon(
                &self.policy_dir,
                &self.status_file,
                self.sinks.file.as_ref().map(|file| file.path.as_path()),
            )
        });
        Self { sync, ..self }
    }
}

pub fn run(options: RunOptions) -> Result<()> {
    if options.protect && options.backend == BackendChoice::Kill {
        bail!("--protect needs the lsm backend: only LSM programs can refuse tampering");
    }
    // The event loop logs; a stderr nobody reads must not hold it up.
    log_lines::write_behind();
    let resolving = std::time::Instant::now();
    // Identity rules first: the content scan can take long, and runs in the background once
    // the programs are attached.
    let Prepared {
        policy,
        mut resolution,
        ..
    } = prepare(&options.policy_dir, Contents::NotScanned, options.budget)?;
    resolution.forget_matches();
    for header in &policy.policies {
        log::info!(
            "policy `{}` ({}) from {}",
            header.name,
            header.mode,
            escaped(&header.file)
        );
    }
    log_resolution(&resolution);
    // `cargo xtask bench` reads the startup costs from these two lines.
    log::info!(
        "resolved {} rules to {} files in {:.3} s",
        resolution.rules.len(),
        resolution.entries.len(),
        resolving.elapsed().as_secs_f64()
    );
    // Decided before anything is loaded: protection covers the policy directory as it is now.
    let protected_directories = if options.protect {
        Some(vec![std::fs::canonicalize(&options.policy_dir)
            .with_context(|| {
                format!("resolving {}", options.policy_dir.display())
            })?])
    } else {
        None
    };
    check_identities(&resolution, protected_directories.as_deref())?;
    // Before anything is loaded: a daemon nobody could ask to stop does not start, nor one
    // whose metrics endpoint cannot listen where asked. Removed when dropped, however the
    // start fails or the daemon ends.
    let listeners = Listeners {
        control: ControlSocket::bind(control_socket::server::path_for(&options.status_file)?)?,
        metrics: options.metrics.listen.map(Endpoint::start).transpose()?,
    };
    let sink = Sinks::start(&options.sinks)?;
    let loading = std::time::Instant::now();
    let enforcer = Enforcer::start(
        options.backend,
        options.event_buffer_bytes,
        options.pin_root.as_deref(),
        &KernelPolicy {
            entries: &resolution.entries,
            allowed: &resolution.allowed,
            content_bans: &resolution.content_bans(),
            settings: resolution.exec_settings(),
        },
        protected_directories.as_deref(),
    )?;
    log::info!(
        "loaded the kernel programs and {} map entries in {:.3} s",
        enforcer.installed_entries(),
        loading.elapsed().as_secs_f64()
    );
    log::info!(
        "enforcing {} rules ({} files) with the {} backend: {}",
        resolution.rules.len(),
        enforcer.installed_entries(),
        enforcer.backend().name(),
        enforcer.backend_reason()
    );
    log_features(enforcer.features());
    let protected = enforcer.named_in_events();
    if !protected.is_empty() {
        log::info!(
            "tamper protection on: {}; stop with `blocker stop` or the service manager, change \
             policies with `blocker policy`",
            enforcer
                .protected()
                .values()
                .map(|path| escaped(path).to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let served = runtime.block_on(serve(
        enforcer, protected, policy, resolution, options, sink, listeners,
    ));
    // A scan still running in the background has no one left to report to: stopping must not
    // wait for it.
    runtime.shutdown_background();
    served
}

/// Tells the kernel programs, and systemd's watchdog (`WatchdogSec=`), that the event loop
/// runs.
fn beat(enforcer: &mut Enforcer) {
    if let Err(error) = enforcer.beat() {
        log::error!("{error:#}");
    }
    systemd::notify_watchdog();
}

/// The daemon before this one, whose programs this one adopted, stopped beating without
/// stopping: whatever ended or held it did so without a record of its own.
fn report_lost_daemon(last: Heartbeat, sink: &Sinks) {
    let Some(lost) = LostDaemon::of(&last) else {
        return;
    };
    let record = Record::DaemonLost {
        time: events::now_rfc3339(),
        pid: lost.pid,
        last_heard: lost.last_heard,
        silent_seconds: lost.silent_seconds,
    };
    log::warn!("{}", record.summary());
    sink.emit(record);
}

/// The record of a change a client made through the control socket.
fn policy_changed(change: PolicyChange, peer: Peer) -> Record {
    let (installed, removed) = match change {
        PolicyChange::Install(files) => (
            files.into_iter().map(|file| file.name).collect(),
            Vec::new(),
        ),
        PolicyChange::Remove(names) => (Vec::new(), names),
    };
    Record::PolicyChanged {
        time: events::now_rfc3339(),
        pid: peer.pid,
        uid: peer.uid,
        installed,
        removed,
    }
}

/// What the daemon is reached through, bound before anything is loaded.
struct Listeners {
    control: ControlSocket,
    metrics: Option<Endpoint>,
}

/// Announces the start, then serves until SIGINT, SIGTERM or a stop asked over the control
/// socket, and stops.
async fn serve(
    mut enforcer: Enforcer,
    protected: BTreeMap<FileKey, PathBuf>,
    policy: Policy,
    resolution: Resolution,
    options: RunOptions,
    sink: Sinks,
    listeners: Listeners,
) -> Result<()> {
    let Listeners {
        mut control,
        metrics: endpoint,
    } = listeners;
    let exporter = Exporter::new(options.metrics.file.clone(), endpoint);
    let mut wakeups = Wakeups::new(&mut enforcer, &options, &mut control).await?;
    let hash_limit_bytes = Arc::new(AtomicU64::new(policy.hash_limit_bytes()));
    let mut content_watch = ContentWatch::new();
    content_watch.start_if_needed(&policy, &options, &hash_limit_bytes);
    // Read before this daemon's first beat; beaten before anyone hears it started.
    let previous_heartbeat = enforcer
        .heartbeat()
        .map_err(|error| log::error!("{error:#}"))
        .ok();
    beat(&mut enforcer);
    let counters = KernelCounters::default();
    // Written before `started`, so that whoever waits for that record finds the status too.
    let status = Publisher::start(
        status::Setup {
            path: options.status_file.clone(),
            policy_dir: options.policy_dir.clone(),
            kernel: KernelFeatures::detect(&enforcer),
            features: enforcer.features().clone(),
            pinned: enforcer.pinned().is_some(),
            control_socket: control.path().to_owned(),
            metrics_endpoint: exporter.endpoint_address(),
        },
        Snapshot::of(&enforcer, &policy, &resolution, 0, &counters),
    );
    let mut metrics = Metrics::new(
        std::time::SystemTime::now(),
        enforcer.backend().name(),
        enforcer.features(),
    );
    metrics
        .decisions
        .name_rules(rules_named_in_events(&resolution, &BTreeMap::new()));
    let mut daemon = Daemon {
        enforcer,
        protected,
        options,
        sink,
        status,
        policy,
        resolution,
        retired_rules: BTreeMap::new(),
        scanned: None,
        scanned_once: false,
        watched: Vec::new(),
        watched_by_job: 0,
        package_trust_changes_by_job: 0,
        package_trust_changes_applied: 0,
        jobs: Jobs::default(),
        hash_limit_bytes,
        content_watch,
        watcher_warnings: Tally::new(log::Level::Warn),
        newly_banned: Tally::new(log::Level::Warn),
        reported_overflow: 0,
        delivered: 0,
        counters,
        metrics,
        exporter,
    };
    daemon.announce_start(previous_heartbeat);
    if let Some(config) = daemon.options.sync.clone() {
        // Off the event loop: a sync blocks on the network, and installs its rules through
        // this daemon's control socket as `blocker sync` would.
        std::thread::Builder::new()
            .name("sync".to_owned())
            .spawn(move || sync::run_forever(&config, false))
            .context("starting the sync thread")?;
    }
    daemon.serve(&mut wakeups).await?;
    // No one may ask anything of a daemon that is stopping.
    drop(control);
    daemon.stop(wakeups.events.get_mut());
    Ok(())
}

/// What the event loop waits on besides the daemon's own channels.
struct Wakeups {
    events: AsyncFd<RingBuf<MapData>>,
    kernel_log: AsyncFd<aya_log::EbpfLogger<&'static dyn log::Log>>,
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
    policy_dir: Option<AsyncFd<DirectoryWatcher>>,
    /// dpkg's database: installing, upgrading or removing a package changes what package
    /// rules name and what lockdown trusts.
    packages: Option<AsyncFd<DirectoryWatcher>>,
    control_notices: mpsc::Receiver<Notice>,
    /// When the policy is to be read again: at once after SIGHUP, once the directory is quiet
    /// after a change in it.
    reload_due: Option<Instant>,
    refresh: Interval,
    counter_check: Interval,
    rescan: Interval,
    heartbeat: Interval,
    metrics_export: Interval,
}

impl Wakeups {
    async fn new(
        enforcer: &mut Enforcer,
        options: &RunOptions,
        control: &mut ControlSocket,
    ) -> Result<Self> {
        // SAFETY (both): each value owns its file descriptor and keeps it open, unreplaced, for
        // as long as the AsyncFd holds it.
        let events =
            unsafe { AsyncFd::register_with_interest(enforcer.take_events()?, Interest::READABLE) }
                .context("watching the ring buffer")?;
        let kernel_log =
            unsafe { AsyncFd::register_with_interest(enforcer.take_logger()?, Interest::READABLE) }
                .context("watching eBPF logs")?;
        let interrupt = signal(SignalKind::interrupt())?;
        let terminate = signal(SignalKind::terminate())?;
        let hangup = signal(SignalKind::hangup())?;
        let policy_dir = watch_policy_dir(&options.policy_dir);
        let packages = watch_dpkg_database(&SourceRoots::default());
        let control_notices = control.serve(std::path::absolute(&options.policy_dir)?)?;
        let mut refresh = tokio::time::interval(options.refresh_interval);
        refresh.tick().await;
        let counter_check = tokio::time::interval(COUNTER_CHECK_INTERVAL);
        let mut rescan = tokio::time::interval(options.rescan_interval);
        rescan.tick().await;
        let heartbeat = tokio::time::interval(Duration::from_secs(heartbeat::INTERVAL_SECS));
        let mut metrics_export = tokio::time::interval(METRICS_EXPORT_INTERVAL);
        metrics_export.set_missed_tick_behavior(MissedTickBehavior::Delay);
        Ok(Self {
            events,
            kernel_log,
            interrupt,
            terminate,
            hangup,
            policy_dir,
            packages,
            control_notices,
            reload_due: None,
            refresh,
            counter_check,
            rescan,
            heartbeat,
            metrics_export,
        })
    }
}

/// The policy in force, the background work on it and what the daemon reports.
struct Daemon {
    enforcer: Enforcer,
    /// Protected files by key, to name them in tamper events.
    protected: BTreeMap<FileKey, PathBuf>,
    options: RunOptions,
    sink: Sinks,
    status: Publisher,
    policy: Policy,
    resolution: Resolution,
    /// Rules reloads removed, so an event raised under the previous policy still names its rule.
    retired_rules: BTreeMap<u32, RuleInfo>,
    scanned: Option<Arc<ScanReport>>,
    /// Whether the first content scan is done.
    scanned_once: bool,
    /// Files the content watcher found banned since the last content scan started.
    watched: Vec<HashedFile>,
    /// How many of `watched` the running job knows of.
    watched_by_job: usize,
    /// The kernel's count of trust changes it made for a package manager when the running job
    /// started: if it moved by the job's end, dpkg replaced files the job may have seen as
    /// they were before.
    package_trust_changes_by_job: u64,
    /// That count when the daemon last put its trusted set in force: once it moved, the
    /// kernel holds trust the daemon has not checked against the package database.
    package_trust_changes_applied: u64,
    jobs: Jobs<Work, Done>,
    /// The policy's hash size limit, shared with the content watcher's threads.
    hash_limit_bytes: Arc<AtomicU64>,
    content_watch: ContentWatch,
    watcher_warnings: Tally,
    newly_banned: Tally,
    /// The ban map's overflow last reported.
    reported_overflow: usize,
    /// Events handed to the sinks.
    delivered: u64,
    /// The kernel's counters when last read.
    counters: KernelCounters,
    metrics: Metrics,
    exporter: Exporter,
}

impl Daemon {
    /// Tells the sinks and the service manager that the daemon runs, and starts the first
    /// content scan if content rules need it. `previous_heartbeat`: that of the daemon whose
    /// programs this one adopted.
    fn announce_start(&mut self, previous_heartbeat: Option<Heartbeat>) {
        let enforcer = &self.enforcer;
        self.sink.emit(Record::Started {
            time: events::now_rfc3339(),
            backend: enforcer.backend().name(),
            backend_reason: enforcer.backend_reason().to_owned(),
            policies: self
                .policy
                .policies
                .iter()
                .map(|p| p.name.clone())
                .collect(),
            rules: self.resolution.rules.len(),
            entries: enforcer.installed_entries(),
            pinned: enforcer.pinned().map(|dir| dir.display().to_string()),
            adopted: enforcer.adopted(),
            adoption_refused: enforcer.adoption_refused().map(str::to_owned),
            protected: !self.protected.is_empty(),
            features: enforcer.features().clone(),
        });
        if let Some(previous) = previous_heartbeat {
            report_lost_daemon(previous, &self.sink);
        }
        systemd::notify_ready();
        if resolve::needs_scan(&self.policy) {
            log::info!("content rules: scanning the scan roots in the background");
            self.request(Work::Refresh { rescan: true });
        }
    }

    /// Hands each wakeup to its handler until the daemon is to stop.
    async fn serve(&mut self, wakeups: &mut Wakeups) -> Result<()> {
        loop {
            tokio::select! {
                ready = wakeups.events.readable_mut() => {
                    let mut ready = ready?;
                    // Left ready while events remain, so the loop comes back after its other
                    // work.
                    if self.forward_events(ready.get_inner_mut(), EVENTS_PER_TURN) {
                        ready.clear_ready();
                    }
                }
                ready = wakeups.kernel_log.readable_mut() => {
                    let mut ready = ready?;
                    ready.get_inner_mut().flush();
                    ready.clear_ready();
                }
                _ = wakeups.rescan.tick(), if resolve::needs_scan(&self.policy) => {
                    self.request(Work::Refresh { rescan: true });
                }
                Some(report) = self.content_watch.reports.recv() => self.watcher_report(report),
                _ = wakeups.refresh.tick() => self.request(Work::Refresh { rescan: false }),
                _ = wakeups.counter_check.tick() => self.check_counters(),
                _ = wakeups.heartbeat.tick() => beat(&mut self.enforcer),
                _ = wakeups.metrics_export.tick(), if self.exporter.active() => {
                    self.export_metrics();
                }
                _ = wakeups.hangup.recv() => wakeups.reload_due = Some(Instant::now()),
                ready = changed(wakeups.policy_dir.as_ref()) => {
                    let mut ready = ready?;
                    if ready.get_inner().drain() {
                        wakeups.reload_due = Some(Instant::now() + QUIET_BEFORE_RELOAD);
                    }
                    ready.clear_ready();
                }
                ready = changed(wakeups.packages.as_ref()) => {
                    let mut ready = ready?;
                    // At once, not after a quiet time: under lockdown, a program a package
                    // just put in place is refused until the refresh is done.
                    if ready.get_inner().drain() && resolve::depends_on_packages(&self.policy) {
                        self.request(Work::Refresh { rescan: false });
                    }
                    ready.clear_ready();
                }
                _ = sleep_until(wakeups.reload_due.unwrap_or_else(Instant::now)),
                    if wakeups.reload_due.is_some() =>
                {
                    wakeups.reload_due = None;
                    self.request(Work::Reload);
                }
                Some(done) = self.jobs.done() => self.job_done(done),
                Some(notice) = wakeups.control_notices.recv() => {
                    if self.control_notice(notice).is_break() {
                        return Ok(());
                    }
                }
                _ = wakeups.interrupt.recv() => return Ok(()),
                _ = wakeups.terminate.recv() => return Ok(()),
            }
        }
    }

    /// Forwards up to `limit` queued events; returns whether the ring is now empty.
    fn forward_events(&mut self, ring: &mut RingBuf<MapData>, limit: usize) -> bool {
        let known = Known {
            resolution: &self.resolution,
            retired_rules: &self.retired_rules,
            protected: &self.protected,
        };
        let (count, emptied) = drain(ring, &known, &self.sink, limit, &mut self.metrics.decisions);
        self.delivered += count;
        emptied
    }

    /// Exports the metrics, if they changed, with the levels as they are now.
    fn export_metrics(&mut self) {
        self.metrics.set_levels(metric_levels(
            &self.resolution,
            self.enforcer.installed_entries(),
            self.delivered,
            &self.counters,
            &self.sink,
        ));
        self.exporter.export(&mut self.metrics);
    }

    /// Writes the status file anew.
    fn publish(&mut self) {
        self.status.publish(Snapshot::of(
            &self.enforcer,
            &self.policy,
            &self.resolution,
            self.delivered,
            &self.counters,
        ));
    }

    /// Reports what the kernel's counters say happened since the last check, flushes the
    /// content watcher's tallies and publishes the status.
    fn check_counters(&mut self) {
        self.counters = report_lost_events(&self.enforcer, self.counters, &self.sink);
        self.watcher_warnings
            .flush(|more| format!("content watcher: {more} more warnings not listed"));
        self.newly_banned.flush(|more| {
            format!("content watcher: {more} more files with banned content not listed")
        });
        self.report_overflow();
        self.publish();
    }

    /// Takes in what the content watcher reports: a file it hashed, a loss of events (only a
    /// rescan catches up) or a warning.
    fn watcher_report(&mut self, report: watch::Report) {
        match report {
            watch::Report::Seen(seen) => {
                if self.content_seen(&seen) {
                    self.publish();
                }
            }
            watch::Report::Overflow => {
                log::warn!("content watcher: the kernel dropped events; rescanning");
                self.request(Work::Refresh { rescan: true });
            }
            watch::Report::Warning(warning) => {
                self.watcher_warnings
                    .note(format_args!("content watcher: {warning}"));
            }
        }
    }

    /// Asks for `work`; it starts now unless a job runs, else after it.
    fn request(&mut self, work: Work) {
        if let Some(work) = self.jobs.request(work) {
            self.start_job(work);
        }
    }

    /// Runs `work` off the event loop, from the state as it is now.
    fn start_job(&mut self, work: Work) {
        self.watched_by_job = self.watched.len();
        self.package_trust_changes_by_job = self.package_trust_changes();
        let inputs = background::Inputs {
            policy: self.policy.clone(),
            policy_dir: self.options.policy_dir.clone(),
            scan: self.options.scan.clone(),
            budget: self.options.budget,
            scanned: self.scanned.clone(),
            watched: self.watched.clone(),
        };
        self.jobs.run(move || background::run(work, inputs));
    }

    /// Takes in the result of a background job and starts the one waiting, if any.
    fn job_done(&mut self, done: Done) {
        match done {
            Done::Refreshed {
                resolution,
                rescanned,
            } => {
                if self.refreshed(resolution, rescanned) {
                    self.publish();
                }
            }
            Done::Reloaded(loaded) => self.reload_done(loaded),
        }
        self.report_overflow();
        if let Some(next) = self.jobs.finished() {
            self.start_job(next);
        }
    }

    /// The kernel's count of trust changes made for a package manager; 0 if it cannot be read
    /// (logged), which only means a stale resolution is not noticed.
    fn package_trust_changes(&self) -> u64 {
        match self.enforcer.counters() {
            Ok(counters) => counters.package_trust_changes,
            Err(error) => {
                log::error!("reading kernel counters: {error:#}");
                0
            }
        }
    }

    /// Whether a package manager moved files in or out of trust while the finished job ran.
    fn package_files_moved_during_job(&self) -> bool {
        self.package_trust_changes() != self.package_trust_changes_by_job
    }

    /// Files the watcher found while the finished job ran, which its resolution lacks.
    fn watched_since_job(&self) -> &[HashedFile] {
        &self.watched[self.watched_by_job.min(self.watched.len())..]
    }

    /// After a job that scanned: its scan, which started after them, has the watcher's earlier
    /// finds that are still on disk.
    fn forget_watched_before_job(&mut self) {
        self.watched
            .drain(..self.watched_by_job.min(self.watched.len()));
    }

    /// Puts a refreshed resolution (after a new content scan, with `rescanned`) in force if it
    /// changes the ban map; says whether it did.
    fn refreshed(
        &mut self,
        mut fresh: Resolution,
        rescanned: Option<Option<Arc<ScanReport>>>,
    ) -> bool {
        background::take_in_watched(&self.policy, &mut fresh, self.watched_since_job());
        fresh.keep_undecided(&self.resolution);
        if (&fresh.undecided, fresh.kept) != (&self.resolution.undecided, self.resolution.kept) {
            log_undecided(&fresh);
            if fresh.undecided.is_empty() {
                log::info!("every identifier could be looked up again");
            }
        }
        let mut first_scan = false;
        if let Some(scanned) = rescanned {
            self.forget_watched_before_job();
            self.scanned = scanned;
            first_scan = !std::mem::replace(&mut self.scanned_once, true);
        }
        let changed = fresh.entries != self.resolution.entries;
        if changed {
            match self.enforcer.apply(&fresh.entries) {
                Ok(stats) => {
                    log_changes(&self.resolution, &fresh);
                    log::info!("ban map updated: {stats}");
                }
                Err(error) => {
                    log::error!("{error:#}");
                    return false;
                }
            }
        }
        let kernel_trusted_since =
            self.package_trust_changes_by_job != self.package_trust_changes_applied;
        let to_apply = fresh.allowed != self.resolution.allowed || kernel_trusted_since;
        if to_apply && self.package_files_moved_during_job() {
            // The kernel's trust is newer than this resolution: keep it, and resolve again.
            fresh.allowed = self.resolution.allowed.clone();
            self.request(Work::Refresh { rescan: false });
        } else if to_apply {
            match self.enforcer.apply_allowed(&fresh.allowed) {
                Ok(stats) => {
                    self.package_trust_changes_applied = self.package_trust_changes_by_job;
                    log::info!("allowed files updated: {stats}");
                }
                Err(error) => {
                    log::error!("{error:#}");
                    return false;
                }
            }
        }
        // Only once the ban map holds what the scan found: whoever waits for this line (a
        // test, an administrator) may rely on it.
        if first_scan {
            log::info!(
                "content rules: the background scan is done; {} files banned",
                fresh.entries.len()
            );
            log_resolution(&fresh);
        }
        self.resolution = fresh;
        changed
    }

    /// Puts a reloaded policy in force, or reports why it stays out.
    fn reload_done(&mut self, loaded: Result<Prepared, String>) {
        let applied = loaded.and_then(|mut loaded| {
            // Files the watcher found while the reload ran, which its scan may lack.
            background::take_in_watched(
                &loaded.policy,
                &mut loaded.resolution,
                self.watched_since_job(),
            );
            loaded.resolution.keep_undecided(&self.resolution);
            apply_reload(loaded, &mut self.enforcer).map_err(|error| format!("{error:#}"))
        });
        // The reload's trusted files may predate files dpkg moved meanwhile: resolve again.
        if self.package_files_moved_during_job() {
            self.request(Work::Refresh { rescan: false });
        } else if applied.is_ok() {
            self.package_trust_changes_applied = self.package_trust_changes_by_job;
        }
        let reloaded = match applied {
            Ok(reloaded) => reloaded,
            Err(error) => {
                self.metrics
                    .record(Activity::Reload, false, std::time::SystemTime::now());
                log::error!("reload refused, the previous policy stays in force: {error}");
                self.sink.emit(Record::ReloadFailed {
                    time: events::now_rfc3339(),
                    error,
                });
                return;
            }
        };
        let fresh = &reloaded.resolution;
        log_changes(&self.resolution, fresh);
        log_resolution(fresh);
        log::info!(
            "policy reloaded: {} rules, {} files banned",
            fresh.rules.len(),
            fresh.entries.len()
        );
        self.sink.emit(Record::Reloaded {
            time: events::now_rfc3339(),
            policies: reloaded
                .policy
                .policies
                .iter()
                .map(|p| p.name.clone())
                .collect(),
            rules: fresh.rules.len(),
            entries: fresh.entries.len(),
        });
        retire_rules(&mut self.retired_rules, &self.resolution, fresh);
        self.metrics
            .decisions
            .name_rules(rules_named_in_events(fresh, &self.retired_rules));
        self.metrics
            .record(Activity::Reload, true, std::time::SystemTime::now());
        self.hash_limit_bytes
            .store(reloaded.policy.hash_limit_bytes(), Ordering::Relaxed);
        self.policy = reloaded.policy;
        self.scanned = reloaded.scanned;
        self.resolution = reloaded.resolution;
        self.forget_watched_before_job();
        self.publish();
        self.content_watch
            .start_if_needed(&self.policy, &self.options, &self.hash_limit_bytes);
    }

    /// Takes in a file the watcher hashed: if a content rule bans it and it has no entry yet, a
    /// process that exec'd it before the ban was in place is killed, and the file gets an
    /// entry if the budget has room. Returns whether the ban map changed.
    fn content_seen(&mut self, seen: &watch::Seen) -> bool {
        let Some(find) = judge_seen(
            &self.policy,
            &self.resolution,
            self.enforcer.content_checks(),
            seen,
        ) else {
            return false;
        };
        let file = &seen.file;
        if let Some(pid) = find.kill {
            kill_late_exec(pid, file);
        }
        let entered = self
            .resolution
            .add_seen(find.rule_id, find.via.clone(), file);
        let banned = entered
            && match self.enforcer.apply(&self.resolution.entries) {
                Ok(_) => true,
                Err(error) => {
                    log::error!("{error:#}");
                    false
                }
            };
        if entered {
            self.watched.push(file.clone());
        }
        // Logged once the entry is in force.
        self.newly_banned.note(format_args!(
            "content watcher: {} has content banned by rule {} ({}){}",
            escaped(&file.path),
            find.rule.as_ref().map_or("?", |rule| rule.id.as_str()),
            find.via,
            if banned {
                ""
            } else {
                "; not banned by identity (see the ban map budget)"
            }
        ));
        entered
    }

    /// Warns when more files than last time were left out of the ban map.
    fn report_overflow(&mut self) {
        let overflow = self.resolution.overflow();
        let total = overflow.total();
        if total == std::mem::replace(&mut self.reported_overflow, total) || total == 0 {
            return;
        }
        let budget = self.resolution.budget();
        log::warn!(
            "ban map budget: {total} files rules name are not banned by identity: {} beyond the \
             limits on files owned by users other than root ({} per user, {} in all; owners: \
             {}), {} beyond the map's capacity ({}); content rules still catch them when they \
             run",
            overflow.over_user_limits,
            budget.per_user,
            budget.users,
            listed_owners(&overflow.owners),
            overflow.over_capacity,
            budget.capacity
        );
    }

    /// Logs and records a change of policy files a client asked for; says whether to stop.
    fn control_notice(&mut self, notice: Notice) -> ControlFlow<()> {
        match notice {
            Notice::Stop { peer } => {
                log::info!("stopping, as {peer} asked over the control socket");
                ControlFlow::Break(())
            }
            Notice::PolicyChanged { peer, change } => {
                let record = policy_changed(change, peer);
                log::info!("{}", record.summary());
                self.sink.emit(record);
                ControlFlow::Continue(())
            }
        }
    }

    /// Stops beating, detaches or leaves the pinned programs, forwards the events still queued
    /// in `ring`, exports the final metrics and closes the sinks with the `stopped` record.
    fn stop(mut self, ring: &mut RingBuf<MapData>) {
        self.counters = report_lost_events(&self.enforcer, self.counters, &self.sink);
        let Self {
            mut enforcer,
            protected,
            sink,
            mut status,
            resolution,
            retired_rules,
            mut delivered,
            counters,
            mut metrics,
            mut exporter,
            ..
        } = self;
        if enforcer.content_checks() {
            log::info!(
                "content checks: {} answered from the verdict cache, {} hashed (executable \
                 mappings: {} from the cache, {} hashed), {} over the hash limit, {} not \
                 hashable, {} on filesystems that can change bytes unseen (not judged), {} \
                 cached verdicts dropped after a change",
                counters.verdict_cache_hits,
                counters.verdict_cache_misses,
                counters.mapping_verdict_cache_hits,
                counters.mapping_verdict_cache_misses,
                counters.content_too_large,
                counters.content_hash_failures,
                counters.content_unguarded,
                counters.verdicts_invalidated
            );
        }
        let pinned = enforcer.pinned().map(|dir| dir.display().to_string());
        let entries = enforcer.installed_entries();
        if let Err(error) = enforcer.stop_beating() {
            log::error!("{error:#}");
        }
        if pinned.is_some() && !protected.is_empty() {
            // Stopped the documented way: the pins and policies may now be changed, until the
            // next daemon protects them again.
            if let Err(error) = enforcer.unprotect() {
                log::error!("{error:#}");
            }
        }
        enforcer.release();
        match &pinned {
            Some(dir) => log::info!(
                "the programs pinned at {dir} keep enforcing the policy; `blocker unload` \
                 detaches them"
            ),
            None => log::info!("programs detached; execs are no longer checked"),
        }
        let known = Known {
            resolution: &resolution,
            retired_rules: &retired_rules,
            protected: &protected,
        };
        delivered += drain(ring, &known, &sink, usize::MAX, &mut metrics.decisions).0;
        metrics.set_levels(metric_levels(
            &resolution,
            entries,
            delivered,
            &counters,
            &sink,
        ));
        exporter.export(&mut metrics);
        sink.close(|records_dropped| Record::Stopped {
            time: events::now_rfc3339(),
            events: delivered,
            events_lost: counters.events_lost,
            pinned,
            records_dropped,
        });
        status.stopped(EventCounts {
            delivered,
            lost: counters.events_lost,
            suppressed: counters.records_suppressed,
        });
    }
}

/// A file the content watcher hashed that a content rule bans and the ban map lacks.
#[derive(Debug, PartialEq)]
struct Find {
    rule_id: u32,
    via: Via,
    rule: Option<RuleInfo>,
    /// The process to kill: it exec'd the file under a deny rule, and the kernel let it.
    kill: Option<i32>,
}

/// What a file the content watcher hashed means under the policy in force: nothing when no
/// content rule bans it or it has an entry already, else a [`Find`]. `kernel_checks_contents`:
/// whether the kernel hashes what is exec'd, and so refused the exec itself where a deny rule
/// names the contents.
fn judge_seen(
    policy: &Policy,
    resolution: &Resolution,
    kernel_checks_contents: bool,
    seen: &watch::Seen,
) -> Option<Find> {
    let file = &seen.file;
    let (rule_id, via) = resolve::content_matches(policy, file).into_iter().next()?;
    if resolution.entries.contains_key(&file.identity.key) {
        return None;
    }
    let rule = resolution.rule(rule_id).cloned();
    let denies = |rule: Option<&RuleInfo>| rule.is_some_and(|rule| rule.action == Action::Deny);
    let kernel_refused = kernel_checks_contents
        && resolution
            .hashes
            .get(&file.sha256)
            .is_some_and(|&rule_id| denies(resolution.rule(rule_id)));
    let kill = seen
        .exec_by
        .filter(|_| denies(rule.as_ref()) && !kernel_refused);
    Some(Find {
        rule_id,
        via,
        rule,
        kill,
    })
}

/// The first [`LISTED_LINES`] owners, and how many more.
fn listed_owners(owners: &BTreeSet<u32>) -> String {
    let listed: Vec<String> = owners
        .iter()
        .take(LISTED_LINES)
        .map(u32::to_string)
        .collect();
    match owners.len() - listed.len() {
        0 => listed.join(", "),
        more => format!("{} and {more} more", listed.join(", ")),
    }
}

/// Kills a process that exec'd banned content before its ban was in place, if it still runs it.
fn kill_late_exec(pid: i32, file: &HashedFile) {
    match pidfd::kill_if_running(pid, file.identity.key) {
        Ok(pidfd::Outcome::Killed) => log::warn!(
            "content watcher: killed pid {pid}, which ran {} before the ban was in place",
            escaped(&file.path)
        ),
        Ok(pidfd::Outcome::Exited | pidfd::Outcome::RunsSomethingElse) => {}
        Err(error) => log::error!("content watcher: killing pid {pid}: {error}"),
    }
}

/// Refuses to start where the kernel would not match the keys the maps get (see
/// `identity::check_kernel_agrees`): on each filesystem holding a banned file, and with
/// protection, those holding the blocker binary and the `protected` directories.
fn check_identities(resolution: &Resolution, protected: Option<&[PathBuf]>) -> Result<()> {
    let mut protected_files = Vec::new();
    if let Some(directories) = protected {
        for path in directories
            .iter()
            .map(PathBuf::as_path)
            .chain([Path::new("/proc/self/exe")])
        {
            let key = identity::key_of_path(path)
                .with_context(|| format!("identifying {}", escaped(path)))?;
            protected_files.push((path, key));
        }
    }
    // Not collected, and a path made only for the files opened: a policy can ban a million.
    let banned = resolution.entries.keys().map(|key| (*key, None));
    let protected_files = protected_files
        .into_iter()
        .map(|(path, key)| (key, Some(path)));
    let files = banned.chain(protected_files).map(|(key, known)| {
        let path_of = move || match known {
            Some(path) => Some(Cow::Borrowed(path)),
            None => resolution.path_of(&key).map(Cow::Owned),
        };
        (key, path_of)
    });
    let checked = identity::check_kernel_agrees(files)?;
    if checked > 0 {
        let filesystems = if checked == 1 {
            "filesystem"
        } else {
            "filesystems"
        };
        log::info!(
            "the kernel identifies files as blocker does on the {checked} {filesystems} it bans \
             or protects files on"
        );
    }
    Ok(())
}

/// One line per feature of the kernel side; a warning for each that is not wholly on.
fn log_features(features: &Features) {
    for (name, feature) in features.named() {
        let level = if feature.state == FeatureState::On {
            log::Level::Info
        } else {
            log::Level::Warn
        };
        log::log!(level, "{name}: {}", feature.describe());
    }
}

/// Puts a reloaded policy in force: ban map first (add before remove, all or nothing), then
/// settings.
fn apply_reload(reloaded: Prepared, enforcer: &mut Enforcer) -> Result<Prepared> {
    let fresh = &reloaded.resolution;
    enforcer.apply(&fresh.entries)?;
    enforcer.apply_allowed(&fresh.allowed)?;
    enforcer.apply_content_bans(&fresh.content_bans())?;
    enforcer.set_exec_settings(fresh.exec_settings())?;
    Ok(reloaded)
}

/// Watches the policy directory for changes; without a watch, only SIGHUP reloads.
fn watch_policy_dir(policy_dir: &Path) -> Option<AsyncFd<DirectoryWatcher>> {
    watch_directories(policy_dir, None, "reload with SIGHUP")
}

/// Watches dpkg's status file and its journal (`updates/`), which dpkg writes at every step of
/// installing, upgrading or removing a package. Without a dpkg database, nothing is watched.
fn watch_dpkg_database(roots: &SourceRoots) -> Option<AsyncFd<DirectoryWatcher>> {
    let admin_dir = roots.root.join(&roots.dpkg_admin_dir);
    if !admin_dir.is_dir() {
        return None;
    }
    // dpkg makes its journal directory when it first needs one.
    let updates = admin_dir.join("updates");
    watch_directories(
        &admin_dir,
        updates.is_dir().then_some(updates.as_path()),
        "package changes are seen at the next refresh",
    )
}

/// Watches `directory` (and `also`), or warns that it is not watched and what is done instead.
fn watch_directories(
    directory: &Path,
    also: Option<&Path>,
    instead: &str,
) -> Option<AsyncFd<DirectoryWatcher>> {
    let watched = DirectoryWatcher::new(directory).and_then(|watcher| {
        if let Some(also) = also {
            watcher.also(also)?;
        }
        // SAFETY: the watcher owns its descriptor and keeps it open while the AsyncFd holds it.
        unsafe {
            Ok(AsyncFd::register_with_interest(
                watcher,
                Interest::READABLE,
            )?)
        }
    });
    match watched {
        Ok(watcher) => Some(watcher),
        Err(error) => {
            log::warn!("not watching {} ({error}); {instead}", escaped(&directory));
            None
        }
    }
}

/// Readiness of a directory watch; never, without one.
async fn changed(
    watcher: Option<&AsyncFd<DirectoryWatcher>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, DirectoryWatcher>> {
    match watcher {
        Some(watcher) => watcher.readable().await,
        None => std::future::pending().await,
    }
}

/// The content watcher: started once content rules need it, at the start or by a reload, and
/// kept from then on.
struct ContentWatch {
    started: bool,
    /// What the watcher finds; closed while it does not run.
    reports: mpsc::UnboundedReceiver<watch::Report>,
}

impl ContentWatch {
    fn new() -> Self {
        let (_, closed) = mpsc::unbounded_channel();
        Self {
            started: false,
            reports: closed,
        }
    }

    /// Starts the watcher if `policy` has content rules and it was not started before (a
    /// watcher that could not start is not tried again).
    fn start_if_needed(
        &mut self,
        policy: &Policy,
        options: &RunOptions,
        hash_limit_bytes: &Arc<AtomicU64>,
    ) {
        if self.started || !resolve::needs_scan(policy) {
            return;
        }
        self.started = true;
        match watch::ContentWatcher::new(&options.scan.roots) {
            Ok(watcher) => {
                log::info!(
                    "content watcher: hashing executables written or run under the scan roots; \
                     a new copy of banned content is banned when written, or killed at its \
                     first exec"
                );
                let (sender, reports) = mpsc::unbounded_channel();
                self.reports = reports;
                let hash_limit_bytes = hash_limit_bytes.clone();
                std::thread::spawn(move || watcher.run(sender, hash_limit_bytes));
            }
            Err(error) => log::warn!(
                "content watcher unavailable ({error}); new copies of banned content are found \
                 at the next content scan"
            ),
        }
    }
}

/// Remembers the rules of `old` that `new` no longer has (and forgets those it has again).
fn retire_rules(retired: &mut BTreeMap<u32, RuleInfo>, old: &Resolution, new: &Resolution) {
    for rule in &old.rules {
        if new.rule(rule.rule_id).is_none() {
            retired.insert(rule.rule_id, rule.clone());
        }
    }
    for rule in &new.rules {
        retired.remove(&rule.rule_id);
    }
}

/// What the metrics read from the daemon's state.
fn metric_levels(
    resolution: &Resolution,
    entries: usize,
    delivered: u64,
    counters: &KernelCounters,
    sink: &Sinks,
) -> metrics::Levels {
    metrics::Levels {
        rules: resolution.rules.len(),
        entries,
        events_delivered: delivered,
        events_lost: counters.events_lost,
        records_suppressed: counters.records_suppressed,
        records_dropped: sink.dropped(),
    }
}

/// The rules events may name: those in force, the setting pseudo-rules and those reloads
/// removed.
pub(crate) fn rules_named_in_events<'a>(
    resolution: &'a Resolution,
    retired_rules: &'a BTreeMap<u32, RuleInfo>,
) -> impl Iterator<Item = &'a RuleInfo> {
    resolution
        .rules
        .iter()
        .chain(&resolution.fileless_rule)
        .chain(&resolution.unhashable_rule)
        .chain(&resolution.untrusted_path_rule)
        .chain(&resolution.lockdown_rule)
        .chain(retired_rules.values())
}

/// What the daemon knows to name the rules and files in events.
pub(crate) struct Known<'a> {
    pub(crate) resolution: &'a Resolution,
    pub(crate) retired_rules: &'a BTreeMap<u32, RuleInfo>,
    pub(crate) protected: &'a BTreeMap<FileKey, PathBuf>,
}

/// Forwards up to `limit` queued events; returns how many, and whether the ring is now empty.
fn drain(
    ring: &mut RingBuf<MapData>,
    known: &Known<'_>,
    sink: &Sinks,
    limit: usize,
    decisions: &mut DecisionCounts,
) -> (u64, bool) {
    let clock = BootClock;
    let mut batch = sink.batch();
    let mut count = 0;
    for _ in 0..limit {
        let Some(item) = ring.next() else {
            return (count, true);
        };
        if forward(&item, known, &mut batch, &clock, decisions) {
            count += 1;
        }
    }
    (count, false)
}

/// What the daemon does with each ring buffer record: decodes it, counts it in `decisions`,
/// makes its record and adds it to the batch for the sinks (the log's line for it among them).
/// Returns whether it was an event (`blocker feed-events` measures this path without a kernel).
pub(crate) fn forward(
    bytes: &[u8],
    known: &Known<'_>,
    batch: &mut Batch<'_>,
    clock: &BootClock,
    decisions: &mut DecisionCounts,
) -> bool {
    match events::decode(bytes) {
        Ok(event) if events::is_tamper_attempt(&event) => {
            decisions.count_tamper(&event);
            let key = FileKey::new(event.dev, event.ino);
            let record = TamperRecord::new(
                &event,
                known.protected.get(&key).map(PathBuf::as_path),
                clock,
            );
            batch.push(Record::Tamper(record));
            true
        }
        Ok(event) => {
            decisions.count_decision(&event);
            let key = FileKey::new(event.dev, event.ino);
            let resolution = known.resolution;
            let mut record = ExecRecord::new(
                &event,
                resolution
                    .rule(event.rule_id)
                    .or_else(|| known.retired_rules.get(&event.rule_id)),
                resolution.path_of(&key).as_deref(),
                clock,
            );
            // Banned by identity before the kernel hashed it: the hash a scan found it by.
            if record.sha256.is_none() {
                record.sha256 = resolution.banned_hash_of(&key).map(crate::scan::to_hex);
            }
            batch.push(Record::Exec(record));
            true
        }
        Err(error) => {
            log::error!("{error:#}");
            false
        }
    }
}

fn report_lost_events(
    enforcer: &Enforcer,
    previous: KernelCounters,
    sink: &Sinks,
) -> KernelCounters {
    let current = match enforcer.counters() {
        Ok(current) => current,
        Err(error) => {
            log::error!("reading kernel counters: {error:#}");
            return previous;
        }
    };
    if current.events_lost > previous.events_lost {
        let lost = current.events_lost - previous.events_lost;
        log::warn!(
            "{lost} exec events lost because the ring buffer was full (enforcement was not \
             affected; {} lost in total)",
            current.events_lost
        );
        sink.emit(Record::EventsLost {
            time: events::now_rfc3339(),
            lost,
            total: current.events_lost,
        });
    }
    if current.records_suppressed > previous.records_suppressed {
        log::warn!(
            "{} records of repeated attempts suppressed by the kernel's limit of {} per user, \
             file and operation every {} s (the attempts were enforced; {} suppressed in total)",
            current.records_suppressed - previous.records_suppressed,
            blocker_common::record_limit::BURST,
            blocker_common::record_limit::WINDOW_NS / 1_000_000_000,
            current.records_suppressed
        );
    }
    if current.generation_mismatches > previous.generation_mismatches {
        log::info!(
            "{} execs of a recycled inode number were left alone",
            current.generation_mismatches - previous.generation_mismatches
        );
    }
    current
}

fn log_resolution(resolution: &Resolution) {
    log_listed(
        log::Level::Warn,
        resolution.unresolved.iter().map(|unresolved| {
            format!(
                "rule {}: {}: {}; nothing banned for it until it appears",
                unresolved.rule, unresolved.via, unresolved.reason
            )
        }),
        |more| format!("{more} more identifiers named nothing"),
    );
    log_listed(
        log::Level::Warn,
        resolution.protected.iter().map(|protected| {
            format!(
                "rule {} names {}, which is never banned: {}",
                protected.rule,
                escaped(&protected.path),
                protected.why
            )
        }),
        |more| format!("{more} more files rules name are never banned"),
    );
    log_listed(log::Level::Warn, &resolution.warnings, |more| {
        format!("{more} more warnings about files rules name")
    });
    log_undecided(resolution);
}

/// Warns of the identifiers whose lookups failed for a reason other than their files being
/// gone, and of the entries kept for them.
fn log_undecided(resolution: &Resolution) {
    log_listed(
        log::Level::Warn,
        resolution.undecided.iter().map(|undecided| {
            format!(
                "rule {}: {}: could not be looked up ({}), which does not show its files gone",
                undecided.rule, undecided.via, undecided.reason
            )
        }),
        |more| format!("{more} more identifiers could not be looked up"),
    );
    if resolution.kept > 0 {
        log::warn!(
            "{} files banned by rules whose lookups failed stay banned until a lookup decides",
            resolution.kept
        );
    }
}

fn log_changes(old: &Resolution, new: &Resolution) {
    log_listed(log::Level::Info, banned_since(old, new), |more| {
        format!("{more} more files banned")
    });
    log_listed(log::Level::Info, unbanned_since(old, new), |more| {
        format!("{more} more files no longer banned")
    });
}

/// A line for each file `new` bans that `old` does not.
fn banned_since<'a>(old: &'a Resolution, new: &'a Resolution) -> impl Iterator<Item = String> + 'a {
    let added = new
        .entries
        .keys()
        .filter(|key| !old.entries.contains_key(*key));
    added.map(|key| {
        let (path, rule) = describe_entry(new, key);
        format!("rule {rule}: banning {path} (inode {})", key.ino)
    })
}

/// A line for each file `old` bans that `new` does not.
fn unbanned_since<'a>(
    old: &'a Resolution,
    new: &'a Resolution,
) -> impl Iterator<Item = String> + 'a {
    let removed = old
        .entries
        .keys()
        .filter(|key| !new.entries.contains_key(*key));
    removed.map(|key| {
        let (path, rule) = describe_entry(old, key);
        format!(
            "rule {rule}: {path} is gone or was replaced; inode {} is no longer banned",
            key.ino
        )
    })
}

/// The path (escaped) and rule id of the entry for `key`, for logs.
fn describe_entry(resolution: &Resolution, key: &FileKey) -> (String, String) {
    let path = resolution.path_of(key).map(|p| escaped(&p).to_string());
    let rule = resolution
        .entries
        .get(key)
        .and_then(|e| resolution.rule(e.rule_id));
    (
        path.unwrap_or_default(),
        rule.map(|r| r.id.clone()).unwrap_or_default(),
    )
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::{identity::FileIdentity, policy, prepare, scan::to_hex};

    /// The resolution of a policy file's `text`.
    fn resolved(text: &str) -> (Policy, Resolution) {
        let policy = policy::parse_sources(&[(PathBuf::from("test.toml"), text.to_owned())])
            .expect("a valid policy");
        let resolution = prepare::resolve(&policy, None, Budget::default());
        (policy, resolution)
    }

    /// A policy whose rules (id, paths) are `rules`.
    fn path_rules(rules: &[(&str, &[&Path])]) -> Resolution {
        let mut text = String::from("name = \"test\"\n");
        for (id, paths) in rules {
            let paths: Vec<String> = paths.iter().map(|p| format!("{p:?}")).collect();
            text += &format!("[[rule]]\nid = \"{id}\"\npaths = [{}]\n", paths.join(", "));
        }
        resolved(&text).1
    }

    fn retired_ids(retired: &BTreeMap<u32, RuleInfo>) -> Vec<&str> {
        retired.values().map(|rule| rule.id.as_str()).collect()
    }

    #[test]
    fn rules_a_reload_removes_are_remembered_until_they_return() {
        let gone: &[&Path] = &[Path::new("/nonexistent/blocker-test")];
        let first = path_rules(&[("kept", gone), ("dropped", gone)]);
        let second = path_rules(&[("kept", gone), ("added", gone)]);
        let mut retired = BTreeMap::new();
        retire_rules(&mut retired, &first, &second);
        assert_eq!(retired_ids(&retired), ["dropped"]);
        let dropped = first.rules[1].rule_id;
        assert_eq!(retired[&dropped].rule_id, dropped, "events keep naming it");
        retire_rules(&mut retired, &second, &first);
        assert_eq!(
            retired_ids(&retired),
            ["added"],
            "`dropped` is in force again"
        );
    }

    #[test]
    fn changes_name_each_file_banned_and_no_longer_banned_once() {
        let dir = tempfile::tempdir().unwrap();
        let [before, after, both] = ["before", "after", "both"].map(|name| {
            let path = dir.path().join(name);
            std::fs::write(&path, name).unwrap();
            path
        });
        let ino = |path: &Path| std::fs::metadata(path).unwrap().ino();
        let old = path_rules(&[("old", &[&before, &both])]);
        let new = path_rules(&[("new", &[&after, &both])]);
        assert_eq!(
            banned_since(&old, &new).collect::<Vec<_>>(),
            [format!(
                "rule new: banning {} (inode {})",
                after.display(),
                ino(&after)
            )]
        );
        assert_eq!(
            unbanned_since(&old, &new).collect::<Vec<_>>(),
            [format!(
                "rule old: {} is gone or was replaced; inode {} is no longer banned",
                before.display(),
                ino(&before)
            )]
        );
        assert_eq!(banned_since(&new, &new).count(), 0);
        assert_eq!(unbanned_since(&new, &new).count(), 0);
    }

    const DENIED: [u8; 32] = [0x11; 32];
    const AUDITED: [u8; 32] = [0x22; 32];

    fn policy() -> (Policy, Resolution) {
        resolved(&format!(
            "name = \"test\"\n\
             [[rule]]\nid = \"denied\"\nsha256 = [\"{}\"]\n\
             [[rule]]\nid = \"audited\"\naction = \"audit\"\nsha256 = [\"{}\"]\n",
            to_hex(&DENIED),
            to_hex(&AUDITED)
        ))
    }

    fn seen(sha256: [u8; 32], exec_by: Option<i32>) -> watch::Seen {
        watch::Seen {
            file: HashedFile {
                path: PathBuf::from("/home/u/copy"),
                identity: FileIdentity {
                    key: FileKey::new(1, 100),
                    generation: None,
                    owner: 1000,
                },
                sha256,
            },
            exec_by,
        }
    }

    fn judged(seen: &watch::Seen, kernel_checks_contents: bool) -> Option<(String, Option<i32>)> {
        let (policy, resolution) = policy();
        judge_seen(&policy, &resolution, kernel_checks_contents, seen).map(|find| {
            assert_eq!(find.via, Via::Sha256(seen.file.sha256));
            (find.rule.expect("a rule in force").id, find.kill)
        })
    }

    #[test]
    fn an_exec_of_denied_content_the_kernel_let_through_is_killed() {
        assert_eq!(
            judged(&seen(DENIED, Some(42)), false),
            Some(("denied".to_owned(), Some(42)))
        );
    }

    #[test]
    fn an_exec_the_kernel_refused_or_a_rule_audits_or_a_write_kills_nothing() {
        let no_kill = |rule: &str| Some((rule.to_owned(), None));
        assert_eq!(judged(&seen(DENIED, Some(42)), true), no_kill("denied"));
        assert_eq!(judged(&seen(AUDITED, Some(42)), false), no_kill("audited"));
        assert_eq!(judged(&seen(DENIED, None), false), no_kill("denied"));
    }

    #[test]
    fn content_no_rule_names_or_a_file_banned_already_means_nothing() {
        assert_eq!(judged(&seen([0x33; 32], Some(42)), false), None);
        let (policy, mut resolution) = policy();
        let seen = seen(DENIED, Some(42));
        let find = judge_seen(&policy, &resolution, false, &seen).expect("a find");
        assert!(resolution.add_seen(find.rule_id, find.via, &seen.file));
        assert_eq!(judge_seen(&policy, &resolution, false, &seen), None);
    }
}
