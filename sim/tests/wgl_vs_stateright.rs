//! Cross-checks the Wing–Gong–Lowe checker (`hafs_sim::wgl`) against the
//! `stateright` crate's linearizability tester on random small lock
//! histories: both must give the same verdict on every one, and both
//! verdicts must occur (so a checker that always says yes would fail).

use hafs_sim::wgl::{linearizable, LockOp, LockTable, Operation};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use stateright::semantics::{ConsistencyTester, LinearizabilityTester, SequentialSpec};

/// The same lock table as a stateright sequential spec: every recorded
/// operation returned success, so a step is valid when it succeeds.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
struct SrLock(LockTable);

impl SequentialSpec for SrLock {
    type Op = LockOp;
    type Ret = bool;
    fn invoke(&mut self, op: &LockOp) -> bool {
        use hafs_sim::wgl::Spec;
        match self.0.step(op, Some(&())) {
            Some(next) => {
                self.0 = next;
                true
            }
            None => false,
        }
    }
}

fn random_op(rng: &mut ChaCha8Rng, thread: usize) -> LockOp {
    let me = ["a", "b", "c"][thread].to_string();
    match rng.gen_range(0..5) {
        0 | 1 => LockOp::Lock(me, 1),
        2 | 3 => LockOp::Unlock(me, 1),
        _ => LockOp::Evict(["a", "b", "c"][rng.gen_range(0..3)].to_string()),
    }
}

#[test]
fn verdicts_agree_with_stateright() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    let (mut yes, mut no) = (0, 0);
    for _ in 0..3000 {
        let threads = rng.gen_range(2..=3);
        let mut tester = LinearizabilityTester::new(SrLock::default());
        let mut in_flight: Vec<Option<(u64, LockOp)>> = vec![None; threads];
        let mut ops = Vec::new();
        let steps = rng.gen_range(2..=12);
        let mut time = 0u64;
        for _ in 0..steps {
            let t = rng.gen_range(0..threads);
            time += 1;
            match in_flight[t].take() {
                None => {
                    let op = random_op(&mut rng, t);
                    tester.on_invoke(t, op.clone()).unwrap();
                    in_flight[t] = Some((time, op));
                }
                Some((call, op)) => {
                    tester.on_return(t, true).unwrap();
                    ops.push(Operation {
                        call,
                        returned: Some(time),
                        op,
                        ret: Some(()),
                    });
                }
            }
        }
        // Finish every operation still running so both see a complete history.
        for (t, slot) in in_flight.iter_mut().enumerate() {
            if let Some((call, op)) = slot.take() {
                time += 1;
                tester.on_return(t, true).unwrap();
                ops.push(Operation {
                    call,
                    returned: Some(time),
                    op,
                    ret: Some(()),
                });
            }
        }
        let ours = linearizable(&LockTable::default(), &ops);
        assert_eq!(ours, tester.is_consistent(), "verdicts differ on {ops:#?}");
        if ours {
            yes += 1;
        } else {
            no += 1;
        }
    }
    assert!(
        yes > 100 && no > 100,
        "too one-sided a sample: {yes} yes, {no} no"
    );
}
