//! Helpers for tests that run the real `blocker` binary against a real kernel.
//!
//! Safety rules these helpers enforce: the only files that ever enter a ban map are copies made
//! in a fresh sandbox directory; the daemon dies with the test process (`PR_SET_PDEATHSIG`) and
//! is killed by a watchdog if a test overruns, so a failing test never leaves programs attached.

use std::{
    io::{BufRead, BufReader},
    os::unix::{fs::MetadataExt, process::CommandExt},
    path::{Path, PathBuf},
    process::{Child, ChildStderr, ChildStdout, Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc::{self, Receiver, RecvTimeoutError, Sender},
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};
use serde_json::Value;

pub mod bpf;
pub mod desktop;
pub mod filesystems;
pub mod santa;

/// Longest a daemon may live in a test before the watchdog kills it.
const DAEMON_LIFETIME_LIMIT: Duration = Duration::from_secs(180);
/// Generous: under QEMU's emulation loading takes seconds.
pub const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);
pub const EVENT_TIMEOUT: Duration = Duration::from_secs(20);

/// The `blocker` binary under test: `BLOCKER_BIN`, or the workspace's debug build.
pub fn blocker_bin() -> PathBuf {
    std::env::var_os("BLOCKER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/blocker"))
}

/// `program run --policy-dir POLICY_DIR` with its output piped, logging at `info`, and killed
/// with the process that started it, so that no test or bench leaves programs loaded behind it.
pub fn blocker_run(program: &Path, policy_dir: &Path) -> Command {
    let mut command = Command::new(program);
    command
        .arg("run")
        .arg("--policy-dir")
        .arg(policy_dir)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    // SAFETY: prctl is async-signal-safe; it only sets this child's parent-death signal.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    command
}

/// A program that exits 0; copies of it play the banned and unbanned binaries.
pub fn harmless_binary() -> PathBuf {
    std::env::var_os("BLOCKER_TEST_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/true"))
}

/// A fresh directory for one test's binaries and policies, removed afterwards.
pub struct Sandbox {
    dir: PathBuf,
}

impl Sandbox {
    pub fn new(test_name: &str) -> Result<Self> {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "blocker-test-{test_name}-{}-{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(dir.join("policies"))
            .with_context(|| format!("creating {}", dir.display()))?;
        Ok(Self { dir })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    pub fn policy_dir(&self) -> PathBuf {
        self.dir.join("policies")
    }

    /// A new copy (new inode, same content) of the harmless binary.
    pub fn copy_binary(&self, name: &str) -> Result<PathBuf> {
        let path = self.path(name);
        std::fs::copy(harmless_binary(), &path).with_context(|| {
            format!(
                "copying {} to {}",
                harmless_binary().display(),
                path.display()
            )
        })?;
        Ok(path)
    }

    pub fn write_policy(&self, file_name: &str, toml: &str) -> Result<PathBuf> {
        let path = self.policy_dir().join(file_name);
        std::fs::write(&path, toml).with_context(|| format!("writing {}", path.display()))?;
        Ok(path)
    }
}

impl Drop for Sandbox {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A policy file banning `deny` (rule `ban`) and auditing `audit` (rule `watch`); a rule with
/// no paths is left out.
pub fn deny_and_audit_policy(deny: &[&Path], audit: &[&Path]) -> String {
    let rule = |header: &str, paths: &[&Path]| {
        if paths.is_empty() {
            return String::new();
        }
        let quoted: Vec<_> = paths
            .iter()
            .map(|path| format!("{:?}", path.display().to_string()))
            .collect();
        format!("\n[[rule]]\n{header}paths = [{}]\n", quoted.join(", "))
    };
    format!(
        "name = \"test\"\n{}{}",
        rule("id = \"ban\"\nreason = \"banned by the test\"\n", deny),
        rule("id = \"watch\"\naction = \"audit\"\n", audit)
    )
}

/// The common scenario: three copies of the same binary in a sandbox, one banned (rule `ban`),
/// one audited (rule `watch`), one named by no rule, with the policy written.
pub struct BanScenario {
    pub sandbox: Sandbox,
    pub banned: PathBuf,
    pub audited: PathBuf,
    pub unbanned: PathBuf,
}

impl BanScenario {
    pub fn new(test_name: &str) -> Result<Self> {
        let sandbox = Sandbox::new(test_name)?;
        let banned = sandbox.copy_binary("banned")?;
        let audited = sandbox.copy_binary("audited")?;
        let unbanned = sandbox.copy_binary("unbanned")?;
        sandbox.write_policy("test.toml", &deny_and_audit_policy(&[&banned], &[&audited]))?;
        Ok(Self {
            sandbox,
            banned,
            audited,
            unbanned,
        })
    }

