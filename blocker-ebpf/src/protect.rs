//! Tamper protection. Each program lets everything through at once while protection is off, and
//! refuses only after finding that the operation touches something of blocker's and that the
//! caller is not trusted, which keeps the common path to one array lookup.

use aya_ebpf::{
    helpers::{bpf_get_current_pid_tgid, bpf_probe_read_user},
    macros::lsm,
    programs::LsmContext,
};
use blocker_common::{
    inode_guard, Backend, BpfObject, FileChange, FileKey, HookArgument, Operation, PriorityChange,
    Protection,
};

use crate::{
    hook_arguments,
    kernel_types::{BpfAttr, BpfMap, BpfProg, Dentry, Executable, Inode, Task, Vfsmount},
    maps::{PROTECTED_BPF_OBJECTS, PROTECTED_INODES, PROTECTION},
    report::{report, Ban, Occurrence, ALLOW, REFUSE},
};

const SIGHUP: i32 = 1;
/// The signals that stop a process: SIGSTOP, SIGTSTP, SIGTTIN, SIGTTOU.
const STOP_SIGNALS: [i32; 4] = [19, 20, 21, 22];
/// `PTRACE_MODE_ATTACH` in a ptrace access mode.
const PTRACE_MODE_ATTACH: u32 = 0x02;
/// `BPF_LINK_GET_FD_BY_ID` of `enum bpf_cmd`.
const BPF_LINK_GET_FD_BY_ID: u32 = 30;
/// Capabilities (`CAP_*`) that let a caller past the kernel's own checks.
const CAP_CHOWN: u32 = 0;
const CAP_FOWNER: u32 = 3;
const CAP_SYS_RESOURCE: u32 = 24;
const CAP_SYS_ADMIN: u32 = 21;
/// `ATTR_*` of `iattr.ia_valid` that need ownership or a capability (mode, owner, group, times
/// set to a given value). Size changes and times set to now were checked for write permission
/// before the hook.
const ATTR_NEEDING_OWNERSHIP: u32 = 0x1 | 0x2 | 0x4 | 0x80 | 0x100;
/// `MS_*` flags of `mount(2)`: a remount, a bind mount, and the changes of propagation.
const MS_REMOUNT: u64 = 0x20;
const MS_BIND: u64 = 0x1000;
const MS_PROPAGATION: u64 = (1 << 17) | (1 << 18) | (1 << 19) | (1 << 20);

/// `prctl(2)`'s `PR_SET_MM` and the operations of it that give a process another executable
/// file.
const PR_SET_MM: u64 = 35;
const PR_SET_MM_EXE_FILE: u64 = 13;
const PR_SET_MM_MAP: u64 = 14;
/// `offsetof(struct prctl_mm_map, exe_fd)` in `<linux/prctl.h>`: eleven `__u64`, a pointer and
/// a `__u32` before it.
const PRCTL_MM_MAP_EXE_FD: usize = 100;
/// `exe_fd` of a `PR_SET_MM_MAP` that keeps the executable file.
const KEEP_EXE_FD: u32 = u32::MAX;

/// A signal a process sends (the kernel's own never come here).
#[lsm(hook = "task_kill")]
pub fn protect_daemon_from_signals(ctx: LsmContext) -> i32 {
    let Some(protection) = active_protection() else {
        return ALLOW;
    };
    let signal = hook_arguments::raw(&ctx, HookArgument::TaskKillSignal) as i32;
    // Probing for the daemon (`kill -0`) and asking it to reload change nothing.
    if signal == 0 || signal == SIGHUP {
        return ALLOW;
    }
    if !is_daemon(
        &protection,
        hook_arguments::task(&ctx, HookArgument::TaskKillTask),
    ) {
        return ALLOW;
    }
    let sender = (bpf_get_current_pid_tgid() >> 32) as u32;
    // The service manager stops and restarts the service, but never stops it in place: a stop
    // signal from pid 1 is `systemctl kill -s STOP`, root blinding the daemon through it.
    let from_service_manager = sender == 1 && !STOP_SIGNALS.contains(&signal);
    if from_service_manager || sender == protection.daemon_tgid || trusted(&protection) {
        return ALLOW;
    }
    refuse(Operation::Signal, signal as u32, FileKey::default())
}

