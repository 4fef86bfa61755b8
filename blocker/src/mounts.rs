//! The mount table as the kernel shows it in `/proc/self/mountinfo`: for each mount, the device
//! number of its superblock (`sb->s_dev`, the number the kernel programs key files by), where it
//! is mounted and what filesystem it is. `stat`'s `st_dev` is not that number everywhere: btrfs
//! reports a per-subvolume anonymous device, overlayfs on layers of several filesystems the
//! layer's.
//!
//! The table is read once and kept: a scan identifies many files. It is read again when the kernel
//! says the table changed (`/proc/self/mountinfo` polls with `POLLPRI` after every mount and
//! unmount, so a mount id that was reused for another mount never maps to the old one's device)
//! and when a mount id is not in it.

use std::{
    collections::HashMap,
    ffi::OsStr,
    fs::File,
    io::{self, Read, Seek},
    os::{fd::AsRawFd, unix::ffi::OsStrExt},
    path::PathBuf,
    sync::Mutex,
};

use crate::identity::kernel_device_number;

const MOUNTINFO: &str = "/proc/self/mountinfo";

/// One line of `/proc/self/mountinfo`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mount {
    pub id: u64,
    /// The superblock's `s_dev`, in the kernel's encoding.
    pub device: u32,
    pub mount_point: PathBuf,
    pub fs_type: String,
    /// The superblock's options (the last field), e.g. overlayfs' `xino=on`.
    pub super_options: String,
}

impl Mount {
    /// Whether `stat`'s inode number can differ from the kernel's `i_ino` here. Overlayfs reports
    /// a copied-up file's origin inode number where `i_ino` is the upper inode's (with
    /// `nfs_export=on`); other filesystems report `i_ino`.
    pub fn stat_inode_may_differ(&self) -> bool {
        self.fs_type == "overlay"
    }
}

/// Mounts by id.
#[derive(Debug, Default)]
pub struct MountTable {
    mounts: HashMap<u64, Mount>,
}

impl MountTable {
    /// Reads `mountinfo` text; lines it cannot read are left out (a lookup of their id then
    /// fails with a clear error).
    pub fn parse(text: &[u8]) -> Self {
        let mounts = text
            .split(|&byte| byte == b'\n')
            .filter_map(parse_line)
            .map(|mount| (mount.id, mount))
            .collect();
        Self { mounts }
    }

    pub fn get(&self, id: u64) -> Option<&Mount> {
        self.mounts.get(&id)
    }

    /// The mount of a filesystem of type `fs_type` with the shortest mount point (the main one
    /// where a filesystem is also mounted deeper), if any.
    pub fn of_type(&self, fs_type: &str) -> Option<&Mount> {
        self.mounts
            .values()
            .filter(|mount| mount.fs_type == fs_type)
            .min_by_key(|mount| mount.mount_point.as_os_str().len())
    }
}

/// This process's mount table, read now.
pub fn table() -> io::Result<MountTable> {
    Ok(MountTable::parse(&std::fs::read(MOUNTINFO)?))
}

/// `36 35 98:0 /root /mnt rw,noatime master:1 - ext4 /dev/root rw,errors=continue`: the id,
/// the parent's id, `major:minor`, the root within the filesystem, the mount point (with space,
/// tab, newline and backslash as octal escapes), mount options, optional fields up to `-`, then
/// the filesystem type, the source and the superblock's options.
fn parse_line(line: &[u8]) -> Option<Mount> {
    let line = std::str::from_utf8(line).ok()?;
    let mut fields = line.split(' ');
    let id = fields.next()?.parse().ok()?;
    let _parent = fields.next()?;
    let (major, minor) = fields.next()?.split_once(':')?;
    let device = kernel_device_number(libc::makedev(major.parse().ok()?, minor.parse().ok()?));
    let _root = fields.next()?;
    let mount_point = PathBuf::from(OsStr::from_bytes(&unescape_octal(fields.next()?)));
    let mut after_separator = fields.skip_while(|field| *field != "-").skip(1);
    let fs_type = after_separator.next()?.to_owned();
    let _source = after_separator.next()?;
    let super_options = after_separator.next().unwrap_or_default().to_owned();
    Some(Mount {
        id,
        device,
        mount_point,
        fs_type,
        super_options,
    })
}

