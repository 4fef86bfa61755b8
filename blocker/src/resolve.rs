//! Turns parsed rules into the entries of the kernel's ban map: every identifier a rule gives
//! (path, prefix, glob, package, Flatpak app, snap, content hash, AppImage) becomes the files it
//! names on this machine now, and each file becomes its kernel identity.

use crate::escape::escaped;
use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    ffi::OsStr,
    fmt,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
};

use blocker_common::{
    entry_flags, BanEntry, FileKey, FILELESS_RULE_ID, LOCKDOWN_RULE_ID, UNHASHABLE_RULE_ID,
    UNTRUSTED_PATH_RULE_ID,
};
use sha2::{Digest, Sha256 as Sha256Hasher};

use crate::{
    budget::{Budget, Overflow, Spending, Standing},
    critical::{self, critical_files, CriticalFile},
    files::{is_executable_candidate, walk_root_parallel, Visitor, WalkedFile},
    identity::FileIdentity,
    kernel::ExecSettings,
    lookup::{self, Problems},
    path_table::{PathRef, PathTable},
    policy::{compile_glob, glob_base, Action, Identifiers, Policy, SettingAction, Telling},
    scan::{to_hex, HashedFile, ScanReport, ScanStats, Sha256},
    sorted_map::SortedMap,
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
    pub url: Option<String>,
    pub telling: Telling,
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

/// One file a rule names. Small, and with the file's identity spread out rather than a
/// [`FileIdentity`] (whose padding would make it 8 bytes larger): a prefix can name a million.
#[derive(Clone, Copy, Debug)]
pub struct Match {
    pub rule_id: u32,
    /// In [`Resolution::paths`].
    pub path: PathRef,
    /// In [`Resolution::vias`].
    pub via: ViaId,
    pub key: FileKey,
    pub generation: Option<u32>,
    pub owner: u32,
}

impl Match {
    fn new(rule_id: u32, path: PathRef, via: ViaId, identity: FileIdentity) -> Self {
        Self {
            rule_id,
            path,
            via,
            key: identity.key,
            generation: identity.generation,
            owner: identity.owner,
        }
    }

    pub fn identity(&self) -> FileIdentity {
        FileIdentity {
            key: self.key,
            generation: self.generation,
            owner: self.owner,
        }
    }
}

/// An identifier of [`Resolution::vias`]: the one every file it names shares.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ViaId(u32);

/// An identifier that named nothing on this machine, and why.
#[derive(Clone, Debug)]
pub struct Unresolved {
    pub rule: String,
    pub via: Via,
    pub reason: String,
}

/// An identifier whose files could not be looked up now, for a reason other than their being
/// gone (see [`crate::lookup`]): what it names is undecided, so the entries its rule had stay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undecided {
    pub rule: String,
    pub rule_id: u32,
    pub via: Via,
    /// `path: error`, escaped.
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
    pub entries: SortedMap<FileKey, BanEntry>,
    /// The files `allow` rules name that no ban names (a ban wins): exempt from the
    /// trusted-path check.
    pub allowed: SortedMap<FileKey, BanEntry>,
    /// Where in `paths` each entry's file is, in the order of `entries`: for events and logs.
    entry_paths: Vec<PathRef>,
    /// Through which identifier each entry's file was found, in the order of `entries`: a
    /// content ban's events name the hash it was banned for.
    entry_vias: Vec<ViaId>,
    /// Every file any rule names, including those another rule's entry takes precedence over;
    /// empty once [`Resolution::forget_matches`] (the daemon needs only the entries).
    pub matches: Vec<Match>,
    /// The paths of the matches.
    pub paths: PathTable,
    /// The identifiers through which the matches were found.
    vias: Vec<Via>,
    /// Banned contents, for hashing in the kernel.
    pub hashes: BTreeMap<Sha256, u32>,
    pub unresolved: Vec<Unresolved>,
    pub undecided: Vec<Undecided>,
    /// Entries of rules with undecided identifiers that this resolution did not find, kept
    /// from the resolution in force before it (see [`Resolution::keep_undecided`]).
    pub kept: usize,
    pub protected: Vec<Protected>,
    /// Problems met while walking and reading (`path: reason`).
    pub warnings: Vec<String>,
    pub scan: Option<ScanStats>,
    /// What the kernel does with fileless execs.
    pub fileless: SettingAction,
    /// Events about fileless execs name this pseudo-rule.
    pub fileless_rule: Option<RuleInfo>,
    /// What the kernel does with execs it could not hash while content rules are in force.
    pub unhashable: SettingAction,
    /// Events about unhashable execs name this pseudo-rule.
    pub unhashable_rule: Option<RuleInfo>,
    /// Files larger than this many MiB are not hashed.
    pub hash_limit_mib: u32,
    /// What the kernel does with files on untrusted paths no `allow` rule names.
    pub untrusted_paths: SettingAction,
    /// Events about untrusted paths name this pseudo-rule.
    pub untrusted_path_rule: Option<RuleInfo>,
    /// What the kernel does with files no trust source names (a policy's `default`).
    pub lockdown: SettingAction,
    /// Events about files refused or audited by lockdown name this pseudo-rule.
    pub lockdown_rule: Option<RuleInfo>,
    /// The files no rule may ban, unless its `ban_critical_files` names them.
    critical: BTreeMap<FileKey, CriticalFile>,
    /// Under lockdown, the files installed packages vouch for (see
    /// [`sources::trusted_package_files`]).
    packaged: Vec<FileIdentity>,
    /// Under lockdown, the package manager the kernel follows (see
    /// [`sources::package_manager`]).
    package_manager: Option<FileKey>,
    /// The map's budget and what the entries took of it.
    spending: Spending,
}

