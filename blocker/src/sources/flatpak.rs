//! Flatpak apps: every deployment (architecture, branch, commit) of an app id, in the system
//! installation and in each user's. An app's deployments all live under
//! `<installation>/app/<id>/`, reached through the `current` and `active` symlinks that the
//! walk does not follow, so each deployed file is found once.

use crate::{
    escape::escaped,
    files::{NotOpened, OpenDirectory},
    lookup::Problems,
};
use std::{collections::BTreeSet, fs, io::ErrorKind, path::Path};

use super::{SourceFiles, SourceRoots};

const SYSTEM_INSTALLATION: &str = "var/lib/flatpak";
const USER_INSTALLATION: &str = ".local/share/flatpak";
const MAX_ID_LENGTH: usize = 255;

/// Checks an app id by Flatpak's own rules (`flatpak_is_valid_name`): at most 255 characters,
/// at least three `.`-separated segments of `[A-Za-z0-9_]`, none starting with a digit; `-` is
/// allowed only in the last segment.
pub fn validate_flatpak_id(id: &str) -> Result<(), String> {
    let invalid = |reason: &str| Err(format!("`{id}` is not a valid Flatpak app id: {reason}"));
    if id.len() > MAX_ID_LENGTH {
        return invalid(&format!("longer than {MAX_ID_LENGTH} characters"));
    }
    let segments: Vec<&str> = id.split('.').collect();
    if segments.len() < 3 {
        return invalid("an id has at least three `.`-separated parts, like `org.example.App`");
    }
    let last = segments.len() - 1;
    for (index, segment) in segments.iter().enumerate() {
        let allowed =
            |c: char| c.is_ascii_alphanumeric() || c == '_' || (index == last && c == '-');
        match segment.chars().next() {
            None => return invalid("a part is empty"),
            Some(first) if first.is_ascii_digit() => {
                return invalid(&format!("part `{segment}` starts with a digit"));
            }
            Some(_) => {}
        }
        if let Some(c) = segment.chars().find(|&c| !allowed(c)) {
            return invalid(&format!("`{c}` is not allowed in part `{segment}`"));
        }
    }
    Ok(())
}

/// The executable files of every deployment of `app_id`: in the system installation
/// (`/var/lib/flatpak`) and in the per-user installations (`~/.local/share/flatpak`) of `/root`
/// and of each directory in `/home`. An error when no installation has the app.
pub fn flatpak_files(app_id: &str, roots: &SourceRoots) -> Result<SourceFiles, String> {
    validate_flatpak_id(app_id)?;
    let mut found = SourceFiles::default();

    let system_app = roots
        .root
        .join(SYSTEM_INSTALLATION)
        .join("app")
        .join(app_id);
    let mut installed = found.add_walked_path(&system_app);
    let homes = home_directories(roots, &mut found.problems);
    let home_paths: Vec<String> = homes
        .iter()
        .map(|home| escaped(&home.path).to_string())
        .collect();
    for home in &homes {
        if let Some(user_app) = user_app_directory(home, app_id, &mut found.problems) {
            installed = true;
            found.add_walked(user_app, Some(home.status.uid));
        }
    }

    if installed {
        return Ok(found.finish());
    }
    let message = format!(
        "flatpak app `{app_id}` is not installed (searched {} and {USER_INSTALLATION} in {})",
        escaped(&roots.root.join(SYSTEM_INSTALLATION)),
        if home_paths.is_empty() {
            "no home directory".to_owned()
        } else {
            home_paths.join(", ")
        }
    );
    found.nothing_found(message)
}

