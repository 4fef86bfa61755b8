//! Policy files: TOML documents naming what may not run. Parsing checks everything it can
//! without touching the filesystem beyond reading the files, and reports every problem with its
//! file, line, column and field.
//!
//! The policy as applied is defined here and is all the rest of blocker sees of policy files:
//! their serde form (`spec`) stays private, so the file format can change without reaching
//! resolution or the kernel maps.

use std::{fmt, path::PathBuf};

use blocker_common::DEFAULT_HASH_LIMIT_MIB;
use serde::Deserialize;

use crate::scan::Sha256;

mod check;
mod glob;
mod load;
mod location;
mod pieces;
mod spec;
#[cfg(test)]
mod testing;

pub(crate) use load::parse_sources_guarded;
pub use {
    check::{check_url, URL_PLACEHOLDERS},
    glob::{compile_glob, glob_base},
    load::{load_dir, parse_sources, policy_files},
    location::{Location, PolicyError, PolicyErrors},
};

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
    /// Name files that may run: exempt from trusted-path execution (`untrusted_paths`). Changes
    /// nothing while that setting allows every path. A ban always wins over an allow.
    Allow,
    /// Let the exec happen and report it.
    Audit,
    /// Refuse the exec and report it.
    #[default]
    Deny,
}

impl Action {
    pub fn name(self) -> &'static str {
        match self {
            Action::Allow => "allow",
            Action::Deny => "deny",
            Action::Audit => "audit",
        }
    }

    pub fn kernel_value(self) -> u32 {
        match self {
            Action::Allow => blocker_common::Action::Allow.wire(),
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
    /// Where the people it stops learn more (a page about the policy), carried into events.
    pub url: Option<String>,
    pub telling: Telling,
    pub action: Action,
    pub identifiers: Identifiers,
    /// Critical files (see [`crate::critical`]) the rule may ban all the same, as written.
    pub ban_critical_files: Vec<PathBuf>,
    /// Name of the policy the rule belongs to.
    pub policy: String,
    pub location: Location,
}

/// How the person a rule stops is told, beside the security team's records.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Telling {
    /// What they read instead of the default text (the rule's `message`).
    pub message: Option<String>,
    /// A desktop notification through `blocker notify` (the rule's `notify`; `false` bans
    /// silently).
    pub desktop: bool,
    /// A line on the refused process's terminal (the policy's `notify_terminal`).
    pub terminal: bool,
}

impl Default for Telling {
    fn default() -> Self {
        Self {
            message: None,
            desktop: true,
            terminal: false,
        }
    }
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
    pub fn name(self) -> &'static str {
        match self {
            SettingAction::Allow => "allow",
            SettingAction::Audit => "audit",
            SettingAction::Deny => "deny",
        }
    }

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
    /// As written; [`Policy::untrusted_paths`] is what applies.
    pub untrusted_paths: Option<SettingAction>,
    /// `default` as written; [`Policy::lockdown`] is what applies.
    pub lockdown: Option<SettingAction>,
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

    /// The strictest trusted-path setting of all files, as [`Policy::fileless`]: what the
    /// kernel does with a file on an untrusted path that no `allow` rule names.
    pub fn untrusted_paths(&self) -> (SettingAction, Option<&str>) {
        self.strictest(|header| header.untrusted_paths, SettingAction::Allow)
    }

    /// The strictest `default` of all files, as [`Policy::fileless`]: what the kernel does with
    /// a file no trust source (an `allow` rule, the safety net) names.
    pub fn lockdown(&self) -> (SettingAction, Option<&str>) {
        self.strictest(|header| header.lockdown, SettingAction::Allow)
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

#[cfg(test)]
mod tests {
    use super::{testing::*, *};

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
    fn the_strictest_untrusted_paths_and_default_apply_and_bad_ones_are_located() {
        type Applied = fn(&Policy) -> (SettingAction, Option<&str>);
        let settings: [(&str, Applied); 2] = [
            ("untrusted_paths", Policy::untrusted_paths),
            ("default", Policy::lockdown),
        ];
        for (key, applied) in settings {
            let text = |name: &str, value: &str| format!("name = \"{name}\"\n{key} = {value}\n");
            let one = parse(&[("a.toml", "name = \"a\"\n")]).unwrap();
            assert_eq!(applied(&one), (SettingAction::Allow, None), "{key}");
            let (a, b) = (text("a", "\"audit\""), text("b", "\"deny\""));
            let both = parse(&[("a.toml", &a), ("b.toml", &b)]).unwrap();
            assert_eq!(applied(&both), (SettingAction::Deny, Some("b")), "{key}");
            let monitored = text("a", "\"deny\"\nmode = \"monitor\"");
            let monitored = parse(&[("a.toml", &monitored)]).unwrap();
            assert_eq!(applied(&monitored).0, SettingAction::Audit, "{key}");
            let message = single_error(&[("p.toml", &text("p", "\"on\""))]);
            let column = key.len() + 4;
            assert!(
                message.starts_with(&format!("p.toml:2:{column}: {key}: unknown variant `on`")),
                "{message}"
            );
        }
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
}
