//! blocker's benchmark driver, run by `cargo xtask bench` on the host and inside the VM. It
//! measures exec latency against no blocker and fapolicyd (banning files, and in lockdown),
//! content hashing at exec, policy loading, the content scan against `sha256sum`, and event
//! throughput, and prints every figure as a JSON line behind a marker; xtask collects them into
//! one table and report.
//!
//! Everything it bans is a file it made, in a tmpfs of its own mount namespace.

mod content_hash;
mod daemon;
mod event_storm;
mod exec_latency;
mod exec_loop;
mod fapolicyd;
mod figure;
mod hashing;
mod kernel_cost;
mod lockdown;
mod machine;
mod pipeline;
mod policy_check;
mod policy_load;
mod workspace;

use std::{
    path::{Path, PathBuf},
    process::ExitCode,
    time::Duration,
};

use anyhow::Result;
use clap::{Args, Parser, Subcommand};

use crate::{
    exec_latency::{Configuration, Guard, Rounds, Setup},
    fapolicyd::{Denied, Fapolicyd},
    figure::{emit, progress, Environment, Figure},
    lockdown::TrustSet,
    workspace::{make_many_files, Workspace},
};

/// The programs the exec-latency policies ban by path, one rule each.
const SMALL_POLICY_RULES: usize = 10;

#[derive(Parser)]
#[command(about = "Measures blocker; run by `cargo xtask bench`, which sets every number")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The host's figures: exec latency under the kill backend, event throughput, policy load,
    /// and the content scan against sha256sum.
    Host {
        #[command(flatten)]
        common: Common,
        /// Files named by one rule for the policy-load figure.
        #[arg(long)]
        load_files: u64,
        #[arg(long)]
        load_repetitions: usize,
        /// The tree the content scan and sha256sum hash.
        #[arg(long)]
        scan_tree: PathBuf,
        #[arg(long)]
        scan_repetitions: usize,
        /// Synthetic events of one event-pipeline run.
        #[arg(long)]
        pipeline_events: u64,
        #[arg(long)]
        pipeline_runs: usize,
        /// Rules of the generated policy `blocker check` reads.
        #[arg(long)]
        check_rules: usize,
        #[arg(long)]
        check_repetitions: usize,
    },
    /// The VM's figures: exec latency under the lsm backend, also in lockdown, content hashing
    /// at exec, event throughput.
    Vm {
        #[command(flatten)]
        common: Common,
        /// Size of the program whose first exec the kernel hashes.
        #[arg(long)]
        hashed_program_mib: usize,
        /// Fresh copies of that program, one sample each.
        #[arg(long)]
        hashed_programs: usize,
    },
    /// Forks and execs TARGET COUNT times and prints how that went as JSON (a worker the
    /// measurements start).
    ExecLoop {
        target: PathBuf,
        count: u64,
        /// Run the Nth exec as user FIRST_UID + N.
        #[arg(long)]
        first_uid: Option<u32>,
        /// Start the execs only after reading a line from stdin, so that what the worker's own
        /// start costs can be left out of a measurement.
        #[arg(long)]
        wait_for_go: bool,
    },
}

#[derive(Args)]
struct Common {
    #[arg(long)]
    blocker: PathBuf,
    /// A small static program: the one every exec loop runs.
    #[arg(long)]
    exec_target: PathBuf,
    #[arg(long)]
    fapolicyd: PathBuf,
    /// Where the bench's private tmpfs is mounted.
    #[arg(long)]
    work_dir: PathBuf,
    #[arg(long)]
    rounds: usize,
    #[arg(long)]
    execs_per_loop: u64,
    /// Files named by one rule in the large exec-latency policy; in lockdown, the files trusted.
    #[arg(long)]
    large_policy_files: u64,
    #[arg(long)]
    storm_execs: u64,
    #[arg(long)]
    storms: usize,
    /// How long a daemon may take to start with the largest policy here.
    #[arg(long)]
    startup_timeout_secs: u64,
    /// Measure only these figures (repeatable), for working on one; all of them without.
    #[arg(long = "only", value_enum)]
    only: Vec<Part>,
}

