//! Filesystems on Debian's kernels (run inside the VM by `cargo xtask test`): the modules the VM
//! loads at boot (xtask's `modules.rs`) give it loop devices, overlayfs, btrfs, xfs and FUSE.

use std::{fs, path::Path};

use anyhow::{ensure, Context, Result};

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
