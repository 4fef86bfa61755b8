//! Entry points of the fuzz targets in `fuzz/` (one each), also run over the targets' corpora
//! by a unit test as a regression check. Each takes any bytes; it must neither panic nor hang,
//! and it checks what must hold whatever the input: located errors lie in the file, what
//! people read never holds a terminal control, JSON keeps exact bytes, what is written reads
//! back the same.

use std::{
    path::{Path, PathBuf},
    sync::OnceLock,
    time::{Duration, SystemTime},
};

use serde_json::Value;

use crate::{
    critical::{critical_files, CriticalFile, Guard},
    escape::Lossless,
    event_log,
    events::{self, BootClock, ExecRecord, Record, TamperRecord},
    policy, scan, sinks, sources, status,
    sync::{
        protocol::{Preflight, RulePage, SyncType},
        rules::{synced_url, SyncedRules, POLICY_FILE_NAME},
    },
};

/// Whether people's text holds something that acts on a terminal (line breaks between lines
/// aside).
fn has_terminal_controls(text: &str) -> bool {
    text.chars()
        .any(|c| (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c))
}

/// A policy file: parsed and checked against this machine's critical files.
pub fn policy(data: &[u8]) {
    static CRITICAL: OnceLock<Vec<CriticalFile>> = OnceLock::new();
    // Policy files are read as UTF-8; anything else fails before parsing.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let guard = Guard::new(CRITICAL.get_or_init(critical_files).clone());
    let sources = [(PathBuf::from("fuzz.toml"), text.to_owned())];
    match policy::parse_sources_guarded(&sources, &guard) {
        Ok(policy) => assert!(policy.rules.iter().all(|rule| !rule.id.is_empty())),
        Err(errors) => {
            let lines = text.split('\n').count();
            for error in &errors.0 {
                assert!((1..=lines).contains(&error.location.line), "{error}");
                assert!(error.location.column >= 1, "{error}");
            }
        }
    }
}

/// A ring buffer record: decoded into a record, shown to people and written as JSON.
pub fn event(data: &[u8]) {
    let Ok(event) = events::decode(data) else {
        return;
    };
    let record = if events::is_tamper_attempt(&event) {
        Record::Tamper(TamperRecord::new(&event, None, &BootClock))
    } else {
        Record::Exec(ExecRecord::new(&event, None, None, &BootClock))
    };
    let summary = record.summary();
    assert!(!has_terminal_controls(&summary), "{summary:?}");
    let line = serde_json::to_string(&record).expect("records serialize");
    let read: Value = serde_json::from_str(&line).expect("records are JSON");
    if let Record::Exec(exec) = &record {
        let path = Lossless::from_json(&read, "path").expect("exec records have a path");
        assert_eq!(path.bytes(), *exec.path_bytes());
    }
    sinks::journald::entry(&record);
    let table = event_log::shown(&line, false, None);
    let table = String::from_utf8(table).expect("the table is UTF-8");
    assert!(!has_terminal_controls(&table), "{table:?}");
}

/// dpkg's database: the first line names the package, the rest is a status file; the whole
/// input is also read as a diversions file and a list file.
pub fn dpkg(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (package, database) = text.split_once('\n').unwrap_or((&text, ""));
    let instances = sources::dpkg::instances_in(database, package);
    assert!(instances.len() <= database.lines().count());
    let lines = sources::dpkg::non_empty_lines(data).count();
    assert!(sources::dpkg::parse_diversions(data).len() <= lines / 3);
    assert!(
        sources::dpkg::non_empty_lines(data).all(|line| !line.is_empty() && !line.contains(&b'\n'))
    );
}

/// An events file: as `blocker events` shows it, in the table and as JSON lines.
pub fn events_file(data: &[u8]) {
    // The reader reads lines as UTF-8, replacing what is not.
    let text = String::from_utf8_lossy(data);
    let since = SystemTime::UNIX_EPOCH + Duration::from_secs(1_764_000_000);
    let table = event_log::shown(&text, false, Some(since));
    let table = String::from_utf8(table).expect("the table is UTF-8");
    assert!(!has_terminal_controls(&table), "{table:?}");
    event_log::shown(&text, true, None);
}

/// A status document: parsed, and if it is one, written and read back the same.
pub fn status_document(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let path = Path::new("status.json");
    if let Ok(document) = status::parse(path, &text) {
        let written = serde_json::to_string(&document).expect("documents serialize");
        assert_eq!(status::parse(path, &written).expect("reads back"), document);
    }
}

