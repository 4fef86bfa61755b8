//! What users can make the daemon do, and what they cannot: files they create by the thousand
//! neither stall the daemon nor fill its ban map, and a huge sparse file neither delays
//! enforcement nor gets hashed. The `kill` backend on the host's kernel, with test-made files
//! only.

use std::{
    fs::{self, File},
    os::unix::process::{CommandExt, ExitStatusExt},
    path::Path,
    process::Command,
};

use anyhow::{ensure, Context, Result};
use blocker_integration_tests::{
    blocker_bin, sha256_of, Daemon, Sandbox, EVENT_TIMEOUT, STARTUP_TIMEOUT,
};
use serde_json::Value;

/// The owner of the flood: any user other than root.
const NOBODY: u32 = 65534;
const PER_USER_LIMIT: usize = 200;

/// `count` empty files named like WeChat's AppImage under `directory`, numbered from `first`,
/// made by [`NOBODY`] as any user could.
fn flood(directory: &Path, first: usize, count: usize) -> Result<()> {
    fs::create_dir_all(directory)?;
    std::os::unix::fs::chown(directory, Some(NOBODY), Some(NOBODY))?;
    let made = Command::new("/bin/sh")
        .arg("-c")
        .arg(format!(
            "i={first}; while [ $i -lt {} ]; do : > WeChatLinux_$i.AppImage; i=$((i + 1)); done",
            first + count
        ))
        .current_dir(directory)
        .uid(NOBODY)
        .gid(NOBODY)
        .status()?;
    ensure!(made.success(), "making the flood: {made}");
    Ok(())
}

fn status_of(status_file: &Path) -> Result<Value> {
    let output = Command::new(blocker_bin())
        .args(["status", "--json", "--status-file"])
        .arg(status_file)
        .output()?;
    serde_json::from_slice(&output.stdout).context("blocker status --json printed no JSON")
}

#[test]
fn a_flood_of_user_files_neither_stalls_the_daemon_nor_fills_the_ban_map() -> Result<()> {
    let sandbox = Sandbox::new("flood")?;
    let scanned = sandbox.path("scanned");
    let named = sandbox.copy_binary("named")?;
    let named_later = sandbox.copy_binary("named-later")?;
    let policy = |paths: &[&Path]| {
        let quoted: Vec<String> = paths
            .iter()
            .map(|path| format!("{:?}", path.display().to_string()))
            .collect();
        format!(
            "name = \"test\"\n\n[[rule]]\nid = \"wechat\"\nappimage = [{{ name = \
             \"WeChatLinux_*.AppImage\" }}]\n\n[[rule]]\nid = \"named\"\npaths = [{}]\n",
            quoted.join(", ")
        )
    };
    sandbox.write_policy("test.toml", &policy(&[&named]))?;
    flood(&scanned.join("home"), 0, 1500)?;
    let status_file = sandbox.path("status.json");
    let per_user = PER_USER_LIMIT.to_string();
    let (mut daemon, started) = Daemon::start(
        &sandbox.policy_dir(),
        &[
            "--backend",
            "kill",
            "--no-hash-cache",
            "--scan-root",
            scanned.to_str().context("utf-8 path")?,
            "--max-entries-per-user",
            &per_user,
            "--status-file",
            status_file.to_str().context("utf-8 path")?,
        ],
    )?;
    // Identity rules are enforced before the scan: only the named file is in the map.
    ensure!(started["entries"] == 1, "{started}");
    ensure!(Command::new(&named).status()?.signal() == Some(libc::SIGKILL));
    daemon.wait_for_exec(&named)?;
    daemon.wait_for_log(
        "content rules: the background scan is done",
        STARTUP_TIMEOUT,
    )?;
    let overflow = daemon.wait_for_log("ban map budget: 1300 files", EVENT_TIMEOUT)?;
    ensure!(
        overflow.contains(&format!("({PER_USER_LIMIT} per user"))
            && overflow.contains(&format!("owners: {NOBODY})")),
        "{overflow}"
    );

    // More while the daemon runs: the content watcher sees each, and the daemon keeps serving
    // events and reloads meanwhile.
    flood(&scanned.join("tmp"), 1500, 1500)?;
    ensure!(Command::new(&named).status()?.signal() == Some(libc::SIGKILL));
    daemon.wait_for_exec(&named)?;
    sandbox.write_policy("test.toml", &policy(&[&named, &named_later]))?;
    daemon.wait_for_record(EVENT_TIMEOUT, |record| record["kind"] == "reloaded")?;
    ensure!(Command::new(&named_later).status()?.signal() == Some(libc::SIGKILL));
    daemon.wait_for_exec(&named_later)?;

    let status = status_of(&status_file)?;
    let banned = status["entries"]["banned_files"].as_u64().unwrap_or(0) as usize;
    ensure!(
        banned == PER_USER_LIMIT + 2,
        "the user's files and the two named ones: {status}"
    );
    ensure!(
        status["entries"]["over_budget"].as_u64().unwrap_or(0) > 0,
        "{status}"
    );

    let (exit, _, log) = daemon.stop()?;
    ensure!(exit.success());
    let about_flood = log
        .iter()
        .filter(|line| line.contains("WeChatLinux_"))
        .count();
    ensure!(
        about_flood < 3000 / 4,
        "{about_flood} log lines name a flood file: {:?}",
        &log[..log.len().min(40)]
    );
    Ok(())
}

