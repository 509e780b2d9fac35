//! Range-based reconciliation (anti-entropy) of one tenant between two peers.
//!
//! A round, with `A` the opener and `B` the other side:
//!
//! 1. `A` sends [`Message::Summary`]: its fingerprint and count over the whole tenant.
//! 2. If `B` has the same summary, the round ends. Otherwise `B` describes the root prefix in a
//!    [`Message::Ranges`]: its items if it has few, else one entry per child prefix (a
//!    fingerprint, or an empty item list for an empty child).
//! 3. Each side replies to every fingerprint entry that differs from its own the same way, one
//!    level deeper, until one side lists items. The depth grows on every step and a prefix at
//!    [`MAX_DEPTH`] is always listed, so every round ends.
//! 4. A side that receives an item list sends the changes the other side lacks as
//!    [`Message::Repair`], then a [`Message::Request`] for the chains where the other side is
//!    ahead. Nothing answers a request but the repair, so lists never bounce back and forth.

use std::collections::BTreeMap;

use fleetmesh_model::{NodeId, TenantId};
use rand::Rng;

use super::Engine;
use crate::sync::message::{range_entry_len, ranges_overhead_max, RangeEntry};
use crate::sync::recon::{chain_key, ChainHead, Fingerprint, Prefix, MAX_DEPTH};
use crate::sync::{ChangeStore, Message, Timestamp, Verify};

impl<S: ChangeStore, V: Verify> Engine<S, V> {
    /// Opens a round for every tenant shared with `peer`.
    pub(super) fn start_round(&mut self, peer: NodeId) {
        let Some(state) = self.peers.get(&peer) else {
            return;
        };
        let tenants: Vec<TenantId> = state.tenants.iter().cloned().collect();
        for tenant in tenants {
            let (fingerprint, count) = self.store.summary(&tenant, Prefix::ROOT);
            self.stats.recon_rounds += 1;
            self.send(
                peer,
                Message::Summary {
                    tenant,
                    fingerprint,
                    count,
                },
            );
        }
    }

    /// Opens a round with one peer, LAN peers weighted above WAN peers, and arms the next one.
    pub(super) fn run_anti_entropy(&mut self, now: Timestamp) {
        if self.peers.is_empty() {
            self.anti_entropy_at = None;
            return;
        }
        self.anti_entropy_at = Some(now.saturating_add(self.anti_entropy_delay()));

        let wan_weight = self.wan_weight();
        let candidates: Vec<(NodeId, f64)> = self
            .peers
            .iter()
            .filter(|(_, state)| !state.tenants.is_empty())
            .map(|(id, state)| (*id, if state.lan { 1.0 } else { wan_weight }))
            .collect();
        if let Some(peer) = self.choose_weighted(&candidates) {
            tracing::debug!(peer = %peer, "starting an anti-entropy round");
            self.start_round(peer);
        }
    }

    /// Picks one candidate with probability proportional to its weight, or uniformly when
    /// every weight is zero.
    fn choose_weighted(&mut self, candidates: &[(NodeId, f64)]) -> Option<NodeId> {
        let total: f64 = candidates.iter().map(|(_, weight)| weight).sum();
        if candidates.is_empty() {
            return None;
        }
        if total <= 0.0 || !total.is_finite() {
            let index = self.rng.gen_range(0..candidates.len());
            return Some(candidates[index].0);
        }
        let mut point = self.rng.gen_range(0.0..total);
        for (id, weight) in candidates {
            if point < *weight {
                return Some(*id);
            }
            point -= weight;
        }
        candidates.last().map(|(id, _)| *id)
    }

    pub(super) fn handle_summary(
        &mut self,
        peer: NodeId,
        tenant: TenantId,
        fingerprint: Fingerprint,
        count: u64,
    ) {
        if !self.check_shared(peer, &tenant, "a summary") {
            return;
        }
        let (ours, our_count) = self.store.summary(&tenant, Prefix::ROOT);
        if (ours, our_count) == (fingerprint, count) {
            self.stats.recon_converged += 1;
            tracing::trace!(peer = %peer, tenant = %tenant, count, "reconciliation round converged");
            return;
        }

        tracing::debug!(peer = %peer, tenant = %tenant, ours = our_count, theirs = count, "summaries differ");
        let mut reply = Vec::new();
        self.describe_prefix(&tenant, Prefix::ROOT, our_count, &mut reply);
        self.send_ranges(peer, tenant, reply);
    }

