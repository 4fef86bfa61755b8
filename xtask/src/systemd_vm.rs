//! The systemd VM tests: Debian 13's own userspace (built with mmdebstrap from Debian's archive,
//! cached in `target/vm`) booted with systemd as init, where the tests install blocker's package
//! and run the service as an administrator would. The root filesystem is the initramfs.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{
    cargo::{Artifact, TestCounts},
    kernels::{self, Kernel},
    package::Built,
    process,
    vm::{self, Entry, Initramfs, Machine, MARKER, VM_DIR},
};

/// Test targets with this prefix run here rather than in the busybox VM.
pub const TEST_PREFIX: &str = "vm_systemd";
const SUITE: &str = "trixie";
/// mmdebstrap's `minbase` is the essential packages and apt; these make it a booting system.
const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "udev",
    "kmod",
    "procps",
    "iproute2",
];
/// systemd and Debian's userspace in memory need more than the busybox VM.
const MACHINE: Machine = Machine {
    memory_mib: 3072,
    extra_command_line: "rdinit=/sbin/init",
};

/// Guest paths the tests know (tests/tests/vm_systemd.rs).
const GUEST_PACKAGE: &str = "/root/blocker.deb";
const GUEST_TESTS_DIR: &str = "/root/tests";
const RUNNER: &str = "/usr/local/sbin/blocker-vm-tests";
const RUNNER_UNIT: &str = "blocker-vm-tests.service";
/// Set by the runner before the reboot test reboots, so that the boot after it checks.
const REBOOTED_MARK: &str = "/var/lib/blocker-vm-tests/rebooted";
/// The test that reboots the VM (tests/tests/vm_systemd.rs), run alone before and after.
const REBOOT_TEST: &str = "the_service_is_up_before_logins_after_a_reboot";

/// Boots Debian 13 with systemd under `kernel`, runs each of `tests` there with the package at
/// hand, and adds their counts to `counts`.
pub fn run_tests(
    root: &Path,
    kernel: &Kernel,
    tests: &[Artifact],
    package: &Built,
    counts: &mut TestCounts,
) -> Result<()> {
    let vm_dir = root.join(VM_DIR);
    let rootfs = ensure_rootfs(&vm_dir)?;
    let stripped = vm_dir.join("stripped-systemd");
    fs::create_dir_all(&stripped).with_context(|| format!("creating {}", stripped.display()))?;

    let mut image = Initramfs::default();
    image.add_tree("/", &rootfs)?;
    image.add("/dev/console", Entry::console());
    image.add(GUEST_PACKAGE, Entry::HostFile(package.deb.clone()));
    let mut names = Vec::new();
    for test in tests {
        let guest = format!("{GUEST_TESTS_DIR}/{}", test.target_name);
        image.add(
            &guest,
            Entry::HostFile(vm::without_debug_info(&test.executable, &stripped)?),
        );
        names.push(test.target_name.as_str());
    }
    image.add(RUNNER, Entry::Script(runner_script(&names)));
    let unit = format!("/etc/systemd/system/{RUNNER_UNIT}");
    image.add(&unit, Entry::Text(runner_unit()));
    image.add(
        &format!("/etc/systemd/system/multi-user.target.wants/{RUNNER_UNIT}"),
        Entry::Symlink(unit),
    );
    let initramfs = vm_dir.join("initramfs-systemd.cpio");
    image.write(&initramfs)?;

    let console_log = vm_dir.join("console-systemd.log");
    let (console, ended) = vm::boot(kernel, &MACHINE, &initramfs, &console_log)?;
    vm::judge(&console, ended, &console_log, counts)
}

/// Runs the tests once systemd has started everything else, printing on the console.
fn runner_unit() -> String {
    format!(
        "# Written by xtask (systemd_vm.rs).
[Unit]
Description=blocker's VM tests
After=multi-user.target

[Service]
Type=oneshot
ExecStart={RUNNER}
StandardOutput=journal+console
StandardError=journal+console
TimeoutStartSec=infinity
"
    )
}