    /// Starts the daemon on this scenario's policy with `args`.
    pub fn start_daemon(&self, args: &[&str]) -> Result<(Daemon, Value)> {
        Daemon::start(&self.sandbox.policy_dir(), args)
    }

    /// The unbanned copy runs, and the audited copy runs and is reported under rule `watch`
    /// with `comm` as the task name.
    pub fn check_unbanned_and_audited_run(
        &self,
        daemon: &mut Daemon,
        comm: String,
        backend: &str,
    ) -> Result<()> {
        let status = Command::new(&self.unbanned).status()?;
        if !status.success() {
            bail!("an unbanned copy of the same binary must run: {status}");
        }
        let (pid, status) = run_as_launcher(&self.audited)?;
        if !status.success() {
            bail!("audit must let the binary run: {status}");
        }
        let record = daemon.wait_for_exec(&self.audited)?;
        assert_exec_record(
            &record,
            &ExpectedExec {
                path: &self.audited,
                pid,
                comm,
                rule: "watch",
                enforcement: "none",
                backend,
            },
        )
    }

    /// Stops the daemon, which must exit cleanly having reported nothing for the unbanned copy,
    /// after which the banned copy runs again. Returns every record the daemon wrote.
    pub fn stop_and_check_detached(&self, daemon: Daemon) -> Result<Vec<Value>> {
        let (status, records, _) = daemon.stop()?;
        if !status.success() {
            bail!("daemon exit: {status}");
        }
        let unbanned = self.unbanned.display().to_string();
        if records
            .iter()
            .any(|record| record["path"] == unbanned.as_str())
        {
            bail!("the unbanned copy produced an event: {records:?}");
        }
        if !records.iter().any(|record| record["kind"] == "stopped") {
            bail!("no stopped record: {records:?}");
        }
        let status = Command::new(&self.banned).status()?;
        if !status.success() {
            bail!("after the daemon detaches the banned copy runs again: {status}");
        }
        Ok(records)
    }
}

/// One line the daemon wrote: a JSON record on stdout or a log line on stderr.
enum Output {
    Record(Value),
    Log(String),
}

/// What a test does with one of the daemon's output pipes (its records on stdout, its log on
/// stderr).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum PipeReader {
    /// Read as it comes (`wait_for_record`, `wait_for_log`).
    Reading,
    /// The pipe stays open and nobody reads it, like a stuck log shipper or journald, until
    /// [`Daemon::read_stdout`] or [`Daemon::read_stderr`].
    NotReading,
}

/// How a daemon is spawned: as tests want it by default, or as the bench does.
#[derive(Clone, Copy)]
pub struct SpawnOptions {
    pub stdout: PipeReader,
    pub stderr: PipeReader,
    /// Copy its log lines to this process's stderr, prefixed (tests show them on failure; the
    /// bench's exec storms would drown its own output).
    pub echo_log: bool,
    /// The watchdog kills it after this long.
    pub lifetime: Duration,
}

impl Default for SpawnOptions {
    fn default() -> Self {
        Self {
            stdout: PipeReader::Reading,
            stderr: PipeReader::Reading,
            echo_log: true,
            lifetime: DAEMON_LIFETIME_LIMIT,
        }
    }
}

/// What the daemon wrote, with the instant it arrived.
type Arrived = (Instant, Output);

/// A running `blocker run`.
pub struct Daemon {
    child: Child,
    output: Receiver<Arrived>,
    /// Set while [`PipeReader::NotReading`]: the pipe and where its records will go.
    unread_stdout: Option<(ChildStdout, Sender<Arrived>)>,
    /// Likewise for stderr, and whether to echo its lines.
    unread_stderr: Option<(ChildStderr, Sender<Arrived>, bool)>,
    events_file: PathBuf,
    /// Everything received, for diagnostics.
    pub records: Vec<Value>,
    pub log: Vec<String>,
    /// Received but not yet returned by a `wait_for_*`.
    unclaimed: Vec<Arrived>,
    /// A status document [`Daemon::spawn`] chose, removed with the daemon.
    private_status_file: Option<PathBuf>,
    /// The `--status-file` it was given, which names its control socket.
    status_file: Option<PathBuf>,
}

impl Daemon {
    /// Starts `blocker run` on `policy_dir` with extra `args` and waits for its `started`
    /// record, which it writes once the programs are attached.
    pub fn start(policy_dir: &Path, args: &[&str]) -> Result<(Self, Value)> {
        Self::spawn(policy_dir, args)?.started()
    }

