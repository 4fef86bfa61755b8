//! `blocker learn`: the executions that lockdown (`default`) and trusted-path execution
//! (`untrusted_paths`) audited, read back from the events file and turned into a policy of
//! `allow` rules, for an administrator to review and install before switching to `deny`.
//!
//! A file an installed package lists is allowed by its package. Another file is allowed by its
//! path, grouped by directory, where only root can change what is at that path; where a user
//! can (a home directory, `/tmp`, a file a user owns), a path would allow whatever is put there
//! next, so the file is allowed by its content instead. A file that cannot be found as it ran is
//! allowed by the hash its record carries, or only described in a comment.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    ffi::OsStr,
    fmt::Write as _,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    process::ExitCode,
    time::{Duration, Instant, SystemTime},
};

use anyhow::Result;
use blocker_common::DEFAULT_HASH_LIMIT_MIB;
use serde_json::Value;

use crate::{
    escape::{escaped, escaped_bytes, toml_string, Lossless},
    event_log,
    identity::{is_recorded_file, key_of_path},
    policy, scan,
    sources::{dpkg, SourceRoots},
    trusted_path,
};

/// The pseudo-rules whose audited records are learned from.
const LEARNED_RULES: [&str; 2] = ["lockdown", "untrusted_path"];
/// How long learn may spend hashing in all; files not hashed by then are described instead.
/// Users choose what gets audited, so what learn does per file is bounded.
const HASHING_BUDGET: Duration = Duration::from_secs(300);
/// Distinct files whose records are gathered; executions of further files are only counted.
const MAX_TRACKED_FILES: usize = 100_000;
/// Paths kept per file (one inode can be run through any number of links).
const MAX_PATHS_PER_FILE: usize = 16;
/// Files a learned policy names at most: the most executed.
const MAX_LEARNED_FILES: usize = 10_000;
/// The learned policy's `name`.
const POLICY_NAME: &str = "learned";
/// Longest rule id made from a directory's path; longer ones are cut and numbered.
const MAX_ID_BYTES: usize = 64;

pub struct LearnOptions {
    pub events_file: PathBuf,
    pub since: Option<SystemTime>,
    pub roots: SourceRoots,
}

/// Prints the learned policy; exits 1, printing nothing, when nothing was audited.
pub fn learn(options: &LearnOptions) -> Result<ExitCode> {
    let audited = Audited::read(&options.events_file, options.since)?;
    let since = options.since.map_or_else(String::new, |since| {
        format!(" since {}", humantime::format_rfc3339_seconds(since))
    });
    if audited.files.is_empty() {
        eprintln!(
            "nothing to learn: no execution audited by lockdown or trusted-path execution in {} \
             or its rotated files{since}",
            escaped(&options.events_file)
        );
        return Ok(ExitCode::FAILURE);
    }
    let executions = audited.executions;
    let (files, left_out) = audited.most_run();
    let learned = place(files, &options.roots);
    let mut source = format!(
        "{executions} audited executions of {} files in {}{since}",
        learned.files(),
        escaped(&options.events_file)
    );
    if left_out.files > 0 {
        source.push_str(&format!(
            "; not in it: {} files run {} times in all, fewer times each than those in it (learn \
             names at most {MAX_LEARNED_FILES} files, the most run)",
            left_out.files, left_out.executions
        ));
    }
    if left_out.untracked_executions > 0 {
        source.push_str(&format!(
            "; not in it either: {} executions of files beyond the first {MAX_TRACKED_FILES} \
             learn tells apart",
            left_out.untracked_executions
        ));
    }
    let text = learned.policy(&source);
    // What learn prints must be a policy blocker accepts as it is.
    policy::parse_sources(&[(PathBuf::from(format!("{POLICY_NAME}.toml")), text.clone())])
        .map_err(|errors| anyhow::anyhow!("the learned policy is invalid: {errors}"))?;
    print!("{text}");
    Ok(ExitCode::SUCCESS)
}

