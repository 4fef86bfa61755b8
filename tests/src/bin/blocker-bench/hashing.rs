//! The content scan: `blocker resolve` hashing every executable candidate under a real tree,
//! against `sha256sum` over the same files in the same run; with the page cache dropped, with
//! the files in the page cache, and a rescan answered by blocker's hash cache.

use std::{
    collections::HashSet,
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::figure::{progress, Environment, Figure, Ratio, Summary};

/// Files per `sha256sum` invocation, as `xargs` would batch them.
const SHA256SUM_BATCH: usize = 500;

pub struct HashingRun<'a> {
    pub blocker: &'a Path,
    /// A policy with a content rule, so `resolve` scans; it matches nothing.
    pub policy_dir: &'a Path,
    pub tree: &'a Path,
    pub hash_cache: &'a Path,
    pub repetitions: usize,
}

/// The executable candidates under a tree, as blocker defines them, once per inode.
struct Candidates {
    files: Vec<PathBuf>,
    bytes: u64,
}

#[derive(Default)]
struct Samples {
    sha256sum_cold: Vec<f64>,
    blocker_cold: Vec<f64>,
    blocker_warm: Vec<f64>,
    sha256sum_cached: Vec<f64>,
    blocker_cached: Vec<f64>,
}

pub fn measure(run: &HashingRun) -> Result<Vec<Figure>> {
    let candidates = candidates(run.tree)?;
    if candidates.files.is_empty() {
        bail!(
            "{} holds no executable candidate to hash",
            run.tree.display()
        );
    }
    let mut samples = Samples::default();
    let mut scanned = None;
    for repetition in 0..run.repetitions {
        progress(&format!(
            "hashing {} ({} files, {} MiB): repetition {} of {}",
            run.tree.display(),
            candidates.files.len(),
            candidates.bytes >> 20,
            repetition + 1,
            run.repetitions
        ));
        drop_page_cache()?;
        samples.sha256sum_cold.push(sha256sum(&candidates.files)?);
        drop_page_cache()?;
        let _ = fs::remove_file(run.hash_cache);
        let (cold, stats) = blocker_scan(run, Some(run.hash_cache))?;
        if stats["read"].as_u64() != stats["candidates"].as_u64() {
            bail!("a scan with an empty hash cache must read every file: {stats}");
        }
        samples.blocker_cold.push(cold);
        let (warm, stats) = blocker_scan(run, Some(run.hash_cache))?;
        if stats["read"].as_u64() != Some(0) {
            bail!("a rescan of an unchanged tree must read nothing: {stats}");
        }
        samples.blocker_warm.push(warm);
        samples.sha256sum_cached.push(sha256sum(&candidates.files)?);
        let (cached, stats) = blocker_scan(run, None)?;
        samples.blocker_cached.push(cached);
        scanned = Some(stats);
    }
    let scanned = scanned.context("no repetition ran")?;

    let tree = run.tree.display();
    let what = format!(
        "{} executable candidates, {} MiB, under {tree} (blocker counted {}, read {} MiB)",
        candidates.files.len(),
        candidates.bytes >> 20,
        scanned["candidates"],
        scanned["bytes_read"].as_u64().unwrap_or(0) >> 20
    );
    let figure = |key: &str, name: &str, values: &[f64], ratio: Option<Ratio>| -> Result<Figure> {
        Ok(Figure {
            breakdown: None,
            id: format!("scan.host.{key}"),
            environment: Environment::Host,
            group: "content scan",
            name: name.to_owned(),
            unit: "s",
            summary: Summary::of(values)?,
            repetitions: run.repetitions as u64,
            ratio,
            detail: what.clone(),
        })
    };
    let speedup = "speed-up: sha256sum's time ÷ this";
    Ok(vec![
        figure(
            "sha256sum-cold",
            "sha256sum, page cache dropped",
            &samples.sha256sum_cold,
            None,
        )?,
        figure(
            "cold",
            "blocker scan, page cache dropped, empty hash cache",
            &samples.blocker_cold,
            Some(Ratio::paired(
                speedup,
                &samples.sha256sum_cold,
                &samples.blocker_cold,
            )?),
        )?,
        figure(
            "sha256sum-cached",
            "sha256sum, files in the page cache",
            &samples.sha256sum_cached,
            None,
        )?,
        figure(
            "cached",
            "blocker scan, files in the page cache, no hash cache",
            &samples.blocker_cached,
            Some(Ratio::paired(
                speedup,
                &samples.sha256sum_cached,
                &samples.blocker_cached,
            )?),
        )?,
        figure(
            "warm",
            "blocker rescan, hash cache filled",
            &samples.blocker_warm,
            Some(Ratio::paired(
                "speed-up: the cold scan's time ÷ this",
                &samples.blocker_cold,
                &samples.blocker_warm,
            )?),
        )?,
    ])
}

