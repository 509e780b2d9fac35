//! Policies and compliance with real processes on 127.0.0.1: an operator applies a policy, the
//! node with the Debian fixture root fails it, passes once its sshd_config is fixed, keeps
//! evaluating while cut off, and every node learns each result.

use std::fs;
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result};
use fleetmesh_tests::{mini_root, shared_fixtures, test_dir, wait_for, TestNode};

const TIMEOUT: Duration = Duration::from_secs(90);

/// The example policy of docs/policies.md.
const SSH_POLICY: &str = include_str!("../fixtures/policies/ssh.toml");

/// Returns the status `observer` holds for `hostname`'s ssh check, if any.
fn status_seen_by(observer: &TestNode, hostname: &str) -> Result<Option<(String, String)>> {
    let rows = observer.query(&format!(
        "SELECT c.status, c.failing_rows FROM compliance c JOIN nodes n USING (node_id)
         WHERE n.hostname = '{hostname}' AND c.policy = 'ssh' AND c.check_name = 'permit-root-login'"
    ))?;
    Ok(rows.first().map(|row| {
        (
            row["status"].as_str().unwrap_or_default().to_string(),
            row["failing_rows"].as_str().unwrap_or_default().to_string(),
        )
    }))
}

fn wait_status(observer: &TestNode, hostname: &str, expected: &str) -> Result<String> {
    wait_for(
        &format!(
            "{} to see {hostname}'s ssh check as {expected}",
            observer.name
        ),
        TIMEOUT,
        || {
            Ok(status_seen_by(observer, hostname)?
                .filter(|(status, _)| status == expected)
                .map(|(_, rows)| rows))
        },
    )
    .with_context(|| format!("log of {}:\n{}", observer.name, observer.log_tail(30)))
}

fn set_permit_root_login(root: &Path, value: &str) -> Result<()> {
    let path = root.join("etc/ssh/sshd_config");
    let text = fs::read_to_string(&path)?;
    let edited: Vec<String> = text
        .lines()
        .map(|line| {
            if line.trim_start().starts_with("PermitRootLogin") {
                format!("PermitRootLogin {value}")
            } else {
                line.to_string()
            }
        })
        .collect();
    fs::write(&path, edited.join("\n") + "\n")?;
    Ok(())
}

