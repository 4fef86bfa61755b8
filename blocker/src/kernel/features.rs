//! What the running kernel offers: the active LSMs decide between the two backends; BTF is
//! needed for either.

use std::{ffi::CString, path::Path};

use anyhow::{bail, Context, Result};

const SECURITYFS: &str = "/sys/kernel/security";
const LSM_LIST: &str = "/sys/kernel/security/lsm";

/// The active LSMs, in order (`/sys/kernel/security/lsm`). Mounts securityfs first where
/// nothing did, as systemd does at boot.
pub fn active_lsms() -> Result<Vec<String>> {
    if !Path::new(LSM_LIST).exists() {
        mount_securityfs()?;
    }
    let list = std::fs::read_to_string(LSM_LIST).with_context(|| format!("reading {LSM_LIST}"))?;
    Ok(parse_lsm_list(&list))
}

/// Whether the kernel describes its types in BTF, where blocker reads its field offsets.
pub fn btf_available() -> bool {
    Path::new(super::KERNEL_BTF).exists()
}

fn parse_lsm_list(list: &str) -> Vec<String> {
    list.trim()
        .split(',')
        .filter(|name| !name.is_empty())
        .map(str::to_owned)
        .collect()
}

fn mount_securityfs() -> Result<()> {
    log::info!("mounting securityfs on {SECURITYFS} to read the active LSMs");
    let source = CString::new("securityfs").unwrap();
    let target = CString::new(SECURITYFS).unwrap();
    // SAFETY: valid NUL-terminated strings; no data argument.
    let result = unsafe {
        libc::mount(
            source.as_ptr(),
            target.as_ptr(),
            source.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if result != 0 {
        let error = std::io::Error::last_os_error();
        // EBUSY: mounted meanwhile by someone else, which is all we wanted.
        if error.raw_os_error() != Some(libc::EBUSY) {
            bail!("mounting securityfs on {SECURITYFS}: {error}");
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_lsm_list() {
        assert_eq!(
            parse_lsm_list("lockdown,capability,landlock,bpf\n"),
            ["lockdown", "capability", "landlock", "bpf"]
        );
        assert!(parse_lsm_list("\n").is_empty());
    }
}
