//! The real `blocker run`, started and stopped by the bench: its JSON records and log lines are
//! collected with the instant each arrived, and nothing is echoed, so an exec storm's thousands
//! of events cost the bench no more than reading them.

use std::{
    io::{BufRead, BufReader},
    path::Path,
    process::Child,
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use blocker_integration_tests::blocker_run;
use serde_json::Value;

/// Generous: under QEMU's emulation a large policy takes long to resolve.
const STOP_TIMEOUT: Duration = Duration::from_secs(120);

enum Line {
    Record(Value),
    Log(String),
}

pub struct Daemon {
    child: Child,
    lines: Receiver<(Instant, Line)>,
    /// The latest log lines, for error messages.
    log: Vec<String>,
}

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
        let mut command = blocker_run(blocker, policy_dir);
        command
            .args(["--backend", backend, "--refresh-interval", "86400"])
            // Events and status stay in the bench's own tmpfs, out of the host's /var/log and
            // /run and out of its journal; the file sink still works as in the service.
            .arg("--events-file")
            .arg(work.join("events.jsonl"))
            .arg("--status-file")
            .arg(work.join("status.json"))
            .arg("--no-journald")
            .args(extra);
        let spawned = Instant::now();
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", blocker.display()))?;
        let (sender, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("piped");
        let records = sender.clone();
        thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let line = match serde_json::from_str(&line) {
                    Ok(record) => Line::Record(record),
                    Err(error) => {
                        Line::Log(format!("stdout line that is not JSON ({error}): {line}"))
                    }
                };
                if records.send((Instant::now(), line)).is_err() {
                    break;
                }
            }
        });
        let stderr = child.stderr.take().expect("piped");
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if sender.send((Instant::now(), Line::Log(line))).is_err() {
                    break;
                }
            }
        });
        let mut daemon = Self {
            child,
            lines,
            log: Vec::new(),
        };
        let (started_at, started) = daemon
            .next_record(timeout, |record| record["kind"] == "started")
            .context("the daemon did not start")?;
        if started["backend"] != backend {
            bail!("the daemon started with another backend than {backend}: {started}");
        }
        let startup = Startup {
            until_enforcing: started_at - spawned,
            resolve: daemon.logged_duration("resolved ")?,
            load: daemon.logged_duration("loaded ")?,
            started,
        };
        Ok((daemon, startup))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next record `wanted` accepts, with the instant it arrived; log lines meanwhile are
    /// kept for diagnostics, other records dropped.
    fn next_record(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> Result<(Instant, Value)> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((at, Line::Record(record))) if wanted(&record) => return Ok((at, record)),
                Ok((_, Line::Record(_))) => {}
                Ok((_, Line::Log(line))) => self.keep_log(line),
                Err(RecvTimeoutError::Timeout) => {
                    bail!("nothing within {timeout:?}; {}", self.log_tail())
                }
                Err(RecvTimeoutError::Disconnected) => {
                    bail!("the daemon closed its output; {}", self.log_tail())
                }
            }
        }
    }

    fn keep_log(&mut self, line: String) {
        const KEPT: usize = 200;
        if self.log.len() == KEPT {
            self.log.remove(0);
        }
        self.log.push(line);
    }

    fn log_tail(&self) -> String {
        let tail = &self.log[self.log.len().saturating_sub(30)..];
        format!("its last log lines:\n  {}", tail.join("\n  "))
    }

    /// The duration a startup log line says, in the form `<what> ... in <seconds> s` (blocker's
    /// daemon.rs logs its startup that way). The log comes through another pipe than the
    /// records, so it may still be on its way when the `started` record is in.
    fn logged_duration(&mut self, what: &str) -> Result<Duration> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let found = self
                .log
                .iter()
                .filter_map(|line| line.split_once("] ").map(|(_, message)| message))
                .filter(|message| message.starts_with(what))
                .find_map(parse_seconds);
            if let Some(duration) = found {
                return Ok(duration);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok((_, Line::Log(line))) => self.keep_log(line),
                Ok((_, Line::Record(_))) => {}
                Err(_) => bail!(
                    "the daemon logged no `{what}... in N s` line; {}",
                    self.log_tail()
                ),
            }
        }
    }

    /// Counts `exec` records until none arrives for `quiet`; returns the count and when the
    /// last of them arrived.
    pub fn count_execs_until_quiet(&mut self, quiet: Duration) -> (u64, Option<Instant>) {
        let mut count = 0;
        let mut last = None;
        while let Ok((at, line)) = self.lines.recv_timeout(quiet) {
            match line {
                Line::Record(record) if record["kind"] == "exec" => {
                    count += 1;
                    last = Some(at);
                }
                Line::Record(_) => {}
                Line::Log(line) => self.keep_log(line),
            }
        }
        (count, last)
    }

    /// Stops the daemon with SIGTERM and returns its `stopped` record, and the log lines it
    /// wrote while stopping.
    pub fn stop(mut self) -> Result<(Value, Vec<String>)> {
        let logged_before = self.log.len();
        // SAFETY: plain kill(2) of a child that has not been reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let (_, stopped) = self.next_record(STOP_TIMEOUT, |record| record["kind"] == "stopped")?;
        let status = self.child.wait().context("waiting for the daemon")?;
        if !status.success() {
            bail!("the daemon exited with {status}; {}", self.log_tail());
        }
        while let Ok((_, line)) = self.lines.recv_timeout(Duration::from_secs(5)) {
            if let Line::Log(line) = line {
                self.keep_log(line);
            }
        }
        let stopping = self.log[logged_before.min(self.log.len())..].to_vec();
        Ok((stopped, stopping))
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
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