/// A new resource limit for the daemon: root lowering `RLIMIT_NOFILE` or `RLIMIT_AS` could
/// starve it. The kernel checked the caller's right to change them before this hook.
#[lsm(hook = "task_setrlimit")]
pub fn protect_daemon_from_rlimits(ctx: LsmContext) -> i32 {
    let resource = hook_arguments::raw(&ctx, HookArgument::TaskSetrlimitResource) as u32;
    refuse_daemon_change(
        &ctx,
        HookArgument::TaskSetrlimitTask,
        Operation::ResourceLimit,
        resource,
    )
}

/// The daemon's nice value (19: it runs only when nothing else wants the CPU). Like the other
/// priorities, the kernel checked the caller's right before the hook.
#[lsm(hook = "task_setnice")]
pub fn protect_daemon_from_nice(ctx: LsmContext) -> i32 {
    refuse_daemon_change(
        &ctx,
        HookArgument::TaskSetniceTask,
        Operation::Priority,
        PriorityChange::Nice.wire(),
    )
}

#[lsm(hook = "task_setioprio")]
pub fn protect_daemon_from_ioprio(ctx: LsmContext) -> i32 {
    refuse_daemon_change(
        &ctx,
        HookArgument::TaskSetioprioTask,
        Operation::Priority,
        PriorityChange::Io.wire(),
    )
}

/// The daemon's scheduling policy (`SCHED_IDLE`) or CPUs (affinity, a cpuset cgroup).
#[lsm(hook = "task_setscheduler")]
pub fn protect_daemon_from_scheduling(ctx: LsmContext) -> i32 {
    refuse_daemon_change(
        &ctx,
        HookArgument::TaskSetschedulerTask,
        Operation::Priority,
        PriorityChange::Scheduling.wire(),
    )
}

/// Refuses a change to the daemon's process by anyone but the daemon (while it lives).
#[inline(always)]
fn refuse_daemon_change(
    ctx: &LsmContext,
    target: HookArgument,
    operation: Operation,
    detail: u32,
) -> i32 {
    let Some(protection) = active_protection() else {
        return ALLOW;
    };
    if !is_daemon(&protection, hook_arguments::task(ctx, target)) || trusted(&protection) {
        return ALLOW;
    }
    refuse(operation, detail, FileKey::default())
}

/// A signal through a descriptor whose owner is the daemon (`F_SETOWN`, `F_SETSIG`), which
/// `task_kill` never sees. The daemon asks for no such signal, so every one is refused.
#[lsm(hook = "file_send_sigiotask")]
pub fn protect_daemon_from_owner_signals(ctx: LsmContext) -> i32 {
    let Some(protection) = active_protection() else {
        return ALLOW;
    };
    if !is_daemon(
        &protection,
        hook_arguments::task(&ctx, HookArgument::FileSendSigiotaskTask),
    ) {
        return ALLOW;
    }
    let signal = hook_arguments::raw(&ctx, HookArgument::FileSendSigiotaskSignal) as u32;
    refuse(Operation::OwnerSignal, signal, FileKey::default())
}

/// ptrace, and everything that reads or writes another process's memory or descriptors.
#[lsm(hook = "ptrace_access_check")]
pub fn protect_daemon_from_ptrace(ctx: LsmContext) -> i32 {
    let Some(protection) = active_protection() else {
        return ALLOW;
    };
    let mode = hook_arguments::raw(&ctx, HookArgument::PtraceAccessCheckMode) as u32;
    // Read access (`ps`, /proc/PID/exe for `blocker status`) stays open; attaching, memory
    // access and descriptor theft need PTRACE_MODE_ATTACH.
    if mode & PTRACE_MODE_ATTACH == 0 {
        return ALLOW;
    }
    let Some(child) = hook_arguments::task(&ctx, HookArgument::PtraceAccessCheckChild) else {
        return ALLOW;
    };
    let runs_blocker = matches!(
        child.executable(),
        Some(Executable::File(key)) if key == protection.trusted_exe
    );
    if !(runs_blocker || is_daemon(&protection, Some(child))) || trusted(&protection) {
        return ALLOW;
    }
    refuse(Operation::Ptrace, mode, FileKey::default())
}

