//! blocker: refuses to run the binaries a policy bans.

mod daemon;
mod events;
mod files;
mod identity;
mod kernel;
mod policy;
mod resolve;
mod scan;
mod sources;

use std::{path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};

use crate::kernel::BackendChoice;

#[derive(Parser)]
#[command(version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Enforce the policies until SIGINT or SIGTERM; events go to stdout as JSON lines.
    Run {
        /// Directory of policy files (*.toml).
        #[arg(long, default_value = "policies")]
        policy_dir: PathBuf,
        /// How denies are enforced: `lsm` refuses the exec with EPERM, `kill` kills the
        /// process before the new program runs, `auto` picks `lsm` where the kernel allows it.
        #[arg(long, value_enum, default_value_t = BackendChoice::Auto)]
        backend: BackendChoice,
        /// Seconds between lookups of the banned paths, which follow deleted and replaced files.
        #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..))]
        refresh_interval: u64,
        /// Bytes of kernel memory for events waiting to be read: a power of two, at least the
        /// page size. When it is full, events are counted as lost; execs are still enforced.
        #[arg(long, default_value_t = blocker_common::EVENTS_RING_BYTES, value_parser = parse_ring_size)]
        event_buffer_bytes: u32,
    },
    /// Check policy files and show what each path names on this machine; loads nothing.
    Check {
        #[arg(default_value = "policies")]
        policy_dir: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let result = match cli.command {
        Command::Run {
            policy_dir,
            backend,
            refresh_interval,
            event_buffer_bytes,
        } => daemon::run(daemon::RunOptions {
            policy_dir,
            backend,
            refresh_interval: Duration::from_secs(refresh_interval),
            event_buffer_bytes,
        }),
        Command::Check { policy_dir } => check(&policy_dir),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("blocker: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn parse_ring_size(text: &str) -> Result<u32, String> {
    let bytes: u32 = text.parse().map_err(|error| format!("{error}"))?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u32;
    if bytes.is_power_of_two() && bytes >= page {
        Ok(bytes)
    } else {
        Err(format!(
            "must be a power of two of at least {page} (the page size)"
        ))
    }
}

fn check(policy_dir: &std::path::Path) -> anyhow::Result<()> {
    let policy = policy::load_dir(policy_dir)?;
    let resolution = resolve::resolve(&policy);
    for header in &policy.policies {
        println!(
            "{}: policy `{}` ({})",
            header.file.display(),
            header.name,
            header.mode
        );
    }
    for (key, path) in &resolution.paths {
        let entry = &resolution.entries[key];
        let rule = resolution
            .rule(entry.rule_id)
            .map_or("?", |rule| rule.id.as_str());
        let (major, minor) = identity::split_kernel_device_number(key.dev);
        println!(
            "{rule}: {} → device {major}:{minor} inode {}",
            path.display(),
            key.ino
        );
    }
    for unresolved in &resolution.unresolved {
        println!(
            "{}: {} → not banned: {}",
            unresolved.rule,
            unresolved.path.display(),
            unresolved.error
        );
    }
    println!(
        "{} rules, {} files banned, {} paths not found",
        resolution.rules.len(),
        resolution.entries.len(),
        resolution.unresolved.len()
    );
    Ok(())
}
