//! JSON lines on stdout, flushed per line for pipes and `tail -f`-like readers.

use std::io::{self, Write};

use super::queue::Sink;
use crate::events::Record;

#[derive(Default)]
pub struct Stdout {
    /// Set once the reader has gone: there will never be another one.
    broken: bool,
}

impl Sink for Stdout {
    fn write(&mut self, record: &Record) -> io::Result<()> {
        if self.broken {
            return Err(io::ErrorKind::BrokenPipe.into());
        }
        let line = serde_json::to_string(record).expect("records serialize");
        let mut out = io::stdout().lock();
        let written = writeln!(out, "{line}").and_then(|()| out.flush());
        if let Err(error) = &written {
            self.broken = error.kind() == io::ErrorKind::BrokenPipe;
        }
        written
    }
}
