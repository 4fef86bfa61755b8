//! Turns parsed rules into the entries of the kernel's ban map: every identifier a rule gives
//! (path, prefix, glob, package, Flatpak app, snap, content hash, AppImage) becomes the files it
//! names on this machine now, and each file becomes its kernel identity.

use crate::escape::escaped;
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    fmt,
    path::{Path, PathBuf},
};

use blocker_common::{BanEntry, FileKey, FILELESS_RULE_ID};
use sha2::{Digest, Sha256 as Sha256Hasher};

use crate::{
    critical::{self, critical_files, CriticalFile},
    files::{is_executable_candidate, walk},
    identity::FileIdentity,
    policy::{compile_glob, glob_base, Action, Fileless, Identifiers, Policy},
    scan::{to_hex, HashedFile, ScanReport, ScanStats, Sha256},
    sources::{self, SourceFiles, SourceRoots},
};

/// What an event needs to know about the rule that matched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    /// The number the kernel's entries and events carry for this rule; see [`kernel_rule_ids`].
    pub rule_id: u32,
    pub id: String,
    pub policy: String,
    pub reason: Option<String>,
    pub action: Action,
}

/// The identifier through which a rule matched a file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    Sha256(Sha256),
    Path(PathBuf),
    PathPrefix(PathBuf),
    Glob(String),
    Package(String),
    Flatpak(String),
    Snap(String),
    AppImage(String),
}

impl fmt::Display for Via {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Via::Sha256(hash) => write!(f, "sha256 {}", to_hex(hash)),
            Via::Path(path) => write!(f, "path {}", escaped(&path)),
            Via::PathPrefix(path) => write!(f, "path prefix {}", escaped(&path)),
            Via::Glob(glob) => write!(f, "glob {}", escaped(glob)),
            Via::Package(name) => write!(f, "package {name}"),
            Via::Flatpak(id) => write!(f, "flatpak {id}"),
            Via::Snap(name) => write!(f, "snap {name}"),
            Via::AppImage(name) => write!(f, "appimage {name}"),
        }
    }
}

/// One file a rule names.
#[derive(Clone, Debug)]
pub struct Match {
    pub rule_id: u32,
    pub path: PathBuf,
    pub identity: FileIdentity,
    pub via: Via,
}

/// An identifier that named nothing on this machine, and why.
#[derive(Clone, Debug)]
pub struct Unresolved {
    pub rule: String,
    pub via: Via,
    pub reason: String,
}

/// A file a rule names that blocker refuses to ban, because the machine or blocker itself
/// cannot run without it.
#[derive(Clone, Debug)]
pub struct Protected {
    pub rule: String,
    pub path: PathBuf,
    pub why: &'static str,
}

#[derive(Debug, Default)]
pub struct Resolution {
    /// In policy order, which is also precedence order between rules of equal action.
    pub rules: Vec<RuleInfo>,
    /// Position in `rules` of each kernel rule id.
    positions: HashMap<u32, usize>,
    /// The critical files each rule's `ban_critical_files` lets it ban.
    critical_overrides: HashMap<u32, BTreeSet<FileKey>>,
    pub entries: BTreeMap<FileKey, BanEntry>,
    /// Every file any rule names, including those another rule's entry takes precedence over.
    pub matches: Vec<Match>,
    /// A path of each banned file, for logs.
    pub paths: BTreeMap<FileKey, PathBuf>,
    /// Banned contents, for hashing in the kernel.
    pub hashes: BTreeMap<Sha256, u32>,
    pub unresolved: Vec<Unresolved>,
    pub protected: Vec<Protected>,
    /// Problems met while walking and reading (`path: reason`).
    pub warnings: Vec<String>,
    pub scan: Option<ScanStats>,
    /// What the kernel does with fileless execs.
    pub fileless: Fileless,
    /// Events about fileless execs name this pseudo-rule.
    pub fileless_rule: Option<RuleInfo>,
}

impl Resolution {
    pub fn rule(&self, rule_id: u32) -> Option<&RuleInfo> {
        if rule_id == FILELESS_RULE_ID {
            return self.fileless_rule.as_ref();
        }
        self.positions
            .get(&rule_id)
            .map(|&position| &self.rules[position])
    }

