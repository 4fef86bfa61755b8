//! The Debian cloud kernels the VM tests boot, one per Debian suite, each fetched with apt
//! through a private sources list and package lists in `target/vm/apt/<suite>/` (the machine's
//! own apt sources and lists stay as they are) and cached in `target/vm/kernels/<suite>/`:
//!
//! - `vmlinuz-<release>`: the kernel image as Debian ships it (a bzImage QEMU boots directly,
//!   whatever its payload's compression);
//! - `modules/<release>/`: its modules directory, as Debian ships it: `.ko.xz` files on trixie
//!   and sid, which busybox's `insmod` cannot read until they are decompressed (`xz -dk FILE`).
//!
//! A suite's directory appears in one rename once complete, so an interrupted fetch is never
//! taken for a kernel, and a cached kernel is used without asking the network. Deleting the
//! directory makes the next run fetch the suite's current kernel.

use std::{
    fmt, fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{Context, Result};
use clap::ValueEnum;

use crate::process;

const KERNELS_DIR: &str = "target/vm/kernels";
const APT_DIR: &str = "target/vm/apt";
/// Depends on the suite's current versioned cloud kernel, which has BPF LSM built in.
const METAPACKAGE: &str = "linux-image-cloud-amd64";
/// Where Debian's `debian-archive-keyring` package puts the keys that sign every suite.
const ARCHIVE_KEYRING: &str = "/usr/share/keyrings/debian-archive-keyring.gpg";
/// Where the machine's apt finds its archive: deb822 files first, then the one-line format.
const MACHINE_SOURCES_DIR: &str = "/etc/apt/sources.list.d";
const MACHINE_SOURCES_LIST: &str = "/etc/apt/sources.list";

/// A Debian suite whose cloud kernel the VM tests boot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Suite {
    /// Debian 12, kernel 6.1.
    Bookworm,
    /// Debian 13, kernel 6.12.
    Trixie,
    /// Debian unstable, the newest kernel (7.x).
    Sid,
}

impl Suite {
    pub const ALL: [Suite; 3] = [Suite::Bookworm, Suite::Trixie, Suite::Sid];

    pub fn name(self) -> &'static str {
        match self {
            Suite::Bookworm => "bookworm",
            Suite::Trixie => "trixie",
            Suite::Sid => "sid",
        }
    }

    /// The release, for people.
    pub fn description(self) -> &'static str {
        match self {
            Suite::Bookworm => "Debian 12 (bookworm)",
            Suite::Trixie => "Debian 13 (trixie)",
            Suite::Sid => "Debian unstable (sid)",
        }
    }

    /// `panic=-1` with QEMU's `-no-reboot` turns a kernel panic (or /init dying) into QEMU
    /// exiting. 6.1 enables the BPF LSM only when `lsm=` names it (`integrity` is IMA there);
    /// from 6.9 on Debian's default list holds `bpf` and IMA as an LSM of its own (`ima`).
    pub fn kernel_command_line(self) -> &'static str {
        match self {
            Suite::Bookworm => "console=ttyS0 panic=-1 lsm=lockdown,capability,integrity,bpf",
            Suite::Trixie | Suite::Sid => "console=ttyS0 panic=-1",
        }
    }
}

