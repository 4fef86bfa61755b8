//! `blocker sync` against the test Santa sync server (tests/src/santa.rs) over loopback with
//! mutual TLS, on the host kernel (the `kill` backend): synced rules reach a running daemon and
//! are enforced, removed and cleaned; pages are applied together; a server that is down or
//! hostile changes nothing; 100,000 rules are taken; denials are uploaded, once, and after an
//! outage.

use std::{fs, os::unix::process::ExitStatusExt, path::Path, process::Command};

use anyhow::{ensure, Context, Result};
use blocker_integration_tests::{
    blocker_bin, promtool_check,
    santa::{
        binary_rule, uploaded_events, wait_for_denials, wait_until, Fleet, Misbehaviour, Pki,
        MACHINE_ID, SYNC_METRICS_FILE,
    },
    BanScenario, Sandbox,
};
use serde_json::{json, Value};

fn is_killed(path: &Path) -> Result<bool> {
    let status = Command::new(path).status()?;
    Ok(status.signal() == Some(libc::SIGKILL))
}

/// Waits until running `path` is refused (the daemon reloaded and banned it).
fn wait_until_banned(path: &Path) -> Result<()> {
    wait_until(
        || is_killed(path),
        &format!("{} to be banned", path.display()),
    )
}

/// Waits until `path` runs again.
fn wait_until_allowed(path: &Path) -> Result<()> {
    wait_until(
        || Ok(Command::new(path).status()?.success()),
        &format!("{} to run", path.display()),
    )
}

#[test]
fn synced_rules_are_enforced_removed_and_cleaned_and_outlive_the_server() -> Result<()> {
    let scenario = BanScenario::new("sync")?;
    let fleet = Fleet::new(scenario.sandbox, "")?;
    let (told, told_hash) = fleet.unique_binary("told")?;
    let (plain, plain_hash) = fleet.unique_binary("plain")?;
    let (later, later_hash) = fleet.unique_binary("later")?;
    fleet.server.set_rules_toml(&format!(
        "client_mode = \"MONITOR\"\n{}custom_msg = \"Ask IT first\"\n\
         custom_url = \"https://wiki.example/blocked\"\n{}\
         [[rules]]\nrule_type = \"TEAMID\"\npolicy = \"BLOCKLIST\"\nidentifier = \"EQHXZ8M8AV\"\n\
         [[rules]]\nrule_type = \"CERTIFICATE\"\npolicy = \"BLOCKLIST\"\nidentifier = \"{}\"\n",
        binary_rule(&told_hash, "BLOCKLIST"),
        binary_rule(&plain_hash, "SILENT_BLOCKLIST"),
        "c".repeat(64),
    ))?;
    let mut daemon = fleet.start_daemon("kill", &[])?;

    let said = fleet.synced(&[])?;
    ensure!(
        said.contains("CLEAN sync: 4 rules received; 2 added, 0 changed, 0 removed"),
        "{said}"
    );
    ensure!(said.contains("1 CERTIFICATE, 1 TEAMID"), "{said}");
    let preflight = &fleet.requests("preflight")[0];
    ensure!(
        preflight["request_clean_sync"] == true && preflight["machine_id"] == MACHINE_ID,
        "a machine without sync state asks for a clean sync: {preflight}"
    );
    let postflight = &fleet.requests("postflight")[0];
    ensure!(
        postflight["rules_received"] == 4 && postflight["rules_processed"] == 2,
        "{postflight}"
    );
    ensure!(postflight["sync_type"] == "CLEAN", "{postflight}");
    wait_until_banned(&told)?;
    wait_until_banned(&plain)?;
    let record = daemon.wait_for_exec(&told)?;
    ensure!(
        record["policy"] == "santa-sync"
            && record["reason"] == "Ask IT first"
            && record["url"] == "https://wiki.example/blocked",
        "the rule's message and URL travel into its events: {record}"
    );
    ensure!(!is_killed(&later)?, "{} is not banned", later.display());

    // A normal sync removes on top of what is kept; the server's own rules_hash comes back.
    fleet
        .server
        .set_rules_toml(&binary_rule(&told_hash, "REMOVE"))?;
    let said = fleet.synced(&[])?;
    ensure!(
        said.contains("NORMAL sync: 1 rules received; 0 added, 0 changed, 1 removed"),
        "{said}"
    );
    ensure!(
        fleet.requests("preflight")[1]["binary_rule_count"] == 2
            && fleet.requests("preflight")[1]["rules_hash"]
                == fleet.requests("postflight")[0]["rules_hash"],
        "preflight reports the rules the last postflight did"
    );
    wait_until_allowed(&told)?;
    ensure!(is_killed(&plain)?, "the silent ban stays");

    let (code, status) = fleet.status()?;
    ensure!(code == Some(0), "{status}");
    ensure!(
        status.contains(": ok") && status.contains("1 synced BINARY rules, 1 banned"),
        "{status}"
    );

    // A clean sync replaces them. The server asks for LOCKDOWN, which blocker does not have:
    // it says so, and keeps enforcing the blocklist.
    fleet.server.set_rules_toml(&format!(
        "client_mode = \"LOCKDOWN\"\n{}",
        binary_rule(&later_hash, "BLOCKLIST")
    ))?;
    fleet.server.set_clean_sync(true);
    let said = fleet.synced(&[])?;
    ensure!(
        said.contains("CLEAN sync: 1 rules received; 1 added, 0 changed, 1 removed")
            && said.contains("the server asks for LOCKDOWN"),
        "{said}"
    );
    let (_, status) = fleet.status()?;
    ensure!(
        status.contains("LOCKDOWN (not in blocker yet: the synced blocklist is enforced"),
        "{status}"
    );
    wait_until_banned(&later)?;
    wait_until_allowed(&plain)?;

    // The server goes down: the sync fails, and the rules stay, across a daemon restart too.
    fleet.server.misbehave(Some(Misbehaviour::Down));
    let error = fleet.failed_sync()?;
    ensure!(error.contains("preflight"), "{error}");
    ensure!(is_killed(&later)?, "the rules in place stay");
    daemon.stop()?;
    let _daemon = fleet.start_daemon("kill", &[])?;
    wait_until_banned(&later)?;
    Ok(())
}

