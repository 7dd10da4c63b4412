//! Shared by the real-mount tests (`fuse/tests`, `cli/tests`): start a
//! mount process, wait for the kernel to show it, stop it with SIGTERM and
//! check it unmounted; skip (or, with `HAFS_REQUIRE_FUSE=1` as CI sets,
//! fail) where there is no root or /dev/fuse.

#![allow(dead_code)] // each test crate uses its own part of this module

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub struct Mount {
    pub child: Child,
    pub path: PathBuf,
}

impl Mount {
    /// Run `cmd` (a mount command lacking only the mount point) on `path`
    /// and wait until the mount shows in /proc/self/mountinfo.
    pub fn start(mut cmd: Command, path: &Path) -> Mount {
        std::fs::create_dir_all(path).unwrap();
        let child = cmd
            .args(test_flags())
            .arg(path)
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the mount process");
        let mut mount = Mount {
            child,
            path: path.to_path_buf(),
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while !is_mounted(path) {
            if let Ok(Some(status)) = mount.child.try_wait() {
                panic!("the mount process exited with {status} before mounting");
            }
            assert!(
                Instant::now() < deadline,
                "mount did not appear at {}",
                path.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        mount
    }

    pub fn p(&self, rel: &str) -> PathBuf {
        self.path.join(rel)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(self.pid().to_string())
            .status()
            .unwrap();
        assert!(status.success(), "kill -{signal} failed");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        // SIGTERM: the clean shutdown path (unmount, then detach). CONT
        // first, for a test that stopped the process.
        let pid = self.pid().to_string();
        let _ = Command::new("kill").args(["-CONT", &pid]).status();
        let _ = Command::new("kill").arg(&pid).status();
        let status = self.child.wait();
        let killed = status
            .as_ref()
            .is_ok_and(|s| std::os::unix::process::ExitStatusExt::signal(s) == Some(libc::SIGKILL));
        if killed || std::thread::panicking() {
            // A dead daemon leaves its mount behind: clear it as an admin would.
            let _ = Command::new("umount").arg("-l").arg(&self.path).status();
            return;
        }
        assert!(
            status.is_ok_and(|s| s.success()),
            "the mount process did not exit cleanly"
        );
        assert!(!is_mounted(&self.path), "still mounted after SIGTERM");
    }
}

/// Extra mount flags for every mount of a run, from `HAFS_TEST_MOUNT_FLAGS`
/// (e.g. `--unlink-grace 0`, to watch a test fail without the grace).
pub fn test_flags() -> Vec<String> {
    std::env::var("HAFS_TEST_MOUNT_FLAGS")
        .unwrap_or_default()
        .split_whitespace()
        .map(String::from)
        .collect()
}

pub fn is_mounted(path: &Path) -> bool {
    hafs_fuse::mount::is_mountpoint(path)
}

/// Whether real mounts can run here. Without root or /dev/fuse the tests
/// are skipped with a message — unless `HAFS_REQUIRE_FUSE` is set (CI sets
/// it), where a skip would hide that nothing was tested.
pub fn fuse_available() -> bool {
    let root = std::fs::metadata("/proc/self")
        .map(|m| m.uid() == 0)
        .unwrap_or(false);
    if root && Path::new("/dev/fuse").exists() {
        return true;
    }
    assert!(
        std::env::var_os("HAFS_REQUIRE_FUSE").is_none(),
        "HAFS_REQUIRE_FUSE is set but mount tests need root and /dev/fuse"
    );
    eprintln!("skipped: mount tests need root and /dev/fuse");
    false
}

pub fn errno<T: std::fmt::Debug>(r: std::io::Result<T>) -> i32 {
    r.unwrap_err().raw_os_error().unwrap_or(0)
}