impl fmt::Display for Suite {
    fn fmt(&self, formatter: &mut fmt::Formatter) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

/// A cached kernel of a suite.
pub struct Kernel {
    pub suite: Suite,
    pub vmlinuz: PathBuf,
}

/// The suite's kernel, if it is cached.
pub fn cached(root: &Path, suite: Suite) -> Result<Option<Kernel>> {
    let dir = root.join(KERNELS_DIR).join(suite.name());
    if !dir.is_dir() {
        return Ok(None);
    }
    let vmlinuz = newest_file(&dir, |name| name.starts_with("vmlinuz-"))?;
    Ok(vmlinuz.map(|vmlinuz| Kernel { suite, vmlinuz }))
}

/// The suite's kernel, which `prerequisites::ensure` has fetched.
pub fn ensured(root: &Path, suite: Suite) -> Result<Kernel> {
    cached(root, suite)?.with_context(|| {
        format!(
            "no kernel in {} although prerequisites were ensured",
            cache_dir(root, suite).display()
        )
    })
}

/// Where a suite's kernel is cached, for messages.
pub fn cache_dir(root: &Path, suite: Suite) -> PathBuf {
    root.join(KERNELS_DIR).join(suite.name())
}

/// Fetches the suite's current cloud kernel and its modules into the cache.
pub fn fetch(root: &Path, suite: Suite) -> Result<Kernel> {
    let apt = PrivateApt::create(root, suite, &MachineArchives::find()?)?;
    println!(
        "xtask: fetching Debian {suite}'s cloud kernel (the host kernel cannot load BPF LSM \
         programs); apt's lists for it are kept in {}",
        apt.dir.display()
    );
    process::run(apt.command("apt-get").arg("update"))?;
    let image = apt.kernel_image_package()?;
    let packages = kernel_packages(&image, &apt.depends(&image)?);

    let kernels_dir = root.join(KERNELS_DIR);
    let staging = kernels_dir.join(format!(".{suite}.partial"));
    remove_dir_if_present(&staging)?;
    let debs = staging.join("debs");
    let extracted = staging.join("extracted");
    let complete = staging.join("complete");
    for dir in [&debs, &extracted, &complete] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    println!(
        "xtask: downloading {} into {}",
        packages.join(" "),
        debs.display()
    );
    process::run(
        apt.command("apt-get")
            .arg("download")
            .args(&packages)
            .current_dir(&debs),
    )?;
    for entry in fs::read_dir(&debs).with_context(|| format!("reading {}", debs.display()))? {
        let deb = entry?.path();
        process::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&extracted))?;
    }

    let images = kernel_image_candidates(&extracted)?;
    let (release, image) = choose_vmlinuz(&images).with_context(|| {
        format!(
            "{} hold no boot/vmlinuz-* nor usr/lib/modules/*/vmlinuz",
            packages.join(", ")
        )
    })?;
    let vmlinuz = complete.join(format!("vmlinuz-{release}"));
    rename(&extracted.join(image), &vmlinuz)?;
    if let Some(modules) = ["usr/lib/modules", "lib/modules"]
        .iter()
        .map(|dir| extracted.join(dir).join(&release))
        .find(|dir| dir.is_dir())
    {
        let cached_modules = complete.join("modules");
        fs::create_dir_all(&cached_modules)
            .with_context(|| format!("creating {}", cached_modules.display()))?;
        rename(&modules, &cached_modules.join(&release))?;
    }

    let cached = cache_dir(root, suite);
    // Only a directory without a kernel can be here: `ensure` fetches no cached suite.
    remove_dir_if_present(&cached)?;
    rename(&complete, &cached)?;
    remove_dir_if_present(&staging)?;
    println!("xtask: cached {release} in {}", cached.display());
    Ok(Kernel {
        suite,
        vmlinuz: cached.join(format!("vmlinuz-{release}")),
    })
}

/// What a person without apt does instead of `fetch`.
pub fn manual_instructions(root: &Path, suite: Suite) -> String {
    format!(
        "from Debian {suite}'s archive, the package {METAPACKAGE} depends on names the kernel \
         package (`linux-image-<version>-cloud-amd64-unsigned`, or on sid \
         `linux-binary-<version>-cloud-amd64` and `linux-modules-<version>-cloud-amd64`); \
         `dpkg -x` them, then put boot/vmlinuz-<version> (sid: usr/lib/modules/<version>/vmlinuz, \
         renamed vmlinuz-<version>) and the modules directory as modules/<version> into {}",
        cache_dir(root, suite).display()
    )
}

