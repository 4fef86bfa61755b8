//! The two checks of files no rule bans, applied by the exec and executable-mapping checks of
//! both backends; a file `ALLOWED_FILES` names skips both. Lockdown (`setting::LOCKDOWN`): no
//! other file may run. Trusted-path execution (`setting::UNTRUSTED_PATHS`): a file may run only
//! if it and every directory above it, across mounts, are owned by root and writable by no one
//! else. So a copy a user made (in a home directory, `/tmp`, `/dev/shm`, a user-owned tree
//! under `/opt`) cannot run, however its bytes were changed.

use blocker_common::{
    setting, trusted_path, Action, FileKey, LOCKDOWN_RULE_ID, UNTRUSTED_PATH_RULE_ID,
};

use crate::{
    kernel_types::{Dentry, File, Inode},
    maps::{setting, ALLOWED_FILES},
    report::{Ban, Offender},
};

/// The ban of `file` (inode `inode`, identity `key`) by lockdown or the trusted-path setting,
/// the stricter, unless `ALLOWED_FILES` names it. Lockdown's `deny` needs no walk; otherwise an
/// untrusted path is reported with what made it so (its setting is then at least as strict as
/// lockdown's `audit` or `allow`), and lockdown's `audit` covers the rest.
#[inline(always)]
pub fn unallowed(file: File, inode: Inode, key: FileKey) -> Option<Ban> {
    let lockdown = setting(setting::LOCKDOWN);
    let untrusted_paths = setting(setting::UNTRUSTED_PATHS);
    let allow = Action::Allow.wire();
    if (lockdown == allow && untrusted_paths == allow) || allowed(inode, key) {
        return None;
    }
    if lockdown == Action::Deny.wire() {
        return Some(Ban::by_rule(key, LOCKDOWN_RULE_ID, lockdown));
    }
    if untrusted_paths != allow {
        if let Some(offender) = offender(file) {
            return Some(Ban {
                offender,
                ..Ban::by_rule(key, UNTRUSTED_PATH_RULE_ID, untrusted_paths)
            });
        }
    }
    (lockdown != allow).then(|| Ban::by_rule(key, LOCKDOWN_RULE_ID, lockdown))
}

/// Whether an `allow` rule names the inode (generation included).
fn allowed(inode: Inode, key: FileKey) -> bool {
    // SAFETY: the entry is copied out at once.
    let Some(entry) = (unsafe { ALLOWED_FILES.get(&key) }).copied() else {
        return false;
    };
    inode
        .generation()
        .is_some_and(|generation| entry.matches_generation(generation))
}

/// The first inode on the way from `file` up to the root, across mounts, that is not owned by
/// root or is writable by group or others; `None` if every one is trusted. A walk that cannot
/// read a step, or is longer than `trusted_path::MAX_DEPTH`, is untrusted.
fn offender(file: File) -> Option<Offender> {
    let unreadable = Offender {
        owner: u32::MAX,
        mode: 0,
        depth: trusted_path::WALK_UNFINISHED,
    };
    let Some(path) = file.path() else {
        return Some(unreadable);
    };
    let (Some(mut mount), Some(mut dentry)) = (path.mount(), path.dentry()) else {
        return Some(unreadable);
    };
    for depth in 0..trusted_path::MAX_DEPTH {
        let Some((owner, mode)) = owner_and_mode(dentry) else {
            return Some(unreadable);
        };
        if !trusted_path::trusted(owner, mode) {
            return Some(Offender { owner, mode, depth });
        }
        if Some(dentry) == mount.root() {
            // The root of a mount: on to the directory it is mounted on, if any.
            match mount.mountpoint() {
                Some((parent, covered)) => {
                    mount = parent;
                    dentry = covered;
                }
                None => return None,
            }
            continue;
        }
        match dentry.parent() {
            Some(parent) if parent != dentry => dentry = parent,
            // The root of its filesystem that is not a mount's root: a disconnected dentry.
            _ => return Some(unreadable),
        }
    }
    Some(unreadable)
}

#[inline(always)]
fn owner_and_mode(dentry: Dentry) -> Option<(u32, u32)> {
    let inode = dentry.inode()?;
    Some((inode.owner()?, inode.mode()?))
}
