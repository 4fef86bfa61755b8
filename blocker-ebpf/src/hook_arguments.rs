//! The arguments of LSM hooks, at the positions the loader found in the running kernel's hook
//! prototypes (hooks gain arguments between kernels: `inode_setattr` took the mount's idmap
//! first in 6.3, `bpf` gained a fourth in 6.15).

use aya_ebpf::{programs::LsmContext, EbpfContext};
use blocker_common::HookArgument;

use crate::{
    kernel_types::{Bprm, Dentry, File, Iattr, Inode, Path, Task, Vfsmount},
    maps::HOOK_ARGUMENT_POSITIONS,
};

/// The raw 64-bit value of `argument` in the hook's context.
// Inlined, so `argument` is a constant and the verifier sees one position read from frozen
// read-only data: it then follows only the branch below that matches, and each branch reads the
// context at a constant offset, the only kind of context access it allows.
#[inline(always)]
pub fn raw(ctx: &LsmContext, argument: HookArgument) -> u64 {
    // SAFETY: a read of a static's element; `argument` indexes the array by construction.
    let position = unsafe {
        core::ptr::read_volatile(core::ptr::addr_of!(
            HOOK_ARGUMENT_POSITIONS.positions[argument as usize]
        ))
    };
    let context = ctx.as_ptr();
    // SAFETY: the loader attaches a program only where every argument it reads exists, so the
    // branch taken reads inside the context.
    unsafe {
        match position {
            0 => context_load!(context, 0),
            1 => context_load!(context, 8),
            2 => context_load!(context, 16),
            3 => context_load!(context, 24),
            4 => context_load!(context, 32),
            5 => context_load!(context, 40),
            _ => 0,
        }
    }
}

/// Loads the 64-bit word at `context + offset`. Assembly, because the compiler would otherwise
/// merge the branches of [`raw`] into one load at a computed offset from the context, which the
/// verifier refuses ("dereference of modified ctx ptr").
macro_rules! context_load {
    ($context:expr, $offset:literal) => {{
        let value: u64;
        core::arch::asm!(
            concat!("{value} = *(u64 *)({context} + ", $offset, ")"),
            value = out(reg) value,
            context = in(reg) $context,
            options(readonly, nostack, preserves_flags),
        );
        value
    }};
}
use context_load;

#[inline(always)]
pub fn pointer(ctx: &LsmContext, argument: HookArgument) -> *const u8 {
    raw(ctx, argument) as *const u8
}

#[inline(always)]
pub fn bprm(ctx: &LsmContext, argument: HookArgument) -> Option<Bprm> {
    Bprm::new(pointer(ctx, argument))
}

#[inline(always)]
pub fn file(ctx: &LsmContext, argument: HookArgument) -> Option<File> {
    File::new(pointer(ctx, argument))
}

#[inline(always)]
pub fn inode(ctx: &LsmContext, argument: HookArgument) -> Option<Inode> {
    Inode::new(pointer(ctx, argument))
}

#[inline(always)]
pub fn dentry(ctx: &LsmContext, argument: HookArgument) -> Option<Dentry> {
    Dentry::new(pointer(ctx, argument))
}

#[inline(always)]
pub fn path(ctx: &LsmContext, argument: HookArgument) -> Option<Path> {
    Path::new(pointer(ctx, argument))
}

#[inline(always)]
pub fn mount(ctx: &LsmContext, argument: HookArgument) -> Option<Vfsmount> {
    Vfsmount::new(pointer(ctx, argument))
}

#[inline(always)]
pub fn task(ctx: &LsmContext, argument: HookArgument) -> Option<Task> {
    Task::new(pointer(ctx, argument))
}

#[inline(always)]
pub fn iattr(ctx: &LsmContext, argument: HookArgument) -> Option<Iattr> {
    Iattr::new(pointer(ctx, argument))
}
