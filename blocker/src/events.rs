//! Kernel events → records for people and machines: decoding the ring buffer's bytes, turning
//! kernel clocks and numbers into readable fields, and the JSON lines schema.

use std::{
    borrow::Cow,
    collections::BTreeMap,
    fmt,
    path::Path,
    time::{Duration, SystemTime},
};

use anyhow::{ensure, Result};
use blocker_common::{
    trusted_path, Action, Backend, BpfObject, FileChange, Heartbeat, KernelEvent, Operation,
    PriorityChange, FILENAME_LEN, UNKNOWN_CONTENT_HASH, UNTRUSTED_PATH_RULE_ID,
};
use serde::Serialize;

use crate::{
    escape::{escaped, escaped_bytes, lossless_bytes, Lossless},
    identity::device_text,
    kernel::coverage::Features,
    policy::Telling,
    resolve::RuleInfo,
    scan::to_hex,
};

/// Copies an [`KernelEvent`] out of a ring buffer record.
pub fn decode(bytes: &[u8]) -> Result<KernelEvent> {
    ensure!(
        bytes.len() >= std::mem::size_of::<KernelEvent>(),
        "ring buffer record of {} bytes is shorter than an exec event ({} bytes)",
        bytes.len(),
        std::mem::size_of::<KernelEvent>()
    );
    // SAFETY: long enough, and every bit pattern is a valid KernelEvent (plain integers and bytes).
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<KernelEvent>()) })
}

/// The bytes of `event` as the kernel writes them into the ring buffer.
pub fn encode(event: &KernelEvent) -> &[u8] {
    // SAFETY: a plain repr(C) struct of integers and byte arrays without padding, read for
    // exactly its size while borrowed.
    unsafe {
        std::slice::from_raw_parts(
            std::ptr::from_ref(event).cast::<u8>(),
            std::mem::size_of::<KernelEvent>(),
        )
    }
}

/// One line of the JSON event stream; `kind` tells the variants apart.
#[derive(Debug, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Record {
    /// Enforcement began.
    Started {
        time: String,
        backend: &'static str,
        backend_reason: String,
        policies: Vec<String>,
        rules: usize,
        entries: usize,
        /// Where the programs are pinned (they outlive the daemon), or null.
        pinned: Option<String>,
        /// Whether the programs were adopted from an earlier daemon's pins rather than loaded.
        adopted: bool,
        /// Why the pins found were not adopted (they were not this build's programs as it
        /// loads them, or were incomplete) and new programs were loaded in their place; null
        /// when none were found or they were adopted.
        adoption_refused: Option<String>,
        /// Whether tamper protection is on.
        protected: bool,
        /// What the attached programs cover, and what is missing and why.
        features: Features,
    },
    /// An attempt to run code from a banned file: an exec, or (LSM backend) an executable
    /// mapping of it.
    Exec(ExecRecord),
    /// A tamper attempt the kernel refused (`blocker run --protect`).
    Tamper(TamperRecord),
    /// The ring buffer was full: `lost` exec events were dropped since the last report. The
    /// execs were still enforced.
    EventsLost { time: String, lost: u64, total: u64 },
    /// A new policy is in force. Everything it bans was added to the kernel before anything it
    /// no longer bans was removed.
    Reloaded {
        time: String,
        policies: Vec<String>,
        rules: usize,
        entries: usize,
    },
    /// A reload was refused (a bad policy file, a kernel error): the previous policy stays in
    /// force, unchanged.
    ReloadFailed { time: String, error: String },
    /// The daemon changed its policy directory as a root process asked over the control socket
    /// (`blocker policy`); a `reloaded` or `reload_failed` record follows.
    PolicyChanged {
        time: String,
        /// Who asked: its process id (null if the kernel did not say) and user id.
        pid: Option<i32>,
        uid: u32,
        /// Policy files written, and removed, by name.
        installed: Vec<String>,
        removed: Vec<String>,
    },
    /// A sink fell behind or failed and has caught up: `dropped` records never reached it since
    /// its last report. Enforcement was not affected.
    RecordsDropped {
        time: String,
        sink: &'static str,
        dropped: u64,
        total: u64,
    },
    /// The daemon before this one went silent without stopping (killed, frozen or starved
    /// without a signal: its heartbeat stopped); its pinned programs kept enforcing meanwhile,
    /// and events they raised say how long nobody had been answering.
    DaemonLost {
        time: String,
        /// Process id of that daemon.
        pid: u32,
        /// When it last beat.
        last_heard: String,
        /// How long before this daemon's start.
        silent_seconds: u64,
    },
    /// `blocker unload` removed the pins under `pin_dir`: their programs stop enforcing, once
    /// no running daemon holds them.
    Unloaded {
        time: String,
        pin_dir: String,
        /// Maps, links and directories removed.
        pins: usize,
        /// Who unloaded them.
        pid: u32,
        uid: u32,
        /// The daemon that pinned them went silent without stopping (a kill, a freeze): no
        /// next daemon will report it, so this record does.
        #[serde(skip_serializing_if = "Option::is_none")]
        daemon_lost: Option<LostDaemon>,
    },
    /// The daemon stopped. Its programs are detached, unless they are `pinned`: then they keep
    /// enforcing the last policy until `blocker unload` or the next daemon replaces them.
    Stopped {
        time: String,
        events: u64,
        events_lost: u64,
        pinned: Option<String>,
        /// Per sink, the records it never got.
        records_dropped: BTreeMap<&'static str, u64>,
    },
}

