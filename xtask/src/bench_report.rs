//! The bench's report: the records the driver printed on the host and in the VM, checked to be
//! complete, the targets the project set itself, a Markdown table (printed, and written into
//! docs/PERFORMANCE.md's latest results) and `report.json`.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::marked_section::Markers;

/// The part of docs/PERFORMANCE.md that every full `cargo xtask bench` rewrites with its table.
pub const LATEST_RESULTS: Markers = Markers {
    begin: "<!-- latest-results: written by `cargo xtask bench` from its last full run -->",
    end: "<!-- latest-results end -->",
};

/// Starts every line the bench driver prints a record on (its `figure.rs` says the same).
const MARKER: &str = "BLOCKER-BENCH:";
const ENVIRONMENTS: [&str; 2] = ["host", "vm"];
/// The kernel-cost figures of each environment, by policy size: the VM, with 1 GiB of memory,
/// has no room for the million files of the largest policy.
const KERNEL_COST_FIGURES: [(&str, &[(&str, &str)]); 2] = [
    (
        "host",
        &[
            ("blocker-10", "10"),
            ("blocker-large", "100k"),
            ("blocker-1m", "1M"),
        ],
    ),
    ("vm", &[("blocker-10", "10"), ("blocker-large", "100k")]),
];
/// Where lockdown is measured: the VM, whose whole machine the bench owns.
const LOCKDOWN_ENVIRONMENT: &str = "vm";
/// Records per CPU second the event pipeline must carry.
const PIPELINE_PER_CORE: f64 = 200_000.0;
/// Bytes of the daemon's memory each of a million ban-map entries may take.
const BYTES_PER_ENTRY: f64 = 100.0;

/// The record a driver line carries, wherever the marker sits in it (the VM's console may
/// prefix it).
pub fn parse_record(line: &str) -> Option<Value> {
    let (_, record) = line.split_once(MARKER)?;
    serde_json::from_str::<Value>(record.trim())
        .ok()
        .filter(|record| record["kind"].is_string())
}

/// What was measured, and when.
pub struct Run<'a> {
    /// When the report was made, in UTC.
    pub generated: &'a str,
    /// The commit of the sources measured, in Markdown: `` `2778daf1b2c3` ``, with a note when
    /// the work tree had uncommitted changes.
    pub commit: &'a str,
    pub duration: Duration,
}

pub struct Report {
    generated: String,
    commit: String,
    duration: Duration,
    /// The `environment` record of each environment, by name.
    machines: BTreeMap<String, Value>,
    figures: Vec<Value>,
    targets: Vec<TargetResult>,
}

struct TargetResult {
    target: String,
    measured: String,
    verdict: Verdict,
}

/// A target is judged on the interval of its figure's median (a distribution-free confidence
/// interval, about 95 % from six samples on), not on the median alone: on a noisy machine a
/// median can land on either side of a target that the interval straddles.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Verdict {
    /// Even the unfavourable end of the interval meets it.
    Met,
    /// Even the favourable end misses it.
    Missed,
    /// The interval falls on both sides, or is wider than the difference the target asks
    /// to tell apart.
    Undecided,
}

impl Verdict {
    fn judge(favourable_meets: bool, unfavourable_meets: bool) -> Self {
        match (favourable_meets, unfavourable_meets) {
            (_, true) => Verdict::Met,
            (false, false) => Verdict::Missed,
            (true, false) => Verdict::Undecided,
        }
    }

    /// Like [`Verdict::judge`], for a target that asks for a difference no larger than
    /// `margin`: an interval wider than twice that cannot tell, wherever it lies.
    fn judge_within(estimate: Estimate, margin: f64, meets: impl Fn(f64) -> bool) -> Self {
        if estimate.high - estimate.low > 2.0 * margin {
            return Verdict::Undecided;
        }
        Verdict::judge(meets(estimate.low), meets(estimate.high))
    }

    fn text(self) -> &'static str {
        match self {
            Verdict::Met => "yes",
            Verdict::Missed => "**no**",
            Verdict::Undecided => "undecided: too noisy to tell",
        }
    }
}

