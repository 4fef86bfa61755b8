//! The checks of one rule, each problem located at the value it is about. A rule is checked on
//! its own, which lets the pieces of a file be checked on every CPU; duplicate ids, which only
//! every file together shows, are found in `load`.

use std::{collections::BTreeSet, ops::Range, path::PathBuf};

use blocker_common::FileKey;
use toml::Spanned;

use super::{
    glob::{check_glob, compile_glob, glob_base},
    location::{LineStarts, Location, PolicyError},
    spec::{PolicyFile, RuleSpec},
    Action, AppImage, Identifiers, Mode, Rule, Telling,
};
use crate::{
    critical::{CriticalFile, Guard},
    escape::escaped,
    scan::parse_sha256,
    sources::{validate_flatpak_id, validate_package_name, validate_snap_name},
};

/// A rule as applied, with its problems: all but a duplicate id, which only the rules of every
/// file together show.
pub(super) struct CheckedRule {
    pub(super) rule: Rule,
    /// Whether the id may be checked for duplicates (an invalid one is an error already).
    pub(super) id_valid: bool,
    pub(super) errors: Vec<RuleError>,
}

/// Checks one rule of a file, whose spans count from `base`.
pub(super) fn check_rule(
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
    // An allow rule bans nothing: naming a critical file (a prefix of the system's libraries,
    // for lockdown) only allows what the safety net allows anyway.
    let mut bans_nothing = Guard::new(Vec::new());
    let guard = match spec.action {
        Action::Allow => &mut bans_nothing,
        Action::Audit | Action::Deny => guard,
    };
    let identifiers = checker.identifiers(&spec, guard, &overrides);
    if let Some(url) = &spec.url {
        if let Err(problem) = check_url(url.get_ref()) {
            checker.error(url.span(), ".url".to_owned(), problem);
        }
    }
    if let Some(url) = &spec.url {
        if let Err(problem) = check_url_placeholders(url.get_ref()) {
            checker.error(url.span(), ".url".to_owned(), problem);
        }
    }
    if let Some(message) = &spec.message {
        if let Err(problem) = check_message(message.get_ref()) {
            checker.error(message.span(), ".message".to_owned(), problem);
        }
    }
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
    let action = match (header.mode, spec.action) {
        (Mode::Enforce, written) | (Mode::Monitor, written @ Action::Allow) => written,
        (Mode::Monitor, _) => Action::Audit,
    };
    CheckedRule {
        rule: Rule {
            id,
            description: spec.description,
            reason: spec.reason,
            url: spec.url.map(Spanned::into_inner),
            telling: Telling {
                message: spec.message.map(Spanned::into_inner),
                desktop: spec.notify.unwrap_or(true),
                terminal: spec.notify.unwrap_or(true) && header.notify_terminal.unwrap_or(false),
            },
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

/// A file's `hash_limit_mib`, if the kernel's 32-bit limit holds it. The header is in the file's
/// first piece, so the span counts from the start of the file.
pub(super) fn check_hash_limit(
    lines: &LineStarts,
    limit: &Spanned<i64>,
) -> Result<u32, PolicyError> {
    u32::try_from(*limit.get_ref())
        .ok()
        .filter(|&mib| mib >= 1)
        .ok_or_else(|| PolicyError {
            location: lines.location(limit.span().start),
            field: "hash_limit_mib".to_owned(),
            message: format!(
                "{} is not a size in MiB from 1 to {}",
                limit.get_ref(),
                u32::MAX
            ),
        })
}

/// Validates one rule's fields, collecting located errors.
struct RuleChecker<'a> {
    lines: &'a LineStarts<'a>,
    /// Where the piece of the file the rule was parsed from starts: its spans count from there.
    base: usize,
    errors: &'a mut Vec<RuleError>,
}

/// A problem in one rule, found before the rule's place among its file's rules is known.
pub(super) struct RuleError {
    location: Location,
    /// The field below `rule[N]` (`.paths[0]`), empty for the rule itself.
    field: String,
    message: String,
}

impl RuleError {
    pub(super) fn in_rule(self, index: usize) -> PolicyError {
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
            if spec.action == Action::Allow && entry.sha256.is_empty() {
                self.error(
                    entry.name.span(),
                    format!(".{field}"),
                    "an allow rule's appimage needs `sha256`: a name alone would allow any file \
                     a user gives that name"
                        .to_owned(),
                );
            }
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

/// Longest `url` a rule may carry: it travels in every event of the rule.
const MAX_URL_BYTES: usize = 2048;

/// A rule's `url` is a web page: `https://` or `http://`, bounded, with nothing a terminal or
/// a log reader could take for something else.
pub fn check_url(url: &str) -> Result<(), String> {
    if !(url.starts_with("https://") || url.starts_with("http://")) {
        return Err(format!(
            "`{}` is not an https:// or http:// URL",
            escaped(url)
        ));
    }
    if url.len() > MAX_URL_BYTES {
        return Err(format!("longer than {MAX_URL_BYTES} bytes"));
    }
    if url.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(format!(
            "`{}` holds spaces or control characters, which a URL does not",
            escaped(url)
        ));
    }
    Ok(())
}

/// What a rule's `url` may name, replaced when a person is told: the rule's id, the refused
/// file's SHA-256 and this machine's id (`/etc/machine-id`).
pub const URL_PLACEHOLDERS: [&str; 3] = ["{rule}", "{sha256}", "{machine_id}"];

/// Braces in a rule's `url` are placeholders, and only those of [`URL_PLACEHOLDERS`].
fn check_url_placeholders(url: &str) -> Result<(), String> {
    let mut rest = url;
    while let Some(open) = rest.find(['{', '}']) {
        let from_brace = &rest[open..];
        let Some(placeholder) = URL_PLACEHOLDERS
            .iter()
            .find(|placeholder| from_brace.starts_with(*placeholder))
        else {
            return Err(format!(
                "`{}` has a brace that opens no placeholder: use {}",
                escaped(url),
                URL_PLACEHOLDERS.join(", ")
            ));
        };
        rest = &from_brace[placeholder.len()..];
    }
    Ok(())
}

/// Longest `message` a rule may carry: a notification's body, a line on a terminal.
const MAX_MESSAGE_BYTES: usize = 1024;

/// A rule's `message` is text for a person: bounded and not empty. Controls are escaped where
/// it is shown, not refused, so that a synced message is never lost for one.
fn check_message(message: &str) -> Result<(), String> {
    if message.trim().is_empty() {
        return Err("is empty: leave it out for the default text".to_owned());
    }
    if message.len() > MAX_MESSAGE_BYTES {
        return Err(format!("longer than {MAX_MESSAGE_BYTES} bytes"));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::policy::{
        testing::{parse, single_error, GOOD},
        Action,
    };

    #[test]
    fn monitor_mode_turns_denies_into_audits() {
        let monitored = GOOD.replace("name = \"ban\"", "name = \"ban\"\nmode = \"monitor\"");
        let policy = parse(&[("a.toml", &monitored)]).unwrap();
        assert!(policy.rules.iter().all(|rule| rule.action == Action::Audit));
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
    fn rules_say_what_people_read_and_whether_they_are_told() {
        let policy = parse(&[(
            "p.toml",
            "name = \"p\"\nnotify_terminal = true\n[[rule]]\nid = \"a\"\npaths = [\"/a\"]\n\
             message = \"Ask IT.\"\nurl = \"https://wiki.example/{rule}/{sha256}?m={machine_id}\"\n\
             [[rule]]\nid = \"b\"\npaths = [\"/b\"]\nnotify = false\n",
        )])
        .unwrap();
        let (told, silent) = (&policy.rules[0].telling, &policy.rules[1].telling);
        assert_eq!(told.message.as_deref(), Some("Ask IT."));
        assert!(told.desktop && told.terminal);
        assert!(
            !silent.desktop && !silent.terminal,
            "notify = false silences both"
        );
        let plain = parse(&[(
            "p.toml",
            "name = \"p\"\n[[rule]]\nid = \"a\"\npaths = [\"/a\"]\n",
        )])
        .unwrap();
        assert_eq!(plain.rules[0].telling, Telling::default());
        assert!(
            !plain.rules[0].telling.terminal,
            "terminals only where a policy asks"
        );

        let with = |field: &str| {
            format!("name = \"p\"\n[[rule]]\nid = \"a\"\npaths = [\"/a\"]\n{field}\n")
        };
        assert_eq!(
            single_error(&[("p.toml", &with("url = \"https://x.example/{user}\""))]),
            "p.toml:5:7: rule[0].url: `https://x.example/{user}` has a brace that opens no \
             placeholder: use {rule}, {sha256}, {machine_id}"
        );
        assert!(single_error(&[("p.toml", &with("message = \" \""))]).contains("is empty"));
        assert!(single_error(&[(
            "p.toml",
            &with(&format!("message = \"{}\"", "x".repeat(1025)))
        )])
        .contains("longer than 1024 bytes"));
    }

    #[test]
    fn a_rule_url_is_a_web_page() {
        let with_url = |url: &str| {
            format!("name = \"p\"\n[[rule]]\nid = \"a\"\npaths = [\"/ok\"]\nurl = {url:?}\n")
        };
        let policy = parse(&[("p.toml", &with_url("https://wiki.example/why"))]).unwrap();
        assert_eq!(
            policy.rules[0].url.as_deref(),
            Some("https://wiki.example/why")
        );
        assert_eq!(
            single_error(&[("p.toml", &with_url("javascript:alert(1)"))]),
            "p.toml:5:7: rule[0].url: `javascript:alert(1)` is not an https:// or http:// URL"
        );
        assert!(single_error(&[("p.toml", &with_url("https://a b"))]).contains("spaces"));
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
        assert!(
            error_for("action = \"allow\"\nappimage = [{ name = \"Tool-*.AppImage\" }]")
                .starts_with("p.toml:6:22: rule[0].appimage[0]: an allow rule's appimage needs")
        );
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
    fn allow_rules_may_name_critical_files() {
        let policy = parse(&[(
            "p.toml",
            "name = \"p\"\n[[rule]]\nid = \"system\"\naction = \"allow\"\n\
             paths = [\"/bin/sh\"]\npath_prefixes = [\"/usr/lib\"]\n",
        )]);
        assert!(policy.is_ok(), "{:?}", policy.err());
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

    mod properties {
        use super::*;
        use crate::policy::testing::rule_id;
        use proptest::prelude::*;

        proptest! {
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
        }
    }
}
