//! What blocker's eBPF object becomes in the kernel once aya loads it: each program's tag, hook
//! and maps, and each map's shape and read-only contents. Pinned programs are held to it before
//! a daemon adopts them ([`super::pin_check`]).
//!
//! The kernel tags a program with a digest of the instructions it was given, the descriptor
//! numbers of the maps they load left out (`bpf_prog_calc_tag` in `kernel/bpf/core.c`: the `imm`
//! of a `BPF_PSEUDO_MAP_FD` or `BPF_PSEUDO_MAP_VALUE` load, and of the instruction after it, are
//! zeroed), truncated to 8 bytes: SHA-1 until Linux 6.17, SHA-256 since 6.18. The instructions
//! are the object's after the relocations aya makes on load, which are repeated here with aya's
//! own parser.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use anyhow::{bail, Context, Result};
use aya::Pod;
use aya_obj::{
    generated::{bpf_insn, BPF_DW, BPF_IMM, BPF_LD, BPF_PSEUDO_MAP_FD, BPF_PSEUDO_MAP_VALUE},
    EbpfSectionKind, Object,
};
use blocker_common::{names, HookArgumentPositions, KernelOffsets};
use sha2::{Digest, Sha256};

use super::{every_lsm_program, hooks::HookLayout, offsets};

/// Where a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hook {
    /// `lsm/<hook>` (or `lsm.s/<hook>`): attached to the BTF function `bpf_lsm_<hook>`.
    Lsm(&'static str),
    /// `tp_btf/<tracepoint>`.
    TracePoint(&'static str),
}

impl std::fmt::Display for Hook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hook::Lsm(hook) => write!(f, "lsm/{hook}"),
            Hook::TracePoint(tracepoint) => write!(f, "tp_btf/{tracepoint}"),
        }
    }
}

/// One program as aya loads it.
#[derive(Debug)]
pub struct ExpectedProgram {
    pub hook: Hook,
    /// The tags the kernel gives its instructions, with SHA-1 and with SHA-256.
    pub tags: [u64; 2],
    /// The maps its instructions load, by name.
    pub maps: BTreeSet<String>,
}

/// One map as aya creates it.
#[derive(Debug)]
pub struct ExpectedMap {
    pub map_type: u32,
    pub key_size: u32,
    pub value_size: u32,
    /// For read-only data, its one value as loaded on this kernel: one for each log level the
    /// daemon that loaded it may have run at (the level is a global there too).
    pub read_only: Option<Vec<Vec<u8>>>,
}

/// The programs blocker attaches and the maps they use.
#[derive(Debug)]
pub struct ExpectedObject {
    pub programs: BTreeMap<String, ExpectedProgram>,
    pub maps: BTreeMap<String, ExpectedMap>,
}

/// The values the loader gives the object's read-only globals on the running kernel.
pub struct Globals {
    pub offsets: KernelOffsets,
    pub hook_positions: HookArgumentPositions,
}

impl Globals {
    /// The globals for the running kernel, and where its hooks take their arguments.
    pub fn of_running_kernel() -> Result<(Self, HookLayout)> {
        let btf = offsets::running_kernel_btf()?;
        let hook_layout = HookLayout::of(&btf);
        let globals = Self {
            offsets: offsets::running_kernel_offsets(&btf)?,
            hook_positions: hook_layout.positions,
        };
        Ok((globals, hook_layout))
    }

    /// Each global's name, bytes, and whether the object must have it, with aya-log's level
    /// set to `log_level`.
    pub fn values<'a>(&'a self, log_level: &'a u8) -> [(&'static str, &'a [u8], bool); 3] {
        [
            (names::KERNEL_OFFSETS_GLOBAL, bytes_of(&self.offsets), true),
            (
                names::HOOK_ARGUMENT_POSITIONS_GLOBAL,
                bytes_of(&self.hook_positions),
                true,
            ),
            // Only programs that log have it.
            (aya_log::LEVEL, std::slice::from_ref(log_level), false),
        ]
    }
}

fn bytes_of<T: Pod>(value: &T) -> &[u8] {
    // SAFETY: a Pod is plain bytes with no padding that matters to the kernel, and the slice
    // borrows it for no longer than it lives.
    unsafe {
        std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>())
    }
}

