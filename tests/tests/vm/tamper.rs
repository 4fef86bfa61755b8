//! Tamper protection (`blocker run --protect`, run inside the VM by `cargo xtask test`): other
//! processes cannot kill or trace the daemon, get at its maps, programs or links, or change its
//! policy directory or pins; `blocker policy` and `blocker stop` still can (asking the daemon
//! over its control socket), and every refused attempt is an event.

use std::{
    fs,
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::fs::PermissionsExt,
    },
    path::Path,
    process::{Command, Output},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use blocker_integration_tests::{
    blocker_bin,
    bpf::{self, command},
    deny_and_audit_policy, run_as_launcher, Daemon, Sandbox,
};
use serde_json::Value;

const PIN_DIR: &str = "/sys/fs/bpf/blocker-tamper-test";

/// Tries to open every BPF object of a kind by id; returns how many were refused with EPERM.
fn refused_by_id(next_id: libc::c_long, get_fd: libc::c_long) -> usize {
    let (mut id, mut refused) = (0, 0);
    while let Ok(next) = bpf::next_id(next_id, id) {
        id = next;
        if let Err(error) = bpf::fd_by_id(get_fd, id) {
            if error.raw_os_error() == Some(libc::EPERM) {
                refused += 1;
            }
        }
    }
    refused
}

fn blocker(args: &[&str]) -> Result<Output> {
    Ok(Command::new(blocker_bin()).args(args).output()?)
}

/// `blocker stop` of `daemon`, which it asks over the daemon's control socket.
fn stop(daemon: &Daemon) -> Result<Output> {
    daemon.blocker_stop()
}

fn expect_eperm<T>(what: &str, result: std::io::Result<T>) -> Result<()> {
    expect_errno(what, libc::EPERM, result)
}

fn expect_errno<T>(what: &str, errno: i32, result: std::io::Result<T>) -> Result<()> {
    match result {
        Ok(_) => anyhow::bail!("{what} was allowed"),
        Err(error) => {
            ensure!(
                error.raw_os_error() == Some(errno),
                "{what}: expected errno {errno}, got {error}"
            );
            Ok(())
        }
    }
}

fn wait_for_tamper(daemon: &mut Daemon, attempt: &str) -> Result<Value> {
    daemon.wait_for_record(Duration::from_secs(10), |record| {
        record["kind"] == "tamper" && record["attempt"] == attempt
    })
}

#[test]
fn a_protected_daemon_refuses_tampering_but_takes_the_documented_ways() -> Result<()> {
    let sandbox = Sandbox::new("tamper")?;
    let banned = sandbox.copy_binary("banned")?;
    let banned_later = sandbox.copy_binary("banned-later")?;
    let policy_dir = sandbox.policy_dir();
    let policy_file = sandbox.write_policy("test.toml", &deny_and_audit_policy(&[&banned], &[]))?;
    let (mut daemon, started) = Daemon::start(&policy_dir, &["--backend", "lsm", "--protect"])?;
    ensure!(started["protected"] == true, "{started}");
    // Every program of every feature loads on each kernel the VM tests boot.
    let features = started["features"]
        .as_object()
        .with_context(|| format!("no features in {started}"))?;
    ensure!(features.len() == 7, "{started}");
    for (name, feature) in features {
        ensure!(feature["state"] == "on", "{name}: {feature}");
    }
    let pid = daemon.pid() as libc::pid_t;

    // SAFETY (all three): plain kill(2) and ptrace(2) of the daemon.
    expect_eperm(
        "SIGKILL to the daemon",
        errno(unsafe { libc::kill(pid, libc::SIGKILL) }),
    )?;
    let record = wait_for_tamper(&mut daemon, "signal")?;
    ensure!(record["detail"] == "SIGKILL (9)", "{record}");
    expect_eperm(
        "SIGTERM to the daemon",
        errno(unsafe { libc::kill(pid, libc::SIGTERM) }),
    )?;
    ensure!(
        unsafe { libc::kill(pid, 0) } == 0,
        "probing with signal 0 works"
    );
    expect_eperm(
        "ptrace attach to the daemon",
        errno(unsafe { libc::ptrace(libc::PTRACE_ATTACH, pid, 0, 0) } as i32),
    )?;
    wait_for_tamper(&mut daemon, "ptrace")?;

    ensure!(
        refused_by_id(command::MAP_GET_NEXT_ID, command::MAP_GET_FD_BY_ID) >= 9,
        "every map of blocker's is refused"
    );
    ensure!(
        refused_by_id(command::PROG_GET_NEXT_ID, command::PROG_GET_FD_BY_ID) >= 3,
        "its programs"
    );
    ensure!(
        refused_by_id(command::LINK_GET_NEXT_ID, command::LINK_GET_FD_BY_ID) >= 3,
        "its links"
    );
    let record = wait_for_tamper(&mut daemon, "bpf_object")?;
    ensure!(
        record["detail"]
            .as_str()
            .is_some_and(|d| d.starts_with("map id")),
        "{record}"
    );

    let policy_dir_name = fs::canonicalize(&policy_dir)?.display().to_string();
    expect_eperm(
        "creating a policy file",
        fs::write(policy_dir.join("evil.toml"), "x"),
    )?;
    let record = wait_for_tamper(&mut daemon, "file_change")?;
    ensure!(
        record["detail"] == "create" && record["path"] == policy_dir_name.as_str(),
        "{record}"
    );
    expect_eperm(
        "opening a policy file for writing",
        fs::OpenOptions::new().append(true).open(&policy_file),
    )?;
    expect_eperm("removing a policy file", fs::remove_file(&policy_file))?;
    expect_eperm(
        "renaming a policy file",
        fs::rename(&policy_file, policy_dir.join("moved.toml")),
    )?;
    expect_eperm(
        "making a policy file writable for all",
        fs::set_permissions(&policy_file, fs::Permissions::from_mode(0o666)),
    )?;
    expect_eperm(
        "removing the policy directory",
        fs::remove_dir_all(&policy_dir),
    )?;
    expect_eperm(
        "making the blocker binary non-executable",
        fs::set_permissions(blocker_bin(), fs::Permissions::from_mode(0o644)),
    )?;
    let error = run_as_launcher(&banned).expect_err("still enforcing");
    ensure!(error.raw_os_error() == Some(libc::EPERM));

    // The documented way to change the policy checks it first, then writes.
    let bad = sandbox.path("bad.toml");
    fs::write(
        &bad,
        "name = \"bad\"\n[[rule]]\nid = \"ban\"\npaths = [\"/x\"]\n",
    )?;
    let status_file = daemon.status_file().context("a status file")?.to_owned();
    let status_file = status_file.to_str().unwrap();
    let output = blocker(&[
        "policy",
        "install",
        bad.to_str().unwrap(),
        "--policy-dir",
        policy_dir.to_str().unwrap(),
        "--status-file",
        status_file,
    ])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(
        output.status.code() == Some(2) && stderr.contains("duplicate rule id"),
        "{output:?}"
    );
    ensure!(!policy_dir.join("bad.toml").exists());
    let later = sandbox.path("later.toml");
    fs::write(
        &later,
        deny_and_audit_policy(&[&banned_later], &[])
            .replace("id = \"ban\"", "id = \"ban-later\"")
            .replace("name = \"test\"", "name = \"later\""),
    )?;
    let output = blocker(&[
        "policy",
        "install",
        later.to_str().unwrap(),
        "--policy-dir",
        policy_dir.to_str().unwrap(),
        "--status-file",
        status_file,
    ])?;
    ensure!(output.status.success(), "{output:?}");
    let changed = daemon.wait_for_record(Duration::from_secs(10), |r| {
        r["kind"] == "policy_changed" && r["installed"][0] == "later.toml"
    })?;
    ensure!(
        changed["uid"] == 0,
        "written by the daemon, as asked: {changed}"
    );
    daemon.wait_for_record(Duration::from_secs(30), |r| r["kind"] == "reloaded")?;
    let error = run_as_launcher(&banned_later).expect_err("banned by the installed policy");
    ensure!(error.raw_os_error() == Some(libc::EPERM));

    let output = stop(&daemon)?;
    ensure!(output.status.success(), "{output:?}");
    let status = daemon.wait(Duration::from_secs(30))?;
    ensure!(status.success(), "{status}");
    let (records, log) = daemon.remaining_output();
    ensure!(
        records.iter().any(|r| r["kind"] == "stopped"),
        "{records:?}"
    );
    ensure!(
        log.iter()
            .any(|line| line.contains("asked over the control socket")),
        "{log:?}"
    );
    fs::write(policy_dir.join("after.toml"), "")
        .context("the policy directory is writable once the daemon stopped")?;
    Ok(())
}

