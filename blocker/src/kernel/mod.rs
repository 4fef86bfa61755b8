//! The kernel side as userspace sees it: loading the programs into the running kernel, choosing
//! the backend, and keeping the ban map equal to the resolved policy.

mod btf;
pub mod coverage;
mod expected;
pub mod features;
pub mod heartbeat;
mod hooks;
mod map_sync;
mod offsets;
mod pin_check;
pub mod pins;
mod protection;
mod syscall;

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
};

use anyhow::{bail, Context, Result};
use aya::{
    maps::{Array, HashMap, Map, MapData, PerCpuArray, RingBuf},
    programs::{links::FdLink, BtfTracePoint, Lsm},
    Btf, Ebpf, EbpfLoader, Pod,
};
use blocker_common::{
    counter,
    lsm_programs::{self, LsmProgram},
    names, setting, BanEntry, ContentHash, FileKey,
};

use self::{
    coverage::{Feature, Features},
    expected::{ExpectedObject, Globals},
    hooks::HookLayout,
    map_sync::sync_kernel_map,
};
use crate::{escape::escaped, sorted_map::SortedMap};

/// How long to wait for the kernel to detach programs whose last link reference is gone.
pub const DETACH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// The kernel's type information, which both the offsets and the program attach points need.
const KERNEL_BTF: &str = "/sys/kernel/btf/vmlinux";

static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/blocker-ebpf.o"));

/// How a deny is enforced: the kernel side's own name for it.
pub use blocker_common::Backend;

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
    pub mapping_verdict_cache_hits: u64,
    pub mapping_verdict_cache_misses: u64,
    pub content_hash_failures: u64,
    pub verdicts_invalidated: u64,
    pub content_too_large: u64,
    pub content_unguarded: u64,
    pub records_suppressed: u64,
    pub package_trust_changes: u64,
}

/// Every LSM program blocker attaches where the kernel takes it.
fn every_lsm_program() -> impl Iterator<Item = LsmProgram> {
    [
        lsm_programs::EXEC_IDENTITY,
        lsm_programs::EXEC_CONTENT,
        lsm_programs::MAPPING_CONTENT,
    ]
    .into_iter()
    .chain(lsm_programs::VERDICT_INVALIDATION)
    .chain(lsm_programs::EXECUTABLE_MAPPINGS)
    .chain(lsm_programs::PACKAGE_UPDATES)
    .chain(lsm_programs::PROTECTION)
}

/// The maps userspace reads and writes, the ones pinned for the next daemon.
const USERSPACE_MAPS: [&str; 11] = [
    names::BANNED_FILES_MAP,
    names::ALLOWED_FILES_MAP,
    names::BANNED_HASHES_MAP,
    names::SETTINGS_MAP,
    names::COUNTERS_MAP,
    names::POLICY_GENERATION_MAP,
    names::EVENTS_MAP,
    names::PROTECTION_MAP,
    names::PROTECTED_INODES_MAP,
    names::PROTECTED_BPF_OBJECTS_MAP,
    names::HEARTBEAT_MAP,
];

/// What the kernel enforces: the entries of the ban maps and the policy-wide settings.
pub struct KernelPolicy<'a> {
    pub entries: &'a SortedMap<FileKey, BanEntry>,
    pub allowed: &'a SortedMap<FileKey, BanEntry>,
    pub content_bans: &'a SortedMap<ContentHash, BanEntry>,
    pub settings: ExecSettings,
}

/// The policy-wide settings of execs no rule names, each one of `blocker_common::action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExecSettings {
    /// Execs of files with no name on disk.
    pub fileless: u32,
    /// Execs the kernel could not hash while content bans are in force.
    pub unhashable: u32,
    /// Files larger than this many MiB are not hashed.
    pub hash_limit_mib: u32,
    /// Execs and executable mappings of files on untrusted paths.
    pub untrusted_paths: u32,
    /// Execs and executable mappings of files no trust source names.
    pub lockdown: u32,
}

