//! UDP is blocked between two sites, so QUIC cannot connect them. With the peers' TCP
//! addresses listed beside their QUIC addresses, the sync between those sites runs over TCP.

use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use fleetmesh_tests::netns::{Lab, Ledger, Mesh};

const SETUP_TIMEOUT: Duration = Duration::from_secs(45);
const CROSS_TIMEOUT: Duration = Duration::from_secs(30);
const HEAL_TIMEOUT: Duration = Duration::from_secs(60);

#[test]
fn udp_blocked_sites_sync_over_tcp() -> Result<()> {
    let Some(lab) = Lab::create("udp-blocked", true)? else {
        return Ok(());
    };
    let test_started = Instant::now();
    let mut mesh = Mesh::build(lab, 3, 3)?;
    mesh.block_udp(1, 2)?;
    mesh.start_all()?;
    let everyone = mesh.all_nodes();
    let mut ledger = Ledger::default();
    let took = mesh.wait_converged(&everyone, &ledger, SETUP_TIMEOUT)?;
    println!("initial convergence of 9 nodes: {took:?}");

    // Site 3 goes offline, so whatever passes between sites 1 and 2 goes directly, over TCP.
    mesh.wan_down(3)?;
    let site3 = mesh.site_nodes(3);
    let sites12: Vec<usize> = everyone
        .iter()
        .copied()
        .filter(|i| !site3.contains(i))
        .collect();
    let changes = vec![
        mesh.install(mesh.index_of(1, 2)?, &mut ledger)?,
        mesh.install(mesh.index_of(2, 3)?, &mut ledger)?,
    ];
    let took = mesh.wait_shown(&sites12, &changes, &ledger, CROSS_TIMEOUT)?;
    println!("changes crossed between sites 1 and 2 without UDP in {took:?}");
    mesh.ensure_not_shown(&site3, &changes, &ledger)?;
    let dropped = mesh
        .lab
        .nft_counter_packets(&mesh.router, "fleetmesh_udp_block", "dropped")?;
    println!("UDP packets dropped between sites 1 and 2: {dropped}");
    ensure!(
        dropped > 0,
        "no UDP packet was dropped, so QUIC was never tried between the sites"
    );

    // Site 3 returns and everything converges.
    mesh.wan_up(3)?;
    let took = mesh.wait_converged(&everyone, &ledger, HEAL_TIMEOUT)?;
    println!("convergence after site 3 returned: {took:?}");
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
