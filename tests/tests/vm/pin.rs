//! Enforcement that outlives the daemon (run inside the VM by `cargo xtask test`, where pinning
//! is safe): `blocker run --pin` leaves its programs pinned, a `kill -9` of the daemon opens no
//! door, the next daemon adopts the pins and delivers what happened meanwhile, and `blocker
//! unload` removes them. Pins forged while no daemon ran are not adopted: the next daemon loads
//! its own programs and replaces them.

use std::{
    collections::BTreeSet,
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::Path,
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use aya::programs::links::{FdLink, PinnedLink};
use blocker_common::{lsm_programs, names, BanEntry, FileKey};
use blocker_integration_tests::{
    blocker_bin,
    bpf::{command, listed_ids, pin_new_hash_map},
    deny_and_audit_policy, harmless_binary, run_as_launcher, sha256_of, Daemon, Sandbox,
    STARTUP_TIMEOUT,
};

const PIN_DIR: &str = "/sys/fs/bpf/blocker-vm-test";
const FORGED_PIN_DIR: &str = "/sys/fs/bpf/blocker-vm-forged";
const KILL_PIN_DIR: &str = "/sys/fs/bpf/blocker-vm-kill";
const CACHE_PIN_DIR: &str = "/sys/fs/bpf/blocker-vm-cache";

fn assert_denied(path: &Path) -> Result<()> {
    let error = run_as_launcher(path).expect_err("a banned exec must fail");
    ensure!(
        error.raw_os_error() == Some(libc::EPERM),
        "expected EPERM running {}, got {error}",
        path.display()
    );
    Ok(())
}

fn unload(pin_dir: &str) -> Result<String> {
    unload_recording_to(pin_dir, &["--no-events-file", "--no-journald"])
}

/// `blocker unload` with `record_to`, the options saying where its `unloaded` record goes.
fn unload_recording_to(pin_dir: &str, record_to: &[&str]) -> Result<String> {
    let output = Command::new(blocker_bin())
        .args(["unload", "--pin-dir", pin_dir])
        .args(record_to)
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

    let events_file = second.events_file().to_owned();
    let (status, records, _) = second.stop()?;
    ensure!(status.success(), "{status}");
    let stopped = records
        .iter()
        .find(|r| r["kind"] == "stopped")
        .context("stopped record")?;
    ensure!(stopped["pinned"] == pinned.as_str(), "{stopped}");
    assert_denied(&banned)?;

    let said = unload_recording_to(
        PIN_DIR,
        &[
            "--events-file",
            events_file.to_str().context("events file")?,
            "--no-journald",
        ],
    )?;
    ensure!(said.contains("removed link"), "{said}");
    let records = blocker_integration_tests::events_in(&events_file)?;
    let unloaded = records.last().context("no records")?;
    // The daemon before it stopped the documented way: nothing was lost.
    ensure!(
        unloaded["kind"] == "unloaded"
            && unloaded["pin_dir"] == PIN_DIR
            && unloaded.get("daemon_lost").is_none(),
        "{unloaded}"
    );
    ensure!(!Path::new(PIN_DIR).exists(), "{PIN_DIR} is gone");
    let (_, status) = run_as_launcher(&banned)
        .with_context(|| format!("running {} once unloaded ({said})", banned.display()))?;
    ensure!(status.success(), "runs again once unloaded: {status}");
    ensure!(unload(PIN_DIR)?.contains("nothing is pinned"));
    Ok(())
}

/// Removes the pins, even when a test fails half-way (a daemon left running is stopped by its
/// own drop first).
struct UnloadOnDrop(&'static str);

impl Drop for UnloadOnDrop {
    fn drop(&mut self) {
        let _ = unload(self.0);
    }
}

/// `blocker stop`, the documented way to stop a protected daemon: protection ends with it, the
/// pins stay.
fn stop_documented(mut daemon: Daemon) -> Result<()> {
    let output = daemon.blocker_stop()?;
    ensure!(output.status.success(), "blocker stop: {output:?}");
    let status = daemon.wait(STARTUP_TIMEOUT)?;
    ensure!(status.success(), "{status}");
    Ok(())
}

/// The names in the links directory, sorted.
fn link_names(links: &Path) -> Result<Vec<String>> {
    let mut names = fs::read_dir(links)?
        .map(|entry| Ok(entry?.file_name().to_string_lossy().into_owned()))
        .collect::<Result<Vec<_>>>()?;
    names.sort();
    Ok(names)
}

fn pinned_link(path: &Path) -> Result<FdLink> {
    Ok(FdLink::from(PinnedLink::from_pin(path).with_context(
        || format!("opening the link pinned at {}", path.display()),
    )?))
}

/// The kernel's ids of the links pinned in `links`.
fn pinned_link_ids(links: &Path) -> Result<BTreeSet<u32>> {
    link_names(links)?
        .iter()
        .map(|name| Ok(pinned_link(&links.join(name))?.info()?.id()))
        .collect()
}

/// Waits until the kernel lists none of `ids` for `command`: it frees a link whose last pin is
/// gone, and then its program, a moment later, from a work queue.
fn wait_until_freed(command: libc::c_long, ids: &BTreeSet<u32>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let still: BTreeSet<u32> = listed_ids(command).intersection(ids).copied().collect();
        if still.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("{still:?} still listed (command {command})");
        }
        thread::sleep(Duration::from_millis(50));
    }
}

