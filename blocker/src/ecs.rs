//! Records as Elastic Common Schema documents (`blocker run --events-format ecs`), for SIEMs
//! that index ECS: the fields ECS defines where it has one, everything else under `blocker.*`;
//! and back, so that `blocker events` reads an events file of either format.
//!
//! The ECS fields used, and the allowed values of its categorization fields, are kept in
//! `docs/ecs/` as ECS publishes them; the tests check every document against them.

use std::fmt;

use serde::{Serialize, Serializer};
use serde_json::Value;

use crate::events::{Caller, Enforcement, ExecRecord, Record, TamperRecord, UntrustedPath};

/// The ECS release whose fields and allowed values the documents follow (`docs/ecs/`).
pub const VERSION: &str = "8.17.0";

/// The machine the daemon runs on, as every document names it.
#[derive(Debug, Serialize)]
pub struct Host {
    /// What `hostname` says.
    name: String,
    /// `/etc/machine-id`, where the machine has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<String>,
}

impl Host {
    pub fn this() -> Self {
        let id = std::fs::read_to_string("/etc/machine-id")
            .ok()
            .map(|id| id.trim().to_owned())
            .filter(|id| !id.is_empty());
        Self {
            name: hostname(),
            id,
        }
    }
}

fn hostname() -> String {
    let mut name = [0u8; 256];
    // SAFETY: writes at most `name.len()` bytes into `name`.
    let result = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) };
    if result != 0 {
        return String::new();
    }
    let end = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    String::from_utf8_lossy(&name[..end]).into_owned()
}

/// Appends `record` to `out` as one ECS document (JSON, no newline).
pub fn write_document(record: &Record, host: &Host, out: &mut Vec<u8>) {
    let result = match record {
        Record::Exec(exec) => serde_json::to_writer(out, &exec_document(exec, host)),
        Record::Tamper(tamper) => serde_json::to_writer(out, &tamper_document(tamper, host)),
        other => write_other(other, host, out),
    };
    result.expect("documents serialize");
}

/// How ECS categorizes a record: event.kind, event.category, event.type and event.outcome.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Categorization {
    pub kind: &'static str,
    pub category: &'static [&'static str],
    pub types: &'static [&'static str],
    pub outcome: &'static str,
}

const fn categorized(
    kind: &'static str,
    category: &'static [&'static str],
    types: &'static [&'static str],
    outcome: &'static str,
) -> Categorization {
    Categorization {
        kind,
        category,
        types,
        outcome,
    }
}

/// An exec refused or audited: a process start (or, for a mapping made executable, a library
/// loaded), seen by an intrusion detection system.
fn exec_categorization(exec: &ExecRecord) -> Categorization {
    let category: &'static [&'static str] = if exec.operation == "exec" {
        &["process", "intrusion_detection"]
    } else {
        &["library", "intrusion_detection"]
    };
    let (types, outcome): (&'static [&'static str], _) = match exec.enforcement {
        Enforcement::None => (&["start", "allowed"], "success"),
        Enforcement::Eperm | Enforcement::Sigkill => (&["start", "denied"], "failure"),
    };
    categorized("alert", category, types, outcome)
}

/// A tamper attempt the kernel refused.
const TAMPER: Categorization =
    categorized("alert", &["intrusion_detection"], &["denied"], "failure");

/// How a record of each kind is categorized; the tests check these against ECS.
pub fn categorization(record: &Record) -> Categorization {
    match record {
        Record::Exec(exec) => exec_categorization(exec),
        Record::Tamper(_) => TAMPER,
        Record::Started { .. } => categorized("event", &["process"], &["start"], "success"),
        Record::Stopped { .. } => categorized("event", &["process"], &["end"], "success"),
        // Killed, frozen or starved: perhaps an attack on the daemon.
        Record::DaemonLost { .. } => categorized("alert", &["process"], &["end"], "unknown"),
        Record::Reloaded { .. } | Record::PolicyChanged { .. } => {
            categorized("event", &["configuration"], &["change"], "success")
        }
        Record::ReloadFailed { .. } => {
            categorized("event", &["configuration"], &["change"], "failure")
        }
        Record::Unloaded { .. } => {
            categorized("event", &["configuration"], &["deletion"], "success")
        }
        // Records of the intrusion detection system that never reached a reader.
        Record::EventsLost { .. } | Record::RecordsDropped { .. } => {
            categorized("event", &["intrusion_detection"], &["info"], "failure")
        }
    }
}

