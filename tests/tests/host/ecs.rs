//! `blocker run --events-format ecs`: the events file and stdout get Elastic Common Schema
//! documents, which `blocker events` still reads.

use std::{os::unix::process::ExitStatusExt, process::Command};

use anyhow::{ensure, Context, Result};
use blocker_integration_tests::{
    blocker_bin, comm_of, events_in, run_as_launcher, BanScenario, Daemon, EVENT_TIMEOUT,
    STARTUP_TIMEOUT,
};
use serde_json::Value;

fn blocker_kind(document: &Value) -> &str {
    document["blocker"]["kind"].as_str().unwrap_or_default()
}

fn blocker_events(args: &[&str]) -> Result<String> {
    let output = Command::new(blocker_bin())
        .arg("events")
        .args(args)
        .output()?;
    ensure!(
        output.status.success(),
        "blocker events {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).context("blocker events' output is UTF-8")
}

#[test]
fn a_denial_is_an_ecs_document_that_blocker_events_shows() -> Result<()> {
    let scenario = BanScenario::new("ecs")?;
    let banned = scenario.banned.display().to_string();
    let mut daemon = Daemon::spawn(
        &scenario.sandbox.policy_dir(),
        &["--backend", "kill", "--events-format", "ecs"],
    )?;
    let started = daemon.wait_for_record(STARTUP_TIMEOUT, |document| {
        blocker_kind(document) == "started"
    })?;
    ensure!(started["blocker"]["backend"] == "kill", "{started}");
    ensure!(
        started["event"]["category"] == serde_json::json!(["process"]),
        "{started}"
    );

    let (pid, status) = run_as_launcher(&scenario.banned)?;
    ensure!(
        status.signal() == Some(libc::SIGKILL),
        "not killed: {status}"
    );
    let on_stdout = daemon.wait_for_record(EVENT_TIMEOUT, |document| {
        blocker_kind(document) == "exec" && document["file"]["path"] == banned.as_str()
    })?;
    let events_file = daemon.events_file().to_owned();
    let (status, _, log) = daemon.stop()?;
    ensure!(status.success(), "{log:?}");

    let documents = events_in(&events_file)?;
    let kinds: Vec<&str> = documents.iter().map(blocker_kind).collect();
    ensure!(kinds == ["started", "exec", "stopped"], "{documents:?}");
    let exec = &documents[1];
    ensure!(
        *exec == on_stdout,
        "stdout and the file get the same document"
    );
    let hostname = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    for (field, expected) in [
        (&exec["ecs"]["version"], Value::from("8.17.0")),
        (&exec["event"]["kind"], "alert".into()),
        (
            &exec["event"]["type"],
            serde_json::json!(["start", "denied"]),
        ),
        (&exec["event"]["outcome"], "failure".into()),
        (&exec["event"]["action"], "exec".into()),
        (&exec["process"]["pid"], pid.into()),
        (&exec["process"]["executable"], banned.as_str().into()),
        (&exec["process"]["name"], comm_of(&scenario.banned).into()),
        (&exec["user"]["id"], "0".into()),
        (&exec["rule"]["id"], "ban".into()),
        (&exec["rule"]["description"], "banned by the test".into()),
        (&exec["host"]["name"], hostname.trim().into()),
        (&exec["blocker"]["enforcement"], "sigkill".into()),
        (&exec["blocker"]["backend"], "kill".into()),
    ] {
        ensure!(*field == expected, "{expected} expected: {exec}");
    }
    let message = exec["message"].as_str().unwrap_or_default();
    ensure!(
        message.starts_with(&format!("killed exec of {banned} by pid {pid}")),
        "{exec}"
    );
    ensure!(
        exec["file"]["inode"].is_string() && exec["@timestamp"].is_string(),
        "{exec}"
    );

    let file = events_file.to_str().context("a UTF-8 sandbox path")?;
    let table = blocker_events(&["--file", file, "--rule", "ban"])?;
    let rows: Vec<&str> = table.lines().collect();
    ensure!(rows.len() == 2, "header and the denial: {table}");
    ensure!(
        rows[1].contains(" killed ")
            && rows[1].contains(" ban ")
            && rows[1].contains(&format!(" {pid} "))
            && rows[1].ends_with(&banned),
        "{table}"
    );
    let json = blocker_events(&["--file", file, "--json", "--since", "1h"])?;
    let printed: Vec<Value> = json
        .lines()
        .map(serde_json::from_str)
        .collect::<Result<_, _>>()?;
    ensure!(
        printed == documents,
        "--json prints the documents as written: {json}"
    );
    Ok(())
}
