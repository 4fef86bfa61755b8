//! Walking directory trees for files that can be executed or mapped as code, safely: every
//! directory is opened relative to its parent's descriptor without following symlinks, so a
//! directory swapped for a symlink while the walk runs cannot lead it elsewhere; a directory
//! reached twice (bind mounts) is walked once; depth is bounded; unreadable entries are reported
//! and skipped, never fatal.

use crate::escape::escaped;
use std::{
    collections::HashSet,
    ffi::{CStr, CString, OsStr},
    fs::Metadata,
    os::{
        fd::OwnedFd,
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Path, PathBuf},
};

use rustix::fs::{fstat, openat, statat, AtFlags, Dir, FileType, Mode, OFlags, Stat, CWD};

/// Directories deeper than this below a walk's root are reported and not entered: each level
/// holds a descriptor open, and a user can make a directory chain as deep as they like.
const MAX_DEPTH: usize = 256;

/// What a walk (or `fstat`) tells about a file, in userspace's encoding.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileStatus {
    pub dev: u64,
    pub ino: u64,
    pub mode: u32,
    /// The owner's uid.
    pub uid: u32,
    pub size: u64,
    /// Nanoseconds since the epoch; 128 bits so no timestamp a filesystem can hold overflows.
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileStatus {
    pub fn of(metadata: &Metadata) -> Self {
        Self {
            dev: metadata.dev(),
            ino: metadata.ino(),
            mode: metadata.mode(),
            uid: metadata.uid(),
            size: metadata.size(),
            mtime_ns: nanoseconds(metadata.mtime(), metadata.mtime_nsec()),
            ctime_ns: nanoseconds(metadata.ctime(), metadata.ctime_nsec()),
        }
    }

    fn of_stat(stat: &Stat) -> Self {
        Self {
            dev: stat.st_dev,
            ino: stat.st_ino,
            mode: stat.st_mode,
            uid: stat.st_uid,
            size: u64::try_from(stat.st_size).unwrap_or(0),
            mtime_ns: nanoseconds(
                stat.st_mtime,
                i64::try_from(stat.st_mtime_nsec).unwrap_or(0),
            ),
            ctime_ns: nanoseconds(
                stat.st_ctime,
                i64::try_from(stat.st_ctime_nsec).unwrap_or(0),
            ),
        }
    }

    pub fn is_file(&self) -> bool {
        FileType::from_raw_mode(self.mode) == FileType::RegularFile
    }

    fn is_dir(&self) -> bool {
        FileType::from_raw_mode(self.mode) == FileType::Directory
    }

    pub fn is_same_inode(&self, other: &Self) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }
}

fn nanoseconds(seconds: i64, nanoseconds: i64) -> i128 {
    i128::from(seconds) * 1_000_000_000 + i128::from(nanoseconds)
}

/// A regular file found by [`walk`]: its path, and what the walk saw there through the
/// directory's descriptor. Whoever opens `path` later checks it still finds that inode.
#[derive(Clone, Debug)]
pub struct WalkEntry {
    pub path: PathBuf,
    pub status: FileStatus,
}

/// Whether a file could run as a program or be loaded as a library: any execute bit, a shared
/// object name (`libx.so`, `libx.so.1.2`), or an AppImage.
pub fn is_executable_candidate(path: &Path, status: &FileStatus) -> bool {
    if !status.is_file() {
        return false;
    }
    if status.mode & 0o111 != 0 {
        return true;
    }
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy())
        .unwrap_or_default();
    name.ends_with(".so") || name.contains(".so.") || name.ends_with(".AppImage")
}

/// One open directory of a walk and the subdirectories of it still to enter.
struct Level {
    fd: OwnedFd,
    path: PathBuf,
    subdirectories: Vec<(CString, FileStatus)>,
}

/// Every regular file under `root` (or `root` itself if it is a file), in no particular order.
/// `root` is followed if it is a symlink; nothing below it is. Problems are appended to
/// `warnings` as `path: reason`; a missing root is simply empty.
pub fn walk(root: &Path, warnings: &mut Vec<String>) -> Vec<WalkEntry> {
    let mut files = Vec::new();
    let opened = openat(
        CWD,
        root,
        OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK | OFlags::PATH,
        Mode::empty(),
    )
    .and_then(|fd| Ok((fstat(&fd)?, fd)));
    let (stat, fd) = match opened {
        Ok(opened) => opened,
        Err(rustix::io::Errno::NOENT) => return files,
        Err(error) => {
            warnings.push(format!("{}: {error}", escaped(&root)));
            return files;
        }
    };
    let status = FileStatus::of_stat(&stat);
    if status.is_file() {
        files.push(WalkEntry {
            path: root.to_owned(),
            status,
        });
        return files;
    }
    if !status.is_dir() {
        return files;
    }
    let Some(fd) = reopen_directory(fd, root, &status, warnings) else {
        return files;
    };
    let mut visited = HashSet::from([(status.dev, status.ino)]);
    let mut stack = vec![read_level(fd, root.to_owned(), &mut files, warnings)];
    loop {
        let depth = stack.len();
        let Some(top) = stack.last_mut() else {
            break;
        };
        let Some((name, expected)) = top.subdirectories.pop() else {
            stack.pop();
            continue;
        };
        let path = top.path.join(OsStr::from_bytes(name.to_bytes()));
        if !visited.insert((expected.dev, expected.ino)) {
            continue;
        }
        if depth > MAX_DEPTH {
            warnings.push(format!(
                "{}: deeper than {MAX_DEPTH} levels; not walked",
                escaped(&path)
            ));
            continue;
        }
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
        let child = match openat(&top.fd, name.as_c_str(), flags, Mode::empty()) {
            Ok(child) => child,
            Err(error) => {
                warnings.push(format!("{}: {error}", escaped(&path)));
                continue;
            }
        };
        if !fstat(&child).is_ok_and(|stat| FileStatus::of_stat(&stat).is_same_inode(&expected)) {
            warnings.push(format!(
                "{}: replaced while being walked; skipped",
                escaped(&path)
            ));
            continue;
        }
        let level = read_level(child, path, &mut files, warnings);
        stack.push(level);
    }
    files
}

