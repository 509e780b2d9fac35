//! Verified changes that arrived before a predecessor or a dependency, waiting to be applied.
//!
//! The buffer is bounded: when it is full, the change that arrived first is dropped, and
//! anti-entropy fetches it again later. Changes blocked on a dependency of another chain are
//! indexed by that dependency's hash, so that storing it wakes them up.

use std::collections::{BTreeMap, BTreeSet};

use fleetmesh_model::{ChangeHash, DocId, NodeId, SignedChange};

/// A chain: one author's changes to one document.
pub(super) type ChainKey = (DocId, NodeId);

/// A parked change and the peer it came from.
pub(super) struct Parked {
    pub change: SignedChange,
    pub from: NodeId,
    arrival: u64,
}

pub(super) struct Pending {
    chains: BTreeMap<ChainKey, BTreeMap<u64, Parked>>,
    /// Arrival number to `(chain, seq)`, oldest first, for dropping the oldest change.
    arrivals: BTreeMap<u64, (ChainKey, u64)>,
    /// Dependency hash to the chains whose next change waits for it.
    waiting: BTreeMap<ChangeHash, BTreeSet<ChainKey>>,
    next_arrival: u64,
    max_len: usize,
}

impl Pending {
    pub fn new(max_len: usize) -> Self {
        Pending {
            chains: BTreeMap::new(),
            arrivals: BTreeMap::new(),
            waiting: BTreeMap::new(),
            next_arrival: 0,
            max_len: max_len.max(1),
        }
    }

    pub fn len(&self) -> usize {
        self.arrivals.len()
    }

    pub fn contains(&self, chain: &ChainKey, seq: u64) -> bool {
        self.chains
            .get(chain)
            .is_some_and(|parked| parked.contains_key(&seq))
    }

    /// Parks a change and returns the changes dropped to stay within the bound.
    pub fn park(&mut self, change: SignedChange, from: NodeId) -> Vec<Parked> {
        let arrival = self.next_arrival;
        self.next_arrival += 1;
        self.insert(Parked {
            change,
            from,
            arrival,
        });

        let mut dropped = Vec::new();
        while self.arrivals.len() > self.max_len {
            let Some((_, (chain, seq))) = self.arrivals.pop_first() else {
                break;
            };
            if let Some(parked) = self.remove(&chain, seq) {
                dropped.push(parked);
            }
        }
        dropped
    }

    /// Puts back a change taken with [`Pending::take`], keeping its place in arrival order.
    pub fn restore(&mut self, parked: Parked) {
        self.insert(parked);
    }

    /// Removes and returns the parked change `seq` of `chain`.
    pub fn take(&mut self, chain: &ChainKey, seq: u64) -> Option<Parked> {
        let parked = self.remove(chain, seq)?;
        self.arrivals.remove(&parked.arrival);
        Some(parked)
    }

    /// Drops the parked changes of `chain` up to `seq`, which are already stored. Returns how
    /// many were dropped.
    pub fn drop_through(&mut self, chain: &ChainKey, seq: u64) -> usize {
        let Some(parked) = self.chains.get(chain) else {
            return 0;
        };
        let stale: Vec<u64> = parked.range(..=seq).map(|(seq, _)| *seq).collect();
        for seq in &stale {
            self.take(chain, *seq);
        }
        stale.len()
    }

    /// Records that the next change of `chain` waits for the change `dependency`.
    pub fn wait_for(&mut self, dependency: ChangeHash, chain: ChainKey) {
        self.waiting.entry(dependency).or_default().insert(chain);
    }

    /// Removes and returns the chains that wait for `hash`.
    pub fn take_waiting(&mut self, hash: &ChangeHash) -> BTreeSet<ChainKey> {
        self.waiting.remove(hash).unwrap_or_default()
    }

    fn insert(&mut self, parked: Parked) {
        let chain = (parked.change.doc().clone(), parked.change.author());
        let seq = parked.change.seq();
        self.arrivals.insert(parked.arrival, (chain.clone(), seq));
        let previous = self.chains.entry(chain).or_default().insert(seq, parked);
        if let Some(previous) = previous {
            self.arrivals.remove(&previous.arrival);
        }
    }

    /// Removes a change from its chain (not from `arrivals`). Once none of the chain's changes
    /// is parked, also removes the chain from the waits on this change's dependencies.
    fn remove(&mut self, chain: &ChainKey, seq: u64) -> Option<Parked> {
        let parked_of_chain = self.chains.get_mut(chain)?;
        let parked = parked_of_chain.remove(&seq)?;
        if parked_of_chain.is_empty() {
            self.chains.remove(chain);
            for dependency in &parked.change.header().deps {
                if let Some(chains) = self.waiting.get_mut(dependency) {
                    chains.remove(chain);
                    if chains.is_empty() {
                        self.waiting.remove(dependency);
                    }
                }
            }
        }
        Some(parked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sync::test_support::Writer;

    #[test]
    fn pending_drops_oldest_over_bound() {
        let mut writer = Writer::new("acme", 1);
        let changes: Vec<SignedChange> = (0..4).map(|_| writer.next_change()).collect();
        let chain = (changes[0].doc().clone(), writer.node);
        let mut pending = Pending::new(2);

        assert!(pending.park(changes[3].clone(), writer.node).is_empty());
        assert!(pending.park(changes[1].clone(), writer.node).is_empty());
        let dropped = pending.park(changes[2].clone(), writer.node);
        assert_eq!(dropped.len(), 1);
        assert_eq!(dropped[0].change.seq(), 4);
        assert_eq!(pending.len(), 2);
        assert!(pending.contains(&chain, 2));
        assert!(!pending.contains(&chain, 4));
    }

    #[test]
    fn pending_take_and_restore() {
        let mut writer = Writer::new("acme", 1);
        let changes: Vec<SignedChange> = (0..3).map(|_| writer.next_change()).collect();
        let chain = (changes[0].doc().clone(), writer.node);
        let mut pending = Pending::new(8);
        for change in &changes {
            let _ = pending.park(change.clone(), writer.node);
        }

        let parked = pending.take(&chain, 2).expect("parked");
        assert_eq!(pending.len(), 2);
        pending.restore(parked);
        assert_eq!(pending.len(), 3);
        assert_eq!(pending.drop_through(&chain, 2), 2);
        assert_eq!(pending.len(), 1);
        assert!(pending.contains(&chain, 3));
    }
}
