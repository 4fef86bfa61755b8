//! The kernel side as userspace sees it: loading the programs into the running kernel, choosing
//! the backend, and keeping the ban map equal to the resolved policy.

mod btf;
pub mod features;
mod offsets;

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::{BtfTracePoint, Lsm},
    Btf, Ebpf, EbpfLoader, Pod,
};
use blocker_common::{counter, names, setting, BanEntry, ContentHash, FileKey};

/// The kernel's type information, which both the offsets and the program attach points need.
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/blocker-ebpf.o"));

/// How a deny is enforced.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// `lsm/bprm_check_security`, `lsm/mmap_file` and `lsm/file_mprotect`: the exec or the
    /// executable mapping fails with EPERM.
    Lsm,
    /// `tp_btf/sched_process_exec`: the process is killed before the new image runs.
    Kill,
}

impl Backend {
    pub fn name(self) -> &'static str {
        match self {
            Backend::Lsm => "lsm",
            Backend::Kill => "kill",
        }
    }
}

/// The backend the user asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum BackendChoice {
    /// LSM where the kernel runs BPF LSM programs, otherwise kill.
    Auto,
    Lsm,
    Kill,
}

/// Counters the kernel programs keep.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelCounters {
    pub events_lost: u64,
    pub generation_mismatches: u64,
    pub verdict_cache_hits: u64,
    pub verdict_cache_misses: u64,
    pub content_hash_failures: u64,
    pub verdicts_invalidated: u64,
}

/// The loaded programs and their maps. Dropping it detaches the programs.
pub struct Enforcer {
    ebpf: Ebpf,
    backend: Backend,
    backend_reason: String,
    /// Whether execs are also checked by content in the kernel (`lsm` with IMA's hash helper).
    content_checks: bool,
    installed: BTreeMap<FileKey, BanEntry>,
    installed_content: BTreeMap<ContentHash, BanEntry>,
    policy_generation: u32,
}

impl Enforcer {
    /// Loads the programs, fills the ban maps with `entries` and `content_bans` and only then
    /// attaches, so enforcement starts with the whole policy in place.
    pub fn start(
        choice: BackendChoice,
        event_buffer_bytes: u32,
        entries: &BTreeMap<FileKey, BanEntry>,
        content_bans: &BTreeMap<ContentHash, BanEntry>,
        fileless: u32,
    ) -> Result<Self> {
        raise_memlock_limit();
        let offsets = offsets::running_kernel_offsets()?;
        let log_level = log::max_level() as u8;
        let ebpf = EbpfLoader::new()
            .override_global(names::KERNEL_OFFSETS_GLOBAL, &offsets, true)
            // A ring buffer's max_entries is its size in bytes.
            .map_max_entries(names::EVENTS_MAP, event_buffer_bytes)
            .override_global(aya_log::LEVEL, &log_level, false)
            .load(EBPF_OBJECT)
            .context("loading blocker's eBPF object")?;
        let mut enforcer = Self {
            ebpf,
            backend: Backend::Kill,
            backend_reason: String::new(),
            content_checks: false,
            installed: BTreeMap::new(),
            installed_content: BTreeMap::new(),
            policy_generation: 0,
        };
        enforcer.apply(entries)?;
        enforcer.apply_content_bans(content_bans)?;
        enforcer.set_fileless(fileless)?;
        let (backend, reason) = enforcer.attach(choice)?;
        enforcer.backend = backend;
        enforcer.backend_reason = if enforcer.content_checks {
            format!("{reason}; contents are checked at exec")
        } else {
            reason
        };
        Ok(enforcer)
    }

    /// Whether the kernel checks the content of exec'd files itself.
    pub fn content_checks(&self) -> bool {
        self.content_checks
    }

    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Why this backend is active, for the startup log.
    pub fn backend_reason(&self) -> &str {
        &self.backend_reason
    }

    pub fn installed_entries(&self) -> usize {
        self.installed.len()
    }

    pub fn installed_content_entries(&self) -> usize {
        self.installed_content.len()
    }

