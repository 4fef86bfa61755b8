//! Kernel programs of blocker. Each looks the file about to run up in `BANNED_FILES`. The LSM
//! backend checks execs and executable mappings and refuses with EPERM; where the kernel can hash
//! files for BPF (IMA), its exec check is `bprm_check_content`, which also checks the file's
//! content, with a per-inode verdict cache that the `forget_verdict_*` programs keep honest.
//! The kill backend, for kernels without BPF LSM, checks execs by identity and kills. The
//! daemon loads one backend.
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::file,
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_current_uid_gid, bpf_ima_file_hash, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes, bpf_send_signal,
    },
    macros::{btf_tracepoint, lsm, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, LsmContext},
    EbpfContext, Global,
};
use aya_log_ebpf::debug;
use blocker_common::{
    action, backend, counter, operation, setting, BanEntry, CachedVerdict, ContentHash, ExecEvent,
    FileKey, KernelOffsets, BANNED_FILES_CAPACITY, BANNED_HASHES_CAPACITY, BPF_F_NO_PREALLOC,
    EVENTS_RING_BYTES, FILELESS_RULE_ID, VERDICT_CACHE_CAPACITY,
};

const EPERM: i32 = 1;
const SIGKILL: u32 = 9;
const PROT_EXEC: u64 = 4;
/// `FMODE_WRITE` in `file.f_mode`.
const FMODE_WRITE: u32 = 0x2;
/// `PROT_WRITE` and `MAP_SHARED` as `mmap` takes them (`MAP_SHARED_VALIDATE` includes the bit).
const PROT_WRITE: u64 = 0x2;
const MAP_SHARED: u64 = 0x1;
/// `HASH_ALGO_SHA256` of the kernel's `enum hash_algo`, which `bpf_ima_file_hash` returns.
const HASH_ALGO_SHA256: i64 = 4;

#[map]
static BANNED_FILES: HashMap<FileKey, BanEntry> =
    HashMap::with_max_entries(BANNED_FILES_CAPACITY, BPF_F_NO_PREALLOC);

/// Banned contents: SHA-256 of the whole file → the rule banning it.
#[map]
static BANNED_HASHES: HashMap<ContentHash, BanEntry> =
    HashMap::with_max_entries(BANNED_HASHES_CAPACITY, BPF_F_NO_PREALLOC);

/// The content verdict of recently executed inodes, so an unchanged file is hashed once per
/// policy generation. Entries are dropped when their file may have changed (`forget_verdict_*`).
#[map]
static VERDICT_CACHE: LruHashMap<FileKey, CachedVerdict> =
    LruHashMap::with_max_entries(VERDICT_CACHE_CAPACITY, 0);

/// One slot: the generation of the content bans. The daemon bumps it after changing
/// `BANNED_HASHES`, which makes every cached verdict stale at once.
#[map]
static POLICY_GENERATION: Array<u32> = Array::with_max_entries(1, 0);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Policy settings, indexed by [`setting`]; a map rather than a global so a reload can change
/// them without reloading the programs.
#[map]
static SETTINGS: Array<u32> = Array::with_max_entries(setting::COUNT, 0);

/// Set by the loader from the running kernel's BTF.
#[no_mangle]
static KERNEL_OFFSETS: Global<KernelOffsets> = Global::new(KernelOffsets {
    linux_binprm_file: 0,
    linux_binprm_filename: 0,
    file_f_inode: 0,
    inode_i_ino: 0,
    inode_i_sb: 0,
    inode_i_generation: 0,
    super_block_s_dev: 0,
    task_struct_real_parent: 0,
    task_struct_tgid: 0,
    inode_i_nlink: 0,
    vm_area_struct_vm_file: 0,
    file_f_mode: 0,
    path_dentry: 0,
    dentry_d_inode: 0,
});

