//! `cargo xtask bench`: builds blocker and the bench driver (`tests/src/bin/blocker-bench/`) in
//! release mode, runs the driver on the host (the `kill` backend) and in the VM (the `lsm`
//! backend), and turns the figures they print into one table on stdout, in the latest results of
//! docs/PERFORMANCE.md, and `target/bench/report.json`.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{
    bench_report::{self, Report, Run},
    cargo::{self, Profile},
    kernels::{self, Kernel, Suite},
    prerequisites::{self, Needs},
    process::{self, Ended},
    vm::{self, Guest},
};

const BENCH_DIR: &str = "target/bench";
/// Where a full run writes its table, between `bench_report::LATEST_RESULTS`' markers.
const PERFORMANCE_DOC: &str = "docs/PERFORMANCE.md";
/// The VM's figures come from one kernel, the one of the Debian release blocker targets.
const KERNEL: Suite = Suite::Bookworm;
/// The bench driver is a binary of the integration tests' package (tests/src/bin/).
const DRIVER_PACKAGE: &str = "blocker-integration-tests";
const DRIVER: &str = "blocker-bench";
const EXEC_TARGET_SOURCE: &str = "tests/fixtures/exec-target.c";
const FAPOLICYD: &str = "/usr/sbin/fapolicyd";
/// The libmagic databases fapolicyd loads at start, its own and the system's.
const FAPOLICYD_DATA: &[&str] = &[
    "/usr/share/fapolicyd/fapolicyd-magic.mgc",
    "/usr/share/misc/magic.mgc",
];
const GUEST_DRIVER: &str = "/bench/blocker-bench";
const GUEST_EXEC_TARGET: &str = "/bench/exec-target";
/// Where the driver mounts its private tmpfs in the VM.
const GUEST_WORK_DIR: &str = "/bench-work";
/// What the VM's /init prints after the driver, with its exit status.
const GUEST_EXIT: &str = "BLOCKER-BENCH-VM: exit=";
/// The host stage has taken about 10 minutes on 2 busy CPUs; this only catches hangs.
const HOST_TIMEOUT: Duration = Duration::from_secs(60 * 60);
/// The VM stage runs longer than a test suite: fapolicyd alone takes minutes there to load the
/// lockdown figures' trust list. This only catches hangs.
const VM_TIMEOUT: Duration = Duration::from_secs(90 * 60);

/// How much the host stage measures: enough rounds for the median of a ratio to be known
/// within a few percent on a busy machine, and repetitions for a median and a spread.
const HOST_PLAN: &[(&str, &str)] = &[
    ("--rounds", "40"),
    ("--execs-per-loop", "250"),
    ("--large-policy-files", "100000"),
    ("--storm-execs", "20000"),
    ("--storms", "3"),
    ("--startup-timeout-secs", "300"),
    ("--load-files", "1000000"),
    ("--load-repetitions", "3"),
    ("--scan-tree", "/usr"),
    ("--scan-repetitions", "3"),
    ("--check-rules", "200000"),
    ("--check-repetitions", "5"),
    ("--pipeline-events", "200000"),
    ("--pipeline-runs", "5"),
];

/// The VM emulates without KVM, tens of times slower: fewer execs, the same shape. fapolicyd
/// 1.1.7 checks each line of its trust list against every line before it, so the lockdown
/// figures' list of 100,000 files takes it minutes to load there (22 s on the host).
const VM_PLAN: &[(&str, &str)] = &[
    ("--rounds", "8"),
    ("--execs-per-loop", "200"),
    ("--large-policy-files", "100000"),
    ("--storm-execs", "2000"),
    ("--storms", "3"),
    ("--startup-timeout-secs", "1200"),
    ("--hashed-program-mib", "20"),
    ("--hashed-programs", "5"),
];