/// Undoes the kernel's `\ooo` escapes (`mangle` in fs/proc_namespace.c).
fn unescape_octal(field: &str) -> Vec<u8> {
    let bytes = field.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escape = bytes.get(index + 1..index + 4).filter(|digits| {
            bytes[index] == b'\\' && digits.iter().all(|digit| (b'0'..=b'7').contains(digit))
        });
        match escape
            .and_then(|digits| u8::from_str_radix(std::str::from_utf8(digits).ok()?, 8).ok())
        {
            Some(byte) => {
                out.push(byte);
                index += 4;
            }
            None => {
                out.push(bytes[index]);
                index += 1;
            }
        }
    }
    out
}

/// The table of this process's mount namespace, kept with the open `mountinfo` that says when
/// it changed.
struct Cached {
    source: File,
    table: MountTable,
}

impl Cached {
    fn open() -> io::Result<Self> {
        let mut cached = Self {
            source: File::open(MOUNTINFO)?,
            table: MountTable::default(),
        };
        cached.reread()?;
        Ok(cached)
    }

    fn reread(&mut self) -> io::Result<()> {
        self.source.rewind()?;
        let mut text = Vec::new();
        self.source.read_to_end(&mut text)?;
        self.table = MountTable::parse(&text);
        Ok(())
    }

    /// Whether a mount or unmount happened since the last call (the first call compares with
    /// the opening).
    fn changed(&self) -> io::Result<bool> {
        let mut source = libc::pollfd {
            fd: self.source.as_raw_fd(),
            events: libc::POLLPRI,
            revents: 0,
        };
        // SAFETY: one valid pollfd, no waiting.
        let ready = unsafe { libc::poll(&mut source, 1, 0) };
        if ready < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(source.revents & (libc::POLLPRI | libc::POLLERR) != 0)
    }
}

static CACHE: Mutex<Option<Cached>> = Mutex::new(None);

/// The mount with id `id` (as `statx(STATX_MNT_ID)` gives it) in this process's namespace. Call
/// it after the `statx`: a change between the two is then seen and the table read again.
pub fn mount(id: u64) -> io::Result<Mount> {
    let mut cache = CACHE
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner());
    let cached = match cache.as_mut() {
        Some(cached) => {
            if cached.changed()? {
                cached.reread()?;
            }
            cached
        }
        None => cache.insert(Cached::open()?),
    };
    if cached.table.get(id).is_none() {
        cached.reread()?;
    }
    cached.table.get(id).cloned().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::NotFound,
            format!(
                "mount {id} is not in {MOUNTINFO}: unmounted, or outside this process's mount \
                 namespace"
            ),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &[u8] = b"\
22 1 254:1 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
44 22 0:39 / /mnt/my\\040disk rw,relatime shared:30 - btrfs /dev/loop0 rw,space_cache=v2,subvolid=5,subvol=/
45 22 0:50 / /merged rw,relatime - overlay overlay rw,lowerdir=/l,upperdir=/u,workdir=/w,xino=off
46 22 0:51 / /no-super-options rw - tmpfs tmpfs
broken line
";

    #[test]
    fn reads_devices_mount_points_and_types() {
        let table = MountTable::parse(SAMPLE);
        let root = table.get(22).unwrap();
        assert_eq!(root.device, (254 << 20) | 1);
        assert_eq!(root.mount_point, PathBuf::from("/"));
        assert_eq!(root.fs_type, "ext4");
        assert!(!root.stat_inode_may_differ());

        let btrfs = table.get(44).unwrap();
        assert_eq!(btrfs.device, 39);
        assert_eq!(btrfs.mount_point, PathBuf::from("/mnt/my disk"));
        assert_eq!(btrfs.fs_type, "btrfs");

        let overlay = table.get(45).unwrap();
        assert!(overlay.stat_inode_may_differ());
        assert!(overlay.super_options.ends_with("xino=off"));

        assert_eq!(table.get(46).unwrap().super_options, "");
        assert_eq!(table.mounts.len(), 4);
    }

    #[test]
    fn octal_escapes_are_undone_and_other_backslashes_kept() {
        assert_eq!(unescape_octal(r"a\040b\134c\012"), b"a b\\c\n");
        assert_eq!(unescape_octal(r"a\9b\04"), br"a\9b\04");
    }

    #[test]
    fn finds_the_mount_of_the_root_directory() {
        let status = rustix::fs::statx(
            rustix::fs::CWD,
            "/",
            rustix::fs::AtFlags::empty(),
            rustix::fs::StatxFlags::MNT_ID,
        )
        .unwrap();
        let root = mount(status.stx_mnt_id).unwrap();
        assert_eq!(root.mount_point, PathBuf::from("/"));
        let unknown = mount(u64::MAX).unwrap_err();
        assert_eq!(unknown.kind(), io::ErrorKind::NotFound);
    }
}