#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    // Another LSM program may already have refused this exec; its verdict stands.
    let earlier_verdict: i32 = ctx.arg(1);
    if earlier_verdict != 0 {
        return earlier_verdict;
    }
    let bprm: *const u8 = ctx.arg(0);
    match check_exec(&ctx, bprm, backend::LSM) {
        Some(action::DENY) => -EPERM,
        _ => 0,
    }
}

/// The LSM exec check with content: a ban by identity as in [`bprm_check_security`], then the
/// SHA-256 of the file against `BANNED_HASHES` through the verdict cache, then the fileless
/// setting. Sleepable because `bpf_ima_file_hash` may read the file; the kernel then allows only
/// array, hash, LRU and ring buffer maps here, which is all this uses (aya-log included).
#[lsm(hook = "bprm_check_security", sleepable)]
pub fn bprm_check_content(ctx: LsmContext) -> i32 {
    let earlier_verdict: i32 = ctx.arg(1);
    if earlier_verdict != 0 {
        return earlier_verdict;
    }
    let bprm: *const u8 = ctx.arg(0);
    let offsets = KERNEL_OFFSETS.load();
    // `bpf_ima_file_hash` only takes a pointer the verifier can vouch for: one loaded directly
    // from the hook's trusted argument, not one copied by `bpf_probe_read_kernel`.
    // SAFETY: `bprm` is the hook's `struct linux_binprm *`; the verifier checks the load.
    let exec_file: *mut file =
        unsafe { *(bprm.add(offsets.linux_binprm_file as usize) as *const *mut file) };
    let Some(inode) = read_field::<*const u8>(exec_file as *const u8, offsets.file_f_inode) else {
        return 0;
    };
    let Some(key) = inode_key(inode, &offsets) else {
        return 0;
    };
    let ban = banned_identity(&ctx, inode, key, &offsets)
        .or_else(|| banned_content(exec_file, inode, key, &offsets))
        .or_else(|| fileless_ban(inode, key, &offsets));
    let Some(ban) = ban else {
        return 0;
    };
    report(bprm, &offsets, &ban, backend::LSM, operation::EXEC);
    if ban.entry.action == action::DENY {
        -EPERM
    } else {
        0
    }
}

/// `mmap(PROT_EXEC)` of a file: how the dynamic loader maps a program it is asked to run
/// (`ld.so /path/to/banned`) and every library, `dlopen` included.
#[lsm(hook = "mmap_file")]
pub fn mmap_file(ctx: LsmContext) -> i32 {
    // (struct file *file, unsigned long reqprot, unsigned long prot, unsigned long flags, int ret)
    let earlier_verdict: i32 = ctx.arg(4);
    if earlier_verdict != 0 {
        return earlier_verdict;
    }
    let file: *const u8 = ctx.arg(0);
    let prot: u64 = ctx.arg(2);
    mapping_verdict(&ctx, file, prot, operation::MMAP)
}

/// `mprotect(PROT_EXEC)` of a mapping made without it.
#[lsm(hook = "file_mprotect")]
pub fn file_mprotect(ctx: LsmContext) -> i32 {
    // (struct vm_area_struct *vma, unsigned long reqprot, unsigned long prot, int ret)
    let earlier_verdict: i32 = ctx.arg(3);
    if earlier_verdict != 0 {
        return earlier_verdict;
    }
    let vma: *const u8 = ctx.arg(0);
    let prot: u64 = ctx.arg(2);
    let offsets = KERNEL_OFFSETS.load();
    let file: *const u8 =
        read_field(vma, offsets.vm_area_struct_vm_file).unwrap_or(core::ptr::null());
    mapping_verdict(&ctx, file, prot, operation::MPROTECT)
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm)
    let bprm: *const u8 = ctx.arg(2);
    if check_exec(&ctx, bprm, backend::KILL) == Some(action::DENY) {
        // The exec is past its point of no return; the pending SIGKILL is delivered before the
        // new image returns to userspace, so none of its code runs.
        unsafe { bpf_send_signal(SIGKILL) };
    }
    0
}

