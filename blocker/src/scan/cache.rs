//! The persistent hash cache: what each file version hashed to in the previous scan.
//!
//! Layout, integers little-endian:
//!
//! | bytes  | content                                                          |
//! |--------|------------------------------------------------------------------|
//! | 8      | magic `BLKHASH\0`                                                |
//! | 4      | format version, [`VERSION`]                                      |
//! | 8      | number of entries                                                |
//! | 96 * n | entries: dev u64, ino u64, size u64, mtime ns i128, ctime ns     |
//! |        | i128, generation known u32 (0 or 1), generation u32, SHA-256     |
//! | 32     | SHA-256 of all the bytes before it                               |
//!
//! A cache that cannot be read back whole is dropped: losing it costs one full read of the
//! files, while a wrong entry would hide a banned file.

use crate::escape::escaped;
use std::{
    collections::HashMap,
    fs::{self, DirBuilder, OpenOptions},
    io::{self, Write},
    os::unix::fs::{DirBuilderExt, OpenOptionsExt},
    path::Path,
};

use sha2::Digest;

use super::{stamp::FileStamp, Sha256};

const MAGIC: &[u8; 8] = b"BLKHASH\0";
const VERSION: u32 = 1;
const HEADER_BYTES: usize = 8 + 4 + 8;
const ENTRY_BYTES: usize = 3 * 8 + 2 * 16 + 2 * 4 + 32;
const CHECKSUM_BYTES: usize = 32;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CachedHash {
    pub sha256: Sha256,
    /// Kept so a cache hit needs no open of the file at all.
    pub generation: Option<u32>,
}

pub type HashCache = HashMap<FileStamp, CachedHash>;

/// The cache at `path`; empty, with a warning, if it is unreadable or damaged, and empty without
/// one if there is none yet.
pub fn load(path: &Path, warnings: &mut Vec<String>) -> HashCache {
    let decoded = match fs::read(path) {
        Ok(bytes) => decode(&bytes),
        Err(error) if error.kind() == io::ErrorKind::NotFound => return HashCache::new(),
        Err(error) => Err(error.to_string()),
    };
    decoded.unwrap_or_else(|reason| {
        warnings.push(format!(
            "{}: {reason}; hashing every file again",
            escaped(&path)
        ));
        HashCache::new()
    })
}

/// Replaces the cache at `path` with `cache` in one step: a crash leaves the old file or the new
/// one, never a mix. Creates the directory if needed; the file is readable by its owner only.
pub fn save(path: &Path, cache: &HashCache) -> io::Result<()> {
    let name = path.file_name().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the cache path has no file name",
        )
    })?;
    let directory = path
        .parent()
        .filter(|parent| !parent.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(directory)?;
    let temporary = directory.join(format!(
        ".{}.{}.tmp",
        name.to_string_lossy(),
        std::process::id()
    ));
    // Left over by a crash of an earlier process with this id; create_new below then refuses
    // anything else found at the name, such as a planted symlink.
    match fs::remove_file(&temporary) {
        Err(error) if error.kind() != io::ErrorKind::NotFound => return Err(error),
        _ => {}
    }
    let written = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC)
        .open(&temporary)
        .and_then(|mut file| {
            file.write_all(&encode(cache))?;
            file.sync_all()
        })
        .and_then(|()| fs::rename(&temporary, path));
    if written.is_err() {
        let _ = fs::remove_file(&temporary);
    }
    written
}

pub(crate) fn encode(cache: &HashCache) -> Vec<u8> {
    let mut bytes = Vec::with_capacity(HEADER_BYTES + cache.len() * ENTRY_BYTES + CHECKSUM_BYTES);
    bytes.extend_from_slice(MAGIC);
    bytes.extend_from_slice(&VERSION.to_le_bytes());
    bytes.extend_from_slice(&(cache.len() as u64).to_le_bytes());
    for (stamp, hash) in cache {
        bytes.extend_from_slice(&stamp.dev.to_le_bytes());
        bytes.extend_from_slice(&stamp.ino.to_le_bytes());
        bytes.extend_from_slice(&stamp.size.to_le_bytes());
        bytes.extend_from_slice(&stamp.mtime_ns.to_le_bytes());
        bytes.extend_from_slice(&stamp.ctime_ns.to_le_bytes());
        bytes.extend_from_slice(&u32::from(hash.generation.is_some()).to_le_bytes());
        bytes.extend_from_slice(&hash.generation.unwrap_or(0).to_le_bytes());
        bytes.extend_from_slice(&hash.sha256);
    }
    let checksum = sha2::Sha256::digest(&bytes);
    bytes.extend_from_slice(&checksum);
    bytes
}