#[test]
fn protected_pins_cannot_be_removed_and_stay_after_a_documented_stop() -> Result<()> {
    let sandbox = Sandbox::new("tamper-pins")?;
    let banned = sandbox.copy_binary("banned")?;
    sandbox.write_policy("test.toml", &deny_and_audit_policy(&[&banned], &[]))?;
    let args = [
        "--backend",
        "lsm",
        "--protect",
        "--pin",
        "--pin-dir",
        PIN_DIR,
    ];
    let (mut daemon, started) = Daemon::start(&sandbox.policy_dir(), &args)?;
    let pinned = started["pinned"].as_str().context("pinned")?.to_owned();

    let links = Path::new(&pinned).join("links");
    let link = fs::read_dir(&links)?
        .next()
        .context("a pinned link")??
        .path();
    // A descriptor of a link can be had from its pin, but an LSM program's link cannot be
    // detached through it.
    let link_fd = bpf::pinned_object(&link)?;
    expect_errno(
        "detaching a pinned link",
        libc::EOPNOTSUPP,
        bpf::with_fd(command::LINK_DETACH, &link_fd),
    )?;
    drop(link_fd);
    let error = run_as_launcher(&banned).expect_err("still attached");
    ensure!(error.raw_os_error() == Some(libc::EPERM));
    expect_eperm("unpinning a link", fs::remove_file(&link))?;
    expect_eperm(
        "renaming the pins",
        fs::rename(&pinned, format!("{PIN_DIR}/moved")),
    )?;
    let record = wait_for_tamper(&mut daemon, "file_change")?;
    ensure!(record["detail"] == "unlink", "{record}");
    // The blocker binary itself is not trusted while the daemon lives.
    let output = blocker(&["unload", "--pin-dir", PIN_DIR])?;
    ensure!(
        !output.status.success()
            && String::from_utf8_lossy(&output.stderr).contains("stop it first"),
        "{output:?}"
    );
    ensure!(Path::new(&pinned).exists());

    ensure!(stop(&daemon)?.status.success());
    daemon.wait(Duration::from_secs(30))?;
    let error = run_as_launcher(&banned).expect_err("the pins keep enforcing");
    ensure!(error.raw_os_error() == Some(libc::EPERM));
    let output = blocker(&["unload", "--pin-dir", PIN_DIR])?;
    ensure!(output.status.success(), "{output:?}");
    let (_, status) = run_as_launcher(&banned)?;
    ensure!(status.success(), "runs once unloaded: {status}");
    Ok(())
}

fn errno(value: i32) -> std::io::Result<i32> {
    if value < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(value)
    }
}

