//! An in-memory [`ChangeStore`] for tests and the simulator.
//!
//! It keeps every change in memory (the change bytes are shared, so cloning a change between
//! stores costs a reference count) and applies nothing: it only records which changes it has.

use std::collections::{BTreeMap, BTreeSet};

use fleetmesh_model::{ChangeHash, DocId, NodeId, SignedChange, TenantId};

use super::recon::{ChainHead, ChainIndex, Fingerprint, Prefix, ReconIndex};
use super::ChangeStore;

/// Errors from [`MemStore::insert`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MemStoreError {
    /// The change is not the next one of its chain.
    #[error(
        "change {seq} of {author} in {doc} is out of order: the next sequence number is {expected}"
    )]
    OutOfOrder {
        /// The document id.
        doc: String,
        /// The chain's author.
        author: String,
        /// The change's sequence number.
        seq: u64,
        /// The sequence number the chain expects next.
        expected: u64,
    },
    /// A dependency of the change is not stored.
    #[error("change {seq} of {author} in {doc} depends on {dependency}, which is not stored")]
    MissingDependency {
        /// The document id.
        doc: String,
        /// The chain's author.
        author: String,
        /// The change's sequence number.
        seq: u64,
        /// The missing change hash in hex.
        dependency: String,
    },
}

/// Changes held in memory, with the chain index reconciliation reads.
#[derive(Debug, Default, Clone)]
pub struct MemStore {
    index: ReconIndex,
    chains: BTreeMap<(DocId, NodeId), Vec<SignedChange>>,
    hashes: BTreeSet<ChangeHash>,
}

impl MemStore {
    /// Creates an empty store.
    pub fn new() -> Self {
        MemStore::default()
    }

    /// Returns the number of changes held.
    pub fn len(&self) -> usize {
        self.hashes.len()
    }

    /// Reports whether no change is held.
    pub fn is_empty(&self) -> bool {
        self.hashes.is_empty()
    }

    /// Returns the chain index.
    pub fn index(&self) -> &ReconIndex {
        &self.index
    }

    /// Returns every held change of `tenant`, ordered by chain and sequence number.
    pub fn changes_of(&self, tenant: &TenantId) -> Vec<SignedChange> {
        self.chains
            .iter()
            .filter(|((doc, _), _)| &doc.tenant == tenant)
            .flat_map(|(_, chain)| chain.iter().cloned())
            .collect()
    }
}

impl ChainIndex for MemStore {
    fn seq(&self, doc: &DocId, author: &NodeId) -> u64 {
        self.index.seq(doc, author)
    }

    fn summary(&self, tenant: &TenantId, prefix: Prefix) -> (Fingerprint, u64) {
        self.index.summary(tenant, prefix)
    }

    fn heads_in(&self, tenant: &TenantId, prefix: Prefix) -> Vec<ChainHead> {
        self.index.heads_in(tenant, prefix)
    }

    fn tenants(&self) -> Vec<TenantId> {
        self.index.tenants()
    }
}

impl ChangeStore for MemStore {
    type Error = MemStoreError;

    fn changes(
        &self,
        doc: &DocId,
        author: &NodeId,
        from: u64,
        to: u64,
    ) -> Result<Vec<SignedChange>, MemStoreError> {
        let Some(chain) = self.chains.get(&(doc.clone(), *author)) else {
            return Ok(Vec::new());
        };
        // Chains start at sequence number 1, which is index 0.
        let start = usize::try_from(from.max(1) - 1).unwrap_or(usize::MAX);
        let end = usize::try_from(to).unwrap_or(usize::MAX).min(chain.len());
        Ok(chain.get(start..end).unwrap_or_default().to_vec())
    }

    fn contains(&self, hash: &ChangeHash) -> bool {
        self.hashes.contains(hash)
    }

    fn insert(&mut self, change: &SignedChange) -> Result<(), MemStoreError> {
        let doc = change.doc();
        let author = change.author();
        let expected = self.index.seq(doc, &author) + 1;
        if change.seq() != expected {
            return Err(MemStoreError::OutOfOrder {
                doc: doc.to_string(),
                author: author.to_string(),
                seq: change.seq(),
                expected,
            });
        }
        if let Some(missing) = change.header().deps.iter().find(|dep| !self.contains(dep)) {
            return Err(MemStoreError::MissingDependency {
                doc: doc.to_string(),
                author: author.to_string(),
                seq: change.seq(),
                dependency: missing.to_string(),
            });
        }

        self.chains
            .entry((doc.clone(), author))
            .or_default()
            .push(change.clone());
        self.hashes.insert(change.hash());
        self.index.set(ChainHead {
            doc: doc.clone(),
            author,
            seq: change.seq(),
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::test_support::Writer;

    #[test]
    fn store_insert_in_order() {
        let mut writer = Writer::new("acme", 1);
        let first = writer.next_change();
        let second = writer.next_change();
        let mut store = MemStore::new();

        let err = store.insert(&second).expect_err("second before first");
        assert!(
            matches!(err, MemStoreError::OutOfOrder { expected: 1, .. }),
            "{err}"
        );

        store.insert(&first).expect("first change");
        store.insert(&second).expect("second change");
        assert_eq!(store.len(), 2);
        assert!(store.contains(&second.hash()));
        assert_eq!(store.seq(first.doc(), &writer.node), 2);
    }

    #[test]
    fn store_changes_range() {
        let mut writer = Writer::new("acme", 1);
        let mut store = MemStore::new();
        let changes: Vec<SignedChange> = (0..4).map(|_| writer.next_change()).collect();
        for change in &changes {
            store.insert(change).expect("in order");
        }
        let doc = changes[0].doc();
        let got = store.changes(doc, &writer.node, 2, 3).expect("range");
        assert_eq!(got, changes[1..3].to_vec());
        let got = store
            .changes(doc, &writer.node, 0, u64::MAX)
            .expect("range");
        assert_eq!(got.len(), 4);
        let got = store.changes(doc, &writer.node, 5, 9).expect("range");
        assert!(got.is_empty());
    }
}
