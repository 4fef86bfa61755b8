//! Policy files: TOML documents naming what may not run. Parsing checks everything it can
//! without touching the filesystem beyond reading the files, and reports every problem with its
//! file, line, column and field.

use std::{
    collections::HashMap,
    fmt,
    ops::Range,
    path::{Path, PathBuf},
};

use serde::Deserialize;
use toml::Spanned;

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
    pub paths: Vec<PathBuf>,
    /// Name of the policy the rule belongs to.
    pub policy: String,
    pub location: Location,
}

/// One policy file's own settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PolicyHeader {
    pub file: PathBuf,
    pub name: String,
    pub description: Option<String>,
    pub mode: Mode,
}

/// All rules of a policy directory, in file order then rule order.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Policy {
    pub policies: Vec<PolicyHeader>,
    pub rules: Vec<Rule>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    name: String,
    description: Option<String>,
    #[serde(default)]
    mode: Mode,
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
    paths: Vec<Spanned<String>>,
}

/// Reads every `*.toml` file in `dir` (sorted by name, hidden files skipped).
pub fn load_dir(dir: &Path) -> anyhow::Result<Policy> {
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
    let mut sources = Vec::new();
    for file in files {
        let source = std::fs::read_to_string(&file)
            .with_context(|| format!("reading policy file {}", file.display()))?;
        sources.push((file, source));
    }
    Ok(parse_sources(&sources)?)
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

            let mut paths = Vec::new();
            for (path_index, path) in spec.paths.iter().enumerate() {
                let text = path.get_ref();
                if !text.starts_with('/') {
                    errors.push(error_at(
                        path.span(),
                        format!("rule[{index}].paths[{path_index}]"),
                        format!("`{text}` is not an absolute path"),
                    ));
                } else {
                    paths.push(PathBuf::from(text));
                }
            }
            if spec.paths.is_empty() {
                errors.push(error_at(
                    spec.id.span(),
                    field("paths"),
                    format!("rule `{id}` names no files: give at least one entry in `paths`"),
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
                paths,
                policy: parsed.name.clone(),
                location: id_location,
            });
        }
        policy.policies.push(PolicyHeader {
            file: file.clone(),
            name: parsed.name,
            description: parsed.description,
            mode: parsed.mode,
        });
    }
    if errors.is_empty() {
        Ok(policy)
    } else {
        Err(PolicyErrors(errors))
    }
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
            wechat.paths,
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
            "p.toml:8:1: rule[1].path: unknown field `path`, expected one of `id`, `description`, `reason`, `action`, `paths`"
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
            "p.toml:3:6: rule[0].paths: rule `empty` names no files: give at least one entry in `paths`"
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
}
