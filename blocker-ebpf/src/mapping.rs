//! Executable mappings of banned files: how the dynamic loader maps a program it is asked to run
//! (`ld.so /path/to/banned`) and every library, `dlopen` included.

use aya_ebpf::{bindings::file, macros::lsm, programs::LsmContext};
use blocker_common::{Backend, HookArgument, Operation, UNKNOWN_CONTENT_HASH};

use crate::{
    exec::{banned_identity, fileless_ban, strictest},
    hook_arguments,
    kernel_types::{File, Vma},
    report::{lsm_verdict, report, report_hashed, Ban, Occurrence, ALLOW},
    trusted_path::unallowed,
    verdict_cache,
};

const PROT_EXEC: u64 = 4;

/// `mmap(PROT_EXEC)` of a file.
#[lsm(hook = "mmap_file")]
pub fn mmap_file(ctx: LsmContext) -> i32 {
    let prot = hook_arguments::raw(&ctx, HookArgument::MmapFileProt);
    let file = hook_arguments::file(&ctx, HookArgument::MmapFileFile);
    mapping_verdict(&ctx, file, prot, Operation::Mmap)
}

/// `mmap(PROT_EXEC)` of a file, checked as an exec is where the kernel can hash files for BPF:
/// by identity, then by content through the verdict cache, then by the fileless setting. So
/// `ld.so ./copy`, `dlopen` and a `PT_INTERP` naming a copy of banned content, or a deleted file,
/// meet the checks its exec would. Sleepable because hashing may read the file (the kernel calls
/// this hook before taking the mapping lock).
#[lsm(hook = "mmap_file", sleepable)]
pub fn mmap_file_content(ctx: LsmContext) -> i32 {
    if hook_arguments::raw(&ctx, HookArgument::MmapFileProt) & PROT_EXEC == 0 {
        return ALLOW;
    }
    let mapped = hook_arguments::pointer(&ctx, HookArgument::MmapFileFile);
    let Some(file) = File::new(mapped) else {
        return ALLOW;
    };
    let Some(inode) = file.inode() else {
        return ALLOW;
    };
    let Some(key) = inode.key() else {
        return ALLOW;
    };
    let mut sha256 = UNKNOWN_CONTENT_HASH;
    let ban = strictest(banned_identity(&ctx, inode, key), || {
        // SAFETY: `mapped` is the hook's argument as the kernel passed it, checked non-null.
        verdict_cache::banned_content(
            mapped as *mut _,
            inode,
            key,
            &verdict_cache::MAPPING_COUNTERS,
            &mut sha256,
        )
    })
    .or_else(|| fileless_ban(inode, key));
    let Some(ban) = strictest(ban, || unallowed(file, inode, key)) else {
        return ALLOW;
    };
    report_hashed(
        &ban,
        &mapping_occurrence(Operation::Mmap, mapped as *mut _),
        &sha256,
    );
    lsm_verdict(ban.entry.action)
}

/// `mprotect(PROT_EXEC)` of a mapping made without it.
#[lsm(hook = "file_mprotect")]
pub fn file_mprotect(ctx: LsmContext) -> i32 {
    let prot = hook_arguments::raw(&ctx, HookArgument::FileMprotectProt);
    let vma = Vma::new(hook_arguments::pointer(&ctx, HookArgument::FileMprotectVma));
    mapping_verdict(&ctx, vma.and_then(Vma::file), prot, Operation::Mprotect)
}

/// The verdict on an executable mapping of `file` (anonymous mappings have none). Inlined: an
/// `Option<File>` passed to a function of its own leaves the payload register of `None` unset,
/// which the verifier refuses to read.
#[inline(always)]
fn mapping_verdict(ctx: &LsmContext, file: Option<File>, prot: u64, operation: Operation) -> i32 {
    if prot & PROT_EXEC == 0 {
        return ALLOW;
    }
    let Some(file) = file else {
        return ALLOW;
    };
    let Some(inode) = file.inode() else {
        return ALLOW;
    };
    let Some(key) = inode.key() else {
        return ALLOW;
    };
    mapping_report(
        strictest(banned_identity(ctx, inode, key), || {
            unallowed(file, inode, key)
        }),
        operation,
    )
}

/// Reports `ban` of a mapping, if any, and returns its verdict.
fn mapping_report(ban: Option<Ban>, operation: Operation) -> i32 {
    let Some(ban) = ban else {
        return ALLOW;
    };
    // Only the sleepable check may ask for the path.
    report(&ban, &mapping_occurrence(operation, core::ptr::null_mut()));
    lsm_verdict(ban.entry.action)
}

fn mapping_occurrence(operation: Operation, mapped_file: *mut file) -> Occurrence {
    Occurrence {
        backend: Backend::Lsm,
        operation,
        detail: 0,
        exec: None,
        mapped_file,
    }
}