/// apt with a sources list, lists and cache of its own for one suite.
struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    fn create(root: &Path, suite: Suite, archives: &MachineArchives) -> Result<Self> {
        let dir = root.join(APT_DIR).join(suite.name());
        for sub in ["lists", "cache", "sources.list.d"] {
            let path = dir.join(sub);
            fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        }
        let sources = dir.join("sources.list");
        fs::write(&sources, sources_list(suite, archives))
            .with_context(|| format!("writing {}", sources.display()))?;
        Ok(Self { dir })
    }

    /// `program` (apt-get or apt-cache) with this suite's sources, lists and cache only.
    fn command(&self, program: &str) -> Command {
        let option = |name: &str, sub: &str| format!("{name}={}", self.dir.join(sub).display());
        let mut command = Command::new(program);
        command.args([
            "-o",
            &option("Dir::Etc::sourcelist", "sources.list"),
            "-o",
            &option("Dir::Etc::sourceparts", "sources.list.d"),
            "-o",
            &option("Dir::State::Lists", "lists"),
            "-o",
            &option("Dir::Cache", "cache"),
            // As root, apt downloads as the `_apt` user, who cannot write into the workspace.
            "-o",
            "APT::Sandbox::User=root",
            "-o",
            "Acquire::Languages=none",
        ]);
        command
    }

    /// `apt-cache depends PACKAGE`'s output.
    fn depends(&self, package: &str) -> Result<String> {
        let stdout = process::stdout_of(self.command("apt-cache").args(["depends", package]))?;
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    }

    /// The versioned kernel package the metapackage currently depends on.
    fn kernel_image_package(&self) -> Result<String> {
        parse_kernel_dependency(&self.depends(METAPACKAGE)?).with_context(|| {
            format!(
                "{METAPACKAGE} depends on no linux-image-* package in the lists in {}",
                self.dir.display()
            )
        })
    }
}

/// Reads `apt-cache depends` output for the first `Depends: linux-image-...` line (sid's
/// metapackage depends on `linux-base-cloud-amd64` first).
fn parse_kernel_dependency(output: &str) -> Option<String> {
    dependencies(output).find(|name| name.starts_with("linux-image-"))
}

fn dependencies(output: &str) -> impl Iterator<Item = String> + '_ {
    output
        .lines()
        .filter_map(|line| line.trim().trim_start_matches('|').strip_prefix("Depends:"))
        .map(|name| name.trim().to_owned())
}

/// The packages holding the kernel `image` names, given `apt-cache depends IMAGE`: where the
/// image package is only a metapackage (sid), its `linux-binary-*` (the kernel) and
/// `linux-modules-*`; otherwise its unsigned twin, which holds both (bookworm, trixie).
fn kernel_packages(image: &str, image_depends: &str) -> Vec<String> {
    let parts: Vec<String> = dependencies(image_depends)
        .filter(|name| name.starts_with("linux-binary-") || name.starts_with("linux-modules-"))
        .collect();
    if parts.iter().any(|name| name.starts_with("linux-binary-")) {
        parts
    } else {
        vec![format!("{image}-unsigned")]
    }
}

/// Paths relative to `extracted` where a kernel package may put its image.
fn kernel_image_candidates(extracted: &Path) -> Result<Vec<String>> {
    let mut candidates = Vec::new();
    let boot = extracted.join("boot");
    if boot.is_dir() {
        for entry in fs::read_dir(&boot).with_context(|| format!("reading {}", boot.display()))? {
            candidates.push(format!("boot/{}", entry?.file_name().to_string_lossy()));
        }
    }
    for modules in ["usr/lib/modules", "lib/modules"] {
        let dir = extracted.join(modules);
        if !dir.is_dir() {
            continue;
        }
        for entry in fs::read_dir(&dir).with_context(|| format!("reading {}", dir.display()))? {
            candidates.push(format!(
                "{modules}/{}/vmlinuz",
                entry?.file_name().to_string_lossy()
            ));
        }
    }
    candidates.retain(|candidate| extracted.join(candidate).is_file());
    Ok(candidates)
}

