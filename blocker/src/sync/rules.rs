//! The rules a Santa sync server gave this machine, kept between syncs, and the one blocker
//! policy file they become.
//!
//! Precedence: the synced rules form a policy of their own beside the local policy files. A
//! synced `ALLOWLIST` only takes a hash out of the synced blocklist (a later rule for the same
//! hash replaces an earlier one, as in Santa's database); it never unbans what a local policy
//! file bans, as Santa's static rules beat synced ones.

use std::{
    collections::{BTreeMap, HashMap},
    fmt::Write as _,
};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::escape::toml_string;

use super::protocol::{DownloadedRule, ProtocolEnum, RulePolicy, RuleType, SyncType};

/// The name of the synced policy, in status and events.
pub const POLICY_NAME: &str = "santa-sync";
/// Its file in the policy directory.
pub const POLICY_FILE_NAME: &str = "santa-sync.toml";
/// Hashes per rule of the synced policy: enough rules that a large file is parsed in parallel
/// pieces, few enough that the file stays compact.
const HASHES_PER_RULE: usize = 2000;
/// The reason of a synced ban with no `custom_msg`.
const DEFAULT_REASON: &str = "banned by the fleet's Santa sync server";

/// What a synced BINARY rule does with its hash.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    Block,
    /// Blocked, the user not notified (Santa's `SILENT_BLOCKLIST`).
    SilentBlock,
    /// Not blocked by the synced policy.
    Allow,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedRule {
    pub verdict: Verdict,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub custom_msg: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none", default)]
    pub custom_url: Option<String>,
}

/// The synced BINARY rules, by lowercase SHA-256.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SyncedRules {
    pub binary: BTreeMap<String, SyncedRule>,
}

/// What one sync changed, and what it could not apply.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Changes {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
    /// Rules skipped because they have no meaning on Linux, by rule type or policy
    /// (`CERTIFICATE`, `TEAMID`, `SIGNINGID`, `CDHASH`, `CEL`).
    pub skipped: BTreeMap<String, usize>,
}

impl Changes {
    pub fn skipped_total(&self) -> usize {
        self.skipped.values().sum()
    }

    /// The skipped rules for people: `1 CERTIFICATE, 2 TEAMID`.
    pub fn skipped_list(&self) -> String {
        let counts: Vec<String> = self
            .skipped
            .iter()
            .map(|(kind, count)| format!("{count} {kind}"))
            .collect();
        counts.join(", ")
    }
}

impl SyncedRules {
    /// The rules after a sync of `sync_type` that downloaded `downloaded` (every page, in
    /// order), and what changed. Nothing is applied here: the caller keeps the result only once
    /// the policy it makes is installed.
    pub fn after(&self, sync_type: SyncType, downloaded: &[DownloadedRule]) -> (Self, Changes) {
        let mut next = if sync_type.is_clean() {
            Self::default()
        } else {
            self.clone()
        };
        let mut changes = Changes::default();
        for rule in downloaded {
            let skipped = match (rule.rule_type, rule.policy) {
                (RuleType::Binary, RulePolicy::Cel) => Some(RulePolicy::Cel.name()),
                (RuleType::Binary, _) => None,
                (other, _) => Some(other.name()),
            };
            if let Some(name) = skipped {
                *changes.skipped.entry(name.to_owned()).or_default() += 1;
                continue;
            }
            let verdict = match rule.policy {
                RulePolicy::Remove => {
                    next.binary.remove(&rule.identifier);
                    continue;
                }
                RulePolicy::Allowlist | RulePolicy::AllowlistCompiler => Verdict::Allow,
                RulePolicy::Blocklist => Verdict::Block,
                RulePolicy::SilentBlocklist => Verdict::SilentBlock,
                RulePolicy::Cel => unreachable!("skipped above"),
            };
            next.binary.insert(
                rule.identifier.clone(),
                SyncedRule {
                    verdict,
                    custom_msg: rule.custom_msg.clone(),
                    custom_url: rule.custom_url.clone(),
                },
            );
        }
        for (hash, rule) in &next.binary {
            match self.binary.get(hash) {
                None => changes.added += 1,
                Some(before) if before != rule => changes.changed += 1,
                Some(_) => {}
            }
        }
        changes.removed = self
            .binary
            .keys()
            .filter(|hash| !next.binary.contains_key(*hash))
            .count();
        (next, changes)
    }

