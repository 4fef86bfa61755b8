//! The maps and load-time settings every program shares.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use blocker_common::{
    record_limit, BanEntry, CachedVerdict, ContentHash, FileKey, Heartbeat, HookArgumentPositions,
    KernelOffsets, Protection, RecordKey, RecordWindow, ALLOWED_FILES_CAPACITY,
    BANNED_FILES_CAPACITY, BANNED_HASHES_CAPACITY, BPF_F_NO_PREALLOC, EVENTS_RING_BYTES,
    PROTECTED_BPF_OBJECTS_CAPACITY, PROTECTED_INODES_CAPACITY, VERDICT_CACHE_CAPACITY,
};

#[map]
pub static BANNED_FILES: HashMap<FileKey, BanEntry> =
    HashMap::with_max_entries(BANNED_FILES_CAPACITY, BPF_F_NO_PREALLOC);

/// Banned contents: SHA-256 of the whole file → the rule banning it.
/// Files `action = "allow"` rules name, by identity: exempt from the trusted-path check. A ban
/// is checked first and always wins.
#[map]
pub static ALLOWED_FILES: HashMap<FileKey, BanEntry> =
    HashMap::with_max_entries(ALLOWED_FILES_CAPACITY, BPF_F_NO_PREALLOC);

#[map]
pub static BANNED_HASHES: HashMap<ContentHash, BanEntry> =
    HashMap::with_max_entries(BANNED_HASHES_CAPACITY, BPF_F_NO_PREALLOC);

/// The content verdict of recently executed inodes, so an unchanged file is hashed once per
/// policy generation. Entries are dropped when their file may have changed
/// (`verdict_cache::forget_verdict_*`).
#[map]
pub static VERDICT_CACHE: LruHashMap<FileKey, CachedVerdict> =
    LruHashMap::with_max_entries(VERDICT_CACHE_CAPACITY, 0);

/// One slot: the generation of the content bans. The daemon bumps it after changing
/// `BANNED_HASHES`, which makes every cached verdict stale at once.
#[map]
pub static POLICY_GENERATION: Array<u32> = Array::with_max_entries(1, 0);

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_RING_BYTES, 0);

#[map]
pub static COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(blocker_common::counter::COUNT, 0);

/// Settings, indexed by `blocker_common::setting`; a map rather than a global so the daemon can
/// change them without reloading the programs.
#[map]
pub static SETTINGS: Array<u32> = Array::with_max_entries(blocker_common::setting::COUNT, 0);

/// The record limiter: how often each user was recently reported doing each operation to each
/// file (see `blocker_common::record_limit`).
#[map]
pub static RECENT_RECORDS: LruHashMap<RecordKey, RecordWindow> =
    LruHashMap::with_max_entries(record_limit::CAPACITY, 0);

/// Tamper protection: which daemon to guard and which binary is trusted; off while zero.
#[map]
pub static PROTECTION: Array<Protection> = Array::with_max_entries(1, 0);

/// The daemon's heartbeat (see `blocker_common::Heartbeat`).
#[map]
pub static HEARTBEAT: Array<Heartbeat> = Array::with_max_entries(1, 0);

/// Directories whose entries, and files whose contents, only trusted processes may change: the
/// policy directory, the pin directories, the blocker binary.
#[map]
pub static PROTECTED_INODES: HashMap<FileKey, u32> =
    HashMap::with_max_entries(PROTECTED_INODES_CAPACITY, BPF_F_NO_PREALLOC);

/// blocker's own maps, programs and links, keyed by `blocker_common::BpfObject::key`.
#[map]
pub static PROTECTED_BPF_OBJECTS: HashMap<u64, u32> =
    HashMap::with_max_entries(PROTECTED_BPF_OBJECTS_CAPACITY, BPF_F_NO_PREALLOC);

// The two globals below are read-only data the loader sets before loading; the kernel freezes
// them, so the verifier knows each value as a constant. Read them with `read_volatile` (as
// `kernel_types` and `hook_arguments` do), or the compiler would fold in these initial values.

/// Where the struct members the programs read sit in the running kernel, from its BTF.
#[no_mangle]
pub static KERNEL_OFFSETS: KernelOffsets = KernelOffsets {
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
    inode_i_size: 0,
    inode_i_uid: 0,
    super_block_s_magic: 0,
    super_block_s_user_ns: 0,
    super_block_s_bdev: 0,
    block_device_bd_dev: 0,
    user_namespace_level: 0,
    task_struct_cred: 0,
    cred_fsuid: 0,
    cred_cap_effective: 0,
    cred_user_ns: 0,
    task_struct_nsproxy: 0,
    nsproxy_mnt_ns: 0,
    mnt_namespace_ns: 0,
    ns_common_inum: 0,
    path_mnt: 0,
    vfsmount_mnt_root: 0,
    mount_mnt: 0,
    mount_mnt_group_id: 0,
    mount_mnt_parent: 0,
    task_struct_ptrace: 0,
    task_struct_pid: 0,
    task_struct_pid_links: 0,
    proc_inode_pid: 0,
    proc_inode_vfs_inode: 0,
    pid_tasks: 0,
    inode_i_mode: 0,
    mount_mnt_mountpoint: 0,
    padding: 0,
};

/// Where each hook argument the programs read sits in the running kernel's hook prototypes.
#[no_mangle]
pub static HOOK_ARGUMENT_POSITIONS: HookArgumentPositions = HookArgumentPositions::unknown();

/// Reads setting `index`, 0 if unset.
pub fn setting(index: u32) -> u32 {
    SETTINGS.get(index).copied().unwrap_or(0)
}

pub fn increment(counter: u32) {
    if let Some(count) = COUNTERS.get_ptr_mut(counter) {
        // SAFETY: a per-CPU slot, touched only by programs on this CPU with preemption off.
        unsafe { *count += 1 };
    }
}
