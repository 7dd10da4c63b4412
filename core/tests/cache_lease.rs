//! The cache lease (`hafs_core::cache`): a sole client opens its gate; a
//! client that attaches returns from `Fs::open` only once the holder's
//! gate is closed, its cached replies in flight are done and their TTL has
//! passed; the holder does not take the lease back while the other client
//! is attached, and does once it left; a holder whose heartbeat stopped is
//! evicted after its own expiry. Real time (the gate's waits are what is
//! tested), with short TTLs.

// The assertions compare against the OS clock the TokioClock reads.
#![allow(clippy::disallowed_methods)]

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hafs_core::cache::{CacheGate, CacheTtls, LEASE_POLL, REVOKE_MARGIN};
use hafs_core::clock::{Clock, TokioClock};
use hafs_core::ctx::{Caller, FsOptions};
use hafs_core::error::FsError;
use hafs_core::fs::{mkfs, Fs, MkfsOptions};
use hafs_core::keys::{InodeLayout, Keys, ROOT_INO};
use hafs_core::kv::fault::{CommitFault, FaultPlan, FaultyBackend, ReadFault};
use hafs_core::kv::mem::MemBackend;
use hafs_core::kv::{CommitRequest, Database, Mutation, RangeOptions};
use hafs_core::ops::open::Frees;
use hafs_core::ops::write::WriteAt;
use hafs_core::session::{self, sweep_unlinked, sweep_unlinked_by, SessionOptions};

const TTL: Duration = Duration::from_millis(400);

async fn db() -> Database {
    let clock: Arc<dyn Clock> = TokioClock::new();
    let db = Database::new(Arc::new(MemBackend::new(clock.clone())), clock, 5);
    mkfs(&db, "fs", MkfsOptions::default()).await.unwrap();
    db
}

async fn client(db: &Database, id: &str) -> Arc<Fs> {
    Arc::new(
        Fs::open(db.clone(), "fs", id, FsOptions::default())
            .await
            .unwrap(),
    )
}

/// A closed gate for `fs`.
fn gate(fs: &Arc<Fs>) -> Arc<CacheGate> {
    let ttls = CacheTtls {
        attr: TTL,
        entry: TTL,
    };
    CacheGate::new(ttls, fs.db().clock().clone())
}

/// `fs` keeping the lease with `gate`.
fn keep_with(
    fs: &Arc<Fs>,
    gate: &Arc<CacheGate>,
    expiry: Duration,
) -> tokio::task::JoinHandle<FsError> {
    let (fs, gate) = (fs.clone(), gate.clone());
    tokio::spawn(async move { fs.keep_cache_lease(gate, expiry).await })
}

/// `fs` keeping the lease with a fresh gate.
fn keep(fs: &Arc<Fs>, expiry: Duration) -> (Arc<CacheGate>, tokio::task::JoinHandle<FsError>) {
    let gate = gate(fs);
    let task = keep_with(fs, &gate, expiry);
    (gate, task)
}

async fn lease_held(db: &Database, client: &str) -> bool {
    // Lease keys sit where every inode layout puts them.
    let key = Keys::new("fs", InodeLayout::Allocation).cache_lease(client);
    db.read(|txn| {
        let key = key.clone();
        async move { txn.get(&key).await }
    })
    .await
    .unwrap()
    .is_some()
}

