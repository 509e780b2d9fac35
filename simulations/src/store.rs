//! The simulator's change store: shared change bytes, per-node chain heads.
//!
//! Every simulated node writes one node document, so every chain is `(node document, node)` and
//! is identified here by the author's index. The [`Fleet`] holds what all nodes share: each
//! chain's identity and key, the hashes and signed changes its author wrote (created once, then
//! shared by reference count), the shared base state and the verification cache.
//!
//! Each node's durable state is a [`Disk`]: whether it starts from the shared base (every chain
//! of its tenant at the base sequence number), plus an overlay of the chains where it differs
//! from the base, plus the per-prefix differences of the fingerprint sums. A summary is the
//! base aggregate plus the node's difference, so a node that agrees with the base costs a few
//! bytes, and 10,000 nodes fit in memory. [`SimStore`] is the engine's handle to a disk; a crash
//! drops the engine and its handle, and the disk survives, as a database file does.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;
use std::sync::Arc;

use anyhow::Result;
use ed25519_dalek::SigningKey;
use fleetmesh_model::{ChangeHash, DocId, NodeId, SignedChange, TenantId, VerifyError};
use fleetmesh_node::sync::recon::{chain_key, item_fingerprint, AGGREGATE_DEPTH, MAX_DEPTH};
use fleetmesh_node::sync::{ChainHead, ChainIndex, ChangeStore, Fingerprint, Prefix, Verify};
use rustc_hash::FxHashMap;

use crate::templates::{sign_patched, Template};

/// Index of a chain, which is also the index of the node that writes it.
pub type ChainIx = u32;

/// A map keyed by node id. Node ids are ed25519 public keys, so a fast non-keyed hash spreads
/// them well. No simulator code iterates these maps, so the hash never reaches the output.
pub type NodeIdMap<V> = FxHashMap<NodeId, V>;

/// Verification cache key: change hash, signature and the document the change claims.
type VerifyKey = (ChangeHash, Option<[u8; 64]>, DocId);

/// One node's document chain.
pub struct Chain {
    /// The author.
    pub node: NodeId,
    /// The document.
    pub doc: DocId,
    /// Index of the author's tenant in [`Fleet::tenants`].
    pub tenant: u16,
    /// The chain's key hash in the reconciliation trie.
    pub key: u32,
    key_pair: SigningKey,
    template: Arc<Template>,
    /// Sequence number that every node with the base stores (0: not in the base).
    pub base_seq: u64,
    base_fingerprint: Fingerprint,
    /// Last sequence number the author wrote.
    pub written: u64,
    /// Hashes of changes `1..=hashes.len()`, computed on demand.
    hashes: Vec<ChangeHash>,
    /// Signed changes, created on demand and then shared.
    signed: Vec<Option<SignedChange>>,
}

/// The aggregate of one prefix.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Bucket {
    fingerprint: Fingerprint,
    count: i64,
}

impl Bucket {
    fn add(&mut self, fingerprint: Fingerprint, count: i64) {
        self.fingerprint = self.fingerprint.wrapping_add(fingerprint);
        self.count += count;
    }
}

/// The shared base of one tenant: its chains at their base sequence numbers.
#[derive(Default)]
struct TenantBase {
    /// `(key, chain)` of every base chain, sorted.
    items: Vec<(u32, ChainIx)>,
    /// Aggregates per depth `0..=AGGREGATE_DEPTH`, keyed by prefix bits.
    buckets: Vec<FxHashMap<u32, Bucket>>,
}

/// What every node shares.
pub struct Fleet {
    /// Tenant names by index.
    pub tenants: Vec<TenantId>,
    /// Every chain, by author index.
    pub chains: Vec<Chain>,
    by_node: NodeIdMap<ChainIx>,
    by_hash: FxHashMap<ChangeHash, (ChainIx, u64)>,
    base: Vec<TenantBase>,
    /// Verification results of this run by change hash, signature and document.
    verified: FxHashMap<VerifyKey, bool>,
    /// Distinct changes verified with ed25519.
    pub verifications: u64,
    /// Distinct changes signed (materialized).
    pub signed_changes: u64,
}

fn signing_key(index: u64) -> SigningKey {
    use sha2::{Digest, Sha256};
    let digest: [u8; 32] = Sha256::new()
        .chain_update(b"fleetmesh-sim node key")
        .chain_update(index.to_le_bytes())
        .finalize()
        .into();
    SigningKey::from_bytes(&digest)
}

