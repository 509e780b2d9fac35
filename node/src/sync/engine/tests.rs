//! Engine tests: single engines fed by hand, and a harness that steps several engines with
//! virtual time, per-link latency and an ordered message queue.

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::rc::Rc;

use fleetmesh_model::{ChangeHash, DocId, NodeId, SignedChange, TenantId, VerifyError};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::*;
use crate::sync::mem::MemStore;
use crate::sync::recon::{ChainIndex, Prefix};
use crate::sync::test_support::{first_change, linked_policy_changes, Writer};
use crate::sync::{ChangeStore, SignatureVerifier};

type TestEngine = Engine<MemStore, SignatureVerifier>;
type NetEngine = Engine<MemStore, SharedVerifier>;

type VerifyKey = (DocId, ChangeHash, Option<[u8; 64]>);

/// Verifies each distinct signed change once for all engines of a [`Net`], as the simulator
/// does: ed25519 in a debug build takes milliseconds per signature.
#[derive(Clone, Default)]
struct SharedVerifier {
    results: Rc<RefCell<BTreeMap<VerifyKey, Result<(), VerifyError>>>>,
}

impl Verify for SharedVerifier {
    fn verify(&mut self, change: &SignedChange) -> Result<(), VerifyError> {
        let key = (
            change.doc().clone(),
            change.hash(),
            change.signature().copied(),
        );
        self.results
            .borrow_mut()
            .entry(key)
            .or_insert_with(|| change.verify())
            .clone()
    }
}

fn tenant(name: &str) -> TenantId {
    TenantId::new(name).expect("valid tenant name")
}

fn test_config() -> Config {
    Config {
        seed: 7,
        ..Config::default()
    }
}

/// Returns the tenants a message carries data of.
fn tenants_in(message: &Message) -> Vec<TenantId> {
    match message {
        Message::Summary { tenant, .. } | Message::Ranges { tenant, .. } => vec![tenant.clone()],
        Message::Changes(changes) | Message::Repair(changes) => {
            changes.iter().map(|c| c.doc().tenant.clone()).collect()
        }
        Message::IHave { heads }
        | Message::Graft { wants: heads }
        | Message::Request { wants: heads } => heads.iter().map(|h| h.doc.tenant.clone()).collect(),
        _ => Vec::new(),
    }
}

/// A message in flight.
struct Envelope {
    from: usize,
    to: usize,
    bytes: Vec<u8>,
}

/// A record of a sent message.
struct Sent {
    from: usize,
    to: usize,
    at: Timestamp,
    message: Message,
}

type DropFilter = Box<dyn FnMut(usize, usize, &Message) -> bool>;

/// Several engines joined by links with fixed latency. Each link delivers in order.
struct Net {
    config: Config,
    verifier: SharedVerifier,
    engines: Vec<NetEngine>,
    writers: Vec<Writer>,
    sites: Vec<String>,
    tenants: Vec<Vec<TenantId>>,
    index_of: BTreeMap<NodeId, usize>,
    latency_ms: BTreeMap<(usize, usize), u64>,
    queue: BTreeMap<(Timestamp, u64), Envelope>,
    sequence: u64,
    now: Timestamp,
    drop_filter: Option<DropFilter>,
    sent: Vec<Sent>,
    disconnects: Vec<(usize, NodeId, String)>,
    /// When each node stored each received change.
    applied_at: BTreeMap<(usize, ChangeHash), Timestamp>,
}

impl Net {
    fn new(config: Config) -> Net {
        Net {
            config,
            verifier: SharedVerifier::default(),
            engines: Vec::new(),
            writers: Vec::new(),
            sites: Vec::new(),
            tenants: Vec::new(),
            index_of: BTreeMap::new(),
            latency_ms: BTreeMap::new(),
            queue: BTreeMap::new(),
            sequence: 0,
            now: 0,
            drop_filter: None,
            sent: Vec::new(),
            disconnects: Vec::new(),
            applied_at: BTreeMap::new(),
        }
    }

