//! Policy files: TOML documents naming what may not run. Parsing checks everything it can
//! without touching the filesystem beyond reading the files, and reports every problem with its
//! file, line, column and field.

use std::{
    collections::{BTreeSet, HashMap},
    fmt,
    ops::Range,
    path::{Path, PathBuf},
};

use blocker_common::{FileKey, DEFAULT_HASH_LIMIT_MIB};
use globset::{Glob, GlobBuilder, GlobMatcher};
use serde::Deserialize;
use toml::Spanned;

use crate::{
    critical::{CriticalFile, Guard},
    escape::escaped,
    scan::{parse_sha256, Sha256},
    sources::{validate_flatpak_id, validate_package_name, validate_snap_name},
};

/// Where something was written in a policy file (1-based line and column).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Location {
    pub file: PathBuf,
    pub line: usize,
    pub column: usize,
}

/// Where each line of one file starts, so that turning a byte offset into a line and column
/// costs a binary search rather than a count from the start of the file (a policy of many
/// thousand rules has as many locations).
struct LineStarts<'a> {
    file: &'a Path,
    source: &'a str,
    /// Byte offset of the first character of each line; the first is 0.
    starts: Vec<usize>,
}

impl<'a> LineStarts<'a> {
    fn new(file: &'a Path, source: &'a str) -> Self {
        let starts = std::iter::once(0)
            .chain(source.match_indices('\n').map(|(newline, _)| newline + 1))
            .collect();
        Self {
            file,
            source,
            starts,
        }
    }

    fn location(&self, offset: usize) -> Location {
        let offset = offset.min(self.source.len());
        // The last line starting at or before `offset`.
        let line = self.starts.partition_point(|&start| start <= offset);
        let line_start = self.starts[line - 1];
        Location {
            file: self.file.to_owned(),
            line,
            column: self.source[line_start..offset].chars().count() + 1,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", escaped(&self.file), self.line, self.column)
    }
}

/// One problem in one policy file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyError {
    pub location: Location,
    /// The field in TOML path notation (`rule[1].action`); empty when it is the file itself.
    pub field: String,
    pub message: String,
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.field.is_empty() {
            write!(f, "{}: {}", self.location, self.message)
        } else {
            write!(f, "{}: {}: {}", self.location, self.field, self.message)
        }
    }
}

/// Every problem found in a policy directory; nothing of it may be applied.
#[derive(Debug)]
pub struct PolicyErrors(pub Vec<PolicyError>);

impl fmt::Display for PolicyErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (index, error) in self.0.iter().enumerate() {
            if index > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for PolicyErrors {}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Rules act as written.
    #[default]
    Enforce,
    /// Every deny becomes an audit: see what a policy would block before enforcing it.
    Monitor,
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        })
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// Let the exec happen and report it.
    Audit,
    /// Refuse the exec and report it.
    #[default]
    Deny,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Deny => "deny",
            Action::Audit => "audit",
        }
    }

    pub fn kernel_value(self) -> u32 {
        match self {
            Action::Deny => blocker_common::Action::Deny.wire(),
            Action::Audit => blocker_common::Action::Audit.wire(),
        }
    }
}

/// A rule as applied: the policy's mode already folded into `action`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rule {
    pub id: String,
    pub description: Option<String>,
    pub reason: Option<String>,
    pub action: Action,
    pub identifiers: Identifiers,
    /// Critical files (see [`crate::critical`]) the rule may ban all the same, as written.
    pub ban_critical_files: Vec<PathBuf>,
    /// Name of the policy the rule belongs to.
    pub policy: String,
    pub location: Location,
}

/// Every way a rule can name files, validated.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Identifiers {
    /// File contents, found by scanning the scan roots.
    pub sha256: Vec<Sha256>,
    /// Exact files (symlinks followed).
    pub paths: Vec<PathBuf>,
    /// Every executable file below these directories.
    pub path_prefixes: Vec<PathBuf>,
    /// Absolute glob patterns (`*` stays within a path component, `**` crosses them).
    pub globs: Vec<String>,
    /// Installed distribution packages.
    pub packages: Vec<String>,
    /// Flatpak application ids.
    pub flatpak: Vec<String>,
    /// Snap names.
    pub snap: Vec<String>,
    pub appimage: Vec<AppImage>,
}

impl Identifiers {
    pub fn is_empty(&self) -> bool {
        self.sha256.is_empty()
            && self.paths.is_empty()
            && self.path_prefixes.is_empty()
            && self.globs.is_empty()
            && self.packages.is_empty()
            && self.flatpak.is_empty()
            && self.snap.is_empty()
            && self.appimage.is_empty()
    }

    /// Whether resolving these needs the content scan of the scan roots.
    pub fn needs_scan(&self) -> bool {
        !self.sha256.is_empty() || !self.appimage.is_empty()
    }
}

/// AppImages found under the scan roots by file name, confirmed by content when hashes are
/// given.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AppImage {
    /// A glob for the file name alone (`WeChat-*.AppImage`).
    pub name: String,
    /// If not empty, only files with one of these contents.
    pub sha256: Vec<Sha256>,
}

/// What a policy-wide setting does with the execs it covers: `fileless` with a file that has no
/// name on disk (`nlink == 0`: a memfd from `memfd_create` + `fexecve`, an `O_TMPFILE`, a
/// deleted file), which no path or package rule can name; `unhashable` with a file whose content
/// the kernel could not hash while content rules are in force (larger than `hash_limit_mib`, or
/// the hash failed).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SettingAction {
    #[default]
    Allow,
    Audit,
    Deny,
}

impl SettingAction {
    pub fn kernel_value(self) -> u32 {
        match self {
            SettingAction::Allow => blocker_common::Action::Allow.wire(),
            SettingAction::Audit => blocker_common::Action::Audit.wire(),
            SettingAction::Deny => blocker_common::Action::Deny.wire(),
        }
    }
}

/// One policy file's own settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyHeader {
    pub file: PathBuf,
    pub name: String,
    pub description: Option<String>,
    pub mode: Mode,
    /// As written; [`Policy::fileless`] is what applies.
    pub fileless: Option<SettingAction>,
    /// As written; [`Policy::unhashable`] is what applies.
    pub unhashable: Option<SettingAction>,
    /// As written; [`Policy::hash_limit_bytes`] is what applies.
    pub hash_limit_mib: Option<u32>,
}

/// All rules of a policy directory, in file order then rule order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub policies: Vec<PolicyHeader>,
    pub rules: Vec<Rule>,
}

impl Policy {
    /// The strictest fileless setting of all files (a monitor-mode file's deny counts as audit),
    /// with the name of the policy that set it; allow where none does.
    pub fn fileless(&self) -> (SettingAction, Option<&str>) {
        self.strictest(|header| header.fileless, SettingAction::Allow)
    }

    /// The strictest unhashable setting of all files, as [`Policy::fileless`]; audit where none
    /// says: an exec whose content no rule could judge is always worth a record.
    pub fn unhashable(&self) -> (SettingAction, Option<&str>) {
        self.strictest(|header| header.unhashable, SettingAction::Audit)
    }

    fn strictest(
        &self,
        setting: impl Fn(&PolicyHeader) -> Option<SettingAction>,
        default: SettingAction,
    ) -> (SettingAction, Option<&str>) {
        self.policies
            .iter()
            .filter_map(|header| {
                let applied = match (header.mode, setting(header)?) {
                    (Mode::Monitor, SettingAction::Deny) => SettingAction::Audit,
                    (_, written) => written,
                };
                Some((applied, Some(header.name.as_str())))
            })
            .max_by_key(|(setting, _)| *setting)
            .unwrap_or((default, None))
    }

    /// Files larger than this many MiB are not hashed: the smallest `hash_limit_mib` of all
    /// files, else [`DEFAULT_HASH_LIMIT_MIB`].
    pub fn hash_limit_mib(&self) -> u32 {
        self.policies
            .iter()
            .filter_map(|header| header.hash_limit_mib)
            .min()
            .unwrap_or(DEFAULT_HASH_LIMIT_MIB)
    }

