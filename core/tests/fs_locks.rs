//! Byte-range locks and sessions in the core: conflicts, split/merge,
//! F_GETLK, fair waiting without barging, cancelled waits, mutual exclusion
//! under concurrency, and eviction — by hand and by heartbeat expiry — that
//! releases locks and open files and fences the evicted client out.

use std::sync::Arc;
use std::time::Duration;

use hafs_core::clock::{Clock, ManualClock, TokioClock};
use hafs_core::codec::LockKind;
use hafs_core::ctx::{Caller, FsOptions};
use hafs_core::error::FsError;
use hafs_core::fs::{mkfs, Fs, MkfsOptions};
use hafs_core::fsck::check_invariants;
use hafs_core::keys::ROOT_INO;
use hafs_core::kv::fault::{CommitFault, FaultPlan, FaultyBackend, ReadFault};
use hafs_core::kv::mem::MemBackend;
use hafs_core::kv::CommitRequest;
use hafs_core::kv::Database;
use hafs_core::ops::lock::{Conflict, LockRequest, LOCK_END_MAX};
use hafs_core::ops::write::WriteAt;
use hafs_core::perm;
use hafs_core::session::{self, ExpiryTracker};

async fn db_with(clock: Arc<dyn Clock>) -> Database {
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

async fn assert_clean(db: &Database) {
    let report = check_invariants(db, "fs", |_| {}).await.unwrap();
    assert!(report.is_clean(), "{:#?}", report.violations);
}

/// A new file `f` in the root, created by `fs`.
async fn new_file(fs: &Fs) -> u64 {
    let root = Caller::root();
    let made = fs.create(&root, ROOT_INO, b"f", 0o644, true, perm::WRITE);
    made.await.unwrap().ino
}

fn req(kind: Option<LockKind>, start: u64, end: u64) -> LockRequest {
    LockRequest {
        kind,
        start,
        end,
        pid: 42,
    }
}

const W: Option<LockKind> = Some(LockKind::Write);
const R: Option<LockKind> = Some(LockKind::Read);
fn never() -> std::future::Pending<()> {
    std::future::pending()
}

#[tokio::test]
async fn conflicts_split_merge_and_getlk() {
    let db = db_with(TokioClock::new()).await;
    let (a, b) = (client(&db, "a").await, client(&db, "b").await);
    let root = Caller::root();
    let f = new_file(&a).await;
    a.setlk(&root, f, 1, req(W, 0, 100), false, never())
        .await
        .unwrap();
    assert_eq!(
        b.setlk(&root, f, 1, req(R, 50, 51), false, never()).await,
        Err(FsError::WouldBlock)
    );
    b.setlk(&root, f, 1, req(R, 100, 200), false, never())
        .await
        .unwrap();
    // Another client sees no pid; another owner on the same client does.
    let seen_by_b = b
        .getlk(&root, f, 1, LockKind::Read, 0, LOCK_END_MAX)
        .await
        .unwrap();
    assert_eq!(
        seen_by_b,
        Some(Conflict {
            kind: LockKind::Write,
            start: 0,
            end: 100,
            pid: 0
        })
    );
    let seen_by_a2 = a.getlk(&root, f, 2, LockKind::Read, 10, 20).await.unwrap();
    assert_eq!(seen_by_a2.map(|c| c.pid), Some(42));
    // The owner itself never conflicts with its own locks.
    assert_eq!(
        a.getlk(&root, f, 1, LockKind::Write, 0, 100).await.unwrap(),
        None
    );
    // Unlock the middle: two write ranges remain, the hole is free.
    a.setlk(&root, f, 1, req(None, 40, 60), false, never())
        .await
        .unwrap();
    b.setlk(&root, f, 2, req(W, 40, 60), false, never())
        .await
        .unwrap();
    assert_eq!(
        b.setlk(&root, f, 3, req(R, 39, 40), false, never()).await,
        Err(FsError::WouldBlock)
    );
    // Downgrade [0, 40) to read: readers may share it, writers may not.
    a.setlk(&root, f, 1, req(R, 0, 40), false, never())
        .await
        .unwrap();
    b.setlk(&root, f, 3, req(R, 0, 40), false, never())
        .await
        .unwrap();
    assert_eq!(
        b.setlk(&root, f, 4, req(W, 0, 1), false, never()).await,
        Err(FsError::WouldBlock)
    );
    let held = b
        .getlk(&root, f, 4, LockKind::Write, 60, 100)
        .await
        .unwrap();
    assert_eq!(
        held.map(|c| (c.kind, c.start, c.end)),
        Some((LockKind::Write, 60, 100))
    );
    // Releasing an owner frees everything it held.
    a.unlock_owner(&root, f, 1).await.unwrap();
    b.unlock_owner(&root, f, 3).await.unwrap();
    b.setlk(&root, f, 4, req(W, 0, 40), false, never())
        .await
        .unwrap();
    b.setlk(&root, f, 4, req(W, 60, 100), false, never())
        .await
        .unwrap();
    assert_clean(&db).await;
    assert_eq!(
        a.setlk(&root, f, 1, req(W, 0, 0), false, never()).await,
        Err(FsError::Invalid)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn waiters_are_woken_in_order_and_new_requests_do_not_barge() {
    let db = db_with(TokioClock::new()).await;
    let (a, b) = (client(&db, "a").await, client(&db, "b").await);
    let root = Caller::root();
    let f = new_file(&a).await;
    a.setlk(&root, f, 1, req(W, 0, LOCK_END_MAX), false, never())
        .await
        .unwrap();
    let waiter = {
        let b = b.clone();
        tokio::spawn(async move {
            b.setlk(
                &Caller::root(),
                f,
                7,
                req(W, 0, LOCK_END_MAX),
                true,
                never(),
            )
            .await
        })
    };
    // Wait until b is queued (its index key appears).
    for _ in 0..200 {
        if session::list_clients(&db, a.keys())
            .await
            .unwrap()
            .iter()
            .any(|c| c.info.id == "b" && c.locked_inodes == 1)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    a.unlock_owner(&root, f, 1).await.unwrap();
    // a tries to take it straight back: b is ahead in the queue.
    let barge = a.setlk(&root, f, 1, req(W, 0, 1), false, never()).await;
    let waited = tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .expect("waiter woken")
        .unwrap();
    waited.unwrap();
    assert!(
        barge == Err(FsError::WouldBlock),
        "a new request took the lock ahead of a queued waiter: {barge:?}"
    );
    assert_eq!(
        a.setlk(&root, f, 1, req(W, 0, 1), false, never()).await,
        Err(FsError::WouldBlock)
    );
    assert_clean(&db).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancelled_wait_leaves_nothing_behind() {
    let db = db_with(TokioClock::new()).await;
    let (a, b) = (client(&db, "a").await, client(&db, "b").await);
    let root = Caller::root();
    let f = new_file(&a).await;
    a.setlk(&root, f, 1, req(W, 0, 10), false, never())
        .await
        .unwrap();
    let cancel = tokio::time::sleep(Duration::from_millis(100));
    let got = b.setlk(&root, f, 2, req(W, 5, 6), true, cancel).await;
    assert_eq!(got, Err(FsError::Interrupted));
    a.unlock_owner(&root, f, 1).await.unwrap();
    // No queued ghost blocks a non-waiting request now.
    a.setlk(&root, f, 3, req(W, 0, 10), false, never())
        .await
        .unwrap();
    let b_status = session::list_clients(&db, a.keys()).await.unwrap();
    assert!(b_status
        .iter()
        .any(|c| c.info.id == "b" && c.locked_inodes == 0));
    assert_clean(&db).await;
}

/// Tasks on two clients each increment a counter in a file 25 times under
/// a write lock; the total must be exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutual_exclusion_across_clients() {
    let db = db_with(TokioClock::new()).await;
    let clients = [client(&db, "a").await, client(&db, "b").await];
    let root = Caller::root();
    let f = clients[0]
        .create(&root, ROOT_INO, b"n", 0o644, true, perm::WRITE)
        .await
        .unwrap()
        .ino;
    clients[0]
        .write(&root, f, WriteAt::Offset(0), b"0")
        .await
        .unwrap();
    let mut tasks = Vec::new();
    for t in 0..6u64 {
        let fs = clients[(t % 2) as usize].clone();
        tasks.push(tokio::spawn(async move {
            let root = Caller::root();
            for _ in 0..25 {
                fs.setlk(&root, f, 100 + t, req(W, 0, LOCK_END_MAX), true, never())
                    .await
                    .unwrap();
                let text = fs.read(&root, f, 0, 100).await.unwrap();
                let n: u64 = String::from_utf8(text).unwrap().parse().unwrap();
                tokio::task::yield_now().await;
                let next = (n + 1).to_string();
                fs.setattr(
                    &root,
                    f,
                    hafs_core::ops::setattr::SetAttr {
                        size: Some(0),
                        ..Default::default()
                    },
                )
                .await
                .unwrap();
                fs.write(&root, f, WriteAt::Offset(0), next.as_bytes())
                    .await
                    .unwrap();
                fs.unlock_owner(&root, f, 100 + t).await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(clients[0].read(&root, f, 0, 100).await.unwrap(), b"150");
    assert_clean(&db).await;
}

#[tokio::test]
async fn eviction_releases_locks_and_opens_and_fences_the_client() {
    let db = db_with(TokioClock::new()).await;
    let a = client(&db, "a").await;
    // No unlink grace on b: g is then freed the moment a's open goes.
    let no_grace = FsOptions {
        unlink_grace_ns: 0,
        ..FsOptions::default()
    };
    let b = Fs::open(db.clone(), "fs", "b", no_grace).await.unwrap();
    let root = Caller::root();
    let f = new_file(&a).await;
    let g = a
        .create(&root, ROOT_INO, b"g", 0o644, true, perm::WRITE)
        .await
        .unwrap()
        .ino;
    a.setlk(&root, f, 1, req(W, 0, LOCK_END_MAX), false, never())
        .await
        .unwrap();
    a.open_file(&root, g, libc::O_RDWR).await.unwrap();
    b.unlink(&root, ROOT_INO, b"g").await.unwrap();
    assert!(b.getattr(&root, g).await.is_ok(), "open on a keeps g alive");

    let (was, stats) = session::evict(&db, b.keys(), "a").await.unwrap();
    assert!(was);
    assert_eq!(
        (stats.locked_inodes, stats.open_inodes, stats.freed_inodes),
        (1, 1, 1)
    );
    assert_eq!(b.getattr(&root, g).await, Err(FsError::NotFound));
    b.setlk(&root, f, 1, req(W, 0, LOCK_END_MAX), false, never())
        .await
        .unwrap();
    // Everything a does now fails, with EIO at the edge.
    let err = a
        .write(&root, f, WriteAt::Append, b"late")
        .await
        .unwrap_err();
    assert_eq!((err.clone(), err.errno()), (FsError::Fenced, libc::EIO));
    assert_eq!(a.getattr(&root, f).await, Err(FsError::Fenced));
    assert!(a.is_fenced());
    assert_eq!(b.getattr(&root, f).await.unwrap().size, 0);
    assert_clean(&db).await;
}

#[tokio::test]
async fn expiry_is_judged_on_the_evictors_clock() {
    let clock = ManualClock::new();
    let db = db_with(clock.clone()).await;
    let (a, b) = (client(&db, "a").await, client(&db, "b").await);
    let keys = a.keys().clone();
    let expiry = Duration::from_secs(30);
    let mut tracker = ExpiryTracker::default();
    assert!(tracker
        .sweep(&db, &keys, &*clock, expiry, Some("b"))
        .await
        .unwrap()
        .is_empty());
    // a keeps beating: never evicted, however much time passes.
    for _ in 0..5 {
        clock.advance(Duration::from_secs(20));
        session::heartbeat(&db, &keys, "a").await.unwrap();
        assert!(tracker
            .sweep(&db, &keys, &*clock, expiry, Some("b"))
            .await
            .unwrap()
            .is_empty());
    }
    // a stops; 29 s later it is still attached, 31 s later it is evicted.
    clock.advance(Duration::from_secs(29));
    assert!(tracker
        .sweep(&db, &keys, &*clock, expiry, Some("b"))
        .await
        .unwrap()
        .is_empty());
    clock.advance(Duration::from_secs(2));
    let evicted = tracker
        .sweep(&db, &keys, &*clock, expiry, Some("b"))
        .await
        .unwrap();
    assert_eq!(evicted, vec!["a".to_string()]);
    assert_eq!(
        session::heartbeat(&db, &keys, "a").await,
        Err(FsError::Fenced)
    );
    assert_eq!(
        a.getattr(&Caller::root(), ROOT_INO).await,
        Err(FsError::Fenced)
    );
    assert!(b.getattr(&Caller::root(), ROOT_INO).await.is_ok());
    assert_clean(&db).await;
}

/// Mounts may run with different `--expiry`: each is judged by the longer
/// of its own (published at attach) and the judge's, never sooner than it
/// heartbeats and caches for.
#[tokio::test]
async fn a_client_is_never_judged_dead_sooner_than_its_own_expiry() {
    let clock = ManualClock::new();
    let db = db_with(clock.clone()).await;
    let patient = hafs_core::codec::ClientInfo {
        id: "slow".to_string(),
        expiry: Duration::from_secs(90),
        ..Default::default()
    };
    let slow = Fs::open_client(db.clone(), "fs", &patient, FsOptions::default());
    let slow = slow.await.unwrap();
    let (quick, judge) = (client(&db, "quick").await, client(&db, "judge").await);
    let keys = judge.keys().clone();
    let listed = session::list_clients(&db, &keys).await.unwrap();
    let expiries: Vec<_> = listed.iter().map(|c| c.info.expiry.as_secs()).collect();
    assert_eq!(expiries, vec![0, 0, 90], "judge, quick, slow");
    // The judge's own expiry is 30 s; "slow" beats every 40 s, as its 90 s
    // expiry allows (and `hafs mount` checks: at least twice the beat).
    let expiry = Duration::from_secs(30);
    let mut tracker = ExpiryTracker::default();
    let mut sweep = async || {
        let swept = tracker.sweep(&db, &keys, &*clock, expiry, Some("judge"));
        (swept.await.unwrap(), tracker.longest_published())
    };
    assert_eq!(sweep().await, (vec![], Duration::from_secs(90)));
    for _ in 0..3 {
        for _ in 0..4 {
            clock.advance(Duration::from_secs(10));
            session::heartbeat(&db, &keys, "quick").await.unwrap();
            let (evicted, _) = sweep().await;
            assert!(evicted.is_empty(), "evicted {evicted:?} at a 40 s beat");
        }
        session::heartbeat(&db, &keys, "slow").await.unwrap();
    }
    assert!(slow.getattr(&Caller::root(), ROOT_INO).await.is_ok());
    // Both stop; the judge sees their last values now. "quick" published
    // nothing: judged by the judge's 30 s. "slow" goes only at its own 90 s.
    assert!(sweep().await.0.is_empty());
    clock.advance(Duration::from_secs(31));
    assert_eq!(sweep().await.0, vec!["quick".to_string()]);
    clock.advance(Duration::from_secs(58));
    let (evicted, _) = sweep().await;
    assert!(evicted.is_empty(), "evicted {evicted:?} before its 90 s");
    clock.advance(Duration::from_secs(2));
    assert_eq!(sweep().await.0, vec!["slow".to_string()]);
    assert_eq!(
        slow.getattr(&Caller::root(), ROOT_INO).await,
        Err(FsError::Fenced)
    );
    drop(quick);
    assert_clean(&db).await;
}

#[tokio::test]
async fn gc_finishes_an_eviction_that_stopped_midway() {
    let db = db_with(TokioClock::new()).await;
    let a = client(&db, "a").await;
    let root = Caller::root();
    let f = new_file(&a).await;
    a.setlk(&root, f, 1, req(W, 0, 10), false, never())
        .await
        .unwrap();
    // Fence a without releasing anything, as a crash right after would.
    let txn = db.begin().await.unwrap();
    txn.clear(&a.keys().session("a"));
    txn.commit().await.unwrap();
    let report = check_invariants(&db, "fs", |_| {}).await.unwrap();
    assert!(
        report
            .violations
            .iter()
            .any(|v| v.problem.contains("detached client a")),
        "{report:?}"
    );
    let stats = session::gc(&db, a.keys()).await.unwrap();
    assert_eq!((stats.clients, stats.locked_inodes), (1, 1));
    assert_clean(&db).await;
}

#[tokio::test]
async fn close_detaches_and_list_clients_shows_the_rest() {
    let db = db_with(TokioClock::new()).await;
    let (a, b) = (client(&db, "a").await, client(&db, "b").await);
    let listed: Vec<String> = session::list_clients(&db, a.keys())
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.info.id)
        .collect();
    assert_eq!(listed, ["a", "b"]);
    a.close().await.unwrap();
    let listed: Vec<String> = session::list_clients(&db, b.keys())
        .await
        .unwrap()
        .into_iter()
        .map(|c| c.info.id)
        .collect();
    assert_eq!(listed, ["b"]);
    assert_eq!(
        a.getattr(&Caller::root(), ROOT_INO).await,
        Err(FsError::Fenced)
    );
    assert_clean(&db).await;
}

/// A close (FLUSH) of a file this client never locked answers without a
/// transaction, while a close by a lock's owner still releases it and a
/// close by another owner leaves it alone. The tracker forgets an inode only
/// once the client has nothing left on it.
#[tokio::test]
async fn closes_skip_the_kv_only_for_inodes_never_locked() {
    let db = db_with(TokioClock::new()).await;
    let (a, b) = (client(&db, "a").await, client(&db, "b").await);
    let root = Caller::root();
    let mut files = Vec::new();
    for name in [&b"f"[..], b"g"] {
        let attr = a.create(&root, ROOT_INO, name, 0o644, true, perm::WRITE);
        files.push(attr.await.unwrap().ino);
    }
    let (f, g) = (files[0], files[1]);
    for owner in [1, 2] {
        a.setlk(&root, f, owner, req(R, 0, LOCK_END_MAX), false, never())
            .await
            .unwrap();
    }
    assert_eq!(a.lock_tracker().len(), 1);
    a.unlock_owner(&root, f, 1).await.unwrap();
    assert_eq!(a.lock_tracker().len(), 1, "owner 2 still holds f");
    assert_eq!(
        b.setlk(&root, f, 9, req(W, 0, 1), false, never()).await,
        Err(FsError::WouldBlock)
    );
    a.unlock_owner(&root, f, 2).await.unwrap();
    assert!(a.lock_tracker().is_empty());
    b.setlk(&root, f, 9, req(W, 0, 1), false, never())
        .await
        .unwrap();
    // Fence a behind its back: a close of g (never locked) still answers
    // without touching the KV, a close of f after a new lock attempt does
    // not — it finds the eviction.
    session::evict(&db, b.keys(), "a").await.unwrap();
    a.unlock_owner(&root, g, 1).await.unwrap();
    let attempt = a.setlk(&root, f, 1, req(W, 0, 1), false, never()).await;
    assert_eq!(attempt, Err(FsError::Fenced));
    assert_eq!(a.unlock_owner(&root, f, 1).await, Err(FsError::Fenced));
    assert_eq!(a.unlock_owner(&root, g, 1).await, Err(FsError::Fenced));
}

/// Spawn a waiting `setlk` of `fs` (owner 7) and return once its ticket is
/// queued (the client's lock index names the inode).
async fn queued_waiter(
    db: &Database,
    fs: &Arc<Fs>,
    ino: u64,
    request: LockRequest,
) -> tokio::task::JoinHandle<Result<(), FsError>> {
    let waiter = {
        let fs = fs.clone();
        tokio::spawn(async move {
            fs.setlk(&Caller::root(), ino, 7, request, true, never())
                .await
        })
    };
    let id = fs.client().to_string();
    for _ in 0..400 {
        let clients = session::list_clients(db, fs.keys()).await.unwrap();
        if clients
            .iter()
            .any(|c| c.info.id == id && c.locked_inodes == 1)
        {
            return waiter;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("{id} never queued");
}

async fn granted_soon(what: &str, got: impl std::future::Future<Output = Result<(), FsError>>) {
    match tokio::time::timeout(Duration::from_secs(5), got).await {
        Ok(result) => result.unwrap_or_else(|e| panic!("{what}: {e:?}")),
        Err(_) => panic!("{what}: still waiting after 5 s"),
    }
}

/// A holder's downgrade, upgrade back, and a second range are granted at
/// once although a waiter that wants the whole file is queued: that waiter
/// waits for the holder, so queueing the holder behind it would deadlock
/// (Linux grants all three). The waiter still gets the file afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_never_queues_behind_a_waiter_that_waits_for_it() {
    let db = db_with(TokioClock::new()).await;
    let (a, b) = (client(&db, "a").await, client(&db, "b").await);
    let root = Caller::root();
    let f = new_file(&a).await;
    a.setlk(&root, f, 1, req(W, 0, 10), false, never())
        .await
        .unwrap();
    let waiter = queued_waiter(&db, &b, f, req(W, 0, LOCK_END_MAX)).await;
    let downgrade = a.setlk(&root, f, 1, req(R, 0, 10), false, never()).await;
    assert_eq!(downgrade, Ok(()), "downgrade refused behind a waiter");
    let upgrade = a.setlk(&root, f, 1, req(W, 0, 10), false, never()).await;
    assert_eq!(upgrade, Ok(()), "upgrade refused behind a waiter");
    granted_soon(
        "a second range",
        a.setlk(&root, f, 1, req(W, 20, 30), true, never()),
    )
    .await;
    assert!(!waiter.is_finished(), "the waiter got a held range");
    a.unlock_owner(&root, f, 1).await.unwrap();
    granted_soon("the waiter", async { waiter.await.unwrap() }).await;
    assert_clean(&db).await;
}

/// The same through a chain: c waits for a's lock, d waits behind c (its
/// range is not a's), so a's request that overlaps d's must not queue
/// behind d either.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_holder_never_queues_behind_a_chain_that_waits_for_it() {
    let db = db_with(TokioClock::new()).await;
    let a = client(&db, "a").await;
    let (c, d) = (client(&db, "c").await, client(&db, "d").await);
    let root = Caller::root();
    let f = new_file(&a).await;
    a.setlk(&root, f, 1, req(W, 0, 10), false, never())
        .await
        .unwrap();
    let c_waits = queued_waiter(&db, &c, f, req(W, 0, 100)).await;
    let d_waits = queued_waiter(&db, &d, f, req(R, 50, 60)).await;
    granted_soon(
        "a's second range",
        a.setlk(&root, f, 1, req(W, 50, 60), true, never()),
    )
    .await;
    // A newcomer still queues behind both.
    let e = client(&db, "e").await;
    assert_eq!(
        e.setlk(&root, f, 1, req(R, 55, 56), false, never()).await,
        Err(FsError::WouldBlock)
    );
    a.unlock_owner(&root, f, 1).await.unwrap();
    granted_soon("c", async { c_waits.await.unwrap() }).await;
    assert!(!d_waits.is_finished(), "d barged past c");
    c.unlock_owner(&root, f, 7).await.unwrap();
    granted_soon("d", async { d_waits.await.unwrap() }).await;
    assert_clean(&db).await;
}

/// Two shared holders that both ask for the write lock: the second would
/// wait for the first, which waits for it. It gets EDEADLK at once and
/// keeps its shared lock; the first gets the write lock once the second
/// lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_shared_holders_upgrading_get_edeadlk_instead_of_hanging() {
    let db = db_with(TokioClock::new()).await;
    let (a, b) = (client(&db, "a").await, client(&db, "b").await);
    let root = Caller::root();
    let f = new_file(&a).await;
    a.setlk(&root, f, 7, req(R, 0, LOCK_END_MAX), false, never())
        .await
        .unwrap();
    b.setlk(&root, f, 2, req(R, 0, LOCK_END_MAX), false, never())
        .await
        .unwrap();
    let a_upgrades = {
        let a = a.clone();
        let whole = req(W, 0, LOCK_END_MAX);
        tokio::spawn(async move { a.setlk(&Caller::root(), f, 7, whole, true, never()).await })
    };
    // a already holds f, so its lock index cannot show the ticket; a third
    // client's shared request is refused once the ticket is queued.
    let probe = client(&db, "probe").await;
    for tries in 0.. {
        match probe.setlk(&root, f, 1, req(R, 0, 1), false, never()).await {
            Err(FsError::WouldBlock) => break,
            Ok(()) => probe.unlock_owner(&root, f, 1).await.unwrap(),
            Err(e) => panic!("{e:?}"),
        }
        assert!(tries < 400, "a's upgrade never queued");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let b_upgrades = b.setlk(&root, f, 2, req(W, 0, LOCK_END_MAX), true, never());
    let got = tokio::time::timeout(Duration::from_secs(5), b_upgrades).await;
    assert_eq!(got, Ok(Err(FsError::Deadlock)));
    assert_eq!(FsError::Deadlock.errno(), libc::EDEADLK);
    let conflict = a
        .getlk(&root, f, 9, LockKind::Write, 0, 1)
        .await
        .unwrap()
        .expect("b kept its shared lock");
    assert_eq!(conflict.kind, LockKind::Read);
    assert!(!a_upgrades.is_finished());
    b.unlock_owner(&root, f, 2).await.unwrap();
    granted_soon("a's upgrade", async { a_upgrades.await.unwrap() }).await;
    assert_clean(&db).await;
}

/// Every read fails while `down` is set: a store out of reach.
#[derive(Debug, Default)]
struct Outage {
    down: std::sync::atomic::AtomicBool,
}

impl FaultPlan for Outage {
    fn on_commit(&self, _request: &CommitRequest) -> CommitFault {
        CommitFault::None
    }
    fn on_read(&self) -> ReadFault {
        if self.down.load(std::sync::atomic::Ordering::Relaxed) {
            ReadFault::Unavailable
        } else {
            ReadFault::None
        }
    }
}

/// A close whose unlock fails (the store out of reach past the retry
/// budget) returns the error, and the lock is owed, not forgotten: the
/// session's housekeeping releases it once the store is back. The same
/// owner's next lock on the file pays the debt first, so the close's
/// unlock can never land after that lock and release it.
#[tokio::test]
async fn an_unlock_that_fails_is_retried_until_it_lands() {
    let clock = ManualClock::new();
    let plan = Arc::new(Outage::default());
    let mem = Arc::new(MemBackend::new(clock.clone()));
    let faulty = FaultyBackend::new(mem, plan.clone(), clock.clone());
    let db = Database::new(Arc::new(faulty), clock, 5);
    mkfs(&db, "fs", MkfsOptions::default()).await.unwrap();
    let (a, b) = (client(&db, "a").await, client(&db, "b").await);
    let root = Caller::root();
    let f = new_file(&a).await;
    let take = |fs: &Arc<Fs>, owner, start, end| {
        let fs = fs.clone();
        async move {
            fs.setlk(
                &Caller::root(),
                f,
                owner,
                req(W, start, end),
                false,
                never(),
            )
            .await
        }
    };
    let close_fails = |owner| {
        let (a, plan) = (a.clone(), plan.clone());
        async move {
            use std::sync::atomic::Ordering::Relaxed;
            plan.down.store(true, Relaxed);
            let closed = a.unlock_owner(&Caller::root(), f, owner).await;
            plan.down.store(false, Relaxed);
            assert!(closed.is_err(), "the unlock got through the outage");
        }
    };

    take(&a, 1, 0, 10).await.unwrap();
    close_fails(1).await;
    assert_eq!(take(&b, 9, 0, 10).await, Err(FsError::WouldBlock));
    assert_eq!(a.pay_unlock_debts().await, 0);
    take(&b, 9, 0, 10).await.unwrap();
    b.unlock_owner(&root, f, 9).await.unwrap();

    // The owner locks again before the debt is paid.
    take(&a, 2, 0, 10).await.unwrap();
    close_fails(2).await;
    take(&a, 2, 20, 30).await.unwrap();
    assert_eq!(a.pay_unlock_debts().await, 0);
    take(&b, 9, 0, 10)
        .await
        .expect("the closed range was released");
    assert_eq!(
        take(&b, 9, 20, 30).await,
        Err(FsError::WouldBlock),
        "the debt released a lock taken after the close"
    );
    assert_clean(&db).await;
}

/// The next commit lands but reports `commit_unknown_result`.
#[derive(Debug, Default)]
struct AmbiguousNext {
    armed: std::sync::atomic::AtomicBool,
}

impl FaultPlan for AmbiguousNext {
    fn on_commit(&self, _request: &CommitRequest) -> CommitFault {
        if self.armed.swap(false, std::sync::atomic::Ordering::Relaxed) {
            CommitFault::UnknownApplied
        } else {
            CommitFault::None
        }
    }
    fn on_read(&self) -> ReadFault {
        ReadFault::None
    }
}

/// `evict_if_stale` says whose the eviction was: its own, perhaps its own
/// (an ambiguous commit, then the client gone on the retry), someone
/// else's, or none (the heartbeat moved). The simulator's premature-eviction
/// check trusts the first two.
#[tokio::test]
async fn evict_if_stale_tells_its_own_evictions_from_others() {
    use session::Stale;
    let clock = ManualClock::new();
    let plan = Arc::new(AmbiguousNext::default());
    let mem = Arc::new(MemBackend::new(clock.clone()));
    let faulty = FaultyBackend::new(mem, plan.clone(), clock.clone());
    let db = Database::new(Arc::new(faulty), clock, 5);
    mkfs(&db, "fs", MkfsOptions::default()).await.unwrap();
    let (a, b, judge) = (
        client(&db, "a").await,
        client(&db, "b").await,
        client(&db, "judge").await,
    );
    let keys = judge.keys().clone();
    session::heartbeat(&db, &keys, "a").await.unwrap();
    assert_eq!(
        session::evict_if_stale(&db, &keys, "a", 0).await,
        Ok(Stale::Alive)
    );
    assert_eq!(
        session::evict_if_stale(&db, &keys, "a", 1).await,
        Ok(Stale::Evicted)
    );
    assert_eq!(
        session::evict_if_stale(&db, &keys, "a", 1).await,
        Ok(Stale::Gone)
    );
    plan.armed.store(true, std::sync::atomic::Ordering::Relaxed);
    let evicted = session::evict_if_stale(&db, &keys, "b", 0).await;
    assert_eq!(evicted, Ok(Stale::MaybeEvicted));
    assert!(evicted.unwrap().detached());
    for fenced in [a, b] {
        let got = fenced.getattr(&Caller::root(), ROOT_INO).await;
        assert_eq!(got, Err(FsError::Fenced));
    }
    assert_clean(&db).await;
}

/// A published expiry counts for an hour at most (`session::EXPIRY_MAX`):
/// a dead client's locks are not held for as long as it asked.
#[tokio::test]
async fn a_published_expiry_counts_for_an_hour_at_most() {
    let clock = ManualClock::new();
    let db = db_with(clock.clone()).await;
    let asking = hafs_core::codec::ClientInfo {
        id: "greedy".to_string(),
        expiry: Duration::from_secs(86_400),
        ..Default::default()
    };
    let greedy = Fs::open_client(db.clone(), "fs", &asking, FsOptions::default());
    let greedy = greedy.await.unwrap();
    let judge = client(&db, "judge").await;
    let keys = judge.keys().clone();
    let expiry = Duration::from_secs(30);
    let mut tracker = ExpiryTracker::default();
    let mut sweep = async || {
        let swept = tracker.sweep(&db, &keys, &*clock, expiry, Some("judge"));
        (swept.await.unwrap(), tracker.longest_published())
    };
    assert_eq!(sweep().await, (vec![], session::EXPIRY_MAX));
    clock.advance(session::EXPIRY_MAX - Duration::from_secs(1));
    assert!(sweep().await.0.is_empty());
    clock.advance(Duration::from_secs(1));
    assert_eq!(sweep().await.0, vec!["greedy".to_string()]);
    let got = greedy.getattr(&Caller::root(), ROOT_INO).await;
    assert_eq!(got, Err(FsError::Fenced));
}