    /// Adds a node whose own document belongs to the first of `tenants`.
    fn add_node(&mut self, site: &str, tenants: &[&str], store: MemStore) -> usize {
        let index = self.engines.len();
        let writer = Writer::new(tenants[0], 10_000 + index as u64);
        let tenants: Vec<TenantId> = tenants.iter().map(|name| tenant(name)).collect();
        let local = LocalInfo {
            node: writer.node,
            site: site.to_string(),
            tenants: tenants.clone(),
        };
        let config = Config {
            seed: self.config.seed + index as u64,
            ..self.config.clone()
        };
        let verifier = self.verifier.clone();
        self.engines
            .push(Engine::new(config, local, store, verifier));
        self.index_of.insert(writer.node, index);
        self.writers.push(writer);
        self.sites.push(site.to_string());
        self.tenants.push(tenants);
        index
    }

    fn id(&self, index: usize) -> NodeId {
        self.writers[index].node
    }

    fn connect(&mut self, a: usize, b: usize, latency_ms: u64) {
        self.latency_ms.insert((a, b), latency_ms);
        self.latency_ms.insert((b, a), latency_ms);
        for (local, remote) in [(a, b), (b, a)] {
            let info = PeerInfo {
                site: self.sites[remote].clone(),
                tenants: self.tenants[remote].clone(),
            };
            let id = self.id(remote);
            self.engines[local].handle_connected(id, info, self.now);
        }
        self.pump();
    }

    /// Writes a change on node `index` and hands it to its engine, as the daemon does.
    fn local_change(&mut self, index: usize) -> SignedChange {
        let change = self.writers[index].next_change();
        self.engines[index]
            .store_mut()
            .insert(&change)
            .expect("own change is next in its chain");
        self.engines[index].handle_local_change(change.clone(), self.now);
        self.pump();
        change
    }

    /// Drains every engine's actions into the queue until none is left.
    fn pump(&mut self) {
        let mut busy = true;
        while busy {
            busy = false;
            for from in 0..self.engines.len() {
                while let Some(action) = self.engines[from].poll_action() {
                    busy = true;
                    self.carry_out(from, action);
                }
            }
        }
    }

    fn carry_out(&mut self, from: usize, action: Action) {
        match action {
            Action::Send { peer, message } => {
                let to = self.index_of[&peer];
                let Some(latency) = self.latency_ms.get(&(from, to)).copied() else {
                    return;
                };
                let dropped = self
                    .drop_filter
                    .as_mut()
                    .is_some_and(|filter| filter(from, to, &message));
                let bytes = message.encode();
                assert_eq!(bytes.len(), message.encoded_len());
                assert!(bytes.len() <= self.config.max_message_bytes);
                self.sent.push(Sent {
                    from,
                    to,
                    at: self.now,
                    message,
                });
                if !dropped {
                    self.sequence += 1;
                    self.queue.insert(
                        (self.now + latency, self.sequence),
                        Envelope { from, to, bytes },
                    );
                }
            }
            Action::Disconnect { peer, reason } => {
                let to = self.index_of[&peer];
                self.disconnects.push((from, peer, reason));
                self.latency_ms.remove(&(from, to));
                self.latency_ms.remove(&(to, from));
                let id = self.id(from);
                self.engines[to].handle_disconnected(id, self.now);
                self.engines[from].handle_disconnected(peer, self.now);
            }
            Action::Applied { change, .. } => {
                self.applied_at.insert((from, change.hash()), self.now);
            }
        }
    }

