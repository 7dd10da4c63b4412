//! `fsck`: scan a whole filesystem and report every broken invariant.
//!
//! Invariants checked (each violation is one [`Violation`]):
//! - every value decodes (`Corrupted`);
//! - every directory entry points to an existing inode of the entry's type;
//! - a file's nlink equals the number of entries naming it; a directory is
//!   named by exactly one entry (the root by none), its `parent` is the
//!   directory holding that entry, its nlink is 2 + its subdirectories, and
//!   following parents from any directory reaches the root (no cycle);
//! - every inode is reachable from the root, or is in the unlinked set with
//!   nlink 0 (and every unlinked-set member exists and has nlink 0);
//! - a file's chunks lie within its size and are at most a chunk long, and
//!   no size exceeds the largest a file may have (`ops::data::FILE_BYTES_MAX`);
//! - symlinks, and only symlinks, have a target;
//! - subvolume counters equal the sums recomputed from the inodes;
//! - every lock, lock waiter and open record belongs to an attached client,
//!   and no detached client has records left (an eviction that stopped
//!   midway; `hafs gc` finishes it).
//!
//! The scan reads in pages, one short transaction each, so it works on a
//! filesystem of any size; run it on a quiescent filesystem (or expect
//! reports from concurrent changes).

use std::collections::{BTreeMap, BTreeSet};

use crate::codec::{self, Attr, FileType};
use crate::error::{FsError, FsResult};
use crate::keys::{Counter, Keys, ROOT_INO};
use crate::kv::{key_after, Database, RangeOptions};
use crate::ops::data::FILE_BYTES_MAX;

/// Keys read per transaction.
const PAGE_KEYS: usize = 2_000;

/// One broken invariant.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Violation {
    pub ino: u64,
    pub problem: String,
}

/// The outcome of a scan.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Report {
    pub inodes: u64,
    pub entries: u64,
    pub keys: u64,
    pub violations: Vec<Violation>,
}

impl Report {
    pub fn is_clean(&self) -> bool {
        self.violations.is_empty()
    }
}

/// What the scan collected about inodes.
#[derive(Debug, Default)]
struct Scan {
    attrs: BTreeMap<u64, Attr>,
    /// (dir, name) → (child, type)
    entries: Vec<(u64, Vec<u8>, u64, FileType)>,
    /// ino → (chunk index, length)
    chunks: BTreeMap<u64, Vec<(u64, usize)>>,
    symlinks: BTreeSet<u64>,
    /// subvolume → (bytes, inodes) as stored
    counters: BTreeMap<u64, (i64, i64)>,
    unlinked: BTreeSet<u64>,
    /// (inode, client) of every lock, waiter and open record.
    holders: BTreeSet<(u64, String)>,
    report: Report,
}

impl Scan {
    fn violation(&mut self, ino: u64, problem: impl Into<String>) {
        self.report.violations.push(Violation {
            ino,
            problem: problem.into(),
        });
    }
}

/// Check filesystem `name`. `progress` is called with the number of keys
/// scanned so far after each page.
pub async fn check_invariants(
    db: &Database,
    name: &str,
    mut progress: impl FnMut(u64),
) -> FsResult<Report> {
    let (keys, settings) = crate::fs::format::open_keys(db, name).await?;
    let mut scan = Scan::default();
    let (begin, end) = keys.inodes_range();
    scan_range(
        db,
        &begin,
        &end,
        &mut progress,
        &mut scan,
        |scan, key, value| classify_inode_key(&keys, scan, key, value),
    )
    .await?;
    let (begin, end) = keys.unlinked_all();
    scan_range(
        db,
        &begin,
        &end,
        &mut progress,
        &mut scan,
        |scan, key, value| match keys.unlinked_ino(key) {
            Some(ino) => {
                scan.unlinked.insert(ino);
                if crate::ops::parked_until(value).is_none() {
                    scan.violation(ino, "undecodable unlinked-set value");
                }
            }
            None => scan.violation(0, "undecodable unlinked-set key"),
        },
    )
    .await?;
    check_links(&mut scan);
    check_data(&mut scan, settings.chunk_size);
    check_counters(&mut scan);
    check_clients(db, &keys, &mut scan, &mut progress).await?;
    Ok(scan.report)
}

