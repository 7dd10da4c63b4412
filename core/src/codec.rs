//! Value encodings. Every value is a FoundationDB tuple whose first element
//! is its format version, so stored values read in `fdbcli` and a future
//! format can be told apart. Bytes that do not decode are
//! [`FsError::Corrupted`], never a panic.

use foundationdb_tuple::{pack, unpack};

use crate::error::{FsError, FsResult};
use crate::keys::InodeLayout;

/// Format version of inode attributes.
pub const ATTR_FORMAT: u64 = 1;
/// Format version of directory entries.
pub const DIRENT_FORMAT: u64 = 1;
/// Format version of the filesystem settings and version keys. Format 2
/// added the inode layout; a format-1 filesystem has the spread layout
/// (the only one there was) and is read as such.
pub const FS_FORMAT: u64 = 2;

/// The kind of an inode (the `S_IFMT` part of its mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum FileType {
    Regular,
    Directory,
    Symlink,
    Fifo,
    Socket,
    CharDevice,
    BlockDevice,
}

impl FileType {
    pub fn from_mode(mode: u32) -> Option<FileType> {
        match mode & libc::S_IFMT {
            libc::S_IFREG => Some(FileType::Regular),
            libc::S_IFDIR => Some(FileType::Directory),
            libc::S_IFLNK => Some(FileType::Symlink),
            libc::S_IFIFO => Some(FileType::Fifo),
            libc::S_IFSOCK => Some(FileType::Socket),
            libc::S_IFCHR => Some(FileType::CharDevice),
            libc::S_IFBLK => Some(FileType::BlockDevice),
            _ => None,
        }
    }

    /// The `S_IFMT` bits.
    pub fn mode_bits(self) -> u32 {
        match self {
            FileType::Regular => libc::S_IFREG,
            FileType::Directory => libc::S_IFDIR,
            FileType::Symlink => libc::S_IFLNK,
            FileType::Fifo => libc::S_IFIFO,
            FileType::Socket => libc::S_IFSOCK,
            FileType::CharDevice => libc::S_IFCHR,
            FileType::BlockDevice => libc::S_IFBLK,
        }
    }
}

/// An inode's attributes. Times are nanoseconds since the Unix epoch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attr {
    pub ino: u64,
    /// File type and permission bits, as in `st_mode`.
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub size: u64,
    pub nlink: u32,
    pub atime_ns: i64,
    pub mtime_ns: i64,
    pub ctime_ns: i64,
    pub rdev: u64,
    pub flags: u32,
    pub generation: u64,
    /// For a directory, its parent (the root is its own parent); 0 for
    /// other files, which may have several.
    pub parent: u64,
    /// The subvolume this inode counts toward (0: none).
    pub subvolume: u64,
}

impl Attr {
    pub fn kind(&self) -> FsResult<FileType> {
        FileType::from_mode(self.mode).ok_or_else(|| {
            FsError::Corrupted(format!("inode {} has mode {:o}", self.ino, self.mode))
        })
    }

    pub fn is_dir(&self) -> bool {
        self.mode & libc::S_IFMT == libc::S_IFDIR
    }

    /// Permission bits (including setuid, setgid, sticky).
    pub fn perm(&self) -> u32 {
        self.mode & 0o7777
    }
}

type AttrTuple = (
    u64,
    (u32, u32, u32, u64, u32),
    (u64, u32),
    (i64, i64, i64),
    (u64, u64, u64),
);

pub fn encode_attr(a: &Attr) -> Vec<u8> {
    let t: AttrTuple = (
        ATTR_FORMAT,
        (a.mode, a.uid, a.gid, a.rdev, a.flags),
        (a.size, a.nlink),
        (a.atime_ns, a.mtime_ns, a.ctime_ns),
        (a.generation, a.parent, a.subvolume),
    );
    pack(&t)
}

