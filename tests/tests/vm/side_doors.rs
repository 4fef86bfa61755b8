//! Ways to run a banned file's code without exec'ing it by name, on Debian's kernel with the
//! LSM backend (run inside the VM by `cargo xtask test`): the dynamic loader, `dlopen`,
//! `mprotect`, and files with no name on disk.

use std::{
    ffi::{CStr, CString},
    os::{fd::AsRawFd, unix::ffi::OsStrExt},
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context, Result};
use blocker_integration_tests::{
    deny_and_audit_policy, exec_by_descriptor, harmless_binary, memfd_copy, tmpfile_copy, Daemon,
    Sandbox,
};
use serde_json::Value;

const DYNAMIC_LOADER: &str = "/lib64/ld-linux-x86-64.so.2";

/// The path of a shared library this test process has loaded, to copy as a banned library.
fn loaded_library(name_part: &str) -> Result<PathBuf> {
    let maps = std::fs::read_to_string("/proc/self/maps")?;
    maps.lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.contains(name_part))
        .map(PathBuf::from)
        .with_context(|| format!("no library matching {name_part} is loaded"))
}

fn dlopen(path: &Path) -> Result<(), String> {
    let name = CString::new(path.as_os_str().as_bytes()).unwrap();
    // SAFETY: a valid path; the handle is closed at once and no symbol of it is used.
    unsafe {
        let handle = libc::dlopen(name.as_ptr(), libc::RTLD_NOW | libc::RTLD_LOCAL);
        if handle.is_null() {
            return Err(CStr::from_ptr(libc::dlerror())
                .to_string_lossy()
                .into_owned());
        }
        libc::dlclose(handle);
    }
    Ok(())
}

fn mapping_event(daemon: &mut Daemon, path: &Path, operation: &str) -> Result<Value> {
    let path = path.display().to_string();
    daemon.wait_for_record(blocker_integration_tests::EVENT_TIMEOUT, |record| {
        record["kind"] == "exec"
            && record["operation"] == operation
            && record["path"] == path.as_str()
    })
}

#[test]
fn the_dynamic_loader_cannot_run_a_banned_program() -> Result<()> {
    let sandbox = Sandbox::new("ldso")?;
    let banned = sandbox.copy_binary("banned")?;
    let free = sandbox.copy_binary("free")?;
    sandbox.write_policy("test.toml", &deny_and_audit_policy(&[&banned], &[]))?;
    let (mut daemon, _) = Daemon::start(&sandbox.policy_dir(), &["--backend", "lsm"])?;

    ensure!(
        Command::new(DYNAMIC_LOADER).arg(&free).status()?.success(),
        "the loader runs unbanned programs"
    );
    let output = Command::new(DYNAMIC_LOADER).arg(&banned).output()?;
    ensure!(
        !output.status.success(),
        "ld.so ran a banned program: {output:?}"
    );
    // glibc reports the refused mmap without its errno; the event says who refused it.
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(stderr.contains("failed to map segment"), "{stderr}");
    let event = mapping_event(&mut daemon, &banned, "mmap")?;
    ensure!(
        event["rule"] == "ban" && event["enforcement"] == "eperm",
        "{event}"
    );
    let (status, _, _) = daemon.stop()?;
    ensure!(status.success());
    Ok(())
}

#[test]
fn a_banned_library_cannot_be_loaded_or_made_executable() -> Result<()> {
    let sandbox = Sandbox::new("dlopen")?;
    let library = loaded_library("libgcc_s")?;
    let banned = sandbox.path("libbanned.so.1");
    let free = sandbox.path("libfree.so.1");
    std::fs::copy(&library, &banned)?;
    std::fs::copy(&library, &free)?;
    sandbox.write_policy("test.toml", &deny_and_audit_policy(&[&banned], &[]))?;
    let (mut daemon, started) = Daemon::start(&sandbox.policy_dir(), &["--backend", "lsm"])?;
    ensure!(started["entries"] == 1, "{started}");

    dlopen(&free)
        .map_err(anyhow::Error::msg)
        .context("an unbanned copy loads")?;
    let error = dlopen(&banned).expect_err("dlopen of a banned library must fail");
    ensure!(error.contains("failed to map segment"), "{error}");
    mapping_event(&mut daemon, &banned, "mmap")?;

    // Mapped readable, then made executable: refused at mprotect.
    let file = std::fs::File::open(&banned)?;
    // SAFETY: a fresh private read-only mapping of a file this test owns, unmapped below.
    unsafe {
        let length = 4096;
        let address = libc::mmap(
            std::ptr::null_mut(),
            length,
            libc::PROT_READ,
            libc::MAP_PRIVATE,
            file.as_raw_fd(),
            0,
        );
        ensure!(
            address != libc::MAP_FAILED,
            "a read-only mapping is allowed"
        );
        let result = libc::mprotect(address, length, libc::PROT_READ | libc::PROT_EXEC);
        let error = std::io::Error::last_os_error();
        libc::munmap(address, length);
        ensure!(
            result == -1 && error.raw_os_error() == Some(libc::EPERM),
            "mprotect: {error}"
        );
    }
    mapping_event(&mut daemon, &banned, "mprotect")?;

    let (status, _, _) = daemon.stop()?;
    ensure!(status.success());
    dlopen(&banned)
        .map_err(anyhow::Error::msg)
        .context("loads after the daemon detaches")?;
    Ok(())
}

