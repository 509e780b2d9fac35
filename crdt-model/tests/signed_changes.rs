//! Node documents and signed changes: minimal diffs, signatures and the rejection cases.

use std::collections::BTreeMap;

use ed25519_dalek::SigningKey;
use fleetmesh_model::facts::Package;
use fleetmesh_model::{
    DocId, DocKind, Facts, Identity, NodeDocument, NodeId, SignedChange, TenantId, VerifyError,
    WireChange,
};

fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

fn node_of(key: &SigningKey) -> NodeId {
    NodeId(key.verifying_key().to_bytes())
}

fn tenant() -> TenantId {
    TenantId::new("acme").expect("valid tenant name")
}

fn identity(node: NodeId) -> Identity {
    Identity {
        node_id: node.to_string(),
        tenant: "acme".to_string(),
        site: "leeds".to_string(),
        hostname: "web01".to_string(),
        agent_version: "0.1.0".to_string(),
    }
}

fn package(name: &str, version: &str) -> Package {
    Package {
        name: name.to_string(),
        version: version.to_string(),
        arch: Some("amd64".to_string()),
        manager: "dpkg".to_string(),
        ..Package::default()
    }
}

fn facts_with(packages: &[(&str, &str)]) -> Facts {
    let mut facts = Facts::default();
    facts.system.hostname = "web01".to_string();
    facts.os.id = Some("debian".to_string());
    facts.packages = packages
        .iter()
        .map(|(name, version)| {
            let package = package(name, version);
            (package.key(), package)
        })
        .collect::<BTreeMap<_, _>>();
    facts
}

fn many_packages(count: usize) -> Vec<(String, String)> {
    (0..count)
        .map(|i| (format!("package-{i:04}"), format!("1.{i}.0-1")))
        .collect()
}

fn facts_from(list: &[(String, String)]) -> Facts {
    let pairs: Vec<(&str, &str)> = list.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    facts_with(&pairs)
}

/// Returns a document with one recorded collection and its signed change.
fn recorded(seed: u8) -> (SigningKey, NodeDocument, SignedChange) {
    let key = key(seed);
    let node = node_of(&key);
    let mut doc = NodeDocument::new(tenant(), node);
    let change = doc
        .record_signed(
            &identity(node),
            &facts_with(&[("openssl", "3.0.11-1")]),
            1_700_000_000,
            &key,
        )
        .expect("recording the collection succeeds")
        .expect("first collection writes a change");
    (key, doc, change)
}

#[test]
fn record_same_facts_twice_writes_nothing() {
    let key = key(1);
    let node = node_of(&key);
    let mut doc = NodeDocument::new(tenant(), node);
    let facts = facts_from(&many_packages(300));
    assert!(doc.record(&identity(node), &facts, 1).unwrap().is_some());
    assert!(doc.record(&identity(node), &facts, 2).unwrap().is_none());
    assert!(doc
        .record(&identity(node), &facts.clone(), 3)
        .unwrap()
        .is_none());
}

#[test]
fn record_package_upgrade_is_small_change() {
    let key = key(1);
    let node = node_of(&key);
    let mut doc = NodeDocument::new(tenant(), node);
    let mut list = many_packages(700);
    let first = doc
        .record(&identity(node), &facts_from(&list), 1)
        .unwrap()
        .unwrap();
    list[350].1 = "1.350.1-1".to_string();
    let mut upgrade = doc
        .record(&identity(node), &facts_from(&list), 2)
        .unwrap()
        .unwrap();
    assert_eq!(upgrade.len(), 1, "one changed field is one operation");
    assert!(
        upgrade.bytes().len() < 200,
        "upgrade change is {} bytes",
        upgrade.bytes().len()
    );
    assert!(first.len() > 700);
}

#[test]
fn record_removal_deletes_only_that_key() {
    let key = key(1);
    let node = node_of(&key);
    let mut doc = NodeDocument::new(tenant(), node);
    doc.record(&identity(node), &facts_with(&[("a", "1"), ("b", "2")]), 1)
        .unwrap();
    let change = doc
        .record(&identity(node), &facts_with(&[("a", "1")]), 2)
        .unwrap()
        .unwrap();
    assert_eq!(change.len(), 1);
    let facts = doc.facts(None).unwrap();
    assert_eq!(facts.packages.len(), 1);
    assert!(facts.packages.contains_key("a:amd64"));
}

#[test]
fn record_rejects_foreign_identity() {
    let mut doc = NodeDocument::new(tenant(), node_of(&key(1)));
    let err = doc
        .record(&identity(node_of(&key(2))), &Facts::default(), 1)
        .unwrap_err();
    assert!(err.to_string().contains("does not match"), "{err}");
}

