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
    action, backend, bpf_object, counter, file_change, operation, setting, BanEntry, CachedVerdict,
    ContentHash, ExecEvent, FileKey, KernelOffsets, Protection, BANNED_FILES_CAPACITY,
    BANNED_HASHES_CAPACITY, BPF_F_NO_PREALLOC, EVENTS_RING_BYTES, FILELESS_RULE_ID,
    PROTECTED_BPF_OBJECTS_CAPACITY, PROTECTED_INODES_CAPACITY, VERDICT_CACHE_CAPACITY,
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
const SIGHUP: i32 = 1;
/// `PTRACE_MODE_ATTACH` in a ptrace access mode.
const PTRACE_MODE_ATTACH: u32 = 0x02;
/// `BPF_LINK_GET_FD_BY_ID` of `enum bpf_cmd`.
const BPF_LINK_GET_FD_BY_ID: u32 = 30;

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

/// Tamper protection: which daemon to guard and which binary is trusted; off while zero.
#[map]
static PROTECTION: Array<Protection> = Array::with_max_entries(1, 0);

/// Directories whose entries, and files whose contents, only trusted processes may change: the
/// policy directory, the pin directories, the blocker binary.
#[map]
static PROTECTED_INODES: HashMap<FileKey, u32> =
    HashMap::with_max_entries(PROTECTED_INODES_CAPACITY, BPF_F_NO_PREALLOC);

/// blocker's own maps, programs and links, keyed by [`bpf_object::key`].
#[map]
static PROTECTED_BPF_OBJECTS: HashMap<u64, u32> =
    HashMap::with_max_entries(PROTECTED_BPF_OBJECTS_CAPACITY, BPF_F_NO_PREALLOC);

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
    dentry_d_parent: 0,
    file_f_path: 0,
    task_struct_mm: 0,
    mm_struct_exe_file: 0,
    bpf_map_id: 0,
    bpf_prog_aux: 0,
    bpf_prog_aux_id: 0,
    padding: 0,
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

// Tamper protection. Each program below returns 0 at once while protection is off, and refuses
// a change only after finding that it touches something of blocker's and that the caller is
// not trusted, which keeps the common path to one array lookup.

/// `int security_task_kill(struct task_struct *p, struct kernel_siginfo *info, int sig, const
/// struct cred *cred)`: a signal a process sends (the kernel's own never come here).
#[lsm(hook = "task_kill")]
pub fn protect_daemon_from_signals(ctx: LsmContext) -> i32 {
    let earlier_verdict: i32 = ctx.arg(4);
    if earlier_verdict != 0 {
        return earlier_verdict;
    }
    let Some(protection) = active_protection() else {
        return 0;
    };
    let signal: i32 = ctx.arg(2);
    // Probing for the daemon (`kill -0`) and asking it to reload change nothing.
    if signal == 0 || signal == SIGHUP {
        return 0;
    }
    let target: *const u8 = ctx.arg(0);
    let offsets = KERNEL_OFFSETS.load();
    if read_field::<u32>(target, offsets.task_struct_tgid) != Some(protection.daemon_tgid) {
        return 0;
    }
    let sender = (bpf_get_current_pid_tgid() >> 32) as u32;
    // The service manager stops and restarts the service.
    if sender == 1 || sender == protection.daemon_tgid || trusted(&protection, &offsets) {
        return 0;
    }
    refuse(
        &offsets,
        operation::SIGNAL,
        signal as u32,
        FileKey::default(),
    )
}

/// `int security_ptrace_access_check(struct task_struct *child, unsigned int mode)`: ptrace
/// and everything that reads or writes another process's memory or descriptors.
#[lsm(hook = "ptrace_access_check")]
pub fn protect_daemon_from_ptrace(ctx: LsmContext) -> i32 {
    let earlier_verdict: i32 = ctx.arg(2);
    if earlier_verdict != 0 {
        return earlier_verdict;
    }
    let Some(protection) = active_protection() else {
        return 0;
    };
    let mode: u32 = ctx.arg(1);
    // Read access (`ps`, /proc/PID/exe for `blocker status`) stays open; attaching, memory
    // access and descriptor theft need PTRACE_MODE_ATTACH.
    if mode & PTRACE_MODE_ATTACH == 0 {
        return 0;
    }
    let child: *const u8 = ctx.arg(0);
    let offsets = KERNEL_OFFSETS.load();
    let runs_blocker = task_exe(child, &offsets) == Some(protection.trusted_exe);
    let is_daemon =
        read_field::<u32>(child, offsets.task_struct_tgid) == Some(protection.daemon_tgid);
    if !(runs_blocker || is_daemon) || trusted(&protection, &offsets) {
        return 0;
    }
    refuse(&offsets, operation::PTRACE, mode, FileKey::default())
}

