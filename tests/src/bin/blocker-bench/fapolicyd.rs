//! fapolicyd, the peer blocker is compared with, run safely: in a mount namespace of its own,
//! with a configuration of the bench's own bind-mounted over /etc/fapolicyd: either deny rules
//! for files the bench made and an allow-everything rule, or deny by default with a trust list
//! of files the bench names (lockdown).
//!
//! fapolicyd marks each mount it watches (`allow_filesystem_mark = 0`), and a mount namespace
//! has mounts of its own: so it only sees opens and execs made inside its namespace, by the
//! exec loops the bench starts there, and never the rest of the machine's. It dies with the
//! bench, and if it hung only those loops would wait.

use std::{
    fs,
    io::{BufRead, BufReader},
    os::{
        fd::{AsFd, BorrowedFd, OwnedFd},
        unix::process::CommandExt,
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc::{self, Receiver},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use crate::workspace::c_path;

const CONFIG_DIR: &str = "/etc/fapolicyd";
/// Where fapolicyd keeps its trust database; a private tmpfs in its namespace.
const STATE_DIR: &str = "/var/lib/fapolicyd";
/// Its pid file, fifo and report go below /run; a private tmpfs too.
const RUN_DIR: &str = "/run";
const FIFO_DIR: &str = "/run/fapolicyd";
/// What fapolicyd 1.1 prints once its marks are in place.
const READY: &str = "Starting to listen for events";

/// fapolicyd.conf as Debian ships it, but: `trust = file` (there is no rpm database on
/// Debian, and 1.1.7 has no dpkg backend) with the trust list the bench writes, running as
/// root (the bench's namespace has no `fapolicyd` user to own the private directories) and,
/// what keeps it inside its namespace, mount marks.
const CONFIG: &str = "\
permissive = 0
nice_val = 14
q_size = 640
uid = 0
gid = 0
do_stat_report = 1
detailed_report = 1
db_max_size = 50
subj_cache_size = 1549
obj_cache_size = 8191
watch_fs = ext2,ext3,ext4,tmpfs,xfs,vfat,iso9660,btrfs
trust = file
integrity = none
syslog_format = rule,dec,perm,auid,pid,exe,:,path,ftype,trust
rpm_sha256_only = 0
allow_filesystem_mark = 0
";

/// What a deny rule names.
pub enum Denied<'a> {
    File(&'a Path),
    /// Everything below a directory.
    Directory(&'a Path),
}

/// The rules: the denies in order, then everything else allowed.
pub fn rules(denied: &[Denied]) -> String {
    let mut rules = String::new();
    for deny in denied {
        let object = match deny {
            Denied::File(path) => format!("path={}", path.display()),
            Denied::Directory(path) => format!("dir={}/", path.display()),
        };
        rules.push_str(&format!("deny perm=execute all : {object}\n"));
    }
    rules.push_str("allow perm=any all : all\n");
    rules
}

/// Deny by default, fapolicyd's lockdown: an exec of a file its trust list names runs, any other
/// is refused, and opens are allowed (the counterpart of blocker's `default = "deny"`, which
/// checks executions, not reads). First match wins.
pub const LOCKDOWN_RULES: &str = "\
allow perm=execute all : trust=1
deny perm=execute all : all
allow perm=open all : all
";

/// One line of `fapolicyd.trust` (fapolicyd.trust(5)): the path, its size in bytes and the
/// SHA-256 of its content in lowercase hex, separated by spaces.
pub fn trust_line(path: &Path, size: u64, sha256: &str) -> Result<String> {
    let path = path
        .to_str()
        .filter(|path| !path.contains(char::is_whitespace))
        .with_context(|| {
            format!(
                "{} cannot be listed in fapolicyd.trust: not UTF-8 or has whitespace",
                path.display()
            )
        })?;
    Ok(format!("{path} {size} {sha256}\n"))
}

pub struct Fapolicyd {
    child: Child,
    /// fapolicyd's mount namespace, for the exec loops measured under it.
    namespace: OwnedFd,
    output: Receiver<String>,
}

impl Fapolicyd {
    /// Writes the configuration, `rules` and the `trust` list (the content of fapolicyd.trust)
    /// into `config_dir` and starts `binary` in the foreground in a new mount namespace; returns
    /// once it listens.
    pub fn start(
        binary: &Path,
        config_dir: &Path,
        rules: &str,
        trust: &str,
        timeout: Duration,
    ) -> Result<Self> {
        if let Some(pid) = running_fapolicyd()? {
            bail!(
                "fapolicyd already runs (pid {pid}); stop it first: the bench runs its own, \
                 and another would be measured along"
            );
        }
        fs::create_dir_all(config_dir.join("rules.d"))?;
        fs::create_dir_all(config_dir.join("trust.d"))?;
        fs::write(config_dir.join("fapolicyd.conf"), CONFIG)?;
        fs::write(config_dir.join("compiled.rules"), rules)?;
        fs::write(config_dir.join("fapolicyd.trust"), trust)?;
        // Mount points; they exist wherever the package is installed, but not in the VM.
        for dir in [CONFIG_DIR, STATE_DIR] {
            fs::create_dir_all(dir).with_context(|| format!("creating {dir}"))?;
        }

        let config_dir = c_path(config_dir)?;
        let [etc, state, run, fifo] = [CONFIG_DIR, STATE_DIR, RUN_DIR, FIFO_DIR]
            .map(|dir| c_path(Path::new(dir)).expect("constant paths have no NUL"));
        let mut command = Command::new(binary);
        command
            .arg("--debug-deny")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        // SAFETY: only async-signal-safe system calls on memory prepared before the fork.
        unsafe {
            command.pre_exec(move || {
                let check = |result: libc::c_int| {
                    if result == 0 {
                        Ok(())
                    } else {
                        Err(std::io::Error::last_os_error())
                    }
                };
                check(libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL))?;
                check(libc::unshare(libc::CLONE_NEWNS))?;
                let null = std::ptr::null();
                check(libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    null,
                    libc::MS_REC | libc::MS_PRIVATE,
                    null.cast(),
                ))?;
                check(libc::mount(
                    config_dir.as_ptr(),
                    etc.as_ptr(),
                    null,
                    libc::MS_BIND,
                    null.cast(),
                ))?;
                for dir in [&state, &run] {
                    check(libc::mount(
                        c"tmpfs".as_ptr(),
                        dir.as_ptr(),
                        c"tmpfs".as_ptr(),
                        0,
                        null.cast(),
                    ))?;
                }
                check(libc::mkdir(fifo.as_ptr(), 0o770))
            });
        }
        let mut child = command
            .spawn()
            .with_context(|| format!("starting {}", binary.display()))?;
        let namespace_path = format!("/proc/{}/ns/mnt", child.id());
        let namespace = fs::File::open(&namespace_path)
            .with_context(|| format!("opening {namespace_path}"))?
            .into();
        let (sender, output) = mpsc::channel();
        for stream in [
            Box::new(child.stdout.take().expect("piped")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("piped")),
        ] {
            let sender = sender.clone();
            thread::spawn(move || {
                for line in BufReader::new(stream).lines().map_while(Result::ok) {
                    if sender.send(line).is_err() {
                        break;
                    }
                }
            });
        }
        let fapolicyd = Self {
            child,
            namespace,
            output,
        };
        fapolicyd.wait_for(READY, timeout)?;
        Ok(fapolicyd)
    }

    pub fn namespace(&self) -> BorrowedFd<'_> {
        self.namespace.as_fd()
    }

    fn wait_for(&self, text: &str, timeout: Duration) -> Result<Vec<String>> {
        let deadline = Instant::now() + timeout;
        let mut seen = Vec::new();
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.output.recv_timeout(left) {
                Ok(line) => {
                    let done = line.contains(text);
                    seen.push(line);
                    if done {
                        return Ok(seen);
                    }
                }
                Err(_) => bail!(
                    "fapolicyd did not print `{text}` within {timeout:?}; it printed:\n  {}",
                    seen.join("\n  ")
                ),
            }
        }
    }

    /// Stops fapolicyd with SIGTERM; returns the accesses it allowed and denied, from the
    /// report it prints when stopping.
    pub fn stop(mut self) -> Result<(u64, u64)> {
        // SAFETY: plain kill(2) of a child that has not been reaped.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGTERM) };
        let report = self.wait_for("Denied accesses:", Duration::from_secs(60))?;
        let status = self.child.wait().context("waiting for fapolicyd")?;
        if !status.success() {
            bail!("fapolicyd exited with {status}");
        }
        let count = |label: &str| {
            report
                .iter()
                .find_map(|line| line.strip_prefix(label))
                .and_then(|count| count.trim().parse::<u64>().ok())
                .with_context(|| format!("fapolicyd's report has no `{label}` line"))
        };
        Ok((count("Allowed accesses:")?, count("Denied accesses:")?))
    }
}

