//! What the sync keeps between runs, in its state directory, written atomically: the synced
//! rules (a normal sync changes them), whether the next sync must be clean, and how the last
//! one went.

use std::{fs, path::Path};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{
    protocol::{ClientMode, SyncType},
    rules::{Changes, SyncedRules},
    upload::UploadCursor,
};
use crate::atomic_file::replace_atomically;

const STATE_FILE: &str = "state.json";

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct SyncState {
    pub rules: SyncedRules,
    /// Set when the rules kept cannot be trusted to be the server's (no state yet, or asked
    /// for with `--clean`); cleared by a completed clean sync.
    pub request_clean_sync: bool,
    /// How far the daemon's denials were uploaded.
    #[serde(default)]
    pub upload: UploadCursor,
    pub last: Option<LastSync>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LastSync {
    /// RFC 3339 UTC.
    pub time: String,
    /// `ok`, or why the sync failed (nothing of it applied).
    pub result: String,
    pub sync_type: Option<SyncType>,
    /// The mode the server asked for.
    pub client_mode: Option<ClientMode>,
    pub changes: Changes,
}

impl SyncState {
    /// The state kept in `dir`; a fresh one, which asks for a clean sync, if there is none.
    pub fn load(dir: &Path) -> Result<Self> {
        let path = dir.join(STATE_FILE);
        match fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .with_context(|| format!("{}: not a sync state blocker wrote", path.display())),
            Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(Self {
                request_clean_sync: true,
                ..Self::default()
            }),
            Err(error) => Err(error).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Writes the state whole (see [`replace_atomically`]), readable by root only.
    pub fn save(&self, dir: &Path) -> Result<()> {
        let state = serde_json::to_vec(self).context("serializing the sync state")?;
        replace_atomically(&dir.join(STATE_FILE), &state, 0o600)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_machine_without_state_asks_for_a_clean_sync_and_keeps_what_it_saves() {
        let dir = tempfile::tempdir().unwrap();
        let state_dir = dir.path().join("sync");
        let mut state = SyncState::load(&state_dir).unwrap();
        assert!(state.request_clean_sync);
        state.request_clean_sync = false;
        state.save(&state_dir).unwrap();
        assert!(!SyncState::load(&state_dir).unwrap().request_clean_sync);
        let mode = fs::metadata(state_dir.join(STATE_FILE))
            .unwrap()
            .permissions();
        assert_eq!(
            std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777,
            0o600
        );
        fs::write(state_dir.join(STATE_FILE), "{").unwrap();
        assert!(SyncState::load(&state_dir).is_err());
    }
}
