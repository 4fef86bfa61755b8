//! Metrics for Prometheus on the host kernel (the `kill` backend): the textfile read by Debian's
//! real node_exporter, both the file and the HTTP endpoint checked by promtool, and the endpoint
//! against a hostile local client.

use std::{
    fs,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use blocker_integration_tests::{blocker_bin, promtool_check, Daemon, Sandbox, EVENT_TIMEOUT};
use serde_json::Value;

const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";

/// A policy name with every character the exposition format escapes in label values.
const HOSTILE_POLICY_NAME: &str = "evil \"quoted\" \\ back\nslash";
/// The same, as the exposition format writes it.
const HOSTILE_POLICY_LABEL: &str = r#"evil \"quoted\" \\ back\nslash"#;

/// A sandbox with one banned copy of the harmless binary, under rule `ban` of a policy named
/// [`HOSTILE_POLICY_NAME`].
fn banned_copy(test_name: &str) -> Result<(Sandbox, std::path::PathBuf)> {
    let sandbox = Sandbox::new(test_name)?;
    let banned = sandbox.copy_binary("banned")?;
    sandbox.write_policy(
        "test.toml",
        &format!(
            "name = {:?}\n\n[[rule]]\nid = \"ban\"\npaths = [{:?}]\n",
            HOSTILE_POLICY_NAME,
            banned.display().to_string()
        ),
    )?;
    Ok((sandbox, banned))
}

/// Runs the banned copy, which the kill backend kills, and waits for the daemon's record of it.
fn deny_once(daemon: &mut Daemon, banned: &Path) -> Result<()> {
    let status = Command::new(banned).status()?;
    ensure!(!status.success(), "the banned copy ran: {status}");
    daemon.wait_for_exec(banned)?;
    Ok(())
}

/// Whether `line` is the decision counter of that denial with the value `count`, its labels in
/// any order (node_exporter sorts them).
fn is_denial_count(line: &str, count: u64) -> bool {
    let Some(rest) = line.strip_prefix("blocker_decisions_total{") else {
        return false;
    };
    let Some((labels, value)) = rest.rsplit_once("} ") else {
        return false;
    };
    // Each `name="value`, without the closing quote.
    let mut labels: Vec<&str> = labels
        .strip_suffix('"')
        .unwrap_or(labels)
        .split("\",")
        .collect();
    labels.sort_unstable();
    let policy = format!("policy=\"{HOSTILE_POLICY_LABEL}");
    labels
        == [
            "action=\"deny",
            "operation=\"exec",
            policy.as_str(),
            "rule=\"ban",
        ]
        && value == count.to_string()
}

/// Starts the daemon (kill backend) on `sandbox`'s policy with its endpoint on a free loopback
/// port and `extra` arguments; returns it and the endpoint's address.
fn start_with_endpoint(sandbox: &Sandbox, extra: &[&str]) -> Result<(Daemon, SocketAddr)> {
    let status_file = sandbox.path("status.json");
    let status_arg = status_file.to_str().context("utf-8")?;
    let args = [
        &[
            "--backend",
            "kill",
            "--status-file",
            status_arg,
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        extra,
    ]
    .concat();
    let (daemon, _) = Daemon::start(&sandbox.policy_dir(), &args)?;
    Ok((daemon, endpoint_of(&status_file)?))
}

/// The address the daemon's endpoint listens on, from its status document.
fn endpoint_of(status_file: &Path) -> Result<SocketAddr> {
    let document: Value = serde_json::from_str(&fs::read_to_string(status_file)?)?;
    document["metrics_endpoint"]
        .as_str()
        .with_context(|| format!("no metrics_endpoint in the status document: {document}"))?
        .parse()
        .context("metrics_endpoint is not an address")
}

/// `GET /metrics` over HTTP/1.0: the status line and the body.
fn scrape(address: SocketAddr) -> Result<(String, String)> {
    let mut stream = TcpStream::connect(address)?;
    stream.set_read_timeout(Some(EVENT_TIMEOUT))?;
    stream.write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")?;
    let mut answer = String::new();
    stream.read_to_string(&mut answer)?;
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .with_context(|| format!("not an HTTP answer: {answer:?}"))?;
    let status = head.lines().next().unwrap_or_default().to_owned();
    Ok((status, body.to_owned()))
}

/// Waits until `read` gives text with a line `wanted` accepts; returns that text.
fn wait_for_line(
    what: &str,
    wanted: impl Fn(&str) -> bool,
    read: impl Fn() -> Result<String>,
) -> Result<String> {
    let deadline = Instant::now() + EVENT_TIMEOUT;
    loop {
        let text = read();
        if let Ok(text) = &text {
            if text.lines().any(&wanted) {
                return Ok(text.clone());
            }
        }
        if Instant::now() > deadline {
            bail!("{what} never had the line looked for; last: {text:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A process this test started, killed (by its pid) and reaped when dropped.
struct Started(Child);

impl Drop for Started {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A loopback port free a moment ago.
fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

#[test]
fn node_exporter_reads_the_textfile_and_promtool_accepts_file_and_endpoint() -> Result<()> {
    let (sandbox, banned) = banned_copy("metrics")?;
    let textfile_dir = sandbox.path("textfile");
    fs::create_dir(&textfile_dir)?;
    let textfile = textfile_dir.join("blocker.prom");
    let (mut daemon, endpoint) = start_with_endpoint(
        &sandbox,
        &["--metrics-file", textfile.to_str().context("utf-8")?],
    )?;
    deny_once(&mut daemon, &banned)?;

    let counted = |line: &str| is_denial_count(line, 1);
    let file_text = wait_for_line("the textfile", counted, || {
        Ok(fs::read_to_string(&textfile)?)
    })?;
    let mode = fs::metadata(&textfile)?.permissions();
    ensure!(
        std::os::unix::fs::PermissionsExt::mode(&mode) & 0o777 == 0o644,
        "the textfile is not 0644: {mode:?}"
    );
    let body = wait_for_line("the endpoint", counted, || {
        let (status, body) = scrape(endpoint)?;
        ensure!(status == "HTTP/1.1 200 OK", "{status}");
        Ok(body)
    })?;
    promtool_check("the textfile", &file_text)?;
    promtool_check("the endpoint's body", &body)?;

    let port = free_port()?;
    let exporter = Started(
        Command::new(NODE_EXPORTER)
            .args([
                "--collector.disable-defaults",
                "--collector.textfile",
                &format!("--collector.textfile.directory={}", textfile_dir.display()),
                &format!("--web.listen-address=127.0.0.1:{port}"),
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| {
                format!("running {NODE_EXPORTER} (Debian package prometheus-node-exporter)")
            })?,
    );
    let exported = wait_for_line("node_exporter's metrics", counted, || {
        Ok(scrape(SocketAddr::from(([127, 0, 0, 1], port)))?.1)
    })?;
    drop(exporter);
    ensure!(
        exported
            .lines()
            .any(|line| line == "node_textfile_scrape_error 0"),
        "node_exporter could not read the textfile:\n{exported}"
    );

    let (status, _, _) = daemon.stop()?;
    ensure!(status.success(), "daemon exit: {status}");
    let last = fs::read_to_string(&textfile)?;
    ensure!(
        last.lines().any(counted),
        "the final textfile lost the count:\n{last}"
    );
    ensure!(
        last.lines()
            .any(|line| line == "blocker_events_delivered_total 1"),
        "the final textfile has not the final values:\n{last}"
    );
    let leftovers: Vec<_> = fs::read_dir(&textfile_dir)?
        .map(|entry| entry.map(|entry| entry.file_name()))
        .collect::<Result<_, _>>()?;
    ensure!(leftovers == ["blocker.prom"], "{leftovers:?}");
    Ok(())
}

/// The daemon's resident memory and open descriptors.
fn footprint(pid: u32) -> Result<(u64, usize)> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rss_kib = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| value.trim().trim_end_matches(" kB").trim().parse().ok())
        .context("no VmRSS")?;
    let descriptors = fs::read_dir(format!("/proc/{pid}/fd"))?.count();
    Ok((rss_kib, descriptors))
}

#[test]
fn a_hostile_local_client_neither_stalls_the_daemon_nor_grows_it() -> Result<()> {
    const MAX_CONNECTIONS: usize = 4;
    let (sandbox, banned) = banned_copy("metrics-hostile")?;
    let (mut daemon, endpoint) = start_with_endpoint(&sandbox, &[])?;
    let (status, _) = scrape(endpoint)?;
    ensure!(status == "HTTP/1.1 200 OK", "{status}");
    let (rss_before, descriptors_before) = footprint(daemon.pid())?;

    // A request that never ends: cut off after a few KiB, long before 64 MiB.
    let mut huge = TcpStream::connect(endpoint)?;
    huge.set_write_timeout(Some(EVENT_TIMEOUT))?;
    let chunk = vec![b'A'; 64 * 1024];
    let mut sent = 0;
    let refused = loop {
        if sent >= 64 << 20 {
            break None;
        }
        match huge.write(&chunk) {
            Ok(written) => sent += written,
            Err(error) => break Some(error),
        }
    };
    let error = refused.context("the endpoint read a 64 MiB request")?;
    ensure!(
        !matches!(
            error.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "the endpoint stopped reading without closing: {error}"
    );
    drop(huge);

    // Slowloris: many connections, each with a request begun and never finished. Those beyond
    // the endpoint's few wait in (or are refused by) the kernel's short backlog.
    let mut slow = Vec::new();
    for _ in 0..64 {
        if let Ok(mut stream) = TcpStream::connect_timeout(&endpoint, Duration::from_millis(100)) {
            let _ = stream.write_all(b"GET /metrics HTTP/1.1\r\nX-Slow: ");
            slow.push(stream);
        }
    }
    ensure!(
        slow.len() > MAX_CONNECTIONS,
        "only {} connections",
        slow.len()
    );
    // Meanwhile the event loop handles events as ever.
    deny_once(&mut daemon, &banned)?;
    let (rss_during, descriptors_during) = footprint(daemon.pid())?;
    ensure!(
        // A few to spare for files the daemon opens on its own meanwhile.
        descriptors_during <= descriptors_before + MAX_CONNECTIONS + 4,
        "{descriptors_during} descriptors open, {descriptors_before} before the attack"
    );
    ensure!(
        rss_during < rss_before + 16 * 1024,
        "resident memory grew from {rss_before} KiB to {rss_during} KiB"
    );
    // The first connections were answered by the endpoint, which closes them when their request
    // does not come in time.
    let first = &mut slow[0];
    first.set_read_timeout(Some(EVENT_TIMEOUT))?;
    let mut rest = Vec::new();
    let ended = first.read_to_end(&mut rest);
    ensure!(
        !matches!(&ended, Err(error) if matches!(error.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)),
        "a connection that never finished its request was kept open: {ended:?}"
    );
    drop(slow);

    // Once the attack ends, scrapes are answered again, with the denial made during it.
    wait_for_line(
        "the endpoint",
        |line| is_denial_count(line, 1),
        || {
            let (status, body) = scrape(endpoint)?;
            ensure!(status == "HTTP/1.1 200 OK", "{status}");
            Ok(body)
        },
    )?;
    let (status, _, _) = daemon.stop()?;
    ensure!(status.success(), "daemon exit: {status}");
    Ok(())
}

#[test]
fn an_endpoint_off_loopback_is_refused_before_anything_loads() -> Result<()> {
    let (sandbox, _) = banned_copy("metrics-refused")?;
    let output = Command::new(blocker_bin())
        .arg("run")
        .arg("--policy-dir")
        .arg(sandbox.policy_dir())
        .args(["--backend", "kill", "--no-metrics-file", "--no-journald"])
        .arg("--status-file")
        .arg(sandbox.path("status.json"))
        .arg("--events-file")
        .arg(sandbox.path("events.jsonl"))
        .args(["--metrics-listen", "0.0.0.0:0"])
        .stdin(Stdio::null())
        .output()?;
    let log = String::from_utf8_lossy(&output.stderr);
    ensure!(output.status.code() == Some(2), "{}: {log}", output.status);
    ensure!(
        log.contains(
            "--metrics-listen 0.0.0.0:0: the metrics endpoint listens on a loopback address only"
        ),
        "{log}"
    );
    ensure!(!log.contains("loaded the kernel programs"), "{log}");
    Ok(())
}

#[test]
fn reloads_are_counted_by_result_and_the_last_one_is_told() -> Result<()> {
    let (sandbox, banned) = banned_copy("metrics-reload")?;
    let textfile = sandbox.path("blocker.prom");
    let (mut daemon, _) = Daemon::start(
        &sandbox.policy_dir(),
        &[
            "--backend",
            "kill",
            "--metrics-file",
            textfile.to_str().context("utf-8")?,
        ],
    )?;
    let read = || Ok(fs::read_to_string(&textfile)?);
    wait_for_line(
        "the textfile",
        |line| line == "blocker_rules_loaded 1",
        read,
    )?;

    // Written in place: the directory watch reloads, and the bad file is refused.
    sandbox.write_policy(
        "test.toml",
        "name = \"test\"\n[[rule]]\nid = \"x\"\npaths = \"/x\"\n",
    )?;
    daemon.wait_for_record(EVENT_TIMEOUT, |record| record["kind"] == "reload_failed")?;
    let failed = wait_for_line(
        "the textfile",
        |line| line == "blocker_reloads_total{result=\"failure\"} 1",
        read,
    )?;
    ensure!(
        failed
            .lines()
            .any(|line| line == "blocker_last_reload_success 0")
            && failed
                .lines()
                .any(|line| line == "blocker_reloads_total{result=\"success\"} 0"),
        "{failed}"
    );

    sandbox.write_policy(
        "test.toml",
        &format!(
            "name = \"test\"\n[[rule]]\nid = \"ban\"\npaths = [{:?}]\n[[rule]]\nid = \"more\"\n\
             paths = [\"/nonexistent/blocker-test\"]\n",
            banned.display().to_string()
        ),
    )?;
    daemon.wait_for_record(EVENT_TIMEOUT, |record| record["kind"] == "reloaded")?;
    let reloaded = wait_for_line(
        "the textfile",
        |line| line == "blocker_reloads_total{result=\"success\"} 1",
        read,
    )?;
    for expected in [
        "blocker_last_reload_success 1",
        "blocker_reloads_total{result=\"failure\"} 1",
        "blocker_rules_loaded 2",
        "blocker_decisions_total{action=\"deny\",operation=\"exec\",rule=\"more\",policy=\"test\"} 0",
    ] {
        ensure!(
            reloaded.lines().any(|line| line == expected),
            "{expected}:\n{reloaded}"
        );
    }
    let (status, _, _) = daemon.stop()?;
    ensure!(status.success(), "daemon exit: {status}");
    Ok(())
}
