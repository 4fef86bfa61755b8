//! Reading one file's content into its SHA-256: only ever opening the regular file that was
//! checked, and noticing a content that changes under the reader.

use std::{
    fs::{File, OpenOptions},
    io::{self, Read},
    os::{fd::AsRawFd, unix::fs::OpenOptionsExt},
    path::{Path, PathBuf},
    time::Instant,
};

use sha2::Digest;

use super::{stamp::FileStamp, Sha256};
use crate::identity::FileIdentity;

/// Large reads keep the syscall count low on big binaries.
const CHUNK_BYTES: usize = 256 * 1024;

/// A file read to its end with its stamp unchanged from first read to last.
#[derive(Debug)]
pub struct ReadFile {
    pub identity: FileIdentity,
    pub stamp: FileStamp,
    pub sha256: Sha256,
}

/// Hashes files one after another. Its buffer is reused: a fresh allocation this large per file
/// would be mapped and faulted in again for each of thousands of small files.
pub struct ContentReader {
    buffer: Box<[u8]>,
    /// A file found larger than this, before or while being read, is given up.
    limit_bytes: u64,
}

impl ContentReader {
    pub fn new(limit_bytes: u64) -> Self {
        Self {
            buffer: vec![0; CHUNK_BYTES].into_boxed_slice(),
            limit_bytes,
        }
    }

    /// Reads the regular file at `path`, following symlinks. With `listed`, the file must still
    /// be that inode: the path may have been replaced since the walk saw it.
    pub fn read(&mut self, path: &Path, listed: Option<&FileStamp>) -> io::Result<ReadFile> {
        self.read_until(path, listed, None)
    }

    /// [`Self::read`], given up once `deadline` passes.
    pub fn read_until(
        &mut self,
        path: &Path,
        listed: Option<&FileStamp>,
        deadline: Option<Instant>,
    ) -> io::Result<ReadFile> {
        // O_PATH runs no driver code. Below a scan root anyone may have swapped the file for a
        // symlink to a device whose open has effects (a watchdog, a tape), so only a file checked
        // to be regular is opened for reading, and through this descriptor's /proc/self/fd link:
        // the path could be swapped once more.
        let handle = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_CLOEXEC)
            .open(path)?;
        let metadata = handle.metadata()?;
        if !metadata.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        if listed.is_some_and(|listed| !listed.is_same_inode(&FileStamp::of(&metadata))) {
            return Err(io::Error::other(
                "replaced by another file since it was listed",
            ));
        }
        let same_file = PathBuf::from(format!("/proc/self/fd/{}", handle.as_raw_fd()));
        let file = open_for_reading(&same_file)?;
        let before = FileStamp::of(&file.metadata()?);
        let sha256 = self.hash_unchanged(&file, &before, deadline)?;
        Ok(ReadFile {
            identity: FileIdentity::of_path(&same_file)?,
            stamp: before,
            sha256,
        })
    }

    /// Hashes `file` from where it stands to its end, then fails if its stamp is no longer
    /// `before`: the digest could mix two versions of the content. Fails as well once more than
    /// the limit was read (the file may grow while it is read) or `deadline` passed.
    fn hash_unchanged(
        &mut self,
        mut file: &File,
        before: &FileStamp,
        deadline: Option<Instant>,
    ) -> io::Result<Sha256> {
        if before.size > self.limit_bytes {
            return Err(too_large(self.limit_bytes));
        }
        let mut hasher = sha2::Sha256::new();
        let mut read = 0u64;
        loop {
            if deadline.is_some_and(|deadline| Instant::now() >= deadline) {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "still hashing at the deadline; given up",
                ));
            }
            match file.read(&mut self.buffer) {
                Ok(0) => break,
                Ok(length) => {
                    read += length as u64;
                    if read > self.limit_bytes {
                        return Err(too_large(self.limit_bytes));
                    }
                    hasher.update(&self.buffer[..length]);
                }
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error),
            }
        }
        if FileStamp::of(&file.metadata()?) != *before {
            return Err(io::Error::other("changed while being read"));
        }
        Ok(hasher.finalize().into())
    }
}

/// The error of a file larger than the hash limit; [`is_too_large`] recognises it.
fn too_large(limit_bytes: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::FileTooLarge,
        format!(
            "larger than the hash limit ({} MiB); not hashed",
            limit_bytes >> 20
        ),
    )
}

pub fn is_too_large(error: &io::Error) -> bool {
    error.kind() == io::ErrorKind::FileTooLarge
}

