//! The README's kernel table: for each Debian kernel the VM tests boot, what blocker turned on
//! there and which tests showed it, written from the results files of a full `cargo xtask test`
//! (`target/vm/results/<suite>.json`, see `vm::results_json`), never by hand.

use std::{fs, path::Path};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{kernels::Suite, marked_section::Markers};

const MARKERS: Markers = Markers {
    begin: "<!-- kernel-table: written by `cargo xtask test` from its last full run -->",
    end: "<!-- kernel-table end -->",
};

/// The features in the table, each with the VM test group (`vm_<module>`, a module of
/// tests/tests/vm/) that exercises it.
const COLUMNS: [(&str, &str, &str); 5] = [
    ("Content checks at exec", "exec_content", "vm_ima"),
    (
        "Executable-mapping checks",
        "executable_mappings",
        "vm_side_doors",
    ),
    (
        "Content checks of mappings",
        "mapping_content",
        "vm_side_doors",
    ),
    (
        "Lockdown following package updates",
        "package_updates",
        "vm_lockdown",
    ),
    ("Tamper protection", "tamper_protection", "vm_tamper"),
];

/// Rewrites the table in `readme` from the results of every suite.
pub fn update_readme(root: &Path, readme: &Path) -> Result<()> {
    let mut results = Vec::new();
    for suite in Suite::ALL {
        let path = root
            .join("target/vm/results")
            .join(format!("{}.json", suite.name()));
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let value: Value =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        results.push((suite, value));
    }
    MARKERS.rewrite(readme, &render(&results))
}

fn render(results: &[(Suite, Value)]) -> String {
    let features: Vec<&str> = COLUMNS.iter().map(|(name, _, _)| *name).collect();
    let mut table = format!(
        "| Kernel | LSMs | Backend | {} | VM tests |\n|---|---|---|{}---|\n",
        features.join(" | "),
        "---|".repeat(COLUMNS.len())
    );
    for (suite, result) in results {
        let text = |value: &Value| value.as_str().unwrap_or("unknown").to_owned();
        let lsms: Vec<String> = result["lsms"]
            .as_array()
            .map(|lsms| lsms.iter().map(text).collect())
            .unwrap_or_default();
        let mut row = vec![
            format!(
                "{} `{}`",
                suite.description(),
                text(&result["kernel_release"])
            ),
            format!("`{}`", lsms.join(",")),
            text(&result["backend"]),
        ];
        for (_, feature, target) in COLUMNS {
            row.push(format!(
                "{} ({})",
                feature_cell(&result["features"][feature]),
                target_cell(result, target)
            ));
        }
        row.push(format!(
            "{} passed, {} failed",
            result["passed"].as_u64().unwrap_or(0),
            result["failed"].as_u64().unwrap_or(0)
        ));
        table.push_str(&format!("| {} |\n", row.join(" | ")));
    }
    table
}

/// A feature's state, with what is missing when it is not wholly on.
fn feature_cell(feature: &Value) -> String {
    let Some(state) = feature["state"].as_str() else {
        return "unknown".to_owned();
    };
    let mut cell = state.to_owned();
    if let Some(reason) = feature["reason"].as_str() {
        cell.push_str(&format!(": {reason}"));
    }
    let missing: Vec<String> = feature["missing"]
        .as_array()
        .map(|missing| {
            missing
                .iter()
                .map(|program| format!("without `{}`", program["program"].as_str().unwrap_or("?")))
                .collect()
        })
        .unwrap_or_default();
    if !missing.is_empty() {
        cell.push_str(&format!(": {}", missing.join(", ")));
    }
    cell
}

/// How the tests of the group `target` went: `vm_ima 6/6`.
fn target_cell(result: &Value, target: &str) -> String {
    let found = result["targets"]
        .as_array()
        .and_then(|targets| targets.iter().find(|t| t["name"] == target));
    match found {
        Some(found) => {
            let passed = found["passed"].as_u64().unwrap_or(0);
            let failed = found["failed"].as_u64().unwrap_or(0);
            format!("`{target}` {passed}/{}", passed + failed)
        }
        None => format!("`{target}` did not run"),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn renders_a_row_per_kernel_with_features_and_their_tests() {
        let result = json!({
            "kernel_release": "6.12.117+deb13-cloud-amd64",
            "lsms": ["lockdown", "bpf", "ima"],
            "backend": "lsm",
            "passed": 30, "failed": 1,
            "features": {
                "exec_content": {"state": "on"},
                "executable_mappings": {"state": "on"},
                "package_updates": {"state": "on"},
                "tamper_protection": {"state": "partial", "missing": [
                    {"program": "protect_links", "hook": "bpf", "reason": "refused"}
                ]},
            },
            "targets": [
                {"name": "vm_ima", "passed": 6, "failed": 0},
                {"name": "vm_lockdown", "passed": 7, "failed": 0},
                {"name": "vm_tamper", "passed": 1, "failed": 1},
            ],
        });
        let table = render(&[(Suite::Trixie, result)]);
        let row = table.lines().nth(2).unwrap();
        assert_eq!(
            row,
            "| Debian 13 (trixie) `6.12.117+deb13-cloud-amd64` | `lockdown,bpf,ima` | lsm | on \
             (`vm_ima` 6/6) | on (`vm_side_doors` did not run) | unknown (`vm_side_doors` did not \
             run) | on (`vm_lockdown` 7/7) | partial: without `protect_links` (`vm_tamper` \
             1/2) | 30 passed, 1 failed |"
        );
    }

    #[test]
    fn the_readme_has_the_markers() {
        let readme = include_str!("../../README.md");
        assert!(MARKERS.replace(readme, "new\n").is_ok());
    }
}
