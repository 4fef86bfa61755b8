//! What starts a policy reload: SIGHUP and changes in the policy directory (inotify). The new
//! policy is prepared off the event loop ([`crate::prepare`]), and only a complete one replaces
//! the old.

use std::{
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::Path,
    time::Duration,
};

/// Editors save by writing a temporary file and renaming it, often in several steps: changes
/// are gathered until the directory has been quiet this long.
pub const QUIET_BEFORE_RELOAD: Duration = Duration::from_millis(300);

/// Notices files added, changed, renamed or removed in a directory: the policy directory, and
/// dpkg's database (see [`crate::daemon`]).
pub struct DirectoryWatcher {
    inotify: OwnedFd,
}

impl DirectoryWatcher {
    pub fn new(directory: &Path) -> io::Result<Self> {
        // SAFETY: plain inotify_init1; the result is checked.
        let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor owned from here on.
        let watcher = Self {
            inotify: unsafe { OwnedFd::from_raw_fd(fd) },
        };
        watcher.also(directory)?;
        Ok(watcher)
    }

    /// Watches `directory` too.
    pub fn also(&self, directory: &Path) -> io::Result<()> {
        let path = CString::new(directory.as_os_str().as_bytes())
            .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let events = libc::IN_CLOSE_WRITE
            | libc::IN_MOVED_TO
            | libc::IN_MOVED_FROM
            | libc::IN_DELETE
            | libc::IN_CREATE;
        // SAFETY: a valid descriptor and NUL-terminated path; the result is checked.
        if unsafe { libc::inotify_add_watch(self.inotify.as_raw_fd(), path.as_ptr(), events) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Consumes every queued notification; returns whether there was any.
    pub fn drain(&self) -> bool {
        let mut buffer = [0u8; 4096];
        let mut changed = false;
        loop {
            // SAFETY: reading into a buffer of the given length.
            let length = unsafe {
                libc::read(
                    self.inotify.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            };
            if length <= 0 {
                return changed;
            }
            changed = true;
        }
    }
}

impl AsRawFd for DirectoryWatcher {
    fn as_raw_fd(&self) -> std::os::fd::RawFd {
        self.inotify.as_raw_fd()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn notices_files_written_renamed_and_removed() {
        let dir = tempfile::tempdir().unwrap();
        let watcher = DirectoryWatcher::new(dir.path()).unwrap();
        assert!(!watcher.drain());
        std::fs::write(dir.path().join(".tmp"), b"x").unwrap();
        assert!(watcher.drain());
        std::fs::rename(dir.path().join(".tmp"), dir.path().join("p.toml")).unwrap();
        assert!(watcher.drain());
        std::fs::remove_file(dir.path().join("p.toml")).unwrap();
        assert!(watcher.drain());
        assert!(!watcher.drain());
    }
}
