//! Killing a process the content watcher saw exec a banned file. The watcher learns of the exec
//! after the fact, and a pid may be reused by then: the process is pinned with a pidfd first,
//! checked to still run the file, and signalled through that pidfd, which never reaches another
//! process.

use std::{
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::fs::MetadataExt,
    },
};

use blocker_common::FileKey;

use crate::identity::kernel_device_number;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    Killed,
    /// Gone before it could be killed.
    Exited,
    /// Alive, but no longer (or never) running the file: left alone.
    RunsSomethingElse,
}

/// Sends SIGKILL to process `pid` if it runs the file `program` (its `/proc/PID/exe`).
pub fn kill_if_running(pid: i32, program: FileKey) -> io::Result<Outcome> {
    // SAFETY: pidfd_open(2) takes a pid and flags; the result is checked.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return exited_or(io::Error::last_os_error());
    }
    // SAFETY: a fresh descriptor owned from here on.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    // Read after the pidfd was opened: if the pid was reused before, this is the new process's
    // program, judged on its own; if it is reused after, the pidfd's process is gone and the
    // signal below fails.
    let runs_program = std::fs::metadata(format!("/proc/{pid}/exe")).is_ok_and(|metadata| {
        FileKey::new(kernel_device_number(metadata.dev()), metadata.ino()) == program
    });
    if !runs_program {
        return Ok(Outcome::RunsSomethingElse);
    }
    // SAFETY: pidfd_send_signal(2) with a valid pidfd, no siginfo and no flags.
    let sent = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if sent < 0 {
        return exited_or(io::Error::last_os_error());
    }
    Ok(Outcome::Killed)
}

fn exited_or(error: io::Error) -> io::Result<Outcome> {
    if error.raw_os_error() == Some(libc::ESRCH) {
        Ok(Outcome::Exited)
    } else {
        Err(error)
    }
}

#[cfg(test)]
mod tests {
    use std::{os::unix::process::ExitStatusExt, process::Command};

    use super::*;

    fn key_of(path: &str) -> FileKey {
        let metadata = std::fs::metadata(path).unwrap();
        FileKey::new(kernel_device_number(metadata.dev()), metadata.ino())
    }

    #[test]
    fn kills_only_a_process_that_runs_the_program() {
        let mut child = Command::new("sleep").arg("60").spawn().unwrap();
        let pid = child.id() as i32;
        let sleep = key_of(&format!("/proc/{pid}/exe"));
        let other = key_of("/proc/self/exe");
        assert_eq!(
            kill_if_running(pid, other).unwrap(),
            Outcome::RunsSomethingElse
        );
        assert_eq!(kill_if_running(pid, sleep).unwrap(), Outcome::Killed);
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGKILL));
        // Reaped: the pid names no process.
        assert_eq!(kill_if_running(pid, sleep).unwrap(), Outcome::Exited);
    }
}
