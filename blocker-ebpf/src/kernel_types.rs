//! Typed views of the kernel structs the programs read. Each reads its members at the offsets
//! the loader found in the running kernel's BTF (`KERNEL_OFFSETS`), through
//! `bpf_probe_read_kernel`, so a bad pointer is a failed read rather than a rejected program.

use aya_ebpf::{
    bindings::{file, path},
    helpers::{bpf_get_current_task, bpf_probe_read_kernel, bpf_probe_read_kernel_str_bytes},
};
use blocker_common::{guarded_filesystem, FileKey};

use crate::maps::KERNEL_OFFSETS;

/// The offset of a member, read so that the compiler cannot fold in the placeholder value.
macro_rules! offset {
    ($member:ident) => {
        // SAFETY: a read of a static's field.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(KERNEL_OFFSETS.$member)) }
    };
}

/// The `f_path` member of `file`, a pointer the verifier vouches for (a hook's argument), as such
/// a pointer still: what `bpf_d_path` takes.
///
/// # Safety
/// `file` must be a `struct file` pointer the hook was passed, unmodified.
pub unsafe fn trusted_file_path(file: *mut file) -> *mut path {
    let member = offset!(file_f_path) as usize;
    file.cast::<u8>().add(member).cast()
}

/// Reads the `T` at `base + offset` in kernel memory; `None` for a null base or a fault.
fn read_field<T>(base: *const u8, offset: u32) -> Option<T> {
    if base.is_null() {
        return None;
    }
    // SAFETY: the helper checks the address; a fault is an error, not a crash.
    unsafe { bpf_probe_read_kernel(base.add(offset as usize) as *const T) }.ok()
}

/// Declares a view of a kernel struct: a non-null pointer to it.
macro_rules! kernel_struct {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Clone, Copy, PartialEq, Eq)]
        pub struct $name(*const u8);

        impl $name {
            /// `None` for a null pointer.
            pub fn new(pointer: *const u8) -> Option<Self> {
                (!pointer.is_null()).then_some(Self(pointer))
            }
        }
    };
}

kernel_struct!(
    /// `struct linux_binprm`: an exec in progress.
    Bprm
);
kernel_struct!(
    /// `struct file`.
    File
);
kernel_struct!(
    /// `struct inode`.
    Inode
);
kernel_struct!(
    /// `struct dentry`.
    Dentry
);
kernel_struct!(
    /// `struct path`.
    Path
);
kernel_struct!(
    /// `struct vfsmount`: a mount, as the hooks see it.
    Vfsmount
);
kernel_struct!(
    /// `struct vm_area_struct`: a mapping.
    Vma
);
kernel_struct!(
    /// `struct task_struct`.
    Task
);
kernel_struct!(
    /// `struct bpf_map`.
    BpfMap
);
kernel_struct!(
    /// `struct bpf_prog`.
    BpfProg
);

/// `FMODE_WRITE` in `file.f_mode`.
const FMODE_WRITE: u32 = 0x2;
/// `PROC_SUPER_MAGIC` of `<linux/magic.h>`.
const PROC_SUPER_MAGIC: u64 = 0x9fa0;

impl Bprm {
    pub fn file(self) -> Option<File> {
        File::new(read_field(self.0, offset!(linux_binprm_file))?)
    }

    /// The file about to run, read directly from the hook's trusted argument: helpers such as
    /// `bpf_ima_file_hash` take only a pointer the verifier can vouch for, never one copied by
    /// `bpf_probe_read_kernel`.
    ///
    /// # Safety
    /// `self` must be the `bprm` argument of the hook, unmodified.
    pub unsafe fn trusted_file(self) -> *mut file {
        let member = offset!(linux_binprm_file) as usize;
        *(self.0.add(member) as *const *mut file)
    }

    /// Copies the path given to exec into `out`; returns the bytes copied, without the NUL.
    pub fn filename_into(self, out: &mut [u8]) -> u32 {
        let Some(name) = read_field::<*const u8>(self.0, offset!(linux_binprm_filename)) else {
            return 0;
        };
        // SAFETY: the helper checks the address and bounds the copy by `out`.
        match unsafe { bpf_probe_read_kernel_str_bytes(name, out) } {
            Ok(bytes) => bytes.len() as u32,
            Err(_) => 0,
        }
    }
}