fn open_for_reading(path: &Path) -> io::Result<File> {
    // O_NONBLOCK: only regular files get here, but should anything else ever do, a FIFO must
    // not hang the scan.
    let open = |flags| {
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC | flags)
            .open(path)
    };
    // O_NOATIME keeps a scan from marking every file as recently used; the kernel grants it to
    // the owner and to CAP_FOWNER only.
    match open(libc::O_NOATIME) {
        Err(error) if error.raw_os_error() == Some(libc::EPERM) => open(0),
        result => result,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{io::Write, os::unix::fs::MetadataExt};

    fn write_file(path: &Path, content: &[u8]) -> FileStamp {
        std::fs::write(path, content).unwrap();
        FileStamp::of(&std::fs::metadata(path).unwrap())
    }

    #[test]
    fn hashes_a_file_and_identifies_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tool");
        let content = vec![7; CHUNK_BYTES * 2 + 3];
        let listed = write_file(&path, &content);

        let read = ContentReader::new(u64::MAX)
            .read(&path, Some(&listed))
            .unwrap();
        assert_eq!(
            read.sha256,
            <[u8; 32]>::from(sha2::Sha256::digest(&content))
        );
        assert_eq!(read.stamp, listed);
        let identity = FileIdentity::of_path(&path).unwrap();
        assert_eq!(read.identity, identity);
    }

    #[test]
    fn refuses_a_file_replaced_since_it_was_listed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tool");
        let listed = write_file(&path, b"listed");
        let replacement = dir.path().join("replacement");
        write_file(&replacement, b"other");
        std::fs::rename(&replacement, &path).unwrap();

        let error = ContentReader::new(u64::MAX)
            .read(&path, Some(&listed))
            .unwrap_err();
        assert!(error.to_string().contains("replaced"), "{error}");
    }

    #[test]
    fn refuses_a_missing_file_a_directory_and_a_fifo() {
        let dir = tempfile::tempdir().unwrap();
        let mut reader = ContentReader::new(u64::MAX);
        let missing = reader.read(&dir.path().join("gone"), None).unwrap_err();
        assert_eq!(missing.kind(), io::ErrorKind::NotFound);
        let directory = reader.read(dir.path(), None).unwrap_err();
        assert_eq!(directory.kind(), io::ErrorKind::InvalidInput);

        let fifo = dir.path().join("fifo");
        let name = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: `name` is a NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(name.as_ptr(), 0o755) }, 0);
        // Would block forever if the FIFO were opened for reading.
        let error = reader.read(&fifo, None).unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::InvalidInput);
    }

    #[test]
    fn notices_content_that_changes_while_being_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tool");
        write_file(&path, b"first half");
        let file = open_for_reading(&path).unwrap();
        let before = FileStamp::of(&file.metadata().unwrap());

        // Between the stamp taken before reading and the one taken after, as a writer racing
        // the reader would.
        let mut writer = OpenOptions::new().append(true).open(&path).unwrap();
        writer.write_all(b", second half").unwrap();

        let error = ContentReader::new(u64::MAX)
            .hash_unchanged(&file, &before, None)
            .unwrap_err();
        assert_eq!(error.to_string(), "changed while being read");
    }

    #[test]
    fn gives_up_files_over_the_limit_and_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tool");
        write_file(&path, &vec![1; CHUNK_BYTES * 2]);
        let error = ContentReader::new(CHUNK_BYTES as u64)
            .read(&path, None)
            .unwrap_err();
        assert!(is_too_large(&error), "{error}");

        // Growing past the limit after the size was checked is noticed while reading.
        let file = open_for_reading(&path).unwrap();
        let mut before = FileStamp::of(&file.metadata().unwrap());
        before.size = 1;
        let error = ContentReader::new(CHUNK_BYTES as u64)
            .hash_unchanged(&file, &before, None)
            .unwrap_err();
        assert!(is_too_large(&error), "{error}");

        let passed = Instant::now();
        let error = ContentReader::new(u64::MAX)
            .read_until(&path, None, Some(passed))
            .unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut, "{error}");
        assert!(ContentReader::new(CHUNK_BYTES as u64 * 2)
            .read(&path, None)
            .is_ok());
    }

    #[test]
    fn follows_a_symlink_to_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        write_file(&target, b"target");
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&target, &link).unwrap();

        let read = ContentReader::new(u64::MAX).read(&link, None).unwrap();
        assert_eq!(read.stamp.ino, std::fs::metadata(&target).unwrap().ino());
        assert_eq!(
            read.sha256,
            <[u8; 32]>::from(sha2::Sha256::digest(b"target"))
        );
    }
}
