//! Random operation sequences from three users on two clients, applied to
//! the core (over the `mem` KV) and to the reference model (`model/`); every
//! result and errno must agree, and after each sequence the whole tree must
//! match and fsck must be clean. A failure shrinks to a short sequence. The
//! driver lives in `model/world.rs` (the simulator runs it too).
//!
//! `PROPTEST_CASES` sets the number of sequences (default 1000, ~6 s; at 96 a planted
//! bug that skips rename's permission check went unnoticed, at 1000 it fails).

mod model;

use std::sync::Arc;

use hafs_core::clock::ManualClock;
use hafs_core::keys::InodeLayout;
use hafs_core::kv::mem::MemBackend;
use hafs_core::kv::Database;
use model::world::{op, Op, World};
use proptest::prelude::*;

fn run(layout: InodeLayout, ops: &[Op]) -> Result<(), String> {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let clock = ManualClock::new();
        let db = Database::new(Arc::new(MemBackend::new(clock.clone())), clock.clone(), 1);
        let mut world = World::new(db, Some(clock), "fs", ["c1", "c2"], layout)
            .await
            .map_err(|e| format!("setup: {e}"))?;
        for (i, op) in ops.iter().enumerate() {
            world
                .step(op)
                .await
                .map_err(|e| format!("op {i} {op:?}: {e}"))?;
        }
        world.finish().await
    })
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(1000),
        ..ProptestConfig::default()
    })]

    #[test]
    fn core_matches_model(spread in any::<bool>(), ops in prop::collection::vec(op(), 1..80)) {
        let layout = if spread { InodeLayout::Spread } else { InodeLayout::Allocation };
        if let Err(e) = run(layout, &ops) {
            prop_assert!(false, "{}", e);
        }
    }
}
