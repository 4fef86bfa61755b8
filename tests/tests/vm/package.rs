//! The Debian package on Debian's kernel (run inside the VM by `cargo xtask test`): installed
//! with dpkg as an administrator would, its files where docs/GUIDE.md says, the installed blocker
//! enforcing the shipped policy with `blocker status` reporting it, then not running, and the
//! package purged.

use std::{
    fs,
    os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt},
    path::Path,
    process::Command,
};

use anyhow::{ensure, Context, Result};
use blocker_integration_tests::Daemon;
use serde_json::{json, Value};

/// Built by `cargo xtask package`, put into the VM by xtask.
const PACKAGE: &str = "/packages/blocker.deb";
const INSTALLED_BLOCKER: &str = "/usr/bin/blocker";
const UNIT: &str = "/lib/systemd/system/blocker.service";
const SYNC_UNIT: &str = "/lib/systemd/system/blocker-sync.service";
const SYNC_CONFIG: &str = "/etc/blocker/sync.toml";
const NOTIFY_UNIT: &str = "/usr/lib/systemd/user/blocker-notify.service";
const AUTOSTART: &str = "/etc/xdg/autostart/blocker-notify.desktop";
const NOTIFY_SOCKET: &str = "/run/blocker/notify.sock";
const POLICY_DIR: &str = "/etc/blocker/policies";
const SHIPPED_POLICY: &str = "/etc/blocker/policies/government-devices.toml";
const LOG_DIR: &str = "/var/log/blocker";
const STATUS_FILE: &str = "/run/blocker/status.json";

/// The installed package, purged when dropped: the VM's other tests install packages with
/// busybox's dpkg, which refuses to while a package's dependencies are unknown to it.
struct Installed {
    purged: bool,
}

impl Installed {
    fn purge(mut self) -> Result<()> {
        self.purged = true;
        let output = purge_command().output().context("running dpkg")?;
        ensure!(output.status.success(), "dpkg --purge blocker: {output:?}");
        Ok(())
    }
}

impl Drop for Installed {
    fn drop(&mut self) {
        if !self.purged {
            let _ = purge_command().output();
        }
    }
}

fn purge_command() -> Command {
    let mut dpkg = Command::new("dpkg");
    dpkg.args(["--purge", "--force-depends", "blocker"]);
    dpkg
}

fn install_package() -> Result<Installed> {
    ensure!(
        !Path::new(INSTALLED_BLOCKER).exists(),
        "only the package may put blocker into /usr/bin"
    );
    fs::create_dir_all("/var/lib/dpkg/info")?;
    fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open("/var/lib/dpkg/status")?;
    // The VM's libraries are copied from the host, without dpkg's record of libc6 or libgcc-s1.
    let output = Command::new("dpkg")
        .args(["--install", "--force-depends", PACKAGE])
        .output()
        .context("running dpkg")?;
    ensure!(
        output.status.success(),
        "dpkg --install {PACKAGE}: {output:?}"
    );
    Ok(Installed { purged: false })
}

/// `path` is owned by root, of the kind and with the permissions given.
fn expect_installed(path: &str, directory: bool, mode: u32) -> Result<()> {
    let metadata = fs::symlink_metadata(path).with_context(|| format!("{path} is missing"))?;
    ensure!(
        metadata.is_dir() == directory && (directory || metadata.is_file()),
        "{path}: {:?}",
        metadata.file_type()
    );
    ensure!(
        metadata.permissions().mode() & 0o7777 == mode,
        "{path} has mode {:o}, not {mode:o}",
        metadata.permissions().mode() & 0o7777
    );
    ensure!(
        (metadata.uid(), metadata.gid()) == (0, 0),
        "{path} is owned by {}:{}",
        metadata.uid(),
        metadata.gid()
    );
    Ok(())
}

/// Exit code and standard output of the installed `blocker ARGS`.
fn installed_blocker(args: &[&str]) -> Result<(i32, String)> {
    let output = Command::new(INSTALLED_BLOCKER)
        .args(args)
        .output()
        .with_context(|| format!("running {INSTALLED_BLOCKER} {}", args.join(" ")))?;
    let code = output.status.code().context("killed by a signal")?;
    Ok((code, String::from_utf8_lossy(&output.stdout).into_owned()))
}

fn status_json() -> Result<(i32, Value)> {
    let (code, stdout) = installed_blocker(&["status", "--json"])?;
    let report = serde_json::from_str(&stdout)
        .with_context(|| format!("blocker status --json printed no JSON: {stdout}"))?;
    Ok((code, report))
}

