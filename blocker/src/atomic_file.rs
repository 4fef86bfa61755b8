//! Files that readers only ever see whole: the status document, the metrics textfiles, the
//! sync's state.

use std::{
    fs,
    io::{self, Write},
    os::unix::fs::{OpenOptionsExt, PermissionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

use crate::escape::escaped;

/// What [`Published`] files are: readable by everyone whatever the umask, for they hold no
/// secret, and monitoring need not run as root.
pub const PUBLISHED_MODE: u32 = 0o644;

/// Replaces `path` with `contents` in one rename, so a reader sees the old or the new file
/// whole, even after a crash (the contents reach the disk before the rename); its directory is
/// created if missing, and the file has `mode` whatever the umask.
pub fn replace_atomically(path: &Path, contents: &[u8], mode: u32) -> Result<()> {
    let directory = match path.parent() {
        Some(parent) if !parent.as_os_str().is_empty() => parent,
        _ => Path::new("."),
    };
    fs::create_dir_all(directory).with_context(|| format!("creating {}", escaped(&directory)))?;
    let name = path
        .file_name()
        .with_context(|| format!("{} names no file", escaped(&path)))?;
    // Hidden and not ending in the published name's extension: node_exporter reads only
    // `*.prom`.
    let temporary = directory.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    let written = (|| -> io::Result<()> {
        // Created anew, never opened through whatever another user may have left under the
        // name (a symlink, a hard link to another file).
        match fs::remove_file(&temporary) {
            Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
            _ => {}
        }
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&temporary)?;
        file.write_all(contents)?;
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.sync_data()?;
        fs::rename(&temporary, path)
    })();
    if let Err(error) = written {
        let _ = fs::remove_file(&temporary);
        return Err(error).with_context(|| format!("writing {}", escaped(&path)));
    }
    Ok(())
}

/// A file the daemon replaces again and again, and what it publishes through it. It never
/// depends on it: a failure is a warning, once per streak of failures (it is retried at the
/// next change), and the first success after one says so.
pub struct Published {
    path: PathBuf,
    /// What it is, starting its log lines.
    what: &'static str,
    /// What a failure means, after the error.
    consequence: &'static str,
    failing: bool,
}

impl Published {
    pub fn new(path: PathBuf, what: &'static str, consequence: &'static str) -> Self {
        Self {
            path,
            what,
            consequence,
            failing: false,
        }
    }

    /// Whether the last replacement failed.
    #[cfg(test)]
    pub fn failing(&self) -> bool {
        self.failing
    }

    /// Replaces the file with `contents` (see [`replace_atomically`]).
    pub fn replace(&mut self, contents: &[u8]) {
        match replace_atomically(&self.path, contents, PUBLISHED_MODE) {
            Ok(()) if self.failing => {
                log::info!("{}: writing {} again", self.what, escaped(&self.path));
                self.failing = false;
            }
            Ok(()) => {}
            Err(error) if !self.failing => {
                log::warn!("{}: {error:#}{}", self.what, self.consequence);
                self.failing = true;
            }
            Err(_) => {}
        }
    }
}
