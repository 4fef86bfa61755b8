//! The LSM backend on Debian's kernel booted with `lsm=...,bpf` (run inside the VM by
//! `cargo xtask test`): a banned file's exec fails with EPERM and never starts.

use std::{process::Command, time::Duration};

use anyhow::{ensure, Context, Result};
use blocker_integration_tests::{
    assert_exec_record, deny_and_audit_policy, exec_by_descriptor, run_as_launcher, BanScenario,
    Daemon, ExpectedExec, Sandbox, LAUNCHER_COMM,
};

#[test]
fn banned_exec_fails_with_eperm_until_the_daemon_detaches() -> Result<()> {
    let scenario = BanScenario::new("lsm")?;
    let banned = &scenario.banned;
    let (mut daemon, started) = scenario.start_daemon(&["--backend", "lsm"])?;
    ensure!(started["backend"] == "lsm", "{started}");

    let error = run_as_launcher(banned).expect_err("the banned exec must fail");
    ensure!(
        error.raw_os_error() == Some(libc::EPERM),
        "expected EPERM, got {error}"
    );
    let record = daemon.wait_for_exec(banned)?;
    let pid = record["pid"].as_u64().context("pid")? as u32;
    assert_exec_record(
        &record,
        &ExpectedExec {
            path: banned,
            pid,
            // The hook runs before exec renames the task: the caller's name is reported.
            comm: LAUNCHER_COMM.to_owned(),
            rule: "ban",
            enforcement: "eperm",
            backend: "lsm",
        },
    )?;

    ensure!(
        Command::new("/bin/busybox").arg("true").status()?.success(),
        "other binaries run"
    );
    scenario.check_unbanned_and_audited_run(&mut daemon, LAUNCHER_COMM.to_owned(), "lsm")?;
    scenario.stop_and_check_detached(daemon)?;
    Ok(())
}

#[test]
fn auto_backend_picks_lsm_where_bpf_is_an_active_lsm() -> Result<()> {
    let lsms = std::fs::read_to_string("/sys/kernel/security/lsm")?;
    ensure!(
        lsms.split(',').any(|lsm| lsm.trim() == "bpf"),
        "the VM must boot with bpf in lsm=: {lsms}"
    );

    let sandbox = Sandbox::new("auto")?;
    let banned = sandbox.copy_binary("banned")?;
    sandbox.write_policy("test.toml", &deny_and_audit_policy(&[&banned], &[]))?;
    let (mut daemon, started) = Daemon::start(&sandbox.policy_dir(), &[])?;
    ensure!(started["backend"] == "lsm", "{started}");
    daemon.wait_for_log("with the lsm backend", Duration::from_secs(5))?;
    let error = Command::new(&banned).status().expect_err("banned");
    ensure!(error.raw_os_error() == Some(libc::EPERM), "{error}");
    let (status, _, _) = daemon.stop()?;
    ensure!(status.success());
    Ok(())
}

#[test]
fn every_name_of_a_banned_file_is_refused() -> Result<()> {
    let sandbox = Sandbox::new("names")?;
    let banned = sandbox.copy_binary("banned")?;
    let symlink = sandbox.path("symlink");
    std::os::unix::fs::symlink(&banned, &symlink)?;
    let hard_link = sandbox.path("hard-link");
    std::fs::hard_link(&banned, &hard_link)?;
    let script = sandbox.path("script.sh");
    std::fs::write(&script, "#!/bin/sh\nexit 0\n")?;
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))?;
    let script_runner = sandbox.path("runs-banned-interpreter.sh");
    std::fs::write(&script_runner, format!("#!{}\n", banned.display()))?;
    std::fs::set_permissions(
        &script_runner,
        std::os::unix::fs::PermissionsExt::from_mode(0o755),
    )?;
    ensure!(
        Command::new(&script).status()?.success(),
        "the script runs before it is banned"
    );

    let policy = deny_and_audit_policy(&[&banned, &script], &[]);
    sandbox.write_policy("test.toml", &policy)?;
    let (mut daemon, _) = Daemon::start(&sandbox.policy_dir(), &["--backend", "lsm"])?;

    for path in [&symlink, &hard_link, &script, &script_runner] {
        let error = Command::new(path)
            .status()
            .expect_err(&format!("{} must be refused", path.display()));
        ensure!(
            error.raw_os_error() == Some(libc::EPERM),
            "{}: {error}",
            path.display()
        );
        daemon.wait_for_exec(path)?;
    }

    let file = std::fs::File::open(&banned)?;
    let error = exec_by_descriptor(&file).expect_err("execveat of a banned file's fd");
    ensure!(
        error.raw_os_error() == Some(libc::EPERM),
        "execveat: {error}"
    );

    let (status, _, _) = daemon.stop()?;
    ensure!(status.success());
    Ok(())
}