impl Fleet {
    /// Creates a fleet with the given tenants and no chains.
    pub fn new(tenants: Vec<TenantId>) -> Fleet {
        let base = tenants
            .iter()
            .map(|_| TenantBase {
                items: Vec::new(),
                buckets: vec![FxHashMap::default(); usize::from(AGGREGATE_DEPTH) + 1],
            })
            .collect();
        Fleet {
            tenants,
            chains: Vec::new(),
            by_node: NodeIdMap::default(),
            by_hash: FxHashMap::default(),
            base,
            verified: FxHashMap::default(),
            verifications: 0,
            signed_changes: 0,
        }
    }

    /// Adds the chain of node `index` (keys derive from the index alone), already written up
    /// to `written`, and in the base at `base_seq` (0 for none, at most `written`).
    pub fn add_chain(
        &mut self,
        tenant: u16,
        template: Arc<Template>,
        written: u64,
        base_seq: u64,
    ) -> ChainIx {
        let index = self.chains.len() as ChainIx;
        let key_pair = signing_key(u64::from(index));
        let node = NodeId(key_pair.verifying_key().to_bytes());
        let doc = DocId::node(self.tenants[usize::from(tenant)].clone(), node);
        let key = chain_key(&doc, &node);
        let base_fingerprint = if base_seq > 0 {
            item_fingerprint(&doc, &node, base_seq)
        } else {
            0
        };
        self.by_node.insert(node, index);
        self.chains.push(Chain {
            node,
            doc,
            tenant,
            key,
            key_pair,
            template,
            base_seq,
            base_fingerprint,
            written,
            hashes: Vec::new(),
            signed: Vec::new(),
        });
        if base_seq > 0 {
            self.base_insert(index, base_fingerprint, 1);
        }
        index
    }

    fn base_insert(&mut self, chain: ChainIx, fingerprint: Fingerprint, count: i64) {
        let (tenant, key) = {
            let chain = &self.chains[chain as usize];
            (usize::from(chain.tenant), chain.key)
        };
        let base = &mut self.base[tenant];
        if count > 0 {
            let at = base.items.partition_point(|item| *item < (key, chain));
            base.items.insert(at, (key, chain));
        }
        for depth in 0..=AGGREGATE_DEPTH {
            base.buckets[usize::from(depth)]
                .entry(Prefix::of(key, depth).bits)
                .or_default()
                .add(fingerprint, count);
        }
    }

    /// Moves chain `chain` of the base to `seq`. The caller moves every base-holding disk's
    /// overlay the other way, so that no node's state changes.
    pub fn rebase(&mut self, chain: ChainIx, seq: u64) -> (Fingerprint, i64) {
        let (old_fingerprint, was_in_base, fingerprint) = {
            let chain = &self.chains[chain as usize];
            let fingerprint = item_fingerprint(&chain.doc, &chain.node, seq);
            (chain.base_fingerprint, chain.base_seq > 0, fingerprint)
        };
        let delta = fingerprint.wrapping_sub(old_fingerprint);
        let count = i64::from(!was_in_base);
        if was_in_base {
            let (tenant, key) = {
                let chain = &self.chains[chain as usize];
                (usize::from(chain.tenant), chain.key)
            };
            for depth in 0..=AGGREGATE_DEPTH {
                self.base[tenant].buckets[usize::from(depth)]
                    .entry(Prefix::of(key, depth).bits)
                    .or_default()
                    .add(delta, 0);
            }
        } else {
            self.base_insert(chain, delta, 1);
        }
        let entry = &mut self.chains[chain as usize];
        entry.base_seq = seq;
        entry.base_fingerprint = fingerprint;
        (delta, count)
    }

    /// Returns the index of the chain written by `node` in `doc`, if it is a simulated chain.
    pub fn chain_of(&self, doc: &DocId, author: &NodeId) -> Option<ChainIx> {
        let index = *self.by_node.get(author)?;
        (self.chains[index as usize].doc == *doc).then_some(index)
    }

    /// Returns the hash of change `seq` of `chain`, computing the chain's hashes up to it.
    pub fn hash(&mut self, chain: ChainIx, seq: u64) -> Result<ChangeHash> {
        let entry = &mut self.chains[chain as usize];
        while (entry.hashes.len() as u64) < seq {
            let next = entry.hashes.len() as u64 + 1;
            let previous = entry.hashes.last().copied();
            let (_, hash) = entry.template.patched(next, &entry.node.0, previous)?;
            entry.hashes.push(hash);
            self.by_hash.insert(hash, (chain, next));
        }
        Ok(entry.hashes[seq as usize - 1])
    }

