//! The mount command: open the database, attach a client, mount, keep the
//! session alive, and detach cleanly.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use hafs_core::cache::{CacheGate, CacheTtls};
use hafs_core::clock::{Clock, TokioClock};
use hafs_core::codec::ClientInfo;
use hafs_core::ctx::FsOptions;
use hafs_core::error::FsError;
use hafs_core::fs::{Fs, MkfsOptions};
use hafs_core::kv::sqlite::Durability;
use hafs_core::kv::url::{default_sqlite_path, open_backend_with, KvUrl};
use hafs_core::kv::Database;
use hafs_core::session::SessionOptions;

use crate::adapter::{HafsFuse, RequestTasks};

/// Where the filesystem lives (shared by every hafs command).
#[derive(Debug, Clone, clap::Args)]
pub struct KvArgs {
    /// The database: sqlite:///path (default: the embedded database),
    /// fdb:[///cluster-file], or mem: (a throwaway in-memory one).
    #[arg(long, env = "HAFS_KV", global = true)]
    pub kv: Option<String>,
    /// Which filesystem in the database.
    #[arg(long, default_value = "fs", global = true)]
    pub fs_name: String,
    /// Acknowledge writes before they reach disk: faster; a power loss, or
    /// a crash of a hafs process that has the SQLite database to itself,
    /// may drop the last few milliseconds of commits (never corrupts;
    /// fsync still makes everything before it durable).
    #[arg(long, global = true)]
    pub relaxed_durability: bool,
    /// On SQLite: write every commit to the database itself before
    /// acknowledging it, even with the database to itself (slower; with
    /// --relaxed-durability a crash of the hafs process then loses nothing).
    #[arg(long, global = true)]
    pub no_write_behind: bool,
}

impl KvArgs {
    /// The KV URL, defaulting to the embedded SQLite database.
    pub fn url(&self) -> String {
        match &self.kv {
            Some(url) => url.clone(),
            None => {
                // SAFETY-free: getuid has no preconditions; only used to pick a path.
                let root = std::env::var("USER").map(|u| u == "root").unwrap_or(false)
                    || std::fs::metadata("/proc/self")
                        .map(|m| {
                            use std::os::unix::fs::MetadataExt;
                            m.uid() == 0
                        })
                        .unwrap_or(false);
                let path = default_sqlite_path(root, |k| std::env::var(k).ok());
                format!("sqlite://{}", path.display())
            }
        }
    }

    /// Open the database.
    pub fn open(&self, clock: Arc<dyn Clock>) -> Result<Database, String> {
        let url = self.url();
        let parsed = KvUrl::parse(&url).map_err(|e| e.to_string())?;
        let durability = if self.relaxed_durability {
            Durability::Relaxed
        } else {
            Durability::Durable
        };
        let backend = open_backend_with(&parsed, durability, !self.no_write_behind, clock.clone())
            .map_err(|e| e.to_string())?;
        Ok(Database::new(backend, clock, os_seed()))
    }
}

/// Jitter seed for the retry loop: real randomness outside the simulator.
#[allow(clippy::disallowed_methods)] // the binary, not core: OS randomness is right here
pub fn os_seed() -> u64 {
    rand::random()
}

/// Options of a mount.
#[derive(Debug, Clone, clap::Args)]
pub struct MountArgs {
    /// Where to mount (an existing directory; what it holds is hidden while
    /// mounted).
    pub mountpoint: PathBuf,
    /// Mount options, comma-separated: allow_other, ro, default_permissions,
    /// noatime, strictatime.
    #[arg(short = 'o', value_delimiter = ',')]
    pub options: Vec<String>,
    /// Seconds the kernel may cache attributes while this mount is the
    /// filesystem's only client (it holds the cache lease; a client that
    /// attaches waits until the caches expired). 0: never cache.
    #[arg(long, default_value_t = 1.0)]
    pub attr_timeout: f64,
    /// Seconds the kernel may cache name lookups, positive and negative,
    /// under the same lease. Without `-o default_permissions` the kernel
    /// walks a cached name without checking search permission, so only
    /// names in directories everyone may search are cached. 0: never cache.
    #[arg(long, default_value_t = 1.0)]
    pub entry_timeout: f64,
    /// Format the filesystem first if it does not exist yet.
    #[arg(long)]
    pub mkfs: bool,
    /// Seconds between heartbeats.
    #[arg(long, default_value_t = 5)]
    pub heartbeat: u64,
    /// Seconds without a heartbeat before other clients evict this one.
    #[arg(long, default_value_t = 30)]
    pub expiry: u64,
    /// Seconds a file whose last name went (unlink, rename over it) stays
    /// openable by clients that looked the name up just before; space comes
    /// back after it. 0 frees at once, but then an open racing a rename on
    /// another mount can fail with ESTALE.
    #[arg(long, default_value_t = 5.0)]
    pub unlink_grace: f64,
    /// Threads reading kernel requests (each with its own /dev/fuse clone;
    /// on SQLite each serves its requests itself).
    #[arg(long, default_value_t = 4)]
    pub fuse_threads: usize,
    /// Free text shown by `hafs list-clients`.
    #[arg(long, default_value = "")]
    pub description: String,
    /// Log every FUSE request (very verbose).
    #[arg(long)]
    pub debug_fuse: bool,
}

