//! The real `blocker run`, started and stopped by the bench through the tests' own harness
//! ([`blocker_integration_tests::Daemon`]), quietly: its log is not echoed, so an exec storm's
//! thousands of lines cost the bench no more than reading them, and it may live as long as a
//! measurement takes.

use std::{
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use blocker_integration_tests::{PipeReader, SpawnOptions};
use serde_json::Value;

/// Generous: under QEMU's emulation a large policy takes long to resolve.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);
/// Longer than any measurement with one daemon; the watchdog still ends a bench that hangs.
const LIFETIME: Duration = Duration::from_secs(3600);
/// How long a startup log line may come after the `started` record, through its own pipe.
const LOG_LAG: Duration = Duration::from_secs(10);

pub struct Daemon(blocker_integration_tests::Daemon);

/// What starting the daemon cost, from its `started` record and its log.
pub struct Startup {
    pub started: Value,
    /// From spawning the process to receiving its `started` record: enforcement is on.
    pub until_enforcing: Duration,
    /// The daemon's own timings of resolving the policy and of loading the kernel side.
    pub resolve: Duration,
    pub load: Duration,
}

impl Daemon {
    /// Starts `blocker run` on `policy_dir` with the `backend` forced and `extra` arguments,
    /// and waits up to `timeout` for its `started` record. No refresh happens during a
    /// measurement: walking the banned trees again would compete with what is measured.
    pub fn start(
        blocker: &Path,
        policy_dir: &Path,
        backend: &str,
        extra: &[&str],
        timeout: Duration,
    ) -> Result<(Self, Startup)> {
        let work = policy_dir.parent().unwrap_or(policy_dir);
        let status_file = work.join("status.json");
        let args = [
            &[
                "--backend",
                backend,
                "--refresh-interval",
                "86400",
                // Status stays in the bench's own tmpfs, out of the host's /run.
                "--status-file",
                status_file
                    .to_str()
                    .context("the bench's directory is not UTF-8")?,
            ],
            extra,
        ]
        .concat();
        let options = SpawnOptions {
            stdout: PipeReader::Reading,
            stderr: PipeReader::Reading,
            echo_log: false,
            lifetime: LIFETIME,
        };
        let spawned = Instant::now();
        let mut daemon =
            blocker_integration_tests::Daemon::spawn_program(blocker, policy_dir, &args, options)?;
        let (started_at, started) = daemon
            .wait_for_record_arrival(timeout, |record| record["kind"] == "started")
            .context("the daemon did not start")?;
        if started["backend"] != backend {
            bail!("the daemon started with another backend than {backend}: {started}");
        }
        let startup = Startup {
            until_enforcing: started_at - spawned,
            resolve: logged_duration(&mut daemon, "] resolved ")?,
            load: logged_duration(&mut daemon, "] loaded ")?,
            started,
        };
        Ok((Self(daemon), startup))
    }

    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// Counts `exec` records until none arrives for `quiet`; returns the count and when the
    /// last of them arrived.
    pub fn count_execs_until_quiet(&mut self, quiet: Duration) -> (u64, Option<Instant>) {
        self.0.count_execs_until_quiet(quiet)
    }

    /// Stops the daemon with SIGTERM and returns its `stopped` record, and the log lines it
    /// wrote while stopping.
    pub fn stop(self) -> Result<(Value, Vec<String>)> {
        let logged_before = self.0.log.len();
        let (status, records, log) = self.0.stop_within(STOP_TIMEOUT)?;
        let tail = || log[log.len().saturating_sub(30)..].join("\n  ");
        if !status.success() {
            bail!(
                "the daemon exited with {status}; its last log lines:\n  {}",
                tail()
            );
        }
        let stopped = records
            .into_iter()
            .rev()
            .find(|record| record["kind"] == "stopped")
            .with_context(|| format!("no `stopped` record; its last log lines:\n  {}", tail()))?;
        let stopping = log[logged_before.min(log.len())..].to_vec();
        Ok((stopped, stopping))
    }
}

/// The duration a startup log line says, in the form `<what> ... in <seconds> s` (blocker's
/// daemon.rs logs its startup that way).
fn logged_duration(daemon: &mut blocker_integration_tests::Daemon, what: &str) -> Result<Duration> {
    let line = daemon
        .wait_for_log(what, LOG_LAG)
        .with_context(|| format!("the daemon logged no `{what}... in N s` line"))?;
    line.split_once("] ")
        .and_then(|(_, message)| parse_seconds(message))
        .with_context(|| format!("no duration in the log line {line:?}"))
}

/// `... in 1.234 s` at the end of a message, as a duration.
fn parse_seconds(message: &str) -> Option<Duration> {
    let (_, seconds) = message.rsplit_once(" in ")?;
    let seconds: f64 = seconds.strip_suffix(" s")?.parse().ok()?;
    Duration::try_from_secs_f64(seconds).ok()
}

/// The peak resident memory (`VmHWM`) of process `pid`, in bytes.
pub fn peak_resident_bytes(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|value| value.trim().strip_suffix("kB"))
        .and_then(|kib| kib.trim().parse::<u64>().ok())
        .map(|kib| kib * 1024)
        .with_context(|| format!("{path} has no VmHWM line"))
}

/// CPU time process `pid` (all its threads) has spent in the kernel, in seconds
/// (`/proc/PID/stat`'s `stime`).
pub fn system_cpu_seconds(pid: u32) -> Result<f64> {
    let path = format!("/proc/{pid}/stat");
    let stat = std::fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    // The fields after the command, which is in parentheses and may hold anything.
    let after_command = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .with_context(|| format!("{path} has no command field"))?;
    // `stime` is field 15 of the whole line: the 13th after the command.
    let ticks: u64 = after_command
        .split_whitespace()
        .nth(12)
        .and_then(|field| field.parse().ok())
        .with_context(|| format!("{path} has no stime field"))?;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    Ok(ticks as f64 / ticks_per_second.max(1) as f64)
}

/// Kernel memory charged for the BPF maps process `pid` holds (the `memlock` of each map
/// descriptor in `/proc/PID/fdinfo`), in bytes.
pub fn bpf_map_bytes(pid: u32) -> Result<u64> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut total = 0;
    let mut maps = 0;
    for entry in std::fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        // A descriptor closed meanwhile is simply not counted.
        let Ok(info) = std::fs::read_to_string(entry?.path()) else {
            continue;
        };
        if !info.lines().any(|line| line.starts_with("map_type:")) {
            continue;
        }
        maps += 1;
        total += info
            .lines()
            .find_map(|line| line.strip_prefix("memlock:"))
            .and_then(|bytes| bytes.trim().parse::<u64>().ok())
            .unwrap_or(0);
    }
    if maps == 0 {
        bail!("process {pid} holds no BPF map");
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_durations_at_the_end_of_log_messages() {
        assert_eq!(
            parse_seconds("resolved 2 rules to 1000000 files in 1.250 s"),
            Some(Duration::from_millis(1250))
        );
        assert_eq!(parse_seconds("resolved 2 rules to 7 files"), None);
        assert_eq!(parse_seconds("loaded in soon s"), None);
    }
}
