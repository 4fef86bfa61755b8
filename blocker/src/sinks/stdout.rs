//! JSON lines on stdout, each batch written with one system call and flushed, for pipes and
//! `tail -f`-like readers.

use std::{
    io::{self, Write},
    sync::Arc,
};

use super::{
    queue::{Sink, Unwritten},
    Emitted,
};

#[derive(Default)]
pub struct Stdout {
    /// Set once the reader has gone: there will never be another one.
    broken: bool,
    /// The batch's lines, gathered so that a burst costs one write.
    lines: Vec<u8>,
}

impl Sink for Stdout {
    fn write(&mut self, records: &[Arc<Emitted>]) -> Result<(), Unwritten> {
        if self.broken {
            return Err(Unwritten::nothing(io::ErrorKind::BrokenPipe.into()));
        }
        self.lines.clear();
        for record in records {
            self.lines.extend_from_slice(&record.json_line);
        }
        let mut out = io::stdout().lock();
        out.write_all(&self.lines)
            .and_then(|()| out.flush())
            .map_err(|error| {
                self.broken = error.kind() == io::ErrorKind::BrokenPipe;
                // How much of the batch reached the reader is unknown: count it all as lost.
                Unwritten::nothing(error)
            })
    }
}
