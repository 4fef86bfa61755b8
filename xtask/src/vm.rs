//! The VM tests: an initramfs holding the VM test binary, blocker and the libraries they need,
//! booted with Debian's kernels (which, unlike the host's, can load BPF LSM programs) in QEMU; the
//! console says how the tests went, and `target/vm/results/<suite>.json` keeps it per kernel.

use std::{
    collections::BTreeMap,
    fs::{self, File},
    io::{BufWriter, ErrorKind},
    os::unix::fs::{FileTypeExt, MetadataExt},
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::{
    cargo::{parse_test_result, TestCounts},
    cpio::{Attributes, CpioWriter},
    kernels::Kernel,
    modules,
    package::Built,
    process::{self, Ended},
    test_groups::{self, TestGroup},
};

pub const VM_DIR: &str = "target/vm";
/// Under VM_DIR: one results file per kernel.
const RESULTS_DIR: &str = "results";
/// TCG emulates slowly; a whole suite has taken seconds, so this only catches hangs.
pub const TIMEOUT: Duration = Duration::from_secs(900);
/// The busybox VM: a small initramfs and a shell script as /init.
const BUSYBOX_MACHINE: Machine = Machine {
    memory_mib: 1024,
    extra_command_line: "quiet",
};
/// Starts every line the guest prints about the test run.
pub const MARKER: &str = "BLOCKER-VM:";
const BUSYBOX: &str = "/bin/busybox";
/// Not /usr/bin/blocker, where only installing the package puts one.
pub const GUEST_BLOCKER: &str = "/usr/local/bin/blocker";
/// The blocker package, for the tests to install.
const GUEST_PACKAGE: &str = "/packages/blocker.deb";
const GUEST_TEST_BINARY: &str = "/tests/vm";

/// Host files the VM tests use, put at the same path in the VM along with the shared libraries
/// they need. A file a new test needs goes here.
const EXTRA_FILES: &[&str] = &[
    // Tests copy it to get a harmless binary to ban.
    "/usr/bin/true",
    // Debian's dpkg, which installs the blocker package as on a real system (maintainer scripts
    // with their arguments, conffiles), and what it runs: busybox's tar lacks options it uses.
    "/usr/bin/dpkg",
    "/usr/bin/dpkg-deb",
    "/usr/bin/dpkg-split",
    "/usr/bin/dpkg-query",
    "/usr/bin/tar",
    "/usr/sbin/ldconfig",
    // vm_filesystems formats the filesystem images it mounts with the host's tools.
    "/usr/sbin/mkfs.ext4",
    "/usr/sbin/mkfs.btrfs",
    "/usr/sbin/mkfs.xfs",
];

/// Packages the VM tests install: each directory here is built with `dpkg-deb` and put into the
/// VM as `/fixtures/<name>.deb`.
const FIXTURE_PACKAGES_DIR: &str = "tests/fixtures/debs";
const GUEST_FIXTURES_DIR: &str = "/fixtures";

/// Builds the initramfs that runs each of `groups` of the VM test binary `binary` with the
/// package's `blocker` at hand, the package to install and the modules of `kernels` (see
/// `modules.rs`); each of them boots the same one.
pub fn test_image(
    root: &Path,
    binary: &Path,
    groups: &[TestGroup],
    package: &Built,
    kernels: &[Kernel],
) -> Result<PathBuf> {
    let guest = Guest {
        init: init_script(groups),
        programs: vec![(GUEST_TEST_BINARY.to_owned(), binary.to_owned())],
        data: vec![(GUEST_PACKAGE.to_owned(), package.deb.clone())],
        kernels,
    };
    build_initramfs(root, &root.join(VM_DIR), &guest, &package.blocker)
}

/// Boots `kernel` with the `test_image`, adds the test counts printed on its console to
/// `counts`, writes them to `target/vm/results/<suite>.json` (see `results_json`) and fails
/// unless every test group ran and passed.
pub fn run_suite(
    root: &Path,
    kernel: &Kernel,
    initramfs: &Path,
    counts: &mut TestCounts,
) -> Result<()> {
    let vm_dir = root.join(VM_DIR);
    let suite_dir = vm_dir.join(kernel.suite.name());
    let results_dir = vm_dir.join(RESULTS_DIR);
    for dir in [&suite_dir, &results_dir] {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let results = results_dir.join(format!("{}.json", kernel.suite));
    // A file left from an earlier run must not pass for this one's if the VM cannot start.
    if results.exists() {
        fs::remove_file(&results).with_context(|| format!("removing {}", results.display()))?;
    }
    let console_log = suite_dir.join("console.log");
    let (console, ended) = boot(kernel, &BUSYBOX_MACHINE, initramfs, &console_log, TIMEOUT)?;
    let report = parse_console(&console);
    let suite_counts = report.counts();
    *counts += suite_counts;
    let results_text = serde_json::to_string_pretty(&results_json(kernel, &report))?;
    fs::write(&results, results_text + "\n")
        .with_context(|| format!("writing {}", results.display()))?;
    let release = report.release().unwrap_or("unknown release");
    println!(
        "xtask: VM tests on {} (Linux {release}): {} passed, {} failed; results in {}",
        kernel.suite,
        suite_counts.passed,
        suite_counts.failed,
        results.display()
    );
    verdict(&report, ended).with_context(|| {
        format!(
            "on Linux {release}; the VM's console is in {}",
            console_log.display()
        )
    })
}

/// Adds the test counts on `console` to `counts`, and fails unless the VM powered off by itself
/// after every test group it started ran and passed.
pub fn judge(
    console: &[String],
    ended: Ended,
    console_log: &Path,
    counts: &mut TestCounts,
) -> Result<()> {
    let report = parse_console(console);
    *counts += report.counts();
    verdict(&report, ended)
        .with_context(|| format!("the VM's console is in {}", console_log.display()))
}

fn verdict(report: &ConsoleReport, ended: Ended) -> Result<()> {
    match ended {
        Ended::TimedOut => Err(anyhow!(
            "the VM did not power off within {} s and was killed",
            TIMEOUT.as_secs()
        )),
        Ended::Exited(status) if !status.success() => Err(anyhow!("QEMU failed ({status})")),
        Ended::Exited(_) => report.verdict(),
    }
}

/// What a VM run needs besides busybox, blocker and the test fixtures: its `/init` script, host
/// files by guest path: programs (stripped of debug info, with their shared libraries) and data
/// files (as they are), and the kernels whose modules it loads.
pub struct Guest<'a> {
    pub init: String,
    pub programs: Vec<(String, PathBuf)>,
    pub data: Vec<(String, PathBuf)>,
    pub kernels: &'a [Kernel],
}

/// Boots a VM running `guest` with `blocker` at hand and returns its console lines, also
/// written to `target/vm/<console_name>`; fails if it did not power off by itself within
/// `timeout`.
pub fn run_guest(
    root: &Path,
    kernel: &Kernel,
    guest: &Guest,
    blocker: &Path,
    console_name: &str,
    timeout: Duration,
) -> Result<Vec<String>> {
    let vm_dir = root.join(VM_DIR);
    let initramfs = build_initramfs(root, &vm_dir, guest, blocker)?;
    let console_log = vm_dir.join(console_name);
    let (console, ended) = boot(kernel, &BUSYBOX_MACHINE, &initramfs, &console_log, timeout)?;
    match ended {
        Ended::TimedOut => bail!(
            "the VM did not power off within {} s and was killed; its console is in {}",
            timeout.as_secs(),
            console_log.display()
        ),
        Ended::Exited(status) if !status.success() => bail!(
            "QEMU failed ({status}); the VM's console is in {}",
            console_log.display()
        ),
        Ended::Exited(_) => Ok(console),
    }
}

/// The start of every /init: busybox's commands, the filesystems blocker needs mounted, and a
/// line saying which kernel runs with which LSMs.
pub fn guest_setup() -> String {
    format!(
        "/bin/busybox --install -s
export PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root
mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev
mount -t securityfs securityfs /sys/kernel/security
mount -t bpf bpf /sys/fs/bpf
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
echo \"{MARKER} kernel $(uname -r) lsm $(cat /sys/kernel/security/lsm)\"
"
    )
}

/// Runs each of `groups` as a process of its own, as separate test binaries did: a group's tests
/// share no process state with another's.
fn init_script(groups: &[TestGroup]) -> String {
    let mut runs = String::new();
    for group in groups {
        let name = group.name();
        let tests: Vec<&str> = group.tests.iter().map(String::as_str).collect();
        runs += &format!(
            "echo \"{MARKER} begin {name}\"\n{command}\necho \"{MARKER} end {name} exit=$?\"\n",
            command = test_groups::shell_command(GUEST_TEST_BINARY, &tests)
        );
    }
    format!(
        r#"#!/bin/busybox sh
# Written by xtask (vm.rs): runs each test group of {GUEST_TEST_BINARY}, then powers off.
{setup}{load_modules}export BLOCKER_BIN={GUEST_BLOCKER} RUST_BACKTRACE=1 RUST_LOG=info
cd /tmp
{runs}{probe}echo "{MARKER} done"
poweroff -f
"#,
        setup = guest_setup(),
        load_modules = modules::load_script(),
        probe = features_probe(),
    )
}

/// Runs `blocker run --protect` once the tests are done and prints its status document, which
/// says what it turned on with this kernel, on a `BLOCKER-VM: status` line (see
/// `parse_guest_status`): the README's kernel table is written from it.
fn features_probe() -> String {
    format!(
        r#"probe=/tmp/features-probe
mkdir -p $probe/policies
printf 'name = "probe"\n' > $probe/policies/probe.toml
{GUEST_BLOCKER} run --policy-dir $probe/policies --protect --no-stdout --scan-root $probe \
    --status-file $probe/status.json --events-file $probe/events.jsonl >$probe/log 2>&1 &
waited=0
while [ ! -s $probe/status.json ] && [ $waited -lt 600 ]; do sleep 0.1; waited=$((waited + 1)); done
echo "{MARKER} status $(tr -d '
' < $probe/status.json)"
{GUEST_BLOCKER} stop >/dev/null || cat $probe/log
"#
    )
}

fn build_initramfs(root: &Path, vm_dir: &Path, guest: &Guest, blocker: &Path) -> Result<PathBuf> {
    let stripped_dir = vm_dir.join("stripped");
    if stripped_dir.exists() {
        fs::remove_dir_all(&stripped_dir)
            .with_context(|| format!("removing {}", stripped_dir.display()))?;
    }
    fs::create_dir_all(&stripped_dir)
        .with_context(|| format!("creating {}", stripped_dir.display()))?;

    let mut image = Initramfs::default();
    for mount_point in ["/proc", "/sys", "/dev", "/tmp", "/run", "/root"] {
        image.add(mount_point, Entry::Directory);
    }
    // Where `busybox --install -s` puts its links.
    for bin in ["/bin", "/sbin", "/usr/bin", "/usr/sbin"] {
        image.add(bin, Entry::Directory);
    }
    // The kernel opens it for /init's standard streams before anything can mount devtmpfs.
    image.add("/dev/console", Entry::console());
    image.add("/init", Entry::Script(guest.init.clone()));

    let mut programs: Vec<PathBuf> = vec![BUSYBOX.into(), blocker.to_owned()];
    image.add(BUSYBOX, Entry::HostFile(BUSYBOX.into()));
    image.add(
        GUEST_BLOCKER,
        Entry::HostFile(without_debug_info(blocker, &stripped_dir)?),
    );
    for file in EXTRA_FILES {
        image.add(file, Entry::HostFile(file.into()));
        programs.push(file.into());
    }
    image.add(GUEST_FIXTURES_DIR, Entry::Directory);
    for package in fixture_packages(root, vm_dir)? {
        let name = package.file_name().expect("built packages have names");
        let guest = format!("{GUEST_FIXTURES_DIR}/{}", name.to_string_lossy());
        image.add(&guest, Entry::HostFile(package));
    }
    for (guest_path, program) in &guest.programs {
        image.add(
            guest_path,
            Entry::HostFile(without_debug_info(program, &stripped_dir)?),
        );
        programs.push(program.clone());
    }
    for (guest_path, file) in &guest.data {
        image.add(guest_path, Entry::HostFile(file.clone()));
    }
    modules::add_to_image(&mut image, guest.kernels, &vm_dir.join("modules"))?;
    for program in &programs {
        for library in shared_libraries(program)? {
            let guest = library
                .to_str()
                .with_context(|| format!("library path {} is not UTF-8", library.display()))?
                .to_owned();
            image.add(&guest, Entry::HostFile(library));
        }
    }

    let archive = vm_dir.join("initramfs.cpio");
    image.write(&archive)?;
    Ok(archive)
}

/// Builds every fixture package into `vm_dir/fixtures/<name>.deb`.
fn fixture_packages(root: &Path, vm_dir: &Path) -> Result<Vec<PathBuf>> {
    let sources = root.join(FIXTURE_PACKAGES_DIR);
    let built = vm_dir.join("fixtures");
    fs::create_dir_all(&built).with_context(|| format!("creating {}", built.display()))?;
    let mut packages = Vec::new();
    for entry in fs::read_dir(&sources).with_context(|| format!("reading {}", sources.display()))? {
        let source = entry?.path();
        let name = source
            .file_name()
            .with_context(|| format!("{} has no file name", source.display()))?;
        let package = built.join(format!("{}.deb", name.to_string_lossy()));
        let mut dpkg_deb = Command::new("dpkg-deb");
        dpkg_deb
            .args(["--root-owner-group", "--build"])
            .arg(&source)
            .arg(&package)
            .stdout(std::process::Stdio::null());
        process::run(&mut dpkg_deb)?;
        packages.push(package);
    }
    packages.sort();
    Ok(packages)
}

/// A copy of `executable` in `dir` without debug info, which is most of a debug build and would
/// only slow down loading the initramfs; the executable itself where `strip` is not installed.
pub fn without_debug_info(executable: &Path, dir: &Path) -> Result<PathBuf> {
    let name = executable
        .file_name()
        .with_context(|| format!("{} has no file name", executable.display()))?;
    let copy = dir.join(name);
    let mut strip = Command::new("strip");
    strip
        .arg("--strip-debug")
        .arg("-o")
        .arg(&copy)
        .arg(executable);
    match strip.status() {
        Ok(status) if status.success() => Ok(copy),
        Ok(status) => bail!("`{}` failed ({status})", process::describe(&strip)),
        Err(error) if error.kind() == ErrorKind::NotFound => Ok(executable.to_owned()),
        Err(error) => {
            Err(error).with_context(|| format!("cannot run `{}`", process::describe(&strip)))
        }
    }
}

fn shared_libraries(program: &Path) -> Result<Vec<PathBuf>> {
    let mut ldd = Command::new("ldd");
    ldd.arg(program);
    let output = ldd
        .output()
        .with_context(|| format!("cannot run `{}`", process::describe(&ldd)))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    if !output.status.success() {
        if stderr.contains("not a dynamic executable") {
            return Ok(Vec::new());
        }
        bail!(
            "`{}` failed ({}): {}",
            process::describe(&ldd),
            output.status,
            stderr.trim()
        );
    }
    parse_ldd(&stdout).with_context(|| format!("`{}`", process::describe(&ldd)))
}

/// Reads `ldd` output: `libc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x...)` and
/// `/lib64/ld-linux-x86-64.so.2 (0x...)` name files; `linux-vdso.so.1 (0x...)` lives in the kernel.
fn parse_ldd(output: &str) -> Result<Vec<PathBuf>> {
    let mut libraries = Vec::new();
    for line in output.lines() {
        let location = match line.split_once("=>") {
            Some((name, location)) if location.trim() == "not found" => {
                bail!("{} is not found", name.trim())
            }
            Some((_, location)) => location,
            None => line,
        };
        if let Some(path) = location
            .split_whitespace()
            .next()
            .filter(|p| p.starts_with('/'))
        {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

/// Initramfs contents by path; the order of paths puts each directory before what it holds.
#[derive(Default)]
pub struct Initramfs {
    entries: BTreeMap<String, Entry>,
}

pub enum Entry {
    Directory,
    /// A host file or directory with its permissions and owner.
    HostFile(PathBuf),
    HostDirectory(PathBuf),
    Script(String),
    /// A file root may read and write, everyone read.
    Text(String),
    Symlink(String),
    CharDevice {
        attributes: Attributes,
        major: u32,
        minor: u32,
    },
}

impl Entry {
    /// The kernel opens it for init's standard streams before anything can mount devtmpfs.
    pub fn console() -> Self {
        Entry::CharDevice {
            attributes: Attributes::root(0o600),
            major: 5,
            minor: 1,
        }
    }
}

impl Initramfs {
    /// Adds the tree under the host directory `host` at `guest`, as it is: files, directories,
    /// symbolic links and character devices with their owners and permissions (hard links
    /// become copies; other special files are left out).
    pub fn add_tree(&mut self, guest: &str, host: &Path) -> Result<()> {
        self.add(guest, Entry::HostDirectory(host.to_owned()));
        let mut entries: Vec<_> = fs::read_dir(host)
            .with_context(|| format!("reading {}", host.display()))?
            .collect::<Result<_, _>>()
            .with_context(|| format!("reading {}", host.display()))?;
        entries.sort_by_key(|entry| entry.file_name());
        for entry in entries {
            let name = entry.file_name();
            let name = name
                .to_str()
                .with_context(|| format!("{} is not UTF-8", entry.path().display()))?;
            let guest_path = format!("{}/{name}", guest.trim_end_matches('/'));
            let host_path = entry.path();
            let metadata = fs::symlink_metadata(&host_path)
                .with_context(|| format!("inspecting {}", host_path.display()))?;
            let file_type = metadata.file_type();
            if file_type.is_dir() {
                self.add_tree(&guest_path, &host_path)?;
            } else if file_type.is_file() {
                self.add(&guest_path, Entry::HostFile(host_path));
            } else if file_type.is_symlink() {
                let target = fs::read_link(&host_path)
                    .with_context(|| format!("reading the link {}", host_path.display()))?;
                let target = target
                    .to_str()
                    .with_context(|| format!("{} links to a non-UTF-8 path", host_path.display()))?
                    .to_owned();
                self.add(&guest_path, Entry::Symlink(target));
            } else if file_type.is_char_device() {
                let device = metadata.rdev();
                self.add(
                    &guest_path,
                    Entry::CharDevice {
                        attributes: attributes_of(&metadata),
                        major: libc::major(device),
                        minor: libc::minor(device),
                    },
                );
            }
        }
        Ok(())
    }

    /// Adds `entry` at `path` with any missing parent directories, which the kernel does not
    /// create by itself.
    pub fn add(&mut self, path: &str, entry: Entry) {
        for (slash, _) in path.match_indices('/').skip(1) {
            self.entries
                .entry(path[..slash].to_owned())
                .or_insert(Entry::Directory);
        }
        self.entries.insert(path.to_owned(), entry);
    }

    /// Writes the archive to `archive` and says how big it is.
    pub fn write(&self, archive: &Path) -> Result<()> {
        let file =
            File::create(archive).with_context(|| format!("creating {}", archive.display()))?;
        let mut cpio = CpioWriter::new(BufWriter::new(file));
        for (path, entry) in &self.entries {
            let written = match entry {
                Entry::Directory => cpio.directory(path, Attributes::root(0o755)),
                Entry::HostDirectory(host) => cpio.directory(path, host_attributes(host)?),
                Entry::Script(text) => cpio.file(path, Attributes::root(0o755), text.as_bytes()),
                Entry::Text(text) => cpio.file(path, Attributes::root(0o644), text.as_bytes()),
                Entry::Symlink(target) => cpio.symlink(path, target),
                Entry::CharDevice {
                    attributes,
                    major,
                    minor,
                } => cpio.char_device(path, *attributes, *major, *minor),
                Entry::HostFile(host) => {
                    let data =
                        fs::read(host).with_context(|| format!("reading {}", host.display()))?;
                    cpio.file(path, host_attributes(host)?, &data)
                }
            };
            written.with_context(|| format!("writing {path} into {}", archive.display()))?;
        }
        cpio.finish()
            .with_context(|| format!("finishing {}", archive.display()))?;
        let size = fs::metadata(archive)
            .with_context(|| format!("reading the size of {}", archive.display()))?
            .len();
        println!("xtask: wrote {} ({} MiB)", archive.display(), size >> 20);
        Ok(())
    }
}

fn host_attributes(host: &Path) -> Result<Attributes> {
    let metadata =
        fs::metadata(host).with_context(|| format!("reading the mode of {}", host.display()))?;
    Ok(attributes_of(&metadata))
}

fn attributes_of(metadata: &fs::Metadata) -> Attributes {
    Attributes {
        permissions: metadata.mode() & 0o7777,
        uid: metadata.uid(),
        gid: metadata.gid(),
    }
}

/// How a VM is booted besides its kernel and initramfs.
pub struct Machine {
    pub memory_mib: u32,
    /// Appended to the kernel's own command line (`Suite::kernel_command_line`).
    pub extra_command_line: &'static str,
}

/// Boots `kernel` with `initramfs` until QEMU exits or `timeout` passes; returns the console's
/// lines, also written to `console_log`.
pub fn boot(
    kernel: &Kernel,
    machine: &Machine,
    initramfs: &Path,
    console_log: &Path,
    timeout: Duration,
) -> Result<(Vec<String>, Ended)> {
    let mut qemu = Command::new("qemu-system-x86_64");
    // KVM is present on these machines but hangs the guest; TCG is slower but works.
    qemu.args(["-accel", "tcg", "-cpu", "max", "-smp", "1"])
        .args(["-m", &machine.memory_mib.to_string()])
        .arg("-kernel")
        .arg(&kernel.vmlinuz)
        .arg("-initrd")
        .arg(initramfs)
        .args([
            "-append",
            &format!(
                "{} {}",
                kernel.suite.kernel_command_line(),
                machine.extra_command_line
            ),
        ])
        .args([
            "-display", "none", "-serial", "stdio", "-monitor", "none", "-nic", "none",
        ])
        .arg("-no-reboot");
    println!(
        "xtask: booting Debian {}'s kernel {} (console lines start with `vm| `)",
        kernel.suite,
        kernel.vmlinuz.display()
    );

    let started = Instant::now();
    let mut console = Vec::new();
    let ended = process::run_with_deadline(&mut qemu, timeout, |line| {
        println!("vm| {line}");
        if let Some(guest) = parse_guest_kernel(line) {
            println!(
                "xtask: the VM runs Debian {}'s kernel: Linux {}, LSMs {}",
                kernel.suite, guest.release, guest.lsms
            );
        }
        console.push(line.to_owned());
    })?;
    println!(
        "xtask: the VM ran for {:.1} s",
        started.elapsed().as_secs_f64()
    );
    fs::write(console_log, console.join("\n") + "\n")
        .with_context(|| format!("writing {}", console_log.display()))?;
    Ok((console, ended))
}

/// The kernel release and the active LSMs, as the VM's /init reports them.
#[derive(Debug, PartialEq)]
struct GuestKernel {
    release: String,
    /// As /sys/kernel/security/lsm lists them, comma-separated.
    lsms: String,
}

/// Reads /init's `BLOCKER-VM: kernel RELEASE lsm LIST` line.
fn parse_guest_kernel(line: &str) -> Option<GuestKernel> {
    let (_, event) = line.split_once(MARKER)?;
    let mut words = event.split_whitespace();
    match (words.next(), words.next(), words.next()) {
        (Some("kernel"), Some(release), Some("lsm")) => Some(GuestKernel {
            release: release.to_owned(),
            lsms: words.next().unwrap_or_default().to_owned(),
        }),
        _ => None,
    }
}

/// Reads /init's `BLOCKER-VM: status DOCUMENT` line.
fn parse_guest_status(line: &str) -> Option<Value> {
    let (_, event) = line.split_once(MARKER)?;
    let document = event.trim_start().strip_prefix("status ")?;
    serde_json::from_str(document).ok()
}

/// What /init's marker lines and libtest's output on the console say.
#[derive(Debug, Default, PartialEq)]
struct ConsoleReport {
    kernel: Option<GuestKernel>,
    /// The status document of the probe daemon (`features_probe`).
    status: Option<Value>,
    /// Each test group that started (a process of the test binary), in order.
    groups: Vec<GroupReport>,
    done: bool,
}

#[derive(Debug, PartialEq)]
struct GroupReport {
    name: String,
    /// Its exit code, once it ended.
    exit: Option<i32>,
    /// From libtest's `test result:` line.
    counts: TestCounts,
    /// Each test's name and libtest's word for its outcome (`ok`, `FAILED`, `ignored`), from
    /// `test NAME ... OUTCOME` lines, where output of the processes a test started may come
    /// between the name and the outcome; failed tests are also read from libtest's list.
    tests: Vec<(String, String)>,
}

fn parse_console(lines: &[String]) -> ConsoleReport {
    let mut report = ConsoleReport::default();
    // A test whose `test NAME ... ` line did not end in its outcome.
    let mut pending_test: Option<String> = None;
    // libtest lists the failed tests again, one per indented line, right after `failures:`.
    let mut in_failure_list = false;
    for line in lines {
        if let Some(kernel) = parse_guest_kernel(line) {
            report.kernel = Some(kernel);
            continue;
        }
        if let Some(status) = parse_guest_status(line) {
            report.status = Some(status);
            continue;
        }
        let running = report
            .groups
            .last_mut()
            .filter(|group| group.exit.is_none());
        if let Some(group) = running {
            if let Some(counts) = parse_test_result(line) {
                group.counts += counts;
            } else if let Some((name, outcome)) = parse_test_line(line) {
                match outcome {
                    Some(outcome) => group.record(name, outcome),
                    None => pending_test = Some(name.to_owned()),
                }
            } else if let Some(outcome) = as_outcome(line.trim()) {
                if let Some(name) = pending_test.take() {
                    group.record(&name, outcome);
                }
            } else if in_failure_list && line.starts_with("    ") && !line.trim().contains(' ') {
                group.record(line.trim(), "FAILED");
                continue;
            }
            in_failure_list = line.trim_end() == "failures:";
        }
        let Some((_, event)) = line.split_once(MARKER) else {
            continue;
        };
        pending_test = None;
        let mut words = event.split_whitespace();
        match (words.next(), words.next(), words.next()) {
            (Some("begin"), Some(name), _) => report.groups.push(GroupReport {
                name: name.to_owned(),
                exit: None,
                counts: TestCounts::default(),
                tests: Vec::new(),
            }),
            (Some("end"), Some(name), Some(exit)) => {
                if let Some(group) = report.groups.last_mut() {
                    if group.name == name {
                        group.exit = exit
                            .strip_prefix("exit=")
                            .and_then(|code| code.parse().ok());
                    }
                }
            }
            (Some("done"), _, _) => report.done = true,
            _ => {}
        }
    }
    report
}

/// Reads libtest's `test NAME ... OUTCOME` line, whose outcome may be missing when other output
/// came between (`ignored` may be followed by a reason).
fn parse_test_line(line: &str) -> Option<(&str, Option<&str>)> {
    let (name, rest) = line.strip_prefix("test ")?.split_once(" ...")?;
    let outcome = rest.split([' ', ',']).find(|word| !word.is_empty());
    Some((name, outcome.and_then(as_outcome)))
}

fn as_outcome(word: &str) -> Option<&str> {
    matches!(word, "ok" | "FAILED" | "ignored").then_some(word)
}

impl GroupReport {
    /// Sets the outcome of test `name`, adding the test if it is new.
    fn record(&mut self, name: &str, outcome: &str) {
        match self.tests.iter_mut().find(|(known, _)| known == name) {
            Some((_, known_outcome)) => *known_outcome = outcome.to_owned(),
            None => self.tests.push((name.to_owned(), outcome.to_owned())),
        }
    }
}

impl ConsoleReport {
    fn counts(&self) -> TestCounts {
        let mut counts = TestCounts::default();
        for group in &self.groups {
            counts += group.counts;
        }
        counts
    }

    fn release(&self) -> Option<&str> {
        self.kernel.as_ref().map(|kernel| kernel.release.as_str())
    }

    fn verdict(&self) -> Result<()> {
        let mut problems = Vec::new();
        for group in &self.groups {
            let name = &group.name;
            match group.exit {
                Some(0) => {}
                Some(code) => problems.push(format!("{name} exited with {code}")),
                None => problems.push(format!("{name} never finished")),
            }
        }
        if !self.done {
            problems.push(format!("/init never printed `{MARKER} done`"));
        }
        let counts = self.counts();
        if counts.passed + counts.failed == 0 {
            problems.push("no VM test ran".to_owned());
        }
        if !problems.is_empty() {
            bail!(problems.join("; "));
        }
        Ok(())
    }
}

/// The results file of one kernel's VM run, `target/vm/results/<suite>.json`:
///
/// ```json
/// {
///   "suite": "trixie",                          // as given to --kernel
///   "kernel_release": "6.12.117+deb13-cloud-amd64", // `uname -r` in the VM; null if unknown
///   "lsms": ["lockdown", "capability", "bpf"],  // /sys/kernel/security/lsm in the VM
///   "passed": 10, "failed": 2,                  // summed over the test groups
///   "completed": true,                          // /init ran every group and powered off
///   "backend": "lsm",                           // of `blocker run --protect` after the tests
///   "features": {"exec": {"state": "on"}, ...}, // its status document's; null if unknown
///   "targets": [{                               // the test groups
///     "name": "vm_lsm",                         // the module tests/tests/vm/lsm.rs
///     "exit_code": 101,                         // null if it never finished
///     "passed": 4, "failed": 1,                 // libtest's `test result:` line
///     "tests": [{"name": "lsm::banned_exec_fails", "outcome": "ok"}]
///   }]
/// }
/// ```
///
/// `outcome` is `ok`, `failed` or `ignored`. `tests` lists what libtest printed per test; the
/// counts are authoritative where the two differ (a test's line broken up by a daemon's output).
/// Only the groups that ran appear: `--vm-test` selects fewer.
fn results_json(kernel: &Kernel, report: &ConsoleReport) -> Value {
    let counts = report.counts();
    let lsms: Vec<&str> = report
        .kernel
        .as_ref()
        .map(|kernel| {
            kernel
                .lsms
                .split(',')
                .filter(|lsm| !lsm.is_empty())
                .collect()
        })
        .unwrap_or_default();
    let targets: Vec<Value> = report
        .groups
        .iter()
        .map(|group| {
            let tests: Vec<Value> = group
                .tests
                .iter()
                .map(|(name, outcome)| json!({"name": name, "outcome": outcome.to_lowercase()}))
                .collect();
            json!({
                "name": group.name,
                "exit_code": group.exit,
                "passed": group.counts.passed,
                "failed": group.counts.failed,
                "tests": tests,
            })
        })
        .collect();
    json!({
        "suite": kernel.suite.name(),
        "kernel_release": report.release(),
        "lsms": lsms,
        "passed": counts.passed,
        "failed": counts.failed,
        "completed": report.done,
        "backend": report.status.as_ref().map(|status| &status["backend"]),
        "features": report.status.as_ref().map(|status| &status["features"]),
        "targets": targets,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<String> {
        text.lines().map(str::to_owned).collect()
    }

    fn group(
        name: &str,
        exit: Option<i32>,
        (passed, failed): (u64, u64),
        tests: &[(&str, &str)],
    ) -> GroupReport {
        GroupReport {
            name: name.to_owned(),
            exit,
            counts: TestCounts { passed, failed },
            tests: tests
                .iter()
                .map(|(name, outcome)| (name.to_string(), outcome.to_string()))
                .collect(),
        }
    }

    #[test]
    fn reads_a_passing_run() {
        let report = parse_console(&lines(
            "[    0.0] booting\n\
             BLOCKER-VM: kernel 6.12.117+deb13-cloud-amd64 lsm lockdown,capability,bpf,ima\n\
             BLOCKER-VM: begin vm_lsm\n\
             running 2 tests\n\
             test denies ... ok\n\
             test audits ... ignored, needs a fixture\n\
             test result: ok. 1 passed; 0 failed; 1 ignored; 0 measured; 0 filtered out\n\
             BLOCKER-VM: end vm_lsm exit=0\n\
             BLOCKER-VM: begin vm_ima\n\
             test hashes ... [2026-11-29T19:00:00Z INFO  blocker] loaded\n\
             ok\n\
             test result: ok. 1 passed; 0 failed; 0 ignored; 0 measured; 0 filtered out\n\
             BLOCKER-VM: end vm_ima exit=0\n\
             BLOCKER-VM: done\n",
        ));
        assert_eq!(
            report,
            ConsoleReport {
                kernel: Some(GuestKernel {
                    release: "6.12.117+deb13-cloud-amd64".into(),
                    lsms: "lockdown,capability,bpf,ima".into(),
                }),
                status: None,
                groups: vec![
                    group(
                        "vm_lsm",
                        Some(0),
                        (1, 0),
                        &[("denies", "ok"), ("audits", "ignored")]
                    ),
                    group("vm_ima", Some(0), (1, 0), &[("hashes", "ok")]),
                ],
                done: true,
            }
        );
        assert_eq!(
            report.counts(),
            TestCounts {
                passed: 2,
                failed: 0
            }
        );
        report.verdict().unwrap();
    }

    #[test]
    fn fails_on_failures_crashes_and_silence() {
        let failed = parse_console(&lines(
            "BLOCKER-VM: begin vm_lsm\n\
             test denies ... FAILED\n\
             test refuses_links ... [INFO] daemon started\n\
             [ERROR] daemon: loading failed\n\
             test audits ... ok\n\
             \n\
             failures:\n\
             \n\
             ---- denies stdout ----\n\
             Error: no EPERM\n\
             \n\
             failures:\n    denies\n    refuses_links\n\
             \n\
             test result: FAILED. 1 passed; 2 failed; 0 ignored; 0 measured; 0 filtered out\n\
             BLOCKER-VM: end vm_lsm exit=101\n\
             BLOCKER-VM: done\n",
        ));
        assert_eq!(
            failed.groups,
            [group(
                "vm_lsm",
                Some(101),
                (1, 2),
                &[
                    ("denies", "FAILED"),
                    ("audits", "ok"),
                    ("refuses_links", "FAILED")
                ]
            )]
        );
        assert_eq!(
            failed.verdict().unwrap_err().to_string(),
            "vm_lsm exited with 101"
        );

        let crashed = parse_console(&lines("BLOCKER-VM: begin vm_lsm\nKernel panic\n"));
        assert_eq!(
            crashed.verdict().unwrap_err().to_string(),
            "vm_lsm never finished; /init never printed `BLOCKER-VM: done`; no VM test ran"
        );

        let empty = parse_console(&lines("BLOCKER-VM: done\n"));
        assert_eq!(empty.verdict().unwrap_err().to_string(), "no VM test ran");
    }

    #[test]
    fn writes_the_results_file() {
        let report = parse_console(&lines(
            "BLOCKER-VM: kernel 7.2.13+deb14-cloud-amd64 lsm lockdown,bpf,ima\n\
             BLOCKER-VM: begin vm_pin\n\
             test pins ... FAILED\n\
             test result: FAILED. 0 passed; 1 failed; 0 ignored; 0 measured; 0 filtered out\n\
             BLOCKER-VM: end vm_pin exit=101\n\
             BLOCKER-VM: begin vm_tamper\n\
             BLOCKER-VM: status {\"backend\": \"lsm\",  \"features\": {\"exec\": {\"state\": \"on\"}}}\n",
        ));
        let kernel = Kernel {
            suite: crate::kernels::Suite::Sid,
            vmlinuz: PathBuf::from("/k/vmlinuz-7.2.13+deb14-cloud-amd64"),
        };
        assert_eq!(
            results_json(&kernel, &report),
            json!({
                "suite": "sid",
                "kernel_release": "7.2.13+deb14-cloud-amd64",
                "lsms": ["lockdown", "bpf", "ima"],
                "passed": 0,
                "failed": 1,
                "completed": false,
                "backend": "lsm",
                "features": {"exec": {"state": "on"}},
                "targets": [
                    {
                        "name": "vm_pin",
                        "exit_code": 101,
                        "passed": 0,
                        "failed": 1,
                        "tests": [{"name": "pins", "outcome": "failed"}],
                    },
                    {"name": "vm_tamper", "exit_code": null, "passed": 0, "failed": 0, "tests": []},
                ],
            })
        );
    }

    #[test]
    fn init_runs_each_test_group_in_a_process_of_its_own() {
        let groups = [
            TestGroup {
                module: "lsm".into(),
                tests: vec!["lsm::denies".into(), "lsm::audits".into()],
            },
            TestGroup {
                module: "pin".into(),
                tests: vec!["pin::pins".into()],
            },
        ];
        let script = init_script(&groups);
        let runs = "echo \"BLOCKER-VM: begin vm_lsm\"\n\
                    /tests/vm --test-threads=1 --exact lsm::denies lsm::audits\n\
                    echo \"BLOCKER-VM: end vm_lsm exit=$?\"\n\
                    echo \"BLOCKER-VM: begin vm_pin\"\n\
                    /tests/vm --test-threads=1 --exact pin::pins\n\
                    echo \"BLOCKER-VM: end vm_pin exit=$?\"\n";
        assert!(script.contains(runs), "{script}");
        assert!(script.ends_with("echo \"BLOCKER-VM: done\"\npoweroff -f\n"));
    }

    #[test]
    fn reads_library_paths_from_ldd() {
        let output = "\tlinux-vdso.so.1 (0x00007ffd5a5f2000)\n\
                      \tlibgcc_s.so.1 => /lib/x86_64-linux-gnu/libgcc_s.so.1 (0x00007f2c1c000000)\n\
                      \tlibc.so.6 => /lib/x86_64-linux-gnu/libc.so.6 (0x00007f2c1be00000)\n\
                      \t/lib64/ld-linux-x86-64.so.2 (0x00007f2c1c0a0000)\n\
                      \tstatically linked\n";
        assert_eq!(
            parse_ldd(output).unwrap(),
            [
                PathBuf::from("/lib/x86_64-linux-gnu/libgcc_s.so.1"),
                PathBuf::from("/lib/x86_64-linux-gnu/libc.so.6"),
                PathBuf::from("/lib64/ld-linux-x86-64.so.2"),
            ]
        );
        let missing = parse_ldd("\tlibbpf.so.1 => not found\n").unwrap_err();
        assert_eq!(missing.to_string(), "libbpf.so.1 is not found");
    }

    #[test]
    fn adds_parent_directories_before_their_contents() {
        let mut image = Initramfs::default();
        image.add("/usr/lib/x/libc.so.6", Entry::HostFile("/x".into()));
        image.add("/usr/bin", Entry::Directory);
        image.add("/init", Entry::Script(String::new()));
        let paths: Vec<_> = image.entries.keys().map(String::as_str).collect();
        assert_eq!(
            paths,
            [
                "/init",
                "/usr",
                "/usr/bin",
                "/usr/lib",
                "/usr/lib/x",
                "/usr/lib/x/libc.so.6"
            ]
        );
    }
}