    /// Returns the signed change `seq` of `chain`, signing it on first use.
    pub fn signed(&mut self, chain: ChainIx, seq: u64) -> Result<SignedChange> {
        if seq > 1 {
            self.hash(chain, seq - 1)?;
        }
        let tenant = self.tenants[usize::from(self.chains[chain as usize].tenant)].clone();
        let entry = &mut self.chains[chain as usize];
        let index = seq as usize - 1;
        if let Some(Some(change)) = entry.signed.get(index) {
            return Ok(change.clone());
        }
        let previous = index.checked_sub(1).map(|at| entry.hashes[at]);
        let change = entry.template.signed_change(&entry.doc, seq, || {
            let (bytes, hash) = entry.template.patched(seq, &entry.node.0, previous)?;
            let change = sign_patched(bytes, &tenant, &entry.key_pair)?;
            anyhow::ensure!(
                change.hash() == hash && change.seq() == seq,
                "patched change {seq} of chain {chain} parsed to a different hash or sequence number"
            );
            Ok(change)
        })?;
        let hash = change.hash();
        if entry.hashes.len() < seq as usize {
            entry.hashes.push(hash);
            self.by_hash.insert(hash, (chain, seq));
        }
        if entry.signed.len() < seq as usize {
            entry.signed.resize(seq as usize, None);
        }
        entry.signed[index] = Some(change.clone());
        self.signed_changes += 1;
        Ok(change)
    }

    /// Writes the next change of `chain` and returns it.
    pub fn write_next(&mut self, chain: ChainIx) -> Result<SignedChange> {
        let seq = self.chains[chain as usize].written + 1;
        let change = self.signed(chain, seq)?;
        self.chains[chain as usize].written = seq;
        Ok(change)
    }

    /// Returns where a change hash sits: chain and sequence number.
    pub fn locate(&self, hash: &ChangeHash) -> Option<(ChainIx, u64)> {
        self.by_hash.get(hash).copied()
    }

    fn base_summary(&self, tenant: u16, prefix: Prefix) -> Bucket {
        self.base[usize::from(tenant)].buckets[usize::from(prefix.depth)]
            .get(&prefix.bits)
            .copied()
            .unwrap_or_default()
    }

    fn base_range(&self, tenant: u16, prefix: Prefix) -> &[(u32, ChainIx)] {
        let (low, high) = key_range(prefix);
        let items = &self.base[usize::from(tenant)].items;
        let start = items.partition_point(|(key, _)| *key < low);
        let end = items.partition_point(|(key, _)| *key <= high);
        &items[start..end]
    }

    fn tenant_index(&self, tenant: &TenantId) -> Option<u16> {
        self.tenants
            .iter()
            .position(|name| name == tenant)
            .map(|index| index as u16)
    }
}

/// Returns the inclusive range of key hashes under `prefix`.
fn key_range(prefix: Prefix) -> (u32, u32) {
    if prefix.depth == 0 {
        return (0, u32::MAX);
    }
    let shift = 32 - 4 * u32::from(prefix.depth);
    let low = prefix.bits << shift;
    (low, low | (u32::MAX >> (4 * u32::from(prefix.depth))))
}

/// A node's durable state: what it acknowledged storing.
pub struct Disk {
    /// The node's tenant.
    pub tenant: u16,
    /// Whether the node starts from its tenant's shared base.
    pub has_base: bool,
    /// Chains where the node differs from the base: `(key, chain)` to sequence number and item
    /// fingerprint.
    overlay: BTreeMap<(u32, ChainIx), (u64, Fingerprint)>,
    /// Per `(tenant, depth, bits)`: the node's aggregate minus the base aggregate.
    delta: FxHashMap<(u16, u8, u32), Bucket>,
    /// Changes stored since the disk was created.
    pub inserts: u64,
    /// Safety violations seen while storing, for the invariant report.
    pub violations: Vec<String>,
}

impl Disk {
    /// Creates a disk that starts from its tenant's base (`has_base`) or empty.
    pub fn new(tenant: u16, has_base: bool) -> Disk {
        Disk {
            tenant,
            has_base,
            overlay: BTreeMap::new(),
            delta: FxHashMap::default(),
            inserts: 0,
            violations: Vec::new(),
        }
    }

