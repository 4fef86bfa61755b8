//! The `bpf()` system calls tests make themselves, as an attacker with `CAP_BPF` would: listing
//! objects by id, opening them, pinning and detaching. Attributes are laid out as the parts of
//! `union bpf_attr` each command reads.

use std::{
    collections::BTreeSet,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use anyhow::{Context, Result};

/// Commands of `enum bpf_cmd`.
pub mod command {
    pub const MAP_CREATE: libc::c_long = 0;
    pub const OBJ_PIN: libc::c_long = 6;
    pub const OBJ_GET: libc::c_long = 7;
    pub const PROG_GET_NEXT_ID: libc::c_long = 11;
    pub const MAP_GET_NEXT_ID: libc::c_long = 12;
    pub const PROG_GET_FD_BY_ID: libc::c_long = 13;
    pub const MAP_GET_FD_BY_ID: libc::c_long = 14;
    pub const LINK_GET_FD_BY_ID: libc::c_long = 30;
    pub const LINK_GET_NEXT_ID: libc::c_long = 31;
    pub const LINK_DETACH: libc::c_long = 34;
}

/// `bpf(command, attr)` with `attr`'s own size; the kernel may write into it.
fn bpf<T>(command: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: `attr` is readable and writable for the size passed, and outlives the call.
    let value = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            attr as *mut T,
            std::mem::size_of::<T>(),
        )
    };
    if value < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(value)
}

/// The id after `id` that a `*_GET_NEXT_ID` command lists.
pub fn next_id(command: libc::c_long, id: u32) -> io::Result<u32> {
    // `{ start_id; next_id; open_flags }`
    let mut attr = [id, 0, 0];
    bpf(command, &mut attr)?;
    Ok(attr[1])
}

/// Every id the kernel lists for a `*_GET_NEXT_ID` command, including objects being freed.
pub fn listed_ids(command: libc::c_long) -> BTreeSet<u32> {
    std::iter::successors(next_id(command, 0).ok(), |&id| next_id(command, id).ok()).collect()
}

/// A descriptor of object `id` from a `*_GET_FD_BY_ID` command.
pub fn fd_by_id(command: libc::c_long, id: u32) -> io::Result<OwnedFd> {
    // `{ id; next_id; open_flags }`
    let fd = bpf(command, &mut [id, 0, 0])?;
    // SAFETY: a descriptor the kernel just returned to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// `BPF_OBJ_GET`: a descriptor of the object pinned at `path`.
pub fn pinned_object(path: &Path) -> Result<OwnedFd> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // `{ __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; }`
    let fd = bpf(command::OBJ_GET, &mut [c_path.as_ptr() as u64, 0])
        .with_context(|| format!("BPF_OBJ_GET {}", path.display()))?;
    // SAFETY: a descriptor the kernel just returned to us.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// A command whose attribute is one descriptor (`link_detach`'s `link_fd`).
pub fn with_fd(command: libc::c_long, fd: &OwnedFd) -> io::Result<()> {
    bpf(command, &mut [fd.as_raw_fd() as u32, 0, 0, 0]).map(drop)
}

/// Pins a new hash map at `path`.
pub fn pin_new_hash_map(path: &Path, key_size: usize, value_size: usize) -> Result<()> {
    // `enum bpf_map_type`
    const BPF_MAP_TYPE_HASH: u32 = 1;
    // `{ map_type; key_size; value_size; max_entries; map_flags }`
    let mut create = [BPF_MAP_TYPE_HASH, key_size as u32, value_size as u32, 64, 0];
    let fd = bpf(command::MAP_CREATE, &mut create).context("BPF_MAP_CREATE")?;
    // SAFETY: a descriptor the kernel just returned to us.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())?;
    // `{ __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; }`, little-endian.
    bpf(
        command::OBJ_PIN,
        &mut [c_path.as_ptr() as u64, fd.as_raw_fd() as u64],
    )
    .with_context(|| format!("BPF_OBJ_PIN {}", path.display()))?;
    Ok(())
}
