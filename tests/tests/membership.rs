//! Membership with real processes on 127.0.0.1: only enrolled, unrevoked members of the same
//! fleet sync, a node writes only its own document, tenants stay apart, and enrollment works
//! while the fleet root key is offline.
//!
//! The attacks come from `fleetmesh-rogue`, a test program with real credentials made by
//! `fleetmesh join` and sends one kind of invalid data. Every case checks that the node under
//! attack closed the connection, said why in its log, and stored nothing from the attacker.

use std::process::Command;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use fleetmesh_tests::{fixture_root, set_dpkg_version, test_dir, wait_for, TestNode};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);

fn wait_listed(node: &TestNode, hostnames: &[&str]) -> Result<()> {
    let wanted: Vec<String> = hostnames.iter().map(|name| name.to_string()).collect();
    wait_for(
        &format!("{} to list {hostnames:?}", node.name),
        TIMEOUT,
        || Ok((node.listed_hostnames()? == wanted).then_some(())),
    )
    .with_context(|| format!("log of {}:\n{}", node.name, node.log_tail(40)))
}

fn wait_log(node: &TestNode, needles: &[&str]) -> Result<()> {
    wait_for(
        &format!("{} to log {needles:?}", node.name),
        TIMEOUT,
        || {
            let log = node.log();
            Ok(log
                .lines()
                .any(|line| needles.iter().all(|needle| line.contains(needle)))
                .then_some(()))
        },
    )
    .with_context(|| format!("log of {}:\n{}", node.name, node.log_tail(40)))
}

#[test]
fn peer_of_another_fleet_is_refused() -> Result<()> {
    let (source, _) = fixture_root();
    let (_guard, base) = test_dir()?;
    let mut a = TestNode::new(&base, "node-a", &source)?;
    let mut x = TestNode::new(&base, "node-x", &source)?;
    a.start(&[])?;
    let a_address = a.quic_address()?;
    // X creates its own local fleet and dials A.
    x.start(&["--peer".to_string(), a_address])?;
    let x_id = x.node_id()?;
    let a_id = a.node_id()?;
    // Whichever side reads the other's hello first closes the connection, so the refusal shows
    // in one of the two logs.
    let refused = |node: &TestNode, other: &str| {
        node.log().lines().any(|line| {
            line.contains("disconnecting peer")
                && line.contains(other)
                && line.contains("belongs to fleet")
        })
    };
    wait_for("one side to refuse the other fleet", TIMEOUT, || {
        Ok((refused(&a, &x_id) || refused(&x, &a_id)).then_some(()))
    })
    .with_context(|| {
        format!(
            "log of node-a:\n{}\nlog of node-x:\n{}",
            a.log_tail(20),
            x.log_tail(20)
        )
    })?;
    // Give a wrongly accepted document time to arrive before checking that none did.
    std::thread::sleep(Duration::from_secs(3));
    wait_listed(&a, &["node-a"])?;
    assert_eq!(
        a.stored_changes_by(&x_id)?,
        0,
        "node-a stored a change of the other fleet"
    );
    assert_eq!(
        x.listed_hostnames()?,
        vec!["node-x"],
        "node-x received node-a's document"
    );
    Ok(())
}

#[test]
fn expired_token_and_expired_certificate_are_refused() -> Result<()> {
    let (source, _) = fixture_root();
    let (_guard, base) = test_dir()?;
    let mut a = TestNode::new(&base, "node-a", &source)?;
    let mut e = TestNode::new(&base, "node-e", &source)?;
    let late = TestNode::new(&base, "node-late", &source)?;
    a.start(&[])?;
    let a_address = a.quic_address()?;

    // A token used after its window fails with one clear error and enrolls nothing.
    let short = a.token(
        "default",
        "default",
        "node",
        &["--expires", "1s", "--valid-for", "1s"],
    )?;
    // E enrolls while the token is valid; its certificate expires 3 seconds from now.
    let brief = a.token(
        "default",
        "default",
        "node",
        &["--expires", "2s", "--valid-for", "3s"],
    )?;
    e.join(&brief, Some(&a_address))?;
    std::thread::sleep(Duration::from_secs(4));
    let output = late.cli(&["join", &short])?;
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        !output.status.success(),
        "join with an expired token succeeded"
    );
    assert!(stderr.contains("expired"), "{stderr}");
    assert!(stderr.contains("fleet token"), "{stderr}");
    assert!(
        !late.data_dir.exists(),
        "a refused join created {}",
        late.data_dir.display()
    );

    e.start(&[])?;
    let e_id = e.node_id()?;
    wait_log(&a, &["disconnecting peer", &e_id, "expired"])?;
    assert_eq!(
        a.stored_changes_by(&e_id)?,
        0,
        "node-a stored a change of an expired node"
    );
    assert_eq!(a.listed_hostnames()?, vec!["node-a"]);
    Ok(())
}