/// What an `allow` rule naming `app_id` trusts: the app's deployments in the system installation
/// only, which root controls (in their own installation a user can install anything under any
/// id), and the runtimes those deployments name in their `metadata`, with each runtime's
/// extensions (`<runtime>.GL.default`, codecs): the app runs the runtime's loader and maps its
/// libraries, so without them it could not start under lockdown.
pub fn allowed_flatpak_files(app_id: &str, roots: &SourceRoots) -> Result<SourceFiles, String> {
    validate_flatpak_id(app_id)?;
    let mut found = SourceFiles::default();
    let installation = roots.root.join(SYSTEM_INSTALLATION);
    let app = installation.join("app").join(app_id);
    if !found.add_walked_path(&app) {
        return found.nothing_found(format!(
            "flatpak app `{app_id}` is not installed in the system installation {} (an allow \
             rule trusts no user's installation: a user can install anything under any id there)",
            escaped(&installation)
        ));
    }
    let runtimes_dir = installation.join("runtime");
    let runtimes = runtimes_of(&app, &mut found.problems);
    let installed_runtimes: Vec<String> = match fs::read_dir(&runtimes_dir) {
        Ok(entries) => entries
            .filter_map(|entry| entry.ok()?.file_name().into_string().ok())
            .collect(),
        Err(error) if error.kind() == ErrorKind::NotFound => Vec::new(),
        Err(error) => {
            found.problems.failed(&runtimes_dir, error);
            Vec::new()
        }
    };
    for runtime in &runtimes {
        let mut runtime_found = false;
        for installed in &installed_runtimes {
            let extension = installed
                .strip_prefix(runtime.as_str())
                .is_some_and(|rest| rest.starts_with('.'));
            if installed == runtime || extension {
                runtime_found |= found.add_walked_path(&runtimes_dir.join(installed));
            }
        }
        if !runtime_found {
            found.problems.push(format!(
                "flatpak app `{app_id}` runs on runtime `{runtime}`, which is not installed in {}",
                escaped(&runtimes_dir)
            ));
        }
    }
    Ok(found.finish())
}

/// The runtimes (ids) the deployments under `app` name: `runtime=<id>/<arch>/<branch>` in the
/// `[Application]` group of each `<arch>/<branch>/<commit>/metadata`. Symlinks (`current`,
/// `active`) are not followed: every deployment is reached by its own name.
fn runtimes_of(app: &Path, problems: &mut Problems) -> BTreeSet<String> {
    let mut runtimes = BTreeSet::new();
    let directories = |path: &Path| -> Vec<std::path::PathBuf> {
        fs::read_dir(path)
            .map(|entries| {
                entries
                    .filter_map(Result::ok)
                    .filter(|entry| entry.file_type().is_ok_and(|kind| kind.is_dir()))
                    .map(|entry| entry.path())
                    .collect()
            })
            .unwrap_or_default()
    };
    for arch in directories(app) {
        for branch in directories(&arch) {
            for deployment in directories(&branch) {
                let metadata = deployment.join("metadata");
                let text = match fs::read_to_string(&metadata) {
                    Ok(text) => text,
                    Err(error) => {
                        problems.failed(&metadata, error);
                        continue;
                    }
                };
                let mut in_application = false;
                for line in text.lines() {
                    let line = line.trim();
                    if line.starts_with('[') {
                        in_application = line == "[Application]";
                    } else if let (true, Some(value)) =
                        (in_application, line.strip_prefix("runtime="))
                    {
                        let id = value.split('/').next().unwrap_or_default();
                        match validate_flatpak_id(id) {
                            Ok(()) => {
                                runtimes.insert(id.to_owned());
                            }
                            Err(problem) => {
                                problems.push(format!("{}: {problem}", escaped(&metadata)))
                            }
                        }
                    }
                }
            }
        }
    }
    runtimes
}

/// `/root` and every directory in `/home`, sorted by path, open. `/home` and its entries are
/// root's to make, so a home that is a symlink is followed; nothing below a home is.
fn home_directories(roots: &SourceRoots, problems: &mut Problems) -> Vec<OpenDirectory> {
    let mut paths = vec![roots.root.join("root")];
    let home = roots.root.join("home");
    match fs::read_dir(&home) {
        Ok(entries) => {
            let mut users = Vec::new();
            for entry in entries {
                match entry {
                    Ok(entry) => users.push(entry.path()),
                    Err(error) => problems.failed(&home, error),
                }
            }
            users.sort();
            paths.extend(users);
        }
        Err(error) if error.kind() == ErrorKind::NotFound => {}
        Err(error) => problems.failed(&home, error),
    }
    paths
        .iter()
        .filter_map(|path| match OpenDirectory::open(path) {
            Ok(directory) => directory,
            Err(error) => {
                problems.failed(path, error);
                None
            }
        })
        .collect()
}

