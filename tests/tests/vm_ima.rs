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
    harmless_binary, sha256_of, start_content_daemon, Daemon, Sandbox,
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
    for path in [&banned, &renamed] {
        expect_eperm(path)?;
        let record = daemon.wait_for_exec(path)?;
        ensure!(record["rule"] == "ban-content", "{record}");
        ensure!(record["enforcement"] == "eperm", "{record}");
        ensure!(
            record["inode"] == fs::metadata(path)?.ino(),
            "the event names the exec'd inode: {record}"
        );
    }
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
/// A file over the hash limit is not hashed at exec: with content rules in force its exec is
/// unhashable, recorded by default and refused where a policy says `unhashable = "deny"`; the
/// loader mapping it meets the same check. Without content rules nothing is hashed at all.
#[test]
fn files_over_the_hash_limit_are_unhashable_and_follow_the_setting() -> Result<()> {
    let over_the_limit = (u64::from(blocker_common::DEFAULT_HASH_LIMIT_MIB) << 20) + 1;
    for setting in ["audit", "deny"] {
        let sandbox = Sandbox::new("ima-unhashable")?;
        let banned = with_content(&sandbox, "banned", b"banned content", 0)?;
        let big = with_content(&sandbox, "big", b"", 0)?;
        // Sparse: nothing reads it, so it costs nothing.
        fs::OpenOptions::new()
            .write(true)
            .open(&big)?
            .set_len(over_the_limit)?;
        sandbox.write_policy(
            "content.toml",
            &format!(
                "name = \"content\"\nunhashable = \"{setting}\"\n[[rule]]\nid = \"ban\"\n\
                 sha256 = [\"{}\"]\n",
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
                .is_some_and(|reason| reason.contains("could not hash")),
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
        .set_len(over_the_limit)?;
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