    /// Starts `blocker run` on `policy_dir` with extra `args`. Unless `args` name one, the
    /// daemon writes its status document to a file of its own, never the host's
    /// /run/blocker/status.json.
    pub fn spawn(policy_dir: &Path, args: &[&str]) -> Result<Self> {
        Self::spawn_with(policy_dir, args, SpawnOptions::default())
    }

    /// Like [`Daemon::spawn`], with a choice of reading its pipes.
    pub fn spawn_with(policy_dir: &Path, args: &[&str], options: SpawnOptions) -> Result<Self> {
        if args.contains(&"--status-file") {
            return Self::spawn_program(&blocker_bin(), policy_dir, args, options);
        }
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let status_file = std::env::temp_dir().join(format!(
            "blocker-test-status-{}-{}.json",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let status_file_arg = status_file
            .to_str()
            .context("the temporary directory's path is not UTF-8")?;
        let mut daemon = Self::spawn_program(
            &blocker_bin(),
            policy_dir,
            &[&["--status-file", status_file_arg], args].concat(),
            options,
        )?;
        daemon.private_status_file = Some(status_file);
        Ok(daemon)
    }

    /// Starts `program run --policy-dir POLICY_DIR ARGS` as given, e.g. an installed blocker
    /// with its default status file, and waits for its `started` record.
    pub fn start_program(
        program: &Path,
        policy_dir: &Path,
        args: &[&str],
    ) -> Result<(Self, Value)> {
        Self::spawn_program(program, policy_dir, args, SpawnOptions::default())?.started()
    }

    fn started(mut self) -> Result<(Self, Value)> {
        let started = self
            .wait_for_record(STARTUP_TIMEOUT, |record| record["kind"] == "started")
            .with_context(|| format!("daemon did not start; its log:\n{}", self.log.join("\n")))?;
        Ok((self, started))
    }

    /// Starts `program run --policy-dir POLICY_DIR ARGS` as `options` say. Events are also
    /// written to `events.jsonl` next to `policy_dir` (in the sandbox, never the host's
    /// /var/log), and never to the host's journal; metrics go to no file unless `args` name
    /// one (never the host's node_exporter directory).
    pub fn spawn_program(
        program: &Path,
        policy_dir: &Path,
        args: &[&str],
        options: SpawnOptions,
    ) -> Result<Self> {
        let events_file = policy_dir
            .parent()
            .unwrap_or(policy_dir)
            .join("events.jsonl");
        let mut command = blocker_run(program, policy_dir);
        command
            .arg("--events-file")
            .arg(&events_file)
            .arg("--no-journald")
            .args(args);
        if !args
            .iter()
            .any(|&arg| arg == "--metrics-file" || arg == "--no-metrics-file")
        {
            command.arg("--no-metrics-file");
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;

        let (sender, output) = mpsc::channel();
        let child_stdout = child.stdout.take().expect("piped");
        let mut unread_stdout = None;
        match options.stdout {
            PipeReader::Reading => read_records(child_stdout, sender.clone()),
            PipeReader::NotReading => unread_stdout = Some((child_stdout, sender.clone())),
        }
        let stderr = child.stderr.take().expect("piped");
        let mut unread_stderr = None;
        match options.stderr {
            PipeReader::Reading => read_log(stderr, sender, options.echo_log),
            PipeReader::NotReading => unread_stderr = Some((stderr, sender, options.echo_log)),
        }
        let pid = child.id() as libc::pid_t;
        let lifetime = options.lifetime;
        thread::spawn(move || {
            thread::sleep(lifetime);
            // SAFETY: plain kill(2); if the pid was reaped and reused the test has long ended.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        });
        Ok(Self {
            child,
            output,
            unread_stdout,
            unread_stderr,
            events_file,
            records: Vec::new(),
            log: Vec::new(),
            unclaimed: Vec::new(),
            private_status_file: None,
            status_file: args
                .iter()
                .position(|&arg| arg == "--status-file")
                .and_then(|at| args.get(at + 1))
                .map(PathBuf::from),
        })
    }

    /// Its status document, for `blocker stop|policy --status-file`: through it they find the
    /// daemon's control socket. `None` for a daemon given none (the default document).
    pub fn status_file(&self) -> Option<&Path> {
        self.status_file.as_deref()
    }

    /// Where this daemon writes its events file.
    pub fn events_file(&self) -> &Path {
        &self.events_file
    }

    /// Starts reading the stdout of a daemon spawned with [`PipeReader::NotReading`].
    pub fn read_stdout(&mut self) {
        if let Some((stdout, records)) = self.unread_stdout.take() {
            read_records(stdout, records);
        }
    }

    /// Starts reading the stderr of a daemon spawned with [`PipeReader::NotReading`].
    pub fn read_stderr(&mut self) {
        if let Some((stderr, lines, echo)) = self.unread_stderr.take() {
            read_log(stderr, lines, echo);
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn receive(&mut self, deadline: Instant) -> Result<bool> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.output.recv_timeout(left) {
            Ok(arrived) => {
                match &arrived.1 {
                    Output::Record(record) => self.records.push(record.clone()),
                    Output::Log(line) => self.log.push(line.clone()),
                }
                self.unclaimed.push(arrived);
                Ok(true)
            }
            Err(RecvTimeoutError::Timeout) => Ok(false),
            Err(RecvTimeoutError::Disconnected) => bail!("daemon closed its output"),
        }
    }

    /// The earliest output not returned before that `wanted` accepts, waiting up to `timeout`.
    fn claim(&mut self, timeout: Duration, wanted: impl Fn(&Output) -> bool) -> Result<Arrived> {
        let deadline = Instant::now() + timeout;
        if let Some(index) = self.unclaimed.iter().position(|(_, output)| wanted(output)) {
            return Ok(self.unclaimed.remove(index));
        }
        // Only new output can match from here on: checking just it keeps a daemon writing
        // thousands of lines from making every wait slower than the last.
        loop {
            if self.receive(deadline)? {
                if wanted(&self.unclaimed.last().expect("just received").1) {
                    return Ok(self.unclaimed.pop().expect("just received"));
                }
            } else {
                let last = |lines: usize| lines.saturating_sub(20);
                bail!(
                    "nothing matching within {timeout:?}; last records: {:?}; last log lines: {:?}",
                    &self.records[last(self.records.len())..],
                    &self.log[last(self.log.len())..]
                );
            }
        }
    }

    /// The earliest record not returned before that satisfies `wanted`.
    pub fn wait_for_record(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> Result<Value> {
        Ok(self.wait_for_record_arrival(timeout, wanted)?.1)
    }

    /// [`Daemon::wait_for_record`], with the instant the record arrived.
    pub fn wait_for_record_arrival(
        &mut self,
        timeout: Duration,
        wanted: impl Fn(&Value) -> bool,
    ) -> Result<(Instant, Value)> {
        match self.claim(
            timeout,
            |output| matches!(output, Output::Record(record) if wanted(record)),
        )? {
            (at, Output::Record(record)) => Ok((at, record)),
            (_, Output::Log(_)) => unreachable!("claim returns what the filter accepts"),
        }
    }

    /// Counts the `exec` records that arrive until none has for `quiet`; returns the count and
    /// when the last of them arrived. They are counted, not kept: a storm makes many.
    pub fn count_execs_until_quiet(&mut self, quiet: Duration) -> (u64, Option<Instant>) {
        let mut count = 0;
        let mut last = None;
        while let Ok((at, output)) = self.output.recv_timeout(quiet) {
            match output {
                Output::Record(record) if record["kind"] == "exec" => {
                    count += 1;
                    last = Some(at);
                }
                Output::Record(record) => self.records.push(record),
                Output::Log(line) => self.log.push(line),
            }
        }
        (count, last)
    }

    /// The next exec record for `path` (as spelled to exec).
    pub fn wait_for_exec(&mut self, path: &Path) -> Result<Value> {
        let path = path.display().to_string();
        self.wait_for_record(EVENT_TIMEOUT, |record| {
            record["kind"] == "exec" && record["path"] == path.as_str()
        })
    }

    /// The earliest log line not returned before that contains `text`.
    pub fn wait_for_log(&mut self, text: &str, timeout: Duration) -> Result<String> {
        match self.claim(
            timeout,
            |output| matches!(output, Output::Log(line) if line.contains(text)),
        )? {
            (_, Output::Log(line)) => Ok(line),
            (_, Output::Record(_)) => unreachable!("claim returns what the filter accepts"),
        }
    }

    /// Sends `signal` to the daemon.
    pub fn signal(&self, signal: libc::c_int) {
        // SAFETY: plain kill(2) of our own child, which has not been reaped yet.
        unsafe { libc::kill(self.child.id() as libc::pid_t, signal) };
    }

    /// `blocker stop` of this daemon, which asks it over its control socket: the documented
    /// way, and under `--protect` the only one besides pid 1.
    pub fn blocker_stop(&self) -> Result<std::process::Output> {
        let mut command = Command::new(blocker_bin());
        command.arg("stop");
        if let Some(status_file) = self.status_file() {
            command.arg("--status-file").arg(status_file);
        }
        Ok(command.output()?)
    }

    /// SIGTERM, then waits for exit and collects everything it still wrote.
    pub fn stop(self) -> Result<(ExitStatus, Vec<Value>, Vec<String>)> {
        self.stop_within(STARTUP_TIMEOUT)
    }

    /// [`Daemon::stop`], waiting up to `timeout` for it to exit.
    pub fn stop_within(
        mut self,
        timeout: Duration,
    ) -> Result<(ExitStatus, Vec<Value>, Vec<String>)> {
        self.signal(libc::SIGTERM);
        let status = self.wait(timeout)?;
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while let Ok(true) = self.receive(deadline) {}
        Ok((
            status,
            std::mem::take(&mut self.records),
            std::mem::take(&mut self.log),
        ))
    }

    /// Waits for the daemon to exit by itself.
    pub fn wait(&mut self, timeout: Duration) -> Result<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                bail!("daemon did not exit within {timeout:?}");
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    /// Every line the daemon has written so far, and until it closes its output.
    pub fn remaining_output(mut self) -> (Vec<Value>, Vec<String>) {
        let deadline = Instant::now() + EVENT_TIMEOUT;
        while let Ok(true) = self.receive(deadline) {}
        (
            std::mem::take(&mut self.records),
            std::mem::take(&mut self.log),
        )
    }
}

/// Forwards every JSON line of the daemon's stdout as a record.
fn read_records(stdout: ChildStdout, records: Sender<Arrived>) {
    thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let value = serde_json::from_str(&line).unwrap_or_else(|error| {
                panic!("daemon wrote a line that is not JSON ({error}): {line}")
            });
            if records
                .send((Instant::now(), Output::Record(value)))
                .is_err()
            {
                break;
            }
        }
    });
}

/// Passes each line of the daemon's log on to `lines`, copied to this process's stderr if
/// `echo`.
fn read_log(stderr: ChildStderr, lines: Sender<Arrived>, echo: bool) {
    thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if echo {
                eprintln!("blocker| {line}");
            }
            if lines.send((Instant::now(), Output::Log(line))).is_err() {
                break;
            }
        }
    });
}

/// The records in an events file, in order.
pub fn events_in(file: &Path) -> Result<Vec<Value>> {
    let text =
        std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    text.lines()
        .map(|line| {
            serde_json::from_str(line)
                .with_context(|| format!("{}: a line that is not JSON: {line}", file.display()))
        })
        .collect()
}

impl Drop for Daemon {
    /// Stops a daemon a test left running, even when it failed half-way: by SIGKILL, or, for a
    /// protected daemon, which refuses signals (only in the VM, where tests run one at a time),
    /// through `blocker stop`. Never waits forever.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            if self.wait(Duration::from_secs(2)).is_err() {
                let _ = self.blocker_stop();
                let _ = self.wait(STARTUP_TIMEOUT);
            }
        }
        if let Some(status_file) = &self.private_status_file {
            let _ = std::fs::remove_file(status_file);
        }
    }
}

