//! Whether pinned programs are this build's, checked before a daemon adopts them. A pin's name
//! proves nothing: whoever may write to the pin directory (root, while no protected daemon runs)
//! can rename pins, or pin other links under blocker's names. So every pinned link must attach,
//! at that program's hook, the program this build's object makes for the link's name (the same
//! tag, [`super::expected`]); that program must use the pinned maps being adopted, and the same
//! other maps as every other pinned program; and every map must have the shape the object gives
//! it, and read-only data the contents the loader gives it on this kernel.

use std::{
    collections::{btree_map::Entry, BTreeMap, BTreeSet},
    os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd},
};

use anyhow::{anyhow, ensure, Context, Result};
use aya::{
    maps::MapInfo,
    programs::{links::FdLink, ProgramInfo},
    Btf,
};
use aya_obj::{
    btf::BtfKind,
    generated::{bpf_attach_type, bpf_cmd, bpf_link_info, bpf_link_type, bpf_prog_type},
};

use super::{
    expected::{ExpectedMap, ExpectedObject, Hook},
    pins::Adopted,
    syscall::{sys_bpf, zeroed_attr},
};
use crate::escape::{escaped, escaped_bytes};

/// How much of a name the kernel keeps for a map or program: `BPF_OBJ_NAME_LEN` less the NUL.
const KERNEL_NAME_LEN: usize = 15;

/// Checks the pins of `adopted` against `expected`; the error names every pin that fails and
/// why.
pub fn check(adopted: &Adopted, expected: &ExpectedObject) -> Result<()> {
    let mut problems = Vec::new();
    // Each map's kernel id, by name: the pinned ones, then those the programs share.
    let mut used = BTreeMap::new();
    for pinned in &adopted.maps {
        match expected.maps.get(pinned.name) {
            Some(wanted) => {
                if let Err(problem) = check_shape(&pinned.info, wanted) {
                    problems.push(format!("pinned map {}: {problem:#}", pinned.name));
                }
            }
            None => problems.push(format!(
                "pinned map {}: not a map of this build",
                pinned.name
            )),
        }
        used.insert(pinned.name.to_owned(), pinned.info.id());
    }
    let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
    let programs: BTreeMap<u32, ProgramInfo> = aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .map(|program| (program.id(), program))
        .collect();
    for (pin, link) in &adopted.links {
        if let Err(problem) = check_link(pin, link, expected, &btf, &programs, &mut used) {
            problems.push(format!("link pin `{}`: {problem:#}", escaped(pin)));
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(anyhow!("{}", problems.join("; ")))
    }
}

fn check_link(
    pin: &str,
    link: &FdLink,
    expected: &ExpectedObject,
    btf: &Btf,
    programs: &BTreeMap<u32, ProgramInfo>,
    used: &mut BTreeMap<String, u32>,
) -> Result<()> {
    let wanted = expected
        .programs
        .get(pin)
        .context("no program of this build has that name")?;
    let link = link.info().context("reading the link")?;
    let program = programs
        .get(&link.program_id())
        .with_context(|| format!("the kernel lists no program {}", link.program_id()))?;
    let tag = program.tag();
    if !wanted.tags.contains(&tag) {
        return Err(match expected.program_tagged(tag) {
            Some(other) => anyhow!("it attaches this build's {other} program instead"),
            None => anyhow!(
                "it attaches a program that is not this build's (`{}`, tag {tag:016x})",
                escaped_bytes(program.name())
            ),
        });
    }
    let (program_type, attached) = attach_point(link.id())?;
    let at_hook = match (wanted.hook, &attached) {
        (Hook::Lsm(hook), AttachPoint::Lsm { btf_id }) => {
            btf.id_by_type_name_kind(&format!("bpf_lsm_{hook}"), BtfKind::Func)
                .ok()
                == Some(*btf_id)
        }
        (Hook::TracePoint(tracepoint), AttachPoint::TracePoint(name)) => name == tracepoint,
        _ => false,
    };
    ensure!(at_hook, "attached {attached}, not at {}", wanted.hook);
    ensure!(
        program.program_type() == program_type,
        "a program of type {:?} is attached, not {program_type:?}",
        program.program_type()
    );

    let map_ids = program
        .map_ids()
        .context("reading its maps")?
        .context("the kernel does not tell which maps programs use")?;
    let mut names = BTreeSet::new();
    for id in map_ids {
        let map = MapInfo::from_id(id).with_context(|| format!("reading map {id}"))?;
        let name = wanted
            .maps
            .iter()
            .find(|name| kernel_name(name) == map.name())
            .with_context(|| {
                format!(
                    "its program uses a map `{}` that this build's does not",
                    escaped_bytes(map.name())
                )
            })?;
        ensure!(names.insert(name), "its program uses two maps {name}");
        let shape = &expected.maps[name];
        check_shape(&map, shape).with_context(|| format!("its map {name}"))?;
        match used.entry(name.clone()) {
            Entry::Occupied(known) => ensure!(
                *known.get() == id,
                "its program uses map {id} as {name}, where the other pins have map {}",
                known.get()
            ),
            Entry::Vacant(first) => {
                if let Some(contents) = &shape.read_only {
                    let value = array_value(&map).with_context(|| format!("reading {name}"))?;
                    ensure!(
                        contents.contains(&value),
                        "its {name} holds other values than this build loads on this kernel"
                    );
                }
                first.insert(id);
            }
        }
    }
    ensure!(
        names.len() == wanted.maps.len(),
        "its program uses {} of this build's {} maps",
        names.len(),
        wanted.maps.len()
    );
    Ok(())
}

fn kernel_name(name: &str) -> &[u8] {
    &name.as_bytes()[..name.len().min(KERNEL_NAME_LEN)]
}

fn check_shape(map: &MapInfo, wanted: &ExpectedMap) -> Result<()> {
    let map_type = map.map_type().context("reading the map's type")? as u32;
    let actual = (map_type, map.key_size(), map.value_size());
    let expected = (wanted.map_type, wanted.key_size, wanted.value_size);
    ensure!(
        actual == expected,
        "map type {}, {}-byte keys, {}-byte values; this build's has type {}, {}-byte keys, \
         {}-byte values",
        actual.0,
        actual.1,
        actual.2,
        expected.0,
        expected.1,
        expected.2
    );
    Ok(())
}

/// Where a link attaches a program, as the kernel reports it.
enum AttachPoint {
    /// A BPF LSM hook, by the kernel's BTF id of its function `bpf_lsm_<hook>`.
    Lsm { btf_id: u32 },
    /// A BTF tracepoint, by name.
    TracePoint(String),
    /// Anything else.
    Other { link_type: u32 },
}

impl std::fmt::Display for AttachPoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AttachPoint::Lsm { btf_id } => write!(f, "at the LSM hook of BTF function {btf_id}"),
            AttachPoint::TracePoint(name) => write!(f, "at tracepoint {}", escaped(name)),
            AttachPoint::Other { link_type } => write!(f, "by a link of type {link_type}"),
        }
    }
}