#[derive(Serialize)]
struct Document<'a, Summary: fmt::Display, Extra: Serialize> {
    #[serde(rename = "@timestamp")]
    timestamp: &'a str,
    /// The line the daemon's log has for the record.
    #[serde(serialize_with = "displayed")]
    message: Summary,
    ecs: Ecs,
    event: Event<'a>,
    host: &'a Host,
    #[serde(skip_serializing_if = "Option::is_none")]
    process: Option<Process<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    user: Option<Id>,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<Id>,
    #[serde(skip_serializing_if = "Option::is_none")]
    file: Option<File<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    rule: Option<Rule<'a>>,
    blocker: Extra,
}

/// Written straight into the document, without an intermediate string.
fn displayed<S: Serializer>(summary: &impl fmt::Display, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(summary)
}

#[derive(Serialize)]
struct Ecs {
    version: &'static str,
}

const ECS: Ecs = Ecs { version: VERSION };

#[derive(Serialize)]
struct Event<'a> {
    kind: &'static str,
    category: &'static [&'static str],
    #[serde(rename = "type")]
    types: &'static [&'static str],
    action: &'a str,
    outcome: &'static str,
    module: &'static str,
    dataset: &'static str,
}

impl<'a> Event<'a> {
    fn new(categorization: Categorization, action: &'a str) -> Self {
        Self {
            kind: categorization.kind,
            category: categorization.category,
            types: categorization.types,
            action,
            outcome: categorization.outcome,
            module: "blocker",
            dataset: "blocker.events",
        }
    }
}

#[derive(Serialize)]
struct Process<'a> {
    pid: u32,
    #[serde(skip_serializing_if = "Option::is_none")]
    thread: Option<Thread>,
    #[serde(skip_serializing_if = "Option::is_none")]
    name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    executable: Option<&'a str>,
    /// The hash of `executable`'s file.
    #[serde(skip_serializing_if = "Option::is_none")]
    hash: Option<Hash<'a>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    parent: Option<Parent>,
}

impl<'a> Process<'a> {
    fn of(caller: &'a Caller, executable: Option<&'a str>) -> Self {
        Self {
            pid: caller.pid,
            thread: Some(Thread { id: caller.tid }),
            name: Some(&caller.comm),
            executable,
            hash: None,
            parent: Some(Parent { pid: caller.ppid }),
        }
    }

    fn with_pid(pid: u32) -> Self {
        Self {
            pid,
            thread: None,
            name: None,
            executable: None,
            hash: None,
            parent: None,
        }
    }
}

#[derive(Clone, Copy, Serialize)]
struct Hash<'a> {
    sha256: &'a str,
}

#[derive(Serialize)]
struct Thread {
    id: u32,
}

#[derive(Serialize)]
struct Parent {
    pid: u32,
}

/// user.id and group.id: ECS keywords, so the number as text.
#[derive(Serialize)]
struct Id {
    #[serde(serialize_with = "keyword")]
    id: u64,
}

#[derive(Serialize)]
struct File<'a> {
    #[serde(skip_serializing_if = "str::is_empty")]
    path: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    device: &'a str,
    /// An ECS keyword.
    #[serde(serialize_with = "keyword", skip_serializing_if = "is_zero")]
    inode: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    hash: Option<Hash<'a>>,
}

impl<'a> File<'a> {
    /// The file an event is about, where the record names one.
    fn of(path: &'a str, device: &'a str, inode: u64) -> Option<Self> {
        (!path.is_empty() || inode != 0).then_some(Self {
            path,
            device,
            inode,
            hash: None,
        })
    }
}