pub(crate) fn decode(bytes: &[u8]) -> Result<HashCache, String> {
    let mut fields = Fields(bytes);
    if fields.take()? != *MAGIC {
        return Err("not a blocker hash cache".to_owned());
    }
    let version = u32::from_le_bytes(fields.take()?);
    if version != VERSION {
        return Err(format!(
            "format version {version}, this blocker uses {VERSION}"
        ));
    }
    let count = u64::from_le_bytes(fields.take()?);
    let expected_length = usize::try_from(count)
        .ok()
        .and_then(|count| count.checked_mul(ENTRY_BYTES))
        .and_then(|entries| entries.checked_add(HEADER_BYTES + CHECKSUM_BYTES));
    if expected_length != Some(bytes.len()) {
        return Err(format!(
            "truncated or damaged: {} bytes for {count} entries",
            bytes.len()
        ));
    }
    let (content, checksum) = bytes.split_at(bytes.len() - CHECKSUM_BYTES);
    if sha2::Sha256::digest(content).as_slice() != checksum {
        return Err("damaged: the checksum does not match".to_owned());
    }
    // `count` entries fit in the file, so this allocation is bounded by its size.
    let mut cache = HashCache::with_capacity(bytes.len() / ENTRY_BYTES);
    for _ in 0..count {
        let stamp = FileStamp {
            dev: u64::from_le_bytes(fields.take()?),
            ino: u64::from_le_bytes(fields.take()?),
            size: u64::from_le_bytes(fields.take()?),
            mtime_ns: i128::from_le_bytes(fields.take()?),
            ctime_ns: i128::from_le_bytes(fields.take()?),
        };
        let generation_known = u32::from_le_bytes(fields.take()?);
        let generation = u32::from_le_bytes(fields.take()?);
        let generation = match generation_known {
            0 => None,
            1 => Some(generation),
            other => return Err(format!("damaged: generation flag {other}")),
        };
        let sha256 = fields.take()?;
        cache.insert(stamp, CachedHash { sha256, generation });
    }
    Ok(cache)
}

/// The unread rest of a cache file.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], String> {
        let (field, rest) = self
            .0
            .split_first_chunk()
            .ok_or_else(|| "truncated".to_owned())?;
        self.0 = rest;
        Ok(*field)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn sample(entries: u64) -> HashCache {
        (0..entries)
            .map(|index| {
                let stamp = FileStamp {
                    dev: 0x0801,
                    ino: index,
                    size: index * 3,
                    mtime_ns: -1_000_000_000 + i128::from(index),
                    ctime_ns: i128::from(index) << 70,
                };
                let hash = CachedHash {
                    sha256: [index as u8; 32],
                    generation: (index % 2 == 0).then_some(index as u32),
                };
                (stamp, hash)
            })
            .collect()
    }

    #[test]
    fn entries_round_trip() {
        for entries in [0, 1, 1000] {
            let cache = sample(entries);
            let bytes = encode(&cache);
            assert_eq!(
                bytes.len(),
                HEADER_BYTES + cache.len() * ENTRY_BYTES + CHECKSUM_BYTES
            );
            assert_eq!(decode(&bytes).unwrap(), cache);
        }
    }

    #[test]
    fn refuses_every_truncation_and_any_changed_byte() {
        let bytes = encode(&sample(3));
        for length in 0..bytes.len() {
            assert!(decode(&bytes[..length]).is_err(), "{length} bytes");
        }
        for position in 0..bytes.len() {
            let mut damaged = bytes.clone();
            damaged[position] ^= 0x10;
            assert!(decode(&damaged).is_err(), "byte {position}");
        }
    }

    #[test]
    fn says_what_is_wrong() {
        let bytes = encode(&sample(2));
        assert_eq!(
            decode(b"#!/bin/sh\n").unwrap_err(),
            "not a blocker hash cache"
        );
        let mut newer = bytes.clone();
        newer[8] = 2;
        assert_eq!(
            decode(&newer).unwrap_err(),
            "format version 2, this blocker uses 1"
        );
        assert_eq!(
            decode(&bytes[..bytes.len() - 1]).unwrap_err(),
            format!(
                "truncated or damaged: {} bytes for 2 entries",
                bytes.len() - 1
            )
        );
        let mut flipped = bytes.clone();
        flipped[HEADER_BYTES] ^= 1;
        assert_eq!(
            decode(&flipped).unwrap_err(),
            "damaged: the checksum does not match"
        );
    }

    #[test]
    fn a_missing_cache_is_empty_and_silent_a_damaged_one_warns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hashes");
        let mut warnings = Vec::new();
        assert!(load(&path, &mut warnings).is_empty());
        assert!(warnings.is_empty(), "{warnings:?}");

        fs::write(&path, b"BLKHASH\0garbage").unwrap();
        assert!(load(&path, &mut warnings).is_empty());
        assert_eq!(warnings.len(), 1);
        assert!(
            warnings[0].starts_with(&format!("{}: ", path.display())),
            "{warnings:?}"
        );

        // A directory where the file should be cannot be read.
        let mut warnings = Vec::new();
        assert!(load(dir.path(), &mut warnings).is_empty());
        assert_eq!(warnings.len(), 1);
    }

    #[test]
    fn saves_privately_in_a_new_directory_and_replaces_the_old_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cache/blocker/hashes");
        save(&path, &sample(5)).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let directory_mode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(directory_mode & 0o777, 0o700);

        save(&path, &sample(2)).unwrap();
        let mut warnings = Vec::new();
        assert_eq!(load(&path, &mut warnings), sample(2));
        assert!(warnings.is_empty());
        let names: Vec<_> = fs::read_dir(path.parent().unwrap())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, ["hashes"], "no temporary file is left behind");
    }

    #[test]
    fn a_failed_save_leaves_the_old_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("hashes");
        save(&path, &sample(1)).unwrap();
        // A directory in the way of the temporary file makes the write fail.
        let blocker = dir
            .path()
            .join(format!(".hashes.{}.tmp", std::process::id()));
        fs::create_dir(&blocker).unwrap();
        fs::write(blocker.join("keep"), b"").unwrap();
        assert!(save(&path, &sample(4)).is_err());
        assert_eq!(load(&path, &mut Vec::new()), sample(1));
    }
}
