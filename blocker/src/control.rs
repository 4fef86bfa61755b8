//! The documented ways to stop blocker and to change its policy: `blocker stop` and
//! `blocker policy`. With a daemon running, they ask it over its control socket
//! ([`crate::control_socket`]) and it does the work itself; without one (or with one older than
//! the socket), they do it here. Policy changes are checked whole before anything is written,
//! so a running daemon only ever sees a valid directory.

mod writable_dir;

use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, ensure, Context, Result};

use crate::{
    control_socket::{
        client,
        protocol::{PolicyFile, Reply, Request},
    },
    escape::controls_escaped,
    identity::FileIdentity,
    policy, status,
};
use writable_dir::WritableDir;

/// How long `stop` waits for daemons to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest policy file `blocker policy install` takes: a fleet's synced rules (`blocker
/// sync`) are about 67 bytes a hash, 100,000 hashes 6.7 MB, and a policy of 16 MiB still
/// loads within the daemon's policy-load budget.
pub const MAX_POLICY_FILE_BYTES: usize = 16 << 20;

/// Stops the daemon whose status document is `status_file` through its control socket; with
/// no daemon listening there (an older one, or none), sends SIGTERM to every running
/// `blocker run` of this binary. Then waits for them to exit. Exits 1 if none runs.
pub fn stop(status_file: &Path) -> Result<ExitCode> {
    let daemons = match ask_to_stop(status_file)? {
        Some(asked) => vec![asked],
        None => {
            let daemons = running_daemons()?;
            if daemons.is_empty() {
                println!("no blocker daemon is running");
                return Ok(ExitCode::from(1));
            }
            for &pid in &daemons {
                // SAFETY: plain kill(2).
                if unsafe { libc::kill(pid, libc::SIGTERM) } != 0 {
                    let error = std::io::Error::last_os_error();
                    bail!("stopping the blocker daemon (pid {pid}): {error}");
                }
            }
            daemons
        }
    };
    let deadline = Instant::now() + STOP_TIMEOUT;
    for pid in daemons {
        while is_alive(pid) {
            ensure!(
                Instant::now() < deadline,
                "the blocker daemon (pid {pid}) did not stop within {STOP_TIMEOUT:?}"
            );
            thread::sleep(Duration::from_millis(50));
        }
        println!("stopped the blocker daemon (pid {pid})");
    }
    Ok(ExitCode::SUCCESS)
}

/// Asks the daemon of `status_file` to stop, if it runs and listens; its pid if it agreed.
fn ask_to_stop(status_file: &Path) -> Result<Option<libc::pid_t>> {
    let Some(socket) = status::running_daemon(status_file).and_then(|daemon| daemon.control_socket)
    else {
        return Ok(None);
    };
    let Some(answer) = client::ask(&socket, &Request::Stop {})? else {
        return Ok(None);
    };
    match answer.reply {
        Reply::Done { .. } => Ok(Some(answer.daemon_pid)),
        Reply::Refused { error } => bail!("the blocker daemon refused to stop: {error}"),
    }
}

/// Whether `pid` exists and has not exited (an exited child stays a zombie until its parent
/// reaps it).
fn is_alive(pid: libc::pid_t) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesized command name, which may itself hold parentheses.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}

/// Processes running `blocker run` from the same binary file as this one.
fn running_daemons() -> Result<Vec<libc::pid_t>> {
    let binary = FileIdentity::of_path(Path::new("/proc/self/exe"))
        .context("finding the blocker binary")?
        .key;
    let me = std::process::id() as libc::pid_t;
    let mut daemons = Vec::new();
    for entry in fs::read_dir("/proc").context("reading /proc")? {
        let Some(pid) = entry?
            .file_name()
            .to_str()
            .and_then(|name| name.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        let same_binary = FileIdentity::of_path(Path::new(&format!("/proc/{pid}/exe")))
            .is_ok_and(|identity| identity.key == binary);
        let command_line = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let runs_daemon = command_line.split(|&byte| byte == 0).nth(1) == Some(b"run");
        if pid != me && same_binary && runs_daemon {
            daemons.push(pid);
        }
    }
    Ok(daemons)
}

/// Installs `files` into `policy_dir`, or removes the policy files `names` from it, as
/// `blocker policy` does: through the daemon of `status_file` if it enforces that directory
/// and listens, else here.
pub fn change(change: PolicyChange, policy_dir: &Path, status_file: &Path) -> Result<ExitCode> {
    for line in make_change(change, policy_dir, status_file)? {
        println!("{}", controls_escaped(&line));
    }
    println!("a running daemon reloads the policy within a second");
    Ok(ExitCode::SUCCESS)
}

/// Makes `change` as [`change`] does, and returns what was done, a line each.
pub fn make_change(
    change: PolicyChange,
    policy_dir: &Path,
    status_file: &Path,
) -> Result<Vec<String>> {
    match ask_to_change(&change, policy_dir, status_file)? {
        Some(said) => Ok(said),
        None => change.apply(policy_dir),
    }
}

/// What the daemon enforcing `policy_dir` said it did, if one runs and listens.
fn ask_to_change(
    change: &PolicyChange,
    policy_dir: &Path,
    status_file: &Path,
) -> Result<Option<Vec<String>>> {
    let Some(daemon) = status::running_daemon(status_file) else {
        return Ok(None);
    };
    let (Some(socket), true) = (
        daemon.control_socket,
        same_directory(&daemon.policy_dir, policy_dir),
    ) else {
        return Ok(None);
    };
    let Some(answer) = client::ask(&socket, &change.request())? else {
        return Ok(None);
    };
    match answer.reply {
        Reply::Done { said } => Ok(Some(said)),
        Reply::Refused { error } => Err(anyhow!(error)),
    }
}

fn same_directory(one: &Path, other: &Path) -> bool {
    match (fs::canonicalize(one), fs::canonicalize(other)) {
        (Ok(one), Ok(other)) => one == other,
        _ => one == other,
    }
}

/// A change `blocker policy` makes to a policy directory.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PolicyChange {
    /// Write these files, replacing files of the same name.
    Install(Vec<PolicyFile>),
    /// Remove the policy files of these names.
    Remove(Vec<String>),
}

