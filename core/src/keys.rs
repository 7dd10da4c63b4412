//! The key schema: every key hafs stores, in one place.
//!
//! Keys are FoundationDB tuples (the `foundationdb-tuple` crate), so they
//! read the same in `fdbcli`, sort by their elements, and share one
//! database between filesystems. Every key of filesystem `FS` starts with
//! the tuple prefix `("hafs", FS)`:
//!
//! ```text
//! ("hafs", FS, "version")                        -> (format,)
//! ("hafs", FS, "settings")                       -> Settings
//! ("hafs", FS, "inoalloc")                       -> next inode counter (u64 LE)
//! ("hafs", FS, "ino", INO, "attr")               -> Attr
//! ("hafs", FS, "ino", DIR, "dirent", NAME)       -> (child ino, file type)
//! ("hafs", FS, "ino", INO, "data", CHUNK)        -> chunk bytes, trailing zeros trimmed
//! ("hafs", FS, "ino", INO, "link")               -> symlink target bytes
//! ("hafs", FS, "ino", INO, "xattr", NAME)        -> attribute value bytes
//! ("hafs", FS, "ino", INO, "open", CLIENT)       -> present while that client has INO open
//! ("hafs", FS, "ino", SUBVOL, "count", SHARD, "bytes"|"inodes") -> i64 LE, atomic add
//! ("hafs", FS, "ino", INO, "lock", CLIENT, OWNER, START) -> (kind, end, pid)  a held byte-range lock
//! ("hafs", FS, "ino", INO, "lockq", TICKET)      -> (client, owner, kind, start, end, pid)  a waiter, FIFO
//! ("hafs", FS, "ino", INO, "lockseq")            -> last waiter ticket (u64 LE)
//! ("hafs", FS, "ino", INO, "lockver")            -> i64 LE, atomic add on every lock change (waiters watch it)
//! ("hafs", FS, "unlinked", INO)                  -> free-after wall ns (i64 LE): no links left; freed
//!                                                   once past it and open nowhere
//! ("hafs", FS, "client", CLIENT, "idem", SEQ)    -> idempotency marker: the reply (stores with ambiguous commits only)
//! ("hafs", FS, "client", CLIENT, "heartbeat")    -> i64 LE, atomic add by the client
//! ("hafs", FS, "client", CLIENT, "beat_at")      -> wall ns of the last beat (display only)
//! ("hafs", FS, "client", CLIENT, "expiry")       -> ns (u64 LE): the expiry CLIENT keeps its session
//!                                                   by; nobody judges it dead sooner (crate::session)
//! ("hafs", FS, "client", CLIENT, "open", INO)    -> ()  index: the client has INO open
//! ("hafs", FS, "client", CLIENT, "lock", INO)    -> ()  index: the client has locks or waiters on INO
//! ("hafs", FS, "clients", CLIENT)                -> ClientInfo; present = attached. Every
//!                                                   transaction of CLIENT reads it (fencing)
//! ("hafs", FS, "cachelease", CLIENT)            -> expiry ns (u64 LE): CLIENT, the only client
//!                                                   when it wrote this, lets the kernel cache
//!                                                   (crate::cache)
//! ("hafs-registry", FS)                          -> ()  one key per filesystem, for listing
//! ```
//!
//! `INO`, `CHUNK`, `SEQ`, `SHARD` are integers; `NAME` is a byte string;
//! `CLIENT` is a string. All of an inode's keys share the prefix
//! `("hafs", FS, "ino", INO)`, so deleting an inode is one range clear.
//!
//! `INO` in a key is the inode's *slot*, which depends on the filesystem's
//! [`InodeLayout`] (fixed at mkfs, stored in its settings). Inode numbers
//! themselves are always bit-reversed counters ([`crate::fs::alloc`]: the
//! kernel's inode hash needs them spread). Under [`InodeLayout::Spread`]
//! the slot is the number, so inodes made together land far apart — what
//! FoundationDB wants, as it splits shards by key range and would otherwise
//! send every create to one storage server. Under [`InodeLayout::Allocation`]
//! the slot is the counter (the number's bits reversed back), so inodes
//! made together sit side by side — what a B-tree wants: a create, its
//! close and its unlink then touch the same few pages instead of a cold
//! one each (SQLite and memory).

