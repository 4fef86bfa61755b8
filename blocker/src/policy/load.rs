//! A policy directory's files, read and assembled into one policy.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
};

use super::{
    check::{check_hash_limit, check_rule, CheckedRule},
    location::{deserialize_error, LineStarts, PolicyError, PolicyErrors},
    pieces::{parse_file, PIECE_BYTES},
    spec::{PolicyFile, RuleSpec},
    Policy, PolicyHeader,
};
use crate::{critical::Guard, escape::escaped};

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
        let hash_limit_mib = match parsed
            .hash_limit_mib
            .map(|limit| check_hash_limit(&lines, &limit))
            .transpose()
        {
            Ok(limit) => limit,
            Err(error) => {
                errors.push(error);
                None
            }
        };
        policy.policies.push(PolicyHeader {
            file: file.clone(),
            name: parsed.name,
            description: parsed.description,
            mode: parsed.mode,
            fileless: parsed.fileless,
            unhashable: parsed.unhashable,
            hash_limit_mib,
            untrusted_paths: parsed.untrusted_paths,
            lockdown: parsed.lockdown,
        });
    }
    if errors.is_empty() {
        Ok(policy)
    } else {
        Err(PolicyErrors(errors))
    }
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

    mod properties {
        use super::*;
        use crate::policy::testing::rule_id;
        use proptest::prelude::*;

        proptest! {
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
