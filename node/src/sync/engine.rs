//! The sync engine: events in, actions out.
//!
//! The driver calls the `handle_*` methods with the current time, then drains
//! [`Engine::poll_action`] until it returns `None` and arms a timer for
//! [`Engine::poll_timeout`], calling [`Engine::handle_timeout`] when it fires.
//!
//! The engine combines two mechanisms:
//!
//! - Eager push with lazy repair, as in PlumTree: a new change goes in full to "eager" peers and
//!   is announced with [`Message::IHave`] to "lazy" peers (by default all of them, see
//!   [`Config::ihave_peers_max`]). A peer that pushes a change we already have is sent
//!   [`Message::Prune`] and becomes lazy, so the eager links thin out to a tree. An announced
//!   change that does not arrive within the graft timeout is requested with
//!   [`Message::Graft`], which makes that link eager again. Same-site (LAN) peers start eager,
//!   and a WAN peer starts eager only with probability [`Config::wan_peer_weight`].
//! - Range-based reconciliation (anti-entropy) on connect and periodically with one random peer,
//!   LAN-weighted: the peers compare [`Message::Summary`] fingerprints and walk down the key-hash
//!   trie only where the fingerprints differ (see [`super::recon`]). A converged round is one
//!   summary message per shared tenant.
//!
//! A peer only ever receives changes, heads and summaries of tenants that both sides replicate.
//! A change is stored only after [`Verify::verify`] accepted it and every dependency is stored,
//! and forwarded only after [`ChangeStore::insert`] returned.

mod gossip;
mod reconcile;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use fleetmesh_model::{ChangeHash, NodeId, SignedChange, TenantId};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::message::heads_per_message;
use super::message::{change_encoded_len, changes_message_len, MessageKind};
use super::pending::{ChainKey, Pending};
use super::recon::ChainHead;
use super::{ChangeStore, Message, Timestamp, Verify};

/// Engine settings. The defaults suit a production node.
#[derive(Debug, Clone)]
pub struct Config {
    /// Mean time between anti-entropy rounds, in milliseconds. Each interval is drawn uniformly
    /// from half to one and a half times this value.
    pub anti_entropy_interval_ms: u64,
    /// Seed of the engine's RNG, which draws jitter and peer choices. The engine mixes in its
    /// node id, so nodes given the same seed still make different choices.
    pub seed: u64,
    /// Maximum encoded size of a message the engine sends, in bytes. A change that does not fit
    /// is not sent (and logged). The driver should reject received messages over this size.
    pub max_message_bytes: usize,
    /// Maximum number of changes in one message.
    pub max_changes_per_message: usize,
    /// Maximum number of received changes held back while a predecessor or dependency is missing.
    pub max_pending: usize,
    /// Maximum number of announced chains awaiting a graft.
    pub max_missing: usize,
    /// Delay for batching [`Message::IHave`] announcements, in milliseconds.
    pub ihave_interval_ms: u64,
    /// Maximum number of lazy peers that each new change is announced to, drawn at random per
    /// change among the lazy peers that share its tenant. The default, `usize::MAX`, announces to
    /// every lazy peer. A small limit cuts announcement bytes, but in the simulator it deepened
    /// the push tree, raised duplicates in small meshes, and left more lost pushes to
    /// anti-entropy.
    pub ihave_peers_max: usize,
    /// Base time to wait for an announced change before grafting, in milliseconds. Each wait is
    /// drawn uniformly from one to two times this value, so that the nodes of a site do not all
    /// graft the same change over their WAN links at once.
    pub graft_timeout_ms: u64,
    /// Relative weight of a WAN (other-site) peer against a LAN peer's 1.0, from 0.0 to 1.0. It
    /// is the chance that a WAN peer starts as an eager link and its weight when choosing an
    /// anti-entropy partner.
    pub wan_peer_weight: f64,
    /// Maximum number of items under a prefix that reconciliation lists in full. A node with
    /// more items under a differing prefix sends the fingerprints of its children instead.
    pub recon_items_max: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            anti_entropy_interval_ms: 30_000,
            seed: 0,
            max_message_bytes: 1 << 20,
            max_changes_per_message: 256,
            max_pending: 4096,
            max_missing: 4096,
            ihave_interval_ms: 50,
            ihave_peers_max: usize::MAX,
            graft_timeout_ms: 250,
            wan_peer_weight: 0.25,
            recon_items_max: 16,
        }
    }
}

