//! `blocker status`: what the daemon said about itself, whether it still runs, and what it
//! left pinned in the kernel if it does not.

use crate::escape::{controls_escaped, escaped};
use std::{
    fs, io,
    path::Path,
    process::ExitCode,
    time::{Duration, SystemTime},
};

use anyhow::Result;
use serde::Serialize;

use crate::sync::{self, SyncOverview};

use super::{
    process::{liveness, Liveness},
    read, StatusDocument, EXIT_NOT_RUNNING, PIN_DIR,
};

/// `blocker status [--json] [--status-file PATH] [--sync-config PATH]`: exits 0 if the daemon
/// runs, 1 if not.
pub fn command(status_file: &Path, sync_config: &Path, as_json: bool) -> Result<ExitCode> {
    let document = read(status_file)?;
    let liveness = match &document {
        Some(document) => liveness(document),
        None => Liveness::NotRunning {
            reason: format!(
                "there is no status file {} (`blocker run` writes it while it runs; see \
                 --status-file)",
                escaped(&status_file)
            ),
        },
    };
    let pins = match liveness {
        Liveness::Running { .. } | Liveness::Held { .. } => None,
        Liveness::NotRunning { .. } => Some(pinned_objects(Path::new(PIN_DIR))),
    };
    let sync =
        sync::overview(sync_config).map(|overview| overview.map_err(|error| format!("{error:#}")));
    let report = Report {
        status_file,
        document: document.as_ref(),
        liveness: &liveness,
        pins: pins.as_ref(),
        sync: sync.as_ref(),
    };
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report.json()).expect("reports serialize")
        );
    } else {
        print!("{}", report.text(SystemTime::now()));
    }
    Ok(match liveness {
        Liveness::Running { .. } => ExitCode::SUCCESS,
        Liveness::Held { .. } | Liveness::NotRunning { .. } => ExitCode::from(EXIT_NOT_RUNNING),
    })
}

/// What is pinned under the pin directory, which keeps enforcing without a daemon.
#[derive(Debug, PartialEq)]
enum Pins {
    Nothing,
    Objects(Vec<String>),
    /// Could not look, e.g. bpffs is only open to root.
    Unknown(String),
}

fn pinned_objects(dir: &Path) -> Pins {
    let mut objects = Vec::new();
    match list_files(dir, dir, &mut objects) {
        Ok(()) if objects.is_empty() => Pins::Nothing,
        Ok(()) => {
            objects.sort();
            Pins::Objects(objects)
        }
        Err(error) if error.kind() == io::ErrorKind::NotFound => Pins::Nothing,
        Err(error) => Pins::Unknown(format!("cannot list {}: {error}", escaped(&dir))),
    }
}

/// Every non-directory below `dir`, relative to `base`.
fn list_files(base: &Path, dir: &Path, found: &mut Vec<String>) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            list_files(base, &entry.path(), found)?;
        } else {
            let path = entry.path();
            let relative = path.strip_prefix(base).unwrap_or(&path);
            found.push(escaped(&relative).to_string());
        }
    }
    Ok(())
}

struct Report<'a> {
    status_file: &'a Path,
    document: Option<&'a StatusDocument>,
    liveness: &'a Liveness,
    /// Looked at only when no daemon runs.
    pins: Option<&'a Pins>,
    /// The fleet sync, where one has run; or why its state cannot be read.
    sync: Option<&'a Result<SyncOverview, String>>,
}

/// The document's fields with what `blocker status` found out.
#[derive(Serialize)]
struct JsonReport<'a> {
    running: bool,
    /// Seconds since the daemon started, to the hundredth; `null` when it is not running.
    uptime_seconds: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    not_running_reason: Option<&'a str>,
    /// Why a daemon that is there does nothing (stopped, traced, frozen).
    #[serde(skip_serializing_if = "Option::is_none")]
    held: Option<&'a str>,
    status_file: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pinned_objects: Option<Vec<String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pinned_objects_unknown: Option<&'a str>,
    #[serde(flatten)]
    document: Option<&'a StatusDocument>,
    #[serde(skip_serializing_if = "Option::is_none")]
    sync: Option<JsonSync<'a>>,
}