    /// [`Policy::hash_limit_mib`] in bytes.
    pub fn hash_limit_bytes(&self) -> u64 {
        u64::from(self.hash_limit_mib()) << 20
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    name: String,
    description: Option<String>,
    #[serde(default)]
    mode: Mode,
    fileless: Option<SettingAction>,
    unhashable: Option<SettingAction>,
    hash_limit_mib: Option<Spanned<i64>>,
    #[serde(default)]
    rule: Vec<RuleSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSpec {
    id: Spanned<String>,
    description: Option<String>,
    reason: Option<String>,
    #[serde(default)]
    action: Action,
    #[serde(default)]
    sha256: Vec<Spanned<String>>,
    #[serde(default)]
    paths: Vec<Spanned<String>>,
    #[serde(default)]
    path_prefixes: Vec<Spanned<String>>,
    #[serde(default)]
    globs: Vec<Spanned<String>>,
    #[serde(default)]
    packages: Vec<Spanned<String>>,
    #[serde(default)]
    flatpak: Vec<Spanned<String>>,
    #[serde(default)]
    snap: Vec<Spanned<String>>,
    #[serde(default)]
    appimage: Vec<AppImageSpec>,
    #[serde(default)]
    ban_critical_files: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AppImageSpec {
    name: Spanned<String>,
    #[serde(default)]
    sha256: Vec<Spanned<String>>,
}

/// Validates one rule's fields, collecting located errors.
struct RuleChecker<'a> {
    lines: &'a LineStarts<'a>,
    /// Where the piece of the file the rule was parsed from starts: its spans count from there.
    base: usize,
    errors: &'a mut Vec<RuleError>,
}

/// A problem in one rule, found before the rule's place among its file's rules is known.
struct RuleError {
    location: Location,
    /// The field below `rule[N]` (`.paths[0]`), empty for the rule itself.
    field: String,
    message: String,
}

impl RuleError {
    fn in_rule(self, index: usize) -> PolicyError {
        PolicyError {
            location: self.location,
            field: format!("rule[{index}]{}", self.field),
            message: self.message,
        }
    }
}

impl RuleChecker<'_> {
    fn error(&mut self, span: Range<usize>, field: String, message: String) {
        self.errors.push(RuleError {
            location: self.lines.location(self.base + span.start),
            field,
            message,
        });
    }

    /// Checks every element of the list `field`, keeping the valid ones.
    fn list<T>(
        &mut self,
        field: &str,
        items: &[Spanned<String>],
        mut check: impl FnMut(&str) -> Result<T, String>,
    ) -> Vec<T> {
        let mut valid = Vec::new();
        for (index, item) in items.iter().enumerate() {
            match check(item.get_ref()) {
                Ok(value) => valid.push(value),
                Err(message) => {
                    let field = format!(".{field}[{index}]");
                    self.error(item.span(), field, message);
                }
            }
        }
        valid
    }

    /// The rule's `ban_critical_files`: as written, and the critical files they are now.
    fn critical_overrides(&mut self, spec: &RuleSpec, guard: &Guard) -> (Vec<PathBuf>, Overrides) {
        let mut overrides = Overrides::new();
        let written = self.list("ban_critical_files", &spec.ban_critical_files, |text| {
            let path = absolute_path(text)?;
            match guard.named_by_path(&path) {
                Some(file) if file.overridable => {
                    overrides.insert(file.key);
                    Ok(path)
                }
                Some(file) => Err(format!(
                    "`{}` names {}, which no rule can ban: {}",
                    escaped(text),
                    shown_critical(file),
                    file.why
                )),
                // Missing here: the policy may be for machines that have it.
                None if !path.exists() => Ok(path),
                None => Err(format!(
                    "`{}` is not a critical file: list here only the critical files this rule \
                     must ban",
                    escaped(text)
                )),
            }
        });
        (written, overrides)
    }

    fn identifiers(
        &mut self,
        spec: &RuleSpec,
        guard: &mut Guard,
        overrides: &Overrides,
    ) -> Identifiers {
        let mut appimage = Vec::new();
        for (index, entry) in spec.appimage.iter().enumerate() {
            let field = format!("appimage[{index}]");
            let name = match file_name_glob(entry.name.get_ref()) {
                Ok(name) => Some(name),
                Err(message) => {
                    let field = format!(".{field}.name");
                    self.error(entry.name.span(), field, message);
                    None
                }
            };
            let sha256 = self.list(&format!("{field}.sha256"), &entry.sha256, parse_sha256);
            if let Some(name) = name {
                appimage.push(AppImage { name, sha256 });
            }
        }
        Identifiers {
            sha256: self.list("sha256", &spec.sha256, |text| {
                let sha256 = parse_sha256(text)?;
                if let Some(file) = guard.with_content(&sha256) {
                    refuse_unless_overridden(file, overrides, "this content")?;
                }
                Ok(sha256)
            }),
            paths: self.list("paths", &spec.paths, |text| {
                let path = absolute_path(text)?;
                if let Some(file) = guard.named_by_path(&path) {
                    refuse_unless_overridden(file, overrides, &format!("`{}`", escaped(text)))?;
                }
                Ok(path)
            }),
            path_prefixes: self.list("path_prefixes", &spec.path_prefixes, |text| {
                path_prefix(text, guard, overrides)
            }),
            globs: self.list("globs", &spec.globs, |pattern| {
                path_glob(pattern, guard, overrides)
            }),
            packages: self.list("packages", &spec.packages, |name| {
                validate_package_name(name).map(|()| name.to_owned())
            }),
            flatpak: self.list("flatpak", &spec.flatpak, |id| {
                validate_flatpak_id(id).map(|()| id.to_owned())
            }),
            snap: self.list("snap", &spec.snap, |name| {
                validate_snap_name(name).map(|()| name.to_owned())
            }),
            appimage,
        }
    }
}

/// The critical files a rule's `ban_critical_files` lets it ban, by identity.
type Overrides = BTreeSet<FileKey>;

/// An error unless the rule's `ban_critical_files` names `file` and it may be banned at all.
fn refuse_unless_overridden(
    file: &CriticalFile,
    overrides: &Overrides,
    what: &str,
) -> Result<(), String> {
    if file.overridable && overrides.contains(&file.key) {
        return Ok(());
    }
    let file_named = shown_critical(file);
    let why = file.why;
    Err(if file.overridable {
        format!(
            "{what} would ban {file_named}, a critical file ({why}): if this rule must ban it, \
             name it in the rule's `ban_critical_files`"
        )
    } else {
        format!("{what} would ban {file_named}, which no rule can ban ({why})")
    })
}

/// A critical file as listed, with what it resolves to when that differs.
fn shown_critical(file: &CriticalFile) -> String {
    if file.path == file.resolved {
        escaped(&file.path).to_string()
    } else {
        format!("{} ({})", escaped(&file.path), escaped(&file.resolved))
    }
}

fn no_nul(text: &str) -> Result<(), String> {
    if text.contains('\0') {
        Err(format!(
            "`{}` contains a NUL character, which no path can",
            escaped(text)
        ))
    } else {
        Ok(())
    }
}

fn absolute_path(text: &str) -> Result<PathBuf, String> {
    no_nul(text)?;
    if text.starts_with('/') {
        Ok(PathBuf::from(text))
    } else {
        Err(format!("`{}` is not an absolute path", escaped(text)))
    }
}

/// A directory whose executables a rule bans: never `/` however written, nor one holding a
/// critical file the rule does not name in `ban_critical_files`.
fn path_prefix(text: &str, guard: &mut Guard, overrides: &Overrides) -> Result<PathBuf, String> {
    let path = absolute_path(text)?;
    let resolved = guard.resolve(&path);
    if resolved.parent().is_none() {
        let resolves = if path.parent().is_none() {
            ""
        } else {
            " (it resolves to `/`)"
        };
        return Err(format!(
            "`{}`{resolves} would ban every program on the machine",
            escaped(text)
        ));
    }
    let below: Vec<&CriticalFile> = guard
        .below(&path, &resolved)
        .map(|(file, _)| file)
        .collect();
    for file in below {
        refuse_unless_overridden(file, overrides, &format!("`{}`", escaped(text)))?;
    }
    Ok(path)
}

/// Compiles a glob the way blocker matches it: `*` and `?` stay within one path component.
pub fn compile_glob(pattern: &str) -> Result<GlobMatcher, String> {
    parse_glob(pattern).map(|glob| glob.compile_matcher())
}

/// Parses a glob, which finds every error in it; compiling its matcher costs far more, so
/// checking a policy does that only for globs that may match a critical file.
fn parse_glob(pattern: &str) -> Result<Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|error| error.kind().to_string())
}

