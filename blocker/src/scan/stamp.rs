//! Which version of a file's content its metadata describes, without reading the content.

use std::fs::Metadata;

use crate::files::FileStatus;

/// The same inode with the same size, modification time and change time is taken to hold the
/// same content. The change time matters most: it cannot be set from userspace, so rewriting a
/// file and restoring its size and modification time still gives another stamp.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct FileStamp {
    /// `st_dev`, in userspace's encoding.
    pub dev: u64,
    pub ino: u64,
    pub size: u64,
    /// Nanoseconds since the epoch; 128 bits so no timestamp a filesystem can hold overflows.
    pub mtime_ns: i128,
    pub ctime_ns: i128,
}

impl FileStamp {
    pub fn of(metadata: &Metadata) -> Self {
        Self::from(&FileStatus::of(metadata))
    }

    pub fn is_same_inode(&self, other: &Self) -> bool {
        (self.dev, self.ino) == (other.dev, other.ino)
    }
}

impl From<&FileStatus> for FileStamp {
    fn from(status: &FileStatus) -> Self {
        Self {
            dev: status.dev,
            ino: status.ino,
            size: status.size,
            mtime_ns: status.mtime_ns,
            ctime_ns: status.ctime_ns,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    #[test]
    fn takes_every_field_from_the_metadata() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tool");
        std::fs::write(&path, b"first").unwrap();
        let file = std::fs::File::options().write(true).open(&path).unwrap();
        let modified = std::time::UNIX_EPOCH + std::time::Duration::new(1_700_000_000, 123_456_789);
        file.set_modified(modified).unwrap();
        let metadata = file.metadata().unwrap();

        let stamp = FileStamp::of(&metadata);
        assert_eq!((stamp.dev, stamp.ino), (metadata.dev(), metadata.ino()));
        assert_eq!(stamp.size, 5);
        assert_eq!(stamp.mtime_ns, 1_700_000_000_123_456_789);
        assert_eq!(
            stamp.ctime_ns,
            i128::from(metadata.ctime()) * 1_000_000_000 + i128::from(metadata.ctime_nsec())
        );

        file.set_len(0).unwrap();
        let truncated = FileStamp::of(&file.metadata().unwrap());
        assert_ne!(truncated, stamp);
        assert!(truncated.is_same_inode(&stamp));
    }
}
