//! Snaps: every mounted revision of a snap, under snapd's mount directory (`/snap/<name>/<rev>`;
//! `/var/lib/snapd/snap` on distributions without `/snap`). The `current` symlink is not
//! followed, and `/snap/bin`'s launchers, symlinks to `/usr/bin/snap`, are never looked at.

use crate::escape::escaped;
use std::{
    collections::BTreeSet,
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
};

use super::{SourceFiles, SourceRoots};

/// Where snapd mounts snaps, relative to the root, in order of preference: Debian and Ubuntu
/// use `/snap`; Fedora and Arch use the second, with `/snap` an optional symlink to it.
const MOUNT_DIRECTORIES: [&str; 2] = ["snap", "var/lib/snapd/snap"];
const MAX_NAME_LENGTH: usize = 40;
const MAX_INSTANCE_KEY_LENGTH: usize = 10;

/// Checks a snap name by snapd's rules: 2 to 40 characters of `[a-z0-9-]`, at least one letter,
/// no leading, trailing or doubled `-`. A parallel-install instance key may follow:
/// `name_key`, with 1 to 10 characters of `[a-z0-9]`.
pub fn validate_snap_name(name: &str) -> Result<(), String> {
    let invalid = |reason: &str| Err(format!("`{name}` is not a valid snap name: {reason}"));
    let (snap, instance_key) = match name.split_once('_') {
        Some((snap, key)) => (snap, Some(key)),
        None => (name, None),
    };
    if !(2..=MAX_NAME_LENGTH).contains(&snap.len()) {
        return invalid(&format!("a name has 2 to {MAX_NAME_LENGTH} characters"));
    }
    if let Some(c) = snap
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'))
    {
        return invalid(&format!("`{c}` is not allowed (only a-z, 0-9 and -)"));
    }
    if !snap.contains(|c: char| c.is_ascii_lowercase()) {
        return invalid("a name has at least one letter");
    }
    if snap.starts_with('-') || snap.ends_with('-') || snap.contains("--") {
        return invalid("`-` can't start or end a name or follow another `-`");
    }
    if let Some(key) = instance_key {
        let valid = (1..=MAX_INSTANCE_KEY_LENGTH).contains(&key.len())
            && key
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
        if !valid {
            return invalid(&format!(
                "the instance key after `_` has 1 to {MAX_INSTANCE_KEY_LENGTH} characters of a-z and 0-9"
            ));
        }
    }
    Ok(())
}

/// What an `allow` rule naming snap `name` trusts: its mounted revisions, and what they run on:
/// the base snap each revision's `meta/snap.yaml` names (`core` for an app that names none),
/// whose loader and libraries the app uses, and the `snapd` snap, from which snapd may run its
/// helpers (`snap-confine`, `snap-exec`). snapd mounts them all, as root.
pub fn allowed_snap_files(name: &str, roots: &SourceRoots) -> Result<SourceFiles, String> {
    let mut found = snap_files(name, roots)?;
    let mount_directory = mount_directory(roots);
    let mut runs_on = BTreeSet::from([SNAPD.to_owned()]);
    for revision in found
        .files
        .iter()
        .filter_map(|file| revision_of(&mount_directory, file))
        .collect::<BTreeSet<_>>()
    {
        let snap_yaml = revision.join("meta/snap.yaml");
        match fs::read_to_string(&snap_yaml) {
            Ok(text) => runs_on.extend(base_of(&text)),
            Err(error) => found.problems.failed(&snap_yaml, error),
        }
    }
    for base in runs_on {
        let installed = validate_snap_name(&base).is_ok()
            && found.add_walked_path(&mount_directory.join(&base));
        if !installed && base != SNAPD {
            found.problems.push(format!(
                "snap `{name}` runs on `{}`, which is not installed in {}",
                escaped(&base),
                escaped(&mount_directory)
            ));
        }
    }
    Ok(found.finish())
}

/// The snap snapd itself ships as, holding the helpers it may run from there.
const SNAPD: &str = "snapd";
/// The base of an app snap whose `snap.yaml` names none.
const DEFAULT_BASE: &str = "core";

