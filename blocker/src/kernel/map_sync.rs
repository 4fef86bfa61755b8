//! Keeping a kernel hash map equal to what userspace wants. Changes go in with
//! `BPF_MAP_UPDATE_BATCH` (Linux 5.6), thousands of entries a system call, so a million entries
//! cost a few hundred calls instead of a million; where the kernel lacks it, or refuses an entry
//! in a batch, entries go in one call each, which also names the entry refused. Large changes
//! are shared among threads: most of their cost is the kernel's work per entry, which runs in
//! parallel (a hash map locks per bucket).

use std::{
    io,
    os::fd::{AsFd, AsRawFd, BorrowedFd},
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{HashMap, Map, MapData},
    Pod,
};
use aya_obj::generated::bpf_cmd;

use super::{
    syscall::{sys_bpf, zeroed_attr},
    ApplyStats,
};
use crate::sorted_map::SortedMap;

/// Entries one `BPF_MAP_UPDATE_BATCH` call carries: large enough that the calls cost little
/// next to the kernel's own work per entry, small enough that the buffers stay small.
const BATCH_ENTRIES: usize = 4096;

/// Changes one thread writes at least: for fewer, another thread costs more than it saves.
const CHANGES_PER_THREAD: usize = 2 * BATCH_ENTRIES;

/// Threads filling one map at most.
const MAX_FILL_THREADS: usize = 4;

/// `ENOTSUPP`, the kernel-internal error a map type without batch operations returns; libc
/// does not export it.
const ENOTSUPP: i32 = 524;

/// A batch the kernel did not take whole.
#[derive(Debug)]
pub struct BatchRefused {
    /// How many entries, from the first, went in before the error.
    pub written: usize,
    pub error: io::Error,
}

impl BatchRefused {
    /// Whether the kernel cannot take batches at all (before Linux 5.6 the command is unknown),
    /// rather than refusing one entry.
    fn batches_unsupported(&self) -> bool {
        self.written == 0
            && matches!(
                self.error.raw_os_error(),
                Some(libc::EINVAL | libc::EOPNOTSUPP | ENOTSUPP)
            )
    }
}

/// The writes [`sync_map`] makes to a hash map, from several threads at once.
pub trait MapWrites<K, V>: Sync {
    /// Adds or replaces `keys[i]` with `values[i]`, in order, in one call.
    fn update_batch(&self, keys: &[K], values: &[V]) -> Result<(), BatchRefused>;
    fn update(&self, key: &K, value: &V) -> io::Result<()>;
    fn remove(&self, key: &K) -> io::Result<()>;
}

/// A kernel hash map, written through its descriptor.
pub struct KernelHashMap<'a> {
    fd: BorrowedFd<'a>,
}

impl<'a> KernelHashMap<'a> {
    /// The hash map `map`, if its keys and values have the sizes of `K` and `V`.
    pub fn of<K: Pod, V: Pod>(map: &'a Map) -> Result<Self> {
        // aya checks the map's type and its key and value sizes.
        HashMap::<&MapData, K, V>::try_from(map)?;
        let Map::HashMap(data) = map else {
            bail!("not a hash map");
        };
        Ok(Self {
            fd: data.fd().as_fd(),
        })
    }

    fn element_call<K, V>(&self, command: bpf_cmd, key: &K, value: Option<&V>) -> io::Result<()> {
        let mut attr = zeroed_attr();
        // SAFETY: writing the members of the element commands' part of the union.
        let element = unsafe { &mut attr.__bindgen_anon_2 };
        element.map_fd = self.fd.as_raw_fd() as u32;
        element.key = std::ptr::from_ref(key) as u64;
        if let Some(value) = value {
            element.__bindgen_anon_1.value = std::ptr::from_ref(value) as u64;
        }
        sys_bpf(command, &mut attr).map(drop)
    }
}

