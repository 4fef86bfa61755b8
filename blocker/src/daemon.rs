//! `blocker run`: policy files → parsed policy → resolved entries → kernel maps, then kernel
//! events → ring buffer → sinks, until SIGINT or SIGTERM.

use crate::escape::escaped;
use std::{
    collections::{BTreeMap, BTreeSet},
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
    signal::unix::{signal, SignalKind},
    sync::mpsc,
    time::{sleep_until, Instant},
};

use crate::{
    background::{self, Done, Reloaded, Work},
    budget::Budget,
    control::PolicyChange,
    control_socket::{
        self,
        server::{ControlSocket, Notice, Peer},
    },
    events::{self, BootClock, ExecRecord, LostDaemon, Record, TamperRecord},
    identity,
    jobs::Slot,
    kernel::{
        coverage::{Features, State as FeatureState},
        BackendChoice, Enforcer, KernelCounters, KernelPolicy,
    },
    listed::{log_listed, Tally, LISTED_LINES},
    pidfd,
    policy::{self, Action, Policy},
    reload::{PolicyDirWatcher, QUIET_BEFORE_RELOAD},
    resolve::{self, Resolution, RuleInfo},
    scan::{HashedFile, ScanOptions, ScanReport},
    sinks::{Batch, SinkOptions, Sinks},
    sources::SourceRoots,
    status::{self, EventCounts, KernelFeatures, Publisher, Snapshot},
    systemd, watch,
};

/// Events handled before the loop turns to signals, reloads and timers: an exec storm must not
/// keep the daemon from reloading or stopping.
pub(crate) const EVENTS_PER_TURN: usize = 256;

/// How often the kernel's lost-event counter is checked.
const COUNTER_CHECK_INTERVAL: Duration = Duration::from_secs(2);

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
}

