//! Trusted-path execution (`untrusted_paths`), lockdown (`default`) and `allow` rules on Debian's
//! kernel (run inside the VM by `cargo xtask test`): a modified copy of a banned program where a
//! user can write cannot run, whatever its bytes; programs on root's paths, allowed files and
//! the safety net run; a ban beats an allow; an allowed file rewritten in place loses its
//! allowance; in lockdown only allowed files, what installed packages installed (as dpkg's
//! database says while packages come and go) and the safety net run; `blocker learn` turns an
//! audited workload into allow rules under which it runs with both modes denying.

use std::{
    io::Write,
    os::unix::{
        fs::{chown, PermissionsExt},
        process::CommandExt,
    },
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context, Result};
use blocker_integration_tests::{
    blocker_bin, harmless_binary, run_as_launcher, Daemon, Sandbox, EVENT_TIMEOUT, STARTUP_TIMEOUT,
};
use serde_json::Value;

/// A user's home directory: the user owns it and what they put there.
const HOME: &str = "/home/lockdown-user";
/// Root's directory, with a tree a user owns below it (as under `/opt`).
const TRUSTED: &str = "/opt/lockdown-trusted";
const USER: u32 = 1000;
/// The dynamic loader, which maps the program it is asked to run.
const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";

/// Makes `path` a directory `owner` owns, writable by no one else.
fn directory(path: &str, owner: u32) -> Result<PathBuf> {
    std::fs::create_dir_all(path).with_context(|| format!("creating {path}"))?;
    chown(path, Some(owner), Some(owner))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(PathBuf::from(path))
}

/// The directories the tests use, and those above them, as a distribution has them: the VM's
/// root is the kernel's initramfs filesystem, whose root directory may be world-writable.
fn machine_directories() -> Result<()> {
    for path in ["/", "/home", "/opt", TRUSTED] {
        directory(path, 0)?;
    }
    directory(HOME, USER)?;
    directory(&format!("{TRUSTED}/user-tree"), USER)?;
    Ok(())
}

/// A copy of the harmless program with one byte appended, as a user gets past a content rule:
/// another file, which runs all the same.
fn modified_copy(path: &Path, owner: u32) -> Result<PathBuf> {
    std::fs::copy(harmless_binary(), path).with_context(|| format!("copying to {path:?}"))?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(path)?
        .write_all(b"\0")?;
    chown(path, Some(owner), Some(owner))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))?;
    Ok(path.to_owned())
}

/// A [`modified_copy`] with bytes of its own (its name appended): a program no other file has
/// the content of, as one built in place is.
fn own_program(path: &Path, owner: u32) -> Result<PathBuf> {
    let path = modified_copy(path, owner)?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(&path)?
        .write_all(path.as_os_str().as_encoded_bytes())?;
    Ok(path)
}

/// The programs of one scenario.
struct Programs {
    /// Banned by path (rule `ban`), in root's directory.
    banned: PathBuf,
    /// Modified copies of `banned`: the user's in the home directory, root's in /tmp and in a
    /// user-owned tree, root's in root's directory.
    home_copy: PathBuf,
    tmp_copy: PathBuf,
    tree_copy: PathBuf,
    trusted_copy: PathBuf,
    /// The user's, named by an allow rule.
    allowed: PathBuf,
    /// Named by an allow rule and by a ban.
    allowed_and_banned: PathBuf,
}

impl Programs {
    fn new(sandbox: &Sandbox) -> Result<Self> {
        machine_directories()?;
        let banned = modified_copy(&Path::new(TRUSTED).join("banned"), 0)?;
        Ok(Self {
            home_copy: modified_copy(&Path::new(HOME).join("banned-copy"), USER)?,
            tmp_copy: modified_copy(&sandbox.path("banned-copy"), 0)?,
            tree_copy: modified_copy(&Path::new(TRUSTED).join("user-tree/banned-copy"), 0)?,
            trusted_copy: modified_copy(&Path::new(TRUSTED).join("trusted-copy"), 0)?,
            allowed: modified_copy(&Path::new(HOME).join("allowed-tool"), USER)?,
            allowed_and_banned: modified_copy(&Path::new(HOME).join("allowed-and-banned"), USER)?,
            banned,
        })
    }

