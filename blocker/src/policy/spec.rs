//! Policy files as serde reads them. Values keep their spans so that every check can say where
//! a value was written.

use serde::Deserialize;
use toml::Spanned;

use super::{Action, Mode, SettingAction};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct PolicyFile {
    pub(super) name: String,
    pub(super) description: Option<String>,
    #[serde(default)]
    pub(super) mode: Mode,
    pub(super) fileless: Option<SettingAction>,
    pub(super) unhashable: Option<SettingAction>,
    pub(super) hash_limit_mib: Option<Spanned<i64>>,
    pub(super) notify_terminal: Option<bool>,
    pub(super) untrusted_paths: Option<SettingAction>,
    /// Lockdown: what happens to files no trust source names.
    #[serde(rename = "default")]
    pub(super) lockdown: Option<SettingAction>,
    #[serde(default)]
    pub(super) rule: Vec<RuleSpec>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RuleSpec {
    pub(super) id: Spanned<String>,
    pub(super) description: Option<String>,
    pub(super) reason: Option<String>,
    pub(super) url: Option<Spanned<String>>,
    pub(super) message: Option<Spanned<String>>,
    pub(super) notify: Option<bool>,
    #[serde(default)]
    pub(super) action: Action,
    #[serde(default)]
    pub(super) sha256: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) paths: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) path_prefixes: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) globs: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) packages: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) flatpak: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) snap: Vec<Spanned<String>>,
    #[serde(default)]
    pub(super) appimage: Vec<AppImageSpec>,
    #[serde(default)]
    pub(super) ban_critical_files: Vec<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct AppImageSpec {
    pub(super) name: Spanned<String>,
    #[serde(default)]
    pub(super) sha256: Vec<Spanned<String>>,
}

/// The rules of a policy file after the piece it starts with, as [`PolicyFile::rule`].
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct MoreRules {
    pub(super) rule: Vec<RuleSpec>,
}
