//! The userspace mirror of the kernel's trusted-path check (`blocker-ebpf/src/trusted_path.rs`),
//! for `blocker explain`: the first inode on the way from a file up to `/` that is owned by
//! someone other than root or writable by group or others.
//!
//! It walks the resolved path's names, so it sees the root of each mount where the kernel also
//! checks the directory the mount covers: a covered directory that would make a path untrusted
//! is seen by the kernel only. The two agree on everything a user can reach by name.

use std::{
    io,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use blocker_common::trusted_path::{trusted, MAX_DEPTH};

use crate::{escape::escaped, events::permission_bits};

/// What makes a path untrusted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Untrusted {
    /// This inode, `levels_above` the file (0: the file itself).
    Inode {
        path: PathBuf,
        levels_above: u32,
        owner: u32,
        mode: u32,
    },
    /// The path is deeper than the kernel walks.
    TooDeep,
}

impl std::fmt::Display for Untrusted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Untrusted::Inode {
                path, owner, mode, ..
            } => {
                let problem = match (*owner, mode & 0o022) {
                    (0, _) => "is writable by group or others",
                    (_, 0) => "is not owned by root",
                    _ => "is not owned by root and is writable by group or others",
                };
                write!(
                    f,
                    "{} {problem} (owner uid {owner}, mode {})",
                    escaped(path),
                    permission_bits(*mode)
                )
            }
            Untrusted::TooDeep => write!(
                f,
                "it is more than {MAX_DEPTH} directories deep, deeper than the kernel checks"
            ),
        }
    }
}

/// What makes the path of `file` untrusted, if anything; symlinks are resolved first, as exec
/// does.
pub fn untrusted(file: &Path) -> io::Result<Option<Untrusted>> {
    let resolved = std::fs::canonicalize(file)?;
    for (levels_above, inode) in resolved.ancestors().enumerate() {
        let levels_above = u32::try_from(levels_above).unwrap_or(u32::MAX);
        if levels_above >= MAX_DEPTH {
            return Ok(Some(Untrusted::TooDeep));
        }
        let metadata = std::fs::symlink_metadata(inode)?;
        if !trusted(metadata.uid(), metadata.mode()) {
            return Ok(Some(Untrusted::Inode {
                path: inode.to_owned(),
                levels_above,
                owner: metadata.uid(),
                mode: metadata.mode(),
            }));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn system_programs_are_on_trusted_paths() {
        assert_eq!(untrusted(Path::new("/bin/sh")).unwrap(), None);
    }

    #[test]
    fn a_shared_writable_or_user_owned_directory_makes_a_path_untrusted() {
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("program");
        std::fs::write(&program, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let Some(Untrusted::Inode {
            path,
            levels_above,
            mode,
            ..
        }) = untrusted(&program).unwrap()
        else {
            panic!("a world-writable directory is untrusted");
        };
        // The program (root's, 0755) passes; its directory does not.
        assert_eq!((path.as_path(), levels_above), (dir.path(), 1));
        assert_eq!(mode & 0o777, 0o777);

        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::os::unix::fs::chown(&program, Some(1000), None).unwrap();
        let found = untrusted(&program).unwrap().unwrap();
        assert!(
            matches!(
                found,
                Untrusted::Inode {
                    owner: 1000,
                    levels_above: 0,
                    ..
                }
            ),
            "{found:?}"
        );
        assert!(found
            .to_string()
            .contains("is not owned by root (owner uid 1000, mode 0755)"));
    }
}
