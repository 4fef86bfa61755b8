//! Reading an events file as it grows: whole lines only, across rotation (the file renamed
//! away and a new one created at its path) and truncation.

use std::{
    fs::File,
    io::{self, Read, Seek},
    os::unix::fs::{FileExt, MetadataExt},
    path::{Path, PathBuf},
};

/// One line and where it was read, for messages about it.
#[derive(Debug, PartialEq, Eq)]
pub struct Line {
    pub file: PathBuf,
    pub number: usize,
    pub text: String,
}

/// Every line of a file that is not written to any more (a rotated one), the last one even
/// without its newline.
pub fn read_whole(path: &Path) -> io::Result<Vec<Line>> {
    let text = std::fs::read(path)?;
    Ok(text
        .split(|&byte| byte == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.is_empty())
        .map(|(index, line)| Line {
            file: path.to_owned(),
            number: index + 1,
            text: String::from_utf8_lossy(line).into_owned(),
        })
        .collect())
}

pub struct Follower {
    path: PathBuf,
    file: File,
    identity: (u64, u64),
    /// Bytes of `file` read so far.
    offset: u64,
    /// Lines of `file` completed so far.
    lines: usize,
    /// The start of a line whose newline has not been written yet.
    partial: Vec<u8>,
    /// The last bytes read, to notice the file truncated and written again past `offset`
    /// between two reads, which its size alone does not show.
    last_bytes: Vec<u8>,
}

/// Enough to tell records apart: their ends hold pids, paths and inodes.
const COMPARED_BYTES: usize = 64;

impl Follower {
    /// Starts at the beginning of the file at `path`.
    pub fn open(path: &Path) -> io::Result<Self> {
        let file = File::open(path)?;
        let metadata = file.metadata()?;
        Ok(Self {
            path: path.to_owned(),
            identity: (metadata.dev(), metadata.ino()),
            file,
            offset: 0,
            lines: 0,
            partial: Vec::new(),
            last_bytes: Vec::new(),
        })
    }

    /// Device and inode of the file being read.
    pub fn identity(&self) -> (u64, u64) {
        self.identity
    }

    /// Every line completed since the last call, in order: the rest of the file being read,
    /// then, if the path names a new file, that file's lines.
    pub fn read_new(&mut self) -> io::Result<Vec<Line>> {
        let mut lines = Vec::new();
        if self.truncated()? {
            // What is there now was written after.
            self.file.rewind()?;
            self.restart();
        }
        self.read_to_end(&mut lines)?;
        if self.replaced()? {
            match File::open(&self.path) {
                Ok(file) => {
                    let metadata = file.metadata()?;
                    self.identity = (metadata.dev(), metadata.ino());
                    self.file = file;
                    self.restart();
                    self.read_to_end(&mut lines)?;
                }
                // Between the rename and the creation: the next call finds it.
                Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                Err(error) => return Err(error),
            }
        }
        Ok(lines)
    }

    fn restart(&mut self) {
        self.offset = 0;
        self.lines = 0;
        self.partial.clear();
        self.last_bytes.clear();
    }

    /// Whether the file is shorter than what was read, or holds other bytes where the last
    /// ones read were.
    fn truncated(&self) -> io::Result<bool> {
        if self.file.metadata()?.len() < self.offset {
            return Ok(true);
        }
        let mut there = vec![0; self.last_bytes.len()];
        let start = self.offset - self.last_bytes.len() as u64;
        self.file.read_exact_at(&mut there, start)?;
        Ok(there != self.last_bytes)
    }

    fn read_to_end(&mut self, lines: &mut Vec<Line>) -> io::Result<()> {
        let mut new = Vec::new();
        self.offset += self.file.read_to_end(&mut new)? as u64;
        self.last_bytes.extend_from_slice(&new);
        let excess = self.last_bytes.len().saturating_sub(COMPARED_BYTES);
        self.last_bytes.drain(..excess);
        self.partial.extend_from_slice(&new);
        let Some(last_newline) = self.partial.iter().rposition(|&byte| byte == b'\n') else {
            return Ok(());
        };
        let rest = self.partial.split_off(last_newline + 1);
        let complete = std::mem::replace(&mut self.partial, rest);
        for line in complete[..complete.len() - 1].split(|&byte| byte == b'\n') {
            self.lines += 1;
            if !line.is_empty() {
                lines.push(Line {
                    file: self.path.clone(),
                    number: self.lines,
                    text: String::from_utf8_lossy(line).into_owned(),
                });
            }
        }
        Ok(())
    }

