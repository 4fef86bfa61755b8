//! Is the daemon a status document names still running? A pid alone cannot say: pids are reused.
//! The process's start time (`/proc/PID/stat`, readable by everyone) and its executable
//! (`/proc/PID/exe`, readable by root) can.

use crate::escape::escaped;
use std::{fs, io, path::Path, time::Duration};

use super::{DaemonState, StatusDocument};

/// Whether the daemon behind a document runs, and for how long, or why it does not.
#[derive(Debug, PartialEq)]
pub enum Liveness {
    Running {
        uptime: Duration,
    },
    /// The process is there but does nothing: stopped by a signal or a tracer, or frozen with
    /// its cgroup. The kernel keeps enforcing what is in its maps, but no event is delivered and
    /// nothing is refreshed or reloaded.
    Held {
        reason: String,
    },
    NotRunning {
        reason: String,
    },
}

pub fn liveness(document: &StatusDocument) -> Liveness {
    let not_running = |reason: String| Liveness::NotRunning { reason };
    if document.state == DaemonState::Stopped {
        return not_running(format!(
            "it stopped at {} (pid {})",
            document.stopped.as_deref().unwrap_or(&document.updated),
            document.pid
        ));
    }
    let gone = || {
        not_running(format!(
            "pid {} is gone without having stopped cleanly (killed or crashed); its last status \
             is from {}",
            document.pid, document.updated
        ))
    };
    let Ok(stat) = fs::read_to_string(format!("/proc/{}/stat", document.pid)) else {
        return gone();
    };
    let Some(process) = parse_stat(&stat) else {
        return gone();
    };
    // A zombie has exited; only its parent has not collected it yet.
    if process.state == 'Z' {
        return gone();
    }
    if process.start_ticks != document.process_start_ticks {
        return not_running(format!(
            "pid {} now belongs to another process; the daemon that wrote the status is gone \
             (its last status is from {})",
            document.pid, document.updated
        ));
    }
    match fs::read_link(format!("/proc/{}/exe", document.pid)) {
        Ok(executable) if !same_executable(&executable, &document.executable) => {
            return not_running(format!(
                "pid {} runs {}, not {}",
                document.pid,
                escaped(&executable),
                document.executable
            ));
        }
        Ok(_) => {}
        // Only root may look; the start time already matched.
        Err(error) if error.kind() == io::ErrorKind::PermissionDenied => {}
        Err(_) => return gone(),
    }
    if let Some(reason) = held(document.pid, process.state) {
        return Liveness::Held { reason };
    }
    Liveness::Running {
        uptime: uptime(process.start_ticks).unwrap_or_default(),
    }
}

/// Why process `pid`, in `/proc` state `state`, does nothing, if it does nothing.
fn held(pid: u32, state: char) -> Option<String> {
    match state {
        'T' => {
            return Some(format!(
                "pid {pid} is stopped (SIGSTOP or another stop signal)"
            ))
        }
        't' => return Some(format!("pid {pid} is stopped by a tracer")),
        _ => {}
    }
    // A frozen task sleeps like any other; only its cgroup says it is frozen: `cgroup.freeze`
    // in cgroup v2, the v1 freezer's `freezer.state`.
    let listing = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    let frozen_in = |path: &str, file: &str, frozen: fn(&str) -> bool| {
        let state = fs::read_to_string(format!("/sys/fs/cgroup{file}")).ok()?;
        frozen(&state).then(|| format!("pid {pid} is frozen with its cgroup {}", escaped(path)))
    };
    let unified = cgroup_of(&listing, "")
        .and_then(|path| frozen_in(path, &format!("{path}/cgroup.events"), frozen_v2));
    unified.or_else(|| {
        cgroup_of(&listing, "freezer")
            .and_then(|path| frozen_in(path, &format!("/freezer{path}/freezer.state"), frozen_v1))
    })
}

