//! Event upload. The daemon's events file (JSON lines, rotated, rotated files holding denials
//! kept longest) is the spool: nothing is copied. An upload cursor in the sync state says how
//! far denials were delivered: the events file (by device and inode, which rotation's renames
//! keep) and the bytes of it read. Denials after it go up in batches of the server's batch
//! size, and the cursor moves past a batch only once the server accepted it: delivery is at
//! least once, across restarts and outages, for as long as rotation keeps the files.

use std::{
    collections::HashMap,
    fs,
    io::{self, Read, Seek, SeekFrom},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime},
};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};

use super::{
    client::Client,
    protocol::Stage,
    rules::POLICY_NAME,
    sessions::{self, Session, SessionSources},
};
use crate::{ecs, policy, scan, sinks};

/// The most denials one sync uploads; the rest wait for the next.
const MAX_EVENTS_PER_SYNC: usize = 10_000;

/// A denied file is hashed for its event only up to the policies' default hash limit, and for
/// at most this long: a user can make a banned path a huge or slow file, which must not hold
/// up the sync. Beyond either, the event goes without a hash.
const HASH_LIMIT_BYTES: u64 = (blocker_common::DEFAULT_HASH_LIMIT_MIB as u64) << 20;
const HASH_DEADLINE: Duration = Duration::from_secs(10);

/// How far denials were delivered.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UploadCursor {
    /// Device and inode of the events file read up to `offset`.
    pub file: Option<(u64, u64)>,
    /// Bytes of whole lines of that file read.
    pub offset: u64,
    /// When the last uploaded denial happened: where reading resumes if rotation deleted the
    /// cursor's file.
    pub last_time: Option<String>,
    /// How many times rotation deleted the cursor's file before the sync read past it: each
    /// time, denials may have been dropped undelivered.
    pub files_lost: u64,
}

/// A denial to upload, with where in the spool it ends.
struct Pending {
    file: (u64, u64),
    end: u64,
    record: Value,
}

/// What reading the spool found past the cursor.
struct Spool {
    denials: Vec<Pending>,
    /// Where everything read ends: the cursor once every denial is delivered.
    end: Option<((u64, u64), u64)>,
    /// Whether more denials wait than one sync takes.
    more: bool,
}

/// Uploads the denials after `cursor` in `events_file` in batches of `batch_size`, moving the
/// cursor after each accepted batch. How many were uploaded.
pub fn upload(
    client: &Client,
    machine_id: &str,
    events_file: &Path,
    policy_dir: &Path,
    batch_size: usize,
    cursor: &mut UploadCursor,
) -> Result<usize> {
    let spool = read_spool(events_file, cursor).context("eventupload: reading the events")?;
    if spool.denials.is_empty() {
        if let Some((file, offset)) = spool.end {
            cursor.file = Some(file);
            cursor.offset = offset;
        }
        return Ok(0);
    }
    let decisions = Decisions::of(policy_dir);
    let mut facts = Facts::default();
    let mut uploaded = 0;
    for batch in spool.denials.chunks(batch_size.max(1)) {
        let events: Vec<Value> = batch
            .iter()
            .map(|pending| santa_event(&pending.record, &decisions, &mut facts))
            .collect();
        client.post(
            Stage::EventUpload,
            &json!({ "events": events, "machine_id": machine_id }),
        )?;
        let last = batch.last().expect("chunks are not empty");
        cursor.file = Some(last.file);
        cursor.offset = last.end;
        cursor.last_time = last.record["time"].as_str().map(str::to_owned);
        uploaded += batch.len();
    }
    if !spool.more {
        if let Some((file, offset)) = spool.end {
            cursor.file = Some(file);
            cursor.offset = offset;
        }
    }
    Ok(uploaded)
}

