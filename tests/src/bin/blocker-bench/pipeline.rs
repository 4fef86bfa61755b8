//! Event pipeline capacity: what the daemon's per-event path (decode, record, log line, events
//! file and stdout) carries, fed with synthetic raw events by `blocker feed-events` rather than
//! by execs, whose rate the machine limits long before the pipeline. Reported per wall second
//! and per CPU second of the whole process (every thread, from getrusage): the second is what
//! the pipeline costs, whatever else the machine is doing.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::{Command, Stdio},
    thread,
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::figure::{progress, Environment, Figure, Summary};

pub struct PipelineRun<'a> {
    pub environment: Environment,
    pub blocker: &'a Path,
    /// A policy banning a file by path, which the events name.
    pub policy_dir: &'a Path,
    /// Where the events file goes (removed after each run).
    pub events_file: &'a Path,
    pub events: u64,
    pub runs: usize,
}

struct Sample {
    per_second: f64,
    per_cpu_second: f64,
}

pub fn measure(run: &PipelineRun) -> Result<Vec<Figure>> {
    let mut samples = Vec::new();
    for index in 0..run.runs {
        progress(&format!(
            "event pipeline ({}): run {} of {}, {} synthetic events",
            run.environment.name(),
            index + 1,
            run.runs,
            run.events
        ));
        samples.push(feed(run)?);
    }
    let per_second: Vec<f64> = samples.iter().map(|s| s.per_second).collect();
    let per_cpu_second: Vec<f64> = samples.iter().map(|s| s.per_cpu_second).collect();
    let environment = run.environment;
    let detail = format!(
        "{} runs of `blocker feed-events`: {} synthetic denied-exec events each through the \
         daemon's per-event path (decode, record, and the sinks: log line, events file, stdout \
         read by the bench), in turns of the daemon's size, each written by every sink before the next; \
         none lost",
        run.runs, run.events
    );
    let figure = |key: &str, name: &str, unit, values: &[f64]| -> Result<Figure> {
        Ok(Figure {
            id: format!("pipeline.{}.{key}", environment.name()),
            environment,
            group: "event pipeline",
            name: name.to_owned(),
            unit,
            summary: Summary::of(values)?,
            repetitions: run.events * run.runs as u64,
            ratio: None,
            detail: detail.clone(),
            breakdown: None,
        })
    };
    Ok(vec![
        figure(
            "wall",
            "records written per second",
            "records/s",
            &per_second,
        )?,
        figure(
            "per-core",
            "records written per CPU second",
            "records/CPU-s",
            &per_cpu_second,
        )?,
    ])
}

/// One run of `blocker feed-events`; checks that every event reached stdout and the file.
fn feed(run: &PipelineRun) -> Result<Sample> {
    let mut child = Command::new(run.blocker)
        .arg("feed-events")
        .arg("--policy-dir")
        .arg(run.policy_dir)
        .args(["--count", &run.events.to_string()])
        .arg("--events-file")
        .arg(run.events_file)
        // One file for the whole run, so that every line can be counted.
        .args(["--events-file-max-bytes", &(1u64 << 40).to_string()])
        .arg("--no-journald")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {} feed-events", run.blocker.display()))?;
    let stderr = child.stderr.take().expect("piped");
    // Every record is logged too; only the last line, with the times, is kept.
    let log = thread::spawn(move || {
        let mut wanted = Vec::new();
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if line.contains("] fed ") || line.contains("ERROR") || wanted.len() < 20 {
                wanted.push(line);
            }
        }
        wanted
    });
    let mut execs = 0u64;
    let mut stopped = None;
    for line in BufReader::new(child.stdout.take().expect("piped")).lines() {
        let line = line.context("reading feed-events' stdout")?;
        let record: Value = serde_json::from_str(&line)
            .with_context(|| format!("feed-events printed a line that is not JSON: {line}"))?;
        match record["kind"].as_str() {
            Some("exec") => execs += 1,
            Some("stopped") => stopped = Some(record),
            _ => {}
        }
    }
    let status = child.wait().context("waiting for feed-events")?;
    let log = log.join().unwrap_or_default();
    if !status.success() {
        bail!("feed-events failed ({status}): {}", log.join("\n"));
    }
    let file_lines = std::fs::read_to_string(run.events_file)
        .with_context(|| format!("reading {}", run.events_file.display()))?
        .lines()
        .count() as u64;
    std::fs::remove_file(run.events_file)?;
    let stopped = stopped.context("feed-events wrote no `stopped` record")?;
    let dropped = &stopped["records_dropped"];
    if execs != run.events
        || file_lines != run.events + 1
        || stopped["events"] != run.events
        || dropped["file"] != 0
        || dropped["stdout"] != 0
        || dropped["log"] != 0
    {
        bail!(
            "{} events were fed, but stdout had {execs}, the events file {file_lines} lines, and \
             the daemon stopped with {stopped}",
            run.events
        );
    }
    let (wall, cpu) = log
        .iter()
        .find_map(|line| parse_times(line))
        .with_context(|| format!("feed-events logged no times: {}", log.join("\n")))?;
    Ok(Sample {
        per_second: run.events as f64 / wall,
        per_cpu_second: run.events as f64 / cpu,
    })
}

/// (wall, CPU) seconds from `... fed N events in W s using C s of CPU`.
fn parse_times(line: &str) -> Option<(f64, f64)> {
    let (_, rest) = line.split_once(" events in ")?;
    let (wall, rest) = rest.split_once(" s using ")?;
    let cpu = rest.strip_suffix(" s of CPU")?;
    Some((wall.parse().ok()?, cpu.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_times_feed_events_logs() {
        let line = "[2026-11-30T05:00:00Z INFO  blocker::event_feed] fed 1000 events in 0.012500 \
                    s using 0.020000 s of CPU";
        assert_eq!(parse_times(line), Some((0.0125, 0.02)));
        assert_eq!(parse_times("fed 1000 events"), None);
    }
}
