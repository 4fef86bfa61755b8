//! `blocker unload`: removes the pins that keep blocker's programs enforcing without a daemon.

use crate::escape::escaped;
use std::{path::Path, process::ExitCode};

use anyhow::Result;

use crate::kernel::{
    pins::{self, PinKind},
    DETACH_TIMEOUT,
};

pub fn unload(root: &Path) -> Result<ExitCode> {
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
