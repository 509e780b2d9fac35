//! STUB: the helper building the sync engine replaces this file. Public API is fixed below.
#![allow(missing_docs, unused_variables)]

use fleetmesh_model::{DocId, NodeId, TenantId};
use serde::{Deserialize, Serialize};

pub type Fingerprint = u128;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Prefix {
    pub depth: u8,
    pub bits: u32,
}

impl Prefix {
    pub const ROOT: Prefix = Prefix { depth: 0, bits: 0 };
}

#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ChainHead {
    pub doc: DocId,
    pub author: NodeId,
    pub seq: u64,
}

pub trait ChainIndex {
    fn seq(&self, doc: &DocId, author: &NodeId) -> u64;
    fn summary(&self, tenant: &TenantId, prefix: Prefix) -> (Fingerprint, u64);
    fn heads_in(&self, tenant: &TenantId, prefix: Prefix) -> Vec<ChainHead>;
    fn tenants(&self) -> Vec<TenantId>;
}

#[derive(Debug, Default, Clone)]
pub struct ReconIndex {}

impl ReconIndex {
    pub fn new() -> Self {
        ReconIndex {}
    }
    pub fn set(&mut self, head: ChainHead) {
        todo!()
    }
    pub fn len(&self) -> usize {
        todo!()
    }
    pub fn is_empty(&self) -> bool {
        todo!()
    }
}

impl ChainIndex for ReconIndex {
    fn seq(&self, doc: &DocId, author: &NodeId) -> u64 {
        todo!()
    }
    fn summary(&self, tenant: &TenantId, prefix: Prefix) -> (Fingerprint, u64) {
        todo!()
    }
    fn heads_in(&self, tenant: &TenantId, prefix: Prefix) -> Vec<ChainHead> {
        todo!()
    }
    fn tenants(&self) -> Vec<TenantId> {
        todo!()
    }
}
