//! What the page cache holds of a file (cachestat(2)): how tests show that
//! a sync really reached the disk, rather than trusting that a function
//! named `sync` was called, and that a FUSE file's reads are served by the
//! kernel.

use std::path::Path;

/// Pages of `path` dirty or under writeback in the page cache (cachestat(2),
/// Linux 6.5); `None` if the kernel lacks it or the file cannot be opened.
pub fn unwritten_pages(path: &Path) -> Option<u64> {
    let file = std::fs::File::open(path).ok()?;
    cachestat(&file).map(|s| s.dirty + s.writeback)
}

/// Pages of the open `file` in the page cache (cachestat(2)); `None` if
/// the kernel lacks it. Takes an open file: opening a FUSE file may itself
/// drop its pages.
pub fn cached_pages(file: &std::fs::File) -> Option<u64> {
    cachestat(file).map(|s| s.cache)
}

#[repr(C)]
#[derive(Default)]
struct Stat {
    cache: u64,
    dirty: u64,
    writeback: u64,
    evicted: u64,
    recently_evicted: u64,
}

#[allow(unsafe_code)] // cachestat(2) has no wrapper in std or libc
fn cachestat(file: &std::fs::File) -> Option<Stat> {
    use std::os::fd::AsRawFd;
    #[repr(C)]
    struct Range {
        off: u64,
        len: u64,
    }
    const SYS_CACHESTAT: libc::c_long = 451;
    let whole = Range { off: 0, len: 0 };
    let mut stat = Stat::default();
    // SAFETY: the fd is open and both pointers are to live `repr(C)`
    // structs laid out as the kernel's cachestat_range and cachestat.
    let r = unsafe {
        libc::syscall(
            SYS_CACHESTAT,
            file.as_raw_fd(),
            &whole as *const Range,
            &mut stat as *mut Stat,
            0,
        )
    };
    (r == 0).then_some(stat)
}
