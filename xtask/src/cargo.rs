//! Running cargo: builds whose executables we need, and test runs whose results we count.

use std::{
    env,
    ffi::OsStr,
    ops::AddAssign,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{bail, Context, Result};

use crate::process::{self, Ended};

pub enum Profile {
    Debug,
    Release,
}

/// An executable cargo built, as reported in its JSON messages.
pub struct Artifact {
    pub target_name: String,
    pub target_kinds: Vec<String>,
    pub executable: PathBuf,
}

/// Passed and failed test counts, summed from libtest's `test result:` lines.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TestCounts {
    pub passed: u64,
    pub failed: u64,
}

impl AddAssign for TestCounts {
    fn add_assign(&mut self, other: Self) {
        self.passed += other.passed;
        self.failed += other.failed;
    }
}

/// The cargo that runs xtask (so the same toolchain), in the workspace root.
pub fn command(root: &Path) -> Command {
    let mut command = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.current_dir(root).stdin(Stdio::null());
    command
}

/// Builds the `blocker` binary (and, through its build script, the BPF programs) and returns the
/// executable's path.
pub fn build_blocker(root: &Path, profile: Profile) -> Result<PathBuf> {
    let mut args = vec!["build", "--package", "blocker"];
    if let Profile::Release = profile {
        args.push("--release");
    }
    build_executables(root, &args)?
        .into_iter()
        .find(|artifact| {
            artifact.target_name == "blocker" && artifact.target_kinds.iter().any(|k| k == "bin")
        })
        .map(|artifact| artifact.executable)
        .with_context(|| format!("`cargo {}` built no blocker executable", args.join(" ")))
}

/// Runs `cargo ARGS` (a build, or a `test --no-run`) and returns the executables it produced, as
/// cargo reports them; that way the target directory and file names never have to be guessed.
pub fn build_executables(root: &Path, args: &[&str]) -> Result<Vec<Artifact>> {
    let mut cargo = command(root);
    cargo
        .args(args)
        .arg("--message-format=json-render-diagnostics")
        .stderr(Stdio::inherit());
    let output = cargo
        .output()
        .with_context(|| format!("cannot start `{}`", process::describe(&cargo)))?;
    if !output.status.success() {
        bail!("`{}` failed ({})", process::describe(&cargo), output.status);
    }
    Ok(parse_executables(&String::from_utf8_lossy(&output.stdout)))
}

fn parse_executables(messages: &str) -> Vec<Artifact> {
    messages
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|message| message["reason"] == "compiler-artifact")
        .filter_map(|message| {
            let executable = message["executable"].as_str()?;
            let target = &message["target"];
            Some(Artifact {
                target_name: target["name"].as_str()?.to_owned(),
                target_kinds: target["kind"]
                    .as_array()?
                    .iter()
                    .filter_map(|kind| kind.as_str().map(str::to_owned))
                    .collect(),
                executable: PathBuf::from(executable),
            })
        })
        .collect()
}

/// The full names of the tests in the libtest executable `executable` (`lsm::banned_exec_fails`),
/// ignored ones included, as its `--list` gives them; it runs none of them.
pub fn list_tests(executable: &Path) -> Result<Vec<String>> {
    let mut list = Command::new(executable);
    list.arg("--list");
    let output = process::stdout_of(&mut list)?;
    Ok(parse_test_list(&String::from_utf8_lossy(&output)))
}

/// Reads `--list` output: `lsm::banned_exec_fails: test` per test, then a count.
fn parse_test_list(output: &str) -> Vec<String> {
    output
        .lines()
        .filter_map(|line| line.strip_suffix(": test"))
        .map(str::to_owned)
        .collect()
}

/// A `cargo test` run: which tests, how libtest runs them, their environment and deadline.
pub struct TestRun<'a> {
    pub selection: &'a [&'a str],
    pub libtest_args: &'a [&'a str],
    pub env: &'a [(&'a str, &'a OsStr)],
    pub timeout: Duration,
}

