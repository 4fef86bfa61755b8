//! `cargo xtask package`: the Debian package of the release build, with the systemd units, the
//! shipped policies as conffiles, the documentation and the maintainer scripts, built with
//! `dpkg-deb`.

use std::{
    fs,
    io::ErrorKind,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{
    cargo::{self, Profile},
    process,
};

const PACKAGE: &str = "blocker";
const OUTPUT_DIR: &str = "target/package";
/// The systemd units: the daemon's, and blocker-sync's (installed, not enabled).
const UNITS: &[&str] = &[
    "packaging/blocker.service",
    "packaging/blocker-sync.service",
];
/// The desktop agent's user unit (enabled for every user by postinst) and its XDG autostart
/// entry, for sessions without systemd. Not checked with `systemd-analyze verify`, which judges
/// units as the system manager's, where `graphical-session.target` does not exist.
const USER_UNIT: &str = "packaging/blocker-notify.service";
const AUTOSTART: &str = "packaging/blocker-notify.desktop";
/// blocker-sync's configuration, a conffile to fill in.
const SYNC_CONFIG: &str = "packaging/sync.toml";
const MAINTAINER_SCRIPTS_DIR: &str = "packaging/debian";
const MAINTAINER_SCRIPTS: &[&str] = &["postinst", "prerm", "postrm"];
/// Every `*.toml` directly in it is installed and enforced.
const POLICIES_DIR: &str = "policies";
/// Documentation, never enforced: installed with the README.
const EXAMPLE_POLICIES_DIR: &str = "policies/examples";
/// The documents the README links to, each `*.md`; installed below the README in a directory of
/// the same name, so that the links between them work in the installed copy too.
const DOCS_DIR: &str = "docs";

const INSTALLED_BINARY: &str = "usr/bin/blocker";
const INSTALLED_UNIT_DIR: &str = "lib/systemd/system";
const INSTALLED_USER_UNIT_DIR: &str = "usr/lib/systemd/user";
const INSTALLED_AUTOSTART_DIR: &str = "etc/xdg/autostart";
const INSTALLED_SYNC_CONFIG: &str = "etc/blocker/sync.toml";
const INSTALLED_POLICIES_DIR: &str = "etc/blocker/policies";
const INSTALLED_DOC_DIR: &str = "usr/share/doc/blocker";

const MAINTAINER: &str = "blocker developers <blocker@localhost>";
const DESCRIPTION: &str = "refuses to run banned programs, in the kernel (eBPF LSM)
 An eBPF program in the kernel checks every exec against a ban list and
 refuses the banned ones; a daemon turns the policies in
 /etc/blocker/policies into that ban list and reports every denial as a
 JSON line. The shipped policy bans WeChat and Kaspersky Endpoint Security,
 as governments do on official devices.";

/// What `build` made.
pub struct Built {
    pub deb: PathBuf,
    /// The release executable the package holds (before stripping).
    pub blocker: PathBuf,
}

/// Builds blocker in release mode and packages it as
/// `target/package/blocker_<version>_<arch>.deb`.
pub fn build(root: &Path) -> Result<Built> {
    let blocker = cargo::build_blocker(root, Profile::Release)?;
    let version = version_of(&blocker)?;
    let architecture = output_of(Command::new("dpkg").arg("--print-architecture"))?;

    let output_dir = root.join(OUTPUT_DIR);
    // dpkg-shlibdeps wants the package's files in debian/<package> below where it runs.
    let staging = output_dir.join("staging");
    if staging.exists() {
        fs::remove_dir_all(&staging).with_context(|| format!("removing {}", staging.display()))?;
    }
    let files = staging.join("debian").join(PACKAGE);

    let binary = files.join(INSTALLED_BINARY);
    create_parent(&binary)?;
    process::run(
        Command::new("strip")
            .arg("--strip-all")
            .arg("-o")
            .arg(&binary)
            .arg(&blocker),
    )?;
    set_mode(&binary, 0o755)?;
    for unit in UNITS {
        let source = root.join(unit);
        let installed = files.join(INSTALLED_UNIT_DIR).join(file_name(&source)?);
        install(&source, &installed, 0o644)?;
        verify_unit(&installed, &binary, &output_dir)?;
    }
    for (source, directory) in [
        (USER_UNIT, INSTALLED_USER_UNIT_DIR),
        (AUTOSTART, INSTALLED_AUTOSTART_DIR),
    ] {
        let source = root.join(source);
        install(
            &source,
            &files.join(directory).join(file_name(&source)?),
            0o644,
        )?;
    }
    install(
        &root.join(SYNC_CONFIG),
        &files.join(INSTALLED_SYNC_CONFIG),
        0o644,
    )?;
    let mut conffiles = vec![
        Path::new("/").join(INSTALLED_SYNC_CONFIG),
        Path::new("/")
            .join(INSTALLED_AUTOSTART_DIR)
            .join(file_name(Path::new(AUTOSTART))?),
    ];
    for policy in files_named(&root.join(POLICIES_DIR), "toml")? {
        let installed = Path::new(INSTALLED_POLICIES_DIR).join(file_name(&policy)?);
        install(&policy, &files.join(&installed), 0o644)?;
        conffiles.push(Path::new("/").join(installed));
    }
    install_documentation(root, &files.join(INSTALLED_DOC_DIR))?;

    let control_dir = files.join("DEBIAN");
    for script in MAINTAINER_SCRIPTS {
        install(
            &root.join(MAINTAINER_SCRIPTS_DIR).join(script),
            &control_dir.join(script),
            0o755,
        )?;
    }
    let control = Control {
        version: &version,
        architecture: &architecture,
        depends: &library_dependencies(&staging, INSTALLED_BINARY)?,
        installed_size_kib: installed_size_kib(&files)?,
    };
    write(&control_dir.join("control"), &control.render())?;
    write(&control_dir.join("conffiles"), &conffiles_text(&conffiles))?;
    // Whatever the umask: the directories become the installed system's.
    set_directory_modes(&files)?;

    let deb = output_dir.join(format!("{PACKAGE}_{version}_{architecture}.deb"));
    process::run(
        Command::new("dpkg-deb")
            .args(["--root-owner-group", "--build"])
            .arg(&files)
            .arg(&deb)
            .stdout(std::process::Stdio::null()),
    )?;
    Ok(Built { deb, blocker })
}

/// The README, the documents it links to (below it, as in the repository, so that the links
/// work in the installed copy) and the example policies, into `doc`.
fn install_documentation(root: &Path, doc: &Path) -> Result<()> {
    install(&root.join("README.md"), &doc.join("README.md"), 0o644)?;
    for document in files_named(&root.join(DOCS_DIR), "md")? {
        install(
            &document,
            &doc.join(DOCS_DIR).join(file_name(&document)?),
            0o644,
        )?;
    }
    for example in files_named(&root.join(EXAMPLE_POLICIES_DIR), "toml")? {
        install(
            &example,
            &doc.join("examples").join(file_name(&example)?),
            0o644,
        )?;
    }
    Ok(())
}

/// The version `blocker --version` reports: the one built, whatever Cargo.toml says now.
fn version_of(blocker: &Path) -> Result<String> {
    let output = output_of(Command::new(blocker).arg("--version"))?;
    parse_version(&output)
        .with_context(|| format!("`{} --version` said `{output}`", blocker.display()))
}

fn parse_version(output: &str) -> Option<String> {
    match output.split_whitespace().collect::<Vec<_>>()[..] {
        [PACKAGE, version] => Some(version.to_owned()),
        _ => None,
    }
}

/// The Debian packages the binary's shared libraries come from, with the versions its symbols
/// need, as `dpkg-shlibdeps` finds them.
fn library_dependencies(staging: &Path, binary: &str) -> Result<String> {
    let control = staging.join("debian/control");
    write(
        &control,
        &format!("Source: {PACKAGE}\n\nPackage: {PACKAGE}\nArchitecture: any\n"),
    )?;
    let output = output_of(
        Command::new("dpkg-shlibdeps")
            .arg("-O")
            .arg(Path::new("debian").join(PACKAGE).join(binary))
            .current_dir(staging),
    )?;
    parse_shlibdeps(&output).with_context(|| format!("dpkg-shlibdeps printed `{output}`"))
}

/// Reads `shlibs:Depends=libc6 (>= 2.34), libgcc-s1 (>= 4.2)`.
fn parse_shlibdeps(output: &str) -> Option<String> {
    output
        .lines()
        .find_map(|line| line.strip_prefix("shlibs:Depends="))
        .map(str::to_owned)
}

/// Checks the unit as systemd would load it, with the staged binary for /usr/bin/blocker;
/// any complaint fails the package. Skipped, saying so, where systemd is not installed.
fn verify_unit(unit: &Path, binary: &Path, output_dir: &Path) -> Result<()> {
    let text = fs::read_to_string(unit).with_context(|| format!("reading {}", unit.display()))?;
    let binary = binary
        .to_str()
        .context("the staging directory's path is not UTF-8")?;
    let checked = output_dir.join("verify").join(file_name(unit)?);
    create_parent(&checked)?;
    write(
        &checked,
        &text.replace(&format!("/{INSTALLED_BINARY}"), binary),
    )?;
    let mut verify = Command::new("systemd-analyze");
    verify.arg("verify").arg(&checked);
    let output = match verify.output() {
        Ok(output) => output,
        Err(error) if error.kind() == ErrorKind::NotFound => {
            println!(
                "xtask: systemd-analyze is not installed; {} was not verified",
                unit.display()
            );
            return Ok(());
        }
        Err(error) => {
            return Err(error)
                .with_context(|| format!("cannot run `{}`", process::describe(&verify)))
        }
    };
    let complaints = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() || !complaints.trim().is_empty() {
        bail!(
            "`{}` ({}) found problems in {}:\n{}",
            process::describe(&verify),
            output.status,
            unit.display(),
            complaints.trim()
        );
    }
    Ok(())
}

struct Control<'a> {
    version: &'a str,
    architecture: &'a str,
    depends: &'a str,
    installed_size_kib: u64,
}

