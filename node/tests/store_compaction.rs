//! Compaction of old signed changes: rows older than the retention window lose their bytes,
//! and every reader (sync, rebuilds, a restart) gets them back from the document's snapshot,
//! byte for byte verifiable against the original signatures.

use std::path::Path;

use ed25519_dalek::SigningKey;
use fleetmesh_model::facts::Package;
use fleetmesh_model::{DocId, Facts, Identity, NodeId, SignedChange, TenantId};
use fleetmesh_node::store::{Store, StoreError};
use fleetmesh_node::sync::ChangeStore;

const T0: i64 = 1_700_000_000;
const DAY: i64 = 86_400;
const PACKAGES: usize = 700;
const UPGRADES: i64 = 20;

struct Node {
    key: SigningKey,
    doc: DocId,
    identity: Identity,
}

fn node() -> Node {
    let key = SigningKey::from_bytes(&[7; 32]);
    let id = NodeId(key.verifying_key().to_bytes());
    let tenant = TenantId::new("acme").expect("valid tenant name");
    Node {
        doc: DocId::node(tenant, id),
        identity: Identity {
            node_id: id.to_string(),
            tenant: "acme".to_string(),
            site: "branch-1".to_string(),
            hostname: "pos-01".to_string(),
            agent_version: "test".to_string(),
        },
        key,
    }
}

/// Facts with `PACKAGES` packages, where package 0 is at version `1.0-{release}`.
fn facts(release: i64) -> Facts {
    let mut facts = Facts::default();
    facts.system.hostname = "pos-01".to_string();
    for index in 0..PACKAGES {
        let version = if index == 0 {
            format!("1.0-{release}")
        } else {
            format!("2.{index}.0-1")
        };
        facts.packages.insert(
            format!("pkg{index:04}:amd64"),
            Package {
                name: format!("pkg{index:04}"),
                version,
                arch: Some("amd64".to_string()),
                manager: "dpkg".to_string(),
                ..Package::default()
            },
        );
    }
    facts
}

/// Records the first collection at `T0` and one upgrade a day after it.
fn record_history(store: &mut Store, node: &Node) -> Vec<SignedChange> {
    let mut changes = Vec::new();
    for day in 0..=UPGRADES {
        let change = store
            .record_local(
                &node.doc,
                &node.identity,
                &facts(day),
                T0 + day * DAY,
                &node.key,
            )
            .expect("record a collection")
            .expect("each collection changes a package");
        changes.push(change);
    }
    changes
}

fn stored_bytes(store: &Store) -> (i64, i64) {
    store
        .connection()
        .query_row(
            "SELECT COALESCE(SUM(length(bytes)), 0), COUNT(*) FILTER (WHERE length(bytes) = 0)
             FROM signed_changes",
            [],
            |row| Ok((row.get(0)?, row.get(1)?)),
        )
        .expect("sum the change bytes")
}

fn snapshot_len(store: &Store) -> i64 {
    store
        .connection()
        .query_row(
            "SELECT COALESCE(SUM(length(snapshot)), 0) FROM documents",
            [],
            |row| row.get(0),
        )
        .expect("sum the snapshots")
}

fn all_changes(store: &Store, node: &Node) -> Vec<SignedChange> {
    let author = NodeId(node.key.verifying_key().to_bytes());
    store
        .changes(&node.doc, &author, 1, u64::MAX)
        .expect("read the chain")
}

fn open(dir: &Path) -> Store {
    Store::open(dir).expect("open the store")
}

