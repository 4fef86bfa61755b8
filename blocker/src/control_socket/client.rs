//! The clients' side of the control socket: `blocker stop` and `blocker policy`.

use std::{
    io::{self, BufRead, BufReader, Read, Write},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{anyhow, bail, Context, Result};

use super::protocol::{self, Reply, Request, MAX_REPLY_BYTES};
use crate::escape::escaped;

/// How long a client waits for the daemon's reply: a policy change is checked whole, after any
/// other client's change.
const REPLY_TIMEOUT: Duration = Duration::from_secs(60);

/// What the daemon answered.
pub struct Answer {
    pub reply: Reply,
    /// The daemon's process id, as the kernel says.
    pub daemon_pid: libc::pid_t,
}

/// Sends `request` to the daemon listening at `socket` and reads its reply; `None` when nothing
/// listens there (no socket, or the daemon that made it is gone).
pub fn ask(socket: &Path, request: &Request) -> Result<Option<Answer>> {
    let stream = match UnixStream::connect(socket) {
        Ok(stream) => stream,
        Err(error)
            if matches!(
                error.kind(),
                io::ErrorKind::NotFound | io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(error) => {
            return Err(error).with_context(|| format!("connecting to {}", escaped(socket)))
        }
    };
    let daemon = rustix::net::sockopt::socket_peercred(&stream)
        .with_context(|| format!("asking who listens at {}", escaped(socket)))?;
    if !daemon.uid.is_root() {
        bail!(
            "{} is not a blocker daemon's: it belongs to uid {}, not root",
            escaped(socket),
            daemon.uid.as_raw()
        );
    }
    let daemon_pid = daemon.pid.as_raw_nonzero().get();
    stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
    stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
    // A daemon refusing a request (too large) closes before reading all of it: its reply can
    // still be read after the write failed.
    let sent = (&stream).write_all(&protocol::encode(request));
    let mut line = Vec::new();
    let read =
        BufReader::new((&stream).take(MAX_REPLY_BYTES as u64 + 1)).read_until(b'\n', &mut line);
    let talking = || format!("talking to the blocker daemon at {}", escaped(socket));
    if line.is_empty() {
        sent.with_context(talking)?;
        read.with_context(talking)?;
        bail!(
            "the blocker daemon (pid {daemon_pid}) closed {} without answering",
            escaped(socket)
        );
    }
    read.with_context(talking)?;
    let reply = protocol::decode(&line)
        .map_err(|error| anyhow!(error))
        .with_context(talking)?;
    Ok(Some(Answer { reply, daemon_pid }))
}
