//! Identity rules on every filesystem, on Debian's kernels (run inside the VM by `cargo xtask
//! test`): the modules the VM loads at boot (xtask's `modules.rs`) give it loop devices, overlayfs,
//! btrfs, xfs and FUSE, and the host's `mkfs.*` make the images. A file banned by path is refused
//! on each, and a copy of it beside it runs: the ban map's key must be the kernel's
//! (`i_sb->s_dev`, `i_ino`), which `stat` does not give on btrfs and on overlayfs over layers of
//! several filesystems.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context, Result};
use blocker_integration_tests::{
    deny_and_audit_policy,
    filesystems::{devices_of, Mounted},
    harmless_binary, Daemon, Sandbox,
};

#[test]
fn the_vm_has_loop_devices_and_the_filesystems_its_modules_bring() -> Result<()> {
    let filesystems =
        fs::read_to_string("/proc/filesystems").context("reading /proc/filesystems")?;
    let known: Vec<&str> = filesystems
        .lines()
        .filter_map(|line| line.split_whitespace().last())
        .collect();
    for filesystem in ["ext4", "tmpfs", "overlay", "btrfs", "xfs", "fuse"] {
        ensure!(
            known.contains(&filesystem),
            "{filesystem} is not in /proc/filesystems: {known:?}"
        );
    }
    ensure!(
        Path::new("/dev/loop-control").exists(),
        "no /dev/loop-control: the loop module is not loaded"
    );
    Ok(())
}

/// An overlay at `<dir>/<name>` whose lower layer, on `lower`, holds copies named `banned`,
/// `unbanned` and `copied-up`, and whose upper layer is on `upper`.
fn overlay_of(dir: &Path, name: &str, lower: &Mounted, upper: &Mounted) -> Result<Mounted> {
    let layer = |mount: &Mounted, layer: &str| -> Result<PathBuf> {
        let path = mount.path.join(format!("{name}-{layer}"));
        fs::create_dir(&path)?;
        Ok(path)
    };
    let lower_dir = layer(lower, "lower")?;
    for file in ["banned", "unbanned", "copied-up"] {
        fs::copy(harmless_binary(), lower_dir.join(file))?;
    }
    Mounted::overlay(
        dir,
        name,
        &lower_dir,
        &layer(upper, "upper")?,
        &layer(upper, "work")?,
    )
}

/// The filesystems a test bans files on, each with a banned copy and a copy named by no rule.
struct Filesystems {
    /// Unmounted when dropped, in order: the overlays first, as they stand on the others.
    _mounts: Vec<Mounted>,
    /// (what, banned copy, unbanned copy)
    files: Vec<(String, PathBuf, PathBuf)>,
}

impl Filesystems {
    fn make(sandbox: &Sandbox) -> Result<Self> {
        let dir = sandbox.path("filesystems");
        let ext4 = Mounted::image(&dir, "ext4", "ext4", 32, &["mkfs.ext4", "-q", "-F"])?;
        let btrfs = Mounted::image(&dir, "btrfs", "btrfs", 128, &["mkfs.btrfs", "-q", "-f"])?;
        // mkfs.xfs refuses filesystems under 300 MiB; the image is sparse.
        let xfs = Mounted::image(&dir, "xfs", "xfs", 320, &["mkfs.xfs", "-q", "-f"])?;
        let tmpfs = Mounted::tmpfs(&dir, "tmpfs")?;
        let mut files = Vec::new();
        for (name, mount) in [
            ("ext4", &ext4),
            ("btrfs", &btrfs),
            ("xfs", &xfs),
            ("tmpfs", &tmpfs),
        ] {
            files.push((
                name.to_owned(),
                mount.copy(&harmless_binary(), "banned")?,
                mount.copy(&harmless_binary(), "unbanned")?,
            ));
        }

        // All layers on one filesystem (tmpfs): overlay reports its own st_dev. The lower layer
        // on ext4, the upper on tmpfs: overlay reports each layer's.
        let same_fs = overlay_of(&dir, "overlay-same-fs", &tmpfs, &tmpfs)?;
        let layered = overlay_of(&dir, "overlay-layered", &ext4, &tmpfs)?;
        for (name, overlay) in [
            ("overlay on one filesystem", &same_fs),
            ("overlay over ext4 and tmpfs", &layered),
        ] {
            files.push((
                format!("{name}, lower layer"),
                overlay.path.join("banned"),
                overlay.path.join("unbanned"),
            ));
            // Copied up to the upper layer by a metadata change.
            let copied_up = overlay.path.join("copied-up");
            fs::set_permissions(
                &copied_up,
                std::os::unix::fs::PermissionsExt::from_mode(0o755),
            )?;
            files.push((
                format!("{name}, copied up"),
                copied_up,
                overlay.path.join("unbanned"),
            ));
        }
        Ok(Self {
            _mounts: vec![same_fs, layered, ext4, btrfs, xfs, tmpfs],
            files,
        })
    }
}

