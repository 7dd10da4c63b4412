//! `hafs bench dir DIR`: the workloads users choose a filesystem by, run on
//! any directory — a hafs mount, bindfs, tmpfs — so the same numbers can be
//! set side by side (`cli/bench/compare.sh` does, in one run):
//!
//! - mdtest-like metadata phases (create, stat, open/close, rename, unlink)
//!   by N worker threads in private directories and in one shared one;
//! - atomic config updates (write temp, fsync, rename over) while a reader
//!   checks every read sees one whole version;
//! - lock ping-pong between two processes, flock and fcntl;
//! - a big directory: create rate per tenth, full listing, random lookups;
//! - throughput: sequential write and read, 4 KiB random reads.
//!
//! `--other-mount DIR2` is the two-mount variant: the same workloads with a
//! second mount of the same filesystem on the other side of each one.
//!
//! `hafs bench sqlite-commits DIR` measures raw durable SQLite commits per
//! second in DIR (the storage ceiling for durable metadata writes).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};

use crate::bench::{monotonic_ns, open_lock_file, percentile, side, Kind, SharedBoard};

/// A count that must be at least 1 (0 would report 0/s, or divide by it).
fn at_least_one(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Sizes of the `bench dir` workloads.
#[derive(Debug, Clone, clap::Args)]
pub struct DirArgs {
    /// The directory to run in (a `hafs-bench` subdirectory is created and
    /// removed).
    pub dir: PathBuf,
    /// Worker threads for the metadata phases.
    #[arg(long, default_value_t = 4, value_parser = at_least_one)]
    pub workers: usize,
    /// Files per worker in each metadata phase.
    #[arg(long, default_value_t = 500, value_parser = at_least_one)]
    pub files: usize,
    /// Atomic config updates.
    #[arg(long, default_value_t = 300, value_parser = at_least_one)]
    pub updates: usize,
    /// Lock hand-offs per side, for flock and for fcntl.
    #[arg(long, default_value_t = 300, value_parser = at_least_one)]
    pub handoffs: usize,
    /// Entries in the big directory (the full size is 1000000).
    #[arg(long, default_value_t = 100_000, value_parser = at_least_one)]
    pub big: usize,
    /// MiB written and read sequentially.
    #[arg(long, default_value_t = 256, value_parser = clap::value_parser!(u64).range(1..))]
    pub mib: u64,
    /// 4 KiB random reads.
    #[arg(long, default_value_t = 5000, value_parser = at_least_one)]
    pub random_reads: usize,
    /// Only these workloads (comma-separated: meta, config, lock, bigdir, io).
    #[arg(long, value_delimiter = ',', value_parser = ["meta", "config", "lock", "bigdir", "io"])]
    pub only: Vec<String>,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    pub json: bool,
    /// DIR as seen through a second mount of the same filesystem: the
    /// two-mount variant. Metadata workers alternate between the mounts,
    /// the config reader, the second flock side, the big directory's
    /// lookups and the file reads go through this one.
    #[arg(long, value_name = "DIR2")]
    pub other_mount: Option<PathBuf>,
}

/// The benchmark's root through each mount (the same path twice without
/// `--other-mount`).
struct Roots([PathBuf; 2]);

impl Roots {
    /// Where the `i`th worker, side or reader works.
    fn via(&self, i: usize) -> &Path {
        &self.0[i % 2]
    }
}

/// Results in order: (metric, value, unit).
type Results = Vec<(String, f64, &'static str)>;

fn err(what: &str, e: std::io::Error) -> String {
    format!("{what}: {e}")
}

#[allow(clippy::disallowed_methods)] // real I/O timing, outside simulation
fn now() -> Instant {
    Instant::now()
}

/// Latency units for [`push_latency`].
enum Unit {
    Ms,
    Us,
}

/// Push `NAME_median` and `NAME_p99` of `samples`.
fn push_latency(out: &mut Results, name: &str, mut samples: Vec<Duration>, unit: Unit) {
    samples.sort();
    let (scale, label) = match unit {
        Unit::Ms => (1e3, "ms"),
        Unit::Us => (1e6, "us"),
    };
    for (suffix, p) in [("median", 0.5), ("p99", 0.99)] {
        let value = percentile(&samples, p).as_secs_f64() * scale;
        out.push((format!("{name}_{suffix}"), value, label));
    }
}

fn rate(n: usize, took: Duration) -> f64 {
    n as f64 / took.as_secs_f64().max(1e-9)
}

/// Run `phase(worker, file)` for every file of every worker, in threads.
fn parallel(
    workers: usize,
    files: usize,
    phase: impl Fn(usize, usize) -> std::io::Result<()> + Sync,
) -> Result<Duration, String> {
    let started = now();
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..workers)
            .map(|w| {
                let phase = &phase;
                s.spawn(move || (0..files).try_for_each(|f| phase(w, f)))
            })
            .collect();
        handles.into_iter().try_for_each(|h| {
            h.join()
                .map_err(|_| "a worker panicked".to_string())?
                .map_err(|e| err("metadata phase", e))
        })
    })?;
    Ok(started.elapsed())
}

