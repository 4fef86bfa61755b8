//! dpkg's database, read the way dpkg itself reads it: which instances (architectures) of a
//! package are installed (`status`, then the journal in `updates/` that dpkg merges into it at
//! its next run), the paths each instance installed (`info/<package>.list`, or
//! `info/<package>:<arch>.list` for `Multi-Arch: same` packages), and where `diversions` moved
//! them.

use crate::escape::escaped;
use std::{
    collections::HashMap,
    ffi::OsStr,
    fs,
    io::ErrorKind,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use super::{packages::Lookup, SourceRoots};

/// One architecture of a package as the database records it.
#[derive(Debug, Default, PartialEq)]
pub(crate) struct Instance {
    architecture: String,
    multi_arch_same: bool,
    /// The last word of `Status:`, e.g. `installed`, `unpacked`, `config-files`.
    state: String,
}

impl Instance {
    /// Whether the package's files are on disk: from `half-installed` (an interrupted unpack)
    /// on. `config-files` means removed, with only conffiles left.
    fn has_files(&self) -> bool {
        !matches!(self.state.as_str(), "not-installed" | "config-files")
    }

    fn list_file_name(&self, package: &str) -> String {
        if self.multi_arch_same {
            format!("{package}:{}.list", self.architecture)
        } else {
            format!("{package}.list")
        }
    }
}

/// The paths `package` installed, for the given architecture or every installed one.
pub(super) fn listed_paths(
    package: &str,
    architecture: Option<&str>,
    roots: &SourceRoots,
) -> Lookup {
    let admin_dir = roots.root.join(&roots.dpkg_admin_dir);
    match installed_instances(&admin_dir, package, architecture) {
        Ok(None) => Lookup::Absent,
        Ok(Some(instances)) if instances.is_empty() => Lookup::NotInstalled,
        Ok(Some(instances)) => match read_listed_paths(&admin_dir, package, &instances) {
            Ok(paths) => Lookup::Installed(paths),
            Err(reason) => Lookup::Failed(reason),
        },
        Err(reason) => Lookup::Failed(reason),
    }
}

/// The instances of `package` whose files are on disk; `None` without a dpkg database.
fn installed_instances(
    admin_dir: &Path,
    package: &str,
    architecture: Option<&str>,
) -> Result<Option<Vec<Instance>>, String> {
    let status_path = admin_dir.join("status");
    let status = match fs::read(&status_path) {
        Ok(status) => status,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("{}: {error}", escaped(&status_path))),
    };
    // Only ASCII fields are read, so text in other encodings (old packages' descriptions) must
    // not make the database unreadable.
    let mut instances = instances_in(&String::from_utf8_lossy(&status), package);
    for update in pending_updates(&admin_dir.join("updates"))? {
        for newer in instances_in(&String::from_utf8_lossy(&update), package) {
            instances.retain(|instance| instance.architecture != newer.architecture);
            instances.push(newer);
        }
    }
    instances.retain(|instance| {
        instance.has_files() && architecture.is_none_or(|wanted| instance.architecture == wanted)
    });
    Ok(Some(instances))
}

/// The journal files dpkg has not merged into `status` yet, oldest first. Their names are all
/// digits, of equal length.
fn pending_updates(updates_dir: &Path) -> Result<Vec<Vec<u8>>, String> {
    let entries = match fs::read_dir(updates_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(format!("{}: {error}", escaped(&updates_dir))),
    };
    let mut names = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|error| format!("{}: {error}", escaped(&updates_dir)))?;
        let name = entry.file_name();
        let name_bytes = name.as_bytes();
        if !name_bytes.is_empty() && name_bytes.iter().all(u8::is_ascii_digit) {
            names.push(name);
        }
    }
    names.sort();
    names
        .iter()
        .map(|name| {
            let path = updates_dir.join(name);
            fs::read(&path).map_err(|error| format!("{}: {error}", escaped(&path)))
        })
        .collect()
}