/// `int security_bpf_map(struct bpf_map *map, fmode_t fmode)`: a process gets a descriptor of a
/// map, by id or from its pin; without one it can neither read nor change the map.
#[lsm(hook = "bpf_map")]
pub fn protect_maps(ctx: LsmContext) -> i32 {
    let earlier_verdict: i32 = ctx.arg(2);
    if earlier_verdict != 0 {
        return earlier_verdict;
    }
    let map: *const u8 = ctx.arg(0);
    let offsets = KERNEL_OFFSETS.load();
    let id = read_field(map, offsets.bpf_map_id).unwrap_or(0);
    refuse_bpf_object(&offsets, bpf_object::MAP, id)
}

/// `int security_bpf_prog(struct bpf_prog *prog)`: a process gets a descriptor of a program.
#[lsm(hook = "bpf_prog")]
pub fn protect_programs(ctx: LsmContext) -> i32 {
    let earlier_verdict: i32 = ctx.arg(1);
    if earlier_verdict != 0 {
        return earlier_verdict;
    }
    let program: *const u8 = ctx.arg(0);
    let offsets = KERNEL_OFFSETS.load();
    let id = read_field::<*const u8>(program, offsets.bpf_prog_aux)
        .and_then(|aux| read_field(aux, offsets.bpf_prog_aux_id))
        .unwrap_or(0);
    refuse_bpf_object(&offsets, bpf_object::PROGRAM, id)
}

/// `int security_bpf(int cmd, union bpf_attr *attr, unsigned int size)`: links have no hook of
/// their own, so a descriptor of one by id is refused here (`attr` is the kernel's copy).
#[lsm(hook = "bpf")]
pub fn protect_links(ctx: LsmContext) -> i32 {
    let earlier_verdict: i32 = ctx.arg(3);
    if earlier_verdict != 0 {
        return earlier_verdict;
    }
    let command: u32 = ctx.arg(0);
    if command != BPF_LINK_GET_FD_BY_ID {
        return 0;
    }
    let attr: *const u8 = ctx.arg(1);
    let offsets = KERNEL_OFFSETS.load();
    // `link_id` is the first member of the command's part of the union.
    refuse_bpf_object(&offsets, bpf_object::LINK, read_field(attr, 0).unwrap_or(0))
}

/// `int security_file_open(struct file *file)`.
#[lsm(hook = "file_open")]
pub fn protect_files_from_writes(ctx: LsmContext) -> i32 {
    let earlier_verdict: i32 = ctx.arg(1);
    if earlier_verdict != 0 {
        return earlier_verdict;
    }
    let Some(protection) = active_protection() else {
        return 0;
    };
    let opened: *const u8 = ctx.arg(0);
    let offsets = KERNEL_OFFSETS.load();
    if !opened_for_writing(opened, &offsets) {
        return 0;
    }
    // SAFETY: `f_path` is a `struct path` inside the file; only its address is computed.
    let path = unsafe { opened.add(offsets.file_f_path as usize) };
    let dentry = read_field::<*const u8>(path, offsets.path_dentry);
    refuse_change(
        &offsets,
        &protection,
        file_change::OPEN_FOR_WRITING,
        protected_dentry(dentry, &offsets),
    )
}

/// `int security_inode_setattr(struct dentry *dentry, struct iattr *attr)`.
#[lsm(hook = "inode_setattr")]
pub fn protect_files_from_setattr(ctx: LsmContext) -> i32 {
    let earlier_verdict: i32 = ctx.arg(2);
    if earlier_verdict != 0 {
        return earlier_verdict;
    }
    let Some(protection) = active_protection() else {
        return 0;
    };
    let offsets = KERNEL_OFFSETS.load();
    let target = protected_dentry(Some(ctx.arg(0)), &offsets);
    refuse_change(&offsets, &protection, file_change::SETATTR, target)
}

/// `int security_inode_create(struct inode *dir, struct dentry *dentry, umode_t mode)`.
#[lsm(hook = "inode_create")]
pub fn protect_dirs_from_create(ctx: LsmContext) -> i32 {
    directory_change(&ctx, 3, file_change::CREATE)
}

/// `int security_inode_symlink(struct inode *dir, struct dentry *dentry, const char *name)`.
#[lsm(hook = "inode_symlink")]
pub fn protect_dirs_from_symlink(ctx: LsmContext) -> i32 {
    directory_change(&ctx, 3, file_change::SYMLINK)
}

/// `int security_inode_mkdir(struct inode *dir, struct dentry *dentry, umode_t mode)`.
#[lsm(hook = "inode_mkdir")]
pub fn protect_dirs_from_mkdir(ctx: LsmContext) -> i32 {
    directory_change(&ctx, 3, file_change::MKDIR)
}