/// A daemon that went silent without stopping, as its heartbeat tells.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct LostDaemon {
    /// Its process id.
    pub pid: u32,
    /// When it last beat.
    pub last_heard: String,
    /// How long ago.
    pub silent_seconds: u64,
}

impl LostDaemon {
    /// The daemon that left `heartbeat`, if it beat and never stopped the documented way.
    pub fn of(heartbeat: &Heartbeat) -> Option<Self> {
        if heartbeat.last_beat_ns == 0 || heartbeat.stopped != 0 {
            return None;
        }
        let clock = BootClock;
        Some(Self {
            pid: heartbeat.daemon_tgid,
            last_heard: rfc3339(clock.wall_time(heartbeat.last_beat_ns)),
            silent_seconds: clock.now_ns().saturating_sub(heartbeat.last_beat_ns) / 1_000_000_000,
        })
    }
}

impl Record {
    /// One line for people: the journal's MESSAGE.
    pub fn summary(&self) -> String {
        match self {
            Record::Started {
                backend,
                rules,
                entries,
                adoption_refused,
                ..
            } => {
                let enforcing =
                    format!("enforcing {rules} rules ({entries} files) with the {backend} backend");
                match adoption_refused {
                    Some(reason) => format!(
                        "{enforcing}; the pinned programs found were not adopted but replaced: \
                         {reason}"
                    ),
                    None => enforcing,
                }
            }
            Record::Exec(exec) => exec.summary().to_string(),
            Record::Tamper(tamper) => tamper.summary(),
            Record::EventsLost { lost, total, .. } => format!(
                "{lost} exec events lost because the ring buffer was full ({total} in total); \
                 the execs were still enforced"
            ),
            Record::Reloaded { rules, entries, .. } => {
                format!("policy reloaded: {rules} rules, {entries} files banned")
            }
            Record::ReloadFailed { error, .. } => {
                format!("reload refused, the previous policy stays in force: {error}")
            }
            Record::PolicyChanged {
                pid,
                uid,
                installed,
                removed,
                ..
            } => {
                let named = |what: &str, names: &[String]| {
                    (!names.is_empty()).then(|| {
                        let names: Vec<String> =
                            names.iter().map(|name| escaped(name).to_string()).collect();
                        format!("{what} {}", names.join(", "))
                    })
                };
                let changes: Vec<String> =
                    [named("installed", installed), named("removed", removed)]
                        .into_iter()
                        .flatten()
                        .collect();
                let asker = pid.map_or_else(
                    || format!("uid {uid}"),
                    |pid| format!("pid {pid} (uid {uid})"),
                );
                format!("policy changed as {asker} asked: {}", changes.join("; "))
            }
            Record::RecordsDropped {
                sink,
                dropped,
                total,
                ..
            } => format!(
                "{dropped} records never reached the {sink} sink ({total} in total); enforcement \
                 was not affected"
            ),
            Record::DaemonLost {
                pid,
                last_heard,
                silent_seconds,
                ..
            } => format!(
                "the daemon before this one (pid {pid}) went silent at {last_heard}, \
                 {silent_seconds} s ago, without stopping: it was killed, frozen or starved; its \
                 pinned programs kept enforcing"
            ),
            Record::Unloaded {
                pin_dir,
                pins,
                pid,
                uid,
                daemon_lost,
                ..
            } => {
                let unloaded = format!(
                    "{pins} pins under {} removed by pid {pid} (uid {uid}): their programs stop \
                     enforcing",
                    escaped(pin_dir)
                );
                match daemon_lost {
                    Some(lost) => format!(
                        "{unloaded}; the daemon that pinned them (pid {}) went silent at {}, {} s \
                         before, without stopping",
                        lost.pid, lost.last_heard, lost.silent_seconds
                    ),
                    None => unloaded,
                }
            }
            Record::Stopped {
                events,
                events_lost,
                pinned,
                ..
            } => {
                let enforcement = match pinned {
                    Some(dir) => format!("the programs pinned at {dir} keep enforcing"),
                    None => "programs detached, execs are no longer checked".to_owned(),
                };
                format!("{enforcement} ({events} events delivered, {events_lost} lost)")
            }
        }
    }
}

