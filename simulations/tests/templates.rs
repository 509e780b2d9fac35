//! Patched template changes are real signed automerge changes of the node that signs them.

use ed25519_dalek::SigningKey;
use fleetmesh_model::{NodeDocument, NodeId, TenantId};
use fleetmesh_sim::templates::{sign_patched, ChangeKind, FactsSource, Templates};

#[test]
fn patched_chain_verifies_and_applies() {
    // A missing root makes the templates use the generated package list.
    let templates =
        Templates::build(std::path::Path::new("/nonexistent-root"), 1, 4).expect("templates build");
    assert!(matches!(templates.source, FactsSource::Generated(_)));
    let template = &templates.templates[0];
    assert_eq!(template.kind(2), Some(ChangeKind::Upgrade));

    let key = SigningKey::from_bytes(&[9u8; 32]);
    let node = NodeId(key.verifying_key().to_bytes());
    let tenant = TenantId::new("acme").expect("valid tenant");
    let mut changes = Vec::new();
    let mut previous = None;
    for seq in 1..=3 {
        let (bytes, hash) = template.patched(seq, &node.0, previous).expect("patch");
        let change =
            sign_patched(bytes, &tenant, &key).expect("automerge accepts the patched chunk");
        assert_eq!(change.hash(), hash);
        assert_eq!(change.seq(), seq);
        assert_eq!(change.author(), node);
        assert_eq!(
            change.header().deps,
            previous.into_iter().collect::<Vec<_>>()
        );
        change.verify().expect("signature and ownership verify");
        previous = Some(hash);
        changes.push(change);
    }

    let document = NodeDocument::from_changes(tenant, node, &changes).expect("the chain applies");
    let facts = document.facts(None).expect("facts read back");
    assert_eq!(facts.packages.len(), templates.packages);
    let upgraded = facts
        .packages
        .values()
        .filter(|package| package.version.ends_with("+deb12u2"))
        .count();
    assert_eq!(
        upgraded, 2,
        "two follow-up upgrades should each bump one package"
    );
}

#[test]
fn upgrade_change_is_small() {
    let templates =
        Templates::build(std::path::Path::new("/nonexistent-root"), 1, 3).expect("templates build");
    let key = SigningKey::from_bytes(&[3u8; 32]);
    let node = NodeId(key.verifying_key().to_bytes());
    let tenant = TenantId::new("acme").expect("valid tenant");
    let (genesis, hash) = templates.templates[0]
        .patched(1, &node.0, None)
        .expect("patch");
    let (upgrade, _) = templates.templates[0]
        .patched(2, &node.0, Some(hash))
        .expect("patch");
    let genesis = sign_patched(genesis, &tenant, &key).expect("sign");
    let upgrade = sign_patched(upgrade, &tenant, &key).expect("sign");
    assert!(
        genesis.bytes().len() > 5_000,
        "genesis is {} bytes",
        genesis.bytes().len()
    );
    assert!(
        upgrade.bytes().len() < 300,
        "upgrade is {} bytes",
        upgrade.bytes().len()
    );
}
