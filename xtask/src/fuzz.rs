//! `cargo xtask fuzz`: runs every libFuzzer target of `fuzz/` (cargo-fuzz, on rustup's nightly
//! toolchain, with AddressSanitizer) for a given time. Each target starts from its corpus in
//! `fuzz/corpus/<target>`, which stays as committed: what libFuzzer finds goes to
//! `target/fuzz/corpus/<target>`, crashes to `fuzz/artifacts/<target>`. `cargo xtask test`
//! runs each target briefly as a regression check.

use std::{
    path::{Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{cargo, cargo::TestCounts, process};

const CARGO_FUZZ_VERSION: &str = "0.13.2";
const CARGO_FUZZ: &str = "target/tools/bin/cargo-fuzz";
/// The rustup toolchain cargo-fuzz builds with: sanitizers need nightly's `-Z` flags.
const TOOLCHAIN: &str = "nightly";
/// How long `cargo xtask test` fuzzes each target: enough to replay its corpus and try some
/// thousands of new inputs, while the whole stage stays a few minutes.
pub const REGRESSION_SECONDS: u64 = 20;
/// One input taking longer than this is a failure (libFuzzer's own default is 20 minutes):
/// every target must stay linear in its input, which libFuzzer keeps to a few KiB.
const INPUT_TIMEOUT_SECONDS: u64 = 60;

/// Runs each of `only` (every target if empty) for `seconds`; false if any found a crash.
pub fn run(root: &Path, seconds: u64, only: &[String]) -> Result<bool> {
    let failed: Vec<String> = fuzz_targets(root, seconds, only)?
        .into_iter()
        .filter_map(|(target, outcome)| outcome.is_err().then_some(target))
        .collect();
    if failed.is_empty() {
        println!("xtask: fuzzing found nothing");
    } else {
        println!(
            "xtask: fuzzing failed for {}; inputs that crash are in fuzz/artifacts/",
            failed.join(", ")
        );
    }
    Ok(failed.is_empty())
}

/// Every target for [`REGRESSION_SECONDS`], each counted as one test that passes when libFuzzer
/// finds nothing.
pub fn regression(root: &Path, counts: &mut TestCounts) -> Result<()> {
    let started = Instant::now();
    let outcomes = fuzz_targets(root, REGRESSION_SECONDS, &[])?;
    println!(
        "xtask: fuzzing {} targets took {:.0} s",
        outcomes.len(),
        started.elapsed().as_secs_f64()
    );
    let mut failed = Vec::new();
    for (target, outcome) in outcomes {
        match outcome {
            Ok(()) => counts.passed += 1,
            Err(error) => {
                counts.failed += 1;
                failed.push(format!("{target} ({error:#})"));
            }
        }
    }
    if !failed.is_empty() {
        bail!(
            "fuzzing failed for {}; inputs that crash are in fuzz/artifacts/",
            failed.join(", ")
        );
    }
    Ok(())
}

/// Fuzzes each of `only` (every target if empty) for `seconds`, one after another, and says
/// for each whether libFuzzer found nothing. Fails before fuzzing anything if the tools are
/// missing or no target matches.
fn fuzz_targets(root: &Path, seconds: u64, only: &[String]) -> Result<Vec<(String, Result<()>)>> {
    ensure_nightly()?;
    let cargo_fuzz = ensure_cargo_fuzz(root)?;
    let listed = nightly(&cargo_fuzz, root)
        .args(["fuzz", "list"])
        .output()
        .context("listing the fuzz targets")?;
    if !listed.status.success() {
        bail!(
            "`cargo fuzz list` failed ({}): {}",
            listed.status,
            String::from_utf8_lossy(&listed.stderr).trim()
        );
    }
    let targets: Vec<String> = String::from_utf8_lossy(&listed.stdout)
        .lines()
        .filter(|target| only.is_empty() || only.iter().any(|name| name == target))
        .map(String::from)
        .collect();
    if targets.is_empty() {
        bail!("no fuzz target in fuzz/Cargo.toml matches {only:?}");
    }
    let mut outcomes = Vec::new();
    for target in targets {
        let found = root.join("target/fuzz/corpus").join(&target);
        std::fs::create_dir_all(&found).with_context(|| format!("creating {}", found.display()))?;
        println!("xtask: fuzzing {target} for {seconds} s");
        let mut fuzz = nightly(&cargo_fuzz, root);
        fuzz.args(["fuzz", "run", &target])
            .arg(&found)
            .arg(root.join("fuzz/corpus").join(&target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .arg(format!("-timeout={INPUT_TIMEOUT_SECONDS}"));
        let outcome = process::run(&mut fuzz);
        if let Err(error) = &outcome {
            println!("xtask: {target}: {error:#}");
        }
        outcomes.push((target, outcome));
    }
    Ok(outcomes)
}

/// Fails with what to do when rustup has no nightly toolchain: without it cargo-fuzz cannot
/// build a single target, and the fuzzing must not look as if it passed.
fn ensure_nightly() -> Result<()> {
    let mut rustc = Command::new("rustc");
    rustc
        .arg("--version")
        .env("RUSTUP_TOOLCHAIN", TOOLCHAIN)
        .env("RUSTUP_AUTO_INSTALL", "0");
    let version = rustc.output().ok().filter(|output| output.status.success());
    match version {
        Some(output) if is_nightly(&String::from_utf8_lossy(&output.stdout)) => Ok(()),
        _ => bail!(
            "fuzzing needs rustup's {TOOLCHAIN} toolchain, and `RUSTUP_TOOLCHAIN={TOOLCHAIN} \
             rustc --version` does not report one; install it with `rustup toolchain install \
             {TOOLCHAIN}`"
        ),
    }
}

/// Whether `rustc --version` printed a nightly compiler's version (`rustc 1.97.0-nightly (…)`).
fn is_nightly(version: &str) -> bool {
    version
        .split_whitespace()
        .nth(1)
        .is_some_and(|number| number.ends_with("-nightly"))
}

/// cargo-fuzz, run by rustup's nightly toolchain rather than the one running xtask.
fn nightly(cargo_fuzz: &Path, root: &Path) -> Command {
    let mut command = Command::new(cargo_fuzz);
    command.current_dir(root);
    for (name, _) in std::env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO") || name.starts_with("RUSTC") || name.starts_with("RUSTUP") {
            command.env_remove(name.as_ref());
        }
    }
    command.env("RUSTUP_TOOLCHAIN", TOOLCHAIN);
    command
}

/// `target/tools/bin/cargo-fuzz`, installed from crates.io if it is missing or another version.
fn ensure_cargo_fuzz(root: &Path) -> Result<PathBuf> {
    let cargo_fuzz = root.join(CARGO_FUZZ);
    let current = Command::new(&cargo_fuzz)
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).contains(CARGO_FUZZ_VERSION));
    if !current {
        println!("xtask: installing cargo-fuzz {CARGO_FUZZ_VERSION} into target/tools");
        let mut install = cargo::command(root);
        install
            .args([
                "install",
                &format!("cargo-fuzz@{CARGO_FUZZ_VERSION}"),
                "--locked",
                "--force",
                "--root",
            ])
            .arg(root.join("target/tools"));
        process::run(&mut install)?;
    }
    Ok(cargo_fuzz)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_nightly_compiler_counts_as_nightly() {
        assert!(is_nightly("rustc 1.97.0-nightly (0123abcd 2026-10-01)\n"));
        assert!(!is_nightly("rustc 1.95.0 (59807616e 2026-04-14)\n"));
        assert!(!is_nightly("rustc 1.96.0-beta.3 (deadbeef 2026-05-01)\n"));
        assert!(!is_nightly(
            "rustc 1.96.0 (Debian 1.96.0-1~deb12u1) nightly\n"
        ));
        assert!(!is_nightly(""));
    }
}
