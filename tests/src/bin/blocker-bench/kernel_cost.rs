//! The kernel's own cost: how long blocker's BPF programs run per exec, from the run-time
//! statistics the kernel keeps of each program (`run_time_ns`, `run_cnt`) while they are
//! turned on, read before and after the same exec loops that time the execs. Whole-exec timings
//! cannot tell 1 % apart on a busy machine or under emulation; the programs' own time can.
//!
//! Every program the daemon holds is counted, whatever it is attached to (exec hooks, mapping
//! hooks, the tamper-protection hooks that fire on every exec such as `file_open` and
//! `task_free`): the sum over all of them is the kernel side's cost. Runs by other processes
//! during a loop are counted too, so on a busy machine the figure errs high, never low; the
//! bench's own reading of the counters and start of its worker are kept out.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::Read,
    os::{
        fd::{FromRawFd, OwnedFd},
        unix::fs::FileExt,
    },
    path::Path,
    time::Duration,
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{
    daemon::Daemon,
    exec_loop::{self, Expect, Timing},
    figure::{progress, Environment, Figure, Ratio, Summary},
};

/// `BPF_ENABLE_STATS` of `enum bpf_cmd` and `BPF_STATS_RUN_TIME` of `enum bpf_stats_type`.
const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

/// Untimed execs after the daemon starts, as for the exec-latency figures.
const WARM_UP_EXECS: u64 = 20;

/// The kernel keeps run-time statistics while at least one descriptor from `BPF_ENABLE_STATS`
/// is open: they stop when this is dropped or the process ends, however it ends, and the
/// `kernel.bpf_stats_enabled` setting is never touched.
pub struct RunTimeStats {
    _enabled: OwnedFd,
}

impl RunTimeStats {
    pub fn enable() -> Result<Self> {
        let attr = [BPF_STATS_RUN_TIME];
        // SAFETY: `attr` is the `enable_stats` member of `union bpf_attr` and outlives the call.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_ptr(),
                std::mem::size_of_val(&attr),
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .context("turning on the kernel's BPF run-time statistics (BPF_ENABLE_STATS)");
        }
        // SAFETY: the command returned a new descriptor that nothing else owns.
        Ok(Self {
            _enabled: unsafe { OwnedFd::from_raw_fd(fd as i32) },
        })
    }
}

/// What one program's statistics say at one instant.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Counters {
    run_time_ns: u64,
    runs: u64,
}

/// The programs a process holds, by id: their tag, and their `/proc/PID/fdinfo` file kept open,
/// so that reading the counters again opens nothing: an open would run blocker's own
/// `file_open` and `ptrace_access_check` programs inside the measurement.
fn held_programs(pid: u32) -> Result<BTreeMap<u32, (String, File)>> {
    let dir = format!("/proc/{pid}/fdinfo");
    let mut programs = BTreeMap::new();
    for entry in fs::read_dir(&dir).with_context(|| format!("reading {dir}"))? {
        // A descriptor closed meanwhile is simply not there.
        let Ok(mut file) = File::open(entry?.path()) else {
            continue;
        };
        let mut info = String::new();
        if file.read_to_string(&mut info).is_err() {
            continue;
        }
        if let Some((id, tag, _)) = parse_program_fdinfo(&info) {
            programs.insert(id, (tag, file));
        }
    }
    if programs.is_empty() {
        bail!("process {pid} holds no BPF program");
    }
    Ok(programs)
}

/// The counters of each program, read again from its open fdinfo file.
fn read_counters(programs: &[(u32, File)]) -> Result<BTreeMap<u32, Counters>> {
    let mut buffer = vec![0; 4096];
    programs
        .iter()
        .map(|(id, file)| {
            let length = file
                .read_at(&mut buffer, 0)
                .with_context(|| format!("reading the fdinfo of program {id}"))?;
            let info = String::from_utf8_lossy(&buffer[..length]);
            let (_, _, counters) = parse_program_fdinfo(&info)
                .with_context(|| format!("program {id} has no counters in its fdinfo"))?;
            Ok((*id, counters))
        })
        .collect()
}

/// (id, tag, counters) from the fdinfo text of a program descriptor; `None` for other
/// descriptors (links carry a `prog_id` too, but no `prog_type`).
fn parse_program_fdinfo(info: &str) -> Option<(u32, String, Counters)> {
    let field = |name: &str| {
        info.lines()
            .find_map(|line| line.strip_prefix(name)?.strip_prefix(':'))
            .map(str::trim)
    };
    field("prog_type")?;
    Some((
        field("prog_id")?.parse().ok()?,
        field("prog_tag")?.to_owned(),
        Counters {
            run_time_ns: field("run_time_ns")?.parse().ok()?,
            runs: field("run_cnt")?.parse().ok()?,
        },
    ))
}

