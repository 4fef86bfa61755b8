//! The sync configuration file (`/etc/blocker/sync.toml`): which server, with which
//! credentials, how often, and where the synced rules and the sync's own state go.

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{bail, ensure, Context, Result};
use serde::Deserialize;

use super::metrics::{self as sync_metrics, SyncMetrics};
use crate::{metrics, sinks, status};

/// Where the package installs the configuration.
pub const DEFAULT_CONFIG_FILE: &str = "/etc/blocker/sync.toml";
/// Where the sync keeps its rules and upload cursor between runs.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/blocker/sync";
const DEFAULT_MACHINE_ID_FILE: &str = "/etc/machine-id";
const DEFAULT_POLICY_DIR: &str = "/etc/blocker/policies";
const DEFAULT_INTERVAL_SECONDS: u64 = 600;
const DEFAULT_ATTEMPTS: u32 = 4;
/// The machine id goes into every URL: it is kept to characters that need no escaping there.
const MAX_MACHINE_ID_BYTES: usize = 128;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ConfigFile {
    server_url: String,
    ca_file: PathBuf,
    client_cert_file: PathBuf,
    client_key_file: PathBuf,
    interval_seconds: Option<u64>,
    machine_id: Option<String>,
    machine_id_file: Option<PathBuf>,
    attempts: Option<u32>,
    state_dir: Option<PathBuf>,
    policy_dir: Option<PathBuf>,
    status_file: Option<PathBuf>,
    events_file: Option<PathBuf>,
    metrics_file: Option<PathBuf>,
}

/// A checked sync configuration.
#[derive(Clone, Debug)]
pub struct SyncConfig {
    /// The server's base URL, without a trailing slash; stages are `<base>/<stage>/<id>`.
    pub server_url: String,
    pub ca_file: PathBuf,
    pub client_cert_file: PathBuf,
    pub client_key_file: PathBuf,
    pub interval: Duration,
    pub machine_id: String,
    /// Tries per request before the sync is abandoned.
    pub attempts: u32,
    pub state_dir: PathBuf,
    /// The policy directory the synced policy file is installed into.
    pub policy_dir: PathBuf,
    /// The daemon to ask to install it (see [`crate::control::change`]).
    pub status_file: PathBuf,
    /// The daemon's events file, whose denials are uploaded.
    pub events_file: PathBuf,
    /// node_exporter's textfile for the sync's metrics, if any.
    pub metrics_file: Option<PathBuf>,
}

impl SyncConfig {
    pub fn read(path: &Path) -> Result<Self> {
        let origin = path.display();
        let text = fs::read_to_string(path).with_context(|| format!("reading {origin}"))?;
        let file: ConfigFile = toml::from_str(&text).with_context(|| format!("{origin}"))?;
        let server_url = file.server_url.trim_end_matches('/').to_owned();
        ensure!(
            server_url.starts_with("https://"),
            "{origin}: server_url must be https:// (the sync is mutual TLS), not {server_url:?}"
        );
        let machine_id = match (file.machine_id, file.machine_id_file) {
            (Some(_), Some(_)) => {
                bail!("{origin}: machine_id and machine_id_file are alternatives; give one")
            }
            (Some(id), None) => id,
            (None, file) => {
                let file = file.unwrap_or_else(|| PathBuf::from(DEFAULT_MACHINE_ID_FILE));
                fs::read_to_string(&file)
                    .with_context(|| {
                        format!("{origin}: reading the machine id from {}", file.display())
                    })?
                    .trim()
                    .to_owned()
            }
        };
        check_machine_id(&machine_id).with_context(|| format!("{origin}: machine id"))?;
        let interval = file.interval_seconds.unwrap_or(DEFAULT_INTERVAL_SECONDS);
        ensure!(
            interval >= 1,
            "{origin}: interval_seconds must be at least 1"
        );
        let attempts = file.attempts.unwrap_or(DEFAULT_ATTEMPTS);
        ensure!(attempts >= 1, "{origin}: attempts must be at least 1");
        Ok(Self {
            server_url,
            ca_file: file.ca_file,
            client_cert_file: file.client_cert_file,
            client_key_file: file.client_key_file,
            interval: Duration::from_secs(interval),
            machine_id,
            attempts,
            state_dir: file
                .state_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
            policy_dir: file
                .policy_dir
                .unwrap_or_else(|| PathBuf::from(DEFAULT_POLICY_DIR)),
            status_file: file
                .status_file
                .unwrap_or_else(|| PathBuf::from(status::DEFAULT_STATUS_FILE)),
            events_file: file
                .events_file
                .unwrap_or_else(|| PathBuf::from(sinks::DEFAULT_EVENTS_FILE)),
            // An empty path turns the default off.
            metrics_file: match file.metrics_file {
                Some(path) if path.as_os_str().is_empty() => None,
                Some(path) => Some(path),
                None => metrics::default_textfile_named(sync_metrics::TEXTFILE_NAME),
            },
        })
    }