use foundationdb_tuple::{pack_into, Bytes, Subspace, TuplePack};

/// Room reserved for a key's tuple past the filesystem prefix: every fixed
/// key shape fits (an inode slot is at most 9 bytes, a kind name 8), names
/// and client ids may still grow the key.
const KEY_TAIL_BYTES: usize = 48;

/// Inode number of the root directory.
pub const ROOT_INO: u64 = 1;

/// Where an inode's keys sit in the key space (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InodeLayout {
    /// At the inode number (a bit-reversed counter): new inodes spread out.
    /// Filesystems made before layouts existed use this one.
    Spread,
    /// At the allocation counter: new inodes side by side.
    Allocation,
}

impl InodeLayout {
    /// The layout for a new filesystem on a store that does (`true`,
    /// FoundationDB) or does not split its key space across servers.
    pub fn for_store(spreads_key_ranges: bool) -> InodeLayout {
        if spreads_key_ranges {
            InodeLayout::Spread
        } else {
            InodeLayout::Allocation
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            InodeLayout::Spread => "spread",
            InodeLayout::Allocation => "allocation",
        }
    }

    pub fn parse(s: &str) -> Option<InodeLayout> {
        match s {
            "spread" => Some(InodeLayout::Spread),
            "allocation" => Some(InodeLayout::Allocation),
            _ => None,
        }
    }
}

/// The keys of one filesystem.
#[derive(Debug, Clone)]
pub struct Keys {
    fs: Subspace,
    layout: InodeLayout,
}

fn name_bytes(name: &[u8]) -> Bytes<'_> {
    Bytes::from(name)
}

impl Keys {
    /// The keys of filesystem `fs_name`, laid out as its settings say
    /// (`crate::fs::format::open_keys` reads them).
    pub fn new(fs_name: &str, layout: InodeLayout) -> Self {
        Keys {
            fs: Subspace::all().subspace(&("hafs", fs_name)),
            layout,
        }
    }

    /// The settings key of `fs_name`, which sits where every layout puts it.
    pub fn settings_of(fs_name: &str) -> Vec<u8> {
        Keys::new(fs_name, InodeLayout::Spread).settings()
    }

    pub fn layout(&self) -> InodeLayout {
        self.layout
    }

    /// `self.fs.pack(t)` with room for the tuple from the start:
    /// `Subspace::pack` clones the prefix at its exact length, so the first
    /// byte of the tuple reallocates — two allocations per key, on every
    /// key of every operation.
    fn pack<T: TuplePack>(&self, t: &T) -> Vec<u8> {
        let prefix = self.fs.bytes();
        let mut key = Vec::with_capacity(prefix.len() + KEY_TAIL_BYTES);
        key.extend_from_slice(prefix);
        pack_into(t, &mut key);
        key
    }

    /// The element that stands for `ino` in its keys. Its own inverse:
    /// decoding a key's element with it gives the inode number back.
    fn slot(&self, ino: u64) -> u64 {
        match self.layout {
            InodeLayout::Spread => ino,
            InodeLayout::Allocation => ino.reverse_bits(),
        }
    }

    /// `[begin, end)` of every key of this filesystem.
    pub fn all(&self) -> (Vec<u8>, Vec<u8>) {
        self.fs.range()
    }

    pub fn version(&self) -> Vec<u8> {
        self.pack(&("version",))
    }

    pub fn settings(&self) -> Vec<u8> {
        self.pack(&("settings",))
    }

    pub fn inode_allocator(&self) -> Vec<u8> {
        self.pack(&("inoalloc",))
    }

    /// `[begin, end)` of every key of one inode.
    pub fn inode_range(&self, ino: u64) -> (Vec<u8>, Vec<u8>) {
        self.fs.subspace(&("ino", self.slot(ino))).range()
    }