impl File {
    pub fn inode(self) -> Option<Inode> {
        Inode::new(read_field(self.0, offset!(file_f_inode))?)
    }

    pub fn opened_for_writing(self) -> bool {
        read_field::<u32>(self.0, offset!(file_f_mode)).is_some_and(|mode| mode & FMODE_WRITE != 0)
    }

    /// The dentry of `f_path`, the name the file was opened by.
    pub fn dentry(self) -> Option<Dentry> {
        self.path()?.dentry()
    }

    /// `f_path`: the mount and dentry the file was opened through.
    pub fn path(self) -> Option<Path> {
        let f_path = offset!(file_f_path) as usize;
        // SAFETY: `f_path` is a `struct path` inside the file; only its address is computed.
        Path::new(unsafe { self.0.add(f_path) })
    }
}

impl Inode {
    /// The kernel's identity of the inode: its superblock's device and its number.
    pub fn key(self) -> Option<FileKey> {
        let ino: u64 = read_field(self.0, offset!(inode_i_ino))?;
        let super_block: *const u8 = read_field(self.0, offset!(inode_i_sb))?;
        let dev: u32 = read_field(super_block, offset!(super_block_s_dev))?;
        Some(FileKey::new(dev, ino))
    }

    pub fn generation(self) -> Option<u32> {
        read_field(self.0, offset!(inode_i_generation))
    }

    /// Names on disk; 0 for a memfd, an `O_TMPFILE` or a deleted file.
    pub fn links(self) -> Option<u32> {
        read_field(self.0, offset!(inode_i_nlink))
    }

    /// Bytes of content.
    pub fn size(self) -> Option<u64> {
        read_field(self.0, offset!(inode_i_size))
    }

    /// The owner, as a kernel-wide uid.
    pub fn owner(self) -> Option<u32> {
        read_field(self.0, offset!(inode_i_uid))
    }

    /// The type and permission bits (`st_mode`).
    pub fn mode(self) -> Option<u32> {
        read_field::<u16>(self.0, offset!(inode_i_mode)).map(u32::from)
    }

    /// For an inode of a process's `/proc` directory (`/proc/PID/...`,
    /// `/proc/PID/task/TID/...`), that process's thread group id.
    pub fn proc_process(self) -> Option<u32> {
        if self.super_block()?.magic()? != PROC_SUPER_MAGIC {
            return None;
        }
        // `container_of`: only addresses are computed; the helper checks every read.
        let proc_inode = self.0.wrapping_sub(offset!(proc_inode_vfs_inode) as usize);
        let pid: *const u8 = read_field(proc_inode, offset!(proc_inode_pid))?;
        let first: *const u8 = read_field(pid, offset!(pid_tasks))?;
        if first.is_null() {
            return None;
        }
        Task::new(first.wrapping_sub(offset!(task_struct_pid_links) as usize))?.tgid()
    }

    pub fn super_block(self) -> Option<SuperBlock> {
        SuperBlock::new(read_field(self.0, offset!(inode_i_sb))?)
    }

    /// Whether every change to this file's bytes passes the hooks that drop cached verdicts
    /// for this very inode (see `blocker_common::guarded_filesystem`). Overlay and FUSE files
    /// change through another inode or another process or machine; a filesystem a user
    /// namespace mounted, or one on a loop device, through a file its owner writes directly.
    pub fn content_guarded(self) -> bool {
        let Some(super_block) = self.super_block() else {
            return false;
        };
        let Some(magic) = super_block.magic() else {
            return false;
        };
        guarded_filesystem::ALL.contains(&magic)
            && super_block.owned_by_initial_user_namespace()
            && !super_block.on_loop_device()
    }
}

/// The kernel's `MINORBITS`: `dev_t` inside the kernel is `(major << 20) | minor`.
const MINOR_BITS: u32 = 20;

impl SuperBlock {
    pub fn magic(self) -> Option<u64> {
        read_field(self.0, offset!(super_block_s_magic))
    }