/// `int security_inode_mknod(struct inode *dir, struct dentry *dentry, umode_t mode, dev_t dev)`.
#[lsm(hook = "inode_mknod")]
pub fn protect_dirs_from_mknod(ctx: LsmContext) -> i32 {
    directory_change(&ctx, 4, file_change::MKNOD)
}

/// `int security_inode_unlink(struct inode *dir, struct dentry *dentry)`.
#[lsm(hook = "inode_unlink")]
pub fn protect_dirs_from_unlink(ctx: LsmContext) -> i32 {
    removal(&ctx, file_change::UNLINK)
}

/// `int security_inode_rmdir(struct inode *dir, struct dentry *dentry)`.
#[lsm(hook = "inode_rmdir")]
pub fn protect_dirs_from_rmdir(ctx: LsmContext) -> i32 {
    removal(&ctx, file_change::RMDIR)
}

/// `int security_inode_link(struct dentry *old_dentry, struct inode *dir, struct dentry
/// *new_dentry)`: a new name in a protected directory, or for a protected file (which could
/// then be written through it).
#[lsm(hook = "inode_link")]
pub fn protect_dirs_from_link(ctx: LsmContext) -> i32 {
    let earlier_verdict: i32 = ctx.arg(3);
    if earlier_verdict != 0 {
        return earlier_verdict;
    }
    let Some(protection) = active_protection() else {
        return 0;
    };
    let offsets = KERNEL_OFFSETS.load();
    let target = protected_inode(ctx.arg(1), &offsets)
        .or_else(|| protected_dentry(Some(ctx.arg(0)), &offsets));
    refuse_change(&offsets, &protection, file_change::LINK, target)
}

/// `int security_inode_rename(struct inode *old_dir, struct dentry *old_dentry, struct inode
/// *new_dir, struct dentry *new_dentry)`.
#[lsm(hook = "inode_rename")]
pub fn protect_dirs_from_rename(ctx: LsmContext) -> i32 {
    let earlier_verdict: i32 = ctx.arg(4);
    if earlier_verdict != 0 {
        return earlier_verdict;
    }
    let Some(protection) = active_protection() else {
        return 0;
    };
    let offsets = KERNEL_OFFSETS.load();
    let target = protected_inode(ctx.arg(0), &offsets)
        .or_else(|| protected_inode(ctx.arg(2), &offsets))
        .or_else(|| protected_inode(dentry_inode(ctx.arg(1), &offsets), &offsets))
        .or_else(|| protected_inode(dentry_inode(ctx.arg(3), &offsets), &offsets));
    refuse_change(&offsets, &protection, file_change::RENAME, target)
}

/// `int security_sb_mount(const char *dev_name, const struct path *path, const char *type,
/// unsigned long flags, void *data)`: a mount over a protected directory or file would hide it.
#[lsm(hook = "sb_mount")]
pub fn protect_dirs_from_mount(ctx: LsmContext) -> i32 {
    mount_over(&ctx, 1, 5)
}

/// `int security_move_mount(const struct path *from_path, const struct path *to_path)`.
#[lsm(hook = "move_mount")]
pub fn protect_dirs_from_move_mount(ctx: LsmContext) -> i32 {
    mount_over(&ctx, 1, 2)
}

// Inlined: the verifier only allows context reads at offsets known in the program itself.
#[inline(always)]
fn mount_over(ctx: &LsmContext, path_argument: usize, verdict_argument: usize) -> i32 {
    let earlier_verdict: i32 = ctx.arg(verdict_argument);
    if earlier_verdict != 0 {
        return earlier_verdict;
    }
    let Some(protection) = active_protection() else {
        return 0;
    };
    let offsets = KERNEL_OFFSETS.load();
    let path: *const u8 = ctx.arg(path_argument);
    let dentry = read_field::<*const u8>(path, offsets.path_dentry);
    refuse_change(
        &offsets,
        &protection,
        file_change::MOUNT,
        protected_dentry(dentry, &offsets),
    )
}

/// A hook whose first argument is the directory about to get a new entry.
// Inlined: the verifier only allows context reads at offsets known in the program itself.
#[inline(always)]
fn directory_change(ctx: &LsmContext, verdict_argument: usize, change: u32) -> i32 {
    let earlier_verdict: i32 = ctx.arg(verdict_argument);
    if earlier_verdict != 0 {
        return earlier_verdict;
    }
    let Some(protection) = active_protection() else {
        return 0;
    };
    let offsets = KERNEL_OFFSETS.load();
    refuse_change(
        &offsets,
        &protection,
        change,
        protected_inode(ctx.arg(0), &offsets),
    )
}

