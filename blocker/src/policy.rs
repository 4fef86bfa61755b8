//! Policy files: TOML documents naming what may not run. Parsing checks everything it can
//! without touching the filesystem beyond reading the files, and reports every problem with its
//! file, line, column and field.

use std::{
    collections::HashMap,
    fmt,
    ops::Range,
    path::{Path, PathBuf},
};

use globset::{GlobBuilder, GlobMatcher};
use serde::Deserialize;
use toml::Spanned;

use crate::{
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

impl Location {
    fn at(file: &Path, source: &str, offset: usize) -> Self {
        let before = &source[..offset.min(source.len())];
        let line_start = before.rfind('\n').map_or(0, |newline| newline + 1);
        Self {
            file: file.to_owned(),
            line: before.matches('\n').count() + 1,
            column: before[line_start..].chars().count() + 1,
        }
    }
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}:{}", self.file.display(), self.line, self.column)
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
            Action::Deny => blocker_common::action::DENY,
            Action::Audit => blocker_common::action::AUDIT,
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

/// What to do with the exec of a file that has no name on disk (`nlink == 0`): a memfd
/// (`memfd_create` + `fexecve`), an `O_TMPFILE`, a deleted file. No path or package rule can
/// name such a file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Fileless {
    #[default]
    Allow,
    Audit,
    Deny,
}

impl Fileless {
    pub fn kernel_value(self) -> u32 {
        match self {
            Fileless::Allow => blocker_common::action::ALLOW,
            Fileless::Audit => blocker_common::action::AUDIT,
            Fileless::Deny => blocker_common::action::DENY,
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
    pub fileless: Option<Fileless>,
}

/// All rules of a policy directory, in file order then rule order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub policies: Vec<PolicyHeader>,
    pub rules: Vec<Rule>,
}

impl Policy {
    /// The strictest fileless setting of all files (a monitor-mode file's deny counts as audit),
    /// with the name of the policy that set it.
    pub fn fileless(&self) -> (Fileless, Option<&str>) {
        self.policies
            .iter()
            .filter_map(|header| {
                let setting = header.fileless?;
                let applied = match (header.mode, setting) {
                    (Mode::Monitor, Fileless::Deny) => Fileless::Audit,
                    _ => setting,
                };
                Some((applied, Some(header.name.as_str())))
            })
            .max_by_key(|(setting, _)| *setting)
            .unwrap_or((Fileless::Allow, None))
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    name: String,
    description: Option<String>,
    #[serde(default)]
    mode: Mode,
    fileless: Option<Fileless>,
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
    file: &'a Path,
    source: &'a str,
    /// `rule[N]`
    rule: String,
    errors: &'a mut Vec<PolicyError>,
}

impl RuleChecker<'_> {
    fn error(&mut self, span: Range<usize>, field: String, message: String) {
        self.errors.push(PolicyError {
            location: Location::at(self.file, self.source, span.start),
            field,
            message,
        });
    }

    /// Checks every element of the list `field`, keeping the valid ones.
    fn list<T>(
        &mut self,
        field: &str,
        items: &[Spanned<String>],
        check: impl Fn(&str) -> Result<T, String>,
    ) -> Vec<T> {
        let mut valid = Vec::new();
        for (index, item) in items.iter().enumerate() {
            match check(item.get_ref()) {
                Ok(value) => valid.push(value),
                Err(message) => {
                    let field = format!("{}.{field}[{index}]", self.rule);
                    self.error(item.span(), field, message);
                }
            }
        }
        valid
    }