impl Resolution {
    pub fn rule(&self, rule_id: u32) -> Option<&RuleInfo> {
        match rule_id {
            FILELESS_RULE_ID => return self.fileless_rule.as_ref(),
            UNHASHABLE_RULE_ID => return self.unhashable_rule.as_ref(),
            UNTRUSTED_PATH_RULE_ID => return self.untrusted_path_rule.as_ref(),
            LOCKDOWN_RULE_ID => return self.lockdown_rule.as_ref(),
            _ => {}
        }
        self.positions
            .get(&rule_id)
            .map(|&position| &self.rules[position])
    }

    /// What the kernel does with execs no rule names.
    pub fn exec_settings(&self) -> ExecSettings {
        ExecSettings {
            fileless: self.fileless.kernel_value(),
            unhashable: self.unhashable.kernel_value(),
            hash_limit_mib: self.hash_limit_mib,
            untrusted_paths: self.untrusted_paths.kernel_value(),
            lockdown: self.lockdown.kernel_value(),
        }
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

    /// The files the budget left out of the map.
    pub fn overflow(&self) -> &Overflow {
        &self.spending.overflow
    }

    pub fn budget(&self) -> &Budget {
        self.spending.budget()
    }

    /// Adds a file the content watcher found that `rule_id` names through `via`, as a
    /// resolution finding it would have: unless it is critical, and within the budget. Returns
    /// whether the file got an entry now.
    pub fn add_seen(&mut self, rule_id: u32, via: Via, file: &HashedFile) -> bool {
        let key = file.identity.key;
        if self.entries.contains_key(&key) {
            return false;
        }
        let Some(path) = self.paths.insert(&file.path) else {
            return false;
        };
        let via = self.add_via(via);
        self.matches
            .push(Match::new(rule_id, path, via, file.identity));
        let found = self.matches.len() - 1;
        if !self.may_enter(found) {
            return false;
        }
        let standing = self.standing(&self.matches[found]);
        if !self.spending.admit(standing) {
            return false;
        }
        self.enter(found);
        true
    }

    /// A path of the banned file `key`, for events and logs.
    pub fn path_of(&self, key: &FileKey) -> Option<PathBuf> {
        let index = self.entries.position(key).ok()?;
        Some(self.paths.path(self.entry_paths[index]))
    }

    /// The SHA-256 the banned file `key` was found by, if a content rule found it.
    pub fn banned_hash_of(&self, key: &FileKey) -> Option<&Sha256> {
        match self.entry_via(key)? {
            Via::Sha256(hash) => Some(hash),
            _ => None,
        }
    }

    fn entry_via(&self, key: &FileKey) -> Option<&Via> {
        let index = self.entries.position(key).ok()?;
        Some(&self.vias[self.entry_vias[index].0 as usize])
    }

    /// The banned files with a path of each, in the order of their keys; the paths are made
    /// as the iterator gets to them.
    pub fn banned_files(&self) -> impl Iterator<Item = (FileKey, PathBuf)> + '_ {
        self.entries
            .keys()
            .zip(&self.entry_paths)
            .map(|(key, &path)| (*key, self.paths.path(path)))
    }

    pub fn via(&self, found: &Match) -> &Via {
        &self.vias[found.via.0 as usize]
    }

    fn add_via(&mut self, via: Via) -> ViaId {
        let id = ViaId(u32::try_from(self.vias.len()).expect("fewer identifiers than 2^32"));
        self.vias.push(via);
        id
    }

    /// Drops what only `blocker resolve` and `explain` show: which files each rule named,
    /// beyond the entries. The daemon keeps a million entries, not a million matches too.
    pub fn forget_matches(&mut self) {
        self.matches = Vec::new();
    }