/// `major:minor` of the filesystem holding `path`, as events spell devices.
pub fn device_of(path: &Path) -> Result<String> {
    let dev = std::fs::metadata(path)?.dev();
    Ok(format!("{}:{}", libc::major(dev), libc::minor(dev)))
}

pub fn inode_of(path: &Path) -> Result<u64> {
    Ok(std::fs::metadata(path)?.ino())
}

/// `comm` the kernel gives a process exec'd from `path`: the file name, cut to 15 bytes.
pub fn comm_of(path: &Path) -> String {
    let name = path.file_name().unwrap().to_string_lossy();
    name.chars().take(15).collect()
}

/// The name a child started by [`run_as_launcher`] has until its exec completes.
pub const LAUNCHER_COMM: &str = "test-launcher";

/// Runs `path` in a child named [`LAUNCHER_COMM`], so the caller's `comm` in events is known.
pub fn run_as_launcher(path: &Path) -> std::io::Result<(u32, ExitStatus)> {
    let mut command = Command::new(path);
    // SAFETY: prctl is async-signal-safe; it renames only this child.
    unsafe {
        command.pre_exec(|| {
            let name = std::ffi::CString::new(LAUNCHER_COMM).unwrap();
            if libc::prctl(libc::PR_SET_NAME, name.as_ptr()) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = command.spawn()?;
    let pid = child.id();
    Ok((pid, child.wait()?))
}

/// `execveat(fd, "", AT_EMPTY_PATH)` of `file` in a child, which is how `fexecve` runs a file
/// that may have no name; the child's status, or the exec's error.
pub fn exec_by_descriptor(file: &std::fs::File) -> std::io::Result<ExitStatus> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let empty = std::ffi::CString::new("").unwrap();
    let argv: [*const libc::c_char; 2] = [empty.as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // Addresses, so the closure is Send; the CString and arrays outlive the spawn below.
    let (argv_address, envp_address, empty_address) = (
        argv.as_ptr() as usize,
        envp.as_ptr() as usize,
        empty.as_ptr() as usize,
    );
    let mut command = Command::new("/proc/self/exe");
    // SAFETY: only an async-signal-safe system call between fork and exec.
    unsafe {
        command.pre_exec(move || {
            libc::syscall(
                libc::SYS_execveat,
                fd,
                empty_address as *const libc::c_char,
                argv_address as *const *const libc::c_char,
                envp_address as *const *const libc::c_char,
                libc::AT_EMPTY_PATH,
            );
            Err(std::io::Error::last_os_error())
        });
    }
    command.status()
}

/// The SHA-256 of `path` in hex, as `blocker hash` prints it.
pub fn sha256_of(path: &Path) -> Result<String> {
    let output = Command::new(blocker_bin()).arg("hash").arg(path).output()?;
    if !output.status.success() {
        bail!("blocker hash {}: {output:?}", path.display());
    }
    String::from_utf8_lossy(&output.stdout)
        .split_whitespace()
        .next()
        .map(str::to_owned)
        .context("blocker hash printed nothing")
}

/// A read-only descriptor of a copy of `source` in a memfd: a file with no name on disk
/// (`nlink == 0`), as `memfd_create` + `fexecve` malware and runc use.
pub fn memfd_copy(source: &Path) -> Result<std::fs::File> {
    use std::{io::Write, os::fd::FromRawFd};
    let name = std::ffi::CString::new("blocker-test").unwrap();
    // SAFETY: a valid NUL-terminated name; the result is checked before use.
    let fd = unsafe { libc::memfd_create(name.as_ptr(), 0) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error()).context("memfd_create");
    }
    // SAFETY: a fresh descriptor this function owns.
    let mut writable = unsafe { std::fs::File::from_raw_fd(fd) };
    writable.write_all(&std::fs::read(source)?)?;
    read_only_reopen(&writable)
}

/// A read-only copy of `source` in an `O_TMPFILE` under `directory`: never linked, `nlink == 0`.
pub fn tmpfile_copy(source: &Path, directory: &Path) -> Result<std::fs::File> {
    use std::{io::Write, os::unix::fs::OpenOptionsExt};
    let mut writable = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_TMPFILE)
        .mode(0o755)
        .open(directory)
        .context("open(O_TMPFILE)")?;
    writable.write_all(&std::fs::read(source)?)?;
    read_only_reopen(&writable)
}

/// The kernel refuses to exec a file open for writing (ETXTBSY): reopen it read-only through
/// /proc and let the writable descriptor go.
fn read_only_reopen(writable: &std::fs::File) -> Result<std::fs::File> {
    use std::os::fd::AsRawFd;
    let path = format!("/proc/self/fd/{}", writable.as_raw_fd());
    std::fs::File::open(&path).with_context(|| format!("reopening {path}"))
}

/// What a test knows about one exec of a banned file.
pub struct ExpectedExec<'a> {
    pub path: &'a Path,
    pub pid: u32,
    pub comm: String,
    pub rule: &'a str,
    /// `eperm`, `sigkill` or `none`.
    pub enforcement: &'a str,
    pub backend: &'a str,
}