/// An unprivileged user trying, a few hundred times, what the kernel would refuse them anyway
/// (changing the mode of the blocker binary, which they do not own; a descriptor of blocker's
/// links, which needs CAP_SYS_ADMIN) is refused without a record, so they cannot flood the event
/// stream; root trying the same is refused and recorded.
#[test]
fn attempts_the_kernel_refuses_anyway_are_not_recorded() -> Result<()> {
    const NOBODY: u32 = 65534;
    const ATTEMPTS: usize = 300;
    let sandbox = Sandbox::new("tamper-flood")?;
    let banned = sandbox.copy_binary("banned")?;
    let policy_dir = sandbox.policy_dir();
    sandbox.write_policy("test.toml", &deny_and_audit_policy(&[&banned], &[]))?;
    let (mut daemon, _) = Daemon::start(&policy_dir, &["--backend", "lsm", "--protect"])?;
    let events_file = daemon.events_file().to_owned();

    let link_ids = bpf::listed_ids(command::LINK_GET_NEXT_ID);
    let binary = std::ffi::CString::new(blocker_bin().into_os_string().into_encoded_bytes())?;
    // SAFETY: the child only makes system calls and exits: nothing that needs the parent's
    // other threads.
    let child = unsafe { libc::fork() };
    if child == 0 {
        unsafe {
            if libc::setgid(NOBODY) != 0 || libc::setuid(NOBODY) != 0 {
                libc::_exit(2);
            }
            for _ in 0..ATTEMPTS {
                if libc::chmod(binary.as_ptr(), 0o644) == 0 {
                    libc::_exit(3);
                }
                for &link in &link_ids {
                    let mut attr = [link, 0, 0];
                    libc::syscall(
                        libc::SYS_bpf,
                        command::LINK_GET_FD_BY_ID,
                        attr.as_mut_ptr(),
                        std::mem::size_of_val(&attr),
                    );
                }
            }
            libc::_exit(0);
        }
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    ensure!(unsafe { libc::waitpid(child, &mut status, 0) } == child);
    ensure!(
        libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0,
        "the unprivileged attempts all failed: wait status {status:#x}"
    );

    expect_eperm(
        "root making the blocker binary non-executable",
        fs::set_permissions(blocker_bin(), fs::Permissions::from_mode(0o644)),
    )?;
    let record = wait_for_tamper(&mut daemon, "file_change")?;
    ensure!(record["uid"] == 0, "{record}");

    let output = stop(&daemon)?;
    ensure!(output.status.success(), "{output:?}");
    daemon.wait(Duration::from_secs(30))?;
    let from_nobody: Vec<Value> = blocker_integration_tests::events_in(&events_file)?
        .into_iter()
        .filter(|r| r["kind"] == "tamper" && r["uid"] == NOBODY)
        .collect();
    ensure!(from_nobody.is_empty(), "{from_nobody:?}");
    Ok(())
}

fn c_path(path: &Path) -> std::ffi::CString {
    std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).expect("no NUL in a test path")
}

/// `mount -t tmpfs tmpfs PATH`.
fn mount_tmpfs(path: &Path) -> std::io::Result<i32> {
    mount_tmpfs_at(&c_path(path))
}

/// `mount_tmpfs` without allocating, for a forked child.
fn mount_tmpfs_at(path: &std::ffi::CStr) -> std::io::Result<i32> {
    // SAFETY: NUL-terminated strings that outlive the call, and no data.
    errno(unsafe {
        libc::mount(
            c"tmpfs".as_ptr(),
            path.as_ptr(),
            c"tmpfs".as_ptr(),
            0,
            std::ptr::null(),
        )
    })
}

fn umount(path: &Path, flags: libc::c_int) -> std::io::Result<i32> {
    let path = c_path(path);
    // SAFETY: a NUL-terminated string that outlives the call.
    errno(unsafe { libc::umount2(path.as_ptr(), flags) })
}

// `open_tree(2)` and `move_mount(2)` flags.
const OPEN_TREE_CLONE: libc::c_long = 1;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_long = 0x4;

/// `move_mount(2)` of the mount at `from` onto `to`.
fn move_mount(from: &Path, to: &Path) -> std::io::Result<i32> {
    let (from, to) = (c_path(from), c_path(to));
    // SAFETY: NUL-terminated strings that outlive the call.
    errno(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            libc::AT_FDCWD,
            from.as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            0,
        )
    } as i32)
}

/// `mount --bind FROM TO` through the new mount API, as util-linux 2.39 does it: a clone of
/// `from` (`open_tree`), attached at `to` (`move_mount`).
fn bind_with_open_tree(from: &Path, to: &Path) -> Result<()> {
    let (from, to) = (c_path(from), c_path(to));
    // SAFETY: a NUL-terminated string that outlives the call.
    let tree = errno(unsafe {
        libc::syscall(
            libc::SYS_open_tree,
            libc::AT_FDCWD,
            from.as_ptr(),
            OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_long,
        )
    } as i32)
    .context("open_tree")?;
    // SAFETY: a descriptor the kernel just returned to us.
    let tree = unsafe { OwnedFd::from_raw_fd(tree) };
    use std::os::fd::AsRawFd;
    // SAFETY: a descriptor of ours, and NUL-terminated strings that outlive the call.
    errno(unsafe {
        libc::syscall(
            libc::SYS_move_mount,
            tree.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_FDCWD,
            to.as_ptr(),
            MOVE_MOUNT_F_EMPTY_PATH,
        )
    } as i32)
    .context("move_mount")?;
    Ok(())
}

fn wait_for_change(daemon: &mut Daemon, detail: &str, path: &Path) -> Result<Value> {
    let path = path.display().to_string();
    daemon.wait_for_record(Duration::from_secs(10), |record| {
        record["kind"] == "tamper" && record["detail"] == detail && record["path"] == path.as_str()
    })
}