#[test]
fn files_banned_by_path_are_refused_on_every_filesystem() -> Result<()> {
    let sandbox = Sandbox::new("filesystems")?;
    let filesystems = Filesystems::make(&sandbox)?;
    let banned: Vec<&Path> = filesystems
        .files
        .iter()
        .map(|(_, banned, _)| banned.as_path())
        .collect();
    sandbox.write_policy("test.toml", &deny_and_audit_policy(&banned, &[]))?;
    let (mut daemon, started) = Daemon::start(&sandbox.policy_dir(), &["--backend", "lsm"])?;
    ensure!(started["backend"] == "lsm", "{started}");
    // ext4, btrfs, xfs, tmpfs and the two overlays: one file of each was checked at start.
    daemon.wait_for_log(
        "the kernel identifies files as blocker does on the 6 filesystems",
        std::time::Duration::from_secs(5),
    )?;
    ensure!(
        started["entries"] == filesystems.files.len(),
        "one entry per banned file: {started}"
    );

    let mut failures = Vec::new();
    for (what, banned, unbanned) in &filesystems.files {
        match Command::new(banned).status() {
            Err(error) if error.raw_os_error() == Some(libc::EPERM) => {}
            outcome => failures.push(format!(
                "{what}: {} ran ({outcome:?}); {}",
                banned.display(),
                devices_of(banned)?
            )),
        }
        let status = Command::new(unbanned).status()?;
        if !status.success() {
            failures.push(format!(
                "{what}: {} did not run: {status}",
                unbanned.display()
            ));
        }
    }
    let (status, _, _) = daemon.stop()?;
    ensure!(status.success(), "daemon exit: {status}");
    ensure!(failures.is_empty(), "{}", failures.join("\n"));
    Ok(())
}

#[test]
fn a_policy_directory_on_btrfs_is_protected() -> Result<()> {
    let sandbox = Sandbox::new("filesystems-protected")?;
    let dir = sandbox.path("filesystems");
    let btrfs = Mounted::image(&dir, "btrfs", "btrfs", 128, &["mkfs.btrfs", "-q", "-f"])?;
    let policy_dir = btrfs.path.join("policies");
    fs::create_dir(&policy_dir)?;
    fs::write(policy_dir.join("test.toml"), "name = \"test\"\n")?;
    let (mut daemon, started) = Daemon::start(&policy_dir, &["--backend", "lsm", "--protect"])?;
    ensure!(started["protected"] == true, "{started}");
    let refused = fs::write(policy_dir.join("added.toml"), "");
    ensure!(
        refused
            .as_ref()
            .is_err_and(|error| error.raw_os_error() == Some(libc::EPERM)),
        "a file added to the protected policy directory on btrfs ({}): {refused:?}",
        devices_of(&policy_dir.join("test.toml"))?
    );
    let output = daemon.blocker_stop()?;
    ensure!(output.status.success(), "{output:?}");
    let status = daemon.wait(std::time::Duration::from_secs(30))?;
    ensure!(status.success(), "{status}");
    fs::write(policy_dir.join("after.toml"), "")
        .context("the policy directory is writable once the daemon stopped")?;
    drop(btrfs);
    Ok(())
}