/// The parts of the bench, each a group of figures.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
enum Part {
    /// Exec latency against no blocker and fapolicyd.
    Exec,
    /// The kernel programs' own time per exec.
    Kernel,
    /// Event throughput during an exec storm.
    Storm,
    /// The event pipeline's capacity with synthetic events (host).
    Pipeline,
    /// Policy load (host).
    Load,
    /// Parsing and checking a large generated policy (host).
    Check,
    /// The content scan against sha256sum (host).
    Scan,
    /// Content hashing at exec (VM).
    Hash,
    /// Exec latency and the kernel programs' cost in lockdown, against fapolicyd denying by
    /// default (VM: lockdown refuses every untrusted exec on the machine, so never the host's).
    Lockdown,
}

impl Common {
    fn wants(&self, part: Part) -> bool {
        self.only.is_empty() || self.only.contains(&part)
    }
}

fn main() -> ExitCode {
    let outcome = match Cli::parse().command {
        Command::ExecLoop {
            target,
            count,
            first_uid,
            wait_for_go,
        } => exec_loop::work(&target, count, first_uid, wait_for_go),
        Command::Host {
            common,
            load_files,
            load_repetitions,
            scan_tree,
            scan_repetitions,
            pipeline_events,
            pipeline_runs,
            check_rules,
            check_repetitions,
        } => measure_host(
            &common,
            &HostPlan {
                load_files,
                load_repetitions,
                scan_tree,
                scan_repetitions,
                pipeline_events,
                pipeline_runs,
                check_rules,
                check_repetitions,
            },
        ),
        Command::Vm {
            common,
            hashed_program_mib,
            hashed_programs,
        } => measure_vm(&common, hashed_program_mib, hashed_programs),
    };
    match outcome {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("blocker-bench: {error:#}");
            ExitCode::FAILURE
        }
    }
}

/// What both environments share: the workspace, the banned files, the policies and fapolicyd.
struct Fixture {
    workspace: Workspace,
    target: PathBuf,
    banned: Vec<PathBuf>,
    /// Directory of the files the large policy names.
    large_tree: PathBuf,
    small_policy: PathBuf,
    large_policy: PathBuf,
}

impl Fixture {
    fn new(common: &Common) -> Result<Self> {
        let workspace = Workspace::enter(&common.work_dir)?;
        let target = workspace.copy(&common.exec_target, "exec-target")?;
        let banned = (0..SMALL_POLICY_RULES)
            .map(|index| workspace.copy(&common.exec_target, &format!("banned-{index}")))
            .collect::<Result<Vec<_>>>()?;
        progress(&format!(
            "making {} files for the large policy",
            common.large_policy_files
        ));
        let large_tree = workspace.directory("many/part-0")?;
        make_many_files(&large_tree, common.large_policy_files)?;
        let small_policy = workspace.policy_dir("policy-small", &banning_policy(&banned, None))?;
        let large_policy =
            workspace.policy_dir("policy-large", &banning_policy(&banned, Some(&large_tree)))?;
        Ok(Self {
            workspace,
            target,
            banned,
            large_tree,
            small_policy,
            large_policy,
        })
    }

    fn start_fapolicyd(&self, binary: &Path, timeout: Duration) -> Result<Fapolicyd> {
        let mut denied: Vec<Denied> = self.banned.iter().map(|file| Denied::File(file)).collect();
        denied.push(Denied::Directory(&self.large_tree));
        progress("starting fapolicyd in a mount namespace of its own");
        Fapolicyd::start(
            binary,
            &self.workspace.path("fapolicyd-config"),
            &fapolicyd::rules(&denied),
            "",
            timeout,
        )
    }

