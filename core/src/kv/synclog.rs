//! `synclog`: the file that makes a lone SQLite backend's buffered commits
//! durable — a relaxed backend's `fsync`, each durable commit — without
//! writing its memtable into SQLite first (`<database>-synclog`, next to
//! the lock file).
//!
//! A backend that has its database to itself keeps commits in a
//! memtable and writes them to SQLite every few milliseconds without
//! syncing ([`super::sqlite`], write-behind). Making them durable through
//! SQLite means one SQLite transaction for everything buffered, then an
//! fdatasync of a WAL that a whole batch of b-tree pages went into. This log
//! instead takes the commits acknowledged since the last durable point,
//! already encoded as they were acknowledged ([`RecordBuf`]), as one record
//! and syncs it: one page, usually, overwriting blocks written full of zeros
//! when the file was made, so the fdatasync never changes the file's size.
//!
//! Format, all integers little-endian:
//! - page 0, the **header**: `hafslog1`, the salt (u64), `active` (u8), and
//!   a CRC-32 of those 17 bytes; at byte 64, zeros or a breaker's **fence
//!   mark** (`hafsfenc`, [`fence`]), outside the checksum;
//! - from page 1 on, **records**, each starting on a page boundary:
//!   `hrec`, the salt, the payload length (u32), a CRC-32 of the salt, the
//!   length, the commit count and the payload, the commit count (u32), then
//!   the payload: each commit's version (u64), its mutation count (u32) and
//!   its mutations (a tag byte, then length-prefixed keys and values).
//!
//! The log is read from page 1 up to the first record that does not carry
//! the header's salt or whose checksum fails (a torn write, or what an
//! earlier salt left behind): like SQLite's WAL, a checksummed prefix.
//! Every start gets a new salt, so nothing written before it counts.
//!
//! Who reads it: every backend that opens the database, before its first
//! transaction ([`read_active`]). It applies the commits SQLite lacks (those
//! above its newest version), makes the WAL durable, then **retires** the
//! log ([`retire`]). And the writer itself, after each append: page 0, for a
//! breaker's mark ([`SyncLog::fenced`]). The invariants the SQLite backend
//! keeps so that this is right are written where it keeps them
//! (`sqlite.rs`, `SyncLog` use).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use super::backend::Mutation;
use super::Version;

/// Size of the log file. Written full of zeros once, so a record's
/// fdatasync only writes data blocks. A record takes at least one page:
/// about 2,000 syncs fit before the log must start over.
pub const LOG_BYTES: u64 = 8 << 20;
/// Pending commits holding more bytes than this are made durable through
/// SQLite instead (`sqlite::log_pending` stops encoding them): logged, big
/// writes reach the disk three times (log, WAL, database file) instead of
/// twice. At 1 MiB, a durable mount's sequential 64 MiB write ran at 0.75×
/// the speed of committing straight to SQLite (`hafs bench dir --only io`,
/// 3 alternating rounds); metadata changes and small files take a few KiB.
/// Replay reads records of any size (earlier builds wrote up to 1 MiB).
pub const RECORD_MAX: usize = 64 << 10;
const PAGE: u64 = 4096;
const HEADER_MAGIC: [u8; 8] = *b"hafslog1";
/// Magic, salt, `active`, CRC: the bytes of page 0 that [`read_header`]
/// checks.
const HEADER_LEN: usize = 21;
/// Where in page 0 a breaker leaves its [`fence`] mark: past the checked
/// header, so writing it can never make the header unreadable (a torn
/// write leaves the header's bytes as they were), and replay reads a marked
/// log as any other. Builds before the mark (SQLite format 2) are kept out
/// of the database: they would neither write nor keep it (`sqlite.rs`,
/// `FORMAT_VERSION`).
const FENCE_AT: u64 = 64;
const FENCE_MARK: [u8; 8] = *b"hafsfenc";
const RECORD_MAGIC: [u8; 4] = *b"hrec";
/// magic 4, salt 8, payload length 4, CRC 4, commit count 4.
const RECORD_HEAD: usize = 24;

