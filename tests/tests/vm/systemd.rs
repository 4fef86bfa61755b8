//! The package's service under a real systemd (run by `cargo xtask test` in Debian 13 booted with
//! systemd as init, on a kernel with BPF LSM): installed with dpkg, started, reloaded, restarted,
//! upgraded, removed and purged as an administrator would, and brought up again by a reboot
//! before anyone can log in. Each test sets up what it needs, whatever ran before it.

use std::{
    fs,
    io::ErrorKind,
    path::Path,
    process::{Command, Output},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use blocker_integration_tests::{deny_and_audit_policy, harmless_binary, STARTUP_TIMEOUT};
use serde_json::Value;

/// Put into the VM by xtask (xtask/src/systemd_vm.rs).
const DEFAULT_PACKAGE: &str = "/root/blocker.deb";
const SERVICE: &str = "blocker.service";
const INSTALLED_BLOCKER: &str = "/usr/bin/blocker";
const UNIT: &str = "/lib/systemd/system/blocker.service";
const POLICY_DIR: &str = "/etc/blocker/policies";
const SHIPPED_POLICY: &str = "/etc/blocker/policies/government-devices.toml";
const PIN_DIR: &str = "/sys/fs/bpf/blocker";
const LOG_DIR: &str = "/var/log/blocker";
const CACHE_DIR: &str = "/var/cache/blocker";
const STATUS_FILE: &str = "/run/blocker/status.json";
const CONTROL_SOCKET: &str = "/run/blocker/status.sock";
/// node_exporter's textfile directory, where the service writes its metrics if it exists.
const TEXTFILE_DIR: &str = "/var/lib/prometheus/node-exporter";
/// The test's files: the banned copies and the policy file before it is installed.
const WORK_DIR: &str = "/opt/blocker-vm";
const TEST_POLICY: &str = "vm-systemd.toml";
/// Where the reboot test keeps what it saw before the reboot.
const PID_BEFORE_REBOOT: &str = "/var/lib/blocker-vm-tests/pid-before-reboot";
/// systemd's journal may take a moment to index an entry; journald and the daemon are slow
/// under emulation.
const JOURNAL_TIMEOUT: Duration = Duration::from_secs(30);
const REBOOT_TIMEOUT: Duration = Duration::from_secs(300);

fn package() -> String {
    std::env::var("BLOCKER_PACKAGE").unwrap_or_else(|_| DEFAULT_PACKAGE.to_owned())
}

fn output(program: &str, args: &[&str]) -> Result<Output> {
    Command::new(program)
        .args(args)
        // Installed commands must not depend on where they run.
        .current_dir("/")
        .env("DEBIAN_FRONTEND", "noninteractive")
        .output()
        .with_context(|| format!("running {program} {}", args.join(" ")))
}

/// The standard output of a command that must succeed.
fn succeed(program: &str, args: &[&str]) -> Result<String> {
    let output = output(program, args)?;
    ensure!(
        output.status.success(),
        "`{program} {}` failed ({}): {}{}",
        args.join(" "),
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

fn unit_property(unit: &str, property: &str) -> Result<String> {
    Ok(succeed(
        "systemctl",
        &["show", "--property", property, "--value", unit],
    )?
    .trim()
    .to_owned())
}

fn main_pid() -> Result<u32> {
    unit_property(SERVICE, "MainPID")?
        .parse()
        .context("MainPID is a number")
}

fn wait_until(what: &str, timeout: Duration, mut done: impl FnMut() -> Result<bool>) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !done()? {
        ensure!(Instant::now() < deadline, "waited {timeout:?} for {what}");
        thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

fn is_active() -> Result<bool> {
    Ok(output("systemctl", &["is-active", "--quiet", SERVICE])?
        .status
        .success())
}

fn installed_version() -> Option<String> {
    let query = output(
        "dpkg-query",
        &[
            "--show",
            "--showformat=${db:Status-Status} ${Version}",
            "blocker",
        ],
    )
    .ok()?;
    String::from_utf8_lossy(&query.stdout)
        .strip_prefix("installed ")
        .map(str::to_owned)
}

/// The package installed with dpkg and the service enabled and started, as docs/GUIDE.md says.
fn service_running() -> Result<()> {
    if installed_version().is_none() {
        succeed("dpkg", &["--install", &package()])?;
    }
    succeed("systemctl", &["enable", "--now", SERVICE])?;
    wait_until("blocker.service to be active", STARTUP_TIMEOUT, is_active)
}

/// Whether running `path` was refused with EPERM; an error if it failed otherwise.
fn exec_refused(path: &Path) -> Result<bool> {
    match Command::new(path).status() {
        Ok(status) if status.success() => Ok(false),
        Ok(status) => bail!("{} ran and failed: {status}", path.display()),
        Err(error) if error.raw_os_error() == Some(libc::EPERM) => Ok(true),
        Err(error) => Err(error).with_context(|| format!("executing {}", path.display())),
    }
}

/// A fresh copy of the harmless binary at `WORK_DIR/name`.
fn copy_of_true(name: &str) -> Result<std::path::PathBuf> {
    fs::create_dir_all(WORK_DIR)?;
    let path = Path::new(WORK_DIR).join(name);
    match fs::remove_file(&path) {
        Err(error) if error.kind() != ErrorKind::NotFound => return Err(error.into()),
        _ => {}
    }
    fs::copy(harmless_binary(), &path)?;
    Ok(path)
}

/// Installs, with `blocker policy install` and no `--policy-dir`, a policy banning `banned`
/// (rule `ban`) and auditing `audited` (rule `watch`), named `test`.
fn install_policy_with_audit(banned: &[&Path], audited: &[&Path]) -> Result<String> {
    let source = Path::new(WORK_DIR).join(TEST_POLICY);
    fs::create_dir_all(WORK_DIR)?;
    fs::write(&source, deny_and_audit_policy(banned, audited))?;
    let source = source.to_str().expect("a UTF-8 path");
    succeed(INSTALLED_BLOCKER, &["policy", "install", source])
}

/// The service running with a policy banning a fresh copy of `true`, which is refused.
fn banned_by_the_service(name: &str) -> Result<std::path::PathBuf> {
    service_running()?;
    let banned = copy_of_true(name)?;
    let installed = install_policy_with_audit(&[&banned], &[])?;
    ensure!(
        installed.contains(&format!("installed {TEST_POLICY} in {POLICY_DIR}")),
        "the installed policy directory is the default: {installed}"
    );
    wait_until(
        &format!("{} to be refused", banned.display()),
        STARTUP_TIMEOUT,
        || exec_refused(&banned),
    )?;
    Ok(banned)
}

/// The journal's entries from blocker matching `matches` (`FIELD=value`), as JSON.
fn journal(matches: &[&str]) -> Result<Vec<Value>> {
    let mut args = vec!["--identifier=blocker", "--output=json", "--no-pager"];
    args.extend_from_slice(matches);
    succeed("journalctl", &args)?
        .lines()
        .map(|line| serde_json::from_str(line).context("journalctl prints JSON lines"))
        .collect()
}

/// Execs `path` over and over on another thread until the returned handle is stopped.
struct ExecLoop {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<Result<(u64, u64)>>,
}

impl ExecLoop {
    fn start(path: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let path = path.to_owned();
        let stopping = stop.clone();
        let thread = thread::spawn(move || {
            let (mut refused, mut ran) = (0, 0);
            while !stopping.load(Ordering::Relaxed) {
                if exec_refused(&path)? {
                    refused += 1;
                } else {
                    ran += 1;
                }
            }
            Ok((refused, ran))
        });
        Self { stop, thread }
    }

    /// How many execs were refused and how many ran.
    fn stop(self) -> Result<(u64, u64)> {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the exec loop does not panic")
    }
}

#[test]
fn a_banned_exec_is_refused_logged_in_the_journal_and_reported_alike() -> Result<()> {
    let banned = banned_by_the_service("banned-journal")?;
    let path = banned.to_str().expect("a UTF-8 path");

    let mut entries = Vec::new();
    wait_until("the denial in the journal", JOURNAL_TIMEOUT, || {
        entries = journal(&["BLOCKER_KIND=exec", &format!("BLOCKER_PATH={path}")])?;
        Ok(!entries.is_empty())
    })?;
    let entry = &entries[0];
    for (field, expected) in [
        ("SYSLOG_IDENTIFIER", "blocker"),
        ("BLOCKER_RULE", "ban"),
        ("BLOCKER_POLICY", "test"),
        ("BLOCKER_ACTION", "deny"),
        ("BLOCKER_ENFORCEMENT", "eperm"),
        ("BLOCKER_BACKEND", "lsm"),
        ("BLOCKER_OPERATION", "exec"),
    ] {
        ensure!(entry[field] == expected, "{field} in {entry}");
    }
    ensure!(
        entry["_SYSTEMD_UNIT"] == SERVICE,
        "sent by the service: {entry}"
    );

    let events = succeed(INSTALLED_BLOCKER, &["events", "--json", "--rule", "ban"])?;
    let denial = events
        .lines()
        .map(serde_json::from_str::<Value>)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .find(|event| event["path"] == path)
        .with_context(|| format!("blocker events shows no denial of {path}: {events}"))?;
    ensure!(
        denial["time"] == entry["BLOCKER_TIME"] && denial["action"] == "deny",
        "the events file and the journal hold the same denial: {denial} {entry}"
    );

    // The daemon publishes its counts with every refresh, not with every event.
    let mut status = Value::Null;
    wait_until(
        "blocker status to count the denial",
        JOURNAL_TIMEOUT,
        || {
            status = serde_json::from_str(&succeed(INSTALLED_BLOCKER, &["status", "--json"])?)?;
            Ok(status["events"]["delivered"]
                .as_u64()
                .is_some_and(|delivered| delivered >= 1))
        },
    )?;
    ensure!(status["running"] == true, "{status}");
    ensure!(
        status["pid"] == main_pid()?,
        "the service's daemon: {status}"
    );
    ensure!(status["backend"] == "lsm", "{status}");
    ensure!(status["pinned"] == true, "{status}");
    ensure!(status["policy_dir"] == POLICY_DIR, "{status}");
    ensure!(status["control_socket"] == CONTROL_SOCKET, "{status}");
    ensure!(
        status["policies"]
            .as_array()
            .is_some_and(|policies| policies.iter().any(|policy| policy["name"] == "test")),
        "{status}"
    );
    Ok(())
}

#[test]
fn reload_applies_a_policy_change_and_restart_lets_nothing_through() -> Result<()> {
    let banned = banned_by_the_service("banned-reload")?;
    let pid = main_pid()?;
    // The `reloaded` records of this daemon, as (rules, entries).
    let reloads = || -> Result<Vec<(u64, u64)>> {
        journal(&["BLOCKER_KIND=reloaded", &format!("_PID={pid}")])?
            .iter()
            .map(|entry| {
                let number = |field: &str| {
                    entry[field]
                        .as_str()
                        .and_then(|text| text.parse().ok())
                        .with_context(|| format!("{field} in {entry}"))
                };
                Ok((number("BLOCKER_RULES")?, number("BLOCKER_ENTRIES")?))
            })
            .collect()
    };
    let status: Value = serde_json::from_str(&fs::read_to_string(STATUS_FILE)?)?;
    let rules = status["rules"].as_u64().context("rules in the status")?;

    // One more rule, naming a file that does not exist yet: saving the policy reloads it.
    let late = Path::new(WORK_DIR).join("banned-late");
    let _ = fs::remove_file(&late);
    let audited = copy_of_true("audited-reload")?;
    install_policy_with_audit(&[&banned, &late], &[&audited])?;
    let mut entries = 0;
    wait_until("the reload of the saved policy", JOURNAL_TIMEOUT, || {
        Ok(match reloads()?.iter().find(|(r, _)| *r == rules + 1) {
            Some(&(_, e)) => {
                entries = e;
                true
            }
            None => false,
        })
    })?;
    // The file appears; only a reload (SIGHUP, from `systemctl reload`) reads the policy again.
    copy_of_true("banned-late")?;
    succeed("systemctl", &["reload", SERVICE])?;
    wait_until("a reload banning the new file", JOURNAL_TIMEOUT, || {
        Ok(reloads()?.contains(&(rules + 1, entries + 1)))
    })?;
    ensure!(
        exec_refused(&late)?,
        "the reloaded policy bans {}",
        late.display()
    );
    ensure!(main_pid()? == pid, "a reload keeps the daemon");

    let execs = ExecLoop::start(&banned);
    succeed("systemctl", &["restart", SERVICE])?;
    wait_until("the restarted daemon", STARTUP_TIMEOUT, || {
        Ok(is_active()? && main_pid()? != pid)
    })?;
    let (refused, ran) = execs.stop()?;
    ensure!(
        ran == 0,
        "the banned file ran {ran} times across a restart ({refused} refused)"
    );
    ensure!(refused > 0, "the loop ran");
    ensure!(
        exec_refused(&late)?,
        "the restarted daemon enforces the policy"
    );
    Ok(())
}

/// Whether each of `mount_points` is mounted read-only in the mount namespace of `pid`, as its
/// topmost mount says (`/proc/PID/mountinfo`).
fn read_only_mounts(pid: u32, mount_points: &[&str]) -> Result<Vec<bool>> {
    let mountinfo = fs::read_to_string(format!("/proc/{pid}/mountinfo"))?;
    mount_points
        .iter()
        .map(|mount_point| {
            // Fields: id, parent, device, root, mount point, mount options, ...
            let options = mountinfo
                .lines()
                .filter_map(|line| {
                    let fields: Vec<&str> = line.split(' ').collect();
                    (fields.get(4) == Some(mount_point)).then(|| fields[5])
                })
                .next_back()
                .with_context(|| format!("nothing is mounted at {mount_point}:\n{mountinfo}"))?;
            Ok(options.split(',').any(|option| option == "ro"))
        })
        .collect()
}

#[test]
fn the_unit_verifies_and_its_sandbox_is_read_only_but_for_bpffs_and_its_directories() -> Result<()>
{
    service_running()?;
    let verified = output("systemd-analyze", &["verify", UNIT])?;
    ensure!(
        verified.status.success() && verified.stderr.is_empty(),
        "systemd-analyze verify {UNIT}: {verified:?}"
    );
    let mount_points = [
        "/",
        "/sys",
        "/sys/fs/bpf",
        "/run/blocker",
        "/var/cache/blocker",
        "/var/log/blocker",
    ];
    let read_only = read_only_mounts(main_pid()?, &mount_points)?;
    ensure!(
        read_only == [true, true, false, false, false, false],
        "read-only: {:?}",
        mount_points.iter().zip(&read_only).collect::<Vec<_>>()
    );
    ensure!(
        Path::new(PIN_DIR).is_dir(),
        "the daemon pinned in the host's bpffs"
    );
    Ok(())
}

/// The package enables the notification agent for every user's graphical session, and the
/// service's daemon serves agents.
#[test]
fn the_notification_agent_is_enabled_for_every_user() -> Result<()> {
    service_running()?;
    let enabled = succeed(
        "systemctl",
        &["--global", "is-enabled", "blocker-notify.service"],
    )?;
    ensure!(enabled.trim() == "enabled", "{enabled}");
    ensure!(
        Path::new("/etc/systemd/user/graphical-session.target.wants/blocker-notify.service")
            .exists(),
        "not wanted by graphical-session.target"
    );
    wait_until("the notification socket", STARTUP_TIMEOUT, || {
        Ok(Path::new("/run/blocker/notify.sock").exists())
    })
}

#[test]
fn the_service_writes_its_metrics_where_node_exporter_reads_them() -> Result<()> {
    // Made before the service starts: the unit may write it only if it exists then.
    fs::create_dir_all(TEXTFILE_DIR)?;
    service_running()?;
    succeed("systemctl", &["restart", SERVICE])?;
    wait_until("blocker.service to be active", STARTUP_TIMEOUT, is_active)?;
    banned_by_the_service("banned-metrics")?;
    let textfile = Path::new(TEXTFILE_DIR).join("blocker.prom");
    let mut text = String::new();
    wait_until(
        "the denial in the metrics textfile",
        JOURNAL_TIMEOUT,
        || {
            text = fs::read_to_string(&textfile).unwrap_or_default();
            Ok(text.lines().any(|line| {
            line.strip_prefix(
                r#"blocker_decisions_total{action="deny",operation="exec",rule="ban",policy="test"} "#,
            )
            .and_then(|count| count.parse::<u64>().ok())
            .is_some_and(|count| count >= 1)
        }))
        },
    )?;
    ensure!(
        text.lines()
            .any(|line| line == r#"blocker_backend_info{backend="lsm"} 1"#),
        "{text}"
    );
    let mode = fs::metadata(&textfile)?.permissions();
    ensure!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777 == 0o644,
        "{mode:?}"
    );
    // A removed blocker leaves no metrics for node_exporter to go on exporting.
    succeed("apt-get", &["remove", "--yes", "blocker"])?;
    ensure!(!textfile.exists(), "the textfile is left after a removal");
    Ok(())
}

#[test]
fn an_upgrade_under_an_exec_loop_lets_nothing_through() -> Result<()> {
    let banned = banned_by_the_service("banned-upgrade")?;
    let pid = main_pid()?;
    let version = installed_version().context("installed")?;

    // The same package with a higher version, as a newer build would be.
    let unpacked = Path::new(WORK_DIR).join("upgrade");
    let _ = fs::remove_dir_all(&unpacked);
    let unpacked_str = unpacked.to_str().expect("a UTF-8 path");
    succeed("dpkg-deb", &["--raw-extract", &package(), unpacked_str])?;
    let control_file = unpacked.join("DEBIAN/control");
    let newer = format!("{version}+upgrade1");
    let control = fs::read_to_string(&control_file)?.replace(
        &format!("\nVersion: {version}\n"),
        &format!("\nVersion: {newer}\n"),
    );
    fs::write(&control_file, control)?;
    let upgrade = Path::new(WORK_DIR).join("blocker-upgrade.deb");
    let upgrade = upgrade.to_str().expect("a UTF-8 path");
    succeed(
        "dpkg-deb",
        &["--root-owner-group", "--build", unpacked_str, upgrade],
    )?;

    let execs = ExecLoop::start(&banned);
    let installed = succeed("dpkg", &["--install", upgrade]);
    let (refused, ran) = execs.stop()?;
    installed?;
    ensure!(
        ran == 0,
        "the banned file ran {ran} times during the upgrade ({refused} refused)"
    );
    ensure!(refused > 0, "the loop ran");
    ensure!(installed_version().as_deref() == Some(newer.as_str()));
    wait_until("the upgraded service", STARTUP_TIMEOUT, || {
        Ok(is_active()? && main_pid()? != pid)
    })?;
    ensure!(exec_refused(&banned)?, "the new daemon enforces the policy");
    Ok(())
}

#[test]
fn remove_then_purge_leave_what_the_readme_says() -> Result<()> {
    let banned = banned_by_the_service("banned-remove")?;
    let added_policy = Path::new(POLICY_DIR).join(TEST_POLICY);

    succeed("apt-get", &["remove", "--yes", "blocker"])?;
    ensure!(installed_version().is_none(), "removed");
    for gone in [INSTALLED_BLOCKER, UNIT, PIN_DIR] {
        ensure!(!Path::new(gone).exists(), "{gone} is left after a removal");
    }
    ensure!(!is_active()?, "the service is stopped");
    ensure!(
        !exec_refused(&banned)?,
        "nothing of blocker stays in the kernel"
    );
    for kept in [SHIPPED_POLICY, LOG_DIR, CACHE_DIR, STATUS_FILE] {
        ensure!(Path::new(kept).exists(), "{kept} is kept until a purge");
    }
    ensure!(added_policy.exists(), "an administrator's policy stays");

    succeed("apt-get", &["purge", "--yes", "blocker"])?;
    for gone in [SHIPPED_POLICY, CACHE_DIR, STATUS_FILE] {
        ensure!(!Path::new(gone).exists(), "{gone} is left after a purge");
    }
    ensure!(
        Path::new(LOG_DIR).is_dir(),
        "the denial log is evidence, kept after a purge"
    );
    ensure!(
        added_policy.exists(),
        "a policy the administrator added is theirs, kept after a purge"
    );
    Ok(())
}

/// Run twice by the VM's runner: before systemd's soft-reboot (userspace starts over, the
/// kernel stays) it readies the service and reboots; after, it checks the order systemd
/// started things in.
#[test]
fn the_service_is_up_before_logins_after_a_reboot() -> Result<()> {
    let soft_reboots: u32 = succeed(
        "systemctl",
        &["show", "--property", "SoftRebootsCount", "--value"],
    )?
    .trim()
    .parse()?;
    if soft_reboots == 0 {
        banned_by_the_service("banned-reboot")?;
        fs::create_dir_all(Path::new(PID_BEFORE_REBOOT).parent().expect("a directory"))?;
        fs::write(PID_BEFORE_REBOOT, main_pid()?.to_string())?;
        succeed("systemctl", &["soft-reboot"])?;
        thread::sleep(REBOOT_TIMEOUT);
        bail!("no reboot within {REBOOT_TIMEOUT:?}");
    }

    wait_until("blocker.service to be active", STARTUP_TIMEOUT, is_active)?;
    let before: u32 = fs::read_to_string(PID_BEFORE_REBOOT)?.trim().parse()?;
    ensure!(main_pid()? != before, "a new daemon after the reboot");
    let active_since = |unit: &str| -> Result<u64> {
        let since: u64 = unit_property(unit, "ActiveEnterTimestampMonotonic")?.parse()?;
        ensure!(since > 0, "{unit} has not started");
        Ok(since)
    };
    let blocker_up = active_since(SERVICE)?;
    for login in [
        "systemd-user-sessions.service",
        "serial-getty@ttyS0.service",
    ] {
        let login_up = active_since(login)?;
        ensure!(
            blocker_up <= login_up,
            "{SERVICE} was up at {blocker_up} µs, after {login} at {login_up} µs"
        );
    }
    ensure!(
        exec_refused(&Path::new(WORK_DIR).join("banned-reboot"))?,
        "enforcing after the reboot"
    );
    Ok(())
}

/// `blocker policy` and `blocker stop` ask the service's daemon over its control socket, and it
/// does the work inside its sandbox, where the policy directory is read-only.
#[test]
fn blocker_policy_and_stop_go_through_the_daemons_socket() -> Result<()> {
    service_running()?;
    let pid = main_pid()?;
    let socket = fs::symlink_metadata(CONTROL_SOCKET)?;
    ensure!(
        std::os::unix::fs::FileTypeExt::is_socket(&socket.file_type())
            && std::os::unix::fs::PermissionsExt::mode(&socket.permissions()) & 0o777 == 0o600,
        "{socket:?}"
    );

    let banned = banned_by_the_service("banned-socket")?;
    ensure!(main_pid()? == pid, "the same daemon");
    wait_until("the policy change in the journal", JOURNAL_TIMEOUT, || {
        Ok(journal(&[
            "BLOCKER_KIND=policy_changed",
            &format!("_PID={pid}"),
            &format!("BLOCKER_INSTALLED={TEST_POLICY}"),
        ])?
        .iter()
        .any(|entry| entry["BLOCKER_UID"] == "0"))
    })?;

    let stopped = succeed(INSTALLED_BLOCKER, &["stop"])?;
    ensure!(
        stopped == format!("stopped the blocker daemon (pid {pid})\n"),
        "{stopped}"
    );
    let asked = |entry: &Value| {
        entry["MESSAGE"]
            .as_str()
            .is_some_and(|message| message.contains("asked over the control socket"))
    };
    wait_until("the stop in the journal", JOURNAL_TIMEOUT, || {
        Ok(journal(&[&format!("_PID={pid}")])?.iter().any(asked))
    })?;
    // Restart=always: the service manager starts the next daemon, which protects and enforces.
    wait_until(
        "the daemon restarted after the stop",
        STARTUP_TIMEOUT,
        || Ok(is_active()? && main_pid()? != pid),
    )
    .with_context(service_log)?;
    ensure!(
        exec_refused(&banned)?,
        "the next daemon enforces the policy"
    );
    Ok(())
}

/// What systemd says of the service, and its last log lines: why it did not start.
fn service_log() -> String {
    let text = |program: &str, args: &[&str]| {
        output(program, args).map_or_else(
            |error| format!("{error:#}"),
            |output| String::from_utf8_lossy(&output.stdout).into_owned(),
        )
    };
    format!(
        "{}\n{}",
        text("systemctl", &["status", "--no-pager", "--full", SERVICE]),
        text(
            "journalctl",
            &["--boot", "--no-pager", "--lines=60", "--unit", SERVICE]
        )
    )
}

/// `systemctl kill -s STOP` has pid 1 send SIGSTOP, which would leave the daemon there doing
/// nothing. Pid 1 may stop and restart the service, but not stop it in place: refused, and
/// recorded.
#[test]
fn the_service_manager_cannot_stop_the_daemon_in_place() -> Result<()> {
    service_running()?;
    let pid = main_pid()?;
    let _ = output("systemctl", &["kill", "--signal=SIGSTOP", SERVICE])?;
    let refused = |record: &Value| {
        record["MESSAGE"].as_str().is_some_and(|message| {
            message.contains("refused tamper attempt: signal (SIGSTOP (19))")
        })
    };
    wait_until(
        "the refused SIGSTOP in the journal",
        STARTUP_TIMEOUT,
        || Ok(journal(&[])?.iter().any(refused)),
    )?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.split_whitespace().next())
        .unwrap_or_default();
    ensure!(state != "T", "the daemon was stopped: {stat}");
    ensure!(is_active()?, "the service is still active");
    Ok(())
}

/// The control files of the service's cgroup end, freeze or starve the daemon without a signal.
/// Root writing them is refused and recorded; pid 1 applies the unit's limits (`systemctl
/// set-property`, again at `daemon-reload`) and may, but `systemctl freeze` is refused like
/// SIGSTOP.
#[test]
fn the_services_cgroup_cannot_kill_freeze_or_starve_it() -> Result<()> {
    service_running()?;
    let pid = main_pid()?;
    let cgroup = Path::new("/sys/fs/cgroup/system.slice").join(SERVICE);
    let refused_write = |file: &str| {
        let needle = format!(
            "refused tamper attempt: file_change (open for writing) on {}",
            cgroup.join(file).display()
        );
        move |record: &Value| {
            record["MESSAGE"]
                .as_str()
                .is_some_and(|message| message.contains(&needle))
        }
    };
    for (file, value) in [
        ("cgroup.kill", "1"),
        ("cgroup.freeze", "1"),
        ("memory.max", "1M"),
        ("pids.max", "1"),
        ("../cgroup.freeze", "1"),
    ] {
        match fs::write(cgroup.join(file), value) {
            Err(error) if error.raw_os_error() == Some(libc::EPERM) => {}
            other => bail!("writing {value} to {file}: {other:?}"),
        }
    }
    wait_until(
        "the refused cgroup.kill in the journal",
        JOURNAL_TIMEOUT,
        || Ok(journal(&[])?.iter().any(refused_write("cgroup.kill"))),
    )?;

    let freeze = output("systemctl", &["freeze", SERVICE])?;
    ensure!(!freeze.status.success(), "systemctl freeze: {freeze:?}");
    wait_until(
        "pid 1's refused cgroup.freeze in the journal",
        JOURNAL_TIMEOUT,
        || {
            Ok(journal(&[])?.iter().any(|record| {
                refused_write("cgroup.freeze")(record)
                    && record["MESSAGE"]
                        .as_str()
                        .is_some_and(|message| message.contains("by pid 1 "))
            }))
        },
    )?;
    let events = fs::read_to_string(cgroup.join("cgroup.events"))?;
    ensure!(events.contains("frozen 0"), "{events}");

    let before = journal(&[])?.len();
    succeed(
        "systemctl",
        &["set-property", "--runtime", SERVICE, "TasksMax=4321"],
    )?;
    ensure!(fs::read_to_string(cgroup.join("pids.max"))?.trim() == "4321");
    succeed("systemctl", &["daemon-reload"])?;
    succeed(
        "systemctl",
        &["set-property", "--runtime", SERVICE, "TasksMax=infinity"],
    )?;
    thread::sleep(Duration::from_secs(2));
    let tampering: Vec<_> = journal(&[])?
        .into_iter()
        .skip(before)
        .filter(|record| {
            record["MESSAGE"]
                .as_str()
                .is_some_and(|message| message.contains("refused tamper attempt"))
        })
        .collect();
    ensure!(tampering.is_empty(), "pid 1 applying limits: {tampering:?}");
    ensure!(
        main_pid()? == pid && is_active()?,
        "the daemon is untouched"
    );
    ensure!(
        exec_refused(&banned_by_the_service("banned-cgroup")?)?,
        "still enforcing"
    );
    Ok(())
}

/// Pid 1 may kill the daemon (`systemctl kill -s KILL`, also how `cgroup.kill` and the OOM
/// killer end it): systemd restarts it, the new daemon adopts the pins, though the old one never
/// turned protection off, and reports that the one before it went silent.
#[test]
fn a_daemon_killed_by_pid_1_is_followed_and_reported_by_the_next() -> Result<()> {
    service_running()?;
    let pid = main_pid()?;
    succeed("systemctl", &["kill", "--signal=SIGKILL", SERVICE])?;
    wait_until("a new daemon", STARTUP_TIMEOUT, || {
        Ok(is_active()? && main_pid()? != pid)
    })?;
    let lost = |record: &Value| {
        record["MESSAGE"].as_str().is_some_and(|message| {
            message.contains(&format!(
                "the daemon before this one (pid {pid}) went silent"
            ))
        })
    };
    wait_until("the lost daemon in the journal", JOURNAL_TIMEOUT, || {
        Ok(journal(&[])?.iter().any(lost))
    })?;
    let adopted = journal(&["BLOCKER_KIND=started"])?;
    ensure!(
        adopted
            .last()
            .is_some_and(|record| record["BLOCKER_ADOPTED"] == "true"),
        "the new daemon adopted the pins: {adopted:?}"
    );
    ensure!(
        exec_refused(&banned_by_the_service("banned-after-kill")?)?,
        "the new daemon enforces and takes policy changes"
    );
    Ok(())
}
