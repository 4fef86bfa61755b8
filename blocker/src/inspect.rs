//! The commands that look without enforcing: `check`, `resolve`, `hash` and `explain`.

use crate::escape::{escaped, Lossless};
use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::ExitCode,
};

use anyhow::{Context, Result};
use serde_json::{json, Value};

use crate::{
    budget::Budget,
    identity::{device_text, FileIdentity},
    policy::{self, Policy, SettingAction},
    prepare::{prepare, Contents, Prepared},
    resolve::{self, protected_files, Resolution, Via},
    scan::{self, to_hex, HashedFile, ScanOptions},
};

/// Exit status of `explain` for a file that may run (0 means banned or refused for its path, 2 an
/// error).
pub const EXIT_NOT_BANNED: u8 = 1;

/// `blocker check DIR`: parses and validates, touching nothing else.
pub fn check(policy_dir: &Path) -> Result<ExitCode> {
    let policy = policy::load_dir(policy_dir)?;
    let mut rules_per_file: HashMap<&Path, usize> = HashMap::new();
    for rule in &policy.rules {
        *rules_per_file.entry(&rule.location.file).or_default() += 1;
    }
    for header in &policy.policies {
        let rules = rules_per_file
            .get(header.file.as_path())
            .copied()
            .unwrap_or_default();
        println!(
            "{}: policy `{}` ({}), {rules} rules",
            escaped(&header.file),
            escaped(&header.name),
            header.mode
        );
    }
    println!(
        "ok: {} policies, {} rules",
        policy.policies.len(),
        policy.rules.len()
    );
    Ok(ExitCode::SUCCESS)
}

/// `blocker resolve DIR`: what every rule names on this machine.
pub fn resolve(policy_dir: &Path, scan_options: &ScanOptions, as_json: bool) -> Result<ExitCode> {
    let Prepared { resolution, .. } =
        prepare(policy_dir, Contents::Scan(scan_options), Budget::default())?;
    if as_json {
        println!(
            "{}",
            serde_json::to_string_pretty(&resolution_json(&resolution))?
        );
    } else {
        print_resolution(&resolution);
    }
    Ok(ExitCode::SUCCESS)
}

/// Whether the kernel entry for this match's file (in the ban map, or in the allowed-files map
/// for an `allow` rule) is this match's rule.
fn is_in_force(resolution: &Resolution, rule_id: u32, identity: &FileIdentity) -> bool {
    let map = match resolution.own_rule(rule_id).action {
        policy::Action::Allow => &resolution.allowed,
        policy::Action::Audit | policy::Action::Deny => &resolution.entries,
    };
    map.get(&identity.key)
        .is_some_and(|entry| entry.rule_id == rule_id)
}

fn print_resolution(resolution: &Resolution) {
    for rule in &resolution.rules {
        let rule_id = rule.rule_id;
        println!(
            "rule {} ({}, policy {}):",
            rule.id,
            rule.action.name(),
            rule.policy
        );
        for found in resolution.matches.iter().filter(|m| m.rule_id == rule_id) {
            let note = if is_in_force(resolution, rule_id, &found.identity()) {
                ""
            } else {
                " [another rule or the protection list decides]"
            };
            println!(
                "  {}  device {} inode {}  via {}{note}",
                escaped(&resolution.paths.path(found.path)),
                device_text(found.identity().key.dev),
                found.key.ino,
                resolution.via(found)
            );
        }
        for missing in resolution.unresolved.iter().filter(|u| u.rule == rule.id) {
            println!("  nothing for {}: {}", missing.via, missing.reason);
        }
    }
    for protected in &resolution.protected {
        println!(
            "never banned: {} (named by rule {}): {}",
            escaped(&protected.path),
            protected.rule,
            protected.why
        );
    }
    for warning in &resolution.warnings {
        println!("warning: {warning}");
    }
    println!(
        "{} rules, {} files banned, {} files allowed, {} identifiers matched nothing",
        resolution.rules.len(),
        resolution.entries.len(),
        resolution.allowed.len(),
        resolution.unresolved.len()
    );
}

