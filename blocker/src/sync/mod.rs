//! `blocker sync`: a client of Santa's sync protocol. It fetches the fleet's rules from a
//! Santa sync server (Moroz, Zentral, Rudolph, ...) and installs them as one policy file of the
//! policy directory, through the running daemon (which checks the whole resulting policy
//! before writing, as for `blocker policy install`), so that they keep being enforced across
//! restarts without the network, and `check`, `explain` and `resolve` see them.
//!
//! It runs apart from the daemon, as Santa's santasyncservice runs apart from santad: the
//! daemon, which holds the kernel's programs, keeps no network access (the packaged unit has
//! `PrivateNetwork=yes`), and the part that parses what a server sends holds no BPF
//! capability.

pub mod client;
pub mod config;
pub mod metrics;
pub mod protocol;
pub mod rules;
pub mod sessions;
pub mod state;
pub mod upload;

use std::{fs, path::Path, process::ExitCode, time::SystemTime};

use serde::Serialize;

use anyhow::{bail, Context, Result};

use crate::{
    control::{self, PolicyChange},
    control_socket::protocol::PolicyFile,
    events::rfc3339,
};
use client::Client;
use config::SyncConfig;
use metrics::SyncMetrics;
use protocol::{
    ClientMode, PostflightRequest, Preflight, PreflightRequest, ProtocolEnum, RuleDownloadRequest,
    RulePage, Stage, SyncType,
};
use rules::{Changes, SyncedRules, POLICY_FILE_NAME};
use state::{LastSync, SyncState};

/// The most rule pages one sync follows: a server whose cursor never ends is an error.
const MAX_PAGES: usize = 10_000;
/// The most rules one sync takes, over all pages.
const MAX_RULES: usize = 1_000_000;

/// The result a completed sync records.
const LAST_SYNC_OK: &str = "ok";

/// What one completed sync did.
#[derive(Debug)]
pub struct SyncReport {
    pub sync_type: SyncType,
    pub client_mode: Option<ClientMode>,
    pub rules_received: usize,
    pub changes: Changes,
    /// Denials uploaded.
    pub events_uploaded: usize,
    /// Times rotation deleted events before they were all uploaded, ever.
    pub event_files_lost: u64,
    /// Hashes the synced policy bans now.
    pub banned: usize,
    /// Whether the policy file was written (it was out of date).
    pub installed: bool,
}

impl SyncReport {
    /// What changed, a line each, for people.
    pub fn lines(&self) -> Vec<String> {
        let changes = &self.changes;
        let mut lines = vec![format!(
            "{} sync: {} rules received; {} added, {} changed, {} removed; {} hashes banned by policy {}",
            self.sync_type.name(),
            self.rules_received,
            changes.added,
            changes.changed,
            changes.removed,
            self.banned,
            rules::POLICY_NAME,
        )];
        lines.push(format!("{} denials uploaded", self.events_uploaded));
        if self.event_files_lost > 0 {
            lines.push(format!(
                "rotation deleted events files before their denials were all uploaded, {} \
                 times so far: denials may have been dropped",
                self.event_files_lost
            ));
        }
        if !changes.skipped.is_empty() {
            lines.push(format!(
                "skipped, without a meaning on Linux: {}",
                changes.skipped_list()
            ));
        }
        if self.client_mode == Some(ClientMode::Lockdown) {
            lines.push(
                "the server asks for LOCKDOWN, which blocker does not have yet: it keeps \
                 enforcing the blocklist, as in MONITOR"
                    .to_owned(),
            );
        }
        if !self.installed {
            lines.push(format!("{POLICY_FILE_NAME} was up to date"));
        }
        lines
    }
}

/// What `blocker sync` is asked to do.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SyncCommand {
    /// Sync every interval until killed.
    Forever,
    /// Sync once and say what changed.
    Once,
    /// Say how the last sync went.
    Status,
}

/// `blocker sync`.
pub fn command(config_file: &Path, command: SyncCommand, clean: bool) -> Result<ExitCode> {
    let config = SyncConfig::read(config_file)?;
    match command {
        SyncCommand::Status => status(&config),
        SyncCommand::Once => {
            let report = sync_once(&config, clean, &mut config.metrics())?;
            for line in report.lines() {
                println!("{}", crate::escape::controls_escaped(&line));
            }
            Ok(ExitCode::SUCCESS)
        }
        SyncCommand::Forever => run_forever(&config, clean),
    }
}

/// How the fleet sync stands, for `blocker status`.
#[derive(Debug, Serialize)]
pub struct SyncOverview {
    pub server: String,
    /// BINARY rules the last completed sync left.
    pub synced_rules: usize,
    /// RFC 3339 UTC.
    pub last_time: String,
    /// `ok`, or why it failed.
    pub last_result: String,
    /// Times rotation deleted events files before their denials were all uploaded.
    pub event_files_lost: u64,
}

