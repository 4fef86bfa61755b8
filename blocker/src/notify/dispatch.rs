//! The daemon's side of notifications: the socket agents connect to, and the thread that folds
//! refusals and hands each user's to that user's agents and terminal.
//!
//! Every cost here is bounded: refusals arrive through a short channel from a sink's writer
//! (whose own queue drops and counts what does not fit), repeats are folded per (user, rule,
//! file) before any work is done for them, each user holds a bounded number of folds and agents,
//! and each agent a bounded buffer of unsent lines, beyond which notices are dropped and counted.

use std::{
    collections::{HashMap, VecDeque},
    fs, io,
    io::Write,
    os::unix::{
        ffi::OsStrExt,
        fs::{FileTypeExt, MetadataExt, PermissionsExt},
        net::{UnixListener, UnixStream},
    },
    path::{Path, PathBuf},
    sync::mpsc::{self, Receiver, RecvTimeoutError, SyncSender},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use super::{terminal, Notice, DEFAULT_TEXT, FOLD_WINDOW, MAX_NOTICE_BYTES};
use crate::{
    escape::{escaped, escaped_bytes},
    events::{Enforcement, ExecRecord},
    scan,
};

/// Anyone may connect: what a connection receives is decided by its peer's user id.
const SOCKET_MODE: u32 = 0o666;
/// Refusals and connections waiting for the dispatcher; the sink's writer waits beyond this,
/// and its own queue drops and counts.
const CHANNEL: usize = 64;
/// Agents of one user at once (several sessions); a newer one replaces the oldest.
const AGENTS_PER_USER: usize = 8;
/// Agents at once; beyond this, connections are closed.
const AGENTS: usize = 256;
/// Unsent bytes an agent that does not read may hold before its notices are dropped.
const AGENT_BUFFER_BYTES: usize = 4 * MAX_NOTICE_BYTES;
/// Folds one user may hold: distinct (rule, file) pairs refused within a window. Refusals of
/// further pairs are not told until some expire.
const FOLDS_PER_USER: usize = 256;
/// How long filling in a URL's `{sha256}` may read the refused file.
const HASH_DEADLINE: Duration = Duration::from_secs(10);

/// A refusal as the dispatcher needs it, taken from an exec record by the sink's writer.
pub struct Refusal {
    uid: u32,
    pid: u32,
    ppid: u32,
    rule: String,
    device: String,
    inode: u64,
    path: PathBuf,
    /// The hash the record names (the kernel's, or the content rule's), if any.
    sha256: Option<String>,
    action: &'static str,
    text: String,
    url: Option<String>,
    desktop: bool,
    terminal: bool,
    /// This refusal and the repeats the kernel suppressed before it.
    count: u64,
}

impl Refusal {
    /// What `record` tells its user, if its rule tells them anything.
    pub fn of(record: &ExecRecord) -> Option<Self> {
        let telling = &record.telling;
        if !(telling.desktop || telling.terminal) {
            return None;
        }
        let path = record.path_bytes();
        let text = telling
            .message
            .as_deref()
            .or(record.reason.as_deref())
            .unwrap_or(DEFAULT_TEXT);
        Some(Self {
            uid: record.caller.uid,
            pid: record.caller.pid,
            ppid: record.caller.ppid,
            rule: record.rule.clone(),
            device: record.device.clone(),
            inode: record.inode,
            path: PathBuf::from(std::ffi::OsStr::from_bytes(&path)),
            sha256: record.sha256.clone(),
            action: if record.enforcement == Enforcement::None {
                "audit"
            } else {
                "deny"
            },
            text: escaped(text).to_string(),
            url: record.url.clone(),
            desktop: telling.desktop,
            terminal: telling.terminal,
            count: 1 + u64::from(record.circumstances.suppressed_before),
        })
    }
}

enum Input {
    Refusal(Refusal),
    Agent { stream: UnixStream, uid: u32 },
}

/// Hands refusals to the dispatcher, waiting while its channel is full.
#[derive(Clone)]
pub struct Dispatch(SyncSender<Input>);

impl Dispatch {
    pub fn refused(&self, refusal: Refusal) {
        // The dispatcher ends only with the process.
        let _ = self.0.send(Input::Refusal(refusal));
    }
}

/// The agents' socket, removed when dropped unless another daemon has since taken its name.
pub struct NotifySocket {
    path: PathBuf,
    file: (u64, u64),
}

impl Drop for NotifySocket {
    fn drop(&mut self) {
        let ours = fs::symlink_metadata(&self.path)
            .is_ok_and(|metadata| (metadata.dev(), metadata.ino()) == self.file);
        if ours {
            if let Err(error) = fs::remove_file(&self.path) {
                log::warn!("removing {}: {error}", escaped(&self.path));
            }
        }
    }
}

/// Binds `path` (replacing a socket left there) and starts the threads that accept agents and
/// dispatch refusals.
pub fn start(path: &Path) -> Result<(NotifySocket, Dispatch)> {
    if let Some(directory) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        fs::create_dir_all(directory)
            .with_context(|| format!("creating {}", escaped(directory)))?;
    }
    match fs::symlink_metadata(path) {
        Ok(metadata) if metadata.file_type().is_socket() => fs::remove_file(path)
            .with_context(|| format!("removing the old socket {}", escaped(path)))?,
        Ok(_) => bail!(
            "{} is in the way of the notification socket: it is not a socket",
            escaped(path)
        ),
        Err(error) if error.kind() == io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("examining {}", escaped(path))),
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("creating the notification socket {}", escaped(path)))?;
    let metadata = fs::symlink_metadata(path)?;
    let socket = NotifySocket {
        path: path.to_owned(),
        file: (metadata.dev(), metadata.ino()),
    };
    fs::set_permissions(path, fs::Permissions::from_mode(SOCKET_MODE))
        .with_context(|| format!("opening {} to every user", escaped(path)))?;
    let (sender, received) = mpsc::sync_channel(CHANNEL);
    let accepting = sender.clone();
    std::thread::Builder::new()
        .name("notify-accept".to_owned())
        .spawn(move || accept(&listener, &accepting))
        .context("starting the notification socket's thread")?;
    std::thread::Builder::new()
        .name("notify".to_owned())
        .spawn(move || Dispatcher::default().run(&received))
        .context("starting the notification thread")?;
    Ok((socket, Dispatch(sender)))
}