/// The programs in force and their maps. Dropping it detaches the programs unless they are
/// pinned.
pub struct Enforcer {
    /// The object this daemon loaded; `None` when it adopted pinned programs.
    ebpf: Option<Ebpf>,
    maps: BTreeMap<&'static str, Map>,
    /// Program name and the link attaching it.
    links: Vec<(String, FdLink)>,
    backend: Backend,
    backend_reason: String,
    /// What the attached programs cover.
    features: Features,
    /// Where this kernel's hooks take the arguments the programs read; `None` when adopted.
    hook_layout: Option<HookLayout>,
    installed: SortedMap<FileKey, BanEntry>,
    installed_allowed: SortedMap<FileKey, BanEntry>,
    installed_content: SortedMap<ContentHash, BanEntry>,
    policy_generation: u32,
    /// Where the programs are pinned, when they are.
    pinned: Option<PathBuf>,
    /// What tamper protection guards, by identity; empty while it is off.
    protected: BTreeMap<FileKey, PathBuf>,
    /// The files in the daemon's guarded cgroups, for naming them in events.
    cgroup_files: BTreeMap<FileKey, PathBuf>,
    /// Why the programs found pinned were not adopted, when they were not.
    adoption_refused: Option<String>,
}

impl Enforcer {
    /// Puts `policy` in force. With `pin_root`, programs an earlier daemon pinned there are
    /// adopted (their maps brought to `policy`); otherwise the programs are loaded, the maps
    /// filled and only then the programs attached, so enforcement starts with the whole policy
    /// in place. With `protect`, tamper protection is turned on for these directories (see
    /// [`Enforcer::protect`]) before anything is pinned; with `pin_root` the programs are then
    /// pinned, replacing earlier pins only once attached. A start that fails leaves no pins of
    /// its own behind.
    pub fn start(
        choice: BackendChoice,
        event_buffer_bytes: u32,
        pin_root: Option<&Path>,
        policy: &KernelPolicy<'_>,
        protect: Option<&[PathBuf]>,
    ) -> Result<Self> {
        raise_memlock_limit();
        if let Some(root) = pin_root {
            pins::ensure_bpf_fs(root)?;
        }
        let pin_dir = pin_root.map(|root| pins::build_dir(root, EBPF_OBJECT));
        let mut adoption_refused = None;
        if let Some(dir) = pin_dir.as_deref().filter(|dir| dir.exists()) {
            match Self::adopt(dir, choice) {
                Ok(Some(mut enforcer)) => {
                    enforcer.fill(policy)?;
                    match protect {
                        Some(directories) => enforcer.protect(directories)?,
                        None => enforcer.protection_not_asked_for(),
                    }
                    return Ok(enforcer);
                }
                Ok(None) => {}
                Err(error) => {
                    // What the error says of pins and paths is escaped already.
                    let reason = crate::escape::controls_escaped(&format!("{error:#}"));
                    log::warn!(
                        "not adopting the programs pinned at {}: {reason}; loading new ones, \
                         which replace them",
                        escaped(dir)
                    );
                    adoption_refused = Some(reason);
                }
            }
        }
        let mut enforcer = Self::load(event_buffer_bytes)?;
        enforcer.adoption_refused = adoption_refused;
        enforcer.fill(policy)?;
        let (backend, reason) = enforcer.attach(choice)?;
        enforcer.backend = backend;
        enforcer.backend_reason = reason;
        if protect.is_none() {
            enforcer.protection_not_asked_for();
        }
        if let Some(directories) = protect {
            // The pin directories do not exist yet: protected again once pinned, below.
            enforcer.protect(directories)?;
        }
        if let Some(dir) = pin_dir {
            let maps: Vec<(&str, &Map)> = enforcer.maps.iter().map(|(n, m)| (*n, m)).collect();
            let links = std::mem::take(&mut enforcer.links);
            enforcer.links = pins::pin(&dir, &maps, links)?;
            enforcer.pinned = Some(dir.clone());
            if let Some(directories) = protect {
                if let Err(error) = enforcer.protect(directories) {
                    enforcer.remove_own_pins();
                    return Err(error);
                }
            }
            log::info!(
                "programs and maps pinned at {}: they keep enforcing if the daemon stops",
                dir.display()
            );
        }
        Ok(enforcer)
    }