/// A file as the records identify it. An exec's record and the record of the mapping that
/// follows it (the kernel maps the program it runs) name the same file, the second by the
/// kernel's path for it or by none: they are one file.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Named {
    /// `major:minor`, as records write it.
    device: String,
    inode: u64,
}

/// A path a record gave: for an exec as the caller spelled it, for a mapping as the kernel or
/// blocker knew it. Exact bytes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct RecordedPath {
    bytes: Vec<u8>,
    truncated: bool,
}

/// What the records say about one file.
#[derive(Clone, Debug, Default, PartialEq)]
struct Runs {
    /// Every non-empty path the records gave.
    paths: BTreeSet<RecordedPath>,
    executions: u64,
    uids: BTreeSet<u64>,
    /// `exec`, `mmap`, `mprotect`.
    operations: BTreeSet<String>,
    /// The time of the latest record.
    last: String,
    /// The hash a record carried, if any did.
    sha256: Option<String>,
}

/// The audited executions in the events files.
struct Audited {
    files: BTreeMap<Named, Runs>,
    executions: u64,
    /// Executions of files beyond [`MAX_TRACKED_FILES`].
    untracked_executions: u64,
}

/// Files audited that a learned policy does not name.
#[derive(Debug, Default, PartialEq)]
struct LeftOut {
    /// Files run fewer times than the [`MAX_LEARNED_FILES`] named, and their executions.
    files: usize,
    executions: u64,
    /// Executions of files beyond [`MAX_TRACKED_FILES`], which are not told apart.
    untracked_executions: u64,
}

impl Audited {
    fn read(events_file: &Path, since: Option<SystemTime>) -> Result<Self> {
        let mut audited = Self {
            files: BTreeMap::new(),
            executions: 0,
            untracked_executions: 0,
        };
        event_log::for_each_record(events_file, since, |record| audited.add(&record))?;
        Ok(audited)
    }

    /// The [`MAX_LEARNED_FILES`] files run most, and what is left out.
    fn most_run(self) -> (BTreeMap<Named, Runs>, LeftOut) {
        let mut files: Vec<(Named, Runs)> = self.files.into_iter().collect();
        files.sort_by_key(|(_, runs)| std::cmp::Reverse(runs.executions));
        let rest = files.split_off(files.len().min(MAX_LEARNED_FILES));
        let left_out = LeftOut {
            files: rest.len(),
            executions: rest.iter().map(|(_, runs)| runs.executions).sum(),
            untracked_executions: self.untracked_executions,
        };
        (files.into_iter().collect(), left_out)
    }

    fn add(&mut self, record: &Value) {
        let learned = record["kind"] == "exec"
            && record["enforcement"] == "none"
            && LEARNED_RULES.iter().any(|rule| record["rule"] == *rule);
        if !learned {
            return;
        }
        let named = Named {
            device: record["device"].as_str().unwrap_or_default().to_owned(),
            inode: record["inode"].as_u64().unwrap_or_default(),
        };
        let path = RecordedPath {
            bytes: Lossless::from_json(record, "path")
                .map(|path| path.bytes())
                .unwrap_or_default(),
            truncated: record["path_truncated"].as_bool().unwrap_or(false),
        };
        self.executions += 1;
        if self.files.len() >= MAX_TRACKED_FILES && !self.files.contains_key(&named) {
            self.untracked_executions += 1;
            return;
        }
        let runs = self.files.entry(named).or_default();
        if !path.bytes.is_empty() && runs.paths.len() < MAX_PATHS_PER_FILE {
            runs.paths.insert(path);
        }
        runs.executions += 1;
        runs.uids.extend(record["uid"].as_u64());
        runs.operations
            .extend(record["operation"].as_str().map(str::to_owned));
        if let Some(time) = record["time"].as_str() {
            runs.last = time.to_owned();
        }
        if let Some(sha256) = record["sha256"].as_str() {
            runs.sha256 = Some(sha256.to_owned());
        }
    }
}

