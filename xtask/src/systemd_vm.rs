//! The systemd VM tests: Debian 13's own userspace (built with mmdebstrap from Debian's archive,
//! cached in `target/vm`) booted with systemd as init, where the tests install blocker's package
//! and run the service as an administrator would. The root filesystem is the initramfs.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context, Result};

use crate::{
    cargo::TestCounts,
    kernels::{self, Kernel},
    package::Built,
    process,
    test_groups::{self, TestGroup},
    vm::{self, Entry, Initramfs, Machine, MARKER, VM_DIR},
};

/// The modules of the VM test binary that run here rather than in the busybox VM: the service
/// (`systemd`, which reboots), and the notifications a user's desktop session shows (`notify`).
pub const MODULES: &[&str] = &[REBOOTING_MODULE, "notify"];
/// The module whose group reboots the VM once (see [`REBOOT_TEST`]).
const REBOOTING_MODULE: &str = "systemd";
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
    // For vm_notify: useradd, and a desktop session of a test user (a virtual X display, a
    // notification server, dbus-monitor).
    "passwd",
    "dbus-bin",
    "xvfb",
    "dunst",
];
/// systemd and Debian's userspace in memory need more than the busybox VM.
const MACHINE: Machine = Machine {
    memory_mib: 3072,
    extra_command_line: "rdinit=/sbin/init",
};

/// Guest paths the tests know (tests/tests/vm/systemd.rs).
const GUEST_PACKAGE: &str = "/root/blocker.deb";
const GUEST_TEST_BINARY: &str = "/root/tests/vm";
const RUNNER: &str = "/usr/local/sbin/blocker-vm-tests";
const RUNNER_UNIT: &str = "blocker-vm-tests.service";
/// Set by the runner before the reboot test reboots, so that the boot after it checks.
const REBOOTED_MARK: &str = "/var/lib/blocker-vm-tests/rebooted";
/// The test that reboots the VM (tests/tests/vm/systemd.rs), run alone before and after.
const REBOOT_TEST: &str = "systemd::the_service_is_up_before_logins_after_a_reboot";

/// Boots Debian 13 with systemd under `kernel`, runs the `group` of the VM test binary `binary`
/// (the `systemd` module) there with the package at hand, and adds their counts to `counts`.
pub fn run_tests(
    root: &Path,
    kernel: &Kernel,
    binary: &Path,
    group: &TestGroup,
    package: &Built,
    counts: &mut TestCounts,
) -> Result<()> {
    // Without it the runner would not reboot, and nothing would say so.
    ensure!(
        group.module != REBOOTING_MODULE || group.tests.iter().any(|test| test == REBOOT_TEST),
        "the VM test binary has no test {REBOOT_TEST}, which the systemd VM reboots for \
         (REBOOT_TEST in xtask/src/systemd_vm.rs)"
    );
    let vm_dir = root.join(VM_DIR);
    let rootfs = ensure_rootfs(&vm_dir)?;
    let stripped = vm_dir.join("stripped-systemd");
    fs::create_dir_all(&stripped).with_context(|| format!("creating {}", stripped.display()))?;

    let mut image = Initramfs::default();
    image.add_tree("/", &rootfs)?;
    image.add("/dev/console", Entry::console());
    image.add(GUEST_PACKAGE, Entry::HostFile(package.deb.clone()));
    image.add(
        GUEST_TEST_BINARY,
        Entry::HostFile(vm::without_debug_info(binary, &stripped)?),
    );
    image.add(RUNNER, Entry::Script(runner_script(group)));
    let unit = format!("/etc/systemd/system/{RUNNER_UNIT}");
    image.add(&unit, Entry::Text(runner_unit()));
    image.add(
        &format!("/etc/systemd/system/multi-user.target.wants/{RUNNER_UNIT}"),
        Entry::Symlink(unit),
    );
    let initramfs = vm_dir.join("initramfs-systemd.cpio");
    image.write(&initramfs)?;

    let console_log = vm_dir.join("console-systemd.log");
    let (console, ended) = vm::boot(kernel, &MACHINE, &initramfs, &console_log, vm::TIMEOUT)?;
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

/// The runner: every test of `group` but the reboot test, then that one (if the group has it),
/// which reboots
/// (systemd's soft-reboot: userspace starts over, the root filesystem in memory stays); after the
/// reboot the runner starts again and runs only the reboot test, which now checks, then powers
/// off.
fn runner_script(group: &TestGroup) -> String {
    let name = group.name();
    let reboot = test_groups::shell_command(GUEST_TEST_BINARY, &[REBOOT_TEST]);
    let mut script = format!(
        r#"#!/bin/sh
# Written by xtask (systemd_vm.rs): runs blocker's systemd tests, then powers off.
export RUST_BACKTRACE=1 BLOCKER_PACKAGE={GUEST_PACKAGE}
cd /root
if [ -e {REBOOTED_MARK} ]; then
    echo "{MARKER} begin {name}-after-reboot"
    {reboot}
    echo "{MARKER} end {name}-after-reboot exit=$?"
    echo "{MARKER} done"
    systemctl poweroff
    exit 0
fi
echo "{MARKER} lsm $(cat /sys/kernel/security/lsm)"
"#
    );
    let before_reboot: Vec<&str> = group
        .tests
        .iter()
        .map(String::as_str)
        .filter(|test| *test != REBOOT_TEST)
        .collect();
    if !before_reboot.is_empty() {
        script += &format!(
            r#"echo "{MARKER} begin {name}"
{command}
echo "{MARKER} end {name} exit=$?"
"#,
            command = test_groups::shell_command(GUEST_TEST_BINARY, &before_reboot)
        );
    }
    if !group.tests.iter().any(|test| test == REBOOT_TEST) {
        script += &format!("echo \"{MARKER} done\"\nsystemctl poweroff\n");
        return script;
    }
    script += &format!(
        r#"mkdir -p {rebooted_dir}
touch {REBOOTED_MARK}
# Prepares and reboots; returns only if the reboot did not happen.
{reboot}
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
        let group = TestGroup {
            module: REBOOTING_MODULE.into(),
            tests: vec![
                "systemd::installs".into(),
                REBOOT_TEST.into(),
                "systemd::purges".into(),
            ],
        };
        let script = runner_script(&group);
        let (after_reboot, before_reboot) = script
            .split_once("fi\n")
            .expect("the after-reboot branch ends");
        let reboot = "/root/tests/vm --test-threads=1 --exact \
                      systemd::the_service_is_up_before_logins_after_a_reboot\n";
        assert!(before_reboot.contains(
            "echo \"BLOCKER-VM: begin vm_systemd\"\n\
             /root/tests/vm --test-threads=1 --exact systemd::installs systemd::purges\n"
        ));
        assert!(before_reboot.contains(&format!("touch {REBOOTED_MARK}\n# Prepares")));
        assert!(before_reboot.contains(reboot));
        assert!(after_reboot.contains("begin vm_systemd-after-reboot"));
        assert!(after_reboot.contains(reboot));
        assert!(after_reboot.contains("systemctl poweroff"));
    }

    #[test]
    fn a_group_without_the_reboot_test_runs_once_and_powers_off() {
        let group = TestGroup {
            module: "notify".into(),
            tests: vec!["notify::shows".into()],
        };
        let script = runner_script(&group);
        assert!(script.contains(
            "/root/tests/vm --test-threads=1 --exact notify::shows\n\
             echo \"BLOCKER-VM: end vm_notify exit=$?\"\n\
             echo \"BLOCKER-VM: done\"\nsystemctl poweroff\n"
        ));
        assert!(!script.contains("touch "));
    }
}