    /// A policy with `header`'s settings, banning `banned` and `allowed_and_banned`, allowing
    /// `allowed` and `allowed_and_banned`.
    fn policy(&self, header: &str) -> String {
        format!(
            "name = \"test\"\n{header}\n\n\
             [[rule]]\nid = \"ban\"\npaths = [{:?}]\n\n\
             [[rule]]\nid = \"ban-allowed\"\npaths = [{:?}]\n\n\
             [[rule]]\nid = \"tools\"\naction = \"allow\"\npaths = [{:?}, {:?}]\n",
            self.banned.display().to_string(),
            self.allowed_and_banned.display().to_string(),
            self.allowed.display().to_string(),
            self.allowed_and_banned.display().to_string(),
        )
    }
}

fn start(sandbox: &Sandbox, programs: &Programs, header: &str, backend: &str) -> Result<Daemon> {
    sandbox.write_policy("test.toml", &programs.policy(header))?;
    let (daemon, started) = Daemon::start(&sandbox.policy_dir(), &["--backend", backend])?;
    ensure!(started["backend"] == backend, "{started}");
    Ok(daemon)
}

fn refused(path: &Path) -> Result<()> {
    let error = run_as_launcher(path).expect_err(&format!("{path:?} must be refused"));
    ensure!(
        error.raw_os_error() == Some(libc::EPERM),
        "{path:?}: expected EPERM, got {error}"
    );
    Ok(())
}

fn runs(path: &Path) -> Result<()> {
    let (_, status) = run_as_launcher(path).with_context(|| format!("running {path:?}"))?;
    ensure!(status.success(), "{path:?}: {status}");
    Ok(())
}

/// The record of `path`'s exec under the trusted-path setting, checked for what made its path
/// untrusted.
fn untrusted_record(
    daemon: &mut Daemon,
    path: &Path,
    enforcement: &str,
    offender: Value,
) -> Result<Value> {
    let record = daemon.wait_for_exec(path)?;
    ensure!(record["rule"] == "untrusted_path", "{record}");
    ensure!(record["enforcement"] == enforcement, "{record}");
    ensure!(record["untrusted_path"] == offender, "{record}");
    Ok(record)
}

/// `blocker explain FILE` with the sandbox's policies: its exit code and output.
fn explain(file: &Path, sandbox: &Sandbox) -> Result<(Option<i32>, String)> {
    let explained = Command::new(blocker_bin())
        .arg("explain")
        .arg(file)
        .arg("--policy-dir")
        .arg(sandbox.policy_dir())
        .output()?;
    Ok((
        explained.status.code(),
        String::from_utf8_lossy(&explained.stdout).into_owned(),
    ))
}

fn offender(levels_above: u32, owner: u32, mode: &str) -> Value {
    serde_json::json!({ "levels_above": levels_above, "owner": owner, "mode": mode })
}