#[test]
fn revoked_node_is_cut_off_everywhere() -> Result<()> {
    let (source, _) = fixture_root();
    let (_guard, base) = test_dir()?;
    let mut a = TestNode::new(&base, "node-a", &source)?;
    let mut b = TestNode::new(&base, "node-b", &source)?;
    let mut c = TestNode::new(&base, "node-c", &source)?;
    a.start(&[])?;
    let a_address = a.quic_address()?;
    b.join_fleet_of(&a, &a_address)?;
    c.join_fleet_of(&a, &a_address)?;
    b.start(&[])?;
    c.start(&[])?;
    for node in [&a, &b, &c] {
        wait_listed(node, &["node-a", "node-b", "node-c"])?;
    }
    let b_id = b.node_id()?;
    let b_changes_before = a.stored_changes_by(&b_id)?;

    // The operator (A) revokes B; C hears of it by gossip.
    let revoked = a.cli_ok(&["fleet", "revoke", &b_id, "--reason", "decommissioned"])?;
    assert!(revoked.contains(&b_id), "{revoked}");
    wait_log(&a, &["disconnecting peer", &b_id, "revoked"])?;
    wait_log(&c, &["node revoked", &b_id])?;

    // B keeps changing; neither A nor C accepts its later changes.
    set_dpkg_version(&b.root, "curl", "7.88.1-10+deb12u99")?;
    wait_for("node-b to record its change", TIMEOUT, || {
        let rows = b.query("SELECT version FROM packages WHERE name = 'curl' AND node_id = (SELECT node_id FROM nodes WHERE hostname = 'node-b')")?;
        Ok(rows
            .iter()
            .any(|row| row["version"] == "7.88.1-10+deb12u99")
            .then_some(()))
    })?;
    std::thread::sleep(Duration::from_secs(6));
    assert_eq!(
        a.stored_changes_by(&b_id)?,
        b_changes_before,
        "node-a stored a change of a revoked node"
    );
    assert_eq!(
        c.stored_changes_by(&b_id)?,
        b_changes_before,
        "node-c stored a change of a revoked node"
    );

    // After a restart B is refused at connect time, by the hello check.
    b.kill()?;
    b.start(&[])?;
    wait_log(&a, &["disconnecting peer", &b_id, "refused", "revoked"])?;
    Ok(())
}