    /// Lets go of the programs: unpinned ones are detached, and this returns once the kernel
    /// no longer lists their links (it may release them from a work queue a moment later);
    /// pinned ones keep enforcing.
    pub fn release(self) {
        if self.pinned.is_some() {
            return;
        }
        let ids: Vec<_> = self
            .links
            .iter()
            .filter_map(|(_, link)| pins::LinkIds::of(link))
            .collect();
        drop(self);
        let still_attached = pins::wait_for_detach(&ids, DETACH_TIMEOUT);
        if !still_attached.is_empty() {
            log::warn!(
                "{} links still attached {} s after the daemon let them go",
                still_attached.len(),
                DETACH_TIMEOUT.as_secs()
            );
        }
    }

    /// Reports tamper protection off where its programs are attached but inert.
    fn protection_not_asked_for(&mut self) {
        if self.features.tamper_protection.state != coverage::State::Off {
            self.features.tamper_protection =
                Feature::off("not asked for; `blocker run --protect` turns it on");
        }
    }

    /// Removes the pins this daemon made, after a start that failed once they were made: the
    /// programs then detach when the daemon exits.
    fn remove_own_pins(&mut self) {
        let Some(dir) = self.pinned.take() else {
            return;
        };
        let _ = self.unprotect();
        if let Err(error) = pins::remove(&dir) {
            log::warn!(
                "removing the pins at {} after a failed start: {error:#}",
                dir.display()
            );
        }
    }

    fn load(event_buffer_bytes: u32) -> Result<Self> {
        let (globals, hook_layout) = Globals::of_running_kernel()?;
        let log_level = log::max_level() as u8;
        let mut loader = EbpfLoader::new();
        for (name, value, must_exist) in globals.values(&log_level) {
            loader.override_global(name, value, must_exist);
        }
        let mut ebpf = loader
            // A ring buffer's max_entries is its size in bytes.
            .map_max_entries(names::EVENTS_MAP, event_buffer_bytes)
            .load(EBPF_OBJECT)
            .context("loading blocker's eBPF object")?;
        let mut maps = BTreeMap::new();
        for name in USERSPACE_MAPS {
            let map = ebpf
                .take_map(name)
                .with_context(|| format!("the eBPF object has no map {name}"))?;
            maps.insert(name, map);
        }
        Ok(Self {
            ebpf: Some(ebpf),
            maps,
            links: Vec::new(),
            backend: Backend::Kill,
            backend_reason: String::new(),
            features: Features::kill_backend(),
            hook_layout: Some(hook_layout),
            installed: SortedMap::default(),
            installed_allowed: SortedMap::default(),
            installed_content: SortedMap::default(),
            policy_generation: 0,
            pinned: None,
            protected: BTreeMap::new(),
            cgroup_files: BTreeMap::new(),
            adoption_refused: None,
        })
    }

