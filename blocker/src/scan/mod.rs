//! Content hashing of executable files under scan roots, with a persistent cache.
//!
//! A scan lists every executable candidate under the roots, takes the hash of each file version
//! it has seen before from the cache, and reads the others on every CPU. Whatever goes wrong
//! with one file (gone, unreadable, changed while read) is a warning about that file.

pub(crate) mod cache;
mod hex;
mod progress;
mod read;
mod stamp;
mod workers;

use crate::escape::escaped;
use std::{
    collections::HashMap,
    io,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use blocker_common::FileKey;

use self::{
    cache::{CachedHash, HashCache},
    progress::Progress,
    read::ReadFile,
};
pub use self::{
    hex::{parse_sha256, to_hex},
    read::{is_too_large, ContentReader},
    stamp::FileStamp,
};
use crate::{
    files::{is_executable_candidate, walk},
    identity::{self, FileIdentity},
    lookup::Problems,
};

pub type Sha256 = [u8; 32];

pub const DEFAULT_CACHE_FILE: &str = "/var/cache/blocker/hashes";

/// File timestamps are only as fine as the filesystem keeps them (FAT: 2 s) and the kernel's
/// coarse clock sets them. A file changed this close to the scan's start could change again after
/// being read and keep the same stamp, so its hash is not cached.
const RECENT_CHANGE: Duration = Duration::from_secs(3);

#[derive(Clone, Debug)]
pub struct ScanOptions {
    pub roots: Vec<PathBuf>,
    /// None = no persistent cache.
    pub cache_file: Option<PathBuf>,
    /// Show a progress bar if stderr is a terminal.
    pub progress: bool,
}

impl ScanOptions {
    /// Where programs get installed or dropped: the system, add-on software, user homes,
    /// Flatpak and snap packages, and the world-writable temporary directory.
    pub fn default_roots() -> Vec<PathBuf> {
        [
            "/usr",
            "/opt",
            "/home",
            "/root",
            "/srv",
            "/var/lib/flatpak",
            "/snap",
            "/tmp",
        ]
        .into_iter()
        .map(PathBuf::from)
        .collect()
    }
}

#[derive(Clone, Debug)]
pub struct HashedFile {
    pub path: PathBuf,
    pub identity: FileIdentity,
    pub sha256: Sha256,
}

/// Files are counted as distinct inodes, once however many paths lead to them, and every
/// candidate is exactly one of read, cached, skipped or too large.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct ScanStats {
    pub candidates: usize,
    /// Read from disk in this scan.
    pub read: usize,
    /// Taken from the cache without opening the file.
    pub cached: usize,
    /// Given up, with a warning.
    pub skipped: usize,
    /// Larger than the hash limit, so not hashed; one warning counts them all.
    pub too_large: usize,
    pub bytes_read: u64,
}

#[derive(Debug)]
pub struct ScanReport {
    /// One per path, sorted by path: hard links and overlapping roots give several paths to
    /// one file.
    pub files: Vec<HashedFile>,
    pub stats: ScanStats,
    /// `path: reason`, for the caller to report.
    pub warnings: Vec<String>,
}

/// Walks every root, keeps executable candidates, hashes those of at most `limit_bytes` (cache
/// first), updates the cache.
pub fn scan(options: &ScanOptions, limit_bytes: u64) -> ScanReport {
    scan_where(options, limit_bytes, &|_| true)
}

/// [`scan`] of the candidates `wanted` accepts a path of: no other file is read.
pub fn scan_where(
    options: &ScanOptions,
    limit_bytes: u64,
    wanted: &dyn Fn(&Path) -> bool,
) -> ScanReport {
    let now_ns = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since_epoch| since_epoch.as_nanos() as i128);
    scan_caching_changes_before(
        options,
        now_ns - RECENT_CHANGE.as_nanos() as i128,
        limit_bytes,
        wanted,
    )
}

/// One file, following symlinks, no cache, no size limit: for `blocker hash FILE`.
pub fn hash_file(path: &Path) -> io::Result<HashedFile> {
    hash_file_within(path, &mut ContentReader::new(u64::MAX), None)
}

/// One file, following symlinks, no cache, with `reader`'s size limit and given up at
/// `deadline`: for the content watcher.
pub fn hash_file_within(
    path: &Path,
    reader: &mut ContentReader,
    deadline: Option<Instant>,
) -> io::Result<HashedFile> {
    let read = reader.read_until(path, None, deadline)?;
    Ok(HashedFile {
        path: path.to_owned(),
        identity: read.identity,
        sha256: read.sha256,
    })
}