/// In a forked child: a mount over `parent` in a private mount namespace of its own (a
/// sandbox's view, which no daemon looks through) is allowed; entered into the daemon's
/// namespace as `nsenter -t PID -m` does, a mount over the policy directory or over `parent` is
/// refused. Returns the child's exit code, 0 when all that held.
fn mounts_from_other_namespaces(daemon_pid: u32, policy_dir: &Path, parent: &Path) -> Result<i32> {
    let namespace = c_path(Path::new(&format!("/proc/{daemon_pid}/ns/mnt")));
    let (policy_dir, parent) = (c_path(policy_dir), c_path(parent));
    // SAFETY: the child only makes system calls (no allocation: the paths are made above) and
    // exits.
    let child = unsafe { libc::fork() };
    if child == 0 {
        let code = unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0
                || libc::mount(
                    std::ptr::null(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                ) != 0
            {
                2
            } else if mount_tmpfs_at(&parent).is_err() {
                3
            } else {
                let fd = libc::open(namespace.as_ptr(), libc::O_RDONLY);
                if fd < 0 || libc::setns(fd, libc::CLONE_NEWNS) != 0 {
                    4
                } else if !matches!(mount_tmpfs_at(&policy_dir), Err(e) if e.raw_os_error() == Some(libc::EPERM))
                {
                    5
                } else if !matches!(mount_tmpfs_at(&parent), Err(e) if e.raw_os_error() == Some(libc::EPERM))
                {
                    6
                } else {
                    0
                }
            }
        };
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: waits for the child forked above.
    ensure!(unsafe { libc::waitpid(child, &mut status, 0) } == child);
    ensure!(libc::WIFEXITED(status), "wait status {status:#x}");
    Ok(libc::WEXITSTATUS(status))
}

/// The directories on the way to the policy directory and the pins keep their names and their
/// mounts: renaming the policy directory's parent, mounting over it (in this namespace or in the
/// daemon's, entered as `nsenter` does) and unmounting the BPF filesystem of the pins are
/// refused and recorded, while the parent's other entries stay free; after `blocker stop` all of
/// it works again.
#[test]
fn the_directories_on_the_way_keep_their_names_and_mounts() -> Result<()> {
    let sandbox = Sandbox::new("tamper-ancestors")?;
    let banned = sandbox.copy_binary("banned")?;
    sandbox.write_policy("test.toml", &deny_and_audit_policy(&[&banned], &[]))?;
    let policy_dir = fs::canonicalize(sandbox.policy_dir())?;
    let parent = policy_dir.parent().context("a parent")?.to_owned();
    let moved = parent.with_extension("old");
    let args = [
        "--backend",
        "lsm",
        "--protect",
        "--pin",
        "--pin-dir",
        PIN_DIR,
    ];
    let (mut daemon, _) = Daemon::start(&policy_dir, &args)?;

    expect_eperm(
        "renaming the policy directory's parent",
        fs::rename(&parent, &moved),
    )?;
    wait_for_change(&mut daemon, "rename", &parent)?;
    let mounted = mount_tmpfs(&parent);
    if mounted.is_ok() {
        let _ = umount(&parent, 0);
    }
    expect_eperm("a tmpfs over the policy directory's parent", mounted)?;
    wait_for_change(&mut daemon, "mount over", &parent)?;
    let code = mounts_from_other_namespaces(daemon.pid(), &policy_dir, &parent)?;
    ensure!(
        code == 0,
        "mounts from other namespaces: step {code} failed"
    );
    let bpffs = Path::new("/sys/fs/bpf");
    expect_eperm("unmounting the pins' BPF filesystem", umount(bpffs, 0))?;
    wait_for_change(&mut daemon, "unmount", bpffs)?;
    expect_eperm(
        "lazily unmounting the pins' BPF filesystem",
        umount(bpffs, libc::MNT_DETACH),
    )?;
    let elsewhere = std::env::temp_dir().join(format!("blocker-bind-{}", std::process::id()));
    fs::create_dir_all(&elsewhere)?;
    expect_eperm(
        "moving the pins' BPF filesystem away with move_mount",
        move_mount(bpffs, &elsewhere),
    )?;
    // A bind mount of the parent elsewhere adds a view and takes none away; while protected it
    // cannot be unmounted (the kernel names only the directory a mount shows).
    bind_with_open_tree(&parent, &elsewhere).context("binding the parent elsewhere")?;
    expect_eperm(
        "unmounting a bind mount of the parent",
        umount(&elsewhere, 0),
    )?;
    let other = parent.join("other");
    fs::write(&other, "x").context("another file in the parent")?;
    fs::rename(&other, parent.join("other-renamed")).context("renaming it")?;

    ensure!(stop(&daemon)?.status.success());
    daemon.wait(Duration::from_secs(30))?;
    fs::rename(&parent, &moved).context("renaming the parent once stopped")?;
    fs::rename(&moved, &parent)?;
    mount_tmpfs(&parent).context("mounting over the parent once stopped")?;
    umount(&parent, 0)?;
    umount(&elsewhere, 0).context("unmounting the bind mount once stopped")?;
    let output = blocker(&["unload", "--pin-dir", PIN_DIR])?;
    ensure!(output.status.success(), "{output:?}");
    Ok(())
}

/// Root's quieter ways to starve or kill the daemon: a new resource limit (`prlimit`), and a
/// signal through a descriptor the daemon is made the owner of (`F_SETOWN` + `O_ASYNC`: SIGIO,
/// whose default action ends a process, never passes `task_kill`). Both are refused and
/// recorded, and the daemon lives on.
#[test]
fn resource_limits_priorities_proc_files_and_owner_signals_do_not_reach_the_daemon() -> Result<()> {
    let sandbox = Sandbox::new("tamper-quiet")?;
    let banned = sandbox.copy_binary("banned")?;
    sandbox.write_policy("test.toml", &deny_and_audit_policy(&[&banned], &[]))?;
    let (mut daemon, _) = Daemon::start(&sandbox.policy_dir(), &["--backend", "lsm", "--protect"])?;
    let pid = daemon.pid() as libc::pid_t;

    let starved = libc::rlimit {
        rlim_cur: 3,
        rlim_max: 3,
    };
    // SAFETY: prlimit of another process with a valid new limit and no old one asked for.
    expect_eperm(
        "lowering the daemon's RLIMIT_NOFILE",
        errno(unsafe { libc::prlimit(pid, libc::RLIMIT_NOFILE, &starved, std::ptr::null_mut()) }),
    )?;
    let record = wait_for_tamper(&mut daemon, "resource_limit")?;
    ensure!(record["detail"] == "RLIMIT_NOFILE (7)", "{record}");

    let mut ends = [0; 2];
    // SAFETY: a pipe into a local array, then fcntl on its own descriptors.
    unsafe {
        ensure!(libc::pipe(ends.as_mut_ptr()) == 0);
        ensure!(libc::fcntl(ends[0], libc::F_SETOWN, pid) == 0);
        let flags = libc::fcntl(ends[0], libc::F_GETFL);
        ensure!(libc::fcntl(ends[0], libc::F_SETFL, flags | libc::O_ASYNC) == 0);
        ensure!(libc::write(ends[1], b"x".as_ptr().cast(), 1) == 1);
    }
    let record = wait_for_tamper(&mut daemon, "owner_signal")?;
    ensure!(record["detail"] == "SIGIO (29)", "{record}");
    // SAFETY: closes the pipe made above.
    unsafe {
        libc::close(ends[0]);
        libc::close(ends[1]);
    }

    // Its priorities: it would run only when nothing else wants the CPU or the disk.
    // SAFETY (all four): plain system calls about the daemon's process, with valid arguments.
    expect_eperm(
        "nice 19 for the daemon",
        errno(unsafe { libc::setpriority(libc::PRIO_PROCESS, pid as libc::id_t, 19) }),
    )?;
    let record = wait_for_tamper(&mut daemon, "priority")?;
    ensure!(record["detail"] == "nice", "{record}");
    const IOPRIO_WHO_PROCESS: libc::c_long = 1;
    const IOPRIO_IDLE: libc::c_long = 3 << 13;
    expect_eperm(
        "the idle I/O class for the daemon",
        errno(
            unsafe { libc::syscall(libc::SYS_ioprio_set, IOPRIO_WHO_PROCESS, pid, IOPRIO_IDLE) }
                as i32,
        ),
    )?;
    let idle = libc::sched_param { sched_priority: 0 };
    expect_eperm(
        "SCHED_IDLE for the daemon",
        errno(unsafe { libc::sched_setscheduler(pid, libc::SCHED_IDLE, &idle) }),
    )?;
    let mut first_cpu: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    unsafe { libc::CPU_SET(0, &mut first_cpu) };
    expect_eperm(
        "pinning the daemon to one CPU",
        errno(unsafe {
            libc::sched_setaffinity(pid, std::mem::size_of_val(&first_cpu), &first_cpu)
        }),
    )?;
    // Its /proc files: with oom_score_adj 1000 it is the first the OOM killer ends.
    expect_eperm(
        "oom_score_adj 1000 for the daemon",
        fs::write(format!("/proc/{pid}/oom_score_adj"), "1000"),
    )?;
    let record = wait_for_tamper(&mut daemon, "proc_write")?;
    ensure!(record["pid"] == std::process::id(), "{record}");
    let thread = fs::read_dir(format!("/proc/{pid}/task"))?
        .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
        .find(|tid| tid != &pid.to_string())
        .context("the daemon has threads")?;
    expect_eperm(
        "oom_score_adj 1000 through a thread of the daemon",
        fs::write(format!("/proc/{thread}/oom_score_adj"), "1000"),
    )?;
    ensure!(fs::read_to_string(format!("/proc/{pid}/oom_score_adj"))?.trim() != "1000");
    // Not anyone's: this process may still change its own.
    fs::write("/proc/self/oom_score_adj", "0")?;

    // SAFETY: probes the daemon with signal 0.
    ensure!(unsafe { libc::kill(pid, 0) } == 0, "the daemon lives on");

    let output = stop(&daemon)?;
    ensure!(output.status.success(), "{output:?}");
    let status = daemon.wait(Duration::from_secs(30))?;
    ensure!(status.success(), "{status}");
    Ok(())
}

const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// A test-made cgroup (v2, mounted by the VM's init), removed when dropped.
struct TestCgroup {
    dir: std::path::PathBuf,
}

impl TestCgroup {
    fn new(dir: std::path::PathBuf) -> Result<Self> {
        fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir })
    }

    /// Starts the daemon in this cgroup: the test process enters it to spawn the daemon and
    /// leaves again (tests run one at a time).
    fn start_daemon(&self, policy_dir: &Path, args: &[&str]) -> Result<(Daemon, Value)> {
        let own_pid = std::process::id().to_string();
        fs::write(self.dir.join("cgroup.procs"), &own_pid)?;
        let started = Daemon::start(policy_dir, args);
        fs::write(Path::new(CGROUP_ROOT).join("cgroup.procs"), &own_pid)?;
        started
    }
}