/// The process an event is about, as the kernel saw it.
#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct Caller {
    /// Process id (the kernel's tgid).
    pub pid: u32,
    /// Thread that made the call (the kernel's pid).
    pub tid: u32,
    pub ppid: u32,
    pub uid: u32,
    pub gid: u32,
    /// The process's `comm`, which it may set to anything: see [`crate::escape`] for `comm_hex`.
    pub comm: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm_hex: Option<String>,
}

impl Caller {
    fn of(event: &KernelEvent) -> Self {
        let comm = Lossless::new(nul_terminated(&event.comm));
        Self {
            pid: event.tgid,
            tid: event.tid,
            ppid: event.ppid,
            uid: event.uid,
            gid: event.gid,
            comm: comm.text,
            comm_hex: comm.hex,
        }
    }
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct ExecRecord {
    pub time: String,
    /// What the rule asked for: `deny` or `audit`.
    pub action: &'static str,
    /// What the kernel did: `eperm` (exec refused), `sigkill` (process killed before it ran),
    /// or `none` (audit).
    pub enforcement: Enforcement,
    pub backend: &'static str,
    /// `exec`, `mmap` (mapped executable: the dynamic loader, `dlopen`) or `mprotect` (made
    /// executable after mapping).
    pub operation: &'static str,
    pub rule: String,
    pub policy: String,
    pub reason: Option<String>,
    /// The rule's page for the people it stops, if it has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(flatten)]
    pub caller: Caller,
    /// For an exec, the path given to exec, as the caller spelled it; for a mapping, the path
    /// the kernel gave for the mapped file (with content checks: as the caller sees it, with
    /// ` (deleted)` after a removed file's), else a path of the file as blocker resolved it
    /// (empty if neither is known).
    /// Exactly as the kernel gave it: see [`crate::escape`] for `path_hex`.
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
    pub path_truncated: bool,
    /// `major:minor` of the file's filesystem.
    pub device: String,
    pub inode: u64,
    /// The file's SHA-256 (hex) where known: as the kernel's content check computed it for this
    /// decision, else (filled in by the daemon) the content rule's hash a scan found the file by.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
    /// For an exec or mapping of a file on an untrusted path, what made the path untrusted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub untrusted_path: Option<UntrustedPath>,
    #[serde(flatten)]
    pub circumstances: Circumstances,
    /// How the person refused is told: not part of the record, which is the security team's.
    #[serde(skip)]
    pub telling: Telling,
}

/// The inode that made a path untrusted (rule `untrusted_path`): owned by someone other than
/// root, or writable by group or others. Every field is absent when the kernel's walk up the
/// path did not finish (deeper than it goes, or a step it could not read), which counts as
/// untrusted too.
#[derive(Clone, Debug, Default, Serialize, PartialEq, Eq)]
pub struct UntrustedPath {
    /// How far above the file it is: 0 for the file itself, 1 for its directory, and so on
    /// (a mount point counts as a step of its own, the directory it covers as another).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub levels_above: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<u32>,
    /// Its permission bits in octal (`1777` for `/tmp`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
}

impl UntrustedPath {
    fn of(event: &KernelEvent) -> Option<Self> {
        if event.rule_id != UNTRUSTED_PATH_RULE_ID {
            return None;
        }
        if event.detail == trusted_path::WALK_UNFINISHED {
            return Some(Self::default());
        }
        Some(Self {
            levels_above: Some(event.detail),
            owner: Some(event.offender_owner),
            mode: Some(permission_bits(event.offender_mode)),
        })
    }
}

/// `mode`'s permission bits (setuid, setgid and sticky included) as `ls -l`'s octal: `0755`.
pub fn permission_bits(mode: u32) -> String {
    format!("{:04o}", mode & 0o7777)
}

impl fmt::Display for UntrustedPath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.levels_above, self.owner, &self.mode) {
            (Some(levels), Some(owner), Some(mode)) => {
                let which = match levels {
                    0 => "the file".to_owned(),
                    1 => "its directory".to_owned(),
                    levels => format!("the directory {levels} levels above it"),
                };
                write!(
                    f,
                    " (untrusted path: {which} is owned by uid {owner} with mode {mode})"
                )
            }
            _ => f.write_str(" (untrusted path: its directories could not all be checked)"),
        }
    }
}