/// mkfs's options for whoever runs it: the root directory belongs to the
/// caller's effective user and group (root's stays 0:0), so a filesystem a
/// user makes (`hafs mkfs`, `mount --mkfs`) is that user's to write in —
/// hafs checks permissions itself, and a root-owned 0755 root left such a
/// user nothing to write to. (mke2fs did the same up to e2fsprogs 1.42;
/// since 1.43 it makes 0:0 unless given `-E root_owner`.)
pub fn mkfs_options_for_caller() -> MkfsOptions {
    MkfsOptions {
        root_uid: rustix::process::geteuid().as_raw(),
        root_gid: rustix::process::getegid().as_raw(),
        ..MkfsOptions::default()
    }
}

/// Parse `argv` as `program` (`hafs`, `hafs-fuse`) does: help and
/// `--version` print as clap prints them (so does a bare `hafs`); any other
/// error becomes one line on stderr — clap's message and the lines it
/// lists, then any hint — and exit status 1, like every other error.
pub fn parse_or_exit<P: clap::Parser>(program: &str, argv: Vec<String>) -> P {
    match P::try_parse_from(argv) {
        Ok(parsed) => parsed,
        Err(e)
            if !e.use_stderr()
                || e.kind() == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand =>
        {
            e.exit()
        }
        Err(e) => {
            let text = e.render().to_string();
            let mut paragraphs = text.split("\n\n").map(|p| {
                p.lines()
                    .map(str::trim)
                    .filter(|l| !l.is_empty())
                    .collect::<Vec<_>>()
                    .join(" ")
            });
            let first = paragraphs.next().unwrap_or_default();
            let first = first.strip_prefix("error: ").unwrap_or(&first).to_string();
            let hint = paragraphs
                .find(|p| p.starts_with("[possible values") || p.starts_with("tip:"))
                .map(|p| format!(" {p}"))
                .unwrap_or_default();
            eprintln!("{program}: error: {first}{hint} (see {program} --help)");
            std::process::exit(1);
        }
    }
}

/// Logs to stderr, `RUST_LOG` to filter (default: info for hafs, warn else).
pub fn init_logging(debug_fuse: bool) {
    let default = if debug_fuse {
        "debug"
    } else {
        "warn,fuser=error,hafs_core=info,hafs_fuse=info,hafs_cli=info"
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    use std::io::IsTerminal;
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour codes only for a person at a terminal, not in log files.
        .with_ansi(std::io::stderr().is_terminal())
        .try_init();
}

/// Whether `path` is a mount point now (per /proc/self/mountinfo).
pub fn is_mountpoint(path: &Path) -> bool {
    let Ok(canonical) = path.canonicalize() else {
        return false;
    };
    let Ok(info) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return false;
    };
    info.lines()
        .filter_map(|line| line.split(' ').nth(4))
        .any(|mp| Path::new(&mp.replace("\\040", " ")) == canonical)
}