    /// Runs the next message delivery or timer due by `limit`. Returns false when none is.
    fn step(&mut self, limit: Timestamp) -> bool {
        let next_message = self.queue.keys().next().map(|(at, _)| *at);
        let next_timer = self
            .engines
            .iter()
            .enumerate()
            .filter_map(|(index, engine)| engine.poll_timeout().map(|at| (at, index)))
            .min();

        match (next_message, next_timer) {
            (Some(at), timer) if at <= limit && timer.is_none_or(|(t, _)| at <= t) => {
                let Some((_, envelope)) = self.queue.pop_first() else {
                    return false;
                };
                self.now = self.now.max(at);
                if self.latency_ms.contains_key(&(envelope.from, envelope.to)) {
                    let message = Message::decode(&envelope.bytes, self.config.max_message_bytes)
                        .expect("engines send decodable messages");
                    let from = self.id(envelope.from);
                    self.engines[envelope.to].handle_message(from, message, self.now);
                }
            }
            (_, Some((at, index))) if at <= limit => {
                self.now = self.now.max(at);
                self.engines[index].handle_timeout(self.now);
            }
            _ => return false,
        }
        self.pump();
        true
    }

    fn run_until(&mut self, limit: Timestamp) {
        while self.step(limit) {}
        self.now = self.now.max(limit);
    }

    /// Runs until the queue is empty, leaving timers for later.
    fn deliver_all(&mut self) {
        while let Some(at) = self.queue.keys().next().map(|(at, _)| *at) {
            self.run_until(at);
        }
    }

    fn run_for(&mut self, duration_ms: u64) {
        let limit = self.now + duration_ms;
        self.run_until(limit);
    }

    fn holds(&self, index: usize, change: &SignedChange) -> bool {
        self.engines[index].store().contains(&change.hash())
    }

    fn stats(&self, index: usize) -> &Stats {
        self.engines[index].stats()
    }
}

/// Creates a store holding `changes`, in order.
fn store_with(changes: &[SignedChange]) -> MemStore {
    let mut store = MemStore::new();
    for change in changes {
        store
            .insert(change)
            .expect("test changes are in chain order");
    }
    store
}

/// Creates one engine connected to one LAN peer `peer` of tenant acme, with no actions left.
fn engine_with_peer(peer: NodeId) -> TestEngine {
    let local = LocalInfo {
        node: NodeId([1; 32]),
        site: "hq".to_string(),
        tenants: vec![tenant("acme")],
    };
    let mut engine = Engine::new(test_config(), local, MemStore::new(), SignatureVerifier);
    let info = PeerInfo {
        site: "hq".to_string(),
        tenants: vec![tenant("acme")],
    };
    engine.handle_connected(peer, info, 0);
    drain(&mut engine);
    engine
}

fn drain(engine: &mut TestEngine) -> Vec<Action> {
    std::iter::from_fn(|| engine.poll_action()).collect()
}

#[test]
fn connect_sends_only_missing_changes() {
    let mut shared = Writer::new("acme", 1);
    let mut only_a = Writer::new("acme", 2);
    let mut only_b = Writer::new("acme", 3);
    let shared_changes: Vec<SignedChange> = (0..3).map(|_| shared.next_change()).collect();
    let a_changes: Vec<SignedChange> = (0..2).map(|_| only_a.next_change()).collect();
    let b_changes: Vec<SignedChange> = (0..2).map(|_| only_b.next_change()).collect();

    let mut store_a = store_with(&shared_changes);
    for change in &a_changes {
        store_a.insert(change).expect("in order");
    }
    let mut store_b = store_with(&shared_changes[..1]);
    for change in &b_changes {
        store_b.insert(change).expect("in order");
    }

    let mut net = Net::new(test_config());
    let a = net.add_node("hq", &["acme"], store_a);
    let b = net.add_node("hq", &["acme"], store_b);
    net.connect(a, b, 1);
    net.deliver_all();

    let acme = tenant("acme");
    let summary_a = net.engines[a].store().summary(&acme, Prefix::ROOT);
    let summary_b = net.engines[b].store().summary(&acme, Prefix::ROOT);
    assert_eq!(summary_a, summary_b);
    assert_eq!(summary_a.1, 3);
    for change in shared_changes.iter().chain(&a_changes).chain(&b_changes) {
        assert!(net.holds(a, change), "a lacks {change:?}");
        assert!(net.holds(b, change), "b lacks {change:?}");
    }

    assert_eq!(net.stats(a).changes_new, 2);
    assert_eq!(net.stats(b).changes_new, 4);
    assert_eq!(net.stats(a).changes_duplicate, 0);
    assert_eq!(net.stats(b).changes_duplicate, 0);
}