#[test]
fn pages_are_applied_together_or_not_at_all() -> Result<()> {
    let fleet = Fleet::with_empty_local_policy("sync-pages")?;
    let hashes: Vec<String> = (0..5).map(|n| format!("{n:064x}")).collect();
    let rules: String = hashes
        .iter()
        .map(|hash| binary_rule(hash, "BLOCKLIST"))
        .collect();
    fleet.server.set_rules_toml(&rules)?;
    fleet.server.set_page_size(Some(2));

    // The second page is broken: nothing of the first is applied.
    fleet.server.misbehave(Some(Misbehaviour::MalformedPage(2)));
    let error = fleet.failed_sync()?;
    ensure!(
        error.contains("ruledownload: page 2: the response is not JSON"),
        "{error}"
    );
    ensure!(fleet.synced_policy().is_none(), "nothing was installed");

    fleet.server.misbehave(None);
    let said = fleet.synced(&[])?;
    ensure!(said.contains("5 rules received; 5 added"), "{said}");
    let cursors: Vec<Value> = fleet
        .requests("ruledownload")
        .iter()
        .map(|request| request["cursor"].clone())
        .collect();
    ensure!(
        cursors.ends_with(&[Value::Null, json!("2"), json!("4")]),
        "the first request has no cursor, the next send back the server's: {cursors:?}"
    );
    let policy = fleet.synced_policy().context("the synced policy")?;
    for hash in &hashes {
        ensure!(policy.contains(hash.as_str()), "{hash} is banned");
    }
    let check = Command::new(blocker_bin())
        .arg("check")
        .arg(fleet.sandbox.policy_dir())
        .output()?;
    ensure!(check.status.success(), "{check:?}");
    Ok(())
}

