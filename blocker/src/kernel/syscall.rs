//! The `bpf` system call itself, for the commands aya does not wrap.

use aya_obj::generated::{bpf_attr, bpf_cmd};

pub fn zeroed_attr() -> bpf_attr {
    // SAFETY: `union bpf_attr` is plain integers, for which zero is valid and means "unset".
    unsafe { std::mem::zeroed() }
}

/// `bpf(command, attr)`; the kernel reads and writes `attr`, and any buffer it points to.
pub fn sys_bpf(command: bpf_cmd, attr: &mut bpf_attr) -> std::io::Result<i64> {
    // SAFETY: `attr` is a whole `union bpf_attr` of the size passed, and the buffers its members
    // point to outlive the call with the lengths given.
    let result = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command as libc::c_long,
            std::ptr::from_mut(attr),
            std::mem::size_of::<bpf_attr>(),
        )
    };
    if result < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(result)
}
