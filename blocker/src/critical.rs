//! Files no policy may ban, because the machine could not be run, managed or recovered without
//! them, and the resolved form of the paths policies write, so that `/usr/..` or
//! `/proc/self/root` cannot stand in for `/`.
//!
//! Two kinds: what blocker itself runs on (its binary, the loader and libraries it has mapped,
//! which most programs share, and init), which nothing can ban; and the system's critical
//! programs (the idea of Santa's critical system binaries and Debian's Essential packages: init
//! and systemd, the login shells of `/etc/shells`, login, sshd, sudo and su, dpkg and apt, the
//! dynamic loader), which a rule may ban only by naming each one in its `ban_critical_files`.

use std::{
    collections::HashMap,
    ffi::OsStr,
    io,
    os::unix::{ffi::OsStrExt, fs::MetadataExt},
    path::{Component, Path, PathBuf},
    sync::Mutex,
};

use blocker_common::FileKey;

use crate::{
    identity::{self, FileIdentity},
    scan::Sha256,
};

/// Programs without which an administrator cannot log in, raise privileges, repair packages or
/// boot: banned, the machine cannot be managed or recovered. Missing ones are skipped.
const SYSTEM_PROGRAMS: &[(&str, &str)] = &[
    ("/sbin/init", "it is init"),
    ("/lib/systemd/systemd", "it is systemd, the service manager"),
    (
        "/usr/lib/systemd/systemd",
        "it is systemd, the service manager",
    ),
    ("/bin/systemctl", "it controls the service manager"),
    ("/usr/bin/systemctl", "it controls the service manager"),
    ("/sbin/sulogin", "it is the rescue-mode login"),
    ("/usr/sbin/sulogin", "it is the rescue-mode login"),
    ("/sbin/agetty", "it runs the console logins"),
    ("/usr/sbin/agetty", "it runs the console logins"),
    ("/bin/login", "it logs users in"),
    ("/usr/bin/login", "it logs users in"),
    (
        "/usr/sbin/sshd",
        "it is the SSH server remote administration needs",
    ),
    ("/usr/bin/sudo", "it raises privileges for administration"),
    ("/bin/su", "it raises privileges for administration"),
    ("/usr/bin/su", "it raises privileges for administration"),
    ("/usr/bin/dpkg", "it installs and repairs packages"),
    ("/usr/bin/apt", "it installs and repairs packages"),
    ("/usr/bin/apt-get", "it installs and repairs packages"),
    ("/lib64/ld-linux-x86-64.so.2", "it is the dynamic loader"),
    ("/lib/ld-linux-aarch64.so.1", "it is the dynamic loader"),
    ("/lib/ld-linux.so.2", "it is the dynamic loader"),
    (
        "/bin/sh",
        "it is the POSIX shell the system and its scripts run",
    ),
];

const SHELLS_FILE: &str = "/etc/shells";
const LOGIN_SHELL: &str = "it is a login shell (listed in /etc/shells)";
const BLOCKER_BINARY: &str = "it is the blocker binary";
const INIT: &str = "it is init (pid 1)";
const MAPPED: &str = "blocker and most programs load it";

/// One file no policy may ban.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CriticalFile {
    /// As listed (`/bin/sh`), for messages.
    pub path: PathBuf,
    /// Symlinks resolved (`/usr/bin/dash`).
    pub resolved: PathBuf,
    pub key: FileKey,
    pub why: &'static str,
    /// Whether a rule's `ban_critical_files` may name it; never for what blocker runs on.
    pub overridable: bool,
}

/// The critical files of this machine, now: what blocker runs on first, then the system's
/// programs; each file once.
pub fn critical_files() -> Vec<CriticalFile> {
    let mut listed: Vec<(PathBuf, &'static str, bool)> = vec![
        (PathBuf::from("/proc/self/exe"), BLOCKER_BINARY, false),
        (PathBuf::from("/proc/1/exe"), INIT, false),
    ];
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    listed.extend(
        mapped_files(&maps)
            .into_iter()
            .map(|path| (PathBuf::from(path), MAPPED, false)),
    );
    listed.extend(
        SYSTEM_PROGRAMS
            .iter()
            .map(|&(path, why)| (PathBuf::from(path), why, true)),
    );
    let shells = std::fs::read_to_string(SHELLS_FILE).unwrap_or_default();
    listed.extend(
        login_shells(&shells)
            .into_iter()
            .map(|path| (PathBuf::from(path), LOGIN_SHELL, true)),
    );
    existing(listed)
}

