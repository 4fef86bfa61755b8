//! The tests against the host's kernel (feature `host-kernel`), which refuses BPF LSM programs:
//! the `kill` backend, with test-made files only. One module per area; `cargo xtask test` runs
//! them all in one process, one test at a time (see tests/README.md).

mod bounded;
mod control;
mod ecs;
mod flatpak;
mod hostile_names;
mod kill;
mod metrics;
mod notify;
mod refresh;
mod status;
mod sync;
