//! Real signed changes for the sync tests: node documents written with ed25519 keys.

use std::sync::OnceLock;

use automerge::transaction::Transactable;
use automerge::{ActorId, AutoCommit};
use ed25519_dalek::SigningKey;
use fleetmesh_model::{DocId, Facts, Identity, NodeDocument, NodeId, SignedChange, TenantId};

/// A node that writes its own document, one change per call of [`Writer::next_change`].
pub struct Writer {
    pub node: NodeId,
    key: SigningKey,
    document: NodeDocument,
    identity: Identity,
    written: u64,
}

impl Writer {
    /// Creates a writer whose key is derived from `seed`.
    pub fn new(tenant: &str, seed: u64) -> Writer {
        let key = signing_key(seed);
        let node = NodeId(key.verifying_key().to_bytes());
        let tenant = TenantId::new(tenant).expect("test tenant names are valid");
        let identity = Identity {
            node_id: node.to_string(),
            tenant: tenant.as_str().to_string(),
            site: "hq".to_string(),
            hostname: format!("host-{seed}"),
            agent_version: "test".to_string(),
        };
        Writer {
            node,
            key,
            document: NodeDocument::new(tenant, node),
            identity,
            written: 0,
        }
    }

    /// Records a new collection that differs from the last one and returns its signed change.
    pub fn next_change(&mut self) -> SignedChange {
        self.written += 1;
        let mut facts = Facts::default();
        facts.system.hostname = self.identity.hostname.clone();
        facts.system.boot_time = Some(self.written as i64);
        self.document
            .record_signed(&self.identity, &facts, 1_700_000_000, &self.key)
            .expect("recording test facts succeeds")
            .expect("changed facts produce a change")
    }
}

fn signing_key(seed: u64) -> SigningKey {
    let mut secret = [0u8; 32];
    secret[..8].copy_from_slice(&seed.to_le_bytes());
    secret[8] = 0x5a;
    SigningKey::from_bytes(&secret)
}

/// Returns the first change of the node document of the node with key `seed`, built with one
/// automerge operation: much cheaper than [`Writer`] when a test needs many chains.
pub fn first_change(tenant: &str, seed: u64) -> SignedChange {
    let key = signing_key(seed);
    let node = NodeId(key.verifying_key().to_bytes());
    let tenant = TenantId::new(tenant).expect("test tenant names are valid");
    let mut document = AutoCommit::new().with_actor(ActorId::from(node.0.to_vec()));
    document
        .put(automerge::ROOT, "seed", seed)
        .expect("a put on an empty document succeeds");
    document.commit();
    let mut change = document
        .get_last_local_change()
        .expect("the commit made a change");
    SignedChange::sign(DocId::node(tenant, node), &mut change, &key).expect("signing succeeds")
}

/// Returns two signed changes of one policy document by two operators: the second operator's
/// first change depends on the first operator's change, so the chains differ but are linked.
pub fn linked_policy_changes() -> (SignedChange, SignedChange) {
    let tenant = TenantId::new("acme").expect("test tenant names are valid");
    let doc = DocId::tenant_doc(fleetmesh_model::DocKind::Policy, tenant);
    let first_key = signing_key(501);
    let second_key = signing_key(502);

    let mut first =
        AutoCommit::new().with_actor(ActorId::from(first_key.verifying_key().to_bytes().to_vec()));
    first
        .put(automerge::ROOT, "baseline", "cis-1")
        .expect("a put on an empty document succeeds");
    first.commit();
    let mut first_change = first
        .get_last_local_change()
        .expect("the commit made a change");

    let mut second = first.fork().with_actor(ActorId::from(
        second_key.verifying_key().to_bytes().to_vec(),
    ));
    second
        .put(automerge::ROOT, "baseline", "cis-2")
        .expect("a put on a forked document succeeds");
    second.commit();
    let mut second_change = second
        .get_last_local_change()
        .expect("the commit made a change");

    let sign = |change: &mut fleetmesh_model::Change, key: &SigningKey| {
        SignedChange::sign(doc.clone(), change, key).expect("signing succeeds")
    };
    (
        sign(&mut first_change, &first_key),
        sign(&mut second_change, &second_key),
    )
}

/// Returns a few signed changes of two nodes, built once per test process.
pub fn sample_changes() -> &'static [SignedChange] {
    static CHANGES: OnceLock<Vec<SignedChange>> = OnceLock::new();
    CHANGES.get_or_init(|| {
        let mut changes = Vec::new();
        for (tenant, seed) in [("acme", 1), ("globex", 2)] {
            let mut writer = Writer::new(tenant, seed);
            for _ in 0..3 {
                changes.push(writer.next_change());
            }
        }
        changes
    })
}