/// The denials after `cursor`, oldest first, at most [`MAX_EVENTS_PER_SYNC`]. Counts the
/// cursor's file as lost (in `cursor`) if rotation deleted it.
fn read_spool(events_file: &Path, cursor: &mut UploadCursor) -> io::Result<Spool> {
    let mut files: Vec<PathBuf> = match sinks::rotated_paths_oldest_first(events_file) {
        Ok(files) => files,
        // No events directory: no daemon wrote events here yet.
        Err(error) if error.kind() == io::ErrorKind::NotFound => Vec::new(),
        Err(error) => return Err(error),
    };
    files.push(events_file.to_owned());
    let mut present = Vec::new();
    for path in files {
        match fs::metadata(&path) {
            Ok(metadata) => present.push((path, (metadata.dev(), metadata.ino()))),
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error),
        }
    }
    let resume_at = cursor
        .file
        .and_then(|file| present.iter().position(|(_, identity)| *identity == file));
    let (start, mut offset, after) = match (cursor.file, resume_at) {
        (_, Some(index)) => (index, cursor.offset, None),
        (None, None) => (0, 0, None),
        (Some(_), None) => {
            cursor.files_lost += 1;
            let after = cursor
                .last_time
                .as_deref()
                .and_then(|time| humantime::parse_rfc3339(time).ok());
            (0, 0, after)
        }
    };
    let mut spool = Spool {
        denials: Vec::new(),
        end: None,
        more: false,
    };
    for (path, identity) in &present[start..] {
        let mut file = match fs::File::open(path) {
            Ok(file) => file,
            // Rotated away since listed: its denials, if any, are gone.
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        if file.metadata()?.len() < offset {
            // Truncated since: what it holds now was written after.
            offset = 0;
        }
        file.seek(SeekFrom::Start(offset))?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let mut end = offset;
        for line in bytes.split_inclusive(|&byte| byte == b'\n') {
            if !line.ends_with(b"\n") {
                // Still being written.
                break;
            }
            end += line.len() as u64;
            if !sinks::is_denial(line) {
                continue;
            }
            let Ok(record) = serde_json::from_slice::<Value>(line) else {
                continue;
            };
            // The daemon may write ECS documents (`--events-format ecs`).
            let record = ecs::record_of_line(record);
            if !is_after(&record, after) {
                continue;
            }
            if spool.denials.len() == MAX_EVENTS_PER_SYNC {
                spool.more = true;
                return Ok(spool);
            }
            spool.denials.push(Pending {
                file: *identity,
                end,
                record,
            });
        }
        spool.end = Some((*identity, end));
        offset = 0;
    }
    Ok(spool)
}

fn is_after(record: &Value, after: Option<SystemTime>) -> bool {
    let Some(after) = after else {
        return true;
    };
    record["time"]
        .as_str()
        .and_then(|time| humantime::parse_rfc3339(time).ok())
        .is_none_or(|time| time > after)
}

/// Which Santa decision a denial of each rule is: `BLOCK_BINARY` for a rule that names
/// contents only (every synced rule), `BLOCK_SCOPE` for one that names files by where they are
/// or what installed them (paths, globs, packages, apps) and for policy-wide settings.
struct Decisions {
    content_rules: HashMap<String, bool>,
}

impl Decisions {
    fn of(policy_dir: &Path) -> Self {
        let content_rules = policy::load_dir(policy_dir)
            .map(|policy| {
                policy
                    .rules
                    .into_iter()
                    .map(|rule| {
                        let identifiers = &rule.identifiers;
                        let content_only = identifiers.needs_scan()
                            && identifiers.paths.is_empty()
                            && identifiers.path_prefixes.is_empty()
                            && identifiers.globs.is_empty()
                            && identifiers.packages.is_empty()
                            && identifiers.flatpak.is_empty()
                            && identifiers.snap.is_empty();
                        (rule.id, content_only)
                    })
                    .collect()
            })
            .unwrap_or_default();
        Self { content_rules }
    }

    fn of_record(&self, record: &Value) -> &'static str {
        let content = record["policy"] == POLICY_NAME
            || record["rule"]
                .as_str()
                .and_then(|rule| self.content_rules.get(rule))
                .is_some_and(|&content| content);
        if content {
            "BLOCK_BINARY"
        } else {
            "BLOCK_SCOPE"
        }
    }
}

/// User names, file hashes and logins, looked up once per upload.
struct Facts {
    users: Option<HashMap<u64, String>>,
    hashes: HashMap<(String, u64), Option<String>>,
    hash_limit_bytes: u64,
    session_sources: SessionSources,
    sessions: Option<Vec<Session>>,
}

impl Default for Facts {
    fn default() -> Self {
        Self {
            users: None,
            hashes: HashMap::new(),
            hash_limit_bytes: HASH_LIMIT_BYTES,
            session_sources: SessionSources::default(),
            sessions: None,
        }
    }
}

impl Facts {
    /// Santa's `logged_in_users` and `current_sessions` for an exec at `time`.
    fn sessions_at(&mut self, time: SystemTime) -> (Vec<String>, Vec<String>) {
        let sources = &self.session_sources;
        sessions::at(
            self.sessions
                .get_or_insert_with(|| sessions::open_sessions(sources)),
            time,
        )
    }

    fn user(&mut self, uid: u64) -> String {
        let users = self.users.get_or_insert_with(|| {
            fs::read_to_string("/etc/passwd")
                .unwrap_or_default()
                .lines()
                .filter_map(|line| {
                    let mut fields = line.split(':');
                    let name = fields.next()?;
                    let uid = fields.nth(1)?.parse().ok()?;
                    Some((uid, name.to_owned()))
                })
                .collect()
        });
        users.get(&uid).cloned().unwrap_or_else(|| uid.to_string())
    }