/// Checks every field of an exec record against what the test knows.
pub fn assert_exec_record(record: &Value, expected: &ExpectedExec<'_>) -> Result<()> {
    let ExpectedExec {
        path,
        pid,
        rule,
        enforcement,
        backend,
        ..
    } = *expected;
    let expect = |field: &str, wanted: Value| -> Result<()> {
        if record[field] != wanted {
            bail!("{field} is {} not {wanted} in {record}", record[field]);
        }
        Ok(())
    };
    expect("kind", "exec".into())?;
    expect("path", path.display().to_string().into())?;
    expect("pid", pid.into())?;
    expect("ppid", std::process::id().into())?;
    // SAFETY: getuid/getgid cannot fail.
    expect("uid", unsafe { libc::getuid() }.into())?;
    expect("gid", unsafe { libc::getgid() }.into())?;
    expect("comm", expected.comm.as_str().into())?;
    expect("rule", rule.into())?;
    expect("policy", "test".into())?;
    expect("enforcement", enforcement.into())?;
    expect("backend", backend.into())?;
    expect("device", device_of(path)?.into())?;
    expect("inode", inode_of(path)?.into())?;
    expect("path_truncated", false.into())?;
    let action = if enforcement == "none" {
        "audit"
    } else {
        "deny"
    };
    expect("action", action.into())?;
    if !record["time"]
        .as_str()
        .is_some_and(|time| time.ends_with('Z'))
    {
        bail!("time is not RFC 3339 UTC in {record}");
    }
    Ok(())
}