const SET: u8 = 0;
const CLEAR: u8 = 1;
const CLEAR_RANGE: u8 = 2;
const ADD: u8 = 3;

/// The log's name for the database at `db` (the resolved path).
pub fn log_path(db: &Path) -> PathBuf {
    let mut name = db.as_os_str().to_owned();
    name.push("-synclog");
    PathBuf::from(name)
}

/// Commits encoded for one record, appended as they are acknowledged.
#[derive(Debug)]
pub struct RecordBuf {
    bytes: Vec<u8>,
    commits: u32,
}

impl Default for RecordBuf {
    fn default() -> Self {
        RecordBuf {
            bytes: vec![0; RECORD_HEAD],
            commits: 0,
        }
    }
}

impl RecordBuf {
    pub fn push(&mut self, version: Version, mutations: &[Mutation]) {
        let out = &mut self.bytes;
        out.extend_from_slice(&version.to_le_bytes());
        out.extend_from_slice(&len32(mutations.len()).to_le_bytes());
        for m in mutations {
            match m {
                Mutation::Set { key, value } => {
                    out.push(SET);
                    put_bytes(out, key);
                    put_bytes(out, value);
                }
                Mutation::Clear { key } => {
                    out.push(CLEAR);
                    put_bytes(out, key);
                }
                Mutation::ClearRange { begin, end } => {
                    out.push(CLEAR_RANGE);
                    put_bytes(out, begin);
                    put_bytes(out, end);
                }
                Mutation::Add { key, delta } => {
                    out.push(ADD);
                    put_bytes(out, key);
                    out.extend_from_slice(&delta.to_le_bytes());
                }
            }
        }
        self.commits += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.commits == 0
    }

    /// Bytes encoded so far.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }

    /// The record as written: head filled in, padded to whole pages.
    fn seal(&mut self, salt: u64) -> &[u8] {
        let payload_len = len32(self.bytes.len() - RECORD_HEAD);
        let b = &mut self.bytes;
        b[0..4].copy_from_slice(&RECORD_MAGIC);
        b[4..12].copy_from_slice(&salt.to_le_bytes());
        b[12..16].copy_from_slice(&payload_len.to_le_bytes());
        b[20..24].copy_from_slice(&self.commits.to_le_bytes());
        let crc = record_crc(&b[4..16], &b[20..]);
        b[16..20].copy_from_slice(&crc.to_le_bytes());
        let padded = b.len().div_ceil(PAGE as usize) * PAGE as usize;
        b.resize(padded, 0);
        b
    }
}

