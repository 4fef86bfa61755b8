//! The identity the kernel programs match a file by: the device number of the superblock the
//! file's inode belongs to (`inode->i_sb->s_dev`), the inode number (`inode->i_ino`) and, where
//! the filesystem tells userspace, the inode's generation.
//!
//! `stat` does not give that device number everywhere: btrfs reports a per-subvolume anonymous
//! device, overlayfs over layers of several filesystems the layer's, and overlayfs may report a
//! copied-up file's origin inode number. So the key is derived the kernel's way: the mount the
//! open file is reached through (`statx(STATX_MNT_ID)`), that mount's superblock device from
//! `/proc/self/mountinfo` (see `mounts.rs`), and on overlayfs the inode number the kernel shows
//! for the open file in `/proc/self/fdinfo`. [`check_kernel_agrees`] compares the result with
//! the kernel's own view before the daemon enforces anything.

use std::{
    collections::HashSet,
    fs::{File, OpenOptions},
    io,
    os::{
        fd::{AsFd, AsRawFd},
        unix::fs::OpenOptionsExt,
    },
    path::Path,
};

use anyhow::bail;
use blocker_common::{entry_flags, BanEntry, FileKey};
use rustix::fs::{statx, AtFlags, FileType, StatxFlags};

use crate::{
    escape::escaped,
    files::WalkedFile,
    mounts::{self, Mount},
};

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
        Self::open(path, 0).map(|(identity, _)| identity)
    }

    /// Identifies the regular file at `path` only if `path` is not a symlink: for files found
    /// by walking trees that users can write to, where a file swapped for a symlink to a system
    /// program between the walk and this call must not get that program banned.
    pub fn of_path_no_follow(path: &Path) -> io::Result<Self> {
        Self::of_path_no_follow_as_seen(path).map(|(identity, _)| identity)
    }

    /// [`FileIdentity::of_path_no_follow`], with the file as `stat` shows it: what a walk saw,
    /// to tell whether this is still that file.
    pub fn of_path_no_follow_as_seen(path: &Path) -> io::Result<(Self, SeenAs)> {
        Self::open(path, libc::O_NOFOLLOW)
    }

    fn open(path: &Path, extra_flags: libc::c_int) -> io::Result<(Self, SeenAs)> {
        // O_NONBLOCK: a FIFO planted at a banned path must not hang the daemon.
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | extra_flags)
            .open(path)?;
        Self::of_file_as_seen(&file)
    }

    /// Identifies the regular file open as `file`.
    pub fn of_file(file: &File) -> io::Result<Self> {
        Self::of_file_as_seen(file).map(|(identity, _)| identity)
    }

    /// Identifies the regular file a walk met, opened through the walk's descriptor of its
    /// directory, and only if it is still the inode the walk listed.
    pub fn of_walked(file: &WalkedFile<'_>) -> io::Result<Self> {
        let (identity, seen_as) = Self::of_file_as_seen(&file.open_unverified()?)?;
        if seen_as != (file.status.dev, file.status.ino) {
            return Err(io::Error::other("replaced since the walk found it"));
        }
        Ok(identity)
    }

    fn of_file_as_seen(file: &File) -> io::Result<(Self, SeenAs)> {
        let keyed = kernel_key(file)?;
        if FileType::from_raw_mode(keyed.mode) != FileType::RegularFile {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        let identity = Self {
            key: keyed.key,
            generation: inode_generation(file),
            owner: keyed.uid,
        };
        Ok((identity, keyed.seen_as))
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

/// A file as `stat` shows it: `(st_dev, st_ino)`, in userspace's encoding.
pub type SeenAs = (u64, u64);

/// A file's key, with the mount it was reached through and what `stat` shows.
#[derive(Clone, Debug)]
pub struct KernelKey {
    pub key: FileKey,
    pub mount: Mount,
    pub seen_as: SeenAs,
    /// Type and permission bits, as `st_mode`.
    pub mode: u32,
    pub uid: u32,
}

/// The key the kernel programs match the open `file` by (any file type).
pub fn kernel_key(file: &impl AsFd) -> io::Result<KernelKey> {
    let status = statx(
        file,
        "",
        AtFlags::EMPTY_PATH,
        StatxFlags::TYPE
            | StatxFlags::MODE
            | StatxFlags::UID
            | StatxFlags::INO
            | StatxFlags::MNT_ID,
    )?;
    if !StatxFlags::from_bits_retain(status.stx_mask).contains(StatxFlags::MNT_ID) {
        return Err(io::Error::new(
            io::ErrorKind::Unsupported,
            "the kernel does not tell which mount a file is on (statx STATX_MNT_ID, Linux 5.8)",
        ));
    }
    let mount = mounts::mount(status.stx_mnt_id)?;
    let ino = if mount.stat_inode_may_differ() {
        kernel_view(file)?.ino
    } else {
        status.stx_ino
    };
    Ok(KernelKey {
        key: FileKey::new(mount.device, ino),
        mount,
        seen_as: (
            libc::makedev(status.stx_dev_major, status.stx_dev_minor),
            status.stx_ino,
        ),
        mode: u32::from(status.stx_mode),
        uid: status.stx_uid,
    })
}

/// The key of whatever `path` leads to, symlinks followed: a directory, a program.
pub fn key_of_path(path: &Path) -> io::Result<FileKey> {
    Ok(kernel_key(&open_path(path, 0)?)?.key)
}

/// The key of what `path` names itself (a final symlink not followed), with what `stat` shows.
pub fn key_of_path_no_follow(path: &Path) -> io::Result<(FileKey, SeenAs)> {
    let keyed = kernel_key(&open_path(path, libc::O_NOFOLLOW)?)?;
    Ok((keyed.key, keyed.seen_as))
}

/// An `O_PATH` descriptor: it names the inode without opening its content, so a FIFO or a file
/// without read permission is named all the same.
fn open_path(path: &Path, extra_flags: libc::c_int) -> io::Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_CLOEXEC | extra_flags)
        .open(path)
}

