//! A branch site loses its WAN link while nodes on both sides keep changing. The cut-off site
//! keeps syncing within itself over its LAN, and once the link is back every node converges
//! without losing a change.

use std::time::{Duration, Instant};

use anyhow::Result;
use fleetmesh_tests::netns::{Lab, Ledger, Mesh};

const SETUP_TIMEOUT: Duration = Duration::from_secs(45);
const LAN_TIMEOUT: Duration = Duration::from_secs(20);
/// Longer than QUIC's idle timeout (10 s in libp2p-quic 0.14) and a failed ping (20 s in
/// libp2p-ping 0.48), so the nodes' WAN connections are closed or stalled when the link returns.
const OUTAGE: Duration = Duration::from_secs(30);
const HEAL_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn wan_down_site_syncs_inside_then_converges() -> Result<()> {
    let Some(lab) = Lab::create("wan-down", false)? else {
        return Ok(());
    };
    let test_started = Instant::now();
    let mut mesh = Mesh::build(lab, 3, 3)?;
    mesh.start_all()?;
    let everyone = mesh.all_nodes();
    let mut ledger = Ledger::default();
    let took = mesh.wait_converged(&everyone, &ledger, SETUP_TIMEOUT)?;
    println!("initial convergence of 9 nodes: {took:?}");

    // Site 1 loses its WAN link; one node on each side changes.
    mesh.wan_down(1)?;
    let outage_started = Instant::now();
    let cut_off = mesh.site_nodes(1);
    let reachable: Vec<usize> = everyone
        .iter()
        .copied()
        .filter(|i| !cut_off.contains(i))
        .collect();
    let inside = mesh.install(mesh.index_of(1, 2)?, &mut ledger)?;
    let outside = mesh.install(mesh.index_of(2, 3)?, &mut ledger)?;

    // Each side syncs within itself and returns query results, and nothing crosses the cut.
    let took = mesh.wait_shown(
        &cut_off,
        std::slice::from_ref(&inside),
        &ledger,
        LAN_TIMEOUT,
    )?;
    println!("a change inside the cut-off site reached its 3 nodes in {took:?}");
    let took = mesh.wait_shown(
        &reachable,
        std::slice::from_ref(&outside),
        &ledger,
        LAN_TIMEOUT,
    )?;
    println!("a change outside reached the other 6 nodes in {took:?}");
    mesh.ensure_not_shown(&reachable, &[inside], &ledger)?;
    mesh.ensure_not_shown(&cut_off, &[outside], &ledger)?;

    // A second change on each side; the outage lasts until the WAN connections time out.
    mesh.install(mesh.index_of(1, 3)?, &mut ledger)?;
    mesh.install(mesh.index_of(3, 1)?, &mut ledger)?;
    std::thread::sleep(OUTAGE.saturating_sub(outage_started.elapsed()));
    let hub = mesh.index_of(1, 1)?;
    println!(
        "after {:?} of outage, site 1's hub lists as connected: {:?}",
        outage_started.elapsed(),
        mesh.connected_hostnames(hub)?
    );

    // The link returns and everything converges.
    mesh.wan_up(1)?;
    let took = mesh.wait_converged(&everyone, &ledger, HEAL_TIMEOUT)?;
    println!("convergence after the link returned: {took:?}");
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
