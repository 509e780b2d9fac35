//! Invariants hold on a 100-node run with every fault on, and the checker catches a fleet that
//! cannot converge.

use std::path::Path;

use fleetmesh_sim::scenario::Scenario;
use fleetmesh_sim::sim::{run, RunOptions};
use fleetmesh_sim::templates::Templates;

fn load(overrides: &[&str]) -> (Scenario, Templates) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("scenarios/faults.toml");
    let overrides: Vec<String> = overrides.iter().map(|item| item.to_string()).collect();
    let scenario = Scenario::load(&path, &overrides, Some(100)).expect("scenario loads");
    let templates = Templates::build(
        &fleetmesh_sim::default_fixture_root(),
        scenario.documents.templates,
        scenario.documents.chain_length,
    )
    .expect("templates build");
    (scenario, templates)
}

#[test]
fn faults_run_keeps_invariants() {
    // The highest rate of every fault range, so that each fault fires in a 100-node run.
    let (scenario, templates) = load(&[
        "faults.loss=0.1",
        "faults.duplicate=0.05",
        "faults.reorder_jitter_ms=200.0",
        "faults.crashes_per_node_hour=0.5",
        "faults.clock_skew_ms=30000.0",
        "faults.site_outages_per_site_hour=1.0",
    ]);
    let outcome = run(
        scenario,
        &templates,
        &RunOptions {
            seed: 11,
            trace: false,
        },
    )
    .expect("run completes");
    let metrics = &outcome.metrics;

    assert!(
        metrics.violations.is_empty(),
        "violations: {:#?}",
        metrics.violations
    );
    assert!(
        metrics.convergence_s.is_some(),
        "the fleet did not converge"
    );
    assert!(metrics.messages_lost > 0, "no message was lost");
    assert!(metrics.messages_duplicated > 0, "no message was duplicated");
    assert!(metrics.crashes > 0, "no node crashed");
    assert!(metrics.joined > 0, "no node joined");
    assert!(metrics.changes_written > 0, "no change was written");
    assert_eq!(metrics.spread.incomplete, 0, "a change missed a live node");
}

#[test]
fn checker_reports_unconverged_fleet() {
    // Without anti-entropy, reconnects or joins, half of all messages lost leaves gaps.
    let (scenario, templates) = load(&[
        "engine.anti_entropy_interval_ms=100000000",
        "faults.loss=0.5",
        "faults.crashes_per_node_hour=0.0",
        "faults.site_outages_per_site_hour=0.0",
        "faults.joins=[]",
    ]);
    let outcome = run(
        scenario,
        &templates,
        &RunOptions {
            seed: 3,
            trace: false,
        },
    )
    .expect("run completes");

    assert!(
        !outcome.metrics.passed(),
        "the checker missed a fleet that did not converge"
    );
    assert!(outcome.metrics.convergence_s.is_none());
}
