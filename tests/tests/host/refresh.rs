//! A refresh removes a ban only when the banned file is shown gone: a lookup that fails for
//! another reason (here, too many open files after root lowered the daemon's RLIMIT_NOFILE)
//! keeps the ban and says why, while a path whose directory became a FIFO (ENOTDIR) is gone.
//! The `kill` backend on the host's kernel, with test-made files only.

use std::{
    ffi::CString,
    os::unix::{ffi::OsStrExt, fs::PermissionsExt, process::ExitStatusExt},
    path::Path,
    process::{Command, ExitStatus},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use blocker_integration_tests::{deny_and_audit_policy, harmless_binary, Daemon, Sandbox};

/// Several refresh intervals of one second.
const REFRESH_TIMEOUT: Duration = Duration::from_secs(20);

fn run(path: &Path) -> Result<ExitStatus> {
    Command::new(path)
        .status()
        .with_context(|| format!("running {}", path.display()))
}

fn killed(status: ExitStatus) -> bool {
    status.signal() == Some(libc::SIGKILL)
}

/// Sets the daemon's soft RLIMIT_NOFILE to `soft`, as root can with `prlimit`; returns the
/// limit it had.
fn set_open_files_limit(daemon: &Daemon, soft: libc::rlim_t) -> Result<libc::rlimit> {
    let mut old = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: reads the current limit into `old`; no new limit is passed.
    let read = unsafe {
        libc::prlimit(
            daemon.pid() as libc::pid_t,
            libc::RLIMIT_NOFILE,
            std::ptr::null(),
            &mut old,
        )
    };
    ensure!(read == 0, "prlimit: {}", std::io::Error::last_os_error());
    let new = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: `new` is a valid limit; the old one is not asked for.
    let set = unsafe {
        libc::prlimit(
            daemon.pid() as libc::pid_t,
            libc::RLIMIT_NOFILE,
            &new,
            std::ptr::null_mut(),
        )
    };
    ensure!(set == 0, "prlimit: {}", std::io::Error::last_os_error());
    Ok(old)
}

#[test]
fn a_refresh_that_cannot_open_files_keeps_the_ban_and_says_why() -> Result<()> {
    let sandbox = Sandbox::new("emfile")?;
    let banned = sandbox.copy_binary("banned")?;
    sandbox.write_policy("test.toml", &deny_and_audit_policy(&[&banned], &[]))?;
    let (mut daemon, _) = Daemon::start(
        &sandbox.policy_dir(),
        &["--backend", "kill", "--refresh-interval", "1"],
    )?;
    ensure!(killed(run(&banned)?), "banned before the limit");

    // No descriptor can be opened: every lookup of the next refresh fails with EMFILE.
    let old = set_open_files_limit(&daemon, 0)?;
    let warning = daemon.wait_for_log("could not be looked up", REFRESH_TIMEOUT)?;
    let path = format!("path {}", banned.display());
    ensure!(
        warning.contains("WARN")
            && warning.contains("rule ban: ")
            && warning.contains(&path)
            && warning.contains("Too many open files"),
        "{warning}"
    );
    daemon.wait_for_log("stay banned until a lookup decides", REFRESH_TIMEOUT)?;
    let status = run(&banned)?;
    ensure!(killed(status), "the refresh dropped the ban: {status}");

    set_open_files_limit(&daemon, old.rlim_cur)?;
    daemon.wait_for_log("every identifier could be looked up again", REFRESH_TIMEOUT)?;
    ensure!(killed(run(&banned)?), "banned after the limit is restored");
    let (status, _, log) = daemon.stop()?;
    ensure!(status.success(), "{status}");
    ensure!(
        !log.iter().any(|line| line.contains("no longer banned")),
        "{log:?}"
    );
    Ok(())
}

#[test]
fn a_path_through_a_fifo_is_gone_and_its_ban_removed() -> Result<()> {
    let sandbox = Sandbox::new("enotdir")?;
    let directory = sandbox.path("directory");
    std::fs::create_dir(&directory)?;
    let banned = directory.join("banned");
    std::fs::copy(harmless_binary(), &banned)?;
    std::fs::set_permissions(&banned, std::fs::Permissions::from_mode(0o755))?;
    sandbox.write_policy("test.toml", &deny_and_audit_policy(&[&banned], &[]))?;
    let (mut daemon, _) = Daemon::start(
        &sandbox.policy_dir(),
        &["--backend", "kill", "--refresh-interval", "1"],
    )?;
    ensure!(killed(run(&banned)?), "banned at start");

    // The file lives on under another name; its path now leads through a FIFO (ENOTDIR).
    let moved = sandbox.path("moved");
    std::fs::rename(&directory, &moved)?;
    let fifo = CString::new(directory.as_os_str().as_bytes())?;
    // SAFETY: a valid NUL-terminated path.
    let made = unsafe { libc::mkfifo(fifo.as_ptr(), 0o644) };
    ensure!(made == 0, "mkfifo: {}", std::io::Error::last_os_error());
    daemon.wait_for_log(
        "ban map updated: 0 added, 0 changed, 1 removed",
        REFRESH_TIMEOUT,
    )?;
    let status = run(&moved.join("banned"))?;
    ensure!(status.success(), "the file's ban stayed: {status}");
    let (status, _, log) = daemon.stop()?;
    ensure!(status.success(), "{status}");
    ensure!(
        !log.iter()
            .any(|line| line.contains("could not be looked up")),
        "{log:?}"
    );
    Ok(())
}
