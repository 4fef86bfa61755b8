//! The content check at exec (`lsm` backend with IMA): the first exec of a large program, whose
//! SHA-256 the kernel computes, against its next exec, answered from the verdict cache. Each
//! sample is one fresh copy with a content of its own, so its first exec is a real first.

use std::{path::Path, time::Duration};

use anyhow::{bail, Context, Result};

use crate::{
    daemon::Daemon,
    exec_loop::{self, Expect},
    figure::{progress, Environment, Figure, Ratio, Summary},
    workspace::Workspace,
};

pub struct ContentHashRun<'a> {
    pub blocker: &'a Path,
    pub policy_dir: &'a Path,
    pub target: &'a Path,
    pub size_bytes: usize,
    pub copies: usize,
    pub startup_timeout: Duration,
}

pub fn measure(workspace: &Workspace, run: &ContentHashRun) -> Result<Vec<Figure>> {
    progress("content hash at exec: without blocker");
    let without = first_and_second_execs(workspace, run, "plain")?;
    progress("content hash at exec: with blocker");
    let (daemon, _) = Daemon::start(run.blocker, run.policy_dir, "lsm", &[], run.startup_timeout)?;
    let with = first_and_second_execs(workspace, run, "checked")?;
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
    let (plain_first, plain_next) = (milliseconds(&without.0), milliseconds(&without.1));
    let (checked_first, checked_next) = (milliseconds(&with.0), milliseconds(&with.1));
    let copies = format!("{} fresh copies of a {mib} MiB program", run.copies);
    let figure = |key: &str,
                  name: &str,
                  samples: &[f64],
                  ratio: Option<Ratio>,
                  detail: String|
     -> Result<Figure> {
        Ok(Figure {
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
    Ok(vec![
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
    ])
}

/// The first and the second exec time of each of `run.copies` fresh copies.
fn first_and_second_execs(
    workspace: &Workspace,
    run: &ContentHashRun,
    label: &str,
) -> Result<(Vec<Duration>, Vec<Duration>)> {
    let mut first = Vec::new();
    let mut second = Vec::new();
    for copy in 0..run.copies {
        let name = format!("large-{label}-{copy}");
        let program = workspace.padded_copy(run.target, &name, &name, run.size_bytes)?;
        first.push(exec_loop::run(&program, 1, Expect::Ran, None)?.elapsed);
        second.push(exec_loop::run(&program, 1, Expect::Ran, None)?.elapsed);
        std::fs::remove_file(&program)
            .with_context(|| format!("removing {}", program.display()))?;
    }
    Ok((first, second))
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