/// How a refusal was enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Enforcement {
    /// The LSM backend refused it: the caller got EPERM.
    Eperm,
    /// The kill backend killed the process before the new image ran.
    Sigkill,
    /// Nothing was refused: an audit.
    None,
}

impl Enforcement {
    fn of(action: Option<Action>, backend: Option<Backend>) -> Self {
        match (action, backend) {
            (Some(Action::Deny), Some(Backend::Lsm)) => Self::Eperm,
            (Some(Action::Deny), Some(Backend::Kill)) => Self::Sigkill,
            _ => Self::None,
        }
    }
}

impl ExecRecord {
    /// `known_path` is where blocker found the banned file, for events without an exec path.
    pub fn new(
        event: &KernelEvent,
        rule: Option<&RuleInfo>,
        known_path: Option<&Path>,
        clock: &BootClock,
    ) -> Self {
        let filename_len = (event.filename_len as usize).min(FILENAME_LEN);
        let operation = Operation::from_wire(event.operation);
        // A mapping's path is the kernel's where it could tell it (the content check of
        // mappings asks for it), else where blocker found the file.
        let path = match known_path {
            Some(known) if operation != Some(Operation::Exec) && filename_len == 0 => {
                Lossless::of(known)
            }
            _ => Lossless::new(nul_terminated(&event.filename[..filename_len])),
        };
        let action = Action::from_wire(event.action);
        Self {
            time: rfc3339(clock.wall_time(event.boot_time_ns)),
            action: action
                .filter(|&action| action != Action::Allow)
                .map_or(UNKNOWN, Action::name),
            enforcement: Enforcement::of(action, Backend::from_wire(event.backend)),
            backend: Backend::from_wire(event.backend).map_or(UNKNOWN, Backend::name),
            rule: rule.map_or_else(|| format!("#{}", event.rule_id), |rule| rule.id.clone()),
            policy: rule.map(|rule| rule.policy.clone()).unwrap_or_default(),
            reason: rule.and_then(|rule| rule.reason.clone()),
            url: rule.and_then(|rule| rule.url.clone()),
            caller: Caller::of(event),
            operation: operation
                .filter(|&operation| !is_tamper(operation))
                .map_or(UNKNOWN, Operation::name),
            path: path.text,
            path_hex: path.hex,
            // The kernel copies at most FILENAME_LEN - 1 bytes and a NUL.
            path_truncated: filename_len >= FILENAME_LEN - 1,
            device: device_text(event.dev),
            inode: event.ino,
            sha256: (event.sha256 != UNKNOWN_CONTENT_HASH).then(|| to_hex(&event.sha256)),
            untrusted_path: UntrustedPath::of(event),
            circumstances: Circumstances::of(event),
            telling: rule.map(|rule| rule.telling.clone()).unwrap_or_default(),
        }
    }

    /// The line for people reading the daemon's log, written without an intermediate string:
    /// the daemon logs one for every event.
    pub fn summary(&self) -> ExecSummary<'_> {
        ExecSummary(self)
    }

    /// The exact bytes of `path`.
    pub fn path_bytes(&self) -> Cow<'_, [u8]> {
        lossless_bytes(&self.path, self.path_hex.as_deref())
    }
}

/// [`ExecRecord::summary`].
pub struct ExecSummary<'a>(&'a ExecRecord);

impl fmt::Display for ExecSummary<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let record = self.0;
        let verdict = match record.enforcement {
            Enforcement::Eperm => "denied",
            Enforcement::Sigkill => "killed",
            Enforcement::None => "audited",
        };
        let what = match record.operation {
            "exec" => "exec",
            _ => "executable mapping",
        };
        write!(
            f,
            "{verdict} {what} of {} by pid {} ({}, uid {}) under rule {}",
            escaped_bytes(&record.path_bytes()),
            record.caller.pid,
            escaped_bytes(&record.caller.comm_bytes()),
            record.caller.uid,
            record.rule,
        )?;
        if let Some(reason) = &record.reason {
            write!(f, ": {}", escaped(reason))?;
        }
        if let Some(untrusted) = &record.untrusted_path {
            write!(f, "{untrusted}")?;
        }
        write!(f, "{}", record.circumstances)
    }
}

/// Whether `event` reports a refused tamper attempt rather than a banned file.
pub fn is_tamper_attempt(event: &KernelEvent) -> bool {
    Operation::from_wire(event.operation).is_some_and(is_tamper)
}

fn is_tamper(operation: Operation) -> bool {
    !matches!(
        operation,
        Operation::Exec | Operation::Mmap | Operation::Mprotect
    )
}

