//! The packages trust source of lockdown: every executable candidate an installed dpkg package
//! put on the system, as dpkg left it.
//!
//! dpkg writes a package's file list after its files are in place, so a file whose inode
//! changed later (its ctime is after the list's mtime: written, truncated, chmod'ed, given
//! capabilities, renamed over) is no longer known to be what the package installed. Such a
//! file is trusted only if its content still has the MD5 sum the package's `md5sums` records
//! (for a conffile, which dpkg installs after writing the list: dpkg's status); otherwise, or
//! where the package records none, it is left out with a warning.
//! Files nobody touched since their package was installed are trusted by identity without
//! being read: a user cannot set a ctime back, so reading every packaged program at every
//! refresh would buy nothing.

use std::{
    collections::HashMap,
    fs::{self, File, OpenOptions},
    io::{self, Read},
    os::unix::{
        ffi::OsStrExt,
        fs::{MetadataExt, OpenOptionsExt},
    },
    path::Path,
};

use blocker_common::FileKey;
use md5::{Digest, Md5};

use super::{
    dpkg::{self, InstalledPackage},
    SourceFiles, SourceRoots,
};
use crate::{
    escape::escaped,
    files::{is_executable_candidate, FileStatus},
    identity::FileIdentity,
};

/// The package manager whose renames and unlinks the kernel follows under lockdown (see
/// `entry_flags::PACKAGE_MANAGER`): dpkg itself moves every package file into place.
const PACKAGE_MANAGER: &str = "/usr/bin/dpkg";

/// The identity of [`PACKAGE_MANAGER`] on the inspected system, if it is there.
pub fn package_manager(roots: &SourceRoots) -> Option<FileKey> {
    let path = roots.system_path(Path::new(PACKAGE_MANAGER))?;
    FileIdentity::of_path(&path)
        .ok()
        .map(|identity| identity.key)
}

/// The files the installed packages vouch for. Problems are warnings: a file left out is
/// refused under lockdown, which is the safe side.
pub fn trusted_package_files(roots: &SourceRoots, hash_limit_bytes: u64) -> SourceFiles {
    let mut found = SourceFiles::default();
    match dpkg::installed_packages(roots, &mut found.problems.warnings) {
        Ok(Some(packages)) => {
            for package in &packages {
                add_package(&mut found, package, roots, hash_limit_bytes);
            }
        }
        Ok(None) => {}
        Err(reason) => found.problems.push(format!(
            "dpkg's database could not be read, so no package is trusted: {reason}"
        )),
    }
    found.finish()
}

fn add_package(
    found: &mut SourceFiles,
    package: &InstalledPackage,
    roots: &SourceRoots,
    hash_limit_bytes: u64,
) {
    let installed_at = match fs::metadata(&package.list_file) {
        Ok(metadata) => FileStatus::of(&metadata).mtime_ns,
        Err(error) => {
            found.problems.failed(&package.list_file, error);
            return;
        }
    };
    let mut md5sums: Option<HashMap<Vec<u8>, Vec<u8>>> = None;
    for (listed, on_disk) in &package.paths {
        let Some(path) = roots.system_path(on_disk) else {
            continue;
        };
        let Ok(metadata) = fs::symlink_metadata(&path) else {
            continue;
        };
        let status = FileStatus::of(&metadata);
        if !is_executable_candidate(&path, &status) {
            continue;
        }
        // Not following a symlink swapped in since; not waiting on a FIFO.
        let opened = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC)
            .open(&path);
        let opened = match opened {
            Ok(opened) => opened,
            Err(error) => {
                found.problems.failed(&path, error);
                continue;
            }
        };
        let identity = match FileIdentity::of_file(&opened) {
            Ok(identity) => identity,
            Err(error) => {
                found.problems.failed(&path, error);
                continue;
            }
        };
        let opened_status = match opened.metadata() {
            Ok(metadata) => FileStatus::of(&metadata),
            Err(error) => {
                found.problems.failed(&path, error);
                continue;
            }
        };
        if opened_status.ctime_ns > installed_at {
            let md5sums = md5sums.get_or_insert_with(|| {
                dpkg::parse_md5sums(&fs::read(&package.md5sums_file).unwrap_or_default())
            });
            let recorded = md5sums
                .get(
                    listed
                        .as_os_str()
                        .as_bytes()
                        .strip_prefix(b"/")
                        .unwrap_or_default(),
                )
                .map(Vec::as_slice)
                .or_else(|| Some(package.conffiles.get(listed.to_str()?)?.as_bytes()));
            if let Err(problem) = verify(opened, recorded, hash_limit_bytes) {
                found.problems.push(format!(
                    "{}: changed since package `{}` installed it and {problem}; not trusted",
                    escaped(&path),
                    package.name
                ));
                continue;
            }
        }
        found.identified.insert(path.clone(), identity);
        found.files.push(path);
    }
}

/// Whether `file` has the MD5 sum `recorded` (lower-case hex), read up to `limit_bytes`.
fn verify(file: File, recorded: Option<&[u8]>, limit_bytes: u64) -> Result<(), String> {
    let Some(recorded) = recorded else {
        return Err("dpkg records no checksum for it".to_owned());
    };
    let size = file.metadata().map_err(|error| error.to_string())?.size();
    if size > limit_bytes {
        return Err(format!(
            "it is larger than the hash limit ({size} bytes), so it was not checked"
        ));
    }
    let digest = md5_of(file.take(limit_bytes)).map_err(|error| error.to_string())?;
    if digest.as_bytes() == recorded {
        Ok(())
    } else {
        Err("its content differs from dpkg's checksum".to_owned())
    }
}

fn md5_of(mut reader: impl Read) -> io::Result<String> {
    let mut hasher = Md5::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let read = reader.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect())
}