    /// Takes over the programs pinned in `dir`, unless they run another backend than `choice`
    /// asks for (`None`: they are to be replaced). Pins that are not this build's programs and
    /// maps as it would load them on this kernel ([`pin_check`]), or that lack an exec check,
    /// are refused.
    fn adopt(dir: &Path, choice: BackendChoice) -> Result<Option<Self>> {
        let adopted = pins::adopt(dir, &USERSPACE_MAPS)?;
        let (globals, _) = Globals::of_running_kernel()?;
        pin_check::check(&adopted, &ExpectedObject::of(EBPF_OBJECT, &globals)?)?;
        let attached = |program: &str| adopted.links.iter().any(|(name, _)| name == program);
        let backend = if attached(names::KILL_PROGRAM) {
            Backend::Kill
        } else {
            Backend::Lsm
        };
        let exec_checks = [lsm_programs::EXEC_CONTENT, lsm_programs::EXEC_IDENTITY];
        if backend == Backend::Lsm && !exec_checks.iter().any(|exec| attached(exec.name)) {
            bail!("no exec check is pinned");
        }
        let wanted = match choice {
            BackendChoice::Auto => backend,
            BackendChoice::Lsm => Backend::Lsm,
            BackendChoice::Kill => Backend::Kill,
        };
        if wanted != backend {
            log::info!(
                "the programs pinned at {} use the {} backend; replacing them with the {} backend",
                dir.display(),
                backend.name(),
                wanted.name()
            );
            return Ok(None);
        }
        let features = match backend {
            Backend::Kill => Features::kill_backend(),
            Backend::Lsm => Features::lsm(attached, |_| {
                "not among the programs the earlier daemon pinned; `blocker unload`, then start \
                 again, to load it"
                    .to_owned()
            }),
        };
        let mut enforcer = Self {
            ebpf: None,
            maps: adopted
                .maps
                .into_iter()
                .map(|pinned| (pinned.name, pinned.map))
                .collect(),
            links: adopted.links,
            backend,
            backend_reason: format!(
                "adopted the {} programs an earlier daemon pinned at {}",
                backend.name(),
                dir.display(),
            ),
            features,
            hook_layout: None,
            installed: SortedMap::default(),
            installed_allowed: SortedMap::default(),
            installed_content: SortedMap::default(),
            policy_generation: 0,
            pinned: Some(dir.to_owned()),
            protected: BTreeMap::new(),
            cgroup_files: BTreeMap::new(),
            adoption_refused: None,
        };
        enforcer.installed = read_map(enforcer.map_mut(names::BANNED_FILES_MAP)?)?;
        enforcer.installed_content = read_map(enforcer.map_mut(names::BANNED_HASHES_MAP)?)?;
        let generation: Array<&mut MapData, u32> =
            Array::try_from(enforcer.map_mut(names::POLICY_GENERATION_MAP)?)?;
        enforcer.policy_generation = generation.get(&0, 0)?;
        // The kernel caches verdicts only while every program that drops stale ones runs, as
        // `features` reports: a pin removed since the programs were loaded detached its program.
        let cache_usable = enforcer.features.verdict_cache.state == coverage::State::On;
        enforcer.set_setting(setting::VERDICT_CACHE, u32::from(cache_usable))?;
        log::info!(
            "adopted the programs pinned at {} ({} banned files, {} banned contents in force)",
            escaped(dir),
            enforcer.installed.len(),
            enforcer.installed_content.len()
        );
        Ok(Some(enforcer))
    }

    fn fill(&mut self, policy: &KernelPolicy<'_>) -> Result<()> {
        self.apply(policy.entries)?;
        self.apply_allowed(policy.allowed)?;
        self.apply_content_bans(policy.content_bans)?;
        self.set_exec_settings(policy.settings)
    }

    /// Whether the kernel checks the content of exec'd files itself.
    pub fn content_checks(&self) -> bool {
        self.features.exec_content.state == coverage::State::On
    }

