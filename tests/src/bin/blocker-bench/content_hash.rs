//! The content check at exec (`lsm` backend with IMA): the first exec of a large program, whose
//! SHA-256 the kernel computes, against its next exec, answered from the verdict cache. Each
//! sample is one fresh copy with a content of its own, so its first exec is a real first.

use std::{path::Path, time::Duration};

use anyhow::{bail, Context, Result};

use crate::{
    daemon::Daemon,
    exec_loop::{self, Expect},
    figure::{progress, Environment, Figure, Ratio, Summary},
    kernel_cost::{self, CostFigure, Meter, Sample, Usage},
    workspace::Workspace,
};

pub struct ContentHashRun<'a> {
    pub blocker: &'a Path,
    /// A policy banning a content, so that the kernel hashes at exec.
    pub policy_dir: &'a Path,
    /// Where the daemon's content scan looks: an empty directory.
    pub scan_root: &'a Path,
    pub target: &'a Path,
    pub size_bytes: usize,
    pub copies: usize,
    pub startup_timeout: Duration,
}

pub fn measure(workspace: &Workspace, run: &ContentHashRun) -> Result<Vec<Figure>> {
    progress("content hash at exec: without blocker");
    let without = first_and_second_execs(workspace, run, "plain", None)?;
    progress("content hash at exec: with blocker");
    let scan_root = run.scan_root.to_string_lossy();
    let (daemon, _) = Daemon::start(
        run.blocker,
        run.policy_dir,
        "lsm",
        &["--scan-root", &scan_root],
        run.startup_timeout,
    )?;
    let meter = Meter::start(&daemon)?;
    let with = first_and_second_execs(workspace, run, "checked", Some(&meter))?;
    let kernel_figures = kernel_cost_figures(run, &meter, &with)?;
    drop(meter);
    let (_, stopping) = daemon.stop()?;
    let (cached, hashed) = content_check_counts(&stopping)?;
    if hashed < run.copies as u64 || cached < run.copies as u64 {
        bail!(
            "the kernel hashed {hashed} and answered {cached} from its cache, but {} first \
             and {} second execs were timed",
            run.copies,
            run.copies
        );
    }

    let mib = run.size_bytes >> 20;
    let milliseconds = |times: &[Duration]| -> Vec<f64> {
        times.iter().map(|time| time.as_secs_f64() * 1e3).collect()
    };
    let (plain_first, plain_next) = (milliseconds(&without.first), milliseconds(&without.second));
    let (checked_first, checked_next) = (milliseconds(&with.first), milliseconds(&with.second));
    let copies = format!("{} fresh copies of a {mib} MiB program", run.copies);
    let figure = |key: &str,
                  name: &str,
                  samples: &[f64],
                  ratio: Option<Ratio>,
                  detail: String|
     -> Result<Figure> {
        Ok(Figure {
            breakdown: None,
            id: format!("hash.vm.{key}"),
            environment: Environment::Vm,
            group: "content hash at exec",
            name: format!("{mib} MiB program, {name}"),
            unit: "ms/exec",
            summary: Summary::of(samples)?,
            repetitions: run.copies as u64,
            ratio,
            detail,
        })
    };
    let mut figures = vec![
        figure(
            "none-first",
            "first exec, no blocker",
            &plain_first,
            None,
            copies.clone(),
        )?,
        figure(
            "none-next",
            "next exec, no blocker",
            &plain_next,
            None,
            copies.clone(),
        )?,
        figure(
            "first",
            "first exec, hashed by the kernel",
            &checked_first,
            Some(Ratio::paired(
                "÷ its next exec (cached)",
                &checked_first,
                &checked_next,
            )?),
            format!("{copies}; the kernel hashed {hashed} files while the daemon ran"),
        )?,
        figure(
            "cached",
            "next exec, verdict cached",
            &checked_next,
            Some(Ratio::paired(
                "÷ next exec, no blocker",
                &checked_next,
                &plain_next,
            )?),
            format!("{copies}; {cached} execs answered from the verdict cache"),
        )?,
    ];
    figures.extend(kernel_figures);
    Ok(figures)
}