#[test]
fn deny_refuses_modified_copies_where_users_write_and_lets_the_rest_run() -> Result<()> {
    let sandbox = Sandbox::new("untrusted-deny")?;
    let programs = Programs::new(&sandbox)?;
    let mut daemon = start(&sandbox, &programs, "untrusted_paths = \"deny\"", "lsm")?;

    refused(&programs.banned)?;
    ensure!(daemon.wait_for_exec(&programs.banned)?["rule"] == "ban");

    refused(&programs.home_copy)?;
    untrusted_record(
        &mut daemon,
        &programs.home_copy,
        "eperm",
        offender(0, USER, "0755"),
    )?;
    // The file is root's; its directory, /tmp's root, is anyone's (sticky).
    refused(&programs.tmp_copy)?;
    untrusted_record(
        &mut daemon,
        &programs.tmp_copy,
        "eperm",
        offender(2, 0, "1777"),
    )?;
    refused(&programs.tree_copy)?;
    untrusted_record(
        &mut daemon,
        &programs.tree_copy,
        "eperm",
        offender(1, USER, "0755"),
    )?;

    // Mapped by the loader rather than exec'd: refused at the executable mapping.
    let loaded = Command::new(LOADER).arg(&programs.home_copy).status()?;
    ensure!(!loaded.success(), "ld.so ran the home copy: {loaded}");
    let mapping = daemon.wait_for_record(EVENT_TIMEOUT, |record| {
        record["kind"] == "exec" && record["operation"] == "mmap"
    })?;
    ensure!(mapping["rule"] == "untrusted_path", "{mapping}");
    ensure!(mapping["enforcement"] == "eperm", "{mapping}");
    // The content check of mappings has the kernel say which file was mapped.
    ensure!(
        mapping["path"] == programs.home_copy.display().to_string().as_str(),
        "{mapping}"
    );

    runs(&programs.trusted_copy)?;
    runs(&programs.allowed)?;
    refused(&programs.allowed_and_banned)?;
    ensure!(
        daemon.wait_for_exec(&programs.allowed_and_banned)?["rule"] == "ban-allowed",
        "a ban beats an allow"
    );
    // Rewritten in place, an allowed file is another program: untrusted until a reload allows
    // what the policy names again.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&programs.allowed)?
        .write_all(b"\0")?;
    refused(&programs.allowed)?;
    untrusted_record(
        &mut daemon,
        &programs.allowed,
        "eperm",
        offender(0, USER, "0755"),
    )?;
    daemon.signal(libc::SIGHUP);
    daemon.wait_for_log("policy reloaded", EVENT_TIMEOUT)?;
    runs(&programs.allowed)?;

    // The safety net, and a packaged program on root's path.
    ensure!(Command::new("/bin/sh")
        .args(["-c", "true"])
        .status()?
        .success());
    ensure!(Command::new("/usr/bin/dpkg-query")
        .arg("--version")
        .output()?
        .status
        .success());

    let (code, stdout) = explain(&programs.home_copy, &sandbox)?;
    ensure!(code == Some(0), "explain: {stdout}");
    ensure!(
        stdout.contains("refused as an untrusted path")
            && stdout.contains("is not owned by root (owner uid 1000, mode 0755)"),
        "{stdout}"
    );
    let (code, stdout) = explain(&programs.allowed, &sandbox)?;
    ensure!(
        code == Some(1) && stdout.contains("allowed by rule tools"),
        "{stdout}"
    );

    let (status, _, _) = daemon.stop()?;
    ensure!(status.success());
    runs(&programs.home_copy)?;
    Ok(())
}

#[test]
fn audit_reports_untrusted_paths_and_lets_them_run() -> Result<()> {
    let sandbox = Sandbox::new("untrusted-audit")?;
    let programs = Programs::new(&sandbox)?;
    let mut daemon = start(&sandbox, &programs, "untrusted_paths = \"audit\"", "lsm")?;
    runs(&programs.home_copy)?;
    let record = untrusted_record(
        &mut daemon,
        &programs.home_copy,
        "none",
        offender(0, USER, "0755"),
    )?;
    ensure!(record["action"] == "audit", "{record}");
    runs(&programs.allowed)?;
    refused(&programs.banned)?;
    let (status, records, _) = daemon.stop()?;
    ensure!(status.success());
    ensure!(
        !records
            .iter()
            .any(|record| record["path"] == programs.allowed.display().to_string().as_str()),
        "an allowed file is not reported: {records:?}"
    );
    Ok(())
}

#[test]
fn the_kill_backend_kills_programs_on_untrusted_paths() -> Result<()> {
    let sandbox = Sandbox::new("untrusted-kill")?;
    let programs = Programs::new(&sandbox)?;
    let mut daemon = start(&sandbox, &programs, "untrusted_paths = \"deny\"", "kill")?;
    let (_, status) = run_as_launcher(&programs.home_copy)?;
    ensure!(
        std::os::unix::process::ExitStatusExt::signal(&status) == Some(libc::SIGKILL),
        "{status}"
    );
    untrusted_record(
        &mut daemon,
        &programs.home_copy,
        "sigkill",
        offender(0, USER, "0755"),
    )?;
    runs(&programs.trusted_copy)?;
    runs(&programs.allowed)?;
    let (status, _, _) = daemon.stop()?;
    ensure!(status.success());
    Ok(())
}