/// Where a learned file's allowance goes.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Group {
    /// An installed package lists it.
    Package(String),
    /// A directory only root can change, the file root's too: allowed by path.
    RootDirectory(PathBuf),
    /// A directory users can write, or a file a user owns: allowed by content. `why` says who
    /// can change it.
    UserDirectory { directory: PathBuf, why: String },
    /// Not found on disk as it ran: allowed by the hash its record carries.
    Elsewhere,
    /// Not found, and no hash: described only.
    Unplaced,
}

/// One file and what is learned of it.
#[derive(Clone, Debug, PartialEq)]
struct LearnedFile {
    named: Named,
    runs: Runs,
    /// The path the rule names (root's directories), or the path it was found at.
    found_at: Option<PathBuf>,
    sha256: Option<String>,
    /// Why it could not be found, or what changed since it ran.
    note: Option<String>,
}

#[derive(Debug, Default)]
struct Learned {
    groups: BTreeMap<Group, Vec<LearnedFile>>,
}

impl Learned {
    fn files(&self) -> usize {
        self.groups.values().map(Vec::len).sum()
    }
}

/// Decides each file's group: by package, by directory, or by content.
fn place(files: BTreeMap<Named, Runs>, roots: &SourceRoots) -> Learned {
    let hashing_ends = Instant::now() + HASHING_BUDGET;
    let mut found = Vec::new();
    let mut learned = Learned::default();
    for (named, runs) in files {
        match find(&named, &runs.paths) {
            Ok(found_at) => found.push((named, runs, found_at)),
            Err(note) => {
                let sha256 = runs.sha256.clone();
                let group = if sha256.is_some() {
                    Group::Elsewhere
                } else {
                    Group::Unplaced
                };
                learned.groups.entry(group).or_default().push(LearnedFile {
                    named,
                    runs,
                    found_at: None,
                    sha256,
                    note: Some(note),
                });
            }
        }
    }
    let owners = package_owners(&found, roots);
    for (named, runs, found_at) in found {
        let (group, sha256, note) = match owners.get(&found_at) {
            Some(package) => (Group::Package(package.clone()), None, None),
            None => judge(&named, &runs, &found_at, hashing_ends),
        };
        learned.groups.entry(group).or_default().push(LearnedFile {
            named,
            runs,
            found_at: Some(found_at),
            sha256,
            note,
        });
    }
    learned
}

/// The resolved path of the file the records name, if one of their paths still leads to it;
/// else why none does.
fn find(named: &Named, paths: &BTreeSet<RecordedPath>) -> Result<PathBuf, String> {
    let mut why_not = "the records name no path (a mapping of a file no rule names)".to_owned();
    for path in paths {
        match find_at(named, path) {
            Ok(found) => return Ok(found),
            Err(why) => why_not = why,
        }
    }
    Err(why_not)
}

fn find_at(named: &Named, path: &RecordedPath) -> Result<PathBuf, String> {
    if path.truncated {
        return Err("the record's path was cut short".to_owned());
    }
    if !path.bytes.starts_with(b"/") {
        return Err("the record's path is relative to a directory it does not name".to_owned());
    }
    let path = Path::new(OsStr::from_bytes(&path.bytes));
    let resolved = std::fs::canonicalize(path).map_err(|error| format!("not found: {error}"))?;
    let key = key_of_path(&resolved).map_err(|error| format!("not found: {error}"))?;
    if !is_recorded_file(&key, &named.device, named.inode) {
        return Err("another file is at that path now (replaced since it ran)".to_owned());
    }
    Ok(resolved)
}