    /// What the attached programs cover.
    pub fn features(&self) -> &Features {
        &self.features
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

    /// Where the programs are pinned, if they are: they outlive the daemon.
    pub fn pinned(&self) -> Option<&Path> {
        self.pinned.as_deref()
    }

    /// Whether the programs were adopted from pins rather than loaded by this daemon.
    pub fn adopted(&self) -> bool {
        self.ebpf.is_none()
    }

    /// Why the programs found pinned were not adopted, when they were not.
    pub fn adoption_refused(&self) -> Option<&str> {
        self.adoption_refused.as_deref()
    }

    fn ebpf_mut(&mut self) -> &mut Ebpf {
        self.ebpf
            .as_mut()
            .expect("programs are attached only by the daemon that loaded them")
    }

    fn map_mut(&mut self, name: &str) -> Result<&mut Map> {
        self.maps
            .get_mut(name)
            .with_context(|| format!("no map {name}"))
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
                    // Dropping the links detaches whatever was attached before the failure.
                    self.links.clear();
                    self.attach_kill()?;
                    Ok((
                        Backend::Kill,
                        format!("the kernel refused the LSM program: {error:#}"),
                    ))
                }
            },
        }
    }

    /// Loads every LSM program this kernel takes before attaching any; each optional one that
    /// it refuses is reported missing, never the whole backend. The exec check is the content
    /// one where the kernel can hash files for BPF (IMA, 5.11 and later), by identity
    /// otherwise. The programs dropping stale cached verdicts are attached before the content
    /// check, and the cache is used only if all of them are, so no verdict is cached unwatched.
    /// Protection programs, inert until `protect`, are attached after the checks, and the
    /// programs following package updates last.
    fn attach_lsm(&mut self) -> Result<()> {
        let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
        let mut missing: BTreeMap<&'static str, String> = BTreeMap::new();
        let mut load = |enforcer: &mut Self, program: &LsmProgram| -> bool {
            match enforcer.load_lsm(&btf, program) {
                Ok(()) => true,
                Err(error) => {
                    missing.insert(program.name, format!("{error:#}"));
                    false
                }
            }
        };
        let invalidation: Vec<LsmProgram> = lsm_programs::VERDICT_INVALIDATION
            .into_iter()
            .filter(|program| load(self, program))
            .collect();
        let exec = if load(self, &lsm_programs::EXEC_CONTENT) {
            lsm_programs::EXEC_CONTENT
        } else {
            let identity = lsm_programs::EXEC_IDENTITY;
            self.load_lsm(&btf, &identity)?;
            identity
        };
        // Mappings are checked by content where execs are and the kernel takes the program;
        // by identity otherwise.
        let mapping_content =
            exec == lsm_programs::EXEC_CONTENT && load(self, &lsm_programs::MAPPING_CONTENT);
        let mapping_programs = lsm_programs::EXECUTABLE_MAPPINGS.map(|program| {
            if mapping_content && program == lsm_programs::EXECUTABLE_MAPPINGS[0] {
                lsm_programs::MAPPING_CONTENT
            } else {
                program
            }
        });
        // The content check of mappings is loaded already; every other program is loaded here.
        // Package updates after protection: on a hook both use, a program runs only if those
        // before it allowed, so trust never follows a rename that protection refused.
        let optional: Vec<LsmProgram> = mapping_programs
            .into_iter()
            .chain(lsm_programs::PROTECTION)
            .chain(lsm_programs::PACKAGE_UPDATES)
            .filter(|program| {
                program.name == lsm_programs::MAPPING_CONTENT.name || load(self, program)
            })
            .collect();

        let content_checks = exec == lsm_programs::EXEC_CONTENT;
        let cache_usable =
            content_checks && invalidation.len() == lsm_programs::VERDICT_INVALIDATION.len();
        self.set_setting(setting::VERDICT_CACHE, u32::from(cache_usable))?;
        let invalidation = invalidation.into_iter().filter(|_| content_checks);
        for program in invalidation.chain([exec]).chain(optional) {
            let lsm: &mut Lsm = self
                .ebpf_mut()
                .program_mut(program.name)
                .expect("loaded above")
                .try_into()?;
            let link = lsm
                .attach()
                .and_then(|id| lsm.take_link(id))
                .with_context(|| format!("attaching {} (lsm/{})", program.name, program.hook))?;
            self.links.push((program.name.to_owned(), link.into()));
        }
        let attached: Vec<String> = self.links.iter().map(|(name, _)| name.clone()).collect();
        self.features = Features::lsm(
            |name| attached.iter().any(|attached| attached == name),
            |program| {
                missing
                    .get(program.name)
                    .cloned()
                    .unwrap_or_else(|| "not needed without content checks".to_owned())
            },
        );
        Ok(())
    }

    /// Loads `program` unless this kernel's hook lacks an argument it reads.
    fn load_lsm(&mut self, btf: &Btf, program: &LsmProgram) -> Result<()> {
        if let Some(reason) = self
            .hook_layout
            .as_ref()
            .and_then(|layout| layout.unavailable(program))
        {
            bail!("{reason}");
        }
        let lsm: &mut Lsm = self
            .ebpf_mut()
            .program_mut(program.name)
            .with_context(|| format!("the eBPF object has no program {}", program.name))?
            .try_into()?;
        lsm.load(program.hook, btf)
            .with_context(|| format!("loading {} (lsm/{})", program.name, program.hook))
    }

    fn attach_kill(&mut self) -> Result<()> {
        let btf = Btf::from_sys_fs().context("reading the kernel's BTF")?;
        let program: &mut BtfTracePoint = self
            .ebpf_mut()
            .program_mut(names::KILL_PROGRAM)
            .context("the eBPF object has no exec tracepoint program")?
            .try_into()?;
        program
            .load(names::KILL_TRACEPOINT, &btf)
            .context("loading the exec tracepoint program")?;
        let link = program
            .attach()
            .and_then(|id| program.take_link(id))
            .context("attaching the exec tracepoint program")?;
        self.links
            .push((names::KILL_PROGRAM.to_owned(), link.into()));
        Ok(())
    }

    /// Makes the kernel's ban map equal to `entries`; see [`map_sync::sync_map`].
    pub fn apply(&mut self, entries: &SortedMap<FileKey, BanEntry>) -> Result<ApplyStats> {
        let map = self.maps.get(names::BANNED_FILES_MAP).expect("loaded");
        sync_kernel_map(map, &mut self.installed, entries).context("updating the banned files")
    }

    /// Makes the kernel's allowed-files map equal to `allowed`; see [`map_sync::sync_map`]. The
    /// kernel changes this map itself (it drops the entry of a file opened for writing, see
    /// `forget_verdict`; it follows dpkg, see `package_updates`), so the map is read first: what
    /// the policy still allows goes back in. Unlike bans, stale allowances leave first: that
    /// only ever refuses more, and frees the room the kernel's entries for dpkg's files took.
    pub fn apply_allowed(&mut self, allowed: &SortedMap<FileKey, BanEntry>) -> Result<ApplyStats> {
        let installed: SortedMap<FileKey, BanEntry> =
            read_map(self.map_mut(names::ALLOWED_FILES_MAP)?)?;
        let mut map: HashMap<&mut MapData, FileKey, BanEntry> =
            HashMap::try_from(self.map_mut(names::ALLOWED_FILES_MAP)?)?;
        let mut stale = 0;
        for key in installed.keys().filter(|key| !allowed.contains_key(*key)) {
            map.remove(key).context("removing a stale allowance")?;
            stale += 1;
        }
        self.installed_allowed = installed
            .iter()
            .filter(|(key, _)| allowed.contains_key(*key))
            .map(|(key, entry)| (*key, *entry))
            .collect();
        let map = self.maps.get(names::ALLOWED_FILES_MAP).expect("loaded");
        let mut stats = sync_kernel_map(map, &mut self.installed_allowed, allowed)
            .context("updating the allowed files")?;
        stats.removed += stale;
        Ok(stats)
    }

    /// Makes the kernel's content ban map equal to `bans` (see [`map_sync::sync_map`]), then, if anything
    /// changed, bumps the policy generation so every verdict the kernel cached under the old
    /// bans is recomputed. The bump comes last: an exec that read the old generation may still
    /// see a half-updated map, but its verdict is filed under the old generation and never used.
    pub fn apply_content_bans(
        &mut self,
        bans: &SortedMap<ContentHash, BanEntry>,
    ) -> Result<ApplyStats> {
        // The kernel hashes only while the flag says bans exist: raised before the first ban
        // goes in, lowered after the last one left, so no exec skips a ban in force.
        if !bans.is_empty() {
            self.set_setting(setting::CONTENT_BANS, 1)?;
        }
        let map = self.maps.get(names::BANNED_HASHES_MAP).expect("loaded");
        let stats = sync_kernel_map(map, &mut self.installed_content, bans)
            .context("updating the banned contents")?;
        if stats != ApplyStats::default() {
            self.bump_policy_generation()?;
        }
        if bans.is_empty() {
            self.set_setting(setting::CONTENT_BANS, 0)?;
        }
        Ok(stats)
    }

    fn bump_policy_generation(&mut self) -> Result<()> {
        let next = self.policy_generation.wrapping_add(1);
        let mut generation: Array<&mut MapData, u32> =
            Array::try_from(self.map_mut(names::POLICY_GENERATION_MAP)?)?;
        generation
            .set(0, next, 0)
            .context("bumping the policy generation")?;
        self.policy_generation = next;
        Ok(())
    }

    /// Sets what the kernel does with execs no rule names.
    pub fn set_exec_settings(&mut self, settings: ExecSettings) -> Result<()> {
        self.set_setting(setting::FILELESS, settings.fileless)
            .context("setting the fileless policy")?;
        self.set_setting(setting::UNHASHABLE, settings.unhashable)
            .context("setting the unhashable policy")?;
        self.set_setting(setting::HASH_LIMIT_MIB, settings.hash_limit_mib)
            .context("setting the hash limit")?;
        self.set_setting(setting::UNTRUSTED_PATHS, settings.untrusted_paths)
            .context("setting the trusted-path policy")?;
        self.set_setting(setting::LOCKDOWN, settings.lockdown)
            .context("setting lockdown")
    }

    fn set_setting(&mut self, index: u32, value: u32) -> Result<()> {
        let mut settings: Array<&mut MapData, u32> =
            Array::try_from(self.map_mut(names::SETTINGS_MAP)?)?;
        settings
            .set(index, value, 0)
            .with_context(|| format!("setting {index} of {}", names::SETTINGS_MAP))?;
        Ok(())
    }

    /// The ring buffer of exec events; can be taken once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .maps
            .remove(names::EVENTS_MAP)
            .context("the event ring buffer was already taken")?;
        Ok(RingBuf::try_from(map)?)
    }

    /// The eBPF programs' aya-log records, to be forwarded to `log`.
    pub fn take_logger(&mut self) -> Result<aya_log::EbpfLogger<&'static dyn log::Log>> {
        let logger = match &mut self.ebpf {
            Some(ebpf) => aya_log::EbpfLogger::init(ebpf),
            // Only the programs that log use the log map: the first of those leads to it.
            None => self
                .links
                .iter()
                .filter_map(|(_, link)| link.info().ok())
                .map(|link| aya_log::EbpfLogger::init_from_id(link.program_id()))
                .find(Result::is_ok)
                .unwrap_or(Err(aya_log::Error::MapNotFound)),
        };
        logger.context("starting the eBPF log forwarder")
    }

    pub fn counters(&self) -> Result<KernelCounters> {
        let map: PerCpuArray<&MapData, u64> = PerCpuArray::try_from(
            self.maps
                .get(names::COUNTERS_MAP)
                .context("no counters map")?,
        )?;
        let total = |index: u32| -> Result<u64> { Ok(map.get(&index, 0)?.iter().sum()) };
        Ok(KernelCounters {
            events_lost: total(counter::EVENTS_LOST)?,
            generation_mismatches: total(counter::GENERATION_MISMATCH)?,
            verdict_cache_hits: total(counter::VERDICT_CACHE_HIT)?,
            verdict_cache_misses: total(counter::VERDICT_CACHE_MISS)?,
            mapping_verdict_cache_hits: total(counter::MAPPING_VERDICT_CACHE_HIT)?,
            mapping_verdict_cache_misses: total(counter::MAPPING_VERDICT_CACHE_MISS)?,
            content_hash_failures: total(counter::CONTENT_HASH_FAILED)?,
            verdicts_invalidated: total(counter::VERDICT_INVALIDATED)?,
            content_too_large: total(counter::CONTENT_TOO_LARGE)?,
            content_unguarded: total(counter::CONTENT_UNGUARDED)?,
            records_suppressed: total(counter::RECORDS_SUPPRESSED)?,
            package_trust_changes: total(counter::PACKAGE_TRUST_CHANGES)?,
        })
    }
}