fn meta(roots: &Roots, a: &DirArgs, out: &mut Results) -> Result<(), String> {
    for shared in [false, true] {
        let dir = |w: usize| -> PathBuf {
            let root = roots.via(w);
            if shared {
                root.join("meta-shared")
            } else {
                root.join(format!("meta-{w}"))
            }
        };
        for w in 0..a.workers {
            std::fs::create_dir_all(dir(w)).map_err(|e| err("mkdir", e))?;
        }
        let name = |w: usize, f: usize| dir(w).join(format!("w{w}-f{f}"));
        let moved = |w: usize, f: usize| dir(w).join(format!("w{w}-f{f}.moved"));
        let n = a.workers * a.files;
        let tag = if shared { "shared" } else { "private" };
        let t = parallel(a.workers, a.files, |w, f| {
            File::create(name(w, f)).map(|_| ())
        })?;
        out.push((format!("meta.{tag}.create"), rate(n, t), "ops/s"));
        let t = parallel(a.workers, a.files, |w, f| {
            std::fs::metadata(name(w, f)).map(|_| ())
        })?;
        out.push((format!("meta.{tag}.stat"), rate(n, t), "ops/s"));
        let t = parallel(a.workers, a.files, |w, f| {
            File::open(name(w, f)).map(|_| ())
        })?;
        out.push((format!("meta.{tag}.open_close"), rate(n, t), "ops/s"));
        let t = parallel(a.workers, a.files, |w, f| {
            std::fs::rename(name(w, f), moved(w, f))
        })?;
        out.push((format!("meta.{tag}.rename"), rate(n, t), "ops/s"));
        let t = parallel(a.workers, a.files, |w, f| std::fs::remove_file(moved(w, f)))?;
        out.push((format!("meta.{tag}.unlink"), rate(n, t), "ops/s"));
    }
    Ok(())
}

fn config(roots: &Roots, a: &DirArgs, out: &mut Results) -> Result<(), String> {
    let target = roots.via(0).join("app.conf");
    let tmp = roots.via(0).join("app.conf.tmp");
    let seen = roots.via(1).join("app.conf");
    let version = |n: usize| format!("version {n:08}\n").repeat(64);
    std::fs::write(&target, version(0)).map_err(|e| err("config", e))?;
    let stop = Arc::new(AtomicBool::new(false));
    // reads, reads that found no file, reads that saw a partial or mixed one
    let counts = Arc::new([AtomicU64::new(0), AtomicU64::new(0), AtomicU64::new(0)]);
    let reader = {
        let (stop, counts) = (stop.clone(), counts.clone());
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let mut text = String::new();
                let read = File::open(&seen).and_then(|mut f| f.read_to_string(&mut text));
                let first = text.get(..17).unwrap_or_default();
                let slot = match read {
                    Err(_) => 1,
                    Ok(_) if text.is_empty() || text != first.repeat(64) => 2,
                    Ok(_) => 0,
                };
                counts[slot].fetch_add(1, Ordering::Relaxed);
            }
        })
    };
    let started = now();
    for n in 1..=a.updates {
        let mut f = File::create(&tmp).map_err(|e| err("config tmp", e))?;
        f.write_all(version(n).as_bytes())
            .and_then(|_| f.sync_all())
            .map_err(|e| err("config write", e))?;
        std::fs::rename(&tmp, &target).map_err(|e| err("config rename", e))?;
    }
    let took = started.elapsed();
    stop.store(true, Ordering::Relaxed);
    reader
        .join()
        .map_err(|_| "config reader panicked".to_string())?;
    out.push(("config.updates".into(), rate(a.updates, took), "updates/s"));
    let count = |i: usize| counts[i].load(Ordering::Relaxed);
    out.push((
        "config.reads_during".into(),
        rate(count(0) as usize, took),
        "reads/s",
    ));
    // Not errors of the benchmark: what the target does to a reader racing
    // rename-over (a passthrough FUSE filesystem can lose the name).
    out.push(("config.reader_missing".into(), count(1) as f64, "reads"));
    out.push(("config.reader_partial".into(), count(2) as f64, "reads"));
    Ok(())
}

