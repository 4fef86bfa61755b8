//! Tamper protection: what the protection programs guard, set in their maps.

use std::{
    collections::BTreeMap,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::maps::{Array, MapData};
use blocker_common::{inode_guard, names, BpfObject, FileKey, Protection};

use super::{coverage::State, map_sync::sync_kernel_map, pins, Enforcer};
use crate::{
    cgroups,
    identity::{self, FileIdentity},
    sorted_map::SortedMap,
};

impl Enforcer {
    /// Turns tamper protection on for this process: no other process may signal or trace it,
    /// get descriptors of blocker's maps, programs or links, or change `directories` and the pin
    /// directories, once pinned (their entries and the files in them), or the blocker binary;
    /// nor rename, remove, mount over or unmount the directories on the way to each. Processes
    /// running that binary may, and, for signals, the service manager (pid 1).
    /// Protection needs its programs: where none is attached (the kill backend, adopted pins
    /// without them), the daemon runs unprotected and `features` says why; where some are
    /// missing, it names them. Enforcement never waits on protection.
    pub fn protect(&mut self, directories: &[PathBuf]) -> Result<()> {
        if self.features.tamper_protection.state == State::Off {
            log::warn!(
                "tamper protection is off: {}",
                self.features.tamper_protection.describe()
            );
            return Ok(());
        }
        let binary_path =
            std::fs::read_link("/proc/self/exe").context("finding the blocker binary")?;
        let binary = FileIdentity::of_path(Path::new("/proc/self/exe"))
            .context("finding the blocker binary")?;
        let pin_directories = self.pinned.as_deref().map(pins::directories);
        let mut whole = vec![(binary.key, binary_path.clone())];
        for directory in directories.iter().chain(pin_directories.iter().flatten()) {
            whole.push((key_of(directory)?, directory.clone()));
        }
        let mut inodes = BTreeMap::new();
        let mut protected = BTreeMap::new();
        // The directories on the way to each, up to `/`, guarded after the whole ones so that
        // one both (a pin directory in another) stays whole.
        let on_the_way = std::iter::once(binary_path)
            .chain(directories.iter().cloned())
            .chain(pin_directories.into_iter().flatten());
        for path in on_the_way {
            let path = std::fs::canonicalize(&path)
                .with_context(|| format!("protecting {}", path.display()))?;
            for ancestor in path.ancestors().skip(1) {
                let key = key_of(ancestor)?;
                inodes.insert(key, inode_guard::PATH);
                protected.insert(key, ancestor.to_owned());
            }
        }
        for (key, path) in whole {
            inodes.insert(key, inode_guard::WHOLE);
            protected.insert(key, path);
        }
        let cgroups = cgroups::own().unwrap_or_else(|error| {
            log::warn!("the daemon's cgroup is not guarded: {error:#}");
            Vec::new()
        });
        let mut cgroup_files = BTreeMap::new();
        for entry in &cgroups {
            let key = key_of(&entry.path)?;
            inodes.insert(key, entry.guard);
            if entry.guard == inode_guard::CGROUP {
                protected.insert(key, entry.path.clone());
            }
        }
        for path in cgroups::control_files(&cgroups) {
            // A file gone meanwhile (a controller turned off) needs no name.
            if let Ok(key) = identity::key_of_path(&path) {
                cgroup_files.insert(key, path);
            }
        }
        let mut objects = BTreeMap::new();
        for (name, link) in &self.links {
            let link = link.info().context("reading a link's id")?;
            let program = aya::programs::loaded_programs()
                .filter_map(Result::ok)
                .find(|program| program.id() == link.program_id())
                .with_context(|| format!("the kernel does not list program {name}"))?;
            objects.insert(BpfObject::Link.key(link.id()), 0u32);
            objects.insert(BpfObject::Program.key(program.id()), 0);
            for map in program.map_ids()?.unwrap_or_default() {
                objects.insert(BpfObject::Map.key(map), 0);
            }
        }
        let (mut installed_inodes, mut installed_objects) =
            (SortedMap::default(), SortedMap::default());
        sync_kernel_map(
            self.map_mut(names::PROTECTED_INODES_MAP)?,
            &mut installed_inodes,
            &inodes.into_iter().collect(),
        )
        .context("filling the protected inodes")?;
        sync_kernel_map(
            self.map_mut(names::PROTECTED_BPF_OBJECTS_MAP)?,
            &mut installed_objects,
            &objects.into_iter().collect(),
        )
        .context("filling the protected BPF objects")?;
        self.set_protection(Protection {
            daemon_tgid: std::process::id(),
            daemon_mount_namespace: mount_namespace("self")
                .context("reading the daemon's mount namespace")?,
            trusted_exe: binary.key,
            init_mount_namespace: mount_namespace("1").unwrap_or_else(|error| {
                log::warn!(
                    "reading pid 1's mount namespace: {error:#}; mounts there over the \
                     directories on the way to the protected ones are not refused"
                );
                0
            }),
            daemon_gone: 0,
        })?;
        self.protected = protected;
        self.cgroup_files = cgroup_files;
        Ok(())
    }

    /// What tamper protection guards by identity (but the files in the daemon's cgroups); empty
    /// while off.
    pub fn protected(&self) -> &BTreeMap<FileKey, PathBuf> {
        &self.protected
    }

    /// What tamper protection guards by identity, the files in the daemon's cgroups included, for
    /// naming it in events.
    pub fn named_in_events(&self) -> BTreeMap<FileKey, PathBuf> {
        let mut named = self.cgroup_files.clone();
        named.extend(
            self.protected
                .iter()
                .map(|(key, path)| (*key, path.clone())),
        );
        named
    }

    /// Turns tamper protection off, before a pinned daemon stops through the documented way:
    /// the pins and the policy can then be changed until the next daemon protects them again.
    pub fn unprotect(&mut self) -> Result<()> {
        self.protected.clear();
        self.cgroup_files.clear();
        self.set_protection(Protection::default())
    }

    fn set_protection(&mut self, protection: Protection) -> Result<()> {
        let mut slot: Array<&mut MapData, Protection> =
            Array::try_from(self.map_mut(names::PROTECTION_MAP)?)?;
        slot.set(0, protection, 0)
            .context("setting tamper protection")?;
        Ok(())
    }
}

fn key_of(path: &Path) -> Result<FileKey> {
    identity::key_of_path(path).with_context(|| format!("protecting {}", path.display()))
}

/// The inode number of process `pid`'s mount namespace, which the kernel programs compare.
fn mount_namespace(pid: &str) -> Result<u32> {
    let path = format!("/proc/{pid}/ns/mnt");
    let inode = std::fs::metadata(&path)
        .with_context(|| format!("reading {path}"))?
        .ino();
    u32::try_from(inode).with_context(|| format!("{path} has inode number {inode}"))
}