async fn check_clients(
    db: &Database,
    keys: &Keys,
    scan: &mut Scan,
    progress: &mut impl FnMut(u64),
) -> FsResult<()> {
    let mut attached = BTreeSet::new();
    let (begin, end) = keys.sessions();
    scan_range(
        db,
        &begin,
        &end,
        progress,
        scan,
        |scan, key, value| match keys.session_id(key) {
            Some(id) => {
                if let Err(e) = codec::decode_client(&id, value) {
                    scan.violation(0, e.to_string());
                }
                attached.insert(id);
            }
            None => scan.violation(0, "undecodable client registration key"),
        },
    )
    .await?;
    for (ino, client) in std::mem::take(&mut scan.holders) {
        if !attached.contains(&client) {
            scan.violation(
                ino,
                format!("lock or open record of detached client {client}"),
            );
        }
    }
    let mut detached = BTreeSet::new();
    let (begin, end) = keys.clients_with_keys();
    scan_range(
        db,
        &begin,
        &end,
        progress,
        scan,
        |scan, key, value| match keys.client_of_key(key) {
            Some(id) => {
                if key == keys.client_expiry(&id).as_slice() {
                    if let Err(e) = codec::decode_expiry(Some(value)) {
                        scan.violation(0, format!("client {id}: {e}"));
                    }
                }
                if !attached.contains(&id) {
                    detached.insert(id);
                }
            }
            None => scan.violation(0, "undecodable client key"),
        },
    )
    .await?;
    for id in detached {
        scan.violation(0, format!("records left by detached client {id} (run gc)"));
    }
    Ok(())
}

async fn scan_range(
    db: &Database,
    begin: &[u8],
    end: &[u8],
    progress: &mut impl FnMut(u64),
    scan: &mut Scan,
    mut visit: impl FnMut(&mut Scan, &[u8], &[u8]),
) -> FsResult<()> {
    let mut cursor = begin.to_vec();
    loop {
        let page = db
            .read(|txn| {
                let cursor = cursor.clone();
                async move {
                    let options = RangeOptions {
                        limit: PAGE_KEYS,
                        snapshot: true,
                        ..RangeOptions::default()
                    };
                    Ok::<_, FsError>(txn.get_range(&cursor, end, options).await?)
                }
            })
            .await?;
        for (key, value) in &page.kvs {
            visit(scan, key, value);
        }
        scan.report.keys += page.kvs.len() as u64;
        progress(scan.report.keys);
        match (page.more, page.kvs.last()) {
            (true, Some((last, _))) => cursor = key_after(last),
            _ => return Ok(()),
        }
    }
}