    /// Returns the sequence number held of `chain`.
    pub fn seq_of(&self, fleet: &Fleet, chain: ChainIx) -> u64 {
        let entry = &fleet.chains[chain as usize];
        match self.overlay.get(&(entry.key, chain)) {
            Some((seq, _)) => *seq,
            None if self.has_base && entry.tenant == self.tenant => entry.base_seq,
            None => 0,
        }
    }

    fn base_item(&self, fleet: &Fleet, chain: ChainIx) -> (u64, Fingerprint) {
        let entry = &fleet.chains[chain as usize];
        if self.has_base && entry.tenant == self.tenant && entry.base_seq > 0 {
            (entry.base_seq, entry.base_fingerprint)
        } else {
            (0, 0)
        }
    }

    /// Records that `chain` is held up to `seq`.
    pub fn set(&mut self, fleet: &Fleet, chain: ChainIx, seq: u64) {
        let entry = &fleet.chains[chain as usize];
        let (base_seq, base_fingerprint) = self.base_item(fleet, chain);
        let old = match self.overlay.get(&(entry.key, chain)) {
            Some(item) => *item,
            None => (base_seq, base_fingerprint),
        };
        let new = (seq, item_fingerprint(&entry.doc, &entry.node, seq));
        self.move_delta(entry.tenant, entry.key, old, new);
        if (seq, new.1) == (base_seq, base_fingerprint) {
            self.overlay.remove(&(entry.key, chain));
        } else {
            self.overlay.insert((entry.key, chain), new);
        }
    }

    fn move_delta(
        &mut self,
        tenant: u16,
        key: u32,
        old: (u64, Fingerprint),
        new: (u64, Fingerprint),
    ) {
        let fingerprint = new.1.wrapping_sub(old.1);
        let count = i64::from(new.0 > 0) - i64::from(old.0 > 0);
        for depth in 0..=AGGREGATE_DEPTH {
            let slot = (tenant, depth, Prefix::of(key, depth).bits);
            let bucket = self.delta.entry(slot).or_default();
            bucket.add(fingerprint, count);
            if *bucket == Bucket::default() {
                self.delta.remove(&slot);
            }
        }
    }

    /// Follows a move of the base of `chain` (see [`Fleet::rebase`]): the disk's state stays
    /// the same. Call it after the fleet moved.
    pub fn follow_rebase(&mut self, fleet: &Fleet, chain: ChainIx, delta: (Fingerprint, i64)) {
        let entry = &fleet.chains[chain as usize];
        if !self.has_base || entry.tenant != self.tenant {
            return;
        }
        for depth in 0..=AGGREGATE_DEPTH {
            let slot = (entry.tenant, depth, Prefix::of(entry.key, depth).bits);
            let bucket = self.delta.entry(slot).or_default();
            bucket.add(delta.0.wrapping_neg(), -delta.1);
            if *bucket == Bucket::default() {
                self.delta.remove(&slot);
            }
        }
        if let Some((seq, _)) = self.overlay.get(&(entry.key, chain)) {
            if *seq == entry.base_seq {
                self.overlay.remove(&(entry.key, chain));
            }
        } else {
            // The node held the old base: keep that as an explicit entry. Callers rebase only
            // chains that every base-holding node holds at the new sequence number, so this
            // branch runs only for nodes that were not checked (none today).
            self.violations.push(format!(
                "rebase of chain {chain} moved a node that did not hold it"
            ));
        }
    }

    /// Returns the number of overlay entries (for memory figures).
    pub fn overlay_len(&self) -> usize {
        self.overlay.len()
    }

    /// Returns the tenants of every chain held outside the base, for the isolation check.
    pub fn overlay_tenants(&self, fleet: &Fleet) -> Vec<u16> {
        let mut tenants: Vec<u16> = self
            .overlay
            .keys()
            .map(|(_, chain)| fleet.chains[*chain as usize].tenant)
            .collect();
        tenants.sort_unstable();
        tenants.dedup();
        tenants
    }

