//! A line on the terminal of a refused process. The process itself may be gone by then (the
//! kill backend killed it; under the LSM backend a shell's child exits once exec failed), so
//! its parent's controlling terminal is the next choice: it is the one a shell that ran the
//! program reads and writes.
//!
//! Only a terminal the refused user owns is ever written: the process found must run as that
//! user, and the device opened must be a terminal owned by them and be the one the process
//! has, checked on the open descriptor. A write that would block is dropped.

use std::{
    fs::{self, OpenOptions},
    io::{self, Write},
    os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt},
    path::PathBuf,
};

/// Writes `line` and a newline on the controlling terminal of `pid`, else of `ppid`, if it
/// belongs to `uid`.
pub fn tell(pid: u32, ppid: u32, uid: u32, line: &[u8]) -> io::Result<()> {
    let tty = [pid, ppid]
        .into_iter()
        .filter(|&pid| pid != 0)
        .find_map(|pid| controlling_terminal(pid, uid))
        .ok_or_else(|| io::Error::other("neither it nor its parent has a terminal of its user"))?;
    let path = device_path(tty).ok_or_else(|| io::Error::other("not a terminal blocker knows"))?;
    let mut terminal = OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_NOCTTY | libc::O_NONBLOCK | libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|error| io::Error::new(error.kind(), format!("{}: {error}", path.display())))?;
    let metadata = terminal.metadata()?;
    if !metadata.file_type().is_char_device() || metadata.rdev() != tty || metadata.uid() != uid {
        return Err(io::Error::other(
            "the terminal is not the process's, or not its user's",
        ));
    }
    let mut whole = Vec::with_capacity(line.len() + 2);
    whole.extend_from_slice(line);
    // A terminal in raw mode (a shell editing its prompt) does not return the carriage itself.
    whole.extend_from_slice(b"\r\n");
    let written = terminal.write(&whole)?;
    if written < whole.len() {
        return Err(io::Error::other("the terminal took only part of the line"));
    }
    Ok(())
}

/// The device number of `pid`'s controlling terminal, if it runs as `uid` and has one.
fn controlling_terminal(pid: u32, uid: u32) -> Option<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let real_uid: u32 = status
        .lines()
        .find_map(|line| line.strip_prefix("Uid:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()?;
    if real_uid != uid {
        return None;
    }
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    tty_of_stat(&stat)
}

/// `tty_nr` of a `/proc/PID/stat` line: the 7th field, the 5th after the command name (which
/// may hold spaces and parentheses, so it is skipped up to its last `)`).
fn tty_of_stat(stat: &str) -> Option<u64> {
    let after_name = &stat[stat.rfind(')')? + 1..];
    let tty: u64 = after_name.split_whitespace().nth(4)?.parse().ok()?;
    (tty != 0).then(|| {
        let major = (tty >> 8) & 0xfff;
        let minor = (tty & 0xff) | ((tty >> 12) & 0xfff00);
        libc::makedev(major as u32, minor as u32)
    })
}

/// The device file of a terminal: a pseudo-terminal (`/dev/pts/N`), a virtual console or a
/// serial line.
fn device_path(device: u64) -> Option<PathBuf> {
    let (major, minor) = (libc::major(device), libc::minor(device));
    match major {
        136..=143 => Some(PathBuf::from(format!(
            "/dev/pts/{}",
            (major - 136) * 256 + minor
        ))),
        4 if minor < 64 => Some(PathBuf::from(format!("/dev/tty{minor}"))),
        4 => Some(PathBuf::from(format!("/dev/ttyS{}", minor - 64))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_terminal_is_read_past_a_hostile_command_name() {
        let stat = "42 (a) b) 1 2 3 34816 5) S 1 42 42 34817 42 4194304";
        assert_eq!(tty_of_stat(stat), Some(libc::makedev(136, 1)));
        assert_eq!(tty_of_stat("42 (sh) S 1 42 42 0 -1"), None);
        assert_eq!(
            device_path(libc::makedev(137, 3)),
            Some(PathBuf::from("/dev/pts/259"))
        );
        assert_eq!(
            device_path(libc::makedev(4, 2)),
            Some(PathBuf::from("/dev/tty2"))
        );
        assert_eq!(
            device_path(libc::makedev(4, 65)),
            Some(PathBuf::from("/dev/ttyS1"))
        );
        assert_eq!(device_path(libc::makedev(1, 3)), None);
    }

    #[test]
    fn no_line_for_a_process_of_another_user() {
        let me = std::process::id();
        let not_me = unsafe { libc::getuid() } + 1;
        assert!(tell(me, 0, not_me, b"x").is_err());
    }
}
