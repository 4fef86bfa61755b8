//! The log every command writes to stderr: one line per message, `[time LEVEL target] message`,
//! with whatever a message carries that could act on a terminal escaped. `RUST_LOG` chooses what
//! is written, read as env_logger reads it (`info` when unset).
//!
//! A line costs one formatting pass and one write, and nothing else (env_logger's own writer
//! asks whether stderr is a terminal for every line). The daemon's lines for events are written
//! by a sink of their own, in the same format ([`crate::sinks`]); its other lines, once
//! [`write_behind`] is called, by a thread of their own, so that a stderr nobody reads (a stuck
//! journald) never holds up the event loop: lines that find the queue full are dropped and
//! counted, and the next line written says how many.

use std::{
    cell::RefCell,
    fmt,
    io::Write,
    sync::{
        atomic::{AtomicU64, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, SyncSender, TrySendError},
        Arc, OnceLock,
    },
    thread,
    time::{Duration, Instant, SystemTime},
};

use crate::escape::ControlsEscaped;

/// Makes this the log of the process; call once, first thing.
pub fn init() {
    let filter =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).build();
    log::set_max_level(filter.filter());
    log::set_boxed_logger(Box::new(StderrLines { filter })).expect("the log is set up only once");
}

struct StderrLines {
    /// Used only to decide which records to write.
    filter: env_logger::Logger,
}

thread_local! {
    /// Each thread's line being formatted, kept to spare an allocation per line.
    static LINE: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
}

impl log::Log for StderrLines {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if !self.filter.matches(record) {
            return;
        }
        LINE.with_borrow_mut(|line| {
            line.clear();
            append_line(line, record.level(), record.target(), *record.args());
            match BEHIND.get() {
                Some(behind) => behind.push(line.clone()),
                // One write per line, so that the lines of different threads never interleave.
                // A log that cannot be written has nowhere to report it.
                None => {
                    let _ = std::io::stderr().lock().write_all(line);
                }
            }
        });
    }

    /// Waits, at most [`FLUSH_WAIT`], for the lines written behind to be written.
    fn flush(&self) {
        if let Some(behind) = BEHIND.get() {
            behind.flush(FLUSH_WAIT);
        }
    }
}

/// Lines waiting to be written behind, at most: a burst of warnings fits, a stuck stderr does
/// not grow the daemon.
const QUEUE_LINES: usize = 1024;

/// How long a flush (the end of the process) waits for a stderr that does not take lines.
const FLUSH_WAIT: Duration = Duration::from_secs(2);

static BEHIND: OnceLock<Behind> = OnceLock::new();

/// From now on, log lines are written by a thread of their own (see the module's comment).
/// `log::logger().flush()` waits for them, briefly.
pub fn write_behind() {
    BEHIND.get_or_init(|| Behind::start(std::io::stderr(), QUEUE_LINES));
}

enum Queued {
    Line(Vec<u8>),
    /// Answered once every line before it is written.
    Flush(SyncSender<()>),
}

/// A bounded queue of lines and the thread that writes them to `out`.
struct Behind {
    queue: SyncSender<Queued>,
    dropped: Arc<AtomicU64>,
}

impl Behind {
    fn start(out: impl Write + Send + 'static, capacity: usize) -> Self {
        let (queue, lines) = mpsc::sync_channel(capacity);
        let dropped = Arc::new(AtomicU64::new(0));
        let counted = Arc::clone(&dropped);
        thread::Builder::new()
            .name("log".to_owned())
            .spawn(move || write_lines(out, &lines, &counted))
            .expect("starting the log's writer thread");
        Self { queue, dropped }
    }

    /// Queues `line`, or counts it dropped if the queue is full; never waits.
    fn push(&self, line: Vec<u8>) {
        if let Err(TrySendError::Full(_)) = self.queue.try_send(Queued::Line(line)) {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Waits at most `wait` for the lines queued so far to be written.
    fn flush(&self, wait: Duration) {
        let deadline = Instant::now() + wait;
        let (done, written) = mpsc::sync_channel(1);
        let mut request = Queued::Flush(done);
        loop {
            match self.queue.try_send(request) {
                Ok(()) => break,
                Err(TrySendError::Full(again)) if Instant::now() < deadline => {
                    request = again;
                    thread::sleep(Duration::from_millis(10));
                }
                Err(_) => return,
            }
        }
        let _ = written.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

fn write_lines(mut out: impl Write, lines: &Receiver<Queued>, dropped: &AtomicU64) {
    let mut report = Vec::new();
    loop {
        let (queued, closed) = match lines.recv_timeout(Duration::from_secs(1)) {
            Ok(queued) => (Some(queued), false),
            Err(RecvTimeoutError::Timeout) => (None, false),
            Err(RecvTimeoutError::Disconnected) => (None, true),
        };
        // Where the gap is: before the next line, or alone once the queue has been idle.
        let missed = dropped.swap(0, Ordering::Relaxed);
        if missed > 0 {
            report.clear();
            let message = format_args!(
                "{missed} log lines were dropped: stderr was not taking them (nobody reading it, \
                 or a stuck journald)"
            );
            append_line(&mut report, log::Level::Warn, "blocker::log", message);
            let _ = out.write_all(&report);
        }
        match queued {
            Some(Queued::Line(line)) => {
                let _ = out.write_all(&line);
            }
            Some(Queued::Flush(done)) => {
                let _ = out.flush();
                let _ = done.try_send(());
            }
            None if closed => return,
            None => {}
        }
    }
}

/// Appends a line of the log to `out`.
pub fn append_line(out: &mut Vec<u8>, level: log::Level, target: &str, message: fmt::Arguments) {
    // Every line is one record: whatever a message carries (a file name that escaped a call
    // site, a line forwarded from the kernel) cannot break it or act on a terminal. Writing into
    // a Vec cannot fail.
    let _ = writeln!(
        out,
        "[{} {level:<5} {target}] {}",
        humantime::format_rfc3339_seconds(SystemTime::now()),
        ControlsEscaped(message)
    );
}

#[cfg(test)]
mod tests {
    use std::{
        fs::File,
        io::{BufRead, BufReader},
        os::fd::OwnedFd,
    };

    use super::*;

    #[test]
    fn a_stderr_nobody_reads_costs_lines_not_waits_and_the_gap_is_reported() {
        let (read_end, write_end): (OwnedFd, OwnedFd) = rustix::pipe::pipe().unwrap();
        let behind = Behind::start(File::from(write_end), 16);
        // Far more than the pipe (64 KiB) and the queue hold: were a line to wait for the
        // reader, this would never return, as nobody reads yet.
        const LINES: usize = 20_000;
        for index in 0..LINES {
            let mut line = Vec::new();
            let message = format_args!("line {index}");
            append_line(&mut line, log::Level::Info, "test", message);
            behind.push(line);
        }
        let pushed_dropped = behind.dropped.load(Ordering::Relaxed);
        assert!(pushed_dropped > 0, "a full queue drops");
        drop(behind);

        let mut written = 0;
        let mut reported = 0;
        for line in BufReader::new(File::from(read_end)).lines() {
            let line = line.unwrap();
            if line.contains("log lines were dropped") {
                let count = line
                    .split("] ")
                    .nth(1)
                    .and_then(|rest| rest.split(' ').next())
                    .and_then(|count| count.parse::<usize>().ok())
                    .unwrap();
                reported += count;
            } else {
                assert!(line.contains("] line "), "{line}");
                written += 1;
            }
        }
        assert_eq!(written + reported, LINES, "every line written or counted");
        assert!(reported > 0);
    }
}