/// The SHA-256 (hex) of the file at `path` if it is still the file an event named (`device`
/// as `major:minor`, `inode`), within `limit_bytes` and by `deadline`: what a refusal's file
/// hashes to, looked up after the fact.
pub fn sha256_if_still(
    path: &Path,
    device: &str,
    inode: u64,
    limit_bytes: u64,
    deadline: Instant,
) -> Option<String> {
    let file = hash_file_within(path, &mut ContentReader::new(limit_bytes), Some(deadline)).ok()?;
    crate::identity::is_recorded_file(&file.identity.key, device, inode)
        .then(|| to_hex(&file.sha256))
}

/// One file found under the roots, with every path it was found at.
struct Candidate {
    paths: Vec<PathBuf>,
    stamp: FileStamp,
    owner: u32,
}

/// [`scan`], caching the hashes of files whose ctime is before `cacheable_ctime_ns`.
fn scan_caching_changes_before(
    options: &ScanOptions,
    cacheable_ctime_ns: i128,
    limit_bytes: u64,
    wanted: &dyn Fn(&Path) -> bool,
) -> ScanReport {
    let mut warnings = Vec::new();
    let progress = Progress::new(options.progress);
    let previous = options
        .cache_file
        .as_deref()
        .map(|path| cache::load(path, &mut warnings))
        .unwrap_or_default();
    let mut candidates = list_candidates(&options.roots, &progress, &mut warnings);
    candidates.retain(|candidate| candidate.paths.iter().any(|path| wanted(path)));
    let hashed = hash_candidates(
        &candidates,
        &previous,
        &Bounds {
            cacheable_ctime_ns,
            limit_bytes,
        },
        &progress,
    );

    warnings.extend(hashed.warnings);
    // An unchanged tree leaves the file alone: periodic rescans then write nothing.
    if let Some(path) = options
        .cache_file
        .as_deref()
        .filter(|_| hashed.cache != previous)
    {
        if let Err(error) = cache::save(path, &hashed.cache) {
            warnings.push(format!("{}: {error}", escaped(&path)));
        }
    }
    ScanReport {
        files: hashed.files,
        stats: hashed.stats,
        warnings,
    }
}

/// The executable candidates under `roots`, one per inode.
fn list_candidates(
    roots: &[PathBuf],
    progress: &Progress,
    warnings: &mut Vec<String>,
) -> Vec<Candidate> {
    let mut by_inode: HashMap<(u64, u64), Candidate> = HashMap::new();
    for root in roots {
        progress.listing(root);
        // The content scan reports every problem alike: a content rule's entries follow the
        // files the scan found.
        let mut problems = Problems::default();
        let walked = walk(root, &mut problems);
        warnings.append(&mut problems.warnings);
        warnings.append(&mut problems.undecided);
        for entry in walked {
            if !is_executable_candidate(&entry.path, &entry.status) {
                continue;
            }
            let stamp = FileStamp::from(&entry.status);
            by_inode
                .entry((stamp.dev, stamp.ino))
                .or_insert_with(|| Candidate {
                    paths: Vec::new(),
                    stamp,
                    owner: entry.status.uid,
                })
                .paths
                .push(entry.path);
        }
    }
    let mut candidates: Vec<_> = by_inode
        .into_values()
        .map(|mut candidate| {
            // Overlapping roots (/usr and /usr/bin) list the same path twice.
            candidate.paths.sort_unstable();
            candidate.paths.dedup();
            candidate
        })
        .collect();
    // Files of one directory next to each other on disk are read one after another.
    candidates.sort_unstable_by(|one, other| one.paths.cmp(&other.paths));
    candidates
}

/// What hashing the candidates gave.
struct Hashed {
    files: Vec<HashedFile>,
    stats: ScanStats,
    warnings: Vec<String>,
    /// The cache to keep: exactly the files of this scan that were cached or safely read.
    cache: HashCache,
}

/// Which hashes a scan keeps and which files it reads.
struct Bounds {
    /// Hashes of files changed since are not cached.
    cacheable_ctime_ns: i128,
    /// Larger files are not hashed.
    limit_bytes: u64,
}

/// How many paths of files too large to hash a scan's warning lists.
const TOO_LARGE_LISTED: usize = 5;