    /// Hashes the synced policy bans.
    pub fn banned(&self) -> usize {
        self.binary
            .values()
            .filter(|rule| rule.verdict != Verdict::Allow)
            .count()
    }

    /// A digest of the rules, sent in preflight and postflight so that a server can tell that
    /// this machine holds what it sent.
    pub fn hash(&self) -> String {
        let mut digest = Sha256::new();
        for (hash, rule) in &self.binary {
            let fields = [
                hash.as_str(),
                verdict_name(rule.verdict),
                rule.custom_msg.as_deref().unwrap_or(""),
                rule.custom_url.as_deref().unwrap_or(""),
            ];
            for field in fields {
                digest.update((field.len() as u64).to_le_bytes());
                digest.update(field);
            }
        }
        crate::scan::to_hex(&digest.finalize().into())
    }

    /// The policy file of the synced bans: one rule per message, URL and silence, each cut
    /// into rules of [`HASHES_PER_RULE`] hashes. `server` is named in its header.
    pub fn policy(&self, server: &str) -> String {
        let mut groups: BTreeMap<BanGroup<'_>, Vec<&str>> = BTreeMap::new();
        for (hash, rule) in &self.binary {
            let silent = match rule.verdict {
                Verdict::Allow => continue,
                Verdict::Block => false,
                Verdict::SilentBlock => true,
            };
            groups
                .entry((
                    silent,
                    rule.custom_msg.as_deref(),
                    rule.custom_url.as_deref(),
                ))
                .or_default()
                .push(hash);
        }
        let mut policy = format!(
            "# Written by `blocker sync` from the Santa sync server; the next sync replaces it.\n\
             name = {}\ndescription = {}\n",
            toml_string(POLICY_NAME),
            toml_string(&format!("Rules from the Santa sync server {server}"))
        );
        let mut ids_taken: HashMap<String, usize> = HashMap::new();
        for ((silent, message, url), hashes) in groups {
            let base = group_id(silent, message, url);
            let copies = ids_taken.entry(base.clone()).or_default();
            *copies += 1;
            let base = if *copies > 1 {
                format!("{base}-{copies}")
            } else {
                base
            };
            let chunks = hashes.chunks(HASHES_PER_RULE);
            let several = chunks.len() > 1;
            for (index, chunk) in chunks.enumerate() {
                let id = if several {
                    format!("{base}.{}", index + 1)
                } else {
                    base.clone()
                };
                let _ = write!(
                    policy,
                    "\n[[rule]]\nid = {}\nreason = {}\n",
                    toml_string(&id),
                    toml_string(message.unwrap_or(DEFAULT_REASON))
                );
                if let Some(message) = message.filter(|message| !message.trim().is_empty()) {
                    let _ = writeln!(
                        policy,
                        "message = {}",
                        toml_string(within_bytes(message, MAX_MESSAGE_BYTES))
                    );
                }
                if silent {
                    policy.push_str(
                        "description = \"SILENT_BLOCKLIST: the server asked that users not be notified\"\n\
                         notify = false\n",
                    );
                }
                if let Some(url) = url {
                    let _ = writeln!(policy, "url = {}", toml_string(&synced_url(url)));
                }
                policy.push_str("sha256 = [");
                for (position, hash) in chunk.iter().enumerate() {
                    if position > 0 {
                        policy.push(',');
                    }
                    policy.push('"');
                    policy.push_str(hash);
                    policy.push('"');
                }
                policy.push_str("]\n");
            }
        }
        policy
    }
}

/// Longest synced `custom_msg` kept whole; the policy's limit for a rule's `message`.
const MAX_MESSAGE_BYTES: usize = 1024;

/// Santa's placeholders in a `custom_url`, and blocker's for them.
const SANTA_PLACEHOLDERS: [(&str, &str); 3] = [
    ("%file_sha%", "{sha256}"),
    ("%file_identifier%", "{sha256}"),
    ("%machine_id%", "{machine_id}"),
];

