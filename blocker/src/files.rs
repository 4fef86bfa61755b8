//! Walking directory trees for files that can be executed or mapped as code, safely: every
//! directory is opened relative to its parent's descriptor without following symlinks, so a
//! directory swapped for a symlink while the walk runs cannot lead it elsewhere; a directory
//! reached twice (bind mounts) is walked once; depth is bounded, and a directory's descriptor is
//! closed when the walk leaves it, so a tree built deep or wide cannot exhaust descriptors;
//! unreadable entries are reported and skipped, never fatal.
//!
//! A tree a user owns is entered through [`OpenDirectory::open_beneath`], which follows no
//! symlink on the way down either, and walked with [`walk_directory`] from that descriptor:
//! its path is never resolved again, so swapping a component for a symlink at any moment
//! cannot point the walk at someone else's files.

use crate::{escape::escaped, lookup::Problems};
use std::{
    collections::HashSet,
    ffi::{CStr, CString, OsStr},
    fs::{File, Metadata},
    io,
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::{ffi::OsStrExt, fs::MetadataExt},
    },
    path::{Component, Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Mutex,
    },
};

use rustix::{
    fs::{fstat, openat, readlinkat, statat, AtFlags, Dir, FileType, Mode, OFlags, Stat, CWD},
    io::Errno,
};

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

    pub fn is_dir(&self) -> bool {
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

/// A directory open for reading, the path it stands for (in messages, and as the start of the
/// paths of what is found in it) and what `fstat` said of it through this descriptor.
pub struct OpenDirectory {
    fd: OwnedFd,
    pub path: PathBuf,
    pub status: FileStatus,
}

/// Why [`OpenDirectory::open_beneath`] did not open a directory.
#[derive(Debug)]
pub enum NotOpened {
    /// A component is missing or is not a directory: nothing is there.
    Absent,
    /// A component is a symlink (the path given, up to it), which is not followed.
    Symlink(PathBuf),
    /// Anything else, as `path: reason`.
    Failed(String),
}

impl OpenDirectory {
    /// Opens the directory at `path`, following symlinks: for paths that only root can change.
    /// `None` when nothing or something else than a directory is there.
    pub fn open(path: &Path) -> io::Result<Option<Self>> {
        match openat(CWD, path, DIRECTORY_FLAGS, Mode::empty()) {
            Ok(fd) => Self::opened(fd, path).map(Some),
            Err(Errno::NOENT | Errno::NOTDIR) => Ok(None),
            Err(error) => Err(error.into()),
        }
    }

    /// Opens `relative` below this directory one component at a time, relative to the
    /// previous component's descriptor and following no symlink, so the directory reached is
    /// one that the path names now through directories only. `relative` must consist of plain
    /// names.
    pub fn open_beneath(&self, relative: &Path) -> Result<Self, NotOpened> {
        let mut path = self.path.clone();
        let mut current: Option<Self> = None;
        for component in relative.components() {
            let Component::Normal(name) = component else {
                return Err(NotOpened::Failed(format!(
                    "{}: only plain names are opened beneath a directory",
                    escaped(&relative)
                )));
            };
            path.push(name);
            let name = CString::new(name.as_bytes())
                .map_err(|_| NotOpened::Failed(format!("{}: a NUL in a name", escaped(&path))))?;
            let parent = current.as_ref().unwrap_or(self);
            let flags = DIRECTORY_FLAGS | OFlags::NOFOLLOW;
            let child = match openat(&parent.fd, name.as_c_str(), flags, Mode::empty()) {
                Ok(child) => child,
                // What is there, not followed, is not a directory: a symlink, something else
                // or nothing.
                Err(Errno::LOOP | Errno::NOTDIR | Errno::NOENT) => {
                    let symlink = statat(&parent.fd, name.as_c_str(), AtFlags::SYMLINK_NOFOLLOW)
                        .is_ok_and(|stat| {
                            FileType::from_raw_mode(stat.st_mode) == FileType::Symlink
                        });
                    return Err(if symlink {
                        NotOpened::Symlink(path)
                    } else {
                        NotOpened::Absent
                    });
                }
                Err(error) => {
                    return Err(NotOpened::Failed(format!("{}: {error}", escaped(&path))))
                }
            };
            current = Some(
                Self::opened(child, &path)
                    .map_err(|error| NotOpened::Failed(format!("{}: {error}", escaped(&path))))?,
            );
        }
        current.ok_or_else(|| NotOpened::Failed(format!("{}: nothing to open", escaped(&path))))
    }

    fn opened(fd: OwnedFd, path: &Path) -> io::Result<Self> {
        let status = FileStatus::of_stat(&fstat(&fd)?);
        Ok(Self {
            fd,
            path: path.to_owned(),
            status,
        })
    }
}

const DIRECTORY_FLAGS: OFlags = OFlags::RDONLY
    .union(OFlags::DIRECTORY)
    .union(OFlags::CLOEXEC)
    .union(OFlags::NONBLOCK);

/// A regular file met by [`walk_directory`], while its directory is still open.
pub struct WalkedFile<'a> {
    /// The directory holding the file: [`WalkedFile::open`] opens exactly the file the walk saw
    /// through it, not whatever its path leads to by the time someone uses the path.
    pub directory: BorrowedFd<'a>,
    pub name: &'a CStr,
    pub path: PathBuf,
    pub status: FileStatus,
}