#[derive(Debug, Serialize, PartialEq, Eq)]
pub struct TamperRecord {
    pub time: String,
    /// `signal` (to the daemon), `owner_signal` (to the daemon as a descriptor's owner),
    /// `resource_limit` (a new limit for the daemon), `ptrace` (of the daemon or of a blocker
    /// command), `bpf_object` (a descriptor of blocker's maps, programs or links), `exe_file`
    /// (a process giving itself another executable file), `priority` (the daemon's nice value,
    /// I/O priority, scheduling policy or CPUs), `proc_write` (one of the daemon's `/proc`
    /// files) or `file_change` (the policy directory, the pins, the blocker binary, the
    /// daemon's cgroups).
    pub attempt: &'static str,
    /// What exactly: the signal, the ptrace mode, the BPF object, the kind of change.
    pub detail: String,
    /// The protected file or directory aimed at, where blocker knows it (empty otherwise).
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path_hex: Option<String>,
    /// `major:minor` and inode of that file (zero for other attempts).
    pub device: String,
    pub inode: u64,
    #[serde(flatten)]
    pub circumstances: Circumstances,
    #[serde(flatten)]
    pub caller: Caller,
}

impl TamperRecord {
    pub fn new(event: &KernelEvent, known_path: Option<&Path>, clock: &BootClock) -> Self {
        let operation = Operation::from_wire(event.operation).unwrap_or(Operation::FileChange);
        let detail = match operation {
            Operation::Signal => signal_name(event.detail),
            Operation::OwnerSignal => match event.detail {
                0 => signal_name(libc::SIGIO as u32),
                signal => signal_name(signal),
            },
            Operation::ResourceLimit => resource_name(event.detail),
            Operation::Ptrace => format!("access mode {:#x}", event.detail),
            Operation::Priority => PriorityChange::from_wire(event.detail)
                .map_or("scheduling policy or CPUs", PriorityChange::name)
                .to_owned(),
            Operation::ProcWrite => FileChange::OpenForWriting.name().to_owned(),
            Operation::ExeFileChange => match event.detail as libc::c_int {
                libc::PR_SET_MM_EXE_FILE => "PR_SET_MM_EXE_FILE".to_owned(),
                libc::PR_SET_MM_MAP => "PR_SET_MM_MAP".to_owned(),
                other => format!("PR_SET_MM operation {other}"),
            },
            Operation::BpfObject => format!(
                "{} id {}",
                BpfObject::from_wire(event.detail).map_or("object", BpfObject::name),
                event.ino
            ),
            _ => FileChange::from_wire(event.detail)
                .map_or("change", FileChange::name)
                .to_owned(),
        };
        let attempt = operation.name();
        let is_file = operation == Operation::FileChange;
        let path = known_path.map(Lossless::of).unwrap_or_default();
        Self {
            time: rfc3339(clock.wall_time(event.boot_time_ns)),
            attempt,
            detail,
            path: path.text,
            path_hex: path.hex,
            device: if is_file {
                device_text(event.dev)
            } else {
                String::new()
            },
            inode: if is_file { event.ino } else { 0 },
            circumstances: Circumstances::of(event),
            caller: Caller::of(event),
        }
    }

    /// The line for people reading the daemon's log.
    pub fn summary(&self) -> String {
        let target = if self.path.is_empty() {
            String::new()
        } else {
            format!(
                " on {}",
                escaped_bytes(&lossless_bytes(&self.path, self.path_hex.as_deref()))
            )
        };
        format!(
            "refused tamper attempt: {} ({}){target} by pid {} ({}, uid {}){}",
            self.attempt,
            self.detail,
            self.caller.pid,
            escaped_bytes(&self.caller.comm_bytes()),
            self.caller.uid,
            self.circumstances
        )
    }
}

fn is_zero(count: &u32) -> bool {
    *count == 0
}

/// What the kernel noted about when it raised an event.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub struct Circumstances {
    /// Records of the same user, file and operation the kernel suppressed before this one
    /// (it sends at most `record_limit::BURST` every `record_limit::WINDOW_NS`); absent when 0.
    #[serde(skip_serializing_if = "is_zero")]
    pub suppressed_before: u32,
    /// Seconds the daemon had been silent (no heartbeat, not stopped) when the kernel raised
    /// this event: it was killed, frozen or starved meanwhile. Absent while it answered.
    #[serde(skip_serializing_if = "is_zero")]
    pub daemon_silent_seconds: u32,
}

impl Circumstances {
    fn of(event: &KernelEvent) -> Self {
        Self {
            suppressed_before: event.suppressed,
            daemon_silent_seconds: event.daemon_silent_secs,
        }
    }
}

/// The end of a log line: what the kernel noted, if anything.
impl fmt::Display for Circumstances {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.suppressed_before != 0 {
            write!(
                f,
                " ({} earlier repeats by this user were enforced without a record)",
                self.suppressed_before
            )?;
        }
        if self.daemon_silent_seconds != 0 {
            write!(
                f,
                " (raised while the daemon had been silent for {} s)",
                self.daemon_silent_seconds
            )?;
        }
        Ok(())
    }
}