    fn owned_by_initial_user_namespace(self) -> bool {
        read_field::<*const u8>(self.0, offset!(super_block_s_user_ns))
            .is_some_and(in_initial_user_namespace)
    }

    /// Unknown counts as a loop device.
    fn on_loop_device(self) -> bool {
        let Some(device) = read_field::<*const u8>(self.0, offset!(super_block_s_bdev)) else {
            return true;
        };
        if device.is_null() {
            return false;
        }
        read_field::<u32>(device, offset!(block_device_bd_dev)).map_or(true, |number| {
            number >> MINOR_BITS == guarded_filesystem::LOOP_DEVICE_MAJOR
        })
    }
}

/// Whether `namespace` (a `struct user_namespace *`) is the initial one, the only one at level 0.
fn in_initial_user_namespace(namespace: *const u8) -> bool {
    read_field::<u32>(namespace, offset!(user_namespace_level)) == Some(0)
}

impl Cred {
    /// The uid the task acts as on files.
    pub fn fsuid(self) -> Option<u32> {
        read_field(self.0, offset!(cred_fsuid))
    }

    /// Whether the credentials hold `capability` (a `CAP_*` number) over the whole machine:
    /// effective, and in the initial user namespace. A user namespace's root holds every
    /// capability only over what that namespace owns.
    pub fn capable(self, capability: u32) -> bool {
        let machine_wide = read_field::<*const u8>(self.0, offset!(cred_user_ns))
            .is_some_and(in_initial_user_namespace);
        machine_wide
            && read_field::<u64>(self.0, offset!(cred_cap_effective))
                .is_some_and(|effective| effective & (1 << capability) != 0)
    }
}

impl Iattr {
    /// `ia_valid`, the first member: which attributes change (`ATTR_*`).
    pub fn changes(self) -> Option<u32> {
        read_field(self.0, 0)
    }
}

impl Dentry {
    /// `None` for a negative dentry (a name without a file).
    pub fn inode(self) -> Option<Inode> {
        Inode::new(read_field(self.0, offset!(dentry_d_inode))?)
    }

    pub fn parent(self) -> Option<Dentry> {
        Dentry::new(read_field(self.0, offset!(dentry_d_parent))?)
    }
}

impl Path {
    pub fn dentry(self) -> Option<Dentry> {
        Dentry::new(read_field(self.0, offset!(path_dentry))?)
    }

    pub fn mount(self) -> Option<Vfsmount> {
        Vfsmount::new(read_field(self.0, offset!(path_mnt))?)
    }
}

impl Vfsmount {
    /// The directory of its filesystem that the mount shows.
    pub fn root(self) -> Option<Dentry> {
        Dentry::new(read_field(self.0, offset!(vfsmount_mnt_root))?)
    }

    /// Whether it is mounted somewhere: a mount not attached (a namespace's root, a detached
    /// clone) is its own parent. Unknown counts as attached.
    pub fn attached(self) -> bool {
        let member = offset!(mount_mnt) as usize;
        // SAFETY: see `shared`.
        let mount = unsafe { self.0.sub(member) };
        read_field::<*const u8>(mount, offset!(mount_mnt_parent))
            .map_or(true, |parent| parent != mount)
    }

    /// The mount it is mounted on and the dentry there it covers; `None` for a mount that is
    /// not attached (its namespace's root) or that cannot be read.
    pub fn mountpoint(self) -> Option<(Vfsmount, Dentry)> {
        let member = offset!(mount_mnt) as usize;
        // SAFETY: see `shared`.
        let mount = unsafe { self.0.sub(member) };
        let parent: *const u8 = read_field(mount, offset!(mount_mnt_parent))?;
        if parent.is_null() || parent == mount {
            return None;
        }
        let covered = Dentry::new(read_field(mount, offset!(mount_mnt_mountpoint))?)?;
        // SAFETY: the parent's `vfsmount`; only its address is computed.
        Some((Vfsmount::new(unsafe { parent.add(member) })?, covered))
    }

