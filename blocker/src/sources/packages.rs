//! Installed distribution packages: every package manager the system has is asked which files
//! a package installed, and the executable ones among them are kept.

use crate::escape::escaped;
use std::{fs, io::ErrorKind, path::PathBuf};

use super::{dpkg, rpm, SourceFiles, SourceRoots};
use crate::files::{is_executable_candidate, FileStatus};

/// What one package manager knows about a package.
pub(super) enum Lookup {
    /// The package manager is not used on this system.
    Absent,
    NotInstalled,
    /// The paths the package installed, absolute on the inspected system.
    Installed(Vec<PathBuf>),
    Failed(String),
}

/// No real package name comes near this; it keeps `<name>:<arch>.conffiles` a valid file name.
const MAX_NAME_LENGTH: usize = 200;

/// Checks a package name: `name` or dpkg's `name:arch`. Debian names are lower case; upper case
/// and `_` are accepted too because rpm names use them (`NetworkManager`, `perl-Net_SSLeay`).
pub fn validate_package_name(name: &str) -> Result<(), String> {
    let invalid = |reason: &str| Err(format!("`{name}` is not a valid package name: {reason}"));
    if name.len() > MAX_NAME_LENGTH {
        return invalid(&format!("longer than {MAX_NAME_LENGTH} characters"));
    }
    let (package, architecture) = split_architecture(name);
    if package.len() < 2 {
        return invalid("a name has at least 2 characters");
    }
    if !package.starts_with(|c: char| c.is_ascii_alphanumeric()) {
        return invalid("a name starts with a letter or digit");
    }
    if let Some(c) = package
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "+._-".contains(c)))
    {
        return invalid(&format!("`{c}` is not allowed in a name"));
    }
    if let Some(architecture) = architecture {
        let valid = architecture.starts_with(|c: char| c.is_ascii_alphanumeric())
            && architecture
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
        if !valid {
            return invalid(&format!(
                "`{architecture}` is not an architecture (like `amd64` or `i386`)"
            ));
        }
    }
    Ok(())
}

/// `name:arch` as (`name`, `Some(arch)`).
fn split_architecture(name: &str) -> (&str, Option<&str>) {
    match name.split_once(':') {
        Some((package, architecture)) => (package, Some(architecture)),
        None => (name, None),
    }
}

/// The executable files and shared objects an installed package put on the system, from every
/// package manager present (dpkg; rpm if the `rpm` command exists). Without an architecture,
/// every installed architecture of a multi-arch package counts. The `:arch` suffix is dpkg's
/// syntax; rpm is asked with the name as given, so its own `name.arch` works there.
pub fn package_files(name: &str, roots: &SourceRoots) -> Result<SourceFiles, String> {
    validate_package_name(name)?;
    let (package, architecture) = split_architecture(name);
    let lookups = [
        ("dpkg", dpkg::listed_paths(package, architecture, roots)),
        ("rpm", rpm::listed_paths(name, roots)),
    ];

    let mut found = SourceFiles::default();
    let mut installed = false;
    let mut not_installed_in = Vec::new();
    for (manager, lookup) in lookups {
        match lookup {
            Lookup::Absent => {}
            Lookup::NotInstalled => not_installed_in.push(manager),
            Lookup::Installed(paths) => {
                installed = true;
                add_listed(&mut found, name, manager, &paths, roots);
            }
            Lookup::Failed(reason) => found
                .problems
                .undecided
                .push(format!("{manager} failed: {reason}")),
        }
    }
    if installed {
        return Ok(found.finish());
    }
    let message = if !not_installed_in.is_empty() {
        format!(
            "package `{name}` is not installed ({})",
            not_installed_in.join(", ")
        )
    } else {
        format!(
            "package `{name}`: no package manager found (no dpkg database in {}, no rpm database)",
            escaped(&roots.root.join(&roots.dpkg_admin_dir))
        )
    };
    found.nothing_found(message)
}

