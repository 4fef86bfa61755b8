//! Types shared by the kernel programs (`blocker-ebpf`) and the daemon (`blocker`).
//!
//! Everything here is `#[repr(C)]` and crosses the user/kernel boundary byte for byte, through
//! map keys and values, the event ring buffer or a global set at load time. Names of maps,
//! programs and globals live here too so neither side spells them on its own.
#![no_std]

/// Names of the objects in the eBPF ELF file, as the loader looks them up.
pub mod names {
    pub const BANNED_FILES_MAP: &str = "BANNED_FILES";
    pub const EVENTS_MAP: &str = "EVENTS";
    pub const COUNTERS_MAP: &str = "COUNTERS";
    pub const KERNEL_OFFSETS_GLOBAL: &str = "KERNEL_OFFSETS";
    pub const SETTINGS_MAP: &str = "SETTINGS";
    pub const HOOK_ARGUMENT_POSITIONS_GLOBAL: &str = "HOOK_ARGUMENT_POSITIONS";
    pub const KILL_PROGRAM: &str = "sched_process_exec";
    pub const KILL_TRACEPOINT: &str = "sched_process_exec";
    pub const BANNED_HASHES_MAP: &str = "BANNED_HASHES";
    pub const VERDICT_CACHE_MAP: &str = "VERDICT_CACHE";
    pub const POLICY_GENERATION_MAP: &str = "POLICY_GENERATION";
    pub const PROTECTION_MAP: &str = "PROTECTION";
    pub const PROTECTED_INODES_MAP: &str = "PROTECTED_INODES";
    pub const PROTECTED_BPF_OBJECTS_MAP: &str = "PROTECTED_BPF_OBJECTS";
    pub const HEARTBEAT_MAP: &str = "HEARTBEAT";
    pub const ALLOWED_FILES_MAP: &str = "ALLOWED_FILES";
}

/// The LSM programs, each with its hook and the hook arguments it reads; the loader attaches a
/// program only where the running kernel's prototype of the hook has every one of them.
pub mod lsm_programs {
    use crate::HookArgument::{self, *};

    /// An LSM program of the eBPF object.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct LsmProgram {
        /// The program's name in the object (its function name).
        pub name: &'static str,
        /// The hook, without the `bpf_lsm_` prefix of its BTF function.
        pub hook: &'static str,
        pub arguments: &'static [HookArgument],
    }

    const fn program(
        name: &'static str,
        hook: &'static str,
        arguments: &'static [HookArgument],
    ) -> LsmProgram {
        LsmProgram {
            name,
            hook,
            arguments,
        }
    }

    /// The exec check by identity, for kernels that cannot hash files for BPF.
    pub const EXEC_IDENTITY: LsmProgram = program(
        "bprm_check_security",
        "bprm_check_security",
        &[BprmCheckSecurityBprm],
    );
    /// The sleepable exec check by identity and content (IMA's hash), with the fileless setting.
    pub const EXEC_CONTENT: LsmProgram = program(
        "bprm_check_content",
        "bprm_check_security",
        &[BprmCheckSecurityBprm],
    );
    /// Programs that drop cached content verdicts of files that may have changed. The cache is
    /// used only while all of them are attached.
    pub const VERDICT_INVALIDATION: [LsmProgram; 4] = [
        program("forget_verdict_on_write_open", "file_open", &[FileOpenFile]),
        program(
            "forget_verdict_on_setattr",
            "inode_setattr",
            &[InodeSetattrDentry],
        ),
        program(
            "forget_verdict_on_truncate",
            "path_truncate",
            &[PathTruncatePath],
        ),
        program(
            "forget_verdict_on_shared_write_mmap",
            "mmap_file",
            &[MmapFileFile, MmapFileProt, MmapFileFlags],
        ),
    ];
    /// Programs refusing executable mappings of banned files (`ld.so /path`, `dlopen`,
    /// `mprotect(PROT_EXEC)`).
    pub const EXECUTABLE_MAPPINGS: [LsmProgram; 2] = [
        program("mmap_file", "mmap_file", &[MmapFileFile, MmapFileProt]),
        program(
            "file_mprotect",
            "file_mprotect",
            &[FileMprotectVma, FileMprotectProt],
        ),
    ];
    /// The sleepable check of executable mappings by identity, content and the fileless
    /// setting, used instead of the identity one (`EXECUTABLE_MAPPINGS[0]`) with content checks.
    pub const MAPPING_CONTENT: LsmProgram = program(
        "mmap_file_content",
        "mmap_file",
        &[MmapFileFile, MmapFileProt],
    );
    /// Programs keeping lockdown's trust current while a package manager replaces and removes
    /// files; inert unless lockdown is on and a package manager is flagged.
    pub const PACKAGE_UPDATES: [LsmProgram; 2] = [
        program(
            "trust_package_manager_renames",
            "inode_rename",
            &[InodeRenameOldDentry, InodeRenameNewDentry],
        ),
        program(
            "distrust_package_manager_unlinks",
            "inode_unlink",
            &[InodeUnlinkDentry],
        ),
    ];
    /// Tamper protection programs; inert until `PROTECTION` names a daemon.
    pub const PROTECTION: [LsmProgram; 25] = [
        program(
            "protect_daemon_from_signals",
            "task_kill",
            &[TaskKillTask, TaskKillSignal],
        ),
        program(
            "protect_daemon_from_ptrace",
            "ptrace_access_check",
            &[PtraceAccessCheckChild, PtraceAccessCheckMode],
        ),
        program("protect_maps", "bpf_map", &[BpfMapMap]),
        program("protect_programs", "bpf_prog", &[BpfProgProg]),
        program("protect_links", "bpf", &[BpfCommand, BpfAttr]),
        program("protect_files_from_writes", "file_open", &[FileOpenFile]),
        program(
            "protect_files_from_setattr",
            "inode_setattr",
            &[InodeSetattrDentry, InodeSetattrAttr],
        ),
        program(
            "protect_dirs_from_create",
            "inode_create",
            &[InodeCreateDir],
        ),
        program(
            "protect_dirs_from_symlink",
            "inode_symlink",
            &[InodeSymlinkDir],
        ),
        program("protect_dirs_from_mkdir", "inode_mkdir", &[InodeMkdirDir]),
        program("protect_dirs_from_mknod", "inode_mknod", &[InodeMknodDir]),
        program(
            "protect_dirs_from_unlink",
            "inode_unlink",
            &[InodeUnlinkDir, InodeUnlinkDentry],
        ),
        program(
            "protect_dirs_from_rmdir",
            "inode_rmdir",
            &[InodeRmdirDir, InodeRmdirDentry],
        ),
        program(
            "protect_dirs_from_link",
            "inode_link",
            &[InodeLinkOldDentry, InodeLinkDir],
        ),
        program(
            "protect_dirs_from_rename",
            "inode_rename",
            &[
                InodeRenameOldDir,
                InodeRenameOldDentry,
                InodeRenameNewDir,
                InodeRenameNewDentry,
            ],
        ),
        program(
            "protect_dirs_from_mount",
            "sb_mount",
            &[SbMountPath, SbMountFlags],
        ),
        program(
            "protect_dirs_from_move_mount",
            "move_mount",
            &[MoveMountFromPath, MoveMountToPath],
        ),
        program("protect_mounts_from_umount", "sb_umount", &[SbUmountMnt]),
        program(
            "protect_daemon_from_rlimits",
            "task_setrlimit",
            &[TaskSetrlimitTask, TaskSetrlimitResource],
        ),
        program(
            "protect_daemon_from_owner_signals",
            "file_send_sigiotask",
            &[FileSendSigiotaskTask, FileSendSigiotaskSignal],
        ),
        program("protect_trust_from_pid_reuse", "task_free", &[TaskFreeTask]),
        program(
            "protect_daemon_from_nice",
            "task_setnice",
            &[TaskSetniceTask],
        ),
        program(
            "protect_daemon_from_ioprio",
            "task_setioprio",
            &[TaskSetioprioTask],
        ),
        program(
            "protect_daemon_from_scheduling",
            "task_setscheduler",
            &[TaskSetschedulerTask],
        ),
        program(
            "protect_trust_from_exe_changes",
            "task_prctl",
            &[TaskPrctlOption, TaskPrctlArg2, TaskPrctlArg3],
        ),
    ];
}

