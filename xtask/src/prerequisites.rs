//! Checks for, and installs, what building and testing need: Debian packages, bpf-linker in
//! `target/tools`, and the Debian kernels for the VM tests in `target/vm/kernels/` (see
//! `kernels.rs`). When everything is there this only asks dpkg and bpf-linker, and never touches
//! the network.

use std::{collections::HashSet, fs, io::ErrorKind, path::Path, process::Command};

use anyhow::{bail, Context, Result};

use crate::{
    cargo,
    kernels::{self, Suite},
    process,
};

const BPF_LINKER_VERSION: &str = "0.13.0";
const TOOLS_DIR: &str = "target/tools";
/// Where `blocker/build.rs` looks for the linker.
const BPF_LINKER: &str = "target/tools/bin/bpf-linker";
/// The LLVM that Debian's rustc-web uses; bpf-linker must link the same major version.
const LLVM_PREFIX: &str = "/usr/lib/llvm-22";

struct AptPackages {
    names: &'static [&'static str],
    purpose: &'static str,
    /// systemd units these packages ship that must never start: masked before installing, so
    /// neither the package's own scripts nor a later boot can start them.
    never_started: &'static [&'static str],
}

const BUILD_PACKAGES: &[AptPackages] = &[
    AptPackages {
        names: &["rustc-web", "cargo-web", "libstd-rust-web-dev-bpf"],
        purpose: "Debian's rustc, the only compiler matching the prebuilt core for the BPF target",
        never_started: &[],
    },
    AptPackages {
        // llvm-22-dev is only a recommendation of rustc-web, and recommendations are not installed.
        names: &[
            "llvm-22-dev",
            "libzstd-dev",
            "zlib1g-dev",
            "libxml2-dev",
            "libffi-dev",
        ],
        purpose: "LLVM 22 and the libraries bpf-linker is built against",
        never_started: &[],
    },
];

const PACKAGING_PACKAGES: &[AptPackages] = &[AptPackages {
    names: &["dpkg-dev"],
    purpose: "dpkg-shlibdeps, which finds the libraries the Debian package depends on",
    never_started: &[],
}];

const VM_PACKAGES: &[AptPackages] = &[
    AptPackages {
        names: &["qemu-system-x86", "busybox-static"],
        purpose: "the emulator and the initramfs shell for the VM tests",
        never_started: &[],
    },
    AptPackages {
        names: &["kmod", "xz-utils"],
        purpose: "modinfo and xz, which find and decompress the kernel modules the VM loads",
        never_started: &[],
    },
    AptPackages {
        names: &["e2fsprogs", "btrfs-progs", "xfsprogs"],
        purpose: "mkfs for the ext4, btrfs and xfs images the identity tests mount (host and VM)",
        never_started: &[],
    },
    AptPackages {
        names: &["mmdebstrap"],
        purpose: "builds the Debian 13 root filesystem the systemd VM tests boot",
        never_started: &[],
    },
];

const HOST_TEST_PACKAGES: &[AptPackages] = &[
    AptPackages {
        names: &["prometheus-node-exporter", "prometheus"],
        purpose: "node_exporter, which the metrics tests point at blocker's textfile, and \
                  promtool, which checks blocker's metrics; their services are masked first: \
                  the tests run their own on loopback",
        never_started: &["prometheus-node-exporter.service", "prometheus.service"],
    },
    AptPackages {
        names: &["dbus", "dunst", "xvfb", "x11-apps", "imagemagick"],
        purpose: "a session bus, a notification server on a virtual X display, and xwd and \
                  convert for its screenshot: the notification tests show blocker's \
                  notifications on a real desktop",
        never_started: &[],
    },
];

const BENCH_PACKAGES: &[AptPackages] = &[
    AptPackages {
        names: &["gcc", "libc6-dev"],
        purpose: "to compile the small static program the exec benchmark runs",
        never_started: &[],
    },
    AptPackages {
        names: &["fapolicyd"],
        purpose: "the peer the benchmark compares exec overhead against; its service is masked \
                  first, because its default rules deny nearly every exec",
        never_started: &["fapolicyd.service"],
    },
];

#[derive(Clone, Copy)]
pub enum Needs<'a> {
    Build,
    /// Building the Debian package.
    Package,
    /// Everything `cargo xtask test` does: the package too, which the VM tests install, the
    /// kernels they boot, and what the host tests run beside blocker.
    BuildAndVm {
        kernels: &'a [Suite],
    },
    /// Everything the VM needs, plus what `cargo xtask bench` runs.
    Bench {
        kernels: &'a [Suite],
    },
}