/// The daemon's task is freed, all its threads ended, without protection turned off: killed by
/// pid 1 or the OOM killer, or crashed. Its process id may now be reused by anyone, and the next
/// daemon needs the pins: from now on the blocker binary is trusted instead, until that daemon
/// protects them again.
#[lsm(hook = "task_free")]
pub fn protect_trust_from_pid_reuse(ctx: LsmContext) -> i32 {
    let Some(protection) = active_protection() else {
        return ALLOW;
    };
    let Some(task) = hook_arguments::task(&ctx, HookArgument::TaskFreeTask) else {
        return ALLOW;
    };
    // The thread group's leader is freed after every other thread of it.
    let leader = task.pid().is_some_and(|pid| pid == protection.daemon_tgid);
    if leader && task.tgid() == Some(protection.daemon_tgid) {
        if let Some(slot) = PROTECTION.get_ptr_mut(0) {
            // SAFETY: the map's value, which this program may write.
            unsafe { (*slot).daemon_gone = 1 };
        }
    }
    ALLOW
}

/// A new executable file for the caller's own process: it would then run "the blocker binary"
/// without having executed it. Checkpoint/restore tools (CRIU) are the only users, and cannot
/// restore while protection is on.
#[lsm(hook = "task_prctl")]
pub fn protect_trust_from_exe_changes(ctx: LsmContext) -> i32 {
    let Some(protection) = active_protection() else {
        return ALLOW;
    };
    if hook_arguments::raw(&ctx, HookArgument::TaskPrctlOption) as u32 as u64 != PR_SET_MM {
        return ALLOW;
    }
    let operation = hook_arguments::raw(&ctx, HookArgument::TaskPrctlArg2);
    let could_succeed = match operation {
        // The kernel asks for CAP_SYS_RESOURCE after this hook.
        PR_SET_MM_EXE_FILE => current_capable(CAP_SYS_RESOURCE),
        PR_SET_MM_MAP => {
            let map = hook_arguments::raw(&ctx, HookArgument::TaskPrctlArg3) as *const u8;
            // SAFETY: the helper checks the user address; a fault reads as a change.
            let exe_fd =
                unsafe { bpf_probe_read_user(map.wrapping_add(PRCTL_MM_MAP_EXE_FD) as *const u32) };
            if exe_fd == Ok(KEEP_EXE_FD) {
                return ALLOW;
            }
            true
        }
        _ => return ALLOW,
    };
    if trusted(&protection) {
        return ALLOW;
    }
    if !could_succeed {
        return REFUSE;
    }
    refuse(
        Operation::ExeFileChange,
        operation as u32,
        FileKey::default(),
    )
}

/// A process gets a descriptor of a map, by id or from its pin; without one it can neither read
/// nor change the map.
#[lsm(hook = "bpf_map")]
pub fn protect_maps(ctx: LsmContext) -> i32 {
    let map = BpfMap::new(hook_arguments::pointer(&ctx, HookArgument::BpfMapMap));
    refuse_bpf_object(BpfObject::Map, map.and_then(BpfMap::id).unwrap_or(0))
}

/// A process gets a descriptor of a program.
#[lsm(hook = "bpf_prog")]
pub fn protect_programs(ctx: LsmContext) -> i32 {
    let program = BpfProg::new(hook_arguments::pointer(&ctx, HookArgument::BpfProgProg));
    refuse_bpf_object(
        BpfObject::Program,
        program.and_then(BpfProg::id).unwrap_or(0),
    )
}

/// Links have no hook of their own, so a descriptor of one by id is refused at the `bpf(2)`
/// call (`attr` is the kernel's copy of the caller's attributes).
#[lsm(hook = "bpf")]
pub fn protect_links(ctx: LsmContext) -> i32 {
    let command = hook_arguments::raw(&ctx, HookArgument::BpfCommand) as u32;
    if command != BPF_LINK_GET_FD_BY_ID {
        return ALLOW;
    }
    // The hook runs before the command's own CAP_SYS_ADMIN check: anyone else is refused by the
    // kernel anyway, and is not worth a record.
    if !current_capable(CAP_SYS_ADMIN) {
        return ALLOW;
    }
    let attr = BpfAttr::new(hook_arguments::pointer(&ctx, HookArgument::BpfAttr));
    refuse_bpf_object(
        BpfObject::Link,
        attr.and_then(BpfAttr::object_id).unwrap_or(0),
    )
}

