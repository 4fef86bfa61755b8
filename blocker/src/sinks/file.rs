//! The events file: JSON lines, readable by root only, rotated by size like logrotate does
//! (`events.jsonl` → `events.jsonl.1` → `.2` ..., the highest number the oldest).
//!
//! Rotation never lets a flood of other records push out the only copy of a denial: the file
//! about to fall out of the newest `keep` is deleted only if it holds no denial (an exec record
//! whose rule said `deny`); one that does is kept, beyond `keep`, until `keep_denials` newer
//! such files are kept too. A user who can make the daemon write audit or tamper records as
//! fast as they like can therefore erase nothing but such records; only denials push out
//! denials. The files stay one chain, oldest highest, so readers need not know; the disk used
//! is at most `(1 + keep + keep_denials) × max_bytes`.

use crate::escape::escaped;
use std::{
    fs::{DirBuilder, File, OpenOptions},
    io::{self, BufRead, BufReader, Write},
    os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt},
    path::{Path, PathBuf},
    sync::Arc,
};

use anyhow::{Context, Result};
use serde::Deserialize;

use super::{
    queue::{Sink, Unwritten},
    Emitted,
};

pub const DEFAULT_PATH: &str = "/var/log/blocker/events.jsonl";
pub const DEFAULT_MAX_BYTES: u64 = 16 * 1024 * 1024;
pub const DEFAULT_KEEP: u32 = 5;
pub const DEFAULT_KEEP_DENIALS: u32 = 20;

#[derive(Clone, Debug)]
pub struct FileOptions {
    pub path: PathBuf,
    /// A line that would take the file past this size goes into a new file.
    pub max_bytes: u64,
    /// Rotated files kept besides the current one.
    pub keep: u32,
    /// Rotated files holding denials kept beyond `keep`, the oldest deleted first.
    pub keep_denials: u32,
}

impl FileOptions {
    /// `path`, rotated as the daemon rotates it by default.
    pub fn defaults(path: PathBuf) -> Self {
        Self {
            path,
            max_bytes: DEFAULT_MAX_BYTES,
            keep: DEFAULT_KEEP,
            keep_denials: DEFAULT_KEEP_DENIALS,
        }
    }
}

pub struct EventsFile {
    options: FileOptions,
    file: File,
    /// Device and inode of `file`, to notice it being moved away or deleted by someone else.
    identity: (u64, u64),
    size: u64,
    /// Lines of the batch being written, gathered so that a burst costs one write.
    pending: Vec<u8>,
}

impl EventsFile {
    /// Opens (or creates, mode 0600, in a directory created 0700) the events file.
    pub fn open(options: FileOptions) -> Result<Self> {
        let (file, identity, size) = open_for_appending(&options.path).with_context(|| {
            format!(
                "opening the events file {} (choose another with --events-file PATH, or \
                     turn it off with --no-events-file)",
                escaped(&options.path)
            )
        })?;
        Ok(Self {
            options,
            file,
            identity,
            size,
            pending: Vec::new(),
        })
    }

    /// Writes the lines gathered in `pending` with one system call: readers following the file
    /// never see half a record, unless the disk fills up in the middle of one.
    fn write_pending(&mut self) -> io::Result<()> {
        self.file.write_all(&self.pending)?;
        self.size += self.pending.len() as u64;
        self.pending.clear();
        Ok(())
    }

    /// Rotates unless a line of `length` bytes fits in the file after all.
    fn rotate_unless_room_for(&mut self, length: u64) -> io::Result<()> {
        // Someone may have truncated it (logrotate's copytruncate): trust the file.
        self.size = self.file.metadata()?.len();
        if self.size > 0 && self.size + length > self.options.max_bytes {
            self.rotate()?;
        }
        Ok(())
    }

    /// Whether the path no longer names the file being written (renamed or deleted by
    /// logrotate or an administrator).
    fn moved_away(&self) -> io::Result<bool> {
        match std::fs::symlink_metadata(&self.options.path) {
            Ok(metadata) => Ok((metadata.dev(), metadata.ino()) != self.identity),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(error) => Err(error),
        }
    }