/// Declares [`HookArgument`] with, beside each variant, its hook and its name in the hook's
/// prototype.
macro_rules! hook_arguments {
    ($($(#[$doc:meta])* $variant:ident = $hook:literal . $name:literal,)*) => {
        /// An argument of an LSM hook that a program reads. Its position differs between
        /// kernels (hooks gain arguments), so the loader finds it by name in the running
        /// kernel's BTF and hands it to the programs in `HOOK_ARGUMENT_POSITIONS`, indexed by
        /// this value.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum HookArgument {
            $($(#[$doc])* $variant,)*
        }

        impl HookArgument {
            pub const ALL: [HookArgument; HOOK_ARGUMENT_COUNT] = [$(HookArgument::$variant,)*];

            /// The hook, without the `bpf_lsm_` prefix of its BTF function.
            pub const fn hook(self) -> &'static str {
                match self {
                    $(HookArgument::$variant => $hook,)*
                }
            }

            /// The argument's name in the hook's prototype.
            pub const fn name(self) -> &'static str {
                match self {
                    $(HookArgument::$variant => $name,)*
                }
            }
        }

        /// How many [`HookArgument`]s there are.
        pub const HOOK_ARGUMENT_COUNT: usize = [$($name,)*].len();
    };
}

hook_arguments! {
    BprmCheckSecurityBprm = "bprm_check_security"."bprm",
    MmapFileFile = "mmap_file"."file",
    MmapFileProt = "mmap_file"."prot",
    MmapFileFlags = "mmap_file"."flags",
    FileMprotectVma = "file_mprotect"."vma",
    FileMprotectProt = "file_mprotect"."prot",
    FileOpenFile = "file_open"."file",
    /// Second since Linux 6.3, behind the mount's `struct mnt_idmap *`.
    InodeSetattrDentry = "inode_setattr"."dentry",
    InodeSetattrAttr = "inode_setattr"."attr",
    PathTruncatePath = "path_truncate"."path",
    TaskKillTask = "task_kill"."p",
    TaskKillSignal = "task_kill"."sig",
    PtraceAccessCheckChild = "ptrace_access_check"."child",
    PtraceAccessCheckMode = "ptrace_access_check"."mode",
    BpfMapMap = "bpf_map"."map",
    BpfProgProg = "bpf_prog"."prog",
    BpfCommand = "bpf"."cmd",
    BpfAttr = "bpf"."attr",
    InodeCreateDir = "inode_create"."dir",
    InodeSymlinkDir = "inode_symlink"."dir",
    InodeMkdirDir = "inode_mkdir"."dir",
    InodeMknodDir = "inode_mknod"."dir",
    InodeUnlinkDir = "inode_unlink"."dir",
    InodeUnlinkDentry = "inode_unlink"."dentry",
    InodeRmdirDir = "inode_rmdir"."dir",
    InodeRmdirDentry = "inode_rmdir"."dentry",
    InodeLinkOldDentry = "inode_link"."old_dentry",
    InodeLinkDir = "inode_link"."dir",
    InodeRenameOldDir = "inode_rename"."old_dir",
    InodeRenameOldDentry = "inode_rename"."old_dentry",
    InodeRenameNewDir = "inode_rename"."new_dir",
    InodeRenameNewDentry = "inode_rename"."new_dentry",
    SbMountPath = "sb_mount"."path",
    SbMountFlags = "sb_mount"."flags",
    MoveMountFromPath = "move_mount"."from_path",
    MoveMountToPath = "move_mount"."to_path",
    SbUmountMnt = "sb_umount"."mnt",
    TaskFreeTask = "task_free"."task",
    TaskSetniceTask = "task_setnice"."p",
    TaskSetioprioTask = "task_setioprio"."p",
    TaskSetschedulerTask = "task_setscheduler"."p",
    TaskPrctlOption = "task_prctl"."option",
    TaskPrctlArg2 = "task_prctl"."arg2",
    TaskPrctlArg3 = "task_prctl"."arg3",
    TaskSetrlimitTask = "task_setrlimit"."p",
    TaskSetrlimitResource = "task_setrlimit"."resource",
    FileSendSigiotaskTask = "file_send_sigiotask"."tsk",
    FileSendSigiotaskSignal = "file_send_sigiotask"."sig",
}

/// Where each [`HookArgument`] sits among its hook's arguments in the running kernel (0 for the
/// first), indexed by the argument; set by the loader from the kernel's BTF. An argument the
/// kernel lacks keeps [`HookArgumentPositions::UNKNOWN`], and no program reading it is loaded.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HookArgumentPositions {
    pub positions: [u8; HOOK_ARGUMENT_COUNT],
}

