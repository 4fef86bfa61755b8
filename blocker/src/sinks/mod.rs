//! Where records go: the events file, stdout and the systemd journal. Each sink has its own
//! bounded queue and writer thread, so a slow or stuck sink never slows the event loop, and
//! with it enforcement: what does not fit is dropped, counted and reported.

mod daemon_log;
mod file;
pub(crate) mod journald;
mod notify;
mod queue;
mod stdout;

use crate::escape::escaped;
use std::{
    collections::BTreeMap,
    path::PathBuf,
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::Result;
use bytes::Bytes;

pub use file::{
    is_denial, rotated_path, rotated_paths_oldest_first, FileOptions, DEFAULT_KEEP,
    DEFAULT_KEEP_DENIALS, DEFAULT_MAX_BYTES,
};
pub use journald::SOCKET as JOURNALD_SOCKET;

use crate::{ecs, events::Record};
use queue::SinkQueue;

pub const DEFAULT_EVENTS_FILE: &str = file::DEFAULT_PATH;

/// Records waiting for one sink, besides those its writer has taken and is writing (at most as
/// many again); beyond this, new ones are dropped and counted. A record is a few hundred bytes:
/// about a megabyte per sink at most.
const QUEUE_RECORDS: usize = 1024;

/// How long stopping waits for the sinks to write what they still have.
const CLOSE_DEADLINE: Duration = Duration::from_secs(5);

pub struct SinkOptions {
    /// The events file, unless turned off.
    pub file: Option<FileOptions>,
    pub stdout: bool,
    /// journald's socket, written to if it exists; `None` when turned off.
    pub journald_socket: Option<PathBuf>,
    /// A line on stderr for every exec and tamper record (the daemon's log of events).
    pub log_lines: bool,
    /// What the events file and stdout get.
    pub format: EventsFormat,
    /// The socket `blocker notify` agents connect to, to tell people of their refusals; `None`
    /// when turned off.
    pub notify_socket: Option<PathBuf>,
}

/// The records' format in the events file and on stdout.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum EventsFormat {
    /// blocker's own JSON records, one kind a line.
    #[default]
    Blocker,
    /// Elastic Common Schema documents (see docs/GUIDE.md).
    Ecs,
}

/// A format ready to write records in: ECS documents name the host, found out once.
#[derive(Clone)]
pub enum Encoding {
    Blocker,
    Ecs(Arc<ecs::Host>),
}

impl Encoding {
    pub fn of(format: EventsFormat) -> Self {
        match format {
            EventsFormat::Blocker => Self::Blocker,
            EventsFormat::Ecs => Self::Ecs(Arc::new(ecs::Host::this())),
        }
    }
}

pub struct Sinks {
    queues: Vec<SinkQueue>,
    encoding: Encoding,
    /// Kept so that the socket is removed when the sinks close.
    _notify_socket: Option<crate::notify::dispatch::NotifySocket>,
}

/// A record and its JSON line (newline included) in the chosen format, serialized once and
/// shared by every sink.
pub struct Emitted {
    pub record: Record,
    pub json_line: Bytes,
}

impl Emitted {
    pub fn new(record: Record, encoding: &Encoding) -> Arc<Self> {
        // Room for a typical exec record, so that the line is not grown while written.
        let mut line;
        match encoding {
            Encoding::Blocker => {
                line = Vec::with_capacity(512);
                serde_json::to_writer(&mut line, &record).expect("records serialize");
            }
            Encoding::Ecs(host) => {
                line = Vec::with_capacity(1024);
                ecs::write_document(&record, host, &mut line);
            }
        }
        line.push(b'\n');
        Arc::new(Self {
            record,
            json_line: Bytes::from(line),
        })
    }
}

/// Records gathered for the sinks, handed to them all at once when the batch is dropped: one
/// lock and at most one wake-up per sink for a whole turn of events.
pub struct Batch<'a> {
    sinks: &'a Sinks,
    records: Vec<Arc<Emitted>>,
}

impl Batch<'_> {
    pub fn push(&mut self, record: Record) {
        self.records
            .push(Emitted::new(record, &self.sinks.encoding));
    }
}

impl Drop for Batch<'_> {
    fn drop(&mut self) {
        if self.records.is_empty() {
            return;
        }
        for queue in &self.sinks.queues {
            queue.push_all(&self.records);
        }
    }
}