/// `<mount>/<snap>/<revision>` of a file below it.
fn revision_of(mount_directory: &Path, file: &Path) -> Option<PathBuf> {
    let relative = file.strip_prefix(mount_directory).ok()?;
    let mut components = relative.components();
    let (snap, revision) = (components.next()?, components.next()?);
    Some(mount_directory.join(snap).join(revision))
}

/// The base snap an app's `snap.yaml` runs on; none for the snaps that are bases or snapd
/// themselves (`type: base`, `os`, `snapd`, `kernel`, `gadget`).
fn base_of(snap_yaml: &str) -> Option<String> {
    let top_level = |key: &str| {
        snap_yaml.lines().find_map(|line| {
            let value = line.strip_prefix(key)?.strip_prefix(':')?.trim();
            Some(value.trim_matches(['"', '\'']).to_owned())
        })
    };
    match top_level("type").as_deref() {
        None | Some("app") => Some(top_level("base").unwrap_or_else(|| DEFAULT_BASE.to_owned())),
        Some(_) => None,
    }
}

/// Where snapd mounts snaps on this system.
fn mount_directory(roots: &SourceRoots) -> PathBuf {
    MOUNT_DIRECTORIES
        .iter()
        .map(|directory| roots.root.join(directory))
        .find(|directory| directory.is_dir())
        .unwrap_or_else(|| roots.root.join(MOUNT_DIRECTORIES[0]))
}

