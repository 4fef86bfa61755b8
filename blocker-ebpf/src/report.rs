//! What the programs tell userspace: events through the ring buffer, and the verdict they hand
//! the kernel.

use aya_ebpf::bindings::file;
use aya_ebpf::helpers::{
    bpf_d_path, bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
    bpf_ktime_get_boot_ns,
};
use blocker_common::{
    counter, heartbeat, record_limit, Action, Backend, BanEntry, ContentHash, FileKey, KernelEvent,
    Operation, RecordKey, RecordWindow, FILENAME_LEN, UNKNOWN_CONTENT_HASH, UNTRUSTED_PATH_RULE_ID,
};

use crate::{
    kernel_types::{trusted_file_path, Bprm, Task},
    maps::{increment, EVENTS, HEARTBEAT, RECENT_RECORDS},
};

const EPERM: i32 = 1;

/// What an LSM program returns to let the operation go on.
pub const ALLOW: i32 = 0;
/// What an LSM program returns to refuse the operation. The kernel takes only 0 and negative
/// errnos from BPF LSM programs (newer kernels verify it), so no program returns anything else.
pub const REFUSE: i32 = -EPERM;

/// The LSM verdict for `action`: only a deny refuses.
pub fn lsm_verdict(action: u32) -> i32 {
    if action == Action::Deny.wire() {
        REFUSE
    } else {
        ALLOW
    }
}

/// A file about to run that a rule or setting names: its identity, the entry that names it and,
/// for an untrusted path, the inode that made it so.
pub struct Ban {
    pub key: FileKey,
    pub entry: BanEntry,
    pub offender: Offender,
}

/// The inode that made a path untrusted (see `trusted_path`); [`Offender::NONE`] otherwise.
#[derive(Clone, Copy)]
pub struct Offender {
    pub owner: u32,
    pub mode: u32,
    /// How far above the file it is (0: the file), or `trusted_path::WALK_UNFINISHED`.
    pub depth: u32,
}

impl Offender {
    pub const NONE: Offender = Offender {
        owner: 0,
        mode: 0,
        depth: 0,
    };
}

impl Ban {
    /// No ban: what a check that found none stands for where a whole value is needed.
    pub const NOTHING: Ban = Ban::by_rule(FileKey::new(0, 0), 0, Action::Allow.wire());

    /// A ban by a rule or a setting other than the trusted-path one.
    pub const fn new(key: FileKey, entry: BanEntry) -> Self {
        Ban {
            key,
            entry,
            offender: Offender::NONE,
        }
    }

    /// A ban of `key` with `action` by `rule_id` (a rule, or a setting's pseudo-rule), which no
    /// map entry holds: no generation to compare.
    pub const fn by_rule(key: FileKey, rule_id: u32, action: u32) -> Self {
        Ban::new(
            key,
            BanEntry {
                rule_id,
                action,
                generation: 0,
                flags: 0,
            },
        )
    }

    pub fn denies(&self) -> bool {
        self.entry.action == Action::Deny.wire()
    }

    /// Whether a rule or setting names the file (deny or audit).
    pub fn names_a_rule(&self) -> bool {
        self.entry.action != Action::Allow.wire()
    }

    /// A refusal no rule decides (tamper protection): `key` is what it protects.
    pub fn protection(key: FileKey) -> Self {
        Ban::by_rule(key, 0, Action::Deny.wire())
    }
}

/// What happened, for [`report`].
pub struct Occurrence {
    pub backend: Backend,
    pub operation: Operation,
    /// The operation's detail (see `KernelEvent::detail`).
    pub detail: u32,
    /// The exec, for its path; `None` for mappings and tamper attempts.
    pub exec: Option<Bprm>,
    /// The mapped file, for its path, as the sleepable mapping check's hook passed it (the
    /// kernel resolves the path only of a pointer the verifier vouches for, and only in sleepable
    /// hooks); null otherwise.
    pub mapped_file: *mut file,
}

/// Sends an event about `ban`, unless the record limiter suppresses it; counts it as lost if the
/// ring buffer is full (the verdict stands regardless).
// Inlined: the verifier then sees which fields of `occurrence` are set at each call.
#[inline(always)]
pub fn report(ban: &Ban, occurrence: &Occurrence) {
    send(ban, occurrence, |slot| *slot = UNKNOWN_CONTENT_HASH);
}

/// [`report`] of a decision for which a content check may have computed the file's `sha256`
/// ([`UNKNOWN_CONTENT_HASH`] if it did not). The digest stays in the caller's one buffer rather
/// than in every [`Ban`]: the sleepable mapping check has no stack to spare for copies of it.
#[inline(always)]
pub fn report_hashed(ban: &Ban, occurrence: &Occurrence, sha256: &ContentHash) {
    send(ban, occurrence, |slot| *slot = *sha256);
}