/// `<home>/.local/share/flatpak/app/<app_id>`, open, if it is a directory owned by the home's
/// owner and reached through directories only. The user controls everything below the home:
/// were any component a symlink, it could lead to `/usr/bin` and get all of it banned, so the
/// directory is opened one component at a time from the home's descriptor without following
/// symlinks, its owner read from that descriptor, and the walk starts from it.
fn user_app_directory(
    home: &OpenDirectory,
    app_id: &str,
    problems: &mut Problems,
) -> Option<OpenDirectory> {
    let relative = Path::new(USER_INSTALLATION).join("app").join(app_id);
    let app = match home.open_beneath(&relative) {
        Ok(app) => app,
        Err(NotOpened::Absent) => return None,
        Err(NotOpened::Symlink(symlink)) => {
            problems.push(format!(
                "{}: not searched: {} is a symlink, and no symlink in a user's installation \
                 is followed, since it may lead to files that are not the app's",
                escaped(&home.path.join(&relative)),
                escaped(&symlink)
            ));
            return None;
        }
        Err(NotOpened::Failed(error)) => {
            problems.undecided.push(error);
            return None;
        }
    };
    let (app_owner, home_owner) = (app.status.uid, home.status.uid);
    if app_owner != home_owner {
        problems.push(format!(
            "{}: not searched: owned by uid {app_owner}, not by {}'s owner (uid {home_owner}), \
             so it may lead to files that are not the app's",
            escaped(&app.path),
            escaped(&home.path)
        ));
        return None;
    }
    Some(app)
}

#[cfg(test)]
mod tests {
    use std::{
        os::unix::fs::{symlink, PermissionsExt},
        path::PathBuf,
    };

    use super::*;

    const COMMIT_A: &str = "4f1c3d5e6a7b8c9d0e1f2a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4c5d6e7f";
    const COMMIT_B: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn roots(root: &Path) -> SourceRoots {
        SourceRoots {
            root: root.to_owned(),
            ..SourceRoots::default()
        }
    }

    /// Deploys `app_id` in `installation` the way flatpak lays it out, returning the app's
    /// executable and library.
    fn deploy(installation: &Path, app_id: &str, commit: &str) -> [PathBuf; 2] {
        let app = installation.join("app").join(app_id);
        let files = app.join("x86_64/stable").join(commit).join("files");
        fs::create_dir_all(files.join("bin")).unwrap();
        fs::create_dir_all(files.join("lib")).unwrap();
        fs::create_dir_all(files.join("share")).unwrap();
        let binary = files.join("bin/app");
        fs::write(&binary, b"\x7fELF").unwrap();
        fs::set_permissions(&binary, fs::Permissions::from_mode(0o755)).unwrap();
        let library = files.join("lib/libapp.so.2");
        fs::write(&library, b"\x7fELF").unwrap();
        fs::write(files.join("share/app.desktop"), b"[Desktop Entry]").unwrap();
        fs::write(app.join("x86_64/stable").join(commit).join("metadata"), b"").unwrap();
        symlink(commit, app.join("x86_64/stable/active")).unwrap();
        symlink("x86_64/stable", app.join("current")).unwrap();
        [binary, library]
    }

    #[test]
    fn finds_system_and_per_user_deployments() {
        let root = tempfile::tempdir().unwrap();
        let system = deploy(
            &root.path().join(SYSTEM_INSTALLATION),
            "com.example.App",
            COMMIT_A,
        );
        let alice_home = root.path().join("home/alice");
        let alice = deploy(
            &alice_home.join(USER_INSTALLATION),
            "com.example.App",
            COMMIT_B,
        );
        fs::create_dir_all(root.path().join("home/bob")).unwrap();

        let found = flatpak_files("com.example.App", &roots(root.path())).unwrap();
        let mut expected: Vec<PathBuf> = system.into_iter().chain(alice).collect();
        expected.sort();
        assert_eq!(found.files, expected);
        assert!(
            found.problems.warnings.is_empty(),
            "{:?}",
            found.problems.warnings
        );
    }