    /// `[begin, end)` of every inode's keys (for fsck).
    pub fn inodes_range(&self) -> (Vec<u8>, Vec<u8>) {
        self.fs.subspace(&("ino",)).range()
    }

    /// The inode and the kind ("attr", "dirent", "data", ...) of a key in
    /// [`Keys::inodes_range`], by trying each key shape of the schema.
    pub fn inode_key_kind(&self, key: &[u8]) -> Option<(u64, String)> {
        let inodes = self.fs.subspace(&("ino",));
        if let Ok((ino, kind)) = inodes.unpack::<(u64, String)>(key) {
            return Some((self.slot(ino), kind));
        }
        if let Ok((ino, kind, _)) = inodes.unpack::<(u64, String, Bytes<'_>)>(key) {
            return Some((self.slot(ino), kind));
        }
        if let Ok((ino, kind, _)) = inodes.unpack::<(u64, String, u64)>(key) {
            return Some((self.slot(ino), kind));
        }
        if let Ok((ino, kind, _)) = inodes.unpack::<(u64, String, String)>(key) {
            return Some((self.slot(ino), kind));
        }
        if let Ok((ino, kind, _, _, _)) = inodes.unpack::<(u64, String, String, u64, u64)>(key) {
            return Some((self.slot(ino), kind));
        }
        inodes
            .unpack::<(u64, String, u64, String)>(key)
            .ok()
            .map(|(ino, kind, _, _)| (self.slot(ino), kind))
    }

    pub fn attr(&self, ino: u64) -> Vec<u8> {
        self.pack(&("ino", self.slot(ino), "attr"))
    }

    pub fn dirent(&self, dir: u64, name: &[u8]) -> Vec<u8> {
        self.pack(&("ino", self.slot(dir), "dirent", name_bytes(name)))
    }

    /// `[begin, end)` of a directory's entries, in name order.
    pub fn dirents(&self, dir: u64) -> (Vec<u8>, Vec<u8>) {
        self.fs.subspace(&("ino", self.slot(dir), "dirent")).range()
    }

