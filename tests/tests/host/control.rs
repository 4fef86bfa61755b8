//! The daemon's control socket on the host kernel (the `kill` backend): `blocker stop` and
//! `blocker policy` ask the daemon, which checks and does the work itself; only root is
//! served, and no client, silent or oversized, holds the daemon up.

use std::{
    fs,
    io::{Read, Write},
    os::unix::{
        fs::{FileTypeExt, PermissionsExt},
        net::UnixStream,
        process::{CommandExt, ExitStatusExt},
    },
    path::{Path, PathBuf},
    process::{Command, Output},
    thread,
    time::{Duration, Instant},
};

use anyhow::{ensure, Context, Result};
use blocker_integration_tests::{
    blocker_bin, deny_and_audit_policy, run_as_launcher, BanScenario, Daemon, EVENT_TIMEOUT,
};
use serde_json::Value;

/// What the daemon's request line may hold at most (`protocol::MAX_REQUEST_BYTES`).
const MAX_REQUEST_BYTES: usize = 20 << 20;
const NOBODY: u32 = 65534;

/// A scenario's daemon, started with its status document (and so its socket) in the sandbox.
struct Controlled {
    scenario: BanScenario,
    daemon: Daemon,
    status_file: PathBuf,
    socket: PathBuf,
}

impl Controlled {
    fn start(test_name: &str) -> Result<Self> {
        let scenario = BanScenario::new(test_name)?;
        let status_file = scenario.sandbox.path("run/status.json");
        let status_arg = status_file.to_str().context("utf-8 path")?.to_owned();
        let (daemon, _) =
            scenario.start_daemon(&["--backend", "kill", "--status-file", &status_arg])?;
        let socket = scenario.sandbox.path("run/status.sock");
        wait_for_document(&status_file)?;
        Ok(Self {
            scenario,
            daemon,
            status_file,
            socket,
        })
    }

    /// `blocker ARGS --status-file STATUS_FILE`, as root or as `uid`.
    fn blocker(&self, args: &[&str], uid: Option<u32>) -> Result<Output> {
        let mut command = Command::new(blocker_bin());
        command
            .args(args)
            .arg("--status-file")
            .arg(&self.status_file);
        if let Some(uid) = uid {
            command.uid(uid).gid(uid);
        }
        command.output().context("running blocker")
    }

    /// A policy file outside the policy directory banning `banned` under rule `id`.
    fn policy_file(&self, name: &str, id: &str, banned: &Path) -> Result<PathBuf> {
        let path = self.scenario.sandbox.path(name);
        let policy = deny_and_audit_policy(&[banned], &[])
            .replace("id = \"ban\"", &format!("id = \"{id}\""))
            .replace("name = \"test\"", &format!("name = \"{id}\""));
        fs::write(&path, policy)?;
        Ok(path)
    }
}