/// The full names of JIT-compiled programs by tag, from `/proc/kallsyms`
/// (`bpf_prog_<tag>_<name>`, the name from the program's BTF): the kernel's own program name
/// is cut at 15 bytes, where several of blocker's begin alike.
fn program_names() -> BTreeMap<String, String> {
    let symbols = fs::read_to_string("/proc/kallsyms").unwrap_or_default();
    symbols
        .lines()
        .filter_map(|line| line.split_whitespace().nth(2))
        .filter_map(|symbol| symbol.strip_prefix("bpf_prog_")?.split_once('_'))
        .map(|(tag, name)| (tag.to_owned(), name.to_owned()))
        .collect()
}

/// Meters the programs of one daemon while run-time statistics are on.
pub struct Meter {
    /// Each program's id and open fdinfo file.
    programs: Vec<(u32, File)>,
    /// Program names by id.
    names: BTreeMap<u32, String>,
    _stats: RunTimeStats,
}

/// How long each program ran, and how often, during some work: by program id.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Usage(BTreeMap<u32, Counters>);

impl Usage {
    pub fn total_ns(&self) -> u64 {
        self.0.values().map(|counters| counters.run_time_ns).sum()
    }

    fn add(&mut self, other: &Usage) {
        for (id, counters) in &other.0 {
            let sum = self.0.entry(*id).or_default();
            sum.run_time_ns += counters.run_time_ns;
            sum.runs += counters.runs;
        }
    }
}

impl Meter {
    pub fn start(daemon: &Daemon) -> Result<Self> {
        let stats = RunTimeStats::enable()?;
        let symbols = program_names();
        let mut names = BTreeMap::new();
        let mut programs = Vec::new();
        for (id, (tag, file)) in held_programs(daemon.pid())? {
            let name = symbols
                .get(&tag)
                .cloned()
                .unwrap_or_else(|| format!("program {id} (tag {tag})"));
            names.insert(id, name);
            programs.push((id, file));
        }
        Ok(Self {
            programs,
            names,
            _stats: stats,
        })
    }

    /// Runs an exec loop of `execs` execs of `target` and returns what the daemon's programs
    /// ran meanwhile, with the loop's timing. The worker is started before the counters are
    /// read: its own exec and start are not in the measurement, its exit is.
    pub fn exec_loop(&self, target: &Path, execs: u64) -> Result<(Usage, Timing)> {
        let mut worker = exec_loop::spawn_waiting(target, execs)?;
        let before = read_counters(&self.programs)?;
        exec_loop::go(&mut worker)?;
        let timing = exec_loop::finish(worker, execs, Expect::Ran, target)?;
        let after = read_counters(&self.programs)?;
        let usage = after
            .into_iter()
            .map(|(id, after)| {
                let before = before.get(&id).copied().unwrap_or_default();
                let delta = Counters {
                    run_time_ns: after.run_time_ns.saturating_sub(before.run_time_ns),
                    runs: after.runs.saturating_sub(before.runs),
                };
                (id, delta)
            })
            .collect();
        Ok((Usage(usage), timing))
    }

    /// Per program, over `usage` summed across samples of `operations` operations in all: runs
    /// per operation, nanoseconds per run and per operation; programs that never ran are listed
    /// with zeros, so the list shows everything the daemon had loaded.
    pub fn breakdown(&self, usage: &Usage, operations: u64) -> Value {
        let per_operation = |value: u64| value as f64 / operations.max(1) as f64;
        let mut rows: Vec<Value> = self
            .names
            .iter()
            .map(|(id, name)| {
                let counters = usage.0.get(id).copied().unwrap_or_default();
                json!({
                    "program": name,
                    "id": id,
                    "runs": counters.runs,
                    "run_time_ns": counters.run_time_ns,
                    "runs_per_operation": per_operation(counters.runs),
                    "ns_per_run": if counters.runs == 0 {
                        0.0
                    } else {
                        counters.run_time_ns as f64 / counters.runs as f64
                    },
                    "ns_per_operation": per_operation(counters.run_time_ns),
                })
            })
            .collect();
        rows.sort_by(|a, b| b["run_time_ns"].as_u64().cmp(&a["run_time_ns"].as_u64()));
        Value::Array(rows)
    }
}

/// One sample: the programs' time per exec, and what an exec took.
pub struct Sample {
    pub kernel_ns_per_exec: f64,
    pub exec_ns: f64,
}

impl Sample {
    /// `exec_time` is the loop's median exec, as in the exec-latency figures: the mean of a
    /// busy machine counts the waits for a CPU, which would make the programs' share look small.
    pub fn of(usage: &Usage, execs: u64, exec_time: Duration) -> Self {
        Self {
            kernel_ns_per_exec: usage.total_ns() as f64 / execs as f64,
            exec_ns: exec_time.as_secs_f64() * 1e9,
        }
    }
}

/// A figure of the programs' nanoseconds per operation, with their share of the operation.
pub struct CostFigure<'a> {
    pub id: String,
    pub environment: Environment,
    pub name: String,
    pub samples: &'a [Sample],
    pub operations: u64,
    pub detail: String,
    pub breakdown: Value,
}