/// The median of a figure or of its ratio, and the interval it lies in.
#[derive(Clone, Copy)]
struct Estimate {
    low: f64,
    median: f64,
    high: f64,
}

impl Estimate {
    fn of(summary: &Value, id: &str) -> Result<Self> {
        Ok(Self {
            low: number(&summary["median_low"], id)?,
            median: number(&summary["median"], id)?,
            high: number(&summary["median_high"], id)?,
        })
    }

    /// Shifted by `offset`, e.g. a ratio turned into an overhead.
    fn minus(self, offset: f64) -> Self {
        Self {
            low: self.low - offset,
            median: self.median - offset,
            high: self.high - offset,
        }
    }

    fn describe(self, show: impl Fn(f64) -> String) -> String {
        format!(
            "{} ({} to {})",
            show(self.median),
            show(self.low),
            show(self.high)
        )
    }
}

impl Report {
    /// Fails unless both environments described themselves and gave figures, and every figure
    /// a target needs was measured.
    pub fn new(records: Vec<Value>, run: &Run) -> Result<Self> {
        let mut machines = BTreeMap::new();
        let mut figures = Vec::new();
        for record in records {
            match record["kind"].as_str() {
                Some("environment") => {
                    let name = record["environment"].as_str().unwrap_or("?").to_owned();
                    machines.insert(name, record);
                }
                Some("figure") => figures.push(record),
                _ => bail!("the bench driver printed an unknown record: {record}"),
            }
        }
        for environment in ENVIRONMENTS {
            if !machines.contains_key(environment) {
                bail!("no description of the {environment} machine: did the bench run there?");
            }
            if !figures.iter().any(|f| f["environment"] == environment) {
                bail!("no figure was measured on the {environment} machine");
            }
        }
        let mut report = Self {
            generated: run.generated.to_owned(),
            commit: run.commit.to_owned(),
            duration: run.duration,
            machines,
            figures,
            targets: Vec::new(),
        };
        report.targets = report.evaluate_targets()?;
        Ok(report)
    }

    fn figure(&self, id: &str) -> Result<&Value> {
        self.figures
            .iter()
            .find(|figure| figure["id"] == id)
            .with_context(|| format!("figure {id} was not measured"))
    }

    fn estimate(&self, id: &str) -> Result<Estimate> {
        Estimate::of(&self.figure(id)?["summary"], id)
    }

    fn ratio_estimate(&self, id: &str) -> Result<Estimate> {
        Estimate::of(&self.figure(id)?["ratio"]["summary"], id)
    }

