//! Files named by distribution packages, Flatpak apps and snaps: the names an administrator
//! knows an application by, turned into the executable files it installed.

pub(crate) mod dpkg;
mod flatpak;
mod packages;
mod rpm;
mod snap;
mod trusted_packages;

use std::{
    collections::BTreeMap,
    path::{Component, Path, PathBuf},
};

pub use flatpak::{allowed_flatpak_files, flatpak_files, validate_flatpak_id};
pub use packages::{package_files, validate_package_name};
pub use snap::{allowed_snap_files, snap_files, validate_snap_name};
pub use trusted_packages::{package_manager, trusted_package_files};

use crate::{
    escape::escaped,
    files::{is_executable_candidate, walk_directory, FileStatus, OpenDirectory},
    identity::FileIdentity,
    lookup::Problems,
};

/// Where to look; tests point it at temporary trees.
#[derive(Clone, Debug)]
pub struct SourceRoots {
    /// Prefix for every absolute path below ("/" on a real system).
    pub root: PathBuf,
    /// dpkg's database, relative to `root` ("var/lib/dpkg").
    pub dpkg_admin_dir: PathBuf,
}

impl Default for SourceRoots {
    fn default() -> Self {
        Self {
            root: PathBuf::from("/"),
            dpkg_admin_dir: PathBuf::from("var/lib/dpkg"),
        }
    }
}

impl SourceRoots {
    /// `path`, absolute on the inspected system, as a path under `root`. `None` when it climbs
    /// with `..`: package databases are trusted, but a path out of a test root must not be.
    pub(crate) fn system_path(&self, path: &Path) -> Option<PathBuf> {
        let mut joined = self.root.clone();
        for component in path.components() {
            match component {
                Component::Normal(name) => joined.push(name),
                Component::RootDir | Component::CurDir => {}
                Component::ParentDir | Component::Prefix(_) => return None,
            }
        }
        Some(joined)
    }
}

/// Files found for one identifier, and the problems met finding them.
#[derive(Debug, Default)]
pub struct SourceFiles {
    pub files: Vec<PathBuf>,
    /// The (device, inode) each file had when it was found: whoever opens it later checks it
    /// still finds that file, not one swapped in since.
    pub seen: BTreeMap<PathBuf, (u64, u64)>,
    /// Files identified through their directory's descriptor as the walk met them, without
    /// following a symlink: nobody resolves their paths again.
    pub identified: BTreeMap<PathBuf, FileIdentity>,
    pub problems: Problems,
}

impl SourceFiles {
    pub fn add(&mut self, path: PathBuf, status: &FileStatus) {
        self.seen.insert(path.clone(), (status.dev, status.ino));
        self.files.push(path);
    }

    /// Adds the executable candidates below `path`, a directory only root can change (it is
    /// followed if it is a symlink). Whether there was a directory to walk.
    fn add_walked_path(&mut self, path: &Path) -> bool {
        match OpenDirectory::open(path) {
            Ok(Some(directory)) => {
                self.add_walked(directory, None);
                true
            }
            Ok(None) => false,
            Err(error) => {
                self.problems.failed(path, error);
                false
            }
        }
    }

    /// Adds the executable candidates below `directory`, identified as the walk meets them.
    /// With an `owner`, a file owned by anyone else is left out with a warning: in a tree that
    /// user owns, such a file is a hard link to another's file (where the kernel allows those).
    fn add_walked(&mut self, directory: OpenDirectory, owner: Option<u32>) {
        let (files, identified) = (&mut self.files, &mut self.identified);
        walk_directory(directory, &mut self.problems, |file, problems| {
            if !is_executable_candidate(&file.path, &file.status) {
                return;
            }
            if let Some(owner) = owner.filter(|&owner| owner != file.status.uid) {
                problems.push(format!(
                    "{}: owned by uid {}, not by uid {owner} who owns the tree; not banned",
                    escaped(&file.path),
                    file.status.uid
                ));
                return;
            }
            match file
                .open()
                .and_then(|opened| FileIdentity::of_file(&opened))
            {
                Ok(identity) => {
                    identified.insert(file.path.clone(), identity);
                    files.push(file.path);
                }
                Err(error) => problems.failed(&file.path, error),
            }
        });
    }

    /// What to return when no file was found: the files' absence as `message`, then the
    /// warnings, which may explain it; or, when a lookup decided nothing, the empty result
    /// with its undecided lookups, so that no ban is dropped for it.
    fn nothing_found(self, mut message: String) -> Result<Self, String> {
        if !self.problems.undecided.is_empty() {
            return Ok(self);
        }
        for warning in self.problems.warnings {
            message.push_str("; ");
            message.push_str(&warning);
        }
        Err(message)
    }

    /// Sorted and without duplicates, so results compare and print predictably.
    fn finish(mut self) -> Self {
        self.files.sort();
        self.files.dedup();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_paths_stay_under_the_root() {
        let roots = SourceRoots {
            root: PathBuf::from("/tmp/root"),
            ..SourceRoots::default()
        };
        assert_eq!(
            roots.system_path(Path::new("/usr/bin/tool")),
            Some(PathBuf::from("/tmp/root/usr/bin/tool"))
        );
        assert_eq!(
            roots.system_path(Path::new("/.")),
            Some(PathBuf::from("/tmp/root"))
        );
        assert_eq!(roots.system_path(Path::new("/usr/../../etc/passwd")), None);
    }
}
