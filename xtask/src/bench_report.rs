//! The bench's report: the records the driver printed on the host and in the VM, checked to be
//! complete, the targets the project set itself, a Markdown table and `report.json`.

use std::{collections::BTreeMap, time::Duration};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Starts every line the bench driver prints a record on (its `figure.rs` says the same).
const MARKER: &str = "BLOCKER-BENCH:";
const ENVIRONMENTS: [&str; 2] = ["host", "vm"];

/// The record a driver line carries, wherever the marker sits in it (the VM's console may
/// prefix it).
pub fn parse_record(line: &str) -> Option<Value> {
    let (_, record) = line.split_once(MARKER)?;
    serde_json::from_str::<Value>(record.trim())
        .ok()
        .filter(|record| record["kind"].is_string())
}

pub struct Report {
    generated: String,
    duration: Duration,
    /// The `environment` record of each environment, by name.
    machines: BTreeMap<String, Value>,
    figures: Vec<Value>,
    targets: Vec<TargetResult>,
}

struct TargetResult {
    target: String,
    measured: String,
    met: bool,
}

impl Report {
    /// Fails unless both environments described themselves and gave figures, and every figure
    /// a target needs was measured.
    pub fn new(records: Vec<Value>, duration: Duration, generated: &str) -> Result<Self> {
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
            generated: generated.to_owned(),
            duration,
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

    fn median(&self, id: &str) -> Result<f64> {
        number(&self.figure(id)?["summary"]["median"], id)
    }

    fn ratio_median(&self, id: &str) -> Result<f64> {
        number(&self.figure(id)?["ratio"]["summary"]["median"], id)
    }

    /// The targets of the benchmarks issue, each against the median of its figure.
    fn evaluate_targets(&self) -> Result<Vec<TargetResult>> {
        let mut results = Vec::new();
        for environment in ENVIRONMENTS {
            let blocker = self.ratio_median(&format!("exec.{environment}.blocker-large"))? - 1.0;
            let fapolicyd = self.ratio_median(&format!("exec.{environment}.fapolicyd"))? - 1.0;
            results.push(TargetResult {
                target: format!("{environment}: exec overhead ≤ 1 % with the 100k-entry policy"),
                measured: percent(blocker),
                met: blocker <= 0.01,
            });
            results.push(TargetResult {
                target: format!("{environment}: at least 10× less exec overhead than fapolicyd"),
                measured: format!(
                    "blocker {}, fapolicyd {}",
                    percent(blocker),
                    percent(fapolicyd)
                ),
                met: fapolicyd > 0.0 && blocker * 10.0 <= fapolicyd,
            });
        }
        let load = self.median("load.host.total")?;
        results.push(TargetResult {
            target: "1M entries resolved and loaded in ≤ 1 s".to_owned(),
            measured: format!("{} s", significant(load)),
            met: load <= 1.0,
        });
        let cores = self.machines["host"]["cpus"].as_f64().unwrap_or(1.0);
        for (id, what) in [
            ("scan.host.cold", "page cache dropped"),
            ("scan.host.cached", "files in the page cache"),
        ] {
            let speedup = self.ratio_median(id)?;
            results.push(TargetResult {
                target: format!(
                    "scan faster than sha256sum by at least the number of cores ({cores}), {what}"
                ),
                measured: format!("{}×", significant(speedup)),
                met: speedup >= cores,
            });
        }
        let rescan = self.ratio_median("scan.host.warm")?;
        results.push(TargetResult {
            target: "warm rescan ≥ 50× faster than a cold scan".to_owned(),
            measured: format!("{}×", significant(rescan)),
            met: rescan >= 50.0,
        });
        Ok(results)
    }

    /// The figures and targets as Markdown, headed by the machines they come from.
    pub fn table(&self) -> String {
        let mut out = format!(
            "Measured {} in {:.0} min by `cargo xtask bench`.\n\n",
            self.generated,
            self.duration.as_secs_f64() / 60.0
        );
        for (name, machine) in &self.machines {
            out.push_str(&format!("- **{name}**: {}\n", describe_machine(machine)));
        }
        out.push_str(
            "\n| Where | Figure | Median | q1–q3 | min–max | Samples (runs) | Ratio: median (q1–q3) |\n\
             |---|---|---|---|---|---|---|\n",
        );
        let mut groups: Vec<&str> = Vec::new();
        for figure in &self.figures {
            let group = figure["group"].as_str().unwrap_or("?");
            if !groups.contains(&group) {
                groups.push(group);
            }
        }
        for group in groups {
            out.push_str(&format!("| **{group}** | | | | | | |\n"));
            for figure in self.figures.iter().filter(|f| f["group"] == group) {
                out.push_str(&figure_row(figure));
            }
        }
        out.push_str("\n| Target | Measured (median) | Met |\n|---|---|---|\n");
        for result in &self.targets {
            out.push_str(&format!(
                "| {} | {} | {} |\n",
                result.target,
                result.measured,
                if result.met { "yes" } else { "**no**" }
            ));
        }
        out
    }

    pub fn to_json(&self) -> String {
        let report = json!({
            "generated": self.generated,
            "duration_seconds": self.duration.as_secs_f64(),
            "machines": self.machines,
            "figures": self.figures,
            "targets": self.targets.iter().map(|t| json!({
                "target": t.target, "measured": t.measured, "met": t.met,
            })).collect::<Vec<_>>(),
        });
        serde_json::to_string_pretty(&report).expect("a JSON value always serialises")
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
    let value = |field: &str| significant(summary[field].as_f64().unwrap_or(f64::NAN));
    let ratio = match figure["ratio"].as_object() {
        Some(ratio) => {
            let ratio_summary = &ratio["summary"];
            let value =
                |field: &str| significant(ratio_summary[field].as_f64().unwrap_or(f64::NAN));
            format!(
                "{} ({}–{}) {}",
                value("median"),
                value("q1"),
                value("q3"),
                ratio["definition"].as_str().unwrap_or("")
            )
        }
        None => String::new(),
    };
    format!(
        "| {} | {} | {} {} | {}–{} | {}–{} | {} ({}) | {} |\n",
        figure["environment"].as_str().unwrap_or("?"),
        figure["name"].as_str().unwrap_or("?"),
        value("median"),
        figure["unit"].as_str().unwrap_or(""),
        value("q1"),
        value("q3"),
        value("min"),
        value("max"),
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

    fn figure(id: &str, environment: &str, median: f64, ratio: Option<f64>) -> Value {
        json!({
            "kind": "figure", "id": id, "environment": environment, "group": "g", "name": id,
            "unit": "s", "repetitions": 3,
            "summary": {"median": median, "q1": median, "q3": median, "min": median, "max": median, "samples": 3},
            "ratio": ratio.map(|r| json!({"definition": "÷ x", "summary": {"median": r, "q1": r, "q3": r, "min": r, "max": r, "samples": 3}})),
        })
    }

    fn complete_run() -> Vec<Value> {
        let mut records = Vec::new();
        for environment in ENVIRONMENTS {
            records.push(json!({"kind": "environment", "environment": environment, "cpus": 2, "cpu": "c", "kernel": "k", "memory_mib": 1024, "backend": "b"}));
            records.push(figure(
                &format!("exec.{environment}.blocker-large"),
                environment,
                1.0,
                Some(1.005),
            ));
            records.push(figure(
                &format!("exec.{environment}.fapolicyd"),
                environment,
                1.0,
                Some(1.2),
            ));
        }
        records.push(figure("load.host.total", "host", 2.5, None));
        records.push(figure("scan.host.cold", "host", 1.0, Some(1.5)));
        records.push(figure("scan.host.cached", "host", 1.0, Some(2.5)));
        records.push(figure("scan.host.warm", "host", 1.0, Some(80.0)));
        records
    }

    #[test]
    fn judges_each_target_by_its_median() {
        let report = Report::new(complete_run(), Duration::from_secs(60), "now").unwrap();
        let verdicts: Vec<(String, bool)> = report
            .targets
            .iter()
            .map(|t| (t.measured.clone(), t.met))
            .collect();
        assert_eq!(
            verdicts,
            [
                ("+0.5 %".to_owned(), true),
                ("blocker +0.5 %, fapolicyd +20.0 %".to_owned(), true),
                ("+0.5 %".to_owned(), true),
                ("blocker +0.5 %, fapolicyd +20.0 %".to_owned(), true),
                ("2.500 s".to_owned(), false),
                ("1.500×".to_owned(), false),
                ("2.500×".to_owned(), true),
                ("80.0×".to_owned(), true),
            ]
        );
        let table = report.table();
        assert!(
            table.contains("| host | load.host.total | 2.500 s |"),
            "{table}"
        );
        assert!(table.contains("| warm rescan ≥ 50× faster than a cold scan | 80.0× | yes |"));
    }

    #[test]
    fn refuses_an_incomplete_run() {
        let mut records = complete_run();
        records.retain(|record| record["id"] != "scan.host.warm");
        let error = Report::new(records, Duration::ZERO, "now").err().unwrap();
        assert_eq!(error.to_string(), "figure scan.host.warm was not measured");

        let host_only: Vec<Value> = complete_run()
            .into_iter()
            .filter(|record| record["environment"] == "host")
            .collect();
        let error = Report::new(host_only, Duration::ZERO, "now").err().unwrap();
        assert!(error.to_string().contains("vm machine"), "{error}");
    }
}
