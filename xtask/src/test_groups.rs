//! The VM tests are one test binary (tests/tests/vm/main.rs) with a module per area; each module
//! runs as a process of its own and is reported as `vm_<module>`, the name `--vm-test`, the VM's
//! console, the results files and the README's kernel table use.

use anyhow::{bail, Result};

/// Before a module's name in the name of its test group.
const NAME_PREFIX: &str = "vm_";

/// One module of the VM test binary, with its tests' full names (`lsm::banned_exec_fails`).
#[derive(Debug, PartialEq, Eq)]
pub struct TestGroup {
    pub module: String,
    pub tests: Vec<String>,
}

impl TestGroup {
    /// `vm_lsm` for the module `lsm`.
    pub fn name(&self) -> String {
        format!("{NAME_PREFIX}{}", self.module)
    }
}

/// Groups `tests` (full names, as `--list` gives them) by their top module, in the order the
/// modules first appear; a test outside every module is an error.
pub fn by_module(tests: &[String]) -> Result<Vec<TestGroup>> {
    let mut groups: Vec<TestGroup> = Vec::new();
    for test in tests {
        let Some((module, _)) = test.split_once("::") else {
            bail!(
                "the VM test `{test}` is in no module: each area of tests/tests/vm/ is a module \
                 of main.rs, which holds no test itself"
            );
        };
        match groups.iter_mut().find(|group| group.module == module) {
            Some(group) => group.tests.push(test.clone()),
            None => groups.push(TestGroup {
                module: module.to_owned(),
                tests: vec![test.clone()],
            }),
        }
    }
    Ok(groups)
}

/// The `groups` that `chosen` names, each as `vm_<module>` or `<module>`; all of them if
/// `chosen` is empty. A name that is no group's is an error listing the groups.
pub fn select(groups: Vec<TestGroup>, chosen: &[String]) -> Result<Vec<TestGroup>> {
    let module_of = |name: &str| name.strip_prefix(NAME_PREFIX).unwrap_or(name).to_owned();
    let chosen: Vec<String> = chosen.iter().map(|name| module_of(name)).collect();
    let unknown: Vec<&String> = chosen
        .iter()
        .filter(|module| !groups.iter().any(|group| &group.module == *module))
        .collect();
    if !unknown.is_empty() {
        let known: Vec<String> = groups.iter().map(TestGroup::name).collect();
        bail!(
            "no VM test group {} (the modules of tests/tests/vm/main.rs): there are {}",
            unknown
                .iter()
                .map(|module| format!("{NAME_PREFIX}{module}"))
                .collect::<Vec<_>>()
                .join(", "),
            known.join(", ")
        );
    }
    Ok(groups
        .into_iter()
        .filter(|group| chosen.is_empty() || chosen.contains(&group.module))
        .collect())
}

/// The shell command that runs exactly `tests` of the test binary at `binary`, one at a time as
/// they share the kernel. `--exact`, since a plain filter runs every test whose name holds it.
///
/// # Panics
///
/// If `tests` is empty: libtest would run every test.
pub fn shell_command(binary: &str, tests: &[&str]) -> String {
    assert!(!tests.is_empty(), "no tests to run exactly");
    format!("{binary} --test-threads=1 --exact {}", tests.join(" "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(tests: &[&str]) -> Vec<String> {
        tests.iter().map(|test| test.to_string()).collect()
    }

    fn group(module: &str, tests: &[&str]) -> TestGroup {
        TestGroup {
            module: module.to_owned(),
            tests: names(tests),
        }
    }

    #[test]
    fn groups_tests_by_their_top_module() {
        let groups = by_module(&names(&[
            "ima::hashes",
            "ima::caches",
            "lsm::denies",
            "tamper::reused_pid::is_refused",
        ]))
        .unwrap();
        assert_eq!(
            groups,
            [
                group("ima", &["ima::hashes", "ima::caches"]),
                group("lsm", &["lsm::denies"]),
                group("tamper", &["tamper::reused_pid::is_refused"]),
            ]
        );
        assert_eq!(groups[2].name(), "vm_tamper");
        let outside = by_module(&names(&["lsm::denies", "stray"])).unwrap_err();
        assert!(outside.to_string().contains("`stray` is in no module"));
    }

    #[test]
    fn selects_groups_by_either_name() {
        let groups = || vec![group("lsm", &["lsm::a"]), group("pin", &["pin::b"])];
        assert_eq!(select(groups(), &[]).unwrap(), groups());
        assert_eq!(
            select(groups(), &names(&["vm_pin"])).unwrap(),
            [group("pin", &["pin::b"])]
        );
        assert_eq!(
            select(groups(), &names(&["pin", "vm_lsm"])).unwrap(),
            groups()
        );
        assert_eq!(
            select(groups(), &names(&["vm_lsm", "vm_pinn"]))
                .unwrap_err()
                .to_string(),
            "no VM test group vm_pinn (the modules of tests/tests/vm/main.rs): there are vm_lsm, \
             vm_pin"
        );
    }

    #[test]
    fn runs_exactly_the_named_tests() {
        assert_eq!(
            shell_command("/tests/vm", &["pin::b", "pin::c"]),
            "/tests/vm --test-threads=1 --exact pin::b pin::c"
        );
    }
}