/// The state of the sync `config_file` configures; `None` if there is no such file or it never
/// ran.
pub fn overview(config_file: &Path) -> Option<Result<SyncOverview>> {
    if !config_file.exists() {
        return None;
    }
    let config = match SyncConfig::read(config_file) {
        Ok(config) => config,
        Err(error) => return Some(Err(error)),
    };
    let state = match SyncState::load(&config.state_dir) {
        Ok(state) => state,
        Err(error) => return Some(Err(error)),
    };
    let last = state.last?;
    Some(Ok(SyncOverview {
        server: config.server_url,
        synced_rules: state.rules.binary.len(),
        last_time: last.time,
        last_result: last.result,
        event_files_lost: state.upload.files_lost,
    }))
}

/// `blocker sync --status`: the state the last sync left. Exits 1 if there was none or it
/// failed.
fn status(config: &SyncConfig) -> Result<ExitCode> {
    let state = SyncState::load(&config.state_dir)?;
    let banned = state.rules.banned();
    println!("server         {}", config.server_url);
    println!(
        "rules          {} synced BINARY rules, {banned} banned by policy {} ({})",
        state.rules.binary.len(),
        rules::POLICY_NAME,
        config.policy_dir.join(POLICY_FILE_NAME).display()
    );
    println!(
        "events         {} files of denials deleted by rotation before their upload",
        state.upload.files_lost
    );
    if state.request_clean_sync {
        println!("clean sync     asked for by the next sync");
    }
    let Some(last) = &state.last else {
        println!("last sync      none");
        return Ok(ExitCode::from(1));
    };
    println!(
        "last sync      {}: {}",
        last.time,
        crate::escape::controls_escaped(&last.result)
    );
    if let Some(mode) = last.client_mode {
        let note = if mode == ClientMode::Lockdown {
            " (not in blocker yet: the synced blocklist is enforced as in MONITOR)"
        } else {
            ""
        };
        println!("server mode    {}{note}", mode.name());
    }
    if !last.changes.skipped.is_empty() {
        println!(
            "skipped        {} (no meaning on Linux)",
            last.changes.skipped_list()
        );
    }
    Ok(if last.result == LAST_SYNC_OK {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// Syncs every interval, logging each outcome; a failed sync leaves every rule in place.
pub fn run_forever(config: &SyncConfig, mut clean: bool) -> ! {
    let mut metrics = config.metrics();
    loop {
        match sync_once(config, clean, &mut metrics) {
            Ok(report) => {
                clean = false;
                for line in report.lines() {
                    log::info!("sync: {line}");
                }
            }
            Err(error) => log::error!("sync failed, the rules in place stay: {error:#}"),
        }
        std::thread::sleep(config.interval);
    }
}

/// One sync: preflight, event upload, rule download (every page), install, postflight.
/// Recorded in the state directory and in `metrics` either way; nothing of a failed sync is
/// applied (denials it delivered stay delivered).
pub fn sync_once(
    config: &SyncConfig,
    request_clean: bool,
    metrics: &mut Option<SyncMetrics>,
) -> Result<SyncReport> {
    let mut state = SyncState::load(&config.state_dir)?;
    let mut cursor = state.upload.clone();
    let outcome = sync_with(
        config,
        &state,
        &mut cursor,
        request_clean || state.request_clean_sync,
    );
    // Denials delivered stay delivered, whatever happened after.
    state.upload = cursor;
    let time = rfc3339(SystemTime::now());
    match &outcome {
        Ok((report, rules)) => {
            state.rules = rules.clone();
            if report.sync_type.is_clean() {
                state.request_clean_sync = false;
            }
            state.last = Some(LastSync {
                time,
                result: LAST_SYNC_OK.to_owned(),
                sync_type: Some(report.sync_type),
                client_mode: report.client_mode,
                changes: report.changes.clone(),
            });
        }
        Err(error) => {
            state.request_clean_sync |= request_clean;
            state.last = Some(LastSync {
                time,
                result: format!("{error:#}"),
                sync_type: None,
                client_mode: None,
                changes: Changes::default(),
            });
        }
    }
    state.save(&config.state_dir)?;
    if let Some(metrics) = metrics {
        metrics.record(&state);
    }
    outcome.map(|(report, _)| report)
}

fn sync_with(
    config: &SyncConfig,
    state: &SyncState,
    cursor: &mut upload::UploadCursor,
    request_clean: bool,
) -> Result<(SyncReport, SyncedRules)> {
    let client = Client::new(config)?;
    let machine = MachineFacts::read(config);
    let rules_hash = state.rules.hash();
    let response = client.post(
        Stage::Preflight,
        &PreflightRequest {
            serial_num: &machine.serial,
            hostname: &machine.hostname,
            os_version: &machine.os_version,
            os_build: &machine.os_build,
            model_identifier: &machine.model,
            santa_version: concat!("blocker ", env!("CARGO_PKG_VERSION")),
            primary_user: "",
            client_mode: ClientMode::Monitor,
            request_clean_sync: request_clean,
            binary_rule_count: state.rules.binary.len(),
            certificate_rule_count: 0,
            compiler_rule_count: 0,
            transitive_rule_count: 0,
            teamid_rule_count: 0,
            signingid_rule_count: 0,
            cdhash_rule_count: 0,
            machine_id: &config.machine_id,
            rules_hash: &rules_hash,
        },
    )?;
    let preflight = Preflight::read(&response, request_clean)?;
    if preflight.client_mode == Some(ClientMode::Lockdown) {
        log::warn!(
            "sync: the server asks for LOCKDOWN mode, which blocker does not have yet; \
             the synced blocklist is enforced as in MONITOR"
        );
    }

    let events_uploaded = upload::upload(
        &client,
        &config.machine_id,
        &config.events_file,
        &config.policy_dir,
        preflight.batch_size,
        cursor,
    )?;

    let downloaded = download_rules(&client, config)?;
    let (rules, changes) = state.rules.after(preflight.sync_type, &downloaded);
    let installed = install(config, &rules)?;

    client.post(
        Stage::Postflight,
        &PostflightRequest {
            rules_received: downloaded.len(),
            rules_processed: downloaded.len() - changes.skipped_total(),
            machine_id: &config.machine_id,
            sync_type: preflight.sync_type,
            rules_hash: &rules.hash(),
        },
    )?;
    Ok((
        SyncReport {
            sync_type: preflight.sync_type,
            client_mode: preflight.client_mode,
            rules_received: downloaded.len(),
            banned: rules.banned(),
            changes,
            events_uploaded,
            event_files_lost: cursor.files_lost,
            installed,
        },
        rules,
    ))
}

/// Every page of the rule download, or an error: the pages are applied together or not at all.
fn download_rules(client: &Client, config: &SyncConfig) -> Result<Vec<protocol::DownloadedRule>> {
    let mut rules = Vec::new();
    let mut cursor: Option<String> = None;
    for page_number in 1.. {
        if page_number > MAX_PAGES {
            bail!("ruledownload: the server's cursor did not end within {MAX_PAGES} pages");
        }
        let body = client.post(
            Stage::RuleDownload,
            &RuleDownloadRequest {
                cursor: cursor.as_deref(),
                machine_id: &config.machine_id,
            },
        )?;
        let page = RulePage::read(&body, page_number)?;
        rules.extend(page.rules);
        if rules.len() > MAX_RULES {
            bail!("ruledownload: more than {MAX_RULES} rules");
        }
        match page.cursor {
            Some(next) if Some(&next) == cursor.as_ref() => {
                bail!("ruledownload: page {page_number} sent back the cursor it was asked for")
            }
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    Ok(rules)
}

/// Installs the policy of `rules` unless the policy directory holds it already. Whether it
/// wrote it.
fn install(config: &SyncConfig, rules: &SyncedRules) -> Result<bool> {
    let contents = rules.policy(&config.server_url);
    let current = fs::read_to_string(config.policy_dir.join(POLICY_FILE_NAME)).ok();
    if current.as_deref() == Some(contents.as_str()) {
        return Ok(false);
    }
    let change = PolicyChange::Install(vec![PolicyFile {
        name: POLICY_FILE_NAME.to_owned(),
        origin: format!("{POLICY_FILE_NAME} (synced from {})", config.server_url),
        contents,
    }]);
    control::make_change(change, &config.policy_dir, &config.status_file)
        .context("installing the synced rules")?;
    Ok(true)
}

/// What preflight tells the server about this machine.
struct MachineFacts {
    serial: String,
    hostname: String,
    os_version: String,
    os_build: String,
    model: String,
}

impl MachineFacts {
    fn read(config: &SyncConfig) -> Self {
        let read = |path: &str| {
            fs::read_to_string(path)
                .map(|text| text.trim().to_owned())
                .unwrap_or_default()
        };
        let os_version = read("/etc/os-release")
            .lines()
            .find_map(|line| line.strip_prefix("PRETTY_NAME="))
            .map(|name| name.trim_matches('"').to_owned())
            .unwrap_or_default();
        let serial = Some(read("/sys/class/dmi/id/product_serial"))
            .filter(|serial| !serial.is_empty())
            .unwrap_or_else(|| config.machine_id.clone());
        Self {
            serial,
            hostname: read("/proc/sys/kernel/hostname"),
            os_version,
            os_build: read("/proc/sys/kernel/osrelease"),
            model: read("/sys/class/dmi/id/product_name"),
        }
    }
}
