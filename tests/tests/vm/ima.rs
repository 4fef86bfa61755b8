//! In-kernel content checks on Debian's kernel (run inside the VM by `cargo xtask test`): the
//! sleepable LSM program hashes the exec'd file with IMA's `bpf_ima_file_hash`, refuses banned
//! contents under any name without a userspace scan, and caches each inode's verdict until the
//! file or the content bans change. Cache hits and misses are read from the kernel's counters.

use std::{
    fs,
    io::Write,
    os::unix::fs::{FileExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use aya::maps::{loaded_maps, Array, Map, MapData, PerCpuArray};
use blocker_common::{counter, names};
use blocker_integration_tests::{
    harmless_binary, sha256_of, start_content_daemon, start_content_daemon_with, Daemon, Sandbox,
};

/// The kernel keeps at most this many bytes of a map's name, without the terminating NUL.
const KERNEL_NAME_LEN: usize = 15;

#[test]
fn banned_content_is_refused_under_any_name_without_a_scan() -> Result<()> {
    let sandbox = Sandbox::new("ima-names")?;
    let banned = with_content(&sandbox, "banned", b"banned content", 0)?;
    let allowed = with_content(&sandbox, "allowed", b"allowed content", 0)?;
    let (mut daemon, _) = start_content_daemon(&sandbox, "ban-content", &[&banned])?;

    // Copies made after the daemon started, in a directory it does not scan: only the kernel's
    // hashing can recognise them.
    let copy = sandbox.path("copy");
    fs::copy(&banned, &copy)?;
    let renamed = sandbox.path("renamed");
    fs::rename(&copy, &renamed)?;
    let banned_sha256 = sha256_of(&banned)?;
    for path in [&banned, &renamed] {
        expect_eperm(path)?;
        let record = daemon.wait_for_exec(path)?;
        ensure!(record["rule"] == "ban-content", "{record}");
        ensure!(record["enforcement"] == "eperm", "{record}");
        ensure!(
            record["inode"] == fs::metadata(path)?.ino(),
            "the event names the exec'd inode: {record}"
        );
        ensure!(
            record["sha256"] == banned_sha256.as_str(),
            "the event carries the hash the kernel computed: {record}"
        );
    }
    // Answered from the verdict cache this time: the cached verdict keeps its hash.
    expect_eperm(&renamed)?;
    let cached = daemon.wait_for_exec(&renamed)?;
    ensure!(
        cached["sha256"] == banned_sha256.as_str(),
        "a cached verdict's event carries the hash: {cached}"
    );
    expect_success(&allowed)?;

    let (status, _, log) = daemon.stop()?;
    ensure!(status.success(), "daemon exit: {status}");
    ensure!(
        log.iter()
            .any(|line| line.contains("content checks at exec: on")),
        "the daemon says content checks are on: {log:?}"
    );
    expect_success(&renamed)?;
    Ok(())
}

#[test]
fn verdicts_are_cached_until_the_file_or_the_bans_change() -> Result<()> {
    let sandbox = Sandbox::new("ima-cache")?;
    let banned_source = with_content(&sandbox, "banned-source", b"banned content", 0)?;
    let allowed = with_content(&sandbox, "allowed", b"allowed content", 0)?;
    let other = with_content(&sandbox, "other", b"other allowed content", 0)?;
    let (_daemon, _) = start_content_daemon(&sandbox, "ban-content", &[&banned_source])?;
    let mut kernel = KernelMaps::find()?;

    let before = kernel.counters()?;
    expect_success(&allowed)?;
    let after_first = kernel.counters()?;
    ensure!(
        after_first.since(&before) == (0, 1),
        "the first exec hashes: {:?}",
        after_first.since(&before)
    );
    expect_success(&allowed)?;
    let after_second = kernel.counters()?;
    ensure!(
        after_second.since(&after_first) == (1, 0),
        "the second exec is answered from the cache: {:?}",
        after_second.since(&after_first)
    );

    // An attribute change (here chmod) forgets the verdict.
    fs::set_permissions(&allowed, fs::Permissions::from_mode(0o755))?;
    let after_chmod = kernel.counters()?;
    ensure!(after_chmod.invalidated > after_second.invalidated, "chmod");
    expect_success(&allowed)?;
    ensure!(
        kernel.counters()?.since(&after_chmod) == (0, 1),
        "after chmod the file is hashed again"
    );

    // Banned content written into the cached inode itself: the open for writing forgets the
    // verdict, so the next exec hashes the new content and is refused.
    let inode = fs::metadata(&allowed)?.ino();
    let before_write = kernel.counters()?;
    fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(&allowed)?
        .write_all(&fs::read(&banned_source)?)?;
    ensure!(fs::metadata(&allowed)?.ino() == inode, "same inode");
    let after_write = kernel.counters()?;
    ensure!(
        after_write.invalidated > before_write.invalidated,
        "the write open forgets the verdict"
    );
    expect_eperm(&allowed)?;
    ensure!(
        kernel.counters()?.since(&after_write) == (0, 1),
        "the changed file is hashed again"
    );

    // A new policy generation makes every cached verdict stale.
    expect_success(&other)?;
    expect_success(&other)?;
    let cached = kernel.counters()?;
    kernel.bump_policy_generation()?;
    expect_success(&other)?;
    let after_bump = kernel.counters()?;
    ensure!(
        after_bump.since(&cached) == (0, 1),
        "after a generation bump the file is hashed again: {:?}",
        after_bump.since(&cached)
    );
    expect_success(&other)?;
    ensure!(
        kernel.counters()?.since(&after_bump) == (1, 0),
        "and cached again under the new generation"
    );
    Ok(())
}

/// A memfd can be written through a descriptor opened before any verdict existed, and it can
/// be exec'd while that descriptor is open (no ETXTBSY), so no open for writing would ever
/// announce the change: an inode without a name is hashed at every exec, never cached.
#[test]
fn an_unnamed_file_is_hashed_at_every_exec() -> Result<()> {
    let sandbox = Sandbox::new("ima-memfd")?;
    let banned = with_content(&sandbox, "banned", b"banned content", 0)?;
    let (_daemon, _) = start_content_daemon(&sandbox, "ban-content", &[&banned])?;
    let kernel = KernelMaps::find()?;

    // Not close-on-exec, so the child reaches it as /proc/self/fd/N.
    // SAFETY: a valid NUL-terminated name; the descriptor is owned by `memfd` from here on.
    let fd = unsafe { libc::memfd_create(c"blocker-test".as_ptr(), 0) };
    ensure!(fd >= 0, "memfd_create: {}", std::io::Error::last_os_error());
    let mut memfd = unsafe { <fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd) };
    let mut allowed = fs::read(harmless_binary())?;
    allowed.extend_from_slice(b"allowed content");
    memfd.write_all(&allowed)?;
    let path = PathBuf::from(format!("/proc/self/fd/{fd}"));

    for _ in 0..2 {
        let before = kernel.counters()?;
        expect_success(&path)?;
        ensure!(
            kernel.counters()?.since(&before) == (0, 1),
            "every exec of a memfd is hashed"
        );
    }
    let banned_content = fs::read(&banned)?;
    memfd.set_len(0)?;
    memfd.write_all_at(&banned_content, 0)?;
    expect_eperm(&path)?;
    Ok(())
}

/// Prints what hashing costs at exec under QEMU's emulation; asserts nothing about time.
#[test]
fn measure_exec_cost_with_and_without_the_cache() -> Result<()> {
    const EXECS: usize = 20;
    let sandbox = Sandbox::new("ima-cost")?;
    let banned = with_content(&sandbox, "banned", b"banned content", 0)?;
    let files = [
        (
            "1 MiB",
            with_content(&sandbox, "one-mib", b"allowed", 1 << 20)?,
        ),
        (
            "20 MiB",
            with_content(&sandbox, "twenty-mib", b"allowed", 20 << 20)?,
        ),
    ];
    let mut baseline = Vec::new();
    for (_, path) in &files {
        baseline.push(median_exec_time(path, EXECS, || Ok(()))?);
    }

    let (_daemon, _) = start_content_daemon(&sandbox, "ban-content", &[&banned])?;
    let mut kernel = KernelMaps::find()?;
    for ((size, path), without_blocker) in files.iter().zip(baseline) {
        let before = kernel.counters()?;
        let uncached = median_exec_time(path, EXECS, || kernel.bump_policy_generation())?;
        let middle = kernel.counters()?;
        let cached = median_exec_time(path, EXECS, || Ok(()))?;
        let after = kernel.counters()?;
        ensure!(middle.since(&before) == (0, EXECS as u64), "all hashed");
        ensure!(after.since(&middle) == (EXECS as u64, 0), "all cached");
        // Straight to stdout, past libtest's capture of `println!`, so the numbers reach the
        // VM's console log even when the test passes.
        writeln!(
            std::io::stdout(),
            "exec cost {size}: median of {EXECS} execs without blocker {:.2} ms, hashed {:.2} \
             ms, from the verdict cache {:.2} ms",
            millis(without_blocker),
            millis(uncached),
            millis(cached)
        )?;
    }
    Ok(())
}

/// Starts the daemon with one deny rule `rule` on the contents of `files`, scanning an empty
/// directory so that every content match is the kernel's own.
/// An `audit` rule naming a file by path does not hide a `deny` rule for its content.
#[test]
fn a_path_audit_does_not_hide_a_content_deny() -> Result<()> {
    let sandbox = Sandbox::new("ima-strictest")?;
    let banned = with_content(&sandbox, "banned", b"banned and audited", 0)?;
    sandbox.write_policy(
        "audit.toml",
        &format!(
            "name = \"audit\"\n[[rule]]\nid = \"watch\"\naction = \"audit\"\npaths = [{:?}]\n",
            banned.display().to_string()
        ),
    )?;
    let (mut daemon, _) = start_content_daemon(&sandbox, "ban-content", &[&banned])?;
    expect_eperm(&banned)?;
    let record = daemon.wait_for_exec(&banned)?;
    ensure!(record["rule"] == "ban-content", "{record}");
    let (status, _, _) = daemon.stop()?;
    ensure!(status.success(), "daemon exit: {status}");
    Ok(())
}

/// A runnable copy of the harmless binary made distinct by `tag` and padded with zeros to at
/// least `size` bytes; the ELF loader ignores bytes past the segments it maps.
/// An unprivileged user mounts an overlay in a user namespace, runs an allowed program through
/// it, writes banned content straight into the upper layer's file (which the overlay inode's
/// hooks never see) and runs it again through the overlay. No verdict on an overlay is trusted,
/// cached or fresh: both execs are unhashable, recorded by default and refused where the policy
/// says `unhashable = "deny"`.
#[test]
fn a_user_namespace_overlay_is_never_judged_by_content() -> Result<()> {
    for setting in ["audit", "deny"] {
        let sandbox = Sandbox::new("ima-overlay")?;
        let banned = with_content(&sandbox, "banned", b"banned content", 0)?;
        let allowed = with_content(&sandbox, "allowed", b"allowed content", 0)?;
        let (daemon, _) = start_content_daemon_with(
            &sandbox,
            "ban-content",
            &[&banned],
            &format!("unhashable = \"{setting}\""),
        )?;
        let layers = overlay_layers(&sandbox, &allowed)?;
        for path in ["", "upper", "upper/program", "work", "merged"] {
            std::os::unix::fs::chown(layers.join(path), Some(NOBODY), Some(NOBODY))?;
        }
        let c_path =
            |path: PathBuf| std::ffi::CString::new(path.into_os_string().into_encoded_bytes());
        let merged = c_path(layers.join("merged"))?;
        let program = c_path(layers.join("merged/program"))?;
        let upper_program = c_path(layers.join("upper/program"))?;
        let options = std::ffi::CString::new(overlay_options(&layers))?;
        let banned_bytes = fs::read(&banned)?;
        let id_map = format!("0 {NOBODY} 1");
        let expected = if setting == "deny" { REFUSED } else { 0 };

        // SAFETY: the child makes system calls on memory prepared before the fork, then exits.
        let child = unsafe { libc::fork() };
        if child == 0 {
            let code = unsafe {
                as_user_in_own_namespace(NOBODY, &id_map)
                    .and_then(|()| mount_overlay(&merged, &options))
                    .and_then(|()| expect_exit(&program, expected))
                    .and_then(|()| overwrite(&upper_program, &banned_bytes))
                    .and_then(|()| expect_exit(&program, expected))
                    .err()
                    .unwrap_or(0)
            };
            unsafe { libc::_exit(code) };
        }
        let mut status = 0;
        // SAFETY: waits for the child forked above.
        ensure!(unsafe { libc::waitpid(child, &mut status, 0) } == child);
        let outcome = if libc::WIFEXITED(status) {
            libc::WEXITSTATUS(status)
        } else {
            -1
        };
        let events_file = daemon.events_file().to_owned();
        let (_, _, log) = daemon.stop()?;
        match outcome {
            0 => {}
            10 => bail!("could not become an unprivileged user"),
            15 => bail!("an unprivileged user could not make a user namespace"),
            16 => bail!("could not map the user into its user namespace"),
            11 => bail!("could not mount the overlay in the user namespace"),
            12 | 14 => bail!(
                "{setting}: an exec through the overlay did not end as expected: {:?}",
                content_lines(&log)
            ),
            13 => bail!("could not write the upper layer's file"),
            other => bail!("the user's child ended with {other} (wait status {status:#x})"),
        }
        let unhashable = unhashable_execs(&events_file, &layers.join("merged/program"))?;
        ensure!(
            unhashable.len() == 2
                && unhashable
                    .iter()
                    .all(|r| r["uid"] == NOBODY && r["action"] == setting),
            "{setting}: both execs are recorded as unhashable: {unhashable:?}"
        );
    }
    Ok(())
}

/// The same through an overlay the machine mounted (a container's root filesystem).
#[test]
fn a_machine_overlay_is_never_judged_by_content() -> Result<()> {
    for setting in ["audit", "deny"] {
        let sandbox = Sandbox::new("ima-root-overlay")?;
        let banned = with_content(&sandbox, "banned", b"banned content", 0)?;
        let allowed = with_content(&sandbox, "allowed", b"allowed content", 0)?;
        let (daemon, _) = start_content_daemon_with(
            &sandbox,
            "ban-content",
            &[&banned],
            &format!("unhashable = \"{setting}\""),
        )?;
        let layers = overlay_layers(&sandbox, &allowed)?;
        let status = Command::new("mount")
            .args(["-t", "overlay", "overlay", "-o", &overlay_options(&layers)])
            .arg(layers.join("merged"))
            .status()?;
        ensure!(status.success(), "mounting the overlay: {status}");
        let program = layers.join("merged/program");
        let run = || match setting {
            "deny" => expect_eperm(&program),
            _ => expect_success(&program),
        };
        let outcome = run()
            .and_then(|()| Ok(fs::write(layers.join("upper/program"), fs::read(&banned)?)?))
            .and_then(|()| run());
        let _ = Command::new("umount").arg(layers.join("merged")).status();
        let events_file = daemon.events_file().to_owned();
        let (_, _, log) = daemon.stop()?;
        outcome.with_context(|| format!("{setting}: {:?}", content_lines(&log)))?;
        let unhashable = unhashable_execs(&events_file, &program)?;
        ensure!(
            unhashable.len() == 2 && unhashable.iter().all(|r| r["action"] == setting),
            "{setting}: both execs are recorded as unhashable: {unhashable:?}"
        );
    }
    Ok(())
}

const NOBODY: u32 = 65534;

/// `layers/{lower,upper,work,merged}` with `program` in the upper layer.
fn overlay_layers(sandbox: &Sandbox, program: &Path) -> Result<PathBuf> {
    let layers = sandbox.path("layers");
    for layer in ["lower", "upper", "work", "merged"] {
        fs::create_dir_all(layers.join(layer))?;
    }
    fs::copy(program, layers.join("upper/program"))?;
    Ok(layers)
}

fn overlay_options(layers: &Path) -> String {
    format!(
        "lowerdir={},upperdir={},workdir={}",
        layers.join("lower").display(),
        layers.join("upper").display(),
        layers.join("work").display()
    )
}

/// The daemon's lines about content checks, for a failure message.
fn content_lines(log: &[String]) -> Vec<&String> {
    log.iter()
        .filter(|line| line.contains("content checks:") || line.contains("unhashable"))
        .collect()
}

/// The exec records of `path` under the pseudo-rule `unhashable`, from the events file.
fn unhashable_execs(events_file: &Path, path: &Path) -> Result<Vec<serde_json::Value>> {
    Ok(blocker_integration_tests::events_in(events_file)?
        .into_iter()
        .filter(|r| {
            r["kind"] == "exec"
                && r["operation"] == "exec"
                && r["rule"] == "unhashable"
                && r["path"] == path.to_str().unwrap_or_default()
        })
        .collect())
}

/// Exit status of a grandchild whose exec was refused with EPERM.
const REFUSED: i32 = 126;

/// Becomes `uid` (and the group of that number), then root of a new user namespace with a
/// mount namespace of its own, as any user can; `id_map` maps root there to `uid` (prepared
/// before the fork: the child allocates nothing). Exit codes 10, 15, 16 on failure.
unsafe fn as_user_in_own_namespace(uid: u32, id_map: &str) -> Result<(), i32> {
    if libc::setgid(uid) != 0 || libc::setuid(uid) != 0 {
        return Err(10);
    }
    // Changing credentials made the process undumpable, which leaves its /proc files to root:
    // a user's own process is dumpable.
    if libc::prctl(libc::PR_SET_DUMPABLE, 1) != 0 {
        return Err(10);
    }
    if libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) != 0 {
        return Err(15);
    }
    for (file, content) in [
        (c"/proc/self/setgroups", "deny"),
        (c"/proc/self/uid_map", id_map),
        (c"/proc/self/gid_map", id_map),
    ] {
        let fd = libc::open(file.as_ptr(), libc::O_WRONLY);
        if fd < 0 || libc::write(fd, content.as_ptr().cast(), content.len()) < 0 {
            return Err(16);
        }
        libc::close(fd);
    }
    Ok(())
}

