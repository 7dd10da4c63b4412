//! hafs-fuse: mount a hafs filesystem through FUSE.
//!
//! - [`adapter`]: the `fuser::Filesystem` that turns kernel requests into
//!   `hafs_core::fs::Fs` calls (no filesystem rules of its own);
//! - [`mount`]: the mount command shared by `hafs-fuse` and `hafs mount` —
//!   argument parsing, the checks that turn common mistakes into one-line
//!   errors, the client session, and clean shutdown on SIGINT/SIGTERM or an
//!   external unmount.

pub mod adapter;
pub mod mount;
