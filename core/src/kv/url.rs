//! Choosing and opening a backend from a URL: `sqlite:///path/to/hafs.db`,
//! `mem:`, `fdb:` (default cluster file) or `fdb:///path/to/fdb.cluster`.
//! The default, when no URL is given, is an SQLite file in a standard place
//! (root: `/var/lib/hafs/hafs.db`; others: `$XDG_DATA_HOME/hafs/hafs.db`,
//! falling back to `~/.local/share/hafs/hafs.db`), created on first use.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use thiserror::Error;

use super::mem::MemBackend;
use super::sqlite::{Durability, SqliteBackend, SqliteOptions};
use super::Backend;
use crate::clock::Clock;

/// Why a backend could not be opened. Each message is one line that names
/// the problem and the file.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum OpenError {
    #[error(
        "invalid KV URL {url:?}: {reason} (expected sqlite:///path, mem: or fdb:[///cluster-file])"
    )]
    InvalidUrl { url: String, reason: String },
    #[error("{path} is not a hafs database")]
    NotHafs { path: String },
    #[error("{path} has hafs KV format {found}, newer than this build supports ({supported}); upgrade hafs")]
    NewerFormat {
        path: String,
        found: i64,
        supported: i64,
    },
    #[error("{path} is read-only; hafs needs to write its database")]
    ReadOnly { path: String },
    #[error("cannot open {path}: {message}")]
    Io { path: String, message: String },
    #[error(
        "cannot open {path}: {holder} has held the database's write lock for {waited_secs} s \
         (a process stopped while writing keeps it until resumed or killed)"
    )]
    Busy {
        path: String,
        holder: String,
        waited_secs: u64,
    },
    #[error(
        "hafs was built without FoundationDB support; rebuild with `--features hafs-core/fdb`"
    )]
    FdbNotBuilt,
    #[error("cannot open FoundationDB: {0}")]
    Fdb(String),
}

/// A parsed KV URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KvUrl {
    Sqlite(PathBuf),
    Mem,
    Fdb(Option<PathBuf>),
}

