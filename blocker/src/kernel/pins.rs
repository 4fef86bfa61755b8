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
    maps::{Array, Map, MapData, MapInfo},
    programs::links::{FdLink, PinnedLink},
};
use blocker_common::{names, Heartbeat};
use sha2::{Digest, Sha256};

use crate::escape::escaped;

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

/// Pinned maps and links a restarted daemon takes over, once checked
/// ([`super::pin_check`]): their names are only names.
pub struct Adopted {
    pub maps: Vec<PinnedMap>,
    /// The name of its pin and the link, for every pinned link.
    pub links: Vec<(String, FdLink)>,
}

pub struct PinnedMap {
    pub name: &'static str,
    pub map: Map,
    pub info: MapInfo,
}

/// Opens the maps named `map_names` and every link pinned in `dir`.
pub fn adopt(dir: &Path, map_names: &[&'static str]) -> Result<Adopted> {
    let mut maps = Vec::new();
    for &name in map_names {
        let path = dir.join(MAPS_DIR).join(name);
        let shown = escaped(&path);
        let data =
            MapData::from_pin(&path).with_context(|| format!("opening pinned map {shown}"))?;
        let info = data
            .info()
            .with_context(|| format!("reading pinned map {shown}"))?;
        let map = Map::from_map_data(data)
            .with_context(|| format!("pinned map {shown} has an unexpected type"))?;
        maps.push(PinnedMap { name, map, info });
    }
    let mut links = Vec::new();
    let links_dir = dir.join(LINKS_DIR);
    for entry in
        fs::read_dir(&links_dir).with_context(|| format!("reading {}", escaped(&links_dir)))?
    {
        let path = entry?.path();
        let link = PinnedLink::from_pin(&path)
            .with_context(|| format!("opening pinned link {}", escaped(&path)))?;
        let program = path
            .file_name()
            .expect("directory entries have names")
            .to_string_lossy()
            .into_owned();
        links.push((program, FdLink::from(link)));
    }
    if links.is_empty() {
        bail!("no programs are pinned in {}", escaped(dir));
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
    fs::create_dir_all(root).with_context(|| format!("creating {}", escaped(&root)))?;
    let staging = root.join(format!("{STAGING_PREFIX}{}", std::process::id()));
    if staging.exists() {
        remove_tree(&staging, &mut Vec::new())?;
    }
    fs::create_dir_all(staging.join(MAPS_DIR))
        .and_then(|()| fs::create_dir(staging.join(LINKS_DIR)))
        .with_context(|| format!("creating {}", escaped(&staging)))?;
    for (name, map) in maps {
        let path = staging.join(MAPS_DIR).join(name);
        map.pin(&path)
            .with_context(|| format!("pinning map {}", escaped(&path)))?;
    }
    let mut held = Vec::new();
    for (program, link) in links {
        let path = staging.join(LINKS_DIR).join(&program);
        let pinned = link
            .pin(&path)
            .with_context(|| format!("pinning the link of {program} at {}", escaped(&path)))?;
        held.push((program, FdLink::from(pinned)));
    }
    for entry in fs::read_dir(root).with_context(|| format!("reading {}", escaped(&root)))? {
        let path = entry?.path();
        if path != staging {
            let mut removed = Vec::new();
            remove_tree(&path, &mut removed)?;
            log::info!(
                "removed earlier pins at {} ({} objects)",
                escaped(&path),
                removed.len()
            );
        }
    }
    fs::rename(&staging, dir)
        .with_context(|| format!("renaming {} to {}", escaped(&staging), escaped(&dir)))?;
    Ok(held)
}

/// One pinned object `unload` removed.
pub struct Removed {
    pub path: PathBuf,
    pub kind: PinKind,
    /// The kernel's ids of a removed link and its program, where they could be read.
    pub link_ids: Option<LinkIds>,
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

/// The heartbeats pinned under `root`, one per build whose maps are pinned there: how the
/// daemons that pinned them left them. Unreadable ones are left out; they change nothing about
/// what unloading does, only what it can say.
pub fn heartbeats(root: &Path) -> Vec<Heartbeat> {
    let Ok(builds) = fs::read_dir(root) else {
        return Vec::new();
    };
    builds
        .filter_map(|build| {
            let path = build.ok()?.path().join(MAPS_DIR).join(names::HEARTBEAT_MAP);
            let map = Map::Array(MapData::from_pin(&path).ok()?);
            Array::<_, Heartbeat>::try_from(map).ok()?.get(&0, 0).ok()
        })
        .collect()
}

/// Removes the pins of one build, `dir` (see [`build_dir`]).
pub fn remove(dir: &Path) -> Result<()> {
    remove_tree(dir, &mut Vec::new())
}

fn remove_tree(path: &Path, removed: &mut Vec<Removed>) -> Result<()> {
    let metadata =
        fs::symlink_metadata(path).with_context(|| format!("reading {}", escaped(&path)))?;
    if metadata.is_dir() {
        for entry in fs::read_dir(path).with_context(|| format!("reading {}", escaped(&path)))? {
            remove_tree(&entry?.path(), removed)?;
        }
        fs::remove_dir(path).with_context(|| format!("removing {}", escaped(&path)))?;
        removed.push(Removed {
            path: path.to_owned(),
            kind: PinKind::Directory,
            link_ids: None,
        });
    } else {
        let in_links_dir = path
            .parent()
            .and_then(Path::file_name)
            .is_some_and(|name| name == LINKS_DIR);
        let link_ids = in_links_dir.then(|| pinned_link_ids(path)).flatten();
        fs::remove_file(path).with_context(|| format!("removing {}", escaped(&path)))?;
        removed.push(Removed {
            path: path.to_owned(),
            kind: if in_links_dir {
                PinKind::Link
            } else {
                PinKind::Map
            },
            link_ids,
        });
    }
    Ok(())
}

fn pinned_link_ids(path: &Path) -> Option<LinkIds> {
    LinkIds::of(&FdLink::from(PinnedLink::from_pin(path).ok()?))
}

/// A link and the program it attaches, by the kernel's ids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LinkIds {
    pub link: u32,
    pub program: u32,
}

impl LinkIds {
    pub fn of(link: &FdLink) -> Option<Self> {
        let info = link.info().ok()?;
        Some(Self {
            link: info.id(),
            program: info.program_id(),
        })
    }
}

/// Waits, at most `timeout`, until the kernel lists neither the links nor the programs of
/// `attached`, and returns the links it still lists. A program is detached once the kernel has
/// freed it: newer kernels (6.12 and later here) drop a pin's reference after an RCU grace
/// period and free the link from a work queue, and the program keeps running for a moment after
/// the link's id is gone. Only links still listed (held by a running daemon) are reported.
pub fn wait_for_detach(attached: &[LinkIds], timeout: Duration) -> Vec<u32> {
    let deadline = Instant::now() + timeout;
    loop {
        let links = listed_ids(BPF_LINK_GET_NEXT_ID);
        let programs = listed_ids(BPF_PROG_GET_NEXT_ID);
        let still_linked: Vec<u32> = attached
            .iter()
            .map(|ids| ids.link)
            .filter(|id| links.contains(id))
            .collect();
        let still_loaded = attached.iter().any(|ids| programs.contains(&ids.program));
        if (still_linked.is_empty() && !still_loaded) || Instant::now() >= deadline {
            return still_linked;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `BPF_PROG_GET_NEXT_ID` and `BPF_LINK_GET_NEXT_ID` of `enum bpf_cmd`.
const BPF_PROG_GET_NEXT_ID: libc::c_long = 11;
const BPF_LINK_GET_NEXT_ID: libc::c_long = 31;

/// Every id the kernel lists for `command`, including objects being freed, which can no longer
/// be opened by id (so aya's `loaded_links` does not show them) but may still be attached.
fn listed_ids(command: libc::c_long) -> Vec<u32> {
    /// The `*_GET_NEXT_ID` part of `union bpf_attr`.
    #[repr(C)]
    struct NextId {
        start_id: u32,
        next_id: u32,
        open_flags: u32,
    }
    let mut ids = Vec::new();
    let mut attr = NextId {
        start_id: 0,
        next_id: 0,
        open_flags: 0,
    };
    // SAFETY: `attr` is a valid `bpf_attr` prefix of the size given, which the kernel writes
    // `next_id` into; the loop ends when it answers ENOENT (no more) or anything else.
    while unsafe {
        libc::syscall(
            libc::SYS_bpf,
            command,
            &mut attr as *mut NextId,
            std::mem::size_of::<NextId>(),
        )
    } == 0
    {
        ids.push(attr.next_id);
        attr.start_id = attr.next_id;
    }
    ids
}

/// Pins can only go on a mounted BPF filesystem; the usual mount point is /sys/fs/bpf.
pub fn ensure_bpf_fs(root: &Path) -> Result<()> {
    let mount = root.ancestors().find(|dir| dir.exists()).unwrap_or(root);
    let statfs =
        rustix::fs::statfs(mount).with_context(|| format!("statfs {}", escaped(&mount)))?;
    if statfs.f_type as i64 != BPF_FS_MAGIC {
        bail!(
            "{} is not on a BPF filesystem, so nothing can be pinned there; mount one with \
             `mount -t bpf bpf /sys/fs/bpf`",
            escaped(&root)
        );
    }
    Ok(())
}
