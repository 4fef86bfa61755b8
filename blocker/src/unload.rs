//! `blocker unload`: removes the pins that keep blocker's programs enforcing without a daemon.

use crate::escape::escaped;
use std::{path::Path, process::ExitCode};

use anyhow::Result;

use crate::kernel::pins::{self, PinKind};

pub fn unload(root: &Path) -> Result<ExitCode> {
    let removed = pins::unload(root)?;
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
    println!(
        "{links} program links unpinned: blocker's programs are detached once no running \
         daemon holds them (a running `blocker run` keeps enforcing until it stops)"
    );
    Ok(ExitCode::SUCCESS)
}