    fn identifiers(&mut self, spec: &RuleSpec) -> Identifiers {
        let mut appimage = Vec::new();
        for (index, entry) in spec.appimage.iter().enumerate() {
            let field = format!("appimage[{index}]");
            let name = match file_name_glob(entry.name.get_ref()) {
                Ok(name) => Some(name),
                Err(message) => {
                    let field = format!("{}.{field}.name", self.rule);
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
            sha256: self.list("sha256", &spec.sha256, parse_sha256),
            paths: self.list("paths", &spec.paths, absolute_path),
            path_prefixes: self.list("path_prefixes", &spec.path_prefixes, path_prefix),
            globs: self.list("globs", &spec.globs, path_glob),
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

fn absolute_path(text: &str) -> Result<PathBuf, String> {
    if text.starts_with('/') {
        Ok(PathBuf::from(text))
    } else {
        Err(format!("`{text}` is not an absolute path"))
    }
}

fn path_prefix(text: &str) -> Result<PathBuf, String> {
    let path = absolute_path(text)?;
    if path.parent().is_none() {
        return Err("`/` would ban every program on the machine".to_owned());
    }
    Ok(path)
}

/// Compiles a glob the way blocker matches it: `*` and `?` stay within one path component.
pub fn compile_glob(pattern: &str) -> Result<GlobMatcher, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map(|glob| glob.compile_matcher())
        .map_err(|error| error.kind().to_string())
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

fn path_glob(pattern: &str) -> Result<String, String> {
    if !pattern.starts_with('/') {
        return Err(format!(
            "`{pattern}` is not absolute: globs are matched against absolute paths, so it can never match"
        ));
    }
    if pattern.ends_with('/') {
        return Err(format!(
            "`{pattern}` ends with `/`: it names directories, which are never executed"
        ));
    }
    if pattern
        .split('/')
        .skip(1)
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        return Err(format!(
            "`{pattern}` has an empty, `.` or `..` component: paths are matched in normal form, so it can never match"
        ));
    }
    compile_glob(pattern)?;
    if glob_base(pattern).parent().is_none() {
        return Err(format!(
            "`{pattern}` starts with a wildcard: begin it with a directory so blocker does not walk the whole filesystem"
        ));
    }
    Ok(pattern.to_owned())
}

fn file_name_glob(pattern: &str) -> Result<String, String> {
    if pattern.is_empty() || pattern.contains('/') {
        return Err(format!(
            "`{pattern}` must be a file name pattern without `/`"
        ));
    }
    compile_glob(pattern)?;
    Ok(pattern.to_owned())
}

/// Reads every `*.toml` file in `dir` (sorted by name, hidden files skipped).
pub fn load_dir(dir: &Path) -> anyhow::Result<Policy> {
    use anyhow::Context;
    let mut sources = Vec::new();
    for file in policy_files(dir)? {
        let source = std::fs::read_to_string(&file)
            .with_context(|| format!("reading policy file {}", file.display()))?;
        sources.push((file, source));
    }
    Ok(parse_sources(&sources)?)
}

/// The policy files of `dir` (`*.toml`, not hidden), sorted; an error if there are none.
pub fn policy_files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    use anyhow::Context;
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)
        .with_context(|| format!("reading policy directory {}", dir.display()))?
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
        dir.display()
    );
    Ok(files)
}

/// Parses policy files given as `(path, contents)`; rule ids must be unique across all of them.
pub fn parse_sources(sources: &[(PathBuf, String)]) -> Result<Policy, PolicyErrors> {
    let mut errors = Vec::new();
    let mut policy = Policy::default();
    let mut first_definition: HashMap<String, Location> = HashMap::new();
    for (file, source) in sources {
        let parsed = match toml::from_str::<PolicyFile>(source) {
            Ok(parsed) => parsed,
            Err(error) => {
                errors.push(deserialize_error(file, source, &error));
                continue;
            }
        };
        for (index, spec) in parsed.rule.into_iter().enumerate() {
            let field = |name: &str| format!("rule[{index}].{name}");
            let error_at = |span: Range<usize>, field: String, message: String| PolicyError {
                location: Location::at(file, source, span.start),
                field,
                message,
            };
            let id_location = Location::at(file, source, spec.id.span().start);
            let id = spec.id.get_ref().clone();
            if let Some(problem) = invalid_rule_id(&id) {
                errors.push(error_at(spec.id.span(), field("id"), problem));
            } else if let Some(first) = first_definition.get(&id) {
                errors.push(error_at(
                    spec.id.span(),
                    field("id"),
                    format!("duplicate rule id `{id}`, first defined at {first}"),
                ));
            } else {
                first_definition.insert(id.clone(), id_location.clone());
            }

            let identifiers = RuleChecker {
                file,
                source,
                rule: format!("rule[{index}]"),
                errors: &mut errors,
            }
            .identifiers(&spec);
            if identifiers.is_empty() && !lists_any_identifier(&spec) {
                errors.push(error_at(
                    spec.id.span(),
                    format!("rule[{index}]"),
                    format!(
                        "rule `{id}` names nothing: give at least one of {}",
                        IDENTIFIER_FIELDS.join(", ")
                    ),
                ));
            }

            let action = match parsed.mode {
                Mode::Enforce => spec.action,
                Mode::Monitor => Action::Audit,
            };
            policy.rules.push(Rule {
                id,
                description: spec.description,
                reason: spec.reason,
                action,
                identifiers,
                policy: parsed.name.clone(),
                location: id_location,
            });
        }
        policy.policies.push(PolicyHeader {
            file: file.clone(),
            name: parsed.name,
            description: parsed.description,
            mode: parsed.mode,
            fileless: parsed.fileless,
        });
    }
    if errors.is_empty() {
        Ok(policy)
    } else {
        Err(PolicyErrors(errors))
    }
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
    (!id.chars().all(allowed))
        .then(|| format!("rule id `{id}` may only contain ASCII letters, digits, `-`, `_` and `.`"))
}

fn deserialize_error(file: &Path, source: &str, error: &toml::de::Error) -> PolicyError {
    let offset = error.span().map_or(0, |span| span.start);
    PolicyError {
        location: Location::at(file, source, offset),
        field: field_path_at(source, offset),
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
             `snap`, `appimage`"
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
        assert_eq!(parse_all(&[file("a", "")]), Fileless::Allow);
        assert_eq!(
            parse_all(&[
                file("a", "fileless = \"audit\""),
                file("b", "fileless = \"deny\"")
            ]),
            Fileless::Deny
        );
        assert_eq!(
            parse_all(&[
                file("a", "fileless = \"deny\"\nmode = \"monitor\""),
                file("b", "")
            ]),
            Fileless::Audit
        );
        let message = single_error(&[("p.toml", "name = \"p\"\nfileless = \"block\"\n")]);
        assert!(
            message.starts_with("p.toml:2:12: fileless: unknown variant `block`"),
            "{message}"
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
