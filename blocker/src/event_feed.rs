//! A synthetic feed for the event pipeline (`blocker feed-events`, hidden; run by `cargo xtask
//! bench`): raw exec events laid out as the kernel writes them into the ring buffer go through
//! the daemon's own per-event path ([`daemon::forward`]: decode, record, log, every sink), with
//! no kernel and no exec behind them. What the pipeline can carry is then measured apart from
//! the exec rate a machine can make, and in CPU time, which a busy machine does not blur.

use std::{collections::BTreeMap, path::PathBuf, time::Instant};

use anyhow::{bail, Context, Result};
use blocker_common::{
    Action, Backend, KernelEvent, Operation, COMM_LEN, FILENAME_LEN, UNKNOWN_CONTENT_HASH,
};

use crate::{
    budget::Budget,
    daemon::{self, rules_named_in_events, Known, EVENTS_PER_TURN},
    escape::escaped,
    events::{self, BootClock, Record},
    metrics::DecisionCounts,
    prepare::{prepare, Contents, Prepared},
    resolve::Resolution,
    sinks::{SinkOptions, Sinks},
};

pub struct FeedOptions {
    /// A policy banning at least one file by path: the events name it and its rule.
    pub policy_dir: PathBuf,
    pub events: u64,
    pub sinks: SinkOptions,
}

/// Feeds `options.events` events to the sinks in turns of the daemon's size, waiting after each
/// until every sink has written it, so that nothing is dropped and the figure is what the sinks
/// carry. Ends like the daemon, with a `stopped` record, and logs the wall and CPU time.
pub fn run(options: &FeedOptions) -> Result<()> {
    let Prepared { resolution, .. } =
        prepare(&options.policy_dir, Contents::NotScanned, Budget::default())?;
    let template = banned_exec(&resolution).with_context(|| {
        format!(
            "the policy in {} bans no file by path",
            escaped(&options.policy_dir)
        )
    })?;
    let retired_rules = BTreeMap::new();
    let protected = BTreeMap::new();
    let known = Known {
        resolution: &resolution,
        retired_rules: &retired_rules,
        protected: &protected,
    };
    let mut decisions = DecisionCounts::default();
    decisions.name_rules(rules_named_in_events(&resolution, &retired_rules));
    let sink = Sinks::start(&options.sinks)?;
    let clock = BootClock;
    let cpu_before = cpu_seconds()?;
    let started = Instant::now();
    let mut fed = 0;
    let mut bytes = Vec::with_capacity(std::mem::size_of::<KernelEvent>());
    while fed < options.events {
        let turn = (options.events - fed).min(EVENTS_PER_TURN as u64);
        let mut batch = sink.batch();
        for _ in 0..turn {
            let mut event = template;
            // Each event another process of another user, as in a storm.
            event.tid = 100_000 + (fed % 1_000_000) as u32;
            event.tgid = event.tid;
            event.uid = 2_000_000 + fed as u32;
            event.boot_time_ns = clock.now_ns();
            bytes.clear();
            bytes.extend_from_slice(events::encode(&event));
            if !daemon::forward(&bytes, &known, &mut batch, &clock, &mut decisions) {
                bail!("the pipeline refused a synthetic event");
            }
            fed += 1;
        }
        drop(batch);
        sink.wait_until_idle();
    }
    sink.close(|records_dropped| Record::Stopped {
        time: events::now_rfc3339(),
        events: fed,
        events_lost: 0,
        pinned: None,
        records_dropped,
    });
    let elapsed = started.elapsed().as_secs_f64();
    let cpu = cpu_seconds()? - cpu_before;
    // `cargo xtask bench` reads this line.
    log::info!("fed {fed} events in {elapsed:.6} s using {cpu:.6} s of CPU");
    Ok(())
}

