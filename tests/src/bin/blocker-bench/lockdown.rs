//! The trust set of the lockdown figures: what a desktop's package database would vouch for,
//! stood in for by the bench's own files, and how blocker and fapolicyd are each told to trust
//! exactly that set and refuse every other exec.
//!
//! The set is the tree of empty executable files the large policy bans elsewhere (100,000 in
//! the bench's plans), the exec target, and the driver's own executable and libraries: every
//! exec loop is a worker this binary starts by exec'ing itself, and lockdown refuses a worker
//! whose program or loader it does not trust like any other.

use std::{
    fs,
    io::Read,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use sha2::{Digest, Sha256};

use crate::fapolicyd;

pub struct TrustSet {
    /// Every executable candidate below it is trusted.
    pub tree: PathBuf,
    /// Trusted one by one.
    pub files: Vec<PathBuf>,
}

impl TrustSet {
    /// The tree, `target`, and the files mapped executable in this process.
    pub fn new(tree: &Path, target: &Path) -> Result<Self> {
        let mut files = vec![target.to_owned()];
        for file in executable_mappings(&fs::read_to_string("/proc/self/maps")?) {
            if !files.contains(&file) {
                files.push(file);
            }
        }
        Ok(Self {
            tree: tree.to_owned(),
            files,
        })
    }

    /// A lockdown policy: `default = "deny"` and one allow rule naming the whole set.
    pub fn blocker_policy(&self) -> String {
        let paths: Vec<String> = self
            .files
            .iter()
            .map(|file| format!("{:?}", file.display().to_string()))
            .collect();
        format!(
            "name = \"bench-lockdown\"\ndefault = \"deny\"\n\n[[rule]]\nid = \"trusted\"\n\
             action = \"allow\"\npath_prefixes = [{:?}]\npaths = [{}]\n",
            self.tree.display().to_string(),
            paths.join(", ")
        )
    }

    /// `fapolicyd.trust` listing every file of the set, with its size and content hash, as
    /// `fapolicyd-cli --file add` would; returns it and how many files it lists.
    pub fn fapolicyd_trust(&self) -> Result<(String, u64)> {
        let mut listed = self.files.clone();
        list_files(&self.tree, &mut listed)?;
        let mut trust = String::new();
        for file in &listed {
            let (size, sha256) = size_and_sha256(file)?;
            trust.push_str(&fapolicyd::trust_line(file, size, &sha256)?);
        }
        Ok((trust, listed.len() as u64))
    }
}

/// The files a process maps executable, from its `/proc/PID/maps`: its program, the loader and
/// its libraries.
fn executable_mappings(maps: &str) -> Vec<PathBuf> {
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let permissions = fields.nth(1)?;
            let path = fields.nth(3)?;
            (permissions.contains('x') && path.starts_with('/')).then(|| PathBuf::from(path))
        })
        .collect()
}

/// Every regular file below `dir`, appended to `files`.
fn list_files(dir: &Path, files: &mut Vec<PathBuf>) -> Result<()> {
    for entry in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            list_files(&entry.path(), files)?;
        } else if kind.is_file() {
            files.push(entry.path());
        }
    }
    Ok(())
}

fn size_and_sha256(path: &Path) -> Result<(u64, String)> {
    let mut file = fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut hasher = Sha256::new();
    let mut buffer = vec![0; 1 << 16];
    let mut size = 0;
    loop {
        let read = file
            .read(&mut buffer)
            .with_context(|| format!("reading {}", path.display()))?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
        size += read as u64;
    }
    let hex = hasher
        .finalize()
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    Ok((size, hex))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_files_mapped_executable() {
        let maps = "\
55d0c0a00000-55d0c0a20000 r--p 00000000 fd:01 1234 /bench/blocker-bench
55d0c0a20000-55d0c0b20000 r-xp 00020000 fd:01 1234 /bench/blocker-bench
7f1e2c000000-7f1e2c021000 rw-p 00000000 00:00 0
7f1e2c400000-7f1e2c428000 r--p 00000000 fd:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
7f1e2c428000-7f1e2c5bd000 r-xp 00028000 fd:01 99 /usr/lib/x86_64-linux-gnu/libc.so.6
7ffd4a9f0000-7ffd4a9f2000 r-xp 00000000 00:00 0                          [vdso]
";
        assert_eq!(
            executable_mappings(maps),
            [
                PathBuf::from("/bench/blocker-bench"),
                PathBuf::from("/usr/lib/x86_64-linux-gnu/libc.so.6")
            ]
        );
    }

    #[test]
    fn allows_the_tree_and_each_file_in_a_policy_that_denies_by_default() {
        let set = TrustSet {
            tree: PathBuf::from("/w/many"),
            files: vec![
                PathBuf::from("/w/exec-target"),
                PathBuf::from("/lib/libc.so.6"),
            ],
        };
        assert_eq!(
            set.blocker_policy(),
            "name = \"bench-lockdown\"\ndefault = \"deny\"\n\n[[rule]]\nid = \"trusted\"\n\
             action = \"allow\"\npath_prefixes = [\"/w/many\"]\n\
             paths = [\"/w/exec-target\", \"/lib/libc.so.6\"]\n"
        );
    }
}