impl ExpectedObject {
    /// What `object` becomes when loaded with `globals` on this kernel.
    pub fn of(object: &[u8], globals: &Globals) -> Result<Self> {
        let mut parsed = Object::parse(object).context("parsing blocker's eBPF object")?;
        // aya rewrites field accesses for the running kernel's BTF where the object asks it
        // to; blocker's programs read fields at offsets passed as globals instead.
        if parsed.has_btf_relocations() {
            bail!(
                "the eBPF object has BTF relocations, so its programs' tags depend on the kernel"
            );
        }
        let maps = expected_maps(&mut parsed, globals)?;
        let map_names: Vec<String> = parsed.maps.keys().cloned().collect();
        let text_sections: HashSet<usize> = parsed
            .functions
            .keys()
            .map(|(section, _)| *section)
            .collect();
        // Each map's "descriptor" is its index in `map_names`: the kernel leaves descriptors out
        // of the tag, and the index tells which map an instruction loads.
        let by_index: Vec<(&str, i32, &aya_obj::Map)> = map_names
            .iter()
            .enumerate()
            .map(|(index, name)| (name.as_str(), index as i32, &parsed.maps[name]))
            .collect();
        let mut relocated = parsed.clone();
        relocated
            .relocate_maps(by_index.into_iter(), &text_sections)
            .context("relocating the eBPF object's map references")?;
        relocated
            .relocate_calls(&text_sections)
            .context("relocating the eBPF object's calls")?;

        let hooks = every_lsm_program()
            .map(|program| (program.name, Hook::Lsm(program.hook)))
            .chain([(
                names::KILL_PROGRAM,
                Hook::TracePoint(names::KILL_TRACEPOINT),
            )]);
        let mut programs = BTreeMap::new();
        for (name, hook) in hooks {
            let program = relocated
                .programs
                .get(name)
                .with_context(|| format!("the eBPF object has no program {name}"))?;
            let instructions = &relocated.functions[&program.function_key()].instructions;
            let maps = loaded_maps(instructions)
                .map(|index| {
                    map_names
                        .get(index)
                        .cloned()
                        .with_context(|| format!("{name} loads map {index}, which is none"))
                })
                .collect::<Result<_>>()?;
            programs.insert(
                name.to_owned(),
                ExpectedProgram {
                    hook,
                    tags: tags(instructions),
                    maps,
                },
            );
        }
        Ok(Self { programs, maps })
    }

    /// The program of this build a kernel tag belongs to, if any.
    pub fn program_tagged(&self, tag: u64) -> Option<&str> {
        self.programs
            .iter()
            .find(|(_, program)| program.tags.contains(&tag))
            .map(|(name, _)| name.as_str())
    }
}

fn expected_maps(parsed: &mut Object, globals: &Globals) -> Result<BTreeMap<String, ExpectedMap>> {
    let mut read_only: BTreeMap<String, Vec<Vec<u8>>> = BTreeMap::new();
    for level in log::LevelFilter::iter() {
        let level = level as u8;
        let values: HashMap<&str, (&[u8], bool)> = globals
            .values(&level)
            .into_iter()
            .map(|(name, bytes, must_exist)| (name, (bytes, must_exist)))
            .collect();
        parsed
            .patch_map_data(values)
            .context("setting the eBPF object's globals")?;
        for (name, map) in &parsed.maps {
            if map.section_kind() == EbpfSectionKind::Rodata {
                let contents = read_only.entry(name.clone()).or_default();
                if !contents.iter().any(|known| known == map.data()) {
                    contents.push(map.data().to_vec());
                }
            }
        }
    }
    Ok(parsed
        .maps
        .iter()
        .map(|(name, map)| {
            let expected = ExpectedMap {
                map_type: map.map_type(),
                key_size: map.key_size(),
                value_size: map.value_size(),
                read_only: read_only.remove(name),
            };
            (name.clone(), expected)
        })
        .collect())
}

/// `BPF_LD | BPF_IMM | BPF_DW`: the first half of a 64-bit load, which loads maps too.
const LOAD_IMM64: u8 = (BPF_LD | BPF_IMM | BPF_DW) as u8;

fn loads_map(instruction: &bpf_insn) -> bool {
    instruction.code == LOAD_IMM64
        && [BPF_PSEUDO_MAP_FD, BPF_PSEUDO_MAP_VALUE].contains(&u32::from(instruction.src_reg()))
}

/// The `imm` of every map load: here, indexes into the object's maps.
fn loaded_maps(instructions: &[bpf_insn]) -> impl Iterator<Item = usize> + '_ {
    instructions
        .iter()
        .filter(|instruction| loads_map(instruction))
        .map(|instruction| instruction.imm as usize)
}