/// The mount's options, checked before anything is opened or created (a
/// typo must not leave a new database behind).
fn check_options(args: &MountArgs) -> Result<FsOptions, String> {
    for (flag, value) in [
        ("--attr-timeout", args.attr_timeout),
        ("--entry-timeout", args.entry_timeout),
    ] {
        if !(0.0..=3600.0).contains(&value) {
            return Err(format!("{flag} {value} is not between 0 and 3600 seconds"));
        }
    }
    let expiry = args.expiry.max(2) as f64;
    let heartbeat = args.heartbeat.max(1) as f64;
    let longest = args.attr_timeout.max(args.entry_timeout);
    let margin = hafs_core::cache::REVOKE_MARGIN.as_secs_f64();
    if longest > 0.0 && heartbeat + longest + margin >= expiry {
        // A mount that froze while caching is evicted once its heartbeat
        // stood still for the expiry; it may have replied with TTLs up to a
        // heartbeat period after its last beat, and its kernel must have
        // stopped believing those by the eviction (other mounts then go on
        // at once).
        return Err(format!(
            "--attr-timeout/--entry-timeout {longest} plus --heartbeat {heartbeat} must be shorter than --expiry {expiry} (by {margin} s)"
        ));
    }
    if !(args.unlink_grace >= 0.0 && args.unlink_grace <= 3600.0) {
        return Err(format!(
            "--unlink-grace {} is not between 0 and 3600 seconds",
            args.unlink_grace
        ));
    }
    if args.expiry > hafs_core::session::EXPIRY_MAX.as_secs() {
        // Other mounts honour a published expiry up to this long: a dead
        // mount's locks would be held for as long as it asked.
        return Err(format!(
            "--expiry {} is longer than {} seconds",
            args.expiry,
            hafs_core::session::EXPIRY_MAX.as_secs()
        ));
    }
    if heartbeat * 2.0 > expiry {
        // A client whose heartbeat is late by one period must not look dead.
        return Err(format!(
            "--expiry {expiry} must be at least twice --heartbeat {heartbeat}"
        ));
    }
    let mut fs_options = FsOptions {
        unlink_grace_ns: (args.unlink_grace * 1e9) as i64,
        ..FsOptions::default()
    };
    for option in &args.options {
        match option.as_str() {
            "ro" => fs_options.read_only = true,
            "noatime" => fs_options.atime = hafs_core::ctx::AtimeMode::Noatime,
            "strictatime" => fs_options.atime = hafs_core::ctx::AtimeMode::Strictatime,
            "relatime" | "rw" | "allow_other" | "default_permissions" | "" => {}
            other => return Err(format!("unknown mount option {other:?} (known: allow_other, ro, default_permissions, noatime, strictatime)")),
        }
    }
    Ok(fs_options)
}

/// Turn common mistakes into one clear line before touching FUSE.
fn preflight(kv: &KvArgs, args: &MountArgs) -> Result<(), String> {
    let mp = &args.mountpoint;
    match std::fs::metadata(mp) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => {
            return Err(format!(
            "mount point {} is a dead mount (its hafs process is gone): clear it with umount -l {}",
            mp.display(),
            mp.display()
        ))
        }
        Err(_) => return Err(format!("mount point {} does not exist", mp.display())),
        Ok(m) if !m.is_dir() => {
            return Err(format!("mount point {} is not a directory", mp.display()))
        }
        Ok(_) => {}
    }
    let canonical = std::fs::canonicalize(mp).unwrap_or_else(|_| mp.clone());
    if let Ok(hafs_core::kv::url::KvUrl::Sqlite(db)) = hafs_core::kv::url::KvUrl::parse(&kv.url()) {
        // SQLite opens its files by path: through the mount itself, they
        // would wait on this very process.
        let dir = db
            .parent()
            .map(|d| std::fs::canonicalize(d).unwrap_or_else(|_| d.to_path_buf()));
        if dir.is_some_and(|d| d.starts_with(&canonical)) {
            return Err(format!(
                "the database {} is under the mount point {}: mount somewhere else",
                db.display(),
                mp.display()
            ));
        }
    }
    if is_mountpoint(mp) {
        return Err(format!(
            "{} is already a mount point (unmount it first: umount {})",
            mp.display(),
            mp.display()
        ));
    }
    if !Path::new("/dev/fuse").exists() {
        return Err("/dev/fuse is missing: load the fuse module (modprobe fuse) or install the fuse3 package".into());
    }
    Ok(())
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "unknown".into())
}

