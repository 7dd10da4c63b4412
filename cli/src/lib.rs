//! The `hafs` command line (and the original HAFS command names, which are
//! thin binaries calling [`main_as`]). Every command works on the database
//! `--kv` (or `HAFS_KV`) names, default the embedded SQLite one; every
//! error is one line on stderr and a nonzero exit.

use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand};
use hafs_core::clock::{Clock, TokioClock};
use hafs_core::fs::MkfsOptions;
use hafs_core::keys::{InodeLayout, Keys};
use hafs_core::session;
use hafs_fuse::mount::{KvArgs, MountArgs};

pub mod bench;
pub mod bench_dir;

#[derive(Debug, Parser)]
#[command(
    name = "hafs",
    version,
    about = "hafs: a high-availability filesystem for config, metadata and locks"
)]
pub struct Cli {
    #[command(flatten)]
    pub kv: KvArgs,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create a filesystem (refuses an existing one unless --overwrite).
    Mkfs {
        #[arg(long)]
        overwrite: bool,
        /// Bytes per data chunk (default 4096; 512 to 100000).
        #[arg(long)]
        chunk_size: Option<u64>,
        /// Where inodes' keys sit: "allocation" (made-together inodes side
        /// by side; the default on SQLite and memory) or "spread" (far
        /// apart; the default on FoundationDB, which shards by key range).
        #[arg(long, value_parser = parse_layout)]
        inode_layout: Option<InodeLayout>,
    },
    /// Remove a filesystem (refuses one with files or mounted clients unless --force).
    Rmfs {
        #[arg(long)]
        force: bool,
    },
    /// List the filesystems in the database.
    ListFilesystems,
    /// Mount a filesystem (foreground; stop with Ctrl-C or umount).
    Mount(MountArgs),
    /// Check a filesystem's invariants; exits 1 if anything is wrong.
    Fsck,
    /// List mounted clients with their heartbeat and what they hold.
    ListClients {
        #[arg(long)]
        json: bool,
    },
    /// Evict a client: fence it out and release its locks and open files.
    Evict { client: String },
    /// Evict clients whose heartbeat does not move for the expiry period
    /// (watches for that long first).
    GcClients {
        #[arg(long, default_value_t = 30)]
        expiry: u64,
    },
    /// Finish evictions that stopped midway (live mounts do this too).
    Gc,
    /// Benchmarks on real mounts (needs root and /dev/fuse).
    Bench(bench::BenchArgs),
}

/// The shortest `gc-clients --expiry`: twice the default heartbeat.
const GC_EXPIRY_MIN: u64 = 10;

/// Run `hafs` with `args` (argv without the program name is taken from the
/// environment when `args` is None).
pub fn main_as(prefix: &[&str]) {
    let mut argv: Vec<String> = std::env::args().collect();
    // `hafs-mkfs ARGS` is `hafs mkfs ARGS`, with the global flags allowed.
    for (i, word) in prefix.iter().enumerate() {
        argv.insert(1 + i, (*word).to_string());
    }
    if !prefix.is_empty() {
        argv[0] = "hafs".into();
    }
    let cli: Cli = hafs_fuse::mount::parse_or_exit("hafs", argv);
    let debug = matches!(&cli.command, Command::Mount(m) if m.debug_fuse);
    hafs_fuse::mount::init_logging(debug);
    if let Err(e) = run(cli) {
        eprintln!("hafs: error: {e}");
        std::process::exit(1);
    }
}

fn parse_layout(s: &str) -> Result<InodeLayout, String> {
    InodeLayout::parse(s)
        .ok_or_else(|| format!("{s:?} is not an inode layout (allocation, spread)"))
}

fn runtime() -> Result<tokio::runtime::Runtime, String> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|e| format!("cannot start the runtime: {e}"))
}