impl HookArgumentPositions {
    pub const UNKNOWN: u8 = u8::MAX;
    /// The programs read arguments among a hook's first six; LSM hooks have no more today.
    pub const MAX_POSITION: u8 = 5;

    pub const fn unknown() -> Self {
        Self {
            positions: [Self::UNKNOWN; HOOK_ARGUMENT_COUNT],
        }
    }
}

/// Capacity of the banned-files map. Entries are allocated on use (`BPF_F_NO_PREALLOC`), so a
/// large capacity costs nothing until a policy fills it.
pub const BANNED_FILES_CAPACITY: u32 = 1 << 20;

/// Capacity of the allowed-files map (`action = "allow"` rules by identity), allocated on use
/// like the banned files.
pub const ALLOWED_FILES_CAPACITY: u32 = 1 << 20;

/// Default size of the event ring buffer in bytes (a power of two, a multiple of the page size);
/// the daemon may set another at load time. About 3000 events fit in the default.
pub const EVENTS_RING_BYTES: u32 = 1 << 20;

/// Capacity of the content ban map (SHA-256 → entry), allocated on use like the banned files.
pub const BANNED_HASHES_CAPACITY: u32 = 1 << 16;

/// Files larger than this many MiB are not hashed, unless a policy file's `hash_limit_mib` sets
/// a smaller bound: hashing a file costs time in proportion to its size, and any user can make a
/// sparse file of any size for free. 2 GiB is larger than any application's executable or
/// library we know of. Userspace matches such a file by identity only; the kernel reads the
/// same bound (`setting::HASH_LIMIT_MIB`) and treats its exec as unhashable.
pub const DEFAULT_HASH_LIMIT_MIB: u32 = 2048;

/// Capacity of the per-inode verdict cache. An LRU map is always preallocated, so this is paid
/// up front (roughly 100 bytes an entry); the least recently executed files are evicted first,
/// which only costs them a rehash.
pub const VERDICT_CACHE_CAPACITY: u32 = 1 << 14;

/// A SHA-256 digest, the key of the content ban map.
pub type ContentHash = [u8; 32];

/// A [`ContentHash`] that stands for "not computed": no file's SHA-256 is all zeros (finding one
/// would break SHA-256), so the value needs no flag beside it.
pub const UNKNOWN_CONTENT_HASH: ContentHash = [0; 32];

/// `BPF_F_NO_PREALLOC`: hash map entries are allocated when inserted.
pub const BPF_F_NO_PREALLOC: u32 = 1;

/// Identity of a file as the kernel sees it: the device of its superblock and its inode number.
///
/// `dev` is in the kernel's internal encoding, `(major << 20) | minor`, which is not the
/// encoding of `st_dev` in userspace.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FileKey {
    pub ino: u64,
    pub dev: u32,
    /// Always zero: the kernel hashes every byte of a key, padding included.
    pub padding: u32,
}

impl FileKey {
    pub const fn new(dev: u32, ino: u64) -> Self {
        Self {
            ino,
            dev,
            padding: 0,
        }
    }
}