    /// Whether the path names another file than the one being read, or none.
    fn replaced(&self) -> io::Result<bool> {
        match std::fs::metadata(&self.path) {
            Ok(metadata) => Ok((metadata.dev(), metadata.ino()) != self.identity),
            Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(true),
            Err(error) => Err(error),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::{
        events::{self, Record},
        sinks::{rotated_paths_oldest_first, FileOptions},
    };

    fn texts(lines: Vec<Line>) -> Vec<String> {
        lines.into_iter().map(|line| line.text).collect()
    }

    fn append(path: &Path, text: &str) {
        std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .open(path)
            .unwrap()
            .write_all(text.as_bytes())
            .unwrap();
    }

    #[test]
    fn half_written_lines_wait_for_their_newline() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("events.jsonl");
        append(&path, "one\ntw");
        let mut follower = Follower::open(&path).unwrap();
        assert_eq!(texts(follower.read_new().unwrap()), ["one"]);
        assert!(follower.read_new().unwrap().is_empty());
        append(&path, "o\nthree\n");
        let lines = follower.read_new().unwrap();
        assert_eq!((lines[0].number, lines[1].number), (2, 3));
        assert_eq!(texts(lines), ["two", "three"]);
    }

    #[test]
    fn follows_a_rename_and_a_new_file_and_a_truncation() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("events.jsonl");
        append(&path, "one\n");
        let mut follower = Follower::open(&path).unwrap();
        assert_eq!(texts(follower.read_new().unwrap()), ["one"]);

        append(&path, "two\n");
        std::fs::rename(&path, temp.path().join("events.jsonl.1")).unwrap();
        assert_eq!(texts(follower.read_new().unwrap()), ["two"]);
        append(&path, "three\n");
        assert_eq!(texts(follower.read_new().unwrap()), ["three"]);

        std::fs::write(&path, "").unwrap();
        append(&path, "four\n");
        let lines = follower.read_new().unwrap();
        assert_eq!(lines[0].number, 1);
        assert_eq!(texts(lines), ["four"]);

        // Truncated and written past where reading stopped, between two reads.
        std::fs::write(&path, "fifth\nsixth\n").unwrap();
        assert_eq!(texts(follower.read_new().unwrap()), ["fifth", "sixth"]);
    }

    /// The daemon's own file sink rotating under a follower: nothing lost, nothing twice.
    #[test]
    fn follows_the_file_sink_across_its_rotations() {
        use crate::sinks::Sinks;

        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("events.jsonl");
        let reloaded = |rules| Record::Reloaded {
            time: events::now_rfc3339(),
            policies: vec![],
            rules,
            entries: 0,
        };
        let line_length = serde_json::to_string(&reloaded(0)).unwrap().len() as u64 + 1;
        let options = crate::sinks::SinkOptions {
            file: Some(FileOptions {
                path: path.clone(),
                max_bytes: 3 * line_length,
                keep: 3,
                keep_denials: 0,
            }),
            stdout: false,
            journald_socket: None,
            log_lines: false,
            format: crate::sinks::EventsFormat::Blocker,
            notify_socket: None,
        };
        let mut seen = Vec::new();
        let sinks = Sinks::start(&options).unwrap();
        sinks.emit(reloaded(0));
        sinks.close(|_| reloaded(1));
        let mut follower = Follower::open(&path).unwrap();
        seen.extend(texts(follower.read_new().unwrap()));
        // Each round writes two lines, so the file rotates every other round or so.
        for round in 1..6 {
            let sinks = Sinks::start(&options).unwrap();
            sinks.emit(reloaded(round * 2));
            sinks.close(|_| reloaded(round * 2 + 1));
            seen.extend(texts(follower.read_new().unwrap()));
        }
        let rules: Vec<_> = seen
            .iter()
            .map(|line| serde_json::from_str::<serde_json::Value>(line).unwrap()["rules"].clone())
            .collect();
        assert_eq!(rules, (0..12u64).collect::<Vec<_>>());
        assert!(
            !rotated_paths_oldest_first(&path).unwrap().is_empty(),
            "the file did rotate"
        );
    }

    #[test]
    fn a_rotated_file_is_read_whole_with_line_numbers() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("events.jsonl.1");
        std::fs::write(&path, "one\n\nthree").unwrap();
        let lines = read_whole(&path).unwrap();
        assert_eq!(lines[1].number, 3);
        assert_eq!(texts(lines), ["one", "three"]);
    }
}