async fn until(what: &str, mut cond: impl FnMut() -> bool) {
    // Taking the lease back waits out two transaction age limits (cache.rs).
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newcomer_waits_until_the_holders_caches_expired() {
    let db = db().await;
    let a = client(&db, "a").await;
    let gate = gate(&a);
    // An operation that began before the lease was taken: its read may
    // predate another client's last change, so its reply is not cached.
    let early = gate.ticket();
    let _task = keep_with(&a, &gate, Duration::from_secs(30));
    until("a to take the lease", || gate.is_open()).await;
    assert!(lease_held(&db, "a").await);
    assert_eq!(gate.enter(early).attr_ttl(), Duration::ZERO);
    assert_eq!(gate.enter(gate.ticket()).attr_ttl(), TTL);

    // A cached reply still on its way to the kernel when b attaches.
    let in_flight = gate.enter(gate.ticket());
    assert_eq!(in_flight.entry_ttl(), TTL);
    let started = Instant::now();
    let opening = {
        let db = db.clone();
        tokio::spawn(async move { client(&db, "b").await })
    };
    until("a to close its gate", || !gate.is_open()).await;
    assert_eq!(
        gate.enter(gate.ticket()).attr_ttl(),
        Duration::ZERO,
        "closed: TTL 0"
    );
    tokio::time::sleep(Duration::from_millis(600)).await;
    assert!(
        !opening.is_finished(),
        "b attached while a reply was in flight"
    );
    let sent = Instant::now();
    drop(in_flight);
    let b = opening.await.unwrap();
    let waited = sent.elapsed();
    assert!(
        waited >= TTL + REVOKE_MARGIN,
        "b attached {waited:?} after a's last cached reply (TTL {TTL:?})"
    );
    assert!(!lease_held(&db, "a").await);
    eprintln!("b attached after {:?}", started.elapsed());

    // b sees its own change and a the change at once (a's gate is closed).
    b.mkdir(&Caller::root(), ROOT_INO, b"from-b", 0o755)
        .await
        .unwrap();
    a.lookup(&Caller::root(), ROOT_INO, b"from-b")
        .await
        .unwrap();

    // No lease while two clients are attached ...
    tokio::time::sleep(LEASE_POLL * 5).await;
    assert!(!gate.is_open());
    assert!(!lease_held(&db, "a").await && !lease_held(&db, "b").await);
    // ... and a takes it back once b has left.
    b.close().await.unwrap();
    until("a to take the lease back", || gate.is_open()).await;
    assert!(lease_held(&db, "a").await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_that_stopped_is_evicted_after_its_own_expiry() {
    let db = db().await;
    let a = client(&db, "a").await;
    let expiry = Duration::from_secs(2);
    let (gate, task) = keep(&a, expiry);
    until("a to take the lease", || gate.is_open()).await;
    // a's mount stops (SIGSTOP, a hung host): no heartbeats, no lease loop.
    task.abort();
    let started = Instant::now();
    let b = client(&db, "b").await;
    assert!(
        started.elapsed() >= expiry,
        "b attached after {:?}, before a's expiry",
        started.elapsed()
    );
    assert!(!lease_held(&db, "a").await, "eviction clears the lease");
    assert!(matches!(
        a.getattr(&Caller::root(), ROOT_INO).await,
        Err(FsError::Fenced)
    ));
    b.getattr(&Caller::root(), ROOT_INO).await.unwrap();
}

/// Client "a" with an unlink grace of 1 ns: what it unlinks may be freed
/// at once, as soon as nobody holds it.
async fn short_grace(db: &Database) -> Arc<Fs> {
    let options = FsOptions {
        unlink_grace_ns: 1,
        ..FsOptions::default()
    };
    Arc::new(Fs::open(db.clone(), "fs", "a", options).await.unwrap())
}

/// `fs` keeping the lease with a fresh gate, once it holds it.
async fn holding(fs: &Arc<Fs>) -> (Arc<CacheGate>, tokio::task::JoinHandle<FsError>) {
    let (gate, task) = keep(fs, Duration::from_secs(30));
    until("the lease to be taken", || gate.is_open()).await;
    (gate, task)
}

/// Inodes `client` has an open record of.
async fn open_records(db: &Database, client: &str) -> Vec<u64> {
    let keys = Keys::new("fs", InodeLayout::Allocation);
    let (begin, end) = keys.client_opens(client);
    db.read(|txn| {
        let (begin, end, keys) = (begin.clone(), end.clone(), keys.clone());
        async move {
            let page = txn.get_range(&begin, &end, RangeOptions::default()).await?;
            Ok::<_, FsError>(
                page.kvs
                    .iter()
                    .map(|(k, _)| keys.client_index_ino(client, k).unwrap())
                    .collect(),
            )
        }
    })
    .await
    .unwrap()
}

/// While a client holds the lease, its opens of linked files write no
/// record (`hafs_core::ops::open`, unrecorded opens): a close then writes
/// nothing, and an open file it unlinks stays parked however often anyone
/// sweeps — a process with no client (`hafs gc`) because a lease is held,
/// the holder's own sweep because its table has the file open. Before the
/// lease goes to a newcomer the holder records what it still has open, so
/// the newcomer's sweep leaves the file alone too, and the last close frees
/// it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn opens_under_the_lease_are_recorded_before_it_goes() {
    let db = db().await;
    let a = short_grace(&db).await;
    let root = Caller::root();
    let kept = a
        .create_open(&root, ROOT_INO, b"kept", 0o644, libc::O_RDWR)
        .await
        .unwrap();
    a.release(&root, kept.ino).await.unwrap();
    let (gate, _task) = holding(&a).await;

    // Under the lease: a create and an open of an existing file.
    let f = a
        .create_open(&root, ROOT_INO, b"f", 0o644, libc::O_RDWR)
        .await
        .unwrap();
    a.write(&root, f.ino, WriteAt::Append, b"data")
        .await
        .unwrap();
    a.open_file(&root, kept.ino, libc::O_RDONLY).await.unwrap();
    assert_eq!(open_records(&db, "a").await, Vec::<u64>::new());
    assert_eq!(a.open_table().unrecorded(), 2);
    a.release(&root, kept.ino).await.unwrap();
    assert_eq!(a.open_table().unrecorded(), 1, "a close forgets its open");

    // f, unlinked while open and past its grace, is not freed by anyone.
    a.unlink(&root, ROOT_INO, b"f").await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        sweep_unlinked(&db, a.keys()).await.unwrap(),
        0,
        "a lease is held"
    );
    assert_eq!(session::gc(&db, a.keys()).await.unwrap().swept_inodes, 0);
    let as_a = Frees {
        here: Some(("a", a.open_table())),
        ..Frees::default()
    };
    assert_eq!(
        sweep_unlinked_by(&db, a.keys(), as_a).await.unwrap(),
        0,
        "a has it open"
    );
    assert_eq!(a.read(&root, f.ino, 0, 10).await.unwrap(), b"data");

    // b attaches: a records f before giving the lease up.
    let b = client(&db, "b").await;
    assert!(!lease_held(&db, "a").await);
    assert!(!gate.is_open());
    assert_eq!(open_records(&db, "a").await, vec![f.ino]);
    assert_eq!(a.open_table().unrecorded(), 0);
    assert_eq!(
        sweep_unlinked(&db, b.keys()).await.unwrap(),
        0,
        "a's record"
    );
    // A new open is recorded now; its close clears the record.
    a.open_file(&root, kept.ino, libc::O_RDONLY).await.unwrap();
    assert_eq!(open_records(&db, "a").await.len(), 2);
    a.release(&root, kept.ino).await.unwrap();
    assert_eq!(open_records(&db, "a").await, vec![f.ino]);
    assert_eq!(a.read(&root, f.ino, 0, 10).await.unwrap(), b"data");
    // The last close frees f.
    a.release(&root, f.ino).await.unwrap();
    assert_eq!(open_records(&db, "a").await, Vec::<u64>::new());
    assert_eq!(b.getattr(&root, f.ino).await, Err(FsError::NotFound));
}

/// A holder's own sweep frees what it unlinked once it closed it: its
/// lease holds back only the inodes it has open. An unlinked inode is
/// opened with a record even under the lease.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_holders_sweep_frees_what_it_closed() {
    let db = db().await;
    let a = short_grace(&db).await;
    let root = Caller::root();
    let (_gate, _task) = holding(&a).await;
    let f = a
        .create_open(&root, ROOT_INO, b"f", 0o644, libc::O_RDWR)
        .await
        .unwrap();
    a.unlink(&root, ROOT_INO, b"f").await.unwrap();
    a.release(&root, f.ino).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(
        sweep_unlinked(&db, a.keys()).await.unwrap(),
        0,
        "a lease is held"
    );
    let as_a = Frees {
        here: Some(("a", a.open_table())),
        ..Frees::default()
    };
    assert_eq!(sweep_unlinked_by(&db, a.keys(), as_a).await.unwrap(), 1);
    assert_eq!(a.getattr(&root, f.ino).await, Err(FsError::NotFound));

    // An unlinked (parked) inode is opened with a record even here, so
    // that the open conflicts with a sweep freeing it; its last close,
    // past the grace, frees it.
    let g = a
        .create_open(&root, ROOT_INO, b"g", 0o644, libc::O_RDWR)
        .await
        .unwrap();
    a.release(&root, g.ino).await.unwrap();
    a.unlink(&root, ROOT_INO, b"g").await.unwrap();
    a.open_file(&root, g.ino, libc::O_RDONLY).await.unwrap();
    assert_eq!(open_records(&db, "a").await, vec![g.ino]);
    tokio::time::sleep(Duration::from_millis(5)).await;
    a.release(&root, g.ino).await.unwrap();
    assert_eq!(open_records(&db, "a").await, Vec::<u64>::new());
    assert_eq!(a.getattr(&root, g.ino).await, Err(FsError::NotFound));
}