/// Runs the rogue program against `target` and returns its JSON report.
fn rogue(
    data_dir: &std::path::Path,
    target: &str,
    attack: &str,
    tenant: Option<&str>,
) -> Result<Value> {
    let mut command = Command::new(env!("CARGO_BIN_EXE_fleetmesh-rogue"));
    command.arg(data_dir).arg(target).arg(attack);
    if let Some(tenant) = tenant {
        command.arg(tenant);
    }
    let output = command.output().context("running fleetmesh-rogue failed")?;
    if !output.status.success() {
        bail!(
            "fleetmesh-rogue {attack} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(serde_json::from_slice(&output.stdout)?)
}

#[test]
fn invalid_data_from_an_enrolled_peer_is_refused() -> Result<()> {
    let (source, _) = fixture_root();
    let (_guard, base) = test_dir()?;
    let mut a = TestNode::new(&base, "node-a", &source)?;
    let rogue_node = TestNode::new(&base, "rogue", &source)?;
    a.start(&[])?;
    let a_address = a.quic_address()?;
    let a_id = a.node_id()?;
    wait_listed(&a, &["node-a"])?;
    // The rogue has a real node certificate of A's fleet, tenant "default".
    rogue_node.join_fleet_of(&a, &a_address)?;
    let a_changes = a.stored_changes_by(&a_id)?;

    // Control: an enrolled peer that behaves stays connected and takes part in sync.
    let report = rogue(&rogue_node.data_dir, &a_address, "none", None)?;
    assert_eq!(report["closed"], false, "{report}");
    assert!(
        report["received_other_messages"].as_u64().unwrap_or(0) >= 1,
        "{report}"
    );
    let rogue_id = report["node"]
        .as_str()
        .context("no node in report")?
        .to_string();

    let cases = [
        ("other-doc", None, "only the document's owner"),
        ("forged-author", None, "invalid signature"),
        ("replay", None, "invalid signature"),
        ("foreign-tenant", Some("globex"), "not shared"),
        ("plain-policy", None, "accept only changes by operators"),
        ("oversized", None, "oversized frame"),
        ("bad-frame", None, "invalid frame"),
    ];
    for (attack, tenant, reason) in cases {
        // A rejected peer is backed off for a minute; give each case a fresh start of A.
        a.kill()?;
        a.start(&[])?;
        let target = a.quic_address()?;
        let report = rogue(&rogue_node.data_dir, &target, attack, tenant)?;
        println!("{report}");
        assert_eq!(
            report["closed"], true,
            "node-a kept the connection after {attack}: {report}"
        );
        wait_log(&a, &["disconnecting peer", &rogue_id, reason])
            .with_context(|| format!("attack {attack}"))?;
        assert_eq!(
            a.stored_changes_by(&rogue_id)?,
            0,
            "node-a stored a change after {attack}"
        );
        assert_eq!(
            a.stored_changes_by(&a_id)?,
            a_changes,
            "node-a's own document changed after {attack}"
        );
        assert_eq!(
            a.stored_changes()?,
            a_changes,
            "node-a stored a change of another author after {attack}"
        );
        let foreign = report["received_changes"]
            .as_object()
            .map(|tenants| tenants.keys().any(|tenant| tenant != "default"))
            .unwrap_or(false);
        assert!(
            !foreign,
            "the rogue received another tenant's changes: {report}"
        );
    }
    Ok(())
}

#[test]
fn node_enrolls_while_the_root_key_is_offline() -> Result<()> {
    let (source, _) = fixture_root();
    let (_guard, base) = test_dir()?;
    let key_file = base.join("admin/fleet.key");
    let key_arg = key_file.to_string_lossy().to_string();
    let admin = |args: &[&str]| -> Result<String> {
        let output = Command::new(fleetmesh_tests::binary()?)
            .args(args)
            .env("FLEETMESH_FLEET_PASSPHRASE", "correct horse battery staple")
            .output()?;
        if !output.status.success() {
            bail!(
                "fleetmesh {args:?} failed: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).trim().to_string())
    };
    admin(&["fleet", "init", "--key-file", &key_arg])?;
    let operator_token = admin(&[
        "fleet",
        "token",
        "--key-file",
        &key_arg,
        "--tenant",
        "acme",
        "--site",
        "leeds",
        "--role",
        "operator",
        "--expires",
        "1h",
    ])?;
    let node_token = admin(&[
        "fleet",
        "token",
        "--key-file",
        &key_arg,
        "--tenant",
        "acme",
        "--site",
        "york",
        "--role",
        "node",
        "--expires",
        "1h",
    ])?;
    // The administrator's machine goes away with the root key.
    std::fs::remove_dir_all(base.join("admin"))?;

    let mut first = TestNode::new(&base, "first", &source)?;
    let mut second = TestNode::new(&base, "second", &source)?;
    first.join(&operator_token, None)?;
    first.start(&[])?;
    let first_address = first.quic_address()?;
    second.join(&node_token, Some(&first_address))?;
    second.start(&[])?;
    for node in [&first, &second] {
        wait_listed(node, &["first", "second"])?;
    }
    let rows = first.query("SELECT hostname, tenant, site FROM nodes ORDER BY hostname")?;
    assert_eq!(rows[0]["tenant"], "acme", "{rows:?}");
    assert_eq!(rows[1]["site"], "york", "{rows:?}");
    Ok(())
}
