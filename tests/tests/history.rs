//! History and diff across two real `fleetmesh up` processes on 127.0.0.1. A package upgrade
//! and an edit of a tracked file on node B show up in `history` and `diff` on node A, with old
//! and new values and the file's changed lines. History retention deletes the rows that
//! `history` reads and leaves what `diff` reads.

use std::fs;
use std::process::Output;
use std::time::Duration;

use anyhow::{Context, Result};
use fleetmesh_model::membership::format_utc;
use fleetmesh_node::daemon::unix_now;
use fleetmesh_tests::{fixture_root, set_dpkg_version, test_dir, wait_for, TestNode};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(60);

const SSHD_CONFIG: &str = "etc/ssh/sshd_config";
const LINE_BEFORE: &str = "PermitRootLogin yes";
const LINE_AFTER: &str = "PermitRootLogin no";
const PACKAGE: &str = "openssl";
const VERSION_AFTER: &str = "3.0.99-1~fleetmesh1";

fn stdout_json(output: &Output) -> Result<Value> {
    serde_json::from_slice(&output.stdout).with_context(|| {
        format!(
            "output is not JSON; stdout: {} stderr: {}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        )
    })
}

/// Returns the facts of every change record in `history --json` output.
fn history_facts(history: &Value) -> Vec<Value> {
    history
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|record| record["facts"].as_array().cloned().unwrap_or_default())
        .collect()
}

/// Returns the facts of one kind in `diff --json` output.
fn differences(diff: &Value, kind: &str) -> Vec<Value> {
    diff["differences"][kind]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

/// Finds the fact for the version of [`PACKAGE`] among `facts`.
fn package_version_fact(facts: &[Value]) -> Option<&Value> {
    facts.iter().find(|fact| {
        fact["kind"] == "packages"
            && fact["item"]
                .as_str()
                .is_some_and(|item| item.starts_with(&format!("{PACKAGE}:")) || item == PACKAGE)
            && fact["field"] == "version"
    })
}

/// Finds the fact for the content of sshd_config among `facts`.
fn sshd_content_fact(facts: &[Value]) -> Option<&Value> {
    facts.iter().find(|fact| {
        fact["kind"] == "tracked_files"
            && fact["item"] == "/etc/ssh/sshd_config"
            && fact["field"] == "content"
    })
}

/// Returns the changed lines of a fact as `-text` and `+text`.
fn changed_lines(fact: &Value) -> Vec<String> {
    fact["lines"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|edit| {
            format!(
                "{}{}",
                edit["op"].as_str().unwrap_or("?"),
                edit["text"].as_str().unwrap_or("")
            )
        })
        .collect()
}

/// Asserts a failed run with exactly one error line that contains every fragment.
fn assert_one_error_line(output: &Output, fragments: &[&str]) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    let error_lines = stderr
        .lines()
        .filter(|line| line.starts_with("error"))
        .count();
    assert_eq!(error_lines, 1, "stderr: {stderr}");
    for fragment in fragments {
        assert!(
            stderr.contains(fragment),
            "missing {fragment:?} in: {stderr}"
        );
    }
}