impl Drop for TestCgroup {
    fn drop(&mut self) {
        let _ = fs::remove_dir(&self.dir);
    }
}

/// The control files of the daemon's cgroup and its ancestors end, freeze or starve it without
/// a signal: each write is refused and recorded, controllers turned on after the start
/// included, while moves and controller changes through the membership files stay free.
#[test]
fn the_daemons_cgroups_cannot_kill_freeze_or_starve_it() -> Result<()> {
    let sandbox = Sandbox::new("tamper-cgroup")?;
    let banned = sandbox.copy_binary("banned")?;
    sandbox.write_policy("test.toml", &deny_and_audit_policy(&[&banned], &[]))?;
    fs::write(
        Path::new(CGROUP_ROOT).join("cgroup.subtree_control"),
        "+memory +pids",
    )?;
    let parent = TestCgroup::new(Path::new(CGROUP_ROOT).join("blocker-tamper"))?;
    fs::write(parent.dir.join("cgroup.subtree_control"), "+memory")?;
    let cgroup = TestCgroup::new(parent.dir.join("daemon"))?;
    let (mut daemon, started) =
        cgroup.start_daemon(&sandbox.policy_dir(), &["--backend", "lsm", "--protect"])?;
    ensure!(started["protected"] == true, "{started}");

    for (file, value) in [
        ("cgroup.kill", "1"),
        ("cgroup.freeze", "1"),
        ("memory.max", "1M"),
        ("memory.high", "1M"),
        ("../cgroup.kill", "1"),
        ("../cgroup.freeze", "1"),
        ("../memory.max", "1M"),
    ] {
        expect_eperm(
            &format!("writing {value} to {file}"),
            fs::write(cgroup.dir.join(file), value),
        )?;
    }
    let kill_file = cgroup.dir.join("cgroup.kill");
    let record = daemon.wait_for_record(Duration::from_secs(10), |record| {
        record["kind"] == "tamper" && record["path"] == kill_file.to_str().unwrap()
    })?;
    ensure!(
        record["attempt"] == "file_change" && record["detail"] == "open for writing",
        "{record}"
    );

    // A controller turned on after the start adds files guarded all the same.
    fs::write(parent.dir.join("cgroup.subtree_control"), "+pids")?;
    expect_eperm(
        "writing 1 to pids.max, added after the start",
        fs::write(cgroup.dir.join("pids.max"), "1"),
    )?;
    // Moving a process in and out passes.
    let mut sleeper = Command::new("sleep").arg("60").spawn()?;
    fs::write(cgroup.dir.join("cgroup.procs"), sleeper.id().to_string())?;
    fs::write(
        Path::new(CGROUP_ROOT).join("cgroup.procs"),
        sleeper.id().to_string(),
    )?;
    sleeper.kill()?;
    sleeper.wait()?;

    let events = fs::read_to_string(cgroup.dir.join("cgroup.events"))?;
    ensure!(events.contains("frozen 0"), "{events}");
    // SAFETY: probing the daemon with signal 0.
    ensure!(unsafe { libc::kill(daemon.pid() as libc::pid_t, 0) } == 0);
    let error = run_as_launcher(&banned).expect_err("still enforcing");
    ensure!(error.raw_os_error() == Some(libc::EPERM));

    let output = stop(&daemon)?;
    ensure!(output.status.success(), "{output:?}");
    daemon.wait(Duration::from_secs(30))?;
    fs::write(cgroup.dir.join("pids.max"), "max")
        .context("the control files are writable once the daemon stopped")?;
    Ok(())
}

