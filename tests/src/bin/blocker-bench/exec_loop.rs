//! The timed exec loop. A worker process (this binary's `exec-loop` command) forks and execs a
//! program again and again and times the whole loop; the driver starts workers, in another mount
//! namespace where a configuration needs it, and checks every exec ended as expected.

use std::{
    ffi::CString,
    io::{Read, Write},
    os::{
        fd::{AsRawFd, BorrowedFd},
        unix::{ffi::OsStrExt, process::CommandExt},
    },
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// Exit status of a child whose `execve` failed with EPERM (the `lsm` backend, fapolicyd);
/// 127, as shells use, for any other failure.
const EXIT_EXEC_REFUSED: i32 = 126;
const EXIT_EXEC_FAILED: i32 = 127;

/// How each exec of a loop must end for the loop to count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// The program ran and exited 0.
    Ran,
    /// The program was killed by SIGKILL (the `kill` backend).
    Killed,
    /// `execve` failed with EPERM.
    Refused,
}

/// How the execs of one loop ended, and how long they took.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Outcomes {
    pub ran: u64,
    pub killed: u64,
    pub refused: u64,
    pub other: u64,
    /// The whole loop.
    pub elapsed_ns: u64,
    /// The median of the execs' times (fork to reaped): unlike the mean, it is not dragged up
    /// by the execs that waited for a CPU because something else ran.
    pub median_ns: u64,
}

impl Outcomes {
    fn count(&self, expect: Expect) -> u64 {
        match expect {
            Expect::Ran => self.ran,
            Expect::Killed => self.killed,
            Expect::Refused => self.refused,
        }
    }

    fn to_json(self) -> Value {
        json!({
            "ran": self.ran, "killed": self.killed, "refused": self.refused,
            "other": self.other, "elapsed_ns": self.elapsed_ns, "median_ns": self.median_ns,
        })
    }

    fn from_json(value: &Value) -> Option<Self> {
        let field = |name: &str| value[name].as_u64();
        Some(Self {
            ran: field("ran")?,
            killed: field("killed")?,
            refused: field("refused")?,
            other: field("other")?,
            elapsed_ns: field("elapsed_ns")?,
            median_ns: field("median_ns")?,
        })
    }
}

/// Who runs the execs of a loop.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Users {
    /// The worker's own user.
    Caller,
    /// The Nth exec as user `first_uid + N`: each exec is another (user, file, operation), so
    /// the kernel's limit on records of repeats never applies and every denial is recorded.
    Distinct { first_uid: u32 },
}

/// The worker: `count` times fork, exec `target` with no arguments and an empty environment
/// (as user `first_uid + N` if given), and wait; prints the outcomes as one JSON line. Runs in a
/// process of its own, which is small and single-threaded, so `fork` copies little and nothing
/// but `setuid` and `execve` run in the child.
pub fn work(target: &Path, count: u64, first_uid: Option<u32>, wait_for_go: bool) -> Result<()> {
    if wait_for_go {
        let mut stdout = std::io::stdout().lock();
        stdout.write_all(READY)?;
        stdout.flush()?;
        std::io::stdin()
            .read_line(&mut String::new())
            .context("waiting for the go")?;
    }
    let program = CString::new(target.as_os_str().as_bytes())
        .with_context(|| format!("{} contains a NUL byte", target.display()))?;
    let argv = [program.as_ptr(), std::ptr::null()];
    let envp = [std::ptr::null::<libc::c_char>()];
    let mut outcomes = Outcomes::default();
    let mut times = Vec::with_capacity(usize::try_from(count).unwrap_or(0));
    let started = Instant::now();
    for index in 0..count {
        let uid = first_uid.map(|first| first.wrapping_add(index as u32));
        let forked = Instant::now();
        // SAFETY: the child only calls execve and _exit, which are async-signal-safe, on memory
        // prepared before the fork.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(std::io::Error::last_os_error()).context("fork");
        }
        if pid == 0 {
            unsafe {
                if let Some(uid) = uid {
                    if libc::setuid(uid) != 0 {
                        libc::_exit(EXIT_EXEC_FAILED);
                    }
                }
                libc::execve(program.as_ptr(), argv.as_ptr(), envp.as_ptr());
                let refused = *libc::__errno_location() == libc::EPERM;
                libc::_exit(if refused {
                    EXIT_EXEC_REFUSED
                } else {
                    EXIT_EXEC_FAILED
                });
            }
        }
        let mut status = 0;
        // SAFETY: waits for the child just forked, into a local.
        if unsafe { libc::waitpid(pid, &mut status, 0) } != pid {
            return Err(std::io::Error::last_os_error()).context("waitpid");
        }
        times.push(forked.elapsed());
        if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0 {
            outcomes.ran += 1;
        } else if libc::WIFSIGNALED(status) && libc::WTERMSIG(status) == libc::SIGKILL {
            outcomes.killed += 1;
        } else if libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == EXIT_EXEC_REFUSED {
            outcomes.refused += 1;
        } else {
            outcomes.other += 1;
        }
    }
    outcomes.elapsed_ns = nanoseconds(started.elapsed());
    times.sort();
    outcomes.median_ns = times.get(times.len() / 2).copied().map_or(0, nanoseconds);
    println!("{}", outcomes.to_json());
    Ok(())
}

