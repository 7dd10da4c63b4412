//! Bad input to `hafs-fuse` (the original HAFS name of `hafs mount`) gives
//! one line on stderr and exit status 1, as `hafs` does — not clap's
//! multi-line usage and status 2.

use std::process::Command;

#[test]
fn bad_input_is_one_line_and_status_1() {
    let cases: &[&[&str]] = &[
        &["--bogus", "/mnt"],
        &[],
        &["--expiry", "nope", "/mnt"],
        &[
            "--kv",
            "mem:",
            "--expiry",
            "99999",
            "/nonexistent/hafs-mountpoint",
        ],
        &["--kv", "mem:", "/nonexistent/hafs-mountpoint"],
    ];
    for args in cases {
        let out = Command::new(env!("CARGO_BIN_EXE_hafs-fuse"))
            .args(*args)
            .output()
            .expect("run hafs-fuse");
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "hafs-fuse {args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "hafs-fuse {args:?}: {err}");
        assert!(
            err.starts_with("hafs-fuse: error: "),
            "hafs-fuse {args:?}: {err}"
        );
    }
}