/// Starts a daemon (lsm backend) enforcing one content rule, `rule`, that bans the contents of
/// `files`, with a scan root holding nothing and no hash cache: only the kernel's hashing can
/// recognise a copy. Returns the daemon and its `started` record.
pub fn start_content_daemon(
    sandbox: &Sandbox,
    rule: &str,
    files: &[&Path],
) -> Result<(Daemon, Value)> {
    start_content_daemon_with(sandbox, rule, files, "")
}

/// [`start_content_daemon`] with `header` (policy settings, one per line) in the policy file.
pub fn start_content_daemon_with(
    sandbox: &Sandbox,
    rule: &str,
    files: &[&Path],
    header: &str,
) -> Result<(Daemon, Value)> {
    let hashes: Vec<String> = files
        .iter()
        .map(|file| sha256_of(file).map(|hash| format!("{hash:?}")))
        .collect::<Result<_>>()?;
    sandbox.write_policy(
        "content.toml",
        &format!(
            "name = \"content\"\n{header}\n[[rule]]\nid = \"{rule}\"\nsha256 = [{}]\n",
            hashes.join(", ")
        ),
    )?;
    let nothing_to_scan = sandbox.path("nothing-to-scan");
    std::fs::create_dir_all(&nothing_to_scan)?;
    let scan_root = nothing_to_scan.display().to_string();
    let (daemon, started) = Daemon::start(
        &sandbox.policy_dir(),
        &[
            "--backend",
            "lsm",
            "--scan-root",
            &scan_root,
            "--no-hash-cache",
        ],
    )?;
    ensure!(started["backend"] == "lsm", "{started}");
    Ok((daemon, started))
}

/// Debian's `promtool` (package `prometheus`), which `cargo xtask test` installs.
const PROMTOOL: &str = "/usr/bin/promtool";

/// `promtool check metrics` of `text`, which must find nothing to say.
pub fn promtool_check(what: &str, text: &str) -> Result<()> {
    use std::io::Write;
    let mut child = Command::new(PROMTOOL)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("running {PROMTOOL} (Debian package prometheus)"))?;
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(text.as_bytes())?;
    let output = child.wait_with_output()?;
    ensure!(
        output.status.success(),
        "promtool check metrics refused {what} ({}): {}{}\n{text}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}
