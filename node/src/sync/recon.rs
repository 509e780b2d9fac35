//! The chain index and the fingerprints that range-based reconciliation compares.
//!
//! A node's replication state is the set of chains it stores, one item per `(document, author)`
//! with the last sequence number it has of that chain. Each item has a 32-bit key hash (the first
//! four bytes of `sha256(DocId::to_bytes() || author)`), and the key hashes form a 16-ary trie:
//! a [`Prefix`] of depth `d` selects the items whose key hash starts with those `4 * d` bits.
//!
//! The fingerprint of a set of items is the wrapping sum of the item fingerprints, where an item
//! fingerprint is the first 16 bytes of `sha256(DocId::to_bytes() || author || seq as u64 LE)`.
//! A sum can be updated in O(1) when one chain advances (subtract the old item, add the new one),
//! and two peers holding the same items under a prefix have the same `(fingerprint, count)`.
//! Peers compare the root first and walk down only into prefixes whose fingerprints differ.
//!
//! [`ReconIndex`] keeps the aggregates of the first [`AGGREGATE_DEPTH`] levels in sparse maps,
//! so a summary at those levels is one map lookup. A deeper summary adds up the few items under
//! the prefix. The index is ordered by key hash, so output built from it never depends on the
//! iteration order of a hash map.

use std::collections::BTreeMap;

use fleetmesh_model::{DocId, DocKind, NodeId, TenantId};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The fingerprint of a set of chain items: the wrapping sum of the item fingerprints.
pub type Fingerprint = u128;

/// Number of children of a prefix: each level of the trie consumes 4 bits of the key hash.
pub const FANOUT: u32 = 16;

/// Deepest prefix: 24 bits of the key hash. Reconciliation lists items at this depth.
pub const MAX_DEPTH: u8 = 6;

/// Deepest level whose per-prefix aggregates [`ReconIndex`] keeps in maps. Deeper summaries are
/// computed from the items, which are few at that depth (one per 65,536 items on average).
pub const AGGREGATE_DEPTH: u8 = 4;

/// A node of the key-hash trie: the items whose key hash starts with the top `4 * depth` bits
/// given in `bits` (right-aligned, so `bits < 16^depth`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Prefix {
    /// Number of 4-bit levels, from 0 (every item) to [`MAX_DEPTH`].
    pub depth: u8,
    /// The leading `4 * depth` bits of the key hash, right-aligned.
    pub bits: u32,
}

impl Prefix {
    /// The prefix that contains every item.
    pub const ROOT: Prefix = Prefix { depth: 0, bits: 0 };

    /// Returns the prefix, or `None` when the depth exceeds [`MAX_DEPTH`] or the bits do not
    /// fit in `4 * depth` bits.
    pub fn new(depth: u8, bits: u32) -> Option<Prefix> {
        let prefix = Prefix { depth, bits };
        prefix.is_valid().then_some(prefix)
    }

    /// Reports whether the depth is at most [`MAX_DEPTH`] and the bits fit in `4 * depth` bits.
    pub fn is_valid(&self) -> bool {
        self.depth <= MAX_DEPTH && u64::from(self.bits) < (1u64 << (4 * u32::from(self.depth)))
    }

    /// Returns the prefix of `depth` levels that contains the key hash `key`.
    ///
    /// `depth` is clamped to [`MAX_DEPTH`].
    pub fn of(key: u32, depth: u8) -> Prefix {
        let depth = depth.min(MAX_DEPTH);
        let bits = if depth == 0 {
            0
        } else {
            key >> (32 - 4 * u32::from(depth))
        };
        Prefix { depth, bits }
    }

    /// Reports whether the key hash `key` lies under this prefix.
    pub fn contains(&self, key: u32) -> bool {
        self.is_valid() && Prefix::of(key, self.depth) == *self
    }

    /// Returns the 16 children in key order, or nothing at [`MAX_DEPTH`].
    pub fn children(&self) -> impl Iterator<Item = Prefix> {
        let prefix = *self;
        let count = if prefix.depth < MAX_DEPTH { FANOUT } else { 0 };
        (0..count).map(move |nibble| Prefix {
            depth: prefix.depth + 1,
            bits: (prefix.bits << 4) | nibble,
        })
    }

    /// Returns the inclusive range of key hashes under this prefix.
    fn key_range(&self) -> (u32, u32) {
        if self.depth == 0 {
            return (0, u32::MAX);
        }
        let shift = 32 - 4 * u32::from(self.depth);
        let low = self.bits << shift;
        let high = low | (u32::MAX >> (4 * u32::from(self.depth)));
        (low, high)
    }
}