#[derive(Serialize)]
struct Rule<'a> {
    id: &'a str,
    name: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    ruleset: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    description: Option<&'a str>,
    /// Where to read more about the rule (its `url`).
    #[serde(skip_serializing_if = "Option::is_none")]
    reference: Option<&'a str>,
}

/// What ECS has no field for, in the custom namespace `blocker`: the record's kind and the rest
/// of its fields. Spelled out rather than flattened from the record's parts, which would make
/// serde write every document through a map, at a cost per record.
#[derive(Serialize)]
struct ExecExtra<'a> {
    kind: &'static str,
    action: &'static str,
    enforcement: Enforcement,
    backend: &'static str,
    operation: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    path_hex: Option<&'a str>,
    path_truncated: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    comm_hex: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    untrusted_path: Option<&'a UntrustedPath>,
    #[serde(skip_serializing_if = "is_zero")]
    suppressed_before: u32,
    #[serde(skip_serializing_if = "is_zero")]
    daemon_silent_seconds: u32,
}

#[derive(Serialize)]
struct TamperExtra<'a> {
    kind: &'static str,
    attempt: &'static str,
    detail: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    path_hex: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    comm_hex: Option<&'a str>,
    #[serde(skip_serializing_if = "is_zero")]
    suppressed_before: u32,
    #[serde(skip_serializing_if = "is_zero")]
    daemon_silent_seconds: u32,
}

fn keyword<S: Serializer>(number: &u64, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.collect_str(number)
}

fn is_zero<Number: Default + PartialEq>(number: &Number) -> bool {
    *number == Number::default()
}

fn user_and_group(caller: &Caller) -> (Option<Id>, Option<Id>) {
    (
        Some(Id {
            id: caller.uid.into(),
        }),
        Some(Id {
            id: caller.gid.into(),
        }),
    )
}

fn exec_document<'a>(
    exec: &'a ExecRecord,
    host: &'a Host,
) -> Document<'a, impl fmt::Display + 'a, ExecExtra<'a>> {
    let (user, group) = user_and_group(&exec.caller);
    // ECS wants the absolute path: an exec path as the caller spelled it may be relative, or
    // cut short.
    let is_exec = exec.operation == "exec";
    let executable =
        (is_exec && exec.path.starts_with('/') && !exec.path_truncated).then_some(&*exec.path);
    let hash = exec.sha256.as_deref().map(|sha256| Hash { sha256 });
    let mut process = Process::of(&exec.caller, executable);
    // The exec'd file is the process's executable; a mapped library is only the event's file.
    process.hash = hash.filter(|_| is_exec);
    let mut file = File::of(&exec.path, &exec.device, exec.inode);
    if let Some(file) = &mut file {
        file.hash = hash;
    }
    Document {
        timestamp: &exec.time,
        message: exec.summary(),
        ecs: ECS,
        event: Event::new(exec_categorization(exec), exec.operation),
        host,
        process: Some(process),
        user,
        group,
        file,
        rule: Some(Rule {
            id: &exec.rule,
            name: &exec.rule,
            ruleset: &exec.policy,
            description: exec.reason.as_deref(),
            reference: exec.url.as_deref(),
        }),
        blocker: ExecExtra {
            kind: "exec",
            action: exec.action,
            enforcement: exec.enforcement,
            backend: exec.backend,
            operation: exec.operation,
            path_hex: exec.path_hex.as_deref(),
            path_truncated: exec.path_truncated,
            comm_hex: exec.caller.comm_hex.as_deref(),
            untrusted_path: exec.untrusted_path.as_ref(),
            suppressed_before: exec.circumstances.suppressed_before,
            daemon_silent_seconds: exec.circumstances.daemon_silent_seconds,
        },
    }
}