fn len32(n: usize) -> u32 {
    // Keys and values are far below 4 GiB (the KV limits), and so is a
    // record (`RECORD_MAX`).
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn put_bytes(out: &mut Vec<u8>, bytes: &[u8]) {
    out.extend_from_slice(&len32(bytes.len()).to_le_bytes());
    out.extend_from_slice(bytes);
}

fn record_crc(salt_and_len: &[u8], count_and_payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(salt_and_len);
    h.update(count_and_payload);
    h.finalize()
}

/// The log file of a backend that logs its syncs.
#[derive(Debug)]
pub struct SyncLog {
    file: File,
    salt: u64,
    /// Where the next record goes.
    tail: u64,
    /// Every commit up to this version is durable (in the log, or in
    /// SQLite's synced WAL).
    pub through: Version,
}

impl SyncLog {
    /// Open the log at `path` (made full of zeros if missing or short) and
    /// start it over. Every commit up to `through` must be durable in
    /// SQLite already: the log holds only what comes after. `now_ns` (wall
    /// clock) seeds the salt of a log without a valid header.
    pub fn start(path: &Path, through: Version, now_ns: u64) -> io::Result<SyncLog> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(path)?;
        if file.metadata()?.len() < LOG_BYTES {
            let zeros = vec![0u8; 1 << 20];
            let mut at = 0;
            while at < LOG_BYTES {
                file.write_all_at(&zeros, at)?;
                at += zeros.len() as u64;
            }
        }
        // Every start, not only the one that made the file: a process
        // killed between writing the zeros and syncing them leaves a
        // full-sized file whose blocks or name a power loss could still
        // take.
        file.sync_all()?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        let salt = match read_header(&file)? {
            Some((salt, _)) => salt.wrapping_add(1),
            // No header yet (or a torn one): a salt no earlier record has.
            None => now_ns ^ (u64::from(std::process::id()) << 32),
        };
        let log = SyncLog {
            file,
            salt,
            tail: PAGE,
            through,
        };
        log.write_header()?;
        Ok(log)
    }

    /// Start over in place, once every logged commit is durable in SQLite
    /// (through `through`).
    pub fn restart(&mut self, through: Version) -> io::Result<()> {
        self.salt = self.salt.wrapping_add(1);
        self.tail = PAGE;
        self.through = through;
        self.write_header()
    }

    /// The whole of page 0: a start or restart also wipes a breaker's
    /// mark. Both happen only while this process is still the owner in
    /// SQLite, checked under SQLite's write lock (`Shared::as_owner`); a
    /// breaker writes its mark only after it has changed the owner under
    /// that lock, so this write never lands after a mark it would wipe.
    fn write_header(&self) -> io::Result<()> {
        self.file.write_all_at(&header(self.salt, true), 0)?;
        self.file.sync_data()
    }

    /// Whether a breaker fenced this log's writer out ([`fence`]), or the
    /// log is no longer this writer's (another salt: defensive — no other
    /// process can start the log while this one holds presence). Read back
    /// after each append: a record written before a read that finds no
    /// mark was in the file before the mark, so before any breaker read
    /// the log (it marks first) — replay gets it. One `pread` of page 0
    /// from the page cache, the breaker's write being on the same host.
    ///
    /// Only the salt and the mark are compared: a newcomer the file was
    /// handed over to retires the log (its `active` byte and CRC change)
    /// after the holder wrote everything to SQLite, which leaves this
    /// writer's records safe and its salt in place; a read racing that
    /// write sees the same salt bytes either way.
    pub fn fenced(&self) -> io::Result<bool> {
        let mut page = [0u8; FENCE_AT as usize + FENCE_MARK.len()];
        self.file.read_exact_at(&mut page, 0)?;
        let mark = &page[FENCE_AT as usize..];
        Ok(page[8..16] != self.salt.to_le_bytes() || mark.iter().any(|&b| b != 0))
    }

    /// Append `buf`'s commits (everything after `self.through`) as one
    /// record and sync it; the caller moves `through` once it knows the
    /// sync counts. `Ok(false)`, writing nothing, when the log is full:
    /// make them durable in SQLite, then [`SyncLog::restart`].
    pub fn append(&mut self, buf: &mut RecordBuf) -> io::Result<bool> {
        let record = buf.seal(self.salt);
        let len = record.len() as u64;
        if self.tail + len > LOG_BYTES {
            return Ok(false);
        }
        self.file.write_all_at(record, self.tail)?;
        self.file.sync_data()?;
        self.tail += len;
        Ok(true)
    }

    /// Tests: as if records had filled the log to its end.
    #[cfg(test)]
    pub fn fill_up(&mut self) {
        self.tail = LOG_BYTES;
    }
}

fn header(salt: u64, active: bool) -> Vec<u8> {
    let mut page = vec![0u8; PAGE as usize];
    page[0..8].copy_from_slice(&HEADER_MAGIC);
    page[8..16].copy_from_slice(&salt.to_le_bytes());
    page[16] = u8::from(active);
    let crc = crc32fast::hash(&page[0..17]);
    page[17..HEADER_LEN].copy_from_slice(&crc.to_le_bytes());
    page
}

/// Fence the writer of the log at `path` out (a breaker, once it has
/// changed the owner in SQLite and before it reads the log): its next
/// [`SyncLog::fenced`] check fails, so it acknowledges no record this
/// breaker may not have read. Not synced: only a process alive on this
/// host reads the mark, through the page cache; [`retire`] keeps it, and
/// the next start wipes it. No log file: nobody logs (a holder creates
/// it under the owner check, before the breaker changed the owner).
pub fn fence(path: &Path) -> io::Result<()> {
    match OpenOptions::new().write(true).open(path) {
        Ok(file) => file.write_all_at(&FENCE_MARK, FENCE_AT),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e),
    }
}

