//! Kernel programs of blocker, by concern. Each exec check looks the file about to run up in
//! `BANNED_FILES`. The LSM backend checks execs (`exec`) and executable mappings (`mapping`) and
//! refuses with EPERM; where the kernel can hash files for BPF (IMA), its exec check is
//! `bprm_check_content`, which also checks the file's content through a per-inode verdict cache
//! (`verdict_cache`). The kill backend, for kernels without BPF LSM, checks execs by identity
//! and kills. `package_updates` keeps lockdown's trust current while a
//! package manager replaces files. `protect` guards the daemon, its maps and files. The daemon loads one backend.
//!
//! No program reads the verdict of the programs before it on its hook: the kernel runs a BPF LSM
//! program only while every earlier one (and every earlier LSM) has allowed the operation, so
//! that verdict is always 0 when a program runs. Every program returns 0 or -EPERM.
#![no_std]
#![no_main]
// `hook_arguments` reads the hook's context in assembly; aya-ebpf needs the feature too.
#![feature(asm_experimental_arch)]

mod exec;
mod hook_arguments;
mod kernel_types;
mod mapping;
mod maps;
mod package_updates;
mod protect;
mod report;
mod trusted_path;
mod verdict_cache;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}
