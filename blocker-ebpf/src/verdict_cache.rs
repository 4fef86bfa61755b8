//! Content checks through a per-inode verdict cache: a file is hashed once per policy generation,
//! and its verdict (and `allow` entry) dropped whenever the kernel sees it about to change.

use aya_ebpf::{bindings::file, helpers::bpf_ima_file_hash, macros::lsm, programs::LsmContext};
use blocker_common::{
    counter, setting, Action, CachedVerdict, ContentHash, FileKey, HookArgument,
    DEFAULT_HASH_LIMIT_MIB, UNHASHABLE_RULE_ID, UNKNOWN_CONTENT_HASH,
};

use crate::{
    hook_arguments,
    kernel_types::Inode,
    maps::{increment, setting, ALLOWED_FILES, BANNED_HASHES, POLICY_GENERATION, VERDICT_CACHE},
    report::{Ban, ALLOW},
};

/// `HASH_ALGO_SHA256` of the kernel's `enum hash_algo`, which `bpf_ima_file_hash` returns.
const HASH_ALGO_SHA256: i64 = 4;
/// `PROT_WRITE` and `MAP_SHARED` as `mmap` takes them (`MAP_SHARED_VALIDATE` includes the bit).
const PROT_WRITE: u64 = 0x2;
const MAP_SHARED: u64 = 0x1;

/// Which counters a content check bumps.
pub struct CacheCounters {
    pub hit: u32,
    pub miss: u32,
}

pub const EXEC_COUNTERS: CacheCounters = CacheCounters {
    hit: counter::VERDICT_CACHE_HIT,
    miss: counter::VERDICT_CACHE_MISS,
};

pub const MAPPING_COUNTERS: CacheCounters = CacheCounters {
    hit: counter::MAPPING_VERDICT_CACHE_HIT,
    miss: counter::MAPPING_VERDICT_CACHE_MISS,
};

/// The content ban matching `exec_file` (whose inode is `inode`, identity `key`), from the
/// verdict cache or by hashing it; the unhashable setting's ban if it cannot be hashed. Nothing
/// is hashed while no content ban is in force. The file's SHA-256, where it is known (hashed
/// now or cached), is written into `sha256`, which the kernel's hash helper fills directly.
#[inline(always)]
pub fn banned_content(
    exec_file: *mut file,
    inode: Inode,
    key: FileKey,
    counters: &CacheCounters,
    sha256: &mut ContentHash,
) -> Option<Ban> {
    if setting(setting::CONTENT_BANS) == 0 {
        return None;
    }
    let inode_generation = inode.generation()?;
    // Read before the ban lookup: if the daemon changes the bans meanwhile, this verdict is
    // stored under the old generation and is stale by the time anyone reads it.
    let policy_generation = *POLICY_GENERATION.get(0)?;
    let cache_usable = setting(setting::VERDICT_CACHE) != 0;

    if cache_usable {
        // SAFETY: the entry is copied out at once.
        if let Some(cached) = unsafe { VERDICT_CACHE.get(key) } {
            // Read field by field rather than copied whole: the stack has no room for a copy.
            if cached.policy_generation == policy_generation
                && cached.inode_generation == inode_generation
            {
                increment(counters.hit);
                *sha256 = cached.sha256;
                return banned_verdict(key, cached.rule_id, cached.action);
            }
        }
    }
    // Bytes that can change without this inode's hooks seeing it cannot be judged: a hash
    // would vouch for bytes other than those that run. An unprivileged user can otherwise mount
    // an overlay in a user namespace and swap the upper layer's file under a cached or fresh
    // verdict (measured: IMA also fails on, or misreads, such files). Checked only on a miss:
    // such a file never gets a verdict cached, so a hit is a guarded file, and the common
    // path (every exec and library mapping of a cached file) skips the superblock reads.
    if !inode.content_guarded() {
        increment(counter::CONTENT_UNGUARDED);
        return unhashable_ban(key);
    }
    increment(counters.miss);

    if inode.size()? > hash_limit_bytes() {
        increment(counter::CONTENT_TOO_LARGE);
        return unhashable_ban(key);
    }
    // SAFETY: `sha256` is writable for its whole length.
    let algorithm = unsafe {
        bpf_ima_file_hash(
            exec_file,
            sha256.as_mut_ptr() as *mut _,
            sha256.len() as u32,
        )
    };
    if algorithm != HASH_ALGO_SHA256 {
        *sha256 = UNKNOWN_CONTENT_HASH;
        increment(counter::CONTENT_HASH_FAILED);
        return unhashable_ban(key);
    }
    // SAFETY: the entry is copied out at once.
    let verdict = match unsafe { BANNED_HASHES.get(&*sha256) } {
        Some(entry) => CachedVerdict {
            policy_generation,
            inode_generation,
            rule_id: entry.rule_id,
            action: entry.action,
            sha256: *sha256,
        },
        None => CachedVerdict {
            policy_generation,
            inode_generation,
            rule_id: 0,
            action: Action::Allow.wire(),
            sha256: *sha256,
        },
    };
    // An inode without a name (memfd, O_TMPFILE, deleted) can be written through a descriptor
    // whose open this program never saw and which does not stop exec (memfd skips
    // `deny_write_access`), so its verdict could go stale unnoticed: never cache it. A named
    // file cannot change while it is being exec'd, and only after an open for writing, a
    // truncate or a setattr, which the `forget_verdict_*` programs see.
    if cache_usable && inode.links()? != 0 {
        // Best effort: if the LRU cannot take it, the next exec hashes again.
        let _ = VERDICT_CACHE.insert(key, verdict, 0);
    }
    banned_verdict(key, verdict.rule_id, verdict.action)
}