/// Declares a value that crosses the user/kernel boundary as a `u32`, with each variant's
/// number and its name (in records and logs) side by side. Structs shared with the kernel keep
/// the `u32` ([`wire`](Action::wire)), because a number read from the kernel may be one this
/// build does not know: [`from_wire`](Action::from_wire) reads it leniently.
macro_rules! wire_values {
    ($(#[$doc:meta])* $type:ident { $($(#[$variant_doc:meta])* $variant:ident = $value:literal, $name:literal;)* }) => {
        $(#[$doc])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum $type {
            $($(#[$variant_doc])* $variant = $value,)*
        }

        impl $type {
            pub const ALL: &'static [$type] = &[$($type::$variant,)*];

            /// The number on the wire.
            pub const fn wire(self) -> u32 {
                self as u32
            }

            /// The value of a number from the wire; `None` for one this build does not know.
            pub const fn from_wire(value: u32) -> Option<Self> {
                match value {
                    $($value => Some($type::$variant),)*
                    _ => None,
                }
            }

            /// The name in records and logs.
            pub const fn name(self) -> &'static str {
                match self {
                    $($type::$variant => $name,)*
                }
            }
        }
    };
}

wire_values! {
    /// What happens when a banned file is executed.
    Action {
        /// Let it run without a report: a setting (fileless execs), or a cached content verdict
        /// of a file no rule bans.
        Allow = 0, "allow";
        /// Refuse the exec (EPERM under the LSM backend, SIGKILL under the kill backend).
        Deny = 1, "deny";
        /// Let it run and report it.
        Audit = 2, "audit";
    }
}

wire_values! {
    /// How the kernel side enforces a deny.
    Backend {
        /// `lsm/bprm_check_security` returns -EPERM: the exec never happens.
        Lsm = 1, "lsm";
        /// `tp_btf/sched_process_exec` sends SIGKILL before the new image runs any code.
        Kill = 2, "kill";
    }
}

wire_values! {
    /// What the kernel was asked to do with a banned file, or which tamper attempt it refused.
    /// The names of tamper attempts are the `attempt` of `tamper` records.
    Operation {
        /// `execve`/`execveat` of the file.
        Exec = 1, "exec";
        /// `mmap` of the file with `PROT_EXEC` (the dynamic loader, `dlopen`).
        Mmap = 2, "mmap";
        /// `mprotect` adding `PROT_EXEC` to a mapping of the file.
        Mprotect = 3, "mprotect";
        /// Tamper attempts refused while protection is on. A signal to the daemon; the event's
        /// `detail` is the signal number.
        Signal = 4, "signal";
        /// `ptrace` (or memory or descriptor access) of the daemon or of a process running the
        /// blocker binary; `detail` is the kernel's ptrace access mode.
        Ptrace = 5, "ptrace";
        /// A descriptor of one of blocker's maps, programs or links; `detail` is the
        /// [`BpfObject`] kind and the event's `ino` its id.
        BpfObject = 6, "bpf_object";
        /// A change to a protected directory or file; `detail` is a [`FileChange`].
        FileChange = 7, "file_change";
        /// A new resource limit for the daemon (`prlimit`); `detail` is the `RLIMIT_*` resource.
        ResourceLimit = 8, "resource_limit";
        /// A signal to the daemon through a descriptor's owner (`F_SETOWN`, `F_SETSIG`);
        /// `detail` is the signal number (0: SIGIO).
        OwnerSignal = 9, "owner_signal";
        /// A new executable file for the caller's own process (`prctl(PR_SET_MM,
        /// PR_SET_MM_EXE_FILE)`, or `PR_SET_MM_MAP` with an `exe_fd`); `detail` is the
        /// `PR_SET_MM_*` operation.
        ExeFileChange = 10, "exe_file";
        /// A new priority for the daemon; `detail` is a [`PriorityChange`].
        Priority = 11, "priority";
        /// Opening one of the daemon's own `/proc` files for writing (`oom_score_adj`,
        /// `timerslack_ns`, ...).
        ProcWrite = 12, "proc_write";
    }
}

wire_values! {
    /// The priorities of the daemon that tamper protection keeps; the names say what changed.
    PriorityChange {
        /// `setpriority`, `nice`.
        Nice = 1, "nice";
        /// `ioprio_set`.
        Io = 2, "I/O priority";
        /// `sched_setscheduler`, `sched_setattr`, `sched_setaffinity`, and a move into a cgroup
        /// with other CPUs (cpuset).
        Scheduling = 3, "scheduling policy or CPUs";
    }
}

wire_values! {
    /// Kinds of BPF objects tamper protection guards.
    BpfObject {
        Map = 1, "map";
        Program = 2, "program";
        Link = 3, "link";
    }
}

impl BpfObject {
    /// The key of `PROTECTED_BPF_OBJECTS` (ids are per kind).
    pub const fn key(self, id: u32) -> u64 {
        ((self as u64) << 32) | id as u64
    }
}

wire_values! {
    /// Changes to protected files and directories that tamper protection refuses; the names
    /// say what was refused.
    FileChange {
        OpenForWriting = 1, "open for writing";
        Setattr = 2, "change of attributes or size";
        Create = 3, "create";
        Link = 4, "hard link";
        Unlink = 5, "unlink";
        Symlink = 6, "symlink";
        Mkdir = 7, "mkdir";
        Rmdir = 8, "rmdir";
        Mknod = 9, "mknod";
        Rename = 10, "rename";
        Mount = 11, "mount over";
        Umount = 12, "unmount";
    }
}

/// How much of a protected inode is guarded, the value of its `PROTECTED_INODES` entry.
pub mod inode_guard {
    /// No entry: the inode is not guarded (never stored in the map).
    pub const NONE: u32 = 0;
    /// The inode, its own name, what is mounted on it and, for a directory, every entry in it:
    /// the policy and pin directories and the blocker binary.
    pub const WHOLE: u32 = 1;
    /// Only the inode's own name and what is mounted on or from it: a directory on the way to
    /// a whole one, whose other entries stay free to change.
    pub const PATH: u32 = 2;
    /// A cgroup directory of the daemon or one of its ancestors: its control files
    /// (`cgroup.kill`, `cpu.max`, `memory.max`, ...) may be written by the blocker binary and
    /// the service manager (pid 1) only, whichever files the enabled controllers add later.
    pub const CGROUP: u32 = 3;
    /// `cgroup.procs`, `cgroup.threads` and `cgroup.subtree_control` of those: free, since other
    /// processes' moves and controllers pass through them.
    pub const CGROUP_MEMBERSHIP: u32 = 4;
    /// `cgroup.freeze` of those: the blocker binary only. The service manager never freezes a
    /// service but when told to (`systemctl freeze`), root blinding the daemon through it.
    pub const CGROUP_FREEZE: u32 = 5;
    /// Whether an entry guards the inode's own name and what is mounted on it.
    pub const fn guards_name(guard: u32) -> bool {
        guard == WHOLE || guard == PATH
    }
}

/// Tamper protection, the one slot of `PROTECTION`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Protection {
    /// The daemon, which other processes may not signal or trace; 0 turns protection off.
    pub daemon_tgid: u32,
    /// The inode number of the daemon's mount namespace (`/proc/self/ns/mnt`).
    pub daemon_mount_namespace: u32,
    /// The blocker binary, trusted only while no daemon lives (`daemon_gone`): the next daemon
    /// adopts the pins and protects them again.
    pub trusted_exe: FileKey,
    /// The inode number of pid 1's mount namespace, where the service manager starts the next
    /// daemon; 0 if it could not be read.
    pub init_mount_namespace: u32,
    /// 1 once the daemon's process is gone (set by the kernel when its task is freed) without
    /// having turned protection off: killed by pid 1, the OOM killer, a crash.
    pub daemon_gone: u32,
}

/// Capacity of the protected inodes map: directories, the directories above them, and the blocker
/// binary.
pub const PROTECTED_INODES_CAPACITY: u32 = 256;
/// Capacity of the protected BPF objects map: blocker's maps, programs and links.
pub const PROTECTED_BPF_OBJECTS_CAPACITY: u32 = 256;

/// Indices into the settings array, each holding one of [`action`].
pub mod setting {
    /// What to do with the exec of a file that has no name on disk (`nlink == 0`: a memfd, an
    /// `O_TMPFILE`, a deleted file).
    pub const FILELESS: u32 = 0;
    /// Whether the verdict cache may be used (1) or not (0): only while every program that
    /// drops stale verdicts is attached, so no verdict outlives a change the kernel could not
    /// report. Without it content is hashed at every exec.
    pub const VERDICT_CACHE: u32 = 1;
    /// What to do with the exec or executable mapping of a file whose content the kernel could
    /// not hash (larger than [`HASH_LIMIT_MIB`], or the hash failed) while content bans exist.
    pub const UNHASHABLE: u32 = 2;
    /// Whether any content ban is in force (1) or not (0): without one nothing is hashed.
    pub const CONTENT_BANS: u32 = 3;
    /// Files larger than this many MiB are not hashed, in the kernel as in userspace; their
    /// execs are unhashable. Unset (0) means [`super::DEFAULT_HASH_LIMIT_MIB`].
    pub const HASH_LIMIT_MIB: u32 = 4;
    /// What to do with the exec or executable mapping of a file on an untrusted path: the file
    /// or a directory above it is owned by someone other than root, or writable by group or
    /// others (see `trusted_path`). A file `ALLOWED_FILES` names is exempt.
    pub const UNTRUSTED_PATHS: u32 = 5;
    /// Lockdown (a policy's `default`): what to do with the exec or executable mapping of a
    /// file `ALLOWED_FILES` does not name.
    pub const LOCKDOWN: u32 = 6;
    pub const COUNT: u32 = 7;
}

/// `rule_id` of events about fileless execs, which no rule but the policy's setting decides.
pub const FILELESS_RULE_ID: u32 = u32::MAX;
/// `rule_id` of events about execs and mappings whose content could not be hashed.
pub const UNHASHABLE_RULE_ID: u32 = u32::MAX - 1;
/// `rule_id` of events about execs and mappings of files on an untrusted path.
pub const UNTRUSTED_PATH_RULE_ID: u32 = u32::MAX - 2;
/// `rule_id` of events about execs and mappings of files no trust source names, in lockdown.
pub const LOCKDOWN_RULE_ID: u32 = u32::MAX - 3;

/// How the kernel judges the path of a file about to run (`setting::UNTRUSTED_PATHS`).
pub mod trusted_path {
    /// Inodes looked at, the file included: a walk that has not reached the root by then is
    /// untrusted. Deeper than any installed program's directory.
    pub const MAX_DEPTH: u32 = 24;
    /// `S_IWGRP | S_IWOTH`: writable by someone other than the owner.
    pub const SHARED_WRITE: u32 = 0o022;
    /// `KernelEvent::detail` of an untrusted path whose walk did not finish: it hit
    /// [`MAX_DEPTH`] or could not read a step (the owner is then reported as `u32::MAX`).
    pub const WALK_UNFINISHED: u32 = u32::MAX;

    /// Whether an inode with this owner and mode may be on a trusted path.
    pub const fn trusted(owner: u32, mode: u32) -> bool {
        owner == 0 && mode & SHARED_WRITE == 0
    }
}

/// Flags of a [`BanEntry`].
pub mod entry_flags {
    /// `generation` holds the file's `i_generation`: the kernel only matches an inode whose
    /// generation is equal, so a recycled inode number never inherits a ban.
    pub const GENERATION_KNOWN: u32 = 1;
    /// In `ALLOWED_FILES`: the file is a package manager (dpkg) whose renames and unlinks as
    /// root keep lockdown's trust current (see the kernel's `package_updates`).
    pub const PACKAGE_MANAGER: u32 = 2;
}

/// The value stored for a banned [`FileKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BanEntry {
    /// Index of the rule in the daemon's rule table, reported in events.
    pub rule_id: u32,
    /// One of [`action`].
    pub action: u32,
    pub generation: u32,
    /// Bits of [`entry_flags`].
    pub flags: u32,
}

