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
    /// `Conffiles:`, each path with the MD5 sum (hex) of what the package shipped there: dpkg
    /// keeps conffiles' sums here, not in `md5sums`.
    pub conffiles: Vec<(String, String)>,
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
    Ok(installed_records(admin_dir)?.map(|records| {
        records
            .into_iter()
            .filter(|(name, instance)| {
                name == package && architecture.is_none_or(|wanted| instance.architecture == wanted)
            })
            .map(|(_, instance)| instance)
            .collect()
    }))
}

/// Every package instance whose files are on disk, with its package's name; `None` without a
/// dpkg database.
fn installed_records(admin_dir: &Path) -> Result<Option<Vec<(String, Instance)>>, String> {
    let status_path = admin_dir.join("status");
    let status = match fs::read(&status_path) {
        Ok(status) => status,
        Err(error) if error.kind() == ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(format!("{}: {error}", escaped(&status_path))),
    };
    // Only ASCII fields are read, so text in other encodings (old packages' descriptions) must
    // not make the database unreadable.
    let owned = |(name, instance): (&str, Instance)| (name.to_owned(), instance);
    let mut records: Vec<(String, Instance)> = records_in(&String::from_utf8_lossy(&status))
        .into_iter()
        .map(owned)
        .collect();
    for update in pending_updates(&admin_dir.join("updates"))? {
        for (name, newer) in records_in(&String::from_utf8_lossy(&update)) {
            records.retain(|(older_name, older)| {
                older_name != name || older.architecture != newer.architecture
            });
            records.push((name.to_owned(), newer));
        }
    }
    records.retain(|(_, instance)| instance.has_files());
    Ok(Some(records))
}

/// One installed package instance and the paths it installed.
pub(crate) struct InstalledPackage {
    pub name: String,
    /// `info/<package>.list`: dpkg writes it after the package's files are in place.
    pub list_file: PathBuf,
    /// `info/<package>.md5sums`, which not every package has.
    pub md5sums_file: PathBuf,
    /// Each path as the package lists it (the md5sums' name for it), and where it is on disk
    /// (after diversions).
    pub paths: Vec<(PathBuf, PathBuf)>,
    /// See [`Instance::conffiles`].
    pub conffiles: HashMap<String, String>,
}

