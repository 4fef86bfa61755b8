//! `blocker run`: policy files → parsed policy → resolved entries → kernel maps, then kernel
//! events → ring buffer → sinks, until SIGINT or SIGTERM.

use crate::escape::escaped;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use aya::maps::{MapData, RingBuf};
use blocker_common::FileKey;
use tokio::{
    io::{unix::AsyncFd, Interest},
    signal::unix::{signal, SignalKind},
    sync::mpsc,
    time::{sleep_until, Instant},
};

use crate::{
    events::{self, BootClock, ExecRecord, Record, TamperRecord},
    identity,
    inspect::scan_if_needed,
    kernel::{
        coverage::{Features, State},
        BackendChoice, Enforcer, KernelCounters, KernelPolicy,
    },
    policy::{self, Action, Policy},
    reload::{self, Loaded, PolicyDirWatcher, QUIET_BEFORE_RELOAD},
    resolve::{self, Resolution, RuleInfo},
    scan::{ScanOptions, ScanReport},
    sinks::{SinkOptions, Sinks},
    sources::SourceRoots,
    status::{self, EventCounts, KernelFeatures, Publisher, Snapshot},
    systemd, watch,
};

/// Events handled before the loop turns to signals, reloads and timers: an exec storm must not
/// keep the daemon from reloading or stopping.
const EVENTS_PER_TURN: usize = 256;

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
    let scanned = scan_if_needed(&policy, &options.scan);
    let resolution = resolve::resolve(&policy, &SourceRoots::default(), scanned.as_ref());
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
    let sink = Sinks::start(&options.sinks)?;
    let loading = std::time::Instant::now();
    let enforcer = Enforcer::start(
        options.backend,
        options.event_buffer_bytes,
        options.pin_root.as_deref(),
        &KernelPolicy {
            entries: &resolution.entries,
            content_bans: &resolution.content_bans(),
            fileless: resolution.fileless.kernel_value(),
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
    let protected = enforcer.protected().clone();
    if !protected.is_empty() {
        log::info!(
            "tamper protection on: {}; stop with `blocker stop` or the service manager, change \
             policies with `blocker policy`",
            protected
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
    runtime.block_on(serve(
        enforcer, protected, policy, resolution, scanned, options, sink,
    ))
}

async fn serve(
    mut enforcer: Enforcer,
    protected: BTreeMap<FileKey, PathBuf>,
    mut policy: Policy,
    mut resolution: Resolution,
    mut scanned: Option<ScanReport>,
    options: RunOptions,
    sink: Sinks,
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
    // A reload runs on a blocking thread; changes meanwhile ask for one more afterwards.
    let (reload_done, mut reload_results) = mpsc::channel::<Result<Loaded, String>>(1);
    let mut reload_running = false;
    let mut reload_again = false;
    let mut reload_due: Option<Instant> = None;
    let mut refresh = tokio::time::interval(options.refresh_interval);
    refresh.tick().await;
    let mut counter_check = tokio::time::interval(COUNTER_CHECK_INTERVAL);
    let mut rescan = tokio::time::interval(options.rescan_interval);
    rescan.tick().await;
    // Scans run on a blocking thread and report here, so events keep flowing during a scan.
    let (scan_done, mut scan_results) = mpsc::channel::<ScanReport>(1);
    let mut scan_running = false;
    let mut watcher_started = scanned.is_some();
    let mut watch_reports = start_content_watcher(watcher_started, &options.scan.roots);
    let mut delivered = 0u64;
    let mut counters = KernelCounters::default();
    // Rules reloads removed, so an event raised under the previous policy still names its rule.
    let mut retired_rules = BTreeMap::new();

    sink.emit(Record::Started {
        time: events::now_rfc3339(),
        backend: enforcer.backend().name(),
        backend_reason: enforcer.backend_reason().to_owned(),
        policies: policy.policies.iter().map(|p| p.name.clone()).collect(),
        rules: resolution.rules.len(),
        entries: enforcer.installed_entries(),
        pinned: enforcer.pinned().map(|dir| dir.display().to_string()),
        adopted: enforcer.adopted(),
        protected: !protected.is_empty(),
        features: enforcer.features().clone(),
    });
    let mut status = Publisher::start(
        status::Setup {
            path: options.status_file.clone(),
            policy_dir: options.policy_dir.clone(),
            kernel: KernelFeatures::detect(&enforcer),
            features: enforcer.features().clone(),
            pinned: enforcer.pinned().is_some(),
        },
        Snapshot::of(&enforcer, &policy, &resolution, delivered, &counters),
    );
    systemd::notify_ready();

    loop {
        tokio::select! {
            ready = events.readable_mut() => {
                let mut ready = ready?;
                let (count, emptied) = drain(ready.get_inner_mut(), &Known { resolution: &resolution, retired_rules: &retired_rules, protected: &protected }, &sink, EVENTS_PER_TURN);
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
            _ = rescan.tick(), if scanned.is_some() && !scan_running => {
                scan_running = true;
                let (policy, options, done) = (policy.clone(), options.scan.clone(), scan_done.clone());
                tokio::task::spawn_blocking(move || {
                    if let Some(report) = scan_if_needed(&policy, &options) {
                        let _ = done.blocking_send(report);
                    }
                });
            }
            Some(report) = scan_results.recv() => {
                scan_running = false;
                scanned = Some(report);
                refresh.reset_immediately();
            }
            Some(report) = watch_reports.recv() => match report {
                watch::Report::Seen(seen) => {
                    let newly_banned = content_seen(&policy, &mut scanned, &resolution, &seen);
                    if newly_banned && refresh_entries(&policy, scanned.as_ref(), &mut resolution, &mut enforcer) {
                        status.publish(Snapshot::of(&enforcer, &policy, &resolution, delivered, &counters));
                    }
                }
                watch::Report::Overflow => {
                    log::warn!("content watcher: the kernel dropped events; rescanning");
                    rescan.reset_immediately();
                }
                watch::Report::Warning(warning) => log::warn!("content watcher: {warning}"),
            },
            _ = refresh.tick() => {
                if refresh_entries(&policy, scanned.as_ref(), &mut resolution, &mut enforcer) {
                    status.publish(Snapshot::of(&enforcer, &policy, &resolution, delivered, &counters));
                }
            }
            _ = counter_check.tick() => {
                counters = report_lost_events(&enforcer, counters, &sink);
                status.publish(Snapshot::of(&enforcer, &policy, &resolution, delivered, &counters));
            }
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
                if reload_running {
                    reload_again = true;
                } else {
                    reload_running = true;
                    let (policy_dir, scan, done) =
                        (options.policy_dir.clone(), options.scan.clone(), reload_done.clone());
                    tokio::task::spawn_blocking(move || {
                        let loaded = reload::load(&policy_dir, &scan).map_err(|error| format!("{error:#}"));
                        let _ = done.blocking_send(loaded);
                    });
                }
            }
            Some(loaded) = reload_results.recv() => {
                reload_running = false;
                if std::mem::take(&mut reload_again) {
                    reload_due = Some(Instant::now());
                }
                match loaded.and_then(|loaded| {
                    apply_reload(loaded, &mut enforcer).map_err(|error| format!("{error:#}"))
                }) {
                    Ok((new_policy, new_scan, fresh)) => {
                        log_changes(&resolution, &fresh);
                        log_resolution(&fresh);
                        log::info!("policy reloaded: {} rules, {} files banned", fresh.rules.len(), fresh.entries.len());
                        sink.emit(Record::Reloaded {
                            time: events::now_rfc3339(),
                            policies: new_policy.policies.iter().map(|p| p.name.clone()).collect(),
                            rules: fresh.rules.len(),
                            entries: fresh.entries.len(),
                        });
                        retire_rules(&mut retired_rules, &resolution, &fresh);
                        policy = new_policy;
                        scanned = new_scan;
                        resolution = fresh;
                        status.publish(Snapshot::of(&enforcer, &policy, &resolution, delivered, &counters));
                        if scanned.is_some() && !watcher_started {
                            watcher_started = true;
                            watch_reports = start_content_watcher(true, &options.scan.roots);
                        }
                    }
                    Err(error) => {
                        log::error!("reload refused, the previous policy stays in force: {error}");
                        sink.emit(Record::ReloadFailed { time: events::now_rfc3339(), error });
                    }
                }
            }
            _ = interrupt.recv() => break,
            _ = terminate.recv() => break,
        }
    }

    counters = report_lost_events(&enforcer, counters, &sink);
    if enforcer.content_checks() {
        log::info!(
            "content checks: {} answered from the verdict cache, {} hashed (executable \
             mappings: {} from the cache, {} hashed), {} not hashable, {} cached verdicts dropped \
             after a change",
            counters.verdict_cache_hits,
            counters.verdict_cache_misses,
            counters.mapping_verdict_cache_hits,
            counters.mapping_verdict_cache_misses,
            counters.content_hash_failures,
            counters.verdicts_invalidated
        );
    }
    let pinned = enforcer.pinned().map(|dir| dir.display().to_string());
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
        resolution: &resolution,
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
    });
    Ok(())
}

/// One line per feature of the kernel side; a warning for each that is not wholly on.
/// Refuses to start where the kernel would not match the keys the maps get (see
/// `identity::check_kernel_agrees`): on each filesystem holding a banned file, and with
/// protection, those holding the blocker binary and the `protected` directories.
fn check_identities(resolution: &Resolution, protected: Option<&[PathBuf]>) -> Result<()> {
    let mut files: Vec<(&Path, FileKey)> = resolution
        .paths
        .iter()
        .map(|(key, path)| (path.as_path(), *key))
        .collect();
    if let Some(directories) = protected {
        for path in directories
            .iter()
            .map(PathBuf::as_path)
            .chain([Path::new("/proc/self/exe")])
        {
            let key = identity::key_of_path(path)
                .with_context(|| format!("identifying {}", escaped(path)))?;
            files.push((path, key));
        }
    }
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

fn log_features(features: &Features) {
    for (name, feature) in features.named() {
        let level = if feature.state == State::On {
            log::Level::Info
        } else {
            log::Level::Warn
        };
        log::log!(level, "{name}: {}", feature.describe());
    }
}

/// Resolves a reloaded policy and puts it in force: ban map first (add before remove, all or
/// nothing), then settings.
fn apply_reload(
    loaded: Loaded,
    enforcer: &mut Enforcer,
) -> Result<(Policy, Option<ScanReport>, Resolution)> {
    let fresh = resolve::resolve(
        &loaded.policy,
        &SourceRoots::default(),
        loaded.scanned.as_ref(),
    );
    enforcer.apply(&fresh.entries)?;
    enforcer.apply_content_bans(&fresh.content_bans())?;
    enforcer.set_fileless(fresh.fileless.kernel_value())?;
    Ok((loaded.policy, loaded.scanned, fresh))
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

/// Resolves the policy again and updates the ban map if anything changed; says whether it did.
fn refresh_entries(
    policy: &Policy,
    scanned: Option<&ScanReport>,
    resolution: &mut Resolution,
    enforcer: &mut Enforcer,
) -> bool {
    let fresh = resolve::resolve(policy, &SourceRoots::default(), scanned);
    if fresh.entries == resolution.entries {
        return false;
    }
    match enforcer.apply(&fresh.entries) {
        Ok(stats) => {
            log_changes(resolution, &fresh);
            log::info!(
                "ban map updated: {} added, {} changed, {} removed",
                stats.added,
                stats.changed,
                stats.removed
            );
            *resolution = fresh;
            true
        }
        Err(error) => {
            log::error!("{error:#}");
            false
        }
    }
}

/// Starts the content watcher where content rules need it; its reports arrive on the returned
/// channel (which never yields when there is no watcher).
fn start_content_watcher(
    wanted: bool,
    roots: &[PathBuf],
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
            std::thread::spawn(move || watcher.run(sender));
        }
        Err(error) => log::warn!(
            "content watcher unavailable ({error}); new copies of banned content are found at \
             the next content scan"
        ),
    }
    receiver
}

/// Takes in a file the watcher hashed. Returns whether its content is banned and new to the
/// ban map; a process that exec'd it before the ban was in place is killed.
fn content_seen(
    policy: &Policy,
    scanned: &mut Option<ScanReport>,
    resolution: &Resolution,
    seen: &watch::Seen,
) -> bool {
    let matches = resolve::content_matches(policy, &seen.file);
    let Some((rule_id, via)) = matches.first() else {
        return false;
    };
    if resolution.entries.contains_key(&seen.file.identity.key) {
        return false;
    }
    let rule = resolution
        .rule(*rule_id)
        .map_or("?", |rule| rule.id.as_str());
    log::warn!(
        "content watcher: {} has content banned by rule {rule} ({via})",
        escaped(&seen.file.path)
    );
    if let Some(pid) = seen.exec_by {
        if resolution
            .rule(*rule_id)
            .is_some_and(|rule| rule.action == Action::Deny)
        {
            // SAFETY: plain kill(2). The pid exec'd the file moments ago, before its ban.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            log::warn!(
                "content watcher: killed pid {pid}, which ran it before the ban was in place"
            );
        }
    }
    if let Some(report) = scanned {
        report.files.push(seen.file.clone());
    }
    true
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
struct Known<'a> {
    resolution: &'a Resolution,
    retired_rules: &'a BTreeMap<u32, RuleInfo>,
    protected: &'a BTreeMap<FileKey, PathBuf>,
}

