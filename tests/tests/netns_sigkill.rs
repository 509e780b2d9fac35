//! A node is killed with SIGKILL in the middle of a burst of local changes. Its store still
//! contains every change it had acknowledged, and after a restart it catches up with the changes
//! made elsewhere while it was down.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use fleetmesh_tests::netns::{Change, Lab, Ledger, Mesh};

const SETUP_TIMEOUT: Duration = Duration::from_secs(45);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);
/// Time between two changes of the burst; the node collects every second, so some
/// collections pick up one change and some two.
const BURST_STEP: Duration = Duration::from_millis(400);
/// Changes written before the kill, and after it while the node is down.
const CHANGES_BEFORE_KILL: usize = 12;
const CHANGES_WHILE_DOWN: usize = 3;

#[test]
fn sigkill_during_burst_keeps_acknowledged_changes() -> Result<()> {
    let Some(lab) = Lab::create("sigkill", false)? else {
        return Ok(());
    };
    let test_started = Instant::now();
    let mut mesh = Mesh::build(lab, 3, 3)?;
    mesh.start_all()?;
    let everyone = mesh.all_nodes();
    let mut ledger = Ledger::default();
    let took = mesh.wait_converged(&everyone, &ledger, SETUP_TIMEOUT)?;
    println!("initial convergence of 9 nodes: {took:?}");

    // A burst of changes on s2n2. A change is acknowledged once a query on s2n2 shows it.
    let victim = mesh.index_of(2, 2)?;
    let mut acknowledged: BTreeSet<Change> = BTreeSet::new();
    for _ in 0..CHANGES_BEFORE_KILL {
        mesh.install(victim, &mut ledger)?;
        std::thread::sleep(BURST_STEP);
        acknowledged.extend(mesh.changes_seen(victim, &ledger)?);
    }
    mesh.install(victim, &mut ledger)?;
    mesh.kill(victim)?;
    println!(
        "killed s2n2 with SIGKILL after {} of {} burst changes were acknowledged",
        acknowledged.len(),
        CHANGES_BEFORE_KILL + 1
    );
    ensure!(
        !acknowledged.is_empty(),
        "s2n2 acknowledged no change before the kill"
    );

    // The stopped node's store still serves queries and contains every acknowledged change.
    let after_kill = mesh.changes_seen(victim, &ledger)?;
    let missing: Vec<&Change> = acknowledged.difference(&after_kill).collect();
    println!(
        "after the kill s2n2 shows {} changes; acknowledged changes missing: {}",
        after_kill.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "acknowledged changes lost by SIGKILL: {missing:?}"
    );

    // More changes on the stopped node's root and elsewhere; then it restarts and catches up.
    for _ in 0..CHANGES_WHILE_DOWN {
        mesh.install(victim, &mut ledger)?;
    }
    mesh.install(mesh.index_of(1, 3)?, &mut ledger)?;
    mesh.install(mesh.index_of(3, 2)?, &mut ledger)?;
    std::thread::sleep(Duration::from_secs(2));
    mesh.start(victim)?;
    let took = mesh.wait_converged(&everyone, &ledger, CONVERGE_TIMEOUT)?;
    println!("convergence after the restart: {took:?}");
    let lost = mesh.count_lost(&everyone, &ledger)?;
    println!(
        "lost changes: {lost} of {} changes x {} nodes",
        ledger.changes.len(),
        everyone.len()
    );
    assert_eq!(lost, 0, "changes lost");
    println!("test took {:?}", test_started.elapsed());
    Ok(())
}