/// Exit code 11 on failure.
unsafe fn mount_overlay(target: &std::ffi::CStr, options: &std::ffi::CStr) -> Result<(), i32> {
    let mounted = libc::mount(
        c"overlay".as_ptr(),
        target.as_ptr(),
        c"overlay".as_ptr(),
        0,
        options.as_ptr().cast(),
    );
    if mounted != 0 {
        return Err(11);
    }
    Ok(())
}

/// Runs `program` in a child and checks its exit status: `REFUSED` for an exec refused with
/// EPERM. Exit code 12 if a run that should succeed did not, 14 if a refusal did not happen.
unsafe fn expect_exit(program: &std::ffi::CStr, expected: i32) -> Result<(), i32> {
    let failure = if expected == 0 { 12 } else { 14 };
    let pid = libc::fork();
    if pid == 0 {
        let argv = [program.as_ptr(), std::ptr::null()];
        let envp = [std::ptr::null::<libc::c_char>()];
        libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
        let refused = *libc::__errno_location() == libc::EPERM;
        libc::_exit(if refused { REFUSED } else { 127 });
    }
    let mut status = 0;
    if pid < 0 || libc::waitpid(pid, &mut status, 0) != pid {
        return Err(failure);
    }
    if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == expected {
        Ok(())
    } else {
        Err(failure)
    }
}

