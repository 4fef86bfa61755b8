//! Lockdown follows package updates at the moment they happen. A package manager (its
//! executable's `ALLOWED_FILES` entry carries `entry_flags::PACKAGE_MANAGER`, which the daemon
//! sets on dpkg while installed packages are a trust source) running as root puts a package's
//! files in place by renaming each over its path: the file renamed in is trusted at once, and the
//! file it replaces loses its trust; a file it unlinks loses its trust. So an upgraded program
//! runs the moment it is in place and a copy kept of the old version (a hard link) is refused
//! from then on, without waiting for the daemon, whose refresh after dpkg's database changes then
//! settles the trusted set from the package lists.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use blocker_common::{counter, entry_flags, setting, Action, BanEntry, HookArgument};

use crate::{
    hook_arguments,
    kernel_types::{Dentry, Inode, Task},
    maps::{increment, setting, ALLOWED_FILES},
    report::ALLOW,
};

/// `S_IFMT` and `S_IFREG` of `i_mode`: only regular files run.
const FILE_TYPE_MASK: u32 = 0o170_000;
const REGULAR_FILE: u32 = 0o100_000;

#[lsm(hook = "inode_rename")]
pub fn trust_package_manager_renames(ctx: LsmContext) -> i32 {
    if package_manager().is_none() {
        return ALLOW;
    }
    let mut trusted = BanEntry {
        rule_id: 0,
        action: Action::Allow.wire(),
        generation: 0,
        flags: entry_flags::GENERATION_KNOWN,
    };
    if let Some(key) = hook_arguments::dentry(&ctx, HookArgument::InodeRenameNewDentry)
        .and_then(Dentry::inode)
        .and_then(Inode::key)
    {
        // A new version of the package manager itself manages packages too.
        // SAFETY: the entry is copied out at once.
        if let Some(replaced) = unsafe { ALLOWED_FILES.get(&key) }.copied() {
            trusted.flags |= replaced.flags & entry_flags::PACKAGE_MANAGER;
        }
        if ALLOWED_FILES.remove(&key).is_ok() {
            increment(counter::PACKAGE_TRUST_CHANGES);
        }
    }
    let Some(moved) =
        hook_arguments::dentry(&ctx, HookArgument::InodeRenameOldDentry).and_then(Dentry::inode)
    else {
        return ALLOW;
    };
    let regular = moved
        .mode()
        .is_some_and(|mode| mode & FILE_TYPE_MASK == REGULAR_FILE);
    if let (true, Some(key), Some(generation)) = (regular, moved.key(), moved.generation()) {
        trusted.generation = generation;
        if ALLOWED_FILES.insert(&key, &trusted, 0).is_ok() {
            increment(counter::PACKAGE_TRUST_CHANGES);
        }
    }
    ALLOW
}

#[lsm(hook = "inode_unlink")]
pub fn distrust_package_manager_unlinks(ctx: LsmContext) -> i32 {
    if package_manager().is_none() {
        return ALLOW;
    }
    if let Some(key) = hook_arguments::dentry(&ctx, HookArgument::InodeUnlinkDentry)
        .and_then(Dentry::inode)
        .and_then(Inode::key)
    {
        if ALLOWED_FILES.remove(&key).is_ok() {
            increment(counter::PACKAGE_TRUST_CHANGES);
        }
    }
    ALLOW
}

/// Whether the current task is a package manager acting as root, while lockdown is on. The
/// check of root matters: dpkg runs for any user (`--force-not-root`), who could otherwise
/// have it rename their own files into trust. `fsuid` is the uid of the initial user
/// namespace, so a user namespace's root is not root here.
#[inline(always)]
fn package_manager() -> Option<()> {
    if setting(setting::LOCKDOWN) == Action::Allow.wire() {
        return None;
    }
    let task = Task::current()?;
    if task.credentials()?.fsuid()? != 0 {
        return None;
    }
    let executable = task.executable_inode()?;
    // SAFETY: the entry is copied out at once.
    let entry = unsafe { ALLOWED_FILES.get(&executable.key()?) }.copied()?;
    (entry.flags & entry_flags::PACKAGE_MANAGER != 0
        && entry.matches_generation(executable.generation()?))
    .then_some(())
}
