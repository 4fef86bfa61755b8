//! `blocker status` against a daemon enforcing on the host kernel (the `kill` backend): what it
//! reports while the daemon runs, after a ban, after a reload, and after the daemon is gone.

use std::{
    path::Path,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use blocker_integration_tests::{
    blocker_bin, deny_and_audit_policy, BanScenario, Daemon, EVENT_TIMEOUT,
};
use serde_json::{json, Value};

/// `blocker status --status-file FILE [--json]`: exit code and standard output.
fn status(file: &Path, json: bool) -> Result<(i32, String)> {
    let mut command = Command::new(blocker_bin());
    command.arg("status").arg("--status-file").arg(file);
    if json {
        command.arg("--json");
    }
    let output = command.output().context("running blocker status")?;
    let code = output.status.code().context("blocker status was killed")?;
    Ok((code, String::from_utf8_lossy(&output.stdout).into_owned()))
}

fn status_json(file: &Path) -> Result<(i32, Value)> {
    let (code, stdout) = status(file, true)?;
    let report = serde_json::from_str(&stdout)
        .with_context(|| format!("blocker status --json printed no JSON: {stdout}"))?;
    Ok((code, report))
}

/// The first report `wanted` accepts; the daemon republishes every two seconds.
fn wait_for_status(file: &Path, wanted: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let (_, report) = status_json(file)?;
        if wanted(&report) {
            return Ok(report);
        }
        if Instant::now() > deadline {
            bail!("blocker status never showed what was expected; last: {report}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn status_follows_the_daemon_from_start_to_stop() -> Result<()> {
    let scenario = BanScenario::new("status")?;
    let status_file = scenario.sandbox.path("run/status.json");
    let (code, text) = status(&status_file, false)?;
    ensure!(code == 1, "no daemon yet: exit {code}, {text}");
    ensure!(
        text.starts_with("blocker      not running: there is no status file"),
        "{text}"
    );

    let status_arg = status_file.to_str().context("utf-8 path")?;
    let (mut daemon, _) =
        scenario.start_daemon(&["--backend", "kill", "--status-file", status_arg])?;
    let (code, report) = status_json(&status_file)?;
    ensure!(code == 0, "running: exit {code}, {report}");
    ensure!(report["running"] == true, "{report}");
    ensure!(report["state"] == "running", "{report}");
    ensure!(report["pid"] == daemon.pid(), "{report}");
    ensure!(
        report["uptime_seconds"]
            .as_f64()
            .is_some_and(|up| up >= 0.0),
        "{report}"
    );
    ensure!(report["backend"] == "kill", "{report}");
    ensure!(
        report["backend_reason"] == "chosen with --backend kill",
        "{report}"
    );
    let policy_file = scenario.sandbox.policy_dir().join("test.toml");
    ensure!(
        report["policies"]
            == json!([{"name": "test", "file": policy_file.display().to_string(), "mode": "enforce"}]),
        "{report}"
    );
    ensure!(report["rules"] == 2, "{report}");
    ensure!(
        report["entries"]
            == json!({"banned_files": 2, "banned_contents": 0, "over_budget": 0, "undecided": 0}),
        "{report}"
    );
    ensure!(report["kernel"]["btf"] == true, "{report}");
    ensure!(report["kernel"]["ima_content_checks"] == false, "{report}");
    ensure!(
        report["kernel"]["lsms"]
            .as_array()
            .is_some_and(|lsms| !lsms.is_empty()),
        "{report}"
    );
    ensure!(report["pinned"] == false, "{report}");

    let (code, text) = status(&status_file, false)?;
    ensure!(code == 0, "{text}");
    ensure!(
        text.starts_with(&format!(
            "blocker      running: pid {}, version ",
            daemon.pid()
        )),
        "{text}"
    );
    ensure!(
        text.contains("\nbackend      kill: chosen with --backend kill\n"),
        "{text}"
    );

    // A killed exec is counted as delivered once the daemon republishes.
    let _ = Command::new(&scenario.banned).status()?;
    daemon.wait_for_exec(&scenario.banned)?;
    wait_for_status(&status_file, |report| report["events"]["delivered"] == 1)?;

    // A reload that bans one more file shows at once.
    scenario.sandbox.write_policy(
        "test.toml",
        &deny_and_audit_policy(
            &[&scenario.banned, &scenario.unbanned],
            &[&scenario.audited],
        ),
    )?;
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_record(EVENT_TIMEOUT, |record| record["kind"] == "reloaded")?;
    wait_for_status(&status_file, |report| {
        report["entries"]["banned_files"] == 3
    })?;

    let (exit, _, _) = daemon.stop()?;
    ensure!(exit.success(), "daemon exit: {exit}");
    let (code, report) = status_json(&status_file)?;
    ensure!(code == 1, "stopped: exit {code}, {report}");
    ensure!(report["running"] == false, "{report}");
    ensure!(report["uptime_seconds"].is_null(), "{report}");
    ensure!(report["state"] == "stopped", "{report}");
    ensure!(report["events"]["delivered"] == 1, "{report}");
    ensure!(
        report["not_running_reason"]
            .as_str()
            .is_some_and(|reason| reason.starts_with("it stopped at ")),
        "{report}"
    );
    let (code, text) = status(&status_file, false)?;
    ensure!(code == 1, "{text}");
    ensure!(
        text.starts_with("blocker      not running: it stopped at "),
        "{text}"
    );
    Ok(())
}

#[test]
fn a_killed_daemon_is_not_running() -> Result<()> {
    let scenario = BanScenario::new("status-killed")?;
    let status_file = scenario.sandbox.path("status.json");
    let status_arg = status_file.to_str().context("utf-8 path")?;
    let (mut daemon, _) = Daemon::start(
        &scenario.sandbox.policy_dir(),
        &["--backend", "kill", "--status-file", status_arg],
    )?;
    ensure!(status(&status_file, false)?.0 == 0);

    daemon.signal(libc::SIGKILL);
    daemon.wait(EVENT_TIMEOUT)?;
    let (code, report) = status_json(&status_file)?;
    ensure!(code == 1, "killed: exit {code}, {report}");
    ensure!(
        report["state"] == "running",
        "it had no chance to say otherwise: {report}"
    );
    ensure!(
        report["not_running_reason"]
            .as_str()
            .is_some_and(|reason| reason.contains("is gone without having stopped cleanly")),
        "{report}"
    );
    Ok(())
}

/// A daemon stopped by SIGSTOP, or frozen with its cgroup, is there but does nothing: `blocker
/// status` says it is held and exits 1, and says it runs again once it is let go.
#[test]
fn a_stopped_or_frozen_daemon_is_held() -> Result<()> {
    let scenario = BanScenario::new("status-held")?;
    let status_file = scenario.sandbox.path("status.json");
    let status_arg = status_file.to_str().context("utf-8 path")?;
    let (daemon, _) = Daemon::start(
        &scenario.sandbox.policy_dir(),
        &["--backend", "kill", "--status-file", status_arg],
    )?;
    let held = |report: &Value| report["held"].is_string();
    // Stopped before it wrote its first status, the daemon would have nothing to be held in.
    wait_for_status(&status_file, |report| report["running"] == true)?;

    daemon.signal(libc::SIGSTOP);
    let report = wait_for_status(&status_file, held)?;
    ensure!(
        report["held"]
            .as_str()
            .is_some_and(|reason| reason.ends_with("is stopped (SIGSTOP or another stop signal)")),
        "{report}"
    );
    let (code, text) = status(&status_file, false)?;
    ensure!(
        code == 1 && text.starts_with("blocker      held: "),
        "exit {code}: {text}"
    );
    daemon.signal(libc::SIGCONT);
    wait_for_status(&status_file, |report| report["running"] == true)?;

    let freezer = Freezer::new(daemon.pid())?;
    freezer.set(true)?;
    let report = wait_for_status(&status_file, held);
    freezer.set(false)?;
    let report = report?;
    ensure!(
        report["held"]
            .as_str()
            .is_some_and(|reason| reason.contains("is frozen with its cgroup")),
        "{report}"
    );
    wait_for_status(&status_file, |report| report["running"] == true)?;
    drop(freezer);
    let (status, _, _) = daemon.stop()?;
    ensure!(status.success(), "{status}");
    Ok(())
}

/// A test-made freezer cgroup holding one process: cgroup v2 where it is mounted at
/// /sys/fs/cgroup, else the v1 freezer. Dropping it puts the process back and removes it.
struct Freezer {
    dir: std::path::PathBuf,
    pid: u32,
    /// Where the process was, to put it back.
    home: std::path::PathBuf,
    v2: bool,
}

impl Freezer {
    fn new(pid: u32) -> Result<Self> {
        let v2 = Path::new("/sys/fs/cgroup/cgroup.controllers").exists();
        let root = if v2 {
            Path::new("/sys/fs/cgroup").to_owned()
        } else {
            Path::new("/sys/fs/cgroup/freezer").to_owned()
        };
        let listing = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
        let controllers = if v2 { "" } else { "freezer" };
        let home = listing
            .lines()
            .find_map(|line| {
                let (_, rest) = line.split_once(':')?;
                let (listed, path) = rest.split_once(':')?;
                (listed == controllers).then(|| root.join(path.trim_start_matches('/')))
            })
            .context("the daemon's freezer cgroup")?;
        let dir = root.join(format!("blocker-test-freezer-{}", std::process::id()));
        std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let freezer = Self { dir, pid, home, v2 };
        std::fs::write(freezer.dir.join("cgroup.procs"), pid.to_string())
            .context("moving the daemon into the test cgroup")?;
        Ok(freezer)
    }

    fn set(&self, frozen: bool) -> Result<()> {
        let (file, value) = match (self.v2, frozen) {
            (true, frozen) => ("cgroup.freeze", if frozen { "1" } else { "0" }),
            (false, true) => ("freezer.state", "FROZEN"),
            (false, false) => ("freezer.state", "THAWED"),
        };
        std::fs::write(self.dir.join(file), value)
            .with_context(|| format!("writing {value} to {file}"))
    }
}

impl Drop for Freezer {
    fn drop(&mut self) {
        let _ = self.set(false);
        let _ = std::fs::write(self.home.join("cgroup.procs"), self.pid.to_string());
        let _ = std::fs::remove_dir(&self.dir);
    }
}
