//! Eager push and lazy announcement of new changes (PlumTree-style), with pruning and grafting.

use std::collections::BTreeMap;

use fleetmesh_model::{NodeId, SignedChange};
use rand::seq::SliceRandom;

use super::{Engine, Missing};
use crate::sync::pending::ChainKey;
use crate::sync::recon::ChainHead;
use crate::sync::{ChangeStore, Message, Timestamp, Verify};

impl<S: ChangeStore, V: Verify> Engine<S, V> {
    /// Pushes newly stored changes to eager peers and queues announcements for at most
    /// [`super::Config::ihave_peers_max`] lazy peers per change. A change never goes back to the
    /// peer it came from (`None` for this node's own changes), nor to a peer that does not share
    /// its tenant.
    pub(super) fn forward(&mut self, changes: &[(SignedChange, Option<NodeId>)], now: Timestamp) {
        if changes.is_empty() {
            return;
        }

        let mut pushes: BTreeMap<NodeId, Vec<SignedChange>> = BTreeMap::new();
        let mut announced = false;
        for (change, from) in changes {
            let mut lazy = Vec::new();
            for (id, peer) in &self.peers {
                if *from == Some(*id) || !peer.tenants.contains(&change.doc().tenant) {
                    continue;
                }
                if peer.eager {
                    pushes.entry(*id).or_default().push(change.clone());
                } else {
                    lazy.push(*id);
                }
            }

            // Announce to a random subset when there are more lazy peers than the limit. The
            // RNG is drawn only then, so a limit at or above the peer count changes no other
            // random choice of the engine.
            let limit = self.config.ihave_peers_max;
            if lazy.len() > limit {
                lazy = lazy.partial_shuffle(&mut self.rng, limit).0.to_vec();
            }

            let chain: ChainKey = (change.doc().clone(), change.author());
            for id in lazy {
                if let Some(peer) = self.peers.get_mut(&id) {
                    let seq = peer.announce.entry(chain.clone()).or_insert(0);
                    *seq = (*seq).max(change.seq());
                    announced = true;
                }
            }
        }

        for (peer, push) in pushes {
            self.send_changes(peer, push, true);
        }
        if announced && self.announce_at.is_none() {
            self.announce_at = Some(now.saturating_add(self.config.ihave_interval_ms));
        }
    }

    /// Sends the queued announcements, grouped by tenant.
    pub(super) fn flush_announcements(&mut self) {
        self.announce_at = None;

        let mut batches = Vec::new();
        for (id, peer) in self.peers.iter_mut() {
            if peer.announce.is_empty() {
                continue;
            }
            let mut heads: Vec<ChainHead> = std::mem::take(&mut peer.announce)
                .into_iter()
                .map(|((doc, author), seq)| ChainHead { doc, author, seq })
                .collect();
            // Heads of one tenant travel as one group on the wire.
            heads.sort_by(|a, b| a.doc.tenant.cmp(&b.doc.tenant));
            batches.push((*id, heads));
        }

        for (peer, heads) in batches {
            self.send_heads(peer, heads, |heads| Message::IHave { heads });
        }
    }

    /// Records announced chains this node lacks, to graft them if they do not arrive in time.
    pub(super) fn handle_ihave(&mut self, peer: NodeId, heads: Vec<ChainHead>, now: Timestamp) {
        for head in heads {
            if !self.check_shared(peer, &head.doc.tenant, "an announcement") {
                return;
            }
            let chain = (head.doc, head.author);

            // The peer has these changes, so a queued announcement to it would be wasted.
            if let Some(state) = self.peers.get_mut(&peer) {
                if state
                    .announce
                    .get(&chain)
                    .is_some_and(|seq| *seq <= head.seq)
                {
                    state.announce.remove(&chain);
                }
            }
            if self.store.seq(&chain.0, &chain.1) >= head.seq {
                continue;
            }

            if let Some(missing) = self.missing.get_mut(&chain) {
                missing.seq = missing.seq.max(head.seq);
                if !missing.announcers.contains(&peer) {
                    missing.announcers.push(peer);
                }
                continue;
            }
            if self.missing.len() >= self.config.max_missing {
                tracing::debug!(peer = %peer, doc = %chain.0, "ignored an announcement: too many missing chains");
                continue;
            }
            let deadline = now.saturating_add(self.graft_delay());
            self.missing.insert(
                chain,
                Missing {
                    seq: head.seq,
                    announcers: vec![peer],
                    deadline,
                },
            );
        }
    }

    /// Grafts the announced chains whose wait has expired, preferring a LAN announcer, and
    /// makes the grafted peers eager again.
    pub(super) fn graft_due(&mut self, now: Timestamp) {
        let due: Vec<ChainKey> = self
            .missing
            .iter()
            .filter(|(_, missing)| missing.deadline <= now)
            .map(|(chain, _)| chain.clone())
            .collect();

        let mut grafts: BTreeMap<NodeId, Vec<ChainHead>> = BTreeMap::new();
        for chain in due {
            let stored = self.store.seq(&chain.0, &chain.1);
            let deadline = now.saturating_add(self.graft_delay());
            let Some(missing) = self.missing.get_mut(&chain) else {
                continue;
            };
            missing.announcers.retain(|id| self.peers.contains_key(id));
            if stored >= missing.seq || missing.announcers.is_empty() {
                // Arrived, or no announcer left: anti-entropy repairs what is still missing.
                self.missing.remove(&chain);
                continue;
            }

            let lan_index = missing
                .announcers
                .iter()
                .position(|id| self.peers.get(id).is_some_and(|peer| peer.lan));
            let announcer = missing.announcers.remove(lan_index.unwrap_or(0));
            missing.deadline = deadline;
            grafts.entry(announcer).or_default().push(ChainHead {
                doc: chain.0,
                author: chain.1,
                seq: stored,
            });
        }

        for (peer, wants) in grafts {
            if let Some(state) = self.peers.get_mut(&peer) {
                state.eager = true;
                state.prune_sent = false;
            }
            tracing::debug!(peer = %peer, chains = wants.len(), "grafting announced changes");
            self.send_heads(peer, wants, |wants| Message::Graft { wants });
        }
    }

    /// Makes `peer` lazy after it pushed only changes this node had, and sends it
    /// [`Message::Prune`] unless one was sent since the last graft.
    pub(super) fn prune(&mut self, peer: NodeId) {
        let Some(state) = self.peers.get_mut(&peer) else {
            return;
        };
        state.eager = false;
        if state.prune_sent {
            return;
        }
        state.prune_sent = true;
        tracing::trace!(peer = %peer, "pruning a duplicate push link");
        self.send(peer, Message::Prune);
    }

    /// Stops waiting for a chain once the announced changes are stored.
    pub(super) fn forget_missing(&mut self, chain: &ChainKey) {
        let stored = self.store.seq(&chain.0, &chain.1);
        if self
            .missing
            .get(chain)
            .is_some_and(|missing| stored >= missing.seq)
        {
            self.missing.remove(chain);
        }
    }
}
