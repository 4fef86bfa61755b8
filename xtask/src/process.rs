//! Running child processes: plain runs that must succeed, and runs under a deadline whose output
//! is handed over line by line.

use std::{
    io::{self, BufRead, BufReader},
    os::unix::process::CommandExt,
    process::{Command, ExitStatus, Stdio},
    sync::{
        atomic::{AtomicI32, Ordering},
        Once,
    },
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

/// How a run under a deadline ended.
pub enum Ended {
    Exited(ExitStatus),
    TimedOut,
}

/// The command line as a user would type it, for messages.
pub fn describe(command: &Command) -> String {
    let mut words = vec![command.get_program().to_string_lossy().into_owned()];
    words.extend(
        command
            .get_args()
            .map(|arg| arg.to_string_lossy().into_owned()),
    );
    words.join(" ")
}

/// Runs `command` with inherited output and fails unless it succeeds.
pub fn run(command: &mut Command) -> Result<()> {
    let status = command
        .status()
        .with_context(|| format!("cannot start `{}`", describe(command)))?;
    if !status.success() {
        bail!("`{}` failed ({status})", describe(command));
    }
    Ok(())
}

/// Runs `command` and returns its standard output; fails unless it succeeds, with its standard
/// error in the message.
pub fn stdout_of(command: &mut Command) -> Result<Vec<u8>> {
    let output = command
        .output()
        .with_context(|| format!("cannot run `{}`", describe(command)))?;
    if !output.status.success() {
        bail!(
            "`{}` failed ({}): {}",
            describe(command),
            output.status,
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(output.stdout)
}

/// Runs `command` in a process group of its own, passes each line of its output (standard output
/// and error alike, without the line ending) to `on_line`, and kills the whole group when
/// `timeout` passes or when this process is interrupted (after which it dies of the interrupting
/// signal). The group is killed after a normal exit too, so that nothing the command started
/// outlives it.
pub fn run_with_deadline(
    command: &mut Command,
    timeout: Duration,
    mut on_line: impl FnMut(&str) + Send,
) -> Result<Ended> {
    forward_interrupts_to_children();
    let description = describe(command);
    // One pipe for both streams keeps their lines in the order they were written.
    let (output, output_writer) =
        io::pipe().with_context(|| format!("creating a pipe for `{description}`"))?;
    let stderr_writer = output_writer
        .try_clone()
        .with_context(|| format!("creating a pipe for `{description}`"))?;
    let spawned = command
        .stdin(Stdio::null())
        .stdout(output_writer)
        .stderr(stderr_writer)
        .process_group(0)
        .spawn()
        .with_context(|| format!("cannot start `{description}`"));
    // `command` holds the pipe's write ends, and the output only ends once no one does.
    command.stdout(Stdio::null()).stderr(Stdio::null());
    let mut child = spawned?;
    let deadline = Instant::now() + timeout;

    thread::scope(|scope| {
        let reader = scope.spawn(move || {
            let mut output = BufReader::new(output);
            let mut line = Vec::new();
            loop {
                line.clear();
                if output.read_until(b'\n', &mut line)? == 0 {
                    return io::Result::Ok(());
                }
                let text = String::from_utf8_lossy(&line);
                on_line(text.trim_end_matches(['\n', '\r']));
            }
        });

        let exited = loop {
            if let Some(status) = child
                .try_wait()
                .with_context(|| format!("waiting for `{description}`"))?
            {
                break Some(status);
            }
            if INTERRUPTION.load(Ordering::SeqCst) != 0 || Instant::now() >= deadline {
                break None;
            }
            thread::sleep(Duration::from_millis(50));
        };
        kill_process_group(child.id());
        if exited.is_none() {
            child
                .wait()
                .with_context(|| format!("waiting for `{description}` after killing it"))?;
        }
        reader
            .join()
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
            .with_context(|| format!("reading the output of `{description}`"))?;
        die_if_interrupted();
        Ok(exited.map_or(Ended::TimedOut, Ended::Exited))
    })
}

/// The signal that interrupted this process, or 0.
static INTERRUPTION: AtomicI32 = AtomicI32::new(0);

extern "C" fn note_interruption(signal: libc::c_int) {
    INTERRUPTION.store(signal, Ordering::SeqCst);
}

/// Children in their own process group do not get the terminal's Ctrl-C, so this process catches
/// it (and SIGTERM), kills them itself, and only then dies of the signal.
fn forward_interrupts_to_children() {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        let handler: extern "C" fn(libc::c_int) = note_interruption;
        for signal in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
            unsafe { libc::signal(signal, handler as libc::sighandler_t) };
        }
    });
}

fn die_if_interrupted() {
    let signal = INTERRUPTION.load(Ordering::SeqCst);
    if signal != 0 {
        // SAFETY: restoring the default action and raising the signal ends the process the way
        // the signal would have.
        unsafe {
            libc::signal(signal, libc::SIG_DFL);
            libc::raise(signal);
        }
    }
}

fn kill_process_group(leader: u32) {
    let group = libc::pid_t::try_from(leader).expect("process ids fit in pid_t");
    // SAFETY: plain system call; an already empty group only yields ESRCH, which is fine.
    unsafe { libc::kill(-group, libc::SIGKILL) };
}

/// Whether this process runs with root's privileges.
pub fn is_root() -> bool {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() == 0 }
}