#[test]
fn a_down_or_hostile_server_changes_nothing() -> Result<()> {
    let fleet = Fleet::new(Sandbox::new("sync-hostile")?, "")?;
    let hash = format!("{:064x}", 7);
    fleet
        .server
        .set_rules_toml(&binary_rule(&hash, "BLOCKLIST"))?;
    fleet.synced(&[])?;
    let installed = fleet.synced_policy().context("the synced policy")?;
    let metrics = || fs::read_to_string(fleet.sandbox.path(SYNC_METRICS_FILE));
    let after_success = metrics()?;
    ensure!(
        after_success.contains("\nblocker_last_sync_success 1\n")
            && after_success.contains("\nblocker_synced_rules 1\n"),
        "{after_success}"
    );
    promtool_check("the sync's textfile", &after_success)?;
    fleet.server.set_rules_toml(&binary_rule(&hash, "REMOVE"))?;
    for (misbehaviour, expected) in [
        (Misbehaviour::Down, "preflight: https://127.0.0.1:"),
        (
            Misbehaviour::MalformedPage(1),
            "ruledownload: page 1: the response is not JSON",
        ),
        (Misbehaviour::HugeBody, "the response is larger than"),
        (
            Misbehaviour::WrongRuleType,
            "ruledownload: page 1: rules[1]: rule_type: \"PATH\" is none of",
        ),
    ] {
        fleet.server.misbehave(Some(misbehaviour));
        let error = fleet.failed_sync()?;
        ensure!(error.contains(expected), "{misbehaviour:?}: {error}");
        ensure!(
            fleet.synced_policy().as_deref() == Some(installed.as_str()),
            "{misbehaviour:?}: the synced policy is unchanged"
        );
        let after_failure = metrics()?;
        ensure!(
            after_failure.contains("\nblocker_last_sync_success 0\n")
                && after_failure.contains("blocker_syncs_total{result=\"failure\"} 1\n")
                && after_failure.contains("\nblocker_synced_rules 1\n"),
            "{misbehaviour:?}: {after_failure}"
        );
    }
    let state: Value =
        serde_json::from_slice(&fs::read(fleet.sandbox.path("sync-state/state.json"))?)?;
    ensure!(
        state["last"]["result"]
            .as_str()
            .is_some_and(|result| result.contains("PATH")),
        "the state records the failure: {state}"
    );
    let (code, status) = fleet.status()?;
    ensure!(code == Some(1) && status.contains("PATH"), "{status}");

    // A wrong client certificate is refused by the server: a clear TLS error.
    let other = Pki::new(&fleet.sandbox.path("other-pki"))?;
    let config = fs::read_to_string(&fleet.config)?;
    let replace = |config: &str, from: &str, to: &Path| {
        config.replace(
            &fleet.sandbox.path(from).display().to_string(),
            &to.display().to_string(),
        )
    };
    fleet.server.misbehave(None);
    fs::write(
        &fleet.config,
        replace(&config, "pki/client.pem", &other.client_cert_file),
    )?;
    let error = fleet.failed_sync()?;
    ensure!(
        error.contains("are not a certificate and its key"),
        "{error}"
    );
    fs::write(
        &fleet.config,
        replace(
            &replace(&config, "pki/client.pem", &other.client_cert_file),
            "pki/client-key.pem",
            &other.client_key_file,
        ),
    )?;
    let error = fleet.failed_sync()?;
    ensure!(error.contains("preflight"), "{error}");
    ensure!(
        fleet.synced_policy().as_deref() == Some(installed.as_str()),
        "a certificate of another CA changes nothing"
    );
    Ok(())
}

