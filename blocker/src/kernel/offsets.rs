//! The struct member offsets the kernel programs need, read from the running kernel's BTF.

use anyhow::{ensure, Context, Result};
use blocker_common::KernelOffsets;

use super::btf::Btf;

const POINTER: u32 = 8;

/// Every member the programs read, with the size the programs read it as: a kernel whose
/// member has another size would be read wrongly, so it is refused instead.
pub fn kernel_offsets(btf: &Btf) -> Result<KernelOffsets> {
    let offset = |structure: &str, member: &str, size: u32| -> Result<u32> {
        let field = btf.field(structure, member)?;
        ensure!(
            field.size == size,
            "{structure}.{member} is {} bytes in this kernel, blocker reads {size}",
            field.size
        );
        Ok(field.offset)
    };
    Ok(KernelOffsets {
        linux_binprm_file: offset("linux_binprm", "file", POINTER)?,
        linux_binprm_filename: offset("linux_binprm", "filename", POINTER)?,
        file_f_inode: offset("file", "f_inode", POINTER)?,
        inode_i_ino: offset("inode", "i_ino", 8)?,
        inode_i_sb: offset("inode", "i_sb", POINTER)?,
        inode_i_generation: offset("inode", "i_generation", 4)?,
        super_block_s_dev: offset("super_block", "s_dev", 4)?,
        task_struct_real_parent: offset("task_struct", "real_parent", POINTER)?,
        task_struct_tgid: offset("task_struct", "tgid", 4)?,
        inode_i_nlink: offset("inode", "i_nlink", 4)?,
        vm_area_struct_vm_file: offset("vm_area_struct", "vm_file", POINTER)?,
        file_f_mode: offset("file", "f_mode", 4)?,
        path_dentry: offset("path", "dentry", POINTER)?,
        dentry_d_inode: offset("dentry", "d_inode", POINTER)?,
        dentry_d_parent: offset("dentry", "d_parent", POINTER)?,
        file_f_path: btf.field("file", "f_path")?.offset,
        task_struct_mm: offset("task_struct", "mm", POINTER)?,
        mm_struct_exe_file: offset("mm_struct", "exe_file", POINTER)?,
        bpf_map_id: offset("bpf_map", "id", 4)?,
        bpf_prog_aux: offset("bpf_prog", "aux", POINTER)?,
        bpf_prog_aux_id: offset("bpf_prog_aux", "id", 4)?,
        inode_i_size: offset("inode", "i_size", 8)?,
        inode_i_uid: offset("inode", "i_uid", 4)?,
        super_block_s_magic: offset("super_block", "s_magic", 8)?,
        super_block_s_user_ns: offset("super_block", "s_user_ns", POINTER)?,
        super_block_s_bdev: offset("super_block", "s_bdev", POINTER)?,
        block_device_bd_dev: offset("block_device", "bd_dev", 4)?,
        user_namespace_level: offset("user_namespace", "level", 4)?,
        task_struct_cred: offset("task_struct", "cred", POINTER)?,
        cred_fsuid: offset("cred", "fsuid", 4)?,
        // `kernel_cap_t`: two u32 words before 6.3, one u64 since; the same bits either way.
        cred_cap_effective: offset("cred", "cap_effective", 8)?,
        cred_user_ns: offset("cred", "user_ns", POINTER)?,
        task_struct_nsproxy: offset("task_struct", "nsproxy", POINTER)?,
        nsproxy_mnt_ns: offset("nsproxy", "mnt_ns", POINTER)?,
        mnt_namespace_ns: btf.field("mnt_namespace", "ns")?.offset,
        ns_common_inum: offset("ns_common", "inum", 4)?,
        path_mnt: offset("path", "mnt", POINTER)?,
        vfsmount_mnt_root: offset("vfsmount", "mnt_root", POINTER)?,
        mount_mnt: btf.field("mount", "mnt")?.offset,
        mount_mnt_group_id: offset("mount", "mnt_group_id", 4)?,
        mount_mnt_parent: offset("mount", "mnt_parent", POINTER)?,
        task_struct_ptrace: offset("task_struct", "ptrace", 4)?,
        task_struct_pid: offset("task_struct", "pid", 4)?,
        task_struct_pid_links: btf.field("task_struct", "pid_links")?.offset,
        proc_inode_pid: offset("proc_inode", "pid", POINTER)?,
        proc_inode_vfs_inode: btf.field("proc_inode", "vfs_inode")?.offset,
        pid_tasks: btf.field("pid", "tasks")?.offset,
        inode_i_mode: offset("inode", "i_mode", 2)?,
        mount_mnt_mountpoint: offset("mount", "mnt_mountpoint", POINTER)?,
        padding: 0,
    })
}