fn resolution_json(resolution: &Resolution) -> Value {
    let rules: Vec<Value> = resolution
        .rules
        .iter()
        .map(|rule| {
            let rule_id = rule.rule_id;
            let files: Vec<Value> = resolution
                .matches
                .iter()
                .filter(|m| m.rule_id == rule_id)
                .map(|found| {
                    let mut file = json!({
                        "device": device_text(found.identity().key.dev),
                        "inode": found.key.ino,
                        "generation": found.generation,
                        "via": resolution.via(found).to_string(),
                        "in_force": is_in_force(resolution, rule_id, &found.identity()),
                    });
                    Lossless::of(&resolution.paths.path(found.path)).set_in(&mut file, "path");
                    file
                })
                .collect();
            let unresolved: Vec<Value> = resolution
                .unresolved
                .iter()
                .filter(|u| u.rule == rule.id)
                .map(|u| json!({ "via": u.via.to_string(), "reason": u.reason }))
                .collect();
            let hashes: Vec<String> = resolution
                .hashes
                .iter()
                .filter(|(_, id)| **id == rule_id)
                .map(|(hash, _)| to_hex(hash))
                .collect();
            json!({
                "id": rule.id,
                "policy": rule.policy,
                "action": rule.action.name(),
                "reason": rule.reason,
                "files": files,
                "sha256": hashes,
                "unresolved": unresolved,
            })
        })
        .collect();
    let protected: Vec<Value> = resolution
        .protected
        .iter()
        .map(|p| {
            let mut protected = json!({ "rule": p.rule, "why": p.why });
            Lossless::of(&p.path).set_in(&mut protected, "path");
            protected
        })
        .collect();
    json!({
        "rules": rules,
        "protected": protected,
        "warnings": resolution.warnings,
        "banned_files": resolution.entries.len(),
        "allowed_files": resolution.allowed.len(),
        "scan": resolution.scan.map(|s| json!({
            "candidates": s.candidates, "read": s.read, "cached": s.cached,
            "skipped": s.skipped, "bytes_read": s.bytes_read,
        })),
    })
}

/// A rule that names a file, and how.
struct Verdict {
    rule_id: u32,
    via: Via,
}

/// Every rule naming `file`: by what the resolver found at the named paths, packages and
/// apps, and by the file's own content (no scan needed for one file).
fn verdicts(policy: &Policy, resolution: &Resolution, file: &HashedFile) -> Vec<Verdict> {
    let mut verdicts: Vec<Verdict> = resolution
        .matches
        .iter()
        .filter(|m| m.key == file.identity.key)
        .map(|m| Verdict {
            rule_id: m.rule_id,
            via: resolution.via(m).clone(),
        })
        .collect();
    verdicts.extend(
        resolve::content_matches(policy, file)
            .into_iter()
            .map(|(rule_id, via)| Verdict { rule_id, via }),
    );
    // Deny over audit over allow, then the earliest rule: the same precedence as the ban map.
    verdicts.sort_by_key(|v| resolution.precedence(v.rule_id));
    verdicts
}

fn load_for_lookup(policy_dir: &Path) -> Result<(Policy, Resolution)> {
    let Prepared {
        policy, resolution, ..
    } = prepare(policy_dir, Contents::NotScanned, Budget::default())?;
    Ok((policy, resolution))
}

/// `blocker hash FILE...`: content hash, identity and, given policies, the rule that would
/// match. The first column is the hash, as with `sha256sum`.
pub fn hash(files: &[PathBuf], policy_dir: Option<&Path>) -> Result<ExitCode> {
    let lookup = policy_dir.map(load_for_lookup).transpose()?;
    for path in files {
        let file = scan::hash_file(path).with_context(|| format!("hashing {}", escaped(&path)))?;
        let rule = match &lookup {
            None => String::new(),
            Some((policy, resolution)) => verdicts(policy, resolution, &file)
                .first()
                .map(|v| {
                    let rule = resolution.own_rule(v.rule_id);
                    format!("  rule {} ({}) via {}", rule.id, rule.action.name(), v.via)
                })
                .unwrap_or_else(|| "  no rule".to_owned()),
        };
        println!(
            "{}  {}  device {} inode {}{rule}",
            to_hex(&file.sha256),
            escaped(&path),
            device_text(file.identity.key.dev),
            file.identity.key.ino
        );
    }
    Ok(ExitCode::SUCCESS)
}