/// Two processes pass an exclusive lock back and forth, first `flock`, then
/// whole-file `fcntl`; a hand-off is one side's release to the other side
/// holding it. This process is side 1; side 2 is `hafs bench lock-peer`
/// (through the other mount, if any). `lock.KIND_overlaps` counts the times
/// one side took the lock while the other held it, `lock.KIND_stale_reads`
/// the times a side holding it did not read what the other side wrote under
/// it ([`crate::bench::Board`]): zero where locks work — not errors of the
/// benchmark but what the target does (two passthrough FUSE mounts of one
/// directory share neither locks nor cached data).
fn lock(roots: &Roots, a: &DirArgs, out: &mut Results) -> Result<(), String> {
    for kind in [Kind::Flock, Kind::Fcntl] {
        let name = kind.name();
        let (samples, overlaps, stale) =
            pingpong(roots, kind, a.handoffs).map_err(|e| format!("{name} ping-pong: {e}"))?;
        out.push((
            format!("lock.{name}_handoffs"),
            samples.len() as f64,
            "hand-offs",
        ));
        push_latency(out, &format!("lock.{name}_handoff"), samples, Unit::Ms);
        out.push((format!("lock.{name}_overlaps"), overlaps as f64, "times"));
        out.push((format!("lock.{name}_stale_reads"), stale as f64, "reads"));
    }
    Ok(())
}

/// Hand-off times of both sides, the overlaps and the stale reads.
fn pingpong(
    roots: &Roots,
    kind: Kind,
    handoffs: usize,
) -> Result<(Vec<Duration>, u64, u64), String> {
    let name = kind.name();
    let file = roots.via(0).join(format!("lock-{name}"));
    std::fs::write(&file, [0u8]).map_err(|e| err("lock file", e))?;
    let f = open_lock_file(&file)?;
    // Unique even if an interrupted run left one behind under a reused pid.
    let board_path = std::env::temp_dir().join(format!(
        "hafs-bench-lock-{}-{}-{name}",
        std::process::id(),
        monotonic_ns()
    ));
    let board =
        SharedBoard::map(&board_path, true).map_err(|e| err(&board_path.display().to_string(), e));
    let result = board.and_then(|board| {
        let exe = std::env::current_exe().map_err(|e| err("cannot find hafs itself", e))?;
        let mut child = std::process::Command::new(exe)
            .args(["bench", "lock-peer"])
            .arg(&board_path)
            .arg(roots.via(1).join(format!("lock-{name}")))
            .args(["--kind", name, "--handoffs", &handoffs.to_string()])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| err("cannot start the lock peer", e))?;
        let (mut stdout, mut stderr) = (child.stdout.take(), child.stderr.take());
        std::thread::scope(|s| {
            // Its output ends when the peer exits; the child is reaped below,
            // by this thread, so killing it can never hit a reused pid.
            let watcher = s.spawn(|| {
                let (mut out, mut why) = (String::new(), String::new());
                if let Some(o) = stdout.as_mut() {
                    let _ = o.read_to_string(&mut out);
                }
                board.peer_exited();
                if let Some(e) = stderr.as_mut() {
                    let _ = e.read_to_string(&mut why);
                }
                (out, why)
            });
            let mine = side(&f, kind, 1, handoffs, &board);
            let killed = mine.is_err() && !board.has_peer_exited() && child.kill().is_ok();
            let status = child.wait().map_err(|e| err("lock peer", e))?;
            let (out, why) = watcher
                .join()
                .map_err(|_| "the lock peer's watcher panicked".to_string())?;
            // The peer's own failure is the cause of ours, unless we killed it.
            if !status.success() && !killed {
                return Err(format!("lock peer: {} ({status})", why.trim()));
            }
            let mut all = mine.map_err(|e| e.to_string())?;
            for line in out.lines() {
                let ns: u64 = line
                    .parse()
                    .map_err(|_| format!("lock peer printed {line:?}"))?;
                all.push(Duration::from_nanos(ns));
            }
            Ok((all, board.overlaps(), board.stale_reads()))
        })
    });
    let _ = std::fs::remove_file(&board_path);
    result
}