/// Runs the bench; with `only` parts named, only those, and prints their figures instead of the
/// report.
pub fn run(root: &Path, only: &[String]) -> Result<()> {
    if !process::is_root() {
        bail!(
            "the bench loads BPF programs, mounts filesystems and drops the page cache: run \
             `cargo xtask bench` as root"
        );
    }
    prerequisites::ensure(root, Needs::Bench { kernels: &[KERNEL] })?;
    let bench_dir = root.join(BENCH_DIR);
    fs::create_dir_all(&bench_dir).with_context(|| format!("creating {}", bench_dir.display()))?;
    let blocker = cargo::build_blocker(root, Profile::Release)?;
    let driver = build_driver(root)?;
    let exec_target = compile_exec_target(root, &bench_dir)?;
    let kernel = kernels::ensured(root, KERNEL)?;

    // The sources measured are those of now: later edits are not in the binaries.
    let commit = describe_commit(root);
    let started = Instant::now();
    stage("host (kill backend)");
    let only: Vec<String> = only
        .iter()
        .flat_map(|part| ["--only".to_owned(), part.clone()])
        .collect();
    let mut records = on_host(&bench_dir, &driver, &blocker, &exec_target, &only)?;
    stage("VM (lsm backend)");
    records.extend(in_vm(
        root,
        &kernel,
        &driver,
        &blocker,
        &exec_target,
        &only,
    )?);
    if !only.is_empty() {
        for record in &records {
            println!("{}", serde_json::to_string_pretty(record)?);
        }
        return Ok(());
    }

    let run = Run {
        generated: &utc_now()?,
        commit: &commit,
        duration: started.elapsed(),
    };
    let report = Report::new(records, &run)?;
    let table = report.table();
    println!("\n{table}");
    let report_file = bench_dir.join("report.json");
    fs::write(&report_file, report.to_json())
        .with_context(|| format!("writing {}", report_file.display()))?;
    println!("xtask: wrote {}", report_file.display());
    let performance_doc = root.join(PERFORMANCE_DOC);
    bench_report::LATEST_RESULTS
        .rewrite(&performance_doc, &table)
        .context("writing the latest results")?;
    println!(
        "xtask: wrote the latest results in {}",
        performance_doc.display()
    );
    Ok(())
}

fn stage(name: &str) {
    println!("\n==== xtask bench: {name} ====");
}

fn build_driver(root: &Path) -> Result<PathBuf> {
    let args = [
        "build",
        "--release",
        "--package",
        DRIVER_PACKAGE,
        "--bin",
        DRIVER,
    ];
    cargo::build_executables(root, &args)?
        .into_iter()
        .find(|artifact| artifact.target_name == DRIVER)
        .map(|artifact| artifact.executable)
        .with_context(|| format!("`cargo {}` built no {DRIVER}", args.join(" ")))
}

/// The program every exec loop runs, linked statically so that an exec opens nothing else.
fn compile_exec_target(root: &Path, bench_dir: &Path) -> Result<PathBuf> {
    let target = bench_dir.join("exec-target");
    process::run(
        Command::new("gcc")
            .args(["-static", "-O2", "-o"])
            .arg(&target)
            .arg(root.join(EXEC_TARGET_SOURCE)),
    )?;
    Ok(target)
}

fn plan_args(plan: &[(&str, &str)]) -> Vec<String> {
    plan.iter()
        .flat_map(|(flag, value)| [flag.to_string(), value.to_string()])
        .collect()
}

fn on_host(
    bench_dir: &Path,
    driver: &Path,
    blocker: &Path,
    exec_target: &Path,
    only: &[String],
) -> Result<Vec<Value>> {
    let mut command = Command::new(driver);
    command
        .arg("host")
        .arg("--blocker")
        .arg(blocker)
        .arg("--exec-target")
        .arg(exec_target)
        .args(["--fapolicyd", FAPOLICYD])
        .arg("--work-dir")
        .arg(bench_dir.join("work"))
        .args(plan_args(HOST_PLAN))
        .args(only);
    let log_file = bench_dir.join("host.log");
    let mut log = Vec::new();
    let mut records = Vec::new();
    let ended = process::run_with_deadline(&mut command, HOST_TIMEOUT, |line| {
        log.push(line.to_owned());
        match bench_report::parse_record(line) {
            Some(record) => records.push(record),
            None => println!("{line}"),
        }
    })?;
    fs::write(&log_file, log.join("\n") + "\n")
        .with_context(|| format!("writing {}", log_file.display()))?;
    match ended {
        Ended::Exited(status) if status.success() => Ok(records),
        Ended::Exited(status) => bail!(
            "the host bench failed ({status}); its output is in {}",
            log_file.display()
        ),
        Ended::TimedOut => bail!(
            "the host bench did not finish within {} s; its output is in {}",
            HOST_TIMEOUT.as_secs(),
            log_file.display()
        ),
    }
}

