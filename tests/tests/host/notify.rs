//! How a refused person is told (kill backend): a desktop notification from `blocker notify`,
//! run by an unprivileged test user in a session of their own (Xvfb, a session bus, dunst),
//! and a line on the refused process's terminal.

use std::{
    os::unix::process::ExitStatusExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{ensure, Context, Result};
use blocker_integration_tests::{
    blocker_bin,
    desktop::{check_folded, Desktop, Terminal, TestUser, DESKTOP_TIMEOUT},
    run_as_launcher, Daemon, Sandbox,
};

const MESSAGE: &str = "Messaging apps are not allowed on this device (policy IT-12).";

/// A policy banning `files` (rule `chat`) with the test's message and a URL naming the rule.
fn policy(files: &[&Path], terminal: bool) -> String {
    let paths: Vec<String> = files
        .iter()
        .map(|f| format!("{:?}", f.display().to_string()))
        .collect();
    format!(
        "name = \"notify-test\"\nnotify_terminal = {terminal}\n[[rule]]\nid = \"chat\"\n\
         reason = \"messaging app\"\nmessage = \"{MESSAGE}\"\n\
         url = \"https://wiki.example/blocked/{{rule}}\"\npaths = [{}]\n",
        paths.join(", ")
    )
}

/// The daemon with its status document (and so its notification socket) in the sandbox.
fn start_daemon(sandbox: &Sandbox) -> Result<(Daemon, PathBuf)> {
    let status_file = sandbox.path("status.json");
    let status = status_file.to_str().context("sandbox path")?;
    let (daemon, _) = Daemon::start(
        &sandbox.policy_dir(),
        &["--backend", "kill", "--status-file", status],
    )?;
    Ok((daemon, sandbox.path("status.notify.sock")))
}

fn run_as(user: &TestUser, program: &Path) -> Result<()> {
    let status = user.command(program).status()?;
    ensure!(
        status.signal() == Some(libc::SIGKILL),
        "{} was not killed: {status}",
        program.display()
    );
    Ok(())
}

#[test]
fn a_refusal_is_told_once_to_its_own_user_and_a_burst_is_folded() -> Result<()> {
    let sandbox = Sandbox::new("notify")?;
    let user = TestUser::create("blocker-notify-a", &sandbox.path("home"))?;
    let wechat = sandbox.copy_binary("wechat")?;
    let marker = sandbox.copy_binary("marker")?;
    let burst = sandbox.copy_binary("burst")?;
    sandbox.write_policy("notify.toml", &policy(&[&wechat, &marker, &burst], false))?;
    let (mut daemon, socket) = start_daemon(&sandbox)?;
    let mut desktop = Desktop::start(&user, &sandbox.path("desktop"))?;
    desktop.start_agent(&user, &blocker_bin(), &socket)?;

    run_as(&user, &wechat)?;
    daemon.wait_for_exec(&wechat)?;
    let calls = desktop.wait_for_notify_calls(1, DESKTOP_TIMEOUT)?;
    calls[0].check_told("wechat", MESSAGE)?;
    if let Some(dir) = std::env::var_os("BLOCKER_SCREENSHOT_DIR") {
        desktop.screenshot(&Path::new(&dir).join("notification.png"))?;
    }

    // Root's refusal is not the test user's business; the marker's refusal, after it, shows
    // that the dispatcher got that far.
    let (_, status) = run_as_launcher(&marker)?;
    ensure!(status.signal() == Some(libc::SIGKILL), "{status}");
    daemon.wait_for_exec(&marker)?;
    run_as(&user, &marker)?;
    let calls = desktop.wait_for_notify_calls(2, DESKTOP_TIMEOUT)?;
    ensure!(
        calls.len() == 2,
        "root's refusal was told to the user: {calls:#?}"
    );
    ensure!(
        calls[1].summary == "marker is blocked on this device",
        "{calls:#?}"
    );

    for _ in 0..100 {
        run_as(&user, &burst)?;
    }
    // The first at once, then, when the window closes, one replacement with the count.
    let calls = desktop.wait_for_notify_calls(4, DESKTOP_TIMEOUT * 2)?;
    check_folded(&calls, "burst")?;
    std::thread::sleep(Duration::from_secs(1));
    ensure!(
        desktop.notify_calls().len() == 4,
        "{:#?}",
        desktop.notify_calls()
    );
    let shown = desktop.dunst_count("displayed")? + desktop.dunst_count("waiting")?;
    ensure!(
        shown == 3,
        "dunst shows {shown} notifications, not one per program"
    );
    daemon.stop()?;
    Ok(())
}

#[test]
fn no_notification_server_breaks_nothing_and_is_logged_once() -> Result<()> {
    let sandbox = Sandbox::new("notify-no-server")?;
    let user = TestUser::create("blocker-notify-b", &sandbox.path("home"))?;
    let wechat = sandbox.copy_binary("wechat")?;
    let other = sandbox.copy_binary("other")?;
    sandbox.write_policy("notify.toml", &policy(&[&wechat, &other], false))?;
    let (mut daemon, socket) = start_daemon(&sandbox)?;
    // A desktop whose bus has nobody to show notifications: the agent's session bus address
    // leads nowhere.
    let mut desktop = Desktop::start(&user, &sandbox.path("desktop"))?;
    desktop.bus_address = format!("unix:path={}", sandbox.path("no-bus").display());
    desktop.start_agent(&user, &blocker_bin(), &socket)?;
    for program in [&wechat, &other] {
        run_as(&user, program)?;
        daemon.wait_for_exec(program)?;
    }
    let deadline = std::time::Instant::now() + DESKTOP_TIMEOUT;
    while !desktop.agent_log().contains("cannot be shown") {
        ensure!(
            std::time::Instant::now() < deadline,
            "{}",
            desktop.agent_log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    let log = desktop.agent_log();
    ensure!(log.matches("cannot be shown").count() == 1, "{log}");
    ensure!(desktop.notify_calls().is_empty());
    daemon.stop()?;
    Ok(())
}

#[test]
fn the_terminal_line_reaches_the_refused_process_terminal_only() -> Result<()> {
    let sandbox = Sandbox::new("notify-terminal")?;
    let user = TestUser::create("blocker-notify-c", &sandbox.path("home"))?;
    let wechat = sandbox.copy_binary("wechat")?;
    sandbox.write_policy("notify.toml", &policy(&[&wechat], true))?;
    let (mut daemon, _) = start_daemon(&sandbox)?;
    let bystander = Terminal::start(&user, "sleep 60")?;
    // The shell waits to be told to go, so that nothing runs before the daemon is ready.
    let go = sandbox.path("go");
    let refused = Terminal::start(
        &user,
        &format!(
            "while [ ! -e {go} ]; do sleep 0.1; done; {wechat}; sleep 60",
            go = go.display(),
            wechat = wechat.display()
        ),
    )?;
    std::fs::write(&go, "")?;
    daemon.wait_for_exec(&wechat)?;
    let expected = format!(
        "blocker: {} is blocked on this device: {MESSAGE}",
        wechat.display()
    );
    let shown = refused.wait_for(&expected, DESKTOP_TIMEOUT)?;
    ensure!(shown.matches(&expected).count() == 1, "{shown:?}");
    ensure!(
        bystander.output().is_empty(),
        "another terminal of the same user got {:?}",
        bystander.output()
    );
    daemon.stop()?;
    Ok(())
}