/// Clients find the socket through the status document, published just after `started`.
fn wait_for_document(status_file: &Path) -> Result<()> {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    while !status_file.exists() {
        ensure!(Instant::now() < deadline, "no status document");
        thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[test]
fn policy_changes_and_stop_go_through_the_daemon() -> Result<()> {
    let mut control = Controlled::start("control")?;
    let metadata =
        fs::symlink_metadata(&control.socket).context("the socket is beside the status")?;
    ensure!(metadata.file_type().is_socket());
    ensure!(
        metadata.permissions().mode() & 0o777 == 0o600,
        "{metadata:?}"
    );
    let status: Value = serde_json::from_str(&fs::read_to_string(&control.status_file)?)?;
    ensure!(
        status["control_socket"] == control.socket.display().to_string().as_str(),
        "{status}"
    );

    // Checked whole by the daemon: nothing is written, and the error names the file.
    let banned_later = control.scenario.sandbox.copy_binary("banned-later")?;
    let bad = control.policy_file("bad.toml", "ban", &banned_later)?;
    let output = control.blocker(&["policy", "install", bad.to_str().unwrap()], None)?;
    let stderr = text(&output.stderr);
    ensure!(
        output.status.code() == Some(2)
            && stderr.contains("duplicate rule id `ban`")
            && stderr.contains(&bad.display().to_string()),
        "{output:?}"
    );
    let policy_dir = control.scenario.sandbox.policy_dir();
    ensure!(!policy_dir.join("bad.toml").exists());
    let daemon = &mut control.daemon;
    daemon.wait_for_log(
        "control socket: install bad.toml asked by pid",
        EVENT_TIMEOUT,
    )?;
    daemon.wait_for_log("control socket: refused pid", EVENT_TIMEOUT)?;

    // No --policy-dir: the daemon's, found through its status document.
    let later = control.policy_file("later.toml", "ban-later", &banned_later)?;
    let client = Command::new(blocker_bin())
        .args([
            "policy",
            "install",
            later.to_str().unwrap(),
            "--status-file",
        ])
        .arg(&control.status_file)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let client_pid = client.id();
    let output = client.wait_with_output()?;
    ensure!(output.status.success(), "{output:?}");
    ensure!(
        text(&output.stdout).starts_with(&format!(
            "installed later.toml in {}\n",
            policy_dir.display()
        )),
        "{output:?}"
    );
    let daemon = &mut control.daemon;
    let changed = daemon.wait_for_record(EVENT_TIMEOUT, |r| r["kind"] == "policy_changed")?;
    ensure!(
        changed["pid"] == client_pid && changed["uid"] == 0,
        "the record names who asked: {changed}"
    );
    ensure!(changed["installed"][0] == "later.toml", "{changed}");
    daemon.wait_for_record(EVENT_TIMEOUT, |r| {
        r["kind"] == "reloaded" && r["rules"] == 3
    })?;
    let (_, status) = run_as_launcher(&banned_later)?;
    ensure!(
        status.signal() == Some(libc::SIGKILL),
        "banned by the installed policy: {status}"
    );

    let output = control.blocker(&["policy", "remove", "later.toml"], None)?;
    ensure!(output.status.success(), "{output:?}");
    ensure!(!policy_dir.join("later.toml").exists());
    let daemon = &mut control.daemon;
    let changed = daemon.wait_for_record(EVENT_TIMEOUT, |r| r["kind"] == "policy_changed")?;
    ensure!(changed["removed"][0] == "later.toml", "{changed}");
    daemon.wait_for_record(EVENT_TIMEOUT, |r| {
        r["kind"] == "reloaded" && r["rules"] == 2
    })?;

    let output = control.blocker(&["stop"], None)?;
    let Controlled {
        scenario,
        mut daemon,
        socket,
        ..
    } = control;
    ensure!(
        output.status.success()
            && text(&output.stdout)
                == format!("stopped the blocker daemon (pid {})\n", daemon.pid()),
        "{output:?}"
    );
    let exit = daemon.wait(EVENT_TIMEOUT)?;
    ensure!(exit.success(), "stopped as on SIGTERM: {exit}");
    let (records, log) = daemon.remaining_output();
    ensure!(
        log.iter()
            .any(|line| line.contains("asked over the control socket")),
        "asked, not signalled: {log:?}"
    );
    ensure!(
        records.iter().any(|r| r["kind"] == "stopped"),
        "{records:?}"
    );
    ensure!(!socket.exists(), "the socket is removed with the daemon");

    // With no daemon, `blocker policy` writes the directory itself, as before.
    let output = Command::new(blocker_bin())
        .args(["policy", "install", later.to_str().unwrap(), "--policy-dir"])
        .arg(&policy_dir)
        .output()?;
    ensure!(output.status.success(), "{output:?}");
    ensure!(policy_dir.join("later.toml").exists());
    drop(scenario);
    Ok(())
}

#[test]
fn only_root_is_served() -> Result<()> {
    let mut control = Controlled::start("control-root")?;
    // The socket's mode keeps others out...
    let output = control.blocker(&["stop"], Some(NOBODY))?;
    ensure!(
        output.status.code() == Some(2) && text(&output.stderr).contains("Permission denied"),
        "{output:?}"
    );
    // ...and where a mode would let them in, the daemon refuses them by their credentials.
    fs::set_permissions(&control.socket, fs::Permissions::from_mode(0o666))?;
    let output = control.blocker(&["stop"], Some(NOBODY))?;
    ensure!(
        output.status.code() == Some(2)
            && text(&output.stderr).contains("only root may control the blocker daemon"),
        "{output:?}"
    );
    control
        .daemon
        .wait_for_log(&format!("(uid {NOBODY}): only root"), EVENT_TIMEOUT)?;

    let (exit, _, _) = control.daemon.stop()?;
    ensure!(exit.success(), "the refused client stopped nothing: {exit}");
    Ok(())
}

#[test]
fn a_silent_client_holds_up_neither_events_nor_other_clients() -> Result<()> {
    let mut control = Controlled::start("control-silent")?;
    let mut silent = UnixStream::connect(&control.socket)?;

    let (_, status) = run_as_launcher(&control.scenario.banned)?;
    ensure!(status.signal() == Some(libc::SIGKILL), "{status}");
    control.daemon.wait_for_exec(&control.scenario.banned)?;
    let unbanned = control.scenario.unbanned.clone();
    let other = control.policy_file("other.toml", "other", &unbanned)?;
    let output = control.blocker(&["policy", "install", other.to_str().unwrap()], None)?;
    ensure!(output.status.success(), "answered meanwhile: {output:?}");
    control
        .daemon
        .wait_for_record(EVENT_TIMEOUT, |r| r["kind"] == "policy_changed")?;

    control
        .daemon
        .wait_for_log("sent no request within", EVENT_TIMEOUT)?;
    let mut rest = Vec::new();
    silent.set_read_timeout(Some(EVENT_TIMEOUT))?;
    silent.read_to_end(&mut rest)?;
    ensure!(rest.is_empty(), "closed unanswered: {}", text(&rest));
    let (exit, _, _) = control.daemon.stop()?;
    ensure!(exit.success(), "{exit}");
    Ok(())
}

#[test]
fn an_oversized_request_is_refused_unread() -> Result<()> {
    let mut control = Controlled::start("control-oversized")?;
    let mut client = UnixStream::connect(&control.socket)?;
    client.set_read_timeout(Some(EVENT_TIMEOUT))?;
    client.set_write_timeout(Some(EVENT_TIMEOUT))?;
    // The daemon stops reading past its limit: the rest of the write may fail.
    let _ = client.write_all(&vec![b' '; MAX_REQUEST_BYTES + 4096]);
    let mut reply = Vec::new();
    let _ = client.read_to_end(&mut reply);
    let reply: Value =
        serde_json::from_slice(&reply).with_context(|| format!("a reply: {}", text(&reply)))?;
    ensure!(
        reply["outcome"] == "refused"
            && reply["error"]
                .as_str()
                .is_some_and(|error| error.contains("larger than")),
        "{reply}"
    );
    control
        .daemon
        .wait_for_log("the request is larger than", Duration::from_secs(5))?;
    let output = control.blocker(&["stop"], None)?;
    ensure!(output.status.success(), "still answering: {output:?}");
    control.daemon.wait(EVENT_TIMEOUT)?;
    Ok(())
}

#[test]
fn a_failed_start_leaves_no_socket() -> Result<()> {
    let scenario = BanScenario::new("control-failed")?;
    let status_file = scenario.sandbox.path("run/status.json");
    let status_arg = status_file.to_str().context("utf-8 path")?;
    // The host kernel refuses LSM programs: the start fails after the socket was made.
    let mut daemon = Daemon::spawn(
        &scenario.sandbox.policy_dir(),
        &["--backend", "lsm", "--status-file", status_arg],
    )?;
    let exit = daemon.wait(EVENT_TIMEOUT)?;
    ensure!(exit.code() == Some(2), "{exit}");
    let socket = scenario.sandbox.path("run/status.sock");
    ensure!(!socket.exists(), "{} is left", socket.display());
    Ok(())
}

/// As under the unit's `ProtectSystem=strict`, the daemon runs where its policy directory is
/// read-only (a mount namespace of its own): it writes what `blocker policy` asks anyway, and
/// nothing outside it changes.
#[test]
fn the_daemon_writes_a_policy_directory_it_sees_read_only() -> Result<()> {
    let scenario = BanScenario::new("control-read-only")?;
    let policy_dir = scenario.sandbox.policy_dir();
    let wrapper = scenario.sandbox.path("run-read-only");
    fs::write(
        &wrapper,
        format!(
            "#!/bin/sh\nexec unshare --mount --propagation private sh -c 'mount --bind \"$0\" \
             \"$0\" && mount -o remount,bind,ro \"$0\" && exec \"$@\"' \"{}\" \"{}\" \"$@\"\n",
            policy_dir.display(),
            blocker_bin().display()
        ),
    )?;
    fs::set_permissions(&wrapper, fs::Permissions::from_mode(0o755))?;
    let status_file = scenario.sandbox.path("run/status.json");
    let status_arg = status_file.to_str().context("utf-8 path")?;
    let (mut daemon, _) = Daemon::start_program(
        &wrapper,
        &policy_dir,
        &["--backend", "kill", "--status-file", status_arg],
    )?;
    let pid = daemon.pid().to_string();
    let probe = policy_dir.join("probe.toml");
    let touched = Command::new("nsenter")
        .args(["--target", &pid, "--mount", "--", "touch"])
        .arg(&probe)
        .output()?;
    ensure!(
        !touched.status.success() && text(&touched.stderr).contains("Read-only file system"),
        "read-only where the daemon runs: {touched:?}"
    );
    wait_for_document(&status_file)?;

    let later = scenario.sandbox.path("later.toml");
    fs::write(
        &later,
        deny_and_audit_policy(&[&scenario.unbanned], &[])
            .replace("id = \"ban\"", "id = \"later\"")
            .replace("name = \"test\"", "name = \"later\""),
    )?;
    let output = Command::new(blocker_bin())
        .args([
            "policy",
            "install",
            later.to_str().unwrap(),
            "--status-file",
        ])
        .arg(&status_file)
        .output()?;
    ensure!(output.status.success(), "{output:?}");
    daemon.wait_for_record(EVENT_TIMEOUT, |r| r["kind"] == "policy_changed")?;
    daemon.wait_for_record(EVENT_TIMEOUT, |r| {
        r["kind"] == "reloaded" && r["rules"] == 3
    })?;
    ensure!(
        fs::read_to_string(policy_dir.join("later.toml"))? == fs::read_to_string(&later)?,
        "written where everyone sees it"
    );
    let names: Vec<_> = fs::read_dir(&policy_dir)?
        .map(|entry| entry.map(|entry| entry.file_name()))
        .collect::<std::io::Result<_>>()?;
    ensure!(names.len() == 2, "no temporary file is left: {names:?}");

    let output = Command::new(blocker_bin())
        .args(["stop", "--status-file"])
        .arg(&status_file)
        .output()?;
    ensure!(output.status.success(), "{output:?}");
    ensure!(daemon.wait(EVENT_TIMEOUT)?.success());
    Ok(())
}