#[test]
fn connect_fills_empty_node() {
    let mut writers: Vec<Writer> = (0..40)
        .map(|seed| Writer::new("acme", 100 + seed))
        .collect();
    let changes: Vec<SignedChange> = writers
        .iter_mut()
        .flat_map(|writer| [writer.next_change(), writer.next_change()])
        .collect();

    let mut net = Net::new(test_config());
    let full = net.add_node("hq", &["acme"], store_with(&changes));
    let empty = net.add_node("hq", &["acme"], MemStore::new());
    net.connect(full, empty, 1);
    net.deliver_all();

    assert_eq!(net.engines[empty].store().len(), changes.len());
    assert_eq!(net.stats(empty).changes_duplicate, 0);
}

#[test]
fn local_change_pushed_at_once() {
    let mut net = Net::new(test_config());
    let a = net.add_node("hq", &["acme"], MemStore::new());
    let b = net.add_node("hq", &["acme"], MemStore::new());
    net.connect(a, b, 1);
    net.deliver_all();

    let sent_before = net.sent.len();
    let change = net.local_change(a);
    let pushes: Vec<&Sent> = net.sent[sent_before..]
        .iter()
        .filter(|sent| sent.from == a && matches!(sent.message, Message::Changes(_)))
        .collect();
    assert_eq!(pushes.len(), 1);
    assert_eq!(pushes[0].at, net.now);

    let pushed_at = net.now;
    net.run_until(pushed_at + 1);
    assert!(net.holds(b, &change));
    assert_eq!(net.stats(b).messages_received.changes, 1);
}

#[test]
fn out_of_order_changes_applied() {
    let mut writer = Writer::new("acme", 1);
    let changes: Vec<SignedChange> = (0..3).map(|_| writer.next_change()).collect();
    let peer = NodeId([2; 32]);
    let mut engine = engine_with_peer(peer);

    engine.handle_message(peer, Message::Changes(vec![changes[2].clone()]), 1);
    engine.handle_message(peer, Message::Changes(vec![changes[1].clone()]), 2);
    assert_eq!(engine.pending_len(), 2);
    assert!(engine.store().is_empty());

    engine.handle_message(peer, Message::Changes(vec![changes[0].clone()]), 3);
    let applied: Vec<u64> = drain(&mut engine)
        .into_iter()
        .filter_map(|action| match action {
            Action::Applied { change, from } => {
                assert_eq!(from, peer);
                Some(change.seq())
            }
            _ => None,
        })
        .collect();
    assert_eq!(applied, vec![1, 2, 3]);
    assert_eq!(engine.pending_len(), 0);
    assert_eq!(engine.store().seq(changes[0].doc(), &writer.node), 3);
    assert_eq!(engine.stats().changes_new, 3);
}

#[test]
fn cross_chain_dependency_waits() {
    let (first, second) = linked_policy_changes();
    assert_eq!(second.seq(), 1);
    assert_eq!(second.header().deps, vec![first.hash()]);
    let peer = NodeId([2; 32]);
    let mut engine = engine_with_peer(peer);

    engine.handle_message(peer, Message::Changes(vec![second.clone()]), 1);
    assert_eq!(engine.pending_len(), 1);
    assert!(engine.store().is_empty());

    engine.handle_message(peer, Message::Changes(vec![first.clone()]), 2);
    assert_eq!(engine.pending_len(), 0);
    assert!(engine.store().contains(&first.hash()));
    assert!(engine.store().contains(&second.hash()));
}

