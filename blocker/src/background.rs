//! Resolution off the event loop. Scanning the scan roots and resolving every rule can take
//! long (a large tree, a slow disk, a user's flood of files); the daemon meanwhile keeps
//! serving events. One job runs at a time and at most one waits (see [`crate::jobs`]): a
//! refresh (rules resolved again, optionally after a new content scan) or a reload (the
//! policy directory read again, scanned and resolved).

use std::{path::PathBuf, sync::Arc};

use crate::{
    budget::Budget,
    jobs::Merge,
    policy::Policy,
    prepare::{self, Contents, Prepared},
    resolve::{self, Resolution},
    scan::{HashedFile, ScanOptions, ScanReport},
};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Work {
    Refresh { rescan: bool },
    Reload,
}

impl Merge for Work {
    /// A reload reads, scans and resolves everything, so it stands in for any refresh.
    fn merge(self, later: Self) -> Self {
        match (self, later) {
            (Work::Reload, _) | (_, Work::Reload) => Work::Reload,
            (Work::Refresh { rescan: one }, Work::Refresh { rescan: other }) => Work::Refresh {
                rescan: one || other,
            },
        }
    }
}

/// What a job works from: the daemon's state when it started.
pub struct Inputs {
    pub policy: Policy,
    pub policy_dir: PathBuf,
    pub scan: ScanOptions,
    pub budget: Budget,
    /// The last content scan, if any.
    pub scanned: Option<Arc<ScanReport>>,
    /// Files the content watcher found banned since that scan started.
    pub watched: Vec<HashedFile>,
}

pub enum Done {
    Refreshed {
        resolution: Resolution,
        /// The new scan, for a refresh that rescanned.
        rescanned: Option<Option<Arc<ScanReport>>>,
    },
    Reloaded(Result<Prepared, String>),
}

/// Does `work`. Blocking: run it off the event loop.
pub fn run(work: Work, inputs: Inputs) -> Done {
    match work {
        Work::Refresh { rescan } => {
            let scanned = if rescan {
                prepare::scan_if_needed(&inputs.policy, &inputs.scan).map(Arc::new)
            } else {
                inputs.scanned.clone()
            };
            let mut resolution =
                prepare::resolve(&inputs.policy, scanned.as_deref(), inputs.budget);
            resolution.forget_matches();
            if !rescan {
                take_in_watched(&inputs.policy, &mut resolution, &inputs.watched);
            }
            Done::Refreshed {
                resolution,
                rescanned: rescan.then_some(scanned),
            }
        }
        Work::Reload => Done::Reloaded(
            prepare::prepare(
                &inputs.policy_dir,
                Contents::Scan(&inputs.scan),
                inputs.budget,
            )
            .map(|mut prepared| {
                prepared.resolution.forget_matches();
                prepared
            })
            .map_err(|error| format!("{error:#}")),
        ),
    }
}

/// Adds the files the content watcher found to `resolution`, as their first matching rule
/// names them; returns how many got an entry.
pub fn take_in_watched(
    policy: &Policy,
    resolution: &mut Resolution,
    files: &[HashedFile],
) -> usize {
    files
        .iter()
        .filter(|file| {
            resolve::content_matches(policy, file)
                .into_iter()
                .next()
                .is_some_and(|(rule_id, via)| resolution.add_seen(rule_id, via, file))
        })
        .count()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reload_stands_in_for_refreshes_and_a_rescan_for_a_refresh() {
        let refresh = Work::Refresh { rescan: false };
        let rescan = Work::Refresh { rescan: true };
        assert_eq!(refresh.merge(refresh), refresh);
        assert_eq!(refresh.merge(rescan), rescan);
        assert_eq!(rescan.merge(refresh), rescan);
        assert_eq!(rescan.merge(Work::Reload), Work::Reload);
        assert_eq!(Work::Reload.merge(refresh), Work::Reload);
    }
}
