//! Bad input to `hafs` gives one line on stderr and exit status 1, whether
//! clap or the command itself refuses it.

use std::process::Command;

/// Run `hafs ARGS`; its exit code and stderr.
fn hafs(args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_hafs"))
        .args(args)
        .output()
        .expect("run hafs");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn bad_input_is_one_line_and_status_1() {
    let cases: &[&[&str]] = &[
        &["--bogus"],
        &["--kv", "mem:", "mount"],
        &["--kv", "mem:", "mkfs", "--chunk-size", "7"],
        &["--kv", "mem:", "mkfs", "--inode-layout", "sideways"],
        &["--kv", "nope://x", "fsck"],
        &["--kv", "mem:", "fsck"],
        &["--kv", "mem:", "gc-clients", "--expiry", "1"],
    ];
    for args in cases {
        let (code, err) = hafs(args);
        assert_eq!(code, Some(1), "hafs {args:?}: {err}");
        assert_eq!(err.lines().count(), 1, "hafs {args:?}: {err}");
        assert!(err.starts_with("hafs: error: "), "hafs {args:?}: {err}");
    }
}

#[test]
fn help_and_version_are_not_errors() {
    for args in [&["--help"][..], &["--version"], &["mount", "--help"]] {
        let out = Command::new(env!("CARGO_BIN_EXE_hafs"))
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "hafs {args:?}");
        assert!(!out.stdout.is_empty(), "hafs {args:?}");
    }
}