/// The LSM return value for an executable mapping of `file` (anonymous mappings have none).
fn mapping_verdict<C: EbpfContext>(ctx: &C, file: *const u8, prot: u64, operation: u32) -> i32 {
    if file.is_null() || prot & PROT_EXEC == 0 {
        return 0;
    }
    let offsets = KERNEL_OFFSETS.load();
    let Some(inode) = read_field::<*const u8>(file, offsets.file_f_inode) else {
        return 0;
    };
    let Some(key) = inode_key(inode, &offsets) else {
        return 0;
    };
    match banned_identity(ctx, inode, key, &offsets) {
        Some(ban) => {
            report(core::ptr::null(), &offsets, &ban, backend::LSM, operation);
            if ban.entry.action == action::DENY {
                -EPERM
            } else {
                0
            }
        }
        None => 0,
    }
}

/// A banned inode about to run: its identity and the entry that bans it.
struct Ban {
    key: FileKey,
    entry: BanEntry,
}

/// Looks the file of `bprm` up in the ban list, then applies the fileless setting to a file
/// with no name on disk; reports a hit and returns its action.
fn check_exec<C: EbpfContext>(ctx: &C, bprm: *const u8, backend: u32) -> Option<u32> {
    let offsets = KERNEL_OFFSETS.load();
    let file: *const u8 = read_field(bprm, offsets.linux_binprm_file)?;
    let inode: *const u8 = read_field(file, offsets.file_f_inode)?;
    let key = inode_key(inode, &offsets)?;
    let ban = match banned_identity(ctx, inode, key, &offsets) {
        Some(ban) => ban,
        None => fileless_ban(inode, key, &offsets)?,
    };
    report(bprm, &offsets, &ban, backend, operation::EXEC);
    Some(ban.entry.action)
}

/// The ban of `inode` (identity `key`) from `BANNED_FILES`, if any and if its generation
/// matches.
fn banned_identity<C: EbpfContext>(
    ctx: &C,
    inode: *const u8,
    key: FileKey,
    offsets: &KernelOffsets,
) -> Option<Ban> {
    let entry = *unsafe { BANNED_FILES.get(&key) }?;
    let generation: u32 = read_field(inode, offsets.inode_i_generation)?;
    if !entry.matches_generation(generation) {
        increment(counter::GENERATION_MISMATCH);
        return None;
    }
    debug!(
        ctx,
        "banned file dev={} ino={} rule={}", key.dev, key.ino, entry.rule_id
    );
    Some(Ban { key, entry })
}

/// The fileless setting's ban of `inode` if it has no link on disk (memfd, `O_TMPFILE`,
/// deleted): no rule can name such a file.
fn fileless_ban(inode: *const u8, key: FileKey, offsets: &KernelOffsets) -> Option<Ban> {
    let fileless = *SETTINGS.get(setting::FILELESS)?;
    if fileless == action::ALLOW {
        return None;
    }
    let links: u32 = read_field(inode, offsets.inode_i_nlink)?;
    if links != 0 {
        return None;
    }
    Some(Ban {
        key,
        entry: BanEntry {
            rule_id: FILELESS_RULE_ID,
            action: fileless,
            generation: 0,
            flags: 0,
        },
    })
}

