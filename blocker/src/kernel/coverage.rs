//! What the attached programs cover: each feature on, partly on or off, with the programs
//! missing and why, for the startup log, the `started` event and `blocker status`.

use serde::{Deserialize, Serialize};

use blocker_common::lsm_programs::{self, LsmProgram};

/// Whether a feature's programs are all attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum State {
    On,
    /// Some of its programs are attached; `missing` names the others.
    Partial,
    Off,
}

/// A program that is not attached, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MissingProgram {
    pub program: String,
    pub hook: String,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Feature {
    pub state: State,
    /// Why the feature is off or partial when no program says it (another backend, not asked
    /// for).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub missing: Vec<MissingProgram>,
}

impl Feature {
    pub fn on() -> Self {
        Self {
            state: State::On,
            reason: None,
            missing: Vec::new(),
        }
    }

    pub fn off(reason: impl Into<String>) -> Self {
        Self {
            state: State::Off,
            reason: Some(reason.into()),
            missing: Vec::new(),
        }
    }

    /// A feature a daemon's status document does not mention: it predates the feature.
    fn not_reported() -> Self {
        Self::off("not reported by this daemon, which predates the feature")
    }

    /// A feature made of `programs`, of which those in `missing` are not attached.
    pub fn of(programs: &[LsmProgram], missing: Vec<MissingProgram>) -> Self {
        let state = if missing.is_empty() {
            State::On
        } else if missing.len() < programs.len() {
            State::Partial
        } else {
            State::Off
        };
        Self {
            state,
            reason: None,
            missing,
        }
    }

    /// One line for the log: the state, then what is missing and why.
    pub fn describe(&self) -> String {
        let state = match self.state {
            State::On => "on",
            State::Partial => "partial",
            State::Off => "off",
        };
        let mut line = state.to_owned();
        if let Some(reason) = &self.reason {
            line.push_str(&format!(" ({reason})"));
        }
        for missing in &self.missing {
            line.push_str(&format!(
                "; without {} (lsm/{}): {}",
                missing.program, missing.hook, missing.reason
            ));
        }
        line
    }
}

/// Every feature of the kernel side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Features {
    /// Execs of banned files refused (lsm) or killed (kill): always on while enforcing.
    pub exec: Feature,
    /// Execs checked by content in the kernel, by IMA's hash.
    pub exec_content: Feature,
    /// Content verdicts kept per inode, so an unchanged file is hashed once; used only while
    /// every program that drops stale verdicts is attached (content is hashed at every exec
    /// otherwise).
    pub verdict_cache: Feature,
    /// Executable mappings (`mmap`, `mprotect` with `PROT_EXEC`) of banned files refused.
    pub executable_mappings: Feature,
    /// Executable mappings (`mmap` with `PROT_EXEC`: the dynamic loader, `dlopen`) checked by
    /// content and the fileless setting too, as execs are.
    pub mapping_content: Feature,
    /// Lockdown's trust follows a package manager's renames and unlinks in the kernel, so an
    /// upgraded program runs at once and the old one is refused at once. Absent from the status
    /// document of a daemon older than it, which `blocker status` still reads.
    #[serde(default = "Feature::not_reported")]
    pub package_updates: Feature,
    /// Tamper protection (`--protect`).
    pub tamper_protection: Feature,
}

