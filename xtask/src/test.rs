//! `cargo xtask test`: the unit tests, formatting and lints, the tests against the host kernel, a short run of each
//! fuzz target, and the tests in a VM on each chosen Debian kernel (which can load BPF LSM
//! programs), summed up in one line.

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::{
    cargo::{self, Profile, TestCounts, TestRun},
    fuzz, kernel_table,
    kernels::{self, Suite},
    package::{self, Built},
    prerequisites::{self, Needs},
    process, systemd_vm,
    test_groups::{self, TestGroup},
    vm,
};

const TESTS_PACKAGE: &str = "blocker-integration-tests";
/// The kernel the systemd VM boots: Debian 13's, under Debian 13's userspace.
const SYSTEMD_VM_SUITE: Suite = Suite::Trixie;
/// The test binary that runs in the VMs (tests/tests/vm/); every other stage leaves it out
/// through its `required-features = ["vm"]`.
const VM_TEST_BINARY: &str = "vm";
const UNIT_TIMEOUT: Duration = Duration::from_secs(600);
const HOST_KERNEL_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs every stage, even after one fails, and prints `summary: N passed, M failed` last; with
/// `only_vm_tests`, just those VM tests. The VM tests run once per kernel in `kernels`. Returns
/// whether everything passed.
pub fn run(root: &Path, only_vm_tests: &[String], kernels: &[Suite]) -> bool {
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
        prerequisites::ensure(root, Needs::BuildAndVm { kernels }),
    ) {
        if only_vm_tests.is_empty() {
            stage("unit tests");
            record("unit tests", unit_tests(root, &mut counts));
            stage("formatting and lints");
            record("formatting and lints", lints(root, &mut counts));
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
            stage(&format!(
                "fuzz targets ({} s each, as a regression check)",
                fuzz::REGRESSION_SECONDS
            ));
            record("fuzz targets", fuzz::regression(root, &mut counts));
        }
        // The VM tests run the release build the package holds, and install the package.
        stage("package (release build, for the VM tests)");
        match package::build(root) {
            Ok(built) => {
                println!("xtask: built {}", built.deb.display());
                stage("VM tests: the initramfs");
                match vm_test_image(root, &built, only_vm_tests, kernels) {
                    Ok(vm) => {
                        if let Some(initramfs) = &vm.busybox_image {
                            for &suite in kernels {
                                stage(&format!("VM tests on Debian {suite}'s kernel"));
                                let started = Instant::now();
                                record(
                                    &format!("VM tests on {suite}"),
                                    vm_tests(root, suite, initramfs, &mut counts),
                                );
                                println!(
                                    "xtask: the VM tests on {suite} took {:.0} s",
                                    started.elapsed().as_secs_f64()
                                );
                            }
                        }
                        let systemd_groups = vm
                            .systemd_groups
                            .iter()
                            .filter(|_| kernels.contains(&SYSTEMD_VM_SUITE));
                        for systemd_group in systemd_groups {
                            stage(&format!(
                                "VM tests under systemd ({}) on Debian {SYSTEMD_VM_SUITE}'s kernel",
                                systemd_group.name()
                            ));
                            let started = Instant::now();
                            record(
                                "VM tests under systemd",
                                systemd_vm_tests(
                                    root,
                                    &vm.binary,
                                    systemd_group,
                                    &built,
                                    &mut counts,
                                ),
                            );
                            println!(
                                "xtask: the VM tests under systemd took {:.0} s",
                                started.elapsed().as_secs_f64()
                            );
                        }
                    }
                    Err(error) => {
                        record("VM tests", Err(error));
                    }
                }
            }
            Err(error) => {
                record("building the package", Err(error));
            }
        }
    }

    if only_vm_tests.is_empty() && kernels == Suite::ALL {
        let readme = root.join("README.md");
        match kernel_table::update_readme(root, &readme) {
            Ok(()) => println!("xtask: wrote the kernel table in {}", readme.display()),
            Err(error) => failures.push(format!("the kernel table: {error:#}")),
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

/// `cargo fmt` and `cargo clippy` as the project keeps them: the whole workspace formatted, and
/// no warning in any target of the default members, the feature-gated tests included. Each
/// counts as one test.
fn lints(root: &Path, counts: &mut TestCounts) -> Result<()> {
    let checks: [(&str, &[&str]); 2] = [
        ("formatting", &["fmt", "--all", "--check"]),
        (
            "lints",
            &[
                "clippy",
                "--all-targets",
                "--all-features",
                "--",
                "--deny",
                "warnings",
            ],
        ),
    ];
    let mut failed = Vec::new();
    for (what, args) in checks {
        match process::run(cargo::command(root).args(args)) {
            Ok(()) => counts.passed += 1,
            Err(error) => {
                counts.failed += 1;
                failed.push(format!("{what}: {error:#}"));
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "{} (rustup's rustfmt and clippy components run them: `rustup component add rustfmt \
             clippy` if they are missing)",
            failed.join("; ")
        );
    }
    Ok(())
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

/// The VM test binary, and the initramfs with it, the package and the modules of the `kernels`
/// that boot it, to run its test groups (all, or the `only` ones).
fn vm_test_image(
    root: &Path,
    package: &Built,
    only: &[String],
    kernels: &[Suite],
) -> Result<VmTests> {
    let args = [
        "test",
        "--package",
        TESTS_PACKAGE,
        "--features",
        "vm",
        "--no-run",
    ];
    let binary = cargo::build_executables(root, &args)?
        .into_iter()
        .find(|artifact| {
            artifact.target_name == VM_TEST_BINARY
                && artifact.target_kinds.iter().any(|kind| kind == "test")
        })
        .map(|artifact| artifact.executable)
        .with_context(|| {
            format!(
                "{TESTS_PACKAGE} has no test target named {VM_TEST_BINARY} (declared in \
                 tests/Cargo.toml with required-features = [\"vm\"])"
            )
        })?;
    let groups = test_groups::by_module(&cargo::list_tests(&binary)?)?;
    let (systemd_groups, busybox_groups): (Vec<_>, Vec<_>) = test_groups::select(groups, only)?
        .into_iter()
        .partition(|group| systemd_vm::MODULES.contains(&group.module.as_str()));
    if systemd_groups.is_empty() && busybox_groups.is_empty() {
        bail!("the {VM_TEST_BINARY} test binary has no tests");
    }
    let busybox_image = if busybox_groups.is_empty() {
        None
    } else {
        let kernels = kernels
            .iter()
            .map(|&suite| kernels::ensured(root, suite))
            .collect::<Result<Vec<_>>>()?;
        Some(vm::test_image(
            root,
            &binary,
            &busybox_groups,
            package,
            &kernels,
        )?)
    };
    Ok(VmTests {
        binary,
        busybox_image,
        systemd_groups,
    })
}

/// The VM tests to run: the test binary, the busybox VM's initramfs, if any of its groups was
/// chosen, and the groups for the systemd VM, each booted on its own, if chosen.
struct VmTests {
    binary: PathBuf,
    busybox_image: Option<PathBuf>,
    systemd_groups: Vec<TestGroup>,
}

fn vm_tests(root: &Path, suite: Suite, initramfs: &Path, counts: &mut TestCounts) -> Result<()> {
    let kernel = kernels::ensured(root, suite)?;
    vm::run_suite(root, &kernel, initramfs, counts)
}

/// The systemd VM boots Debian 13's userspace on Debian 13's kernel.
fn systemd_vm_tests(
    root: &Path,
    binary: &Path,
    group: &TestGroup,
    package: &Built,
    counts: &mut TestCounts,
) -> Result<()> {
    let kernel = kernels::ensured(root, SYSTEMD_VM_SUITE)?;
    systemd_vm::run_tests(root, &kernel, binary, group, package, counts).context("the systemd VM")
}
