//! rpm's database, through the `rpm` command: its on-disk format has changed over the years
//! (Berkeley DB, NDB, SQLite) and the command is the one stable way to read it.

use std::{ffi::OsStr, io::ErrorKind, os::unix::ffi::OsStrExt, path::PathBuf, process::Command};

use super::{packages::Lookup, SourceRoots};

/// Where rpm keeps its database: the current location, then the traditional one.
const DATABASE_DIRS: [&str; 2] = ["usr/lib/sysimage/rpm", "var/lib/rpm"];

/// The paths `name` installed, every installed architecture included, as `rpm -ql` lists them.
/// Without an rpm database rpm is not this system's package manager (Debian can have the `rpm`
/// command, or busybox's applet of that name, for unpacking packages), so it is not asked.
pub(super) fn listed_paths(name: &str, roots: &SourceRoots) -> Lookup {
    if !DATABASE_DIRS
        .iter()
        .any(|dir| roots.root.join(dir).is_dir())
    {
        return Lookup::Absent;
    }
    let output = Command::new("rpm")
        // Its "is not installed" message is translated otherwise.
        .env("LC_ALL", "C")
        .arg("--root")
        .arg(&roots.root)
        .arg("--query")
        .arg("--list")
        .arg(name)
        .output();
    match output {
        Ok(output) => parse_query_list(output.status.success(), &output.stdout, &output.stderr),
        Err(error) if error.kind() == ErrorKind::NotFound => Lookup::Absent,
        Err(error) => Lookup::Failed(format!("running `rpm`: {error}")),
    }
}

/// Interprets `rpm -ql`: one absolute path per line (as bytes: paths need not be UTF-8), or
/// `(contains no files)`; `package <name> is not installed` with a failure status (on stdout in
/// current rpm, on stderr in old ones).
fn parse_query_list(succeeded: bool, stdout: &[u8], stderr: &[u8]) -> Lookup {
    if succeeded {
        return Lookup::Installed(
            stdout
                .split(|&byte| byte == b'\n')
                .filter(|line| line.starts_with(b"/"))
                .map(|line| PathBuf::from(OsStr::from_bytes(line)))
                .collect(),
        );
    }
    let stdout = String::from_utf8_lossy(stdout);
    let stderr = String::from_utf8_lossy(stderr);
    let not_installed = stdout
        .lines()
        .chain(stderr.lines())
        .any(|line| line.contains("package ") && line.ends_with(" is not installed"));
    if not_installed {
        return Lookup::NotInstalled;
    }
    let reason = stderr.trim();
    Lookup::Failed(if reason.is_empty() {
        "`rpm --query --list` failed without a message".to_owned()
    } else {
        reason.to_owned()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn installed_paths(lookup: Lookup) -> Vec<PathBuf> {
        match lookup {
            Lookup::Installed(paths) => paths,
            _ => panic!("expected Installed"),
        }
    }

    #[test]
    fn lists_every_path_of_an_installed_package() {
        let stdout = b"/usr/bin/which\n/usr/share/doc/which\n/usr/share/doc/which/AUTHORS\n\
            /usr/share/info/which.info.gz\n/usr/share/licenses/which\n\
            /usr/share/licenses/which/COPYING\n/usr/share/man/man1/which.1.gz\n";
        let paths = installed_paths(parse_query_list(true, stdout, b""));
        assert_eq!(paths.len(), 7);
        assert_eq!(paths[0], PathBuf::from("/usr/bin/which"));
        assert_eq!(paths[6], PathBuf::from("/usr/share/man/man1/which.1.gz"));
    }

    #[test]
    fn a_package_without_files_lists_nothing() {
        let paths = installed_paths(parse_query_list(true, b"(contains no files)\n", b""));
        assert!(paths.is_empty());
    }

    #[test]
    fn paths_need_not_be_utf8() {
        let paths = installed_paths(parse_query_list(true, b"/opt/\xff/tool\n", b""));
        assert_eq!(paths[0].as_os_str().as_bytes(), b"/opt/\xff/tool");
    }

    #[test]
    fn a_missing_package_is_not_installed() {
        let current = parse_query_list(false, b"package wechat is not installed\n", b"");
        assert!(matches!(current, Lookup::NotInstalled));
        let old = parse_query_list(false, b"", b"error: package wechat is not installed\n");
        assert!(matches!(old, Lookup::NotInstalled));
    }

    #[test]
    fn a_database_error_is_a_failure_with_rpms_message() {
        let stderr = b"error: cannot open Packages database in /var/lib/rpm\n";
        match parse_query_list(false, b"", stderr) {
            Lookup::Failed(reason) => {
                assert_eq!(
                    reason,
                    "error: cannot open Packages database in /var/lib/rpm"
                );
            }
            _ => panic!("expected Failed"),
        }
    }

    #[test]
    fn without_an_rpm_database_rpm_is_not_asked() {
        let root = tempfile::tempdir().unwrap();
        let roots = SourceRoots {
            root: root.path().to_owned(),
            ..SourceRoots::default()
        };
        assert!(matches!(listed_paths("anything", &roots), Lookup::Absent));
    }
}