impl BanEntry {
    /// Whether this entry names the inode whose generation is `inode_generation`.
    pub const fn matches_generation(&self, inode_generation: u32) -> bool {
        self.flags & entry_flags::GENERATION_KNOWN == 0 || self.generation == inode_generation
    }
}

/// The content verdict the kernel remembers for an inode (keyed by its [`FileKey`]), so an
/// unchanged file is hashed once per policy generation rather than at every exec.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CachedVerdict {
    /// The policy generation the verdict was computed under; any other generation makes the
    /// entry stale. The daemon bumps the generation after every change to the content bans.
    pub policy_generation: u32,
    /// `i_generation` of the inode that was hashed: a recycled inode number is a miss.
    pub inode_generation: u32,
    /// Rule of the matching content ban; meaningless when `action` is [`Action::Allow.wire()`].
    pub rule_id: u32,
    /// One of [`action`]; [`Action::Allow.wire()`] when the content is not banned.
    pub action: u32,
    /// The SHA-256 the verdict was computed from, reported with a ban it finds.
    pub sha256: ContentHash,
}

/// Indices into the per-CPU counters map.
pub mod counter {
    /// Events dropped because the ring buffer was full (enforcement happened regardless).
    pub const EVENTS_LOST: u32 = 0;
    /// Execs of an inode whose number was banned but whose generation differed: a recycled
    /// inode number, left alone.
    pub const GENERATION_MISMATCH: u32 = 1;
    /// Content checks answered from the verdict cache, without hashing.
    pub const VERDICT_CACHE_HIT: u32 = 2;
    /// Content checks that hashed the file.
    pub const VERDICT_CACHE_MISS: u32 = 3;
    /// Execs whose content could not be hashed (the kernel's IMA failed or used another
    /// algorithm): allowed unless banned by identity, and never cached.
    pub const CONTENT_HASH_FAILED: u32 = 4;
    /// Cached verdicts dropped because their file was opened for writing, truncated, had its
    /// attributes changed or was mapped shared and writable.
    pub const VERDICT_INVALIDATED: u32 = 5;
    /// Content checks of executable mappings answered from the verdict cache. Kept apart from
    /// the exec's: one exec maps the program, its loader and its libraries.
    pub const MAPPING_VERDICT_CACHE_HIT: u32 = 6;
    /// Content checks of executable mappings that hashed the file.
    pub const MAPPING_VERDICT_CACHE_MISS: u32 = 7;
    /// Content checks of files larger than the hash limit, which are not hashed.
    pub const CONTENT_TOO_LARGE: u32 = 8;
    /// Content checks of files on a filesystem that can change their bytes without the hooks
    /// this inode passes seeing it (overlay, FUSE, network, user-namespace and loop-device
    /// mounts): not hashed, unhashable.
    pub const CONTENT_UNGUARDED: u32 = 9;
    /// Records not sent because the same user, file and operation was reported
    /// [`super::record_limit::BURST`] times within [`super::record_limit::WINDOW_NS`].
    pub const RECORDS_SUPPRESSED: u32 = 10;
    /// Changes the kernel made to `ALLOWED_FILES` as a package manager renamed or unlinked
    /// files: a resolution begun before one may be stale, and the daemon resolves again.
    pub const PACKAGE_TRUST_CHANGES: u32 = 11;
    pub const COUNT: u32 = 12;
}