/// Installs whatever `needs` calls for and is missing, saying what and why.
pub fn ensure(root: &Path, needs: Needs) -> Result<()> {
    let (groups, kernels): (Vec<&AptPackages>, &[Suite]) = match needs {
        Needs::Build => (BUILD_PACKAGES.iter().collect(), &[]),
        Needs::Package => (
            BUILD_PACKAGES.iter().chain(PACKAGING_PACKAGES).collect(),
            &[],
        ),
        Needs::BuildAndVm { kernels } => (
            BUILD_PACKAGES
                .iter()
                .chain(PACKAGING_PACKAGES)
                .chain(VM_PACKAGES)
                .chain(HOST_TEST_PACKAGES)
                .collect(),
            kernels,
        ),
        Needs::Bench { kernels } => (
            BUILD_PACKAGES
                .iter()
                .chain(VM_PACKAGES)
                .chain(BENCH_PACKAGES)
                .collect(),
            kernels,
        ),
    };
    let installed = installed_packages(groups.iter().flat_map(|group| group.names))?;
    let missing_packages: Vec<(&AptPackages, Vec<&str>)> = groups
        .into_iter()
        .filter_map(|group| {
            let missing: Vec<&str> = group
                .names
                .iter()
                .copied()
                .filter(|name| !installed.contains(*name))
                .collect();
            (!missing.is_empty()).then_some((group, missing))
        })
        .collect();
    let mut missing_kernels = Vec::new();
    for &suite in kernels {
        if kernels::cached(root, suite)?.is_none() {
            missing_kernels.push(suite);
        }
    }
    let missing = Missing {
        packages: missing_packages,
        bpf_linker: !is_bpf_linker_current(&root.join(BPF_LINKER)),
        kernels: missing_kernels,
    };

    let system = System::detect();
    // Kernels come through an apt state of their own in the workspace: apt, but not root.
    if (!missing.packages.is_empty() && !system.can_install_packages())
        || (!missing.kernels.is_empty() && !system.is_debian)
    {
        bail!(missing.manual_instructions(root, &system));
    }

    if !missing.packages.is_empty() {
        for (group, names) in &missing.packages {
            println!("xtask: installing {} ({})", names.join(" "), group.purpose);
            for unit in group.never_started {
                mask_systemd_unit(unit)?;
            }
        }
        apt_install(&missing.package_names())?;
    }
    if missing.bpf_linker {
        install_bpf_linker(root)?;
    }
    for &suite in &missing.kernels {
        kernels::fetch(root, suite)?;
    }
    Ok(())
}

/// Where an administrator masks a unit: a link to /dev/null here overrides the packaged unit.
const SYSTEMD_ADMIN_UNITS: &str = "/etc/systemd/system";

/// Masks `unit` the way an administrator would, so that systemd refuses to start it: the
/// package's scripts only unmask what `deb-systemd-helper` itself masked. A unit that already
/// has a file of the administrator's is left as it is.
fn mask_systemd_unit(unit: &str) -> Result<()> {
    let link = Path::new(SYSTEMD_ADMIN_UNITS).join(unit);
    if link.symlink_metadata().is_ok() {
        println!(
            "xtask: {} exists; leaving it as the administrator set it",
            link.display()
        );
        return Ok(());
    }
    fs::create_dir_all(SYSTEMD_ADMIN_UNITS)
        .with_context(|| format!("creating {SYSTEMD_ADMIN_UNITS}"))?;
    std::os::unix::fs::symlink("/dev/null", &link)
        .with_context(|| format!("masking {unit}: linking {} to /dev/null", link.display()))?;
    println!(
        "xtask: masked {unit} ({} -> /dev/null) so it never starts as a service",
        link.display()
    );
    Ok(())
}

struct Missing<'a> {
    packages: Vec<(&'a AptPackages, Vec<&'a str>)>,
    bpf_linker: bool,
    kernels: Vec<Suite>,
}

impl Missing<'_> {
    fn package_names(&self) -> Vec<&str> {
        self.packages
            .iter()
            .flat_map(|(_, names)| names.iter().copied())
            .collect()
    }

    fn manual_instructions(&self, root: &Path, system: &System) -> String {
        let mut missing = Vec::new();
        let mut commands = Vec::new();
        if !self.packages.is_empty() {
            for (group, names) in &self.packages {
                missing.push(format!(
                    "Debian packages {} ({})",
                    names.join(" "),
                    group.purpose
                ));
            }
            for unit in self
                .packages
                .iter()
                .flat_map(|(group, _)| group.never_started)
            {
                commands.push(format!("ln -s /dev/null {SYSTEMD_ADMIN_UNITS}/{unit}"));
            }
            commands.push("apt-get update".to_owned());
            commands.push(format!(
                "DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends {}",
                self.package_names().join(" ")
            ));
        }
        if self.bpf_linker {
            let tools = root.join(TOOLS_DIR);
            missing.push(format!(
                "bpf-linker {BPF_LINKER_VERSION} in {}",
                tools.display()
            ));
            commands.push(format!(
                "LLVM_PREFIX={LLVM_PREFIX} LLVM_SYS_221_PREFIX={LLVM_PREFIX} cargo {} {}",
                bpf_linker_install_args().join(" "),
                tools.display()
            ));
        }
        for &suite in &self.kernels {
            missing.push(format!(
                "Debian {suite}'s cloud kernel in {}",
                kernels::cache_dir(root, suite).display()
            ));
            commands.push(kernels::manual_instructions(root, suite));
        }
        format!(
            "xtask cannot install what is missing: {}.\nMissing:\n  {}\nInstall it as root on \
             Debian 12 with:\n  {}\nthen rerun this command.",
            system.obstacles().join(", "),
            missing.join("\n  "),
            commands.join("\n  ")
        )
    }
}

