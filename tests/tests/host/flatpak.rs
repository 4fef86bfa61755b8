//! Per-user Flatpak installations on the host's kernel (kill backend). A user controls
//! everything below their home: an app directory they made a symlink to a directory standing
//! in for `/usr/bin`, or an installation reached through a symlinked component, is refused with
//! a warning naming the symlink, and nothing it leads to is banned, while the same app deployed
//! in a directory the user owns is. Only test-made files go into the maps.

use std::{
    os::unix::{
        fs::{lchown, symlink},
        process::ExitStatusExt,
    },
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context, Result};
use blocker_integration_tests::{harmless_binary, Daemon, Sandbox, EVENT_TIMEOUT};

/// A user id no account has: the owner of the test's homes.
const TEST_UID: u32 = 3_999_999_001;
const USER_INSTALLATION: &str = ".local/share/flatpak";

/// A home in the host's `/home` (where blocker looks for per-user installations), owned by
/// [`TEST_UID`] once filled, removed afterwards.
struct Home {
    path: PathBuf,
}

impl Home {
    fn new(name: &str) -> Result<Self> {
        let path = PathBuf::from(format!("/home/blocker-test-{name}-{}", std::process::id()));
        std::fs::create_dir(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Self { path })
    }

    /// Deploys `app_id` below `installation` (relative to the home) the way flatpak lays it
    /// out, returning its program.
    fn deploy(&self, installation: &str, app_id: &str) -> Result<PathBuf> {
        let files = self
            .path
            .join(installation)
            .join("app")
            .join(app_id)
            .join("x86_64/stable/0123abcd/files/bin");
        std::fs::create_dir_all(&files)?;
        let program = files.join("app");
        std::fs::copy(harmless_binary(), &program)?;
        Ok(program)
    }

    /// Gives everything in the home to [`TEST_UID`], symlinks included.
    fn hand_over(&self) -> Result<()> {
        chown_tree(&self.path)
    }
}

fn chown_tree(path: &Path) -> Result<()> {
    lchown(path, Some(TEST_UID), Some(TEST_UID))
        .with_context(|| format!("chown {}", path.display()))?;
    if std::fs::symlink_metadata(path)?.is_dir() {
        for entry in std::fs::read_dir(path)? {
            chown_tree(&entry?.path())?;
        }
    }
    Ok(())
}

impl Drop for Home {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

#[test]
fn symlinks_in_a_users_installation_ban_nothing_they_lead_to() -> Result<()> {
    let sandbox = Sandbox::new("flatpak")?;
    // Made by root, as the system's programs are: what a user would like to see banned.
    let system_binaries = sandbox.path("usr-bin");
    std::fs::create_dir(&system_binaries)?;
    let system_program = system_binaries.join("program");
    std::fs::copy(harmless_binary(), &system_program)?;
    let app_id = format!("org.blockertest.App{}", std::process::id());

    // The app directory itself is a symlink to the stand-in for /usr/bin.
    let linked = Home::new("flatpak-linked")?;
    let linked_apps = linked.path.join(USER_INSTALLATION).join("app");
    std::fs::create_dir_all(&linked_apps)?;
    let linked_app = linked_apps.join(&app_id);
    symlink(&system_binaries, &linked_app)?;
    linked.hand_over()?;

    // A component further up is a symlink, to a deployment the user owns.
    let component = Home::new("flatpak-component")?;
    let reached_by_symlink = component.deploy("real-share/flatpak", &app_id)?;
    std::fs::create_dir(component.path.join(".local"))?;
    let linked_share = component.path.join(".local/share");
    symlink(component.path.join("real-share"), &linked_share)?;
    component.hand_over()?;
    ensure!(
        linked_share.join("flatpak/app").join(&app_id).is_dir(),
        "the symlinked share leads to the user's own deployment"
    );

    // The control: a real deployment the user owns.
    let owned = Home::new("flatpak-owned")?;
    let owned_program = owned.deploy(USER_INSTALLATION, &app_id)?;
    owned.hand_over()?;

    sandbox.write_policy(
        "test.toml",
        &format!("name = \"test\"\n[[rule]]\nid = \"ban\"\nflatpak = [\"{app_id}\"]\n"),
    )?;
    let (mut daemon, started) = Daemon::start(&sandbox.policy_dir(), &["--backend", "kill"])?;
    ensure!(
        started["entries"] == 1,
        "only the owned deployment: {started}"
    );
    for symlink in [&linked_app, &linked_share] {
        let warning = format!("{} is a symlink", symlink.display());
        daemon
            .wait_for_log(&warning, EVENT_TIMEOUT)
            .with_context(|| format!("no warning `{warning}`: {:?}", daemon.log))?;
    }

    for allowed in [&system_program, &reached_by_symlink] {
        let status = Command::new(allowed).status()?;
        ensure!(
            status.success(),
            "{} did not run: {status}",
            allowed.display()
        );
    }
    let status = Command::new(&owned_program).status()?;
    ensure!(
        status.signal() == Some(libc::SIGKILL),
        "the owned deployment was not killed: {status}"
    );
    daemon.wait_for_exec(&owned_program)?;
    daemon.stop()?;
    Ok(())
}