impl KvUrl {
    pub fn parse(url: &str) -> Result<KvUrl, OpenError> {
        let invalid = |reason: &str| OpenError::InvalidUrl {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = url.split_once(':').ok_or_else(|| invalid("no scheme"))?;
        match scheme {
            "mem" if rest.is_empty() || rest == "//" => Ok(KvUrl::Mem),
            "mem" => Err(invalid("mem: takes no path")),
            "sqlite" => {
                let path = rest
                    .strip_prefix("//")
                    .ok_or_else(|| invalid("expected sqlite:///absolute/path"))?;
                if !path.starts_with('/') {
                    return Err(invalid("the path must be absolute (three slashes)"));
                }
                if path.ends_with('/') {
                    return Err(invalid("the path names a directory, not a file"));
                }
                Ok(KvUrl::Sqlite(PathBuf::from(path)))
            }
            "fdb" if rest.is_empty() || rest == "//" => Ok(KvUrl::Fdb(None)),
            "fdb" => {
                let path = rest
                    .strip_prefix("//")
                    .filter(|p| p.starts_with('/'))
                    .ok_or_else(|| invalid("expected fdb: or fdb:///path/to/fdb.cluster"))?;
                Ok(KvUrl::Fdb(Some(PathBuf::from(path))))
            }
            _ => Err(invalid("unknown scheme")),
        }
    }
}

/// The default database path for a user: `/var/lib/hafs/hafs.db` for root,
/// `$XDG_DATA_HOME/hafs/hafs.db` (or `$HOME/.local/share/hafs/hafs.db`)
/// for others. `env` looks up an environment variable.
pub fn default_sqlite_path(is_root: bool, env: impl Fn(&str) -> Option<String>) -> PathBuf {
    if is_root {
        return PathBuf::from("/var/lib/hafs/hafs.db");
    }
    let data_home = env("XDG_DATA_HOME")
        .filter(|d| d.starts_with('/'))
        .map(PathBuf::from)
        .or_else(|| env("HOME").map(|h| Path::new(&h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    data_home.join("hafs").join("hafs.db")
}

/// Open the backend a URL names. SQLite files (and their directory) are
/// created if missing.
pub fn open_backend(
    url: &KvUrl,
    durability: Durability,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn Backend>, OpenError> {
    open_backend_with(url, durability, true, clock)
}

/// [`open_backend`], saying whether a relaxed SQLite backend may keep
/// commits in memory while it has the database to itself
/// ([`SqliteOptions::write_behind`]).
pub fn open_backend_with(
    url: &KvUrl,
    durability: Durability,
    write_behind: bool,
    clock: Arc<dyn Clock>,
) -> Result<Arc<dyn Backend>, OpenError> {
    match url {
        KvUrl::Mem => Ok(Arc::new(MemBackend::new(clock))),
        KvUrl::Sqlite(path) => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir).map_err(|e| OpenError::Io {
                    path: dir.display().to_string(),
                    message: e.to_string(),
                })?;
            }
            let options = SqliteOptions {
                durability,
                write_behind,
                ..SqliteOptions::default()
            };
            Ok(Arc::new(SqliteBackend::open(path, options, clock)?))
        }
        KvUrl::Fdb(cluster_file) => open_fdb(cluster_file.as_deref()),
    }
}

#[cfg(feature = "fdb")]
fn open_fdb(cluster_file: Option<&Path>) -> Result<Arc<dyn Backend>, OpenError> {
    super::fdb::FdbBackend::open(cluster_file)
        .map(|b| Arc::new(b) as Arc<dyn Backend>)
        .map_err(|e| OpenError::Fdb(e.to_string()))
}

#[cfg(not(feature = "fdb"))]
fn open_fdb(_cluster_file: Option<&Path>) -> Result<Arc<dyn Backend>, OpenError> {
    Err(OpenError::FdbNotBuilt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_each_scheme() {
        assert_eq!(
            KvUrl::parse("sqlite:///var/lib/hafs/hafs.db"),
            Ok(KvUrl::Sqlite("/var/lib/hafs/hafs.db".into()))
        );
        assert_eq!(KvUrl::parse("mem:"), Ok(KvUrl::Mem));
        assert_eq!(KvUrl::parse("fdb:"), Ok(KvUrl::Fdb(None)));
        assert_eq!(
            KvUrl::parse("fdb:///etc/foundationdb/fdb.cluster"),
            Ok(KvUrl::Fdb(Some("/etc/foundationdb/fdb.cluster".into())))
        );
    }

    #[test]
    fn rejects_malformed_urls_with_a_reason() {
        for bad in [
            "",
            "sqlite:",
            "sqlite://relative.db",
            "sqlite:relative.db",
            "sqlite:///dir/",
            "mem:/x",
            "fdb:relative",
            "postgres://x",
            "/var/lib/hafs/hafs.db",
        ] {
            let err = KvUrl::parse(bad).expect_err(bad);
            let line = err.to_string();
            assert!(line.contains("invalid KV URL"), "{bad}: {line}");
            assert!(!line.contains('\n'), "{bad}: multi-line error");
        }
    }

    #[test]
    fn default_path_follows_user() {
        assert_eq!(
            default_sqlite_path(true, |_| None),
            PathBuf::from("/var/lib/hafs/hafs.db")
        );
        let env = |k: &str| (k == "XDG_DATA_HOME").then(|| "/home/u/.data".to_string());
        assert_eq!(
            default_sqlite_path(false, env),
            PathBuf::from("/home/u/.data/hafs/hafs.db")
        );
        let env = |k: &str| (k == "HOME").then(|| "/home/u".to_string());
        assert_eq!(
            default_sqlite_path(false, env),
            PathBuf::from("/home/u/.local/share/hafs/hafs.db")
        );
    }
}