#[derive(Serialize)]
#[serde(untagged)]
enum JsonSync<'a> {
    Overview(&'a SyncOverview),
    Unreadable { error: &'a str },
}

impl Report<'_> {
    fn json(&self) -> JsonReport<'_> {
        let (running, uptime_seconds, not_running_reason, held) = match self.liveness {
            Liveness::Running { uptime } => {
                (true, Some(uptime.as_millis() as f64 / 1000.0), None, None)
            }
            Liveness::Held { reason } => (false, None, None, Some(reason.as_str())),
            Liveness::NotRunning { reason } => (false, None, Some(reason.as_str()), None),
        };
        let (pinned_objects, pinned_objects_unknown) = match self.pins {
            None => (None, None),
            Some(Pins::Nothing) => (Some(Vec::new()), None),
            Some(Pins::Objects(objects)) => (Some(objects.clone()), None),
            Some(Pins::Unknown(why)) => (None, Some(why.as_str())),
        };
        JsonReport {
            running,
            uptime_seconds,
            not_running_reason,
            held,
            status_file: self.status_file.display().to_string(),
            pinned_objects,
            pinned_objects_unknown,
            document: self.document,
            sync: self.sync.map(|sync| match sync {
                Ok(overview) => JsonSync::Overview(overview),
                Err(error) => JsonSync::Unreadable { error },
            }),
        }
    }

    fn text(&self, now: SystemTime) -> String {
        let mut out = String::new();
        // The document is read from a file: nothing in it may act on the terminal.
        let mut line = |label: &str, value: String| {
            out.push_str(&format!("{label:<13}{}\n", controls_escaped(&value)));
        };
        match (self.liveness, self.document) {
            (Liveness::Running { uptime }, Some(document)) => {
                line(
                    "blocker",
                    format!(
                        "running: pid {}, version {}, up {} (since {})",
                        document.pid,
                        document.version,
                        whole_seconds(*uptime),
                        document.started
                    ),
                );
                describe(document, now, &mut line);
            }
            (Liveness::Held { reason }, Some(document)) => {
                line(
                    "blocker",
                    format!(
                        "held: {reason}; the kernel keeps enforcing the maps as they are, but no \
                         event is delivered and nothing is refreshed or reloaded"
                    ),
                );
                describe(document, now, &mut line);
            }
            (Liveness::NotRunning { reason }, document) => {
                line("blocker", format!("not running: {reason}"));
                match self.pins {
                    Some(Pins::Nothing) | None => {
                        line("in kernel", format!("nothing pinned under {PIN_DIR}"));
                    }
                    Some(Pins::Objects(objects)) => {
                        line(
                            "in kernel",
                            format!("pinned under {PIN_DIR}, enforcing without the daemon:"),
                        );
                        for object in objects {
                            line("", object.clone());
                        }
                    }
                    Some(Pins::Unknown(why)) => line("in kernel", why.clone()),
                }
                if let Some(document) = document {
                    line("last status", "as the daemon left it:".to_owned());
                    describe(document, now, &mut line);
                }
            }
            (Liveness::Running { .. } | Liveness::Held { .. }, None) => {
                unreachable!("only a document says it runs")
            }
        }
        match self.sync {
            None => {}
            Some(Ok(sync)) => {
                line(
                    "sync",
                    format!(
                        "{}: last sync {}: {}; {} synced rules",
                        sync.server, sync.last_time, sync.last_result, sync.synced_rules
                    ),
                );
                if sync.event_files_lost > 0 {
                    line(
                        "",
                        format!(
                            "rotation deleted events files before their denials were all \
                             uploaded, {} times: denials may have been dropped",
                            sync.event_files_lost
                        ),
                    );
                }
            }
            Some(Err(error)) => line("sync", format!("state unreadable: {error}")),
        }
        out
    }
}

fn describe(document: &StatusDocument, now: SystemTime, line: &mut impl FnMut(&str, String)) {
    let yes_no = |flag: bool| if flag { "yes" } else { "no" };
    line(
        "backend",
        format!("{}: {}", document.backend, document.backend_reason),
    );
    line(
        "kernel",
        format!(
            "LSMs {}; BTF {}; content checks with IMA {}",
            document.kernel.lsms.join(","),
            yes_no(document.kernel.btf),
            yes_no(document.kernel.ima_content_checks)
        ),
    );
    let mut label = "features";
    for feature in document.features.describe() {
        line(label, feature);
        label = "";
    }
    let mut label = "policies";
    for policy in &document.policies {
        line(
            label,
            format!("{} ({}) {}", policy.name, policy.mode, policy.file),
        );
        label = "";
    }
    line("rules", document.rules.to_string());
    let over_budget = match document.entries.over_budget {
        0 => String::new(),
        files => format!(" ({files} more files named but left out: over the map's budget)"),
    };
    let undecided = match document.entries.undecided {
        0 => String::new(),
        lookups => format!(
            "; {lookups} lookups failed (not as missing files), their rules' bans kept: see the \
             log"
        ),
    };
    line(
        "kernel maps",
        format!(
            "{} banned files, {} banned contents{over_budget}{undecided}",
            document.entries.banned_files, document.entries.banned_contents
        ),
    );
    line(
        "events",
        format!(
            "{} delivered, {} lost, {} repeats suppressed",
            document.events.delivered, document.events.lost, document.events.suppressed
        ),
    );
    let pinned = if document.pinned {
        format!("yes, under {PIN_DIR}")
    } else {
        "no".to_owned()
    };
    line("pinned", pinned);
    let age = humantime::parse_rfc3339(&document.updated)
        .ok()
        .and_then(|updated| now.duration_since(updated).ok())
        .map(|age| format!(" ({} ago)", whole_seconds(age)))
        .unwrap_or_default();
    line("updated", format!("{}{age}", document.updated));
}