fn bigdir(roots: &Roots, a: &DirArgs, out: &mut Results, quiet: bool) -> Result<(), String> {
    let dir = roots.via(0).join("big");
    let seen = roots.via(1).join("big");
    std::fs::create_dir_all(&dir).map_err(|e| err("mkdir big", e))?;
    let bar = if quiet {
        indicatif::ProgressBar::hidden()
    } else {
        indicatif::ProgressBar::new(a.big as u64)
    };
    let slices = 10;
    let per = a.big.div_ceil(slices);
    let mut rates = Vec::new();
    for s in 0..slices {
        let started = now();
        let range = s * per..((s + 1) * per).min(a.big);
        let n = range.len();
        for i in range {
            File::create(dir.join(format!("entry-{i:08}"))).map_err(|e| err("big create", e))?;
            bar.inc(1);
        }
        rates.push(rate(n, started.elapsed()));
    }
    bar.finish_and_clear();
    out.push(("bigdir.create_first_tenth".into(), rates[0], "creates/s"));
    out.push((
        "bigdir.create_last_tenth".into(),
        *rates.last().unwrap_or(&0.0),
        "creates/s",
    ));
    out.push((
        "bigdir.last_over_first".into(),
        rates.last().unwrap_or(&0.0) / rates[0].max(1e-9),
        "ratio",
    ));
    let started = now();
    let listed = std::fs::read_dir(&seen)
        .map_err(|e| err("readdir", e))?
        .count();
    out.push((
        "bigdir.readdir".into(),
        started.elapsed().as_secs_f64(),
        "s",
    ));
    if listed != a.big {
        return Err(format!("readdir listed {listed} of {} entries", a.big));
    }
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let lat: Vec<Duration> = (0..1000)
        .map(|_| {
            let i = rng.gen_range(0..a.big);
            let started = now();
            std::fs::metadata(seen.join(format!("entry-{i:08}"))).map(|_| started.elapsed())
        })
        .collect::<std::io::Result<_>>()
        .map_err(|e| err("lookup", e))?;
    push_latency(out, "bigdir.lookup", lat, Unit::Us);
    std::fs::remove_dir_all(&dir).map_err(|e| err("rm big", e))?;
    Ok(())
}