    /// The targets of the benchmarks issue, each judged on the interval of its figure's median.
    fn evaluate_targets(&self) -> Result<Vec<TargetResult>> {
        let mut results = Vec::new();
        for environment in ENVIRONMENTS {
            let blocker = self
                .ratio_estimate(&format!("exec.{environment}.blocker-large"))?
                .minus(1.0);
            let fapolicyd = self
                .ratio_estimate(&format!("exec.{environment}.fapolicyd"))?
                .minus(1.0);
            results.push(overhead_target(
                format!("{environment}: exec overhead ≤ 1 % with the 100k-entry policy"),
                blocker,
            ));
            results.push(self.kernel_cost_target(environment, fapolicyd)?);
            results.push(tenfold_target(
                format!("{environment}: at least 10× less exec overhead than fapolicyd"),
                blocker,
                fapolicyd,
            ));
        }
        results.extend(self.lockdown_targets()?);
        let seconds = |value: f64| format!("{} s", significant(value));
        let times = |value: f64| format!("{}×", significant(value));
        let load = self.estimate("load.host.total")?;
        let kernel_cpu = self.estimate("load.host.system-cpu")?;
        let cores = self.machines["host"]["cpus"].as_f64().unwrap_or(1.0);
        results.push(TargetResult {
            target: "1M entries resolved and loaded in ≤ 1 s".to_owned(),
            measured: format!(
                "{}; the kernel's own work took {} of CPU, at least {} on {cores} CPUs",
                load.describe(seconds),
                seconds(kernel_cpu.median),
                seconds(kernel_cpu.median / cores)
            ),
            verdict: Verdict::judge(load.low <= 1.0, load.high <= 1.0),
        });
        let memory = self.estimate("load.host.rss-per-entry")?;
        results.push(TargetResult {
            target: format!(
                "1M entries take ≤ {} bytes each in the daemon",
                significant(BYTES_PER_ENTRY)
            ),
            measured: memory.describe(|bytes| format!("{} B", significant(bytes))),
            verdict: Verdict::judge(
                memory.low <= BYTES_PER_ENTRY,
                memory.high <= BYTES_PER_ENTRY,
            ),
        });
        let check = self.estimate("check.host.total")?;
        results.push(TargetResult {
            target: "200,000 rules parsed and checked in ≤ 1 s".to_owned(),
            measured: check.describe(seconds),
            verdict: Verdict::judge(check.low <= 1.0, check.high <= 1.0),
        });
        for (id, what) in [
            ("scan.host.cold", "page cache dropped"),
            ("scan.host.cached", "files in the page cache"),
        ] {
            let speedup = self.ratio_estimate(id)?;
            results.push(TargetResult {
                target: format!(
                    "scan faster than sha256sum by at least the number of cores ({cores}), {what}"
                ),
                measured: speedup.describe(times),
                verdict: Verdict::judge(speedup.high >= cores, speedup.low >= cores),
            });
        }
        let pipeline = self.estimate("pipeline.host.per-core")?;
        let lost = ENVIRONMENTS
            .iter()
            .map(|environment| self.estimate(&format!("events.{environment}.lost")))
            .collect::<Result<Vec<_>>>()?;
        let worst_loss = lost.iter().map(|loss| loss.high).fold(0.0, f64::max);
        results.push(TargetResult {
            target: format!(
                "event pipeline ≥ {} records/s per core, no loss in any exec storm",
                significant(PIPELINE_PER_CORE)
            ),
            measured: format!(
                "{} per CPU second; storms lost at most {}",
                pipeline.describe(significant),
                share_percent(worst_loss / 100.0)
            ),
            verdict: if worst_loss > 0.0 {
                Verdict::Missed
            } else {
                Verdict::judge(
                    pipeline.high >= PIPELINE_PER_CORE,
                    pipeline.low >= PIPELINE_PER_CORE,
                )
            },
        });
        let rescan = self.ratio_estimate("scan.host.warm")?;
        results.push(TargetResult {
            target: "warm rescan ≥ 50× faster than a cold scan".to_owned(),
            measured: rescan.describe(times),
            verdict: Verdict::judge(rescan.high >= 50.0, rescan.low >= 50.0),
        });
        Ok(results)
    }

    /// The exec targets again in lockdown, with fapolicyd denying by default: only in the VM,
    /// since lockdown refuses every untrusted exec on the machine it runs on.
    fn lockdown_targets(&self) -> Result<[TargetResult; 3]> {
        let environment = LOCKDOWN_ENVIRONMENT;
        let blocker = self
            .ratio_estimate(&format!("lockdown.{environment}.blocker"))?
            .minus(1.0);
        let fapolicyd = self
            .ratio_estimate(&format!("lockdown.{environment}.fapolicyd"))?
            .minus(1.0);
        let kernel = self.ratio_estimate(&format!("kernel.{environment}.blocker-lockdown"))?;
        Ok([
            overhead_target(
                format!("{environment}: lockdown's exec overhead ≤ 1 % with 100k trusted files"),
                blocker,
            ),
            TargetResult {
                target: format!(
                    "{environment}: lockdown's kernel programs' cost ≤ 1 % of an exec, decided"
                ),
                measured: format!(
                    "{}; fapolicyd's exec overhead denying by default {}",
                    kernel.describe(share_percent),
                    fapolicyd.describe(percent)
                ),
                verdict: Verdict::judge(kernel.low <= 0.01, kernel.high <= 0.01),
            },
            tenfold_target(
                format!(
                    "{environment}: lockdown: at least 10× less exec overhead than fapolicyd \
                     denying by default"
                ),
                blocker,
                fapolicyd,
            ),
        ])
    }