#[inline(always)]
fn send(ban: &Ban, occurrence: &Occurrence, fill_sha256: impl FnOnce(&mut ContentHash)) {
    let uid_gid = bpf_get_current_uid_gid();
    let limited = RecordKey {
        file: ban.key,
        uid: uid_gid as u32,
        operation: occurrence.operation.wire(),
    };
    let suppressed = suppressed_before(&limited);
    if suppressed == SUPPRESS {
        increment(counter::RECORDS_SUPPRESSED);
        return;
    }
    let Some(mut slot) = EVENTS.reserve::<KernelEvent>(0) else {
        increment(counter::EVENTS_LOST);
        return;
    };
    let event = slot.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    let parent = Task::current()
        .and_then(Task::real_parent)
        .and_then(Task::tgid);
    // SAFETY: reads the clock.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: `event` points at a reserved, exclusively owned ring buffer slot of the right size.
    unsafe {
        (*event).boot_time_ns = now;
        (*event).ino = ban.key.ino;
        (*event).tid = pid_tgid as u32;
        (*event).tgid = (pid_tgid >> 32) as u32;
        (*event).ppid = parent.unwrap_or(0);
        (*event).uid = uid_gid as u32;
        (*event).gid = (uid_gid >> 32) as u32;
        (*event).dev = ban.key.dev;
        (*event).rule_id = ban.entry.rule_id;
        (*event).action = ban.entry.action;
        (*event).backend = occurrence.backend.wire();
        (*event).operation = occurrence.operation.wire();
        (*event).detail = if ban.entry.rule_id == UNTRUSTED_PATH_RULE_ID {
            ban.offender.depth
        } else {
            occurrence.detail
        };
        (*event).offender_owner = ban.offender.owner;
        (*event).offender_mode = ban.offender.mode;
        (*event).suppressed = suppressed;
        (*event).daemon_silent_secs = daemon_silent_secs(now);
        fill_sha256(&mut (*event).sha256);
        (*event).comm = bpf_get_current_comm().unwrap_or_default();
        (*event).filename_len = match occurrence.exec {
            Some(bprm) => bprm.filename_into(&mut (*event).filename),
            None if !occurrence.mapped_file.is_null() => {
                mapped_path_into(occurrence.mapped_file, &mut (*event).filename)
            }
            None => 0,
        };
    }
    slot.submit(0);
}

/// Writes the path of `file` in the caller's view (its root, its mounts) into `out`; returns
/// its length without the NUL, 0 if it could not be had (longer than `out`).
///
/// # Safety
/// `file` must be a `struct file` pointer the verifier vouches for, in a sleepable hook.
#[inline(always)]
unsafe fn mapped_path_into(file: *mut file, out: &mut [u8; FILENAME_LEN]) -> u32 {
    let written = bpf_d_path(
        trusted_file_path(file),
        out.as_mut_ptr().cast(),
        FILENAME_LEN as u32,
    );
    // The length counts the NUL the helper wrote.
    if written > 0 {
        written as u32 - 1
    } else {
        0
    }
}

/// Seconds since the daemon last beat, if it went silent without stopping; 0 otherwise.
#[inline(always)]
fn daemon_silent_secs(now: u64) -> u32 {
    let Some(beat) = HEARTBEAT.get(0) else {
        return 0;
    };
    let silent_ns = now.saturating_sub(beat.last_beat_ns);
    if beat.last_beat_ns == 0 || beat.stopped != 0 || silent_ns < heartbeat::SILENT_AFTER_NS {
        return 0;
    }
    (silent_ns / 1_000_000_000) as u32
}

/// What [`suppressed_before`] returns for a record to suppress. A plain number rather than an
/// `Option`, which the verifier may see half-set after the branches merge.
const SUPPRESS: u32 = u32::MAX;

/// Admits a record of `key` to the ring buffer: at most `record_limit::BURST` per window.
/// Returns how many records of `key` the previous window suppressed (for the first record of a
/// window), 0 for a later one, or [`SUPPRESS`]. Updates race between CPUs; a lost update only
/// lets one record more through or miscounts one suppressed.
#[inline(always)]
fn suppressed_before(key: &RecordKey) -> u32 {
    // SAFETY: reads the clock.
    let now = unsafe { bpf_ktime_get_boot_ns() };
    let fresh = RecordWindow {
        start_ns: now,
        sent: 1,
        suppressed: 0,
    };
    let Some(window) = RECENT_RECORDS.get_ptr_mut(key) else {
        // Best effort: an LRU map makes room by forgetting the least recent.
        let _ = RECENT_RECORDS.insert(key, &fresh, 0);
        return 0;
    };
    // SAFETY: the map's value, which this program may write; concurrent writers are tolerated.
    let window = unsafe { &mut *window };
    if now.wrapping_sub(window.start_ns) >= record_limit::WINDOW_NS {
        let suppressed = window.suppressed;
        *window = fresh;
        return suppressed;
    }
    if window.sent < record_limit::BURST {
        window.sent += 1;
        return 0;
    }
    window.suppressed = window.suppressed.saturating_add(1);
    SUPPRESS
}