#[test]
fn lockdown_lets_only_allowed_files_and_the_safety_net_run() -> Result<()> {
    let sandbox = Sandbox::new("lockdown-deny")?;
    let programs = Programs::new(&sandbox)?;
    let mut daemon = start(&sandbox, &programs, "default = \"deny\"", "lsm")?;
    // On root's path, named by no allow rule.
    refused(&programs.trusted_copy)?;
    let record = daemon.wait_for_exec(&programs.trusted_copy)?;
    ensure!(record["rule"] == "lockdown", "{record}");
    ensure!(record.get("untrusted_path").is_none(), "{record}");
    refused(&programs.home_copy)?;
    ensure!(daemon.wait_for_exec(&programs.home_copy)?["rule"] == "lockdown");
    let loaded = Command::new(LOADER).arg(&programs.trusted_copy).status()?;
    ensure!(
        !loaded.success(),
        "ld.so ran a file lockdown refuses: {loaded}"
    );
    runs(&programs.allowed)?;
    refused(&programs.allowed_and_banned)?;
    ensure!(daemon.wait_for_exec(&programs.allowed_and_banned)?["rule"] == "ban-allowed");
    ensure!(Command::new("/bin/sh")
        .args(["-c", "true"])
        .status()?
        .success());
    let (code, stdout) = explain(&programs.trusted_copy, &sandbox)?;
    ensure!(
        code == Some(0) && stdout.contains("refused by lockdown: default = \"deny\""),
        "{stdout}"
    );
    let (status, _, _) = daemon.stop()?;
    ensure!(status.success());
    runs(&programs.trusted_copy)?;

    // Audit first: everything runs, and what lockdown would refuse is recorded.
    let mut daemon = start(&sandbox, &programs, "default = \"audit\"", "lsm")?;
    runs(&programs.trusted_copy)?;
    let record = daemon.wait_for_exec(&programs.trusted_copy)?;
    ensure!(
        record["rule"] == "lockdown" && record["action"] == "audit",
        "{record}"
    );
    let (status, _, _) = daemon.stop()?;
    ensure!(status.success());
    Ok(())
}

/// dpkg's database, which the VM lacks until a test makes one (its programs are copied from the
/// host, not installed).
const DPKG_ADMIN_DIR: &str = "/var/lib/dpkg";
/// What dpkg runs to unpack a package, and the libraries they load: copied into the VM from the
/// host without a package record, so the test records them as a package of their own, as a
/// real system's packages vouch for them.
const DPKG_HELPERS: [&str; 4] = [
    "/usr/bin/dpkg-deb",
    "/usr/bin/dpkg-split",
    "/usr/bin/tar",
    "/usr/sbin/ldconfig",
];
const LIBRARIES: &str = "/lib/x86_64-linux-gnu";
const VM_TOOLS: &str = "blocker-vm-tools";

/// A dpkg database that records [`DPKG_HELPERS`] and [`LIBRARIES`] as package [`VM_TOOLS`].
fn dpkg_database() -> Result<()> {
    let admin = Path::new(DPKG_ADMIN_DIR);
    for dir in ["info", "updates"] {
        std::fs::create_dir_all(admin.join(dir))?;
    }
    let mut listed: Vec<String> = DPKG_HELPERS.iter().map(|path| path.to_string()).collect();
    for entry in std::fs::read_dir(LIBRARIES)? {
        let entry = entry?;
        if entry.file_type()?.is_file() {
            listed.push(entry.path().display().to_string());
        }
    }
    std::fs::write(
        admin.join(format!("info/{VM_TOOLS}.list")),
        listed.join("\n") + "\n",
    )?;
    let status_path = admin.join("status");
    let status = std::fs::read_to_string(&status_path).unwrap_or_default();
    // Left by a test that failed before forgetting it.
    if status.contains(&format!("Package: {VM_TOOLS}\n")) {
        return Ok(());
    }
    let separator = if status.is_empty() || status.ends_with("\n\n") {
        ""
    } else {
        "\n"
    };
    std::fs::write(
        &status_path,
        format!(
            "{status}{separator}Package: {VM_TOOLS}\nStatus: install ok installed\n\
             Maintainer: blocker tests <tests@example.invalid>\nArchitecture: all\n\
             Version: 1.0\nDescription: the VM's dpkg helpers and libraries\n\n"
        ),
    )?;
    Ok(())
}

/// Forgets [`VM_TOOLS`] without removing its files: dpkg removes what the list names.
fn forget_vm_tools() -> Result<()> {
    std::fs::write(
        Path::new(DPKG_ADMIN_DIR).join(format!("info/{VM_TOOLS}.list")),
        "",
    )?;
    dpkg(&["--purge", VM_TOOLS], None)
}

/// Builds version `version` of package `name` with the programs `/usr/bin/<program>`, each the
/// harmless program with the version appended (so each version is another file), and an
/// `md5sums` as Debian's packaging tools write one; its files are root's.
fn build_package(
    sandbox: &Sandbox,
    name: &str,
    version: &str,
    programs: &[&str],
) -> Result<PathBuf> {
    build_package_of(sandbox, name, version, programs, 0)
}