    #[test]
    fn finds_a_deployment_of_roots_own() {
        let root = tempfile::tempdir().unwrap();
        let installation = root.path().join("root").join(USER_INSTALLATION);
        let [binary, library] = deploy(&installation, "com.tencent.WeChat", COMMIT_A);

        let found = flatpak_files("com.tencent.WeChat", &roots(root.path())).unwrap();
        assert_eq!(found.files, [binary, library]);
    }

    /// A home owned by uid 1000 with an (empty) per-user installation, and a stand-in for
    /// `/usr/bin` holding an executable.
    fn mallory_and_system_binaries(root: &Path) -> (PathBuf, PathBuf) {
        let system_binaries = root.join("usr/bin");
        fs::create_dir_all(&system_binaries).unwrap();
        fs::write(system_binaries.join("bash"), b"").unwrap();
        fs::set_permissions(
            system_binaries.join("bash"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let home = root.join("home/mallory");
        fs::create_dir_all(home.join(USER_INSTALLATION).join("app")).unwrap();
        chown_tree(&home, 1000);
        (home, system_binaries)
    }

    fn chown_tree(path: &Path, uid: u32) {
        std::os::unix::fs::lchown(path, Some(uid), Some(uid)).unwrap();
        if fs::symlink_metadata(path).unwrap().is_dir() {
            for entry in fs::read_dir(path).unwrap() {
                chown_tree(&entry.unwrap().path(), uid);
            }
        }
    }

    #[test]
    fn an_app_directory_that_is_a_symlink_is_not_followed() {
        let root = tempfile::tempdir().unwrap();
        let (home, system_binaries) = mallory_and_system_binaries(root.path());
        let app = home.join(USER_INSTALLATION).join("app/com.tencent.WeChat");
        symlink(&system_binaries, &app).unwrap();
        std::os::unix::fs::lchown(&app, Some(1000), Some(1000)).unwrap();

        let error = flatpak_files("com.tencent.WeChat", &roots(root.path())).unwrap_err();
        assert!(error.contains("is not installed"), "{error}");
        assert!(
            error.contains(&format!("{} is a symlink", app.display())),
            "{error}"
        );
        assert!(!error.contains("bash"), "{error}");
    }

    #[test]
    fn a_symlink_anywhere_in_the_per_user_path_is_not_followed() {
        for component in [
            ".local",
            ".local/share",
            ".local/share/flatpak",
            ".local/share/flatpak/app",
        ] {
            let root = tempfile::tempdir().unwrap();
            let (home, _) = mallory_and_system_binaries(root.path());
            // The real installation, owned by mallory, moved aside and reached through a
            // symlink she made: even her own files are not searched through it.
            let elsewhere = home.join("elsewhere");
            deploy(
                &elsewhere.join(USER_INSTALLATION),
                "com.tencent.WeChat",
                COMMIT_A,
            );
            let linked = home.join(component);
            fs::remove_dir_all(&linked).unwrap();
            symlink(elsewhere.join(component), &linked).unwrap();
            chown_tree(&home, 1000);

            let error = flatpak_files("com.tencent.WeChat", &roots(root.path())).unwrap_err();
            assert!(
                error.contains(&format!("{} is a symlink", linked.display())),
                "{component}: {error}"
            );
        }
    }

    #[test]
    fn a_per_user_app_directory_not_owned_by_the_user_is_not_searched() {
        let root = tempfile::tempdir().unwrap();
        let (home, _) = mallory_and_system_binaries(root.path());
        deploy(
            &home.join(USER_INSTALLATION),
            "com.tencent.WeChat",
            COMMIT_A,
        );
        chown_tree(&home, 1000);
        let app = home.join(USER_INSTALLATION).join("app/com.tencent.WeChat");
        std::os::unix::fs::chown(&app, Some(0), Some(0)).unwrap();

        let error = flatpak_files("com.tencent.WeChat", &roots(root.path())).unwrap_err();
        assert!(error.contains("is not installed"), "{error}");
        assert!(error.contains("not searched: owned by uid 0"), "{error}");
    }

    #[test]
    fn a_file_in_a_users_installation_owned_by_someone_else_is_left_out() {
        let root = tempfile::tempdir().unwrap();
        let (home, _) = mallory_and_system_binaries(root.path());
        let [binary, library] = deploy(
            &home.join(USER_INSTALLATION),
            "com.tencent.WeChat",
            COMMIT_A,
        );
        chown_tree(&home, 1000);
        // What a hard link to a system program would look like.
        std::os::unix::fs::chown(&library, Some(0), Some(0)).unwrap();

        let found = flatpak_files("com.tencent.WeChat", &roots(root.path())).unwrap();
        assert_eq!(found.files, [binary]);
        let warning = format!("{}: owned by uid 0, not by uid 1000", library.display());
        assert!(
            found.problems.warnings.iter().any(|w| w.contains(&warning)),
            "{:?}",
            found.problems.warnings
        );
    }

    #[test]
    fn swapping_the_app_directory_for_a_symlink_after_it_is_opened_changes_nothing() {
        let root = tempfile::tempdir().unwrap();
        let (home, system_binaries) = mallory_and_system_binaries(root.path());
        let [binary, library] = deploy(
            &home.join(USER_INSTALLATION),
            "com.tencent.WeChat",
            COMMIT_A,
        );
        chown_tree(&home, 1000);
        let mut problems = Problems::default();
        let homes = home_directories(&roots(root.path()), &mut problems);
        let mallory = homes.iter().find(|h| h.path == home).unwrap();
        let app = user_app_directory(mallory, "com.tencent.WeChat", &mut problems).unwrap();

        // The moment the attack needs: between the ownership check and the walk.
        let app_path = app.path.clone();
        fs::rename(&app_path, home.join("moved")).unwrap();
        symlink(&system_binaries, &app_path).unwrap();
        let mut found = SourceFiles::default();
        found.add_walked(app, Some(1000));

        assert!(
            found.problems.warnings.is_empty(),
            "{:?}",
            found.problems.warnings
        );
        let identity = |path: &Path| {
            crate::identity::FileIdentity::of_file(&fs::File::open(path).unwrap()).unwrap()
        };
        let moved = home.join("moved");
        let mut identities: Vec<_> = found.identified.values().copied().collect();
        identities.sort_by_key(|identity| identity.key.ino);
        let mut expected = [binary, library]
            .map(|path| identity(&moved.join(path.strip_prefix(&app_path).unwrap())));
        expected.sort_by_key(|identity| identity.key.ino);
        assert_eq!(identities, expected);
        assert!(!found
            .identified
            .values()
            .any(|found| *found == identity(&system_binaries.join("bash"))));
    }

    #[test]
    fn a_missing_app_is_an_error_naming_it_and_where_it_was_looked_for() {
        let root = tempfile::tempdir().unwrap();
        deploy(
            &root.path().join(SYSTEM_INSTALLATION),
            "com.example.Other",
            COMMIT_A,
        );
        fs::create_dir_all(root.path().join("home/alice")).unwrap();

        let error = flatpak_files("com.tencent.WeChat", &roots(root.path())).unwrap_err();
        assert!(
            error.contains("flatpak app `com.tencent.WeChat` is not installed"),
            "{error}"
        );
        assert!(error.contains("var/lib/flatpak"), "{error}");
        assert!(error.contains("home/alice"), "{error}");
    }

    #[test]
    fn an_invalid_id_is_refused_before_any_lookup() {
        let error = flatpak_files("../../usr", &SourceRoots::default()).unwrap_err();
        assert!(error.contains("not a valid Flatpak app id"), "{error}");
    }

    #[test]
    fn app_ids() {
        for valid in [
            "com.tencent.WeChat",
            "org.mozilla.firefox",
            "org.gnome.Platform",
            "_org.example.App",
            "io.github.user_name.my-app",
            "org.example.App2",
        ] {
            assert_eq!(validate_flatpak_id(valid), Ok(()), "{valid}");
        }
        for invalid in [
            "",
            "com.tencent",
            "WeChat",
            "../etc",
            "com.tencent/WeChat",
            "com..WeChat",
            ".com.tencent.WeChat",
            "com.tencent.WeChat.",
            "com.1tencent.WeChat",
            "com.ten-cent.WeChat",
            "com.tencent.We Chat",
            "com.tencent.WeChat\n",
            &format!("com.tencent.{}", "a".repeat(MAX_ID_LENGTH)),
        ] {
            let error = validate_flatpak_id(invalid).unwrap_err();
            assert!(
                error.contains("not a valid Flatpak app id"),
                "{invalid:?}: {error}"
            );
        }
    }

    /// A runtime deployment `<installation>/runtime/<id>/x86_64/<branch>/<commit>/files` with a
    /// loader; returns it.
    fn deploy_runtime(installation: &Path, id: &str, branch: &str) -> PathBuf {
        let files = installation
            .join("runtime")
            .join(id)
            .join("x86_64")
            .join(branch)
            .join(COMMIT_B)
            .join("files/lib");
        fs::create_dir_all(&files).unwrap();
        let loader = files.join("ld-linux-x86-64.so.2");
        fs::write(&loader, b"\x7fELF").unwrap();
        loader
    }

    #[test]
    fn an_allow_rule_trusts_the_system_deployment_and_the_runtimes_it_runs_on() {
        let root = tempfile::tempdir().unwrap();
        let system = root.path().join(SYSTEM_INSTALLATION);
        let [binary, library] = deploy(&system, "com.example.App", COMMIT_A);
        fs::write(
            system
                .join("app/com.example.App/x86_64/stable")
                .join(COMMIT_A)
                .join("metadata"),
            "[Application]\nname=com.example.App\nruntime=org.example.Platform/x86_64/24.08\n\
             sdk=org.example.Sdk/x86_64/24.08\n\n[Extension org.example.App.Locale]\n\
             runtime=org.example.Unrelated/x86_64/1\n",
        )
        .unwrap();
        let platform = deploy_runtime(&system, "org.example.Platform", "24.08");
        let graphics = deploy_runtime(&system, "org.example.Platform.GL.default", "24.08");
        let sdk = deploy_runtime(&system, "org.example.Sdk", "24.08");
        let lookalike = deploy_runtime(&system, "org.example.PlatformX", "1");
        // A user's installation of the same id, with contents of their choosing.
        let mallory = deploy(
            &root.path().join("home/mallory").join(USER_INSTALLATION),
            "com.example.App",
            COMMIT_B,
        );

        let found = allowed_flatpak_files("com.example.App", &roots(root.path())).unwrap();
        let mut expected = vec![binary, library, platform, graphics];
        expected.sort();
        assert_eq!(found.files, expected);
        for other in [sdk, lookalike].into_iter().chain(mallory) {
            assert!(!found.files.contains(&other), "{other:?}");
        }
        // Banned, every copy counts.
        let banned = flatpak_files("com.example.App", &roots(root.path())).unwrap();
        assert_eq!(banned.files.len(), 4);
    }

    #[test]
    fn an_allow_rule_needs_the_system_installation_and_says_which_runtime_is_missing() {
        let root = tempfile::tempdir().unwrap();
        deploy(
            &root.path().join("home/alice").join(USER_INSTALLATION),
            "com.example.App",
            COMMIT_A,
        );
        let error = allowed_flatpak_files("com.example.App", &roots(root.path())).unwrap_err();
        assert!(error.contains("trusts no user's installation"), "{error}");

        let system = root.path().join(SYSTEM_INSTALLATION);
        deploy(&system, "com.example.App", COMMIT_A);
        fs::write(
            system
                .join("app/com.example.App/x86_64/stable")
                .join(COMMIT_A)
                .join("metadata"),
            "[Application]\nruntime=org.example.Platform/x86_64/24.08\n",
        )
        .unwrap();
        let found = allowed_flatpak_files("com.example.App", &roots(root.path())).unwrap();
        assert_eq!(found.files.len(), 2);
        assert!(
            found.problems.warnings.iter().any(|warning| warning
                .contains("runs on runtime `org.example.Platform`, which is not installed")),
            "{:?}",
            found.problems.warnings
        );
    }
}