    /// Whether mounts made on it propagate to other mount namespaces (it has peers: a shared
    /// mount's `mnt_group_id` is not 0). Unknown counts as shared.
    pub fn shared(self) -> bool {
        let member = offset!(mount_mnt) as usize;
        // SAFETY: `vfsmount` is the `mnt` member of its `struct mount`; only the address of the
        // latter is computed, and read through the helper.
        let mount = unsafe { self.0.sub(member) };
        read_field::<u32>(mount, offset!(mount_mnt_group_id)).map_or(true, |group| group != 0)
    }
}

impl Vma {
    /// `None` for an anonymous mapping.
    pub fn file(self) -> Option<File> {
        File::new(read_field(self.0, offset!(vm_area_struct_vm_file))?)
    }
}

/// What a task runs.
pub enum Executable {
    /// A kernel thread: no memory map, no executable.
    KernelThread,
    File(FileKey),
}

impl Task {
    pub fn current() -> Option<Task> {
        // SAFETY: the helper returns the running task.
        Task::new(unsafe { bpf_get_current_task() } as *const u8)
    }

    pub fn tgid(self) -> Option<u32> {
        read_field(self.0, offset!(task_struct_tgid))
    }

    /// The kernel's pid: the thread's own id, the tgid for the thread group's leader.
    pub fn pid(self) -> Option<u32> {
        read_field(self.0, offset!(task_struct_pid))
    }

    /// Whether a tracer is attached (`PTRACE_ATTACH`, or `PTRACE_TRACEME` before an exec).
    pub fn traced(self) -> Option<bool> {
        read_field::<u32>(self.0, offset!(task_struct_ptrace)).map(|flags| flags != 0)
    }

    pub fn credentials(self) -> Option<Cred> {
        Cred::new(read_field(self.0, offset!(task_struct_cred))?)
    }

    /// The inode number of the task's mount namespace.
    pub fn mount_namespace(self) -> Option<u32> {
        let nsproxy: *const u8 = read_field(self.0, offset!(task_struct_nsproxy))?;
        let namespace: *const u8 = read_field(nsproxy, offset!(nsproxy_mnt_ns))?;
        if namespace.is_null() {
            return None;
        }
        let member = offset!(mnt_namespace_ns) as usize;
        // SAFETY: `ns` is a `struct ns_common` inside the namespace; only its address is computed.
        let common = unsafe { namespace.add(member) };
        read_field(common, offset!(ns_common_inum))
    }

    pub fn real_parent(self) -> Option<Task> {
        Task::new(read_field(self.0, offset!(task_struct_real_parent))?)
    }

    /// `None` if it cannot be read.
    pub fn executable(self) -> Option<Executable> {
        let mm: *const u8 = read_field(self.0, offset!(task_struct_mm))?;
        if mm.is_null() {
            return Some(Executable::KernelThread);
        }
        Some(Executable::File(Self::exe_inode(mm)?.key()?))
    }

    /// The inode of the file the task runs; `None` for a kernel thread or if it cannot be read.
    pub fn executable_inode(self) -> Option<Inode> {
        let mm: *const u8 = read_field(self.0, offset!(task_struct_mm))?;
        if mm.is_null() {
            return None;
        }
        Self::exe_inode(mm)
    }

    fn exe_inode(mm: *const u8) -> Option<Inode> {
        File::new(read_field(mm, offset!(mm_struct_exe_file))?)?.inode()
    }
}

impl BpfMap {
    pub fn id(self) -> Option<u32> {
        read_field(self.0, offset!(bpf_map_id))
    }
}

impl BpfProg {
    pub fn id(self) -> Option<u32> {
        let aux: *const u8 = read_field(self.0, offset!(bpf_prog_aux))?;
        read_field(aux, offset!(bpf_prog_aux_id))
    }
}

kernel_struct!(
    /// `struct super_block`: a mounted filesystem.
    SuperBlock
);
kernel_struct!(
    /// `struct cred`: a task's credentials.
    Cred
);
kernel_struct!(
    /// `struct iattr`: the attribute changes of a setattr.
    Iattr
);

kernel_struct!(
    /// `union bpf_attr`, the kernel's copy of a `bpf(2)` call's attributes.
    BpfAttr
);

impl BpfAttr {
    /// The id a `BPF_*_GET_FD_BY_ID` command names: the first member of its part of the union.
    pub fn object_id(self) -> Option<u32> {
        read_field(self.0, 0)
    }
}
