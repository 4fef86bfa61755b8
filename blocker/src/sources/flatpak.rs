//! Flatpak apps: every deployment (architecture, branch, commit) of an app id, in the system
//! installation and in each user's. An app's deployments all live under
//! `<installation>/app/<id>/`, reached through the `current` and `active` symlinks that the
//! walk does not follow, so each deployed file is found once.

use crate::escape::escaped;
use std::{
    fs::{self, Metadata},
    io::ErrorKind,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

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
    let mut installed = false;

    let system_app = roots
        .root
        .join(SYSTEM_INSTALLATION)
        .join("app")
        .join(app_id);
    if directory_metadata(&system_app, &mut found.warnings).is_some() {
        installed = true;
        found.add_walked(&system_app);
    }
    let homes = home_directories(roots, &mut found.warnings);
    for home in &homes {
        if let Some(user_app) = user_app_directory(home, app_id, &mut found.warnings) {
            installed = true;
            found.add_walked(&user_app);
        }
    }

    if installed {
        return Ok(found.finish());
    }
    let homes: Vec<String> = homes
        .iter()
        .map(|home| escaped(&home).to_string())
        .collect();
    let message = format!(
        "flatpak app `{app_id}` is not installed (searched {} and {USER_INSTALLATION} in {})",
        escaped(&roots.root.join(SYSTEM_INSTALLATION)),
        if homes.is_empty() {
            "no home directory".to_owned()
        } else {
            homes.join(", ")
        }
    );
    Err(found.not_found(message))
}

/// `/root` and every directory in `/home`, sorted, where they exist.
fn home_directories(roots: &SourceRoots, warnings: &mut Vec<String>) -> Vec<PathBuf> {
    let mut homes = Vec::new();
    let root_home = roots.root.join("root");
    if root_home.is_dir() {
        homes.push(root_home);
    }
    let home = roots.root.join("home");
    match fs::read_dir(&home) {
        Ok(entries) => {
            let mut users = Vec::new();
            for entry in entries {
                match entry {
                    Ok(entry) if entry.path().is_dir() => users.push(entry.path()),
                    Ok(_) => {}
                    Err(error) => warnings.push(format!("{}: {error}", escaped(&home))),
                }
            }
            users.sort();
            homes.extend(users);
        }
        Err(error) if error.kind() == ErrorKind::NotFound => {}
        Err(error) => warnings.push(format!("{}: {error}", escaped(&home))),
    }
    homes
}

/// `<home>/.local/share/flatpak/app/<app_id>` if it is a directory owned by the home's owner.
/// The user controls everything below the home and could make the app directory a symlink to
/// `/usr/bin`, which would get all of it banned; a directory they own holds only files they
/// could have put anywhere, and the walk follows no symlink inside it.
fn user_app_directory(home: &Path, app_id: &str, warnings: &mut Vec<String>) -> Option<PathBuf> {
    let app = home.join(USER_INSTALLATION).join("app").join(app_id);
    let app_owner = directory_metadata(&app, warnings)?.uid();
    let home_owner = directory_metadata(home, warnings)?.uid();
    if app_owner != home_owner {
        warnings.push(format!(
            "{}: not searched: owned by uid {app_owner}, not by {}'s owner (uid {home_owner}), \
             so it may lead to files that are not the app's",
            escaped(&app),
            escaped(&home)
        ));
        return None;
    }
    Some(app)
}

/// The metadata of `path`, following symlinks, if it is a directory. Absence is normal; other
/// failures are warnings.
fn directory_metadata(path: &Path, warnings: &mut Vec<String>) -> Option<Metadata> {
    match fs::metadata(path) {
        Ok(metadata) if metadata.is_dir() => Some(metadata),
        Ok(_) => None,
        Err(error) if matches!(error.kind(), ErrorKind::NotFound | ErrorKind::NotADirectory) => {
            None
        }
        Err(error) => {
            warnings.push(format!("{}: {error}", escaped(&path)));
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{symlink, PermissionsExt};

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
        assert!(found.warnings.is_empty(), "{:?}", found.warnings);
    }

    #[test]
    fn finds_a_deployment_of_roots_own() {
        let root = tempfile::tempdir().unwrap();
        let installation = root.path().join("root").join(USER_INSTALLATION);
        let [binary, library] = deploy(&installation, "com.tencent.WeChat", COMMIT_A);

        let found = flatpak_files("com.tencent.WeChat", &roots(root.path())).unwrap();
        assert_eq!(found.files, [binary, library]);
    }

    #[test]
    fn a_per_user_app_directory_not_owned_by_the_user_is_not_searched() {
        let root = tempfile::tempdir().unwrap();
        let system_binaries = root.path().join("usr/bin");
        fs::create_dir_all(&system_binaries).unwrap();
        fs::write(system_binaries.join("bash"), b"").unwrap();
        fs::set_permissions(
            system_binaries.join("bash"),
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        let home = root.path().join("home/mallory");
        let apps = home.join(USER_INSTALLATION).join("app");
        fs::create_dir_all(&apps).unwrap();
        symlink(&system_binaries, apps.join("com.tencent.WeChat")).unwrap();
        std::os::unix::fs::chown(&home, Some(1000), Some(1000)).unwrap();

        let error = flatpak_files("com.tencent.WeChat", &roots(root.path())).unwrap_err();
        assert!(error.contains("is not installed"), "{error}");
        assert!(error.contains("not searched: owned by uid 0"), "{error}");
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
}
