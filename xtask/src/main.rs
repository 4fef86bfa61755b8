//! Developer tasks for the blocker workspace, run as `cargo xtask ...`: each installs what it needs
//! on Debian (as root), so a fresh machine gets from a clone to passing tests in one command.

mod bench;
mod bench_report;
mod cargo;
mod cpio;
mod fuzz;
mod kernel_table;
mod kernels;
mod marked_section;
mod modules;
mod package;
mod prerequisites;
mod process;
mod systemd_vm;
mod test;
mod test_groups;
mod vm;

use std::{
    env,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Command, ExitCode},
};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

use crate::{cargo::Profile, kernels::Suite, prerequisites::Needs};

#[derive(Parser)]
#[command(about = "Builds, runs and tests blocker, installing what that needs")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Installs the build prerequisites, then builds blocker and its BPF programs.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Builds blocker in release mode and runs it (as root) on ./policies.
    Run {
        /// Arguments for blocker instead of `run --policy-dir policies`.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Builds blocker in release mode and packages it with its systemd unit and policies as
    /// target/package/blocker_<version>_<arch>.deb.
    Package,
    /// Installs all prerequisites, then runs the unit, host-kernel and VM tests; the VM tests
    /// run on each Debian kernel in turn.
    Test {
        /// Run only this VM test group, a module of tests/tests/vm/ (`vm_pin` or `pin` for
        /// pin.rs; repeatable), skipping the other stages: for working on one VM
        /// test.
        #[arg(long = "vm-test")]
        vm_tests: Vec<String>,
        /// Run the VM tests only on this Debian suite's kernel (repeatable); all three without.
        #[arg(long = "kernel", value_enum)]
        kernels: Vec<Suite>,
    },
    /// Measures blocker's costs against no blocker and fapolicyd, on the host and in the VM;
    /// prints a table and writes target/bench/report.json.
    Bench {
        /// Measure only these parts of the bench (repeatable: exec, kernel, storm, pipeline,
        /// load, scan, hash, lockdown), on the host and in the VM, and print their figures
        /// without the target table, which needs them all: for working on one figure.
        #[arg(long = "only", value_parser = ["exec", "kernel", "storm", "pipeline", "load", "scan", "hash", "lockdown"])]
        only: Vec<String>,
    },
    /// Runs the fuzz targets of fuzz/ (cargo-fuzz, nightly toolchain) from their corpora.
    Fuzz {
        /// How long each target runs.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Only these targets (default: all).
        targets: Vec<String>,
    },
}

fn main() -> Result<ExitCode> {
    let root = workspace_root();
    match Cli::parse().task {
        Task::Build { release } => {
            prerequisites::ensure(&root, Needs::Build)?;
            let profile = if release {
                Profile::Release
            } else {
                Profile::Debug
            };
            let blocker = cargo::build_blocker(&root, profile)?;
            println!("xtask: built {}", blocker.display());
        }
        Task::Run { args } => run(&root, args)?,
        Task::Package => {
            prerequisites::ensure(&root, Needs::Package)?;
            let built = package::build(&root)?;
            println!("xtask: built {}", built.deb.display());
        }
        Task::Test { vm_tests, kernels } => {
            if !test::run(&root, &vm_tests, &chosen_kernels(&kernels)) {
                return Ok(ExitCode::FAILURE);
            }
        }
        Task::Bench { only } => bench::run(&root, &only)?,
        Task::Fuzz { seconds, targets } => {
            if !fuzz::run(&root, seconds, &targets)? {
                return Ok(ExitCode::FAILURE);
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// The suites named on the command line, each once in the order given; all of them if none.
fn chosen_kernels(named: &[Suite]) -> Vec<Suite> {
    if named.is_empty() {
        return Suite::ALL.to_vec();
    }
    let mut chosen = Vec::new();
    for suite in named {
        if !chosen.contains(suite) {
            chosen.push(*suite);
        }
    }
    chosen
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("xtask lives in the workspace root")
        .to_owned()
}

fn run(root: &Path, args: Vec<String>) -> Result<()> {
    let default_run = args.is_empty();
    if default_run && !process::is_root() {
        bail!("blocker loads BPF programs, which needs root; run `cargo xtask run` as root");
    }
    prerequisites::ensure(root, Needs::Build)?;
    let blocker = cargo::build_blocker(root, Profile::Release)?;
    let args = if default_run {
        ["run", "--policy-dir", "policies"]
            .map(String::from)
            .to_vec()
    } else {
        if !process::is_root() {
            println!("xtask: not root; blocker cannot load BPF programs without it");
        }
        args
    };
    let mut blocker_command = Command::new(&blocker);
    blocker_command.args(&args).current_dir(root);
    if env::var_os("RUST_LOG").is_none() {
        blocker_command.env("RUST_LOG", "info");
    }
    let error = blocker_command.exec();
    Err(error).with_context(|| format!("cannot run `{}`", process::describe(&blocker_command)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn test_kernels(args: &[&str]) -> Result<Vec<Suite>, clap::Error> {
        let cli = Cli::try_parse_from(["xtask", "test"].iter().chain(args))?;
        match cli.task {
            Task::Test { kernels, .. } => Ok(chosen_kernels(&kernels)),
            _ => unreachable!("parsed a test task"),
        }
    }

    #[test]
    fn the_kernel_option_chooses_suites() {
        assert_eq!(test_kernels(&[]).unwrap(), Suite::ALL);
        assert_eq!(
            test_kernels(&["--kernel", "sid", "--kernel", "bookworm", "--kernel", "sid"]).unwrap(),
            [Suite::Sid, Suite::Bookworm]
        );
        assert_eq!(
            test_kernels(&["--kernel", "trixie", "--vm-test", "vm_lsm"]).unwrap(),
            [Suite::Trixie]
        );
        assert!(test_kernels(&["--kernel", "buster"]).is_err());
    }
}