#[test]
fn pending_overflow_repaired_later() {
    let mut writer = Writer::new("acme", 1);
    let changes: Vec<SignedChange> = (0..4).map(|_| writer.next_change()).collect();
    let peer = NodeId([2; 32]);
    let local = LocalInfo {
        node: NodeId([1; 32]),
        site: "hq".to_string(),
        tenants: vec![tenant("acme")],
    };
    let config = Config {
        max_pending: 2,
        ..test_config()
    };
    let mut engine = Engine::new(config, local, MemStore::new(), SignatureVerifier);
    let info = PeerInfo {
        site: "hq".to_string(),
        tenants: vec![tenant("acme")],
    };
    engine.handle_connected(peer, info, 0);

    for change in changes[1..].iter().rev() {
        engine.handle_message(peer, Message::Changes(vec![change.clone()]), 1);
    }
    assert_eq!(engine.pending_len(), 2);
    assert_eq!(engine.stats().pending_dropped, 1);

    // Seq 4 was dropped; 1 to 3 apply, and a repair brings 4.
    engine.handle_message(peer, Message::Repair(vec![changes[0].clone()]), 2);
    assert_eq!(engine.store().len(), 3);
    engine.handle_message(peer, Message::Repair(vec![changes[3].clone()]), 3);
    assert_eq!(engine.store().len(), 4);
}

#[test]
fn duplicate_push_prunes_sender() {
    let mut writer = Writer::new("acme", 1);
    let change = writer.next_change();
    let peer = NodeId([2; 32]);
    let mut engine = engine_with_peer(peer);
    assert!(engine.is_eager(&peer));

    engine.handle_message(peer, Message::Changes(vec![change.clone()]), 1);
    drain(&mut engine);
    engine.handle_message(peer, Message::Changes(vec![change.clone()]), 2);
    let prunes = drain(&mut engine)
        .into_iter()
        .filter(|action| {
            matches!(
                action,
                Action::Send {
                    message: Message::Prune,
                    ..
                }
            )
        })
        .count();
    assert_eq!(prunes, 1);
    assert!(!engine.is_eager(&peer));
    assert_eq!(engine.stats().changes_duplicate, 1);

    // A duplicate in a repair is expected and prunes nothing.
    engine.handle_message(peer, Message::Repair(vec![change]), 3);
    assert!(drain(&mut engine).is_empty());
}

#[test]
fn ihave_grafts_after_timeout() {
    let mut writer = Writer::new("acme", 1);
    let change = writer.next_change();
    let peer = NodeId([2; 32]);
    let mut engine = engine_with_peer(peer);
    engine.handle_message(peer, Message::Prune, 0);
    assert!(!engine.is_eager(&peer));

    let head = ChainHead {
        doc: change.doc().clone(),
        author: writer.node,
        seq: 1,
    };
    engine.handle_message(
        peer,
        Message::IHave {
            heads: vec![head.clone()],
        },
        10,
    );
    let deadline = engine.poll_timeout().expect("graft timer armed");
    let config = test_config();
    assert!(deadline >= 10 + config.graft_timeout_ms);
    assert!(deadline <= 10 + 2 * config.graft_timeout_ms);

    engine.handle_timeout(deadline);
    let grafts: Vec<Vec<ChainHead>> = drain(&mut engine)
        .into_iter()
        .filter_map(|action| match action {
            Action::Send {
                message: Message::Graft { wants },
                ..
            } => Some(wants),
            _ => None,
        })
        .collect();
    assert_eq!(grafts, vec![vec![ChainHead { seq: 0, ..head }]]);
    assert!(engine.is_eager(&peer));

    engine.handle_message(peer, Message::Repair(vec![change]), deadline + 1);
    assert_eq!(engine.store().len(), 1);
}

