//! The documented ways to stop blocker and to change its policy, which tamper protection lets
//! through because they run the blocker binary: `blocker stop` and `blocker policy`. Policy
//! changes are checked whole before anything is written, so a running daemon only ever sees a
//! valid directory.

use std::{
    collections::BTreeMap,
    fs,
    io::Write,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::ExitCode,
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

use crate::{identity::FileIdentity, policy};

/// How long `stop` waits for daemons to exit after SIGTERM.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// Sends SIGTERM to every running `blocker run` of this binary and waits for them to exit.
/// Exits 1 if none runs.
pub fn stop() -> Result<ExitCode> {
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

/// Copies `files` into `policy_dir` (replacing files of the same name) if the policy the
/// directory then holds is valid; otherwise writes nothing and says why.
pub fn install(files: &[PathBuf], policy_dir: &Path) -> Result<ExitCode> {
    let mut resulting = current_sources(policy_dir)?;
    let mut installing = Vec::new();
    for file in files {
        let name = file
            .file_name()
            .with_context(|| format!("{} names no file", file.display()))?
            .to_string_lossy()
            .into_owned();
        ensure!(
            name.ends_with(".toml") && !name.starts_with('.'),
            "{}: policy files are named *.toml (and not hidden), or blocker would not read it",
            file.display()
        );
        let source =
            fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        // Errors then name the file as the user gave it.
        resulting.insert(name.clone(), (file.clone(), source.clone()));
        installing.push((name, source));
    }
    check(policy_dir, resulting)?;
    for (name, source) in installing {
        write_atomically(&policy_dir.join(&name), &source)?;
        println!("installed {name} in {}", policy_dir.display());
    }
    println!("a running daemon reloads the policy within a second");
    Ok(ExitCode::SUCCESS)
}

/// Removes the policy files `names` from `policy_dir` if what remains is a valid policy.
pub fn remove(names: &[String], policy_dir: &Path) -> Result<ExitCode> {
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
    for name in names {
        let path = policy_dir.join(name);
        fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
        println!("removed {}", path.display());
    }
    println!("a running daemon reloads the policy within a second");
    Ok(ExitCode::SUCCESS)
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

/// Writes `path` through a hidden temporary file renamed over it, so a daemon reloading at any
/// moment reads the old file or the new one, never half of one.
fn write_atomically(path: &Path, contents: &str) -> Result<()> {
    let name = path.file_name().expect("a file path").to_string_lossy();
    let temporary = path.with_file_name(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut file = fs::File::create(&temporary)?;
        file.write_all(contents.as_bytes())?;
        file.set_permissions(fs::Permissions::from_mode(0o644))?;
        file.sync_all()?;
        fs::rename(&temporary, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    result.with_context(|| format!("writing {}", path.display()))
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
        let error = install(std::slice::from_ref(&duplicate), &policies).unwrap_err();
        let message = format!("{error:#}");
        assert!(message.contains("duplicate rule id `x`"), "{message}");
        assert!(message.contains("b.toml"), "{message}");
        assert!(!policies.join("b.toml").exists());

        let other = dir.path().join("c.toml");
        fs::write(&other, VALID.replace("\"x\"", "\"y\"")).unwrap();
        install(std::slice::from_ref(&other), &policies).unwrap();
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

        let error = remove(&["a.toml".to_owned(), "c.toml".to_owned()], &policies).unwrap_err();
        assert!(format!("{error}").contains("nothing to enforce"));
        remove(&["c.toml".to_owned()], &policies).unwrap();
        assert!(!policies.join("c.toml").exists());
        assert!(remove(&["missing.toml".to_owned()], &policies).is_err());
    }
}