/// The content ban matching `exec_file` (whose inode is `inode`, identity `key`), from the
/// verdict cache or by hashing it.
fn banned_content(
    exec_file: *mut file,
    inode: *const u8,
    key: FileKey,
    offsets: &KernelOffsets,
) -> Option<Ban> {
    let inode_generation: u32 = read_field(inode, offsets.inode_i_generation)?;
    // Read before the ban lookup: if the daemon changes the bans meanwhile, this verdict is
    // stored under the old generation and is stale by the time anyone reads it.
    let policy_generation = *POLICY_GENERATION.get(0)?;

    if let Some(cached) = unsafe { VERDICT_CACHE.get(key) } {
        let cached = *cached;
        if cached.policy_generation == policy_generation
            && cached.inode_generation == inode_generation
        {
            increment(counter::VERDICT_CACHE_HIT);
            return banned_verdict(key, &cached);
        }
    }
    increment(counter::VERDICT_CACHE_MISS);

    let mut digest: ContentHash = [0; 32];
    // SAFETY: `digest` is writable for its whole length.
    let algorithm = unsafe {
        bpf_ima_file_hash(
            exec_file,
            digest.as_mut_ptr() as *mut _,
            digest.len() as u32,
        )
    };
    if algorithm != HASH_ALGO_SHA256 {
        increment(counter::CONTENT_HASH_FAILED);
        return None;
    }
    let verdict = match unsafe { BANNED_HASHES.get(digest) } {
        Some(entry) => CachedVerdict {
            policy_generation,
            inode_generation,
            rule_id: entry.rule_id,
            action: entry.action,
        },
        None => CachedVerdict {
            policy_generation,
            inode_generation,
            rule_id: 0,
            action: action::ALLOW,
        },
    };
    // An inode without a name (memfd, O_TMPFILE, deleted) can be written through a descriptor
    // whose open this program never saw and which does not stop exec (memfd skips
    // `deny_write_access`), so its verdict could go stale unnoticed: never cache it. A named
    // file cannot change while it is being exec'd, and only after an open for writing, a
    // truncate or a setattr, which the `forget_verdict_*` programs see.
    let links: u32 = read_field(inode, offsets.inode_i_nlink)?;
    if links != 0 {
        // Best effort: if the LRU cannot take it, the next exec hashes again.
        let _ = VERDICT_CACHE.insert(key, verdict, 0);
    }
    banned_verdict(key, &verdict)
}

fn banned_verdict(key: FileKey, verdict: &CachedVerdict) -> Option<Ban> {
    (verdict.action != action::ALLOW).then_some(Ban {
        key,
        entry: BanEntry {
            rule_id: verdict.rule_id,
            action: verdict.action,
            generation: 0,
            flags: 0,
        },
    })
}

// Each `forget_verdict_*` program returns the verdict of the programs before it unchanged: they
// only observe. `int security_file_open(struct file *file)`.
#[lsm(hook = "file_open")]
pub fn forget_verdict_on_write_open(ctx: LsmContext) -> i32 {
    let opened: *const u8 = ctx.arg(0);
    let offsets = KERNEL_OFFSETS.load();
    if opened_for_writing(opened, &offsets) {
        forget_verdict(read_field(opened, offsets.file_f_inode), &offsets);
    }
    ctx.arg(1)
}

/// `int security_inode_setattr(struct dentry *dentry, struct iattr *attr)`: truncate, chmod,
/// chown, utimes. Every attribute change forgets the verdict; they are rare on executables and
/// only cost a rehash.
#[lsm(hook = "inode_setattr")]
pub fn forget_verdict_on_setattr(ctx: LsmContext) -> i32 {
    let dentry: *const u8 = ctx.arg(0);
    let offsets = KERNEL_OFFSETS.load();
    forget_verdict(read_field(dentry, offsets.dentry_d_inode), &offsets);
    ctx.arg(2)
}

/// `int security_path_truncate(const struct path *path)`.
#[lsm(hook = "path_truncate")]
pub fn forget_verdict_on_truncate(ctx: LsmContext) -> i32 {
    let path: *const u8 = ctx.arg(0);
    let offsets = KERNEL_OFFSETS.load();
    if let Some(dentry) = read_field::<*const u8>(path, offsets.path_dentry) {
        forget_verdict(read_field(dentry, offsets.dentry_d_inode), &offsets);
    }
    ctx.arg(1)
}