/// The type information of the kernel this process runs on.
pub fn running_kernel_btf() -> Result<Btf> {
    let path = std::path::Path::new(super::KERNEL_BTF);
    Btf::from_file(path).context(
        "blocker needs the kernel's BTF (CONFIG_DEBUG_INFO_BTF=y, /sys/kernel/btf/vmlinux)",
    )
}

/// Offsets for the kernel `btf` describes, the running one.
pub fn running_kernel_offsets(btf: &Btf) -> Result<KernelOffsets> {
    kernel_offsets(btf).context("the running kernel's structs are not what blocker expects")
}

#[cfg(test)]
mod tests {
    use super::super::btf::tests::BtfBuilder;
    use super::*;

    #[test]
    fn reads_every_member_and_checks_sizes() {
        let mut b = BtfBuilder::new();
        let u32_ = b.int("unsigned int", 4);
        let u64_ = b.int("long unsigned int", 8);
        let u16_ = b.int("short unsigned int", 2);
        let ptr = b.pointer(u32_);
        // As in the kernel: `union { const unsigned int i_nlink; unsigned int __i_nlink; }`.
        let nlink_union = b.union(4, &[("i_nlink", u32_, 0), ("__i_nlink", u32_, 0)]);
        b.structure("vm_area_struct", 200, &[("vm_file", ptr, 160)]);
        b.structure(
            "linux_binprm",
            256,
            &[("file", ptr, 64), ("filename", ptr, 96)],
        );
        let path = b.structure("path", 16, &[("mnt", ptr, 0), ("dentry", ptr, 8)]);
        b.structure(
            "file",
            256,
            &[
                ("f_inode", ptr, 32),
                ("f_mode", u32_, 20),
                ("f_path", path, 40),
            ],
        );
        b.structure(
            "inode",
            600,
            &[
                ("i_sb", ptr, 40),
                ("i_ino", u64_, 64),
                ("", nlink_union, 72),
                ("i_generation", u32_, 400),
                ("i_size", u64_, 80),
                ("i_uid", u32_, 4),
                ("i_mode", u16_, 0),
            ],
        );
        b.structure(
            "super_block",
            1000,
            &[
                ("s_dev", u32_, 16),
                ("s_magic", u64_, 96),
                ("s_user_ns", ptr, 900),
                ("s_bdev", ptr, 240),
            ],
        );
        b.structure("block_device", 100, &[("bd_dev", u32_, 52)]);
        b.structure("user_namespace", 300, &[("level", u32_, 200)]);
        b.structure(
            "cred",
            200,
            &[
                ("fsuid", u32_, 32),
                ("cap_effective", u64_, 64),
                ("user_ns", ptr, 144),
            ],
        );
        b.structure(
            "dentry",
            200,
            &[("d_inode", ptr, 48), ("d_parent", ptr, 24)],
        );
        b.structure(
            "task_struct",
            9000,
            &[
                ("real_parent", ptr, 1400),
                ("tgid", u32_, 1300),
                ("mm", ptr, 1200),
                ("cred", ptr, 2960),
                ("nsproxy", ptr, 3060),
                ("ptrace", u32_, 40),
                ("pid", u32_, 1296),
                ("pid_links", ptr, 2000),
            ],
        );
        b.structure("nsproxy", 72, &[("mnt_ns", ptr, 24)]);
        b.structure(
            "proc_inode",
            700,
            &[("pid", ptr, 0), ("vfs_inode", ptr, 72)],
        );
        b.structure("pid", 112, &[("tasks", ptr, 16)]);
        let ns_common = b.structure("ns_common", 24, &[("inum", u32_, 16)]);
        b.structure("mnt_namespace", 120, &[("ns", ns_common, 0)]);
        let vfsmount = b.structure("vfsmount", 32, &[("mnt_root", ptr, 0)]);
        b.structure(
            "mount",
            320,
            &[
                ("mnt_parent", ptr, 16),
                ("mnt_mountpoint", ptr, 24),
                ("mnt", vfsmount, 32),
                ("mnt_group_id", u32_, 296),
            ],
        );
        b.structure("mm_struct", 1000, &[("exe_file", ptr, 900)]);
        b.structure("bpf_map", 200, &[("id", u32_, 100)]);
        b.structure("bpf_prog", 100, &[("aux", ptr, 56)]);
        b.structure("bpf_prog_aux", 500, &[("id", u32_, 28)]);
        let offsets = kernel_offsets(&Btf::parse(&b.build()).unwrap()).unwrap();
        assert_eq!(
            offsets,
            KernelOffsets {
                linux_binprm_file: 64,
                linux_binprm_filename: 96,
                file_f_inode: 32,
                inode_i_ino: 64,
                inode_i_sb: 40,
                inode_i_generation: 400,
                super_block_s_dev: 16,
                task_struct_real_parent: 1400,
                task_struct_tgid: 1300,
                inode_i_nlink: 72,
                vm_area_struct_vm_file: 160,
                file_f_mode: 20,
                path_dentry: 8,
                dentry_d_inode: 48,
                dentry_d_parent: 24,
                file_f_path: 40,
                task_struct_mm: 1200,
                mm_struct_exe_file: 900,
                bpf_map_id: 100,
                bpf_prog_aux: 56,
                bpf_prog_aux_id: 28,
                inode_i_size: 80,
                inode_i_uid: 4,
                super_block_s_magic: 96,
                super_block_s_user_ns: 900,
                super_block_s_bdev: 240,
                block_device_bd_dev: 52,
                user_namespace_level: 200,
                task_struct_cred: 2960,
                cred_fsuid: 32,
                cred_cap_effective: 64,
                cred_user_ns: 144,
                task_struct_nsproxy: 3060,
                nsproxy_mnt_ns: 24,
                mnt_namespace_ns: 0,
                ns_common_inum: 16,
                path_mnt: 0,
                vfsmount_mnt_root: 0,
                mount_mnt: 32,
                mount_mnt_group_id: 296,
                mount_mnt_parent: 16,
                task_struct_ptrace: 40,
                task_struct_pid: 1296,
                task_struct_pid_links: 2000,
                proc_inode_pid: 0,
                proc_inode_vfs_inode: 72,
                pid_tasks: 16,
                inode_i_mode: 0,
                mount_mnt_mountpoint: 24,
                padding: 0,
            }
        );

        let mut wrong = BtfBuilder::new();
        let u32_ = wrong.int("unsigned int", 4);
        let ptr = wrong.pointer(u32_);
        wrong.structure(
            "linux_binprm",
            256,
            &[("file", u32_, 64), ("filename", ptr, 96)],
        );
        let error = kernel_offsets(&Btf::parse(&wrong.build()).unwrap()).unwrap_err();
        assert!(
            error.to_string().contains("linux_binprm.file is 4 bytes"),
            "{error}"
        );
    }

    /// The host always has BTF (the project requires it); its layout must parse.
    #[test]
    fn the_running_kernel_has_every_member() {
        let offsets = running_kernel_offsets(&running_kernel_btf().unwrap()).unwrap();
        assert_ne!(offsets.inode_i_ino, offsets.inode_i_sb);
        assert!(offsets.task_struct_real_parent > 0);
    }
}