/// Seconds `blocker resolve` takes to scan the tree, and its scan statistics.
fn blocker_scan(run: &HashingRun, cache: Option<&Path>) -> Result<(f64, Value)> {
    let mut command = Command::new(run.blocker);
    command
        .arg("resolve")
        .arg(run.policy_dir)
        .arg("--json")
        .arg("--scan-root")
        .arg(run.tree)
        .stdin(Stdio::null())
        .stderr(Stdio::null());
    match cache {
        Some(cache) => command.arg("--hash-cache").arg(cache),
        None => command.arg("--no-hash-cache"),
    };
    let started = Instant::now();
    let output = command.output().context("running blocker resolve")?;
    let elapsed = started.elapsed();
    if !output.status.success() {
        bail!("blocker resolve failed ({})", output.status);
    }
    let resolution: Value =
        serde_json::from_slice(&output.stdout).context("reading blocker resolve --json")?;
    let stats = resolution["scan"].clone();
    if !stats.is_object() {
        bail!("blocker resolve did not scan: {}", resolution["scan"]);
    }
    Ok((elapsed.as_secs_f64(), stats))
}

/// Seconds `sha256sum` takes to hash `files`, in batches as `xargs` runs it.
fn sha256sum(files: &[PathBuf]) -> Result<f64> {
    let mut elapsed = Duration::ZERO;
    for batch in files.chunks(SHA256SUM_BATCH) {
        let started = Instant::now();
        let status = Command::new("sha256sum")
            .args(batch)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .status()
            .context("running sha256sum")?;
        elapsed += started.elapsed();
        if !status.success() {
            bail!(
                "sha256sum failed ({status}) on a batch from {}",
                batch[0].display()
            );
        }
    }
    Ok(elapsed.as_secs_f64())
}

/// Writes back dirty pages, then drops clean ones, so the next read comes from the disk.
fn drop_page_cache() -> Result<()> {
    // SAFETY: sync(2) has no arguments and cannot fail.
    unsafe { libc::sync() };
    fs::write("/proc/sys/vm/drop_caches", "3").context("dropping the page cache (needs root)")
}

/// Regular files under `tree` with an execute bit or a shared-library or AppImage name, once
/// per inode, not following symlinks: what blocker's scan hashes.
fn candidates(tree: &Path) -> Result<Candidates> {
    let mut found = Candidates {
        files: Vec::new(),
        bytes: 0,
    };
    let mut seen = HashSet::new();
    let mut directories = vec![tree.to_owned()];
    while let Some(directory) = directories.pop() {
        let entries =
            fs::read_dir(&directory).with_context(|| format!("listing {}", directory.display()))?;
        for entry in entries {
            let path = entry?.path();
            let metadata = fs::symlink_metadata(&path)
                .with_context(|| format!("inspecting {}", path.display()))?;
            if !seen.insert((metadata.dev(), metadata.ino())) {
                continue;
            }
            if metadata.is_dir() {
                directories.push(path);
            } else if metadata.is_file() && is_candidate(&path, metadata.mode()) {
                found.bytes += metadata.len();
                found.files.push(path);
            }
        }
    }
    found.files.sort();
    Ok(found)
}

fn is_candidate(path: &Path, mode: u32) -> bool {
    let name = path
        .file_name()
        .map(|name| name.to_string_lossy())
        .unwrap_or_default();
    mode & 0o111 != 0
        || name.ends_with(".so")
        || name.contains(".so.")
        || name.ends_with(".AppImage")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candidates_are_executables_libraries_and_appimages() {
        assert!(is_candidate(Path::new("/usr/bin/true"), 0o100755));
        assert!(is_candidate(Path::new("/usr/lib/libc.so.6"), 0o100644));
        assert!(is_candidate(Path::new("/usr/lib/libx.so"), 0o100644));
        assert!(is_candidate(Path::new("/opt/App.AppImage"), 0o100644));
        assert!(!is_candidate(Path::new("/usr/share/doc/README"), 0o100644));
    }
}