pub fn decode_attr(ino: u64, bytes: &[u8]) -> FsResult<Attr> {
    let t: AttrTuple = unpack(bytes)
        .map_err(|e| FsError::Corrupted(format!("attributes of inode {ino}: {e:?}")))?;
    let (format, (mode, uid, gid, rdev, flags), (size, nlink), (atime, mtime, ctime), rest) = t;
    if format != ATTR_FORMAT {
        return Err(FsError::Corrupted(format!(
            "attributes of inode {ino}: unknown format {format}"
        )));
    }
    let (generation, parent, subvolume) = rest;
    let attr = Attr {
        ino,
        mode,
        uid,
        gid,
        size,
        nlink,
        atime_ns: atime,
        mtime_ns: mtime,
        ctime_ns: ctime,
        rdev,
        flags,
        generation,
        parent,
        subvolume,
    };
    attr.kind()?;
    Ok(attr)
}

/// A directory entry's value: the child and its type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dirent {
    pub ino: u64,
    pub kind: FileType,
}

pub fn encode_dirent(d: &Dirent) -> Vec<u8> {
    pack(&(DIRENT_FORMAT, d.ino, d.kind.mode_bits()))
}

pub fn decode_dirent(bytes: &[u8]) -> FsResult<Dirent> {
    let (format, ino, bits): (u64, u64, u32) =
        unpack(bytes).map_err(|e| FsError::Corrupted(format!("directory entry: {e:?}")))?;
    let kind = FileType::from_mode(bits)
        .filter(|kind| format == DIRENT_FORMAT && ino != 0 && kind.mode_bits() == bits)
        .ok_or_else(|| {
            FsError::Corrupted(format!("directory entry ({format}, {ino}, {bits:o})"))
        })?;
    Ok(Dirent { ino, kind })
}

/// Per-filesystem settings, fixed at mkfs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Settings {
    /// Bytes per data chunk.
    pub chunk_size: u64,
    /// Generation stamped on inodes of this incarnation of the filesystem
    /// (bumped when mkfs overwrites), so a reused number never repeats a
    /// (number, generation) pair.
    pub generation: u64,
    pub created_ns: i64,
    /// Where inodes' keys sit ([`InodeLayout`]).
    pub inode_layout: InodeLayout,
}

pub fn encode_settings(s: &Settings) -> Vec<u8> {
    let layout = s.inode_layout.as_str();
    pack(&(FS_FORMAT, s.chunk_size, s.generation, s.created_ns, layout))
}

pub fn decode_settings(bytes: &[u8]) -> FsResult<Settings> {
    let corrupted = |what: String| FsError::Corrupted(format!("settings: {what}"));
    let (format, chunk_size, generation, created_ns, inode_layout) =
        match unpack::<(u64, u64, u64, i64, String)>(bytes) {
            Ok((format, chunk, generation, created, layout)) if format >= 2 => {
                let layout = InodeLayout::parse(&layout)
                    .ok_or_else(|| corrupted(format!("inode layout {layout:?}")))?;
                (format, chunk, generation, created, layout)
            }
            _ => match unpack::<(u64, u64, u64, i64)>(bytes) {
                Ok((1, chunk, generation, created)) => {
                    (1, chunk, generation, created, InodeLayout::Spread)
                }
                Ok((format, ..)) => return Err(corrupted(format!("format {format}"))),
                Err(e) => return Err(corrupted(format!("{e:?}"))),
            },
        };
    if format > FS_FORMAT || chunk_size == 0 {
        return Err(corrupted(format!(
            "format {format}, chunk size {chunk_size}"
        )));
    }
    Ok(Settings {
        chunk_size,
        generation,
        created_ns,
        inode_layout,
    })
}

/// Format version of client registrations.
pub const CLIENT_FORMAT: u64 = 1;
/// Format version of lock records and lock waiters.
pub const LOCK_FORMAT: u64 = 1;