/// `blocker explain FILE`: would this file be blocked, by which rule, and if not, why not.
pub fn explain(path: &Path, policy_dir: &Path) -> Result<ExitCode> {
    let (policy, resolution) = load_for_lookup(policy_dir)?;
    let file = scan::hash_file(path).with_context(|| format!("reading {}", escaped(&path)))?;
    let mut verdicts = verdicts(&policy, &resolution, &file);
    let identity = format!(
        "device {} inode {}{}, sha256 {}",
        device_text(file.identity.key.dev),
        file.identity.key.ino,
        file.identity
            .generation
            .map(|g| format!(" generation {g}"))
            .unwrap_or_default(),
        to_hex(&file.sha256)
    );
    let (allows, bans): (Vec<Verdict>, Vec<Verdict>) = verdicts
        .into_iter()
        .partition(|verdict| resolution.own_rule(verdict.rule_id).action == policy::Action::Allow);
    verdicts = bans;
    if let Some(critical) = protected_files().get(&file.identity.key) {
        let (allowed, ignored): (Vec<Verdict>, Vec<Verdict>) = verdicts
            .into_iter()
            .partition(|verdict| resolution.may_ban_critical(verdict.rule_id, critical));
        if allowed.is_empty() {
            println!(
                "{}: never banned nor refused (the safety net): {} ({identity})",
                escaped(&path),
                critical.why
            );
            for verdict in &ignored {
                let rule = resolution.own_rule(verdict.rule_id);
                println!(
                    "  rule {} names it via {}, and is ignored for it",
                    rule.id, verdict.via
                );
            }
            return Ok(ExitCode::from(EXIT_NOT_BANNED));
        }
        verdicts = allowed;
    }
    let Some(decisive) = verdicts.first() else {
        return explain_path(path, &resolution, allows.first(), &file.identity, &identity);
    };
    let rule = resolution.own_rule(decisive.rule_id);
    let verb = match rule.action {
        policy::Action::Deny => "banned",
        policy::Action::Audit => "allowed and audited",
        policy::Action::Allow => unreachable!("allow rules are apart"),
    };
    println!(
        "{}: {verb} by rule {} (policy {}) via {}",
        escaped(&path),
        rule.id,
        rule.policy,
        decisive.via
    );
    if let Some(reason) = &rule.reason {
        println!("  reason: {reason}");
    }
    println!("  {identity}");
    for other in &verdicts[1..] {
        let rule = resolution.own_rule(other.rule_id);
        println!(
            "  also named by rule {} ({}) via {}",
            rule.id,
            rule.action.name(),
            other.via
        );
    }
    for allow in &allows {
        let rule = resolution.own_rule(allow.rule_id);
        println!(
            "  allowed by rule {} via {}, which a ban overrides",
            rule.id, allow.via
        );
    }
    Ok(if rule.action == policy::Action::Deny {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOT_BANNED)
    })
}

/// The rest of `explain` for a file no rule bans: what lockdown and trusted-path execution do
/// with it.
fn explain_path(
    path: &Path,
    resolution: &Resolution,
    allowed_by: Option<&Verdict>,
    file: &FileIdentity,
    identity: &str,
) -> Result<ExitCode> {
    let rules = resolution.rules.len();
    println!(
        "{}: not banned: none of the {rules} rules bans this file by path, prefix, glob, package, \
         Flatpak app or snap, and none lists its content ({identity})",
        escaped(&path)
    );
    if resolution.lockdown_rule.is_none() && resolution.untrusted_path_rule.is_none() {
        return Ok(ExitCode::from(EXIT_NOT_BANNED));
    }
    if let Some(allow) = allowed_by {
        let rule = resolution.own_rule(allow.rule_id);
        println!(
            "  allowed by rule {} (policy {}) via {}: exempt from lockdown and the trusted-path \
             check",
            rule.id, rule.policy, allow.via
        );
        return Ok(ExitCode::from(EXIT_NOT_BANNED));
    }
    // Without an allow rule and outside the safety net, only the packages trust source puts a
    // file in the allowed files.
    if resolution.allowed.contains_key(&file.key) {
        println!(
            "  trusted: an installed package put it there and it is unchanged (dpkg's \
             database); exempt from lockdown and the trusted-path check"
        );
        return Ok(ExitCode::from(EXIT_NOT_BANNED));
    }
    let verdict = |setting: SettingAction| match setting {
        SettingAction::Deny => "refused",
        SettingAction::Audit | SettingAction::Allow => "audited",
    };
    let mut strictest = SettingAction::Allow;
    if let Some(pseudo_rule) = &resolution.lockdown_rule {
        let setting = resolution.lockdown;
        println!(
            "  {} by lockdown: default = \"{}\" (policy {}), and no allow rule names it",
            verdict(setting),
            setting.name(),
            pseudo_rule.policy
        );
        strictest = strictest.max(setting);
    }
    if let Some(pseudo_rule) = &resolution.untrusted_path_rule {
        let setting = resolution.untrusted_paths;
        let named = format!(
            "untrusted_paths = \"{}\", policy {}",
            setting.name(),
            pseudo_rule.policy
        );
        let untrusted = crate::trusted_path::untrusted(path)
            .with_context(|| format!("checking the directories above {}", escaped(&path)))?;
        match untrusted {
            Some(untrusted) => {
                println!(
                    "  {} as an untrusted path ({named}): {untrusted}; no allow rule names it",
                    verdict(setting)
                );
                strictest = strictest.max(setting);
            }
            None => println!(
                "  on a trusted path: it and every directory above it are root's and writable by \
                 no one else ({named})"
            ),
        }
    }
    Ok(if strictest == SettingAction::Deny {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(EXIT_NOT_BANNED)
    })
}