/// Longer than any tracepoint's name.
const TRACEPOINT_NAME_CAPACITY: usize = 128;

/// What link `link_id` attaches to, and the program type that attaching there takes. aya reads
/// a link's ids only.
fn attach_point(link_id: u32) -> Result<(bpf_prog_type, AttachPoint)> {
    let mut attr = zeroed_attr();
    attr.__bindgen_anon_6.__bindgen_anon_1.link_id = link_id;
    let fd = sys_bpf(bpf_cmd::BPF_LINK_GET_FD_BY_ID, &mut attr)
        .with_context(|| format!("opening link {link_id}"))?;
    // SAFETY: the command returns a new descriptor, which nothing else owns.
    let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };

    let mut tracepoint = [0u8; TRACEPOINT_NAME_CAPACITY];
    // SAFETY: the kernel's struct is plain integers, for which zero is valid.
    let mut info: bpf_link_info = unsafe { std::mem::zeroed() };
    // Read back for raw tracepoint links only; the kernel fills in other kinds over it.
    info.__bindgen_anon_1.raw_tracepoint.tp_name = tracepoint.as_mut_ptr() as u64;
    info.__bindgen_anon_1.raw_tracepoint.tp_name_len = tracepoint.len() as u32;
    let mut attr = zeroed_attr();
    attr.info.bpf_fd = fd.as_raw_fd() as u32;
    attr.info.info = std::ptr::from_mut(&mut info) as u64;
    attr.info.info_len = std::mem::size_of_val(&info) as u32;
    sys_bpf(bpf_cmd::BPF_OBJ_GET_INFO_BY_FD, &mut attr)
        .with_context(|| format!("reading link {link_id}"))?;

    const TRACING: u32 = bpf_link_type::BPF_LINK_TYPE_TRACING as u32;
    const RAW_TRACEPOINT: u32 = bpf_link_type::BPF_LINK_TYPE_RAW_TRACEPOINT as u32;
    // SAFETY (both): the kernel filled in the member of the link's type.
    Ok(match info.type_ {
        TRACING => {
            let tracing = unsafe { info.__bindgen_anon_1.tracing };
            if tracing.attach_type == bpf_attach_type::BPF_LSM_MAC as u32 {
                (
                    bpf_prog_type::BPF_PROG_TYPE_LSM,
                    AttachPoint::Lsm {
                        btf_id: tracing.target_btf_id,
                    },
                )
            } else {
                (
                    bpf_prog_type::BPF_PROG_TYPE_TRACING,
                    AttachPoint::Other {
                        link_type: info.type_,
                    },
                )
            }
        }
        RAW_TRACEPOINT => {
            let length = tracepoint
                .iter()
                .position(|byte| *byte == 0)
                .unwrap_or(tracepoint.len());
            (
                bpf_prog_type::BPF_PROG_TYPE_TRACING,
                AttachPoint::TracePoint(
                    String::from_utf8_lossy(&tracepoint[..length]).into_owned(),
                ),
            )
        }
        link_type => (
            bpf_prog_type::BPF_PROG_TYPE_UNSPEC,
            AttachPoint::Other { link_type },
        ),
    })
}

/// The one value of an array map (read-only data), as bytes.
fn array_value(map: &MapInfo) -> Result<Vec<u8>> {
    let fd = map.fd()?;
    let key = 0u32;
    let mut value = vec![0u8; map.value_size() as usize];
    let mut attr = zeroed_attr();
    // SAFETY: writing the members of the lookup's part of the union.
    let lookup = unsafe { &mut attr.__bindgen_anon_2 };
    lookup.map_fd = fd.as_fd().as_raw_fd() as u32;
    lookup.key = std::ptr::from_ref(&key) as u64;
    lookup.__bindgen_anon_1.value = value.as_mut_ptr() as u64;
    sys_bpf(bpf_cmd::BPF_MAP_LOOKUP_ELEM, &mut attr)?;
    Ok(value)
}