impl Sinks {
    /// Opens the sinks; an events file that cannot be opened is an error, a journal that
    /// cannot be reached a warning.
    pub fn start(options: &SinkOptions) -> Result<Self> {
        let encoding = Encoding::of(options.format);
        let mut queues = Vec::new();
        if options.log_lines {
            queues.push(SinkQueue::start(
                "log",
                daemon_log::LogLines::default(),
                QUEUE_RECORDS,
                encoding.clone(),
            ));
        }
        let mut destinations = Vec::new();
        if let Some(file) = &options.file {
            let sink = file::EventsFile::open(file.clone())?;
            destinations.push(format!(
                "{} (rotated at {} bytes, {} kept, and {} more holding denials)",
                escaped(&file.path),
                file.max_bytes,
                file.keep,
                file.keep_denials
            ));
            queues.push(SinkQueue::start(
                "file",
                sink,
                QUEUE_RECORDS,
                encoding.clone(),
            ));
        }
        if options.stdout {
            destinations.push("stdout".to_owned());
            queues.push(SinkQueue::start(
                "stdout",
                stdout::Stdout::default(),
                QUEUE_RECORDS,
                encoding.clone(),
            ));
        }
        if let Some(socket) = options.journald_socket.as_deref() {
            if socket.exists() {
                match journald::Journald::connect(socket) {
                    Ok(sink) => {
                        destinations.push(format!("the journal ({})", escaped(&socket)));
                        queues.push(SinkQueue::start(
                            "journald",
                            sink,
                            QUEUE_RECORDS,
                            encoding.clone(),
                        ));
                    }
                    Err(error) => log::warn!(
                        "not writing events to the journal: connecting to {}: {error}",
                        escaped(&socket)
                    ),
                }
            }
        }
        let mut notify_socket = None;
        if let Some(path) = options.notify_socket.as_deref() {
            let (socket, dispatch) = crate::notify::dispatch::start(path)?;
            destinations.push(format!("the users refused (agents at {})", escaped(&path)));
            queues.push(SinkQueue::start(
                "notify",
                notify::Notify(dispatch),
                QUEUE_RECORDS,
                encoding.clone(),
            ));
            notify_socket = Some(socket);
        }
        if destinations.is_empty() {
            log::warn!("events go nowhere but this log: every sink is turned off");
        } else {
            log::info!("events go to {}", destinations.join(", "));
        }
        Ok(Self {
            queues,
            encoding,
            _notify_socket: notify_socket,
        })
    }

    /// Hands `record` to every sink without waiting for any.
    pub fn emit(&self, record: Record) {
        let mut batch = self.batch();
        batch.push(record);
    }

    /// A batch of records that reach the sinks together, when it is dropped.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            sinks: self,
            records: Vec::new(),
        }
    }

    /// Waits until every sink has written every record handed to it so far.
    pub fn wait_until_idle(&self) {
        for queue in &self.queues {
            queue.wait_until_idle();
        }
    }

    /// Per sink, the records it never got.
    pub fn dropped(&self) -> BTreeMap<&'static str, u64> {
        self.queues
            .iter()
            .map(|queue| (queue.name(), queue.dropped()))
            .collect()
    }

    /// Writes `last`, made from what each sink never got, after everything else, and waits
    /// a few seconds at most for the sinks to write what they still have.
    pub fn close(self, last: impl FnOnce(BTreeMap<&'static str, u64>) -> Record) {
        let last = Emitted::new(last(self.dropped()), &self.encoding);
        for queue in &self.queues {
            queue.close_with(last.clone());
        }
        let deadline = Instant::now() + CLOSE_DEADLINE;
        for queue in &self.queues {
            let unwritten = queue.wait_until_written(deadline);
            if unwritten > 0 {
                log::warn!(
                    "the {} sink did not take its last {unwritten} records within \
                     {CLOSE_DEADLINE:?}; they are lost",
                    queue.name()
                );
            }
        }
    }

    #[cfg(test)]
    fn names(&self) -> Vec<&'static str> {
        self.queues.iter().map(SinkQueue::name).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::net::UnixDatagram;

    use super::*;
    use crate::events;

    fn stopped(records_dropped: BTreeMap<&'static str, u64>) -> Record {
        Record::Stopped {
            time: events::now_rfc3339(),
            events: 1,
            events_lost: 0,
            pinned: None,
            records_dropped,
        }
    }

    #[test]
    fn every_record_reaches_the_file_and_the_journal_and_stopped_comes_last() {
        let temp = tempfile::tempdir().unwrap();
        let events_file = temp.path().join("events.jsonl");
        let socket = temp.path().join("journal");
        let journal = UnixDatagram::bind(&socket).unwrap();
        let sinks = Sinks::start(&SinkOptions {
            file: Some(FileOptions::defaults(events_file.clone())),
            stdout: false,
            journald_socket: Some(socket),
            log_lines: false,
            format: EventsFormat::Blocker,
            notify_socket: None,
        })
        .unwrap();
        assert_eq!(sinks.names(), ["file", "journald"]);
        sinks.emit(Record::ReloadFailed {
            time: events::now_rfc3339(),
            error: "bad".to_owned(),
        });
        sinks.close(stopped);

        let lines: Vec<serde_json::Value> = std::fs::read_to_string(&events_file)
            .unwrap()
            .lines()
            .map(|line| serde_json::from_str(line).unwrap())
            .collect();
        assert_eq!(lines.len(), 2, "{lines:?}");
        assert_eq!(lines[0]["kind"], "reload_failed");
        assert_eq!(lines[1]["kind"], "stopped");
        assert_eq!(
            lines[1]["records_dropped"],
            serde_json::json!({"file": 0, "journald": 0})
        );

        let mut buffer = vec![0; 64 * 1024];
        for kind in ["reload_failed", "stopped"] {
            let length = journal.recv(&mut buffer).unwrap();
            let entry = String::from_utf8_lossy(&buffer[..length]).into_owned();
            assert!(
                entry.contains(&format!("\nBLOCKER_KIND={kind}\n")),
                "{entry}"
            );
        }
    }

    #[test]
    fn the_journal_is_used_only_where_its_socket_exists() {
        let temp = tempfile::tempdir().unwrap();
        let sinks = Sinks::start(&SinkOptions {
            file: None,
            stdout: false,
            journald_socket: Some(temp.path().join("no-journald-here")),
            log_lines: false,
            format: EventsFormat::Blocker,
            notify_socket: None,
        })
        .unwrap();
        assert!(sinks.names().is_empty());
    }
}