/// A mounted client, as `hafs list-clients` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ClientInfo {
    pub id: String,
    pub hostname: String,
    pub pid: u32,
    pub exe: String,
    pub description: String,
    /// Wall time of the mount, for people; never used to judge expiry.
    pub mounted_ns: i64,
    pub version: String,
    /// The expiry this client keeps its session by: it heartbeats often
    /// enough, and caches no longer, than this allows, so no judge may take
    /// it for dead sooner, whatever expiry the judge itself uses. Zero: not
    /// published (a client of an older version); judges use their own.
    ///
    /// Stored under a key of its own, `("client", ID, "expiry")`, not in the
    /// registration, which thus reads the same to older versions.
    pub expiry: std::time::Duration,
}

pub fn encode_client(c: &ClientInfo) -> Vec<u8> {
    pack(&(
        CLIENT_FORMAT,
        c.hostname.as_str(),
        c.pid,
        c.exe.as_str(),
        c.description.as_str(),
        c.mounted_ns,
        c.version.as_str(),
    ))
}

pub fn decode_client(id: &str, bytes: &[u8]) -> FsResult<ClientInfo> {
    type T = (u64, String, u32, String, String, i64, String);
    let (format, hostname, pid, exe, description, mounted_ns, version): T =
        unpack(bytes).map_err(|e| FsError::Corrupted(format!("client {id}: {e:?}")))?;
    if format != CLIENT_FORMAT {
        return Err(FsError::Corrupted(format!("client {id}: format {format}")));
    }
    Ok(ClientInfo {
        id: id.to_string(),
        hostname,
        pid,
        exe,
        description,
        mounted_ns,
        version,
        expiry: std::time::Duration::ZERO,
    })
}

/// A published client expiry (`ClientInfo::expiry`); absent reads as zero.
pub fn decode_expiry(bytes: Option<&[u8]>) -> FsResult<std::time::Duration> {
    match bytes {
        None => Ok(std::time::Duration::ZERO),
        Some(b) => <[u8; 8]>::try_from(b)
            .map(|b| std::time::Duration::from_nanos(u64::from_le_bytes(b)))
            .map_err(|_| FsError::Corrupted(format!("client expiry of {} bytes", b.len()))),
    }
}

pub fn encode_expiry(expiry: std::time::Duration) -> Vec<u8> {
    u64::try_from(expiry.as_nanos())
        .unwrap_or(u64::MAX)
        .to_le_bytes()
        .to_vec()
}

/// A lock's mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LockKind {
    Read,
    Write,
}

impl LockKind {
    fn code(self) -> u32 {
        match self {
            LockKind::Read => 0,
            LockKind::Write => 1,
        }
    }

    fn from_code(code: u32) -> Option<LockKind> {
        match code {
            0 => Some(LockKind::Read),
            1 => Some(LockKind::Write),
            _ => None,
        }
    }
}

/// A held lock's value: its mode, the end of its range (exclusive;
/// `u64::MAX` reaches past any end of file) and the holder's pid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LockValue {
    pub kind: LockKind,
    pub end: u64,
    pub pid: u32,
}

pub fn encode_lock(l: &LockValue) -> Vec<u8> {
    pack(&(LOCK_FORMAT, l.kind.code(), l.end, l.pid))
}

pub fn decode_lock(bytes: &[u8]) -> FsResult<LockValue> {
    let (format, code, end, pid): (u64, u32, u64, u32) =
        unpack(bytes).map_err(|e| FsError::Corrupted(format!("lock: {e:?}")))?;
    match (format, LockKind::from_code(code)) {
        (LOCK_FORMAT, Some(kind)) => Ok(LockValue { kind, end, pid }),
        _ => Err(FsError::Corrupted(format!("lock ({format}, {code})"))),
    }
}

/// A queued lock request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Waiter {
    pub client: String,
    pub owner: u64,
    pub kind: LockKind,
    pub start: u64,
    pub end: u64,
    pub pid: u32,
}

pub fn encode_waiter(w: &Waiter) -> Vec<u8> {
    pack(&(
        LOCK_FORMAT,
        w.client.as_str(),
        w.owner,
        w.kind.code(),
        w.start,
        w.end,
        w.pid,
    ))
}

