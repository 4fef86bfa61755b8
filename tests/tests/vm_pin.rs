//! Enforcement that outlives the daemon (run inside the VM by `cargo xtask test`, where pinning
//! is safe): `blocker run --pin` leaves its programs pinned, a `kill -9` of the daemon opens no
//! door, the next daemon adopts the pins and delivers what happened meanwhile, and `blocker
//! unload` removes them.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{ensure, Context, Result};
use blocker_integration_tests::{
    blocker_bin, deny_and_audit_policy, run_as_launcher, Daemon, Sandbox,
};

const PIN_DIR: &str = "/sys/fs/bpf/blocker-vm-test";

fn assert_denied(path: &Path) -> Result<()> {
    let error = run_as_launcher(path).expect_err("a banned exec must fail");
    ensure!(
        error.raw_os_error() == Some(libc::EPERM),
        "expected EPERM running {}, got {error}",
        path.display()
    );
    Ok(())
}

fn unload() -> Result<String> {
    let output = Command::new(blocker_bin())
        .args(["unload", "--pin-dir", PIN_DIR])
        .output()?;
    ensure!(output.status.success(), "blocker unload: {output:?}");
    Ok(String::from_utf8(output.stdout)?)
}

#[test]
fn pinned_programs_outlive_a_killed_daemon_and_the_next_one_adopts_them() -> Result<()> {
    let sandbox = Sandbox::new("pin")?;
    let banned = sandbox.copy_binary("banned")?;
    let banned_later = sandbox.copy_binary("banned-later")?;
    sandbox.write_policy("test.toml", &deny_and_audit_policy(&[&banned], &[]))?;
    let args = ["--backend", "lsm", "--pin", "--pin-dir", PIN_DIR];

    let (mut first, started) = Daemon::start(&sandbox.policy_dir(), &args)?;
    ensure!(started["adopted"] == false, "{started}");
    let pinned = started["pinned"].as_str().context("pinned")?.to_owned();
    ensure!(pinned.starts_with(PIN_DIR), "{started}");
    assert_denied(&banned)?;
    first.wait_for_exec(&banned)?;

    first.signal(libc::SIGKILL);
    first.wait(Duration::from_secs(10))?;
    assert_denied(&banned)?;

    let (mut second, started) = Daemon::start(&sandbox.policy_dir(), &args)?;
    ensure!(started["adopted"] == true, "{started}");
    ensure!(started["pinned"] == pinned.as_str(), "{started}");
    ensure!(started["backend"] == "lsm", "{started}");
    // Denied while no daemon ran: the kernel kept the events for the next reader.
    let record = second.wait_for_exec(&banned)?;
    ensure!(record["rule"] == "ban", "{record}");

    // The adopted maps take policy changes.
    sandbox.write_policy(
        "test.toml",
        &deny_and_audit_policy(&[&banned, &banned_later], &[]),
    )?;
    second.wait_for_record(Duration::from_secs(30), |r| r["kind"] == "reloaded")?;
    assert_denied(&banned_later)?;
    second.wait_for_exec(&banned_later)?;

    let (status, records, _) = second.stop()?;
    ensure!(status.success(), "{status}");
    let stopped = records
        .iter()
        .find(|r| r["kind"] == "stopped")
        .context("stopped record")?;
    ensure!(stopped["pinned"] == pinned.as_str(), "{stopped}");
    assert_denied(&banned)?;

    let said = unload()?;
    ensure!(said.contains("removed link"), "{said}");
    ensure!(!Path::new(PIN_DIR).exists(), "{PIN_DIR} is gone");
    let (_, status) = run_as_launcher(&banned)
        .with_context(|| format!("running {} once unloaded ({said})", banned.display()))?;
    ensure!(status.success(), "runs again once unloaded: {status}");
    ensure!(unload()?.contains("nothing is pinned"));
    Ok(())
}
