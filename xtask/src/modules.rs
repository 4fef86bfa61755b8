//! Kernel modules for the busybox VM: Debian's cloud kernels build loop devices, overlayfs, btrfs,
//! xfs and (on 6.1) FUSE as modules, and the busybox VM has no `modprobe` setup. The initramfs
//! therefore carries, per kernel, the modules of [`GUEST_MODULES`] with what they depend on
//! (from each module's `depends=`, as `modinfo` reads it), decompressed (busybox's `insmod`
//! cannot read `.ko.xz`), and a `load-order` list /init loads them in (see [`load_script`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    fs,
    path::{Path, PathBuf},
    process::Command,
};

use anyhow::{bail, Context, Result};

use crate::{
    kernels::Kernel,
    process,
    vm::{Entry, Initramfs, MARKER},
};

/// The modules every busybox VM loads at boot, where the kernel builds them as modules (built-in
/// ones need nothing). A test that needs another module adds it here.
pub const GUEST_MODULES: &[&str] = &["loop", "overlay", "btrfs", "xfs", "fuse"];
/// Under it, one directory per kernel release, as `uname -r` names it.
const GUEST_MODULES_DIR: &str = "/lib/modules";
/// In each release's directory: the module names, one a line, each after what it depends on.
const LOAD_ORDER: &str = "load-order";

/// The /init lines that load the modules the running kernel's directory lists, saying which one
/// failed to load (a test needing it then fails with its own message).
pub fn load_script() -> String {
    format!(
        r#"modules={GUEST_MODULES_DIR}/$(uname -r)
if [ -f $modules/{LOAD_ORDER} ]; then
    for module in $(cat $modules/{LOAD_ORDER}); do
        insmod $modules/$module.ko || echo "{MARKER} module $module failed to load"
    done
fi
"#
    )
}

/// Adds [`GUEST_MODULES`] and their dependencies for each of `kernels` to `image`; decompressed
/// copies go to `work_dir`.
pub fn add_to_image(image: &mut Initramfs, kernels: &[Kernel], work_dir: &Path) -> Result<()> {
    for kernel in kernels {
        let release = release(kernel)?;
        let tree = kernel
            .vmlinuz
            .parent()
            .context("a cached kernel is in a directory")?
            .join("modules")
            .join(release);
        let files = module_files(&tree)?;
        let order = load_order(GUEST_MODULES, |name| match files.get(name) {
            Some(file) => depends(file).map(Some),
            None => Ok(None),
        })?;
        let built_in: Vec<&str> = GUEST_MODULES
            .iter()
            .copied()
            .filter(|name| !files.contains_key(&normalized(name)))
            .collect();
        if !built_in.is_empty() {
            println!(
                "xtask: {release} has no module file for {}: taken as built in",
                built_in.join(", ")
            );
        }
        let copies = work_dir.join(release);
        fs::create_dir_all(&copies).with_context(|| format!("creating {}", copies.display()))?;
        let guest_dir = format!("{GUEST_MODULES_DIR}/{release}");
        for name in &order {
            let module = decompressed(&files[name], &copies.join(format!("{name}.ko")))?;
            image.add(&format!("{guest_dir}/{name}.ko"), Entry::HostFile(module));
        }
        image.add(
            &format!("{guest_dir}/{LOAD_ORDER}"),
            Entry::Text(order.iter().map(|name| format!("{name}\n")).collect()),
        );
    }
    Ok(())
}

/// The kernel's release, from its cached image's name (`vmlinuz-<release>`).
fn release(kernel: &Kernel) -> Result<&str> {
    kernel
        .vmlinuz
        .file_name()
        .and_then(|name| name.to_str())
        .and_then(|name| name.strip_prefix("vmlinuz-"))
        .with_context(|| {
            format!(
                "{} is not named vmlinuz-<release>",
                kernel.vmlinuz.display()
            )
        })
}

/// The kernel's name for a module: file names and `depends=` may spell `_` as `-`.
fn normalized(name: &str) -> String {
    name.replace('-', "_")
}