/// Adds the executable candidates among the paths a package manager lists. Directories are
/// shared with other packages and symlinks point at files that are listed where they belong,
/// so only regular files count. Listed files that are missing are normal (conffiles the
/// administrator deleted, documentation excluded by `path-exclude`), so they are skipped unless
/// none of the package's files exist at all.
fn add_listed(
    found: &mut SourceFiles,
    name: &str,
    manager: &str,
    listed: &[PathBuf],
    roots: &SourceRoots,
) {
    let mut existing_files = 0;
    let mut missing_files = 0;
    let mut first_missing = None;
    for listed_path in listed {
        let Some(path) = roots.system_path(listed_path) else {
            found.problems.push(format!(
                "{}: {manager} lists this path for package `{name}`, but it leaves {}",
                escaped(&listed_path),
                escaped(&roots.root)
            ));
            continue;
        };
        match fs::symlink_metadata(&path) {
            Ok(metadata) => {
                if !metadata.is_dir() {
                    existing_files += 1;
                }
                let status = FileStatus::of(&metadata);
                if is_executable_candidate(&path, &status) {
                    found.add(path, &status);
                }
            }
            Err(error)
                if matches!(error.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) =>
            {
                missing_files += 1;
                first_missing.get_or_insert(path);
            }
            Err(error) => found.problems.failed(&path, error),
        }
    }
    if existing_files == 0 {
        if let Some(first_missing) = first_missing {
            found.problems.push(format!(
                "none of the files {manager} lists for package `{name}` exist ({missing_files} \
                 missing, such as {})",
                escaped(&first_missing)
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn package_names() {
        for valid in [
            "wechat",
            "kesl",
            "libc6:amd64",
            "g++",
            "lib32gcc-s1:i386",
            "gir1.2-glib-2.0:amd64",
            "NetworkManager",
            "perl-Net_SSLeay",
            "glibc.i686",
            "0ad",
        ] {
            assert_eq!(validate_package_name(valid), Ok(()), "{valid}");
        }
        for invalid in [
            "",
            "a",
            "../etc",
            "a/b",
            ".hidden",
            "-option",
            "name:",
            "name:../x",
            "name:AMD64",
            "name:amd64:i386",
            "two words",
            "wechat\n",
            &"a".repeat(MAX_NAME_LENGTH + 1),
        ] {
            let error = validate_package_name(invalid).unwrap_err();
            assert!(
                error.contains("not a valid package name"),
                "{invalid:?}: {error}"
            );
        }
    }

    #[test]
    fn missing_listed_files_are_skipped_and_reported_only_when_none_exist() {
        let root = tempfile::tempdir().unwrap();
        let tool = root.path().join("usr/bin/tool");
        fs::create_dir_all(tool.parent().unwrap()).unwrap();
        fs::write(&tool, b"#!/bin/sh\n").unwrap();
        fs::set_permissions(&tool, fs::Permissions::from_mode(0o755)).unwrap();
        let roots = SourceRoots {
            root: root.path().to_owned(),
            ..SourceRoots::default()
        };
        let listed = |paths: &[&str]| -> Vec<PathBuf> { paths.iter().map(PathBuf::from).collect() };

        let mut some_missing = SourceFiles::default();
        let paths = listed(&[
            "/.",
            "/usr",
            "/usr/bin/tool",
            "/usr/share/doc/fixture/copyright",
        ]);
        add_listed(&mut some_missing, "fixture", "dpkg", &paths, &roots);
        assert_eq!(some_missing.files, [tool]);
        assert!(
            some_missing.problems.warnings.is_empty(),
            "{:?}",
            some_missing.problems.warnings
        );

        let mut all_missing = SourceFiles::default();
        add_listed(
            &mut all_missing,
            "fixture",
            "dpkg",
            &listed(&["/.", "/opt/gone"]),
            &roots,
        );
        assert!(all_missing.files.is_empty());
        assert_eq!(
            all_missing.problems.warnings.len(),
            1,
            "{:?}",
            all_missing.problems.warnings
        );
        assert!(all_missing.problems.warnings[0]
            .contains("none of the files dpkg lists for package `fixture` exist"));

        let mut escaping = SourceFiles::default();
        add_listed(
            &mut escaping,
            "fixture",
            "dpkg",
            &listed(&["/usr/../../etc/passwd"]),
            &roots,
        );
        assert!(escaping.files.is_empty());
        assert!(
            escaping.problems.warnings[0].contains("leaves"),
            "{:?}",
            escaping.problems.warnings
        );
    }

    #[test]
    fn an_invalid_name_is_refused_before_any_lookup() {
        let error = package_files("../../etc/passwd", &SourceRoots::default()).unwrap_err();
        assert!(error.contains("not a valid package name"), "{error}");
    }
}
