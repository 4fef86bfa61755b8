//! Policy load: how long the daemon takes from start to enforcing a policy whose one rule names
//! a million files (resolving it, then filling the kernel map), and the memory that costs.

use std::{path::Path, time::Duration};

use anyhow::{bail, Result};

use crate::{
    daemon::{bpf_map_bytes, peak_resident_bytes, system_cpu_seconds, Daemon},
    figure::{progress, Environment, Figure, Summary},
};

pub struct PolicyLoadRun<'a> {
    pub blocker: &'a Path,
    /// A policy naming `entries` files.
    pub policy_dir: &'a Path,
    pub entries: u64,
    /// A policy naming a handful of files: the memory baseline.
    pub small_policy_dir: &'a Path,
    pub repetitions: usize,
    pub startup_timeout: Duration,
}

struct Sample {
    until_enforcing: f64,
    resolve: f64,
    load: f64,
    system_cpu: f64,
    peak_resident_mib: f64,
    map_mib: f64,
}

pub fn measure(environment: Environment, run: &PolicyLoadRun) -> Result<Vec<Figure>> {
    let small = sample(
        environment,
        run.blocker,
        run.small_policy_dir,
        None,
        run.startup_timeout,
    )?;
    let mut samples = Vec::new();
    for repetition in 0..run.repetitions {
        progress(&format!(
            "policy load: {} entries, start {} of {}",
            run.entries,
            repetition + 1,
            run.repetitions
        ));
        samples.push(sample(
            environment,
            run.blocker,
            run.policy_dir,
            Some(run.entries),
            run.startup_timeout,
        )?);
    }
    let entries = run.entries;
    let above_small = |sample: &Sample| {
        (sample.peak_resident_mib - small.peak_resident_mib) * f64::from(1 << 20) / entries as f64
    };
    let bytes_per_entry: Vec<f64> = samples.iter().map(above_small).collect();
    let column = |value: fn(&Sample) -> f64| samples.iter().map(value).collect::<Vec<_>>();
    let figure = |key: &str,
                  name: &str,
                  unit: &'static str,
                  values: Vec<f64>,
                  detail: String|
     -> Result<Figure> {
        Ok(Figure {
            breakdown: None,
            id: format!("load.{}.{key}", environment.name()),
            environment,
            group: "policy load",
            name: format!("{name}, {entries} entries"),
            unit,
            summary: Summary::of(&values)?,
            repetitions: run.repetitions as u64,
            ratio: None,
            detail,
        })
    };
    let starts = format!("{} daemon starts", run.repetitions);
    Ok(vec![
        figure(
            "total",
            "daemon start until enforcing",
            "s",
            column(|s| s.until_enforcing),
            format!("{starts}; process start to its `started` record"),
        )?,
        figure(
            "resolve",
            "resolving the policy",
            "s",
            column(|s| s.resolve),
            format!(
                "{starts}; reading the policy and walking the named tree, as the daemon logs it"
            ),
        )?,
        figure(
            "kernel",
            "loading programs and filling the map",
            "s",
            column(|s| s.load),
            format!("{starts}; as the daemon logs it"),
        )?,
        figure(
            "system-cpu",
            "CPU time in the kernel until enforcing",
            "s",
            column(|s| s.system_cpu),
            format!(
                "{starts}; the daemon's system time at its `started` record (every thread): \
                 the kernel's own work of listing, opening and identifying the files and \
                 inserting the entries, which the start cannot take less than this divided by \
                 the {} CPUs",
                std::thread::available_parallelism().map_or(1, usize::from)
            ),
        )?,
        figure(
            "rss",
            "daemon peak resident memory",
            "MiB",
            column(|s| s.peak_resident_mib),
            format!(
                "{starts}; VmHWM once enforcing (with a 10-entry policy: {:.1} MiB)",
                small.peak_resident_mib
            ),
        )?,
        figure(
            "rss-per-entry",
            "daemon peak resident memory per entry",
            "B",
            bytes_per_entry,
            format!(
                "{starts}; VmHWM above that of a daemon enforcing a 10-entry policy ({:.1} MiB), \
                 divided by the entries",
                small.peak_resident_mib
            ),
        )?,
        figure(
            "maps",
            "kernel memory of the BPF maps",
            "MiB",
            column(|s| s.map_mib),
            format!(
                "{starts}; memlock of the daemon's maps, event ring buffer included (with a \
                 10-entry policy: {:.1} MiB)",
                small.map_mib
            ),
        )?,
    ])
}

fn sample(
    environment: Environment,
    blocker: &Path,
    policy_dir: &Path,
    entries: Option<u64>,
    timeout: Duration,
) -> Result<Sample> {
    let (daemon, startup) =
        Daemon::start(blocker, policy_dir, environment.backend(), &[], timeout)?;
    if let Some(entries) = entries {
        let installed = startup.started["entries"].as_u64();
        if installed != Some(entries) {
            bail!("the policy put {installed:?} entries in the map, not {entries}");
        }
    }
    let mib = |bytes: u64| bytes as f64 / f64::from(1 << 20);
    let sample = Sample {
        until_enforcing: startup.until_enforcing.as_secs_f64(),
        resolve: startup.resolve.as_secs_f64(),
        load: startup.load.as_secs_f64(),
        system_cpu: system_cpu_seconds(daemon.pid())?,
        peak_resident_mib: mib(peak_resident_bytes(daemon.pid())?),
        map_mib: mib(bpf_map_bytes(daemon.pid())?),
    };
    daemon.stop()?;
    Ok(sample)
}