/// The path of the cgroup of `controllers` (`""` for cgroup v2) in a `/proc/PID/cgroup`
/// listing, whose lines read `ID:CONTROLLERS:PATH`.
fn cgroup_of<'a>(listing: &'a str, controllers: &str) -> Option<&'a str> {
    listing.lines().find_map(|line| {
        let (_, rest) = line.split_once(':')?;
        let (listed, path) = rest.split_once(':')?;
        (listed == controllers).then_some(path)
    })
}

/// Whether a cgroup v2 `cgroup.events` file says the cgroup is frozen.
fn frozen_v2(events: &str) -> bool {
    events.lines().any(|line| line.trim() == "frozen 1")
}

/// Whether a cgroup v1 `freezer.state` is frozen or on its way.
fn frozen_v1(state: &str) -> bool {
    matches!(state.trim(), "FROZEN" | "FREEZING")
}

/// The kernel appends " (deleted)" to the executable of a process whose file was replaced, as a
/// package upgrade does; the daemon is still the same.
fn same_executable(actual: &Path, recorded: &str) -> bool {
    let actual = actual.to_string_lossy();
    actual.strip_suffix(" (deleted)").unwrap_or(&actual) == recorded
}

struct Stat {
    state: char,
    start_ticks: u64,
}

/// Reads the state (field 3) and start time (field 22) of a `/proc/PID/stat` line.
fn parse_stat(stat: &str) -> Option<Stat> {
    // Field 2 is the command name in parentheses, which may itself hold spaces and parentheses.
    let (_, after_name) = stat.rsplit_once(')')?;
    let mut fields = after_name.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let start_ticks = fields.nth(18)?.parse().ok()?;
    Some(Stat { state, start_ticks })
}

pub fn start_ticks(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    Some(parse_stat(&stat)?.start_ticks)
}

/// This process's start time; 0 (which no process has, so never mistaken for it) if /proc is
/// unreadable.
pub fn own_start_ticks() -> u64 {
    start_ticks(std::process::id()).unwrap_or_default()
}

/// How long ago a process started at `start_ticks` after boot.
fn uptime(start_ticks: u64) -> Option<Duration> {
    let since_boot = parse_uptime(&fs::read_to_string("/proc/uptime").ok()?)?;
    // SAFETY: sysconf has no preconditions.
    let ticks_per_second = u64::try_from(unsafe { libc::sysconf(libc::_SC_CLK_TCK) }).ok()?;
    let started = Duration::from_millis(start_ticks.checked_mul(1000)? / ticks_per_second);
    Some(since_boot.saturating_sub(started))
}