    /// The entry name of a key inside [`Keys::dirents`].
    pub fn dirent_name(&self, dir: u64, key: &[u8]) -> Option<Vec<u8>> {
        self.fs
            .subspace(&("ino", self.slot(dir), "dirent"))
            .unpack::<(Bytes<'_>,)>(key)
            .ok()
            .map(|(name,)| name.0.into_owned())
    }

    pub fn chunk(&self, ino: u64, index: u64) -> Vec<u8> {
        self.pack(&("ino", self.slot(ino), "data", index))
    }

    /// `[begin, end)` of chunks `from..` of a file.
    pub fn chunks_from(&self, ino: u64, from: u64) -> (Vec<u8>, Vec<u8>) {
        let (_, end) = self.fs.subspace(&("ino", self.slot(ino), "data")).range();
        (self.chunk(ino, from), end)
    }

    /// The chunk index of a key inside a file's chunk range.
    pub fn chunk_index(&self, ino: u64, key: &[u8]) -> Option<u64> {
        self.fs
            .subspace(&("ino", self.slot(ino), "data"))
            .unpack::<(u64,)>(key)
            .ok()
            .map(|(i,)| i)
    }

    pub fn symlink(&self, ino: u64) -> Vec<u8> {
        self.pack(&("ino", self.slot(ino), "link"))
    }

    pub fn xattr(&self, ino: u64, name: &[u8]) -> Vec<u8> {
        self.pack(&("ino", self.slot(ino), "xattr", name_bytes(name)))
    }

    pub fn xattrs(&self, ino: u64) -> (Vec<u8>, Vec<u8>) {
        self.fs.subspace(&("ino", self.slot(ino), "xattr")).range()
    }

    pub fn xattr_name(&self, ino: u64, key: &[u8]) -> Option<Vec<u8>> {
        self.fs
            .subspace(&("ino", self.slot(ino), "xattr"))
            .unpack::<(Bytes<'_>,)>(key)
            .ok()
            .map(|(name,)| name.0.into_owned())
    }

    pub fn open_handles(&self, ino: u64, client: &str) -> Vec<u8> {
        self.pack(&("ino", self.slot(ino), "open", client))
    }

    /// The client of a key in [`Keys::open_handles_all`].
    pub fn open_client(&self, ino: u64, key: &[u8]) -> Option<String> {
        self.fs
            .subspace(&("ino", self.slot(ino), "open"))
            .unpack::<(String,)>(key)
            .ok()
            .map(|(c,)| c)
    }

    /// `[begin, end)` of every client's open-handle count of one inode.
    pub fn open_handles_all(&self, ino: u64) -> (Vec<u8>, Vec<u8>) {
        self.fs.subspace(&("ino", self.slot(ino), "open")).range()
    }

    pub fn subvolume_counter(&self, subvol: u64, shard: u64, what: Counter) -> Vec<u8> {
        self.pack(&("ino", self.slot(subvol), "count", shard, what.as_str()))
    }

    /// What a key inside [`Keys::subvolume_counters`] counts.
    pub fn subvolume_counter_kind(&self, subvol: u64, key: &[u8]) -> Option<Counter> {
        let (_shard, what) = self
            .fs
            .subspace(&("ino", self.slot(subvol), "count"))
            .unpack::<(u64, String)>(key)
            .ok()?;
        match what.as_str() {
            "bytes" => Some(Counter::Bytes),
            "inodes" => Some(Counter::Inodes),
            _ => None,
        }
    }

    /// `[begin, end)` of every counter of one subvolume.
    pub fn subvolume_counters(&self, subvol: u64) -> (Vec<u8>, Vec<u8>) {
        self.fs
            .subspace(&("ino", self.slot(subvol), "count"))
            .range()
    }

    pub fn unlinked(&self, ino: u64) -> Vec<u8> {
        self.pack(&("unlinked", self.slot(ino)))
    }

    pub fn unlinked_all(&self) -> (Vec<u8>, Vec<u8>) {
        self.fs.subspace(&("unlinked",)).range()
    }

    pub fn unlinked_ino(&self, key: &[u8]) -> Option<u64> {
        self.fs
            .subspace(&("unlinked",))
            .unpack::<(u64,)>(key)
            .ok()
            .map(|(i,)| self.slot(i))
    }

    pub fn idempotency_marker(&self, client: &str, seq: u64) -> Vec<u8> {
        self.pack(&("client", client, "idem", seq))
    }

    /// `[begin, end)` of a client's markers with `first <= seq < end` (the
    /// tuple encoding of integers sorts like the integers).
    pub fn idempotency_markers(&self, client: &str, first: u64, end: u64) -> (Vec<u8>, Vec<u8>) {
        (
            self.idempotency_marker(client, first),
            self.idempotency_marker(client, end),
        )
    }

    /// `[begin, end)` of every key of one client.
    pub fn client_range(&self, client: &str) -> (Vec<u8>, Vec<u8>) {
        self.fs.subspace(&("client", client)).range()
    }

    pub fn client_heartbeat(&self, client: &str) -> Vec<u8> {
        self.pack(&("client", client, "heartbeat"))
    }

    /// Wall time of the client's last heartbeat, for display only (expiry
    /// never compares wall clocks across hosts).
    pub fn client_beat_time(&self, client: &str) -> Vec<u8> {
        self.pack(&("client", client, "beat_at"))
    }

    /// The expiry the client keeps its session by (`ClientInfo::expiry`).
    pub fn client_expiry(&self, client: &str) -> Vec<u8> {
        self.pack(&("client", client, "expiry"))
    }

    pub fn client_open(&self, client: &str, ino: u64) -> Vec<u8> {
        self.pack(&("client", client, "open", self.slot(ino)))
    }

    pub fn client_opens(&self, client: &str) -> (Vec<u8>, Vec<u8>) {
        self.fs.subspace(&("client", client, "open")).range()
    }

    pub fn client_lock(&self, client: &str, ino: u64) -> Vec<u8> {
        self.pack(&("client", client, "lock", self.slot(ino)))
    }

    pub fn client_locks(&self, client: &str) -> (Vec<u8>, Vec<u8>) {
        self.fs.subspace(&("client", client, "lock")).range()
    }

    /// The inode of a key in [`Keys::client_opens`] or [`Keys::client_locks`].
    pub fn client_index_ino(&self, client: &str, key: &[u8]) -> Option<u64> {
        self.fs
            .subspace(&("client", client))
            .unpack::<(String, u64)>(key)
            .ok()
            .map(|(_, ino)| self.slot(ino))
    }

    /// The client of a key in [`Keys::client_range`]-style ranges, for
    /// scans over every client's keys.
    pub fn clients_with_keys(&self) -> (Vec<u8>, Vec<u8>) {
        self.fs.subspace(&("client",)).range()
    }

    pub fn client_of_key(&self, key: &[u8]) -> Option<String> {
        // Every client key is (CLIENT, KIND) or (CLIENT, KIND, N).
        let clients = self.fs.subspace(&("client",));
        if let Ok((client, _)) = clients.unpack::<(String, String)>(key) {
            return Some(client);
        }
        clients
            .unpack::<(String, String, u64)>(key)
            .ok()
            .map(|(client, _, _)| client)
    }

    pub fn lock(&self, ino: u64, client: &str, owner: u64, start: u64) -> Vec<u8> {
        self.pack(&("ino", self.slot(ino), "lock", client, owner, start))
    }

    /// `[begin, end)` of every held lock on `ino`.
    pub fn locks(&self, ino: u64) -> (Vec<u8>, Vec<u8>) {
        self.fs.subspace(&("ino", self.slot(ino), "lock")).range()
    }

    /// `[begin, end)` of the locks of one client (and owner) on `ino`.
    pub fn locks_of(&self, ino: u64, client: &str, owner: Option<u64>) -> (Vec<u8>, Vec<u8>) {
        match owner {
            Some(owner) => self
                .fs
                .subspace(&("ino", self.slot(ino), "lock", client, owner))
                .range(),
            None => self
                .fs
                .subspace(&("ino", self.slot(ino), "lock", client))
                .range(),
        }
    }

    /// (client, owner, start) of a key in [`Keys::locks`].
    pub fn lock_id(&self, ino: u64, key: &[u8]) -> Option<(String, u64, u64)> {
        self.fs
            .subspace(&("ino", self.slot(ino), "lock"))
            .unpack(key)
            .ok()
    }

    pub fn lock_waiter(&self, ino: u64, ticket: u64) -> Vec<u8> {
        self.pack(&("ino", self.slot(ino), "lockq", ticket))
    }

    pub fn lock_waiters(&self, ino: u64) -> (Vec<u8>, Vec<u8>) {
        self.fs.subspace(&("ino", self.slot(ino), "lockq")).range()
    }

    pub fn lock_waiter_ticket(&self, ino: u64, key: &[u8]) -> Option<u64> {
        self.fs
            .subspace(&("ino", self.slot(ino), "lockq"))
            .unpack::<(u64,)>(key)
            .ok()
            .map(|(t,)| t)
    }

    pub fn lock_sequence(&self, ino: u64) -> Vec<u8> {
        self.pack(&("ino", self.slot(ino), "lockseq"))
    }

    pub fn lock_version(&self, ino: u64) -> Vec<u8> {
        self.pack(&("ino", self.slot(ino), "lockver"))
    }

    /// A mounted client's registration (written by the sessions layer).
    pub fn session(&self, client: &str) -> Vec<u8> {
        self.pack(&("clients", client))
    }

    /// The client id of a key in [`Keys::sessions`].
    pub fn session_id(&self, key: &[u8]) -> Option<String> {
        self.fs
            .subspace(&("clients",))
            .unpack::<(String,)>(key)
            .ok()
            .map(|(id,)| id)
    }

    /// `[begin, end)` of every registered client.
    pub fn sessions(&self) -> (Vec<u8>, Vec<u8>) {
        self.fs.subspace(&("clients",)).range()
    }

    /// The cache lease of `client` (see `crate::cache`).
    pub fn cache_lease(&self, client: &str) -> Vec<u8> {
        self.pack(&("cachelease", client))
    }

    /// `[begin, end)` of every cache lease.
    pub fn cache_leases(&self) -> (Vec<u8>, Vec<u8>) {
        self.fs.subspace(&("cachelease",)).range()
    }

    /// The client of a key in [`Keys::cache_leases`].
    pub fn cache_lease_client(&self, key: &[u8]) -> Option<String> {
        self.fs
            .subspace(&("cachelease",))
            .unpack::<(String,)>(key)
            .ok()
            .map(|(id,)| id)
    }

    /// The registry key of filesystem `fs_name`.
    pub fn registry(fs_name: &str) -> Vec<u8> {
        Subspace::all().pack(&("hafs-registry", fs_name))
    }

    /// `[begin, end)` of the registry.
    pub fn registry_range() -> (Vec<u8>, Vec<u8>) {
        Subspace::all().subspace(&("hafs-registry",)).range()
    }

    /// The filesystem name of a registry key.
    pub fn registry_name(key: &[u8]) -> Option<String> {
        Subspace::all()
            .subspace(&("hafs-registry",))
            .unpack::<(String,)>(key)
            .ok()
            .map(|(n,)| n)
    }
}

/// What a subvolume counter counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    Bytes,
    Inodes,
}

impl Counter {
    pub fn as_str(self) -> &'static str {
        match self {
            Counter::Bytes => "bytes",
            Counter::Inodes => "inodes",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn printable(key: &[u8]) -> String {
        key.iter()
            .map(|b| match b {
                0x20..=0x7e if *b != b'\\' => (*b as char).to_string(),
                _ => format!("\\x{b:02x}"),
            })
            .collect()
    }

    /// The encoded layout, so any change to it is a visible diff.
    #[test]
    fn key_layout() {
        insta::assert_snapshot!(layout_text(InodeLayout::Spread));
        insta::assert_snapshot!(
            "key_layout_allocation",
            layout_text(InodeLayout::Allocation)
        );
    }

    fn layout_text(layout: InodeLayout) -> String {
        let k = Keys::new("fs", layout);
        let lines = [
            ("version", k.version()),
            ("settings", k.settings()),
            ("inoalloc", k.inode_allocator()),
            ("attr(1)", k.attr(ROOT_INO)),
            ("attr(2^63)", k.attr(1 << 63)),
            ("dirent(1, a.txt)", k.dirent(1, b"a.txt")),
            ("dirent(1, \\0\\xff)", k.dirent(1, b"\0\xff")),
            ("chunk(7, 3)", k.chunk(7, 3)),
            ("symlink(7)", k.symlink(7)),
            ("xattr(7, user.x)", k.xattr(7, b"user.x")),
            ("open(7, c1)", k.open_handles(7, "c1")),
            (
                "count(1, 2, bytes)",
                k.subvolume_counter(1, 2, Counter::Bytes),
            ),
            ("unlinked(7)", k.unlinked(7)),
            ("idem(c1, 9)", k.idempotency_marker("c1", 9)),
            ("lock(7, c1, 3, 0)", k.lock(7, "c1", 3, 0)),
            ("lockq(7, 2)", k.lock_waiter(7, 2)),
            ("lockseq(7)", k.lock_sequence(7)),
            ("lockver(7)", k.lock_version(7)),
            ("heartbeat(c1)", k.client_heartbeat("c1")),
            ("client open(c1, 7)", k.client_open("c1", 7)),
            ("client lock(c1, 7)", k.client_lock("c1", 7)),
            ("clients(c1)", k.session("c1")),
            ("registry(fs)", Keys::registry("fs")),
        ];
        lines
            .iter()
            .map(|(what, key)| format!("{what:<20} {}\n", printable(key)))
            .collect()
    }

    #[test]
    fn names_round_trip_and_sort_within_a_directory() {
        let k = Keys::new("fs", InodeLayout::Allocation);
        let (begin, end) = k.dirents(5);
        for name in [&b""[..], b"a", b"\0", b"\xff\xff", b"z\0z"] {
            let key = k.dirent(5, name);
            assert!(begin <= key && key < end, "{name:?} outside its directory");
            assert_eq!(k.dirent_name(5, &key).as_deref(), Some(name));
        }
        assert!(k.dirent(5, b"a") < k.dirent(5, b"b"));
        assert!(k.dirent(5, b"a") < k.dirent(5, b"a\0"));
        let (other_begin, _) = k.dirents(6);
        assert!(end <= other_begin || k.dirents(6).1 <= begin);
    }

    #[test]
    fn every_inode_key_has_a_kind() {
        for layout in [InodeLayout::Spread, InodeLayout::Allocation] {
            every_inode_key_has_a_kind_in(layout);
        }
    }

    fn every_inode_key_has_a_kind_in(layout: InodeLayout) {
        let k = Keys::new("fs", layout);
        let ino = u64::MAX - 3;
        assert_eq!(k.unlinked_ino(&k.unlinked(ino)), Some(ino));
        assert_eq!(k.client_index_ino("c", &k.client_open("c", ino)), Some(ino));
        assert_eq!(k.client_index_ino("c", &k.client_lock("c", ino)), Some(ino));
        for (key, kind) in [
            (k.attr(ino), "attr"),
            (k.dirent(ino, b"n\0"), "dirent"),
            (k.chunk(ino, 9), "data"),
            (k.symlink(ino), "link"),
            (k.xattr(ino, b"user.x"), "xattr"),
            (k.open_handles(ino, "c"), "open"),
            (k.subvolume_counter(ino, 3, Counter::Inodes), "count"),
            (k.lock(ino, "c", 5, 9), "lock"),
            (k.lock_waiter(ino, 4), "lockq"),
            (k.lock_sequence(ino), "lockseq"),
            (k.lock_version(ino), "lockver"),
        ] {
            assert_eq!(k.inode_key_kind(&key), Some((ino, kind.to_string())));
        }
        assert_eq!(k.inode_key_kind(b"junk"), None);
    }

    #[test]
    fn chunk_ranges_start_at_the_index() {
        let k = Keys::new("fs", InodeLayout::Allocation);
        let (begin, end) = k.chunks_from(9, 4);
        assert!(k.chunk(9, 3) < begin);
        assert!(begin <= k.chunk(9, 4) && k.chunk(9, 1 << 40) < end);
        assert_eq!(k.chunk_index(9, &k.chunk(9, 12345)), Some(12345));
    }

    /// Under the allocation layout, inodes numbered from consecutive
    /// counters get adjacent keys (the point of the layout); under the
    /// spread layout they land far apart, and the settings key sits where
    /// every layout puts it.
    #[test]
    fn layouts_order_new_inodes_as_documented() {
        use crate::fs::alloc::inode_number;
        let spread = Keys::new("fs", InodeLayout::Spread);
        let dense = Keys::new("fs", InodeLayout::Allocation);
        let mut by_counter: Vec<Vec<u8>> = (2..200).map(|c| dense.attr(inode_number(c))).collect();
        assert!(by_counter.windows(2).all(|w| w[0] < w[1]));
        // Nothing of another inode falls between two consecutive ones.
        let (_, end_of_2) = dense.inode_range(inode_number(2));
        assert!(end_of_2 <= dense.attr(inode_number(3)));
        by_counter = (2..200).map(|c| spread.attr(inode_number(c))).collect();
        assert!(!by_counter.windows(2).all(|w| w[0] < w[1]));
        assert_eq!(Keys::settings_of("fs"), dense.settings());
        assert_eq!(spread.settings(), dense.settings());
        for layout in [InodeLayout::Spread, InodeLayout::Allocation] {
            assert_eq!(InodeLayout::parse(layout.as_str()), Some(layout));
        }
    }
}