/// File one key of the ("ino", ...) space into the scan.
fn classify_inode_key(keys: &Keys, scan: &mut Scan, key: &[u8], value: &[u8]) {
    let Some((ino, kind)) = keys.inode_key_kind(key) else {
        scan.violation(0, format!("undecodable inode key {key:?}"));
        return;
    };
    match kind.as_str() {
        "attr" => match codec::decode_attr(ino, value) {
            Ok(attr) => {
                scan.attrs.insert(ino, attr);
            }
            Err(e) => scan.violation(ino, e.to_string()),
        },
        "dirent" => match (keys.dirent_name(ino, key), codec::decode_dirent(value)) {
            (Some(name), Ok(d)) => scan.entries.push((ino, name, d.ino, d.kind)),
            (_, Err(e)) => scan.violation(ino, e.to_string()),
            (None, _) => scan.violation(ino, "undecodable entry name"),
        },
        "data" => match keys.chunk_index(ino, key) {
            Some(index) => scan
                .chunks
                .entry(ino)
                .or_default()
                .push((index, value.len())),
            None => scan.violation(ino, "undecodable chunk key"),
        },
        "link" => {
            scan.symlinks.insert(ino);
        }
        "count" => match (
            keys.subvolume_counter_kind(ino, key),
            codec::decode_counter(Some(value)),
        ) {
            (Some(what), Ok(n)) => {
                let sums = scan.counters.entry(ino).or_default();
                match what {
                    Counter::Bytes => sums.0 = sums.0.wrapping_add(n),
                    Counter::Inodes => sums.1 = sums.1.wrapping_add(n),
                }
            }
            _ => scan.violation(ino, "undecodable subvolume counter"),
        },
        "open" => match keys.open_client(ino, key) {
            Some(client) => {
                scan.holders.insert((ino, client));
            }
            None => scan.violation(ino, "undecodable open record key"),
        },
        "lock" => match (keys.lock_id(ino, key), codec::decode_lock(value)) {
            (Some((client, _, start)), Ok(lock)) if start < lock.end => {
                scan.holders.insert((ino, client));
            }
            (_, Err(e)) => scan.violation(ino, e.to_string()),
            _ => scan.violation(ino, "undecodable or empty lock"),
        },
        "lockq" => match codec::decode_waiter(value) {
            Ok(w) => {
                scan.holders.insert((ino, w.client));
            }
            Err(e) => scan.violation(ino, e.to_string()),
        },
        "lockseq" | "lockver" => {
            if let Err(e) = codec::decode_counter(Some(value)) {
                scan.violation(ino, e.to_string());
            }
        }
        "xattr" => {}
        other => scan.violation(ino, format!("unknown inode key kind {other:?}")),
    }
}

fn check_links(scan: &mut Scan) {
    let mut names: BTreeMap<u64, Vec<u64>> = BTreeMap::new();
    let mut subdirs: BTreeMap<u64, u32> = BTreeMap::new();
    let entries = std::mem::take(&mut scan.entries);
    scan.report.entries = entries.len() as u64;
    for (dir, name, child, kind) in &entries {
        match scan.attrs.get(child) {
            None => scan.violation(
                *dir,
                format!("entry {name:?} points to missing inode {child}"),
            ),
            Some(attr) if attr.kind().ok() != Some(*kind) => scan.violation(
                *dir,
                format!("entry {name:?} has type {kind:?}, inode {child} does not"),
            ),
            Some(_) => {}
        }
        names.entry(*child).or_default().push(*dir);
        if *kind == FileType::Directory {
            *subdirs.entry(*dir).or_default() += 1;
        }
    }
    scan.report.inodes = scan.attrs.len() as u64;
    let attrs = std::mem::take(&mut scan.attrs);
    for (ino, attr) in &attrs {
        let holders = names.get(ino).map_or(&[][..], Vec::as_slice);
        check_inode_links(scan, attr, holders, subdirs.get(ino).copied().unwrap_or(0));
        if attr.is_dir() && !reaches_root(&attrs, *ino) {
            scan.violation(
                *ino,
                "directory's parent chain does not reach the root (cycle or orphan)",
            );
        }
    }
    for ino in scan.unlinked.clone() {
        match attrs.get(&ino) {
            None => scan.violation(ino, "unlinked-set member does not exist"),
            Some(a) if a.nlink != 0 => scan.violation(ino, "unlinked-set member still has links"),
            Some(_) => {}
        }
    }
    scan.attrs = attrs;
}

