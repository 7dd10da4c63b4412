//! Opening a SQLite database that hafs cannot use fails with one line that
//! names the file and the problem — never a panic, and never by silently
//! adopting (or damaging) a file that is not ours.

use std::path::Path;

use hafs_core::clock::TokioClock;
use hafs_core::kv::sqlite::{Durability, SqliteBackend, SqliteOptions, FORMAT_VERSION};
use hafs_core::kv::url::{open_backend, KvUrl, OpenError};

fn open(path: &Path) -> Result<SqliteBackend, OpenError> {
    SqliteBackend::open(path, SqliteOptions::default(), TokioClock::new())
}

fn assert_one_line(err: &OpenError, path: &Path) {
    let line = err.to_string();
    assert!(!line.contains('\n'), "multi-line error: {line}");
    assert!(
        line.contains(&path.display().to_string()),
        "error does not name the file: {line}"
    );
}

#[test]
fn creates_a_new_database_and_reopens_it() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("new.db");
    drop(open(&path).expect("create"));
    drop(open(&path).expect("reopen"));
}

#[test]
fn url_opener_creates_missing_directories() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a/b/hafs.db");
    let url = KvUrl::parse(&format!("sqlite://{}", path.display())).unwrap();
    open_backend(&url, Durability::Durable, TokioClock::new()).expect("open");
    assert!(path.exists());
}

#[test]
fn refuses_a_sqlite_file_of_another_application() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("other.db");
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute_batch("CREATE TABLE accounts(id INTEGER PRIMARY KEY, name TEXT); INSERT INTO accounts VALUES (1, 'x');")
        .unwrap();
    drop(conn);
    let err = open(&path).expect_err("must refuse");
    assert!(matches!(err, OpenError::NotHafs { .. }), "{err:?}");
    assert_one_line(&err, &path);
    // Nothing of ours was added to their file.
    let conn = rusqlite::Connection::open(&path).unwrap();
    let tables: i64 = conn
        .query_row(
            "SELECT count(*) FROM sqlite_master WHERE type='table'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    assert_eq!(tables, 1);
}

#[test]
fn refuses_a_file_that_is_not_sqlite() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("notes.txt");
    let text = "these are not the bytes of a database, ".repeat(200);
    std::fs::write(&path, &text).unwrap();
    let err = open(&path).expect_err("must refuse");
    assert!(matches!(err, OpenError::NotHafs { .. }), "{err:?}");
    assert_one_line(&err, &path);
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        text,
        "file was modified"
    );
}

#[test]
fn refuses_a_newer_format() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("future.db");
    drop(open(&path).unwrap());
    let conn = rusqlite::Connection::open(&path).unwrap();
    conn.execute(
        "UPDATE hafs_meta SET value = ?1 WHERE name = 'format'",
        [FORMAT_VERSION + 1],
    )
    .unwrap();
    drop(conn);
    let err = open(&path).expect_err("must refuse");
    assert!(
        matches!(err, OpenError::NewerFormat { found, .. } if found == FORMAT_VERSION + 1),
        "{err:?}"
    );
    assert_one_line(&err, &path);
}

/// A database of format 1 (before the sync log) is upgraded at its first
/// open by this build, rows untouched, so that no format-1 build — which
/// would not replay `<db>-synclog` — opens it afterwards.
#[test]
fn upgrades_a_format_1_database_at_open() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("old.db");
    drop(open(&path).unwrap());
    let stored = |conn: &rusqlite::Connection| -> (i64, i64) {
        let format = conn
            .query_row(
                "SELECT value FROM hafs_meta WHERE name = 'format'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        let rows = conn
            .query_row("SELECT count(*) FROM commits", [], |r| r.get(0))
            .unwrap();
        (format, rows)
    };
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(stored(&conn).0, FORMAT_VERSION, "a new database");
    const { assert!(FORMAT_VERSION >= 3, "the sync log's fence mark is format 3") };
    conn.execute("UPDATE hafs_meta SET value = 1 WHERE name = 'format'", [])
        .unwrap();
    let (_, rows) = stored(&conn);
    drop(conn);
    drop(open(&path).expect("a format-1 database opens"));
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(stored(&conn), (FORMAT_VERSION, rows), "upgraded, rows kept");
    // No hafs ever wrote a format below 1: not ours, and not "upgraded".
    conn.execute("UPDATE hafs_meta SET value = 0 WHERE name = 'format'", [])
        .unwrap();
    drop(conn);
    let err = open(&path).expect_err("format 0");
    assert!(matches!(err, OpenError::NotHafs { .. }), "{err:?}");
    let conn = rusqlite::Connection::open(&path).unwrap();
    assert_eq!(stored(&conn).0, 0, "left as found");
}

#[test]
fn reports_a_path_that_cannot_be_opened() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"x").unwrap();
    let path = file.join("hafs.db"); // parent is a file
    let err = open(&path).expect_err("must fail");
    assert!(matches!(err, OpenError::Io { .. }), "{err:?}");
    assert_one_line(&err, &path);
}

/// A read-only file: `chmod` for ordinary users; root ignores file modes, so
/// as root the directory is bind-mounted read-only instead (skipped, with a
/// message, where mounting is not possible).
#[test]
fn refuses_a_read_only_database() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ro.db");
    drop(open(&path).unwrap());
    let is_root = std::fs::metadata("/proc/self")
        .map(|m| std::os::unix::fs::MetadataExt::uid(&m) == 0)
        .unwrap_or(false);
    let ro_dir = dir.path().join("ro-mount");
    let target = if is_root {
        std::fs::create_dir(&ro_dir).unwrap();
        let bind = std::process::Command::new("mount")
            .args(["--bind", "-o", "ro"])
            .arg(dir.path())
            .arg(&ro_dir)
            .status();
        if !bind.is_ok_and(|s| s.success()) {
            eprintln!("read-only check skipped: cannot bind-mount as root here");
            return;
        }
        ro_dir.join("ro.db")
    } else {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o444)).unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o555)).unwrap();
        path.clone()
    };
    let result = open(&target);
    if is_root {
        let _ = std::process::Command::new("umount").arg(&ro_dir).status();
    } else {
        use std::os::unix::fs::PermissionsExt;
        let _ = std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755));
    }
    let err = result.expect_err("must refuse a read-only database");
    assert!(matches!(err, OpenError::ReadOnly { .. }), "{err:?}");
    assert_one_line(&err, &target);
}

#[test]
fn url_errors_are_one_line() {
    let err = KvUrl::parse("sqlite:relative.db").unwrap_err();
    assert!(!err.to_string().contains('\n'));
    #[cfg(not(feature = "fdb"))]
    {
        let err = open_backend(&KvUrl::Fdb(None), Durability::Durable, TokioClock::new())
            .map(|_| ())
            .unwrap_err();
        assert_eq!(err, OpenError::FdbNotBuilt);
    }
}