/// Turns the `O_PATH` descriptor of the root into one that can be read, checking it is still the
/// same directory.
fn reopen_directory(
    fd: OwnedFd,
    root: &Path,
    status: &FileStatus,
    warnings: &mut Vec<String>,
) -> Option<OwnedFd> {
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
    match openat(&fd, c".", flags, Mode::empty()) {
        Ok(directory)
            if fstat(&directory).is_ok_and(|s| FileStatus::of_stat(&s).is_same_inode(status)) =>
        {
            Some(directory)
        }
        Ok(_) => None,
        Err(error) => {
            warnings.push(format!("{}: {error}", escaped(&root)));
            None
        }
    }
}

/// Reads one directory: regular files go to `files`, subdirectories into the level.
fn read_level(
    fd: OwnedFd,
    path: PathBuf,
    files: &mut Vec<WalkEntry>,
    warnings: &mut Vec<String>,
) -> Level {
    let mut subdirectories = Vec::new();
    match Dir::read_from(&fd) {
        Ok(entries) => {
            for entry in entries {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(error) => {
                        warnings.push(format!("{}: {error}", escaped(&path)));
                        break;
                    }
                };
                let name: &CStr = entry.file_name();
                if name == c"." || name == c".." {
                    continue;
                }
                let child_path = path.join(OsStr::from_bytes(name.to_bytes()));
                // Not following symlinks: a symlink is neither walked into nor reported.
                match statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) => {
                        let status = FileStatus::of_stat(&stat);
                        if status.is_dir() {
                            subdirectories.push((name.to_owned(), status));
                        } else if status.is_file() {
                            files.push(WalkEntry {
                                path: child_path,
                                status,
                            });
                        }
                    }
                    Err(error) => warnings.push(format!("{}: {error}", escaped(&child_path))),
                }
            }
        }
        Err(error) => warnings.push(format!("{}: {error}", escaped(&path))),
    }
    Level {
        fd,
        path,
        subdirectories,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

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
            is_executable_candidate(&path, &FileStatus::of(&std::fs::metadata(&path).unwrap()))
        };
        assert!(check("tool", 0o755));
        assert!(check("libfoo.so", 0o644));
        assert!(check("libfoo.so.6.1", 0o644));
        assert!(check("WeChat-x86_64.AppImage", 0o644));
        assert!(!check("README", 0o644));
        assert!(!check("notes.sock", 0o644));
        let directory = FileStatus::of(&std::fs::metadata(dir.path()).unwrap());
        assert!(!is_executable_candidate(dir.path(), &directory));
    }

    #[test]
    fn walk_status_matches_the_files_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"12345").unwrap();
        let mut warnings = Vec::new();
        let found = walk(dir.path(), &mut warnings);
        assert_eq!(found.len(), 1);
        assert_eq!(
            found[0].status,
            FileStatus::of(&std::fs::metadata(&file).unwrap())
        );
    }

    #[test]
    fn very_deep_trees_are_cut_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let mut deep = dir.path().to_owned();
        for _ in 0..(MAX_DEPTH + 5) {
            deep.push("d");
        }
        std::fs::create_dir_all(&deep).unwrap();
        std::fs::write(deep.join("bottom"), b"x").unwrap();
        let mut warnings = Vec::new();
        let found = walk(dir.path(), &mut warnings);
        assert!(found.is_empty());
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert!(
            warnings[0].contains("deeper than 256 levels"),
            "{warnings:?}"
        );
    }

    #[test]
    fn times_before_the_epoch_and_far_ahead_are_exact() {
        assert_eq!(nanoseconds(-1, 500_000_000), -500_000_000);
        assert_eq!(
            nanoseconds(i64::MAX, 999_999_999),
            i128::from(i64::MAX) * 1_000_000_000 + 999_999_999
        );
    }
}
