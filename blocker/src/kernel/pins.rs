//! Pins under the BPF filesystem, so enforcement outlives the daemon: the ban maps and the links
//! attaching the programs stay in the kernel after the daemon exits or is killed, and the next
//! daemon adopts them instead of loading a second copy.
//!
//! Layout: `<root>/<build>/maps/<MAP>` and `<root>/<build>/links/<program>`, where `<build>`
//! names the eBPF object that was loaded, so a blocker built from other sources never adopts
//! programs whose maps it would misread; it replaces them. A build directory only ever appears
//! complete: pins are made in a staging directory that is renamed into place last.

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Map, MapData},
    programs::links::{FdLink, PinnedLink},
};
use sha2::{Digest, Sha256};

pub const DEFAULT_PIN_ROOT: &str = "/sys/fs/bpf/blocker";

const MAPS_DIR: &str = "maps";
const LINKS_DIR: &str = "links";
/// bpffs refuses names with a dot, so staging is told apart from builds by this prefix.
const STAGING_PREFIX: &str = "staging-";
/// `BPF_FS_MAGIC` from `<linux/magic.h>`: the filesystem type of a mounted bpffs.
const BPF_FS_MAGIC: i64 = 0xcafe4a11;

/// The directory of one eBPF object build under the pin root.
pub fn build_dir(root: &Path, object: &[u8]) -> PathBuf {
    let digest = Sha256::digest(object);
    let tag: String = digest[..8]
        .iter()
        .map(|byte| format!("{byte:02x}"))
        .collect();
    root.join(tag)
}

/// The directories of a build's pins, from the root down, for tamper protection.
pub fn directories(dir: &Path) -> Vec<PathBuf> {
    let root = dir
        .parent()
        .expect("build directories are inside the pin root");
    vec![
        root.to_owned(),
        dir.to_owned(),
        dir.join(MAPS_DIR),
        dir.join(LINKS_DIR),
    ]
}