/// The records of `package` in a database file: paragraphs of `Field: value` lines separated by
/// blank lines, continuation lines starting with a space.
pub(crate) fn instances_in(database: &str, package: &str) -> Vec<Instance> {
    let mut instances = Vec::new();
    let mut is_package = false;
    let mut instance = Instance::default();
    for line in database.lines().chain([""]) {
        if line.trim().is_empty() {
            let finished = std::mem::take(&mut instance);
            if std::mem::take(&mut is_package) {
                instances.push(finished);
            }
            continue;
        }
        let Some((field, value)) = line.split_once(':') else {
            continue;
        };
        if field.starts_with([' ', '\t']) {
            continue;
        }
        let value = value.trim();
        if field.eq_ignore_ascii_case("Package") {
            is_package = value == package;
        } else if field.eq_ignore_ascii_case("Architecture") {
            instance.architecture = value.to_owned();
        } else if field.eq_ignore_ascii_case("Multi-Arch") {
            instance.multi_arch_same = value == "same";
        } else if field.eq_ignore_ascii_case("Status") {
            instance.state = value.rsplit(' ').next().unwrap_or_default().to_owned();
        }
    }
    instances
}

/// The paths in the instances' list files, with diversions by other packages applied. Paths
/// are bytes: dpkg does not require them to be UTF-8.
fn read_listed_paths(
    admin_dir: &Path,
    package: &str,
    instances: &[Instance],
) -> Result<Vec<PathBuf>, String> {
    let diversions_path = admin_dir.join("diversions");
    let diversions_file = match fs::read(&diversions_path) {
        Ok(file) => file,
        Err(error) if error.kind() == ErrorKind::NotFound => Vec::new(),
        Err(error) => return Err(format!("{}: {error}", escaped(&diversions_path))),
    };
    let diversions = parse_diversions(&diversions_file);
    let mut paths = Vec::new();
    for instance in instances {
        let list_path = admin_dir
            .join("info")
            .join(instance.list_file_name(package));
        let list = fs::read(&list_path).map_err(|error| {
            format!(
                "{}: {error} (dpkg's status says `{package}:{}` is {})",
                escaped(&list_path),
                instance.architecture,
                instance.state
            )
        })?;
        for listed in non_empty_lines(&list) {
            let path = match diversions.get(listed) {
                Some(diversion) if diversion.by != package.as_bytes() => diversion.to,
                _ => listed,
            };
            paths.push(PathBuf::from(OsStr::from_bytes(path)));
        }
    }
    Ok(paths)
}

/// `dpkg-divert` moved the file a package ships at some path to `to`, unless the package is
/// `by` itself (`:` for a local diversion, which moves every package's file).
pub(crate) struct Diversion<'a> {
    to: &'a [u8],
    by: &'a [u8],
}

/// `diversions`: three lines per diversion, the original path, the new one, the diverting
/// package. Keyed by the original path.
pub(crate) fn parse_diversions(file: &[u8]) -> HashMap<&[u8], Diversion<'_>> {
    let lines: Vec<&[u8]> = non_empty_lines(file).collect();
    lines
        .chunks_exact(3)
        .map(|diversion| {
            let (to, by) = (diversion[1], diversion[2]);
            (diversion[0], Diversion { to, by })
        })
        .collect()
}

pub(crate) fn non_empty_lines(file: &[u8]) -> impl Iterator<Item = &[u8]> {
    file.split(|&byte| byte == b'\n')
        .filter(|line| !line.is_empty())
}

#[cfg(test)]
mod tests {
    use std::{os::unix::fs::PermissionsExt, process::Command};

    use super::*;
    use crate::sources::package_files;

    /// A root with an empty dpkg database that real dpkg can install into.
    fn empty_root() -> tempfile::TempDir {
        let root = tempfile::tempdir().unwrap();
        let admin = root.path().join("var/lib/dpkg");
        fs::create_dir_all(admin.join("info")).unwrap();
        fs::create_dir_all(admin.join("updates")).unwrap();
        fs::write(admin.join("status"), "").unwrap();
        root
    }