/// A daemon that ends without stopping (here SIGKILL, as pid 1 or a crash would; with
/// protection, what `cgroup.kill` or the OOM killer would do) leaves no record of its own: its
/// heartbeat stops, so events its pinned programs raise meanwhile say how long nobody answered,
/// and the next daemon reports it. A documented stop is not reported.
#[test]
fn a_daemon_gone_silent_is_reported_by_the_kernel_and_the_next_daemon() -> Result<()> {
    const SILENT_PIN_DIR: &str = "/sys/fs/bpf/blocker-silent-test";
    let sandbox = Sandbox::new("tamper-silent")?;
    let banned = sandbox.copy_binary("banned")?;
    sandbox.write_policy("test.toml", &deny_and_audit_policy(&[&banned], &[]))?;
    let args = ["--backend", "lsm", "--pin", "--pin-dir", SILENT_PIN_DIR];
    let silent_after =
        blocker_common::heartbeat::INTERVAL_SECS * blocker_common::heartbeat::MISSED_BEFORE_SILENT;
    let (mut first, _) = Daemon::start(&sandbox.policy_dir(), &args)?;
    let first_pid = first.pid();
    first.signal(libc::SIGKILL);
    first.wait(Duration::from_secs(10))?;
    std::thread::sleep(Duration::from_secs(silent_after + 2));
    let error = run_as_launcher(&banned).expect_err("the pins keep enforcing");
    ensure!(error.raw_os_error() == Some(libc::EPERM));

    let (mut second, started) = Daemon::start(&sandbox.policy_dir(), &args)?;
    ensure!(started["adopted"] == true, "{started}");
    let lost = second.wait_for_record(Duration::from_secs(10), |r| r["kind"] == "daemon_lost")?;
    ensure!(lost["pid"] == first_pid, "{lost}");
    ensure!(
        lost["silent_seconds"].as_u64() >= Some(silent_after),
        "{lost}"
    );
    let record = second.wait_for_exec(&banned)?;
    ensure!(
        record["daemon_silent_seconds"].as_u64() >= Some(silent_after),
        "raised while nobody answered: {record}"
    );
    run_as_launcher(&banned).expect_err("still enforcing");
    let record = second.wait_for_exec(&banned)?;
    ensure!(
        record.get("daemon_silent_seconds").is_none(),
        "raised while the daemon answers: {record}"
    );

    let (status, _, _) = second.stop()?;
    ensure!(status.success(), "{status}");
    let (third, started) = Daemon::start(&sandbox.policy_dir(), &args)?;
    ensure!(started["adopted"] == true, "{started}");
    let (status, records, _) = third.stop()?;
    ensure!(status.success(), "{status}");
    ensure!(
        records.iter().all(|r| r["kind"] != "daemon_lost"),
        "a documented stop is not a loss: {records:?}"
    );
    let output = blocker(&["unload", "--pin-dir", SILENT_PIN_DIR])?;
    ensure!(output.status.success(), "{output:?}");
    Ok(())
}