/// A copy of banned content made after the daemon started, outside any scan root: only the
/// kernel's hashing recognises it, at exec and when the loader maps it.
#[test]
fn the_dynamic_loader_cannot_run_a_copy_of_banned_content() -> Result<()> {
    let sandbox = Sandbox::new("ldso-content")?;
    let mut content = std::fs::read(harmless_binary())?;
    content.extend_from_slice(b"content banned for its mappings too");
    let original = sandbox.path("original");
    std::fs::write(&original, &content)?;
    let (mut daemon, started) =
        blocker_integration_tests::start_content_daemon(&sandbox, "ban-content", &[&original])?;
    ensure!(
        started["features"]["mapping_content"]["state"] == "on",
        "{started}"
    );
    let copy = sandbox.path("copy");
    std::fs::write(&copy, &content)?;

    let output = Command::new(DYNAMIC_LOADER).arg(&copy).output()?;
    ensure!(
        !output.status.success(),
        "ld.so ran a copy of banned content: {output:?}"
    );
    let event = daemon.wait_for_record(blocker_integration_tests::EVENT_TIMEOUT, |r| {
        r["kind"] == "exec" && r["rule"] == "ban-content" && r["operation"] == "mmap"
    })?;
    ensure!(event["enforcement"] == "eperm", "{event}");
    ensure!(
        Command::new(DYNAMIC_LOADER)
            .arg(harmless_binary())
            .status()?
            .success(),
        "the loader still runs other programs"
    );
    let (status, _, _) = daemon.stop()?;
    ensure!(status.success());
    Ok(())
}

#[test]
fn fileless_execs_are_refused_when_the_policy_says_deny() -> Result<()> {
    let sandbox = Sandbox::new("fileless")?;
    sandbox.write_policy("test.toml", "name = \"test\"\nfileless = \"deny\"\n")?;
    let deleted = sandbox.copy_binary("deleted-after-open")?;
    let deleted_file = std::fs::File::open(&deleted)?;
    std::fs::remove_file(&deleted)?;
    let (mut daemon, _) = Daemon::start(&sandbox.policy_dir(), &["--backend", "lsm"])?;

    let memfd = memfd_copy(&harmless_binary())?;
    let tmpfile = tmpfile_copy(&harmless_binary(), &sandbox.path(""))?;
    for (what, file) in [
        ("memfd", &memfd),
        ("O_TMPFILE", &tmpfile),
        ("deleted file", &deleted_file),
    ] {
        let error = exec_by_descriptor(file)
            .err()
            .with_context(|| format!("a {what} must not run"))?;
        ensure!(error.raw_os_error() == Some(libc::EPERM), "{what}: {error}");
        let event = daemon.wait_for_record(blocker_integration_tests::EVENT_TIMEOUT, |r| {
            r["kind"] == "exec" && r["rule"] == "fileless"
        })?;
        ensure!(event["enforcement"] == "eperm", "{what}: {event}");
    }
    // The dynamic loader handed the same deleted file by its /proc name maps it instead.
    let through_proc = format!(
        "/proc/{}/fd/{}",
        std::process::id(),
        deleted_file.as_raw_fd()
    );
    let output = Command::new(DYNAMIC_LOADER).arg(&through_proc).output()?;
    ensure!(
        !output.status.success(),
        "ld.so ran a deleted file: {output:?}"
    );
    let event = daemon.wait_for_record(blocker_integration_tests::EVENT_TIMEOUT, |r| {
        r["kind"] == "exec" && r["rule"] == "fileless" && r["operation"] == "mmap"
    })?;
    ensure!(event["enforcement"] == "eperm", "ld.so: {event}");
    ensure!(
        Command::new(harmless_binary()).status()?.success(),
        "files with a name still run"
    );
    let (status, _, _) = daemon.stop()?;
    ensure!(status.success());
    ensure!(
        exec_by_descriptor(&memfd)?.success(),
        "memfds run again after detach"
    );
    Ok(())
}
