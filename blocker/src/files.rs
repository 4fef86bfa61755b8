//! Walking directory trees for files that can be executed or mapped as code, safely: symlinks are
//! never followed below a root, a directory reached twice (bind mounts) is walked once, and
//! unreadable entries are reported and skipped, never fatal.

use std::{
    collections::HashSet,
    fs::Metadata,
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

/// A regular file found by [`walk`].
#[derive(Debug)]
pub struct WalkEntry {
    pub path: PathBuf,
    pub metadata: Metadata,
}

/// Whether a file could run as a program or be loaded as a library: any execute bit, a shared
/// object name (`libx.so`, `libx.so.1.2`), or an AppImage.
pub fn is_executable_candidate(path: &Path, metadata: &Metadata) -> bool {
    if !metadata.is_file() {
        return false;
    }
    if metadata.permissions().mode() & 0o111 != 0 {
        return true;
    }
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy())
        .unwrap_or_default();
    name.ends_with(".so") || name.contains(".so.") || name.ends_with(".AppImage")
}

/// Every regular file under `root` (or `root` itself if it is a file), in no particular order.
/// `root` is followed if it is a symlink; nothing below it is. Problems are appended to
/// `warnings` as `path: reason`.
pub fn walk(root: &Path, warnings: &mut Vec<String>) -> Vec<WalkEntry> {
    let mut files = Vec::new();
    let metadata = match std::fs::metadata(root) {
        Ok(metadata) => metadata,
        Err(error) => {
            if error.kind() != std::io::ErrorKind::NotFound {
                warnings.push(format!("{}: {error}", root.display()));
            }
            return files;
        }
    };
    if metadata.is_file() {
        files.push(WalkEntry {
            path: root.to_owned(),
            metadata,
        });
        return files;
    }
    let mut visited_directories = HashSet::new();
    let mut pending = vec![(root.to_owned(), metadata)];
    while let Some((directory, metadata)) = pending.pop() {
        if !visited_directories.insert((metadata.dev(), metadata.ino())) {
            continue;
        }
        let entries = match std::fs::read_dir(&directory) {
            Ok(entries) => entries,
            Err(error) => {
                warnings.push(format!("{}: {error}", directory.display()));
                continue;
            }
        };
        for entry in entries {
            let entry = match entry {
                Ok(entry) => entry,
                Err(error) => {
                    warnings.push(format!("{}: {error}", directory.display()));
                    continue;
                }
            };
            let path = entry.path();
            // symlink_metadata: a symlink is neither walked into nor reported.
            match std::fs::symlink_metadata(&path) {
                Ok(metadata) if metadata.is_dir() => pending.push((path, metadata)),
                Ok(metadata) if metadata.is_file() => files.push(WalkEntry { path, metadata }),
                Ok(_) => {}
                Err(error) => warnings.push(format!("{}: {error}", path.display())),
            }
        }
    }
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn walks_files_without_following_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("a/tool"), b"x").unwrap();
        std::fs::write(root.join("a/b/libz.so.1"), b"x").unwrap();
        std::os::unix::fs::symlink(root, root.join("a/b/loop")).unwrap();
        std::os::unix::fs::symlink("/usr/bin", root.join("a/outside")).unwrap();

        let mut warnings = Vec::new();
        let mut found: Vec<_> = walk(root, &mut warnings)
            .into_iter()
            .map(|entry| entry.path.strip_prefix(root).unwrap().to_owned())
            .collect();
        found.sort();
        assert_eq!(
            found,
            [PathBuf::from("a/b/libz.so.1"), PathBuf::from("a/tool")]
        );
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn a_missing_root_is_empty_and_a_file_root_is_itself() {
        let dir = tempfile::tempdir().unwrap();
        let mut warnings = Vec::new();
        assert!(walk(&dir.path().join("missing"), &mut warnings).is_empty());
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(walk(&file, &mut warnings)[0].path, file);
        assert!(warnings.is_empty());
    }

    #[test]
    fn candidates_are_executables_libraries_and_appimages() {
        let dir = tempfile::tempdir().unwrap();
        let check = |name: &str, mode: u32| {
            let path = dir.path().join(name);
            std::fs::write(&path, b"x").unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
            is_executable_candidate(&path, &std::fs::metadata(&path).unwrap())
        };
        assert!(check("tool", 0o755));
        assert!(check("libfoo.so", 0o644));
        assert!(check("libfoo.so.6.1", 0o644));
        assert!(check("WeChat-x86_64.AppImage", 0o644));
        assert!(!check("README", 0o644));
        assert!(!check("notes.sock", 0o644));
        assert!(!is_executable_candidate(
            dir.path(),
            &std::fs::metadata(dir.path()).unwrap()
        ));
    }
}