fn in_vm(
    root: &Path,
    kernel: &Kernel,
    driver: &Path,
    blocker: &Path,
    exec_target: &Path,
    only: &[String],
) -> Result<Vec<Value>> {
    let arguments = [plan_args(VM_PLAN), only.to_vec()].concat().join(" ");
    let init = format!(
        r#"#!/bin/busybox sh
# Written by xtask (bench.rs): runs the bench driver, then powers off.
{setup}export RUST_BACKTRACE=1
{GUEST_DRIVER} vm --blocker {blocker} --exec-target {GUEST_EXEC_TARGET} --fapolicyd {FAPOLICYD} \
    --work-dir {GUEST_WORK_DIR} {arguments} 2>/tmp/bench-errors
echo "{GUEST_EXIT}$?"
tail -n 40 /tmp/bench-errors
poweroff -f
"#,
        blocker = vm::GUEST_BLOCKER,
        setup = vm::guest_setup(),
    );
    let guest = Guest {
        init,
        programs: vec![
            (GUEST_DRIVER.to_owned(), driver.to_owned()),
            (GUEST_EXEC_TARGET.to_owned(), exec_target.to_owned()),
            (FAPOLICYD.to_owned(), PathBuf::from(FAPOLICYD)),
        ],
        data: FAPOLICYD_DATA
            .iter()
            .map(|file| (file.to_string(), PathBuf::from(file)))
            .collect(),
        // The benchmark runs on the kernel's own filesystems.
        kernels: &[],
    };
    let console = vm::run_guest(
        root,
        kernel,
        &guest,
        blocker,
        "bench-console.log",
        VM_TIMEOUT,
    )?;
    let exit = console.iter().find_map(|line| {
        line.split_once(GUEST_EXIT)
            .map(|(_, code)| code.trim().to_owned())
    });
    match exit.as_deref() {
        Some("0") => Ok(console
            .iter()
            .filter_map(|line| bench_report::parse_record(line))
            .collect()),
        Some(code) => {
            bail!("the bench driver failed in the VM (exit {code}); see its console above")
        }
        None => bail!("the bench driver never finished in the VM; see its console above"),
    }
}

/// The current time in UTC, as `date` prints it.
fn utc_now() -> Result<String> {
    let output = Command::new("date")
        .args(["-u", "+%Y-%m-%dT%H:%M:%SZ"])
        .output()
        .context("running date")?;
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

/// The commit the bench measures, for its report: `` `2778daf1b2c3` ``, noting uncommitted
/// changes to tracked files; where git cannot say (no git, not a clone), why not.
fn describe_commit(root: &Path) -> String {
    let git = |args: &[&str]| {
        process::stdout_of(Command::new("git").arg("-C").arg(root).args(args))
            .map(|out| String::from_utf8_lossy(&out).trim().to_owned())
    };
    commit_description(git(&["rev-parse", "--short=12", "HEAD"]), || {
        git(&["status", "--porcelain", "--untracked-files=no"])
    })
}

/// From git's answers: the commit, then (asked only if there is one) the changed files.
fn commit_description(commit: Result<String>, changes: impl FnOnce() -> Result<String>) -> String {
    let commit = match commit {
        Ok(commit) => commit,
        Err(error) => return format!("unknown ({error:#})"),
    };
    match changes() {
        Ok(changes) if changes.is_empty() => format!("`{commit}`"),
        Ok(_) => format!("`{commit}` with uncommitted changes"),
        Err(error) => format!("`{commit}` (its changes unknown: {error:#})"),
    }
}

#[cfg(test)]
mod tests {
    use anyhow::anyhow;

    use super::*;

    #[test]
    fn describes_the_commit_and_whether_the_tree_had_changes() {
        let commit = || Ok("2778daf1b2c3".to_owned());
        assert_eq!(
            commit_description(commit(), || Ok(String::new())),
            "`2778daf1b2c3`"
        );
        assert_eq!(
            commit_description(commit(), || Ok(" M README.md".to_owned())),
            "`2778daf1b2c3` with uncommitted changes"
        );
        assert_eq!(
            commit_description(Err(anyhow!("not a git repository")), || {
                panic!("no commit, no question about its changes")
            }),
            "unknown (not a git repository)"
        );
    }
}