/// Picks the kernel image among extracted paths, `boot/vmlinuz-RELEASE` or
/// `[usr/]lib/modules/RELEASE/vmlinuz`, and returns its release and path; the highest release if
/// there are several.
fn choose_vmlinuz(paths: &[String]) -> Option<(String, String)> {
    paths
        .iter()
        .filter_map(|path| {
            let release = match path.strip_prefix("boot/vmlinuz-") {
                Some(release) => release,
                None => path
                    .strip_prefix("usr/lib/modules/")
                    .or_else(|| path.strip_prefix("lib/modules/"))?
                    .strip_suffix("/vmlinuz")?,
            };
            (!release.is_empty() && !release.contains('/'))
                .then(|| (release.to_owned(), path.clone()))
        })
        .max()
}

/// The Debian archives the machine's apt uses: the main one and, if configured, the security one.
/// The Debian archive the machine's apt uses (read, never changed), for the systemd VM's root
/// filesystem.
pub fn debian_archive() -> Result<String> {
    Ok(MachineArchives::find()?.main)
}

#[derive(Debug, PartialEq)]
struct MachineArchives {
    main: String,
    security: Option<String>,
}

impl MachineArchives {
    fn find() -> Result<Self> {
        let mut files: Vec<PathBuf> = match fs::read_dir(MACHINE_SOURCES_DIR) {
            Ok(entries) => entries
                .filter_map(|entry| entry.ok().map(|entry| entry.path()))
                .collect(),
            Err(_) => Vec::new(),
        };
        files.sort();
        files.push(PathBuf::from(MACHINE_SOURCES_LIST));
        let texts: Vec<(bool, String)> = files
            .iter()
            .filter_map(|file| {
                let is_deb822 = file
                    .extension()
                    .is_some_and(|extension| extension == "sources");
                Some((is_deb822, fs::read_to_string(file).ok()?))
            })
            .collect();
        let find = |wanted: fn(&str) -> bool| {
            texts.iter().find_map(|(is_deb822, text)| match is_deb822 {
                true => archive_in_deb822(text, wanted),
                false => archive_in_one_line_format(text, wanted),
            })
        };
        let main = find(is_release_suite).with_context(|| {
            format!(
                "found no Debian archive (a `deb` source of a release suite with component \
                 `main`) in {MACHINE_SOURCES_DIR}/*.sources or {MACHINE_SOURCES_LIST}; the VM \
                 kernels are fetched from the archive the machine's apt uses"
            )
        })?;
        Ok(Self {
            main,
            security: find(is_security_suite),
        })
    }
}

/// The private sources list of `suite`: a stable suite's kernel is updated through its
/// `-updates` and `-security` suites too, so those are listed where the machine has them.
fn sources_list(suite: Suite, archives: &MachineArchives) -> String {
    let line = |archive: &str, suite: &str| {
        format!("deb [signed-by={ARCHIVE_KEYRING}] {archive} {suite} main\n")
    };
    let mut list = line(&archives.main, suite.name());
    if suite != Suite::Sid {
        list += &line(&archives.main, &format!("{suite}-updates"));
        if let Some(security) = &archives.security {
            list += &line(security, &format!("{suite}-security"));
        }
    }
    list
}

/// A suite of a release, not of its updates or security archive (`bookworm-security`).
fn is_release_suite(suite: &str) -> bool {
    !suite.contains(['-', '/'])
}

fn is_security_suite(suite: &str) -> bool {
    suite.ends_with("-security")
}

