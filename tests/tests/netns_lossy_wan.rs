//! A flaky WAN link: 30% of the packets in each direction are dropped at random and every
//! datagram and TCP chunk is held for 200 ms in each direction. Every node still converges and
//! no change is lost.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{ensure, Result};
use fleetmesh_tests::netns::{relay_counts, Lab, Ledger, Mesh};

const LOSS_PERCENT: u32 = 30;
const DELAY: Duration = Duration::from_millis(200);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(50);

#[test]
fn lossy_slow_wan_converges() -> Result<()> {
    let Some(lab) = Lab::create("lossy-wan", true)? else {
        return Ok(());
    };
    let test_started = Instant::now();
    let mut mesh = Mesh::build(lab, 3, 3)?;
    let relay = Path::new(env!("CARGO_BIN_EXE_fleetmesh-delay-relay"));
    let relay_log = mesh.delay_wan(1, DELAY, relay)?;
    mesh.lose_on_wan(1, LOSS_PERCENT)?;
    mesh.start_all()?;

    // The first sync crosses the bad link: three of the nine node documents are at site 1.
    let everyone = mesh.all_nodes();
    let mut ledger = Ledger::default();
    let took = mesh.wait_converged(&everyone, &ledger, CONVERGE_TIMEOUT)?;
    println!("initial convergence of 9 nodes over the bad link: {took:?}");

    // Three rounds of changes on both sides of the link, one collection interval apart.
    for _ in 0..3 {
        mesh.install(mesh.index_of(1, 2)?, &mut ledger)?;
        mesh.install(mesh.index_of(2, 2)?, &mut ledger)?;
        mesh.install(mesh.index_of(3, 3)?, &mut ledger)?;
        std::thread::sleep(Duration::from_secs(1));
    }
    let took = mesh.wait_converged(&everyone, &ledger, CONVERGE_TIMEOUT)?;
    println!("convergence after changes at all three sites: {took:?}");
    let lost = mesh.count_lost(&everyone, &ledger)?;
    println!(
        "lost changes: {lost} of {} changes x {} nodes",
        ledger.changes.len(),
        everyone.len()
    );
    assert_eq!(lost, 0, "changes lost");

    // The faults really applied: packets were dropped and the traffic took the delayed path.
    let dropped_in = mesh
        .lab
        .nft_counter_packets(&mesh.router, "fleetmesh_wan_loss", "loss_in")?;
    let dropped_out =
        mesh.lab
            .nft_counter_packets(&mesh.router, "fleetmesh_wan_loss", "loss_out")?;
    println!("packets dropped on the link: {dropped_in} inbound, {dropped_out} outbound");
    ensure!(dropped_in > 0, "no packet from site 1 was dropped");
    ensure!(dropped_out > 0, "no packet to site 1 was dropped");
    let (datagrams, tcp_bytes) = relay_counts(&relay_log)?;
    println!(
        "relay forwarded {datagrams} UDP datagrams and {tcp_bytes} TCP bytes with {DELAY:?} delay"
    );
    ensure!(
        datagrams + tcp_bytes > 0,
        "nothing went through the delay relay"
    );
    mesh.lab.check_helpers()?;
    println!("test took {:?}", test_started.elapsed());
    Ok(())
}
