//! The content watcher: fanotify on the filesystems of the scan roots reports every executable
//! written (`FAN_CLOSE_WRITE`) and every file exec'd (`FAN_OPEN_EXEC`) with a descriptor of the
//! file itself, which is hashed. A fresh copy of banned content is thus banned moments after it
//! is written, instead of at the next content scan; one made executable only later is caught at
//! its first exec, whose process is then killed.
//!
//! Files are hashed on several threads, each file given up at a deadline and none larger than
//! the policy's hash limit, so no one file (a huge sparse one, one on a stalled filesystem)
//! holds up the others.

use crate::escape::escaped;
use std::{
    collections::HashMap,
    ffi::CString,
    io,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::ffi::OsStrExt,
    },
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{sync_channel, Receiver},
        Arc, Mutex,
    },
    time::{Duration, Instant},
};

use tokio::sync::mpsc::UnboundedSender;

use crate::{
    files::{is_executable_candidate, FileStatus},
    identity::FileIdentity,
    scan::{hash_file_within, ContentReader, FileStamp, HashedFile, Sha256},
};

/// Hashes remembered per file version, so a program exec'd a thousand times is read once.
/// Cleared when full: a bounded memory cost matters more than a few rehashes.
const REMEMBERED_HASHES: usize = 65_536;
const EVENT_BUFFER_BYTES: usize = 64 * 1024;
/// Threads hashing files. Hashing waits on the disk more than on the CPU, so more threads than
/// CPUs keep a few slow files from holding up the rest.
const HASHING_THREADS: usize = 4;
/// Files waiting for a hashing thread; when full, events wait in the kernel's queue, and its
/// overflow makes the daemon rescan.
const QUEUED_FILES: usize = 1024;
/// How long one file may take to hash before it is given up.
pub const HASH_DEADLINE: Duration = Duration::from_secs(10);

/// A file under a scan root that was just written or exec'd, with its content hash.
#[derive(Debug)]
pub struct Seen {
    pub file: HashedFile,
    /// The process exec'ing it, for `FAN_OPEN_EXEC` events.
    pub exec_by: Option<i32>,
}

/// What the watcher tells the daemon.
#[derive(Debug)]
pub enum Report {
    Seen(Seen),
    /// The kernel dropped events (its queue overflowed): only a full scan can catch up.
    Overflow,
    Warning(String),
}

pub struct ContentWatcher {
    fanotify: OwnedFd,
    roots: Vec<PathBuf>,
}

/// A file an event named, for a hashing thread.
struct Work {
    fd: OwnedFd,
    path: PathBuf,
    status: FileStatus,
    exec_by: Option<i32>,
}