fn resource_name(resource: u32) -> String {
    let name = match resource as libc::__rlimit_resource_t {
        libc::RLIMIT_CPU => "RLIMIT_CPU",
        libc::RLIMIT_FSIZE => "RLIMIT_FSIZE",
        libc::RLIMIT_DATA => "RLIMIT_DATA",
        libc::RLIMIT_STACK => "RLIMIT_STACK",
        libc::RLIMIT_CORE => "RLIMIT_CORE",
        libc::RLIMIT_RSS => "RLIMIT_RSS",
        libc::RLIMIT_NPROC => "RLIMIT_NPROC",
        libc::RLIMIT_NOFILE => "RLIMIT_NOFILE",
        libc::RLIMIT_MEMLOCK => "RLIMIT_MEMLOCK",
        libc::RLIMIT_AS => "RLIMIT_AS",
        _ => return format!("resource {resource}"),
    };
    format!("{name} ({resource})")
}

fn signal_name(signal: u32) -> String {
    let name = match signal as i32 {
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGABRT => "SIGABRT",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGTERM => "SIGTERM",
        libc::SIGSTOP => "SIGSTOP",
        libc::SIGTSTP => "SIGTSTP",
        libc::SIGCONT => "SIGCONT",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        libc::SIGIO => "SIGIO",
        libc::SIGURG => "SIGURG",
        _ => return format!("signal {signal}"),
    };
    format!("{name} ({signal})")
}

/// What records name a wire value this build does not know.
const UNKNOWN: &str = "unknown";

/// Converts `bpf_ktime_get_boot_ns()` readings to wall-clock time.
pub struct BootClock;

impl BootClock {
    /// Now, as `bpf_ktime_get_boot_ns()` reads it.
    pub fn now_ns(&self) -> u64 {
        clock_ns(libc::CLOCK_BOOTTIME)
    }

    pub fn wall_time(&self, boot_time_ns: u64) -> SystemTime {
        // Both clocks read now: their difference is the wall-clock time of boot.
        let now_wall = SystemTime::now();
        let now_boot = clock_ns(libc::CLOCK_BOOTTIME);
        let age = Duration::from_nanos(now_boot.saturating_sub(boot_time_ns));
        now_wall.checked_sub(age).unwrap_or(now_wall)
    }
}

fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut now = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `now` is a valid timespec to write into.
    unsafe { libc::clock_gettime(clock, &mut now) };
    now.tv_sec as u64 * 1_000_000_000 + now.tv_nsec as u64
}

pub fn rfc3339(time: SystemTime) -> String {
    humantime::format_rfc3339_nanos(time).to_string()
}

pub fn now_rfc3339() -> String {
    rfc3339(SystemTime::now())
}

fn nul_terminated(bytes: &[u8]) -> &[u8] {
    let end = bytes.iter().position(|&b| b == 0).unwrap_or(bytes.len());
    &bytes[..end]
}

