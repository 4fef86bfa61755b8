//! What the programs tell userspace: events through the ring buffer, and the verdict they hand
//! the kernel.

use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid, bpf_ktime_get_boot_ns,
};
use blocker_common::{action, counter, BanEntry, ExecEvent, FileKey};

use crate::{
    kernel_types::{Bprm, Task},
    maps::{increment, EVENTS},
};

const EPERM: i32 = 1;

/// What an LSM program returns to let the operation go on.
pub const ALLOW: i32 = 0;
/// What an LSM program returns to refuse the operation. The kernel takes only 0 and negative
/// errnos from BPF LSM programs (newer kernels verify it), so no program returns anything else.
pub const REFUSE: i32 = -EPERM;

/// The LSM verdict for `action`: only a deny refuses.
pub fn lsm_verdict(action: u32) -> i32 {
    if action == action::DENY {
        REFUSE
    } else {
        ALLOW
    }
}

/// A file about to run that a rule or setting names: its identity and the entry that names it.
pub struct Ban {
    pub key: FileKey,
    pub entry: BanEntry,
}

impl Ban {
    /// No ban: what a check that found none stands for where a whole value is needed.
    pub const NOTHING: Ban = Ban {
        key: FileKey::new(0, 0),
        entry: BanEntry {
            rule_id: 0,
            action: action::ALLOW,
            generation: 0,
            flags: 0,
        },
    };

    pub fn denies(&self) -> bool {
        self.entry.action == action::DENY
    }

    /// Whether a rule or setting names the file (deny or audit).
    pub fn names_a_rule(&self) -> bool {
        self.entry.action != action::ALLOW
    }

    /// A refusal no rule decides (tamper protection): `key` is what it protects.
    pub fn protection(key: FileKey) -> Self {
        Ban {
            key,
            entry: BanEntry {
                rule_id: 0,
                action: action::DENY,
                generation: 0,
                flags: 0,
            },
        }
    }
}

/// What happened, for [`report`].
pub struct Occurrence {
    /// One of `blocker_common::backend`.
    pub backend: u32,
    /// One of `blocker_common::operation`.
    pub operation: u32,
    /// The operation's detail (see `ExecEvent::detail`).
    pub detail: u32,
    /// The exec, for its path; `None` for mappings and tamper attempts.
    pub exec: Option<Bprm>,
}

/// Sends an event about `ban`; counts it as lost if the ring buffer is full (the verdict stands
/// regardless).
// Inlined: the verifier then sees which fields of `occurrence` are set at each call.
#[inline(always)]
pub fn report(ban: &Ban, occurrence: &Occurrence) {
    let Some(mut slot) = EVENTS.reserve::<ExecEvent>(0) else {
        increment(counter::EVENTS_LOST);
        return;
    };
    let event = slot.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    let uid_gid = bpf_get_current_uid_gid();
    let parent = Task::current()
        .and_then(Task::real_parent)
        .and_then(Task::tgid);
    // SAFETY: `event` points at a reserved, exclusively owned ring buffer slot of the right size.
    unsafe {
        (*event).boot_time_ns = bpf_ktime_get_boot_ns();
        (*event).ino = ban.key.ino;
        (*event).tid = pid_tgid as u32;
        (*event).tgid = (pid_tgid >> 32) as u32;
        (*event).ppid = parent.unwrap_or(0);
        (*event).uid = uid_gid as u32;
        (*event).gid = (uid_gid >> 32) as u32;
        (*event).dev = ban.key.dev;
        (*event).rule_id = ban.entry.rule_id;
        (*event).action = ban.entry.action;
        (*event).backend = occurrence.backend;
        (*event).operation = occurrence.operation;
        (*event).detail = occurrence.detail;
        (*event).comm = bpf_get_current_comm().unwrap_or_default();
        (*event).filename_len = match occurrence.exec {
            Some(bprm) => bprm.filename_into(&mut (*event).filename),
            None => 0,
        };
    }
    slot.submit(0);
}