    fn exec_latency(
        &self,
        environment: Environment,
        common: &Common,
        fapolicyd: &Fapolicyd,
    ) -> Result<Vec<Figure>> {
        let small_entries = SMALL_POLICY_RULES as u64;
        let large_entries = small_entries + common.large_policy_files;
        let configurations = [
            Configuration {
                key: "blocker-10",
                name: format!("blocker, {small_entries} rules ({small_entries} entries)"),
                guard: Guard::Blocker {
                    policy_dir: &self.small_policy,
                    entries: small_entries,
                },
            },
            Configuration {
                key: "blocker-large",
                name: format!(
                    "blocker, {} rules ({large_entries} entries)",
                    small_entries + 1
                ),
                guard: Guard::Blocker {
                    policy_dir: &self.large_policy,
                    entries: large_entries,
                },
            },
            Configuration {
                key: "fapolicyd",
                name: format!(
                    "fapolicyd, {} deny rules (the same {large_entries} files)",
                    small_entries + 1
                ),
                guard: Guard::Fapolicyd(fapolicyd),
            },
        ];
        let setup = Setup {
            environment,
            figures: "exec",
            group: "exec latency",
            blocker: &common.blocker,
            target: &self.target,
            banned: &self.banned[0],
            startup_timeout: Duration::from_secs(common.startup_timeout_secs),
        };
        exec_latency::measure(
            &setup,
            &configurations,
            &Rounds {
                rounds: common.rounds,
                execs_per_loop: common.execs_per_loop,
            },
        )
    }

    /// The programs' own time per exec with the small and the large policy.
    fn kernel_cost(&self, environment: Environment, common: &Common) -> Result<Vec<Figure>> {
        let small_entries = SMALL_POLICY_RULES as u64;
        [
            ("blocker-10", &self.small_policy, small_entries),
            (
                "blocker-large",
                &self.large_policy,
                small_entries + common.large_policy_files,
            ),
        ]
        .into_iter()
        .map(|(key, policy_dir, entries)| {
            kernel_cost::measure(&self.kernel_cost_run(
                environment,
                common,
                key,
                policy_dir,
                entries,
            ))
        })
        .collect()
    }

    fn kernel_cost_run<'a>(
        &'a self,
        environment: Environment,
        common: &'a Common,
        key: &'static str,
        policy_dir: &'a Path,
        entries: u64,
    ) -> kernel_cost::KernelCostRun<'a> {
        kernel_cost::KernelCostRun {
            environment,
            blocker: &common.blocker,
            policy_dir,
            entries,
            key,
            policy: format!("{entries} entries"),
            target: &self.target,
            loops: common.rounds,
            execs_per_loop: common.execs_per_loop,
            startup_timeout: Duration::from_secs(common.startup_timeout_secs),
        }
    }

    fn event_storm(&self, environment: Environment, common: &Common) -> Result<Vec<Figure>> {
        event_storm::measure(&event_storm::StormRun {
            environment,
            blocker: &common.blocker,
            policy_dir: &self.small_policy,
            banned: &self.banned[0],
            execs: common.storm_execs,
            storms: common.storms,
            startup_timeout: Duration::from_secs(common.startup_timeout_secs),
        })
    }

    /// Exec latency in lockdown, blocker's and fapolicyd's, trusting the same files; then the
    /// kernel programs' cost in lockdown. fapolicyd runs only meanwhile.
    fn lockdown(&self, environment: Environment, common: &Common) -> Result<()> {
        let startup_timeout = Duration::from_secs(common.startup_timeout_secs);
        let untrusted = self
            .workspace
            .copy(&common.exec_target, "untrusted-exec-target")?;
        let trust_set = TrustSet::new(&self.large_tree, &self.target)?;
        let policy_dir = self
            .workspace
            .policy_dir("policy-lockdown", &trust_set.blocker_policy())?;
        progress("listing and hashing the trusted files for fapolicyd's trust list");
        let (trust, trusted) = trust_set.fapolicyd_trust()?;
        progress("starting fapolicyd, denying by default, in a mount namespace of its own");
        let fapolicyd = Fapolicyd::start(
            &common.fapolicyd,
            &self.workspace.path("fapolicyd-lockdown-config"),
            fapolicyd::LOCKDOWN_RULES,
            &trust,
            startup_timeout,
        )?;
        let configurations = [
            Configuration {
                key: "blocker",
                name: format!("blocker, lockdown, {trusted} trusted files"),
                // An allow rule puts no ban in the map.
                guard: Guard::Blocker {
                    policy_dir: &policy_dir,
                    entries: 0,
                },
            },
            Configuration {
                key: "fapolicyd",
                name: format!("fapolicyd, deny by default, the same {trusted} files trusted"),
                guard: Guard::Fapolicyd(&fapolicyd),
            },
        ];
        let setup = Setup {
            environment,
            figures: "lockdown",
            group: "exec latency in lockdown",
            blocker: &common.blocker,
            target: &self.target,
            banned: &untrusted,
            startup_timeout,
        };
        report(exec_latency::measure(
            &setup,
            &configurations,
            &Rounds {
                rounds: common.rounds,
                execs_per_loop: common.execs_per_loop,
            },
        )?);
        let (allowed, denied) = fapolicyd.stop()?;
        progress(&format!(
            "fapolicyd allowed {allowed} accesses and denied {denied}"
        ));
        report(vec![kernel_cost::measure(&kernel_cost::KernelCostRun {
            policy: format!("lockdown, {trusted} trusted files"),
            ..self.kernel_cost_run(environment, common, "blocker-lockdown", &policy_dir, 0)
        })?]);
        Ok(())
    }
}

