//! The glob syntax of policies. Checking a policy and resolving it both go through here, so a
//! glob that passes the check is matched as it was checked.

use std::path::PathBuf;

use globset::{Glob, GlobBuilder, GlobMatcher};

/// Compiles a glob the way blocker matches it: `*` and `?` stay within one path component.
pub fn compile_glob(pattern: &str) -> Result<GlobMatcher, String> {
    parse_glob(pattern).map(|glob| glob.compile_matcher())
}

/// Parses a glob, which finds every error in it; compiling its matcher costs far more, so
/// checking a policy does that only for globs that may match a critical file.
fn parse_glob(pattern: &str) -> Result<Glob, String> {
    GlobBuilder::new(pattern)
        .literal_separator(true)
        .build()
        .map_err(|error| error.kind().to_string())
}

/// The characters of a glob's classes (`[a-z]`), alternates (`{a,b}`) and escapes: the only
/// syntax globset can find errors in.
const GLOB_SYNTAX_THAT_CAN_FAIL: [char; 5] = ['[', ']', '{', '}', '\\'];

/// Finds every error in a glob. Parsing one costs about as much as the rest of a rule's checks,
/// and generated policies hold many globs of only literals, `*`, `?` and `**`, which cannot be
/// wrong: only the others are parsed.
pub(super) fn check_glob(pattern: &str) -> Result<(), String> {
    if pattern.contains(GLOB_SYNTAX_THAT_CAN_FAIL) {
        parse_glob(pattern)?;
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_bases_stop_at_the_first_wildcard() {
        assert_eq!(glob_base("/opt/wechat/**"), PathBuf::from("/opt/wechat"));
        assert_eq!(glob_base("/home/*/Apps/x"), PathBuf::from("/home"));
        assert_eq!(glob_base("/usr/bin/we?hat"), PathBuf::from("/usr/bin"));
        let matcher = compile_glob("/home/*/Applications/*.AppImage").unwrap();
        assert!(matcher.is_match("/home/alice/Applications/WeChat.AppImage"));
        assert!(!matcher.is_match("/home/alice/x/Applications/WeChat.AppImage"));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// A glob without classes, alternates or escapes is not parsed when checked:
            /// globset finds no error in any of them.
            #[test]
            fn globs_without_fallible_syntax_always_parse(pattern in "[^\\[\\]{}\\\\]{0,40}") {
                prop_assert!(!pattern.contains(GLOB_SYNTAX_THAT_CAN_FAIL));
                prop_assert!(parse_glob(&pattern).is_ok(), "{pattern}");
            }
        }
    }
}