    /// The kernel programs' time as a share of an exec, with every policy size measured in
    /// `environment`: met only if met at every size, missed if missed at any.
    fn kernel_cost_target(&self, environment: &str, fapolicyd: Estimate) -> Result<TargetResult> {
        let (_, sizes) = KERNEL_COST_FIGURES
            .iter()
            .find(|(name, _)| *name == environment)
            .expect("every environment has kernel-cost figures");
        let mut measured = Vec::new();
        let mut verdicts = Vec::new();
        for (key, entries) in *sizes {
            let share = self.ratio_estimate(&format!("kernel.{environment}.{key}"))?;
            measured.push(format!(
                "{entries} entries {}",
                share.describe(share_percent)
            ));
            verdicts.push(Verdict::judge(share.low <= 0.01, share.high <= 0.01));
        }
        let verdict = if verdicts.contains(&Verdict::Missed) {
            Verdict::Missed
        } else if verdicts.iter().all(|verdict| *verdict == Verdict::Met) {
            Verdict::Met
        } else {
            Verdict::Undecided
        };
        Ok(TargetResult {
            target: format!("{environment}: kernel programs' cost ≤ 1 % of an exec, decided"),
            measured: format!(
                "{}; fapolicyd's exec overhead {}",
                measured.join(", "),
                fapolicyd.describe(percent)
            ),
            verdict,
        })
    }

    /// The figures and targets as Markdown, headed by the machines they come from.
    pub fn table(&self) -> String {
        let mut out = format!(
            "Measured {} at commit {} in {:.0} min by `cargo xtask bench`.\n\n",
            self.generated,
            self.commit,
            self.duration.as_secs_f64() / 60.0
        );
        for (name, machine) in &self.machines {
            out.push_str(&format!("- **{name}**: {}\n", describe_machine(machine)));
        }
        out.push_str(
            "\n| Where | Figure | Median (interval) | q1–q3 | Samples (runs) | Ratio: median (interval) |\n\
             |---|---|---|---|---|---|\n",
        );
        let mut groups: Vec<&str> = Vec::new();
        for figure in &self.figures {
            let group = figure["group"].as_str().unwrap_or("?");
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
        for group in groups {
            out.push_str(&format!("| **{group}** | | | | | |\n"));
            for figure in self.figures.iter().filter(|f| f["group"] == group) {
                out.push_str(&figure_row(figure));
            }
        }
        out.push_str("\n| Target | Measured: median (interval) | Met |\n|---|---|---|\n");
        for result in &self.targets {
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                result.target,
                result.measured,
                result.verdict.text()
            ));
        }
        out
    }

    pub fn to_json(&self) -> String {
        let report = json!({
            "generated": self.generated,
            "commit": self.commit,
            "duration_seconds": self.duration.as_secs_f64(),
            "machines": self.machines,
            "figures": self.figures,
            "targets": self.targets.iter().map(|t| json!({
                "target": t.target,
                "measured": t.measured,
                "met": match t.verdict {
                    Verdict::Met => json!(true),
                    Verdict::Missed => json!(false),
                    Verdict::Undecided => json!(null),
                },
            })).collect::<Vec<_>>(),
        });
        serde_json::to_string_pretty(&report).expect("a JSON value always serialises")
    }
}

/// An exec overhead of at most 1 %: an interval wider than 2 points cannot tell.
fn overhead_target(target: String, blocker: Estimate) -> TargetResult {
    TargetResult {
        target,
        measured: blocker.describe(percent),
        verdict: Verdict::judge_within(blocker, 0.01, |overhead| overhead <= 0.01),
    }
}

/// blocker's exec overhead at most a tenth of fapolicyd's, measured side by side.
fn tenfold_target(target: String, blocker: Estimate, fapolicyd: Estimate) -> TargetResult {
    TargetResult {
        target,
        measured: format!(
            "blocker {}, fapolicyd {}",
            blocker.describe(percent),
            fapolicyd.describe(percent)
        ),
        verdict: if fapolicyd.low > 0.0 {
            Verdict::judge_within(blocker, fapolicyd.median / 10.0, |overhead| {
                overhead * 10.0 <= fapolicyd.low
            })
        } else {
            Verdict::Undecided
        },
    }
}