/// The whole contents of a kernel hash map.
fn read_map<K: Pod + Ord, V: Pod>(map: &mut Map) -> Result<SortedMap<K, V>> {
    let map: HashMap<&mut MapData, K, V> = HashMap::try_from(map)?;
    map.iter()
        .map(|item| item.context("reading a pinned map"))
        .collect()
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ApplyStats {
    pub added: usize,
    pub changed: usize,
    pub removed: usize,
}

impl std::fmt::Display for ApplyStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} added, {} changed, {} removed",
            self.added, self.changed, self.removed
        )
    }
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use object::{Object, ObjectSection, ObjectSymbol, SymbolKind};

    use super::*;

    /// Every program of the object, by name, with its section: the section names the program
    /// type and the hook or tracepoint, as `#[lsm(hook = ...)]` and its kin wrote it.
    fn programs_in_object() -> BTreeMap<String, String> {
        let object = object::File::parse(EBPF_OBJECT).unwrap();
        object
            .symbols()
            .filter(|symbol| symbol.kind() == SymbolKind::Text && symbol.is_global())
            .filter_map(|symbol| {
                let name = symbol.name().ok()?;
                let section = object.section_by_index(symbol.section_index()?).ok()?;
                let section = section.name().ok()?;
                // Functions that are not programs (memcpy and kin) stay in `.text`.
                (section != ".text").then(|| (name.to_owned(), section.to_owned()))
            })
            .collect()
    }

    /// The hook of each LSM program is spelled twice: in the tables of `lsm_programs`, which
    /// the loader attaches by, and in the program's attribute, which names its section. Both
    /// must list the same programs under the same hooks, or a program is attached where its
    /// arguments are read wrongly, or written and never attached.
    #[test]
    fn the_lsm_tables_and_the_object_list_the_same_programs_under_the_same_hooks() {
        let sleepable = [lsm_programs::EXEC_CONTENT, lsm_programs::MAPPING_CONTENT];
        let in_tables: BTreeSet<(String, String)> = every_lsm_program()
            .map(|program| {
                let kind = if sleepable.contains(&program) {
                    "lsm.s"
                } else {
                    "lsm"
                };
                (program.name.to_owned(), format!("{kind}/{}", program.hook))
            })
            .collect();
        let programs = programs_in_object();
        let in_object: BTreeSet<(String, String)> = programs
            .iter()
            .filter(|(_, section)| section.starts_with("lsm/") || section.starts_with("lsm.s/"))
            .map(|(name, section)| (name.clone(), section.clone()))
            .collect();
        let only_in_tables: Vec<_> = in_tables.difference(&in_object).collect();
        let only_in_object: Vec<_> = in_object.difference(&in_tables).collect();
        assert!(
            only_in_tables.is_empty() && only_in_object.is_empty(),
            "in the tables, not so in the object: {only_in_tables:?}; \
             in the object, not so in the tables: {only_in_object:?}"
        );
        assert_eq!(
            programs.get(names::KILL_PROGRAM),
            Some(&format!("tp_btf/{}", names::KILL_TRACEPOINT))
        );
    }
}