fn hash_candidates(
    candidates: &[Candidate],
    previous: &HashCache,
    bounds: &Bounds,
    progress: &Progress,
) -> Hashed {
    let mut hashed = Hashed {
        files: Vec::new(),
        stats: ScanStats {
            candidates: candidates.len(),
            ..ScanStats::default()
        },
        warnings: Vec::new(),
        cache: HashCache::new(),
    };
    let mut to_read = Vec::new();
    let mut too_large = Vec::new();
    for candidate in candidates {
        if candidate.stamp.size > bounds.limit_bytes {
            too_large.push(candidate);
            continue;
        }
        match previous.get(&candidate.stamp) {
            Some(&known) => {
                hashed.stats.cached += 1;
                hashed.cache.insert(candidate.stamp, known);
                match cached_key(candidate) {
                    Ok((key, paths)) => hashed.add_files(candidate, paths, key, known),
                    Err(warning) => hashed.warnings.push(warning),
                }
            }
            None => to_read.push(candidate),
        }
    }
    hashed.stats.too_large = too_large.len();
    if !too_large.is_empty() {
        let listed: Vec<String> = too_large
            .iter()
            .take(TOO_LARGE_LISTED)
            .map(|candidate| escaped(&candidate.paths[0]).to_string())
            .collect();
        let more = too_large.len().saturating_sub(listed.len());
        hashed.warnings.push(format!(
            "{} files larger than the hash limit ({} MiB) were not hashed, so no content rule \
             matches them: {}{}",
            too_large.len(),
            bounds.limit_bytes >> 20,
            listed.join(", "),
            if more > 0 {
                format!(" and {more} more")
            } else {
                String::new()
            }
        ));
    }

    progress.reading(to_read.iter().map(|candidate| candidate.stamp.size).sum());
    let new_reader = || ContentReader::new(bounds.limit_bytes);
    let outcomes = workers::map_in_parallel(&to_read, new_reader, |reader, candidate| {
        let outcome = read_candidate(reader, candidate);
        progress.advance(candidate.stamp.size);
        outcome
    });
    for outcome in outcomes {
        match outcome {
            Ok((read, candidate, paths)) => {
                hashed.stats.read += 1;
                hashed.stats.bytes_read += read.stamp.size;
                let known = CachedHash {
                    sha256: read.sha256,
                    generation: read.identity.generation,
                };
                if read.stamp.ctime_ns < bounds.cacheable_ctime_ns {
                    hashed.cache.insert(read.stamp, known);
                }
                hashed.add_files(candidate, paths, read.identity.key, known);
            }
            Err(warning) => {
                hashed.stats.skipped += 1;
                hashed.warnings.push(warning);
            }
        }
    }
    hashed
        .files
        .sort_unstable_by(|one, other| one.path.cmp(&other.path));
    hashed
}

impl Hashed {
    fn add_files(
        &mut self,
        candidate: &Candidate,
        paths: &[PathBuf],
        key: FileKey,
        known: CachedHash,
    ) {
        let identity = FileIdentity {
            key,
            generation: known.generation,
            owner: candidate.owner,
        };
        self.files.extend(paths.iter().map(|path| HashedFile {
            path: path.clone(),
            identity,
            sha256: known.sha256,
        }));
    }
}

/// The key of a candidate whose hash the cache holds, through the first of its paths that still
/// names the inode listed (the paths before it no longer do, and are left out); the error is the
/// warning about every path tried.
fn cached_key(candidate: &Candidate) -> Result<(FileKey, &[PathBuf]), String> {
    let listed = (candidate.stamp.dev, candidate.stamp.ino);
    let mut failures = Vec::new();
    for (index, path) in candidate.paths.iter().enumerate() {
        match identity::key_of_path_no_follow(path) {
            Ok((key, seen_as)) if seen_as == listed => return Ok((key, &candidate.paths[index..])),
            Ok(_) => failures.push(format!("{}: replaced since it was listed", escaped(path))),
            Err(error) => failures.push(format!("{}: {error}", escaped(path))),
        }
    }
    Err(failures.join("; "))
}