/// Identity of this node: id, site and replicated tenants.
#[derive(Debug, Clone)]
pub struct LocalInfo {
    /// This node's id.
    pub node: NodeId,
    /// This node's site; peers of the same site are LAN peers.
    pub site: String,
    /// The tenants this node replicates.
    pub tenants: Vec<TenantId>,
}

/// Identity of a connected peer, taken from its authenticated certificate chain.
#[derive(Debug, Clone)]
pub struct PeerInfo {
    /// The peer's site.
    pub site: String,
    /// The tenants the peer replicates.
    pub tenants: Vec<TenantId>,
}

/// Counters per message kind.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KindCounters {
    /// [`Message::Summary`].
    pub summary: u64,
    /// [`Message::Ranges`].
    pub ranges: u64,
    /// [`Message::Changes`].
    pub changes: u64,
    /// [`Message::Repair`].
    pub repair: u64,
    /// [`Message::IHave`].
    pub ihave: u64,
    /// [`Message::Graft`].
    pub graft: u64,
    /// [`Message::Request`].
    pub request: u64,
    /// [`Message::Prune`].
    pub prune: u64,
}

impl KindCounters {
    /// Returns the counter of `kind`.
    pub fn get(&self, kind: MessageKind) -> u64 {
        match kind {
            MessageKind::Summary => self.summary,
            MessageKind::Ranges => self.ranges,
            MessageKind::Changes => self.changes,
            MessageKind::Repair => self.repair,
            MessageKind::IHave => self.ihave,
            MessageKind::Graft => self.graft,
            MessageKind::Request => self.request,
            MessageKind::Prune => self.prune,
        }
    }

    /// Returns the sum over all kinds.
    pub fn total(&self) -> u64 {
        MessageKind::ALL.iter().map(|kind| self.get(*kind)).sum()
    }

    fn add(&mut self, kind: MessageKind, value: u64) {
        let counter = match kind {
            MessageKind::Summary => &mut self.summary,
            MessageKind::Ranges => &mut self.ranges,
            MessageKind::Changes => &mut self.changes,
            MessageKind::Repair => &mut self.repair,
            MessageKind::IHave => &mut self.ihave,
            MessageKind::Graft => &mut self.graft,
            MessageKind::Request => &mut self.request,
            MessageKind::Prune => &mut self.prune,
        };
        *counter += value;
    }
}

/// Counters since the engine was created. Byte counts are encoded message sizes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Messages sent, by kind.
    pub messages_sent: KindCounters,
    /// Bytes sent, by kind.
    pub bytes_sent: KindCounters,
    /// Messages received from connected peers, by kind.
    pub messages_received: KindCounters,
    /// Bytes received from connected peers, by kind.
    pub bytes_received: KindCounters,
    /// Received changes that passed verification and this node did not have yet.
    pub changes_new: u64,
    /// Encoded bytes of [`Stats::changes_new`].
    pub change_bytes_new: u64,
    /// Received changes this node already had or held back.
    pub changes_duplicate: u64,
    /// Encoded bytes of [`Stats::changes_duplicate`].
    pub change_bytes_duplicate: u64,
    /// Received changes stored.
    pub changes_applied: u64,
    /// Received changes that failed verification.
    pub changes_rejected: u64,
    /// Held-back changes dropped because the buffer was full.
    pub pending_dropped: u64,
    /// Changes not sent because one alone exceeds [`Config::max_message_bytes`].
    pub changes_oversized: u64,
    /// Store reads or writes that failed.
    pub store_errors: u64,
    /// Reconciliation rounds this node opened, one per shared tenant and peer.
    pub recon_rounds: u64,
    /// Rounds opened by a peer that ended at once because the summaries were equal.
    pub recon_converged: u64,
    /// Bytes of reconciliation messages sent: summaries, ranges and requests.
    pub recon_bytes_sent: u64,
    /// Peers disconnected for a protocol violation or an invalid change.
    pub peers_disconnected: u64,
}

/// An output of the engine for the driver to carry out.
#[derive(Debug)]
#[must_use]
pub enum Action {
    /// Send `message` to `peer`, in order with the earlier messages to that peer.
    Send {
        /// The receiver.
        peer: NodeId,
        /// The message; encode it with [`Message::encode`].
        message: Message,
    },
    /// Close the connection to `peer`, which sent invalid data, and back off before reconnecting.
    /// The engine has already forgotten the peer.
    Disconnect {
        /// The peer to disconnect.
        peer: NodeId,
        /// Description of the invalid data, for the log.
        reason: String,
    },
    /// A change received from `from` was verified and stored; update materialized views.
    Applied {
        /// The stored change.
        change: SignedChange,
        /// The peer that sent it.
        from: NodeId,
    },
}

