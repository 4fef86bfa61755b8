//! Turns parsed rules into the entries of the kernel's ban map: every path a rule names becomes
//! the identity of the file there now.

use std::{collections::BTreeMap, io, path::PathBuf};

use blocker_common::{BanEntry, FileKey};

use crate::{
    identity::FileIdentity,
    policy::{Action, Policy},
};

/// What an event needs to know about the rule that matched; indexed by the kernel's `rule_id`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RuleInfo {
    pub id: String,
    pub policy: String,
    pub reason: Option<String>,
    pub action: Action,
}

/// A named path that could not be banned, and why.
#[derive(Debug)]
pub struct Unresolved {
    pub rule: String,
    pub path: PathBuf,
    pub error: io::Error,
}

#[derive(Debug, Default)]
pub struct Resolution {
    pub rules: Vec<RuleInfo>,
    pub entries: BTreeMap<FileKey, BanEntry>,
    /// The banned file behind each entry, for logs.
    pub paths: BTreeMap<FileKey, PathBuf>,
    pub unresolved: Vec<Unresolved>,
}

impl Resolution {
    pub fn rule(&self, rule_id: u32) -> Option<&RuleInfo> {
        self.rules.get(rule_id as usize)
    }
}

/// Resolves every rule against the filesystem as it is now. A file named by several rules is
/// banned by the strictest (deny over audit), then by the first.
pub fn resolve(policy: &Policy) -> Resolution {
    let mut resolution = Resolution::default();
    for (rule_id, rule) in policy.rules.iter().enumerate() {
        let rule_id = u32::try_from(rule_id).expect("fewer than 2^32 rules");
        resolution.rules.push(RuleInfo {
            id: rule.id.clone(),
            policy: rule.policy.clone(),
            reason: rule.reason.clone(),
            action: rule.action,
        });
        for path in &rule.paths {
            let identity = match FileIdentity::of_path(path) {
                Ok(identity) => identity,
                Err(error) => {
                    resolution.unresolved.push(Unresolved {
                        rule: rule.id.clone(),
                        path: path.clone(),
                        error,
                    });
                    continue;
                }
            };
            let entry = identity.ban_entry(rule_id, rule.action.kernel_value());
            let stricter = match resolution.entries.get(&identity.key) {
                None => true,
                Some(existing) => {
                    existing.action != entry.action && entry.action == blocker_common::action::DENY
                }
            };
            if stricter {
                resolution.entries.insert(identity.key, entry);
                resolution.paths.insert(identity.key, path.clone());
            }
        }
    }
    resolution
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;
    use crate::policy::{Location, Rule};

    fn rule(id: &str, action: Action, paths: &[PathBuf]) -> Rule {
        Rule {
            id: id.to_owned(),
            description: None,
            reason: Some(format!("{id} is banned")),
            action,
            paths: paths.to_vec(),
            policy: "test".to_owned(),
            location: Location {
                file: PathBuf::from("test.toml"),
                line: 1,
                column: 1,
            },
        }
    }

    #[test]
    fn resolves_paths_to_identities_and_reports_missing_files() {
        let dir = tempfile::tempdir().unwrap();
        let banned = dir.path().join("banned");
        std::fs::write(&banned, b"x").unwrap();
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&banned, &link).unwrap();
        let missing = dir.path().join("missing");
        let policy = Policy {
            policies: Vec::new(),
            rules: vec![rule(
                "r",
                Action::Deny,
                &[banned.clone(), link, missing.clone()],
            )],
        };
        let resolution = resolve(&policy);
        // The symlink names the same file: one entry.
        assert_eq!(resolution.entries.len(), 1);
        let (key, entry) = resolution.entries.iter().next().unwrap();
        assert_eq!(key.ino, std::fs::metadata(&banned).unwrap().ino());
        assert_eq!(entry.rule_id, 0);
        assert_eq!(entry.action, blocker_common::action::DENY);
        assert_eq!(resolution.unresolved.len(), 1);
        assert_eq!(resolution.unresolved[0].path, missing);
        assert_eq!(
            resolution.unresolved[0].error.kind(),
            io::ErrorKind::NotFound
        );
        assert_eq!(
            resolution.rule(0).unwrap().reason.as_deref(),
            Some("r is banned")
        );
    }

    #[test]
    fn deny_wins_over_audit_then_first_rule_wins() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        std::fs::write(&file, b"x").unwrap();
        let both = |rules| {
            resolve(&Policy {
                policies: Vec::new(),
                rules,
            })
        };
        let audit_then_deny = both(vec![
            rule("audit", Action::Audit, std::slice::from_ref(&file)),
            rule("deny", Action::Deny, std::slice::from_ref(&file)),
        ]);
        assert_eq!(audit_then_deny.entries.values().next().unwrap().rule_id, 1);
        let deny_then_deny = both(vec![
            rule("first", Action::Deny, std::slice::from_ref(&file)),
            rule("second", Action::Deny, std::slice::from_ref(&file)),
        ]);
        assert_eq!(deny_then_deny.entries.values().next().unwrap().rule_id, 0);
    }
}