#[test]
fn a_hundred_thousand_rules_are_taken_and_enforced() -> Result<()> {
    let fleet = Fleet::with_empty_local_policy("sync-many")?;
    let (banned, banned_hash) = fleet.unique_binary("one-of-many")?;
    let mut rules: Vec<Value> = (1..100_000u64)
        .map(|n| {
            json!({
                "identifier": format!("{n:064x}"),
                "policy": "BLOCKLIST",
                "rule_type": "BINARY",
            })
        })
        .collect();
    rules.push(json!({ "identifier": banned_hash, "policy": "BLOCKLIST", "rule_type": "BINARY" }));
    fleet.server.set_rules(rules);
    fleet.server.set_page_size(Some(25_000));
    let _daemon = fleet.start_daemon("kill", &[])?;
    let said = fleet.synced(&[])?;
    ensure!(
        said.contains("100000 rules received; 100000 added"),
        "{said}"
    );
    wait_until_banned(&banned)?;
    Ok(())
}

#[test]
fn denials_are_uploaded_once_and_after_an_outage() -> Result<()> {
    let scenario = BanScenario::new("sync-events")?;
    let by_path = scenario.banned.clone();
    let fleet = Fleet::new(scenario.sandbox, "")?;
    let (by_content, hash) = fleet.unique_binary("by-content")?;
    fleet
        .server
        .set_rules_toml(&binary_rule(&hash, "BLOCKLIST"))?;
    let _daemon = fleet.start_daemon("kill", &[])?;
    let said = fleet.synced(&[])?;
    ensure!(said.contains("0 denials uploaded"), "{said}");
    wait_until_banned(&by_content)?;
    ensure!(is_killed(&by_path)?, "banned by its path");
    let denials = wait_for_denials(&fleet, 2)?;

    let said = fleet.synced(&[])?;
    ensure!(
        said.contains(&format!("{} denials uploaded", denials.len())),
        "{said}"
    );
    let events = uploaded_events(&fleet)?;
    ensure!(events.len() == denials.len(), "{events:?}");
    let by_name = |name: &str| {
        events
            .iter()
            .find(|event| event["file_name"] == name)
            .with_context(|| format!("no event of {name}: {events:?}"))
    };
    let content_event = by_name("by-content")?;
    ensure!(
        content_event["decision"] == "BLOCK_BINARY"
            && content_event["file_sha256"] == hash.as_str()
            && content_event["file_path"] == fleet.binaries.display().to_string().as_str()
            && content_event["executing_user"] == "root"
            && content_event["pid"].as_u64().is_some_and(|pid| pid > 0)
            && content_event["execution_time"]
                .as_f64()
                .is_some_and(|time| time > 1e9),
        "{content_event}"
    );
    ensure!(
        by_name("banned")?["decision"] == "BLOCK_SCOPE",
        "{events:?}"
    );

    let said = fleet.synced(&[])?;
    ensure!(
        said.contains("0 denials uploaded"),
        "delivered once: {said}"
    );

    // Denied while the server is down: delivered by the first sync that reaches it.
    fleet.server.misbehave(Some(Misbehaviour::Down));
    ensure!(is_killed(&by_path)?, "banned by its path");
    wait_for_denials(&fleet, denials.len() + 1)?;
    fleet.failed_sync()?;
    fleet.server.misbehave(None);
    let said = fleet.synced(&[])?;
    ensure!(said.contains("1 denials uploaded"), "{said}");
    ensure!(fleet.server.events_written() == denials.len() + 1);
    Ok(())
}

#[test]
fn a_daemon_given_a_sync_configuration_syncs_by_itself() -> Result<()> {
    let scenario = BanScenario::new("sync-daemon")?;
    let fleet = Fleet::new(scenario.sandbox, "")?;
    let (banned, hash) = fleet.unique_binary("synced-by-the-daemon")?;
    fleet
        .server
        .set_rules_toml(&binary_rule(&hash, "BLOCKLIST"))?;
    let config = fleet.config.to_str().context("utf-8 path")?;
    let _daemon = fleet.start_daemon("kill", &["--sync-config", config])?;
    wait_until_banned(&banned)?;
    // Its own denials go up with a later sync.
    wait_until(
        || Ok(fleet.server.events_written() > 0),
        "the daemon's denial to be uploaded",
    )?;
    ensure!(
        uploaded_events(&fleet)?
            .iter()
            .any(|event| event["file_sha256"] == hash.as_str()),
        "the denial is uploaded"
    );
    Ok(())
}