/// Filesystems on which every change to a file's bytes passes the hooks that drop cached
/// verdicts (`file_open` for writing, `inode_setattr`, `path_truncate`, shared writable `mmap`)
/// for that very inode, given a superblock owned by the initial user namespace and not backed
/// by a loop device: `s_magic` values. Only there is content judged: elsewhere the bytes hashed
/// need not be the bytes that run (an overlay's upper file, a FUSE server, another machine can
/// change them unseen), so such files are unhashable.
pub mod guarded_filesystem {
    pub const EXT4: u64 = 0xEF53;
    pub const XFS: u64 = 0x5846_5342;
    pub const BTRFS: u64 = 0x9123_683E;
    pub const TMPFS: u64 = 0x0102_1994;
    pub const F2FS: u64 = 0xF2F5_2010;
    pub const ALL: [u64; 5] = [EXT4, XFS, BTRFS, TMPFS, F2FS];
    /// `LOOP_MAJOR`: the block device of a filesystem image, whose backing file can be written
    /// without touching the mounted filesystem's inodes.
    pub const LOOP_DEVICE_MAJOR: u32 = 7;
}

/// How the kernel bounds records of repeated attempts: per (user, file, operation), at most
/// `BURST` records every `WINDOW_NS`; the first record after a window that suppressed some says
/// how many (`KernelEvent::suppressed`).
pub mod record_limit {
    pub const BURST: u32 = 5;
    pub const WINDOW_NS: u64 = 10_000_000_000;
    /// Distinct (user, file, operation) triples tracked; the least recent are forgotten first.
    pub const CAPACITY: u32 = 1 << 13;
}

