//! The kill backend on the host's own kernel, which refuses BPF LSM programs: a banned file is
//! killed at exec by `tp_btf/sched_process_exec`.

use std::{
    os::unix::{fs::PermissionsExt, process::ExitStatusExt},
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use blocker_integration_tests::{
    assert_exec_record, blocker_bin, comm_of, deny_and_audit_policy, events_in, exec_by_descriptor,
    filesystems::{devices_of, Mounted},
    harmless_binary, memfd_copy, run_as_launcher, sha256_of, BanScenario, Daemon, ExpectedExec,
    PipeReader, Sandbox, SpawnOptions, EVENT_TIMEOUT, STARTUP_TIMEOUT,
};

#[test]
fn banned_copy_is_killed_other_copies_run_and_audit_reports() -> Result<()> {
    let scenario = BanScenario::new("kill")?;
    let banned = &scenario.banned;
    let (mut daemon, started) = scenario.start_daemon(&["--backend", "kill"])?;
    ensure!(started["backend"] == "kill", "{started}");
    ensure!(started["entries"] == 2, "{started}");

    let (pid, status) = run_as_launcher(banned)?;
    ensure!(
        status.signal() == Some(libc::SIGKILL),
        "banned copy was not killed: {status}"
    );
    let record = daemon.wait_for_exec(banned)?;
    assert_exec_record(
        &record,
        &ExpectedExec {
            path: banned,
            pid,
            // The tracepoint runs after exec has renamed the task.
            comm: comm_of(banned),
            rule: "ban",
            enforcement: "sigkill",
            backend: "kill",
        },
    )?;
    ensure!(record["reason"] == "banned by the test", "{record}");

    scenario.check_unbanned_and_audited_run(&mut daemon, comm_of(&scenario.audited), "kill")?;

    let records = scenario.stop_and_check_detached(daemon)?;
    let stopped = records.iter().find(|r| r["kind"] == "stopped");
    ensure!(
        stopped.is_some_and(|s| s["events"] == 2 && s["events_lost"] == 0),
        "{records:?}"
    );
    Ok(())
}

/// btrfs gives `stat` a per-subvolume anonymous device, not its superblock's: a ban keyed by
/// `st_dev` never matched there. The image is loop-mounted in the test's sandbox.
#[test]
fn a_file_on_btrfs_banned_by_path_is_killed() -> Result<()> {
    let sandbox = Sandbox::new("kill-btrfs")?;
    let btrfs = Mounted::image(
        &sandbox.path("filesystems"),
        "btrfs",
        "btrfs",
        128,
        &["mkfs.btrfs", "-q", "-f"],
    )?;
    let banned = btrfs.copy(&harmless_binary(), "banned")?;
    let unbanned = btrfs.copy(&harmless_binary(), "unbanned")?;
    sandbox.write_policy("test.toml", &deny_and_audit_policy(&[&banned], &[]))?;
    let (mut daemon, started) = Daemon::start(&sandbox.policy_dir(), &["--backend", "kill"])?;
    ensure!(started["entries"] == 1, "{started}");
    daemon.wait_for_log(
        "the kernel identifies files as blocker does on the 1 filesystem",
        Duration::from_secs(5),
    )?;

    let (_, status) = run_as_launcher(&banned)?;
    ensure!(
        status.signal() == Some(libc::SIGKILL),
        "the banned file on btrfs ({}) was not killed: {status}",
        devices_of(&banned)?
    );
    daemon.wait_for_exec(&banned)?;
    ensure!(Command::new(&unbanned).status()?.success());
    let (status, _, _) = daemon.stop()?;
    ensure!(status.success(), "{status}");
    Ok(())
}

#[test]
fn auto_backend_says_which_backend_and_why() -> Result<()> {
    let sandbox = Sandbox::new("auto")?;
    let banned = sandbox.copy_binary("banned")?;
    sandbox.write_policy("test.toml", &deny_and_audit_policy(&[&banned], &[]))?;

    let (mut daemon, started) = Daemon::start(&sandbox.policy_dir(), &[])?;
    let backend = started["backend"].as_str().unwrap_or_default().to_owned();
    let reason = started["backend_reason"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    ensure!(!reason.is_empty(), "{started}");
    let line = daemon.wait_for_log(
        &format!("with the {backend} backend: {reason}"),
        Duration::from_secs(5),
    )?;
    ensure!(line.contains("INFO"), "{line}");
    // This machine's kernel refuses LSM programs (EPERM at load), so auto falls back.
    ensure!(backend == "kill", "{started}");
    ensure!(reason.contains("refused the LSM program"), "{started}");
    let (status, _, _) = daemon.stop()?;
    ensure!(status.success());
    Ok(())
}

#[test]
fn a_bad_policy_file_is_named_and_nothing_is_loaded() -> Result<()> {
    let sandbox = Sandbox::new("bad")?;
    let banned = sandbox.copy_binary("banned")?;
    sandbox.write_policy("good.toml", &deny_and_audit_policy(&[&banned], &[]))?;
    let bad = sandbox.write_policy(
        "typo.toml",
        "name = \"typo\"\n\n[[rule]]\nid = \"x\"\nactoin = \"deny\"\npaths = [\"/nonexistent\"]\n",
    )?;

    let mut daemon = Daemon::spawn(&sandbox.policy_dir(), &["--backend", "kill"])?;
    let status = daemon.wait(Duration::from_secs(30))?;
    let (records, log) = daemon.remaining_output();
    ensure!(!status.success(), "a bad policy must stop the daemon");
    ensure!(records.is_empty(), "nothing may be enforced: {records:?}");
    let expected = format!(
        "{}:5:1: rule[0].actoin: unknown field `actoin`",
        bad.display()
    );
    ensure!(log.iter().any(|line| line.contains(&expected)), "{log:?}");
    ensure!(
        !log.iter().any(|line| line.contains("enforcing")),
        "{log:?}"
    );
    ensure!(Command::new(&banned).status()?.success());
    Ok(())
}

#[test]
fn a_replaced_file_is_followed_and_a_removed_one_unbanned() -> Result<()> {
    let sandbox = Sandbox::new("refresh")?;
    let banned = sandbox.copy_binary("banned")?;
    let old_inode = sandbox.path("old-inode");
    // A second name keeps the original inode alive after the banned path is replaced.
    std::fs::hard_link(&banned, &old_inode)?;
    sandbox.write_policy("test.toml", &deny_and_audit_policy(&[&banned], &[]))?;

    let (mut daemon, _) = Daemon::start(
        &sandbox.policy_dir(),
        &["--backend", "kill", "--refresh-interval", "1"],
    )?;
    ensure!(Command::new(&old_inode).status()?.signal() == Some(libc::SIGKILL));

    std::fs::remove_file(&banned)?;
    sandbox.copy_binary("banned")?;
    daemon.wait_for_log(
        "ban map updated: 1 added, 0 changed, 1 removed",
        Duration::from_secs(10),
    )?;

    let status = Command::new(&banned).status()?;
    ensure!(
        status.signal() == Some(libc::SIGKILL),
        "the new file at the path is banned: {status}"
    );
    let status = Command::new(&old_inode).status()?;
    ensure!(
        status.success(),
        "the old inode is no longer at the banned path: {status}"
    );
    let (status, _, _) = daemon.stop()?;
    ensure!(status.success());
    Ok(())
}

#[test]
fn a_full_event_buffer_loses_events_but_never_a_denial() -> Result<()> {
    const EXECS: u64 = 40;
    let sandbox = Sandbox::new("lost")?;
    // Distinct files: the kernel sends only a few records of repeats of one file.
    let banned = distinct_copies(&sandbox, "banned", EXECS)?;
    let banned_paths: Vec<&Path> = banned.iter().map(PathBuf::as_path).collect();
    sandbox.write_policy("test.toml", &deny_and_audit_policy(&banned_paths, &[]))?;
    // One page holds about a dozen events.
    let (mut daemon, _) = Daemon::start(
        &sandbox.policy_dir(),
        &["--backend", "kill", "--event-buffer-bytes", "4096"],
    )?;

    // A stopped daemon reads nothing, so the ring fills up.
    daemon.signal(libc::SIGSTOP);
    for banned in &banned {
        let status = Command::new(banned).status()?;
        ensure!(
            status.signal() == Some(libc::SIGKILL),
            "every exec is denied: {status}"
        );
    }
    daemon.signal(libc::SIGCONT);

    let lost = daemon.wait_for_record(Duration::from_secs(10), |r| r["kind"] == "events_lost")?;
    ensure!(lost["lost"].as_u64().is_some_and(|n| n > 0), "{lost}");
    let (status, records, _) = daemon.stop()?;
    ensure!(status.success());
    let stopped = records
        .iter()
        .find(|r| r["kind"] == "stopped")
        .ok_or_else(|| anyhow::anyhow!("no stopped record: {records:?}"))?;
    let delivered = stopped["events"].as_u64().unwrap_or_default();
    let lost = stopped["events_lost"].as_u64().unwrap_or_default();
    ensure!(
        delivered + lost == EXECS,
        "{stopped}: every exec is either reported or counted"
    );
    ensure!(lost > 0 && delivered > 0, "{stopped}");
    Ok(())
}

#[test]
fn fileless_execs_follow_the_policy_setting() -> Result<()> {
    for setting in ["deny", "audit", "allow"] {
        let sandbox = Sandbox::new("fileless")?;
        sandbox.write_policy(
            "test.toml",
            &format!("name = \"test\"\nfileless = \"{setting}\"\n"),
        )?;
        let (daemon, _) = Daemon::start(&sandbox.policy_dir(), &["--backend", "kill"])?;
        let memfd = memfd_copy(&harmless_binary())?;
        let status = exec_by_descriptor(&memfd)?;
        match setting {
            "deny" => ensure!(
                status.signal() == Some(libc::SIGKILL),
                "{setting}: {status}"
            ),
            _ => ensure!(status.success(), "{setting}: {status}"),
        }
        let (status, records, _) = daemon.stop()?;
        ensure!(status.success());
        let events: Vec<_> = records.iter().filter(|r| r["kind"] == "exec").collect();
        if setting == "allow" {
            ensure!(events.is_empty(), "{events:?}");
            continue;
        }
        ensure!(events.len() == 1, "{setting}: {events:?}");
        let event = events[0];
        ensure!(
            event["rule"] == "fileless" && event["policy"] == "test",
            "{event}"
        );
        let enforcement = if setting == "deny" { "sigkill" } else { "none" };
        ensure!(event["enforcement"] == enforcement, "{event}");
        ensure!(event["operation"] == "exec", "{event}");
    }
    Ok(())
}

#[test]
fn the_content_watcher_bans_fresh_copies_of_banned_content() -> Result<()> {
    let sandbox = Sandbox::new("watch")?;
    let scanned = sandbox.path("scanned");
    std::fs::create_dir(&scanned)?;
    let hash = sha256_of(&harmless_binary())?;
    sandbox.write_policy(
        "test.toml",
        &format!("name = \"test\"\n\n[[rule]]\nid = \"content\"\nsha256 = [\"{hash}\"]\n"),
    )?;
    let scan_root = scanned.to_str().context("utf-8 path")?;
    let (mut daemon, started) = Daemon::start(
        &sandbox.policy_dir(),
        &[
            "--backend",
            "kill",
            "--no-hash-cache",
            "--scan-root",
            scan_root,
        ],
    )?;
    ensure!(started["entries"] == 0, "nothing to ban yet: {started}");
    daemon.wait_for_log(
        "content rules: the background scan is done; 0 files banned",
        Duration::from_secs(10),
    )?;

    // An executable copy is banned as soon as it is written.
    let copy = scanned.join("fresh-copy");
    std::fs::copy(harmless_binary(), &copy)?;
    daemon.wait_for_log(
        "fresh-copy has content banned by rule content",
        Duration::from_secs(10),
    )?;
    let status = Command::new(&copy).status()?;
    ensure!(
        status.signal() == Some(libc::SIGKILL),
        "fresh copy: {status}"
    );

    // Written without an execute bit and made executable later: caught at its first exec
    // (which may or may not finish first), banned from then on.
    let late = scanned.join("made-executable-later");
    std::fs::write(&late, std::fs::read(harmless_binary())?)?;
    std::fs::set_permissions(&late, std::fs::Permissions::from_mode(0o755))?;
    let _ = Command::new(&late).status()?;
    daemon.wait_for_log(
        "made-executable-later has content banned by rule content",
        Duration::from_secs(10),
    )?;
    let status = Command::new(&late).status()?;
    ensure!(
        status.signal() == Some(libc::SIGKILL),
        "made executable later: {status}"
    );

    let (status, _, _) = daemon.stop()?;
    ensure!(status.success());
    Ok(())
}

#[test]
fn a_hundred_reloads_never_let_a_banned_exec_through() -> Result<()> {
    let sandbox = Sandbox::new("reloads")?;
    let banned = sandbox.copy_binary("banned")?;
    let audited = sandbox.copy_binary("audited")?;
    // A new rule id each round gives the banned file's entry a new rule number, so every reload
    // rewrites it; the alternating order moves the rules around as well.
    let policy = |round: usize| {
        let ban = format!(
            "[[rule]]\nid = \"ban-{round}\"\npaths = [{:?}]\n",
            banned.display().to_string()
        );
        let watch = format!(
            "[[rule]]\nid = \"watch-{round}\"\naction = \"audit\"\npaths = [{:?}]\n",
            audited.display().to_string()
        );
        if round.is_multiple_of(2) {
            format!("name = \"test\"\n{ban}{watch}")
        } else {
            format!("name = \"test\"\n{watch}{ban}")
        }
    };
    sandbox.write_policy("test.toml", &policy(0))?;
    let (mut daemon, _) = Daemon::start(&sandbox.policy_dir(), &["--backend", "kill"])?;

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let exec_loop = {
        let (stop, banned) = (stop.clone(), banned.clone());
        std::thread::spawn(move || -> std::io::Result<(u32, u32)> {
            let (mut killed, mut ran) = (0, 0);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                if Command::new(&banned).status()?.signal() == Some(libc::SIGKILL) {
                    killed += 1;
                } else {
                    ran += 1;
                }
            }
            Ok((killed, ran))
        })
    };
    for round in 1..=100 {
        sandbox.write_policy("test.toml", &policy(round))?;
        daemon.signal(libc::SIGHUP);
        daemon.wait_for_record(Duration::from_secs(10), |r| r["kind"] == "reloaded")?;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (killed, ran) = exec_loop.join().expect("exec loop")?;
    ensure!(
        ran == 0,
        "{ran} execs of the banned file ran during reloads ({killed} killed)"
    );
    ensure!(killed > 0, "the exec loop ran");
    let (status, _, _) = daemon.stop()?;
    ensure!(status.success());
    Ok(())
}

#[test]
fn a_bad_reload_keeps_the_old_policy_and_a_good_one_replaces_it() -> Result<()> {
    let sandbox = Sandbox::new("bad-reload")?;
    let first = sandbox.copy_binary("first")?;
    let second = sandbox.copy_binary("second")?;
    let policy_file = sandbox.write_policy("test.toml", &deny_and_audit_policy(&[&first], &[]))?;
    let (mut daemon, _) = Daemon::start(&sandbox.policy_dir(), &["--backend", "kill"])?;

    // Written in place: the directory watch notices without a signal.
    sandbox.write_policy(
        "test.toml",
        "name = \"test\"\n[[rule]]\nid = \"x\"\npaths = \"/x\"\n",
    )?;
    let failed =
        daemon.wait_for_record(Duration::from_secs(10), |r| r["kind"] == "reload_failed")?;
    let located = format!("{}:4:9: rule[0].paths: invalid type", policy_file.display());
    ensure!(
        failed["error"]
            .as_str()
            .is_some_and(|e| e.contains(&located)),
        "{failed}"
    );
    ensure!(
        Command::new(&first).status()?.signal() == Some(libc::SIGKILL),
        "old policy holds"
    );
    ensure!(Command::new(&second).status()?.success());

    sandbox.write_policy("test.toml", &deny_and_audit_policy(&[&second], &[]))?;
    let reloaded = daemon.wait_for_record(Duration::from_secs(10), |r| r["kind"] == "reloaded")?;
    ensure!(reloaded["entries"] == 1, "{reloaded}");
    ensure!(
        Command::new(&second).status()?.signal() == Some(libc::SIGKILL),
        "new policy holds"
    );
    ensure!(
        Command::new(&first).status()?.success(),
        "the dropped rule no longer bans"
    );
    let (status, _, _) = daemon.stop()?;
    ensure!(status.success());
    Ok(())
}

#[test]
fn pinning_outside_a_bpf_filesystem_is_refused_before_anything_loads() -> Result<()> {
    let sandbox = Sandbox::new("pin-refused")?;
    let banned = sandbox.copy_binary("banned")?;
    sandbox.write_policy("test.toml", &deny_and_audit_policy(&[&banned], &[]))?;
    let not_bpffs = sandbox.path("pins");
    let output = Command::new(blocker_bin())
        .args(["run", "--backend", "kill", "--pin", "--pin-dir"])
        .arg(&not_bpffs)
        .arg("--policy-dir")
        .arg(sandbox.policy_dir())
        .output()?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.code() == Some(2), "{output:?}");
    ensure!(
        stderr.contains("is not on a BPF filesystem") && stderr.contains("mount -t bpf"),
        "{stderr}"
    );
    ensure!(!not_bpffs.exists(), "nothing was created");
    ensure!(
        Command::new(&banned).status()?.success(),
        "nothing was loaded"
    );
    Ok(())
}

#[test]
fn the_events_file_records_a_denial_and_blocker_events_filters_it() -> Result<()> {
    let scenario = BanScenario::new("events-file")?;
    let (mut daemon, _) = scenario.start_daemon(&["--backend", "kill"])?;
    let (pid, status) = run_as_launcher(&scenario.banned)?;
    ensure!(status.signal() == Some(libc::SIGKILL), "{status}");
    daemon.wait_for_exec(&scenario.banned)?;
    let events_file = daemon.events_file().to_owned();
    // Stopping waits for the sinks to write everything.
    let (status, stdout_records, _) = daemon.stop()?;
    ensure!(status.success());
    let mode = std::fs::metadata(&events_file)?.permissions().mode() & 0o777;
    ensure!(mode == 0o600, "events file mode {mode:o}");
    ensure!(
        events_in(&events_file)? == stdout_records,
        "the file holds the same records as stdout"
    );

    let events = |args: &[&str]| -> Result<String> {
        let output = Command::new(blocker_bin())
            .arg("events")
            .args(args)
            .arg("--file")
            .arg(&events_file)
            .output()?;
        ensure!(
            output.status.success(),
            "blocker events {args:?}: {output:?}"
        );
        Ok(String::from_utf8(output.stdout)?)
    };
    let printed = events(&["--json", "--rule", "ban"])?;
    let records: Vec<serde_json::Value> = printed
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    ensure!(records.len() == 1, "{printed}");
    assert_exec_record(
        &records[0],
        &ExpectedExec {
            path: &scenario.banned,
            pid,
            comm: comm_of(&scenario.banned),
            rule: "ban",
            enforcement: "sigkill",
            backend: "kill",
        },
    )?;
    ensure!(events(&["--json", "--rule", "other"])?.is_empty());

    let table = events(&[])?;
    let banned = scenario.banned.display().to_string();
    ensure!(
        table.lines().any(|row| row.contains(" killed ")
            && row.contains(" ban ")
            && row.contains(&pid.to_string())
            && row.ends_with(&banned)),
        "{table}"
    );
    ensure!(
        table.lines().any(|row| row.contains(" started ")),
        "{table}"
    );
    ensure!(
        table.lines().any(|row| row.contains(" stopped ")),
        "{table}"
    );
    Ok(())
}

#[test]
fn a_stdout_nobody_reads_holds_up_neither_enforcement_nor_reloads_nor_the_file() -> Result<()> {
    // More records than the stdout queue (1024) and the pipe (64 KiB) hold together; few
    // enough for the ring buffer (1 MiB) to hold them all, so none are lost there.
    const EXECS: u64 = 1500;
    let sandbox = Sandbox::new("stuck-stdout")?;
    // Distinct files: the kernel sends only a few records of repeats of one file.
    let banned = distinct_copies(&sandbox, "banned", EXECS)?;
    let banned_later = sandbox.copy_binary("banned-later")?;
    let mut banned_paths: Vec<&Path> = banned.iter().map(PathBuf::as_path).collect();
    sandbox.write_policy("test.toml", &deny_and_audit_policy(&banned_paths, &[]))?;
    let mut daemon = Daemon::spawn_with(
        &sandbox.policy_dir(),
        &["--backend", "kill"],
        SpawnOptions {
            stdout: PipeReader::NotReading,
            ..SpawnOptions::default()
        },
    )?;
    daemon.wait_for_log("enforcing 1 rules", STARTUP_TIMEOUT)?;

    for banned in &banned {
        let status = Command::new(banned).status()?;
        ensure!(status.signal() == Some(libc::SIGKILL), "{status}");
    }
    daemon.wait_for_log("the stdout sink is not keeping up", EVENT_TIMEOUT)?;
    banned_paths.push(&banned_later);
    sandbox.write_policy("test.toml", &deny_and_audit_policy(&banned_paths, &[]))?;
    daemon.wait_for_log("policy reloaded", EVENT_TIMEOUT)?;
    let status = Command::new(&banned_later).status()?;
    ensure!(status.signal() == Some(libc::SIGKILL), "{status}");

    // Once read, stdout catches up and says what it missed, where it missed it.
    daemon.read_stdout();
    let report = daemon.wait_for_record(EVENT_TIMEOUT, |r| r["kind"] == "records_dropped")?;
    ensure!(report["sink"] == "stdout", "{report}");
    let dropped = report["dropped"].as_u64().unwrap_or_default();
    ensure!(dropped > 0 && report["total"] == dropped, "{report}");

    let events_file = daemon.events_file().to_owned();
    let (status, _, _) = daemon.stop()?;
    ensure!(status.success());
    let records = events_in(&events_file)?;
    let stopped = records.last().context("an empty events file")?;
    ensure!(stopped["kind"] == "stopped", "{stopped}");
    ensure!(
        stopped["events"] == EXECS + 1 && stopped["events_lost"] == 0,
        "{stopped}"
    );
    ensure!(
        stopped["records_dropped"]["stdout"] == dropped,
        "nothing dropped after catching up: {stopped}"
    );
    ensure!(stopped["records_dropped"]["file"] == 0, "{stopped}");
    let execs_in_file = records.iter().filter(|r| r["kind"] == "exec").count() as u64;
    ensure!(
        execs_in_file == EXECS + 1,
        "the file got every exec: {execs_in_file}"
    );
    ensure!(records.iter().any(|r| r["kind"] == "reloaded"));
    Ok(())
}

#[test]
fn a_stderr_nobody_reads_holds_up_neither_enforcement_nor_reloads() -> Result<()> {
    // Each reload logs a line of about 80 bytes: together far more than the pipe (64 KiB, some
    // 800 lines) and the log's queue (1024 lines) hold. Were the event loop to write its log
    // itself, it would stop at the first line the pipe has no room for, and no reload after it
    // would be recorded.
    const RELOADS: usize = 2500;
    let sandbox = Sandbox::new("stuck-stderr")?;
    let banned = sandbox.copy_binary("banned")?;
    sandbox.write_policy("test.toml", &deny_and_audit_policy(&[&banned], &[]))?;
    let mut daemon = Daemon::spawn_with(
        &sandbox.policy_dir(),
        &["--backend", "kill"],
        SpawnOptions {
            stderr: PipeReader::NotReading,
            ..SpawnOptions::default()
        },
    )?;
    daemon.wait_for_record(STARTUP_TIMEOUT, |r| r["kind"] == "started")?;
    for _ in 0..RELOADS {
        daemon.signal(libc::SIGHUP);
        daemon.wait_for_record(EVENT_TIMEOUT, |r| r["kind"] == "reloaded")?;
    }
    let status = Command::new(&banned).status()?;
    ensure!(status.signal() == Some(libc::SIGKILL), "{status}");
    daemon.wait_for_exec(&banned)?;

    // Once read, the log says how many lines it missed.
    daemon.read_stderr();
    let report = daemon.wait_for_log("log lines were dropped", EVENT_TIMEOUT)?;
    let dropped: u64 = report
        .split("] ")
        .nth(1)
        .and_then(|message| message.split(' ').next())
        .and_then(|count| count.parse().ok())
        .with_context(|| format!("no count in {report}"))?;
    ensure!(dropped > 0, "{report}");
    let (status, _, _) = daemon.stop()?;
    ensure!(status.success(), "{status}");
    Ok(())
}

/// `count` copies of the harmless binary, each its own inode.
fn distinct_copies(sandbox: &Sandbox, prefix: &str, count: u64) -> Result<Vec<PathBuf>> {
    (0..count)
        .map(|index| sandbox.copy_binary(&format!("{prefix}-{index}")))
        .collect()
}

/// A user exec'ing one banned file in a loop gets every exec refused, but only
/// `record_limit::BURST` records per window; the first record of the next window says how many
/// were suppressed, and so do the status and the daemon's log.
#[test]
fn repeats_of_one_denial_are_enforced_but_recorded_a_few_times() -> Result<()> {
    const EXECS: u64 = 12;
    let sandbox = Sandbox::new("repeats")?;
    let banned = sandbox.copy_binary("banned")?;
    let other = sandbox.copy_binary("other")?;
    sandbox.write_policy("test.toml", &deny_and_audit_policy(&[&banned, &other], &[]))?;
    let (mut daemon, _) = Daemon::start(&sandbox.policy_dir(), &["--backend", "kill"])?;
    for _ in 0..EXECS {
        let status = Command::new(&banned).status()?;
        ensure!(
            status.signal() == Some(libc::SIGKILL),
            "every exec is denied: {status}"
        );
    }
    // Another file is another key: its first denial is recorded at once.
    let status = Command::new(&other).status()?;
    ensure!(status.signal() == Some(libc::SIGKILL), "{status}");
    daemon.wait_for_exec(&other)?;
    daemon.wait_for_log("records of repeated attempts suppressed", EVENT_TIMEOUT)?;

    // The window is the kernel's: wait it out, then the next record carries the count.
    std::thread::sleep(Duration::from_nanos(
        blocker_common::record_limit::WINDOW_NS,
    ));
    let status = Command::new(&banned).status()?;
    ensure!(status.signal() == Some(libc::SIGKILL), "{status}");
    daemon.wait_for_record(EVENT_TIMEOUT, |r| {
        r["kind"] == "exec" && r["suppressed_before"].is_u64()
    })?;

    let events_file = daemon.events_file().to_owned();
    let (status, _, _) = daemon.stop()?;
    ensure!(status.success());
    let of_banned: Vec<_> = events_in(&events_file)?
        .into_iter()
        .filter(|r| r["kind"] == "exec" && r["path"] == banned.to_str().unwrap())
        .collect();
    let suppressed: u64 = of_banned
        .iter()
        .filter_map(|r| r["suppressed_before"].as_u64())
        .sum();
    ensure!(
        of_banned.len() as u64 + suppressed == EXECS + 1,
        "every exec is recorded or counted: {of_banned:?}"
    );
    ensure!(
        suppressed > 0
            && of_banned.len() as u64 <= 2 * u64::from(blocker_common::record_limit::BURST),
        "{of_banned:?}"
    );
    Ok(())
}