    /// The configuration as a daemon runs it (`blocker run --sync-config`): its own policy
    /// directory, status document and events file, whatever the file says.
    pub fn for_daemon(
        self,
        policy_dir: &Path,
        status_file: &Path,
        events_file: Option<&Path>,
    ) -> Self {
        Self {
            policy_dir: policy_dir.to_owned(),
            status_file: status_file.to_owned(),
            events_file: events_file.map_or(self.events_file, Path::to_owned),
            ..self
        }
    }

    /// Where this configuration's syncs record their metrics.
    pub fn metrics(&self) -> Option<SyncMetrics> {
        self.metrics_file.clone().map(SyncMetrics::new)
    }

    /// The URL of `stage` for this machine.
    pub fn stage_url(&self, stage: &str) -> String {
        format!("{}/{stage}/{}", self.server_url, self.machine_id)
    }
}

fn check_machine_id(id: &str) -> Result<()> {
    ensure!(!id.is_empty(), "empty");
    ensure!(
        id.len() <= MAX_MACHINE_ID_BYTES,
        "longer than {MAX_MACHINE_ID_BYTES} bytes"
    );
    ensure!(
        id.bytes()
            .all(|byte| byte.is_ascii_alphanumeric() || matches!(byte, b'-' | b'_' | b'.')),
        "{id:?} holds characters other than letters, digits, '-', '_' and '.'"
    );
    ensure!(id != "." && id != "..", "{id:?} is not a name");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(extra: &str) -> Result<SyncConfig> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.toml");
        fs::write(
            &path,
            format!(
                "server_url = \"https://sync.example/v1/santa/\"\nca_file = \"/ca\"\n\
                 client_cert_file = \"/cert\"\nclient_key_file = \"/key\"\n{extra}"
            ),
        )
        .unwrap();
        SyncConfig::read(&path)
    }

    #[test]
    fn stages_are_urls_under_the_base() {
        let config = config("machine_id = \"host-1\"\n").unwrap();
        assert_eq!(
            config.stage_url("preflight"),
            "https://sync.example/v1/santa/preflight/host-1"
        );
        assert_eq!(config.interval, Duration::from_secs(600));
    }

    #[test]
    fn a_machine_id_that_would_change_the_url_is_refused() {
        for id in ["../x", "a/b", "a b", "", "..", "é"] {
            let error = config(&format!("machine_id = {id:?}\n")).unwrap_err();
            assert!(
                format!("{error:#}").contains("machine id"),
                "{id}: {error:#}"
            );
        }
        let error = config("machine_id = \"a\"\nserver_url2 = 1\n").unwrap_err();
        assert!(format!("{error:#}").contains("server_url2"), "{error:#}");
    }

    #[test]
    fn plain_http_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.toml");
        fs::write(
            &path,
            "server_url = \"http://sync.example\"\nca_file = \"/ca\"\nclient_cert_file = \"/c\"\n\
             client_key_file = \"/k\"\nmachine_id = \"m\"\n",
        )
        .unwrap();
        let error = SyncConfig::read(&path).unwrap_err();
        assert!(format!("{error:#}").contains("https://"), "{error:#}");
    }
}
