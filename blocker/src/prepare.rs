//! The one way from policy files to what the kernel needs: the files are parsed into a policy,
//! the content scan runs if a rule needs it, and the policy resolves to ban-map entries within
//! the map's budget. The daemon (its start, reloads and refreshes) and the commands that only
//! look (`resolve`, `explain`, `hash`, `feed-events`) all take this way, so that what they show
//! is what the daemon enforces. Blocking: the daemon runs it off its event loop, but for its
//! first resolution, which must be in force before anything else runs.

use std::{path::Path, sync::Arc};

use anyhow::Result;

use crate::{
    budget::Budget,
    escape::escaped,
    listed::log_listed,
    policy::{self, Policy},
    resolve::{self, Resolution},
    scan::{self, ScanOptions, ScanReport},
    sources::SourceRoots,
};

/// A policy ready to enforce: parsed, scanned if it was asked to be, resolved.
pub struct Prepared {
    pub policy: Policy,
    /// The content scan the resolution used, if one ran.
    pub scanned: Option<Arc<ScanReport>>,
    pub resolution: Resolution,
}

/// Whether the content scan runs on the way.
pub enum Contents<'a> {
    /// Not now: identity rules only (the daemon's start scans in the background, once they are
    /// in force; the look-up commands name files, never scan for them).
    NotScanned,
    /// Scan where `ScanOptions` says, if a rule needs it.
    Scan(&'a ScanOptions),
}

/// Reads the policy directory and prepares it.
pub fn prepare(policy_dir: &Path, contents: Contents<'_>, budget: Budget) -> Result<Prepared> {
    let policy = policy::load_dir(policy_dir)?;
    let scanned = match contents {
        Contents::NotScanned => None,
        Contents::Scan(options) => scan_if_needed(&policy, options).map(Arc::new),
    };
    let resolution = resolve(&policy, scanned.as_deref(), budget);
    Ok(Prepared {
        policy,
        scanned,
        resolution,
    })
}

/// What `policy` names on this machine now, the content rules from `scanned`, within `budget`.
pub fn resolve(policy: &Policy, scanned: Option<&ScanReport>, budget: Budget) -> Resolution {
    resolve::resolve_within(policy, &SourceRoots::default(), scanned, budget)
}

/// Runs the content scan if any rule needs it, logging its warnings.
pub fn scan_if_needed(policy: &Policy, options: &ScanOptions) -> Option<ScanReport> {
    if !resolve::needs_scan(policy) {
        return None;
    }
    log::info!(
        "scanning {} for banned contents",
        options
            .roots
            .iter()
            .map(|root| escaped(&root).to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let report = scan::scan_where(
        options,
        policy.hash_limit_bytes(),
        &resolve::scan_wants(policy),
    );
    log_listed(
        log::Level::Warn,
        report
            .warnings
            .iter()
            .map(|warning| format!("scan: {warning}")),
        |more| format!("scan: {more} more warnings like these"),
    );
    let stats = report.stats;
    log::info!(
        "scan: {} candidate files, {} read ({} MiB), {} from the cache, {} skipped, {} larger \
         than the hash limit",
        stats.candidates,
        stats.read,
        stats.bytes_read >> 20,
        stats.cached,
        stats.skipped,
        stats.too_large
    );
    Some(report)
}