/// Execs `banned` over and over until finished (or dropped), counting the execs that ran.
struct ExecLoop {
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<(usize, usize)>>,
}

impl ExecLoop {
    fn start(banned: &Path) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let stop_flag = Arc::clone(&stop);
        let banned = banned.to_owned();
        let thread = thread::spawn(move || {
            let (mut ran, mut tried) = (0, 0);
            while !stop_flag.load(Ordering::Relaxed) {
                if run_as_launcher(&banned).is_ok() {
                    ran += 1;
                }
                tried += 1;
            }
            (ran, tried)
        });
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the loop; returns how many execs ran, and how many were tried.
    fn finish(mut self) -> (usize, usize) {
        self.stop.store(true, Ordering::Relaxed);
        self.thread
            .take()
            .and_then(|thread| thread.join().ok())
            .unwrap_or_default()
    }
}

impl Drop for ExecLoop {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// Starts a daemon over forged pins and checks that it refuses them, naming `culprit` (as it
/// is shown to people), loads and pins programs of its own in their place, and denies
/// `banned`; the forged links are detached. Stops the daemon the documented way.
fn expect_refused_and_replaced(
    policy_dir: &Path,
    args: &[&str],
    links: &Path,
    culprit: &str,
    banned: &Path,
) -> Result<()> {
    let forged = pinned_link_ids(links)?;
    let (mut daemon, started) = Daemon::start(policy_dir, args)?;
    // A protected daemon can only be stopped the documented way, also when a check failed.
    let checked = refused_and_replaced(&mut daemon, &started, links, &forged, culprit, banned);
    let stopped = stop_documented(daemon);
    checked.and(stopped)
}

fn refused_and_replaced(
    daemon: &mut Daemon,
    started: &serde_json::Value,
    links: &Path,
    forged: &BTreeSet<u32>,
    culprit: &str,
    banned: &Path,
) -> Result<()> {
    ensure!(
        started["adopted"] == false,
        "forged pins adopted: {started}"
    );
    let refused = started["adoption_refused"]
        .as_str()
        .with_context(|| format!("no reason for not adopting: {started}"))?;
    ensure!(refused.contains(culprit), "{culprit} not named: {refused}");
    let logged = daemon.wait_for_log("not adopting the programs pinned at", STARTUP_TIMEOUT)?;
    ensure!(logged.contains(culprit), "{culprit} not named: {logged}");
    assert_denied(banned)?;

    let fresh = pinned_link_ids(links)?;
    ensure!(
        fresh.is_disjoint(forged),
        "forged links still pinned: {forged:?} / {fresh:?}"
    );
    wait_until_freed(command::LINK_GET_NEXT_ID, forged).context("the forged links once replaced")
}

#[test]
fn forged_pins_are_not_adopted_but_replaced() -> Result<()> {
    let sandbox = Sandbox::new("pin-forged")?;
    let banned = sandbox.copy_binary("banned")?;
    sandbox.write_policy("test.toml", &deny_and_audit_policy(&[&banned], &[]))?;
    let policy_dir = sandbox.policy_dir();
    let _cleanup = UnloadOnDrop(FORGED_PIN_DIR);
    let args = [
        "--backend",
        "lsm",
        "--protect",
        "--pin",
        "--pin-dir",
        FORGED_PIN_DIR,
    ];

    let (daemon, started) = Daemon::start(&policy_dir, &args)?;
    stop_documented(daemon)?;
    ensure!(started["adopted"] == false, "{started}");
    let links = Path::new(started["pinned"].as_str().context("pinned")?).join("links");
    assert_denied(&banned)?;
    let names = link_names(&links)?;
    ensure!(names.len() > 2, "{names:?}");

    // Two link pins trade names: the same programs stay attached, under each other's names.
    let (first, second) = (&names[0], &names[1]);
    let swapping = links.join("swapping");
    fs::rename(links.join(first), &swapping)?;
    fs::rename(links.join(second), links.join(first))?;
    fs::rename(&swapping, links.join(second))?;
    assert_denied(&banned)?;
    // Replacing them never opens a gap.
    let execs = ExecLoop::start(&banned);
    expect_refused_and_replaced(&policy_dir, &args, &links, first, &banned)?;
    let (ran, tried) = execs.finish();
    ensure!(
        ran == 0,
        "{ran} of {tried} banned execs ran while forged pins were replaced"
    );

    // The exec check's pin replaced by a pin of another of blocker's links: execs go unchecked.
    let exec = [lsm_programs::EXEC_CONTENT, lsm_programs::EXEC_IDENTITY]
        .into_iter()
        .map(|program| program.name)
        .find(|name| links.join(name).exists())
        .context("no exec check pinned")?;
    let other = names
        .iter()
        .find(|name| name.as_str() != exec)
        .context("another link")?;
    let other_link = pinned_link(&links.join(other))?;
    fs::remove_file(links.join(exec))?;
    other_link.pin(links.join(exec))?;
    expect_refused_and_replaced(&policy_dir, &args, &links, exec, &banned)?;

    // A link pin no program of blocker's is named after, with a name that would act on a
    // terminal: shown escaped.
    let hostile = "forged\u{1b}[2K";
    pinned_link(&links.join(&names[0]))?.pin(links.join(hostile))?;
    expect_refused_and_replaced(&policy_dir, &args, &links, "forged\\x1b[2K", &banned)?;

    // A pinned map replaced by a lookalike: the daemon would fill a map no program reads.
    let banned_files = links
        .parent()
        .context("the build directory")?
        .join("maps")
        .join(names::BANNED_FILES_MAP);
    fs::remove_file(&banned_files)?;
    pin_new_hash_map(
        &banned_files,
        std::mem::size_of::<FileKey>(),
        std::mem::size_of::<BanEntry>(),
    )?;
    expect_refused_and_replaced(&policy_dir, &args, &links, names::BANNED_FILES_MAP, &banned)?;

    // Genuine pins are still adopted.
    let (daemon, started) = Daemon::start(&policy_dir, &args)?;
    let denied = assert_denied(&banned);
    stop_documented(daemon)?;
    ensure!(started["adopted"] == true, "{started}");
    ensure!(started["adoption_refused"].is_null(), "{started}");
    denied
}

/// The kill backend's pinned program passes the same checks: a restarted daemon adopts it.
#[test]
fn kill_backend_pins_are_adopted() -> Result<()> {
    use std::os::unix::process::ExitStatusExt;

    let sandbox = Sandbox::new("pin-kill")?;
    let banned = sandbox.copy_binary("banned")?;
    sandbox.write_policy("test.toml", &deny_and_audit_policy(&[&banned], &[]))?;
    let _cleanup = UnloadOnDrop(KILL_PIN_DIR);
    let args = ["--backend", "kill", "--pin", "--pin-dir", KILL_PIN_DIR];

    let (first, started) = Daemon::start(&sandbox.policy_dir(), &args)?;
    ensure!(started["adopted"] == false, "{started}");
    let (status, _, _) = first.stop()?;
    ensure!(status.success(), "{status}");

    let (second, started) = Daemon::start(&sandbox.policy_dir(), &args)?;
    ensure!(started["adopted"] == true, "{started}");
    ensure!(started["adoption_refused"].is_null(), "{started}");
    ensure!(started["backend"] == "kill", "{started}");
    let (_, status) = run_as_launcher(&banned)?;
    ensure!(status.signal() == Some(libc::SIGKILL), "{status}");
    let (status, _, _) = second.stop()?;
    ensure!(status.success(), "{status}");
    Ok(())
}

/// A copy of the harmless binary with `tag` appended, executable.
fn with_content(sandbox: &Sandbox, name: &str, tag: &[u8]) -> Result<std::path::PathBuf> {
    let mut content = fs::read(harmless_binary())?;
    content.extend_from_slice(tag);
    let path = sandbox.path(name);
    fs::write(&path, content)?;
    fs::set_permissions(&path, fs::Permissions::from_mode(0o755))?;
    Ok(path)
}

/// Removing a link pin while no daemon runs detaches its program. When that program is one
/// that drops stale cached verdicts, the daemon adopting the rest uses no cache, as it reports:
/// a file changed into banned content is refused at its next exec.
#[test]
fn adopting_without_every_invalidation_program_turns_the_verdict_cache_off() -> Result<()> {
    let sandbox = Sandbox::new("pin-cache")?;
    // Tags of one length, so that writing one over the other leaves no byte of the first.
    let banned_source = with_content(&sandbox, "banned-source", b"banned content!")?;
    let allowed = with_content(&sandbox, "allowed", b"allowed content")?;
    sandbox.write_policy(
        "content.toml",
        &format!(
            "name = \"content\"\n[[rule]]\nid = \"ban-content\"\nsha256 = [{:?}]\n",
            sha256_of(&banned_source)?
        ),
    )?;
    let nothing_to_scan = sandbox.path("nothing-to-scan");
    fs::create_dir_all(&nothing_to_scan)?;
    let scan_root = nothing_to_scan.to_str().context("UTF-8 sandbox")?;
    let _cleanup = UnloadOnDrop(CACHE_PIN_DIR);
    let args = [
        "--backend",
        "lsm",
        "--pin",
        "--pin-dir",
        CACHE_PIN_DIR,
        "--scan-root",
        scan_root,
        "--no-hash-cache",
    ];
    let policy_dir = sandbox.policy_dir();

    let (first, started) = Daemon::start(&policy_dir, &args)?;
    let (status, _, _) = first.stop()?;
    ensure!(status.success(), "{status}");
    ensure!(
        started["features"]["verdict_cache"]["state"] == "on",
        "{started}"
    );
    let forget = Path::new(started["pinned"].as_str().context("pinned")?)
        .join("links")
        .join(lsm_programs::VERDICT_INVALIDATION[0].name);
    let link = pinned_link(&forget)?.info()?;
    fs::remove_file(&forget)?;
    wait_until_freed(command::LINK_GET_NEXT_ID, &BTreeSet::from([link.id()]))?;
    wait_until_freed(
        command::PROG_GET_NEXT_ID,
        &BTreeSet::from([link.program_id()]),
    )?;

    let (second, started) = Daemon::start(&policy_dir, &args)?;
    let checked = cache_off_and_changed_file_refused(&started, &allowed, &banned_source);
    let (status, _, _) = second.stop()?;
    ensure!(status.success(), "{status}");
    checked
}

fn cache_off_and_changed_file_refused(
    started: &serde_json::Value,
    allowed: &Path,
    banned_source: &Path,
) -> Result<()> {
    ensure!(started["adopted"] == true, "{started}");
    ensure!(
        started["features"]["verdict_cache"]["state"] == "off",
        "{started}"
    );
    for _ in 0..2 {
        let (_, status) = run_as_launcher(allowed)?;
        ensure!(status.success(), "{status}");
    }
    // Written in place: the open for writing goes unseen with its program detached.
    fs::OpenOptions::new()
        .write(true)
        .open(allowed)?
        .write_all(&fs::read(banned_source)?)?;
    assert_denied(allowed)
}