/// The characters of a glob's classes (`[a-z]`), alternates (`{a,b}`) and escapes: the only
/// syntax globset can find errors in.
const GLOB_SYNTAX_THAT_CAN_FAIL: [char; 5] = ['[', ']', '{', '}', '\\'];

/// Finds every error in a glob. Parsing one costs about as much as the rest of a rule's checks,
/// and generated policies hold many globs of only literals, `*`, `?` and `**`, which cannot be
/// wrong: only the others are parsed.
fn check_glob(pattern: &str) -> Result<(), String> {
    if pattern.contains(GLOB_SYNTAX_THAT_CAN_FAIL) {
        parse_glob(pattern)?;
    }
    Ok(())
}

/// The directory a glob's matches all lie under: its components before the first wildcard.
pub fn glob_base(pattern: &str) -> PathBuf {
    let mut base = PathBuf::from("/");
    for component in pattern.split('/').filter(|c| !c.is_empty()) {
        if component.contains(['*', '?', '[', '{', '\\']) {
            break;
        }
        base.push(component);
    }
    base
}

/// A glob of files a rule bans: its base never `/` however written, and matching no critical
/// file the rule does not name in `ban_critical_files`.
fn path_glob(pattern: &str, guard: &mut Guard, overrides: &Overrides) -> Result<String, String> {
    no_nul(pattern)?;
    let shown = escaped(pattern);
    if !pattern.starts_with('/') {
        return Err(format!(
            "`{shown}` is not absolute: globs are matched against absolute paths, so it can never match"
        ));
    }
    if pattern.ends_with('/') {
        return Err(format!(
            "`{shown}` ends with `/`: it names directories, which are never executed"
        ));
    }
    if pattern
        .split('/')
        .skip(1)
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "`{shown}` has an empty, `.` or `..` component: paths are matched in normal form, so it can never match"
        ));
    }
    check_glob(pattern)?;
    let base = glob_base(pattern);
    let resolved = guard.resolve(&base);
    if resolved.parent().is_none() {
        let resolves = if base.parent().is_none() {
            String::new()
        } else {
            format!(" once `{}` is resolved to `/`", escaped(&base))
        };
        return Err(format!(
            "`{shown}` starts with a wildcard{resolves}: begin it with a directory so blocker does not walk the whole filesystem"
        ));
    }
    let below: Vec<(&CriticalFile, PathBuf)> = guard.below(&base, &resolved).collect();
    let matcher = (!below.is_empty())
        .then(|| compile_glob(pattern))
        .transpose()?;
    let matched = below
        .into_iter()
        .filter(|(_, walked_as)| matcher.as_ref().is_some_and(|m| m.is_match(walked_as)))
        .map(|(file, _)| file);
    for file in matched {
        refuse_unless_overridden(file, overrides, &format!("`{shown}`"))?;
    }
    Ok(pattern.to_owned())
}

fn file_name_glob(pattern: &str) -> Result<String, String> {
    no_nul(pattern)?;
    if pattern.is_empty() || pattern.contains('/') {
        return Err(format!(
            "`{}` must be a file name pattern without `/`",
            escaped(pattern)
        ));
    }
    check_glob(pattern)?;
    Ok(pattern.to_owned())
}

/// Reads every `*.toml` file in `dir` (sorted by name, hidden files skipped).
pub fn load_dir(dir: &Path) -> anyhow::Result<Policy> {
    use anyhow::Context;
    let mut sources = Vec::new();
    for file in policy_files(dir)? {
        let source = std::fs::read_to_string(&file)
            .with_context(|| format!("reading policy file {}", escaped(&file)))?;
        sources.push((file, source));
    }
    Ok(parse_sources(&sources)?)
}

/// The policy files of `dir` (`*.toml`, not hidden), sorted; an error if there are none.
pub fn policy_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    use anyhow::Context;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("reading policy directory {}", escaped(&dir)))?
    {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .is_some_and(|name| name.to_string_lossy().starts_with('.'));
        if !hidden && path.extension().is_some_and(|ext| ext == "toml") && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    anyhow::ensure!(
        !files.is_empty(),
        "no policy files (*.toml) in {}",
        escaped(&dir)
    );
    Ok(files)
}

/// Parses policy files given as `(path, contents)`; rule ids must be unique across all of them,
/// and no rule may ban `/` or a critical file of this machine (see [`crate::critical`]).
pub fn parse_sources(sources: &[(PathBuf, String)]) -> Result<Policy, PolicyErrors> {
    parse_sources_guarded(sources, &Guard::of_this_machine())
}

/// [`parse_sources`], with the critical files `guard` knows.
pub(crate) fn parse_sources_guarded(
    sources: &[(PathBuf, String)],
    guard: &Guard,
) -> Result<Policy, PolicyErrors> {
    let mut errors = Vec::new();
    let mut policy = Policy::default();
    // Rule ids seen so far, with the position in `policy.rules` of the rule that defined each.
    let mut first_definition: HashMap<String, usize> = HashMap::new();
    for (file, source) in sources {
        let lines = LineStarts::new(file, source);
        let check_piece =
            |header: &PolicyFile, base: usize, rules: Vec<RuleSpec>, guard: &mut Guard| {
                rules
                    .into_iter()
                    .map(|spec| check_rule(&lines, base, spec, header, guard))
                    .collect::<Vec<_>>()
            };
        let (parsed, pieces) = match parse_file(source, PIECE_BYTES, guard, &check_piece) {
            Ok(parsed) => parsed,
            Err((base, error)) => {
                errors.push(deserialize_error(&lines, base, &error));
                continue;
            }
        };
        let count = pieces.iter().map(Vec::len).sum();
        first_definition.reserve(count);
        policy.rules.reserve(count);
        for (index, checked) in pieces.into_iter().flatten().enumerate() {
            let CheckedRule {
                rule,
                id_valid,
                errors: rule_errors,
            } = checked;
            if id_valid {
                if let Some(&first) = first_definition.get(&rule.id) {
                    errors.push(PolicyError {
                        location: rule.location.clone(),
                        field: format!("rule[{index}].id"),
                        message: format!(
                            "duplicate rule id `{}`, first defined at {}",
                            escaped(&rule.id),
                            policy.rules[first].location
                        ),
                    });
                } else {
                    first_definition.insert(rule.id.clone(), policy.rules.len());
                }
            }
            errors.extend(rule_errors.into_iter().map(|error| error.in_rule(index)));
            policy.rules.push(rule);
        }
        let hash_limit_mib = parsed.hash_limit_mib.and_then(|limit| {
            let valid = u32::try_from(*limit.get_ref()).ok().filter(|&mib| mib >= 1);
            if valid.is_none() {
                errors.push(PolicyError {
                    location: lines.location(limit.span().start),
                    field: "hash_limit_mib".to_owned(),
                    message: format!(
                        "{} is not a size in MiB from 1 to {}",
                        limit.get_ref(),
                        u32::MAX
                    ),
                });
            }
            valid
        });
        policy.policies.push(PolicyHeader {
            file: file.clone(),
            name: parsed.name,
            description: parsed.description,
            mode: parsed.mode,
            fileless: parsed.fileless,
            unhashable: parsed.unhashable,
            hash_limit_mib,
        });
    }
    if errors.is_empty() {
        Ok(policy)
    } else {
        Err(PolicyErrors(errors))
    }
}

/// The rules of a policy file after the piece it starts with, as [`PolicyFile::rule`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct MoreRules {
    rule: Vec<RuleSpec>,
}

/// A parse error, with the byte offset in its file that its span counts from.
type ParseError = (usize, toml::de::Error);

/// Roughly how many bytes of a policy file are parsed as one piece.
const PIECE_BYTES: usize = 1 << 18;

/// What is done with the rules of one piece of a file, given the file's header, the offset the
/// rules' spans count from, and a guard of the thread's own.
type PieceCheck<'a, T> = dyn Fn(&PolicyFile, usize, Vec<RuleSpec>, &mut Guard) -> T + Sync + 'a;

