//! `blocker events`: the events file and its rotated predecessors, oldest first, filtered by
//! rule and time, as a table or as the JSON lines themselves; with `--follow`, new events as
//! they are written, across rotations.

mod follow;
mod since;
mod table;

use crate::escape::escaped;
use std::{
    io::{self, Write},
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, SystemTime},
};

use anyhow::{anyhow, Context, Result};
use serde_json::Value;

pub use since::parse as parse_since;

use crate::{
    ecs,
    sinks::{self, DEFAULT_EVENTS_FILE},
};
use follow::{Follower, Line};

/// How often `--follow` looks for new lines.
const POLL_INTERVAL: Duration = Duration::from_millis(250);

pub struct EventsOptions {
    pub file: PathBuf,
    pub follow: bool,
    pub json: bool,
    /// Only exec records of this rule.
    pub rule: Option<String>,
    /// Only records at or after this time.
    pub since: Option<SystemTime>,
}

pub fn events(options: &EventsOptions) -> Result<ExitCode> {
    // Opened before the rotated files are listed: if it is rotated in between, it is read
    // here and skipped there, so nothing is missed or shown twice.
    let current =
        Follower::open(&options.file).map_err(|error| open_error(&options.file, error))?;
    let mut printer = Printer {
        json: options.json,
        filter: Filter {
            rule: options.rule.clone(),
            since: options.since,
        },
        out: io::stdout().lock(),
    };
    match show(options, current, &mut printer) {
        Err(error)
            if error
                .downcast_ref::<io::Error>()
                .is_some_and(|error| error.kind() == io::ErrorKind::BrokenPipe) =>
        {
            // `blocker events | head`: the reader has what it wanted.
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => Err(error),
        Ok(()) => Ok(ExitCode::SUCCESS),
    }
}

fn show(
    options: &EventsOptions,
    current: Follower,
    printer: &mut Printer<impl Write>,
) -> Result<()> {
    printer.header()?;
    read_lines(&options.file, current, options.follow, |lines| {
        printer.show_all(lines)
    })
}

/// Every record in the events file `file` and its rotated predecessors, oldest first, from
/// `since` on, handed to `each`; lines that are not records are skipped with a warning naming
/// them. For commands that work on what was recorded (`blocker learn`).
pub fn for_each_record(
    file: &Path,
    since: Option<SystemTime>,
    mut each: impl FnMut(Value),
) -> Result<()> {
    let current = Follower::open(file).map_err(|error| open_error(file, error))?;
    let filter = Filter { rule: None, since };
    read_lines(file, current, false, |lines| {
        lines
            .iter()
            .filter_map(|line| filter.record_of(line))
            .for_each(&mut each);
        Ok(())
    })
}

/// Hands the lines of the rotated files, oldest first, then those of `current` to `each`;
/// with `follow`, keeps handing it the lines written to `current` from then on.
fn read_lines(
    file: &Path,
    mut current: Follower,
    follow: bool,
    mut each: impl FnMut(&[Line]) -> io::Result<()>,
) -> Result<()> {
    let rotated = sinks::rotated_paths_oldest_first(file)
        .with_context(|| format!("listing rotated files of {}", escaped(&file)))?;
    for path in rotated {
        let lines = match std::fs::metadata(&path) {
            Ok(metadata) if (metadata.dev(), metadata.ino()) == current.identity() => continue,
            Ok(_) => follow::read_whole(&path),
            Err(error) => Err(error),
        };
        match lines {
            Ok(lines) => each(&lines)?,
            // Rotated away while listing: it held the oldest records, which are gone.
            Err(error) if error.kind() == io::ErrorKind::NotFound => {}
            Err(error) => return Err(error).with_context(|| format!("reading {}", escaped(&path))),
        }
    }
    loop {
        let lines = current
            .read_new()
            .with_context(|| format!("reading {}", escaped(&file)))?;
        each(&lines)?;
        if !follow {
            return Ok(());
        }
        std::thread::sleep(POLL_INTERVAL);
    }
}

fn open_error(path: &Path, error: io::Error) -> anyhow::Error {
    match error.kind() {
        io::ErrorKind::NotFound if path == Path::new(DEFAULT_EVENTS_FILE) => anyhow!(
            "no events file at {DEFAULT_EVENTS_FILE}, where `blocker run` writes its events \
             unless started with --events-file PATH (read those with `blocker events --file \
             PATH`) or --no-events-file; has the daemon run on this machine?"
        ),
        io::ErrorKind::NotFound => anyhow!(
            "no events file at {}: `blocker run` writes its events to {DEFAULT_EVENTS_FILE}, or \
             to the PATH it was started with as --events-file PATH (none with --no-events-file)",
            escaped(&path)
        ),
        io::ErrorKind::PermissionDenied => anyhow!(
            "reading {}: {error} (the events file is readable by root only)",
            escaped(&path)
        ),
        _ => anyhow!("reading {}: {error}", escaped(&path)),
    }
}

struct Filter {
    rule: Option<String>,
    since: Option<SystemTime>,
}

impl Filter {
    /// The record `line` holds, if it is one this filter accepts; says why a line is skipped.
    fn record_of(&self, line: &Line) -> Option<Value> {
        let record = match serde_json::from_str::<Value>(&line.text) {
            // An ECS document (`run --events-format ecs`) is read as its record.
            Ok(record) if record.is_object() => ecs::record_of_line(record),
            Ok(_) => {
                skip(line, "not a JSON object");
                return None;
            }
            Err(error) => {
                skip(line, &format!("not JSON: {error}"));
                return None;
            }
        };
        match self.accepts(&record) {
            Ok(true) => Some(record),
            Ok(false) => None,
            Err(error) => {
                skip(line, &error);
                None
            }
        }
    }

    /// Whether `record` is shown; an error names the field it could not judge.
    fn accepts(&self, record: &Value) -> Result<bool, String> {
        if let Some(rule) = &self.rule {
            if record["rule"].as_str() != Some(rule.as_str()) {
                return Ok(false);
            }
        }
        if let Some(since) = self.since {
            let time = record["time"]
                .as_str()
                .ok_or_else(|| "no `time` field".to_owned())?;
            let time = humantime::parse_rfc3339(time)
                .map_err(|error| format!("time: `{time}`: {error}"))?;
            if time < since {
                return Ok(false);
            }
        }
        Ok(true)
    }
}

struct Printer<W> {
    json: bool,
    filter: Filter,
    out: W,
}

impl<W: Write> Printer<W> {
    fn header(&mut self) -> io::Result<()> {
        if self.json {
            return Ok(());
        }
        writeln!(self.out, "{}", table::header())
    }

    /// Prints the lines that pass the filter, and says which lines are not records.
    fn show_all(&mut self, lines: &[Line]) -> io::Result<()> {
        for line in lines {
            let Some(record) = self.filter.record_of(line) else {
                continue;
            };
            if self.json {
                writeln!(self.out, "{}", line.text)?;
            } else {
                writeln!(self.out, "{}", table::row(&record))?;
            }
        }
        self.out.flush()
    }
}

/// What `blocker events` prints for an events file holding `text` (`--json`: the records
/// themselves), with `since` as `--since`.
pub fn shown(text: &str, json: bool, since: Option<SystemTime>) -> Vec<u8> {
    let lines = lines_of(text);
    let mut printer = Printer {
        json,
        filter: Filter { rule: None, since },
        out: Vec::new(),
    };
    printer
        .header()
        .and_then(|()| printer.show_all(&lines))
        .expect("writing to memory");
    printer.out
}

/// The lines of `text` as read from an events file.
fn lines_of(text: &str) -> Vec<Line> {
    text.lines()
        .enumerate()
        .map(|(index, line)| Line {
            file: PathBuf::from("events.jsonl"),
            number: index + 1,
            text: line.to_owned(),
        })
        .collect()
}

fn skip(line: &Line, why: &str) {
    log::warn!(
        "{}:{}: skipped, not an event record: {why}",
        escaped(&line.file),
        line.number
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    const LINES: [&str; 5] = [
        r#"{"kind":"started","time":"2026-11-28T08:00:00Z","backend":"kill","backend_reason":"x","policies":["p"],"rules":2,"entries":2}"#,
        r#"{"kind":"exec","time":"2026-11-28T08:30:00.000000001Z","enforcement":"sigkill","operation":"exec","rule":"wechat","pid":10,"uid":1000,"comm":"wechat","path":"/opt/wechat/wechat","path_truncated":false}"#,
        r#"{"kind":"exec","time":"2026-11-28T09:00:00Z","enforcement":"none","operation":"exec","rule":"watch","pid":11,"uid":0,"comm":"tool","path":"/opt/tool","path_truncated":false}"#,
        "not json at all",
        r#"{"kind":"exec","time":"2026-11-28T09:30:00Z","enforcement":"eperm","operation":"exec","rule":"wechat","pid":12,"uid":0,"comm":"sh","path":"/opt/wechat/wechat","path_truncated":false}"#,
    ];

    fn lines() -> Vec<Line> {
        LINES
            .iter()
            .enumerate()
            .map(|(index, text)| Line {
                file: PathBuf::from("events.jsonl"),
                number: index + 1,
                text: (*text).to_owned(),
            })
            .collect()
    }

    fn printed(json: bool, rule: Option<&str>, since: Option<&str>) -> Vec<String> {
        let mut printer = Printer {
            json,
            filter: Filter {
                rule: rule.map(str::to_owned),
                since: since.map(|text| parse_since(text, SystemTime::now()).unwrap()),
            },
            out: Vec::new(),
        };
        printer.header().unwrap();
        printer.show_all(&lines()).unwrap();
        String::from_utf8(printer.out)
            .unwrap()
            .lines()
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn json_prints_the_lines_as_written_and_skips_what_is_not_a_record() {
        assert_eq!(
            printed(true, None, None),
            [LINES[0], LINES[1], LINES[2], LINES[4]]
        );
    }

    #[test]
    fn the_rule_filter_keeps_only_that_rules_execs() {
        assert_eq!(printed(true, Some("wechat"), None), [LINES[1], LINES[4]]);
        assert!(printed(true, Some("other"), None).is_empty());
    }

    #[test]
    fn the_time_filter_keeps_records_from_then_on() {
        assert_eq!(
            printed(true, None, Some("2026-11-28T08:30:00.000000001Z")),
            [LINES[1], LINES[2], LINES[4]]
        );
        assert_eq!(
            printed(true, Some("wechat"), Some("2026-11-28T10:00:00+01:00")),
            [LINES[4]]
        );
    }

    #[test]
    fn the_table_has_a_header_and_a_row_per_record() {
        let table = printed(false, None, None);
        assert_eq!(table.len(), 5, "{table:#?}");
        assert!(table[0].starts_with("TIME"), "{table:#?}");
        assert!(table[1].contains(" started "), "{table:#?}");
        assert!(table[2].contains(" killed ") && table[2].contains(" wechat "));
        assert!(table[3].contains(" audited ") && table[3].contains(" watch "));
        assert!(table[4].contains(" denied "));
    }

    #[test]
    fn an_ecs_events_file_is_shown_filtered_and_printed_as_written() {
        let documents: Vec<String> = ecs::tests::every_kind()
            .iter()
            .map(|record| {
                let mut line = Vec::new();
                ecs::write_document(record, &ecs::tests::host(), &mut line);
                String::from_utf8(line).unwrap()
            })
            .collect();
        let lines = lines_of(&documents.join("\n"));
        let print = |json: bool, rule: Option<&str>, since: &str| {
            let mut printer = Printer {
                json,
                filter: Filter {
                    rule: rule.map(str::to_owned),
                    since: Some(parse_since(since, SystemTime::now()).unwrap()),
                },
                out: Vec::new(),
            };
            printer.show_all(&lines).unwrap();
            String::from_utf8(printer.out).unwrap()
        };
        let all = "2026-11-28T08:39:20Z";
        assert_eq!(
            print(true, None, all).lines().collect::<Vec<_>>(),
            documents
        );
        assert_eq!(print(true, None, "2026-11-28T08:39:21Z"), "");
        let table = print(false, Some("wechat"), all);
        let rows: Vec<&str> = table.lines().collect();
        assert_eq!(rows.len(), 4, "{table}");
        assert!(
            rows[0].contains(" denied ") && rows[0].contains(" wechat "),
            "{table}"
        );
        assert!(
            rows[0].contains(" 40 ") && rows[0].contains(" 1000 ") && rows[0].contains(" bash ")
        );
        assert!(
            rows[0].ends_with("/opt/wechat/\\xff"),
            "exact bytes: {table}"
        );
        assert!(rows[1].contains(" audited "), "{table}");
        let others = print(false, None, all);
        assert!(others.contains(" reload_failed error="), "{others}");
    }

    #[test]
    fn a_missing_file_says_where_the_daemon_writes_and_how_to_change_it() {
        let temp = tempfile::tempdir().unwrap();
        let missing = temp.path().join("events.jsonl");
        let error = events(&EventsOptions {
            file: missing.clone(),
            follow: false,
            json: true,
            rule: None,
            since: None,
        })
        .unwrap_err()
        .to_string();
        assert!(error.contains(&missing.display().to_string()), "{error}");
        assert!(error.contains(DEFAULT_EVENTS_FILE), "{error}");
        assert!(error.contains("--events-file PATH"), "{error}");
        assert!(error.contains("--no-events-file"), "{error}");

        let default = open_error(
            Path::new(DEFAULT_EVENTS_FILE),
            io::ErrorKind::NotFound.into(),
        )
        .to_string();
        assert!(default.starts_with("no events file at /var/log/blocker/events.jsonl, where"));
        assert!(default.contains("blocker events --file PATH"), "{default}");
    }

    #[test]
    fn rotated_files_come_first_oldest_first_and_none_twice() {
        let temp = tempfile::tempdir().unwrap();
        let path = temp.path().join("events.jsonl");
        std::fs::write(sinks_rotated(&path, 2), format!("{}\n", LINES[0])).unwrap();
        std::fs::write(sinks_rotated(&path, 1), format!("{}\n", LINES[1])).unwrap();
        std::fs::write(&path, format!("{}\n", LINES[2])).unwrap();
        let current = Follower::open(&path).unwrap();
        // Rotated after being opened: the open file is .1 now, and read once, last.
        std::fs::rename(sinks_rotated(&path, 1), sinks_rotated(&path, 3)).unwrap();
        std::fs::rename(&path, sinks_rotated(&path, 1)).unwrap();
        let mut printer = Printer {
            json: true,
            filter: Filter {
                rule: None,
                since: None,
            },
            out: Vec::new(),
        };
        let options = EventsOptions {
            file: path,
            follow: false,
            json: true,
            rule: None,
            since: None,
        };
        show(&options, current, &mut printer).unwrap();
        let out = String::from_utf8(printer.out).unwrap();
        assert_eq!(
            out.lines().collect::<Vec<_>>(),
            [LINES[1], LINES[0], LINES[2]]
        );
    }

    fn sinks_rotated(path: &Path, number: u32) -> PathBuf {
        let mut name = path.as_os_str().to_owned();
        name.push(format!(".{number}"));
        PathBuf::from(name)
    }
}