struct System {
    is_root: bool,
    is_debian: bool,
}

impl System {
    fn detect() -> Self {
        Self {
            is_root: process::is_root(),
            is_debian: Path::new("/usr/bin/apt-get").exists()
                && Path::new("/etc/debian_version").exists(),
        }
    }

    fn can_install_packages(&self) -> bool {
        self.is_root && self.is_debian
    }

    fn obstacles(&self) -> Vec<&'static str> {
        let mut obstacles = Vec::new();
        if !self.is_root {
            obstacles.push("not running as root");
        }
        if !self.is_debian {
            obstacles.push("not Debian (no /usr/bin/apt-get or /etc/debian_version)");
        }
        obstacles
    }
}

/// Which of `names` dpkg knows as installed. Without dpkg, none are.
fn installed_packages<'a>(names: impl IntoIterator<Item = &'a &'a str>) -> Result<HashSet<String>> {
    let mut query = Command::new("dpkg-query");
    query
        .args(["--show", "--showformat=${Package} ${db:Status-Abbrev}\n"])
        .args(names);
    match query.output() {
        // It exits with 1 when it has never heard of a package; the output still says enough.
        Ok(output) => Ok(parse_installed(&String::from_utf8_lossy(&output.stdout))),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(HashSet::new()),
        Err(error) => {
            Err(error).with_context(|| format!("cannot run `{}`", process::describe(&query)))
        }
    }
}

/// Reads `dpkg-query` lines of the form `NAME XY `, where Y is `i` for an installed package.
fn parse_installed(output: &str) -> HashSet<String> {
    output
        .lines()
        .filter_map(|line| {
            let (name, status) = line.split_once(' ')?;
            (status.as_bytes().get(1) == Some(&b'i')).then(|| name.to_owned())
        })
        .collect()
}

/// Refreshes the machine's package lists, then installs `packages`.
fn apt_install(packages: &[&str]) -> Result<()> {
    process::run(Command::new("apt-get").arg("update"))?;
    process::run(
        Command::new("apt-get")
            .args(["install", "-y", "--no-install-recommends"])
            .args(packages)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn is_bpf_linker_current(linker: &Path) -> bool {
    Command::new(linker)
        .arg("--version")
        .output()
        .is_ok_and(|output| {
            output.status.success()
                && String::from_utf8_lossy(&output.stdout)
                    .split_whitespace()
                    .any(|word| word == BPF_LINKER_VERSION)
        })
}

/// `cargo` arguments installing bpf-linker, up to the `--root` directory.
fn bpf_linker_install_args() -> Vec<String> {
    [
        "install",
        &format!("bpf-linker@{BPF_LINKER_VERSION}"),
        "--locked",
        "--no-default-features",
        "--features",
        "llvm-22",
        // Replaces another version, or a binary cargo did not record installing.
        "--force",
        "--root",
    ]
    .map(str::to_owned)
    .to_vec()
}

fn install_bpf_linker(root: &Path) -> Result<()> {
    println!(
        "xtask: installing bpf-linker {BPF_LINKER_VERSION} into {TOOLS_DIR} (links the BPF \
         programs; built against LLVM 22, the LLVM of Debian's rustc)"
    );
    let mut install = cargo::command(root);
    install
        .args(bpf_linker_install_args())
        .arg(root.join(TOOLS_DIR))
        // Otherwise its build finds /usr/bin/llvm-config, an older LLVM.
        .env("LLVM_PREFIX", LLVM_PREFIX)
        .env("LLVM_SYS_221_PREFIX", LLVM_PREFIX);
    process::run(&mut install)?;
    let linker = root.join(BPF_LINKER);
    if !is_bpf_linker_current(&linker) {
        bail!(
            "{} does not report version {BPF_LINKER_VERSION} after installing it",
            linker.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_installed_packages_from_dpkg_query() {
        let installed = parse_installed(
            "rustc-web ii \ncargo-web un \nqemu-system-x86 rc \nbusybox-static hi \nlibffi-dev iU \n",
        );
        let mut names: Vec<_> = installed.iter().map(String::as_str).collect();
        names.sort();
        assert_eq!(names, ["busybox-static", "rustc-web"]);
    }
}