/// The header's salt and whether the log is active; `None` if there is no
/// valid header (a new file, or a torn header write).
fn read_header(file: &File) -> io::Result<Option<(u64, bool)>> {
    let mut page = [0u8; HEADER_LEN];
    match file.read_exact_at(&mut page, 0) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let crc = u32::from_le_bytes(page[17..HEADER_LEN].try_into().unwrap_or_default());
    if page[0..8] != HEADER_MAGIC || crc32fast::hash(&page[0..17]) != crc {
        return Ok(None);
    }
    let salt = u64::from_le_bytes(page[8..16].try_into().unwrap_or_default());
    Ok(Some((salt, page[16] == 1)))
}

/// One logged commit, as read back.
#[derive(Debug, Clone, PartialEq)]
pub struct Logged {
    pub version: Version,
    pub mutations: Vec<Mutation>,
}

/// The commits in the log at `path`, oldest first, with the open file to
/// [`retire`] it by; `None` when there is no log or it is not active.
/// A record whose checksum holds but whose contents do not parse is an
/// `InvalidData` error: the log was written by something else.
pub fn read_active(path: &Path) -> io::Result<Option<(File, Vec<Logged>)>> {
    let file = match OpenOptions::new().read(true).write(true).open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let Some((salt, true)) = read_header(&file)? else {
        return Ok(None);
    };
    let size = file.metadata()?.len();
    let mut commits = Vec::new();
    let mut at = PAGE;
    let mut head = [0u8; RECORD_HEAD];
    while at + RECORD_HEAD as u64 <= size {
        file.read_exact_at(&mut head, at)?;
        let len = u64::from(u32::from_le_bytes(
            head[12..16].try_into().unwrap_or_default(),
        ));
        if head[0..4] != RECORD_MAGIC
            || head[4..12] != salt.to_le_bytes()
            || at + RECORD_HEAD as u64 + len > size
        {
            break;
        }
        let mut body = vec![0u8; RECORD_HEAD - 20 + len as usize];
        file.read_exact_at(&mut body, at + 20)?;
        let crc = u32::from_le_bytes(head[16..20].try_into().unwrap_or_default());
        if record_crc(&head[4..16], &body) != crc {
            break;
        }
        let count = u32::from_le_bytes(head[20..24].try_into().unwrap_or_default());
        decode(&body[4..], count, &mut commits).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("malformed record at byte {at} of {}", path.display()),
            )
        })?;
        at += (RECORD_HEAD as u64 + len).div_ceil(PAGE) * PAGE;
    }
    Ok(Some((file, commits)))
}

/// Mark the log as holding nothing (its commits are durable in SQLite).
/// Only the header's bytes: a breaker's [`fence`] mark stays, so the
/// writer it fenced out still finds it.
pub fn retire(file: &File) -> io::Result<()> {
    let salt = read_header(file)?.map_or(0, |(salt, _)| salt);
    file.write_all_at(&header(salt, false)[..HEADER_LEN], 0)?;
    file.sync_data()
}