impl ContentWatcher {
    /// Marks the filesystem of every existing root. Needs CAP_SYS_ADMIN.
    pub fn new(roots: &[PathBuf]) -> io::Result<Self> {
        // SAFETY: plain fanotify_init; the result is checked.
        let fd = unsafe {
            libc::fanotify_init(
                libc::FAN_CLASS_NOTIF | libc::FAN_CLOEXEC,
                (libc::O_RDONLY | libc::O_LARGEFILE | libc::O_CLOEXEC) as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor owned from here on.
        let fanotify = unsafe { OwnedFd::from_raw_fd(fd) };
        let existing: Vec<PathBuf> = roots.iter().filter(|root| root.exists()).cloned().collect();
        for root in &existing {
            let path = CString::new(root.as_os_str().as_bytes())
                .map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
            // SAFETY: a valid descriptor and NUL-terminated path; the result is checked.
            let marked = unsafe {
                libc::fanotify_mark(
                    fanotify.as_raw_fd(),
                    libc::FAN_MARK_ADD | libc::FAN_MARK_FILESYSTEM,
                    libc::FAN_CLOSE_WRITE | libc::FAN_OPEN_EXEC,
                    libc::AT_FDCWD,
                    path.as_ptr(),
                )
            };
            if marked != 0 {
                let error = io::Error::last_os_error();
                return Err(io::Error::new(
                    error.kind(),
                    format!("{}: {error}", escaped(&root)),
                ));
            }
        }
        Ok(Self {
            fanotify,
            roots: existing,
        })
    }

    /// Reads events until the descriptor fails, handing every executable candidate under a
    /// root to the hashing threads, which report on `reports`; returns when the receiver is
    /// gone. Files larger than `hash_limit_bytes` (which a reload may change) are not hashed.
    pub fn run(self, reports: UnboundedSender<Report>, hash_limit_bytes: Arc<AtomicU64>) {
        let (queue, queued) = sync_channel::<Work>(QUEUED_FILES);
        let queued = Arc::new(Mutex::new(queued));
        let remembered = Arc::new(Mutex::new(HashMap::new()));
        for _ in 0..HASHING_THREADS {
            let hasher = Hasher {
                queued: queued.clone(),
                reports: reports.clone(),
                remembered: remembered.clone(),
                limit_bytes: hash_limit_bytes.clone(),
            };
            let started = std::thread::Builder::new()
                .name("blocker-watch".to_owned())
                .spawn(move || hasher.run());
            if let Err(error) = started {
                let _ = reports.send(Report::Warning(format!(
                    "content watcher: a hashing thread did not start: {error}"
                )));
            }
        }
        let mut buffer = vec![0u8; EVENT_BUFFER_BYTES];
        loop {
            // SAFETY: reading into a buffer of the given length.
            let length = unsafe {
                libc::read(
                    self.fanotify.as_raw_fd(),
                    buffer.as_mut_ptr().cast(),
                    buffer.len(),
                )
            };
            if length < 0 {
                let error = io::Error::last_os_error();
                if error.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                let _ = reports.send(Report::Warning(format!("content watcher stopped: {error}")));
                return;
            }
            for event in parse_events(&buffer[..length as usize]) {
                let delivered = match event {
                    Event::Overflow => reports.send(Report::Overflow).is_ok(),
                    Event::File { fd, mask, pid } => match self.work(fd, mask, pid) {
                        Some(work) => queue.send(work).is_ok(),
                        None => true,
                    },
                };
                if !delivered {
                    return;
                }
            }
        }
    }

    /// The work for an event's file if it is an executable candidate under a root.
    fn work(&self, fd: OwnedFd, mask: u64, pid: i32) -> Option<Work> {
        let same_file = proc_fd_path(&fd);
        let path = std::fs::read_link(&same_file).ok()?;
        if !self.roots.iter().any(|root| path.starts_with(root)) {
            return None;
        }
        let status = FileStatus::of(&std::fs::metadata(&same_file).ok()?);
        let exec = mask & libc::FAN_OPEN_EXEC != 0;
        if !exec && !is_executable_candidate(&path, &status) {
            return None;
        }
        Some(Work {
            fd,
            path,
            status,
            exec_by: exec.then_some(pid),
        })
    }
}

fn proc_fd_path(fd: &OwnedFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// One hashing thread.
struct Hasher {
    queued: Arc<Mutex<Receiver<Work>>>,
    reports: UnboundedSender<Report>,
    remembered: Arc<Mutex<HashMap<FileStamp, Sha256>>>,
    limit_bytes: Arc<AtomicU64>,
}

impl Hasher {
    fn run(self) {
        loop {
            let next = self
                .queued
                .lock()
                .map_err(|_| ())
                .and_then(|queued| queued.recv().map_err(|_| ()));
            let Ok(work) = next else {
                return;
            };
            if self.reports.send(self.hash(work)).is_err() {
                return;
            }
        }
    }

    fn hash(&self, work: Work) -> Report {
        let same_file = proc_fd_path(&work.fd);
        let stamp = FileStamp::from(&work.status);
        let known = self
            .remembered
            .lock()
            .ok()
            .and_then(|r| r.get(&stamp).copied());
        let hashed = match known {
            Some(sha256) => hash_known(&same_file, &work.path, sha256),
            None => {
                let mut reader = ContentReader::new(self.limit_bytes.load(Ordering::Relaxed));
                let deadline = Instant::now() + HASH_DEADLINE;
                hash_file_within(&same_file, &mut reader, Some(deadline)).map(|mut file| {
                    file.path.clone_from(&work.path);
                    file
                })
            }
        };
        let file = match hashed {
            Ok(file) => file,
            Err(error) => {
                return Report::Warning(format!("{}: {error}", escaped(&work.path)));
            }
        };
        if let Ok(mut remembered) = self.remembered.lock() {
            if remembered.len() >= REMEMBERED_HASHES {
                remembered.clear();
            }
            remembered.insert(stamp, file.sha256);
        }
        Report::Seen(Seen {
            file,
            exec_by: work.exec_by,
        })
    }
}

/// A file whose hash is remembered: only its identity is read.
fn hash_known(same_file: &Path, path: &Path, sha256: Sha256) -> io::Result<HashedFile> {
    Ok(HashedFile {
        path: path.to_owned(),
        identity: FileIdentity::of_path(same_file)?,
        sha256,
    })
}

enum Event {
    File { fd: OwnedFd, mask: u64, pid: i32 },
    Overflow,
}

/// Splits a buffer read from fanotify into events, taking ownership of their descriptors.
fn parse_events(mut buffer: &[u8]) -> Vec<Event> {
    let header = std::mem::size_of::<libc::fanotify_event_metadata>();
    let mut events = Vec::new();
    while buffer.len() >= header {
        // SAFETY: at least one header's worth of bytes; read unaligned from the byte buffer.
        let metadata: libc::fanotify_event_metadata =
            unsafe { std::ptr::read_unaligned(buffer.as_ptr().cast()) };
        let length = metadata.event_len as usize;
        if length < header || length > buffer.len() {
            break;
        }
        if metadata.mask & libc::FAN_Q_OVERFLOW != 0 {
            events.push(Event::Overflow);
        } else if metadata.fd >= 0 {
            events.push(Event::File {
                // SAFETY: the kernel opened this descriptor for us; it is ours to close.
                fd: unsafe { OwnedFd::from_raw_fd(metadata.fd) },
                mask: metadata.mask,
                pid: metadata.pid,
            });
        }
        buffer = &buffer[length..];
    }
    events
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_events_and_overflows() {
        let header = std::mem::size_of::<libc::fanotify_event_metadata>();
        let event = |mask: u64, fd: i32| {
            let metadata = libc::fanotify_event_metadata {
                event_len: header as u32,
                vers: libc::FANOTIFY_METADATA_VERSION,
                reserved: 0,
                metadata_len: header as u16,
                mask,
                fd,
                pid: 42,
            };
            // SAFETY: viewing a plain C struct as bytes.
            unsafe {
                std::slice::from_raw_parts(
                    (&metadata as *const libc::fanotify_event_metadata).cast::<u8>(),
                    header,
                )
            }
            .to_vec()
        };
        let file = std::fs::File::open("/proc/self/exe").unwrap();
        let fd = std::os::fd::IntoRawFd::into_raw_fd(file);
        let mut buffer = event(libc::FAN_CLOSE_WRITE, fd);
        buffer.extend(event(libc::FAN_Q_OVERFLOW, libc::FAN_NOFD));
        buffer.extend(&[0, 1, 2]);
        let events = parse_events(&buffer);
        assert_eq!(events.len(), 2);
        assert!(
            matches!(&events[0], Event::File { mask, pid: 42, .. } if *mask == libc::FAN_CLOSE_WRITE)
        );
        assert!(matches!(events[1], Event::Overflow));
    }
}
