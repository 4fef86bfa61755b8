//! `blocker run`: policy files → parsed policy → resolved entries → kernel maps, then kernel
//! events → ring buffer → sinks, until SIGINT or SIGTERM.

mod event_loop;

use crate::escape::escaped;
use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, Context, Result};
use aya::maps::{MapData, RingBuf};
use blocker_common::FileKey;

use crate::{
    budget::Budget,
    control_socket::{self, server::ControlSocket},
    events::{self, BootClock, ExecRecord, Record, TamperRecord},
    identity,
    kernel::{
        coverage::{Features, State as FeatureState},
        BackendChoice, Enforcer, KernelCounters, KernelPolicy,
    },
    listed::log_listed,
    policy,
    resolve::{self, Resolution, RuleInfo},
    scan::ScanOptions,
    sinks::{SinkOptions, Sinks},
    sources::SourceRoots,
};

/// Events handled before the loop turns to signals, reloads and timers: an exec storm must not
/// keep the daemon from reloading or stopping.
pub(crate) const EVENTS_PER_TURN: usize = 256;

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
    let served = runtime.block_on(event_loop::serve(
        enforcer, protected, policy, resolution, options, sink, control,
    ));
    // A scan still running in the background has no one left to report to: stopping must not
    // wait for it.
    runtime.shutdown_background();
    served
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
    let mut count = 0;
    for _ in 0..limit {
        let Some(item) = ring.next() else {
            return (count, true);
        };
        if forward(&item, known, sink, &clock) {
            count += 1;
        }
    }
    (count, false)
}

/// What the daemon does with each ring buffer record: decodes it, makes its record, logs it
/// and hands it to the sinks. Returns whether it was an event (`blocker feed-events` measures
/// this path without a kernel).
pub(crate) fn forward(bytes: &[u8], known: &Known<'_>, sink: &Sinks, clock: &BootClock) -> bool {
    match events::decode(bytes) {
        Ok(event) if events::is_tamper_attempt(&event) => {
            let key = FileKey::new(event.dev, event.ino);
            let record = TamperRecord::new(
                &event,
                known.protected.get(&key).map(PathBuf::as_path),
                clock,
            );
            log::warn!("{}", record.summary());
            sink.emit(Record::Tamper(record));
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
            if record.enforcement == "none" {
                log::info!("{}", record.summary());
            } else {
                log::warn!("{}", record.summary());
            }
            sink.emit(Record::Exec(record));
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
    let path = resolution.paths.get(key).map(|p| escaped(&**p).to_string());
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

    /// The resolution of a policy file's `text`.
    pub(super) fn resolved(text: &str) -> (policy::Policy, Resolution) {
        let policy = policy::parse_sources(&[(PathBuf::from("test.toml"), text.to_owned())])
            .expect("a valid policy");
        let resolution =
            resolve::resolve_within(&policy, &SourceRoots::default(), None, Budget::default());
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
}
