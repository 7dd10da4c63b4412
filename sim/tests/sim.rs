//! The simulation batches (`cargo sim`; see sim/README.md).
//!
//! - each workload over a batch of seeds: no violation, every fault kind
//!   occurred somewhere in the batch ("sometimes" assertions);
//! - the same seed twice gives the same history hash;
//! - each planted bug is caught by some seed of a small fixed batch.
//!
//! `MADSIM_TEST_SEED=N` reruns one seed; `MADSIM_TEST_NUM=N` sets the batch
//! size (default 50 per workload), `HAFS_SIM_FIRST_SEED=N` its first seed
//! (default 1; a soak run past the seeds CI runs).

/// An environment RUSTFLAGS silently replaces the alias's `--cfg madsim`;
/// `cargo sim` sets HAFS_SIM, so this catches a run that is not simulated.
#[test]
fn madsim_is_on_when_asked() {
    if std::env::var_os("HAFS_SIM").is_some() {
        assert!(
            std::hint::black_box(cfg!(madsim)),
            "HAFS_SIM is set but cfg(madsim) is off: an environment RUSTFLAGS replaced \
             the alias's; use RUSTFLAGS=\"$RUSTFLAGS --cfg madsim\""
        );
    }
}

#[cfg(madsim)]
mod simulated {
    use std::collections::BTreeMap;
    use std::time::Instant;

    use hafs_core::planted::Bug;
    use hafs_sim::run::{run, RunConfig, RunReport, Workload};

    fn seeds() -> Vec<u64> {
        if let Some(seed) = std::env::var("MADSIM_TEST_SEED")
            .ok()
            .and_then(|s| s.parse().ok())
        {
            return vec![seed];
        }
        let var = |name: &str, default: u64| {
            std::env::var(name)
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(default)
        };
        let (first, n) = (var("HAFS_SIM_FIRST_SEED", 1), var("MADSIM_TEST_NUM", 50));
        (first..first + n).collect()
    }

    #[allow(clippy::disallowed_methods)] // wall-clock speed of the harness, for the report
    fn batch(workload: Workload) -> Vec<RunReport> {
        let started = Instant::now();
        let seeds = seeds();
        let mut reports = Vec::new();
        for &seed in &seeds {
            let report = run(&RunConfig::new(seed, workload));
            println!("{workload:?} {report}");
            reports.push(report);
        }
        let elapsed = started.elapsed().as_secs_f64();
        let ops: u64 = reports.iter().map(|r| r.ops).sum();
        println!(
            "{workload:?}: {} seeds in {elapsed:.1} s ({:.0} seeds/min, {:.0} simulated ops/s)",
            seeds.len(),
            seeds.len() as f64 * 60.0 / elapsed,
            ops as f64 / elapsed
        );
        reports
    }

    fn assert_clean_and_faulty(reports: &[RunReport], kinds: &[&str]) {
        let failed: Vec<String> = reports
            .iter()
            .filter(|r| !r.violations.is_empty())
            .map(|r| r.to_string())
            .collect();
        assert!(failed.is_empty(), "violations:\n{}", failed.join("\n"));
        if reports.len() < 20 {
            return; // a single rerun seed need not show every fault
        }
        let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
        for r in reports {
            for (k, n) in &r.faults {
                *totals.entry(k).or_default() += n;
            }
        }
        println!("fault totals: {totals:?}");
        for kind in kinds {
            assert!(
                totals.get(kind).copied().unwrap_or(0) > 0,
                "fault {kind} never happened in the batch"
            );
        }
    }

    const ALL_FAULTS: &[&str] = &[
        "conflict",
        "unknown_applied",
        "unknown_not_applied",
        "timed_out_landed_later",
        "too_old",
        "commit_delay",
        "read_delay",
        "paused_past_expiry",
        "killed_and_remounted",
        "partitioned_and_healed",
        "buggify",
    ];

    #[test]
    fn lockset() {
        assert_clean_and_faulty(&batch(Workload::LockSet), ALL_FAULTS);
    }

    #[test]
    fn lockrange() {
        assert_clean_and_faulty(&batch(Workload::LockRange), ALL_FAULTS);
    }

    #[test]
    fn model() {
        let reports = batch(Workload::Model);
        assert_clean_and_faulty(&reports, ALL_FAULTS);
        // Sequences cut short by a KV failure are not judged; most must be.
        let count = |k: &str| {
            reports
                .iter()
                .map(|r| r.faults.get(k).copied().unwrap_or(0))
                .sum::<u64>()
        };
        let (checked, abandoned) = (count("model_checked"), count("model_abandoned"));
        println!("model sequences: {checked} checked to the end, {abandoned} abandoned");
        assert!(
            reports.len() < 20 || checked > abandoned,
            "too few model sequences judged"
        );
    }

    #[test]
    fn rename() {
        assert_clean_and_faulty(&batch(Workload::Rename), ALL_FAULTS);
    }

    #[test]
    fn same_seed_same_history() {
        for workload in [
            Workload::LockSet,
            Workload::LockRange,
            Workload::Model,
            Workload::Rename,
        ] {
            for seed in [3, 17] {
                let a = run(&RunConfig::new(seed, workload));
                let b = run(&RunConfig::new(seed, workload));
                assert_eq!(
                    a.hash, b.hash,
                    "{workload:?} seed {seed} is not deterministic"
                );
                assert_eq!(a.faults, b.faults);
            }
        }
    }

    /// Each planted bug must make some seed of a small fixed batch fail.
    #[test]
    fn planted_bugs_are_caught() {
        let cases = [
            (Bug::SkipFence, Workload::LockSet),
            (Bug::UnlockInMemoryOnly, Workload::LockSet),
            (Bug::SkipIdempotency, Workload::LockSet),
            (Bug::SkipFence, Workload::LockRange),
            (Bug::UnlockInMemoryOnly, Workload::LockRange),
            (Bug::PartialOverlapMissed, Workload::LockRange),
            (Bug::FairnessIgnoresWaitGraph, Workload::LockRange),
            (Bug::JudgeByOwnExpiry, Workload::LockSet),
            (Bug::SkipIdempotency, Workload::Model),
            (Bug::RenameInTwoTransactions, Workload::Rename),
            (Bug::SkipAncestorCheck, Workload::Rename),
        ];
        let mut missed = Vec::new();
        for (bug, workload) in cases {
            let caught = (1..=20u64).find_map(|seed| {
                let config = RunConfig {
                    planted: Some(bug),
                    ..RunConfig::new(seed, workload)
                };
                let report = run(&config);
                (!report.violations.is_empty()).then_some(report)
            });
            match caught {
                Some(report) => println!("planted {bug:?}: caught by {report}"),
                None => missed.push(bug),
            }
        }
        assert!(missed.is_empty(), "planted bugs no seed caught: {missed:?}");
    }
}

/// madsim's own checker: two runs on fresh threads must draw the same
/// random numbers at the same moments (it panics at the first divergence,
/// which is how a `tokio::select!` without `biased` was found).
#[cfg(madsim)]
#[test]
fn madsim_determinism_checker_agrees() {
    use hafs_sim::run::{check_determinism, RunConfig, Workload};
    check_determinism(&RunConfig::new(3, Workload::LockSet));
    check_determinism(&RunConfig::new(4, Workload::Rename));
}