    fn attach(&mut self, choice: BackendChoice) -> Result<(Backend, String)> {
        let lsms = features::active_lsms()?;
        let bpf_lsm_active = lsms.iter().any(|lsm| lsm == "bpf");
        let lsm_list = lsms.join(",");
        match choice {
            BackendChoice::Kill => {
                self.attach_kill()?;
                Ok((Backend::Kill, "chosen with --backend kill".to_owned()))
            }
            BackendChoice::Lsm => {
                if !bpf_lsm_active {
                    bail!(
                        "--backend lsm: `bpf` is not among the active LSMs ({lsm_list}); boot \
                         with lsm={lsm_list},bpf or use --backend kill"
                    );
                }
                self.attach_lsm().context("--backend lsm")?;
                Ok((Backend::Lsm, "chosen with --backend lsm".to_owned()))
            }
            BackendChoice::Auto if !bpf_lsm_active => {
                self.attach_kill()?;
                Ok((
                    Backend::Kill,
                    format!(
                        "`bpf` is not among the active LSMs ({lsm_list}); boot with \
                         lsm={lsm_list},bpf to refuse execs with EPERM"
                    ),
                ))
            }
            BackendChoice::Auto => match self.attach_lsm() {
                Ok(()) => Ok((
                    Backend::Lsm,
                    format!("`bpf` is an active LSM ({lsm_list}) and the LSM program loaded"),
                )),
                Err(error) => {
                    self.attach_kill()?;
                    Ok((
                        Backend::Kill,
                        format!("the kernel refused the LSM program: {error:#}"),
                    ))
                }
            },
        }
    }

    /// Loads every LSM program before attaching any, so a kernel that refuses one leaves
    /// nothing half attached. The exec check is the content one where the kernel can hash files
    /// for BPF (IMA, 5.11 and later), by identity otherwise; its cache-keeping programs are
    /// attached before it, so no verdict is ever cached unwatched.
    fn attach_lsm(&mut self) -> Result<()> {
        let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
        let content_programs: Vec<(&str, &str)> = names::INVALIDATION_PROGRAMS
            .into_iter()
            .chain([(names::CONTENT_LSM_PROGRAM, names::EXEC_HOOK)])
            .collect();
        let exec_programs = match self.load_lsm(&btf, &content_programs) {
            Ok(()) => {
                self.content_checks = true;
                content_programs
            }
            Err(error) => {
                log::warn!("contents are not checked at exec by the kernel: {error:#}");
                let identity = vec![(names::IDENTITY_LSM_PROGRAM, names::EXEC_HOOK)];
                self.load_lsm(&btf, &identity)?;
                identity
            }
        };
        self.load_lsm(&btf, &names::MAPPING_LSM_PROGRAMS)?;
        for (name, hook) in exec_programs.into_iter().chain(names::MAPPING_LSM_PROGRAMS) {
            let program: &mut Lsm = self
                .ebpf
                .program_mut(name)
                .expect("loaded above")
                .try_into()?;
            program
                .attach()
                .with_context(|| format!("attaching {name} (lsm/{hook})"))?;
        }
        Ok(())
    }

    fn load_lsm(&mut self, btf: &Btf, programs: &[(&str, &str)]) -> Result<()> {
        for &(name, hook) in programs {
            let program: &mut Lsm = self
                .ebpf
                .program_mut(name)
                .with_context(|| format!("the eBPF object has no program {name}"))?
                .try_into()?;
            program
                .load(hook, btf)
                .with_context(|| format!("loading {name} (lsm/{hook})"))?;
        }
        Ok(())
    }

    fn attach_kill(&mut self) -> Result<()> {
        let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
        let program: &mut BtfTracePoint = self
            .ebpf
            .program_mut(names::KILL_PROGRAM)
            .context("the eBPF object has no exec tracepoint program")?
            .try_into()?;
        program
            .load(names::KILL_TRACEPOINT, &btf)
            .context("loading the exec tracepoint program")?;
        program
            .attach()
            .context("attaching the exec tracepoint program")?;
        Ok(())
    }

    /// Makes the kernel's ban map equal to `entries`; see [`sync_map`].
    pub fn apply(&mut self, entries: &BTreeMap<FileKey, BanEntry>) -> Result<ApplyStats> {
        let map = self
            .ebpf
            .map_mut(names::BANNED_FILES_MAP)
            .context("the eBPF object has no ban map")?;
        sync_map(map, &mut self.installed, entries).context("updating the banned files")
    }

    /// Makes the kernel's content ban map equal to `bans` (see [`sync_map`]), then, if anything
    /// changed, bumps the policy generation so every verdict the kernel cached under the old
    /// bans is recomputed. The bump comes last: an exec that read the old generation may still
    /// see a half-updated map, but its verdict is filed under the old generation and never used.
    pub fn apply_content_bans(
        &mut self,
        bans: &BTreeMap<ContentHash, BanEntry>,
    ) -> Result<ApplyStats> {
        let map = self
            .ebpf
            .map_mut(names::BANNED_HASHES_MAP)
            .context("the eBPF object has no content ban map")?;
        let stats = sync_map(map, &mut self.installed_content, bans)
            .context("updating the banned contents")?;
        if stats != ApplyStats::default() {
            self.bump_policy_generation()?;
        }
        Ok(stats)
    }