/// [`build_package`] with files that `owner` owns, which a dpkg running as `owner` can install.
fn build_package_of(
    sandbox: &Sandbox,
    name: &str,
    version: &str,
    programs: &[&str],
    owner: u32,
) -> Result<PathBuf> {
    let tree = sandbox.path(&format!("{name}-{version}"));
    std::fs::create_dir_all(tree.join("DEBIAN"))?;
    std::fs::create_dir_all(tree.join("usr/bin"))?;
    let mut listed = Vec::new();
    for program in programs {
        let relative = format!("usr/bin/{program}");
        std::fs::copy(harmless_binary(), tree.join(&relative))?;
        std::fs::OpenOptions::new()
            .append(true)
            .open(tree.join(&relative))?
            .write_all(version.as_bytes())?;
        std::fs::set_permissions(tree.join(&relative), std::fs::Permissions::from_mode(0o755))?;
        listed.push(relative);
    }
    let md5sums = Command::new("/bin/busybox")
        .arg("md5sum")
        .args(&listed)
        .current_dir(&tree)
        .output()?;
    ensure!(md5sums.status.success(), "md5sum: {md5sums:?}");
    std::fs::write(tree.join("DEBIAN/md5sums"), &md5sums.stdout)?;
    std::fs::write(
        tree.join("DEBIAN/control"),
        format!(
            "Package: {name}\nVersion: {version}\nArchitecture: all\n\
             Maintainer: blocker tests <tests@example.invalid>\n\
             Description: a program for the lockdown tests\n"
        ),
    )?;
    let deb = sandbox.path(&format!("{name}_{version}.deb"));
    let mut build = Command::new("dpkg-deb");
    build.arg("--build");
    if owner == 0 {
        build.arg("--root-owner-group");
    } else {
        chown_tree(&tree, owner)?;
    }
    let built = build.arg(&tree).arg(&deb).output()?;
    ensure!(built.status.success(), "dpkg-deb --build: {built:?}");
    Ok(deb)
}

fn dpkg(args: &[&str], deb: Option<&Path>) -> Result<()> {
    let mut command = Command::new("dpkg");
    command
        .args(["--force-depends", "--log=/dev/null"])
        .args(args);
    command.args(deb);
    let output = command.output()?;
    ensure!(output.status.success(), "{command:?}: {output:?}");
    Ok(())
}

/// Gives `owner` everything under `root`, as if they had made it.
fn chown_tree(root: &Path, owner: u32) -> Result<()> {
    chown(root, Some(owner), Some(owner))?;
    if root.is_dir() {
        for entry in std::fs::read_dir(root)? {
            chown_tree(&entry?.path(), owner)?;
        }
    }
    Ok(())
}

/// Waits for the daemon's refresh after dpkg changed its database, which must agree with what
/// the kernel decided when dpkg moved the files.
fn refreshed(daemon: &mut Daemon) -> Result<()> {
    daemon.wait_for_log("allowed files updated", EVENT_TIMEOUT)?;
    Ok(())
}

