//! The policy language end to end on Debian's kernel (run inside the VM by `cargo xtask test`):
//! a package installed with dpkg and banned by name, and content banned by hash under any name.

use std::{
    os::unix::fs::MetadataExt,
    path::Path,
    process::{Command, Output},
};

use anyhow::{ensure, Context, Result};
use blocker_integration_tests::{blocker_bin, sha256_of, Daemon, Sandbox, EVENT_TIMEOUT};

/// Built from tests/fixtures/debs/blocker-test-fixture by xtask.
const FIXTURE_PACKAGE: &str = "/fixtures/blocker-test-fixture.deb";
const FIXTURE_TOOL: &str = "/opt/blocker-test-fixture/bin/fixture-tool";
const FIXTURE_LIBRARY: &str = "/opt/blocker-test-fixture/lib/libfixture.so.1";
const FIXTURE_README: &str = "/opt/blocker-test-fixture/share/README";

fn blocker(args: &[&str]) -> Result<Output> {
    Command::new(blocker_bin())
        .args(args)
        .output()
        .context("running blocker")
}

fn install_fixture_package() -> Result<()> {
    std::fs::create_dir_all("/var/lib/dpkg/info")?;
    std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open("/var/lib/dpkg/status")?;
    let status = Command::new("/bin/busybox")
        .args(["dpkg", "-i", FIXTURE_PACKAGE])
        .status()?;
    ensure!(status.success(), "dpkg -i {FIXTURE_PACKAGE}: {status}");
    Ok(())
}

#[test]
fn a_package_banned_by_name_cannot_run_and_explain_says_why() -> Result<()> {
    install_fixture_package()?;
    ensure!(
        Command::new(FIXTURE_TOOL).status()?.success(),
        "the package's program runs before the ban"
    );
    let sandbox = Sandbox::new("package")?;
    sandbox.write_policy(
        "test.toml",
        "name = \"test\"\n\n[[rule]]\nid = \"fixture\"\nreason = \"banned by the test\"\n\
         packages = [\"blocker-test-fixture\"]\n",
    )?;
    let policy_dir = sandbox.policy_dir();
    let policy_dir = policy_dir.to_str().context("utf-8 path")?;

    let explained = blocker(&["explain", FIXTURE_TOOL, "--policy-dir", policy_dir])?;
    let stdout = String::from_utf8_lossy(&explained.stdout);
    ensure!(explained.status.code() == Some(0), "explain: {explained:?}");
    let metadata = std::fs::metadata(FIXTURE_TOOL)?;
    let device = format!(
        "{}:{}",
        libc::major(metadata.dev()),
        libc::minor(metadata.dev())
    );
    let lines: Vec<&str> = stdout.lines().collect();
    ensure!(
        lines.first()
            == Some(
                &format!(
                    "{FIXTURE_TOOL}: banned by rule fixture (policy test) via package \
                     blocker-test-fixture"
                )
                .as_str()
            ),
        "{stdout}"
    );
    ensure!(
        lines.get(1) == Some(&"  reason: banned by the test"),
        "{stdout}"
    );
    let identity = format!("  device {device} inode {}", metadata.ino());
    ensure!(
        lines.get(2).is_some_and(|line| line.starts_with(&identity)),
        "{stdout}"
    );

    let readme = blocker(&["explain", FIXTURE_README, "--policy-dir", policy_dir])?;
    ensure!(
        readme.status.code() == Some(1),
        "a data file is not banned: {readme:?}"
    );
    ensure!(
        String::from_utf8_lossy(&readme.stdout).contains(": not banned: "),
        "{readme:?}"
    );

    let (mut daemon, started) = Daemon::start(&sandbox.policy_dir(), &["--backend", "lsm"])?;
    // The program and the library; not the README.
    ensure!(started["entries"] == 2, "{started}");
    let error = Command::new(FIXTURE_TOOL)
        .status()
        .expect_err("the banned package's program must not run");
    ensure!(error.raw_os_error() == Some(libc::EPERM), "{error}");
    let record = daemon.wait_for_exec(Path::new(FIXTURE_TOOL))?;
    ensure!(
        record["rule"] == "fixture" && record["enforcement"] == "eperm",
        "{record}"
    );

    let resolved = blocker(&["resolve", policy_dir, "--json", "--no-hash-cache"])?;
    let resolved: serde_json::Value = serde_json::from_slice(&resolved.stdout)?;
    let mut files: Vec<&str> = resolved["rules"][0]["files"]
        .as_array()
        .context("files")?
        .iter()
        .filter_map(|file| file["path"].as_str())
        .collect();
    files.sort_unstable();
    ensure!(files == [FIXTURE_TOOL, FIXTURE_LIBRARY], "{resolved}");
    ensure!(resolved["warnings"] == serde_json::json!([]), "{resolved}");

    let (status, _, _) = daemon.stop()?;
    ensure!(status.success());
    ensure!(
        Command::new(FIXTURE_TOOL).status()?.success(),
        "runs again after detach"
    );
    Ok(())
}

#[test]
fn banned_content_is_denied_under_any_name() -> Result<()> {
    let sandbox = Sandbox::new("content")?;
    let original = sandbox.copy_binary("original")?;
    let hash = sha256_of(&original)?;
    // A copy under another name in another directory: only its content says what it is.
    std::fs::create_dir(sandbox.path("elsewhere"))?;
    let renamed = sandbox.path("elsewhere/innocent-name");
    std::fs::copy(&original, &renamed)?;
    std::fs::remove_file(&original)?;
    sandbox.write_policy(
        "test.toml",
        &format!("name = \"test\"\n\n[[rule]]\nid = \"content\"\nsha256 = [\"{hash}\"]\n"),
    )?;

    let scan_root = sandbox.path("elsewhere");
    let (mut daemon, started) = Daemon::start(
        &sandbox.policy_dir(),
        &[
            "--backend",
            "lsm",
            "--no-hash-cache",
            "--scan-root",
            scan_root.to_str().context("utf-8 path")?,
        ],
    )?;
    // Content rules wait for the background scan; the kernel checks contents meanwhile.
    ensure!(started["entries"] == 0, "{started}");
    daemon.wait_for_log(
        "content rules: the background scan is done; 1 files banned",
        EVENT_TIMEOUT,
    )?;
    let error = Command::new(&renamed)
        .status()
        .expect_err("banned content must not run under another name");
    ensure!(error.raw_os_error() == Some(libc::EPERM), "{error}");
    let record = daemon.wait_for_exec(&renamed)?;
    ensure!(record["rule"] == "content", "{record}");
    ensure!(Command::new("/bin/busybox").arg("true").status()?.success());
    let (status, _, _) = daemon.stop()?;
    ensure!(status.success());
    Ok(())
}