/// Delays every commit that writes an open record of client "a".
#[derive(Debug)]
struct SlowRecords(Keys);

impl FaultPlan for SlowRecords {
    fn on_commit(&self, request: &CommitRequest) -> CommitFault {
        let (begin, end) = self.0.client_opens("a");
        let records = request
            .mutations
            .iter()
            .any(|m| matches!(m, Mutation::Set { key, .. } if *key >= begin && *key < end));
        if records {
            CommitFault::Delay(Duration::from_millis(500))
        } else {
            CommitFault::None
        }
    }
    fn on_read(&self) -> ReadFault {
        ReadFault::None
    }
}

/// The hand-over race: the holder has stopped unrecorded opens and is still
/// writing the records of its first batch of open files (slowed down here)
/// when a file of a later batch is closed (the record's clear deferred) and
/// opened again. That reopen must write the record: nothing else will, the
/// recording skips a slot that is no longer unrecorded, and once the lease
/// is gone the newcomer would free the file under the open.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_closed_and_reopened_during_the_hand_over_is_recorded() {
    let clock: Arc<dyn Clock> = TokioClock::new();
    let mem = MemBackend::new(clock.clone());
    let plan = Arc::new(SlowRecords(Keys::new("fs", InodeLayout::Allocation)));
    let faulty = FaultyBackend::new(Arc::new(mem), plan, clock.clone());
    let counters = faulty.counters().clone();
    let db = Database::new(Arc::new(faulty), clock, 5);
    mkfs(&db, "fs", MkfsOptions::default()).await.unwrap();
    let a = short_grace(&db).await;
    // Closes leave a pending clear that nothing runs in this test.
    a.defer_releases();
    let root = Caller::root();
    let (_gate, _task) = holding(&a).await;
    // Records are written 64 inodes a batch, in inode order: x is the file
    // with the highest number, alone in the second batch.
    let mut files = Vec::new();
    for i in 0..65 {
        let name = format!("f{i}");
        let made = a
            .create_open(&root, ROOT_INO, name.as_bytes(), 0o644, libc::O_RDWR)
            .await
            .unwrap();
        files.push((made, name));
    }
    let (x, x_name) = files.into_iter().max_by_key(|(made, _)| made.ino).unwrap();
    a.write(&root, x.ino, WriteAt::Append, b"data")
        .await
        .unwrap();
    assert_eq!(a.open_table().unrecorded(), 65);

    let opening = {
        let db = db.clone();
        tokio::spawn(async move { client(&db, "b").await })
    };
    until("a to write its first records", || {
        counters
            .commit_delays
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    })
    .await;
    a.release(&root, x.ino).await.unwrap();
    a.open_file(&root, x.ino, libc::O_RDONLY).await.unwrap();
    let b = opening.await.unwrap();
    assert!(
        open_records(&db, "a").await.contains(&x.ino),
        "x has no record"
    );
    b.unlink(&root, ROOT_INO, x_name.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_millis(5)).await;
    assert_eq!(sweep_unlinked(&db, b.keys()).await.unwrap(), 0);
    assert_eq!(a.read(&root, x.ino, 0, 10).await.unwrap(), b"data");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clients_from_the_start_never_cache() {
    let db = db().await;
    let a = client(&db, "a").await;
    let b = client(&db, "b").await;
    let (gate_a, _ta) = keep(&a, Duration::from_secs(30));
    let (gate_b, _tb) = keep(&b, Duration::from_secs(30));
    tokio::time::sleep(LEASE_POLL * 5).await;
    assert!(!gate_a.is_open() && !gate_b.is_open());
    // One leaves: the other becomes the only client and caches.
    a.close().await.unwrap();
    until("b to take the lease", || gate_b.is_open()).await;
    assert!(!gate_a.is_open());
}