impl Features {
    /// Every feature with its name for people.
    pub fn named(&self) -> [(&'static str, &Feature); 7] {
        [
            ("exec checks", &self.exec),
            ("content checks at exec", &self.exec_content),
            ("verdict cache", &self.verdict_cache),
            ("executable-mapping checks", &self.executable_mappings),
            (
                "content checks of executable mappings",
                &self.mapping_content,
            ),
            ("lockdown following package updates", &self.package_updates),
            ("tamper protection", &self.tamper_protection),
        ]
    }

    /// The log lines describing every feature.
    pub fn describe(&self) -> Vec<String> {
        self.named()
            .into_iter()
            .map(|(name, feature)| format!("{name}: {}", feature.describe()))
            .collect()
    }

    /// The features of the kill backend, which has one program.
    pub fn kill_backend() -> Self {
        let lsm_only = || Feature::off("needs the lsm backend");
        Self {
            exec: Feature::on(),
            exec_content: lsm_only(),
            verdict_cache: lsm_only(),
            executable_mappings: lsm_only(),
            mapping_content: lsm_only(),
            package_updates: lsm_only(),
            tamper_protection: lsm_only(),
        }
    }

    /// The features of LSM programs of which those named by `attached` are attached; the
    /// others are missing for `why_missing(program)`.
    pub fn lsm(
        attached: impl Fn(&str) -> bool,
        why_missing: impl Fn(&LsmProgram) -> String,
    ) -> Self {
        let missing = |programs: &[LsmProgram]| -> Vec<MissingProgram> {
            programs
                .iter()
                .filter(|program| !attached(program.name))
                .map(|program| MissingProgram {
                    program: program.name.to_owned(),
                    hook: program.hook.to_owned(),
                    reason: why_missing(program),
                })
                .collect()
        };
        let content = attached(lsm_programs::EXEC_CONTENT.name);
        let exec_content = Feature::of(
            &[lsm_programs::EXEC_CONTENT],
            missing(&[lsm_programs::EXEC_CONTENT]),
        );
        let verdict_cache = if content {
            let invalidation = missing(&lsm_programs::VERDICT_INVALIDATION);
            // Partly kept is not kept: the cache is used only with every invalidation program.
            let state = if invalidation.is_empty() {
                State::On
            } else {
                State::Off
            };
            Feature {
                state,
                reason: (state == State::Off)
                    .then(|| "content is hashed at every exec instead".to_owned()),
                missing: invalidation,
            }
        } else {
            Feature::off("no content checks")
        };
        // The content check of mappings stands in for the identity one of `mmap`.
        let mapping_content = attached(lsm_programs::MAPPING_CONTENT.name);
        let mapping_programs: Vec<LsmProgram> = lsm_programs::EXECUTABLE_MAPPINGS
            .into_iter()
            .filter(|program| {
                !(mapping_content && program.name == lsm_programs::EXECUTABLE_MAPPINGS[0].name)
            })
            .collect();
        Self {
            exec: Feature::on(),
            exec_content,
            verdict_cache,
            executable_mappings: Feature::of(
                &lsm_programs::EXECUTABLE_MAPPINGS,
                missing(&mapping_programs),
            ),
            mapping_content: if content {
                Feature::of(
                    &[lsm_programs::MAPPING_CONTENT],
                    missing(&[lsm_programs::MAPPING_CONTENT]),
                )
            } else {
                Feature::off("no content checks")
            },
            package_updates: Feature::of(
                &lsm_programs::PACKAGE_UPDATES,
                missing(&lsm_programs::PACKAGE_UPDATES),
            ),
            tamper_protection: Feature::of(
                &lsm_programs::PROTECTION,
                missing(&lsm_programs::PROTECTION),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_missing_invalidation_program_turns_the_cache_off_not_content_checks() {
        let features = Features::lsm(
            |name| name != "forget_verdict_on_setattr",
            |_| "refused".to_owned(),
        );
        assert_eq!(features.exec_content.state, State::On);
        assert_eq!(features.verdict_cache.state, State::Off);
        assert_eq!(features.verdict_cache.missing.len(), 1);
        assert_eq!(features.verdict_cache.missing[0].hook, "inode_setattr");
        assert_eq!(features.tamper_protection.state, State::On);
    }

    #[test]
    fn protection_degrades_one_hook_at_a_time() {
        let features = Features::lsm(|name| name != "protect_links", |_| "refused".to_owned());
        assert_eq!(features.tamper_protection.state, State::Partial);
        assert!(features
            .describe()
            .iter()
            .any(|line| line
                == "tamper protection: partial; without protect_links (lsm/bpf): refused"));
        let none = Features::lsm(|name| !name.starts_with("protect_"), |_| "x".to_owned());
        assert_eq!(none.tamper_protection.state, State::Off);
    }

    #[test]
    fn the_content_check_of_mappings_stands_in_for_the_identity_one() {
        let features = Features::lsm(|name| name != "mmap_file", |_| "not loaded".to_owned());
        assert_eq!(features.executable_mappings.state, State::On);
        assert_eq!(features.mapping_content.state, State::On);
        let identity_only =
            Features::lsm(|name| name != "mmap_file_content", |_| "refused".to_owned());
        assert_eq!(identity_only.executable_mappings.state, State::On);
        assert_eq!(identity_only.mapping_content.state, State::Off);
        assert_eq!(identity_only.mapping_content.missing[0].reason, "refused");
    }

    #[test]
    fn without_content_checks_the_cache_is_off_for_that_reason() {
        let features = Features::lsm(|name| name != "bprm_check_content", |_| "no IMA".to_owned());
        assert_eq!(features.exec_content.state, State::Off);
        assert_eq!(
            features.verdict_cache.reason.as_deref(),
            Some("no content checks")
        );
    }
}
