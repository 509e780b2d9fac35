//! fleetmesh-sim: a deterministic fleet simulator that drives the real sync engine.
//!
//! Thousands of `fleetmesh_node::sync::Engine`s run in one process over a discrete-event network
//! with virtual time, sites, WAN links and faults. One seed fixes every random choice, so a
//! failing run is reproduced exactly by its seed. See docs/simulation.md for the scenarios and
//! the measured figures.

pub mod metrics;
pub mod queue;
pub mod report;
pub mod scenario;
pub mod sim;
pub mod store;
pub mod templates;

use std::path::{Path, PathBuf};

/// Returns the default fixture root: the Debian 12 container root next to the repository.
pub fn default_fixture_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/fixtures/roots/debian12-container")
}