/// Parses a policy file and checks its rules: its header and what `check` made of each piece's
/// rules, in order, or an error (of several, the first piece's first, which one parse of the
/// whole may not have reported first). A large file is cut into pieces that are documents of
/// their own, parsed and checked on every CPU: a generated policy of hundreds of thousands of
/// rules then takes a fraction of the time and memory that one parse of the whole needs.
fn parse_file<T: Send>(
    source: &str,
    piece_bytes: usize,
    guard: &Guard,
    check: &PieceCheck<'_, T>,
) -> Result<(PolicyFile, Vec<T>), ParseError> {
    let pieces = pieces(source, piece_bytes);
    let (first, more) = pieces.split_first().unwrap_or((&(0..0), &[]));
    let mut header: PolicyFile =
        toml::from_str(&source[first.clone()]).map_err(|error| (0, error))?;
    let first_rules = std::mem::take(&mut header.rule);
    let threads = std::thread::available_parallelism().map_or(1, usize::from);
    let per_thread = more.len().div_ceil(threads).max(1);
    let shared = &header;
    let parsed: Vec<Vec<Result<T, ParseError>>> = std::thread::scope(|scope| {
        let workers: Vec<_> = more
            .chunks(per_thread)
            .map(|group| {
                let mut guard = guard.fork();
                scope.spawn(move || {
                    let mut checked = Vec::new();
                    for piece in group {
                        match toml::from_str::<MoreRules>(&source[piece.clone()]) {
                            Ok(more) => {
                                checked.push(Ok(check(shared, piece.start, more.rule, &mut guard)))
                            }
                            Err(error) => {
                                checked.push(Err((piece.start, error)));
                                break;
                            }
                        }
                    }
                    checked
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|worker| {
                worker
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            })
            .collect()
    });
    let mut checked = vec![check(shared, 0, first_rules, &mut guard.fork())];
    for piece in parsed.into_iter().flatten() {
        checked.push(piece?);
    }
    Ok((header, checked))
}

/// A rule as applied, with its problems: all but a duplicate id, which only the rules of every
/// file together show.
struct CheckedRule {
    rule: Rule,
    /// Whether the id may be checked for duplicates (an invalid one is an error already).
    id_valid: bool,
    errors: Vec<RuleError>,
}

/// Checks one rule of a file, whose spans count from `base`.
fn check_rule(
    lines: &LineStarts,
    base: usize,
    mut spec: RuleSpec,
    header: &PolicyFile,
    guard: &mut Guard,
) -> CheckedRule {
    let mut errors = Vec::new();
    let location = lines.location(base + spec.id.span().start);
    let id = std::mem::take(spec.id.get_mut());
    let invalid_id = invalid_rule_id(&id);
    let id_valid = invalid_id.is_none();
    if let Some(problem) = invalid_id {
        errors.push(RuleError {
            location: location.clone(),
            field: ".id".to_owned(),
            message: problem,
        });
    }
    let mut checker = RuleChecker {
        lines,
        base,
        errors: &mut errors,
    };
    let (ban_critical_files, overrides) = checker.critical_overrides(&spec, guard);
    let identifiers = checker.identifiers(&spec, guard, &overrides);
    if identifiers.is_empty() && !lists_any_identifier(&spec) {
        errors.push(RuleError {
            location: location.clone(),
            field: String::new(),
            message: format!(
                "rule `{}` names nothing: give at least one of {}",
                escaped(&id),
                IDENTIFIER_FIELDS.join(", ")
            ),
        });
    }
    let action = match header.mode {
        Mode::Enforce => spec.action,
        Mode::Monitor => Action::Audit,
    };
    CheckedRule {
        rule: Rule {
            id,
            description: spec.description,
            reason: spec.reason,
            action,
            identifiers,
            ban_critical_files,
            policy: header.name.clone(),
            location,
        },
        id_valid,
        errors,
    }
}

/// Cuts a policy file into pieces of about `piece_bytes`, each after the first starting at a
/// line `[[rule]]`. Outside a multi-line string such a line is a rule's header or an error
/// wherever it stands, and the first piece holds the file's header and its first rule, so each
/// piece parses as it would within the whole: no later piece can define anything but rules,
/// which `MoreRules` alone accepts. A file with multi-line strings is one piece.
fn pieces(source: &str, piece_bytes: usize) -> Vec<Range<usize>> {
    const RULE_HEADER: &str = "[[rule]]";
    let is_rule_header = |line: &str| {
        line.trim_start_matches([' ', '\t'])
            .starts_with(RULE_HEADER)
    };
    let mut starts = vec![0];
    if !source.contains("\"\"\"") && !source.contains("'''") {
        let mut seen_a_rule = is_rule_header(source);
        for (newline, _) in source.match_indices('\n') {
            let line = newline + 1;
            if !is_rule_header(&source[line..]) {
                continue;
            }
            let last = starts[starts.len() - 1];
            if seen_a_rule && line - last >= piece_bytes {
                starts.push(line);
            }
            seen_a_rule = true;
        }
    }
    let ends = starts.iter().skip(1).copied().chain([source.len()]);
    starts
        .iter()
        .zip(ends)
        .map(|(&start, end)| start..end)
        .collect()
}

/// The fields a rule names files with, as an error lists them.
const IDENTIFIER_FIELDS: [&str; 8] = [
    "`sha256`",
    "`paths`",
    "`path_prefixes`",
    "`globs`",
    "`packages`",
    "`flatpak`",
    "`snap`",
    "`appimage`",
];

/// Whether the rule lists any identifier, valid or not (invalid ones are reported one by one).
fn lists_any_identifier(spec: &RuleSpec) -> bool {
    [
        &spec.sha256,
        &spec.paths,
        &spec.path_prefixes,
        &spec.globs,
        &spec.packages,
        &spec.flatpak,
        &spec.snap,
    ]
    .iter()
    .any(|list| !list.is_empty())
        || !spec.appimage.is_empty()
}

fn invalid_rule_id(id: &str) -> Option<String> {
    if id.is_empty() {
        return Some("rule id is empty".to_owned());
    }
    let allowed = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    (!id.chars().all(allowed)).then(|| {
        format!(
            "rule id `{}` may only contain ASCII letters, digits, `-`, `_` and `.`",
            escaped(id)
        )
    })
}

fn deserialize_error(lines: &LineStarts, base: usize, error: &toml::de::Error) -> PolicyError {
    let offset = base + error.span().map_or(0, |span| span.start);
    PolicyError {
        location: lines.location(offset),
        field: field_path_at(lines.source, offset),
        message: error.message().trim().to_owned(),
    }
}

/// The TOML path of the key that `offset` falls under, from the text alone: the nearest table
/// header above it (`[[rule]]` headers are numbered) and the key of its line or of the line that
/// opened the value it continues.
fn field_path_at(source: &str, offset: usize) -> String {
    let offset = offset.min(source.len());
    let line_start = source[..offset]
        .rfind('\n')
        .map_or(0, |newline| newline + 1);
    let line_end = source[offset..]
        .find('\n')
        .map_or(source.len(), |newline| offset + newline);
    let mut lines_up_to_offset: Vec<&str> = source[..line_start].lines().collect();
    lines_up_to_offset.push(&source[line_start..line_end]);

    let mut key = None;
    let mut table = String::new();
    for (distance, line) in lines_up_to_offset.iter().rev().enumerate() {
        let trimmed = line.trim_start();
        if trimmed.starts_with('[') && !(distance == 0 && key.is_some()) {
            let header_line = lines_up_to_offset.len() - 1 - distance;
            table = table_path(trimmed, &lines_up_to_offset[..header_line]);
            break;
        }
        if key.is_none() && !trimmed.starts_with('#') {
            if let Some((name, _)) = trimmed.split_once('=') {
                key = Some(name.trim().trim_matches('"').to_owned());
            }
        }
    }
    match (table.is_empty(), key) {
        (_, None) => table,
        (true, Some(key)) => key,
        (false, Some(key)) => format!("{table}.{key}"),
    }
}

/// `[[rule]]` → `rule[N]` where N counts the earlier `[[rule]]` headers; `[a.b]` → `a.b`.
fn table_path(header: &str, earlier_lines: &[&str]) -> String {
    let header = header.split('#').next().unwrap_or_default().trim();
    if let Some(name) = header.strip_prefix("[[").and_then(|h| h.strip_suffix("]]")) {
        let name = name.trim();
        let index = earlier_lines
            .iter()
            .filter(|line| {
                let line = line.trim();
                line.strip_prefix("[[")
                    .and_then(|h| h.split("]]").next())
                    .is_some_and(|h| h.trim() == name)
            })
            .count();
        format!("{name}[{index}]")
    } else {
        header
            .trim_matches(|c| c == '[' || c == ']')
            .trim()
            .to_owned()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(files: &[(&str, &str)]) -> Result<Policy, PolicyErrors> {
        let sources: Vec<_> = files
            .iter()
            .map(|(name, text)| (PathBuf::from(name), text.to_string()))
            .collect();
        parse_sources(&sources)
    }

    fn single_error(files: &[(&str, &str)]) -> String {
        let errors = parse(files).unwrap_err().0;
        assert_eq!(errors.len(), 1, "{errors:?}");
        errors[0].to_string()
    }

    const GOOD: &str = r#"
name = "ban"
description = "apps the ministry banned"

[[rule]]
id = "wechat"
reason = "banned on government devices"
paths = ["/opt/wechat/wechat", "/usr/bin/wechat"]

[[rule]]
id = "tool"
action = "audit"
paths = ["/usr/bin/tool"]
"#;

    #[test]
    fn parses_rules_in_order() {
        let policy = parse(&[("a.toml", GOOD)]).unwrap();
        assert_eq!(policy.rules.len(), 2);
        let wechat = &policy.rules[0];
        assert_eq!(wechat.id, "wechat");
        assert_eq!(wechat.action, Action::Deny);
        assert_eq!(wechat.policy, "ban");
        assert_eq!(
            wechat.reason.as_deref(),
            Some("banned on government devices")
        );
        assert_eq!(
            wechat.identifiers.paths,
            [
                PathBuf::from("/opt/wechat/wechat"),
                PathBuf::from("/usr/bin/wechat")
            ]
        );
        assert_eq!(wechat.location.line, 6);
        assert_eq!(policy.rules[1].action, Action::Audit);
    }

    #[test]
    fn monitor_mode_turns_denies_into_audits() {
        let monitored = GOOD.replace("name = \"ban\"", "name = \"ban\"\nmode = \"monitor\"");
        let policy = parse(&[("a.toml", &monitored)]).unwrap();
        assert!(policy.rules.iter().all(|rule| rule.action == Action::Audit));
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let text = "name = \"p\"\n[[rule]]\nid = \"a\"\npaths = [\"/x\"]\n\n[[rule]]\nid = \"b\"\npath = [\"/y\"]\n";
        assert_eq!(
            single_error(&[("p.toml", text)]),
            "p.toml:8:1: rule[1].path: unknown field `path`, expected one of `id`, `description`, \
             `reason`, `action`, `sha256`, `paths`, `path_prefixes`, `globs`, `packages`, `flatpak`, \
             `snap`, `appimage`, `ban_critical_files`"
        );
    }

    #[test]
    fn bad_action_names_the_field() {
        let text = "name = \"p\"\n[[rule]]\nid = \"a\"\naction = \"block\"\npaths = [\"/x\"]\n";
        let message = single_error(&[("p.toml", text)]);
        assert!(
            message.starts_with("p.toml:4:10: rule[0].action: unknown variant `block`"),
            "{message}"
        );
    }

    #[test]
    fn wrong_type_names_the_field() {
        let text = "name = \"p\"\n[[rule]]\nid = \"a\"\npaths = \"/x\"\n";
        let message = single_error(&[("p.toml", text)]);
        assert!(
            message.starts_with("p.toml:4:9: rule[0].paths: invalid type"),
            "{message}"
        );
    }

    #[test]
    fn errors_inside_multiline_arrays_name_the_array() {
        let text = "name = \"p\"\n[[rule]]\nid = \"a\"\npaths = [\n  \"/x\",\n  7,\n]\n";
        let message = single_error(&[("p.toml", text)]);
        assert!(
            message.starts_with("p.toml:6:3: rule[0].paths: invalid type"),
            "{message}"
        );
    }

    #[test]
    fn missing_name_is_reported() {
        let message = single_error(&[("p.toml", "[[rule]]\nid = \"a\"\npaths = [\"/x\"]\n")]);
        assert!(message.contains("missing field `name`"), "{message}");
    }

    #[test]
    fn syntax_errors_point_at_the_line() {
        let message = single_error(&[("p.toml", "name = \"p\"\n[[rule]]\nid = \"a\npaths = []\n")]);
        assert!(message.starts_with("p.toml:3:"), "{message}");
    }

    #[test]
    fn relative_paths_are_refused() {
        let text = "name = \"p\"\n[[rule]]\nid = \"a\"\npaths = [\"/ok\", \"bin/wechat\"]\n";
        assert_eq!(
            single_error(&[("p.toml", text)]),
            "p.toml:4:17: rule[0].paths[1]: `bin/wechat` is not an absolute path"
        );
    }

    #[test]
    fn rules_without_identifiers_are_refused() {
        let text = "name = \"p\"\n[[rule]]\nid = \"empty\"\n";
        assert_eq!(
            single_error(&[("p.toml", text)]),
            "p.toml:3:6: rule[0]: rule `empty` names nothing: give at least one of `sha256`, \
             `paths`, `path_prefixes`, `globs`, `packages`, `flatpak`, `snap`, `appimage`"
        );
    }

    #[test]
    fn bad_ids_are_refused() {
        let text = "name = \"p\"\n[[rule]]\nid = \"we chat\"\npaths = [\"/x\"]\n";
        assert!(single_error(&[("p.toml", text)])
            .starts_with("p.toml:3:6: rule[0].id: rule id `we chat` may only"));
    }

    #[test]
    fn duplicate_ids_across_files_name_both_places() {
        let a = "name = \"a\"\n[[rule]]\nid = \"x\"\npaths = [\"/x\"]\n";
        let b = "name = \"b\"\n\n[[rule]]\nid = \"x\"\npaths = [\"/y\"]\n";
        assert_eq!(
            single_error(&[("a.toml", a), ("b.toml", b)]),
            "b.toml:4:6: rule[0].id: duplicate rule id `x`, first defined at a.toml:3:6"
        );
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let a = "name = \"a\"\n[[rule]]\nid = \"x\"\npaths = [\"rel\"]\n";
        let b = "name = 3\n";
        let errors = parse(&[("a.toml", a), ("b.toml", b)]).unwrap_err();
        assert_eq!(errors.0.len(), 2);
        let text = errors.to_string();
        assert!(
            text.contains("a.toml:4:") && text.contains("b.toml:1:"),
            "{text}"
        );
    }

    #[test]
    fn load_dir_reads_sorted_toml_files_only() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("b.toml"),
            "name = \"b\"\n[[rule]]\nid = \"b\"\npaths = [\"/b\"]\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join("a.toml"),
            "name = \"a\"\n[[rule]]\nid = \"a\"\npaths = [\"/a\"]\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a policy").unwrap();
        std::fs::write(dir.path().join(".swap.toml"), "garbage =").unwrap();
        let policy = load_dir(dir.path()).unwrap();
        let ids: Vec<_> = policy.rules.iter().map(|rule| rule.id.as_str()).collect();
        assert_eq!(ids, ["a", "b"]);

        let empty = tempfile::tempdir().unwrap();
        assert!(load_dir(empty.path())
            .unwrap_err()
            .to_string()
            .contains("no policy files"));
    }

    const EVERY_IDENTIFIER: &str = r#"
name = "all"

[[rule]]
id = "wechat"
sha256 = ["AB0000000000000000000000000000000000000000000000000000000000cdef"]
paths = ["/opt/wechat/wechat"]
path_prefixes = ["/opt/wechat"]
globs = ["/home/*/Applications/WeChat*.AppImage", "/opt/wechat/**/lib*.so*"]
packages = ["wechat", "kesl:amd64"]
flatpak = ["com.tencent.WeChat"]
snap = ["wechat-client"]
appimage = [{ name = "WeChat-*.AppImage" }, { name = "wechat*.AppImage", sha256 = ["00000000000000000000000000000000000000000000000000000000000000ff"] }]
"#;

    #[test]
    fn parses_every_identifier() {
        let policy = parse(&[("all.toml", EVERY_IDENTIFIER)]).unwrap();
        let ids = &policy.rules[0].identifiers;
        assert_eq!(ids.sha256.len(), 1);
        assert_eq!(ids.sha256[0][0], 0xab);
        assert_eq!(ids.sha256[0][31], 0xef);
        assert_eq!(ids.path_prefixes, [PathBuf::from("/opt/wechat")]);
        assert_eq!(ids.globs.len(), 2);
        assert_eq!(ids.packages, ["wechat", "kesl:amd64"]);
        assert_eq!(ids.flatpak, ["com.tencent.WeChat"]);
        assert_eq!(ids.snap, ["wechat-client"]);
        assert_eq!(ids.appimage.len(), 2);
        assert!(ids.appimage[0].sha256.is_empty());
        assert_eq!(ids.appimage[1].sha256[0][31], 0xff);
        assert!(ids.needs_scan());
    }

    /// One bad value in an otherwise valid rule: the error names its exact place.
    fn error_for(field_line: &str) -> String {
        let text = format!("name = \"p\"\n[[rule]]\nid = \"r\"\npaths = [\"/x\"]\n{field_line}\n");
        single_error(&[("p.toml", &text)])
    }

    /// One bad value in a rule whose other fields name nothing: on line 5, like [`error_for`].
    fn error_in(field_line: &str) -> String {
        let text =
            format!("name = \"p\"\n[[rule]]\nid = \"r\"\ndescription = \"d\"\n{field_line}\n");
        single_error(&[("p.toml", &text)])
    }

    #[test]
    fn malformed_hashes_are_located() {
        assert_eq!(
            error_for("sha256 = [\"abc\"]"),
            format!(
                "p.toml:5:11: rule[0].sha256[0]: {}",
                parse_sha256("abc").unwrap_err()
            )
        );
        let message = error_for(&format!(
            "sha256 = [\"{}\", \"{}g\"]",
            "a".repeat(64),
            "b".repeat(63)
        ));
        assert!(
            message.starts_with("p.toml:5:79: rule[0].sha256[1]: "),
            "{message}"
        );
    }

    #[test]
    fn globs_that_can_never_match_are_refused() {
        for (glob, complaint) in [
            ("opt/*", "is not absolute"),
            ("/opt/wechat/", "ends with `/`"),
            ("/opt//wechat", "empty, `.` or `..` component"),
            ("/opt/../wechat", "empty, `.` or `..` component"),
            ("/**/wechat", "starts with a wildcard"),
            ("/opt/[z-a]", "invalid range"),
        ] {
            let message = error_for(&format!("globs = [\"{glob}\"]"));
            assert!(
                message.starts_with("p.toml:5:10: rule[0].globs[0]: "),
                "{message}"
            );
            assert!(message.contains(complaint), "{glob}: {message}");
        }
    }

    #[test]
    fn bad_names_of_packages_apps_and_snaps_are_located() {
        assert!(
            error_for("packages = [\"../etc\"]").starts_with("p.toml:5:13: rule[0].packages[0]: ")
        );
        assert!(
            error_for("flatpak = [\"wechat\"]").starts_with("p.toml:5:12: rule[0].flatpak[0]: ")
        );
        assert!(error_for("snap = [\"Bad_Snap\"]").starts_with("p.toml:5:9: rule[0].snap[0]: "));
        assert_eq!(
            error_for("path_prefixes = [\"/\"]"),
            "p.toml:5:18: rule[0].path_prefixes[0]: `/` would ban every program on the machine"
        );
        assert!(error_for("appimage = [{ name = \"dir/x.AppImage\" }]")
            .starts_with("p.toml:5:22: rule[0].appimage[0].name: "));
        assert!(
            error_for("appimage = [{ name = \"x\", sha256 = [\"zz\"] }]")
                .starts_with("p.toml:5:37: rule[0].appimage[0].sha256[0]: ")
        );
        assert!(error_for("appimage = [{ nme = \"x\" }]").contains("unknown field `nme`"));
    }

    #[test]
    fn every_spelling_of_root_is_refused_as_a_prefix() {
        let dir = tempfile::tempdir().unwrap();
        let link = dir.path().join("everything");
        std::os::unix::fs::symlink("/", &link).unwrap();
        let link = link.display().to_string();
        for prefix in [
            "/",
            "//",
            "/.",
            "/usr/..",
            "/proc/self/root",
            "/tmp/../",
            link.as_str(),
        ] {
            let message = error_in(&format!("path_prefixes = [\"{prefix}\"]"));
            assert!(
                message.starts_with("p.toml:5:18: rule[0].path_prefixes[0]: "),
                "{message}"
            );
            assert!(
                message.ends_with("would ban every program on the machine"),
                "{prefix}: {message}"
            );
        }
        // Without merged /usr, `/bin/..` is `/`; with it, `/usr`, which holds critical files.
        let message = error_in("path_prefixes = [\"/bin/..\"]");
        assert!(
            message.starts_with("p.toml:5:18: rule[0].path_prefixes[0]: `/bin/..`"),
            "{message}"
        );
    }

    #[test]
    fn globs_based_on_root_however_written_are_refused() {
        let message = error_in("globs = [\"/proc/self/root/*/bin/x\"]");
        assert_eq!(
            message,
            "p.toml:5:10: rule[0].globs[0]: `/proc/self/root/*/bin/x` starts with a wildcard \
             once `/proc/self/root` is resolved to `/`: begin it with a directory so blocker \
             does not walk the whole filesystem"
        );
    }

    #[test]
    fn critical_files_are_refused_however_named() {
        for (field, value) in [
            ("paths", "/bin/sh"),
            ("paths", "/usr/bin/../bin/sh"),
            ("paths", "//bin/./sh"),
            ("path_prefixes", "/bin"),
            ("path_prefixes", "/usr"),
            ("globs", "/bin/da?h"),
            ("globs", "/usr/**"),
        ] {
            let message = error_in(&format!("{field} = [\"{value}\"]"));
            assert!(
                message.starts_with("p.toml:5:"),
                "{field} {value}: {message}"
            );
            assert!(
                message.contains(&format!("rule[0].{field}[0]: `{value}` would ban ")),
                "{message}"
            );
            // Below /usr, what blocker itself has mapped may come first.
            assert!(
                message.contains("a critical file (")
                    || message.contains("which no rule can ban ("),
                "{field} {value}: {message}"
            );
        }
        let message = error_in("paths = [\"/bin/sh\"]");
        assert!(message.contains("would ban /bin/sh"), "{message}");
        assert!(message.contains("(it is the POSIX shell"), "{message}");
    }

    #[test]
    fn ban_critical_files_lets_a_rule_ban_what_it_names() {
        let policy = parse(&[(
            "p.toml",
            "name = \"p\"\n[[rule]]\nid = \"r\"\npaths = [\"/bin/sh\"]\nban_critical_files = [\"/usr/bin/sh\"]\n",
        )])
        .unwrap();
        assert_eq!(
            policy.rules[0].ban_critical_files,
            [PathBuf::from("/usr/bin/sh")]
        );
        // Naming one critical file does not open the others.
        let message = error_in("ban_critical_files = [\"/bin/sh\"]\nglobs = [\"/usr/bin/*\"]");
        assert!(
            message.starts_with("p.toml:6:10: rule[0].globs[0]: "),
            "{message}"
        );
        // Missing files may be named, for machines that have them; other files may not.
        parse(&[(
            "p.toml",
            "name = \"p\"\n[[rule]]\nid = \"r\"\npaths = [\"/x\"]\nban_critical_files = [\"/no/such/sshd\"]\n",
        )])
        .unwrap();
        let message = error_for("ban_critical_files = [\"/etc/hostname\"]");
        assert!(
            message.starts_with("p.toml:5:23: rule[0].ban_critical_files[0]: `/etc/hostname` is not a critical file"),
            "{message}"
        );
    }

    #[test]
    fn what_blocker_runs_on_cannot_be_overridden() {
        let message = error_in("paths = [\"/proc/self/exe\"]");
        assert!(
            message.contains("which no rule can ban (it is the blocker binary)"),
            "{message}"
        );
        let message = error_for("ban_critical_files = [\"/proc/self/exe\"]");
        assert!(
            message.contains("which no rule can ban: it is the blocker binary"),
            "{message}"
        );
    }

    #[test]
    fn contents_of_critical_files_are_refused() {
        let shell = crate::scan::hash_file(Path::new("/bin/sh")).unwrap().sha256;
        let hex = crate::scan::to_hex(&shell);
        let message = error_in(&format!("sha256 = [\"{hex}\"]"));
        assert!(
            message.starts_with("p.toml:5:11: rule[0].sha256[0]: this content would ban /bin/sh"),
            "{message}"
        );
        parse(&[(
            "p.toml",
            &format!("name = \"p\"\n[[rule]]\nid = \"r\"\nsha256 = [\"{hex}\"]\nban_critical_files = [\"/bin/sh\"]\n"),
        )])
        .unwrap();
    }

    #[test]
    fn nul_in_a_path_is_refused() {
        for (field, value) in [
            ("paths", "/opt/a\\u0000b"),
            ("path_prefixes", "/opt/a\\u0000"),
            ("globs", "/opt/\\u0000*"),
        ] {
            let message = error_in(&format!("{field} = [\"{value}\"]"));
            assert!(message.starts_with("p.toml:5:"), "{message}");
            assert!(
                message.contains(&format!("rule[0].{field}[0]: `")),
                "{message}"
            );
            assert!(message.contains("\\x00"), "{message}");
            assert!(message.contains("contains a NUL character"), "{message}");
        }
    }

    #[test]
    fn values_in_messages_are_escaped() {
        let message = error_in("paths = [\"bin/\\u001b[2J\\n\"]");
        assert!(
            message.contains("`bin/\\x1b[2J\\n` is not an absolute path"),
            "{message}"
        );
    }

    #[test]
    fn glob_bases_stop_at_the_first_wildcard() {
        assert_eq!(glob_base("/opt/wechat/**"), PathBuf::from("/opt/wechat"));
        assert_eq!(glob_base("/home/*/Apps/x"), PathBuf::from("/home"));
        assert_eq!(glob_base("/usr/bin/we?hat"), PathBuf::from("/usr/bin"));
        let matcher = compile_glob("/home/*/Applications/*.AppImage").unwrap();
        assert!(matcher.is_match("/home/alice/Applications/WeChat.AppImage"));
        assert!(!matcher.is_match("/home/alice/x/Applications/WeChat.AppImage"));
    }

    #[test]
    fn the_shipped_policies_and_the_example_parse() {
        let policies = Path::new(env!("CARGO_MANIFEST_DIR")).join("../policies");
        let shipped = load_dir(&policies).unwrap();
        assert!(shipped.rules.iter().any(|rule| rule.id == "wechat"));
        assert!(shipped
            .rules
            .iter()
            .any(|rule| rule.id == "kaspersky-endpoint-security"));
        let example = load_dir(&policies.join("examples")).unwrap();
        let rule = &example.rules[0];
        assert_eq!(rule.action, Action::Audit, "the example is in monitor mode");
        let ids = &rule.identifiers;
        assert!(
            [
                ids.sha256.len(),
                ids.paths.len(),
                ids.path_prefixes.len(),
                ids.globs.len(),
                ids.packages.len(),
                ids.flatpak.len(),
                ids.snap.len(),
                ids.appimage.len(),
            ]
            .iter()
            .all(|&n| n > 0),
            "the example shows every identifier"
        );
    }

    #[test]
    fn the_strictest_fileless_setting_applies() {
        let file = |name: &str, extra: &str| {
            (
                format!("{name}.toml"),
                format!(
                    "name = \"{name}\"\n{extra}\n[[rule]]\nid = \"{name}\"\npaths = [\"/x\"]\n"
                ),
            )
        };
        let parse_all = |files: &[(String, String)]| {
            let borrowed: Vec<(&str, &str)> = files
                .iter()
                .map(|(n, t)| (n.as_str(), t.as_str()))
                .collect();
            parse(&borrowed).unwrap().fileless().0
        };
        assert_eq!(parse_all(&[file("a", "")]), SettingAction::Allow);
        assert_eq!(
            parse_all(&[
                file("a", "fileless = \"audit\""),
                file("b", "fileless = \"deny\"")
            ]),
            SettingAction::Deny
        );
        assert_eq!(
            parse_all(&[
                file("a", "fileless = \"deny\"\nmode = \"monitor\""),
                file("b", "")
            ]),
            SettingAction::Audit
        );
        let message = single_error(&[("p.toml", "name = \"p\"\nfileless = \"block\"\n")]);
        assert!(
            message.starts_with("p.toml:2:12: fileless: unknown variant `block`"),
            "{message}"
        );
    }

    #[test]
    fn unhashable_execs_are_audited_unless_a_policy_says_otherwise() {
        let parse_one = |header: &str| {
            let text = format!("name = \"p\"\n{header}\n[[rule]]\nid = \"r\"\npaths = [\"/x\"]\n");
            let policy = parse(&[("p.toml", text.as_str())]).unwrap();
            let (setting, named_by) = policy.unhashable();
            (setting, named_by.map(str::to_owned))
        };
        assert_eq!(parse_one(""), (SettingAction::Audit, None));
        assert_eq!(
            parse_one("unhashable = \"deny\""),
            (SettingAction::Deny, Some("p".to_owned()))
        );
        assert_eq!(
            parse_one("unhashable = \"allow\""),
            (SettingAction::Allow, Some("p".to_owned()))
        );
        assert_eq!(
            parse_one("unhashable = \"deny\"\nmode = \"monitor\"").0,
            SettingAction::Audit
        );
    }

    #[test]
    fn the_smallest_hash_limit_applies_and_bad_ones_are_located() {
        let header = |name: &str, extra: &str| {
            format!("name = \"{name}\"\n{extra}\n[[rule]]\nid = \"{name}\"\npaths = [\"/x\"]\n")
        };
        let default = parse(&[("a.toml", &header("a", ""))]).unwrap();
        assert_eq!(
            default.hash_limit_bytes(),
            u64::from(DEFAULT_HASH_LIMIT_MIB) << 20
        );
        let (a, b) = (
            header("a", "hash_limit_mib = 64"),
            header("b", "hash_limit_mib = 8"),
        );
        let both = parse(&[("a.toml", &a), ("b.toml", &b)]).unwrap();
        assert_eq!(both.hash_limit_bytes(), 8 << 20);
        assert_eq!(both.policies[0].hash_limit_mib, Some(64));
        for bad in ["0", "-1", "4294967296"] {
            let message =
                single_error(&[("p.toml", &format!("name = \"p\"\nhash_limit_mib = {bad}\n"))]);
            assert!(
                message.starts_with(&format!(
                    "p.toml:2:18: hash_limit_mib: {bad} is not a size in MiB"
                )),
                "{message}"
            );
        }
        let message = single_error(&[("p.toml", "name = \"p\"\nhash_limit_mib = \"1G\"\n")]);
        assert!(
            message.starts_with("p.toml:2:18: hash_limit_mib: invalid type"),
            "{message}"
        );
    }

    #[test]
    fn line_starts_locate_every_offset() {
        let source = "ab\n\u{e7}d\n\nx";
        let lines = LineStarts::new(Path::new("f.toml"), source);
        let at = |offset| {
            let location = lines.location(offset);
            (location.line, location.column)
        };
        assert_eq!(at(0), (1, 1));
        assert_eq!(at(2), (1, 3), "the newline ends its line");
        assert_eq!(at(3), (2, 1));
        assert_eq!(at(5), (2, 2), "columns count characters, not bytes");
        assert_eq!(at(7), (3, 1));
        assert_eq!(at(8), (4, 1));
        assert_eq!(at(9), (4, 2), "the end of the file");
        assert_eq!(at(1000), (4, 2), "past the end is the end");
        assert_eq!(lines.location(0).file, Path::new("f.toml"));
    }

    /// Rules, each with its id and where it was found, from parsing `text` in pieces of
    /// `piece_bytes`.
    fn rules_in_pieces(text: &str, piece_bytes: usize) -> Result<Vec<(String, usize)>, usize> {
        let ids = |_: &PolicyFile, base: usize, rules: Vec<RuleSpec>, _: &mut Guard| {
            rules
                .into_iter()
                .map(|rule| (rule.id.get_ref().clone(), base + rule.id.span().start))
                .collect::<Vec<_>>()
        };
        match parse_file(text, piece_bytes, &Guard::new(Vec::new()), &ids) {
            Ok((_, pieces)) => Ok(pieces.into_iter().flatten().collect()),
            Err((base, error)) => Err(base + error.span().map_or(0, |span| span.start)),
        }
    }

    #[test]
    fn files_are_cut_only_at_rule_headers_after_the_first_rule() {
        let text = "name = \"p\"\n[[rule]]\nid = \"a\"\npaths = [\"/a\"]\n  [[rule]]\nid = \"b\"\npaths = [\"/b\"]\n[[rule]]\nid = \"c\"\npaths = [\"/c\"]\n";
        let starts: Vec<usize> = pieces(text, 1).iter().map(|piece| piece.start).collect();
        let second = text.find("  [[rule]]").unwrap();
        let third = text.rfind("[[rule]]").unwrap();
        assert_eq!(starts, [0, second, third]);
        assert_eq!(pieces(text, usize::MAX), vec![0..text.len()]);
        assert_eq!(
            rules_in_pieces(text, 1).unwrap(),
            rules_in_pieces(text, usize::MAX).unwrap()
        );
        // A `[[rule]]` line may be inside a multi-line string: such files are not cut.
        let quoted = "name = \"p\"\n[[rule]]\nid = \"a\"\ndescription = \"\"\"\n[[rule]]\n\"\"\"\npaths = [\"/a\"]\n";
        assert_eq!(pieces(quoted, 1), vec![0..quoted.len()]);
        assert_eq!(rules_in_pieces(quoted, 1).unwrap().len(), 1);
    }

    #[test]
    fn errors_in_later_pieces_are_located_in_the_file() {
        let text = generated_policy(50);
        let broken = format!("{text}\n[[rule]]\nid = \"extra\"\npath = [\"/y\"]\n");
        let whole = rules_in_pieces(&broken, usize::MAX).unwrap_err();
        assert_eq!(rules_in_pieces(&broken, 1).unwrap_err(), whole);
        let message = single_error(&[("p.toml", &broken)]);
        assert!(
            message.starts_with(&format!(
                "p.toml:{}:1: rule[50].path: unknown field `path`",
                4 * 50 + 5
            )),
            "{message}"
        );
        // Anything but rules after the first piece is refused, as in the whole file.
        let table = format!("{text}\n[other]\nx = 1\n");
        assert!(rules_in_pieces(&table, 1).is_err());
        assert!(rules_in_pieces(&table, usize::MAX).is_err());
    }

    /// A generated policy of `rules` rules mixing content, path and glob identifiers.
    fn generated_policy(rules: usize) -> String {
        let mut text = String::from("name = \"generated\"\n");
        for n in 0..rules {
            text.push_str(&format!("\n[[rule]]\nid = \"rule-{n}\"\n"));
            match n % 3 {
                0 => text.push_str(&format!("sha256 = [\"{n:064x}\"]\n")),
                1 => text.push_str(&format!("paths = [\"/opt/generated/{n}/bin/app\"]\n")),
                _ => text.push_str(&format!("globs = [\"/opt/generated/{n}/**/*.so\"]\n")),
            }
        }
        text
    }

    /// The size of a generated policy (a threat-intelligence hash list, a fleet server's rules):
    /// its last rule, the 200,000th, repeats an id and is reported at its own line.
    #[test]
    fn large_policies_are_checked_with_exact_locations() {
        const RULES: usize = 199_999;
        let text = generated_policy(RULES);
        let policy = parse(&[("big.toml", &text)]).unwrap();
        assert_eq!(policy.rules.len(), RULES);
        // Each rule takes four lines after the one-line header: `id` is on line 4n + 4.
        let last = &policy.rules[RULES - 1];
        assert_eq!((last.location.line, last.location.column), (4 * RULES, 6));

        let broken = format!("{text}\n[[rule]]\nid = \"rule-7\"\npaths = [\"relative\"]\n");
        let errors = parse(&[("big.toml", &broken)]).unwrap_err().0;
        let messages: Vec<String> = errors.iter().map(ToString::to_string).collect();
        assert_eq!(
            messages,
            [
                format!(
                    "big.toml:{}:6: rule[{RULES}].id: duplicate rule id `rule-7`, first defined at big.toml:32:6",
                    4 * RULES + 4
                ),
                format!(
                    "big.toml:{}:10: rule[{RULES}].paths[0]: `relative` is not an absolute path",
                    4 * RULES + 5
                ),
            ]
        );
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn rule_id() -> impl Strategy<Value = String> {
            "[A-Za-z0-9_.-]{1,20}"
        }

        proptest! {
            /// Whatever the bytes, parsing returns a policy or located errors; it never panics
            /// and every location lies inside the file.
            #[test]
            fn any_input_gives_a_policy_or_located_errors(text in "(\\PC|\n){0,200}") {
                if let Err(errors) = parse(&[("fuzz.toml", &text)]) {
                    let lines = text.split('\n').count().max(1);
                    for error in errors.0 {
                        prop_assert!(error.location.line >= 1 && error.location.line <= lines, "{error}");
                        prop_assert!(error.location.column >= 1);
                    }
                }
            }

            /// The line index gives what counting newlines from the start of the file gives.
            #[test]
            fn line_starts_agree_with_counting(text in "(\\PC|\n){0,100}", pick in any::<prop::sample::Index>()) {
                let offsets: Vec<usize> = text.char_indices().map(|(offset, _)| offset).chain([text.len()]).collect();
                let offset = offsets[pick.index(offsets.len())];
                let before = &text[..offset];
                let line = before.matches('\n').count() + 1;
                let column = before[before.rfind('\n').map_or(0, |newline| newline + 1)..].chars().count() + 1;
                let location = LineStarts::new(Path::new("p.toml"), &text).location(offset);
                prop_assert_eq!((location.line, location.column), (line, column));
            }

            /// A glob without classes, alternates or escapes is not parsed when checked:
            /// globset finds no error in any of them.
            #[test]
            fn globs_without_fallible_syntax_always_parse(pattern in "[^\\[\\]{}\\\\]{0,40}") {
                prop_assert!(!pattern.contains(GLOB_SYNTAX_THAT_CAN_FAIL));
                prop_assert!(parse_glob(&pattern).is_ok(), "{pattern}");
            }

            /// Parsing in pieces finds the rules and their places that one parse of the whole
            /// finds, and fails where it fails (with several errors, another may come first).
            #[test]
            fn pieces_parse_as_the_whole(
                rules in proptest::collection::vec(("[a-z]{1,4}", "[ \t]{0,2}", "(paths|path|description) = \"[a-z/]{0,4}\"|\\[x\\]|x\\.y = 1|# c|"), 1..8),
                piece_bytes in 1usize..64,
            ) {
                let mut text = String::from("name = \"p\"\n");
                for (id, indent, extra) in &rules {
                    text.push_str(&format!("{indent}[[rule]]\nid = \"{id}\"\n{extra}\n"));
                }
                let (pieces, whole) = (rules_in_pieces(&text, piece_bytes), rules_in_pieces(&text, usize::MAX));
                prop_assert_eq!(pieces.is_ok(), whole.is_ok(), "{:?} {:?}", pieces, whole);
                if let (Ok(pieces), Ok(whole)) = (pieces, whole) {
                    prop_assert_eq!(pieces, whole);
                }
            }

            /// Rules written with valid ids and paths come back as written, in order.
            #[test]
            fn valid_rules_round_trip(
                rules in proptest::collection::btree_map(rule_id(), "(/[a-z0-9]{1,8}){1,4}", 1..6),
                monitor in any::<bool>(),
            ) {
                let mut text = format!("name = \"p\"\nmode = \"{}\"\n", if monitor { "monitor" } else { "enforce" });
                for (id, path) in &rules {
                    text.push_str(&format!("[[rule]]\nid = \"{id}\"\npaths = [\"{path}\"]\n"));
                }
                let policy = parse(&[("p.toml", &text)]).unwrap();
                let parsed: Vec<_> = policy.rules.iter().map(|r| (r.id.clone(), r.identifiers.paths[0].display().to_string())).collect();
                let written: Vec<_> = rules.into_iter().collect();
                prop_assert_eq!(parsed, written);
                let expected = if monitor { Action::Audit } else { Action::Deny };
                prop_assert!(policy.rules.iter().all(|r| r.action == expected));
            }

            /// A duplicate id anywhere is reported at its second definition.
            #[test]
            fn duplicates_are_always_found(id in rule_id(), gap in 0usize..4) {
                let mut text = String::from("name = \"p\"\n");
                text.push_str(&format!("[[rule]]\nid = \"{id}\"\npaths = [\"/a\"]\n"));
                for n in 0..gap {
                    text.push_str(&format!("[[rule]]\nid = \"other{n}-{id}\"\npaths = [\"/b\"]\n"));
                }
                text.push_str(&format!("[[rule]]\nid = \"{id}\"\npaths = [\"/c\"]\n"));
                let errors = parse(&[("p.toml", &text)]).unwrap_err().0;
                prop_assert_eq!(errors.len(), 1);
                prop_assert_eq!(&errors[0].field, &format!("rule[{}].id", gap + 1));
                prop_assert_eq!(errors[0].location.line, 3 * (gap + 1) + 3);
            }
        }
    }
}
