//! The daemon's log lines for events: every exec and tamper record as the line people read on
//! stderr (`journalctl -u blocker` under systemd), in the log's format and under its `RUST_LOG`
//! filter. Written like every other sink's records, in batches by the sink's own thread, so that
//! a flood of events into a stderr nobody reads (a stuck journald) does not hold up the event
//! loop.

use std::{
    io::{self, Write},
    sync::Arc,
};

use log::Level;

use super::{
    queue::{Sink, Unwritten},
    Emitted,
};
use crate::{
    events::{Enforcement, Record},
    log_lines,
};

/// The target the lines are logged under, as when the daemon logged them itself.
const TARGET: &str = "blocker::daemon";

#[derive(Default)]
pub struct LogLines {
    /// The batch's lines, gathered so that a burst costs one write.
    lines: Vec<u8>,
}

impl Sink for LogLines {
    const WRITES_THE_LOG: bool = true;

    fn write(&mut self, records: &[Arc<Emitted>]) -> Result<(), Unwritten> {
        self.lines.clear();
        for emitted in records {
            match &emitted.record {
                Record::Exec(exec) => {
                    let level = if exec.enforcement == Enforcement::None {
                        Level::Info
                    } else {
                        Level::Warn
                    };
                    if log::log_enabled!(target: TARGET, level) {
                        let summary = format_args!("{}", exec.summary());
                        log_lines::append_line(&mut self.lines, level, TARGET, summary);
                    }
                }
                Record::Tamper(tamper) => {
                    if log::log_enabled!(target: TARGET, Level::Warn) {
                        let summary = format_args!("{}", tamper.summary());
                        log_lines::append_line(&mut self.lines, Level::Warn, TARGET, summary);
                    }
                }
                // The daemon logs everything else itself, where it happens.
                _ => {}
            }
        }
        io::stderr()
            .lock()
            .write_all(&self.lines)
            .map_err(Unwritten::nothing)
    }
}