fn nanoseconds(time: Duration) -> u64 {
    u64::try_from(time.as_nanos()).unwrap_or(u64::MAX)
}

/// Starts a worker running `target` `count` times as `users`, inside the mount namespace
/// `namespace` (a descriptor of `/proc/PID/ns/mnt`) if given.
pub fn spawn(
    target: &Path,
    count: u64,
    users: Users,
    namespace: Option<BorrowedFd<'_>>,
) -> Result<Child> {
    let mut command = Command::new("/proc/self/exe");
    command
        .arg("exec-loop")
        .arg(target)
        .arg(count.to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
    if let Users::Distinct { first_uid } = users {
        command.arg("--first-uid").arg(first_uid.to_string());
    }
    if let Some(namespace) = namespace {
        let fd = namespace.as_raw_fd();
        // SAFETY: setns is async-signal-safe and only moves this child.
        unsafe {
            command.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }
    command.spawn().context("starting an exec-loop worker")
}

/// How long a worker's execs took.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    pub elapsed: Duration,
    pub median: Duration,
}

/// Waits for a worker and checks that every one of its `count` execs ended as `expect`ed.
pub fn finish(worker: Child, count: u64, expect: Expect, target: &Path) -> Result<Timing> {
    let output = worker
        .wait_with_output()
        .context("waiting for an exec-loop worker")?;
    if !output.status.success() {
        bail!(
            "the exec-loop worker for {} failed ({})",
            target.display(),
            output.status
        );
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let outcomes = serde_json::from_str::<Value>(stdout.trim())
        .ok()
        .as_ref()
        .and_then(Outcomes::from_json)
        .with_context(|| format!("the exec-loop worker printed {stdout:?}"))?;
    if outcomes.count(expect) != count {
        bail!(
            "{count} execs of {} were all expected to be {expect:?}, but: {}",
            target.display(),
            outcomes.to_json()
        );
    }
    Ok(Timing {
        elapsed: Duration::from_nanos(outcomes.elapsed_ns),
        median: Duration::from_nanos(outcomes.median_ns),
    })
}

/// What a worker started with `--wait-for-go` prints once it waits.
const READY: &[u8] = b"ready\n";

/// A worker started and waiting, its own start over: `count` execs of `target` as the caller,
/// begun by [`go`].
pub fn spawn_waiting(target: &Path, count: u64) -> Result<Child> {
    let mut worker = Command::new("/proc/self/exe")
        .arg("exec-loop")
        .arg(target)
        .arg(count.to_string())
        .arg("--wait-for-go")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("starting an exec-loop worker")?;
    let mut ready = [0; READY.len()];
    worker
        .stdout
        .as_mut()
        .expect("piped")
        .read_exact(&mut ready)
        .context("waiting for the exec-loop worker to be ready")?;
    if ready != READY {
        bail!("the exec-loop worker printed {ready:?} instead of being ready");
    }
    Ok(worker)
}

/// Lets a worker from [`spawn_waiting`] begin its execs.
pub fn go(worker: &mut Child) -> Result<()> {
    let mut stdin = worker.stdin.take().expect("piped");
    stdin
        .write_all(b"go\n")
        .context("telling the exec-loop worker to go")
}

/// Runs one worker to its end: `count` execs of `target`, all ending as `expect`ed.
pub fn run(
    target: &Path,
    count: u64,
    expect: Expect,
    namespace: Option<BorrowedFd<'_>>,
) -> Result<Timing> {
    finish(
        spawn(target, count, Users::Caller, namespace)?,
        count,
        expect,
        target,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outcomes_survive_the_trip_through_json() {
        let outcomes = Outcomes {
            ran: 3,
            killed: 1,
            refused: 2,
            other: 0,
            elapsed_ns: 12345,
            median_ns: 2000,
        };
        assert_eq!(Outcomes::from_json(&outcomes.to_json()), Some(outcomes));
        assert_eq!(Outcomes::from_json(&json!({"ran": 1})), None);
    }
}
