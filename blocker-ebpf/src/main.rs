//! Kernel programs of blocker. Each looks the file about to run up in `BANNED_FILES`. The LSM
//! backend checks execs and executable mappings and refuses with EPERM; the kill backend, for
//! kernels without BPF LSM, checks execs and kills. The daemon loads one backend.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_current_uid_gid, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes, bpf_send_signal,
    },
    macros::{btf_tracepoint, lsm, map},
    maps::{Array, HashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, LsmContext},
    EbpfContext, Global,
};
use aya_log_ebpf::debug;
use blocker_common::{
    action, backend, counter, operation, setting, BanEntry, ExecEvent, FileKey, KernelOffsets,
    BANNED_FILES_CAPACITY, BPF_F_NO_PREALLOC, EVENTS_RING_BYTES, FILELESS_RULE_ID,
};

const EPERM: i32 = 1;
const SIGKILL: u32 = 9;
const PROT_EXEC: u64 = 4;

#[map]
static BANNED_FILES: HashMap<FileKey, BanEntry> =
    HashMap::with_max_entries(BANNED_FILES_CAPACITY, BPF_F_NO_PREALLOC);

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
    match check_inode(ctx, inode, &offsets) {
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
    let ban = match check_inode(ctx, inode, &offsets) {
        Some(ban) => ban,
        None => fileless_ban(inode, &offsets)?,
    };
    report(bprm, &offsets, &ban, backend, operation::EXEC);
    Some(ban.entry.action)
}

/// The ban of `inode` from `BANNED_FILES`, if any and if its generation matches.
fn check_inode<C: EbpfContext>(ctx: &C, inode: *const u8, offsets: &KernelOffsets) -> Option<Ban> {
    let key = inode_key(inode, offsets)?;
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
fn fileless_ban(inode: *const u8, offsets: &KernelOffsets) -> Option<Ban> {
    let fileless = *SETTINGS.get(setting::FILELESS)?;
    if fileless == action::ALLOW {
        return None;
    }
    let links: u32 = read_field(inode, offsets.inode_i_nlink)?;
    if links != 0 {
        return None;
    }
    Some(Ban {
        key: inode_key(inode, offsets)?,
        entry: BanEntry {
            rule_id: FILELESS_RULE_ID,
            action: fileless,
            generation: 0,
            flags: 0,
        },
    })
}

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