/// Mount and serve until unmounted or told to stop. Blocks.
pub fn run(kv: &KvArgs, args: &MountArgs) -> Result<(), String> {
    let fs_options = check_options(args)?;
    preflight(kv, args)?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("hafs")
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))?;
    let clock: Arc<dyn Clock> = runtime.block_on(async { TokioClock::new() });
    let db = kv.open(clock.clone())?;
    let pid = std::process::id();
    let session = SessionOptions {
        heartbeat: Duration::from_secs(args.heartbeat.max(1)),
        expiry: Duration::from_secs(args.expiry.max(2)),
    };
    let info = ClientInfo {
        id: format!("{}-{pid}-{:08x}", hostname(), os_seed() as u32),
        hostname: hostname(),
        pid,
        exe: std::env::current_exe()
            .map(|p| p.display().to_string())
            .unwrap_or_default(),
        description: args.description.clone(),
        mounted_ns: clock.wall_ns(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        // Published, so mounts with another --expiry judge this one by it.
        expiry: session.expiry,
    };
    let fs_name = kv.fs_name.clone();
    let fs = runtime.block_on(async {
        let opened = Fs::open_client(db.clone(), &fs_name, &info, fs_options).await;
        match opened {
            Err(FsError::NotFormatted(_)) if args.mkfs => {
                hafs_core::fs::mkfs(&db, &fs_name, mkfs_options_for_caller())
                    .await
                    .map_err(|e| format!("mkfs failed: {e}"))?;
                Fs::open_client(db.clone(), &fs_name, &info, fs_options).await
            }
            other => other,
        }
        .map_err(|e| match e {
            FsError::NotFormatted(name) => format!(
                "filesystem {name:?} is not formatted in {}: run `hafs mkfs --fs-name {name}` (or mount with --mkfs)",
                kv.url()
            ),
            other => format!("cannot open filesystem {fs_name:?}: {other}"),
        })
    })?;
    let fs = Arc::new(fs);
    // The background loops, stopped before the runtime is dropped (below).
    let mut loops = Vec::new();
    {
        let fs = fs.clone();
        loops.push(runtime.spawn(async move {
            fs.maintain_session(session).await;
        }));
    }
    let default_permissions = args.options.iter().any(|o| o == "default_permissions");
    let ttls = CacheTtls {
        attr: Duration::from_secs_f64(args.attr_timeout),
        // Without default_permissions the kernel checks no search
        // permission on a cached name: the adapter then caches names only
        // in directories everyone may search (`hafs_core::cache`).
        entry: Duration::from_secs_f64(args.entry_timeout),
    };
    {
        let fs = fs.clone();
        loops.push(runtime.spawn(async move {
            fs.run_deferred_releases().await;
        }));
    }
    let gate = CacheGate::new(ttls, clock.clone());
    let shutdown_gate = gate.clone();
    if gate.enabled() {
        let (fs, gate) = (fs.clone(), gate.clone());
        loops.push(runtime.spawn(async move {
            fs.keep_cache_lease(gate, session.expiry).await;
        }));
    }
    let tasks = RequestTasks::default();
    // From here on every way out detaches the client and stops the loops
    // and request tasks (below), a failed mount included.
    let served = (|| -> Result<(), String> {
        let mut config = fuser::Config::default();
        if args.fuse_threads > 1 {
            config.n_threads = Some(args.fuse_threads.min(64));
            config.clone_fd = true;
        }
        config.mount_options = vec![
            fuser::MountOption::FSName(format!("hafs:{}", kv.fs_name)),
            fuser::MountOption::Subtype("hafs".into()),
        ];
        if fs_options.read_only {
            config.mount_options.push(fuser::MountOption::RO);
        }
        if default_permissions {
            config
                .mount_options
                .push(fuser::MountOption::DefaultPermissions);
        }
        if args.options.iter().any(|o| o == "allow_other") {
            config.acl = fuser::SessionACL::All;
        }
        let adapter = HafsFuse::new(
            fs.clone(),
            gate,
            runtime.handle().clone(),
            default_permissions,
            tasks.clone(),
        );
        let session = fuser::Session::new(adapter, &args.mountpoint, &config)
            .map_err(|e| format!("cannot mount on {}: {e}", args.mountpoint.display()))?;
        // Giving the lease up then drops what the kernel cached instead of
        // waiting for it to expire.
        shutdown_gate.set_kernel(Arc::new(crate::adapter::KernelNotify(session.notifier())));
        let background = session
            .spawn()
            .map_err(|e| format!("cannot serve the mount: {e}"))?;
        tracing::info!(
            mountpoint = %args.mountpoint.display(),
            fs = %kv.fs_name,
            client = %fs.client(),
            "mounted"
        );
        wait_for_stop(&background).map_err(|e| format!("cannot watch signals: {e}"))?;
        let ended = if background.guard.is_finished() {
            background.join()
        } else {
            use rustix::mount::{unmount, UnmountFlags};
            match unmount(&args.mountpoint, UnmountFlags::empty()) {
                Ok(()) => background.join(),
                // Someone still uses the mount (a cwd, an open file, a lock
                // holder): detach it from the tree now and serve them until
                // they are done, rather than drop their locks under them and
                // leave a dead mount. A second signal ends the process at once.
                Err(rustix::io::Errno::BUSY) => {
                    tracing::warn!(
                        "the mount is busy: detached it; serving its last users until they close it (signal again to stop now)"
                    );
                    match unmount(&args.mountpoint, UnmountFlags::DETACH) {
                        Ok(()) => background.join(),
                        Err(_) => background.umount_and_join(),
                    }
                }
                // Not root: fusermount3 unmounts for us, lazily if busy.
                Err(rustix::io::Errno::PERM) => {
                    let fusermount = |lazy: bool| {
                        let mut cmd = std::process::Command::new("fusermount3");
                        cmd.arg("-u");
                        if lazy {
                            cmd.arg("-z");
                        }
                        cmd.arg(&args.mountpoint)
                            .stderr(std::process::Stdio::null())
                            .status()
                            .is_ok_and(|s| s.success())
                    };
                    if fusermount(false) || fusermount(true) {
                        background.join()
                    } else {
                        background.umount_and_join()
                    }
                }
                Err(_) => background.umount_and_join(),
            }
        };
        if let Err(e) = ended {
            tracing::warn!(error = %e, "the FUSE session ended with an error");
            // The kernel mount may live on (a busy unmount): stop it believing
            // our caches before detaching lets another client in.
            runtime.block_on(shutdown_gate.close());
        }
        Ok(())
    })();
    // The kernel is gone: nobody can take the replies of requests still
    // being served.
    runtime.block_on(tasks.stop());
    match runtime.block_on(fs.close()) {
        Ok(_) if served.is_ok() => tracing::info!("unmounted; client detached"),
        Ok(_) => {}
        Err(e) => {
            tracing::warn!(error = %e, "unmounted; detaching the client failed (it will expire)")
        }
    }
    // Cancel the loops and wait until they are gone. Dropping the runtime
    // with one of them inside `block_in_place` (a commit waiting for
    // SQLite's write lock) let it resume after the timers had shut down:
    // its retry's sleep then panicked ("A Tokio 1.x context was found, but
    // it is being shutdown"), once in a test run of two mounts. An aborted
    // task ends at its next await, with the timers still running.
    for task in &loops {
        task.abort();
    }
    for task in loops {
        let _ = runtime.block_on(task);
    }
    served
}