fn accept(listener: &UnixListener, dispatcher: &SyncSender<Input>) {
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(error) => {
                log::warn!("notification socket: accepting a connection: {error}");
                // Out of descriptors, say: give whatever holds them a moment.
                std::thread::sleep(Duration::from_millis(100));
                continue;
            }
        };
        let uid = match rustix::net::sockopt::socket_peercred(&stream) {
            Ok(credentials) => credentials.uid.as_raw(),
            Err(error) => {
                log::warn!("notification socket: whose connection is it: {error}");
                continue;
            }
        };
        if stream.set_nonblocking(true).is_err() {
            continue;
        }
        if dispatcher.send(Input::Agent { stream, uid }).is_err() {
            return;
        }
    }
}

struct Agent {
    uid: u32,
    stream: UnixStream,
    unsent: VecDeque<u8>,
    dropped: u64,
}

impl Agent {
    /// Queues `line` and writes what the socket takes now; false when the agent is gone.
    fn send(&mut self, line: &[u8]) -> bool {
        if self.unsent.len() + line.len() > AGENT_BUFFER_BYTES {
            self.dropped += 1;
            if self.dropped == 1 {
                log::warn!(
                    "an agent of uid {} does not read its notifications; dropping them",
                    self.uid
                );
            }
        } else {
            self.unsent.extend(line);
        }
        self.flush()
    }

