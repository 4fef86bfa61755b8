//! File names and `comm` an attacker chooses, on the host's kernel (kill backend): a banned
//! program run through a name with terminal escapes, a newline and bytes that are not UTF-8 is
//! reported with its exact bytes in JSON and escaped everywhere people read it.

use std::{
    ffi::OsStr,
    os::unix::{ffi::OsStrExt, process::ExitStatusExt},
    process::Command,
};

use anyhow::{ensure, Context, Result};
use blocker_integration_tests::{blocker_bin, harmless_binary, Daemon, Sandbox, EVENT_TIMEOUT};
use serde_json::Value;

/// OSC 0 (retitle the terminal), BEL, a newline starting a forged log line, a byte that is not
/// UTF-8, and a right-to-left override.
const HOSTILE_NAME: &[u8] = b"x\x1b]0;owned\x07\nblocker: forged\xff\xe2\x80\xae";
/// The same name as people must see it.
const SHOWN_NAME: &str = r"x\x1b]0;owned\x07\nblocker: forged\xff\u{202e}";

fn from_hex(hex: &str) -> Option<Vec<u8>> {
    (0..hex.len())
        .step_by(2)
        .map(|start| u8::from_str_radix(hex.get(start..start + 2)?, 16).ok())
        .collect()
}

/// The exact bytes of a record's field, from `<name>_hex` where there is one.
fn exact_bytes(record: &Value, name: &str) -> Option<Vec<u8>> {
    match record[format!("{name}_hex")].as_str() {
        Some(hex) => from_hex(hex),
        None => record[name].as_str().map(|text| text.as_bytes().to_vec()),
    }
}

/// Whether text holds anything that acts on a terminal (every character a control or a
/// bidirectional override, newlines between lines aside).
fn has_terminal_controls(text: &str) -> bool {
    text.chars()
        .any(|c| (c.is_control() && c != '\n') || ('\u{202a}'..='\u{202e}').contains(&c))
}

fn blocker_output(args: &[&OsStr]) -> Result<String> {
    let output = Command::new(blocker_bin()).args(args).output()?;
    ensure!(
        output.status.code() == Some(0),
        "blocker {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout).context("blocker's output is UTF-8")
}

#[test]
fn hostile_names_are_exact_in_json_and_escaped_for_people() -> Result<()> {
    let sandbox = Sandbox::new("hostile")?;
    let directory = sandbox.path("banned-tree");
    std::fs::create_dir(&directory)?;
    let banned = directory.join(OsStr::from_bytes(HOSTILE_NAME));
    std::fs::copy(harmless_binary(), &banned)?;
    sandbox.write_policy(
        "test.toml",
        &format!(
            "name = \"test\"\n[[rule]]\nid = \"ban\"\npath_prefixes = [{:?}]\n",
            directory.display().to_string()
        ),
    )?;

    let (mut daemon, started) = Daemon::start(&sandbox.policy_dir(), &["--backend", "kill"])?;
    ensure!(started["entries"] == 1, "{started}");
    let status = Command::new(&banned).status()?;
    ensure!(
        status.signal() == Some(libc::SIGKILL),
        "not killed: {status}"
    );

    // JSON on stdout: the exact bytes.
    let record = daemon.wait_for_record(EVENT_TIMEOUT, |record| record["kind"] == "exec")?;
    ensure!(
        exact_bytes(&record, "path").as_deref() == Some(banned.as_os_str().as_bytes()),
        "{record}"
    );
    // The kernel names the task after the first 15 bytes of the file name.
    ensure!(
        exact_bytes(&record, "comm").as_deref() == Some(&HOSTILE_NAME[..15]),
        "{record}"
    );

    // The daemon's log: one line, escaped.
    let shown_path = format!("{}/{SHOWN_NAME}", directory.display());
    let line = daemon.wait_for_log(&shown_path, EVENT_TIMEOUT)?;
    ensure!(line.contains("killed exec of"), "{line}");
    ensure!(line.contains(r"(x\x1b]0;owned\x07\nblo, uid"), "{line}");
    let events_file = daemon.events_file().to_owned();
    let (status, _, log) = daemon.stop()?;
    ensure!(status.success(), "{log:?}");
    ensure!(
        !log.iter()
            .any(|line| has_terminal_controls(line) || line.starts_with("blocker: forged")),
        "{log:?}"
    );

    // `blocker events`: the table escapes, one row per record; --json keeps the bytes.
    let file = events_file.as_os_str();
    let table = blocker_output(&[OsStr::new("events"), OsStr::new("--file"), file])?;
    ensure!(!has_terminal_controls(&table), "{table:?}");
    let rows: Vec<&str> = table.lines().collect();
    ensure!(rows.len() == 4, "header, started, exec, stopped: {table}");
    ensure!(rows[2].ends_with(&shown_path), "{table}");
    let json = blocker_output(&[
        OsStr::new("events"),
        OsStr::new("--json"),
        OsStr::new("--file"),
        file,
    ])?;
    let exec: Value = json
        .lines()
        .map(serde_json::from_str::<Value>)
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .find(|record| record["kind"] == "exec")
        .context("an exec record")?;
    ensure!(
        exact_bytes(&exec, "path").as_deref() == Some(banned.as_os_str().as_bytes()),
        "{exec}"
    );

    // `explain` and `resolve` name the file escaped.
    let policy_dir = sandbox.policy_dir();
    let explained = blocker_output(&[
        OsStr::new("explain"),
        banned.as_os_str(),
        OsStr::new("--policy-dir"),
        policy_dir.as_os_str(),
    ])?;
    ensure!(!has_terminal_controls(&explained), "{explained:?}");
    ensure!(
        explained.starts_with(&format!("{shown_path}: banned by rule ban")),
        "{explained}"
    );
    let resolved = blocker_output(&[OsStr::new("resolve"), policy_dir.as_os_str()])?;
    ensure!(!has_terminal_controls(&resolved), "{resolved:?}");
    ensure!(resolved.contains(&shown_path), "{resolved}");
    let resolved_json = blocker_output(&[
        OsStr::new("resolve"),
        OsStr::new("--json"),
        policy_dir.as_os_str(),
    ])?;
    let document: Value = serde_json::from_str(&resolved_json)?;
    let file = &document["rules"][0]["files"][0];
    ensure!(
        exact_bytes(file, "path").as_deref() == Some(banned.as_os_str().as_bytes()),
        "{file}"
    );
    Ok(())
}
