//! Kernel programs of blocker. Both look the exec'd file up in `BANNED_FILES`; they differ only
//! in how a deny is enforced, and the daemon loads exactly one of them.
#![no_std]
#![no_main]

use aya_ebpf::{
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_task,
        bpf_get_current_uid_gid, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
        bpf_probe_read_kernel_str_bytes, bpf_send_signal,
    },
    macros::{btf_tracepoint, lsm, map},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, LsmContext},
    EbpfContext, Global,
};
use aya_log_ebpf::debug;
use blocker_common::{
    action, backend, counter, BanEntry, ExecEvent, FileKey, KernelOffsets, BANNED_FILES_CAPACITY,
    BPF_F_NO_PREALLOC, EVENTS_RING_BYTES,
};

const EPERM: i32 = 1;
const SIGKILL: u32 = 9;

#[map]
static BANNED_FILES: HashMap<FileKey, BanEntry> =
    HashMap::with_max_entries(BANNED_FILES_CAPACITY, BPF_F_NO_PREALLOC);

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

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

/// Looks the file of `bprm` up in the ban list; reports a hit and returns its action.
fn check_exec<C: EbpfContext>(ctx: &C, bprm: *const u8, backend: u32) -> Option<u32> {
    let offsets = KERNEL_OFFSETS.load();
    let file: *const u8 = read_field(bprm, offsets.linux_binprm_file)?;
    let inode: *const u8 = read_field(file, offsets.file_f_inode)?;
    let ino: u64 = read_field(inode, offsets.inode_i_ino)?;
    let super_block: *const u8 = read_field(inode, offsets.inode_i_sb)?;
    let dev: u32 = read_field(super_block, offsets.super_block_s_dev)?;

    let key = FileKey::new(dev, ino);
    let entry = *unsafe { BANNED_FILES.get(&key) }?;
    let generation: u32 = read_field(inode, offsets.inode_i_generation)?;
    if !entry.matches_generation(generation) {
        increment(counter::GENERATION_MISMATCH);
        return None;
    }
    debug!(
        ctx,
        "banned exec dev={} ino={} rule={}", key.dev, key.ino, entry.rule_id
    );
    report(bprm, &offsets, key, &entry, backend);
    Some(entry.action)
}

fn report(bprm: *const u8, offsets: &KernelOffsets, key: FileKey, entry: &BanEntry, backend: u32) {
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
        (*event).ino = key.ino;
        (*event).tid = pid_tgid as u32;
        (*event).tgid = (pid_tgid >> 32) as u32;
        (*event).ppid = parent_tgid(offsets).unwrap_or(0);
        (*event).uid = uid_gid as u32;
        (*event).gid = (uid_gid >> 32) as u32;
        (*event).dev = key.dev;
        (*event).rule_id = entry.rule_id;
        (*event).action = entry.action;
        (*event).backend = backend;
        (*event).comm = bpf_get_current_comm().unwrap_or_default();
        (*event).filename_len = read_filename(bprm, offsets, &mut (*event).filename);
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