    fn roots(root: &Path) -> SourceRoots {
        SourceRoots {
            root: root.to_owned(),
            ..SourceRoots::default()
        }
    }

    fn run(command: &mut Command) {
        let output = command
            .output()
            .unwrap_or_else(|error| panic!("{command:?}: {error}"));
        assert!(
            output.status.success(),
            "{command:?}: {}\n{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn write_file(path: &Path, contents: &str, mode: u32) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, contents).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    /// Builds `blocker-test-fixture` with `dpkg-deb` and installs it into `root` with dpkg.
    /// `control_extra` adds control fields; `architecture` is the package's.
    fn install_fixture(root: &Path, architecture: &str, control_extra: &str) {
        let build = tempfile::tempdir().unwrap();
        let tree = build.path().join("tree");
        write_file(
            &tree.join("DEBIAN/control"),
            &format!(
                "Package: blocker-test-fixture\nVersion: 1.0\nArchitecture: {architecture}\n\
                 {control_extra}Maintainer: blocker tests <tests@example.invalid>\n\
                 Description: files for the blocker package tests\n"
            ),
            0o644,
        );
        let opt = tree.join("opt/blocker-fixture");
        write_file(&opt.join("bin/tool"), "#!/bin/sh\n", 0o755);
        write_file(&opt.join("lib/libfixture.so.1"), "not really ELF", 0o644);
        write_file(&opt.join("share/readme.txt"), "a fixture\n", 0o644);
        fs::create_dir_all(tree.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink(
            "/opt/blocker-fixture/bin/tool",
            tree.join("usr/bin/fixture-tool"),
        )
        .unwrap();
        let deb = build.path().join("fixture.deb");
        run(Command::new("dpkg-deb")
            .args(["--build", "--root-owner-group"])
            .arg(&tree)
            .arg(&deb));
        run(Command::new("dpkg")
            .arg(format!("--root={}", root.display()))
            .arg(format!(
                "--admindir={}",
                root.join("var/lib/dpkg").display()
            ))
            .args([
                "--force-not-root",
                "--force-script-chrootless",
                "--force-architecture",
                "--log=/dev/null",
                "--install",
            ])
            .arg(&deb));
    }

    fn fixture_files(root: &Path) -> Vec<PathBuf> {
        vec![
            root.join("opt/blocker-fixture/bin/tool"),
            root.join("opt/blocker-fixture/lib/libfixture.so.1"),
        ]
    }

    #[test]
    fn an_installed_package_names_its_executables_and_libraries() {
        let root = empty_root();
        install_fixture(root.path(), "all", "");

        let found = package_files("blocker-test-fixture", &roots(root.path())).unwrap();
        assert_eq!(found.files, fixture_files(root.path()));
        assert!(
            found.problems.warnings.is_empty(),
            "{:?}",
            found.problems.warnings
        );

        let with_architecture =
            package_files("blocker-test-fixture:all", &roots(root.path())).unwrap();
        assert_eq!(with_architecture.files, fixture_files(root.path()));
        let error = package_files("blocker-test-fixture:i386", &roots(root.path())).unwrap_err();
        assert!(
            error.contains("`blocker-test-fixture:i386` is not installed (dpkg"),
            "{error}"
        );
    }

    #[test]
    fn a_multi_arch_same_package_has_an_architecture_qualified_list() {
        let root = empty_root();
        install_fixture(root.path(), "amd64", "Multi-Arch: same\n");
        assert!(root
            .path()
            .join("var/lib/dpkg/info/blocker-test-fixture:amd64.list")
            .exists());

        for name in ["blocker-test-fixture", "blocker-test-fixture:amd64"] {
            let found = package_files(name, &roots(root.path())).unwrap();
            assert_eq!(found.files, fixture_files(root.path()), "{name}");
        }
    }

    #[test]
    fn a_removed_package_with_conffiles_left_is_not_installed() {
        let root = empty_root();
        install_fixture(root.path(), "all", "");
        run(Command::new("dpkg")
            .arg(format!("--root={}", root.path().display()))
            .arg(format!(
                "--admindir={}",
                root.path().join("var/lib/dpkg").display()
            ))
            .args([
                "--force-not-root",
                "--force-script-chrootless",
                "--log=/dev/null",
                "--remove",
                "blocker-test-fixture",
            ]));

        let error = package_files("blocker-test-fixture", &roots(root.path())).unwrap_err();
        assert!(
            error.contains("`blocker-test-fixture` is not installed (dpkg"),
            "{error}"
        );
    }

    #[test]
    fn a_package_that_is_not_installed_is_an_error_naming_it() {
        let root = empty_root();
        install_fixture(root.path(), "all", "");
        let error = package_files("wechat", &roots(root.path())).unwrap_err();
        assert!(
            error.contains("package `wechat` is not installed (dpkg"),
            "{error}"
        );
    }

    #[test]
    fn an_unreadable_database_decides_nothing() {
        let root = tempfile::tempdir().unwrap();
        fs::create_dir_all(root.path().join("var/lib/dpkg/status")).unwrap();
        let found = package_files("wechat", &roots(root.path())).unwrap();
        assert!(found.files.is_empty());
        assert!(
            found
                .problems
                .undecided
                .iter()
                .any(|reason| reason.starts_with("dpkg failed: ")
                    && reason.contains("Is a directory")),
            "{:?}",
            found.problems
        );
    }

    #[test]
    fn without_a_database_no_package_manager_is_found() {
        let root = tempfile::tempdir().unwrap();
        let error = package_files("wechat", &roots(root.path())).unwrap_err();
        assert!(error.contains("`wechat`"), "{error}");
        assert!(!error.contains("is not installed (dpkg"), "{error}");
    }

    #[test]
    fn a_diversion_by_another_package_moves_the_file() {
        let root = empty_root();
        install_fixture(root.path(), "all", "");
        let tool = "/opt/blocker-fixture/bin/tool";
        run(Command::new("dpkg-divert")
            .arg(format!("--root={}", root.path().display()))
            .arg(format!(
                "--admindir={}",
                root.path().join("var/lib/dpkg").display()
            ))
            .args(["--package", "other", "--rename", "--divert"])
            .arg(format!("{tool}.real"))
            .args(["--add", tool]));
        assert!(root
            .path()
            .join("opt/blocker-fixture/bin/tool.real")
            .exists());

        let found = package_files("blocker-test-fixture", &roots(root.path())).unwrap();
        assert_eq!(
            found.files,
            [
                root.path().join("opt/blocker-fixture/bin/tool.real"),
                root.path().join("opt/blocker-fixture/lib/libfixture.so.1"),
            ]
        );
    }

    #[test]
    fn pending_journal_entries_override_the_status_file() {
        let database = "Package: other\nStatus: install ok installed\nArchitecture: amd64\n\n\
            Package: fixture\nStatus: install ok installed\nArchitecture: amd64\n\
            Multi-Arch: same\nDescription: a\n long description: with colons\n\n\
            Package: fixture\nStatus: install ok installed\nArchitecture: i386\n\
            Multi-Arch: same\n";
        let admin = tempfile::tempdir().unwrap();
        fs::write(admin.path().join("status"), database).unwrap();
        fs::create_dir(admin.path().join("updates")).unwrap();
        fs::write(
            admin.path().join("updates/0000"),
            "Package: fixture\nStatus: deinstall ok config-files\nArchitecture: i386\n\
             Multi-Arch: same\n",
        )
        .unwrap();
        fs::write(admin.path().join("updates/tmp.i"), "Package: fixture\n").unwrap();

        let installed = installed_instances(admin.path(), "fixture", None)
            .unwrap()
            .unwrap();
        assert_eq!(
            installed,
            [Instance {
                architecture: "amd64".to_owned(),
                multi_arch_same: true,
                state: "installed".to_owned()
            }]
        );
        assert_eq!(installed[0].list_file_name("fixture"), "fixture:amd64.list");
    }
}