#[test]
fn lockdown_trusts_what_installed_packages_installed() -> Result<()> {
    let sandbox = Sandbox::new("lockdown-packages")?;
    machine_directories()?;
    dpkg_database()?;
    let base = build_package(
        &sandbox,
        "blocker-trust-base",
        "1.0",
        &["trust-tool", "trust-edited"],
    )?;
    dpkg(&["--install"], Some(&base))?;
    let (tool, edited) = (
        Path::new("/usr/bin/trust-tool"),
        Path::new("/usr/bin/trust-edited"),
    );
    sandbox.write_policy("test.toml", "name = \"test\"\ndefault = \"deny\"\n")?;
    let (mut daemon, started) = Daemon::start(&sandbox.policy_dir(), &["--backend", "lsm"])?;
    ensure!(started["backend"] == "lsm", "{started}");

    runs(tool)?;
    let (code, stdout) = explain(tool, &sandbox)?;
    ensure!(
        code == Some(1) && stdout.contains("trusted: an installed package put it there"),
        "{stdout}"
    );
    // Copies are other files, which no package installed.
    let tmp_copy = sandbox.path("trust-tool");
    std::fs::copy(tool, &tmp_copy)?;
    refused(&tmp_copy)?;
    ensure!(daemon.wait_for_exec(&tmp_copy)?["rule"] == "lockdown");
    let home_copy = Path::new(HOME).join("trust-tool");
    std::fs::copy(tool, &home_copy)?;
    refused(&home_copy)?;

    // Rewritten in place: no longer what the package installed, now nor after a refresh.
    runs(edited)?;
    std::fs::OpenOptions::new()
        .append(true)
        .open(edited)?
        .write_all(b"\0")?;
    refused(edited)?;

    // Installed while the daemon runs: trusted the moment dpkg renames it into place (the
    // kernel follows dpkg), and still after the daemon's refresh from dpkg's database.
    let added = Path::new("/usr/bin/trust-added");
    let first = build_package(&sandbox, "blocker-trust-added", "1.0", &["trust-added"])?;
    dpkg(&["--install"], Some(&first))?;
    runs(added)?;
    refused(edited)?;
    refreshed(&mut daemon)?;
    runs(added)?;
    // Upgraded: the new version runs at once; the old one, kept by a hard link, lost its trust
    // when the new one was renamed over it.
    let old_version = Path::new(TRUSTED).join("trust-added-1.0");
    std::fs::hard_link(added, &old_version)?;
    let second = build_package(&sandbox, "blocker-trust-added", "2.0", &["trust-added"])?;
    dpkg(&["--install"], Some(&second))?;
    runs(added)?;
    refused(&old_version)?;
    refreshed(&mut daemon)?;
    runs(added)?;
    refused(&old_version)?;
    // Removed: a copy kept of it lost its trust when dpkg unlinked it.
    let removed_version = Path::new(TRUSTED).join("trust-added-2.0");
    std::fs::hard_link(added, &removed_version)?;
    dpkg(&["--remove", "blocker-trust-added"], None)?;
    refused(&removed_version)?;

    // dpkg runs for any user (`--force-not-root`, into a database and tree of their own); what
    // it renames into place for them is not trusted.
    let user_root = directory(&format!("{HOME}/dpkg-root"), USER)?;
    for dir in ["db/info", "db/updates", "tree"] {
        std::fs::create_dir_all(user_root.join(dir))?;
    }
    std::fs::write(user_root.join("db/status"), "")?;
    let users_deb = build_package_of(
        &sandbox,
        "blocker-trust-users",
        "1.0",
        &["trust-users"],
        USER,
    )?;
    chown_tree(&user_root, USER)?;
    chown(&users_deb, Some(USER), Some(USER))?;
    let output = Command::new("dpkg")
        .uid(USER)
        .gid(USER)
        .args(["--force-not-root", "--force-bad-path", "--log=/dev/null"])
        .arg(format!("--admindir={}", user_root.join("db").display()))
        .arg(format!("--instdir={}", user_root.join("tree").display()))
        .arg("--install")
        .arg(&users_deb)
        .output()?;
    ensure!(output.status.success(), "dpkg as uid {USER}: {output:?}");
    let users_program = user_root.join("tree/usr/bin/trust-users");
    refused(&users_program)?;
    ensure!(daemon.wait_for_exec(&users_program)?["rule"] == "lockdown");

    let (status, _, _) = daemon.stop()?;
    ensure!(status.success());
    dpkg(&["--purge", "blocker-trust-base"], None)?;
    forget_vm_tools()?;
    for kept in [old_version, removed_version, home_copy] {
        std::fs::remove_file(kept)?;
    }
    std::fs::remove_dir_all(user_root)?;
    Ok(())
}

/// `blocker learn` over the events file: its exit code, stdout and stderr.
fn learn(events_file: &Path, since: &str) -> Result<(Option<i32>, String, String)> {
    let learned = Command::new(blocker_bin())
        .args(["learn", "--since", since, "--file"])
        .arg(events_file)
        .output()?;
    Ok((
        learned.status.code(),
        String::from_utf8_lossy(&learned.stdout).into_owned(),
        String::from_utf8_lossy(&learned.stderr).into_owned(),
    ))
}