    fn flush(&mut self) -> bool {
        while !self.unsent.is_empty() {
            let (front, _) = self.unsent.as_slices();
            match self.stream.write(front) {
                Ok(0) => return false,
                Ok(written) => {
                    self.unsent.drain(..written);
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => return true,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        true
    }
}

#[derive(Clone, PartialEq, Eq, Hash)]
struct FoldKey {
    uid: u32,
    rule: String,
    device: String,
    inode: u64,
}

/// Refusals of one key since its notice was told.
struct Fold {
    until: Instant,
    notice: Notice,
    desktop: bool,
    /// Refusals folded into `notice` since it was last sent.
    unsent: u64,
}

#[derive(Default)]
struct Dispatcher {
    agents: Vec<Agent>,
    folds: HashMap<FoldKey, Fold>,
    folds_per_user: HashMap<u32, usize>,
    /// Users told in the log that their refusals went untold for too many folds.
    overflowing: Vec<u32>,
    machine_id: Option<String>,
}

impl Dispatcher {
    fn run(mut self, received: &Receiver<Input>) {
        loop {
            let next = self.folds.values().map(|fold| fold.until).min();
            let input = match next {
                Some(until) => {
                    match received.recv_timeout(until.saturating_duration_since(Instant::now())) {
                        Ok(input) => Some(input),
                        Err(RecvTimeoutError::Timeout) => None,
                        Err(RecvTimeoutError::Disconnected) => return,
                    }
                }
                None => match received.recv() {
                    Ok(input) => Some(input),
                    Err(_) => return,
                },
            };
            let now = Instant::now();
            self.expire(now);
            match input {
                Some(Input::Refusal(refusal)) => self.refused(refusal, now),
                Some(Input::Agent { stream, uid }) => self.admit(stream, uid),
                None => {}
            }
        }
    }

    fn admit(&mut self, stream: UnixStream, uid: u32) {
        let theirs: Vec<usize> = (0..self.agents.len())
            .filter(|&index| self.agents[index].uid == uid)
            .collect();
        if theirs.len() >= AGENTS_PER_USER {
            self.agents.remove(theirs[0]);
        } else if self.agents.len() >= AGENTS {
            log::warn!("notification socket: {AGENTS} agents are connected; closing another");
            return;
        }
        log::debug!("a notification agent of uid {uid} connected");
        self.agents.push(Agent {
            uid,
            stream,
            unsent: VecDeque::new(),
            dropped: 0,
        });
    }

    /// Sends the folded repeats of windows that ended, and forgets quiet ones.
    fn expire(&mut self, now: Instant) {
        let mut due = Vec::new();
        self.folds.retain(|key, fold| {
            if fold.until > now {
                return true;
            }
            if fold.unsent == 0 {
                return false;
            }
            fold.unsent = 0;
            fold.until = now + FOLD_WINDOW;
            if fold.desktop {
                due.push((key.uid, fold.notice.clone()));
            }
            true
        });
        self.folds_per_user.clear();
        for key in self.folds.keys() {
            *self.folds_per_user.entry(key.uid).or_default() += 1;
        }
        for (uid, notice) in due {
            self.send(uid, &notice);
        }
    }

    fn refused(&mut self, refusal: Refusal, now: Instant) {
        let key = FoldKey {
            uid: refusal.uid,
            rule: refusal.rule.clone(),
            device: refusal.device.clone(),
            inode: refusal.inode,
        };
        if let Some(fold) = self.folds.get_mut(&key) {
            fold.notice.count += refusal.count;
            fold.unsent += refusal.count;
            return;
        }
        let folds = self.folds_per_user.entry(refusal.uid).or_default();
        if *folds >= FOLDS_PER_USER {
            if !self.overflowing.contains(&refusal.uid) {
                self.overflowing.push(refusal.uid);
                log::warn!(
                    "uid {} was refused {FOLDS_PER_USER} different files within {FOLD_WINDOW:?}; \
                     further ones are not told to them until some quieten",
                    refusal.uid
                );
            }
            return;
        }
        *folds += 1;
        let notice = Notice {
            key: format!("{} {}:{}", refusal.rule, refusal.device, refusal.inode),
            program: escaped(&refusal.path).to_string(),
            action: refusal.action.to_owned(),
            rule: refusal.rule.clone(),
            text: refusal.text.clone(),
            url: refusal
                .url
                .as_deref()
                .map(|url| self.filled_in(url, &refusal)),
            count: refusal.count,
        };
        if refusal.desktop {
            self.send(refusal.uid, &notice);
        }
        if refusal.terminal {
            let line = notice.terminal_line();
            if let Err(error) =
                terminal::tell(refusal.pid, refusal.ppid, refusal.uid, line.as_bytes())
            {
                log::info!(
                    "no line on the terminal of pid {} (uid {}): {error}",
                    refusal.pid,
                    refusal.uid
                );
            }
        }
        self.folds.insert(
            key,
            Fold {
                until: now + FOLD_WINDOW,
                notice,
                desktop: refusal.desktop,
                unsent: 0,
            },
        );
    }

    /// `url` with its placeholders replaced; what cannot be found out reads `unknown`.
    fn filled_in(&mut self, url: &str, refusal: &Refusal) -> String {
        let mut url = url.replace("{rule}", &refusal.rule);
        if url.contains("{machine_id}") {
            let machine_id = self.machine_id.get_or_insert_with(|| {
                fs::read_to_string("/etc/machine-id")
                    .ok()
                    .map(|id| id.trim().to_owned())
                    .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()))
                    .unwrap_or_else(|| "unknown".to_owned())
            });
            url = url.replace("{machine_id}", machine_id);
        }
        if url.contains("{sha256}") {
            // The record's hash where it has one: no reading a file a user may have made large.
            let sha256 = refusal.sha256.clone().or_else(|| {
                scan::sha256_if_still(
                    &refusal.path,
                    &refusal.device,
                    refusal.inode,
                    u64::from(blocker_common::DEFAULT_HASH_LIMIT_MIB) << 20,
                    Instant::now() + HASH_DEADLINE,
                )
            });
            url = url.replace("{sha256}", sha256.as_deref().unwrap_or("unknown"));
        }
        url
    }

    fn send(&mut self, uid: u32, notice: &Notice) {
        let mut line = serde_json::to_vec(notice).expect("notices serialize");
        if line.len() >= MAX_NOTICE_BYTES {
            log::warn!(
                "a notice for uid {uid} of {} bytes is too long to send",
                escaped_bytes(&line[..64])
            );
            return;
        }
        line.push(b'\n');
        self.agents
            .retain_mut(|agent| agent.uid != uid || agent.send(&line));
    }
}

#[cfg(test)]
mod tests {
    use std::io::{BufRead, BufReader};

