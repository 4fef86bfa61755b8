//! `cargo xtask test`: the unit tests, the tests against the host kernel, and the tests in a VM
//! whose kernel can load BPF LSM programs, summed up in one line.

use std::{path::Path, time::Duration};

use anyhow::{bail, Context, Result};

use crate::{
    cargo::{self, Profile, TestCounts, TestRun},
    package::{self, Built},
    prerequisites::{self, Needs},
    systemd_vm, vm,
};

const TESTS_PACKAGE: &str = "blocker-integration-tests";
/// Test targets with this prefix run in the VM; every other stage leaves them out through their
/// `required-features = ["vm"]`.
const VM_TEST_PREFIX: &str = "vm_";
const UNIT_TIMEOUT: Duration = Duration::from_secs(600);
const HOST_KERNEL_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs every stage, even after one fails, and prints `summary: N passed, M failed` last; with
/// `only_vm_tests`, just those VM tests. Returns whether everything passed.
pub fn run(root: &Path, only_vm_tests: &[String]) -> bool {
    let mut counts = TestCounts::default();
    let mut failures = Vec::new();
    let mut record = |what: &str, outcome: Result<()>| {
        let succeeded = outcome.is_ok();
        if let Err(error) = outcome {
            failures.push(format!("{what}: {error:#}"));
        }
        succeeded
    };

    stage("prerequisites");
    if record(
        "prerequisites",
        prerequisites::ensure(root, Needs::BuildAndVm),
    ) {
        if only_vm_tests.is_empty() {
            stage("unit tests");
            record("unit tests", unit_tests(root, &mut counts));
        }

        if only_vm_tests.is_empty() {
            stage("blocker (debug build, for the host-kernel tests)");
            match cargo::build_blocker(root, Profile::Debug) {
                Ok(blocker) => {
                    stage("host-kernel tests");
                    record(
                        "host-kernel tests",
                        host_kernel_tests(root, &blocker, &mut counts),
                    );
                }
                Err(error) => {
                    record("building blocker", Err(error));
                }
            }
        }
        // The VM tests run the release build the package holds, and install the package.
        stage("package (release build, for the VM tests)");
        match package::build(root) {
            Ok(built) => {
                println!("xtask: built {}", built.deb.display());
                stage("VM tests");
                record(
                    "VM tests",
                    vm_tests(root, &built, only_vm_tests, &mut counts),
                );
            }
            Err(error) => {
                record("building the package", Err(error));
            }
        }
    }

    for failure in &failures {
        println!("xtask: FAILED {failure}");
    }
    println!(
        "summary: {} passed, {} failed",
        counts.passed, counts.failed
    );
    failures.is_empty() && counts.failed == 0
}

fn stage(name: &str) {
    println!("\n==== xtask test: {name} ====");
}

/// The default members' tests; feature-gated integration tests stay out.
fn unit_tests(root: &Path, counts: &mut TestCounts) -> Result<()> {
    let run = TestRun {
        selection: &[],
        libtest_args: &[],
        env: &[],
        timeout: UNIT_TIMEOUT,
    };
    cargo::test(root, &run, counts)
}

/// Tests that load blocker's programs into the host kernel; one at a time, as they share it.
fn host_kernel_tests(root: &Path, blocker: &Path, counts: &mut TestCounts) -> Result<()> {
    let run = TestRun {
        selection: &["--package", TESTS_PACKAGE, "--features", "host-kernel"],
        libtest_args: &["--test-threads=1"],
        env: &[("BLOCKER_BIN", blocker.as_os_str())],
        timeout: HOST_KERNEL_TIMEOUT,
    };
    cargo::test(root, &run, counts)
}

fn vm_tests(root: &Path, package: &Built, only: &[String], counts: &mut TestCounts) -> Result<()> {
    let args = [
        "test",
        "--package",
        TESTS_PACKAGE,
        "--features",
        "vm",
        "--no-run",
    ];
    let (systemd_tests, busybox_tests): (Vec<_>, Vec<_>) = cargo::build_executables(root, &args)?
        .into_iter()
        .filter(|artifact| {
            artifact.target_name.starts_with(VM_TEST_PREFIX)
                && artifact.target_kinds.iter().any(|kind| kind == "test")
                && (only.is_empty() || only.contains(&artifact.target_name))
        })
        .partition(|artifact| artifact.target_name.starts_with(systemd_vm::TEST_PREFIX));
    if systemd_tests.is_empty() && busybox_tests.is_empty() {
        bail!(
            "{TESTS_PACKAGE} has no test target named {VM_TEST_PREFIX}* (declared in \
             tests/Cargo.toml with required-features = [\"vm\"])"
        );
    }
    let kernel = prerequisites::cached_kernel(root)?
        .context("no VM kernel in target/vm/kernel although prerequisites were ensured")?;
    // Both VMs run even when the first fails; each failure is reported.
    let busybox = if busybox_tests.is_empty() {
        Ok(())
    } else {
        vm::run_tests(root, &kernel, &busybox_tests, package, counts)
    };
    let systemd = if systemd_tests.is_empty() {
        Ok(())
    } else {
        systemd_vm::run_tests(root, &kernel, &systemd_tests, package, counts)
            .context("the systemd VM")
    };
    busybox.and(systemd)
}