impl Control<'_> {
    fn render(&self) -> String {
        format!(
            "Package: {PACKAGE}\nVersion: {}\nArchitecture: {}\nMaintainer: {MAINTAINER}\n\
             Installed-Size: {}\nDepends: {}\nSection: admin\nPriority: optional\n\
             Description: {DESCRIPTION}\n",
            self.version, self.architecture, self.installed_size_kib, self.depends
        )
    }
}

fn conffiles_text(conffiles: &[PathBuf]) -> String {
    conffiles
        .iter()
        .map(|path| format!("{}\n", path.display()))
        .collect()
}

/// The files directly in `dir` whose names end in `.<extension>`, sorted.
fn files_named(dir: &Path, extension: &str) -> Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if path.is_file() && path.extension().is_some_and(|found| found == extension) {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// What the files take once installed, in KiB, as dpkg shows it.
fn installed_size_kib(files: &Path) -> Result<u64> {
    fn bytes(dir: &Path) -> Result<u64> {
        let mut total = 0;
        for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
            let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
            let metadata = entry.metadata()?;
            total += if metadata.is_dir() {
                bytes(&entry.path())?
            } else {
                metadata.len()
            };
        }
        Ok(total)
    }
    Ok(bytes(files)?.div_ceil(1024))
}

fn set_directory_modes(dir: &Path) -> Result<()> {
    set_mode(dir, 0o755)?;
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry.with_context(|| format!("reading {}", dir.display()))?;
        if entry.file_type()?.is_dir() {
            set_directory_modes(&entry.path())?;
        }
    }
    Ok(())
}

