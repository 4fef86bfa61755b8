//! The daemon's control socket: a UNIX stream socket beside its status document, root's only,
//! on which `blocker stop` asks it to stop and `blocker policy` asks it to change its policy
//! directory. The daemon does that work itself, so no other process needs to write its policy
//! directory or signal it.

pub mod client;
pub mod protocol;
pub mod server;