#[test]
fn ihave_no_graft_when_delivered() {
    let mut writer = Writer::new("acme", 1);
    let change = writer.next_change();
    let peer = NodeId([2; 32]);
    let other = NodeId([3; 32]);
    let mut engine = engine_with_peer(peer);
    let info = PeerInfo {
        site: "hq".to_string(),
        tenants: vec![tenant("acme")],
    };
    engine.handle_connected(other, info, 0);
    drain(&mut engine);

    let head = ChainHead {
        doc: change.doc().clone(),
        author: writer.node,
        seq: 1,
    };
    engine.handle_message(peer, Message::IHave { heads: vec![head] }, 10);
    engine.handle_message(other, Message::Changes(vec![change]), 20);
    drain(&mut engine);

    engine.handle_timeout(10 + 2 * test_config().graft_timeout_ms);
    let grafts = drain(&mut engine)
        .into_iter()
        .filter(|action| {
            matches!(
                action,
                Action::Send {
                    message: Message::Graft { .. },
                    ..
                }
            )
        })
        .count();
    assert_eq!(grafts, 0);
}

/// Creates an engine with `lazy` connected LAN peers, all pruned, stores one local change, and
/// returns the peers that were sent an announcement of it.
fn announced_peers(ihave_peers_max: usize, lazy: u8) -> Vec<NodeId> {
    let mut writer = Writer::new("acme", 1);
    let local = LocalInfo {
        node: writer.node,
        site: "hq".to_string(),
        tenants: vec![tenant("acme")],
    };
    let config = Config {
        ihave_peers_max,
        ..test_config()
    };
    let mut engine = Engine::new(config.clone(), local, MemStore::new(), SignatureVerifier);
    for index in 0..lazy {
        let peer = NodeId([10 + index; 32]);
        let info = PeerInfo {
            site: "hq".to_string(),
            tenants: vec![tenant("acme")],
        };
        engine.handle_connected(peer, info, 0);
        engine.handle_message(peer, Message::Prune, 0);
        assert!(!engine.is_eager(&peer));
    }
    drain(&mut engine);

    let change = writer.next_change();
    engine
        .store_mut()
        .insert(&change)
        .expect("the first change of a chain is stored");
    engine.handle_local_change(change, 10);
    let pushes = drain(&mut engine)
        .into_iter()
        .filter(|action| {
            matches!(
                action,
                Action::Send {
                    message: Message::Changes(_),
                    ..
                }
            )
        })
        .count();
    assert_eq!(pushes, 0, "lazy peers get no push");

    engine.handle_timeout(10 + config.ihave_interval_ms);
    let mut announced: Vec<NodeId> = drain(&mut engine)
        .into_iter()
        .filter_map(|action| match action {
            Action::Send {
                peer,
                message: Message::IHave { heads },
            } => {
                assert_eq!(heads.len(), 1);
                Some(peer)
            }
            _ => None,
        })
        .collect();
    announced.sort();
    announced.dedup();
    announced
}

#[test]
fn ihave_limited_to_peers_max() {
    assert_eq!(announced_peers(2, 6).len(), 2);
    assert_eq!(announced_peers(0, 6).len(), 0);
}

#[test]
fn ihave_reaches_all_under_limit() {
    assert_eq!(announced_peers(8, 6).len(), 6);
    assert_eq!(announced_peers(6, 6).len(), 6);
}

#[test]
fn anti_entropy_repairs_lost_push() {
    let config = Config {
        anti_entropy_interval_ms: 1_000,
        ..test_config()
    };
    let mut net = Net::new(config);
    let a = net.add_node("hq", &["acme"], MemStore::new());
    let b = net.add_node("hq", &["acme"], MemStore::new());
    net.connect(a, b, 1);
    net.deliver_all();

    net.drop_filter = Some(Box::new(|_, _, message| {
        matches!(message, Message::Changes(_))
    }));
    let change = net.local_change(a);
    net.run_for(100);
    assert!(!net.holds(b, &change));

    net.drop_filter = None;
    net.run_for(2_000);
    assert!(net.holds(b, &change));
    assert!(net.stats(b).messages_received.repair >= 1);
}

