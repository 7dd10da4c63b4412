//! Creating, removing and listing filesystems.

use crate::codec::{self, Attr, Settings, FS_FORMAT};
use crate::error::{FsError, FsResult};
use crate::keys::{InodeLayout, Keys, ROOT_INO};
use crate::kv::{Database, RangeOptions, Transaction};

/// Default bytes per data chunk, chosen by measurement
/// (`cargo run --release -p hafs-core --example chunk_size`, sqlite relaxed,
/// 2026-11-24): from 4 KiB to 64 KiB, sequential 1 MiB writes and reads of a
/// 64 MiB file stay within noise (~300-450 and ~1350-1750 MiB/s), while 4 KiB
/// random reads fall from ~24k to ~4k IOPS and random overwrites from ~11k
/// to ~1.9k, because every small I/O reads and rewrites a whole chunk.
/// 4 KiB matches the page size of the small-I/O users hafs has (SQLite
/// databases, config files) and FoundationDB's preference for small values.
pub const CHUNK_SIZE_DEFAULT: u64 = 4096;

/// The smallest chunk `mkfs` takes: below it a write transaction's piece
/// ([`crate::ops::write::WRITE_TRANSACTION_BYTES`]) is so many keys that
/// their bytes pass the KV's 10 MB transaction limit (at 16 bytes, one
/// 4 MiB piece is ~11 MB), and every write over a few KiB fails.
pub const CHUNK_SIZE_MIN: u64 = 512;

/// Options of [`mkfs`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MkfsOptions {
    /// Replace an existing filesystem of the same name (its data is lost).
    pub overwrite: bool,
    pub chunk_size: u64,
    /// Owner of the root directory.
    pub root_uid: u32,
    pub root_gid: u32,
    pub root_mode: u32,
    /// Where inodes' keys sit; `None`: the store's choice
    /// ([`InodeLayout::for_store`]).
    pub inode_layout: Option<InodeLayout>,
}

impl Default for MkfsOptions {
    fn default() -> Self {
        MkfsOptions {
            overwrite: false,
            chunk_size: CHUNK_SIZE_DEFAULT,
            root_uid: 0,
            root_gid: 0,
            root_mode: 0o755,
            inode_layout: None,
        }
    }
}

/// Create filesystem `name` with an empty root directory.
pub async fn mkfs(db: &Database, name: &str, options: MkfsOptions) -> FsResult<()> {
    if options.chunk_size < CHUNK_SIZE_MIN
        || options.chunk_size > crate::limits::VALUE_BYTES_MAX as u64
    {
        return Err(FsError::Invalid);
    }
    let layout = options
        .inode_layout
        .unwrap_or_else(|| InodeLayout::for_store(db.backend().spreads_key_ranges()));
    let keys = Keys::new(name, layout);
    let now = db.clock().wall_ns();
    db.run(|txn, maybe_committed| {
        let keys = keys.clone();
        async move {
            let old = txn.get(&keys.settings()).await?;
            if let (true, Some(bytes)) = (maybe_committed, &old) {
                // An earlier attempt committed if the settings carry our
                // creation time: that filesystem is the one we made.
                if codec::decode_settings(bytes).is_ok_and(|s| s.created_ns == now) {
                    return Ok(());
                }
            }
            if old.is_some() && !options.overwrite {
                return Err(FsError::AlreadyFormatted(name.to_string()));
            }
            let generation = match old {
                Some(bytes) => codec::decode_settings(&bytes).map_or(1, |s| s.generation + 1),
                None => 1,
            };
            let (begin, end) = keys.all();
            txn.clear_range(&begin, &end);
            txn.set(&keys.version(), &foundationdb_tuple::pack(&(FS_FORMAT,)));
            let settings = Settings {
                chunk_size: options.chunk_size,
                generation,
                created_ns: now,
                inode_layout: layout,
            };
            txn.set(&keys.settings(), &codec::encode_settings(&settings));
            let root = Attr {
                ino: ROOT_INO,
                mode: libc::S_IFDIR | (options.root_mode & 0o7777),
                uid: options.root_uid,
                gid: options.root_gid,
                size: 0,
                nlink: 2,
                atime_ns: now,
                mtime_ns: now,
                ctime_ns: now,
                rdev: 0,
                flags: 0,
                generation,
                parent: ROOT_INO,
                subvolume: 0,
            };
            txn.set(&keys.attr(ROOT_INO), &codec::encode_attr(&root));
            txn.set(&Keys::registry(name), &[]);
            Ok(())
        }
    })
    .await
}