/// Replaces the content of the file at `path` with `bytes`. Exit code 13 on failure.
unsafe fn overwrite(path: &std::ffi::CStr, bytes: &[u8]) -> Result<(), i32> {
    let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_TRUNC);
    if fd < 0 || libc::write(fd, bytes.as_ptr().cast(), bytes.len()) != bytes.len() as isize {
        return Err(13);
    }
    libc::close(fd);
    Ok(())
}

/// A file over the hash limit is not hashed at exec: with content rules in force its exec is
/// unhashable, recorded by default and refused where a policy says `unhashable = "deny"`; the
/// loader mapping it meets the same check. Without content rules nothing is hashed at all.
#[test]
fn files_over_the_hash_limit_are_unhashable_and_follow_the_setting() -> Result<()> {
    let over_the_default = (u64::from(blocker_common::DEFAULT_HASH_LIMIT_MIB) << 20) + 1;
    // The default bound, then a policy's smaller one, which the kernel must read too.
    for (setting, limit, size) in [
        ("audit", "", over_the_default),
        ("deny", "hash_limit_mib = 1", (1 << 20) + 1),
    ] {
        let sandbox = Sandbox::new("ima-unhashable")?;
        let banned = with_content(&sandbox, "banned", b"banned content", 0)?;
        let big = with_content(&sandbox, "big", b"", 0)?;
        // Sparse: nothing reads it, so it costs nothing.
        fs::OpenOptions::new()
            .write(true)
            .open(&big)?
            .set_len(size)?;
        sandbox.write_policy(
            "content.toml",
            &format!(
                "name = \"content\"\nunhashable = \"{setting}\"\n{limit}\n[[rule]]\n\
                 id = \"ban\"\nsha256 = [\"{}\"]\n",
                sha256_of(&banned)?
            ),
        )?;
        let (mut daemon, _) = Daemon::start(
            &sandbox.policy_dir(),
            &[
                "--backend",
                "lsm",
                "--scan-root",
                &sandbox.path("none").display().to_string(),
            ],
        )?;
        match setting {
            "deny" => expect_eperm(&big)?,
            _ => expect_success(&big)?,
        }
        let record = daemon.wait_for_exec(&big)?;
        ensure!(record["rule"] == "unhashable", "{record}");
        ensure!(record["action"] == setting, "{record}");
        ensure!(
            record["reason"]
                .as_str()
                .is_some_and(|reason| reason.contains("could not judge")),
            "{record}"
        );
        let (status, _, log) = daemon.stop()?;
        ensure!(status.success(), "daemon exit: {status}");
        ensure!(
            log.iter().any(|line| line.contains("over the hash limit")
                && !line.contains(" 0 over the hash limit")),
            "the daemon counts it: {log:?}"
        );
    }

    // No content rule: the same file is nobody's business.
    let sandbox = Sandbox::new("ima-unhashable-no-content")?;
    let big = with_content(&sandbox, "big", b"", 0)?;
    fs::OpenOptions::new()
        .write(true)
        .open(&big)?
        .set_len(over_the_default)?;
    let other = sandbox.copy_binary("other")?;
    sandbox.write_policy(
        "paths.toml",
        &format!(
            "name = \"paths\"\nunhashable = \"deny\"\n[[rule]]\nid = \"ban\"\npaths = [\"{}\"]\n",
            other.display()
        ),
    )?;
    let (daemon, _) = Daemon::start(&sandbox.policy_dir(), &["--backend", "lsm"])?;
    expect_success(&big)?;
    let (status, records, _) = daemon.stop()?;
    ensure!(status.success(), "daemon exit: {status}");
    ensure!(
        !records.iter().any(|r| r["rule"] == "unhashable"),
        "{records:?}"
    );
    Ok(())
}

