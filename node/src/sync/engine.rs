//! STUB: the helper building the sync engine replaces this file. Public API is fixed below.
#![allow(missing_docs, unused_variables, dead_code)]

use fleetmesh_model::{NodeId, SignedChange, TenantId};

use super::{ChangeStore, Message, Timestamp, Verify};

#[derive(Debug, Clone)]
pub struct Config {
    pub anti_entropy_interval_ms: u64,
    pub seed: u64,
}

impl Default for Config {
    fn default() -> Self {
        Config { anti_entropy_interval_ms: 30_000, seed: 0 }
    }
}

#[derive(Debug, Clone)]
pub struct LocalInfo {
    pub node: NodeId,
    pub site: String,
    pub tenants: Vec<TenantId>,
}

#[derive(Debug, Clone)]
pub struct PeerInfo {
    pub site: String,
    pub tenants: Vec<TenantId>,
}

#[derive(Debug, Clone, Default)]
pub struct Stats {}

#[derive(Debug)]
#[must_use]
pub enum Action {
    Send { peer: NodeId, message: Message },
    Disconnect { peer: NodeId, reason: String },
    Applied { change: SignedChange, from: NodeId },
}

pub struct Engine<S, V> {
    store: S,
    verifier: V,
}

impl<S: ChangeStore, V: Verify> Engine<S, V> {
    pub fn new(config: Config, local: LocalInfo, store: S, verifier: V) -> Self {
        Engine { store, verifier }
    }
    pub fn store(&self) -> &S {
        &self.store
    }
    pub fn store_mut(&mut self) -> &mut S {
        &mut self.store
    }
    pub fn handle_connected(&mut self, peer: NodeId, info: PeerInfo, now: Timestamp) {
        todo!()
    }
    pub fn handle_disconnected(&mut self, peer: NodeId, now: Timestamp) {
        todo!()
    }
    pub fn handle_message(&mut self, peer: NodeId, message: Message, now: Timestamp) {
        todo!()
    }
    pub fn handle_local_change(&mut self, change: SignedChange, now: Timestamp) {
        todo!()
    }
    pub fn handle_timeout(&mut self, now: Timestamp) {
        todo!()
    }
    pub fn poll_action(&mut self) -> Option<Action> {
        todo!()
    }
    pub fn poll_timeout(&self) -> Option<Timestamp> {
        todo!()
    }
    pub fn stats(&self) -> &Stats {
        todo!()
    }
}