/// Returns the bytes both engines send in a connect round between two nodes that hold the same
/// `items` chains, and the number of converged rounds.
fn converged_round_cost(items: u64) -> (u64, u64) {
    let changes: Vec<SignedChange> = (0..items)
        .map(|seed| first_change("acme", 1_000 + seed))
        .collect();
    let store = store_with(&changes);

    let mut net = Net::new(test_config());
    let a = net.add_node("hq", &["acme"], store.clone());
    let b = net.add_node("hq", &["acme"], store);
    net.connect(a, b, 1);
    net.deliver_all();

    let bytes = net.stats(a).bytes_sent.total() + net.stats(b).bytes_sent.total();
    let converged = net.stats(a).recon_converged + net.stats(b).recon_converged;
    (bytes, converged)
}

#[test]
fn converged_round_small_and_constant() {
    let (small_bytes, small_converged) = converged_round_cost(10);
    let (large_bytes, large_converged) = converged_round_cost(1_000);
    assert_eq!(small_converged, 1);
    assert_eq!(large_converged, 1);
    println!("converged round: {small_bytes} bytes for 10 chains, {large_bytes} for 1,000");
    assert!(small_bytes < 64, "{small_bytes} bytes");
    assert_eq!(small_bytes, large_bytes);
}

#[test]
fn invalid_change_disconnects() {
    let mut owner = Writer::new("acme", 1);
    let mut other = Writer::new("acme", 2);
    let genuine = owner.next_change();
    let bad_signature = genuine.with_signature(Some([7; 64]));
    let unsigned = genuine.with_signature(None);
    let wrong_owner = other
        .next_change()
        .with_doc(DocId::node(tenant("acme"), owner.node));

    for (case, change) in [
        ("bad signature", bad_signature),
        ("no signature", unsigned),
        ("wrong owner", wrong_owner),
    ] {
        let peer = NodeId([2; 32]);
        let mut engine = engine_with_peer(peer);
        engine.handle_message(peer, Message::Changes(vec![change.clone()]), 1);

        let actions = drain(&mut engine);
        let reasons: Vec<String> = actions
            .iter()
            .filter_map(|action| match action {
                Action::Disconnect { peer: p, reason } if *p == peer => Some(reason.clone()),
                _ => None,
            })
            .collect();
        assert_eq!(reasons.len(), 1, "{case}: {actions:?}");
        assert!(
            reasons[0].contains(&change.doc().to_string()),
            "{case}: {}",
            reasons[0]
        );
        assert!(engine.store().is_empty(), "{case}");
        assert_eq!(engine.stats().changes_rejected, 1, "{case}");

        // The engine has forgotten the peer: later messages from it are ignored.
        engine.handle_message(peer, Message::Changes(vec![genuine.clone()]), 2);
        assert!(engine.store().is_empty(), "{case}");
    }
}

#[test]
fn foreign_tenant_change_disconnects() {
    let mut writer = Writer::new("globex", 1);
    let peer = NodeId([2; 32]);
    let mut engine = engine_with_peer(peer);
    engine.handle_message(peer, Message::Changes(vec![writer.next_change()]), 1);
    let disconnects = drain(&mut engine)
        .into_iter()
        .filter(|action| matches!(action, Action::Disconnect { .. }))
        .count();
    assert_eq!(disconnects, 1);
    assert!(engine.store().is_empty());
}