impl WalkedFile<'_> {
    /// Opens the file for reading relative to its directory, without following a symlink or
    /// blocking on a FIFO, and only if it is still the file the walk saw.
    pub fn open(&self) -> io::Result<File> {
        let file = self.open_unverified()?;
        if !FileStatus::of_stat(&fstat(&file)?).is_same_inode(&self.status) {
            return Err(io::Error::other("replaced since the walk found it"));
        }
        Ok(file)
    }

    /// [`WalkedFile::open`] without checking the inode: for callers that read what they need
    /// to check it with anyway.
    pub fn open_unverified(&self) -> io::Result<File> {
        let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK | OFlags::CLOEXEC;
        Ok(File::from(openat(
            self.directory,
            self.name,
            flags,
            Mode::empty(),
        )?))
    }
}

/// One open directory of a walk and the subdirectories of it still to enter.
struct Level {
    fd: OwnedFd,
    path: PathBuf,
    subdirectories: Vec<(CString, FileStatus)>,
}

/// Every regular file under `root` (or `root` itself if it is a file), in no particular order.
/// Symlinks on the way to `root` are followed only if root owns them (`/bin` → `usr/bin`); one
/// anyone else owns could point a walk that an administrator aimed at a user's directory at
/// `/usr/bin`. Nothing below `root` is followed. Problems are appended to `problems`; a
/// missing root is simply empty.
pub fn walk(root: &Path, problems: &mut Problems) -> Vec<WalkEntry> {
    let mut files = Vec::new();
    let root_file = walk_root(root, problems, |file, _| {
        files.push(WalkEntry {
            path: file.path,
            status: file.status,
        });
    });
    files.extend(root_file);
    files
}