    /// The rule of an id this resolution gave out itself (in its matches, entries, hashes).
    pub fn own_rule(&self, rule_id: u32) -> &RuleInfo {
        self.rule(rule_id).expect("ids come from this resolution")
    }

    /// Orders rules by precedence for a file several name: deny over audit, then the earlier
    /// rule. Smaller is stronger.
    pub fn precedence(&self, rule_id: u32) -> (std::cmp::Reverse<Action>, usize) {
        (
            std::cmp::Reverse(self.own_rule(rule_id).action),
            self.positions[&rule_id],
        )
    }

    /// Whether the rule may ban the critical `file`: its `ban_critical_files` names it.
    pub fn may_ban_critical(&self, rule_id: u32, file: &CriticalFile) -> bool {
        self.critical_overrides
            .get(&rule_id)
            .is_some_and(|overrides| may_ban(file, overrides))
    }

    fn takes_precedence(&self, a: u32, b: u32) -> bool {
        self.precedence(a) < self.precedence(b)
    }

    /// The kernel's content ban map: each banned SHA-256 with its rule and action.
    pub fn content_bans(&self) -> BTreeMap<Sha256, BanEntry> {
        self.hashes
            .iter()
            .map(|(hash, &rule_id)| {
                let action = self.own_rule(rule_id).action.kernel_value();
                let entry = BanEntry {
                    rule_id,
                    action,
                    ..BanEntry::default()
                };
                (*hash, entry)
            })
            .collect()
    }
}

/// Whether any rule of `policy` needs the content scan.
pub fn needs_scan(policy: &Policy) -> bool {
    policy
        .rules
        .iter()
        .any(|rule| rule.identifiers.needs_scan())
}

/// Resolves every rule against the filesystem as it is now. Content identifiers are matched
/// against `scanned` (a scan of the scan roots); without one they match nothing. A file named
/// by several rules is banned by the strictest (deny over audit), then by the first.
pub fn resolve(policy: &Policy, roots: &SourceRoots, scanned: Option<&ScanReport>) -> Resolution {
    let protected = protected_files();
    let critical: Vec<CriticalFile> = protected.values().cloned().collect();
    let mut critical_contents = None;
    let by_content = scanned.map(index_by_content).unwrap_or_default();
    let (fileless, fileless_policy) = policy.fileless();
    let mut resolution = Resolution {
        scan: scanned.map(|report| report.stats),
        fileless,
        fileless_rule: (fileless != Fileless::Allow).then(|| RuleInfo {
            rule_id: FILELESS_RULE_ID,
            id: "fileless".to_owned(),
            policy: fileless_policy.unwrap_or_default().to_owned(),
            reason: Some(
                "runs a file with no name on disk (memfd, O_TMPFILE or deleted file)".to_owned(),
            ),
            action: if fileless == Fileless::Deny {
                Action::Deny
            } else {
                Action::Audit
            },
        }),
        ..Resolution::default()
    };
    for (rule, rule_id) in policy.rules.iter().zip(kernel_rule_ids(policy)) {
        resolution.positions.insert(rule_id, resolution.rules.len());
        resolution.rules.push(RuleInfo {
            rule_id,
            id: rule.id.clone(),
            policy: rule.policy.clone(),
            reason: rule.reason.clone(),
            action: rule.action,
        });
        let mut found = Found {
            rule_id,
            rule: &rule.id,
            resolution: &mut resolution,
        };
        found.identifiers(&rule.identifiers, roots, scanned.map(|_| &by_content));
        let overrides: BTreeSet<FileKey> = rule
            .ban_critical_files
            .iter()
            .filter_map(|path| critical::key_of(path))
            .collect();
        for hash in &rule.identifiers.sha256 {
            let contents = critical_contents.get_or_insert_with(|| critical::contents(&critical));
            if let Some(&position) = contents.get(hash) {
                let file = &critical[position];
                if !may_ban(file, &overrides) {
                    resolution.protected.push(Protected {
                        rule: rule.id.clone(),
                        path: file.path.clone(),
                        why: file.why,
                    });
                    continue;
                }
            }
            // Deny over audit, then the earliest rule, as for identities.
            let stricter = resolution
                .hashes
                .get(hash)
                .is_none_or(|&existing| resolution.takes_precedence(rule_id, existing));
            if stricter {
                resolution.hashes.insert(*hash, rule_id);
            }
        }
        resolution.critical_overrides.insert(rule_id, overrides);
    }
    resolution.choose_entries(&protected);
    resolution
}