fn install(source: &Path, destination: &Path, mode: u32) -> Result<()> {
    create_parent(destination)?;
    fs::copy(source, destination)
        .with_context(|| format!("copying {} to {}", source.display(), destination.display()))?;
    set_mode(destination, mode)
}

fn write(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

fn create_parent(path: &Path) -> Result<()> {
    let parent = path.parent().expect("staged paths have parents");
    fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    fs::set_permissions(path, fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

fn file_name(path: &Path) -> Result<&std::ffi::OsStr> {
    path.file_name()
        .with_context(|| format!("{} has no file name", path.display()))
}

/// The trimmed standard output of a command that must succeed.
fn output_of(command: &mut Command) -> Result<String> {
    let output = command
        .output()
        .with_context(|| format!("cannot run `{}`", process::describe(command)))?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            process::describe(command),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).trim().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_version_blocker_reports() {
        assert_eq!(parse_version("blocker 0.1.0").as_deref(), Some("0.1.0"));
        assert_eq!(parse_version("other 0.1.0"), None);
        assert_eq!(parse_version("blocker"), None);
    }

    #[test]
    fn reads_the_dependencies_dpkg_shlibdeps_found() {
        assert_eq!(
            parse_shlibdeps("shlibs:Depends=libc6 (>= 2.34), libgcc-s1 (>= 4.2)\n").as_deref(),
            Some("libc6 (>= 2.34), libgcc-s1 (>= 4.2)")
        );
        assert_eq!(parse_shlibdeps("misc:Depends=\n"), None);
    }

    #[test]
    fn writes_the_control_fields_dpkg_needs() {
        let control = Control {
            version: "0.1.0",
            architecture: "amd64",
            depends: "libc6 (>= 2.34)",
            installed_size_kib: 4711,
        }
        .render();
        let lines: Vec<&str> = control.lines().collect();
        assert_eq!(
            lines[..8],
            [
                "Package: blocker",
                "Version: 0.1.0",
                "Architecture: amd64",
                "Maintainer: blocker developers <blocker@localhost>",
                "Installed-Size: 4711",
                "Depends: libc6 (>= 2.34)",
                "Section: admin",
                "Priority: optional",
            ]
        );
        assert!(lines[8].starts_with("Description: "));
        // Continuation lines of the description start with a space, and none is empty.
        assert!(lines[9..]
            .iter()
            .all(|line| line.starts_with(' ') && line.trim().len() > 1));
        assert!(control.ends_with(".\n"));
    }

    #[test]
    fn lists_conffiles_one_per_line() {
        assert_eq!(
            conffiles_text(&[
                PathBuf::from("/etc/blocker/policies/a.toml"),
                PathBuf::from("/etc/blocker/policies/b.toml")
            ]),
            "/etc/blocker/policies/a.toml\n/etc/blocker/policies/b.toml\n"
        );
    }

    #[test]
    fn installs_every_document_the_readme_links_to() {
        let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
        let doc = std::env::temp_dir().join(format!("xtask-doc-{}", std::process::id()));
        install_documentation(root, &doc).unwrap();
        let readme = fs::read_to_string(doc.join("README.md")).unwrap();
        let linked: Vec<&str> = readme
            .split("](")
            .skip(1)
            .filter_map(|rest| rest.split([')', '#']).next())
            .filter(|target| target.starts_with(&format!("{DOCS_DIR}/")))
            .collect();
        let installed = |path: &Path| {
            fs::metadata(doc.join(path)).map(|found| found.permissions().mode() & 0o777)
        };
        let modes: Vec<(&str, Option<u32>)> = linked
            .iter()
            .map(|target| (*target, installed(Path::new(target)).ok()))
            .collect();
        let example = installed(Path::new("examples/every-field.toml")).ok();
        fs::remove_dir_all(&doc).unwrap();
        assert!(!modes.is_empty(), "the README links to no document");
        for (target, mode) in modes {
            assert_eq!(mode, Some(0o644), "{target}, which the README links to");
        }
        assert_eq!(example, Some(0o644));
    }
}