fn number(value: &Value, id: &str) -> Result<f64> {
    value
        .as_f64()
        .with_context(|| format!("figure {id} has no such number: {value}"))
}

fn describe_machine(machine: &Value) -> String {
    let memory_gib = machine["memory_mib"].as_f64().unwrap_or(0.0) / 1024.0;
    let emulation = if machine["environment"] == "vm" {
        "Debian's kernel under QEMU without KVM (TCG), "
    } else {
        ""
    };
    let cpus = machine["cpus"].as_u64().unwrap_or(0);
    format!(
        "{emulation}{} ({cpus} CPU{}), {:.1} GiB, Linux {}, blocker's `{}` backend",
        machine["cpu"].as_str().unwrap_or("unknown CPU"),
        if cpus == 1 { "" } else { "s" },
        memory_gib,
        machine["kernel"].as_str().unwrap_or("?"),
        machine["backend"].as_str().unwrap_or("?"),
    )
}

fn figure_row(figure: &Value) -> String {
    let summary = &figure["summary"];
    let value =
        |summary: &Value, field: &str| significant(summary[field].as_f64().unwrap_or(f64::NAN));
    let median = |summary: &Value, unit: &str| {
        format!(
            "{}{unit} ({}–{})",
            value(summary, "median"),
            value(summary, "median_low"),
            value(summary, "median_high")
        )
    };
    let ratio = match figure["ratio"].as_object() {
        Some(ratio) => format!(
            "{} {}",
            median(&ratio["summary"], ""),
            ratio["definition"].as_str().unwrap_or("")
        ),
        None => String::new(),
    };
    format!(
        "| {} | {} | {} | {}–{} | {} ({}) | {} |\n",
        figure["environment"].as_str().unwrap_or("?"),
        figure["name"].as_str().unwrap_or("?"),
        median(
            summary,
            &format!(" {}", figure["unit"].as_str().unwrap_or(""))
        ),
        value(summary, "q1"),
        value(summary, "q3"),
        summary["samples"],
        figure["repetitions"],
        ratio
    )
}

/// Three significant digits at least; three decimals below 10, where ratios near 1 live.
fn significant(value: f64) -> String {
    let magnitude = value.abs();
    let decimals = if magnitude >= 100.0 {
        0
    } else if magnitude >= 10.0 {
        1
    } else if magnitude >= 0.01 || magnitude == 0.0 {
        3
    } else {
        5
    };
    format!("{value:.decimals$}")
}

fn percent(overhead: f64) -> String {
    format!("{:+.1} %", overhead * 100.0)
}

