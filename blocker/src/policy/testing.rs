//! Helpers the tests of every policy module share.

use std::path::PathBuf;

use proptest::strategy::Strategy;

use super::{parse_sources, Policy, PolicyErrors};

/// A valid policy of two rules, the first denying, the second auditing.
pub(super) const GOOD: &str = r#"
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

/// Parses files given as `(name, contents)` against this machine's critical files.
pub(super) fn parse(files: &[(&str, &str)]) -> Result<Policy, PolicyErrors> {
    let sources: Vec<_> = files
        .iter()
        .map(|(name, text)| (PathBuf::from(name), text.to_string()))
        .collect();
    parse_sources(&sources)
}

/// The one error parsing `files` finds, as a person reads it.
pub(super) fn single_error(files: &[(&str, &str)]) -> String {
    let errors = parse(files).unwrap_err().0;
    assert_eq!(errors.len(), 1, "{errors:?}");
    errors[0].to_string()
}

/// Valid rule ids.
pub(super) fn rule_id() -> impl Strategy<Value = String> {
    "[A-Za-z0-9_.-]{1,20}"
}