/// A policy banning each of `files` by path, one rule each, and everything below `tree`.
fn banning_policy(files: &[PathBuf], tree: Option<&Path>) -> String {
    let mut policy = "name = \"bench\"\n".to_owned();
    for (index, file) in files.iter().enumerate() {
        policy.push_str(&format!(
            "\n[[rule]]\nid = \"ban-{index}\"\npaths = [{:?}]\n",
            file.display().to_string()
        ));
    }
    if let Some(tree) = tree {
        policy.push_str(&format!(
            "\n[[rule]]\nid = \"ban-tree\"\npath_prefixes = [{:?}]\n",
            tree.display().to_string()
        ));
    }
    policy
}

fn report(figures: Vec<Figure>) {
    for figure in figures {
        emit(&figure.to_json());
    }
}

/// What only the host measures.
struct HostPlan {
    load_files: u64,
    load_repetitions: usize,
    scan_tree: PathBuf,
    scan_repetitions: usize,
    pipeline_events: u64,
    pipeline_runs: usize,
    check_rules: usize,
    check_repetitions: usize,
}

fn measure_host(common: &Common, plan: &HostPlan) -> Result<()> {
    let HostPlan {
        load_files,
        load_repetitions,
        ref scan_tree,
        scan_repetitions,
        pipeline_events,
        pipeline_runs,
        check_rules,
        check_repetitions,
    } = *plan;
    let environment = Environment::Host;
    emit(&machine::describe(environment));
    let fixture = Fixture::new(common)?;
    let startup_timeout = Duration::from_secs(common.startup_timeout_secs);

    if common.wants(Part::Exec) {
        measure_exec_latency(&fixture, environment, common, startup_timeout)?;
    }
    if common.wants(Part::Kernel) {
        report(fixture.kernel_cost(environment, common)?);
    }
    if common.wants(Part::Storm) {
        report(fixture.event_storm(environment, common)?);
    }
    if common.wants(Part::Pipeline) {
        report(pipeline::measure(&pipeline::PipelineRun {
            environment,
            blocker: &common.blocker,
            policy_dir: &fixture.small_policy,
            events_file: &fixture.workspace.path("pipeline-events.jsonl"),
            events: pipeline_events,
            runs: pipeline_runs,
        })?);
    }

    if common.wants(Part::Load) || common.wants(Part::Kernel) {
        progress(&format!(
            "making {load_files} files for the policy-load figure"
        ));
        let load_tree = fixture.workspace.directory("load")?;
        make_many_files(&load_tree, load_files)?;
        let load_policy = fixture
            .workspace
            .policy_dir("policy-load", &banning_policy(&[], Some(&load_tree)))?;
        if common.wants(Part::Load) {
            report(policy_load::measure(
                environment,
                &policy_load::PolicyLoadRun {
                    blocker: &common.blocker,
                    policy_dir: &load_policy,
                    entries: load_files,
                    small_policy_dir: &fixture.small_policy,
                    repetitions: load_repetitions,
                    startup_timeout,
                },
            )?);
        }
        if common.wants(Part::Kernel) {
            // The largest policy the bench loads: every exec is looked up among its entries.
            report(vec![kernel_cost::measure(&fixture.kernel_cost_run(
                environment,
                common,
                "blocker-1m",
                &load_policy,
                load_files,
            ))?]);
        }
        std::fs::remove_dir_all(&load_tree)?;
    }
    if common.wants(Part::Check) {
        report(policy_check::measure(
            &fixture.workspace,
            &policy_check::PolicyCheckRun {
                blocker: &common.blocker,
                rules: check_rules,
                repetitions: check_repetitions,
            },
        )?);
    }
    if !common.wants(Part::Scan) {
        return Ok(());
    }

    // A content rule makes `resolve` scan; no file has this content.
    let scan_policy = fixture.workspace.policy_dir(
        "policy-scan",
        &format!(
            "name = \"bench-scan\"\n\n[[rule]]\nid = \"content\"\nsha256 = [\"{}\"]\n",
            "0".repeat(64)
        ),
    )?;
    report(hashing::measure(&hashing::HashingRun {
        blocker: &common.blocker,
        policy_dir: &scan_policy,
        tree: scan_tree,
        hash_cache: &fixture.workspace.path("hash-cache"),
        repetitions: scan_repetitions,
    })?);
    Ok(())
}

