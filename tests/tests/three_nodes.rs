//! Three real `fleetmesh up` processes on 127.0.0.1: they find each other, a node killed with
//! SIGKILL loses nothing, and it catches up with what changed while it was down.

use std::time::Duration;

use anyhow::{Context, Result};
use fleetmesh_tests::{fixture_root, set_dpkg_version, test_dir, wait_for, TestNode};

const CONVERGE_TIMEOUT: Duration = Duration::from_secs(60);

fn package_version(node: &TestNode, hostname: &str, package: &str) -> Result<Option<String>> {
    let rows = node.query(&format!(
        "SELECT p.version FROM packages p JOIN nodes n ON n.node_id = p.node_id \
         WHERE n.hostname = '{hostname}' AND p.name = '{package}'"
    ))?;
    Ok(rows
        .first()
        .and_then(|row| row["version"].as_str())
        .map(str::to_string))
}

fn fleet_packages(node: &TestNode) -> Result<Vec<serde_json::Value>> {
    node.query(
        "SELECT n.hostname, p.name, p.version FROM packages p JOIN nodes n ON n.node_id = p.node_id \
         ORDER BY n.hostname, p.name, p.arch",
    )
}

#[test]
fn three_nodes_sync_and_recover_from_sigkill() -> Result<()> {
    let (source, described) = fixture_root();
    println!("using the {described}");
    let (_guard, base) = test_dir()?;
    let mut a = TestNode::new(&base, "node-a", &source)?;
    let mut b = TestNode::new(&base, "node-b", &source)?;
    let mut c = TestNode::new(&base, "node-c", &source)?;
    // Each root differs in host name and in one package, so the nodes hold different facts.
    set_dpkg_version(&b.root, "curl", "7.88.1-10+deb12u77")?;
    set_dpkg_version(&c.root, "curl", "7.88.1-10+deb12u88")?;

    // A starts alone and creates a local fleet; B and C enroll with tokens from A and dial A.
    a.start(&[])?;
    let a_address = a.quic_address()?;
    b.join_fleet_of(&a, &a_address)?;
    c.join_fleet_of(&a, &a_address)?;
    b.start(&[])?;
    c.start(&[])?;

    let everyone = vec![
        "node-a".to_string(),
        "node-b".to_string(),
        "node-c".to_string(),
    ];
    for node in [&a, &b, &c] {
        wait_for(
            &format!("{} to list all three nodes", node.name),
            CONVERGE_TIMEOUT,
            || Ok((node.listed_hostnames()? == everyone).then_some(())),
        )
        .with_context(|| format!("log of {}:\n{}", node.name, node.log_tail(40)))?;
    }
    let before_kill = fleet_packages(&c)?;
    assert!(!before_kill.is_empty(), "node-c holds no packages");
    assert_eq!(
        before_kill,
        fleet_packages(&a)?,
        "node-a and node-c disagree before the kill"
    );
    assert_eq!(
        before_kill,
        fleet_packages(&b)?,
        "node-b and node-c disagree before the kill"
    );
    for (hostname, version) in [
        ("node-b", "7.88.1-10+deb12u77"),
        ("node-c", "7.88.1-10+deb12u88"),
    ] {
        for node in [&a, &b, &c] {
            assert_eq!(
                package_version(node, hostname, "curl")?.as_deref(),
                Some(version),
                "{} sees the wrong curl of {hostname}",
                node.name
            );
        }
    }

    // C dies without warning; what it held is still in its store.
    c.kill()?;
    assert_eq!(
        fleet_packages(&c)?,
        before_kill,
        "node-c lost data after SIGKILL"
    );

    // A's facts change while C is down.
    let old = set_dpkg_version(&a.root, "openssl", "3.0.99-1")?;
    assert_ne!(old, "3.0.99-1");
    for node in [&a, &b] {
        wait_for(
            &format!("{} to see the upgrade", node.name),
            CONVERGE_TIMEOUT,
            || {
                Ok(
                    (package_version(node, "node-a", "openssl")?.as_deref() == Some("3.0.99-1"))
                        .then_some(()),
                )
            },
        )
        .with_context(|| format!("log of {}:\n{}", node.name, node.log_tail(40)))?;
    }
    assert_eq!(package_version(&c, "node-a", "openssl")?, Some(old));

    // C restarts with its old store and catches up.
    c.start(&[])?;
    wait_for("node-c to catch up", CONVERGE_TIMEOUT, || {
        Ok(
            (package_version(&c, "node-a", "openssl")?.as_deref() == Some("3.0.99-1"))
                .then_some(()),
        )
    })
    .with_context(|| format!("log of node-c:\n{}", c.log_tail(40)))?;
    wait_for("all three to agree", CONVERGE_TIMEOUT, || {
        let reference = fleet_packages(&a)?;
        Ok((fleet_packages(&b)? == reference && fleet_packages(&c)? == reference).then_some(()))
    })?;
    Ok(())
}