/// A share of a whole, small ones with the digits they need.
fn share_percent(share: f64) -> String {
    format!("{} %", significant(share * 100.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_records_wherever_the_marker_is() {
        let record = parse_record("vm| BLOCKER-BENCH: {\"kind\":\"figure\",\"id\":\"x\"}\r");
        assert_eq!(record.unwrap()["id"], "x");
        assert!(parse_record("bench: exec latency (host): round 1 of 20").is_none());
        assert!(parse_record("BLOCKER-BENCH: not json").is_none());
        assert!(parse_record("BLOCKER-BENCH: {\"no\":\"kind\"}").is_none());
    }

    type Interval = (f64, f64, f64);

    fn run(duration: Duration) -> Run<'static> {
        Run {
            generated: "2026-11-30T07:34:18Z",
            commit: "`2778daf1b2c3`",
            duration,
        }
    }

    /// A summary whose median interval is (low, median, high), and quartiles the same.
    fn summary((low, median, high): Interval) -> Value {
        json!({
            "median": median, "q1": low, "q3": high, "min": low, "max": high, "samples": 3,
            "median_low": low, "median_high": high, "median_confidence": 0.75,
        })
    }

    fn figure(id: &str, environment: &str, value: Interval, ratio: Option<Interval>) -> Value {
        json!({
            "kind": "figure", "id": id, "environment": environment, "group": "g", "name": id,
            "unit": "s", "repetitions": 3, "summary": summary(value),
            "ratio": ratio.map(|r| json!({"definition": "÷ x", "summary": summary(r)})),
        })
    }

    fn complete_run() -> Vec<Value> {
        let one = (1.0, 1.0, 1.0);
        let mut records = Vec::new();
        for (environment, blocker) in [("host", (0.995, 1.005, 1.02)), ("vm", (0.99, 1.0, 1.005))] {
            records.push(json!({
                "kind": "environment", "environment": environment, "cpus": 2, "cpu": "c",
                "kernel": "k", "memory_mib": 1024, "backend": "b",
            }));
            let exec = |key: &str| format!("exec.{environment}.{key}");
            records.push(figure(
                &exec("blocker-large"),
                environment,
                one,
                Some(blocker),
            ));
            records.push(figure(
                &exec("fapolicyd"),
                environment,
                one,
                Some((1.15, 1.2, 1.25)),
            ));
            let (_, sizes) = KERNEL_COST_FIGURES
                .iter()
                .find(|(name, _)| *name == environment)
                .unwrap();
            for (key, _) in *sizes {
                // The host's largest policy straddles 1 %.
                let share = if *key == "blocker-1m" {
                    (0.005, 0.008, 0.012)
                } else {
                    (0.001, 0.002, 0.003)
                };
                let id = format!("kernel.{environment}.{key}");
                records.push(figure(&id, environment, one, Some(share)));
            }
            let lost = format!("events.{environment}.lost");
            records.push(figure(&lost, environment, (0.0, 0.0, 0.0), None));
        }
        records.push(figure(
            "lockdown.vm.blocker",
            "vm",
            one,
            Some((0.995, 1.0, 1.004)),
        ));
        records.push(figure(
            "lockdown.vm.fapolicyd",
            "vm",
            one,
            Some((1.1, 1.3, 1.4)),
        ));
        records.push(figure(
            "kernel.vm.blocker-lockdown",
            "vm",
            one,
            Some((0.006, 0.008, 0.011)),
        ));
        records.push(figure(
            "pipeline.host.per-core",
            "host",
            (210e3, 230e3, 250e3),
            None,
        ));
        records.push(figure("load.host.total", "host", (2.4, 2.5, 2.6), None));
        records.push(figure(
            "load.host.system-cpu",
            "host",
            (3.8, 4.0, 4.2),
            None,
        ));
        records.push(figure(
            "load.host.rss-per-entry",
            "host",
            (80.0, 85.0, 90.0),
            None,
        ));
        records.push(figure("check.host.total", "host", (0.6, 0.7, 0.8), None));
        records.push(figure("scan.host.cold", "host", one, Some((1.4, 1.5, 1.6))));
        records.push(figure(
            "scan.host.cached",
            "host",
            one,
            Some((2.4, 2.5, 2.6)),
        ));
        records.push(figure(
            "scan.host.warm",
            "host",
            one,
            Some((70.0, 80.0, 90.0)),
        ));
        records
    }

    #[test]
    fn judges_each_target_on_the_interval_of_its_median() {
        let report = Report::new(complete_run(), &run(Duration::from_secs(60))).unwrap();
        let verdicts: Vec<(&str, Verdict)> = report
            .targets
            .iter()
            .map(|t| (t.measured.as_str(), t.verdict))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("+0.5 % (-0.5 % to +2.0 %)", Verdict::Undecided),
                (
                    "10 entries 0.200 % (0.100 % to 0.300 %), 100k entries 0.200 % (0.100 % to \
                     0.300 %), 1M entries 0.800 % (0.500 % to 1.200 %); fapolicyd's exec \
                     overhead +20.0 % (+15.0 % to +25.0 %)",
                    Verdict::Undecided
                ),
                (
                    "blocker +0.5 % (-0.5 % to +2.0 %), fapolicyd +20.0 % (+15.0 % to +25.0 %)",
                    Verdict::Undecided
                ),
                ("+0.0 % (-1.0 % to +0.5 %)", Verdict::Met),
                (
                    "10 entries 0.200 % (0.100 % to 0.300 %), 100k entries 0.200 % (0.100 % to \
                     0.300 %); fapolicyd's exec overhead +20.0 % (+15.0 % to +25.0 %)",
                    Verdict::Met
                ),
                (
                    "blocker +0.0 % (-1.0 % to +0.5 %), fapolicyd +20.0 % (+15.0 % to +25.0 %)",
                    Verdict::Met
                ),
                ("+0.0 % (-0.5 % to +0.4 %)", Verdict::Met),
                (
                    "0.800 % (0.600 % to 1.100 %); fapolicyd's exec overhead denying by default \
                     +30.0 % (+10.0 % to +40.0 %)",
                    Verdict::Undecided
                ),
                (
                    "blocker +0.0 % (-0.5 % to +0.4 %), fapolicyd +30.0 % (+10.0 % to +40.0 %)",
                    Verdict::Met
                ),
                (
                    "2.500 s (2.400 s to 2.600 s); the kernel's own work took 4.000 s of CPU, at \
                     least 2.000 s on 2 CPUs",
                    Verdict::Missed
                ),
                ("85.0 B (80.0 B to 90.0 B)", Verdict::Met),
                ("0.700 s (0.600 s to 0.800 s)", Verdict::Met),
                ("1.500× (1.400× to 1.600×)", Verdict::Missed),
                ("2.500× (2.400× to 2.600×)", Verdict::Met),
                (
                    "230000 (210000 to 250000) per CPU second; storms lost at most 0.000 %",
                    Verdict::Met
                ),
                ("80.0× (70.0× to 90.0×)", Verdict::Met),
            ]
        );
        let table = report.table();
        assert!(
            table.contains("| host | load.host.total | 2.500 s (2.400–2.600) | 2.400–2.600 |"),
            "{table}"
        );
        assert!(table.contains(
            "| warm rescan ≥ 50× faster than a cold scan | 80.0× (70.0× to 90.0×) | yes |"
        ));
    }

    #[test]
    fn an_interval_wider_than_the_margin_cannot_tell() {
        // Entirely under the target, but 20 points wide: a drift, not a measurement of 1 %.
        let drifted = Estimate {
            low: -0.25,
            median: -0.15,
            high: -0.05,
        };
        let verdict = Verdict::judge_within(drifted, 0.01, |overhead| overhead <= 0.01);
        assert_eq!(verdict, Verdict::Undecided);
    }

    #[test]
    fn refuses_an_incomplete_run() {
        let mut records = complete_run();
        records.retain(|record| record["id"] != "scan.host.warm");
        let error = Report::new(records, &run(Duration::ZERO)).err().unwrap();
        assert_eq!(error.to_string(), "figure scan.host.warm was not measured");

        let host_only: Vec<Value> = complete_run()
            .into_iter()
            .filter(|record| record["environment"] == "host")
            .collect();
        let error = Report::new(host_only, &run(Duration::ZERO)).err().unwrap();
        assert!(error.to_string().contains("vm machine"), "{error}");
    }

    #[test]
    fn writes_the_table_between_the_latest_results_markers() {
        let report = Report::new(complete_run(), &run(Duration::from_secs(900))).unwrap();
        let document = format!(
            "# Performance\n\n## Latest results\n\n{}\nMeasured long ago.\n| old | row |\n{}\n\n\
             ## What each figure means\n",
            LATEST_RESULTS.begin, LATEST_RESULTS.end
        );
        let written = LATEST_RESULTS.replace(&document, &report.table()).unwrap();
        assert_eq!(
            written,
            format!(
                "# Performance\n\n## Latest results\n\n{}\n{}{}\n\n## What each figure means\n",
                LATEST_RESULTS.begin,
                report.table(),
                LATEST_RESULTS.end
            )
        );
        assert!(written.contains(
            "\nMeasured 2026-11-30T07:34:18Z at commit `2778daf1b2c3` in 15 min by `cargo xtask \
             bench`.\n"
        ));
        assert!(written.contains("| host | load.host.total | 2.500 s (2.400–2.600) |"));
        assert!(!written.contains("long ago"));
    }

    #[test]
    fn the_performance_document_has_the_markers() {
        let document = include_str!("../../docs/PERFORMANCE.md");
        assert!(LATEST_RESULTS.replace(document, "new\n").is_ok());
    }
}