    pub(super) fn handle_ranges(
        &mut self,
        peer: NodeId,
        tenant: TenantId,
        ranges: Vec<RangeEntry>,
    ) {
        if !self.check_shared(peer, &tenant, "ranges") {
            return;
        }

        let mut reply = Vec::new();
        let mut repair = Vec::new();
        let mut wants = Vec::new();
        for entry in ranges {
            match entry {
                RangeEntry::Fingerprint {
                    prefix,
                    fingerprint,
                    count,
                } => {
                    let (ours, our_count) = self.store.summary(&tenant, prefix);
                    if (ours, our_count) != (fingerprint, count) {
                        self.describe_prefix(&tenant, prefix, our_count, &mut reply);
                    }
                }
                RangeEntry::Items { prefix, heads } => {
                    self.compare_items(peer, &tenant, prefix, heads, &mut repair, &mut wants);
                }
            }
        }

        // Changes first, then requests, then the next level, all on one ordered channel.
        self.send_changes(peer, repair, false);
        self.send_heads(peer, wants, |wants| Message::Request { wants });
        self.send_ranges(peer, tenant, reply);
    }

    /// Appends this node's description of a prefix whose fingerprints differ: the items when few
    /// or at the deepest level, otherwise one entry per child.
    fn describe_prefix(
        &self,
        tenant: &TenantId,
        prefix: Prefix,
        our_count: u64,
        out: &mut Vec<RangeEntry>,
    ) {
        if our_count <= self.config.recon_items_max || prefix.depth >= MAX_DEPTH {
            out.push(RangeEntry::Items {
                prefix,
                heads: self.store.heads_in(tenant, prefix),
            });
            return;
        }

        for child in prefix.children() {
            let (fingerprint, count) = self.store.summary(tenant, child);
            if count == 0 {
                out.push(RangeEntry::Items {
                    prefix: child,
                    heads: Vec::new(),
                });
            } else {
                out.push(RangeEntry::Fingerprint {
                    prefix: child,
                    fingerprint,
                    count,
                });
            }
        }
    }

    /// Compares the peer's items under `prefix` with ours: collects the changes the peer lacks
    /// and the chains where the peer is ahead (with our sequence number).
    fn compare_items(
        &mut self,
        peer: NodeId,
        tenant: &TenantId,
        prefix: Prefix,
        heads: Vec<ChainHead>,
        repair: &mut Vec<fleetmesh_model::SignedChange>,
        wants: &mut Vec<ChainHead>,
    ) {
        let mut theirs = BTreeMap::new();
        for head in heads {
            let inside =
                &head.doc.tenant == tenant && prefix.contains(chain_key(&head.doc, &head.author));
            if !inside {
                tracing::debug!(peer = %peer, doc = %head.doc, "ignored a listed item outside its prefix");
                continue;
            }
            theirs.insert((head.doc, head.author), head.seq);
        }

        for ours in self.store.heads_in(tenant, prefix) {
            let their_seq = theirs.remove(&(ours.doc.clone(), ours.author)).unwrap_or(0);
            if ours.seq > their_seq {
                match self
                    .store
                    .changes(&ours.doc, &ours.author, their_seq + 1, ours.seq)
                {
                    Ok(changes) => repair.extend(changes),
                    Err(err) => {
                        self.stats.store_errors += 1;
                        tracing::error!(peer = %peer, doc = %ours.doc, error = %err, "failed to read changes for reconciliation");
                    }
                }
            } else if their_seq > ours.seq {
                wants.push(ours);
            }
        }

        // Chains this node does not hold at all.
        for ((doc, author), _) in theirs {
            wants.push(ChainHead {
                doc,
                author,
                seq: 0,
            });
        }
    }

    /// Sends range entries, split into messages within the size limit.
    fn send_ranges(&mut self, peer: NodeId, tenant: TenantId, entries: Vec<RangeEntry>) {
        if entries.is_empty() {
            return;
        }
        let max_bytes = self.config.max_message_bytes;
        let overhead = ranges_overhead_max(&tenant);

        let mut batch = Vec::new();
        let mut batch_len = overhead;
        for entry in entries {
            let len = range_entry_len(&entry);
            if !batch.is_empty() && batch_len + len > max_bytes {
                let ranges = std::mem::take(&mut batch);
                self.send(
                    peer,
                    Message::Ranges {
                        tenant: tenant.clone(),
                        ranges,
                    },
                );
                batch_len = overhead;
            }
            // NOTE: an entry larger than the limit still goes alone in one message. Only an item
            // list at MAX_DEPTH can be that large, which takes millions of chains in one tenant.
            batch.push(entry);
            batch_len += len;
        }
        self.send(
            peer,
            Message::Ranges {
                tenant,
                ranges: batch,
            },
        );
    }
}