/// One chain and the last sequence number held of it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChainHead {
    /// The document.
    pub doc: DocId,
    /// The chain's author (automerge actor).
    pub author: NodeId,
    /// The last sequence number held; chains start at 1.
    pub seq: u64,
}

/// Read access to a node's chain state, as reconciliation needs it.
pub trait ChainIndex {
    /// Returns the last sequence number held of the chain `(doc, author)`, or 0 when none.
    fn seq(&self, doc: &DocId, author: &NodeId) -> u64;

    /// Returns the fingerprint and the number of items of `tenant` under `prefix`.
    fn summary(&self, tenant: &TenantId, prefix: Prefix) -> (Fingerprint, u64);

    /// Returns the items of `tenant` under `prefix`, ordered by key hash.
    fn heads_in(&self, tenant: &TenantId, prefix: Prefix) -> Vec<ChainHead>;

    /// Returns the tenants that have at least one item, in name order.
    fn tenants(&self) -> Vec<TenantId>;
}

/// Returns the key hash of the chain `(doc, author)`: the first four bytes of
/// `sha256(DocId::to_bytes() || author)`, big-endian.
pub fn chain_key(doc: &DocId, author: &NodeId) -> u32 {
    let digest = Sha256::new()
        .chain_update(doc.to_bytes())
        .chain_update(author.as_bytes())
        .finalize();
    u32::from_be_bytes([digest[0], digest[1], digest[2], digest[3]])
}

/// Returns the fingerprint of one item: the first 16 bytes of
/// `sha256(DocId::to_bytes() || author || seq as u64 LE)`, little-endian.
pub fn item_fingerprint(doc: &DocId, author: &NodeId, seq: u64) -> Fingerprint {
    let digest = Sha256::new()
        .chain_update(doc.to_bytes())
        .chain_update(author.as_bytes())
        .chain_update(seq.to_le_bytes())
        .finalize();
    let mut bytes = [0u8; 16];
    bytes.copy_from_slice(&digest[..16]);
    Fingerprint::from_le_bytes(bytes)
}

/// A chain within one tenant, without the tenant name, so that index keys stay small.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ChainId {
    kind: DocKind,
    doc_key: [u8; 32],
    author: [u8; 32],
}

