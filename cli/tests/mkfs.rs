//! `hafs mkfs` run by a user gives that user the root directory (as
//! mke2fs does): before, it was root's, mode 0755, and the user could not
//! write in a filesystem of their own.

use std::os::unix::fs::PermissionsExt;
use std::process::Command;

use hafs_core::clock::{Clock, TokioClock};
use hafs_core::ctx::{Caller, FsOptions};
use hafs_core::fs::Fs;
use hafs_core::keys::ROOT_INO;
use hafs_core::kv::sqlite::Durability;
use hafs_core::kv::url::{open_backend, KvUrl};
use hafs_core::kv::Database;

#[test]
fn the_root_directory_belongs_to_whoever_ran_mkfs() {
    if effective_uid() != 0 {
        // CI sets HAFS_REQUIRE_FUSE (it runs as root): skipping there
        // would hide the check.
        assert!(
            std::env::var_os("HAFS_REQUIRE_FUSE").is_none(),
            "needs root to run mkfs as another user"
        );
        eprintln!("skipped: needs root to run mkfs as another user");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    std::fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(0o777)).unwrap();
    // A copy nobody can reach: the build's own may sit under a directory
    // only root may search (a clone in /root).
    let hafs = tmp.path().join("hafs");
    std::fs::copy(env!("CARGO_BIN_EXE_hafs"), &hafs).unwrap();
    let url = format!("sqlite://{}", tmp.path().join("hafs.db").display());
    let out = Command::new("setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&hafs)
        .args(["--kv", &url, "mkfs"])
        .output()
        .expect("setpriv (util-linux)");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "mkfs as nobody: {err}");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let clock: std::sync::Arc<dyn Clock> = TokioClock::new();
        let kv = KvUrl::parse(&url).unwrap();
        let backend = open_backend(&kv, Durability::Durable, clock.clone()).unwrap();
        let db = Database::new(backend, clock, 1);
        let fs = Fs::open(db, "fs", "check", FsOptions::default())
            .await
            .unwrap();
        let root = fs.getattr(&Caller::root(), ROOT_INO).await.unwrap();
        assert_eq!((root.uid, root.gid), (65534, 65534));
        fs.close().await.unwrap();
    });
}

fn effective_uid() -> u32 {
    // /proc/self/status: "Uid: real effective saved fs".
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = status.lines().find(|l| l.starts_with("Uid:")).unwrap();
    line.split_whitespace().nth(2).unwrap().parse().unwrap()
}