impl Drop for Fapolicyd {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// The pid of a fapolicyd process already running on the machine, if any.
fn running_fapolicyd() -> Result<Option<u32>> {
    for entry in fs::read_dir("/proc").context("reading /proc")? {
        let entry = entry?;
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|name| name.parse().ok())
        else {
            continue;
        };
        let comm: PathBuf = entry.path().join("comm");
        // A process that exited meanwhile is not running.
        if fs::read_to_string(comm).is_ok_and(|name| name.trim() == "fapolicyd") {
            return Ok(Some(pid));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denies_what_is_named_and_allows_the_rest() {
        let rules = rules(&[
            Denied::File(Path::new("/w/banned-0")),
            Denied::Directory(Path::new("/w/many")),
        ]);
        assert_eq!(
            rules,
            "deny perm=execute all : path=/w/banned-0\n\
             deny perm=execute all : dir=/w/many/\n\
             allow perm=any all : all\n"
        );
    }

    #[test]
    fn lists_a_trusted_file_as_path_size_and_hash() {
        let hash = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(
            trust_line(Path::new("/w/many/f0"), 0, hash).unwrap(),
            format!("/w/many/f0 0 {hash}\n")
        );
        assert!(trust_line(Path::new("/w/a file"), 0, hash).is_err());
    }
}