/// Every module file under `tree`, by normalized module name.
fn module_files(tree: &Path) -> Result<BTreeMap<String, PathBuf>> {
    let mut files = BTreeMap::new();
    let mut directories = vec![tree.to_owned()];
    while let Some(directory) = directories.pop() {
        for entry in fs::read_dir(&directory)
            .with_context(|| format!("reading the kernel modules in {}", directory.display()))?
        {
            let path = entry?.path();
            if path.is_dir() {
                directories.push(path);
                continue;
            }
            let name = path.file_name().and_then(|name| name.to_str());
            if let Some(module) = name.and_then(|name| {
                name.strip_suffix(".ko")
                    .or_else(|| name.strip_suffix(".ko.xz"))
            }) {
                files.insert(normalized(module), path);
            }
        }
    }
    Ok(files)
}

/// The modules `module` needs loaded first, from its `depends=` field.
fn depends(module: &Path) -> Result<Vec<String>> {
    let stdout = process::stdout_of(Command::new("modinfo").args(["-F", "depends"]).arg(module))?;
    Ok(String::from_utf8_lossy(&stdout)
        .split(',')
        .map(str::trim)
        .filter(|name| !name.is_empty())
        .map(normalized)
        .collect())
}

/// `wanted` and everything they depend on, each after its dependencies; `depends_of` says what a
/// module depends on, or `None` where the kernel has it built in.
fn load_order(
    wanted: &[&str],
    mut depends_of: impl FnMut(&str) -> Result<Option<Vec<String>>>,
) -> Result<Vec<String>> {
    let mut order = Vec::new();
    let mut placed = BTreeSet::new();
    // Depth-first: a module is pushed once what it depends on has been.
    let mut stack: Vec<(String, Option<Vec<String>>)> = Vec::new();
    for name in wanted {
        let name = normalized(name);
        if placed.contains(&name) {
            continue;
        }
        stack.push((name, None));
        while let Some((name, pending)) = stack.last_mut() {
            let pending = match pending {
                Some(pending) => pending,
                None => match depends_of(name)? {
                    Some(depends) => pending.insert(depends),
                    None => {
                        // Built in: nothing to load.
                        placed.insert(name.clone());
                        stack.pop();
                        continue;
                    }
                },
            };
            match pending.pop() {
                Some(dependency) if placed.contains(&dependency) => {}
                Some(dependency) => {
                    if stack.iter().any(|(on_stack, _)| *on_stack == dependency) {
                        bail!("modules depend on each other in a cycle through {dependency}");
                    }
                    stack.push((dependency, None));
                }
                None => {
                    let (name, _) = stack.pop().expect("the loop saw this entry");
                    placed.insert(name.clone());
                    order.push(name);
                }
            }
        }
    }
    Ok(order)
}

/// `module` as `insmod` can read it: the file itself, or its decompressed copy at `copy`.
fn decompressed(module: &Path, copy: &Path) -> Result<PathBuf> {
    if module.extension().is_none_or(|extension| extension != "xz") {
        return Ok(module.to_owned());
    }
    let module = process::stdout_of(
        Command::new("xz")
            .args(["--decompress", "--stdout"])
            .arg(module),
    )?;
    fs::write(copy, module).with_context(|| format!("writing {}", copy.display()))?;
    Ok(copy.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order_with(wanted: &[&str], graph: &[(&str, &[&str])]) -> Result<Vec<String>> {
        let graph: BTreeMap<&str, &[&str]> = graph.iter().copied().collect();
        load_order(wanted, |name| {
            Ok(graph
                .get(name)
                .map(|depends| depends.iter().map(|d| d.to_string()).collect()))
        })
    }

    #[test]
    fn dependencies_load_first_and_once() {
        let graph: &[(&str, &[&str])] = &[
            ("loop", &[]),
            ("btrfs", &["xor", "raid6_pq", "libcrc32c"]),
            ("raid6_pq", &["xor"]),
            ("xor", &[]),
            ("libcrc32c", &[]),
            ("xfs", &["libcrc32c"]),
        ];
        let order = order_with(&["loop", "btrfs", "xfs", "fuse"], graph).unwrap();
        assert_eq!(
            order,
            ["loop", "libcrc32c", "xor", "raid6_pq", "btrfs", "xfs"]
        );
    }

    #[test]
    fn names_are_normalized_and_cycles_refused() {
        let graph: &[(&str, &[&str])] = &[("crc32c_intel", &[])];
        assert_eq!(
            order_with(&["crc32c-intel"], graph).unwrap(),
            ["crc32c_intel"]
        );
        let cycle: &[(&str, &[&str])] = &[("a", &["b"]), ("b", &["a"])];
        let error = order_with(&["a"], cycle).unwrap_err();
        assert!(error.to_string().contains("cycle"), "{error}");
    }
}