    /// Calls `visit(chain, seq, fingerprint)` for every held item of `tenant` under `prefix`,
    /// in key order.
    fn for_each_item(
        &self,
        fleet: &Fleet,
        tenant: u16,
        prefix: Prefix,
        mut visit: impl FnMut(ChainIx, u64, Fingerprint),
    ) {
        let (low, high) = key_range(prefix);
        let base: &[(u32, ChainIx)] = if self.has_base && tenant == self.tenant {
            fleet.base_range(tenant, prefix)
        } else {
            &[]
        };
        let mut overlay = self
            .overlay
            .range((low, 0)..=(high, ChainIx::MAX))
            .filter(|((_, chain), _)| fleet.chains[*chain as usize].tenant == tenant)
            .peekable();
        let mut base = base.iter().peekable();

        loop {
            let next_overlay = overlay.peek().map(|(key, _)| **key);
            let next_base = base.peek().map(|item| **item);
            match (next_base, next_overlay) {
                (None, None) => break,
                (Some(b), Some(o)) if b == o => {
                    base.next();
                    let (_, (seq, fingerprint)) = overlay.next().expect("peeked");
                    if *seq > 0 {
                        visit(o.1, *seq, *fingerprint);
                    }
                }
                (Some(b), o) if o.is_none_or(|o| b < o) => {
                    base.next();
                    let chain = &fleet.chains[b.1 as usize];
                    visit(b.1, chain.base_seq, chain.base_fingerprint);
                }
                _ => {
                    let ((_, chain), (seq, fingerprint)) = overlay.next().expect("peeked");
                    if *seq > 0 {
                        visit(*chain, *seq, *fingerprint);
                    }
                }
            }
        }
    }

    /// Returns the fingerprint and count of `tenant` under `prefix`.
    pub fn summary(&self, fleet: &Fleet, tenant: u16, prefix: Prefix) -> (Fingerprint, u64) {
        if !prefix.is_valid() {
            return (0, 0);
        }
        if prefix.depth <= AGGREGATE_DEPTH {
            let mut total = if self.has_base && tenant == self.tenant {
                fleet.base_summary(tenant, prefix)
            } else {
                Bucket::default()
            };
            if let Some(delta) = self.delta.get(&(tenant, prefix.depth, prefix.bits)) {
                total.add(delta.fingerprint, delta.count);
            }
            return (total.fingerprint, total.count.max(0) as u64);
        }
        let mut fingerprint: Fingerprint = 0;
        let mut count = 0;
        self.for_each_item(fleet, tenant, prefix, |_, _, item| {
            fingerprint = fingerprint.wrapping_add(item);
            count += 1;
        });
        (fingerprint, count)
    }
}

/// The engine's handle to a node's [`Disk`].
pub struct SimStore {
    fleet: Rc<RefCell<Fleet>>,
    disk: Rc<RefCell<Disk>>,
    /// The node itself, whose own changes need no verification.
    own: ChainIx,
}

impl SimStore {
    /// Creates a handle to `disk` for node `own`.
    pub fn new(fleet: Rc<RefCell<Fleet>>, disk: Rc<RefCell<Disk>>, own: ChainIx) -> SimStore {
        SimStore { fleet, disk, own }
    }
}

/// Errors of [`SimStore::insert`]: the engine broke the store contract.
#[derive(Debug)]
pub struct StoreError(String);

impl std::fmt::Display for StoreError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for StoreError {}

impl ChainIndex for SimStore {
    fn seq(&self, doc: &DocId, author: &NodeId) -> u64 {
        let fleet = self.fleet.borrow();
        match fleet.chain_of(doc, author) {
            Some(chain) => self.disk.borrow().seq_of(&fleet, chain),
            None => 0,
        }
    }

    fn summary(&self, tenant: &TenantId, prefix: Prefix) -> (Fingerprint, u64) {
        let fleet = self.fleet.borrow();
        match fleet.tenant_index(tenant) {
            Some(tenant) => self.disk.borrow().summary(&fleet, tenant, prefix),
            None => (0, 0),
        }
    }

    fn heads_in(&self, tenant: &TenantId, prefix: Prefix) -> Vec<ChainHead> {
        let fleet = self.fleet.borrow();
        let Some(tenant_index) = fleet.tenant_index(tenant) else {
            return Vec::new();
        };
        if !prefix.is_valid() || prefix.depth > MAX_DEPTH {
            return Vec::new();
        }
        let mut heads = Vec::new();
        self.disk
            .borrow()
            .for_each_item(&fleet, tenant_index, prefix, |chain, seq, _| {
                let entry = &fleet.chains[chain as usize];
                heads.push(ChainHead {
                    doc: entry.doc.clone(),
                    author: entry.node,
                    seq,
                });
            });
        heads
    }