#[test]
fn a_huge_sparse_file_neither_delays_enforcement_nor_gets_hashed() -> Result<()> {
    let sandbox = Sandbox::new("sparse")?;
    let scanned = sandbox.path("scanned");
    fs::create_dir(&scanned)?;
    let named = sandbox.copy_binary("named")?;
    let copy = scanned.join("copy");
    fs::copy(sandbox.copy_binary("original")?, &copy)?;
    // 8 GiB of nothing: free to make, and hashing it would read 8 GiB of zeros.
    File::create(scanned.join("x.so"))?.set_len(8 << 30)?;
    sandbox.write_policy(
        "test.toml",
        &format!(
            "name = \"test\"\nhash_limit_mib = 1\n\n[[rule]]\nid = \"content\"\nsha256 = \
             [\"{}\"]\n\n[[rule]]\nid = \"named\"\npaths = [{:?}]\n",
            sha256_of(&copy)?,
            named.display().to_string()
        ),
    )?;
    let (mut daemon, started) = Daemon::start(
        &sandbox.policy_dir(),
        &[
            "--backend",
            "kill",
            "--no-hash-cache",
            "--scan-root",
            scanned.to_str().context("utf-8 path")?,
        ],
    )?;
    ensure!(
        started["entries"] == 1,
        "only the named file, before any scan: {started}"
    );
    ensure!(Command::new(&named).status()?.signal() == Some(libc::SIGKILL));

    let warning = daemon.wait_for_log(
        "1 files larger than the hash limit (1 MiB) were not hashed",
        STARTUP_TIMEOUT,
    )?;
    ensure!(warning.contains("x.so"), "{warning}");
    daemon.wait_for_log(
        "scan: 2 candidate files, 1 read (0 MiB), 0 from the cache, 0 skipped, 1 larger than \
         the hash limit",
        EVENT_TIMEOUT,
    )?;
    daemon.wait_for_log("content rules: the background scan is done", EVENT_TIMEOUT)?;
    ensure!(Command::new(&copy).status()?.signal() == Some(libc::SIGKILL));

    // One made while the daemon runs is not hashed by the content watcher either.
    File::create(scanned.join("y.so"))?.set_len(8 << 30)?;
    daemon.wait_for_log("y.so: larger than the hash limit (1 MiB)", EVENT_TIMEOUT)?;
    let (exit, _, _) = daemon.stop()?;
    ensure!(exit.success());
    Ok(())
}
