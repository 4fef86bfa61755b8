//! Builds the kernel programs (`blocker-ebpf`) and hands the object to `include_bytes!`, so the
//! `blocker` binary is all a user installs.
//!
//! The BPF target needs a prebuilt `core` that only Debian's rustc (`rustc-web`) matches, and
//! `bpf-linker`; `cargo xtask build` installs both. Paths can be overridden with
//! `BLOCKER_BPF_RUSTC`, `BLOCKER_BPF_CARGO` and `BLOCKER_BPF_LINKER`.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

const BPF_TARGET: &str = "bpfel-unknown-none";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").unwrap());
    let workspace = manifest_dir.parent().unwrap();
    for watched in [
        "blocker-ebpf/src",
        "blocker-ebpf/Cargo.toml",
        "blocker-common/src",
        "Cargo.lock",
    ] {
        println!(
            "cargo:rerun-if-changed={}",
            workspace.join(watched).display()
        );
    }
    for overridable in [
        "BLOCKER_BPF_RUSTC",
        "BLOCKER_BPF_CARGO",
        "BLOCKER_BPF_LINKER",
    ] {
        println!("cargo:rerun-if-env-changed={overridable}");
    }

    let rustc = tool("BLOCKER_BPF_RUSTC", PathBuf::from("/usr/bin/rustc"));
    let cargo = tool("BLOCKER_BPF_CARGO", PathBuf::from("/usr/bin/cargo"));
    let linker = tool(
        "BLOCKER_BPF_LINKER",
        workspace.join("target/tools/bin/bpf-linker"),
    );
    let target_dir = workspace.join("target/ebpf");

    let mut build = Command::new(&cargo);
    build
        .current_dir(workspace)
        .args([
            "build",
            "--package",
            "blocker-ebpf",
            "--release",
            "--target",
            BPF_TARGET,
        ])
        .arg("--target-dir")
        .arg(&target_dir);
    // The outer cargo's settings (jobserver, target, rustc wrappers, flags) must not leak into
    // a build for another target with another compiler.
    for (name, _) in env::vars_os() {
        let name = name.to_string_lossy();
        if name.starts_with("CARGO")
            || name.starts_with("RUSTC")
            || name.starts_with("RUSTUP")
            || name == "RUSTFLAGS"
            || name == "RUSTDOCFLAGS"
        {
            build.env_remove(name.as_ref());
        }
    }
    build
        .env("RUSTC", &rustc)
        // aya-ebpf needs `asm_experimental_arch`, a nightly feature, from this stable compiler.
        .env("RUSTC_BOOTSTRAP", "1")
        .env("CARGO_TARGET_BPFEL_UNKNOWN_NONE_LINKER", &linker)
        .env(
            "CARGO_TARGET_BPFEL_UNKNOWN_NONE_RUSTFLAGS",
            "-C debuginfo=2 -C link-arg=--btf",
        );

    let status = build.status().unwrap_or_else(|error| {
        panic!(
            "cannot run {}: {error}; run `cargo xtask build`, which installs it",
            cargo.display()
        )
    });
    if !status.success() {
        panic!(
            "building blocker-ebpf failed ({status}); `cargo xtask build` installs what it needs"
        );
    }

    let object = target_dir.join(BPF_TARGET).join("release/blocker-ebpf");
    let out = PathBuf::from(env::var_os("OUT_DIR").unwrap()).join("blocker-ebpf.o");
    std::fs::copy(&object, &out)
        .unwrap_or_else(|error| panic!("copying {}: {error}", object.display()));
}

/// The tool named by `variable`, or `default`; missing tools are reported with the way to get them.
fn tool(variable: &str, default: PathBuf) -> PathBuf {
    let path = env::var_os(variable).map(PathBuf::from).unwrap_or(default);
    if !Path::new(&path).exists() {
        panic!(
            "{} not found (set {variable} to override); run `cargo xtask build`, which installs \
             Debian's rustc-web, libstd-rust-web-dev-bpf and bpf-linker",
            path.display()
        );
    }
    path
}