/// [`walk`], giving each regular file below `root` to `visit` while its directory is open (see
/// [`walk_directory`]) instead of collecting them; `root` itself, if it is a regular file, is
/// returned.
pub fn walk_root(
    root: &Path,
    problems: &mut Problems,
    visit: impl FnMut(WalkedFile<'_>, &mut Problems),
) -> Option<WalkEntry> {
    match open_root(root, problems)? {
        Ok(directory) => walk_directory(directory, problems, visit),
        Err(root_file) => return Some(root_file),
    }
    None
}

/// The root of a walk: a directory to walk, or a regular file; nothing for anything else or
/// nothing there (a failure to look is added to `problems`).
fn open_root(root: &Path, problems: &mut Problems) -> Option<Result<OpenDirectory, WalkEntry>> {
    let opened = open_following_roots_symlinks(root).and_then(|fd| Ok((fstat(&fd)?, fd)));
    let (stat, fd) = match opened {
        Ok(opened) => opened,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return None,
        Err(error) => {
            problems.failed(root, error);
            return None;
        }
    };
    let status = FileStatus::of_stat(&stat);
    if status.is_file() {
        return Some(Err(WalkEntry {
            path: root.to_owned(),
            status,
        }));
    }
    if !status.is_dir() {
        return None;
    }
    let fd = reopen_directory(fd, root, &status, problems)?;
    Some(Ok(OpenDirectory {
        fd,
        path: root.to_owned(),
        status,
    }))
}

/// Gives every regular file below `root` to `visit` (with the problems, to add its own), while
/// the file's directory is open. Nothing below `root` is reached through a symlink or through
/// a path: each directory is opened relative to its parent's descriptor, and only if it is
/// still the directory the parent's listing showed.
pub fn walk_directory(
    root: OpenDirectory,
    problems: &mut Problems,
    mut visit: impl FnMut(WalkedFile<'_>, &mut Problems),
) {
    let visited = Mutex::new(HashSet::from([(root.status.dev, root.status.ino)]));
    let level = read_level(root.fd, root.path, problems, &mut visit);
    walk_levels(level, 1, &visited, problems, &mut visit);
}

/// What visits the files of a walk shared among threads ([`walk_root_parallel`]): one per
/// thread, each with its own findings.
pub trait Visitor: Send {
    fn visit(&mut self, file: WalkedFile<'_>, problems: &mut Problems);
}

/// [`walk_root`] with the subdirectories of `root` shared out among threads, one per visitor
/// in `visitors`: a tree of a million files is mostly system calls, which run in parallel.
/// Files directly in `root` go to the first visitor. A directory reached twice is walked once,
/// as in one thread.
pub fn walk_root_parallel<V: Visitor>(
    root: &Path,
    problems: &mut Problems,
    visitors: &mut [V],
) -> Option<WalkEntry> {
    let (first, _) = visitors.split_first_mut().expect("at least one visitor");
    let directory = match open_root(root, problems)? {
        Ok(directory) => directory,
        Err(root_file) => return Some(root_file),
    };
    let visited = Mutex::new(HashSet::from([(
        directory.status.dev,
        directory.status.ino,
    )]));
    let top = read_level(
        directory.fd,
        directory.path,
        problems,
        &mut |file, problems| first.visit(file, problems),
    );
    let next = AtomicUsize::new(0);
    let threads_problems: Vec<Problems> = std::thread::scope(|scope| {
        let threads: Vec<_> = visitors
            .iter_mut()
            .map(|visitor| {
                let (top, next, visited) = (&top, &next, &visited);
                scope.spawn(move || {
                    let mut problems = Problems::default();
                    let mut visit = |file: WalkedFile<'_>, problems: &mut Problems| {
                        visitor.visit(file, problems)
                    };
                    loop {
                        let index = next.fetch_add(1, Ordering::Relaxed);
                        let Some((name, expected)) = top.subdirectories.get(index) else {
                            break;
                        };
                        let entered =
                            enter(top, name, expected, 1, visited, &mut problems, &mut visit);
                        if let Some(level) = entered {
                            walk_levels(level, 2, visited, &mut problems, &mut visit);
                        }
                    }
                    problems
                })
            })
            .collect();
        threads
            .into_iter()
            .map(|thread| thread.join().expect("a walk thread panicked"))
            .collect()
    });
    for mut thread_problems in threads_problems {
        problems.append(&mut thread_problems);
    }
    None
}

/// Walks the tree below `level`, at `depth` below the walk's root, depth first.
fn walk_levels(
    level: Level,
    depth: usize,
    visited: &Mutex<HashSet<(u64, u64)>>,
    problems: &mut Problems,
    visit: &mut impl FnMut(WalkedFile<'_>, &mut Problems),
) {
    let mut stack = vec![level];
    loop {
        let level_depth = depth + stack.len() - 1;
        let Some(top) = stack.last_mut() else {
            break;
        };
        let Some((name, expected)) = top.subdirectories.pop() else {
            // Leaving the directory closes its descriptor.
            stack.pop();
            continue;
        };
        if let Some(level) = enter(top, &name, &expected, level_depth, visited, problems, visit) {
            stack.push(level);
        }
    }
}

/// Opens and reads the subdirectory `name` of `parent` (at `depth`), if it was not walked yet,
/// is not too deep, and is still the directory `expected` that the parent's listing showed.
fn enter(
    parent: &Level,
    name: &CStr,
    expected: &FileStatus,
    depth: usize,
    visited: &Mutex<HashSet<(u64, u64)>>,
    problems: &mut Problems,
    visit: &mut impl FnMut(WalkedFile<'_>, &mut Problems),
) -> Option<Level> {
    let path = parent.path.join(OsStr::from_bytes(name.to_bytes()));
    let first_visit = visited
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
        .insert((expected.dev, expected.ino));
    if !first_visit {
        return None;
    }
    if depth > MAX_DEPTH {
        problems.push(format!(
            "{}: deeper than {MAX_DEPTH} levels; not walked",
            escaped(&path)
        ));
        return None;
    }
    let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let child = match openat(&parent.fd, name, flags, Mode::empty()) {
        Ok(child) => child,
        Err(error) => {
            problems.failed(&path, error);
            return None;
        }
    };
    if !fstat(&child).is_ok_and(|stat| FileStatus::of_stat(&stat).is_same_inode(expected)) {
        problems.push(format!(
            "{}: replaced while being walked; skipped",
            escaped(&path)
        ));
        return None;
    }
    Some(read_level(child, path, problems, visit))
}

/// Symlinks one resolution follows at most, as the kernel's `MAXSYMLINKS`.
const MAX_SYMLINKS: usize = 40;

/// Opens `path` with `O_PATH`, one component at a time, following a symlink only if root owns
/// it: the owner is read from the link's own descriptor, and the target from that descriptor
/// too, so what is checked is what is followed.
fn open_following_roots_symlinks(path: &Path) -> io::Result<OwnedFd> {
    let flags = OFlags::PATH | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let start = if path.is_absolute() { c"/" } else { c"." };
    let mut current = openat(CWD, start, flags | OFlags::DIRECTORY, Mode::empty())?;
    let mut shown = PathBuf::from(OsStr::from_bytes(start.to_bytes()));
    let mut pending: Vec<std::ffi::OsString> = Vec::new();
    push_components(&mut pending, path);
    let mut followed = 0;
    while let Some(name) = pending.pop() {
        let next = openat(&current, name.as_os_str(), flags, Mode::empty())?;
        let stat = fstat(&next)?;
        if FileType::from_raw_mode(stat.st_mode) != FileType::Symlink {
            if name == ".." {
                shown.pop();
            } else {
                shown.push(&name);
            }
            current = next;
            continue;
        }
        let link = shown.join(&name);
        if stat.st_uid != 0 {
            return Err(io::Error::other(format!(
                "{} is a symlink owned by uid {}, not root; not followed",
                escaped(&link),
                stat.st_uid
            )));
        }
        followed += 1;
        if followed > MAX_SYMLINKS {
            return Err(Errno::LOOP.into());
        }
        let target = PathBuf::from(OsStr::from_bytes(
            readlinkat(&next, c"", Vec::new())?.as_bytes(),
        ));
        if target.is_absolute() {
            current = openat(CWD, c"/", flags | OFlags::DIRECTORY, Mode::empty())?;
            shown = PathBuf::from("/");
        }
        push_components(&mut pending, &target);
    }
    Ok(current)
}

/// Pushes the names of `path` onto a stack of names still to resolve, first on top.
fn push_components(pending: &mut Vec<std::ffi::OsString>, path: &Path) {
    for component in path.components().rev() {
        match component {
            Component::Normal(name) => pending.push(name.to_owned()),
            Component::ParentDir => pending.push("..".into()),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
}

/// Turns the `O_PATH` descriptor of the root into one that can be read, checking it is still the
/// same directory.
fn reopen_directory(
    fd: OwnedFd,
    root: &Path,
    status: &FileStatus,
    problems: &mut Problems,
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
            problems.failed(root, error);
            None
        }
    }
}

/// Reads one directory: regular files go to `visit`, subdirectories into the level.
fn read_level(
    fd: OwnedFd,
    path: PathBuf,
    problems: &mut Problems,
    visit: &mut impl FnMut(WalkedFile<'_>, &mut Problems),
) -> Level {
    let mut subdirectories = Vec::new();
    match Dir::read_from(&fd) {
        Ok(entries) => {
            for entry in entries {
                let entry = match entry {
                    Ok(entry) => entry,
                    Err(error) => {
                        problems.failed(&path, error);
                        break;
                    }
                };
                let name: &CStr = entry.file_name();
                if name == c"." || name == c".." {
                    continue;
                }
                // Only directories and regular files matter, and an inode keeps its type: what
                // the listing says is something else (a symlink, which is never followed, a
                // device, a socket) needs no `stat`. Filesystems that do not say are asked.
                if !matches!(
                    entry.file_type(),
                    FileType::Directory | FileType::RegularFile | FileType::Unknown
                ) {
                    continue;
                }
                let child_path = || path.join(OsStr::from_bytes(name.to_bytes()));
                // Not following symlinks: a symlink is neither walked into nor reported.
                match statat(&fd, name, AtFlags::SYMLINK_NOFOLLOW) {
                    Ok(stat) => {
                        let status = FileStatus::of_stat(&stat);
                        if status.is_dir() {
                            subdirectories.push((name.to_owned(), status));
                        } else if status.is_file() {
                            let file = WalkedFile {
                                directory: fd.as_fd(),
                                name,
                                path: child_path(),
                                status,
                            };
                            visit(file, problems);
                        }
                    }
                    Err(error) => problems.failed(&child_path(), error),
                }
            }
        }
        Err(error) => problems.failed(&path, error),
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
        let _socket = std::os::unix::net::UnixListener::bind(root.join("a/socket")).unwrap();

        let mut problems = Problems::default();
        let mut found: Vec<_> = walk(root, &mut problems)
            .into_iter()
            .map(|entry| entry.path.strip_prefix(root).unwrap().to_owned())
            .collect();
        found.sort();
        assert_eq!(
            found,
            [PathBuf::from("a/b/libz.so.1"), PathBuf::from("a/tool")]
        );
        assert!(problems.is_empty(), "{problems:?}");
    }

    /// Collects the paths it is given, below `root`.
    struct Collect<'a> {
        root: &'a Path,
        found: Vec<PathBuf>,
    }

    impl Visitor for Collect<'_> {
        fn visit(&mut self, file: WalkedFile<'_>, _: &mut Problems) {
            self.found
                .push(file.path.strip_prefix(self.root).unwrap().to_owned());
        }
    }

    #[test]
    fn threads_share_a_walk_and_each_file_is_visited_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        let mut expected = vec![PathBuf::from("top")];
        std::fs::write(root.join("top"), b"x").unwrap();
        for directory in 0..20 {
            let nested = PathBuf::from(format!("d{directory}/deeper"));
            std::fs::create_dir_all(root.join(&nested)).unwrap();
            for file in [format!("d{directory}/f"), format!("d{directory}/deeper/g")] {
                std::fs::write(root.join(&file), b"x").unwrap();
                expected.push(PathBuf::from(file));
            }
        }
        // A directory reached again through a symlink is not walked again.
        std::os::unix::fs::symlink(root.join("d1"), root.join("d2/link")).unwrap();
        expected.sort();

        let mut visitors: Vec<_> = (0..3)
            .map(|_| Collect {
                root,
                found: Vec::new(),
            })
            .collect();
        let mut problems = Problems::default();
        assert!(walk_root_parallel(root, &mut problems, &mut visitors).is_none());
        assert!(problems.is_empty(), "{problems:?}");
        let mut found: Vec<PathBuf> = visitors
            .iter_mut()
            .flat_map(|visitor| std::mem::take(&mut visitor.found))
            .collect();
        found.sort();
        assert_eq!(found, expected);

        // A root that is a file is returned, not visited.
        let file = root.join("top");
        let root_file = walk_root_parallel(&file, &mut problems, &mut visitors).unwrap();
        assert_eq!(root_file.path, file);
        assert!(visitors.iter().all(|visitor| visitor.found.is_empty()));
    }

    #[test]
    fn a_root_is_reached_through_roots_symlinks_only() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::fs::write(root.join("usr/bin/tool"), b"x").unwrap();
        std::fs::create_dir_all(root.join("home/alice")).unwrap();
        // Root's: `/bin` → `usr/bin`, and one through `..`.
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        std::os::unix::fs::symlink("../../bin", root.join("home/alice/roots")).unwrap();
        // Alice's, in her home.
        let alices = root.join("home/alice/apps");
        std::os::unix::fs::symlink(root.join("usr/bin"), &alices).unwrap();
        std::os::unix::fs::lchown(&alices, Some(1000), Some(1000)).unwrap();

        for through_roots in [root.join("bin"), root.join("home/alice/roots")] {
            let mut problems = Problems::default();
            let found = walk(&through_roots, &mut problems);
            assert_eq!(found.len(), 1, "{through_roots:?}: {problems:?}");
            assert_eq!(found[0].path, through_roots.join("tool"));
        }
        for through_alices in [alices.clone(), alices.join("tool")] {
            let mut problems = Problems::default();
            assert!(walk(&through_alices, &mut problems).is_empty());
            assert_eq!(problems.warnings.len(), 1, "{problems:?}");
            let expected = format!(
                "{} is a symlink owned by uid 1000, not root; not followed",
                alices.display()
            );
            assert!(problems.warnings[0].contains(&expected), "{problems:?}");
        }
    }

    #[test]
    fn a_missing_root_is_empty_and_a_file_root_is_itself() {
        let dir = tempfile::tempdir().unwrap();
        let mut problems = Problems::default();
        assert!(walk(&dir.path().join("missing"), &mut problems).is_empty());
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        assert_eq!(walk(&file, &mut problems)[0].path, file);
        assert!(problems.is_empty());
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
        let mut problems = Problems::default();
        let found = walk(dir.path(), &mut problems);
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
        let mut problems = Problems::default();
        let found = walk(dir.path(), &mut problems);
        assert!(found.is_empty());
        assert_eq!(problems.warnings.len(), 1, "{problems:?}");
        assert!(
            problems.warnings[0].contains("deeper than 256 levels"),
            "{problems:?}"
        );
    }

    #[test]
    fn opening_beneath_follows_no_symlink_and_tells_what_stopped_it() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("a/b/c")).unwrap();
        std::fs::create_dir_all(root.join("elsewhere/c")).unwrap();
        std::os::unix::fs::symlink(root.join("elsewhere"), root.join("a/link")).unwrap();
        std::fs::write(root.join("a/file"), b"x").unwrap();
        let base = OpenDirectory::open(root).unwrap().unwrap();

        let opened = base.open_beneath(Path::new("a/b/c")).unwrap();
        assert_eq!(opened.path, root.join("a/b/c"));
        let metadata = std::fs::metadata(root.join("a/b/c")).unwrap();
        assert!(opened.status.is_same_inode(&FileStatus::of(&metadata)));
        assert!(matches!(
            base.open_beneath(Path::new("a/link/c")),
            Err(NotOpened::Symlink(link)) if link == root.join("a/link")
        ));
        for absent in ["a/missing/c", "a/file/c", "a/file"] {
            assert!(
                matches!(base.open_beneath(Path::new(absent)), Err(NotOpened::Absent)),
                "{absent}"
            );
        }
        assert!(matches!(
            base.open_beneath(Path::new("a/../elsewhere")),
            Err(NotOpened::Failed(_))
        ));
    }

    #[test]
    fn a_walked_file_opens_only_as_the_file_the_walk_saw() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("tool"), b"x").unwrap();
        std::fs::write(dir.path().join("other"), b"y").unwrap();
        let root = OpenDirectory::open(dir.path()).unwrap().unwrap();
        let mut opened = Vec::new();
        walk_directory(root, &mut Problems::default(), |file, _| {
            if file.name == c"tool" {
                opened.push(file.open().is_ok());
                std::fs::rename(dir.path().join("other"), &file.path).unwrap();
                opened.push(file.open().is_ok());
            }
        });
        assert_eq!(opened, [true, false]);
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
