//! Whether a failed lookup shows that a file is gone, or only that blocker could not look now.
//! A refresh removes a ban only on the first: a lookup that failed for any other reason (too
//! many open files, an I/O error, no memory, an automount that timed out, a refusal by a
//! security module or a FUSE server) decides nothing, and the bans it would have dropped stay.

use crate::escape::escaped;
use std::{io, path::Path};

/// Whether `error`, from opening, listing or inspecting a path, shows that the file the path
/// named is not there now: a component is missing (`ENOENT`) or is not a directory
/// (`ENOTDIR`), or a symlink stands where none is followed, or loops (`ELOOP`). An error with
/// no errno is blocker's own judgement of what it found there (not a regular file, replaced
/// since it was found, a symlink it does not follow), which decides as well.
pub fn shows_gone(error: &io::Error) -> bool {
    match error.raw_os_error() {
        Some(errno) => matches!(errno, libc::ENOENT | libc::ENOTDIR | libc::ELOOP),
        None => true,
    }
}

/// What went wrong while looking files up.
#[derive(Debug, Default)]
pub struct Problems {
    /// `path: reason`, escaped: files skipped, for a reason that is decided.
    pub warnings: Vec<String>,
    /// `path: error`, escaped: lookups that failed for a reason other than the file being
    /// gone, so whatever the path leads to is undecided.
    pub undecided: Vec<String>,
}

impl Problems {
    pub fn push(&mut self, warning: String) {
        self.warnings.push(warning);
    }

    /// Records that looking at `path` failed with `error`: a warning when the error shows the
    /// file gone, else an undecided lookup.
    pub fn failed(&mut self, path: &Path, error: impl Into<io::Error>) {
        let error = error.into();
        let line = format!("{}: {error}", escaped(&path));
        if shows_gone(&error) {
            self.warnings.push(line);
        } else {
            self.undecided.push(line);
        }
    }

    pub fn append(&mut self, other: &mut Problems) {
        self.warnings.append(&mut other.warnings);
        self.undecided.append(&mut other.undecided);
    }

    pub fn is_empty(&self) -> bool {
        self.warnings.is_empty() && self.undecided.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_missing_file_or_component_shows_a_file_gone() {
        for gone in [libc::ENOENT, libc::ENOTDIR, libc::ELOOP] {
            assert!(shows_gone(&io::Error::from_raw_os_error(gone)), "{gone}");
        }
        // Too many open files (a lowered RLIMIT_NOFILE), I/O errors, no memory, an automount
        // that does not answer, a refusal root cannot override, a stale NFS handle, a signal.
        for undecided in [
            libc::EMFILE,
            libc::ENFILE,
            libc::EIO,
            libc::ENOMEM,
            libc::ETIMEDOUT,
            libc::EACCES,
            libc::EPERM,
            libc::ESTALE,
            libc::EINTR,
            libc::EAGAIN,
            libc::ENODEV,
        ] {
            assert!(
                !shows_gone(&io::Error::from_raw_os_error(undecided)),
                "{undecided}"
            );
        }
        assert!(shows_gone(&io::Error::new(
            io::ErrorKind::InvalidInput,
            "not a regular file"
        )));
    }

    #[test]
    fn failures_are_sorted_by_what_they_show_and_escaped() {
        let mut problems = Problems::default();
        problems.failed(
            Path::new("/opt/gone"),
            io::Error::from_raw_os_error(libc::ENOENT),
        );
        problems.failed(
            Path::new("/opt/evil\nname"),
            io::Error::from_raw_os_error(libc::EMFILE),
        );
        assert_eq!(problems.warnings.len(), 1);
        assert_eq!(problems.undecided.len(), 1);
        assert!(
            problems.undecided[0].starts_with("/opt/evil\\nname: "),
            "{:?}",
            problems.undecided
        );
        assert!(problems.undecided[0].contains("Too many open files"));
    }
}