/// `NameGrants` (names cached without default_permissions): a revocation
/// in a directory waits until its names' TTL (plus margin) has passed and
/// not for other directories' names; a lookup that began before any
/// revocation gets TTL 0; a rename makes the grants of both directories
/// count for both, and only while one may still be believed.
#[tokio::test]
async fn name_grants_are_waited_out_where_search_permission_went() {
    use hafs_core::cache::{LiveNames, NameGrants};
    use hafs_core::clock::ManualClock;
    let clock = ManualClock::new();
    let names = NameGrants::new(clock.clone());
    let waited = |f: Duration| clock.monotonic() - f;

    let ticket = names.ticket();
    assert_eq!(names.grant(ticket, 10, TTL), TTL);
    let start = clock.monotonic();
    names.revoke_in(11).await;
    assert_eq!(
        waited(start),
        Duration::ZERO,
        "waited for another directory"
    );
    // A ticket from before that revocation is void.
    assert_eq!(names.grant(ticket, 10, TTL), Duration::ZERO);
    let start = clock.monotonic();
    names.revoke_in(10).await;
    assert_eq!(waited(start), TTL + REVOKE_MARGIN);
    names.revoke_in(10).await;
    assert_eq!(waited(start), TTL + REVOKE_MARGIN, "waited twice");

    // Granted in 20, renamed into 21: revoking 21 waits for it.
    assert_eq!(names.grant(names.ticket(), 20, TTL), TTL);
    let live = |from, to| LiveNames { from, to };
    assert_eq!(names.moved(20, 21), live(true, false));
    let start = clock.monotonic();
    names.revoke_in(21).await;
    assert_eq!(waited(start), TTL + REVOKE_MARGIN);
    // Both long expired, or never granted: nothing moved is cached.
    assert_eq!(names.moved(20, 21), live(false, false));
    assert_eq!(names.moved(40, 41), live(false, false));
    assert_eq!(names.grant(names.ticket(), 30, TTL), TTL);
    clock.advance(TTL / 2);
    // Out of 40, where nothing was granted, into 30: nothing moved is
    // cached, though 30's names may be believed — and 40's wait now covers
    // them (an exchange may have brought one of them over).
    assert_eq!(
        names.moved(40, 30),
        live(false, true),
        "a grant half its TTL old still counts"
    );
    let start = clock.monotonic();
    names.revoke_in(40).await;
    assert_eq!(waited(start), TTL / 2 + REVOKE_MARGIN);
}