#[test]
fn the_package_installs_enforces_reports_its_status_and_purges() -> Result<()> {
    let installed = install_package()?;
    expect_installed(INSTALLED_BLOCKER, false, 0o755)?;
    expect_installed(UNIT, false, 0o644)?;
    expect_installed(SHIPPED_POLICY, false, 0o644)?;
    expect_installed(SYNC_UNIT, false, 0o644)?;
    expect_installed(SYNC_CONFIG, false, 0o644)?;
    expect_installed(NOTIFY_UNIT, false, 0o644)?;
    expect_installed(AUTOSTART, false, 0o644)?;
    ensure!(
        fs::read_to_string(AUTOSTART)?.contains("\nExec=/usr/bin/blocker notify\n")
            && fs::read_to_string(NOTIFY_UNIT)?.contains("\nExecStart=/usr/bin/blocker notify\n"),
        "the agent is started as `blocker notify`"
    );
    expect_installed("/usr/share/doc/blocker/README.md", false, 0o644)?;
    expect_installed(
        "/usr/share/doc/blocker/examples/every-field.toml",
        false,
        0o644,
    )?;
    // Made by the postinst script: denials are for root's eyes.
    expect_installed(LOG_DIR, true, 0o700)?;
    let unit = fs::read_to_string(UNIT)?;
    ensure!(
        unit.lines()
            .any(|line| line.starts_with("ExecStart=/usr/bin/blocker run ")
                && line.ends_with(" --policy-dir /etc/blocker/policies")),
        "{unit}"
    );

    let (code, version) = installed_blocker(&["--version"])?;
    ensure!(code == 0, "{version}");
    let version = version
        .trim()
        .strip_prefix("blocker ")
        .with_context(|| format!("blocker --version: {version}"))?
        .to_owned();
    let query = Command::new("dpkg-query")
        .args([
            "--show",
            "--showformat=${Status} ${Version}\n${Conffiles}\n",
            "blocker",
        ])
        .output()?;
    let query = String::from_utf8_lossy(&query.stdout);
    let mut lines = query.lines();
    ensure!(
        lines.next() == Some(&format!("install ok installed {version}")),
        "{query}"
    );
    let conffiles: Vec<&str> = lines
        .filter_map(|line| line.split_whitespace().next())
        .collect();
    ensure!(
        conffiles.contains(&SHIPPED_POLICY)
            && conffiles.contains(&SYNC_CONFIG)
            && conffiles.contains(&AUTOSTART),
        "the shipped policy, the sync configuration and the autostart entry are conffiles: \
         {query}"
    );
    let (code, checked) = installed_blocker(&["check", POLICY_DIR])?;
    ensure!(code == 0, "{checked}");

    // What the unit runs, less the flags for pinning and protection; there is no systemd here.
    let (daemon, started) =
        Daemon::start_program(Path::new(INSTALLED_BLOCKER), Path::new(POLICY_DIR), &[])?;
    ensure!(started["backend"] == "lsm", "{started}");
    ensure!(
        started["policies"] == json!(["government-devices"]),
        "{started}"
    );

    let (code, text) = installed_blocker(&["status"])?;
    ensure!(code == 0, "running: exit {code}: {text}");
    ensure!(
        text.starts_with(&format!(
            "blocker      running: pid {}, version {version}, up ",
            daemon.pid()
        )),
        "{text}"
    );
    ensure!(text.contains("\nbackend      lsm: "), "{text}");
    ensure!(
        text.contains(&format!(
            "\npolicies     government-devices (enforce) {SHIPPED_POLICY}\n"
        )),
        "{text}"
    );

    let (code, report) = status_json()?;
    ensure!(code == 0, "{report}");
    ensure!(report["running"] == true, "{report}");
    ensure!(report["pid"] == daemon.pid(), "{report}");
    ensure!(report["backend"] == "lsm", "{report}");
    ensure!(
        report["uptime_seconds"]
            .as_f64()
            .is_some_and(|uptime| uptime > 0.0),
        "{report}"
    );
    ensure!(
        report["policies"]
            == json!([{"name": "government-devices", "file": SHIPPED_POLICY, "mode": "enforce"}]),
        "{report}"
    );
    ensure!(report["rules"] == started["rules"], "{report}");
    ensure!(
        report["kernel"]["lsms"]
            .as_array()
            .is_some_and(|lsms| lsms.contains(&json!("bpf"))),
        "{report}"
    );
    ensure!(report["kernel"]["btf"] == true, "{report}");
    ensure!(report["status_file"] == STATUS_FILE, "{report}");
    ensure!(
        fs::metadata(STATUS_FILE)?.permissions().mode() & 0o777 == 0o644,
        "anyone may read the status"
    );
    let socket = fs::symlink_metadata(NOTIFY_SOCKET)?;
    ensure!(
        socket.file_type().is_socket() && socket.permissions().mode() & 0o777 == 0o666,
        "every user's agent may connect to {NOTIFY_SOCKET}: {socket:?}"
    );

    let (exit, _, _) = daemon.stop()?;
    ensure!(exit.success(), "daemon exit: {exit}");
    let (code, text) = installed_blocker(&["status"])?;
    ensure!(code == 1, "stopped: exit {code}: {text}");
    ensure!(
        text.starts_with("blocker      not running: it stopped at "),
        "{text}"
    );
    ensure!(
        text.contains("\nin kernel    nothing pinned under /sys/fs/bpf/blocker\n"),
        "{text}"
    );
    let (code, report) = status_json()?;
    ensure!(code == 1 && report["running"] == false, "{report}");

    installed.purge()?;
    for gone in [
        INSTALLED_BLOCKER,
        UNIT,
        SYNC_UNIT,
        NOTIFY_UNIT,
        AUTOSTART,
        SHIPPED_POLICY,
        SYNC_CONFIG,
        STATUS_FILE,
    ] {
        ensure!(!Path::new(gone).exists(), "{gone} is left after a purge");
    }
    ensure!(
        Path::new(LOG_DIR).is_dir(),
        "the denial log is evidence, kept after a purge"
    );
    Ok(())
}
