//! Two runs with the same seed process the same events in the same order.

use std::path::Path;

use fleetmesh_sim::scenario::Scenario;
use fleetmesh_sim::sim::{run, RunOptions};
use fleetmesh_sim::templates::Templates;

fn scenario(name: &str, nodes: usize) -> Scenario {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("scenarios")
        .join(format!("{name}.toml"));
    Scenario::load(&path, &[], Some(nodes)).expect("scenario loads")
}

fn trace_hash(scenario: &Scenario, templates: &Templates, seed: u64) -> String {
    let options = RunOptions { seed, trace: true };
    let outcome = run(scenario.clone(), templates, &options).expect("run completes");
    assert!(
        outcome.metrics.passed(),
        "violations: {:?}",
        outcome.metrics.violations
    );
    outcome.trace_hash.expect("trace requested")
}

#[test]
fn same_seed_same_trace() {
    let scenario = scenario("one-change", 100);
    let templates = Templates::build(
        &fleetmesh_sim::default_fixture_root(),
        scenario.documents.templates,
        scenario.documents.chain_length,
    )
    .expect("templates build");

    let first = trace_hash(&scenario, &templates, 7);
    let second = trace_hash(&scenario, &templates, 7);
    assert_eq!(first, second);

    let other = trace_hash(&scenario, &templates, 8);
    assert_ne!(
        first, other,
        "a different seed should give a different trace"
    );
}