/// The hand-over under churn: a, alone, creates, opens, closes, unlinks and
/// reads a few files at random (closes deferred and sessions kept, as on a
/// mount) while b attaches, unlinks every name, sweeps and leaves, again
/// and again. Every handle a holds must read its file whole throughout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handles_survive_hand_overs_under_churn() {
    use rand::{Rng, SeedableRng};
    let db = db().await;
    let a = short_grace(&db).await;
    let root = Caller::root();
    {
        let a = a.clone();
        tokio::spawn(async move { a.run_deferred_releases().await });
    }
    {
        let a = a.clone();
        tokio::spawn(async move { a.maintain_session(SessionOptions::default()).await });
    }
    let (gate, _task) = keep(&a, Duration::from_secs(30));
    let stop = Arc::new(AtomicBool::new(false));
    let churn = {
        let (a, stop) = (a.clone(), stop.clone());
        tokio::spawn(async move {
            let root = Caller::root();
            let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
            let mut held: Vec<(u64, Vec<u8>)> = Vec::new();
            let mut checked = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let name = format!("n{}", rng.gen_range(0..8));
                match rng.gen_range(0..5) {
                    0 => {
                        let flags = libc::O_RDWR | libc::O_EXCL;
                        let made = a.create_open(&root, ROOT_INO, name.as_bytes(), 0o644, flags);
                        if let Ok(made) = made.await {
                            let text = format!("{name} as {}", made.ino).into_bytes();
                            a.write(&root, made.ino, WriteAt::Append, &text)
                                .await
                                .unwrap();
                            held.push((made.ino, text));
                        }
                    }
                    1 => {
                        if let Ok(found) = a.lookup(&root, ROOT_INO, name.as_bytes()).await {
                            if a.open_file(&root, found.ino, libc::O_RDONLY).await.is_ok() {
                                let text = a.read(&root, found.ino, 0, 100).await.unwrap();
                                held.push((found.ino, text));
                            }
                        }
                    }
                    2 if !held.is_empty() => {
                        let (ino, _) = held.swap_remove(rng.gen_range(0..held.len()));
                        a.release(&root, ino).await.unwrap();
                    }
                    3 => {
                        let _ = a.unlink(&root, ROOT_INO, name.as_bytes()).await;
                    }
                    _ => {
                        for (ino, text) in &held {
                            let read = a.read(&root, *ino, 0, 100).await;
                            assert_eq!(read.as_ref(), Ok(text), "inode {ino}");
                            checked += 1;
                        }
                    }
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            for (ino, text) in &held {
                assert_eq!(a.read(&root, *ino, 0, 100).await.as_ref(), Ok(text));
                a.release(&root, *ino).await.unwrap();
            }
            checked
        })
    };
    let started = Instant::now();
    let mut visits = 0;
    while visits < 2 || started.elapsed() < Duration::from_secs(15) {
        until("a to take the lease", || gate.is_open()).await;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let b = client(&db, "b").await;
        for i in 0..8 {
            let _ = b.unlink(&root, ROOT_INO, format!("n{i}").as_bytes()).await;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
        sweep_unlinked(&db, b.keys()).await.unwrap();
        b.close().await.unwrap();
        visits += 1;
    }
    stop.store(true, Ordering::Relaxed);
    let checked = churn.await.unwrap();
    assert!(checked > 100, "only {checked} reads checked");
}