/// The runner: every test but the reboot test, then that one, which reboots (systemd's
/// soft-reboot: userspace starts over, the root filesystem in memory stays); after the reboot
/// the runner starts again and runs only the reboot test, which now checks, then powers off.
fn runner_script(tests: &[&str]) -> String {
    let mut script = format!(
        r#"#!/bin/sh
# Written by xtask (systemd_vm.rs): runs blocker's systemd tests, then powers off.
export RUST_BACKTRACE=1 BLOCKER_PACKAGE={GUEST_PACKAGE}
cd /root
if [ -e {REBOOTED_MARK} ]; then
"#
    );
    for test in tests {
        script += &format!(
            r#"    echo "{MARKER} begin {test}-after-reboot"
    {GUEST_TESTS_DIR}/{test} --test-threads=1 --exact {REBOOT_TEST}
    echo "{MARKER} end {test}-after-reboot exit=$?"
"#
        );
    }
    script += &format!(
        r#"    echo "{MARKER} done"
    systemctl poweroff
    exit 0
fi
echo "{MARKER} lsm $(cat /sys/kernel/security/lsm)"
"#
    );
    for test in tests {
        script += &format!(
            r#"echo "{MARKER} begin {test}"
{GUEST_TESTS_DIR}/{test} --test-threads=1 --skip {REBOOT_TEST}
echo "{MARKER} end {test} exit=$?"
"#
        );
    }
    script += &format!(
        r#"mkdir -p {rebooted_dir}
touch {REBOOTED_MARK}
for test in {GUEST_TESTS_DIR}/*; do
    # Prepares and reboots; returns only if the reboot did not happen.
    "$test" --test-threads=1 --exact {REBOOT_TEST}
done
echo "{MARKER} done"
systemctl poweroff
"#,
        rebooted_dir = Path::new(REBOOTED_MARK)
            .parent()
            .expect("the mark is in a directory")
            .display()
    );
    script
}

/// The Debian 13 root filesystem in `vm_dir`, built with mmdebstrap unless a build with the
/// same command is there.
fn ensure_rootfs(vm_dir: &Path) -> Result<PathBuf> {
    let rootfs = vm_dir.join(format!("rootfs-{SUITE}"));
    let stamp = vm_dir.join(format!("rootfs-{SUITE}.command"));
    let archive = kernels::debian_archive()?;
    let mut mmdebstrap = Command::new("mmdebstrap");
    mmdebstrap
        .args(["--variant=minbase", "--format=directory", "--quiet"])
        .arg(format!("--include={}", PACKAGES.join(",")))
        .arg(SUITE);
    let partial = vm_dir.join(format!("rootfs-{SUITE}.partial"));
    mmdebstrap
        .arg(&partial)
        .arg(format!("deb {archive} {SUITE} main"));
    let command = process::describe(&mmdebstrap);
    if rootfs.is_dir() && fs::read_to_string(&stamp).is_ok_and(|built| built == command) {
        return Ok(rootfs);
    }
    println!("xtask: building Debian {SUITE}'s root filesystem for the systemd VM tests");
    for stale in [&partial, &rootfs] {
        if stale.exists() {
            fs::remove_dir_all(stale).with_context(|| format!("removing {}", stale.display()))?;
        }
    }
    process::run(&mut mmdebstrap)?;
    // Renamed only once complete, so an interrupted build is never taken for a root filesystem.
    fs::rename(&partial, &rootfs)
        .with_context(|| format!("moving {} to {}", partial.display(), rootfs.display()))?;
    fs::write(&stamp, &command).with_context(|| format!("writing {}", stamp.display()))?;
    Ok(rootfs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_runner_reboots_once_and_then_checks() {
        let script = runner_script(&["vm_systemd"]);
        let before_reboot = script
            .split_once("fi\n")
            .expect("the after-reboot branch ends")
            .1;
        assert!(before_reboot.contains("--skip the_service_is_up_before_logins_after_a_reboot"));
        assert!(before_reboot.contains(&format!("touch {REBOOTED_MARK}")));
        let after_reboot = script.split_once("fi\n").unwrap().0;
        assert!(after_reboot.contains("--exact the_service_is_up_before_logins_after_a_reboot"));
        assert!(after_reboot.contains("systemctl poweroff"));
    }
}