fn io(roots: &Roots, a: &DirArgs, out: &mut Results) -> Result<(), String> {
    let path = roots.via(0).join("big-file");
    let seen = roots.via(1).join("big-file");
    let chunk = vec![0x5au8; 1 << 20];
    let started = now();
    let mut f = File::create(&path).map_err(|e| err("create", e))?;
    for _ in 0..a.mib {
        f.write_all(&chunk).map_err(|e| err("write", e))?;
    }
    f.sync_all().map_err(|e| err("fsync", e))?;
    drop(f);
    out.push((
        "io.seq_write".into(),
        a.mib as f64 / started.elapsed().as_secs_f64(),
        "MiB/s",
    ));
    let started = now();
    let mut f = File::open(&seen).map_err(|e| err("open", e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut total = 0u64;
    loop {
        let n = f.read(&mut buf).map_err(|e| err("read", e))?;
        if n == 0 {
            break;
        }
        total += n as u64;
    }
    if total != a.mib << 20 {
        return Err(format!("read back {total} of {} bytes", a.mib << 20));
    }
    out.push((
        "io.seq_read".into(),
        a.mib as f64 / started.elapsed().as_secs_f64(),
        "MiB/s",
    ));
    let mut rng = rand::rngs::StdRng::seed_from_u64(11);
    let blocks = (a.mib << 20) / 4096;
    let mut page = [0u8; 4096];
    let started = now();
    for _ in 0..a.random_reads {
        let at = rng.gen_range(0..blocks) * 4096;
        f.read_exact_at(&mut page, at)
            .map_err(|e| err("random read", e))?;
    }
    out.push((
        "io.rand_read_4k".into(),
        rate(a.random_reads, started.elapsed()),
        "IOPS",
    ));
    drop(f);
    std::fs::remove_file(&path).map_err(|e| err("rm", e))?;
    Ok(())
}

pub fn run_dir(a: &DirArgs) -> Result<(), String> {
    let root = a.dir.join("hafs-bench");
    if root.exists() {
        return Err(format!("{} exists; remove it first", root.display()));
    }
    std::fs::create_dir_all(&root).map_err(|e| err(&root.display().to_string(), e))?;
    let other = match &a.other_mount {
        Some(dir) => {
            let other = dir.join("hafs-bench");
            if !other.is_dir() {
                let _ = std::fs::remove_dir_all(&root);
                return Err(format!(
                    "{} does not show {}: is it a mount of the same filesystem?",
                    dir.display(),
                    root.display()
                ));
            }
            other
        }
        None => root.clone(),
    };
    let roots = Roots([root.clone(), other]);
    let want = |w: &str| a.only.is_empty() || a.only.iter().any(|o| o == w);
    let mut out = Results::new();
    let result = (|| {
        if want("meta") {
            meta(&roots, a, &mut out)?;
        }
        if want("config") {
            config(&roots, a, &mut out)?;
        }
        if want("lock") {
            lock(&roots, a, &mut out)?;
        }
        if want("bigdir") {
            bigdir(&roots, a, &mut out, a.json)?;
        }
        if want("io") {
            io(&roots, a, &mut out)?;
        }
        Ok::<_, String>(())
    })();
    let _ = std::fs::remove_dir_all(&root);
    result?;
    if a.json {
        let map: serde_json::Map<String, serde_json::Value> = out
            .iter()
            .map(|(k, v, _)| (k.clone(), serde_json::json!(v)))
            .collect();
        println!("{}", serde_json::Value::Object(map));
    } else {
        match &a.other_mount {
            Some(other) => println!(
                "hafs bench dir {} --other-mount {}",
                a.dir.display(),
                other.display()
            ),
            None => println!("hafs bench dir {}", a.dir.display()),
        }
        for (k, v, unit) in &out {
            println!("{k:<32} {v:>14.2} {unit}");
        }
    }
    Ok(())
}

/// Raw SQLite: one-row durable commits (WAL, synchronous=FULL) per second
/// in `dir` for `seconds` — what durable metadata writes can reach there.
pub fn sqlite_commits(dir: &Path, seconds: f64, json: bool) -> Result<(), String> {
    let path = dir.join(format!("hafs-bench-sqlite-{}.db", std::process::id()));
    let sql = |e: rusqlite::Error| format!("sqlite: {e}");
    let conn = rusqlite::Connection::open(&path).map_err(sql)?;
    let result = (|| {
        conn.query_row("PRAGMA journal_mode=WAL", [], |_| Ok(()))
            .map_err(sql)?;
        conn.execute_batch(
            "PRAGMA synchronous=FULL; CREATE TABLE t(k INTEGER PRIMARY KEY, v BLOB);",
        )
        .map_err(sql)?;
        let started = now();
        let mut n = 0usize;
        while started.elapsed().as_secs_f64() < seconds {
            conn.execute("INSERT INTO t(v) VALUES (zeroblob(100))", [])
                .map_err(sql)?;
            n += 1;
        }
        Ok::<_, String>(rate(n, started.elapsed()))
    })();
    drop(conn);
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let per_second = result?;
    if json {
        println!(
            "{}",
            serde_json::json!({ "sqlite.durable_commits": per_second })
        );
    } else {
        println!(
            "{:<32} {per_second:>14.2} commits/s",
            "sqlite.durable_commits"
        );
    }
    Ok(())
}