/// The listed files that exist, each file (by identity) once, with its first reason.
fn existing(listed: Vec<(PathBuf, &'static str, bool)>) -> Vec<CriticalFile> {
    let mut resolver = PathResolver::default();
    let mut files: Vec<CriticalFile> = Vec::new();
    for (path, why, overridable) in listed {
        let Ok(identity) = FileIdentity::of_path(&path) else {
            continue;
        };
        if files.iter().any(|file| file.key == identity.key) {
            continue;
        }
        let resolved = match std::fs::canonicalize(&path) {
            Ok(resolved) => resolved,
            Err(_) => resolver.resolve(&path),
        };
        files.push(CriticalFile {
            path,
            resolved,
            key: identity.key,
            why,
            overridable,
        });
    }
    files
}

/// Absolute paths in the text of `/etc/shells`, comments and blank lines left out.
fn login_shells(text: &str) -> Vec<&str> {
    text.lines()
        .map(str::trim)
        .filter(|line| line.starts_with('/'))
        .collect()
}

/// File paths in the text of `/proc/PID/maps` (the sixth column, when it is absolute).
pub fn mapped_files(maps: &str) -> Vec<&str> {
    let mut paths: Vec<&str> = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .filter(|path| path.starts_with('/'))
        .collect();
    paths.sort_unstable();
    paths.dedup();
    paths
}

/// The contents of `files`, each with the position of its file; hashed once per file version
/// and process, since most are the same files at every refresh.
pub fn contents(files: &[CriticalFile]) -> HashMap<Sha256, usize> {
    type Stamp = (FileKey, u64, i64, i64);
    static HASHED: Mutex<Option<HashMap<Stamp, Sha256>>> = Mutex::new(None);
    let mut hashed = HASHED
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let hashed = hashed.get_or_insert_with(HashMap::new);
    let mut contents = HashMap::new();
    for (position, file) in files.iter().enumerate() {
        let Ok(metadata) = std::fs::metadata(&file.path) else {
            continue;
        };
        let stamp = (
            file.key,
            metadata.size(),
            metadata.mtime(),
            metadata.ctime(),
        );
        let sha256 = match hashed.get(&stamp) {
            Some(sha256) => *sha256,
            None => match crate::scan::hash_file(&file.path) {
                Ok(read) => *hashed.entry(stamp).or_insert(read.sha256),
                Err(_) => continue,
            },
        };
        contents.entry(sha256).or_insert(position);
    }
    contents
}

/// The identity a path's target has now (symlinks followed), if it exists.
pub fn key_of(path: &Path) -> Option<FileKey> {
    identity::key_of_path(path).ok()
}

/// What checking a policy asks about the critical files: which ones a path, a directory, a glob
/// or a content names.
pub struct Guard {
    files: Vec<CriticalFile>,
    resolver: PathResolver,
    /// Hashed when first asked for.
    contents: Option<HashMap<Sha256, usize>>,
}

impl Guard {
    pub fn of_this_machine() -> Self {
        Self::new(critical_files())
    }

    pub fn new(files: Vec<CriticalFile>) -> Self {
        Self {
            files,
            resolver: PathResolver::default(),
            contents: None,
        }
    }

    /// A guard for another thread: the same files and contents, resolved paths of its own.
    pub fn fork(&self) -> Self {
        Self {
            files: self.files.clone(),
            resolver: PathResolver::default(),
            contents: self.contents.clone(),
        }
    }

    pub fn resolve(&mut self, path: &Path) -> PathBuf {
        self.resolver.resolve(path)
    }

    /// The critical file `path` reaches now, symlinks followed, if any.
    pub fn named_by_path(&self, path: &Path) -> Option<&CriticalFile> {
        let key = key_of(path)?;
        self.files.iter().find(|file| file.key == key)
    }

    /// The critical files below the directory `written` (its resolved form is `resolved`), each
    /// with the path it has there: what a walk of `written` finds it as.
    pub fn below<'a>(
        &'a self,
        written: &'a Path,
        resolved: &'a Path,
    ) -> impl Iterator<Item = (&'a CriticalFile, PathBuf)> + 'a {
        let directory = resolved.as_os_str().as_bytes();
        self.files.iter().filter_map(move |file| {
            let path = file.resolved.as_os_str().as_bytes();
            // A cheap byte comparison first: most directories hold no critical file.
            let below = path.starts_with(directory)
                && (directory.ends_with(b"/") || path.get(directory.len()) == Some(&b'/'));
            if !below {
                return None;
            }
            let relative = file.resolved.strip_prefix(resolved).ok()?;
            Some((file, written.join(relative)))
        })
    }

    /// The critical file with this content, if any.
    pub fn with_content(&mut self, sha256: &Sha256) -> Option<&CriticalFile> {
        let files = &self.files;
        let contents = self.contents.get_or_insert_with(|| contents(files));
        contents.get(sha256).map(|&position| &self.files[position])
    }
}

/// Resolves absolute paths the way the kernel would (symlinks followed, `..` taken after them),
/// as far as they exist; the rest is taken as written, `..` removing a component. Directories
/// are remembered, so resolving many paths below the same directories costs one `readlink`
/// per new component; below a missing component nothing is asked nor remembered, so the many
/// paths a generated policy names under one missing directory cost nothing each.
#[derive(Default)]
pub struct PathResolver {
    resolved: HashMap<PathBuf, Resolved>,
}

/// A path resolved as far as it exists.
#[derive(Clone)]
struct Resolved {
    path: PathBuf,
    /// Whether a component was found missing (or not a directory): then nothing below exists
    /// and the rest of the path is taken as written.
    missing: bool,
}

/// As the kernel's `MAXSYMLINKS`: more links in one resolution is a loop.
const MAX_SYMLINKS: usize = 40;

impl PathResolver {
    pub fn resolve(&mut self, path: &Path) -> PathBuf {
        self.resolve_following(path, 0).path
    }

    fn resolve_following(&mut self, path: &Path, links_followed: usize) -> Resolved {
        let mut current = Resolved {
            path: PathBuf::from("/"),
            missing: false,
        };
        for component in path.components() {
            match component {
                Component::RootDir | Component::Prefix(_) => {
                    current = Resolved {
                        path: PathBuf::from("/"),
                        missing: false,
                    }
                }
                Component::CurDir => {}
                Component::ParentDir => {
                    current.path.pop();
                    // The parent may exist: ask again from there.
                    current.missing = false;
                }
                Component::Normal(name) if current.missing => current.path.push(name),
                Component::Normal(name) => current = self.step(&current.path, name, links_followed),
            }
        }
        current
    }

    /// `directory/name`, resolved; `directory` is resolved already and exists.
    fn step(&mut self, directory: &Path, name: &OsStr, links_followed: usize) -> Resolved {
        let next = directory.join(name);
        if let Some(resolved) = self.resolved.get(&next) {
            return resolved.clone();
        }
        let resolved = match std::fs::read_link(&next) {
            Ok(target) if links_followed < MAX_SYMLINKS => {
                self.resolve_following(&directory.join(target), links_followed + 1)
            }
            Err(error)
                if matches!(
                    error.kind(),
                    io::ErrorKind::NotFound | io::ErrorKind::NotADirectory
                ) =>
            {
                Resolved {
                    path: next.clone(),
                    missing: true,
                }
            }
            // Not a symlink, or a loop: as written.
            _ => Resolved {
                path: next.clone(),
                missing: false,
            },
        };
        self.resolved.insert(next, resolved.clone());
        resolved
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_resolve_like_the_kernel_resolves_them() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        std::fs::create_dir_all(root.join("usr/bin")).unwrap();
        std::os::unix::fs::symlink("usr/bin", root.join("bin")).unwrap();
        std::os::unix::fs::symlink("/", root.join("to-root")).unwrap();
        std::os::unix::fs::symlink("loop", root.join("loop")).unwrap();
        let mut resolver = PathResolver::default();
        let mut resolve = |path: &str| resolver.resolve(&root.join(path));
        assert_eq!(resolve("bin/.."), root.join("usr"), "`..` after the link");
        assert_eq!(resolve("bin/sh"), root.join("usr/bin/sh"));
        assert_eq!(resolve("usr/.."), root);
        assert_eq!(resolve("to-root"), PathBuf::from("/"));
        assert_eq!(resolve("to-root/usr/.."), PathBuf::from("/"));
        assert_eq!(resolve("missing/../usr/./bin"), root.join("usr/bin"));
        assert_eq!(resolve("loop"), root.join("loop"), "loops end");
        assert_eq!(
            resolve("missing/deeper/../../bin/sh"),
            root.join("usr/bin/sh"),
            "`..` out of a missing directory resolves again"
        );
        std::fs::write(root.join("file"), b"").unwrap();
        assert_eq!(resolve("file/x/y/.."), root.join("file/x"));
        assert_eq!(
            PathResolver::default().resolve(Path::new("//.")),
            Path::new("/")
        );
        assert_eq!(
            PathResolver::default().resolve(Path::new("/proc/self/root")),
            Path::new("/")
        );
        assert_eq!(
            PathResolver::default().resolve(Path::new("/proc/self/root/usr/..")),
            Path::new("/")
        );
    }

    #[test]
    fn nothing_below_a_missing_directory_is_asked_or_remembered() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().canonicalize().unwrap();
        let mut resolver = PathResolver::default();
        let remembered_before = {
            resolver.resolve(&root.join("missing"));
            resolver.resolved.len()
        };
        for n in 0..100 {
            let path = root.join(format!("missing/{n}/bin"));
            assert_eq!(resolver.resolve(&path), path);
        }
        assert_eq!(resolver.resolved.len(), remembered_before);
        std::fs::create_dir(root.join("missing")).unwrap();
        std::os::unix::fs::symlink(&root, root.join("missing/up")).unwrap();
        assert_eq!(
            PathResolver::default().resolve(&root.join("missing/up/missing")),
            root.join("missing"),
            "a fresh resolver sees what exists now"
        );
    }

    #[test]
    fn the_machine_and_blocker_are_critical() {
        let files = critical_files();
        let own = key_of(Path::new("/proc/self/exe")).unwrap();
        let blocker = files.iter().find(|file| file.key == own).unwrap();
        assert!(!blocker.overridable);
        let shell = key_of(Path::new("/bin/sh")).unwrap();
        assert!(files.iter().any(|file| file.key == shell));
        let mut keys: Vec<_> = files.iter().map(|file| file.key).collect();
        keys.sort_unstable();
        keys.dedup();
        assert_eq!(keys.len(), files.len(), "each file once");
    }

    #[test]
    fn login_shells_are_read_from_etc_shells() {
        let text = "# /etc/shells: valid login shells\n/bin/sh\n\n  /usr/bin/zsh \nnot-a-path\n";
        assert_eq!(login_shells(text), ["/bin/sh", "/usr/bin/zsh"]);
    }

    #[test]
    fn mapped_files_are_read_from_proc_maps_text() {
        let maps = "\
55d0c0000000-55d0c0001000 r--p 00000000 fe:00 123 /usr/bin/blocker
7f0000000000-7f0000001000 r-xp 00001000 fe:00 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7f0000002000-7f0000003000 r--p 00000000 fe:00 456 /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd00000000-7ffd00021000 rw-p 00000000 00:00 0 [stack]
7f0000004000-7f0000005000 rw-p 00000000 00:00 0
";
        assert_eq!(
            mapped_files(maps),
            ["/usr/bin/blocker", "/usr/lib/x86_64-linux-gnu/libc.so.6"]
        );
    }

    #[test]
    fn contents_are_hashed_once_per_version() {
        let files = critical_files();
        let first = contents(&files);
        let own = crate::scan::hash_file(Path::new("/proc/self/exe")).unwrap();
        assert!(first.contains_key(&own.sha256));
        assert_eq!(contents(&files), first);
    }
}