#[test]
fn policy_results_reach_every_node() -> Result<()> {
    let Some(debian) = shared_fixtures()
        .map(|shared| shared.join("roots/debian12-container"))
        .filter(|root| root.is_dir())
    else {
        println!("SKIPPED: ../shared/fixtures/roots/debian12-container not found; this test needs the Debian fixture root");
        return Ok(());
    };
    let started = std::time::Instant::now();
    let stage = |what: &str| println!("{:>6.1} s  {what}", started.elapsed().as_secs_f64());
    let (_guard, base) = test_dir()?;
    let mut a = TestNode::new(&base, "node-a", &mini_root())?;
    let mut b = TestNode::new(&base, "node-b", &debian)?;
    let mut c = TestNode::new(&base, "node-c", &mini_root())?;

    // A creates a local fleet and is its operator; B and C are plain nodes.
    a.start(&[])?;
    let a_address = a.quic_address()?;
    for node in [&mut b, &mut c] {
        node.join_fleet_of(&a, &a_address)?;
        node.start(&[])?;
    }
    let b_address = b.quic_address()?;

    let policy_file = base.join("ssh.toml");
    fs::write(&policy_file, SSH_POLICY)?;
    let policy_path = policy_file.to_string_lossy().to_string();

    // A plain node may not write the tenant's policies.
    let rejected = c.cli(&["policy", "apply", &policy_path])?;
    assert!(!rejected.status.success(), "a plain node applied a policy");
    let message = String::from_utf8_lossy(&rejected.stderr);
    assert!(
        message.contains("only operators of tenant default"),
        "unexpected error: {message}"
    );

    let applied = a.cli_ok(&["policy", "apply", &policy_path])?;
    assert!(
        applied.contains("policy ssh with 1 check written"),
        "unexpected output: {applied}"
    );

    // The Debian root has `PermitRootLogin yes`: B fails, and A and C both learn it.
    for observer in [&a, &c] {
        let rows = wait_status(observer, "node-b", "fail")?;
        assert!(
            rows.contains("\"value\":\"yes\""),
            "failing rows lack the value: {rows}"
        );
    }
    stage("node-b's failure reached node-a and node-c");
    // A and C have no sshd_config, so nothing fails there.
    wait_status(&a, "node-a", "pass")?;
    wait_status(&a, "node-c", "pass")?;
    let report = a.cli(&["compliance", "--policy", "ssh", "--format", "csv"])?;
    assert_eq!(
        report.status.code(),
        Some(1),
        "compliance must exit 1 while a check fails"
    );
    let csv = String::from_utf8_lossy(&report.stdout);
    let header = csv.lines().next().unwrap_or_default();
    assert_eq!(
        header,
        "node_id,hostname,tenant,site,policy,check,severity,status,failing_count,failing_rows,error,description"
    );
    let b_line = csv
        .lines()
        .find(|line| line.contains("node-b"))
        .with_context(|| format!("no node-b row in the report:\n{csv}"))?;
    assert!(b_line.contains(",fail,"), "node-b row: {b_line}");
    assert!(
        b_line.contains("PermitRootLogin must be no"),
        "node-b row: {b_line}"
    );

    // Baselines: node-c's configuration as the standard. node-a has the same root, so it
    // matches; node-b (the Debian root) deviates.
    a.cli_ok(&["baseline", "set", "mini-standard", "--from", "node-c"])?;
    a.cli_ok(&[
        "baseline",
        "assign",
        "mini-standard",
        "--where",
        "hostname IN ('node-a', 'node-c')",
    ])?;
    let drift = a.cli(&["drift"])?;
    let text = String::from_utf8_lossy(&drift.stdout);
    assert_eq!(
        drift.status.code(),
        Some(0),
        "node-a and node-c must match their baseline:\n{text}"
    );
    assert!(
        text.contains("node-a (") && text.contains(": matches"),
        "drift output:\n{text}"
    );
    a.cli_ok(&[
        "baseline",
        "assign",
        "mini-standard",
        "--where",
        "hostname LIKE 'node-%'",
    ])?;
    let drift = a.cli(&["drift", "--json"])?;
    assert_eq!(
        drift.status.code(),
        Some(1),
        "node-b deviates, so drift must exit 1"
    );
    let reports: serde_json::Value = serde_json::from_slice(&drift.stdout)?;
    let b_report = reports
        .as_array()
        .and_then(|all| all.iter().find(|r| r["hostname"] == "node-b"))
        .with_context(|| format!("no report for node-b: {reports}"))?;
    let deviations = b_report["deviations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    // The Debian root has hundreds of packages the baseline lacks, and an sshd_config.
    let extra_packages = deviations
        .iter()
        .filter(|d| d["kind"] == "packages" && d["action"] == "added")
        .count();
    assert!(
        extra_packages > 100,
        "node-b shows only {extra_packages} extra packages"
    );
    assert!(
        deviations
            .iter()
            .any(|d| d["kind"] == "tracked_files" && d["item"] == "/etc/ssh/sshd_config"),
        "node-b's sshd_config is not listed as a deviation"
    );
    stage("baselines and drift checked");

    // Fixing the file makes the check pass on the next collection, everywhere.
    set_permit_root_login(&b.root, "no")?;
    for observer in [&a, &c] {
        wait_status(observer, "node-b", "pass")?;
    }
    stage("node-b's pass reached node-a and node-c");
    let report = a.cli(&["compliance", "--policy", "ssh"])?;
    assert_eq!(
        report.status.code(),
        Some(0),
        "compliance must exit 0 when every check passes: {}",
        String::from_utf8_lossy(&report.stdout)
    );

    // Cut B off: its peers stop. B keeps evaluating the policy it already has.
    a.kill()?;
    c.kill()?;
    set_permit_root_login(&b.root, "yes")?;
    wait_status(&b, "node-b", "fail")?;
    stage("node-b evaluated the policy while cut off");
    assert_eq!(
        status_seen_by(&a, "node-b")?
            .map(|(status, _)| status)
            .as_deref(),
        Some("pass"),
        "node-a's replica changed while it was down"
    );

    // Back in contact, B reports the result it recorded while cut off.
    a.start(&["--peer".to_string(), b_address])?;
    wait_status(&a, "node-b", "fail")?;
    stage("node-b's result from the cut-off time reached node-a");
    Ok(())
}