impl CostFigure<'_> {
    pub fn figure(self) -> Result<Figure> {
        let kernel: Vec<f64> = self.samples.iter().map(|s| s.kernel_ns_per_exec).collect();
        let exec: Vec<f64> = self.samples.iter().map(|s| s.exec_ns).collect();
        Ok(Figure {
            id: self.id,
            environment: self.environment,
            group: "kernel programs' cost",
            name: self.name,
            unit: "ns/exec",
            summary: Summary::of(&kernel)?,
            repetitions: self.operations,
            ratio: Some(Ratio::paired(
                "÷ the same execs' median time (fork+exec+wait)",
                &kernel,
                &exec,
            )?),
            detail: self.detail,
            breakdown: Some(self.breakdown),
        })
    }
}

pub struct KernelCostRun<'a> {
    pub environment: Environment,
    pub blocker: &'a Path,
    pub policy_dir: &'a Path,
    /// Entries the policy must put in the kernel map.
    pub entries: u64,
    /// Short and stable, for the figure id: `blocker-10`, `blocker-large`, ...
    pub key: &'static str,
    /// What the policy is, for the figure's name: `10 entries`, ...
    pub policy: String,
    pub target: &'a Path,
    pub loops: usize,
    pub execs_per_loop: u64,
    pub startup_timeout: Duration,
}

/// Starts the daemon on the policy and meters its programs over `loops` exec loops.
pub fn measure(run: &KernelCostRun) -> Result<Figure> {
    let environment = run.environment;
    progress(&format!(
        "kernel programs' cost ({}): {}, {} loops",
        environment.name(),
        run.policy,
        run.loops
    ));
    let (daemon, startup) = Daemon::start(
        run.blocker,
        run.policy_dir,
        environment.backend(),
        &[],
        run.startup_timeout,
    )?;
    let installed = startup.started["entries"].as_u64();
    if installed != Some(run.entries) {
        bail!(
            "the policy in {} put {installed:?} entries in the map, not {}",
            run.policy_dir.display(),
            run.entries
        );
    }
    exec_loop::run(run.target, WARM_UP_EXECS, Expect::Ran, None)?;
    let meter = Meter::start(&daemon)?;
    let mut samples = Vec::new();
    let mut total = Usage::default();
    for _ in 0..run.loops {
        let (usage, timing) = meter.exec_loop(run.target, run.execs_per_loop)?;
        samples.push(Sample::of(&usage, run.execs_per_loop, timing.median));
        total.add(&usage);
    }
    let execs = run.loops as u64 * run.execs_per_loop;
    let breakdown = meter.breakdown(&total, execs);
    drop(meter);
    daemon.stop()?;
    CostFigure {
        id: format!("kernel.{}.{}", environment.name(), run.key),
        environment,
        name: format!("blocker's programs, {}", run.policy),
        samples: &samples,
        operations: execs,
        detail: format!(
            "{} loops of {} fork+exec+wait of {} ({} backend); sample = the run time of every \
             program the daemon holds during a loop ÷ its execs (runs by other processes \
             meanwhile included); per program in `breakdown`",
            run.loops,
            run.execs_per_loop,
            run.target.display(),
            environment.backend()
        ),
        breakdown,
    }
    .figure()
}

/// Sums `usage` over samples into one.
pub fn sum(usages: &[Usage]) -> Usage {
    let mut total = Usage::default();
    for usage in usages {
        total.add(usage);
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_program_descriptors_and_skips_links() {
        let program = "pos:\t0\nflags:\t02000002\nmnt_id:\t15\nino:\t1057\n\
                       prog_type:\t29\nprog_jited:\t1\nprog_tag:\t3b185187f1855c4c\n\
                       memlock:\t4096\nprog_id:\t42\nrun_time_ns:\t123456\nrun_cnt:\t789\n\
                       recursion_misses:\t0\nverified_insns:\t51\n";
        assert_eq!(
            parse_program_fdinfo(program),
            Some((
                42,
                "3b185187f1855c4c".to_owned(),
                Counters {
                    run_time_ns: 123456,
                    runs: 789
                }
            ))
        );
        let link = "pos:\t0\nflags:\t02000000\nlink_type:\ttracing\nlink_id:\t7\n\
                    prog_tag:\t3b185187f1855c4c\nprog_id:\t42\nattach_type:\t27\n";
        assert_eq!(parse_program_fdinfo(link), None);
        let map = "pos:\t0\nmap_type:\t1\nkey_size:\t16\n";
        assert_eq!(parse_program_fdinfo(map), None);
    }

    #[test]
    fn usage_adds_up_per_program_and_in_all() {
        let one =
            |id, run_time_ns, runs| Usage(BTreeMap::from([(id, Counters { run_time_ns, runs })]));
        let total = sum(&[one(1, 100, 2), one(1, 50, 1), one(2, 7, 1)]);
        assert_eq!(total.total_ns(), 157);
        assert_eq!(
            total.0[&1],
            Counters {
                run_time_ns: 150,
                runs: 3
            }
        );
        let sample = Sample::of(&total, 10, Duration::from_micros(5));
        assert_eq!(sample.kernel_ns_per_exec, 15.7);
        assert_eq!(sample.exec_ns, 5000.0);
    }
}