/// Every installed package instance with its paths; `None` without a dpkg database. A package
/// whose list cannot be read (dpkg writes a new package's list only after unpacking it) is
/// left out and named in `problems`.
pub(crate) fn installed_packages(
    roots: &SourceRoots,
    problems: &mut Vec<String>,
) -> Result<Option<Vec<InstalledPackage>>, String> {
    let admin_dir = roots.root.join(&roots.dpkg_admin_dir);
    let Some(records) = installed_records(&admin_dir)? else {
        return Ok(None);
    };
    let diversions_file = read_diversions(&admin_dir)?;
    let diversions = parse_diversions(&diversions_file);
    let mut packages = Vec::with_capacity(records.len());
    for (name, mut instance) in records {
        let list = match read_list(&admin_dir, &name, &instance) {
            Ok(list) => list,
            Err(problem) => {
                problems.push(problem);
                continue;
            }
        };
        let paths = non_empty_lines(&list)
            .map(|listed| {
                (
                    PathBuf::from(OsStr::from_bytes(listed)),
                    PathBuf::from(OsStr::from_bytes(divert(&diversions, &name, listed))),
                )
            })
            .collect();
        let info = admin_dir.join("info");
        let list_name = instance.list_file_name(&name);
        let md5sums_name = format!("{}.md5sums", list_name.trim_end_matches(".list"));
        packages.push(InstalledPackage {
            conffiles: std::mem::take(&mut instance.conffiles)
                .into_iter()
                .collect(),
            list_file: info.join(list_name),
            md5sums_file: info.join(md5sums_name),
            name,
            paths,
        });
    }
    Ok(Some(packages))
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

/// The records of `package` in a database file.
pub(crate) fn instances_in(database: &str, package: &str) -> Vec<Instance> {
    records_in(database)
        .into_iter()
        .filter(|(name, _)| *name == package)
        .map(|(_, instance)| instance)
        .collect()
}

/// Every record in a database file, with its package's name: paragraphs of `Field: value` lines
/// separated by blank lines, continuation lines starting with a space.
fn records_in(database: &str) -> Vec<(&str, Instance)> {
    let mut records = Vec::new();
    let mut package = None;
    let mut instance = Instance::default();
    let mut in_conffiles = false;
    for line in database.lines().chain([""]) {
        if line.trim().is_empty() {
            let finished = std::mem::take(&mut instance);
            if let Some(package) = package.take() {
                records.push((package, finished));
            }
            continue;
        }
        if line.starts_with([' ', '\t']) {
            // ` <path> <md5> [obsolete|remove-on-upgrade]`
            let mut words = line.split_whitespace();
            if let (true, Some(path), Some(digest)) = (in_conffiles, words.next(), words.next()) {
                instance
                    .conffiles
                    .push((path.to_owned(), digest.to_ascii_lowercase()));
            }
            continue;
        }
        let Some((field, value)) = line.split_once(':') else {
            continue;
        };
        in_conffiles = field.eq_ignore_ascii_case("Conffiles");
        let value = value.trim();
        if field.eq_ignore_ascii_case("Package") {
            package = Some(value);
        } else if field.eq_ignore_ascii_case("Architecture") {
            instance.architecture = value.to_owned();
        } else if field.eq_ignore_ascii_case("Multi-Arch") {
            instance.multi_arch_same = value == "same";
        } else if field.eq_ignore_ascii_case("Status") {
            instance.state = value.rsplit(' ').next().unwrap_or_default().to_owned();
        }
    }
    records
}

/// The paths in the instances' list files, with diversions by other packages applied. Paths
/// are bytes: dpkg does not require them to be UTF-8.
fn read_listed_paths(
    admin_dir: &Path,
    package: &str,
    instances: &[Instance],
) -> Result<Vec<PathBuf>, String> {
    let diversions_file = read_diversions(admin_dir)?;
    let diversions = parse_diversions(&diversions_file);
    let mut paths = Vec::new();
    for instance in instances {
        let list = read_list(admin_dir, package, instance)?;
        for listed in non_empty_lines(&list) {
            let path = divert(&diversions, package, listed);
            paths.push(PathBuf::from(OsStr::from_bytes(path)));
        }
    }
    Ok(paths)
}

fn read_diversions(admin_dir: &Path) -> Result<Vec<u8>, String> {
    let diversions_path = admin_dir.join("diversions");
    match fs::read(&diversions_path) {
        Ok(file) => Ok(file),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(Vec::new()),
        Err(error) => Err(format!("{}: {error}", escaped(&diversions_path))),
    }
}

fn read_list(admin_dir: &Path, package: &str, instance: &Instance) -> Result<Vec<u8>, String> {
    let list_path = admin_dir
        .join("info")
        .join(instance.list_file_name(package));
    fs::read(&list_path).map_err(|error| {
        format!(
            "{}: {error} (dpkg's status says `{package}:{}` is {})",
            escaped(&list_path),
            instance.architecture,
            instance.state
        )
    })
}

/// Where the file `package` lists at `listed` is: moved by another package's diversion.
fn divert<'a>(
    diversions: &HashMap<&[u8], Diversion<'a>>,
    package: &str,
    listed: &'a [u8],
) -> &'a [u8] {
    match diversions.get(listed) {
        Some(diversion) if diversion.by != package.as_bytes() => diversion.to,
        _ => listed,
    }
}

