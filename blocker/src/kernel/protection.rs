//! Tamper protection: what the protection programs guard, set in their maps.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};
use aya::maps::{Array, MapData};
use blocker_common::{bpf_object, names, FileKey, Protection};

use super::{coverage::State, pins, sync_map, Enforcer};
use crate::identity::{self, FileIdentity};

impl Enforcer {
    /// Turns tamper protection on for this process: no other process may signal or trace it,
    /// get descriptors of blocker's maps, programs or links, or change `directories` and the pin directories, once pinned (their
    /// entries and the files in them), or the blocker binary, except processes running that
    /// binary and, for signals, the service manager (pid 1).
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
        let mut protected = BTreeMap::from([(binary.key, binary_path)]);
        let pin_directories = self.pinned.as_deref().map(pins::directories);
        for directory in directories.iter().chain(pin_directories.iter().flatten()) {
            let key = identity::key_of_path(directory)
                .with_context(|| format!("protecting {}", directory.display()))?;
            protected.insert(key, directory.clone());
        }
        let inodes: BTreeMap<FileKey, u32> = protected.keys().map(|key| (*key, 0)).collect();
        let mut objects = BTreeMap::new();
        for (name, link) in &self.links {
            let link = link.info().context("reading a link's id")?;
            let program = aya::programs::loaded_programs()
                .filter_map(Result::ok)
                .find(|program| program.id() == link.program_id())
                .with_context(|| format!("the kernel does not list program {name}"))?;
            objects.insert(bpf_object::key(bpf_object::LINK, link.id()), 0u32);
            objects.insert(bpf_object::key(bpf_object::PROGRAM, program.id()), 0);
            for map in program.map_ids()?.unwrap_or_default() {
                objects.insert(bpf_object::key(bpf_object::MAP, map), 0);
            }
        }
        let (mut installed_inodes, mut installed_objects) = (BTreeMap::new(), BTreeMap::new());
        sync_map(
            self.map_mut(names::PROTECTED_INODES_MAP)?,
            &mut installed_inodes,
            &inodes,
        )
        .context("filling the protected inodes")?;
        sync_map(
            self.map_mut(names::PROTECTED_BPF_OBJECTS_MAP)?,
            &mut installed_objects,
            &objects,
        )
        .context("filling the protected BPF objects")?;
        self.set_protection(Protection {
            daemon_tgid: std::process::id(),
            padding: 0,
            trusted_exe: binary.key,
        })?;
        self.protected = protected;
        Ok(())
    }

    /// What tamper protection guards by identity, for naming it in events; empty while off.
    pub fn protected(&self) -> &BTreeMap<FileKey, PathBuf> {
        &self.protected
    }

    /// Turns tamper protection off, before a pinned daemon stops through the documented way:
    /// the pins and the policy can then be changed until the next daemon protects them again.
    pub fn unprotect(&mut self) -> Result<()> {
        self.protected.clear();
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