#[lsm(hook = "file_open")]
pub fn protect_files_from_writes(ctx: LsmContext) -> i32 {
    let Some(protection) = active_protection() else {
        return ALLOW;
    };
    let Some(opened) = hook_arguments::file(&ctx, HookArgument::FileOpenFile) else {
        return ALLOW;
    };
    if !opened.opened_for_writing() {
        return ALLOW;
    }
    let Some(dentry) = opened.dentry() else {
        return ALLOW;
    };
    let inode = dentry.inode();
    let key = inode.and_then(Inode::key);
    let guard = key.map(inode_guard_of).unwrap_or(inode_guard::NONE);
    let directory_guard = dentry
        .parent()
        .and_then(Dentry::inode)
        .and_then(Inode::key)
        .map(inode_guard_of)
        .unwrap_or(inode_guard::NONE);
    let Some(key) = key else {
        return ALLOW;
    };
    if guard == inode_guard::WHOLE || directory_guard == inode_guard::WHOLE {
        return refuse_change(&protection, FileChange::OpenForWriting, Some(key));
    }
    // The daemon's own /proc files: `oom_score_adj` (first to go when memory runs out, which
    // the OOM killer does without a signal anyone could refuse), `timerslack_ns`, ...
    if is_daemon_tgid(&protection, inode.and_then(Inode::proc_process)) {
        if trusted(&protection) {
            return ALLOW;
        }
        return refuse(Operation::ProcWrite, 0, key);
    }
    refuse_cgroup_control(&protection, key, guard, directory_guard)
}

/// Writing a control file of the daemon's cgroups: `cgroup.kill` ends the daemon, and
/// `cgroup.freeze`, a tiny `cpu.max` or `memory.max` stop or starve it, none of them through a
/// signal. The service manager applies the unit's own limits and kills the service when
/// stopping it, so it may write all but `cgroup.freeze`.
fn refuse_cgroup_control(
    protection: &Protection,
    key: FileKey,
    guard: u32,
    directory_guard: u32,
) -> i32 {
    let service_manager_may = match guard {
        inode_guard::CGROUP_MEMBERSHIP => return ALLOW,
        inode_guard::CGROUP_FREEZE => false,
        _ if directory_guard == inode_guard::CGROUP => true,
        _ => return ALLOW,
    };
    let caller = (bpf_get_current_pid_tgid() >> 32) as u32;
    if (service_manager_may && caller == 1) || trusted(protection) {
        return ALLOW;
    }
    refuse(
        Operation::FileChange,
        FileChange::OpenForWriting.wire(),
        key,
    )
}

#[lsm(hook = "inode_setattr")]
pub fn protect_files_from_setattr(ctx: LsmContext) -> i32 {
    let Some(protection) = active_protection() else {
        return ALLOW;
    };
    let dentry = hook_arguments::dentry(&ctx, HookArgument::InodeSetattrDentry);
    let Some(target) = dentry.and_then(protected_dentry) else {
        return ALLOW;
    };
    if trusted(&protection) {
        return ALLOW;
    }
    // The hook runs before the filesystem checks ownership: a user chmod-ing a file they do
    // not own fails anyway, and is not worth a record (nor a way to flood the event stream).
    let changes = hook_arguments::iattr(&ctx, HookArgument::InodeSetattrAttr)
        .and_then(|attr| attr.changes())
        .unwrap_or(ATTR_NEEDING_OWNERSHIP);
    let owner = dentry.and_then(Dentry::inode).and_then(Inode::owner);
    let could_succeed = changes & ATTR_NEEDING_OWNERSHIP == 0
        || Task::current()
            .and_then(Task::credentials)
            .is_some_and(|credentials| {
                credentials.fsuid().is_some_and(|uid| Some(uid) == owner)
                    || credentials.capable(CAP_FOWNER)
                    || credentials.capable(CAP_CHOWN)
            });
    if !could_succeed {
        return REFUSE;
    }
    refuse(Operation::FileChange, FileChange::Setattr.wire(), target)
}

#[lsm(hook = "inode_create")]
pub fn protect_dirs_from_create(ctx: LsmContext) -> i32 {
    directory_change(&ctx, HookArgument::InodeCreateDir, FileChange::Create)
}

#[lsm(hook = "inode_symlink")]
pub fn protect_dirs_from_symlink(ctx: LsmContext) -> i32 {
    directory_change(&ctx, HookArgument::InodeSymlinkDir, FileChange::Symlink)
}