/// Exec latency with nothing, blocker and fapolicyd in force; fapolicyd runs only meanwhile.
fn measure_exec_latency(
    fixture: &Fixture,
    environment: Environment,
    common: &Common,
    startup_timeout: Duration,
) -> Result<()> {
    let fapolicyd = fixture.start_fapolicyd(&common.fapolicyd, startup_timeout)?;
    report(fixture.exec_latency(environment, common, &fapolicyd)?);
    let (allowed, denied) = fapolicyd.stop()?;
    progress(&format!(
        "fapolicyd allowed {allowed} accesses and denied {denied}"
    ));
    Ok(())
}

fn measure_vm(common: &Common, hashed_program_mib: usize, hashed_programs: usize) -> Result<()> {
    let environment = Environment::Vm;
    emit(&machine::describe(environment));
    let fixture = Fixture::new(common)?;
    let startup_timeout = Duration::from_secs(common.startup_timeout_secs);

    if common.wants(Part::Exec) {
        measure_exec_latency(&fixture, environment, common, startup_timeout)?;
    }
    if common.wants(Part::Kernel) {
        report(fixture.kernel_cost(environment, common)?);
    }
    if common.wants(Part::Hash) {
        // The kernel hashes at exec only while some rule bans a content; no file has this one.
        // The daemon's own content scan then walks an empty directory.
        let content_policy = fixture.workspace.policy_dir(
            "policy-content",
            &format!(
                "{}\n[[rule]]\nid = \"content\"\nsha256 = [\"{}\"]\n",
                banning_policy(&fixture.banned, None),
                "0".repeat(64)
            ),
        )?;
        let scan_root = fixture.workspace.directory("empty-scan-root")?;
        report(content_hash::measure(
            &fixture.workspace,
            &content_hash::ContentHashRun {
                blocker: &common.blocker,
                policy_dir: &content_policy,
                scan_root: &scan_root,
                target: &common.exec_target,
                size_bytes: hashed_program_mib << 20,
                copies: hashed_programs,
                startup_timeout,
            },
        )?);
    }
    if common.wants(Part::Storm) {
        report(fixture.event_storm(environment, common)?);
    }
    if common.wants(Part::Lockdown) {
        fixture.lockdown(environment, common)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bans_each_file_by_path_and_the_tree_by_prefix() {
        let policy = banning_policy(
            &[PathBuf::from("/w/banned-0"), PathBuf::from("/w/banned-1")],
            Some(Path::new("/w/many")),
        );
        assert_eq!(
            policy,
            "name = \"bench\"\n\
             \n[[rule]]\nid = \"ban-0\"\npaths = [\"/w/banned-0\"]\n\
             \n[[rule]]\nid = \"ban-1\"\npaths = [\"/w/banned-1\"]\n\
             \n[[rule]]\nid = \"ban-tree\"\npath_prefixes = [\"/w/many\"]\n"
        );
    }
}