/// The hash cache file: decoded, and if it is one, encoded and decoded back the same.
pub fn hash_cache(data: &[u8]) {
    if let Ok(cache) = scan::cache::decode(data) {
        let encoded = scan::cache::encode(&cache);
        assert_eq!(scan::cache::decode(&encoded).expect("reads back"), cache);
    }
}

/// A sync server's response: a preflight or a rule download page, read or refused with an
/// error naming its stage. The policy a page's rules make is always valid, bans exactly the
/// hashes the rules ban, and carries their messages exactly and their URLs with only the
/// server's own braces percent-encoded: nothing a server sends can write anything else into the
/// policy directory.
pub fn sync_response(data: &[u8]) {
    if let Err(error) = Preflight::read(data, false) {
        assert!(format!("{error:#}").starts_with("preflight"), "{error:#}");
    }
    let page = match RulePage::read(data, 1) {
        Ok(page) => page,
        Err(error) => {
            assert!(
                format!("{error:#}").starts_with("ruledownload"),
                "{error:#}"
            );
            return;
        }
    };
    let (rules, _) = SyncedRules::default().after(SyncType::Normal, &page.rules);
    let source = rules.policy("https://sync.example/v1/santa");
    let policy = policy::parse_sources(&[(PathBuf::from(POLICY_FILE_NAME), source)])
        .unwrap_or_else(|errors| panic!("the synced policy is invalid: {errors}"));
    let banned: usize = policy
        .rules
        .iter()
        .map(|rule| rule.identifiers.sha256.len())
        .sum();
    assert_eq!(banned, rules.banned());
    for rule in &policy.rules {
        let hash = scan::to_hex(&rule.identifiers.sha256[0]);
        let synced = &rules.binary[&hash];
        assert_eq!(rule.url, synced.custom_url.as_deref().map(synced_url));
        if let Some(message) = &synced.custom_msg {
            assert_eq!(rule.reason.as_ref(), Some(message));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A fuzz target's name (its corpus is `fuzz/corpus/<name>`) and entry point.
    type Target = (&'static str, fn(&[u8]));

    const TARGETS: [Target; 7] = [
        ("policy", policy),
        ("event", event),
        ("dpkg", dpkg),
        ("events_file", events_file),
        ("status_document", status_document),
        ("hash_cache", hash_cache),
        ("sync_response", sync_response),
    ];

    #[test]
    fn every_corpus_input_passes() {
        let corpora = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        for (target, run) in TARGETS {
            let directory = corpora.join(target);
            let inputs: Vec<_> = std::fs::read_dir(&directory)
                .unwrap_or_else(|error| panic!("{}: {error}", directory.display()))
                .map(|entry| entry.unwrap().path())
                .collect();
            assert!(!inputs.is_empty(), "{target} has no corpus");
            for input in inputs {
                run(&std::fs::read(&input).unwrap());
            }
        }
    }

    /// The seeds are what they are named after, so fuzzing starts past the format's checks.
    #[test]
    fn the_seeds_are_valid_inputs() {
        let corpus = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus");
        let read = |name: &str| std::fs::read(corpus.join(name)).unwrap();
        let text = |name: &str| String::from_utf8(read(name)).unwrap();
        let cache = scan::cache::decode(&read("hash_cache/two-entries")).unwrap();
        assert_eq!(cache.len(), 2);
        for name in ["running.json", "stopped.json"] {
            status::parse(Path::new(name), &text(&format!("status_document/{name}"))).unwrap();
        }
        for name in [
            "exec-lsm",
            "exec-hostile-name",
            "mmap-audit",
            "tamper-signal",
            "exec-untrusted-path",
        ] {
            events::decode(&read(&format!("event/{name}"))).unwrap();
        }
        let sources = [(
            PathBuf::from("p.toml"),
            text("policy/government-devices.toml"),
        )];
        policy::parse_sources(&sources).unwrap();
        let page = RulePage::read(&read("sync_response/rules.json"), 1).unwrap();
        assert_eq!(page.rules.len(), 4);
        Preflight::read(&read("sync_response/preflight.json"), false).unwrap();
        let shown = event_log::shown(&text("events_file/events.jsonl"), false, None);
        let shown = String::from_utf8(shown).unwrap();
        assert_eq!(shown.lines().count(), 6, "header and five records: {shown}");
    }
}