/// The executable files of every mounted revision of snap `name`. A name without an instance
/// key also covers its parallel installs (`name_key`): they are the same application.
pub fn snap_files(name: &str, roots: &SourceRoots) -> Result<SourceFiles, String> {
    validate_snap_name(name)?;
    let mount_directory = mount_directory(roots);
    let not_installed = format!(
        "snap `{name}` is not installed (searched {})",
        escaped(&mount_directory)
    );
    let entries = match fs::read_dir(&mount_directory) {
        Ok(entries) => entries,
        Err(error) if error.kind() == ErrorKind::NotFound => return Err(not_installed),
        Err(error) => {
            let mut found = SourceFiles::default();
            found.problems.failed(&mount_directory, error);
            return found.nothing_found(not_installed);
        }
    };

    let parallel_install_prefix = format!("{name}_");
    let mut found = SourceFiles::default();
    let mut installed = false;
    for entry in entries {
        match entry {
            Ok(entry) => {
                let entry_name = entry.file_name();
                let entry_name = entry_name.to_string_lossy();
                if entry_name == name || entry_name.starts_with(&parallel_install_prefix) {
                    installed |= found.add_walked_path(&entry.path());
                }
            }
            Err(error) => found.problems.failed(&mount_directory, error),
        }
    }
    if !installed {
        return found.nothing_found(not_installed);
    }
    Ok(found.finish())
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::fs::{symlink, PermissionsExt},
        path::Path,
    };

    use super::*;

    fn roots(root: &Path) -> SourceRoots {
        SourceRoots {
            root: root.to_owned(),
            ..SourceRoots::default()
        }
    }

    fn executable(path: &Path) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, b"\x7fELF").unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(0o755)).unwrap();
    }

    #[test]
    fn finds_each_revision_once_without_following_current() {
        let root = tempfile::tempdir().unwrap();
        let snap = root.path().join("snap");
        executable(&snap.join("hello/29/bin/hello"));
        symlink("29", snap.join("hello/current")).unwrap();
        executable(&snap.join("hello/30/bin/hello"));
        fs::write(snap.join("hello/30/meta.yaml"), b"name: hello").unwrap();
        executable(&snap.join("hello-world/1/bin/hello-world"));
        fs::create_dir_all(snap.join("bin")).unwrap();
        symlink("/usr/bin/snap", snap.join("bin/hello")).unwrap();

        let found = snap_files("hello", &roots(root.path())).unwrap();
        assert_eq!(
            found.files,
            [
                snap.join("hello/29/bin/hello"),
                snap.join("hello/30/bin/hello")
            ]
        );
        assert!(
            found.problems.warnings.is_empty(),
            "{:?}",
            found.problems.warnings
        );
    }

    #[test]
    fn a_name_covers_its_parallel_installs_and_an_instance_only_itself() {
        let root = tempfile::tempdir().unwrap();
        let snap = root.path().join("snap");
        executable(&snap.join("hello/29/bin/hello"));
        executable(&snap.join("hello_work/29/bin/hello"));

        let all = snap_files("hello", &roots(root.path())).unwrap();
        assert_eq!(
            all.files,
            [
                snap.join("hello/29/bin/hello"),
                snap.join("hello_work/29/bin/hello")
            ]
        );
        let instance = snap_files("hello_work", &roots(root.path())).unwrap();
        assert_eq!(instance.files, [snap.join("hello_work/29/bin/hello")]);
    }

    #[test]
    fn uses_var_lib_snapd_snap_where_snap_does_not_exist() {
        let root = tempfile::tempdir().unwrap();
        let binary = root.path().join("var/lib/snapd/snap/hello/29/bin/hello");
        executable(&binary);

        let found = snap_files("hello", &roots(root.path())).unwrap();
        assert_eq!(found.files, [binary]);
    }

    #[test]
    fn a_missing_snap_is_an_error_naming_it_and_where_it_was_looked_for() {
        let root = tempfile::tempdir().unwrap();
        executable(&root.path().join("snap/hello/29/bin/hello"));
        let error = snap_files("wechat", &roots(root.path())).unwrap_err();
        assert!(error.contains("snap `wechat` is not installed"), "{error}");
        assert!(
            error.contains(&root.path().join("snap").display().to_string()),
            "{error}"
        );

        let empty = tempfile::tempdir().unwrap();
        let error = snap_files("wechat", &roots(empty.path())).unwrap_err();
        assert!(error.contains("snap `wechat` is not installed"), "{error}");
    }

    #[test]
    fn an_invalid_name_is_refused_before_any_lookup() {
        let error = snap_files("../bin", &SourceRoots::default()).unwrap_err();
        assert!(error.contains("not a valid snap name"), "{error}");
    }

    #[test]
    fn snap_names() {
        for valid in [
            "hello",
            "hello-world",
            "0ad",
            "a1",
            "kesl",
            "hello_work",
            "hello_1",
        ] {
            assert_eq!(validate_snap_name(valid), Ok(()), "{valid}");
        }
        for invalid in [
            "",
            "a",
            "123",
            "../etc",
            "a/b",
            "Hello",
            "-hello",
            "hello-",
            "hello--world",
            "hello_",
            "hello_Work",
            "hello_abcdefghijk",
            "hello_a_b",
            "hello world",
            &"a".repeat(MAX_NAME_LENGTH + 1),
        ] {
            let error = validate_snap_name(invalid).unwrap_err();
            assert!(
                error.contains("not a valid snap name"),
                "{invalid:?}: {error}"
            );
        }
    }

    fn write_snap_yaml(path: &Path, text: &str) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, text).unwrap();
    }

    #[test]
    fn an_allow_rule_trusts_the_snap_with_its_base_and_snapd() {
        let root = tempfile::tempdir().unwrap();
        let snap = root.path().join("snap");
        executable(&snap.join("app/5/bin/app"));
        write_snap_yaml(
            &snap.join("app/5/meta/snap.yaml"),
            "name: app\nbase: core22\n",
        );
        executable(&snap.join("core22/100/usr/lib/ld.so"));
        write_snap_yaml(
            &snap.join("core22/100/meta/snap.yaml"),
            "name: core22\ntype: base\n",
        );
        executable(&snap.join("snapd/200/usr/lib/snapd/snap-confine"));
        executable(&snap.join("core20/1/usr/lib/ld.so"));
        executable(&snap.join("older/1/bin/older"));
        write_snap_yaml(&snap.join("older/1/meta/snap.yaml"), "name: older\n");

        let found = allowed_snap_files("app", &roots(root.path())).unwrap();
        assert_eq!(
            found.files,
            [
                snap.join("app/5/bin/app"),
                snap.join("core22/100/usr/lib/ld.so"),
                snap.join("snapd/200/usr/lib/snapd/snap-confine"),
            ]
        );
        // A snap that names no base runs on `core`, which is not there.
        let older = allowed_snap_files("older", &roots(root.path())).unwrap();
        assert!(
            older
                .problems
                .warnings
                .iter()
                .any(|warning| warning.contains("runs on `core`, which is not installed")),
            "{:?}",
            older.problems.warnings
        );
        // Banned, a snap is only itself.
        assert_eq!(
            snap_files("app", &roots(root.path())).unwrap().files.len(),
            1
        );
    }
}