fn whole_seconds(duration: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_secs(duration.as_secs()))
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::status::{tests::example_document, DaemonState};

    fn at(time: &str) -> SystemTime {
        humantime::parse_rfc3339(time).unwrap()
    }

    #[test]
    fn a_running_daemon_in_text() {
        let document = example_document();
        let report = Report {
            status_file: Path::new("/run/blocker/status.json"),
            document: Some(&document),
            liveness: &Liveness::Running {
                uptime: Duration::from_millis(3_723_450),
            },
            pins: None,
            sync: None,
        };
        assert_eq!(
            report.text(at("2026-11-28T10:05:02Z")),
            "blocker      running: pid 4242, version 0.1.0, up 1h 2m 3s (since \
             2026-11-28T10:00:00Z)\n\
             backend      lsm: `bpf` is an active LSM (lockdown,capability,integrity,bpf) and \
             the LSM program loaded\n\
             kernel       LSMs lockdown,capability,integrity,bpf; BTF yes; content checks with \
             IMA yes\n\
             features     exec checks: on\n\
             \x20            content checks at exec: on\n\
             \x20            verdict cache: on\n\
             \x20            executable-mapping checks: on\n\
             \x20            content checks of executable mappings: on\n\
             \x20            lockdown following package updates: on\n\
             \x20            tamper protection: partial; without protect_links (lsm/bpf): \
             refused by the verifier\n\
             policies     government-devices (enforce) \
             /etc/blocker/policies/government-devices.toml\n\
             rules        3\n\
             kernel maps  12 banned files, 1 banned contents\n\
             events       5 delivered, 0 lost, 0 repeats suppressed\n\
             pinned       no\n\
             updated      2026-11-28T10:05:00Z (2s ago)\n"
        );
    }

    #[test]
    fn the_fleet_sync_is_shown_where_one_ran() {
        let document = example_document();
        let synced = Ok(SyncOverview {
            server: "https://santa.example/v1/santa".to_owned(),
            synced_rules: 12,
            last_time: "2026-11-28T10:04:00Z".to_owned(),
            last_result: "ok".to_owned(),
            event_files_lost: 2,
        });
        let unreadable = Err("reading /var/lib/blocker/sync/state.json: Permission denied".into());
        let running = Liveness::Running {
            uptime: Duration::from_secs(60),
        };
        let report = |sync| Report {
            status_file: Path::new("/run/blocker/status.json"),
            document: Some(&document),
            liveness: &running,
            pins: None,
            sync,
        };
        let text = report(Some(&synced)).text(at("2026-11-28T10:05:02Z"));
        assert!(
            text.ends_with(
                "sync         https://santa.example/v1/santa: last sync 2026-11-28T10:04:00Z: \
                 ok; 12 synced rules\n\
                 \x20            rotation deleted events files before their denials were all \
                 uploaded, 2 times: denials may have been dropped\n"
            ),
            "{text}"
        );
        let json = serde_json::to_value(report(Some(&synced)).json()).unwrap();
        assert_eq!(json["sync"]["synced_rules"], 12);
        assert_eq!(json["sync"]["last_result"], "ok");
        let json = serde_json::to_value(report(Some(&unreadable)).json()).unwrap();
        assert!(json["sync"]["error"]
            .as_str()
            .unwrap()
            .contains("Permission denied"));
        assert!(report(Some(&unreadable))
            .text(at("2026-11-28T10:05:02Z"))
            .contains("sync         state unreadable: reading"));
        let json = serde_json::to_value(report(None).json()).unwrap();
        assert!(json.get("sync").is_none(), "no sync ran: {json}");
    }

    #[test]
    fn a_running_daemon_in_json_has_the_document_and_its_uptime() {
        let document = example_document();
        let report = Report {
            status_file: Path::new("/run/blocker/status.json"),
            document: Some(&document),
            liveness: &Liveness::Running {
                uptime: Duration::from_millis(3_723_450),
            },
            pins: None,
            sync: None,
        };
        let mut expected = serde_json::to_value(&document).unwrap();
        let fields = expected.as_object_mut().unwrap();
        fields.insert("running".into(), json!(true));
        fields.insert("uptime_seconds".into(), json!(3723.45));
        fields.insert("status_file".into(), json!("/run/blocker/status.json"));
        assert_eq!(serde_json::to_value(report.json()).unwrap(), expected);
    }

    #[test]
    fn a_stopped_daemon_says_why_and_what_is_pinned() {
        let mut document = example_document();
        document.state = DaemonState::Stopped;
        let pins = Pins::Objects(vec!["exec_check".to_owned(), "maps/banned".to_owned()]);
        let report = Report {
            status_file: Path::new("/run/blocker/status.json"),
            document: Some(&document),
            liveness: &Liveness::NotRunning {
                reason: "it stopped at 2026-11-28T11:00:00Z (pid 4242)".to_owned(),
            },
            pins: Some(&pins),
            sync: None,
        };
        let text = report.text(at("2026-11-28T12:00:00Z"));
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[..5],
            [
                "blocker      not running: it stopped at 2026-11-28T11:00:00Z (pid 4242)",
                "in kernel    pinned under /sys/fs/bpf/blocker, enforcing without the daemon:",
                "             exec_check",
                "             maps/banned",
                "last status  as the daemon left it:",
            ]
        );
        assert_eq!(
            lines[5],
            format!("backend      lsm: {}", document.backend_reason)
        );

        let json = serde_json::to_value(report.json()).unwrap();
        assert_eq!(json["running"], false);
        assert_eq!(json["uptime_seconds"], serde_json::Value::Null);
        assert_eq!(
            json["not_running_reason"],
            "it stopped at 2026-11-28T11:00:00Z (pid 4242)"
        );
        assert_eq!(json["pinned_objects"], json!(["exec_check", "maps/banned"]));
        assert_eq!(json["state"], "stopped");
    }

    #[test]
    fn strings_from_the_document_cannot_act_on_the_terminal() {
        let mut document = example_document();
        document.policies[0].name = "\u{1b}]0;owned\u{7}\nforged".to_owned();
        let report = Report {
            status_file: Path::new("/run/blocker/status.json"),
            document: Some(&document),
            liveness: &Liveness::Running {
                uptime: Duration::from_secs(1),
            },
            pins: None,
            sync: None,
        };
        let text = report.text(SystemTime::now());
        assert!(
            text.contains("policies     \\x1b]0;owned\\x07\\nforged (enforce)"),
            "{text}"
        );
        assert!(!text.contains(['\u{1b}', '\u{7}']), "{text:?}");
    }

    #[test]
    fn no_document_and_nothing_pinned() {
        let report = Report {
            status_file: Path::new("/run/blocker/status.json"),
            document: None,
            liveness: &Liveness::NotRunning {
                reason: "there is no status file".to_owned(),
            },
            pins: Some(&Pins::Nothing),
            sync: None,
        };
        assert_eq!(
            report.text(SystemTime::now()),
            "blocker      not running: there is no status file\n\
             in kernel    nothing pinned under /sys/fs/bpf/blocker\n"
        );
        assert_eq!(
            serde_json::to_value(report.json()).unwrap(),
            json!({
                "running": false,
                "uptime_seconds": null,
                "not_running_reason": "there is no status file",
                "status_file": "/run/blocker/status.json",
                "pinned_objects": [],
            })
        );
    }

    #[test]
    fn lists_pinned_objects_below_the_pin_directory() {
        let dir = tempfile::tempdir().unwrap();
        let pins = dir.path().join("blocker");
        assert_eq!(pinned_objects(&pins), Pins::Nothing);
        fs::create_dir_all(pins.join("maps")).unwrap();
        assert_eq!(pinned_objects(&pins), Pins::Nothing);
        fs::write(pins.join("maps/banned_files"), "").unwrap();
        fs::write(pins.join("exec_check"), "").unwrap();
        assert_eq!(
            pinned_objects(&pins),
            Pins::Objects(vec![
                "exec_check".to_owned(),
                "maps/banned_files".to_owned()
            ])
        );
    }
}