/// The first URI of a `Types: deb` stanza with a wanted suite and component `main`.
fn archive_in_deb822(text: &str, wanted: fn(&str) -> bool) -> Option<String> {
    text.split("\n\n").find_map(|stanza| {
        let field = |name: &str| {
            stanza.lines().find_map(|line| {
                let (key, value) = line.split_once(':')?;
                key.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| value.split_whitespace().collect::<Vec<_>>())
            })
        };
        let is_deb = field("Types")?.contains(&"deb");
        let has_wanted = field("Suites")?.into_iter().any(wanted);
        let has_main = field("Components")?.contains(&"main");
        if !(is_deb && has_wanted && has_main) {
            return None;
        }
        field("URIs")?.first().map(|uri| uri.to_string())
    })
}

/// The URI of the first `deb [options] URI SUITE main...` line with a wanted suite.
fn archive_in_one_line_format(text: &str, wanted: fn(&str) -> bool) -> Option<String> {
    text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("deb ")?;
        let rest = match rest.trim_start().strip_prefix('[') {
            Some(options) => options.split_once(']')?.1,
            None => rest,
        };
        let mut words = rest.split_whitespace();
        let (uri, suite) = (words.next()?, words.next()?);
        (wanted(suite) && words.any(|component| component == "main")).then(|| uri.to_owned())
    })
}

fn rename(from: &Path, to: &Path) -> Result<()> {
    fs::rename(from, to).with_context(|| format!("moving {} to {}", from.display(), to.display()))
}

