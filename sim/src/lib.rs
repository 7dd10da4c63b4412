//! hafs-sim: deterministic simulation of many hafs clients over a
//! fault-injecting in-memory KV, under madsim (`cargo sim`; see README.md).
//!
//! - [`wgl`]: a Wing–Gong–Lowe linearizability checker and the lock-table
//!   specification it checks lock histories against (pure; unit-tested and
//!   cross-checked against `stateright` in normal builds);
//! - [`history`]: the record of what clients invoked and what came back,
//!   and its hash (same seed, same hash);
//! - [`cut`]: a backend wrapper that cuts one client off from the KV;
//! - `run` (under `--cfg madsim` only): one seeded run — clients, nemesis,
//!   workloads and checkers; `model` is core's reference model and driver
//!   (`core/tests/model/`), for the model workload.

pub mod cut;
pub mod history;
pub mod wgl;

/// The reference model and its driver, shared with core's model proptest.
#[cfg(madsim)]
#[path = "../../core/tests/model/mod.rs"]
mod model;
#[cfg(madsim)]
pub mod run;