    /// The kernel's content ban map: each banned SHA-256 with its rule and action.
    pub fn content_bans(&self) -> SortedMap<Sha256, BanEntry> {
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

/// Whether what `policy` names changes when packages are installed, upgraded or removed: a
/// rule names packages, or lockdown trusts what they installed.
pub fn depends_on_packages(policy: &Policy) -> bool {
    policy.lockdown().0 != SettingAction::Allow
        || policy
            .rules
            .iter()
            .any(|rule| !rule.identifiers.packages.is_empty())
}

/// Whether any rule of `policy` needs the content scan.
pub fn needs_scan(policy: &Policy) -> bool {
    policy
        .rules
        .iter()
        .any(|rule| rule.identifiers.needs_scan())
}

/// Which executable candidates the content scan must hash for `policy`: all of them while a
/// rule bans a content wherever it is (`sha256`), otherwise only those whose name an
/// `appimage` rule's name matches, the only files such a rule can name. The shipped policies'
/// AppImage rules then cost a walk of the scan roots, not a read of every program under them.
pub fn scan_wants(policy: &Policy) -> impl Fn(&Path) -> bool {
    let every_file = policy
        .rules
        .iter()
        .any(|rule| !rule.identifiers.sha256.is_empty());
    let names: Vec<_> = policy
        .rules
        .iter()
        .flat_map(|rule| &rule.identifiers.appimage)
        .map(|appimage| compile_glob(&appimage.name).expect("validated by the policy parser"))
        .collect();
    move |path: &Path| {
        every_file
            || path
                .file_name()
                .is_some_and(|name| names.iter().any(|matcher| matcher.is_match(name)))
    }
}

/// The pseudo-rule events about a policy-wide setting name; none while it allows.
fn setting_rule(
    rule_id: u32,
    id: &str,
    setting: SettingAction,
    policy: Option<&str>,
    reason: &str,
) -> Option<RuleInfo> {
    (setting != SettingAction::Allow).then(|| RuleInfo {
        rule_id,
        id: id.to_owned(),
        policy: policy.unwrap_or_default().to_owned(),
        reason: Some(reason.to_owned()),
        url: None,
        // An audit of a setting covers execs nobody chose to ban (any large or fileless
        // program): the log's business, not the user's. A refusal is told.
        telling: Telling {
            desktop: setting == SettingAction::Deny,
            ..Telling::default()
        },
        action: if setting == SettingAction::Deny {
            Action::Deny
        } else {
            Action::Audit
        },
    })
}

/// Resolves every rule against the filesystem as it is now. Content identifiers are matched
/// against `scanned` (a scan of the scan roots); without one they match nothing. A file named
/// by several rules is banned by the strictest (deny over audit), then by the first.
pub fn resolve(policy: &Policy, roots: &SourceRoots, scanned: Option<&ScanReport>) -> Resolution {
    resolve_within(policy, roots, scanned, Budget::default())
}

/// [`resolve`], sharing the map's capacity as `budget` says.
pub fn resolve_within(
    policy: &Policy,
    roots: &SourceRoots,
    scanned: Option<&ScanReport>,
    budget: Budget,
) -> Resolution {
    let protected = protected_files();
    let critical: Vec<CriticalFile> = protected.values().cloned().collect();
    let mut critical_contents = None;
    let by_content = scanned.map(index_by_content).unwrap_or_default();
    let (fileless, fileless_policy) = policy.fileless();
    let (unhashable, unhashable_policy) = policy.unhashable();
    let (untrusted_paths, untrusted_paths_policy) = policy.untrusted_paths();
    let (lockdown, lockdown_policy) = policy.lockdown();
    let mut resolution = Resolution {
        scan: scanned.map(|report| report.stats),
        fileless,
        fileless_rule: setting_rule(
            FILELESS_RULE_ID,
            "fileless",
            fileless,
            fileless_policy,
            "runs a file with no name on disk (memfd, O_TMPFILE or deleted file)",
        ),
        unhashable,
        unhashable_rule: setting_rule(
            UNHASHABLE_RULE_ID,
            "unhashable",
            unhashable,
            unhashable_policy,
            "runs a file whose content the kernel could not judge (over the hash limit, \
             unreadable, or on a filesystem that can change its bytes unseen), so no content \
             rule could",
        ),
        hash_limit_mib: policy.hash_limit_mib(),
        untrusted_paths,
        untrusted_path_rule: setting_rule(
            UNTRUSTED_PATH_RULE_ID,
            "untrusted_path",
            untrusted_paths,
            untrusted_paths_policy,
            "runs a file on an untrusted path: it or a directory above it is owned by someone \
             other than root or writable by group or others, and no allow rule names it",
        ),
        lockdown,
        lockdown_rule: setting_rule(
            LOCKDOWN_RULE_ID,
            "lockdown",
            lockdown,
            lockdown_policy,
            "runs a file no allow rule names (lockdown: the policy's default)",
        ),
        spending: Spending::new(budget),
        ..Resolution::default()
    };
    for (rule, rule_id) in policy.rules.iter().zip(kernel_rule_ids(policy)) {
        resolution.positions.insert(rule_id, resolution.rules.len());
        resolution.rules.push(RuleInfo {
            rule_id,
            id: rule.id.clone(),
            policy: rule.policy.clone(),
            reason: rule.reason.clone(),
            url: rule.url.clone(),
            telling: rule.telling.clone(),
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
        // An allowed content is allowed where the scan finds it, by identity: the kernel's
        // content map holds bans only.
        let banned_hashes = match rule.action {
            Action::Allow => &[][..],
            Action::Audit | Action::Deny => &rule.identifiers.sha256[..],
        };
        for hash in banned_hashes {
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
    resolution.critical = protected;
    if lockdown != SettingAction::Allow {
        resolution.trust_packages(roots, policy.hash_limit_bytes());
    }
    resolution.choose_entries();
    resolution
}

/// Threads walking one tree at most: beyond a few, they wait on the same disk and locks.
const MAX_WALK_THREADS: usize = 4;

/// One walk thread's findings: the executable candidates `wanted` accepts, identified.
struct Candidates<'a, F> {
    rule_id: u32,
    via: ViaId,
    wanted: &'a F,
    /// Candidates met, whether or not they could be identified.
    seen: usize,
    matches: Vec<Match>,
    paths: PathTable,
}

impl<F: Fn(&Path) -> bool + Sync> Visitor for Candidates<'_, F> {
    fn visit(&mut self, file: WalkedFile<'_>, problems: &mut Problems) {
        if !is_executable_candidate(&file.path, &file.status) || !(self.wanted)(&file.path) {
            return;
        }
        self.seen += 1;
        let identity = match FileIdentity::of_walked(&file) {
            Ok(identity) => identity,
            Err(error) => return problems.failed(&file.path, error),
        };
        let directory = file.path.parent().unwrap_or(Path::new("/"));
        let name = OsStr::from_bytes(file.name.to_bytes());
        match self.paths.insert_in(directory, name) {
            Some(path) => self
                .matches
                .push(Match::new(self.rule_id, path, self.via, identity)),
            None => problems.push(format!(
                "{}: more file names than blocker keeps; not banned",
                escaped(&file.path)
            )),
        }
    }
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
                Ok(identity) => {
                    let via = self.resolution.add_via(via);
                    self.add(path, identity, via);
                }
                Err(error) if lookup::shows_gone(&error) => self.unresolved(via, error.to_string()),
                Err(error) => self.undecided(via, format!("{}: {error}", escaped(path))),
            }
        }
        for prefix in &identifiers.path_prefixes {
            let via = Via::PathPrefix(prefix.clone());
            match std::fs::metadata(prefix) {
                Ok(metadata) if metadata.is_dir() => {}
                Ok(_) => {
                    self.unresolved(via, "not a directory".to_owned());
                    continue;
                }
                Err(error) if lookup::shows_gone(&error) => {
                    self.unresolved(via, "no such directory".to_owned());
                    continue;
                }
                Err(error) => {
                    self.undecided(via, format!("{}: {error}", escaped(prefix)));
                    continue;
                }
            }
            self.add_walked(prefix, |_| true, via);
        }
        for glob in &identifiers.globs {
            let matcher = compile_glob(glob).expect("validated by the policy parser");
            self.add_walked(
                &glob_base(glob),
                |path| matcher.is_match(path),
                Via::Glob(glob.clone()),
            );
        }
        for name in &identifiers.packages {
            self.add_source(
                sources::package_files(name, roots),
                Via::Package(name.clone()),
            );
        }
        // What an allow rule trusts must be what root installed; a ban takes every copy.
        let allows = self.resolution.own_rule(self.rule_id).action == Action::Allow;
        for id in &identifiers.flatpak {
            let files = if allows {
                sources::allowed_flatpak_files(id, roots)
            } else {
                sources::flatpak_files(id, roots)
            };
            self.add_source(files, Via::Flatpak(id.clone()));
        }
        for name in &identifiers.snap {
            let files = if allows {
                sources::allowed_snap_files(name, roots)
            } else {
                sources::snap_files(name, roots)
            };
            self.add_source(files, Via::Snap(name.clone()));
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
            let via = self.resolution.add_via(Via::Sha256(*hash));
            for file in files {
                self.add(&file.path, file.identity, via);
            }
        }
        for appimage in &identifiers.appimage {
            let matcher = compile_glob(&appimage.name).expect("validated by the policy parser");
            let before = self.resolution.matches.len();
            let via = self
                .resolution
                .add_via(Via::AppImage(appimage.name.clone()));
            for file in by_content.values().flatten() {
                let name_matches = file
                    .path
                    .file_name()
                    .is_some_and(|name| matcher.is_match(name));
                if name_matches
                    && (appimage.sha256.is_empty() || appimage.sha256.contains(&file.sha256))
                {
                    self.add(&file.path, file.identity, via);
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

    /// Adds the executable candidates under `root` whose path `wanted` accepts. Each is
    /// identified through the walk's descriptor of its directory, so it is the very inode the
    /// walk listed, whatever happens to its path meanwhile; the walk's problems count as for
    /// [`Found::add_all`].
    fn add_walked(&mut self, root: &Path, wanted: impl Fn(&Path) -> bool + Sync, via: Via) {
        let via_id = self.resolution.add_via(via.clone());
        let threads = std::thread::available_parallelism().map_or(1, usize::from);
        let mut visitors: Vec<_> = (0..threads.min(MAX_WALK_THREADS))
            .map(|_| Candidates {
                rule_id: self.rule_id,
                via: via_id,
                wanted: &wanted,
                seen: 0,
                matches: Vec::new(),
                paths: PathTable::default(),
            })
            .collect();
        let mut problems = Problems::default();
        let root_file = walk_root_parallel(root, &mut problems, &mut visitors);
        let found: usize = visitors.iter().map(|visitor| visitor.matches.len()).sum();
        self.resolution.matches.reserve_exact(found);
        let mut candidates = 0;
        for visitor in visitors {
            candidates += visitor.seen;
            let Some(rebase) = self.resolution.paths.absorb(visitor.paths) else {
                problems.push(format!(
                    "{}: more file names than blocker keeps; files below it not banned",
                    escaped(root)
                ));
                continue;
            };
            self.resolution
                .matches
                .extend(visitor.matches.into_iter().map(|found| Match {
                    path: rebase(found.path),
                    ..found
                }));
        }
        if candidates > 0 {
            self.settle(problems, &via, true);
            return;
        }
        // Nothing below `root`: it is the file itself, or names nothing.
        let mut found = SourceFiles {
            problems,
            ..SourceFiles::default()
        };
        let root_file = root_file.filter(|entry| {
            is_executable_candidate(&entry.path, &entry.status) && wanted(&entry.path)
        });
        if let Some(entry) = root_file {
            found.add(entry.path, &entry.status);
        }
        self.add_all(found, via);
    }

    fn add_source(&mut self, source: Result<SourceFiles, String>, via: Via) {
        match source {
            Ok(found) => self.add_all(found, via),
            Err(reason) => self.unresolved(via, reason),
        }
    }

    /// Adds files found by walking trees or reading package databases. A file not identified
    /// as it was found is only if opening it now, without following a final symlink, reaches
    /// the inode seen when it was found: in a tree a user can write to, a file or directory
    /// swapped for a symlink since must not get another file banned. Nothing found is only
    /// "unresolved" when every lookup decided.
    fn add_all(&mut self, mut found: SourceFiles, via: Via) {
        self.settle(
            std::mem::take(&mut found.problems),
            &via,
            !found.files.is_empty(),
        );
        let via_id = self.resolution.add_via(via.clone());
        for path in found.files {
            let looked_up = match found.identified.get(&path) {
                // Identified through the walk's own descriptors: the very inode it listed.
                Some(identity) => Ok((*identity, None)),
                None => FileIdentity::of_path_no_follow_as_seen(&path)
                    .map(|(identity, seen_as)| (identity, Some(seen_as))),
            };
            let (identity, seen_as) = match looked_up {
                Ok(found) => found,
                Err(error) if lookup::shows_gone(&error) => {
                    let warning = format!("{}: {error}", escaped(&path));
                    self.resolution.warnings.push(warning);
                    continue;
                }
                Err(error) => {
                    self.undecided(via.clone(), format!("{}: {error}", escaped(&path)));
                    continue;
                }
            };
            let same_as_seen = match (seen_as, found.seen.get(&path)) {
                (Some(seen_as), Some(&seen)) => seen == seen_as,
                _ => true,
            };
            if !same_as_seen {
                let warning = format!(
                    "{}: replaced since it was found; not banned",
                    escaped(&path)
                );
                self.resolution.warnings.push(warning);
                continue;
            }
            self.add(&path, identity, via_id);
        }
    }

    /// Records the problems of looking up what `via` names; when nothing was `found`, that it
    /// names nothing, unless a lookup was undecided.
    fn settle(&mut self, mut problems: Problems, via: &Via, found: bool) {
        let decided = problems.undecided.is_empty();
        self.resolution.warnings.append(&mut problems.warnings);
        for reason in problems.undecided {
            self.undecided(via.clone(), reason);
        }
        if !found && decided {
            self.unresolved(via.clone(), "no executable files found".to_owned());
        }
    }

    fn add(&mut self, path: &Path, identity: FileIdentity, via: ViaId) {
        match self.resolution.paths.insert(path) {
            Some(path) => {
                self.resolution
                    .matches
                    .push(Match::new(self.rule_id, path, via, identity))
            }
            None => self.resolution.warnings.push(format!(
                "{}: more file names than blocker keeps; not banned",
                escaped(path)
            )),
        }
    }

    fn unresolved(&mut self, via: Via, reason: String) {
        self.resolution.unresolved.push(Unresolved {
            rule: self.rule.to_owned(),
            via,
            reason,
        });
    }

    fn undecided(&mut self, via: Via, reason: String) {
        self.resolution.undecided.push(Undecided {
            rule: self.rule.to_owned(),
            rule_id: self.rule_id,
            via,
            reason,
        });
    }
}

impl Resolution {
    /// The rules with an identifier this resolution could not decide.
    pub fn undecided_rules(&self) -> BTreeSet<u32> {
        self.undecided
            .iter()
            .map(|undecided| undecided.rule_id)
            .collect()
    }

    /// Fails closed: keeps the entries of `installed` (the resolution in force) whose rules
    /// this one left undecided and whose files it did not find, with the action the rule has
    /// now. Such a file was not shown gone, only not looked at; its entry goes once a lookup
    /// decides. A file that became critical is not kept. Returns how many entries were kept.
    pub fn keep_undecided(&mut self, installed: &Resolution) -> usize {
        let undecided = self.undecided_rules();
        for (key, entry) in &installed.entries {
            if !undecided.contains(&entry.rule_id) || self.entries.contains_key(key) {
                continue;
            }
            if self
                .critical
                .get(key)
                .is_some_and(|file| !self.may_ban_critical(entry.rule_id, file))
            {
                continue;
            }
            let action = self.own_rule(entry.rule_id).action.kernel_value();
            let Some(path) = installed
                .path_of(key)
                .and_then(|path| self.paths.insert(&path))
            else {
                continue;
            };
            let Some(via) = installed.entry_via(key) else {
                continue;
            };
            let via = self.add_via(via.clone());
            self.insert_entry(*key, BanEntry { action, ..*entry }, path, via);
            self.kept += 1;
        }
        self.kept
    }

    /// One entry per file: deny over audit, then the earliest rule; protected files never.
    /// Then as many as the budget takes, the most important first (see [`crate::budget`]).
    /// Files only `allow` rules name go to [`Resolution::allowed`] instead.
    fn choose_entries(&mut self) {
        // Numbers of matches rather than a map by file: a policy can name a million files.
        let mut chosen: Vec<u32> = (0..self.matches.len())
            .filter(|&found| !self.allows(found) && self.may_enter(found))
            .map(|found| u32::try_from(found).expect("fewer matches than 2^32"))
            .collect();
        let found = |number: u32| &self.matches[number as usize];
        // For each file, the strongest match first, the earliest among equals.
        chosen.sort_unstable_by(|&a, &b| {
            found(a).key.cmp(&found(b).key).then_with(|| {
                let precedence = |number: u32| self.precedence(found(number).rule_id);
                precedence(a).cmp(&precedence(b)).then(a.cmp(&b))
            })
        });
        chosen.dedup_by_key(|number| found(*number).key);
        let importance = |number: u32| {
            let by_name_only = !matches!(self.via(found(number)), Via::Sha256(_));
            (
                self.standing(found(number)),
                by_name_only,
                found(number).key,
            )
        };
        chosen.sort_unstable_by_key(|&number| importance(number));
        let spending = &mut self.spending;
        let matches = &self.matches;
        let vias = &self.vias;
        chosen.retain(|&number| {
            let found = &matches[number as usize];
            spending.admit(Standing::of(&vias[found.via.0 as usize], found.owner))
        });
        chosen.sort_unstable_by_key(|&number| found(number).key);
        self.entry_paths = chosen.iter().map(|&number| found(number).path).collect();
        self.entry_vias = chosen.iter().map(|&number| found(number).via).collect();
        self.entries = SortedMap::from_sorted(
            chosen
                .iter()
                .map(|&number| {
                    let found = found(number);
                    let action = self.own_rule(found.rule_id).action.kernel_value();
                    (found.key, found.identity().ban_entry(found.rule_id, action))
                })
                .collect(),
        );
        self.choose_allowed();
    }

    /// Trusts what the installed packages installed; files they cannot vouch for are warnings.
    fn trust_packages(&mut self, roots: &SourceRoots, hash_limit_bytes: u64) {
        let mut packaged = sources::trusted_package_files(roots, hash_limit_bytes);
        self.warnings.append(&mut packaged.problems.warnings);
        self.warnings.append(&mut packaged.problems.undecided);
        self.packaged = packaged.identified.into_values().collect();
        self.package_manager = sources::package_manager(roots);
    }

    fn allows(&self, found: usize) -> bool {
        self.own_rule(self.matches[found].rule_id).action == Action::Allow
    }

    /// One entry per file an `allow` rule names, the earliest rule's, unless a ban names it;
    /// the files installed packages vouch for under lockdown, the package manager flagged as one;
    /// and the critical files (see
    /// [`crate::critical`]), the safety net, which always run whatever their path (under rule
    /// id 0: no event names an allowed file).
    fn choose_allowed(&mut self) {
        let action = blocker_common::Action::Allow.wire();
        let packaged = std::mem::take(&mut self.packaged)
            .into_iter()
            .map(|identity| (identity.key, identity.ban_entry(0, action)));
        let safety_net = self.critical.keys().map(|key| {
            let entry = BanEntry {
                rule_id: 0,
                action,
                ..BanEntry::default()
            };
            (*key, entry)
        });
        let mut allowed: Vec<(FileKey, BanEntry)> = (0..self.matches.len())
            .filter(|&found| self.allows(found))
            .map(|found| {
                let found = &self.matches[found];
                (found.key, found.identity().ban_entry(found.rule_id, action))
            })
            .chain(packaged)
            .chain(safety_net)
            .filter(|(key, _)| !self.entries.contains_key(key))
            .collect();
        // Stable: the earliest rule's match stays first among a file's.
        allowed.sort_by_key(|(key, _)| *key);
        allowed.dedup_by_key(|(key, _)| *key);
        if let Some(manager) = self.package_manager {
            if let Ok(position) = allowed.binary_search_by_key(&manager, |(key, _)| *key) {
                allowed[position].1.flags |= entry_flags::PACKAGE_MANAGER;
            }
        }
        self.allowed = SortedMap::from_sorted(allowed);
    }

    /// Whether match `found` may be banned: not a critical file, unless its rule's
    /// `ban_critical_files` names it. Records the refusal otherwise.
    fn may_enter(&mut self, found: usize) -> bool {
        let found = self.matches[found];
        let Some(file) = self.critical.get(&found.key) else {
            return true;
        };
        if self.may_ban_critical(found.rule_id, file) {
            return true;
        }
        let rule = self.own_rule(found.rule_id).id.clone();
        let path = self.paths.path(found.path);
        if !self
            .protected
            .iter()
            .any(|p| p.path == path && p.rule == rule)
        {
            self.protected.push(Protected {
                rule,
                path,
                why: file.why,
            });
        }
        false
    }

    fn standing(&self, found: &Match) -> Standing {
        Standing::of(self.via(found), found.owner)
    }

    /// Puts match `found` in the map.
    fn enter(&mut self, found: usize) {
        let found = self.matches[found];
        let action = self.own_rule(found.rule_id).action.kernel_value();
        let entry = found.identity().ban_entry(found.rule_id, action);
        self.insert_entry(found.key, entry, found.path, found.via);
    }

    fn insert_entry(&mut self, key: FileKey, entry: BanEntry, path: PathRef, via: ViaId) {
        let (index, replaced) = self.entries.insert(key, entry);
        if replaced.is_some() {
            self.entry_paths[index] = path;
            self.entry_vias[index] = via;
        } else {
            self.entry_paths.insert(index, path);
            self.entry_vias.insert(index, via);
        }
    }
}

/// The rules whose content identifiers (`sha256`, `appimage`) name `file`, and through which.
pub fn content_matches(policy: &Policy, file: &HashedFile) -> Vec<(u32, Via)> {
    let name = file.path.file_name().unwrap_or_default();
    let mut found = Vec::new();
    for (rule, rule_id) in policy.rules.iter().zip(kernel_rule_ids(policy)) {
        if rule.action == Action::Allow {
            continue;
        }
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
    let mut taken = std::collections::HashSet::from([
        FILELESS_RULE_ID,
        UNHASHABLE_RULE_ID,
        UNTRUSTED_PATH_RULE_ID,
        LOCKDOWN_RULE_ID,
    ]);
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
        scan::{scan, scan_where, ScanOptions},
    };

    fn rule(id: &str, action: Action, identifiers: Identifiers) -> Rule {
        Rule {
            id: id.to_owned(),
            description: None,
            reason: Some(format!("{id} is banned")),
            url: None,
            telling: Telling::default(),
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

    #[test]
    fn only_refusals_by_a_setting_are_told_to_users() {
        let told = |setting| {
            setting_rule(FILELESS_RULE_ID, "fileless", setting, Some("p"), "why")
                .map(|rule| rule.telling.desktop)
        };
        assert_eq!(told(SettingAction::Audit), Some(false));
        assert_eq!(told(SettingAction::Deny), Some(true));
        assert_eq!(told(SettingAction::Allow), None);
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
        resolution.banned_files().map(|(_, path)| path).collect()
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
        assert_eq!(entry.action, blocker_common::Action::Deny.wire());
        assert_eq!(resolution.matches.len(), 2);
        assert_eq!(resolution.unresolved.len(), 1);
        assert_eq!(resolution.unresolved[0].via, Via::Path(missing));
        assert!(resolution.unresolved[0].reason.contains("No such file"));
    }

    #[test]
    fn a_path_through_a_file_is_gone_not_undecided() {
        let dir = tempfile::tempdir().unwrap();
        let not_a_directory = dir.path().join("file");
        write(&not_a_directory, b"x", 0o644);
        let resolution = resolve_rules(
            vec![rule(
                "r",
                Action::Deny,
                Identifiers {
                    paths: vec![not_a_directory.join("banned")],
                    path_prefixes: vec![not_a_directory.join("tree")],
                    ..Identifiers::default()
                },
            )],
            None,
        );
        assert_eq!(
            resolution.unresolved.len(),
            2,
            "{:?}",
            resolution.unresolved
        );
        assert!(
            resolution.undecided.is_empty(),
            "{:?}",
            resolution.undecided
        );
    }

    #[test]
    fn entries_of_undecided_rules_stay_and_take_the_rules_action() {
        let dir = tempfile::tempdir().unwrap();
        let undecided_file = dir.path().join("undecided");
        let gone_file = dir.path().join("gone");
        write(&undecided_file, b"x", 0o755);
        write(&gone_file, b"y", 0o755);
        let rules = |action| {
            vec![
                rule("undecided", action, paths(&[&undecided_file])),
                rule("gone", Action::Deny, paths(&[&gone_file])),
            ]
        };
        let installed = resolve_rules(rules(Action::Deny), None);
        assert_eq!(installed.entries.len(), 2);
        let undecided_key = std::fs::metadata(&undecided_file).unwrap().ino();
        std::fs::remove_file(&undecided_file).unwrap();
        std::fs::remove_file(&gone_file).unwrap();

        // Both files are gone, but the first rule's lookup is taken as failed (as with EMFILE).
        let mut fresh = resolve_rules(rules(Action::Audit), None);
        assert!(fresh.entries.is_empty());
        let rule_id = fresh.rules[0].rule_id;
        fresh.undecided.push(Undecided {
            rule: "undecided".to_owned(),
            rule_id,
            via: Via::Path(undecided_file.clone()),
            reason: "EMFILE".to_owned(),
        });
        assert_eq!(fresh.keep_undecided(&installed), 1);
        let (key, entry) = fresh.entries.iter().next().unwrap();
        assert_eq!(fresh.entries.len(), 1);
        assert_eq!(key.ino, undecided_key);
        assert_eq!(entry.rule_id, rule_id);
        assert_eq!(entry.action, blocker_common::Action::Audit.wire());
        assert_eq!(fresh.path_of(key).unwrap(), undecided_file);

        // A decided resolution keeps nothing.
        let mut decided = resolve_rules(rules(Action::Deny), None);
        assert_eq!(decided.keep_undecided(&installed), 0);
        assert!(decided.entries.is_empty());
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
            let (_, entry) = resolution.entries.iter().next().unwrap();
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
    fn allow_rules_fill_the_allowed_map_and_a_ban_wins() {
        let dir = tempfile::tempdir().unwrap();
        let (allowed, banned) = (dir.path().join("allowed"), dir.path().join("banned"));
        write(&allowed, b"a", 0o755);
        write(&banned, b"b", 0o755);
        let hash = sha2::Sha256::digest(b"a").into();
        let resolution = resolve_rules(
            vec![
                rule("allow", Action::Allow, paths(&[&allowed, &banned])),
                rule("ban", Action::Audit, paths(&[&banned])),
                rule(
                    "allow-content",
                    Action::Allow,
                    Identifiers {
                        sha256: vec![hash],
                        ..Identifiers::default()
                    },
                ),
            ],
            None,
        );
        let key = |path: &Path| crate::identity::FileIdentity::of_path(path).unwrap().key;
        assert_eq!(banned_paths(&resolution), std::slice::from_ref(&banned));
        let entry = resolution.allowed.get(&key(&allowed)).unwrap();
        assert_eq!(resolution.own_rule(entry.rule_id).id, "allow");
        assert_eq!(entry.action, blocker_common::Action::Allow.wire());
        assert!(
            !resolution.allowed.contains_key(&key(&banned)),
            "a ban wins"
        );
        assert!(resolution.hashes.is_empty(), "allowed contents are no bans");
        // The safety net always runs.
        let sh = key(Path::new("/bin/sh"));
        assert!(resolution.allowed.contains_key(&sh));
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
    fn without_content_rules_the_scan_reads_only_files_named_like_appimages() {
        let dir = tempfile::tempdir().unwrap();
        write(
            &dir.path().join("home/bob/WeChat-4.0.AppImage"),
            b"ai",
            0o755,
        );
        write(&dir.path().join("usr/bin/tool"), b"tool", 0o755);
        write(&dir.path().join("usr/lib/libx.so.1"), b"so", 0o644);
        let options = ScanOptions {
            roots: vec![dir.path().to_owned()],
            cache_file: None,
            progress: false,
        };
        let appimage = rule(
            "appimage",
            Action::Deny,
            Identifiers {
                appimage: vec![AppImage {
                    name: "WeChat-*.AppImage".to_owned(),
                    sha256: Vec::new(),
                }],
                ..Identifiers::default()
            },
        );
        let by_name = Policy {
            policies: Vec::new(),
            rules: vec![appimage.clone()],
        };
        let report = scan_where(&options, u64::MAX, &scan_wants(&by_name));
        assert_eq!(report.stats.read, 1);
        let resolution = resolve(&by_name, &SourceRoots::default(), Some(&report));
        assert_eq!(
            banned_paths(&resolution),
            [dir.path().join("home/bob/WeChat-4.0.AppImage")]
        );

        // A content rule can name any file: every candidate is read.
        let content = rule(
            "content",
            Action::Deny,
            Identifiers {
                sha256: vec![[7; 32]],
                ..Identifiers::default()
            },
        );
        let with_content = Policy {
            policies: Vec::new(),
            rules: vec![appimage, content],
        };
        let report = scan_where(&options, u64::MAX, &scan_wants(&with_content));
        assert_eq!(report.stats.read, 3);
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
        let report = scan(
            &ScanOptions {
                roots: vec![dir.path().to_owned()],
                cache_file: None,
                progress: false,
            },
            u64::MAX,
        );
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
        // Events about these name the hash each was found by, once the matches are gone too.
        let mut resolution = resolution;
        resolution.forget_matches();
        let banned: Vec<_> = resolution.banned_files().collect();
        for (key, path) in banned {
            let by_hash = !path.ends_with("WeChat-4.0.AppImage");
            assert_eq!(
                resolution.banned_hash_of(&key),
                by_hash.then_some(&banned_hash),
                "{path:?}"
            );
        }
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
    fn files_users_make_take_no_more_than_their_share_of_the_map() {
        let dir = tempfile::tempdir().unwrap();
        let named = dir.path().join("named");
        write(&named, b"x", 0o755);
        let policy = Policy {
            policies: Vec::new(),
            rules: vec![rule("r", Action::Deny, paths(&[&named]))],
        };
        let budget = Budget {
            capacity: 5,
            users: 3,
            per_user: 2,
        };
        let mut resolution = resolve_within(&policy, &SourceRoots::default(), None, budget);
        assert_eq!(resolution.entries.len(), 1);
        let rule_id = resolution.rules[0].rule_id;
        let seen = |ino: u64, owner: u32| HashedFile {
            path: PathBuf::from(format!("/home/u/WeChatLinux_{ino}.AppImage")),
            identity: FileIdentity {
                key: FileKey::new(1, ino),
                generation: None,
                owner,
            },
            sha256: [0; 32],
        };
        let via = || Via::AppImage("WeChatLinux_*.AppImage".to_owned());
        let flood = (100..110)
            .filter(|&ino| resolution.add_seen(rule_id, via(), &seen(ino, 1000)))
            .count();
        assert_eq!(flood, 2);
        // Another user still has room; so has root, up to the capacity.
        assert!(resolution.add_seen(rule_id, via(), &seen(200, 1001)));
        assert!(
            !resolution.add_seen(rule_id, via(), &seen(201, 1001)),
            "the users' share is full"
        );
        assert!(resolution.add_seen(rule_id, via(), &seen(300, 0)));
        assert!(
            !resolution.add_seen(rule_id, via(), &seen(301, 0)),
            "the map is full"
        );
        assert!(
            !resolution.add_seen(rule_id, via(), &seen(300, 0)),
            "already banned"
        );
        assert_eq!(resolution.entries.len(), 5);
        assert_eq!(resolution.overflow().over_user_limits, 9);
        assert_eq!(resolution.overflow().over_capacity, 1);
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
