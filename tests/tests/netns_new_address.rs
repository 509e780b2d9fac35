//! Nodes restarted with a new address are found again: a branch node by mDNS on its LAN, and
//! a site's hub, whose old address other sites still list with `--peer`, because it dials out
//! to the hubs in its `--peer` list.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result};
use fleetmesh_tests::netns::{Lab, Ledger, Mesh};
use fleetmesh_tests::wait_for;

const SETUP_TIMEOUT: Duration = Duration::from_secs(45);
/// Time allowed for noticing that a killed node is gone. QUIC's idle timeout is 10 s in
/// libp2p-quic 0.14.
const GONE_TIMEOUT: Duration = Duration::from_secs(30);
const FOUND_TIMEOUT: Duration = Duration::from_secs(45);
const CONVERGE_TIMEOUT: Duration = Duration::from_secs(30);

fn unix_now() -> Result<i64> {
    let since_epoch = SystemTime::now().duration_since(UNIX_EPOCH)?;
    Ok(i64::try_from(since_epoch.as_secs())?)
}

/// Returns when node `observer` last heard from the node named `name` directly, and whether
/// it lists it as connected.
fn contact(mesh: &Mesh, observer: usize, name: &str) -> Result<(Option<i64>, bool)> {
    let summaries = mesh.node_summaries(observer)?;
    let summary = summaries
        .iter()
        .find(|node| node["hostname"].as_str() == Some(name))
        .with_context(|| format!("{} does not list {name}", mesh.nodes[observer].name()))?;
    Ok((
        summary["last_heard"].as_i64(),
        summary["connected"].as_bool() == Some(true),
    ))
}

#[test]
fn restarted_nodes_found_at_new_address() -> Result<()> {
    let Some(lab) = Lab::create("new-address", false)? else {
        return Ok(());
    };
    let test_started = Instant::now();
    let mut mesh = Mesh::build(lab, 3, 3)?;
    mesh.start_all()?;
    let everyone = mesh.all_nodes();
    let mut ledger = Ledger::default();
    let took = mesh.wait_converged(&everyone, &ledger, SETUP_TIMEOUT)?;
    println!("initial convergence of 9 nodes: {took:?}");

    // s1n2 (found by mDNS) and s3n1 (the hub of site 3) stop, and who saw them notices.
    let branch = mesh.index_of(1, 2)?;
    let hub = mesh.index_of(3, 1)?;
    // The nodes each moved node was connected to, and must be connected to again.
    let observers = [
        (branch, vec![mesh.index_of(1, 1)?, mesh.index_of(1, 3)?]),
        (
            hub,
            vec![
                mesh.index_of(3, 2)?,
                mesh.index_of(3, 3)?,
                mesh.index_of(1, 1)?,
                mesh.index_of(2, 1)?,
            ],
        ),
    ];
    mesh.kill(branch)?;
    mesh.kill(hub)?;
    let gone_started = Instant::now();
    for (moved, watchers) in &observers {
        let name = mesh.nodes[*moved].name().to_string();
        for &watcher in watchers {
            wait_for(
                &format!("{} to see {name} gone", mesh.nodes[watcher].name()),
                GONE_TIMEOUT,
                || Ok((!contact(&mesh, watcher, &name)?.1).then_some(())),
            )?;
        }
    }
    println!(
        "the neighbours saw both nodes gone after {:?}",
        gone_started.elapsed()
    );

    // Both get new addresses; changes are made on them and elsewhere while they are down.
    mesh.move_node(branch, 112)?;
    mesh.move_node(hub, 111)?;
    mesh.install(branch, &mut ledger)?;
    mesh.install(hub, &mut ledger)?;
    mesh.install(mesh.index_of(2, 2)?, &mut ledger)?;
    let restart_time = unix_now()? + 1;
    std::thread::sleep(Duration::from_secs(1));
    mesh.start(branch)?;
    mesh.start(hub)?;
    let found_started = Instant::now();

    // Every neighbour connects to them again at the new address.
    for (moved, watchers) in &observers {
        let name = mesh.nodes[*moved].name().to_string();
        for &watcher in watchers {
            wait_for(
                &format!("{} to find {name} again", mesh.nodes[watcher].name()),
                FOUND_TIMEOUT,
                || {
                    let (last_heard, connected) = contact(&mesh, watcher, &name)?;
                    Ok(
                        (connected && last_heard.is_some_and(|at| at >= restart_time))
                            .then_some(()),
                    )
                },
            )
            .map_err(|err| err.context(mesh.describe_state(&[*moved, watcher], &ledger)))?;
        }
    }
    println!(
        "s1n2 at {} and s3n1 at {} were found again after {:?}",
        mesh.nodes[branch].address,
        mesh.nodes[hub].address,
        found_started.elapsed()
    );

    let took = mesh.wait_converged(&everyone, &ledger, CONVERGE_TIMEOUT)?;
    println!("convergence after the restarts: {took:?}");
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