fn check_inode_links(scan: &mut Scan, attr: &Attr, holders: &[u64], subdirs: u32) {
    let ino = attr.ino;
    if holders.is_empty() && ino != ROOT_INO && !scan.unlinked.contains(&ino) {
        scan.violation(ino, "unreachable inode not in the unlinked set");
    }
    if attr.is_dir() {
        let expected_holders = usize::from(ino != ROOT_INO);
        if holders.len() != expected_holders
            && !(holders.is_empty() && scan.unlinked.contains(&ino))
        {
            scan.violation(ino, format!("directory named by {} entries", holders.len()));
        }
        if let Some(&holder) = holders.first() {
            if holder != attr.parent {
                scan.violation(
                    ino,
                    format!("parent is {} but entry is in {holder}", attr.parent),
                );
            }
        }
        let expected = if holders.is_empty() && ino != ROOT_INO {
            0
        } else {
            2 + subdirs
        };
        if attr.nlink != expected {
            scan.violation(ino, format!("directory nlink {} != {expected}", attr.nlink));
        }
    } else if attr.nlink as usize != holders.len() {
        scan.violation(
            ino,
            format!("nlink {} != {} entries", attr.nlink, holders.len()),
        );
    }
    let is_symlink = attr.mode & libc::S_IFMT == libc::S_IFLNK;
    if is_symlink != scan.symlinks.contains(&ino) {
        scan.violation(
            ino,
            "symlink target present on a non-symlink or missing on a symlink",
        );
    }
}

/// Follow `parent` from a directory; true if the root is reached.
fn reaches_root(attrs: &BTreeMap<u64, Attr>, mut ino: u64) -> bool {
    for _ in 0..=attrs.len() {
        if ino == ROOT_INO {
            return true;
        }
        match attrs.get(&ino) {
            Some(a) if a.is_dir() && a.nlink > 0 => ino = a.parent,
            // An unlinked, still-open directory has no chain: not a cycle.
            Some(a) if a.is_dir() => return true,
            _ => return false,
        }
    }
    false
}

fn check_data(scan: &mut Scan, chunk_size: u64) {
    // No operation makes a size past the maximum; one that is there was
    // written by something else (and would overflow sums below it).
    let too_big: Vec<(u64, u64)> = (scan.attrs.values())
        .filter(|a| a.size > FILE_BYTES_MAX)
        .map(|a| (a.ino, a.size))
        .collect();
    for (ino, size) in too_big {
        scan.violation(
            ino,
            format!("size {size} beyond the largest file, {FILE_BYTES_MAX}"),
        );
    }
    let chunks = std::mem::take(&mut scan.chunks);
    for (ino, list) in chunks {
        let Some(size) = scan
            .attrs
            .get(&ino)
            .map(|a| (a.size, a.mode & libc::S_IFMT == libc::S_IFREG))
        else {
            scan.violation(ino, "data chunks of a missing inode");
            continue;
        };
        let (size, regular) = size;
        if !regular {
            scan.violation(ino, "data chunks on a non-regular file");
        }
        for (index, len) in list {
            let start = index.saturating_mul(chunk_size);
            if len as u64 > chunk_size || start.saturating_add(len as u64) > size {
                scan.violation(
                    ino,
                    format!("chunk {index} ({len} bytes) beyond size {size}"),
                );
            }
        }
    }
}

fn check_counters(scan: &mut Scan) {
    let mut expected: BTreeMap<u64, (i64, i64)> = BTreeMap::new();
    for attr in scan.attrs.values() {
        // An unlinked inode whose subvolume's root is gone counts nowhere
        // (`ops::account`): `rm -rf` of a subvolume leaves its files parked
        // for their grace after the root and its totals are deleted.
        let orphan = attr.nlink == 0 && !scan.attrs.contains_key(&attr.subvolume);
        if attr.subvolume != 0 && !orphan {
            let sums = expected.entry(attr.subvolume).or_default();
            // Wrapping, as the stored counter's atomic adds are: a size
            // past the maximum (reported by `check_data`) must not panic.
            sums.0 = sums.0.wrapping_add(attr.size as i64);
            sums.1 += 1;
        }
    }
    let stored = std::mem::take(&mut scan.counters);
    let subvolumes: BTreeSet<u64> = expected.keys().chain(stored.keys()).copied().collect();
    for subvolume in subvolumes {
        let want = expected.get(&subvolume).copied().unwrap_or_default();
        let have = stored.get(&subvolume).copied().unwrap_or_default();
        if want != have {
            scan.violation(
                subvolume,
                format!("subvolume totals (bytes, inodes) stored {have:?}, recomputed {want:?}"),
            );
        }
    }
}
