//! The cgroups the daemon runs in, for tamper protection: their control files stop, freeze or
//! starve every process in them without a signal (`cgroup.kill`, `cgroup.freeze`, `cpu.max`,
//! `memory.max`), so the kernel programs guard them. Only the unified hierarchy (cgroup v2) is
//! read; it is the only one on Debian 12 and later.

use std::{
    fs,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use blocker_common::inode_guard;

use crate::mounts;

/// The files of a cgroup that other processes' moves and controller changes pass through.
const MEMBERSHIP_FILES: [&str; 3] = ["cgroup.procs", "cgroup.threads", "cgroup.subtree_control"];
const FREEZE_FILE: &str = "cgroup.freeze";
/// Where `/proc/PID/cgroup` names the unified hierarchy: `0::/system.slice/blocker.service`.
const UNIFIED_PREFIX: &str = "0::";

/// One inode to guard, with how, and the path that names it in events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Guarded {
    pub path: PathBuf,
    pub guard: u32,
}

/// The directories of this process's cgroup and of each ancestor below the root (the root has
/// no control file that stops anything), with their membership and freeze files. Empty where no
/// cgroup v2 is mounted.
pub fn own() -> Result<Vec<Guarded>> {
    let table = mounts::table().context("reading this process's mounts")?;
    let Some(mount) = table.of_type("cgroup2") else {
        log::warn!("no cgroup2 filesystem is mounted: the daemon's cgroup is not guarded");
        return Ok(Vec::new());
    };
    let text = fs::read_to_string("/proc/self/cgroup").context("reading /proc/self/cgroup")?;
    let relative = unified_path(&text)?;
    Ok(guarded_below(&mount.mount_point, relative))
}

/// The path of the cgroup in the unified hierarchy, from `/proc/PID/cgroup`'s text.
fn unified_path(text: &str) -> Result<&str> {
    let Some(line) = text.lines().find(|line| line.starts_with(UNIFIED_PREFIX)) else {
        bail!("/proc/self/cgroup names no cgroup v2 (unified) hierarchy");
    };
    Ok(&line[UNIFIED_PREFIX.len()..])
}

fn guarded_below(mount_point: &Path, relative: &str) -> Vec<Guarded> {
    let mut guarded = Vec::new();
    let mut directory = mount_point.to_owned();
    for component in relative
        .split('/')
        .filter(|component| !component.is_empty())
    {
        directory.push(component);
        guarded.push(Guarded {
            path: directory.clone(),
            guard: inode_guard::CGROUP,
        });
        for name in MEMBERSHIP_FILES {
            guarded.push(Guarded {
                path: directory.join(name),
                guard: inode_guard::CGROUP_MEMBERSHIP,
            });
        }
        guarded.push(Guarded {
            path: directory.join(FREEZE_FILE),
            guard: inode_guard::CGROUP_FREEZE,
        });
    }
    guarded
}

/// The control files now in the guarded directories, to name them in events (controllers
/// enabled later add files the kernel guards all the same, named by inode only).
pub fn control_files(guarded: &[Guarded]) -> Vec<PathBuf> {
    guarded
        .iter()
        .filter(|entry| entry.guard == inode_guard::CGROUP)
        .filter_map(|entry| fs::read_dir(&entry.path).ok())
        .flat_map(|entries| entries.filter_map(|entry| Some(entry.ok()?.path())))
        .filter(|path| path.is_file())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_unified_hierarchy_among_v1_lines() {
        let text = "12:pids:/system.slice\n0::/system.slice/blocker.service\n";
        assert_eq!(unified_path(text).unwrap(), "/system.slice/blocker.service");
        assert!(unified_path("4:memory:/user.slice\n").is_err());
    }

    #[test]
    fn guards_each_directory_below_the_root_with_its_special_files() {
        let guarded = guarded_below(Path::new("/sys/fs/cgroup"), "/system.slice/b.service");
        let directories: Vec<_> = guarded
            .iter()
            .filter(|entry| entry.guard == inode_guard::CGROUP)
            .map(|entry| entry.path.to_str().unwrap())
            .collect();
        assert_eq!(
            directories,
            [
                "/sys/fs/cgroup/system.slice",
                "/sys/fs/cgroup/system.slice/b.service"
            ]
        );
        assert!(guarded.contains(&Guarded {
            path: "/sys/fs/cgroup/system.slice/b.service/cgroup.freeze".into(),
            guard: inode_guard::CGROUP_FREEZE,
        }));
        assert_eq!(guarded.len(), 2 * 5);
        assert!(guarded_below(Path::new("/sys/fs/cgroup"), "/").is_empty());
    }
}
