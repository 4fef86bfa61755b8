//! blocker: refuses to run the binaries a policy bans. The library holds everything but the
//! command line (`main.rs`), so that the fuzz targets in `fuzz/` reach the parsers.

pub mod background;
pub mod budget;
pub mod cgroups;
pub mod control;
pub mod control_socket;
pub mod critical;
pub mod daemon;
pub mod escape;
pub mod event_feed;
pub mod event_log;
pub mod events;
pub mod files;
pub mod fuzzing;
pub mod identity;
pub mod inspect;
pub mod jobs;
pub mod kernel;
pub mod listed;
pub mod log_lines;
pub mod lookup;
pub mod mounts;
pub mod pidfd;
pub mod policy;
pub mod prepare;
pub mod reload;
pub mod resolve;
pub mod scan;
pub mod sinks;
pub mod sources;
pub mod status;
pub mod sync;
pub mod systemd;
pub mod unload;
pub mod watch;