pub fn run(options: RunOptions) -> Result<()> {
    if options.protect && options.backend == BackendChoice::Kill {
        bail!("--protect needs the lsm backend: only LSM programs can refuse tampering");
    }
    let resolving = std::time::Instant::now();
    let policy = policy::load_dir(&options.policy_dir)?;
    for header in &policy.policies {
        log::info!(
            "policy `{}` ({}) from {}",
            header.name,
            header.mode,
            escaped(&header.file)
        );
    }
    // Identity rules first: the content scan can take long, and runs in the background once
    // the programs are attached.
    let resolution =
        resolve::resolve_within(&policy, &SourceRoots::default(), None, options.budget);
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
    // Before anything is loaded: a daemon nobody could ask to stop does not start. Removed
    // when dropped, however the start fails or the daemon ends.
    let control = ControlSocket::bind(control_socket::server::path_for(&options.status_file)?)?;
    let sink = Sinks::start(&options.sinks)?;
    let loading = std::time::Instant::now();
    let enforcer = Enforcer::start(
        options.backend,
        options.event_buffer_bytes,
        options.pin_root.as_deref(),
        &KernelPolicy {
            entries: &resolution.entries,
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
        enforcer, protected, policy, resolution, options, sink, control,
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

/// What the event loop keeps of the policy in force and of the background work on it.
struct State {
    policy: Policy,
    resolution: Resolution,
    scanned: Option<Arc<ScanReport>>,
    /// Files the content watcher found banned since the last content scan started.
    watched: Vec<HashedFile>,
    /// How many of `watched` the running job knows of.
    watched_by_job: usize,
    jobs: Slot<Work>,
    hash_limit_bytes: Arc<AtomicU64>,
    /// The ban map's overflow last reported.
    reported_overflow: usize,
    /// Whether the first content scan is done.
    scanned_once: bool,
}

async fn serve(
    mut enforcer: Enforcer,
    protected: BTreeMap<FileKey, PathBuf>,
    policy: Policy,
    resolution: Resolution,
    options: RunOptions,
    sink: Sinks,
    mut control: ControlSocket,
) -> Result<()> {
    // SAFETY (both): each value owns its file descriptor and keeps it open, unreplaced, for as
    // long as the AsyncFd holds it.
    let mut events =
        unsafe { AsyncFd::register_with_interest(enforcer.take_events()?, Interest::READABLE) }
            .context("watching the ring buffer")?;
    let mut kernel_log =
        unsafe { AsyncFd::register_with_interest(enforcer.take_logger()?, Interest::READABLE) }
            .context("watching eBPF logs")?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    let mut terminate = signal(SignalKind::terminate())?;
    let mut hangup = signal(SignalKind::hangup())?;
    let policy_dir_changes = watch_policy_dir(&options.policy_dir);
    let mut control_notices = control.serve(std::path::absolute(&options.policy_dir)?)?;
    let (job_done, mut job_results) = mpsc::channel::<Done>(1);
    let mut reload_due: Option<Instant> = None;
    let mut refresh = tokio::time::interval(options.refresh_interval);
    refresh.tick().await;
    let mut counter_check = tokio::time::interval(COUNTER_CHECK_INTERVAL);
    let mut rescan = tokio::time::interval(options.rescan_interval);
    rescan.tick().await;
    let mut heartbeat = tokio::time::interval(Duration::from_secs(heartbeat::INTERVAL_SECS));
    let mut state = State {
        hash_limit_bytes: Arc::new(AtomicU64::new(policy.hash_limit_bytes())),
        policy,
        resolution,
        scanned: None,
        watched: Vec::new(),
        watched_by_job: 0,
        jobs: Slot::default(),
        reported_overflow: 0,
        scanned_once: false,
    };
    let mut watcher_started = resolve::needs_scan(&state.policy);
    let mut watch_reports = start_content_watcher(
        watcher_started,
        &options.scan.roots,
        &state.hash_limit_bytes,
    );
    let mut watch_warnings = Tally::new(log::Level::Warn);
    let mut newly_banned = Tally::new(log::Level::Warn);
    let mut delivered = 0u64;
    let mut counters = KernelCounters::default();
    // Rules reloads removed, so an event raised under the previous policy still names its rule.
    let mut retired_rules = BTreeMap::new();

    // Read before this daemon's first beat; beaten before anyone hears it started.
    let previous_heartbeat = enforcer
        .heartbeat()
        .map_err(|error| log::error!("{error:#}"))
        .ok();
    beat(&mut enforcer);
    // Written before `started`, so that whoever waits for that record finds the status too.
    let mut status = Publisher::start(
        status::Setup {
            path: options.status_file.clone(),
            policy_dir: options.policy_dir.clone(),
            kernel: KernelFeatures::detect(&enforcer),
            features: enforcer.features().clone(),
            pinned: enforcer.pinned().is_some(),
            control_socket: control.path().to_owned(),
        },
        Snapshot::of(
            &enforcer,
            &state.policy,
            &state.resolution,
            delivered,
            &counters,
        ),
    );
    sink.emit(Record::Started {
        time: events::now_rfc3339(),
        backend: enforcer.backend().name(),
        backend_reason: enforcer.backend_reason().to_owned(),
        policies: state
            .policy
            .policies
            .iter()
            .map(|p| p.name.clone())
            .collect(),
        rules: state.resolution.rules.len(),
        entries: enforcer.installed_entries(),
        pinned: enforcer.pinned().map(|dir| dir.display().to_string()),
        adopted: enforcer.adopted(),
        adoption_refused: enforcer.adoption_refused().map(str::to_owned),
        protected: !protected.is_empty(),
        features: enforcer.features().clone(),
    });
    if let Some(previous) = previous_heartbeat {
        report_lost_daemon(previous, &sink);
    }
    systemd::notify_ready();
    if resolve::needs_scan(&state.policy) {
        log::info!("content rules: scanning the scan roots in the background");
        state.request(Work::Refresh { rescan: true }, &options, &job_done);
    }

    loop {
        tokio::select! {
            ready = events.readable_mut() => {
                let mut ready = ready?;
                let known = Known {
                    resolution: &state.resolution,
                    retired_rules: &retired_rules,
                    protected: &protected,
                };
                let (count, emptied) = drain(ready.get_inner_mut(), &known, &sink, EVENTS_PER_TURN);
                delivered += count;
                // Left ready while events remain, so the loop comes back after its other work.
                if emptied {
                    ready.clear_ready();
                }
            }
            ready = kernel_log.readable_mut() => {
                let mut ready = ready?;
                ready.get_inner_mut().flush();
                ready.clear_ready();
            }
            _ = rescan.tick(), if resolve::needs_scan(&state.policy) => {
                state.request(Work::Refresh { rescan: true }, &options, &job_done);
            }
            Some(report) = watch_reports.recv() => match report {
                watch::Report::Seen(seen) => {
                    if state.content_seen(&seen, &mut enforcer, &mut newly_banned) {
                        status.publish(Snapshot::of(&enforcer, &state.policy, &state.resolution, delivered, &counters));
                    }
                }
                watch::Report::Overflow => {
                    log::warn!("content watcher: the kernel dropped events; rescanning");
                    state.request(Work::Refresh { rescan: true }, &options, &job_done);
                }
                watch::Report::Warning(warning) => {
                    watch_warnings.note(format_args!("content watcher: {warning}"));
                }
            },
            _ = refresh.tick() => {
                state.request(Work::Refresh { rescan: false }, &options, &job_done);
            }
            _ = counter_check.tick() => {
                counters = report_lost_events(&enforcer, counters, &sink);
                watch_warnings.flush(|more| format!("content watcher: {more} more warnings not listed"));
                newly_banned.flush(|more| format!("content watcher: {more} more files with banned content not listed"));
                state.report_overflow();
                status.publish(Snapshot::of(&enforcer, &state.policy, &state.resolution, delivered, &counters));
            }
            _ = heartbeat.tick() => beat(&mut enforcer),
            _ = hangup.recv() => reload_due = Some(Instant::now()),
            ready = changed(policy_dir_changes.as_ref()) => {
                let mut ready = ready?;
                if ready.get_inner().drain() {
                    reload_due = Some(Instant::now() + QUIET_BEFORE_RELOAD);
                }
                ready.clear_ready();
            }
            _ = sleep_until(reload_due.unwrap_or_else(Instant::now)), if reload_due.is_some() => {
                reload_due = None;
                state.request(Work::Reload, &options, &job_done);
            }
            Some(done) = job_results.recv() => {
                match done {
                    Done::Refreshed { resolution, rescanned } => {
                        if state.refreshed(resolution, rescanned, &mut enforcer) {
                            status.publish(Snapshot::of(&enforcer, &state.policy, &state.resolution, delivered, &counters));
                        }
                    }
                    Done::Reloaded(loaded) => match loaded.and_then(|mut loaded| {
                        // Files the watcher found while the reload ran, which its scan may lack.
                        background::take_in_watched(&loaded.policy, &mut loaded.resolution, state.watched_since_job());
                        loaded.resolution.keep_undecided(&state.resolution);
                        apply_reload(loaded, &mut enforcer).map_err(|error| format!("{error:#}"))
                    }) {
                        Ok(reloaded) => {
                            let fresh = &reloaded.resolution;
                            log_changes(&state.resolution, fresh);
                            log_resolution(fresh);
                            log::info!("policy reloaded: {} rules, {} files banned", fresh.rules.len(), fresh.entries.len());
                            sink.emit(Record::Reloaded {
                                time: events::now_rfc3339(),
                                policies: reloaded.policy.policies.iter().map(|p| p.name.clone()).collect(),
                                rules: fresh.rules.len(),
                                entries: fresh.entries.len(),
                            });
                            retire_rules(&mut retired_rules, &state.resolution, fresh);
                            state.reloaded(reloaded);
                            status.publish(Snapshot::of(&enforcer, &state.policy, &state.resolution, delivered, &counters));
                            if resolve::needs_scan(&state.policy) && !watcher_started {
                                watcher_started = true;
                                watch_reports = start_content_watcher(true, &options.scan.roots, &state.hash_limit_bytes);
                            }
                        }
                        Err(error) => {
                            log::error!("reload refused, the previous policy stays in force: {error}");
                            sink.emit(Record::ReloadFailed { time: events::now_rfc3339(), error });
                        }
                    },
                }
                state.report_overflow();
                if let Some(next) = state.jobs.finished() {
                    state.start(next, &options, &job_done);
                }
            }
            Some(notice) = control_notices.recv() => match notice {
                Notice::Stop { peer } => {
                    log::info!("stopping, as {peer} asked over the control socket");
                    break;
                }
                Notice::PolicyChanged { peer, change } => {
                    let record = policy_changed(change, peer);
                    log::info!("{}", record.summary());
                    sink.emit(record);
                }
            },
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }
    // No one may ask anything of a daemon that is stopping.
    drop(control);

    counters = report_lost_events(&enforcer, counters, &sink);
    if enforcer.content_checks() {
        log::info!(
            "content checks: {} answered from the verdict cache, {} hashed (executable \
             mappings: {} from the cache, {} hashed), {} over the hash limit, {} not hashable, \
             {} on filesystems that can change bytes unseen (not judged), {} cached verdicts \
             dropped after a change",
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
    if let Err(error) = enforcer.stop_beating() {
        log::error!("{error:#}");
    }
    if pinned.is_some() && !protected.is_empty() {
        // Stopped the documented way: the pins and policies may now be changed, until the next
        // daemon protects them again.
        if let Err(error) = enforcer.unprotect() {
            log::error!("{error:#}");
        }
    }
    enforcer.release();
    match &pinned {
        Some(dir) => log::info!(
            "the programs pinned at {dir} keep enforcing the policy; `blocker unload` detaches them"
        ),
        None => log::info!("programs detached; execs are no longer checked"),
    }
    let known = Known {
        resolution: &state.resolution,
        retired_rules: &retired_rules,
        protected: &protected,
    };
    delivered += drain(events.get_mut(), &known, &sink, usize::MAX).0;
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
    Ok(())
}

impl State {
    /// Asks for `work`; it starts now unless a job runs, else after it.
    fn request(&mut self, work: Work, options: &RunOptions, done: &mpsc::Sender<Done>) {
        if let Some(work) = self.jobs.request(work) {
            self.start(work, options, done);
        }
    }

    /// Runs `work` on a blocking thread, from the state as it is now.
    fn start(&mut self, work: Work, options: &RunOptions, done: &mpsc::Sender<Done>) {
        self.watched_by_job = self.watched.len();
        let inputs = background::Inputs {
            policy: self.policy.clone(),
            policy_dir: options.policy_dir.clone(),
            scan: options.scan.clone(),
            budget: options.budget,
            scanned: self.scanned.clone(),
            watched: self.watched.clone(),
        };
        let done = done.clone();
        tokio::task::spawn_blocking(move || {
            let _ = done.blocking_send(background::run(work, inputs));
        });
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

    /// Puts a refreshed resolution in force if it changes the ban map; says whether it did.
    fn refreshed(
        &mut self,
        mut fresh: Resolution,
        rescanned: Option<Option<Arc<ScanReport>>>,
        enforcer: &mut Enforcer,
    ) -> bool {
        background::take_in_watched(&self.policy, &mut fresh, self.watched_since_job());
        fresh.keep_undecided(&self.resolution);
        if (&fresh.undecided, fresh.kept) != (&self.resolution.undecided, self.resolution.kept) {
            log_undecided(&fresh);
            if fresh.undecided.is_empty() {
                log::info!("every identifier could be looked up again");
            }
        }
        if let Some(scanned) = rescanned {
            self.forget_watched_before_job();
            self.scanned = scanned;
            if !std::mem::replace(&mut self.scanned_once, true) {
                log::info!(
                    "content rules: the background scan is done; {} files banned",
                    fresh.entries.len()
                );
                log_resolution(&fresh);
            }
        }
        if fresh.entries == self.resolution.entries {
            self.resolution = fresh;
            return false;
        }
        match enforcer.apply(&fresh.entries) {
            Ok(stats) => {
                log_changes(&self.resolution, &fresh);
                log::info!(
                    "ban map updated: {} added, {} changed, {} removed",
                    stats.added,
                    stats.changed,
                    stats.removed
                );
                self.resolution = fresh;
                true
            }
            Err(error) => {
                log::error!("{error:#}");
                false
            }
        }
    }

    fn reloaded(&mut self, reloaded: Reloaded) {
        self.hash_limit_bytes
            .store(reloaded.policy.hash_limit_bytes(), Ordering::Relaxed);
        self.policy = reloaded.policy;
        self.scanned = reloaded.scanned;
        self.resolution = reloaded.resolution;
        self.forget_watched_before_job();
    }

    /// Takes in a file the watcher hashed: if a content rule bans it and it has no entry yet, a
    /// process that exec'd it before the ban was in place is killed, and the file gets an
    /// entry if the budget has room. Returns whether the ban map changed.
    fn content_seen(
        &mut self,
        seen: &watch::Seen,
        enforcer: &mut Enforcer,
        newly_banned: &mut Tally,
    ) -> bool {
        let file = &seen.file;
        let Some((rule_id, via)) = resolve::content_matches(&self.policy, file)
            .into_iter()
            .next()
        else {
            return false;
        };
        if self.resolution.entries.contains_key(&file.identity.key) {
            return false;
        }
        let rule = self.resolution.rule(rule_id).cloned();
        if let Some(pid) = seen.exec_by {
            let deny = rule
                .as_ref()
                .is_some_and(|rule| rule.action == Action::Deny);
            if deny && !self.kernel_refused(enforcer, file) {
                kill_late_exec(pid, file);
            }
        }
        let entered = self.resolution.add_seen(rule_id, via.clone(), file);
        let banned = entered
            && match enforcer.apply(&self.resolution.entries) {
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
        newly_banned.note(format_args!(
            "content watcher: {} has content banned by rule {} ({via}){}",
            escaped(&file.path),
            rule.as_ref().map_or("?", |rule| rule.id.as_str()),
            if banned {
                ""
            } else {
                "; not banned by identity (see the ban map budget)"
            }
        ));
        entered
    }

    /// Whether the kernel refused the exec of `file` itself: it checks contents and a deny
    /// rule names this one.
    fn kernel_refused(&self, enforcer: &Enforcer, file: &HashedFile) -> bool {
        enforcer.content_checks()
            && self
                .resolution
                .hashes
                .get(&file.sha256)
                .is_some_and(|&rule_id| {
                    self.resolution
                        .rule(rule_id)
                        .is_some_and(|rule| rule.action == Action::Deny)
                })
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
    // Not collected: a policy can ban a million files.
    let banned = resolution.paths.iter().map(|(key, path)| (&**path, *key));
    let checked = identity::check_kernel_agrees(banned.chain(protected_files))?;
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
fn apply_reload(reloaded: Reloaded, enforcer: &mut Enforcer) -> Result<Reloaded> {
    let fresh = &reloaded.resolution;
    enforcer.apply(&fresh.entries)?;
    enforcer.apply_content_bans(&fresh.content_bans())?;
    enforcer.set_exec_settings(fresh.exec_settings())?;
    Ok(reloaded)
}

/// Watches the policy directory for changes; without a watch, only SIGHUP reloads.
fn watch_policy_dir(policy_dir: &Path) -> Option<AsyncFd<PolicyDirWatcher>> {
    let watched = PolicyDirWatcher::new(policy_dir).and_then(|watcher| {
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
            log::warn!(
                "not watching {} ({error}); reload with SIGHUP",
                escaped(&policy_dir)
            );
            None
        }
    }
}

/// Readiness of the policy directory watch; never, without one.
async fn changed(
    watcher: Option<&AsyncFd<PolicyDirWatcher>>,
) -> std::io::Result<tokio::io::unix::AsyncFdReadyGuard<'_, PolicyDirWatcher>> {
    match watcher {
        Some(watcher) => watcher.readable().await,
        None => std::future::pending().await,
    }
}

/// Starts the content watcher where content rules need it; its reports arrive on the returned
/// channel (which never yields when there is no watcher).
fn start_content_watcher(
    wanted: bool,
    roots: &[PathBuf],
    hash_limit_bytes: &Arc<AtomicU64>,
) -> mpsc::UnboundedReceiver<watch::Report> {
    let (sender, receiver) = mpsc::unbounded_channel();
    if !wanted {
        return receiver;
    }
    match watch::ContentWatcher::new(roots) {
        Ok(watcher) => {
            log::info!(
                "content watcher: hashing executables written or run under the scan roots; a new \
                 copy of banned content is banned when written, or killed at its first exec"
            );
            let hash_limit_bytes = hash_limit_bytes.clone();
            std::thread::spawn(move || watcher.run(sender, hash_limit_bytes));
        }
        Err(error) => log::warn!(
            "content watcher unavailable ({error}); new copies of banned content are found at \
             the next content scan"
        ),
    }
    receiver
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
) -> (u64, bool) {
    let clock = BootClock;
    let mut batch = sink.batch();
    let mut count = 0;
    for _ in 0..limit {
        let Some(item) = ring.next() else {
            return (count, true);
        };
        if forward(&item, known, &mut batch, &clock) {
            count += 1;
        }
    }
    (count, false)
}

/// What the daemon does with each ring buffer record: decodes it, makes its record and adds it
/// to the batch for the sinks (the log's line for it among them). Returns whether it was an event (`blocker
/// feed-events` measures this path without a kernel).
pub(crate) fn forward(
    bytes: &[u8],
    known: &Known<'_>,
    batch: &mut Batch<'_>,
    clock: &BootClock,
) -> bool {
    match events::decode(bytes) {
        Ok(event) if events::is_tamper_attempt(&event) => {
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
            let key = FileKey::new(event.dev, event.ino);
            let resolution = known.resolution;
            let record = ExecRecord::new(
                &event,
                resolution
                    .rule(event.rule_id)
                    .or_else(|| known.retired_rules.get(&event.rule_id)),
                resolution.paths.get(&key).map(|path| &**path),
                clock,
            );
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
    let describe = |resolution: &Resolution, key: &FileKey| {
        let path = resolution.paths.get(key).map(|p| escaped(&**p).to_string());
        let rule = resolution
            .entries
            .get(key)
            .and_then(|e| resolution.rule(e.rule_id));
        (
            path.unwrap_or_default(),
            rule.map(|r| r.id.clone()).unwrap_or_default(),
        )
    };
    let added = new
        .entries
        .keys()
        .filter(|key| !old.entries.contains_key(*key));
    log_listed(
        log::Level::Info,
        added.map(|key| {
            let (path, rule) = describe(new, key);
            format!("rule {rule}: banning {path} (inode {})", key.ino)
        }),
        |more| format!("{more} more files banned"),
    );
    let removed = old
        .entries
        .keys()
        .filter(|key| !new.entries.contains_key(*key));
    log_listed(
        log::Level::Info,
        removed.map(|key| {
            let (path, rule) = describe(old, key);
            format!(
                "rule {rule}: {path} is gone or was replaced; inode {} is no longer banned",
                key.ino
            )
        }),
        |more| format!("{more} more files no longer banned"),
    );
}
