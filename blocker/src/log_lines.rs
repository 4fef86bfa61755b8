//! The log every command writes to stderr: one line per message, `[time LEVEL target] message`,
//! with whatever a message carries that could act on a terminal escaped. `RUST_LOG` chooses what
//! is written, read as env_logger reads it (`info` when unset).
//!
//! A line costs one formatting pass and one write, and nothing else (env_logger's own writer
//! asks whether stderr is a terminal for every line). The daemon's lines for events are written
//! by a sink of their own, in the same format ([`crate::sinks`]).

use std::{cell::RefCell, fmt, io::Write, time::SystemTime};

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
            // One write per line, so that the lines of different threads never interleave. A log
            // that cannot be written has nowhere to report it.
            let _ = std::io::stderr().lock().write_all(line);
        });
    }

    fn flush(&self) {}
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