/// A synced `custom_url` in blocker's terms: Santa's placeholders become blocker's, and braces
/// of the server's own are percent-encoded, as in a URL they must be, so that no server's URL
/// makes the synced policy unreadable.
pub(crate) fn synced_url(url: &str) -> String {
    let mut url = url.replace('{', "%7B").replace('}', "%7D");
    for (santa, blocker) in SANTA_PLACEHOLDERS {
        url = url.replace(santa, blocker);
    }
    url
}

/// The longest start of `text` within `limit` bytes that ends on a character.
fn within_bytes(text: &str, limit: usize) -> &str {
    let mut end = text.len().min(limit);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// Synced bans that make one rule: silent or not, with their message and URL.
type BanGroup<'a> = (bool, Option<&'a str>, Option<&'a str>);

fn verdict_name(verdict: Verdict) -> &'static str {
    match verdict {
        Verdict::Block => RulePolicy::Blocklist.name(),
        Verdict::SilentBlock => RulePolicy::SilentBlocklist.name(),
        Verdict::Allow => RulePolicy::Allowlist.name(),
    }
}

/// The id of the rules of one group: `santa-blocklist` or `santa-silent-blocklist`, with a
/// digest of the message and URL when the server gave either, so ids stay the same across
/// syncs.
fn group_id(silent: bool, message: Option<&str>, url: Option<&str>) -> String {
    let kind = if silent {
        "santa-silent-blocklist"
    } else {
        "santa-blocklist"
    };
    if message.is_none() && url.is_none() {
        return kind.to_owned();
    }
    let mut digest = Sha256::new();
    for field in [message, url] {
        let field = field.unwrap_or("");
        digest.update((field.len() as u64).to_le_bytes());
        digest.update(field);
    }
    let digest = crate::scan::to_hex(&digest.finalize().into());
    format!("{kind}-{}", &digest[..12])
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::policy;

    fn hash(n: usize) -> String {
        format!("{n:064x}")
    }

    fn rule(n: usize, policy: RulePolicy) -> DownloadedRule {
        DownloadedRule {
            identifier: hash(n),
            policy,
            rule_type: RuleType::Binary,
            custom_msg: None,
            custom_url: None,
        }
    }

    fn parsed(rules: &SyncedRules) -> Vec<policy::Rule> {
        let source = rules.policy("https://sync.example/v1/santa");
        policy::parse_sources(&[(PathBuf::from(POLICY_FILE_NAME), source)])
            .unwrap_or_else(|errors| panic!("{errors}"))
            .rules
    }

    #[test]
    fn a_normal_sync_adds_replaces_and_removes_a_clean_one_starts_over() {
        let (first, changes) = SyncedRules::default().after(
            SyncType::Normal,
            &[
                rule(1, RulePolicy::Blocklist),
                rule(2, RulePolicy::Blocklist),
                rule(3, RulePolicy::SilentBlocklist),
            ],
        );
        assert_eq!((changes.added, changes.changed, changes.removed), (3, 0, 0));
        let (second, changes) = first.after(
            SyncType::Normal,
            &[
                rule(1, RulePolicy::Remove),
                rule(2, RulePolicy::Allowlist),
                rule(9, RulePolicy::Remove),
            ],
        );
        assert_eq!((changes.added, changes.changed, changes.removed), (0, 1, 1));
        assert_eq!(second.banned(), 1);
        let (clean, changes) = second.after(SyncType::Clean, &[rule(4, RulePolicy::Blocklist)]);
        assert_eq!((changes.added, changes.changed, changes.removed), (1, 0, 2));
        assert_eq!(clean.binary.keys().collect::<Vec<_>>(), [&hash(4)]);
        assert_ne!(clean.hash(), second.hash());
    }

    #[test]
    fn within_one_sync_the_latest_rule_for_a_hash_wins() {
        let (rules, _) = SyncedRules::default().after(
            SyncType::Normal,
            &[
                rule(1, RulePolicy::Blocklist),
                rule(1, RulePolicy::Allowlist),
            ],
        );
        assert_eq!(rules.banned(), 0);
        assert!(parsed(&rules).is_empty(), "an empty synced policy is valid");
    }

    #[test]
    fn rules_without_a_meaning_on_linux_are_counted_not_applied() {
        let mut team = rule(0, RulePolicy::Blocklist);
        team.rule_type = RuleType::TeamId;
        team.identifier = "EQHXZ8M8AV".to_owned();
        let mut certificate = rule(1, RulePolicy::Blocklist);
        certificate.rule_type = RuleType::Certificate;
        let (rules, changes) = SyncedRules::default().after(
            SyncType::Normal,
            &[team.clone(), team, certificate, rule(2, RulePolicy::Cel)],
        );
        assert!(rules.binary.is_empty());
        assert_eq!(
            changes.skipped,
            BTreeMap::from([
                ("CEL".to_owned(), 1),
                ("CERTIFICATE".to_owned(), 1),
                ("TEAMID".to_owned(), 2)
            ])
        );
        assert_eq!(changes.skipped_total(), 4);
    }

    #[test]
    fn the_policy_carries_messages_urls_and_silence_into_its_rules() {
        let mut told = rule(1, RulePolicy::Blocklist);
        told.custom_msg = Some("Ask \"IT\"\n\u{7f}\\ first".to_owned());
        told.custom_url = Some("https://wiki.example/why?q=\"".to_owned());
        let (rules, _) = SyncedRules::default().after(
            SyncType::Normal,
            &[
                told.clone(),
                rule(2, RulePolicy::SilentBlocklist),
                rule(3, RulePolicy::Blocklist),
                rule(4, RulePolicy::Allowlist),
            ],
        );
        let parsed = parsed(&rules);
        assert_eq!(parsed.len(), 3);
        let by_id = |prefix: &str| {
            parsed
                .iter()
                .find(|rule| rule.id.starts_with(prefix))
                .unwrap_or_else(|| panic!("no rule {prefix}: {parsed:?}"))
        };
        let plain = parsed
            .iter()
            .find(|rule| rule.id == "santa-blocklist")
            .unwrap();
        assert_eq!(plain.reason.as_deref(), Some(DEFAULT_REASON));
        assert_eq!(plain.identifiers.sha256.len(), 1);
        let custom = by_id("santa-blocklist-");
        assert_eq!(custom.reason, told.custom_msg);
        assert_eq!(custom.telling.message, told.custom_msg);
        assert!(custom.telling.desktop);
        assert_eq!(custom.url, told.custom_url);
        assert_eq!(custom.policy, POLICY_NAME);
        let silent = by_id("santa-silent-blocklist");
        assert!(silent.description.as_deref().unwrap().contains("SILENT"));
        assert_eq!(silent.action, policy::Action::Deny);
        assert!(!silent.telling.desktop && !silent.telling.terminal);
        assert_eq!(plain.telling, policy::Telling::default());
    }

    #[test]
    fn synced_urls_use_blockers_placeholders_and_messages_stay_within_bounds() {
        let mut told = rule(1, RulePolicy::Blocklist);
        told.custom_url = Some("https://wiki.example/{x}?sha=%file_sha%&m=%machine_id%".to_owned());
        told.custom_msg = Some("é".repeat(MAX_MESSAGE_BYTES));
        let (rules, _) = SyncedRules::default().after(SyncType::Normal, &[told]);
        let parsed = parsed(&rules);
        assert_eq!(
            parsed[0].url.as_deref(),
            Some("https://wiki.example/%7Bx%7D?sha={sha256}&m={machine_id}")
        );
        let message = parsed[0].telling.message.as_deref().unwrap();
        assert_eq!(message.len(), MAX_MESSAGE_BYTES);
    }

    #[test]
    fn large_rule_sets_are_cut_into_rules() {
        let downloaded: Vec<_> = (0..HASHES_PER_RULE * 2 + 1)
            .map(|n| rule(n, RulePolicy::Blocklist))
            .collect();
        let (rules, _) = SyncedRules::default().after(SyncType::Normal, &downloaded);
        let parsed = parsed(&rules);
        let ids: Vec<_> = parsed.iter().map(|rule| rule.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "santa-blocklist.1",
                "santa-blocklist.2",
                "santa-blocklist.3"
            ]
        );
        let hashes: usize = parsed
            .iter()
            .map(|rule| rule.identifiers.sha256.len())
            .sum();
        assert_eq!(hashes, downloaded.len());
    }
}