/// Until SIGINT/SIGTERM/SIGHUP (a closed terminal), or the mount goes away
/// (umount, fusermount3 -u). A second signal exits at once, whatever the
/// unmount is waiting for (the client's locks then expire).
fn wait_for_stop(background: &fuser::BackgroundSession) -> std::io::Result<()> {
    let mut signals =
        signal_hook::iterator::Signals::new([libc::SIGINT, libc::SIGTERM, libc::SIGHUP])?;
    loop {
        if signals.pending().next().is_some() {
            tracing::info!("signal received: unmounting");
            // Signals that came with the first (a hang-up reaches the
            // process twice: from its shell and from the kernel) are not a
            // second one.
            #[allow(clippy::disallowed_methods)] // the real process, never simulated
            let first = std::time::Instant::now();
            std::thread::spawn(move || {
                for _ in signals.forever() {
                    if first.elapsed() >= Duration::from_secs(1) {
                        tracing::warn!("second signal: exiting without a clean unmount");
                        std::process::exit(1);
                    }
                }
            });
            return Ok(());
        }
        if background.guard.is_finished() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cli {
        #[command(flatten)]
        mount: MountArgs,
    }

    fn check(flags: &[&str]) -> Result<(), String> {
        let argv = ["hafs", "/mnt"].iter().chain(flags).copied();
        let cli = Cli::try_parse_from(argv).map_err(|e| e.to_string())?;
        check_options(&cli.mount).map(|_| ())
    }

    #[test]
    fn session_timings_are_checked_before_anything_opens() {
        assert_eq!(check(&[]), Ok(()));
        assert_eq!(check(&["--heartbeat", "600", "--expiry", "3600"]), Ok(()));
        // Others honour a published expiry up to an hour, no longer.
        let long = check(&["--expiry", "3601"]).unwrap_err();
        assert!(long.contains("longer than 3600 seconds"), "{long}");
        let beat = check(&["--heartbeat", "10", "--expiry", "19"]).unwrap_err();
        assert!(beat.contains("at least twice --heartbeat"), "{beat}");
        let ttl = check(&["--heartbeat", "1", "--expiry", "2"]).unwrap_err();
        assert!(ttl.contains("must be shorter than --expiry"), "{ttl}");
        assert_eq!(
            check(&[
                "--heartbeat",
                "1",
                "--expiry",
                "2",
                "--attr-timeout",
                "0",
                "--entry-timeout",
                "0"
            ]),
            Ok(())
        );
    }
}
