//! Who is logged in, for the `logged_in_users` and `current_sessions` of uploaded events: the
//! sessions systemd-logind keeps (`/run/systemd/sessions`) and the `USER_PROCESS` records of
//! utmp, for systems or logins logind does not see. Both are read when an upload is made, so an
//! event is given the sessions still open then that had begun by its exec; one that ended in
//! between is missed.

use std::{
    collections::BTreeSet,
    fs,
    io::Read,
    path::{Path, PathBuf},
    time::{Duration, SystemTime},
};

/// Where the sessions are read from.
pub struct SessionSources {
    pub logind_dir: PathBuf,
    pub utmp: PathBuf,
}

impl Default for SessionSources {
    fn default() -> Self {
        Self {
            logind_dir: PathBuf::from("/run/systemd/sessions"),
            utmp: PathBuf::from("/run/utmp"),
        }
    }
}

/// The reads are bounded: a session file is a few hundred bytes, a utmp record 384.
const MOST_SESSIONS: usize = 1024;
const SESSION_FILE_BYTES: u64 = 64 * 1024;
const UTMP_BYTES: u64 = 1 << 20;

/// One login: a user on a terminal or seat, since a time.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Session {
    pub user: String,
    /// The terminal (`tty2`, `pts/0`), else the seat, else logind's session id.
    pub place: String,
    pub since: SystemTime,
}

/// The sessions open now, from both sources, without repeats.
pub fn open_sessions(sources: &SessionSources) -> Vec<Session> {
    let mut sessions: BTreeSet<Session> = logind_sessions(&sources.logind_dir)
        .into_iter()
        .chain(utmp_sessions(&sources.utmp))
        .collect();
    // The same login seen by both sources differs at most in its start time.
    let mut seen = BTreeSet::new();
    sessions.retain(|session| seen.insert((session.user.clone(), session.place.clone())));
    sessions.into_iter().collect()
}

/// What Santa's Event calls `logged_in_users` and `current_sessions` (`user@place`) for an exec
/// at `time`.
pub fn at(sessions: &[Session], time: SystemTime) -> (Vec<String>, Vec<String>) {
    let began: Vec<&Session> = sessions
        .iter()
        .filter(|session| session.since <= time)
        .collect();
    let users: BTreeSet<&str> = began.iter().map(|session| session.user.as_str()).collect();
    (
        users.into_iter().map(str::to_owned).collect(),
        began
            .iter()
            .map(|session| format!("{}@{}", session.user, session.place))
            .collect(),
    )
}

fn read_bounded(path: &Path, limit: u64) -> Option<Vec<u8>> {
    let mut bytes = Vec::new();
    fs::File::open(path)
        .ok()?
        .take(limit)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}

/// logind's session files: `KEY=value` lines (`USER`, `TTY`, `SEAT`, `REALTIME` in
/// microseconds, `STATE`); sessions that are closing are left out.
fn logind_sessions(dir: &Path) -> Vec<Session> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    entries
        .flatten()
        .take(MOST_SESSIONS)
        .filter_map(|entry| {
            let text = read_bounded(&entry.path(), SESSION_FILE_BYTES)?;
            let text = String::from_utf8_lossy(&text);
            let value = |key: &str| {
                text.lines()
                    .find_map(|line| line.strip_prefix(key)?.strip_prefix('='))
                    .filter(|value| !value.is_empty())
            };
            if value("STATE") == Some("closing") {
                return None;
            }
            let place = value("TTY")
                .or_else(|| value("SEAT"))
                .map(str::to_owned)
                .unwrap_or_else(|| entry.file_name().to_string_lossy().into_owned());
            let since = value("REALTIME")
                .and_then(|micros| micros.parse().ok())
                .map_or(SystemTime::UNIX_EPOCH, |micros| {
                    SystemTime::UNIX_EPOCH + Duration::from_micros(micros)
                });
            Some(Session {
                user: value("USER")?.to_owned(),
                place,
                since,
            })
        })
        .collect()
}

