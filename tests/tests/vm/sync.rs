//! `blocker sync` with the LSM backend on Debian's kernels: a ban a Santa sync server sends
//! (tests/src/santa.rs, over loopback with mutual TLS) is refused at exec with EPERM, and the
//! denial goes back to the server as a `BLOCK_BINARY` event with the file's hash.

use std::{fs, process::Command};

use anyhow::{ensure, Context, Result};
use blocker_integration_tests::{
    blocker_bin,
    santa::{binary_rule, uploaded_events, wait_for_denials, wait_until, Fleet},
    Sandbox,
};

/// The VM's init brings up no network interface; the test server listens on 127.0.0.1.
fn bring_up_loopback() -> Result<()> {
    let status = Command::new("ip")
        .args(["link", "set", "dev", "lo", "up"])
        .status()
        .context("running ip")?;
    ensure!(status.success(), "ip link set dev lo up: {status}");
    Ok(())
}

#[test]
fn a_synced_ban_is_refused_with_eperm_and_reported_to_the_server() -> Result<()> {
    bring_up_loopback()?;
    let sandbox = Sandbox::new("vm-sync")?;
    sandbox.write_policy("local.toml", "name = \"local\"\n")?;
    let fleet = Fleet::new(sandbox, "")?;
    let (banned, hash) = fleet.unique_binary("synced")?;
    fleet
        .server
        .set_rules_toml(&binary_rule(&hash, "BLOCKLIST"))?;
    let mut daemon = fleet.start_daemon("lsm", &[])?;

    let said = fleet.synced(&[])?;
    ensure!(said.contains("1 added"), "{said}");
    wait_until(
        || {
            Ok(Command::new(&banned)
                .status()
                .is_err_and(|error| error.raw_os_error() == Some(libc::EPERM)))
        },
        "the synced ban to refuse the exec",
    )?;
    let record = daemon.wait_for_exec(&banned)?;
    ensure!(
        record["policy"] == "santa-sync" && record["enforcement"] == "eperm",
        "{record}"
    );
    ensure!(
        record["sha256"] == hash.as_str(),
        "banned by identity, the record names the hash the scan found it by: {record}"
    );
    // A copy outside the scan roots is refused by the kernel's content check, which puts the
    // hash it computed in the record instead. Deleted before the upload, the copy can only be named by
    // that hash.
    let copy = fleet.sandbox.path("copy-outside-the-scan-roots");
    fs::copy(&banned, &copy)?;
    let refused = Command::new(&copy).status();
    ensure!(
        refused.is_err_and(|error| error.raw_os_error() == Some(libc::EPERM)),
        "the copy is refused by content"
    );
    let record = daemon.wait_for_exec(&copy)?;
    ensure!(
        record["sha256"] == hash.as_str(),
        "the kernel's hash is in the record: {record}"
    );
    fs::remove_file(&copy)?;

    let denials = wait_for_denials(&fleet, 2)?;
    let said = fleet.synced(&[])?;
    ensure!(
        said.contains(&format!("{} denials uploaded", denials.len())),
        "{said}"
    );
    let events = uploaded_events(&fleet)?;
    ensure!(
        events
            .iter()
            .any(|event| event["file_sha256"] == hash.as_str()
                && event["decision"] == "BLOCK_BINARY"),
        "{events:?}"
    );
    ensure!(
        events
            .iter()
            .any(|event| event["file_name"] == "copy-outside-the-scan-roots"
                && event["file_sha256"] == hash.as_str()),
        "the deleted copy is uploaded with the kernel's hash: {events:?}"
    );

    let status = Command::new(blocker_bin())
        .arg("status")
        .arg("--status-file")
        .arg(&fleet.status_file)
        .arg("--sync-config")
        .arg(&fleet.config)
        .output()?;
    let status = String::from_utf8_lossy(&status.stdout);
    ensure!(
        status
            .lines()
            .any(|line| line.starts_with("sync ") && line.contains(": ok; 1 synced rules")),
        "blocker status shows the last sync: {status}"
    );
    Ok(())
}