/// The installed package that lists each found file (by identity, so `/bin/x` listed and
/// `/usr/bin/x` run are the same file). Problems reading the database are logged: the files
/// are then placed by directory, which a reviewer sees.
fn package_owners(
    found: &[(Named, Runs, PathBuf)],
    roots: &SourceRoots,
) -> HashMap<PathBuf, String> {
    let mut owners = HashMap::new();
    let names: HashMap<&OsStr, Vec<&(Named, Runs, PathBuf)>> =
        found.iter().fold(HashMap::new(), |mut names, file| {
            if let Some(name) = file.2.file_name() {
                names.entry(name).or_insert_with(Vec::new).push(file);
            }
            names
        });
    if names.is_empty() {
        return owners;
    }
    let mut problems = Vec::new();
    let packages = match dpkg::installed_packages(roots, &mut problems) {
        Ok(packages) => packages.unwrap_or_default(),
        Err(problem) => {
            problems.push(problem);
            Vec::new()
        }
    };
    for problem in problems {
        log::warn!("dpkg's database: {problem}");
    }
    for package in packages {
        for (_, on_disk) in &package.paths {
            let Some(candidates) = on_disk.file_name().and_then(|name| names.get(name)) else {
                continue;
            };
            let Some(on_system) = roots.system_path(on_disk) else {
                continue;
            };
            let Ok(key) = key_of_path(&on_system) else {
                continue;
            };
            for (named, _, found_at) in candidates {
                if is_recorded_file(&key, &named.device, named.inode) {
                    owners.insert(found_at.clone(), package.name.clone());
                }
            }
        }
    }
    owners
}

/// A found file no package lists: by path where only root can change it, else by content.
fn judge(
    named: &Named,
    runs: &Runs,
    found_at: &Path,
    hashing_ends: Instant,
) -> (Group, Option<String>, Option<String>) {
    let directory = found_at.parent().unwrap_or(Path::new("/")).to_owned();
    let untrusted = match trusted_path::untrusted(found_at) {
        Ok(untrusted) => untrusted.map(|why| why.to_string()),
        Err(error) => Some(format!("its directories could not all be read: {error}")),
    };
    let why = match untrusted {
        None if found_at.to_str().is_some() => {
            return (Group::RootDirectory(directory), None, None)
        }
        None => "its path is not UTF-8, which policy files cannot hold".to_owned(),
        Some(why) => why,
    };
    let limit = u64::from(DEFAULT_HASH_LIMIT_MIB) << 20;
    let hashed = scan::sha256_if_still(found_at, &named.device, named.inode, limit, hashing_ends);
    match hashed.or_else(|| runs.sha256.clone()) {
        Some(sha256) => (Group::UserDirectory { directory, why }, Some(sha256), None),
        None => (
            Group::Unplaced,
            None,
            Some(format!(
                "{why}, and it could not be hashed (larger than {DEFAULT_HASH_LIMIT_MIB} MiB, \
                 unreadable, changed while read, or beyond learn's {} s of hashing)",
                HASHING_BUDGET.as_secs()
            )),
        ),
    }
}