fn tamper_document<'a>(
    tamper: &'a TamperRecord,
    host: &'a Host,
) -> Document<'a, String, TamperExtra<'a>> {
    let (user, group) = user_and_group(&tamper.caller);
    Document {
        timestamp: &tamper.time,
        message: tamper.summary(),
        ecs: ECS,
        event: Event::new(TAMPER, tamper.attempt),
        host,
        process: Some(Process::of(&tamper.caller, None)),
        user,
        group,
        file: File::of(&tamper.path, &tamper.device, tamper.inode),
        rule: None,
        blocker: TamperExtra {
            kind: "tamper",
            attempt: tamper.attempt,
            detail: &tamper.detail,
            path_hex: tamper.path_hex.as_deref(),
            comm_hex: tamper.caller.comm_hex.as_deref(),
            suppressed_before: tamper.circumstances.suppressed_before,
            daemon_silent_seconds: tamper.circumstances.daemon_silent_seconds,
        },
    }
}

/// The records of the daemon's own life, few and far between: their fields as the JSON format
/// has them, under `blocker.*`, but for the time and the process and user they name.
fn write_other(record: &Record, host: &Host, out: &mut Vec<u8>) -> serde_json::Result<()> {
    let Value::Object(mut fields) = serde_json::to_value(record)? else {
        unreachable!("records serialize as objects");
    };
    let mut take = |name: &str| fields.remove(name).unwrap_or(Value::Null);
    let time = take("time");
    let pid = take("pid").as_u64().and_then(|pid| u32::try_from(pid).ok());
    let uid = take("uid").as_u64();
    let kind = fields
        .get("kind")
        .and_then(Value::as_str)
        .unwrap_or_default();
    let document = Document {
        timestamp: time.as_str().unwrap_or_default(),
        message: record.summary(),
        ecs: ECS,
        event: Event::new(categorization(record), kind),
        host,
        process: pid.map(Process::with_pid),
        user: uid.map(|id| Id { id }),
        group: None,
        file: None,
        rule: None,
        blocker: &fields,
    };
    serde_json::to_writer(out, &document)
}

/// Where a record's fields are in its ECS document, for reading them back: the ECS field, the
/// record's field, and whether ECS keeps the number as a keyword (text).
const READ_BACK: [(&str, &str, bool); 15] = [
    ("@timestamp", "time", false),
    ("process.pid", "pid", false),
    ("process.thread.id", "tid", false),
    ("process.parent.pid", "ppid", false),
    ("process.name", "comm", false),
    ("user.id", "uid", true),
    ("group.id", "gid", true),
    ("file.path", "path", false),
    ("file.device", "device", false),
    ("file.inode", "inode", true),
    ("file.hash.sha256", "sha256", false),
    ("rule.id", "rule", false),
    ("rule.ruleset", "policy", false),
    ("rule.description", "reason", false),
    ("rule.reference", "url", false),
];

/// The record a line of an events file holds, in either format: an ECS document as the record
/// it was made from, anything else as it is.
pub fn record_of_line(line: Value) -> Value {
    as_record(&line).unwrap_or(line)
}

