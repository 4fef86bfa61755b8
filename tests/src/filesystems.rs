//! Filesystems made for a test: an image file formatted with the host's `mkfs.*` and loop-mounted,
//! a tmpfs, or an overlay, each mounted under the test's sandbox and unmounted when dropped (the
//! sandbox then removes the image).

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{ensure, Context, Result};

/// A filesystem mounted at `path` until dropped.
pub struct Mounted {
    pub path: PathBuf,
}

impl Mounted {
    /// Formats a sparse image of `size_mib` MiB at `<dir>/<name>.img` with `mkfs` (program and
    /// arguments; the image's path comes last) and loop-mounts it at `<dir>/<name>` as `fs_type`;
    /// `dir` is made if missing.
    pub fn image(
        dir: &Path,
        name: &str,
        fs_type: &str,
        size_mib: u64,
        mkfs: &[&str],
    ) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let image = dir.join(format!("{name}.img"));
        fs::File::create(&image)
            .and_then(|file| file.set_len(size_mib << 20))
            .with_context(|| format!("creating {}", image.display()))?;
        let (program, arguments) = mkfs.split_first().context("an mkfs command")?;
        run(Command::new(program).args(arguments).arg(&image))?;
        Self::mount(
            dir,
            name,
            &[
                "-t",
                fs_type,
                "-o",
                "loop",
                image.to_str().context("UTF-8 path")?,
            ],
        )
    }

    /// A tmpfs at `<dir>/<name>`.
    pub fn tmpfs(dir: &Path, name: &str) -> Result<Self> {
        Self::mount(dir, name, &["-t", "tmpfs", "tmpfs"])
    }

    /// An overlay at `<dir>/<name>` of `lower` under `upper`, with the work directory `work`
    /// (on `upper`'s filesystem).
    pub fn overlay(
        dir: &Path,
        name: &str,
        lower: &Path,
        upper: &Path,
        work: &Path,
    ) -> Result<Self> {
        let options = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.display(),
            upper.display(),
            work.display()
        );
        Self::mount(dir, name, &["-t", "overlay", "overlay", "-o", &options])
    }

    fn mount(dir: &Path, name: &str, arguments: &[&str]) -> Result<Self> {
        let path = dir.join(name);
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        run(Command::new("mount").args(arguments).arg(&path))?;
        Ok(Self { path })
    }

    /// A new copy of `source` at `<mount>/<name>`, executable.
    pub fn copy(&self, source: &Path, name: &str) -> Result<PathBuf> {
        let path = self.path.join(name);
        fs::copy(source, &path)
            .with_context(|| format!("copying {} to {}", source.display(), path.display()))?;
        Ok(path)
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.path).status();
    }
}

fn run(command: &mut Command) -> Result<()> {
    let output = command
        .output()
        .with_context(|| format!("running {command:?}"))?;
    ensure!(
        output.status.success(),
        "{command:?}: {}\n{}{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    Ok(())
}

/// `major:minor` of `path`'s `st_dev` and of its mount's superblock (from
/// `/proc/self/mountinfo`), for messages: where they differ, keying by `st_dev` would miss.
pub fn devices_of(path: &Path) -> Result<String> {
    let dev = fs::metadata(path)?.dev();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo")?;
    let directory = path.parent().context("a file in a directory")?;
    let superblock = mountinfo
        .lines()
        .filter_map(|line| {
            let fields: Vec<&str> = line.split(' ').collect();
            let mount_point = Path::new(fields.get(4)?);
            directory
                .starts_with(mount_point)
                .then(|| (mount_point.as_os_str().len(), fields[2].to_owned()))
        })
        .max()
        .map(|(_, device)| device)
        .unwrap_or_default();
    Ok(format!(
        "st_dev {}:{}, superblock {superblock}",
        libc::major(dev),
        libc::minor(dev)
    ))
}