#[test]
fn compacted_changes_sync_and_rebuild() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = node();
    let mut store = open(dir.path());
    let original = record_history(&mut store, &node);
    let (bytes_before, empty_before) = stored_bytes(&store);
    let snapshot_before = snapshot_len(&store);
    assert_eq!(empty_before, 0);

    // The window keeps the last ten days: the first collection and upgrades 1..=10 are older.
    let cutoff = T0 + 10 * DAY + DAY / 2;
    let done = store.compact_changes(cutoff, 16).expect("compact");
    assert_eq!(done.changes, 11);
    assert_eq!(done.documents, 1);
    assert!(!done.more);
    let (bytes_after, empty_after) = stored_bytes(&store);
    assert_eq!(empty_after, 11);
    assert_eq!(
        u64::try_from(bytes_before - bytes_after).expect("fewer bytes"),
        done.bytes
    );
    let snapshot_after = snapshot_len(&store);
    println!(
        "change bytes {bytes_before} -> {bytes_after}, snapshot bytes {snapshot_before} -> \
         {snapshot_after}, {} changes compacted",
        done.changes
    );
    assert!(
        bytes_after + snapshot_after < bytes_before + snapshot_before,
        "compaction must shrink the stored bytes"
    );

    // A second run finds nothing left to compact.
    let again = store.compact_changes(cutoff, 16).expect("compact again");
    assert_eq!(again.changes, 0);
    assert_eq!(again.documents, 0);

    // Sync serves every change again, with the original hash and a valid signature.
    let served = all_changes(&store, &node);
    assert_eq!(served.len(), original.len());
    for (served, original) in served.iter().zip(&original) {
        assert_eq!(served.hash(), original.hash());
        assert_eq!(served.seq(), original.seq());
        served
            .verify()
            .expect("a re-encoded change verifies against its signature");
    }

    // A fresh replica built from the served changes has the same facts.
    let replica_dir = tempfile::tempdir().expect("temp dir");
    let mut replica = open(replica_dir.path());
    for change in &served {
        replica.insert(change).expect("a replica stores the change");
    }
    let (_, replica_facts) = replica.node_facts(&node.doc).expect("replica facts");
    assert_eq!(replica_facts.packages, facts(UPGRADES).packages);

    // After a restart the document loads from the snapshot and the chain goes on.
    drop(store);
    let mut store = open(dir.path());
    let (_, reopened) = store.node_facts(&node.doc).expect("facts after restart");
    assert_eq!(reopened.packages, facts(UPGRADES).packages);
    let next = store
        .record_local(
            &node.doc,
            &node.identity,
            &facts(UPGRADES + 1),
            T0 + (UPGRADES + 1) * DAY,
            &node.key,
        )
        .expect("record after compaction")
        .expect("a new version is a change");
    assert_eq!(next.seq(), original.len() as u64 + 1);
    assert_eq!(all_changes(&store, &node).len(), original.len() + 1);
}

#[test]
fn limit_spreads_compaction_over_steps() {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut store = open(dir.path());
    let mut nodes = Vec::new();
    for seed in 1..=3u8 {
        let key = SigningKey::from_bytes(&[seed; 32]);
        let id = NodeId(key.verifying_key().to_bytes());
        let mut node = node();
        node.doc = DocId::node(TenantId::new("acme").expect("valid tenant name"), id);
        node.identity.node_id = id.to_string();
        node.key = key;
        store
            .record_local(&node.doc, &node.identity, &facts(0), T0, &node.key)
            .expect("record")
            .expect("first change");
        nodes.push(node);
    }
    let first = store.compact_changes(T0 + 1, 2).expect("first step");
    assert_eq!(first.documents, 2);
    assert!(first.more);
    let second = store.compact_changes(T0 + 1, 2).expect("second step");
    assert_eq!(second.documents, 1);
    assert!(!second.more);
    for node in &nodes {
        assert_eq!(all_changes(&store, node).len(), 1);
    }
}

#[test]
fn compacted_row_past_snapshot_is_corrupt() {
    let dir = tempfile::tempdir().expect("temp dir");
    let node = node();
    {
        let mut store = open(dir.path());
        record_history(&mut store, &node);
        store.compact_changes(T0 + DAY, 16).expect("compact");
        // Damage: drop the bytes of the newest change, which no snapshot covers.
        store
            .connection()
            .execute(
                "UPDATE signed_changes SET bytes = x''
                 WHERE rowid = (SELECT MAX(rowid) FROM signed_changes)",
                [],
            )
            .expect("damage the store");
        store
            .connection()
            .execute("UPDATE documents SET snapshot_rowid = 1", [])
            .expect("move the snapshot back");
    }
    let mut store = open(dir.path());
    let err = store
        .node_facts(&node.doc)
        .expect_err("a compacted change the snapshot lacks is an error");
    assert!(matches!(err, StoreError::Corrupt { .. }), "{err}");
    assert!(err.to_string().contains("compacted"), "{err}");
}