impl PolicyChange {
    /// Installing `files`, read now: errors name them as given.
    pub fn install(files: &[PathBuf]) -> Result<Self> {
        let mut read = Vec::new();
        for file in files {
            let name = file
                .file_name()
                .with_context(|| format!("{} names no file", file.display()))?
                .to_string_lossy()
                .into_owned();
            let origin = file.display().to_string();
            check_name(&name, &origin)?;
            let size = fs::metadata(file)
                .with_context(|| format!("reading {origin}"))?
                .len();
            check_size(size, &origin)?;
            let contents = fs::read_to_string(file).with_context(|| format!("reading {origin}"))?;
            read.push(PolicyFile {
                name,
                origin,
                contents,
            });
        }
        Ok(Self::Install(read))
    }

    /// The request that asks a daemon for this change.
    pub fn request(&self) -> Request {
        match self {
            Self::Install(files) => Request::Install {
                files: files.clone(),
            },
            Self::Remove(names) => Request::Remove {
                names: names.clone(),
            },
        }
    }

    /// Makes the change in `policy_dir` if the policy the directory then holds is valid;
    /// otherwise writes nothing and says why. Returns what it did, a line each.
    pub fn apply(&self, policy_dir: &Path) -> Result<Vec<String>> {
        match self {
            Self::Install(files) => install(files, policy_dir),
            Self::Remove(names) => remove(names, policy_dir),
        }
    }
}

/// A policy file must be named so that blocker reads it, and name nothing but a file directly
/// in the policy directory.
fn check_name(name: &str, origin: &str) -> Result<()> {
    ensure!(
        name.ends_with(".toml") && !name.starts_with('.') && !name.contains('/'),
        "{origin}: policy files are named *.toml (and not hidden), or blocker would not read it"
    );
    Ok(())
}

fn check_size(bytes: u64, origin: &str) -> Result<()> {
    ensure!(
        bytes <= MAX_POLICY_FILE_BYTES as u64,
        "{origin}: larger than {MAX_POLICY_FILE_BYTES} bytes, which no policy file needs"
    );
    Ok(())
}

fn install(files: &[PolicyFile], policy_dir: &Path) -> Result<Vec<String>> {
    let mut resulting = current_sources(policy_dir)?;
    for file in files {
        check_name(&file.name, &file.origin)?;
        check_size(file.contents.len() as u64, &file.origin)?;
        // Errors then name the file as the user gave it.
        resulting.insert(
            file.name.clone(),
            (PathBuf::from(&file.origin), file.contents.clone()),
        );
    }
    check(policy_dir, resulting)?;
    let directory = WritableDir::open(policy_dir)?;
    let mut said = Vec::new();
    for file in files {
        directory.write_atomically(&file.name, &file.contents)?;
        said.push(format!(
            "installed {} in {}",
            file.name,
            policy_dir.display()
        ));
    }
    Ok(said)
}

fn remove(names: &[String], policy_dir: &Path) -> Result<Vec<String>> {
    let mut resulting = current_sources(policy_dir)?;
    for name in names {
        ensure!(
            resulting.remove(name).is_some(),
            "{} has no policy file {name}",
            policy_dir.display()
        );
    }
    ensure!(
        !resulting.is_empty(),
        "removing every policy file would leave blocker nothing to enforce; install another first"
    );
    check(policy_dir, resulting)?;
    let directory = WritableDir::open(policy_dir)?;
    let mut said = Vec::new();
    for name in names {
        directory.remove(name)?;
        said.push(format!("removed {}", policy_dir.join(name).display()));
    }
    Ok(said)
}