#[test]
fn tenant_isolation_across_peers() {
    let config = Config {
        anti_entropy_interval_ms: 500,
        ..test_config()
    };
    let mut net = Net::new(config);
    let a = net.add_node("hq", &["acme"], MemStore::new());
    let operator = net.add_node("hq", &["acme", "globex"], MemStore::new());
    let g = net.add_node("hq", &["globex"], MemStore::new());
    net.connect(a, operator, 1);
    net.connect(operator, g, 1);
    net.connect(a, g, 1);

    let acme_changes: Vec<SignedChange> = (0..3).map(|_| net.local_change(a)).collect();
    let globex_changes: Vec<SignedChange> = (0..2).map(|_| net.local_change(g)).collect();
    net.run_for(3_000);

    for change in &acme_changes {
        assert!(net.holds(operator, change));
        assert!(!net.holds(g, change));
    }
    for change in &globex_changes {
        assert!(net.holds(operator, change));
        assert!(!net.holds(a, change));
    }

    let acme = tenant("acme");
    let globex = tenant("globex");
    for sent in &net.sent {
        assert!(
            !(sent.from == a && sent.to == g || sent.from == g && sent.to == a),
            "a and g share no tenant but exchanged {:?}",
            sent.message.kind()
        );
        let carried = tenants_in(&sent.message);
        if sent.to == g {
            assert!(
                !carried.contains(&acme),
                "g received acme data: {:?}",
                sent.message
            );
        }
        if sent.to == a {
            assert!(
                !carried.contains(&globex),
                "a received globex data: {:?}",
                sent.message
            );
        }
    }
    assert!(net.disconnects.is_empty(), "{:?}", net.disconnects);
}

#[test]
fn mesh_duplicates_low_after_prune() {
    const NODES: usize = 20;
    const SITES: usize = 4;
    let mut net = Net::new(test_config());
    for index in 0..NODES {
        let site = format!("site-{}", index % SITES);
        net.add_node(&site, &["acme"], MemStore::new());
    }

    // Full LAN mesh inside each site, two WAN links per node to other sites.
    let mut rng = ChaCha8Rng::seed_from_u64(42);
    for a in 0..NODES {
        for b in (a + 1)..NODES {
            if a % SITES == b % SITES {
                net.connect(a, b, 1);
            }
        }
        for _ in 0..2 {
            let mut b = rng.gen_range(0..NODES);
            while b % SITES == a % SITES || net.latency_ms.contains_key(&(a, b)) {
                b = rng.gen_range(0..NODES);
            }
            net.connect(a, b, 40);
        }
    }
    net.deliver_all();

    let mut written = Vec::new();
    let mut write_changes = |net: &mut Net, count: usize| {
        for _ in 0..count {
            let author = rng.gen_range(0..NODES);
            let written_at = net.now;
            written.push((net.local_change(author), author, written_at));
            net.run_for(300);
        }
    };
    let totals = |net: &Net| {
        let new: u64 = (0..NODES).map(|i| net.stats(i).change_bytes_new).sum();
        let duplicate: u64 = (0..NODES)
            .map(|i| net.stats(i).change_bytes_duplicate)
            .sum();
        (new, duplicate)
    };

    // Warm-up: the first changes find the duplicate links and prune them.
    write_changes(&mut net, 20);
    let (new_before, duplicate_before) = totals(&net);
    write_changes(&mut net, 40);
    net.run_for(2_000);
    let (new_after, duplicate_after) = totals(&net);

    let mut delay_max = 0;
    for (change, author, written_at) in &written {
        for index in 0..NODES {
            assert!(net.holds(index, change), "node {index} lacks {change:?}");
            if index != *author {
                let at = net.applied_at[&(index, change.hash())];
                delay_max = delay_max.max(at - written_at);
            }
        }
    }
    println!("mesh of {NODES}: every change reached every node within {delay_max} ms");
    let new = new_after - new_before;
    let duplicate = duplicate_after - duplicate_before;
    let share = duplicate as f64 / new as f64;
    println!("mesh of {NODES}: {new} new and {duplicate} duplicate change bytes ({share:.3})");
    for kind in MessageKind::ALL {
        let bytes: u64 = (0..NODES).map(|i| net.stats(i).bytes_sent.get(kind)).sum();
        println!("  {} bytes sent in all: {bytes}", kind.as_str());
    }
    assert!(share < 0.3, "duplicate share {share:.3}");
}