#[test]
fn upgrade_and_file_edit_reach_history_and_diff() -> Result<()> {
    let (source, described) = fixture_root();
    println!("using the {described}");
    let (_guard, base) = test_dir()?;
    let mut a = TestNode::new(&base, "node-a", &source)?;
    let mut b = TestNode::new(&base, "node-b", &source)?;

    // B's root gets an sshd_config with a known line where the fixture has none.
    let sshd_path = b.root.join(SSHD_CONFIG);
    let sshd_before = fs::read_to_string(&sshd_path).unwrap_or_default();
    if !sshd_before.lines().any(|line| line == LINE_BEFORE) {
        fs::create_dir_all(sshd_path.parent().context("sshd_config has a parent")?)?;
        fs::write(&sshd_path, format!("{sshd_before}Port 22\n{LINE_BEFORE}\n"))?;
    }

    // A creates a local fleet; B enrolls with a token from A and dials A.
    a.start(&[])?;
    let a_address = a.quic_address()?;
    b.join_fleet_of(&a, &a_address)?;
    b.start(&[])?;
    let expected = vec!["node-a".to_string(), "node-b".to_string()];
    wait_for("node-a to list node-b", TIMEOUT, || {
        Ok((a.listed_hostnames()? == expected).then_some(()))
    })
    .with_context(|| format!("log of node-a:\n{}", a.log_tail(40)))?;
    let first = stdout_json(&a.cli(&["history", "node-b", "--json"])?)?;
    assert!(
        !history_facts(&first).is_empty(),
        "node-a has no history of node-b: {first}"
    );

    // Every change so far is committed at or before `before_edit`, and the edits after it.
    let before_edit = unix_now();
    std::thread::sleep(Duration::from_millis(1500));
    let version_before = set_dpkg_version(&b.root, PACKAGE, VERSION_AFTER)?;
    let sshd_text = fs::read_to_string(&sshd_path)?;
    let edited: String = sshd_text
        .lines()
        .map(|line| {
            if line == LINE_BEFORE {
                LINE_AFTER
            } else {
                line
            }
        })
        .flat_map(|line| [line, "\n"])
        .collect();
    // Written beside and renamed over, so a collection never reads half a file.
    let temp = sshd_path.with_extension("fleetmesh-test-tmp");
    fs::write(&temp, edited)?;
    fs::rename(&temp, &sshd_path)?;

    wait_for("node-a to receive node-b's edits", TIMEOUT, || {
        let rows = a.query(&format!(
            "SELECT 1 FROM packages p JOIN tracked_files f USING (node_id)
             JOIN nodes n USING (node_id)
             WHERE n.hostname = 'node-b' AND p.name = '{PACKAGE}' AND p.version = '{VERSION_AFTER}'
               AND f.path = '/etc/ssh/sshd_config' AND f.content LIKE '%{LINE_AFTER}%'"
        ))?;
        Ok((!rows.is_empty()).then_some(()))
    })
    .with_context(|| format!("log of node-b:\n{}", b.log_tail(40)))?;

    // history on A: the version's old and new value and the file's changed lines.
    let history = stdout_json(&a.cli(&["history", "node-b", "--json"])?)?;
    let facts = history_facts(&history);
    let upgrade = package_version_fact(&facts).context("history lists no version change")?;
    assert_eq!(upgrade["action"], "changed");
    assert_eq!(upgrade["old"], version_before.as_str());
    assert_eq!(upgrade["new"], VERSION_AFTER);
    let edit = sshd_content_fact(&facts).context("history lists no sshd_config edit")?;
    assert_eq!(
        changed_lines(edit),
        [format!("-{LINE_BEFORE}"), format!("+{LINE_AFTER}")]
    );
    let newest_time = history[0]["time"].as_i64().context("a change time")?;
    assert!(newest_time > before_edit, "newest change at {newest_time}");

    // --path keeps only that package's facts; --since leaves out the first change.
    let filtered = stdout_json(&a.cli(&[
        "history",
        "node-b",
        "--json",
        "--path",
        &format!("packages/{PACKAGE}"),
    ])?)?;
    let filtered_facts = history_facts(&filtered);
    assert!(
        package_version_fact(&filtered_facts).is_some(),
        "{filtered}"
    );
    assert!(
        filtered_facts.iter().all(|fact| fact["kind"] == "packages"),
        "{filtered}"
    );
    let since = format_utc(before_edit + 1);
    let recent = stdout_json(&a.cli(&["history", "node-b", "--json", "--since", &since])?)?;
    let recent_count = recent.as_array().map_or(0, Vec::len);
    let all_count = history.as_array().map_or(0, Vec::len);
    assert!(recent_count >= 1, "{recent}");
    assert!(
        recent_count < all_count,
        "--since {since} kept all {all_count} changes"
    );

    // Text output names the change and the line.
    let text = a.cli_ok(&["history", "node-b", "--path", "tracked_files"])?;
    assert!(text.contains("+ line"), "{text}");
    assert!(text.contains(LINE_AFTER), "{text}");

    // diff on A against the state before the edits: differences, exit status 1.
    let at = format_utc(before_edit);
    let output = a.cli(&["diff", "node-b", "--at", &at, "--json"])?;
    assert_eq!(
        output.status.code(),
        Some(1),
        "diff --at {at}: {:?}",
        output
    );
    let diff = stdout_json(&output)?;
    let packages = differences(&diff, "packages");
    let upgrade = package_version_fact(&packages).context("diff lists no version change")?;
    assert_eq!(upgrade["old"], version_before.as_str());
    assert_eq!(upgrade["new"], VERSION_AFTER);
    let files = differences(&diff, "tracked_files");
    let edit = sshd_content_fact(&files).context("diff lists no sshd_config edit")?;
    assert_eq!(
        changed_lines(edit),
        [format!("-{LINE_BEFORE}"), format!("+{LINE_AFTER}")]
    );
    let text = a.cli(&["diff", "node-b", "--at", &at, "--kind", "tracked_files"])?;
    assert_eq!(text.status.code(), Some(1));
    let text = String::from_utf8_lossy(&text.stdout);
    assert!(text.contains(LINE_AFTER), "{text}");
    assert!(
        !text.contains(VERSION_AFTER),
        "--kind tracked_files printed packages: {text}"
    );

    // Against now nothing differs: exit status 0.
    let now = format_utc(unix_now());
    let output = a.cli(&["diff", "node-b", "--at", &now])?;
    assert_eq!(
        output.status.code(),
        Some(0),
        "diff --at {now}: {:?}",
        output
    );

    // Two machines: the upgraded package differs, the host names are left out.
    let output = a.cli(&["diff", "node-a", "node-b", "--json"])?;
    assert_eq!(output.status.code(), Some(1), "{:?}", output);
    let diff = stdout_json(&output)?;
    assert!(diff["differences"]["identity"].is_null(), "{diff}");
    let packages = differences(&diff, "packages");
    let upgrade = package_version_fact(&packages).context("node diff lists no version")?;
    assert_eq!(upgrade["old"], version_before.as_str());
    assert_eq!(upgrade["new"], VERSION_AFTER);

    // Bad input: one error line naming the value and the fix, exit status 2.
    assert_one_error_line(
        &a.cli(&["history", "no-such-node"])?,
        &["no-such-node", "fleetmesh nodes"],
    );
    assert_one_error_line(
        &a.cli(&["history", "node-b", "--since", "yesterday"])?,
        &["\"yesterday\"", "--since", "2026-12-01"],
    );
    assert_one_error_line(
        &a.cli(&["diff", "node-b", "--at", "1970-01-02"])?,
        &["1970-01-02", "first change", "later time"],
    );
    assert_one_error_line(
        &a.cli(&["diff", "node-b", "--at", "2099-01-01"])?,
        &["\"2099-01-01\"", "in the future", "up to now"],
    );

    // A baseline taken from B as it was before the edits: B now drifts from it by the upgrade
    // and the edit.
    let text = a.cli_ok(&[
        "baseline",
        "set",
        "before-edit",
        "--from",
        "node-b",
        "--at",
        &at,
    ])?;
    assert!(
        text.contains("baseline before-edit recorded from node-b"),
        "{text}"
    );
    a.cli_ok(&[
        "baseline",
        "assign",
        "before-edit",
        "--where",
        "hostname = 'node-b'",
    ])?;
    let output = a.cli(&["drift", "--baseline", "before-edit", "--json"])?;
    assert_eq!(output.status.code(), Some(1), "drift: {output:?}");
    let drift = String::from_utf8_lossy(&output.stdout);
    assert!(drift.contains(VERSION_AFTER), "{drift}");
    assert!(drift.contains(&version_before), "{drift}");
    assert!(drift.contains(LINE_AFTER), "{drift}");
    assert_one_error_line(
        &a.cli(&[
            "baseline",
            "set",
            "too-early",
            "--from",
            "node-b",
            "--at",
            "1970-01-02",
        ])?,
        &["1970-01-02", "first change", "later --at"],
    );

    // Retention: a restart with a 1-second window deletes the rows `history` reads. The signed
    // changes stay, so `diff` still reaches back before the edits.
    let signed_before = a.stored_changes()?;
    a.kill()?;
    std::thread::sleep(Duration::from_millis(1100));
    a.start(&["--history-retention".to_string(), "1s".to_string()])?;
    wait_for("node-a to delete old history rows", TIMEOUT, || {
        let rows = a.query(&format!(
            "SELECT count(*) AS n FROM changes WHERE time <= {newest_time}"
        ))?;
        Ok((rows.first().and_then(|row| row["n"].as_i64()) == Some(0)).then_some(()))
    })
    .with_context(|| format!("log of node-a:\n{}", a.log_tail(40)))?;
    let history = stdout_json(&a.cli(&["history", "node-b", "--json"])?)?;
    assert!(
        package_version_fact(&history_facts(&history)).is_none(),
        "the upgrade is still in the history: {history}"
    );
    assert!(
        a.stored_changes()? >= signed_before,
        "signed changes were deleted"
    );
    let output = a.cli(&["diff", "node-b", "--at", &at, "--kind", "packages"])?;
    assert_eq!(
        output.status.code(),
        Some(1),
        "diff after retention: {:?}",
        output
    );
    assert!(String::from_utf8_lossy(&output.stdout).contains(VERSION_AFTER));

    // The same window compacts the signed changes. They lose their bytes, which the snapshot
    // contains, and keep their hash and signature.
    wait_for("node-a to compact old signed changes", TIMEOUT, || {
        Ok((a.compacted_changes()? > 0).then_some(()))
    })
    .with_context(|| format!("log of node-a:\n{}", a.log_tail(40)))?;
    assert!(a
        .log()
        .contains("compacted signed changes older than the retention window"));

    // A new node that can reach only A gets B's whole history from A's compacted store, each
    // change verified against B's original signature, and can diff back before the edits.
    let b_id = b.node_id()?;
    b.kill()?;
    let mut c = TestNode::new(&base, "node-c", &source)?;
    let a_address = a.quic_address()?;
    c.join_fleet_of(&a, &a_address)?;
    c.start(&[])?;
    let b_changes = a.stored_changes_by(&b_id)?;
    wait_for(
        "node-c to receive node-b's changes from node-a",
        TIMEOUT,
        || Ok((c.stored_changes_by(&b_id)? == b_changes).then_some(())),
    )
    .with_context(|| format!("log of node-c:\n{}", c.log_tail(40)))?;
    let output = c.cli(&["diff", "node-b", "--at", &at, "--kind", "packages"])?;
    assert_eq!(output.status.code(), Some(1), "diff on node-c: {output:?}");
    assert!(String::from_utf8_lossy(&output.stdout).contains(VERSION_AFTER));
    Ok(())
}