/// `unlink` and `rmdir`: of an entry of a protected directory, or of a protected entry itself.
// Inlined: the verifier only allows context reads at offsets known in the program itself.
#[inline(always)]
fn removal(ctx: &LsmContext, change: u32) -> i32 {
    let earlier_verdict: i32 = ctx.arg(2);
    if earlier_verdict != 0 {
        return earlier_verdict;
    }
    let Some(protection) = active_protection() else {
        return 0;
    };
    let offsets = KERNEL_OFFSETS.load();
    let target = protected_inode(ctx.arg(0), &offsets)
        .or_else(|| protected_inode(dentry_inode(ctx.arg(1), &offsets), &offsets));
    refuse_change(&offsets, &protection, change, target)
}

fn active_protection() -> Option<Protection> {
    let protection = *PROTECTION.get(0)?;
    (protection.daemon_tgid != 0).then_some(protection)
}

/// Whether the current process runs the blocker binary (the daemon, `blocker stop`, `blocker
/// policy`), or is a kernel thread (no `mm`). A task that cannot be read is not trusted.
fn trusted(protection: &Protection, offsets: &KernelOffsets) -> bool {
    let task = unsafe { bpf_get_current_task() } as *const u8;
    let Some(mm) = read_field::<*const u8>(task, offsets.task_struct_mm) else {
        return false;
    };
    mm.is_null() || mm_exe(mm, offsets) == Some(protection.trusted_exe)
}

/// The identity of the file `task` runs.
fn task_exe(task: *const u8, offsets: &KernelOffsets) -> Option<FileKey> {
    mm_exe(read_field(task, offsets.task_struct_mm)?, offsets)
}

fn mm_exe(mm: *const u8, offsets: &KernelOffsets) -> Option<FileKey> {
    let exe: *const u8 = read_field(mm, offsets.mm_struct_exe_file)?;
    inode_key(read_field(exe, offsets.file_f_inode)?, offsets)
}

/// `id` 0 (unread: the kernel numbers objects from 1) is never refused. A plain id rather than
/// an `Option`: the verifier rejects the unset payload register of a `None` passed to a call.
fn refuse_bpf_object(offsets: &KernelOffsets, kind: u32, id: u32) -> i32 {
    let Some(protection) = active_protection() else {
        return 0;
    };
    if id == 0 {
        return 0;
    }
    let key = bpf_object::key(kind, id);
    if unsafe { PROTECTED_BPF_OBJECTS.get(&key) }.is_none() || trusted(&protection, offsets) {
        return 0;
    }
    refuse(
        offsets,
        operation::BPF_OBJECT,
        kind,
        FileKey::new(0, id as u64),
    )
}

fn refuse_change(
    offsets: &KernelOffsets,
    protection: &Protection,
    change: u32,
    target: Option<FileKey>,
) -> i32 {
    let Some(target) = target else {
        return 0;
    };
    if trusted(protection, offsets) {
        return 0;
    }
    refuse(offsets, operation::FILE_CHANGE, change, target)
}

/// Reports a refused tamper attempt and returns the refusal.
fn refuse(offsets: &KernelOffsets, operation: u32, detail: u32, target: FileKey) -> i32 {
    let ban = Ban {
        key: target,
        entry: BanEntry {
            rule_id: 0,
            action: action::DENY,
            generation: 0,
            flags: 0,
        },
    };
    report_detailed(
        core::ptr::null(),
        offsets,
        &ban,
        backend::LSM,
        operation,
        detail,
    );
    -EPERM
}

/// `inode` if it is protected.
fn protected_inode(inode: *const u8, offsets: &KernelOffsets) -> Option<FileKey> {
    let key = inode_key(inode, offsets)?;
    unsafe { PROTECTED_INODES.get(&key) }.map(|_| key)
}

/// The inode of `dentry` if it, or the directory holding it, is protected.
fn protected_dentry(dentry: Option<*const u8>, offsets: &KernelOffsets) -> Option<FileKey> {
    let dentry = dentry?;
    let inode = dentry_inode(dentry, offsets);
    if let Some(key) = protected_inode(inode, offsets) {
        return Some(key);
    }
    let parent: *const u8 = read_field(dentry, offsets.dentry_d_parent)?;
    protected_inode(dentry_inode(parent, offsets), offsets)?;
    inode_key(inode, offsets)
}

fn dentry_inode(dentry: *const u8, offsets: &KernelOffsets) -> *const u8 {
    read_field(dentry, offsets.dentry_d_inode).unwrap_or(core::ptr::null())
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
    report_detailed(bprm, offsets, ban, backend, operation, 0);
}

// BPF calls take at most five arguments; inlined, this one is not a call.
#[inline(always)]
fn report_detailed(
    bprm: *const u8,
    offsets: &KernelOffsets,
    ban: &Ban,
    backend: u32,
    operation: u32,
    detail: u32,
) {
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
        (*event).detail = detail;
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