impl Caller {
    /// The exact bytes of `comm`.
    fn comm_bytes(&self) -> Cow<'_, [u8]> {
        lossless_bytes(&self.comm, self.comm_hex.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use blocker_common::COMM_LEN;

    fn event() -> KernelEvent {
        let mut comm = [0; COMM_LEN];
        comm[..4].copy_from_slice(b"bash");
        let mut filename = [0; FILENAME_LEN];
        filename[..11].copy_from_slice(b"/opt/wechat");
        KernelEvent {
            boot_time_ns: 0,
            ino: 1234,
            tid: 41,
            tgid: 40,
            ppid: 1,
            uid: 1000,
            gid: 100,
            dev: (254 << 20) | 1,
            rule_id: 0,
            action: blocker_common::Action::Deny.wire(),
            backend: Backend::Lsm.wire(),
            operation: Operation::Exec.wire(),
            filename_len: 11,
            detail: 0,
            suppressed: 0,
            daemon_silent_secs: 0,
            sha256: UNKNOWN_CONTENT_HASH,
            offender_owner: 0,
            offender_mode: 0,
            comm,
            filename,
        }
    }

    #[test]
    fn untrusted_paths_say_which_inode_made_them_so() {
        let mut untrusted = event();
        untrusted.rule_id = UNTRUSTED_PATH_RULE_ID;
        untrusted.detail = 1;
        untrusted.offender_owner = 1000;
        untrusted.offender_mode = 0o40755;
        let record = ExecRecord::new(&untrusted, None, None, &BootClock);
        let json = serde_json::to_value(&record).unwrap();
        assert_eq!(
            json["untrusted_path"],
            serde_json::json!({"levels_above": 1, "owner": 1000, "mode": "0755"})
        );
        assert!(record
            .summary()
            .to_string()
            .contains("(untrusted path: its directory is owned by uid 1000 with mode 0755)"));
        untrusted.detail = trusted_path::WALK_UNFINISHED;
        let unfinished = ExecRecord::new(&untrusted, None, None, &BootClock);
        assert_eq!(unfinished.untrusted_path, Some(UntrustedPath::default()));
        let banned = ExecRecord::new(&event(), None, None, &BootClock);
        let json = serde_json::to_value(&banned).unwrap();
        assert!(json.get("untrusted_path").is_none(), "{json}");
    }

    #[test]
    fn decodes_ring_buffer_bytes() {
        let event = event();
        let bytes = encode(&event);
        let decoded = decode(bytes).unwrap();
        assert_eq!(decoded.tgid, 40);
        assert_eq!(decoded.ino, 1234);
        assert!(decode(&bytes[..bytes.len() - 1]).is_err());
    }

    #[test]
    fn records_carry_readable_fields() {
        let rule = RuleInfo {
            rule_id: 0,
            id: "wechat".to_owned(),
            policy: "ban".to_owned(),
            reason: Some("banned".to_owned()),
            url: None,
            telling: crate::policy::Telling::default(),
            action: crate::policy::Action::Deny,
        };
        let record = ExecRecord::new(&event(), Some(&rule), None, &BootClock);
        assert_eq!(record.path, "/opt/wechat");
        assert!(!record.path_truncated);
        assert_eq!(record.caller.comm, "bash");
        assert_eq!(record.device, "254:1");
        assert_eq!((record.caller.pid, record.caller.tid), (40, 41));
        assert_eq!(record.enforcement, Enforcement::Eperm);
        assert_eq!(record.rule, "wechat");
        assert_eq!(
            record.summary().to_string(),
            "denied exec of /opt/wechat by pid 40 (bash, uid 1000) under rule wechat: banned"
        );

        let json = serde_json::to_value(Record::Exec(record)).unwrap();
        assert_eq!(json["kind"], "exec");
        assert_eq!(json["inode"], 1234);
        assert_eq!(json["backend"], "lsm");
        assert!(json["time"].as_str().unwrap().ends_with('Z'));
        assert!(json.get("suppressed_before").is_none(), "absent when 0");
        assert!(
            json.get("sha256").is_none(),
            "absent when the kernel did not hash"
        );
    }

    #[test]
    fn records_carry_the_hash_the_kernel_computed() {
        let mut hashed = event();
        hashed.sha256 = [0xab; 32];
        hashed.sha256[31] = 0x01;
        let record = ExecRecord::new(&hashed, None, None, &BootClock);
        assert_eq!(
            record.sha256.as_deref(),
            Some(&*format!("{}01", "ab".repeat(31)))
        );
    }

    #[test]
    fn records_say_how_many_repeats_the_kernel_suppressed() {
        let mut repeated = event();
        repeated.suppressed = 7;
        let record = ExecRecord::new(&repeated, None, None, &BootClock);
        assert!(
            record
                .summary()
                .to_string()
                .ends_with("(7 earlier repeats by this user were enforced without a record)"),
            "{}",
            record.summary()
        );
        let json = serde_json::to_value(Record::Exec(record)).unwrap();
        assert_eq!(json["suppressed_before"], 7);
    }

    #[test]
    fn hostile_names_are_kept_exactly_and_shown_escaped() {
        let mut hostile = event();
        let name = b"/tmp/\x1b[2J\nblocker: fake \xff\xe2\x80\xae";
        hostile.filename = [0; FILENAME_LEN];
        hostile.filename[..name.len()].copy_from_slice(name);
        hostile.filename_len = name.len() as u32 + 1;
        hostile.comm = [0; COMM_LEN];
        hostile.comm[..5].copy_from_slice(b"\x1b]0;\xff");
        let record = ExecRecord::new(&hostile, None, None, &BootClock);
        assert_eq!(*record.path_bytes(), name[..]);
        assert_eq!(
            record.summary().to_string(),
            "denied exec of /tmp/\\x1b[2J\\nblocker: fake \\xff\\u{202e} by pid 40 \
             (\\x1b]0;\\xff, uid 1000) under rule #0"
        );
        let line = serde_json::to_string(&Record::Exec(record)).unwrap();
        assert!(!line.contains(['\x1b', '\n']), "{line}");
        let read: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(Lossless::from_json(&read, "path").unwrap().bytes(), name);
        assert_eq!(
            Lossless::from_json(&read, "comm").unwrap().bytes(),
            b"\x1b]0;\xff"
        );
    }

    #[test]
    fn kill_backend_and_audit_and_long_paths() {
        let mut killed = event();
        killed.backend = Backend::Kill.wire();
        killed.filename = [b'a'; FILENAME_LEN];
        killed.filename[FILENAME_LEN - 1] = 0;
        killed.filename_len = FILENAME_LEN as u32;
        let record = ExecRecord::new(&killed, None, None, &BootClock);
        assert_eq!(record.enforcement, Enforcement::Sigkill);
        assert_eq!(record.rule, "#0");
        assert!(record.path_truncated);
        assert_eq!(record.path.len(), FILENAME_LEN - 1);

        let mut audited = event();
        audited.action = blocker_common::Action::Audit.wire();
        assert_eq!(
            ExecRecord::new(&audited, None, None, &BootClock).enforcement,
            Enforcement::None
        );
    }

    #[test]
    fn boot_time_converts_to_recent_wall_time() {
        let boot_now = clock_ns(libc::CLOCK_BOOTTIME);
        let wall = BootClock.wall_time(boot_now);
        let skew = SystemTime::now().duration_since(wall).unwrap_or_default();
        assert!(skew < Duration::from_secs(5), "{skew:?}");
    }

    #[test]
    fn tamper_attempts_say_what_was_tried() {
        let mut signal = event();
        signal.operation = Operation::Signal.wire();
        signal.detail = 9;
        assert!(is_tamper_attempt(&signal));
        let record = TamperRecord::new(&signal, None, &BootClock);
        assert_eq!(
            (record.attempt, record.detail.as_str()),
            ("signal", "SIGKILL (9)")
        );
        assert_eq!(record.inode, 0);
        assert_eq!(
            record.summary(),
            "refused tamper attempt: signal (SIGKILL (9)) by pid 40 (bash, uid 1000)"
        );

        let mut write = event();
        write.operation = Operation::FileChange.wire();
        write.detail = FileChange::OpenForWriting.wire();
        let dir = Path::new("/etc/blocker/policies");
        let record = TamperRecord::new(&write, Some(dir), &BootClock);
        assert_eq!(record.attempt, "file_change");
        assert_eq!(record.detail, "open for writing");
        assert_eq!((record.device.as_str(), record.inode), ("254:1", 1234));
        let json = serde_json::to_value(Record::Tamper(record)).unwrap();
        assert_eq!(json["kind"], "tamper");
        assert_eq!(json["path"], "/etc/blocker/policies");
        assert!(!is_tamper_attempt(&event()));
    }

    #[test]
    fn mappings_name_the_file_blocker_resolved() {
        let mut mapped = event();
        mapped.operation = Operation::Mmap.wire();
        mapped.filename_len = 0;
        let known = Path::new("/opt/wechat/lib/libwechat.so");
        let record = ExecRecord::new(&mapped, None, Some(known), &BootClock);
        assert_eq!(record.operation, "mmap");
        assert_eq!(record.path, "/opt/wechat/lib/libwechat.so");
        assert!(record
            .summary()
            .to_string()
            .starts_with("denied executable mapping of /opt/wechat/lib/libwechat.so"));
        assert_eq!(ExecRecord::new(&mapped, None, None, &BootClock).path, "");
    }

    #[test]
    fn only_a_daemon_that_beat_and_never_stopped_is_lost() {
        let beating = Heartbeat {
            last_beat_ns: BootClock.now_ns() - 20_000_000_000,
            daemon_tgid: 77,
            stopped: 0,
        };
        let lost = LostDaemon::of(&beating).expect("silent without stopping");
        assert_eq!(lost.pid, 77);
        assert!((19..=25).contains(&lost.silent_seconds), "{lost:?}");
        assert_eq!(
            LostDaemon::of(&Heartbeat {
                stopped: 1,
                ..beating
            }),
            None
        );
        assert_eq!(LostDaemon::of(&Heartbeat::default()), None);

        let unloaded = Record::Unloaded {
            time: now_rfc3339(),
            pin_dir: "/sys/fs/bpf/blocker".to_owned(),
            pins: 9,
            pid: 500,
            uid: 0,
            daemon_lost: Some(lost),
        };
        let summary = unloaded.summary();
        assert!(
            summary.starts_with(
                "9 pins under /sys/fs/bpf/blocker removed by pid 500 (uid 0): their programs \
                 stop enforcing; the daemon that pinned them (pid 77) went silent at "
            ),
            "{summary}"
        );
        let json = serde_json::to_value(&unloaded).unwrap();
        assert_eq!(json["kind"], "unloaded");
        assert_eq!(json["daemon_lost"]["pid"], 77);
    }
}