/// `prctl(PR_SET_MM, ...)` as the test runs it: the kernel's own answer, or ours.
fn set_mm(operation: libc::c_int, argument: usize, size: usize) -> std::io::Result<i32> {
    // SAFETY: the kernel reads at most `size` bytes at `argument`, which the caller provides.
    errno(unsafe { libc::prctl(libc::PR_SET_MM, operation, argument, size, 0) })
}

/// Only the daemon's own process is trusted: not another process running the blocker binary (a
/// command writing where its caller says), nor one that made itself "run" it.
#[test]
fn only_the_daemon_is_trusted_not_the_processes_running_its_binary() -> Result<()> {
    let sandbox = Sandbox::new("tamper-trust")?;
    let banned = sandbox.copy_binary("banned")?;
    let hash = blocker_integration_tests::sha256_of(&banned)?;
    let policy_dir = sandbox.policy_dir();
    sandbox.write_policy(
        "test.toml",
        &format!("name = \"test\"\n\n[[rule]]\nid = \"content\"\nsha256 = [\"{hash}\"]\n"),
    )?;
    let scan_root = sandbox.path("scan");
    fs::create_dir_all(&scan_root)?;
    // Something for the command to hash, so that it has a cache to write.
    let hashed = scan_root.join("tool");
    fs::write(&hashed, "#!/bin/sh\n")?;
    fs::set_permissions(&hashed, fs::Permissions::from_mode(0o755))?;
    let scan_root = scan_root.to_str().context("a UTF-8 path")?;
    let (mut daemon, _) = Daemon::start(
        &policy_dir,
        &["--backend", "lsm", "--protect", "--scan-root", scan_root],
    )?;

    // A blocker command writes its hash cache wherever its caller says, through a rename.
    let planted = policy_dir.join("planted.toml");
    let output = blocker(&[
        "resolve",
        policy_dir.to_str().unwrap(),
        "--scan-root",
        scan_root,
        "--hash-cache",
        planted.to_str().unwrap(),
    ])?;
    ensure!(
        !planted.exists(),
        "planted in the policy directory: {output:?}"
    );
    let record = wait_for_tamper(&mut daemon, "file_change")?;
    ensure!(record["comm"] == "blocker", "{record}");

    // A process that gives itself the blocker binary as its executable file. The kernel would
    // answer EBUSY (this process's own binary is still mapped); blocker refuses first.
    let binary = fs::File::open(blocker_bin())?;
    use std::os::fd::AsRawFd;
    expect_eperm(
        "PR_SET_MM_EXE_FILE with the blocker binary",
        set_mm(libc::PR_SET_MM_EXE_FILE, binary.as_raw_fd() as usize, 0),
    )?;
    let record = wait_for_tamper(&mut daemon, "exe_file")?;
    ensure!(record["detail"] == "PR_SET_MM_EXE_FILE", "{record}");
    // `struct prctl_mm_map` with every address 0 (which the kernel refuses: EINVAL) and
    // `exe_fd` at byte 100.
    let mut map = [0u8; 104];
    map[100..].copy_from_slice(&(binary.as_raw_fd() as u32).to_ne_bytes());
    expect_eperm(
        "PR_SET_MM_MAP with the blocker binary",
        set_mm(libc::PR_SET_MM_MAP, map.as_ptr() as usize, map.len()),
    )?;
    map[100..].copy_from_slice(&u32::MAX.to_ne_bytes());
    expect_errno(
        "PR_SET_MM_MAP keeping the executable (left to the kernel)",
        libc::EINVAL,
        set_mm(libc::PR_SET_MM_MAP, map.as_ptr() as usize, map.len()),
    )?;

    let error = run_as_launcher(&banned).expect_err("still enforcing");
    ensure!(error.raw_os_error() == Some(libc::EPERM));
    let output = stop(&daemon)?;
    ensure!(output.status.success(), "{output:?}");
    daemon.wait(Duration::from_secs(30))?;
    Ok(())
}

/// Ends the protected daemon as root can without a signal any hook sees: moved into a cgroup of
/// the test's own (moves are free), which is then killed through its `cgroup.kill`. Reaped, so
/// that its task is freed and its process id free for reuse.
fn kill_through_another_cgroup(daemon: &mut Daemon, cgroup: &TestCgroup) -> Result<()> {
    fs::write(cgroup.dir.join("cgroup.procs"), daemon.pid().to_string())?;
    fs::write(cgroup.dir.join("cgroup.kill"), "1")?;
    let status = daemon.wait(Duration::from_secs(30))?;
    ensure!(
        std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGKILL),
        "{status}"
    );
    Ok(())
}

/// What a child forked with the dead daemon's process id reports through its exit status.
mod reused_pid {
    pub const REFUSED: i32 = 0;
    pub const ALLOWED: i32 = 1;
    pub const OTHER_ERROR: i32 = 2;
    pub const OTHER_PID: i32 = 3;
}

