//! `blocker unload`: removes the pins that keep blocker's programs enforcing without a daemon,
//! and records that it did: the end of enforcement is an event like its start.

use std::{path::Path, process::ExitCode};

use anyhow::Result;

use crate::{
    escape::escaped,
    events::{self, LostDaemon, Record},
    kernel::{
        pins::{self, PinKind},
        DETACH_TIMEOUT,
    },
    sinks::{SinkOptions, Sinks},
};

/// Removes the pins under `root`, and writes an `unloaded` record into the sinks of `record_to`
/// (the events file and the journal the daemon writes to) if there were any.
pub fn unload(root: &Path, record_to: &SinkOptions) -> Result<ExitCode> {
    // Read before the pins go: a daemon that was killed or frozen rather than stopped left its
    // heartbeat there, and nobody else will ever report it.
    let daemon_lost = pins::heartbeats(root).iter().find_map(LostDaemon::of);
    let removed = pins::unload(root).map_err(|error| {
        let refused = error.chain().any(|cause| {
            cause
                .downcast_ref::<std::io::Error>()
                .is_some_and(|io| io.raw_os_error() == Some(libc::EPERM))
        });
        if refused {
            error.context(
                "tamper protection guards the pins while a protected daemon runs: stop it first \
                 (`blocker stop` or `systemctl stop blocker`)",
            )
        } else {
            error
        }
    })?;
    if removed.is_empty() {
        println!("nothing is pinned at {}", escaped(&root));
        return Ok(ExitCode::SUCCESS);
    }
    record(
        record_to,
        Record::Unloaded {
            time: events::now_rfc3339(),
            pin_dir: root.to_string_lossy().into_owned(),
            pins: removed.len(),
            pid: std::process::id(),
            // SAFETY: getuid cannot fail.
            uid: unsafe { libc::getuid() },
            daemon_lost,
        },
    );
    let mut links = 0;
    for pin in &removed {
        let what = match pin.kind {
            PinKind::Link => {
                links += 1;
                "link"
            }
            PinKind::Map => "map",
            PinKind::Directory => "directory",
        };
        println!("removed {what} {}", escaped(&pin.path));
    }
    let ids: Vec<_> = removed.iter().filter_map(|pin| pin.link_ids).collect();
    let still_attached = pins::wait_for_detach(&ids, DETACH_TIMEOUT);
    if still_attached.is_empty() {
        println!(
            "{links} program links unpinned and detached (the kernel listed {} of them)",
            ids.len()
        );
    } else {
        println!(
            "{links} program links unpinned; {} still attached after {} s: a running `blocker \
             run` holds them and keeps enforcing until it stops",
            still_attached.len(),
            DETACH_TIMEOUT.as_secs()
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// Writes `unloaded` into the sinks; the pins are gone whether or not it can be written.
fn record(options: &SinkOptions, unloaded: Record) {
    log::warn!("{}", unloaded.summary());
    match Sinks::start(options) {
        Ok(sinks) => sinks.close(|_| unloaded),
        Err(error) => log::error!("not recorded in the events file: {error:#}"),
    }
}