impl ChainId {
    fn of(doc: &DocId, author: &NodeId) -> ChainId {
        ChainId {
            kind: doc.kind,
            doc_key: doc.key,
            author: author.0,
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
struct Bucket {
    fingerprint: Fingerprint,
    count: u64,
}

#[derive(Clone, Copy, Debug)]
struct Item {
    seq: u64,
    fingerprint: Fingerprint,
}

/// The items and aggregates of one tenant.
#[derive(Clone, Debug)]
struct TenantIndex {
    /// Items ordered by key hash, so that a prefix is a contiguous range.
    items: BTreeMap<(u32, ChainId), Item>,
    /// `buckets[d]` maps the bits of every non-empty prefix of depth `d` to its aggregate.
    buckets: Vec<BTreeMap<u32, Bucket>>,
}

impl TenantIndex {
    fn new() -> Self {
        TenantIndex {
            items: BTreeMap::new(),
            buckets: vec![BTreeMap::new(); usize::from(AGGREGATE_DEPTH) + 1],
        }
    }

    fn summary(&self, prefix: Prefix) -> (Fingerprint, u64) {
        if prefix.depth <= AGGREGATE_DEPTH {
            return self.buckets[usize::from(prefix.depth)]
                .get(&prefix.bits)
                .map_or((0, 0), |bucket| (bucket.fingerprint, bucket.count));
        }

        let mut fingerprint: Fingerprint = 0;
        let mut count = 0;
        for item in self.range(prefix).map(|(_, item)| item) {
            fingerprint = fingerprint.wrapping_add(item.fingerprint);
            count += 1;
        }
        (fingerprint, count)
    }

    fn range(&self, prefix: Prefix) -> impl Iterator<Item = (&(u32, ChainId), &Item)> {
        let (low, high) = prefix.key_range();
        // `DocKind::Node` is the first variant, so this is the smallest id with key hash `low`.
        let start = ChainId {
            kind: DocKind::Node,
            doc_key: [0; 32],
            author: [0; 32],
        };
        self.items
            .range((low, start)..)
            .take_while(move |((key, _), _)| *key <= high)
    }
}

/// The in-memory chain index of one node, with the aggregates that make summaries cheap.
///
/// Memory is about 100 bytes per item plus about 40 bytes per non-empty prefix of the first
/// [`AGGREGATE_DEPTH`] levels: roughly 1.5 MB for 10,000 items (an estimate from the key and
/// value sizes, not a measurement).
#[derive(Debug, Default, Clone)]
pub struct ReconIndex {
    tenants: BTreeMap<TenantId, TenantIndex>,
    len: usize,
}

impl ReconIndex {
    /// Creates an empty index.
    pub fn new() -> Self {
        ReconIndex::default()
    }

    /// Records that the chain `(head.doc, head.author)` is held up to `head.seq`.
    ///
    /// Sequence numbers only move forward: a `seq` of 0 or at most the one already held is
    /// ignored.
    pub fn set(&mut self, head: ChainHead) {
        let ChainHead { doc, author, seq } = head;
        if seq == 0 {
            return;
        }

        let key = chain_key(&doc, &author);
        let id = ChainId::of(&doc, &author);
        let fingerprint = item_fingerprint(&doc, &author, seq);
        let tenant = self
            .tenants
            .entry(doc.tenant)
            .or_insert_with(TenantIndex::new);

        // Replace the item, remembering what it contributed before.
        let previous = match tenant.items.get_mut(&(key, id)) {
            Some(item) if item.seq >= seq => return,
            Some(item) => {
                let old = item.fingerprint;
                *item = Item { seq, fingerprint };
                Some(old)
            }
            None => {
                tenant.items.insert((key, id), Item { seq, fingerprint });
                None
            }
        };
        if previous.is_none() {
            self.len += 1;
        }

        // Move every aggregate on the path from the root by the same difference.
        let delta = fingerprint.wrapping_sub(previous.unwrap_or(0));
        for (depth, buckets) in (0..=AGGREGATE_DEPTH).zip(tenant.buckets.iter_mut()) {
            let bucket = buckets.entry(Prefix::of(key, depth).bits).or_default();
            bucket.fingerprint = bucket.fingerprint.wrapping_add(delta);
            if previous.is_none() {
                bucket.count += 1;
            }
        }
    }

    /// Returns the number of chains held, over all tenants.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Reports whether no chain is held.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl ChainIndex for ReconIndex {
    fn seq(&self, doc: &DocId, author: &NodeId) -> u64 {
        let Some(tenant) = self.tenants.get(&doc.tenant) else {
            return 0;
        };
        let key = chain_key(doc, author);
        tenant
            .items
            .get(&(key, ChainId::of(doc, author)))
            .map_or(0, |item| item.seq)
    }

    fn summary(&self, tenant: &TenantId, prefix: Prefix) -> (Fingerprint, u64) {
        if !prefix.is_valid() {
            return (0, 0);
        }
        self.tenants
            .get(tenant)
            .map_or((0, 0), |index| index.summary(prefix))
    }

    fn heads_in(&self, tenant: &TenantId, prefix: Prefix) -> Vec<ChainHead> {
        let Some(index) = self.tenants.get(tenant).filter(|_| prefix.is_valid()) else {
            return Vec::new();
        };
        index
            .range(prefix)
            .map(|((_, id), item)| ChainHead {
                doc: DocId {
                    kind: id.kind,
                    tenant: tenant.clone(),
                    key: id.doc_key,
                },
                author: NodeId(id.author),
                seq: item.seq,
            })
            .collect()
    }

    fn tenants(&self) -> Vec<TenantId> {
        self.tenants
            .iter()
            .filter(|(_, index)| !index.items.is_empty())
            .map(|(tenant, _)| tenant.clone())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tenant(name: &str) -> TenantId {
        TenantId::new(name).expect("valid tenant name")
    }

    fn head(tenant_name: &str, node: u8, seq: u64) -> ChainHead {
        let author = NodeId([node; 32]);
        ChainHead {
            doc: DocId::node(tenant(tenant_name), author),
            author,
            seq,
        }
    }

    /// Sums item fingerprints directly, following the definition in the module docs.
    fn expected_summary(heads: &[ChainHead], prefix: Prefix) -> (Fingerprint, u64) {
        let mut fingerprint: Fingerprint = 0;
        let mut count = 0;
        for head in heads {
            if prefix.contains(chain_key(&head.doc, &head.author)) {
                fingerprint =
                    fingerprint.wrapping_add(item_fingerprint(&head.doc, &head.author, head.seq));
                count += 1;
            }
        }
        (fingerprint, count)
    }

    #[test]
    fn prefix_validity() {
        assert!(Prefix::ROOT.is_valid());
        assert!(Prefix::new(1, 15).is_some());
        assert!(Prefix::new(1, 16).is_none());
        assert!(Prefix::new(MAX_DEPTH, (1 << 24) - 1).is_some());
        assert!(Prefix::new(MAX_DEPTH + 1, 0).is_none());
    }

    #[test]
    fn prefix_children_partition_keys() {
        let key = 0xabcd_ef12;
        let parent = Prefix::of(key, 2);
        assert_eq!(
            parent,
            Prefix {
                depth: 2,
                bits: 0xab
            }
        );
        let holders: Vec<Prefix> = parent.children().filter(|c| c.contains(key)).collect();
        assert_eq!(
            holders,
            vec![Prefix {
                depth: 3,
                bits: 0xabc
            }]
        );
        assert_eq!(Prefix::of(key, MAX_DEPTH).children().count(), 0);
    }

    #[test]
    fn index_set_moves_only_forward() {
        let mut index = ReconIndex::new();
        let h = head("acme", 1, 5);
        index.set(h.clone());
        index.set(ChainHead {
            seq: 3,
            ..h.clone()
        });
        index.set(ChainHead {
            seq: 0,
            ..h.clone()
        });
        assert_eq!(index.seq(&h.doc, &h.author), 5);
        assert_eq!(index.len(), 1);
        index.set(ChainHead {
            seq: 6,
            ..h.clone()
        });
        assert_eq!(index.seq(&h.doc, &h.author), 6);
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn index_summaries_match_definition() {
        let mut index = ReconIndex::new();
        let mut heads = Vec::new();
        for node in 0..200u8 {
            let h = head("acme", node, u64::from(node % 7) + 1);
            index.set(h.clone());
            heads.push(h);
        }
        // Advance some chains so that the incremental update is exercised.
        for h in heads.iter_mut().step_by(3) {
            h.seq += 4;
            index.set(h.clone());
        }

        let acme = tenant("acme");
        let mut prefixes = vec![Prefix::ROOT];
        for h in &heads[..5] {
            let key = chain_key(&h.doc, &h.author);
            prefixes.extend((1..=MAX_DEPTH).map(|depth| Prefix::of(key, depth)));
        }
        for prefix in prefixes {
            assert_eq!(
                index.summary(&acme, prefix),
                expected_summary(&heads, prefix),
                "{prefix:?}"
            );
        }
    }

    #[test]
    fn index_heads_in_lists_prefix_items() {
        let mut index = ReconIndex::new();
        for node in 0..50u8 {
            index.set(head("acme", node, 1));
        }
        let acme = tenant("acme");
        let all = index.heads_in(&acme, Prefix::ROOT);
        assert_eq!(all.len(), 50);

        let mut from_children = Vec::new();
        for child in Prefix::ROOT.children() {
            let heads = index.heads_in(&acme, child);
            assert_eq!(heads.len() as u64, index.summary(&acme, child).1);
            from_children.extend(heads);
        }
        assert_eq!(from_children, all);
    }

    #[test]
    fn index_separates_tenants() {
        let mut index = ReconIndex::new();
        index.set(head("acme", 1, 1));
        index.set(head("globex", 1, 2));
        assert_eq!(index.tenants(), vec![tenant("acme"), tenant("globex")]);
        assert_eq!(index.summary(&tenant("acme"), Prefix::ROOT).1, 1);
        assert_eq!(index.heads_in(&tenant("globex"), Prefix::ROOT)[0].seq, 2);
        assert_eq!(index.summary(&tenant("initech"), Prefix::ROOT), (0, 0));
    }

    #[test]
    fn index_summary_independent_of_order() {
        let heads: Vec<ChainHead> = (0..30u8).map(|n| head("acme", n, 2)).collect();
        let mut forward = ReconIndex::new();
        let mut backward = ReconIndex::new();
        for h in &heads {
            forward.set(ChainHead {
                seq: 1,
                ..h.clone()
            });
            forward.set(h.clone());
        }
        for h in heads.iter().rev() {
            backward.set(h.clone());
        }
        let acme = tenant("acme");
        assert_eq!(
            forward.summary(&acme, Prefix::ROOT),
            backward.summary(&acme, Prefix::ROOT)
        );
    }
}