/// `int security_mmap_file(struct file *file, unsigned long reqprot, unsigned long prot,
/// unsigned long flags)`: a shared writable mapping writes the file without `write(2)`.
#[lsm(hook = "mmap_file")]
pub fn forget_verdict_on_shared_write_mmap(ctx: LsmContext) -> i32 {
    let mapped: *const u8 = ctx.arg(0);
    let prot: u64 = ctx.arg(2);
    let flags: u64 = ctx.arg(3);
    let offsets = KERNEL_OFFSETS.load();
    if prot & PROT_WRITE != 0 && flags & MAP_SHARED != 0 && opened_for_writing(mapped, &offsets) {
        forget_verdict(read_field(mapped, offsets.file_f_inode), &offsets);
    }
    ctx.arg(4)
}

fn opened_for_writing(opened: *const u8, offsets: &KernelOffsets) -> bool {
    read_field::<u32>(opened, offsets.file_f_mode).is_some_and(|mode| mode & FMODE_WRITE != 0)
}

fn forget_verdict(inode: Option<*const u8>, offsets: &KernelOffsets) {
    let Some(key) = inode.and_then(|inode| inode_key(inode, offsets)) else {
        return;
    };
    if VERDICT_CACHE.remove(key).is_ok() {
        increment(counter::VERDICT_INVALIDATED);
    }
}

/// The kernel's identity of `inode`: its superblock's device and its number.
fn inode_key(inode: *const u8, offsets: &KernelOffsets) -> Option<FileKey> {
    let ino: u64 = read_field(inode, offsets.inode_i_ino)?;
    let super_block: *const u8 = read_field(inode, offsets.inode_i_sb)?;
    let dev: u32 = read_field(super_block, offsets.super_block_s_dev)?;
    Some(FileKey::new(dev, ino))
}

/// Sends an event; `bprm` is null for mappings, which have no exec path.
fn report(bprm: *const u8, offsets: &KernelOffsets, ban: &Ban, backend: u32, operation: u32) {
    let Some(mut slot) = EVENTS.reserve::<ExecEvent>(0) else {
        increment(counter::EVENTS_LOST);
        return;
    };
    let event = slot.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    // SAFETY: `event` points at a reserved, exclusively owned ring buffer slot of the right size.
    unsafe {
        (*event).boot_time_ns = bpf_ktime_get_boot_ns();
        (*event).ino = ban.key.ino;
        (*event).tid = pid_tgid as u32;
        (*event).tgid = (pid_tgid >> 32) as u32;
        (*event).ppid = parent_tgid(offsets).unwrap_or(0);
        (*event).uid = uid_gid as u32;
        (*event).gid = (uid_gid >> 32) as u32;
        (*event).dev = ban.key.dev;
        (*event).rule_id = ban.entry.rule_id;
        (*event).action = ban.entry.action;
        (*event).backend = backend;
        (*event).operation = operation;
        (*event).padding = 0;
        (*event).comm = bpf_get_current_comm().unwrap_or_default();
        (*event).filename_len = if bprm.is_null() {
            0
        } else {
            read_filename(bprm, offsets, &mut (*event).filename)
        };
    }
    slot.submit(0);
}

fn read_filename(bprm: *const u8, offsets: &KernelOffsets, out: &mut [u8]) -> u32 {
    let Some(name) = read_field::<*const u8>(bprm, offsets.linux_binprm_filename) else {
        return 0;
    };
    match unsafe { bpf_probe_read_kernel_str_bytes(name, out) } {
        Ok(bytes) => bytes.len() as u32,
        Err(_) => 0,
    }
}

fn parent_tgid(offsets: &KernelOffsets) -> Option<u32> {
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let parent: *const u8 = read_field(task, offsets.task_struct_real_parent)?;
    read_field(parent, offsets.task_struct_tgid)
}

/// Reads the `T` at `base + offset` in kernel memory; `None` for a null base or a fault.
fn read_field<T>(base: *const u8, offset: u32) -> Option<T> {
    if base.is_null() {
        return None;
    }
    unsafe { bpf_probe_read_kernel(base.add(offset as usize) as *const T) }.ok()
}

fn increment(index: u32) {
    if let Some(count) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot, touched only by programs on this CPU with preemption off.
        unsafe { *count += 1 };
    }
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