#[test]
fn facts_read_back_equal() {
    let key = key(1);
    let node = node_of(&key);
    let mut doc = NodeDocument::new(tenant(), node);
    let mut facts = facts_from(&many_packages(20));
    facts.dns.servers = vec!["192.0.2.53".to_string(), "192.0.2.54".to_string()];
    facts.hardware.memory_total_kib = Some(16_000_000);
    facts.system.boot_time = Some(-5);
    doc.record(&identity(node), &facts, 1).unwrap();
    assert_eq!(doc.facts(None).unwrap(), facts);
    assert_eq!(doc.identity(None).unwrap(), identity(node));
}

#[test]
fn replica_rebuilt_from_changes_matches() {
    let key = key(1);
    let node = node_of(&key);
    let mut doc = NodeDocument::new(tenant(), node);
    let mut changes = Vec::new();
    for version in ["1.0", "1.1", "1.2"] {
        let change = doc
            .record_signed(&identity(node), &facts_with(&[("curl", version)]), 1, &key)
            .unwrap()
            .unwrap();
        changes.push(change);
    }
    let replica = NodeDocument::from_changes(tenant(), node, &changes).unwrap();
    assert_eq!(replica.facts(None).unwrap(), doc.facts(None).unwrap());
    assert_eq!(
        changes.iter().map(SignedChange::seq).collect::<Vec<_>>(),
        [1, 2, 3]
    );
}

#[test]
fn verify_accepts_valid_change() {
    let (_, _, change) = recorded(1);
    change.verify().unwrap();
}

#[test]
fn verify_rejects_altered_bytes() {
    let (_, _, change) = recorded(1);
    let mut wire = change.to_wire();
    let middle = wire.bytes.len() / 2;
    wire.bytes[middle] ^= 0x01;
    match wire.into_signed() {
        Err(VerifyError::Malformed { .. }) => {}
        Ok(altered) => assert!(matches!(
            altered.verify(),
            Err(VerifyError::BadSignature { .. })
        )),
        Err(other) => panic!("unexpected error {other}"),
    }
}

#[test]
fn verify_rejects_wrong_key() {
    let (_, mut doc, change) = recorded(1);
    // Sign the next change of the same document with a key that is not the author's.
    let node = node_of(&key(1));
    let mut next = doc
        .record(&identity(node), &facts_with(&[("openssl", "3.0.13-1")]), 2)
        .unwrap()
        .unwrap();
    let forged = SignedChange::sign(change.doc().clone(), &mut next, &key(9)).unwrap();
    assert!(matches!(
        forged.verify(),
        Err(VerifyError::BadSignature { .. })
    ));
}

#[test]
fn verify_rejects_swapped_document_id() {
    let (_, _, change) = recorded(1);
    // Replayed as a change to the tenant's policy document.
    let swapped = change.with_doc(DocId::tenant_doc(DocKind::Policy, tenant()));
    assert!(matches!(
        swapped.verify(),
        Err(VerifyError::BadSignature { .. })
    ));
    // Replayed into the same node's document in another tenant.
    let other_tenant = change.with_doc(DocId::node(
        TenantId::new("globex").unwrap(),
        change.author(),
    ));
    assert!(matches!(
        other_tenant.verify(),
        Err(VerifyError::BadSignature { .. })
    ));
}

#[test]
fn verify_rejects_missing_signature() {
    let (_, _, change) = recorded(1);
    let unsigned = change.with_signature(None);
    assert!(matches!(
        unsigned.verify(),
        Err(VerifyError::MissingSignature { .. })
    ));
}

#[test]
fn verify_rejects_write_into_other_nodes_document() {
    let (_, _, change) = recorded(1);
    let victim = node_of(&key(2));
    // A correctly signed change of node 1, presented as node 2's document.
    let intrusion = change.with_doc(DocId::node(tenant(), victim));
    assert!(matches!(
        intrusion.verify(),
        Err(VerifyError::NotOwner { .. })
    ));
}

#[test]
fn wire_round_trip_keeps_change() {
    let (_, _, change) = recorded(1);
    let wire = change.to_wire();
    let decoded = wire.clone().into_signed().unwrap();
    assert_eq!(decoded, change);
    decoded.verify().unwrap();
    let short_signature = WireChange {
        signature: Some(vec![0; 10]),
        ..wire
    };
    assert!(matches!(
        short_signature.into_signed(),
        Err(VerifyError::Malformed { .. })
    ));
}

#[test]
fn wire_len_matches_postcard_encoding() {
    let (_, _, change) = recorded(1);
    let encoded = postcard::to_stdvec(&change.to_wire()).unwrap();
    assert_eq!(change.wire_len(), encoded.len());
    let unsigned = change.with_signature(None);
    let encoded = postcard::to_stdvec(&unsigned.to_wire()).unwrap();
    assert_eq!(unsigned.wire_len(), encoded.len());
}