    use super::*;

    fn refusal(uid: u32, inode: u64) -> Refusal {
        Refusal {
            uid,
            pid: 0,
            ppid: 0,
            rule: "wechat".to_owned(),
            device: "254:1".to_owned(),
            inode,
            path: PathBuf::from("/opt/wechat/wechat"),
            sha256: None,
            action: "deny",
            text: "Not here.".to_owned(),
            url: Some("https://wiki.example/{rule}?id={machine_id}".to_owned()),
            desktop: true,
            terminal: false,
            count: 1,
        }
    }

    fn agent(dispatcher: &mut Dispatcher, uid: u32) -> BufReader<UnixStream> {
        let (ours, theirs) = UnixStream::pair().unwrap();
        ours.set_nonblocking(true).unwrap();
        dispatcher.admit(ours, uid);
        theirs
            .set_read_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        BufReader::new(theirs)
    }

    fn notices(reader: &mut BufReader<UnixStream>) -> Vec<Notice> {
        let mut found = Vec::new();
        let mut line = String::new();
        while reader.read_line(&mut line).is_ok_and(|read| read > 0) {
            found.push(serde_json::from_str(&line).unwrap());
            line.clear();
        }
        found
    }

    #[test]
    fn each_user_hears_of_their_own_refusals_and_repeats_are_folded() {
        let mut dispatcher = Dispatcher::default();
        let mut alice = agent(&mut dispatcher, 1000);
        let mut bob = agent(&mut dispatcher, 1001);
        let start = Instant::now();
        for _ in 0..100 {
            dispatcher.refused(refusal(1000, 7), start);
        }
        let told = notices(&mut alice);
        assert_eq!(told.len(), 1, "{told:?}");
        assert_eq!(told[0].count, 1);
        assert_eq!(
            told[0].url.as_deref().unwrap().split('?').next(),
            Some("https://wiki.example/wechat")
        );
        assert!(notices(&mut bob).is_empty());

        dispatcher.expire(start + FOLD_WINDOW);
        let folded = notices(&mut alice);
        assert_eq!(folded.len(), 1);
        assert_eq!((folded[0].count, &folded[0].key), (100, &told[0].key));
        dispatcher.expire(start + FOLD_WINDOW * 3);
        assert!(dispatcher.folds.is_empty(), "a quiet window is forgotten");
    }

    #[test]
    fn a_urls_hash_is_the_records_without_reading_the_file() {
        let mut dispatcher = Dispatcher::default();
        let mut hashed = refusal(1000, 7);
        hashed.sha256 = Some("ab".repeat(32));
        assert_eq!(
            dispatcher.filled_in("https://wiki.example/{rule}/{sha256}", &hashed),
            format!("https://wiki.example/wechat/{}", "ab".repeat(32))
        );
        assert_eq!(
            dispatcher.filled_in("https://wiki.example/{sha256}", &refusal(1000, 7)),
            "https://wiki.example/unknown",
            "no record hash, and no such file to hash"
        );
    }

    #[test]
    fn silent_rules_are_not_sent_and_one_user_cannot_fill_the_folds() {
        let mut dispatcher = Dispatcher::default();
        let mut alice = agent(&mut dispatcher, 1000);
        let now = Instant::now();
        let mut silent = refusal(1000, 1);
        silent.desktop = false;
        dispatcher.refused(silent, now);
        assert!(notices(&mut alice).is_empty());
        for inode in 0..(FOLDS_PER_USER as u64 + 10) {
            dispatcher.refused(refusal(1000, 100 + inode), now);
        }
        assert_eq!(dispatcher.folds.len(), FOLDS_PER_USER);
        dispatcher.refused(refusal(1001, 1), now);
        assert_eq!(dispatcher.folds.len(), FOLDS_PER_USER + 1);
    }

    #[test]
    fn an_agent_that_does_not_read_costs_a_bounded_buffer() {
        let mut dispatcher = Dispatcher::default();
        let _never_read = agent(&mut dispatcher, 1000);
        let now = Instant::now();
        for inode in 0..FOLDS_PER_USER as u64 {
            let mut long = refusal(1000, inode);
            long.text = "x".repeat(30_000);
            dispatcher.refused(long, now);
        }
        let agent = &dispatcher.agents[0];
        assert!(agent.unsent.len() <= AGENT_BUFFER_BYTES);
        assert!(agent.dropped > 0);
    }

    #[test]
    fn a_newer_agent_replaces_the_oldest_of_its_user() {
        let mut dispatcher = Dispatcher::default();
        let readers: Vec<_> = (0..=AGENTS_PER_USER)
            .map(|_| agent(&mut dispatcher, 1000))
            .collect();
        assert_eq!(dispatcher.agents.len(), AGENTS_PER_USER);
        drop(readers);
    }
}