/// The kernel's tags of `instructions`, with SHA-1 and with SHA-256; see the module
/// documentation.
fn tags(instructions: &[bpf_insn]) -> [u64; 2] {
    let mut bytes = Vec::with_capacity(std::mem::size_of_val(instructions));
    let mut after_map_load = false;
    for instruction in instructions {
        let (source, destination) = (instruction.src_reg(), instruction.dst_reg());
        let mut imm = instruction.imm;
        if !after_map_load && loads_map(instruction) {
            after_map_load = true;
            imm = 0;
        } else if after_map_load
            && instruction.code == 0
            && source == 0
            && destination == 0
            && instruction.off == 0
        {
            after_map_load = false;
            imm = 0;
        } else {
            after_map_load = false;
        }
        // `struct bpf_insn` as it lies in (little-endian) memory: the destination register in
        // the low nibble of the second byte.
        bytes.push(instruction.code);
        bytes.push(source << 4 | destination);
        bytes.extend(instruction.off.to_le_bytes());
        bytes.extend(imm.to_le_bytes());
    }
    let tag = |digest: &[u8]| {
        let mut first = [0; 8];
        first.copy_from_slice(&digest[..8]);
        u64::from_be_bytes(first)
    };
    [
        tag(&sha1::Sha1::digest(&bytes)),
        tag(&Sha256::digest(&bytes)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn instruction(code: u8, source: u8, imm: i32) -> bpf_insn {
        bpf_insn {
            code,
            _bitfield_align_1: [],
            _bitfield_1: bpf_insn::new_bitfield_1(1, source),
            off: 0,
            imm,
        }
    }

    /// Two programs that differ only in which map descriptors they load have one tag, as in
    /// the kernel; a program that differs in anything else has another.
    #[test]
    fn tags_leave_out_map_descriptors_only() {
        let exit = instruction(0x95, 0, 0);
        let program = |fd: i32, offset: i32, constant: i32| {
            let mut second_half = instruction(0, 0, offset);
            second_half.set_dst_reg(0);
            vec![
                instruction(LOAD_IMM64, BPF_PSEUDO_MAP_VALUE as u8, fd),
                second_half,
                instruction(0xb7, 0, constant),
                exit,
            ]
        };
        assert_eq!(tags(&program(3, 8, 1)), tags(&program(7, 16, 1)));
        assert_ne!(tags(&program(3, 8, 1)), tags(&program(3, 8, 2)));
        // A 64-bit constant is not a map: its halves count.
        let mut constant = program(3, 8, 1);
        constant[0].set_src_reg(0);
        let mut other = constant.clone();
        other[0].imm = 4;
        assert_ne!(tags(&constant), tags(&other));
    }

    /// The kernel digests `struct bpf_insn` as it lies in memory, as this does.
    #[test]
    fn tags_digest_the_instructions_as_they_lie_in_memory() {
        let mut program = [instruction(0xb7, 0, -2), instruction(0x95, 0, 0)];
        program[0].set_dst_reg(3);
        program[0].off = 0x1234;
        // SAFETY: `bpf_insn` is 8 bytes of plain integers.
        let bytes: Vec<u8> = program
            .iter()
            .flat_map(|instruction| unsafe {
                std::mem::transmute::<bpf_insn, [u8; 8]>(*instruction)
            })
            .collect();
        let first = |digest: &[u8]| u64::from_be_bytes(digest[..8].try_into().unwrap());
        assert_eq!(
            tags(&program),
            [
                first(&sha1::Sha1::digest(&bytes)),
                first(&Sha256::digest(&bytes))
            ]
        );
    }

    /// Every program blocker attaches is in the object, with a tag and the maps it loads.
    #[test]
    fn the_object_yields_every_attached_program() {
        let globals = Globals {
            offsets: KernelOffsets::default(),
            hook_positions: HookArgumentPositions::unknown(),
        };
        let expected = ExpectedObject::of(super::super::EBPF_OBJECT, &globals).unwrap();
        let exec = &expected.programs[blocker_common::lsm_programs::EXEC_IDENTITY.name];
        assert!(exec.maps.contains(names::BANNED_FILES_MAP), "{exec:?}");
        assert!(expected.programs[names::KILL_PROGRAM]
            .maps
            .contains(names::EVENTS_MAP));
        let rodata = expected.maps[".rodata"].read_only.as_ref().unwrap();
        assert!(rodata.len() > 1, "one for each log level");
        assert!(expected.maps[names::BANNED_FILES_MAP].read_only.is_none());
    }
}