    fn bump_policy_generation(&mut self) -> Result<()> {
        let mut generation: Array<&mut MapData, u32> = Array::try_from(
            self.ebpf
                .map_mut(names::POLICY_GENERATION_MAP)
                .context("the eBPF object has no policy generation map")?,
        )?;
        let next = self.policy_generation.wrapping_add(1);
        generation
            .set(0, next, 0)
            .context("bumping the policy generation")?;
        self.policy_generation = next;
        Ok(())
    }

    /// Sets what the kernel does with fileless execs (one of `blocker_common::action`).
    pub fn set_fileless(&mut self, action: u32) -> Result<()> {
        let mut settings: Array<&mut MapData, u32> = Array::try_from(
            self.ebpf
                .map_mut(names::SETTINGS_MAP)
                .context("the eBPF object has no settings map")?,
        )?;
        settings
            .set(setting::FILELESS, action, 0)
            .context("setting the fileless policy")?;
        Ok(())
    }

    /// The ring buffer of exec events; can be taken once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(names::EVENTS_MAP)
            .context("the event ring buffer was already taken")?;
        Ok(RingBuf::try_from(map)?)
    }

    /// The eBPF programs' aya-log records, to be forwarded to `log`.
    pub fn take_logger(&mut self) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>> {
        aya_log::EbpfLogger::init(&mut self.ebpf).context("starting the eBPF log forwarder")
    }

    pub fn counters(&self) -> Result<KernelCounters> {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.ebpf
                .map(names::COUNTERS_MAP)
                .context("the eBPF object has no counters map")?,
        )?;
        let total = |index: u32| -> Result<u64> { Ok(map.get(&index, 0)?.iter().sum()) };
        Ok(KernelCounters {
            events_lost: total(counter::EVENTS_LOST)?,
            generation_mismatches: total(counter::GENERATION_MISMATCH)?,
            verdict_cache_hits: total(counter::VERDICT_CACHE_HIT)?,
            verdict_cache_misses: total(counter::VERDICT_CACHE_MISS)?,
            content_hash_failures: total(counter::CONTENT_HASH_FAILED)?,
            verdicts_invalidated: total(counter::VERDICT_INVALIDATED)?,
        })
    }
}

/// Makes a kernel hash map that holds `installed` hold `wanted`. New and changed entries go in
/// before stale ones leave, so an entry present in both is never absent, even for an instant. If
/// the kernel refuses an entry, every change is undone and the previous contents stay whole.
fn sync_map<K: Pod + Ord, V: Pod + PartialEq>(
    map: &mut Map,
    installed: &mut BTreeMap<K, V>,
    wanted: &BTreeMap<K, V>,
) -> Result<ApplyStats> {
    let mut map: HashMap<&mut MapData, K, V> = HashMap::try_from(map)?;
    let mut changed = Vec::new();
    let mut stats = ApplyStats::default();
    for (key, value) in wanted {
        let previous = installed.get(key);
        if previous == Some(value) {
            continue;
        }
        if let Err(error) = map.insert(key, value, 0) {
            for (key, previous) in changed {
                // Best effort: the map held these a moment ago, so they fit again.
                let _ = match previous {
                    Some(previous) => map.insert(key, previous, 0),
                    None => map.remove(key),
                };
            }
            return Err(error).with_context(|| {
                format!(
                    "adding entry {} of {} to the kernel map; the previous policy stays in force",
                    stats.added + stats.changed + 1,
                    wanted.len()
                )
            });
        }
        if previous.is_some() {
            stats.changed += 1;
        } else {
            stats.added += 1;
        }
        changed.push((key, previous.copied()));
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

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
}

/// Kernels before 5.11 charge BPF memory to RLIMIT_MEMLOCK; later ones ignore it.
fn raise_memlock_limit() {
    let unlimited = libc::rlimit {
        rlim_cur: libc::RLIM_INFINITY,
        rlim_max: libc::RLIM_INFINITY,
    };
    // SAFETY: a valid rlimit for the current process.
    if unsafe { libc::setrlimit(libc::RLIMIT_MEMLOCK, &unlimited) } != 0 {
        log::debug!(
            "could not raise RLIMIT_MEMLOCK: {}",
            std::io::Error::last_os_error()
        );
    }
}