/// The record an ECS document was made from, with the fields `blocker events` shows and
/// filters by, named as in the JSON format; `None` for anything but an ECS document of blocker's.
pub fn as_record(document: &Value) -> Option<Value> {
    document.get("ecs")?;
    let mut record = document.get("blocker")?.as_object()?.clone();
    for (ecs_field, name, keyword_number) in READ_BACK {
        let Some(value) = ecs_field
            .split('.')
            .try_fold(document, |value, part| value.get(part))
        else {
            continue;
        };
        let value = match value.as_str().map(str::parse::<u64>) {
            Some(Ok(number)) if keyword_number => number.into(),
            _ => value.clone(),
        };
        record.insert(name.to_owned(), value);
    }
    Some(Value::Object(record))
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;
    use crate::{
        events::{Circumstances, LostDaemon},
        kernel::coverage::Features,
    };

    /// `docs/ecs/fields.csv`: ECS's fields and their types.
    const FIELDS: &str = include_str!("../../docs/ecs/fields.csv");
    /// `docs/ecs/allowed_values.csv`: the allowed values of the categorization fields.
    const ALLOWED_VALUES: &str = include_str!("../../docs/ecs/allowed_values.csv");

    const TIME: &str = "2026-11-28T08:39:20.546048089Z";

    fn rows(csv: &str) -> impl Iterator<Item = Vec<&str>> {
        csv.lines()
            .filter(|line| !line.starts_with('#'))
            .skip(1)
            .map(|line| line.split(',').collect())
    }

    fn ecs_types() -> BTreeMap<&'static str, &'static str> {
        rows(FIELDS).map(|row| (row[0], row[1])).collect()
    }

    /// Per categorization field, its allowed values and the event types each allows.
    fn allowed() -> BTreeMap<&'static str, BTreeMap<&'static str, Vec<&'static str>>> {
        let mut allowed: BTreeMap<_, BTreeMap<_, _>> = BTreeMap::new();
        for row in rows(ALLOWED_VALUES) {
            let expected = row[2].split_whitespace().collect();
            allowed.entry(row[0]).or_default().insert(row[1], expected);
        }
        allowed
    }

    fn caller() -> Caller {
        Caller {
            pid: 40,
            tid: 41,
            ppid: 1,
            uid: 1000,
            gid: 100,
            comm: "bash".to_owned(),
            comm_hex: None,
        }
    }

    const SHA256: &str = "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08";

    fn exec(enforcement: Enforcement, operation: &'static str) -> ExecRecord {
        ExecRecord {
            time: TIME.to_owned(),
            action: if enforcement == Enforcement::None {
                "audit"
            } else {
                "deny"
            },
            enforcement,
            backend: "lsm",
            operation,
            rule: "wechat".to_owned(),
            policy: "ban".to_owned(),
            reason: Some("banned".to_owned()),
            url: Some("https://intranet.example/banned?rule=wechat".to_owned()),
            caller: caller(),
            path: "/opt/wechat/\u{fffd}".to_owned(),
            path_hex: Some("2f6f70742f7765636861742fff".to_owned()),
            path_truncated: false,
            device: "254:1".to_owned(),
            inode: 1234,
            sha256: Some(SHA256.to_owned()),
            untrusted_path: None,
            circumstances: Circumstances {
                suppressed_before: 3,
                daemon_silent_seconds: 0,
            },
            telling: Default::default(),
        }
    }

    /// A record of every kind, and of every categorization of exec records.
    pub(crate) fn every_kind() -> Vec<Record> {
        let time = || TIME.to_owned();
        vec![
            Record::Started {
                time: time(),
                backend: "kill",
                backend_reason: "forced".to_owned(),
                policies: vec!["ban".to_owned()],
                rules: 1,
                entries: 2,
                pinned: None,
                adopted: false,
                adoption_refused: None,
                protected: false,
                features: Features::kill_backend(),
            },
            Record::Exec(exec(Enforcement::Eperm, "exec")),
            Record::Exec(exec(Enforcement::None, "exec")),
            Record::Exec(exec(Enforcement::Sigkill, "mmap")),
            Record::Exec(exec(Enforcement::None, "mprotect")),
            Record::Exec(ExecRecord {
                rule: "untrusted_path".to_owned(),
                untrusted_path: Some(UntrustedPath {
                    levels_above: Some(1),
                    owner: Some(1000),
                    mode: Some("0755".to_owned()),
                }),
                ..exec(Enforcement::None, "exec")
            }),
            Record::Tamper(TamperRecord {
                time: time(),
                attempt: "file_change",
                detail: "open for writing".to_owned(),
                path: "/etc/blocker/policies".to_owned(),
                path_hex: None,
                device: "254:1".to_owned(),
                inode: 77,
                circumstances: Circumstances::default(),
                caller: caller(),
            }),
            Record::EventsLost {
                time: time(),
                lost: 5,
                total: 9,
            },
            Record::Reloaded {
                time: time(),
                policies: vec!["ban".to_owned()],
                rules: 1,
                entries: 2,
            },
            Record::ReloadFailed {
                time: time(),
                error: "ban.toml:1:1: bad".to_owned(),
            },
            Record::PolicyChanged {
                time: time(),
                pid: Some(500),
                uid: 0,
                installed: vec!["ban.toml".to_owned()],
                removed: vec![],
            },
            Record::RecordsDropped {
                time: time(),
                sink: "stdout",
                dropped: 2,
                total: 2,
            },
            Record::DaemonLost {
                time: time(),
                pid: 77,
                last_heard: time(),
                silent_seconds: 20,
            },
            Record::Unloaded {
                time: time(),
                pin_dir: "/sys/fs/bpf/blocker".to_owned(),
                pins: 9,
                pid: 501,
                uid: 0,
                daemon_lost: Some(LostDaemon {
                    pid: 77,
                    last_heard: time(),
                    silent_seconds: 20,
                }),
            },
            Record::Stopped {
                time: time(),
                events: 4,
                events_lost: 5,
                pinned: None,
                records_dropped: [("file", 0), ("stdout", 2)].into_iter().collect(),
            },
        ]
    }

    pub(crate) fn host() -> Host {
        Host {
            name: "workstation".to_owned(),
            id: Some("0123456789abcdef0123456789abcdef".to_owned()),
        }
    }

    fn document(record: &Record) -> Value {
        let mut line = Vec::new();
        write_document(record, &host(), &mut line);
        serde_json::from_slice(&line).unwrap()
    }

    /// Every leaf of `value` by its dotted name; arrays of values are one leaf.
    fn leaves<'a>(prefix: &str, value: &'a Value, into: &mut Vec<(String, &'a Value)>) {
        match value {
            Value::Object(fields) => {
                for (name, value) in fields {
                    let name = if prefix.is_empty() {
                        name.clone()
                    } else {
                        format!("{prefix}.{name}")
                    };
                    leaves(&name, value, into);
                }
            }
            leaf => into.push((prefix.to_owned(), leaf)),
        }
    }

    /// Whether a JSON value is what Elasticsearch indexes into a field of `ecs_type`.
    fn fits(ecs_type: &str, value: &Value) -> bool {
        match value {
            Value::Array(values) => values.iter().all(|value| fits(ecs_type, value)),
            Value::String(text) => match ecs_type {
                "keyword" | "match_only_text" | "wildcard" => true,
                "date" => humantime::parse_rfc3339(text).is_ok(),
                _ => false,
            },
            Value::Number(number) => match ecs_type {
                "long" => number.is_i64() || number.is_u64(),
                _ => false,
            },
            Value::Bool(_) => ecs_type == "boolean",
            Value::Null | Value::Object(_) => false,
        }
    }

    #[test]
    fn every_field_of_every_kind_is_ecs_or_under_blocker() {
        let types = ecs_types();
        assert_eq!(types.get("@timestamp"), Some(&"date"), "fields.csv is read");
        for record in every_kind() {
            let document = document(&record);
            let mut fields = Vec::new();
            leaves("", &document, &mut fields);
            for (name, value) in fields {
                if name.starts_with("blocker.") || value.is_null() {
                    continue;
                }
                let ecs_type = types
                    .get(name.as_str())
                    .unwrap_or_else(|| panic!("{name} is not an ECS field: {document}"));
                assert!(
                    fits(ecs_type, value),
                    "{name} = {value} is no ECS {ecs_type}: {document}"
                );
            }
            for required in [
                "@timestamp",
                "message",
                "ecs.version",
                "event.kind",
                "event.category",
                "event.type",
                "event.action",
                "event.outcome",
                "host.name",
                "host.id",
                "blocker.kind",
            ] {
                let value = required
                    .split('.')
                    .try_fold(&document, |value, part| value.get(part));
                assert!(value.is_some(), "{required} missing: {document}");
            }
            assert_eq!(document["message"], record.summary(), "{document}");
            assert_eq!(document["ecs"]["version"], VERSION);
        }
    }

    #[test]
    fn categorization_values_are_among_those_ecs_allows() {
        let allowed = allowed();
        let kinds: BTreeSet<_> = allowed["event.kind"].keys().collect();
        assert!(
            kinds.contains(&"alert") && kinds.contains(&"event"),
            "{kinds:?}"
        );
        for record in every_kind() {
            let document = document(&record);
            let event = &document["event"];
            let single = |field: &str| event[field].as_str().unwrap().to_owned();
            let list = |field: &str| -> Vec<String> {
                event[field]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|value| value.as_str().unwrap().to_owned())
                    .collect()
            };
            assert!(allowed["event.kind"].contains_key(single("kind").as_str()));
            assert!(allowed["event.outcome"].contains_key(single("outcome").as_str()));
            let categories = list("category");
            let types = list("type");
            assert!(!categories.is_empty() && !types.is_empty(), "{document}");
            for category in &categories {
                assert!(
                    allowed["event.category"].contains_key(category.as_str()),
                    "{category}"
                );
            }
            for event_type in &types {
                assert!(
                    allowed["event.type"].contains_key(event_type.as_str()),
                    "{event_type}"
                );
                assert!(
                    categories
                        .iter()
                        .any(|category| allowed["event.category"][category.as_str()]
                            .contains(&event_type.as_str())),
                    "event.type {event_type} is expected with none of {categories:?}"
                );
            }
        }
    }

    #[test]
    fn an_exec_names_its_process_file_rule_and_exact_bytes() {
        let denial = document(&Record::Exec(exec(Enforcement::Eperm, "exec")));
        let mapping = document(&Record::Exec(exec(Enforcement::Eperm, "mmap")));
        let mut relative = exec(Enforcement::Eperm, "exec");
        relative.path = "./wechat".to_owned();
        let relative = document(&Record::Exec(relative));
        let document = denial;
        assert_eq!(document["process"]["pid"], 40);
        assert_eq!(document["process"]["thread"]["id"], 41);
        assert_eq!(document["process"]["parent"]["pid"], 1);
        assert_eq!(document["process"]["name"], "bash");
        assert_eq!(document["process"]["executable"], "/opt/wechat/\u{fffd}");
        assert_eq!(document["user"]["id"], "1000");
        assert_eq!(document["group"]["id"], "100");
        assert_eq!(document["file"]["inode"], "1234");
        assert_eq!(document["file"]["device"], "254:1");
        assert_eq!(document["rule"]["id"], "wechat");
        assert_eq!(document["rule"]["ruleset"], "ban");
        assert_eq!(document["rule"]["description"], "banned");
        assert_eq!(
            document["rule"]["reference"],
            "https://intranet.example/banned?rule=wechat"
        );
        assert_eq!(
            document["event"]["type"],
            serde_json::json!(["start", "denied"])
        );
        assert_eq!(
            document["blocker"]["path_hex"],
            "2f6f70742f7765636861742fff"
        );
        assert_eq!(document["blocker"]["suppressed_before"], 3);
        assert_eq!(document["blocker"]["enforcement"], "eperm");

        assert_eq!(document["process"]["hash"]["sha256"], SHA256);
        assert_eq!(document["file"]["hash"]["sha256"], SHA256);

        assert!(mapping["process"].get("executable").is_none(), "{mapping}");
        assert!(mapping["process"].get("hash").is_none(), "{mapping}");
        assert_eq!(mapping["file"]["hash"]["sha256"], SHA256);
        assert_eq!(mapping["file"]["path"], "/opt/wechat/\u{fffd}");
        assert!(
            relative["process"].get("executable").is_none(),
            "{relative}"
        );
        assert_eq!(relative["file"]["path"], "./wechat");
    }

    #[test]
    fn records_read_back_from_documents_as_blocker_events_shows_them() {
        for record in every_kind() {
            let json = serde_json::to_value(&record).unwrap();
            let read = as_record(&document(&record)).unwrap();
            for name in [
                "kind", "time", "rule", "pid", "uid", "comm", "path", "inode",
            ] {
                assert_eq!(read.get(name), json.get(name), "{name}: {read} vs {json}");
            }
            assert_eq!(read.get("path_hex"), json.get("path_hex"));
        }
        assert_eq!(as_record(&serde_json::json!({"kind": "exec"})), None);
    }
}