/// What the kernel itself shows about an open file in `/proc/self/fdinfo` (Linux 5.14 on): the
/// id of the mount it was opened through and its inode's `i_ino`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct KernelView {
    mount_id: u64,
    ino: u64,
}

fn kernel_view(file: &impl AsFd) -> io::Result<KernelView> {
    let path = format!("/proc/self/fdinfo/{}", file.as_fd().as_raw_fd());
    parse_fdinfo(&std::fs::read_to_string(&path)?).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::Unsupported,
            format!("{path} shows no mnt_id and ino (Linux 5.14 and later do)"),
        )
    })
}

fn parse_fdinfo(text: &str) -> Option<KernelView> {
    let field = |name: &str| {
        text.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|value| value.trim().parse().ok())
    };
    Some(KernelView {
        mount_id: field("mnt_id")?,
        ino: field("ino")?,
    })
}

/// Refuses to go on unless, for one file on each filesystem among `files` (keys the files were
/// resolved to, with a way to a path of each, taken only for the files it opens), the key
/// derived now equals the kernel's own view of the open file:
/// its `i_ino` and the `s_dev` of the superblock of the mount it was opened through, as
/// `/proc/self/fdinfo` and `/proc/self/mountinfo` show them. Needs no program loaded, so it works
/// the same with either backend and leaves nothing behind. Returns how many filesystems it
/// checked.
pub fn check_kernel_agrees<P: AsRef<Path>>(
    files: impl IntoIterator<Item = (FileKey, impl FnOnce() -> Option<P>)>,
) -> anyhow::Result<usize> {
    let mut checked = HashSet::new();
    for (key, path_of) in files {
        if checked.contains(&key.dev) {
            continue;
        }
        let Some(path) = path_of() else {
            continue;
        };
        let path = path.as_ref();
        // Gone or replaced since it was resolved: another file of the filesystem will do.
        let Ok(file) = open_path(path, 0) else {
            continue;
        };
        let derived = kernel_key(&file)?;
        let view = kernel_view(&file)?;
        let kernel = mounts::mount(view.mount_id)?;
        disagreement(path, &derived, &kernel, view.ino)?;
        checked.insert(key.dev);
        checked.insert(derived.key.dev);
    }
    Ok(checked.len())
}

fn disagreement(path: &Path, derived: &KernelKey, kernel: &Mount, ino: u64) -> anyhow::Result<()> {
    let seen = FileKey::new(kernel.device, ino);
    if derived.key == seen {
        return Ok(());
    }
    bail!(
        "identity check failed for {} on {} ({}): blocker keys it as device {} inode {}, the \
         kernel sees device {} inode {}; refusing to start, as bans and protection of files on \
         this filesystem would not match",
        escaped(path),
        escaped(&kernel.mount_point),
        escaped(&kernel.fs_type),
        device_text(derived.key.dev),
        derived.key.ino,
        device_text(seen.dev),
        seen.ino
    )
}

