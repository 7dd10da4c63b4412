//! POSIX byte-range locks against a reference model: random non-waiting
//! lock, upgrade, downgrade and unlock requests of three owners on two
//! clients over a few bytes and "to the end of file", applied to the core
//! (over the `mem` KV) and to a byte map. Every request's outcome must
//! agree, and after each one `F_GETLK` from a fourth owner must report, for
//! every byte and both modes, the conflicting lock the model expects — its
//! mode and its whole range, so a split that drops a piece, a merge that
//! is missing or wrong, or a read lock that conflicts with a read lock all
//! fail. A failure shrinks to a short sequence.
//!
//! `PROPTEST_CASES` sets the number of sequences (default 300).

use std::sync::Arc;

use hafs_core::clock::ManualClock;
use hafs_core::codec::LockKind;
use hafs_core::ctx::{Caller, FsOptions};
use hafs_core::error::FsError;
use hafs_core::fs::{mkfs, Fs, MkfsOptions};
use hafs_core::keys::ROOT_INO;
use hafs_core::kv::mem::MemBackend;
use hafs_core::kv::Database;
use hafs_core::ops::lock::{Conflict, LockRequest, LOCK_END_MAX};
use hafs_core::perm;
use proptest::prelude::*;

/// Slots 0..LAST are the bytes [i, i + 1); slot LAST is [LAST, end of file).
const LAST: usize = 8;
const SLOTS: usize = LAST + 1;
/// (client index, owner) of the three lockers; the probe is (1, 99).
const OWNERS: [(usize, u64); 3] = [(0, 1), (0, 2), (1, 1)];

#[derive(Debug, Clone)]
struct Req {
    who: usize,
    kind: Option<LockKind>,
    start: usize,
    /// Exclusive, in slots; `SLOTS` means to the end of file.
    end: usize,
}

fn req() -> impl Strategy<Value = Req> {
    let kind = prop_oneof![
        Just(Some(LockKind::Read)),
        Just(Some(LockKind::Write)),
        Just(None)
    ];
    (0..OWNERS.len(), kind, 0..SLOTS, 1..=SLOTS).prop_map(|(who, kind, a, b)| {
        let (start, end) = if a < b {
            (a, b)
        } else {
            (b.saturating_sub(1), a + 1)
        };
        Req {
            who,
            kind,
            start,
            end: end.min(SLOTS),
        }
    })
}

fn byte(slot: usize) -> u64 {
    if slot >= SLOTS {
        LOCK_END_MAX
    } else {
        slot as u64
    }
}

/// Each owner's mode on each slot.
#[derive(Debug, Default)]
struct Model {
    held: [[Option<LockKind>; SLOTS]; OWNERS.len()],
}

fn clash(a: LockKind, b: LockKind) -> bool {
    a == LockKind::Write || b == LockKind::Write
}

impl Model {
    fn apply(&mut self, r: &Req) -> Result<(), FsError> {
        if let Some(kind) = r.kind {
            for (other, slots) in self.held.iter().enumerate() {
                let conflict = (r.start..r.end)
                    .any(|s| other != r.who && slots[s].is_some_and(|h| clash(kind, h)));
                if conflict {
                    return Err(FsError::WouldBlock);
                }
            }
        }
        for s in r.start..r.end {
            self.held[r.who][s] = r.kind;
        }
        Ok(())
    }

    /// An owner's locks as records: maximal runs of one mode.
    fn records(&self, who: usize) -> Vec<(usize, usize, LockKind)> {
        let mut out: Vec<(usize, usize, LockKind)> = Vec::new();
        for (s, mode) in self.held[who].iter().enumerate() {
            let Some(kind) = *mode else { continue };
            match out.last_mut() {
                Some(last) if last.1 == s && last.2 == kind => last.1 = s + 1,
                _ => out.push((s, s + 1, kind)),
            }
        }
        out
    }

    /// What `F_GETLK` for `kind` on `slot` from an owner holding nothing
    /// reports: the first conflicting record in key order (client, owner,
    /// start).
    fn getlk(&self, kind: LockKind, slot: usize) -> Option<(LockKind, u64, u64)> {
        let mut order: Vec<usize> = (0..OWNERS.len()).collect();
        order.sort_by_key(|&i| OWNERS[i]);
        order.into_iter().find_map(|who| {
            self.records(who)
                .into_iter()
                .find(|&(s, e, held)| s <= slot && slot < e && clash(kind, held))
                .map(|(s, e, held)| (held, byte(s), byte(e)))
        })
    }
}

fn run(reqs: &[Req]) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let clock = ManualClock::new();
        let db = Database::new(Arc::new(MemBackend::new(clock.clone())), clock, 1);
        mkfs(&db, "fs", MkfsOptions::default())
            .await
            .map_err(|e| format!("mkfs: {e}"))?;
        let mut clients = Vec::new();
        for id in ["a", "b"] {
            let fs = Fs::open(db.clone(), "fs", id, FsOptions::default());
            clients.push(fs.await.map_err(|e| format!("open: {e}"))?);
        }
        let root = Caller::root();
        let f = clients[0]
            .create(&root, ROOT_INO, b"f", 0o644, true, perm::WRITE)
            .await
            .map_err(|e| format!("create: {e}"))?
            .ino;
        let never = std::future::pending::<()>;
        let mut model = Model::default();
        for (i, r) in reqs.iter().enumerate() {
            let (client, owner) = OWNERS[r.who];
            let request = LockRequest {
                kind: r.kind,
                start: byte(r.start),
                end: byte(r.end),
                pid: 100 + r.who as u32,
            };
            let got = clients[client]
                .setlk(&root, f, owner, request, false, never())
                .await;
            let want = model.apply(r);
            if got != want {
                return Err(format!("request {i} {r:?}: core {got:?}, model {want:?}"));
            }
            for kind in [LockKind::Read, LockKind::Write] {
                for slot in 0..SLOTS {
                    let got = clients[1]
                        .getlk(&root, f, 99, kind, byte(slot), byte(slot + 1))
                        .await
                        .map_err(|e| format!("getlk: {e}"))?
                        .map(
                            |Conflict {
                                 kind, start, end, ..
                             }| (kind, start, end),
                        );
                    let want = model.getlk(kind, slot);
                    if got != want {
                        return Err(format!(
                            "after request {i} {r:?}: F_GETLK {kind:?} at byte {slot}: \
                             core {got:?}, model {want:?}"
                        ));
                    }
                }
            }
        }
        Ok(())
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(300),
        ..ProptestConfig::default()
    })]

    #[test]
    fn locks_match_the_model(reqs in prop::collection::vec(req(), 1..40)) {
        if let Err(e) = run(&reqs) {
            prop_assert!(false, "{}", e);
        }
    }
}
