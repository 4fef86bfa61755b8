//! Where the hook arguments the LSM programs read sit in the running kernel. Hooks gain
//! arguments between kernels (`inode_setattr` took the mount's idmap first in 6.3, `bpf` gained
//! a fourth in 6.15), so each is found by name in the prototype of the hook's BTF function
//! `bpf_lsm_<hook>`, and a program whose arguments are not all there is not loaded.

use std::collections::BTreeMap;

use blocker_common::{lsm_programs::LsmProgram, HookArgument, HookArgumentPositions};

use super::btf::Btf;

/// The positions of every hook argument in the running kernel, and why the missing ones are.
pub struct HookLayout {
    pub positions: HookArgumentPositions,
    /// By `HookArgument as usize`.
    missing: BTreeMap<usize, String>,
}

impl HookLayout {
    pub fn of(btf: &Btf) -> Self {
        let mut positions = HookArgumentPositions::unknown();
        let mut missing = BTreeMap::new();
        for argument in HookArgument::ALL {
            match position(btf, argument) {
                Ok(position) => positions.positions[argument as usize] = position,
                Err(reason) => {
                    missing.insert(argument as usize, reason);
                }
            }
        }
        Self { positions, missing }
    }

    /// Why `program` cannot run on this kernel, if it cannot.
    pub fn unavailable(&self, program: &LsmProgram) -> Option<&str> {
        program
            .arguments
            .iter()
            .find_map(|argument| self.missing.get(&(*argument as usize)))
            .map(String::as_str)
    }
}

fn position(btf: &Btf, argument: HookArgument) -> Result<u8, String> {
    let hook = argument.hook();
    let Some(parameters) = btf.function_parameters(&format!("bpf_lsm_{hook}")) else {
        return Err(format!("this kernel has no LSM hook {hook}"));
    };
    let Some(position) = parameters
        .iter()
        .position(|parameter| names(parameter, argument.name()))
    else {
        return Err(format!(
            "lsm/{hook} has no argument `{}` in this kernel (it has: {})",
            argument.name(),
            parameters.join(", ")
        ));
    };
    match u8::try_from(position) {
        Ok(position) if position <= HookArgumentPositions::MAX_POSITION => Ok(position),
        _ => Err(format!(
            "argument `{}` of lsm/{hook} is number {} in this kernel; the programs read only \
             the first {}",
            argument.name(),
            position + 1,
            HookArgumentPositions::MAX_POSITION + 1
        )),
    }
}

/// Whether BTF parameter `parameter` is `name`: the kernel may suffix a name with an annotation
/// for the verifier (`file__nullable` in `mmap_file` since 6.16).
fn names(parameter: &str, name: &str) -> bool {
    parameter
        .strip_prefix(name)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with("__"))
}

#[cfg(test)]
mod tests {
    use blocker_common::lsm_programs;

    use super::super::btf::tests::BtfBuilder;
    use super::*;

    /// The hooks of every program, with the parameters a kernel gives them.
    fn kernel(hooks: &[(&str, &[&str])]) -> Btf {
        let mut b = BtfBuilder::new();
        let int = b.int("int", 4);
        let pointer = b.pointer(int);
        for (hook, parameters) in hooks {
            let parameters: Vec<(&str, u32)> = parameters.iter().map(|p| (*p, pointer)).collect();
            b.function(&format!("bpf_lsm_{hook}"), int, &parameters);
        }
        Btf::parse(&b.build()).unwrap()
    }

    #[test]
    fn finds_arguments_where_each_kernel_puts_them() {
        let linux_6_1 = kernel(&[("inode_setattr", &["dentry", "attr"])]);
        let linux_6_12 = kernel(&[("inode_setattr", &["idmap", "dentry", "attr"])]);
        let dentry = HookArgument::InodeSetattrDentry as usize;
        assert_eq!(HookLayout::of(&linux_6_1).positions.positions[dentry], 0);
        assert_eq!(HookLayout::of(&linux_6_12).positions.positions[dentry], 1);
    }

    #[test]
    fn reads_through_verifier_annotations() {
        let linux_7 = kernel(&[("mmap_file", &["file__nullable", "reqprot", "prot", "flags"])]);
        let layout = HookLayout::of(&linux_7);
        assert_eq!(
            layout.positions.positions[HookArgument::MmapFileFile as usize],
            0
        );
        assert_eq!(
            layout.positions.positions[HookArgument::MmapFileProt as usize],
            2
        );
        assert_eq!(
            layout.unavailable(&lsm_programs::EXECUTABLE_MAPPINGS[0]),
            None
        );
        assert!(!names("filename", "file"));
    }

    #[test]
    fn a_program_missing_an_argument_is_unavailable_with_the_hook_and_argument_named() {
        let odd = kernel(&[
            ("inode_setattr", &["idmap", "entry", "attr"]),
            ("file_open", &["file"]),
        ]);
        let layout = HookLayout::of(&odd);
        let setattr = &lsm_programs::VERDICT_INVALIDATION[1];
        assert_eq!(
            layout.unavailable(setattr),
            Some(
                "lsm/inode_setattr has no argument `dentry` in this kernel (it has: idmap, \
                 entry, attr)"
            )
        );
        assert_eq!(
            layout.unavailable(&lsm_programs::VERDICT_INVALIDATION[0]),
            None
        );
        assert_eq!(
            layout.unavailable(&lsm_programs::VERDICT_INVALIDATION[2]),
            Some("this kernel has no LSM hook path_truncate")
        );
        assert_eq!(
            layout.positions.positions[HookArgument::PathTruncatePath as usize],
            HookArgumentPositions::UNKNOWN
        );
    }

    #[test]
    fn arguments_past_the_sixth_are_out_of_reach() {
        let wide = kernel(&[("sb_mount", &["a", "b", "c", "d", "e", "f", "path"])]);
        let layout = HookLayout::of(&wide);
        assert!(layout
            .unavailable(&lsm_programs::PROTECTION[15])
            .is_some_and(|reason| reason.contains("number 7")));
    }

    /// The host's kernel (6.18 here) has every hook argument the programs read, although it
    /// cannot load LSM programs: its prototypes are the newest the tests see.
    #[test]
    fn the_running_kernel_has_every_hook_argument() {
        let btf = super::super::offsets::running_kernel_btf().unwrap();
        let layout = HookLayout::of(&btf);
        assert_eq!(layout.missing, BTreeMap::new());
    }

    #[test]
    fn every_program_reads_only_arguments_of_its_own_hook() {
        let all = [lsm_programs::EXEC_IDENTITY, lsm_programs::EXEC_CONTENT]
            .into_iter()
            .chain(lsm_programs::VERDICT_INVALIDATION)
            .chain(lsm_programs::EXECUTABLE_MAPPINGS)
            .chain(lsm_programs::PROTECTION);
        for program in all {
            for argument in program.arguments {
                assert_eq!(argument.hook(), program.hook, "{}", program.name);
            }
        }
        for (index, argument) in HookArgument::ALL.iter().enumerate() {
            assert_eq!(*argument as usize, index);
        }
    }
}
