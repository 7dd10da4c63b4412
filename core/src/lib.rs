//! hafs-core: everything hafs knows about storage and filesystems, with no
//! knowledge of FUSE and no access to the OS clock or OS randomness in its
//! logic (both are injected, so the simulator can drive them).
//!
//! Layout:
//! - [`kv`]: the FoundationDB-semantics transactional KV layer and its
//!   backends (`mem`, `sqlite`, `fdb`);
//! - [`clock`]: injected time;
//! - [`limits`]: every size and time limit, in one place;
//! - [`keys`]: the key schema; [`codec`]: value encodings;
//! - [`error`]: [`error::FsError`] and its errno mapping.

pub mod buggify;
pub mod cache;
pub mod clock;
pub mod codec;
pub mod ctx;
pub mod error;
pub mod fs;
pub mod fsck;
pub mod keys;
pub mod kv;
pub mod limits;
pub mod ops;
pub mod pagecache;
pub mod perm;
pub mod planted;
pub mod session;