    fn tenants(&self) -> Vec<TenantId> {
        let fleet = self.fleet.borrow();
        let disk = self.disk.borrow();
        let mut held = disk.overlay_tenants(&fleet);
        if disk.has_base && !fleet.base[usize::from(disk.tenant)].items.is_empty() {
            held.push(disk.tenant);
        }
        held.sort_unstable();
        held.dedup();
        let mut names: Vec<TenantId> = held
            .into_iter()
            .map(|tenant| fleet.tenants[usize::from(tenant)].clone())
            .collect();
        names.sort();
        names
    }
}

impl ChangeStore for SimStore {
    type Error = StoreError;

    fn changes(
        &self,
        doc: &DocId,
        author: &NodeId,
        from: u64,
        to: u64,
    ) -> Result<Vec<SignedChange>, StoreError> {
        let mut fleet = self.fleet.borrow_mut();
        let Some(chain) = fleet.chain_of(doc, author) else {
            return Ok(Vec::new());
        };
        let held = self.disk.borrow().seq_of(&fleet, chain);
        let mut out = Vec::new();
        for seq in from.max(1)..=to.min(held) {
            let change = fleet
                .signed(chain, seq)
                .map_err(|err| StoreError(format!("{err:#}")))?;
            out.push(change);
        }
        Ok(out)
    }

    fn contains(&self, hash: &ChangeHash) -> bool {
        let fleet = self.fleet.borrow();
        match fleet.locate(hash) {
            Some((chain, seq)) => self.disk.borrow().seq_of(&fleet, chain) >= seq,
            None => false,
        }
    }

    fn insert(&mut self, change: &SignedChange) -> Result<(), StoreError> {
        let mut fleet = self.fleet.borrow_mut();
        let mut disk = self.disk.borrow_mut();
        let Some(chain) = fleet.chain_of(change.doc(), &change.author()) else {
            disk.violations.push(format!(
                "stored change {} of unknown chain {} in {}",
                change.hash(),
                change.author(),
                change.doc()
            ));
            return Err(StoreError("unknown chain".to_string()));
        };
        let held = disk.seq_of(&fleet, chain);
        if change.seq() != held + 1 {
            return Err(StoreError(format!(
                "change {} of chain {chain} is out of order: the next sequence number is {}",
                change.seq(),
                held + 1
            )));
        }

        // Safety checks: the change is the author's, and it passed verification (or is ours).
        let authored = fleet
            .hash(chain, change.seq())
            .map_err(|err| StoreError(format!("{err:#}")))?;
        if authored != change.hash() {
            disk.violations.push(format!(
                "stored change {} at sequence number {} of chain {chain}, but the author wrote {}",
                change.hash(),
                change.seq(),
                authored
            ));
        }
        let key = (
            change.hash(),
            change.signature().copied(),
            change.doc().clone(),
        );
        if chain != self.own && fleet.verified.get(&key) != Some(&true) {
            disk.violations.push(format!(
                "stored change {} of chain {chain} without a successful verification",
                change.hash()
            ));
        }

        disk.set(&fleet, chain, change.seq());
        disk.inserts += 1;
        Ok(())
    }
}

/// Verifies each distinct change once with ed25519 (signature and node-document ownership)
/// and remembers the result for every node.
pub struct SimVerifier {
    fleet: Rc<RefCell<Fleet>>,
}

impl SimVerifier {
    /// Creates a verifier that shares the fleet's cache.
    pub fn new(fleet: Rc<RefCell<Fleet>>) -> SimVerifier {
        SimVerifier { fleet }
    }
}

impl Verify for SimVerifier {
    fn verify(&mut self, change: &SignedChange) -> Result<(), VerifyError> {
        let key = (
            change.hash(),
            change.signature().copied(),
            change.doc().clone(),
        );
        let mut fleet = self.fleet.borrow_mut();
        if let Some(valid) = fleet.verified.get(&key) {
            if *valid {
                return Ok(());
            }
            // Recompute for the error text; rejections are rare.
            return change.verify();
        }

        // First time in this run: an earlier run of the process may have verified the same
        // change already. The count stays per run, so reports do not depend on run order.
        let template = fleet
            .chain_of(change.doc(), &change.author())
            .map(|chain| Arc::clone(&fleet.chains[chain as usize].template));
        let result = match template {
            Some(template) => template.verify_change(key.clone(), change),
            None => change.verify(),
        };
        fleet.verifications += 1;
        fleet.verified.insert(key, result.is_ok());
        result
    }
}
