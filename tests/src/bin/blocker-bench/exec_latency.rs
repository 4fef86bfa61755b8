//! Exec latency: a fork+exec loop of a small static program under each configuration (blocker
//! with a small and a large policy, fapolicyd; or both in lockdown), each loop followed by one
//! with nothing in force, interleaved in rounds so that a machine getting busier or quieter
//! affects them all alike. A loop gives one sample, the median time of its execs; each
//! configuration's ratio is taken sample by sample against the loop with nothing in force that
//! followed it.

use std::{path::Path, time::Duration};

use anyhow::{Context, Result};

use crate::{
    daemon::Daemon,
    exec_loop::{self, Expect},
    fapolicyd::Fapolicyd,
    figure::{progress, Environment, Figure, Ratio, Summary},
};

/// Execs before each timed loop, untimed: the first exec after the programs attach (or of a
/// fresh worker) pays for caches being filled, which is not the steady cost.
const WARM_UP_EXECS: u64 = 20;

pub struct Rounds {
    pub rounds: usize,
    pub execs_per_loop: u64,
}

/// What runs while the loop is timed.
pub enum Guard<'a> {
    Nothing,
    Blocker {
        policy_dir: &'a Path,
        /// Entries the policy must put in the kernel map: a check that the configuration is
        /// the one described.
        entries: u64,
    },
    Fapolicyd(&'a Fapolicyd),
}

pub struct Configuration<'a> {
    /// Short and stable, for figure ids: `none`, `blocker-10`, ...
    pub key: &'static str,
    pub name: String,
    pub guard: Guard<'a>,
}

/// Shared by every configuration of a run.
pub struct Setup<'a> {
    pub environment: Environment,
    /// What the run's figures are: their id prefix (`exec`: `exec.host.none`, ...) and their
    /// table group.
    pub figures: &'static str,
    pub group: &'static str,
    pub blocker: &'a Path,
    /// The program every loop runs; no configuration bans it.
    pub target: &'a Path,
    /// A file every configuration refuses (banned, or in lockdown trusted by none), exec'd once
    /// after each timed loop to check that the configuration was in force.
    pub banned: &'a Path,
    /// How long a blocker daemon may take to start with the largest policy.
    pub startup_timeout: Duration,
}

/// Measures each configuration and, right after each of its loops, a loop with nothing in
/// force: its ratio is taken against that neighbour, measured seconds later, rather than
/// against a loop the starting of a daemon kept tens of seconds away.
pub fn measure(
    setup: &Setup,
    configurations: &[Configuration],
    rounds: &Rounds,
) -> Result<Vec<Figure>> {
    let baseline = Configuration {
        key: "none",
        name: "no blocker".to_owned(),
        guard: Guard::Nothing,
    };
    let count = configurations.len();
    let mut guarded: Vec<Vec<f64>> = vec![Vec::new(); count];
    let mut neighbours: Vec<Vec<f64>> = vec![Vec::new(); count];
    for round in 0..rounds.rounds {
        progress(&format!(
            "exec latency ({}): round {} of {}",
            setup.environment.name(),
            round + 1,
            rounds.rounds
        ));
        // Each configuration goes first in some round, so none always follows another.
        for offset in 0..count {
            let index = (round + offset) % count;
            for (configuration, samples) in [
                (&configurations[index], &mut guarded[index]),
                (&baseline, &mut neighbours[index]),
            ] {
                let median = time_loop(setup, configuration, rounds.execs_per_loop)
                    .with_context(|| format!("exec latency under {}", configuration.name))?;
                samples.push(median.as_secs_f64() * 1e6);
            }
        }
    }

    let loops = format!(
        "fork+exec+wait of {}, {} execs a loop; sample = a loop's median",
        setup.target.display(),
        rounds.execs_per_loop
    );
    let figure = |configuration: &Configuration, samples: &[f64], ratio| -> Result<Figure> {
        Ok(Figure {
            breakdown: None,
            id: format!(
                "{}.{}.{}",
                setup.figures,
                setup.environment.name(),
                configuration.key
            ),
            environment: setup.environment,
            group: setup.group,
            name: configuration.name.clone(),
            unit: "µs/exec",
            summary: Summary::of(samples)?,
            repetitions: samples.len() as u64 * rounds.execs_per_loop,
            ratio,
            detail: format!("{loops}; {} rounds", rounds.rounds),
        })
    };
    let mut figures = vec![figure(&baseline, &neighbours.concat(), None)?];
    for ((configuration, samples), neighbours) in
        configurations.iter().zip(&guarded).zip(&neighbours)
    {
        figures.push(figure(
            configuration,
            samples,
            Some(Ratio::paired(
                "÷ no blocker, the loop right after",
                samples,
                neighbours,
            )?),
        )?);
    }
    Ok(figures)
}

/// Sets the configuration up, times the loop, checks the ban was in force, tears it down;
/// returns the median exec time.
fn time_loop(setup: &Setup, configuration: &Configuration, execs: u64) -> Result<Duration> {
    let timed = |namespace| -> Result<Duration> {
        exec_loop::run(setup.target, WARM_UP_EXECS, Expect::Ran, namespace)?;
        Ok(exec_loop::run(setup.target, execs, Expect::Ran, namespace)?.median)
    };
    match configuration.guard {
        Guard::Nothing => {
            let elapsed = timed(None)?;
            exec_loop::run(setup.banned, 1, Expect::Ran, None).with_context(|| {
                format!("with nothing in force {} must run", setup.banned.display())
            })?;
            Ok(elapsed)
        }
        Guard::Blocker {
            policy_dir,
            entries,
        } => {
            let backend = setup.environment.backend();
            let (daemon, startup) = Daemon::start(
                setup.blocker,
                policy_dir,
                backend,
                &[],
                setup.startup_timeout,
            )?;
            let installed = startup.started["entries"].as_u64();
            if installed != Some(entries) {
                anyhow::bail!(
                    "the policy in {} put {installed:?} entries in the map, not {entries}",
                    policy_dir.display()
                );
            }
            let elapsed = timed(None)?;
            let refused = match backend {
                "kill" => Expect::Killed,
                _ => Expect::Refused,
            };
            exec_loop::run(setup.banned, 1, refused, None)
                .with_context(|| format!("blocker must stop {}", setup.banned.display()))?;
            daemon.stop()?;
            Ok(elapsed)
        }
        Guard::Fapolicyd(fapolicyd) => {
            let namespace = Some(fapolicyd.namespace());
            let elapsed = timed(namespace)?;
            exec_loop::run(setup.banned, 1, Expect::Refused, namespace)
                .with_context(|| format!("fapolicyd must refuse {}", setup.banned.display()))?;
            Ok(elapsed)
        }
    }
}