/// Compiles the tests, then runs them under the deadline while streaming their output and adding
/// their `test result:` counts to `counts`. Compiling first keeps build time out of the deadline.
pub fn test(root: &Path, run: &TestRun, counts: &mut TestCounts) -> Result<()> {
    process::run(
        command(root)
            .arg("test")
            .args(run.selection)
            .arg("--no-run"),
    )?;

    let mut cargo = command(root);
    cargo
        .arg("test")
        .args(run.selection)
        .arg("--")
        .args(run.libtest_args)
        .envs(run.env.iter().copied());
    let description = process::describe(&cargo);
    let ended = process::run_with_deadline(&mut cargo, run.timeout, |line| {
        println!("{line}");
        if let Some(result) = parse_test_result(line) {
            *counts += result;
        }
    })?;
    match ended {
        Ended::Exited(status) if status.success() => Ok(()),
        Ended::Exited(status) => bail!("`{description}` failed ({status})"),
        Ended::TimedOut => bail!(
            "`{description}` did not finish within {} s and was killed",
            run.timeout.as_secs()
        ),
    }
}

/// Reads libtest's summary line,
/// `test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; finished in 0.01s`,
/// wherever it sits in `line` (a VM's console may prefix it).
pub fn parse_test_result(line: &str) -> Option<TestCounts> {
    let (_, result) = line.split_once("test result: ")?;
    let (_, fields) = result.split_once(". ")?;
    let mut passed = None;
    let mut failed = None;
    for field in fields.split(';') {
        let mut words = field.split_whitespace();
        let (Some(number), Some(label)) = (words.next(), words.next()) else {
            continue;
        };
        match (label, number.parse()) {
            ("passed", Ok(number)) => passed = Some(number),
            ("failed", Ok(number)) => failed = Some(number),
            _ => {}
        }
    }
    Some(TestCounts {
        passed: passed?,
        failed: failed?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_passing_and_failing_test_results() {
        assert_eq!(
            parse_test_result(
                "test result: ok. 12 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out; \
                 finished in 0.31s"
            ),
            Some(TestCounts {
                passed: 12,
                failed: 0
            })
        );
        assert_eq!(
            parse_test_result(
                "vm| test result: FAILED. 2 passed; 3 failed; 0 ignored; 0 measured; 0 filtered out"
            ),
            Some(TestCounts { passed: 2, failed: 3 })
        );
    }

    #[test]
    fn ignores_other_lines() {
        assert_eq!(parse_test_result("test lsm::denies ... ok"), None);
        assert_eq!(parse_test_result("running 3 tests"), None);
        assert_eq!(parse_test_result("test result: garbled"), None);
    }

    #[test]
    fn reads_the_test_list() {
        let output = "lsm::banned_exec_fails: test\n\
                      tamper::reused_pid::is_refused: test\n\
                      \n\
                      2 tests, 0 benchmarks\n";
        assert_eq!(
            parse_test_list(output),
            ["lsm::banned_exec_fails", "tamper::reused_pid::is_refused"]
        );
    }

    #[test]
    fn collects_executables_from_cargo_messages() {
        let messages = [
            r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"common"},"executable":null}"#,
            r#"{"reason":"compiler-artifact","target":{"kind":["test"],"name":"vm"},"executable":"/t/debug/deps/vm-abc"}"#,
            r#"{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"blocker"},"executable":"/t/debug/blocker"}"#,
            r#"{"reason":"build-finished","success":true}"#,
        ]
        .join("\n");
        let artifacts = parse_executables(&messages);
        let found: Vec<_> = artifacts
            .iter()
            .map(|a| {
                (
                    a.target_name.as_str(),
                    a.target_kinds.clone(),
                    a.executable.clone(),
                )
            })
            .collect();
        assert_eq!(
            found,
            [
                (
                    "vm",
                    vec!["test".to_owned()],
                    PathBuf::from("/t/debug/deps/vm-abc")
                ),
                (
                    "blocker",
                    vec!["bin".to_owned()],
                    PathBuf::from("/t/debug/blocker")
                ),
            ]
        );
    }
}
