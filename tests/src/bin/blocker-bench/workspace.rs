//! Where the bench keeps what it makes: a tmpfs mounted in a mount namespace of the bench's
//! own, so that everything vanishes with the bench process, however it ends, and nothing it
//! makes is visible to the rest of the machine. blocker's kernel programs see every exec on
//! the machine, but their maps only ever hold files made here.

use std::{
    ffi::CString,
    fs,
    os::unix::{ffi::OsStrExt, fs::OpenOptionsExt},
    path::{Path, PathBuf},
};

use anyhow::{Context, Result};

/// Files per directory when making many: large directories are not what is measured.
const FILES_PER_DIRECTORY: u64 = 1000;

pub struct Workspace {
    dir: PathBuf,
}

impl Workspace {
    /// Moves this process into a mount namespace of its own and mounts a fresh tmpfs on `dir`.
    /// Must run while the process has one thread: the kernel refuses to move a thread that
    /// shares its filesystem context with others.
    pub fn enter(dir: &Path) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        // Policies and fapolicyd's rules only take absolute paths.
        let dir = &fs::canonicalize(dir).with_context(|| format!("resolving {}", dir.display()))?;
        // SAFETY: plain system calls with valid, NUL-terminated arguments.
        unsafe {
            if libc::unshare(libc::CLONE_NEWNS) != 0 {
                return Err(std::io::Error::last_os_error())
                    .context("unshare(CLONE_NEWNS): the bench needs root");
            }
            // Nothing mounted from here on may propagate back to the machine's namespace.
            check_mount(
                libc::mount(
                    c"none".as_ptr(),
                    c"/".as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ),
                "making every mount private",
            )?;
        }
        // No inode limit: the policy-load figure makes a million files.
        mount_tmpfs(dir, "mode=0755,nr_inodes=0")?;
        Ok(Self {
            dir: dir.to_owned(),
        })
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }

    /// A new directory `name` in the workspace.
    pub fn directory(&self, name: &str) -> Result<PathBuf> {
        let dir = self.path(name);
        fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        Ok(dir)
    }

    /// A copy of `source` named `name`: a new inode with the same content.
    pub fn copy(&self, source: &Path, name: &str) -> Result<PathBuf> {
        let copy = self.path(name);
        fs::copy(source, &copy)
            .with_context(|| format!("copying {} to {}", source.display(), copy.display()))?;
        Ok(copy)
    }

    /// An executable copy of `source` made distinct by `tag` and padded with zeros to `size`
    /// bytes: a program that runs like `source` (the ELF loader ignores bytes past its
    /// segments) but has a content of its own, so nothing has hashed it before.
    pub fn padded_copy(
        &self,
        source: &Path,
        name: &str,
        tag: &str,
        size: usize,
    ) -> Result<PathBuf> {
        let mut content =
            fs::read(source).with_context(|| format!("reading {}", source.display()))?;
        content.extend_from_slice(tag.as_bytes());
        content.resize(content.len().max(size), 0);
        let path = self.path(name);
        write_executable(&path, &content)?;
        Ok(path)
    }

    /// Writes `toml` as the only policy file of a new policy directory `name`.
    pub fn policy_dir(&self, name: &str, toml: &str) -> Result<PathBuf> {
        let dir = self.directory(name)?;
        let file = dir.join("bench.toml");
        fs::write(&file, toml).with_context(|| format!("writing {}", file.display()))?;
        Ok(dir)
    }
}

/// Makes `count` empty executable files under `dir`, in subdirectories of a thousand; each is
/// an executable candidate to blocker, and a kernel map entry once a rule names it.
pub fn make_many_files(dir: &Path, count: u64) -> Result<()> {
    for index in 0..count {
        let subdirectory = dir.join(format!("{:04}", index / FILES_PER_DIRECTORY));
        if index % FILES_PER_DIRECTORY == 0 {
            fs::create_dir_all(&subdirectory)
                .with_context(|| format!("creating {}", subdirectory.display()))?;
        }
        write_executable(&subdirectory.join(format!("f{index}")), &[])?;
    }
    Ok(())
}

fn write_executable(path: &Path, content: &[u8]) -> Result<()> {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o755)
        .open(path)
        .and_then(|mut file| std::io::Write::write_all(&mut file, content))
        .with_context(|| format!("writing {}", path.display()))
}

/// Mounts a new tmpfs with `options` on `dir`.
pub fn mount_tmpfs(dir: &Path, options: &str) -> Result<()> {
    let target = c_path(dir)?;
    let data = CString::new(options).context("mount options contain a NUL byte")?;
    // SAFETY: valid, NUL-terminated arguments.
    check_mount(
        unsafe {
            libc::mount(
                c"tmpfs".as_ptr(),
                target.as_ptr(),
                c"tmpfs".as_ptr(),
                0,
                data.as_ptr().cast(),
            )
        },
        &format!("mounting a tmpfs on {}", dir.display()),
    )
}

pub fn c_path(path: &Path) -> Result<CString> {
    CString::new(path.as_os_str().as_bytes())
        .with_context(|| format!("{} contains a NUL byte", path.display()))
}

fn check_mount(result: libc::c_int, what: &str) -> Result<()> {
    if result != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| what.to_owned());
    }
    Ok(())
}