/// The `USER_PROCESS` records of a utmp file, in this system's `struct utmpx` layout.
fn utmp_sessions(path: &Path) -> Vec<Session> {
    let Some(bytes) = read_bounded(path, UTMP_BYTES) else {
        return Vec::new();
    };
    bytes
        .chunks_exact(std::mem::size_of::<libc::utmpx>())
        .filter_map(|record| {
            // SAFETY: exactly one record's bytes; utmpx is plain integers and byte arrays, for
            // which every bit pattern is valid.
            let record: libc::utmpx = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
            if record.ut_type != libc::USER_PROCESS {
                return None;
            }
            let user = c_chars(&record.ut_user)?;
            let since = SystemTime::UNIX_EPOCH
                + Duration::from_secs(u64::try_from(record.ut_tv.tv_sec).unwrap_or(0));
            Some(Session {
                user,
                place: c_chars(&record.ut_line).unwrap_or_default(),
                since,
            })
        })
        .collect()
}

/// A fixed-size C field up to its first NUL; `None` if empty.
fn c_chars(field: &[libc::c_char]) -> Option<String> {
    let bytes: Vec<u8> = field
        .iter()
        .map(|&c| c as u8)
        .take_while(|&byte| byte != 0)
        .collect();
    (!bytes.is_empty()).then(|| String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utmp_record(kind: libc::c_short, user: &str, line: &str, since: i64) -> Vec<u8> {
        // SAFETY: every bit pattern, zeroes included, is a valid utmpx.
        let mut record: libc::utmpx = unsafe { std::mem::zeroed() };
        record.ut_type = kind;
        for (field, text) in [
            (&mut record.ut_user[..], user),
            (&mut record.ut_line[..], line),
        ] {
            for (slot, byte) in field.iter_mut().zip(text.bytes()) {
                *slot = byte as libc::c_char;
            }
        }
        record.ut_tv.tv_sec = since as _;
        // SAFETY: the bytes of a plain struct, read while it lives.
        unsafe {
            std::slice::from_raw_parts(
                std::ptr::from_ref(&record).cast::<u8>(),
                std::mem::size_of::<libc::utmpx>(),
            )
        }
        .to_vec()
    }

    fn time(secs: u64) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(secs)
    }

    #[test]
    fn sessions_come_from_logind_and_utmp_once_each() {
        let dir = tempfile::tempdir().unwrap();
        let logind = dir.path().join("sessions");
        fs::create_dir(&logind).unwrap();
        fs::write(
            logind.join("2"),
            "# This is private data. Do not parse.\nUID=1000\nUSER=alice\nACTIVE=1\n\
             STATE=active\nTTY=tty2\nSEAT=seat0\nREALTIME=1000000000\n",
        )
        .unwrap();
        fs::write(
            logind.join("c1"),
            "UID=1001\nUSER=bob\nSTATE=online\nREALTIME=3000000000\n",
        )
        .unwrap();
        fs::write(
            logind.join("7"),
            "UID=1002\nUSER=carol\nSTATE=closing\nTTY=pts/4\nREALTIME=1\n",
        )
        .unwrap();
        fs::write(logind.join("broken"), "UID=5\n").unwrap();
        let utmp = dir.path().join("utmp");
        let mut records = utmp_record(libc::USER_PROCESS, "alice", "tty2", 999);
        records.extend(utmp_record(libc::USER_PROCESS, "dave", "pts/1", 2000));
        records.extend(utmp_record(libc::DEAD_PROCESS, "erin", "pts/2", 10));
        records.extend(utmp_record(libc::LOGIN_PROCESS, "LOGIN", "tty1", 10));
        records.extend([0; 7]);
        fs::write(&utmp, records).unwrap();

        let sessions = open_sessions(&SessionSources {
            logind_dir: logind,
            utmp,
        });
        let (users, places) = at(&sessions, time(2500));
        assert_eq!(users, ["alice", "dave"], "{sessions:?}");
        assert_eq!(places, ["alice@tty2", "dave@pts/1"]);
        let (users, places) = at(&sessions, time(4000));
        assert_eq!(users, ["alice", "bob", "dave"]);
        assert_eq!(places, ["alice@tty2", "bob@c1", "dave@pts/1"]);
        assert_eq!(at(&sessions, time(0)), (vec![], vec![]));
    }

    #[test]
    fn missing_sources_mean_no_sessions() {
        let sessions = open_sessions(&SessionSources {
            logind_dir: PathBuf::from("/nonexistent/sessions"),
            utmp: PathBuf::from("/nonexistent/utmp"),
        });
        assert!(sessions.is_empty());
    }
}