impl Learned {
    /// The policy text: a header saying where it comes from, then one rule per group, each
    /// with a comment saying what was audited.
    fn policy(&self, source: &str) -> String {
        let mut text = format!(
            "# Written by `blocker learn` from {source}.\n\
             # Review every rule before installing it (`blocker policy install`): each lets what \
             it names run\n# under `default = \"deny\"` and `untrusted_paths = \"deny\"`.\n\
             name = {}\ndescription = {}\n",
            toml_string(POLICY_NAME),
            toml_string("Allow rules learned from audited executions")
        );
        let mut ids = RuleIds::default();
        for (group, files) in &self.groups {
            text.push('\n');
            match group {
                Group::Package(package) => {
                    comment(
                        &mut text,
                        &format!(
                            "Files of the installed package `{package}`{}. Lockdown trusts a \
                             package's files unless they changed since dpkg installed them: \
                             `dpkg --verify {package}` says which did.",
                            summary(files)
                        ),
                    );
                    list_files(&mut text, files);
                    rule_start(&mut text, &ids.take(&format!("package-{package}")));
                    let _ = writeln!(text, "packages = [{}]", toml_string(package));
                }
                Group::RootDirectory(directory) => {
                    comment(
                        &mut text,
                        &format!(
                            "In {}, which only root can change{}.",
                            escaped(directory),
                            summary(files)
                        ),
                    );
                    rule_start(&mut text, &ids.take(&directory.to_string_lossy()));
                    text.push_str("paths = [\n");
                    for file in files {
                        let path = file.found_at.as_deref().and_then(Path::to_str);
                        if let Some(path) = path {
                            let _ = writeln!(text, "    {},", toml_string(path));
                        }
                    }
                    text.push_str("]\n");
                }
                Group::UserDirectory { directory, why } => {
                    comment(
                        &mut text,
                        &format!(
                            "In {}{}. Allowed by content: {why}, so a path would allow whatever \
                             is put there next. A file rebuilt or changed needs a new hash.",
                            escaped(directory),
                            summary(files)
                        ),
                    );
                    rule_start(&mut text, &ids.take(&directory.to_string_lossy()));
                    hashes(&mut text, files);
                }
                Group::Elsewhere => {
                    comment(
                        &mut text,
                        &format!(
                            "Not found on disk as they ran{}: allowed by the hashes their \
                             records carry.",
                            summary(files)
                        ),
                    );
                    rule_start(&mut text, &ids.take("by-content"));
                    hashes(&mut text, files);
                }
                Group::Unplaced => {
                    comment(
                        &mut text,
                        &format!(
                            "Not learned{}: found neither on disk nor by a hash. Find each by \
                             its inode (`find / -xdev -inum INODE` on its device) and allow it \
                             by hand if it must run.",
                            summary(files)
                        ),
                    );
                    list_files(&mut text, files);
                }
            }
        }
        text
    }
}

/// ` (N files, M executions by uids A, B; last at T)`.
fn summary(files: &[LearnedFile]) -> String {
    let executions: u64 = files.iter().map(|file| file.runs.executions).sum();
    let uids: BTreeSet<u64> = files
        .iter()
        .flat_map(|file| file.runs.uids.iter().copied())
        .collect();
    let uids: Vec<String> = uids.iter().map(u64::to_string).collect();
    let last = files
        .iter()
        .map(|file| file.runs.last.as_str())
        .max()
        .unwrap_or_default();
    format!(
        " ({} file{}, {executions} execution{} by uid {}; last at {})",
        files.len(),
        plural(files.len() as u64),
        plural(executions),
        uids.join(", "),
        escaped(last)
    )
}

fn plural(count: u64) -> &'static str {
    if count == 1 {
        ""
    } else {
        "s"
    }
}

/// `text` as `#` lines of at most about 100 columns; `text` is escaped already.
fn comment(policy: &mut String, text: &str) {
    let mut line = String::from("#");
    for word in text.split(' ') {
        if line.len() > 1 && line.len() + word.len() >= 100 {
            let _ = writeln!(policy, "{line}");
            line = String::from("#");
        }
        line.push(' ');
        line.push_str(word);
    }
    let _ = writeln!(policy, "{line}");
}

/// One comment line per file: how the record named it, and the note on it.
fn list_files(policy: &mut String, files: &[LearnedFile]) {
    for file in files {
        let _ = write!(policy, "#   {}", described(file));
        if let Some(note) = &file.note {
            let _ = write!(policy, ": {}", escaped(note));
        }
        policy.push('\n');
    }
}

/// A file for a comment: its path as the record has it (escaped), device and inode,
/// operations.
fn described(file: &LearnedFile) -> String {
    let path = match &file.found_at {
        Some(found_at) => escaped(found_at).to_string(),
        None if file.runs.paths.is_empty() => "(no path)".to_owned(),
        None => {
            let paths: Vec<String> = file
                .runs
                .paths
                .iter()
                .map(|path| escaped_bytes(&path.bytes).to_string())
                .collect();
            paths.join(" or ")
        }
    };
    let operations: Vec<&str> = file.runs.operations.iter().map(String::as_str).collect();
    format!(
        "{path} (device {}, inode {}; {})",
        escaped(&file.named.device),
        file.named.inode,
        operations.join(", ")
    )
}

