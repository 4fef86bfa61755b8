//! Exec checks: the LSM ones refuse with EPERM, the kill backend's tracepoint kills the process
//! before the new image runs.

use aya_ebpf::{
    helpers::bpf_send_signal,
    macros::{btf_tracepoint, lsm},
    programs::{BtfTracePointContext, LsmContext},
    EbpfContext,
};
use aya_log_ebpf::debug;
use blocker_common::{
    counter, setting, Action, Backend, FileKey, HookArgument, Operation, FILELESS_RULE_ID,
    UNKNOWN_CONTENT_HASH,
};

use crate::{
    hook_arguments,
    kernel_types::{Bprm, File, Inode},
    maps::{increment, setting, BANNED_FILES},
    report::{lsm_verdict, report, report_hashed, Ban, Occurrence, ALLOW},
    trusted_path::unallowed,
    verdict_cache,
};

const SIGKILL: u32 = 9;

/// The exec check by identity, for kernels that cannot hash files for BPF.
#[lsm(hook = "bprm_check_security")]
pub fn bprm_check_security(ctx: LsmContext) -> i32 {
    let Some(bprm) = hook_arguments::bprm(&ctx, HookArgument::BprmCheckSecurityBprm) else {
        return ALLOW;
    };
    check_exec(&ctx, bprm, Backend::Lsm).map_or(ALLOW, lsm_verdict)
}

/// The exec check by identity, then by the SHA-256 of the file against `BANNED_HASHES`
/// (through the verdict cache), then the fileless setting, lockdown and trusted paths. Sleepable because
/// `bpf_ima_file_hash` may read the file; the kernel then allows only array, hash, LRU and ring
/// buffer maps here, which is all this uses.
#[lsm(hook = "bprm_check_security", sleepable)]
pub fn bprm_check_content(ctx: LsmContext) -> i32 {
    let Some(bprm) = hook_arguments::bprm(&ctx, HookArgument::BprmCheckSecurityBprm) else {
        return ALLOW;
    };
    // SAFETY: `bprm` is the hook's argument as the kernel passed it.
    let exec_file = unsafe { bprm.trusted_file() };
    let Some(file) = File::new(exec_file as *const u8) else {
        return ALLOW;
    };
    let Some(inode) = file.inode() else {
        return ALLOW;
    };
    let Some(key) = inode.key() else {
        return ALLOW;
    };
    let mut sha256 = UNKNOWN_CONTENT_HASH;
    let ban = strictest(banned_identity(&ctx, inode, key), || {
        verdict_cache::banned_content(
            exec_file,
            inode,
            key,
            &verdict_cache::EXEC_COUNTERS,
            &mut sha256,
        )
    })
    .or_else(|| fileless_ban(inode, key));
    let ban = strictest(ban, || unallowed(file, inode, key));
    let Some(ban) = ban else {
        return ALLOW;
    };
    report_hashed(&ban, &exec_occurrence(bprm, Backend::Lsm), &sha256);
    lsm_verdict(ban.entry.action)
}

#[btf_tracepoint(function = "sched_process_exec")]
pub fn sched_process_exec(ctx: BtfTracePointContext) -> i32 {
    // TP_PROTO(struct task_struct *p, pid_t old_pid, struct linux_binprm *bprm): unchanged
    // since tracepoints gained BTF.
    let Some(bprm) = Bprm::new(ctx.arg(2)) else {
        return 0;
    };
    if check_exec(&ctx, bprm, Backend::Kill) == Some(Action::Deny.wire()) {
        // The exec is past its point of no return; the pending SIGKILL is delivered before the
        // new image returns to userspace, so none of its code runs.
        // SAFETY: signals the current task, which is what the helper does.
        unsafe { bpf_send_signal(SIGKILL) };
    }
    0
}

/// Looks the file of `bprm` up in the ban list, then applies the fileless setting to a file
/// with no name on disk, lockdown and the trusted-path setting; reports a hit and returns its
/// action.
fn check_exec<C: EbpfContext>(ctx: &C, bprm: Bprm, backend: Backend) -> Option<u32> {
    let file = bprm.file()?;
    let inode = file.inode()?;
    let key = inode.key()?;
    let ban = banned_identity(ctx, inode, key).or_else(|| fileless_ban(inode, key));
    let ban = strictest(ban, || unallowed(file, inode, key))?;
    report(&ban, &exec_occurrence(bprm, backend));
    Some(ban.entry.action)
}

fn exec_occurrence(bprm: Bprm, backend: Backend) -> Occurrence {
    Occurrence {
        backend,
        operation: Operation::Exec,
        detail: 0,
        exec: Some(bprm),
        mapped_file: core::ptr::null_mut(),
    }
}

/// The ban of `inode` (identity `key`) from `BANNED_FILES`, if any and if its generation
/// matches.
pub fn banned_identity<C: EbpfContext>(ctx: &C, inode: Inode, key: FileKey) -> Option<Ban> {
    // SAFETY: the entry is copied out at once.
    let entry = *unsafe { BANNED_FILES.get(&key) }?;
    if !entry.matches_generation(inode.generation()?) {
        increment(counter::GENERATION_MISMATCH);
        return None;
    }
    debug!(
        ctx,
        "banned file dev={} ino={} rule={}", key.dev, key.ino, entry.rule_id
    );
    Some(Ban::new(key, entry))
}

/// The stricter of `first` and what `then` finds: a deny as soon as either says so, otherwise
/// the first that names the file. So an `audit` rule naming a file never hides a `deny` content
/// rule for the same bytes, nor an audited ban a refusal by lockdown or for an untrusted path. Both are made whole (`Ban::NOTHING` for none) before they are
/// compared: merging an `Option` whose payload is unset leaves a register the verifier refuses
/// to read.
#[inline(always)]
pub fn strictest(first: Option<Ban>, then: impl FnOnce() -> Option<Ban>) -> Option<Ban> {
    let first = first.unwrap_or(Ban::NOTHING);
    if first.denies() {
        return Some(first);
    }
    let second = then().unwrap_or(Ban::NOTHING);
    if second.denies() {
        return Some(second);
    }
    let chosen = if first.names_a_rule() { first } else { second };
    chosen.names_a_rule().then_some(chosen)
}

/// The fileless setting's ban of `inode` if it has no link on disk (memfd, `O_TMPFILE`,
/// deleted): no rule can name such a file.
pub fn fileless_ban(inode: Inode, key: FileKey) -> Option<Ban> {
    let fileless = setting(setting::FILELESS);
    if fileless == Action::Allow.wire() || inode.links()? != 0 {
        return None;
    }
    Some(Ban::by_rule(key, FILELESS_RULE_ID, fileless))
}