/// Converts a userspace `st_dev` (glibc's encoding) into the kernel's `s_dev`,
/// `(major << 20) | minor`.
pub fn kernel_device_number(st_dev: u64) -> u32 {
    let major = libc::major(st_dev);
    let minor = libc::minor(st_dev);
    (major << KERNEL_MINOR_BITS) | minor
}

/// A kernel `s_dev` as records and people read it: `major:minor`.
pub fn device_text(dev: u32) -> String {
    let (major, minor) = split_kernel_device_number(dev);
    format!("{major}:{minor}")
}

/// Whether `key` is the file a record names by its `device` (`major:minor`) and `inode`.
pub fn is_recorded_file(key: &FileKey, device: &str, inode: u64) -> bool {
    key.ino == inode && device_text(key.dev) == device
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
    use std::os::unix::fs::MetadataExt;

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
    fn keys_name_directories_and_fifos_and_say_what_stat_shows() {
        let dir = tempfile::tempdir().unwrap();
        let metadata = std::fs::metadata(dir.path()).unwrap();
        let key = key_of_path(dir.path()).unwrap();
        assert_eq!(key.ino, metadata.ino());
        let fifo = dir.path().join("fifo");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o600) }, 0);
        let (key, seen_as) = key_of_path_no_follow(&fifo).unwrap();
        let metadata = std::fs::metadata(&fifo).unwrap();
        assert_eq!(seen_as, (metadata.dev(), metadata.ino()));
        assert_eq!(key.ino, metadata.ino());
    }

    #[test]
    fn fdinfo_gives_the_mount_and_inode() {
        let text = "pos:\t0\nflags:\t02100000\nmnt_id:\t44\nino:\t257\n";
        assert_eq!(
            parse_fdinfo(text),
            Some(KernelView {
                mount_id: 44,
                ino: 257
            })
        );
        assert_eq!(parse_fdinfo("pos:\t0\nflags:\t0\nmnt_id:\t44\n"), None);
        let file = File::open("/proc/self/exe").unwrap();
        let view = kernel_view(&file).unwrap();
        assert_eq!(view.ino, file.metadata().unwrap().ino());
    }

    #[test]
    fn the_kernel_agrees_on_files_here_and_a_disagreement_names_both_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("binary");
        std::fs::write(&path, b"\x7fELF").unwrap();
        let identity = FileIdentity::of_path(&path).unwrap();
        let missing = dir.path().join("missing");
        let files = [
            (FileKey::new(1, 1), missing.as_path()),
            (identity.key, path.as_path()),
            (identity.key, path.as_path()),
        ];
        let files = files.map(|(key, path)| (key, move || Some(path)));
        assert_eq!(check_kernel_agrees(files).unwrap(), 1);

        let derived = kernel_key(&File::open(&path).unwrap()).unwrap();
        let mut kernel = derived.mount.clone();
        kernel.device = (0 << KERNEL_MINOR_BITS) | 39;
        let error = disagreement(&path, &derived, &kernel, derived.key.ino + 1)
            .unwrap_err()
            .to_string();
        let (major, minor) = split_kernel_device_number(derived.key.dev);
        assert!(
            error.contains(&format!(
                "blocker keys it as device {major}:{minor} inode {}, the kernel sees device 0:39 \
                 inode {}",
                derived.key.ino,
                derived.key.ino + 1
            )),
            "{error}"
        );
        assert!(error.contains(&kernel.fs_type), "{error}");
        assert!(disagreement(&path, &derived, &derived.mount, derived.key.ino).is_ok());
    }

    #[test]
    fn entries_compare_generation_only_when_known() {
        let known = FileIdentity {
            key: FileKey::new(1, 2),
            generation: Some(42),
            owner: 0,
        };
        let entry = known.ban_entry(3, blocker_common::Action::Deny.wire());
        assert_eq!(entry.flags, entry_flags::GENERATION_KNOWN);
        assert!(entry.matches_generation(42));
        assert!(!entry.matches_generation(43));

        let unknown = FileIdentity {
            generation: None,
            ..known
        };
        assert!(unknown
            .ban_entry(3, blocker_common::Action::Deny.wire())
            .matches_generation(43));
    }
}
