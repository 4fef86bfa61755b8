//! The tests inside a VM booted by `cargo xtask test` (feature `vm`), on Debian's kernels, which
//! load BPF LSM programs. One module per area: xtask runs each module as its own process and
//! reports it as `vm_<module>`; `systemd` and `notify` run only in the systemd VM, every other module in
//! the busybox VM on each kernel (see tests/README.md).

mod filesystems;
mod ima;
mod lockdown;
mod lsm;
mod notify;
mod package;
mod pin;
mod policy;
mod side_doors;
mod sync;
mod systemd;
mod tamper;