/// Pinned maps and links a restarted daemon takes over.
pub struct Adopted {
    pub maps: Vec<(&'static str, Map)>,
    /// Program name and link, for every attached program.
    pub links: Vec<(String, FdLink)>,
}

/// Opens the maps named `map_names` and every link pinned in `dir`.
pub fn adopt(dir: &Path, map_names: &[&'static str]) -> Result<Adopted> {
    let mut maps = Vec::new();
    for &name in map_names {
        let path = dir.join(MAPS_DIR).join(name);
        let data = MapData::from_pin(&path)
            .with_context(|| format!("opening pinned map {}", path.display()))?;
        let map = Map::from_map_data(data)
            .with_context(|| format!("pinned map {} has an unexpected type", path.display()))?;
        maps.push((name, map));
    }
    let mut links = Vec::new();
    let links_dir = dir.join(LINKS_DIR);
    for entry in
        fs::read_dir(&links_dir).with_context(|| format!("reading {}", links_dir.display()))?
    {
        let path = entry?.path();
        let link = PinnedLink::from_pin(&path)
            .with_context(|| format!("opening pinned link {}", path.display()))?;
        let program = path
            .file_name()
            .expect("directory entries have names")
            .to_string_lossy()
            .into_owned();
        links.push((program, FdLink::from(link)));
    }
    if links.is_empty() {
        bail!("no programs are pinned in {}", dir.display());
    }
    Ok(Adopted { maps, links })
}

/// Pins `maps` and `links` as `dir`, then removes whatever else is pinned under its root (other
/// builds, staging left by a crash): those programs detach only now, after the new ones were
/// attached, so enforcement never lapses. Returns the links, still attached, as held links.
/// The caller has checked that the root is on a BPF filesystem ([`ensure_bpf_fs`]).
pub fn pin(
    dir: &Path,
    maps: &[(&str, &Map)],
    links: Vec<(String, FdLink)>,
) -> Result<Vec<(String, FdLink)>> {
    let root = dir
        .parent()
        .expect("build directories are inside the pin root");
    ensure_bpf_fs(root)?;
    fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    let staging = root.join(format!("{STAGING_PREFIX}{}", std::process::id()));
    if staging.exists() {
        remove_tree(&staging, &mut Vec::new())?;
    }
    fs::create_dir_all(staging.join(MAPS_DIR))
        .and_then(|()| fs::create_dir(staging.join(LINKS_DIR)))
        .with_context(|| format!("creating {}", staging.display()))?;
    for (name, map) in maps {
        let path = staging.join(MAPS_DIR).join(name);
        map.pin(&path)
            .with_context(|| format!("pinning map {}", path.display()))?;
    }
    let mut held = Vec::new();
    for (program, link) in links {
        let path = staging.join(LINKS_DIR).join(&program);
        let pinned = link
            .pin(&path)
            .with_context(|| format!("pinning the link of {program} at {}", path.display()))?;
        held.push((program, FdLink::from(pinned)));
    }
    for entry in fs::read_dir(root).with_context(|| format!("reading {}", root.display()))? {
        let path = entry?.path();
        if path != staging {
            let mut removed = Vec::new();
            remove_tree(&path, &mut removed)?;
            log::info!(
                "removed earlier pins at {} ({} objects)",
                path.display(),
                removed.len()
            );
        }
    }
    fs::rename(&staging, dir)
        .with_context(|| format!("renaming {} to {}", staging.display(), dir.display()))?;
    Ok(held)
}

/// One pinned object `unload` removed.
pub struct Removed {
    pub path: PathBuf,
    pub kind: PinKind,
    /// The kernel's id of a removed link, where it could be read.
    pub link_id: Option<u32>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PinKind {
    Map,
    /// The link attaching a program: removing its pin detaches the program, unless a running
    /// daemon still holds it.
    Link,
    Directory,
}

/// Removes everything under `root`, and `root`. Nothing pinned is not an error.
pub fn unload(root: &Path) -> Result<Vec<Removed>> {
    let mut removed = Vec::new();
    if root.exists() {
        remove_tree(root, &mut removed)?;
    }
    Ok(removed)
}

/// Removes the pins of one build, `dir` (see [`build_dir`]).
pub fn remove(dir: &Path) -> Result<()> {
    remove_tree(dir, &mut Vec::new())
}

fn remove_tree(path: &Path, removed: &mut Vec<Removed>) -> Result<()> {
    let metadata =
        fs::symlink_metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if metadata.is_dir() {
        for entry in fs::read_dir(path).with_context(|| format!("reading {}", path.display()))? {
            remove_tree(&entry?.path(), removed)?;
        }
        fs::remove_dir(path).with_context(|| format!("removing {}", path.display()))?;
        removed.push(Removed {
            path: path.to_owned(),
            kind: PinKind::Directory,
            link_id: None,
        });
    } else {
        let in_links_dir = path
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|name| name == LINKS_DIR);
        let link_id = in_links_dir.then(|| pinned_link_id(path)).flatten();
        fs::remove_file(path).with_context(|| format!("removing {}", path.display()))?;
        removed.push(Removed {
            path: path.to_owned(),
            kind: if in_links_dir {
                PinKind::Link
            } else {
                PinKind::Map
            },
            link_id,
        });
    }
    Ok(())
}

fn pinned_link_id(path: &Path) -> Option<u32> {
    let link = FdLink::from(PinnedLink::from_pin(path).ok()?);
    Some(link.info().ok()?.id())
}

/// Waits until the kernel no longer lists the links `ids`, at most `timeout`, and returns those
/// it still lists. Newer kernels (6.12 and later here) release a link from a work queue once its
/// last reference is gone, so its program may run for a moment after its pin was removed.
pub fn wait_for_detach(ids: &[u32], timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let listed: Vec<u32> = aya::programs::loaded_links()
            .filter_map(Result::ok)
            .map(|link| link.id())
            .filter(|id| ids.contains(id))
            .collect();
        if listed.is_empty() || Instant::now() >= deadline {
            return listed;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Pins can only go on a mounted BPF filesystem; the usual mount point is /sys/fs/bpf.
pub fn ensure_bpf_fs(root: &Path) -> Result<()> {
    let mount = root.ancestors().find(|dir| dir.exists()).unwrap_or(root);
    let statfs =
        rustix::fs::statfs(mount).with_context(|| format!("statfs {}", mount.display()))?;
    if statfs.f_type as i64 != BPF_FS_MAGIC {
        bail!(
            "{} is not on a BPF filesystem, so nothing can be pinned there; mount one with \
             `mount -t bpf bpf /sys/fs/bpf`",
            root.display()
        );
    }
    Ok(())
}