/// A denied exec of the first file the resolution bans by path, as the kernel reports it.
fn banned_exec(resolution: &Resolution) -> Option<KernelEvent> {
    let (key, entry) = resolution.entries.iter().next()?;
    let path = resolution.path_of(key)?;
    let path = path.as_os_str().as_encoded_bytes();
    let mut filename = [0; FILENAME_LEN];
    let filename_len = path.len().min(FILENAME_LEN - 1);
    filename[..filename_len].copy_from_slice(&path[..filename_len]);
    let mut comm = [0; COMM_LEN];
    comm[..4].copy_from_slice(b"bash");
    Some(KernelEvent {
        boot_time_ns: 0,
        ino: key.ino,
        tid: 0,
        tgid: 0,
        ppid: 1,
        uid: 0,
        gid: 0,
        dev: key.dev,
        rule_id: entry.rule_id,
        action: Action::Deny.wire(),
        backend: Backend::Lsm.wire(),
        operation: Operation::Exec.wire(),
        filename_len: filename_len as u32,
        detail: 0,
        suppressed: 0,
        daemon_silent_secs: 0,
        sha256: UNKNOWN_CONTENT_HASH,
        offender_owner: 0,
        offender_mode: 0,
        comm,
        filename,
    })
}

/// User and system time this process has used, all threads (the sinks') included.
fn cpu_seconds() -> Result<f64> {
    // SAFETY: getrusage fills in the struct it is given.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Err(std::io::Error::last_os_error()).context("getrusage");
    }
    let seconds = |time: libc::timeval| time.tv_sec as f64 + time.tv_usec as f64 / 1e6;
    Ok(seconds(usage.ru_utime) + seconds(usage.ru_stime))
}

#[cfg(test)]
mod tests {
    use std::fs;

    use super::*;

    #[test]
    fn feeds_every_event_to_the_events_file_and_drops_none() {
        let dir = std::env::temp_dir().join(format!("blocker-feed-{}", std::process::id()));
        let policies = dir.join("policies");
        fs::create_dir_all(&policies).unwrap();
        let banned = dir.join("banned");
        fs::write(&banned, b"#!/bin/sh\n").unwrap();
        fs::write(
            policies.join("feed.toml"),
            format!(
                "name = \"feed\"\n\n[[rule]]\nid = \"ban\"\npaths = [{:?}]\n",
                banned.display().to_string()
            ),
        )
        .unwrap();
        let events_file = dir.join("events.jsonl");
        let options = FeedOptions {
            policy_dir: policies,
            events: EVENTS_PER_TURN as u64 + 3,
            sinks: SinkOptions {
                file: Some(crate::sinks::FileOptions {
                    path: events_file.clone(),
                    max_bytes: crate::sinks::DEFAULT_MAX_BYTES,
                    keep: 1,
                    keep_denials: 1,
                }),
                stdout: false,
                journald_socket: None,
                log_lines: false,
                format: crate::sinks::EventsFormat::Blocker,
                notify_socket: None,
            },
        };
        run(&options).unwrap();
        let lines: Vec<serde_json::Value> = fs::read_to_string(&events_file)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        fs::remove_dir_all(&dir).unwrap();
        let (last, execs) = lines.split_last().unwrap();
        assert_eq!(execs.len(), EVENTS_PER_TURN + 3);
        assert!(execs.iter().all(|record| record["kind"] == "exec"
            && record["rule"] == "ban"
            && record["path"] == banned.display().to_string()));
        assert_eq!(execs[1]["uid"], 2_000_001);
        assert_eq!(last["kind"], "stopped");
        assert_eq!(last["events"], EVENTS_PER_TURN as u64 + 3);
        assert_eq!(last["records_dropped"]["file"], 0);
    }

    #[test]
    fn a_policy_banning_nothing_by_path_is_refused() {
        let dir = std::env::temp_dir().join(format!("blocker-feed-none-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        fs::write(
            dir.join("empty.toml"),
            "name = \"empty\"\n\n[[rule]]\nid = \"gone\"\npaths = [\"/nonexistent/x\"]\n",
        )
        .unwrap();
        let options = FeedOptions {
            policy_dir: dir.clone(),
            events: 1,
            sinks: SinkOptions {
                file: None,
                stdout: false,
                journald_socket: None,
                log_lines: false,
                format: crate::sinks::EventsFormat::Blocker,
                notify_socket: None,
            },
        };
        let error = run(&options).unwrap_err().to_string();
        fs::remove_dir_all(&dir).unwrap();
        assert!(error.contains("bans no file by path"), "{error}");
    }
}