/// Forwards up to `limit` queued events; returns how many, and whether the ring is now empty.
fn drain(
    ring: &mut RingBuf<MapData>,
    known: &Known<'_>,
    sink: &Sinks,
    limit: usize,
) -> (u64, bool) {
    let clock = BootClock;
    let mut count = 0;
    for _ in 0..limit {
        let Some(item) = ring.next() else {
            return (count, true);
        };
        match events::decode(&item) {
            Ok(event) if events::is_tamper_attempt(&event) => {
                let key = FileKey::new(event.dev, event.ino);
                let record = TamperRecord::new(
                    &event,
                    known.protected.get(&key).map(PathBuf::as_path),
                    &clock,
                );
                log::warn!("{}", record.summary());
                sink.emit(Record::Tamper(record));
                count += 1;
            }
            Ok(event) => {
                let key = FileKey::new(event.dev, event.ino);
                let resolution = known.resolution;
                let record = ExecRecord::new(
                    &event,
                    resolution
                        .rule(event.rule_id)
                        .or_else(|| known.retired_rules.get(&event.rule_id)),
                    resolution.paths.get(&key).map(PathBuf::as_path),
                    &clock,
                );
                if record.enforcement == "none" {
                    log::info!("{}", record.summary());
                } else {
                    log::warn!("{}", record.summary());
                }
                sink.emit(Record::Exec(record));
                count += 1;
            }
            Err(error) => log::error!("{error:#}"),
        }
    }
    (count, false)
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
    if current.generation_mismatches > previous.generation_mismatches {
        log::info!(
            "{} execs of a recycled inode number were left alone",
            current.generation_mismatches - previous.generation_mismatches
        );
    }
    current
}