fn hash_limit_bytes() -> u64 {
    let limit = match setting(setting::HASH_LIMIT_MIB) {
        0 => DEFAULT_HASH_LIMIT_MIB,
        set => set,
    };
    u64::from(limit) << 20
}

/// The unhashable setting's ban of the file `key` names, unless the setting allows it.
fn unhashable_ban(key: FileKey) -> Option<Ban> {
    let unhashable = setting(setting::UNHASHABLE);
    (unhashable != Action::Allow.wire()).then_some(Ban::by_rule(
        key,
        UNHASHABLE_RULE_ID,
        unhashable,
    ))
}

fn banned_verdict(key: FileKey, rule_id: u32, action: u32) -> Option<Ban> {
    (action != Action::Allow.wire()).then_some(Ban::by_rule(key, rule_id, action))
}

// The `forget_verdict_*` programs only observe: each lets the operation go on.

#[lsm(hook = "file_open")]
pub fn forget_verdict_on_write_open(ctx: LsmContext) -> i32 {
    if let Some(opened) = hook_arguments::file(&ctx, HookArgument::FileOpenFile) {
        if opened.opened_for_writing() {
            forget_verdict(opened.inode());
        }
    }
    ALLOW
}

/// Truncate, chmod, chown, utimes. Every attribute change forgets the verdict; they are rare on
/// executables and only cost a rehash.
#[lsm(hook = "inode_setattr")]
pub fn forget_verdict_on_setattr(ctx: LsmContext) -> i32 {
    let dentry = hook_arguments::dentry(&ctx, HookArgument::InodeSetattrDentry);
    forget_verdict(dentry.and_then(|dentry| dentry.inode()));
    ALLOW
}

#[lsm(hook = "path_truncate")]
pub fn forget_verdict_on_truncate(ctx: LsmContext) -> i32 {
    let path = hook_arguments::path(&ctx, HookArgument::PathTruncatePath);
    forget_verdict(
        path.and_then(|path| path.dentry())
            .and_then(|dentry| dentry.inode()),
    );
    ALLOW
}

/// A shared writable mapping writes the file without `write(2)`.
#[lsm(hook = "mmap_file")]
pub fn forget_verdict_on_shared_write_mmap(ctx: LsmContext) -> i32 {
    let prot = hook_arguments::raw(&ctx, HookArgument::MmapFileProt);
    let flags = hook_arguments::raw(&ctx, HookArgument::MmapFileFlags);
    if prot & PROT_WRITE == 0 || flags & MAP_SHARED == 0 {
        return ALLOW;
    }
    if let Some(mapped) = hook_arguments::file(&ctx, HookArgument::MmapFileFile) {
        if mapped.opened_for_writing() {
            forget_verdict(mapped.inode());
        }
    }
    ALLOW
}

/// Drops the cached verdict of a file that may change, and its `allow` entry: an allowed file
/// rewritten in place is another program, untrusted until the daemon allows it again (it
/// rereads the map and puts back what the policy still allows at its next reload).
fn forget_verdict(inode: Option<Inode>) {
    let Some(key) = inode.and_then(Inode::key) else {
        return;
    };
    if VERDICT_CACHE.remove(key).is_ok() {
        increment(counter::VERDICT_INVALIDATED);
    }
    let _ = ALLOWED_FILES.remove(&key);
}