/// A connected peer.
#[derive(Debug)]
struct Peer {
    /// Same site as this node.
    lan: bool,
    /// Tenants both sides replicate.
    tenants: BTreeSet<TenantId>,
    /// New changes go to this peer in full; otherwise they are announced.
    eager: bool,
    /// This node asked the peer to stop pushing and has not grafted it since.
    prune_sent: bool,
    /// Chains to announce at the next flush, with the last sequence number.
    announce: BTreeMap<ChainKey, u64>,
}

/// A chain that a peer announced and this node lacks.
#[derive(Debug)]
struct Missing {
    /// The highest announced sequence number.
    seq: u64,
    /// Peers that announced it and were not grafted yet, in announcement order.
    announcers: Vec<NodeId>,
    /// When to graft if the change is still missing.
    deadline: Timestamp,
}

/// The sync engine of one node. See the module documentation.
pub struct Engine<S, V> {
    config: Config,
    local: LocalInfo,
    local_tenants: BTreeSet<TenantId>,
    store: S,
    verifier: V,
    rng: ChaCha8Rng,
    peers: BTreeMap<NodeId, Peer>,
    pending: Pending,
    missing: BTreeMap<ChainKey, Missing>,
    actions: VecDeque<Action>,
    anti_entropy_at: Option<Timestamp>,
    announce_at: Option<Timestamp>,
    stats: Stats,
}

impl<S: ChangeStore, V: Verify> Engine<S, V> {
    /// Creates an engine over `store`, which already contains this node's changes.
    pub fn new(config: Config, local: LocalInfo, store: S, verifier: V) -> Self {
        let mut node_bits = [0u8; 8];
        node_bits.copy_from_slice(&local.node.0[..8]);
        let rng = ChaCha8Rng::seed_from_u64(config.seed ^ u64::from_le_bytes(node_bits));
        let pending = Pending::new(config.max_pending);
        Engine {
            local_tenants: local.tenants.iter().cloned().collect(),
            config,
            local,
            store,
            verifier,
            rng,
            peers: BTreeMap::new(),
            pending,
            missing: BTreeMap::new(),
            actions: VecDeque::new(),
            anti_entropy_at: None,
            announce_at: None,
            stats: Stats::default(),
        }
    }

    /// Returns the store.
    pub fn store(&self) -> &S {
        &self.store
    }