/// `md5sums`: one `<32 hex digits>  <path without its leading slash>` line per file; the
/// digests in lower case.
pub(crate) fn parse_md5sums(file: &[u8]) -> HashMap<Vec<u8>, Vec<u8>> {
    non_empty_lines(file)
        .filter_map(|line| {
            let (digest, path) = (line.get(..32)?, line.get(32..)?);
            let path = path
                .strip_prefix(b"  ")
                .or_else(|| path.strip_prefix(b" *"))?;
            let path = path.strip_prefix(b"/").unwrap_or(path);
            Some((path.to_vec(), digest.to_ascii_lowercase()))
        })
        .collect()
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

    use md5::Digest;

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
        let md5sums: String = ["bin/tool", "lib/libfixture.so.1", "share/readme.txt"]
            .iter()
            .map(|file| {
                let digest = md5::Md5::digest(fs::read(opt.join(file)).unwrap());
                let hex: String = digest.iter().map(|byte| format!("{byte:02x}")).collect();
                format!("{hex}  opt/blocker-fixture/{file}\n")
            })
            .collect();
        write_file(&tree.join("DEBIAN/md5sums"), &md5sums, 0o644);
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
    fn lockdown_trusts_packaged_files_unless_changed_from_dpkg_s_checksums() {
        let root = empty_root();
        install_fixture(root.path(), "all", "");
        let [tool, library] = <[PathBuf; 2]>::try_from(fixture_files(root.path())).unwrap();

        let trusted = crate::sources::trusted_package_files(&roots(root.path()), u64::MAX);
        assert_eq!(trusted.files, [tool.clone(), library.clone()]);
        assert!(
            trusted.problems.warnings.is_empty(),
            "{:?}",
            trusted.problems
        );

        // A change of metadata only: the content still has dpkg's checksum.
        fs::set_permissions(&tool, fs::Permissions::from_mode(0o750)).unwrap();
        // A change of content.
        fs::write(&library, "modified").unwrap();
        let trusted = crate::sources::trusted_package_files(&roots(root.path()), u64::MAX);
        assert_eq!(trusted.files, std::slice::from_ref(&tool));
        let [warning] = &trusted.problems.warnings[..] else {
            panic!("{:?}", trusted.problems);
        };
        assert!(
            warning.contains(
                "libfixture.so.1: changed since package `blocker-test-fixture` \
                              installed it and its content differs from dpkg's checksum"
            ),
            "{warning}"
        );

        // A package dpkg is unpacking has no list yet: the others stay trusted.
        let admin = root.path().join("var/lib/dpkg");
        let mut status = fs::read_to_string(admin.join("status")).unwrap();
        status.push_str(
            "\nPackage: blocker-unpacking\nStatus: install reinstreq half-installed\n\
             Architecture: all\nVersion: 1.0\n",
        );
        fs::write(admin.join("status"), status).unwrap();
        let trusted = crate::sources::trusted_package_files(&roots(root.path()), u64::MAX);
        assert_eq!(trusted.files, std::slice::from_ref(&tool));
        assert!(
            trusted
                .problems
                .warnings
                .iter()
                .any(|warning| warning.contains("blocker-unpacking.list")),
            "{:?}",
            trusted.problems
        );

        // Too large to check within the hash limit: not trusted.
        let trusted = crate::sources::trusted_package_files(&roots(root.path()), 1);
        assert!(trusted.files.is_empty(), "{:?}", trusted.files);
    }

    #[test]
    fn conffiles_keep_their_checksums() {
        let status = "Package: tool\nStatus: install ok installed\nConffiles:\n \
                      /etc/init.d/tool 0123456789ABCDEF0123456789abcdef\n \
                      /etc/old 00000000000000000000000000000000 obsolete\n\
                      Description: a tool\n with: a colon\n";
        let [instance] = &instances_in(status, "tool")[..] else {
            panic!("one record");
        };
        assert_eq!(
            instance.conffiles,
            [
                (
                    "/etc/init.d/tool".to_owned(),
                    "0123456789abcdef0123456789abcdef".to_owned()
                ),
                (
                    "/etc/old".to_owned(),
                    "00000000000000000000000000000000".to_owned()
                ),
            ]
        );
        assert_eq!(instance.state, "installed");
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
                state: "installed".to_owned(),
                conffiles: Vec::new(),
            }]
        );
        assert_eq!(installed[0].list_file_name("fixture"), "fixture:amd64.list");
    }
}
