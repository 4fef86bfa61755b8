//! A real desktop for the notification tests, run by an unprivileged test user: a virtual X
//! display (Xvfb), a session bus (`dbus-daemon --session`), Debian's `dunst` as the
//! notification server, `dbus-monitor` recording every `Notify` call, and `blocker notify`
//! itself. Everything is started here and stopped by its pid when the desktop is dropped.
//!
//! Also a terminal ([`Terminal`]): a pseudo-terminal owned by the test user with a shell of
//! theirs on it, as a login would leave it.

use std::{
    fs,
    io::Read,
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::{fs::PermissionsExt, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{Arc, Mutex},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, ensure, Context, Result};

/// How long the desktop's programs may take to come up, and a notification to arrive.
pub const DESKTOP_TIMEOUT: Duration = Duration::from_secs(30);

/// A user of the tests' own, created if missing and removed when dropped.
pub struct TestUser {
    pub name: String,
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

impl TestUser {
    /// `useradd` a system user named `name` with `home` as home directory (made theirs).
    pub fn create(name: &str, home: &Path) -> Result<Self> {
        if id_of(name, "-u").is_err() {
            let status = Command::new("useradd")
                .args(["--system", "--no-create-home", "--shell", "/bin/sh"])
                .arg("--home-dir")
                .arg(home)
                .arg(name)
                .status()
                .context("running useradd")?;
            ensure!(status.success(), "useradd {name}: {status}");
        }
        let user = Self {
            name: name.to_owned(),
            uid: id_of(name, "-u")?,
            gid: id_of(name, "-g")?,
            home: home.to_owned(),
        };
        fs::create_dir_all(home)?;
        std::os::unix::fs::chown(home, Some(user.uid), Some(user.gid))?;
        Ok(user)
    }

    /// `program` to be run as this user, with their home and nothing of root's environment.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut command = Command::new(program);
        command
            .uid(self.uid)
            .gid(self.gid)
            .env_clear()
            .env("HOME", &self.home)
            .env("PATH", "/usr/local/bin:/usr/bin:/bin")
            .env("USER", &self.name)
            .current_dir(&self.home)
            .stdin(Stdio::null());
        command
    }
}

impl Drop for TestUser {
    fn drop(&mut self) {
        let _ = Command::new("userdel").arg(&self.name).status();
    }
}

fn group_id(name: &str) -> Result<u32> {
    let output = Command::new("getent").args(["group", name]).output()?;
    ensure!(output.status.success(), "no group {name}");
    String::from_utf8(output.stdout)?
        .split(':')
        .nth(2)
        .context("getent's line")?
        .trim()
        .parse()
        .context("a group id")
}

fn id_of(name: &str, which: &str) -> Result<u32> {
    let output = Command::new("id").arg(which).arg(name).output()?;
    ensure!(output.status.success(), "no user {name}");
    Ok(String::from_utf8(output.stdout)?.trim().parse()?)
}

/// One `Notify` call to the notification server, as `dbus-monitor` saw it.
#[derive(Debug, Clone)]
pub struct NotifyCall {
    /// The whole of the call's arguments as dbus-monitor printed them.
    pub text: String,
    pub replaces_id: u32,
    pub summary: String,
    /// The id the server answered with.
    pub id: Option<u32>,
}

impl NotifyCall {
    /// Checks that this is the first notification of a deny of `program` (a file name) with
    /// `message`, the "More information" action and critical urgency.
    pub fn check_told(&self, program: &str, message: &str) -> Result<()> {
        ensure!(
            self.summary == format!("{program} is blocked on this device") && self.replaces_id == 0,
            "{self:#?}"
        );
        for expected in [message, "string \"More information\"", "byte 2"] {
            ensure!(self.text.contains(expected), "no {expected:?} in {self:#?}");
        }
        Ok(())
    }
}

/// Checks that `calls` hold exactly two about `program`: the first refusal of a burst, and
/// the folded rest replacing it.
pub fn check_folded(calls: &[NotifyCall], program: &str) -> Result<()> {
    let summary = format!("{program} is blocked on this device");
    let about: Vec<_> = calls
        .iter()
        .filter(|call| call.summary == summary)
        .collect();
    ensure!(about.len() == 2, "{calls:#?}");
    ensure!(
        about[1].replaces_id == about[0].id.context("no answer")?
            && about[1].text.contains("attempts to run"),
        "{about:#?}"
    );
    Ok(())
}

/// The test user's desktop session; see the module documentation.
pub struct Desktop {
    pub display: String,
    pub bus_address: String,
    dir: PathBuf,
    children: Vec<Child>,
    monitor_log: PathBuf,
}

impl Desktop {
    /// Starts the display, the bus, dunst and dbus-monitor as `user`, in `dir`.
    pub fn start(user: &TestUser, dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir)?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
        // X servers keep their sockets here, root's and open to all, as a boot leaves it.
        let sockets = Path::new("/tmp/.X11-unix");
        fs::create_dir_all(sockets)?;
        fs::set_permissions(sockets, fs::Permissions::from_mode(0o1777))?;
        let display_number = (0..100)
            .map(|n| 90 + n)
            .find(|n| !Path::new(&format!("/tmp/.X11-unix/X{n}")).exists())
            .context("no free X display number")?;
        let display = format!(":{display_number}");
        let mut desktop = Self {
            display: display.clone(),
            bus_address: String::new(),
            dir: dir.to_owned(),
            children: Vec::new(),
            monitor_log: dir.join("dbus-monitor.log"),
        };
        desktop.children.push(
            user.command("Xvfb")
                .args([
                    display.as_str(),
                    "-screen",
                    "0",
                    "800x600x24",
                    "-nolisten",
                    "tcp",
                ])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting Xvfb")?,
        );
        wait_until(|| Path::new(&format!("/tmp/.X11-unix/X{display_number}")).exists())
            .context("Xvfb did not open its display")?;

        let bus_socket = dir.join("bus");
        let bus_dir = dir.join("bus-dir");
        fs::create_dir_all(&bus_dir)?;
        std::os::unix::fs::chown(&bus_dir, Some(user.uid), Some(user.gid))?;
        let bus_socket = bus_dir.join(bus_socket.file_name().unwrap());
        desktop.bus_address = format!("unix:path={}", bus_socket.display());
        // A session bus that starts no services of its own: the notification server is the
        // dunst started here, or none.
        let bus_config = dir.join("session.conf");
        fs::write(
            &bus_config,
            format!(
                "<!DOCTYPE busconfig PUBLIC \"-//freedesktop//DTD D-Bus Bus Configuration 1.0//EN\" \
                 \"http://www.freedesktop.org/standards/dbus/1.0/busconfig.dtd\">\n\
                 <busconfig><type>session</type><listen>{}</listen><auth>EXTERNAL</auth>\
                 <policy context=\"default\"><allow send_destination=\"*\" eavesdrop=\"true\"/>\
                 <allow eavesdrop=\"true\"/><allow own=\"*\"/></policy></busconfig>\n",
                desktop.bus_address
            ),
        )?;
        fs::set_permissions(&bus_config, fs::Permissions::from_mode(0o644))?;
        desktop.children.push(
            user.command("dbus-daemon")
                .args(["--nofork", "--nosyslog"])
                .arg(format!("--config-file={}", bus_config.display()))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting dbus-daemon")?,
        );
        wait_until(|| bus_socket.exists()).context("the session bus did not start")?;

        let dunstrc = dir.join("dunstrc");
        // Notifications stay until closed, so that the screenshot and the count see them.
        fs::write(
            &dunstrc,
            "[global]\nfont = Monospace 10\nwidth = 600\norigin = top-center\noffset = 0x40\n\
             format = \"<b>%s</b>\\n%b\"\n[urgency_low]\ntimeout = 0\n\
             [urgency_normal]\ntimeout = 0\n[urgency_critical]\ntimeout = 0\n\
             background = \"#900000\"\nforeground = \"#ffffff\"\n",
        )?;
        fs::set_permissions(&dunstrc, fs::Permissions::from_mode(0o644))?;
        let monitor_log = fs::File::create(&desktop.monitor_log)?;
        desktop.children.push(
            desktop
                .session_command(user, "dbus-monitor")
                .arg("interface='org.freedesktop.Notifications'")
                .arg("type='method_return'")
                .stdout(monitor_log)
                .stderr(Stdio::null())
                .spawn()
                .context("starting dbus-monitor")?,
        );
        desktop.children.push(
            desktop
                .session_command(user, "dunst")
                .arg("-config")
                .arg(&dunstrc)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting dunst")?,
        );
        wait_until(|| desktop.dunst_count("displayed").is_ok())
            .context("dunst did not come up on the session bus")?;
        Ok(desktop)
    }

    /// `program` as `user` in this session (its display and bus).
    pub fn session_command(&self, user: &TestUser, program: &str) -> Command {
        let mut command = user.command(program);
        command
            .env("DISPLAY", &self.display)
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus_address);
        command
    }

    /// Starts `BLOCKER notify --socket SOCKET` as `user` in this session and waits until it
    /// has connected; its log goes to `agent.log` in the desktop's directory.
    pub fn start_agent(&mut self, user: &TestUser, blocker: &Path, socket: &Path) -> Result<()> {
        let log = fs::File::create(self.dir.join("agent.log"))?;
        self.children.push(
            self.session_command(user, blocker.to_str().context("blocker's path")?)
                .arg("notify")
                .arg("--socket")
                .arg(socket)
                .env("RUST_LOG", "info")
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .context("starting blocker notify")?,
        );
        wait_until(|| self.agent_log().contains("receiving refusals from"))
            .with_context(|| format!("the agent did not connect: {}", self.agent_log()))
    }

    /// What the agent logged so far.
    pub fn agent_log(&self) -> String {
        fs::read_to_string(self.dir.join("agent.log")).unwrap_or_default()
    }

    /// dunst's count of `displayed`, `history` or `waiting` notifications.
    pub fn dunst_count(&self, which: &str) -> Result<u32> {
        let output = Command::new("dunstctl")
            .args(["count", which])
            .env("DBUS_SESSION_BUS_ADDRESS", &self.bus_address)
            .uid(self.owner().0)
            .gid(self.owner().1)
            .output()?;
        ensure!(
            output.status.success(),
            "dunstctl count {which}: {output:?}"
        );
        Ok(String::from_utf8(output.stdout)?.trim().parse()?)
    }

    fn owner(&self) -> (u32, u32) {
        use std::os::unix::fs::MetadataExt;
        let metadata = fs::metadata(self.dir.join("bus-dir")).expect("the bus directory");
        (metadata.uid(), metadata.gid())
    }

    /// Every `Notify` call seen so far, with the id the server answered.
    pub fn notify_calls(&self) -> Vec<NotifyCall> {
        parse_monitor(&fs::read_to_string(&self.monitor_log).unwrap_or_default())
    }

    /// Waits until `count` Notify calls have been answered.
    pub fn wait_for_notify_calls(
        &self,
        count: usize,
        timeout: Duration,
    ) -> Result<Vec<NotifyCall>> {
        let deadline = Instant::now() + timeout;
        loop {
            let calls = self.notify_calls();
            if calls.len() >= count && calls.iter().all(|call| call.id.is_some()) {
                return Ok(calls);
            }
            if Instant::now() > deadline {
                bail!(
                    "{} Notify calls, not {count}, within {timeout:?}: {calls:#?}\nagent log:\n{}",
                    calls.len(),
                    self.agent_log()
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// A PNG of the whole display at `path`.
    pub fn screenshot(&self, path: &Path) -> Result<()> {
        let xwd = Command::new("xwd")
            .args(["-root", "-silent", "-display", &self.display])
            .output()
            .context("running xwd")?;
        ensure!(xwd.status.success(), "xwd: {xwd:?}");
        let dump = self.dir.join("screen.xwd");
        fs::write(&dump, &xwd.stdout)?;
        let status = Command::new("convert")
            .arg(format!("xwd:{}", dump.display()))
            .args(["-crop", "620x80+90+30", "+repage"])
            .arg(path)
            .status()
            .context("running convert")?;
        ensure!(status.success(), "convert: {status}");
        Ok(())
    }
}

impl Drop for Desktop {
    fn drop(&mut self) {
        for child in self.children.iter_mut().rev() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_until(mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + DESKTOP_TIMEOUT;
    while !ready() {
        ensure!(Instant::now() < deadline, "not within {DESKTOP_TIMEOUT:?}");
        thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The Notify calls in dbus-monitor's output, each with the server's answer (matched by
/// serial).
fn parse_monitor(log: &str) -> Vec<NotifyCall> {
    let mut calls = Vec::new();
    let mut serials = Vec::new();
    let mut answers = std::collections::HashMap::new();
    // Each message starts with a header line; its arguments follow (a string's own lines too).
    let is_header = |line: &str| {
        ["method call ", "method return ", "signal ", "error "]
            .iter()
            .any(|kind| line.starts_with(kind))
    };
    let mut blocks: Vec<String> = Vec::new();
    for line in log.lines() {
        match blocks.last_mut() {
            Some(block) if !is_header(line) => {
                block.push('\n');
                block.push_str(line);
            }
            _ => blocks.push(line.to_owned()),
        }
    }
    for block in &blocks {
        let header = block.lines().next().unwrap_or_default();
        let field = |name: &str| {
            header
                .split_whitespace()
                .find_map(|word| word.strip_prefix(name))
                .map(|value| value.trim_end_matches(';').to_owned())
        };
        if header.contains("member=Notify") {
            let arguments: Vec<&str> = block.lines().skip(1).collect();
            let string_at = |index: usize| {
                arguments
                    .iter()
                    .filter(|line| {
                        line.trim_start().starts_with("string \"")
                            || line.trim_start().starts_with("uint32 ")
                    })
                    .nth(index)
                    .map(|line| line.trim().to_owned())
                    .unwrap_or_default()
            };
            let replaces_id = string_at(1)
                .strip_prefix("uint32 ")
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
            let summary = string_at(3)
                .trim_start_matches("string \"")
                .trim_end_matches('"')
                .to_owned();
            serials.push(field("serial=").unwrap_or_default());
            calls.push(NotifyCall {
                text: arguments.join("\n"),
                replaces_id,
                summary,
                id: None,
            });
        } else if header.starts_with("method return") {
            if let (Some(reply_to), Some(id)) = (
                field("reply_serial="),
                block
                    .lines()
                    .nth(1)
                    .and_then(|line| line.trim().strip_prefix("uint32 "))
                    .and_then(|n| n.parse().ok()),
            ) {
                answers.insert(reply_to, id);
            }
        }
    }
    for (call, serial) in calls.iter_mut().zip(serials) {
        call.id = answers.get(&serial).copied();
    }
    calls
}

/// A pseudo-terminal owned by a test user, with `sh -c SCRIPT` of theirs on it as its
/// controlling terminal; everything written to the terminal is collected.
pub struct Terminal {
    child: Child,
    output: Arc<Mutex<Vec<u8>>>,
    pub path: PathBuf,
}

impl Terminal {
    pub fn start(user: &TestUser, script: &str) -> Result<Self> {
        let (mut master, mut slave) = (-1, -1);
        // SAFETY: openpty writes two descriptors it opened into the integers given.
        let opened = unsafe {
            libc::openpty(
                &mut master,
                &mut slave,
                std::ptr::null_mut(),
                std::ptr::null(),
                std::ptr::null(),
            )
        };
        ensure!(opened == 0, "openpty: {}", std::io::Error::last_os_error());
        // SAFETY: both were just opened and are owned here alone.
        let (master, slave) =
            unsafe { (OwnedFd::from_raw_fd(master), OwnedFd::from_raw_fd(slave)) };
        let path = fs::read_link(format!("/proc/self/fd/{}", slave.as_raw_fd()))?;
        // As a login leaves it: the user's, group tty (which wall and write hold), not
        // readable by others.
        std::os::unix::fs::chown(&path, Some(user.uid), Some(group_id("tty")?))?;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o620))?;
        let mut command = user.command("/bin/sh");
        command
            .arg("-c")
            .arg(script)
            .stdin(slave.try_clone()?)
            .stdout(slave.try_clone()?)
            .stderr(slave.try_clone()?);
        // SAFETY: setsid and ioctl are async-signal-safe; they give the child a session whose
        // controlling terminal is its stdin, the pseudo-terminal.
        unsafe {
            command.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().context("starting the terminal's shell")?;
        drop(slave);
        let output = Arc::new(Mutex::new(Vec::new()));
        let collected = output.clone();
        let mut reader = fs::File::from(master);
        thread::spawn(move || {
            let mut buffer = [0; 4096];
            // Ends with EIO once the last process holding the terminal has exited.
            while let Ok(read) = reader.read(&mut buffer) {
                if read == 0 {
                    break;
                }
                collected.lock().unwrap().extend_from_slice(&buffer[..read]);
            }
        });
        Ok(Self {
            child,
            output,
            path,
        })
    }

    /// Everything written to the terminal so far.
    pub fn output(&self) -> String {
        String::from_utf8_lossy(&self.output.lock().unwrap()).into_owned()
    }

    /// Waits until the terminal shows `text`.
    pub fn wait_for(&self, text: &str, timeout: Duration) -> Result<String> {
        let deadline = Instant::now() + timeout;
        loop {
            let output = self.output();
            if output.contains(text) {
                return Ok(output);
            }
            if Instant::now() > deadline {
                bail!(
                    "the terminal did not show {text:?} within {timeout:?}; it showed {output:?}"
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
