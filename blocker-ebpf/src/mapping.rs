//! Executable mappings of banned files: how the dynamic loader maps a program it is asked to run
//! (`ld.so /path/to/banned`) and every library, `dlopen` included.

use aya_ebpf::{macros::lsm, programs::LsmContext};
use blocker_common::{backend, operation, HookArgument};

use crate::{
    exec::banned_identity,
    hook_arguments,
    kernel_types::{File, Vma},
    report::{lsm_verdict, report, Occurrence, ALLOW},
};

const PROT_EXEC: u64 = 4;

/// `mmap(PROT_EXEC)` of a file.
#[lsm(hook = "mmap_file")]
pub fn mmap_file(ctx: LsmContext) -> i32 {
    let prot = hook_arguments::raw(&ctx, HookArgument::MmapFileProt);
    let file = hook_arguments::file(&ctx, HookArgument::MmapFileFile);
    mapping_verdict(&ctx, file, prot, operation::MMAP)
}

/// `mprotect(PROT_EXEC)` of a mapping made without it.
#[lsm(hook = "file_mprotect")]
pub fn file_mprotect(ctx: LsmContext) -> i32 {
    let prot = hook_arguments::raw(&ctx, HookArgument::FileMprotectProt);
    let vma = Vma::new(hook_arguments::pointer(&ctx, HookArgument::FileMprotectVma));
    mapping_verdict(&ctx, vma.and_then(Vma::file), prot, operation::MPROTECT)
}

/// The verdict on an executable mapping of `file` (anonymous mappings have none).
fn mapping_verdict(ctx: &LsmContext, file: Option<File>, prot: u64, operation: u32) -> i32 {
    if prot & PROT_EXEC == 0 {
        return ALLOW;
    }
    let Some(inode) = file.and_then(File::inode) else {
        return ALLOW;
    };
    let Some(ban) = inode.key().and_then(|key| banned_identity(ctx, inode, key)) else {
        return ALLOW;
    };
    report(
        &ban,
        &Occurrence {
            backend: backend::LSM,
            operation,
            detail: 0,
            exec: None,
        },
    );
    lsm_verdict(ban.entry.action)
}
