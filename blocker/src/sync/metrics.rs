//! The sync's own metrics for Prometheus: a node_exporter textfile of its own
//! (`blocker-sync.prom` beside the daemon's `blocker.prom`), written after every sync, whether
//! `blocker sync` runs as its own service or as a thread of the daemon.

use std::time::SystemTime;

use super::{
    state::{LastSync, SyncState},
    LAST_SYNC_OK,
};
use crate::{
    atomic_file::Published,
    metrics::{seconds_since_epoch, Exposition, Seconds},
};

/// Its name in node_exporter's textfile directory.
pub const TEXTFILE_NAME: &str = "blocker-sync.prom";

/// The syncs this process ran, and where their metrics go.
pub struct SyncMetrics {
    file: Published,
    succeeded: u64,
    failed: u64,
}

impl SyncMetrics {
    pub fn new(file: std::path::PathBuf) -> Self {
        Self {
            file: Published::new(file, "sync metrics", ""),
            succeeded: 0,
            failed: 0,
        }
    }

    /// Counts the sync `state` records last, and writes the textfile.
    pub fn record(&mut self, state: &SyncState) {
        let Some(last) = &state.last else {
            return;
        };
        if last.result == LAST_SYNC_OK {
            self.succeeded += 1;
        } else {
            self.failed += 1;
        }
        self.file
            .replace(render(last, state, self.succeeded, self.failed).as_bytes());
    }
}

fn render(last: &LastSync, state: &SyncState, succeeded: u64, failed: u64) -> String {
    let mut out = Exposition::default();
    let ended = humantime::parse_rfc3339(&last.time).unwrap_or(SystemTime::UNIX_EPOCH);
    out.single(
        "blocker_last_sync_timestamp_seconds",
        "gauge",
        "When the last sync with the Santa sync server ended, in seconds since the epoch.",
        Seconds(seconds_since_epoch(ended)),
    );
    out.single(
        "blocker_last_sync_success",
        "gauge",
        "Whether the last sync succeeded (1) or failed and changed nothing (0).",
        u8::from(last.result == LAST_SYNC_OK),
    );
    out.family(
        "blocker_syncs_total",
        "counter",
        "Syncs this process ran, by result.",
    );
    out.sample("blocker_syncs_total", &[("result", "success")], succeeded);
    out.sample("blocker_syncs_total", &[("result", "failure")], failed);
    out.single(
        "blocker_synced_rules",
        "gauge",
        "Hashes the synced policy bans.",
        state.rules.banned(),
    );
    out.family(
        "blocker_sync_rules_skipped",
        "gauge",
        "Rules of the last sync skipped because they have no meaning on Linux, by type.",
    );
    for (kind, count) in &last.changes.skipped {
        out.sample("blocker_sync_rules_skipped", &[("type", kind)], count);
    }
    out.text
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::sync::rules::Changes;

    fn state(result: &str) -> SyncState {
        SyncState {
            last: Some(LastSync {
                time: "2026-11-30T13:00:00Z".to_owned(),
                result: result.to_owned(),
                sync_type: None,
                client_mode: None,
                changes: Changes {
                    skipped: BTreeMap::from([("TEAMID\"\n".to_owned(), 2)]),
                    ..Changes::default()
                },
            }),
            ..SyncState::default()
        }
    }

    #[test]
    fn each_sync_is_counted_and_the_last_one_told() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(TEXTFILE_NAME);
        let mut metrics = SyncMetrics::new(path.clone());
        metrics.record(&state(LAST_SYNC_OK));
        metrics.record(&state("preflight: connection refused"));
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("blocker_last_sync_timestamp_seconds 1796043600.000\n"),
            "{text}"
        );
        assert!(text.contains("blocker_last_sync_success 0\n"), "{text}");
        assert!(text.contains("blocker_syncs_total{result=\"success\"} 1\n"));
        assert!(text.contains("blocker_syncs_total{result=\"failure\"} 1\n"));
        // A label value stays inside its quotes, whatever a server named a rule type.
        assert!(
            text.contains("blocker_sync_rules_skipped{type=\"TEAMID\\\"\\n\"} 2\n"),
            "{text}"
        );
        assert!(text.lines().all(|line| !line.is_empty()));
    }
}