impl<K: Pod, V: Pod> MapWrites<K, V> for KernelHashMap<'_> {
    fn update_batch(&self, keys: &[K], values: &[V]) -> Result<(), BatchRefused> {
        assert_eq!(keys.len(), values.len(), "one value per key");
        let mut attr = zeroed_attr();
        // SAFETY: writing the members of the batch commands' part of the union.
        let batch = unsafe { &mut attr.batch };
        batch.map_fd = self.fd.as_raw_fd() as u32;
        batch.keys = keys.as_ptr() as u64;
        batch.values = values.as_ptr() as u64;
        batch.count = u32::try_from(keys.len()).expect("a batch is small");
        match sys_bpf(bpf_cmd::BPF_MAP_UPDATE_BATCH, &mut attr) {
            Ok(_) => Ok(()),
            Err(error) => Err(BatchRefused {
                // SAFETY: the kernel wrote back how many entries it processed.
                written: unsafe { attr.batch.count } as usize,
                error,
            }),
        }
    }

    fn update(&self, key: &K, value: &V) -> io::Result<()> {
        self.element_call(bpf_cmd::BPF_MAP_UPDATE_ELEM, key, Some(value))
    }

    fn remove(&self, key: &K) -> io::Result<()> {
        self.element_call::<K, V>(bpf_cmd::BPF_MAP_DELETE_ELEM, key, None)
    }
}

/// [`sync_map`] on the kernel hash map `map`.
pub fn sync_kernel_map<K: Pod + Ord + Sync, V: Pod + PartialEq + Sync>(
    map: &Map,
    installed: &mut SortedMap<K, V>,
    wanted: &SortedMap<K, V>,
) -> Result<ApplyStats> {
    sync_map(&KernelHashMap::of::<K, V>(map)?, installed, wanted)
}

/// Makes a kernel hash map that holds `installed` hold `wanted`. New and changed entries go in
/// before stale ones leave, so an entry present in both is never absent, even for an instant. If
/// the kernel refuses an entry, every change is undone and the previous contents stay whole.
pub fn sync_map<K: Pod + Ord + Sync, V: Pod + PartialEq + Sync>(
    map: &impl MapWrites<K, V>,
    installed: &mut SortedMap<K, V>,
    wanted: &SortedMap<K, V>,
) -> Result<ApplyStats> {
    let mut stats = ApplyStats::default();
    for (key, value) in wanted {
        match installed.get(key) {
            Some(previous) if previous == value => {}
            Some(_) => stats.changed += 1,
            None => stats.added += 1,
        }
    }
    let changes = stats.added + stats.changed;
    let threads = std::thread::available_parallelism()
        .map_or(1, usize::from)
        .min(MAX_FILL_THREADS)
        .min(changes / CHANGES_PER_THREAD)
        .max(1);
    let per_thread = changes.div_ceil(threads).max(1);
    let before: &SortedMap<K, V> = installed;
    // Part `part` of the changes, in order: each thread writes one.
    let part = |part: usize| {
        wanted
            .iter()
            .filter(|(key, value)| before.get(key) != Some(*value))
            .skip(part * per_thread)
            .take(per_thread)
    };
    let mut written: Vec<(usize, io::Result<()>)> = std::thread::scope(|scope| {
        let others: Vec<_> = (1..threads)
            .map(|index| scope.spawn(move || write_part(map, part(index))))
            .collect();
        let mut written = vec![write_part(map, part(0))];
        written.extend(
            others
                .into_iter()
                .map(|thread| thread.join().expect("a map-filling thread panicked")),
        );
        written
    });
    if let Some(failed) = written.iter().position(|(_, result)| result.is_err()) {
        for (index, (count, _)) in written.iter().enumerate() {
            // Best effort: the map held these a moment ago, so they fit again.
            for (key, _) in part(index).take(*count) {
                let _ = match before.get(key) {
                    Some(previous) => map.update(key, previous),
                    None => map.remove(key),
                };
            }
        }
        let (count, result) = written.swap_remove(failed);
        let error = result.expect_err("the part that failed");
        return Err(error).with_context(|| {
            format!(
                "adding entry {} of {} to the kernel map; the previous policy stays in force",
                failed * per_thread + count + 1,
                wanted.len()
            )
        });
    }
    for key in installed.keys() {
        if !wanted.contains_key(key) {
            map.remove(key).context("removing a stale entry")?;
            stats.removed += 1;
        }
    }
    installed.clone_from(wanted);
    Ok(stats)
}

