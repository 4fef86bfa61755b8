//! The identity the kernel programs match a file by: kernel device number, inode number and,
//! where the filesystem tells userspace, the inode's generation.

use std::{
    fs::{File, OpenOptions},
    io,
    os::{
        fd::AsRawFd,
        unix::fs::{MetadataExt, OpenOptionsExt},
    },
    path::Path,
};

use blocker_common::{entry_flags, BanEntry, FileKey};

/// `FS_IOC_GETVERSION` = `_IOR('v', 1, long)`: reads `inode->i_generation` on filesystems that
/// implement it (ext2/3/4, btrfs, f2fs, ...). The libc crate does not export it.
const FS_IOC_GETVERSION: libc::c_ulong = 0x8008_7601;

/// Bits of the minor number in the kernel's internal `dev_t` (`MINORBITS`).
const KERNEL_MINOR_BITS: u32 = 20;

/// What identifies one executable file to the kernel side.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FileIdentity {
    pub key: FileKey,
    /// `None` where the filesystem does not expose `i_generation` (tmpfs, overlayfs, ...).
    pub generation: Option<u32>,
    /// The owner's uid: what the ban map's budget counts a file against (see
    /// [`crate::budget`]).
    pub owner: u32,
}

impl FileIdentity {
    /// Identifies the regular file at `path`, following symlinks: the kernel sees the target.
    pub fn of_path(path: &Path) -> io::Result<Self> {
        Self::open(path, 0)
    }

    /// Identifies the regular file at `path` only if `path` is not a symlink: for files found
    /// by walking trees that users can write to, where a file swapped for a symlink to a system
    /// program between the walk and this call must not get that program banned.
    pub fn of_path_no_follow(path: &Path) -> io::Result<Self> {
        Self::open(path, libc::O_NOFOLLOW)
    }

    fn open(path: &Path, extra_flags: libc::c_int) -> io::Result<Self> {
        // O_NONBLOCK: a FIFO planted at a banned path must not hang the daemon.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | extra_flags)
            .open(path)?;
        Self::of_file(&file)
    }

    /// Identifies the regular file open as `file`.
    pub fn of_file(file: &File) -> io::Result<Self> {
        let metadata = file.metadata()?;
        if !metadata.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(Self {
            key: FileKey::new(kernel_device_number(metadata.dev()), metadata.ino()),
            generation: inode_generation(file),
            owner: metadata.uid(),
        })
    }

    /// The map value banning this file for `rule_id` with `action`.
    pub fn ban_entry(&self, rule_id: u32, action: u32) -> BanEntry {
        BanEntry {
            rule_id,
            action,
            generation: self.generation.unwrap_or(0),
            flags: if self.generation.is_some() {
                entry_flags::GENERATION_KNOWN
            } else {
                0
            },
        }
    }
}

/// Converts a userspace `st_dev` (glibc's encoding) into the kernel's `s_dev`,
/// `(major << 20) | minor`.
pub fn kernel_device_number(st_dev: u64) -> u32 {
    let major = libc::major(st_dev);
    let minor = libc::minor(st_dev);
    (major << KERNEL_MINOR_BITS) | minor
}

/// Splits a kernel `s_dev` into `(major, minor)`.
pub fn split_kernel_device_number(dev: u32) -> (u32, u32) {
    (
        dev >> KERNEL_MINOR_BITS,
        dev & ((1 << KERNEL_MINOR_BITS) - 1),
    )
}

fn inode_generation(file: &File) -> Option<u32> {
    let mut generation: libc::c_long = 0;
    // SAFETY: FS_IOC_GETVERSION writes at most one `long` into `generation`.
    let result = unsafe { libc::ioctl(file.as_raw_fd(), FS_IOC_GETVERSION, &mut generation) };
    // The kernel stores an `int`; the upper half of the `long` is not part of the value.
    (result == 0).then_some(generation as u32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_numbers_use_the_kernel_encoding() {
        // /dev/vda on virtio: major 254, minor 0; glibc encodes it as 0xfe00.
        assert_eq!(kernel_device_number(libc::makedev(254, 0)), 0x0fe0_0000);
        assert_eq!(kernel_device_number(libc::makedev(8, 17)), (8 << 20) | 17);
        // Large minors spill into the high bits of glibc's encoding.
        let st_dev = libc::makedev(259, 0x12345);
        assert_eq!(st_dev & 0xff, 0x45);
        assert_eq!(kernel_device_number(st_dev), (259 << 20) | 0x12345);
        assert_eq!(
            split_kernel_device_number(kernel_device_number(st_dev)),
            (259, 0x12345)
        );
    }

    #[test]
    fn identifies_a_regular_file_and_refuses_others() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("binary");
        std::fs::write(&path, b"\x7fELF").unwrap();
        let identity = FileIdentity::of_path(&path).unwrap();
        let metadata = std::fs::metadata(&path).unwrap();
        assert_eq!(identity.key.ino, metadata.ino());
        assert_eq!(identity.key.dev, kernel_device_number(metadata.dev()));

        let error = FileIdentity::of_path(dir.path()).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);

        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        assert_eq!(FileIdentity::of_path(&link).unwrap(), identity);
        let refused = FileIdentity::of_path_no_follow(&link).unwrap_err();
        assert_eq!(refused.raw_os_error(), Some(libc::ELOOP));
    }

    #[test]
    fn entries_compare_generation_only_when_known() {
        let known = FileIdentity {
            key: FileKey::new(1, 2),
            generation: Some(42),
            owner: 0,
        };
        let entry = known.ban_entry(3, blocker_common::action::DENY);
        assert_eq!(entry.flags, entry_flags::GENERATION_KNOWN);
        assert!(entry.matches_generation(42));
        assert!(!entry.matches_generation(43));

        let unknown = FileIdentity {
            generation: None,
            ..known
        };
        assert!(unknown
            .ban_entry(3, blocker_common::action::DENY)
            .matches_generation(43));
    }
}