/// The daemon's heartbeat, the one slot of `HEARTBEAT`: the daemon writes it every
/// [`heartbeat::INTERVAL_SECS`], so the programs can tell, in each event, that nobody has been
/// answering (killed, frozen or starved without a signal), and the next daemon that the last one
/// went silent rather than stopped.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Heartbeat {
    /// `CLOCK_BOOTTIME` (`bpf_ktime_get_boot_ns`) of the last beat; 0: none yet.
    pub last_beat_ns: u64,
    /// The process id of the daemon that beat.
    pub daemon_tgid: u32,
    /// 1 once that daemon stopped the documented way (its pinned programs enforce on with
    /// nobody answering, as intended); 0 while it runs.
    pub stopped: u32,
}

pub mod heartbeat {
    pub const INTERVAL_SECS: u64 = 5;
    /// Beats missed before the daemon counts as silent: slack for a busy machine.
    pub const MISSED_BEFORE_SILENT: u64 = 3;
    pub const SILENT_AFTER_NS: u64 = INTERVAL_SECS * MISSED_BEFORE_SILENT * 1_000_000_000;
}

/// The key of the record limiter: who did what to which file.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordKey {
    pub file: FileKey,
    pub uid: u32,
    /// One of [`operation`].
    pub operation: u32,
}

/// The record limiter's state for one [`RecordKey`].
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RecordWindow {
    /// `bpf_ktime_get_boot_ns()` when the window began.
    pub start_ns: u64,
    /// Records sent in this window.
    pub sent: u32,
    /// Records suppressed in this window.
    pub suppressed: u32,
}

/// Length of `task_struct::comm`.
pub const COMM_LEN: usize = 16;
/// Bytes of `bprm->filename` carried in an event; longer names are cut.
pub const FILENAME_LEN: usize = 256;

/// One attempt to run code from a banned file (exec or executable mapping), or to tamper with
/// blocker, as the kernel reports it through the ring buffer. For a tamper attempt, `dev` and
/// `ino` identify the file it aimed at (or the id of the BPF object in `ino`).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct KernelEvent {
    /// `bpf_ktime_get_boot_ns()`: nanoseconds since boot, suspend included.
    pub boot_time_ns: u64,
    pub ino: u64,
    /// Kernel `pid`: the thread that called exec.
    pub tid: u32,
    /// Kernel `tgid`: the process id userspace sees.
    pub tgid: u32,
    /// Process id of the real parent.
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// Kernel encoding, as in [`FileKey`].
    pub dev: u32,
    pub rule_id: u32,
    /// One of [`action`].
    pub action: u32,
    /// One of [`backend`].
    pub backend: u32,
    /// One of [`operation`].
    pub operation: u32,
    /// Bytes of `filename` in use, without the terminating NUL; 0 for mappings, which have no
    /// exec path.
    pub filename_len: u32,
    /// For a refused tamper attempt, what was tried (see [`operation`]); for an untrusted path,
    /// which inode made it so (see `offender_owner`); otherwise 0.
    pub detail: u32,
    /// Records of the same user, file and operation suppressed in the window before this one
    /// (see [`record_limit`]).
    pub suppressed: u32,
    /// Seconds since the daemon's last heartbeat, when it had gone silent without stopping
    /// (see [`Heartbeat`]); 0 while it answers.
    pub daemon_silent_secs: u32,
    /// For an untrusted path (`UNTRUSTED_PATH_RULE_ID`): the owner of the inode that made it
    /// untrusted, whose distance above the file is `detail` (0: the file itself,
    /// [`trusted_path::WALK_UNFINISHED`]: the walk did not finish); otherwise 0.
    pub offender_owner: u32,
    /// The mode (`st_mode` bits) of that inode; otherwise 0.
    pub offender_mode: u32,
    /// The file's SHA-256 where a content check computed it for this decision (now, or when the
    /// verdict was cached); [`UNKNOWN_CONTENT_HASH`] where none did.
    pub sha256: ContentHash,
    pub comm: [u8; COMM_LEN],
    /// The path as given to exec (`bprm->filename`), NUL-terminated unless cut.
    pub filename: [u8; FILENAME_LEN],
}