/// Remove filesystem `name`. Refuses (`Busy`) while it holds anything but an
/// empty root or while clients are attached, unless `force`.
pub async fn rmfs(db: &Database, name: &str, force: bool) -> FsResult<()> {
    db.run(|txn, maybe_committed| async move {
        // The layout comes from the settings this transaction reads: a
        // `mkfs --overwrite` in between cannot make the emptiness check
        // look at another layout's root.
        let Some(bytes) = txn.get(&Keys::settings_of(name)).await? else {
            if maybe_committed {
                // An earlier attempt removed it.
                return Ok(());
            }
            return Err(FsError::NotFormatted(name.to_string()));
        };
        let keys = match codec::decode_settings(&bytes) {
            Ok(settings) => Keys::new(name, settings.inode_layout),
            // Forced, everything goes, and `Keys::all` is the same in
            // every layout: unreadable settings do not stop it.
            Err(_) if force => Keys::new(name, InodeLayout::Spread),
            Err(e) => return Err(e),
        };
        if !force {
            if holds_any(&txn, keys.dirents(ROOT_INO)).await? {
                return Err(FsError::Busy(format!(
                    "filesystem {name:?} is not empty (use force)"
                )));
            }
            if holds_any(&txn, keys.sessions()).await? {
                return Err(FsError::Busy(format!(
                    "filesystem {name:?} has attached clients (use force)"
                )));
            }
        }
        let (begin, end) = keys.all();
        txn.clear_range(&begin, &end);
        txn.clear(&Keys::registry(name));
        Ok(())
    })
    .await
}

/// Whether any key lies in `[begin, end)` (reads at most one).
async fn holds_any(txn: &Transaction, (begin, end): (Vec<u8>, Vec<u8>)) -> FsResult<bool> {
    let first = RangeOptions {
        limit: 1,
        ..Default::default()
    };
    Ok(!txn.get_range(&begin, &end, first).await?.kvs.is_empty())
}

/// Names of every filesystem in the database, sorted.
pub async fn list_filesystems(db: &Database) -> FsResult<Vec<String>> {
    db.read(|txn| async move {
        let (begin, end) = Keys::registry_range();
        let all = txn.get_range(&begin, &end, RangeOptions::default()).await?;
        all.kvs
            .iter()
            .map(|(k, _)| {
                Keys::registry_name(k).ok_or_else(|| FsError::Corrupted("registry key".into()))
            })
            .collect()
    })
    .await
}

/// The settings of filesystem `name`, or `NotFormatted`.
pub async fn read_settings(db: &Database, name: &str) -> FsResult<Settings> {
    let key = Keys::settings_of(name);
    db.read(|txn| {
        let key = key.clone();
        async move {
            match txn.get(&key).await? {
                Some(bytes) => codec::decode_settings(&bytes),
                None => Err(FsError::NotFormatted(name.to_string())),
            }
        }
    })
    .await
}

/// The keys of filesystem `name` as its settings lay them out, and the
/// settings; `NotFormatted` if there is no such filesystem. Every tool
/// that touches an existing filesystem's inodes starts here.
pub async fn open_keys(db: &Database, name: &str) -> FsResult<(Keys, Settings)> {
    let settings = read_settings(db, name).await?;
    Ok((Keys::new(name, settings.inode_layout), settings))
}
