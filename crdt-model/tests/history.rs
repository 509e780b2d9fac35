//! History, diff and compliance results of real node documents.

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use fleetmesh_model::facts::{Package, TrackedFile};
use fleetmesh_model::policy::{CheckStatus, Severity};
use fleetmesh_model::{Action, ComplianceResult, Facts, Identity, NodeDocument, NodeId, TenantId};
use serde_json::json;

struct Node {
    key: SigningKey,
    doc: NodeDocument,
    identity: Identity,
}

fn node() -> Node {
    let key = SigningKey::from_bytes(&[7; 32]);
    let id = NodeId(key.verifying_key().to_bytes());
    let tenant = TenantId::new("acme").expect("valid tenant");
    Node {
        doc: NodeDocument::new(tenant, id),
        identity: Identity {
            node_id: id.to_string(),
            tenant: "acme".into(),
            site: "york".into(),
            hostname: "web1".into(),
            agent_version: "test".into(),
        },
        key,
    }
}

fn facts(openssl: &str, sshd: &str) -> Facts {
    let mut facts = Facts::default();
    facts.system.hostname = "web1".into();
    for (name, version) in [("openssl", openssl), ("curl", "7.88.1-10")] {
        facts.packages.insert(
            format!("{name}:amd64"),
            Package {
                name: name.into(),
                version: version.into(),
                arch: Some("amd64".into()),
                manager: "dpkg".into(),
                ..Package::default()
            },
        );
    }
    facts.tracked_files.insert(
        "/etc/ssh/sshd_config".into(),
        TrackedFile {
            exists: true,
            mode: Some("0644".into()),
            content: Some(sshd.into()),
            ..TrackedFile::default()
        },
    );
    facts
}

const SSHD_BEFORE: &str = "Port 22\nPermitRootLogin yes\nUsePAM yes\n";
const SSHD_AFTER: &str = "Port 22\nPermitRootLogin no\nUsePAM yes\n";

#[test]
fn history_lists_upgrade_and_edit() {
    let mut n = node();
    let first = facts("3.0.11-1", SSHD_BEFORE);
    n.doc
        .record_signed(&n.identity, &first, 1_000, &n.key)
        .expect("record")
        .expect("first change");
    n.doc
        .record_signed(&n.identity, &facts("3.0.13-1", SSHD_AFTER), 2_000, &n.key)
        .expect("record")
        .expect("second change");

    let history = n.doc.history().expect("history");
    assert_eq!(history.len(), 2);
    assert_eq!((history[0].seq, history[0].time), (1, 1_000));
    // The first change adds every item.
    assert!(history[0].facts.iter().all(|c| c.action == Action::Added));
    assert!(history[0]
        .facts
        .iter()
        .any(|c| c.path() == "packages/openssl:amd64"));

    let second = &history[1];
    assert_eq!((second.seq, second.time), (2, 2_000));
    let paths: Vec<String> = second.facts.iter().map(|c| c.path()).collect();
    assert_eq!(
        paths,
        [
            "packages/openssl:amd64/version",
            "tracked_files/etc/ssh/sshd_config/content"
        ]
    );
    assert_eq!(second.facts[0].old, Some(json!("3.0.11-1")));
    assert_eq!(second.facts[0].new, Some(json!("3.0.13-1")));
    let lines: Vec<String> = second.facts[1]
        .lines
        .iter()
        .map(|edit| format!("{}{}", edit.op, edit.text))
        .collect();
    assert_eq!(lines, ["-PermitRootLogin yes", "+PermitRootLogin no"]);
}

#[test]
fn state_at_a_time_and_diff_against_now() {
    let mut n = node();
    n.doc
        .record_signed(&n.identity, &facts("3.0.11-1", SSHD_BEFORE), 1_000, &n.key)
        .expect("record");
    n.doc
        .record_signed(&n.identity, &facts("3.0.13-1", SSHD_BEFORE), 2_000, &n.key)
        .expect("record");

    assert!(n.doc.heads_at_time(999).is_empty());
    let then = n.doc.heads_at_time(1_500);
    assert_eq!(then.len(), 1);
    let now = n.doc.heads();
    let changes = n.doc.fact_changes(&then, &now).expect("diff");
    assert_eq!(changes.len(), 1);
    assert_eq!(changes[0].path(), "packages/openssl:amd64/version");
    assert_eq!(n.doc.heads_at_time(2_000), now);
}

#[test]
fn compliance_results_survive_later_collections() {
    let mut n = node();
    n.doc
        .record_signed(&n.identity, &facts("3.0.11-1", SSHD_BEFORE), 1_000, &n.key)
        .expect("record");
    let mut results = BTreeMap::new();
    results.insert(
        ComplianceResult::key("ssh", "permit-root-login"),
        ComplianceResult {
            policy: "ssh".into(),
            check: "permit-root-login".into(),
            severity: Severity::High,
            status: CheckStatus::Fail,
            failing_count: 1,
            failing_rows: vec![json!({"path": "/etc/ssh/sshd_config"})],
            error: None,
        },
    );
    let change = n
        .doc
        .record_compliance(&results, 1_100, &n.key)
        .expect("record results")
        .expect("a change");
    change.verify().expect("signed");
    assert!(n
        .doc
        .record_compliance(&results, 1_200, &n.key)
        .expect("same results")
        .is_none());

    // A new collection must not delete the results.
    n.doc
        .record_signed(&n.identity, &facts("3.0.13-1", SSHD_BEFORE), 2_000, &n.key)
        .expect("record");
    assert_eq!(n.doc.compliance(None).expect("read"), results);

    // The history shows the result as its own fact kind.
    let history = n.doc.history().expect("history");
    let recorded = &history[1].facts;
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].kind, "compliance");
    assert_eq!(recorded[0].item.as_deref(), Some("ssh/permit-root-login"));
}