/// Writes `changes` in chunks of a batch each; returns how many went in, and the error that
/// stopped it if one did.
fn write_part<'a, K: Pod + 'a, V: Pod + 'a>(
    map: &impl MapWrites<K, V>,
    mut changes: impl Iterator<Item = (&'a K, &'a V)>,
) -> (usize, io::Result<()>) {
    let (mut keys, mut values) = (Vec::new(), Vec::new());
    let mut batches = true;
    let mut written = 0;
    loop {
        keys.clear();
        values.clear();
        for (key, value) in changes.by_ref().take(BATCH_ENTRIES) {
            keys.push(*key);
            values.push(*value);
        }
        if keys.is_empty() {
            return (written, Ok(()));
        }
        if let Err(error) = write_chunk(map, &keys, &values, &mut batches, &mut written) {
            return (written, Err(error));
        }
    }
}

/// Writes one chunk of changes, as a batch while `batches` holds, then entry by entry from the
/// first entry a batch did not take; counts what went in into `written`.
fn write_chunk<K, V>(
    map: &impl MapWrites<K, V>,
    keys: &[K],
    values: &[V],
    batches: &mut bool,
    written: &mut usize,
) -> io::Result<()> {
    let mut start = 0;
    if *batches {
        match map.update_batch(keys, values) {
            Ok(()) => {
                *written += keys.len();
                return Ok(());
            }
            Err(refused) => {
                if refused.batches_unsupported() {
                    log::debug!(
                        "the kernel takes no batched map updates ({}); one call per entry",
                        refused.error
                    );
                    *batches = false;
                }
                start = refused.written.min(keys.len());
                *written += start;
            }
        }
    }
    for (key, value) in keys[start..].iter().zip(&values[start..]) {
        map.update(key, value)?;
        *written += 1;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::{
        os::fd::{FromRawFd, OwnedFd},
        sync::atomic::{AtomicUsize, Ordering},
    };

    use aya_obj::generated::bpf_map_type;
    use blocker_common::{BanEntry, FileKey};

    use super::*;

    /// A kernel hash map of `capacity` ban entries, made for the test alone.
    fn kernel_map(capacity: u32) -> OwnedFd {
        let mut attr = zeroed_attr();
        // SAFETY: writing the members of the map creation's part of the union.
        let create = unsafe { &mut attr.__bindgen_anon_1 };
        create.map_type = bpf_map_type::BPF_MAP_TYPE_HASH as u32;
        create.key_size = std::mem::size_of::<FileKey>() as u32;
        create.value_size = std::mem::size_of::<BanEntry>() as u32;
        create.max_entries = capacity;
        let fd = sys_bpf(bpf_cmd::BPF_MAP_CREATE, &mut attr)
            .expect("creating a hash map (the unit tests run as root)");
        // SAFETY: the command returns a new descriptor, which nothing else owns.
        unsafe { OwnedFd::from_raw_fd(fd as i32) }
    }

    fn contents(fd: &OwnedFd) -> SortedMap<FileKey, BanEntry> {
        let data = MapData::from_fd(fd.try_clone().unwrap()).unwrap();
        let map = HashMap::<MapData, FileKey, BanEntry>::try_from(Map::HashMap(data)).unwrap();
        map.iter().map(Result::unwrap).collect()
    }

    fn entries(inodes: std::ops::Range<u64>, rule_id: u32) -> SortedMap<FileKey, BanEntry> {
        inodes
            .map(|ino| {
                let entry = BanEntry {
                    rule_id,
                    ..BanEntry::default()
                };
                (FileKey::new(1, ino), entry)
            })
            .collect()
    }

    /// A kernel before Linux 5.6: the batch command is unknown.
    struct WithoutBatches<'a> {
        map: KernelHashMap<'a>,
        batch_calls: AtomicUsize,
    }

    impl MapWrites<FileKey, BanEntry> for WithoutBatches<'_> {
        fn update_batch(&self, _: &[FileKey], _: &[BanEntry]) -> Result<(), BatchRefused> {
            self.batch_calls.fetch_add(1, Ordering::Relaxed);
            Err(BatchRefused {
                written: 0,
                error: io::Error::from_raw_os_error(libc::EINVAL),
            })
        }

        fn update(&self, key: &FileKey, value: &BanEntry) -> io::Result<()> {
            self.map.update(key, value)
        }

        fn remove(&self, key: &FileKey) -> io::Result<()> {
            MapWrites::<FileKey, BanEntry>::remove(&self.map, key)
        }
    }

    fn kernel_hash_map(fd: &OwnedFd) -> KernelHashMap<'_> {
        KernelHashMap { fd: fd.as_fd() }
    }

    #[test]
    fn batches_fill_change_and_empty_the_map() {
        let fd = kernel_map(40_000);
        let mut installed = SortedMap::default();
        // Enough for several threads, where the machine has several CPUs.
        let first = entries(0..30_000, 1);
        let stats = sync_map(&kernel_hash_map(&fd), &mut installed, &first).unwrap();
        assert_eq!(stats.added, 30_000);
        assert_eq!(contents(&fd), first);

        let mut second = entries(25_000..35_000, 1);
        second.insert(FileKey::new(1, 27_000), BanEntry::default());
        let stats = sync_map(&kernel_hash_map(&fd), &mut installed, &second).unwrap();
        assert_eq!(
            stats,
            ApplyStats {
                added: 5_000,
                changed: 1,
                removed: 25_000
            }
        );
        assert_eq!(contents(&fd), second);
        assert_eq!(installed, second);

        sync_map(&kernel_hash_map(&fd), &mut installed, &SortedMap::default()).unwrap();
        assert!(contents(&fd).is_empty());
    }

    #[test]
    fn without_batches_entries_go_in_one_by_one() {
        let fd = kernel_map(20_000);
        let map = WithoutBatches {
            map: kernel_hash_map(&fd),
            batch_calls: AtomicUsize::new(0),
        };
        let mut installed = SortedMap::default();
        // Few enough for one thread.
        let wanted = entries(0..10_000, 1);
        let stats = sync_map(&map, &mut installed, &wanted).unwrap();
        assert_eq!(stats.added, 10_000);
        assert_eq!(contents(&fd), wanted);
        assert_eq!(
            map.batch_calls.load(Ordering::Relaxed),
            1,
            "batches are not tried again"
        );
    }

    #[test]
    fn an_entry_the_kernel_refuses_undoes_every_change() {
        let fd = kernel_map(BATCH_ENTRIES as u32 + 10);
        let mut installed = SortedMap::default();
        let before = entries(0..5, 1);
        sync_map(&kernel_hash_map(&fd), &mut installed, &before).unwrap();

        // Changes the first five, then fills the map and overflows it in the second batch.
        let too_many = entries(0..BATCH_ENTRIES as u64 + 20, 2);
        let error = sync_map(&kernel_hash_map(&fd), &mut installed, &too_many).unwrap_err();
        assert!(
            format!("{error:#}").contains(&format!(
                "adding entry {} of {}",
                BATCH_ENTRIES + 11,
                too_many.len()
            )),
            "{error:#}"
        );
        assert_eq!(contents(&fd), before);
        assert_eq!(installed, before);
    }

    #[test]
    fn an_entry_refused_while_threads_fill_the_map_undoes_every_change() {
        let fd = kernel_map(20_000);
        let mut installed = SortedMap::default();
        let before = entries(0..5, 1);
        sync_map(&kernel_hash_map(&fd), &mut installed, &before).unwrap();

        let too_many = entries(0..40_000, 2);
        let error = sync_map(&kernel_hash_map(&fd), &mut installed, &too_many).unwrap_err();
        assert!(
            format!("{error:#}").contains("the previous policy stays in force"),
            "{error:#}"
        );
        assert_eq!(contents(&fd), before);
        assert_eq!(installed, before);
    }
}
