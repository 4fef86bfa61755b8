//! A policy file parsed in pieces, each a TOML document of its own, on every CPU: generated
//! policies (a threat feed's hashes, a fleet server's rules) hold hundreds of thousands of rules.

use std::ops::Range;

use super::spec::{MoreRules, PolicyFile, RuleSpec};
use crate::critical::Guard;

/// A parse error, with the byte offset in its file that its span counts from.
pub(super) type ParseError = (usize, toml::de::Error);

/// Roughly how many bytes of a policy file are parsed as one piece.
pub(super) const PIECE_BYTES: usize = 1 << 18;

/// What is done with the rules of one piece of a file, given the file's header, the offset the
/// rules' spans count from, and a guard of the thread's own.
pub(super) type PieceCheck<'a, T> =
    dyn Fn(&PolicyFile, usize, Vec<RuleSpec>, &mut Guard) -> T + Sync + 'a;

/// Parses a policy file and checks its rules: its header and what `check` made of each piece's
/// rules, in order, or an error (of several, the first piece's first, which one parse of the
/// whole may not have reported first). A large file is cut into pieces that are documents of
/// their own, parsed and checked on every CPU: a generated policy of hundreds of thousands of
/// rules then takes a fraction of the time and memory that one parse of the whole needs.
pub(super) fn parse_file<T: Send>(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::testing::{parse, single_error};

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

        proptest! {
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
        }
    }
}
