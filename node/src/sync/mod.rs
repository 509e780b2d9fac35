//! The sync engine: a sans-IO state machine that replicates signed changes between peers.
//!
//! The engine owns no sockets, spawns no tasks and reads no clock. The driver (the libp2p task in
//! production, the simulator in tests) feeds it events with `handle_*` methods, passing the current
//! time as a [`Timestamp`], and drains its output with [`Engine::poll_action`] and
//! [`Engine::poll_timeout`]. So the simulator runs exactly the code that runs in production.
//!
//! What the engine reconciles is the set of change chains a node holds. Every author writes one
//! chain per document (automerge's actor sequence numbers), so a node's state is a map
//! `(document, author) -> last sequence number`. See [`recon`] for how two peers compare these
//! maps in a few dozen bytes when they agree.

pub mod engine;
pub mod mem;
pub mod message;
mod pending;
pub mod recon;
#[cfg(test)]
mod test_support;

pub use engine::{Action, Config, Engine, KindCounters, LocalInfo, PeerInfo, Stats};
pub use mem::{MemStore, MemStoreError};
pub use message::{Message, MessageError, MessageKind, RangeEntry};
pub use recon::{ChainHead, ChainIndex, Fingerprint, Prefix, ReconIndex};

use fleetmesh_model::{ChangeHash, DocId, NodeId, SignedChange, VerifyError};

/// Milliseconds on a monotonic clock chosen by the driver (virtual time in the simulator).
pub type Timestamp = u64;

/// Durable storage of signed changes, as the engine needs it.
///
/// `insert` must make the change durable and applied before it returns: the engine forwards a
/// change to other peers only after `insert` succeeded, so a crash never loses a change that
/// this node has passed on.
pub trait ChangeStore: ChainIndex {
    /// The store's error type.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Returns the changes of the chain `(doc, author)` with sequence numbers in `from..=to`,
    /// in sequence order. Missing changes are skipped.
    fn changes(
        &self,
        doc: &DocId,
        author: &NodeId,
        from: u64,
        to: u64,
    ) -> Result<Vec<SignedChange>, Self::Error>;

    /// Reports whether a change with this hash is stored.
    fn contains(&self, hash: &ChangeHash) -> bool;

    /// Stores and applies a verified change whose dependencies are all stored, and updates the
    /// chain index. Called only with the next sequence number of its chain.
    fn insert(&mut self, change: &SignedChange) -> Result<(), Self::Error>;
}

/// Checks a received change before it is stored: signature and authorization.
pub trait Verify {
    /// Returns `Ok` when the change may be stored.
    fn verify(&mut self, change: &SignedChange) -> Result<(), VerifyError>;
}

/// Verifies every change with ed25519: signature and node-document ownership.
#[derive(Debug, Default, Clone, Copy)]
pub struct SignatureVerifier;

impl Verify for SignatureVerifier {
    fn verify(&mut self, change: &SignedChange) -> Result<(), VerifyError> {
        change.verify()
    }
}