pub fn decode_waiter(bytes: &[u8]) -> FsResult<Waiter> {
    type T = (u64, String, u64, u32, u64, u64, u32);
    let (format, client, owner, code, start, end, pid): T =
        unpack(bytes).map_err(|e| FsError::Corrupted(format!("lock waiter: {e:?}")))?;
    match (format, LockKind::from_code(code)) {
        (LOCK_FORMAT, Some(kind)) if start < end => Ok(Waiter {
            client,
            owner,
            kind,
            start,
            end,
            pid,
        }),
        _ => Err(FsError::Corrupted(format!(
            "lock waiter ({format}, {code})"
        ))),
    }
}

/// Little-endian i64 counters written by atomic add (absent = 0).
pub fn decode_counter(bytes: Option<&[u8]>) -> FsResult<i64> {
    match bytes {
        None => Ok(0),
        Some(b) => <[u8; 8]>::try_from(b)
            .map(i64::from_le_bytes)
            .map_err(|_| FsError::Corrupted(format!("counter of {} bytes", b.len()))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Attr {
        Attr {
            ino: 42,
            mode: libc::S_IFREG | 0o644,
            uid: 1000,
            gid: 100,
            size: 12345,
            nlink: 1,
            atime_ns: 1_700_000_000_123_456_789,
            mtime_ns: -5,
            ctime_ns: 0,
            rdev: 0,
            flags: 0,
            generation: 1,
            parent: 0,
            subvolume: 7,
        }
    }

    #[test]
    fn attr_round_trips() {
        let a = sample();
        assert_eq!(decode_attr(42, &encode_attr(&a)), Ok(a));
    }

    /// The encoded values, so any format change is a visible diff.
    #[test]
    fn value_layout() {
        let hex = |b: Vec<u8>| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
        let text = format!(
            "attr     {}\ndirent   {}\nsettings {}\n",
            hex(encode_attr(&sample())),
            hex(encode_dirent(&Dirent {
                ino: 42,
                kind: FileType::Directory
            })),
            hex(encode_settings(&Settings {
                chunk_size: 65536,
                generation: 1,
                created_ns: 1_700_000_000_000_000_000,
                inode_layout: InodeLayout::Allocation,
            })),
        );
        insta::assert_snapshot!(text);
    }

    /// Settings written before inode layouts existed (format 1) read as
    /// the spread layout, the one those filesystems use; a format from a
    /// newer hafs is refused.
    #[test]
    fn format_1_settings_read_as_the_spread_layout() {
        let old = pack(&(1u64, 4096u64, 3u64, 77i64));
        let settings = decode_settings(&old).expect("format 1 decodes");
        assert_eq!(settings.inode_layout, InodeLayout::Spread);
        assert_eq!((settings.chunk_size, settings.generation), (4096, 3));
        for layout in [InodeLayout::Spread, InodeLayout::Allocation] {
            let s = Settings {
                inode_layout: layout,
                ..settings.clone()
            };
            assert_eq!(decode_settings(&encode_settings(&s)), Ok(s));
        }
        let newer = pack(&(FS_FORMAT + 1, 4096u64, 3u64, 77i64, "allocation"));
        assert!(matches!(
            decode_settings(&newer),
            Err(FsError::Corrupted(_))
        ));
        let unknown = pack(&(FS_FORMAT, 4096u64, 3u64, 77i64, "sideways"));
        assert!(matches!(
            decode_settings(&unknown),
            Err(FsError::Corrupted(_))
        ));
        let format_2_without_layout = pack(&(2u64, 4096u64, 3u64, 77i64));
        assert!(matches!(
            decode_settings(&format_2_without_layout),
            Err(FsError::Corrupted(_))
        ));
    }

    /// Whatever bytes a key holds, every decoder answers a value or
    /// `Corrupted` (EIO at the FUSE edge), never panics. The bytes are
    /// random, or a good encoding of each kind damaged (cut short, one byte
    /// replaced, bytes inserted), which gets past the tuple layer's first
    /// checks far more often than random bytes do.
    mod arbitrary_bytes {
        use super::*;
        use proptest::prelude::*;

        fn good() -> Vec<Vec<u8>> {
            vec![
                encode_attr(&sample()),
                encode_dirent(&Dirent {
                    ino: 7,
                    kind: FileType::Symlink,
                }),
                encode_settings(&Settings {
                    chunk_size: 4096,
                    generation: 2,
                    created_ns: -1,
                    inode_layout: InodeLayout::Spread,
                }),
                encode_client(&ClientInfo {
                    id: "c".into(),
                    hostname: "h\0".into(),
                    pid: 9,
                    exe: "/bin/x".into(),
                    description: "é".into(),
                    mounted_ns: 5,
                    version: "0".into(),
                    // Stored under a key of its own: the registration's
                    // bytes stay those older versions read.
                    expiry: std::time::Duration::from_secs(7),
                }),
                encode_lock(&LockValue {
                    kind: LockKind::Write,
                    end: u64::MAX,
                    pid: 3,
                }),
                encode_waiter(&Waiter {
                    client: "c".into(),
                    owner: 1,
                    kind: LockKind::Read,
                    start: 0,
                    end: 10,
                    pid: 4,
                }),
                7i64.to_le_bytes().to_vec(),
            ]
        }

        fn decodes_or_is_corrupted(bytes: &[u8]) -> Result<(), TestCaseError> {
            fn ok<T>(r: FsResult<T>) -> bool {
                matches!(r, Ok(_) | Err(FsError::Corrupted(_)))
            }
            prop_assert!(ok(decode_attr(1, bytes)), "attr");
            prop_assert!(ok(decode_dirent(bytes)), "dirent");
            prop_assert!(ok(decode_settings(bytes)), "settings");
            prop_assert!(ok(decode_client("c", bytes)), "client");
            prop_assert!(ok(decode_lock(bytes)), "lock");
            prop_assert!(ok(decode_waiter(bytes)), "waiter");
            prop_assert!(ok(decode_counter(Some(bytes))), "counter");
            Ok(())
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2_000))]

            #[test]
            fn random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
                decodes_or_is_corrupted(&bytes)?;
            }

            #[test]
            fn damaged_encodings(
                which in any::<prop::sample::Index>(),
                at in any::<prop::sample::Index>(),
                byte in any::<u8>(),
                inserted in proptest::collection::vec(any::<u8>(), 1..12),
            ) {
                let good = good();
                let value = which.get(&good);
                let i = at.index(value.len());
                decodes_or_is_corrupted(&value[..i])?;
                let mut replaced = value.clone();
                replaced[i] = byte;
                decodes_or_is_corrupted(&replaced)?;
                let mut longer = value.clone();
                longer.splice(i..i, inserted);
                decodes_or_is_corrupted(&longer)?;
            }
        }
    }

    #[test]
    fn malformed_values_are_corrupted_errors() {
        let good = encode_attr(&sample());
        let mut cases: Vec<Vec<u8>> = vec![vec![], vec![0xff], b"garbage".to_vec()];
        for cut in [1, good.len() / 2, good.len() - 1] {
            cases.push(good[..cut].to_vec());
        }
        let mut flipped = good.clone();
        flipped[0] ^= 0x40;
        cases.push(flipped);
        cases.push(pack(&(ATTR_FORMAT + 1, 0u32)));
        for bytes in cases {
            assert!(
                matches!(decode_attr(1, &bytes), Err(FsError::Corrupted(_))),
                "{bytes:?} decoded"
            );
            assert!(matches!(decode_dirent(&bytes), Err(FsError::Corrupted(_))));
            assert!(matches!(
                decode_settings(&bytes),
                Err(FsError::Corrupted(_))
            ));
        }
        assert!(matches!(
            decode_counter(Some(b"abc")),
            Err(FsError::Corrupted(_))
        ));
    }
}