    /// Returns the store for writing. A change the driver stores itself must also be passed to
    /// [`Engine::handle_local_change`].
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }

    /// Returns the verifier.
    pub fn verifier(&self) -> &V {
        &self.verifier
    }

    /// Gives mutable access to the verifier, for a driver that updates what it accepts (for
    /// example when a revocation arrives).
    pub fn verifier_mut(&mut self) -> &mut V {
        &mut self.verifier
    }

    /// Registers a connection and, on the side with the smaller node id, opens a reconciliation
    /// of every shared tenant. A second call for a connected peer replaces its state.
    pub fn handle_connected(&mut self, peer: NodeId, info: PeerInfo, now: Timestamp) {
        if peer == self.local.node {
            tracing::warn!(peer = %peer, "ignored a connection to this node itself");
            return;
        }

        let tenants: BTreeSet<TenantId> = info
            .tenants
            .into_iter()
            .filter(|tenant| self.local_tenants.contains(tenant))
            .collect();
        let lan = info.site == self.local.site;
        let has_eager = self.peers.values().any(|p| p.eager);
        let eager = lan || !has_eager || self.rng.gen_bool(self.wan_weight());
        tracing::debug!(peer = %peer, site = %info.site, lan, eager, shared = tenants.len(), "peer connected");

        self.peers.insert(
            peer,
            Peer {
                lan,
                tenants,
                eager,
                prune_sent: false,
                announce: BTreeMap::new(),
            },
        );
        if self.anti_entropy_at.is_none() {
            self.anti_entropy_at = Some(now.saturating_add(self.anti_entropy_delay()));
        }

        // Both sides learn of the connection; one round is enough, so the smaller id opens it.
        if self.local.node < peer {
            self.start_round(peer);
        }
    }

    /// Forgets a peer whose connection closed.
    pub fn handle_disconnected(&mut self, peer: NodeId, now: Timestamp) {
        let _ = now;
        if self.peers.remove(&peer).is_some() {
            tracing::debug!(peer = %peer, "peer disconnected");
        }
        if self.peers.is_empty() {
            self.anti_entropy_at = None;
        }
    }

    /// Handles a decoded message. Messages from a peer that is not connected (or was
    /// disconnected by the engine) are ignored, so call [`Engine::handle_connected`] first.
    pub fn handle_message(&mut self, peer: NodeId, message: Message, now: Timestamp) {
        if !self.peers.contains_key(&peer) {
            tracing::debug!(peer = %peer, kind = message.kind().as_str(), "ignored a message from a peer that is not connected");
            return;
        }
        let kind = message.kind();
        self.stats.messages_received.add(kind, 1);
        self.stats
            .bytes_received
            .add(kind, message.encoded_len() as u64);

        match message {
            Message::Summary {
                tenant,
                fingerprint,
                count,
            } => self.handle_summary(peer, tenant, fingerprint, count),
            Message::Ranges { tenant, ranges } => self.handle_ranges(peer, tenant, ranges),
            Message::Changes(changes) => self.handle_changes(peer, changes, true, now),
            Message::Repair(changes) => self.handle_changes(peer, changes, false, now),
            Message::IHave { heads } => self.handle_ihave(peer, heads, now),
            Message::Graft { wants } => {
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.eager = true;
                }
                self.send_requested(peer, wants);
            }
            Message::Request { wants } => self.send_requested(peer, wants),
            Message::Prune => {
                if let Some(state) = self.peers.get_mut(&peer) {
                    state.eager = false;
                }
            }
        }
    }

    /// Pushes a change this node wrote. The driver has already stored it.
    pub fn handle_local_change(&mut self, change: SignedChange, now: Timestamp) {
        let chain = (change.doc().clone(), change.author());
        self.forget_missing(&chain);

        // A held-back change of another chain may have waited for this one.
        let mut applied = Vec::new();
        let woken = self.pending.take_waiting(&change.hash());
        self.apply_ready(woken, &mut applied);

        let mut forward = vec![(change, None)];
        forward.extend(
            applied
                .into_iter()
                .map(|(change, from)| (change, Some(from))),
        );
        self.forward(&forward, now);
    }

    /// Runs the timers that are due: anti-entropy, announcement flushes and grafts.
    pub fn handle_timeout(&mut self, now: Timestamp) {
        if self.anti_entropy_at.is_some_and(|at| at <= now) {
            self.run_anti_entropy(now);
        }
        if self.announce_at.is_some_and(|at| at <= now) {
            self.flush_announcements();
        }
        self.graft_due(now);
    }

    /// Returns the next output, or `None` when there is nothing to do. Call it after every
    /// `handle_*` call until it returns `None`.
    #[must_use]
    pub fn poll_action(&mut self) -> Option<Action> {
        self.actions.pop_front()
    }

    /// Returns when [`Engine::handle_timeout`] should be called next, or `None` when no timer is
    /// armed. Call it after every `handle_*` call.
    #[must_use]
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        let anti_entropy = self.anti_entropy_at.filter(|_| !self.peers.is_empty());
        let graft = self.missing.values().map(|missing| missing.deadline).min();
        [anti_entropy, self.announce_at, graft]
            .into_iter()
            .flatten()
            .min()
    }

    /// Returns the counters.
    pub fn stats(&self) -> &Stats {
        &self.stats
    }

    /// Returns the number of received changes held back for a missing predecessor.
    pub fn pending_len(&self) -> usize {
        self.pending.len()
    }

    /// Reports whether `peer` is connected and receives new changes in full.
    pub fn is_eager(&self, peer: &NodeId) -> bool {
        self.peers.get(peer).is_some_and(|state| state.eager)
    }

    // Receiving changes.

    fn handle_changes(
        &mut self,
        peer: NodeId,
        changes: Vec<SignedChange>,
        pushed: bool,
        now: Timestamp,
    ) {
        let mut applied = Vec::new();
        let mut all_duplicates = !changes.is_empty();

        for change in changes {
            if !self.check_shared(peer, &change.doc().tenant, "a change") {
                break;
            }
            let chain = (change.doc().clone(), change.author());
            let len = change_encoded_len(&change) as u64;

            // Drop what is stored or held back already.
            let stored = self.store.seq(&chain.0, &chain.1);
            if change.seq() <= stored || self.pending.contains(&chain, change.seq()) {
                self.stats.changes_duplicate += 1;
                self.stats.change_bytes_duplicate += len;
                continue;
            }
            all_duplicates = false;

            if let Err(err) = self.verifier.verify(&change) {
                self.stats.changes_rejected += 1;
                if !err.is_peer_fault() {
                    tracing::debug!(peer = %peer, error = %err, "dropped a refused change");
                    continue;
                }
                let reason = format!(
                    "rejected change {} of {} in {}: {err}",
                    change.seq(),
                    change.author(),
                    change.doc()
                );
                self.disconnect(peer, reason);
                break;
            }

            self.stats.changes_new += 1;
            self.stats.change_bytes_new += len;
            self.accept(change, peer, &mut applied);
        }

        if pushed && all_duplicates {
            self.prune(peer);
        }
        let forward: Vec<(SignedChange, Option<NodeId>)> = applied
            .into_iter()
            .map(|(change, from)| (change, Some(from)))
            .collect();
        self.forward(&forward, now);
    }

    /// Stores a verified change if it is next in its chain and its dependencies are stored,
    /// then applies the held-back changes that waited for it. Otherwise parks it in the
    /// pending buffer.
    fn accept(
        &mut self,
        change: SignedChange,
        from: NodeId,
        applied: &mut Vec<(SignedChange, NodeId)>,
    ) {
        let chain = (change.doc().clone(), change.author());
        let next = self.store.seq(&chain.0, &chain.1) + 1;
        if change.seq() == next {
            if let Some(dependency) = self.missing_dependency(&change) {
                self.pending.wait_for(dependency, chain);
                self.hold_back(change, from);
            } else {
                let hash = change.hash();
                if self.apply(change, from, applied) {
                    let mut woken = self.pending.take_waiting(&hash);
                    woken.insert(chain);
                    self.apply_ready(woken, applied);
                }
            }
        } else {
            self.hold_back(change, from);
        }
    }

    fn hold_back(&mut self, change: SignedChange, from: NodeId) {
        tracing::trace!(peer = %from, doc = %change.doc(), seq = change.seq(), "held back a change until its predecessor arrives");
        let dropped = self.pending.park(change, from);
        for parked in dropped {
            self.stats.pending_dropped += 1;
            tracing::debug!(doc = %parked.change.doc(), seq = parked.change.seq(), "dropped a held-back change: buffer full");
        }
    }

    /// Applies held-back changes of `chains` that became ready, and of the chains they wake up.
    fn apply_ready(
        &mut self,
        chains: BTreeSet<ChainKey>,
        applied: &mut Vec<(SignedChange, NodeId)>,
    ) {
        let mut queue: VecDeque<ChainKey> = chains.into_iter().collect();
        while let Some(chain) = queue.pop_front() {
            let stored = self.store.seq(&chain.0, &chain.1);
            self.pending.drop_through(&chain, stored);
            let Some(parked) = self.pending.take(&chain, stored + 1) else {
                continue;
            };

            if let Some(dependency) = self.missing_dependency(&parked.change) {
                self.pending.wait_for(dependency, chain);
                self.pending.restore(parked);
                continue;
            }
            let hash = parked.change.hash();
            if self.apply(parked.change, parked.from, applied) {
                queue.push_back(chain);
                queue.extend(self.pending.take_waiting(&hash));
            }
        }
    }

    fn missing_dependency(&self, change: &SignedChange) -> Option<ChangeHash> {
        change
            .header()
            .deps
            .iter()
            .find(|dependency| !self.store.contains(dependency))
            .copied()
    }

    /// Inserts a change into the store. Returns whether it was stored.
    fn apply(
        &mut self,
        change: SignedChange,
        from: NodeId,
        applied: &mut Vec<(SignedChange, NodeId)>,
    ) -> bool {
        if let Err(err) = self.store.insert(&change) {
            self.stats.store_errors += 1;
            tracing::error!(peer = %from, doc = %change.doc(), seq = change.seq(), error = %err, "failed to store a verified change; anti-entropy will fetch it again");
            return false;
        }
        self.stats.changes_applied += 1;
        self.forget_missing(&(change.doc().clone(), change.author()));
        self.actions.push_back(Action::Applied {
            change: change.clone(),
            from,
        });
        applied.push((change, from));
        true
    }

    // Sending.

    fn send(&mut self, peer: NodeId, message: Message) {
        let kind = message.kind();
        let len = message.encoded_len() as u64;
        self.stats.messages_sent.add(kind, 1);
        self.stats.bytes_sent.add(kind, len);
        if matches!(
            kind,
            MessageKind::Summary | MessageKind::Ranges | MessageKind::Request
        ) {
            self.stats.recon_bytes_sent += len;
        }
        self.actions.push_back(Action::Send { peer, message });
    }

    /// Sends changes as [`Message::Changes`] (`pushed`) or [`Message::Repair`], split into
    /// messages within the configured limits.
    fn send_changes(&mut self, peer: NodeId, changes: Vec<SignedChange>, pushed: bool) {
        let max_bytes = self.config.max_message_bytes;
        let max_count = self.config.max_changes_per_message.max(1);
        let wrap = |batch: Vec<SignedChange>| {
            if pushed {
                Message::Changes(batch)
            } else {
                Message::Repair(batch)
            }
        };

        let mut batch = Vec::new();
        let mut batch_len = 0;
        for change in changes {
            let len = change_encoded_len(&change);
            if changes_message_len(1, len) > max_bytes {
                self.stats.changes_oversized += 1;
                tracing::warn!(peer = %peer, doc = %change.doc(), seq = change.seq(), len, max_bytes, "did not send a change larger than the message limit");
                continue;
            }
            let full = batch.len() >= max_count
                || changes_message_len(batch.len() + 1, batch_len + len) > max_bytes;
            if full {
                self.send(peer, wrap(std::mem::take(&mut batch)));
                batch_len = 0;
            }
            batch.push(change);
            batch_len += len;
        }
        if !batch.is_empty() {
            self.send(peer, wrap(batch));
        }
    }

    /// Sends the changes after each wanted sequence number, as a repair.
    fn send_requested(&mut self, peer: NodeId, wants: Vec<ChainHead>) {
        let mut changes = Vec::new();
        for want in wants {
            if !self.check_shared(peer, &want.doc.tenant, "a request") {
                return;
            }
            let stored = self.store.seq(&want.doc, &want.author);
            if stored <= want.seq {
                continue;
            }
            match self
                .store
                .changes(&want.doc, &want.author, want.seq + 1, stored)
            {
                Ok(found) => changes.extend(found),
                Err(err) => {
                    self.stats.store_errors += 1;
                    tracing::error!(peer = %peer, doc = %want.doc, error = %err, "failed to read requested changes");
                }
            }
        }
        // NOTE: every requested change is sent at once. A peer that is far behind gets every missing
        // change in one burst; the driver's per-connection flow control paces it.
        self.send_changes(peer, changes, false);
    }

    /// Sends heads as messages built by `wrap`, at most as many per message as always fit.
    fn send_heads(
        &mut self,
        peer: NodeId,
        heads: Vec<ChainHead>,
        wrap: fn(Vec<ChainHead>) -> Message,
    ) {
        let per_message = heads_per_message(self.config.max_message_bytes);
        for chunk in heads.chunks(per_message) {
            self.send(peer, wrap(chunk.to_vec()));
        }
    }

    /// Checks that `tenant` is shared with `peer`. Otherwise disconnects the peer, which must
    /// never send or request data of another tenant, and returns false.
    fn check_shared(&mut self, peer: NodeId, tenant: &TenantId, data_kind: &str) -> bool {
        let shared = self
            .peers
            .get(&peer)
            .is_some_and(|state| state.tenants.contains(tenant));
        if !shared {
            let reason =
                format!("sent {data_kind} for tenant {tenant}, which is not shared with it");
            self.disconnect(peer, reason);
        }
        shared
    }

    fn disconnect(&mut self, peer: NodeId, reason: String) {
        if self.peers.remove(&peer).is_none() {
            return;
        }
        self.stats.peers_disconnected += 1;
        tracing::warn!(peer = %peer, node = %self.local.node, %reason, "disconnecting peer");
        self.actions.push_back(Action::Disconnect { peer, reason });
    }

    // Randomness.

    fn wan_weight(&self) -> f64 {
        let weight = self.config.wan_peer_weight;
        if weight.is_finite() {
            weight.clamp(0.0, 1.0)
        } else {
            0.0
        }
    }

    fn anti_entropy_delay(&mut self) -> u64 {
        let interval = self.config.anti_entropy_interval_ms.max(1);
        (interval / 2).saturating_add(self.rng.gen_range(0..=interval))
    }

    fn graft_delay(&mut self) -> u64 {
        let timeout = self.config.graft_timeout_ms;
        timeout.saturating_add(self.rng.gen_range(0..=timeout))
    }
}