fn remove_dir_if_present(dir: &Path) -> Result<()> {
    if dir.exists() {
        fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

/// The regular file in `dir` whose name matches and sorts last (the highest version).
fn newest_file(dir: &Path, matches: impl Fn(&str) -> bool) -> Result<Option<PathBuf>> {
    let mut newest = None;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        let is_file = entry
            .file_type()
            .with_context(|| format!("inspecting {}", entry.path().display()))?
            .is_file();
        if is_file && entry.file_name().to_str().is_some_and(&matches) {
            newest = newest.max(Some(entry.path()));
        }
    }
    Ok(newest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_versioned_kernel_package() {
        let bookworm = "linux-image-cloud-amd64\n  Depends: linux-image-6.1.0-56-cloud-amd64\n";
        assert_eq!(
            parse_kernel_dependency(bookworm).as_deref(),
            Some("linux-image-6.1.0-56-cloud-amd64")
        );
        let sid = "linux-image-cloud-amd64\n  Depends: linux-base-cloud-amd64\n  \
                   Depends: linux-image-7.2.13+deb14-cloud-amd64\n";
        assert_eq!(
            parse_kernel_dependency(sid).as_deref(),
            Some("linux-image-7.2.13+deb14-cloud-amd64")
        );
        let alternatives = "linux-image-cloud-amd64\n  Recommends: firmware-linux-free\n \
                            |Depends: linux-image-6.12.9-cloud-amd64\n  Depends: other\n";
        assert_eq!(
            parse_kernel_dependency(alternatives).as_deref(),
            Some("linux-image-6.12.9-cloud-amd64")
        );
        assert_eq!(parse_kernel_dependency("E: No packages found\n"), None);
    }

    #[test]
    fn a_real_image_package_is_fetched_unsigned() {
        let trixie = "linux-image-6.12.117+deb13-cloud-amd64\n  PreDepends: linux-base\n  \
                      Depends: kmod\n |Depends: initramfs-tools\n  Depends: <linux-initramfs-tool>\n    \
                      dracut\n  Conflicts: linux-image-6.12.117+deb13-cloud-amd64-unsigned\n";
        assert_eq!(
            kernel_packages("linux-image-6.12.117+deb13-cloud-amd64", trixie),
            ["linux-image-6.12.117+deb13-cloud-amd64-unsigned"]
        );
    }

    #[test]
    fn a_metapackage_image_is_fetched_as_its_binary_and_modules() {
        let sid = "linux-image-7.2.13+deb14-cloud-amd64\n  PreDepends: linux-base\n \
                   |Depends: dracut\n  Depends: linux-base-7.2.13+deb14-cloud-amd64\n  \
                   Depends: linux-binary-7.2.13+deb14-cloud-amd64\n  \
                   Depends: linux-modules-7.2.13+deb14-cloud-amd64\n  Recommends: apparmor\n";
        assert_eq!(
            kernel_packages("linux-image-7.2.13+deb14-cloud-amd64", sid),
            [
                "linux-binary-7.2.13+deb14-cloud-amd64",
                "linux-modules-7.2.13+deb14-cloud-amd64"
            ]
        );
    }

    #[test]
    fn chooses_the_kernel_image_in_either_place() {
        let image_package = [
            "boot/System.map-6.12.117+deb13-cloud-amd64",
            "boot/config-6.12.117+deb13-cloud-amd64",
            "boot/vmlinuz-6.12.117+deb13-cloud-amd64",
        ]
        .map(str::to_owned);
        assert_eq!(
            choose_vmlinuz(&image_package),
            Some((
                "6.12.117+deb13-cloud-amd64".to_owned(),
                "boot/vmlinuz-6.12.117+deb13-cloud-amd64".to_owned()
            ))
        );
        let binary_package = ["usr/lib/modules/7.2.13+deb14-cloud-amd64/vmlinuz".to_owned()];
        assert_eq!(
            choose_vmlinuz(&binary_package),
            Some((
                "7.2.13+deb14-cloud-amd64".to_owned(),
                binary_package[0].clone()
            ))
        );
        let none = [
            "boot/config-6.1",
            "usr/lib/modules/vmlinuz",
            "lib/modules/a/b/vmlinuz",
        ]
        .map(str::to_owned);
        assert_eq!(choose_vmlinuz(&none), None);
    }

    #[test]
    fn finds_the_machine_archives_in_either_format() {
        let deb822 = "Types: deb\n# a comment\nURIs: http://deb.debian.org/debian-security\n\
                      Suites: bookworm-security\nComponents: main\n\n\
                      Types: deb\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\n\
                      Components: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n";
        assert_eq!(
            archive_in_deb822(deb822, is_release_suite).as_deref(),
            Some("http://deb.debian.org/debian")
        );
        assert_eq!(
            archive_in_deb822(deb822, is_security_suite).as_deref(),
            Some("http://deb.debian.org/debian-security")
        );
        assert_eq!(
            archive_in_deb822(
                "Types: deb-src\nURIs: http://x/debian\nSuites: sid\nComponents: main\n",
                is_release_suite
            ),
            None
        );
        let one_line = "# deb http://old/debian bookworm main\n\
                        deb [arch=amd64] https://download.docker.com/linux/debian bookworm stable\n\
                        deb http://security.debian.org/debian-security bookworm-security main\n\
                        deb [signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib\n";
        assert_eq!(
            archive_in_one_line_format(one_line, is_release_suite).as_deref(),
            Some("http://mirror.example/debian")
        );
        assert_eq!(
            archive_in_one_line_format(one_line, is_security_suite).as_deref(),
            Some("http://security.debian.org/debian-security")
        );
    }

    #[test]
    fn stable_suites_list_their_updates_and_security_archives() {
        let archives = MachineArchives {
            main: "http://m/debian".to_owned(),
            security: Some("http://s/debian-security".to_owned()),
        };
        let keyring = format!("[signed-by={ARCHIVE_KEYRING}]");
        assert_eq!(
            sources_list(Suite::Trixie, &archives),
            format!(
                "deb {keyring} http://m/debian trixie main\n\
                 deb {keyring} http://m/debian trixie-updates main\n\
                 deb {keyring} http://s/debian-security trixie-security main\n"
            )
        );
        assert_eq!(
            sources_list(Suite::Sid, &archives),
            format!("deb {keyring} http://m/debian sid main\n")
        );
        let without_security = MachineArchives {
            security: None,
            ..archives
        };
        assert_eq!(
            sources_list(Suite::Bookworm, &without_security)
                .lines()
                .count(),
            2
        );
    }
}