#[lsm(hook = "inode_mkdir")]
pub fn protect_dirs_from_mkdir(ctx: LsmContext) -> i32 {
    directory_change(&ctx, HookArgument::InodeMkdirDir, FileChange::Mkdir)
}

#[lsm(hook = "inode_mknod")]
pub fn protect_dirs_from_mknod(ctx: LsmContext) -> i32 {
    directory_change(&ctx, HookArgument::InodeMknodDir, FileChange::Mknod)
}

#[lsm(hook = "inode_unlink")]
pub fn protect_dirs_from_unlink(ctx: LsmContext) -> i32 {
    removal(
        &ctx,
        HookArgument::InodeUnlinkDir,
        HookArgument::InodeUnlinkDentry,
        FileChange::Unlink,
    )
}

#[lsm(hook = "inode_rmdir")]
pub fn protect_dirs_from_rmdir(ctx: LsmContext) -> i32 {
    removal(
        &ctx,
        HookArgument::InodeRmdirDir,
        HookArgument::InodeRmdirDentry,
        FileChange::Rmdir,
    )
}

/// A new name in a protected directory, or for a protected file (which could then be written
/// through it).
#[lsm(hook = "inode_link")]
pub fn protect_dirs_from_link(ctx: LsmContext) -> i32 {
    let Some(protection) = active_protection() else {
        return ALLOW;
    };
    let target = hook_arguments::inode(&ctx, HookArgument::InodeLinkDir)
        .and_then(protected_inode)
        .or_else(|| {
            hook_arguments::dentry(&ctx, HookArgument::InodeLinkOldDentry)
                .and_then(protected_dentry)
        });
    refuse_change(&protection, FileChange::Link, target)
}

#[lsm(hook = "inode_rename")]
pub fn protect_dirs_from_rename(ctx: LsmContext) -> i32 {
    let Some(protection) = active_protection() else {
        return ALLOW;
    };
    let directory = |argument| hook_arguments::inode(&ctx, argument).and_then(protected_inode);
    let entry = |argument| {
        hook_arguments::dentry(&ctx, argument)
            .and_then(Dentry::inode)
            .and_then(guarded_inode)
    };
    let target = directory(HookArgument::InodeRenameOldDir)
        .or_else(|| directory(HookArgument::InodeRenameNewDir))
        .or_else(|| entry(HookArgument::InodeRenameOldDentry))
        .or_else(|| entry(HookArgument::InodeRenameNewDentry));
    refuse_change(&protection, FileChange::Rename, target)
}

/// A mount over a protected directory or file would hide it; one over a directory on the way to
/// one would hide it from the next daemon, `blocker policy` and whoever looks.
#[lsm(hook = "sb_mount")]
pub fn protect_dirs_from_mount(ctx: LsmContext) -> i32 {
    let flags = hook_arguments::raw(&ctx, HookArgument::SbMountFlags);
    // A remount, or a change of propagation (`mount(2)` takes it only without MS_BIND), puts
    // nothing over the mount point.
    if flags & MS_REMOUNT != 0 || (flags & MS_BIND == 0 && flags & MS_PROPAGATION != 0) {
        return ALLOW;
    }
    mount_over(&ctx, HookArgument::SbMountPath)
}

/// `move_mount(2)`: onto a protected directory, or of the mount that shows one away from it
/// (which unmounts it from there).
#[lsm(hook = "move_mount")]
pub fn protect_dirs_from_move_mount(ctx: LsmContext) -> i32 {
    let Some(protection) = active_protection() else {
        return ALLOW;
    };
    let moved = hook_arguments::path(&ctx, HookArgument::MoveMountFromPath);
    // A clone from `open_tree` (how `mount --bind` works with the new mount API) is attached
    // nowhere yet: moving it takes nothing away.
    let moved_away = moved
        .and_then(|path| path.mount())
        .filter(|mount| mount.attached());
    let target = showing_guarded(&protection, moved_away);
    if target.is_some() {
        return refuse_mount_change(&protection, FileChange::Umount, target);
    }
    mount_over(&ctx, HookArgument::MoveMountToPath)
}

