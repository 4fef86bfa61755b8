//! Writing a policy directory. Where the writer's view of it is read-only (the daemon's
//! sandbox: systemd's `ProtectSystem=strict`), it writes through a private writable view
//! instead: a clone of the directory's mount, attached nowhere, with its read-only flag cleared
//! (`open_tree`, `mount_setattr`). Nothing else sees that view, it goes away with its
//! descriptor, and no mount is made over the directory or any directory on the way to it
//! (which tamper protection refuses, and which a sandbox would need to be made writable).

use std::{
    fs::File,
    io::Write,
    os::fd::{AsRawFd, OwnedFd},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use rustix::fs::{AtFlags, Mode, OFlags, StatVfsMountFlags};

/// A directory open for changes.
pub struct WritableDir {
    directory: OwnedFd,
    path: PathBuf,
}

impl WritableDir {
    pub fn open(path: &Path) -> Result<Self> {
        let opening = || format!("opening {} for changes", path.display());
        let directory = rustix::fs::open(
            path,
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .with_context(opening)?;
        let read_only = rustix::fs::fstatvfs(&directory)
            .with_context(opening)?
            .f_flag
            .contains(StatVfsMountFlags::RDONLY);
        let directory = if read_only {
            writable_view(path).with_context(|| {
                format!(
                    "{} is read-only here, and a writable view of it could not be had",
                    path.display()
                )
            })?
        } else {
            directory
        };
        Ok(Self {
            directory,
            path: path.to_owned(),
        })
    }

    /// Writes `name` through a hidden temporary file renamed over it, so a daemon reloading at
    /// any moment reads the old file or the new one, never half of one.
    pub fn write_atomically(&self, name: &str, contents: &str) -> Result<()> {
        let temporary = format!(".{name}.{}.tmp", std::process::id());
        let result = (|| -> std::io::Result<()> {
            let file = rustix::fs::openat(
                &self.directory,
                temporary.as_str(),
                OFlags::WRONLY | OFlags::CREATE | OFlags::TRUNC | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o644),
            )?;
            // Whatever the umask: policies are readable by everyone, as the package ships them.
            rustix::fs::fchmod(&file, Mode::from_raw_mode(0o644))?;
            let mut file = File::from(file);
            file.write_all(contents.as_bytes())?;
            file.sync_all()?;
            rustix::fs::renameat(&self.directory, temporary.as_str(), &self.directory, name)?;
            Ok(())
        })();
        if result.is_err() {
            let _ = rustix::fs::unlinkat(&self.directory, temporary.as_str(), AtFlags::empty());
        }
        result.with_context(|| format!("writing {}", self.path.join(name).display()))
    }

    pub fn remove(&self, name: &str) -> Result<()> {
        rustix::fs::unlinkat(&self.directory, name, AtFlags::empty())
            .with_context(|| format!("removing {}", self.path.join(name).display()))
    }
}

/// `path` in a clone of its mount whose read-only flag is cleared.
fn writable_view(path: &Path) -> std::io::Result<OwnedFd> {
    use rustix::mount::OpenTreeFlags;
    let clone = rustix::mount::open_tree(
        rustix::fs::CWD,
        path,
        OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC,
    )?;
    let attributes = libc::mount_attr {
        attr_set: 0,
        attr_clr: libc::MOUNT_ATTR_RDONLY,
        propagation: 0,
        userns_fd: 0,
    };
    // SAFETY: a valid descriptor, an empty NUL-terminated path with AT_EMPTY_PATH, and an
    // attribute structure of the size passed, all outliving the call.
    let cleared = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            clone.as_raw_fd(),
            c"".as_ptr(),
            libc::AT_EMPTY_PATH,
            &attributes as *const libc::mount_attr,
            std::mem::size_of::<libc::mount_attr>(),
        )
    };
    if cleared != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(clone)
}