#[test]
fn learn_turns_an_audited_workload_into_a_policy_that_lets_it_run() -> Result<()> {
    let sandbox = Sandbox::new("lockdown-learn")?;
    machine_directories()?;
    dpkg_database()?;
    let deb = build_package(&sandbox, "blocker-learn-tool", "1.0", &["learn-packaged"])?;
    dpkg(&["--install"], Some(&deb))?;
    // Changed since dpkg installed it, so no longer trusted as the package's: learned by package.
    let packaged = Path::new("/usr/bin/learn-packaged");
    std::fs::OpenOptions::new()
        .append(true)
        .open(packaged)?
        .write_all(b"\0")?;
    // Root's, in root's directory: learned by path.
    let roots_tool = own_program(&Path::new(TRUSTED).join("learn-root-tool"), 0)?;
    // Made in place in a home directory, under a name meant to break the policy learn writes:
    // learned by content.
    let home_tool = own_program(
        &Path::new(HOME).join("learn tool \"x\"\n[[rule]]\nid = \"evil\""),
        USER,
    )?;
    let workload = [packaged, roots_tool.as_path(), home_tool.as_path()];
    // Mapped, never exec'd: as a library a trusted program loads (here the loader itself, asked
    // to run it), known to learn by the path the kernel gives for the mapping.
    let home_library = own_program(&Path::new(HOME).join("learn-library"), USER)?;
    let load_library = || -> Result<()> {
        let loaded = Command::new(LOADER).arg(&home_library).status()?;
        ensure!(loaded.success(), "ld.so {home_library:?}: {loaded}");
        Ok(())
    };

    sandbox.write_policy(
        "test.toml",
        "name = \"test\"\ndefault = \"audit\"\nuntrusted_paths = \"audit\"\n",
    )?;
    let (mut daemon, started) = Daemon::start(&sandbox.policy_dir(), &["--backend", "lsm"])?;
    ensure!(started["backend"] == "lsm", "{started}");
    for program in workload {
        runs(program)?;
        let record = daemon.wait_for_exec(program)?;
        ensure!(record["action"] == "audit", "{record}");
    }
    load_library()?;
    let mapping = daemon.wait_for_exec(&home_library)?;
    ensure!(mapping["operation"] == "mmap", "{mapping}");
    let events_file = daemon.events_file().to_owned();
    let (status, _, _) = daemon.stop()?;
    ensure!(status.success());

    let (code, learned, stderr) = learn(&events_file, "1h")?;
    ensure!(code == Some(0), "blocker learn: {code:?}: {stderr}");
    ensure!(
        learned.contains("packages = [\"blocker-learn-tool\"]"),
        "{learned}"
    );
    ensure!(
        learned.contains(&format!("{:?},", roots_tool.display().to_string())),
        "{learned}"
    );
    let home_hash = blocker_integration_tests::sha256_of(&home_tool)?;
    ensure!(learned.contains(&format!("\"{home_hash}\",")), "{learned}");
    ensure!(!learned.contains("\nid = \"evil\""), "{learned}");
    let library_hash = blocker_integration_tests::sha256_of(&home_library)?;
    ensure!(
        learned.contains(&format!("\"{library_hash}\",")),
        "{learned}"
    );
    ensure!(
        !learned.contains(&blocker_integration_tests::sha256_of(packaged)?),
        "a packaged file was learned by its hash:\n{learned}"
    );
    let (code, _, stderr) = learn(&events_file, "2099-01-01")?;
    ensure!(
        code == Some(1) && stderr.contains("nothing to learn"),
        "{code:?}: {stderr}"
    );

    // The learned policy installed and both modes enforcing: the workload runs, with no
    // refusal; a program it did not run is still refused.
    sandbox.write_policy("learned.toml", &learned)?;
    sandbox.write_policy(
        "test.toml",
        "name = \"test\"\ndefault = \"deny\"\nuntrusted_paths = \"deny\"\n",
    )?;
    let (mut daemon, _) = Daemon::start(&sandbox.policy_dir(), &["--backend", "lsm"])?;
    // Contents are allowed in the files the content scan finds.
    daemon.wait_for_log("the background scan is done", STARTUP_TIMEOUT)?;
    for program in workload {
        runs(program)?;
    }
    load_library()?;
    let unlearned = own_program(&Path::new(HOME).join("learn-unlearned"), USER)?;
    refused(&unlearned)?;
    daemon.wait_for_exec(&unlearned)?;
    let (status, records, _) = daemon.stop()?;
    ensure!(status.success());
    let unlearned_path = unlearned.display().to_string();
    let refusals: Vec<&Value> = records
        .iter()
        .filter(|record| record["kind"] == "exec" && record["path"] != unlearned_path.as_str())
        .collect();
    ensure!(refusals.is_empty(), "{refusals:#?}");

    dpkg(&["--purge", "blocker-learn-tool"], None)?;
    forget_vm_tools()?;
    for made in [roots_tool, home_tool, home_library, unlearned] {
        std::fs::remove_file(made)?;
    }
    Ok(())
}