/// Collects one rule's matches into the resolution.
struct Found<'a> {
    rule_id: u32,
    rule: &'a str,
    resolution: &'a mut Resolution,
}

impl Found<'_> {
    fn identifiers(
        &mut self,
        identifiers: &Identifiers,
        roots: &SourceRoots,
        by_content: Option<&HashMap<Sha256, Vec<&HashedFile>>>,
    ) {
        for path in &identifiers.paths {
            let via = Via::Path(path.clone());
            match FileIdentity::of_path(path) {
                Ok(identity) => self.add(path.clone(), identity, via),
                Err(error) => self.unresolved(via, error.to_string()),
            }
        }
        for prefix in &identifiers.path_prefixes {
            let via = Via::PathPrefix(prefix.clone());
            if !prefix.is_dir() {
                self.unresolved(via, "no such directory".to_owned());
                continue;
            }
            let found = self.walk_candidates(prefix, |_| true);
            self.add_all(found, via);
        }
        for glob in &identifiers.globs {
            let matcher = compile_glob(glob).expect("validated by the policy parser");
            let found = self.walk_candidates(&glob_base(glob), |path| matcher.is_match(path));
            self.add_all(found, Via::Glob(glob.clone()));
        }
        for name in &identifiers.packages {
            self.add_source(
                sources::package_files(name, roots),
                Via::Package(name.clone()),
            );
        }
        for id in &identifiers.flatpak {
            self.add_source(sources::flatpak_files(id, roots), Via::Flatpak(id.clone()));
        }
        for name in &identifiers.snap {
            self.add_source(sources::snap_files(name, roots), Via::Snap(name.clone()));
        }
        let Some(by_content) = by_content else {
            return;
        };
        for hash in &identifiers.sha256 {
            let files = by_content.get(hash).map(Vec::as_slice).unwrap_or_default();
            if files.is_empty() {
                self.unresolved(
                    Via::Sha256(*hash),
                    "no file under the scan roots has this content".to_owned(),
                );
            }
            for file in files {
                self.add(file.path.clone(), file.identity, Via::Sha256(*hash));
            }
        }
        for appimage in &identifiers.appimage {
            let matcher = compile_glob(&appimage.name).expect("validated by the policy parser");
            let before = self.resolution.matches.len();
            for file in by_content.values().flatten() {
                let name_matches = file
                    .path
                    .file_name()
                    .is_some_and(|name| matcher.is_match(name));
                if name_matches
                    && (appimage.sha256.is_empty() || appimage.sha256.contains(&file.sha256))
                {
                    self.add(
                        file.path.clone(),
                        file.identity,
                        Via::AppImage(appimage.name.clone()),
                    );
                }
            }
            if self.resolution.matches.len() == before {
                let reason = if appimage.sha256.is_empty() {
                    "no executable file under the scan roots has this name"
                } else {
                    "no executable file under the scan roots has this name and one of these contents"
                };
                self.unresolved(Via::AppImage(appimage.name.clone()), reason.to_owned());
            }
        }
    }

    /// Executable candidates under `root` whose path `wanted` accepts; walk problems become
    /// warnings.
    fn walk_candidates(&mut self, root: &Path, wanted: impl Fn(&Path) -> bool) -> SourceFiles {
        let mut found = SourceFiles::default();
        for entry in walk(root, &mut self.resolution.warnings) {
            if is_executable_candidate(&entry.path, &entry.status) && wanted(&entry.path) {
                found.add(entry.path, &entry.status);
            }
        }
        found
    }

    fn add_source(&mut self, source: Result<SourceFiles, String>, via: Via) {
        match source {
            Ok(mut found) => {
                self.resolution.warnings.append(&mut found.warnings);
                self.add_all(found, via);
            }
            Err(reason) => self.unresolved(via, reason),
        }
    }

    /// Adds files found by walking trees or reading package databases, each only if opening it
    /// now, without following a final symlink, reaches the inode seen when it was found: in a
    /// tree a user can write to, a file or directory swapped for a symlink since must not get
    /// another file banned.
    fn add_all(&mut self, found: SourceFiles, via: Via) {
        if found.files.is_empty() {
            self.unresolved(via, "no executable files found".to_owned());
            return;
        }
        for path in found.files {
            let (identity, seen_as) = match FileIdentity::of_path_no_follow_as_seen(&path) {
                Ok(found) => found,
                Err(error) => {
                    let warning = format!("{}: {error}", escaped(&path));
                    self.resolution.warnings.push(warning);
                    continue;
                }
            };
            let same_as_seen = found.seen.get(&path).is_none_or(|&seen| seen == seen_as);
            if !same_as_seen {
                let warning = format!(
                    "{}: replaced since it was found; not banned",
                    escaped(&path)
                );
                self.resolution.warnings.push(warning);
                continue;
            }
            self.add(path, identity, via.clone());
        }
    }

    fn add(&mut self, path: PathBuf, identity: FileIdentity, via: Via) {
        self.resolution.matches.push(Match {
            rule_id: self.rule_id,
            path,
            identity,
            via,
        });
    }

    fn unresolved(&mut self, via: Via, reason: String) {
        self.resolution.unresolved.push(Unresolved {
            rule: self.rule.to_owned(),
            via,
            reason,
        });
    }
}