fn rule_start(policy: &mut String, id: &str) {
    let _ = write!(
        policy,
        "[[rule]]\nid = {}\naction = \"allow\"\n",
        toml_string(id)
    );
}

/// `sha256 = [...]`, each hash with the file it was learned from as a comment.
fn hashes(policy: &mut String, files: &[LearnedFile]) {
    policy.push_str("sha256 = [\n");
    let mut seen = BTreeSet::new();
    for file in files {
        let Some(sha256) = &file.sha256 else {
            continue;
        };
        if seen.insert(sha256) {
            let _ = writeln!(
                policy,
                "    {},  # {}",
                toml_string(sha256),
                described(file)
            );
        }
    }
    policy.push_str("]\n");
}

/// Rule ids: `learned-` and a name made of what ids may hold, numbered when taken.
#[derive(Default)]
struct RuleIds {
    taken: HashMap<String, usize>,
}

impl RuleIds {
    fn take(&mut self, name: &str) -> String {
        let mut id = String::from("learned");
        for part in name.split(|c: char| !(c.is_ascii_alphanumeric() || c == '.' || c == '_')) {
            if !part.is_empty() && id.len() + part.len() < MAX_ID_BYTES {
                id.push('-');
                id.push_str(part);
            }
        }
        let copies = self.taken.entry(id.clone()).or_default();
        *copies += 1;
        if *copies > 1 {
            id = format!("{id}-{copies}");
        }
        id
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use super::*;
    use crate::identity::device_text;

    fn record(rule: &str, enforcement: &str, path: &str, inode: u64) -> Value {
        serde_json::json!({
            "kind": "exec", "time": "2026-11-30T10:00:00Z", "action": "audit",
            "enforcement": enforcement, "operation": "exec", "rule": rule, "uid": 1000,
            "path": path, "path_truncated": false, "device": "8:1", "inode": inode,
        })
    }

    fn recorded(path: &[u8]) -> RecordedPath {
        RecordedPath {
            bytes: path.to_vec(),
            truncated: false,
        }
    }

    fn file(path: &str, inode: u64, found_at: Option<&str>, sha256: Option<&str>) -> LearnedFile {
        LearnedFile {
            named: Named {
                device: "8:1".to_owned(),
                inode,
            },
            runs: Runs {
                paths: if path.is_empty() {
                    BTreeSet::new()
                } else {
                    BTreeSet::from([recorded(path.as_bytes())])
                },
                executions: 2,
                uids: BTreeSet::from([1000]),
                operations: BTreeSet::from(["exec".to_owned()]),
                last: "2026-11-30T10:00:00Z".to_owned(),
                sha256: None,
            },
            found_at: found_at.map(PathBuf::from),
            sha256: sha256.map(str::to_owned),
            note: None,
        }
    }

    fn parsed(text: &str) -> policy::Policy {
        policy::parse_sources(&[(PathBuf::from("learned.toml"), text.to_owned())])
            .unwrap_or_else(|errors| panic!("{errors}\n{text}"))
    }

    #[test]
    fn only_audited_lockdown_and_untrusted_path_executions_are_learned() {
        let mut audited = Audited {
            files: BTreeMap::new(),
            executions: 0,
            untracked_executions: 0,
        };
        let mut mapping = record("lockdown", "none", "", 1);
        mapping["operation"] = "mmap".into();
        for record in [
            record("lockdown", "none", "/opt/tool", 1),
            mapping,
            record("untrusted_path", "none", "/opt/tool", 1),
            record("untrusted_path", "none", "/home/a/x", 2),
            record("lockdown", "eperm", "/opt/denied", 3),
            record("wechat", "none", "/opt/audited-ban", 4),
            serde_json::json!({"kind": "started", "rule": "lockdown", "enforcement": "none"}),
        ] {
            audited.add(&record);
        }
        assert_eq!(audited.executions, 4);
        let inodes: Vec<u64> = audited.files.keys().map(|named| named.inode).collect();
        assert_eq!(inodes, [1, 2]);
        // The exec and the mapping of the program it ran are one file, with the exec's path.
        let tool = &audited.files[&Named {
            device: "8:1".to_owned(),
            inode: 1,
        }];
        assert_eq!(tool.executions, 3);
        assert_eq!(tool.paths, BTreeSet::from([recorded(b"/opt/tool")]));
        assert_eq!(tool.operations.len(), 2);
    }

    #[test]
    fn files_are_found_only_as_they_ran() {
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("tool");
        std::fs::File::create(&path)
            .unwrap()
            .write_all(b"x")
            .unwrap();
        let key = key_of_path(&path).unwrap();
        let named = |inode: u64| Named {
            device: device_text(key.dev),
            inode,
        };
        let at = |path: &[u8]| BTreeSet::from([recorded(path)]);
        let bytes = path.as_os_str().as_bytes();
        assert_eq!(
            find(&named(key.ino), &at(bytes)),
            Ok(path.canonicalize().unwrap())
        );
        assert!(find(&named(key.ino + 1), &at(bytes))
            .unwrap_err()
            .contains("replaced"));
        assert!(find(&named(key.ino), &at(b"tool"))
            .unwrap_err()
            .contains("relative"));
        assert!(find(&named(key.ino), &BTreeSet::new())
            .unwrap_err()
            .contains("no path"));
        let truncated = RecordedPath {
            truncated: true,
            ..recorded(bytes)
        };
        assert!(find(&named(key.ino), &BTreeSet::from([truncated]))
            .unwrap_err()
            .contains("cut short"));
        // Any path that still leads to it will do.
        let both = BTreeSet::from([recorded(b"./tool"), recorded(bytes)]);
        assert!(find(&named(key.ino), &both).is_ok());
    }

    #[test]
    fn a_file_where_users_write_is_allowed_by_its_content() {
        // A temporary directory is under /tmp, where anyone can put a file.
        let directory = tempfile::tempdir().unwrap();
        let path = directory.path().join("tool");
        std::fs::write(&path, b"built in place").unwrap();
        let key = key_of_path(&path).unwrap();
        let named = Named {
            device: device_text(key.dev),
            inode: key.ino,
        };
        let runs = Runs {
            paths: BTreeSet::from([recorded(path.as_os_str().as_bytes())]),
            ..Runs::default()
        };
        let learned = place(
            BTreeMap::from([(named, runs)]),
            &SourceRoots {
                root: directory.path().to_owned(),
                ..SourceRoots::default()
            },
        );
        let (group, files) = learned.groups.iter().next().unwrap();
        assert!(matches!(group, Group::UserDirectory { .. }), "{group:?}");
        assert_eq!(
            files[0].sha256.as_deref(),
            Some(scan::to_hex(&scan::hash_file(&path).unwrap().sha256).as_str())
        );
    }

    #[test]
    fn the_policy_allows_each_group_its_way_and_reads_back_whatever_the_names() {
        let hash = "ab".repeat(32);
        let other_hash = "cd".repeat(32);
        let odd = "/opt/odd dir\n[[rule]]\nid = \"x\"";
        let learned = Learned {
            groups: BTreeMap::from([
                (
                    Group::Package("vendor-agent+x".to_owned()),
                    vec![file("/bin/agent", 1, Some("/usr/bin/agent"), None)],
                ),
                (
                    Group::RootDirectory(PathBuf::from(odd)),
                    vec![file("/x", 2, Some(&format!("{odd}/tool \"1\"")), None)],
                ),
                (
                    Group::UserDirectory {
                        directory: PathBuf::from("/home/a/bin"),
                        why: "/home/a is owned by uid 1000".to_owned(),
                    },
                    vec![
                        file("/home/a/bin/t", 3, Some("/home/a/bin/t"), Some(&hash)),
                        file(
                            "/home/a/bin/t2",
                            4,
                            Some("/home/a/bin/t2\n# x"),
                            Some(&hash),
                        ),
                    ],
                ),
                (
                    Group::Elsewhere,
                    vec![file("./t", 5, None, Some(&other_hash))],
                ),
                (Group::Unplaced, vec![file("", 6, None, None)]),
            ]),
        };
        let text = learned.policy("2 audited executions in \\x1b[31m");
        let policy = parsed(&text);
        let rules: Vec<(&str, policy::Action)> = policy
            .rules
            .iter()
            .map(|rule| (rule.id.as_str(), rule.action))
            .collect();
        assert_eq!(
            rules,
            [
                ("learned-package-vendor-agent-x", policy::Action::Allow),
                ("learned-opt-odd-dir-rule-id-x", policy::Action::Allow),
                ("learned-home-a-bin", policy::Action::Allow),
                ("learned-by-content", policy::Action::Allow),
            ],
            "{text}"
        );
        assert_eq!(policy.rules[0].identifiers.packages, ["vendor-agent+x"]);
        assert_eq!(
            policy.rules[1].identifiers.paths,
            [PathBuf::from(format!("{odd}/tool \"1\""))]
        );
        // One hash, however many files have it.
        assert_eq!(policy.rules[2].identifiers.sha256.len(), 1);
        assert_eq!(
            scan::to_hex(&policy.rules[3].identifiers.sha256[0]),
            other_hash
        );
        assert!(
            text.contains("#   (no path) (device 8:1, inode 6; exec)"),
            "{text}"
        );
        assert!(!text.contains('\u{1b}'), "{text}");
    }

    #[test]
    fn rule_ids_are_valid_and_distinct() {
        let mut ids = RuleIds::default();
        assert_eq!(ids.take("/home/alice/bin"), "learned-home-alice-bin");
        assert_eq!(ids.take("/home/alice/bin/"), "learned-home-alice-bin-2");
        let long = ids.take(&"/very-long-directory-name".repeat(10));
        assert!(long.len() <= MAX_ID_BYTES, "{long}");
        assert_eq!(ids.take("/ü/ä"), "learned");
    }

    #[test]
    fn a_flood_of_audited_files_is_bounded_and_the_most_run_are_learned() {
        let mut audited = Audited {
            files: BTreeMap::new(),
            executions: 0,
            untracked_executions: 0,
        };
        // A workload run twice each, among more one-off files than learn keeps apart.
        for inode in 0..10 {
            for _ in 0..2 {
                audited.add(&record("lockdown", "none", "/opt/tool", inode));
            }
        }
        for inode in 10..(MAX_TRACKED_FILES as u64 + 20) {
            audited.add(&record(
                "lockdown",
                "none",
                &format!("/tmp/x{inode}"),
                inode,
            ));
        }
        for link in 0..MAX_PATHS_PER_FILE + 5 {
            audited.add(&record("lockdown", "none", &format!("/tmp/link{link}"), 0));
        }
        assert_eq!(audited.files.len(), MAX_TRACKED_FILES);
        assert_eq!(audited.untracked_executions, 20);
        assert_eq!(
            audited.files.values().next().unwrap().paths.len(),
            MAX_PATHS_PER_FILE
        );
        let (files, left_out) = audited.most_run();
        assert_eq!(files.len(), MAX_LEARNED_FILES);
        assert!((0..10).all(|inode| files.keys().any(|named| named.inode == inode)));
        assert_eq!(left_out.files, MAX_TRACKED_FILES - MAX_LEARNED_FILES);
        assert_eq!(left_out.untracked_executions, 20);
    }
}
