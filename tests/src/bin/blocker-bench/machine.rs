//! A description of the machine the figures come from, emitted before them.

use std::fs;

use serde_json::{json, Value};

use crate::figure::Environment;

pub fn describe(environment: Environment) -> Value {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = cpuinfo
        .lines()
        .find_map(|line| line.strip_prefix("model name"))
        .and_then(|rest| rest.split_once(':'))
        .map_or("unknown", |(_, model)| model.trim());
    let memory_mib = fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|meminfo| {
            meminfo
                .lines()
                .find_map(|line| line.strip_prefix("MemTotal:"))
                .and_then(|kib| kib.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map(|kib| kib >> 10);
    let read = |path: &str| {
        fs::read_to_string(path)
            .map(|text| text.trim().to_owned())
            .ok()
    };
    json!({
        "kind": "environment",
        "environment": environment.name(),
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map_or(1, usize::from),
        "kernel": read("/proc/sys/kernel/osrelease"),
        "memory_mib": memory_mib,
        "backend": environment.backend(),
    })
}
