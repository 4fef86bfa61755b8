//! `cargo xtask fuzz`: runs every libFuzzer target of `fuzz/` (cargo-fuzz, on rustup's nightly
//! toolchain, with AddressSanitizer) for a given time. Each target starts from its corpus in
//! `fuzz/corpus/<target>`, which stays as committed: what libFuzzer finds goes to
//! `target/fuzz/corpus/<target>`, crashes to `fuzz/artifacts/<target>`.

use std::{
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};

use crate::{cargo, process};

const CARGO_FUZZ_VERSION: &str = "0.13.2";
const CARGO_FUZZ: &str = "target/tools/bin/cargo-fuzz";

/// Runs each of `only` (every target if empty) for `seconds`; false if any found a crash.
pub fn run(root: &Path, seconds: u64, only: &[String]) -> Result<bool> {
    let cargo_fuzz = ensure_cargo_fuzz(root)?;
    let listed = nightly(&cargo_fuzz, root)
        .args(["fuzz", "list"])
        .output()
        .context("listing the fuzz targets")?;
    let targets = String::from_utf8_lossy(&listed.stdout).into_owned();
    let mut failed = Vec::new();
    for target in targets
        .lines()
        .filter(|target| only.is_empty() || only.iter().any(|name| name == target))
    {
        let found = root.join("target/fuzz/corpus").join(target);
        std::fs::create_dir_all(&found).with_context(|| format!("creating {}", found.display()))?;
        println!("xtask: fuzzing {target} for {seconds} s");
        let mut fuzz = nightly(&cargo_fuzz, root);
        fuzz.args(["fuzz", "run", target])
            .arg(&found)
            .arg(root.join("fuzz/corpus").join(target))
            .arg("--")
            .arg(format!("-max_total_time={seconds}"));
        if let Err(error) = process::run(&mut fuzz) {
            println!("xtask: {target}: {error:#}");
            failed.push(target);
        }
    }
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
    command.env("RUSTUP_TOOLCHAIN", "nightly");
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