    /// The SHA-256 of the denied file, if its path still leads to it (same device and inode)
    /// and it can be read within the limits.
    fn sha256(&mut self, path: &str, device: &str, inode: u64) -> Option<String> {
        let limit = self.hash_limit_bytes;
        self.hashes
            .entry((device.to_owned(), inode))
            .or_insert_with(|| {
                scan::sha256_if_still(
                    Path::new(path),
                    device,
                    inode,
                    limit,
                    Instant::now() + HASH_DEADLINE,
                )
            })
            .clone()
    }
}

/// A denial as the Event of Santa's sync protocol.
fn santa_event(record: &Value, decisions: &Decisions, facts: &mut Facts) -> Value {
    let path = record["path"].as_str().unwrap_or_default();
    let (directory, name) = match path.rsplit_once('/') {
        Some(("", name)) => ("/", name),
        Some((directory, name)) => (directory, name),
        None => ("", path),
    };
    let executed_at = record["time"]
        .as_str()
        .and_then(|time| humantime::parse_rfc3339(time).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH);
    let execution_time = executed_at
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0.0, |since| since.as_secs_f64());
    let (logged_in_users, current_sessions) = facts.sessions_at(executed_at);
    // The hash the kernel's content check computed for this decision; otherwise the file as
    // it is now, if it is still the one denied.
    let sha256 = match record["sha256"].as_str() {
        Some(computed) => Some(computed.to_owned()),
        None => facts.sha256(
            path,
            record["device"].as_str().unwrap_or_default(),
            record["inode"].as_u64().unwrap_or_default(),
        ),
    };
    json!({
        "file_sha256": sha256.unwrap_or_default(),
        "file_path": directory,
        "file_name": name,
        "executing_user": facts.user(record["uid"].as_u64().unwrap_or(u64::MAX)),
        "execution_time": execution_time,
        "logged_in_users": logged_in_users,
        "current_sessions": current_sessions,
        "decision": decisions.of_record(record),
        "pid": record["pid"],
        "ppid": record["ppid"],
        // The process that called exec, under the name of the program it ran before: the
        // program that started the denied one.
        "parent_name": record["comm"],
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn denial(n: u64) -> String {
        format!(
            "{{\"kind\":\"exec\",\"action\":\"deny\",\"time\":\"2026-11-30T10:00:{n:02}Z\",\
             \"rule\":\"ban\",\"policy\":\"local\",\"path\":\"/opt/x{n}\",\"device\":\"0:0\",\
             \"inode\":{n},\"pid\":{n},\"ppid\":1,\"uid\":0,\"comm\":\"sh\"}}\n"
        )
    }

    const AUDIT: &str =
        "{\"kind\":\"exec\",\"action\":\"audit\",\"time\":\"2026-11-30T10:00:00Z\"}\n";

    #[test]
    fn the_spool_is_read_past_the_cursor_across_rotation() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events.jsonl");
        fs::write(&events, format!("{}{AUDIT}{}", denial(1), denial(2))).unwrap();
        let mut cursor = UploadCursor::default();
        let spool = read_spool(&events, &mut cursor).unwrap();
        assert_eq!(spool.denials.len(), 2);
        let (file, end) = spool.end.unwrap();
        cursor.file = Some(file);
        cursor.offset = end;

        // Rotated, and a new file begun, with a line still being written.
        fs::rename(&events, sinks::rotated_path(&events, 1)).unwrap();
        fs::write(&events, format!("{}{{\"kind\":", denial(3))).unwrap();
        let spool = read_spool(&events, &mut cursor).unwrap();
        let paths: Vec<_> = spool
            .denials
            .iter()
            .map(|d| d.record["path"].clone())
            .collect();
        assert_eq!(paths, [json!("/opt/x3")]);
        assert_eq!(spool.end.unwrap().1, denial(3).len() as u64);
        assert_eq!(cursor.files_lost, 0);

        // The cursor's file deleted: counted, and reading resumes after the last delivered.
        cursor.last_time = Some("2026-11-30T10:00:01Z".to_owned());
        fs::remove_file(sinks::rotated_path(&events, 1)).unwrap();
        fs::write(&events, format!("{}{}", denial(1), denial(3))).unwrap();
        let spool = read_spool(&events, &mut cursor).unwrap();
        assert_eq!(cursor.files_lost, 1);
        assert_eq!(spool.denials.len(), 1);
    }

    #[test]
    fn denials_written_as_ecs_documents_are_uploaded_as_the_records_they_were() {
        let dir = tempfile::tempdir().unwrap();
        let events = dir.path().join("events.jsonl");
        let host = ecs::Host::this();
        let mut lines = Vec::new();
        for record in ecs::tests::every_kind() {
            ecs::write_document(&record, &host, &mut lines);
            lines.push(b'\n');
        }
        fs::write(&events, &lines).unwrap();
        let spool = read_spool(&events, &mut UploadCursor::default()).unwrap();
        let denials: Vec<&Value> = spool.denials.iter().map(|d| &d.record).collect();
        assert!(!denials.is_empty(), "{}", String::from_utf8_lossy(&lines));
        for denial in denials {
            assert_eq!(denial["kind"], "exec");
            assert_eq!(denial["action"], "deny");
            assert_eq!(denial["rule"], "wechat");
            assert!(
                denial["path"].is_string() && denial["inode"].is_u64(),
                "{denial}"
            );
        }
    }

    #[test]
    fn no_events_directory_is_no_denials() {
        let dir = tempfile::tempdir().unwrap();
        let mut cursor = UploadCursor::default();
        let spool = read_spool(&dir.path().join("missing/events.jsonl"), &mut cursor).unwrap();
        assert!(spool.denials.is_empty() && spool.end.is_none());
    }

    #[test]
    fn a_denied_file_too_large_or_no_longer_the_denied_one_goes_without_a_hash() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("banned");
        fs::write(&path, b"small").unwrap();
        let metadata = fs::metadata(&path).unwrap();
        let key = crate::identity::FileIdentity::of_path(&path).unwrap().key;
        let device = crate::identity::device_text(key.dev);
        let text = path.to_str().unwrap();
        let mut facts = Facts {
            hash_limit_bytes: 4,
            ..Facts::default()
        };
        assert_eq!(
            facts.sha256(text, &device, metadata.ino()),
            None,
            "over the limit"
        );
        let mut facts = Facts::default();
        assert!(facts.sha256(text, &device, metadata.ino()).is_some());
        let mut facts = Facts::default();
        assert_eq!(
            facts.sha256(text, &device, metadata.ino() + 1),
            None,
            "another inode at the path"
        );
        std::os::unix::fs::symlink("/dev/zero", dir.path().join("zero")).unwrap();
        let zero = dir.path().join("zero");
        assert_eq!(
            facts.sha256(zero.to_str().unwrap(), &device, metadata.ino()),
            None,
            "not a regular file"
        );
    }

    #[test]
    fn denials_become_santa_events() {
        let decisions = Decisions {
            content_rules: HashMap::from([("ban".to_owned(), false), ("hash".to_owned(), true)]),
        };
        let mut record: Value = serde_json::from_str(&denial(5)).unwrap();
        let event = santa_event(&record, &decisions, &mut Facts::default());
        assert_eq!(event["decision"], "BLOCK_SCOPE");
        assert_eq!(event["file_path"], "/opt");
        assert_eq!(event["file_name"], "x5");
        assert_eq!(event["executing_user"], "root");
        assert_eq!(event["file_sha256"], "", "no file there");
        assert_eq!(event["execution_time"], 1_796_032_805.0);
        assert_eq!(event["parent_name"], "sh");
        record["rule"] = json!("hash");
        assert_eq!(
            santa_event(&record, &decisions, &mut Facts::default())["decision"],
            "BLOCK_BINARY"
        );
        record["rule"] = json!("santa-blocklist");
        record["policy"] = json!(POLICY_NAME);
        assert_eq!(
            santa_event(&record, &decisions, &mut Facts::default())["decision"],
            "BLOCK_BINARY"
        );
        let computed = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";
        record["sha256"] = json!(computed);
        assert_eq!(
            santa_event(&record, &decisions, &mut Facts::default())["file_sha256"],
            computed,
            "the kernel's hash, though the file is gone"
        );

        let logins = tempfile::tempdir().unwrap();
        std::fs::write(
            logins.path().join("3"),
            "USER=alice\nTTY=tty2\nREALTIME=1796032800000000\n",
        )
        .unwrap();
        std::fs::write(
            logins.path().join("4"),
            "USER=bob\nTTY=pts/0\nREALTIME=1796032900000000\n",
        )
        .unwrap();
        let mut facts = Facts {
            session_sources: SessionSources {
                logind_dir: logins.path().to_owned(),
                utmp: logins.path().join("no-utmp"),
            },
            ..Facts::default()
        };
        let event = santa_event(&record, &decisions, &mut facts);
        assert_eq!(event["logged_in_users"], json!(["alice"]), "bob came later");
        assert_eq!(event["current_sessions"], json!(["alice@tty2"]));
    }
}