/// Scan settings from the command line.
pub fn scan_options(roots: Vec<PathBuf>, cache: Option<PathBuf>) -> ScanOptions {
    ScanOptions {
        roots: if roots.is_empty() {
            ScanOptions::default_roots()
        } else {
            roots
        },
        cache_file: cache,
        progress: true,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy_dir(rule: &str) -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join("p.toml"),
            format!("name = \"p\"\n[[rule]]\nid = \"r\"\n{rule}\n"),
        )
        .unwrap();
        dir
    }

    #[test]
    fn explain_refuses_a_policy_that_bans_the_machine() {
        for rule in [
            "path_prefixes = [\"/usr/..\"]",
            "path_prefixes = [\"/proc/self/root\"]",
            "path_prefixes = [\"/bin/..\"]",
            "paths = [\"/bin/../bin/sh\"]",
        ] {
            let dir = policy_dir(rule);
            let error = explain(Path::new("/bin/ls"), dir.path()).unwrap_err();
            let message = format!("{error:#}");
            assert!(message.contains("p.toml:4:"), "{rule}: {message}");
            assert!(message.contains("would ban"), "{rule}: {message}");
        }
    }

    #[test]
    fn explain_says_a_named_critical_file_is_banned_only_with_the_override() {
        let dir = policy_dir("paths = [\"/bin/sh\"]\nban_critical_files = [\"/bin/sh\"]");
        let banned = explain(Path::new("/bin/sh"), dir.path()).unwrap();
        assert_eq!(banned, ExitCode::SUCCESS);
        let dir = policy_dir("paths = [\"/opt/x\"]");
        let not_banned = explain(Path::new("/bin/sh"), dir.path()).unwrap();
        assert_eq!(not_banned, ExitCode::from(EXIT_NOT_BANNED));
    }

    #[test]
    fn explain_refuses_what_lockdown_and_trusted_paths_refuse_unless_allowed() {
        use std::os::unix::fs::PermissionsExt;
        let shared = tempfile::tempdir().unwrap();
        std::fs::set_permissions(shared.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
        let program = shared.path().join("program");
        std::fs::write(&program, b"#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let explained = |header: &str, path: &Path| {
            let dir = tempfile::tempdir().unwrap();
            let allow = format!(
                "[[rule]]\nid = \"tool\"\naction = \"allow\"\npaths = [{:?}]\n",
                program.display().to_string()
            );
            let text = format!("name = \"p\"\n{header}\n{allow}");
            std::fs::write(dir.path().join("p.toml"), text).unwrap();
            explain(path, dir.path()).unwrap()
        };
        let refused = ExitCode::SUCCESS;
        let runs = ExitCode::from(EXIT_NOT_BANNED);
        let ls = Path::new("/bin/ls");
        assert_eq!(explained("untrusted_paths = \"deny\"", ls), runs);
        assert_eq!(explained("untrusted_paths = \"audit\"", ls), runs);
        let unpackaged = shared.path().join("unpackaged");
        std::fs::copy(&program, &unpackaged).unwrap();
        assert_eq!(explained("default = \"deny\"", &unpackaged), refused);
        assert_eq!(explained("default = \"audit\"", &unpackaged), runs);
        // Where dpkg installed it, the packages trust source vouches for it.
        if Path::new("/var/lib/dpkg/info/coreutils.list").exists() {
            assert_eq!(explained("default = \"deny\"", ls), runs);
        }
        // Named by the allow rule: exempt from both.
        assert_eq!(explained("untrusted_paths = \"deny\"", &program), runs);
        assert_eq!(explained("default = \"deny\"", &program), runs);
        // The safety net.
        assert_eq!(explained("default = \"deny\"", Path::new("/bin/sh")), runs);
        let unnamed = shared.path().join("copy");
        std::fs::copy(&program, &unnamed).unwrap();
        assert_eq!(explained("untrusted_paths = \"deny\"", &unnamed), refused);
        assert_eq!(explained("untrusted_paths = \"audit\"", &unnamed), runs);
    }
}