pub fn run(cli: Cli) -> Result<(), String> {
    if let Command::Mount(args) = &cli.command {
        return hafs_fuse::mount::run(&cli.kv, args);
    }
    if let Command::Bench(args) = &cli.command {
        return bench::run(args, cli.kv.relaxed_durability);
    }
    let rt = runtime()?;
    rt.block_on(async move {
        let clock: Arc<dyn Clock> = TokioClock::new();
        let db = cli.kv.open(clock.clone())?;
        let name = cli.kv.fs_name.as_str();
        let fail = |e: hafs_core::error::FsError| e.to_string();
        // The commands below that touch an existing filesystem's inodes.
        let keys = || async { hafs_core::fs::open_keys(&db, name).await.map(|(keys, _)| keys).map_err(fail) };
        match cli.command {
            Command::Mount(_) | Command::Bench(_) => unreachable!("handled above"),
            Command::Mkfs { overwrite, chunk_size, inode_layout } => {
                let mut options = MkfsOptions {
                    overwrite,
                    inode_layout,
                    ..hafs_fuse::mount::mkfs_options_for_caller()
                };
                if let Some(size) = chunk_size {
                    options.chunk_size = size;
                }
                hafs_core::fs::mkfs(&db, name, options).await.map_err(|e| match e {
                    hafs_core::error::FsError::AlreadyFormatted(n) => {
                        format!("filesystem {n:?} already exists (use --overwrite to replace it)")
                    }
                    hafs_core::error::FsError::Invalid => "invalid --chunk-size (512..=100000)".into(),
                    other => other.to_string(),
                })?;
                println!("created filesystem {name:?} in {}", cli.kv.url());
            }
            Command::Rmfs { force } => {
                hafs_core::fs::rmfs(&db, name, force).await.map_err(fail)?;
                println!("removed filesystem {name:?}");
            }
            Command::ListFilesystems => {
                for fs in hafs_core::fs::list_filesystems(&db).await.map_err(fail)? {
                    println!("{fs}");
                }
            }
            Command::Fsck => return fsck(&db, name).await,
            Command::ListClients { json } => return list_clients(&db, &keys().await?, clock.as_ref(), json).await,
            Command::Evict { client } => {
                let (was, stats) = session::evict(&db, &keys().await?, &client).await.map_err(fail)?;
                if !was && stats.locked_inodes == 0 && stats.open_inodes == 0 {
                    return Err(format!("no client {client:?} is attached to {name:?}"));
                }
                println!(
                    "evicted {client}: released locks on {} inodes and {} open files ({} freed)",
                    stats.locked_inodes, stats.open_inodes, stats.freed_inodes
                );
            }
            Command::GcClients { expiry } => {
                if expiry < GC_EXPIRY_MIN {
                    // A live mount beats every 5 s (by default): a shorter
                    // watch would take healthy mounts for dead ones.
                    return Err(format!(
                        "--expiry {expiry} is shorter than {GC_EXPIRY_MIN} s: live mounts (heartbeat every 5 s) would be evicted"
                    ));
                }
                let expiry = Duration::from_secs(expiry);
                let keys = keys().await?;
                let mut tracker = session::ExpiryTracker::default();
                tracker.sweep(&db, &keys, clock.as_ref(), expiry, None).await.map_err(fail)?;
                // A client is judged by its own expiry when that is longer
                // (`ExpiryTracker`): watch long enough to judge every one.
                let watch = expiry.max(tracker.longest_published());
                let why = if watch > expiry { " (the longest expiry a mount published; `hafs evict CLIENT` acts at once)" } else { "" };
                eprintln!("watching heartbeats for {}s{why}...", watch.as_secs_f64().ceil());
                clock.sleep(watch + Duration::from_millis(100)).await;
                let evicted = tracker.sweep(&db, &keys, clock.as_ref(), expiry, None).await.map_err(fail)?;
                println!("evicted {} expired clients{}", evicted.len(), if evicted.is_empty() { String::new() } else { format!(": {}", evicted.join(", ")) });
            }
            Command::Gc => {
                let stats = session::gc(&db, &keys().await?).await.map_err(fail)?;
                println!(
                    "finished {} evictions: released locks on {} inodes and {} open files ({} freed); freed {} unlinked inodes past their grace",
                    stats.clients, stats.locked_inodes, stats.open_inodes, stats.freed_inodes, stats.swept_inodes
                );
            }
        }
        Ok(())
    })
}

async fn fsck(db: &hafs_core::kv::Database, name: &str) -> Result<(), String> {
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} fsck {msg}").expect("static template"),
    );
    let report = hafs_core::fsck::check_invariants(db, name, |keys| {
        bar.set_message(format!("{keys} keys scanned"));
        bar.tick();
    })
    .await
    .map_err(|e| e.to_string())?;
    bar.finish_and_clear();
    println!(
        "{name}: {} inodes, {} entries, {} keys",
        report.inodes, report.entries, report.keys
    );
    if report.is_clean() {
        println!("clean");
        return Ok(());
    }
    for v in &report.violations {
        println!("inode {}: {}", v.ino, v.problem);
    }
    Err(format!("{} problems found", report.violations.len()))
}

async fn list_clients(
    db: &hafs_core::kv::Database,
    keys: &Keys,
    clock: &dyn Clock,
    json: bool,
) -> Result<(), String> {
    // Ages compare the hosts' wall clocks: for people only; expiry never does.
    let first = session::list_clients(db, keys)
        .await
        .map_err(|e| e.to_string())?;
    let now_ns = clock.wall_ns();
    if json {
        // serde_json, not format!: ids, hosts and descriptions are free text.
        let rows: Vec<serde_json::Value> = first
            .iter()
            .map(|c| {
                serde_json::json!({
                    "id": c.info.id,
                    "hostname": c.info.hostname,
                    "pid": c.info.pid,
                    "exe": c.info.exe,
                    "description": c.info.description,
                    "mounted_ns": c.info.mounted_ns,
                    "version": c.info.version,
                    "heartbeat": c.heartbeat,
                    "last_heartbeat_ns": c.last_beat_ns,
                    "locked_inodes": c.locked_inodes,
                    "open_inodes": c.open_inodes,
                    "cache_lease": c.cache_lease,
                    "expiry_ns": u64::try_from(c.info.expiry.as_nanos()).unwrap_or(u64::MAX),
                })
            })
            .collect();
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    println!(
        "{:<36} {:<16} {:>8} {:>10} {:>10} {:>7} {:>7} {:>6} {:>6}  DESCRIPTION",
        "CLIENT", "HOST", "PID", "MOUNTED", "HEARTBEAT", "EXPIRY", "LOCKED", "OPEN", "CACHES"
    );
    let age = |ns: i64| Duration::from_nanos((now_ns - ns).max(0) as u64).as_secs();
    for c in first {
        println!(
            "{:<36} {:<16} {:>8} {:>8}s {:>8}s {:>7} {:>7} {:>6} {:>6}  {}",
            c.info.id,
            c.info.hostname,
            c.info.pid,
            age(c.info.mounted_ns),
            age(c.last_beat_ns),
            // Not published by mounts of older versions.
            if c.info.expiry.is_zero() {
                "-".to_string()
            } else {
                format!("{}s", c.info.expiry.as_secs_f64())
            },
            c.locked_inodes,
            c.open_inodes,
            if c.cache_lease { "yes" } else { "no" },
            c.info.description
        );
    }
    Ok(())
}