/// Unmounting the filesystem that shows a protected directory, or one on the way to it (the BPF
/// filesystem of the pins, the filesystem of the policy directory), lazily or not.
#[lsm(hook = "sb_umount")]
pub fn protect_mounts_from_umount(ctx: LsmContext) -> i32 {
    let Some(protection) = active_protection() else {
        return ALLOW;
    };
    let mount = hook_arguments::mount(&ctx, HookArgument::SbUmountMnt);
    refuse_mount_change(
        &protection,
        FileChange::Umount,
        showing_guarded(&protection, mount),
    )
}

// The helpers below that take a `HookArgument` are inlined, so it stays a constant: see
// `hook_arguments::raw`.

#[inline(always)]
fn mount_over(ctx: &LsmContext, mount_point: HookArgument) -> i32 {
    let Some(protection) = active_protection() else {
        return ALLOW;
    };
    let Some(path) = hook_arguments::path(ctx, mount_point) else {
        return ALLOW;
    };
    let dentry = path.dentry();
    // Protected directories and files, in any mount namespace; the directories on the way to
    // them where the daemon or the service manager would see it.
    let target = dentry.and_then(protected_dentry).or_else(|| {
        dentry
            .and_then(Dentry::inode)
            .and_then(guarded_inode)
            .filter(|_| seen_by_blocker(&protection, path.mount()))
    });
    refuse_mount_change(&protection, FileChange::Mount, target)
}

/// The directory `mount` shows if it is guarded and taking the mount away would show in
/// blocker's namespaces.
fn showing_guarded(protection: &Protection, mount: Option<Vfsmount>) -> Option<FileKey> {
    mount
        .and_then(Vfsmount::root)
        .and_then(Dentry::inode)
        .and_then(guarded_inode)
        .filter(|_| seen_by_blocker(protection, mount))
}

/// Whether a change of the mounts at `mount` by the current task shows in the daemon's mount
/// namespace (`nsenter` into it included) or in pid 1's, where the service manager starts the
/// next daemon: made in one of them, or on a mount that propagates to other namespaces. Other
/// namespaces (a service's sandbox, a container) are their owners' own view. Unknown counts as
/// seen. A gone daemon's namespace is gone with it, and its number is soon another's: the
/// service manager's, setting up the sandbox of the next daemon.
fn seen_by_blocker(protection: &Protection, mount: Option<Vfsmount>) -> bool {
    let in_blocker_namespace =
        Task::current()
            .and_then(Task::mount_namespace)
            .map_or(true, |namespace| {
                (protection.daemon_gone == 0 && namespace == protection.daemon_mount_namespace)
                    || namespace == protection.init_mount_namespace
            });
    in_blocker_namespace || mount.map_or(true, Vfsmount::shared)
}

fn refuse_mount_change(
    protection: &Protection,
    change: FileChange,
    target: Option<FileKey>,
) -> i32 {
    // `sb_mount` and `sb_umount` run before the kernel checks the caller may (un)mount. Without
    // CAP_SYS_ADMIN over the machine the caller either fails anyway or works in a user
    // namespace's own mount namespace, which the daemon never looks through: refused, but not
    // worth a record.
    if target.is_some() && !trusted(protection) && !current_capable(CAP_SYS_ADMIN) {
        return REFUSE;
    }
    refuse_change(protection, change, target)
}

fn current_capable(capability: u32) -> bool {
    Task::current()
        .and_then(Task::credentials)
        .is_some_and(|credentials| credentials.capable(capability))
}

/// A new entry in `directory`.
#[inline(always)]
fn directory_change(ctx: &LsmContext, directory: HookArgument, change: FileChange) -> i32 {
    let Some(protection) = active_protection() else {
        return ALLOW;
    };
    let target = hook_arguments::inode(ctx, directory).and_then(protected_inode);
    refuse_change(&protection, change, target)
}

/// `unlink` and `rmdir`: of an entry of a protected directory, or of a protected entry itself.
#[inline(always)]
fn removal(
    ctx: &LsmContext,
    directory: HookArgument,
    entry: HookArgument,
    change: FileChange,
) -> i32 {
    let Some(protection) = active_protection() else {
        return ALLOW;
    };
    let target = hook_arguments::inode(ctx, directory)
        .and_then(protected_inode)
        .or_else(|| {
            hook_arguments::dentry(ctx, entry)
                .and_then(Dentry::inode)
                .and_then(guarded_inode)
        });
    refuse_change(&protection, change, target)
}

fn active_protection() -> Option<Protection> {
    let protection = *PROTECTION.get(0)?;
    (protection.daemon_tgid != 0).then_some(protection)
}