/// The programs' time in the first (hashed) and the next (cached) exec of each copy.
fn kernel_cost_figures(run: &ContentHashRun, meter: &Meter, execs: &Execs) -> Result<Vec<Figure>> {
    let mib = run.size_bytes >> 20;
    [
        (
            "content-hashed",
            "first exec, hashed",
            &execs.first,
            &execs.first_usage,
        ),
        (
            "content-cached",
            "next exec, verdict cached",
            &execs.second,
            &execs.second_usage,
        ),
    ]
    .into_iter()
    .map(|(key, name, times, usages)| {
        let samples: Vec<Sample> = times
            .iter()
            .zip(usages)
            .map(|(time, usage)| Sample::of(usage, 1, *time))
            .collect();
        CostFigure {
            id: format!("kernel.vm.{key}"),
            environment: Environment::Vm,
            name: format!("blocker's programs, {mib} MiB program, {name}"),
            samples: &samples,
            operations: run.copies as u64,
            detail: format!(
                "{} fresh copies of a {mib} MiB program, one exec each; sample = the run time \
                 of every program the daemon holds during that exec; per program in `breakdown`",
                run.copies
            ),
            breakdown: meter.breakdown(&kernel_cost::sum(usages), run.copies as u64),
        }
        .figure()
    })
    .collect()
}

/// The first and the second exec of each fresh copy: their times and, metered, what the
/// daemon's programs ran during each.
#[derive(Default)]
struct Execs {
    first: Vec<Duration>,
    second: Vec<Duration>,
    first_usage: Vec<Usage>,
    second_usage: Vec<Usage>,
}

/// The first and the second exec of each of `run.copies` fresh copies, metered by `meter`.
fn first_and_second_execs(
    workspace: &Workspace,
    run: &ContentHashRun,
    label: &str,
    meter: Option<&Meter>,
) -> Result<Execs> {
    let mut execs = Execs::default();
    let exec = |program: &Path| -> Result<(Usage, Duration)> {
        match meter {
            Some(meter) => Ok(meter
                .exec_loop(program, 1)
                .map(|(usage, timing)| (usage, timing.elapsed))?),
            None => Ok((
                Usage::default(),
                exec_loop::run(program, 1, Expect::Ran, None)?.elapsed,
            )),
        }
    };
    for copy in 0..run.copies {
        let name = format!("large-{label}-{copy}");
        let program = workspace.padded_copy(run.target, &name, &name, run.size_bytes)?;
        let (usage, time) = exec(&program)?;
        execs.first.push(time);
        execs.first_usage.push(usage);
        let (usage, time) = exec(&program)?;
        execs.second.push(time);
        execs.second_usage.push(usage);
        std::fs::remove_file(&program)
            .with_context(|| format!("removing {}", program.display()))?;
    }
    Ok(execs)
}

/// (answered from the verdict cache, hashed) from the daemon's shutdown line `content checks:
/// H answered from the verdict cache, M hashed, ...`.
fn content_check_counts(log: &[String]) -> Result<(u64, u64)> {
    let line = log
        .iter()
        .find_map(|line| {
            line.split_once("content checks: ")
                .map(|(_, counts)| counts)
        })
        .context("the daemon logged no `content checks:` line: are contents checked at exec?")?;
    let mut numbers = line
        .split(|c: char| !c.is_ascii_digit())
        .filter(|word| !word.is_empty())
        .map(str::parse::<u64>);
    match (numbers.next(), numbers.next()) {
        (Some(Ok(cached)), Some(Ok(hashed))) => Ok((cached, hashed)),
        _ => bail!("cannot read the counts in `content checks: {line}`"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_content_check_counts() {
        let log = [
            "[2026-11-28T10:00:00Z INFO  blocker::daemon] stopping".to_owned(),
            "[2026-11-28T10:00:00Z INFO  blocker::daemon] content checks: 12 answered from the \
             verdict cache, 5 hashed, 0 not hashable, 1 cached verdicts dropped after a change"
                .to_owned(),
        ];
        assert_eq!(content_check_counts(&log).unwrap(), (12, 5));
        assert!(content_check_counts(&log[..1]).is_err());
    }
}