impl Resolution {
    /// One entry per file: deny over audit, then the earliest rule; protected files never.
    fn choose_entries(&mut self, protected: &BTreeMap<FileKey, CriticalFile>) {
        for found in &self.matches {
            let key = found.identity.key;
            let critical = protected.get(&key);
            if let Some(file) = critical.filter(|file| !self.may_ban_critical(found.rule_id, file))
            {
                let why = file.why;
                let rule = self.own_rule(found.rule_id).id.clone();
                if !self
                    .protected
                    .iter()
                    .any(|p| p.path == found.path && p.rule == rule)
                {
                    self.protected.push(Protected {
                        rule,
                        path: found.path.clone(),
                        why,
                    });
                }
                continue;
            }
            let action = self.own_rule(found.rule_id).action;
            let entry = found
                .identity
                .ban_entry(found.rule_id, action.kernel_value());
            let replace = self
                .entries
                .get(&key)
                .is_none_or(|existing| self.takes_precedence(found.rule_id, existing.rule_id));
            if replace {
                self.entries.insert(key, entry);
                self.paths.insert(key, found.path.clone());
            }
        }
    }
}

/// The rules whose content identifiers (`sha256`, `appimage`) name `file`, and through which.
pub fn content_matches(policy: &Policy, file: &HashedFile) -> Vec<(u32, Via)> {
    let name = file.path.file_name().unwrap_or_default();
    let mut found = Vec::new();
    for (rule, rule_id) in policy.rules.iter().zip(kernel_rule_ids(policy)) {
        if rule.identifiers.sha256.contains(&file.sha256) {
            found.push((rule_id, Via::Sha256(file.sha256)));
        }
        for appimage in &rule.identifiers.appimage {
            let name_matches = compile_glob(&appimage.name)
                .expect("validated by the policy parser")
                .is_match(name);
            if name_matches
                && (appimage.sha256.is_empty() || appimage.sha256.contains(&file.sha256))
            {
                found.push((rule_id, Via::AppImage(appimage.name.clone())));
            }
        }
    }
    found
}

/// The number each rule (in policy order) is known by in the kernel's entries and events: a hash
/// of its id, so it stays the same across reloads and daemon restarts while the rule exists. An
/// event raised under the previous policy then still names its rule, and maps a restarted daemon
/// adopts keep meaning what they meant. Ids whose hashes collide are told apart by rehashing the
/// later one with a counter.
pub fn kernel_rule_ids(policy: &Policy) -> Vec<u32> {
    let mut taken = std::collections::HashSet::from([FILELESS_RULE_ID]);
    policy
        .rules
        .iter()
        .map(|rule| {
            (0u32..)
                .map(|attempt| {
                    let mut hasher = Sha256Hasher::new();
                    hasher.update(rule.id.as_bytes());
                    if attempt > 0 {
                        hasher.update(attempt.to_le_bytes());
                    }
                    let digest = hasher.finalize();
                    u32::from_le_bytes(digest[..4].try_into().expect("4 bytes"))
                })
                .find(|&id| taken.insert(id))
                .expect("a free id among 2^32")
        })
        .collect()
}