/// The first field of `/proc/uptime`: seconds since boot, with two decimals.
fn parse_uptime(text: &str) -> Option<Duration> {
    let seconds = text.split_whitespace().next()?;
    let (whole, fraction) = seconds.split_once('.').unwrap_or((seconds, "0"));
    let centiseconds = format!("{fraction:0<2}").get(..2)?.parse::<u64>().ok()?;
    Some(Duration::from_secs(whole.parse().ok()?) + Duration::from_millis(centiseconds * 10))
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;
    use crate::status::tests::example_document;

    fn document_of(pid: u32) -> StatusDocument {
        StatusDocument {
            pid,
            process_start_ticks: start_ticks(pid).unwrap(),
            executable: fs::read_link(format!("/proc/{pid}/exe"))
                .unwrap()
                .display()
                .to_string(),
            ..example_document()
        }
    }

    #[test]
    fn a_live_daemon_is_running_with_its_uptime() {
        let document = document_of(std::process::id());
        let Liveness::Running { uptime } = liveness(&document) else {
            panic!("this process is alive: {:?}", liveness(&document));
        };
        let boot = parse_uptime(&fs::read_to_string("/proc/uptime").unwrap()).unwrap();
        assert!(
            uptime <= boot,
            "{uptime:?} is longer than the machine has run"
        );
    }

    #[test]
    fn a_stopped_or_frozen_process_is_held() {
        let mut child = Command::new("/bin/sleep").arg("30").spawn().unwrap();
        let document = document_of(child.id());
        // SAFETY: signals the child just spawned.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGSTOP) };
        let held = (0..200).find_map(|_| {
            std::thread::sleep(Duration::from_millis(10));
            match liveness(&document) {
                Liveness::Held { reason } => Some(reason),
                _ => None,
            }
        });
        child.kill().unwrap();
        child.wait().unwrap();
        let reason = held.expect("a stopped process is held");
        assert!(
            reason.ends_with("is stopped (SIGSTOP or another stop signal)"),
            "{reason}"
        );

        let listing = "6:freezer:/test\n12:cpu:/x\n0::/system.slice/blocker.service\n";
        assert_eq!(
            cgroup_of(listing, ""),
            Some("/system.slice/blocker.service")
        );
        assert_eq!(cgroup_of(listing, "freezer"), Some("/test"));
        assert_eq!(cgroup_of("12:cpu:/x\n", ""), None);
        assert!(frozen_v2("populated 1\nfrozen 1\n"));
        assert!(!frozen_v2("populated 1\nfrozen 0\n"));
        assert!(frozen_v1("FROZEN\n") && frozen_v1("FREEZING\n") && !frozen_v1("THAWED\n"));
    }

    #[test]
    fn a_stopped_daemon_is_not_running() {
        let mut document = document_of(std::process::id());
        document.state = DaemonState::Stopped;
        document.stopped = Some("2026-11-28T11:00:00Z".to_owned());
        assert_eq!(
            liveness(&document),
            Liveness::NotRunning {
                reason: format!(
                    "it stopped at 2026-11-28T11:00:00Z (pid {})",
                    std::process::id()
                )
            }
        );
    }

    #[test]
    fn a_dead_pid_is_not_running() {
        let mut child = Command::new("/bin/sh")
            .arg("-c")
            .arg("exit 0")
            .spawn()
            .unwrap();
        let mut document = document_of(std::process::id());
        document.pid = child.id();
        child.wait().unwrap();
        let Liveness::NotRunning { reason } = liveness(&document) else {
            panic!("a reaped child is not running");
        };
        assert!(
            reason.contains("is gone without having stopped cleanly"),
            "{reason}"
        );
    }

    #[test]
    fn a_reused_pid_or_another_program_is_not_the_daemon() {
        let mut reused = document_of(std::process::id());
        reused.process_start_ticks += 1;
        let Liveness::NotRunning { reason } = liveness(&reused) else {
            panic!("another start time is another process");
        };
        assert!(
            reason.contains("now belongs to another process"),
            "{reason}"
        );

        let mut other_program = document_of(std::process::id());
        other_program.executable = "/usr/bin/blocker".to_owned();
        let Liveness::NotRunning { reason } = liveness(&other_program) else {
            panic!("another executable is another program");
        };
        assert!(reason.ends_with(", not /usr/bin/blocker"), "{reason}");
    }

    #[test]
    fn an_upgraded_executable_is_still_the_daemon() {
        assert!(same_executable(
            Path::new("/usr/bin/blocker (deleted)"),
            "/usr/bin/blocker"
        ));
        assert!(!same_executable(
            Path::new("/usr/bin/other (deleted)"),
            "/usr/bin/blocker"
        ));
    }

    #[test]
    fn reads_proc_stat_lines_whatever_the_command_name() {
        let stat = "4242 (a) b (c) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 \
                    987654 1000 100 18446744073709551615";
        let parsed = parse_stat(stat).unwrap();
        assert_eq!((parsed.state, parsed.start_ticks), ('S', 987654));
        assert!(parse_stat("4242 (cut short) S 1 2").is_none());
    }

    #[test]
    fn reads_the_time_since_boot() {
        assert_eq!(
            parse_uptime("12345.67 54321.00\n"),
            Some(Duration::from_millis(12_345_670))
        );
        assert_eq!(parse_uptime("7.5 1.0"), Some(Duration::from_millis(7500)));
        assert_eq!(parse_uptime("garbage"), None);
    }
}