    fn reopen(&mut self) -> io::Result<()> {
        (self.file, self.identity, self.size) = open_for_appending(&self.options.path)?;
        Ok(())
    }

    /// Renames the file to `.1`, shifting the rotated files up, and starts a new one. The file
    /// that would become `.keep + 1` is deleted unless it holds a denial; then the files beyond
    /// `keep` are those holding denials, of which the newest `keep_denials` stay.
    fn rotate(&mut self) -> io::Result<()> {
        let path = &self.options.path;
        let (keep, keep_denials) = (self.options.keep, self.options.keep_denials);
        let numbers = rotated_numbers(path)?;
        let leaving = numbered_path(path, keep);
        let leaving_exists = keep == 0 || numbers.contains(&keep);
        let shifted = if leaving_exists && !holds_denials(&leaving) {
            std::fs::remove_file(&leaving)?;
            numbers
                .into_iter()
                .filter(|&number| number < keep)
                .collect()
        } else {
            numbers
        };
        for &number in shifted.iter().rev() {
            std::fs::rename(rotated_path(path, number), rotated_path(path, number + 1))?;
        }
        rename_if_present(path, &rotated_path(path, 1))?;
        let beyond_keep = rotated_numbers(path)?
            .into_iter()
            .filter(|&number| number > keep);
        for number in beyond_keep.skip(keep_denials as usize) {
            std::fs::remove_file(rotated_path(path, number))?;
        }
        self.reopen()
    }
}

/// The events file for `0`, else its rotated file `number`.
fn numbered_path(path: &Path, number: u32) -> PathBuf {
    if number == 0 {
        path.to_owned()
    } else {
        rotated_path(path, number)
    }
}

/// Whether the file holds a denial. One that cannot be read counts as holding one: what it
/// holds is unknown, and keeping it costs only disk.
fn holds_denials(path: &Path) -> bool {
    let Ok(file) = File::open(path) else {
        return true;
    };
    let mut lines = BufReader::new(file).split(b'\n');
    lines.any(|line| line.map_or(true, |line| is_denial(&line)))
}

/// Whether a line of the events file is an exec record of a `deny` rule, in either format
/// (an ECS document has the record's kind and action under `blocker`).
pub fn is_denial(line: &[u8]) -> bool {
    #[derive(Deserialize)]
    struct Kind<'a> {
        kind: Option<&'a str>,
        action: Option<&'a str>,
        #[serde(borrow)]
        blocker: Option<Box<Kind<'a>>>,
    }
    serde_json::from_slice::<Kind>(line).is_ok_and(|line| {
        let record = line.blocker.as_deref().unwrap_or(&line);
        record.kind == Some("exec") && record.action == Some("deny")
    })
}

impl Sink for EventsFile {
    /// The whole batch with one write, unless it crosses the size at which the file rotates;
    /// whether someone moved the file away is asked once per batch.
    fn write(&mut self, records: &[Arc<Emitted>]) -> Result<(), Unwritten> {
        self.pending.clear();
        match self.moved_away() {
            Ok(false) => {}
            Ok(true) => self.reopen().map_err(Unwritten::nothing)?,
            Err(error) => return Err(Unwritten::nothing(error)),
        }
        let mut first_pending = 0;
        for (index, record) in records.iter().enumerate() {
            let length = record.json_line.len() as u64;
            let size = self.size + self.pending.len() as u64;
            if size > 0 && size + length > self.options.max_bytes {
                let unwritten = |written| move |error| Unwritten { written, error };
                self.write_pending().map_err(unwritten(first_pending))?;
                first_pending = index;
                self.rotate_unless_room_for(length)
                    .map_err(unwritten(first_pending))?;
            }
            self.pending.extend_from_slice(&record.json_line);
        }
        self.write_pending().map_err(|error| Unwritten {
            written: first_pending,
            error,
        })
    }
}

/// `events.jsonl.N`.
pub fn rotated_path(path: &Path, number: u32) -> PathBuf {
    let mut name = path.as_os_str().to_owned();
    name.push(format!(".{number}"));
    PathBuf::from(name)
}