/// Reads the candidate through the first of its paths that still leads to it: one hard link may
/// be gone while another remains. Returns that path and those after it, the ones before no
/// longer being the file's; the error is the warning about every path tried.
fn read_candidate<'a>(
    reader: &mut ContentReader,
    candidate: &'a Candidate,
) -> Result<(ReadFile, &'a Candidate, &'a [PathBuf]), String> {
    let mut failures = Vec::new();
    for (index, path) in candidate.paths.iter().enumerate() {
        match reader.read(path, Some(&candidate.stamp)) {
            Ok(read) => return Ok((read, candidate, &candidate.paths[index..])),
            Err(error) => failures.push(format!("{}: {error}", escaped(&path))),
        }
    }
    Err(failures.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::{
        fs,
        os::unix::fs::{symlink, MetadataExt, PermissionsExt},
        process::Command,
    };

    use sha2::Digest;

    /// Caches every hash, however recent the file: the files of a test are all brand new.
    fn scan_trusting_recent_changes(options: &ScanOptions) -> ScanReport {
        scan_caching_changes_before(options, i128::MAX, u64::MAX, &|_| true)
    }

    fn options(root: &Path, cache_file: Option<PathBuf>) -> ScanOptions {
        ScanOptions {
            roots: vec![root.to_owned()],
            cache_file,
            progress: false,
        }
    }

    fn write(path: &Path, content: &[u8], mode: u32) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, content).unwrap();
        fs::set_permissions(path, fs::Permissions::from_mode(mode)).unwrap();
    }

    fn sha256_of(content: &[u8]) -> Sha256 {
        sha2::Sha256::digest(content).into()
    }

    /// Paths relative to `root` with their hashes.
    fn found(report: &ScanReport, root: &Path) -> Vec<(String, Sha256)> {
        report
            .files
            .iter()
            .map(|file| {
                let path = file.path.strip_prefix(root).unwrap();
                (path.display().to_string(), file.sha256)
            })
            .collect()
    }

    /// A tree with two executables, a library, and files that are not candidates.
    fn sample_tree(root: &Path) {
        write(&root.join("bin/tool"), b"#!/bin/sh\necho tool\n", 0o755);
        write(&root.join("bin/big"), &vec![0xab; 600_000], 0o700);
        write(&root.join("lib/libthing.so.1"), b"\x7fELF library", 0o644);
        write(&root.join("share/README"), b"not a program", 0o644);
        write(&root.join("share/data.json"), b"{}", 0o600);
    }

    #[test]
    fn hashes_the_candidates_and_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        sample_tree(root);

        let report = scan(&options(root, None), u64::MAX);
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        assert_eq!(
            found(&report, root),
            [
                ("bin/big".to_owned(), sha256_of(&vec![0xab; 600_000])),
                ("bin/tool".to_owned(), sha256_of(b"#!/bin/sh\necho tool\n")),
                (
                    "lib/libthing.so.1".to_owned(),
                    sha256_of(b"\x7fELF library")
                ),
            ]
        );
        assert_eq!(
            report.stats,
            ScanStats {
                candidates: 3,
                read: 3,
                cached: 0,
                skipped: 0,
                too_large: 0,
                bytes_read: 600_000 + 20 + 12,
            }
        );
        let tool = &report.files[1];
        assert_eq!(tool.identity, FileIdentity::of_path(&tool.path).unwrap());

        let sha256sum = Command::new("sha256sum").arg(&tool.path).output().unwrap();
        let printed = String::from_utf8(sha256sum.stdout).unwrap();
        assert_eq!(
            printed.split_whitespace().next(),
            Some(to_hex(&tool.sha256).as_str())
        );
    }

    #[test]
    fn files_over_the_limit_are_counted_not_hashed_in_one_warning() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(&root.join("small"), b"small", 0o755);
        for name in ["huge-1.so", "huge-2.so"] {
            // Sparse: 8 GiB of nothing, costing no disk space and, unhashed, no time.
            let file = fs::File::create(root.join(name)).unwrap();
            file.set_len(8 << 30).unwrap();
        }
        let report = scan(&options(root, None), 1 << 20);
        assert_eq!(found_paths(&report.files), [root.join("small")]);
        assert_eq!(
            (
                report.stats.read,
                report.stats.too_large,
                report.stats.candidates
            ),
            (1, 2, 3)
        );
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        assert!(
            report.warnings[0]
                .starts_with("2 files larger than the hash limit (1 MiB) were not hashed")
                && report.warnings[0].contains("huge-2.so"),
            "{:?}",
            report.warnings
        );
    }

    #[test]
    fn a_rescan_takes_unchanged_files_from_the_cache() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        sample_tree(&root);
        let cache_file = dir.path().join("cache/hashes");
        let options = options(&root, Some(cache_file.clone()));

        let first = scan_trusting_recent_changes(&options);
        assert_eq!((first.stats.read, first.stats.cached), (3, 0));
        let second = scan_trusting_recent_changes(&options);
        assert!(second.warnings.is_empty(), "{:?}", second.warnings);
        assert_eq!(
            second.stats,
            ScanStats {
                candidates: 3,
                read: 0,
                cached: 3,
                skipped: 0,
                too_large: 0,
                bytes_read: 0,
            }
        );
        assert_eq!(found(&second, &root), found(&first, &root));
        let identities = |report: &ScanReport| -> Vec<_> {
            report.files.iter().map(|file| file.identity).collect()
        };
        assert_eq!(identities(&second), identities(&first));

        // Same size, so only the timestamps tell the new content from the old.
        let tool = root.join("bin/tool");
        fs::write(&tool, b"#!/bin/sh\necho TOOL\n").unwrap();
        let file = fs::File::options().write(true).open(&tool).unwrap();
        file.set_modified(UNIX_EPOCH + Duration::from_secs(1_000_000_000))
            .unwrap();
        let third = scan_trusting_recent_changes(&options);
        assert_eq!((third.stats.read, third.stats.cached), (1, 2));
        assert_eq!(third.files[1].sha256, sha256_of(b"#!/bin/sh\necho TOOL\n"));
    }

    #[test]
    fn a_file_made_executable_where_no_directory_changed_is_found() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        sample_tree(&root);
        let options = options(&root, Some(dir.path().join("cache/hashes")));
        let first = scan_trusting_recent_changes(&options);
        assert_eq!(first.stats.candidates, 3);

        let stamp = |path: &Path| {
            let metadata = fs::metadata(path).unwrap();
            (
                metadata.mtime_nsec(),
                metadata.ctime_nsec(),
                metadata.mtime(),
                metadata.ctime(),
            )
        };
        let directories = [root.clone(), root.join("share")];
        let before: Vec<_> = directories.iter().map(|d| stamp(d)).collect();
        fs::set_permissions(root.join("share/README"), fs::Permissions::from_mode(0o755)).unwrap();
        let after: Vec<_> = directories.iter().map(|d| stamp(d)).collect();
        assert_eq!(before, after, "no directory tells the change");

        let second = scan_trusting_recent_changes(&options);
        assert_eq!((second.stats.read, second.stats.cached), (1, 3));
        assert!(found(&second, &root)
            .contains(&("share/README".to_owned(), sha256_of(b"not a program"))));
    }

    #[test]
    fn the_cache_keeps_only_the_files_of_the_last_scan() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        sample_tree(&root);
        let cache_file = dir.path().join("hashes");
        let options = options(&root, Some(cache_file.clone()));
        scan_trusting_recent_changes(&options);

        fs::remove_file(root.join("bin/big")).unwrap();
        scan_trusting_recent_changes(&options);
        assert_eq!(cache::load(&cache_file, &mut Vec::new()).len(), 2);
    }

    #[test]
    fn recently_changed_files_are_not_cached() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        sample_tree(&root);
        let options = options(&root, Some(dir.path().join("hashes")));

        assert_eq!(scan(&options, u64::MAX).stats.read, 3);
        assert_eq!(scan(&options, u64::MAX).stats.read, 3);
    }

    #[test]
    fn a_damaged_cache_is_a_warning_and_gets_rewritten() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        sample_tree(&root);
        let cache_file = dir.path().join("hashes");
        let options = options(&root, Some(cache_file.clone()));
        let clean = scan_trusting_recent_changes(&options);

        let bytes = fs::read(&cache_file).unwrap();
        fs::write(&cache_file, &bytes[..bytes.len() / 2]).unwrap();
        let report = scan_trusting_recent_changes(&options);
        assert_eq!(report.warnings.len(), 1, "{:?}", report.warnings);
        assert!(report.warnings[0].starts_with(&cache_file.display().to_string()));
        assert_eq!((report.stats.read, report.stats.cached), (3, 0));
        assert_eq!(found(&report, &root), found(&clean, &root));

        let mut warnings = Vec::new();
        assert_eq!(cache::load(&cache_file, &mut warnings).len(), 3);
        assert!(warnings.is_empty(), "{warnings:?}");
    }

    #[test]
    fn a_file_with_two_paths_is_read_once() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(&root.join("a/tool"), b"linked", 0o755);
        fs::create_dir(root.join("b")).unwrap();
        fs::hard_link(root.join("a/tool"), root.join("b/tool")).unwrap();
        // Overlapping roots reach a/tool twice by the same path.
        let options = ScanOptions {
            roots: vec![root.to_owned(), root.join("a")],
            cache_file: None,
            progress: false,
        };

        let report = scan(&options, u64::MAX);
        assert_eq!(
            found(&report, root),
            [
                ("a/tool".to_owned(), sha256_of(b"linked")),
                ("b/tool".to_owned(), sha256_of(b"linked")),
            ]
        );
        assert_eq!(report.files[0].identity, report.files[1].identity);
        assert_eq!((report.stats.candidates, report.stats.read), (1, 1));
        assert_eq!(report.stats.bytes_read, 6);
    }

    #[test]
    fn a_symlink_loop_ends() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(&root.join("a/tool"), b"tool", 0o755);
        symlink(root, root.join("a/loop")).unwrap();
        symlink("self", root.join("a/self")).unwrap();

        let report = scan(&options(root, None), u64::MAX);
        assert_eq!(
            found(&report, root),
            [("a/tool".to_owned(), sha256_of(b"tool"))]
        );
    }

    #[test]
    fn a_file_gone_or_replaced_after_listing_is_skipped_with_a_warning() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(&root.join("gone"), b"gone", 0o755);
        write(&root.join("replaced"), b"replaced", 0o755);
        write(&root.join("kept"), b"kept", 0o755);
        let mut warnings = Vec::new();
        let candidates = list_candidates(&[root.to_owned()], &Progress::new(false), &mut warnings);

        fs::remove_file(root.join("gone")).unwrap();
        write(&root.join("other"), b"other", 0o755);
        fs::rename(root.join("other"), root.join("replaced")).unwrap();
        let hashed = hash_candidates(
            &candidates,
            &HashCache::new(),
            &Bounds {
                cacheable_ctime_ns: i128::MAX,
                limit_bytes: u64::MAX,
            },
            &Progress::new(false),
        );

        assert_eq!(found_paths(&hashed.files), [root.join("kept")]);
        assert_eq!(
            hashed.stats,
            ScanStats {
                candidates: 3,
                read: 1,
                cached: 0,
                skipped: 2,
                too_large: 0,
                bytes_read: 4,
            }
        );
        assert_eq!(hashed.warnings.len(), 2);
        let gone = format!("{}: ", root.join("gone").display());
        let replaced = format!("{}: ", root.join("replaced").display());
        assert!(
            hashed.warnings[0].starts_with(&gone),
            "{:?}",
            hashed.warnings
        );
        assert!(
            hashed.warnings[1].starts_with(&replaced),
            "{:?}",
            hashed.warnings
        );
        assert_eq!(hashed.cache.len(), 1);
    }

    fn found_paths(files: &[HashedFile]) -> Vec<PathBuf> {
        files.iter().map(|file| file.path.clone()).collect()
    }

    #[test]
    fn another_link_serves_when_the_first_is_gone() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        write(&root.join("a"), b"tool", 0o755);
        fs::hard_link(root.join("a"), root.join("b")).unwrap();
        let candidates =
            list_candidates(&[root.to_owned()], &Progress::new(false), &mut Vec::new());

        fs::remove_file(root.join("a")).unwrap();
        let hashed = hash_candidates(
            &candidates,
            &HashCache::new(),
            &Bounds {
                cacheable_ctime_ns: i128::MAX,
                limit_bytes: u64::MAX,
            },
            &Progress::new(false),
        );
        assert!(hashed.warnings.is_empty(), "{:?}", hashed.warnings);
        assert_eq!(hashed.stats.read, 1);
        assert_eq!(found_paths(&hashed.files), [root.join("b")]);
    }

    #[test]
    fn hash_file_hashes_the_target_of_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target");
        write(&target, b"the target", 0o644);
        let link = dir.path().join("link");
        symlink(&target, &link).unwrap();

        let hashed = hash_file(&link).unwrap();
        assert_eq!(hashed.path, link);
        assert_eq!(hashed.sha256, sha256_of(b"the target"));
        assert_eq!(hashed.identity, FileIdentity::of_path(&target).unwrap());
        assert!(hash_file(dir.path()).is_err());
    }
}