/// Whether `task` is the protected daemon, while it lives (its process id may be reused once
/// it is gone).
fn is_daemon(protection: &Protection, task: Option<Task>) -> bool {
    is_daemon_tgid(protection, task.and_then(Task::tgid))
}

fn is_daemon_tgid(protection: &Protection, tgid: Option<u32>) -> bool {
    protection.daemon_gone == 0 && tgid == Some(protection.daemon_tgid)
}

/// Whether the current process may do what protection refuses everyone else: a kernel thread;
/// the daemon itself (its process, running the blocker binary) while it lives (`blocker stop`
/// and `blocker policy` ask it over its socket); once it is gone, a process running the blocker
/// binary (the next daemon, adopting the pins).
/// Never a traced process, whose tracer commands it; nor a task that cannot be read.
fn trusted(protection: &Protection) -> bool {
    let Some(task) = Task::current() else {
        return false;
    };
    let executable = task.executable();
    if matches!(executable, Some(Executable::KernelThread)) {
        return true;
    }
    if task.traced() != Some(false) {
        return false;
    }
    let runs_blocker =
        matches!(executable, Some(Executable::File(key)) if key == protection.trusted_exe);
    // The daemon's process id alone is not enough: between the daemon's end and `task_free`
    // noting it gone, another process may already have been given the same id.
    if protection.daemon_gone == 0 {
        return runs_blocker && (bpf_get_current_pid_tgid() >> 32) as u32 == protection.daemon_tgid;
    }
    runs_blocker
}

/// `id` 0 (unread: the kernel numbers objects from 1) is never refused. A plain id rather than
/// an `Option`: the verifier rejects the unset payload register of a `None` passed to a call.
fn refuse_bpf_object(kind: BpfObject, id: u32) -> i32 {
    let Some(protection) = active_protection() else {
        return ALLOW;
    };
    if id == 0 {
        return ALLOW;
    }
    let key = kind.key(id);
    // SAFETY: only the presence of the entry is used.
    if unsafe { PROTECTED_BPF_OBJECTS.get(&key) }.is_none() || trusted(&protection) {
        return ALLOW;
    }
    refuse(
        Operation::BpfObject,
        kind.wire(),
        FileKey::new(0, id as u64),
    )
}

fn refuse_change(protection: &Protection, change: FileChange, target: Option<FileKey>) -> i32 {
    let Some(target) = target else {
        return ALLOW;
    };
    if trusted(protection) {
        return ALLOW;
    }
    refuse(Operation::FileChange, change.wire(), target)
}

/// Reports a refused tamper attempt and returns the refusal.
fn refuse(operation: Operation, detail: u32, target: FileKey) -> i32 {
    report(
        &Ban::protection(target),
        &Occurrence {
            backend: Backend::Lsm,
            operation,
            detail,
            exec: None,
            mapped_file: core::ptr::null_mut(),
        },
    );
    REFUSE
}

/// What guards the inode `key` names (see `inode_guard`), `inode_guard::NONE` if nothing does.
fn inode_guard_of(key: FileKey) -> u32 {
    // SAFETY: the value is copied out at once.
    unsafe { PROTECTED_INODES.get(&key) }
        .copied()
        .unwrap_or(inode_guard::NONE)
}

/// `inode`'s identity if it is protected whole (see `inode_guard`).
fn protected_inode(inode: Inode) -> Option<FileKey> {
    let key = inode.key()?;
    (inode_guard_of(key) == inode_guard::WHOLE).then_some(key)
}

/// `inode`'s identity if it is protected whole or on the way to one that is: its own name and
/// what is mounted on it are guarded.
fn guarded_inode(inode: Inode) -> Option<FileKey> {
    let key = inode.key()?;
    // SAFETY: the value is copied out at once.
    let guard = *unsafe { PROTECTED_INODES.get(&key) }?;
    inode_guard::guards_name(guard).then_some(key)
}

/// The identity of `dentry`'s inode if it, or the directory holding it, is protected.
fn protected_dentry(dentry: Dentry) -> Option<FileKey> {
    let inode = dentry.inode();
    if let Some(key) = inode.and_then(protected_inode) {
        return Some(key);
    }
    dentry.parent()?.inode().and_then(protected_inode)?;
    inode?.key()
}