/// The rotated files that exist, oldest (highest number) first.
pub fn rotated_paths_oldest_first(path: &Path) -> io::Result<Vec<PathBuf>> {
    let numbers = rotated_numbers(path)?;
    Ok(numbers
        .into_iter()
        .rev()
        .map(|number| rotated_path(path, number))
        .collect())
}

/// The numbers of the rotated files that exist, lowest (newest) first.
fn rotated_numbers(path: &Path) -> io::Result<Vec<u32>> {
    let Some(name) = path.file_name().and_then(|name| name.to_str()) else {
        return Ok(Vec::new());
    };
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    let prefix = format!("{name}.");
    let mut numbers = Vec::new();
    for entry in std::fs::read_dir(directory)? {
        let entry_name = entry?.file_name();
        let number = entry_name
            .to_str()
            .and_then(|entry_name| entry_name.strip_prefix(&prefix))
            .filter(|digits| !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|digits| digits.parse::<u32>().ok());
        numbers.extend(number);
    }
    numbers.sort_unstable();
    Ok(numbers)
}

fn rename_if_present(from: &Path, to: &Path) -> io::Result<()> {
    match std::fs::rename(from, to) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(()),
        other => other,
    }
}

fn open_for_appending(path: &Path) -> io::Result<(File, (u64, u64), u64)> {
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)?;
    }
    // Events say who ran what: readable by root only. O_NOFOLLOW: a symlink planted at the
    // path must not make root append to some other file.
    let file = OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?;
    let metadata = file.metadata()?;
    Ok((file, (metadata.dev(), metadata.ino()), metadata.len()))
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;
    use crate::events::{
        self, Caller, Circumstances, Enforcement, ExecRecord, Record, TamperRecord,
    };
    use crate::sinks::Encoding;

    impl EventsFile {
        fn write_record(&mut self, record: Record) -> Result<(), Unwritten> {
            self.write(&[Emitted::new(record, &Encoding::Blocker)])
        }
    }

    fn reloaded(rules: usize) -> Record {
        Record::Reloaded {
            time: events::now_rfc3339(),
            policies: vec!["test".to_owned()],
            rules,
            entries: 0,
        }
    }

    fn line_length() -> u64 {
        serde_json::to_string(&reloaded(0)).unwrap().len() as u64 + 1
    }

    fn rules_in(path: &Path) -> Vec<u64> {
        std::fs::read_to_string(path)
            .unwrap()
            .lines()
            .map(|line| {
                serde_json::from_str::<serde_json::Value>(line).unwrap()["rules"]
                    .as_u64()
                    .unwrap()
            })
            .collect()
    }

    #[test]
    fn created_readable_by_root_only_in_a_private_directory() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("log/blocker/events.jsonl");
        let mut file = EventsFile::open(FileOptions::defaults(path.clone())).unwrap();
        file.write_record(reloaded(1)).unwrap();
        let mode = |path: &Path| std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&path), 0o600);
        assert_eq!(mode(path.parent().unwrap()), 0o700);
        assert_eq!(rules_in(&path), [1]);
    }

    #[test]
    fn lines_are_the_records_json_and_appended_to_what_is_there() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("events.jsonl");
        let options = FileOptions::defaults(path.clone());
        let first = Emitted::new(reloaded(1), &Encoding::Blocker);
        EventsFile::open(options.clone())
            .unwrap()
            .write(std::slice::from_ref(&first))
            .unwrap();
        EventsFile::open(options)
            .unwrap()
            .write_record(reloaded(2))
            .unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(
            text.lines().next().unwrap(),
            serde_json::to_string(&first.record).unwrap()
        );
        assert_eq!(rules_in(&path), [1, 2]);
    }

    #[test]
    fn rotates_by_size_keeping_the_newest_files() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("events.jsonl");
        // Two lines per file.
        let mut file = EventsFile::open(FileOptions {
            path: path.clone(),
            max_bytes: 2 * line_length(),
            keep: 2,
            keep_denials: DEFAULT_KEEP_DENIALS,
        })
        .unwrap();
        for rules in 0..7 {
            file.write_record(reloaded(rules)).unwrap();
        }
        assert_eq!(rules_in(&path), [6]);
        assert_eq!(rules_in(&rotated_path(&path, 1)), [4, 5]);
        assert_eq!(rules_in(&rotated_path(&path, 2)), [2, 3]);
        assert!(!rotated_path(&path, 3).exists(), "only two are kept");
        assert_eq!(
            rotated_paths_oldest_first(&path).unwrap(),
            [rotated_path(&path, 2), rotated_path(&path, 1)]
        );
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600, "a new file after rotation is private too");
    }

    #[test]
    fn a_batch_is_cut_where_the_file_rotates_as_single_records_are() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("events.jsonl");
        let mut file = EventsFile::open(FileOptions {
            path: path.clone(),
            max_bytes: 2 * line_length(),
            keep: 3,
            keep_denials: DEFAULT_KEEP_DENIALS,
        })
        .unwrap();
        file.write_record(reloaded(0)).unwrap();
        let batch: Vec<_> = (1..7)
            .map(|rules| Emitted::new(reloaded(rules), &Encoding::Blocker))
            .collect();
        file.write(&batch).unwrap();
        assert_eq!(rules_in(&path), [6]);
        assert_eq!(rules_in(&rotated_path(&path, 1)), [4, 5]);
        assert_eq!(rules_in(&rotated_path(&path, 2)), [2, 3]);
        assert_eq!(rules_in(&rotated_path(&path, 3)), [0, 1]);
    }

    #[test]
    fn keeping_none_starts_over_and_a_line_longer_than_the_limit_still_goes_in() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("events.jsonl");
        let mut file = EventsFile::open(FileOptions {
            path: path.clone(),
            max_bytes: 1,
            keep: 0,
            keep_denials: 0,
        })
        .unwrap();
        file.write_record(reloaded(1)).unwrap();
        file.write_record(reloaded(2)).unwrap();
        assert_eq!(rules_in(&path), [2]);
        assert!(rotated_paths_oldest_first(&path).unwrap().is_empty());
    }

    #[test]
    fn follows_the_path_when_someone_else_moves_or_truncates_the_file() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("events.jsonl");
        let mut file = EventsFile::open(FileOptions {
            path: path.clone(),
            max_bytes: 2 * line_length(),
            keep: 1,
            keep_denials: DEFAULT_KEEP_DENIALS,
        })
        .unwrap();
        file.write_record(reloaded(1)).unwrap();
        let moved = temp.path().join("moved");
        std::fs::rename(&path, &moved).unwrap();
        file.write_record(reloaded(2)).unwrap();
        assert_eq!(rules_in(&moved), [1]);
        assert_eq!(rules_in(&path), [2]);

        file.write_record(reloaded(3)).unwrap();
        std::fs::File::create(&path).unwrap();
        // The file is empty again: two more lines fit without rotating.
        file.write_record(reloaded(4)).unwrap();
        file.write_record(reloaded(5)).unwrap();
        assert_eq!(rules_in(&path), [4, 5]);
        assert!(!rotated_path(&path, 1).exists());
    }

    const TIME: &str = "2026-11-28T08:39:20.546048089Z";

    fn exec(rule: usize, action: &'static str) -> Record {
        Record::Exec(ExecRecord {
            time: TIME.to_owned(),
            action,
            enforcement: if action == "deny" {
                Enforcement::Eperm
            } else {
                Enforcement::None
            },
            backend: "lsm",
            operation: "exec",
            rule: rule.to_string(),
            policy: "test".to_owned(),
            reason: None,
            url: None,
            caller: caller(),
            path: "/opt/wechat/wechat".to_owned(),
            path_hex: None,
            path_truncated: false,
            device: "254:1".to_owned(),
            inode: 42,
            sha256: None,
            untrusted_path: None,
            circumstances: Circumstances::default(),
            telling: Default::default(),
        })
    }

    fn tamper() -> Record {
        Record::Tamper(TamperRecord {
            time: TIME.to_owned(),
            attempt: "file_change",
            detail: "chmod".to_owned(),
            path: "/usr/sbin/blocker".to_owned(),
            path_hex: None,
            device: "254:1".to_owned(),
            inode: 7,
            circumstances: Circumstances::default(),
            caller: caller(),
        })
    }

    fn caller() -> Caller {
        Caller {
            pid: 9900,
            tid: 9900,
            ppid: 1,
            uid: 1000,
            gid: 1000,
            comm: "bash".to_owned(),
            comm_hex: None,
        }
    }

    /// The rules of the denials in every file of the chain, oldest file first.
    fn denials_in_chain(path: &Path) -> Vec<Vec<String>> {
        let mut files = rotated_paths_oldest_first(path).unwrap();
        files.push(path.to_owned());
        files
            .iter()
            .map(|file| {
                std::fs::read_to_string(file)
                    .unwrap()
                    .lines()
                    .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap())
                    .filter(|record| record["kind"] == "exec" && record["action"] == "deny")
                    .map(|record| record["rule"].as_str().unwrap().to_owned())
                    .collect()
            })
            .collect()
    }

    fn small_file(path: &Path, keep: u32, keep_denials: u32) -> EventsFile {
        let line = serde_json::to_vec(&exec(0, "deny")).unwrap().len() as u64 + 1;
        EventsFile::open(FileOptions {
            path: path.to_owned(),
            max_bytes: 4 * line,
            keep,
            keep_denials,
        })
        .unwrap()
    }

    #[test]
    fn a_flood_of_other_records_never_rotates_away_a_denial() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("events.jsonl");
        let mut file = small_file(&path, 2, 3);
        file.write_record(exec(1, "deny")).unwrap();
        for _ in 0..1000 {
            file.write_record(tamper()).unwrap();
            file.write_record(exec(0, "audit")).unwrap();
        }

        let chain = denials_in_chain(&path);
        assert_eq!(chain.concat(), ["1"], "{chain:?}");
        assert_eq!(chain[0], ["1"], "the oldest file is the denial's");
        assert_eq!(chain.len(), 1 + 2 + 1, "{chain:?}");
        assert!(
            !rotated_path(&path, 5).exists(),
            "files without denials are not kept beyond `keep`"
        );
    }

    #[test]
    fn only_the_newest_files_of_denials_are_kept_beyond_keep() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("events.jsonl");
        let mut file = small_file(&path, 1, 2);
        for rule in 1..=5 {
            file.write_record(exec(rule, "deny")).unwrap();
            for _ in 0..4 {
                file.write_record(tamper()).unwrap();
            }
        }

        // Each denial started a file: the current one, the one `keep` keeps, and two kept for
        // their denials; the first went.
        assert_eq!(denials_in_chain(&path), [["2"], ["3"], ["4"], ["5"]]);
    }

    #[test]
    fn keeping_no_files_keeps_those_of_denials_unless_told_not_to() {
        for keep_denials in [0, 1] {
            let temp = tempfile::tempdir().unwrap();
            let path = temp.path().join("events.jsonl");
            let mut file = small_file(&path, 0, keep_denials);
            file.write_record(exec(1, "deny")).unwrap();
            for _ in 0..20 {
                file.write_record(tamper()).unwrap();
            }
            let expected: &[&str] = if keep_denials == 0 { &[] } else { &["1"] };
            assert_eq!(denials_in_chain(&path).concat(), expected);
        }
    }

    #[test]
    fn denials_are_recognised_in_either_format() {
        let ecs = Encoding::Ecs(Arc::new(crate::ecs::Host::this()));
        for encoding in [Encoding::Blocker, ecs] {
            let line = |record| Emitted::new(record, &encoding).json_line.clone();
            assert!(is_denial(&line(exec(1, "deny"))));
            assert!(!is_denial(&line(exec(1, "audit"))));
            assert!(!is_denial(&line(tamper())));
        }
    }

    #[test]
    fn refuses_a_symlink_and_names_the_file_and_the_flags() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("events.jsonl");
        std::os::unix::fs::symlink(temp.path().join("elsewhere"), &path).unwrap();
        let error = EventsFile::open(FileOptions::defaults(path.clone()))
            .err()
            .unwrap();
        let message = format!("{error:#}");
        assert!(message.contains(&path.display().to_string()), "{message}");
        assert!(message.contains("--events-file"), "{message}");
        assert!(!temp.path().join("elsewhere").exists());
    }
}