/// File name → (path for messages, contents) of the policy files in `policy_dir`.
fn current_sources(policy_dir: &Path) -> Result<BTreeMap<String, (PathBuf, String)>> {
    let mut sources = BTreeMap::new();
    let files = policy::policy_files(policy_dir).unwrap_or_default();
    for file in files {
        let name = file
            .file_name()
            .expect("policy files have names")
            .to_string_lossy()
            .into_owned();
        let source =
            fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
        sources.insert(name, (file, source));
    }
    Ok(sources)
}

fn check(policy_dir: &Path, resulting: BTreeMap<String, (PathBuf, String)>) -> Result<()> {
    let sources: Vec<(PathBuf, String)> = resulting.into_values().collect();
    if let Err(errors) = policy::parse_sources(&sources) {
        bail!(
            "{errors}\nnothing was changed in {}: the policy would not be valid",
            policy_dir.display()
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_exited_unreaped_child_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as libc::pid_t;
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_alive(pid) {
            assert!(Instant::now() < deadline, "the child stays alive");
            thread::sleep(Duration::from_millis(10));
        }
        assert!(
            Path::new(&format!("/proc/{pid}")).exists(),
            "a zombie until reaped"
        );
        child.wait().unwrap();
        assert!(!is_alive(pid));
        assert!(is_alive(std::process::id() as libc::pid_t));
    }

    const VALID: &str = "name = \"a\"\n[[rule]]\nid = \"x\"\npaths = [\"/opt/x\"]\n";

    #[test]
    fn install_checks_the_resulting_policy_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let policies = dir.path().join("policies");
        fs::create_dir(&policies).unwrap();
        fs::write(policies.join("a.toml"), VALID).unwrap();

        let duplicate = dir.path().join("b.toml");
        fs::write(&duplicate, VALID.replace("\"a\"", "\"b\"")).unwrap();
        let installing = |file: &Path| PolicyChange::install(&[file.to_owned()])?.apply(&policies);
        let removing = |names: &[&str]| {
            PolicyChange::Remove(names.iter().map(|&name| name.to_owned()).collect())
                .apply(&policies)
        };
        let error = installing(&duplicate).unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("duplicate rule id `x`"), "{message}");
        assert!(message.contains("b.toml"), "{message}");
        assert!(!policies.join("b.toml").exists());

        let other = dir.path().join("c.toml");
        fs::write(&other, VALID.replace("\"x\"", "\"y\"")).unwrap();
        assert_eq!(
            installing(&other).unwrap(),
            [format!("installed c.toml in {}", policies.display())]
        );
        assert_eq!(
            fs::read_to_string(policies.join("c.toml")).unwrap(),
            fs::read_to_string(&other).unwrap()
        );
        let hidden = fs::read_dir(&policies)
            .unwrap()
            .filter(|entry| {
                entry
                    .as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .starts_with('.')
            })
            .count();
        assert_eq!(hidden, 0, "no temporary file is left");

        let error = removing(&["a.toml", "c.toml"]).unwrap_err();
        assert!(format!("{error}").contains("nothing to enforce"));
        removing(&["c.toml"]).unwrap();
        assert!(!policies.join("c.toml").exists());
        assert!(removing(&["missing.toml"]).is_err());
        assert!(removing(&["../policies/a.toml"]).is_err());
    }

    #[test]
    fn a_change_asked_for_over_the_socket_is_checked_as_one_made_here() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(dir.path().join("a.toml"), VALID).unwrap();
        let file = |name: &str, contents: String| PolicyFile {
            name: name.to_owned(),
            origin: format!("/elsewhere/{name}"),
            contents,
        };
        let refused = |files: Vec<PolicyFile>| {
            format!(
                "{:#}",
                PolicyChange::Install(files).apply(dir.path()).unwrap_err()
            )
        };
        let other = VALID.replace("\"x\"", "\"y\"");
        for name in ["../escaped.toml", "sub/b.toml", ".hidden.toml", "b.txt"] {
            let error = refused(vec![file(name, other.clone())]);
            assert!(error.contains("are named *.toml"), "{name}: {error}");
        }
        let huge = format!("{other}#{}\n", "x".repeat(MAX_POLICY_FILE_BYTES));
        assert!(refused(vec![file("b.toml", huge)]).contains("larger than"));
        let error = refused(vec![file("b.toml", VALID.to_owned())]);
        assert!(
            error.contains("/elsewhere/b.toml") && error.contains("duplicate rule id"),
            "errors name the file as the client gave it: {error}"
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["a.toml"], "nothing was written");
    }
}