/// Byte offsets of the kernel struct fields the programs read, taken from the running kernel's
/// BTF at load time so one object runs on every kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelOffsets {
    pub linux_binprm_file: u32,
    pub linux_binprm_filename: u32,
    pub file_f_inode: u32,
    pub inode_i_ino: u32,
    pub inode_i_sb: u32,
    pub inode_i_generation: u32,
    pub super_block_s_dev: u32,
    pub task_struct_real_parent: u32,
    pub task_struct_tgid: u32,
    pub inode_i_nlink: u32,
    pub vm_area_struct_vm_file: u32,
    pub file_f_mode: u32,
    pub path_dentry: u32,
    pub dentry_d_inode: u32,
    pub dentry_d_parent: u32,
    pub file_f_path: u32,
    pub task_struct_mm: u32,
    pub mm_struct_exe_file: u32,
    pub bpf_map_id: u32,
    pub bpf_prog_aux: u32,
    pub bpf_prog_aux_id: u32,
    pub inode_i_size: u32,
    pub inode_i_uid: u32,
    pub super_block_s_magic: u32,
    pub super_block_s_user_ns: u32,
    pub super_block_s_bdev: u32,
    pub block_device_bd_dev: u32,
    pub user_namespace_level: u32,
    pub task_struct_cred: u32,
    pub cred_fsuid: u32,
    pub cred_cap_effective: u32,
    pub cred_user_ns: u32,
    pub task_struct_nsproxy: u32,
    pub nsproxy_mnt_ns: u32,
    /// `mnt_namespace.ns.inum`: the namespace's `ns_common` and its inode number in it.
    pub mnt_namespace_ns: u32,
    pub ns_common_inum: u32,
    pub path_mnt: u32,
    pub vfsmount_mnt_root: u32,
    /// Where the `struct vfsmount` the hooks see sits in its `struct mount`.
    pub mount_mnt: u32,
    pub mount_mnt_group_id: u32,
    pub mount_mnt_parent: u32,
    /// `task_struct.ptrace`: non-zero while a tracer is attached.
    pub task_struct_ptrace: u32,
    pub task_struct_pid: u32,
    /// `task_struct.pid_links[PIDTYPE_PID]`, through which a `struct pid` lists its task.
    pub task_struct_pid_links: u32,
    pub proc_inode_pid: u32,
    /// Where the `struct inode` the hooks see sits in its `struct proc_inode`.
    pub proc_inode_vfs_inode: u32,
    /// `pid.tasks[PIDTYPE_PID].first`.
    pub pid_tasks: u32,
    /// `inode.i_mode`, a `umode_t` (16 bits).
    pub inode_i_mode: u32,
    /// `mount.mnt_mountpoint`: the dentry a mount is mounted on, in its parent mount.
    pub mount_mnt_mountpoint: u32,
    pub padding: u32,
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: plain `#[repr(C)]` integers and byte arrays, with every padding byte spelled out as
    // a field, so any bit pattern is valid and no byte is uninitialised.
    unsafe impl aya::Pod for super::FileKey {}
    unsafe impl aya::Pod for super::BanEntry {}
    unsafe impl aya::Pod for super::KernelEvent {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::CachedVerdict {}
    unsafe impl aya::Pod for super::Protection {}
    unsafe impl aya::Pod for super::Heartbeat {}
    unsafe impl aya::Pod for super::HookArgumentPositions {}
    unsafe impl aya::Pod for super::RecordKey {}
    unsafe impl aya::Pod for super::RecordWindow {}
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::mem::size_of;

    /// Every value reads back from its number, no two share a number or a name, and numbers
    /// this build does not know read as `None`.
    macro_rules! check_wire_values {
        ($($type:ident),*) => {$(
            for (index, value) in $type::ALL.iter().enumerate() {
                assert_eq!($type::from_wire(value.wire()), Some(*value));
                for other in &$type::ALL[index + 1..] {
                    assert_ne!(value.wire(), other.wire());
                    assert_ne!(value.name(), other.name());
                }
            }
            assert_eq!($type::from_wire(u32::MAX), None);
        )*};
    }

    #[test]
    fn wire_values_read_back_and_are_distinct() {
        check_wire_values!(
            Action,
            Backend,
            Operation,
            PriorityChange,
            BpfObject,
            FileChange
        );
    }

    // The kernel side sees these exact sizes; a change must be deliberate on both sides.
    #[test]
    fn layouts_have_no_implicit_padding() {
        assert_eq!(size_of::<FileKey>(), 16);
        assert_eq!(size_of::<BanEntry>(), 16);
        assert_eq!(size_of::<KernelOffsets>(), 200);
        assert_eq!(size_of::<RecordKey>(), 24);
        assert_eq!(size_of::<RecordWindow>(), 16);
        assert_eq!(size_of::<Protection>(), 32);
        assert_eq!(size_of::<CachedVerdict>(), 16 + 32);
        assert_eq!(
            size_of::<KernelEvent>(),
            8 + 8 + 16 * 4 + 32 + COMM_LEN + FILENAME_LEN
        );
    }

    #[test]
    fn generation_is_compared_only_when_known() {
        let unknown = BanEntry {
            rule_id: 1,
            action: Action::Deny.wire(),
            generation: 0,
            flags: 0,
        };
        assert!(unknown.matches_generation(7));
        let known = BanEntry {
            flags: entry_flags::GENERATION_KNOWN,
            generation: 7,
            ..unknown
        };
        assert!(known.matches_generation(7));
        assert!(!known.matches_generation(8));
    }
}