fn log_resolution(resolution: &Resolution) {
    for unresolved in &resolution.unresolved {
        log::warn!(
            "rule {}: {}: {}; nothing banned for it until it appears",
            unresolved.rule,
            unresolved.via,
            unresolved.reason
        );
    }
    for protected in &resolution.protected {
        log::warn!(
            "rule {} names {}, which is never banned: {}",
            protected.rule,
            escaped(&protected.path),
            protected.why
        );
    }
    for warning in &resolution.warnings {
        log::warn!("{warning}");
    }
}

fn log_changes(old: &Resolution, new: &Resolution) {
    let describe = |resolution: &Resolution, key: &FileKey| {
        let path = resolution.paths.get(key).map(|p| escaped(&p).to_string());
        let rule = resolution
            .entries
            .get(key)
            .and_then(|e| resolution.rule(e.rule_id));
        (
            path.unwrap_or_default(),
            rule.map(|r| r.id.clone()).unwrap_or_default(),
        )
    };
    let changed = |a: &BTreeMap<_, _>, b: &BTreeMap<_, _>| {
        a.keys()
            .filter(|key| !b.contains_key(*key))
            .copied()
            .collect::<Vec<_>>()
    };
    for key in changed(&new.entries, &old.entries) {
        let (path, rule) = describe(new, &key);
        log::info!("rule {rule}: banning {path} (inode {})", key.ino);
    }
    for key in changed(&old.entries, &new.entries) {
        let (path, rule) = describe(old, &key);
        log::info!(
            "rule {rule}: {path} is gone or was replaced; inode {} is no longer banned",
            key.ino
        );
    }
}