/// Forks a child with process id `pid` (through `ns_last_pid`; retried while something else
/// takes it first) that creates `file`; returns what the child reports (see `reused_pid`).
fn create_with_pid(pid: u32, file: &Path) -> Result<i32> {
    let file = std::ffi::CString::new(file.as_os_str().as_encoded_bytes())?;
    for _ in 0..20 {
        fs::write("/proc/sys/kernel/ns_last_pid", (pid - 1).to_string())?;
        // SAFETY: the child makes system calls and exits: nothing that needs the parent's other
        // threads, and no allocation.
        let child = unsafe { libc::fork() };
        if child == 0 {
            unsafe {
                if libc::getpid() as u32 != pid {
                    libc::_exit(reused_pid::OTHER_PID);
                }
                let fd = libc::open(file.as_ptr(), libc::O_CREAT | libc::O_WRONLY, 0o644);
                libc::_exit(match fd {
                    0.. => reused_pid::ALLOWED,
                    _ if *libc::__errno_location() == libc::EPERM => reused_pid::REFUSED,
                    _ => reused_pid::OTHER_ERROR,
                });
            }
        }
        ensure!(child > 0, "fork: {}", std::io::Error::last_os_error());
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        ensure!(unsafe { libc::waitpid(child, &mut status, 0) } == child);
        ensure!(libc::WIFEXITED(status), "wait status {status:#x}");
        if libc::WEXITSTATUS(status) != reused_pid::OTHER_PID {
            return Ok(libc::WEXITSTATUS(status));
        }
    }
    anyhow::bail!("no child got process id {pid} in 20 forks")
}

/// Runs `program args` traced by this process from its first instruction (`PTRACE_TRACEME`
/// before exec, as `strace` does) and returns its exit status.
fn run_traced(program: &Path, args: &[&str]) -> Result<i32> {
    let mut argv = vec![std::ffi::CString::new(
        program.as_os_str().as_encoded_bytes(),
    )?];
    for arg in args {
        argv.push(std::ffi::CString::new(*arg)?);
    }
    let mut argv_pointers: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    argv_pointers.push(std::ptr::null());
    // SAFETY: the child only makes system calls before exec: no allocation.
    let child = unsafe { libc::fork() };
    if child == 0 {
        unsafe {
            libc::ptrace(libc::PTRACE_TRACEME, 0, 0, 0);
            libc::execv(argv_pointers[0], argv_pointers.as_ptr());
            libc::_exit(127);
        }
    }
    ensure!(child > 0, "fork: {}", std::io::Error::last_os_error());
    loop {
        let mut status = 0;
        // SAFETY: waits for the child forked above, which this process traces.
        ensure!(unsafe { libc::waitpid(child, &mut status, 0) } == child);
        if libc::WIFEXITED(status) {
            return Ok(libc::WEXITSTATUS(status));
        }
        ensure!(!libc::WIFSIGNALED(status), "wait status {status:#x}");
        // The stop after exec is the tracer's; any other stop is a signal to pass on.
        let signal = match libc::WSTOPSIG(status) {
            libc::SIGTRAP => 0,
            signal => signal,
        };
        // SAFETY: resumes the stopped child.
        unsafe { libc::ptrace(libc::PTRACE_CONT, child, 0, signal) };
    }
}

/// Once the protected daemon is gone without a documented stop, the next daemon must be able to
/// take the pins over, so the blocker binary is trusted in its place: but not a process that
/// got the dead daemon's process id, and not the blocker binary while traced.
#[test]
fn a_dead_daemons_pid_and_a_traced_blocker_binary_are_not_trusted() -> Result<()> {
    const GONE_PIN_DIR: &str = "/sys/fs/bpf/blocker-gone-test";
    let sandbox = Sandbox::new("tamper-gone")?;
    let banned = sandbox.copy_binary("banned")?;
    let policy_dir = sandbox.policy_dir();
    sandbox.write_policy("test.toml", &deny_and_audit_policy(&[&banned], &[]))?;
    let args = [
        "--backend",
        "lsm",
        "--protect",
        "--pin",
        "--pin-dir",
        GONE_PIN_DIR,
    ];
    let (mut daemon, started) = Daemon::start(&policy_dir, &args)?;
    ensure!(started["protected"] == true, "{started}");
    let pid = daemon.pid();
    let cgroup = TestCgroup::new(Path::new(CGROUP_ROOT).join("blocker-gone"))?;
    kill_through_another_cgroup(&mut daemon, &cgroup)?;
    let error = run_as_launcher(&banned).expect_err("the pins keep enforcing");
    ensure!(error.raw_os_error() == Some(libc::EPERM));

    let reported = create_with_pid(pid, &policy_dir.join("reused.toml"))?;
    ensure!(
        reported == reused_pid::REFUSED,
        "a process with the dead daemon's id {pid} creating a policy: exit {reported}"
    );
    let status = run_traced(&blocker_bin(), &["unload", "--pin-dir", GONE_PIN_DIR])?;
    ensure!(status != 0, "a traced `blocker unload` removed the pins");
    ensure!(Path::new(GONE_PIN_DIR).exists());

    // No daemon will ever report the one killed here: the unload that follows says so.
    let events_file = daemon
        .events_file()
        .to_str()
        .context("events file")?
        .to_owned();
    let output = blocker(&[
        "unload",
        "--pin-dir",
        GONE_PIN_DIR,
        "--events-file",
        &events_file,
    ])?;
    ensure!(output.status.success(), "{output:?}");
    let (_, status) = run_as_launcher(&banned)?;
    ensure!(status.success(), "runs once unloaded: {status}");
    let records = blocker_integration_tests::events_in(Path::new(&events_file))?;
    let unloaded = records.last().context("no records")?;
    ensure!(
        unloaded["kind"] == "unloaded"
            && unloaded["pin_dir"] == GONE_PIN_DIR
            && unloaded["daemon_lost"]["pid"] == pid
            && unloaded["uid"] == 0,
        "{unloaded}"
    );
    Ok(())
}