fn index_by_content(report: &ScanReport) -> HashMap<Sha256, Vec<&HashedFile>> {
    let mut index: HashMap<Sha256, Vec<&HashedFile>> = HashMap::new();
    for file in &report.files {
        index.entry(file.sha256).or_default().push(file);
    }
    index
}

/// Whether a rule whose `ban_critical_files` names `overrides` may ban the critical `file`.
fn may_ban(file: &CriticalFile, overrides: &BTreeSet<FileKey>) -> bool {
    file.overridable && overrides.contains(&file.key)
}

/// Files whose ban would stop the machine or blocker itself, by identity: see
/// [`crate::critical`].
pub fn protected_files() -> BTreeMap<FileKey, CriticalFile> {
    critical_files()
        .into_iter()
        .map(|file| (file.key, file))
        .collect()
}
#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};

    use super::*;
    use crate::{
        files::FileStatus,
        policy::{AppImage, Location, Rule},
        scan::{scan, ScanOptions},
    };

    fn rule(id: &str, action: Action, identifiers: Identifiers) -> Rule {
        Rule {
            id: id.to_owned(),
            description: None,
            reason: Some(format!("{id} is banned")),
            action,
            identifiers,
            ban_critical_files: Vec::new(),
            policy: "test".to_owned(),
            location: Location {
                file: PathBuf::from("test.toml"),
                line: 1,
                column: 1,
            },
        }
    }

    fn paths(paths: &[&Path]) -> Identifiers {
        Identifiers {
            paths: paths.iter().map(|p| p.to_path_buf()).collect(),
            ..Identifiers::default()
        }
    }

    fn resolve_rules(rules: Vec<Rule>, scanned: Option<&ScanReport>) -> Resolution {
        let policy = Policy {
            policies: Vec::new(),
            rules,
        };
        resolve(&policy, &SourceRoots::default(), scanned)
    }

    fn write(path: &Path, content: &[u8], mode: u32) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, content).unwrap();
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).unwrap();
    }

    fn banned_paths(resolution: &Resolution) -> Vec<PathBuf> {
        resolution.paths.values().cloned().collect()
    }

    #[test]
    fn paths_resolve_to_identities_and_missing_files_are_reported() {
        let dir = tempfile::tempdir().unwrap();
        let banned = dir.path().join("banned");
        write(&banned, b"x", 0o755);
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&banned, &link).unwrap();
        let missing = dir.path().join("missing");
        let resolution = resolve_rules(
            vec![rule("r", Action::Deny, paths(&[&banned, &link, &missing]))],
            None,
        );
        // The symlink names the same file: one entry.
        assert_eq!(resolution.entries.len(), 1);
        let (key, entry) = resolution.entries.iter().next().unwrap();
        assert_eq!(key.ino, std::fs::metadata(&banned).unwrap().ino());
        assert_eq!(entry.action, blocker_common::action::DENY);
        assert_eq!(resolution.matches.len(), 2);
        assert_eq!(resolution.unresolved.len(), 1);
        assert_eq!(resolution.unresolved[0].via, Via::Path(missing));
        assert!(resolution.unresolved[0].reason.contains("No such file"));
    }

    #[test]
    fn deny_wins_over_audit_then_first_rule_wins() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        write(&file, b"x", 0o755);
        let audit_then_deny = resolve_rules(
            vec![
                rule("audit", Action::Audit, paths(&[&file])),
                rule("deny", Action::Deny, paths(&[&file])),
            ],
            None,
        );
        let winner = |resolution: &Resolution| {
            let entry = resolution.entries.values().next().unwrap();
            resolution.rule(entry.rule_id).unwrap().id.clone()
        };
        assert_eq!(winner(&audit_then_deny), "deny");
        let deny_then_deny = resolve_rules(
            vec![
                rule("first", Action::Deny, paths(&[&file])),
                rule("second", Action::Deny, paths(&[&file])),
            ],
            None,
        );
        assert_eq!(winner(&deny_then_deny), "first");
    }

    #[test]
    fn kernel_rule_ids_follow_the_rule_not_its_position() {
        let policy = |ids: &[&str]| Policy {
            rules: ids
                .iter()
                .map(|id| rule(id, Action::Deny, Identifiers::default()))
                .collect(),
            ..Policy::default()
        };
        let before = kernel_rule_ids(&policy(&["wechat", "tiktok", "kaspersky"]));
        let after = kernel_rule_ids(&policy(&["kaspersky", "new-rule", "wechat"]));
        assert_eq!(before[0], after[2]);
        assert_eq!(before[2], after[0]);
        let mut distinct = after.clone();
        distinct.sort_unstable();
        distinct.dedup();
        assert_eq!(distinct.len(), 3);
        assert!(!after.contains(&FILELESS_RULE_ID));
    }

    #[test]
    fn prefixes_and_globs_name_the_executables_of_a_tree() {
        let dir = tempfile::tempdir().unwrap();
        let app = dir.path().join("opt/wechat");
        write(&app.join("wechat"), b"elf", 0o755);
        write(&app.join("lib/libwechat.so.1"), b"so", 0o644);
        write(&app.join("share/icon.png"), b"png", 0o644);
        write(
            &dir.path().join("home/alice/Apps/WeChat.AppImage"),
            b"ai",
            0o755,
        );
        write(
            &dir.path().join("home/alice/Apps/Other.AppImage"),
            b"ai2",
            0o755,
        );

        let prefix = resolve_rules(
            vec![rule(
                "tree",
                Action::Deny,
                Identifiers {
                    path_prefixes: vec![app.clone()],
                    ..Identifiers::default()
                },
            )],
            None,
        );
        let mut found = banned_paths(&prefix);
        found.sort();
        assert_eq!(found, [app.join("lib/libwechat.so.1"), app.join("wechat")]);

        let glob = format!("{}/home/*/Apps/WeChat*.AppImage", dir.path().display());
        let globbed = resolve_rules(
            vec![rule(
                "glob",
                Action::Deny,
                Identifiers {
                    globs: vec![glob.clone()],
                    ..Identifiers::default()
                },
            )],
            None,
        );
        assert_eq!(
            banned_paths(&globbed),
            [dir.path().join("home/alice/Apps/WeChat.AppImage")]
        );

        let nothing = resolve_rules(
            vec![rule(
                "none",
                Action::Deny,
                Identifiers {
                    path_prefixes: vec![dir.path().join("absent")],
                    ..Identifiers::default()
                },
            )],
            None,
        );
        assert!(nothing.entries.is_empty());
        assert_eq!(nothing.unresolved.len(), 1);
    }

    #[test]
    fn content_rules_find_copies_anywhere_under_the_scan_roots() {
        let dir = tempfile::tempdir().unwrap();
        let banned_content = b"\x7fELF banned program";
        write(&dir.path().join("opt/app/bin/app"), banned_content, 0o755);
        write(
            &dir.path().join("home/bob/renamed-copy"),
            banned_content,
            0o755,
        );
        write(
            &dir.path().join("home/bob/WeChat-4.0.AppImage"),
            b"appimage v4",
            0o755,
        );
        write(
            &dir.path().join("home/bob/other"),
            b"another program",
            0o755,
        );
        let report = scan(&ScanOptions {
            roots: vec![dir.path().to_owned()],
            cache_file: None,
            progress: false,
        });
        let banned_hash = crate::scan::hash_file(&dir.path().join("opt/app/bin/app"))
            .unwrap()
            .sha256;
        let appimage_hash =
            crate::scan::hash_file(&dir.path().join("home/bob/WeChat-4.0.AppImage"))
                .unwrap()
                .sha256;
        let resolution = resolve_rules(
            vec![
                rule(
                    "content",
                    Action::Deny,
                    Identifiers {
                        sha256: vec![banned_hash, [7; 32]],
                        ..Identifiers::default()
                    },
                ),
                rule(
                    "appimage",
                    Action::Deny,
                    Identifiers {
                        appimage: vec![
                            AppImage {
                                name: "WeChat-*.AppImage".to_owned(),
                                sha256: vec![appimage_hash],
                            },
                            AppImage {
                                name: "WeChat-*.AppImage".to_owned(),
                                sha256: vec![[9; 32]],
                            },
                        ],
                        ..Identifiers::default()
                    },
                ),
            ],
            Some(&report),
        );
        let mut found = banned_paths(&resolution);
        found.sort();
        assert_eq!(
            found,
            [
                dir.path().join("home/bob/WeChat-4.0.AppImage"),
                dir.path().join("home/bob/renamed-copy"),
                dir.path().join("opt/app/bin/app"),
            ]
        );
        // The unmatched hash and the AppImage entry whose content differs name nothing.
        assert_eq!(
            resolution.unresolved.len(),
            2,
            "{:?}",
            resolution.unresolved
        );
        assert_eq!(
            resolution.hashes.get(&banned_hash),
            Some(&resolution.rules[0].rule_id)
        );

        // Without a scan, content rules match nothing and say nothing.
        let unscanned = resolve_rules(
            vec![rule(
                "content",
                Action::Deny,
                Identifiers {
                    sha256: vec![banned_hash],
                    ..Identifiers::default()
                },
            )],
            None,
        );
        assert!(unscanned.entries.is_empty() && unscanned.unresolved.is_empty());
    }

    #[test]
    fn files_the_machine_needs_are_never_banned() {
        let libc_path =
            critical::mapped_files(&std::fs::read_to_string("/proc/self/maps").unwrap())
                .into_iter()
                .find(|path| path.contains("libc.so"))
                .map(PathBuf::from)
                .expect("test binaries link libc dynamically");
        let resolution = resolve_rules(
            vec![rule(
                "foot-gun",
                Action::Deny,
                paths(&[Path::new("/proc/self/exe"), &libc_path]),
            )],
            None,
        );
        assert!(resolution.entries.is_empty(), "{:?}", resolution.entries);
        assert_eq!(resolution.protected.len(), 2);
        assert!(resolution.protected.iter().any(|p| p.path == libc_path));
    }

    fn add_found(found: SourceFiles) -> Resolution {
        let mut resolution = Resolution::default();
        Found {
            rule_id: 0,
            rule: "r",
            resolution: &mut resolution,
        }
        .add_all(found, Via::PathPrefix(PathBuf::from("/")));
        resolution
    }

    #[test]
    fn a_file_swapped_after_it_was_found_is_not_banned() {
        let dir = tempfile::tempdir().unwrap();
        let system_program = dir.path().join("system-program");
        write(&system_program, b"precious", 0o755);
        let listed = dir.path().join("users-tool");
        write(&listed, b"user's file", 0o755);
        let mut found = SourceFiles::default();
        found.add(
            listed.clone(),
            &FileStatus::of(&std::fs::metadata(&listed).unwrap()),
        );

        // Between the walk and the open, the user swaps the file for a symlink...
        std::fs::remove_file(&listed).unwrap();
        std::os::unix::fs::symlink(&system_program, &listed).unwrap();
        let resolution = add_found(found);
        assert!(resolution.matches.is_empty());
        assert_eq!(resolution.warnings.len(), 1, "{:?}", resolution.warnings);

        // ... or for a hard link to another file.
        let mut found = SourceFiles::default();
        let replaced = dir.path().join("replaced");
        write(&replaced, b"user's file", 0o755);
        found.add(
            replaced.clone(),
            &FileStatus::of(&std::fs::metadata(&replaced).unwrap()),
        );
        std::fs::remove_file(&replaced).unwrap();
        std::fs::hard_link(&system_program, &replaced).unwrap();
        let resolution = add_found(found);
        assert!(resolution.matches.is_empty());
        assert!(
            resolution.warnings[0].contains("replaced since it was found"),
            "{:?}",
            resolution.warnings
        );
    }

    #[test]
    fn contents_the_machine_needs_are_never_banned() {
        let own = crate::scan::hash_file(Path::new("/proc/self/exe")).unwrap();
        let resolution = resolve_rules(
            vec![rule(
                "foot-gun",
                Action::Deny,
                Identifiers {
                    sha256: vec![own.sha256],
                    ..Identifiers::default()
                },
            )],
            None,
        );
        assert!(resolution.hashes.is_empty());
        assert_eq!(resolution.protected.len(), 1);
    }
}
