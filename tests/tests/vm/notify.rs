//! How a refused person is told, under the LSM backend in the systemd VM (Debian 13's userspace
//! and kernel): the package's service refuses a test user's exec with EPERM, and the user's
//! `blocker notify` in a desktop session of theirs (Xvfb, a session bus, dunst) shows it; the
//! service writes the line on the refused shell's terminal.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use blocker_integration_tests::{
    desktop::{check_folded, Desktop, Terminal, TestUser, DESKTOP_TIMEOUT},
    harmless_binary, STARTUP_TIMEOUT,
};

/// Put into the VM by xtask (xtask/src/systemd_vm.rs).
const DEFAULT_PACKAGE: &str = "/root/blocker.deb";
const INSTALLED_BLOCKER: &str = "/usr/bin/blocker";
const NOTIFY_SOCKET: &str = "/run/blocker/notify.sock";
const WORK_DIR: &str = "/opt/blocker-vm-notify";
const MESSAGE: &str = "Messaging apps are not allowed on this device (policy IT-12).";

fn succeed(command: &mut Command) -> Result<String> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(output.status.success(), "{command:?}: {output:?}");
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// Whether `command` was refused with EPERM; an error if it ran or failed otherwise.
fn refused(command: &mut Command) -> Result<bool> {
    match command.status() {
        Ok(status) => bail!("{command:?} ran: {status}"),
        Err(error) if error.raw_os_error() == Some(libc::EPERM) => Ok(true),
        Err(error) => Err(error).with_context(|| format!("running {command:?}")),
    }
}

/// The package installed and its service running, with a policy (installed through the
/// daemon) banning fresh copies of `true` named `names`, with the test's words; the copies.
fn service_banning(names: &[&str]) -> Result<Vec<PathBuf>> {
    if !Path::new(INSTALLED_BLOCKER).exists() {
        let package = std::env::var("BLOCKER_PACKAGE").unwrap_or(DEFAULT_PACKAGE.to_owned());
        succeed(Command::new("dpkg").args(["--install", &package]))?;
    }
    succeed(Command::new("systemctl").args(["enable", "--now", "blocker.service"]))?;
    fs::create_dir_all(WORK_DIR)?;
    let copies: Vec<PathBuf> = names
        .iter()
        .map(|name| {
            let path = Path::new(WORK_DIR).join(name);
            let _ = fs::remove_file(&path);
            fs::copy(harmless_binary(), &path)?;
            Ok(path)
        })
        .collect::<Result<_>>()?;
    let paths: Vec<String> = copies
        .iter()
        .map(|p| format!("{:?}", p.display().to_string()))
        .collect();
    let policy = Path::new(WORK_DIR).join("vm-notify.toml");
    fs::write(
        &policy,
        format!(
            "name = \"vm-notify\"\nnotify_terminal = true\n[[rule]]\nid = \"chat\"\n\
             reason = \"messaging app\"\nmessage = \"{MESSAGE}\"\n\
             url = \"https://wiki.example/blocked/{{rule}}\"\npaths = [{}]\n",
            paths.join(", ")
        ),
    )?;
    let deadline = Instant::now() + STARTUP_TIMEOUT;
    // The service may still be starting: its control socket takes the policy once it is up.
    while !Command::new(INSTALLED_BLOCKER)
        .arg("policy")
        .arg("install")
        .arg(&policy)
        .output()
        .is_ok_and(|output| output.status.success())
    {
        ensure!(Instant::now() < deadline, "the policy was not installed");
        std::thread::sleep(Duration::from_millis(500));
    }
    while !refused(&mut Command::new(&copies[0])).unwrap_or(false) {
        ensure!(Instant::now() < deadline, "not refused");
        std::thread::sleep(Duration::from_millis(100));
    }
    Ok(copies)
}

fn refused_as(user: &TestUser, program: &Path) -> Result<()> {
    ensure!(
        refused(&mut user.command(program))?,
        "{} ran",
        program.display()
    );
    Ok(())
}

#[test]
fn a_refusal_is_told_once_to_its_own_user_and_a_burst_is_folded() -> Result<()> {
    let copies = service_banning(&["wechat", "marker", "burst"])?;
    let (wechat, marker, burst) = (&copies[0], &copies[1], &copies[2]);
    let user = TestUser::create("blocker-notify-vm", Path::new("/home/blocker-notify-vm"))?;
    let mut desktop = Desktop::start(&user, Path::new("/run/blocker-vm-desktop"))?;
    desktop.start_agent(
        &user,
        Path::new(INSTALLED_BLOCKER),
        Path::new(NOTIFY_SOCKET),
    )?;

    refused_as(&user, wechat)?;
    let calls = desktop.wait_for_notify_calls(1, DESKTOP_TIMEOUT)?;
    calls[0].check_told("wechat", MESSAGE)?;

    // Root's refusal is not the user's business; the marker's, after it, shows the daemon got
    // that far.
    ensure!(refused(&mut Command::new(marker))?);
    refused_as(&user, marker)?;
    let calls = desktop.wait_for_notify_calls(2, DESKTOP_TIMEOUT)?;
    ensure!(
        calls.len() == 2,
        "root's refusal was told to the user: {calls:#?}"
    );
    ensure!(
        calls[1].summary == "marker is blocked on this device",
        "{calls:#?}"
    );

    for _ in 0..100 {
        refused_as(&user, burst)?;
    }
    let calls = desktop.wait_for_notify_calls(4, DESKTOP_TIMEOUT * 2)?;
    check_folded(&calls, "burst")?;
    let shown = desktop.dunst_count("displayed")? + desktop.dunst_count("waiting")?;
    ensure!(
        shown == 3,
        "dunst shows {shown} notifications, not one per program"
    );
    Ok(())
}

#[test]
fn the_service_writes_the_line_on_the_refused_shells_terminal_only() -> Result<()> {
    let copies = service_banning(&["wechat-terminal"])?;
    let user = TestUser::create("blocker-notify-tty", Path::new("/home/blocker-notify-tty"))?;
    let bystander = Terminal::start(&user, "sleep 120")?;
    let go = Path::new(WORK_DIR).join("go");
    let _ = fs::remove_file(&go);
    let refused_shell = Terminal::start(
        &user,
        &format!(
            "while [ ! -e {go} ]; do sleep 0.1; done; {program}; sleep 120",
            go = go.display(),
            program = copies[0].display()
        ),
    )?;
    fs::write(&go, "")?;
    let expected = format!(
        "blocker: {} is blocked on this device: {MESSAGE}",
        copies[0].display()
    );
    let shown = refused_shell
        .wait_for(&expected, DESKTOP_TIMEOUT)
        .with_context(|| {
            let journal = Command::new("journalctl")
                .args(["--unit=blocker.service", "--no-pager", "--lines=20"])
                .output()
                .map(|output| String::from_utf8_lossy(&output.stdout).into_owned())
                .unwrap_or_default();
            format!("the service's log ends:\n{journal}")
        })?;
    ensure!(shown.contains("Operation not permitted"), "{shown:?}");
    ensure!(shown.matches(&expected).count() == 1, "{shown:?}");
    ensure!(
        bystander.output().is_empty(),
        "another terminal of the same user got {:?}",
        bystander.output()
    );
    Ok(())
}