fn decode(mut bytes: &[u8], count: u32, out: &mut Vec<Logged>) -> Option<()> {
    fn take<'a>(bytes: &mut &'a [u8], n: usize) -> Option<&'a [u8]> {
        let (head, rest) = bytes.split_at_checked(n)?;
        *bytes = rest;
        Some(head)
    }
    fn u32_(bytes: &mut &[u8]) -> Option<u32> {
        Some(u32::from_le_bytes(take(bytes, 4)?.try_into().ok()?))
    }
    fn u64_(bytes: &mut &[u8]) -> Option<u64> {
        Some(u64::from_le_bytes(take(bytes, 8)?.try_into().ok()?))
    }
    fn vec_(bytes: &mut &[u8]) -> Option<Vec<u8>> {
        let n = u32_(bytes)? as usize;
        Some(take(bytes, n)?.to_vec())
    }
    for _ in 0..count {
        let version = u64_(&mut bytes)?;
        let n = u32_(&mut bytes)?;
        let mut mutations = Vec::new();
        for _ in 0..n {
            let tag = take(&mut bytes, 1)?[0];
            mutations.push(match tag {
                SET => Mutation::Set {
                    key: vec_(&mut bytes)?,
                    value: vec_(&mut bytes)?,
                },
                CLEAR => Mutation::Clear {
                    key: vec_(&mut bytes)?,
                },
                CLEAR_RANGE => Mutation::ClearRange {
                    begin: vec_(&mut bytes)?,
                    end: vec_(&mut bytes)?,
                },
                ADD => Mutation::Add {
                    key: vec_(&mut bytes)?,
                    delta: u64_(&mut bytes)? as i64,
                },
                _ => return None,
            });
        }
        out.push(Logged { version, mutations });
    }
    bytes.is_empty().then_some(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(k: &str, v: &str) -> Mutation {
        Mutation::Set {
            key: k.as_bytes().to_vec(),
            value: v.as_bytes().to_vec(),
        }
    }

    fn commit(version: Version, mutations: Vec<Mutation>) -> Logged {
        Logged { version, mutations }
    }

    fn append(log: &mut SyncLog, commits: &[Logged]) -> bool {
        let mut buf = RecordBuf::default();
        for c in commits {
            buf.push(c.version, &c.mutations);
        }
        let appended = log.append(&mut buf).unwrap();
        if appended {
            log.through = commits.last().map_or(log.through, |c| c.version);
        }
        appended
    }

    fn read(path: &Path) -> Option<Vec<Logged>> {
        read_active(path).unwrap().map(|(_, commits)| commits)
    }

    #[test]
    fn records_read_back_in_order_every_mutation_kind() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db-synclog");
        assert_eq!(read(&path), None, "no file, no log");
        let mut log = SyncLog::start(&path, 10, 1).unwrap();
        assert_eq!(std::fs::metadata(&path).unwrap().len(), LOG_BYTES);
        assert_eq!(read(&path), Some(vec![]), "active, empty");
        let first = vec![
            commit(
                11,
                vec![set("a", "1"), Mutation::Clear { key: b"b".to_vec() }],
            ),
            commit(
                12,
                vec![Mutation::ClearRange {
                    begin: b"c".to_vec(),
                    end: b"d".to_vec(),
                }],
            ),
        ];
        // A record bigger than one page.
        let big = vec![commit(13, vec![set("big", &"x".repeat(10_000))])];
        let last = vec![commit(
            14,
            vec![Mutation::Add {
                key: b"n".to_vec(),
                delta: -3,
            }],
        )];
        for c in [&first, &big, &last] {
            assert!(append(&mut log, c));
        }
        assert_eq!(log.through, 14);
        let all: Vec<Logged> = [first, big, last].concat();
        assert_eq!(read(&path), Some(all));
    }

    #[test]
    fn a_torn_record_ends_the_log_and_a_restart_forgets_everything() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db-synclog");
        let mut log = SyncLog::start(&path, 0, 1).unwrap();
        for v in 1..=3 {
            assert!(append(
                &mut log,
                &[commit(v, vec![set("k", &v.to_string())])]
            ));
        }
        assert_eq!(read(&path).unwrap().len(), 3);
        // Flip one payload byte of the second record (page 2).
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .unwrap();
        let mut byte = [0u8];
        file.read_exact_at(&mut byte, 2 * PAGE + 40).unwrap();
        file.write_all_at(&[byte[0] ^ 1], 2 * PAGE + 40).unwrap();
        let left = read(&path).unwrap();
        assert_eq!(left.iter().map(|c| c.version).collect::<Vec<_>>(), [1]);
        // Start over: the records of the old salt no longer count, even
        // those past the new tail.
        log.restart(3).unwrap();
        assert_eq!(read(&path), Some(vec![]));
        assert!(append(&mut log, &[commit(4, vec![set("k", "4")])]));
        assert_eq!(read(&path).unwrap().len(), 1);
        // A reopened log (another process) gets yet another salt.
        drop(log);
        let mut again = SyncLog::start(&path, 4, 1).unwrap();
        assert_eq!(read(&path), Some(vec![]));
        assert!(append(&mut again, &[commit(5, vec![])]));
        assert_eq!(read(&path).unwrap()[0].version, 5);
    }

    #[test]
    fn retired_logs_hold_nothing_and_full_ones_refuse() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db-synclog");
        let mut log = SyncLog::start(&path, 0, 1).unwrap();
        assert!(append(&mut log, &[commit(1, vec![set("k", "v")])]));
        let (file, commits) = read_active(&path).unwrap().unwrap();
        assert_eq!(commits.len(), 1);
        retire(&file).unwrap();
        assert_eq!(read(&path), None);
        // Full: one page per record until the file ends.
        let mut log = SyncLog::start(&path, 1, 1).unwrap();
        let pages = LOG_BYTES / PAGE - 1;
        for v in 0..pages {
            assert!(append(&mut log, &[commit(v + 2, vec![])]), "record {v}");
        }
        assert!(!append(&mut log, &[commit(pages + 2, vec![])]));
        assert_eq!(log.through, pages + 1, "a refused record moves nothing");
        assert_eq!(read(&path).unwrap().len() as u64, pages);
    }

    #[test]
    fn a_checksummed_record_that_does_not_parse_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("db-synclog");
        let mut log = SyncLog::start(&path, 0, 1).unwrap();
        let mut buf = RecordBuf::default();
        buf.push(1, &[set("k", "v")]);
        // Claim two commits where one is encoded; checksum it honestly.
        buf.commits = 2;
        assert!(log.append(&mut buf).unwrap());
        let err = read_active(&path).unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::InvalidData);
        assert!(
            err.to_string().contains("malformed record at byte 4096"),
            "{err}"
        );
    }

    /// The payload encoding, without the file around it: any commits read
    /// back as pushed, and a payload cut short, with a byte replaced or
    /// with a wrong commit count decodes or fails (`None`, the
    /// "malformed record" error), never panics.
    mod payloads {
        use super::*;
        use proptest::prelude::*;

        fn bytes() -> impl Strategy<Value = Vec<u8>> {
            proptest::collection::vec(any::<u8>(), 0..20)
        }

        fn mutation() -> impl Strategy<Value = Mutation> {
            prop_oneof![
                (bytes(), bytes()).prop_map(|(key, value)| Mutation::Set { key, value }),
                bytes().prop_map(|key| Mutation::Clear { key }),
                (bytes(), bytes()).prop_map(|(begin, end)| Mutation::ClearRange { begin, end }),
                (bytes(), any::<i64>()).prop_map(|(key, delta)| Mutation::Add { key, delta }),
            ]
        }

        fn commits() -> impl Strategy<Value = Vec<Logged>> {
            let one = (any::<u64>(), proptest::collection::vec(mutation(), 0..5))
                .prop_map(|(version, mutations)| Logged { version, mutations });
            proptest::collection::vec(one, 0..5)
        }

        fn payload(commits: &[Logged]) -> Vec<u8> {
            let mut buf = RecordBuf::default();
            for c in commits {
                buf.push(c.version, &c.mutations);
            }
            buf.bytes[RECORD_HEAD..].to_vec()
        }

        proptest! {
            #[test]
            fn round_trip(commits in commits()) {
                let mut out = Vec::new();
                let count = u32::try_from(commits.len()).unwrap();
                prop_assert_eq!(decode(&payload(&commits), count, &mut out), Some(()));
                prop_assert_eq!(out, commits);
            }

            #[test]
            fn damaged(
                commits in commits(),
                at in any::<prop::sample::Index>(),
                byte in any::<u8>(),
                count in 0u32..8,
            ) {
                let good = payload(&commits);
                let n = u32::try_from(commits.len()).unwrap();
                let mut out = Vec::new();
                let _ = decode(&good, count, &mut out);
                if !good.is_empty() {
                    let i = at.index(good.len());
                    let _ = decode(&good[..i], n, &mut out);
                    let mut replaced = good.clone();
                    replaced[i] = byte;
                    let _ = decode(&replaced, n, &mut out);
                }
            }
        }
    }
}
