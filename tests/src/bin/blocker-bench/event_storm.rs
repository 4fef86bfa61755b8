//! Event throughput: an exec storm of a banned program, one worker per CPU, with the daemon
//! streaming an event for each; how many events per second reach its output, and how many the
//! kernel had to drop because the ring buffer was full. Each exec runs as another user, so the
//! kernel's limit on records of one user's repeats lets every record through.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Result};

use crate::{
    daemon::Daemon,
    exec_loop::{self, Expect},
    figure::{progress, Environment, Figure, Ratio, Summary},
};

/// The storm's users: far from any real account's uid.
const FIRST_STORM_UID: u32 = 2_000_000;

/// No event for this long after the storm: the daemon has delivered all it will.
const QUIET: Duration = Duration::from_secs(3);

pub struct StormRun<'a> {
    pub environment: Environment,
    pub blocker: &'a Path,
    /// A policy banning `banned`.
    pub policy_dir: &'a Path,
    pub banned: &'a Path,
    pub execs: u64,
    pub storms: usize,
    pub startup_timeout: Duration,
}

#[derive(Default)]
struct Samples {
    delivered_per_second: Vec<f64>,
    execs_per_second: Vec<f64>,
    lost_percent: Vec<f64>,
    delivered: u64,
    lost: u64,
}

pub fn measure(run: &StormRun) -> Result<Vec<Figure>> {
    let workers = std::thread::available_parallelism().map_or(1, usize::from) as u64;
    let per_worker = run.execs.div_ceil(workers);
    let execs = per_worker * workers;
    let expect = match run.environment.backend() {
        "kill" => Expect::Killed,
        _ => Expect::Refused,
    };
    let mut samples = Samples::default();
    for storm in 0..run.storms {
        progress(&format!(
            "event throughput ({}): storm {} of {}, {execs} execs in {workers} parallel loops",
            run.environment.name(),
            storm + 1,
            run.storms
        ));
        let (mut daemon, _) = Daemon::start(
            run.blocker,
            run.policy_dir,
            run.environment.backend(),
            &[],
            run.startup_timeout,
        )?;
        let started = Instant::now();
        let spawned: Vec<_> = (0..workers)
            .map(|worker| {
                let first_uid = FIRST_STORM_UID + (worker * per_worker) as u32;
                exec_loop::spawn(
                    run.banned,
                    per_worker,
                    exec_loop::Users::Distinct { first_uid },
                    None,
                )
            })
            .collect::<Result<_>>()?;
        for worker in spawned {
            exec_loop::finish(worker, per_worker, expect, run.banned)?;
        }
        let storm_time = started.elapsed();
        let (received, last) = daemon.count_execs_until_quiet(QUIET);
        let (stopped, _) = daemon.stop()?;
        let lost = stopped["events_lost"].as_u64().unwrap_or(u64::MAX);
        if stopped["events"].as_u64() != Some(received) || received.checked_add(lost) != Some(execs)
        {
            bail!(
                "{execs} banned execs must each be delivered or counted as lost, but {received} \
                 arrived and the daemon stopped with {stopped}"
            );
        }
        let delivery_time = last.map_or(storm_time, |last| last - started);
        samples
            .delivered_per_second
            .push(received as f64 / delivery_time.as_secs_f64());
        samples
            .execs_per_second
            .push(execs as f64 / storm_time.as_secs_f64());
        samples
            .lost_percent
            .push(lost as f64 * 100.0 / execs as f64);
        samples.delivered += received;
        samples.lost += lost;
    }

    let environment = run.environment;
    let detail = format!(
        "{} storms of {execs} execs of a banned program in {workers} parallel loops ({} \
         backend); {} events delivered and {} lost in all",
        run.storms,
        environment.backend(),
        samples.delivered,
        samples.lost
    );
    Ok(vec![
        Figure {
            breakdown: None,
            id: format!("events.{}.delivered", environment.name()),
            environment,
            group: "event throughput",
            name: "events delivered during an exec storm".to_owned(),
            unit: "events/s",
            summary: Summary::of(&samples.delivered_per_second)?,
            repetitions: execs * run.storms as u64,
            ratio: Some(Ratio::paired(
                "÷ the storm's exec rate (1 = kept up)",
                &samples.delivered_per_second,
                &samples.execs_per_second,
            )?),
            detail: detail.clone(),
        },
        Figure {
            breakdown: None,
            id: format!("events.{}.lost", environment.name()),
            environment,
            group: "event throughput",
            name: "events lost during an exec storm".to_owned(),
            unit: "%",
            summary: Summary::of(&samples.lost_percent)?,
            repetitions: execs * run.storms as u64,
            ratio: None,
            detail,
        },
    ])
}
