//! Policy check: `blocker check` on one generated policy of many rules, the size of a threat
//! intelligence hash list or of what a fleet server pushes: reading, parsing and checking every
//! rule (ids unique, paths absolute, nothing critical banned).

use std::{
    path::Path,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{bail, Context, Result};

use crate::{
    figure::{progress, Environment, Figure, Summary},
    workspace::Workspace,
};

pub struct PolicyCheckRun<'a> {
    pub blocker: &'a Path,
    pub rules: usize,
    pub repetitions: usize,
}

pub fn measure(workspace: &Workspace, run: &PolicyCheckRun) -> Result<Vec<Figure>> {
    let rules = run.rules;
    let policy_dir = workspace.policy_dir("policy-check", &generated_policy(rules))?;
    let mut seconds = Vec::new();
    for repetition in 0..run.repetitions {
        progress(&format!(
            "policy check: {rules} rules, repetition {} of {}",
            repetition + 1,
            run.repetitions
        ));
        let started = Instant::now();
        let output = Command::new(run.blocker)
            .arg("check")
            .arg(&policy_dir)
            .stdin(Stdio::null())
            .output()
            .context("running blocker check")?;
        seconds.push(started.elapsed().as_secs_f64());
        let stdout = String::from_utf8_lossy(&output.stdout);
        let expected = format!("ok: 1 policies, {rules} rules");
        if !output.status.success() || !stdout.contains(&expected) {
            bail!(
                "blocker check did not accept the generated policy ({}): {stdout}{}",
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }
    Ok(vec![Figure {
        id: "check.host.total".to_owned(),
        environment: Environment::Host,
        group: "policy check",
        name: format!("{rules} rules parsed and checked"),
        unit: "s",
        summary: Summary::of(&seconds)?,
        repetitions: run.repetitions as u64,
        ratio: None,
        breakdown: None,
        detail: format!(
            "{} runs of `blocker check` on one file: a third of the rules name a content, a \
             third a path, a third a glob",
            run.repetitions
        ),
    }])
}

/// One policy of `rules` rules, each naming one content, path or glob of its own; paths and
/// globs lie under a directory that does not exist, as most of a fleet's do on any one machine.
fn generated_policy(rules: usize) -> String {
    let mut text = String::from("name = \"generated\"\n");
    for n in 0..rules {
        text.push_str(&format!("\n[[rule]]\nid = \"rule-{n}\"\n"));
        text.push_str(&match n % 3 {
            0 => format!("sha256 = [\"{n:064x}\"]\n"),
            1 => format!("paths = [\"/opt/generated/{n}/bin/app\"]\n"),
            _ => format!("globs = [\"/opt/generated/{n}/**/*.so\"]\n"),
        });
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_rule_names_one_thing_of_its_own() {
        assert_eq!(
            generated_policy(3),
            format!(
                "name = \"generated\"\n\
                 \n[[rule]]\nid = \"rule-0\"\nsha256 = [\"{}\"]\n\
                 \n[[rule]]\nid = \"rule-1\"\npaths = [\"/opt/generated/1/bin/app\"]\n\
                 \n[[rule]]\nid = \"rule-2\"\nglobs = [\"/opt/generated/2/**/*.so\"]\n",
                "0".repeat(64)
            )
        );
    }
}