fn with_content(sandbox: &Sandbox, name: &str, tag: &[u8], size: usize) -> Result<PathBuf> {
    let mut content = fs::read(harmless_binary())?;
    content.extend_from_slice(tag);
    if content.len() < size {
        content.resize(size, 0);
    }
    let path = sandbox.path(name);
    fs::write(&path, content)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

fn expect_eperm(path: &Path) -> Result<()> {
    match Command::new(path).status() {
        Err(error) if error.raw_os_error() == Some(libc::EPERM) => Ok(()),
        other => bail!("{} must be refused with EPERM: {other:?}", path.display()),
    }
}

fn expect_success(path: &Path) -> Result<()> {
    let status = Command::new(path)
        .status()
        .with_context(|| format!("running {}", path.display()))?;
    ensure!(status.success(), "{}: {status}", path.display());
    Ok(())
}

/// The median wall time of `count` runs of `path`, each after `prepare` (not timed).
fn median_exec_time(
    path: &Path,
    count: usize,
    mut prepare: impl FnMut() -> Result<()>,
) -> Result<Duration> {
    let mut times = Vec::with_capacity(count);
    for _ in 0..count {
        prepare()?;
        let started = Instant::now();
        expect_success(path)?;
        times.push(started.elapsed());
    }
    times.sort();
    Ok(times[count / 2])
}

fn millis(duration: Duration) -> f64 {
    duration.as_secs_f64() * 1e3
}

/// The running daemon's maps, opened by id as a second user of them.
struct KernelMaps {
    counters: PerCpuArray<MapData, u64>,
    policy_generation: Array<MapData, u32>,
}

#[derive(Debug)]
struct Counters {
    hits: u64,
    misses: u64,
    invalidated: u64,
}

impl Counters {
    /// (cache hits, cache misses) since `earlier`.
    fn since(&self, earlier: &Counters) -> (u64, u64) {
        (self.hits - earlier.hits, self.misses - earlier.misses)
    }
}

impl KernelMaps {
    fn find() -> Result<Self> {
        Ok(Self {
            counters: PerCpuArray::try_from(newest_map(names::COUNTERS_MAP)?)?,
            policy_generation: Array::try_from(newest_map(names::POLICY_GENERATION_MAP)?)?,
        })
    }

    fn counters(&self) -> Result<Counters> {
        let total = |index: u32| -> Result<u64> { Ok(self.counters.get(&index, 0)?.iter().sum()) };
        Ok(Counters {
            hits: total(counter::VERDICT_CACHE_HIT)?,
            misses: total(counter::VERDICT_CACHE_MISS)?,
            invalidated: total(counter::VERDICT_INVALIDATED)?,
        })
    }

    /// What the daemon does after changing the content bans.
    fn bump_policy_generation(&mut self) -> Result<()> {
        let current = self.policy_generation.get(&0, 0)?;
        self.policy_generation.set(0, current.wrapping_add(1), 0)?;
        Ok(())
    }
}

/// The most recently created map called `name`: map ids only grow, and maps of daemons that
/// earlier tests stopped may linger until the kernel frees them.
fn newest_map(name: &str) -> Result<Map> {
    let kernel_name = &name[..name.len().min(KERNEL_NAME_LEN)];
    let mut newest = None;
    for info in loaded_maps() {
        let info = info?;
        if info.name_as_str() == Some(kernel_name) {
            newest = newest.max(Some(info.id()));
        }
    }
    let id = newest.with_context(|| format!("no loaded map called {kernel_name}"))?;
    Ok(Map::from_map_data(MapData::from_id(id)?)?)
}

#[test]
fn a_reload_banning_a_cached_allowed_file_takes_effect_at_once() -> Result<()> {
    let sandbox = Sandbox::new("ima-reload")?;
    let banned = with_content(&sandbox, "banned", b"banned content", 0)?;
    let later = with_content(&sandbox, "banned-later", b"allowed until the reload", 0)?;
    let (mut daemon, _) = start_content_daemon(&sandbox, "ban-content", &[&banned])?;
    // Allowed twice: its verdict is in the cache.
    expect_success(&later)?;
    expect_success(&later)?;

    let hashes = [sha256_of(&banned)?, sha256_of(&later)?];
    sandbox.write_policy(
        "content.toml",
        &format!(
            "name = \"content\"\n[[rule]]\nid = \"ban-content\"\nsha256 = [{:?}, {:?}]\n",
            hashes[0], hashes[1]
        ),
    )?;
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_record(Duration::from_secs(60), |r| r["kind"] == "reloaded")?;
    expect_eperm(&later)?;
    let record = daemon.wait_for_exec(&later)?;
    ensure!(record["rule"] == "ban-content", "{record}");
    Ok(())
}

#[test]
fn banned_scripts_and_copies_on_other_filesystems_are_refused_by_content() -> Result<()> {
    let sandbox = Sandbox::new("ima-script")?;
    let script = sandbox.path("banned-script.sh");
    fs::write(&script, "#!/bin/sh\n# banned by its own content\nexit 0\n")?;
    fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
    let program = with_content(&sandbox, "program", b"banned program", 0)?;
    expect_success(&script)?;
    let (mut daemon, _) = start_content_daemon(&sandbox, "ban-content", &[&script, &program])?;

    // /run is another tmpfs than /tmp: another filesystem, other inode numbers.
    let elsewhere = PathBuf::from(format!("/run/blocker-ima-{}", std::process::id()));
    fs::create_dir_all(&elsewhere)?;
    let script_copy = elsewhere.join("renamed-script");
    let program_copy = elsewhere.join("renamed-program");
    fs::copy(&script, &script_copy)?;
    fs::copy(&program, &program_copy)?;
    ensure!(
        fs::metadata(&program_copy)?.dev() != fs::metadata(&program)?.dev(),
        "the copies are on another filesystem"
    );
    for path in [&script, &script_copy, &program_copy] {
        expect_eperm(path)?;
        let record = daemon.wait_for_exec(path)?;
        ensure!(record["rule"] == "ban-content", "{record}");
    }
    fs::remove_dir_all(&elsewhere)?;
    Ok(())
}
